//! Queries shared by [`TenantScope`](crate::TenantScope) and
//! [`PlatformStore`](crate::PlatformStore), written once in the SQL both backends accept
//! (`$N` placeholders, `lower`, `coalesce`, `ON CONFLICT`). Each function runs on a connection
//! inside a transaction its caller opened for the right scope; tenant-data queries take the
//! tenant and filter by it.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use tenantry_config::{BackendSpec, PolicySpec, RouteSpec, TenantWafSpec};
use tenantry_domain::{CountedLimit, PlanLimits, Role, TenantId, check_count, derive_limits};

use crate::StoreError;
use crate::codec;
use crate::error::{conflict_on_unique, corrupt, unique_violation_on};
use crate::records::{
    Actor, ApiKeyRecord, AuditEntry, PlanRecord, Subscription, TenantRecord, TenantStatus,
    UserRecord,
};

/// A subscription period.
pub(crate) const PERIOD_MS: i64 = 30 * 24 * 60 * 60 * 1000;

/// Audit reads return at most this many rows at once.
pub(crate) const MAX_AUDIT_PAGE: u32 = 1000;

/// Unix milliseconds now.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) fn count_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

macro_rules! tenant_cols {
    () => {
        "id, name, status, managed_by, created_at"
    };
}
macro_rules! user_cols {
    () => {
        "id, tenant_id, email, password_hash, role, token_version, created_at"
    };
}
macro_rules! key_cols {
    () => {
        "id, tenant_id, name, prefix, role, created_by, created_at, revoked_at, last_used_at"
    };
}
macro_rules! audit_cols {
    () => {
        "id, actor, tenant_id, action, target, before, after, ip, at"
    };
}
macro_rules! route_cols {
    () => {
        "tenant_id, id, host, path_prefix, algorithm, kind, ratelimit, waf, tls, health_check"
    };
}
macro_rules! backend_cols {
    () => {
        "tenant_id, route_id, address, weight, state"
    };
}
pub(crate) use {key_cols, tenant_cols, user_cols};

// ---- row decoding -------------------------------------------------------------------------

pub(crate) fn parse_tenant_id(s: &str) -> Result<TenantId, StoreError> {
    TenantId::parse(s).map_err(|e| corrupt("tenant id", e))
}

fn parse_role(s: &str) -> Result<Role, StoreError> {
    Role::parse(s).ok_or_else(|| corrupt("role", s))
}

pub(crate) fn tenant_from_row(row: &AnyRow) -> Result<TenantRecord, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(TenantRecord {
        id: parse_tenant_id(&row.try_get::<String, _>("id")?)?,
        name: row.try_get("name")?,
        status: TenantStatus::parse(&status).ok_or_else(|| corrupt("tenant status", &status))?,
        managed_by: row.try_get("managed_by")?,
        created_at: row.try_get("created_at")?,
    })
}

pub(crate) fn user_from_row(row: &AnyRow) -> Result<UserRecord, StoreError> {
    let tenant: Option<String> = row.try_get("tenant_id")?;
    Ok(UserRecord {
        id: row.try_get("id")?,
        tenant: tenant.as_deref().map(parse_tenant_id).transpose()?,
        email: row.try_get("email")?,
        password_hash: row.try_get("password_hash")?,
        role: parse_role(&row.try_get::<String, _>("role")?)?,
        token_version: row.try_get("token_version")?,
        created_at: row.try_get("created_at")?,
    })
}

