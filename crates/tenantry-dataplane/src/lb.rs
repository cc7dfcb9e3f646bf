//! Backend selection for a route: round robin, smooth weighted round robin, least requests
//! in flight, and consistent hashing of the client address (weighted rendezvous hashing).

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use tenantry_domain::Algorithm;

use crate::table::RouteRt;

/// Picks a backend index for a request, skipping backends that are draining, unhealthy or
/// listed in `exclude` (a backend that already failed this request). `None`: no backend
/// can take it.
pub fn select_backend(
    route: &RouteRt,
    client: IpAddr,
    exclude: Option<usize>,
    now_ms: u64,
) -> Option<usize> {
    let n = route.backends.len();
    let ok = |i: usize| Some(i) != exclude && route.eligible(i, now_ms);
    match route.algorithm {
        Algorithm::RoundRobin => {
            let start = route.lb.next.fetch_add(1, Ordering::Relaxed);
            (0..n).map(|k| (start + k) % n).find(|&i| ok(i))
        }
        Algorithm::WeightedRoundRobin => smooth_weighted(route, &ok),
        Algorithm::LeastConn => {
            // Rotate the starting point so that ties spread instead of piling on backend 0.
            let start = route.lb.next.fetch_add(1, Ordering::Relaxed);
            (0..n)
                .map(|k| (start + k) % n)
                .filter(|&i| ok(i))
                .min_by_key(|&i| {
                    let b = &route.backends[i];
                    // Compare in-flight per unit of weight (integer, scaled).
                    b.health.in_flight() * 1000 / b.weight.max(1) as usize
                })
        }
        Algorithm::IpHash => rendezvous(route, client, &ok),
    }
}

/// nginx's smooth weighted round robin: each pick adds every eligible backend's weight to its
/// current weight, picks the largest, and subtracts the total from the winner. Weights 3:1
/// give a, a, b, a rather than a, a, a, b.
fn smooth_weighted(route: &RouteRt, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
    let Some(weights) = &route.lb.current_weights else {
        return (0..route.backends.len()).find(|&i| ok(i));
    };
    let mut current = match weights.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    let mut total: i64 = 0;
    let mut best: Option<usize> = None;
    for (i, b) in route.backends.iter().enumerate() {
        if !ok(i) {
            continue;
        }
        let w = i64::from(b.weight);
        current[i] += w;
        total += w;
        if best.is_none_or(|j| current[i] > current[j]) {
            best = Some(i);
        }
    }
    if let Some(j) = best {
        current[j] -= total;
    }
    best
}

