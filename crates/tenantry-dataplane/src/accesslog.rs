//! The JSON access log: one line per request on stdout. Request tasks append formatted lines
//! to a shared buffer; a dedicated thread writes the buffer out every 50 ms. The request path
//! never makes a syscall or wakes a thread for logging (a wake-up per line cost more than the
//! rest of the request). If the writer falls behind by more than 8 MiB, lines are dropped and
//! counted (`tenantry_access_log_dropped_total`) rather than slowing traffic.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::MetricsRegistry;

/// How often the writer thread flushes.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Pending bytes beyond which lines are dropped.
const MAX_PENDING: usize = 8 * 1024 * 1024;

/// One finished request.
pub struct Entry<'a> {
    /// Tenant, if the request was routed.
    pub tenant_id: Option<&'a str>,
    /// Route, if routed.
    pub route: Option<&'a str>,
    /// Request id.
    pub request_id: &'a str,
    /// Method.
    pub method: &'a str,
    /// Normalised host.
    pub host: &'a str,
    /// Path (without query string, which may carry secrets).
    pub path: &'a str,
    /// Status sent.
    pub status: u16,
    /// Backend address, if one was chosen.
    pub upstream: Option<&'a str>,
    /// Time until the response body ended.
    pub duration: Duration,
    /// Response body bytes.
    pub bytes: u64,
    /// Client address.
    pub client: IpAddr,
    /// Error code, if the proxy answered with an error or the upstream body failed.
    pub error: Option<&'a str>,
}

struct Shared {
    pending: Mutex<Vec<u8>>,
    metrics: Arc<MetricsRegistry>,
}

/// A cheap handle to the log.
#[derive(Clone)]
pub struct AccessLog {
    shared: Arc<Shared>,
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

impl AccessLog {
    /// Starts the writer thread, writing to stdout.
    pub fn stdout(metrics: Arc<MetricsRegistry>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::with_capacity(256 * 1024)),
            metrics,
        });
        let writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut spare = Vec::with_capacity(256 * 1024);
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    flush_into(&writer, &mut spare);
                }
            })?;
        Ok(Self { shared })
    }

    /// Appends one line.
    pub fn write(&self, e: &Entry<'_>) {
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            format_into(&mut line, e);
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if pending.len() + line.len() > MAX_PENDING {
                drop(pending);
                self.shared
                    .metrics
                    .global
                    .access_log_dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            pending.extend_from_slice(line.as_bytes());
        });
    }

    /// Writes out what is pending now (at shutdown).
    pub fn flush(&self) {
        let mut spare = Vec::new();
        flush_into(&self.shared, &mut spare);
    }
}

