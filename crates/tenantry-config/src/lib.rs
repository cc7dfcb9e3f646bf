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
    AdminSpec, BackendSpec, GatewaySpec, HealthCheckSpec, LimitsSpec, MetricsSpec, RouteSpec,
    RuntimeSpec, ShutdownSpec, TenantSpec, TlsSpec, UpstreamSpec,
};
pub use validate::{
    GatewayConfig, ServerSettings, UpstreamSettings, load_file, parse_yaml, validate,
};

pub use tenantry_domain::Snapshot;
