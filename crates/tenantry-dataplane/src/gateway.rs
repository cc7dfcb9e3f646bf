//! The gateway's shared state: the live routing table behind `ArcSwap`, the upstream client,
//! metrics, the access log, and reconfiguration (reload from file, coalesced).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tenantry_config::{ConfigErrors, GatewayConfig, ServerSettings};
use tenantry_domain::{Change, Snapshot};

use tenantry_config::RedisFallback;
use tenantry_limits::{Limiter, OnBackendError, RedisOptions};

use crate::accesslog::AccessLog;
use crate::admission::Quotas;
use crate::health::HealthSupervisor;
use crate::metrics::MetricsRegistry;
use crate::table::{RoutingTable, TableError};
use crate::tls::CertCache;
use crate::waf::WafPhase;

/// What a reconfiguration did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    /// Tenants added, replaced or removed.
    pub changed_tenants: usize,
    /// Tenants now served.
    pub tenants: usize,
    /// Routes now served.
    pub routes: usize,
    /// Time to build the new table (ms).
    pub build_ms: f64,
    /// Time to swap it in (ms).
    pub swap_ms: f64,
}

/// Why a reload was refused; the old configuration keeps serving.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    /// There is no config file to reload (the gateway was started without one).
    #[error("no configuration file to reload")]
    NoConfigFile,
    /// The file is invalid.
    #[error("invalid configuration:\n{0}")]
    Invalid(ConfigErrors),
    /// The table could not be built (e.g. a certificate failed to load).
    #[error("{0}")]
    Build(String),
}

/// A boxed future, for the hooks below.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Where reloads (SIGHUP, `POST /admin/reload`) get the next snapshot from, when the gateway
/// is not fed by its config file alone (e.g. the file is imported into the control-plane
/// store, and the store is what the proxy serves).
pub trait ConfigSource: Send + Sync {
    /// Produces the snapshot to move to.
    fn load(&self) -> BoxFuture<Result<Snapshot, ReloadError>>;
}

/// A request for the admin API mounted under `/api` on the admin listener.
pub type ApiRequest = http::Request<
    http_body_util::combinators::UnsyncBoxBody<
        bytes::Bytes,
        Box<dyn std::error::Error + Send + Sync>,
    >,
>;

/// The admin API handler: the request and the client's address in, a buffered response out.
pub type ApiHandler =
    Arc<dyn Fn(ApiRequest, SocketAddr) -> BoxFuture<http::Response<bytes::Bytes>> + Send + Sync>;

/// Shared state of a running gateway.
pub struct Gateway {
    pub(crate) table: Arc<ArcSwap<RoutingTable>>,
    pub(crate) metrics: Arc<MetricsRegistry>,
    pub(crate) access_log: Option<AccessLog>,
    pub(crate) settings: ServerSettings,
    pub(crate) draining: AtomicBool,
    pub(crate) epoch: Instant,
    config_path: Option<PathBuf>,
    state: Mutex<ReconfigState>,
    reload_lock: tokio::sync::Mutex<Option<Result<ReloadReport, ReloadError>>>,
    /// Held from reading tenants out of the store until they are applied; see
    /// [`Gateway::store_sync`].
    store_sync: tokio::sync::Mutex<()>,
    reloads_started: AtomicU64,
    health: Mutex<HealthSupervisor>,
    source: OnceLock<Arc<dyn ConfigSource>>,
    api: OnceLock<ApiHandler>,
    /// Rate limits and quota counters: in process, or shared through Redis (cluster mode).
    pub(crate) limiter: Limiter,
    /// Quota accounting and events.
    pub(crate) quotas: Quotas,
    /// The WAF engine and the routes' rules sets.
    pub(crate) waf: WafPhase,
}

struct ReconfigState {
    snapshot: Snapshot,
    certs: CertCache,
}

