//! Admission: what a request must pass between routing and the upstream. In order:
//!
//! 1. the **rate limit** (the route's own, or its tenant's plan's), one limiter decision;
//! 2. the **bandwidth quota** of the tenant's billing month, read from this node's view of
//!    the shared counter (refreshed every second by [`Quotas::flush`]);
//! 3. on `kind: llm` routes: the body is read (bounded), parsed, checked against the tenant's
//!    **policy** (allowed models and tools), and the **tokens-per-minute quota** is read from
//!    the shared counter.
//!
//! The rules are data resolved when the table is built ([`Admission::for_route`]), from the
//! tenant's snapshot: nothing is configured per tenant at run time, and a route without any
//! rule pays nothing (`RouteRt::admission` is `None`).
//!
//! Counting happens when the response ends (see [`crate::body::Tap`]): bytes go to the
//! tenant's bandwidth counter, and on LLM routes the tokens found in the response (or
//! estimated) go to its tokens-per-minute counter. Crossing 80% or 100% of a quota emits a
//! [`QuotaEvent`] exactly once per window, cluster-wide: the node whose addition crosses
//! the line is the one that reports it (the counter is one atomic `INCRBY`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use tenantry_domain::{
    OnQuota, RateLimitKey, Route, RouteId, RouteKind, Tenant, TenantId, TenantPolicy,
    billing_period,
};
use tenantry_limits::{Decision, Limiter, Rate, SharedAddError};

use crate::errors::ErrorCode;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One route's admission rules. They hold nothing tenant-specific, so routes with the same
/// rules (every tenant of a plan without overrides) share one interned value: a route pays
/// one pointer for them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Admission {
    /// The rate limit, if any.
    pub rate: Option<RateRule>,
    /// HTTP or LLM.
    pub kind: RouteKind,
    /// The tenant's LLM tokens per minute (LLM routes only).
    pub tokens_per_minute: Option<u64>,
    /// The tenant's bandwidth per billing month, in bytes.
    pub bandwidth_bytes: Option<u64>,
    /// What happens at a quota.
    pub on_quota: OnQuota,
    /// The tenant's model and tool policy (LLM routes only).
    pub policy: Option<Arc<TenantPolicy>>,
}

/// A resolved rate limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RateRule {
    /// The rate.
    pub rate: Rate,
    /// Who shares a bucket.
    pub key: RateLimitKey,
    /// Whether this is the plan's `requests_per_minute` (a quota, whose 80% and 100% are
    /// reported to the owner) rather than a route's own `ratelimit`.
    pub plan: bool,
}

impl Admission {
    /// The rules for route `r` of tenant `t`; `None` when nothing applies.
    pub fn for_route(t: &Tenant, r: &Route) -> Option<Arc<Admission>> {
        let limits = t.limits.as_deref();
        let rate = match &r.ratelimit {
            Some(rl) => Some(RateRule::new(rl.requests_per_minute, rl.burst, rl.key)),
            None => limits.and_then(|l| {
                l.requests_per_minute.map(|rpm| RateRule {
                    plan: true,
                    ..RateRule::new(rpm, l.burst, RateLimitKey::Tenant)
                })
            }),
        };
        let llm = r.kind == RouteKind::Llm;
        let tokens_per_minute = limits.and_then(|l| l.tokens_per_minute).filter(|_| llm);
        let bandwidth_bytes = limits
            .and_then(|l| l.bandwidth_gb_month)
            .map(|gb| gb.saturating_mul(1_000_000_000));
        let policy = t.policy.clone().filter(|_| llm);
        if rate.is_none() && tokens_per_minute.is_none() && bandwidth_bytes.is_none() && !llm {
            return None;
        }
        Some(intern(Admission {
            rate,
            kind: r.kind,
            tokens_per_minute,
            bandwidth_bytes,
            on_quota: limits.map(|l| l.on_quota).unwrap_or_default(),
            policy,
        }))
    }
}

type Interned = Mutex<(
    HashMap<Admission, Weak<Admission>, foldhash::fast::RandomState>,
    usize,
)>;

/// One shared value per distinct rule set (weakly held: unused ones are swept as the map
/// grows).
fn intern(a: Admission) -> Arc<Admission> {
    static INTERNED: std::sync::LazyLock<Interned> = std::sync::LazyLock::new(Mutex::default);
    let mut guard = INTERNED.lock().unwrap_or_else(|p| p.into_inner());
    let (map, sweep_at) = &mut *guard;
    if let Some(shared) = map.get(&a).and_then(Weak::upgrade) {
        return shared;
    }
    if map.len() >= *sweep_at {
        map.retain(|_, w| w.strong_count() > 0);
        *sweep_at = (map.len() * 2).max(64);
    }
    let shared = Arc::new(a.clone());
    map.insert(a, Arc::downgrade(&shared));
    shared
}

impl RateRule {
    fn new(rpm: u64, burst: Option<u64>, key: RateLimitKey) -> Self {
        RateRule {
            rate: Rate::per_minute(rpm, burst.unwrap_or(rpm).max(1)),
            key,
            plan: false,
        }
    }

