//! Plan limits through the API: every counted limit of the Free plan, upgrade, blocked
//! downgrade, plan edits and per-tenant overrides, and concurrent creations at the limit.

use super::*;

#[track_caller]
fn assert_limit(r: &Res, limit: &str, max: u64, plan: &str) {
    assert_err(r, 403, "plan_limit");
    assert_eq!(r.1["limit"], limit, "{}", r.1);
    assert_eq!(r.1["max"], max, "{}", r.1);
    assert_eq!(r.1["plan"], plan, "{}", r.1);
}

fn user(email: &str) -> Value {
    json!({"email": email, "password": PASSWORD, "role": "viewer"})
}

fn count(v: &Value) -> usize {
    v.as_array().map_or(0, Vec::len)
}

store_test!(free_plan_limits_upgrade_downgrade, |backend| async {
    let echo = echo_backends(3).await;
    let (b0, b1, b2) = (echo[0].addr, echo[1].addr, echo[2].addr);
    let s = backend.start().await;
    let anon = s.api();
    let r = anon
        .post(
            "/api/signup",
            json!({"tenant_id": "acme", "tenant_name": "Acme", "email": "owner@acme.test", "password": PASSWORD}),
        )
        .await;
    let owner = anon.token(
        assert_status(r, 201)["access_token"]
            .as_str()
            .expect("token"),
    );
    let t = "/api/tenants/acme";

    // max_users 3, the owner included.
    owner.add_user("acme", "u1@acme.test", "member").await;
    owner.add_user("acme", "u2@acme.test", "viewer").await;
    let r = owner
        .post(&format!("{t}/users"), user("u3@acme.test"))
        .await;
    assert_limit(&r, "max_users", 3, "free");
    assert_eq!(
        r.1,
        json!({"error": "plan_limit", "message": r.1["message"], "limit": "max_users", "max": 3, "plan": "free"}),
        "the plan_limit body has exactly these fields"
    );
    assert_eq!(count(&owner.must_get(&format!("{t}/users")).await), 3);

    // max_backends_per_route 2.
    let r = owner
        .post(
            &format!("{t}/routes"),
            route("r0", "acme.localhost", "/", &[b0, b1, b2]),
        )
        .await;
    assert_limit(&r, "max_backends_per_route", 2, "free");
    let r = owner
        .post(
            &format!("{t}/routes"),
            route("r0", "acme.localhost", "/", &[b0, b1]),
        )
        .await;
    assert_status(r, 201);
    let r = owner
        .put(
            &format!("{t}/routes/r0"),
            route("r0", "acme.localhost", "/", &[b0, b1, b2]),
        )
        .await;
    assert_limit(&r, "max_backends_per_route", 2, "free");

    // max_domains 1: a second distinct host.
    let r = owner
        .post(
            &format!("{t}/routes"),
            route("r1", "www.acme.localhost", "/", &[b0]),
        )
        .await;
    assert_limit(&r, "max_domains", 1, "free");
    let r = owner
        .put(
            &format!("{t}/routes/r0"),
            route("r0", "www.acme.localhost", "/", &[b0]),
        )
        .await;
    assert_status(r, 200);
    let r = owner
        .put(
            &format!("{t}/routes/r0"),
            route("r0", "acme.localhost", "/", &[b0]),
        )
        .await;
    assert_status(r, 200);

    // max_routes 5.
    for i in 1..5 {
        let r = owner
            .post(
                &format!("{t}/routes"),
                route(&format!("r{i}"), "acme.localhost", &format!("/p{i}"), &[b0]),
            )
            .await;
        assert_status(r, 201);
    }
    let r = owner
        .post(
            &format!("{t}/routes"),
            route("r5", "acme.localhost", "/p5", &[b0]),
        )
        .await;
    assert_limit(&r, "max_routes", 5, "free");
    assert_eq!(count(&owner.must_get(&format!("{t}/routes")).await), 5);
    // Nothing refused reached the proxy.
    assert_eq!(s.proxy("www.acme.localhost", "/").await.status, 404);
    assert_eq!(
        s.proxy("acme.localhost", "/p5").await.backend(),
        "b0",
        "served by r0"
    );

    // Upgrade to Pro lifts every limit at once.
    let r = owner
        .put(&format!("{t}/subscription"), json!({"plan": "pro"}))
        .await;
    let sub = assert_status(r, 200);
    assert_eq!(sub["plan"], "pro");
    assert_eq!(sub["limits"]["max_users"], 10);
    owner.add_user("acme", "u3@acme.test", "viewer").await;
    let r = owner
        .post(
            &format!("{t}/routes"),
            route("r5", "www.acme.localhost", "/", &[b0, b1, b2]),
        )
        .await;
    assert_status(r, 201);
    assert_eq!(s.proxy("www.acme.localhost", "/").await.status, 200);

    // Downgrade below usage is refused, and changes nothing.
    let r = owner
        .put(&format!("{t}/subscription"), json!({"plan": "free"}))
        .await;
    assert_err(&r, 409, "downgrade_blocked");
    assert_eq!(r.1["plan"], "free", "{}", r.1);
    let limit = r.1["limit"].as_str().unwrap_or_default();
    assert!(
        [
            "max_users",
            "max_routes",
            "max_backends_per_route",
            "max_domains"
        ]
        .contains(&limit),
        "{}",
        r.1
    );
    assert!(r.1["usage"].as_u64() > r.1["max"].as_u64(), "{}", r.1);
    assert_eq!(
        owner.must_get(&format!("{t}/subscription")).await["plan"],
        "pro"
    );
    let r = owner
        .put(&format!("{t}/subscription"), json!({"plan": "gold"}))
        .await;
    assert_err(&r, 404, "not_found");

    // Remove what exceeds Free, then the downgrade goes through.
    let users = owner.must_get(&format!("{t}/users")).await;
    let u3 = users
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["email"] == "u3@acme.test")
        .expect("u3")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(owner.delete(&format!("{t}/users/{u3}")).await.0, 204);
    assert_eq!(owner.delete(&format!("{t}/routes/r5")).await.0, 204);
    let r = owner
        .put(&format!("{t}/subscription"), json!({"plan": "free"}))
        .await;
    assert_eq!(assert_status(r, 200)["plan"], "free");
});

