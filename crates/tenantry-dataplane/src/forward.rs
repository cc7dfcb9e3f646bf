//! This hop's forwarding fields on the upstream request: `X-Forwarded-For` (extended),
//! `X-Forwarded-Proto`, `X-Forwarded-Host`, `Forwarded` (RFC 7239, extended), `X-Request-Id`,
//! and `Host` when the request had none (HTTP/2's `:authority`).
//!
//! The inline client writes them straight into the request head it encodes
//! ([`write_fields`]): the request's header map is left as the client sent it
//! (less its hop-by-hop fields), so five map inserts, their hashing and the growth of the map
//! are saved on every proxied request. Requests that go through hyper's client get the same
//! fields in their map ([`Forwarding::apply`]). Both give the upstream the same head.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::proxy::ConnInfo;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What this hop adds to a request on its way upstream.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// The downstream connection: client address and scheme.
    pub conn: &'a ConnInfo,
    /// The request's `Host`, or its authority when it had no `Host` field.
    pub host: Option<&'a HeaderValue>,
    /// The request id (the client's, when acceptable, or a generated one).
    pub request_id: &'a HeaderValue,
}

/// Which of the fields this hop sets the client's request already had.
#[derive(Default)]
struct Seen {
    host: bool,
    xff: bool,
    forwarded: bool,
}

/// Writes `headers` as header fields (`name: value\r\n`), with this hop's changes when
/// `forwarding` is given: the client's `X-Forwarded-For` and `Forwarded` are extended, its
/// `X-Forwarded-Proto`, `X-Forwarded-Host` and `X-Request-Id` replaced. `Content-Length` and
/// `Transfer-Encoding` are not written (the caller frames the body); the return value says
/// whether the request had one of them.
pub fn write_fields(
    out: &mut Vec<u8>,
    headers: &HeaderMap,
    forwarding: Option<&Forwarding<'_>>,
) -> bool {
    let mut declared = false;
    let mut seen = Seen::default();
    let mut iter = headers.iter().peekable();
    while let Some((name, value)) = iter.next() {
        if *name == header::CONTENT_LENGTH || *name == header::TRANSFER_ENCODING {
            declared = true;
            continue;
        }
        let Some(f) = forwarding else {
            put_field(out, name.as_str().as_bytes(), value.as_bytes());
            continue;
        };
        if *name == header::HOST {
            seen.host = true;
        } else if *name == header::FORWARDED || *name == X_FORWARDED_FOR {
            // Every value of the field, in order, then this hop's element: one line.
            let forwarded = *name == header::FORWARDED;
            if forwarded {
                seen.forwarded = true;
            } else {
                seen.xff = true;
            }
            put_name(out, name);
            out.extend_from_slice(value.as_bytes());
            while let Some((_, v)) = iter.next_if(|(n, _)| *n == name) {
                out.extend_from_slice(b", ");
                out.extend_from_slice(v.as_bytes());
            }
            out.extend_from_slice(b", ");
            if forwarded {
                f.forwarded_element(out);
            } else {
                out.extend_from_slice(f.conn.client_ip.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            continue;
        } else if *name == X_FORWARDED_PROTO || *name == X_FORWARDED_HOST || *name == X_REQUEST_ID {
            continue;
        }
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(f) = forwarding {
        f.write_added(out, &seen);
    }
    declared
}

impl Forwarding<'_> {
    /// The fields this hop adds after the client's (those it had are already written).
    fn write_added(&self, out: &mut Vec<u8>, seen: &Seen) {
        if !seen.host
            && let Some(host) = self.host
        {
            put_field(out, b"host", host.as_bytes());
        }
        if !seen.xff {
            put_field(out, b"x-forwarded-for", self.conn.client_ip.as_bytes());
        }
        put_field(out, b"x-forwarded-proto", self.proto().as_bytes());
        if let Some(host) = self.host {
            put_field(out, b"x-forwarded-host", host.as_bytes());
        }
        if !seen.forwarded {
            out.extend_from_slice(b"forwarded: ");
            self.forwarded_element(out);
            out.extend_from_slice(b"\r\n");
        }
        put_field(out, b"x-request-id", self.request_id.as_bytes());
    }

    /// Sets the same fields in a header map, for requests sent by hyper's client.
    pub fn apply(&self, h: &mut HeaderMap) {
        let xff = joined(h, &X_FORWARDED_FOR, self.conn.client_ip.as_bytes());
        h.insert(X_FORWARDED_FOR.clone(), xff);
        h.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(self.proto()),
        );
        if let Some(host) = self.host {
            if !h.contains_key(header::HOST) {
                h.insert(header::HOST, host.clone());
            }
            h.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        let mut element = Vec::with_capacity(64);
        self.forwarded_element(&mut element);
        let forwarded = joined(h, &header::FORWARDED, &element);
        h.insert(header::FORWARDED, forwarded);
        h.insert(X_REQUEST_ID.clone(), self.request_id.clone());
    }

    fn proto(&self) -> &'static str {
        if self.conn.tls { "https" } else { "http" }
    }

    /// This hop's `Forwarded` element: `for=<client>;proto=<scheme>`, then `;host=<host>`,
    /// the host quoted when it is not a token (a port's `:`). A host that is not visible
    /// ASCII (or no host) leaves the `host` parameter out.
    fn forwarded_element(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.conn.forwarded.as_bytes());
        let Some(host) = self.host.filter(|h| forwardable(h)) else {
            return;
        };
        let host = host.as_bytes();
        let token = !host.is_empty()
            && host
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(b));
        if token {
            out.extend_from_slice(b";host=");
            out.extend_from_slice(host);
        } else {
            out.extend_from_slice(b";host=\"");
            out.extend(host.iter().filter(|b| !matches!(b, b'"' | b'\\')));
            out.push(b'"');
        }
    }
}

/// Whether a host can go in a `Forwarded` element: visible ASCII only.
fn forwardable(host: &HeaderValue) -> bool {
    host.as_bytes().iter().all(|b| b.is_ascii_graphic())
}

#[inline]
fn put_name(out: &mut Vec<u8>, name: &HeaderName) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
}

#[inline]
fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Every value of `name` in `h`, comma-joined, then `element`.
fn joined(h: &HeaderMap, name: &HeaderName, element: &[u8]) -> HeaderValue {
    let mut v = Vec::with_capacity(64);
    for prev in h.get_all(name) {
        v.extend_from_slice(prev.as_bytes());
        v.extend_from_slice(b", ");
    }
    v.extend_from_slice(element);
    // Previous values were valid field values, and so is the element: this cannot fail,
    // but a failure keeps this hop's element alone rather than panicking.
    HeaderValue::from_bytes(&v).unwrap_or_else(|_| {
        HeaderValue::from_bytes(element).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
    })
}

#[cfg(test)]
mod tests;