    /// The limiter key for one request: `tn:rl:<tenant>:*:tenant:<rpm>/<burst>`,
    /// `tn:rl:<tenant>:<route>:route`, `…:<route>:ip:<address>` or `…:<route>:key:<hash>`.
    /// Every node builds the same key from the same snapshot. (Built per request rather than
    /// stored: a route keeps one pointer for its rules, whatever the number of tenants.)
    ///
    /// A tenant-wide bucket is named by its rate too: the plan's limit and a route's own
    /// `key: tenant` limit share a bucket only when their rates are the same (one stored state
    /// read with two different rates would enforce neither).
    pub fn key_for(
        &self,
        tenant: &TenantId,
        route: &RouteId,
        client: IpAddr,
        headers: &HeaderMap,
    ) -> String {
        // Plain pushes, not `write!`: this runs for every rate-limited request.
        let mut s = String::with_capacity(64);
        s.push_str("tn:rl:");
        s.push_str(tenant.as_str());
        s.push(':');
        if self.key == RateLimitKey::Tenant {
            let mut n = itoa::Buffer::new();
            s.push_str("*:tenant:");
            s.push_str(n.format(self.rate.per_period));
            s.push('/');
            s.push_str(n.format(self.rate.burst));
            return s;
        }
        s.push_str(route.as_str());
        match self.key {
            RateLimitKey::Route => s.push_str(":route"),
            RateLimitKey::ApiKey if let Some(k) = api_key(headers) => {
                // The key itself never reaches Redis: a SHA-256 prefix names its bucket.
                const HEX: &[u8; 16] = b"0123456789abcdef";
                s.push_str(":key:");
                for b in &Sha256::digest(k)[..8] {
                    s.push(char::from(HEX[usize::from(b >> 4)]));
                    s.push(char::from(HEX[usize::from(b & 0xf)]));
                }
            }
            // Client IP, or an API-key rule on a request without a key.
            _ => {
                let _ = write!(s, ":ip:{client}");
            }
        }
        s
    }
}

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The caller's API key: `Authorization: Bearer <key>` or `X-Api-Key: <key>`.
fn api_key(h: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = h.get(&X_API_KEY) {
        return Some(v.as_bytes()).filter(|k| !k.is_empty());
    }
    let auth = h.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = auth.split_at(auth.iter().position(|b| *b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
        .filter(|k| !k.is_empty())
}

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The `RateLimit-*` headers of a decision (draft-ietf-httpapi-ratelimit-headers):
/// `RateLimit-Limit` is the sustained requests per minute, `RateLimit-Remaining` how many
/// requests could be sent right now, `RateLimit-Reset` the seconds until the bucket is full
/// again, and `RateLimit-Policy` describes the rule (`60;w=60;burst=10`). A refusal adds
/// `Retry-After` (whole seconds, rounded up).
pub fn rate_headers(d: &Decision, rate: &Rate, h: &mut HeaderMap) {
    RateFields::of(d, rate).insert_into(h);
}

/// A decision's rate-limit fields (see [`rate_headers`]) kept as numbers until the response
/// head is written: the own HTTP/1.1 server writes them straight into the head
/// ([`RateFields::write_h1`]), which costs a fraction of four `HeaderMap` insertions; other
/// writers get them in the map ([`RateFields::insert_into`]). Either way they replace any
/// field of the same name the upstream sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateFields {
    limit: u64,
    remaining: u64,
    reset: u64,
    /// `Retry-After`, on a refusal only.
    retry_after: Option<u64>,
    /// `RateLimit-Policy`: requests per window, window in seconds, burst.
    policy: PolicyKey,
}

impl RateFields {
    /// The fields of decision `d` under `rate`.
    pub fn of(d: &Decision, rate: &Rate) -> Self {
        Self {
            limit: d.limit,
            remaining: d.remaining,
            reset: ceil_secs(d.reset_after),
            retry_after: (!d.allowed).then(|| ceil_secs(d.retry_after).max(1)),
            policy: (rate.per_period, rate.period.as_secs().max(1), rate.burst),
        }
    }

    /// Sets the fields in `h`, replacing any of the same name.
    pub fn insert_into(&self, h: &mut HeaderMap) {
        h.insert(RATELIMIT_LIMIT.clone(), number_value(self.limit));
        h.insert(RATELIMIT_REMAINING.clone(), number_value(self.remaining));
        h.insert(RATELIMIT_RESET.clone(), number_value(self.reset));
        if let Some(v) = policy_value(self.policy) {
            h.insert(RATELIMIT_POLICY.clone(), v);
        }
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, number_value(secs));
        }
    }

    /// Writes the fields as HTTP/1.1 header lines, in the order and spelling
    /// [`RateFields::insert_into`] gives them.
    pub fn write_h1(&self, out: &mut Vec<u8>) {
        let mut n = itoa::Buffer::new();
        let (per, window, burst) = self.policy;
        let lines: [(&[u8], Option<u64>); 5] = [
            (b"ratelimit-limit: ", Some(self.limit)),
            (b"ratelimit-remaining: ", Some(self.remaining)),
            (b"ratelimit-reset: ", Some(self.reset)),
            (b"ratelimit-policy: ", Some(per)),
            (b"retry-after: ", self.retry_after),
        ];
        for (name, value) in lines {
            let Some(value) = value else { continue };
            out.extend_from_slice(name);
            out.extend_from_slice(n.format(value).as_bytes());
            if name.starts_with(b"ratelimit-policy") {
                out.extend_from_slice(b";w=");
                out.extend_from_slice(n.format(window).as_bytes());
                out.extend_from_slice(b";burst=");
                out.extend_from_slice(n.format(burst).as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Whether these fields replace a field named `name` (any case).
    pub fn replaces(&self, name: &[u8]) -> bool {
        match name.len() {
            11 => self.retry_after.is_some() && name.eq_ignore_ascii_case(b"retry-after"),
            15..=19 => [
                RATELIMIT_LIMIT.as_str(),
                RATELIMIT_REMAINING.as_str(),
                RATELIMIT_RESET.as_str(),
                RATELIMIT_POLICY.as_str(),
            ]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n.as_bytes())),
            _ => false,
        }
    }
}

/// Numbers below this come from a table of static header values.
const SMALL_NUMBERS: usize = 4096;

/// `n` as a header value. The RateLimit counters are mostly small: those come from a table
/// built once, whose values are static (a clone copies a pointer). `HeaderValue::from(u64)`
/// allocates for every value.
fn number_value(n: u64) -> HeaderValue {
    static SMALL: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    let Some(i) = usize::try_from(n).ok().filter(|&i| i < SMALL_NUMBERS) else {
        return HeaderValue::from(n);
    };
    let table = SMALL.get_or_init(|| {
        // One string holding every number, kept for the life of the process.
        let mut all = String::new();
        let mut ends = Vec::with_capacity(SMALL_NUMBERS);
        for k in 0..SMALL_NUMBERS {
            let _ = write!(all, "{k}");
            ends.push(all.len());
        }
        let all: &'static str = Box::leak(all.into_boxed_str());
        let mut start = 0;
        ends.into_iter()
            .map(|end| {
                let v = HeaderValue::from_static(&all[start..end]);
                start = end;
                v
            })
            .collect()
    });
    table[i].clone()
}

/// A `RateLimit-Policy`: requests per window, window in seconds, burst.
type PolicyKey = (u64, u64, u64);

/// The `RateLimit-Policy` value of (requests per window, window in seconds, burst):
/// `100;w=60;burst=10`. Requests of one route share their rate, so the last value built on
/// this thread is kept and reused.
fn policy_value(key: PolicyKey) -> Option<HeaderValue> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(PolicyKey, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((k, v)) = last.as_ref()
            && *k == key
        {
            return Some(v.clone());
        }
        let v = HeaderValue::from_str(&format!("{};w={};burst={}", key.0, key.1, key.2)).ok()?;
        *last = Some((key, v.clone()));
        Some(v)
    })
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).try_into().unwrap_or(u64::MAX)
}

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// Which quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaKind {
    /// The plan's requests per minute (its rate limit).
    RequestsPerMinute,
    /// LLM tokens per minute.
    TokensPerMinute,
    /// Bytes per billing month.
    BandwidthMonth,
}

