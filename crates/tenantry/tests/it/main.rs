//! Integration tests: the real `tenantry` binary on ephemeral ports, real local backends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod badreq;
mod cluster;
mod config_check;
mod file_store;
mod health;
mod lb;
mod llm;
mod observability;
mod routing;
mod tidy;
mod tls_ws;
mod upgrade;
mod waf;

use std::path::Path;

pub use tenantry_testkit::*;

/// The binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tenantry"))
}

/// A config with listeners on ephemeral ports and `tenants` appended verbatim (YAML list
/// items, indented by two spaces).
pub fn config(tenants: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\naccess_log: true\nshutdown: {{ drain: 300ms, grace: 5s }}\ntenants:\n{tenants}"
    )
}

/// [`config`] with more top-level `settings` (whole YAML lines) after `access_log`.
pub fn config_with(settings: &str, tenants: &str) -> String {
    config(tenants).replace(
        "access_log: true\n",
        &format!("access_log: true\n{}\n", settings.trim_end()),
    )
}

/// Starts the binary with one tenant `acme` on `acme.localhost`, round robin to `backends`,
/// and more top-level `settings` (see [`config_with`]).
pub async fn start_acme_with(settings: &str, backends: &[&EchoBackend]) -> Tenantry {
    let tenants = tenant("acme", "acme.localhost", "round_robin", backends, "");
    Tenantry::start(bin(), &config_with(settings, &tenants)).await
}

/// Starts the binary with one tenant `acme` on `acme.localhost` routing to `backends`.
pub async fn start_acme(algorithm: &str, backends: &[&EchoBackend], extra: &str) -> Tenantry {
    Tenantry::start(
        bin(),
        &config(&tenant(
            "acme",
            "acme.localhost",
            algorithm,
            backends,
            extra,
        )),
    )
    .await
}

/// One tenant with one route to the given backends, on the enterprise plan (its rate limit,
/// 60k requests per minute with bursts of 10k, stays out of the way of load tests), WAF off
/// (the plan's `strict` level refuses some of the synthetic bodies these tests send; the WAF
/// has its own tests in `waf.rs`).
pub fn tenant(
    id: &str,
    host: &str,
    algorithm: &str,
    backends: &[&EchoBackend],
    extra: &str,
) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address: {} }}", b.addr))
        .collect();
    format!(
        "  - id: {id}\n    plan: enterprise\n    waf: {{ level: \"off\" }}\n    routes:\n      - id: web\n        host: \"{host}\"\n        algorithm: {algorithm}\n{extra}        backends: [ {} ]\n",
        list.join(", ")
    )
}

/// Quota windows are unix minutes: late in a minute, wait for the next one so that a test's
/// traffic and its checks fall into the same window.
pub async fn avoid_minute_boundary() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    if now.as_secs() % 60 > 45 {
        let into = u64::try_from(now.as_millis() % 60_000).unwrap_or(0);
        tokio::time::sleep(std::time::Duration::from_millis(60_000 - into + 50)).await;
    }
}
