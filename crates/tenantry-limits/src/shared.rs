//! The Redis backend: connection handling, the Lua scripts and the error "circuit" that makes
//! callers skip Redis for a while after a failure.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{OnceLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script};

use crate::local::{Clock, Params, Run};
use crate::{Inner, LimitsError, Rate, RedisOptions};

/// GCRA decisions, in microseconds, with the server's clock: runs of decisions for one or more
/// keys in one call.
///
/// `KEYS[i]`: the keys. `ARGV[1]`: "now" in µs instead of `TIME` (used by the parity tests
/// only), or empty. `ARGV[3i-1]`, `ARGV[3i]`, `ARGV[3i+1]`: emission interval T and tolerance
/// tau (µs) of `KEYS[i]`, and `n`, how many requests of that key (with those parameters) to
/// decide, one after the other. They all happen at the same `now`, so the first `a` of them
/// fit and the rest do not (a rejected request writes nothing), with
/// `a = min(n, floor((tau - d0) / T))` where `d0 = max(tat, now) - now`: the script computes
/// that once per key instead of once per request. The reply is one string of two decimal
/// numbers per key, `a d0`, all separated by spaces, in order; [`Run::outcome`] expands them
/// into each request's outcome (one string, because redis-rs's reply parser costs ~250
/// instructions per array element). A key that appears again later in the same call sees the
/// earlier runs. A key lives exactly until its bucket is full again.
///
/// A key is read once and written once per call, however many runs it has: the script keeps
/// the key's arrival time in a table between runs, which is what reading back its own write
/// would give, since nothing else runs while a script does.
pub(crate) const GCRA_LUA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end
local out = {}
local cur = {}
local ttl = {}
local dirty = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local t = tonumber(ARGV[3 * i - 1])
  local tau = tonumber(ARGV[3 * i])
  local n = tonumber(ARGV[3 * i + 1])
  local tat = cur[key]
  if tat == nil then tat = tonumber(redis.call('GET', key)) or now end
  if tat < now then tat = now end
  local d0 = tat - now
  local a = 0
  if d0 < tau then a = math.min(n, math.floor((tau - d0) / t)) end
  if a > 0 then
    if ttl[key] == nil then dirty[#dirty + 1] = key end
    tat = tat + a * t
    ttl[key] = tat - now
  end
  cur[key] = tat
  out[i] = string.format('%d %d', a, d0)
end
for _, key in ipairs(dirty) do
  redis.call('SET', key, string.format('%d', cur[key]),
    'PX', string.format('%d', math.max(1, math.ceil(ttl[key] / 1000))))
end
return table.concat(out, ' ')
";

/// A fixed-window counter: `KEYS[1]` the counter, `ARGV[1]` the amount, `ARGV[2]` the TTL in
/// ms. The TTL is set only when the key has none, i.e. when INCRBY just created it, so the
/// window is fixed from the first add. Returns the new total.
pub(crate) const COUNTER_LUA: &str = r"
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v
";

/// Emission interval and tolerance caps in µs (2^49 µs ≈ 17.8 years), so every number the
/// script handles (now ≈ 2^51 µs in this century, plus tat and T) stays below 2^53.
pub(crate) const CAP_US: u64 = 1 << 49;

/// Why [`RedisBackend::call`] gave no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallError {
    /// The command was not sent (the circuit skipped Redis, no connection, refused).
    NotSent,
    /// It failed after being sent (a timeout, a dropped connection, an error reply): it may
    /// have run.
    MaybeRan,
}

/// Circuit state: Redis is used.
const CLOSED: u64 = 0;
/// Circuit state: one caller is probing Redis; everyone else uses the fallback.
const PROBING: u64 = u64::MAX;
/// At most one warning per this many nanoseconds.
const WARN_EVERY_NS: u64 = 1_000_000_000;

/// GCRA parameters of `rate` in µs for the script.
pub(crate) fn params_us(rate: Rate) -> Option<Params> {
    Params::of(rate, 1000, CAP_US)
}

/// One run asked of the GCRA script: `n` requests of `key` with `params`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunAsk<'a> {
    pub(crate) key: &'a str,
    pub(crate) params: Params,
    pub(crate) n: u64,
}

