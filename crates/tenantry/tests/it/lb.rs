//! Load-balancing algorithms through the real binary: distributions and stickiness.

use std::collections::HashMap;

use super::*;

async fn distribution(t: &Tenantry, host: &str, n: usize) -> HashMap<String, usize> {
    let c = HttpClient::new();
    let mut counts = HashMap::new();
    for _ in 0..n {
        let r = c.get(t.http, host, "/").await.unwrap();
        assert_eq!(r.status, 200);
        *counts.entry(r.backend()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_follows_weights() {
    let b = echo_backends(2).await;
    let yaml = config(&format!(
        "  - id: acme\n    plan: enterprise\n    routes:\n      - id: web\n        host: acme.localhost\n        algorithm: weighted_round_robin\n        backends: [ {{ address: {}, weight: 3 }}, {{ address: {}, weight: 1 }} ]\n",
        b[0].addr, b[1].addr
    ));
    let t = Tenantry::start(bin(), &yaml).await;
    let d = distribution(&t, "acme.localhost", 400).await;
    let share = d.get("b0").copied().unwrap_or(0) as f64 / 400.0;
    assert!((0.70..=0.80).contains(&share), "3:1 weights gave {d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly() {
    let b = echo_backends(3).await;
    let t = start_acme("round_robin", &[&b[0], &b[1], &b[2]], "").await;
    let d = distribution(&t, "acme.localhost", 300).await;
    for name in ["b0", "b1", "b2"] {
        let n = d.get(name).copied().unwrap_or(0);
        assert!((90..=110).contains(&n), "{d:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_keeps_a_client_on_one_backend() {
    let b = echo_backends(3).await;
    let t = start_acme("ip_hash", &[&b[0], &b[1], &b[2]], "").await;
    let d = distribution(&t, "acme.localhost", 60).await;
    assert_eq!(
        d.len(),
        1,
        "one client address must stick to one backend: {d:?}"
    );
    // Consistent hashing: removing another backend from the route does not move the client.
    let sticky = d.keys().next().unwrap().clone();
    let keep: Vec<&EchoBackend> = b
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            format!("b{i}") == sticky || (*i == 0 && sticky != "b0") || (*i == 1 && sticky == "b0")
        })
        .map(|(_, x)| x)
        .collect();
    assert_eq!(keep.len(), 2);
    t.write_config(&config(&tenant(
        "acme",
        "acme.localhost",
        "ip_hash",
        &keep,
        "",
    )));
    let (status, body) = t.reload().await;
    assert_eq!(status, 200, "{body}");
    let d2 = distribution(&t, "acme.localhost", 20).await;
    assert_eq!(
        d2.keys().collect::<Vec<_>>(),
        vec![&sticky],
        "client moved after a reload: {d2:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_avoids_the_busy_backend() {
    let b = echo_backends(2).await;
    let t = start_acme("least_conn", &[&b[0], &b[1]], "").await;
    // Occupy one backend with slow requests.
    let c = HttpClient::new();
    let mut slow = Vec::new();
    for _ in 0..2 {
        let c = c.clone();
        let addr = t.http;
        slow.push(tokio::spawn(async move {
            c.get(addr, "acme.localhost", "/slow?ms=1500").await
        }));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // Two slow requests: least_conn put one on each backend. A third makes one backend busier.
    let c2 = c.clone();
    let addr = t.http;
    slow.push(tokio::spawn(async move {
        c2.get(addr, "acme.localhost", "/slow?ms=1500").await
    }));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let fast = distribution(&t, "acme.localhost", 10).await;
    let mut busy = HashMap::new();
    for s in slow {
        let r = s.await.unwrap().unwrap();
        *busy.entry(r.backend()).or_insert(0) += 1;
    }
    let busiest = busy
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(k, _)| k.clone())
        .unwrap();
    assert_eq!(
        busy.len(),
        2,
        "slow requests spread over both backends: {busy:?}"
    );
    assert_eq!(
        fast.get(&busiest),
        None,
        "fast requests avoided {busiest}: fast {fast:?}, slow {busy:?}"
    );
}
