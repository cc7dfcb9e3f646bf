//! Prometheus metrics. Every metric name Tenantry exports is defined here.
//!
//! Per-route counters live in a [`RouteMetrics`] shared by the route's runtime object, so the
//! request path only increments atomics: no label hashing, no map lookup. The `tenant` label
//! is bounded: the first `metrics.max_tenants` tenants get their own; later ones share
//! `tenant="_other",route="_other"`, so 100k tenants cannot blow up Prometheus.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tenantry_domain::{RouteId, TenantId};

use crate::table::RoutingTable;

/// Requests by tenant, route and status class.
pub const REQUESTS_TOTAL: &str = "tenantry_requests_total";
/// Request duration histogram (seconds, until the response body is sent).
pub const REQUEST_DURATION: &str = "tenantry_request_duration_seconds";
/// Body bytes to and from upstreams (`direction` = `sent` | `received`).
pub const UPSTREAM_BYTES: &str = "tenantry_upstream_bytes_total";
/// 1 when a backend is healthy, 0 when down.
pub const BACKEND_UP: &str = "tenantry_backend_up";
/// Requests in flight per backend.
pub const BACKEND_IN_FLIGHT: &str = "tenantry_backend_in_flight";
/// Configuration reloads by result (`ok` | `error`).
pub const CONFIG_RELOADS: &str = "tenantry_config_reloads_total";
/// Tenants and routes in the current table.
pub const TENANTS: &str = "tenantry_tenants";
/// Routes in the current table.
pub const ROUTES: &str = "tenantry_routes";
/// Open downstream connections.
pub const CONNECTIONS: &str = "tenantry_connections_open";
/// Access log lines dropped because the writer fell behind.
pub const ACCESS_LOG_DROPPED: &str = "tenantry_access_log_dropped_total";
/// Upstream attempts retried on another backend.
pub const UPSTREAM_RETRIES: &str = "tenantry_upstream_retries_total";

/// Requests refused at admission by reason (`rate_limit` | `quota` | `policy`).
pub const ADMISSION_REFUSED: &str = "tenantry_admission_refused_total";
/// Rate-limit backend (Redis) errors: each one fell back to `on_redis_error`.
pub const RATELIMIT_BACKEND_ERRORS: &str = "tenantry_ratelimit_backend_errors_total";
/// 1 while the rate-limit backend answers (always 1 in process).
pub const RATELIMIT_BACKEND_UP: &str = "tenantry_ratelimit_backend_up";
/// Calls made to the rate-limit backend (Redis); a batch of decisions is one call.
pub const RATELIMIT_BACKEND_CALLS: &str = "tenantry_ratelimit_backend_calls_total";
/// Rate-limit decisions by where they were taken (`source` = `local` | `shared` |
/// `fallback_local` | `fail_open` | `fail_closed`).
pub const RATELIMIT_DECISIONS: &str = "tenantry_ratelimit_decisions_total";
/// Counter: refusals answered from the node's memory of a shared (Redis) refusal that had not
/// lapsed yet, without a Redis call.
pub const RATELIMIT_CACHED_DENIALS: &str = "tenantry_ratelimit_cached_denials_total";
/// Quota thresholds crossed (`quota`, `percent` = 80 | 100).
pub const QUOTA_EVENTS: &str = "tenantry_quota_events_total";

/// WAF inspections by tenant and outcome (`action` = `pass` | `block` | `detect` | `busy` |
/// `unavailable`).
pub const WAF_DECISIONS: &str = "tenantry_waf_decisions_total";

/// Label used for tenants beyond `max_tenants`.
pub const OTHER: &str = "_other";
/// Label used for requests that matched no tenant.
pub const NONE: &str = "_none";

/// Histogram bucket bounds in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Counters of one (tenant, route) label pair.
#[derive(Debug)]
pub struct RouteMetrics {
    tenant: Arc<str>,
    route: Arc<str>,
    status: [AtomicU64; 5],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    refused: [AtomicU64; 3],
    waf: [AtomicU64; 5],
}

