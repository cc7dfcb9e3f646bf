//! Listeners, accept loops and connection serving (HTTP/1.1 and HTTP/2, plain and TLS), the
//! admin endpoints, and graceful shutdown.

use std::convert::Infallible;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::body::{ReqBody, RespBody};
use crate::gateway::Gateway;
use crate::h1server::{self, Prepend, Served};
use crate::linger::Lingering;
use crate::proxy::{self, ConnInfo};

/// The process's listening sockets (bound here, or inherited through `--upgrade`).
#[derive(Debug)]
pub struct Listeners {
    /// Plain HTTP.
    pub http: StdTcpListener,
    /// TLS, if configured.
    pub tls: Option<StdTcpListener>,
    /// Admin, if configured.
    pub admin: Option<StdTcpListener>,
}

/// Binds a listening socket with a deep backlog and `SO_REUSEADDR`.
pub fn bind(addr: SocketAddr) -> io::Result<StdTcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

impl Listeners {
    /// Binds the listeners named in the settings.
    pub fn bind(settings: &tenantry_config::ServerSettings) -> io::Result<Self> {
        let with_addr = |a: SocketAddr| {
            move |e: io::Error| io::Error::new(e.kind(), format!("cannot listen on {a}: {e}"))
        };
        Ok(Self {
            http: bind(settings.listen).map_err(with_addr(settings.listen))?,
            tls: settings
                .tls_listen
                .map(|a| bind(a).map_err(with_addr(a)))
                .transpose()?,
            admin: settings
                .admin_listen
                .map(|a| bind(a).map_err(with_addr(a)))
                .transpose()?,
        })
    }

    /// Bound addresses: (http, tls, admin).
    pub fn local_addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>, Option<SocketAddr>) {
        (
            self.http.local_addr().ok(),
            self.tls.as_ref().and_then(|l| l.local_addr().ok()),
            self.admin.as_ref().and_then(|l| l.local_addr().ok()),
        )
    }
}

/// How the gateway should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Keep running.
    Run,
    /// SIGTERM/SIGQUIT: keep accepting for the drain window (readiness 503), then stop.
    Shutdown,
    /// Another process took the listeners over: stop accepting at once, then finish.
    Handover,
}

/// Sends the stop signal to a running [`serve`].
#[derive(Clone, Debug)]
pub struct Stopper(watch::Sender<StopMode>);

impl Stopper {
    /// Asks the gateway to stop in the given way (the first request wins).
    pub fn stop(&self, mode: StopMode) {
        self.0.send_if_modified(|m| {
            if *m == StopMode::Run {
                *m = mode;
                true
            } else {
                false
            }
        });
    }
}

impl Stopper {
    /// A receiver that sees stop requests.
    pub fn subscribe(&self) -> watch::Receiver<StopMode> {
        self.0.subscribe()
    }
}

/// A stop handle and its receiver.
pub fn stopper() -> (Stopper, watch::Receiver<StopMode>) {
    let (tx, rx) = watch::channel(StopMode::Run);
    (Stopper(tx), rx)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Proxy { tls: bool },
    Admin,
}

