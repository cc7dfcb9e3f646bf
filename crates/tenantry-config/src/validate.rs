//! Spec → validated configuration. Every error is collected with its field path, so
//! `tenantry config check` can print them all at once.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tenantry_domain::{
    Algorithm, Backend, BackendAddr, BackendState, Conflict, HealthCheck, HostPattern, PlanLimits,
    RateLimitKey, Route, RouteId, RouteKind, RouteRateLimit, RouteWaf, Snapshot, Tenant, TenantId,
    TenantPolicy, TenantWaf, TlsFiles, WafLevel, WafMode,
};

use crate::{
    ConfigErrors, GatewaySpec, HealthCheckSpec, PolicySpec, RouteSpec, RouteWafSpec, TenantSpec,
    TenantWafSpec, WafLevelSpec, WafSpec, parse_duration,
};

/// Process-level settings: listeners, timeouts, logging. Changing them needs a restart (or an
/// `--upgrade`); routing changes do not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Plain HTTP listener.
    pub listen: SocketAddr,
    /// TLS listener, if any.
    pub tls_listen: Option<SocketAddr>,
    /// Admin listener, if any.
    pub admin_listen: Option<SocketAddr>,
    /// Tenants with their own metrics label.
    pub metrics_max_tenants: usize,
    /// JSON access log on stdout.
    pub access_log: bool,
    /// Accepting window after SIGTERM.
    pub drain: Duration,
    /// Time in-flight requests get to finish after the drain window.
    pub grace: Duration,
    /// Upstream client settings.
    pub upstream: UpstreamSettings,
    /// Largest request header section.
    pub max_header_bytes: usize,
    /// Idle / request-head timeout of client connections.
    pub header_timeout: Duration,
    /// Proxy worker threads (`None`: one per core).
    pub threads: Option<usize>,
    /// Unix socket used for `serve --upgrade`.
    pub upgrade_socket: Option<PathBuf>,
    /// Control-plane authentication.
    pub auth: AuthSettings,
    /// Largest request body an LLM route reads (413 beyond).
    pub max_llm_body_bytes: usize,
    /// Redis URL: cluster mode.
    pub redis: Option<String>,
    /// Rate limiting while Redis is unreachable.
    pub on_redis_error: RedisFallback,
    /// Cluster settings.
    pub cluster: ClusterSettings,
    /// WAF engine settings (top-level `waf`).
    pub waf: WafSettings,
}

/// What happens to a body larger than `waf.max_body`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WafLargeBody {
    /// Answer `413 payload_too_large`.
    Reject,
    /// Inspect the first `max_body` bytes, stream the rest uninspected.
    #[default]
    InspectPartial,
}

impl WafLargeBody {
    /// Parses `reject` or `inspect_partial`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reject" => Some(Self::Reject),
            "inspect_partial" => Some(Self::InspectPartial),
            _ => None,
        }
    }
}

/// What routes with a WAF level do when libmodsecurity or the rules cannot be loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WafUnavailable {
    /// Answer `503 waf_unavailable` on those routes.
    #[default]
    Deny,
    /// Serve them uninspected (a warning is logged at start-up and counted).
    Allow,
}

impl WafUnavailable {
    /// Parses `deny` or `allow`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "deny" => Some(Self::Deny),
            "allow" => Some(Self::Allow),
            _ => None,
        }
    }
}

/// CRS tuning of one WAF level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WafLevelTuning {
    /// CRS paranoia level whose rules count toward blocking (1–4).
    pub paranoia: u8,
    /// CRS paranoia level whose rules run and are logged (≥ `paranoia`, ≤ 4).
    pub executing_paranoia: u8,
    /// Inbound anomaly score at which a request is blocked.
    pub threshold: u32,
}

/// The top-level `waf` section: how the engine is loaded and run, and what each level means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WafSettings {
    /// Shared library to load (`library`; default `libmodsecurity.so.3`).
    pub library: String,
    /// OWASP CRS directory holding `rules/` (`crs`; default `/usr/share/modsecurity-crs`).
    pub crs_dir: PathBuf,
    /// Largest body inspected, in bytes (`max_body`; default 128 KiB).
    pub max_body: usize,
    /// What happens to larger bodies (`on_large_body`).
    pub on_large_body: WafLargeBody,
    /// What happens when the engine cannot be loaded (`on_unavailable`).
    pub on_unavailable: WafUnavailable,
    /// Inspection threads (`workers`; `None`: one per core).
    pub workers: Option<usize>,
    /// Inspections waiting for a thread before requests get `503 waf_busy` (`queue`).
    pub queue: usize,
    /// File receiving one line per libmodsecurity log message (`match_log`), for audits and
    /// the CRS regression suite.
    pub match_log: Option<PathBuf>,
    /// Rule files included after the CRS in every rules set (`extra_rules`).
    pub extra_rules: Vec<PathBuf>,
    /// `levels.basic`: default paranoia 1, threshold 10.
    pub basic: WafLevelTuning,
    /// `levels.standard`: default paranoia 1, threshold 5.
    pub standard: WafLevelTuning,
    /// `levels.strict`: default paranoia 2 (rules up to 3 run and are logged), threshold 5.
    pub strict: WafLevelTuning,
}

