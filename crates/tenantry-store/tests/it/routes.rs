//! Routes: CRUD round trips, conflicts, the host registry, backend state, the full load.

use tenantry_domain::default_plans;
use tenantry_store::StoreError;

use crate::support::*;

store_test!(
    async fn routes_round_trip_through_crud(db) {
        let t = tenant_with_owner(&db.store, "acme", "pro").await;
        let s = db.store.tenant(&t);
        let full = full_route("web", "acme.example.com");
        assert_eq!(s.create_route(&admin(), &full).await.unwrap(), full);
        assert_eq!(s.get_route("web").await.unwrap(), Some(full.clone()));
        let plain = route("api", "api.acme.example.com", &["10.0.0.5:8080"]);
        s.create_route(&admin(), &plain).await.unwrap();
        assert_eq!(s.list_routes().await.unwrap(), vec![plain.clone(), full.clone()]);

        let dup = s.create_route(&admin(), &route("web", "x.example.com", &["10.0.0.1:80"])).await;
        assert!(matches!(&dup, Err(StoreError::Conflict { kind: "route", id }) if id == "web"), "{dup:?}");
        // Same host and prefix as `web`, another id.
        let mut twin = route("web2", "ACME.example.com", &["10.0.0.1:80"]);
        twin.path_prefix = Some("/api".into());
        let r = s.create_route(&admin(), &twin).await;
        assert!(matches!(&r, Err(StoreError::Conflict { kind: "route", id }) if id == "web"), "{r:?}");
        // No prefix means '/': clashes with a route that says '/'.
        let mut root = route("root", "api.acme.example.com", &["10.0.0.1:80"]);
        root.path_prefix = Some("/".into());
        let r = s.create_route(&admin(), &root).await;
        assert!(matches!(&r, Err(StoreError::Conflict { kind: "route", .. })), "{r:?}");

        let mut changed = full.clone();
        changed.backends.pop();
        changed.algorithm = None;
        changed.tls = None;
        assert_eq!(s.replace_route(&admin(), &changed).await.unwrap(), changed);
        assert_eq!(s.get_route("web").await.unwrap(), Some(changed.clone()));
        let r = s.replace_route(&admin(), &route("nope", "n.example.com", &[])).await;
        assert!(matches!(&r, Err(StoreError::NotFound { kind: "route", .. })), "{r:?}");

        assert_eq!(s.delete_route(&admin(), "web").await.unwrap(), changed);
        assert_eq!(s.get_route("web").await.unwrap(), None);
        let r = s.delete_route(&admin(), "web").await;
        assert!(matches!(&r, Err(StoreError::NotFound { kind: "route", .. })), "{r:?}");
        assert_eq!(s.list_routes().await.unwrap(), vec![plain]);
    }
);

store_test!(
    async fn a_host_belongs_to_one_tenant(db) {
        let a = tenant_with_owner(&db.store, "acme", "pro").await;
        let b = tenant_with_owner(&db.store, "beta", "pro").await;
        let (sa, sb) = (db.store.tenant(&a), db.store.tenant(&b));
        sa.create_route(&admin(), &route("web", "shop.example.com", &["10.0.0.1:80"])).await.unwrap();
        // A second route of the same tenant on the host is fine.
        let mut api = route("api", "shop.example.com", &["10.0.0.1:80"]);
        api.path_prefix = Some("/api".into());
        sa.create_route(&admin(), &api).await.unwrap();
        for host in ["shop.example.com", "SHOP.Example.com"] {
            let r = sb.create_route(&admin(), &route("web", host, &["10.0.0.2:80"])).await;
            assert!(matches!(&r, Err(StoreError::Conflict { kind: "host", .. })), "{host}: {r:?}");
        }
        // Nor can b move one of its routes there.
        sb.create_route(&admin(), &route("web", "beta.example.com", &["10.0.0.2:80"])).await.unwrap();
        let r = sb.replace_route(&admin(), &route("web", "shop.example.com", &["10.0.0.2:80"])).await;
        assert!(matches!(&r, Err(StoreError::Conflict { kind: "host", .. })), "{r:?}");
        assert_eq!(sb.get_route("web").await.unwrap().unwrap().host, "beta.example.com");

        // The host is released only when a's last route on it goes.
        sa.delete_route(&admin(), "web").await.unwrap();
        let r = sb.replace_route(&admin(), &route("web", "shop.example.com", &["10.0.0.2:80"])).await;
        assert!(matches!(&r, Err(StoreError::Conflict { kind: "host", .. })), "{r:?}");
        sa.delete_route(&admin(), "api").await.unwrap();
        sb.replace_route(&admin(), &route("web", "shop.example.com", &["10.0.0.2:80"])).await.unwrap();
        // beta.example.com was released by the move.
        sa.create_route(&admin(), &route("web", "beta.example.com", &["10.0.0.1:80"])).await.unwrap();
    }
);