pub(crate) fn key_from_row(row: &AnyRow) -> Result<ApiKeyRecord, StoreError> {
    Ok(ApiKeyRecord {
        id: row.try_get("id")?,
        tenant: parse_tenant_id(&row.try_get::<String, _>("tenant_id")?)?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        role: parse_role(&row.try_get::<String, _>("role")?)?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

pub(crate) fn plan_from_row(row: &AnyRow) -> Result<PlanRecord, StoreError> {
    let limits: String = row.try_get("limits")?;
    let limits = codec::parse_text("plan limits", &limits)?;
    Ok(PlanRecord {
        name: row.try_get("name")?,
        limits: codec::limits_from_json(&limits).map_err(|e| corrupt("plan limits", e))?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn audit_from_row(row: &AnyRow) -> Result<AuditEntry, StoreError> {
    let tenant: Option<String> = row.try_get("tenant_id")?;
    let json = |col: &str| -> Result<Option<Value>, StoreError> {
        let s: Option<String> = row.try_get(col)?;
        s.map(|s| codec::parse_text("audit snapshot", &s))
            .transpose()
    };
    Ok(AuditEntry {
        id: row.try_get("id")?,
        actor: row.try_get("actor")?,
        tenant: tenant.as_deref().map(parse_tenant_id).transpose()?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        before: json("before")?,
        after: json("after")?,
        ip: row.try_get("ip")?,
        at: row.try_get("at")?,
    })
}

fn route_from_row(row: &AnyRow) -> Result<(String, RouteSpec), StoreError> {
    let tls: Option<String> = row.try_get("tls")?;
    let hc: Option<String> = row.try_get("health_check")?;
    let ratelimit: Option<String> = row.try_get("ratelimit")?;
    let waf: Option<String> = row.try_get("waf")?;
    Ok((
        row.try_get("tenant_id")?,
        RouteSpec {
            id: row.try_get("id")?,
            host: row.try_get("host")?,
            path_prefix: row.try_get("path_prefix")?,
            algorithm: row.try_get("algorithm")?,
            kind: row.try_get("kind")?,
            ratelimit: ratelimit
                .map(|s| codec::from_text("route rate limit", &s))
                .transpose()?,
            waf: waf.map(|s| codec::from_text("route waf", &s)).transpose()?,
            tls: tls.map(|s| codec::from_text("route tls", &s)).transpose()?,
            health_check: hc
                .map(|s| codec::from_text("route health check", &s))
                .transpose()?,
            backends: Vec::new(),
        },
    ))
}

fn backend_from_row(row: &AnyRow) -> Result<((String, String), BackendSpec), StoreError> {
    let weight: Option<i64> = row.try_get("weight")?;
    Ok((
        (row.try_get("tenant_id")?, row.try_get("route_id")?),
        BackendSpec {
            address: row.try_get("address")?,
            weight: weight
                .map(|w| u32::try_from(w).map_err(|e| corrupt("backend weight", e)))
                .transpose()?,
            state: row.try_get("state")?,
        },
    ))
}

/// Puts backend rows (ordered by position) under their route rows.
fn assemble_routes(
    routes: Vec<(String, RouteSpec)>,
    backends: Vec<((String, String), BackendSpec)>,
) -> Vec<(String, RouteSpec)> {
    let mut by_route: HashMap<(String, String), Vec<BackendSpec>> = HashMap::new();
    for (k, b) in backends {
        by_route.entry(k).or_default().push(b);
    }
    routes
        .into_iter()
        .map(|(t, mut r)| {
            if let Some(b) = by_route.remove(&(t.clone(), r.id.clone())) {
                r.backends = b;
            }
            (t, r)
        })
        .collect()
}

// ---- tenants, plans, subscriptions --------------------------------------------------------

pub(crate) async fn fetch_tenant(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<Option<TenantRecord>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        tenant_cols!(),
        " FROM tenants WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(tenant_from_row)
    .transpose()
}

/// A JSON document of type `T` kept in a column of `tenants`, replaced whole and audited on
/// change.
pub(crate) struct TenantDoc<T> {
    /// The column.
    column: &'static str,
    /// What it is, for decoding errors.
    label: &'static str,
    /// The audit action of a change.
    action: &'static str,
    doc: PhantomData<fn() -> T>,
}

/// The tenant's LLM policy.
pub(crate) const POLICY: TenantDoc<PolicySpec> = TenantDoc {
    column: "policy",
    label: "tenant policy",
    action: "tenant.policy",
    doc: PhantomData,
};

/// The tenant's WAF settings.
pub(crate) const WAF: TenantDoc<TenantWafSpec> = TenantDoc {
    column: "waf",
    label: "tenant waf",
    action: "tenant.waf_updated",
    doc: PhantomData,
};

impl<T: DeserializeOwned> TenantDoc<T> {
    /// The document held in the column's text (`None`: the column is empty).
    pub(crate) fn decode(&self, text: Option<&str>) -> Result<Option<T>, StoreError> {
        text.map(|s| codec::from_text(self.label, s)).transpose()
    }
}

/// The tenant's stored document (`None`: the column is empty).
pub(crate) async fn fetch_doc<T: DeserializeOwned>(
    conn: &mut AnyConnection,
    doc: &TenantDoc<T>,
    id: &str,
) -> Result<Option<T>, StoreError> {
    let sql = format!("SELECT {} FROM tenants WHERE id = $1", doc.column);
    let text: Option<Option<String>> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    text.flatten()
        .map(|s| codec::from_text(doc.label, &s))
        .transpose()
}

impl<T: Serialize> TenantDoc<T> {
    /// The column's text for a document.
    pub(crate) fn encode(&self, v: Option<&T>) -> Result<Option<String>, StoreError> {
        v.map(codec::to_text).transpose()
    }

    /// Writes the column (no audit).
    pub(crate) async fn store(
        &self,
        conn: &mut AnyConnection,
        tenant: &str,
        text: Option<&str>,
    ) -> Result<(), StoreError> {
        let sql = format!("UPDATE tenants SET {} = $2 WHERE id = $1", self.column);
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(text)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// The audit row of a change.
    pub(crate) fn audit(&self, tenant: &str, before: Option<&T>, after: Option<&T>) -> AuditRow {
        let json = |v: Option<&T>| serde_json::to_value(v).unwrap_or(Value::Null);
        AuditRow::new(tenant, self.action, Some(&json(before)), Some(&json(after)))
    }
}

/// Replaces a tenant's stored document and records the change (`doc.action`).
pub(crate) async fn write_doc<T: Serialize>(
    conn: &mut AnyConnection,
    doc: &TenantDoc<T>,
    actor: &Actor,
    tenant: &str,
    before: Option<&T>,
    after: Option<&T>,
) -> Result<(), StoreError> {
    doc.store(conn, tenant, doc.encode(after)?.as_deref())
        .await?;
    write_audits(conn, actor, &[doc.audit(tenant, before, after)]).await
}

/// Touches the tenant's row: takes SQLite's write lock (already held under `BEGIN IMMEDIATE`)
/// and PostgreSQL's row lock, so that the count-then-insert that follows cannot race another
/// write to the same tenant. `NotFound` if the tenant does not exist (or is not visible).
pub(crate) async fn lock_tenant(
    conn: &mut AnyConnection,
    id: &str,
    now: i64,
) -> Result<(), StoreError> {
    let done = sqlx::query("UPDATE tenants SET updated_at = $2 WHERE id = $1")
        .bind(id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound {
            kind: "tenant",
            id: id.to_owned(),
        });
    }
    Ok(())
}

pub(crate) async fn fetch_plan(
    conn: &mut AnyConnection,
    name: &str,
) -> Result<Option<PlanRecord>, StoreError> {
    sqlx::query("SELECT name, limits, updated_at FROM plans WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?
        .as_ref()
        .map(plan_from_row)
        .transpose()
}

pub(crate) async fn require_plan(
    conn: &mut AnyConnection,
    name: &str,
) -> Result<PlanRecord, StoreError> {
    fetch_plan(conn, name)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            kind: "plan",
            id: name.to_owned(),
        })
}

fn subscription_from_row(row: &AnyRow) -> Result<Subscription, StoreError> {
    let overrides: String = row.try_get("overrides")?;
    let overrides = codec::overrides_from_json(&codec::parse_text("overrides", &overrides)?)
        .map_err(|e| corrupt("overrides", e))?;
    let limits: String = row.try_get("limits")?;
    let plan = codec::limits_from_json(&codec::parse_text("plan limits", &limits)?)
        .map_err(|e| corrupt("plan limits", e))?;
    Ok(Subscription {
        tenant: parse_tenant_id(&row.try_get::<String, _>("tenant_id")?)?,
        plan: row.try_get("plan")?,
        status: row.try_get("status")?,
        period_start: row.try_get("period_start")?,
        period_end: row.try_get("period_end")?,
        limits: derive_limits(&plan, &overrides),
        overrides,
    })
}

pub(crate) async fn fetch_subscription(
    conn: &mut AnyConnection,
    tenant: &str,
) -> Result<Option<Subscription>, StoreError> {
    sqlx::query(
        "SELECT s.tenant_id, s.plan, s.status, s.period_start, s.period_end, s.overrides, \
         p.limits FROM subscriptions s JOIN plans p ON p.name = s.plan WHERE s.tenant_id = $1",
    )
    .bind(tenant)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(subscription_from_row)
    .transpose()
}

pub(crate) async fn require_subscription(
    conn: &mut AnyConnection,
    tenant: &str,
) -> Result<Subscription, StoreError> {
    fetch_subscription(conn, tenant)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            kind: "tenant",
            id: tenant.to_owned(),
        })
}

pub(crate) async fn insert_tenant(
    conn: &mut AnyConnection,
    id: &str,
    name: &str,
    plan: &str,
    managed_by: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO tenants (id, name, status, managed_by, created_at, updated_at) \
         VALUES ($1, $2, 'active', $3, $4, $4)",
    )
    .bind(id)
    .bind(name)
    .bind(managed_by)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(conflict_on_unique("tenant", id))?;
    sqlx::query(
        "INSERT INTO subscriptions (tenant_id, plan, status, period_start, period_end, \
         overrides, updated_at) VALUES ($1, $2, 'active', $3, $4, '{}', $3)",
    )
    .bind(id)
    .bind(plan)
    .bind(now)
    .bind(now + PERIOD_MS)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

// ---- usage and limits ---------------------------------------------------------------------

/// What a tenant uses of its countable limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    pub users: u64,
    pub routes: u64,
    pub domains: u64,
    pub max_backends: u64,
}

async fn scalar(
    conn: &mut AnyConnection,
    sql: &'static str,
    tenant: &str,
) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar(sql)
        .bind(tenant)
        .fetch_one(&mut *conn)
        .await?;
    Ok(count_u64(n))
}

pub(crate) async fn usage(conn: &mut AnyConnection, tenant: &str) -> Result<Usage, StoreError> {
    Ok(Usage {
        users: scalar(
            conn,
            "SELECT COUNT(*) FROM users WHERE tenant_id = $1",
            tenant,
        )
        .await?,
        routes: scalar(
            conn,
            "SELECT COUNT(*) FROM routes WHERE tenant_id = $1",
            tenant,
        )
        .await?,
        domains: scalar(
            conn,
            "SELECT COUNT(DISTINCT lower(host)) FROM routes WHERE tenant_id = $1",
            tenant,
        )
        .await?,
        max_backends: scalar(
            conn,
            "SELECT COALESCE(MAX(n), 0) FROM (SELECT COUNT(*) AS n FROM backends \
             WHERE tenant_id = $1 GROUP BY route_id) AS per_route",
            tenant,
        )
        .await?,
    })
}

/// `Downgrade` if `usage` is over any of `limits` (those of plan `plan`).
pub(crate) fn check_fits(usage: Usage, limits: &PlanLimits, plan: &str) -> Result<(), StoreError> {
    for (limit, used) in [
        (CountedLimit::Users, usage.users),
        (CountedLimit::Routes, usage.routes),
        (CountedLimit::BackendsPerRoute, usage.max_backends),
        (CountedLimit::Domains, usage.domains),
    ] {
        if let Err(max) = check_count(limits, limit, used) {
            return Err(StoreError::Downgrade {
                limit,
                usage: used,
                max,
                plan: plan.to_owned(),
            });
        }
    }
    Ok(())
}

/// `PlanLimit` if having `count` of `limit` is over the subscription's limit.
pub(crate) fn check_limit(
    sub: &Subscription,
    limit: CountedLimit,
    count: u64,
) -> Result<(), StoreError> {
    check_count(&sub.limits, limit, count).map_err(|max| StoreError::PlanLimit {
        limit,
        max,
        plan: sub.plan.clone(),
    })
}

// ---- users and keys -----------------------------------------------------------------------

pub(crate) async fn fetch_users(
    conn: &mut AnyConnection,
    tenant: &str,
) -> Result<Vec<UserRecord>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        user_cols!(),
        " FROM users WHERE tenant_id = $1 ORDER BY created_at, id"
    ))
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(user_from_row)
    .collect()
}

