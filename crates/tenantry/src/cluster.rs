//! Cluster mode: several `tenantry serve` nodes sharing one store (PostgreSQL) and one Redis.
//!
//! - **Propagation.** A node that changes a tenant (admin API write, file reload) applies it
//!   locally, bumps `tn:config:version`, stores the tenant's configuration at
//!   `tn:config:<tenant_id>` and publishes `{"type":"tenants","tenants":[…],"version":N,
//!   "node":…}` on `tn:events`. Every other node reloads those tenants from the store (the
//!   source of truth; the published copy is for operators and tools) and swaps them in.
//! - **Healing.** Pub/sub is fire-and-forget: a node that was disconnected misses events. It
//!   resynchronises from the store when its subscription comes back, and in any case every
//!   `cluster.config_ttl` (default 30 s): the routing table is the node's cache of tenant
//!   configuration, and this is its time to live. Only tenants that differ are rebuilt.
//! - **Membership.** Each node writes a heartbeat to the hash `tn:nodes` every two seconds
//!   (config version, tenants, routes, last seen). `tenantry cluster status` reads it; the
//!   rate limiter uses the number of live nodes to size each node's share when Redis is down.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde_json::{Value, json};
use tenantry_dataplane::Gateway;
use tenantry_dataplane::admission::{QuotaEvent, unix_ms};
use tenantry_domain::{Change, OnQuota, TenantId};
use tenantry_store::{Actor, Store};

/// The channel every node listens on.
pub const EVENTS: &str = "tn:events";
/// The cluster's configuration version: bumped by every published change.
pub const VERSION_KEY: &str = "tn:config:version";
/// Heartbeats: node id → JSON.
pub const NODES_KEY: &str = "tn:nodes";
/// A node not seen for this long is not counted as live.
const LIVE_MS: u64 = 10_000;
/// A node not seen for this long is removed from `tn:nodes`.
const FORGET_MS: u64 = 300_000;
/// Redis calls of the cluster tasks give up after this.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// This node's view of the cluster.
pub struct Cluster {
    node: String,
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    /// The highest configuration version this node has applied.
    version: AtomicU64,
    gw: Arc<Gateway>,
    store: Store,
    base: PathBuf,
    ttl: Duration,
    started_ms: u64,
}

