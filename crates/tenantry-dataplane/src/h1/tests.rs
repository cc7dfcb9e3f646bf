//! The inline client against scripted origins: framing, reuse, retries, malformed replies.

use std::future::poll_fn;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{Error, H1Body, H1Conn};

/// An origin that answers each request on one connection with the next scripted reply, written
/// in the given pieces, then closes. It returns the raw requests it read.
async fn origin(replies: Vec<Vec<&'static [u8]>>) -> (SocketAddr, JoinHandle<Vec<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut seen = Vec::new();
        for pieces in replies {
            seen.push(read_request(&mut s).await);
            for p in pieces {
                s.write_all(p).await.expect("write");
                s.flush().await.expect("flush");
                tokio::task::yield_now().await;
            }
        }
        seen
    });
    (addr, task)
}

async fn read_request(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
            let len = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < n + len {
                let k = s.read(&mut chunk).await.expect("read body");
                assert!(k > 0, "request body cut short");
                buf.extend_from_slice(&chunk[..k]);
            }
            return buf;
        }
        let k = s.read(&mut chunk).await.expect("read");
        if k == 0 {
            return buf;
        }
        buf.extend_from_slice(&chunk[..k]);
    }
}

fn get(path: &str) -> http::request::Parts {
    request(Method::GET, path)
}

fn request(method: Method, path: &str) -> http::request::Parts {
    let (mut parts, ()) = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "acme.localhost")
        .body(())
        .expect("request")
        .into_parts();
    parts.headers.append("x-many", "1".parse().expect("value"));
    parts.headers.append("x-many", "2".parse().expect("value"));
    parts
}

/// The whole body (data joined) and the trailers.
async fn collect(body: &mut H1Body) -> Result<(Vec<u8>, Option<HeaderMap>), Error> {
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = poll_fn(|cx| body.poll_frame(cx)).await {
        let frame = frame?;
        match frame.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    Ok((data, trailers))
}

async fn connect(addr: SocketAddr) -> H1Conn {
    H1Conn::new(TcpStream::connect(addr).await.expect("connect"))
}

/// `GET /` on a new connection to `addr`: the response head, with its body unread.
async fn fetch(addr: SocketAddr) -> http::Response<H1Body> {
    connect(addr)
        .await
        .send(&get("/"), None, b"", false)
        .await
        .expect("response head")
}

#[tokio::test]
async fn length_delimited_responses_reuse_the_connection() {
    let (addr, seen) = origin(vec![
        vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello"],
        // The head and the body in pieces.
        vec![
            b"HTTP/1.1 201 Created\r\nconte",
            b"nt-length: 6\r\n\r\nwor",
            b"ld!",
        ],
    ])
    .await;
    let conn = connect(addr).await;
    let mut resp = conn
        .send(&get("/a?b=1"), None, b"", false)
        .await
        .expect("first");
    assert_eq!(resp.status(), StatusCode::OK);
    let values: Vec<_> = resp.body().raw_head().unwrap().get_all(b"x-a").collect();
    assert_eq!(values, [b"1".as_slice(), b"2"]);
    let (data, _) = collect(resp.body_mut()).await.expect("body");
    assert_eq!(data, b"hello");
    let conn = resp.body_mut().take_reusable().expect("reusable");

    let parts = request(Method::POST, "/submit");
    let mut resp = conn
        .send(&parts, None, b"{\"a\":1}", true)
        .await
        .expect("second");
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.body().size_hint().exact(), Some(6));
    let (data, _) = collect(resp.body_mut()).await.expect("body");
    assert_eq!(data, b"world!");
    assert!(resp.body_mut().take_reusable().is_some());

    let seen = seen.await.expect("origin");
    assert_eq!(
        String::from_utf8_lossy(&seen[0]),
        "GET /a?b=1 HTTP/1.1\r\nhost: acme.localhost\r\nx-many: 1\r\nx-many: 2\r\n\r\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&seen[1]),
        "POST /submit HTTP/1.1\r\nhost: acme.localhost\r\nx-many: 1\r\nx-many: 2\r\n\
         content-length: 7\r\n\r\n{\"a\":1}"
    );
}

