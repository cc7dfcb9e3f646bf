//! The routing-relevant state of the whole gateway and the changes that move it.
//!
//! Every source of configuration (the YAML file, the admin API, cluster events) produces
//! [`Change`]s; the data plane applies them to its runtime tables. Changes are per tenant, so
//! one tenant's edit rebuilds that tenant's part only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::{HostPattern, RouteId, Tenant, TenantId};

/// One step between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Add a tenant or replace it whole.
    PutTenant(Arc<Tenant>),
    /// Remove a tenant and all its routes.
    RemoveTenant(TenantId),
}

impl Change {
    /// The tenant this change touches.
    pub fn tenant(&self) -> &TenantId {
        match self {
            Change::PutTenant(t) => &t.id,
            Change::RemoveTenant(id) => id,
        }
    }
}

/// Routing-relevant state: every tenant with its routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    tenants: BTreeMap<TenantId, Arc<Tenant>>,
}

/// Two routes claiming the same host in a way that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// The host belongs to another tenant already: hosts never cross tenants.
    HostOwnedByOtherTenant {
        /// The contested host.
        host: HostPattern,
        /// The tenant that has it first.
        owner: TenantId,
        /// The tenant that claims it too.
        claimant: TenantId,
        /// The claimant's route.
        route: RouteId,
    },
    /// The same tenant has two routes on the same host and path prefix.
    DuplicateRoute {
        /// The tenant.
        tenant: TenantId,
        /// The host.
        host: HostPattern,
        /// The prefix.
        path_prefix: Arc<str>,
        /// The route that came first.
        first: RouteId,
        /// The duplicate.
        second: RouteId,
    },
}

impl Snapshot {
    /// An empty snapshot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a snapshot from tenants (a later tenant with the same id replaces an earlier one).
    pub fn from_tenants(tenants: impl IntoIterator<Item = Tenant>) -> Self {
        Self {
            tenants: tenants
                .into_iter()
                .map(|t| (t.id.clone(), Arc::new(t)))
                .collect(),
        }
    }

    /// The tenants, ordered by id.
    pub fn tenants(&self) -> impl ExactSizeIterator<Item = &Arc<Tenant>> {
        self.tenants.values()
    }

    /// One tenant.
    pub fn tenant(&self, id: &TenantId) -> Option<&Arc<Tenant>> {
        self.tenants.get(id)
    }

    /// Number of tenants.
    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    /// Whether there is no tenant.
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// Applies one change.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::PutTenant(t) => {
                self.tenants.insert(t.id.clone(), Arc::clone(t));
            }
            Change::RemoveTenant(id) => {
                self.tenants.remove(id);
            }
        }
    }

    /// The changes that turn `self` into `target`: applying them to `self` gives `target`.
    /// Unchanged tenants produce no change.
    pub fn diff(&self, target: &Snapshot) -> Vec<Change> {
        let mut changes = Vec::new();
        for id in self.tenants.keys() {
            if !target.tenants.contains_key(id) {
                changes.push(Change::RemoveTenant(id.clone()));
            }
        }
        for (id, t) in &target.tenants {
            match self.tenants.get(id) {
                Some(old) if Arc::ptr_eq(old, t) || old == t => {}
                _ => changes.push(Change::PutTenant(Arc::clone(t))),
            }
        }
        changes
    }

    /// Every host conflict: a host claimed by two tenants, or one tenant's duplicate
    /// host + prefix. Tenants are visited in id order, routes in their order.
    pub fn conflicts(&self) -> Vec<Conflict> {
        let mut owners: HashMap<&HostPattern, &TenantId> = HashMap::new();
        let mut seen: HashMap<(&HostPattern, &str), &RouteId> = HashMap::new();
        let mut out = Vec::new();
        for t in self.tenants.values() {
            for r in &t.routes {
                match owners.get(&r.host) {
                    Some(owner) if *owner != &t.id => {
                        out.push(Conflict::HostOwnedByOtherTenant {
                            host: r.host.clone(),
                            owner: (*owner).clone(),
                            claimant: t.id.clone(),
                            route: r.id.clone(),
                        });
                        continue;
                    }
                    Some(_) => {}
                    None => {
                        owners.insert(&r.host, &t.id);
                    }
                }
                if let Some(first) = seen.insert((&r.host, &*r.path_prefix), &r.id) {
                    out.push(Conflict::DuplicateRoute {
                        tenant: t.id.clone(),
                        host: r.host.clone(),
                        path_prefix: r.path_prefix.clone(),
                        first: first.clone(),
                        second: r.id.clone(),
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Algorithm, Backend, BackendState, Route};
    use proptest::prelude::*;

    fn tenant(id: &str, plan: &str, hosts: &[&str]) -> Tenant {
        Tenant {
            id: TenantId::parse(id).unwrap(),
            plan: plan.into(),
            limits: None,
            suspended: false,
            policy: None,
            waf: None,
            billing_anchor_ms: None,
            routes: hosts
                .iter()
                .enumerate()
                .map(|(i, h)| Route {
                    id: RouteId::parse(&format!("r{i}")).unwrap(),
                    host: HostPattern::parse(h).unwrap(),
                    path_prefix: "/".into(),
                    algorithm: Algorithm::RoundRobin,
                    kind: Default::default(),
                    ratelimit: None,
                    waf: None,
                    tls: None,
                    health_check: None,
                    backends: vec![Backend {
                        address: crate::BackendAddr::parse("127.0.0.1:1").unwrap(),
                        weight: 1,
                        state: BackendState::Active,
                    }],
                })
                .collect(),
        }
    }

    fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
        proptest::collection::vec((0u8..6, prop_oneof!["free", "pro"], 0usize..3), 0..6).prop_map(
            |items| {
                Snapshot::from_tenants(items.into_iter().map(|(n, plan, routes)| {
                    let hosts: Vec<String> =
                        (0..routes).map(|r| format!("h{r}.t{n}.test")).collect();
                    let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
                    tenant(&format!("t{n}"), &plan, &refs)
                }))
            },
        )
    }

    proptest! {
        #[test]
        fn applying_diff_reaches_target(a in arb_snapshot(), b in arb_snapshot()) {
            let mut x = a.clone();
            for c in a.diff(&b) {
                x.apply(&c);
            }
            prop_assert_eq!(&x, &b);
            prop_assert!(b.diff(&b).is_empty());
        }
    }

    #[test]
    fn finds_cross_tenant_host_claims_and_duplicates() {
        let s = Snapshot::from_tenants([
            tenant("a", "free", &["x.test", "x.test"]),
            tenant("b", "free", &["x.test", "y.test"]),
        ]);
        let c = s.conflicts();
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(
            matches!(&c[0], Conflict::DuplicateRoute { second, .. } if second.as_str() == "r1")
        );
        assert!(
            matches!(&c[1], Conflict::HostOwnedByOtherTenant { claimant, .. } if claimant.as_str() == "b")
        );
    }
}
