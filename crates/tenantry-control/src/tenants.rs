//! Tenants: list, create (platform), read, rename, suspend/reactivate, delete with export,
//! subscription (change plan), limit overrides and the audit log.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tenantry_config::TenantWafSpec;
use tenantry_domain::{LimitOverrides, Role, TenantId, TenantWaf, WafLevel};
use tenantry_store::{AuditEntry, NewTenant, NewUser, Subscription, TenantRecord, TenantStatus};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::accounts::{check_password, hash, normalize_email};
use crate::caller::{Body, Caller, Params};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::plans::{LimitsBody, OverridesBody};

pub(crate) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/tenants", get(list).post(create))
        .route(
            "/api/tenants/{tenant_id}",
            get(read).patch(update).delete(delete),
        )
        .route("/api/tenants/{tenant_id}/suspend", post(suspend))
        .route("/api/tenants/{tenant_id}/reactivate", post(reactivate))
        .route("/api/tenants/{tenant_id}/export", get(export))
        .route(
            "/api/tenants/{tenant_id}/subscription",
            get(subscription).put(change_plan),
        )
        .route("/api/tenants/{tenant_id}/limits", put(set_limits))
        .route(
            "/api/tenants/{tenant_id}/policy",
            get(read_policy).put(set_policy),
        )
        .route("/api/tenants/{tenant_id}/waf", get(read_waf).put(set_waf))
        .route("/api/tenants/{tenant_id}/usage", get(usage))
        .route("/api/tenants/{tenant_id}/audit", get(tenant_audit))
        .route("/api/audit", get(platform_audit))
}

/// A tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantResponse {
    /// Slug.
    pub id: String,
    /// Display name.
    pub name: String,
    /// `active` or `suspended`.
    pub status: String,
    /// `api` or `file` (routes of `file` tenants are edited in the configuration file).
    pub managed_by: String,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
}

impl From<TenantRecord> for TenantResponse {
    fn from(t: TenantRecord) -> Self {
        Self {
            id: t.id.to_string(),
            name: t.name,
            status: t.status.as_str().to_owned(),
            managed_by: t.managed_by,
            created_at: t.created_at,
        }
    }
}

/// The owner created with a tenant.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnerRequest {
    /// Email.
    pub email: String,
    /// Password.
    pub password: String,
}

/// `POST /api/tenants` body (platform admins).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantRequest {
    /// Slug.
    pub tenant_id: String,
    /// Display name (default: the slug).
    #[serde(default)]
    pub name: Option<String>,
    /// Plan (default `free`).
    #[serde(default)]
    pub plan: Option<String>,
    /// Optional first owner.
    #[serde(default)]
    pub owner: Option<OwnerRequest>,
}

/// `PATCH /api/tenants/{tenant_id}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenantRequest {
    /// New display name.
    pub name: String,
}

/// A subscription with its effective limits.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionResponse {
    /// Tenant.
    pub tenant_id: String,
    /// Plan name.
    pub plan: String,
    /// Status.
    pub status: String,
    /// Current billing period start, Unix ms.
    pub period_start: i64,
    /// Current billing period end, Unix ms.
    pub period_end: i64,
    /// Per-tenant overrides set by the platform admin.
    pub overrides: OverridesBody,
    /// Effective limits (plan plus overrides).
    pub limits: LimitsBody,
}

impl From<Subscription> for SubscriptionResponse {
    fn from(s: Subscription) -> Self {
        Self {
            tenant_id: s.tenant.to_string(),
            plan: s.plan,
            status: s.status,
            period_start: s.period_start,
            period_end: s.period_end,
            overrides: OverridesBody::from(&s.overrides),
            limits: LimitsBody::from(&s.limits),
        }
    }
}

/// `PUT /api/tenants/{tenant_id}/subscription` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePlanRequest {
    /// The new plan.
    pub plan: String,
}

/// One audit entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditResponse {
    /// Sequence number (use as `before` to page).
    pub id: i64,
    /// User id, API key id, `file` or `system`.
    pub actor: String,
    /// Tenant, if the action concerned one.
    pub tenant_id: Option<String>,
    /// e.g. `route.create`.
    pub action: String,
    /// What was acted on.
    pub target: String,
    /// State before.
    pub before: Option<serde_json::Value>,
    /// State after.
    pub after: Option<serde_json::Value>,
    /// Client address.
    pub ip: Option<String>,
    /// When, Unix ms.
    pub at: i64,
}

