//! The request pipeline. Every request passes the same phases, in order:
//!
//! 1. `request_filter`: reject ambiguous framing (request smuggling) before anything else;
//! 2. `resolve`: host + path → tenant route from the current table (404 otherwise);
//!    then the WAF, on routes that have one (request line, headers and the body up to
//!    `waf.max_body`, see `docs/waf.md`), before admission; then admission (`admit`, and
//!    `admit_llm` on LLM routes): rate limit, quotas, the tenant's model and tool policy
//!    (see `docs/limits.md`);
//! 3. `choose_upstream`: the route's algorithm picks an eligible backend (503 if none);
//! 4. `upstream_request`: rewrite the request (URI, hop-by-hop headers, `X-Forwarded-*`,
//!    `X-Request-Id`) and send it; an idempotent request without a body that fails to connect
//!    is retried once on another backend;
//! 5. `response_filter`: strip hop-by-hop headers, echo the request id, close when draining;
//!    WebSocket upgrades are spliced;
//! 6. logging: metrics and the access log line are recorded when the response body ends
//!    (see [`crate::body::Tap`]).
//!
//! Each phase is a function returning a value or an [`ErrorCode`]; `handle` only turns those
//! into responses, so the control flow is visible here in one place.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Body as _;
use tenantry_domain::{RouteKind, normalize_host};
use tenantry_limits::{Decision, Rate};

use crate::admission::{self, Admission, QuotaKind, Refusal};
use crate::body::{ReqBody, RespBody, Streamed, Tap, UpBody};
use crate::deadline::{self, Deadline};
use crate::errors::ErrorCode;
use crate::forward::Forwarding;
use crate::gateway::Gateway;
use crate::h1server::{has_token, tokens};
use crate::lb::select_backend;
use crate::llm::{self, UsageScanner};
use crate::metrics::{Refused, WafOutcome};
use crate::reqid;
use crate::table::{Lookup, RouteRt};
use crate::upstream::{self, Sent, UpstreamBody, UpstreamError};
use crate::waf::{self, RouteWaf};

/// What the proxy knows about the downstream connection (shared by its requests).
#[derive(Debug)]
pub struct ConnInfo {
    /// Client address.
    pub peer: SocketAddr,
    /// Whether it arrived on the TLS listener.
    pub tls: bool,
    /// The address the connection arrived on (the WAF's `SERVER_ADDR`).
    pub local: SocketAddr,
    /// The client IP as a header value, made once per connection for `X-Forwarded-For`.
    pub(crate) client_ip: HeaderValue,
    /// `for=…;proto=…` of the RFC 7239 `Forwarded` element, made once per connection.
    pub(crate) forwarded: Box<str>,
    /// Request heads received so far: the idle watchdog's sign of progress.
    heads: AtomicU32,
    /// Requests whose response has not ended yet.
    in_flight: AtomicU32,
    /// A request body is being read before its request is handled (the own HTTP/1.1
    /// server's): the body's own timeout governs the connection meanwhile.
    pub(crate) reading_body: AtomicBool,
}

impl ConnInfo {
    /// Describes a new downstream connection.
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        let client_ip = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        let proto = if tls { "https" } else { "http" };
        let forwarded = match peer.ip() {
            std::net::IpAddr::V4(v4) => format!("for={v4};proto={proto}"),
            std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto={proto}"),
        }
        .into_boxed_str();
        Self {
            peer,
            tls,
            local: SocketAddr::from(([0, 0, 0, 0], 0)),
            client_ip,
            forwarded,
            heads: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            reading_body: AtomicBool::new(false),
        }
    }

    /// Request heads received so far, and requests not finished: a connection whose first
    /// figure stands still while the second is zero is idle, or sending a head too slowly.
    /// A body being read counts as a request in flight.
    pub fn progress(&self) -> (u32, u32) {
        (
            self.heads.load(Ordering::Relaxed),
            self.in_flight.load(Ordering::Relaxed)
                + u32::from(self.reading_body.load(Ordering::Relaxed)),
        )
    }

    fn request_started(&self) {
        self.heads.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request's response ended (or was dropped).
    pub(crate) fn request_ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// The same, with the listener's address.
    pub fn with_local(mut self, local: SocketAddr) -> Self {
        self.local = local;
        self
    }
}

