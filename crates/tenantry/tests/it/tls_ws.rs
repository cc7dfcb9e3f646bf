//! TLS and WebSocket through the real binary: per-tenant certificates chosen by SNI, HTTP/2
//! negotiated by ALPN, WebSocket upgrades spliced to the origin, and certificates added by a
//! reload served without a restart.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{
    Request as WsRequest, Response as WsResponse,
};

use super::*;

/// The longest any single network step may take before the test fails instead of hanging.
const STEP: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {STEP:?}"))
}

/// [`config`] plus a TLS listener on an ephemeral port.
fn tls_config(tenants: &str) -> String {
    format!("tls_listen: 127.0.0.1:0\n{}", config(tenants))
}

/// The `tls:` line of a route (for [`tenant`]'s `extra`), naming files written by [`write_cert`].
fn tls_extra(name: &str) -> String {
    format!("        tls: {{ cert: {name}.crt, key: {name}.key }}\n")
}

/// Writes a fresh self-signed certificate for `san` to `{name}.crt` / `{name}.key` in `dir`
/// and returns its DER.
fn write_cert(dir: &Path, name: &str, san: &str) -> CertificateDer<'static> {
    let ck =
        rcgen::generate_simple_self_signed(vec![san.to_owned()]).expect("generate certificate");
    std::fs::write(dir.join(format!("{name}.crt")), ck.cert.pem()).expect("write certificate");
    std::fs::write(
        dir.join(format!("{name}.key")),
        ck.signing_key.serialize_pem(),
    )
    .expect("write key");
    ck.cert.der().clone()
}

