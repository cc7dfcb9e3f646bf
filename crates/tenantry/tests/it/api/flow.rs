//! The README flow through the API (sign up, create a route, traffic flows, replace, drain,
//! delete), and the tenant lifecycle (suspend, reactivate, delete with export).

use super::*;

/// Which backends answered `n` requests for `host/`.
async fn answered(s: &Server, host: &str, n: usize) -> Vec<String> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let r = s.proxy(host, "/").await;
        assert_eq!(r.status, 200, "{host}: {}", r.json());
        v.push(r.backend());
    }
    v.sort();
    v.dedup();
    v
}

store_test!(readme_flow, |backend| async {
    let b = echo_backends(3).await;
    let s = backend.start().await;
    let anon = s.api();

    // Sign up: a tenant on the Free plan, its owner and a token.
    let r = anon
        .post(
            "/api/signup",
            json!({"tenant_id": "acme", "tenant_name": "Acme Inc.",
                   "email": "Owner@Acme.test", "password": PASSWORD}),
        )
        .await;
    let body = assert_status(r, 201);
    assert_eq!(body["tenant_id"], "acme");
    assert_eq!(body["token_type"], "Bearer");
    let owner = anon.token(body["access_token"].as_str().expect("access_token"));
    let me = owner.must_get("/api/me").await;
    assert_eq!(me["role"], "owner");
    assert_eq!(me["tenant_id"], "acme");
    assert_eq!(
        me["email"], "owner@acme.test",
        "emails are stored lowercased"
    );
    assert_eq!(me["kind"], "user");
    let sub = owner.must_get("/api/tenants/acme/subscription").await;
    assert_eq!(sub["plan"], "free");

    // Sign-up conflicts and weak passwords.
    let r = anon
        .post(
            "/api/signup",
            json!({"tenant_id": "acme", "tenant_name": "Other", "email": "x@other.test", "password": PASSWORD}),
        )
        .await;
    assert_err(&r, 409, "conflict");
    let r = anon
        .post(
            "/api/signup",
            json!({"tenant_id": "other", "tenant_name": "Other", "email": "OWNER@acme.test", "password": PASSWORD}),
        )
        .await;
    assert_err(&r, 409, "conflict");
    let r = anon
        .post(
            "/api/signup",
            json!({"tenant_id": "other", "tenant_name": "Other", "email": "x@other.test", "password": "short"}),
        )
        .await;
    assert_err(&r, 422, "weak_password");
    // The failed sign-ups left nothing behind.
    let admin = s.admin().await;
    let r = admin.get("/api/tenants/other").await;
    assert_err(&r, 404, "not_found");

    // A route: applied before the 201, so traffic flows at once.
    let r = owner
        .post(
            "/api/tenants/acme/routes",
            route("web", "acme.localhost", "/", &[b[0].addr, b[1].addr]),
        )
        .await;
    let created = assert_status(r, 201);
    assert_eq!(created["id"], "web");
    assert_eq!(created["host"], "acme.localhost");
    assert_eq!(created["backends"].as_array().map(Vec::len), Some(2));
    assert_eq!(answered(&s, "acme.localhost", 4).await, ["b0", "b1"]);
    let got = owner.must_get("/api/tenants/acme/routes/web").await;
    assert_eq!(got["backends"], created["backends"]);
    let list = owner.must_get("/api/tenants/acme/routes").await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let r = owner
        .post(
            "/api/tenants/acme/routes",
            route("web", "acme.localhost", "/x", &[b[0].addr]),
        )
        .await;
    assert_err(&r, 409, "conflict");

    // PUT replaces the whole route.
    let r = owner
        .put(
            "/api/tenants/acme/routes/web",
            route("web", "acme.localhost", "/", &[b[2].addr]),
        )
        .await;
    assert_status(r, 200);
    assert_eq!(answered(&s, "acme.localhost", 4).await, ["b2"]);
    let r = owner
        .put(
            "/api/tenants/acme/routes/web",
            route("other", "acme.localhost", "/", &[b[2].addr]),
        )
        .await;
    assert_err(&r, 422, "validation_failed");
    let r = owner
        .put(
            "/api/tenants/acme/routes/nope",
            route("nope", "acme.localhost", "/", &[b[2].addr]),
        )
        .await;
    assert_err(&r, 404, "not_found");

    // Drain: no new requests to the drained backend; activate brings it back.
    let r = owner
        .put(
            "/api/tenants/acme/routes/web",
            route("web", "acme.localhost", "/", &[b[0].addr, b[1].addr]),
        )
        .await;
    assert_status(r, 200);
    let drain = format!("/api/tenants/acme/routes/web/backends/{}/drain", b[0].addr);
    let body = assert_status(owner.post_empty(&drain).await, 200);
    let states: Vec<(String, String)> = body["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|x| {
            (
                x["address"].as_str().unwrap_or_default().to_owned(),
                x["state"].as_str().unwrap_or("active").to_owned(),
            )
        })
        .collect();
    assert!(
        states.contains(&(b[0].addr.to_string(), "drain".to_owned())),
        "{body}"
    );
    let hits = b[0].hits();
    assert_eq!(answered(&s, "acme.localhost", 6).await, ["b1"]);
    assert_eq!(b[0].hits(), hits, "a drained backend got new requests");
    let r = owner
        .post_empty("/api/tenants/acme/routes/web/backends/127.0.0.1:1/drain")
        .await;
    assert_err(&r, 404, "not_found");
    let r = owner
        .post_empty(&drain.replace("/drain", "/activate"))
        .await;
    assert_status(r, 200);
    assert_eq!(answered(&s, "acme.localhost", 4).await, ["b0", "b1"]);

    // DELETE: the host is gone from the proxy at once.
    let r = owner.delete("/api/tenants/acme/routes/web").await;
    assert_eq!(r.0, 204, "{}", r.1);
    let r = s.proxy("acme.localhost", "/").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "unknown_host");
    assert_err(
        &owner.get("/api/tenants/acme/routes/web").await,
        404,
        "not_found",
    );
    assert_err(
        &owner.delete("/api/tenants/acme/routes/web").await,
        404,
        "not_found",
    );
    // The host is free again: the same tenant can use it for another route.
    let r = owner
        .post(
            "/api/tenants/acme/routes",
            route("web2", "acme.localhost", "/", &[b[1].addr]),
        )
        .await;
    assert_status(r, 201);
    assert_eq!(answered(&s, "acme.localhost", 2).await, ["b1"]);
});

