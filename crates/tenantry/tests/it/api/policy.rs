//! Tenant LLM policies and route rate limits through the API: who may set them, validation,
//! and the proxy applying them before the response returns.

use super::*;

store_test!(policy_and_route_limits_through_the_api, |backend| async {
    let echo = echo_backends(1).await;
    let s = backend.start().await;
    let admin = s.admin().await;
    let owner = s.tenant(&admin, "acme", "pro").await;
    let other = s.tenant(&admin, "globex", "pro").await;
    let viewer_id = owner.add_user("acme", "viewer@acme.test", "viewer").await;
    assert!(!viewer_id.is_empty());
    let viewer = s.login("viewer@acme.test", PASSWORD).await;
    let p = "/api/tenants/acme/policy";

    // Nothing restricted at first.
    assert_eq!(owner.must_get(p).await, json!({}));
    let policy = json!({"allowed_models": ["gpt-4o-mini"], "allowed_tools": []});
    assert_err(&viewer.put(p, policy.clone()).await, 403, "forbidden");
    assert_err(&other.put(p, policy.clone()).await, 404, "not_found");
    assert_err(&other.get(p).await, 404, "not_found");
    let r = owner
        .put(p, json!({"allowed_models": [""], "allowed_tools": "x"}))
        .await;
    assert_eq!(r.0.as_u16(), 422, "{}", r.1);
    let r = owner.put(p, json!({"allowed_models": [""]})).await;
    assert_err(&r, 422, "validation_failed");
    assert_eq!(
        assert_status(owner.put(p, policy.clone()).await, 200),
        policy
    );
    assert_eq!(viewer.must_get(p).await, policy);

    // An LLM route with its own rate limit: applied before the 201.
    let mut r = route("llm", "llm.acme.localhost", "/", &[echo[0].addr]);
    r["kind"] = json!("llm");
    r["ratelimit"] = json!({"requests_per_minute": 60, "burst": 2, "key": "route"});
    assert_status(owner.post("/api/tenants/acme/routes", r.clone()).await, 201);
    let got = owner.must_get("/api/tenants/acme/routes/llm").await;
    assert_eq!(got["kind"], "llm");
    assert_eq!(got["ratelimit"], r["ratelimit"]);
    let c = HttpClient::new();
    let send = |model: &str| {
        let c = c.clone();
        let body = Bytes::from(json!({"model": model, "messages": []}).to_string());
        let addr = s.t.http;
        async move {
            c.request(
                "POST",
                addr,
                "llm.acme.localhost",
                "/v1/chat/completions",
                &[("content-type", "application/json")],
                body,
            )
            .await
            .expect("proxy")
        }
    };
    let denied = send("gpt-4").await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json()["error"], "policy_denied");
    assert_eq!(
        denied.json()["reason"],
        "model \"gpt-4\" is not allowed for tenant acme"
    );
    assert_eq!(send("gpt-4o-mini").await.status, 200);
    let limited = send("gpt-4o-mini").await;
    assert_eq!(
        limited.status, 429,
        "burst 2: the denied request counted too"
    );
    assert_eq!(limited.json()["error"], "rate_limited");

    // Lifting the policy applies at once; the audit log has both changes.
    assert_eq!(assert_status(owner.put(p, json!({})).await, 200), json!({}));
    let audit = owner.must_get("/api/tenants/acme/audit").await;
    let actions: Vec<&str> = audit
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .filter(|a| *a == "tenant.policy")
        .collect();
    assert_eq!(actions.len(), 2);

    // Usage: the plan's rate, tokens this minute, bytes this billing period.
    assert_err(
        &other.get("/api/tenants/acme/usage").await,
        404,
        "not_found",
    );
    let u = viewer.must_get("/api/tenants/acme/usage").await;
    assert_eq!(u["plan"], "pro");
    assert_eq!(u["requests_per_minute"], 6000);
    assert_eq!(u["on_quota"], "notify");
    let quotas = u["quotas"].as_array().expect("quotas");
    assert_eq!(quotas[0]["quota"], "tokens_per_minute");
    assert_eq!(quotas[0]["limit"], 200_000);
    assert_eq!(quotas[1]["quota"], "bandwidth_gb_month");
    assert_eq!(quotas[1]["limit"], 500_000_000_000_u64);
    assert!(quotas[1]["used"].as_u64().expect("used") > 0, "{u}");
    assert!(
        quotas[1]["resets_at"]
            .as_str()
            .expect("resets_at")
            .ends_with('Z')
    );

    // A bad rate limit is refused with its path.
    let mut bad = route("bad", "bad.acme.localhost", "/", &[echo[0].addr]);
    bad["ratelimit"] = json!({"requests_per_minute": 0, "key": "nobody"});
    let r = owner.post("/api/tenants/acme/routes", bad).await;
    assert_err(&r, 422, "validation_failed");
    let text = r.1.to_string();
    assert!(text.contains("ratelimit.requests_per_minute"), "{text}");
    assert!(text.contains("ratelimit.key"), "{text}");
});
