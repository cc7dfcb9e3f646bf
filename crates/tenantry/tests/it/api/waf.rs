//! Tenant and route WAF settings through the API: who may read and set them, validation with
//! field paths, the plan's level as the default, and file-managed tenants.

use std::time::Duration;

use tenantry_auth::TokenIssuer;
use tenantry_domain::Role;

use super::tokens::now;
use super::*;

const HOUR: Duration = Duration::from_secs(3600);

/// The field paths of a `validation_failed` answer.
fn paths(r: &Res) -> Vec<String> {
    r.1["errors"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|e| e["path"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

store_test!(waf_settings_through_the_api, |backend| async {
    let echo = echo_backends(1).await;
    let s = backend.start().await;
    let admin = s.admin().await;
    let owner = s.tenant(&admin, "acme", "pro").await;
    let other = s.tenant(&admin, "globex", "enterprise").await;
    owner.add_user("acme", "viewer@acme.test", "viewer").await;
    let viewer = s.login("viewer@acme.test", PASSWORD).await;
    let p = "/api/tenants/acme/waf";

    // At first: the plan's level, blocking, nothing excluded.
    let defaults = json!({"level": null, "mode": "block", "exclusions": [],
                          "plan_level": "standard", "effective_level": "standard"});
    assert_eq!(viewer.must_get(p).await, defaults);

    // Owner sets them; the answer and later reads are normalised (ids sorted, deduplicated).
    let body = json!({"level": "strict", "mode": "detect", "exclusions": [942100, 920350, 942100]});
    let set = json!({"level": "strict", "mode": "detect", "exclusions": [920350, 942100],
                     "plan_level": "standard", "effective_level": "strict"});
    assert_eq!(assert_status(owner.put(p, body.clone()).await, 200), set);
    assert_eq!(owner.must_get(p).await, set);
    assert_eq!(viewer.must_get(p).await, set);

    // Without a level the plan's applies, and follows a plan change.
    let r = owner.put(p, json!({"exclusions": [941100]})).await;
    let got = assert_status(r, 200);
    assert_eq!(got["level"], Value::Null);
    assert_eq!(got["mode"], "block");
    assert_eq!(got["effective_level"], "standard");
    let r = owner
        .put(
            "/api/tenants/acme/subscription",
            json!({"plan": "enterprise"}),
        )
        .await;
    assert_status(r, 200);
    let got = owner.must_get(p).await;
    assert_eq!(
        (&got["plan_level"], &got["effective_level"]),
        (&json!("strict"), &json!("strict"))
    );
    assert_eq!(got["exclusions"], json!([941100]));

    // Another tenant's settings are not there for it (404, as for a tenant that does not
    // exist); a viewer may read but not write.
    assert_err(&other.get(p).await, 404, "not_found");
    assert_err(&other.put(p, body.clone()).await, 404, "not_found");
    assert_err(&viewer.put(p, body.clone()).await, 403, "forbidden");

    // Forged and expired tokens.
    let owner_id = owner.my_id().await;
    let forged = TokenIssuer::hs256(b"garbage-secret-garbage-secret-00", "tenantry", HOUR)
        .issue(&owner_id, Some("acme"), Role::Owner, 0, now())
        .expect("issue")
        .0;
    let expired = TokenIssuer::hs256(&s.jwt_secret(), "tenantry", HOUR)
        .issue(&owner_id, Some("acme"), Role::Owner, 0, now() - 2 * 3600)
        .expect("issue")
        .0;
    for token in [&forged, &expired] {
        let api = s.api().token(token);
        assert_err(&api.get(p).await, 401, "unauthorized");
        assert_err(&api.put(p, body.clone()).await, 401, "unauthorized");
    }
    assert_err(&s.api().put(p, body.clone()).await, 401, "unauthorized");

    // Bad values are refused with their field, and nothing changes.
    let r = owner
        .put(
            p,
            json!({"level": "medium", "mode": "watch", "exclusions": [942100, 0, 100000000]}),
        )
        .await;
    assert_err(&r, 422, "validation_failed");
    assert_eq!(
        paths(&r),
        ["level", "mode", "exclusions[1]", "exclusions[2]"]
    );
    let text = r.1["message"].as_str().unwrap_or_default();
    assert!(text.contains(r#"unknown WAF level "medium""#), "{text}");
    let r = owner.put(p, json!({"level": "basic", "paranoia": 4})).await;
    assert_err(&r, 422, "validation_failed");
    assert!(
        r.1["message"]
            .as_str()
            .unwrap_or_default()
            .contains("paranoia"),
        "{}",
        r.1
    );
    let r = owner.put(p, json!({"exclusions": ["942100"]})).await;
    assert_err(&r, 422, "validation_failed");
    assert_eq!(owner.must_get(p).await["exclusions"], json!([941100]));

    // `{}` restores the defaults; each change left an audit row.
    assert_status(owner.put(p, json!({})).await, 200);
    let got = owner.must_get(p).await;
    assert_eq!(
        (&got["level"], &got["mode"]),
        (&Value::Null, &json!("block"))
    );
    assert_eq!(got["exclusions"], json!([]));
    let audit = owner.must_get("/api/tenants/acme/audit").await;
    let n = audit
        .as_array()
        .expect("list")
        .iter()
        .filter(|e| e["action"] == "tenant.waf_updated")
        .count();
    assert_eq!(n, 3);

    // A route's own level and mode are kept with it and shown back; bad ones name the field.
    let mut r = route("web", "acme.localhost", "/", &[echo[0].addr]);
    r["waf"] = json!({"level": "off"});
    let created = assert_status(owner.post("/api/tenants/acme/routes", r.clone()).await, 201);
    assert_eq!(created["waf"], json!({"level": "off"}));
    r["waf"] = json!({"level": "basic", "mode": "detect"});
    assert_status(
        owner.put("/api/tenants/acme/routes/web", r.clone()).await,
        200,
    );
    let got = owner.must_get("/api/tenants/acme/routes/web").await;
    assert_eq!(got["waf"], json!({"level": "basic", "mode": "detect"}));
    let list = owner.must_get("/api/tenants/acme/routes").await;
    assert_eq!(list[0]["waf"], got["waf"]);
    assert_eq!(s.proxy("acme.localhost", "/").await.status, 200);
    let mut bad = route("bad", "bad.acme.localhost", "/", &[echo[0].addr]);
    bad["waf"] = json!({"level": "max", "mode": "log"});
    let r = owner.post("/api/tenants/acme/routes", bad).await;
    assert_err(&r, 422, "validation_failed");
    assert_eq!(paths(&r), ["waf.level", "waf.mode"]);
});

#[tokio::test]
async fn file_tenants_waf_comes_from_the_file() {
    let bs = echo_backends(1).await;
    let extra = "        waf: { level: off, mode: detect }\n";
    let yaml = crate::config(&crate::tenant(
        "acme",
        "acme.localhost",
        "round_robin",
        &[&bs[0]],
        extra,
    ))
    .replace(
        "    waf: { level: \"off\" }\n",
        "    waf: { mode: detect, exclusions: [942100] }\n",
    );
    let t = Tenantry::start(bin(), &yaml).await;
    let admin = t.admin.expect("admin listener");
    let s = Server { t, admin };
    let admin = s.admin().await;
    let p = "/api/tenants/acme/waf";
    assert_eq!(
        admin.must_get(p).await,
        json!({"level": null, "mode": "detect", "exclusions": [942100],
               "plan_level": "strict", "effective_level": "strict"})
    );
    let route = admin.must_get("/api/tenants/acme/routes/web").await;
    assert_eq!(route["waf"], json!({"level": "off", "mode": "detect"}));
    let r = admin.put(p, json!({"level": "basic"})).await;
    assert_err(&r, 409, "managed_by_file");
    assert_eq!(admin.must_get(p).await["level"], Value::Null);
}

/// What the API sets is what the proxy does, at once: the plan's level, then `detect`, then
/// an exclusion, then a route turning the WAF off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waf_changes_through_the_api_reach_the_proxy() {
    if !tenantry_testkit::waf_installed() {
        return;
    }
    let echo = echo_backends(1).await;
    let s = Backend::sqlite().start().await;
    let admin = s.admin().await;
    let owner = s.tenant(&admin, "acme", "pro").await;
    let r = owner
        .post(
            "/api/tenants/acme/routes",
            route("web", "acme.localhost", "/", &[echo[0].addr]),
        )
        .await;
    assert_status(r, 201);
    let xss = "/?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    let scanner = || async {
        HttpClient::new()
            .request(
                "GET",
                s.t.http,
                "acme.localhost",
                "/",
                &[("user-agent", "Nikto/2.1.6")],
                bytes::Bytes::new(),
            )
            .await
            .unwrap()
            .status
    };
    // The pro plan's level (standard) applies from the start.
    let r = s.proxy("acme.localhost", xss).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "waf_blocked");
    assert_eq!(scanner().await, 403);

    let p = "/api/tenants/acme/waf";
    assert_status(owner.put(p, json!({"mode": "detect"})).await, 200);
    assert_eq!(s.proxy("acme.localhost", xss).await.status, 200);

    assert_status(owner.put(p, json!({"exclusions": [913100]})).await, 200);
    assert_eq!(scanner().await, 200);
    assert_eq!(s.proxy("acme.localhost", xss).await.status, 403);

    let mut body = route("web", "acme.localhost", "/", &[echo[0].addr]);
    body["waf"] = json!({"level": "off"});
    let r = owner.put("/api/tenants/acme/routes/web", body).await;
    assert_status(r, 200);
    assert_eq!(s.proxy("acme.localhost", xss).await.status, 200);
}
