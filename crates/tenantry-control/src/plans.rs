//! Plans and their limits: everyone signed in reads them; platform admins create and edit
//! them, and every tenant on an edited plan gets its new limits at once.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};
use tenantry_domain::{LimitOverrides, OnQuota, PlanLimits, WafLevel};
use tenantry_store::PlanRecord;
use utoipa::ToSchema;

use crate::AppState;
use crate::caller::{Body, Caller};
use crate::error::{ApiError, ApiResult, ErrorBody};

pub(crate) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/plans", get(list).post(create))
        .route("/api/plans/{plan}", get(read).put(update))
}

/// A plan's limits; `null` means unlimited.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsBody {
    /// Users per tenant.
    pub max_users: Option<u64>,
    /// Routes per tenant.
    pub max_routes: Option<u64>,
    /// Backends per route.
    pub max_backends_per_route: Option<u64>,
    /// Distinct hosts per tenant.
    pub max_domains: Option<u64>,
    /// Workers per tenant.
    pub max_workers: Option<u64>,
    /// Requests per minute.
    pub requests_per_minute: Option<u64>,
    /// Requests allowed at once (the rate limiter's bucket); `null`: `requests_per_minute`.
    #[serde(default)]
    pub burst: Option<u64>,
    /// LLM tokens per minute.
    pub tokens_per_minute: Option<u64>,
    /// Bandwidth per billing month (GB).
    pub bandwidth_gb_month: Option<u64>,
    /// `off`, `basic`, `standard` or `strict`.
    pub waf_level: String,
    /// Whether dedicated instances are allowed.
    pub dedicated_allowed: bool,
    /// `log`, `throttle`, `block` or `notify`.
    pub on_quota: String,
}

impl From<&PlanLimits> for LimitsBody {
    fn from(l: &PlanLimits) -> Self {
        Self {
            max_users: l.max_users,
            max_routes: l.max_routes,
            max_backends_per_route: l.max_backends_per_route,
            max_domains: l.max_domains,
            max_workers: l.max_workers,
            requests_per_minute: l.requests_per_minute,
            burst: l.burst,
            tokens_per_minute: l.tokens_per_minute,
            bandwidth_gb_month: l.bandwidth_gb_month,
            waf_level: l.waf_level.as_str().to_owned(),
            dedicated_allowed: l.dedicated_allowed,
            on_quota: l.on_quota.as_str().to_owned(),
        }
    }
}

fn waf(s: &str, path: &str) -> Result<WafLevel, ApiError> {
    WafLevel::parse(s).ok_or_else(|| {
        ApiError::invalid(
            path,
            format!("unknown WAF level {s:?} (expected off, basic, standard or strict)"),
        )
    })
}

fn on_quota(s: &str, path: &str) -> Result<OnQuota, ApiError> {
    OnQuota::parse(s).ok_or_else(|| {
        ApiError::invalid(
            path,
            format!("unknown on_quota {s:?} (expected log, throttle, block or notify)"),
        )
    })
}

/// The largest rate (`requests_per_minute`, `burst`) a plan or an override may set, as for a
/// route's own `ratelimit`.
const MAX_RATE: u64 = 1_000_000_000;
/// The largest count any other limit may set (users, routes, tokens per minute, GB).
const MAX_COUNT: u64 = 1_000_000_000_000;

/// The values a numeric limit may take: rates like a route's own `ratelimit` (0 would refuse
/// every request), bandwidth in GB up to [`MAX_RATE`], every other count up to [`MAX_COUNT`].
fn range(field: &str) -> std::ops::RangeInclusive<u64> {
    match field {
        "requests_per_minute" | "burst" => 1..=MAX_RATE,
        "bandwidth_gb_month" => 0..=MAX_RATE,
        _ => 0..=MAX_COUNT,
    }
}

/// `v` if it is within the field's [`range`] (`None`: unlimited, always fine).
fn bounded(v: Option<u64>, field: &str) -> Result<Option<u64>, ApiError> {
    let r = range(field);
    match v {
        Some(n) if !r.contains(&n) => Err(ApiError::invalid(
            field,
            format!(
                "must be between {} and {} (or null for unlimited), got {n}",
                r.start(),
                r.end()
            ),
        )),
        _ => Ok(v),
    }
}

