//! The in-process backend: GCRA state and fixed-window counters in sharded maps.
//!
//! Time is a plain `u64` of nanoseconds on a monotonic clock (see [`Clock`]); every function
//! here takes `now` as an argument so the math can be tested without sleeping.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::Rate;

/// Number of shards per map (a power of two).
const SHARDS: usize = 64;
const SHARD_BITS: u32 = SHARDS.trailing_zeros();
/// A shard is swept (expired entries removed) when it reaches this many entries, and then
/// whenever it doubles the size it had after the previous sweep.
const MIN_SWEEP_AT: usize = 1024;
/// Cap for the emission interval and the tolerance in nanoseconds (~36 years), so that
/// `tat + T` can never overflow.
const CAP_NS: u64 = 1 << 60;

/// Monotonic nanoseconds since the limiter was created.
#[derive(Debug)]
pub(crate) struct Clock {
    base: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
        }
    }

    /// Nanoseconds since creation. Never 0 after the first nanosecond; callers treat it as an
    /// opaque, non-decreasing counter.
    #[inline]
    pub(crate) fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The result of one GCRA step, in the caller's time unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) allowed: bool,
    pub(crate) remaining: u64,
    pub(crate) retry_after: u64,
    pub(crate) reset_after: u64,
    /// The TAT to store when allowed (unchanged state when rejected).
    pub(crate) new_tat: u64,
}

/// GCRA parameters in one time unit: emission interval `t` and tolerance `tau`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Params {
    pub(crate) t: u64,
    pub(crate) tau: u64,
}

impl Params {
    /// Parameters of `rate` in units of `unit_ns` nanoseconds (1 for ns, 1000 for µs), each
    /// value clamped to `[1, cap]`. `None` when `per_period` is 0 (deny everything).
    pub(crate) fn of(rate: Rate, unit_ns: u128, cap: u64) -> Option<Self> {
        if rate.per_period == 0 {
            return None;
        }
        let period_units = rate.period.as_nanos() / unit_ns.max(1);
        let t = period_units / u128::from(rate.per_period);
        let t = u64::try_from(t).unwrap_or(u64::MAX).clamp(1, cap);
        let tau = u128::from(t) * u128::from(rate.burst.max(1));
        let tau = u64::try_from(tau).unwrap_or(u64::MAX).clamp(1, cap);
        Some(Self { t, tau })
    }

    /// Parameters in nanoseconds, for the local backend.
    pub(crate) fn ns(rate: Rate) -> Option<Self> {
        Self::of(rate, 1, CAP_NS)
    }
}

/// One GCRA step: `stored` is the stored TAT (0 when absent), all values in one unit.
///
/// `tat = max(stored, now)`, `new_tat = tat + T`; allowed iff `new_tat - now <= tau`.
#[inline]
pub(crate) fn gcra(stored: u64, now: u64, p: Params) -> Outcome {
    let tat = stored.max(now);
    let new_tat = tat.saturating_add(p.t);
    let diff = new_tat - now;
    if diff <= p.tau {
        Outcome {
            allowed: true,
            remaining: (p.tau - diff) / p.t,
            retry_after: 0,
            reset_after: diff,
            new_tat,
        }
    } else {
        Outcome {
            allowed: false,
            remaining: 0,
            retry_after: (new_tat - p.tau).saturating_sub(now),
            reset_after: tat - now,
            new_tat: stored,
        }
    }
}

/// `n` GCRA steps for one key at one instant, as the Redis script reports them: the first
/// `allowed` fit, and `d0 = max(stored, now) - now` before them (all in one unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) allowed: u64,
    pub(crate) d0: u64,
}

impl Run {
    /// The outcome of step `i` (from 0) of the run: what [`gcra`] gives for it, the steps
    /// before it having been taken (`new_tat` is left 0; the caller does not store it).
    pub(crate) fn outcome(self, i: u64, p: Params) -> Outcome {
        if i < self.allowed {
            let diff = self
                .d0
                .saturating_add(i.saturating_add(1).saturating_mul(p.t));
            Outcome {
                allowed: true,
                remaining: p.tau.saturating_sub(diff) / p.t.max(1),
                retry_after: 0,
                reset_after: diff,
                new_tat: 0,
            }
        } else {
            let tat = self.d0.saturating_add(self.allowed.saturating_mul(p.t));
            Outcome {
                allowed: false,
                remaining: 0,
                retry_after: tat.saturating_add(p.t).saturating_sub(p.tau),
                reset_after: tat,
                new_tat: 0,
            }
        }
    }
}

/// One shard: a map plus the size at which it is swept next.
struct Shard<V> {
    map: HashMap<Box<str>, V, foldhash::fast::RandomState>,
    sweep_at: usize,
}

