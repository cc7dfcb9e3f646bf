//! Tenantry's web application firewall: the OWASP Core Rule Set evaluated by libmodsecurity 3.
//!
//! - **Loading.** [`Waf::start`] opens `libmodsecurity.so.3` at run time (see `ffi`), so a
//!   machine without it still builds and runs Tenantry; the caller decides what routes that
//!   need the WAF do then (`waf.on_unavailable`).
//! - **Rules sets.** One set per [`RulesKey`] (level, mode, exclusions), built on first use
//!   and shared by every route with that key. Only each level's blocking set without
//!   exclusions is compiled from the CRS: it holds Tenantry's engine directives, the level's
//!   CRS tuning, the CRS rules from the configured directory, and `waf.extra_rules`. A
//!   `detect` set, or one with a tenant's exclusions, is that set's rules (shared, not
//!   copied) behind a small head of directives; see [`Waf::rules`].
//! - **Inspection.** [`Waf::inspect`] queues the request for a bounded pool of threads (each
//!   with its own libmodsecurity instance) and awaits the [`Verdict`]: the proxy's event loops
//!   never run a rule. The queue keeps one FIFO per tenant and serves them round robin (see
//!   `queue`), so a tenant's inspection waits behind at most one of each other busy tenant's,
//!   not behind a heavy tenant's backlog. One tenant holds at most half of the queue: its
//!   further requests wait (asynchronously, up to [`QUEUE_WAIT`]) for one of its own slots.
//!   When the queue is full, the tenant with the longest queue gives up its newest request to
//!   a tenant with fewer. [`WafError::Busy`] answers a request that waited too long, was
//!   given up that way, or belongs to the longest queue when the queue is full. An inspection
//!   whose request was abandoned meanwhile is skipped.
//!
//! Only the `ffi` module may use `unsafe` (the workspace denies it everywhere else).

mod ffi;
mod log;
mod queue;
mod rules;

use std::collections::HashMap;
use std::ffi::{CStr, c_void};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use http::{HeaderMap, Method, Version};
use tenantry_config::WafSettings;
use tenantry_domain::{TenantId, WafMode};
use tokio::sync::{Semaphore, oneshot};

pub use rules::RulesKey;

use queue::{FairQueue, Refused};

type FastMap<K, V> = HashMap<K, V>;

/// How long a request waits for one of its tenant's inspection slots before `503 waf_busy`.
pub const QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the WAF could not give a verdict.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WafError {
    /// libmodsecurity could not be loaded.
    #[error("WAF engine unavailable: {0}")]
    Unavailable(String),
    /// A rules set failed to compile (a missing CRS directory, a bad extra rule file).
    #[error("WAF rules could not be loaded: {0}")]
    Rules(String),
    /// Every inspection slot is taken (or the tenant holds its share of them).
    #[error("WAF inspection queue is full")]
    Busy,
    /// The inspection threads are gone (shutting down) or the inspection failed.
    #[error("WAF inspection failed")]
    Failed,
}

/// A compiled rules set.
pub struct RuleSet {
    rules: ffi::Rules,
    key: RulesKey,
    count: usize,
    /// The level's blocking set whose rules a derived set shares (`None`: this is one).
    base: Option<Arc<RuleSet>>,
}

impl RuleSet {
    /// What the set was compiled for.
    pub fn key(&self) -> &RulesKey {
        &self.key
    }

    /// Number of rules libmodsecurity loaded. A derived set counts its base's rules,
    /// excluded ones included: `SecRuleRemoveById` skips them when they would run.
    pub fn rule_count(&self) -> usize {
        self.count
    }

    /// Whether the set shares its rules with its level's blocking set (a `detect` set, or one
    /// with exclusions) rather than holding its own.
    pub fn is_derived(&self) -> bool {
        self.base.is_some()
    }
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("key", &self.key)
            .field("rules", &self.count)
            .finish()
    }
}

/// The request as the WAF sees it.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The gateway's request id (libmodsecurity's `unique_id`).
    pub request_id: String,
    /// The client's address.
    pub client: SocketAddr,
    /// The listener's address.
    pub server: SocketAddr,
    /// The method.
    pub method: Method,
    /// Path and query exactly as received.
    pub uri: String,
    /// The HTTP version.
    pub version: Version,
    /// The request headers, `Host` included (for HTTP/2, from `:authority`).
    pub headers: HeaderMap,
    /// The body, at most `waf.max_body` bytes.
    pub body: Bytes,
    /// Whether `body` is only the first `waf.max_body` bytes of a longer body.
    pub body_partial: bool,
}

