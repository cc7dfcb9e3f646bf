//! Active and passive health checks through the real binary.

use std::time::{Duration, Instant};

use super::*;

const HC: &str = "        health_check: { path: /healthz, interval: 100ms, timeout: 200ms, healthy_threshold: 2, unhealthy_threshold: 2 }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_is_ejected_without_client_errors_and_readmitted() {
    let mut b = echo_backends(2).await;
    let t = start_acme("round_robin", &[&b[0], &b[1]], HC).await;
    let c = HttpClient::new();
    for _ in 0..4 {
        assert_eq!(
            c.get(t.http, "acme.localhost", "/").await.unwrap().status,
            200
        );
    }
    let dead_addr = b[1].addr;
    b.pop().unwrap().stop();
    // GETs keep succeeding: a connect failure is retried once on the other backend.
    for _ in 0..40 {
        let r = c.get(t.http, "acme.localhost", "/").await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.backend(), "b0");
    }
    assert!(
        t.stderr
            .wait_for("backend ejected", Duration::from_secs(2))
            .await
            || t.stderr.contains("\"state\":\"down\"")
    );
    let text = t.metrics().await;
    assert!(
        text.contains(&format!(
            "tenantry_backend_up{{tenant=\"acme\",route=\"web\",backend=\"{dead_addr}\"}} 0"
        )),
        "{text}"
    );

    // Restarted: the active check brings it back after 2 successes.
    let back = restart_backend(dead_addr, "b1").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = c.get(t.http, "acme.localhost", "/").await.unwrap();
        if r.backend() == "b1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted backend was not re-admitted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back.hits() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_endpoint_takes_backend_out_until_it_recovers() {
    let b = echo_backends(2).await;
    let t = start_acme("round_robin", &[&b[0], &b[1]], HC).await;
    let c = HttpClient::new();
    b[0].set_health_status(500);
    assert!(
        t.stderr
            .wait_for("\"state\":\"down\"", Duration::from_secs(3))
            .await,
        "no down transition logged"
    );
    let before = b[0].hits();
    for _ in 0..20 {
        assert_eq!(
            c.get(t.http, "acme.localhost", "/")
                .await
                .unwrap()
                .backend(),
            "b1"
        );
    }
    assert_eq!(b[0].hits(), before, "an unhealthy backend got traffic");
    b[0].set_health_status(200);
    assert!(
        t.stderr
            .wait_for("\"state\":\"up\"", Duration::from_secs(3))
            .await,
        "no up transition logged"
    );
    let mut seen_b0 = false;
    for _ in 0..10 {
        seen_b0 |= c
            .get(t.http, "acme.localhost", "/")
            .await
            .unwrap()
            .backend()
            == "b0";
    }
    assert!(seen_b0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_on_5xx_without_active_checks() {
    let b = echo_backends(2).await;
    let t = start_acme("round_robin", &[&b[0], &b[1]], "").await;
    let c = HttpClient::new();
    // /status/502 makes whichever backend answers return 502; three in a row on b0 eject it.
    let mut fives = 0;
    for _ in 0..6 {
        let r = c
            .get(t.http, "acme.localhost", "/status/502")
            .await
            .unwrap();
        if r.status == 502 {
            fives += 1;
        }
    }
    assert_eq!(fives, 6, "5xx from upstreams are passed through");
    assert!(
        t.stderr
            .wait_for("backend ejected", Duration::from_secs(2))
            .await
    );
    // Both backends answered 502 three times: both are out, so the route has no healthy backend.
    let r = c.get(t.http, "acme.localhost", "/").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "no_healthy_backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_whose_connect_fails_is_retried_on_another_backend_even_with_a_body() {
    let mut b = echo_backends(2).await;
    // Round robin over a dead and a live backend; no active checks, so the dead one is only
    // found out by connecting to it.
    let dead = b.remove(0);
    let dead_addr = dead.addr;
    dead.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let yaml = config(&format!(
        "  - id: acme\n    routes:\n      - id: web\n        host: acme.localhost\n        backends: [ {{ address: {dead_addr} }}, {{ address: {} }} ]\n",
        b[0].addr
    ));
    let t = Tenantry::start(bin(), &yaml).await;
    let c = HttpClient::new();
    for i in 0..4 {
        let body = bytes::Bytes::from(vec![b'x'; 1000 + i]);
        let r = c
            .request("POST", t.http, "acme.localhost", "/submit", &[], body)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.backend(), "b1");
        assert_eq!(
            r.json()["body_bytes"],
            1000 + i,
            "the body reached the live backend whole"
        );
    }
    let text = t.metrics().await;
    let retries: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tenantry_upstream_retries_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(retries >= 1, "{text}");
}