store_test!(plan_edits_and_overrides, |backend| async {
    let echo = echo_backends(1).await;
    let b0 = echo[0].addr;
    let s = backend.start().await;
    let admin = s.admin().await;
    let owner = s.tenant(&admin, "acme", "free").await;
    let t = "/api/tenants/acme";

    let plans = admin.must_get("/api/plans").await;
    let names: Vec<&str> = plans
        .as_array()
        .expect("plans")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for p in ["free", "pro", "enterprise"] {
        assert!(names.contains(&p), "{plans}");
    }
    assert_eq!(
        owner.must_get("/api/plans/free").await["limits"]["max_routes"],
        5
    );

    // The platform admin edits Free: the tenant gets the new limits at once.
    let mut limits = admin.must_get("/api/plans/free").await["limits"].clone();
    limits["max_routes"] = json!(1);
    let r = admin.put("/api/plans/free", limits.clone()).await;
    assert_eq!(assert_status(r, 200)["limits"]["max_routes"], 1);
    assert_eq!(
        owner.must_get(&format!("{t}/subscription")).await["limits"]["max_routes"],
        1
    );
    let r = owner
        .post(
            &format!("{t}/routes"),
            route("r0", "acme.localhost", "/", &[b0]),
        )
        .await;
    assert_status(r, 201);
    let r = owner
        .post(
            &format!("{t}/routes"),
            route("r1", "acme.localhost", "/a", &[b0]),
        )
        .await;
    assert_limit(&r, "max_routes", 1, "free");
    limits["max_routes"] = json!(2);
    assert_status(admin.put("/api/plans/free", limits.clone()).await, 200);
    let r = owner
        .post(
            &format!("{t}/routes"),
            route("r1", "acme.localhost", "/a", &[b0]),
        )
        .await;
    assert_status(r, 201);
    // Invalid plan bodies and unknown plans.
    let mut bad = limits.clone();
    bad["waf_level"] = json!("paranoid");
    assert_err(
        &admin.put("/api/plans/free", bad).await,
        422,
        "validation_failed",
    );
    let mut bad = limits.clone();
    bad["max_routes"] = json!(-1);
    assert_err(
        &admin.put("/api/plans/free", bad).await,
        422,
        "validation_failed",
    );
    assert_err(
        &admin.put("/api/plans/gold", limits.clone()).await,
        404,
        "not_found",
    );
    let r = admin
        .post("/api/plans", json!({"name": "gold", "limits": limits}))
        .await;
    assert_eq!(assert_status(r, 201)["name"], "gold");
    let r = admin
        .post("/api/plans", json!({"name": "gold", "limits": limits}))
        .await;
    assert_err(&r, 409, "conflict");
    let r = admin
        .post(
            "/api/plans",
            json!({"name": "Not A Slug", "limits": limits}),
        )
        .await;
    assert_err(&r, 422, "validation_failed");

    // Overrides: a number replaces the plan's value, null means unlimited, absent keeps it.
    let r = admin
        .put(&format!("{t}/limits"), json!({"max_users": 1}))
        .await;
    let sub = assert_status(r, 200);
    assert_eq!(sub["limits"]["max_users"], 1);
    assert_eq!(
        sub["limits"]["max_routes"], 2,
        "an absent field keeps the plan's value"
    );
    let r = owner
        .post(&format!("{t}/users"), user("u1@acme.test"))
        .await;
    assert_err(&r, 403, "plan_limit");
    assert_eq!(
        (r.1["limit"].as_str(), r.1["max"].as_u64()),
        (Some("max_users"), Some(1)),
        "{}",
        r.1
    );
    let r = admin
        .put(
            &format!("{t}/limits"),
            json!({"max_users": null, "max_routes": null}),
        )
        .await;
    let sub = assert_status(r, 200);
    assert!(sub["limits"]["max_users"].is_null(), "{sub}");
    for i in 1..5 {
        owner
            .add_user("acme", &format!("u{i}@acme.test"), "viewer")
            .await;
    }
    for i in 2..8 {
        let r = owner
            .post(
                &format!("{t}/routes"),
                route(&format!("r{i}"), "acme.localhost", &format!("/p{i}"), &[b0]),
            )
            .await;
        assert_status(r, 201);
    }
    assert_eq!(count(&owner.must_get(&format!("{t}/users")).await), 5);
    assert_eq!(count(&owner.must_get(&format!("{t}/routes")).await), 8);
    let r = admin
        .put(&format!("{t}/limits"), json!({"max_users": "many"}))
        .await;
    assert_err(&r, 422, "validation_failed");
    let r = admin
        .put(&format!("{t}/limits"), json!({"max_userz": 3}))
        .await;
    assert_err(&r, 422, "validation_failed");
    assert_err(
        &admin.put("/api/tenants/nope/limits", json!({})).await,
        404,
        "not_found",
    );
});

