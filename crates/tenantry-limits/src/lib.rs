//! Rate limiters and quota counters for Tenantry's multi-tenant gateway.
//!
//! One type, [`Limiter`], with two backends:
//!
//! - **Local** ([`Limiter::local`]): in-process state for a single node. Decisions are
//!   synchronous under the hood (a sharded `Mutex<HashMap>`, no allocation for a known key,
//!   well under a microsecond), time comes from a monotonic clock ([`std::time::Instant`]).
//! - **Redis** ([`Limiter::redis`]): the counters live in Redis and are shared by every gateway
//!   node, so a limit holds for the sum of all nodes. Every decision is taken by a
//!   Lua script (one round trip, atomic): the script reads the shared state, decides, and
//!   writes only when the request is allowed (rejected requests are not counted), setting the
//!   key's expiry in the same call (never `INCR` then `EXPIRE`). Time is the Redis server's
//!   `TIME`, read inside the script, so clock skew between gateway nodes does not matter.
//!   Nothing that could admit a request is cached locally: every request that may be allowed
//!   reads the shared counter (see "Refusals are remembered" below for the one thing a node
//!   keeps). On a worker's
//!   single-threaded runtime, decisions asked for at the same time share one call of the script
//!   with several keys (`batch.rs`), each still decided atomically and in order. Scripts may
//!   therefore touch several keys: the connection is to one Redis server (a primary, or a
//!   proxy in front of one), not to a Redis Cluster.
//!
//! # Rate limiting: GCRA
//!
//! A [`Rate`] is `per_period` requests per `period`, with bursts of up to `burst` requests. It
//! is enforced with the generic cell rate algorithm (equivalent to a token bucket of capacity
//! `burst` refilled at `per_period / period`), which stores one number per key, the
//! *theoretical arrival time* (TAT):
//!
//! ```text
//! T    = period / per_period            (emission interval)
//! tau  = T * burst                      (tolerance; burst 0 counts as 1)
//! tat  = max(stored_tat, now)
//! new  = tat + T
//! allowed      iff new - now <= tau     -> store new, expiring after new - now
//! remaining    = floor((tau - (new - now)) / T)          when allowed, else 0
//! reset_after  = new - now  (allowed)   | tat - now (rejected)   time until the bucket is full
//! retry_after  = 0          (allowed)   | new - tau - now        time until one request fits
//! ```
//!
//! The local backend computes in nanoseconds, the Lua script in integer microseconds (Redis
//! `TIME` gives seconds and microseconds; every number stays below 2^53). `T` is at least one
//! unit, so rates above one per nanosecond (local) or per microsecond (Redis) saturate there.
//! A `per_period` of 0 denies everything (see [`Limiter::check`]).
//!
//! # Refusals are remembered
//!
//! When the shared counter refuses a key, the node remembers the refusal until its
//! `retry_after`, and refuses that key with the same rate again without calling Redis until
//! then ([`Limiter::cached_denials`] counts these). This is exact, not an approximation: a
//! key's stored TAT only grows while it lives (other nodes' allowed requests push it later,
//! refusals write nothing, and it expires only when the bucket is full, after the refusal has
//! lapsed), so Redis itself would refuse every one of those requests. The memory is counted
//! from when the decision was asked for, which is no later than when Redis took it, so it
//! lapses no later than the refusal. A different rate for the key (a plan change) is not
//! covered by the memory and goes to Redis. What it buys: a tenant flooding far over its
//! limit costs Redis about one call per `retry_after` per node instead of one per request,
//! so the shared Redis, and the other tenants' decisions queued behind the flood's, stay
//! unloaded. (A Redis that loses its data, e.g. a restart without persistence, admits again
//! at once; the nodes then refuse for at most the remembered `retry_after`.)
//!
//! # Quotas: fixed-window counters
//!
//! [`Limiter::add`] / [`Limiter::get`] are plain counters that expire a fixed time after they
//! are created; callers put the window id in the key (e.g. the day or the month), so a new
//! window is a new key. In Redis, `add` is one script: `INCRBY`, then `PEXPIRE` only when the
//! key has no expiry yet (it was just created).
//!
//! # Keys
//!
//! Key layout is the caller's: this crate uses the key as given, as the Redis key and as the
//! local map key. The gateway uses `tn:rl:<tenant>:<route>:<key>` for rates and
//! `tn:q:<tenant>:...:<window>` for quotas.
//!
//! # When Redis fails
//!
//! [`Limiter::redis`] never fails because Redis is down: it connects in a background task and
//! keeps retrying; once connected, the connection manager reconnects by itself. Every Redis
//! call has a timeout ([`RedisOptions::timeout`], 100 ms by default) so a hung Redis cannot
//! stall requests. A failed call (connect error, timeout, script error) is counted
//! ([`Limiter::backend_errors`]), logged at `warn` (at most once a second), and then Redis is
//! skipped for [`RedisOptions::retry_interval`] (500 ms by default); after that, exactly one
//! caller probes Redis while the others keep using the fallback. What a decision does when
//! Redis is skipped or failed is [`OnBackendError`]:
//!
//! - [`OnBackendError::Local`] (default): the in-process limiter enforces this node's share of
//!   the rate, `rate / nodes` (see [`Limiter::set_nodes`]); decisions say
//!   [`Source::FallbackLocal`].
//! - [`OnBackendError::Allow`]: allowed, [`Source::FailOpen`].
//! - [`OnBackendError::Deny`]: rejected with `retry_after` = 1 s, [`Source::FailClosed`].
//!
//! Counters ([`Limiter::add`]) fall back to the in-process counter whatever `on_error` says:
//! they never fail.

