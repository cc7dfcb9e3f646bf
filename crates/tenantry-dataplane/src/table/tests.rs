//! Routing table: lookups, incremental changes, state carried across reloads, and a property
//! test against a naive model.

use std::sync::Arc;

use proptest::prelude::*;
use tenantry_domain::{Backend, Snapshot};

use super::*;

fn route(id: &str, host: &str, prefix: &str, port: u16) -> Route {
    Route {
        id: RouteId::parse(id).unwrap(),
        host: HostPattern::parse(host).unwrap(),
        path_prefix: prefix.into(),
        algorithm: Algorithm::RoundRobin,
        kind: Default::default(),
        ratelimit: None,
        waf: None,
        tls: None,
        health_check: None,
        backends: vec![Backend {
            address: tenantry_domain::BackendAddr::parse(&format!("127.0.0.1:{port}")).unwrap(),
            weight: 1,
            state: BackendState::Active,
        }],
    }
}

fn tenant(id: &str, routes: Vec<Route>) -> Tenant {
    Tenant {
        id: TenantId::parse(id).unwrap(),
        plan: "free".into(),
        limits: None,
        suspended: false,
        policy: None,
        waf: None,
        billing_anchor_ms: None,
        routes,
    }
}

fn build(prev: &RoutingTable, from: &Snapshot, to: &Snapshot, m: &MetricsRegistry) -> RoutingTable {
    let waf = crate::waf::WafPhase::new(Default::default());
    prev.apply(&from.diff(to), m, &mut CertCache::default(), &waf)
        .unwrap()
}

fn found(t: &RoutingTable, host: &str, path: &str) -> Option<String> {
    match t.lookup(host, path) {
        Lookup::Route(r) => Some(format!("{}/{}", r.tenant, r.id)),
        Lookup::UnknownHost => None,
        Lookup::NoRoute => Some("no_route".into()),
    }
}

#[test]
fn exact_beats_wildcard_and_longest_suffix_and_prefix_win() {
    let snap = Snapshot::from_tenants([
        tenant(
            "a",
            vec![
                route("www", "www.a.test", "/", 1),
                route("api", "www.a.test", "/api", 2),
            ],
        ),
        tenant("b", vec![route("any", "*.a.test", "/", 3)]),
        tenant("c", vec![route("deep", "*.x.a.test", "/v1", 4)]),
    ]);
    let m = MetricsRegistry::new(10);
    let t = build(&RoutingTable::default(), &Snapshot::new(), &snap, &m);
    assert_eq!(found(&t, "www.a.test", "/"), Some("a/www".into()));
    assert_eq!(found(&t, "www.a.test", "/api/x"), Some("a/api".into()));
    assert_eq!(found(&t, "other.a.test", "/"), Some("b/any".into()));
    assert_eq!(found(&t, "y.x.a.test", "/v1/z"), Some("c/deep".into()));
    assert_eq!(found(&t, "y.x.a.test", "/v2"), Some("no_route".into()));
    assert_eq!(found(&t, "a.test", "/"), None);
    assert_eq!(t.route_count(), 4);
}

#[test]
fn changing_one_tenant_keeps_others_and_carries_backend_state() {
    let m = MetricsRegistry::new(10);
    let s1 = Snapshot::from_tenants([
        tenant("a", vec![route("web", "a.test", "/", 1)]),
        tenant("b", vec![route("web", "b.test", "/", 2)]),
    ]);
    let t1 = build(&RoutingTable::default(), &Snapshot::new(), &s1, &m);
    let Lookup::Route(a1) = t1.lookup("a.test", "/") else {
        panic!()
    };
    let Lookup::Route(b1) = t1.lookup("b.test", "/") else {
        panic!()
    };
    a1.backends[0].health.begin();

    // Tenant a gets a second backend and a new host; b is untouched.
    let mut a = tenant("a", vec![route("web", "a2.test", "/", 1)]);
    a.routes[0].backends.push(Backend {
        address: tenantry_domain::BackendAddr::parse("127.0.0.1:9").unwrap(),
        weight: 1,
        state: BackendState::Drain,
    });
    let s2 = Snapshot::from_tenants([a, tenant("b", vec![route("web", "b.test", "/", 2)])]);
    let t2 = build(&t1, &s1, &s2, &m);
    assert!(
        matches!(t2.lookup("a.test", "/"), Lookup::UnknownHost),
        "old host removed"
    );
    let Lookup::Route(a2) = t2.lookup("a2.test", "/") else {
        panic!()
    };
    let Lookup::Route(b2) = t2.lookup("b.test", "/") else {
        panic!()
    };
    assert!(
        Arc::ptr_eq(b1, b2),
        "unchanged tenant is shared, not rebuilt"
    );
    assert!(
        Arc::ptr_eq(&a1.backends[0].health, &a2.backends[0].health),
        "health and load carried over"
    );
    assert_eq!(a2.backends[0].health.in_flight(), 1);
    assert!(
        Arc::ptr_eq(&a1.metrics, &a2.metrics),
        "metrics carried over"
    );
    assert!(!a2.eligible(1, 0), "drained backend is not eligible");

    let t3 = build(&t2, &s2, &Snapshot::new(), &m);
    assert_eq!(t3.route_count(), 0);
    assert_eq!(t3.tenant_count(), 0);
}

