//! The Redis backend against a real Redis: the shared one at 127.0.0.1:6379, and throw-away
//! `redis-server` processes for the failure tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{
    RATE, RedisServer, burst_then_refill, cleanup, free_port, raw_conn, redis_or_skip,
    redis_server_or_skip, unique_prefix,
};
use tenantry_limits::{
    Decision, Limiter, OnBackendError, Rate, RedisOptions, SharedAddError, Source,
};

fn opts(url: &str, on_error: OnBackendError) -> RedisOptions {
    RedisOptions {
        on_error,
        ..RedisOptions::new(url)
    }
}

/// Waits until `l` reports the backend up (first connection made).
async fn wait_up(l: &Limiter, within: Duration) {
    let deadline = Instant::now() + within;
    while !l.backend_up() {
        assert!(Instant::now() < deadline, "redis limiter did not connect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks `key` until a decision comes from Redis; returns how long that took.
async fn wait_shared(l: &Limiter, key: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let d = l.check(key, Rate::per_second(1000, 1000)).await;
        if d.source == Source::Shared {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "still {:?} after {within:?}",
            d.source
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn redis_burst_then_refill() {
    let Some(url) = redis_or_skip().await else {
        return;
    };
    let prefix = unique_prefix("burst");
    let l = Limiter::redis(RedisOptions::new(&url)).unwrap();
    assert!(l.is_shared());
    wait_up(&l, Duration::from_secs(3)).await;
    let key = format!("{prefix}k");
    burst_then_refill(&l, &key, Source::Shared).await;

    // The key expires when the bucket is full again (PEXPIRE = reset_after).
    let mut conn = raw_conn(&url).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 500, "pttl {pttl}");
    assert_eq!(l.backend_errors(), 0);
    cleanup(&url, &prefix).await;
}

#[tokio::test]
async fn redis_key_expires_when_full() {
    let Some(url) = redis_or_skip().await else {
        return;
    };
    let prefix = unique_prefix("expiry");
    let l = Limiter::redis(RedisOptions::new(&url)).unwrap();
    wait_up(&l, Duration::from_secs(3)).await;
    let key = format!("{prefix}k");
    let r = Rate::per_second(20, 2);
    assert!(l.check(&key, r).await.allowed);
    assert!(l.check(&key, r).await.allowed);
    let mut conn = raw_conn(&url).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 1);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0, "key should expire after reset_after (100 ms)");
    cleanup(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_two_nodes_share_the_count() {
    let Some(url) = redis_or_skip().await else {
        return;
    };
    let prefix = unique_prefix("nodes");
    let a = Limiter::redis(RedisOptions::new(&url)).unwrap();
    let b = Limiter::redis(RedisOptions::new(&url)).unwrap();
    wait_up(&a, Duration::from_secs(3)).await;
    wait_up(&b, Duration::from_secs(3)).await;
    let key = format!("{prefix}shared");
    let rate = Rate::per_minute(60, 50);
    let (mut allowed_a, mut allowed_b) = (0u64, 0u64);
    for i in 0..300 {
        let (l, n) = if i % 2 == 0 {
            (&a, &mut allowed_a)
        } else {
            (&b, &mut allowed_b)
        };
        let d = l.check(&key, rate).await;
        assert_eq!(d.source, Source::Shared);
        *n += u64::from(d.allowed);
    }
    let total = allowed_a + allowed_b;
    assert!((50..=51).contains(&total), "allowed {total}");
    assert!(
        allowed_a >= 24 && allowed_b >= 24,
        "{allowed_a} / {allowed_b}"
    );
    cleanup(&url, &prefix).await;
}

/// A refusal of the shared counter is remembered until it lapses: refusals meanwhile cost no
/// Redis call (a flood over the limit does not load the shared Redis), a different rate for
/// the key is not answered from the memory, and the first request after the refusal lapses
/// goes to Redis and is allowed.
#[tokio::test]
async fn redis_refusals_are_remembered_until_they_lapse() {
    let Some(url) = redis_or_skip().await else {
        return;
    };
    let prefix = unique_prefix("remember");
    let l = Limiter::redis(RedisOptions::new(&url)).unwrap();
    wait_up(&l, Duration::from_secs(3)).await;
    let key = format!("{prefix}k");
    let rate = Rate::per_minute(60, 1); // one a second
    let first = l.check(&key, rate).await;
    assert!(first.allowed);
    let refused = l.check(&key, rate).await;
    assert!(!refused.allowed);
    assert_eq!(refused.source, Source::Shared);
    let calls = l.backend_calls();
    let mut last = refused.retry_after;
    for _ in 0..50 {
        let d = l.check(&key, rate).await;
        assert!(!d.allowed);
        assert_eq!(d.source, Source::Shared);
        assert_eq!((d.limit, d.remaining), (60, 0));
        assert!(
            d.retry_after <= last && d.retry_after > Duration::ZERO,
            "{d:?}"
        );
        assert!(d.reset_after >= d.retry_after, "{d:?}");
        last = d.retry_after;
    }
    assert_eq!(l.backend_calls(), calls, "remembered refusals call Redis");
    assert_eq!(l.cached_denials(), 50);

    // Another rate for the same key (a plan change) asks Redis.
    let roomy = Rate::per_minute(60, 100);
    assert!(l.check(&key, roomy).await.allowed);
    assert_eq!(l.backend_calls(), calls + 1);

    // Another node has no memory of it and asks Redis, which refuses too.
    let other = Limiter::redis(RedisOptions::new(&url)).unwrap();
    wait_up(&other, Duration::from_secs(3)).await;
    assert!(!other.check(&key, rate).await.allowed);
    assert_eq!(other.cached_denials(), 0);

    // Once the refusal lapses, Redis decides again: the second allowed request above pushed the
    // key one more second out, so wait for Redis's own retry time.
    let d = l.check(&key, rate).await;
    assert!(!d.allowed);
    let wait = other.check(&key, rate).await.retry_after;
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
    let before = l.backend_calls();
    let d = l.check(&key, rate).await;
    assert!(d.allowed, "{d:?}");
    assert_eq!(l.backend_calls(), before + 1);
    cleanup(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_concurrent_checks_are_atomic() {
    let Some(url) = redis_or_skip().await else {
        return;
    };
    let prefix = unique_prefix("atomic");
    let a = Limiter::redis(RedisOptions::new(&url)).unwrap();
    let b = Limiter::redis(RedisOptions::new(&url)).unwrap();
    wait_up(&a, Duration::from_secs(3)).await;
    wait_up(&b, Duration::from_secs(3)).await;
    let key = format!("{prefix}k");
    let rate = Rate::per_minute(60, 40);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let l = if i % 2 == 0 { a.clone() } else { b.clone() };
        let key = key.clone();
        tasks.push(tokio::spawn(async move { l.check(&key, rate).await }));
    }
    let mut allowed = 0;
    for t in tasks {
        let d: Decision = t.await.unwrap();
        assert_eq!(d.source, Source::Shared, "{d:?}");
        allowed += u32::from(d.allowed);
    }
    assert!((40..=41).contains(&allowed), "allowed {allowed}");
    cleanup(&url, &prefix).await;
}

#[tokio::test]
async fn redis_works_after_script_flush() {
    let Some(url) = redis_or_skip().await else {
        return;
    };
    let prefix = unique_prefix("flush");
    let l = Limiter::redis(RedisOptions::new(&url)).unwrap();
    wait_up(&l, Duration::from_secs(3)).await;
    let key = format!("{prefix}k");
    let r = Rate::per_minute(60, 3);
    assert!(l.check(&key, r).await.allowed);
    assert_eq!(
        l.add(&format!("{prefix}q"), 2, Duration::from_secs(10))
            .await,
        2
    );
    let mut conn = raw_conn(&url).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let d = l.check(&key, r).await;
    assert_eq!(d.source, Source::Shared);
    assert!(d.allowed);
    assert_eq!(d.remaining, 1);
    assert_eq!(
        l.add(&format!("{prefix}q"), 3, Duration::from_secs(10))
            .await,
        5
    );
    assert_eq!(l.backend_errors(), 0);
    cleanup(&url, &prefix).await;
}

#[tokio::test]
async fn redis_counters_fixed_window_shared() {
    let Some(url) = redis_or_skip().await else {
        return;
    };
    let prefix = unique_prefix("quota");
    let a = Limiter::redis(RedisOptions::new(&url)).unwrap();
    let b = Limiter::redis(RedisOptions::new(&url)).unwrap();
    wait_up(&a, Duration::from_secs(3)).await;
    wait_up(&b, Duration::from_secs(3)).await;
    let key = format!("{prefix}day");
    let ttl = Duration::from_millis(400);
    assert_eq!(a.get(&key).await, 0);
    assert_eq!(a.add(&key, 5, ttl).await, 5);
    assert_eq!(b.add(&key, 2, ttl).await, 7);
    assert_eq!(a.get(&key).await, 7);
    assert_eq!(b.get(&key).await, 7);

    let mut conn = raw_conn(&url).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 400, "pttl {pttl}");
    // A later add keeps the first expiry (fixed window).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(a.add(&key, 1, ttl).await, 8);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 220, "pttl {pttl} after a later add");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.get(&key).await, 0, "expired after the ttl");
    assert_eq!(b.add(&key, 1, ttl).await, 1, "a new window");
    assert_eq!(a.backend_errors() + b.backend_errors(), 0);
    cleanup(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fallback_and_recovery() {
    if !redis_server_or_skip() {
        return;
    }
    let port = free_port();
    let mut server = RedisServer::start(port);
    let url = server.url();
    let local = Limiter::redis(opts(&url, OnBackendError::Local)).unwrap();
    let allow = Limiter::redis(opts(&url, OnBackendError::Allow)).unwrap();
    let deny = Limiter::redis(opts(&url, OnBackendError::Deny)).unwrap();
    for l in [&local, &allow, &deny] {
        wait_up(l, Duration::from_secs(3)).await;
        let d = l.check("k", RATE).await;
        assert_eq!(d.source, Source::Shared);
        assert!(d.allowed);
    }
    assert_eq!(local.add("q", 10, Duration::from_secs(60)).await, 10);

    server.kill();
    let max = RedisOptions::DEFAULT_TIMEOUT + Duration::from_millis(150);

    // Local fallback with this node's share of the rate: 2 nodes -> 5/s, burst 2.
    local.set_nodes(2);
    let mut allowed = 0;
    for _ in 0..10 {
        let t = Instant::now();
        let d = local.check("fresh", RATE).await;
        assert!(t.elapsed() < max, "check took {:?}", t.elapsed());
        assert_eq!(d.source, Source::FallbackLocal);
        assert_eq!(d.limit, 10);
        allowed += u32::from(d.allowed);
    }
    assert_eq!(allowed, 2, "node share of burst 5 over 2 nodes");
    assert!(local.backend_errors() > 0);
    assert!(!local.backend_up());
    // Counters fall back to the local counter.
    assert_eq!(local.add("q", 3, Duration::from_secs(60)).await, 3);
    assert_eq!(local.get("q").await, 3);

    for _ in 0..5 {
        let t = Instant::now();
        let d = allow.check("k", RATE).await;
        assert!(t.elapsed() < max, "check took {:?}", t.elapsed());
        assert_eq!(d.source, Source::FailOpen);
        assert!(d.allowed);
        let t = Instant::now();
        let d = deny.check("k", RATE).await;
        assert!(t.elapsed() < max, "check took {:?}", t.elapsed());
        assert_eq!(d.source, Source::FailClosed);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(1));
    }
    assert!(allow.backend_errors() > 0 && deny.backend_errors() > 0);

    // Keep probing while it is down for a while: still quick, never a panic.
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        let t = Instant::now();
        let d = local.check("k", RATE).await;
        assert!(t.elapsed() < max, "check took {:?}", t.elapsed());
        assert_eq!(d.source, Source::FallbackLocal);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }

    let _server = RedisServer::start(port);
    for l in [&local, &allow, &deny] {
        let took = wait_shared(l, "k2", Duration::from_millis(2500)).await;
        eprintln!("shared again after {took:?}");
        assert!(l.backend_up());
    }
    // The restarted server is empty: the counter starts over from Redis.
    assert_eq!(local.get("q").await, 0);
}

/// A connection left idle across a Redis restart fails the next command with a dropped
/// connection: it is sent once more on the new connection instead of falling back. And while
/// Redis is down, `add_shared` adds nothing anywhere (its caller keeps the amount).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_an_idle_connection_costs_no_decision() {
    if !redis_server_or_skip() {
        return;
    }
    let port = free_port();
    let mut server = RedisServer::start(port);
    let l = Limiter::redis(opts(&server.url(), OnBackendError::Deny)).unwrap();
    wait_up(&l, Duration::from_secs(3)).await;
    assert_eq!(l.check("k", RATE).await.source, Source::Shared);
    assert_eq!(l.add_shared("q", 2, Duration::from_secs(60)).await, Ok(2));
    // Restarted with no command in between: the connection is stale.
    server.kill();
    let mut server = RedisServer::start(port);
    let d = l.check("k", RATE).await;
    assert_eq!(d.source, Source::Shared, "{d:?}");
    assert!(d.allowed);
    assert_eq!(l.backend_errors(), 0, "the stale connection cost an error");
    // Down: `add_shared` adds nothing anywhere.
    server.kill();
    // The first try after the kill was sent (and failed), so it may have run; after that the
    // skip window answers at once, without sending.
    let first = l.add_shared("q", 5, Duration::from_secs(60)).await;
    assert!(first.is_err(), "{first:?}");
    assert_eq!(
        l.add_shared("q", 5, Duration::from_secs(60)).await,
        Err(SharedAddError::NotSent)
    );
    assert_eq!(l.local_len(), 0, "nothing was added locally");
    assert!(l.backend_errors() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_not_listening_at_start() {
    if !redis_server_or_skip() {
        return;
    }
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let l = Limiter::redis(opts(&url, OnBackendError::Local)).unwrap();
    let max = RedisOptions::DEFAULT_TIMEOUT + Duration::from_millis(150);
    let t = Instant::now();
    let d = l.check("k", RATE).await;
    assert!(t.elapsed() < max, "check took {:?}", t.elapsed());
    assert_eq!(d.source, Source::FallbackLocal);
    assert!(d.allowed);
    assert!(!l.backend_up());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(l.backend_errors() > 0);

    let _server = RedisServer::start(port);
    let took = wait_shared(&l, "k", Duration::from_millis(2500)).await;
    eprintln!("connected after {took:?}");
    assert!(l.backend_up());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hung_server_times_out() {
    if !redis_server_or_skip() {
        return;
    }
    let port = free_port();
    let server = RedisServer::start(port);
    let l = Limiter::redis(opts(&server.url(), OnBackendError::Local)).unwrap();
    wait_up(&l, Duration::from_secs(3)).await;
    assert_eq!(l.check("k", RATE).await.source, Source::Shared);

    server.signal("STOP");
    let t = Instant::now();
    let d = l.check("k", RATE).await;
    let took = t.elapsed();
    assert_eq!(d.source, Source::FallbackLocal);
    assert!(
        took >= Duration::from_millis(80) && took < Duration::from_millis(250),
        "hung check took {took:?}"
    );
    assert_eq!(l.backend_errors(), 1);
    // Within retry_interval nobody waits for Redis.
    let t = Instant::now();
    for _ in 0..10 {
        assert_eq!(l.check("k", RATE).await.source, Source::FallbackLocal);
    }
    assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
    assert_eq!(l.backend_errors(), 1);

    server.signal("CONT");
    let took = wait_shared(&l, "k", Duration::from_millis(2500)).await;
    eprintln!("shared again after {took:?}");
}

/// On a single-threaded runtime (the gateway's worker shape), decisions asked for together go
/// to Redis together: a few script calls for hundreds of decisions, each still decided on the
/// shared counter, in order. When Redis is gone, the whole batch falls back.
#[tokio::test]
async fn redis_batched_decisions_on_one_thread() {
    if !redis_server_or_skip() {
        return;
    }
    let port = free_port();
    let mut server = RedisServer::start(port);
    let l = Limiter::redis(opts(&server.url(), OnBackendError::Local)).unwrap();
    wait_up(&l, Duration::from_secs(3)).await;
    // Burst 50, one more per hour: exactly 50 of each key's 100 concurrent checks pass.
    let rate = Rate::new(1, Duration::from_secs(3600), 50);
    let calls_before = l.backend_calls();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..400 {
        let l = l.clone();
        tasks.spawn(async move { (i % 4, l.check(&format!("batch:{}", i % 4), rate).await) });
    }
    let mut remaining = vec![Vec::new(); 4];
    while let Some(joined) = tasks.join_next().await {
        let (k, d): (usize, Decision) = joined.unwrap();
        assert_eq!(d.source, Source::Shared);
        if d.allowed {
            remaining[k].push(d.remaining);
        } else {
            assert!(d.retry_after > Duration::from_secs(3000), "{d:?}");
        }
    }
    for (k, mut r) in remaining.into_iter().enumerate() {
        r.sort_unstable();
        assert_eq!(r, (0..50).collect::<Vec<u64>>(), "key {k}");
    }
    let calls = l.backend_calls() - calls_before;
    // One batch of four runs (one per key): one script call, not one per 64 decisions.
    assert!(
        (1..=3).contains(&calls),
        "400 concurrent decisions on 4 keys took {calls} Redis calls"
    );
    assert_eq!(l.backend_errors(), 0);

    server.kill();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let l = l.clone();
        tasks.spawn(async move { l.check("batch:down", RATE).await });
    }
    let mut allowed = 0;
    while let Some(joined) = tasks.join_next().await {
        let d = joined.unwrap();
        assert_eq!(d.source, Source::FallbackLocal);
        allowed += u32::from(d.allowed);
    }
    assert_eq!(allowed, 5, "the local fallback's burst");
    assert!(l.backend_errors() > 0);
    let by_source = l.decisions();
    assert!(by_source.contains(&(Source::Shared, 400)), "{by_source:?}");
    assert!(
        by_source.contains(&(Source::FallbackLocal, 20)),
        "{by_source:?}"
    );
}

/// A Redis limiter whose shared connection lives on a multi-threaded runtime that keeps
/// running (returned with it), for tests that run single-threaded runtimes one after another
/// on their own thread. `None` when Redis is not reachable (skipped).
fn limiter_on_its_own_runtime() -> Option<(String, tokio::runtime::Runtime, Limiter)> {
    let url = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(redis_or_skip())?;
    let home = tokio::runtime::Runtime::new().unwrap();
    let l = home.block_on(async {
        let l = Limiter::redis(RedisOptions::new(&url)).unwrap();
        wait_up(&l, Duration::from_secs(3)).await;
        l
    });
    Some((url, home, l))
}

fn single_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A batch whose flush never ran (its runtime shut down first) is dropped with it: a later
/// runtime on the same thread starts a batch of its own instead of joining one that will
/// never be sent.
#[test]
fn a_batch_left_by_a_shut_down_runtime_is_not_joined() {
    let Some((url, home, l)) = limiter_on_its_own_runtime() else {
        return;
    };
    let prefix = unique_prefix("orphan");
    let first = single_thread_runtime();
    let key_a = format!("{prefix}a");
    first.block_on(async {
        let mut check = Box::pin(l.check(&key_a, RATE));
        // One poll: the decision joins a new batch and its flush is spawned, not yet run.
        let polled =
            std::future::poll_fn(|cx| std::task::Poll::Ready(check.as_mut().poll(cx).is_pending()))
                .await;
        assert!(polled, "the decision waits for its batch");
    });
    drop(first);
    let second = single_thread_runtime();
    let key_b = format!("{prefix}b");
    let d = second.block_on(async {
        tokio::time::timeout(Duration::from_secs(2), l.check(&key_b, RATE))
            .await
            .expect("a decision on a new runtime is not stuck behind the old batch")
    });
    assert!(d.allowed);
    assert_eq!(d.source, Source::Shared);
    home.block_on(cleanup(&url, &prefix));
}

/// A thread that runs one single-threaded runtime after another (tools, tests) gets a
/// per-thread connection on each: one left by a runtime that has shut down (its driver task
/// gone with it) is replaced, not used, so decisions keep going to Redis.
#[test]
fn a_new_runtime_on_the_same_thread_gets_its_own_connection() {
    let Some((url, home, l)) = limiter_on_its_own_runtime() else {
        return;
    };
    let prefix = unique_prefix("rt-churn");
    for round in 0..3 {
        let rt = single_thread_runtime();
        let key = format!("{prefix}{round}");
        rt.block_on(async {
            // Long enough for this runtime's own connection to be made and used.
            for _ in 0..4 {
                let d = l.check(&key, RATE).await;
                assert_eq!(d.source, Source::Shared, "round {round}");
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        });
    }
    assert_eq!(l.backend_errors(), 0);
    home.block_on(cleanup(&url, &prefix));
}