impl Default for WafSettings {
    fn default() -> Self {
        Self {
            library: "libmodsecurity.so.3".to_owned(),
            crs_dir: PathBuf::from("/usr/share/modsecurity-crs"),
            max_body: 128 * 1024,
            on_large_body: WafLargeBody::default(),
            on_unavailable: WafUnavailable::default(),
            workers: None,
            queue: 1024,
            match_log: None,
            extra_rules: Vec::new(),
            basic: WafLevelTuning {
                paranoia: 1,
                executing_paranoia: 1,
                threshold: 10,
            },
            standard: WafLevelTuning {
                paranoia: 1,
                executing_paranoia: 1,
                threshold: 5,
            },
            strict: WafLevelTuning {
                paranoia: 2,
                executing_paranoia: 3,
                threshold: 5,
            },
        }
    }
}

/// What rate limiting does while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisFallback {
    /// Each node enforces its share of the limit in process.
    #[default]
    Local,
    /// Let requests through.
    Allow,
    /// Refuse requests (429).
    Deny,
}

impl RedisFallback {
    /// Parses `local`, `allow` or `deny`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "local" => Some(Self::Local),
            "allow" => Some(Self::Allow),
            "deny" => Some(Self::Deny),
            _ => None,
        }
    }
}

/// Cluster settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// This node's name (`None`: host name and process id).
    pub node_id: Option<String>,
    /// How long a tenant's configuration is trusted without an event.
    pub config_ttl: Duration,
}

/// Checks a Redis URL: `redis://[user:password@]host[:port][/db]`.
pub fn validate_redis_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("redis://") else {
        return Err(format!(
            "invalid Redis URL {url:?}: expected redis://host:port[/db]"
        ));
    };
    let hostport = rest.rsplit('@').next().unwrap_or(rest);
    let hostport = hostport.split('/').next().unwrap_or("");
    if hostport.is_empty() {
        return Err(format!("invalid Redis URL {url:?}: missing host"));
    }
    if let Some((_, port)) = hostport.rsplit_once(':')
        && port.parse::<u16>().is_err()
    {
        return Err(format!("invalid Redis URL {url:?}: bad port {port:?}"));
    }
    Ok(())
}

/// Control-plane authentication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// `iss` of issued tokens.
    pub issuer: String,
    /// Access token lifetime.
    pub token_ttl: Duration,
    /// RS256/ES256 key files; `None`: HS256 with a generated secret in the data directory.
    pub jwt: Option<JwtKeyFiles>,
}

/// Asymmetric JWT keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtKeyFiles {
    /// `RS256` or `ES256`.
    pub algorithm: String,
    /// PEM private key.
    pub private_key: PathBuf,
    /// PEM public key.
    pub public_key: PathBuf,
}

/// Upstream connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSettings {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Idle pooled connection lifetime.
    pub idle_timeout: Duration,
    /// Time allowed until response headers arrive.
    pub response_timeout: Duration,
    /// Idle connections kept per backend.
    pub max_idle_per_backend: usize,
}

/// A validated configuration: server settings plus the routing snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Process-level settings.
    pub server: ServerSettings,
    /// Tenants and routes.
    pub snapshot: Snapshot,
}

/// Parses YAML into the spec; syntax errors and unknown keys come back with their location.
///
/// The parser's default budget (250k nodes) guards against hostile documents; an operator's
/// file with 100k+ tenants needs more, so node and event counts are raised (about 10 nodes per
/// route) while the alias, depth and input-size limits stay.
pub fn parse_yaml(text: &str) -> Result<GatewaySpec, ConfigErrors> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = 50_000_000;
    budget.max_events = 100_000_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    serde_saphyr::from_str_with_options::<GatewaySpec>(text, options).map_err(|e| {
        let mut errs = ConfigErrors(Vec::new());
        errs.push("", e.to_string());
        errs
    })
}

/// Reads, parses and validates a config file. Relative TLS paths are resolved against the
/// file's folder.
pub fn load_file(path: &Path) -> Result<GatewayConfig, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut errs = ConfigErrors(Vec::new());
        errs.push("", format!("cannot read {}: {e}", path.display()));
        errs
    })?;
    let spec = parse_yaml(&text)?;
    drop(text); // the file can be large; free it before validation builds the snapshot
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    validate(&spec, base)
}

/// Validates a spec. `base_dir` anchors relative file paths.
pub fn validate(spec: &GatewaySpec, base_dir: &Path) -> Result<GatewayConfig, ConfigErrors> {
    let mut errs = ConfigErrors(Vec::new());
    let server = validate_server(spec, base_dir, &mut errs);
    let mut tenants = Vec::with_capacity(spec.tenants.len());
    let mut seen = HashSet::new();
    for (i, t) in spec.tenants.iter().enumerate() {
        let path = format!("tenants[{i}]");
        if !seen.insert(t.id.as_str()) {
            errs.push(
                format!("{path}.id"),
                format!("duplicate tenant id {:?}", t.id),
            );
            continue;
        }
        if let Some(tenant) = validate_tenant(t, &path, base_dir, &mut errs) {
            tenants.push(tenant);
        }
    }
    let snapshot = Snapshot::from_tenants(tenants);
    for c in snapshot.conflicts() {
        report_conflict(spec, &c, &mut errs);
    }
    match server {
        Some(server) if errs.is_empty() => Ok(GatewayConfig { server, snapshot }),
        _ => Err(errs),
    }
}

