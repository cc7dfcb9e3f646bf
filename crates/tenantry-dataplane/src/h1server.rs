//! The proxy's own HTTP/1.1 server connection, for the requests most traffic is made of.
//!
//! hyper's server connection parses a request into `http` types, hands it to the service
//! through its dispatcher, and encodes the response; profiles put that machinery at about a
//! sixth of the proxy's user-space work per request (`docs/benchmarks.md`). This loop does the
//! same job for plain requests in one future: it reads a head, parses it with `httparse`
//! (hyper's parser), reads a body of declared length (up to [`Limits::max_body`]), calls the
//! proxy, and writes the response head and body itself, coalescing small bodies into the
//! head's write.
//!
//! Everything else is hyper's: at the first request that is not plain, the connection is
//! handed over to hyper's server for the rest of its life ([`Served::Fallback`]), with the
//! bytes already read in front of the socket ([`Prepend`]). Not plain means: not HTTP/1.1
//! (HTTP/1.0, or the HTTP/2 preface), `CONNECT`, `Transfer-Encoding`, `TE`, `Expect`,
//! `Upgrade`, more than one `Content-Length` or an invalid one, a body over the limit, a head
//! that does not parse, is too large or has more than 100 fields, a URI or a field that the
//! `http` types refuse. Their answers (`400`, `431`, `100 Continue`, upgrades, chunked
//! request bodies) are therefore exactly hyper's, as before this server existed.
//!
//! Requests are answered in order (pipelining works); a request's body is read whole before
//! the proxy sees it, so the connection is always positioned at the next head. A client that
//! shuts its sending side after a request still gets the whole response.

use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::sync::watch;

use crate::body::{ReqBody, RespBody};
use crate::h1::parse_decimal;

/// Most header fields in a request head (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Longest request target (hyper's limit).
const MAX_URI: usize = 65_534;
/// Free space made in the read buffer before a read.
const READ_SPACE: usize = 8 * 1024;
/// Response body frames up to this size are copied behind the head (one write); larger ones
/// are written as they are.
const COPY_MAX: usize = 16 * 1024;
/// The most gathered in the write buffer before it is written.
const OUT_MAX: usize = 64 * 1024;

/// Sizes and times the server accepts before handing a connection to hyper.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest request head (hyper answers `431` beyond it; a request line that alone
    /// fills it gets `414` here).
    pub max_head: usize,
    /// The largest request body read in full with its head; larger ones are streamed by hyper.
    pub max_body: usize,
    /// The longest wait for the next bytes of a request body being read (nginx's
    /// `client_body_timeout`): past it the client gets `408 request_timeout` and the
    /// connection closes.
    pub body_timeout: Duration,
}

/// `Content-Length` values above this are refused with `413` here (no backend or body
/// counter is built for them, and hyper cannot represent the largest).
pub(crate) const MAX_DECLARED_BODY: u64 = 1 << 53;

/// How a connection left this server.
pub enum Served<I> {
    /// It is finished (closed by either side, or by the server's shutdown).
    Closed,
    /// A request this server does not handle arrived: hyper serves the rest of the connection,
    /// starting with the bytes already read.
    Fallback(Prepend<I>),
}