/// Request bodies of a declared length up to this are read before they are forwarded (larger
/// ones, and bodies of unknown length, are streamed).
pub(crate) const BUFFERED_BODY_MAX: usize = 64 * 1024;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Serves one request. Never fails: every error becomes a response.
pub async fn handle(
    gw: Arc<Gateway>,
    conn: Arc<ConnInfo>,
    mut req: Request<ReqBody>,
) -> Response<RespBody> {
    let start = Instant::now();
    conn.request_started();
    let request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) if reqid::acceptable(v) => v.clone(),
        _ => reqid::generate(),
    };
    // One lookup serves the host (for routing and the log) and phase 1's checks of it, which
    // apply to the request as received.
    let hosts = Hosts::of(&req);
    let filtered = request_filter(&req, hosts).and_then(|()| declared_body_fits(&req));
    // Cheap clones (reference counts): the tap keeps them for the access log.
    let mut host_value = request_host(&req, hosts.first);
    // A target in absolute form (or HTTP/2's `:authority`) names the host: the `Host` field
    // is replaced by it (RFC 9112 §3.2.2), so that routing, the WAF and the upstream all see
    // the host the request was routed by.
    if filtered.is_ok()
        && let Some(v) = authority_wins(&mut req)
    {
        host_value = Some(v);
    }
    let host_raw = host_value
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let host = normalize_host(host_raw);
    let mut tap = Tap {
        start,
        route: None,
        backend: None,
        status: 0,
        method: req.method().clone(),
        uri: req.uri().clone(),
        host: host_value.clone(),
        request_id: request_id.clone(),
        client: conn.peer.ip(),
        downstream: Arc::clone(&conn),
        bytes: 0,
        error: None,
        gw: Arc::clone(&gw),
        conn: None,
        complete: false,
        request_bytes: 0,
        usage: None,
        rate: None,
    };

    // Phase 1: request filter.
    if let Err(code) = filtered {
        return local_error(&gw, code, tap, true);
    }

    // Phase 2: resolve the tenant's route.
    let route = match resolve(&gw, &host, req.uri().path()) {
        Ok(r) => r,
        Err(code) => return local_error(&gw, code, tap, false),
    };
    tap.route = Some(Arc::clone(&route));
    if route.suspended {
        return local_error(&gw, ErrorCode::TenantSuspended, tap, false);
    }

    // Phase 2a: the WAF (request line, headers, and the body up to `waf.max_body`).
    let mut prefix: Option<waf::Prefix> = None;
    if let Some(w) = route.waf.clone() {
        let max = gw.waf.max_body();
        let reject = gw.waf.rejects_large_bodies();
        if !req.body().is_end_stream() {
            if reject && declared_length(req.headers()).is_some_and(|n| n > max as u64) {
                return local_error(&gw, ErrorCode::PayloadTooLarge, tap, true);
            }
            // One byte more than inspected tells a body that is too large apart.
            let gap = gw.settings.header_timeout;
            match waf::read_prefix(req.body_mut(), max.saturating_add(1), gap).await {
                Ok(p) if reject && p.bytes.len() > max => {
                    return local_error(&gw, ErrorCode::PayloadTooLarge, tap, true);
                }
                Ok(p) => prefix = Some(p),
                Err(e) => {
                    tracing::debug!(error = %e, "request body failed while read for the WAF");
                    return local_error(&gw, e.code(), tap, true);
                }
            }
        }
        let subject = waf::Subject {
            request_id: &request_id,
            client: conn.peer,
            server: conn.local,
            method: req.method(),
            uri: req.uri(),
            version: req.version(),
            headers: req.headers(),
            host: host_value.as_ref(),
        };
        let unread = prefix.as_ref().is_some_and(|p| !p.complete);
        match gw
            .waf
            .inspect(&w, &route.tenant, subject, prefix.as_ref())
            .await
        {
            waf::Outcome::Continue(outcome, verdict) => {
                route.metrics.waf(outcome);
                if let Some(v) = verdict.filter(|v| v.action == tenantry_waf::Action::Detect) {
                    waf_audit(&route, &w, &request_id, &v);
                }
            }
            // LLM routes parse the body themselves and answer `400 invalid_body` with the
            // reason: an unreadable body is theirs to refuse (it is never forwarded).
            waf::Outcome::Refuse(ErrorCode::WafBlocked, Some(v))
                if v.only_unreadable_body()
                    && route
                        .admission
                        .as_ref()
                        .is_some_and(|a| a.kind == RouteKind::Llm) =>
            {
                route.metrics.waf(WafOutcome::Pass);
            }
            waf::Outcome::Refuse(code, verdict) => {
                let (outcome, extra) = match (&code, &verdict) {
                    (ErrorCode::WafBlocked, Some(v)) => {
                        waf_audit(&route, &w, &request_id, v);
                        (WafOutcome::Block, waf::rule_ids_member(v))
                    }
                    (ErrorCode::WafBusy, _) => (WafOutcome::Busy, String::new()),
                    _ => (WafOutcome::Unavailable, String::new()),
                };
                route.metrics.waf(outcome);
                let mut r = Refusal::plain(code);
                r.extra = extra;
                if code == ErrorCode::WafBusy {
                    r.retry_after = Some(1);
                }
                return refused(&gw, r, None, tap, unread);
            }
        }
    }

    // A reverse proxy opens no tunnels: CONNECT is refused, once the WAF has seen it (attack
    // tools probe with it): 405, or 400 when the target is not `host:port`.
    if req.method() == Method::CONNECT {
        let code = if req.uri().port().is_some() {
            ErrorCode::MethodNotAllowed
        } else {
            ErrorCode::BadRequest
        };
        return local_error(&gw, code, tap, true);
    }

    // Phase 2b: admission (rate limit, bandwidth quota); LLM routes read and check the body
    // below, once the request is taken apart.
    let admission = route.admission.clone();
    let mut rate: Option<(Decision, Rate)> = None;
    if let Some(adm) = &admission {
        if let Err(r) = admit(&gw, &route, adm, &conn, req.headers(), &mut rate).await {
            return refused(&gw, r, rate.as_ref(), tap, false);
        }
        tap.request_bytes = declared_length(req.headers()).unwrap_or(0);
    }

    // Phase 3: choose an upstream.
    let now = gw.now_ms();
    let Some(first) = select_backend(&route, conn.peer.ip(), None, now) else {
        return with_rate(
            local_error(&gw, ErrorCode::NoHealthyBackend, tap, false),
            rate.as_ref(),
        );
    };

    // Phase 4: upstream request. A request that could not be sent at all (connect failure)
    // comes back from `upstream::send` and is retried once on another backend: nothing reached
    // the first one, so this is safe for any method.
    let upgrade = wants_upgrade(&req);
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, mut body) = req.into_parts();
    strip_request_headers(&mut parts.headers, upgrade);
    let original_version = parts.version;
    parts.version = Version::HTTP_11;
    // Origin-form: the upstream gets the path and query; the original Host header is kept.
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    let mut prompt_estimate = None;
    let llm = admission.as_ref().filter(|a| a.kind == RouteKind::Llm);
    // A small body of declared length is read before forwarding, as nginx buffers request
    // bodies: the request then goes through the inline client. (LLM routes read theirs below.)
    if llm.is_none()
        && prefix.is_none()
        && !upgrade
        && declared_length(&parts.headers).is_some_and(|n| n > 0 && n <= BUFFERED_BODY_MAX as u64)
    {
        let gap = gw.settings.header_timeout;
        match waf::read_prefix(&mut body, BUFFERED_BODY_MAX + 1, gap).await {
            Ok(p) => prefix = Some(p),
            Err(e) => {
                tracing::debug!(error = %e, "request body failed while read");
                return with_rate(local_error(&gw, e.code(), tap, true), rate.as_ref());
            }
        }
    }
    let up_body = match llm {
        None => match prefix {
            None => UpBody::Stream(body, Arc::clone(&route.metrics)),
            Some(p) if p.complete => {
                route.metrics.add_bytes(p.bytes.len() as u64, 0);
                // Read in full: its length is known even when none was declared.
                tap.request_bytes = p.bytes.len() as u64;
                UpBody::Full((!p.bytes.is_empty()).then_some(p.bytes))
            }
            Some(p) => UpBody::Prefixed(Some(p.bytes), body, Arc::clone(&route.metrics)),
        },
        Some(adm) => match admit_llm(&gw, &route, adm, &parts, body, prefix).await {
            Ok((bytes, estimate)) => {
                // The usage must be readable in the response: no compression upstream.
                parts.headers.remove(header::ACCEPT_ENCODING);
                parts.headers.remove(header::TRANSFER_ENCODING);
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                prompt_estimate = Some(estimate);
                tap.request_bytes = bytes.len() as u64;
                route.metrics.add_bytes(bytes.len() as u64, 0);
                UpBody::Full(Some(bytes))
            }
            Err((r, close)) => return refused(&gw, r, rate.as_ref(), tap, close),
        },
    };
    // A body that has already ended is no body: the request can take the inline client. A
    // streamed one is watched to its end (a response timeout while the client is still sending
    // is the client's delay, 408, not the backend's) and, when its length is unknown on a route
    // with a bandwidth quota, counted into the quota as it streams.
    let (up_body, body_ended) = match up_body {
        UpBody::Stream(b, _) if b.is_end_stream() => (UpBody::Empty, None),
        body @ (UpBody::Stream(..) | UpBody::Prefixed(..)) => {
            let metered = tap.request_bytes == 0
                && admission
                    .as_ref()
                    .is_some_and(|a| a.bandwidth_bytes.is_some());
            let meter = metered.then(|| (Arc::clone(&route), Arc::clone(&gw)));
            let (body, ended) = Streamed::watch(body, meter);
            (body, Some(ended))
        }
        other => (other, None),
    };
    // hyper's client sends a GET, HEAD or CONNECT whose body has no known length as bodiless
    // (such methods rarely have one), dropping the body: a streamed body of unknown length is
    // sent chunked whatever the method.
    if body_ended.is_some()
        && up_body.size_hint().exact().is_none()
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        parts.headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    let mut up_req = Request::from_parts(parts, up_body);
    let forwarding = Forwarding {
        conn: &conn,
        host: host_value.as_ref(),
        request_id: &request_id,
    };
    // The inline client writes the forwarding fields into the head it encodes; hyper's client
    // sends the map, so they go in the map.
    if !upstream::inline_capable(&up_req, upgrade) {
        forwarding.apply(up_req.headers_mut());
    }
    let mut backend = first;
    let mut retried = false;
    let result = loop {
        let b = &route.backends[backend];
        b.health.begin();
        tap.backend = Some(backend);
        // A coarse per-worker deadline beside the send, which stays where it was made.
        let mut timer = Deadline::at(Instant::now() + gw.settings.upstream.response_timeout);
        let send = pin!(upstream::send(
            &b.health.pool,
            &b.addr,
            &gw.settings.upstream,
            up_req,
            upgrade,
            &forwarding,
        ));
        let sent = deadline::race(&mut timer, send).await;
        match sent {
            Ok(Ok(s)) => break Ok(s),
            Ok(Err((err, _))) if client_body_failed(&err) => {
                // The client's body broke (malformed chunking, or the client went away
                // mid-upload) while it was being forwarded: the client's fault, not the
                // backend's, so it counts nothing against the backend's health (else three such
                // requests from anyone would eject a healthy backend).
                tracing::debug!(error = ?err, backend = %b.label(), "request body failed while forwarding");
                break Err(ErrorCode::BadRequest);
            }
            Ok(Err((err, unsent))) => {
                let connect = matches!(err, UpstreamError::Connect(_));
                if b.health.record_failure(
                    route.unhealthy_threshold(),
                    gw.now_ms(),
                    crate::table::PASSIVE_RETRY_MS,
                ) {
                    log_ejected(
                        &route,
                        backend,
                        if connect {
                            "connect error"
                        } else {
                            "upstream error"
                        },
                    );
                }
                tracing::debug!(error = ?err, backend = %b.label(), "upstream request failed");
                match (unsent, retried) {
                    (Some(r), false) => {
                        match select_backend(&route, conn.peer.ip(), Some(backend), gw.now_ms()) {
                            Some(next) => {
                                b.health.end();
                                gw.metrics.global.retries.fetch_add(1, Ordering::Relaxed);
                                retried = true;
                                up_req = r;
                                backend = next;
                            }
                            None => break Err(ErrorCode::BadGateway),
                        }
                    }
                    _ => break Err(ErrorCode::BadGateway),
                }
            }
            Err(_)
                if body_ended
                    .as_ref()
                    .is_some_and(|e| !e.load(Ordering::Relaxed)) =>
            {
                break Err(ErrorCode::RequestTimeout);
            }
            Err(_) => {
                if b.health.record_failure(
                    route.unhealthy_threshold(),
                    gw.now_ms(),
                    crate::table::PASSIVE_RETRY_MS,
                ) {
                    log_ejected(&route, backend, "response timeouts");
                }
                break Err(ErrorCode::UpstreamTimeout);
            }
        }
    };
    let Sent {
        response: mut resp,
        conn: upstream_conn,
    } = match result {
        Ok(s) => s,
        Err(code) => return with_rate(local_error(&gw, code, tap, false), rate.as_ref()),
    };

    // Phase 5: response filter.
    let b = &route.backends[backend];
    let status = resp.status();
    if status.is_server_error() {
        if b.health.record_failure(
            route.unhealthy_threshold(),
            gw.now_ms(),
            crate::table::PASSIVE_RETRY_MS,
        ) {
            log_ejected(&route, backend, "5xx responses");
        }
    } else if route.health_check.is_some() {
        // Only the active check re-admits a backend on such routes (healthy_threshold).
        b.health.reset_failures();
    } else if b.health.record_success(1) {
        tracing::info!(tenant = %route.tenant, route = %route.id, backend = %b.label(), "backend re-admitted after a successful request");
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // The connection now belongs to the tunnel; it never goes back to the pool.
        drop(upstream_conn);
        if let Some(down) = downstream_upgrade {
            let up = hyper::upgrade::on(&mut resp);
            tokio::spawn(splice_upgrade(down, up));
        }
    } else {
        strip_hop_by_hop(resp.headers_mut(), false);
        tap.conn = upstream_conn;
    }
    let (mut rparts, mut rbody) = resp.into_parts();
    // The usage scanner reads the response's `Content-Type`: on LLM routes the upstream's
    // fields go into the map (elsewhere the inline client's stay raw, see `h1::RawHead`).
    if prompt_estimate.is_some()
        && let UpstreamBody::Inline(b) = &mut rbody
    {
        b.merge_raw_head(&mut rparts.headers);
    }
    rparts.version = original_version;
    rparts.headers.insert(X_REQUEST_ID.clone(), request_id);
    // The rate-limit fields ride with the body to the head's writer (see `RateFields`).
    tap.rate = rate.as_ref().map(|(d, r)| admission::RateFields::of(d, r));
    if let Some(estimate) = prompt_estimate
        && status.is_success()
    {
        let ct = rparts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        tap.usage = Some(Box::new(UsageScanner::new(ct, estimate)));
    }
    if gw.is_draining()
        && original_version < Version::HTTP_2
        && status != StatusCode::SWITCHING_PROTOCOLS
    {
        rparts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    tap.status = status.as_u16();
    Response::from_parts(rparts, RespBody::upstream(rbody, tap))
}

