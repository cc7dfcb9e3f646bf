//! Real libmodsecurity with Debian's CRS: skipped with a notice where they are not installed
//! (required when `TENANTRY_REQUIRE_SERVICES=1`, as in CI).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use http::header::{HOST, USER_AGENT};
use tenantry_domain::WafLevel;

use super::*;

fn waf() -> Option<&'static Waf> {
    static WAF: OnceLock<Option<Waf>> = OnceLock::new();
    WAF.get_or_init(|| {
        let settings = WafSettings::default();
        let crs = settings.crs_dir.join("rules");
        let res = if crs.is_dir() {
            Waf::start(&settings)
        } else {
            Err(WafError::Unavailable(format!(
                "{} is missing",
                crs.display()
            )))
        };
        match res {
            Ok(w) => Some(w),
            Err(e) if std::env::var("TENANTRY_REQUIRE_SERVICES").is_ok_and(|v| v == "1") => {
                panic!("libmodsecurity and the CRS are required: {e}")
            }
            Err(e) => {
                eprintln!(
                    "skipping WAF tests: {e} (apt-get install libmodsecurity3 modsecurity-crs)"
                );
                None
            }
        }
    })
    .as_ref()
}

fn key(level: WafLevel, mode: WafMode, exclusions: &[u32]) -> RulesKey {
    RulesKey {
        level,
        mode,
        exclusions: exclusions.into(),
    }
}

