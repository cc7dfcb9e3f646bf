//! The JSON access log: one line per request on stdout, written by a dedicated thread so the
//! request path never blocks on the terminal or a pipe. If the writer falls behind, lines are
//! dropped and counted (`tenantry_access_log_dropped_total`) rather than slowing traffic.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::MetricsRegistry;

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

/// A cheap handle to the log writer.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<String>,
    metrics: Arc<MetricsRegistry>,
}

impl AccessLog {
    /// Starts the writer thread, writing to stdout.
    pub fn stdout(metrics: Arc<MetricsRegistry>) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(65_536);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx))?;
        Ok(Self { tx, metrics })
    }

    /// Queues one line.
    pub fn write(&self, e: &Entry<'_>) {
        let line = format_entry(e);
        if let Err(TrySendError::Full(_)) = self.tx.try_send(line) {
            self.metrics
                .global
                .access_log_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

fn writer(rx: Receiver<String>) {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        while let Ok(more) = rx.try_recv() {
            let _ = out.write_all(more.as_bytes());
        }
        let _ = out.flush();
    }
}

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_opt(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_json_str(out, s),
        None => out.push_str("null"),
    }
}

/// Formats one JSON line (with the trailing newline).
pub fn format_entry(e: &Entry<'_>) -> String {
    let mut out = String::with_capacity(256);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let _ = write!(
        out,
        "{{\"ts\":{}.{:03},\"tenant_id\":",
        now.as_secs(),
        now.subsec_millis()
    );
    push_opt(&mut out, e.tenant_id);
    out.push_str(",\"route\":");
    push_opt(&mut out, e.route);
    out.push_str(",\"request_id\":");
    push_json_str(&mut out, e.request_id);
    out.push_str(",\"method\":");
    push_json_str(&mut out, e.method);
    out.push_str(",\"host\":");
    push_json_str(&mut out, e.host);
    out.push_str(",\"path\":");
    push_json_str(&mut out, e.path);
    let _ = write!(out, ",\"status\":{},\"upstream\":", e.status);
    push_opt(&mut out, e.upstream);
    let _ = write!(
        out,
        ",\"duration_ms\":{:.3},\"bytes\":{},\"client\":\"{}\",\"error\":",
        e.duration.as_secs_f64() * 1000.0,
        e.bytes,
        e.client
    );
    push_opt(&mut out, e.error);
    out.push_str("}\n");
    out
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
    }
}