fn naive(snap: &Snapshot, host: &str, path: &str) -> Option<String> {
    let mut best: Option<(usize, usize, String)> = None; // (host specificity, prefix len, id)
    for t in snap.tenants() {
        for r in &t.routes {
            if !r.host.matches(host) {
                continue;
            }
            let spec = match &r.host {
                HostPattern::Exact(_) => usize::MAX,
                HostPattern::Wildcard(s) => s.len(),
            };
            let cand = (spec, r.path_prefix.len(), format!("{}/{}", t.id, r.id));
            let better = best.as_ref().is_none_or(|b| (cand.0, cand.1) > (b.0, b.1));
            if better && (best.as_ref().is_none_or(|b| cand.0 >= b.0)) {
                best = Some(cand);
            }
        }
    }
    // Host choice first (exact, else longest suffix); then prefix among that host's routes.
    let chosen_spec = best.as_ref()?.0;
    let mut in_host: Vec<(usize, String)> = Vec::new();
    let mut any_host = false;
    for t in snap.tenants() {
        for r in &t.routes {
            let spec = match &r.host {
                HostPattern::Exact(_) => usize::MAX,
                HostPattern::Wildcard(s) => s.len(),
            };
            if r.host.matches(host) && spec == chosen_spec {
                any_host = true;
                if r.matches_path(path) {
                    in_host.push((r.path_prefix.len(), format!("{}/{}", t.id, r.id)));
                }
            }
        }
    }
    if !any_host {
        return None;
    }
    in_host.sort();
    Some(
        in_host
            .pop()
            .map_or_else(|| "no_route".to_owned(), |(_, id)| id),
    )
}

fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
    let host = prop_oneof![
        Just("a.test"),
        Just("b.a.test"),
        Just("*.a.test"),
        Just("*.b.a.test"),
        Just("c.test"),
        Just("*.test")
    ];
    let prefix = prop_oneof![Just("/"), Just("/api"), Just("/api/v1"), Just("/x")];
    proptest::collection::vec(proptest::collection::vec((host, prefix), 1..4), 1..5).prop_map(
        |tenants| {
            // Hosts never cross tenants and (host, prefix) is unique: drop what would conflict.
            let mut owner = std::collections::HashMap::new();
            let mut seen = std::collections::HashSet::new();
            let mut out = Vec::new();
            for (ti, routes) in tenants.into_iter().enumerate() {
                let mut rs = Vec::new();
                for (ri, (h, p)) in routes.into_iter().enumerate() {
                    if *owner.entry(h).or_insert(ti) != ti || !seen.insert((h, p)) {
                        continue;
                    }
                    rs.push(route(&format!("r{ri}"), h, p, 1));
                }
                out.push(tenant(&format!("t{ti}"), rs));
            }
            Snapshot::from_tenants(out)
        },
    )
}

proptest! {
    #[test]
    fn lookup_matches_naive_model_after_any_sequence_of_changes(a in arb_snapshot(), b in arb_snapshot()) {
        let m = MetricsRegistry::new(100);
        let ta = build(&RoutingTable::default(), &Snapshot::new(), &a, &m);
        let tb = build(&ta, &a, &b, &m);
        for host in ["a.test", "b.a.test", "x.b.a.test", "z.a.test", "c.test", "q.test", "none.example"] {
            for path in ["/", "/api", "/api/v1/x", "/apix", "/x/y"] {
                prop_assert_eq!(found(&ta, host, path), naive(&a, host, path), "a: {} {}", host, path);
                prop_assert_eq!(found(&tb, host, path), naive(&b, host, path), "b: {} {}", host, path);
            }
        }
    }
}

#[test]
fn route_entry_stays_small() {
    // Per-route memory budget (issue: < 1 KiB per route); the struct itself must stay compact.
    assert!(
        std::mem::size_of::<RouteRt>() <= 256,
        "RouteRt is {} bytes",
        std::mem::size_of::<RouteRt>()
    );
    assert!(
        std::mem::size_of::<BackendRt>() <= 128,
        "BackendRt is {} bytes",
        std::mem::size_of::<BackendRt>()
    );
}
