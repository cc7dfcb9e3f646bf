//! What the store hands out and takes in: records, new-object requests, patches and the audit
//! context. JSON snapshots of records (for the audit log and exports) never hold secrets.

use std::fmt;

use serde_json::{Value, json};
use tenantry_config::RouteSpec;
use tenantry_domain::{LimitOverrides, PlanLimits, Role, TenantId};

use crate::codec;

/// Who did something, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// A user id, an API key id, `system` or `file`.
    pub id: String,
    /// The caller's IP address, when the action came over the network.
    pub ip: Option<String>,
}

impl Actor {
    /// An actor with an id and an optional IP address.
    pub fn new(id: impl Into<String>, ip: Option<String>) -> Self {
        Self { id: id.into(), ip }
    }

    /// The service itself (seeding, maintenance).
    pub fn system() -> Self {
        Self::new("system", None)
    }

    /// The configuration file (`import_file_tenants`).
    pub fn file() -> Self {
        Self::new("file", None)
    }
}

/// A tenant's lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TenantStatus {
    /// Served.
    Active,
    /// Refused by the data plane; data kept.
    Suspended,
}

impl TenantStatus {
    /// The wire name: `active` or `suspended`.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(TenantStatus::Active),
            "suspended" => Some(TenantStatus::Suspended),
            _ => None,
        }
    }
}

/// A tenant row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    /// Slug id.
    pub id: TenantId,
    /// Display name.
    pub name: String,
    /// Active or suspended.
    pub status: TenantStatus,
    /// `api` (created through the admin API) or `file` (owned by the YAML file).
    pub managed_by: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

impl TenantRecord {
    pub(crate) fn json(&self) -> Value {
        json!({
            "id": self.id.as_str(),
            "name": self.name,
            "status": self.status.as_str(),
            "managed_by": self.managed_by,
            "created_at": self.created_at,
        })
    }
}

/// A plan and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRecord {
    /// Plan name, e.g. `free`.
    pub name: String,
    /// Its limits.
    pub limits: PlanLimits,
    /// Unix milliseconds of the last change.
    pub updated_at: i64,
}

impl PlanRecord {
    pub(crate) fn json(&self) -> Value {
        json!({
            "name": self.name,
            "limits": codec::limits_to_json(&self.limits),
            "updated_at": self.updated_at,
        })
    }
}

/// A tenant's subscription, with the limits it derives from its plan and overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The tenant.
    pub tenant: TenantId,
    /// Plan name.
    pub plan: String,
    /// `active`.
    pub status: String,
    /// Unix milliseconds.
    pub period_start: i64,
    /// Unix milliseconds (30 days after the start).
    pub period_end: i64,
    /// Per-tenant overrides set by the platform.
    pub overrides: LimitOverrides,
    /// The effective limits: the plan's with the overrides on top.
    pub limits: PlanLimits,
}

impl Subscription {
    pub(crate) fn json(&self) -> Value {
        json!({
            "tenant": self.tenant.as_str(),
            "plan": self.plan,
            "status": self.status,
            "period_start": self.period_start,
            "period_end": self.period_end,
            "overrides": codec::overrides_to_json(&self.overrides),
            "limits": codec::limits_to_json(&self.limits),
        })
    }
}

/// A user: a tenant member, or a platform admin (no tenant).
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Id (chosen by the caller).
    pub id: String,
    /// The tenant; `None` for platform admins.
    pub tenant: Option<TenantId>,
    /// Lowercased email, unique across the platform.
    pub email: String,
    /// The password hash (PHC string). Redacted in `Debug`.
    pub password_hash: String,
    /// Role.
    pub role: Role,
    /// Bumped by every change, which invalidates tokens issued before it.
    pub token_version: i64,
    /// Unix milliseconds.
    pub created_at: i64,
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("email", &self.email)
            .field("password_hash", &"<redacted>")
            .field("role", &self.role)
            .field("token_version", &self.token_version)
            .field("created_at", &self.created_at)
            .finish()
    }
}

impl UserRecord {
    /// A snapshot without the password hash.
    pub(crate) fn json(&self) -> Value {
        json!({
            "id": self.id,
            "tenant": self.tenant.as_ref().map(TenantId::as_str),
            "email": self.email,
            "role": self.role.as_str(),
            "token_version": self.token_version,
            "created_at": self.created_at,
        })
    }
}

