//! LLM routes (`kind: llm`): reading OpenAI-style request bodies, per-tenant model and tool
//! allow-lists, and finding token usage in responses as they stream through.
//!
//! - [`parse_request`] reads a fully buffered request body into an [`LlmRequest`] (model,
//!   offered tools, `stream`, and a prompt token estimate).
//! - [`check_policy`] checks it against a tenant's [`AllowLists`].
//! - [`UsageScanner`] watches response chunks (JSON or `text/event-stream`) with bounded memory
//!   and reports the [`Usage`] at the end: the upstream's `usage.total_tokens` when it sent one,
//!   an estimate otherwise.
//! - [`count_tokens`] counts tokens with tiktoken's `o200k_base` encoding.
//!
//! Nothing here panics on any input: bodies come from the network.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::LazyLock;

use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// Tokens of overhead counted per chat message (role, separators), on top of its text.
const MESSAGE_OVERHEAD_TOKENS: u64 = 4;
/// JSON responses are buffered up to this size; beyond it only a tail is kept.
const JSON_BUFFER_MAX: usize = 4 << 20;
/// Tail of an oversized JSON response kept to look for a trailing `usage` object.
const JSON_TAIL_MAX: usize = 64 << 10;
/// Largest SSE event (its `data` lines together) that is parsed; larger ones are skipped.
const SSE_EVENT_MAX: usize = 1 << 20;
/// Text is tokenized in pieces of at most this many bytes (bounds memory and the tokenizer's
/// work per call; see [`cut_point`]).
const TOKENIZE_PIECE_MAX: usize = 64 << 10;
/// Buffers for the current SSE line/event are shrunk back after an event larger than this.
const SSE_KEEP_CAPACITY: usize = 64 << 10;

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// What the gateway needs from an OpenAI-style request body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LlmRequest {
    /// `model`, if present and a string.
    pub model: Option<String>,
    /// Names of the tools the request offers: `tools[].function.name` (OpenAI chat shape),
    /// `tools[].name` (responses-API shape), legacy `functions[].name`; a tool with neither
    /// name but a `type` other than `function` (a built-in tool such as `web_search`) is
    /// named by its `type`.
    pub tools: Vec<String>,
    /// `stream: true`.
    pub stream: bool,
    /// Estimated prompt tokens: o200k count over the text of `messages[].content` (string, or
    /// array parts with `text`), `prompt` (string or array of strings) and `input` (string or
    /// array), plus 4 tokens of overhead per message. Token-id arrays count one per id.
    /// 0 when there is no text.
    pub prompt_tokens_estimate: u64,
}

/// Why a request body cannot be read as an LLM request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmRequestError {
    /// Not JSON, or not a JSON object. The message names the problem.
    #[error("{0}")]
    NotJson(String),
}

/// Parses a request body (already fully read, size bounded by the caller).
///
/// # Errors
///
/// [`LlmRequestError::NotJson`] when the body is not valid JSON or not a JSON object.
pub fn parse_request(body: &[u8]) -> Result<LlmRequest, LlmRequestError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| LlmRequestError::NotJson(format!("request body is not valid JSON: {e}")))?;
    let Value::Object(obj) = &value else {
        return Err(LlmRequestError::NotJson(
            "request body must be a JSON object".to_owned(),
        ));
    };

    let model = obj.get("model").and_then(Value::as_str).map(str::to_owned);
    let stream = obj.get("stream").and_then(Value::as_bool) == Some(true);

    let mut tools = Vec::new();
    for tool in array(obj.get("tools")) {
        let function_name = tool
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str);
        let name = tool.get("name").and_then(Value::as_str);
        if let Some(n) = function_name {
            tools.push(n.to_owned());
        }
        if let Some(n) = name
            && function_name != Some(n)
        {
            tools.push(n.to_owned());
        }
        if function_name.is_none()
            && name.is_none()
            && let Some(kind) = tool.get("type").and_then(Value::as_str)
            && kind != "function"
        {
            tools.push(kind.to_owned());
        }
    }
    for function in array(obj.get("functions")) {
        if let Some(n) = function.get("name").and_then(Value::as_str) {
            tools.push(n.to_owned());
        }
    }

    let mut estimate = 0u64;
    for message in array(obj.get("messages")) {
        estimate = estimate
            .saturating_add(MESSAGE_OVERHEAD_TOKENS)
            .saturating_add(content_tokens(message.get("content")));
    }
    if let Some(prompt) = obj.get("prompt") {
        estimate = estimate.saturating_add(input_tokens(prompt));
    }
    if let Some(input) = obj.get("input") {
        estimate = estimate.saturating_add(input_tokens(input));
    }

    Ok(LlmRequest {
        model,
        tools,
        stream,
        prompt_tokens_estimate: estimate,
    })
}

