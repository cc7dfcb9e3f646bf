//! The audit log: every write leaves an entry with actor, action, target and client address;
//! the tenant sees its own entries (paged, newest first), the platform sees all of them.

use super::*;

fn entries(v: &Value) -> &Vec<Value> {
    v.as_array().expect("audit entries")
}

store_test!(audit_log_records_writes, |backend| async {
    let echo = echo_backends(1).await;
    let b0 = echo[0].addr;
    let s = backend.start().await;
    let admin = s.admin().await;
    let owner = s.tenant(&admin, "acme", "free").await;
    let owner_id = owner.my_id().await;
    let other = s.tenant(&admin, "globex", "free").await;
    let t = "/api/tenants/acme";

    // Some writes, from two addresses.
    let r = owner
        .post(
            &format!("{t}/routes"),
            route("web", "acme.localhost", "/", &[b0]),
        )
        .await;
    assert_status(r, 201);
    let r = owner
        .put(
            &format!("{t}/routes/web"),
            route("web", "acme.localhost", "/v2", &[b0]),
        )
        .await;
    assert_status(r, 200);
    let member_id = owner.add_user("acme", "member@acme.test", "member").await;
    let (key_id, key) = owner.add_key("acme", "ci", "member").await;
    let r = owner.patch(t, json!({"name": "Acme Renamed"})).await;
    assert_status(r, 200);
    let from_elsewhere = Api::from_ip(s.admin, client_ip(7)).token(&key);
    let r = from_elsewhere
        .post_empty(&format!("{t}/routes/web/backends/{b0}/drain"))
        .await;
    assert_status(r, 200);
    let r = owner.delete(&format!("{t}/routes/web")).await;
    assert_eq!(r.0, 204);
    // Refused writes leave nothing.
    let r = owner
        .post(&format!("{t}/routes"), route("bad", "", "/", &[b0]))
        .await;
    assert_err(&r, 422, "validation_failed");
    let r = other
        .post(
            "/api/tenants/globex/routes",
            route("g", "globex.localhost", "/", &[b0]),
        )
        .await;
    assert_status(r, 201);

    let log = owner.must_get(&format!("{t}/audit")).await;
    let log = entries(&log);
    let find = |action: &str, target: &str| {
        log.iter()
            .find(|e| {
                e["action"] == action && e["target"].as_str().is_some_and(|t| t.contains(target))
            })
            .unwrap_or_else(|| panic!("no {action} {target} in {log:#?}"))
            .clone()
    };
    for (action, target) in [
        ("route.create", "web"),
        ("route.update", "web"),
        ("route.delete", "web"),
        ("user.create", member_id.as_str()),
        ("api_key.create", key_id.as_str()),
        ("tenant.update", "acme"),
    ] {
        let e = find(action, target);
        assert_eq!(e["actor"], owner_id, "{e}");
        assert_eq!(e["ip"], "127.0.0.1", "{e}");
        assert_eq!(e["tenant_id"], "acme", "{e}");
        assert!(
            e["at"].as_i64().is_some_and(|at| at > 1_600_000_000_000),
            "{e}"
        );
    }
    let created = find("route.create", "web");
    assert!(
        created["before"].is_null() && created["after"]["id"] == "web",
        "{created}"
    );
    let deleted = find("route.delete", "web");
    assert!(
        deleted["before"]["id"] == "web" && deleted["after"].is_null(),
        "{deleted}"
    );
    let drained = find("backend.update", "web");
    assert_eq!(
        drained["actor"], key_id,
        "an API key's writes are attributed to the key"
    );
    assert_eq!(drained["ip"], client_ip(7).to_string(), "{drained}");
    // (Route entries only: generated user and key ids are hex and may contain "bad".)
    assert!(
        !log.iter().any(|e| e["action"]
            .as_str()
            .is_some_and(|a| a.starts_with("route."))
            && e["target"].as_str().is_some_and(|t| t.contains("bad"))),
        "the refused write left an entry: {log:#?}"
    );
    assert!(
        !log.iter().any(|e| e["tenant_id"] != "acme"),
        "another tenant's entries leak in"
    );
    let ids: Vec<i64> = log.iter().map(|e| e["id"].as_i64().expect("id")).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "not newest first: {ids:?}"
    );

    // Nothing secret in the log.
    let text = log.iter().map(Value::to_string).collect::<String>();
    assert!(
        !text.contains("$argon2"),
        "password hashes in the audit log"
    );
    assert!(!text.contains(&key), "an API key in the audit log");

    // Paging.
    let page = owner.must_get(&format!("{t}/audit?limit=2")).await;
    assert_eq!(entries(&page).len(), 2);
    assert_eq!(entries(&page)[0]["id"], ids[0]);
    let before = ids[1];
    let older = owner
        .must_get(&format!("{t}/audit?before={before}&limit=1000"))
        .await;
    let older_ids: Vec<i64> = entries(&older)
        .iter()
        .map(|e| e["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(older_ids, ids[2..], "paging with before");

    // Viewers read it too; the platform log has every tenant's entries.
    owner.add_user("acme", "viewer@acme.test", "viewer").await;
    let viewer = s.login("viewer@acme.test", PASSWORD).await;
    viewer.must_get(&format!("{t}/audit")).await;
    let all = admin.must_get("/api/audit?limit=1000").await;
    let all = entries(&all);
    for id in &ids {
        assert!(
            all.iter().any(|e| e["id"] == *id),
            "entry {id} missing from the platform log"
        );
    }
    assert!(
        all.iter()
            .any(|e| e["tenant_id"] == "globex" && e["action"] == "route.create")
    );
    assert!(
        all.iter().any(|e| e["action"] == "tenant.create"
            && e["target"] == "acme"
            && e["actor"] != "system"),
        "creating a tenant is attributed to the admin"
    );
    let globex = other.must_get("/api/tenants/globex/audit").await;
    assert!(!entries(&globex).iter().any(|e| e["tenant_id"] == "acme"));
});
