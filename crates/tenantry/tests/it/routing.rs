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
                ("forwarded", "for=10.9.8.7"),
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
        j["forwarded"], "for=10.9.8.7, for=127.0.0.1;proto=http;host=acme.localhost",
        "this hop is appended to the client's Forwarded"
    );
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
    let t = start_acme_with("upstream: { response_timeout: 300ms }", &[&b[0]]).await;
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

/// A hand-written origin whose answer depends on the path: the framings an upstream may use,
/// and a keep-alive connection it closes while idle (without saying so).
async fn framing_origin() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + length {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    buf.drain(..end + 4 + length);
                    let (reply, close): (&[u8], bool) = match path.as_str() {
                        "/chunked" => (
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n",
                            false,
                        ),
                        "/close" => (b"HTTP/1.1 200 OK\r\n\r\nto the end", true),
                        // An origin with rate-limit fields of its own.
                        "/ratelimited" => (
                            b"HTTP/1.1 200 OK\r\nRateLimit-Limit: 5\r\nratelimit-policy: 5;w=1\r\nRetry-After: 30\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\nok",
                            false,
                        ),
                        "/continue" => (
                            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                            false,
                        ),
                        // Answers, then closes as if its keep-alive timeout ran out.
                        "/idle-close" => (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbye.", true),
                        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n", false),
                    };
                    if s.write_all(reply).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// A rate-limited route's `RateLimit-*` fields replace the upstream's of the same names, once
/// each, whichever server writes the response head: the own HTTP/1.1 server, or hyper's (an
/// HTTP/1.0 request), and on an LLM route too. An allowed response keeps the upstream's
/// `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_fields_replace_the_upstreams_on_every_writer() {
    let (origin, _) = framing_origin().await;
    let yaml = config(&format!(
        "  - id: acme\n    plan: enterprise\n    waf: {{ level: \"off\" }}\n    routes:\n      - {{ id: web, host: acme.localhost, ratelimit: {{ requests_per_minute: 600, burst: 50 }}, backends: [ {{ address: {origin} }} ] }}\n      - {{ id: llm, host: llm.acme.localhost, kind: llm, ratelimit: {{ requests_per_minute: 600, burst: 50 }}, backends: [ {{ address: {origin} }} ] }}\n"
    ));
    let t = Tenantry::start(bin(), &yaml).await;
    // An LLM route moves the upstream's fields into the response's map (for its usage
    // scanner): the own server must not write them next to the gateway's.
    let body = r#"{"model":"gpt-4o-mini","messages":[]}"#;
    let llm = format!(
        "POST /ratelimited HTTP/1.1\r\nHost: llm.acme.localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let plain = |version: &str| {
        format!("GET /ratelimited {version}\r\nHost: acme.localhost\r\nConnection: close\r\n\r\n")
    };
    for (version, req) in [
        ("HTTP/1.1", plain("HTTP/1.1")),
        ("HTTP/1.0", plain("HTTP/1.0")),
        ("HTTP/1.1 on an LLM route", llm),
    ] {
        let got = raw_request(t.http, req.as_bytes(), std::time::Duration::from_secs(5)).await;
        let lower = got.to_ascii_lowercase();
        assert!(
            lower.starts_with("http/1.1 200") || lower.starts_with("http/1.0 200"),
            "{version}: {got}"
        );
        let values = |name: &str| -> Vec<String> {
            lower
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("{name}: ")))
                .map(|v| v.trim().to_owned())
                .collect()
        };
        assert_eq!(values("ratelimit-limit"), ["600"], "{version}: {got}");
        assert_eq!(
            values("ratelimit-policy"),
            ["600;w=60;burst=50"],
            "{version}: {got}"
        );
        assert_eq!(values("ratelimit-remaining").len(), 1, "{version}: {got}");
        assert_eq!(values("ratelimit-reset").len(), 1, "{version}: {got}");
        assert_eq!(values("retry-after"), ["30"], "{version}: {got}");
        assert_eq!(values("x-kept"), ["1"], "{version}: {got}");
        assert!(got.ends_with("\r\n\r\nok"), "{version}: {got}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_framings_and_idle_closed_connections_pass_through() {
    let (origin, accepted) = framing_origin().await;
    let yaml = config(&format!(
        "  - id: acme\n    plan: enterprise\n    waf: {{ level: \"off\" }}\n    routes:\n      - {{ id: web, host: acme.localhost, backends: [ {{ address: {origin} }} ] }}\n"
    ))
    .replace("listen: 127.0.0.1:0\n", "listen: 127.0.0.1:0\nruntime: { threads: 1 }\n");
    let t = Tenantry::start(bin(), &yaml).await;
    let c = HttpClient::new();
    let cases: [(&str, &str, &[u8]); 4] = [
        ("GET", "/chunked", b"hello world"),
        ("GET", "/close", b"to the end"),
        ("GET", "/continue", b"ok"),
        ("POST", "/plain", b"ok\n"),
    ];
    for (method, path, want) in cases {
        let r = c
            .request(
                method,
                t.http,
                "acme.localhost",
                path,
                &[],
                if method == "POST" {
                    bytes::Bytes::from_static(b"{}")
                } else {
                    bytes::Bytes::new()
                },
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{method} {path}");
        assert_eq!(&r.body[..], want, "{method} {path}");
    }
    // Connections: one kept alive through /chunked, then /close ended it; /continue and the
    // POST share the next.
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);

    // A pooled connection the origin closed while idle: a GET is sent again on a new
    // connection, a POST is not sent on it at all. Either way the client sees a 200.
    for method in ["GET", "POST"] {
        let r = c
            .request(
                method,
                t.http,
                "acme.localhost",
                "/idle-close",
                &[],
                bytes::Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"bye."[..]));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let r = c
            .request(
                method,
                t.http,
                "acme.localhost",
                "/plain",
                &[],
                bytes::Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(
            r.status,
            200,
            "{method} after an idle close: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
}

/// A client that uploads slower than the response timeout gets 408 `request_timeout`, and
/// its slowness counts nothing against the backend (before: 504, and three such uploads
/// ejected the backend). A slow backend still gets 504 and is still counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_the_clients_timeout_not_the_backends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = echo_backends(1).await;
    let t = start_acme_with("upstream: { response_timeout: 300ms }", &[&b[0]]).await;
    for i in 0..3 {
        let mut s = tokio::net::TcpStream::connect(t.http).await.unwrap();
        s.write_all(b"POST /up HTTP/1.1\r\nHost: acme.localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await
            .unwrap();
        // The next chunk never comes in time.
        let mut out = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(3), s.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 408"), "upload {i}: {out:?}");
        assert!(out.contains("request_timeout"), "upload {i}: {out:?}");
    }
    let c = HttpClient::new();
    for i in 0..3 {
        let r = c.get(t.http, "acme.localhost", "/").await.unwrap();
        assert_eq!(
            r.status, 200,
            "request {i} after the slow uploads: {:?}",
            r.body
        );
    }
    let r = c
        .get(t.http, "acme.localhost", "/slow?ms=3000")
        .await
        .unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");
}