pub(crate) async fn fetch_user(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
) -> Result<Option<UserRecord>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        user_cols!(),
        " FROM users WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(user_from_row)
    .transpose()
}

/// Inserts a user (`tenant` `None` for a platform admin). Email is stored lowercased.
pub(crate) async fn insert_user(
    conn: &mut AnyConnection,
    tenant: Option<&str>,
    id: &str,
    email: &str,
    password_hash: &str,
    role: Role,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO users (id, tenant_id, email, password_hash, role, token_version, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 0, $6, $6)",
    )
    .bind(id)
    .bind(tenant)
    .bind(email)
    .bind(password_hash)
    .bind(role.as_str())
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(|e| {
        if unique_violation_on(&e, "email") {
            StoreError::Conflict {
                kind: "user",
                id: email.to_owned(),
            }
        } else {
            conflict_on_unique("user", id)(e)
        }
    })?;
    Ok(())
}

/// Emails are unique regardless of case: stored and looked up lowercased.
pub(crate) fn normalize_email(email: &str) -> Result<String, StoreError> {
    let e = email.trim().to_lowercase();
    if e.is_empty() {
        return Err(StoreError::Invalid("email must not be empty".into()));
    }
    Ok(e)
}

pub(crate) async fn fetch_keys(
    conn: &mut AnyConnection,
    tenant: &str,
) -> Result<Vec<ApiKeyRecord>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        key_cols!(),
        " FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id"
    ))
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(key_from_row)
    .collect()
}

