//! Tenant isolation and roles: every tenant-scoped endpoint of the OpenAPI document, called
//! with another tenant's id by every role of a tenant (users and API keys), answers 404 and
//! changes nothing; foreign ids under one's own URL are 404; platform-only endpoints are 403;
//! within a tenant, each role can do exactly what the access table says.

use super::*;

/// Tenant-scoped endpoints that only platform admins may call: 403 for everyone else,
/// whatever the tenant (the answer does not depend on the tenant, so it reveals nothing).
const PLATFORM_ONLY: &[(&str, &str)] = &[
    ("post", "/api/tenants/{tenant_id}/suspend"),
    ("post", "/api/tenants/{tenant_id}/reactivate"),
    ("put", "/api/tenants/{tenant_id}/limits"),
    ("delete", "/api/tenants/{tenant_id}"),
];

/// A plausible body for each writing endpoint, so that a rejection is about the caller.
fn body_for(method: &str, path: &str, backend: SocketAddr) -> Option<Value> {
    let end = path.rsplit('/').next().unwrap_or_default();
    match (method, end) {
        ("post", "routes") => Some(route("evil", "evil.localhost", "/", &[backend])),
        ("put", "{route_id}") => Some(route("b-web", "evil.localhost", "/", &[backend])),
        ("post", "users") => {
            Some(json!({"email": "evil@evil.test", "password": PASSWORD, "role": "owner"}))
        }
        ("patch", "{user_id}") => Some(json!({"role": "viewer"})),
        ("post", "api-keys") => Some(json!({"name": "evil", "role": "viewer"})),
        ("patch", "{tenant_id}") => Some(json!({"name": "pwned"})),
        ("put", "subscription") => Some(json!({"plan": "enterprise"})),
        ("put", "limits") => Some(json!({"max_users": null, "max_routes": null})),
        ("post" | "put" | "patch", _)
            if !matches!(end, "drain" | "activate" | "suspend" | "reactivate") =>
        {
            Some(json!({}))
        }
        _ => None,
    }
}

/// Every (method, path template) of the OpenAPI document with `{tenant_id}` in the path.
async fn tenant_endpoints(s: &Server) -> Vec<(String, String)> {
    let doc = s.api().must_get("/api/openapi.json").await;
    let mut v = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if !path.contains("{tenant_id}") {
            continue;
        }
        for m in ["get", "post", "put", "patch", "delete"] {
            if item.get(m).is_some() {
                v.push((m.to_owned(), path.clone()));
            }
        }
    }
    v
}

struct Ids {
    user: String,
    route: String,
    key: String,
    address: String,
}

fn fill(path: &str, tenant: &str, ids: &Ids) -> String {
    path.replace("{tenant_id}", tenant)
        .replace("{user_id}", &ids.user)
        .replace("{route_id}", &ids.route)
        .replace("{key_id}", &ids.key)
        .replace("{address}", &ids.address)
}