fn request(method: &str, uri: &str, headers: &[(&str, &str)], body: &[u8]) -> Inspection {
    let mut h = HeaderMap::new();
    h.insert(HOST, "acme.localhost".parse().unwrap());
    h.insert(
        USER_AGENT,
        "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"
            .parse()
            .unwrap(),
    );
    h.insert(http::header::ACCEPT, "*/*".parse().unwrap());
    for (k, v) in headers {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    if !body.is_empty() {
        h.insert(http::header::CONTENT_LENGTH, body.len().into());
    }
    Inspection {
        request_id: "test-1".into(),
        client: "127.0.0.1:50000".parse().unwrap(),
        server: "127.0.0.1:8080".parse().unwrap(),
        method: method.parse().unwrap(),
        uri: uri.into(),
        version: Version::HTTP_11,
        headers: h,
        body: Bytes::copy_from_slice(body),
        body_partial: false,
    }
}

async fn check(key: &RulesKey, req: Inspection) -> Verdict {
    let waf = waf().unwrap();
    let rules = waf.rules(key).unwrap();
    waf.inspect(&rules, &TenantId::parse("acme").unwrap(), req)
        .await
        .unwrap()
}

fn attacks() -> Vec<(&'static str, Inspection)> {
    vec![
        (
            "xss",
            request(
                "GET",
                "/search?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
                &[],
                b"",
            ),
        ),
        (
            "sqli",
            request("GET", "/items?id=1%27%20OR%20%271%27%3D%271", &[], b""),
        ),
        (
            "traversal",
            request("GET", "/files?name=..%2F..%2F..%2Fetc%2Fpasswd", &[], b""),
        ),
        (
            "rce",
            request(
                "GET",
                "/ping?host=127.0.0.1%3B%20cat%20%2Fetc%2Fpasswd",
                &[],
                b"",
            ),
        ),
        (
            "scanner",
            request("GET", "/", &[("user-agent", "Nikto/2.1.6")], b""),
        ),
        (
            "sqli in json body",
            request(
                "POST",
                "/api/login",
                &[("content-type", "application/json")],
                br#"{"user":"admin' OR 1=1 --","password":"x"}"#,
            ),
        ),
        (
            "xss in form body",
            request(
                "POST",
                "/comment",
                &[("content-type", "application/x-www-form-urlencoded")],
                b"text=%3Cscript%3Edocument.cookie%3C%2Fscript%3E",
            ),
        ),
    ]
}

fn clean() -> Vec<(&'static str, Inspection)> {
    let multipart = b"--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nHoliday photos\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"beach.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\r\n--XyZ--\r\n";
    vec![
        ("get", request("GET", "/products?page=2&sort=price", &[], b"")),
        (
            "json api",
            request(
                "POST",
                "/api/orders",
                &[("content-type", "application/json")],
                br#"{"items":[{"sku":"A-100","qty":2}],"note":"Leave at the door, thanks!","coupon":null}"#,
            ),
        ),
        (
            "form post",
            request(
                "POST",
                "/signup",
                &[("content-type", "application/x-www-form-urlencoded")],
                b"name=Ana+Souza&email=ana%40example.com&plan=pro&accept=on",
            ),
        ),
        (
            "file upload",
            request(
                "POST",
                "/upload",
                &[("content-type", "multipart/form-data; boundary=XyZ")],
                multipart,
            ),
        ),
    ]
}

#[tokio::test]
async fn attacks_are_blocked_at_standard_and_clean_traffic_passes() {
    if waf().is_none() {
        return;
    }
    let standard = key(WafLevel::Standard, WafMode::Block, &[]);
    for (name, req) in attacks() {
        let v = check(&standard, req).await;
        assert_eq!(v.action, Action::Block, "{name}: {v:?}");
        assert_eq!(v.status, 403, "{name}");
        assert!(!v.rule_ids.is_empty(), "{name}: no rule ids");
        assert!(
            v.rule_ids.iter().all(|id| *id != 949_110),
            "{name}: scoring rule reported"
        );
    }
    for (name, req) in clean() {
        let v = check(&standard, req).await;
        assert_eq!(v.action, Action::Pass, "{name}: {v:?}");
    }
}

#[tokio::test]
async fn detect_mode_reports_without_blocking() {
    if waf().is_none() {
        return;
    }
    let detect = key(WafLevel::Standard, WafMode::Detect, &[]);
    for (name, req) in attacks() {
        let v = check(&detect, req).await;
        assert_eq!(v.action, Action::Detect, "{name}: {v:?}");
        assert!(!v.rule_ids.is_empty(), "{name}");
    }
    let (_, req) = clean().remove(1);
    assert_eq!(check(&detect, req).await.action, Action::Pass);
}

#[tokio::test]
async fn sql_injection_reports_rule_and_variable_names_not_values() {
    if waf().is_none() {
        return;
    }
    let v = check(
        &key(WafLevel::Standard, WafMode::Block, &[]),
        request("GET", "/items?id=1%27%20OR%20%271%27%3D%271", &[], b""),
    )
    .await;
    assert!(v.rule_ids.contains(&942_100), "{v:?}");
    let forged = check(
        &key(WafLevel::Standard, WafMode::Block, &[]),
        request(
            "GET",
            "/q?x=%3Cscript%3E%5Bline%20%221%22%5D%20%5Bid%20%221%22%5D",
            &[],
            b"",
        ),
    )
    .await;
    assert!(!forged.rule_ids.contains(&1), "{forged:?}");
    assert!(forged.rule_ids.contains(&941_110), "{forged:?}");
    assert!(v.variables.iter().any(|n| n == "ARGS:id"), "{v:?}");
    assert!(v.variables.iter().all(|n| !n.contains("OR")), "{v:?}");
}

#[tokio::test]
async fn exclusions_remove_rules_and_basic_tolerates_a_single_match() {
    if waf().is_none() {
        return;
    }
    // The scanner user agent matches one critical rule (913100, score 5): blocked at
    // standard (threshold 5), not at basic (threshold 10), not once excluded.
    let scanner = || request("GET", "/", &[("user-agent", "Nikto/2.1.6")], b"");
    let v = check(&key(WafLevel::Standard, WafMode::Block, &[]), scanner()).await;
    assert_eq!(v.rule_ids, vec![913_100], "{v:?}");
    let basic = check(&key(WafLevel::Basic, WafMode::Block, &[]), scanner()).await;
    assert_eq!(basic.action, Action::Pass, "{basic:?}");
    let excluded = check(
        &key(WafLevel::Standard, WafMode::Block, &[913_100]),
        scanner(),
    )
    .await;
    assert_eq!(excluded.action, Action::Pass, "{excluded:?}");
    assert!(excluded.rule_ids.is_empty());
}

#[tokio::test]
async fn malformed_json_is_refused_unless_the_body_was_cut() {
    if waf().is_none() {
        return;
    }
    let standard = key(WafLevel::Standard, WafMode::Block, &[]);
    let body = br#"{"a": [1, 2"#;
    let req = || {
        request(
            "POST",
            "/api",
            &[("content-type", "application/json")],
            body,
        )
    };
    let v = check(&standard, req()).await;
    assert_eq!((v.action, v.status), (Action::Block, 400), "{v:?}");
    assert_eq!(v.rule_ids, vec![rules::RULE_BODY_ERROR]);
    let mut cut = req();
    cut.body_partial = true;
    assert_eq!(check(&standard, cut).await.action, Action::Pass);
    // A client cannot claim the body was cut.
    let forged = request(
        "POST",
        "/api",
        &[
            ("content-type", "application/json"),
            (rules::PARTIAL_BODY_HEADER, "1"),
        ],
        body,
    );
    assert_eq!(check(&standard, forged).await.action, Action::Block);
    // In `detect` mode the same body is a detection (logged and counted), not a pass.
    let detect = check(&key(WafLevel::Standard, WafMode::Detect, &[]), req()).await;
    assert_eq!(detect.action, Action::Detect, "{detect:?}");
    assert_eq!(detect.rule_ids, vec![rules::RULE_BODY_ERROR]);
}

#[tokio::test]
async fn rules_sets_are_shared_by_key() {
    let Some(waf) = waf() else {
        return;
    };
    let k = key(WafLevel::Strict, WafMode::Block, &[]);
    let a = waf.rules(&k).unwrap();
    let b = waf.rules(&k).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert!(a.rule_count() > 500, "{}", a.rule_count());
    let c = waf
        .rules(&key(WafLevel::Strict, WafMode::Detect, &[]))
        .unwrap();
    assert!(!Arc::ptr_eq(&a, &c));
    assert!(waf.version().contains("ModSecurity"), "{}", waf.version());
    // Only the blocking set without exclusions is compiled; the others share its rules.
    assert!(!a.is_derived());
    assert!(c.is_derived());
    assert!(Arc::ptr_eq(c.base.as_ref().unwrap(), &a));
    assert_eq!(c.rule_count(), a.rule_count());
    let d = waf
        .rules(&key(WafLevel::Strict, WafMode::Block, &[942100]))
        .unwrap();
    assert!(d.is_derived() && Arc::ptr_eq(d.base.as_ref().unwrap(), &a));
}

/// A derived set behaves as a compiled one: detect mode reports without blocking, and
/// exclusions remove exactly their rules, also when both apply.
#[tokio::test]
async fn derived_sets_apply_their_mode_and_exclusions() {
    let Some(_) = waf() else {
        return;
    };
    let sqli = || request("GET", "/?id=1%27%20OR%20%271%27%3D%271", &[], b"");
    let block = check(&key(WafLevel::Standard, WafMode::Block, &[]), sqli()).await;
    assert_eq!(block.action, Action::Block);
    assert!(block.rule_ids.contains(&942100), "{block:?}");
    let detect = check(&key(WafLevel::Standard, WafMode::Detect, &[]), sqli()).await;
    assert_eq!(detect.action, Action::Detect);
    assert_eq!(detect.rule_ids, block.rule_ids);
    // Every rule that matched, removed: nothing left to score.
    let all = block.rule_ids.clone();
    let excluded = check(&key(WafLevel::Standard, WafMode::Block, &all), sqli()).await;
    assert_eq!(excluded.action, Action::Pass, "{excluded:?}");
    assert!(excluded.rule_ids.is_empty(), "{excluded:?}");
    let both = check(&key(WafLevel::Standard, WafMode::Detect, &[942100]), sqli()).await;
    assert!(!both.rule_ids.contains(&942100), "{both:?}");
    // The base set is untouched by its derived sets' removals.
    let again = check(&key(WafLevel::Standard, WafMode::Block, &[]), sqli()).await;
    assert_eq!(again, block);
}

#[test]
fn a_missing_library_is_reported() {
    let settings = WafSettings {
        library: "libdoes-not-exist.so.9".into(),
        ..WafSettings::default()
    };
    match Waf::start(&settings) {
        Err(WafError::Unavailable(m)) => assert!(m.contains("libdoes-not-exist"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_crs_directory_is_a_rules_error() {
    let Some(waf) = waf() else {
        return;
    };
    let mut settings = waf.settings().clone();
    settings.crs_dir = "/nonexistent/crs".into();
    settings.workers = Some(1);
    let other = Waf::start(&settings).unwrap();
    let err = other
        .rules(&key(WafLevel::Basic, WafMode::Block, &[]))
        .unwrap_err();
    assert!(matches!(err, WafError::Rules(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_beyond_its_share_waits_and_others_keep_theirs() {
    let Some(shared) = waf() else {
        return;
    };
    let mut settings = shared.settings().clone();
    settings.workers = Some(1);
    settings.queue = 4; // a tenant may hold 3 slots (half of queue + workers)
    let waf = Waf::start(&settings).unwrap();
    let rules = waf
        .rules(&key(WafLevel::Standard, WafMode::Block, &[]))
        .unwrap();
    let heavy = TenantId::parse("heavy").unwrap();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (waf, rules, heavy) = (waf.clone(), Arc::clone(&rules), heavy.clone());
        tasks.push(tokio::spawn(async move {
            waf.inspect(&rules, &heavy, request("GET", "/a?b=c", &[], b""))
                .await
        }));
    }
    let other = waf
        .inspect(
            &rules,
            &TenantId::parse("other").unwrap(),
            request("GET", "/", &[], b""),
        )
        .await;
    assert_eq!(
        other.unwrap().action,
        Action::Pass,
        "the other tenant got a slot"
    );
    for t in tasks {
        let v = t.await.unwrap();
        assert_eq!(
            v.unwrap().action,
            Action::Pass,
            "the heavy tenant's requests waited, none refused"
        );
    }
    assert_eq!(waf.pending(), 0);
}

/// With one inspection thread and a heavy tenant's backlog queued, another tenant's request
/// is served within a couple of inspections (round robin), not behind the backlog (FIFO).
/// The queue is held while the backlog builds, so it cannot drain first however slow the
/// machine is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_inspection_does_not_wait_behind_a_backlog() {
    use std::sync::atomic::AtomicUsize;
    let Some(shared) = waf() else {
        return;
    };
    let mut settings = shared.settings().clone();
    settings.workers = Some(1);
    settings.queue = 64; // the heavy tenant may hold 32
    let waf = Waf::start(&settings).unwrap();
    let rules = waf
        .rules(&key(WafLevel::Standard, WafMode::Block, &[]))
        .unwrap();
    let queued = async |n: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while waf.queued() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {n} inspections queued",
                waf.queued()
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    };
    waf.hold_queue(true);
    let heavy = TenantId::parse("heavy").unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (waf, rules, heavy, done) = (
            waf.clone(),
            Arc::clone(&rules),
            heavy.clone(),
            Arc::clone(&done),
        );
        tasks.push(tokio::spawn(async move {
            let v = waf
                .inspect(&rules, &heavy, request("POST", "/a?b=c", &[], b"x=1&y=2"))
                .await;
            done.fetch_add(1, Ordering::SeqCst);
            v
        }));
    }
    queued(32).await;
    let other = {
        let (waf, rules) = (waf.clone(), Arc::clone(&rules));
        tokio::spawn(async move {
            waf.inspect(
                &rules,
                &TenantId::parse("other").unwrap(),
                request("GET", "/", &[], b""),
            )
            .await
        })
    };
    queued(33).await;
    assert_eq!(done.load(Ordering::SeqCst), 0, "the queue was held");
    waf.hold_queue(false);
    let other = other.await.unwrap();
    assert_eq!(other.unwrap().action, Action::Pass);
    // The service order, as the queue handed the inspections out: round robin serves one
    // heavy inspection, then the other tenant's. FIFO would serve all 32 heavy ones first.
    let served = waf.served();
    let at = served
        .iter()
        .position(|t| t.as_str() == "other")
        .expect("the other tenant was served");
    assert_eq!(at, 1, "{at} of the heavy tenant's inspections ran first");
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().action, Action::Pass);
    }
    assert_eq!(waf.pending(), 0);
}

/// Inspection threads run under `SCHED_BATCH`, so queueing an inspection does not preempt the
/// proxy worker (or another tenant's requests on the same core).
#[cfg(target_os = "linux")]
#[test]
fn inspection_threads_run_as_batch() {
    let Some(_waf) = waf() else { return };
    // Each thread sets its policy as it starts: wait (up to 5 s) for those just started.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let policies = inspection_thread_policies();
        let ready = !policies.is_empty() && policies.iter().all(|(_, p)| *p == libc::SCHED_BATCH);
        if ready || std::time::Instant::now() > deadline {
            assert!(!policies.is_empty(), "no inspection thread found");
            for (name, policy) in policies {
                assert_eq!(policy, libc::SCHED_BATCH, "{name}");
            }
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// (name, scheduling policy) of this process's inspection threads.
#[cfg(target_os = "linux")]
fn inspection_thread_policies() -> Vec<(String, i32)> {
    let mut policies = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("tenantry-waf-") {
            continue;
        }
        // Field 41 of /proc/<pid>/task/<tid>/stat is the policy (3 = SCHED_BATCH); the
        // fields are counted after the command name's closing parenthesis (field 2). A thread
        // that exited meanwhile is skipped.
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let policy: i32 = after.split(' ').nth(41 - 3).unwrap().parse().unwrap();
        policies.push((comm.trim().to_owned(), policy));
    }
    policies
}
