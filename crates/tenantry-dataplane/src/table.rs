//! The routing table: an immutable map from host to routes, swapped atomically on change.
//!
//! Lookup is O(1) in the number of tenants: one hash probe for the exact host, then one probe
//! per dot-separated suffix for wildcards (`a.b.acme.com` probes `b.acme.com`, `acme.com`,
//! `com`). A change to one tenant copies the host maps' pointers and rebuilds only that
//! tenant's routes; runtime state that must survive a reload (health, requests in flight,
//! metrics) is carried over by key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustls::sign::CertifiedKey;
use tenantry_domain::{
    Algorithm, BackendAddr, BackendState, Change, HealthCheck, HostPattern, Route, RouteId, Tenant,
    TenantId,
};

use crate::admission::Admission;
use crate::metrics::{MetricsRegistry, RouteMetrics};
use crate::tls::{self, CertCache};
use crate::upstream::IdlePool;
use crate::waf::{RouteWaf, WafPhase};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Routes of one host while a tenant is being built, with the host's certificate.
type HostGroup = (HostPattern, Vec<Arc<RouteRt>>, Option<Arc<CertifiedKey>>);

/// Health and load of one backend, shared by every table version that contains it.
#[derive(Debug)]
pub struct BackendHealth {
    healthy: AtomicBool,
    in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    consecutive_successes: AtomicU32,
    /// Milliseconds since the process epoch before which a passively ejected backend without
    /// active checks stays out.
    retry_at_ms: AtomicU64,
    /// Idle keep-alive connections to this backend.
    pub(crate) pool: IdlePool,
}

impl Default for BackendHealth {
    fn default() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            consecutive_successes: AtomicU32::new(0),
            retry_at_ms: AtomicU64::new(0),
            pool: IdlePool::default(),
        }
    }
}

impl BackendHealth {
    /// Whether the backend is currently considered healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Requests in flight to this backend.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Records a success (passive or active). Returns true if the backend just came back.
    pub(crate) fn record_success(&self, healthy_threshold: u32) -> bool {
        self.reset_failures();
        if self.healthy.load(Ordering::Relaxed) {
            return false;
        }
        let n = self.consecutive_successes.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= healthy_threshold {
            self.consecutive_successes.store(0, Ordering::Relaxed);
            return !self.healthy.swap(true, Ordering::Relaxed);
        }
        false
    }