impl<V> Shard<V> {
    /// Inserts a new entry; sweeps (keeps only entries for which `live` is true) when the shard
    /// has grown enough, so that memory stays bounded by about twice the live entries.
    fn insert(&mut self, key: &str, v: V, live: impl Fn(&V) -> bool) {
        self.map.insert(key.into(), v);
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, v| live(v));
            self.sweep_at = (self.map.len() * 2).max(MIN_SWEEP_AT);
            if self.map.capacity() > self.sweep_at * 2 {
                self.map.shrink_to(self.sweep_at);
            }
        }
    }
}

/// A cache line sized wrapper, so neighbouring shard locks do not share a line.
#[repr(align(128))]
struct Padded<T>(T);

/// A map split into [`SHARDS`] independently locked shards, chosen by the key's hash.
struct ShardedMap<V> {
    shards: Box<[Padded<Mutex<Shard<V>>>]>,
    hasher: foldhash::fast::FixedState,
}

impl<V> ShardedMap<V> {
    fn new() -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Padded(Mutex::new(Shard {
                    map: HashMap::default(),
                    sweep_at: MIN_SWEEP_AT,
                }))
            })
            .collect();
        Self {
            shards,
            hasher: foldhash::fast::FixedState::with_seed(0x7465_6e61_6e74_7279),
        }
    }

    #[inline]
    fn shard(&self, key: &str) -> MutexGuard<'_, Shard<V>> {
        let h = self.hasher.hash_one(key);
        let idx = usize::try_from(h >> (64 - SHARD_BITS)).unwrap_or(0) % SHARDS;
        // A panic while holding a shard lock cannot leave a map half-updated in a way that
        // matters here (values are plain integers), so poisoning is ignored.
        self.shards[idx]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.0.lock().unwrap_or_else(PoisonError::into_inner).map.len())
            .sum()
    }
}

/// A fixed-window counter value.
#[derive(Debug, Clone, Copy)]
struct Counter {
    value: u64,
    expires_at: u64,
}

/// A refusal by the shared counter, remembered until it lapses (see [`LocalStore::denied`]).
#[derive(Debug, Clone, Copy)]
struct Denial {
    /// The parameters it was decided with (µs, as the script's).
    p: Params,
    /// When one request would fit again, at the earliest (clock ns).
    until: u64,
    /// When the bucket would be full again, at the earliest (clock ns).
    reset_at: u64,
}

/// The in-process state: GCRA TATs, counters, and remembered shared refusals.
pub(crate) struct LocalStore {
    tats: ShardedMap<u64>,
    counters: ShardedMap<Counter>,
    denials: ShardedMap<Denial>,
}

impl LocalStore {
    pub(crate) fn new() -> Self {
        Self {
            tats: ShardedMap::new(),
            counters: ShardedMap::new(),
            denials: ShardedMap::new(),
        }
    }

    /// A refusal remembered for `key` with the same parameters that has not lapsed at `now`,
    /// as the refusal it stands for (times in ns from `now`).
    #[inline]
    pub(crate) fn denied(&self, key: &str, p: Params, now: u64) -> Option<Outcome> {
        let shard = self.denials.shard(key);
        match shard.map.get(key) {
            Some(d) if d.p == p && d.until > now => Some(Outcome {
                allowed: false,
                remaining: 0,
                retry_after: d.until - now,
                reset_after: d.reset_at.saturating_sub(now),
                new_tat: 0,
            }),
            _ => None,
        }
    }

    /// Remembers that the shared counter, asked at `now`, refused `key` with parameters `p`
    /// for `retry_after` (bucket full again after `reset_after`), all ns.
    pub(crate) fn remember_denial(
        &self,
        key: &str,
        p: Params,
        now: u64,
        retry_after: u64,
        reset_after: u64,
    ) {
        let d = Denial {
            p,
            until: now.saturating_add(retry_after),
            reset_at: now.saturating_add(reset_after),
        };
        let mut shard = self.denials.shard(key);
        if let Some(old) = shard.map.get_mut(key) {
            *old = d;
            return;
        }
        shard.insert(key, d, |d| d.until > now);
    }

    /// One GCRA decision at time `now` (ns). Allocates only when the key is new.
    #[inline]
    pub(crate) fn check(&self, key: &str, p: Params, now: u64) -> Outcome {
        let mut shard = self.tats.shard(key);
        if let Some(tat) = shard.map.get_mut(key) {
            let out = gcra(*tat, now, p);
            if out.allowed {
                *tat = out.new_tat;
            }
            return out;
        }
        let out = gcra(0, now, p);
        if out.allowed {
            shard.insert(key, out.new_tat, |tat| *tat > now);
        }
        out
    }

