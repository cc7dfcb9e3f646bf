//! Routing by host (exact, wildcard, case, port), path prefix, and the proxy's own answers.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_wildcard_and_longest_prefix() {
    let b = echo_backends(4).await;
    let yaml = config(&format!(
        "  - id: acme\n    routes:\n      - {{ id: web, host: acme.localhost, backends: [ {{ address: {} }} ] }}\n      - {{ id: api, host: acme.localhost, path_prefix: /api, backends: [ {{ address: {} }} ] }}\n      - {{ id: apiv2, host: acme.localhost, path_prefix: /api/v2, backends: [ {{ address: {} }} ] }}\n  - id: globex\n    routes:\n      - {{ id: any, host: \"*.globex.localhost\", backends: [ {{ address: {} }} ] }}\n",
        b[0].addr, b[1].addr, b[2].addr, b[3].addr
    ));
    let t = Tenantry::start(bin(), &yaml).await;
    let c = HttpClient::new();
    let cases = [
        ("acme.localhost", "/", "b0"),
        ("ACME.localhost:8080", "/index.html", "b0"),
        ("acme.localhost", "/apix", "b0"),
        ("acme.localhost", "/api", "b1"),
        ("acme.localhost", "/api/v1/users", "b1"),
        ("acme.localhost", "/api/v2/users?x=1", "b2"),
        ("www.globex.localhost", "/", "b3"),
        ("a.b.globex.localhost", "/deep", "b3"),
    ];
    for (host, path, want) in cases {
        let r = c.get(t.http, host, path).await.unwrap();
        assert_eq!(r.status, 200, "{host}{path}");
        assert_eq!(r.backend(), want, "{host}{path} -> {}", r.json());
    }
    // The wildcard does not cover the bare suffix.
    let r = c.get(t.http, "globex.localhost", "/").await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "unknown_host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_no_route_and_no_healthy_backend_are_json_errors() {
    let b = echo_backends(1).await;
    let yaml = config(&format!(
        "  - id: acme\n    routes:\n      - {{ id: api, host: acme.localhost, path_prefix: /api, backends: [ {{ address: {} }} ] }}\n      - {{ id: down, host: down.localhost, backends: [ {{ address: {}, state: drain }} ] }}\n",
        b[0].addr, b[0].addr
    ));
    let t = Tenantry::start(bin(), &yaml).await;
    let c = HttpClient::new();
    let r = c.get(t.http, "nobody.localhost", "/").await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "unknown_host");
    assert_eq!(r.headers["content-type"], "application/json");
    let rid = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(r.json()["request_id"], rid.as_str());

    let r = c.get(t.http, "acme.localhost", "/other").await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "no_route");

    let r = c.get(t.http, "down.localhost", "/").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "no_healthy_backend");
    assert_eq!(b[0].hits(), 0, "a drained backend got a request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_headers_and_request_ids() {
    let b = echo_backends(1).await;
    let t = start_acme("round_robin", &[&b[0]], "").await;
    let c = HttpClient::new();

    let r = c.get(t.http, "acme.localhost:80", "/p?q=1").await.unwrap();
    let j = r.json();
    assert_eq!(j["host"], "acme.localhost:80", "original Host is kept");
    assert_eq!(j["x_forwarded_for"], "127.0.0.1");
    assert_eq!(j["x_forwarded_proto"], "http");
    assert_eq!(j["x_forwarded_host"], "acme.localhost:80");
    assert_eq!(
        j["forwarded"],
        "for=127.0.0.1;proto=http;host=\"acme.localhost:80\""
    );
    assert_eq!(j["query"], "q=1");
    let generated = r.headers["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 32);
    assert_eq!(
        j["x_request_id"], generated,
        "the backend sees the id the client gets"
    );

    let r = c
        .request(
            "GET",
            t.http,
            "acme.localhost",
            "/",
            &[
                ("x-request-id", "client-id-42"),
                ("x-forwarded-for", "10.9.8.7"),
                ("connection", "keep-alive, x-drop"),
                ("x-drop", "1"),
            ],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.headers["x-request-id"], "client-id-42");
    let j = r.json();
    assert_eq!(j["x_request_id"], "client-id-42");
    assert_eq!(j["x_forwarded_for"], "10.9.8.7, 127.0.0.1");
    assert_eq!(
        j["connection"],
        serde_json::Value::Null,
        "hop-by-hop Connection is not forwarded"
    );

    // A POST body reaches the backend intact.
    let body = bytes::Bytes::from(vec![b'x'; 100_000]);
    let r = c
        .request("POST", t.http, "acme.localhost", "/upload", &[], body)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_bytes"], 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_reused() {
    let b = echo_backends(1).await;
    let t = start_acme("round_robin", &[&b[0]], "").await;
    let c = HttpClient::new();
    for _ in 0..50 {
        let r = c.get(t.http, "acme.localhost", "/").await.unwrap();
        assert_eq!(r.status, 200);
    }
    // HEAD answers have no body to read: their connection is reusable too.
    for _ in 0..10 {
        let r = c
            .request(
                "HEAD",
                t.http,
                "acme.localhost",
                "/",
                &[],
                bytes::Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(b[0].hits(), 60);
    assert!(
        b[0].connections() <= 2,
        "60 sequential requests opened {} upstream connections",
        b[0].connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_given_by_dns_name_is_resolved_at_connect_time() {
    let b = echo_backends(1).await;
    let yaml = config(&format!(
        "  - id: acme\n    routes:\n      - id: web\n        host: acme.localhost\n        health_check: {{ path: /healthz, interval: 100ms, timeout: 500ms }}\n        backends: [ {{ address: \"localhost:{}\" }} ]\n",
        b[0].addr.port()
    ));
    let t = Tenantry::start(bin(), &yaml).await;
    let c = HttpClient::new();
    let r = c.get(t.http, "acme.localhost", "/").await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.backend(), "b0");
    let text = t.metrics().await;
    assert!(
        text.contains(&format!(
            "tenantry_backend_up{{tenant=\"acme\",route=\"web\",backend=\"localhost:{}\"}} 1",
            b[0].addr.port()
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_gets_504_after_the_response_timeout() {
    let b = echo_backends(1).await;
    let yaml = config(&tenant(
        "acme",
        "acme.localhost",
        "round_robin",
        &[&b[0]],
        "",
    ))
    .replace(
        "access_log: true\n",
        "access_log: true\nupstream: { response_timeout: 300ms }\n",
    );
    let t = Tenantry::start(bin(), &yaml).await;
    let c = HttpClient::new();
    let started = std::time::Instant::now();
    let r = c
        .get(t.http, "acme.localhost", "/slow?ms=3000")
        .await
        .unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    // A fast request still works afterwards.
    assert_eq!(
        c.get(t.http, "acme.localhost", "/").await.unwrap().status,
        200
    );
}