pub(crate) async fn fetch_key(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
) -> Result<Option<ApiKeyRecord>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        key_cols!(),
        " FROM api_keys WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(key_from_row)
    .transpose()
}

// ---- routes, backends, domains ------------------------------------------------------------

pub(crate) async fn fetch_routes(
    conn: &mut AnyConnection,
    tenant: &str,
) -> Result<Vec<RouteSpec>, StoreError> {
    let routes = sqlx::query(concat!(
        "SELECT ",
        route_cols!(),
        " FROM routes WHERE tenant_id = $1 ORDER BY id"
    ))
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(route_from_row)
    .collect::<Result<Vec<_>, _>>()?;
    let backends = sqlx::query(concat!(
        "SELECT ",
        backend_cols!(),
        " FROM backends WHERE tenant_id = $1 ORDER BY route_id, position"
    ))
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(backend_from_row)
    .collect::<Result<Vec<_>, _>>()?;
    Ok(assemble_routes(routes, backends)
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// The routes of the tenants whose id is in `(after, upto]`, keyed by tenant id (two queries
/// in all).
pub(crate) async fn fetch_routes_of(
    conn: &mut AnyConnection,
    after: &str,
    upto: &str,
) -> Result<HashMap<String, Vec<RouteSpec>>, StoreError> {
    let routes = sqlx::query(concat!(
        "SELECT ",
        route_cols!(),
        " FROM routes WHERE tenant_id > $1 AND tenant_id <= $2 ORDER BY tenant_id, id"
    ))
    .bind(after)
    .bind(upto)
    .fetch_all(&mut *conn)
    .await?;
    let backends = sqlx::query(concat!(
        "SELECT ",
        backend_cols!(),
        " FROM backends WHERE tenant_id > $1 AND tenant_id <= $2 \
         ORDER BY tenant_id, route_id, position"
    ))
    .bind(after)
    .bind(upto)
    .fetch_all(&mut *conn)
    .await?;
    let routes = routes
        .iter()
        .map(route_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let backends = backends
        .iter()
        .map(backend_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let mut out: HashMap<String, Vec<RouteSpec>> = HashMap::new();
    for (t, r) in assemble_routes(routes, backends) {
        out.entry(t).or_default().push(r);
    }
    Ok(out)
}

pub(crate) async fn fetch_route(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
) -> Result<Option<RouteSpec>, StoreError> {
    let Some(row) = sqlx::query(concat!(
        "SELECT ",
        route_cols!(),
        " FROM routes WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let (_, mut route) = route_from_row(&row)?;
    route.backends = sqlx::query(concat!(
        "SELECT ",
        backend_cols!(),
        " FROM backends WHERE tenant_id = $1 AND route_id = $2 ORDER BY position"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| backend_from_row(r).map(|(_, b)| b))
    .collect::<Result<_, _>>()?;
    Ok(Some(route))
}

fn optional_json<T: serde::Serialize>(v: Option<&T>) -> Result<Option<String>, StoreError> {
    v.map(codec::to_text).transpose()
}

/// Maps a unique violation on the routes table: the id (primary key) or host and path prefix.
fn route_conflict(r: &RouteSpec) -> impl FnOnce(sqlx::Error) -> StoreError + '_ {
    move |e| {
        if unique_violation_on(&e, "host") || unique_violation_on(&e, "path") {
            StoreError::Conflict {
                kind: "route",
                id: format!("{}{}", r.host, r.path_prefix.as_deref().unwrap_or("/")),
            }
        } else {
            conflict_on_unique("route", &r.id)(e)
        }
    }
}

/// Inserts a route row and its backends.
pub(crate) async fn insert_route(
    conn: &mut AnyConnection,
    tenant: &str,
    r: &RouteSpec,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO routes (tenant_id, id, host, path_prefix, algorithm, tls, health_check, \
         created_at, updated_at, kind, ratelimit, waf) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10, $11)",
    )
    .bind(tenant)
    .bind(&r.id)
    .bind(&r.host)
    .bind(r.path_prefix.as_deref())
    .bind(r.algorithm.as_deref())
    .bind(optional_json(r.tls.as_deref())?)
    .bind(optional_json(r.health_check.as_deref())?)
    .bind(now)
    .bind(r.kind.as_deref())
    .bind(optional_json(r.ratelimit.as_ref())?)
    .bind(optional_json(r.waf.as_ref())?)
    .execute(&mut *conn)
    .await
    .map_err(route_conflict(r))?;
    insert_backends(conn, tenant, r).await
}

/// Rewrites an existing route row (keeping `created_at`) and replaces its backends.
pub(crate) async fn update_route(
    conn: &mut AnyConnection,
    tenant: &str,
    r: &RouteSpec,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE routes SET host = $3, path_prefix = $4, algorithm = $5, tls = $6, \
         health_check = $7, updated_at = $8, kind = $9, ratelimit = $10, waf = $11 \
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(&r.id)
    .bind(&r.host)
    .bind(r.path_prefix.as_deref())
    .bind(r.algorithm.as_deref())
    .bind(optional_json(r.tls.as_deref())?)
    .bind(optional_json(r.health_check.as_deref())?)
    .bind(now)
    .bind(r.kind.as_deref())
    .bind(optional_json(r.ratelimit.as_ref())?)
    .bind(optional_json(r.waf.as_ref())?)
    .execute(&mut *conn)
    .await
    .map_err(route_conflict(r))?;
    sqlx::query("DELETE FROM backends WHERE tenant_id = $1 AND route_id = $2")
        .bind(tenant)
        .bind(&r.id)
        .execute(&mut *conn)
        .await?;
    insert_backends(conn, tenant, r).await
}

async fn insert_backends(
    conn: &mut AnyConnection,
    tenant: &str,
    r: &RouteSpec,
) -> Result<(), StoreError> {
    for (i, b) in r.backends.iter().enumerate() {
        sqlx::query(
            "INSERT INTO backends (tenant_id, route_id, position, address, weight, state) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(tenant)
        .bind(&r.id)
        .bind(i64::try_from(i).unwrap_or(i64::MAX))
        .bind(&b.address)
        .bind(b.weight.map(i64::from))
        .bind(b.state.as_deref())
        .execute(&mut *conn)
        .await
        .map_err(conflict_on_unique("backend", &b.address))?;
    }
    Ok(())
}

/// The tenant owning `host` (lowercased) in the registry.
pub(crate) async fn host_owner(
    conn: &mut AnyConnection,
    host: &str,
) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT tenant_id FROM domains WHERE host = $1")
            .bind(host)
            .fetch_optional(&mut *conn)
            .await?,
    )
}

/// `Conflict { kind: "host" }` if another tenant owns `host`.
pub(crate) async fn check_host_free(
    conn: &mut AnyConnection,
    tenant: &str,
    host: &str,
) -> Result<(), StoreError> {
    match host_owner(conn, &host.to_ascii_lowercase()).await? {
        Some(owner) if owner != tenant => Err(StoreError::Conflict {
            kind: "host",
            id: host.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Makes the registry hold exactly the tenant's route hosts: releases hosts no route uses any
/// more and claims new ones (`Conflict { kind: "host" }` if another tenant holds one; the
/// primary key settles concurrent claims).
pub(crate) async fn sync_domains(conn: &mut AnyConnection, tenant: &str) -> Result<(), StoreError> {
    sqlx::query(
        "DELETE FROM domains WHERE tenant_id = $1 AND host NOT IN \
         (SELECT lower(host) FROM routes WHERE tenant_id = $1)",
    )
    .bind(tenant)
    .execute(&mut *conn)
    .await?;
    let missing: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT lower(host) FROM routes WHERE tenant_id = $1 AND lower(host) NOT IN \
         (SELECT host FROM domains WHERE tenant_id = $1)",
    )
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?;
    for host in missing {
        sqlx::query(
            "INSERT INTO domains (host, tenant_id) VALUES ($1, $2) ON CONFLICT (host) DO NOTHING",
        )
        .bind(&host)
        .bind(tenant)
        .execute(&mut *conn)
        .await?;
        if host_owner(conn, &host).await?.as_deref() != Some(tenant) {
            return Err(StoreError::Conflict {
                kind: "host",
                id: host,
            });
        }
    }
    Ok(())
}

pub(crate) fn route_json(r: &RouteSpec) -> Value {
    serde_json::to_value(r).unwrap_or(Value::Null)
}

// ---- audit --------------------------------------------------------------------------------

/// Appends an audit row (in the caller's transaction).
pub(crate) async fn write_audit(
    conn: &mut AnyConnection,
    actor: &Actor,
    tenant: Option<&str>,
    action: &str,
    target: &str,
    before: Option<&Value>,
    after: Option<&Value>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (actor, tenant_id, action, target, before, after, ip, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&actor.id)
    .bind(tenant)
    .bind(action)
    .bind(target)
    .bind(before.map(Value::to_string))
    .bind(after.map(Value::to_string))
    .bind(actor.ip.as_deref())
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The newest audit rows (of `tenant`, or all), older than `before_id`.
pub(crate) async fn fetch_audit(
    conn: &mut AnyConnection,
    tenant: Option<&str>,
    limit: i64,
    before_id: Option<i64>,
) -> Result<Vec<AuditEntry>, StoreError> {
    let before = before_id.unwrap_or(i64::MAX);
    let rows = match tenant {
        Some(t) => {
            sqlx::query(concat!(
                "SELECT ",
                audit_cols!(),
                " FROM audit_log WHERE tenant_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
            ))
            .bind(t)
            .bind(before)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?
        }
        None => {
            sqlx::query(concat!(
                "SELECT ",
                audit_cols!(),
                " FROM audit_log WHERE id < $1 ORDER BY id DESC LIMIT $2"
            ))
            .bind(before)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?
        }
    };
    rows.iter().map(audit_from_row).collect()
}

pub(crate) fn page(limit: u32) -> i64 {
    i64::from(limit.min(MAX_AUDIT_PAGE))
}

// ---- export -------------------------------------------------------------------------------

/// Everything the store holds about a tenant, without password or key hashes.
pub(crate) async fn export(conn: &mut AnyConnection, tenant: &str) -> Result<Value, StoreError> {
    let t = fetch_tenant(conn, tenant)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            kind: "tenant",
            id: tenant.to_owned(),
        })?;
    let sub = fetch_subscription(conn, tenant).await?;
    let users = fetch_users(conn, tenant).await?;
    let keys = fetch_keys(conn, tenant).await?;
    let routes = fetch_routes(conn, tenant).await?;
    let policy = fetch_doc(conn, &POLICY, tenant).await?;
    let waf = fetch_doc(conn, &WAF, tenant).await?;
    let audit = fetch_audit(conn, Some(tenant), i64::MAX, None).await?;
    Ok(json!({
        "tenant": t.json(),
        "subscription": sub.as_ref().map(Subscription::json),
        "policy": policy,
        "waf": waf,
        "users": users.iter().map(UserRecord::json).collect::<Vec<_>>(),
        "api_keys": keys.iter().map(ApiKeyRecord::json).collect::<Vec<_>>(),
        "routes": routes.iter().map(route_json).collect::<Vec<_>>(),
        "audit": audit.iter().map(AuditEntry::json).collect::<Vec<_>>(),
    }))
}

// ---- batches ------------------------------------------------------------------------------
// Large imports (a file with 100k tenants) write thousands of rows per statement instead of
// one statement per row: one round trip to the database per batch, not per row.

/// Bound parameters per multi-row statement: well under SQLite's 32,766 and PostgreSQL's
/// 65,535.
const BATCH_PARAMS: usize = 8_000;

/// A value of a batched statement.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Bind<'a> {
    /// Text.
    Text(&'a str),
    /// Text or NULL.
    OptText(Option<&'a str>),
    /// An integer.
    Int(i64),
    /// An integer or NULL.
    OptInt(Option<i64>),
}

/// Runs `{head} VALUES (..), (..) {tail}` over `values` (`cols` values per row) in as few
/// statements as [`BATCH_PARAMS`] allows. Returns the number of rows the statements changed.
pub(crate) async fn insert_batch(
    conn: &mut AnyConnection,
    head: &str,
    tail: &str,
    cols: usize,
    values: &[Bind<'_>],
) -> Result<u64, sqlx::Error> {
    debug_assert!(cols > 0 && values.len().is_multiple_of(cols));
    let anonymous = anonymous_placeholders(conn);
    let mut changed = 0;
    let per_statement = (BATCH_PARAMS / cols).max(1) * cols;
    for chunk in values.chunks(per_statement) {
        let mut sql = String::with_capacity(head.len() + tail.len() + 16 + chunk.len() * 7);
        sql.push_str(head);
        sql.push_str(" VALUES ");
        for i in 0..chunk.len() {
            let first = i % cols == 0;
            match (first, i) {
                (true, 0) => sql.push('('),
                (true, _) => sql.push_str("),("),
                (false, _) => sql.push(','),
            }
            push_placeholder(&mut sql, anonymous, i);
        }
        sql.push(')');
        sql.push_str(tail);
        changed += bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), chunk)
            .persistent(false)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    }
    Ok(changed)
}

/// Runs `{head} IN ($1, ..) {tail}` over `values`, in as few statements as
/// [`BATCH_PARAMS`] allows; `fetch` rows are collected. For deletes and lookups by key.
pub(crate) async fn fetch_in(
    conn: &mut AnyConnection,
    head: &str,
    tail: &str,
    values: &[Bind<'_>],
) -> Result<Vec<AnyRow>, sqlx::Error> {
    let anonymous = anonymous_placeholders(conn);
    let mut rows = Vec::new();
    for chunk in values.chunks(BATCH_PARAMS) {
        let mut sql = String::with_capacity(head.len() + tail.len() + 8 + chunk.len() * 7);
        sql.push_str(head);
        sql.push_str(" IN (");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            push_placeholder(&mut sql, anonymous, i);
        }
        sql.push(')');
        sql.push_str(tail);
        rows.extend(
            bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), chunk)
                .persistent(false)
                .fetch_all(&mut *conn)
                .await?,
        );
    }
    Ok(rows)
}

/// SQLite takes `?` (the values in order). With numbered `$N` placeholders, binding costs
/// SQLite a scan of the statement's parameter names per value: quadratic in a batch of
/// thousands. PostgreSQL takes only `$N`.
fn anonymous_placeholders(conn: &AnyConnection) -> bool {
    conn.backend_name().eq_ignore_ascii_case("sqlite")
}

fn push_placeholder(sql: &mut String, anonymous: bool, i: usize) {
    if anonymous {
        sql.push('?');
    } else {
        sql.push('$');
        sql.push_str(&(i + 1).to_string());
    }
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    values: &[Bind<'q>],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for v in values {
        q = match *v {
            Bind::Text(s) => q.bind(s),
            Bind::OptText(s) => q.bind(s),
            Bind::Int(n) => q.bind(n),
            Bind::OptInt(n) => q.bind(n),
        };
    }
    q
}

/// An audit row of a batch: actor and time are the batch's, the target is the tenant.
#[derive(Debug)]
pub(crate) struct AuditRow {
    /// The tenant (and target).
    pub tenant: String,
    /// What happened.
    pub action: &'static str,
    /// JSON before.
    pub before: Option<String>,
    /// JSON after.
    pub after: Option<String>,
}

impl AuditRow {
    /// A row from JSON values.
    pub(crate) fn new(
        tenant: &str,
        action: &'static str,
        before: Option<&Value>,
        after: Option<&Value>,
    ) -> Self {
        Self {
            tenant: tenant.to_owned(),
            action,
            before: before.map(Value::to_string),
            after: after.map(Value::to_string),
        }
    }
}

/// Appends the audit rows, in order (in the caller's transaction).
pub(crate) async fn write_audits(
    conn: &mut AnyConnection,
    actor: &Actor,
    rows: &[AuditRow],
) -> Result<(), StoreError> {
    let at = now_ms();
    let mut values = Vec::with_capacity(rows.len() * 8);
    for r in rows {
        values.extend([
            Bind::Text(&actor.id),
            Bind::Text(&r.tenant),
            Bind::Text(r.action),
            Bind::Text(&r.tenant),
            Bind::OptText(r.before.as_deref()),
            Bind::OptText(r.after.as_deref()),
            Bind::OptText(actor.ip.as_deref()),
            Bind::Int(at),
        ]);
    }
    insert_batch(
        conn,
        "INSERT INTO audit_log (actor, tenant_id, action, target, before, after, ip, at)",
        "",
        8,
        &values,
    )
    .await?;
    Ok(())
}

/// A tenant to create in a batch.
#[derive(Debug)]
pub(crate) struct NewTenantRow<'a> {
    /// Id, also its name.
    pub id: &'a str,
    /// Plan.
    pub plan: &'a str,
    /// `policy` column (JSON text).
    pub policy: Option<String>,
    /// `waf` column (JSON text).
    pub waf: Option<String>,
}

/// Creates the tenants (active, `managed_by`) and their subscriptions.
pub(crate) async fn insert_tenants(
    conn: &mut AnyConnection,
    rows: &[NewTenantRow<'_>],
    managed_by: &str,
    now: i64,
) -> Result<(), StoreError> {
    let mut values = Vec::with_capacity(rows.len() * 8);
    for r in rows {
        values.extend([
            Bind::Text(r.id),
            Bind::Text(r.id),
            Bind::Text("active"),
            Bind::Text(managed_by),
            Bind::Int(now),
            Bind::Int(now),
            Bind::OptText(r.policy.as_deref()),
            Bind::OptText(r.waf.as_deref()),
        ]);
    }
    insert_batch(
        conn,
        "INSERT INTO tenants (id, name, status, managed_by, created_at, updated_at, policy, waf)",
        "",
        8,
        &values,
    )
    .await
    .map_err(conflict_on_unique(
        "tenant",
        rows.first().map_or("", |r| r.id),
    ))?;
    values.clear();
    for r in rows {
        values.extend([
            Bind::Text(r.id),
            Bind::Text(r.plan),
            Bind::Text("active"),
            Bind::Int(now),
            Bind::Int(now + PERIOD_MS),
            Bind::Text("{}"),
            Bind::Int(now),
        ]);
    }
    insert_batch(
        conn,
        "INSERT INTO subscriptions (tenant_id, plan, status, period_start, period_end, \
         overrides, updated_at)",
        "",
        7,
        &values,
    )
    .await?;
    Ok(())
}

/// Inserts the tenants' routes with their backends, and claims their hosts in the registry
/// (`Conflict { kind: "host" }` if another tenant holds one). The tenants must hold no routes
/// and no hosts (new, or cleared first).
pub(crate) async fn insert_routes_of(
    conn: &mut AnyConnection,
    routes: &[(&str, &RouteSpec)],
    now: i64,
) -> Result<(), StoreError> {
    // Hosts first: a host another tenant holds fails the import before any route is written.
    let mut hosts: Vec<(String, &str)> = routes
        .iter()
        .map(|(t, r)| (r.host.to_ascii_lowercase(), *t))
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    let values: Vec<Bind<'_>> = hosts
        .iter()
        .flat_map(|(h, t)| [Bind::Text(h), Bind::Text(t)])
        .collect();
    let claimed = insert_batch(
        conn,
        "INSERT INTO domains (host, tenant_id)",
        " ON CONFLICT (host) DO NOTHING",
        2,
        &values,
    )
    .await?;
    if claimed != hosts.len() as u64 {
        let keys: Vec<Bind<'_>> = hosts.iter().map(|(h, _)| Bind::Text(h)).collect();
        let owners: HashMap<String, String> = fetch_in(
            conn,
            "SELECT host, tenant_id FROM domains WHERE host",
            "",
            &keys,
        )
        .await?
        .iter()
        .map(|row| Ok((row.try_get("host")?, row.try_get("tenant_id")?)))
        .collect::<Result<_, sqlx::Error>>()?;
        let taken = hosts
            .iter()
            .find(|(h, t)| owners.get(h).map(String::as_str) != Some(*t));
        return Err(StoreError::Conflict {
            kind: "host",
            id: taken.map_or_else(String::new, |(h, _)| h.clone()),
        });
    }
    let docs = routes
        .iter()
        .map(|(_, r)| {
            Ok([
                optional_json(r.tls.as_deref())?,
                optional_json(r.health_check.as_deref())?,
                optional_json(r.ratelimit.as_ref())?,
                optional_json(r.waf.as_ref())?,
            ])
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let mut values = Vec::with_capacity(routes.len() * 12);
    for ((t, r), [tls, hc, rl, waf]) in routes.iter().zip(&docs) {
        values.extend([
            Bind::Text(t),
            Bind::Text(&r.id),
            Bind::Text(&r.host),
            Bind::OptText(r.path_prefix.as_deref()),
            Bind::OptText(r.algorithm.as_deref()),
            Bind::OptText(tls.as_deref()),
            Bind::OptText(hc.as_deref()),
            Bind::Int(now),
            Bind::Int(now),
            Bind::OptText(r.kind.as_deref()),
            Bind::OptText(rl.as_deref()),
            Bind::OptText(waf.as_deref()),
        ]);
    }
    insert_batch(
        conn,
        "INSERT INTO routes (tenant_id, id, host, path_prefix, algorithm, tls, health_check, \
         created_at, updated_at, kind, ratelimit, waf)",
        "",
        12,
        &values,
    )
    .await
    .map_err(conflict_on_unique(
        "route",
        routes.first().map_or("", |(t, _)| *t),
    ))?;
    values.clear();
    for (t, r) in routes {
        for (i, b) in r.backends.iter().enumerate() {
            values.extend([
                Bind::Text(t),
                Bind::Text(&r.id),
                Bind::Int(i64::try_from(i).unwrap_or(i64::MAX)),
                Bind::Text(&b.address),
                Bind::OptInt(b.weight.map(i64::from)),
                Bind::OptText(b.state.as_deref()),
            ]);
        }
    }
    insert_batch(
        conn,
        "INSERT INTO backends (tenant_id, route_id, position, address, weight, state)",
        "",
        6,
        &values,
    )
    .await
    .map_err(conflict_on_unique(
        "backend",
        routes.first().map_or("", |(t, _)| *t),
    ))?;
    Ok(())
}

/// Deletes the tenants' routes (and so their backends) and their hosts.
pub(crate) async fn clear_routes_of(
    conn: &mut AnyConnection,
    tenants: &[&str],
) -> Result<(), StoreError> {
    let keys: Vec<Bind<'_>> = tenants.iter().map(|t| Bind::Text(t)).collect();
    fetch_in(conn, "DELETE FROM backends WHERE tenant_id", "", &keys).await?;
    fetch_in(conn, "DELETE FROM routes WHERE tenant_id", "", &keys).await?;
    fetch_in(conn, "DELETE FROM domains WHERE tenant_id", "", &keys).await?;
    Ok(())
}