#[tokio::test]
async fn request_framing_headers_are_replaced_by_the_real_length() {
    let (addr, seen) = origin(vec![
        vec![b"HTTP/1.1 204 No Content\r\n\r\n"],
        vec![b"HTTP/1.1 204 No Content\r\n\r\n"],
    ])
    .await;
    let mut parts = request(Method::GET, "/");
    parts
        .headers
        .insert("content-length", "0".parse().expect("value"));
    let mut resp = connect(addr)
        .await
        .send(&parts, None, b"", false)
        .await
        .expect("GET");
    assert!(resp.body().is_end_stream());
    let conn = resp.body_mut().take_reusable().expect("reusable");
    // A large body is written after the head, not copied behind it.
    let big = vec![b'x'; super::COALESCE_BODY + 1];
    let parts = request(Method::PUT, "/big");
    let mut resp = conn.send(&parts, None, &big, true).await.expect("PUT");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.body_mut().take_reusable().is_some());
    let seen = seen.await.expect("origin");
    assert!(String::from_utf8_lossy(&seen[0]).ends_with("content-length: 0\r\n\r\n"));
    assert!(seen[1].ends_with(&big));
    assert!(String::from_utf8_lossy(&seen[1]).contains("content-length: 65537\r\n\r\n"));
}

/// The head is kept as it came, minus the hop-by-hop fields and those `Connection` names;
/// a map built from it leaves out the names the gateway has set.
#[tokio::test]
async fn raw_heads_drop_hop_by_hop_fields_and_yield_to_the_gateways_own() {
    let (addr, _origin) = origin(vec![vec![
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nTrailer: x\r\nProxy-Connection: x\r\nX-Kept: a\r\nX-Request-Id: theirs\r\nContent-Length: 2\r\nupgrade: h2c\r\nX-Kept: b\r\n\r\nok",
    ]])
    .await;
    let mut resp = fetch(addr).await;
    let raw = resp.body().raw_head().expect("raw head");
    let names: Vec<&[u8]> = raw.iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            b"X-Kept".as_slice(),
            b"X-Request-Id",
            b"Content-Length",
            b"X-Kept"
        ]
    );
    let mut map = HeaderMap::new();
    map.insert("x-request-id", http::HeaderValue::from_static("ours"));
    assert!(resp.body().raw_head().is_some(), "raw head");
    resp.body_mut().merge_raw_head(&mut map);
    assert_eq!(map["x-request-id"], "ours");
    assert_eq!(map.get_all("x-kept").iter().count(), 2);
    assert_eq!(map["content-length"], "2");
    let (data, _) = collect(resp.body_mut()).await.expect("body");
    assert_eq!(data, b"ok");
    assert!(resp.body_mut().take_reusable().is_some());
}

#[tokio::test]
async fn chunked_bodies_are_decoded_with_trailers() {
    let (addr, _seen) = origin(vec![vec![
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5;ext=1\r\nhel",
        b"lo\r\n",
        b"6\r\n world\r\n0\r\nX-Checksum: ab",
        b"c\r\n\r\n",
    ]])
    .await;
    let mut resp = fetch(addr).await;
    assert_eq!(resp.body().size_hint().exact(), None);
    let (data, trailers) = collect(resp.body_mut()).await.expect("body");
    assert_eq!(data, b"hello world");
    let trailers = trailers.expect("trailers");
    assert_eq!(
        trailers.get("x-checksum").map(|v| v.as_bytes()),
        Some(&b"abc"[..])
    );
    assert!(resp.body_mut().take_reusable().is_some());
}

#[tokio::test]
async fn chunked_without_trailers_and_split_crlf() {
    let (addr, _seen) = origin(vec![vec![
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r",
        b"\n0\r\n\r",
        b"\n",
    ]])
    .await;
    let mut resp = fetch(addr).await;
    let (data, trailers) = collect(resp.body_mut()).await.expect("body");
    assert_eq!(data, b"abc");
    assert!(trailers.is_none());
    assert!(resp.body_mut().take_reusable().is_some());
}

#[tokio::test]
async fn bodies_to_the_end_of_the_connection_are_not_reused() {
    let (addr, _seen) = origin(vec![vec![
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ",
        b"close",
    ]])
    .await;
    let mut resp = fetch(addr).await;
    let (data, _) = collect(resp.body_mut()).await.expect("body");
    assert_eq!(data, b"until close");
    assert!(resp.body_mut().take_reusable().is_none());
}

#[tokio::test]
async fn connection_close_and_http10_are_not_reused() {
    for reply in [
        &b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"[..],
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ] {
        let (addr, _seen) = origin(vec![vec![reply]]).await;
        let mut resp = fetch(addr).await;
        let (data, _) = collect(resp.body_mut()).await.expect("body");
        assert_eq!(data, b"ok");
        assert!(resp.body_mut().take_reusable().is_none());
    }
    // HTTP/1.0 with keep-alive is reused.
    let (addr, _seen) = origin(vec![vec![
        b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok",
    ]])
    .await;
    let mut resp = fetch(addr).await;
    collect(resp.body_mut()).await.expect("body");
    assert!(resp.body_mut().take_reusable().is_some());
}

