//! Tenantry's domain model: ids, tenants, routes, backends, the routing [`Snapshot`] and the
//! [`Change`] algebra. Pure data and decisions: no IO, no async, no serde.

mod access;
mod addr;
mod host;
mod ids;
mod plan;
mod route;
mod snapshot;

pub use access::{Access, Action, Principal, Role, authorize};
pub use addr::{AddrError, BackendAddr};
pub use host::{HostError, HostPattern, normalize_host};
pub use ids::{IdError, RouteId, TenantId};
pub use plan::{
    CountedLimit, LimitOverrides, OnQuota, PlanLimits, WafLevel, billing_period, check_count,
    default_plans, derive_limits, rfc3339,
};
pub use route::{
    Algorithm, Backend, BackendState, EffectiveWaf, HealthCheck, RateLimitKey, Route, RouteKind,
    RouteRateLimit, RouteWaf, Tenant, TenantPolicy, TenantWaf, TlsFiles, WafMode,
};
pub use snapshot::{Change, Conflict, Snapshot};
