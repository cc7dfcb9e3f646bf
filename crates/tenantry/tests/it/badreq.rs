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
