//! Bad input on the API: malformed JSON (400), wrong types and unknown fields (422), missing
//! content type (415), oversized bodies (413), invalid slugs and values (422), and hostile
//! strings in every string field (never a 5xx; accepted values read back unchanged).

use super::*;

const JSON: (&str, &str) = ("content-type", "application/json");

/// Percent-encodes a path segment.
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Records a problem unless `r` is a 4xx with the error shape.
fn check_4xx(problems: &mut Vec<String>, what: &str, r: &Res) {
    if !r.0.is_client_error() || !r.1["error"].is_string() || !r.1["message"].is_string() {
        problems.push(format!("{what}: {} {}", r.0, r.1));
    }
}

store_test!(malformed_and_invalid_bodies, |backend| async {
    let echo = echo_backends(1).await;
    let b0 = echo[0].addr;
    let s = backend.start().await;
    let admin = s.admin().await;
    let owner = s.tenant(&admin, "acme", "pro").await;
    let free = admin.must_get("/api/plans/free").await["limits"].clone();

    // (who, method, path, a valid body, a string field to retype)
    let mut ip = 0;
    let endpoints: Vec<(&Api, &str, &str, Value, &str)> = vec![
        (
            &owner,
            "POST",
            "/api/tenants/acme/routes",
            route("web", "acme.localhost", "/", &[b0]),
            "id",
        ),
        (
            &owner,
            "PUT",
            "/api/tenants/acme/routes/web",
            route("web", "acme.localhost", "/", &[b0]),
            "host",
        ),
        (
            &owner,
            "POST",
            "/api/tenants/acme/users",
            json!({"email": "u@acme.test", "password": PASSWORD, "role": "viewer"}),
            "email",
        ),
        (
            &owner,
            "PATCH",
            "/api/tenants/acme",
            json!({"name": "Acme"}),
            "name",
        ),
        (
            &owner,
            "PUT",
            "/api/tenants/acme/subscription",
            json!({"plan": "pro"}),
            "plan",
        ),
        (
            &owner,
            "POST",
            "/api/tenants/acme/api-keys",
            json!({"name": "ci"}),
            "name",
        ),
        (
            &owner,
            "POST",
            "/api/me/password",
            json!({"current_password": PASSWORD, "new_password": PASSWORD}),
            "new_password",
        ),
        (
            &admin,
            "POST",
            "/api/tenants",
            json!({"tenant_id": "globex"}),
            "tenant_id",
        ),
        (&admin, "PUT", "/api/plans/free", free.clone(), "waf_level"),
        (
            &admin,
            "PUT",
            "/api/tenants/acme/limits",
            json!({"waf_level": "basic"}),
            "waf_level",
        ),
        (
            &admin,
            "POST",
            "/api/plans",
            json!({"name": "gold", "limits": free}),
            "name",
        ),
        // Public endpoints (each from its own address: sign-ups are throttled per address).
        (
            &admin,
            "POST",
            "/api/signup",
            json!({"tenant_id": "x", "tenant_name": "X", "email": "x@x.test", "password": PASSWORD}),
            "tenant_id",
        ),
        (
            &admin,
            "POST",
            "/api/auth/login",
            json!({"email": "x@x.test", "password": PASSWORD}),
            "email",
        ),
    ];
    let big = format!("{{\"id\": \"{}\"}}", "a".repeat(300 * 1024));
    for (who, m, p, valid, field) in &endpoints {
        let mut client = (*who).clone();
        if p.starts_with("/api/signup") || p.starts_with("/api/auth") {
            ip += 1;
            client = s.api_from(ip);
        }
        let send = async |headers: &[(&str, &str)], body: Vec<u8>| -> Res {
            // A transport error shows as 599 with the error, so the assertion names the case.
            match client.try_raw(m, p, headers, body).await {
                Ok(r) => (r.status, r.json()),
                Err(e) => (
                    StatusCode::from_u16(599).expect("599"),
                    json!({"transport_error": e}),
                ),
            }
        };
        let what = |case: &str| format!("{m} {p}: {case}");
        let text = valid.to_string();
        let truncated = &text[..text.len() / 2];
        for bad in [
            truncated,
            "{",
            "{\"",
            "{,}",
            "not json",
            "{'single': 1}",
            "",
        ] {
            let r = send(&[JSON], bad.as_bytes().to_vec()).await;
            assert_eq!(r.0, 400, "{}: {}", what(&format!("malformed {bad:?}")), r.1);
            assert_eq!(r.1["error"], "bad_request", "{}", what(bad));
        }
        // An array is refused too, though serde would fill a struct from it by position.
        let positional: Vec<Value> = valid
            .as_object()
            .map(|o| o.values().cloned().collect())
            .unwrap_or_default();
        for bad in [
            json!([]),
            Value::Array(positional),
            json!("string"),
            json!(null),
            json!(42),
        ] {
            let r = send(&[JSON], bad.to_string().into_bytes()).await;
            assert_eq!(r.0, 422, "{}: {}", what(&format!("wrong type {bad}")), r.1);
            assert_eq!(r.1["error"], "validation_failed", "{}", what("wrong type"));
        }
        let mut retyped = valid.clone();
        retyped[*field] = json!(12345);
        let r = send(&[JSON], retyped.to_string().into_bytes()).await;
        assert_eq!(
            r.0,
            422,
            "{}: {}",
            what(&format!("{field} as a number")),
            r.1
        );
        assert_eq!(r.1["error"], "validation_failed");
        assert_eq!(
            r.1["errors"][0]["path"],
            *field,
            "{}",
            what("the field named")
        );
        let mut unknown = valid.clone();
        unknown["is_admin"] = json!(true);
        let r = send(&[JSON], unknown.to_string().into_bytes()).await;
        assert_eq!(r.0, 422, "{}: {}", what("unknown field"), r.1);
        assert_eq!(r.1["error"], "validation_failed");
        let body = valid.to_string().into_bytes();
        for headers in [
            &[][..],
            &[("content-type", "text/plain")][..],
            &[("content-type", "application/x-www-form-urlencoded")][..],
        ] {
            let r = send(headers, body.clone()).await;
            assert_eq!(
                r.0,
                415,
                "{}: {}",
                what(&format!("headers {headers:?}")),
                r.1
            );
            assert_eq!(r.1["error"], "unsupported_media_type");
        }
        let r = client.fresh().raw(m, p, &[JSON], big.clone()).await;
        let r = (r.status, r.json());
        assert_eq!(r.0, 413, "{}: {}", what("300 KiB body"), r.1);
        assert_eq!(r.1["error"], "payload_too_large");
    }
    // None of that created anything.
    assert_eq!(owner.must_get("/api/tenants/acme/routes").await, json!([]));
    assert_err(&admin.get("/api/tenants/globex").await, 404, "not_found");
    assert_err(&admin.get("/api/tenants/x").await, 404, "not_found");

    // Invalid values: 422 with the field named.
    let r = owner
        .post(
            "/api/tenants/acme/routes",
            route("web", "acme.localhost", "/", &[b0]),
        )
        .await;
    assert_status(r, 201);
    let invalid_routes = [
        ("id", json!("Bad Id")),
        ("id", json!("")),
        ("id", json!("a/b")),
        ("id", json!("x".repeat(64))),
        ("host", json!("")),
        ("host", json!("bad host")),
        ("host", json!("http://acme.localhost")),
        ("path_prefix", json!("no-slash")),
        ("algorithm", json!("fastest")),
        ("backends", json!([])),
        ("backends", json!([{"address": "nowhere"}])),
        ("backends", json!([{"address": "127.0.0.1:99999"}])),
        (
            "backends",
            json!([{"address": b0.to_string(), "weight": 0}]),
        ),
        (
            "backends",
            json!([{"address": b0.to_string(), "state": "sleeping"}]),
        ),
    ];
    for (field, value) in invalid_routes {
        let mut body = route("api", "acme.localhost", "/api", &[b0]);
        body[field] = value.clone();
        let r = owner.post("/api/tenants/acme/routes", body.clone()).await;
        assert_err(&r, 422, "validation_failed");
        let put_body = {
            let mut b = body;
            if field != "id" {
                b["id"] = json!("web");
            }
            b
        };
        if field != "id" {
            let r = owner.put("/api/tenants/acme/routes/web", put_body).await;
            assert_err(&r, 422, "validation_failed");
        }
    }
    let r = owner
        .post(
            "/api/tenants/acme/routes",
            json!({"id": "api", "host": "api.acme.localhost", "backends": [{"address": b0.to_string()}]}),
        )
        .await;
    assert_eq!(
        assert_status(r, 201)["id"],
        "api",
        "optional fields may be omitted"
    );
    let slugs = ["UPPER", "a_b", "", "ü", "a b", "../etc", &"a".repeat(64)];
    for (n, slug) in slugs.iter().enumerate() {
        let r = s
            .api_from(100 + u32::try_from(n).expect("n"))
            .post(
                "/api/signup",
                json!({"tenant_id": slug, "tenant_name": "T", "email": format!("s{n}@t.test"), "password": PASSWORD}),
            )
            .await;
        assert_err(&r, 422, "validation_failed");
        let r = admin.post("/api/tenants", json!({"tenant_id": slug})).await;
        assert_err(&r, 422, "validation_failed");
    }
    let users = [
        (
            json!({"email": "not-an-email", "password": PASSWORD, "role": "viewer"}),
            "validation_failed",
        ),
        (
            json!({"email": "a@b", "password": PASSWORD, "role": "viewer"}),
            "validation_failed",
        ),
        (
            json!({"email": "u@acme.test", "password": PASSWORD, "role": "platform_admin"}),
            "validation_failed",
        ),
        (
            json!({"email": "u@acme.test", "password": PASSWORD, "role": "root"}),
            "validation_failed",
        ),
        (
            json!({"email": "u@acme.test", "password": "short", "role": "viewer"}),
            "weak_password",
        ),
        (
            json!({"email": "longlocalpart@acme.test", "password": "longlocalpart@acme.test", "role": "viewer"}),
            "weak_password",
        ),
        (
            json!({"email": "u@acme.test", "password": "x".repeat(1025), "role": "viewer"}),
            "weak_password",
        ),
    ];
    for (body, code) in users {
        let r = owner.post("/api/tenants/acme/users", body).await;
        assert_err(&r, 422, code);
    }
    assert_err(
        &owner
            .post("/api/tenants/acme/api-keys", json!({"name": ""}))
            .await,
        422,
        "validation_failed",
    );
    assert_err(
        &owner
            .post(
                "/api/tenants/acme/api-keys",
                json!({"name": "k", "role": "platform_admin"}),
            )
            .await,
        422,
        "validation_failed",
    );
    assert_err(
        &owner
            .patch("/api/tenants/acme", json!({"name": "  "}))
            .await,
        422,
        "validation_failed",
    );
    assert_err(
        &owner.get("/api/tenants/acme/audit?limit=0").await,
        422,
        "validation_failed",
    );
    assert_err(
        &owner.get("/api/tenants/acme/audit?limit=5000").await,
        422,
        "validation_failed",
    );
    assert_eq!(owner.users_count().await, 1, "a refused user was created");

    // Every error has the shape, also outside the handlers' bodies.
    let anon = s.api();
    let odd: Vec<(&Api, &str, &str)> = vec![
        (&owner, "GET", "/api/tenants/acme/audit?limit=abc"),
        (&owner, "GET", "/api/tenants/acme/audit?bogus=1"),
        (&owner, "GET", "/api/tenants/acme/users/%FF"),
        (&owner, "GET", "/api/tenants/%FF/users"),
        (&owner, "GET", "/api/nope"),
        (&anon, "GET", "/api/nope"),
        (&owner, "PATCH", "/api/plans"),
        (&owner, "DELETE", "/api/tenants/acme/routes"),
    ];
    let mut problems = Vec::new();
    for (c, m, p) in odd {
        let r = c.raw(m, p, &[], bytes::Bytes::new()).await;
        check_4xx(&mut problems, &format!("{m} {p}"), &(r.status, r.json()));
    }
    assert!(
        problems.is_empty(),
        "errors without the error shape: {problems:#?}"
    );
    assert_err(&owner.get("/api/nope").await, 404, "not_found");
    assert_err(
        &owner.call("PATCH", "/api/plans", Some(&json!({}))).await,
        405,
        "method_not_allowed",
    );
});

