//! The own HTTP/1.1 server over an in-memory connection: keep-alive, pipelining, closing,
//! bodiless responses, and the requests it hands to hyper with their bytes.

use std::sync::{Arc, Mutex};

use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

use super::*;

const LIMITS: Limits = Limits {
    max_head: 8192,
    max_body: 64 * 1024,
    body_timeout: Duration::from_millis(300),
};

/// The flag `serve` raises while it reads a body (shared by these tests: none reads it).
static READING: AtomicBool = AtomicBool::new(false);

/// What the handler saw: method, target, `x-test` field, body.
type Seen = Arc<Mutex<Vec<(String, String, String, Vec<u8>)>>>;

/// Runs the server on one end of an in-memory connection; the handler answers `hello <path>`
/// with the `status` query's status (default 200) and records each request.
fn start() -> (
    DuplexStream,
    Seen,
    watch::Sender<bool>,
    tokio::task::JoinHandle<io::Result<Served<DuplexStream>>>,
) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let seen: Seen = Arc::default();
    let (closing_tx, closing) = watch::channel(false);
    let record = Arc::clone(&seen);
    let task = tokio::spawn(serve(
        server,
        LIMITS,
        closing,
        &READING,
        move |req: Request<ReqBody>| {
            let record = Arc::clone(&record);
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let test = parts
                    .headers
                    .get("x-test")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                record.lock().unwrap().push((
                    parts.method.to_string(),
                    parts.uri.to_string(),
                    test,
                    body.to_vec(),
                ));
                let status = match parts.uri.query() {
                    Some(q) if q.starts_with("status=") => q[7..].parse().unwrap_or(200),
                    _ => 200,
                };
                let mut resp =
                    Response::new(RespBody::full(format!("hello {}", parts.uri.path()), None));
                *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                if parts.uri.path() == "/close" {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                resp
            }
        },
    ));
    (client, seen, closing_tx, task)
}

/// Reads one response (head and `Content-Length` body) from `c`.
async fn read_response(c: &mut DuplexStream, pending: &mut Vec<u8>) -> (String, Vec<u8>) {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(pending[..end + 4].to_vec()).unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            let body_len = if head.starts_with("HTTP/1.1 204") {
                0
            } else {
                len
            };
            while pending.len() < end + 4 + body_len {
                let mut b = [0u8; 4096];
                let n = c.read(&mut b).await.unwrap();
                assert!(n > 0, "connection closed inside a response");
                pending.extend_from_slice(&b[..n]);
            }
            let body = pending[end + 4..end + 4 + body_len].to_vec();
            pending.drain(..end + 4 + body_len);
            return (head, body);
        }
        let mut b = [0u8; 4096];
        let n = c.read(&mut b).await.unwrap();
        assert!(n > 0, "connection closed before a response");
        pending.extend_from_slice(&b[..n]);
    }
}

