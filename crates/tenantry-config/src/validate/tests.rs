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
