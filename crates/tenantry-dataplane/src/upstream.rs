//! Upstream connections: a keep-alive pool per backend, holding two kinds of connection.
//!
//! - [`H1Conn`], the inline HTTP/1.1 client (`h1.rs`), for requests whose body is in memory
//!   (no body, or one read in full for the WAF or an LLM policy): most requests.
//! - hyper's HTTP/1 client connections, for bodies still streaming from the client and for
//!   protocol upgrades.
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
use crate::forward::Forwarding;
use crate::h1::{self, H1Body, H1Conn};

/// A connection ready for the next request.
#[derive(Debug)]
pub enum Conn {
    /// hyper's client connection (its driver runs as a task).
    Hyper(SendRequest<UpBody>),
    /// The inline client's connection.
    Inline(H1Conn),
}

/// Idle connections of one backend, most recently used last. One list for both kinds keeps
/// the per-backend state small (it exists for every backend of every tenant); pools hold one
/// kind almost always, so the search from the end stops at once.
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
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Conn, Instant)>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used connection of one kind (`pick` returns it, or gives the
    /// connection back if it is the other kind) that is `alive` and not idle too long; dead
    /// ones of that kind met on the way are dropped.
    fn take<T>(
        &self,
        hyper: bool,
        idle_timeout: Duration,
        pick: impl Fn(Conn) -> Result<T, Conn>,
        alive: impl Fn(&T) -> bool,
    ) -> Option<T> {
        let mut idle = self.lock();
        let mut end = idle.len();
        while let Some(i) = idle[..end]
            .iter()
            .rposition(|(c, _)| matches!(c, Conn::Hyper(_)) == hyper)
        {
            end = i;
            let (conn, since) = idle.remove(i);
            match pick(conn) {
                Ok(c) if alive(&c) && since.elapsed() < idle_timeout => return Some(c),
                Ok(_) => {}
                // Not reached: the position matched the kind.
                Err(other) => idle.insert(i, (other, since)),
            }
        }
        None
    }

    fn take_hyper(&self, idle_timeout: Duration) -> Option<SendRequest<UpBody>> {
        self.take(
            true,
            idle_timeout,
            |c| match c {
                Conn::Hyper(h) => Ok(h),
                other => Err(other),
            },
            |h| !h.is_closed(),
        )
    }

    fn take_inline(&self, idle_timeout: Duration) -> Option<H1Conn> {
        self.take(
            false,
            idle_timeout,
            |c| match c {
                Conn::Inline(c) => Ok(c),
                other => Err(other),
            },
            |_| true,
        )
    }

    /// Returns a connection whose response was read to the end.
    pub fn put(&self, conn: Conn, max_idle: usize) {
        if let Conn::Hyper(c) = &conn
            && c.is_closed()
        {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < max_idle {
            idle.push((conn, Instant::now()));
        }
    }

    /// Idle connections kept.
    pub fn len(&self) -> usize {
        self.lock().len()
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
    /// The request was (at least partly) sent and then failed (hyper's client).
    Request(hyper::Error),
    /// The request was (at least partly) sent and then failed (the inline client).
    Inline(h1::Error),
}

/// The body of an upstream response.
#[derive(Debug)]
pub enum UpstreamBody {
    /// From hyper's client.
    Hyper(Incoming),
    /// From the inline client (it owns the connection until the body ends).
    Inline(H1Body),
}

/// A response and, for hyper's client, the connection that carried it (to return to the pool
/// at body end; the inline client's body carries its own).
pub struct Sent {
    /// The upstream's response.
    pub response: Response<UpstreamBody>,
    /// hyper's connection.
    pub conn: Option<Conn>,
}

/// Whether a request goes through the inline client: its body is in memory and it asks for no
/// protocol upgrade.
pub fn inline_capable(req: &Request<UpBody>, upgrade: bool) -> bool {
    !upgrade && matches!(req.body(), UpBody::Empty | UpBody::Full(_))
}

/// Sends a request to `addr`, on an idle pooled connection if one is usable, else on a new one.
/// On failure, the request comes back if none of it was sent. Requests that are
/// [`inline_capable`] go through the inline client, others through hyper's.
pub async fn send(
    pool: &IdlePool,
    addr: &BackendAddr,
    settings: &UpstreamSettings,
    req: Request<UpBody>,
    upgrade: bool,
    forwarding: &Forwarding<'_>,
) -> Result<Sent, (UpstreamError, Option<Request<UpBody>>)> {
    if inline_capable(&req, upgrade) {
        send_inline(pool, addr, settings, req, forwarding).await
    } else {
        send_hyper(pool, addr, settings, req).await
    }
}

async fn send_inline(
    pool: &IdlePool,
    addr: &BackendAddr,
    settings: &UpstreamSettings,
    req: Request<UpBody>,
    forwarding: &Forwarding<'_>,
) -> Result<Sent, (UpstreamError, Option<Request<UpBody>>)> {
    let (parts, body) = req.into_parts();
    let bytes: &[u8] = match &body {
        UpBody::Full(Some(b)) => b,
        _ => &[],
    };
    // A request whose method is not idempotent is not sent again once written, so it goes
    // only on a connection with nothing pending on it (closed while idle, for instance).
    let idempotent = parts.method.is_idempotent();
    while let Some(conn) = pool.take_inline(settings.idle_timeout) {
        if !idempotent && !conn.probe() {
            continue;
        }
        match conn.send(&parts, Some(forwarding), bytes, true).await {
            Ok(response) => return Ok(inline_sent(response)),
            Err(f) if f.retry => {
                tracing::debug!(error = %f.error, backend = %addr, "pooled upstream connection was closed; trying another");
            }
            Err(f) => return Err((UpstreamError::Inline(f.error), None)),
        }
    }
    let stream = match connect_tcp(addr, settings.connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            return Err((
                UpstreamError::Connect(e),
                Some(Request::from_parts(parts, body)),
            ));
        }
    };
    match H1Conn::new(stream)
        .send(&parts, Some(forwarding), bytes, false)
        .await
    {
        Ok(response) => Ok(inline_sent(response)),
        Err(f) => Err((UpstreamError::Inline(f.error), None)),
    }
}

fn inline_sent(response: Response<H1Body>) -> Sent {
    Sent {
        response: response.map(UpstreamBody::Inline),
        conn: None,
    }
}

async fn send_hyper(
    pool: &IdlePool,
    addr: &BackendAddr,
    settings: &UpstreamSettings,
    mut req: Request<UpBody>,
) -> Result<Sent, (UpstreamError, Option<Request<UpBody>>)> {
    let hyper_sent = |response: Response<Incoming>, conn| Sent {
        response: response.map(UpstreamBody::Hyper),
        conn: Some(Conn::Hyper(conn)),
    };
    while let Some(mut conn) = pool.take_hyper(settings.idle_timeout) {
        if conn.ready().await.is_err() {
            continue;
        }
        match conn.try_send_request(req).await {
            Ok(response) => return Ok(hyper_sent(response, conn)),
            // Closed by the upstream while idle: the request was not sent, try the next one.
            Err(mut e) => match e.take_message() {
                Some(r) => req = r,
                None => return Err((UpstreamError::Request(e.into_error()), None)),
            },
        }
    }
    // An idle inline connection serves as the socket of a new hyper connection.
    let stream = match pool
        .take_inline(settings.idle_timeout)
        .and_then(|c| c.probe().then(|| c.into_io()).flatten())
    {
        Some(s) => s,
        None => match connect_tcp(addr, settings.connect_timeout).await {
            Ok(s) => s,
            Err(e) => return Err((UpstreamError::Connect(e), Some(req))),
        },
    };
    let mut conn = match handshake(stream, addr).await {
        Ok(c) => c,
        Err(e) => return Err((UpstreamError::Connect(e), Some(req))),
    };
    match conn.try_send_request(req).await {
        Ok(response) => Ok(hyper_sent(response, conn)),
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

/// Starts hyper's HTTP/1.1 client (with upgrade support) on a connected socket and spawns its
/// driver task.
async fn handshake(stream: TcpStream, addr: &BackendAddr) -> io::Result<SendRequest<UpBody>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn socket(listener: &tokio::net::TcpListener) -> TcpStream {
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        // The server side stays open for the test's length by leaking it into a task.
        let (server, _) = accepted.expect("accept");
        tokio::spawn(async move {
            let _keep = server;
            std::future::pending::<()>().await;
        });
        client.expect("connect")
    }

    #[tokio::test]
    async fn one_list_serves_both_kinds_most_recent_first() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = BackendAddr::parse(&listener.local_addr().expect("addr").to_string())
            .expect("backend address");
        let pool = IdlePool::default();
        let long = Duration::from_secs(60);
        let first = H1Conn::new(socket(&listener).await);
        let first_port = format!("{first:?}");
        pool.put(Conn::Inline(first), 8);
        let h = handshake(socket(&listener).await, &addr)
            .await
            .expect("hyper");
        pool.put(Conn::Hyper(h), 8);
        let second = H1Conn::new(socket(&listener).await);
        let second_port = format!("{second:?}");
        pool.put(Conn::Inline(second), 8);
        assert_eq!(pool.len(), 3);
        // Inline ones come back newest first, skipping the hyper one between them.
        assert_eq!(
            format!("{:?}", pool.take_inline(long).expect("inline")),
            second_port
        );
        assert!(pool.take_hyper(long).is_some());
        assert_eq!(
            format!("{:?}", pool.take_inline(long).expect("inline")),
            first_port
        );
        assert!(pool.is_empty());
        // The bound holds across kinds, and expired connections are not handed out.
        for _ in 0..3 {
            pool.put(Conn::Inline(H1Conn::new(socket(&listener).await)), 2);
        }
        assert_eq!(pool.len(), 2);
        assert!(pool.take_inline(Duration::ZERO).is_none());
        assert!(pool.is_empty());
    }
}
