//! Sample backends: small HTTP servers that answer with JSON describing the request (which
//! backend served it, host, path, forwarding headers). Used by `tenantry demo-backends`, the
//! quick start, the tests and the benchmarks.
//!
//! Paths: `/healthz` (200, or the status set with [`EchoBackend::set_health_status`]),
//! `/slow?ms=N` (answers after N ms, at most 60 s), `/status/N` (answers status N), anything
//! else echoes.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Shared state of one echo backend.
#[derive(Debug)]
pub struct EchoState {
    name: String,
    health_status: AtomicU16,
    hits: AtomicU64,
    connections: AtomicU64,
}

/// A running echo backend; stopping it (or dropping it) closes its listener and connections.
#[derive(Debug)]
pub struct EchoBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<EchoState>,
    task: JoinHandle<()>,
}

impl EchoBackend {
    /// Starts a backend on `addr` (port 0 for an ephemeral port) named `name`.
    pub async fn start(addr: SocketAddr, name: &str) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(EchoState {
            name: name.to_owned(),
            health_status: AtomicU16::new(200),
            hits: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&state)));
        Ok(Self { addr, state, task })
    }

    /// The status `/healthz` answers from now on.
    pub fn set_health_status(&self, status: u16) {
        self.state.health_status.store(status, Ordering::Relaxed);
    }

    /// Requests served, health checks excluded.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::Relaxed)
    }

    /// Connections accepted so far (health checks included).
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// Stops listening and closes every connection.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<EchoState>) {
    // Connections live in the set, so aborting this task closes them all (a "killed" backend).
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                state.connections.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
                let state = Arc::clone(&state);
                conns.spawn(async move {
                    let svc = service_fn(move |req| echo(Arc::clone(&state), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn echo(
    state: Arc<EchoState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        let status = StatusCode::from_u16(state.health_status.load(Ordering::Relaxed))
            .unwrap_or(StatusCode::OK);
        return Ok(reply(status, "text/plain", Bytes::from_static(b"ok\n")));
    }
    state.hits.fetch_add(1, Ordering::Relaxed);
    let mut status = StatusCode::OK;
    if path == "/slow" {
        let ms: u64 = query_param(req.uri().query(), "ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    } else if let Some(code) = path.strip_prefix("/status/") {
        status = code
            .parse()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::OK);
    }
    let h = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let summary = serde_json::json!({
        "backend": state.name,
        "method": req.method().as_str(),
        "path": path,
        "query": req.uri().query(),
        "host": h("host"),
        "x_forwarded_for": h("x-forwarded-for"),
        "x_forwarded_proto": h("x-forwarded-proto"),
        "x_forwarded_host": h("x-forwarded-host"),
        "x_request_id": h("x-request-id"),
        "forwarded": h("forwarded"),
        "connection": h("connection"),
    });
    let (_, body) = req.into_parts();
    let received = body
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let mut v = summary;
    v["body_bytes"] = received.into();
    Ok(reply(
        status,
        "application/json",
        Bytes::from(format!("{v}\n")),
    ))
}

fn reply(status: StatusCode, ct: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(ct));
    r
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}