impl QuotaKind {
    /// Wire name (the plan's limit name).
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::RequestsPerMinute => "requests_per_minute",
            QuotaKind::TokensPerMinute => "tokens_per_minute",
            QuotaKind::BandwidthMonth => "bandwidth_gb_month",
        }
    }
}

/// A quota crossed 80% or 100% in its window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaEvent {
    /// Tenant.
    pub tenant: TenantId,
    /// Which quota.
    pub quota: QuotaKind,
    /// 80 or 100.
    pub percent: u8,
    /// Usage after the addition that crossed the line.
    pub used: u64,
    /// The quota.
    pub limit: u64,
    /// Window start and end, unix ms.
    pub window: (u64, u64),
    /// The plan's `on_quota` (`notify` asks the owner to upgrade).
    pub on_quota: OnQuota,
}

/// Receives quota events (the binary records them in the audit log and publishes them).
pub type QuotaSink = Arc<dyn Fn(QuotaEvent) + Send + Sync>;

/// A refusal: the error and what the body and headers say besides the code.
#[derive(Debug)]
pub struct Refusal {
    /// Error code (status).
    pub code: ErrorCode,
    /// Extra JSON members of the body, already encoded (`,"quota":"…"`).
    pub extra: String,
    /// `Retry-After` seconds, if the refusal sets it.
    pub retry_after: Option<u64>,
}

impl Refusal {
    /// A refusal without extras.
    pub fn plain(code: ErrorCode) -> Self {
        Refusal {
            code,
            extra: String::new(),
            retry_after: None,
        }
    }
}

/// Appends `,"name":<json string>` to `out`.
pub fn json_member(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, ",\"{name}\":{}", serde_json::Value::from(value));
}

/// A quota is spent: what `on_quota` makes of it. `Ok` lets the request through.
pub fn quota_reached(
    on_quota: OnQuota,
    quota: QuotaKind,
    window: (u64, u64),
    now_ms: u64,
) -> Result<(), Refusal> {
    let code = match on_quota {
        OnQuota::Log | OnQuota::Notify => return Ok(()),
        OnQuota::Throttle => ErrorCode::QuotaThrottled,
        OnQuota::Block => ErrorCode::QuotaExceeded,
    };
    let mut r = Refusal::plain(code);
    json_member(&mut r.extra, "quota", quota.as_str());
    let _ = write!(r.extra, ",\"resets_at\":{}", window.1 / 1000);
    json_member(
        &mut r.extra,
        "resets_at_rfc3339",
        &tenantry_domain::rfc3339(window.1),
    );
    if code == ErrorCode::QuotaThrottled {
        let secs = window.1.saturating_sub(now_ms).div_ceil(1000).max(1);
        r.retry_after = Some(secs);
    }
    Err(r)
}

/// How long a minute's request counter lives (from its first addition).
const COUNTER_LIFE_MS: u64 = 120_000;

/// The minute window containing `now_ms`.
pub fn minute_window(now_ms: u64) -> (u64, u64) {
    let start = now_ms - now_ms % 60_000;
    (start, start + 60_000)
}

/// The Redis/local counter key of a tenant's quota window.
pub fn quota_key(tenant: &TenantId, quota: QuotaKind, window_start: u64) -> String {
    match quota {
        QuotaKind::RequestsPerMinute => format!("tn:q:{tenant}:rpm:{}", window_start / 60_000),
        QuotaKind::TokensPerMinute => format!("tn:q:{tenant}:tpm:{}", window_start / 60_000),
        QuotaKind::BandwidthMonth => format!("tn:q:{tenant}:bw:{window_start}"),
    }
}

/// The thresholds an addition crossed (80 and/or 100).
pub fn crossed(before: u64, after: u64, limit: u64) -> impl Iterator<Item = u8> {
    [80_u8, 100].into_iter().filter(move |p| {
        let line = limit.saturating_mul(u64::from(*p)).div_ceil(100);
        limit > 0 && before < line && after >= line
    })
}

#[derive(Debug)]
struct Bandwidth {
    /// Bytes counted on this node, not yet added to the shared counter.
    pending: u64,
    /// The billing period `pending` belongs to: the one in which the bytes were counted.
    pending_window: (u64, u64),
    /// The shared total of `window`, as of the last flush that added to it.
    used: u64,
    limit: u64,
    window: (u64, u64),
    anchor: Option<u64>,
    on_quota: OnQuota,
}

/// How long a billing period's bandwidth counter lives after the period's end (kept for the
/// record; bytes of that period can be added until then).
const BANDWIDTH_KEPT_MS: u64 = 7 * 86_400_000;

/// An amount of one quota (requests or bytes) for one tenant and window, to add to the
/// window's shared counter.
#[derive(Debug)]
struct Count {
    tenant: TenantId,
    /// The window (minute or billing period) the amount was counted in.
    window: (u64, u64),
    amount: u64,
    /// The plan's limit for the window, and its `on_quota`, for the notices.
    limit: u64,
    on_quota: OnQuota,
}

/// Until when (unix ms) the shared counter of `quota`'s `window` lives: an amount counted in
/// it can be added until then.
fn counter_lives_until(quota: QuotaKind, window: (u64, u64)) -> u64 {
    match quota {
        QuotaKind::BandwidthMonth => window.1 + BANDWIDTH_KEPT_MS,
        QuotaKind::RequestsPerMinute | QuotaKind::TokensPerMinute => window.0 + COUNTER_LIFE_MS,
    }
}

/// The expiry an addition gives the shared counter of `quota`'s `window` when it creates it.
fn counter_ttl(quota: QuotaKind, window: (u64, u64), now: u64) -> Duration {
    Duration::from_millis(match quota {
        // Kept a week past the period's end, for the record.
        QuotaKind::BandwidthMonth => window.1.saturating_sub(now) + BANDWIDTH_KEPT_MS,
        QuotaKind::RequestsPerMinute | QuotaKind::TokensPerMinute => COUNTER_LIFE_MS,
    })
}

/// Puts `c` on a list of counts waiting for a later flush.
fn set_aside(list: &Mutex<Vec<Count>>, c: Count) {
    list.lock().unwrap_or_else(|p| p.into_inner()).push(c);
}