fn report_conflict(spec: &GatewaySpec, c: &Conflict, errs: &mut ConfigErrors) {
    let locate = |tenant: &TenantId, route: &RouteId| {
        spec.tenants
            .iter()
            .enumerate()
            .filter(|(_, t)| t.id == tenant.as_str())
            .flat_map(|(ti, t)| {
                t.routes
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.id == route.as_str())
                    .map(move |(ri, _)| format!("tenants[{ti}].routes[{ri}]"))
            })
            .last()
            .unwrap_or_default()
    };
    match c {
        Conflict::HostOwnedByOtherTenant {
            host,
            owner,
            claimant,
            route,
        } => errs.push(
            format!("{}.host", locate(claimant, route)),
            format!("host \"{host}\" already belongs to tenant \"{owner}\""),
        ),
        Conflict::DuplicateRoute {
            tenant,
            host,
            path_prefix,
            first,
            second,
        } => errs.push(
            format!("{}.path_prefix", locate(tenant, second)),
            format!("host \"{host}\" with path prefix {path_prefix:?} is already served by route \"{first}\""),
        ),
    }
}

/// A thread's pool of shared values (at most [`POOL_CAP`] of them; values beyond are not
/// shared, so a stream of distinct values cannot grow it without bound).
type Pool<T> = std::cell::RefCell<HashSet<Arc<T>>>;

const POOL_CAP: usize = 1024;

fn intern_in<T: ?Sized + std::hash::Hash + Eq>(
    pool: &'static std::thread::LocalKey<Pool<T>>,
    value: &T,
    make: impl FnOnce() -> Arc<T>,
) -> Arc<T> {
    pool.with(|set| {
        let mut set = set.borrow_mut();
        if let Some(existing) = set.get(value) {
            return Arc::clone(existing);
        }
        let new = make();
        if set.len() < POOL_CAP {
            set.insert(Arc::clone(&new));
        }
        new
    })
}

/// Shares one allocation between the many tenants and routes that repeat the same short
/// string (plan names, the `/` prefix): a 100k-tenant file otherwise holds 100k copies.
fn interned(s: &str) -> Arc<str> {
    thread_local! {
        static STRINGS: Pool<str> = Pool::default();
    }
    intern_in(&STRINGS, s, || s.into())
}

/// Tenants on the same plan without overrides share one set of limits.
fn interned_limits(l: &PlanLimits) -> Arc<PlanLimits> {
    thread_local! {
        static LIMITS: Pool<PlanLimits> = Pool::default();
    }
    intern_in(&LIMITS, l, || Arc::new(l.clone()))
}

/// Tenants with the same WAF settings (say `level: off`) share them.
fn interned_waf(w: TenantWaf) -> Arc<TenantWaf> {
    thread_local! {
        static WAFS: Pool<TenantWaf> = Pool::default();
    }
    intern_in(&WAFS, &w, || Arc::new(w.clone()))
}

fn addr(value: &str, path: &str, errs: &mut ConfigErrors) -> Option<SocketAddr> {
    match value.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(
                path,
                format!("invalid socket address {value:?} (expected ip:port, e.g. 127.0.0.1:8080)"),
            );
            None
        }
    }
}