/// The elements of `v` if it is an array, nothing otherwise.
fn array(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// Tokens of a message `content`: a string, or an array of parts (strings or objects with
/// a `text` string).
fn content_tokens(content: Option<&Value>) -> u64 {
    match content {
        Some(Value::String(s)) => count_tokens(s),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| match part {
                Value::String(s) => count_tokens(s),
                _ => part
                    .get("text")
                    .and_then(Value::as_str)
                    .map_or(0, count_tokens),
            })
            .fold(0, u64::saturating_add),
        _ => 0,
    }
}

/// Tokens of a `prompt` or `input`: a string, or an array of strings, token ids, token-id
/// arrays, or (responses API) message items with a `content`.
fn input_tokens(input: &Value) -> u64 {
    match input {
        Value::String(s) => count_tokens(s),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => count_tokens(s),
                Value::Number(_) => 1,
                Value::Array(inner) => inner
                    .iter()
                    .map(|x| match x {
                        Value::String(s) => count_tokens(s),
                        Value::Number(_) => 1,
                        _ => 0,
                    })
                    .fold(0, u64::saturating_add),
                Value::Object(_) => {
                    let text = item
                        .get("text")
                        .and_then(Value::as_str)
                        .map_or(0, count_tokens);
                    MESSAGE_OVERHEAD_TOKENS
                        .saturating_add(content_tokens(item.get("content")))
                        .saturating_add(text)
                }
                _ => 0,
            })
            .fold(0, u64::saturating_add),
        _ => 0,
    }
}

// ---------------------------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------------------------

/// A tenant's allow-lists; `None` = anything allowed; `Some(empty)` = nothing allowed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllowLists<'a> {
    /// Models the tenant may use.
    pub models: Option<&'a [Box<str>]>,
    /// Tools the tenant's requests may offer.
    pub tools: Option<&'a [Box<str>]>,
}