/// Phase 2b: the rate limit, then the bandwidth quota. The rate decision is kept for the
/// response's `RateLimit-*` headers.
async fn admit(
    gw: &Gateway,
    route: &RouteRt,
    adm: &Admission,
    conn: &ConnInfo,
    headers: &HeaderMap,
    rate: &mut Option<(Decision, Rate)>,
) -> Result<(), Refusal> {
    if let Some(rule) = &adm.rate {
        let key = rule.key_for(&route.tenant, &route.id, conn.peer.ip(), headers);
        let d = gw.limiter.check(&key, rule.rate).await;
        *rate = Some((d, rule.rate));
        // The plan's request rate is a quota too: its allowed requests are counted per minute
        // (for the 80% and 100% notices).
        if rule.plan && d.allowed {
            gw.quotas
                .count_request(&route.tenant, adm, rule.rate.per_period);
        }
        if !d.allowed {
            route.metrics.refused(Refused::RateLimit);
            return Err(Refusal::plain(ErrorCode::RateLimited));
        }
    }
    if let Some((window, now)) = gw.quotas.bandwidth_spent(&route.tenant, adm) {
        route.metrics.refused(Refused::Quota);
        admission::quota_reached(adm.on_quota, QuotaKind::BandwidthMonth, window, now)?;
    }
    Ok(())
}