    /// Adds `amount` to counter `key`; a new (or expired) counter expires `ttl_ns` after now.
    pub(crate) fn add(&self, key: &str, amount: u64, ttl_ns: u64, now: u64) -> u64 {
        let mut shard = self.counters.shard(key);
        if let Some(c) = shard.map.get_mut(key) {
            if c.expires_at > now {
                c.value = c.value.saturating_add(amount);
            } else {
                *c = Counter {
                    value: amount,
                    expires_at: now.saturating_add(ttl_ns),
                };
            }
            return c.value;
        }
        let c = Counter {
            value: amount,
            expires_at: now.saturating_add(ttl_ns),
        };
        shard.insert(key, c, |c| c.expires_at > now);
        amount
    }

    /// Current value of counter `key` (0 when absent or expired).
    pub(crate) fn get(&self, key: &str, now: u64) -> u64 {
        let shard = self.counters.shard(key);
        match shard.map.get(key) {
            Some(c) if c.expires_at > now => c.value,
            _ => 0,
        }
    }

    /// Number of stored GCRA keys and counters (including not yet swept idle ones, and the
    /// remembered refusals with the keys).
    pub(crate) fn len(&self) -> (usize, usize) {
        (self.tats.len() + self.denials.len(), self.counters.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::time::Duration;

    const MS: u64 = 1_000_000;

    fn rate(n: u64, period_ms: u64, burst: u64) -> Rate {
        Rate {
            per_period: n,
            period: Duration::from_millis(period_ms),
            burst,
        }
    }

    #[test]
    fn params_clamp_and_deny() {
        assert_eq!(Params::ns(rate(0, 1000, 5)), None);
        let p = Params::ns(rate(10, 1000, 5)).unwrap();
        assert_eq!(
            p,
            Params {
                t: 100 * MS,
                tau: 500 * MS
            }
        );
        // burst 0 is treated as 1
        let p = Params::ns(rate(10, 1000, 0)).unwrap();
        assert_eq!(p.tau, p.t);
        // absurd rates are clamped, not zero
        let p = Params::ns(rate(u64::MAX, 1, u64::MAX)).unwrap();
        assert_eq!(p.t, 1);
        let p = Params::ns(Rate {
            per_period: 1,
            period: Duration::MAX,
            burst: u64::MAX,
        })
        .unwrap();
        assert_eq!((p.t, p.tau), (CAP_NS, CAP_NS));
    }

    #[test]
    fn burst_then_refill_with_fake_clock() {
        let s = LocalStore::new();
        let p = Params::ns(rate(10, 1000, 5)).unwrap();
        let t0 = 1_000 * MS;
        let mut remaining = Vec::new();
        let mut denied = Vec::new();
        for _ in 0..20 {
            let o = s.check("k", p, t0);
            if o.allowed {
                remaining.push(o.remaining);
            } else {
                denied.push(o);
            }
        }
        assert_eq!(remaining, vec![4, 3, 2, 1, 0]);
        assert_eq!(denied.len(), 15);
        for d in &denied {
            assert_eq!(d.retry_after, 100 * MS);
            assert_eq!(d.reset_after, 500 * MS);
            assert_eq!(d.remaining, 0);
        }
        // 250 ms later: two more, then denied again
        let t1 = t0 + 250 * MS;
        assert!(s.check("k", p, t1).allowed);
        assert!(s.check("k", p, t1).allowed);
        let d = s.check("k", p, t1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, 50 * MS);
        // denials do not consume: after many denials, one interval later exactly one is allowed
        for _ in 0..100 {
            assert!(!s.check("k", p, t1).allowed);
        }
        let t2 = t1 + 100 * MS;
        assert!(s.check("k", p, t2).allowed);
        assert!(!s.check("k", p, t2).allowed);
        // a full refill: reset_after of the last allowed decision later, the bucket is full
        let o = s.check("other", p, t2);
        assert_eq!(o.reset_after, 100 * MS);
        assert_eq!(o.remaining, 4);
    }

    #[test]
    fn idle_keys_are_swept() {
        let s = LocalStore::new();
        let p = Params::ns(rate(10, 1000, 1)).unwrap();
        let mut now = 0;
        for i in 0..200_000u64 {
            now += 10 * MS; // each key idle long before the next inserts come
            let _ = s.check(&format!("k{i}"), p, now);
            let _ = s.add(&format!("c{i}"), 1, MS, now);
        }
        let (tats, counters) = s.len();
        assert!(tats <= SHARDS * MIN_SWEEP_AT, "{tats} tats kept");
        assert!(
            counters <= SHARDS * MIN_SWEEP_AT,
            "{counters} counters kept"
        );
    }

    #[test]
    fn counters_fixed_window() {
        let s = LocalStore::new();
        assert_eq!(s.get("q", 0), 0);
        assert_eq!(s.add("q", 3, 100 * MS, 10), 3);
        assert_eq!(s.add("q", 4, 100 * MS, 50 * MS), 7);
        assert_eq!(s.get("q", 60 * MS), 7);
        // expiry counts from the first creation, not the last add
        assert_eq!(s.get("q", 100 * MS + 10), 0);
        assert_eq!(s.add("q", 2, 100 * MS, 100 * MS + 10), 2);
    }
}
