//! Login and sign-up throttling: growing back-off per key (client address, account, …).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Above this many keys, `fail` evicts idle entries before adding a new one.
const MAX_KEYS: usize = 100_000;
/// An entry untouched for this long is forgotten: its failures no longer count.
const IDLE_MS: u64 = 60 * 60 * 1000;

/// Settings of a [`Throttle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Consecutive failures allowed before any back-off (default 5).
    pub free_attempts: u32,
    /// The first back-off, doubled on every further failure (default 1 s).
    pub base: Duration,
    /// The longest back-off (default 15 min).
    pub max_backoff: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            free_attempts: 5,
            base: Duration::from_secs(1),
            max_backoff: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    blocked_until_ms: u64,
    last_ms: u64,
}

/// Throttles attempts with a growing back-off, per key.
///
/// Keys are free-form strings in caller-chosen spaces, e.g. `ip:203.0.113.7` and
/// `acct:alice@example.com` for logins. After `free_attempts` consecutive failures of a key it
/// is blocked for `base`, then `2 × base`, `4 × base`, … up to `max_backoff`, counted from
/// the last failure. An entry idle for an hour is forgotten.
///
/// Login: `check(&[ip, acct])` before verifying the password (answer 429 with `Retry-After`
/// on `Err`), then `fail(&[ip, acct])` or `succeed(..)`.
///
/// Sign-up: call `check(&["signup:" + ip])` and then `fail` on *every* sign-up attempt,
/// successful or not, so each address gets `free_attempts` sign-ups before the back-off
/// starts; never call `succeed` for that key space.
///
/// Time is the caller's `now_ms` (milliseconds on any clock that does not go backwards), so
/// tests control it. Memory is bounded: past 100 000 keys, idle entries are evicted, then
/// entries not currently blocked; if that is still not enough the new key is not tracked.
#[derive(Debug, Default)]
pub struct Throttle {
    cfg: ThrottleConfig,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Throttle {
    /// A throttle with the given settings.
    pub fn new(cfg: ThrottleConfig) -> Self {
        Throttle {
            cfg,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Before an attempt: `Err(retry_after)` if any of `keys` is blocked at `now_ms`, with the
    /// longest remaining wait.
    pub fn check(&self, keys: &[&str], now_ms: u64) -> Result<(), Duration> {
        let entries = self.lock();
        let wait_ms = keys
            .iter()
            .filter_map(|key| entries.get(*key))
            .map(|entry| entry.blocked_until_ms.saturating_sub(now_ms))
            .max()
            .unwrap_or(0);
        if wait_ms == 0 {
            Ok(())
        } else {
            Err(Duration::from_millis(wait_ms))
        }
    }

    /// After a failed attempt: counts it for each of `keys` and blocks those past their free
    /// attempts.
    pub fn fail(&self, keys: &[&str], now_ms: u64) {
        let mut entries = self.lock();
        for key in keys {
            if !entries.contains_key(*key) && !make_room(&mut entries, now_ms) {
                tracing::warn!("login throttle is full; not tracking a new key");
                continue;
            }
            let entry = entries.entry((*key).to_owned()).or_insert(Entry {
                failures: 0,
                blocked_until_ms: 0,
                last_ms: now_ms,
            });
            if is_idle(entry, now_ms) {
                entry.failures = 0;
            }
            entry.failures = entry.failures.saturating_add(1);
            entry.last_ms = now_ms;
            if let Some(backoff_ms) = self.backoff_ms(entry.failures) {
                entry.blocked_until_ms = now_ms.saturating_add(backoff_ms);
            }
        }
    }

    /// After a successful attempt: forgets every one of `keys`. Pass only the account key to
    /// keep the address's history (otherwise an attacker holding one valid account can reset
    /// its address between guesses at other accounts).
    pub fn succeed(&self, keys: &[&str]) {
        let mut entries = self.lock();
        for key in keys {
            entries.remove(*key);
        }
    }

    /// The back-off after `failures` consecutive failures, if any.
    fn backoff_ms(&self, failures: u32) -> Option<u64> {
        let doublings = failures.checked_sub(self.cfg.free_attempts)?;
        let base_ms = duration_ms(self.cfg.base);
        let factor = 1u64.checked_shl(doublings).unwrap_or(u64::MAX);
        Some(
            base_ms
                .saturating_mul(factor)
                .min(duration_ms(self.cfg.max_backoff)),
        )
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // The map stays consistent even if a holder panicked: every update is a plain store.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn is_idle(entry: &Entry, now_ms: u64) -> bool {
    now_ms >= entry.blocked_until_ms && now_ms.saturating_sub(entry.last_ms) > IDLE_MS
}

/// Makes room for one more key; false if the map is full of recent, blocked entries.
fn make_room(entries: &mut HashMap<String, Entry>, now_ms: u64) -> bool {
    if entries.len() < MAX_KEYS {
        return true;
    }
    entries.retain(|_, entry| !is_idle(entry, now_ms));
    if entries.len() < MAX_KEYS {
        return true;
    }
    entries.retain(|_, entry| entry.blocked_until_ms > now_ms);
    entries.len() < MAX_KEYS
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: &str = "ip:203.0.113.7";
    const ACCT: &str = "acct:alice@example.com";

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn five_free_failures_then_doubling_backoff() {
        let t = Throttle::new(ThrottleConfig::default());
        let mut now = 0;
        for _ in 0..4 {
            t.fail(&[IP, ACCT], now);
            assert_eq!(t.check(&[IP, ACCT], now), Ok(()));
        }
        // Fifth failure: blocked for 1 s, then 2 s, 4 s, 8 s …
        for expected in [1, 2, 4, 8, 16] {
            t.fail(&[IP, ACCT], now);
            assert_eq!(t.check(&[IP, ACCT], now), Err(secs(expected)));
            now += expected * 1000;
            assert_eq!(t.check(&[IP, ACCT], now), Ok(()));
        }
    }

    #[test]
    fn check_returns_the_remaining_time() {
        let t = Throttle::new(ThrottleConfig::default());
        for _ in 0..6 {
            t.fail(&[ACCT], 10_000);
        }
        assert_eq!(t.check(&[ACCT], 10_000), Err(secs(2)));
        assert_eq!(t.check(&[ACCT], 11_250), Err(Duration::from_millis(750)));
        assert_eq!(t.check(&[ACCT], 11_999), Err(Duration::from_millis(1)));
        assert_eq!(t.check(&[ACCT], 12_000), Ok(()));
    }

    #[test]
    fn backoff_is_capped() {
        let t = Throttle::new(ThrottleConfig::default());
        for _ in 0..200 {
            t.fail(&[ACCT], 0);
        }
        assert_eq!(t.check(&[ACCT], 0), Err(secs(15 * 60)));
        assert_eq!(t.check(&[ACCT], 15 * 60 * 1000), Ok(()));
    }

    #[test]
    fn success_clears_the_given_keys() {
        let t = Throttle::new(ThrottleConfig::default());
        for _ in 0..5 {
            t.fail(&[IP, ACCT], 0);
        }
        t.succeed(&[ACCT]);
        assert_eq!(t.check(&[ACCT], 0), Ok(()));
        assert_eq!(t.check(&[IP], 0), Err(secs(1)));
        t.succeed(&[IP]);
        assert_eq!(t.check(&[IP, ACCT], 0), Ok(()));
        // The count starts over: four more failures are free again.
        for _ in 0..4 {
            t.fail(&[IP, ACCT], 0);
        }
        assert_eq!(t.check(&[IP, ACCT], 0), Ok(()));
    }

    #[test]
    fn keys_are_independent_and_the_longest_wait_wins() {
        let t = Throttle::new(ThrottleConfig::default());
        for _ in 0..7 {
            t.fail(&[IP], 0);
        }
        for _ in 0..5 {
            t.fail(&["acct:bob@example.com"], 0);
        }
        assert_eq!(t.check(&[ACCT], 0), Ok(()));
        assert_eq!(t.check(&["ip:198.51.100.1"], 0), Ok(()));
        assert_eq!(t.check(&["acct:bob@example.com"], 0), Err(secs(1)));
        assert_eq!(t.check(&[IP, "acct:bob@example.com"], 0), Err(secs(4)));
    }

    #[test]
    fn idle_history_is_forgotten() {
        let t = Throttle::new(ThrottleConfig::default());
        for _ in 0..5 {
            t.fail(&[ACCT], 0);
        }
        let later = IDLE_MS + 1_001;
        t.fail(&[ACCT], later);
        assert_eq!(t.check(&[ACCT], later), Ok(()));
    }

    #[test]
    fn sign_ups_per_address_use_the_same_mechanism() {
        let t = Throttle::new(ThrottleConfig {
            free_attempts: 3,
            base: secs(60),
            max_backoff: secs(3600),
        });
        let key = ["signup:203.0.113.7"];
        for _ in 0..2 {
            assert_eq!(t.check(&key, 0), Ok(()));
            t.fail(&key, 0);
        }
        assert_eq!(t.check(&key, 0), Ok(()));
        t.fail(&key, 0);
        assert_eq!(t.check(&key, 0), Err(secs(60)));
    }

    #[test]
    fn memory_stays_bounded() {
        let t = Throttle::new(ThrottleConfig::default());
        for i in 0..MAX_KEYS {
            t.fail(&[&format!("ip:{i}")], 0);
        }
        // Everything is idle an hour later, so the next new key evicts it all.
        t.fail(&["ip:new"], IDLE_MS + 1);
        assert_eq!(t.lock().len(), 1);
    }

    #[test]
    fn throttle_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Throttle>();
    }
}