fn duration(
    value: Option<&str>,
    default: Duration,
    path: &str,
    errs: &mut ConfigErrors,
) -> Duration {
    match value.map(parse_duration) {
        None => default,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            errs.push(path, e);
            default
        }
    }
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn validate_server(
    spec: &GatewaySpec,
    base: &Path,
    errs: &mut ConfigErrors,
) -> Option<ServerSettings> {
    let before = errs.0.len();
    let listen = addr(
        spec.listen.as_deref().unwrap_or("127.0.0.1:8080"),
        "listen",
        errs,
    );
    let tls_listen = spec
        .tls_listen
        .as_deref()
        .and_then(|a| addr(a, "tls_listen", errs));
    let admin_listen = spec
        .admin
        .as_ref()
        .and_then(|a| addr(&a.listen, "admin.listen", errs));
    let metrics_max_tenants = spec
        .metrics
        .as_ref()
        .and_then(|m| m.max_tenants)
        .unwrap_or(1000);
    let sd = spec.shutdown.clone().unwrap_or_default();
    let drain = duration(
        sd.drain.as_deref(),
        Duration::from_secs(2),
        "shutdown.drain",
        errs,
    );
    let grace = duration(
        sd.grace.as_deref(),
        Duration::from_secs(30),
        "shutdown.grace",
        errs,
    );
    let up = spec.upstream.clone().unwrap_or_default();
    let connect_timeout = duration(
        up.connect_timeout.as_deref(),
        Duration::from_secs(2),
        "upstream.connect_timeout",
        errs,
    );
    if connect_timeout.is_zero() {
        errs.push("upstream.connect_timeout", "must be greater than 0");
    }
    let idle_timeout = duration(
        up.idle_timeout.as_deref(),
        Duration::from_secs(90),
        "upstream.idle_timeout",
        errs,
    );
    let response_timeout = duration(
        up.response_timeout.as_deref(),
        Duration::from_secs(60),
        "upstream.response_timeout",
        errs,
    );
    if response_timeout.is_zero() {
        errs.push("upstream.response_timeout", "must be greater than 0");
    }
    let max_header_bytes = spec
        .limits
        .as_ref()
        .and_then(|l| l.max_header_bytes)
        .unwrap_or(32 * 1024);
    if !(8192..=1024 * 1024).contains(&max_header_bytes) {
        errs.push(
            "limits.max_header_bytes",
            "must be between 8192 and 1048576",
        );
    }
    let header_timeout = duration(
        spec.limits
            .as_ref()
            .and_then(|l| l.header_timeout.as_deref()),
        Duration::from_secs(30),
        "limits.header_timeout",
        errs,
    );
    if header_timeout < Duration::from_secs(1) {
        errs.push("limits.header_timeout", "must be at least 1s");
    }
    let threads = spec.runtime.as_ref().and_then(|r| r.threads);
    if threads == Some(0) {
        errs.push("runtime.threads", "must be at least 1");
    }
    let auth = validate_auth(spec.auth.as_ref(), base, errs);
    let max_llm_body_bytes = spec
        .limits
        .as_ref()
        .and_then(|l| l.max_llm_body_bytes)
        .unwrap_or(1024 * 1024);
    if !(1024..=64 * 1024 * 1024).contains(&max_llm_body_bytes) {
        errs.push(
            "limits.max_llm_body_bytes",
            "must be between 1024 and 67108864",
        );
    }
    if let Some(url) = &spec.redis
        && let Err(e) = validate_redis_url(url)
    {
        errs.push("redis", e);
    }
    let on_redis_error = match spec.on_redis_error.as_deref() {
        None => RedisFallback::Local,
        Some(s) => RedisFallback::parse(s).unwrap_or_else(|| {
            errs.push(
                "on_redis_error",
                format!("unknown value {s:?} (expected local, allow or deny)"),
            );
            RedisFallback::Local
        }),
    };
    let cl = spec.cluster.clone().unwrap_or_default();
    let config_ttl = duration(
        cl.config_ttl.as_deref(),
        Duration::from_secs(30),
        "cluster.config_ttl",
        errs,
    );
    if config_ttl < Duration::from_secs(1) {
        errs.push("cluster.config_ttl", "must be at least 1s");
    }
    if let Some(n) = &cl.node_id
        && (n.is_empty() || n.len() > 100 || n.chars().any(|c| c.is_control() || c == ' '))
    {
        errs.push(
            "cluster.node_id",
            "must be 1 to 100 characters without spaces",
        );
    }
    let waf = validate_waf(spec.waf.as_ref(), base, errs);
    if errs.0.len() > before {
        return None;
    }
    Some(ServerSettings {
        auth,
        listen: listen?,
        tls_listen,
        admin_listen,
        metrics_max_tenants,
        access_log: spec.access_log.unwrap_or(true),
        drain,
        grace,
        upstream: super::UpstreamSettings {
            connect_timeout,
            idle_timeout,
            response_timeout,
            max_idle_per_backend: up.max_idle_per_backend.unwrap_or(512),
        },
        max_header_bytes,
        header_timeout,
        threads,
        upgrade_socket: spec.upgrade_socket.as_deref().map(|p| resolve(base, p)),
        max_llm_body_bytes,
        redis: spec.redis.clone(),
        on_redis_error,
        cluster: ClusterSettings {
            node_id: cl.node_id,
            config_ttl,
        },
        waf,
    })
}

/// The top-level `waf` section; unset keys keep [`WafSettings::default`]'s values.
fn validate_waf(spec: Option<&WafSpec>, base: &Path, errs: &mut ConfigErrors) -> WafSettings {
    let mut out = WafSettings::default();
    let Some(w) = spec else {
        return out;
    };
    if let Some(lib) = &w.library {
        if lib.trim().is_empty() {
            errs.push("waf.library", "must not be empty");
        }
        out.library = lib.clone();
    }
    let path = |value: &str, name: &str, errs: &mut ConfigErrors| {
        if value.trim().is_empty() {
            errs.push(name, "must not be empty");
        }
        resolve(base, value)
    };
    if let Some(crs) = &w.crs {
        out.crs_dir = path(crs, "waf.crs", errs);
    }
    if let Some(m) = &w.match_log {
        out.match_log = Some(path(m, "waf.match_log", errs));
    }
    if let Some(rules) = &w.extra_rules {
        out.extra_rules = rules
            .iter()
            .enumerate()
            .map(|(i, r)| path(r, &format!("waf.extra_rules[{i}]"), errs))
            .collect();
    }
    if let Some(n) = w.max_body {
        if n == 0 {
            errs.push("waf.max_body", "must be at least 1 (bytes)");
        }
        out.max_body = n;
    }
    if let Some(s) = &w.on_large_body {
        match WafLargeBody::parse(s) {
            Some(v) => out.on_large_body = v,
            None => errs.push(
                "waf.on_large_body",
                format!("unknown value {s:?} (expected reject or inspect_partial)"),
            ),
        }
    }
    if let Some(s) = &w.on_unavailable {
        match WafUnavailable::parse(s) {
            Some(v) => out.on_unavailable = v,
            None => errs.push(
                "waf.on_unavailable",
                format!("unknown value {s:?} (expected deny or allow)"),
            ),
        }
    }
    if let Some(n) = w.workers {
        if n == 0 {
            errs.push("waf.workers", "must be at least 1");
        }
        out.workers = Some(n);
    }
    if let Some(n) = w.queue {
        if n == 0 {
            errs.push("waf.queue", "must be at least 1");
        }
        out.queue = n;
    }
    if let Some(levels) = &w.levels {
        for (name, spec, slot) in [
            ("basic", &levels.basic, &mut out.basic),
            ("standard", &levels.standard, &mut out.standard),
            ("strict", &levels.strict, &mut out.strict),
        ] {
            if let Some(l) = spec {
                *slot = validate_waf_level(l, name, *slot, errs);
            }
        }
    }
    out
}