/// What the WAF decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing condemned the request.
    Pass,
    /// The request is refused (`mode: block`).
    Block,
    /// The request would have been refused, but the mode is `detect`.
    Detect,
}

impl Action {
    /// The metrics label: `pass`, `block` or `detect`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pass => "pass",
            Action::Block => "block",
            Action::Detect => "detect",
        }
    }
}

/// The outcome of one inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Pass, block or (detect mode) would-block.
    pub action: Action,
    /// The status the deciding rule asked for (403 for the CRS's anomaly evaluation, 400 for
    /// an unreadable body).
    pub status: u16,
    /// Rules that matched, in order (the CRS's scoring rules left out).
    pub rule_ids: Vec<u32>,
    /// Names of the variables they matched (`ARGS:q`), never their values.
    pub variables: Vec<String>,
}

impl Verdict {
    /// Whether the only rule that matched is Tenantry's "request body could not be parsed"
    /// (a complete JSON, XML or multipart body the engine could not read).
    pub fn only_unreadable_body(&self) -> bool {
        matches!(self.rule_ids[..], [id] if rules::UNREADABLE_BODY_RULES.contains(&id))
    }
}

struct Job {
    rules: Arc<RuleSet>,
    request: Inspection,
    reply: oneshot::Sender<Result<Verdict, WafError>>,
}

struct Inner {
    settings: WafSettings,
    api: &'static ffi::Api,
    version: String,
    sets: Mutex<FastMap<RulesKey, Weak<RuleSet>>>,
    queue: Arc<FairQueue<TenantId, Job>>,
    /// Each tenant's inspection slots (queued or running), created on first use.
    per_tenant: Mutex<(FastMap<TenantId, Arc<Semaphore>>, usize)>,
    /// Most inspections one tenant may have queued or running.
    tenant_share: usize,
    workers: usize,
    pending: AtomicUsize,
}

/// The WAF engine: the library, the compiled rules sets and the inspection threads.
/// Cloning shares them.
#[derive(Clone)]
pub struct Waf {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Waf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waf")
            .field("version", &self.inner.version)
            .field("workers", &self.inner.workers)
            .finish()
    }
}