store_test!(cross_tenant_and_role_matrix, |backend| async {
    let echo = echo_backends(1).await;
    let addr = echo[0].addr;
    let s = backend.start().await;
    let admin = s.admin().await;

    // Tenant B: an owner, a member, a route, an API key.
    let b_owner = s.tenant(&admin, "tenant-b", "free").await;
    let b_member_id = b_owner
        .add_user("tenant-b", "member@tenant-b.test", "member")
        .await;
    let b_member = s.login("member@tenant-b.test", PASSWORD).await;
    let r = b_owner
        .post(
            "/api/tenants/tenant-b/routes",
            route("b-web", "b.localhost", "/", &[addr]),
        )
        .await;
    assert_status(r, 201);
    let (b_key_id, b_key) = b_owner.add_key("tenant-b", "b-ci", "member").await;
    let b_ids = Ids {
        user: b_member_id.clone(),
        route: "b-web".to_owned(),
        key: b_key_id.clone(),
        address: addr.to_string(),
    };

    // Tenant A: every role, as users and as API keys.
    let a_owner = s.tenant(&admin, "tenant-a", "pro").await;
    a_owner
        .add_user("tenant-a", "member@tenant-a.test", "member")
        .await;
    a_owner
        .add_user("tenant-a", "viewer@tenant-a.test", "viewer")
        .await;
    let a_extra = a_owner
        .add_user("tenant-a", "extra@tenant-a.test", "viewer")
        .await;
    let r = a_owner
        .post(
            "/api/tenants/tenant-a/routes",
            route("a-web", "a.localhost", "/", &[addr]),
        )
        .await;
    assert_status(r, 201);
    let (_, owner_key) = a_owner.add_key("tenant-a", "owner-key", "owner").await;
    let (_, member_key) = a_owner.add_key("tenant-a", "member-key", "member").await;
    let (_, viewer_key) = a_owner.add_key("tenant-a", "viewer-key", "viewer").await;
    let (spare_key, _) = a_owner.add_key("tenant-a", "spare", "viewer").await;
    let a_member = s.login("member@tenant-a.test", PASSWORD).await;
    let a_viewer = s.login("viewer@tenant-a.test", PASSWORD).await;
    let anon = s.api();
    // (label, role, client)
    let principals: Vec<(&str, &str, Api)> = vec![
        ("viewer", "viewer", a_viewer.clone()),
        ("viewer-key", "viewer", anon.token(&viewer_key)),
        ("member", "member", a_member.clone()),
        ("member-key", "member", anon.token(&member_key)),
        ("owner", "owner", a_owner.clone()),
        ("owner-key", "owner", anon.token(&owner_key)),
    ];

    // ---- Every tenant-scoped endpoint with B's id (and with a tenant that does not exist).
    let endpoints = tenant_endpoints(&s).await;
    assert!(
        endpoints.len() >= 25,
        "only {} tenant endpoints: {endpoints:?}",
        endpoints.len()
    );
    let export_before = b_owner.must_get("/api/tenants/tenant-b/export").await;
    // Control: B's owner reads every GET endpoint with these ids, so the ids are real and a
    // 404 below is about the caller's tenant.
    for (m, p) in endpoints.iter().filter(|(m, _)| m == "get") {
        let r = b_owner.get(&fill(p, "tenant-b", &b_ids)).await;
        assert_eq!(r.0, 200, "control {m} {p}: {}", r.1);
    }
    let mut checked = 0;
    for (label, _, client) in &principals {
        for (m, p) in &endpoints {
            let body = body_for(m, p, addr);
            let platform = PLATFORM_ONLY.contains(&(m.as_str(), p.as_str()));
            let (status, code) = if platform {
                (403, "forbidden")
            } else {
                (404, "not_found")
            };
            let method = m.to_uppercase();
            let r = client
                .call(&method, &fill(p, "tenant-b", &b_ids), body.as_ref())
                .await;
            assert_eq!(
                r.0.as_u16(),
                status,
                "{label}: {method} {p} on tenant-b: {}",
                r.1
            );
            assert_eq!(
                r.1["error"], code,
                "{label}: {method} {p} on tenant-b: {}",
                r.1
            );
            let nosuch = client
                .call(&method, &fill(p, "no-such-tenant", &b_ids), body.as_ref())
                .await;
            assert_eq!(
                (nosuch.0, &nosuch.1["error"]),
                (r.0, &r.1["error"]),
                "{label}: {method} {p}: an existing foreign tenant answers differently from a missing one"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, endpoints.len() * principals.len());

    // ---- Foreign ids under A's own URL.
    let a = "/api/tenants/tenant-a";
    let foreign: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", format!("{a}/users/{b_member_id}"), None),
        (
            "PATCH",
            format!("{a}/users/{b_member_id}"),
            Some(json!({"role": "viewer"})),
        ),
        (
            "PATCH",
            format!("{a}/users/{b_member_id}"),
            Some(json!({"password": "hijacked-password-1"})),
        ),
        ("DELETE", format!("{a}/users/{b_member_id}"), None),
        ("GET", format!("{a}/routes/b-web"), None),
        (
            "PUT",
            format!("{a}/routes/b-web"),
            Some(route("b-web", "a.localhost", "/b", &[addr])),
        ),
        ("DELETE", format!("{a}/routes/b-web"), None),
        (
            "POST",
            format!("{a}/routes/b-web/backends/{addr}/drain"),
            None,
        ),
        ("DELETE", format!("{a}/api-keys/{b_key_id}"), None),
    ];
    for (m, p, body) in &foreign {
        let r = a_owner.call(m, p, body.as_ref()).await;
        assert_err(&r, 404, "not_found");
    }
    // Global names: B's host and B's emails cannot be taken.
    let r = a_owner
        .post(
            &format!("{a}/routes"),
            route("steal", "b.localhost", "/steal", &[addr]),
        )
        .await;
    assert_err(&r, 409, "conflict");
    let r = a_owner
        .post(
            &format!("{a}/users"),
            json!({"email": "MEMBER@tenant-b.test", "password": PASSWORD, "role": "viewer"}),
        )
        .await;
    assert_err(&r, 409, "conflict");
    // Route ids are per tenant: A may have its own "b-web" without touching B's.
    let r = a_owner
        .post(
            &format!("{a}/routes"),
            route("b-web", "a.localhost", "/b", &[addr]),
        )
        .await;
    assert_status(r, 201);

    // B is exactly as before: data, tokens, keys and traffic.
    let export_after = b_owner.must_get("/api/tenants/tenant-b/export").await;
    assert_eq!(export_before, export_after, "tenant B changed");
    assert_eq!(b_member.must_get("/api/me").await["role"], "member");
    let r = s.proxy("b.localhost", "/").await;
    assert_eq!(r.status, 200, "{}", r.json());
    let t = b_owner.must_get("/api/tenants/tenant-b").await;
    assert_eq!(
        (t["name"].as_str(), t["status"].as_str()),
        (Some("tenant-b"), Some("active"))
    );

    // ---- Platform-only endpoints, even on one's own tenant.
    let free = admin.must_get("/api/plans/free").await["limits"].clone();
    let mut unlimited = free.clone();
    unlimited["max_users"] = Value::Null;
    let platform: Vec<(&str, String, Option<Value>)> = vec![
        (
            "POST",
            "/api/tenants".into(),
            Some(json!({"tenant_id": "evil"})),
        ),
        ("POST", format!("{a}/suspend"), None),
        ("POST", format!("{a}/reactivate"), None),
        ("PUT", "/api/plans/free".into(), Some(unlimited.clone())),
        (
            "POST",
            "/api/plans".into(),
            Some(json!({"name": "evil", "limits": free})),
        ),
        (
            "PUT",
            format!("{a}/limits"),
            Some(json!({"max_users": null})),
        ),
        ("DELETE", a.into(), None),
        ("GET", "/api/audit".into(), None),
    ];
    for client in [&a_owner, &anon.token(&owner_key), &b_owner] {
        for (m, p, body) in &platform {
            let r = client.call(m, p, body.as_ref()).await;
            assert_err(&r, 403, "forbidden");
        }
    }
    assert_eq!(admin.must_get("/api/plans/free").await["limits"], free);
    assert_err(&admin.get("/api/tenants/evil").await, 404, "not_found");
    assert_err(&admin.get("/api/plans/evil").await, 404, "not_found");
    assert_eq!(a_owner.must_get(a).await["status"], "active");
    let listed = a_owner.must_get("/api/tenants").await;
    let ids: Vec<&str> = listed
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(ids, ["tenant-a"], "a tenant owner lists other tenants");

    // ---- Roles within A. `None`: not checked for that role (a one-off success below).
    type Row = (&'static str, String, Option<Value>, [Option<u16>; 3]);
    let rows = |who: &str| -> Vec<Row> {
        vec![
            (
                "GET",
                a.to_string(),
                None,
                [Some(200), Some(200), Some(200)],
            ),
            (
                "GET",
                "/api/tenants".into(),
                None,
                [Some(200), Some(200), Some(200)],
            ),
            (
                "GET",
                "/api/plans".into(),
                None,
                [Some(200), Some(200), Some(200)],
            ),
            (
                "GET",
                format!("{a}/routes"),
                None,
                [Some(200), Some(200), Some(200)],
            ),
            (
                "GET",
                format!("{a}/users"),
                None,
                [Some(200), Some(200), Some(200)],
            ),
            (
                "GET",
                format!("{a}/api-keys"),
                None,
                [Some(200), Some(200), Some(200)],
            ),
            (
                "GET",
                format!("{a}/subscription"),
                None,
                [Some(200), Some(200), Some(200)],
            ),
            (
                "GET",
                format!("{a}/audit"),
                None,
                [Some(200), Some(200), Some(200)],
            ),
            (
                "POST",
                format!("{a}/routes"),
                Some(route(
                    &format!("r-{who}"),
                    "a.localhost",
                    &format!("/{who}"),
                    &[addr],
                )),
                [Some(403), Some(201), Some(201)],
            ),
            (
                "PUT",
                format!("{a}/routes/a-web"),
                Some(route("a-web", "a.localhost", "/", &[addr])),
                [Some(403), Some(200), Some(200)],
            ),
            (
                "POST",
                format!("{a}/routes/a-web/backends/{addr}/drain"),
                None,
                [Some(403), Some(200), Some(200)],
            ),
            (
                "POST",
                format!("{a}/routes/a-web/backends/{addr}/activate"),
                None,
                [Some(403), Some(200), Some(200)],
            ),
            (
                "DELETE",
                format!("{a}/routes/r-{who}"),
                None,
                [Some(403), Some(204), Some(204)],
            ),
            (
                "POST",
                format!("{a}/users"),
                Some(
                    json!({"email": format!("{who}-new@tenant-a.test"), "password": PASSWORD, "role": "viewer"}),
                ),
                [Some(403), Some(403), Some(201)],
            ),
            (
                "PATCH",
                format!("{a}/users/{a_extra}"),
                Some(json!({"role": "viewer"})),
                [Some(403), Some(403), Some(200)],
            ),
            (
                "DELETE",
                format!("{a}/users/{a_extra}"),
                None,
                [Some(403), Some(403), None],
            ),
            (
                "POST",
                format!("{a}/api-keys"),
                Some(json!({"name": format!("k-{who}"), "role": "viewer"})),
                [Some(403), Some(403), Some(201)],
            ),
            (
                "DELETE",
                format!("{a}/api-keys/{spare_key}"),
                None,
                [Some(403), Some(403), None],
            ),
            (
                "PATCH",
                a.to_string(),
                Some(json!({"name": format!("A by {who}")})),
                [Some(403), Some(403), Some(200)],
            ),
            (
                "GET",
                format!("{a}/export"),
                None,
                [Some(403), Some(403), Some(200)],
            ),
            (
                "PUT",
                format!("{a}/subscription"),
                Some(json!({"plan": "pro"})),
                [Some(403), Some(403), Some(200)],
            ),
        ]
    };
    for (label, role, client) in &principals {
        let i = ["viewer", "member", "owner"]
            .iter()
            .position(|r| r == role)
            .expect("role");
        for (m, p, body, expect) in rows(label) {
            let Some(want) = expect[i] else { continue };
            let r = client.call(m, &p, body.as_ref()).await;
            assert_eq!(r.0.as_u16(), want, "{label}: {m} {p}: {}", r.1);
            if want == 403 {
                assert_eq!(r.1["error"], "forbidden", "{label}: {m} {p}");
            }
        }
    }
    let r = a_owner.delete(&format!("{a}/users/{a_extra}")).await;
    assert_eq!(r.0, 204, "{}", r.1);
    let r = anon
        .token(&owner_key)
        .delete(&format!("{a}/api-keys/{spare_key}"))
        .await;
    assert_status(r, 200);
    // Member-made routes were created and deleted; the owners' are gone too.
    let routes = a_owner.must_get(&format!("{a}/routes")).await;
    let ids: Vec<&str> = routes
        .as_array()
        .expect("routes")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 2, "{routes}");
    assert!(ids.contains(&"a-web") && ids.contains(&"b-web"), "{routes}");
    // And B, once more, is untouched.
    assert_eq!(
        b_owner.must_get("/api/tenants/tenant-b/export").await,
        export_before
    ); // B's key still works (checked last: using a key updates its last_used_at).
    anon.token(&b_key)
        .must_get("/api/tenants/tenant-b/routes")
        .await;
});