/// Serves plain HTTP/1.1 requests on `io` with `handle` until the connection ends or a request
/// needs hyper. `closing` turns to `true` (or its sender goes away) when the server shuts
/// down: an idle connection closes at once, a busy one after its current response.
/// `reading_body` is true while a request's body is being read (the caller's idle watchdog
/// leaves such a connection to [`Limits::body_timeout`]).
///
/// # Errors
/// Reading or writing the socket failed.
pub async fn serve<I, F, Fut>(
    mut io: I,
    limits: Limits,
    mut closing: watch::Receiver<bool>,
    reading_body: &AtomicBool,
    mut handle: F,
) -> io::Result<Served<I>>
where
    I: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Request<ReqBody>) -> Fut,
    Fut: Future<Output = Response<RespBody>>,
{
    let mut buf = BytesMut::with_capacity(READ_SPACE);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut fields: Vec<Field> = Vec::with_capacity(16);
    loop {
        // A request head.
        let head = loop {
            if !buf.is_empty() {
                match parse(&mut buf, &mut fields, limits) {
                    Parse::Complete(h) => break h,
                    Parse::Partial if buf.len() < limits.max_head => {}
                    Parse::Partial if !buf.contains(&b'\n') => {
                        // The request line alone fills the head's room: its target is too long.
                        return refuse(io, StatusCode::URI_TOO_LONG, "uri_too_long").await;
                    }
                    Parse::Refuse(status, code) => return refuse(io, status, code).await,
                    Parse::Partial | Parse::Unsupported => {
                        return Ok(Served::Fallback(Prepend::new(buf.freeze(), io)));
                    }
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(READ_SPACE);
            }
            let n = if buf.is_empty() {
                // Idle between requests: this is where a shutdown closes the connection.
                tokio::select! {
                    biased;
                    n = io.read_buf(&mut buf) => n?,
                    _ = closing.wait_for(|c| *c) => return Ok(Served::Closed),
                }
            } else {
                io.read_buf(&mut buf).await?
            };
            if n == 0 {
                return Ok(if buf.is_empty() {
                    Served::Closed
                } else {
                    // An unfinished head at the end of input: hyper answers it.
                    Served::Fallback(Prepend::new(buf.freeze(), io))
                });
            }
        };

        // Its body, read whole.
        let body = if head.content_length == 0 {
            None
        } else {
            let len = head.content_length;
            reading_body.store(true, Ordering::Relaxed);
            let read = read_body(&mut io, &mut buf, len, limits.body_timeout).await;
            reading_body.store(false, Ordering::Relaxed);
            match read? {
                BodyRead::Complete => {}
                // The client left part way through its body: nothing to answer.
                BodyRead::Gone => return Ok(Served::Closed),
                BodyRead::Stalled => {
                    return refuse(io, StatusCode::REQUEST_TIMEOUT, "request_timeout").await;
                }
            }
            Some(buf.split_to(len).freeze())
        };

        let Head {
            request,
            keep_alive,
            head_only,
            ..
        } = head;
        let response = handle(request.map(|()| ReqBody::Full(body))).await;
        let keep_alive = keep_alive && !matches!(closing.has_changed(), Ok(true) | Err(_));
        let keep_alive = write_response(&mut io, &mut out, response, head_only, keep_alive).await?;
        if !keep_alive {
            let _ = io.shutdown().await;
            return Ok(Served::Closed);
        }
    }
}

/// How reading a request body ended.
enum BodyRead {
    /// `buf` holds the whole body.
    Complete,
    /// The client closed its side first.
    Gone,
    /// No bytes came for the body timeout.
    Stalled,
}

/// Reads until `buf` holds `len` bytes, each read waiting at most `gap`.
async fn read_body<I>(
    io: &mut I,
    buf: &mut BytesMut,
    len: usize,
    gap: Duration,
) -> io::Result<BodyRead>
where
    I: AsyncRead + Unpin,
{
    while buf.len() < len {
        buf.reserve(len - buf.len());
        match tokio::time::timeout(gap, io.read_buf(buf)).await {
            Ok(Ok(0)) => return Ok(BodyRead::Gone),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(BodyRead::Stalled),
        }
    }
    Ok(BodyRead::Complete)
}

/// Answers a request this server refuses before the proxy sees it (the route is not known
/// yet, so no access log line or route metric): `{"error":…,"request_id":…}`, then closes.
async fn refuse<I>(mut io: I, status: StatusCode, code: &str) -> io::Result<Served<I>>
where
    I: AsyncWrite + Unpin,
{
    let id = crate::reqid::generate();
    let id = id.to_str().unwrap_or("");
    let body = format!("{{\"error\":\"{code}\",\"request_id\":\"{id}\"}}\n");
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    field(&mut out, b"content-type", b"application/json");
    field(&mut out, b"x-request-id", id.as_bytes());
    field(
        &mut out,
        b"content-length",
        itoa::Buffer::new().format(body.len()).as_bytes(),
    );
    push_date(&mut out);
    field(&mut out, b"connection", b"close");
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    io.write_all(&out).await?;
    io.flush().await?;
    let _ = io.shutdown().await;
    Ok(Served::Closed)
}

/// A parsed request head.
struct Head {
    request: Request<()>,
    content_length: usize,
    keep_alive: bool,
    head_only: bool,
}

// `Complete` is the common case and is taken apart at once: boxing it would cost an allocation
// per request.
#[allow(clippy::large_enum_variant)]
enum Parse {
    Complete(Head),
    Partial,
    /// Not a request this server handles (or not a valid one): hyper's.
    Unsupported,
    /// A request refused here, with this status and error code.
    Refuse(StatusCode, &'static str),
}

/// Offsets of a header field's name and value in the head.
#[derive(Clone, Copy)]
struct Field {
    name: (usize, usize),
    value: (usize, usize),
}

/// Parses the head at the start of `buf`; a complete one is split off `buf`. `fields` is
/// scratch space (kept by the connection, so that no request allocates it).
fn parse(buf: &mut BytesMut, fields: &mut Vec<Field>, limits: Limits) -> Parse {
    fields.clear();
    let (len, method, path) = {
        let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let bytes: &[u8] = buf;
        let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            bytes,
            &mut headers,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parse::Partial,
            Err(_) => return Parse::Unsupported,
        };
        if len > limits.max_head || req.version != Some(1) {
            return Parse::Unsupported;
        }
        let (Some(method), Some(path)) = (req.method, req.path) else {
            return Parse::Unsupported;
        };
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            return Parse::Unsupported;
        };
        if method == Method::CONNECT || path.len() > MAX_URI {
            return Parse::Unsupported;
        }
        let base = bytes.as_ptr() as usize;
        let offset = |s: &[u8]| s.as_ptr() as usize - base;
        let path_start = offset(path.as_bytes());
        fields.extend(req.headers.iter().map(|h| {
            let n = offset(h.name.as_bytes());
            let v = offset(h.value);
            Field {
                name: (n, n + h.name.len()),
                value: (v, v + h.value.len()),
            }
        }));
        (len, method, (path_start, path_start + path.len()))
    };
    let head = buf.split_to(len).freeze();
    match build(&head, method, path, fields, limits) {
        Ok(h) => Parse::Complete(h),
        Err(Some((status, code))) => Parse::Refuse(status, code),
        Err(None) => {
            // Put the head back in front of what follows it, for hyper.
            let mut whole = BytesMut::with_capacity(head.len() + buf.len());
            whole.extend_from_slice(&head);
            whole.extend_from_slice(buf);
            *buf = whole;
            Parse::Unsupported
        }
    }
}

