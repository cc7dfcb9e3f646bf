//! Tenantry's control plane: the admin API under `/api` (axum), with one authentication and
//! RBAC middleware, the OpenAPI document, and the bridge that pushes every tenant change to
//! the data plane.

mod accounts;
mod caller;
mod error;
mod keys;
mod openapi;
mod plans;
mod routes;
mod tenants;
mod users;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use tenantry_auth::{Throttle, TokenIssuer};
use tenantry_domain::{Change, TenantId};
use tenantry_store::{Store, StoreError, TenantState, TenantStatus};

pub use caller::{Caller, Policy, policy};
pub use error::{ApiError, ErrorBody, ErrorCode};
pub use openapi::openapi_json;

/// Largest request body the API accepts (larger gets 413).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Where tenant changes go: the data plane of this node (and, in cluster mode, the others).
pub trait DataPlane: Send + Sync {
    /// Applies changes atomically; an error means the proxy keeps its previous state.
    fn apply(&self, changes: Vec<Change>) -> Result<(), String>;

    /// The lock held from reading a tenant out of the store until [`DataPlane::apply`] has
    /// applied it, shared with every other path that does the same (so concurrent writes
    /// are applied in the order they were read, and the last write is what the proxy serves).
    fn store_sync(&self) -> &tokio::sync::Mutex<()>;

    /// Tells the other nodes of a cluster that a tenant changed (after [`DataPlane::apply`]
    /// succeeded here). `config` is the tenant's new configuration as JSON (`None`: removed).
    /// A single node has no one to tell.
    fn announce(&self, tenant: &TenantId, config: Option<serde_json::Value>) {
        let _ = (tenant, config);
    }

    /// The tenant's quota usage as the data plane counts it (empty if it does not serve the
    /// tenant).
    fn usage(&self, tenant: &TenantId) -> UsageFuture {
        let _ = tenant;
        Box::pin(async { Vec::new() })
    }
}

/// What [`DataPlane::usage`] returns.
pub type UsageFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Vec<QuotaUsage>> + Send + 'static>>;

/// One quota of a tenant, now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct QuotaUsage {
    /// `tokens_per_minute` or `bandwidth_gb_month`.
    pub quota: String,
    /// Used in the current window (tokens, or bytes for bandwidth).
    pub used: u64,
    /// The quota in the same unit (`null`: unlimited).
    pub limit: Option<u64>,
    /// Window start (RFC 3339): the minute, or the billing period's start.
    pub window_start: String,
    /// Window end: when the counter resets.
    pub resets_at: String,
}

/// A tenant's configuration as published to the cluster (`tn:config:<tenant_id>`).
pub fn tenant_config_json(state: &TenantState) -> serde_json::Value {
    serde_json::json!({
        "id": state.tenant.id.as_str(),
        "plan": state.plan,
        "status": state.tenant.status.as_str(),
        "managed_by": state.tenant.managed_by,
        "limits": plans::LimitsBody::from(&state.limits),
        "policy": state.policy,
        "waf": state.waf,
        "routes": state.routes,
    })
}

/// Shared state of the API.
pub struct AppState {
    /// The store.
    pub store: Store,
    /// Token issuer/verifier.
    pub tokens: TokenIssuer,
    /// Login and sign-up throttling.
    pub throttle: Throttle,
    /// The data plane to notify.
    pub dataplane: Arc<dyn DataPlane>,
    /// Base directory for relative certificate paths in routes created through the API.
    pub base_dir: PathBuf,
}

impl AppState {
    /// Reloads one tenant from the store and pushes it to the data plane (or removes it).
    pub async fn sync_tenant(&self, id: &TenantId) -> Result<(), ApiError> {
        let _serial = self.dataplane.store_sync().lock().await;
        let loaded = self.store.platform().load_tenant(id).await?;
        let config = loaded.as_ref().map(tenant_config_json);
        let change = match loaded {
            Some(state) => {
                let tenant = to_domain(&state, &self.base_dir).map_err(|e| {
                    ApiError::internal(&format!(
                        "stored routes of {} are invalid: {}",
                        state.tenant.id,
                        describe(&e)
                    ))
                })?;
                Change::PutTenant(Arc::new(tenant))
            }
            None => Change::RemoveTenant(id.clone()),
        };
        self.dataplane
            .apply(vec![change])
            .map_err(|e| ApiError::internal(&format!("data plane refused the change: {e}")))?;
        self.dataplane.announce(id, config);
        Ok(())
    }
}

/// Converts a stored tenant into the data plane's domain tenant.
pub fn to_domain(
    state: &TenantState,
    base: &std::path::Path,
) -> Result<tenantry_domain::Tenant, tenantry_config::ConfigErrors> {
    tenantry_config::tenant_from_store(
        tenantry_config::StoredTenant {
            id: &state.tenant.id,
            plan: &state.plan,
            limits: Some(&state.limits),
            suspended: state.tenant.status == TenantStatus::Suspended,
            policy: state.policy.as_ref(),
            waf: state.waf.as_ref(),
            billing_anchor_ms: u64::try_from(state.billing_anchor_ms).ok(),
            routes: &state.routes,
        },
        base,
    )
}

fn describe(errs: &tenantry_config::ConfigErrors) -> String {
    errs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Builds the whole data-plane snapshot from the store (start-up and reloads). A tenant whose
/// stored routes no longer validate (e.g. a certificate file vanished) is skipped and logged.
pub async fn load_snapshot(
    store: &Store,
    base: &std::path::Path,
) -> Result<tenantry_domain::Snapshot, StoreError> {
    // Tenant by tenant: only the domain tenants stay, never the whole store's rows.
    let mut tenants = Vec::new();
    store
        .platform()
        .load_each(|state| match to_domain(&state, base) {
            Ok(t) => tenants.push(t),
            Err(e) => tracing::error!(
                tenant = %state.tenant.id,
                errors = %describe(&e),
                "tenant skipped: its stored routes are invalid"
            ),
        })
        .await?;
    Ok(tenantry_domain::Snapshot::from_tenants(tenants))
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch (the throttle's clock).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The API router (paths under `/api`), with its layer stack.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(accounts::router())
        .merge(tenants::router())
        .merge(users::router())
        .merge(routes::router())
        .merge(keys::router())
        .merge(plans::router())
        .merge(openapi::router())
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            caller::authenticate,
        ))
        .fallback(|| async {
            ApiError::new(ErrorCode::NotFound, "no such API endpoint").into_response()
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed").into_response()
        })
        .layer(axum::middleware::from_fn(caller::reject_nul))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                ApiError::internal(&"handler panicked").into_response()
            },
        ))
        .layer(
            tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer::new([
                http::header::AUTHORIZATION,
            ]),
        )
        .with_state(state)
}

/// Serves one request through `router`: the glue between the admin listener (which knows
/// hyper) and axum. Responses are buffered (API bodies are small JSON documents).
pub async fn handle(
    router: Router,
    req: http::Request<axum::body::Body>,
    peer: SocketAddr,
) -> http::Response<Bytes> {
    use tower::ServiceExt as _;
    let mut req = req;
    req.extensions_mut().insert(caller::ClientAddr(peer));
    let resp = match tokio::time::timeout(Duration::from_secs(30), router.oneshot(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(never)) => match never {},
        Err(_) => ApiError::internal(&"admin API request timed out").into_response(),
    };
    let (parts, body) = resp.into_parts();
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            tracing::error!(error = %e, "admin API response body failed");
            Bytes::new()
        }
    };
    http::Response::from_parts(parts, bytes)
}
