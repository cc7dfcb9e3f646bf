//! Tenantry's configuration: the serde spec types shared by the YAML file and (later) the admin
//! API, and `validate`, which turns a spec into the domain [`Snapshot`] plus server settings,
//! collecting every error with its field path.

mod duration;
mod error;
mod spec;
mod validate;

pub use duration::{format_duration, parse_duration};
pub use error::{ConfigError, ConfigErrors};
pub use spec::{
    AdminSpec, AuthSpec, BackendSpec, ClusterSpec, GatewaySpec, HealthCheckSpec, JwtSpec,
    LimitsSpec, MetricsSpec, PolicySpec, RateLimitSpec, RouteSpec, RouteWafSpec, RuntimeSpec,
    ShutdownSpec, TenantSpec, TenantWafSpec, TlsSpec, UpstreamSpec, WafLevelSpec, WafLevelsSpec,
    WafSpec,
};
pub use validate::{
    AuthSettings, ClusterSettings, GatewayConfig, JwtKeyFiles, RedisFallback, ServerSettings,
    StoredTenant, UpstreamSettings, WafLargeBody, WafLevelTuning, WafSettings, WafUnavailable,
    load_file, parse_yaml, tenant_from_store, validate, validate_policy_spec, validate_redis_url,
    validate_route_spec, validate_waf_spec,
};

pub use tenantry_domain::Snapshot;