/// Serves every listener until a stop is requested, then drains and returns once in-flight
/// requests finished (or the grace period ran out).
///
/// Runtime shape (chosen by measurement, see docs/benchmarks.md): `workers` OS threads, each
/// running its own single-threaded tokio runtime with its own accept loops on duplicates of the
/// proxy listeners. A connection, its requests and the upstream connections they open stay on
/// one thread: no cross-thread wake-ups or work-stealing on the request path (about 20% less
/// CPU per request than a multi-threaded runtime here). The admin listener, health checks,
/// reloads and signals run on the caller's runtime.
pub async fn serve(
    gw: Arc<Gateway>,
    listeners: Listeners,
    mut stop: watch::Receiver<StopMode>,
    workers: usize,
) -> io::Result<()> {
    let graceful = Arc::new(GracefulShutdown::new());
    let (accepting_tx, accepting_rx) = watch::channel(true);
    let (finished_tx, finished_rx) = watch::channel(false);
    // Told to connections served by the own HTTP/1.1 server (`h1server`) at shutdown, as
    // `graceful` tells hyper's; dropped receivers mark the connections gone.
    let (closing_tx, closing_rx) = watch::channel(false);
    // Proxy connections: hyper's HTTP/1 header timeout arms a timer for every request (a
    // clock read, an allocation, a timer-wheel insert and removal); the proxy's idle watchdog
    // (`serve_proxy`) gives the same protection with one timer per connection. The admin
    // listener keeps hyper's.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Half-close: an HTTP/1.0-style client that shuts down its sending side after the request
    // still gets the whole response (hyper's default treats that EOF as the client leaving,
    // cutting the response after its head and abandoning the upstream's body).
    builder
        .http1()
        .half_close(true)
        .max_buf_size(gw.settings.max_header_bytes.max(8192))
        .writev(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(u32::try_from(gw.settings.max_header_bytes).unwrap_or(u32::MAX));
    let mut admin_builder = builder.clone();
    admin_builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(gw.settings.header_timeout);
    let builder = Arc::new(builder);
    let tls = listeners
        .tls
        .as_ref()
        .map(|_| TlsAcceptor::from(crate::tls::server_config(Arc::clone(&gw.table))));

    // Proxy workers.
    let mut accepting_done = Vec::new();
    let mut exited = Vec::new();
    for i in 0..workers.max(1) {
        let mut own: Vec<(StdTcpListener, Kind)> =
            vec![(listeners.http.try_clone()?, Kind::Proxy { tls: false })];
        if let Some(l) = &listeners.tls {
            own.push((l.try_clone()?, Kind::Proxy { tls: true }));
        }
        let (gw, builder, tls, stop) = (
            Arc::clone(&gw),
            Arc::clone(&builder),
            tls.clone(),
            Shutdown {
                graceful: Arc::clone(&graceful),
                closing: closing_rx.clone(),
            },
        );
        let (accepting, mut finished) = (accepting_rx.clone(), finished_rx.clone());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let (exit_tx, exit_rx) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("tenantry-w{i}"))
            .spawn(move || {
                rt.block_on(async move {
                    // Coarse upstream deadlines for this worker's requests (`deadline`).
                    let sweeper = tokio::spawn(crate::deadline::sweeper());
                    let mut loops = Vec::new();
                    for (l, kind) in own {
                        match TcpListener::from_std(l) {
                            Ok(l) => loops.push(tokio::spawn(accept_loop(
                                l,
                                kind,
                                Arc::clone(&gw),
                                Arc::clone(&builder),
                                tls.clone(),
                                stop.clone(),
                                accepting.clone(),
                            ))),
                            Err(e) => tracing::error!(error = %e, "cannot register a listener"),
                        }
                    }
                    drop(stop);
                    for l in loops {
                        let _ = l.await;
                    }
                    let _ = done_tx.send(());
                    // Keep driving this thread's connections until the server is finished.
                    let _ = finished.wait_for(|f| *f).await;
                    sweeper.abort();
                });
                let _ = exit_tx.send(());
            })?;
        accepting_done.push(done_rx);
        exited.push(exit_rx);
    }
    // The workers hold their own duplicates; the originals close with these drops.
    drop(listeners.http);
    drop(listeners.tls);
    let admin_loop = match listeners.admin {
        Some(l) => Some(tokio::spawn(accept_loop(
            TcpListener::from_std(l)?,
            Kind::Admin,
            Arc::clone(&gw),
            Arc::new(admin_builder),
            None,
            Shutdown {
                graceful: Arc::clone(&graceful),
                closing: closing_rx.clone(),
            },
            accepting_rx.clone(),
        ))),
        None => None,
    };
    drop(closing_rx);

    // Wait for a stop request.
    let mode = loop {
        if stop.changed().await.is_err() {
            break StopMode::Shutdown;
        }
        let m = *stop.borrow();
        if m != StopMode::Run {
            break m;
        }
    };
    gw.start_draining();
    match mode {
        StopMode::Handover => {
            let _ = accepting_tx.send(false);
            tracing::info!(drain = ?gw.settings.drain, "listeners handed over; finishing in-flight requests");
            // Idle keep-alive connections get a window to send one more request, answered
            // with `Connection: close`, so their clients move to the new process cleanly.
            tokio::time::sleep(gw.settings.drain).await;
        }
        _ => {
            tracing::info!(drain = ?gw.settings.drain, "draining: readiness is 503, still accepting");
            tokio::time::sleep(gw.settings.drain).await;
            let _ = accepting_tx.send(false);
        }
    }
    for d in accepting_done {
        let _ = d.await;
    }
    if let Some(l) = admin_loop {
        let _ = l.await;
    }
    let open = graceful.count() + closing_tx.receiver_count();
    tracing::info!(connections = open, grace = ?gw.settings.grace, "closing connections");
    let _ = closing_tx.send(true);
    match Arc::try_unwrap(graceful) {
        Ok(graceful) => {
            let all = async {
                graceful.shutdown().await;
                closing_tx.closed().await;
            };
            if tokio::time::timeout(gw.settings.grace, all).await.is_err() {
                tracing::warn!("grace period over; closing the remaining connections");
            }
        }
        Err(_) => tracing::warn!("connection tracker still shared; not waiting for connections"),
    }
    let _ = finished_tx.send(true);
    for e in exited {
        let _ = e.await;
    }
    Ok(())
}