mod batch;
mod local;
mod shared;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use local::{Clock, LocalStore, Outcome, Params};
use shared::RedisBackend;

/// Name of the counter that [`Limiter::backend_errors`] is exported as.
pub const BACKEND_ERRORS_METRIC: &str = "tenantry_ratelimit_backend_errors_total";

/// A rate: `per_period` requests per `period`, up to `burst` at once (GCRA / token bucket of
/// capacity `burst`, refilled at `per_period / period`).
///
/// `per_period == 0` denies every request. `burst == 0` is treated as 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Requests allowed per `period` on average.
    pub per_period: u64,
    /// The period `per_period` refers to.
    pub period: Duration,
    /// How many requests may be made at once (the bucket's capacity).
    pub burst: u64,
}

impl Rate {
    /// `n` requests per `period`, bursts of up to `burst`.
    pub fn new(n: u64, period: Duration, burst: u64) -> Rate {
        Rate {
            per_period: n,
            period,
            burst,
        }
    }

    /// `n` requests per second, bursts of up to `burst`.
    pub fn per_second(n: u64, burst: u64) -> Rate {
        Rate::new(n, Duration::from_secs(1), burst)
    }

    /// `n` requests per minute, bursts of up to `burst`.
    pub fn per_minute(n: u64, burst: u64) -> Rate {
        Rate::new(n, Duration::from_secs(60), burst)
    }

    /// This node's share when `nodes` nodes enforce the rate without coordination:
    /// `per_period / nodes` and `burst / nodes`, each at least 1 (a `per_period` of 0 stays 0).
    pub fn node_share(self, nodes: u32) -> Rate {
        let n = u64::from(nodes.max(1));
        Rate {
            per_period: if self.per_period == 0 {
                0
            } else {
                (self.per_period / n).max(1)
            },
            period: self.period,
            burst: (self.burst / n).max(1),
        }
    }
}

/// Where a decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The in-process limiter of a [`Limiter::local`] (or a rate that denies everything).
    Local,
    /// Redis: the counter shared by all nodes.
    Shared,
    /// Redis is unavailable; the in-process limiter enforced this node's share of the rate.
    FallbackLocal,
    /// Redis is unavailable and [`OnBackendError::Allow`]: allowed without counting.
    FailOpen,
    /// Redis is unavailable and [`OnBackendError::Deny`]: rejected.
    FailClosed,
}

impl Source {
    /// A short lowercase name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Shared => "shared",
            Source::FallbackLocal => "fallback_local",
            Source::FailOpen => "fail_open",
            Source::FailClosed => "fail_closed",
        }
    }

    /// Every source, in declaration order.
    pub const ALL: [Source; 5] = [
        Source::Local,
        Source::Shared,
        Source::FallbackLocal,
        Source::FailOpen,
        Source::FailClosed,
    ];
}

