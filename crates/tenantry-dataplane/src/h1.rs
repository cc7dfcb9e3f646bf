//! The inline HTTP/1.1 upstream client, for requests whose body is already in memory (none, or
//! read in full for the WAF or an LLM route's policy): most proxied requests.
//!
//! Why not hyper's client connection for these: it runs each upstream connection as its own
//! task, fed through channels. A request then crosses two tasks and their wake-ups, and its
//! response body a third channel; profiles put that hand-off among the largest user-space costs
//! per request (`docs/benchmarks.md`). Here the request is written and the response head read
//! by the request's own future, and the response body is read from the socket by whoever polls
//! it (the downstream connection writing it out). Parsing is `httparse`'s (hyper's parser);
//! header values are slices of one shared buffer, as in hyper.
//!
//! What this client does not do goes through hyper's client (`upstream::send`): request bodies
//! still streaming from the client, and protocol upgrades (WebSocket).
//!
//! Response framing follows RFC 9112 §6.3: no body after `HEAD`, 1xx, 204 and 304;
//! `Transfer-Encoding` ending in `chunked` is decoded (trailers kept), any other one reads to
//! the end of the connection; then `Content-Length` (differing duplicates are an error); else
//! the body runs to the end of the connection. A connection goes back to the pool only after a
//! complete, length-delimited body, with keep-alive, and with nothing unread after it.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use crate::forward::{self, Forwarding};

/// Most header fields accepted in a response head (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Largest response head (status line and header fields).
const MAX_HEAD: usize = 64 * 1024;
/// Largest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Largest trailer section.
const MAX_TRAILERS: usize = 16 * 1024;
/// Free space made in the read buffer before each read.
const READ_SPACE: usize = 16 * 1024;
/// Request bodies up to this size are copied behind the head and sent in one write.
const COALESCE_BODY: usize = 64 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the socket failed.
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    /// The upstream closed the connection before the response was complete.
    #[error("upstream closed the connection before the response was complete")]
    Closed,
    /// The response head could not be parsed.
    #[error("invalid upstream response head: {0}")]
    Parse(httparse::Error),
    /// The response broke a rule of HTTP/1.1 framing or size.
    #[error("invalid upstream response: {0}")]
    Invalid(&'static str),
}

/// A failed exchange, and whether the request may be sent again on another connection: the
/// connection came from the pool and the upstream closed it without reading the request, or,
/// for idempotent methods, without a byte of response (it was closed while idle).
#[derive(Debug)]
pub struct Failed {
    /// What went wrong.
    pub error: Error,
    /// Whether a retry on another connection is safe.
    pub retry: bool,
}

/// One upstream HTTP/1.1 connection.
pub struct H1Conn {
    io: TcpStream,
    /// Bytes read and not consumed yet.
    buf: BytesMut,
    /// The request being written (kept: its allocation serves the next request).
    out: Vec<u8>,
}

impl std::fmt::Debug for H1Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Conn")
            .field("local", &self.io.local_addr().ok())
            .field("peer", &self.io.peer_addr().ok())
            .finish_non_exhaustive()
    }
}

