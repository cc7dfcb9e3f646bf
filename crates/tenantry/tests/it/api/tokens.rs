//! Token attacks through the API (alg none, foreign secrets, expired, wrong audience or
//! issuer, tampered claims, garbage) and revocation: role change, removal, password change,
//! revoked API keys.

use std::time::Duration;

use tenantry_auth::TokenIssuer;
use tenantry_domain::Role;

use super::*;

const HOUR: Duration = Duration::from_secs(3600);

/// Unix seconds.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Unpadded base64url, as JWTs use.
pub(crate) fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Decodes unpadded base64url.
pub(crate) fn b64url_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => panic!("not base64url: {c}"),
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, c)| n | u32::from(val(*c)) << (18 - 6 * i));
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// A token with its payload replaced and the original signature kept.
fn tamper(token: &str, edit: impl FnOnce(&mut Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&b64url_decode(parts[1])).expect("claims");
    edit(&mut claims);
    let payload = b64url(&serde_json::to_vec(&claims).expect("json"));
    format!("{}.{payload}.{}", parts[0], parts[2])
}

/// HS256 with arbitrary claims.
fn sign(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

#[test]
fn base64url_round_trips() {
    for data in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar"] {
        assert_eq!(b64url_decode(&b64url(data)), data);
    }
    assert_eq!(b64url(b"foobar"), "Zm9vYmFy");
    assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
}