/// Checks a request against the allow-lists: the model first, then the tools in order.
/// Comparison is exact (case-sensitive).
///
/// # Errors
///
/// The human-readable reason the gateway sends as `{"error":"policy_denied","reason": ...}`:
/// `model "gpt-4" is not allowed for tenant starter`,
/// `tool "shell" is not allowed for tenant starter`, or
/// `a model is required for tenant starter` (models restricted, request names none).
pub fn check_policy(req: &LlmRequest, allow: &AllowLists<'_>, tenant: &str) -> Result<(), String> {
    if let Some(models) = allow.models {
        let Some(model) = &req.model else {
            return Err(format!("a model is required for tenant {tenant}"));
        };
        if !models.iter().any(|m| **m == **model) {
            return Err(format!(
                "model {model:?} is not allowed for tenant {tenant}"
            ));
        }
    }
    if let Some(allowed) = allow.tools {
        for tool in &req.tools {
            if !allowed.iter().any(|t| **t == **tool) {
                return Err(format!("tool {tool:?} is not allowed for tenant {tenant}"));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// Token usage found in (or estimated for) a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Total tokens (prompt + completion).
    pub total_tokens: u64,
    /// True when the upstream reported no usage and the figure is an estimate (prompt
    /// estimate + o200k count of the streamed/returned text).
    pub estimated: bool,
}

/// Watches response body chunks as they stream through and finds the usage, keeping
/// bounded memory: up to 4 MiB of a JSON body; for SSE, the current event (up to 1 MiB) and
/// up to 64 KiB of text waiting to be tokenized.
///
/// Usage reported by the upstream wins: `usage.total_tokens`, or `response.usage.total_tokens`
/// (responses API `response.completed`); for SSE the last event carrying one. Otherwise
/// [`finish`](Self::finish) estimates: prompt estimate + tokens of the text content
/// (`choices[].delta.content`, `choices[].text`, `choices[].message.content`, tool-call
/// arguments, responses-API `response.output_text.delta`).
///
/// Compressed bodies (`Content-Encoding`) are not decoded: they yield the prompt estimate.
pub struct UsageScanner {
    mode: Mode,
    prompt_tokens_estimate: u64,
}

enum Mode {
    Ignore,
    Json(JsonScan),
    Sse(SseScan),
}

impl std::fmt::Debug for UsageScanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match &self.mode {
            Mode::Ignore => "ignore",
            Mode::Json(_) => "json",
            Mode::Sse(_) => "sse",
        };
        f.debug_struct("UsageScanner")
            .field("mode", &mode)
            .field("prompt_tokens_estimate", &self.prompt_tokens_estimate)
            .finish_non_exhaustive()
    }
}

impl UsageScanner {
    /// `content_type` is the response's Content-Type header value (may be None);
    /// `prompt_tokens_estimate` comes from the request. `text/event-stream` → SSE mode;
    /// `application/json` (or `+json`) → JSON mode; anything else (audio, images, plain
    /// text) → ignore mode: the body is not read, and [`finish`](Self::finish) gives the
    /// prompt's estimate.
    pub fn new(content_type: Option<&str>, prompt_tokens_estimate: u64) -> UsageScanner {
        let essence = content_type
            .and_then(|ct| ct.split(';').next())
            .map(|ct| ct.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let mode = if essence == "text/event-stream" {
            Mode::Sse(SseScan::default())
        } else if essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"))
        {
            Mode::Json(JsonScan::default())
        } else {
            Mode::Ignore
        };
        UsageScanner {
            mode,
            prompt_tokens_estimate,
        }
    }

    /// Feeds the next chunk (chunks may split anywhere: mid-line, mid-UTF-8, mid-JSON).
    pub fn feed(&mut self, chunk: &[u8]) {
        match &mut self.mode {
            Mode::Ignore => {}
            Mode::Json(json) => json.feed(chunk),
            Mode::Sse(sse) => sse.feed(chunk),
        }
    }

    /// Called at end of body. Returns the reported usage if one was seen, otherwise the
    /// estimate (in ignore mode, the prompt's alone); None when nothing was found and the
    /// estimate is 0. A response the gateway cannot read thus still counts what was sent.
    pub fn finish(self) -> Option<Usage> {
        let (reported, text_tokens) = match self.mode {
            Mode::Ignore => (None, 0),
            Mode::Json(json) => json.finish(),
            Mode::Sse(sse) => sse.finish(),
        };
        if let Some(total_tokens) = reported {
            return Some(Usage {
                total_tokens,
                estimated: false,
            });
        }
        let total_tokens = self.prompt_tokens_estimate.saturating_add(text_tokens);
        (total_tokens > 0).then_some(Usage {
            total_tokens,
            estimated: true,
        })
    }
}

/// `usage.total_tokens`, or `response.usage.total_tokens` (responses API).
fn reported_total(v: &Value) -> Option<u64> {
    let total = |holder: Option<&Value>| {
        holder?
            .get("usage")?
            .get("total_tokens")
            .and_then(Value::as_u64)
    };
    total(Some(v)).or_else(|| total(v.get("response")))
}

/// JSON mode: buffer the body (up to [`JSON_BUFFER_MAX`]), parse it at the end.
#[derive(Default)]
struct JsonScan {
    buf: Vec<u8>,
    /// Set once the body outgrew the buffer; from then on only `tail` is kept.
    overflowed: bool,
    tail: Vec<u8>,
}

impl JsonScan {
    fn feed(&mut self, chunk: &[u8]) {
        if !self.overflowed {
            if self.buf.len().saturating_add(chunk.len()) <= JSON_BUFFER_MAX {
                self.buf.extend_from_slice(chunk);
                return;
            }
            self.overflowed = true;
            let mut tail = std::mem::take(&mut self.buf);
            keep_last(&mut tail, JSON_TAIL_MAX);
            self.tail = tail;
            self.tail.shrink_to(2 * JSON_TAIL_MAX);
        }
        if chunk.len() >= JSON_TAIL_MAX {
            self.tail.clear(); // keep the tail contiguous
        }
        self.tail
            .extend_from_slice(last_bytes(chunk, JSON_TAIL_MAX));
        // Let the tail grow to twice its size before moving it: amortized O(1) per byte.
        if self.tail.len() > 2 * JSON_TAIL_MAX {
            keep_last(&mut self.tail, JSON_TAIL_MAX);
        }
    }

    /// (reported total, tokens of the text content).
    fn finish(self) -> (Option<u64>, u64) {
        if self.overflowed {
            return (usage_in_tail(&self.tail), 0);
        }
        let Ok(value) = serde_json::from_slice::<Value>(&self.buf) else {
            return (None, 0);
        };
        if let Some(total) = reported_total(&value) {
            return (Some(total), 0);
        }
        let mut tokens = 0u64;
        for choice in array(value.get("choices")) {
            let message = choice.get("message");
            let texts = [message.and_then(|m| m.get("content")), choice.get("text")];
            for text in texts.into_iter().flatten() {
                tokens = tokens.saturating_add(content_tokens(Some(text)));
            }
            for call in array(message.and_then(|m| m.get("tool_calls"))) {
                let arguments = call
                    .get("function")
                    .and_then(|f| f.get("arguments"))
                    .and_then(Value::as_str);
                tokens = tokens.saturating_add(arguments.map_or(0, count_tokens));
            }
        }
        // Responses API: output[].content[].text.
        for item in array(value.get("output")) {
            tokens = tokens.saturating_add(content_tokens(item.get("content")));
        }
        (None, tokens)
    }
}

/// The last `n` bytes of `bytes` (all of them if shorter).
fn last_bytes(bytes: &[u8], n: usize) -> &[u8] {
    bytes.get(bytes.len().saturating_sub(n)..).unwrap_or(bytes)
}

/// Drops all but the last `n` bytes of `buf`.
fn keep_last(buf: &mut Vec<u8>, n: usize) {
    let excess = buf.len().saturating_sub(n);
    if excess > 0 {
        buf.drain(..excess);
    }
}

/// Best effort for a JSON body too large to buffer (e.g. a batch of embeddings): usage comes
/// last in OpenAI-style bodies, so look for the last `"usage": {...}` object in the tail that
/// parses and has a `total_tokens` (trying a few candidates at most).
fn usage_in_tail(tail: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"usage\"";
    const MAX_CANDIDATES: usize = 8;
    let mut end = tail.len();
    let mut candidates = 0;
    while let Some(pos) = tail
        .get(..end)
        .and_then(|hay| hay.windows(KEY.len()).rposition(|w| w == KEY))
    {
        end = pos;
        candidates += 1;
        if candidates > MAX_CANDIDATES {
            break;
        }
        // `\"usage\"` is text inside a string, not a key.
        if pos > 0 && tail.get(pos - 1) == Some(&b'\\') {
            continue;
        }
        let Some(rest) = tail.get(pos + KEY.len()..) else {
            continue;
        };
        let rest = rest.trim_ascii_start();
        let Some(rest) = rest.strip_prefix(b":") else {
            continue;
        };
        let rest = rest.trim_ascii_start();
        if !rest.starts_with(b"{") {
            continue;
        }
        let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<Value>();
        if let Some(Ok(usage)) = values.next()
            && let Some(total) = usage.get("total_tokens").and_then(Value::as_u64)
        {
            return Some(total);
        }
    }
    None
}

/// SSE mode: line by line, one event at a time.
#[derive(Default)]
struct SseScan {
    /// The current line so far (without its line ending).
    line: Vec<u8>,
    /// The current line has at least one byte (kept or not): it is not a blank line.
    line_started: bool,
    /// The last line ended with `\r`: a `\n` right after it belongs to that line ending.
    after_cr: bool,
    /// The current event's `data` lines, each followed by `\n`.
    data: Vec<u8>,
    /// The current event outgrew [`SSE_EVENT_MAX`]: drop it up to its blank line.
    skip_event: bool,
    /// Total of the last event that reported usage.
    reported: Option<u64>,
    text: TextTokens,
}

impl SseScan {
    fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while !rest.is_empty() {
            if std::mem::take(&mut self.after_cr)
                && let Some(after_lf) = rest.strip_prefix(b"\n")
            {
                rest = after_lf;
                continue;
            }
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    let (line, ending) = rest.split_at(i);
                    self.push_line_bytes(line);
                    self.after_cr = ending.first() == Some(&b'\r');
                    rest = ending.get(1..).unwrap_or_default();
                    self.end_line();
                }
                None => {
                    self.push_line_bytes(rest);
                    break;
                }
            }
        }
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.line_started = true;
        if self.skip_event {
            return;
        }
        let size = self
            .data
            .len()
            .saturating_add(self.line.len())
            .saturating_add(bytes.len());
        if size > SSE_EVENT_MAX {
            self.skip_current_event();
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    fn skip_current_event(&mut self) {
        self.skip_event = true;
        self.line = Vec::new();
        self.data = Vec::new();
    }

    fn end_line(&mut self) {
        if !std::mem::take(&mut self.line_started) {
            self.dispatch();
            return;
        }
        if self.skip_event {
            return;
        }
        let line = std::mem::take(&mut self.line);
        self.field(&line);
        self.line = reuse(line);
    }

    fn field(&mut self, line: &[u8]) {
        if line.starts_with(b":") {
            return; // comment
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let (name, rest) = line.split_at(colon);
                let value = rest.get(1..).unwrap_or_default();
                (name, value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        if name != b"data" {
            return; // event, id, retry, unknown: not needed
        }
        if self.data.len().saturating_add(value.len()) >= SSE_EVENT_MAX {
            self.skip_current_event();
            return;
        }
        self.data.extend_from_slice(value);
        self.data.push(b'\n');
    }

    fn dispatch(&mut self) {
        if std::mem::take(&mut self.skip_event) || self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop(); // the `\n` after the last data line
        self.event(&data);
        self.data = reuse(data);
    }

    fn event(&mut self, data: &[u8]) {
        let data = data.trim_ascii();
        if data == b"[DONE]" || !data.starts_with(b"{") {
            return;
        }
        let Ok(value) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        if let Some(total) = reported_total(&value) {
            self.reported = Some(total);
            self.text = TextTokens::default(); // not needed any more
            return;
        }
        if self.reported.is_some() {
            return;
        }
        for choice in array(value.get("choices")) {
            let delta = choice.get("delta");
            if let Some(s) = delta.and_then(|d| d.get("content")).and_then(Value::as_str) {
                self.text.push(s);
            }
            if let Some(s) = choice.get("text").and_then(Value::as_str) {
                self.text.push(s);
            }
            for call in array(delta.and_then(|d| d.get("tool_calls"))) {
                let arguments = call
                    .get("function")
                    .and_then(|f| f.get("arguments"))
                    .and_then(Value::as_str);
                if let Some(s) = arguments {
                    self.text.push(s);
                }
            }
        }
        // Responses API: `response.output_text.delta`, `response.function_call_arguments.delta`.
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if kind.starts_with("response.")
            && kind.ends_with(".delta")
            && let Some(s) = value.get("delta").and_then(Value::as_str)
        {
            self.text.push(s);
        }
    }

    /// (reported total, tokens of the text content).
    fn finish(mut self) -> (Option<u64>, u64) {
        // A stream may end without the final line ending or blank line: take what is there.
        if self.line_started {
            self.end_line();
        }
        self.dispatch();
        (self.reported, self.text.total())
    }
}

/// An emptied buffer for the next line/event, released if a large event grew it.
fn reuse(mut buf: Vec<u8>) -> Vec<u8> {
    buf.clear();
    buf.shrink_to(SSE_KEEP_CAPACITY);
    buf
}

/// Text collected for an estimate, tokenized in pieces as it grows so that long streams are
/// counted fully with bounded memory. The total equals `count_tokens` of the whole text.
#[derive(Default)]
struct TextTokens {
    pending: String,
    counted: u64,
}

impl TextTokens {
    fn push(&mut self, s: &str) {
        self.pending.push_str(s);
        if self.pending.len() <= TOKENIZE_PIECE_MAX {
            return;
        }
        let mut start = 0;
        while let Some(rest) = self.pending.get(start..)
            && rest.len() > TOKENIZE_PIECE_MAX
        {
            let cut = cut_point(rest, TOKENIZE_PIECE_MAX);
            let piece = rest.get(..cut).unwrap_or(rest);
            self.counted = self.counted.saturating_add(count_piece(piece));
            start += piece.len();
        }
        self.pending.drain(..start.min(self.pending.len()));
        self.pending.shrink_to(2 * TOKENIZE_PIECE_MAX);
    }

    fn total(&self) -> u64 {
        self.counted.saturating_add(count_tokens(&self.pending))
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------

/// The o200k_base encoder, built on first use (tens of milliseconds in release builds, about
/// a second unoptimized). `None` if it cannot be built.
static O200K: LazyLock<Option<CoreBPE>> =
    LazyLock::new(|| catch_unwind(tiktoken_rs::o200k_base).ok()?.ok());

/// Counts tokens of a text with the o200k_base encoding (built once, lazily; if it cannot be
/// built, falls back to ceil(bytes / 4)). Special-token text such as `<|endoftext|>` is
/// counted as ordinary text.
pub fn count_tokens(text: &str) -> u64 {
    let mut total = 0u64;
    let mut rest = text;
    while !rest.is_empty() {
        let cut = cut_point(rest, TOKENIZE_PIECE_MAX);
        let (piece, tail) = rest.split_at_checked(cut).unwrap_or((rest, ""));
        total = total.saturating_add(count_piece(piece));
        rest = tail;
    }
    total
}

/// Tokens of one piece of at most about [`TOKENIZE_PIECE_MAX`] bytes.
///
/// The tokenizer's regex engine fails (and tiktoken-rs panics) on very long runs, e.g. a
/// million spaces; pieces are kept far below that, and a panic is caught all the same.
fn count_piece(piece: &str) -> u64 {
    if piece.is_empty() {
        return 0;
    }
    let by_bytes = (piece.len() as u64).div_ceil(4);
    let Some(bpe) = O200K.as_ref() else {
        return by_bytes;
    };
    catch_unwind(AssertUnwindSafe(|| bpe.encode_ordinary(piece).len()))
        .map_or(by_bytes, |n| n as u64)
}

/// Where to end the next piece of `text` to tokenize: all of it if it fits in `max` bytes;
/// otherwise just before a whitespace run (tokens start with their leading space, so this
/// hardly changes the count) in the last half of the first `max` bytes; otherwise at the char
/// boundary at or below `max`.
fn cut_point(text: &str, max: usize) -> usize {
    if text.len() <= max {
        return text.len();
    }
    let mut end = max;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    if end == 0 {
        // `max` is smaller than the first char: take that char.
        return text.char_indices().nth(1).map_or(text.len(), |(i, _)| i);
    }
    let bytes = text.as_bytes();
    let floor = (max / 2).max(1);
    let mut i = end;
    while i > floor {
        if let (Some(b), Some(prev)) = (bytes.get(i), bytes.get(i - 1))
            && b.is_ascii_whitespace()
            && !prev.is_ascii_whitespace()
        {
            return i;
        }
        i -= 1;
    }
    end
}

#[cfg(test)]
mod tests;