impl Gateway {
    /// Builds a gateway from a validated configuration. Must run inside a tokio runtime
    /// (health checks are spawned). `config_path` is the file that reloads re-read.
    pub fn new(
        config: GatewayConfig,
        config_path: Option<PathBuf>,
    ) -> Result<Arc<Self>, TableError> {
        let settings = config.server.clone();
        let metrics = Arc::new(MetricsRegistry::new(settings.metrics_max_tenants));
        let mut certs = CertCache::default();
        let changes = Snapshot::new().diff(&config.snapshot);
        let waf = WafPhase::new(settings.waf.clone());
        let table = RoutingTable::default().apply(&changes, &metrics, &mut certs, &waf)?;
        let access_log = if settings.access_log {
            match AccessLog::stdout(Arc::clone(&metrics)) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the access log writer; access log disabled");
                    None
                }
            }
        } else {
            None
        };
        let limiter = match &settings.redis {
            None => Limiter::local(),
            Some(url) => {
                let mut opts = RedisOptions::new(url.clone());
                opts.on_error = match settings.on_redis_error {
                    RedisFallback::Local => OnBackendError::Local,
                    RedisFallback::Allow => OnBackendError::Allow,
                    RedisFallback::Deny => OnBackendError::Deny,
                };
                Limiter::redis(opts).map_err(|e| TableError::Settings(e.to_string()))?
            }
        };
        let gw = Arc::new(Self {
            limiter,
            quotas: Quotas::default(),
            waf,
            table: Arc::new(ArcSwap::from_pointee(table)),
            metrics,
            access_log,
            settings,
            draining: AtomicBool::new(false),
            epoch: Instant::now(),
            config_path,
            state: Mutex::new(ReconfigState {
                snapshot: config.snapshot,
                certs,
            }),
            reload_lock: tokio::sync::Mutex::new(None),
            store_sync: tokio::sync::Mutex::new(()),
            reloads_started: AtomicU64::new(0),
            health: Mutex::new(HealthSupervisor::default()),
            source: OnceLock::new(),
            api: OnceLock::new(),
        });
        gw.reconcile_health();
        // The tokenizer takes a moment to build: not on the first LLM request's path.
        if gw.table.load().routes().any(|r| {
            r.admission
                .as_ref()
                .is_some_and(|a| a.kind == tenantry_domain::RouteKind::Llm)
        }) {
            tokio::task::spawn_blocking(|| crate::llm::count_tokens("warm up"));
        }
        // Pending bandwidth goes to the counters every second.
        let weak = Arc::downgrade(&gw);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(gw) = weak.upgrade() else { return };
                gw.quotas.flush(&gw.limiter, &gw.metrics).await;
            }
        });
        Ok(gw)
    }

    /// The rate limiter and quota counters.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// The WAF phase (engine state, settings).
    pub fn waf(&self) -> &WafPhase {
        &self.waf
    }

    /// Quota accounting (set the event sink here).
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// The tenant as currently served, if any.
    pub fn tenant(&self, id: &tenantry_domain::TenantId) -> Option<Arc<tenantry_domain::Tenant>> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.snapshot.tenant(id).cloned()
    }

    /// The server settings the gateway was started with.
    pub fn settings(&self) -> &ServerSettings {
        &self.settings
    }

    /// The current routing table.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    /// Metrics registry.
    pub fn metrics(&self) -> &Arc<MetricsRegistry> {
        &self.metrics
    }

    /// Whether the gateway is draining (shutting down or handing over).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts draining: `/readyz` answers 503 and responses carry `Connection: close`.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Makes reloads take their snapshot from `source` instead of the config file. Set once.
    pub fn set_config_source(&self, source: Arc<dyn ConfigSource>) {
        if self.source.set(source).is_err() {
            tracing::warn!("configuration source already set; keeping the first");
        }
    }

    /// Mounts the admin API under `/api` on the admin listener. Set once.
    pub fn set_api(&self, api: ApiHandler) {
        if self.api.set(api).is_err() {
            tracing::warn!("admin API already mounted; keeping the first");
        }
    }

    /// The admin API handler, if mounted.
    pub(crate) fn api(&self) -> Option<&ApiHandler> {
        self.api.get()
    }

    /// Writes out buffered access log lines (call when the server has stopped).
    pub fn flush_logs(&self) {
        if let Some(log) = &self.access_log {
            log.flush();
        }
    }

    /// Milliseconds since the gateway started (the clock of passive ejection).
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Re-reads the config file and applies it. Concurrent calls are coalesced: a caller that
    /// waited while another reload started after its request reuses that reload's result.
    pub async fn reload(self: &Arc<Self>) -> Result<ReloadReport, ReloadError> {
        let seen = self.reloads_started.load(Ordering::SeqCst);
        let mut last = self.reload_lock.lock().await;
        if self.reloads_started.load(Ordering::SeqCst) > seen
            && let Some(result) = last.as_ref()
        {
            return result.clone();
        }
        self.reloads_started.fetch_add(1, Ordering::SeqCst);
        let result = self.reload_now().await;
        match &result {
            Ok(r) => {
                self.metrics
                    .global
                    .reloads_ok
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    changed_tenants = r.changed_tenants,
                    tenants = r.tenants,
                    routes = r.routes,
                    build_ms = r.build_ms,
                    swap_ms = r.swap_ms,
                    "configuration reloaded"
                );
            }
            Err(e) => {
                self.metrics
                    .global
                    .reloads_error
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "configuration reload refused; the previous configuration keeps serving");
            }
        }
        *last = Some(result.clone());
        result
    }

    /// The lock every path that reads tenants from the store and applies what it read
    /// (an admin API write, a cluster event, a resync, a reload) holds from the read until the
    /// apply. Without it two such paths could apply their reads in the opposite order to the
    /// one they made them in, and leave the proxy serving an older state than the store's
    /// until the next change (two concurrent writes to one tenant did).
    pub fn store_sync(&self) -> &tokio::sync::Mutex<()> {
        &self.store_sync
    }

    async fn reload_now(self: &Arc<Self>) -> Result<ReloadReport, ReloadError> {
        if let Some(source) = self.source.get() {
            let _serial = self.store_sync.lock().await;
            let target = source.load().await?;
            let gw = Arc::clone(self);
            return tokio::task::spawn_blocking(move || gw.apply_snapshot(target))
                .await
                .map_err(|e| ReloadError::Build(format!("reload task failed: {e}")))?;
        }
        let path = self.config_path.clone().ok_or(ReloadError::NoConfigFile)?;
        let gw = Arc::clone(self);
        // Parsing, validating and building are CPU work (large configs take a while): keep
        // them off the proxy's worker threads.
        tokio::task::spawn_blocking(move || {
            let config = tenantry_config::load_file(&path).map_err(ReloadError::Invalid)?;
            if config.server != gw.settings {
                tracing::warn!(
                    "server settings (listeners, timeouts, runtime, logging) changed in the file; they apply at the next restart or --upgrade, routing changes apply now"
                );
            }
            gw.apply_snapshot(config.snapshot)
        })
        .await
        .map_err(|e| ReloadError::Build(format!("reload task failed: {e}")))?
    }

    /// Moves the gateway to a new snapshot: diff, build the changed tenants, swap atomically,
    /// then start or stop health checks. In-flight requests keep the table they started with.
    pub fn apply_snapshot(&self, target: Snapshot) -> Result<ReloadReport, ReloadError> {
        let started = Instant::now();
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let changes = state.snapshot.diff(&target);
        self.swap_in(state, &changes, started, |s| *s = target)
    }

    /// Applies changes to single tenants (the admin API's path: one tenant changed, rebuild
    /// that tenant only). Changes that leave a tenant as it is are skipped.
    pub fn apply_changes(&self, changes: &[Change]) -> Result<ReloadReport, ReloadError> {
        let started = Instant::now();
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let effective: Vec<Change> = changes
            .iter()
            .filter(|c| match c {
                Change::PutTenant(t) => state.snapshot.tenant(&t.id) != Some(t),
                Change::RemoveTenant(id) => state.snapshot.tenant(id).is_some(),
            })
            .cloned()
            .collect();
        self.swap_in(state, &effective, started, |s| {
            for c in &effective {
                s.apply(c);
            }
        })
    }

    /// Builds the table for `changes`, swaps it in, records the new snapshot with `update`,
    /// and reconciles health checks.
    fn swap_in(
        &self,
        mut state: std::sync::MutexGuard<'_, ReconfigState>,
        changes: &[Change],
        started: Instant,
        update: impl FnOnce(&mut Snapshot),
    ) -> Result<ReloadReport, ReloadError> {
        let current = self.table.load_full();
        let next = current
            .apply(changes, &self.metrics, &mut state.certs, &self.waf)
            .map_err(|e| ReloadError::Build(e.to_string()))?;
        let build = started.elapsed();
        let (tenants, routes) = (next.tenant_count(), next.route_count());
        let swap_start = Instant::now();
        self.table.store(Arc::new(next));
        let swap = swap_start.elapsed();
        update(&mut state.snapshot);
        drop(state);
        // The old table is freed here, outside the timed swap.
        drop(current);
        self.reconcile_health();
        Ok(ReloadReport {
            changed_tenants: changes.len(),
            tenants,
            routes,
            build_ms: ms(build),
            swap_ms: ms(swap),
        })
    }

    fn reconcile_health(&self) {
        let table = self.table.load_full();
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        h.reconcile(&table, &self.settings.upstream);
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
