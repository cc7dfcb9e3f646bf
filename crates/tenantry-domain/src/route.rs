//! Tenants, their routes and the backends behind them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::{BackendAddr, HostPattern, PlanLimits, RouteId, TenantId, WafLevel};

/// How a route picks a backend for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// Each eligible backend in turn.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin (nginx's algorithm): proportional to weights, interleaved.
    WeightedRoundRobin,
    /// The backend with the fewest requests in flight.
    LeastConn,
    /// Consistent hashing of the client address: a client sticks to its backend, and adding a
    /// backend moves only about 1/n of the clients.
    IpHash,
}

impl Algorithm {
    /// All algorithms with their configuration names.
    pub const ALL: [(Algorithm, &'static str); 4] = [
        (Algorithm::RoundRobin, "round_robin"),
        (Algorithm::WeightedRoundRobin, "weighted_round_robin"),
        (Algorithm::LeastConn, "least_conn"),
        (Algorithm::IpHash, "ip_hash"),
    ];

    /// The configuration name, e.g. `least_conn`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::WeightedRoundRobin => "weighted_round_robin",
            Algorithm::LeastConn => "least_conn",
            Algorithm::IpHash => "ip_hash",
        }
    }
}

/// Whether a backend takes new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendState {
    /// Takes new requests while healthy.
    #[default]
    Active,
    /// Takes no new requests; requests in flight finish.
    Drain,
}

/// What a route carries, which decides the checks the proxy makes on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RouteKind {
    /// Any HTTP traffic.
    #[default]
    Http,
    /// An OpenAI-style LLM API: request bodies are checked against the tenant's policy and
    /// responses are counted against its tokens-per-minute quota.
    Llm,
}

impl RouteKind {
    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "http",
            RouteKind::Llm => "llm",
        }
    }

    /// Parses a configuration name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "http" => Some(RouteKind::Http),
            "llm" => Some(RouteKind::Llm),
            _ => None,
        }
    }
}

/// Who shares one rate-limit bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RateLimitKey {
    /// Every request to any of the tenant's routes.
    Tenant,
    /// Every request to this route.
    #[default]
    Route,
    /// Each client address on this route.
    ClientIp,
    /// Each API key (`Authorization: Bearer …` or `X-Api-Key`) on this route; requests
    /// without one are keyed by client address.
    ApiKey,
}

impl RateLimitKey {
    /// All keys.
    pub const ALL: [RateLimitKey; 4] = [
        RateLimitKey::Tenant,
        RateLimitKey::Route,
        RateLimitKey::ClientIp,
        RateLimitKey::ApiKey,
    ];

    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            RateLimitKey::Tenant => "tenant",
            RateLimitKey::Route => "route",
            RateLimitKey::ClientIp => "client_ip",
            RateLimitKey::ApiKey => "api_key",
        }
    }

    /// Parses a configuration name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A route's own rate limit, replacing the plan's for this route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteRateLimit {
    /// Sustained rate.
    pub requests_per_minute: u64,
    /// Requests allowed at once; `None` means `requests_per_minute`.
    pub burst: Option<u64>,
    /// Who shares a bucket.
    pub key: RateLimitKey,
}

/// One upstream server of a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Where the backend listens.
    pub address: BackendAddr,
    /// Relative weight for `weighted_round_robin` (and `ip_hash`), at least 1.
    pub weight: u32,
    /// Active or draining.
    pub state: BackendState,
}

/// Active health-check settings of a route, applied to each of its backends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    /// Path requested with `GET`.
    pub path: String,
    /// Time between two checks of one backend.
    pub interval: Duration,
    /// How long one check may take.
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend back.
    pub healthy_threshold: u32,
    /// Consecutive failures (active checks, or passive connect errors/5xx) that take a backend down.
    pub unhealthy_threshold: u32,
    /// The status a healthy backend answers.
    pub expect_status: u16,
}

/// Certificate and key files for a route's host (served by SNI on the TLS listener).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// A route: which requests (host + path prefix) go to which backends, and how.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// Unique within the tenant.
    pub id: RouteId,
    /// The host this route answers for.
    pub host: HostPattern,
    /// Path prefix, starting with `/`; the longest matching prefix wins among a host's routes.
    pub path_prefix: Arc<str>,
    /// Backend selection.
    pub algorithm: Algorithm,
    /// HTTP or LLM.
    pub kind: RouteKind,
    /// The route's own rate limit (boxed: most routes use the plan's).
    pub ratelimit: Option<Box<RouteRateLimit>>,
    /// The route's WAF override (`None`: the tenant's settings apply).
    pub waf: Option<RouteWaf>,
    /// Certificate for the host, if served over TLS (boxed: most routes have none).
    pub tls: Option<Box<TlsFiles>>,
    /// Active health checks, if any (shared with the data plane's runtime route).
    pub health_check: Option<Arc<HealthCheck>>,
    /// At least one backend.
    pub backends: Vec<Backend>,
}

