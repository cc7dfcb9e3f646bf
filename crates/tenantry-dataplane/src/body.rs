//! Body types of the proxy: what goes upstream (streamed or empty) and what goes back
//! downstream, with the tap that records metrics and the access log when the response ends.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::accesslog::Entry;
use crate::admission::RateFields;
use crate::gateway::Gateway;
use crate::h1::{H1Body, RawHead};
use crate::llm::UsageScanner;
use crate::metrics::RouteMetrics;
use crate::proxy::ConnInfo;
use crate::table::{BackendRt, RouteRt};
use crate::upstream::{Conn, UpstreamBody};

/// A client's request body: hyper's, or read in full by the proxy's own HTTP/1.1 server
/// (`crate::h1server`).
#[derive(Debug)]
pub enum ReqBody {
    /// Read by hyper (HTTP/2, and HTTP/1.1 requests the own server hands to hyper).
    Hyper(Incoming),
    /// Read in full with the head (`None`: no body).
    Full(Option<Bytes>),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Hyper(b) => Pin::new(b).poll_frame(cx),
            ReqBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Hyper(b) => b.is_end_stream(),
            ReqBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Hyper(b) => b.size_hint(),
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// The body sent upstream.
pub enum UpBody {
    /// The client's body, streamed, counted into the route's `sent` bytes.
    Stream(ReqBody, Arc<RouteMetrics>),
    /// No body (lets idempotent requests be retried).
    Empty,
    /// A body read in full before forwarding (LLM routes and the WAF check it first).
    Full(Option<Bytes>),
    /// The first bytes, read for the WAF, then the rest of the client's body, streamed (both
    /// counted into the route's `sent` bytes).
    Prefixed(Option<Bytes>, ReqBody, Arc<RouteMetrics>),
    /// The client's body, streamed (`Stream` or `Prefixed` inside), with what the proxy
    /// tracks while it passes: its end, and, on a route with a bandwidth quota when its length
    /// is unknown, its bytes (see [`Streamed`]).
    Streamed(Box<Streamed>),
}

/// A streamed client body, watched as it is forwarded.
/// - `ended` is set once the body has been forwarded in full, so a response timeout that
///   fires before can be told apart (the client was still sending: not the backend's fault).
/// - `meter`, for a body of unknown length (chunked, or HTTP/2 without `content-length`) on a
///   route with a bandwidth quota, counts the bytes; they go to the tenant's quota when the
///   body ends or is dropped (an upload cut short counts what was sent). Bodies of declared
///   length are counted by their `Content-Length` instead.
pub struct Streamed {
    inner: UpBody,
    ended: Arc<AtomicBool>,
    meter: Option<Meter>,
}

/// The bytes of a [`Streamed`] body so far, and whose quota they go to.
struct Meter {
    counted: u64,
    route: Arc<crate::table::RouteRt>,
    gw: Arc<Gateway>,
}

impl Streamed {
    /// Watches `inner` (a `Stream` or `Prefixed` body); with `meter`, counts its bytes into
    /// the route's tenant's bandwidth. Returns the body and its end flag.
    pub(crate) fn watch(
        inner: UpBody,
        meter: Option<(Arc<crate::table::RouteRt>, Arc<Gateway>)>,
    ) -> (UpBody, Arc<AtomicBool>) {
        let ended = Arc::new(AtomicBool::new(false));
        let body = UpBody::Streamed(Box::new(Streamed {
            inner,
            ended: Arc::clone(&ended),
            meter: meter.map(|(route, gw)| Meter {
                counted: 0,
                route,
                gw,
            }),
        }));
        (body, ended)
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        let Some(adm) = &self.route.admission else {
            return;
        };
        self.gw.quotas.add_bandwidth(
            &self.route.tenant,
            self.route.billing_anchor_ms(),
            adm,
            self.counted,
        );
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpBody::Stream(b, m) => {
                let polled = Pin::new(b).poll_frame(cx);
                if let Poll::Ready(Some(Ok(f))) = &polled
                    && let Some(d) = f.data_ref()
                {
                    m.add_bytes(d.len() as u64, 0);
                }
                polled
            }
            UpBody::Empty => Poll::Ready(None),
            UpBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            UpBody::Streamed(st) => {
                let polled = Pin::new(&mut st.inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(f))) => {
                        if let (Some(m), Some(d)) = (&mut st.meter, f.data_ref()) {
                            m.counted += d.len() as u64;
                        }
                        if st.inner.is_end_stream() {
                            st.ended.store(true, Ordering::Relaxed);
                        }
                    }
                    Poll::Ready(None) => st.ended.store(true, Ordering::Relaxed),
                    _ => {}
                }
                polled
            }
            UpBody::Prefixed(prefix, b, m) => {
                if let Some(d) = prefix.take() {
                    m.add_bytes(d.len() as u64, 0);
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                let polled = Pin::new(b).poll_frame(cx);
                if let Poll::Ready(Some(Ok(f))) = &polled
                    && let Some(d) = f.data_ref()
                {
                    m.add_bytes(d.len() as u64, 0);
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Stream(b, _) => b.is_end_stream(),
            UpBody::Empty => true,
            UpBody::Full(b) => b.is_none(),
            UpBody::Prefixed(p, b, _) => p.is_none() && b.is_end_stream(),
            UpBody::Streamed(st) => st.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Stream(b, _) => b.size_hint(),
            UpBody::Empty => SizeHint::with_exact(0),
            UpBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            UpBody::Full(None) => SizeHint::with_exact(0),
            UpBody::Streamed(st) => st.inner.size_hint(),
            UpBody::Prefixed(p, b, _) => {
                let first = p.as_ref().map_or(0, |p| p.len() as u64);
                let rest = b.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(rest.lower() + first);
                if let Some(u) = rest.upper() {
                    h.set_upper(u + first);
                }
                h
            }
        }
    }
}

/// What a finished request records: metrics, the backend's in-flight count, the access log.
/// Recorded on drop, i.e. when the response body is done (or the client went away).
pub struct Tap {
    pub(crate) start: Instant,
    pub(crate) route: Option<Arc<RouteRt>>,
    pub(crate) backend: Option<usize>,
    pub(crate) status: u16,
    pub(crate) method: Method,
    pub(crate) uri: http::Uri,
    pub(crate) host: Option<HeaderValue>,
    pub(crate) request_id: HeaderValue,
    pub(crate) client: std::net::IpAddr,
    /// The client's connection, told when this request ends (its idle watchdog counts them).
    pub(crate) downstream: Arc<ConnInfo>,
    pub(crate) bytes: u64,
    pub(crate) error: Option<&'static str>,
    pub(crate) gw: Arc<Gateway>,
    /// The upstream connection, returned to its pool if the body is read to the end.
    pub(crate) conn: Option<Conn>,
    pub(crate) complete: bool,
    /// Request body bytes, counted into the bandwidth quota: as declared, or the length of a body read in full (a streamed body of unknown length is counted by [`Streamed`] instead).
    pub(crate) request_bytes: u64,
    /// On LLM routes: finds the response's token usage as it streams.
    pub(crate) usage: Option<Box<UsageScanner>>,
    /// The rate-limit fields of the response, for the head's writer to add (they are not in
    /// the response's map: see [`RespBody::rate_fields`]).
    pub(crate) rate: Option<RateFields>,
}

impl Tap {
    fn backend(&self) -> Option<&BackendRt> {
        let r = self.route.as_ref()?;
        r.backends.get(self.backend?)
    }

