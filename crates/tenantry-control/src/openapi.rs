//! The OpenAPI 3 document, generated from the handlers' annotations and the body types.

use std::sync::Arc;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use http::header;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::AppState;
use crate::{accounts, keys, plans, routes, tenants, users};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT or tn_ API key")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tenantry admin API",
        description = "Tenants, users, API keys, routes and backends, plans and subscriptions, audit log. Every error is `{\"error\": code, \"message\": text}`."
    ),
    modifiers(&BearerAuth),
    paths(
        accounts::login, accounts::signup, accounts::me, accounts::change_password,
        tenants::list, tenants::create, tenants::read, tenants::update, tenants::delete,
        tenants::suspend, tenants::reactivate, tenants::export, tenants::subscription,
        tenants::change_plan, tenants::set_limits, tenants::read_policy, tenants::set_policy,
        tenants::read_waf, tenants::set_waf, tenants::usage, tenants::tenant_audit, tenants::platform_audit,
        users::list, users::create, users::read, users::update, users::remove,
        routes::list, routes::create, routes::read, routes::replace, routes::remove,
        routes::drain, routes::activate,
        keys::list, keys::create, keys::revoke,
        plans::list, plans::read, plans::create, plans::update,
        document,
    ),
    components(schemas(
        crate::error::ErrorBody, crate::error::ErrorCode, crate::error::FieldError,
        tenantry_config::RouteSpec, tenantry_config::BackendSpec, tenantry_config::TlsSpec,
        tenantry_config::HealthCheckSpec, tenantry_config::RateLimitSpec,
        tenantry_config::PolicySpec, tenantry_config::TenantWafSpec,
        tenantry_config::RouteWafSpec, tenants::WafResponse,
    ))
)]
struct ApiDoc;

/// The document as JSON.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"internal\",\"message\":\"{e}\"}}"))
}

/// The document is built once, at first use.
static DOC: std::sync::LazyLock<String> = std::sync::LazyLock::new(openapi_json);

/// This OpenAPI document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "meta",
    responses((status = 200, description = "the OpenAPI 3 document", body = serde_json::Value)))]
pub(crate) async fn document() -> axum::response::Response {
    ([(header::CONTENT_TYPE, "application/json")], DOC.as_str()).into_response()
}

pub(crate) fn router() -> Router<Arc<AppState>> {
    Router::new().route("/api/openapi.json", get(document))
}