impl From<AuditEntry> for AuditResponse {
    fn from(a: AuditEntry) -> Self {
        Self {
            id: a.id,
            actor: a.actor,
            tenant_id: a.tenant.map(|t| t.to_string()),
            action: a.action,
            target: a.target,
            before: a.before,
            after: a.after,
            ip: a.ip,
            at: a.at,
        }
    }
}

/// Paging of the audit log.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// At most this many entries (default 100, at most 1000).
    pub limit: Option<u32>,
    /// Entries older than this id.
    pub before: Option<i64>,
}

pub(crate) fn tenant_path(raw: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(raw).map_err(|_| ApiError::not_found("tenant", raw))
}

/// Tenants the caller can see: all for platform admins, their own otherwise.
#[utoipa::path(get, path = "/api/tenants", tag = "tenants", security(("bearer" = [])),
    responses((status = 200, body = [TenantResponse]), (status = 401, body = ErrorBody)))]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> ApiResult<Json<Vec<TenantResponse>>> {
    let tenants = if caller.is_platform() {
        state.store.platform().list_tenants().await?
    } else if let Some(t) = &caller.principal.tenant {
        state.store.tenant(t).get().await?.into_iter().collect()
    } else {
        Vec::new()
    };
    Ok(Json(tenants.into_iter().map(Into::into).collect()))
}

/// Create a tenant (platform admins).
#[utoipa::path(post, path = "/api/tenants", tag = "tenants", security(("bearer" = [])),
    request_body = CreateTenantRequest,
    responses((status = 201, body = TenantResponse), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Body(req): Body<CreateTenantRequest>,
) -> ApiResult<(StatusCode, Json<TenantResponse>)> {
    let id = TenantId::parse(&req.tenant_id)
        .map_err(|e| ApiError::invalid("tenant_id", format!("invalid tenant id: {e}")))?;
    let name = req.name.unwrap_or_else(|| id.to_string());
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid("name", "must be 1 to 200 characters"));
    }
    let owner = match req.owner {
        Some(o) => {
            let email = normalize_email(&o.email)?;
            check_password(&o.password, &email)?;
            Some(NewUser {
                id: tenantry_auth::random_id("u").map_err(|e| ApiError::internal(&e))?,
                email,
                password_hash: hash(&o.password)?,
                role: Role::Owner,
            })
        }
        None => None,
    };
    let t = state
        .store
        .platform()
        .create_tenant(
            &caller.actor(),
            NewTenant {
                id: id.clone(),
                name: name.trim().to_owned(),
                plan: req.plan.unwrap_or_else(|| "free".to_owned()),
            },
            owner,
        )
        .await?;
    state.sync_tenant(&id).await?;
    Ok((StatusCode::CREATED, Json(t.into())))
}

/// Read a tenant.
#[utoipa::path(get, path = "/api/tenants/{tenant_id}", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = String, Path)),
    responses((status = 200, body = TenantResponse), (status = 404, body = ErrorBody)))]
pub(crate) async fn read(
    State(state): State<Arc<AppState>>,
    Path(tenant_id): Path<String>,
) -> ApiResult<Json<TenantResponse>> {
    let id = tenant_path(&tenant_id)?;
    let t = state
        .store
        .tenant(&id)
        .get()
        .await?
        .ok_or_else(|| ApiError::not_found("tenant", &tenant_id))?;
    Ok(Json(t.into()))
}

/// Rename a tenant (owners).
#[utoipa::path(patch, path = "/api/tenants/{tenant_id}", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = String, Path)), request_body = UpdateTenantRequest,
    responses((status = 200, body = TenantResponse), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn update(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(tenant_id): Path<String>,
    Body(req): Body<UpdateTenantRequest>,
) -> ApiResult<Json<TenantResponse>> {
    let id = tenant_path(&tenant_id)?;
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid("name", "must be 1 to 200 characters"));
    }
    let t = state
        .store
        .tenant(&id)
        .rename(&caller.actor(), name)
        .await?;
    Ok(Json(t.into()))
}

pub(crate) async fn set_status(
    state: &AppState,
    caller: &Caller,
    tenant_id: &str,
    status: TenantStatus,
) -> ApiResult<Json<TenantResponse>> {
    let id = tenant_path(tenant_id)?;
    let t = state
        .store
        .platform()
        .set_tenant_status(&caller.actor(), &id, status)
        .await?;
    state.sync_tenant(&id).await?;
    Ok(Json(t.into()))
}

