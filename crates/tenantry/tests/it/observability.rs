//! Metrics with bounded tenant labels and the JSON access log.

use std::time::Duration;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_fold_tenants_beyond_the_limit_and_access_log_has_every_field() {
    let b = echo_backends(1).await;
    let mut tenants = String::new();
    for i in 0..4 {
        tenants.push_str(&tenant(
            &format!("t{i}"),
            &format!("t{i}.localhost"),
            "round_robin",
            &[&b[0]],
            "",
        ));
    }
    let yaml = config_with("metrics: { max_tenants: 2 }", &tenants);
    let t = Tenantry::start(bin(), &yaml).await;
    let c = HttpClient::new();
    for i in 0..4 {
        let r = c
            .get(t.http, &format!("t{i}.localhost"), "/x")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let _ = c.get(t.http, "nobody.localhost", "/").await.unwrap();
    let text = t.metrics().await;
    let tenant_labels: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("tenantry_requests_total{"))
        .filter_map(|l| l.split("tenant=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        tenant_labels.len(),
        4,
        "two own labels + _other + _none: {tenant_labels:?}\n{text}"
    );
    assert!(tenant_labels.contains("_other") && tenant_labels.contains("_none"));
    assert!(
        text.contains(
            "tenantry_requests_total{tenant=\"_other\",route=\"_other\",status_class=\"2xx\"} 2"
        ),
        "{text}"
    );
    for name in [
        "tenantry_request_duration_seconds_bucket",
        "tenantry_upstream_bytes_total",
        "tenantry_backend_up",
        "tenantry_routes 4",
    ] {
        assert!(text.contains(name), "missing {name}");
    }

    assert!(
        t.stdout
            .wait_for("nobody.localhost", Duration::from_secs(2))
            .await
    );
    let lines = t.stdout.json();
    let line = lines
        .iter()
        .find(|l| l["tenant_id"] == "t3")
        .expect("access log line for t3");
    for key in [
        "tenant_id",
        "route",
        "request_id",
        "method",
        "path",
        "status",
        "upstream",
        "duration_ms",
    ] {
        assert!(!line[key].is_null(), "{key} missing in {line}");
    }
    assert_eq!(line["route"], "web");
    assert_eq!(line["status"], 200);
    assert_eq!(line["path"], "/x");
    let miss = lines
        .iter()
        .find(|l| l["host"] == "nobody.localhost")
        .unwrap();
    assert_eq!(miss["status"], 404);
    assert_eq!(miss["error"], "unknown_host");
}

/// Unknown paths and wrong methods on the admin listener answer JSON errors that say what
/// the listener serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_errors_say_what_it_serves() {
    let b = echo_backends(1).await;
    let yaml = config_with(
        "",
        &tenant("t0", "t0.localhost", "round_robin", &[&b[0]], ""),
    );
    let t = Tenantry::start(bin(), &yaml).await;
    let admin = t.admin.expect("admin listener");
    let c = HttpClient::new();
    for path in ["/nothing", "//api/tenants", "/metrics/x"] {
        let r = c.get(admin, "localhost", path).await.unwrap();
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["error"], "not_found", "{path}");
        assert!(r.json()["message"].is_string(), "{path}: {:?}", r.body);
    }
    let r = c
        .request(
            "POST",
            admin,
            "localhost",
            "/metrics",
            &[],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["error"], "method_not_allowed");
    assert!(r.json()["message"].is_string(), "{:?}", r.body);
}