/// A TLS client trusting exactly `roots`, offering the given ALPN protocols.
fn connector(roots: &[&CertificateDer<'static>], alpn: &[&[u8]]) -> TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for c in roots {
        store.add((*c).clone()).expect("add root certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(cfg))
}

/// Connects to `addr` and completes a TLS handshake with `sni` as the server name.
async fn handshake(
    c: &TlsConnector,
    addr: SocketAddr,
    sni: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = within("TCP connect", TcpStream::connect(addr)).await?;
    let name = ServerName::try_from(sni.to_owned()).expect("valid server name");
    within("TLS handshake", c.connect(name, tcp)).await
}

/// The leaf certificate the server presented.
fn peer_cert(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the server presented a certificate")
        .clone()
        .into_owned()
}

/// One HTTP/1.1 `GET` on an established TLS connection: status and echo JSON.
async fn h1_get(stream: TlsStream<TcpStream>, host: &str, path: &str) -> (StatusCode, Value) {
    let (mut send, conn) = within(
        "HTTP/1.1 handshake",
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .expect("HTTP/1.1 client handshake");
    let driver = tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = within("HTTP/1.1 response", send.send_request(req))
        .await
        .expect("HTTP/1.1 response");
    let status = resp.status();
    let body = within("HTTP/1.1 body", resp.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    driver.abort();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_each_tenant_its_own_certificate_by_sni() {
    let b = echo_backends(2).await;
    let dir = Arc::new(TempDir::new());
    let acme = write_cert(dir.path(), "acme", "acme.localhost");
    let globex = write_cert(dir.path(), "globex", "*.globex.localhost");
    let yaml = tls_config(&format!(
        "{}{}",
        tenant(
            "acme",
            "acme.localhost",
            "round_robin",
            &[&b[0]],
            &tls_extra("acme")
        ),
        tenant(
            "globex",
            "*.globex.localhost",
            "round_robin",
            &[&b[1]],
            &tls_extra("globex")
        ),
    ));
    let t = Tenantry::start_in(bin(), &yaml, dir, &[]).await;
    let tls = t.tls.expect("a TLS listener");
    let c = connector(&[&acme, &globex], &[b"http/1.1"]);

    for (sni, cert, backend) in [
        ("acme.localhost", &acme, "b0"),
        ("www.globex.localhost", &globex, "b1"),
    ] {
        let s = handshake(&c, tls, sni)
            .await
            .unwrap_or_else(|e| panic!("handshake for {sni}: {e}"));
        assert!(
            peer_cert(&s) == *cert,
            "SNI {sni} was answered with another tenant's certificate"
        );
        let (status, echo) = h1_get(s, sni, "/hello").await;
        assert_eq!(status, StatusCode::OK, "GET https://{sni}/hello: {echo}");
        assert_eq!(echo["backend"], backend, "{echo}");
        assert_eq!(echo["host"], sni, "{echo}");
        assert_eq!(echo["x_forwarded_proto"], "https", "{echo}");
    }

    // No route has this host, so no certificate: the handshake must fail.
    let unknown = handshake(&c, tls, "unknown.localhost").await;
    assert!(
        unknown.is_err(),
        "a handshake for an unknown SNI name succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_via_alpn() {
    let b = echo_backends(1).await;
    let dir = Arc::new(TempDir::new());
    let acme = write_cert(dir.path(), "acme", "acme.localhost");
    let yaml = tls_config(&tenant(
        "acme",
        "acme.localhost",
        "round_robin",
        &[&b[0]],
        &tls_extra("acme"),
    ));
    let t = Tenantry::start_in(bin(), &yaml, dir, &[]).await;
    let tls = t.tls.expect("a TLS listener");

    let c = connector(&[&acme], &[b"h2", b"http/1.1"]);
    let s = handshake(&c, tls, "acme.localhost")
        .await
        .expect("TLS handshake");
    assert_eq!(
        s.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN did not settle on h2"
    );

    let (send, conn) = within(
        "HTTP/2 handshake",
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s)),
    )
    .await
    .expect("HTTP/2 client handshake");
    let driver = tokio::spawn(conn);

    async fn get(
        mut send: hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
        path: String,
    ) -> (StatusCode, Version, Value) {
        within("HTTP/2 ready", send.ready())
            .await
            .expect("HTTP/2 connection ready");
        let req = Request::get(format!("https://acme.localhost{path}"))
            .version(Version::HTTP_2)
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = within("HTTP/2 response", send.send_request(req))
            .await
            .expect("HTTP/2 response");
        let (status, version) = (resp.status(), resp.version());
        let body = within("HTTP/2 body", resp.into_body().collect())
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            version,
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }

    let (status, version, echo) = get(send.clone(), "/x".into()).await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(echo["host"], "acme.localhost", "{echo}");
    assert_eq!(echo["path"], "/x", "{echo}");
    assert_eq!(echo["x_forwarded_proto"], "https", "{echo}");

    // An `:authority` that is no plain host (user info, a port that is not a number) is
    // refused: it would become the `Host` the backend sees.
    for target in [
        "https://acme.localhost:1@evil.example/x",
        "https://acme.localhost:x1/x",
    ] {
        let mut sender = send.clone();
        within("HTTP/2 ready", sender.ready())
            .await
            .expect("HTTP/2 connection ready");
        let req = Request::get(target)
            .version(Version::HTTP_2)
            .header("host", "acme.localhost")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = within("HTTP/2 response", sender.send_request(req))
            .await
            .expect("HTTP/2 response");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{target}");
    }

    // 20 concurrent streams on the same connection.
    let mut streams = JoinSet::new();
    for i in 0..20 {
        streams.spawn(get(send.clone(), format!("/x?i={i}")));
    }
    let mut seen = Vec::new();
    while let Some(r) = streams.join_next().await {
        let (status, version, echo) = r.expect("request task");
        assert_eq!(status, StatusCode::OK, "{echo}");
        assert_eq!(version, Version::HTTP_2);
        let q = echo["query"].as_str().unwrap_or_default().to_owned();
        seen.push(
            q.trim_start_matches("i=")
                .parse::<u32>()
                .expect("echoed query"),
        );
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..20).collect::<Vec<_>>(),
        "each stream got its own answer"
    );
    drop(send);
    driver.abort();
}

/// A WebSocket origin that echoes every text and binary message and records the `Host` and
/// `X-Forwarded-For` of each handshake it accepted. Dropping it closes everything.
struct WsOrigin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, String)>>>,
    task: JoinHandle<()>,
}

impl WsOrigin {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind WebSocket origin");
        let addr = listener.local_addr().expect("origin address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            // Connections live in the set, so aborting this task closes them too.
            let mut conns = JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let record = Arc::clone(&record);
                conns.spawn(async move {
                    #[allow(clippy::result_large_err)] // the signature is tungstenite's
                    let callback = |req: &WsRequest, resp: WsResponse| {
                        let h = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned()
                        };
                        record
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((h("host"), h("x-forwarded-for")));
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await
                    else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { addr, seen, task }
    }
}

impl Drop for WsOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_proxy() {
    let origin = WsOrigin::start().await;
    let yaml = config(&format!(
        "  - id: chat\n    routes:\n      - id: ws\n        host: ws.localhost\n        algorithm: round_robin\n        backends: [ {{ address: {} }} ]\n",
        origin.addr
    ));
    let t = Tenantry::start(bin(), &yaml).await;

    let mut req = "ws://ws.localhost/chat"
        .into_client_request()
        .expect("WebSocket request");
    req.headers_mut()
        .insert("host", HeaderValue::from_static("ws.localhost"));
    let tcp = within("TCP connect", TcpStream::connect(t.http))
        .await
        .expect("connect to tenantry");
    let (mut ws, resp) = within(
        "WebSocket handshake",
        tokio_tungstenite::client_async(req, tcp),
    )
    .await
    .expect("WebSocket upgrade through the proxy");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);

    let sent = [
        Message::text("first"),
        Message::binary(Bytes::from_static(&[0, 1, 2, 255])),
        Message::text("third ✓"),
    ];
    for m in &sent {
        within("WebSocket send", ws.send(m.clone()))
            .await
            .expect("send message");
    }
    for m in &sent {
        let got = within("WebSocket echo", ws.next()).await;
        match got {
            Some(Ok(g)) => assert_eq!(&g, m, "messages came back out of order or altered"),
            other => panic!("expected the echo of {m:?}, got {other:?}"),
        }
    }

    within("WebSocket close", ws.close(None))
        .await
        .expect("send close frame");
    let reply = within("WebSocket close reply", ws.next()).await;
    assert!(
        matches!(reply, Some(Ok(Message::Close(_)))),
        "expected the origin's close frame, got {reply:?}"
    );
    let end = within("WebSocket end", ws.next()).await;
    assert!(
        end.is_none(),
        "expected the stream to end after the close handshake, got {end:?}"
    );

    let seen = origin
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert_eq!(seen.len(), 1, "origin handshakes: {seen:?}");
    assert_eq!(seen[0].0, "ws.localhost", "Host at the origin");
    assert_eq!(
        seen[0].1, "127.0.0.1",
        "X-Forwarded-For at the origin (proves the proxy was in the path)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_added_by_reload_is_served_without_restart() {
    let b = echo_backends(2).await;
    let dir = Arc::new(TempDir::new());
    let acme = write_cert(dir.path(), "acme", "acme.localhost");
    let globex = write_cert(dir.path(), "globex", "*.globex.localhost");
    let acme_tenant = tenant(
        "acme",
        "acme.localhost",
        "round_robin",
        &[&b[0]],
        &tls_extra("acme"),
    );
    let t = Tenantry::start_in(bin(), &tls_config(&acme_tenant), dir, &[]).await;
    let tls = t.tls.expect("a TLS listener");
    let c = connector(&[&acme, &globex], &[b"http/1.1"]);

    assert!(
        handshake(&c, tls, "www.globex.localhost").await.is_err(),
        "globex has no certificate yet, but its handshake succeeded"
    );

    let globex_tenant = tenant(
        "globex",
        "*.globex.localhost",
        "round_robin",
        &[&b[1]],
        &tls_extra("globex"),
    );
    t.write_config(&tls_config(&format!("{acme_tenant}{globex_tenant}")));
    let (status, body) = t.reload().await;
    assert_eq!(status, StatusCode::OK, "reload: {body}");

    let s = handshake(&c, tls, "www.globex.localhost")
        .await
        .expect("globex handshake after the reload");
    assert!(
        peer_cert(&s) == globex,
        "globex was answered with another certificate after the reload"
    );
    let (status, echo) = h1_get(s, "www.globex.localhost", "/").await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(echo["backend"], "b1", "{echo}");
    assert_eq!(echo["x_forwarded_proto"], "https", "{echo}");

    // The tenant that was already there keeps its certificate.
    let s = handshake(&c, tls, "acme.localhost")
        .await
        .expect("acme handshake after the reload");
    assert!(
        peer_cert(&s) == acme,
        "acme's certificate changed with the reload"
    );
}