/// Takes the counts waiting on `list` whose counters still live; the others are dropped, with
/// a warning.
fn take_live(list: &Mutex<Vec<Count>>, quota: QuotaKind, now: u64) -> Vec<Count> {
    let mut counts = std::mem::take(&mut *list.lock().unwrap_or_else(|p| p.into_inner()));
    counts.retain(|c| {
        let live = counter_lives_until(quota, c.window) > now;
        if !live {
            tracing::warn!(tenant = %c.tenant, quota = quota.as_str(), amount = c.amount, window_start = c.window.0, "a count whose counter has expired was dropped");
        }
        live
    });
    counts
}

/// A tenant's requests counted against its plan's `requests_per_minute`, waiting for the next
/// flush.
#[derive(Debug)]
struct Requests {
    /// Start of the minute `pending` belongs to.
    minute: u64,
    pending: u64,
    limit: u64,
    on_quota: OnQuota,
}

/// Quota accounting shared by the workers: pending bandwidth per tenant, this node's view of
/// the shared totals, and the event sink.
#[derive(Default)]
pub struct Quotas {
    bandwidth: Mutex<FastMap<TenantId, Bandwidth>>,
    /// Requests allowed under a plan's request rate, per tenant, not yet added to the shared
    /// counter of their minute.
    requests: Mutex<FastMap<TenantId, Requests>>,
    /// Request counts of earlier minutes not added yet: a minute that turned before a flush
    /// took its count, or an addition Redis was not reached for. The next flush adds them
    /// while their minute's counter lives.
    requests_unsent: Mutex<Vec<Count>>,
    /// Bandwidth of earlier billing periods not added yet: bytes counted before a period
    /// turned and not flushed by then, or an addition Redis was not reached for. Each goes to
    /// its own period's counter, not to the period current when it is flushed.
    bandwidth_unsent: Mutex<Vec<Count>>,
    sink: OnceLock<QuotaSink>,
}

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quotas").finish_non_exhaustive()
    }
}

impl Quotas {
    fn lock(&self) -> std::sync::MutexGuard<'_, FastMap<TenantId, Bandwidth>> {
        self.bandwidth.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets where quota events go (once).
    pub fn set_sink(&self, sink: QuotaSink) {
        let _ = self.sink.set(sink);
    }

    /// Reports an event to the sink, the metrics and the log.
    pub fn emit(&self, metrics: &crate::metrics::MetricsRegistry, e: QuotaEvent) {
        let i = match e.quota {
            QuotaKind::TokensPerMinute => 0,
            QuotaKind::BandwidthMonth => 2,
            QuotaKind::RequestsPerMinute => 4,
        } + usize::from(e.percent == 100);
        metrics.global.quota_events[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            tenant = %e.tenant,
            quota = e.quota.as_str(),
            percent = e.percent,
            used = e.used,
            limit = e.limit,
            on_quota = e.on_quota.as_str(),
            "quota threshold reached"
        );
        if let Some(s) = self.sink.get() {
            s(e);
        }
    }

    /// Whether the tenant's bandwidth for the current billing period is spent (this node's
    /// view, at most a flush interval old): the period and the time now, if so. The clock is
    /// read only for a tenant at its limit; the period is the one its last flush recorded.
    pub fn bandwidth_spent(&self, tenant: &TenantId, a: &Admission) -> Option<((u64, u64), u64)> {
        let limit = a.bandwidth_bytes?;
        let window = {
            let map = self.lock();
            let b = map.get(tenant).filter(|b| b.used >= limit)?;
            b.window
        };
        let now = unix_ms();
        (window.0 <= now && now < window.1).then_some((window, now))
    }

    /// Adds a finished request's bytes to its tenant's pending bandwidth, in the billing period
    /// of now (bytes still pending from a period that has ended are set aside for that
    /// period's counter).
    pub fn add_bandwidth(&self, tenant: &TenantId, anchor: Option<u64>, a: &Admission, bytes: u64) {
        let Some(limit) = a.bandwidth_bytes else {
            return;
        };
        if bytes == 0 {
            return;
        }
        let now = unix_ms();
        let mut map = self.lock();
        match map.get_mut(tenant) {
            Some(b) => {
                let (start, end) = b.pending_window;
                if !(start <= now && now < end) || b.anchor != anchor {
                    if b.pending > 0 {
                        let earlier = Count {
                            tenant: tenant.clone(),
                            window: b.pending_window,
                            amount: std::mem::take(&mut b.pending),
                            limit: b.limit,
                            on_quota: b.on_quota,
                        };
                        set_aside(&self.bandwidth_unsent, earlier);
                    }
                    b.pending_window = billing_period(anchor, now);
                }
                b.pending += bytes;
                b.limit = limit;
                b.anchor = anchor;
                b.on_quota = a.on_quota;
            }
            None => {
                let window = billing_period(anchor, now);
                map.insert(
                    tenant.clone(),
                    Bandwidth {
                        pending: bytes,
                        pending_window: window,
                        used: 0,
                        limit,
                        window,
                        anchor,
                        on_quota: a.on_quota,
                    },
                );
            }
        }
    }

    /// Pushes pending bandwidth and request counts to the counters (one addition per tenant
    /// and period with traffic) and refreshes this node's view of the bandwidth totals. Runs
    /// every second.
    pub async fn flush(&self, limiter: &Limiter, metrics: &crate::metrics::MetricsRegistry) {
        self.flush_requests(limiter, metrics).await;
        let now = unix_ms();
        let bw = QuotaKind::BandwidthMonth;
        let batch = {
            let mut batch = take_live(&self.bandwidth_unsent, bw, now);
            let mut map = self.lock();
            // Tenants idle for a whole period are forgotten.
            map.retain(|_, b| b.pending > 0 || b.window.1 > now);
            for (t, b) in map.iter_mut() {
                if b.pending > 0 {
                    batch.push(Count {
                        tenant: t.clone(),
                        window: b.pending_window,
                        amount: std::mem::take(&mut b.pending),
                        limit: b.limit,
                        on_quota: b.on_quota,
                    });
                }
            }
            batch
        };
        let added = self
            .add_counts(limiter, metrics, bw, &self.bandwidth_unsent, batch, now)
            .await;
        let mut map = self.lock();
        for (tenant, window, total) in added {
            // The node's view follows the latest period (a late addition to an ended one
            // does not take it back).
            if let Some(b) = map.get_mut(&tenant)
                && window.0 >= b.window.0
            {
                b.used = total;
                b.window = window;
            }
        }
    }