impl Cluster {
    /// Joins the cluster behind `url` and starts the subscriber, heartbeat and heal tasks.
    /// Redis being down is not an error: the tasks keep retrying.
    pub fn start(
        url: &str,
        node: Option<String>,
        ttl: Duration,
        gw: Arc<Gateway>,
        store: Store,
        base: PathBuf,
    ) -> Result<Arc<Self>> {
        let client =
            tenantry_limits::client_for(url).with_context(|| format!("invalid Redis URL {url}"))?;
        let node = node.unwrap_or_else(default_node_id);
        let c = Arc::new(Cluster {
            node,
            client,
            conn: tokio::sync::Mutex::new(None),
            version: AtomicU64::new(0),
            gw,
            store,
            base,
            ttl,
            started_ms: unix_ms(),
        });
        tokio::spawn(Arc::clone(&c).subscriber());
        tokio::spawn(Arc::clone(&c).heartbeat());
        tokio::spawn(Arc::clone(&c).heal());
        tracing::info!(node = %c.node, "cluster mode: configuration changes are shared through Redis");
        Ok(c)
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    async fn conn(&self) -> Option<ConnectionManager> {
        let mut slot = self.conn.lock().await;
        if slot.is_none() {
            let cfg = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CALL_TIMEOUT))
                .set_response_timeout(Some(CALL_TIMEOUT));
            match tokio::time::timeout(
                CALL_TIMEOUT,
                ConnectionManager::new_with_config(self.client.clone(), cfg),
            )
            .await
            {
                Ok(Ok(c)) => *slot = Some(c),
                Ok(Err(e)) => tracing::debug!(error = %e, "cluster: Redis unavailable"),
                Err(_) => tracing::debug!("cluster: Redis connect timed out"),
            }
        }
        slot.clone()
    }

    /// Publishes that tenants changed (after this node applied them). `configs` are the
    /// tenants' configurations as JSON, stored at `tn:config:<id>` (`None`: removed).
    pub fn publish(self: &Arc<Self>, changed: Vec<(TenantId, Option<Value>)>) {
        if changed.is_empty() {
            return;
        }
        let c = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = c.publish_now(&changed).await {
                tracing::warn!(error = %e, "cluster: change not published; other nodes catch up within cluster.config_ttl");
            }
        });
    }

    async fn publish_now(&self, changed: &[(TenantId, Option<Value>)]) -> Result<()> {
        let mut conn = self.conn().await.context("Redis unavailable")?;
        let call = async {
            let version: u64 = conn.incr(VERSION_KEY, 1).await?;
            let mut pipe = redis::pipe();
            for (id, config) in changed {
                let key = format!("tn:config:{id}");
                match config {
                    Some(v) => {
                        let mut v = v.clone();
                        v["version"] = json!(version);
                        pipe.set(&key, v.to_string()).ignore();
                    }
                    None => {
                        pipe.del(&key).ignore();
                    }
                }
            }
            let event = json!({
                "type": "tenants",
                "tenants": changed.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
                "version": version,
                "node": self.node,
            });
            pipe.publish(EVENTS, event.to_string()).ignore();
            pipe.query_async::<()>(&mut conn).await?;
            Ok::<u64, redis::RedisError>(version)
        };
        let version = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .context("Redis timed out")??;
        self.version.fetch_max(version, Ordering::Relaxed);
        tracing::debug!(
            version,
            tenants = changed.len(),
            "cluster: change published"
        );
        Ok(())
    }

    /// Publishes a quota event for the owner's tools (dashboards, webhooks).
    pub fn publish_quota(self: &Arc<Self>, e: &QuotaEvent) {
        let c = Arc::clone(self);
        let event = quota_json(e, &self.node);
        tokio::spawn(async move {
            if let Some(mut conn) = c.conn().await {
                match tokio::time::timeout(
                    CALL_TIMEOUT,
                    conn.publish::<_, _, ()>(EVENTS, event.to_string()),
                )
                .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "cluster: quota event not published"),
                    Err(_) => tracing::warn!("cluster: quota event not published: Redis timed out"),
                }
            }
        });
    }

    /// Listens on `tn:events`; after a reconnection, resynchronises from the store (events
    /// were missed meanwhile).
    async fn subscriber(self: Arc<Self>) {
        let mut first = true;
        loop {
            let sub = async {
                let mut ps = self.client.get_async_pubsub().await?;
                ps.subscribe(EVENTS).await?;
                Ok::<_, redis::RedisError>(ps)
            };
            match tokio::time::timeout(CALL_TIMEOUT, sub).await {
                Ok(Ok(mut ps)) => {
                    tracing::info!("cluster: subscribed to {EVENTS}");
                    if !first {
                        self.resync("resubscribed").await;
                    }
                    let mut messages = ps.on_message();
                    while let Some(msg) = messages.next().await {
                        let Ok(text) = msg.get_payload::<String>() else {
                            continue;
                        };
                        self.on_event(&text).await;
                    }
                    tracing::warn!("cluster: lost the {EVENTS} subscription; reconnecting");
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "cluster: cannot subscribe"),
                Err(_) => tracing::debug!("cluster: subscribe timed out"),
            }
            first = false;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn on_event(&self, text: &str) {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            tracing::warn!(event = %text, "cluster: unreadable event");
            return;
        };
        if v["type"] != "tenants" {
            return;
        }
        let version = v["version"].as_u64().unwrap_or(0);
        if v["node"].as_str() == Some(self.node.as_str()) {
            self.version.fetch_max(version, Ordering::Relaxed);
            return;
        }
        let ids: Vec<TenantId> = v["tenants"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().and_then(|s| TenantId::parse(s).ok()))
                    .collect()
            })
            .unwrap_or_default();
        match self.reload_tenants(&ids).await {
            Ok(()) => {
                self.version.fetch_max(version, Ordering::Relaxed);
                tracing::info!(version, tenants = ids.len(), from = %v["node"], "cluster: change applied");
            }
            Err(e) => {
                tracing::error!(error = %e, "cluster: change not applied; retried at the next resync")
            }
        }
    }

    /// Reloads tenants from the store and swaps them in.
    async fn reload_tenants(&self, ids: &[TenantId]) -> Result<()> {
        let _serial = self.gw.store_sync().lock().await;
        let mut changes = Vec::with_capacity(ids.len());
        for id in ids {
            let change = match self.store.platform().load_tenant(id).await? {
                Some(state) => match tenantry_control::to_domain(&state, &self.base) {
                    Ok(t) => Change::PutTenant(Arc::new(t)),
                    Err(e) => {
                        tracing::error!(tenant = %id, errors = ?e, "cluster: stored tenant is invalid; skipped");
                        continue;
                    }
                },
                None => Change::RemoveTenant(id.clone()),
            };
            changes.push(change);
        }
        let gw = Arc::clone(&self.gw);
        tokio::task::spawn_blocking(move || gw.apply_changes(&changes))
            .await
            .context("apply task failed")??;
        Ok(())
    }

    /// Moves to the store's whole state (only differing tenants are rebuilt).
    async fn resync(&self, why: &str) {
        let version = match self.conn().await {
            Some(mut c) => tokio::time::timeout(CALL_TIMEOUT, c.get::<_, Option<u64>>(VERSION_KEY))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten(),
            None => None,
        };
        let _serial = self.gw.store_sync().lock().await;
        let snapshot = match tenantry_control::load_snapshot(&self.store, &self.base).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cluster: resync failed to read the store");
                return;
            }
        };
        let gw = Arc::clone(&self.gw);
        match tokio::task::spawn_blocking(move || gw.apply_snapshot(snapshot)).await {
            Ok(Ok(r)) => {
                if let Some(v) = version {
                    self.version.fetch_max(v, Ordering::Relaxed);
                }
                if r.changed_tenants > 0 {
                    tracing::info!(
                        why,
                        changed = r.changed_tenants,
                        "cluster: resynchronised from the store"
                    );
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "cluster: resync refused"),
            Err(e) => tracing::error!(error = %e, "cluster: resync task failed"),
        }
    }

    async fn heal(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.ttl);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.resync("config_ttl").await;
        }
    }

    async fn heartbeat(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(mut conn) = self.conn().await else {
                continue;
            };
            let table = self.gw.table();
            let now = unix_ms();
            let me = json!({
                "version": self.version.load(Ordering::Relaxed),
                "tenants": table.tenant_count(),
                "routes": table.route_count(),
                "seen_ms": now,
                "started_ms": self.started_ms,
                "pid": std::process::id(),
            });
            drop(table);
            let beat = async {
                conn.hset::<_, _, _, ()>(NODES_KEY, &self.node, me.to_string())
                    .await?;
                conn.hgetall::<_, Vec<(String, String)>>(NODES_KEY).await
            };
            let nodes = match tokio::time::timeout(CALL_TIMEOUT, beat).await {
                Ok(Ok(nodes)) => nodes,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cluster: heartbeat failed");
                    continue;
                }
                Err(_) => {
                    tracing::debug!("cluster: heartbeat timed out");
                    continue;
                }
            };
            let mut live = 0_u32;
            for (id, v) in &nodes {
                let seen = serde_json::from_str::<Value>(v)
                    .ok()
                    .and_then(|v| v["seen_ms"].as_u64())
                    .unwrap_or(0);
                if now.saturating_sub(seen) <= LIVE_MS {
                    live += 1;
                } else if now.saturating_sub(seen) > FORGET_MS {
                    let _ =
                        tokio::time::timeout(CALL_TIMEOUT, conn.hdel::<_, _, ()>(NODES_KEY, id))
                            .await;
                }
            }
            self.gw.limiter().set_nodes(live.max(1));
        }
    }
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    format!("{host}-{}", std::process::id())
}