store_test!(concurrent_creations_respect_limits, |backend| async {
    let echo = echo_backends(1).await;
    let b0 = echo[0].addr;
    let s = backend.start().await;
    let admin = s.admin().await;
    let owner = s.tenant(&admin, "acme", "free").await;
    let t = "/api/tenants/acme";

    // Twelve routes at once against max_routes 5: exactly five are created.
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let c = owner.clone();
            tokio::spawn(async move {
                c.post(
                    "/api/tenants/acme/routes",
                    route(&format!("r{i}"), "acme.localhost", &format!("/p{i}"), &[b0]),
                )
                .await
            })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        let r = task.await.expect("task");
        match r.0.as_u16() {
            201 => created += 1,
            _ => assert_limit(&r, "max_routes", 5, "free"),
        }
    }
    assert_eq!(created, 5);
    assert_eq!(count(&owner.must_get(&format!("{t}/routes")).await), 5);

    // Six users at once against max_users 3 (the owner is one): exactly two are created.
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let c = owner.clone();
            tokio::spawn(async move {
                c.post("/api/tenants/acme/users", user(&format!("u{i}@acme.test")))
                    .await
            })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        let r = task.await.expect("task");
        match r.0.as_u16() {
            201 => created += 1,
            _ => assert_limit(&r, "max_users", 3, "free"),
        }
    }
    assert_eq!(created, 2);
    assert_eq!(count(&owner.must_get(&format!("{t}/users")).await), 3);

    // New hosts at once against max_domains 1: at most four of the five routes move, so
    // acme.localhost stays in use and every move would make a second distinct host.
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let c = owner.clone();
            tokio::spawn(async move {
                c.put(
                    &format!("/api/tenants/acme/routes/r{}", i),
                    route(&format!("r{i}"), &format!("h{i}.localhost"), "/", &[b0]),
                )
                .await
            })
        })
        .collect();
    for task in tasks {
        let r = task.await.expect("task");
        if r.0 == 404 {
            assert_err(&r, 404, "not_found"); // that route id lost the race above
        } else {
            assert_limit(&r, "max_domains", 1, "free");
        }
    }
    let routes = owner.must_get(&format!("{t}/routes")).await;
    let mut hosts: Vec<&str> = routes
        .as_array()
        .expect("routes")
        .iter()
        .filter_map(|r| r["host"].as_str())
        .collect();
    hosts.sort();
    hosts.dedup();
    assert_eq!(
        hosts.len(),
        1,
        "more distinct hosts than max_domains: {routes}"
    );
});