/// `waf.levels.<name>`. Without `executing_paranoia`, the rules that run are those that count
/// (`paranoia`), except on `strict`, where rules up to paranoia 3 run and are logged.
fn validate_waf_level(
    l: &WafLevelSpec,
    name: &str,
    default: WafLevelTuning,
    errs: &mut ConfigErrors,
) -> WafLevelTuning {
    let path = format!("waf.levels.{name}");
    let mut out = default;
    if let Some(p) = l.paranoia {
        match u8::try_from(p).ok().filter(|p| (1..=4).contains(p)) {
            Some(p) => out.paranoia = p,
            None => errs.push(
                format!("{path}.paranoia"),
                format!("must be between 1 and 4, got {p}"),
            ),
        }
    }
    out.executing_paranoia = match l.executing_paranoia {
        Some(e) => match u8::try_from(e)
            .ok()
            .filter(|e| (out.paranoia..=4).contains(e))
        {
            Some(e) => e,
            None => {
                errs.push(
                    format!("{path}.executing_paranoia"),
                    format!("must be between paranoia ({}) and 4, got {e}", out.paranoia),
                );
                out.paranoia
            }
        },
        None if l.paranoia.is_none() => default.executing_paranoia,
        None if name == "strict" => out.paranoia.max(3),
        None => out.paranoia,
    };
    if let Some(t) = l.threshold {
        match u32::try_from(t).ok().filter(|t| *t >= 1) {
            Some(t) => out.threshold = t,
            None => errs.push(
                format!("{path}.threshold"),
                format!("must be between 1 and {}, got {t}", u32::MAX),
            ),
        }
    }
    out
}

fn waf_level(s: &str, path: &str, errs: &mut ConfigErrors) -> Option<WafLevel> {
    let level = WafLevel::parse(s);
    if level.is_none() {
        errs.push(
            format!("{path}.level"),
            format!("unknown WAF level {s:?} (expected off, basic, standard or strict)"),
        );
    }
    level
}

fn waf_mode(s: &str, path: &str, errs: &mut ConfigErrors) -> Option<WafMode> {
    let mode = WafMode::parse(s);
    if mode.is_none() {
        errs.push(
            format!("{path}.mode"),
            format!("unknown WAF mode {s:?} (expected block or detect)"),
        );
    }
    mode
}

/// Highest CRS-style rule id accepted in `exclusions`.
const MAX_RULE_ID: i64 = 99_999_999;

/// A tenant's `waf`; `None` when it changes nothing (the plan's level, blocking, no
/// exclusions), so that the default costs nothing.
fn validate_tenant_waf(
    w: &TenantWafSpec,
    path: &str,
    errs: &mut ConfigErrors,
) -> Option<Arc<TenantWaf>> {
    let level = w.level.as_deref().and_then(|s| waf_level(s, path, errs));
    let mode = w
        .mode
        .as_deref()
        .and_then(|s| waf_mode(s, path, errs))
        .unwrap_or_default();
    let mut exclusions = Vec::new();
    if let Some(ids) = &w.exclusions {
        if ids.len() > 1000 {
            errs.push(format!("{path}.exclusions"), "at most 1000 entries");
        }
        for (i, id) in ids.iter().enumerate() {
            match u32::try_from(*id)
                .ok()
                .filter(|_| (1..=MAX_RULE_ID).contains(id))
            {
                Some(id) => exclusions.push(id),
                None => errs.push(
                    format!("{path}.exclusions[{i}]"),
                    format!("must be a rule id between 1 and {MAX_RULE_ID}, got {id}"),
                ),
            }
        }
    }
    exclusions.sort_unstable();
    exclusions.dedup();
    let waf = TenantWaf {
        level,
        mode,
        exclusions: exclusions.into_boxed_slice(),
    };
    (waf != TenantWaf::default()).then(|| interned_waf(waf))
}

/// A route's `waf`; `None` when it overrides nothing.
fn validate_route_waf(w: &RouteWafSpec, path: &str, errs: &mut ConfigErrors) -> Option<RouteWaf> {
    let waf = RouteWaf {
        level: w.level.as_deref().and_then(|s| waf_level(s, path, errs)),
        mode: w.mode.as_deref().and_then(|s| waf_mode(s, path, errs)),
    };
    (waf != RouteWaf::default()).then_some(waf)
}