/// A quota event as JSON (published on `tn:events`, stored in the audit log).
pub fn quota_json(e: &QuotaEvent, node: &str) -> Value {
    json!({
        "type": "quota",
        "tenant": e.tenant.as_str(),
        "quota": e.quota.as_str(),
        "percent": e.percent,
        "used": e.used,
        "limit": e.limit,
        "window_start": tenantry_domain::rfc3339(e.window.0),
        "window_end": tenantry_domain::rfc3339(e.window.1),
        "on_quota": e.on_quota.as_str(),
        "upgrade_suggested": e.on_quota == OnQuota::Notify && e.percent >= 100,
        "node": node,
    })
}

/// The audit action of a quota event.
pub fn quota_action(e: &QuotaEvent) -> &'static str {
    match (e.percent >= 100, e.on_quota) {
        (true, OnQuota::Notify) => "quota.upgrade_suggested",
        (true, _) => "quota.exceeded",
        (false, _) => "quota.warning",
    }
}

/// Quota events go to the tenant's audit log and, in cluster mode, to `tn:events`. One task
/// writes the audit entries in the order the events happened (an addition that crosses 80%
/// and 100% at once records the warning first). Must be called inside the main runtime.
pub fn install_quota_sink(gw: &Gateway, store: Store, cluster: Option<Arc<Cluster>>) {
    let node = cluster
        .as_ref()
        .map_or_else(|| "local".to_owned(), |c| c.node().to_owned());
    // Unbounded: a tenant emits at most one event per threshold and window.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<QuotaEvent>();
    tokio::spawn(async move {
        let actor = Actor::new("gateway", None);
        while let Some(e) = rx.recv().await {
            let details = quota_json(&e, &node);
            if let Err(err) = store
                .tenant(&e.tenant)
                .record_event(&actor, quota_action(&e), e.quota.as_str(), &details)
                .await
            {
                tracing::warn!(tenant = %e.tenant, error = %err, "quota event not recorded in the audit log");
            }
        }
    });
    gw.quotas().set_sink(Arc::new(move |e: QuotaEvent| {
        if let Some(c) = &cluster {
            c.publish_quota(&e);
        }
        let _ = tx.send(e);
    }));
}