// Concurrent writes to one tenant: each write reads the tenant back from the store and
// applies it to the proxy. Unserialised, an older read could be applied after a newer one
// and the proxy kept serving a setting the API no longer reported, until the next write.
store_test!(
    concurrent_writes_leave_the_proxy_on_the_last_one,
    |backend| async {
        let echo = echo_backends(1).await;
        let s = backend.start().await;
        let admin = s.admin().await;
        let owner = s.tenant(&admin, "race", "pro").await;
        let r = owner
            .post(
                "/api/tenants/race/routes",
                route("web", "race.localhost", "/", &[echo[0].addr]),
            )
            .await;
        assert_status(r, 201);
        for round in 0..30 {
            let writes: Vec<_> = (0..32)
                .map(|i| {
                    let c = admin.clone();
                    let rpm = if (i + round) % 2 == 0 { 1000 } else { 2000 };
                    tokio::spawn(async move {
                        c.put(
                            "/api/tenants/race/limits",
                            json!({"requests_per_minute": rpm}),
                        )
                        .await
                    })
                })
                .collect();
            for w in writes {
                let r = w.await.expect("write task");
                assert_eq!(r.0, 200, "{}", r.1);
            }
            let stored = admin.must_get("/api/tenants/race/usage").await["requests_per_minute"]
                .as_u64()
                .expect("requests_per_minute");
            let served = s.proxy("race.localhost", "/").await;
            assert_eq!(served.status, 200);
            let limit = served
                .headers
                .get("ratelimit-limit")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert_eq!(
                limit,
                stored.to_string(),
                "round {round}: the proxy serves another limit than the API reports"
            );
        }
    }
);

// Limits that mean nothing (a rate of 0, a bucket of 0) or overflow the limiter are refused
// with the field named, for a tenant's overrides and for a plan; a refused write changes
// nothing.
store_test!(limit_values_out_of_range_are_refused, |backend| async {
    let s = backend.start().await;
    let admin = s.admin().await;
    s.tenant(&admin, "acme", "pro").await;
    let before = admin.must_get("/api/tenants/acme/usage").await;
    for (field, value) in [
        ("requests_per_minute", json!(0)),
        ("requests_per_minute", json!(1_000_000_001_u64)),
        ("burst", json!(0)),
        ("burst", json!(u64::MAX)),
        ("tokens_per_minute", json!(u64::MAX)),
        ("bandwidth_gb_month", json!(u64::MAX)),
        ("max_users", json!(u64::MAX)),
    ] {
        let r = admin
            .put("/api/tenants/acme/limits", json!({ field: value }))
            .await;
        assert_err(&r, 422, "validation_failed");
        assert_eq!(r.1["errors"][0]["path"], field, "{}", r.1);
    }
    assert_eq!(admin.must_get("/api/tenants/acme/usage").await, before);
    let mut limits = admin.must_get("/api/plans/free").await["limits"].clone();
    limits["requests_per_minute"] = json!(0);
    let r = admin
        .post("/api/plans", json!({"name": "nothing", "limits": limits}))
        .await;
    assert_err(&r, 422, "validation_failed");
    assert_err(&admin.get("/api/plans/nothing").await, 404, "not_found");
    // The bounds themselves are fine, and null is unlimited.
    for body in [
        json!({"requests_per_minute": 1, "burst": 1}),
        json!({"requests_per_minute": 1_000_000_000, "burst": 1_000_000_000}),
        json!({"requests_per_minute": null, "bandwidth_gb_month": 0}),
    ] {
        let r = admin.put("/api/tenants/acme/limits", body.clone()).await;
        assert_eq!(r.0, 200, "{body}: {}", r.1);
    }
});