impl Route {
    /// Whether a request path falls under this route's prefix (segment-aware: `/api` matches
    /// `/api` and `/api/x`, not `/apix`).
    pub fn matches_path(&self, path: &str) -> bool {
        prefix_matches(&self.path_prefix, path)
    }
}

/// Segment-aware prefix match used by routing.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// A tenant as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tenant {
    /// The tenant's slug.
    pub id: TenantId,
    /// The plan name.
    pub plan: Arc<str>,
    /// The subscription's effective limits, once the control plane has derived them (`None`
    /// for a tenant read straight from a file, before it reaches the store).
    pub limits: Option<Arc<PlanLimits>>,
    /// A suspended tenant's hosts answer `403 tenant_suspended`.
    pub suspended: bool,
    /// Allowed models and tools on LLM routes (`None`: anything).
    pub policy: Option<Arc<TenantPolicy>>,
    /// The tenant's WAF settings (`None`: the plan's level, blocking, no exclusions).
    pub waf: Option<Arc<TenantWaf>>,
    /// Start of the subscription's first billing period (unix ms): monthly quotas reset on
    /// this day of each month. `None` for a tenant not yet in the store (calendar months).
    pub billing_anchor_ms: Option<u64>,
    /// The tenant's routes.
    pub routes: Vec<Route>,
}

/// What a tenant's LLM routes accept (seed 003's policies).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TenantPolicy {
    /// Models a request may name (`None`: any).
    pub allowed_models: Option<Box<[Box<str>]>>,
    /// Tools a request may offer (`None`: any).
    pub allowed_tools: Option<Box<[Box<str>]>>,
}

impl TenantPolicy {
    /// Whether the policy restricts nothing.
    pub fn is_open(&self) -> bool {
        self.allowed_models.is_none() && self.allowed_tools.is_none()
    }
}

/// Whether the WAF blocks what it catches or only reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WafMode {
    /// Requests the rules condemn are answered `403 waf_blocked`.
    #[default]
    Block,
    /// Log and count what would be blocked, never block (for onboarding a tenant).
    Detect,
}

impl WafMode {
    /// All modes.
    pub const ALL: [WafMode; 2] = [WafMode::Block, WafMode::Detect];

    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            WafMode::Block => "block",
            WafMode::Detect => "detect",
        }
    }

    /// Parses a configuration name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// A tenant's WAF settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TenantWaf {
    /// The level for the tenant's routes (`None`: the plan's `waf_level`).
    pub level: Option<WafLevel>,
    /// Block or only detect.
    pub mode: WafMode,
    /// Rule ids never applied to this tenant's requests (false positives), sorted and
    /// deduplicated.
    pub exclusions: Box<[u32]>,
}

/// A route's WAF override; unset fields fall back to the tenant's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RouteWaf {
    /// The level for this route.
    pub level: Option<WafLevel>,
    /// The mode for this route.
    pub mode: Option<WafMode>,
}

/// What the WAF does on one route, once plan, tenant and route settings are combined.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EffectiveWaf {
    /// The level (`Off`: no inspection at all).
    pub level: WafLevel,
    /// Block or only detect.
    pub mode: WafMode,
    /// Rule ids not applied.
    pub exclusions: Box<[u32]>,
}

impl Tenant {
    /// The WAF settings of route `r`: the route's override, else the tenant's settings, else
    /// the plan's level (`plan_level`, for a tenant whose limits are not derived yet).
    pub fn effective_waf(&self, r: &Route) -> EffectiveWaf {
        let tenant = self.waf.as_deref();
        let plan = self.limits.as_deref().map(|l| l.waf_level);
        let level = r
            .waf
            .and_then(|w| w.level)
            .or(tenant.and_then(|t| t.level))
            .or(plan)
            .unwrap_or_default();
        let mode = r
            .waf
            .and_then(|w| w.mode)
            .or(tenant.map(|t| t.mode))
            .unwrap_or_default();
        let exclusions = tenant.map(|t| t.exclusions.clone()).unwrap_or_default();
        EffectiveWaf {
            level,
            mode,
            exclusions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_matches;

    #[test]
    fn prefix_is_segment_aware() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/v1"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/api/", "/api/v1"));
        assert!(!prefix_matches("/api/", "/api"));
    }
}
