//! Tests for token issuing and verification, including the classic JWT attacks.

use std::path::PathBuf;

use jsonwebtoken::{EncodingKey, Header};

use super::*;

const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/rsa-private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/rsa-public.pem");
const ISSUER: &str = "https://admin.tenantry.test";
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const NOW: u64 = 1_700_000_000;
const TTL: Duration = Duration::from_secs(900);

fn hs256() -> TokenIssuer {
    TokenIssuer::hs256(SECRET, ISSUER, TTL)
}

fn rs256() -> TokenIssuer {
    TokenIssuer::from_pem(JwtAlgorithm::Rs256, RSA_PRIVATE, RSA_PUBLIC, ISSUER, TTL).unwrap()
}

/// A fresh P-256 key pair as (PKCS#8 private PEM, SPKI public PEM).
fn p256_pems() -> (String, String) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    (pair.serialize_pem(), pair.public_key_pem())
}

fn es256() -> TokenIssuer {
    let (private, public) = p256_pems();
    TokenIssuer::from_pem(
        JwtAlgorithm::Es256,
        private.as_bytes(),
        public.as_bytes(),
        ISSUER,
        TTL,
    )
    .unwrap()
}

fn token(issuer: &TokenIssuer) -> String {
    issuer
        .issue("u_1", Some("acme"), Role::Member, 3, NOW)
        .unwrap()
        .0
}

fn valid_claims() -> Claims {
    Claims {
        sub: "u_1".into(),
        tenant_id: Some("acme".into()),
        role: "member".into(),
        ver: 3,
        aud: AUDIENCE.into(),
        iss: ISSUER.into(),
        exp: NOW + 900,
        iat: NOW,
    }
}

/// Signs arbitrary claims with the test HS256 secret, bypassing `issue`.
fn hs256_token_with(claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn rejected(result: Result<Claims, AuthError>) -> &'static str {
    match result {
        Err(AuthError::InvalidToken(reason)) => reason,
        other => panic!("expected InvalidToken, got {other:?}"),
    }
}

// Minimal unpadded base64url, so the tests can forge tokens by hand.
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(B64[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

fn b64_decode(text: &str) -> Vec<u8> {
    let sextets: Vec<u32> = text
        .bytes()
        .map(|c| B64.iter().position(|&b| b == c).unwrap() as u32)
        .collect();
    let mut out = Vec::new();
    for chunk in sextets.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &s)| n | s << (18 - 6 * i));
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

#[test]
fn base64_helpers_round_trip() {
    for input in [
        &b""[..],
        b"f",
        b"fo",
        b"foo",
        b"foob",
        b"{\"alg\":\"none\",\"typ\":\"JWT\"}",
    ] {
        assert_eq!(b64_decode(&b64_encode(input)), input);
    }
    assert_eq!(
        b64_encode(br#"{"alg":"none","typ":"JWT"}"#),
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"
    );
}

#[test]
fn valid_tokens_verify_for_every_algorithm() {
    for issuer in [hs256(), rs256(), es256()] {
        let (token, expires_in) = issuer
            .issue("u_1", Some("acme"), Role::Owner, 7, NOW)
            .unwrap();
        assert_eq!(expires_in, 900);
        let claims = issuer.verify(&token, NOW + 10).unwrap();
        assert_eq!(claims.sub, "u_1");
        assert_eq!(claims.tenant_id.as_deref(), Some("acme"));
        assert_eq!(Role::parse(&claims.role), Some(Role::Owner));
        assert_eq!(claims.ver, 7);
        assert_eq!(claims.aud, "tenantry");
        assert_eq!(claims.iss, ISSUER);
        assert_eq!(claims.iat, NOW);
        assert_eq!(claims.exp, NOW + 900);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, issuer.algorithm().jose());
    }
}

#[test]
fn platform_tokens_carry_no_tenant() {
    let issuer = hs256();
    let (token, _) = issuer
        .issue("u_admin", None, Role::PlatformAdmin, 0, NOW)
        .unwrap();
    let claims = issuer.verify(&token, NOW).unwrap();
    assert_eq!(claims.tenant_id, None);
    assert_eq!(claims.role, "platform_admin");
}

#[test]
fn rejects_alg_none() {
    for issuer in [hs256(), rs256()] {
        let valid = token(&issuer);
        let payload = valid.split('.').nth(1).unwrap();
        let header = b64_encode(br#"{"alg":"none","typ":"JWT"}"#);
        let signature = valid.rsplit('.').next().unwrap();
        for forged in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}.{signature}"),
        ] {
            assert_eq!(rejected(issuer.verify(&forged, NOW)), "algorithm");
        }
        let upper = b64_encode(br#"{"alg":"NONE","typ":"JWT"}"#);
        assert_eq!(
            rejected(issuer.verify(&format!("{upper}.{payload}."), NOW)),
            "algorithm"
        );
    }
}

#[test]
fn rejects_hs256_signed_with_the_rsa_public_key() {
    // Key confusion: a verifier that trusted the header would HMAC with the public key.
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &valid_claims(),
        &EncodingKey::from_secret(RSA_PUBLIC),
    )
    .unwrap();
    assert_eq!(rejected(rs256().verify(&forged, NOW)), "algorithm");
}