/// One rate-limit decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The rate's `per_period` (for the `RateLimit-Limit` header).
    pub limit: u64,
    /// Requests that could still be made right now (after this one, if allowed).
    pub remaining: u64,
    /// Zero when allowed; otherwise the time until one request would be allowed.
    pub retry_after: Duration,
    /// Time until the bucket is full again (`RateLimit-Reset`).
    pub reset_after: Duration,
    /// Which backend decided.
    pub source: Source,
}

impl Decision {
    fn from_outcome(o: Outcome, limit: u64, unit: fn(u64) -> Duration, source: Source) -> Self {
        Decision {
            allowed: o.allowed,
            limit,
            remaining: o.remaining,
            retry_after: unit(o.retry_after),
            reset_after: unit(o.reset_after),
            source,
        }
    }

    /// The decision for a rate with `per_period == 0`.
    fn deny_all(rate: Rate) -> Self {
        Decision {
            allowed: false,
            limit: 0,
            remaining: 0,
            retry_after: rate.period.max(Duration::from_secs(1)),
            reset_after: Duration::ZERO,
            source: Source::Local,
        }
    }
}

/// What to do when Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBackendError {
    /// Enforce this node's share of the rate in process ([`Source::FallbackLocal`]).
    #[default]
    Local,
    /// Allow every request ([`Source::FailOpen`]).
    Allow,
    /// Reject every request with `retry_after` = 1 s ([`Source::FailClosed`]).
    Deny,
}

impl OnBackendError {
    /// Parses `"local"`, `"allow"` or `"deny"` (ASCII case-insensitive, surrounding
    /// whitespace ignored).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        [Self::Local, Self::Allow, Self::Deny]
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
    }

    /// `"local"`, `"allow"` or `"deny"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

impl std::fmt::Display for OnBackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settings of the Redis backend.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port[/db]` (or `unix://`).
    pub url: String,
    /// What decisions do while Redis is unavailable.
    pub on_error: OnBackendError,
    /// Per-command timeout (default 100 ms): a hung Redis must not stall requests.
    pub timeout: Duration,
    /// After a Redis error, skip Redis (use the fallback) for this long before trying again
    /// (default 500 ms). Exactly one caller probes when it elapses.
    pub retry_interval: Duration,
}

impl RedisOptions {
    /// Default timeout of one Redis call.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);
    /// Default time Redis is skipped after an error.
    pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_millis(500);

    /// Options for `url` with the defaults: [`OnBackendError::Local`], 100 ms timeout, 500 ms
    /// retry interval.
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            url: url.into(),
            on_error: OnBackendError::default(),
            timeout: Self::DEFAULT_TIMEOUT,
            retry_interval: Self::DEFAULT_RETRY_INTERVAL,
        }
    }
}

impl Default for RedisOptions {
    /// [`RedisOptions::new`] for `redis://127.0.0.1:6379`.
    fn default() -> Self {
        Self::new("redis://127.0.0.1:6379")
    }
}

/// Why [`Limiter::add_shared`] did not add to the shared counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SharedAddError {
    /// Redis was not asked (skipped after an error, not connected, connection refused): the
    /// amount was added nowhere and may be added later.
    #[error("redis was not reached; nothing was added")]
    NotSent,
    /// Redis was asked but did not confirm (a timeout, a dropped connection): the amount may
    /// or may not have been added.
    #[error("redis did not confirm the addition; it may have happened")]
    Unknown,
}

/// Errors of this crate. Decisions and counters never fail (they fall back); only creating a
/// Redis limiter can.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    /// The Redis URL could not be parsed or names an unsupported scheme.
    #[error("invalid redis url: {0}")]
    InvalidUrl(#[source] redis::RedisError),
    /// [`Limiter::redis`] was called outside a tokio runtime.
    #[error("no tokio runtime: the redis limiter must be created inside one")]
    NoRuntime,
    /// Redis answered with an error, or the connection failed.
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The first connection to Redis has not been made yet.
    #[error("redis is not connected yet")]
    NotConnected,
}