/// A request read by hyper's parser (HTTP/1.0, `Expect`, HTTP/2, …) with a `Content-Length`
/// the own HTTP/1.1 server refuses with 413 gets the same answer.
fn declared_body_fits(req: &Request<ReqBody>) -> Result<(), ErrorCode> {
    if matches!(req.body(), ReqBody::Hyper(_))
        && declared_length(req.headers()).is_some_and(|n| n > crate::h1server::MAX_DECLARED_BODY)
    {
        return Err(ErrorCode::PayloadTooLarge);
    }
    Ok(())
}

/// The declared `Content-Length`, if any.
fn declared_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Phase 2c, LLM routes: read the body (bounded), parse it, check the tenant's policy and
/// its token budget. Gives back the body to forward and the prompt's token estimate; a
/// refusal says whether to close the connection (a body left unread).
///
/// A request of a method without body semantics (`GET`, `HEAD`, `DELETE`, `OPTIONS`, e.g.
/// `GET /v1/models`) that sends no body names no model or tool: it skips the policy and is
/// held only to the token budget. Any other method needs a JSON object.
async fn admit_llm(
    gw: &Gateway,
    route: &RouteRt,
    adm: &Admission,
    parts: &http::request::Parts,
    mut body: ReqBody,
    prefix: Option<waf::Prefix>,
) -> Result<(Bytes, u64), (Refusal, bool)> {
    let max = gw.settings.max_llm_body_bytes;
    if declared_length(&parts.headers).is_some_and(|n| n > max as u64) {
        return Err((Refusal::plain(ErrorCode::PayloadTooLarge), true));
    }
    // The WAF may have read the body, or its start, already.
    let (first, rest_max) = match prefix {
        Some(p) if p.bytes.len() > max => {
            return Err((Refusal::plain(ErrorCode::PayloadTooLarge), !p.complete));
        }
        Some(p) if p.complete => (Some(p.bytes), None),
        Some(p) => {
            let left = max - p.bytes.len();
            (Some(p.bytes), Some(left))
        }
        None => (None, Some(max)),
    };
    let collected = match rest_max {
        None => Ok(Bytes::new()),
        // One byte more than allowed tells a body that is too large apart.
        Some(limit) => {
            match waf::read_prefix(
                &mut body,
                limit.saturating_add(1),
                gw.settings.header_timeout,
            )
            .await
            {
                Ok(p) if p.bytes.len() > limit => {
                    return Err((Refusal::plain(ErrorCode::PayloadTooLarge), true));
                }
                Ok(p) => Ok(p.bytes),
                Err(e) => Err(e),
            }
        }
    };
    let bytes = match collected {
        Ok(rest) => match first {
            None => rest,
            Some(f) if rest.is_empty() => f,
            Some(f) => {
                let mut all = bytes::BytesMut::with_capacity(f.len() + rest.len());
                all.extend_from_slice(&f);
                all.extend_from_slice(&rest);
                all.freeze()
            }
        },
        Err(e) => return Err((Refusal::plain(e.code()), true)),
    };
    let bodiless = bytes.is_empty()
        && matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
        );
    // Large bodies are tokenized (the prompt estimate) off the worker thread.
    let parsed = if bodiless {
        Ok(llm::LlmRequest::default())
    } else if bytes.len() > 64 * 1024 {
        let b = bytes.clone();
        tokio::task::spawn_blocking(move || llm::parse_request(&b))
            .await
            .unwrap_or_else(|_| {
                Err(llm::LlmRequestError::NotJson(
                    "request body could not be read".to_owned(),
                ))
            })
    } else {
        llm::parse_request(&bytes)
    };
    let parsed = match parsed {
        Ok(p) => p,
        Err(llm::LlmRequestError::NotJson(reason)) => {
            let mut r = Refusal::plain(ErrorCode::InvalidBody);
            admission::json_member(&mut r.extra, "reason", &reason);
            return Err((r, false));
        }
    };
    if let Some(policy) = adm.policy.as_ref().filter(|_| !bodiless) {
        let allow = llm::AllowLists {
            models: policy.allowed_models.as_deref(),
            tools: policy.allowed_tools.as_deref(),
        };
        if let Err(reason) = llm::check_policy(&parsed, &allow, route.tenant.as_str()) {
            route.metrics.refused(Refused::Policy);
            let mut r = Refusal::plain(ErrorCode::PolicyDenied);
            admission::json_member(&mut r.extra, "reason", &reason);
            return Err((r, false));
        }
    }
    if let Some(limit) = adm.tokens_per_minute {
        let (used, window) = gw.quotas.tokens_used(&gw.limiter, &route.tenant).await;
        if used >= limit {
            route.metrics.refused(Refused::Quota);
            let now = admission::unix_ms();
            admission::quota_reached(adm.on_quota, QuotaKind::TokensPerMinute, window, now)
                .map_err(|r| (r, false))?;
        }
    }
    Ok((bytes, parsed.prompt_tokens_estimate))
}