/// Why [`build`] did not make a request: `None` when it is not a plain one (hyper's), else the
/// status and error code it is refused with.
type NotBuilt = Option<(StatusCode, &'static str)>;

/// Builds the request from a parsed head.
fn build(
    head: &Bytes,
    method: Method,
    path: (usize, usize),
    fields: &[Field],
    limits: Limits,
) -> Result<Head, NotBuilt> {
    let uri = Uri::from_maybe_shared(head.slice(path.0..path.1)).map_err(|_| None)?;
    // The proxy adds no fields to this map: the forwarding fields are written into the
    // upstream head (`forward.rs`).
    let mut headers = HeaderMap::with_capacity(fields.len());
    let mut content_length: Option<usize> = None;
    let mut keep_alive = true;
    for f in fields {
        let name = HeaderName::from_bytes(&head[f.name.0..f.name.1]).map_err(|_| None)?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(f.value.0..f.value.1)).map_err(|_| None)?;
        if name == header::CONTENT_LENGTH {
            if content_length.is_some() {
                return Err(None);
            }
            // Leading zeros say nothing about the size.
            let value_bytes = value.as_bytes();
            let zeros = value_bytes
                .iter()
                .take_while(|&&c| c == b'0')
                .count()
                .min(value_bytes.len().saturating_sub(1));
            let digits = &value_bytes[zeros..];
            let huge = digits.len() > 19 && digits.iter().all(u8::is_ascii_digit);
            let n = if huge {
                u64::MAX
            } else {
                parse_decimal(digits).ok_or(None)?
            };
            if n > MAX_DECLARED_BODY {
                return Err(Some((StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")));
            }
            if n > limits.max_body as u64 {
                return Err(None);
            }
            content_length = Some(usize::try_from(n).map_err(|_| None)?);
        } else if name == header::CONNECTION {
            if has_token(value.as_bytes(), b"close") {
                keep_alive = false;
            }
        } else if name == header::TRANSFER_ENCODING
            || name == header::TE
            || name == header::EXPECT
            || name == header::UPGRADE
        {
            return Err(None);
        }
        headers.append(name, value);
    }
    let head_only = method == Method::HEAD;
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Ok(Head {
        request,
        content_length: content_length.unwrap_or(0),
        keep_alive,
        head_only,
    })
}

/// The tokens of a comma-separated field value, trimmed.
pub(crate) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&c| c == b',').map(<[u8]>::trim_ascii)
}

/// Whether a comma-separated field value lists `token` (ASCII case-insensitive).
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

/// How a response body is framed on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (`HEAD`, 1xx, 204, 304).
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Writes a response; gives back whether the connection stays open.
async fn write_response<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    response: Response<RespBody>,
    head_only: bool,
    mut keep_alive: bool,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let headers = &parts.headers;
    // The upstream's fields as it sent them (inline client), under the gateway's own in
    // `headers`, which replace those of the same name.
    let raw = body.raw_head();
    let rate = body.rate_fields().copied();
    let own = |name: &[u8]| {
        headers
            .keys()
            .any(|k| k.as_str().as_bytes().eq_ignore_ascii_case(name))
            || rate.is_some_and(|r| r.replaces(name))
    };
    if headers
        .get(header::CONNECTION)
        .is_some_and(|v| has_token(v.as_bytes(), b"close"))
    {
        keep_alive = false;
    }
    let declared = match headers.get(header::CONTENT_LENGTH) {
        Some(v) => parse_decimal(v.as_bytes()),
        None => raw
            .and_then(|r| r.get_all(b"content-length").next())
            .and_then(parse_decimal),
    };
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let exact = body.size_hint().exact();
    let framing = if bodiless || head_only {
        Framing::None
    } else if let Some(n) = declared.or(exact) {
        Framing::Length(n)
    } else {
        Framing::Chunked
    };
    // `Content-Length` is always written here: as declared, or from the body's length as
    // hyper does (also for `HEAD`, the length a `GET` would get, unless that is zero).
    let length_field = match (declared, exact) {
        (Some(n), _) => Some(n),
        (None, Some(n)) if !(bodiless || (head_only && n == 0)) => Some(n),
        _ => None,
    };

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_date = false;
    let mut has_connection = false;
    for (name, value) in raw.into_iter().flat_map(|r| r.iter()) {
        if name.eq_ignore_ascii_case(b"content-length") || own(name) {
            continue;
        }
        has_date |= name.eq_ignore_ascii_case(b"date");
        field(out, name, value);
    }
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING || name == header::CONTENT_LENGTH {
            // The framing below decides these.
            continue;
        }
        if rate.is_some_and(|r| r.replaces(name.as_str().as_bytes())) {
            // An upstream field moved into the map (LLM routes): the gateway's replaces it.
            continue;
        }
        has_date |= name == header::DATE;
        has_connection |= name == header::CONNECTION;
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(rate) = rate {
        rate.write_h1(out);
    }
    if let Some(n) = length_field {
        field(
            out,
            b"content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        );
    } else if framing == Framing::Chunked {
        field(out, b"transfer-encoding", b"chunked");
    }
    if !has_date {
        push_date(out);
    }
    if !keep_alive && !has_connection {
        field(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");

    if framing == Framing::None {
        drop(body);
        io.write_all(out).await?;
        io.flush().await?;
        return Ok(keep_alive);
    }
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    loop {
        // Whatever is ready is gathered; the buffer is written when the body has to wait.
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !out.is_empty() {
                    io.write_all(out).await?;
                    io.flush().await?;
                    out.clear();
                }
                poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        match frame {
            None => break,
            Some(Err(e)) => {
                // The upstream failed part way: the client must not take the response as
                // complete, so the connection ends without the rest of the framing.
                tracing::debug!(error = %e, "response body failed; closing the client connection");
                if !out.is_empty() {
                    let _ = io.write_all(out).await;
                }
                return Ok(false);
            }
            Some(Ok(frame)) => {
                let Ok(mut data) = frame.into_data() else {
                    // Trailers are not forwarded on HTTP/1.1 (the request sent no `TE`).
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                if framing == Framing::Chunked {
                    push_hex(out, data.len());
                    out.extend_from_slice(b"\r\n");
                } else {
                    if data.len() as u64 > left {
                        // More than the declared length: what fits is sent, then the
                        // connection closes.
                        data.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                        keep_alive = false;
                    }
                    left -= data.len() as u64;
                }
                if data.len() <= COPY_MAX {
                    out.extend_from_slice(&data);
                } else {
                    io.write_all(out).await?;
                    out.clear();
                    while data.has_remaining() {
                        let n = io.write(&data).await?;
                        if n == 0 {
                            return Err(io::ErrorKind::WriteZero.into());
                        }
                        data.advance(n);
                    }
                }
                if framing == Framing::Chunked {
                    out.extend_from_slice(b"\r\n");
                }
                if out.len() >= OUT_MAX {
                    io.write_all(out).await?;
                    out.clear();
                }
                if !keep_alive && left == 0 {
                    break;
                }
            }
        }
    }
    match framing {
        Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        // Shorter than declared: the client would wait for the rest.
        Framing::Length(_) if left > 0 => keep_alive = false,
        _ => {}
    }
    drop(body);
    io.write_all(out).await?;
    io.flush().await?;
    out.clear();
    Ok(keep_alive)
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A chunk size in hexadecimal.
fn push_hex(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789ABCDEF"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A `Date` field with the current second (formatted once a second per thread, as hyper does).
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        field(out, b"date", text.as_bytes());
    });
}

/// A connection with bytes already read from it in front: what hyper reads first.
#[derive(Debug)]
pub struct Prepend<I> {
    first: Bytes,
    io: I,
}

impl<I> Prepend<I> {
    /// `first`, then `io`.
    pub fn new(first: Bytes, io: I) -> Self {
        Self { first, io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prepend<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.first.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.first.len().min(buf.remaining());
        buf.put_slice(&this.first[..n]);
        this.first.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prepend<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