impl H1Conn {
    /// Wraps a connected socket.
    pub fn new(io: TcpStream) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
        }
    }

    /// The socket, for hyper's client (streamed bodies, upgrades); `None` if input is pending.
    pub fn into_io(self) -> Option<TcpStream> {
        self.buf.is_empty().then_some(self.io)
    }

    /// Whether an idle connection still looks usable: no end of stream, error or stray bytes
    /// waiting. Costs no system call while the socket has not become readable.
    pub fn probe(&self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.io.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends a request (its head from `parts`, with this hop's `forwarding` fields if given,
    /// `body` as its whole body) and reads the response head. `reused` says the connection
    /// came from the pool (see [`Failed::retry`]).
    pub async fn send(
        mut self,
        parts: &Parts,
        forwarding: Option<&Forwarding<'_>>,
        body: &[u8],
        reused: bool,
    ) -> Result<Response<H1Body>, Failed> {
        let idempotent = parts.method.is_idempotent();
        encode_head(&mut self.out, parts, forwarding, body.len());
        let written = if body.len() <= COALESCE_BODY {
            self.out.extend_from_slice(body);
            self.io.write_all(&self.out).await
        } else {
            match self.io.write_all(&self.out).await {
                Ok(()) => self.io.write_all(body).await,
                Err(e) => Err(e),
            }
        };
        if self.out.capacity() > COALESCE_BODY * 2 {
            self.out = Vec::new();
        }
        if let Err(e) = written {
            // A reset on a pooled connection: it was closed while idle and the request was
            // not read (an upstream does not act on a request it has not read whole).
            return Err(Failed {
                error: Error::Io(e),
                retry: reused,
            });
        }
        let head_only = parts.method == Method::HEAD;
        loop {
            let before = self.buf.len();
            match self.read_head() {
                Ok(Some(head)) => {
                    let status = head.0.status();
                    if status.is_informational() {
                        // 100 Continue, 103 Early Hints: not forwarded, as with hyper.
                        if status == StatusCode::SWITCHING_PROTOCOLS {
                            return Err(fail(Error::Invalid("101 without an upgrade request")));
                        }
                        continue;
                    }
                    return self.into_response(head, head_only).map_err(fail);
                }
                Ok(None) => {}
                Err(e) => return Err(fail(e)),
            }
            let got_any = before > 0;
            let read = poll_fn(|cx| self.poll_fill(cx)).await;
            let error = match read {
                Ok(0) => Error::Closed,
                Ok(_) => continue,
                Err(e) => Error::Io(e),
            };
            return Err(Failed {
                error,
                retry: reused && idempotent && !got_any,
            });
        }
    }

    /// Parses a complete response head off the front of the buffer, if there is one. The
    /// response's `HeaderMap` stays empty: its fields are in the [`RawHead`].
    fn read_head(&mut self) -> Result<Option<(Response<()>, RawHead)>, Error> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let mut fields = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let base = self.buf.as_ptr() as usize;
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            &self.buf,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if self.buf.len() >= MAX_HEAD => {
                return Err(Error::Invalid("response head larger than 64 KiB"));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::Invalid("more than 100 response header fields"));
            }
            Err(e) => return Err(Error::Parse(e)),
        };
        let code = parsed.code.unwrap_or(0);
        let version = match parsed.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        // Offsets into the buffer (the head is at most 64 KiB), so the fields can be read
        // from it once it is frozen. (httparse has checked the names' and values' bytes.)
        let spans: Vec<[u32; 4]> = parsed
            .headers
            .iter()
            .map(|h| {
                let name = h.name.as_ptr() as usize - base;
                let value = h.value.as_ptr() as usize - base;
                [
                    name as u32,
                    (name + h.name.len()) as u32,
                    value as u32,
                    (value + h.value.len()) as u32,
                ]
            })
            .collect();
        let head = RawHead {
            bytes: self.buf.split_to(len).freeze(),
            fields: spans,
        };
        let mut response = Response::new(());
        *response.status_mut() =
            StatusCode::from_u16(code).map_err(|_| Error::Invalid("invalid status code"))?;
        *response.version_mut() = version;
        Ok(Some((response, head)))
    }

    /// The response with its body reader, which owns the connection from here on. The head's
    /// hop-by-hop fields are dropped here.
    fn into_response(
        self,
        (head, mut raw): (Response<()>, RawHead),
        head_only: bool,
    ) -> Result<Response<H1Body>, Error> {
        let (framing, keep_alive) = framing(head.version(), head.status(), &mut raw, head_only)?;
        let body = H1Body {
            state: framing,
            keep_alive,
            conn: Some(self),
            head: Some(raw),
        };
        Ok(head.map(|()| body))
    }

    /// Reads more of a body that is not complete yet: the end of the stream is an error.
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match ready!(self.poll_fill(cx))? {
            0 => Poll::Ready(Err(Error::Closed)),
            _ => Poll::Ready(Ok(())),
        }
    }

    /// Reads what the socket has into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(READ_SPACE);
        loop {
            let space = self.buf.capacity() - self.buf.len();
            match self.io.try_read_buf(&mut self.buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.io.poll_read_ready(cx))?;
                }
                Ok(n) if n > 0 && n < space => {
                    // A short read drained the socket (epoll is edge-triggered: new data
                    // raises readiness again). Clearing it now, as tokio's `poll_read` and
                    // nginx's `recv` do, saves the next read's `EAGAIN` system call: about one
                    // per request, since the response is read before the next one is sent.
                    let _ = self.io.try_io(Interest::READABLE, || {
                        Err::<(), _>(io::ErrorKind::WouldBlock.into())
                    });
                    return Poll::Ready(Ok(n));
                }
                other => return Poll::Ready(other),
            }
        }
    }
}