/// The audit line of a WAF block, or of what would have been blocked in `detect` mode:
/// tenant, route, request id, the rules that matched and the names of the variables they
/// matched. Never the values (they are the client's data, and may be secrets).
fn waf_audit(route: &RouteRt, w: &RouteWaf, request_id: &HeaderValue, v: &tenantry_waf::Verdict) {
    tracing::warn!(
        target: "tenantry::waf",
        tenant = %route.tenant,
        route = %route.id,
        request_id = request_id.to_str().unwrap_or(""),
        action = v.action.as_str(),
        level = w.level.as_str(),
        mode = w.mode.as_str(),
        rule_ids = ?v.rule_ids,
        variables = ?v.variables,
        "WAF {}",
        if v.action == tenantry_waf::Action::Block { "blocked a request" } else { "would block a request (detect mode)" }
    );
}

/// Adds the admission's rate-limit headers to an error answered after it.
fn with_rate(mut resp: Response<RespBody>, rate: Option<&(Decision, Rate)>) -> Response<RespBody> {
    if let Some((d, r)) = rate {
        admission::rate_headers(d, r, resp.headers_mut());
    }
    resp
}

/// A refusal from admission: the error body with its extra members, and the rate headers.
fn refused(
    gw: &Gateway,
    r: Refusal,
    rate: Option<&(Decision, Rate)>,
    tap: Tap,
    close: bool,
) -> Response<RespBody> {
    let mut resp = local_error_with(gw, r.code, tap, close, &r.extra);
    let h = resp.headers_mut();
    if let Some((d, rate)) = rate {
        admission::rate_headers(d, rate, h);
    }
    if let Some(secs) = r.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

fn log_ejected(route: &RouteRt, backend: usize, why: &str) {
    tracing::warn!(
        tenant = %route.tenant,
        route = %route.id,
        backend = %route.backends[backend].label(),
        reason = why,
        "backend ejected (passive health check)"
    );
}

/// The request's `Host` fields: the first, and whether there is another.
#[derive(Clone, Copy)]
struct Hosts<'a> {
    first: Option<&'a HeaderValue>,
    more: bool,
}