/// Weighted rendezvous (highest random weight) hashing: every (client, backend) pair gets a
/// score and the highest wins. A client keeps its backend while that backend is eligible;
/// adding a backend moves only the clients for which the new one scores highest (about 1/n).
fn rendezvous(route: &RouteRt, client: IpAddr, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, b) in route.backends.iter().enumerate() {
        if !ok(i) {
            continue;
        }
        let score = rendezvous_score(client, b.label(), b.weight);
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// A fixed-seed hash so that every node and every restart map a client the same way.
fn stable_hash(client: IpAddr, backend: &str) -> u64 {
    let mut h = foldhash::quality::FixedState::with_seed(0x7465_6e61_6e74_7279).build_hasher();
    match client {
        IpAddr::V4(v4) => h.write(&v4.octets()),
        IpAddr::V6(v6) => h.write(&v6.octets()),
    }
    h.write(backend.as_bytes());
    h.finish()
}

/// Score = weight / -ln(u), u uniform in (0, 1) from the hash: the logarithmic method, which
/// keeps the share of each backend proportional to its weight.
fn rendezvous_score(client: IpAddr, backend: &str, weight: u32) -> f64 {
    let h = stable_hash(client, backend);
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight.max(1)) / -u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::MetricsRegistry;
    use crate::table::RoutingTable;
    use crate::tls::CertCache;
    use std::sync::Arc;
    use tenantry_domain::{
        Backend, BackendAddr, BackendState, Change, HostPattern, Route, RouteId, Tenant, TenantId,
    };

    fn route(algorithm: Algorithm, weights: &[u32]) -> Arc<RouteRt> {
        let t = Tenant {
            id: TenantId::parse("t").unwrap(),
            plan: "free".into(),
            limits: None,
            suspended: false,
            policy: None,
            waf: None,
            billing_anchor_ms: None,
            routes: vec![Route {
                id: RouteId::parse("r").unwrap(),
                host: HostPattern::parse("t.test").unwrap(),
                path_prefix: "/".into(),
                algorithm,
                kind: Default::default(),
                ratelimit: None,
                waf: None,
                tls: None,
                health_check: None,
                backends: weights
                    .iter()
                    .enumerate()
                    .map(|(i, w)| Backend {
                        address: BackendAddr::parse(&format!("127.0.0.1:{}", 10000 + i)).unwrap(),
                        weight: *w,
                        state: BackendState::Active,
                    })
                    .collect(),
            }],
        };
        let table = RoutingTable::default()
            .apply(
                &[Change::PutTenant(Arc::new(t))],
                &MetricsRegistry::new(10),
                &mut CertCache::default(),
                &crate::waf::WafPhase::new(Default::default()),
            )
            .unwrap();
        Arc::clone(table.routes().next().unwrap())
    }

    fn counts(r: &RouteRt, n: usize) -> Vec<usize> {
        let mut c = vec![0; r.backends.len()];
        for i in 0..n {
            let ip = IpAddr::from([10, 0, (i >> 8) as u8, i as u8]);
            c[select_backend(r, ip, None, 0).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn round_robin_alternates() {
        let r = route(Algorithm::RoundRobin, &[1, 1, 1]);
        assert_eq!(counts(&r, 300), vec![100, 100, 100]);
    }

    #[test]
    fn smooth_weighted_interleaves_by_weight() {
        let r = route(Algorithm::WeightedRoundRobin, &[3, 1]);
        let seq: Vec<usize> = (0..8)
            .map(|_| select_backend(&r, IpAddr::from([1, 1, 1, 1]), None, 0).unwrap())
            .collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 0, 0, 1, 0]);
        assert_eq!(counts(&r, 400), vec![300, 100]);
    }

    #[test]
    fn least_conn_prefers_idle_backend() {
        let r = route(Algorithm::LeastConn, &[1, 1]);
        r.backends[0].health.begin();
        for _ in 0..10 {
            assert_eq!(
                select_backend(&r, IpAddr::from([1, 1, 1, 1]), None, 0),
                Some(1)
            );
        }
    }

    #[test]
    fn skips_excluded_unhealthy_and_draining() {
        let r = route(Algorithm::RoundRobin, &[1, 1]);
        for _ in 0..4 {
            assert_eq!(
                select_backend(&r, IpAddr::from([1, 1, 1, 1]), Some(0), 0),
                Some(1)
            );
        }
        for _ in 0..3 {
            r.backends[1].health.record_failure(3, 0, 1000);
        }
        assert_eq!(
            select_backend(&r, IpAddr::from([1, 1, 1, 1]), Some(0), 0),
            None
        );
        // Without active checks, the ejected backend gets a trial after the back-off.
        assert_eq!(
            select_backend(&r, IpAddr::from([1, 1, 1, 1]), Some(0), 1000),
            Some(1)
        );
    }

    #[test]
    fn ip_hash_is_sticky_and_moves_about_one_nth_when_a_backend_is_added() {
        let four = route(Algorithm::IpHash, &[1, 1, 1, 1]);
        let five = route(Algorithm::IpHash, &[1, 1, 1, 1, 1]);
        let clients: Vec<IpAddr> = (0..5000u32)
            .map(|i| IpAddr::from((0x0a00_0000 + i).to_be_bytes()))
            .collect();
        let mut moved = 0;
        for c in &clients {
            let a = select_backend(&four, *c, None, 0).unwrap();
            assert_eq!(select_backend(&four, *c, None, 0), Some(a), "sticky");
            let b = select_backend(&five, *c, None, 0).unwrap();
            if a != b {
                assert_eq!(b, 4, "a client only moves to the new backend");
                moved += 1;
            }
        }
        let share = f64::from(moved) / clients.len() as f64;
        assert!((0.15..0.25).contains(&share), "moved {share}");
        let c = counts(&five, 5000);
        assert!(c.iter().all(|&x| (800..1200).contains(&x)), "{c:?}");
    }
}