store_test!(token_attacks_are_401, |backend| async {
    let s = backend.start().await;
    let admin = s.admin().await;
    let owner = s.tenant(&admin, "acme", "free").await;
    let owner_id = owner.my_id().await;
    let member_id = owner.add_user("acme", "member@acme.test", "member").await;
    let secret = s.jwt_secret();
    assert!(secret.len() >= 32, "secret of {} bytes", secret.len());
    let issuer = TokenIssuer::hs256(&secret, "tenantry", HOUR);
    let t = now();

    // Control: a token minted with the instance's secret and the right claims works, so the
    // rejections below are about what each token changes.
    let (good, _) = issuer
        .issue(&owner_id, Some("acme"), Role::Owner, 0, t)
        .expect("issue");
    assert_eq!(
        s.api().token(&good).must_get("/api/me").await["id"],
        owner_id
    );
    let base = json!({"sub": owner_id, "tenant_id": "acme", "role": "owner", "ver": 0,
                      "aud": "tenantry", "iss": "tenantry", "exp": t + 3600, "iat": t});
    assert_eq!(
        s.api()
            .token(&sign(&secret, &base))
            .must_get("/api/me")
            .await["id"],
        owner_id
    );
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };

    let none_header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64url(&serde_json::to_vec(&base).expect("json"));
    let garbage_secret = TokenIssuer::hs256(b"garbage-secret-garbage-secret-00", "tenantry", HOUR);
    let bad: Vec<(&str, String)> = vec![
        ("alg none", format!("{none_header}.{payload}.")),
        (
            "alg none with signature",
            format!(
                "{none_header}.{payload}.{}",
                good.split('.').nth(2).unwrap_or_default()
            ),
        ),
        (
            "alg NONE",
            format!("{}.{payload}.", b64url(br#"{"alg":"NONE","typ":"JWT"}"#)),
        ),
        (
            "HS512",
            format!(
                "{}.{payload}.{}",
                b64url(br#"{"alg":"HS512","typ":"JWT"}"#),
                good.split('.').nth(2).unwrap_or_default()
            ),
        ),
        (
            "garbage secret",
            garbage_secret
                .issue(&owner_id, Some("acme"), Role::Owner, 0, t)
                .expect("issue")
                .0,
        ),
        (
            "expired",
            issuer
                .issue(&owner_id, Some("acme"), Role::Owner, 0, t - 2 * 3600)
                .expect("issue")
                .0,
        ),
        (
            "wrong issuer",
            TokenIssuer::hs256(&secret, "evil", HOUR)
                .issue(&owner_id, Some("acme"), Role::Owner, 0, t)
                .expect("issue")
                .0,
        ),
        (
            "wrong audience",
            sign(&secret, &with("aud", json!("other"))),
        ),
        ("no audience", {
            let mut c = base.clone();
            c.as_object_mut().expect("object").remove("aud");
            sign(&secret, &c)
        }),
        ("future version", sign(&secret, &with("ver", json!(7)))),
        (
            "unknown user",
            sign(&secret, &with("sub", json!("u_nobody"))),
        ),
        // Correctly signed, but the claims do not match the user: the server trusts the
        // store, not the token.
        (
            "forged tenant",
            sign(&secret, &with("tenant_id", json!("globex"))),
        ),
        (
            "forged platform role",
            sign(&secret, &with("role", json!("platform_admin"))),
        ),
        (
            "forged no tenant",
            sign(&secret, &with("tenant_id", Value::Null)),
        ),
        (
            "member promoted",
            sign(
                &secret,
                &json!({"sub": member_id, "tenant_id": "acme", "role": "owner", "ver": 0,
                        "aud": "tenantry", "iss": "tenantry", "exp": t + 3600, "iat": t}),
            ),
        ),
        // Signed with the wrong secret after editing: the signature no longer matches.
        (
            "tampered tenant",
            tamper(&good, |c| c["tenant_id"] = json!("globex")),
        ),
        (
            "tampered role",
            tamper(&good, |c| c["role"] = json!("platform_admin")),
        ),
        (
            "tampered expiry",
            tamper(&good, |c| c["exp"] = json!(t + 999_999)),
        ),
        ("truncated signature", good[..good.len() - 4].to_owned()),
        (
            "two parts",
            good.rsplit_once('.')
                .map(|x| x.0)
                .unwrap_or_default()
                .to_owned(),
        ),
        ("garbage", "garbage".to_owned()),
        ("garbage parts", "abc.def.ghi".to_owned()),
        ("over 8 KiB", "a".repeat(9_000)),
        ("api key shape", format!("tn_{}", "0".repeat(40))),
    ];
    let anon = s.api();
    for (what, token) in &bad {
        for path in ["/api/me", "/api/tenants/acme/routes", "/api/tenants"] {
            let r = anon
                .raw(
                    "GET",
                    path,
                    &[("authorization", &format!("Bearer {token}"))],
                    bytes::Bytes::new(),
                )
                .await;
            assert_eq!(r.status, 401, "{what} on {path}: {}", r.json());
            assert_eq!(r.json()["error"], "unauthorized", "{what} on {path}");
        }
    }
    for header in [
        "",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        &format!("Basic {good}"),
        &good,
        &format!("Token {good}"),
    ] {
        let r = anon
            .raw(
                "GET",
                "/api/me",
                &[("authorization", header)],
                bytes::Bytes::new(),
            )
            .await;
        assert_eq!(r.status, 401, "Authorization {header:?}: {}", r.json());
        assert_eq!(r.json()["error"], "unauthorized");
    }
    assert_err(&anon.get("/api/me").await, 401, "unauthorized");
    assert_err(
        &anon.get("/api/tenants/acme/routes").await,
        401,
        "unauthorized",
    );
    assert_err(&anon.delete("/api/tenants/acme").await, 401, "unauthorized");
    // Unauthenticated writes change nothing.
    let r = anon
        .post(
            "/api/tenants/acme/routes",
            route(
                "web",
                "acme.localhost",
                "/",
                &["127.0.0.1:9".parse().expect("addr")],
            ),
        )
        .await;
    assert_err(&r, 401, "unauthorized");
    let routes = owner.must_get("/api/tenants/acme/routes").await;
    assert_eq!(routes, json!([]));
});

store_test!(tokens_are_revoked_by_changes, |backend| async {
    let s = backend.start().await;
    let admin = s.admin().await;
    let owner = s.tenant(&admin, "acme", "pro").await;
    let member_id = owner.add_user("acme", "member@acme.test", "member").await;
    let viewer_id = owner.add_user("acme", "viewer@acme.test", "viewer").await;
    let other_id = owner.add_user("acme", "other@acme.test", "member").await;
    let member = s.login("member@acme.test", PASSWORD).await;
    let viewer = s.login("viewer@acme.test", PASSWORD).await;
    let other = s.login("other@acme.test", PASSWORD).await;
    for c in [&member, &viewer, &other] {
        c.must_get("/api/me").await;
    }

    // Role change: the old token stops at once; a new log-in carries the new role.
    let r = owner
        .patch(
            &format!("/api/tenants/acme/users/{member_id}"),
            json!({"role": "viewer"}),
        )
        .await;
    assert_eq!(assert_status(r, 200)["role"], "viewer");
    assert_err(&member.get("/api/me").await, 401, "unauthorized");
    assert_err(
        &member.get("/api/tenants/acme/routes").await,
        401,
        "unauthorized",
    );
    let member = s.login("member@acme.test", PASSWORD).await;
    assert_eq!(member.must_get("/api/me").await["role"], "viewer");
    let r = member
        .post(
            "/api/tenants/acme/routes",
            route(
                "web",
                "acme.localhost",
                "/",
                &["127.0.0.1:9".parse().expect("addr")],
            ),
        )
        .await;
    assert_err(&r, 403, "forbidden");

    // Removal.
    let r = owner
        .delete(&format!("/api/tenants/acme/users/{viewer_id}"))
        .await;
    assert_eq!(r.0, 204, "{}", r.1);
    assert_err(&viewer.get("/api/me").await, 401, "unauthorized");
    assert_err(
        &owner
            .get(&format!("/api/tenants/acme/users/{viewer_id}"))
            .await,
        404,
        "not_found",
    );

    // Own password change: the old token stops, the answer's token works, old password no
    // longer logs in.
    let r = other
        .post(
            "/api/me/password",
            json!({"current_password": "wrong-password-123", "new_password": "another-password-456"}),
        )
        .await;
    assert_err(&r, 401, "invalid_credentials");
    let r = other
        .post(
            "/api/me/password",
            json!({"current_password": PASSWORD, "new_password": "short"}),
        )
        .await;
    assert_err(&r, 422, "weak_password");
    other.must_get("/api/me").await;
    let r = other
        .post(
            "/api/me/password",
            json!({"current_password": PASSWORD, "new_password": "another-password-456"}),
        )
        .await;
    let body = assert_status(r, 200);
    assert_eq!(body["token_type"], "Bearer");
    assert_err(&other.get("/api/me").await, 401, "unauthorized");
    let fresh = s.api().token(body["access_token"].as_str().expect("token"));
    assert_eq!(fresh.must_get("/api/me").await["id"], other_id);
    let r = s
        .api()
        .post(
            "/api/auth/login",
            json!({"email": "other@acme.test", "password": PASSWORD}),
        )
        .await;
    assert_err(&r, 401, "invalid_credentials");
    s.login("other@acme.test", "another-password-456").await;

    // An owner's password reset revokes too.
    let r = owner
        .patch(
            &format!("/api/tenants/acme/users/{other_id}"),
            json!({"password": "reset-password-7890"}),
        )
        .await;
    assert_status(r, 200);
    assert_err(&fresh.get("/api/me").await, 401, "unauthorized");
    s.login("other@acme.test", "reset-password-7890").await;

    // The platform admin's own password change revokes its token as well.
    let r = admin
        .post(
            "/api/me/password",
            json!({"current_password": ADMIN_PASSWORD, "new_password": "new-admin-password-1"}),
        )
        .await;
    let body = assert_status(r, 200);
    assert_err(&admin.get("/api/tenants").await, 401, "unauthorized");
    s.api()
        .token(body["access_token"].as_str().expect("token"))
        .must_get("/api/tenants")
        .await;

    // API keys: shown once, listed without the secret, revoked at once.
    let (key_id, key) = owner.add_key("acme", "ci", "member").await;
    assert!(
        key.starts_with("tn_")
            && key.len() == 43
            && key[3..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{key}"
    );
    let k = owner.token(&key);
    let me = k.must_get("/api/me").await;
    assert_eq!(me["kind"], "api_key");
    assert_eq!(me["role"], "member");
    assert_eq!(me["tenant_id"], "acme");
    let r = k
        .post(
            "/api/tenants/acme/routes",
            route(
                "web",
                "acme.localhost",
                "/",
                &["127.0.0.1:9".parse().expect("addr")],
            ),
        )
        .await;
    assert_status(r, 201);
    let r = k
        .post(
            "/api/tenants/acme/api-keys",
            json!({"name": "escalate", "role": "owner"}),
        )
        .await;
    assert_err(&r, 403, "forbidden");
    let listed = owner
        .raw(
            "GET",
            "/api/tenants/acme/api-keys",
            &[],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(listed.status, 200);
    let text = String::from_utf8_lossy(&listed.body);
    assert!(!text.contains(&key), "the key list shows the secret");
    assert!(text.contains(&key_id), "{text}");
    let r = owner
        .delete(&format!("/api/tenants/acme/api-keys/{key_id}"))
        .await;
    let body = assert_status(r, 200);
    assert!(body["revoked_at"].is_i64(), "{body}");
    assert_err(&k.get("/api/me").await, 401, "unauthorized");
    assert_err(
        &k.get("/api/tenants/acme/routes").await,
        401,
        "unauthorized",
    );
    let r = k.delete("/api/tenants/acme/routes/web").await;
    assert_err(&r, 401, "unauthorized");
    owner.must_get("/api/tenants/acme/routes/web").await;
    // A key with a role above its creator's is refused; a viewer key cannot write.
    let (_, vkey) = owner.add_key("acme", "ro", "viewer").await;
    let r = owner
        .token(&vkey)
        .delete("/api/tenants/acme/routes/web")
        .await;
    assert_err(&r, 403, "forbidden");
});
