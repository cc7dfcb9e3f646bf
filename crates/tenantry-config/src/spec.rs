//! The wire model: what the YAML file (and later the admin API) says, before validation.
//! Unknown keys are errors. Values that need checking (addresses, durations, enums) are kept as
//! strings here so that validation can name the field that is wrong.

use serde::{Deserialize, Deserializer, Serialize};

/// Deserializes a list and gives back its spare capacity at once. serde grows lists by
/// doubling from 4; with 100k tenants of one route each, the spare slots alone were 40% of the
/// parse's peak memory, and the allocator keeps a peak resident.
fn shrunk<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let mut v = Vec::<T>::deserialize(d)?;
    v.shrink_to_fit();
    Ok(v)
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    /// Plain HTTP proxy listener, default `127.0.0.1:8080`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// TLS proxy listener (certificates per route, chosen by SNI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_listen: Option<String>,
    /// Admin listener: health, readiness, metrics, reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminSpec>,
    /// Metrics settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSpec>,
    /// Whether to write a JSON access log line per request on stdout (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<bool>,
    /// Graceful shutdown timings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown: Option<ShutdownSpec>,
    /// Upstream connection settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamSpec>,
    /// Request limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,
    /// Runtime shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeSpec>,
    /// Unix socket through which `serve --upgrade` takes over the listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_socket: Option<String>,
    /// Control-plane authentication (JWT issuer, keys, token lifetime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Redis URL (`redis://host:port[/db]`): cluster mode. Rate limits and quota counters
    /// are shared by every node, and configuration changes reach every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    /// What rate limiting does while Redis is unreachable: `local` (default; each node
    /// enforces its share of the limit), `allow` or `deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_redis_error: Option<String>,
    /// Cluster settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSpec>,
    /// WAF engine settings (libmodsecurity and the OWASP CRS) and what each level means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waf: Option<WafSpec>,
    /// The tenants and their routes.
    #[serde(default, deserialize_with = "shrunk")]
    pub tenants: Vec<TenantSpec>,
}

/// `waf:` section: how the WAF engine is loaded and run. Relative paths are relative to the
/// config file's folder.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WafSpec {
    /// Shared library to load (default `libmodsecurity.so.3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<String>,
    /// OWASP CRS directory holding `rules/` (default `/usr/share/modsecurity-crs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crs: Option<String>,
    /// Largest body inspected, in bytes (default 131072).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<usize>,
    /// What happens to larger bodies: `reject` (413) or `inspect_partial` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_large_body: Option<String>,
    /// What routes with a WAF level do when the engine cannot be loaded: `deny` (default,
    /// 503) or `allow` (served uninspected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_unavailable: Option<String>,
    /// Inspection threads (default: one per core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Inspections waiting for a thread before requests get `503 waf_busy` (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<usize>,
    /// File receiving one line per libmodsecurity log message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_log: Option<String>,
    /// Rule files included after the CRS in every rules set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_rules: Option<Vec<String>>,
    /// CRS tuning of each level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub levels: Option<WafLevelsSpec>,
}

/// `waf.levels:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WafLevelsSpec {
    /// Default paranoia 1, threshold 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<WafLevelSpec>,
    /// Default paranoia 1, threshold 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standard: Option<WafLevelSpec>,
    /// Default paranoia 2 (rules up to 3 run and are logged), threshold 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<WafLevelSpec>,
}

/// CRS tuning of one WAF level (`waf.levels.<level>`); unset keys keep the level's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WafLevelSpec {
    /// CRS paranoia level whose rules count toward blocking (1–4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paranoia: Option<u64>,
    /// CRS paranoia level whose rules run and are logged (`paranoia` to 4; default
    /// `paranoia`, or 3 for `strict`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executing_paranoia: Option<u64>,
    /// Inbound anomaly score at which a request is blocked (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u64>,
}

/// `cluster:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// This node's name in `tenantry cluster status` (default: host name and process id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// How long a node trusts its copy of a tenant's configuration without an event
    /// (default `30s`): a missed change heals within this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_ttl: Option<String>,
}

/// `auth:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    /// The `iss` claim of issued tokens (default `tenantry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Access token lifetime (default `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ttl: Option<String>,
    /// Asymmetric signing keys; without them tokens are HS256 with a secret generated in the
    /// data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSpec>,
}