/// Suspend a tenant (platform admins): its hosts answer `403 tenant_suspended`.
#[utoipa::path(post, path = "/api/tenants/{tenant_id}/suspend", tag = "tenants",
    security(("bearer" = [])), params(("tenant_id" = String, Path)),
    responses((status = 200, body = TenantResponse), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn suspend(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(tenant_id): Path<String>,
) -> ApiResult<Json<TenantResponse>> {
    set_status(&state, &caller, &tenant_id, TenantStatus::Suspended).await
}

/// Reactivate a suspended tenant (platform admins).
#[utoipa::path(post, path = "/api/tenants/{tenant_id}/reactivate", tag = "tenants",
    security(("bearer" = [])), params(("tenant_id" = String, Path)),
    responses((status = 200, body = TenantResponse), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn reactivate(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(tenant_id): Path<String>,
) -> ApiResult<Json<TenantResponse>> {
    set_status(&state, &caller, &tenant_id, TenantStatus::Active).await
}

/// Delete a tenant and everything it owns (platform admins); the answer is the export of
/// what was deleted.
#[utoipa::path(delete, path = "/api/tenants/{tenant_id}", tag = "tenants",
    security(("bearer" = [])), params(("tenant_id" = String, Path)),
    responses((status = 200, description = "the tenant's export", body = serde_json::Value),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(tenant_id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let id = tenant_path(&tenant_id)?;
    let export = state
        .store
        .platform()
        .delete_tenant(&caller.actor(), &id)
        .await?;
    state.sync_tenant(&id).await?;
    Ok(Json(export))
}

/// Export everything the tenant owns as one JSON document (owners).
#[utoipa::path(get, path = "/api/tenants/{tenant_id}/export", tag = "tenants",
    security(("bearer" = [])), params(("tenant_id" = String, Path)),
    responses((status = 200, body = serde_json::Value), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn export(
    State(state): State<Arc<AppState>>,
    Path(tenant_id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let id = tenant_path(&tenant_id)?;
    Ok(Json(state.store.tenant(&id).export().await?))
}

/// The tenant's subscription and effective limits.
#[utoipa::path(get, path = "/api/tenants/{tenant_id}/subscription", tag = "plans",
    security(("bearer" = [])), params(("tenant_id" = String, Path)),
    responses((status = 200, body = SubscriptionResponse), (status = 404, body = ErrorBody)))]
pub(crate) async fn subscription(
    State(state): State<Arc<AppState>>,
    Path(tenant_id): Path<String>,
) -> ApiResult<Json<SubscriptionResponse>> {
    let id = tenant_path(&tenant_id)?;
    Ok(Json(state.store.tenant(&id).subscription().await?.into()))
}

/// Change plan (owners). A downgrade below current usage is refused with
/// `409 downgrade_blocked`; the new limits apply to the data plane at once.
#[utoipa::path(put, path = "/api/tenants/{tenant_id}/subscription", tag = "plans",
    security(("bearer" = [])), params(("tenant_id" = String, Path)),
    request_body = ChangePlanRequest,
    responses((status = 200, body = SubscriptionResponse), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn change_plan(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(tenant_id): Path<String>,
    Body(req): Body<ChangePlanRequest>,
) -> ApiResult<Json<SubscriptionResponse>> {
    let id = tenant_path(&tenant_id)?;
    let s = state
        .store
        .tenant(&id)
        .set_plan(&caller.actor(), &req.plan)
        .await?;
    state.sync_tenant(&id).await?;
    Ok(Json(s.into()))
}

/// Set per-tenant limit overrides (platform admins); `null` in a field means unlimited, an
/// absent field keeps the plan's value.
#[utoipa::path(put, path = "/api/tenants/{tenant_id}/limits", tag = "plans",
    security(("bearer" = [])), params(("tenant_id" = String, Path)),
    request_body = OverridesBody,
    responses((status = 200, body = SubscriptionResponse), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn set_limits(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(tenant_id): Path<String>,
    Body(req): Body<OverridesBody>,
) -> ApiResult<Json<SubscriptionResponse>> {
    let id = tenant_path(&tenant_id)?;
    let overrides: LimitOverrides = req.try_into()?;
    let s = state
        .store
        .platform()
        .set_overrides(&caller.actor(), &id, &overrides)
        .await?;
    state.sync_tenant(&id).await?;
    Ok(Json(s.into()))
}

/// The tenant's LLM policy: which models and tools requests to its `llm` routes may use.
/// Missing lists allow anything.
#[utoipa::path(get, path = "/api/tenants/{tenant_id}/policy", tag = "tenants",
    security(("bearer" = [])), params(("tenant_id" = String, Path)),
    responses((status = 200, body = tenantry_config::PolicySpec), (status = 404, body = ErrorBody)))]
pub(crate) async fn read_policy(
    State(state): State<Arc<AppState>>,
    Path(tenant_id): Path<String>,
) -> ApiResult<Json<tenantry_config::PolicySpec>> {
    let id = tenant_path(&tenant_id)?;
    let p = state.store.tenant(&id).policy().await?;
    Ok(Json(p.unwrap_or_default()))
}

/// Replace the tenant's LLM policy (owners). `{}` removes every restriction; an empty list
/// allows nothing. Applies to the data plane before the response.
#[utoipa::path(put, path = "/api/tenants/{tenant_id}/policy", tag = "tenants",
    security(("bearer" = [])), params(("tenant_id" = String, Path)),
    request_body = tenantry_config::PolicySpec,
    responses((status = 200, body = tenantry_config::PolicySpec), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, description = "managed_by_file", body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub(crate) async fn set_policy(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(tenant_id): Path<String>,
    Body(req): Body<tenantry_config::PolicySpec>,
) -> ApiResult<Json<tenantry_config::PolicySpec>> {
    let id = tenant_path(&tenant_id)?;
    crate::routes::writable(&state, &id).await?;
    tenantry_config::validate_policy_spec(&req).map_err(|e| ApiError::from_config(&e, ""))?;
    let open = req.allowed_models.is_none() && req.allowed_tools.is_none();
    state
        .store
        .tenant(&id)
        .set_policy(&caller.actor(), (!open).then_some(&req))
        .await?;
    state.sync_tenant(&id).await?;
    Ok(Json(req))
}

/// A tenant's WAF settings, and the level its routes get unless they override it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WafResponse {
    /// `off`, `basic`, `standard` or `strict`; `null`: the plan's level.
    pub level: Option<String>,
    /// `block` or `detect` (log and count, never block).
    pub mode: String,
    /// CRS rule ids never applied to the tenant's requests, sorted.
    pub exclusions: Vec<u32>,
    /// The level of the tenant's plan (with the platform's overrides).
    pub plan_level: String,
    /// The level the tenant's routes get: `level`, else `plan_level`.
    pub effective_level: String,
}

impl WafResponse {
    fn new(waf: Option<&TenantWaf>, plan_level: WafLevel) -> Self {
        let waf = waf.cloned().unwrap_or_default();
        Self {
            level: waf.level.map(|l| l.as_str().to_owned()),
            mode: waf.mode.as_str().to_owned(),
            exclusions: waf.exclusions.to_vec(),
            plan_level: plan_level.as_str().to_owned(),
            effective_level: waf.level.unwrap_or(plan_level).as_str().to_owned(),
        }
    }
}

/// The stored form of validated settings: normalised (exclusions sorted and deduplicated),
/// `None` for the defaults.
fn waf_spec(waf: Option<&TenantWaf>) -> Option<TenantWafSpec> {
    waf.map(|w| TenantWafSpec {
        level: w.level.map(|l| l.as_str().to_owned()),
        mode: Some(w.mode.as_str().to_owned()),
        exclusions: (!w.exclusions.is_empty())
            .then(|| w.exclusions.iter().map(|&id| i64::from(id)).collect()),
    })
}

/// The tenant's WAF settings: its level (`null`: the plan's), mode and rule exclusions, with
/// the plan's level and the effective one. Routes may override level and mode.
#[utoipa::path(get, path = "/api/tenants/{tenant_id}/waf", tag = "tenants",
    security(("bearer" = [])), params(("tenant_id" = String, Path)),
    responses((status = 200, body = WafResponse), (status = 404, body = ErrorBody)))]
pub(crate) async fn read_waf(
    State(state): State<Arc<AppState>>,
    Path(tenant_id): Path<String>,
) -> ApiResult<Json<WafResponse>> {
    let id = tenant_path(&tenant_id)?;
    let scope = state.store.tenant(&id);
    let stored = scope.waf().await?;
    let sub = scope.subscription().await?;
    let waf = match &stored {
        Some(spec) => tenantry_config::validate_waf_spec(spec).map_err(|e| {
            ApiError::internal(&format!("stored WAF settings of {id} are invalid: {e}"))
        })?,
        None => None,
    };
    Ok(Json(WafResponse::new(waf.as_deref(), sub.limits.waf_level)))
}

/// Replace the tenant's WAF settings (owners): absent `level` follows the plan, absent `mode`
/// blocks, absent `exclusions` excludes nothing. Applies to the data plane before the
/// response.
#[utoipa::path(put, path = "/api/tenants/{tenant_id}/waf", tag = "tenants",
    security(("bearer" = [])), params(("tenant_id" = String, Path)),
    request_body = TenantWafSpec,
    responses((status = 200, body = WafResponse), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, description = "managed_by_file", body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub(crate) async fn set_waf(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(tenant_id): Path<String>,
    Body(req): Body<TenantWafSpec>,
) -> ApiResult<Json<WafResponse>> {
    let id = tenant_path(&tenant_id)?;
    crate::routes::writable(&state, &id).await?;
    let waf =
        tenantry_config::validate_waf_spec(&req).map_err(|e| ApiError::from_config(&e, ""))?;
    let scope = state.store.tenant(&id);
    scope
        .set_waf(&caller.actor(), waf_spec(waf.as_deref()).as_ref())
        .await?;
    state.sync_tenant(&id).await?;
    let sub = scope.subscription().await?;
    Ok(Json(WafResponse::new(waf.as_deref(), sub.limits.waf_level)))
}

/// The tenant's usage against its plan now: its rate limit, LLM tokens this minute and
/// bandwidth this billing period (which resets at the period's start, anchored on the
/// subscription), as the gateway counts them (cluster-wide in cluster mode).
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageResponse {
    /// Tenant.
    pub tenant_id: String,
    /// Plan.
    pub plan: String,
    /// Requests per minute (`null`: unlimited).
    pub requests_per_minute: Option<u64>,
    /// Burst (`null`: the per-minute rate).
    pub burst: Option<u64>,
    /// What happens at a quota.
    pub on_quota: String,
    /// Quotas with their use in the current window.
    pub quotas: Vec<crate::QuotaUsage>,
}

/// Quota usage now (see [`UsageResponse`]).
#[utoipa::path(get, path = "/api/tenants/{tenant_id}/usage", tag = "plans",
    security(("bearer" = [])), params(("tenant_id" = String, Path)),
    responses((status = 200, body = UsageResponse), (status = 404, body = ErrorBody)))]