fn flush_into(shared: &Shared, spare: &mut Vec<u8>) {
    {
        let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.is_empty() {
            return;
        }
        std::mem::swap(&mut *pending, spare);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = out.write_all(spare);
    let _ = out.flush();
    spare.clear();
}

/// Appends `s` as a JSON string. Runs of bytes that need no escape (all of them, normally) are
/// copied whole.
fn push_json_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // The usual case, checked first with a loop that has no early exit (the compiler turns it
    // into vector compares): nothing to escape, one copy.
    let plain = s
        .bytes()
        .fold(true, |ok, b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    out.reserve(s.len() + 2);
    out.push('"');
    if plain {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if b != b'"' && b != b'\\' && b >= 0x20 {
            continue;
        }
        // `i` is at an ASCII byte, so both slices end on character boundaries.
        out.push_str(&s[start..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            _ => {
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

fn push_opt(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_json_str(out, s),
        None => out.push_str("null"),
    }
}

fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// `whole.fff`: a count of thousandths written as a decimal with three places.
fn push_thousandths(out: &mut String, n: u64) {
    push_u64(out, n / 1000);
    let frac = n % 1000;
    out.push('.');
    if frac < 100 {
        out.push('0');
    }
    if frac < 10 {
        out.push('0');
    }
    push_u64(out, frac);
}

fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Formats one JSON line (with the trailing newline).
pub fn format_entry(e: &Entry<'_>) -> String {
    let mut out = String::with_capacity(256);
    format_into(&mut out, e);
    out
}

fn format_into(out: &mut String, e: &Entry<'_>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    out.push_str("{\"ts\":");
    push_thousandths(
        out,
        now.as_secs()
            .saturating_mul(1000)
            .saturating_add(u64::from(now.subsec_millis())),
    );
    out.push_str(",\"tenant_id\":");
    push_opt(out, e.tenant_id);
    out.push_str(",\"route\":");
    push_opt(out, e.route);
    out.push_str(",\"request_id\":");
    push_json_str(out, e.request_id);
    out.push_str(",\"method\":");
    push_json_str(out, e.method);
    out.push_str(",\"host\":");
    push_json_str(out, e.host);
    out.push_str(",\"path\":");
    push_json_str(out, e.path);
    out.push_str(",\"status\":");
    push_u64(out, u64::from(e.status));
    out.push_str(",\"upstream\":");
    push_opt(out, e.upstream);
    out.push_str(",\"duration_ms\":");
    push_thousandths(
        out,
        u64::try_from(e.duration.as_micros()).unwrap_or(u64::MAX),
    );
    out.push_str(",\"bytes\":");
    push_u64(out, e.bytes);
    out.push_str(",\"client\":\"");
    push_ip(out, e.client);
    out.push_str("\",\"error\":");
    push_opt(out, e.error);
    out.push_str("}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_valid_json_with_escapes() {
        let line = format_entry(&Entry {
            tenant_id: Some("acme"),
            route: Some("web"),
            request_id: "abc",
            method: "GET",
            host: "acme.localhost",
            path: "/a\"b\\c\u{1}",
            status: 200,
            upstream: Some("127.0.0.1:1"),
            duration: Duration::from_micros(1500),
            bytes: 12,
            client: IpAddr::from([127, 0, 0, 1]),
            error: None,
        });
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["tenant_id"], "acme");
        assert_eq!(v["path"], "/a\"b\\c\u{1}");
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["error"], serde_json::Value::Null);
        assert_eq!(v["client"], "127.0.0.1");
    }

    #[test]
    fn formats_every_field_exactly() {
        let line = format_entry(&Entry {
            tenant_id: None,
            route: None,
            request_id: "r-1",
            method: "POST",
            host: "ünï.localhost",
            path: "/\u{7}\n\u{1f}é\\",
            status: 404,
            upstream: None,
            duration: Duration::from_micros(2_000_007),
            bytes: 0,
            client: "2001:db8::1".parse().unwrap(),
            error: Some("unknown_host"),
        });
        let (ts, rest) = line
            .strip_prefix("{\"ts\":")
            .and_then(|l| l.split_once(','))
            .expect("ts first");
        let (secs, millis) = ts.split_once('.').expect("ts has a fraction");
        assert!(
            secs.parse::<u64>().unwrap() > 1_600_000_000 && millis.len() == 3,
            "{ts}"
        );
        assert_eq!(
            rest,
            "\"tenant_id\":null,\"route\":null,\"request_id\":\"r-1\",\"method\":\"POST\",\
             \"host\":\"ünï.localhost\",\"path\":\"/\\u0007\\u000a\\u001fé\\\\\",\"status\":404,\
             \"upstream\":null,\"duration_ms\":2000.007,\"bytes\":0,\"client\":\"2001:db8::1\",\
             \"error\":\"unknown_host\"}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["path"], "/\u{7}\n\u{1f}é\\");
        assert_eq!(v["duration_ms"], 2000.007);
    }

    #[test]
    fn thousandths_pad_the_fraction() {
        for (n, want) in [(0, "0.000"), (5, "0.005"), (50, "0.050"), (1234, "1.234")] {
            let mut s = String::new();
            push_thousandths(&mut s, n);
            assert_eq!(s, want);
        }
    }
}