/// `tenantry cluster status`: every node with its configuration version.
pub async fn status(url: &str) -> Result<String> {
    let client = redis::Client::open(url).with_context(|| format!("invalid Redis URL {url}"))?;
    let mut conn = tokio::time::timeout(CALL_TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .context("Redis did not answer in time")?
        .with_context(|| format!("cannot connect to {url}"))?;
    // Anyone with write access to Redis can put anything there: read the version as text,
    // print node names without control characters, and mark entries that are not ours.
    let version: Option<String> = conn.get(VERSION_KEY).await?;
    let version = match version {
        None => 0,
        Some(v) => v
            .trim()
            .parse::<u64>()
            .with_context(|| format!("{VERSION_KEY} is not a number: {v:?}"))?,
    };
    let mut nodes: Vec<(String, String)> = conn.hgetall(NODES_KEY).await?;
    nodes.sort();
    let now = unix_ms();
    let mut out = format!("cluster config version {version}\n");
    out.push_str(
        "NODE                                     STATE  VERSION  BEHIND  TENANTS  ROUTES  SEEN\n",
    );
    for (id, v) in nodes {
        let id: String = id
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        let Ok(v) = serde_json::from_str::<Value>(&v) else {
            out.push_str(&format!("{id:<40} (not a node entry: unreadable JSON)\n"));
            continue;
        };
        let seen = v["seen_ms"].as_u64().unwrap_or(0);
        let node_version = v["version"].as_u64().unwrap_or(0);
        let state = if now.saturating_sub(seen) <= LIVE_MS {
            "live"
        } else {
            "gone"
        };
        out.push_str(&format!(
            "{id:<40} {state:<6} {node_version:<8} {:<7} {:<8} {:<7} {:.1}s ago\n",
            version.saturating_sub(node_version),
            v["tenants"].as_u64().unwrap_or(0),
            v["routes"].as_u64().unwrap_or(0),
            now.saturating_sub(seen) as f64 / 1000.0,
        ));
    }
    Ok(out)
}