/// [`bounded`] for an override, where absent keeps the plan's value.
fn bounded_override(v: Option<Option<u64>>, field: &str) -> Result<Option<Option<u64>>, ApiError> {
    v.map(|inner| bounded(inner, field)).transpose()
}

impl TryFrom<LimitsBody> for PlanLimits {
    type Error = ApiError;

    fn try_from(b: LimitsBody) -> Result<Self, ApiError> {
        Ok(PlanLimits {
            max_users: bounded(b.max_users, "max_users")?,
            max_routes: bounded(b.max_routes, "max_routes")?,
            max_backends_per_route: bounded(b.max_backends_per_route, "max_backends_per_route")?,
            max_domains: bounded(b.max_domains, "max_domains")?,
            max_workers: bounded(b.max_workers, "max_workers")?,
            requests_per_minute: bounded(b.requests_per_minute, "requests_per_minute")?,
            burst: bounded(b.burst, "burst")?,
            tokens_per_minute: bounded(b.tokens_per_minute, "tokens_per_minute")?,
            bandwidth_gb_month: bounded(b.bandwidth_gb_month, "bandwidth_gb_month")?,
            waf_level: waf(&b.waf_level, "waf_level")?,
            dedicated_allowed: b.dedicated_allowed,
            on_quota: on_quota(&b.on_quota, "on_quota")?,
        })
    }
}

/// Absent → `None` (keep the plan's value); `null` → `Some(None)` (unlimited).
fn double<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

/// Per-tenant overrides: an absent field keeps the plan's value, `null` makes a numeric
/// limit unlimited.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverridesBody {
    /// See the plan's `max_users`.
    #[serde(
        default,
        deserialize_with = "double",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u64>)]
    pub max_users: Option<Option<u64>>,
    /// See the plan's `max_routes`.
    #[serde(
        default,
        deserialize_with = "double",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u64>)]
    pub max_routes: Option<Option<u64>>,
    /// See the plan's `max_backends_per_route`.
    #[serde(
        default,
        deserialize_with = "double",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u64>)]
    pub max_backends_per_route: Option<Option<u64>>,
    /// See the plan's `max_domains`.
    #[serde(
        default,
        deserialize_with = "double",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u64>)]
    pub max_domains: Option<Option<u64>>,
    /// See the plan's `max_workers`.
    #[serde(
        default,
        deserialize_with = "double",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u64>)]
    pub max_workers: Option<Option<u64>>,
    /// See the plan's `requests_per_minute`.
    #[serde(
        default,
        deserialize_with = "double",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u64>)]
    pub requests_per_minute: Option<Option<u64>>,
    /// See the plan's `burst`.
    #[serde(
        default,
        deserialize_with = "double",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u64>)]
    pub burst: Option<Option<u64>>,
    /// See the plan's `tokens_per_minute`.
    #[serde(
        default,
        deserialize_with = "double",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u64>)]
    pub tokens_per_minute: Option<Option<u64>>,
    /// See the plan's `bandwidth_gb_month`.
    #[serde(
        default,
        deserialize_with = "double",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u64>)]
    pub bandwidth_gb_month: Option<Option<u64>>,
    /// See the plan's `waf_level`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waf_level: Option<String>,
    /// See the plan's `dedicated_allowed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedicated_allowed: Option<bool>,
    /// See the plan's `on_quota`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_quota: Option<String>,
}

impl From<&LimitOverrides> for OverridesBody {
    fn from(o: &LimitOverrides) -> Self {
        Self {
            max_users: o.max_users,
            max_routes: o.max_routes,
            max_backends_per_route: o.max_backends_per_route,
            max_domains: o.max_domains,
            max_workers: o.max_workers,
            requests_per_minute: o.requests_per_minute,
            burst: o.burst,
            tokens_per_minute: o.tokens_per_minute,
            bandwidth_gb_month: o.bandwidth_gb_month,
            waf_level: o.waf_level.map(|w| w.as_str().to_owned()),
            dedicated_allowed: o.dedicated_allowed,
            on_quota: o.on_quota.map(|q| q.as_str().to_owned()),
        }
    }
}

impl TryFrom<OverridesBody> for LimitOverrides {
    type Error = ApiError;