store_test!(
    async fn backend_state_is_persisted(db) {
        let t = tenant_with_owner(&db.store, "acme", "pro").await;
        let s = db.store.tenant(&t);
        s.create_route(&admin(), &full_route("web", "acme.example.com")).await.unwrap();
        let r = s.set_backend_state(&admin(), "web", "10.0.0.1:80", "drain").await.unwrap();
        assert_eq!(r.backends[1].state.as_deref(), Some("drain"));
        assert_eq!(r.backends[0].state.as_deref(), Some("active"));
        let stored = s.get_route("web").await.unwrap().unwrap();
        assert_eq!(stored, r);
        let loaded = db.store.platform().load_tenant(&t).await.unwrap().unwrap();
        assert_eq!(loaded.routes, vec![r]);
        let e = s.set_backend_state(&admin(), "web", "10.9.9.9:80", "drain").await;
        assert!(matches!(&e, Err(StoreError::NotFound { kind: "backend", .. })), "{e:?}");
        let e = s.set_backend_state(&admin(), "nope", "10.0.0.1:80", "drain").await;
        assert!(matches!(&e, Err(StoreError::NotFound { kind: "route", .. })), "{e:?}");
        // Another tenant cannot touch it.
        let other = tenant_with_owner(&db.store, "beta", "pro").await;
        let e = db.store.tenant(&other).set_backend_state(&admin(), "web", "10.0.0.1:80", "active").await;
        assert!(matches!(&e, Err(StoreError::NotFound { kind: "route", .. })), "{e:?}");
    }
);

store_test!(
    async fn load_all_gives_every_tenant_with_limits_and_routes(db) {
        let a = tenant_with_owner(&db.store, "acme", "pro").await;
        let b = tenant_with_owner(&db.store, "beta", "free").await;
        let _empty = tenant_with_owner(&db.store, "corp", "enterprise").await;
        let ra = [full_route("web", "acme.example.com"), route("api", "api.acme.example.com", &["10.0.0.3:80"])];
        for r in &ra {
            db.store.tenant(&a).create_route(&admin(), r).await.unwrap();
        }
        let rb = route("web", "beta.example.com", &["10.0.1.1:80", "10.0.1.2:80"]);
        db.store.tenant(&b).create_route(&admin(), &rb).await.unwrap();

        let all = db.store.platform().load_all().await.unwrap();
        let ids: Vec<_> = all.iter().map(|s| s.tenant.id.as_str()).collect();
        assert_eq!(ids, ["acme", "beta", "corp"]);
        assert_eq!(all[0].plan, "pro");
        assert_eq!(all[0].limits, default_plans()[1].1);
        assert_eq!(all[0].routes, vec![ra[1].clone(), ra[0].clone()]);
        assert_eq!(all[1].routes, vec![rb]);
        assert_eq!(all[1].limits, default_plans()[0].1);
        assert!(all[2].routes.is_empty());
        assert_eq!(all[2].limits, default_plans()[2].1);
        assert_eq!(db.store.platform().load_tenant(&a).await.unwrap().as_ref(), Some(&all[0]));
    }
);
