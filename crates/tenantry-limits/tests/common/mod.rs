//! Helpers shared by the tests: the Redis gate, unique key prefixes, key cleanup, and
//! throw-away `redis-server` processes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tenantry_limits::{Decision, Limiter, Rate, Source};

/// The shared test Redis.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Whether a missing service must fail the test (`TENANTRY_REQUIRE_SERVICES=1`, as in CI).
pub fn services_required() -> bool {
    std::env::var("TENANTRY_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Prints `skipped: <reason>`, or panics when services are required.
pub fn skip_or_fail(reason: &str) {
    if services_required() {
        panic!("{reason} (TENANTRY_REQUIRE_SERVICES=1)");
    }
    eprintln!("skipped: {reason}");
}

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

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Whether `redis-server` can be run; skips (or fails) when not.
pub fn redis_server_or_skip() -> bool {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip_or_fail("redis-server is not on PATH");
    }
    ok
}

/// A `redis-server` child on 127.0.0.1:`port`, killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    /// Starts a server without persistence and waits until it accepts connections.
    pub fn start(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &std::env::temp_dir().display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let server = RedisServer {
            child: Some(child),
            port,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal (`STOP`, `CONT`, ...) with kill(1).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
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