/// Shared state of a [`Limiter`].
pub(crate) struct Inner {
    pub(crate) clock: Clock,
    /// Local decisions, or the fallback of the Redis kind.
    local: LocalStore,
    nodes: AtomicU32,
    pub(crate) redis: Option<RedisBackend>,
    /// Decisions so far, by [`Source`] (indexed as [`Source::ALL`]).
    decisions: [AtomicU64; 5],
    /// Refusals answered from a remembered shared refusal, without a Redis call.
    cached_denials: AtomicU64,
}

/// The limiter: cheap to clone (an `Arc` inside), `Send + Sync`.
///
/// See the [crate documentation](crate) for the two backends and the fallback rules.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Limiter");
        d.field("shared", &self.is_shared())
            .field("nodes", &self.inner.nodes.load(Ordering::Relaxed));
        if let Some(b) = &self.inner.redis {
            d.field("on_error", &b.opts.on_error)
                .field("backend_up", &b.is_up())
                .field("backend_errors", &b.errors());
        }
        d.finish_non_exhaustive()
    }
}

impl Limiter {
    fn with_backend(redis: Option<RedisBackend>) -> Arc<Inner> {
        Arc::new(Inner {
            clock: Clock::new(),
            local: LocalStore::new(),
            nodes: AtomicU32::new(1),
            redis,
            decisions: Default::default(),
            cached_denials: AtomicU64::new(0),
        })
    }

    /// An in-process limiter (single node).
    pub fn local() -> Limiter {
        Limiter {
            inner: Self::with_backend(None),
        }
    }