/// Validates a tenant's WAF settings as the admin API receives them (error paths relative
/// to them: `level`, `exclusions[0]`). `None`: the defaults (the plan's level, blocking, no
/// exclusions).
pub fn validate_waf_spec(w: &TenantWafSpec) -> Result<Option<Arc<TenantWaf>>, ConfigErrors> {
    let mut errs = ConfigErrors(Vec::new());
    let out = validate_tenant_waf(w, "", &mut errs);
    for e in &mut errs.0 {
        if let Some(rest) = e.path.strip_prefix('.') {
            e.path = rest.to_owned();
        }
    }
    if errs.is_empty() { Ok(out) } else { Err(errs) }
}

fn validate_auth(
    spec: Option<&crate::AuthSpec>,
    base: &Path,
    errs: &mut ConfigErrors,
) -> AuthSettings {
    let spec = spec.cloned().unwrap_or_default();
    let issuer = spec.issuer.unwrap_or_else(|| "tenantry".to_owned());
    if issuer.is_empty() {
        errs.push("auth.issuer", "must not be empty");
    }
    let token_ttl = duration(
        spec.token_ttl.as_deref(),
        Duration::from_secs(3600),
        "auth.token_ttl",
        errs,
    );
    if token_ttl < Duration::from_secs(60) || token_ttl > Duration::from_secs(7 * 86400) {
        errs.push("auth.token_ttl", "must be between 1m and 7d");
    }
    let jwt = spec.jwt.map(|j| {
        if !matches!(j.algorithm.as_str(), "RS256" | "ES256") {
            errs.push(
                "auth.jwt.algorithm",
                format!(
                    "unknown algorithm {:?} (expected RS256 or ES256)",
                    j.algorithm
                ),
            );
        }
        for (name, p) in [
            ("private_key", &j.private_key),
            ("public_key", &j.public_key),
        ] {
            if !resolve(base, p).is_file() {
                errs.push(format!("auth.jwt.{name}"), format!("no such file {p:?}"));
            }
        }
        JwtKeyFiles {
            algorithm: j.algorithm,
            private_key: resolve(base, &j.private_key),
            public_key: resolve(base, &j.public_key),
        }
    });
    AuthSettings {
        issuer,
        token_ttl,
        jwt,
    }
}

/// Validates one route as the admin API receives it; error paths are relative to the route
/// (`host`, `backends[0].address`). Relative certificate paths resolve against `base`.
pub fn validate_route_spec(r: &RouteSpec, base: &Path) -> Result<Route, ConfigErrors> {
    let mut errs = ConfigErrors(Vec::new());
    let route = validate_route(r, "", base, &mut errs);
    for e in &mut errs.0 {
        if let Some(rest) = e.path.strip_prefix('.') {
            e.path = rest.to_owned();
        }
    }
    match route {
        Some(route) if errs.is_empty() => Ok(route),
        _ => Err(errs),
    }
}

/// A tenant as the control-plane store holds it, for [`tenant_from_store`].
#[derive(Debug, Clone, Copy)]
pub struct StoredTenant<'a> {
    /// Slug.
    pub id: &'a TenantId,
    /// Plan name.
    pub plan: &'a str,
    /// Effective limits.
    pub limits: Option<&'a PlanLimits>,
    /// Whether it is suspended.
    pub suspended: bool,
    /// LLM policy.
    pub policy: Option<&'a PolicySpec>,
    /// WAF settings.
    pub waf: Option<&'a TenantWafSpec>,
    /// Start of the first billing period (unix ms).
    pub billing_anchor_ms: Option<u64>,
    /// Routes.
    pub routes: &'a [RouteSpec],
}

/// Builds the data plane's view of a tenant held in the control-plane store.
pub fn tenant_from_store(t: StoredTenant<'_>, base: &Path) -> Result<Tenant, ConfigErrors> {
    let mut errs = ConfigErrors(Vec::new());
    let id = t.id;
    let mut out = Vec::with_capacity(t.routes.len());
    for (i, r) in t.routes.iter().enumerate() {
        if let Some(route) = validate_route(r, &format!("{id}.routes[{i}]"), base, &mut errs) {
            out.push(route);
        }
    }
    let policy = t
        .policy
        .and_then(|p| validate_policy(p, &format!("{id}.policy"), &mut errs));
    let waf = t
        .waf
        .and_then(|w| validate_tenant_waf(w, &format!("{id}.waf"), &mut errs));
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(Tenant {
        id: id.clone(),
        plan: interned(t.plan),
        limits: t.limits.map(interned_limits),
        suspended: t.suspended,
        policy,
        waf,
        billing_anchor_ms: t.billing_anchor_ms,
        routes: out,
    })
}

/// Validates a tenant policy as the admin API receives it (error paths relative to it).
pub fn validate_policy_spec(p: &PolicySpec) -> Result<Option<Arc<TenantPolicy>>, ConfigErrors> {
    let mut errs = ConfigErrors(Vec::new());
    let out = validate_policy(p, "", &mut errs);
    for e in &mut errs.0 {
        if let Some(rest) = e.path.strip_prefix('.') {
            e.path = rest.to_owned();
        }
    }
    if errs.is_empty() { Ok(out) } else { Err(errs) }
}