impl Waf {
    /// Loads libmodsecurity and starts the inspection threads. Rules sets are compiled on
    /// first use ([`Waf::rules`]).
    pub fn start(settings: &WafSettings) -> Result<Waf, WafError> {
        let api = ffi::Api::load(&settings.library)
            .map_err(|e| WafError::Unavailable(format!("{}: {e}", settings.library)))?;
        let match_log = match &settings.match_log {
            Some(p) => Some(Arc::new(log::MatchLog::open(p).map_err(|e| {
                WafError::Unavailable(format!("waf.match_log {}: {e}", p.display()))
            })?)),
            None => None,
        };
        let connector = concat!("Tenantry v", env!("CARGO_PKG_VERSION"));
        let probe =
            ffi::Engine::new(api, connector, ffi::log_callback).map_err(WafError::Unavailable)?;
        let version = probe.version();
        let workers = settings
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        let capacity = settings.queue.max(1);
        let queue = Arc::new(FairQueue::new(capacity));
        let mut engines = vec![probe];
        for _ in 1..workers {
            engines.push(
                ffi::Engine::new(api, connector, ffi::log_callback)
                    .map_err(WafError::Unavailable)?,
            );
        }
        for (i, engine) in engines.into_iter().enumerate() {
            let mine = Arc::clone(&queue);
            let log = match_log.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("tenantry-waf-{i}"))
                .spawn(move || worker(engine, &mine, log.as_deref()));
            if let Err(e) = spawned {
                queue.close();
                return Err(WafError::Unavailable(format!("inspection thread: {e}")));
            }
        }
        Ok(Waf {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                api,
                version,
                sets: Mutex::default(),
                queue,
                per_tenant: Mutex::new((FastMap::default(), 64)),
                tenant_share: (capacity + workers).div_ceil(2),
                workers,
                pending: AtomicUsize::new(0),
            }),
        })
    }

    /// The library's name and version, e.g. `ModSecurity v3.0.9 (Linux)`.
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// The settings the engine runs with.
    pub fn settings(&self) -> &WafSettings {
        &self.inner.settings
    }

    /// Inspections queued or running.
    pub fn pending(&self) -> usize {
        self.inner.pending.load(Ordering::Relaxed)
    }

    /// The rules set for `key`, built now if no route uses it yet: call it when building
    /// routes, not per request.
    ///
    /// Each level's blocking set without exclusions is compiled from the CRS (tens of
    /// milliseconds and ~15 MB). Every other key of the level (`detect` mode, a tenant's
    /// exclusions) derives from it: a small head (`SecRuleEngine DetectionOnly`,
    /// `SecRuleRemoveById …`) merged with the compiled set, sharing its rules. A thousand
    /// tenants with their own exclusions therefore cost a thousand small sets, not a thousand
    /// copies of the CRS.
    pub fn rules(&self, key: &RulesKey) -> Result<Arc<RuleSet>, WafError> {
        let base_key = RulesKey {
            level: key.level,
            mode: WafMode::Block,
            exclusions: Box::default(),
        };
        // The base first (its own call, without holding the lock across both).
        let base = if *key == base_key {
            None
        } else {
            Some(self.rules(&base_key)?)
        };
        let mut sets = self.inner.sets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = sets.get(key).and_then(Weak::upgrade) {
            return Ok(set);
        }
        sets.retain(|_, w| w.strong_count() > 0);
        let started = std::time::Instant::now();
        let (compiled, count) = match &base {
            None => {
                let text = rules::text(&self.inner.settings, key.level);
                ffi::Rules::parse(self.inner.api, &text)
            }
            Some(b) => ffi::Rules::derive(self.inner.api, &rules::head(key), &b.rules),
        }
        .map_err(WafError::Rules)?;
        tracing::info!(
            level = key.level.as_str(),
            mode = key.mode.as_str(),
            exclusions = key.exclusions.len(),
            rules = count,
            derived = base.is_some(),
            ms = started.elapsed().as_millis() as u64,
            "WAF rules set compiled"
        );
        let set = Arc::new(RuleSet {
            rules: compiled,
            key: key.clone(),
            count,
            base,
        });
        sets.insert(key.clone(), Arc::downgrade(&set));
        Ok(set)
    }

    /// Holds or releases the inspection queue (tests: a backlog that cannot drain yet).
    #[cfg(test)]
    pub(crate) fn hold_queue(&self, held: bool) {
        self.inner.queue.hold(held);
    }

    /// The tenants of the inspections taken by the inspection threads, in order.
    #[cfg(test)]
    pub(crate) fn served(&self) -> Vec<TenantId> {
        self.inner.queue.taken()
    }

    /// Inspections queued, not yet taken by an inspection thread.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.inner.queue.len()
    }

    /// Inspects a request with `rules` on the pool, for `tenant` (whose share of the queue
    /// is bounded).
    pub async fn inspect(
        &self,
        rules: &Arc<RuleSet>,
        tenant: &TenantId,
        request: Inspection,
    ) -> Result<Verdict, WafError> {
        let slots = self.inner.slots(tenant);
        let _slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => tokio::time::timeout(QUEUE_WAIT, slots.acquire_owned())
                .await
                .map_err(|_| WafError::Busy)?
                .map_err(|_| WafError::Failed)?,
        };
        let _pending = Pending::new(&self.inner.pending);
        let (reply, verdict) = oneshot::channel();
        let job = Job {
            rules: Arc::clone(rules),
            request,
            reply,
        };
        // A request whose client left while queued holds no slot any more: a full queue drops
        // those before it evicts a live one.
        match self.inner.queue.push(tenant, job, |j| j.reply.is_closed()) {
            Ok(None) => {}
            Ok(Some(evicted)) => {
                let _ = evicted.reply.send(Err(WafError::Busy));
            }
            Err(Refused::Full(_)) => return Err(WafError::Busy),
            Err(Refused::Closed(_)) => return Err(WafError::Failed),
        }
        verdict.await.map_err(|_| WafError::Failed)?
    }
}

impl Drop for Inner {
    /// The last handle is gone: the inspection threads finish their current request and exit.
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl Inner {
    /// The tenant's slots (unused ones are swept as the map grows).
    fn slots(&self, tenant: &TenantId) -> Arc<Semaphore> {
        let mut guard = self.per_tenant.lock().unwrap_or_else(|p| p.into_inner());
        let (map, sweep_at) = &mut *guard;
        if let Some(s) = map.get(tenant) {
            return Arc::clone(s);
        }
        if map.len() >= *sweep_at {
            let share = self.tenant_share;
            map.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < share);
            *sweep_at = (map.len() * 2).max(64);
        }
        let s = Arc::new(Semaphore::new(self.tenant_share));
        map.insert(tenant.clone(), Arc::clone(&s));
        s
    }
}

/// Counts an inspection as pending while it lives.
struct Pending<'a>(&'a AtomicUsize);

