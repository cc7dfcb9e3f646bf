//! LLM routes (`kind: llm`) against a fake OpenAI upstream: the model and tool policy, body
//! checks, token quotas counted from JSON and SSE responses (reported or estimated), the
//! `on_quota` modes, unbuffered SSE streaming, and the rate-limit headers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use super::*;
use crate::api::{Api, Server};

// ---------------------------------------------------------------------------------------
// A fake OpenAI upstream

/// The streamed completion's text, one SSE event per piece.
const DELTAS: [&str; 3] = ["Hello", " world", "!"];

/// One request the fake upstream received.
#[derive(Debug, Clone)]
struct Seen {
    host: String,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Debug, Default)]
struct FakeState {
    seen: Mutex<Vec<Seen>>,
    /// Releases a gated stream's final events.
    gate: Notify,
    /// A gated stream sent its usage event.
    final_sent: AtomicBool,
}

/// `POST /v1/chat/completions` in the OpenAI shape; anything else answers `{"ok":true}`.
///
/// Driven by request headers (the body's estimate stays untouched):
/// - `x-fake-tokens: N`: the reported `usage.total_tokens` (default 30);
/// - `x-fake-usage: none`: no usage at all (JSON field or SSE event);
/// - `x-fake-status: N`: the status of a JSON completion (default 200);
/// - `x-fake-gate: 1`: a stream waits for [`FakeOpenAi::release`] (at most 5 s) after its
///   text events, before the usage event and `[DONE]`.
///
/// `"stream": true` in the body answers `text/event-stream` (chunked, one write per event,
/// 15 ms apart); otherwise a JSON completion whose text is `hello`.
#[derive(Debug)]
struct FakeOpenAi {
    addr: SocketAddr,
    state: Arc<FakeState>,
    accept: tokio::task::JoinHandle<()>,
}

type FakeBody = UnsyncBoxBody<Bytes, Infallible>;

