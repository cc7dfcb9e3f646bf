//! The YAML file and the store: file tenants are imported and win for what they list, API
//! tenants survive restarts, `tenantry migrate`, and asymmetric JWT keys from `auth.jwt`.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::api::tokens::{b64url_decode as base64url, now};
use crate::api::{PASSWORD, Server, assert_err, assert_status, route};
use crate::{TempDir, Tenantry, bin, config, echo_backends, tenant};

async fn server(t: Tenantry) -> Server {
    let admin = t.admin.expect("admin listener");
    Server { t, admin }
}

fn fixture(name: &str) -> String {
    format!(
        "{}/../tenantry-auth/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[tokio::test]
async fn file_tenants_are_imported_and_the_file_wins_for_them() {
    let bs = echo_backends(1).await;
    let b = &bs[0];
    let yaml = config(&tenant("acme", "acme.localhost", "round_robin", &[b], ""));
    let s = server(Tenantry::start(bin(), &yaml).await).await;
    let admin = s.admin().await;

    // The file's tenant is in the store, marked as file-managed, and serves.
    let t = assert_status(admin.get("/api/tenants/acme").await, 200);
    assert_eq!(t["managed_by"], "file");
    let routes = assert_status(admin.get("/api/tenants/acme/routes").await, 200);
    assert_eq!(routes[0]["host"], "acme.localhost");
    assert_eq!(s.proxy("acme.localhost", "/").await.status, 200);

    // Its routes are edited in the file, not through the API.
    let r = admin
        .post(
            "/api/tenants/acme/routes",
            route("api", "api.acme.localhost", "/", &[b.addr]),
        )
        .await;
    assert_err(&r, 409, "managed_by_file");

    // Removed from the file: it stops serving, but the tenant and its users stay.
    let r = admin
        .post(
            "/api/tenants/acme/users",
            json!({"email": "ops@acme.test", "password": PASSWORD, "role": "viewer"}),
        )
        .await;
    assert_status(r, 201);
    s.t.write_config(&config("  []\n"));
    let (status, body) = s.t.reload().await;
    assert_eq!(status, 200, "{body}");
    let r = s.proxy("acme.localhost", "/").await;
    assert_eq!(r.status, 404);
    let t = assert_status(admin.get("/api/tenants/acme").await, 200);
    assert_eq!(t["managed_by"], "api");
    let users = assert_status(admin.get("/api/tenants/acme/users").await, 200);
    assert!(
        users
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["email"] == "ops@acme.test")
    );

    // Now API-managed: routes can be added through the API and serve at once.
    let r = admin
        .post(
            "/api/tenants/acme/routes",
            route("web", "acme.localhost", "/", &[b.addr]),
        )
        .await;
    assert_status(r, 201);
    assert_eq!(s.proxy("acme.localhost", "/").await.status, 200);
}

#[tokio::test]
async fn api_tenants_survive_a_restart_and_the_file_does_not_touch_them() {
    let bs = echo_backends(1).await;
    let b = &bs[0];
    let dir = Arc::new(TempDir::new());
    let yaml = config("  []\n");
    let s = server(Tenantry::start_in(bin(), &yaml, Arc::clone(&dir), &[]).await).await;
    let admin = s.admin().await;
    let owner = s.tenant(&admin, "shop", "free").await;
    let r = owner
        .post(
            "/api/tenants/shop/routes",
            route("web", "shop.localhost", "/", &[b.addr]),
        )
        .await;
    assert_status(r, 201);
    assert_eq!(s.proxy("shop.localhost", "/").await.status, 200);
    // A reload of a file that does not list `shop` leaves it alone.
    let (status, _) = s.t.reload().await;
    assert_eq!(status, 200);
    assert_eq!(s.proxy("shop.localhost", "/").await.status, 200);
    s.t.signal("TERM");
    let mut t = s.t;
    assert!(t.wait_exit(Duration::from_secs(10)).await.is_some());

    // A new process on the same data directory serves the route from the store, and the
    // owner's password still works.
    let s = server(Tenantry::start_in(bin(), &yaml, dir, &[]).await).await;
    assert_eq!(s.proxy("shop.localhost", "/").await.status, 200);
    let owner = s.login("owner@shop.test", PASSWORD).await;
    assert_status(owner.get("/api/tenants/shop/routes/web").await, 200);
}

#[test]
fn migrate_creates_the_store_and_is_idempotent() {
    let dir = TempDir::new();
    let data = dir.path().join("data");
    for _ in 0..2 {
        let out = Command::new(bin())
            .args(["migrate", "--data-dir"])
            .arg(&data)
            .env_remove("TENANTRY_STORE")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("migrations applied"));
    }
    assert!(data.join("tenantry.db").is_file());
    // A store URL that cannot be opened is a clear error, not a panic.
    let out = Command::new(bin())
        .args(["migrate", "--store", "mysql://nowhere/db"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open the store"));
}

#[tokio::test]
async fn rs256_keys_from_config_sign_tokens_and_refuse_key_confusion() {
    let yaml = format!(
        "auth: {{ issuer: https://gw.test, jwt: {{ algorithm: RS256, private_key: {}, public_key: {} }} }}\n{}",
        fixture("rsa-private.pem"),
        fixture("rsa-public.pem"),
        config("  []\n")
    );
    let s = server(Tenantry::start(bin(), &yaml).await).await;
    let r = s
        .api()
        .post(
            "/api/auth/login",
            json!({"email": crate::ADMIN_EMAIL, "password": crate::ADMIN_PASSWORD}),
        )
        .await;
    let body = assert_status(r, 200);
    let token = body["access_token"].as_str().unwrap().to_owned();
    let header = token.split('.').next().unwrap();
    // {"typ":"JWT","alg":"RS256"} in some order, base64url: decode and look.
    let header = String::from_utf8(base64url(header)).unwrap();
    assert!(header.contains("\"RS256\""), "{header}");
    let admin = s.api().token(&token);
    let me = assert_status(admin.get("/api/me").await, 200);
    assert_eq!(me["role"], "platform_admin");

    // The classic key-confusion attack: an HS256 token whose HMAC secret is the RS256 public
    // key, with the right claims. Refused.
    let public = std::fs::read(fixture("rsa-public.pem")).unwrap();
    let forger =
        tenantry_auth::TokenIssuer::hs256(&public, "https://gw.test", Duration::from_secs(600));
    let claims: serde_json::Value =
        serde_json::from_slice(&base64url(token.split('.').nth(1).unwrap())).unwrap();
    let (forged, _) = forger
        .issue(
            claims["sub"].as_str().unwrap(),
            None,
            tenantry_domain::Role::PlatformAdmin,
            claims["ver"].as_i64().unwrap(),
            now(),
        )
        .unwrap();
    let r = s.api().token(&forged).get("/api/me").await;
    assert_err(&r, 401, "unauthorized");
    let r = s.api().token(&forged).get("/api/tenants").await;
    assert_err(&r, 401, "unauthorized");
}
