//! The in-process backend through the public API, with the real clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

mod common;

use common::burst_then_refill;
use tenantry_limits::{Limiter, OnBackendError, Rate, RedisOptions, Source};

#[tokio::test]
async fn local_burst_then_refill() {
    let l = Limiter::local();
    assert!(!l.is_shared());
    assert!(l.backend_up());
    assert_eq!(l.backend_errors(), 0);
    burst_then_refill(&l, "tn:rl:t:r:k", Source::Local).await;
}

#[tokio::test]
async fn local_keys_are_independent_and_clones_share_state() {
    let l = Limiter::local();
    let l2 = l.clone();
    let r = Rate::per_minute(60, 2);
    assert!(l.check("a", r).await.allowed);
    assert!(l2.check("a", r).await.allowed);
    assert!(!l.check("a", r).await.allowed);
    assert!(l.check("b", r).await.allowed);
}

#[tokio::test]
async fn zero_rate_denies_everything() {
    let l = Limiter::local();
    let r = Rate::per_minute(0, 10);
    for _ in 0..3 {
        let d = l.check("z", r).await;
        assert!(!d.allowed);
        assert_eq!(d.limit, 0);
        assert_eq!(d.retry_after, Duration::from_secs(60));
        assert_eq!(d.source, Source::Local);
    }
}

#[tokio::test]
async fn local_reset_after_is_time_to_full() {
    let l = Limiter::local();
    let r = Rate::per_second(10, 5);
    let d = l.check("x", r).await;
    assert!(d.allowed);
    assert_eq!(d.remaining, 4);
    assert!(
        d.reset_after <= Duration::from_millis(100) && d.reset_after > Duration::from_millis(90)
    );
    let d = l.check("x", r).await;
    assert!(
        d.reset_after <= Duration::from_millis(200) && d.reset_after > Duration::from_millis(180)
    );
}

#[tokio::test]
async fn local_counters_fixed_window() {
    let l = Limiter::local();
    let ttl = Duration::from_millis(200);
    assert_eq!(l.get("tn:q:c").await, 0);
    assert_eq!(l.add("tn:q:c", 5, ttl).await, 5);
    assert_eq!(l.add("tn:q:c", 2, ttl).await, 7);
    assert_eq!(l.get("tn:q:c").await, 7);
    tokio::time::sleep(Duration::from_millis(120)).await;
    // adding does not extend the window
    assert_eq!(l.add("tn:q:c", 1, ttl).await, 8);
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(l.get("tn:q:c").await, 0);
    assert_eq!(l.add("tn:q:c", 1, ttl).await, 1);
}

#[test]
fn node_share() {
    let r = Rate::per_minute(100, 10);
    assert_eq!(r.node_share(1), r);
    assert_eq!(r.node_share(0), r);
    assert_eq!(r.node_share(4), Rate::per_minute(25, 2));
    assert_eq!(r.node_share(1000), Rate::per_minute(1, 1));
    assert_eq!(Rate::per_minute(0, 10).node_share(3).per_period, 0);
}

#[test]
fn on_backend_error_names() {
    for v in [
        OnBackendError::Local,
        OnBackendError::Allow,
        OnBackendError::Deny,
    ] {
        assert_eq!(OnBackendError::parse(v.as_str()), Some(v));
        assert_eq!(v.to_string(), v.as_str());
    }
    assert_eq!(OnBackendError::parse(" Deny "), Some(OnBackendError::Deny));
    assert_eq!(OnBackendError::parse("open"), None);
    assert_eq!(OnBackendError::default(), OnBackendError::Local);
}

#[test]
fn limiter_is_send_sync_clone() {
    fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<Limiter>();
}

#[test]
fn redis_limiter_needs_a_runtime() {
    let e = Limiter::redis(RedisOptions::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no tokio runtime: the redis limiter must be created inside one"
    );
}

#[tokio::test]
async fn invalid_url_is_an_error() {
    let e = Limiter::redis(RedisOptions::new("http://nope")).unwrap_err();
    assert!(e.to_string().starts_with("invalid redis url"), "{e}");
    assert!(Limiter::redis(RedisOptions::new("not a url at all")).is_err());
}

#[test]
fn many_idle_keys_stay_bounded() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let l = Limiter::local();
    let r = Rate::new(1000, Duration::from_millis(1), 1);
    rt.block_on(async {
        for i in 0..300_000u32 {
            let _ = l.check(&format!("k{i}"), r).await;
        }
    });
    // Each key's state expires after 1 µs, so sweeps keep at most ~1024 per shard (64 shards).
    assert!(l.local_len() <= 64 * 1024, "{}", l.local_len());
}