impl FakeOpenAi {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(FakeState::default());
        let st = Arc::clone(&state);
        // Connections live in the set: aborting the accept task drops (aborts) them too.
        let accept = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                let st = Arc::clone(&st);
                conns.spawn(async move {
                    let svc = service_fn(move |req| answer(Arc::clone(&st), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            state,
            accept,
        }
    }

    /// Every request received so far, in order.
    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// The bodies received so far, in order.
    fn bodies(&self) -> Vec<Bytes> {
        self.seen().into_iter().map(|s| s.body).collect()
    }

    /// How many requests for `host` arrived.
    fn count(&self, host: &str) -> usize {
        self.seen().iter().filter(|s| s.host == host).count()
    }

    /// Lets a gated stream finish.
    fn release(&self) {
        self.state.gate.notify_one();
    }

    /// Whether a gated stream sent its usage event.
    fn final_sent(&self) -> bool {
        self.state.final_sent.load(Ordering::SeqCst)
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn answer(
    st: Arc<FakeState>,
    req: Request<Incoming>,
) -> Result<Response<FakeBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    st.seen.lock().unwrap().push(Seen {
        host: header("host").unwrap_or_default(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    if parts.uri.path() != "/v1/chat/completions" {
        return Ok(json_response(&json!({"ok": true, "bytes": body.len()})));
    }
    let tokens: u64 = header("x-fake-tokens")
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let usage = header("x-fake-usage").as_deref() != Some("none");
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if request["stream"] == true {
        let gated = header("x-fake-gate").is_some();
        let (tx, rx) = mpsc::channel::<Bytes>(8);
        tokio::spawn(stream_events(st, tx, tokens, usage, gated));
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let resp = Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(StreamBody::new(stream).boxed_unsync())
            .unwrap();
        return Ok(resp);
    }
    let mut resp = json_response(&completion(tokens, usage));
    if let Some(status) = header("x-fake-status").and_then(|v| v.parse().ok()) {
        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
    }
    Ok(resp)
}

fn json_response(v: &Value) -> Response<FakeBody> {
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed_unsync())
        .unwrap()
}

/// The JSON completion the fake upstream answers.
fn completion(tokens: u64, usage: bool) -> Value {
    let mut v = json!({
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}],
    });
    if usage {
        v["usage"] = json!({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": tokens});
    }
    v
}

/// The SSE events of a streamed completion, each `data: …\n\n`.
fn sse_events(tokens: u64, usage: bool) -> Vec<String> {
    let mut v: Vec<String> = DELTAS
        .iter()
        .map(|d| {
            let e = json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": d}}]});
            format!("data: {e}\n\n")
        })
        .collect();
    if usage {
        let e = json!({"object": "chat.completion.chunk", "choices": [],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": tokens}});
        v.push(format!("data: {e}\n\n"));
    }
    v.push("data: [DONE]\n\n".to_owned());
    v
}

async fn stream_events(
    st: Arc<FakeState>,
    tx: mpsc::Sender<Bytes>,
    tokens: u64,
    usage: bool,
    gated: bool,
) {
    let events = sse_events(tokens, usage);
    for (i, e) in events.into_iter().enumerate() {
        if i == DELTAS.len() {
            if gated {
                let _ = tokio::time::timeout(Duration::from_secs(5), st.gate.notified()).await;
                st.final_sent.store(true, Ordering::SeqCst);
            }
        } else if i > 0 {
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        if tx.send(Bytes::from(e)).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

/// One tenant (default plan `free`) with one `kind: llm` route on `host` to `up`; `extra` is
/// inserted verbatim among the tenant's keys (e.g. a policy).
fn llm_tenant(id: &str, host: &str, up: &FakeOpenAi, extra: &str) -> String {
    format!(
        "  - id: {id}\n{extra}    routes:\n      - {{ id: ai, host: {host}, kind: llm, backends: [ {{ address: {} }} ] }}\n",
        up.addr
    )
}

async fn start(yaml: &str) -> Server {
    let t = Tenantry::start(bin(), yaml).await;
    let admin = t.admin.expect("admin listener");
    Server { t, admin }
}

/// A prompt whose estimate is known: 4 tokens of message overhead + "Say hello" (2 tokens).
fn chat_body(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "Say hello"}]})
}

/// `POST path` through the proxy on a fresh connection.
async fn post(
    t: &Tenantry,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    HttpClient::new()
        .request("POST", t.http, host, path, headers, body.into())
        .await
        .unwrap_or_else(|e| panic!("POST {host}{path} failed: {e}"))
}

/// A JSON chat completion request through the proxy.
async fn chat(t: &Tenantry, host: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    post(t, host, "/v1/chat/completions", &h, body.to_string()).await
}

/// Platform admin: `PUT /api/tenants/{tenant}/limits`.
async fn set_limits(admin: &Api, tenant: &str, limits: Value) {
    let r = admin
        .put(&format!("/api/tenants/{tenant}/limits"), limits)
        .await;
    assert_eq!(r.0, 200, "set limits of {tenant}: {}", r.1);
}

/// The tenant's `quota.*` audit entries, oldest first.
async fn quota_audit(admin: &Api, tenant: &str) -> Vec<Value> {
    let all = admin
        .must_get(&format!("/api/tenants/{tenant}/audit"))
        .await;
    let mut v: Vec<Value> = all
        .as_array()
        .expect("audit is a list")
        .iter()
        .filter(|e| {
            e["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("quota."))
        })
        .cloned()
        .collect();
    v.reverse();
    v
}

fn actions(entries: &[Value]) -> Vec<&str> {
    entries
        .iter()
        .map(|e| e["action"].as_str().unwrap_or_default())
        .collect()
}

/// The actions, sorted (events of different requests may be counted in either order).
fn sorted_actions(entries: &[Value]) -> Vec<&str> {
    let mut v = actions(entries);
    v.sort_unstable();
    v
}

/// Waits (bounded) until the tenant's quota audit entries are exactly `want` (as a set),
/// and returns them oldest first.
async fn wait_quota_audit(admin: &Api, tenant: &str, want: &[&str]) -> Vec<Value> {
    let mut want_sorted = want.to_vec();
    want_sorted.sort_unstable();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let entries = quota_audit(admin, tenant).await;
        let got = sorted_actions(&entries);
        if got == want_sorted {
            return entries;
        }
        assert!(
            got.len() <= want.len() && Instant::now() < deadline,
            "quota audit of {tenant}: want {want:?}, got {entries:#?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The single entry with `action`.
#[track_caller]
fn entry<'a>(entries: &'a [Value], action: &str) -> &'a Value {
    let found: Vec<&Value> = entries.iter().filter(|e| e["action"] == action).collect();
    assert_eq!(found.len(), 1, "{action} in {entries:#?}");
    found[0]
}

/// Asserts an audit entry of a tokens-per-minute threshold.
#[track_caller]
fn assert_quota_entry(e: &Value, tenant: &str, percent: u64, used: u64, limit: u64) {
    assert_eq!(e["actor"], "gateway", "{e}");
    assert_eq!(e["tenant_id"], tenant, "{e}");
    assert_eq!(e["target"], "tokens_per_minute", "{e}");
    let a = &e["after"];
    assert_eq!(a["quota"], "tokens_per_minute", "{e}");
    assert_eq!(a["percent"], percent, "{e}");
    assert_eq!(a["used"], used, "{e}");
    assert_eq!(a["limit"], limit, "{e}");
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Asserts a tokens-per-minute quota refusal body; `resets_at` is the end of the current
/// minute.
#[track_caller]
fn assert_quota_body(r: &Reply) {
    let j = r.json();
    assert_eq!(j["error"], "quota_exceeded", "{j}");
    assert_eq!(j["quota"], "tokens_per_minute", "{j}");
    let resets = j["resets_at"]
        .as_u64()
        .unwrap_or_else(|| panic!("resets_at in {j}"));
    let now = unix_secs();
    assert!(
        resets > now && resets <= now + 60,
        "resets_at {resets}, now {now}"
    );
    assert_eq!(resets % 60, 0, "a minute window ends on a minute: {resets}");
    assert_eq!(r.headers["x-request-id"].to_str().unwrap(), j["request_id"]);
}

/// The value of the tokens-per-minute quota-events counter for `percent` on the admin
/// `/metrics`.
fn quota_metric(metrics: &str, percent: u32) -> u64 {
    quota_metric_of(metrics, "tokens_per_minute", percent)
}

/// The value of the quota-events counter of `quota` for `percent`.
fn quota_metric_of(metrics: &str, quota: &str, percent: u32) -> u64 {
    let prefix = format!("tenantry_quota_events_total{{quota=\"{quota}\",percent=\"{percent}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// `tenantry_admission_refused_total` of the tenant's route `ai` for `reason` (0 if absent).
fn refused_metric(metrics: &str, tenant: &str, reason: &str) -> u64 {
    let prefix = format!(
        "tenantry_admission_refused_total{{tenant=\"{tenant}\",route=\"ai\",reason=\"{reason}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Decodes a chunked HTTP/1.1 body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_line = std::str::from_utf8(&raw[..eol]).unwrap();
        let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16).unwrap();
        raw = &raw[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        assert_eq!(&raw[size..size + 2], b"\r\n", "chunk not followed by CRLF");
        raw = &raw[size + 2..];
    }
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_and_body_checks() {
    let up = FakeOpenAi::start().await;
    let yaml = format!(
        "{}limits: {{ max_llm_body_bytes: 2048 }}\n",
        config(&format!(
            "  - id: starter\n    policy: {{ allowed_models: [gpt-4o-mini], allowed_tools: [search] }}\n    routes:\n      - {{ id: ai, host: starter.localhost, path_prefix: /v1, kind: llm, backends: [ {{ address: {a} }} ] }}\n      - {{ id: web, host: starter.localhost, backends: [ {{ address: {a} }} ] }}\n{}",
            llm_tenant("open", "open.localhost", &up, ""),
            a = up.addr
        ))
    );
    let s = start(&yaml).await;
    let t = &s.t;
    let host = "starter.localhost";
    let json_ct = [("content-type", "application/json")];
    let path = "/v1/chat/completions";

    // Allowed model and tool: forwarded byte for byte (not re-serialized), uncompressed.
    let allowed = Bytes::from_static(
        b"{ \"model\" : \"gpt-4o-mini\",\n  \"messages\": [{\"role\": \"user\", \"content\": \"Say hello\"}],\n  \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"search\", \"parameters\": {}}}] }",
    );
    let r = post(
        t,
        host,
        path,
        &[
            ("content-type", "application/json"),
            ("accept-encoding", "gzip"),
        ],
        allowed.clone(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["choices"][0]["message"]["content"], "hello");
    let first = &up.seen()[0];
    assert_eq!(first.path, path);
    assert_eq!(first.body, allowed);
    assert_eq!(
        first.headers["content-length"],
        allowed.len().to_string().as_str()
    );
    assert!(
        !first.headers.contains_key("accept-encoding"),
        "Accept-Encoding reached the upstream: {:?}",
        first.headers
    );

    // Disallowed model, disallowed tool, no model: 403 with the exact reason.
    let denied = [
        (
            json!({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}),
            "model \"gpt-4\" is not allowed for tenant starter",
        ),
        (
            json!({"model": "gpt-4o-mini", "messages": [],
                   "tools": [{"type": "function", "function": {"name": "search"}},
                             {"type": "function", "function": {"name": "shell"}}]}),
            "tool \"shell\" is not allowed for tenant starter",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            "a model is required for tenant starter",
        ),
    ];
    for (body, reason) in &denied {
        let r = chat(t, host, body, &[]).await;
        assert_eq!(r.status, 403, "{body}");
        assert_eq!(r.headers["content-type"], "application/json");
        let j = r.json();
        let rid = r.headers["x-request-id"].to_str().unwrap();
        assert_eq!(
            j,
            json!({"error": "policy_denied", "reason": reason, "request_id": rid}),
            "{body}"
        );
    }

    // Bodies that are not a JSON object: 400 invalid_body.
    let r = post(t, host, path, &json_ct, "model=gpt-4o-mini").await;
    assert_eq!(r.status, 400);
    let j = r.json();
    assert_eq!(j["error"], "invalid_body", "{j}");
    let reason = j["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("request body is not valid JSON: ") && reason.len() > 33,
        "{reason}"
    );
    let r = post(t, host, path, &json_ct, "[{\"model\": \"gpt-4o-mini\"}]").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_body");
    assert_eq!(r.json()["reason"], "request body must be a JSON object");
    let r = post(t, host, path, &json_ct, Bytes::new()).await;
    assert_eq!(r.status, 400, "an empty body is not JSON");
    assert_eq!(r.json()["error"], "invalid_body");

    // Exactly max_llm_body_bytes passes; one byte more is 413 and the connection closes.
    let sized = |n: usize| {
        let head = "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"";
        let tail = "\"}]}";
        let pad = "a "
            .repeat(n)
            .chars()
            .take(n - head.len() - tail.len())
            .collect::<String>();
        let s = format!("{head}{pad}{tail}");
        assert_eq!(s.len(), n);
        Bytes::from(s)
    };
    let at_max = sized(2048);
    let r = post(t, host, path, &json_ct, at_max.clone()).await;
    assert_eq!(
        r.status, 200,
        "a body of exactly max_llm_body_bytes: {:?}",
        r.body
    );
    let r = post(t, host, path, &json_ct, sized(2049)).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "payload_too_large");
    assert_eq!(r.headers["connection"], "close");
    // Without a declared length (chunked), the limit applies while reading.
    let chunk = vec![b' '; 3000];
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        chunk.len()
    )
    .into_bytes();
    raw.extend_from_slice(&chunk);
    raw.extend_from_slice(b"\r\n0\r\n\r\n");
    let out = raw_request(t.http, &raw, Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
    assert!(out.contains("\"error\":\"payload_too_large\""), "{out}");

    // A tenant without a policy accepts any model and tool.
    let open = json!({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}],
                      "tools": [{"type": "function", "function": {"name": "shell"}}]});
    let r = chat(t, "open.localhost", &open, &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // The tenant's plain http route passes any body through untouched, whatever its size.
    let text = Bytes::from_static(b"not json at all {");
    let r = post(
        t,
        host,
        "/upload",
        &[("content-type", "text/plain")],
        text.clone(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["bytes"], text.len());
    let big = Bytes::from(vec![b'z'; 10_000]);
    let r = post(t, host, "/upload", &[], big.clone()).await;
    assert_eq!(r.status, 200);

    // The upstream saw exactly the allowed requests, in order; nothing refused reached it.
    assert_eq!(
        up.bodies(),
        vec![allowed, at_max, Bytes::from(open.to_string()), text, big]
    );
    let paths: Vec<String> = up.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, [path, path, path, "/upload", "/upload"]);
    let m = t.metrics().await;
    assert_eq!(refused_metric(&m, "starter", "policy"), 3, "{m}");
    assert_eq!(refused_metric(&m, "open", "policy"), 0, "{m}");

    // A request of a method without a body (`GET /v1/models`, `DELETE /v1/files/…`) names no
    // model or tool: forwarded despite the model allow-list. A GET that sends a body is read
    // as any other.
    for (method, path) in [("GET", "/v1/models"), ("DELETE", "/v1/files/file-1")] {
        let before = up.seen().len();
        let r = HttpClient::new()
            .request(method, t.http, host, path, &[], Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("{method} {path} failed: {e}"));
        assert_eq!(r.status, 200, "{method} {path}: {:?}", r.body);
        assert_eq!(r.json()["ok"], true);
        let seen = up.seen();
        assert_eq!(seen.len(), before + 1);
        assert_eq!(seen[before].path, path);
    }
    let r = HttpClient::new()
        .request(
            "GET",
            t.http,
            host,
            "/v1/models",
            &json_ct,
            "{\"model\": \"gpt-4\"}".into(),
        )
        .await
        .expect("GET with a body");
    assert_eq!(r.status, 403, "a body is checked whatever the method");
    assert_eq!(r.json()["error"], "policy_denied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_usage_fills_the_token_quota_then_blocks() {
    let up = FakeOpenAi::start().await;
    let s = start(&config(&llm_tenant("acme", "acme.localhost", &up, ""))).await;
    let admin = s.admin().await;
    set_limits(
        &admin,
        "acme",
        json!({"tokens_per_minute": 100, "on_quota": "block"}),
    )
    .await;
    let body = chat_body("gpt-4o-mini", false);
    avoid_minute_boundary().await;

    // Only 2xx responses count: an upstream 429 reporting 1000 tokens passes through
    // uncounted (otherwise the thresholds below would be crossed at 1000).
    let r = chat(
        &s.t,
        "acme.localhost",
        &body,
        &[("x-fake-tokens", "1000"), ("x-fake-status", "429")],
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["usage"]["total_tokens"], 1000);

    // 4 × 30 reported tokens: 90 crosses 80%, 120 crosses 100%; each of these is served
    // (the quota is checked before forwarding, against what was counted before).
    for i in 0..4 {
        let r = chat(&s.t, "acme.localhost", &body, &[("x-fake-tokens", "30")]).await;
        assert_eq!(r.status, 200, "request {i}: {:?}", r.body);
        assert_eq!(r.json()["usage"]["total_tokens"], 30);
    }
    // Counting is asynchronous: wait for both thresholds to be recorded.
    let audit = wait_quota_audit(&admin, "acme", &["quota.warning", "quota.exceeded"]).await;
    assert_quota_entry(entry(&audit, "quota.warning"), "acme", 80, 90, 100);
    assert_quota_entry(entry(&audit, "quota.exceeded"), "acme", 100, 120, 100);

    let r = chat(&s.t, "acme.localhost", &body, &[("x-fake-tokens", "30")]).await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_quota_body(&r);
    assert!(
        !r.headers.contains_key("retry-after"),
        "block sets no Retry-After"
    );
    assert_eq!(
        up.count("acme.localhost"),
        5,
        "the refused request reached the upstream"
    );

    // Still exactly one entry per threshold, and one event per threshold in the metrics.
    let audit = quota_audit(&admin, "acme").await;
    assert_eq!(sorted_actions(&audit), ["quota.exceeded", "quota.warning"]);
    let m = s.t.metrics().await;
    assert_eq!(quota_metric(&m, 80), 1, "{m}");
    assert_eq!(quota_metric(&m, 100), 1, "{m}");
    assert_eq!(refused_metric(&m, "acme", "quota"), 1, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_usage_and_estimates_count_against_the_quota() {
    let up = FakeOpenAi::start().await;
    let yaml = config(&format!(
        "{}{}{}",
        llm_tenant("acme", "acme.localhost", &up, ""),
        llm_tenant("sse-est", "sse-est.localhost", &up, ""),
        llm_tenant("json-est", "json-est.localhost", &up, ""),
    ));
    let s = start(&yaml).await;
    let admin = s.admin().await;
    set_limits(
        &admin,
        "acme",
        json!({"tokens_per_minute": 100, "on_quota": "block"}),
    )
    .await;
    for t in ["sse-est", "json-est"] {
        set_limits(
            &admin,
            t,
            json!({"tokens_per_minute": 1, "on_quota": "block"}),
        )
        .await;
    }
    let streamed = chat_body("gpt-4o-mini", true);
    avoid_minute_boundary().await;

    // Usage reported in the last SSE event; the stream reaches the client unchanged.
    let want: String = sse_events(30, true).concat();
    for i in 0..4 {
        let r = chat(
            &s.t,
            "acme.localhost",
            &streamed,
            &[("x-fake-tokens", "30")],
        )
        .await;
        assert_eq!(r.status, 200, "stream {i}");
        assert_eq!(r.headers["content-type"], "text/event-stream");
        assert_eq!(std::str::from_utf8(&r.body).unwrap(), want, "stream {i}");
    }
    let audit = wait_quota_audit(&admin, "acme", &["quota.warning", "quota.exceeded"]).await;
    assert_quota_entry(entry(&audit, "quota.warning"), "acme", 80, 90, 100);
    assert_quota_entry(entry(&audit, "quota.exceeded"), "acme", 100, 120, 100);
    let r = chat(
        &s.t,
        "acme.localhost",
        &streamed,
        &[("x-fake-tokens", "30")],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_quota_body(&r);
    assert_eq!(up.count("acme.localhost"), 4);

    // A stream without a usage event is counted by estimate: the prompt (4 tokens of message
    // overhead + "Say hello", 2) and the streamed text ("Hello world!", 3), o200k_base.
    let r = chat(
        &s.t,
        "sse-est.localhost",
        &streamed,
        &[("x-fake-usage", "none")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        std::str::from_utf8(&r.body).unwrap(),
        sse_events(0, false).concat()
    );
    let audit = wait_quota_audit(&admin, "sse-est", &["quota.warning", "quota.exceeded"]).await;
    assert_quota_entry(entry(&audit, "quota.warning"), "sse-est", 80, 9, 1);
    assert_quota_entry(entry(&audit, "quota.exceeded"), "sse-est", 100, 9, 1);
    let r = chat(
        &s.t,
        "sse-est.localhost",
        &streamed,
        &[("x-fake-usage", "none")],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_quota_body(&r);
    assert_eq!(up.count("sse-est.localhost"), 1);

    // Likewise a JSON completion without usage: 6 for the prompt + "hello", 1.
    let plain = chat_body("gpt-4o-mini", false);
    let r = chat(
        &s.t,
        "json-est.localhost",
        &plain,
        &[("x-fake-usage", "none")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["usage"], Value::Null);
    let audit = wait_quota_audit(&admin, "json-est", &["quota.warning", "quota.exceeded"]).await;
    assert_quota_entry(entry(&audit, "quota.exceeded"), "json-est", 100, 7, 1);
    let r = chat(&s.t, "json-est.localhost", &plain, &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(up.count("json-est.localhost"), 1);

    let m = s.t.metrics().await;
    assert_eq!(quota_metric(&m, 80), 3, "{m}");
    assert_eq!(quota_metric(&m, 100), 3, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_quota_throttle_log_and_notify() {
    let up = FakeOpenAi::start().await;
    let yaml = config(&format!(
        "{}{}{}",
        llm_tenant("thr", "thr.localhost", &up, ""),
        llm_tenant("lg", "lg.localhost", &up, ""),
        llm_tenant("ntf", "ntf.localhost", &up, ""),
    ));
    let s = start(&yaml).await;
    let admin = s.admin().await;
    for (t, mode) in [("thr", "throttle"), ("lg", "log"), ("ntf", "notify")] {
        set_limits(
            &admin,
            t,
            json!({"tokens_per_minute": 50, "on_quota": mode}),
        )
        .await;
    }
    let body = chat_body("gpt-4o-mini", false);
    avoid_minute_boundary().await;

    // One response of 60 tokens spends each tenant's 50 (both thresholds at once).
    for t in ["thr", "lg", "ntf"] {
        let r = chat(
            &s.t,
            &format!("{t}.localhost"),
            &body,
            &[("x-fake-tokens", "60")],
        )
        .await;
        assert_eq!(r.status, 200, "{t}");
    }
    let thr = wait_quota_audit(&admin, "thr", &["quota.warning", "quota.exceeded"]).await;
    let lg = wait_quota_audit(&admin, "lg", &["quota.warning", "quota.exceeded"]).await;
    let ntf = wait_quota_audit(&admin, "ntf", &["quota.warning", "quota.upgrade_suggested"]).await;
    assert_quota_entry(entry(&thr, "quota.exceeded"), "thr", 100, 60, 50);
    assert_quota_entry(entry(&lg, "quota.warning"), "lg", 80, 60, 50);
    assert_quota_entry(entry(&lg, "quota.exceeded"), "lg", 100, 60, 50);
    let up_sugg = entry(&ntf, "quota.upgrade_suggested");
    assert_quota_entry(up_sugg, "ntf", 100, 60, 50);
    assert_eq!(up_sugg["after"]["upgrade_suggested"], true, "{up_sugg}");
    assert_eq!(up_sugg["after"]["on_quota"], "notify", "{up_sugg}");
    assert_eq!(
        entry(&ntf, "quota.warning")["after"]["upgrade_suggested"],
        false
    );

    // throttle: 429 with Retry-After and the quota body; nothing forwarded.
    let r = chat(&s.t, "thr.localhost", &body, &[]).await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    assert_quota_body(&r);
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(up.count("thr.localhost"), 1);

    // log and notify: still served over the quota.
    for t in ["lg", "ntf"] {
        let r = chat(&s.t, &format!("{t}.localhost"), &body, &[]).await;
        assert_eq!(r.status, 200, "{t}: {:?}", r.body);
        assert_eq!(r.json()["choices"][0]["message"]["content"], "hello");
        assert_eq!(up.count(&format!("{t}.localhost")), 2, "{t}");
    }
    // Thresholds already crossed in this window are not reported again.
    assert_eq!(actions(&quota_audit(&admin, "lg").await).len(), 2);
    assert_eq!(actions(&quota_audit(&admin, "ntf").await).len(), 2);
    // Each quota check over the limit counts, served (log, notify) or not (throttle).
    let m = s.t.metrics().await;
    for t in ["thr", "lg", "ntf"] {
        assert_eq!(refused_metric(&m, t, "quota"), 1, "{t}: {m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_headers_on_llm_routes() {
    let up = FakeOpenAi::start().await;
    let yaml = config(&llm_tenant(
        "acme",
        "acme.localhost",
        &up,
        "    policy: { allowed_models: [gpt-4o-mini] }\n",
    ));
    let s = start(&yaml).await;

    // The free plan: 600 requests per minute, bursts of 100. First request of the bucket.
    let r = chat(
        &s.t,
        "acme.localhost",
        &chat_body("gpt-4o-mini", false),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["ratelimit-limit"], "600");
    assert_eq!(r.headers["ratelimit-policy"], "600;w=60;burst=100");
    assert_eq!(r.headers["ratelimit-remaining"], "99");
    let reset: u64 = r.headers["ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(reset <= 60, "ratelimit-reset {reset}");
    assert!(!r.headers.contains_key("retry-after"));

    // Streamed responses and the gateway's own refusals carry them too.
    let r = chat(&s.t, "acme.localhost", &chat_body("gpt-4o-mini", true), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    for h in [
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "ratelimit-policy",
    ] {
        assert!(
            r.headers.contains_key(h),
            "{h} missing on a stream: {:?}",
            r.headers
        );
    }
    let r = chat(&s.t, "acme.localhost", &chat_body("gpt-4", false), &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "policy_denied");
    assert_eq!(r.headers["ratelimit-limit"], "600");
    assert_eq!(r.headers["ratelimit-policy"], "600;w=60;burst=100");
    let remaining: u64 = r.headers["ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining < 100, "ratelimit-remaining {remaining}");
    let r = post(
        &s.t,
        "acme.localhost",
        "/v1/chat/completions",
        &[],
        "not json",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_body");
    assert_eq!(r.headers["ratelimit-limit"], "600");
    assert_eq!(r.headers["ratelimit-policy"], "600;w=60;burst=100");
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_is_streamed_not_buffered() {
    let up = FakeOpenAi::start().await;
    let s = start(&config(&llm_tenant("acme", "acme.localhost", &up, ""))).await;
    let body = chat_body("gpt-4o-mini", true).to_string();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: acme.localhost\r\nContent-Type: application/json\r\nx-fake-gate: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut c = TcpStream::connect(s.t.http).await.unwrap();
    c.write_all(req.as_bytes()).await.unwrap();

    // The first event arrives while the upstream still holds back the end of the stream.
    let mut got = Vec::new();
    let mut buf = [0_u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = b"\"content\":\"Hello\"";
    while !got.windows(first.len()).any(|w| w == first) {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, c.read(&mut buf))
            .await
            .expect("no first event in time")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        !up.final_sent(),
        "the first event came only after the upstream's last one: buffered"
    );
    up.release();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got))
        .await
        .expect("stream did not end")
        .unwrap();
    assert!(up.final_sent());

    let text = String::from_utf8_lossy(&got).into_owned();
    let split = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = text[..split].to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    assert!(
        head.contains("\r\ncontent-type: text/event-stream"),
        "{head}"
    );
    assert!(head.contains("\r\ntransfer-encoding: chunked"), "{head}");
    let events = dechunk(&got[split + 4..]);
    assert_eq!(
        String::from_utf8(events).unwrap(),
        sse_events(30, true).concat()
    );
}

/// The plan's requests per minute is a quota too: 80% and 100% of a minute's requests are
/// reported once per minute (audit entries, metrics) at the next count flush (every second),
/// while the limit itself keeps refusing with 429 (refused requests are not counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plans_request_rate_reports_80_and_100_percent_once_per_minute() {
    let up = FakeOpenAi::start().await;
    let s = start(&config(&llm_tenant("acme", "acme.localhost", &up, ""))).await;
    let admin = s.admin().await;
    set_limits(
        &admin,
        "acme",
        json!({"requests_per_minute": 10, "burst": 10, "on_quota": "notify"}),
    )
    .await;
    let body = chat_body("gpt-4o-mini", false);
    avoid_minute_boundary().await;
    // 7 of 10: below 80%, nothing reported after a flush.
    for i in 0..7 {
        let r = chat(&s.t, "acme.localhost", &body, &[]).await;
        assert_eq!(r.status, 200, "request {i}: {:?}", r.body);
    }
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(quota_audit(&admin, "acme").await, Vec::<Value>::new());
    // The 8th is 80%.
    let r = chat(&s.t, "acme.localhost", &body, &[]).await;
    assert_eq!(r.status, 200, "request 7: {:?}", r.body);
    let audit = wait_quota_audit(&admin, "acme", &["quota.warning"]).await;
    assert_eq!(
        entry(&audit, "quota.warning")["after"]["used"],
        8,
        "{audit:?}"
    );
    // The 9th and 10th reach 100%; the 11th and 12th are refused.
    for i in 8..12 {
        let r = chat(&s.t, "acme.localhost", &body, &[]).await;
        let want = if i < 10 { 200 } else { 429 };
        assert_eq!(r.status, want, "request {i}: {:?}", r.body);
        if want == 429 {
            assert_eq!(r.json()["error"], "rate_limited");
            assert!(r.headers.contains_key("retry-after"));
        }
    }
    let audit = wait_quota_audit(
        &admin,
        "acme",
        &["quota.warning", "quota.upgrade_suggested"],
    )
    .await;
    for (action, percent, used) in [
        ("quota.warning", 80, 8),
        ("quota.upgrade_suggested", 100, 10),
    ] {
        let e = entry(&audit, action);
        assert_eq!(e["target"], "requests_per_minute", "{e}");
        assert_eq!(e["after"]["percent"], percent, "{e}");
        assert_eq!(e["after"]["used"], used, "{e}");
        assert_eq!(e["after"]["limit"], 10, "{e}");
        assert_eq!(e["after"]["on_quota"], "notify", "{e}");
    }
    let m = s.t.metrics().await;
    assert_eq!(quota_metric_of(&m, "requests_per_minute", 80), 1, "{m}");
    assert_eq!(quota_metric_of(&m, "requests_per_minute", 100), 1, "{m}");
    assert_eq!(up.count("acme.localhost"), 10);
}

/// Two nodes sharing PostgreSQL and Redis hold one token budget: tokens counted on either
/// node spend it for both, and each threshold is reported once for the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_the_token_quota_through_redis() {
    if !shared_redis_or_skip() || !crate::api::require_postgres() {
        return;
    }
    let pg = crate::api::PgDatabase::create();
    let up = FakeOpenAi::start().await;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let tenant = format!("tq{}x{}", std::process::id(), nanos % 1_000_000_000);
    let host = format!("{tenant}.localhost");
    let yaml = config(&llm_tenant(&tenant, &host, &up, "    plan: pro\n"));
    let node = || async {
        let t = Tenantry::start_in(
            bin(),
            &yaml,
            Arc::new(TempDir::new()),
            &["--store", &pg.url, "--redis", SHARED_REDIS_URL],
        )
        .await;
        let admin = t.admin.expect("admin listener");
        Server { t, admin }
    };
    let a = node().await;
    let b = node().await;
    let admin_a = a.admin().await;
    let admin_b = b.admin().await;
    set_limits(
        &admin_a,
        &tenant,
        json!({"tokens_per_minute": 100, "on_quota": "block"}),
    )
    .await;
    let usage = |api: &Api| {
        let (api, path) = (api.clone(), format!("/api/tenants/{tenant}/usage"));
        async move {
            let u = api.must_get(&path).await;
            (
                u["quotas"][0]["used"].as_u64(),
                u["quotas"][0]["limit"].as_u64(),
            )
        }
    };
    let started = Instant::now();
    while usage(&admin_b).await.1 != Some(100) {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "limits never reached B"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    avoid_minute_boundary().await;
    let body = chat_body("gpt-4o-mini", false);
    // 50 on A, then 50 on B: 100 in the shared counter.
    for s in [&a, &b] {
        let r = chat(&s.t, &host, &body, &[("x-fake-tokens", "50")]).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let started = Instant::now();
    while usage(&admin_a).await.0 != Some(100) {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "A reads {:?} tokens used",
            usage(&admin_a).await.0
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Spent for both nodes.
    for s in [&a, &b] {
        let r = chat(&s.t, &host, &body, &[("x-fake-tokens", "50")]).await;
        assert_eq!(r.status, 403, "{:?}", r.body);
        assert_quota_body(&r);
    }
    assert_eq!(up.count(&host), 2);
    // B's 50 crossed both 80% and 100% (50 → 100): reported once, by B.
    let audit = wait_quota_audit(&admin_a, &tenant, &["quota.warning", "quota.exceeded"]).await;
    assert_quota_entry(entry(&audit, "quota.warning"), &tenant, 80, 100, 100);
    assert_quota_entry(entry(&audit, "quota.exceeded"), &tenant, 100, 100, 100);
    let (ma, mb) = (a.t.metrics().await, b.t.metrics().await);
    assert_eq!(
        quota_metric(&ma, 100) + quota_metric(&mb, 100),
        1,
        "{ma}\n{mb}"
    );
}

/// One response that crosses 80% and 100% at once records the warning before the
/// exceeded entry, as they happened (one writer records the events in order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_crossed_at_once_are_recorded_in_order() {
    let up = FakeOpenAi::start().await;
    let s = start(&config(&llm_tenant("acme", "acme.localhost", &up, ""))).await;
    let admin = s.admin().await;
    set_limits(
        &admin,
        "acme",
        json!({"tokens_per_minute": 100, "on_quota": "block"}),
    )
    .await;
    avoid_minute_boundary().await;
    let body = chat_body("gpt-4o-mini", false);
    let r = chat(&s.t, "acme.localhost", &body, &[("x-fake-tokens", "150")]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let audit = wait_quota_audit(&admin, "acme", &["quota.warning", "quota.exceeded"]).await;
    assert_eq!(actions(&audit), ["quota.warning", "quota.exceeded"]);
}
