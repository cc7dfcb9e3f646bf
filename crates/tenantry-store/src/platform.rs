//! [`PlatformStore`]: operations across tenants (lifecycle, plans, logins and API key lookups,
//! the data plane's full load, the file import). On PostgreSQL its transactions set
//! `app.platform = 'on'`, which the row-level security policies let through.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;
use sqlx::AnyConnection;
use tenantry_config::{RouteSpec, TenantSpec};
use tenantry_domain::{LimitOverrides, PlanLimits, Role, TenantId, default_plans, derive_limits};

use crate::records::{
    Actor, ApiKeyRecord, AuditEntry, NewTenant, NewUser, PlanRecord, Subscription, TenantRecord,
    TenantState, TenantStatus, UserPatch, UserRecord,
};
use crate::sql::{self, key_cols, now_ms, tenant_cols, user_cols};
use crate::{Scope, Store, StoreError, Tx, codec};

/// Platform-wide operations. Obtained from [`Store::platform`]; callers must have checked that
/// the principal is a platform admin (or that the operation is an internal one, such as a login
/// lookup).
#[derive(Debug, Clone, Copy)]
pub struct PlatformStore<'a> {
    store: &'a Store,
}

fn not_found(kind: &'static str, id: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        id: id.to_owned(),
    }
}

/// API key `last_used_at` is written at most this often per key.
const LAST_USED_GRANULARITY_MS: i64 = 60_000;

impl<'a> PlatformStore<'a> {
    pub(crate) fn new(store: &'a Store) -> Self {
        Self { store }
    }

    async fn read(&self) -> Result<Tx, StoreError> {
        self.store.begin(Scope::Platform, false).await
    }

    async fn write(&self) -> Result<Tx, StoreError> {
        self.store.begin(Scope::Platform, true).await
    }