#[tokio::test]
async fn keep_alive_requests_with_and_without_bodies() {
    let (mut c, seen, _closing, task) = start();
    let mut pending = Vec::new();
    c.write_all(b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nX-Test: one\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut c, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("content-length: 8\r\n"), "{head}");
    assert!(head.contains("\r\ndate: "), "a Date field is added: {head}");
    assert!(!head.contains("connection"), "{head}");
    assert_eq!(body, b"hello /a");

    // A body in two writes.
    c.write_all(b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello")
        .await
        .unwrap();
    tokio::task::yield_now().await;
    c.write_all(b" world").await.unwrap();
    let (head, body) = read_response(&mut c, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, b"hello /b");

    drop(c);
    assert!(matches!(task.await.unwrap().unwrap(), Served::Closed));
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen[0],
        ("GET".into(), "/a?x=1".into(), "one".into(), vec![])
    );
    assert_eq!(
        seen[1],
        (
            "POST".into(),
            "/b".into(),
            String::new(),
            b"hello world".to_vec()
        )
    );
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (mut c, seen, _closing, _task) = start();
    c.write_all(
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await
    .unwrap();
    let mut pending = Vec::new();
    for path in ["/1", "/2", "/3"] {
        let (_, body) = read_response(&mut c, &mut pending).await;
        assert_eq!(body, format!("hello {path}").as_bytes());
    }
    assert_eq!(seen.lock().unwrap()[1].3, b"abc");
}

#[tokio::test]
async fn connection_close_from_either_side_ends_the_connection() {
    // The client asks.
    let (mut c, _seen, _closing, task) = start();
    c.write_all(b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Close\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all).await.unwrap();
    let text = String::from_utf8(all).unwrap();
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    assert!(text.ends_with("hello /x"), "{text}");
    assert!(matches!(task.await.unwrap().unwrap(), Served::Closed));

    // The response says so (the proxy does, when draining or leaving a body unread).
    let (mut c, _seen, _closing, task) = start();
    c.write_all(b"GET /close HTTP/1.1\r\nHost: h\r\n\r\nGET /never HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all).await.unwrap();
    let text = String::from_utf8(all).unwrap();
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");
    assert!(matches!(task.await.unwrap().unwrap(), Served::Closed));
}

#[tokio::test]
async fn a_client_that_half_closes_still_gets_its_response() {
    let (mut c, _seen, _closing, task) = start();
    c.write_all(b"GET /half HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    c.shutdown().await.unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all).await.unwrap();
    assert!(String::from_utf8(all).unwrap().ends_with("hello /half"));
    assert!(matches!(task.await.unwrap().unwrap(), Served::Closed));
}

#[tokio::test]
async fn bodiless_statuses_and_head_write_no_body() {
    let (mut c, _seen, _closing, _task) = start();
    c.write_all(b"HEAD /h HTTP/1.1\r\nHost: h\r\nX-Head: 1\r\n\r\nGET /n?status=204 HTTP/1.1\r\nHost: h\r\n\r\nGET /after HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut pending = Vec::new();
    // HEAD: the length of the body a GET would get, and no body.
    let mut b = vec![0u8; 4096];
    while !String::from_utf8_lossy(&pending).contains("hello /after") {
        let n = c.read(&mut b).await.unwrap();
        assert!(n > 0);
        pending.extend_from_slice(&b[..n]);
    }
    let text = String::from_utf8(pending).unwrap();
    let responses: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(responses.len(), 3, "{text}");
    assert!(responses[0].starts_with("200 OK"), "{text}");
    assert!(responses[0].contains("content-length: 8\r\n"), "{text}");
    assert!(
        responses[0].ends_with("\r\n\r\n"),
        "no body after HEAD: {text}"
    );
    assert!(responses[1].starts_with("204 No Content"), "{text}");
    assert!(
        responses[1].ends_with("\r\n\r\n"),
        "no body after 204: {text}"
    );
    assert!(responses[2].ends_with("hello /after"), "{text}");
}

/// Requests this server leaves to hyper come back whole, with what followed them.
#[tokio::test]
async fn requests_that_are_not_plain_fall_back_with_their_bytes() {
    let cases: [&[u8]; 10] = [
        b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET /t HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n",
        b"GET /old HTTP/1.0\r\nHost: h\r\n\r\n",
        b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
        b"POST /d HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
        b"POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: 65537\r\n\r\n",
        b"GET /bad path HTTP/1.1\r\nHost: h\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ];
    for case in cases {
        let (mut c, seen, _closing, task) = start();
        // A plain request first: it is answered, and the fallback starts after it.
        let mut bytes = b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n".to_vec();
        bytes.extend_from_slice(case);
        c.write_all(&bytes).await.unwrap();
        let mut pending = Vec::new();
        let (_, body) = read_response(&mut c, &mut pending).await;
        assert_eq!(body, b"hello /first");
        let served = tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("the server gives the connection up")
            .unwrap()
            .unwrap();
        let Served::Fallback(mut rest) = served else {
            panic!("{} was served", String::from_utf8_lossy(case));
        };
        let mut got = vec![0u8; case.len()];
        rest.read_exact(&mut got).await.unwrap();
        assert_eq!(got, case, "{}", String::from_utf8_lossy(case));
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn oversized_heads_fall_back_and_shutdown_closes_idle_connections() {
    let (mut c, _seen, _closing, task) = start();
    let mut head = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ".to_vec();
    head.resize(LIMITS.max_head + 10, b'a');
    c.write_all(&head).await.unwrap();
    let served = task.await.unwrap().unwrap();
    assert!(matches!(served, Served::Fallback(_)));

    let (mut c, _seen, closing, task) = start();
    c.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut c, &mut Vec::new()).await;
    closing.send(true).unwrap();
    let served = tokio::time::timeout(std::time::Duration::from_secs(5), task)
        .await
        .expect("an idle connection closes at shutdown")
        .unwrap()
        .unwrap();
    assert!(matches!(served, Served::Closed));
}

/// Reads until the server closes, and gives back the whole answer.
async fn read_to_close(c: &mut DuplexStream) -> String {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut all))
        .await
        .expect("the server closes")
        .unwrap();
    String::from_utf8_lossy(&all).into_owned()
}

#[tokio::test]
async fn long_targets_huge_lengths_and_stalled_bodies_are_refused_here() {
    // A request line that fills the head's room: 414, not hyper's 431 for a large head.
    let (mut c, seen, _closing, task) = start();
    let line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(LIMITS.max_head));
    c.write_all(line.as_bytes()).await.unwrap();
    let got = read_to_close(&mut c).await;
    assert!(got.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{got}");
    assert!(got.contains("\"error\":\"uri_too_long\""), "{got}");
    assert!(got.contains("connection: close\r\n"), "{got}");
    assert!(matches!(task.await.unwrap().unwrap(), Served::Closed));
    assert!(seen.lock().unwrap().is_empty());

    // Lengths no body can have: 413 (hyper answered 431 to the largest).
    for cl in [
        "18446744073709551615",
        "99999999999999999999999",
        "9007199254740993",
    ] {
        let (mut c, seen, _closing, task) = start();
        let req = format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {cl}\r\n\r\n");
        c.write_all(req.as_bytes()).await.unwrap();
        let got = read_to_close(&mut c).await;
        assert!(got.starts_with("HTTP/1.1 413 "), "{cl}: {got}");
        assert!(got.contains("payload_too_large"), "{cl}: {got}");
        assert!(matches!(task.await.unwrap().unwrap(), Served::Closed));
        assert!(seen.lock().unwrap().is_empty());
    }

    // A body that stops arriving: 408 after the body timeout, and the handler never runs.
    let (mut c, seen, _closing, task) = start();
    c.write_all(b"POST /slow HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let got = read_to_close(&mut c).await;
    assert!(got.starts_with("HTTP/1.1 408 "), "{got}");
    assert!(got.contains("request_timeout"), "{got}");
    assert!(matches!(task.await.unwrap().unwrap(), Served::Closed));
    assert!(seen.lock().unwrap().is_empty());

    // A body that keeps arriving within the timeout is read whole.
    let (mut c, seen, _closing, _task) = start();
    c.write_all(b"POST /trickle HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\n")
        .await
        .unwrap();
    for b in [b"a", b"b", b"c", b"d"] {
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.write_all(b).await.unwrap();
    }
    let (head, body) = read_response(&mut c, &mut Vec::new()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"hello /trickle");
    assert_eq!(seen.lock().unwrap()[0].3, b"abcd");
}

#[test]
fn small_helpers() {
    assert_eq!(parse_decimal(b"0"), Some(0));
    assert_eq!(parse_decimal(b"1234"), Some(1234));
    assert_eq!(parse_decimal(b""), None);
    assert_eq!(parse_decimal(b"+1"), None);
    assert_eq!(parse_decimal(b"1 "), None);
    assert_eq!(parse_decimal(b"99999999999999999999"), None);
    assert!(has_token(b"keep-alive, Close", b"close"));
    assert!(!has_token(b"closed", b"close"));
    let mut out = Vec::new();
    push_hex(&mut out, 0);
    out.push(b' ');
    push_hex(&mut out, 0x1a2f);
    assert_eq!(out, b"0 1A2F");
}
