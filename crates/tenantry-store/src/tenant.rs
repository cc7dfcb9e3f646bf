//! [`TenantScope`]: everything done to one tenant's data. Each method opens its own
//! transaction scoped to the tenant (on PostgreSQL, `app.tenant_id` is set for it, so row-level
//! security holds even if a query forgot its filter) and filters every query by the tenant.

use serde_json::Value;
use sqlx::AssertSqlSafe;
use tenantry_config::{PolicySpec, RouteSpec, TenantWafSpec};
use tenantry_domain::{CountedLimit, Role, TenantId};

use crate::records::{
    Actor, ApiKeyRecord, AuditEntry, NewApiKey, NewUser, Subscription, TenantRecord, UserPatch,
    UserRecord,
};
use crate::sql::{self, count_u64, now_ms};
use crate::{Scope, Store, StoreError, Tx};

/// One tenant's data. Obtained from [`Store::tenant`]; there is no other way to reach it.
#[derive(Debug, Clone)]
pub struct TenantScope<'a> {
    store: &'a Store,
    id: TenantId,
}

fn not_found(kind: &'static str, id: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        id: id.to_owned(),
    }
}

impl<'a> TenantScope<'a> {
    pub(crate) fn new(store: &'a Store, id: TenantId) -> Self {
        Self { store, id }
    }

    /// The tenant this scope is bound to.
    pub fn id(&self) -> &TenantId {
        &self.id
    }

    fn t(&self) -> &str {
        self.id.as_str()
    }

    async fn read(&self) -> Result<Tx, StoreError> {
        self.store.begin(Scope::Tenant(&self.id), false).await
    }

    async fn write(&self) -> Result<Tx, StoreError> {
        self.store.begin(Scope::Tenant(&self.id), true).await
    }

    async fn audit_row(
        &self,
        tx: &mut Tx,
        actor: &Actor,
        action: &str,
        target: &str,
        before: Option<&Value>,
        after: Option<&Value>,
    ) -> Result<(), StoreError> {
        sql::write_audit(tx, actor, Some(self.t()), action, target, before, after).await
    }

    /// The tenant's row.
    pub async fn get(&self) -> Result<Option<TenantRecord>, StoreError> {
        let mut tx = self.read().await?;
        let t = sql::fetch_tenant(&mut tx, self.t()).await?;
        tx.commit().await?;
        Ok(t)
    }

