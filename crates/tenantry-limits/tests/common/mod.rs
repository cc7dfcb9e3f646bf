//! Helpers shared by the tests: the Redis gate, unique key prefixes, key cleanup, and
//! throw-away `redis-server` processes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tenantry_limits::{Decision, Limiter, Rate, Source};

/// The shared test Redis.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

#[allow(unused_imports)]
pub use tenantry_testkit::{
    RedisServer, free_port, redis_server_or_skip, services_required, skip_or_fail,
};

/// The shared Redis URL if it answers PING; otherwise skips (or fails, see
/// [`skip_or_fail`]) and returns `None`.
pub async fn redis_or_skip() -> Option<String> {
    let ok = async {
        let client = redis::Client::open(REDIS_URL).ok()?;
        let mut conn = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()?
        .ok()?;
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.ok()?;
        (pong == "PONG").then_some(())
    };
    if ok.await.is_some() {
        Some(REDIS_URL.to_owned())
    } else {
        skip_or_fail(&format!("redis is not reachable at {REDIS_URL}"));
        None
    }
}

/// A key prefix no other test (or test run) uses.
pub fn unique_prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("tn:test:{test}:{}:{nanos}:{n}:", std::process::id())
}

/// A plain connection for assertions and cleanup.
pub async fn raw_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Deletes every key under `prefix`.
pub async fn cleanup(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
    }
}

pub const RATE: Rate = Rate {
    per_period: 10,
    period: Duration::from_secs(1),
    burst: 5,
};

/// The shared expectations for "burst, then refill" (also used against Redis in redis.rs).
pub async fn burst_then_refill(l: &Limiter, key: &str, source: Source) {
    let mut allowed = Vec::new();
    let mut denied: Vec<Decision> = Vec::new();
    for _ in 0..20 {
        let d = l.check(key, RATE).await;
        assert_eq!(d.source, source);
        assert_eq!(d.limit, 10);
        if d.allowed {
            assert_eq!(d.retry_after, Duration::ZERO);
            allowed.push(d.remaining);
        } else {
            denied.push(d);
        }
    }
    assert_eq!(allowed, vec![4, 3, 2, 1, 0]);
    assert_eq!(denied.len(), 15);
    for d in &denied {
        assert_eq!(d.remaining, 0);
        assert!(
            d.retry_after > Duration::from_millis(60)
                && d.retry_after <= Duration::from_millis(100),
            "retry_after {:?}",
            d.retry_after
        );
        assert!(
            d.reset_after > Duration::from_millis(460)
                && d.reset_after <= Duration::from_millis(500),
            "reset_after {:?}",
            d.reset_after
        );
    }

    tokio::time::sleep(Duration::from_millis(250)).await;
    let after: Vec<bool> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(l.check(key, RATE).await.allowed);
        }
        v
    };
    assert_eq!(after, [true, true, false, false, false], "250 ms refill 2");

    // Rejected requests do not consume: after more denials, one interval gives exactly one.
    for _ in 0..20 {
        assert!(!l.check(key, RATE).await.allowed);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut n = 0;
    for _ in 0..5 {
        n += u32::from(l.check(key, RATE).await.allowed);
    }
    assert_eq!(n, 1, "one interval after denials");
}