    /// Quotas: the request's bytes to the tenant's bandwidth, an LLM response's tokens to its
    /// tokens-per-minute counter (found and added off the response path).
    fn account(&mut self) {
        let Some(route) = &self.route else { return };
        let Some(adm) = &route.admission else { return };
        self.gw.quotas.add_bandwidth(
            &route.tenant,
            route.billing_anchor_ms(),
            adm,
            self.bytes + self.request_bytes,
        );
        let Some(scanner) = self.usage.take() else {
            return;
        };
        // Finishing may parse a large JSON body or tokenize text for an estimate: not on the
        // worker that serves requests.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let gw = Arc::clone(&self.gw);
            let route = Arc::clone(route);
            rt.spawn(async move {
                let Ok(Some(usage)) = tokio::task::spawn_blocking(move || scanner.finish()).await
                else {
                    return;
                };
                if let Some(adm) = &route.admission {
                    gw.quotas
                        .add_tokens(
                            &gw.limiter,
                            &gw.metrics,
                            &route.tenant,
                            adm,
                            usage.total_tokens,
                        )
                        .await;
                }
            });
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.downstream.request_ended();
        let elapsed = self.start.elapsed();
        let metrics = self
            .route
            .as_ref()
            .map_or(&self.gw.metrics.unrouted, |r| &r.metrics);
        metrics.observe(self.status, elapsed);
        if self.bytes > 0 {
            metrics.add_bytes(0, self.bytes);
        }
        let conn = if self.complete {
            self.conn.take()
        } else {
            None
        };
        if let Some(b) = self.backend() {
            b.health.end();
            if let Some(conn) = conn {
                b.health
                    .pool
                    .put(conn, self.gw.settings.upstream.max_idle_per_backend);
            }
        }
        self.account();
        if let Some(log) = &self.gw.access_log {
            log.write(&Entry {
                tenant_id: self.route.as_ref().map(|r| r.tenant.as_str()),
                route: self.route.as_ref().map(|r| r.id.as_str()),
                request_id: self.request_id.to_str().unwrap_or(""),
                method: self.method.as_str(),
                host: &tenantry_domain::normalize_host(
                    self.host
                        .as_ref()
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or(""),
                ),
                path: self.uri.path(),
                status: self.status,
                upstream: self.backend().map(|b| b.label()),
                duration: elapsed,
                bytes: self.bytes,
                client: self.client,
                error: self.error,
            });
        }
    }
}

/// The response body sent downstream.
pub struct RespBody {
    inner: Inner,
    tap: Option<Tap>,
}

enum Inner {
    Upstream(Incoming),
    Inline(H1Body),
    Full(Option<Bytes>),
}

/// The error of a response body: the upstream's body failed part way.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

impl RespBody {
    pub(crate) fn upstream(body: UpstreamBody, tap: Tap) -> Self {
        Self {
            inner: match body {
                UpstreamBody::Hyper(b) => Inner::Upstream(b),
                UpstreamBody::Inline(b) => Inner::Inline(b),
            },
            tap: Some(tap),
        }
    }