fn fail(error: Error) -> Failed {
    Failed {
        error,
        retry: false,
    }
}

/// Writes the request line and header fields, with the `forwarding` fields if given. The
/// body's length is always declared with `content-length` (the request's own framing headers
/// were hop-by-hop and are gone); an empty body only when the request declared one or its
/// method usually has a body.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &Parts,
    forwarding: Option<&Forwarding<'_>>,
    body_len: usize,
) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    match parts.uri.path_and_query() {
        Some(pq) => out.extend_from_slice(pq.as_str().as_bytes()),
        None => out.push(b'/'),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let declared = forward::write_fields(out, &parts.headers, forwarding);
    let usually_has_body = matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
    if body_len > 0 || declared || usually_has_body {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How the response body is delimited, and whether the connection can carry another request.
/// The same pass drops the head's hop-by-hop fields.
fn framing(
    version: Version,
    status: StatusCode,
    head: &mut RawHead,
    head_only: bool,
) -> Result<(State, bool), Error> {
    let facts = head.scan();
    let mut reusable = !facts.close && (version == Version::HTTP_11 || facts.keep_alive);
    if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((State::Done, reusable));
    }
    if let Some([v0, v1]) = facts.transfer_encoding {
        // Transfer-Encoding wins over Content-Length; a message with both may be an attempt
        // at smuggling, so the connection is not reused after it.
        reusable &= !facts.content_length_seen;
        let te = &head.bytes[v0 as usize..v1 as usize];
        let last = te.rsplit(|&b| b == b',').next().unwrap_or(b"");
        if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Ok((State::Chunked(Chunk::Size), reusable));
        }
        return Ok((State::Close, false));
    }
    Ok(match facts.content_length.map_err(Error::Invalid)? {
        Some(0) => (State::Done, reusable),
        Some(n) => (State::Length(n), reusable),
        None => (State::Close, false),
    })
}

/// A `Content-Length` value: ASCII digits only, at most 19 of them.
pub(crate) fn parse_decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Where the body reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes are left.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(Chunk),
    /// Everything until the upstream closes.
    Close,
    /// The body is complete.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
}

/// A response head as the upstream sent it: the fields to forward, as spans of its bytes.
///
/// Forwarding them as they came saves building a `HeaderMap` that would only be written out
/// again: the own HTTP/1.1 server (`crate::h1server`) writes these fields, minus those the
/// gateway sets in the response's map, and then the map's. Where a map is needed (hyper's
/// server, LLM routes), [`RawHead::append_to`] builds it with the same outcome.
#[derive(Debug, Default)]
pub struct RawHead {
    bytes: Bytes,
    /// (name start, name end, value start, value end) of each field.
    fields: Vec<[u32; 4]>,
}

/// What [`framing`] needs from a response head.
struct Facts {
    close: bool,
    keep_alive: bool,
    /// The value span of the last `Transfer-Encoding` field.
    transfer_encoding: Option<[u32; 2]>,
    content_length_seen: bool,
    /// The declared length, or why it is invalid.
    content_length: Result<Option<u64>, &'static str>,
}

/// The fields a proxy reads or drops; the rest are forwarded as they are.
enum Field {
    Other,
    Connection,
    TransferEncoding,
    ContentLength,
    /// Other hop-by-hop fields (RFC 9110 §7.6.1), dropped.
    Hop,
}

/// Sorts a field name (any case) by length first: most names are none of these.
fn classify(name: &[u8]) -> Field {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    match name.len() {
        2 if is(b"te") => Field::Hop,
        7 if is(b"trailer") || is(b"upgrade") => Field::Hop,
        10 if is(b"connection") => Field::Connection,
        10 if is(b"keep-alive") => Field::Hop,
        14 if is(b"content-length") => Field::ContentLength,
        16 if is(b"proxy-connection") => Field::Hop,
        17 if is(b"transfer-encoding") => Field::TransferEncoding,
        19 if is(b"proxy-authorization") => Field::Hop,
        _ => Field::Other,
    }
}

