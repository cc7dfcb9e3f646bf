//! `tenantry config check`: every error with its field path, exit codes.

use std::process::Command;

use super::*;

/// Runs `tenantry config check` on `yaml` written to a scratch file: (exit code, stdout, stderr).
fn check(yaml: &str) -> (Option<i32>, String, String) {
    let dir = TempDir::new();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(bin())
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn prints_every_error_with_its_path_and_exits_1() {
    let (code, _, err) = check(
        "listen: 127.0.0.1:8080\ntenants:\n  - id: ok\n    routes:\n      - { id: web, host: ok.localhost, backends: [ { address: 127.0.0.1:1 } ] }\n  - id: acme\n    routes:\n      - id: web\n        host: acme.localhost\n        algorithm: fastest\n        backends:\n          - { address: 127.0.0.1:1 }\n          - { address: 127.0.0.1:2 }\n          - { address: \"127.0.0.1:\" }\n",
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("tenants[1].routes[0].algorithm: unknown algorithm \"fastest\""),
        "{err}"
    );
    assert!(
        err.contains(
            "tenants[1].routes[0].backends[2].address: invalid socket address \"127.0.0.1:\""
        ),
        "{err}"
    );
}

#[test]
fn accepts_the_quickstart_and_reports_unknown_keys_and_bad_certs() {
    let quickstart = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/quickstart.yaml"
    ))
    .unwrap();
    let (code, out, err) = check(&quickstart);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("ok (2 tenants, 2 routes)"), "{out}");

    let (code, _, err) = check("listen: 127.0.0.1:1\ntenats: []\n");
    assert_eq!(code, Some(1));
    assert!(err.contains("tenats"), "{err}");

    let (code, _, err) = check(
        "tenants:\n  - id: a\n    routes:\n      - { id: web, host: a.localhost, tls: { cert: missing.pem, key: missing.key }, backends: [ { address: 127.0.0.1:1 } ] }\n",
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("tenants[0].routes[0].tls: certificate") && err.contains("missing.pem"),
        "{err}"
    );
}

#[test]
fn serve_refuses_an_invalid_file() {
    let dir = TempDir::new();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, "listen: nowhere\n").unwrap();
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("listen: invalid socket address \"nowhere\"")
    );
}