    /// Adds each count to its window's shared counter of `quota` and reports the thresholds
    /// the addition crossed. A count Redis was not reached for goes back on `unsent` (merged
    /// per tenant and window) for a later flush, instead of starting a per-node total the
    /// shared one would never see; one Redis received without confirming is logged and not
    /// sent again (it may have been added: never twice). Gives back each added count's tenant,
    /// window and new total.
    async fn add_counts(
        &self,
        limiter: &Limiter,
        metrics: &crate::metrics::MetricsRegistry,
        quota: QuotaKind,
        unsent: &Mutex<Vec<Count>>,
        batch: Vec<Count>,
        now: u64,
    ) -> Vec<(TenantId, (u64, u64), u64)> {
        let mut added = Vec::with_capacity(batch.len());
        let mut waiting: Vec<Count> = Vec::new();
        for c in batch {
            let key = quota_key(&c.tenant, quota, c.window.0);
            let ttl = counter_ttl(quota, c.window, now);
            match limiter.add_shared(&key, c.amount, ttl).await {
                Ok(total) => {
                    self.report_crossed(
                        metrics,
                        c.amount,
                        QuotaEvent {
                            tenant: c.tenant.clone(),
                            quota,
                            percent: 0,
                            used: total,
                            limit: c.limit,
                            window: c.window,
                            on_quota: c.on_quota,
                        },
                    );
                    added.push((c.tenant, c.window, total));
                }
                Err(SharedAddError::NotSent) => {
                    match waiting
                        .iter_mut()
                        .find(|w| w.tenant == c.tenant && w.window == c.window)
                    {
                        Some(w) => w.amount += c.amount,
                        None => waiting.push(c),
                    }
                }
                Err(SharedAddError::Unknown) => {
                    tracing::warn!(tenant = %c.tenant, quota = quota.as_str(), amount = c.amount, "quota addition unconfirmed by redis; not resent");
                }
            }
        }
        if !waiting.is_empty() {
            unsent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(waiting);
        }
        added
    }

    /// Adds an LLM response's tokens to the tenant's counter of the current minute and
    /// reports a crossed threshold.
    pub async fn add_tokens(
        &self,
        limiter: &Limiter,
        metrics: &crate::metrics::MetricsRegistry,
        tenant: &TenantId,
        a: &Admission,
        tokens: u64,
    ) {
        let Some(limit) = a.tokens_per_minute else {
            return;
        };
        if tokens == 0 {
            return;
        }
        let now = unix_ms();
        let window = minute_window(now);
        let key = quota_key(tenant, QuotaKind::TokensPerMinute, window.0);
        let ttl = counter_ttl(QuotaKind::TokensPerMinute, window, now);
        let total = limiter.add(&key, tokens, ttl).await;
        self.report_crossed(
            metrics,
            tokens,
            QuotaEvent {
                tenant: tenant.clone(),
                quota: QuotaKind::TokensPerMinute,
                percent: 0,
                used: total,
                limit,
                window,
                on_quota: a.on_quota,
            },
        );
    }

    /// Reports each threshold (80, 100) that adding `added` crossed: `e`, whose `used` is the
    /// total after the addition, with that `percent`.
    fn report_crossed(&self, metrics: &crate::metrics::MetricsRegistry, added: u64, e: QuotaEvent) {
        for percent in crossed(e.used.saturating_sub(added), e.used, e.limit) {
            self.emit(
                metrics,
                QuotaEvent {
                    percent,
                    ..e.clone()
                },
            );
        }
    }

    /// Counts a request allowed under the plan's request rate (`limit` a minute) into the
    /// tenant's current minute. The next [`Quotas::flush`] adds it to the minute's shared
    /// counter, and reports 80% and 100% of the limit as the total crosses them.
    pub fn count_request(&self, tenant: &TenantId, a: &Admission, limit: u64) {
        let minute = minute_window(unix_ms()).0;
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = map.get_mut(tenant) {
            if r.minute != minute {
                if r.pending > 0 {
                    // The minute turned before a flush took its count.
                    let earlier = Count {
                        tenant: tenant.clone(),
                        window: minute_window(r.minute),
                        amount: r.pending,
                        limit: r.limit,
                        on_quota: r.on_quota,
                    };
                    set_aside(&self.requests_unsent, earlier);
                }
                r.minute = minute;
                r.pending = 0;
            }
            r.pending += 1;
            r.limit = limit;
            r.on_quota = a.on_quota;
            return;
        }
        map.insert(
            tenant.clone(),
            Requests {
                minute,
                pending: 1,
                limit,
                on_quota: a.on_quota,
            },
        );
    }

    /// Adds the counted requests to their minutes' counters (`tn:q:<tenant>:rpm:<minute>`,
    /// one addition per tenant and minute) and reports the thresholds crossed. Every node adds
    /// its own count, so the addition that crosses a threshold is made by exactly one node,
    /// which reports it: once per minute for the cluster. While Redis is unavailable the
    /// counts are kept and added when it is back (if their minute's counter still lives),
    /// never judged on this node's share alone.
    async fn flush_requests(&self, limiter: &Limiter, metrics: &crate::metrics::MetricsRegistry) {
        let now = unix_ms();
        let rpm = QuotaKind::RequestsPerMinute;
        let batch = {
            let mut batch = take_live(&self.requests_unsent, rpm, now);
            let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            // Tenants without a request for two minutes are forgotten.
            map.retain(|_, r| r.pending > 0 || r.minute + 120_000 > now);
            for (t, r) in map.iter_mut() {
                if r.pending > 0 {
                    batch.push(Count {
                        tenant: t.clone(),
                        window: minute_window(r.minute),
                        amount: std::mem::take(&mut r.pending),
                        limit: r.limit,
                        on_quota: r.on_quota,
                    });
                }
            }
            batch
        };
        self.add_counts(limiter, metrics, rpm, &self.requests_unsent, batch, now)
            .await;
    }

    /// Bytes counted on this node for the tenant in the current billing period but not yet
    /// flushed to the counters.
    pub fn pending_bandwidth(&self, tenant: &TenantId) -> u64 {
        let now = unix_ms();
        let current = |w: (u64, u64)| w.0 <= now && now < w.1;
        // The map, then the unsent list: the order `add_bandwidth` takes them in.
        let map = self.lock();
        let pending = map
            .get(tenant)
            .filter(|b| current(b.pending_window))
            .map_or(0, |b| b.pending);
        let held: u64 = self
            .bandwidth_unsent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|c| c.tenant == *tenant && current(c.window))
            .map(|c| c.amount)
            .sum();
        pending + held
    }

    /// Tokens the tenant used in the current minute, and the minute.
    pub async fn tokens_used(&self, limiter: &Limiter, tenant: &TenantId) -> (u64, (u64, u64)) {
        let window = minute_window(unix_ms());
        let key = quota_key(tenant, QuotaKind::TokensPerMinute, window.0);
        (limiter.get(&key).await, window)
    }
}