    /// A limiter whose state lives in Redis, shared by every node using the same Redis.
    ///
    /// Connections set `TCP_NODELAY` (redis-rs leaves Nagle on by default, which holds small
    /// pipelined commands back and shows in the tail latency).
    ///
    /// Never fails because Redis is down: it connects in a background task and keeps retrying
    /// every [`RedisOptions::retry_interval`]; until then, and whenever Redis fails, decisions
    /// follow [`RedisOptions::on_error`]. Decisions made while the first connection is being
    /// attempted wait for it (at most [`RedisOptions::timeout`]). Fails only on an invalid URL,
    /// or when called outside a tokio runtime.
    pub fn redis(opts: RedisOptions) -> Result<Limiter, LimitsError> {
        let client = client_for(&opts.url).map_err(LimitsError::InvalidUrl)?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| LimitsError::NoRuntime)?;
        let inner = Self::with_backend(Some(RedisBackend::new(opts, client.clone())));
        handle.spawn(shared::connect_loop(Arc::downgrade(&inner), client));
        Ok(Limiter { inner })
    }

    /// True for the Redis kind.
    pub fn is_shared(&self) -> bool {
        self.inner.redis.is_some()
    }

    /// Whether the last Redis operation succeeded (always true for the local kind; false for
    /// the Redis kind until the first connection is made).
    pub fn backend_up(&self) -> bool {
        self.inner.redis.as_ref().is_none_or(RedisBackend::is_up)
    }

    /// Redis errors (connect, timeout, script) so far; exported as
    /// `tenantry_ratelimit_backend_errors_total` ([`BACKEND_ERRORS_METRIC`]). Always 0 for the
    /// local kind.
    pub fn backend_errors(&self) -> u64 {
        self.inner.redis.as_ref().map_or(0, RedisBackend::errors)
    }

    /// Redis calls made so far (decisions and counters; a batch of decisions is one call).
    /// Always 0 for the local kind.
    pub fn backend_calls(&self) -> u64 {
        self.inner.redis.as_ref().map_or(0, RedisBackend::calls)
    }

    /// Number of gateway nodes sharing the limits (default 1; 0 counts as 1). While Redis is
    /// down with [`OnBackendError::Local`], each node enforces `rate / nodes` locally (see
    /// [`Rate::node_share`]).
    pub fn set_nodes(&self, n: u32) {
        self.inner.nodes.store(n.max(1), Ordering::Relaxed);
    }

    /// The number set with [`Limiter::set_nodes`].
    pub fn nodes(&self) -> u32 {
        self.inner.nodes.load(Ordering::Relaxed)
    }

    /// Keys held in process (rate states plus counters, including idle ones that have not
    /// been swept yet): all the state of the local kind, the fallback's for the Redis kind.
    pub fn local_len(&self) -> usize {
        let (rates, counters) = self.inner.local.len();
        rates + counters
    }

    /// One rate-limit decision for `key`, cost 1.
    ///
    /// Local: the in-process GCRA. Redis: the GCRA script (the key expires when the bucket
    /// would be full again), in one `EVALSHA` shared with the decisions this thread asks for at
    /// the same time. On a Redis error or timeout the error is counted
    /// and logged, and [`RedisOptions::on_error`] decides (see the [crate docs](crate)).
    ///
    /// A rate with `per_period == 0` denies without touching any backend: `allowed: false`,
    /// `limit: 0`, `retry_after` = the period (at least 1 s), [`Source::Local`].
    pub async fn check(&self, key: &str, rate: Rate) -> Decision {
        let d = self.decide(key, rate).await;
        self.inner.decisions[d.source as usize].fetch_add(1, Ordering::Relaxed);
        d
    }

    /// Refusals of the Redis kind answered from this node's memory of a shared refusal that
    /// had not lapsed yet, without a Redis call (they also count as [`Source::Shared`] in
    /// [`Limiter::decisions`]). Always 0 for the local kind.
    pub fn cached_denials(&self) -> u64 {
        self.inner.cached_denials.load(Ordering::Relaxed)
    }

    /// Decisions so far by where they were taken (every [`Limiter::check`] counts once).
    pub fn decisions(&self) -> [(Source, u64); 5] {
        Source::ALL.map(|s| (s, self.inner.decisions[s as usize].load(Ordering::Relaxed)))
    }

    async fn decide(&self, key: &str, rate: Rate) -> Decision {
        let inner = &*self.inner;
        let Some(backend) = inner.redis.as_ref() else {
            return self.check_local(key, rate, Source::Local);
        };
        let Some(p) = shared::params_us(rate) else {
            return Decision::deny_all(rate);
        };
        // A refusal the shared counter gave lasts until its retry time whatever any node does
        // meanwhile (see "Refusals are remembered" in the crate docs): no round trip for it.
        let asked = inner.clock.now_ns();
        if let Some(o) = inner.local.denied(key, p, asked) {
            inner.cached_denials.fetch_add(1, Ordering::Relaxed);
            return Decision::from_outcome(
                o,
                rate.per_period,
                Duration::from_nanos,
                Source::Shared,
            );
        }
        let outcome = match batch::enqueue(self, backend, key, p) {
            Some(rx) => rx.await.ok().flatten(),
            None => {
                let ask = shared::RunAsk {
                    key,
                    params: p,
                    n: 1,
                };
                backend
                    .gcra(&inner.clock, &[ask])
                    .await
                    .and_then(|runs| runs.first().map(|run| run.outcome(0, p)))
            }
        };
        match outcome {
            Some(o) => {
                if !o.allowed && o.retry_after > 0 {
                    // Counted from when the decision was asked for, which is no later than
                    // when Redis took it: the memory lapses no later than the refusal does.
                    inner.local.remember_denial(
                        key,
                        p,
                        asked,
                        o.retry_after.saturating_mul(1000),
                        o.reset_after.saturating_mul(1000),
                    );
                }
                Decision::from_outcome(o, rate.per_period, Duration::from_micros, Source::Shared)
            }
            None => self.fallback(key, rate, backend.opts.on_error),
        }
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    fn fallback(&self, key: &str, rate: Rate, on_error: OnBackendError) -> Decision {
        match on_error {
            OnBackendError::Local => {
                let share = rate.node_share(self.nodes());
                let mut d = self.check_local(key, share, Source::FallbackLocal);
                d.limit = rate.per_period;
                d
            }
            OnBackendError::Allow => Decision {
                allowed: true,
                limit: rate.per_period,
                remaining: rate.burst.max(1) - 1,
                retry_after: Duration::ZERO,
                reset_after: Duration::ZERO,
                source: Source::FailOpen,
            },
            OnBackendError::Deny => Decision {
                allowed: false,
                limit: rate.per_period,
                remaining: 0,
                retry_after: Duration::from_secs(1),
                reset_after: Duration::from_secs(1),
                source: Source::FailClosed,
            },
        }
    }

    #[inline]
    fn check_local(&self, key: &str, rate: Rate, source: Source) -> Decision {
        let Some(p) = Params::ns(rate) else {
            return Decision::deny_all(rate);
        };
        let inner = &*self.inner;
        let o = inner.local.check(key, p, inner.clock.now_ns());
        Decision::from_outcome(o, rate.per_period, Duration::from_nanos, source)
    }

    /// Adds `amount` to the counter `key` and returns the new total. The key expires `ttl`
    /// after its first creation (a fixed window: callers put the window id in the key).
    ///
    /// Redis: one script (`INCRBY`, and `PEXPIRE` only when the key has no expiry yet, i.e.
    /// was just created; amounts above `i64::MAX` are clamped). Local: an in-process map with
    /// expiry. On a Redis error the error is counted and the amount is added to the local
    /// counter instead, whose total is returned: this never fails.
    pub async fn add(&self, key: &str, amount: u64, ttl: Duration) -> u64 {
        match self.add_shared(key, amount, ttl).await {
            Ok(total) => total,
            Err(_) => self.add_local(key, amount, ttl),
        }
    }

    /// Adds `amount` to the in-process counter `key` (created with `ttl`) and returns its total.
    fn add_local(&self, key: &str, amount: u64, ttl: Duration) -> u64 {
        let inner = &*self.inner;
        let ttl_ns = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        inner.local.add(key, amount, ttl_ns, inner.clock.now_ns())
    }

    /// [`Limiter::add`] on the counter every node shares, or nothing in process: when the
    /// Redis kind cannot confirm the addition (the error is counted), the caller learns
    /// whether it surely did not happen ([`SharedAddError::NotSent`]: keep the amount and add
    /// it later, instead of splitting a shared total into per-node ones) or may have
    /// ([`SharedAddError::Unknown`], e.g. a timeout: adding it again could count it twice).
    /// The command is never sent twice. The local kind always adds (its counter is the only
    /// one).
    ///
    /// # Errors
    /// Redis did not confirm the addition (see above).
    pub async fn add_shared(
        &self,
        key: &str,
        amount: u64,
        ttl: Duration,
    ) -> Result<u64, SharedAddError> {
        let inner = &*self.inner;
        let Some(backend) = inner.redis.as_ref() else {
            return Ok(self.add_local(key, amount, ttl));
        };
        let amount_i = i64::try_from(amount).unwrap_or(i64::MAX);
        let ttl_ms = u64::try_from(ttl.as_millis())
            .unwrap_or(u64::MAX)
            .clamp(1, i64::MAX as u64);
        let reply = backend
            .call(&inner.clock, false, |mut conn| {
                let mut inv = backend.counter.prepare_invoke();
                inv.key(key).arg(amount_i).arg(ttl_ms);
                async move { inv.invoke_async::<i64>(&mut conn).await }
            })
            .await;
        match reply {
            Ok(total) => Ok(u64::try_from(total).unwrap_or(0)),
            Err(shared::CallError::NotSent) => Err(SharedAddError::NotSent),
            Err(shared::CallError::MaybeRan) => Err(SharedAddError::Unknown),
        }
    }

    /// Current value of counter `key` (0 if absent or expired). On a Redis error: the local
    /// counter's value.
    pub async fn get(&self, key: &str) -> u64 {
        let inner = &*self.inner;
        if let Some(backend) = inner.redis.as_ref() {
            let mut cmd = redis::cmd("GET");
            cmd.arg(key);
            let cmd = &cmd;
            let reply = backend
                .call(&inner.clock, true, |mut conn| async move {
                    cmd.query_async::<Option<i64>>(&mut conn).await
                })
                .await;
            if let Ok(v) = reply {
                return v.and_then(|v| u64::try_from(v).ok()).unwrap_or(0);
            }
        }
        inner.local.get(key, inner.clock.now_ns())
    }
}

#[cfg(test)]
mod tests;

/// A Redis client for `url` whose TCP connections set `TCP_NODELAY`: every decision is a small
/// command on a multiplexed connection, and Nagle's algorithm would hold it back behind the
/// previous one's acknowledgement.
pub fn client_for(url: &str) -> Result<redis::Client, redis::RedisError> {
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    redis::Client::open(info)
}
