//! Log-in: the token answer, one indistinguishable answer for a wrong password and an
//! unknown email, and the throttle per client address and per account.

use super::*;

fn creds(email: &str, password: &str) -> Value {
    json!({"email": email, "password": password})
}

store_test!(login_answers_and_throttles, |backend| async {
    let s = backend.start().await;
    let anon = s.api();

    let r = anon
        .post("/api/auth/login", creds(ADMIN_EMAIL, ADMIN_PASSWORD))
        .await;
    let body = assert_status(r, 200);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600, "default auth.token_ttl is 1h");
    let token = body["access_token"].as_str().expect("access_token");
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let me = anon.token(token).must_get("/api/me").await;
    assert_eq!(me["role"], "platform_admin");
    assert_eq!(me["email"], ADMIN_EMAIL);
    assert!(me.get("tenant_id").is_none_or(Value::is_null), "{me}");

    // Emails are case-insensitive and trimmed.
    let r = anon
        .post(
            "/api/auth/login",
            creds(&format!(" {} ", ADMIN_EMAIL.to_uppercase()), ADMIN_PASSWORD),
        )
        .await;
    assert_status(r, 200);

    // A tenant user logs in the same way.
    let admin = s.admin().await;
    let owner = s.tenant(&admin, "acme", "free").await;
    assert_eq!(owner.must_get("/api/me").await["tenant_id"], "acme");

    // Wrong password and unknown email: the same status and the same body.
    let wrong = anon
        .post(
            "/api/auth/login",
            creds(ADMIN_EMAIL, "not-the-password-at-all"),
        )
        .await;
    assert_err(&wrong, 401, "invalid_credentials");
    let unknown = anon
        .post(
            "/api/auth/login",
            creds("nobody@nowhere.test", ADMIN_PASSWORD),
        )
        .await;
    assert_err(&unknown, 401, "invalid_credentials");
    assert_eq!(wrong.1, unknown.1, "the answers tell the cases apart");
    let r = anon
        .post("/api/auth/login", creds("owner@acme.test", ""))
        .await;
    assert_eq!(r.1, wrong.1);
    // Malformed log-in bodies.
    let r = anon
        .post("/api/auth/login", json!({"email": ADMIN_EMAIL}))
        .await;
    assert_err(&r, 422, "validation_failed");

    // Per client address: after the free failures, the address is blocked, even for a
    // correct password, while other addresses are not.
    let attacker = s.api_from(1);
    let mut statuses = Vec::new();
    for i in 0..8 {
        let r = attacker
            .post(
                "/api/auth/login",
                creds(&format!("guess{i}@nowhere.test"), "wrong-password-123"),
            )
            .await;
        statuses.push(r.0.as_u16());
        if r.0 == 429 {
            assert_err(&r, 429, "rate_limited");
            break;
        }
        assert_err(&r, 401, "invalid_credentials");
    }
    assert_eq!(statuses.last(), Some(&429), "never throttled: {statuses:?}");
    assert!(statuses.len() >= 5, "throttled too early: {statuses:?}");
    let r = attacker
        .raw(
            "POST",
            "/api/auth/login",
            &[("content-type", "application/json")],
            serde_json::to_vec(&creds(ADMIN_EMAIL, ADMIN_PASSWORD)).expect("json"),
        )
        .await;
    assert_eq!(r.status, 429, "{}", r.json());
    assert_eq!(r.json()["error"], "rate_limited");
    let retry: u64 = r.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("Retry-After is whole seconds");
    assert!((1..=900).contains(&retry), "Retry-After {retry}");
    let r = s
        .api_from(2)
        .post("/api/auth/login", creds(ADMIN_EMAIL, ADMIN_PASSWORD))
        .await;
    assert_status(r, 200);

    // Per account: failures from many addresses block the account (for every address).
    let mut throttled = false;
    for n in 10..20 {
        let r = s
            .api_from(n)
            .post(
                "/api/auth/login",
                creds("owner@acme.test", "wrong-password-123"),
            )
            .await;
        if r.0 == 429 {
            assert_err(&r, 429, "rate_limited");
            throttled = true;
            break;
        }
        assert_err(&r, 401, "invalid_credentials");
    }
    assert!(
        throttled,
        "an account under attack from many addresses was never throttled"
    );
    let r = s
        .api_from(30)
        .raw(
            "POST",
            "/api/auth/login",
            &[("content-type", "application/json")],
            serde_json::to_vec(&creds("owner@acme.test", PASSWORD)).expect("json"),
        )
        .await;
    assert_eq!(r.status, 429, "{}", r.json());
    assert!(r.headers.contains_key("retry-after"));
    // The owner's existing token keeps working: throttling concerns log-ins only.
    owner.must_get("/api/me").await;
});

store_test!(signup_is_throttled_per_address, |backend| async {
    let s = backend.start().await;
    let anon = s.api_from(1);
    let mut statuses = Vec::new();
    for i in 0..10 {
        let r = anon
            .post(
                "/api/signup",
                json!({"tenant_id": format!("t{i}"), "tenant_name": "T",
                       "email": format!("o{i}@t.test"), "password": PASSWORD}),
            )
            .await;
        statuses.push(r.0.as_u16());
        if r.0 == 429 {
            assert_err(&r, 429, "rate_limited");
            break;
        }
        assert_status(r, 201);
    }
    assert_eq!(statuses.last(), Some(&429), "never throttled: {statuses:?}");
    assert!(statuses.len() >= 5, "throttled too early: {statuses:?}");
    // Another address may still sign up.
    let r = s
        .api_from(2)
        .post(
            "/api/signup",
            json!({"tenant_id": "other", "tenant_name": "T", "email": "o@other.test", "password": PASSWORD}),
        )
        .await;
    assert_status(r, 201);
});
