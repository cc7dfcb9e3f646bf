//! Plan limits: refused creations, upgrades, downgrades, overrides, plan edits, races.

use tenantry_domain::{CountedLimit, LimitOverrides, Role, default_plans};
use tenantry_store::StoreError;

use crate::support::*;

fn is_limit(r: &Result<impl std::fmt::Debug, StoreError>, limit: CountedLimit, max: u64) -> bool {
    matches!(r, Err(StoreError::PlanLimit { limit: l, max: m, plan }) if *l == limit && *m == max && plan == "free")
}

store_test!(
    async fn free_plan_limits_are_enforced(db) {
        let t = tenant_with_owner(&db.store, "acme", "free").await;
        let s = db.store.tenant(&t);
        // Users: the owner plus two.
        s.create_user(&admin(), user("u2", "u2@acme.test", Role::Member)).await.unwrap();
        s.create_user(&admin(), user("u3", "u3@acme.test", Role::Viewer)).await.unwrap();
        let r = s.create_user(&admin(), user("u4", "u4@acme.test", Role::Viewer)).await;
        assert!(is_limit(&r, CountedLimit::Users, 3), "{r:?}");
        assert_eq!(
            r.unwrap_err().to_string(),
            "plan \"free\" allows at most 3 for max_users"
        );
        // Routes: five on one host.
        for i in 0..5 {
            let mut r = route(&format!("r{i}"), "acme.example.com", &["10.0.0.1:80"]);
            r.path_prefix = Some(format!("/p{i}"));
            s.create_route(&admin(), &r).await.unwrap();
        }
        let mut sixth = route("r5", "acme.example.com", &["10.0.0.1:80"]);
        sixth.path_prefix = Some("/p5".into());
        let r = s.create_route(&admin(), &sixth).await;
        assert!(is_limit(&r, CountedLimit::Routes, 5), "{r:?}");
        s.delete_route(&admin(), "r4").await.unwrap();
        // Backends: two per route.
        let three = route("r4", "acme.example.com", &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        let r = s.create_route(&admin(), &three).await;
        assert!(is_limit(&r, CountedLimit::BackendsPerRoute, 2), "{r:?}");
        let mut grown = route("r0", "acme.example.com", &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        grown.path_prefix = Some("/p0".into());
        let r = s.replace_route(&admin(), &grown).await;
        assert!(is_limit(&r, CountedLimit::BackendsPerRoute, 2), "{r:?}");
        // Domains: one.
        let r = s.create_route(&admin(), &route("r4", "other.example.com", &["10.0.0.1:80"])).await;
        assert!(is_limit(&r, CountedLimit::Domains, 1), "{r:?}");
        // Moving one route to another host while the others stay is a second domain too.
        let mut moved = route("r0", "other.example.com", &["10.0.0.1:80"]);
        moved.path_prefix = Some("/p0".into());
        let r = s.replace_route(&admin(), &moved).await;
        assert!(is_limit(&r, CountedLimit::Domains, 1), "{r:?}");
        // Nothing of the refused writes remains.
        assert_eq!(s.list_users().await.unwrap().len(), 3);
        assert_eq!(s.list_routes().await.unwrap().len(), 4);
        assert!(s.list_routes().await.unwrap().iter().all(|r| r.backends.len() == 1));
    }
);

store_test!(
    async fn upgrade_lifts_and_downgrade_is_refused(db) {
        let t = tenant_with_owner(&db.store, "acme", "free").await;
        let s = db.store.tenant(&t);
        let sub = s.set_plan(&admin(), "pro").await.unwrap();
        assert_eq!(sub.plan, "pro");
        assert_eq!(sub.limits, default_plans()[1].1);
        assert_eq!(s.subscription().await.unwrap(), sub);
        for i in 2..=4 {
            s.create_user(&admin(), user(&format!("u{i}"), &format!("u{i}@acme.test"), Role::Member)).await.unwrap();
        }
        s.create_route(&admin(), &route("a", "a.example.com", &["10.0.0.1:80"])).await.unwrap();
        s.create_route(&admin(), &route("b", "b.example.com", &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"])).await.unwrap();

        let r = s.set_plan(&admin(), "free").await;
        assert!(
            matches!(&r, Err(StoreError::Downgrade { limit: CountedLimit::Users, usage: 4, max: 3, plan }) if plan == "free"),
            "{r:?}"
        );
        s.delete_user(&admin(), "u4").await.unwrap();
        let r = s.set_plan(&admin(), "free").await;
        assert!(
            matches!(&r, Err(StoreError::Downgrade { limit: CountedLimit::BackendsPerRoute, usage: 3, max: 2, .. })),
            "{r:?}"
        );
        s.replace_route(&admin(), &route("b", "b.example.com", &["10.0.0.1:80"])).await.unwrap();
        let r = s.set_plan(&admin(), "free").await;
        assert!(
            matches!(&r, Err(StoreError::Downgrade { limit: CountedLimit::Domains, usage: 2, max: 1, .. })),
            "{r:?}"
        );
        s.delete_route(&admin(), "b").await.unwrap();
        assert_eq!(s.set_plan(&admin(), "free").await.unwrap().plan, "free");
        let r = s.set_plan(&admin(), "gold").await;
        assert!(matches!(&r, Err(StoreError::NotFound { kind: "plan", .. })), "{r:?}");
        assert_eq!(s.subscription().await.unwrap().plan, "free");
    }
);

store_test!(
    async fn overrides_change_the_effective_limits(db) {
        let t = tenant_with_owner(&db.store, "acme", "free").await;
        let p = db.store.platform();
        let o = LimitOverrides { max_users: Some(Some(5)), max_domains: Some(None), ..LimitOverrides::default() };
        let sub = p.set_overrides(&admin(), &t, &o).await.unwrap();
        assert_eq!(sub.limits.max_users, Some(5));
        assert_eq!(sub.limits.max_domains, None);
        assert_eq!(sub.overrides, o);
        assert_eq!(db.store.tenant(&t).subscription().await.unwrap(), sub);
        let s = db.store.tenant(&t);
        for i in 2..=5 {
            s.create_user(&admin(), user(&format!("u{i}"), &format!("u{i}@acme.test"), Role::Member)).await.unwrap();
        }
        let r = s.create_user(&admin(), user("u6", "u6@acme.test", Role::Member)).await;
        assert!(matches!(&r, Err(StoreError::PlanLimit { limit: CountedLimit::Users, max: 5, .. })), "{r:?}");
        s.create_route(&admin(), &route("a", "a.example.com", &["10.0.0.1:80"])).await.unwrap();
        s.create_route(&admin(), &route("b", "b.example.com", &["10.0.0.1:80"])).await.unwrap();
        // The data plane's view carries them.
        let state = p.load_tenant(&t).await.unwrap().unwrap();
        assert_eq!(state.limits, sub.limits);
        assert_eq!(state.plan, "free");
        // Dropping the overrides would put usage over the plan.
        let r = p.set_overrides(&admin(), &t, &LimitOverrides::default()).await;
        assert!(matches!(&r, Err(StoreError::Downgrade { limit: CountedLimit::Users, usage: 5, max: 3, .. })), "{r:?}");
        let r = p.set_overrides(&admin(), &tid("nope"), &o).await;
        assert!(matches!(&r, Err(StoreError::NotFound { kind: "tenant", .. })), "{r:?}");
    }
);

store_test!(
    async fn plan_edits_reach_subscribers(db) {
        let a = tenant_with_owner(&db.store, "acme", "free").await;
        let b = tenant_with_owner(&db.store, "beta", "free").await;
        let _c = tenant_with_owner(&db.store, "corp", "pro").await;
        let p = db.store.platform();
        let mut limits = p.get_plan("free").await.unwrap().unwrap().limits;
        limits.max_users = Some(4);
        let (plan, tenants) = p.update_plan(&admin(), "free", &limits).await.unwrap();
        assert_eq!(plan.limits, limits);
        assert_eq!(tenants, vec![a.clone(), b]);
        assert_eq!(db.store.tenant(&a).subscription().await.unwrap().limits.max_users, Some(4));
        let r = p.update_plan(&admin(), "gold", &limits).await;
        assert!(matches!(&r, Err(StoreError::NotFound { kind: "plan", .. })), "{r:?}");

        let gold = p.create_plan(&admin(), "gold", &limits).await.unwrap();
        assert_eq!(p.get_plan("gold").await.unwrap(), Some(gold));
        let r = p.create_plan(&admin(), "gold", &limits).await;
        assert!(matches!(&r, Err(StoreError::Conflict { kind: "plan", .. })), "{r:?}");
        assert_eq!(p.list_plans().await.unwrap().len(), 4);
        db.store.tenant(&a).set_plan(&admin(), "gold").await.unwrap();
    }
);

store_test!(
    async fn concurrent_creations_respect_the_limit(db) {
        // The owner is one of three users: of six concurrent creations, two may succeed.
        let t = tenant_with_owner(&db.store, "acme", "free").await;
        let mut tasks = Vec::new();
        for i in 0..6 {
            let store = db.store.clone();
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .tenant(&t)
                    .create_user(&admin(), user(&format!("u{i}"), &format!("u{i}@acme.test"), Role::Member))
                    .await
            }));
        }
        let mut ok = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => ok += 1,
                Err(StoreError::PlanLimit { limit: CountedLimit::Users, .. }) => {}
                Err(e) => panic!("unexpected error: {e:?}"),
            }
        }
        assert_eq!(ok, 2);
        assert_eq!(db.store.tenant(&t).list_users().await.unwrap().len(), 3);
    }
);