    /// Clears the run of failures (a success). Reads first: on the request path the counter
    /// is almost always zero already, and a store would bounce the cache line between cores.
    pub(crate) fn reset_failures(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failure. Returns true if the backend just went down.
    pub(crate) fn record_failure(
        &self,
        unhealthy_threshold: u32,
        now_ms: u64,
        retry_after_ms: u64,
    ) -> bool {
        self.consecutive_successes.store(0, Ordering::Relaxed);
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= unhealthy_threshold && self.healthy.swap(false, Ordering::Relaxed) {
            self.retry_at_ms
                .store(now_ms + retry_after_ms, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// For routes without active checks: lets a passively ejected backend take a trial
    /// request once its back-off has passed.
    fn passive_retry_due(&self, now_ms: u64) -> bool {
        now_ms >= self.retry_at_ms.load(Ordering::Relaxed)
    }
}

/// A backend as one table version sees it.
#[derive(Debug)]
pub struct BackendRt {
    /// Where it listens (IP or DNS name, resolved at connect time).
    pub addr: BackendAddr,
    /// Weight.
    pub weight: u32,
    /// Active or draining (per table version).
    pub state: BackendState,
    /// Health and load, carried across versions.
    pub health: Arc<BackendHealth>,
}

impl BackendRt {
    /// `ip:port`, for logs and metrics.
    pub fn label(&self) -> &str {
        self.addr.as_str()
    }
}

/// A route as the proxy serves it.
#[derive(Debug)]
pub struct RouteRt {
    /// Owning tenant.
    pub tenant: TenantId,
    /// Route id.
    pub id: RouteId,
    /// Host pattern.
    pub host: HostPattern,
    /// Path prefix.
    pub prefix: Arc<str>,
    /// Backend selection.
    pub algorithm: Algorithm,
    /// The tenant is suspended: the proxy answers `403 tenant_suspended` (fits in padding).
    pub suspended: bool,
    /// The tenant's billing anchor in unix seconds, 0 for none (fits in padding too).
    billing_anchor_s: u32,
    /// Backends.
    pub backends: Box<[BackendRt]>,
    /// Active checks, if configured (shared with the domain route).
    pub health_check: Option<Arc<HealthCheck>>,
    /// Counters and histograms.
    pub metrics: Arc<RouteMetrics>,
    /// Rate limit, quotas and LLM policy (`None`: nothing to check).
    pub admission: Option<Arc<Admission>>,
    /// The WAF (`None`: level `off`, nothing inspected).
    pub waf: Option<Arc<RouteWaf>>,
    /// Round-robin position and smooth-weighted state.
    pub(crate) lb: LbState,
}

#[derive(Debug, Default)]
pub(crate) struct LbState {
    pub(crate) next: AtomicUsize,
    /// Smooth weighted round robin state (allocated for that algorithm only).
    pub(crate) current_weights: Option<Box<Mutex<Box<[i64]>>>>,
}

/// Passive ejection threshold for routes without an active check.
const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// How long a passively ejected backend of a route without active checks stays out.
pub(crate) const PASSIVE_RETRY_MS: u64 = 10_000;

impl RouteRt {
    /// Whether backend `i` may take a new request now.
    pub fn eligible(&self, i: usize, now_ms: u64) -> bool {
        let b = &self.backends[i];
        b.state == BackendState::Active
            && (b.health.is_healthy()
                || (self.health_check.is_none() && b.health.passive_retry_due(now_ms)))
    }

    /// Start of the tenant's first billing period (unix ms, whole seconds), for monthly
    /// quotas.
    pub fn billing_anchor_ms(&self) -> Option<u64> {
        anchor_ms(self.billing_anchor_s)
    }

    /// Consecutive failures that eject a backend.
    pub fn unhealthy_threshold(&self) -> u32 {
        self.health_check
            .as_ref()
            .map_or(DEFAULT_UNHEALTHY_THRESHOLD, |h| h.unhealthy_threshold)
    }

    fn matches_path(&self, path: &str) -> bool {
        let prefix = &*self.prefix;
        if prefix == "/" {
            return true;
        }
        match path.strip_prefix(prefix) {
            Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

/// The routes of one host, longest prefix first, plus the host's certificate.
#[derive(Debug)]
pub struct HostEntry {
    /// Routes sorted by prefix length, longest first.
    pub routes: Box<[Arc<RouteRt>]>,
    /// Certificate for SNI, if any route of this host has one.
    pub cert: Option<Arc<CertifiedKey>>,
}

/// The result of a lookup.
pub enum Lookup<'a> {
    /// A route serves this request.
    Route(&'a Arc<RouteRt>),
    /// No tenant has this host.
    UnknownHost,
    /// The host is known but no route prefix matches the path.
    NoRoute,
}

/// A tenant's runtime part: its routes (kept so a later change can find what to remove).
/// One allocation per tenant: with 100k tenants every word counts.
type TenantRoutes = Arc<[Arc<RouteRt>]>;

/// The routing table (immutable once built; see [`RoutingTable::apply`]).
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    exact: FastMap<Arc<str>, Arc<HostEntry>>,
    wildcard: FastMap<Arc<str>, Arc<HostEntry>>,
    tenants: FastMap<TenantId, TenantRoutes>,
    route_count: usize,
}

/// Why a table change could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// A server setting cannot be used (e.g. an invalid Redis URL).
    #[error("{0}")]
    Settings(String),
    /// A certificate or key could not be loaded.
    #[error("tenant {tenant}: route {route}: {source}")]
    Tls {
        /// Tenant.
        tenant: TenantId,
        /// Route.
        route: RouteId,
        /// Cause.
        source: tls::TlsError,
    },
}

impl RoutingTable {
    /// Finds the route for a normalised host and a path.
    pub fn lookup(&self, host: &str, path: &str) -> Lookup<'_> {
        let Some(entry) = self.host_entry(host) else {
            return Lookup::UnknownHost;
        };
        match entry.routes.iter().find(|r| r.matches_path(path)) {
            Some(r) => Lookup::Route(r),
            None => Lookup::NoRoute,
        }
    }

    /// The entry of a normalised host: exact match first, then the longest wildcard suffix.
    pub fn host_entry(&self, host: &str) -> Option<&Arc<HostEntry>> {
        if let Some(e) = self.exact.get(host) {
            return Some(e);
        }
        let mut rest = host;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(e) = self.wildcard.get(rest) {
                return Some(e);
            }
        }
        None
    }

    /// Number of routes.
    pub fn route_count(&self) -> usize {
        self.route_count
    }

    /// Number of tenants.
    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    /// Every route, for metrics and health supervision.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<RouteRt>> {
        self.tenants.values().flat_map(|t| t.iter())
    }

    /// Builds the next table from this one and a batch of changes. Only the tenants named in
    /// the changes are rebuilt; the others' runtime objects are shared.
    pub fn apply(
        &self,
        changes: &[Change],
        metrics: &MetricsRegistry,
        certs: &mut CertCache,
        waf: &WafPhase,
    ) -> Result<RoutingTable, TableError> {
        let mut next = self.clone();
        // Remove every changed tenant first, then insert: a host may move from one tenant to
        // another within one batch, and removing the old owner must not drop the new entry.
        let olds: Vec<Option<TenantRoutes>> = changes
            .iter()
            .map(|c| next.remove_tenant(c.tenant()))
            .collect();
        for (change, old) in changes.iter().zip(&olds) {
            if let Change::PutTenant(t) = change {
                next.insert_tenant(t, old.as_deref(), metrics, certs, waf)?;
            }
        }
        metrics.retain_tenants(|t| next.tenants.contains_key(t));
        Ok(next)
    }

    fn remove_tenant(&mut self, id: &TenantId) -> Option<TenantRoutes> {
        let old = self.tenants.remove(id)?;
        for r in old.iter() {
            match &r.host {
                HostPattern::Exact(n) => self.exact.remove(n),
                HostPattern::Wildcard(s) => self.wildcard.remove(s),
            };
        }
        self.route_count -= old.len();
        Some(old)
    }

    fn insert_tenant(
        &mut self,
        t: &Tenant,
        old: Option<&[Arc<RouteRt>]>,
        metrics: &MetricsRegistry,
        certs: &mut CertCache,
        waf: &WafPhase,
    ) -> Result<(), TableError> {
        let mut by_host: Vec<HostGroup> = Vec::new();
        let mut routes = Vec::with_capacity(t.routes.len());
        for r in &t.routes {
            let rt = Arc::new(build_route(t, r, old, metrics, waf));
            let cert = match &r.tls {
                Some(files) => Some(certs.load(files).map_err(|source| TableError::Tls {
                    tenant: t.id.clone(),
                    route: r.id.clone(),
                    source,
                })?),
                None => None,
            };
            match by_host.iter_mut().find(|(h, _, _)| *h == r.host) {
                Some((_, rs, c)) => {
                    rs.push(Arc::clone(&rt));
                    if c.is_none() {
                        *c = cert;
                    }
                }
                None => by_host.push((r.host.clone(), vec![Arc::clone(&rt)], cert)),
            }
            routes.push(rt);
        }
        for (host, mut rs, cert) in by_host {
            rs.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
            let entry = Arc::new(HostEntry {
                routes: rs.into_boxed_slice(),
                cert,
            });
            match &host {
                HostPattern::Exact(n) => self.exact.insert(n.clone(), entry),
                HostPattern::Wildcard(s) => self.wildcard.insert(s.clone(), entry),
            };
        }
        self.route_count += routes.len();
        self.tenants.insert(t.id.clone(), routes.into());
        Ok(())
    }
}

fn build_route(
    t: &Tenant,
    r: &Route,
    old: Option<&[Arc<RouteRt>]>,
    metrics: &MetricsRegistry,
    waf: &WafPhase,
) -> RouteRt {
    let old_route = old.and_then(|o| o.iter().find(|x| x.id == r.id));
    let backends = r
        .backends
        .iter()
        .map(|b| {
            // Health and load survive a reload when the backend stays in the route, unless the
            // health-check settings changed (then it starts fresh, optimistic).
            let health = old_route
                .filter(|o| o.health_check == r.health_check)
                .and_then(|o| o.backends.iter().find(|ob| ob.addr == b.address))
                .map(|ob| Arc::clone(&ob.health))
                .unwrap_or_default();
            BackendRt {
                addr: b.address.clone(),
                weight: b.weight,
                state: b.state,
                health,
            }
        })
        .collect::<Box<[_]>>();
    RouteRt {
        tenant: t.id.clone(),
        id: r.id.clone(),
        host: r.host.clone(),
        prefix: Arc::clone(&r.path_prefix),
        algorithm: r.algorithm,
        suspended: t.suspended,
        billing_anchor_s: anchor_seconds(t.billing_anchor_ms),
        lb: LbState {
            next: AtomicUsize::new(0),
            current_weights: (r.algorithm == Algorithm::WeightedRoundRobin)
                .then(|| Box::new(Mutex::new(vec![0; backends.len()].into_boxed_slice()))),
        },
        backends,
        health_check: r.health_check.clone(),
        metrics: metrics.route(&t.id, &r.id),
        admission: Admission::for_route(t, r),
        waf: waf.for_route(t, r),
    }
}

#[cfg(test)]
mod tests;

/// A billing anchor as routes keep it: whole seconds since the epoch (0: none).
fn anchor_seconds(anchor_ms: Option<u64>) -> u32 {
    anchor_ms
        .and_then(|ms| u32::try_from(ms / 1000).ok())
        .unwrap_or(0)
}

/// A tenant's billing anchor as the proxy counts monthly quotas with it (cut to whole
/// seconds, see [`Route::billing_anchor_ms`]). Whoever reads those counters must derive the
/// period from this, not from the stored milliseconds, or it reads another period's key.
pub fn counted_anchor_ms(anchor_ms: Option<u64>) -> Option<u64> {
    self::anchor_ms(anchor_seconds(anchor_ms))
}

/// A billing anchor kept in whole seconds, in ms again (`None` for 0: none).
fn anchor_ms(seconds: u32) -> Option<u64> {
    (seconds != 0).then(|| u64::from(seconds) * 1000)
}
