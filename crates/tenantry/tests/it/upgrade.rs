//! Zero-downtime operations under load: binary upgrade (`serve --upgrade`), graceful SIGTERM
//! drain, draining a backend by reload, and reloads (admin endpoint and SIGHUP) under load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::*;

const HOST: &str = "acme.localhost";

/// Outcome of one or more load loops.
#[derive(Debug, Default)]
struct Stats {
    ok: u64,
    failed: u64,
    /// Details of the first few failures.
    failures: Vec<String>,
}

impl Stats {
    fn fail(&mut self, what: String) {
        self.failed += 1;
        if self.failures.len() < 10 {
            self.failures.push(what);
        }
    }

    fn merge(&mut self, other: Self) {
        self.ok += other.ok;
        self.failed += other.failed;
        for f in other.failures {
            if self.failures.len() < 10 {
                self.failures.push(f);
            }
        }
    }
}

/// Concurrent loops of GETs (one keep-alive client each) until told to stop.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Stats>>,
}

impl Load {
    /// Starts `loops` loops sending `GET /load/...` with `Host: host` to `addr`. Each loop
    /// stops on its own after 60 s at the latest.
    fn start(addr: SocketAddr, host: &str, loops: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let tasks = (0..loops)
            .map(|i| {
                let stop = Arc::clone(&stop);
                let host = host.to_owned();
                tokio::spawn(async move {
                    let client = HttpClient::new();
                    let mut s = Stats::default();
                    let hard_stop = started + Duration::from_secs(60);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
                        n += 1;
                        let path = format!("/load/{i}/{n}");
                        let at = started.elapsed().as_millis();
                        match client.get(addr, &host, &path).await {
                            Ok(r) if r.status == 200 => s.ok += 1,
                            Ok(r) => s.fail(format!(
                                "+{at}ms loop {i} GET {path}: status {} body {:?}",
                                r.status,
                                String::from_utf8_lossy(&r.body)
                            )),
                            Err(e) => s.fail(format!("+{at}ms loop {i} GET {path}: {e}")),
                        }
                    }
                    s
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the loops and adds up what they saw.
    async fn finish(self) -> Stats {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Stats::default();
        for t in self.tasks {
            total.merge(t.await.expect("load loop panicked"));
        }
        total
    }
}

/// The last lines of a process's operational log, for assertion messages.
fn tail(lines: &Lines, n: usize) -> String {
    let all = lines.all();
    all[all.len().saturating_sub(n)..].join("\n")
}

/// Adds `attrs` (e.g. `state: drain`) to backend `b`'s entry in a YAML made by [`tenant`].
fn with_backend_attrs(yaml: &str, b: &EchoBackend, attrs: &str) -> String {
    let from = format!("{{ address: {} }}", b.addr);
    assert!(yaml.contains(&from), "backend {} not in {yaml}", b.addr);
    yaml.replace(&from, &format!("{{ address: {}, {attrs} }}", b.addr))
}

/// GET with a fresh client (so a fresh connection): status, or the transport error.
async fn status_of(addr: SocketAddr, host: &str, path: &str) -> Result<u16, String> {
    HttpClient::new()
        .get(addr, host, path)
        .await
        .map(|r| r.status.as_u16())
}

/// Waits until `f()` holds, polling every 10 ms.
async fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

/// Upgrades `old` to a new process while load runs, and checks the handover lost nothing.
async fn upgrade_under_load(old: &mut Tenantry, round: u32) -> Tenantry {
    assert!(
        old.stderr
            .wait_for("upgrade socket ready", Duration::from_secs(10))
            .await,
        "round {round}: the running process never bound the upgrade socket:\n{}",
        tail(&old.stderr, 30)
    );
    let load = Load::start(old.http, HOST, 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let upgrade_started = Instant::now();
    let mut new = old.upgrade(bin()).await;
    assert_eq!(
        new.http, old.http,
        "round {round}: the new process serves another address"
    );
    assert_eq!(
        new.admin, old.admin,
        "round {round}: the new process has another admin address"
    );
    assert_ne!(new.pid(), old.pid());
    // Keep the load going through the handover and the old process's drain.
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(upgrade_started.elapsed())).await;
    let exit = old.wait_exit(Duration::from_secs(10)).await;
    let stats = load.finish().await;
    let exit = exit.unwrap_or_else(|| {
        panic!(
            "round {round}: the old process (pid {}) still runs 10 s after the handover:\n{}",
            old.pid(),
            tail(&old.stderr, 30)
        )
    });
    assert!(
        exit.success(),
        "round {round}: the old process exited with {exit}:\n{}",
        tail(&old.stderr, 30)
    );
    assert!(
        old.stderr.contains("a new process took over the listeners"),
        "round {round}: the old process did not log the handover:\n{}",
        tail(&old.stderr, 30)
    );
    eprintln!(
        "upgrade round {round}: {} ok, {} failed; old process gone when checked at +{:?}",
        stats.ok,
        stats.failed,
        upgrade_started.elapsed()
    );
    assert!(
        new.is_running(),
        "round {round}: the new process died:\n{}",
        tail(&new.stderr, 30)
    );
    assert_eq!(
        stats.failed,
        0,
        "round {round}: {} of {} requests failed during the upgrade; first failures:\n{}\n--- old stderr:\n{}\n--- new stderr:\n{}",
        stats.failed,
        stats.ok + stats.failed,
        stats.failures.join("\n"),
        tail(&old.stderr, 20),
        tail(&new.stderr, 20)
    );
    assert!(
        stats.ok > 200,
        "round {round}: only {} requests succeeded under load",
        stats.ok
    );
    // The old one is gone: this is served by the new process.
    let r = HttpClient::new()
        .get(new.http, HOST, "/after-upgrade")
        .await
        .expect("GET after the upgrade");
    assert_eq!(
        r.status, 200,
        "round {round}: GET after the old process exited: {r:?}"
    );
    assert!(
        new.stdout
            .wait_for("/after-upgrade", Duration::from_secs(3))
            .await,
        "round {round}: the new process's access log does not show the request"
    );
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_under_continuous_load_loses_no_request() {
    let backends = echo_backends(2).await;
    let yaml = config(&tenant(
        "acme",
        HOST,
        "round_robin",
        &[&backends[0], &backends[1]],
        "",
    ));
    let mut first = Tenantry::start(bin(), &yaml).await;
    let mut second = upgrade_under_load(&mut first, 1).await;
    // The second process bound the upgrade socket itself: it can hand over again.
    let mut third = upgrade_under_load(&mut second, 2).await;
    assert!(third.is_running());
    let r = HttpClient::new()
        .get(third.http, HOST, "/")
        .await
        .expect("GET after two upgrades");
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_gracefully() {
    let backends = echo_backends(1).await;
    let yaml = config(&tenant("acme", HOST, "round_robin", &[&backends[0]], ""));
    let mut t = Tenantry::start(bin(), &yaml).await;
    let admin = t.admin.expect("admin listener");
    let http = t.http;
    assert_eq!(status_of(admin, "localhost", "/readyz").await, Ok(200));

    // A keep-alive connection opened before the signal.
    let warm = HttpClient::new();
    let r = warm
        .get(http, HOST, "/before")
        .await
        .expect("GET before the signal");
    assert_eq!(r.status, 200);
    assert!(
        r.headers.get("connection").is_none(),
        "connection header before draining: {r:?}"
    );

    // A slow request in flight when the signal arrives.
    let slow = tokio::spawn(async move {
        let r = HttpClient::new().get(http, HOST, "/slow?ms=1500").await;
        (r, Instant::now())
    });
    let b0 = &backends[0];
    assert!(
        wait_until(Duration::from_secs(5), || b0.hits() >= 2).await,
        "the slow request never reached the backend"
    );

    let signalled = Instant::now();
    t.signal("TERM");

    // Readiness turns 503 at once.
    let admin_client = HttpClient::new();
    let not_ready_after = loop {
        let r = admin_client
            .get(admin, "localhost", "/readyz")
            .await
            .expect("GET /readyz while draining");
        if r.status == 503 {
            break signalled.elapsed();
        }
        assert!(
            signalled.elapsed() < Duration::from_millis(250),
            "/readyz still answers {} {:?} {:?} after SIGTERM",
            r.status,
            String::from_utf8_lossy(&r.body),
            signalled.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };

    // Within the drain window (300 ms): a new connection and a kept-alive one are both served,
    // and told to close.
    let sent_after = signalled.elapsed();
    let fresh_client = HttpClient::new();
    let (fresh, reused) = tokio::join!(
        fresh_client.get(http, HOST, "/during-drain-new-connection"),
        warm.get(http, HOST, "/during-drain-kept-alive"),
    );
    assert!(
        sent_after < Duration::from_millis(300),
        "test too slow: requests sent {sent_after:?} after SIGTERM, past the 300 ms drain window"
    );
    let fresh = fresh.expect("new connection during the drain window");
    assert_eq!(
        fresh.status, 200,
        "new connection during the drain window: {fresh:?}"
    );
    assert_eq!(
        fresh.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "no Connection: close during the drain window: {fresh:?}"
    );
    let reused = reused.expect("kept-alive connection during the drain window");
    assert_eq!(
        reused.status, 200,
        "kept-alive connection during the drain window: {reused:?}"
    );
    assert_eq!(
        reused.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "no Connection: close on the kept-alive connection during the drain window: {reused:?}"
    );

    // After the drain window, while the slow request is still in flight: still running, but a
    // new connection is not served; it is refused (or closed) promptly rather than left
    // hanging in the listen backlog until the process exits (checked last, below).
    tokio::time::sleep(Duration::from_millis(700).saturating_sub(signalled.elapsed())).await;
    assert!(
        t.is_running(),
        "exited before the in-flight request finished:\n{}",
        tail(&t.stderr, 20)
    );
    let probe_started = Instant::now();
    let late = raw_request(
        http,
        b"GET /after-drain HTTP/1.1\r\nHost: acme.localhost\r\n\r\n",
        Duration::from_millis(400),
    )
    .await;
    let probe_took = probe_started.elapsed();
    assert!(
        !late.contains(" 200 "),
        "a connection opened after the drain window was served: {late:?}"
    );

    // The slow request finishes normally.
    let (slow, slow_done) = slow.await.expect("slow request task");
    let slow = slow.expect("the in-flight slow request failed");
    assert_eq!(slow.status, 200, "slow request: {slow:?}");
    assert_eq!(slow.backend(), "b0");
    assert!(
        slow_done.duration_since(signalled) > Duration::from_millis(1000),
        "slow request ended early"
    );

    // Then the process exits cleanly.
    let exit = t
        .wait_exit(Duration::from_secs(4))
        .await
        .unwrap_or_else(|| {
            panic!(
                "still running 4 s after the last request:\n{}",
                tail(&t.stderr, 20)
            )
        });
    let exited_after = signalled.elapsed();
    assert!(
        exit.success(),
        "exit status {exit}:\n{}",
        tail(&t.stderr, 20)
    );
    assert!(t.stderr.contains("shutting down gracefully"));
    eprintln!(
        "sigterm: readyz 503 after {not_ready_after:?}, drain requests sent after {sent_after:?}, \
         late probe took {probe_took:?} ({late:?}), exit after {exited_after:?}"
    );
    assert!(
        probe_took < Duration::from_millis(250),
        "a connection opened after the drain window was neither refused nor closed: it hung for \
         {probe_took:?} (answer {late:?}); the listening socket is still open after the drain window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_backend_finishes_in_flight_and_gets_no_new_requests() {
    let backends = echo_backends(2).await;
    let (b0, b1) = (&backends[0], &backends[1]);
    let yaml = config(&tenant("acme", HOST, "round_robin", &[b0, b1], ""));
    let t = Tenantry::start(bin(), &yaml).await;
    let http = t.http;

    // Four slow requests, each on its own connection: round robin spreads them over both.
    let started = Instant::now();
    let slow: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(async move {
                let r = HttpClient::new()
                    .get(http, HOST, &format!("/slow?ms=1500&i={i}"))
                    .await;
                (r, Instant::now())
            })
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(5), || b0.hits() + b1.hits() >= 4).await,
        "the slow requests did not all reach the backends: b0 {} b1 {}",
        b0.hits(),
        b1.hits()
    );
    let in_flight_b0 = b0.hits();
    assert!(
        in_flight_b0 >= 1,
        "no slow request landed on b0 (b1 has {})",
        b1.hits()
    );

    // Drain b0.
    t.write_config(&with_backend_attrs(&yaml, b0, "state: drain"));
    let (status, body) = t.reload().await;
    assert_eq!(status, 200, "reload: {body}");
    assert_eq!(body["status"], "reloaded", "{body}");

    // New requests all go to b1.
    let client = HttpClient::new();
    for i in 0..20 {
        let r = client
            .get(http, HOST, &format!("/fast/{i}"))
            .await
            .expect("fast request");
        assert_eq!(r.status, 200, "fast request {i}: {r:?}");
        assert_eq!(
            r.backend(),
            "b1",
            "fast request {i} after draining b0: {:?}",
            r.json()
        );
    }
    assert_eq!(
        b0.hits(),
        in_flight_b0,
        "the drained backend got new requests"
    );
    let checked = started.elapsed();
    assert!(
        slow.iter().all(|h| !h.is_finished()),
        "test too slow: the slow requests finished ({checked:?}) before the reload was checked"
    );

    // The requests in flight on b0 complete normally.
    let mut on_b0 = 0;
    for h in slow {
        let (r, _) = h.await.expect("slow task");
        let r = r.expect("an in-flight slow request failed");
        assert_eq!(r.status, 200, "in-flight slow request: {r:?}");
        let b = r.backend();
        assert!(b == "b0" || b == "b1", "unexpected backend {b:?}");
        if b == "b0" {
            on_b0 += 1;
        }
    }
    assert_eq!(on_b0, in_flight_b0, "slow requests answered by b0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_and_invalid_reload_keeps_old_config() {
    let backends = echo_backends(2).await;
    let (b0, b1) = (&backends[0], &backends[1]);
    let acme_rr = tenant("acme", HOST, "round_robin", &[b0, b1], "");
    let acme_wrr = with_backend_attrs(
        &tenant("acme", HOST, "weighted_round_robin", &[b0, b1], ""),
        b0,
        "weight: 3",
    );
    let beta = tenant("beta", "beta.localhost", "least_conn", &[b1], "");
    let config_a = config(&acme_rr);
    let config_b = config(&format!("{acme_wrr}{beta}"));
    let mut t = Tenantry::start(bin(), &config_a).await;
    assert_eq!(status_of(t.http, "beta.localhost", "/").await, Ok(404));

    let load = Load::start(t.http, HOST, 4);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..5 {
        let with_beta = i % 2 == 0;
        t.write_config(if with_beta { &config_b } else { &config_a });
        let (status, body) = t.reload().await;
        assert_eq!(status, 200, "reload {i}: {body}");
        assert_eq!(body["status"], "reloaded", "reload {i}: {body}");
        let beta_status = status_of(t.http, "beta.localhost", "/").await;
        assert_eq!(
            beta_status,
            Ok(if with_beta { 200 } else { 404 }),
            "beta.localhost after reload {i}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // The last valid config is B (acme weighted, beta present).

    // An invalid config is refused and the previous one keeps serving.
    let invalid = config_b.replace(
        &format!("{{ address: {}, weight: 3 }}", b0.addr),
        "{ address: \"127.0.0.1:\" }",
    );
    assert_ne!(invalid, config_b);
    t.write_config(&invalid);
    let (status, body) = t.reload().await;
    assert_eq!(status, 422, "invalid reload: {body}");
    let errors = body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array in {body}"));
    assert!(
        errors.iter().any(|e| e
            .as_str()
            .is_some_and(|s| s.contains("tenants[0].routes[0].backends[0].address"))),
        "errors do not name the bad address: {body}"
    );
    assert_eq!(
        status_of(t.http, HOST, "/").await,
        Ok(200),
        "acme after the refused reload"
    );
    assert_eq!(
        status_of(t.http, "beta.localhost", "/").await,
        Ok(200),
        "beta after the refused reload"
    );

    // SIGHUP reloads the file too.
    let gamma = tenant("gamma", "gamma.localhost", "round_robin", &[b0], "");
    t.write_config(&config(&format!("{acme_rr}{gamma}")));
    let hup = Instant::now();
    t.signal("HUP");
    let mut last = Err(String::new());
    while hup.elapsed() < Duration::from_secs(2) {
        last = status_of(t.http, "gamma.localhost", "/").await;
        if last == Ok(200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        last,
        Ok(200),
        "gamma.localhost not served within 2 s of SIGHUP:\n{}",
        tail(&t.stderr, 20)
    );
    assert_eq!(
        status_of(t.http, "beta.localhost", "/").await,
        Ok(404),
        "beta after SIGHUP"
    );

    let stats = load.finish().await;
    eprintln!(
        "reloads under load: {} ok, {} failed",
        stats.ok, stats.failed
    );
    assert!(t.is_running());
    assert_eq!(
        stats.failed,
        0,
        "{} of {} requests to {HOST} failed during reloads; first failures:\n{}\n--- stderr:\n{}",
        stats.failed,
        stats.ok + stats.failed,
        stats.failures.join("\n"),
        tail(&t.stderr, 20)
    );
    assert!(
        stats.ok > 100,
        "only {} requests succeeded under load",
        stats.ok
    );
}