impl RawHead {
    /// The fields, in order: (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter().map(|&[n0, n1, v0, v1]| {
            (
                &self.bytes[n0 as usize..n1 as usize],
                &self.bytes[v0 as usize..v1 as usize],
            )
        })
    }

    /// The values of the fields named `name` (lower case), in order.
    pub fn get_all<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// One pass over the fields: what framing needs to know, and the hop-by-hop fields (and
    /// those `Connection` names) dropped.
    fn scan(&mut self) -> Facts {
        let mut facts = Facts {
            close: false,
            keep_alive: false,
            transfer_encoding: None,
            content_length_seen: false,
            content_length: Ok(None),
        };
        let mut listed = false;
        let bytes = &self.bytes;
        self.fields.retain(|&[n0, n1, v0, v1]| {
            let name = &bytes[n0 as usize..n1 as usize];
            let value = &bytes[v0 as usize..v1 as usize];
            match classify(name) {
                Field::Other => return true,
                Field::Connection => {
                    for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                        if token.eq_ignore_ascii_case(b"close") {
                            facts.close = true;
                        } else if token.eq_ignore_ascii_case(b"keep-alive") {
                            facts.keep_alive = true;
                        } else if !token.is_empty() {
                            listed = true;
                        }
                    }
                }
                Field::TransferEncoding => facts.transfer_encoding = Some([v0, v1]),
                Field::ContentLength => {
                    facts.content_length_seen = true;
                    for part in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                        facts.content_length = match (facts.content_length, parse_decimal(part)) {
                            (Err(e), _) => Err(e),
                            (_, None) => Err("invalid content-length"),
                            (Ok(Some(l)), Some(n)) if l != n => {
                                Err("differing content-length values")
                            }
                            (_, Some(n)) => Ok(Some(n)),
                        };
                    }
                    // End to end: forwarded.
                    return true;
                }
                Field::Hop => {}
            }
            false
        });
        if listed {
            self.drop_listed();
        }
        facts
    }

    /// Drops the fields that a `Connection` field names (already dropped itself, so the
    /// names are read from the original head).
    fn drop_listed(&mut self) {
        let mut fields = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let bytes = &self.bytes;
        if httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut parsed, bytes, &mut fields)
            .is_err()
        {
            return;
        }
        let listed: Vec<&[u8]> = parsed
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
            .collect();
        self.fields.retain(|f| {
            let name = &bytes[f[0] as usize..f[1] as usize];
            !listed.iter().any(|l| name.eq_ignore_ascii_case(l))
        });
    }

    /// Appends the fields to `map`, except those whose name `map` already has (the gateway's
    /// own, which replace the upstream's).
    pub fn append_to(&self, map: &mut HeaderMap) {
        let own: Vec<HeaderName> = map.keys().cloned().collect();
        map.reserve(self.fields.len());
        for &[n0, n1, v0, v1] in &self.fields {
            let Ok(name) = HeaderName::from_bytes(&self.bytes[n0 as usize..n1 as usize]) else {
                continue;
            };
            if own.contains(&name) {
                continue;
            }
            if let Ok(value) =
                HeaderValue::from_maybe_shared(self.bytes.slice(v0 as usize..v1 as usize))
            {
                map.append(name, value);
            }
        }
    }
}

/// A response body read straight from the upstream connection.
#[derive(Debug)]
pub struct H1Body {
    state: State,
    keep_alive: bool,
    conn: Option<H1Conn>,
    /// The response's head, until the downstream side takes it.
    head: Option<RawHead>,
}

impl H1Body {
    /// The response's header fields, as the upstream sent them (hop-by-hop ones excepted).
    pub fn raw_head(&self) -> Option<&RawHead> {
        self.head.as_ref()
    }

    /// Moves the response's header fields into `headers` (see [`RawHead::append_to`]), for a
    /// writer that needs one map.
    pub fn merge_raw_head(&mut self, headers: &mut HeaderMap) {
        if let Some(raw) = self.head.take() {
            raw.append_to(headers);
        }
    }