impl<'a> Pending<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Pending(n)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Buffers one thread reuses from request to request for the strings libmodsecurity needs
/// NUL-terminated.
#[derive(Default)]
struct Scratch {
    id: Vec<u8>,
    client: Vec<u8>,
    server: Vec<u8>,
    uri: Vec<u8>,
    method: Vec<u8>,
}

/// `ip` written NUL-terminated into `buf`.
fn ip_cstr(buf: &mut Vec<u8>, ip: std::net::IpAddr) -> &CStr {
    use std::io::Write as _;
    buf.clear();
    let _ = write!(buf, "{ip}\0");
    CStr::from_bytes_until_nul(buf).unwrap_or(c"")
}

/// `s` NUL-terminated in `buf` (cut at an inner NUL, which no valid request line holds).
fn cstr<'b>(buf: &'b mut Vec<u8>, s: &[u8]) -> &'b CStr {
    buf.clear();
    buf.extend_from_slice(s);
    buf.push(0);
    CStr::from_bytes_until_nul(buf).unwrap_or(c"")
}

fn worker(
    engine: ffi::Engine,
    queue: &FairQueue<TenantId, Job>,
    match_log: Option<&log::MatchLog>,
) {
    ffi::batch_policy();
    let mut scratch = Scratch::default();
    while let Some(job) = queue.pop() {
        // The request was abandoned (client gone) while it waited: nobody wants the verdict.
        if job.reply.is_closed() {
            continue;
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            evaluate(&engine, &job.rules, &job.request, match_log, &mut scratch)
        }));
        match result {
            Ok(verdict) => {
                let _ = job.reply.send(Ok(verdict));
            }
            Err(_) => {
                tracing::error!(request_id = %job.request.request_id, "WAF inspection panicked");
                scratch = Scratch::default();
            }
        }
    }
}

fn version_str(v: Version) -> &'static CStr {
    match v {
        Version::HTTP_09 => c"0.9",
        Version::HTTP_10 => c"1.0",
        Version::HTTP_2 => c"2.0",
        Version::HTTP_3 => c"3.0",
        _ => c"1.1",
    }
}

/// Runs one transaction.
fn evaluate(
    engine: &ffi::Engine,
    set: &RuleSet,
    req: &Inspection,
    match_log: Option<&log::MatchLog>,
    s: &mut Scratch,
) -> Verdict {
    let mut collector = log::Collector {
        match_log,
        ..Default::default()
    };
    let mut decided: Vec<Vec<u8>> = Vec::new();
    let disruption = {
        let id = cstr(&mut s.id, req.request_id.as_bytes());
        let data = std::ptr::from_mut(&mut collector).cast::<c_void>();
        let Some(mut tx) = ffi::Transaction::new(engine, &set.rules, id, data) else {
            return Verdict {
                action: Action::Pass,
                status: 200,
                rule_ids: Vec::new(),
                variables: Vec::new(),
            };
        };
        let client = ip_cstr(&mut s.client, req.client.ip());
        let server = ip_cstr(&mut s.server, req.server.ip());
        tx.connection(client, req.client.port(), server, req.server.port());
        let uri = cstr(&mut s.uri, req.uri.as_bytes());
        let method = cstr(&mut s.method, req.method.as_str().as_bytes());
        tx.uri(uri, method, version_str(req.version));
        for (name, value) in &req.headers {
            if name.as_str() == rules::PARTIAL_BODY_HEADER {
                continue;
            }
            tx.header(name.as_str().as_bytes(), value.as_bytes());
        }
        if req.body_partial {
            tx.header(rules::PARTIAL_BODY_HEADER.as_bytes(), b"1");
        }
        tx.process_headers();
        // The deciding rule's message comes with the intervention, not through the callback.
        let mut disruption = tx.intervention(|m| decided.push(m.to_vec()));
        if disruption.is_none() {
            tx.append_body(&req.body);
            tx.process_body();
            disruption = tx.intervention(|m| decided.push(m.to_vec()));
        }
        if match_log.is_some() {
            tx.process_logging();
        }
        disruption
    };
    for m in &decided {
        collector.push(m);
    }
    let action = match (set.key.mode, disruption) {
        (WafMode::Block, Some(_)) => Action::Block,
        (WafMode::Detect, _) if collector.would_deny => Action::Detect,
        _ => Action::Pass,
    };
    Verdict {
        action,
        status: disruption.map_or(200, |d| d.status),
        rule_ids: collector.rule_ids,
        variables: collector.variables,
    }
}

#[cfg(test)]
mod tests;
