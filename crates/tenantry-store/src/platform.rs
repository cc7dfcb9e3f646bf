//! [`PlatformStore`]: operations across tenants (lifecycle, plans, logins and API key lookups,
//! the data plane's full load, the file import). On PostgreSQL its transactions set
//! `app.platform = 'on'`, which the row-level security policies let through.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;
use sqlx::AnyConnection;
use tenantry_config::{PolicySpec, RouteSpec, TenantSpec, TenantWafSpec};
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

/// Tenants per page when the whole store is read ([`each_stored`]).
const LOAD_PAGE: i64 = 1000;

/// A subscription row's (tenant, (plan, effective limits, billing anchor)); `plans` caches
/// each plan's decoded limits.
fn subscription_limits(
    row: &sqlx::any::AnyRow,
    plans: &mut HashMap<String, PlanLimits>,
) -> Result<(String, (String, PlanLimits, i64)), StoreError> {
    use sqlx::Row;
    let tenant: String = row.try_get("tenant_id")?;
    let plan: String = row.try_get("plan")?;
    let overrides: String = row.try_get("overrides")?;
    let anchor: i64 = row.try_get("period_start")?;
    let base = match plans.get(&plan) {
        Some(l) => l.clone(),
        None => {
            let text: String = row.try_get("limits")?;
            let l = codec::limits_from_json(&codec::parse_text("plan limits", &text)?)
                .map_err(|e| crate::error::corrupt("plan limits", e))?;
            plans.insert(plan.clone(), l.clone());
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
    Ok((tenant, (plan, limits, anchor)))
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
    /// plane loads at start. See [`PlatformStore::load_each`], which it collects.
    pub async fn load_all(&self) -> Result<Vec<TenantState>, StoreError> {
        let mut out = Vec::new();
        self.load_each(|t| out.push(t)).await?;
        Ok(out)
    }

    /// Hands every tenant, with its plan, effective limits and routes, to `each`, in id order,
    /// from one consistent read. Tenants are read a thousand at a time (four queries a
    /// page), so memory stays bounded whatever the number of tenants: the caller keeps only
    /// what it builds from them. Returns the number of tenants handed over.
    pub async fn load_each(&self, mut each: impl FnMut(TenantState)) -> Result<usize, StoreError> {
        let mut tx = self.read().await?;
        let mut count = 0;
        each_stored(&mut tx, |row| {
            let Some((plan, limits, billing_anchor_ms)) = row.subscription else {
                tracing::warn!(tenant = %row.tenant.id, "tenant without a subscription: skipped");
                return Ok(());
            };
            each(TenantState {
                tenant: row.tenant,
                plan,
                limits,
                policy: row.policy,
                waf: row.waf,
                billing_anchor_ms,
                routes: row.routes,
            });
            count += 1;
            Ok(())
        })
        .await?;
        tx.commit().await?;
        Ok(count)
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
        let plan_names: BTreeSet<String> = sqlx::query_scalar("SELECT name FROM plans")
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
        let require_plan = |p: &str| {
            if plan_names.contains(p) {
                Ok(())
            } else {
                Err(not_found("plan", p))
            }
        };
        // The file first: ids, duplicates, plans.
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(tenants.len());
        for (i, spec) in tenants.iter().enumerate() {
            TenantId::parse(&spec.id)
                .map_err(|e| StoreError::Invalid(format!("tenant id {:?}: {e}", spec.id)))?;
            if index.insert(spec.id.as_str(), i).is_some() {
                return Err(StoreError::Invalid(format!(
                    "tenant {:?} is listed twice",
                    spec.id
                )));
            }
            if let Some(p) = &spec.plan {
                require_plan(p)?;
            }
        }

        // Then the store, a page at a time, compared with the file as it is read: only the
        // differences are kept. Writes come after the read, in this order: single-row
        // updates, the old routes and hosts of the tenants whose routes change (all of them
        // first, so that a host may move from one file tenant to another), and then, a chunk
        // of tenants at a time, new tenants, new routes and hosts, and the audit rows. Each
        // tenant's audit rows keep the order of its changes.
        let mut state = vec![Stored::New; tenants.len()];
        let mut updates: Vec<Update> = Vec::new();
        let mut cleared: Vec<String> = Vec::new();
        let mut audits: Vec<sql::AuditRow> = Vec::new();
        let mut changed = BTreeSet::new();
        each_stored(&mut tx, |stored| {
            let t = stored.tenant.id.as_str();
            let Some(&i) = index.get(t) else {
                if stored.tenant.managed_by == "file" {
                    // A file tenant the file dropped: it stops serving (its routes and hosts
                    // go); its users, keys and audit log stay, and the API manages it now.
                    if !stored.routes.is_empty() {
                        cleared.push(t.to_owned());
                        audits.push(replace_audit(t, &stored.routes, &[]));
                        changed.insert(stored.tenant.id.clone());
                    }
                    audits.push(managed_by_audit(&stored.tenant, "api"));
                    updates.push(Update::ManagedBy(t.to_owned(), "api"));
                }
                return Ok(());
            };
            let spec = &tenants[i];
            let id = &stored.tenant.id;
            if stored.tenant.managed_by != "file" {
                audits.push(managed_by_audit(&stored.tenant, "file"));
                updates.push(Update::ManagedBy(t.to_owned(), "file"));
            }
            let current_plan = stored.subscription.as_ref().map(|s| s.0.as_str());
            if let Some(p) = spec.plan.as_deref().filter(|p| Some(*p) != current_plan) {
                // Its audit row needs the subscription as it was: written with the update.
                updates.push(Update::Plan(t.to_owned(), p.to_owned(), audits.len()));
                changed.insert(id.clone());
            }
            // The file's policy wins, like its routes (absent: unrestricted).
            if stored.policy != spec.policy {
                let text = sql::POLICY.encode(spec.policy.as_ref())?;
                audits.push(sql::POLICY.audit(t, stored.policy.as_ref(), spec.policy.as_ref()));
                updates.push(Update::Policy(t.to_owned(), text));
                changed.insert(id.clone());
            }
            // So do its WAF settings (absent: the plan's level, blocking, no exclusions).
            if stored.waf != spec.waf {
                let text = sql::WAF.encode(spec.waf.as_ref())?;
                audits.push(sql::WAF.audit(t, stored.waf.as_ref(), spec.waf.as_ref()));
                updates.push(Update::Waf(t.to_owned(), text));
                changed.insert(id.clone());
            }
            let wanted = sorted_routes(spec);
            if !stored.routes.iter().eq(wanted.iter().copied()) {
                cleared.push(t.to_owned());
                audits.push(replace_audit(t, &stored.routes, &wanted));
                changed.insert(id.clone());
                state[i] = Stored::Replace;
            } else {
                state[i] = Stored::Kept;
            }
            Ok(())
        })
        .await?;

        // Subscription audit rows go where their change was found.
        let mut placed = 0;
        for u in updates {
            match u {
                Update::ManagedBy(t, to) => {
                    sqlx::query(
                        "UPDATE tenants SET managed_by = $2, updated_at = $3 WHERE id = $1",
                    )
                    .bind(&t)
                    .bind(to)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                Update::Plan(t, p, at) => {
                    let sub = sql::require_subscription(&mut tx, &t).await?;
                    sqlx::query(
                        "UPDATE subscriptions SET plan = $2, updated_at = $3 WHERE tenant_id = $1",
                    )
                    .bind(&t)
                    .bind(&p)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    let mut after = sub.json();
                    after["plan"] = Value::from(p);
                    let row = sql::AuditRow::new(
                        &t,
                        "subscription.update",
                        Some(&sub.json()),
                        Some(&after),
                    );
                    audits.insert(at + placed, row);
                    placed += 1;
                }
                Update::Policy(t, text) => {
                    sql::POLICY.store(&mut tx, &t, text.as_deref()).await?;
                }
                Update::Waf(t, text) => sql::WAF.store(&mut tx, &t, text.as_deref()).await?,
            }
        }
        let cleared: Vec<&str> = cleared.iter().map(String::as_str).collect();
        sql::clear_routes_of(&mut tx, &cleared).await?;
        sql::write_audits(&mut tx, &actor, &audits).await?;
        drop(audits);

        // New tenants and new routes, a chunk at a time.
        let todo: Vec<usize> = (0..tenants.len())
            .filter(|&i| state[i] != Stored::Kept)
            .collect();
        for chunk in todo.chunks(WRITE_CHUNK) {
            let mut new_tenants = Vec::new();
            let mut routes: Vec<(&str, &RouteSpec)> = Vec::new();
            let mut audits = Vec::new();
            for &i in chunk {
                let spec = &tenants[i];
                let t = spec.id.as_str();
                let wanted = sorted_routes(spec);
                if state[i] == Stored::New {
                    let p = spec.plan.as_deref().unwrap_or("free");
                    require_plan(p)?;
                    let id = TenantId::parse(t)
                        .map_err(|e| StoreError::Invalid(format!("tenant id {t:?}: {e}")))?;
                    let mut after = TenantRecord {
                        id: id.clone(),
                        name: t.to_owned(),
                        status: TenantStatus::Active,
                        managed_by: "file".into(),
                        created_at: now,
                    }
                    .json();
                    after["plan"] = Value::from(p);
                    audits.push(sql::AuditRow::new(t, "tenant.create", None, Some(&after)));
                    if spec.policy.is_some() {
                        audits.push(sql::POLICY.audit(t, None, spec.policy.as_ref()));
                    }
                    if spec.waf.is_some() {
                        audits.push(sql::WAF.audit(t, None, spec.waf.as_ref()));
                    }
                    if !wanted.is_empty() {
                        audits.push(replace_audit::<RouteSpec>(t, &[], &wanted));
                    }
                    new_tenants.push(sql::NewTenantRow {
                        id: t,
                        plan: p,
                        policy: sql::POLICY.encode(spec.policy.as_ref())?,
                        waf: sql::WAF.encode(spec.waf.as_ref())?,
                    });
                    changed.insert(id);
                }
                routes.extend(wanted.into_iter().map(|r| (t, r)));
            }
            sql::insert_tenants(&mut tx, &new_tenants, "file", now).await?;
            sql::insert_routes_of(&mut tx, &routes, now).await?;
            sql::write_audits(&mut tx, &actor, &audits).await?;
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

/// Tenants written per round of batched statements by [`PlatformStore::import_file_tenants`].
const WRITE_CHUNK: usize = 2_000;

/// What the store holds of a file tenant, found while reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    /// Nothing: the tenant is created.
    New,
    /// The tenant, with other routes: they are replaced.
    Replace,
    /// The tenant with the file's routes.
    Kept,
}

/// A single-row write found while reading the store.
enum Update {
    /// Tenant, new manager.
    ManagedBy(String, &'static str),
    /// Tenant, new plan, where its audit row goes among the others.
    Plan(String, String, usize),
    /// Tenant, policy column.
    Policy(String, Option<String>),
    /// Tenant, WAF column.
    Waf(String, Option<String>),
}

/// A tenant's routes as the store keeps them: ordered by id.
fn sorted_routes(spec: &TenantSpec) -> Vec<&RouteSpec> {
    let mut routes: Vec<&RouteSpec> = spec.routes.iter().collect();
    routes.sort_by(|a, b| a.id.cmp(&b.id));
    routes
}

/// The audit row of a tenant's routes being replaced.
fn replace_audit<R: std::borrow::Borrow<RouteSpec>>(
    tenant: &str,
    before: &[R],
    after: &[&RouteSpec],
) -> sql::AuditRow {
    let json = |routes: &mut dyn Iterator<Item = &RouteSpec>| {
        Value::Array(routes.map(sql::route_json).collect())
    };
    sql::AuditRow::new(
        tenant,
        "routes.replace",
        Some(&json(&mut before.iter().map(std::borrow::Borrow::borrow))),
        Some(&json(&mut after.iter().copied())),
    )
}

/// The audit row of a tenant changing manager.
fn managed_by_audit(before: &TenantRecord, managed_by: &str) -> sql::AuditRow {
    let after = TenantRecord {
        managed_by: managed_by.to_owned(),
        ..before.clone()
    };
    sql::AuditRow::new(
        before.id.as_str(),
        "tenant.update",
        Some(&before.json()),
        Some(&after.json()),
    )
}

/// A stored tenant as [`each_stored`] reads it.
struct StoredTenant {
    tenant: TenantRecord,
    /// Plan, effective limits and billing anchor (`None`: no subscription row).
    subscription: Option<(String, PlanLimits, i64)>,
    policy: Option<PolicySpec>,
    waf: Option<TenantWafSpec>,
    /// Ordered by id.
    routes: Vec<RouteSpec>,
}

/// Hands every stored tenant to `each`, in id order, [`LOAD_PAGE`] at a time (four queries a
/// page): memory stays bounded whatever the number of tenants. Stops at `each`'s first error.
async fn each_stored(
    conn: &mut AnyConnection,
    mut each: impl FnMut(StoredTenant) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    use sqlx::Row;
    let mut plans: HashMap<String, PlanLimits> = HashMap::new();
    let mut after = String::new();
    loop {
        let page = sqlx::query(concat!(
            "SELECT ",
            tenant_cols!(),
            ", policy, waf FROM tenants WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(&after)
        .bind(LOAD_PAGE)
        .fetch_all(&mut *conn)
        .await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        let upto: String = last.try_get("id")?;
        let subs = sqlx::query(
            "SELECT s.tenant_id, s.plan, s.overrides, s.period_start, p.limits \
             FROM subscriptions s JOIN plans p ON p.name = s.plan \
             WHERE s.tenant_id > $1 AND s.tenant_id <= $2",
        )
        .bind(&after)
        .bind(&upto)
        .fetch_all(&mut *conn)
        .await?;
        let mut subs = subs
            .iter()
            .map(|row| subscription_limits(row, &mut plans))
            .collect::<Result<HashMap<_, _>, _>>()?;
        let mut routes = sql::fetch_routes_of(conn, &after, &upto).await?;
        for row in &page {
            let tenant = sql::tenant_from_row(row)?;
            let id = tenant.id.as_str();
            each(StoredTenant {
                subscription: subs.remove(id),
                policy: sql::POLICY
                    .decode(row.try_get::<Option<String>, _>("policy")?.as_deref())?,
                waf: sql::WAF.decode(row.try_get::<Option<String>, _>("waf")?.as_deref())?,
                routes: routes.remove(id).unwrap_or_default(),
                tenant,
            })?;
        }
        after = upto;
    }
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