#[test]
fn rejects_any_other_algorithm() {
    // An RS256 token, even with a good signature, is refused by an ES256 or HS256 issuer.
    let rs_token = token(&rs256());
    assert_eq!(rejected(es256().verify(&rs_token, NOW)), "algorithm");
    assert_eq!(rejected(hs256().verify(&rs_token, NOW)), "algorithm");
    let hs384 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS384),
        &valid_claims(),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    assert_eq!(rejected(hs256().verify(&hs384, NOW)), "algorithm");
}

#[test]
fn rejects_expired_tokens_after_five_seconds_of_leeway() {
    let issuer = hs256();
    let token = token(&issuer);
    let exp = NOW + 900;
    assert!(issuer.verify(&token, exp - 1).is_ok());
    assert!(issuer.verify(&token, exp + 4).is_ok());
    assert_eq!(rejected(issuer.verify(&token, exp + 5)), "expired");
    assert_eq!(rejected(issuer.verify(&token, exp + 86_400)), "expired");
}

#[test]
fn rejects_tokens_issued_in_the_future() {
    let issuer = hs256();
    let token = token(&issuer);
    assert!(issuer.verify(&token, NOW).is_ok());
    assert!(issuer.verify(&token, NOW - 5).is_ok());
    assert_eq!(rejected(issuer.verify(&token, NOW - 6)), "not_yet_valid");
}

#[test]
fn rejects_wrong_audience() {
    let claims = Claims {
        aud: "someone-else".into(),
        ..valid_claims()
    };
    assert_eq!(
        rejected(hs256().verify(&hs256_token_with(&claims), NOW)),
        "audience"
    );
}

#[test]
fn rejects_wrong_issuer() {
    let other = TokenIssuer::hs256(SECRET, "https://evil.test", TTL);
    assert_eq!(rejected(hs256().verify(&token(&other), NOW)), "issuer");
}

#[test]
fn rejects_missing_claims() {
    let mut claims = serde_json::to_value(valid_claims()).unwrap();
    claims.as_object_mut().unwrap().remove("iat");
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    assert_eq!(rejected(hs256().verify(&token, NOW)), "malformed");
}

#[test]
fn rejects_tampered_payload() {
    for issuer in [hs256(), rs256(), es256()] {
        let token = token(&issuer);
        let parts: Vec<&str> = token.split('.').collect();
        let claims: Claims = serde_json::from_slice(&b64_decode(parts[1])).unwrap();
        // Re-encoding the untouched claims gives the same segment, so the rejections below
        // are for the tampering and not for the encoding.
        assert_eq!(b64_encode(&serde_json::to_vec(&claims).unwrap()), parts[1]);
        for forged_claims in [
            Claims {
                role: "platform_admin".into(),
                ..claims.clone()
            },
            Claims {
                tenant_id: Some("victim".into()),
                ..claims.clone()
            },
        ] {
            let payload = b64_encode(&serde_json::to_vec(&forged_claims).unwrap());
            let forged = format!("{}.{payload}.{}", parts[0], parts[2]);
            assert_eq!(rejected(issuer.verify(&forged, NOW)), "signature");
        }
    }
}

#[test]
fn rejects_tokens_from_another_secret() {
    let other = TokenIssuer::hs256(b"another secret, another gateway!", ISSUER, TTL);
    assert_eq!(rejected(hs256().verify(&token(&other), NOW)), "signature");
}

#[test]
fn rejects_garbage() {
    let mut noise = [0u8; 96];
    crate::fill_random(&mut noise).unwrap();
    let noise = String::from_utf8_lossy(&noise).into_owned();
    let long = format!("{}.{}.{}", "a".repeat(9000), "b", "c");
    for garbage in [
        "",
        ".",
        "..",
        "a.b.c",
        "a.b",
        "a.b.c.d",
        "eyJhbGciOiJIUzI1NiJ9",
        "eyJhbGciOiJIUzI1NiJ9..",
        "eyJhbGciOiJIUzI1NiJ9.e30.",
        "tn_0000000000000000000000000000000000000000",
        &noise,
        &long,
    ] {
        for issuer in [hs256(), es256()] {
            assert!(
                matches!(issuer.verify(garbage, NOW), Err(AuthError::InvalidToken(_))),
                "{garbage:?}"
            );
        }
    }
}