    /// Renames the tenant.
    pub async fn rename(&self, actor: &Actor, name: &str) -> Result<TenantRecord, StoreError> {
        let now = now_ms();
        let mut tx = self.write().await?;
        let before = sql::fetch_tenant(&mut tx, self.t())
            .await?
            .ok_or_else(|| not_found("tenant", self.t()))?;
        sqlx::query("UPDATE tenants SET name = $2, updated_at = $3 WHERE id = $1")
            .bind(self.t())
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let after = TenantRecord {
            name: name.to_owned(),
            ..before.clone()
        };
        self.audit_row(
            &mut tx,
            actor,
            "tenant.update",
            self.t(),
            Some(&before.json()),
            Some(&after.json()),
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Records something that happened to the tenant outside an API write (e.g. a quota
    /// threshold reached by its traffic) as an audit entry; `details` goes in `after`.
    pub async fn record_event(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        details: &Value,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        self.audit_row(&mut tx, actor, action, target, None, Some(details))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The tenant's LLM policy (`None`: unrestricted); `NotFound` if the tenant does not exist.
    pub async fn policy(&self) -> Result<Option<PolicySpec>, StoreError> {
        self.doc(&sql::POLICY).await
    }

    /// Replaces the tenant's LLM policy (`None` removes every restriction).
    pub async fn set_policy(
        &self,
        actor: &Actor,
        policy: Option<&PolicySpec>,
    ) -> Result<Option<PolicySpec>, StoreError> {
        self.set_doc(&sql::POLICY, actor, policy).await
    }

    /// The tenant's WAF settings (`None`: the plan's level, blocking, no exclusions);
    /// `NotFound` if the tenant does not exist.
    pub async fn waf(&self) -> Result<Option<TenantWafSpec>, StoreError> {
        self.doc(&sql::WAF).await
    }

    /// Replaces the tenant's WAF settings (the caller validated them; `None` restores the
    /// defaults), with a `tenant.waf_updated` audit row in the same transaction.
    pub async fn set_waf(
        &self,
        actor: &Actor,
        waf: Option<&TenantWafSpec>,
    ) -> Result<Option<TenantWafSpec>, StoreError> {
        self.set_doc(&sql::WAF, actor, waf).await
    }

    async fn doc<T: serde::de::DeserializeOwned>(
        &self,
        doc: &sql::TenantDoc<T>,
    ) -> Result<Option<T>, StoreError> {
        let mut tx = self.read().await?;
        sql::fetch_tenant(&mut tx, self.t())
            .await?
            .ok_or_else(|| not_found("tenant", self.t()))?;
        let v = sql::fetch_doc(&mut tx, doc, self.t()).await?;
        tx.commit().await?;
        Ok(v)
    }

    /// Replaces a document with its audit row, in one transaction under the tenant's lock.
    async fn set_doc<T: serde::Serialize + serde::de::DeserializeOwned + Clone>(
        &self,
        doc: &sql::TenantDoc<T>,
        actor: &Actor,
        value: Option<&T>,
    ) -> Result<Option<T>, StoreError> {
        let now = now_ms();
        let mut tx = self.write().await?;
        sql::lock_tenant(&mut tx, self.t(), now).await?;
        let before = sql::fetch_doc(&mut tx, doc, self.t()).await?;
        sql::write_doc(&mut tx, doc, actor, self.t(), before.as_ref(), value).await?;
        tx.commit().await?;
        Ok(value.cloned())
    }

    /// The subscription with its effective limits; `NotFound` if the tenant does not exist.
    pub async fn subscription(&self) -> Result<Subscription, StoreError> {
        let mut tx = self.read().await?;
        let s = sql::require_subscription(&mut tx, self.t()).await?;
        tx.commit().await?;
        Ok(s)
    }

    /// Moves the tenant to another plan. `NotFound` for an unknown plan; `Downgrade` if the
    /// tenant's usage is over the new plan's limits (with the tenant's overrides applied).
    pub async fn set_plan(&self, actor: &Actor, plan: &str) -> Result<Subscription, StoreError> {
        let now = now_ms();
        let mut tx = self.write().await?;
        sql::lock_tenant(&mut tx, self.t(), now).await?;
        let before = sql::require_subscription(&mut tx, self.t()).await?;
        let target = sql::require_plan(&mut tx, plan).await?;
        let limits = tenantry_domain::derive_limits(&target.limits, &before.overrides);
        let usage = sql::usage(&mut tx, self.t()).await?;
        sql::check_fits(usage, &limits, plan)?;
        sqlx::query("UPDATE subscriptions SET plan = $2, updated_at = $3 WHERE tenant_id = $1")
            .bind(self.t())
            .bind(plan)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let after = Subscription {
            plan: plan.to_owned(),
            limits,
            ..before.clone()
        };
        self.audit_row(
            &mut tx,
            actor,
            "subscription.update",
            self.t(),
            Some(&before.json()),
            Some(&after.json()),
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// The tenant's users, oldest first.
    pub async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let mut tx = self.read().await?;
        let u = sql::fetch_users(&mut tx, self.t()).await?;
        tx.commit().await?;
        Ok(u)
    }

    /// One of the tenant's users.
    pub async fn get_user(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        let mut tx = self.read().await?;
        let u = sql::fetch_user(&mut tx, self.t(), id).await?;
        tx.commit().await?;
        Ok(u)
    }

    /// Adds a user. `Invalid` for the platform role, `PlanLimit` over `max_users`, `Conflict`
    /// if the email (in any case, in any tenant) is taken.
    pub async fn create_user(&self, actor: &Actor, u: NewUser) -> Result<UserRecord, StoreError> {
        if !u.role.is_tenant_role() {
            return Err(StoreError::Invalid(
                "a tenant user cannot have the platform_admin role".into(),
            ));
        }
        let email = sql::normalize_email(&u.email)?;
        let now = now_ms();
        let mut tx = self.write().await?;
        sql::lock_tenant(&mut tx, self.t(), now).await?;
        let sub = sql::require_subscription(&mut tx, self.t()).await?;
        let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE tenant_id = $1")
            .bind(self.t())
            .fetch_one(&mut *tx)
            .await?;
        sql::check_limit(&sub, CountedLimit::Users, count_u64(users) + 1)?;
        sql::insert_user(
            &mut tx,
            Some(self.t()),
            &u.id,
            &email,
            &u.password_hash,
            u.role,
            now,
        )
        .await?;
        let user = UserRecord {
            id: u.id,
            tenant: Some(self.id.clone()),
            email,
            password_hash: u.password_hash,
            role: u.role,
            token_version: 0,
            created_at: now,
        };
        self.audit_row(
            &mut tx,
            actor,
            "user.create",
            &user.id,
            None,
            Some(&user.json()),
        )
        .await?;
        tx.commit().await?;
        Ok(user)
    }

    async fn owners(tx: &mut Tx, tenant: &str) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM users WHERE tenant_id = $1 AND role = 'owner'",
        )
        .bind(tenant)
        .fetch_one(&mut **tx)
        .await?;
        Ok(count_u64(n))
    }

    /// Changes a user's role or password; any change bumps `token_version`, which ends the
    /// sessions issued before it. `LastOwner` if it would demote the tenant's last owner.
    pub async fn update_user(
        &self,
        actor: &Actor,
        id: &str,
        patch: UserPatch,
    ) -> Result<UserRecord, StoreError> {
        if patch.role.is_some_and(|r| !r.is_tenant_role()) {
            return Err(StoreError::Invalid(
                "a tenant user cannot have the platform_admin role".into(),
            ));
        }
        let now = now_ms();
        let mut tx = self.write().await?;
        sql::lock_tenant(&mut tx, self.t(), now).await?;
        let before = sql::fetch_user(&mut tx, self.t(), id)
            .await?
            .ok_or_else(|| not_found("user", id))?;
        let role = patch.role.unwrap_or(before.role);
        let role_changed = role != before.role;
        if !role_changed && patch.password_hash.is_none() {
            tx.commit().await?;
            return Ok(before);
        }
        if role_changed && before.role == Role::Owner && Self::owners(&mut tx, self.t()).await? <= 1
        {
            return Err(StoreError::LastOwner);
        }
        let hash = patch
            .password_hash
            .unwrap_or_else(|| before.password_hash.clone());
        sqlx::query(
            "UPDATE users SET role = $3, password_hash = $4, token_version = token_version + 1, \
             updated_at = $5 WHERE tenant_id = $1 AND id = $2",
        )
        .bind(self.t())
        .bind(id)
        .bind(role.as_str())
        .bind(&hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let after = UserRecord {
            role,
            password_hash: hash,
            token_version: before.token_version + 1,
            ..before.clone()
        };
        let mut after_json = after.json();
        if after.password_hash != before.password_hash {
            after_json["password_changed"] = Value::Bool(true);
        }
        self.audit_row(
            &mut tx,
            actor,
            "user.update",
            id,
            Some(&before.json()),
            Some(&after_json),
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Removes a user. `LastOwner` if it is the tenant's last owner.
    pub async fn delete_user(&self, actor: &Actor, id: &str) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.write().await?;
        sql::lock_tenant(&mut tx, self.t(), now).await?;
        let before = sql::fetch_user(&mut tx, self.t(), id)
            .await?
            .ok_or_else(|| not_found("user", id))?;
        if before.role == Role::Owner && Self::owners(&mut tx, self.t()).await? <= 1 {
            return Err(StoreError::LastOwner);
        }
        sqlx::query("DELETE FROM users WHERE tenant_id = $1 AND id = $2")
            .bind(self.t())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        self.audit_row(
            &mut tx,
            actor,
            "user.delete",
            id,
            Some(&before.json()),
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The tenant's API keys (revoked ones included), oldest first.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let mut tx = self.read().await?;
        let k = sql::fetch_keys(&mut tx, self.t()).await?;
        tx.commit().await?;
        Ok(k)
    }

    /// Stores a new API key (its hash; the secret is never stored). `created_by` is the actor.
    pub async fn create_api_key(
        &self,
        actor: &Actor,
        k: NewApiKey,
    ) -> Result<ApiKeyRecord, StoreError> {
        if !k.role.is_tenant_role() {
            return Err(StoreError::Invalid(
                "an api key cannot have the platform_admin role".into(),
            ));
        }
        let now = now_ms();
        let mut tx = self.write().await?;
        sql::lock_tenant(&mut tx, self.t(), now).await?;
        sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, name, prefix, hash, role, created_by, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&k.id)
        .bind(self.t())
        .bind(&k.name)
        .bind(&k.prefix)
        .bind(&k.hash)
        .bind(k.role.as_str())
        .bind(&actor.id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(crate::error::conflict_on_unique("api_key", &k.id))?;
        let key = ApiKeyRecord {
            id: k.id,
            tenant: self.id.clone(),
            name: k.name,
            prefix: k.prefix,
            role: k.role,
            created_by: actor.id.clone(),
            created_at: now,
            revoked_at: None,
            last_used_at: None,
        };
        self.audit_row(
            &mut tx,
            actor,
            "api_key.create",
            &key.id,
            None,
            Some(&key.json()),
        )
        .await?;
        tx.commit().await?;
        Ok(key)
    }

    /// Revokes an API key (idempotent: revoking a revoked key changes nothing).
    pub async fn revoke_api_key(
        &self,
        actor: &Actor,
        id: &str,
    ) -> Result<ApiKeyRecord, StoreError> {
        let now = now_ms();
        let mut tx = self.write().await?;
        let before = sql::fetch_key(&mut tx, self.t(), id)
            .await?
            .ok_or_else(|| not_found("api_key", id))?;
        if before.revoked_at.is_some() {
            tx.commit().await?;
            return Ok(before);
        }
        sqlx::query("UPDATE api_keys SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2")
            .bind(self.t())
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let after = ApiKeyRecord {
            revoked_at: Some(now),
            ..before.clone()
        };
        self.audit_row(
            &mut tx,
            actor,
            "api_key.revoke",
            id,
            Some(&before.json()),
            Some(&after.json()),
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// The tenant's routes, ordered by id.
    pub async fn list_routes(&self) -> Result<Vec<RouteSpec>, StoreError> {
        let mut tx = self.read().await?;
        let r = sql::fetch_routes(&mut tx, self.t()).await?;
        tx.commit().await?;
        Ok(r)
    }

    /// One route.
    pub async fn get_route(&self, id: &str) -> Result<Option<RouteSpec>, StoreError> {
        let mut tx = self.read().await?;
        let r = sql::fetch_route(&mut tx, self.t(), id).await?;
        tx.commit().await?;
        Ok(r)
    }

    /// Checks what creating or replacing `r` needs, in the locked transaction: no clash with
    /// another of the tenant's routes (`Conflict route`), a host no other tenant owns
    /// (`Conflict host`), and the plan's route, backend and domain limits.
    async fn check_route(&self, tx: &mut Tx, r: &RouteSpec, new: bool) -> Result<(), StoreError> {
        let t = self.t();
        let host = r.host.to_ascii_lowercase();
        let clash: Option<String> = sqlx::query_scalar(
            "SELECT id FROM routes WHERE tenant_id = $1 AND id <> $2 AND lower(host) = $3 \
             AND coalesce(path_prefix, '/') = $4",
        )
        .bind(t)
        .bind(&r.id)
        .bind(&host)
        .bind(r.path_prefix.as_deref().unwrap_or("/"))
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(other) = clash {
            return Err(StoreError::Conflict {
                kind: "route",
                id: other,
            });
        }
        sql::check_host_free(tx, t, &host).await?;
        let sub = sql::require_subscription(tx, t).await?;
        let others: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM routes WHERE tenant_id = $1 AND id <> $2")
                .bind(t)
                .bind(&r.id)
                .fetch_one(&mut **tx)
                .await?;
        if new {
            sql::check_limit(&sub, CountedLimit::Routes, count_u64(others) + 1)?;
        }
        sql::check_limit(
            &sub,
            CountedLimit::BackendsPerRoute,
            u64::try_from(r.backends.len()).unwrap_or(u64::MAX),
        )?;
        let hosts: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT lower(host)) FROM routes WHERE tenant_id = $1 AND id <> $2",
        )
        .bind(t)
        .bind(&r.id)
        .fetch_one(&mut **tx)
        .await?;
        let shared: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM routes WHERE tenant_id = $1 AND id <> $2 AND lower(host) = $3",
        )
        .bind(t)
        .bind(&r.id)
        .bind(&host)
        .fetch_one(&mut **tx)
        .await?;
        let domains = count_u64(hosts) + u64::from(shared == 0);
        sql::check_limit(&sub, CountedLimit::Domains, domains)
    }

    /// Adds a route (the caller validated it). `Conflict` for an existing id, a host and path
    /// prefix another route serves, or a host of another tenant; `PlanLimit` over `max_routes`,
    /// `max_backends_per_route` or `max_domains`.
    pub async fn create_route(
        &self,
        actor: &Actor,
        r: &RouteSpec,
    ) -> Result<RouteSpec, StoreError> {
        let now = now_ms();
        let mut tx = self.write().await?;
        sql::lock_tenant(&mut tx, self.t(), now).await?;
        if sql::fetch_route(&mut tx, self.t(), &r.id).await?.is_some() {
            return Err(StoreError::Conflict {
                kind: "route",
                id: r.id.clone(),
            });
        }
        self.check_route(&mut tx, r, true).await?;
        sql::insert_route(&mut tx, self.t(), r, now).await?;
        sql::sync_domains(&mut tx, self.t()).await?;
        let after = sql::fetch_route(&mut tx, self.t(), &r.id)
            .await?
            .ok_or_else(|| not_found("route", &r.id))?;
        self.audit_row(
            &mut tx,
            actor,
            "route.create",
            &r.id,
            None,
            Some(&sql::route_json(&after)),
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Replaces a route (PUT). `NotFound` if absent; otherwise the checks of
    /// [`TenantScope::create_route`]. Hosts no route uses any more are released.
    pub async fn replace_route(
        &self,
        actor: &Actor,
        r: &RouteSpec,
    ) -> Result<RouteSpec, StoreError> {
        let now = now_ms();
        let mut tx = self.write().await?;
        sql::lock_tenant(&mut tx, self.t(), now).await?;
        let before = sql::fetch_route(&mut tx, self.t(), &r.id)
            .await?
            .ok_or_else(|| not_found("route", &r.id))?;
        self.check_route(&mut tx, r, false).await?;
        sql::update_route(&mut tx, self.t(), r, now).await?;
        sql::sync_domains(&mut tx, self.t()).await?;
        let after = sql::fetch_route(&mut tx, self.t(), &r.id)
            .await?
            .ok_or_else(|| not_found("route", &r.id))?;
        self.audit_row(
            &mut tx,
            actor,
            "route.update",
            &r.id,
            Some(&sql::route_json(&before)),
            Some(&sql::route_json(&after)),
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Deletes a route and its backends, releasing its host if no other route uses it.
    pub async fn delete_route(&self, actor: &Actor, id: &str) -> Result<RouteSpec, StoreError> {
        let now = now_ms();
        let mut tx = self.write().await?;
        sql::lock_tenant(&mut tx, self.t(), now).await?;
        let before = sql::fetch_route(&mut tx, self.t(), id)
            .await?
            .ok_or_else(|| not_found("route", id))?;
        sqlx::query("DELETE FROM routes WHERE tenant_id = $1 AND id = $2")
            .bind(self.t())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sql::sync_domains(&mut tx, self.t()).await?;
        self.audit_row(
            &mut tx,
            actor,
            "route.delete",
            id,
            Some(&sql::route_json(&before)),
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(before)
    }

    /// Sets a backend's state (`active`, `drain`) and returns the route. `NotFound` for an
    /// unknown route or backend.
    pub async fn set_backend_state(
        &self,
        actor: &Actor,
        route: &str,
        address: &str,
        state: &str,
    ) -> Result<RouteSpec, StoreError> {
        let now = now_ms();
        let mut tx = self.write().await?;
        let before = sql::fetch_route(&mut tx, self.t(), route)
            .await?
            .ok_or_else(|| not_found("route", route))?;
        let done = sqlx::query(
            "UPDATE backends SET state = $4 WHERE tenant_id = $1 AND route_id = $2 AND address = $3",
        )
        .bind(self.t())
        .bind(route)
        .bind(address)
        .bind(state)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("backend", &format!("{route}/{address}")));
        }
        sqlx::query("UPDATE routes SET updated_at = $3 WHERE tenant_id = $1 AND id = $2")
            .bind(self.t())
            .bind(route)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let after = sql::fetch_route(&mut tx, self.t(), route)
            .await?
            .ok_or_else(|| not_found("route", route))?;
        self.audit_row(
            &mut tx,
            actor,
            "backend.update",
            &format!("{route}/{address}"),
            Some(&sql::route_json(&before)),
            Some(&sql::route_json(&after)),
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// The tenant's audit log, newest first, `limit` rows (at most 1000) older than `before_id`.
    pub async fn audit(
        &self,
        limit: u32,
        before_id: Option<i64>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut tx = self.read().await?;
        let a = sql::fetch_audit(&mut tx, Some(self.t()), sql::page(limit), before_id).await?;
        tx.commit().await?;
        Ok(a)
    }

    /// Everything about the tenant as JSON: tenant, subscription, users and API keys (without
    /// hashes), routes and the audit log. `NotFound` if the tenant does not exist.
    pub async fn export(&self) -> Result<Value, StoreError> {
        let mut tx = self.read().await?;
        let v = sql::export(&mut tx, self.t()).await?;
        tx.commit().await?;
        Ok(v)
    }

    /// **Raw SQL, for isolation tests only.** Runs `sql` (no parameters) inside this scope's
    /// transaction, with the tenant setting applied but no filter added, and returns the
    /// number of rows it returned (`SELECT`/`WITH`) or affected (anything else). The
    /// transaction is always rolled back. On PostgreSQL row-level security decides what the
    /// statement sees; SQLite has none, so there it sees every tenant's rows.
    pub async fn raw_count(&self, sql: &str) -> Result<i64, StoreError> {
        let mut tx = self.read().await?;
        let head = sql.trim_start().to_ascii_lowercase();
        let n = if head.starts_with("select") || head.starts_with("with") {
            let rows = sqlx::query(AssertSqlSafe(sql.to_owned()))
                .fetch_all(&mut *tx)
                .await?;
            i64::try_from(rows.len()).unwrap_or(i64::MAX)
        } else {
            let done = sqlx::query(AssertSqlSafe(sql.to_owned()))
                .execute(&mut *tx)
                .await?;
            i64::try_from(done.rows_affected()).unwrap_or(i64::MAX)
        };
        tx.rollback().await?;
        Ok(n)
    }
}