/// The script's reply as [`Run`]s, checked against the runs asked for: two numbers per run,
/// no more requests allowed than asked, and none allowed beyond the tolerance. `None` when it
/// is not such a list.
pub(crate) fn runs_from_reply(reply: &[u8], asked: &[RunAsk<'_>]) -> Option<Vec<Run>> {
    let mut out = Vec::with_capacity(asked.len());
    let mut numbers = reply
        .split(|b| *b == b' ')
        .filter(|s| !s.is_empty())
        .map(|s| {
            if !s.iter().all(u8::is_ascii_digit) {
                return None;
            }
            s.iter().try_fold(0u64, |n, d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
        });
    for ask in asked {
        let allowed = numbers.next()??;
        let d0 = numbers.next()??;
        let used = allowed.checked_mul(ask.params.t)?.checked_add(d0)?;
        if allowed > ask.n || (allowed > 0 && used > ask.params.tau) {
            return None;
        }
        out.push(Run { allowed, d0 });
    }
    numbers.next().is_none().then_some(out)
}

thread_local! {
    /// Connections of this thread, by backend id (`None` while one is being made). A
    /// single-threaded runtime (the gateway runs one per worker) gets its own connection, so
    /// a decision never hops to another thread and back.
    /// Each is tagged with the runtime it was made on: its driver task lives there, so a
    /// connection left by a runtime that has shut down is replaced, not used.
    static THREAD_CONNS: std::cell::RefCell<Vec<ThreadConn>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// One thread's connection for one backend: backend id, the runtime it was made on, and the
/// connection (`None` while it is being made).
type ThreadConn = (u64, tokio::runtime::Id, Option<ConnectionManager>);

/// Backend ids for [`THREAD_CONNS`].
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Everything the Redis kind of limiter needs besides the local fallback.
pub(crate) struct RedisBackend {
    pub(crate) opts: RedisOptions,
    id: u64,
    client: redis::Client,
    /// Set once by the background connector; the manager reconnects by itself afterwards.
    conn: OnceLock<ConnectionManager>,
    /// Flips to true when `conn` is set, for callers that wait for the first connection.
    connected: tokio::sync::watch::Sender<bool>,
    pub(crate) gcra: Script,
    pub(crate) counter: Script,
    /// [`CLOSED`], [`PROBING`], or the clock time (ns) until which Redis is skipped.
    circuit: AtomicU64,
    up: AtomicBool,
    /// Calls that reached `attempt` (decisions and counters; a batch is one).
    calls: AtomicU64,
    errors: AtomicU64,
    /// Clock time of the last warning plus one (0: never warned).
    last_warn: AtomicU64,
    suppressed: AtomicU64,
}

impl RedisBackend {
    pub(crate) fn new(opts: RedisOptions, client: redis::Client) -> Self {
        Self {
            opts,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            client,
            conn: OnceLock::new(),
            connected: tokio::sync::watch::Sender::new(false),
            gcra: Script::new(GCRA_LUA),
            counter: Script::new(COUNTER_LUA),
            circuit: AtomicU64::new(CLOSED),
            up: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_warn: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// This backend's id, unique in the process (keys per-thread state).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    pub(crate) fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The connection manager's settings: the timeout for connecting, and a short reconnect
    /// backoff (the circuit already spaces out attempts). No response timeout of its own:
    /// [`RedisBackend::call`] already bounds every decision by the same `timeout`, and a
    /// second timer per command cost about a thousand instructions (an expired response
    /// timeout does not make the manager reconnect either, so nothing else depends on it).
    pub(crate) fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.opts.timeout))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(100))
    }

    fn mark_up(&self) {
        self.up.store(true, Ordering::Relaxed);
        self.circuit.store(CLOSED, Ordering::Release);
    }

    /// Counts a failure, logs it (at most once a second) and opens the circuit for
    /// `retry_interval`.
    fn record_failure(&self, err: &LimitsError, now: u64) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.up.store(false, Ordering::Relaxed);
        let retry_ns = u64::try_from(self.opts.retry_interval.as_nanos()).unwrap_or(u64::MAX);
        // Never CLOSED (0) nor PROBING (MAX).
        let until = now.saturating_add(retry_ns).clamp(1, PROBING - 1);
        self.circuit.store(until, Ordering::Release);
        self.warn(err, now);
    }

    fn warn(&self, err: &LimitsError, now: u64) {
        let last = self.last_warn.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last - 1) >= WARN_EVERY_NS;
        if due
            && self
                .last_warn
                .compare_exchange(
                    last,
                    now.saturating_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(
                error = %err,
                suppressed,
                on_error = self.opts.on_error.as_str(),
                retry_in_ms = u64::try_from(self.opts.retry_interval.as_millis()).unwrap_or(u64::MAX),
                "rate limit backend (redis) failed; using the fallback"
            );
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Runs one Redis operation under the circuit and the timeout. An error means "use the
    /// fallback" (the failure, if there was one, has been counted and logged), and says
    /// whether the command may have run on Redis all the same.
    ///
    /// `op` may be called twice: once more when the first call failed because the connection
    /// was refused (the command never reached a server, e.g. the manager's previous reconnect
    /// had failed and this call started a new one), and, with `retry_dropped`, when it was
    /// dropped (e.g. an idle connection across a Redis restart; a command that did run before
    /// the drop then runs twice, so only operations that tolerate that ask for it).
    pub(crate) async fn call<T, F, Fut>(
        &self,
        clock: &Clock,
        retry_dropped: bool,
        op: F,
    ) -> Result<T, CallError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let state = self.circuit.load(Ordering::Acquire);
        // Dropped at the end: if this caller was the prober and neither branch below moved the
        // circuit (the future was cancelled), the guard re-opens it.
        let mut _probe = None;
        if state != CLOSED {
            // PROBING is larger than any clock value, so it always skips.
            if clock.now_ns() < state
                || self
                    .circuit
                    .compare_exchange(state, PROBING, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                return Err(CallError::NotSent);
            }
            _probe = Some(ProbeGuard {
                backend: self,
                clock,
            });
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        let sent = AtomicBool::new(false);
        let attempt = self.attempt(&op, &sent, retry_dropped);
        let result = match tokio::time::timeout(self.opts.timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(LimitsError::Timeout(self.opts.timeout)),
        };
        match result {
            Ok(v) => {
                self.mark_up();
                Ok(v)
            }
            Err(e) => {
                self.record_failure(&e, clock.now_ns());
                let refused = matches!(&e, LimitsError::Redis(r) if r.is_connection_refusal());
                Err(if sent.load(Ordering::Relaxed) && !refused {
                    CallError::MaybeRan
                } else {
                    CallError::NotSent
                })
            }
        }
    }

    /// One call of the GCRA script for `runs` (each decided in order): their [`Run`]s, or
    /// `None` to fall back (the failure has been counted and logged by [`RedisBackend::call`]).
    pub(crate) async fn gcra(&self, clock: &Clock, runs: &[RunAsk<'_>]) -> Option<Vec<Run>> {
        let reply = self
            .call(clock, true, |mut conn| {
                let mut inv = self.gcra.prepare_invoke();
                inv.arg("");
                for r in runs {
                    inv.key(r.key).arg(r.params.t).arg(r.params.tau).arg(r.n);
                }
                async move { inv.invoke_async::<Vec<u8>>(&mut conn).await }
            })
            .await
            .ok()?;
        let got = runs_from_reply(&reply, runs);
        if got.is_none() {
            tracing::warn!(
                runs = runs.len(),
                reply_bytes = reply.len(),
                "rate limit script returned a reply of the wrong shape; falling back"
            );
        }
        got
    }

    /// Gets a connection and runs `op` on it (see [`RedisBackend::call`] for the second try);
    /// `sent` turns true when `op` is first called.
    async fn attempt<T, F, Fut>(
        &self,
        op: &F,
        sent: &AtomicBool,
        retry_dropped: bool,
    ) -> Result<T, LimitsError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let conn = match self.thread_conn() {
            Some(c) => c,
            None => match self.conn.get() {
                Some(c) => c.clone(),
                None => self.wait_connected().await?,
            },
        };
        sent.store(true, Ordering::Relaxed);
        match op(conn.clone()).await {
            // Refused: the command reached no server. Dropped: the connection died under it,
            // typically one left idle across a Redis restart, which never ran the command (were
            // it to drop just after a server ran it, a decision would count twice). Either way
            // the manager reconnects, and one more try beats a fallback window.
            Err(e) if e.is_connection_refusal() || (retry_dropped && e.is_connection_dropped()) => {
                Ok(op(conn).await?)
            }
            r => Ok(r?),
        }
    }

    /// This thread's own connection, on a single-threaded runtime once the shared one works.
    /// The first call starts making it (on this runtime) and uses the shared one meanwhile;
    /// if making it fails, a later call tries again.
    fn thread_conn(&self) -> Option<ConnectionManager> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
            return None;
        }
        let runtime = handle.id();
        THREAD_CONNS.with(|conns| {
            let mut conns = conns.borrow_mut();
            if let Some((_, _, c)) = conns
                .iter()
                .find(|(id, rt, _)| *id == self.id && *rt == runtime)
            {
                return c.clone();
            }
            // One made on a runtime this thread ran before: its driver is gone with it.
            conns.retain(|(id, _, _)| *id != self.id);
            if !self.is_up() {
                return None;
            }
            conns.push((self.id, runtime, None));
            let (id, client, config) = (self.id, self.client.clone(), self.manager_config());
            handle.spawn(async move {
                let made = ConnectionManager::new_with_config(client, config).await;
                THREAD_CONNS.with(|conns| {
                    let mut conns = conns.borrow_mut();
                    let slot = conns
                        .iter()
                        .position(|(i, rt, _)| *i == id && *rt == runtime);
                    match (made, slot) {
                        (Ok(conn), Some(at)) => conns[at].2 = Some(conn),
                        (Ok(_), None) => {}
                        (Err(e), _) => {
                            tracing::debug!(error = %e, "per-thread rate limit connection failed");
                            conns.retain(|(i, rt, _)| !(*i == id && *rt == runtime));
                        }
                    }
                });
            });
            None
        })
    }

    /// Waits (bounded by the caller's timeout) for the background connector.
    async fn wait_connected(&self) -> Result<ConnectionManager, LimitsError> {
        let mut rx = self.connected.subscribe();
        // The sender lives in `self`, so this only returns once connected.
        let _ = rx.wait_for(|c| *c).await;
        self.conn.get().cloned().ok_or(LimitsError::NotConnected)
    }

    fn set_connection(&self, conn: ConnectionManager) {
        let _ = self.conn.set(conn);
        self.mark_up();
        self.connected.send_replace(true);
    }
}