impl<'a> Hosts<'a> {
    fn of<B>(req: &'a Request<B>) -> Self {
        let mut all = req.headers().get_all(header::HOST).iter();
        Self {
            first: all.next(),
            more: all.next().is_some(),
        }
    }
}

/// Makes the request target's authority the `Host` field when they differ (absolute form in
/// HTTP/1, or an HTTP/2 request with a `Host` other than its `:authority`). An HTTP/2
/// request without `Host` keeps none (its host is the authority, see [`request_host`]). An
/// authority that is no field value (it cannot be, coming from a parsed URI) changes nothing.
/// `CONNECT`'s authority form (no scheme) names the tunnel's destination, not the server:
/// such a request keeps its `Host` (and is refused once the WAF has seen it). Gives back the
/// new `Host` when it changed.
fn authority_wins<B>(req: &mut Request<B>) -> Option<HeaderValue> {
    req.uri().scheme()?;
    let authority = req.uri().authority()?;
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let same = match (hosts.next(), hosts.next()) {
        (Some(h), None) => h.as_bytes() == authority.as_str().as_bytes(),
        (None, _) => req.version() >= Version::HTTP_2,
        (Some(_), Some(_)) => false,
    };
    if same {
        return None;
    }
    let v = HeaderValue::from_str(authority.as_str()).ok()?;
    req.headers_mut().insert(header::HOST, v.clone());
    Some(v)
}

