//! A tenant's routes and backends. Bodies are the same `RouteSpec` the YAML file uses,
//! validated by the same code; every change reaches the proxy before the response is sent.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use tenantry_config::RouteSpec;
use tenantry_domain::TenantId;

use crate::AppState;
use crate::caller::{Body, Caller};
use crate::error::{ApiError, ApiResult, ErrorBody, ErrorCode};
use crate::tenants::tenant_path;

pub(crate) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/tenants/{tenant_id}/routes", get(list).post(create))
        .route(
            "/api/tenants/{tenant_id}/routes/{route_id}",
            get(read).put(replace).delete(remove),
        )
        .route(
            "/api/tenants/{tenant_id}/routes/{route_id}/backends/{address}/drain",
            post(drain),
        )
        .route(
            "/api/tenants/{tenant_id}/routes/{route_id}/backends/{address}/activate",
            post(activate),
        )
}

fn validate(state: &AppState, spec: &RouteSpec) -> Result<(), ApiError> {
    tenantry_config::validate_route_spec(spec, &state.base_dir)
        .map(drop)
        .map_err(|e| ApiError::from_config(&e, ""))
}

/// Routes, policy and WAF settings of a tenant whose configuration comes from the file are
/// edited in the file.
pub(crate) async fn writable(state: &AppState, id: &TenantId) -> Result<(), ApiError> {
    let t = state
        .store
        .tenant(id)
        .get()
        .await?
        .ok_or_else(|| ApiError::not_found("tenant", id.as_str()))?;
    if t.managed_by == "file" {
        return Err(ApiError::new(
            ErrorCode::ManagedByFile,
            format!(
                "tenant {id}'s routes, policy and WAF settings come from the configuration file; change them there"
            ),
        ));
    }
    Ok(())
}

/// The tenant's routes.
#[utoipa::path(get, path = "/api/tenants/{tenant_id}/routes", tag = "routes",
    security(("bearer" = [])), params(("tenant_id" = String, Path)),
    responses((status = 200, body = [RouteSpec]), (status = 404, body = ErrorBody)))]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Path(tenant_id): Path<String>,
) -> ApiResult<Json<Vec<RouteSpec>>> {
    let id = tenant_path(&tenant_id)?;
    Ok(Json(state.store.tenant(&id).list_routes().await?))
}

/// Create a route (members); within `max_routes`, `max_backends_per_route`, `max_domains`.
#[utoipa::path(post, path = "/api/tenants/{tenant_id}/routes", tag = "routes",
    security(("bearer" = [])), params(("tenant_id" = String, Path)), request_body = RouteSpec,
    responses((status = 201, body = RouteSpec),
              (status = 403, description = "forbidden or plan_limit", body = ErrorBody),
              (status = 409, description = "conflict (id or host) or managed_by_file", body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(tenant_id): Path<String>,
    Body(spec): Body<RouteSpec>,
) -> ApiResult<(StatusCode, Json<RouteSpec>)> {
    let id = tenant_path(&tenant_id)?;
    validate(&state, &spec)?;
    writable(&state, &id).await?;
    let r = state
        .store
        .tenant(&id)
        .create_route(&caller.actor(), &spec)
        .await?;
    state.sync_tenant(&id).await?;
    Ok((StatusCode::CREATED, Json(r)))
}

/// One route.
#[utoipa::path(get, path = "/api/tenants/{tenant_id}/routes/{route_id}", tag = "routes",
    security(("bearer" = [])), params(("tenant_id" = String, Path), ("route_id" = String, Path)),
    responses((status = 200, body = RouteSpec), (status = 404, body = ErrorBody)))]
pub(crate) async fn read(
    State(state): State<Arc<AppState>>,
    Path((tenant_id, route_id)): Path<(String, String)>,
) -> ApiResult<Json<RouteSpec>> {
    let id = tenant_path(&tenant_id)?;
    let r = state
        .store
        .tenant(&id)
        .get_route(&route_id)
        .await?
        .ok_or_else(|| ApiError::not_found("route", &route_id))?;
    Ok(Json(r))
}

/// Replace a route (members).
#[utoipa::path(put, path = "/api/tenants/{tenant_id}/routes/{route_id}", tag = "routes",
    security(("bearer" = [])), params(("tenant_id" = String, Path), ("route_id" = String, Path)),
    request_body = RouteSpec,
    responses((status = 200, body = RouteSpec), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub(crate) async fn replace(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((tenant_id, route_id)): Path<(String, String)>,
    Body(spec): Body<RouteSpec>,
) -> ApiResult<Json<RouteSpec>> {
    let id = tenant_path(&tenant_id)?;
    if spec.id != route_id {
        return Err(ApiError::invalid(
            "id",
            format!("must equal the route id in the path ({route_id:?})"),
        ));
    }
    validate(&state, &spec)?;
    writable(&state, &id).await?;
    let r = state
        .store
        .tenant(&id)
        .replace_route(&caller.actor(), &spec)
        .await?;
    state.sync_tenant(&id).await?;
    Ok(Json(r))
}

/// Delete a route (members).
#[utoipa::path(delete, path = "/api/tenants/{tenant_id}/routes/{route_id}", tag = "routes",
    security(("bearer" = [])), params(("tenant_id" = String, Path), ("route_id" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((tenant_id, route_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let id = tenant_path(&tenant_id)?;
    writable(&state, &id).await?;
    state
        .store
        .tenant(&id)
        .delete_route(&caller.actor(), &route_id)
        .await?;
    state.sync_tenant(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn set_state(
    state: &AppState,
    caller: &Caller,
    tenant_id: &str,
    route_id: &str,
    address: &str,
    backend_state: &str,
) -> ApiResult<Json<RouteSpec>> {
    let id = tenant_path(tenant_id)?;
    writable(state, &id).await?;
    let r = state
        .store
        .tenant(&id)
        .set_backend_state(&caller.actor(), route_id, address, backend_state)
        .await?;
    state.sync_tenant(&id).await?;
    Ok(Json(r))
}

/// Drain a backend (members): no new requests, in-flight ones finish.
#[utoipa::path(post, path = "/api/tenants/{tenant_id}/routes/{route_id}/backends/{address}/drain",
    tag = "routes", security(("bearer" = [])),
    params(("tenant_id" = String, Path), ("route_id" = String, Path), ("address" = String, Path)),
    responses((status = 200, body = RouteSpec), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn drain(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((tenant_id, route_id, address)): Path<(String, String, String)>,
) -> ApiResult<Json<RouteSpec>> {
    set_state(&state, &caller, &tenant_id, &route_id, &address, "drain").await
}

/// Put a drained backend back into rotation (members).
#[utoipa::path(post, path = "/api/tenants/{tenant_id}/routes/{route_id}/backends/{address}/activate",
    tag = "routes", security(("bearer" = [])),
    params(("tenant_id" = String, Path), ("route_id" = String, Path), ("address" = String, Path)),
    responses((status = 200, body = RouteSpec), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn activate(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((tenant_id, route_id, address)): Path<(String, String, String)>,
) -> ApiResult<Json<RouteSpec>> {
    set_state(&state, &caller, &tenant_id, &route_id, &address, "active").await
}