    fn try_from(b: OverridesBody) -> Result<Self, ApiError> {
        Ok(LimitOverrides {
            max_users: bounded_override(b.max_users, "max_users")?,
            max_routes: bounded_override(b.max_routes, "max_routes")?,
            max_backends_per_route: bounded_override(
                b.max_backends_per_route,
                "max_backends_per_route",
            )?,
            max_domains: bounded_override(b.max_domains, "max_domains")?,
            max_workers: bounded_override(b.max_workers, "max_workers")?,
            requests_per_minute: bounded_override(b.requests_per_minute, "requests_per_minute")?,
            burst: bounded_override(b.burst, "burst")?,
            tokens_per_minute: bounded_override(b.tokens_per_minute, "tokens_per_minute")?,
            bandwidth_gb_month: bounded_override(b.bandwidth_gb_month, "bandwidth_gb_month")?,
            waf_level: b
                .waf_level
                .as_deref()
                .map(|w| waf(w, "waf_level"))
                .transpose()?,
            dedicated_allowed: b.dedicated_allowed,
            on_quota: b
                .on_quota
                .as_deref()
                .map(|q| on_quota(q, "on_quota"))
                .transpose()?,
        })
    }
}

/// A plan.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanResponse {
    /// Name.
    pub name: String,
    /// Limits.
    pub limits: LimitsBody,
    /// Last change, Unix ms.
    pub updated_at: i64,
}

impl From<PlanRecord> for PlanResponse {
    fn from(p: PlanRecord) -> Self {
        Self {
            limits: LimitsBody::from(&p.limits),
            name: p.name,
            updated_at: p.updated_at,
        }
    }
}

/// `POST /api/plans` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePlanRequest {
    /// Name (a slug).
    pub name: String,
    /// Limits.
    pub limits: LimitsBody,
}

/// Every plan.
#[utoipa::path(get, path = "/api/plans", tag = "plans", security(("bearer" = [])),
    responses((status = 200, body = [PlanResponse]), (status = 401, body = ErrorBody)))]
pub(crate) async fn list(State(state): State<Arc<AppState>>) -> ApiResult<Json<Vec<PlanResponse>>> {
    let plans = state.store.platform().list_plans().await?;
    Ok(Json(plans.into_iter().map(Into::into).collect()))
}

/// One plan.
#[utoipa::path(get, path = "/api/plans/{plan}", tag = "plans", security(("bearer" = [])),
    params(("plan" = String, Path)),
    responses((status = 200, body = PlanResponse), (status = 404, body = ErrorBody)))]
pub(crate) async fn read(
    State(state): State<Arc<AppState>>,
    Path(plan): Path<String>,
) -> ApiResult<Json<PlanResponse>> {
    let p = state
        .store
        .platform()
        .get_plan(&plan)
        .await?
        .ok_or_else(|| ApiError::not_found("plan", &plan))?;
    Ok(Json(p.into()))
}

/// Create a plan (platform admins).
#[utoipa::path(post, path = "/api/plans", tag = "plans", security(("bearer" = [])),
    request_body = CreatePlanRequest,
    responses((status = 201, body = PlanResponse), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Body(req): Body<CreatePlanRequest>,
) -> ApiResult<(StatusCode, Json<PlanResponse>)> {
    if tenantry_domain::TenantId::parse(&req.name).is_err() {
        return Err(ApiError::invalid(
            "name",
            "plan names are slugs: [a-z0-9-]{1,63}",
        ));
    }
    let limits: PlanLimits = req.limits.try_into()?;
    let p = state
        .store
        .platform()
        .create_plan(&caller.actor(), &req.name, &limits)
        .await?;
    Ok((StatusCode::CREATED, Json(p.into())))
}

/// Replace a plan's limits (platform admins); tenants on the plan get them at once.
#[utoipa::path(put, path = "/api/plans/{plan}", tag = "plans", security(("bearer" = [])),
    params(("plan" = String, Path)), request_body = LimitsBody,
    responses((status = 200, body = PlanResponse), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn update(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(plan): Path<String>,
    Body(req): Body<LimitsBody>,
) -> ApiResult<Json<PlanResponse>> {
    let limits: PlanLimits = req.try_into()?;
    let (p, tenants) = state
        .store
        .platform()
        .update_plan(&caller.actor(), &plan, &limits)
        .await?;
    for t in &tenants {
        state.sync_tenant(t).await?;
    }
    Ok(Json(p.into()))
}