/// What tells connections that the server shuts down: hyper's through `graceful`, the own
/// HTTP/1.1 server's through `closing`.
#[derive(Clone)]
struct Shutdown {
    graceful: Arc<GracefulShutdown>,
    closing: watch::Receiver<bool>,
}

impl Shutdown {
    /// One connection's part of both.
    fn watch(&self) -> (Watcher, watch::Receiver<bool>) {
        (self.graceful.watcher(), self.closing.clone())
    }
}

async fn accept_loop(
    listener: TcpListener,
    kind: Kind,
    gw: Arc<Gateway>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: Option<TlsAcceptor>,
    stop: Shutdown,
    mut accepting: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            changed = accepting.changed() => {
                if changed.is_err() || !*accepting.borrow() {
                    return;
                }
                continue;
            }
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let gw = Arc::clone(&gw);
        let builder = Arc::clone(&builder);
        let watch = stop.watch();
        let tls = tls.clone();
        tokio::spawn(async move {
            gw.metrics
                .global
                .connections
                .fetch_add(1, Ordering::Relaxed);
            serve_connection(stream, peer, kind, &gw, &builder, tls, watch).await;
            gw.metrics
                .global
                .connections
                .fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    gw: &Arc<Gateway>,
    builder: &auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    (watcher, closing): (Watcher, watch::Receiver<bool>),
) {
    let local = stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let result = match kind {
        Kind::Admin => {
            let gw = Arc::clone(gw);
            let svc = service_fn(move |req| admin(Arc::clone(&gw), peer, req));
            watcher
                .watch(
                    builder
                        .serve_connection(TokioIo::new(stream), svc)
                        .into_owned(),
                )
                .await
        }
        Kind::Proxy { tls: false } => {
            serve_proxy(
                Lingering::new(stream),
                ConnInfo::new(peer, false).with_local(local),
                gw,
                builder,
                watcher,
                Some(closing),
            )
            .await
        }
        Kind::Proxy { tls: true } => {
            let Some(acceptor) = tls else { return };
            let handshake = tokio::time::timeout(
                Duration::from_secs(10),
                acceptor.accept(Lingering::new(stream)),
            )
            .await;
            let stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %peer, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            // HTTP/2 (chosen by ALPN) is hyper's; HTTP/1.1 starts on the own server.
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
            serve_proxy(
                stream,
                ConnInfo::new(peer, true).with_local(local),
                gw,
                builder,
                watcher,
                (!h2).then_some(closing),
            )
            .await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

/// Serves proxied HTTP (1.1 with upgrades, or 2) on a plain or TLS stream. With `h1` (the
/// shutdown signal), the connection starts on the own HTTP/1.1 server and moves to hyper's at
/// the first request that server leaves to hyper; without, hyper serves it all.
async fn serve_proxy<I>(
    io: I,
    conn: ConnInfo,
    gw: &Arc<Gateway>,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    h1: Option<watch::Receiver<bool>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = gw.settings.header_timeout;
    let gw = Arc::clone(gw);
    let conn = Arc::new(conn);
    let info = Arc::clone(&conn);
    let limits = h1server::Limits {
        max_head: gw.settings.max_header_bytes.max(8192),
        max_body: proxy::BUFFERED_BODY_MAX,
        body_timeout: header_timeout,
    };
    let serving = async move {
        let io = match h1 {
            Some(closing) => {
                let handle = |req| proxy::handle(Arc::clone(&gw), Arc::clone(&conn), req);
                match h1server::serve(io, limits, closing, &conn.reading_body, handle).await? {
                    Served::Closed => return Ok(()),
                    Served::Fallback(io) => io,
                }
            }
            None => Prepend::new(bytes::Bytes::new(), io),
        };
        let svc = service_fn(move |req: Request<Incoming>| {
            let gw = Arc::clone(&gw);
            let conn = Arc::clone(&conn);
            async move {
                let resp = proxy::handle(gw, conn, req.map(ReqBody::Hyper)).await;
                // hyper writes one map: the upstream's raw fields and the rate-limit fields
                // join the gateway's.
                let (mut parts, mut body) = resp.into_parts();
                body.merge_into_map(&mut parts.headers);
                Ok::<_, Infallible>(Response::from_parts(parts, body))
            }
        });
        watcher
            .watch(
                builder
                    .serve_connection_with_upgrades(TokioIo::new(io), svc)
                    .into_owned(),
            )
            .await
    };
    tokio::pin!(serving);
    // The idle watchdog: a connection with nothing in flight that completes no request head
    // for two checks in a row (`limits.header_timeout` to 1.5 times that) is closed. That
    // covers idle keep-alive connections and heads sent too slowly (slowloris). Nothing is
    // lost: no request is in flight.
    let period = header_timeout / 2;
    let mut last = info.progress().0;
    let mut quiet = 0;
    loop {
        tokio::select! {
            biased;
            done = &mut serving => return done,
            () = tokio::time::sleep(period) => {
                let (heads, in_flight) = info.progress();
                if heads != last || in_flight > 0 {
                    last = heads;
                    quiet = 0;
                    continue;
                }
                quiet += 1;
                if quiet >= 2 {
                    tracing::debug!(peer = %info.peer, "closing a connection idle or without a complete request head for {header_timeout:?}");
                    return Ok(());
                }
            }
        }
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<bytes::Bytes>,
) -> Response<RespBody> {
    let mut r = Response::new(RespBody::full(body, None));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

/// The admin listener: `/healthz`, `/readyz`, `/metrics`, `POST /admin/reload`.
async fn admin(
    gw: Arc<Gateway>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    if let Some(api) = gw.api()
        && (req.uri().path() == "/api" || req.uri().path().starts_with("/api/"))
    {
        let req = req.map(|b| {
            use http_body_util::BodyExt as _;
            b.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                .boxed_unsync()
        });
        let resp = api(req, peer).await;
        let (parts, body) = resp.into_parts();
        return Ok(Response::from_parts(parts, RespBody::full(body, None)));
    }
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => {
            if gw.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            } else {
                text(StatusCode::OK, "text/plain", "ready\n")
            }
        }
        (&Method::GET, "/metrics") => {
            let table = gw.table();
            text(StatusCode::OK, "text/plain; version=0.0.4", {
                let g = &gw.metrics.global;
                g.ratelimit_backend_errors
                    .store(gw.limiter.backend_errors(), Ordering::Relaxed);
                g.ratelimit_backend_up
                    .store(u64::from(gw.limiter.backend_up()), Ordering::Relaxed);
                g.ratelimit_backend_calls
                    .store(gw.limiter.backend_calls(), Ordering::Relaxed);
                g.ratelimit_cached_denials
                    .store(gw.limiter.cached_denials(), Ordering::Relaxed);
                for (slot, (_, n)) in g.ratelimit_decisions.iter().zip(gw.limiter.decisions()) {
                    slot.store(n, Ordering::Relaxed);
                }
                gw.metrics.render(&table)
            })
        }
        (&Method::POST, "/admin/reload") => {
            if !peer.ip().is_loopback() {
                text(
                    StatusCode::FORBIDDEN,
                    "application/json",
                    "{\"error\":\"forbidden\",\"reason\":\"reload is allowed from localhost only\"}\n",
                )
            } else {
                match gw.reload().await {
                    Ok(report) => text(
                        StatusCode::OK,
                        "application/json",
                        serde_json::json!({"status": "reloaded", "report": report}).to_string(),
                    ),
                    Err(e) => {
                        let errors: Vec<String> = match &e {
                            crate::gateway::ReloadError::Invalid(errs) => {
                                errs.iter().map(ToString::to_string).collect()
                            }
                            other => vec![other.to_string()],
                        };
                        text(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "application/json",
                            serde_json::json!({"error": "invalid_config", "errors": errors})
                                .to_string(),
                        )
                    }
                }
            }
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/admin/reload") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "application/json",
            "{\"error\":\"method_not_allowed\",\"message\":\"/healthz, /readyz and /metrics answer GET, /admin/reload POST\"}\n",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "application/json",
            "{\"error\":\"not_found\",\"message\":\"no such path on the admin listener: it serves /healthz, /readyz, /metrics, /admin/reload and /api/...\"}\n",
        ),
    };
    Ok(resp)
}
