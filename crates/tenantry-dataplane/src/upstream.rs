//! Upstream connections: a keep-alive pool per backend on hyper's HTTP/1 client connections.
//!
//! Why not hyper-util's pooled client: its per-request checkout (a shared map keyed by
//! authority, a waiter queue) showed up in profiles, and it consumes a request even when the
//! connection fails before a byte is sent. Here the pool lives in the backend's shared state
//! (so it survives reloads), a connection goes back to its pool when the response body has
//! been read to the end, and a request that was never sent comes back to the caller, so
//! retrying it on another backend or connection needs no copy and is safe for any method.

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tenantry_config::UpstreamSettings;
use tenantry_domain::BackendAddr;
use tokio::net::TcpStream;

use crate::body::UpBody;

/// A connection ready for the next request.
pub type Conn = SendRequest<UpBody>;

/// Idle connections of one backend.
#[derive(Default)]
pub struct IdlePool {
    idle: Mutex<Vec<(Conn, Instant)>>,
}

impl std::fmt::Debug for IdlePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdlePool")
            .field("idle", &self.len())
            .finish()
    }
}

impl IdlePool {
    fn take(&self, idle_timeout: Duration) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((conn, since)) = idle.pop() {
            if !conn.is_closed() && since.elapsed() < idle_timeout {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection whose response was read to the end.
    pub fn put(&self, conn: Conn, max_idle: usize) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < max_idle {
            idle.push((conn, Instant::now()));
        }
    }

    /// Idle connections kept.
    pub fn len(&self) -> usize {
        self.idle.lock().map_or(0, |i| i.len())
    }

    /// Whether no connection is idle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why an upstream request failed.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, timed out): nothing was sent.
    Connect(io::Error),
    /// The request was (at least partly) sent and then failed.
    Request(hyper::Error),
}

/// A response and the connection that carried it (to return to the pool at body end).
pub struct Sent {
    /// The upstream's response.
    pub response: Response<Incoming>,
    /// The connection.
    pub conn: Conn,
}

/// Sends a request to `addr`, on an idle pooled connection if one is usable, else on a new one.
/// On failure, the request comes back if none of it was sent.
pub async fn send(
    pool: &IdlePool,
    addr: &BackendAddr,
    settings: &UpstreamSettings,
    mut req: Request<UpBody>,
) -> Result<Sent, (UpstreamError, Option<Request<UpBody>>)> {
    while let Some(mut conn) = pool.take(settings.idle_timeout) {
        if conn.ready().await.is_err() {
            continue;
        }
        match conn.try_send_request(req).await {
            Ok(response) => return Ok(Sent { response, conn }),
            // Closed by the upstream while idle: the request was not sent, try the next one.
            Err(mut e) => match e.take_message() {
                Some(r) => req = r,
                None => return Err((UpstreamError::Request(e.into_error()), None)),
            },
        }
    }
    let mut conn = match connect(addr, settings.connect_timeout).await {
        Ok(c) => c,
        Err(e) => return Err((UpstreamError::Connect(e), Some(req))),
    };
    match conn.try_send_request(req).await {
        Ok(response) => Ok(Sent { response, conn }),
        Err(mut e) => {
            let unsent = e.take_message();
            Err((UpstreamError::Request(e.into_error()), unsent))
        }
    }
}

/// Opens a TCP connection to a backend: directly for an IP, through the system resolver
/// (trying each address) for a name. `timeout` covers resolution and connection.
pub async fn connect_tcp(addr: &BackendAddr, timeout: Duration) -> io::Result<TcpStream> {
    let connecting = async {
        match addr.socket_addr() {
            Some(sa) => TcpStream::connect(sa).await,
            None => TcpStream::connect((addr.connect_host(), addr.port())).await,
        }
    };
    let stream = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out after {timeout:?}"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens a new HTTP/1.1 connection (with upgrade support) and spawns its driver task.
pub async fn connect(addr: &BackendAddr, timeout: Duration) -> io::Result<Conn> {
    let stream = connect_tcp(addr, timeout).await?;
    let (conn, driver) = http1::Builder::new()
        .writev(true)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    let addr = addr.clone();
    tokio::spawn(async move {
        if let Err(e) = driver.with_upgrades().await {
            tracing::debug!(error = %e, backend = %addr, "upstream connection ended with an error");
        }
    });
    Ok(conn)
}