/// `None` when the policy restricts nothing (the common case costs nothing per request).
fn validate_policy(
    p: &PolicySpec,
    path: &str,
    errs: &mut ConfigErrors,
) -> Option<Arc<TenantPolicy>> {
    let list = |v: &Option<Vec<String>>, name: &str, errs: &mut ConfigErrors| {
        v.as_ref().map(|items| {
            if items.len() > 1000 {
                errs.push(format!("{path}.{name}"), "at most 1000 entries");
            }
            for (i, item) in items.iter().enumerate() {
                if item.is_empty() || item.len() > 200 || item.chars().any(char::is_control) {
                    errs.push(
                        format!("{path}.{name}[{i}]"),
                        format!("must be 1 to 200 printable characters, got {item:?}"),
                    );
                }
            }
            items
                .iter()
                .map(|s| Box::<str>::from(s.as_str()))
                .collect::<Box<[_]>>()
        })
    };
    let policy = TenantPolicy {
        allowed_models: list(&p.allowed_models, "allowed_models", errs),
        allowed_tools: list(&p.allowed_tools, "allowed_tools", errs),
    };
    (!policy.is_open()).then(|| Arc::new(policy))
}

/// Returns the tenant with its valid routes whenever its id is valid, so that later checks
/// (duplicates, host conflicts) still see it; the caller fails if any error was recorded.
fn validate_tenant(
    t: &TenantSpec,
    path: &str,
    base: &Path,
    errs: &mut ConfigErrors,
) -> Option<Tenant> {
    let id = match TenantId::parse(&t.id) {
        Ok(id) => Some(id),
        Err(e) => {
            errs.push(
                format!("{path}.id"),
                format!("invalid tenant id {:?}: {e}", t.id),
            );
            None
        }
    };
    let plan: Arc<str> = interned(t.plan.as_deref().unwrap_or("free"));
    if plan.is_empty() {
        errs.push(format!("{path}.plan"), "must not be empty");
    }
    let mut routes = Vec::with_capacity(t.routes.len());
    let mut route_ids = HashSet::new();
    for (i, r) in t.routes.iter().enumerate() {
        let rpath = format!("{path}.routes[{i}]");
        if !route_ids.insert(r.id.as_str()) {
            errs.push(
                format!("{rpath}.id"),
                format!("duplicate route id {:?} in this tenant", r.id),
            );
            continue;
        }
        if let Some(route) = validate_route(r, &rpath, base, errs) {
            routes.push(route);
        }
    }
    let policy = t
        .policy
        .as_ref()
        .and_then(|p| validate_policy(p, &format!("{path}.policy"), errs));
    let waf = t
        .waf
        .as_ref()
        .and_then(|w| validate_tenant_waf(w, &format!("{path}.waf"), errs));
    Some(Tenant {
        id: id?,
        plan,
        limits: None,
        suspended: false,
        policy,
        waf,
        billing_anchor_ms: None,
        routes,
    })
}