/// A user to create.
#[derive(Clone)]
pub struct NewUser {
    /// Id (chosen by the caller).
    pub id: String,
    /// Email; stored lowercased.
    pub email: String,
    /// Password hash. Redacted in `Debug`.
    pub password_hash: String,
    /// Role (forced where the operation implies one).
    pub role: Role,
}

impl fmt::Debug for NewUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewUser")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("password_hash", &"<redacted>")
            .field("role", &self.role)
            .finish()
    }
}

/// Changes to a user; any change bumps the token version.
#[derive(Clone, Default)]
pub struct UserPatch {
    /// New role.
    pub role: Option<Role>,
    /// New password hash. Redacted in `Debug`.
    pub password_hash: Option<String>,
}

impl fmt::Debug for UserPatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserPatch")
            .field("role", &self.role)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// An API key's metadata (the hash stays in the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Id.
    pub id: String,
    /// The tenant it acts for.
    pub tenant: TenantId,
    /// Display name.
    pub name: String,
    /// The key's visible prefix, to recognise it in lists.
    pub prefix: String,
    /// The role it grants (a tenant role).
    pub role: Role,
    /// The actor that created it.
    pub created_by: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds; a revoked key no longer authenticates.
    pub revoked_at: Option<i64>,
    /// Unix milliseconds, updated at most once a minute.
    pub last_used_at: Option<i64>,
}

impl ApiKeyRecord {
    /// A snapshot (there is no hash to leave out: the record holds none).
    pub(crate) fn json(&self) -> Value {
        json!({
            "id": self.id,
            "tenant": self.tenant.as_str(),
            "name": self.name,
            "prefix": self.prefix,
            "role": self.role.as_str(),
            "created_by": self.created_by,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "last_used_at": self.last_used_at,
        })
    }
}

/// An API key to create.
#[derive(Clone)]
pub struct NewApiKey {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Visible prefix.
    pub prefix: String,
    /// Hash of the secret, the lookup key. Redacted in `Debug`.
    pub hash: String,
    /// Role granted (a tenant role).
    pub role: Role,
}

impl fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewApiKey")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .field("hash", &"<redacted>")
            .field("role", &self.role)
            .finish()
    }
}

/// One audit log row.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// Increasing id (use it to page with `before_id`).
    pub id: i64,
    /// The actor's id.
    pub actor: String,
    /// The tenant concerned; `None` for platform-wide actions and deleted tenants.
    pub tenant: Option<TenantId>,
    /// E.g. `route.create`, `user.update`, `plan.update`.
    pub action: String,
    /// The object's id.
    pub target: String,
    /// Snapshot before the change.
    pub before: Option<Value>,
    /// Snapshot after the change.
    pub after: Option<Value>,
    /// The actor's IP address.
    pub ip: Option<String>,
    /// Unix milliseconds.
    pub at: i64,
}

impl AuditEntry {
    pub(crate) fn json(&self) -> Value {
        json!({
            "id": self.id,
            "actor": self.actor,
            "tenant": self.tenant.as_ref().map(TenantId::as_str),
            "action": self.action,
            "target": self.target,
            "before": self.before,
            "after": self.after,
            "ip": self.ip,
            "at": self.at,
        })
    }
}

/// A tenant as the data plane needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantState {
    /// The tenant.
    pub tenant: TenantRecord,
    /// Its plan's name.
    pub plan: String,
    /// Its effective limits.
    pub limits: PlanLimits,
    /// Its LLM policy.
    pub policy: Option<tenantry_config::PolicySpec>,
    /// Its WAF settings (`None`: the plan's level, blocking, no exclusions).
    pub waf: Option<tenantry_config::TenantWafSpec>,
    /// Start of its subscription's first billing period (unix ms).
    pub billing_anchor_ms: i64,
    /// Its routes, ordered by id.
    pub routes: Vec<RouteSpec>,
}

/// A tenant to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTenant {
    /// Slug id.
    pub id: TenantId,
    /// Display name.
    pub name: String,
    /// Plan name.
    pub plan: String,
}