#[tokio::test]
async fn informational_responses_are_skipped_and_head_has_no_body() {
    let (addr, _seen) = origin(vec![
        vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
        ],
        vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"],
    ])
    .await;
    let mut resp = fetch(addr).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.body()
            .raw_head()
            .unwrap()
            .get_all(b"link")
            .next()
            .is_none()
    );
    let (data, _) = collect(resp.body_mut()).await.expect("body");
    assert_eq!(data, b"x");
    let conn = resp.body_mut().take_reusable().expect("reusable");
    let mut resp = conn
        .send(&request(Method::HEAD, "/"), None, b"", true)
        .await
        .expect("HEAD");
    let mut map = HeaderMap::new();
    assert!(resp.body().raw_head().is_some(), "raw head");
    resp.body_mut().merge_raw_head(&mut map);
    assert_eq!(map["content-length"], "1000");
    assert!(resp.body().is_end_stream());
    assert!(resp.body_mut().take_reusable().is_some());
}

#[tokio::test]
async fn malformed_responses_are_errors() {
    let cases: [(&[u8], &str); 6] = [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
            "differing",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "content-length",
        ),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "head"),
        (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", "head"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
        (b"garbage\r\n\r\n", "head"),
    ];
    for (reply, expect) in cases {
        let (addr, _seen) = origin(vec![vec![reply]]).await;
        let failed = connect(addr)
            .await
            .send(&get("/"), None, b"", true)
            .await
            .expect_err("malformed");
        assert!(!failed.retry, "{reply:?}");
        assert!(
            failed.error.to_string().contains(expect),
            "{reply:?}: {}",
            failed.error
        );
    }
}

#[tokio::test]
async fn too_many_header_fields_are_refused() {
    let mut reply = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..101 {
        reply.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
    }
    reply.extend_from_slice(b"\r\n");
    let reply: &'static [u8] = reply.leak();
    let (addr, _seen) = origin(vec![vec![reply]]).await;
    let failed = connect(addr)
        .await
        .send(&get("/"), None, b"", false)
        .await
        .expect_err("too many");
    assert!(
        failed.error.to_string().contains("more than 100"),
        "{}",
        failed.error
    );
}

#[tokio::test]
async fn truncated_bodies_are_errors_and_not_reused() {
    for reply in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX",
    ] {
        let (addr, _seen) = origin(vec![vec![reply]]).await;
        let mut resp = fetch(addr).await;
        assert!(collect(resp.body_mut()).await.is_err(), "{reply:?}");
        assert!(resp.body_mut().take_reusable().is_none());
    }
}

#[tokio::test]
async fn transfer_encoding_with_content_length_is_chunked_and_not_reused() {
    let (addr, _seen) = origin(vec![vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ]])
    .await;
    let mut resp = fetch(addr).await;
    let (data, _) = collect(resp.body_mut()).await.expect("body");
    assert_eq!(data, b"ok");
    assert!(resp.body_mut().take_reusable().is_none());
}

#[tokio::test]
async fn a_pooled_connection_closed_while_idle_can_be_retried() {
    // The origin answers once and closes.
    let (addr, seen) = origin(vec![vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]]).await;
    let mut resp = connect(addr)
        .await
        .send(&get("/"), None, b"", false)
        .await
        .expect("first");
    let conn = resp.body_mut().take_reusable().expect("reusable");
    seen.await.expect("origin");
    // Give the FIN time to arrive.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!conn.probe(), "a closed connection fails the probe");
    let failed = conn
        .send(&get("/again"), None, b"", true)
        .await
        .expect_err("closed");
    assert!(failed.retry, "{:?}", failed.error);
}

#[tokio::test]
async fn non_idempotent_requests_are_not_retried_after_being_written() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let origin = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        read_request(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await
            .expect("write");
        // Reads the second request, then closes without answering.
        read_request(&mut s).await;
    });
    let mut resp = connect(addr)
        .await
        .send(&get("/"), None, b"", false)
        .await
        .expect("first");
    let conn = resp.body_mut().take_reusable().expect("reusable");
    assert!(conn.probe(), "an open idle connection passes the probe");
    let failed = conn
        .send(&request(Method::POST, "/pay"), None, b"{}", true)
        .await
        .expect_err("closed");
    assert!(!failed.retry);
    assert!(matches!(failed.error, Error::Closed | Error::Io(_)));
    origin.await.expect("origin");
}

#[tokio::test]
async fn body_frames_share_the_read_buffer() {
    let (addr, _seen) = origin(vec![vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    ]])
    .await;
    let mut resp = fetch(addr).await;
    let frame = poll_fn(|cx| resp.body_mut().poll_frame(cx))
        .await
        .expect("frame")
        .expect("ok");
    assert_eq!(frame.into_data().ok(), Some(Bytes::from_static(b"abc")));
    assert!(resp.body().is_end_stream());
}