    /// The connection, if the body was read to its end and the connection can carry another
    /// request.
    pub fn take_reusable(&mut self) -> Option<H1Conn> {
        if self.state == State::Done && self.keep_alive {
            self.conn.take().filter(|c| c.buf.is_empty())
        } else {
            None
        }
    }

    /// Whether the body is known to be complete.
    pub fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    /// The exact length when it is declared.
    pub fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    /// The next piece of the body: data straight from the read buffer, or the trailers.
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let polled = self.poll_inner(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            // A broken body leaves the connection in an unknown place.
            self.keep_alive = false;
            self.conn = None;
            self.state = State::Done;
        }
        polled
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut self.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) | State::Chunked(Chunk::Data(left)) => {
                    if conn.buf.is_empty() {
                        ready!(conn.poll_more(cx))?;
                        continue;
                    }
                    let n =
                        usize::try_from(*left).map_or(conn.buf.len(), |l| l.min(conn.buf.len()));
                    let data = conn.buf.split_to(n).freeze();
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = match self.state {
                            State::Length(_) => State::Done,
                            _ => State::Chunked(Chunk::DataEnd),
                        };
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Close => {
                    if conn.buf.is_empty() {
                        if ready!(conn.poll_fill(cx))? == 0 {
                            self.keep_alive = false;
                            self.state = State::Done;
                            return Poll::Ready(None);
                        }
                        continue;
                    }
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(Chunk::Size) => match httparse::parse_chunk_size(&conn.buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        conn.buf.advance(used);
                        self.state = State::Chunked(if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        });
                    }
                    Ok(httparse::Status::Partial) => {
                        if conn.buf.len() > MAX_CHUNK_LINE {
                            return Poll::Ready(Some(Err(Error::Invalid(
                                "chunk-size line too long",
                            ))));
                        }
                        ready!(conn.poll_more(cx))?;
                    }
                    Err(_) => return Poll::Ready(Some(Err(Error::Invalid("invalid chunk size")))),
                },
                State::Chunked(Chunk::DataEnd) => {
                    if conn.buf.len() < 2 {
                        ready!(conn.poll_more(cx))?;
                        continue;
                    }
                    if &conn.buf[..2] != b"\r\n" {
                        return Poll::Ready(Some(Err(Error::Invalid(
                            "chunk data not followed by CRLF",
                        ))));
                    }
                    conn.buf.advance(2);
                    self.state = State::Chunked(Chunk::Size);
                }
                State::Chunked(Chunk::Trailers) => {
                    let mut fields = [httparse::EMPTY_HEADER; 32];
                    match httparse::parse_headers(&conn.buf, &mut fields) {
                        Ok(httparse::Status::Complete((used, fields))) => {
                            let mut trailers = HeaderMap::new();
                            for f in fields {
                                let name = HeaderName::from_bytes(f.name.as_bytes())
                                    .map_err(|_| Error::Invalid("invalid trailer name"))?;
                                let value = HeaderValue::from_bytes(f.value)
                                    .map_err(|_| Error::Invalid("invalid trailer value"))?;
                                trailers.append(name, value);
                            }
                            conn.buf.advance(used);
                            self.state = State::Done;
                            if trailers.is_empty() {
                                return Poll::Ready(None);
                            }
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Ok(httparse::Status::Partial) => {
                            if conn.buf.len() > MAX_TRAILERS {
                                return Poll::Ready(Some(Err(Error::Invalid(
                                    "trailer section too large",
                                ))));
                            }
                            ready!(conn.poll_more(cx))?;
                        }
                        Err(e) => return Poll::Ready(Some(Err(Error::Parse(e)))),
                    }
                }
            }
        }
    }
}

impl Drop for H1Body {
    /// A body abandoned part way (the client left): what has already arrived is read off the
    /// socket first, so that closing it sends the upstream a FIN rather than a reset (which
    /// a reset would be, with unread data queued). Bounded: at most 64 KiB, no waiting.
    fn drop(&mut self) {
        if self.state == State::Done {
            return;
        }
        if let Some(conn) = self.conn.as_mut() {
            let mut scratch = [0u8; 8192];
            for _ in 0..8 {
                match conn.io.try_read(&mut scratch) {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