/// The request's host as sent: `Host` for HTTP/1, `:authority` for HTTP/2.
fn request_host<B>(req: &Request<B>, host: Option<&HeaderValue>) -> Option<HeaderValue> {
    match host {
        Some(h) => Some(h.clone()),
        None => req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    }
}

/// Phase 1: refuse requests whose routing or framing two parsers could read differently.
///
/// Framing is settled by hyper's HTTP/1 parser before we see the request: differing duplicate
/// `Content-Length` → 400; `Transfer-Encoding` that is not chunked → 400; `Content-Length`
/// together with `Transfer-Encoding` → chunked wins, `Content-Length` is dropped and the
/// connection closes after the response (RFC 9112 §6.3), so nothing can hide behind the body.
/// What is left to check here is the host: two `Host` headers could route one way here and
/// another way upstream.
fn request_filter<B>(req: &Request<B>, hosts: Hosts<'_>) -> Result<(), ErrorCode> {
    if req.version() < Version::HTTP_2 && hosts.more {
        return Err(ErrorCode::BadRequest);
    }
    // RFC 9112 §6.1: a transfer coding the proxy does not implement (`gzip, chunked`) gets
    // 501; forwarding the body as plain `chunked` would silently drop the coding.
    let other_coding = req
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .any(|v| tokens(v.as_bytes()).any(|t| !t.eq_ignore_ascii_case(b"chunked")));
    if other_coding {
        return Err(ErrorCode::NotImplemented);
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host, or with an invalid one, is a 400, in
    // absolute form too.
    match hosts.first {
        Some(h) if !valid_authority(h.as_bytes()) => return Err(ErrorCode::BadRequest),
        None if req.version() == Version::HTTP_11 => return Err(ErrorCode::BadRequest),
        _ => {}
    }
    // The target's authority (absolute form, CONNECT, HTTP/2's `:authority`) is a host too,
    // and replaces `Host` once checked: it must be as plain (no user info, a numeric port).
    if let Some(a) = req.uri().authority()
        && !valid_authority(a.as_str().as_bytes())
    {
        return Err(ErrorCode::BadRequest);
    }
    if req.version() < Version::HTTP_2 {
        let uri = req.uri();
        let method = req.method();
        let target_ok = match (uri.scheme_str(), uri.authority()) {
            // Origin form (or asterisk form: OPTIONS only).
            (None, None) => uri.path() != "*" || method == Method::OPTIONS,
            // Authority form: CONNECT only (RFC 9112 §3.2.3).
            (None, Some(_)) => method == Method::CONNECT,
            // Absolute form: an http(s) URI (its authority is checked above).
            (Some(scheme), authority) => {
                (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
                    && authority.is_some()
            }
        };
        if !target_ok {
            return Err(ErrorCode::BadRequest);
        }
    }
    Ok(())
}

/// Whether a `Host` value is a plausible `host[:port]`: a name or IPv4 address, or a
/// bracketed IPv6 literal, then optionally `:` and at most five digits; nothing else (no
/// spaces, controls, `%`, `/`, `@`, a port that is not a number).
fn valid_authority(b: &[u8]) -> bool {
    /// Bytes of a host name or IPv4 address.
    static NAME: [bool; 256] = {
        let mut t = [false; 256];
        let mut c = 0;
        while c < 256 {
            let b = c as u8;
            t[c] = b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_';
            c += 1;
        }
        t
    };
    let port = if b.first() == Some(&b'[') {
        let Some(end) = b.iter().position(|&c| c == b']') else {
            return false;
        };
        let literal = &b[1..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|c| c.is_ascii_hexdigit() || *c == b':' || *c == b'.')
        {
            return false;
        }
        &b[end + 1..]
    } else {
        let name = b.iter().take_while(|&&c| NAME[usize::from(c)]).count();
        if name == 0 {
            return false;
        }
        &b[name..]
    };
    match port {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// Phase 2: the route for this host and path.
fn resolve(gw: &Gateway, host: &str, path: &str) -> Result<Arc<RouteRt>, ErrorCode> {
    let table = gw.table.load();
    match table.lookup(host, path) {
        Lookup::Route(r) => Ok(Arc::clone(r)),
        Lookup::UnknownHost => Err(ErrorCode::UnknownHost),
        Lookup::NoRoute => Err(ErrorCode::NoRoute),
    }
}

fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        // h2c would turn the connection into an HTTP/2 tunnel past routing, the WAF and the
        // limits: it is not passed on (the request goes as a plain HTTP/1.1 request).
        && !req
            .headers()
            .get_all(header::UPGRADE)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"h2c"))
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"upgrade"))
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named in `Connection`.
/// Forwarding a client's `Connection: close` upstream would kill upstream keep-alive.
/// One pass over the (usually few) headers; nothing is hashed unless something is removed.
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let mut found: [Option<HeaderName>; 8] = Default::default();
    let mut n = 0;
    let mut connection_listed = false;
    for name in h.keys() {
        let hop = *name == header::CONNECTION
            || *name == header::TE
            || *name == header::TRAILER
            || *name == header::TRANSFER_ENCODING
            || *name == header::PROXY_AUTHORIZATION
            || *name == KEEP_ALIVE
            || *name == PROXY_CONNECTION
            || (*name == header::UPGRADE && !keep_upgrade);
        if hop && n < found.len() {
            connection_listed |= *name == header::CONNECTION;
            found[n] = Some(name.clone());
            n += 1;
        }
    }
    if n == 0 {
        return;
    }
    // The listed names are looked up as `&str` (lower-cased on the stack by `http`): nothing
    // is allocated for the usual `keep-alive` / `close` / `upgrade`. The value is a cheap
    // clone (a reference count), so the map can change while its tokens are read.
    if connection_listed && let Some(list) = h.get(header::CONNECTION).cloned() {
        for token in list.to_str().unwrap_or("").split(',').map(str::trim) {
            if token.is_empty()
                || token.eq_ignore_ascii_case("close")
                || (keep_upgrade && token.eq_ignore_ascii_case("upgrade"))
            {
                continue;
            }
            h.remove(token);
        }
    }
    for name in found.into_iter().flatten() {
        if keep_upgrade && name == header::CONNECTION {
            continue;
        }
        h.remove(name);
    }
}