/// One quota's state, for the usage report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaState {
    /// Which quota.
    pub quota: QuotaKind,
    /// Used in the window (tokens or bytes).
    pub used: u64,
    /// The quota in the same unit (`None`: unlimited).
    pub limit: Option<u64>,
    /// Window start and end, unix ms.
    pub window: (u64, u64),
}

/// A tenant's quota usage now: tokens this minute and bytes this billing period, read from
/// the shared counters (plus this node's unflushed bytes).
pub async fn usage(limiter: &Limiter, quotas: &Quotas, tenant: &Tenant) -> Vec<QuotaState> {
    let now = unix_ms();
    let limits = tenant.limits.as_deref();
    let tokens_window = minute_window(now);
    let tokens = limiter
        .get(&quota_key(
            &tenant.id,
            QuotaKind::TokensPerMinute,
            tokens_window.0,
        ))
        .await;
    let period = billing_period(
        crate::table::counted_anchor_ms(tenant.billing_anchor_ms),
        now,
    );
    let bytes = limiter
        .get(&quota_key(&tenant.id, QuotaKind::BandwidthMonth, period.0))
        .await
        + quotas.pending_bandwidth(&tenant.id);
    vec![
        QuotaState {
            quota: QuotaKind::TokensPerMinute,
            used: tokens,
            limit: limits.and_then(|l| l.tokens_per_minute),
            window: tokens_window,
        },
        QuotaState {
            quota: QuotaKind::BandwidthMonth,
            used: bytes,
            limit: limits
                .and_then(|l| l.bandwidth_gb_month)
                .map(|gb| gb.saturating_mul(1_000_000_000)),
            window: period,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quotas whose events land in the returned list.
    fn recorded() -> (Quotas, Arc<Mutex<Vec<QuotaEvent>>>) {
        let quotas = Quotas::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        quotas.set_sink(Arc::new(move |e: QuotaEvent| sink.lock().unwrap().push(e)));
        (quotas, seen)
    }

    /// The events recorded so far, as `f` shows them (the list is emptied).
    fn taken<T>(seen: &Mutex<Vec<QuotaEvent>>, f: impl Fn(&QuotaEvent) -> T) -> Vec<T> {
        std::mem::take(&mut *seen.lock().unwrap())
            .iter()
            .map(f)
            .collect()
    }

    /// A Redis limiter whose server never answers (nothing listens on port 1): every shared
    /// addition is `NotSent`.
    fn unreachable_redis() -> Limiter {
        Limiter::redis(tenantry_limits::RedisOptions {
            timeout: Duration::from_millis(50),
            ..tenantry_limits::RedisOptions::new("redis://127.0.0.1:1")
        })
        .unwrap()
    }

    /// An HTTP route's admission with only a bandwidth quota (or none) and `on_quota`.
    fn quota_admission(bandwidth_bytes: Option<u64>, on_quota: OnQuota) -> Admission {
        Admission {
            rate: None,
            kind: RouteKind::Http,
            tokens_per_minute: None,
            bandwidth_bytes,
            on_quota,
            policy: None,
        }
    }

    /// Bandwidth crosses 80% and then 100% of its billing period once each, at the flushes
    /// that cross them, and the check then reports the period spent.
    #[tokio::test]
    async fn bandwidth_notices_at_80_and_100_percent() {
        let limiter = Limiter::local();
        let metrics = crate::metrics::MetricsRegistry::new(4);
        let (quotas, seen) = recorded();
        let tenant = TenantId::parse("bw-notices").unwrap();
        let a = quota_admission(Some(1000), OnQuota::Block);
        let bw = QuotaKind::BandwidthMonth;
        for (bytes, want) in [
            (700, vec![]),
            (150, vec![(bw, 80, 850, 1000)]),
            (100, vec![]),
            (60, vec![(bw, 100, 1010, 1000)]),
            (500, vec![]),
        ] {
            assert!(quotas.bandwidth_spent(&tenant, &a).is_none() || bytes == 500);
            quotas.add_bandwidth(&tenant, None, &a, bytes);
            quotas.flush(&limiter, &metrics).await;
            assert_eq!(
                taken(&seen, |e| (e.quota, e.percent, e.used, e.limit)),
                want,
                "after {bytes}"
            );
        }
        let (window, now) = quotas.bandwidth_spent(&tenant, &a).expect("spent");
        assert!(window.0 <= now && now < window.1);
        assert!(quota_reached(a.on_quota, bw, window, now).is_err());
    }

    /// Bytes go to the billing period they were used in: those counted before the period
    /// ended, whether still pending or held while Redis was unavailable, are added to the old
    /// period's counter by the flush after the turn; bytes counted after go to the new one.
    #[tokio::test]
    async fn bandwidth_is_billed_to_the_period_it_was_used_in() {
        let down = unreachable_redis();
        let up = Limiter::local();
        let metrics = crate::metrics::MetricsRegistry::new(4);
        let (quotas, _seen) = recorded();
        let tenant = TenantId::parse("bw-periods").unwrap();
        let a = quota_admission(Some(100), OnQuota::Log);
        // A subscription whose current period ends 1.5 s from now.
        let anchor = unix_ms() + 1_500;
        let old = billing_period(Some(anchor), unix_ms());
        assert_eq!(old.1, anchor);
        quotas.add_bandwidth(&tenant, Some(anchor), &a, 100);
        quotas.flush(&down, &metrics).await;
        quotas.add_bandwidth(&tenant, Some(anchor), &a, 20);
        // Held through the outage or pending, both are this period's usage.
        assert_eq!(quotas.pending_bandwidth(&tenant), 120);
        tokio::time::sleep(Duration::from_millis(
            (anchor + 100).saturating_sub(unix_ms()),
        ))
        .await;
        assert_eq!(
            quotas.pending_bandwidth(&tenant),
            0,
            "of the period that ended"
        );
        quotas.add_bandwidth(&tenant, Some(anchor), &a, 7);
        assert_eq!(quotas.pending_bandwidth(&tenant), 7);
        quotas.flush(&up, &metrics).await;
        let new = billing_period(Some(anchor), unix_ms());
        assert_eq!(new.0, anchor);
        let bw = QuotaKind::BandwidthMonth;
        assert_eq!(up.get(&quota_key(&tenant, bw, old.0)).await, 120);
        assert_eq!(up.get(&quota_key(&tenant, bw, new.0)).await, 7);
        // The node's view is the new period's: the old one's 120 bytes (over the 100-byte
        // quota) do not make it spent.
        assert!(quotas.bandwidth_spent(&tenant, &a).is_none());
        quotas.add_bandwidth(&tenant, Some(anchor), &a, 1);
        quotas.flush(&up, &metrics).await;
        assert_eq!(up.get(&quota_key(&tenant, bw, new.0)).await, 8);
        assert_eq!(up.get(&quota_key(&tenant, bw, old.0)).await, 120);
    }

    /// While Redis is unavailable, request counts and bandwidth wait for it instead of being
    /// added to a per-node counter (which the shared total would never see and whose
    /// thresholds each node would report on its own): when it is back, they are added and the
    /// thresholds crossed are reported once.
    #[tokio::test]
    async fn counts_wait_for_redis_instead_of_splitting_the_total() {
        let down = unreachable_redis();
        let up = Limiter::local();
        let metrics = crate::metrics::MetricsRegistry::new(4);
        let (quotas, seen) = recorded();
        let tenant = TenantId::parse("waits-for-redis").unwrap();
        let a = quota_admission(Some(1000), OnQuota::Notify);
        if minute_window(unix_ms()).1 - unix_ms() < 2_000 {
            tokio::time::sleep(Duration::from_millis(2_100)).await;
        }
        let minute = minute_window(unix_ms()).0;
        for _ in 0..90 {
            quotas.count_request(&tenant, &a, 100);
        }
        quotas.add_bandwidth(&tenant, None, &a, 900);
        for _ in 0..3 {
            quotas.flush(&down, &metrics).await;
            assert!(
                seen.lock().unwrap().is_empty(),
                "judged on this node's count"
            );
            assert_eq!(down.local_len(), 0, "counted in process");
        }
        quotas.count_request(&tenant, &a, 100);
        quotas.flush(&up, &metrics).await;
        let mut got = taken(&seen, |e| (e.quota, e.percent, e.used));
        got.sort_by_key(|e| e.0.as_str());
        assert_eq!(
            got,
            vec![
                (QuotaKind::BandwidthMonth, 80, 900),
                (QuotaKind::RequestsPerMinute, 80, 90),
            ]
        );
        let rpm = quota_key(&tenant, QuotaKind::RequestsPerMinute, minute);
        assert_eq!(up.get(&rpm).await, 91);
    }

    /// The plan's request rate: 80% and 100% of a minute's requests are reported once each, by
    /// the flush whose addition crosses them, whoever else adds to the same minute's counter
    /// (another node); a new minute starts from zero.
    #[tokio::test]
    async fn request_notices_at_80_and_100_percent_of_the_minute() {
        let limiter = Limiter::local();
        let metrics = crate::metrics::MetricsRegistry::new(4);
        let (quotas, seen) = recorded();
        let tenant = TenantId::parse("rpm-notices").unwrap();
        let a = quota_admission(None, OnQuota::Notify);
        let rpm = QuotaKind::RequestsPerMinute;
        let minute = minute_window(unix_ms());
        // Stay inside one minute (the test takes milliseconds).
        if minute.1 - unix_ms() < 1_000 {
            tokio::time::sleep(Duration::from_millis(1_100)).await;
        }
        let minute = minute_window(unix_ms());
        let key = quota_key(&tenant, rpm, minute.0);
        for (requests, other_node, want) in [
            (70, 0, vec![]),
            (5, 0, vec![]),
            // Another node's 10 bring the total to 85 before this node's 1: 86 crosses nothing.
            (1, 10, vec![]),
            (0, 0, vec![]),
            (14, 0, vec![(rpm, 100, 100, 100, minute)]),
            (50, 0, vec![]),
        ] {
            limiter
                .add(&key, other_node, Duration::from_secs(120))
                .await;
            for _ in 0..requests {
                quotas.count_request(&tenant, &a, 100);
            }
            quotas.flush(&limiter, &metrics).await;
            assert_eq!(
                taken(&seen, |e| (e.quota, e.percent, e.used, e.limit, e.window)),
                want,
                "after {requests} more"
            );
        }
        // 80% was crossed by the other node's addition, which reports it there; 86 → 100 is
        // this node's.
        let (fresh, seen) = recorded();
        let other = TenantId::parse("rpm-notices-2").unwrap();
        for _ in 0..80 {
            fresh.count_request(&other, &a, 100);
        }
        fresh.flush(&limiter, &metrics).await;
        let got = taken(&seen, |e| (e.percent, e.used));
        assert_eq!(got, [(80, 80)]);
        // Counts of a minute that ended before the flush go to that minute's counter.
        {
            let mut r = fresh.requests.lock().unwrap();
            let e = r.get_mut(&other).unwrap();
            e.minute -= 60_000;
            e.pending = 5;
        }
        fresh.count_request(&other, &a, 100);
        fresh.flush(&limiter, &metrics).await;
        let earlier = quota_key(&other, rpm, minute.0 - 60_000);
        assert_eq!(limiter.get(&earlier).await, 5);
        assert_eq!(limiter.get(&quota_key(&other, rpm, minute.0)).await, 81);
    }

    #[test]
    fn number_values_from_the_table_and_beyond_it() {
        for n in [0, 1, 9, 10, 99, 100, 4095, 4096, 4097, 1_000_000, u64::MAX] {
            assert_eq!(number_value(n).to_str().unwrap(), n.to_string(), "{n}");
        }
    }

    #[test]
    fn the_policy_value_follows_the_rate() {
        let a = (100, 60, 10);
        let b = (5, 1, 1);
        for _ in 0..2 {
            assert_eq!(policy_value(a).unwrap(), "100;w=60;burst=10");
            assert_eq!(policy_value(a).unwrap(), "100;w=60;burst=10");
            assert_eq!(policy_value(b).unwrap(), "5;w=1;burst=1");
        }
    }

    /// The head's lines written straight out are the fields the map would get, in order;
    /// they replace the upstream's fields of those names (and `Retry-After` only on a
    /// refusal).
    #[test]
    fn rate_fields_written_out_match_the_map() {
        let decision = |allowed: bool, remaining: u64, retry_ms: u64, reset_ms: u64| Decision {
            allowed,
            limit: 100,
            remaining,
            retry_after: Duration::from_millis(retry_ms),
            reset_after: Duration::from_millis(reset_ms),
            source: tenantry_limits::Source::Local,
        };
        let cases = [
            (
                decision(true, 7, 0, 1_500),
                Rate::new(100, Duration::from_secs(60), 10),
            ),
            // A period under a second is announced as one second; large numbers.
            (
                decision(true, 123_456_789, 0, 0),
                Rate::new(100_000_000, Duration::from_millis(500), 1_000_000),
            ),
            (
                decision(false, 0, 2_001, 59_000),
                Rate::new(5, Duration::from_secs(1), 1),
            ),
            (
                decision(false, 0, 1, 1),
                Rate::new(0, Duration::from_secs(60), 0),
            ),
        ];
        for (d, rate) in cases {
            let fields = RateFields::of(&d, &rate);
            let mut map = HeaderMap::new();
            fields.insert_into(&mut map);
            let mut want = Vec::new();
            for (name, value) in &map {
                want.extend_from_slice(name.as_str().as_bytes());
                want.extend_from_slice(b": ");
                want.extend_from_slice(value.as_bytes());
                want.extend_from_slice(b"\r\n");
            }
            let mut got = Vec::new();
            fields.write_h1(&mut got);
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
                "{d:?} {rate:?}"
            );
            for name in map.keys() {
                assert!(
                    fields.replaces(name.as_str().to_uppercase().as_bytes()),
                    "{name}"
                );
            }
            assert_eq!(fields.replaces(b"Retry-After"), !d.allowed);
            for other in [
                &b"ratelimit"[..],
                b"x-ratelimit-limit",
                b"content-type",
                b"",
            ] {
                assert!(!fields.replaces(other));
            }
        }
        // A period under a second is announced as one second.
        let mut got = Vec::new();
        RateFields::of(
            &decision(true, 1, 0, 0),
            &Rate::new(3, Duration::from_millis(500), 2),
        )
        .write_h1(&mut got);
        let got = String::from_utf8_lossy(&got);
        assert!(got.contains("ratelimit-policy: 3;w=1;burst=2\r\n"), "{got}");
    }

    #[test]
    fn rules_are_shared_between_tenants_and_keys_are_per_tenant() {
        let a = intern(Admission {
            rate: Some(RateRule::new(600, Some(100), RateLimitKey::Tenant)),
            kind: RouteKind::Http,
            tokens_per_minute: None,
            bandwidth_bytes: Some(10),
            on_quota: OnQuota::Throttle,
            policy: None,
        });
        let b = intern((*a).clone());
        assert!(Arc::ptr_eq(&a, &b));
        let rule = a.rate.as_ref().unwrap();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let (t1, t2) = (
            TenantId::parse("t1").unwrap(),
            TenantId::parse("t2").unwrap(),
        );
        let r = RouteId::parse("web").unwrap();
        let h = HeaderMap::new();
        assert_eq!(rule.key_for(&t1, &r, ip, &h), "tn:rl:t1:*:tenant:600/100");
        assert_eq!(rule.key_for(&t2, &r, ip, &h), "tn:rl:t2:*:tenant:600/100");
        // A route's own tenant-wide rule shares the plan's bucket only at the same rate.
        let other = RouteId::parse("api").unwrap();
        let same = RateRule::new(600, Some(100), RateLimitKey::Tenant);
        assert_eq!(
            same.key_for(&t1, &other, ip, &h),
            rule.key_for(&t1, &r, ip, &h)
        );
        let stricter = RateRule::new(60, Some(100), RateLimitKey::Tenant);
        assert_eq!(
            stricter.key_for(&t1, &other, ip, &h),
            "tn:rl:t1:*:tenant:60/100"
        );
        let by_key = RateRule::new(60, None, RateLimitKey::ApiKey);
        assert_eq!(by_key.key_for(&t1, &r, ip, &h), "tn:rl:t1:web:ip:10.0.0.1");
        let mut h = HeaderMap::new();
        h.insert(X_API_KEY.clone(), HeaderValue::from_static("tn_secret"));
        let k = by_key.key_for(&t1, &r, ip, &h);
        assert!(
            k.starts_with("tn:rl:t1:web:key:") && k.len() == 33 && !k.contains("secret"),
            "{k}"
        );
        let digest: String = Sha256::digest(b"tn_secret")[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(k, format!("tn:rl:t1:web:key:{digest}"));
        let by_route = RateRule::new(60, None, RateLimitKey::Route);
        assert_eq!(by_route.key_for(&t1, &r, ip, &h), "tn:rl:t1:web:route");
        let by_ip = RateRule::new(60, None, RateLimitKey::ClientIp);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            by_ip.key_for(&t1, &r, v6, &h),
            "tn:rl:t1:web:ip:2001:db8::1"
        );
    }

    #[test]
    fn thresholds_are_crossed_once() {
        assert_eq!(crossed(0, 79, 100).collect::<Vec<_>>(), Vec::<u8>::new());
        assert_eq!(crossed(79, 80, 100).collect::<Vec<_>>(), vec![80]);
        assert_eq!(crossed(80, 99, 100).collect::<Vec<_>>(), Vec::<u8>::new());
        assert_eq!(crossed(50, 150, 100).collect::<Vec<_>>(), vec![80, 100]);
        assert_eq!(crossed(100, 200, 100).collect::<Vec<_>>(), Vec::<u8>::new());
        assert_eq!(crossed(0, 10, 0).collect::<Vec<_>>(), Vec::<u8>::new());
    }

    #[test]
    fn api_keys_are_read_from_either_header() {
        let mut h = HeaderMap::new();
        assert_eq!(api_key(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer  tn_abc "),
        );
        assert_eq!(api_key(&h), Some(&b"tn_abc"[..]));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert_eq!(api_key(&h), None);
        h.insert(X_API_KEY.clone(), HeaderValue::from_static("k1"));
        assert_eq!(api_key(&h), Some(&b"k1"[..]));
    }

    #[test]
    fn quota_refusals_follow_on_quota() {
        let w = (60_000, 120_000);
        assert!(quota_reached(OnQuota::Log, QuotaKind::TokensPerMinute, w, 70_000).is_ok());
        assert!(quota_reached(OnQuota::Notify, QuotaKind::TokensPerMinute, w, 70_000).is_ok());
        let t =
            quota_reached(OnQuota::Throttle, QuotaKind::TokensPerMinute, w, 70_000).unwrap_err();
        assert_eq!(t.code, ErrorCode::QuotaThrottled);
        assert_eq!(t.retry_after, Some(50));
        assert!(t.extra.contains("\"quota\":\"tokens_per_minute\""));
        let b = quota_reached(OnQuota::Block, QuotaKind::BandwidthMonth, w, 70_000).unwrap_err();
        assert_eq!(b.code, ErrorCode::QuotaExceeded);
        assert_eq!(b.retry_after, None);
        assert!(b.extra.contains("\"resets_at\":120"), "{}", b.extra);
    }
}