    /// The upstream response's header fields, when they were kept as they came (the inline
    /// client's responses): the response's `HeaderMap` holds only the gateway's own fields
    /// then, which replace the upstream's of the same name.
    pub fn raw_head(&self) -> Option<&RawHead> {
        match &self.inner {
            Inner::Inline(b) => b.raw_head(),
            _ => None,
        }
    }

    /// Moves the upstream's raw header fields into `headers` (for a writer that needs one map:
    /// hyper's server, or the LLM usage scanner's `Content-Type`).
    pub fn merge_raw_head(&mut self, headers: &mut http::HeaderMap) {
        if let Inner::Inline(b) = &mut self.inner {
            b.merge_raw_head(headers);
        }
    }

    /// The rate-limit fields the gateway adds to this proxied response. They are not in its
    /// map: a head's writer adds them after the map's fields, in place of any upstream field
    /// they [replace](RateFields::replaces).
    pub fn rate_fields(&self) -> Option<&RateFields> {
        self.tap.as_ref()?.rate.as_ref()
    }

    /// Everything the head's writer would add, moved into `headers`: the upstream's raw
    /// fields ([`RespBody::merge_raw_head`]), then the rate-limit fields (for hyper's server,
    /// which writes one map).
    pub fn merge_into_map(&mut self, headers: &mut http::HeaderMap) {
        self.merge_raw_head(headers);
        if let Some(rate) = self.tap.as_mut().and_then(|t| t.rate.take()) {
            rate.insert_into(headers);
        }
    }

    /// A complete body (local responses: errors, admin endpoints).
    pub fn full(bytes: impl Into<Bytes>, tap: Option<Tap>) -> Self {
        Self {
            inner: Inner::Full(Some(bytes.into())),
            tap,
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled: Poll<Option<Result<Frame<Bytes>, BodyError>>> = match &mut this.inner {
            Inner::Upstream(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
            Inner::Inline(b) => b.poll_frame(cx).map(|f| f.map(|r| r.map_err(Into::into))),
            Inner::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(d), Some(tap)) = (f.data_ref(), this.tap.as_mut()) {
                    tap.bytes += d.len() as u64;
                    if let Some(u) = tap.usage.as_mut() {
                        u.feed(d);
                    }
                }
            }
            Poll::Ready(None) => {
                // Record as soon as the body ends, not when the connection drops it; the
                // upstream connection is reusable now.
                if let Some(tap) = this.tap.as_mut() {
                    tap.complete = true;
                    if let Inner::Inline(b) = &mut this.inner {
                        tap.conn = b.take_reusable().map(Conn::Inline);
                    }
                }
                this.tap = None;
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(tap) = this.tap.as_mut() {
                    tap.error = Some("upstream_body_error");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Inline(b) => b.is_end_stream(),
            Inner::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Inline(b) => b.size_hint(),
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        // A body that is already at its end may never be polled (HEAD, 204, 304): its
        // connection is still reusable.
        if self.is_end_stream()
            && let Some(tap) = self.tap.as_mut()
        {
            tap.complete = true;
            if let Inner::Inline(b) = &mut self.inner {
                tap.conn = b.take_reusable().map(Conn::Inline);
            }
        }
    }
}