pub(crate) async fn usage(
    State(state): State<Arc<AppState>>,
    Path(tenant_id): Path<String>,
) -> ApiResult<Json<UsageResponse>> {
    let id = tenant_path(&tenant_id)?;
    let sub = state.store.tenant(&id).subscription().await?;
    let quotas = state.dataplane.usage(&id).await;
    Ok(Json(UsageResponse {
        tenant_id: id.to_string(),
        plan: sub.plan,
        requests_per_minute: sub.limits.requests_per_minute,
        burst: sub.limits.burst,
        on_quota: sub.limits.on_quota.as_str().to_owned(),
        quotas,
    }))
}

fn page(q: &AuditQuery) -> Result<u32, ApiError> {
    match q.limit {
        None => Ok(100),
        Some(n @ 1..=1000) => Ok(n),
        Some(_) => Err(ApiError::invalid("limit", "must be between 1 and 1000")),
    }
}

/// The tenant's audit log, newest first.
#[utoipa::path(get, path = "/api/tenants/{tenant_id}/audit", tag = "audit",
    security(("bearer" = [])), params(("tenant_id" = String, Path), AuditQuery),
    responses((status = 200, body = [AuditResponse]), (status = 404, body = ErrorBody)))]
pub(crate) async fn tenant_audit(
    State(state): State<Arc<AppState>>,
    Path(tenant_id): Path<String>,
    Params(q): Params<AuditQuery>,
) -> ApiResult<Json<Vec<AuditResponse>>> {
    let id = tenant_path(&tenant_id)?;
    let entries = state.store.tenant(&id).audit(page(&q)?, q.before).await?;
    Ok(Json(entries.into_iter().map(Into::into).collect()))
}

/// The whole platform's audit log (platform admins).
#[utoipa::path(get, path = "/api/audit", tag = "audit", security(("bearer" = [])),
    params(AuditQuery),
    responses((status = 200, body = [AuditResponse]), (status = 403, body = ErrorBody)))]
pub(crate) async fn platform_audit(
    State(state): State<Arc<AppState>>,
    Params(q): Params<AuditQuery>,
) -> ApiResult<Json<Vec<AuditResponse>>> {
    let entries = state.store.platform().audit(page(&q)?, q.before).await?;
    Ok(Json(entries.into_iter().map(Into::into).collect()))
}
