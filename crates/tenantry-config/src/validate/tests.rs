//! Data-driven checks of validation messages.

use super::*;

fn check(yaml: &str, expect: &[&str]) {
    let result = parse_yaml(yaml).and_then(|s| validate(&s, Path::new("/etc/tenantry")));
    let got: Vec<String> = match result {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    };
    assert_eq!(got, expect, "yaml:\n{yaml}");
}

const GOOD: &str = r#"
listen: 127.0.0.1:8080
tls_listen: 127.0.0.1:8443
admin: { listen: 127.0.0.1:9000 }
tenants:
  - id: acme
    plan: pro
    routes:
      - id: web
        host: acme.localhost
        path_prefix: /
        algorithm: least_conn
        tls: { cert: certs/acme.pem, key: certs/acme.key }
        health_check: { path: /healthz, interval: 1s, timeout: 500ms,
                        healthy_threshold: 2, unhealthy_threshold: 2, expect_status: 200 }
        backends:
          - { address: 127.0.0.1:18001, weight: 3 }
          - { address: 127.0.0.1:18002, weight: 1, state: drain }
"#;

#[test]
fn accepts_the_documented_example() {
    check(GOOD, &[]);
    let cfg = validate(&parse_yaml(GOOD).unwrap(), Path::new("/etc/tenantry")).unwrap();
    let t = cfg.snapshot.tenants().next().unwrap();
    let r = &t.routes[0];
    assert_eq!(r.algorithm, Algorithm::LeastConn);
    assert_eq!(
        r.tls.as_ref().unwrap().cert,
        PathBuf::from("/etc/tenantry/certs/acme.pem")
    );
    assert_eq!(
        r.health_check.as_ref().unwrap().timeout,
        Duration::from_millis(500)
    );
    assert_eq!(r.backends[1].state, BackendState::Drain);
    assert_eq!(
        cfg.server.admin_listen,
        Some("127.0.0.1:9000".parse().unwrap())
    );
}

#[test]
fn reports_every_error_with_its_path() {
    check(
        r#"
listen: "nope"
tenants:
  - id: acme
    routes:
      - id: web
        host: acme.localhost
        backends: [ { address: 127.0.0.1:1 } ]
  - id: Bad_Id
    routes:
      - id: web
        host: "a..b"
        algorithm: random
        health_check: { interval: 5x }
        backends:
          - { address: 127.0.0.1:1 }
          - { address: 127.0.0.1:2, weight: 0 }
          - { address: "127.0.0.1:" }
          - { address: 127.0.0.1:3, state: paused }
      - id: empty
        host: x.localhost
"#,
        &[
            r#"listen: invalid socket address "nope" (expected ip:port, e.g. 127.0.0.1:8080)"#,
            r#"tenants[1].id: invalid tenant id "Bad_Id": invalid character 'B': only lowercase letters, digits and '-' are allowed"#,
            r#"tenants[1].routes[0].host: invalid host "a..b": invalid label "": labels are 1 to 63 characters"#,
            r#"tenants[1].routes[0].algorithm: unknown algorithm "random" (expected round_robin, weighted_round_robin, least_conn or ip_hash)"#,
            r#"tenants[1].routes[0].health_check.interval: invalid duration "5x": unknown unit "x" (use ms, s, m or h)"#,
            r#"tenants[1].routes[0].backends[1].weight: must be between 1 and 1000, got 0"#,
            r#"tenants[1].routes[0].backends[2].address: invalid socket address "127.0.0.1:": invalid port "" (expected host:port, e.g. 127.0.0.1:8080 or app.internal:8080)"#,
            r#"tenants[1].routes[0].backends[3].state: unknown state "paused" (expected active or drain)"#,
            r#"tenants[1].routes[1].backends: at least one backend is required"#,
        ],
    );
}

#[test]
fn rejects_hosts_that_cross_tenants_and_duplicates() {
    check(
        r#"
tenants:
  - id: a
    routes:
      - { id: web, host: shared.localhost, backends: [ { address: 127.0.0.1:1 } ] }
      - { id: web, host: other.localhost, backends: [ { address: 127.0.0.1:1 } ] }
  - id: b
    routes:
      - { id: steal, host: Shared.localhost, backends: [ { address: 127.0.0.1:1 } ] }
  - id: a
"#,
        &[
            r#"tenants[0].routes[1].id: duplicate route id "web" in this tenant"#,
            r#"tenants[2].id: duplicate tenant id "a""#,
            r#"tenants[1].routes[0].host: host "shared.localhost" already belongs to tenant "a""#,
        ],
    );
}