fn validate_route(
    r: &RouteSpec,
    path: &str,
    base: &Path,
    errs: &mut ConfigErrors,
) -> Option<Route> {
    let before = errs.0.len();
    let id = RouteId::from_shared(interned(&r.id))
        .map_err(|e| {
            errs.push(
                format!("{path}.id"),
                format!("invalid route id {:?}: {e}", r.id),
            )
        })
        .ok();
    let host = HostPattern::parse(&r.host)
        .map_err(|e| {
            errs.push(
                format!("{path}.host"),
                format!("invalid host {:?}: {e}", r.host),
            )
        })
        .ok();
    let path_prefix = interned(r.path_prefix.as_deref().unwrap_or("/"));
    if !path_prefix.starts_with('/') {
        errs.push(
            format!("{path}.path_prefix"),
            format!("must start with '/', got {path_prefix:?}"),
        );
    } else if path_prefix.contains(['?', '#', ' ']) {
        errs.push(
            format!("{path}.path_prefix"),
            format!("must be a plain path, got {path_prefix:?}"),
        );
    }
    let algorithm = match r.algorithm.as_deref() {
        None => Algorithm::RoundRobin,
        Some(name) => match Algorithm::ALL.iter().find(|(_, n)| *n == name) {
            Some((a, _)) => *a,
            None => {
                errs.push(
                    format!("{path}.algorithm"),
                    format!("unknown algorithm {name:?} (expected round_robin, weighted_round_robin, least_conn or ip_hash)"),
                );
                Algorithm::RoundRobin
            }
        },
    };
    let kind = match r.kind.as_deref() {
        None => RouteKind::Http,
        Some(k) => RouteKind::parse(k).unwrap_or_else(|| {
            errs.push(
                format!("{path}.kind"),
                format!("unknown kind {k:?} (expected http or llm)"),
            );
            RouteKind::Http
        }),
    };
    let ratelimit = r.ratelimit.as_ref().map(|rl| {
        let rpath = format!("{path}.ratelimit");
        if !(1..=1_000_000_000).contains(&rl.requests_per_minute) {
            errs.push(
                format!("{rpath}.requests_per_minute"),
                format!(
                    "must be between 1 and 1000000000, got {}",
                    rl.requests_per_minute
                ),
            );
        }
        if let Some(b) = rl.burst
            && !(1..=1_000_000_000).contains(&b)
        {
            errs.push(
                format!("{rpath}.burst"),
                format!("must be between 1 and 1000000000, got {b}"),
            );
        }
        let key = match rl.key.as_deref() {
            None => RateLimitKey::Route,
            Some(k) => RateLimitKey::parse(k).unwrap_or_else(|| {
                errs.push(
                    format!("{rpath}.key"),
                    format!("unknown key {k:?} (expected tenant, route, client_ip or api_key)"),
                );
                RateLimitKey::Route
            }),
        };
        Box::new(RouteRateLimit {
            requests_per_minute: rl.requests_per_minute,
            burst: rl.burst,
            key,
        })
    });
    let waf = r
        .waf
        .as_ref()
        .and_then(|w| validate_route_waf(w, &format!("{path}.waf"), errs));
    let tls = r.tls.as_ref().map(|t| {
        if t.cert.is_empty() {
            errs.push(format!("{path}.tls.cert"), "must not be empty");
        }
        if t.key.is_empty() {
            errs.push(format!("{path}.tls.key"), "must not be empty");
        }
        Box::new(TlsFiles {
            cert: resolve(base, &t.cert),
            key: resolve(base, &t.key),
        })
    });
    let health_check = r
        .health_check
        .as_ref()
        .map(|h| Arc::new(validate_health(h, &format!("{path}.health_check"), errs)));
    if r.backends.is_empty() {
        errs.push(
            format!("{path}.backends"),
            "at least one backend is required",
        );
    }
    let mut backends = Vec::with_capacity(r.backends.len());
    let mut addrs = HashSet::new();
    for (i, b) in r.backends.iter().enumerate() {
        let bpath = format!("{path}.backends[{i}]");
        let address = match BackendAddr::parse(&b.address) {
            Ok(a) => Some(a),
            Err(e) => {
                errs.push(
                    format!("{bpath}.address"),
                    format!(
                        "invalid socket address {:?}: {e} (expected host:port, e.g. 127.0.0.1:8080 or app.internal:8080)",
                        b.address
                    ),
                );
                None
            }
        };
        if let Some(a) = &address
            && !addrs.insert(a.clone())
        {
            errs.push(
                format!("{bpath}.address"),
                format!("duplicate backend {a} in this route"),
            );
        }
        let weight = b.weight.unwrap_or(1);
        if weight == 0 || weight > 1000 {
            errs.push(
                format!("{bpath}.weight"),
                format!("must be between 1 and 1000, got {weight}"),
            );
        }
        let state = match b.state.as_deref() {
            None | Some("active") => BackendState::Active,
            Some("drain") => BackendState::Drain,
            Some(other) => {
                errs.push(
                    format!("{bpath}.state"),
                    format!("unknown state {other:?} (expected active or drain)"),
                );
                BackendState::Active
            }
        };
        if let Some(address) = address {
            backends.push(Backend {
                address,
                weight,
                state,
            });
        }
    }
    if errs.0.len() > before {
        return None;
    }
    Some(Route {
        id: id?,
        host: host?,
        path_prefix,
        algorithm,
        kind,
        ratelimit,
        waf,
        tls,
        health_check,
        backends,
    })
}

fn validate_health(h: &HealthCheckSpec, path: &str, errs: &mut ConfigErrors) -> HealthCheck {
    let hc_path = h.path.clone().unwrap_or_else(|| "/healthz".to_owned());
    if !hc_path.starts_with('/') {
        errs.push(
            format!("{path}.path"),
            format!("must start with '/', got {hc_path:?}"),
        );
    }
    let interval = duration(
        h.interval.as_deref(),
        Duration::from_secs(5),
        &format!("{path}.interval"),
        errs,
    );
    let timeout = duration(
        h.timeout.as_deref(),
        Duration::from_secs(1),
        &format!("{path}.timeout"),
        errs,
    );
    if interval < Duration::from_millis(50) {
        errs.push(format!("{path}.interval"), "must be at least 50ms");
    }
    if timeout.is_zero() {
        errs.push(format!("{path}.timeout"), "must be greater than 0");
    }
    let healthy_threshold = h.healthy_threshold.unwrap_or(2);
    let unhealthy_threshold = h.unhealthy_threshold.unwrap_or(3);
    for (name, v) in [
        ("healthy_threshold", healthy_threshold),
        ("unhealthy_threshold", unhealthy_threshold),
    ] {
        if !(1..=100).contains(&v) {
            errs.push(
                format!("{path}.{name}"),
                format!("must be between 1 and 100, got {v}"),
            );
        }
    }
    let expect_status = h.expect_status.unwrap_or(200);
    if !(100..=599).contains(&expect_status) {
        errs.push(
            format!("{path}.expect_status"),
            format!("must be an HTTP status (100-599), got {expect_status}"),
        );
    }
    HealthCheck {
        path: hc_path,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
        expect_status,
    }
}

#[cfg(test)]
mod tests;