/// What the WAF phase did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WafOutcome {
    /// Inspected, nothing condemned it.
    Pass = 0,
    /// Refused `403 waf_blocked`.
    Block = 1,
    /// Would have been refused; the tenant's mode is `detect`.
    Detect = 2,
    /// No inspection slot: refused `503 waf_busy` (served in `detect` mode).
    Busy = 3,
    /// Not inspected: the engine is unavailable (served or refused per `waf.on_unavailable`).
    Unavailable = 4,
}

impl WafOutcome {
    const NAMES: [&'static str; 5] = ["pass", "block", "detect", "busy", "unavailable"];
}

/// Why admission refused (or, for quotas under `log`/`notify`, flagged) a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Rate limit.
    RateLimit = 0,
    /// A quota was spent.
    Quota = 1,
    /// The tenant's LLM policy.
    Policy = 2,
}

impl Refused {
    const NAMES: [&'static str; 3] = ["rate_limit", "quota", "policy"];
}

impl RouteMetrics {
    /// Counts an admission refusal.
    pub fn refused(&self, why: Refused) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a WAF decision.
    pub fn waf(&self, outcome: WafOutcome) {
        self.waf[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn new(tenant: &str, route: &str) -> Self {
        Self {
            tenant: tenant.into(),
            route: route.into(),
            status: Default::default(),
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            refused: Default::default(),
            waf: Default::default(),
        }
    }

    /// Records a finished request.
    /// Status 0 (the client left before any response) counts in the histogram, not in a class.
    pub fn observe(&self, status: u16, elapsed: Duration) {
        if status >= 100 {
            let class = usize::from((status / 100).clamp(1, 5)) - 1;
            self.status[class].fetch_add(1, Ordering::Relaxed);
        }
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Adds body bytes sent to or received from the upstream.
    pub fn add_bytes(&self, sent: u64, received: u64) {
        if sent > 0 {
            self.bytes_sent.fetch_add(sent, Ordering::Relaxed);
        }
        if received > 0 {
            self.bytes_received.fetch_add(received, Ordering::Relaxed);
        }
    }
}

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct GlobalMetrics {
    /// Successful reloads.
    pub reloads_ok: AtomicU64,
    /// Refused reloads.
    pub reloads_error: AtomicU64,
    /// Open downstream connections.
    pub connections: AtomicU64,
    /// Dropped access log lines.
    pub access_log_dropped: AtomicU64,
    /// Retries on another backend.
    pub retries: AtomicU64,
    /// Rate-limit backend errors (copied from the limiter when rendering).
    pub ratelimit_backend_errors: AtomicU64,
    /// Whether the rate-limit backend answers (copied from the limiter when rendering).
    pub ratelimit_backend_up: AtomicU64,
    /// Rate-limit backend calls (copied from the limiter when rendering).
    pub ratelimit_backend_calls: AtomicU64,
    /// Refusals answered from a remembered shared refusal (copied from the limiter when
    /// rendering).
    pub ratelimit_cached_denials: AtomicU64,
    /// Rate-limit decisions by source, as `tenantry_limits::Source::ALL` (copied from the
    /// limiter when rendering).
    pub ratelimit_decisions: [AtomicU64; 5],
    /// Quota events: tokens 80/100, bandwidth 80/100, requests per minute 80/100.
    pub quota_events: [AtomicU64; 6],
}

#[derive(Debug, Default)]
struct Inner {
    labelled: HashSet<TenantId>,
    routes: BTreeMap<(Arc<str>, Arc<str>), Arc<RouteMetrics>>,
}

/// Hands out [`RouteMetrics`] with bounded labels and renders everything as Prometheus text.
#[derive(Debug)]
pub struct MetricsRegistry {
    max_tenants: usize,
    inner: Mutex<Inner>,
    other: Arc<RouteMetrics>,
    /// Requests that matched no tenant (unknown host, no route, bad request).
    pub unrouted: Arc<RouteMetrics>,
    /// Process-wide counters.
    pub global: GlobalMetrics,
}

impl MetricsRegistry {
    /// A registry giving at most `max_tenants` tenants their own label.
    pub fn new(max_tenants: usize) -> Self {
        Self {
            max_tenants,
            inner: Mutex::default(),
            other: Arc::new(RouteMetrics::new(OTHER, OTHER)),
            unrouted: Arc::new(RouteMetrics::new(NONE, NONE)),
            global: GlobalMetrics::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The counters for a route (shared with earlier table versions of the same route).
    pub fn route(&self, tenant: &TenantId, route: &RouteId) -> Arc<RouteMetrics> {
        let mut inner = self.lock();
        if !inner.labelled.contains(tenant) {
            if inner.labelled.len() >= self.max_tenants {
                return Arc::clone(&self.other);
            }
            inner.labelled.insert(tenant.clone());
        }
        let key: (Arc<str>, Arc<str>) = (tenant.as_str().into(), route.as_str().into());
        Arc::clone(
            inner
                .routes
                .entry(key)
                .or_insert_with(|| Arc::new(RouteMetrics::new(tenant.as_str(), route.as_str()))),
        )
    }

    /// Frees the labels of tenants that are gone, so new tenants can have them.
    pub fn retain_tenants(&self, keep: impl Fn(&TenantId) -> bool) {
        let mut inner = self.lock();
        inner.labelled.retain(|t| keep(t));
        let Inner { labelled, routes } = &mut *inner;
        let names: HashSet<&str> = labelled.iter().map(TenantId::as_str).collect();
        routes.retain(|(t, _), _| names.contains(&**t));
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self, table: &RoutingTable) -> String {
        let mut out = String::with_capacity(4096);
        let inner = self.lock();
        let all: Vec<&Arc<RouteMetrics>> = inner
            .routes
            .values()
            .chain([&self.other, &self.unrouted])
            .collect();

        header(
            &mut out,
            REQUESTS_TOTAL,
            "counter",
            "Requests by tenant, route and status class.",
        );
        for m in &all {
            for (i, c) in m.status.iter().enumerate() {
                let v = c.load(Ordering::Relaxed);
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "{REQUESTS_TOTAL}{{tenant=\"{}\",route=\"{}\",status_class=\"{}xx\"}} {v}",
                        m.tenant,
                        m.route,
                        i + 1
                    );
                }
            }
        }
        header(
            &mut out,
            REQUEST_DURATION,
            "histogram",
            "Request duration in seconds, until the response is sent.",
        );
        for m in &all {
            let count = m.count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (b, c) in BUCKETS.iter().zip(&m.buckets) {
                cumulative += c.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "{REQUEST_DURATION}_bucket{{tenant=\"{}\",route=\"{}\",le=\"{b}\"}} {cumulative}",
                    m.tenant, m.route
                );
            }
            let _ = writeln!(
                out,
                "{REQUEST_DURATION}_bucket{{tenant=\"{}\",route=\"{}\",le=\"+Inf\"}} {count}",
                m.tenant, m.route
            );
            let sum = m.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "{REQUEST_DURATION}_sum{{tenant=\"{}\",route=\"{}\"}} {sum}",
                m.tenant, m.route
            );
            let _ = writeln!(
                out,
                "{REQUEST_DURATION}_count{{tenant=\"{}\",route=\"{}\"}} {count}",
                m.tenant, m.route
            );
        }
        header(
            &mut out,
            UPSTREAM_BYTES,
            "counter",
            "Body bytes sent to and received from upstreams.",
        );
        for m in &all {
            for (dir, c) in [("sent", &m.bytes_sent), ("received", &m.bytes_received)] {
                let v = c.load(Ordering::Relaxed);
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "{UPSTREAM_BYTES}{{tenant=\"{}\",route=\"{}\",direction=\"{dir}\"}} {v}",
                        m.tenant, m.route
                    );
                }
            }
        }
        header(
            &mut out,
            ADMISSION_REFUSED,
            "counter",
            "Requests refused at admission (rate limit, quota, policy); quota also counts requests served over a quota under on_quota log or notify.",
        );
        for m in &all {
            for (why, c) in Refused::NAMES.iter().zip(&m.refused) {
                let v = c.load(Ordering::Relaxed);
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "{ADMISSION_REFUSED}{{tenant=\"{}\",route=\"{}\",reason=\"{why}\"}} {v}",
                        m.tenant, m.route
                    );
                }
            }
        }
        header(
            &mut out,
            WAF_DECISIONS,
            "counter",
            "WAF inspections by tenant and outcome: pass, block, detect (would block; mode detect), busy (no inspection slot), unavailable (engine not loaded).",
        );
        let mut waf: BTreeMap<&str, [u64; 5]> = BTreeMap::new();
        for m in &all {
            let counts: [u64; 5] = std::array::from_fn(|i| m.waf[i].load(Ordering::Relaxed));
            if counts.iter().any(|v| *v > 0) {
                let t = waf.entry(&m.tenant).or_default();
                for (sum, v) in t.iter_mut().zip(counts) {
                    *sum += v;
                }
            }
        }
        for (tenant, counts) in &waf {
            for (action, v) in WafOutcome::NAMES.iter().zip(counts) {
                if *v > 0 {
                    let _ = writeln!(
                        out,
                        "{WAF_DECISIONS}{{tenant=\"{tenant}\",action=\"{action}\"}} {v}"
                    );
                }
            }
        }
        header(
            &mut out,
            BACKEND_UP,
            "gauge",
            "1 if the backend is healthy, 0 if it is down (labelled tenants only).",
        );
        let mut in_flight = String::new();
        for r in table.routes() {
            if !inner.labelled.contains(&r.tenant) {
                continue;
            }
            for b in r.backends.iter() {
                let _ = writeln!(
                    out,
                    "{BACKEND_UP}{{tenant=\"{}\",route=\"{}\",backend=\"{}\"}} {}",
                    r.tenant,
                    r.id,
                    b.label(),
                    u8::from(b.health.is_healthy())
                );
                let _ = writeln!(
                    in_flight,
                    "{BACKEND_IN_FLIGHT}{{tenant=\"{}\",route=\"{}\",backend=\"{}\"}} {}",
                    r.tenant,
                    r.id,
                    b.label(),
                    b.health.in_flight()
                );
            }
        }
        header(
            &mut out,
            BACKEND_IN_FLIGHT,
            "gauge",
            "Requests in flight per backend (labelled tenants only).",
        );
        out.push_str(&in_flight);
        drop(inner);

        let g = &self.global;
        header(
            &mut out,
            CONFIG_RELOADS,
            "counter",
            "Configuration reloads by result.",
        );
        let _ = writeln!(
            out,
            "{CONFIG_RELOADS}{{result=\"ok\"}} {}",
            g.reloads_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "{CONFIG_RELOADS}{{result=\"error\"}} {}",
            g.reloads_error.load(Ordering::Relaxed)
        );
        for (name, kind, help, v) in [
            (
                TENANTS,
                "gauge",
                "Tenants in the routing table.",
                table.tenant_count() as u64,
            ),
            (
                ROUTES,
                "gauge",
                "Routes in the routing table.",
                table.route_count() as u64,
            ),
            (
                CONNECTIONS,
                "gauge",
                "Open downstream connections.",
                g.connections.load(Ordering::Relaxed),
            ),
            (
                ACCESS_LOG_DROPPED,
                "counter",
                "Access log lines dropped because the writer fell behind.",
                g.access_log_dropped.load(Ordering::Relaxed),
            ),
            (
                UPSTREAM_RETRIES,
                "counter",
                "Requests retried on another backend after a connect error.",
                g.retries.load(Ordering::Relaxed),
            ),
            (
                RATELIMIT_BACKEND_ERRORS,
                "counter",
                "Rate-limit backend (Redis) errors; each decision fell back to on_redis_error.",
                g.ratelimit_backend_errors.load(Ordering::Relaxed),
            ),
            (
                RATELIMIT_BACKEND_UP,
                "gauge",
                "1 while the rate-limit backend answers.",
                g.ratelimit_backend_up.load(Ordering::Relaxed),
            ),
            (
                RATELIMIT_BACKEND_CALLS,
                "counter",
                "Calls to the rate-limit backend (Redis); concurrent decisions share one.",
                g.ratelimit_backend_calls.load(Ordering::Relaxed),
            ),
            (
                RATELIMIT_CACHED_DENIALS,
                "counter",
                "Rate-limit refusals answered from this node's memory of a Redis refusal that had not lapsed (no Redis call; also counted as source=\"shared\").",
                g.ratelimit_cached_denials.load(Ordering::Relaxed),
            ),
        ] {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
        header(
            &mut out,
            RATELIMIT_DECISIONS,
            "counter",
            "Rate-limit decisions by where they were taken.",
        );
        for (source, n) in tenantry_limits::Source::ALL
            .iter()
            .zip(&g.ratelimit_decisions)
        {
            let _ = writeln!(
                out,
                "{RATELIMIT_DECISIONS}{{source=\"{}\"}} {}",
                source.as_str(),
                n.load(Ordering::Relaxed)
            );
        }
        header(
            &mut out,
            QUOTA_EVENTS,
            "counter",
            "Quota thresholds crossed (80% and 100% of a window).",
        );
        for (i, (quota, percent)) in [
            ("tokens_per_minute", 80),
            ("tokens_per_minute", 100),
            ("bandwidth_gb_month", 80),
            ("bandwidth_gb_month", 100),
            ("requests_per_minute", 80),
            ("requests_per_minute", 100),
        ]
        .iter()
        .enumerate()
        {
            let _ = writeln!(
                out,
                "{QUOTA_EVENTS}{{quota=\"{quota}\",percent=\"{percent}\"}} {}",
                g.quota_events[i].load(Ordering::Relaxed)
            );
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_tenants_beyond_the_limit_into_other() {
        let reg = MetricsRegistry::new(2);
        let r = RouteId::parse("web").unwrap();
        let ids: Vec<TenantId> = ["a", "b", "c"]
            .iter()
            .map(|s| TenantId::parse(s).unwrap())
            .collect();
        let ms: Vec<_> = ids.iter().map(|t| reg.route(t, &r)).collect();
        assert_eq!(&*ms[0].tenant, "a");
        assert_eq!(&*ms[1].tenant, "b");
        assert_eq!(&*ms[2].tenant, OTHER);
        ms[2].observe(200, Duration::from_millis(3));
        let text = reg.render(&RoutingTable::default());
        assert!(
            text.contains(
                r#"tenantry_requests_total{tenant="_other",route="_other",status_class="2xx"} 1"#
            ),
            "{text}"
        );
        // When a labelled tenant goes away its label is freed for the next one.
        reg.retain_tenants(|t| t.as_str() != "a");
        assert_eq!(&*reg.route(&ids[2], &r).tenant, "c");
    }

    #[test]
    fn histogram_is_cumulative() {
        let reg = MetricsRegistry::new(1);
        let m = reg.route(
            &TenantId::parse("a").unwrap(),
            &RouteId::parse("web").unwrap(),
        );
        m.observe(200, Duration::from_micros(500));
        m.observe(503, Duration::from_millis(30));
        let text = reg.render(&RoutingTable::default());
        assert!(
            text.contains(
                r#"tenantry_request_duration_seconds_bucket{tenant="a",route="web",le="0.001"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"tenantry_request_duration_seconds_bucket{tenant="a",route="web",le="0.05"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"tenantry_requests_total{tenant="a",route="web",status_class="5xx"} 1"#
            ),
            "{text}"
        );
    }
}