/// Strings that have broken SQL, JSON and logging code before.
fn hostile() -> Vec<String> {
    vec![
        "'; DROP TABLE tenants; --".into(),
        "\" OR 1=1 --".into(),
        "' OR '1'='1".into(),
        "Robert'); DELETE FROM users; --".into(),
        "x'||(SELECT password_hash FROM users LIMIT 1)||'".into(),
        "ünïcødé-名前-🚀-\u{202e}txet".into(),
        "nul\u{0}byte-and-more".into(),
        "\u{0}".into(),
        "%00%27%22\\x00".into(),
        "back\\slash\\\"quote".into(),
        "$1 $$ :name ? %s {}".into(),
        "line\r\nbreak\ttab".into(),
        "a".repeat(5000),
    ]
}

trait Count {
    async fn users_count(&self) -> usize;
}

impl Count for Api {
    async fn users_count(&self) -> usize {
        self.must_get("/api/tenants/acme/users")
            .await
            .as_array()
            .map_or(0, Vec::len)
    }
}

store_test!(hostile_strings_never_5xx, |backend| async {
    let echo = echo_backends(1).await;
    let b0 = echo[0].addr;
    let s = backend.start().await;
    let admin = s.admin().await;
    let owner = s.tenant(&admin, "acme", "enterprise").await;
    let web = route("web", "acme.localhost", "/", &[b0]);
    assert_status(
        owner.post("/api/tenants/acme/routes", web.clone()).await,
        201,
    );
    let values = hostile();
    let mut accepted = Vec::new();
    let mut problems = Vec::new();
    let mut signups = 0;
    let mut n = 0;

    for v in &values {
        // Sign-up: each string field in turn.
        for field in ["tenant_id", "tenant_name", "email", "password"] {
            n += 1;
            let mut body = json!({"tenant_id": format!("h{n}"), "tenant_name": "Hostile",
                                  "email": format!("o{n}@h.test"), "password": PASSWORD});
            body[field] = json!(v);
            let r = s.api_from(n).post("/api/signup", body.clone()).await;
            let what = format!("signup {field}={v:?}");
            if r.0.is_success() {
                signups += 1;
                accepted.push(what.clone());
                let tenant = r.1["tenant_id"].as_str().expect("tenant_id").to_owned();
                let email = body["email"].as_str().expect("email");
                let password = body["password"].as_str().expect("password");
                let c = s
                    .api_from(n)
                    .token(r.1["access_token"].as_str().expect("token"));
                let t = c.must_get(&format!("/api/tenants/{}", seg(&tenant))).await;
                assert_eq!(
                    t["name"],
                    body["tenant_name"].as_str().expect("name").trim(),
                    "{what}"
                );
                assert_eq!(
                    c.must_get("/api/me").await["email"],
                    email.trim().to_lowercase(),
                    "{what}"
                );
                s.login(email, password).await;
            } else {
                check_4xx(&mut problems, &what, &r);
            }
        }

        // Routes: each string field in turn.
        for field in ["id", "host", "path_prefix", "algorithm", "address"] {
            let mut body = route("hostile", "acme.localhost", "/hostile", &[b0]);
            if field == "address" {
                body["backends"][0]["address"] = json!(v);
            } else {
                body[field] = json!(v);
            }
            let what = format!("route {field}={v:?}");
            let r = owner.post("/api/tenants/acme/routes", body).await;
            if r.0.is_success() {
                accepted.push(what.clone());
                let id = r.1["id"].as_str().expect("id").to_owned();
                let path = format!("/api/tenants/acme/routes/{}", seg(&id));
                assert_eq!(
                    owner.must_get(&path).await,
                    r.1,
                    "{what}: read back differs"
                );
                assert_eq!(owner.delete(&path).await.0, 204, "{what}");
            } else {
                check_4xx(&mut problems, &what, &r);
            }
            // PUT on an existing route too.
            let mut body = route("web", "acme.localhost", "/", &[b0]);
            if field == "address" {
                body["backends"][0]["address"] = json!(v);
            } else if field != "id" {
                body[field] = json!(v);
            }
            let r = owner.put("/api/tenants/acme/routes/web", body).await;
            if r.0.is_success() {
                let read = owner.must_get("/api/tenants/acme/routes/web").await;
                assert_eq!(read, r.1, "PUT {what}: read back differs");
                assert_status(
                    owner.put("/api/tenants/acme/routes/web", web.clone()).await,
                    200,
                );
            } else {
                check_4xx(&mut problems, &format!("PUT {what}"), &r);
            }
        }

        // Users: each string field in turn.
        for field in ["email", "password", "role"] {
            n += 1;
            let mut body =
                json!({"email": format!("u{n}@acme.test"), "password": PASSWORD, "role": "viewer"});
            body[field] = json!(v);
            let what = format!("user {field}={v:?}");
            let r = owner.post("/api/tenants/acme/users", body.clone()).await;
            if r.0.is_success() {
                accepted.push(what.clone());
                let id = r.1["id"].as_str().expect("id").to_owned();
                let email = body["email"].as_str().expect("email");
                let logged = s
                    .login(email, body["password"].as_str().expect("password"))
                    .await;
                assert_eq!(logged.my_id().await, id, "{what}");
                let r = owner
                    .delete(&format!("/api/tenants/acme/users/{}", seg(&id)))
                    .await;
                assert_eq!(r.0, 204, "{what}: {}", r.1);
            } else {
                check_4xx(&mut problems, &what, &r);
            }
        }

        // Names (tenant rename, API key label) and path segments.
        let r = owner.patch("/api/tenants/acme", json!({"name": v})).await;
        if r.0.is_success() {
            assert_eq!(
                owner.must_get("/api/tenants/acme").await["name"],
                v.trim(),
                "rename {v:?}"
            );
        } else {
            check_4xx(&mut problems, &format!("rename {v:?}"), &r);
        }
        let r = owner
            .post("/api/tenants/acme/api-keys", json!({"name": v}))
            .await;
        if !r.0.is_success() {
            check_4xx(&mut problems, &format!("key name {v:?}"), &r);
        }
        for p in [
            format!("/api/tenants/{}", seg(v)),
            format!("/api/tenants/acme/routes/{}", seg(v)),
            format!("/api/tenants/acme/users/{}", seg(v)),
            format!("/api/plans/{}", seg(v)),
        ] {
            let r = owner.get(&p).await;
            check_4xx(&mut problems, &format!("GET {p}"), &r);
        }
        let r = s
            .api_from(n)
            .post("/api/auth/login", json!({"email": v, "password": v}))
            .await;
        // NUL is refused before any lookup (422); anything else is just a wrong login.
        let expected = if v.contains('\0') {
            (422, "validation_failed")
        } else {
            (401, "invalid_credentials")
        };
        if r.0 != expected.0 || r.1["error"] != expected.1 {
            problems.push(format!("login with {v:?}: {} {}", r.0, r.1));
        }
    }
    assert!(
        problems.is_empty(),
        "answers that are not a 4xx with the error shape: {problems:#?}"
    );

    // Still serving, and every table is intact.
    eprintln!(
        "accepted hostile values ({}): {accepted:#?}",
        accepted.len()
    );
    let tenants = admin.must_get("/api/tenants").await;
    assert_eq!(
        tenants.as_array().map_or(0, Vec::len),
        1 + signups,
        "{tenants}"
    );
    assert_eq!(owner.users_count().await, 1);
    owner.must_get("/api/tenants/acme/routes/web").await;
    owner.must_get("/api/tenants/acme/audit").await;
    admin.must_get("/api/plans").await;
    assert_eq!(s.proxy("acme.localhost", "/").await.status, 200);
    s.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
});

// A body that stops arriving gets 408 naming the cause, not a 500 when the request's overall
// deadline passes; the process keeps serving.
store_test!(a_stalled_body_gets_408, |backend| async {
    let s = backend.start().await;
    let admin = s.admin().await;
    s.tenant(&admin, "acme", "pro").await;
    let token = admin.token.clone().expect("admin token");
    let head = format!(
        "PUT /api/tenants/acme/waf HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"level\":"
    );
    let started = std::time::Instant::now();
    let out =
        tenantry_testkit::raw_request(s.admin, head.as_bytes(), Duration::from_secs(25)).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("\"error\":\"request_timeout\""), "{out}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(admin.get("/api/tenants/acme/waf").await.0, 200);
});