#[test]
fn unknown_keys_are_errors() {
    let err = parse_yaml("listen: 127.0.0.1:1\nlisen: x\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("lisen"), "{err}");
    let err = parse_yaml(
        "tenants:\n  - id: a\n    routes:\n      - id: r\n        host: h\n        backend: []\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("backend"), "{err}");
}

#[test]
fn large_files_fit_the_parser_budget() {
    // ~16 YAML nodes per tenant: 20k tenants are beyond the parser's default 250k-node budget.
    let mut yaml = String::from("tenants:\n");
    for i in 0..20_000 {
        yaml.push_str(&format!(
            "  - {{ id: t{i}, routes: [ {{ id: w, host: t{i}.x.test, backends: [ {{ address: 127.0.0.1:1 }} ] }} ] }}\n"
        ));
    }
    let cfg = validate(&parse_yaml(&yaml).unwrap(), Path::new("/")).unwrap();
    assert_eq!(cfg.snapshot.len(), 20_000);
}

#[test]
fn limits_policies_and_cluster_keys() {
    let yaml = r#"
redis: redis://127.0.0.1:6379
on_redis_error: deny
cluster: { node_id: edge-1, config_ttl: 10s }
limits: { max_llm_body_bytes: 65536 }
tenants:
  - id: starter
    plan: free
    policy: { allowed_models: [gpt-4o-mini], allowed_tools: [search] }
    routes:
      - id: llm
        host: llm.starter.localhost
        kind: llm
        ratelimit: { requests_per_minute: 60, burst: 10, key: api_key }
        backends: [ { address: 127.0.0.1:18001 } ]
      - id: web
        host: starter.localhost
        backends: [ { address: 127.0.0.1:18001 } ]
"#;
    check(yaml, &[]);
    let cfg = validate(&parse_yaml(yaml).unwrap(), Path::new("/")).unwrap();
    assert_eq!(cfg.server.redis.as_deref(), Some("redis://127.0.0.1:6379"));
    assert_eq!(cfg.server.on_redis_error, RedisFallback::Deny);
    assert_eq!(cfg.server.cluster.config_ttl, Duration::from_secs(10));
    assert_eq!(cfg.server.max_llm_body_bytes, 65536);
    let t = cfg.snapshot.tenants().next().unwrap();
    let p = t.policy.as_ref().unwrap();
    assert_eq!(
        p.allowed_models.as_deref().unwrap(),
        [Box::from("gpt-4o-mini")]
    );
    let llm = &t.routes[0];
    assert_eq!(llm.kind, RouteKind::Llm);
    let rl = llm.ratelimit.as_ref().unwrap();
    assert_eq!(
        (rl.requests_per_minute, rl.burst, rl.key),
        (60, Some(10), RateLimitKey::ApiKey)
    );
    assert_eq!(t.routes[1].kind, RouteKind::Http);
    assert!(t.routes[1].ratelimit.is_none());

    check(
        r#"
redis: "http://x"
on_redis_error: maybe
cluster: { config_ttl: 0s, node_id: "a b" }
limits: { max_llm_body_bytes: 10 }
tenants:
  - id: t
    policy: { allowed_models: [""] }
    routes:
      - id: r
        host: t.localhost
        kind: grpc
        ratelimit: { requests_per_minute: 0, burst: 0, key: user }
        backends: [ { address: 127.0.0.1:1 } ]
"#,
        &[
            r#"limits.max_llm_body_bytes: must be between 1024 and 67108864"#,
            r#"redis: invalid Redis URL "http://x": expected redis://host:port[/db]"#,
            r#"on_redis_error: unknown value "maybe" (expected local, allow or deny)"#,
            r#"cluster.config_ttl: must be at least 1s"#,
            r#"cluster.node_id: must be 1 to 100 characters without spaces"#,
            r#"tenants[0].routes[0].kind: unknown kind "grpc" (expected http or llm)"#,
            r#"tenants[0].routes[0].ratelimit.requests_per_minute: must be between 1 and 1000000000, got 0"#,
            r#"tenants[0].routes[0].ratelimit.burst: must be between 1 and 1000000000, got 0"#,
            r#"tenants[0].routes[0].ratelimit.key: unknown key "user" (expected tenant, route, client_ip or api_key)"#,
            r#"tenants[0].policy.allowed_models[0]: must be 1 to 200 printable characters, got """#,
        ],
    );
    assert!(validate_redis_url("redis://:secret@10.0.0.1:6379/2").is_ok());
    assert!(validate_redis_url("redis://host:notaport").is_err());
}

#[test]
fn waf_section_tenant_and_route_settings() {
    let yaml = r#"
waf:
  library: /opt/modsec/libmodsecurity.so.3
  crs: crs
  max_body: 65536
  on_large_body: reject
  on_unavailable: allow
  workers: 2
  queue: 64
  match_log: logs/waf.log
  extra_rules: [rules/local.conf, /etc/waf/more.conf]
  levels:
    basic: { threshold: 20 }
    standard: { paranoia: 2 }
    strict: { paranoia: 3, executing_paranoia: 4, threshold: 4 }
tenants:
  - id: acme
    waf: { level: strict, mode: detect, exclusions: [942100, 920350, 942100] }
    routes:
      - id: web
        host: acme.localhost
        waf: { level: off }
        backends: [ { address: 127.0.0.1:1 } ]
      - id: api
        host: api.acme.localhost
        waf: { mode: block }
        backends: [ { address: 127.0.0.1:1 } ]
      - id: plain
        host: plain.acme.localhost
        waf: {}
        backends: [ { address: 127.0.0.1:1 } ]
  - id: quiet
    waf: { level: off }
  - id: defaults
    waf: { mode: block, exclusions: [] }
"#;
    check(yaml, &[]);
    let cfg = validate(&parse_yaml(yaml).unwrap(), Path::new("/etc/tenantry")).unwrap();
    let w = &cfg.server.waf;
    assert_eq!(w.library, "/opt/modsec/libmodsecurity.so.3");
    assert_eq!(w.crs_dir, PathBuf::from("/etc/tenantry/crs"));
    assert_eq!(w.max_body, 65536);
    assert_eq!(w.on_large_body, WafLargeBody::Reject);
    assert_eq!(w.on_unavailable, WafUnavailable::Allow);
    assert_eq!((w.workers, w.queue), (Some(2), 64));
    assert_eq!(
        w.match_log,
        Some(PathBuf::from("/etc/tenantry/logs/waf.log"))
    );
    assert_eq!(
        w.extra_rules,
        [
            PathBuf::from("/etc/tenantry/rules/local.conf"),
            PathBuf::from("/etc/waf/more.conf")
        ]
    );
    let tuning = |l: &WafLevelTuning| (l.paranoia, l.executing_paranoia, l.threshold);
    assert_eq!(tuning(&w.basic), (1, 1, 20));
    assert_eq!(tuning(&w.standard), (2, 2, 5));
    assert_eq!(tuning(&w.strict), (3, 4, 4));

    let acme = cfg.snapshot.tenants().find(|t| t.id.as_str() == "acme");
    let acme = acme.unwrap();
    let tw = acme.waf.as_deref().unwrap();
    assert_eq!(tw.level, Some(WafLevel::Strict));
    assert_eq!(tw.mode, WafMode::Detect);
    assert_eq!(&*tw.exclusions, [920350, 942100], "sorted and deduplicated");
    let route = |id: &str| acme.routes.iter().find(|r| r.id.as_str() == id).unwrap();
    // `off` unquoted is the level, not YAML 1.1's boolean false.
    assert_eq!(
        route("web").waf,
        Some(RouteWaf {
            level: Some(WafLevel::Off),
            mode: None
        })
    );
    assert_eq!(route("api").waf.and_then(|w| w.mode), Some(WafMode::Block));
    assert_eq!(route("plain").waf, None, "an empty override is no override");
    let tenant = |id: &str| {
        cfg.snapshot
            .tenants()
            .find(|t| t.id.as_str() == id)
            .unwrap()
    };
    assert_eq!(
        tenant("quiet").waf.as_deref().map(|w| w.level),
        Some(Some(WafLevel::Off))
    );
    assert_eq!(tenant("defaults").waf, None, "the defaults cost nothing");

    // Without a `waf` section, the defaults.
    let cfg = validate(&parse_yaml(GOOD).unwrap(), Path::new("/etc/tenantry")).unwrap();
    assert_eq!(cfg.server.waf, WafSettings::default());
    assert!(cfg.snapshot.tenants().all(|t| t.waf.is_none()));
}

#[test]
fn waf_executing_paranoia_defaults_follow_paranoia() {
    let levels = |yaml: &str| {
        let cfg = validate(&parse_yaml(yaml).unwrap(), Path::new("/")).unwrap();
        let w = cfg.server.waf;
        [w.basic, w.standard, w.strict].map(|l| (l.paranoia, l.executing_paranoia))
    };
    assert_eq!(
        levels(
            "waf: { levels: { basic: { paranoia: 2 }, standard: { paranoia: 3 }, strict: { paranoia: 1 } } }"
        ),
        [(2, 2), (3, 3), (1, 3)]
    );
    assert_eq!(
        levels("waf: { levels: { strict: { paranoia: 4 } } }"),
        [(1, 1), (1, 1), (4, 4)]
    );
    assert_eq!(
        levels("waf: { levels: { strict: { threshold: 7 } } }"),
        [(1, 1), (1, 1), (2, 3)]
    );
    assert_eq!(
        levels("waf: { levels: { standard: { executing_paranoia: 2 } } }"),
        [(1, 1), (1, 2), (2, 3)]
    );
}

#[test]
fn waf_errors_name_their_field() {
    check(
        r#"
waf:
  library: ""
  crs: ""
  max_body: 0
  on_large_body: truncate
  on_unavailable: maybe
  workers: 0
  queue: 0
  extra_rules: [""]
  levels:
    basic: { paranoia: 5 }
    standard: { paranoia: 3, executing_paranoia: 2 }
    strict: { threshold: 0 }
tenants:
  - id: acme
    waf: { level: medium, mode: watch, exclusions: [0, 942100, 100000000, -3] }
    routes:
      - id: web
        host: acme.localhost
        waf: { level: "true", mode: Block }
        backends: [ { address: 127.0.0.1:1 } ]
"#,
        &[
            r#"waf.library: must not be empty"#,
            r#"waf.crs: must not be empty"#,
            r#"waf.extra_rules[0]: must not be empty"#,
            r#"waf.max_body: must be at least 1 (bytes)"#,
            r#"waf.on_large_body: unknown value "truncate" (expected reject or inspect_partial)"#,
            r#"waf.on_unavailable: unknown value "maybe" (expected deny or allow)"#,
            r#"waf.workers: must be at least 1"#,
            r#"waf.queue: must be at least 1"#,
            r#"waf.levels.basic.paranoia: must be between 1 and 4, got 5"#,
            r#"waf.levels.standard.executing_paranoia: must be between paranoia (3) and 4, got 2"#,
            r#"waf.levels.strict.threshold: must be between 1 and 4294967295, got 0"#,
            r#"tenants[0].routes[0].waf.level: unknown WAF level "true" (expected off, basic, standard or strict)"#,
            r#"tenants[0].routes[0].waf.mode: unknown WAF mode "Block" (expected block or detect)"#,
            r#"tenants[0].waf.level: unknown WAF level "medium" (expected off, basic, standard or strict)"#,
            r#"tenants[0].waf.mode: unknown WAF mode "watch" (expected block or detect)"#,
            r#"tenants[0].waf.exclusions[0]: must be a rule id between 1 and 99999999, got 0"#,
            r#"tenants[0].waf.exclusions[2]: must be a rule id between 1 and 99999999, got 100000000"#,
            r#"tenants[0].waf.exclusions[3]: must be a rule id between 1 and 99999999, got -3"#,
        ],
    );
    for yaml in [
        "waf: { librar: x }\n",
        "waf: { levels: { medium: {} } }\n",
        "waf: { levels: { basic: { paranoia_level: 1 } } }\n",
        "tenants: [ { id: a, waf: { levl: basic } } ]\n",
        "tenants: [ { id: a, routes: [ { id: r, host: h, waf: { exclusions: [1] }, backends: [] } ] } ]\n",
    ] {
        let err = parse_yaml(yaml).unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{yaml}: {err}");
    }
}

#[test]
fn waf_spec_from_the_api_has_relative_paths() {
    let ok = validate_waf_spec(&TenantWafSpec {
        level: Some("basic".into()),
        mode: None,
        exclusions: Some(vec![3, 1, 3]),
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        (ok.level, ok.mode, &*ok.exclusions),
        (Some(WafLevel::Basic), WafMode::Block, &[1, 3][..])
    );
    assert_eq!(validate_waf_spec(&TenantWafSpec::default()).unwrap(), None);
    let errs = validate_waf_spec(&TenantWafSpec {
        level: Some("max".into()),
        mode: Some("".into()),
        exclusions: Some(vec![0]),
    })
    .unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["level", "mode", "exclusions[0]"]);
}

#[test]
fn header_timeout_is_a_duration_of_at_least_a_second() {
    check(
        "limits: { header_timeout: 500ms }\ntenants: []\n",
        &["limits.header_timeout: must be at least 1s"],
    );
    check(
        "limits: { header_timeout: soon }\ntenants: []\n",
        &[r#"limits.header_timeout: invalid duration "soon": expected a number before the unit"#],
    );
}