#[test]
fn pem_keys_must_parse_and_match() {
    let (private, _) = p256_pems();
    let (_, other_public) = p256_pems();
    let mismatched = TokenIssuer::from_pem(
        JwtAlgorithm::Es256,
        private.as_bytes(),
        other_public.as_bytes(),
        ISSUER,
        TTL,
    );
    assert!(matches!(mismatched, Err(AuthError::Key(msg)) if msg.contains("do not match")));

    let swapped = TokenIssuer::from_pem(JwtAlgorithm::Es256, RSA_PRIVATE, RSA_PUBLIC, ISSUER, TTL);
    assert!(matches!(swapped, Err(AuthError::Key(_))));
    let hs = TokenIssuer::from_pem(JwtAlgorithm::Hs256, RSA_PRIVATE, RSA_PUBLIC, ISSUER, TTL);
    assert!(matches!(hs, Err(AuthError::Key(_))));
    let garbage = TokenIssuer::from_pem(JwtAlgorithm::Rs256, b"nope", b"nope", ISSUER, TTL);
    assert!(matches!(garbage, Err(AuthError::Key(_))));
}

#[test]
fn debug_does_not_print_keys() {
    let debug = format!(
        "{:?}",
        TokenIssuer::hs256(b"super-secret-bytes", ISSUER, TTL)
    );
    assert!(!debug.contains("super"), "{debug}");
    assert!(!debug.contains("115, 117, 112"), "{debug}");
    assert!(
        debug.contains("HS256") || debug.contains("Hs256"),
        "{debug}"
    );
}

#[test]
fn algorithm_names_parse() {
    assert_eq!(
        "rs256".parse::<JwtAlgorithm>().unwrap(),
        JwtAlgorithm::Rs256
    );
    assert_eq!(
        "ES256".parse::<JwtAlgorithm>().unwrap(),
        JwtAlgorithm::Es256
    );
    assert!("none".parse::<JwtAlgorithm>().is_err());
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let mut suffix = [0u8; 8];
        crate::fill_random(&mut suffix).unwrap();
        let path = std::env::temp_dir().join(format!("tenantry-auth-{}", hex::encode(suffix)));
        fs::create_dir(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn hs256_secret_file_is_private_and_reused() {
    let dir = TempDir::new();
    let first = TokenIssuer::hs256_in_dir(&dir.0, ISSUER, TTL).unwrap();
    let path = dir.0.join("jwt-secret");
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.trim().len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }

    let second = TokenIssuer::hs256_in_dir(&dir.0, ISSUER, TTL).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), text);
    let claims = second.verify(&token(&first), NOW).unwrap();
    assert_eq!(claims.sub, "u_1");

    // Another directory means another secret.
    let elsewhere = TempDir::new();
    let third = TokenIssuer::hs256_in_dir(&elsewhere.0, ISSUER, TTL).unwrap();
    assert_eq!(rejected(third.verify(&token(&first), NOW)), "signature");
}

#[test]
fn hs256_secret_file_must_hold_a_full_secret() {
    let dir = TempDir::new();
    fs::write(dir.0.join("jwt-secret"), "abcd\n").unwrap();
    let result = TokenIssuer::hs256_in_dir(&dir.0, ISSUER, TTL);
    assert!(matches!(result, Err(AuthError::Key(_))));

    let missing = TokenIssuer::hs256_in_dir(&dir.0.join("absent"), ISSUER, TTL);
    assert!(matches!(missing, Err(AuthError::Io(_))));
}

#[test]
fn pem_files_load() {
    let dir = TempDir::new();
    let (private, public) = p256_pems();
    fs::write(dir.0.join("es.key"), private).unwrap();
    fs::write(dir.0.join("es.pub"), public).unwrap();
    let issuer = TokenIssuer::from_pem_files(
        JwtAlgorithm::Es256,
        &dir.0.join("es.key"),
        &dir.0.join("es.pub"),
        ISSUER,
        TTL,
    )
    .unwrap();
    assert!(issuer.verify(&token(&issuer), NOW).is_ok());
    let missing = TokenIssuer::from_pem_files(
        JwtAlgorithm::Es256,
        &dir.0.join("absent.key"),
        &dir.0.join("es.pub"),
        ISSUER,
        TTL,
    );
    assert!(matches!(missing, Err(AuthError::Io(e)) if e.to_string().contains("absent.key")));
}
