//! Unit tests of the LLM request parser, policy check and usage scanner.
use super::*;

/// xorshift64: deterministic chunk sizes and fuzz bytes without extra dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn boxed(items: &[&str]) -> Vec<Box<str>> {
    items.iter().map(|s| Box::from(*s)).collect()
}

/// Feeds `body` in chunks of `size` bytes.
fn scan_fixed(content_type: &str, prompt: u64, body: &[u8], size: usize) -> Option<Usage> {
    let mut scanner = UsageScanner::new(Some(content_type), prompt);
    for chunk in body.chunks(size) {
        scanner.feed(chunk);
    }
    scanner.finish()
}

/// Feeds `body` in random-sized chunks (1..=max bytes, including empty chunks now and then).
fn scan_random(
    content_type: &str,
    prompt: u64,
    body: &[u8],
    seed: u64,
    max: usize,
) -> Option<Usage> {
    let mut rng = Rng(seed | 1); // xorshift stays at 0 forever
    let mut scanner = UsageScanner::new(Some(content_type), prompt);
    let mut rest = body;
    while !rest.is_empty() {
        let n = rng.below(max + 1).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        scanner.feed(chunk);
        rest = tail;
    }
    scanner.finish()
}

/// Every way of feeding `body` the tests use must give the same answer.
fn scan_all_ways(content_type: &str, prompt: u64, body: &[u8]) -> Option<Usage> {
    let whole = scan_fixed(content_type, prompt, body, body.len().max(1));
    for size in [1, 2, 3, 7, 64, 1000] {
        assert_eq!(
            scan_fixed(content_type, prompt, body, size),
            whole,
            "chunks of {size}"
        );
    }
    for seed in [1, 42, 0xdead_beef, 7777] {
        assert_eq!(
            scan_random(content_type, prompt, body, seed, 40),
            whole,
            "seed {seed}"
        );
    }
    whole
}

fn sse_stream(deltas: &[&str], usage: bool, eol: &str) -> String {
    let mut s = String::new();
    s.push_str(&format!(": keep-alive{eol}{eol}"));
    s.push_str(&format!(
        "data: {{\"id\":\"c1\",\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}}}}],\"usage\":null}}{eol}{eol}"
    ));
    for d in deltas {
        let event = serde_json::json!({
            "id": "c1",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": d}, "finish_reason": null}],
            "usage": null,
        });
        s.push_str(&format!("data: {event}{eol}{eol}"));
    }
    s.push_str(&format!(
        "data: {{\"id\":\"c1\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}],\"usage\":null}}{eol}{eol}"
    ));
    if usage {
        s.push_str(&format!(
            "data: {{\"id\":\"c1\",\"choices\":[],\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12}}}}{eol}{eol}"
        ));
    }
    s.push_str(&format!("data: [DONE]{eol}{eol}"));
    s
}

const DELTAS: &[&str] = &["Hel", "lo", " world", ", how", " are you", "?"];

// --- parse_request ------------------------------------------------------------------------

#[test]
fn parses_chat_request() {
    let body = br#"{
        "model": "gpt-4o-mini",
        "stream": true,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [
                {"type": "text", "text": "hello world"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
            ]}
        ],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": {}}},
            {"type": "function", "function": {"name": "shell"}}
        ]
    }"#;
    let req = parse_request(body).unwrap();
    assert_eq!(req.model.as_deref(), Some("gpt-4o-mini"));
    assert!(req.stream);
    assert_eq!(req.tools, ["get_weather", "shell"]);
    let expected = 2 * 4 + count_tokens("You are terse.") + count_tokens("hello world");
    assert_eq!(req.prompt_tokens_estimate, expected);
    assert_eq!(count_tokens("hello world"), 2);
}

#[test]
fn parses_legacy_functions_and_responses_tools() {
    let body = br#"{
        "model": "gpt-4.1",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi there"}]}],
        "tools": [{"type": "function", "name": "lookup"}, {"type": "web_search"}],
        "functions": [{"name": "legacy_fn"}, {"description": "no name"}]
    }"#;
    let req = parse_request(body).unwrap();
    assert_eq!(req.tools, ["lookup", "web_search", "legacy_fn"]);
    assert!(!req.stream);
    assert_eq!(req.prompt_tokens_estimate, 4 + count_tokens("hi there"));
}