/// Phase 4's header cleanup: hop-by-hop fields removed (an upgrade keeps `Upgrade` and says
/// `Connection: upgrade`). The forwarding fields are added by [`Forwarding`] as the request is
/// sent.
fn strip_request_headers(h: &mut HeaderMap, upgrade: bool) {
    strip_hop_by_hop(h, upgrade);
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

async fn splice_upgrade(down: hyper::upgrade::OnUpgrade, up: hyper::upgrade::OnUpgrade) {
    let (down, up) = match tokio::try_join!(down, up) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut down = hyper_util::rt::TokioIo::new(down);
    let mut up = hyper_util::rt::TokioIo::new(up);
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

/// An error answered by the proxy itself: JSON body, request id, logged and counted.
fn local_error(gw: &Gateway, code: ErrorCode, tap: Tap, close: bool) -> Response<RespBody> {
    local_error_with(gw, code, tap, close, "")
}

/// [`local_error`] with extra JSON members (`,"reason":"…"`) after the code.
fn local_error_with(
    gw: &Gateway,
    code: ErrorCode,
    mut tap: Tap,
    close: bool,
    extra: &str,
) -> Response<RespBody> {
    let body = format!(
        "{{\"error\":\"{}\"{extra},\"request_id\":\"{}\"}}\n",
        code.as_str(),
        tap.request_id.to_str().unwrap_or("")
    );
    tap.status = code.status().as_u16();
    tap.error = Some(code.as_str());
    if let Some(b) = tap.backend.take()
        && let Some(r) = &tap.route
    {
        r.backends[b].health.end();
    }
    let request_id = tap.request_id.clone();
    let mut resp = Response::new(RespBody::full(body, Some(tap)));
    *resp.status_mut() = code.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(X_REQUEST_ID.clone(), request_id);
    if close || gw.is_draining() {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Whether an upstream exchange failed on our side of it: hyper's client reports an error of
/// the request body it was polling (the client's body broke) as a user error. Its other user
/// errors would be the proxy's own request building; neither is the backend's fault.
fn client_body_failed(err: &UpstreamError) -> bool {
    matches!(err, UpstreamError::Request(e) if e.is_user())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        for ok in [
            "acme.localhost",
            "ACME.localhost:8080",
            "a:",
            "a:65535",
            "127.0.0.1",
            "[::1]",
            "[::1]:80",
            "[::ffff:1.2.3.4]:443",
            "under_score-dash.example",
        ] {
            assert!(valid_authority(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "", ":80", "a:abc", "a:123456", "a:80:80", "[::1", "[]", "[::1]x", "[::g]", "a b",
            "a%2e", "u@a", "a/b", "a:8 0", "\u{0}a",
        ] {
            assert!(!valid_authority(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);

        // Tokens in any case, with spaces, empty or not a header name at all; an upgrade keeps
        // `Connection` and `Upgrade` when asked to.
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static(" Upgrade ,X-Secret,, bad name,keep-alive"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, true);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["connection", "upgrade", "x-kept"]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }
}