    /// Seeds [`default_plans`] into an empty plan table (run by [`Store::open`]).
    pub(crate) async fn seed_default_plans(&self) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM plans")
            .fetch_one(&mut *tx)
            .await?;
        if n == 0 {
            let now = now_ms();
            for (name, limits) in default_plans() {
                // Another process may seed at the same time: the first one wins.
                let done = sqlx::query(
                    "INSERT INTO plans (name, limits, created_at, updated_at) \
                     VALUES ($1, $2, $3, $3) ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .bind(codec::limits_to_json(&limits).to_string())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 1 {
                    let rec = PlanRecord {
                        name: name.to_owned(),
                        limits,
                        updated_at: now,
                    };
                    sql::write_audit(
                        &mut tx,
                        &Actor::system(),
                        None,
                        "plan.create",
                        name,
                        None,
                        Some(&rec.json()),
                    )
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Users on the whole platform (zero means the first admin has yet to be created).
    pub async fn count_users(&self) -> Result<u64, StoreError> {
        let mut tx = self.read().await?;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(sql::count_u64(n))
    }

    /// Changes a platform admin's password (bumping the token version, so earlier tokens stop
    /// working). Tenant users are changed through [`crate::TenantScope::update_user`].
    pub async fn update_platform_user(
        &self,
        actor: &Actor,
        id: &str,
        patch: UserPatch,
    ) -> Result<UserRecord, StoreError> {
        if patch.role.is_some_and(|r| r != Role::PlatformAdmin) {
            return Err(StoreError::Invalid(
                "a platform admin cannot take a tenant role".into(),
            ));
        }
        let Some(hash) = patch.password_hash else {
            return self
                .get_user(id)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "user",
                    id: id.to_owned(),
                });
        };
        let now = now_ms();
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "UPDATE users SET password_hash = $2, token_version = token_version + 1, \
             updated_at = $3 WHERE id = $1 AND tenant_id IS NULL",
        )
        .bind(id)
        .bind(&hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "user",
                id: id.to_owned(),
            });
        }
        sql::write_audit(
            &mut tx,
            actor,
            None,
            "user.update",
            id,
            None,
            Some(&serde_json::json!({"id": id, "password_changed": true})),
        )
        .await?;
        tx.commit().await?;
        self.get_user(id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "user",
                id: id.to_owned(),
            })
    }

    /// Creates a platform admin (the role is forced). `Conflict user` if the email is taken.
    pub async fn create_platform_admin(
        &self,
        actor: &Actor,
        user: NewUser,
    ) -> Result<UserRecord, StoreError> {
        let email = sql::normalize_email(&user.email)?;
        let now = now_ms();
        let mut tx = self.write().await?;
        sql::insert_user(
            &mut tx,
            None,
            &user.id,
            &email,
            &user.password_hash,
            Role::PlatformAdmin,
            now,
        )
        .await?;
        let rec = UserRecord {
            id: user.id,
            tenant: None,
            email,
            password_hash: user.password_hash,
            role: Role::PlatformAdmin,
            token_version: 0,
            created_at: now,
        };
        sql::write_audit(
            &mut tx,
            actor,
            None,
            "user.create",
            &rec.id,
            None,
            Some(&rec.json()),
        )
        .await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// The user with this email, in any case, in any tenant (for logins).
    pub async fn find_user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        let email = email.trim().to_lowercase();
        let mut tx = self.read().await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            user_cols!(),
            " FROM users WHERE email = $1"
        ))
        .bind(&email)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(sql::user_from_row).transpose()
    }

    /// Any user by id (for token checks).
    pub async fn get_user(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        let mut tx = self.read().await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            user_cols!(),
            " FROM users WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(sql::user_from_row).transpose()
    }

    /// The API key with this hash, revoked or not (the caller checks `revoked_at`). Records the
    /// use in `last_used_at`, at most once a minute per key.
    pub async fn find_api_key(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let mut tx = self.read().await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            " FROM api_keys WHERE hash = $1"
        ))
        .bind(hash)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let Some(mut key) = row.as_ref().map(sql::key_from_row).transpose()? else {
            return Ok(None);
        };
        let now = now_ms();
        let stale = key
            .last_used_at
            .is_none_or(|t| now - t >= LAST_USED_GRANULARITY_MS);
        if key.revoked_at.is_none() && stale {
            // Bookkeeping: a failure here must not fail the authentication.
            match self.touch_api_key(&key.id, now).await {
                Ok(()) => key.last_used_at = Some(now),
                Err(e) => tracing::warn!(error = %e, key = %key.id, "cannot record api key use"),
            }
        }
        Ok(Some(key))
    }

    async fn touch_api_key(&self, id: &str, now: i64) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 \
             AND (last_used_at IS NULL OR last_used_at <= $3)",
        )
        .bind(id)
        .bind(now)
        .bind(now - LAST_USED_GRANULARITY_MS)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every tenant, ordered by id.
    pub async fn list_tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        let mut tx = self.read().await?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            tenant_cols!(),
            " FROM tenants ORDER BY id"
        ))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(sql::tenant_from_row).collect()
    }

    /// One tenant.
    pub async fn get_tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        let mut tx = self.read().await?;
        let t = sql::fetch_tenant(&mut tx, id.as_str()).await?;
        tx.commit().await?;
        Ok(t)
    }

    /// Creates a tenant with its subscription and, if given, its first owner (the role is
    /// forced to `owner`), in one transaction. `Conflict tenant`, `Conflict user` (email taken)
    /// or `NotFound plan`.
    pub async fn create_tenant(
        &self,
        actor: &Actor,
        t: NewTenant,
        owner: Option<NewUser>,
    ) -> Result<TenantRecord, StoreError> {
        let owner_email = owner
            .as_ref()
            .map(|o| sql::normalize_email(&o.email))
            .transpose()?;
        let now = now_ms();
        let id = t.id.as_str();
        let mut tx = self.write().await?;
        sql::require_plan(&mut tx, &t.plan).await?;
        sql::insert_tenant(&mut tx, id, &t.name, &t.plan, "api", now).await?;
        let rec = TenantRecord {
            id: t.id.clone(),
            name: t.name.clone(),
            status: TenantStatus::Active,
            managed_by: "api".into(),
            created_at: now,
        };
        let mut after = rec.json();
        after["plan"] = Value::from(t.plan.as_str());
        sql::write_audit(
            &mut tx,
            actor,
            Some(id),
            "tenant.create",
            id,
            None,
            Some(&after),
        )
        .await?;
        if let (Some(o), Some(email)) = (owner, owner_email) {
            sql::insert_user(
                &mut tx,
                Some(id),
                &o.id,
                &email,
                &o.password_hash,
                Role::Owner,
                now,
            )
            .await?;
            let user = UserRecord {
                id: o.id,
                tenant: Some(t.id.clone()),
                email,
                password_hash: o.password_hash,
                role: Role::Owner,
                token_version: 0,
                created_at: now,
            };
            sql::write_audit(
                &mut tx,
                actor,
                Some(id),
                "user.create",
                &user.id,
                None,
                Some(&user.json()),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(rec)
    }

    /// Suspends or reactivates a tenant.
    pub async fn set_tenant_status(
        &self,
        actor: &Actor,
        id: &TenantId,
        status: TenantStatus,
    ) -> Result<TenantRecord, StoreError> {
        let now = now_ms();
        let mut tx = self.write().await?;
        let before = sql::fetch_tenant(&mut tx, id.as_str())
            .await?
            .ok_or_else(|| not_found("tenant", id.as_str()))?;
        sqlx::query("UPDATE tenants SET status = $2, updated_at = $3 WHERE id = $1")
            .bind(id.as_str())
            .bind(status.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let after = TenantRecord {
            status,
            ..before.clone()
        };
        sql::write_audit(
            &mut tx,
            actor,
            Some(id.as_str()),
            "tenant.update",
            id.as_str(),
            Some(&before.json()),
            Some(&after.json()),
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Exports the tenant (as [`TenantScope::export`](crate::TenantScope::export)) and deletes
    /// it with all its rows, in one transaction. The deletion's audit row has no tenant (the
    /// tenant's own audit rows go with it) and the tenant's id as target.
    pub async fn delete_tenant(&self, actor: &Actor, id: &TenantId) -> Result<Value, StoreError> {
        let mut tx = self.write().await?;
        let export = sql::export(&mut tx, id.as_str()).await?;
        sqlx::query("DELETE FROM tenants WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        sql::write_audit(
            &mut tx,
            actor,
            None,
            "tenant.delete",
            id.as_str(),
            Some(&export["tenant"]),
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(export)
    }

    /// Every plan, ordered by name.
    pub async fn list_plans(&self) -> Result<Vec<PlanRecord>, StoreError> {
        let mut tx = self.read().await?;
        let rows = sqlx::query("SELECT name, limits, updated_at FROM plans ORDER BY name")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(sql::plan_from_row).collect()
    }

    /// One plan.
    pub async fn get_plan(&self, name: &str) -> Result<Option<PlanRecord>, StoreError> {
        let mut tx = self.read().await?;
        let p = sql::fetch_plan(&mut tx, name).await?;
        tx.commit().await?;
        Ok(p)
    }

    /// Creates a plan. `Conflict plan` if the name exists.
    pub async fn create_plan(
        &self,
        actor: &Actor,
        name: &str,
        limits: &PlanLimits,
    ) -> Result<PlanRecord, StoreError> {
        if name.trim().is_empty() {
            return Err(StoreError::Invalid("plan name must not be empty".into()));
        }
        let now = now_ms();
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO plans (name, limits, created_at, updated_at) VALUES ($1, $2, $3, $3)",
        )
        .bind(name)
        .bind(codec::limits_to_json(limits).to_string())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(crate::error::conflict_on_unique("plan", name))?;
        let rec = PlanRecord {
            name: name.to_owned(),
            limits: limits.clone(),
            updated_at: now,
        };
        sql::write_audit(
            &mut tx,
            actor,
            None,
            "plan.create",
            name,
            None,
            Some(&rec.json()),
        )
        .await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// Changes a plan's limits; returns it with the tenants subscribed to it (whose effective
    /// limits changed). Existing usage over the new limits is kept, not refused.
    pub async fn update_plan(
        &self,
        actor: &Actor,
        name: &str,
        limits: &PlanLimits,
    ) -> Result<(PlanRecord, Vec<TenantId>), StoreError> {
        let now = now_ms();
        let mut tx = self.write().await?;
        let before = sql::require_plan(&mut tx, name).await?;
        sqlx::query("UPDATE plans SET limits = $2, updated_at = $3 WHERE name = $1")
            .bind(name)
            .bind(codec::limits_to_json(limits).to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT tenant_id FROM subscriptions WHERE plan = $1 ORDER BY tenant_id",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        let after = PlanRecord {
            name: name.to_owned(),
            limits: limits.clone(),
            updated_at: now,
        };
        sql::write_audit(
            &mut tx,
            actor,
            None,
            "plan.update",
            name,
            Some(&before.json()),
            Some(&after.json()),
        )
        .await?;
        tx.commit().await?;
        let ids = ids
            .iter()
            .map(|s| sql::parse_tenant_id(s))
            .collect::<Result<_, _>>()?;
        Ok((after, ids))
    }

    /// Sets a tenant's limit overrides (replacing the previous ones). `Downgrade` if the
    /// tenant's usage is over the resulting limits.
    pub async fn set_overrides(
        &self,
        actor: &Actor,
        id: &TenantId,
        o: &LimitOverrides,
    ) -> Result<Subscription, StoreError> {
        let now = now_ms();
        let t = id.as_str();
        let mut tx = self.write().await?;
        sql::lock_tenant(&mut tx, t, now).await?;
        let before = sql::require_subscription(&mut tx, t).await?;
        let plan = sql::require_plan(&mut tx, &before.plan).await?;
        let limits = derive_limits(&plan.limits, o);
        let usage = sql::usage(&mut tx, t).await?;
        sql::check_fits(usage, &limits, &before.plan)?;
        sqlx::query(
            "UPDATE subscriptions SET overrides = $2, updated_at = $3 WHERE tenant_id = $1",
        )
        .bind(t)
        .bind(codec::overrides_to_json(o).to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let after = Subscription {
            overrides: o.clone(),
            limits,
            ..before.clone()
        };
        sql::write_audit(
            &mut tx,
            actor,
            Some(t),
            "subscription.update",
            t,
            Some(&before.json()),
            Some(&after.json()),
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Every tenant with its plan, effective limits and routes, ordered by id: what the data
    /// plane loads at start. Four queries whatever the number of tenants.
    pub async fn load_all(&self) -> Result<Vec<TenantState>, StoreError> {
        let mut tx = self.read().await?;
        let tenants = sqlx::query(concat!(
            "SELECT ",
            tenant_cols!(),
            " FROM tenants ORDER BY id"
        ))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(sql::tenant_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        let subs = sqlx::query(
            "SELECT s.tenant_id, s.plan, s.overrides, s.period_start, p.limits \
             FROM subscriptions s JOIN plans p ON p.name = s.plan",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut plans: HashMap<String, (String, PlanLimits, i64)> =
            HashMap::with_capacity(subs.len());
        let mut cache: HashMap<String, PlanLimits> = HashMap::new();
        for row in &subs {
            use sqlx::Row;
            let tenant: String = row.try_get("tenant_id")?;
            let plan: String = row.try_get("plan")?;
            let overrides: String = row.try_get("overrides")?;
            let anchor: i64 = row.try_get("period_start")?;
            let base = match cache.get(&plan) {
                Some(l) => l.clone(),
                None => {
                    let text: String = row.try_get("limits")?;
                    let l = codec::limits_from_json(&codec::parse_text("plan limits", &text)?)
                        .map_err(|e| crate::error::corrupt("plan limits", e))?;
                    cache.insert(plan.clone(), l.clone());
                    l
                }
            };
            let limits = if overrides == "{}" {
                base
            } else {
                let o = codec::overrides_from_json(&codec::parse_text("overrides", &overrides)?)
                    .map_err(|e| crate::error::corrupt("overrides", e))?;
                derive_limits(&base, &o)
            };
            plans.insert(tenant, (plan, limits, anchor));
        }
        let mut routes = sql::fetch_all_routes(&mut tx).await?;
        let mut policies = sql::fetch_all_docs(&mut tx, &sql::POLICY).await?;
        let mut wafs = sql::fetch_all_docs(&mut tx, &sql::WAF).await?;
        tx.commit().await?;
        let mut out = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            let Some((plan, limits, billing_anchor_ms)) = plans.remove(tenant.id.as_str()) else {
                tracing::warn!(tenant = %tenant.id, "tenant without a subscription: skipped");
                continue;
            };
            let routes = routes.remove(tenant.id.as_str()).unwrap_or_default();
            let policy = policies.remove(tenant.id.as_str());
            let waf = wafs.remove(tenant.id.as_str());
            out.push(TenantState {
                tenant,
                plan,
                limits,
                policy,
                waf,
                billing_anchor_ms,
                routes,
            });
        }
        Ok(out)
    }

    /// One tenant as [`PlatformStore::load_all`] gives it.
    pub async fn load_tenant(&self, id: &TenantId) -> Result<Option<TenantState>, StoreError> {
        let mut tx = self.read().await?;
        let state = load_one(&mut tx, id.as_str()).await?;
        tx.commit().await?;
        Ok(state)
    }

    /// Makes the store hold the file's tenants, in one transaction. A tenant missing from the
    /// store is created (`managed_by = file`, named after its id, on the spec's plan or
    /// `free`); an existing one becomes file-managed and takes the spec's plan if it names one.
    /// Each tenant's routes (and so its hosts) are replaced by the spec's. Tenants the file
    /// managed but no longer lists lose their routes (they stop serving) and go back to `api`
    /// management; their users, keys and audit log are kept. Plan limits are
    /// not enforced on the file (the operator wrote it). Returns the tenants whose routes or
    /// plan changed (including new ones), ordered by id. Audit actor: `file`.
    pub async fn import_file_tenants(
        &self,
        tenants: &[TenantSpec],
    ) -> Result<Vec<TenantId>, StoreError> {
        let actor = Actor::file();
        let now = now_ms();
        let mut tx = self.write().await?;
        let mut changed = BTreeSet::new();
        let mut listed = BTreeSet::new();
        // Routes to write once every changed tenant's old routes are gone, so that a host may
        // move from one file tenant to another in the same import.
        let mut pending: Vec<(String, Vec<RouteSpec>)> = Vec::new();
        // The current state in a few queries, not a few per tenant: with 100k file tenants
        // an unchanged file costs five reads in all.
        let plan_names: BTreeSet<String> = sqlx::query_scalar("SELECT name FROM plans")
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
        let mut existing: HashMap<String, TenantRecord> =
            sqlx::query(concat!("SELECT ", tenant_cols!(), " FROM tenants"))
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| sql::tenant_from_row(row).map(|t| (t.id.as_str().to_owned(), t)))
                .collect::<Result<_, _>>()?;
        let sub_plans: HashMap<String, String> =
            sqlx::query_as::<_, (String, String)>("SELECT tenant_id, plan FROM subscriptions")
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
        let mut policies = sql::fetch_all_docs(&mut tx, &sql::POLICY).await?;
        let mut wafs = sql::fetch_all_docs(&mut tx, &sql::WAF).await?;
        let mut all_routes = sql::fetch_all_routes(&mut tx).await?;
        let require_plan = |p: &str| {
            if plan_names.contains(p) {
                Ok(())
            } else {
                Err(StoreError::NotFound {
                    kind: "plan",
                    id: p.to_owned(),
                })
            }
        };
        for spec in tenants {
            let id = TenantId::parse(&spec.id)
                .map_err(|e| StoreError::Invalid(format!("tenant id {:?}: {e}", spec.id)))?;
            let t = id.as_str().to_owned();
            if !listed.insert(t.clone()) {
                return Err(StoreError::Invalid(format!("tenant {t:?} is listed twice")));
            }
            let plan = spec.plan.as_deref();
            if let Some(p) = plan {
                require_plan(p)?;
            }
            match existing.remove(&t) {
                None => {
                    let p = plan.unwrap_or("free");
                    require_plan(p)?;
                    sql::insert_tenant(&mut tx, &t, &t, p, "file", now).await?;
                    let mut after = TenantRecord {
                        id: id.clone(),
                        name: t.clone(),
                        status: TenantStatus::Active,
                        managed_by: "file".into(),
                        created_at: now,
                    }
                    .json();
                    after["plan"] = Value::from(p);
                    sql::write_audit(
                        &mut tx,
                        &actor,
                        Some(&t),
                        "tenant.create",
                        &t,
                        None,
                        Some(&after),
                    )
                    .await?;
                    changed.insert(id.clone());
                }
                Some(before) => {
                    if before.managed_by != "file" {
                        set_managed_by(&mut tx, &actor, &before, "file", now).await?;
                    }
                    let current_plan = sub_plans.get(&t).map(String::as_str);
                    if let Some(p) = plan.filter(|p| Some(*p) != current_plan) {
                        let sub = sql::require_subscription(&mut tx, &t).await?;
                        sqlx::query(
                            "UPDATE subscriptions SET plan = $2, updated_at = $3 WHERE tenant_id = $1",
                        )
                        .bind(&t)
                        .bind(p)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                        let mut after = sub.json();
                        after["plan"] = Value::from(p);
                        sql::write_audit(
                            &mut tx,
                            &actor,
                            Some(&t),
                            "subscription.update",
                            &t,
                            Some(&sub.json()),
                            Some(&after),
                        )
                        .await?;
                        changed.insert(id.clone());
                    }
                }
            }
            // The file's policy wins, like its routes (absent: unrestricted).
            let policy = policies.remove(&t);
            if policy != spec.policy {
                let (before, after) = (policy.as_ref(), spec.policy.as_ref());
                sql::write_doc(&mut tx, &sql::POLICY, &actor, &t, before, after).await?;
                changed.insert(id.clone());
            }
            // So do its WAF settings (absent: the plan's level, blocking, no exclusions).
            let waf = wafs.remove(&t);
            if waf != spec.waf {
                let (before, after) = (waf.as_ref(), spec.waf.as_ref());
                sql::write_doc(&mut tx, &sql::WAF, &actor, &t, before, after).await?;
                changed.insert(id.clone());
            }
            let mut wanted = spec.routes.clone();
            wanted.sort_by(|a, b| a.id.cmp(&b.id));
            let current = all_routes.remove(&t).unwrap_or_default();
            if current != wanted {
                sqlx::query("DELETE FROM routes WHERE tenant_id = $1")
                    .bind(&t)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM domains WHERE tenant_id = $1")
                    .bind(&t)
                    .execute(&mut *tx)
                    .await?;
                sql::write_audit(
                    &mut tx,
                    &actor,
                    Some(&t),
                    "routes.replace",
                    &t,
                    Some(&Value::Array(current.iter().map(sql::route_json).collect())),
                    Some(&Value::Array(wanted.iter().map(sql::route_json).collect())),
                )
                .await?;
                changed.insert(id.clone());
                pending.push((t, wanted));
            }
        }
        for (t, routes) in &pending {
            for r in routes {
                sql::insert_route(&mut tx, t, r, now).await?;
            }
            sql::sync_domains(&mut tx, t).await?;
        }
        // File tenants the file dropped: handed back to the API, data kept. (`existing` now
        // holds the tenants the file did not list.)
        let mut file_managed: Vec<TenantRecord> = existing
            .into_values()
            .filter(|t| t.managed_by == "file")
            .collect();
        file_managed.sort_by(|a, b| a.id.cmp(&b.id));
        for t in &file_managed {
            // The file no longer routes it: it stops serving (its routes and hosts go), and
            // its users, keys and audit log stay with the tenant, now managed by the API.
            let id = t.id.as_str();
            let current = all_routes.remove(id).unwrap_or_default();
            if !current.is_empty() {
                sqlx::query("DELETE FROM routes WHERE tenant_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM domains WHERE tenant_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sql::write_audit(
                    &mut tx,
                    &actor,
                    Some(id),
                    "routes.replace",
                    id,
                    Some(&Value::Array(current.iter().map(sql::route_json).collect())),
                    Some(&Value::Array(Vec::new())),
                )
                .await?;
                changed.insert(t.id.clone());
            }
            set_managed_by(&mut tx, &actor, t, "api", now).await?;
        }
        tx.commit().await?;
        Ok(changed.into_iter().collect())
    }

    /// The platform-wide audit log, newest first, `limit` rows (at most 1000) older than
    /// `before_id`.
    pub async fn audit(
        &self,
        limit: u32,
        before_id: Option<i64>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut tx = self.read().await?;
        let a = sql::fetch_audit(&mut tx, None, sql::page(limit), before_id).await?;
        tx.commit().await?;
        Ok(a)
    }
}

async fn set_managed_by(
    conn: &mut AnyConnection,
    actor: &Actor,
    before: &TenantRecord,
    managed_by: &str,
    now: i64,
) -> Result<(), StoreError> {
    let t = before.id.as_str();
    sqlx::query("UPDATE tenants SET managed_by = $2, updated_at = $3 WHERE id = $1")
        .bind(t)
        .bind(managed_by)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    let after = TenantRecord {
        managed_by: managed_by.to_owned(),
        ..before.clone()
    };
    sql::write_audit(
        conn,
        actor,
        Some(t),
        "tenant.update",
        t,
        Some(&before.json()),
        Some(&after.json()),
    )
    .await
}

async fn load_one(conn: &mut AnyConnection, id: &str) -> Result<Option<TenantState>, StoreError> {
    let Some(tenant) = sql::fetch_tenant(conn, id).await? else {
        return Ok(None);
    };
    let sub = sql::require_subscription(conn, id).await?;
    let routes = sql::fetch_routes(conn, id).await?;
    let policy = sql::fetch_doc(conn, &sql::POLICY, id).await?;
    let waf = sql::fetch_doc(conn, &sql::WAF, id).await?;
    Ok(Some(TenantState {
        tenant,
        plan: sub.plan,
        limits: sub.limits,
        policy,
        waf,
        billing_anchor_ms: sub.period_start,
        routes,
    }))
}
