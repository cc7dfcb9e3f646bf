//! Active health checks: one task per (route, backend) with a `health_check`, started and
//! stopped as the routing table changes. Passive ejection happens on the request path
//! (see `proxy`); for routes with active checks, only an active check re-admits a backend.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tenantry_config::UpstreamSettings;
use tenantry_domain::{BackendAddr, HealthCheck, RouteId, TenantId};
use tokio::task::JoinHandle;

use crate::table::{BackendHealth, RoutingTable};

type Key = (TenantId, RouteId, BackendAddr);

/// The running checkers.
#[derive(Default)]
pub struct HealthSupervisor {
    tasks: HashMap<Key, Checker>,
}

struct Checker {
    health: Arc<BackendHealth>,
    handle: JoinHandle<()>,
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl HealthSupervisor {
    /// Makes the running checkers match the table: new backends get a checker, removed ones
    /// lose theirs, unchanged ones keep running (and their state).
    pub fn reconcile(&mut self, table: &RoutingTable, upstream: &UpstreamSettings) {
        let mut wanted: HashMap<Key, (HealthCheck, Arc<BackendHealth>, String)> = HashMap::new();
        for r in table.routes() {
            let Some(hc) = &r.health_check else { continue };
            let host = r.host.to_string().trim_start_matches("*.").to_owned();
            for b in r.backends.iter() {
                wanted.insert(
                    (r.tenant.clone(), r.id.clone(), b.addr.clone()),
                    ((**hc).clone(), Arc::clone(&b.health), host.clone()),
                );
            }
        }
        self.tasks.retain(|k, c| {
            wanted
                .get(k)
                .is_some_and(|(_, h, _)| Arc::ptr_eq(h, &c.health))
        });
        for (key, (hc, health, host)) in wanted {
            if self.tasks.contains_key(&key) {
                continue;
            }
            let handle = tokio::spawn(check_loop(
                key.clone(),
                hc,
                Arc::clone(&health),
                host,
                upstream.connect_timeout,
            ));
            self.tasks.insert(key, Checker { health, handle });
        }
    }
}

async fn check_loop(
    key: Key,
    hc: HealthCheck,
    health: Arc<BackendHealth>,
    host: String,
    connect_timeout: std::time::Duration,
) {
    let (tenant, route, addr) = key;
    let mut ticker = tokio::time::interval(hc.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result =
            match tokio::time::timeout(hc.timeout, probe(&addr, &host, &hc, connect_timeout)).await
            {
                Ok(r) => r,
                Err(_) => Err(format!("timed out after {:?}", hc.timeout)),
            };
        let changed = match &result {
            Ok(()) => health.record_success(hc.healthy_threshold).then_some("up"),
            Err(_) => health
                .record_failure(hc.unhealthy_threshold, 0, 0)
                .then_some("down"),
        };
        if let Some(state) = changed {
            let reason = result.err().unwrap_or_default();
            tracing::warn!(%tenant, %route, backend = %addr, state, reason, "backend health changed (active check)");
        }
    }
}

/// One check on its own short connection (`Connection: close`), so that a check proves the
/// backend accepts connections, not just that an old pooled one is alive.
async fn probe(
    addr: &BackendAddr,
    host: &str,
    hc: &HealthCheck,
    connect_timeout: std::time::Duration,
) -> Result<(), String> {
    let stream = crate::upstream::connect_tcp(addr, connect_timeout)
        .await
        .map_err(|e| format!("connect failed: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake failed: {e}"))?;
    let driver = tokio::spawn(conn);
    let req = Request::get(hc.path.as_str())
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "tenantry-health-check")
        .header(http::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| format!("invalid health-check request: {e}"))?;
    let result = match sender.send_request(req).await {
        Err(e) => Err(format!("request failed: {e}")),
        Ok(resp) => {
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            if status == hc.expect_status {
                Ok(())
            } else {
                Err(format!("status {status}, expected {}", hc.expect_status))
            }
        }
    };
    driver.abort();
    result
}