store_test!(suspend_reactivate_delete, |backend| async {
    let b = echo_backends(1).await;
    let s = backend.start().await;
    let admin = s.admin().await;
    let owner = s.tenant(&admin, "acme", "free").await;
    owner.add_user("acme", "member@acme.test", "member").await;
    let (_, key) = owner.add_key("acme", "ci", "member").await;
    let r = owner
        .post(
            "/api/tenants/acme/routes",
            route("web", "acme.localhost", "/", &[b[0].addr]),
        )
        .await;
    assert_status(r, 201);
    assert_eq!(s.proxy("acme.localhost", "/").await.status, 200);

    // Suspend: the proxy answers 403 tenant_suspended; writes are refused, reads are not.
    let r = admin.post_empty("/api/tenants/acme/suspend").await;
    assert_eq!(assert_status(r, 200)["status"], "suspended");
    let r = s.proxy("acme.localhost", "/").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "tenant_suspended");
    let hits = b[0].hits();
    let writes = [
        owner
            .post(
                "/api/tenants/acme/routes",
                route("api", "acme.localhost", "/api", &[b[0].addr]),
            )
            .await,
        owner
            .put(
                "/api/tenants/acme/routes/web",
                route("web", "acme.localhost", "/", &[b[0].addr]),
            )
            .await,
        owner.delete("/api/tenants/acme/routes/web").await,
        owner
            .patch("/api/tenants/acme", json!({"name": "Renamed"}))
            .await,
        owner
            .post(
                "/api/tenants/acme/users",
                json!({"email": "v@acme.test", "password": PASSWORD, "role": "viewer"}),
            )
            .await,
        owner
            .put("/api/tenants/acme/subscription", json!({"plan": "pro"}))
            .await,
        owner
            .token(&key)
            .delete("/api/tenants/acme/routes/web")
            .await,
    ];
    for r in &writes {
        assert_err(r, 403, "tenant_suspended");
    }
    owner.must_get("/api/tenants/acme/routes/web").await;
    owner.must_get("/api/tenants/acme/users").await;
    let t = owner.must_get("/api/tenants/acme").await;
    assert_eq!(t["status"], "suspended");
    // "A suspended tenant's users may still read and export."
    owner.must_get("/api/tenants/acme/export").await;
    assert_eq!(
        b[0].hits(),
        hits,
        "a suspended tenant's backend got traffic"
    );

    // Reactivate: traffic and writes again.
    let r = admin.post_empty("/api/tenants/acme/reactivate").await;
    assert_eq!(assert_status(r, 200)["status"], "active");
    assert_eq!(s.proxy("acme.localhost", "/").await.status, 200);
    let r = owner
        .post(
            "/api/tenants/acme/routes",
            route("api", "acme.localhost", "/api", &[b[0].addr]),
        )
        .await;
    assert_status(r, 201);

    // Delete: the answer is the export, without secrets; everything is gone afterwards.
    let r = admin
        .raw("DELETE", "/api/tenants/acme", &[], bytes::Bytes::new())
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let text = String::from_utf8_lossy(&r.body).into_owned();
    let export = r.json();
    assert_eq!(export["tenant"]["id"], "acme", "{export}");
    let ids: Vec<&str> = export["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert!(ids.contains(&"web") && ids.contains(&"api"), "{export}");
    let emails: Vec<&str> = export["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter_map(|u| u["email"].as_str())
        .collect();
    assert!(
        emails.contains(&"owner@acme.test") && emails.contains(&"member@acme.test"),
        "{export}"
    );
    assert!(
        !text.contains("$argon2"),
        "the export leaks password hashes"
    );
    assert!(!text.contains(&key), "the export leaks an API key");
    assert!(
        !text.contains("password_hash"),
        "the export names password hashes"
    );

    let r = s.proxy("acme.localhost", "/").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "unknown_host");
    assert_err(&admin.get("/api/tenants/acme").await, 404, "not_found");
    assert_err(&admin.delete("/api/tenants/acme").await, 404, "not_found");
    assert_err(&owner.get("/api/me").await, 401, "unauthorized");
    assert_err(&owner.token(&key).get("/api/me").await, 401, "unauthorized");
    let r = s
        .api()
        .post(
            "/api/auth/login",
            json!({"email": "owner@acme.test", "password": PASSWORD}),
        )
        .await;
    assert_err(&r, 401, "invalid_credentials");
    // Its id, emails and host are free again.
    let again = s.tenant(&admin, "acme", "free").await;
    let r = again
        .post(
            "/api/tenants/acme/routes",
            route("web", "acme.localhost", "/", &[b[0].addr]),
        )
        .await;
    assert_status(r, 201);
    assert_eq!(s.proxy("acme.localhost", "/").await.status, 200);
    again.add_user("acme", "member@acme.test", "member").await;
});