/// `auth.jwt:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSpec {
    /// `RS256` or `ES256`.
    pub algorithm: String,
    /// PEM private key (signs).
    pub private_key: String,
    /// PEM public key (verifies).
    pub public_key: String,
}

/// `admin:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSpec {
    /// Admin listener address, e.g. `127.0.0.1:9000`.
    pub listen: String,
}

/// `metrics:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSpec {
    /// Tenants that get their own `tenant` label (default 1000); the rest share `_other`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tenants: Option<usize>,
}

/// `shutdown:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSpec {
    /// How long listeners keep accepting after SIGTERM while `/readyz` says 503 (default `2s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<String>,
    /// How long in-flight requests may take to finish after that (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<String>,
}

/// `upstream:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// TCP connect timeout (default `2s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    /// How long an idle pooled connection is kept (default `90s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// How long a backend may take to send response headers (default `60s`); then 504.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_timeout: Option<String>,
    /// Idle keep-alive connections kept per backend (default 512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_per_backend: Option<usize>,
}

/// `limits:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Largest accepted request header section in bytes (default 32768); larger gets 431.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<usize>,
    /// Largest request body an LLM route reads to check its policy (default 1048576);
    /// larger gets 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_llm_body_bytes: Option<usize>,
    /// How long a client connection may stay idle, or take to send a request head, before it
    /// is closed (default `30s`; slowloris protection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_timeout: Option<String>,
}

/// `runtime:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSpec {
    /// Proxy worker threads (default: one per core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

/// One tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// Slug `[a-z0-9-]{1,63}`.
    pub id: String,
    /// Plan name (default `free`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Allowed models and tools on the tenant's LLM routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicySpec>,
    /// WAF level, mode and rule exclusions for the tenant's routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waf: Option<TenantWafSpec>,
    /// The tenant's routes.
    #[serde(default, deserialize_with = "shrunk")]
    pub routes: Vec<RouteSpec>,
}

/// One route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Slug, unique within the tenant.
    pub id: String,
    /// `acme.example.com` or `*.acme.example.com`.
    pub host: String,
    /// Path prefix (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// `round_robin` (default), `weighted_round_robin`, `least_conn` or `ip_hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// `http` (default) or `llm` (OpenAI-style API: policies and token quotas apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The route's own rate limit, replacing the plan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratelimit: Option<RateLimitSpec>,
    /// The route's WAF level and mode, replacing the tenant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waf: Option<RouteWafSpec>,
    /// Certificate for the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Box<TlsSpec>>,
    /// Active health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<Box<HealthCheckSpec>>,
    /// Backends (at least one).
    #[serde(default, deserialize_with = "shrunk")]
    pub backends: Vec<BackendSpec>,
}

/// `policy:` of a tenant: what its LLM routes accept. A missing list allows anything; an
/// empty list allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Models a request may name in `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_models: Option<Vec<String>>,
    /// Tools a request may offer in `tools[].function.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_tools: Option<Vec<String>>,
}

/// `waf:` of a tenant (and the body of `PUT /api/tenants/{id}/waf`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TenantWafSpec {
    /// `off`, `basic`, `standard` or `strict` (absent or `null`: the plan's level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// `block` (default) or `detect` (log and count, never block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// CRS rule ids (1 to 99999999) never applied to the tenant's requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusions: Option<Vec<i64>>,
}

/// `waf:` of a route: unset keys keep the tenant's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RouteWafSpec {
    /// `off`, `basic`, `standard` or `strict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// `block` or `detect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// `ratelimit:` of a route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Sustained rate (at least 1).
    pub requests_per_minute: u64,
    /// Requests allowed at once (default: `requests_per_minute`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Who shares a bucket: `tenant`, `route` (default), `client_ip` or `api_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `tls:` of a route; relative paths are relative to the config file's folder.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// PEM certificate chain file.
    pub cert: String,
    /// PEM private key file.
    pub key: String,
}

/// `health_check:` of a route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    /// Path (default `/healthz`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Default `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Default `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    /// Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    /// Default 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
}

/// One backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// `ip:port`.
    pub address: String,
    /// Weight (default 1, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// `active` (default) or `drain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}