/// Re-opens the circuit if a probing caller is cancelled (its future dropped) mid-probe, so
/// that Redis is tried again later instead of never.
struct ProbeGuard<'a> {
    backend: &'a RedisBackend,
    clock: &'a Clock,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        let retry_ns =
            u64::try_from(self.backend.opts.retry_interval.as_nanos()).unwrap_or(u64::MAX);
        let until = self
            .clock
            .now_ns()
            .saturating_add(retry_ns)
            .clamp(1, PROBING - 1);
        let _ = self.backend.circuit.compare_exchange(
            PROBING,
            until,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}

/// The background task that makes the first connection, retrying every `retry_interval`
/// until it succeeds or the limiter is dropped. After that the [`ConnectionManager`]
/// reconnects by itself.
pub(crate) async fn connect_loop(inner: Weak<Inner>, client: redis::Client) {
    loop {
        let (config, retry) = {
            let Some(inner) = inner.upgrade() else { return };
            let Some(b) = inner.redis.as_ref() else {
                return;
            };
            (b.manager_config(), b.opts.retry_interval)
        };
        let attempt = ConnectionManager::new_with_config(client.clone(), config).await;
        let Some(inner) = inner.upgrade() else { return };
        let Some(b) = inner.redis.as_ref() else {
            return;
        };
        match attempt {
            Ok(mut conn) => {
                // Load both scripts up front so the first decisions are plain EVALSHA calls;
                // `Script` reloads them by itself after a SCRIPT FLUSH or a restart.
                for script in [&b.gcra, &b.counter] {
                    if let Err(e) = script.prepare_invoke().load_async(&mut conn).await {
                        tracing::debug!(error = %e, "could not preload a rate limit script");
                    }
                }
                b.set_connection(conn);
                tracing::debug!("rate limit backend (redis) connected");
                return;
            }
            Err(e) => b.record_failure(&LimitsError::Redis(e), inner.clock.now_ns()),
        }
        drop(inner);
        tokio::time::sleep(retry.max(Duration::from_millis(10))).await;
    }
}