#[test]
fn prompt_and_input_shapes() {
    let req = parse_request(br#"{"model":"m","prompt":"hello world"}"#).unwrap();
    assert_eq!(req.prompt_tokens_estimate, 2);
    let req = parse_request(br#"{"prompt":["hello world","hello world"]}"#).unwrap();
    assert_eq!(req.prompt_tokens_estimate, 4);
    assert_eq!(req.model, None);
    let req = parse_request(br#"{"input":"hello world"}"#).unwrap();
    assert_eq!(req.prompt_tokens_estimate, 2);
    let req = parse_request(br#"{"input":[[1,2,3],[4]],"prompt":[5,6]}"#).unwrap();
    assert_eq!(req.prompt_tokens_estimate, 6);
    let req = parse_request(br#"{"model":7,"stream":"yes","messages":"nope","tools":{}}"#).unwrap();
    assert_eq!(req, LlmRequest::default());
    let req = parse_request(b"{}").unwrap();
    assert_eq!(req.prompt_tokens_estimate, 0);
}

#[test]
fn rejects_non_json_bodies() {
    let LlmRequestError::NotJson(msg) = parse_request(b"model=gpt-4").unwrap_err();
    assert!(msg.starts_with("request body is not valid JSON: "), "{msg}");
    assert!(msg.contains("line 1 column 1"), "{msg}");

    let LlmRequestError::NotJson(msg) = parse_request(b"").unwrap_err();
    assert!(msg.starts_with("request body is not valid JSON: "), "{msg}");

    let err = parse_request(br#"[{"model":"gpt-4"}]"#).unwrap_err();
    assert_eq!(
        err,
        LlmRequestError::NotJson("request body must be a JSON object".into())
    );
    assert_eq!(err.to_string(), "request body must be a JSON object");

    let err = parse_request(br#""just a string""#).unwrap_err();
    assert_eq!(err.to_string(), "request body must be a JSON object");
    assert!(parse_request(br#"{"model":"x"} trailing"#).is_err());
    assert!(parse_request(&[0xff, 0xfe, b'{', b'}']).is_err());
}

#[test]
fn deeply_nested_request_is_an_error_not_a_crash() {
    let mut body = "[".repeat(100_000);
    body.push_str(&"]".repeat(100_000));
    assert!(parse_request(body.as_bytes()).is_err());
}

// --- check_policy -------------------------------------------------------------------------

#[test]
fn policy_reasons() {
    let models = boxed(&["gpt-4o-mini", "gpt-4.1"]);
    let tools = boxed(&["get_weather"]);
    let allow = AllowLists {
        models: Some(&models),
        tools: Some(&tools),
    };
    let req = |model: Option<&str>, tools: &[&str]| LlmRequest {
        model: model.map(str::to_owned),
        tools: tools.iter().map(|t| t.to_string()).collect(),
        ..LlmRequest::default()
    };

    assert_eq!(
        check_policy(&req(Some("gpt-4"), &[]), &allow, "starter"),
        Err(r#"model "gpt-4" is not allowed for tenant starter"#.to_owned())
    );
    assert_eq!(
        check_policy(&req(Some("GPT-4o-mini"), &[]), &allow, "starter"),
        Err(r#"model "GPT-4o-mini" is not allowed for tenant starter"#.to_owned())
    );
    assert_eq!(
        check_policy(
            &req(Some("gpt-4o-mini"), &["get_weather", "shell", "rm"]),
            &allow,
            "starter"
        ),
        Err(r#"tool "shell" is not allowed for tenant starter"#.to_owned())
    );
    assert_eq!(
        check_policy(&req(None, &[]), &allow, "starter"),
        Err("a model is required for tenant starter".to_owned())
    );
    // The model is checked before the tools.
    assert_eq!(
        check_policy(&req(Some("gpt-4"), &["shell"]), &allow, "starter"),
        Err(r#"model "gpt-4" is not allowed for tenant starter"#.to_owned())
    );
    assert_eq!(
        check_policy(&req(Some("gpt-4.1"), &["get_weather"]), &allow, "starter"),
        Ok(())
    );
    assert_eq!(
        check_policy(&req(Some("gpt-4.1"), &[]), &allow, "starter"),
        Ok(())
    );
}

#[test]
fn policy_none_allows_anything_and_empty_allows_nothing() {
    let anything = AllowLists::default();
    let req = LlmRequest {
        model: Some("whatever".into()),
        tools: vec!["shell".into()],
        ..LlmRequest::default()
    };
    assert_eq!(check_policy(&req, &anything, "t"), Ok(()));
    assert_eq!(check_policy(&LlmRequest::default(), &anything, "t"), Ok(()));

    let empty: Vec<Box<str>> = Vec::new();
    let nothing = AllowLists {
        models: Some(&empty),
        tools: Some(&empty),
    };
    assert_eq!(
        check_policy(&req, &nothing, "t"),
        Err(r#"model "whatever" is not allowed for tenant t"#.to_owned())
    );
    let only_tools = AllowLists {
        models: None,
        tools: Some(&empty),
    };
    assert_eq!(
        check_policy(&req, &only_tools, "t"),
        Err(r#"tool "shell" is not allowed for tenant t"#.to_owned())
    );
    let no_tools = LlmRequest {
        tools: vec![],
        ..req
    };
    assert_eq!(check_policy(&no_tools, &only_tools, "t"), Ok(()));
}

// --- UsageScanner: JSON -------------------------------------------------------------------

const CHAT_COMPLETION: &str = r#"{
  "id": "chatcmpl-123",
  "object": "chat.completion",
  "created": 1677652288,
  "model": "gpt-4o-mini",
  "choices": [{
    "index": 0,
    "message": {"role": "assistant", "content": "Hello there, how may I assist you today? ☀️"},
    "logprobs": null,
    "finish_reason": "stop"
  }],
  "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}
}"#;

#[test]
fn json_reported_usage() {
    let usage = scan_fixed("application/json", 5, CHAT_COMPLETION.as_bytes(), 1);
    assert_eq!(
        usage,
        Some(Usage {
            total_tokens: 42,
            estimated: false
        })
    );
    let usage = scan_all_ways(
        "application/json; charset=utf-8",
        5,
        CHAT_COMPLETION.as_bytes(),
    );
    assert_eq!(
        usage,
        Some(Usage {
            total_tokens: 42,
            estimated: false
        })
    );
}

#[test]
fn json_without_usage_is_estimated() {
    let mut value: Value = serde_json::from_str(CHAT_COMPLETION).unwrap();
    value.as_object_mut().unwrap().remove("usage");
    let body = value.to_string();
    let usage = scan_all_ways("application/json", 10, body.as_bytes()).unwrap();
    assert!(usage.estimated);
    assert!(usage.total_tokens > 10);
    assert_eq!(
        usage.total_tokens,
        10 + count_tokens("Hello there, how may I assist you today? ☀️")
    );
}

#[test]
fn json_legacy_completion_and_responses_api() {
    let body = br#"{"choices":[{"text":"hello world","index":0}]}"#;
    assert_eq!(
        scan_fixed("application/json", 3, body, 4),
        Some(Usage {
            total_tokens: 5,
            estimated: true
        })
    );
    let body = br#"{"object":"response","output":[{"type":"message","content":[{"type":"output_text","text":"hello world"}]}],
        "usage":{"input_tokens":5,"output_tokens":2,"total_tokens":7}}"#;
    assert_eq!(
        scan_fixed("application/vnd.openai+json", 3, body, 5),
        Some(Usage {
            total_tokens: 7,
            estimated: false
        })
    );
}

#[test]
fn json_unparseable_body() {
    assert_eq!(
        scan_fixed("application/json", 0, b"{\"choices\": [", 3),
        None
    );
    assert_eq!(scan_fixed("application/json", 0, b"", 3), None);
    assert_eq!(
        scan_fixed("application/json", 17, b"<html>bad gateway</html>", 3),
        Some(Usage {
            total_tokens: 17,
            estimated: true
        })
    );
}

#[test]
fn json_oversized_body_finds_trailing_usage() {
    // A large embeddings response: the usage comes after megabytes of floats.
    let mut body = String::from(r#"{"object":"list","data":["#);
    let mut i = 0;
    while body.len() < 5 << 20 {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"object":"embedding","index":{i},"embedding":[{}]}}"#,
            vec!["-0.0123456789"; 256].join(",")
        ));
        i += 1;
    }
    body.push_str(
        r#"],"model":"text-embedding-3-small","usage":{"prompt_tokens":1234,"total_tokens":1234}}"#,
    );
    for size in [8 << 10, 100_000, 3 << 20] {
        assert_eq!(
            scan_fixed("application/json", 50, body.as_bytes(), size),
            Some(Usage {
                total_tokens: 1234,
                estimated: false
            }),
            "chunks of {size}"
        );
    }
    // Without usage: the prompt estimate.
    let cut = body.rfind(r#","usage""#).unwrap();
    let no_usage = format!("{}}}", &body[..cut]);
    assert_eq!(
        scan_fixed("application/json", 50, no_usage.as_bytes(), 16 << 10),
        Some(Usage {
            total_tokens: 50,
            estimated: true
        })
    );
}

#[test]
fn usage_in_tail_ignores_escaped_keys_and_junk() {
    assert_eq!(
        usage_in_tail(br#"xx "usage": {"total_tokens": 9} }"#),
        Some(9)
    );
    assert_eq!(usage_in_tail(br#"\"usage\": {\"total_tokens\": 9}"#), None);
    assert_eq!(
        usage_in_tail(br#""usage":{"total_tokens":3}, "usage": {"total_to"#),
        Some(3)
    );
    assert_eq!(usage_in_tail(br#""usage": null"#), None);
    assert_eq!(usage_in_tail(br#""usage""#), None);
    assert_eq!(usage_in_tail(b""), None);
}

// --- UsageScanner: SSE --------------------------------------------------------------------

#[test]
fn sse_reported_usage() {
    let stream = sse_stream(DELTAS, true, "\n");
    let usage = scan_all_ways("text/event-stream", 20, stream.as_bytes());
    assert_eq!(
        usage,
        Some(Usage {
            total_tokens: 12,
            estimated: false
        })
    );
}

#[test]
fn sse_reported_usage_crlf_and_cr() {
    let stream = sse_stream(DELTAS, true, "\r\n");
    let usage = scan_all_ways("text/event-stream; charset=utf-8", 20, stream.as_bytes());
    assert_eq!(
        usage,
        Some(Usage {
            total_tokens: 12,
            estimated: false
        })
    );
    let stream = sse_stream(DELTAS, true, "\r");
    let usage = scan_all_ways("Text/Event-Stream", 20, stream.as_bytes());
    assert_eq!(
        usage,
        Some(Usage {
            total_tokens: 12,
            estimated: false
        })
    );
}

#[test]
fn sse_without_usage_is_estimated() {
    let prompt = 17;
    let expected = prompt + count_tokens(&DELTAS.concat());
    assert_eq!(DELTAS.concat(), "Hello world, how are you?");
    for eol in ["\n", "\r\n"] {
        let stream = sse_stream(DELTAS, false, eol);
        let usage = scan_all_ways("text/event-stream", prompt, stream.as_bytes());
        assert_eq!(
            usage,
            Some(Usage {
                total_tokens: expected,
                estimated: true
            })
        );
    }
}

#[test]
fn sse_last_usage_wins_and_responses_api() {
    let stream = "data: {\"choices\":[],\"usage\":{\"total_tokens\":5}}\n\n\
                  data: {\"choices\":[],\"usage\":{\"total_tokens\":8}}\n\n\
                  data: {\"choices\":[],\"usage\":null}\n\n";
    assert_eq!(
        scan_all_ways("text/event-stream", 0, stream.as_bytes()),
        Some(Usage {
            total_tokens: 8,
            estimated: false
        })
    );
    let stream = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"usage\":null}}\n\n\
                  event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n\
                  event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":4,\"output_tokens\":1,\"total_tokens\":5}}}\n\n";
    assert_eq!(
        scan_all_ways("text/event-stream", 0, stream.as_bytes()),
        Some(Usage {
            total_tokens: 5,
            estimated: false
        })
    );
    let without = stream.rsplit_once("event: response.completed").unwrap().0;
    assert_eq!(
        scan_all_ways("text/event-stream", 3, without.as_bytes()),
        Some(Usage {
            total_tokens: 3 + count_tokens("Hi"),
            estimated: true
        })
    );
}

#[test]
fn sse_field_syntax() {
    // No space after the colon, multi-line data joined with `\n`, comments, other fields,
    // and a last event without its blank line (or even its line ending).
    let stream = ":comment\nretry: 100\nid: 7\nevent: message\n\
                  data:{\"choices\":[{\"delta\":\n\
                  data: {\"content\":\"hello\"}}]}\n\n\
                  data: {\"choices\":[{\"delta\":{\"content\":\" world\"}}]}";
    assert_eq!(
        scan_all_ways("text/event-stream", 0, stream.as_bytes()),
        Some(Usage {
            total_tokens: count_tokens("hello world"),
            estimated: true
        })
    );
    let stream = "data: {\"usage\":{\"total_tokens\":3}}\n";
    assert_eq!(
        scan_all_ways("text/event-stream", 0, stream.as_bytes()),
        Some(Usage {
            total_tokens: 3,
            estimated: false
        })
    );
    // A truncated last event is just not JSON.
    let stream = "data: {\"usage\":{\"total_tokens\":3}}\n\ndata: {\"usage\":{\"total_tokens\":30";
    assert_eq!(
        scan_all_ways("text/event-stream", 0, stream.as_bytes()),
        Some(Usage {
            total_tokens: 3,
            estimated: false
        })
    );
    // Legacy completions stream `choices[].text`.
    let stream = "data: {\"choices\":[{\"text\":\"hello\"}]}\n\ndata: {\"choices\":[{\"text\":\" world\"}]}\n\ndata: [DONE]\n\n";
    assert_eq!(
        scan_all_ways("text/event-stream", 1, stream.as_bytes()),
        Some(Usage {
            total_tokens: 1 + count_tokens("hello world"),
            estimated: true
        })
    );
}

#[test]
fn sse_multibyte_text_split_everywhere() {
    let deltas = [
        "héllo ",
        "wörld ",
        "日本語の",
        "テキスト ",
        "🦀🦀",
        " ünïcödé",
    ];
    let stream = sse_stream(&deltas, false, "\n");
    // Byte-by-byte feeding splits every multi-byte char across chunks.
    let usage = scan_fixed("text/event-stream", 2, stream.as_bytes(), 1);
    let expected = 2 + count_tokens(&deltas.concat());
    assert_eq!(
        usage,
        Some(Usage {
            total_tokens: expected,
            estimated: true
        })
    );
    assert_eq!(
        scan_all_ways("text/event-stream", 2, stream.as_bytes()),
        usage
    );
}

#[test]
fn sse_oversized_event_is_skipped() {
    let huge = "x".repeat(SSE_EVENT_MAX + 10);
    let mut stream = String::new();
    stream.push_str("data: {\"choices\":[{\"delta\":{\"content\":\"small\"}}]}\n\n");
    stream.push_str(&format!(
        "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{huge}\"}}}}]}}\n\n"
    ));
    // Oversized across several data lines, too.
    let half = "y".repeat(SSE_EVENT_MAX / 2 + 1);
    stream.push_str(&format!("data: \"{half}\ndata: {half}\"\n\n"));
    stream.push_str("data: {\"choices\":[{\"delta\":{\"content\":\" text\"}}]}\n\n");
    for size in [1000, 64 << 10, 3 << 20] {
        assert_eq!(
            scan_fixed("text/event-stream", 1, stream.as_bytes(), size),
            Some(Usage {
                total_tokens: 1 + count_tokens("small text"),
                estimated: true
            }),
            "chunks of {size}"
        );
    }
    stream.push_str("data: {\"choices\":[],\"usage\":{\"total_tokens\":12}}\n\ndata: [DONE]\n\n");
    assert_eq!(
        scan_fixed("text/event-stream", 1, stream.as_bytes(), 4096),
        Some(Usage {
            total_tokens: 12,
            estimated: false
        })
    );
}

#[test]
fn sse_long_stream_is_counted_fully() {
    // Well over the 64 KiB tokenizing piece: counted incrementally, same total as in one go.
    let words = [
        "alpha ",
        "beta\n",
        "gamma, ",
        "δέλτα ",
        "  ",
        "epsilon. ",
        "日本 ",
    ];
    let mut rng = Rng(99);
    let deltas: Vec<String> = (0..25_000)
        .map(|_| words[rng.below(words.len())].to_owned())
        .collect();
    let deltas: Vec<&str> = deltas.iter().map(String::as_str).collect();
    let text = deltas.concat();
    assert!(text.len() > 2 * TOKENIZE_PIECE_MAX);
    let stream = sse_stream(&deltas, false, "\n");
    let usage = scan_fixed("text/event-stream", 0, stream.as_bytes(), 8 << 10).unwrap();
    assert!(usage.estimated);
    assert_eq!(usage.total_tokens, count_tokens(&text));
    // And the pieces hardly change the count compared with tokenizing all at once.
    let bpe = O200K.as_ref().unwrap();
    let exact = bpe.encode_ordinary(&text).len() as u64;
    assert!(
        usage.total_tokens.abs_diff(exact) <= 5,
        "{} vs {exact}",
        usage.total_tokens
    );
}

#[test]
fn sse_empty_stream() {
    assert_eq!(scan_fixed("text/event-stream", 0, b"", 1), None);
    assert_eq!(
        scan_fixed("text/event-stream", 0, b"data: [DONE]\n\n", 1),
        None
    );
    assert_eq!(
        scan_fixed("text/event-stream", 4, b"", 1),
        Some(Usage {
            total_tokens: 4,
            estimated: true
        })
    );
}

// --- UsageScanner: other ------------------------------------------------------------------

#[test]
fn ignore_mode() {
    let stream = sse_stream(DELTAS, true, "\n");
    for ct in [
        Some("text/plain"),
        Some("application/jsonl"),
        Some("image/png"),
        None,
    ] {
        // The body is not read; the prompt's estimate is what counts.
        let mut scanner = UsageScanner::new(ct, 100);
        scanner.feed(stream.as_bytes());
        scanner.feed(CHAT_COMPLETION.as_bytes());
        assert_eq!(
            scanner.finish(),
            Some(Usage {
                total_tokens: 100,
                estimated: true
            }),
            "{ct:?}"
        );
        let mut scanner = UsageScanner::new(ct, 0);
        scanner.feed(CHAT_COMPLETION.as_bytes());
        assert_eq!(scanner.finish(), None, "{ct:?}");
    }
    let scanner = UsageScanner::new(Some("text/plain"), 1);
    assert!(format!("{scanner:?}").contains("ignore"));
}

#[test]
fn scanner_is_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<UsageScanner>();
}

#[test]
fn garbage_never_panics() {
    let mut rng = Rng(0x1234_5678);
    let alphabet: &[u8] =
        b"data: {}[]\"\\:\r\n usage total_tokens 0123456789 choices delta content \xff\xc3";
    for round in 0..300 {
        let len = rng.below(3000);
        let body: Vec<u8> = (0..len)
            .map(|_| {
                if round % 3 == 0 {
                    rng.next() as u8
                } else {
                    alphabet[rng.below(alphabet.len())]
                }
            })
            .collect();
        for ct in ["text/event-stream", "application/json"] {
            let _ = scan_random(ct, 0, &body, round, 50);
        }
        let _ = parse_request(&body);
    }
}

// --- count_tokens -------------------------------------------------------------------------

#[test]
fn counts_with_o200k() {
    assert!(O200K.is_some());
    assert_eq!(count_tokens("hello world"), 2);
    assert_eq!(count_tokens(""), 0);
    // Special tokens are just text.
    assert!(count_tokens("<|endoftext|>") > 1);
}

#[test]
fn long_runs_do_not_crash_the_tokenizer() {
    // Unsplit, a million spaces make tiktoken-rs's regex fail and panic.
    let spaces = " ".repeat(1 << 20);
    let n = count_tokens(&spaces);
    assert!(n > 0 && n < (1 << 20) / 4, "{n}");
}

#[test]
fn cut_points() {
    assert_eq!(cut_point("hello", 10), 5);
    assert_eq!(cut_point("", 10), 0);
    // Before the whitespace run that is nearest the limit.
    assert_eq!(cut_point("aaaa bbbb  cccc", 12), 9);
    // No whitespace in the last half: at the limit, on a char boundary.
    assert_eq!(cut_point("a bbbbbbbbbbbbbbbb", 10), 10);
    assert_eq!(cut_point("ééééééé", 5), 4);
    assert_eq!(cut_point("日本語", 2), 3);
}
