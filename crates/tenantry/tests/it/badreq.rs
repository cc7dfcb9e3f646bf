//! Hostile and malformed requests: clear 4xx answers, no smuggling, no crash.

use std::time::Duration;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_smuggling_oversized_headers_and_garbage() {
    let b = echo_backends(1).await;
    let mut t = start_acme("round_robin", &[&b[0]], "").await;
    let d = Duration::from_secs(3);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"POST / HTTP/1.1\r\nHost: acme.localhost\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde".to_vec(),
            "HTTP/1.1 400",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: acme.localhost\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            "HTTP/1.1 400",
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: acme.localhost\r\nX-Big: {}\r\n\r\n", "a".repeat(40_000)).into_bytes(),
            "HTTP/1.1 431",
        ),
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n".to_vec(), "HTTP/1.1 400"),
        (b"GET / HTTP/1.1\r\nHost: acme.localhost\r\nBad Header\r\n\r\n".to_vec(), "HTTP/1.1 400"),
        (b"GET / HTTP/1.1\r\nHost: a.localhost\r\nHost: acme.localhost\r\n\r\n".to_vec(), "HTTP/1.1 400"),
    ];
    for (req, want) in &cases {
        let got = raw_request(t.http, req, d).await;
        assert!(
            got.starts_with(want),
            "sent {:?}\nwant {want}, got {got:?}",
            String::from_utf8_lossy(&req[..req.len().min(80)])
        );
    }
    assert_eq!(b[0].hits(), 0, "no malformed request reached the backend");

    // Content-Length + Transfer-Encoding (CL.TE smuggling): hyper's parser lets
    // Transfer-Encoding win, drops Content-Length and closes the connection after the response
    // (RFC 9112 §6.3), so a request hidden behind the body is never read. It never reaches a
    // backend as a second request.
    for order in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 4",
    ] {
        let smuggle = format!(
            "POST / HTTP/1.1\r\nHost: acme.localhost\r\n{order}\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: acme.localhost\r\n\r\n"
        );
        let before = b[0].hits();
        let got = raw_request(t.http, smuggle.as_bytes(), d).await;
        assert_eq!(
            got.matches("HTTP/1.1 ").count(),
            1,
            "one response only: {got}"
        );
        assert!(
            got.to_ascii_lowercase().contains("connection: close"),
            "{got}"
        );
        assert!(!got.contains("/smuggled"), "{got}");
        assert!(
            b[0].hits() <= before + 1,
            "the hidden request reached the backend"
        );
    }
    // Still alive and serving.
    assert!(t.is_running());
    let r = HttpClient::new()
        .get(t.http, "acme.localhost", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

/// xorshift64*: a fixed-seed generator so that a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_random_and_mutated_requests() {
    let b = echo_backends(1).await;
    let mut t = start_acme("round_robin", &[&b[0]], "").await;
    let valid: &[u8] = b"POST /api/x?y=1 HTTP/1.1\r\nHost: acme.localhost\r\nContent-Length: 5\r\nX-Request-Id: abc\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nhello";
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut tasks = Vec::new();
    for i in 0..300 {
        let bytes: Vec<u8> = if i % 3 == 0 {
            // Pure noise of random length.
            (0..rng.next() % 512).map(|_| rng.next() as u8).collect()
        } else {
            // A valid request with a few bytes flipped, dropped or duplicated.
            let mut v = valid.to_vec();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() as usize) % v.len();
                match rng.next() % 3 {
                    0 => v[at] = rng.next() as u8,
                    1 => {
                        v.remove(at);
                    }
                    _ => v.insert(at, v[at]),
                }
            }
            v
        };
        let addr = t.http;
        tasks.push(tokio::spawn(async move {
            raw_request(addr, &bytes, Duration::from_millis(300)).await
        }));
        if tasks.len() == 30 {
            for task in tasks.drain(..) {
                let _ = task.await;
            }
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    assert!(t.is_running(), "the gateway died on hostile input");
    assert!(
        !t.stderr.contains("panicked"),
        "a task panicked:\n{}",
        t.stderr.all().join("\n")
    );
    let r = HttpClient::new()
        .get(t.http, "acme.localhost", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

/// A missing (HTTP/1.1) or malformed Host is a 400 (RFC 9112 §3.2); CONNECT opens no tunnel
/// (405, or 400 without a port); none of them reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_connect_are_checked() {
    let b = echo_backends(1).await;
    let t = start_acme("round_robin", &[&b[0]], "").await;
    let d = Duration::from_secs(3);
    let cases: [(&[u8], &str); 14] = [
        (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400"),
        (b"GET / HTTP/1.1\r\nHost: \r\n\r\n", "HTTP/1.1 400"),
        (
            b"GET / HTTP/1.1\r\nHost: acme.localhost:abc\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: acme.localhost:123456\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: acme.localhost:80:80\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", "HTTP/1.1 400"),
        (b"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n", "HTTP/1.1 400"),
        (b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n", "HTTP/1.1 400"),
        // Valid hosts that no tenant serves.
        (
            b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 404",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: other.localhost:\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 404",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: acme.localhost%1F\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            b"CONNECT acme.localhost:443 HTTP/1.1\r\nHost: acme.localhost\r\n\r\n",
            "HTTP/1.1 405",
        ),
        (
            b"CONNECT acme.localhost HTTP/1.1\r\nHost: acme.localhost\r\n\r\n",
            "HTTP/1.1 400",
        ),
        // CONNECT's target is the tunnel's destination, not the server: routed by Host (the
        // tenant's WAF sees it), then refused.
        (
            b"CONNECT www.example.com:443 HTTP/1.1\r\nHost: acme.localhost\r\n\r\n",
            "HTTP/1.1 405",
        ),
    ];
    for (req, want) in cases {
        let got = raw_request(t.http, req, d).await;
        assert!(
            got.starts_with(want),
            "sent {:?}: got {got:?}",
            String::from_utf8_lossy(req)
        );
    }
    // HTTP/1.0 may omit Host: it is simply not routed.
    let got = raw_request(t.http, b"GET / HTTP/1.0\r\n\r\n", d).await;
    assert!(got.starts_with("HTTP/1.0 404"), "{got:?}");
    assert_eq!(b[0].hits(), 0);

    // A port is stripped for routing and kept for the upstream.
    let got = raw_request(
        t.http,
        b"GET /p HTTP/1.1\r\nHost: ACME.localhost:8080\r\nConnection: close\r\n\r\n",
        d,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    assert_eq!(echoed(&got)["host"], "ACME.localhost:8080");

    // Absolute form: the target's authority routes the request, whatever `Host` says
    // (RFC 9112 §3.2.2), and it is the `Host` the upstream gets. Both on the own HTTP/1.1
    // server and on hyper's (HTTP/1.0, which it hands over).
    for (req, status) in [
        (&b"GET http://acme.localhost/abs?q=1 HTTP/1.1\r\nHost: other.localhost\r\nConnection: close\r\n\r\n"[..], "HTTP/1.1 200"),
        (b"GET http://acme.localhost:81/abs?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "HTTP/1.1 200"),
        (b"GET http://acme.localhost/abs?q=1 HTTP/1.0\r\n\r\n", "HTTP/1.0 200"),
    ] {
        let got = raw_request(t.http, req, d).await;
        assert!(got.starts_with(status), "{got:?}");
        let v = echoed(&got);
        assert!(v["host"].as_str().unwrap_or_default().starts_with("acme.localhost"), "{v}");
        assert_eq!(v["path"], "/abs");
        assert_eq!(v["query"], "q=1");
    }
    let got = raw_request(
        t.http,
        b"GET http://other.localhost/abs HTTP/1.1\r\nHost: acme.localhost\r\nConnection: close\r\n\r\n",
        d,
    )
    .await;
    assert!(
        got.starts_with("HTTP/1.1 404"),
        "routed by Host, not the target: {got:?}"
    );
    assert!(got.contains("unknown_host"), "{got:?}");
    let got = raw_request(
        t.http,
        b"GET http://user@acme.localhost/ HTTP/1.1\r\nHost: acme.localhost\r\n\r\n",
        d,
    )
    .await;
    assert!(
        got.starts_with("HTTP/1.1 400"),
        "user info in the target: {got:?}"
    );
    // The Host rules hold in absolute form too (RFC 9112 §3.2), and each target form only
    // where it belongs: authority form for CONNECT, `*` for OPTIONS, absolute form for http(s).
    let hits = b[0].hits();
    for req in [
        &b"GET http://acme.localhost/ HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"[..],
        b"GET http://acme.localhost/ HTTP/1.1\r\n\r\n",
        b"GET http://acme.localhost/ HTTP/1.1\r\nHost: bad host\r\n\r\n",
        b"GET acme.localhost:80 HTTP/1.1\r\nHost: acme.localhost\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: acme.localhost\r\n\r\n",
        b"POST * HTTP/1.1\r\nHost: acme.localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET ftp://acme.localhost/ HTTP/1.1\r\nHost: acme.localhost\r\n\r\n",
        b"GET ws://acme.localhost/ HTTP/1.1\r\nHost: acme.localhost\r\n\r\n",
    ] {
        let got = raw_request(t.http, req, d).await;
        assert!(
            got.starts_with("HTTP/1.1 400"),
            "{:?}: {got:?}",
            String::from_utf8_lossy(req)
        );
    }
    assert_eq!(b[0].hits(), hits, "none of them reached the backend");
    let got = raw_request(
        t.http,
        b"OPTIONS * HTTP/1.1\r\nHost: acme.localhost\r\nConnection: close\r\n\r\n",
        d,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
}

/// The echo backend's JSON summary from a raw response.
fn echoed(raw: &str) -> serde_json::Value {
    let body = &raw[raw.find("\r\n\r\n").map_or(0, |i| i + 4)..];
    serde_json::from_str(body.trim()).unwrap_or_default()
}

/// Bodies of unknown length reach the backend whatever the method (hyper's client sends a GET
/// with no declared length as bodiless unless told otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_are_forwarded_for_every_method() {
    let b = echo_backends(1).await;
    let t = start_acme("round_robin", &[&b[0]], "").await;
    let d = Duration::from_secs(3);
    for method in ["GET", "POST", "DELETE", "OPTIONS"] {
        let req = format!(
            "{method} /q HTTP/1.1\r\nHost: acme.localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        );
        let got = raw_request(t.http, req.as_bytes(), d).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{method}: {got:?}");
        let v = echoed(&got);
        assert_eq!(v["method"], method, "{got}");
        assert_eq!(v["body_bytes"], 11, "{method}: the body was lost: {got}");
    }
}

/// A request target longer than the head's room gets 414, a `Content-Length` no body can have
/// 413, and a small body that stops arriving 408 at the header timeout (it was closed without
/// an answer), all before the backend sees anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_targets_huge_lengths_and_stalled_bodies_get_their_status() {
    let b = echo_backends(1).await;
    let t = start_acme_with("limits: { header_timeout: 1s }", &[&b[0]]).await;
    let d = Duration::from_secs(5);
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: acme.localhost\r\n\r\n",
        "a".repeat(40_000)
    );
    let got = raw_request(t.http, long.as_bytes(), d).await;
    assert!(got.starts_with("HTTP/1.1 414"), "{got:?}");
    assert!(got.contains("uri_too_long"), "{got:?}");
    let got = raw_request(
        t.http,
        b"POST / HTTP/1.1\r\nHost: acme.localhost\r\nContent-Length: 18446744073709551615\r\n\r\n",
        d,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 413"), "{got:?}");
    let started = std::time::Instant::now();
    let got = raw_request(
        t.http,
        b"POST / HTTP/1.1\r\nHost: acme.localhost\r\nContent-Length: 100\r\n\r\nonly part",
        d,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    assert!(got.contains("request_timeout"), "{got:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    // The same on hyper's parser (HTTP/1.0, Expect: 100-continue), which reads small bodies
    // before forwarding them: 408 once the body stops for the header timeout, and 413 for a
    // length no body can have.
    for (req, want) in [
        (&b"POST / HTTP/1.0\r\nHost: acme.localhost\r\nContent-Length: 100\r\n\r\npart"[..], "HTTP/1.0 408"),
        (b"POST / HTTP/1.1\r\nHost: acme.localhost\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\npart", "HTTP/1.1 408"),
        (b"POST / HTTP/1.0\r\nHost: acme.localhost\r\nContent-Length: 9007199254740993\r\n\r\nhello", "HTTP/1.0 413"),
        (b"POST / HTTP/1.1\r\nHost: acme.localhost\r\nContent-Length: 00000000000000000000000005\r\nConnection: close\r\n\r\nhello", "HTTP/1.1 200"),
    ] {
        let got = raw_request(t.http, req, d).await;
        let got = got.trim_start_matches("HTTP/1.1 100 Continue\r\n\r\n");
        assert!(got.starts_with(want), "{:?}: {got:?}", String::from_utf8_lossy(req));
    }
    assert_eq!(
        b[0].hits(),
        1,
        "only the complete request reached the backend"
    );
}

/// A request refused before it was read to the end still gets its 400: the connection stops
/// writing and drains what the client sends instead of resetting (which can destroy the
/// answer in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_unread_requests_linger_instead_of_resetting() {
    use std::io::{Read, Write};
    let b = echo_backends(1).await;
    let t = start_acme("round_robin", &[&b[0]], "").await;
    let addr = t.http;
    let resets = tokio::task::spawn_blocking(move || {
        let req = "GET / HTTP/3.0\r\nAccept: text/xml,application/xml\r\nAccept-Language: en-us,en;q=0.5\r\nHost: acme.localhost\r\nKeep-Alive: 300\r\nProxy-Connection: keep-alive\r\nUser-Agent: Mozilla/5.0\r\n\r\n";
        let mut resets = 0;
        for _ in 0..40 {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            let mut out = Vec::new();
            let read = s.read_to_end(&mut out);
            assert!(out.starts_with(b"HTTP/1.1 400"), "{:?}", String::from_utf8_lossy(&out));
            // After a reset, the read fails or shutting down says "not connected".
            if read.is_err() || s.shutdown(std::net::Shutdown::Write).is_err() {
                resets += 1;
            }
        }
        resets
    })
    .await
    .unwrap();
    assert_eq!(resets, 0, "connections reset instead of closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_head_connections_are_closed_but_slow_responses_are_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = echo_backends(1).await;
    let t = start_acme_with("limits: { header_timeout: 1s }", &[&b[0]]).await;
    // Sends `request` on a new connection and reads until the server closes; how long that
    // took, and what came.
    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> (Duration, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        (
            started.elapsed(),
            String::from_utf8_lossy(&out).into_owned(),
        )
    }

    // Slowloris: a header line every 200 ms, never the end of the head.
    let mut s = tokio::net::TcpStream::connect(t.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: acme.localhost\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if s.write_all(format!("X-{i}: y\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut byte)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "a head sent for 8 s was never cut");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "slow head cut after {took:?}"
    );

    // An idle keep-alive connection after one answer.
    let (idle, got) = exchange(t.http, b"GET / HTTP/1.1\r\nHost: acme.localhost\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(3),
        "idle connection closed after {idle:?}"
    );

    // A response that takes longer than the timeout is not cut: a request is in flight.
    let (_, got) = exchange(
        t.http,
        b"GET /slow?ms=2500 HTTP/1.1\r\nHost: acme.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_after_its_request_gets_the_whole_response() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = echo_backends(1).await;
    let t = start_acme("round_robin", &[&b[0]], "").await;
    // HTTP/1.0 style: the request, then the sending side shut, then wait for the answer.
    let mut s = tokio::net::TcpStream::connect(t.http).await.unwrap();
    s.write_all(b"GET /slow?ms=200 HTTP/1.0\r\nHost: acme.localhost\r\n\r\n")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    assert!(text.contains("\"backend\":\"b0\""), "{text}");
    assert_eq!(b[0].hits(), 1);
}

/// A request body that breaks while it is forwarded (malformed chunking, or a client that
/// leaves mid-upload) is the client's fault: the client gets 400, and the backend's health is
/// untouched. Before, three such requests from anyone ejected a healthy backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_request_bodies_do_not_eject_the_backend() {
    let b = echo_backends(1).await;
    let t = start_acme("round_robin", &[&b[0]], "").await;
    let d = Duration::from_secs(3);
    for i in 0..4 {
        let got = raw_request(
            t.http,
            b"POST /a HTTP/1.1\r\nHost: acme.localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n-5\r\nhello\r\n0\r\n\r\n",
            d,
        )
        .await;
        assert!(
            got.starts_with("HTTP/1.1 400"),
            "malformed chunk {i}: {got:?}"
        );
    }
    for i in 0..4 {
        // A chunked upload cut off: the client closes after the first chunk.
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(t.http).await.unwrap();
        s.write_all(b"POST /a HTTP/1.1\r\nHost: acme.localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);
        let _ = i;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = HttpClient::new();
    for i in 0..5 {
        let r = c.get(t.http, "acme.localhost", "/").await.unwrap();
        assert_eq!(
            r.status, 200,
            "request {i} after the broken uploads: {:?}",
            r.body
        );
    }
    let m = t.metrics().await;
    assert!(
        m.lines()
            .filter(|l| l.starts_with("tenantry_backend_up{"))
            .all(|l| l.ends_with(" 1")),
        "{m}"
    );
}

/// A transfer coding other than chunked gets 501 (forwarding as plain chunked would drop
/// it), and an `h2c` upgrade is not passed on: the request goes upstream as plain HTTP/1.1,
/// so no HTTP/2 tunnel can bypass routing, the WAF and the limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_transfer_codings_get_501_and_h2c_is_not_upgraded() {
    let b = echo_backends(1).await;
    let t = start_acme("round_robin", &[&b[0]], "").await;
    let d = Duration::from_secs(3);
    for te in ["gzip, chunked", "deflate,chunked"] {
        let req = format!(
            "POST / HTTP/1.1\r\nHost: acme.localhost\r\nTransfer-Encoding: {te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let got = raw_request(t.http, req.as_bytes(), d).await;
        assert!(got.starts_with("HTTP/1.1 501"), "{te}: {got:?}");
        assert!(got.contains("not_implemented"), "{te}: {got:?}");
    }
    assert_eq!(b[0].hits(), 0, "nothing reached the backend");
    let got = raw_request(
        t.http,
        b"GET /up HTTP/1.1\r\nHost: acme.localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    let body = &got[got.find("\r\n\r\n").map_or(0, |i| i + 4)..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    assert!(
        !v["connection"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_lowercase()
            .contains("upgrade"),
        "the upgrade was forwarded: {got}"
    );
}
