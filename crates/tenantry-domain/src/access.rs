//! Roles and the RBAC decision: who may do what to which tenant's data.

use crate::TenantId;

/// A user's or API key's role. `PlatformAdmin` belongs to no tenant; the others to exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Reads the tenant's configuration, users (without secrets), usage and audit log.
    Viewer,
    /// Viewer rights, plus writes routes and backends.
    Member,
    /// Member rights, plus users, API keys, subscription and tenant settings.
    Owner,
    /// Everything on every tenant, plus plans and tenant lifecycle (suspend, delete).
    PlatformAdmin,
}

impl Role {
    /// All roles with their wire names.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Member, Role::Owner, Role::PlatformAdmin];

    /// The wire name: `viewer`, `member`, `owner`, `platform_admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Owner => "owner",
            Role::PlatformAdmin => "platform_admin",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this role is held inside a tenant (every role but `platform_admin`).
    pub fn is_tenant_role(self) -> bool {
        self != Role::PlatformAdmin
    }
}

/// What a caller wants to do; each action needs a minimum role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Read a tenant's data (tenant, routes, users, keys metadata, audit, subscription).
    Read,
    /// Create, change or delete routes and backends.
    WriteRoutes,
    /// Manage users and API keys.
    ManageAccess,
    /// Change the subscription or tenant settings (name).
    ManageTenant,
    /// Platform-wide: tenants' lifecycle, plans, limit overrides.
    Platform,
}

impl Action {
    /// The least role allowed to perform the action.
    pub fn min_role(self) -> Role {
        match self {
            Action::Read => Role::Viewer,
            Action::WriteRoutes => Role::Member,
            Action::ManageAccess | Action::ManageTenant => Role::Owner,
            Action::Platform => Role::PlatformAdmin,
        }
    }
}

/// Who is calling, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The role in effect.
    pub role: Role,
    /// The caller's tenant; `None` only for platform admins.
    pub tenant: Option<TenantId>,
}

/// The outcome of an access check. A denial is a value, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Go ahead.
    Allowed,
    /// The target tenant is not the caller's.
    ForeignTenant,
    /// The caller's tenant is right but the role is too low.
    RoleTooLow {
        /// The least role the action needs.
        needed: Role,
    },
}

/// Decides whether `who` may perform `action` on data of `target` (`None` for platform-wide
/// data such as plans).
pub fn authorize(who: &Principal, action: Action, target: Option<&TenantId>) -> Access {
    if who.role == Role::PlatformAdmin {
        return Access::Allowed;
    }
    match target {
        Some(t) if who.tenant.as_ref() == Some(t) => {}
        Some(_) => return Access::ForeignTenant,
        None if action == Action::Platform => {}
        None => return Access::ForeignTenant,
    }
    let needed = action.min_role();
    if who.role >= needed {
        Access::Allowed
    } else {
        Access::RoleTooLow { needed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(role: Role, tenant: Option<&str>) -> Principal {
        Principal {
            role,
            tenant: tenant.map(|t| TenantId::parse(t).unwrap()),
        }
    }

    #[test]
    fn rbac_matrix() {
        let a = TenantId::parse("a").unwrap();
        let b = TenantId::parse("b").unwrap();
        let actions = [
            Action::Read,
            Action::WriteRoutes,
            Action::ManageAccess,
            Action::ManageTenant,
            Action::Platform,
        ];
        // (role, allowed actions on own tenant)
        let expect: [(Role, &[Action]); 3] = [
            (Role::Viewer, &[Action::Read]),
            (Role::Member, &[Action::Read, Action::WriteRoutes]),
            (
                Role::Owner,
                &[
                    Action::Read,
                    Action::WriteRoutes,
                    Action::ManageAccess,
                    Action::ManageTenant,
                ],
            ),
        ];
        for (role, allowed) in expect {
            let p = who(role, Some("a"));
            for action in actions {
                let own = authorize(&p, action, Some(&a));
                assert_eq!(
                    own == Access::Allowed,
                    allowed.contains(&action),
                    "{role:?} {action:?} own"
                );
                assert_eq!(
                    authorize(&p, action, Some(&b)),
                    Access::ForeignTenant,
                    "{role:?} {action:?} foreign"
                );
            }
            assert_ne!(authorize(&p, Action::Platform, None), Access::Allowed);
        }
        let admin = who(Role::PlatformAdmin, None);
        for action in actions {
            assert_eq!(authorize(&admin, action, Some(&b)), Access::Allowed);
            assert_eq!(authorize(&admin, action, None), Access::Allowed);
        }
    }

    #[test]
    fn role_names_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
