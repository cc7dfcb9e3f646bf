//! Tenant lifecycle: creation, conflicts, signup with an owner, atomicity, status, deletion.

use tenantry_domain::{Role, default_plans};
use tenantry_store::{NewTenant, StoreError, TenantStatus};

use crate::support::*;

store_test!(
    async fn creates_tenant_and_refuses_duplicate(db) {
        let p = db.store.platform();
        let t = p
            .create_tenant(
                &admin(),
                NewTenant { id: tid("acme"), name: "Acme".into(), plan: "free".into() },
                None,
            )
            .await
            .unwrap();
        assert_eq!(t.id, tid("acme"));
        assert_eq!(t.status, TenantStatus::Active);
        assert_eq!(t.managed_by, "api");
        assert_eq!(p.get_tenant(&tid("acme")).await.unwrap(), Some(t.clone()));
        assert_eq!(db.store.tenant(&tid("acme")).get().await.unwrap(), Some(t));

        let again = p
            .create_tenant(
                &admin(),
                NewTenant { id: tid("acme"), name: "Other".into(), plan: "pro".into() },
                None,
            )
            .await;
        assert!(
            matches!(&again, Err(StoreError::Conflict { kind: "tenant", id }) if id == "acme"),
            "{again:?}"
        );
        let unknown = p
            .create_tenant(
                &admin(),
                NewTenant { id: tid("beta"), name: "Beta".into(), plan: "gold".into() },
                None,
            )
            .await;
        assert!(
            matches!(&unknown, Err(StoreError::NotFound { kind: "plan", id }) if id == "gold"),
            "{unknown:?}"
        );
        let all = p.list_tenants().await.unwrap();
        assert_eq!(all.len(), 1);

        let sub = db.store.tenant(&tid("acme")).subscription().await.unwrap();
        assert_eq!(sub.plan, "free");
        assert_eq!(sub.status, "active");
        assert_eq!(sub.limits, default_plans()[0].1);
        assert_eq!(sub.period_end - sub.period_start, 30 * 24 * 3600 * 1000);
        let missing = db.store.tenant(&tid("nope")).subscription().await;
        assert!(matches!(missing, Err(StoreError::NotFound { kind: "tenant", .. })));
    }
);

store_test!(
    async fn seeds_default_plans_once(db) {
        let p = db.store.platform();
        let plans = p.list_plans().await.unwrap();
        let names: Vec<_> = plans.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["enterprise", "free", "pro"]);
        for (name, limits) in default_plans() {
            assert_eq!(p.get_plan(name).await.unwrap().unwrap().limits, limits);
        }
    }
);

store_test!(
    async fn signup_creates_owner(db) {
        let p = db.store.platform();
        // The owner's role is forced, whatever the caller passed.
        p.create_tenant(
            &admin(),
            NewTenant { id: tid("acme"), name: "Acme".into(), plan: "free".into() },
            Some(user("u1", "Alice@Example.COM", Role::Viewer)),
        )
        .await
        .unwrap();
        let users = db.store.tenant(&tid("acme")).list_users().await.unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].role, Role::Owner);
        assert_eq!(users[0].email, "alice@example.com");
        assert_eq!(users[0].tenant, Some(tid("acme")));
        let found = p.find_user_by_email("ALICE@example.com").await.unwrap().unwrap();
        assert_eq!(found.id, "u1");
        assert_eq!(found.password_hash, "$argon2id$secret-hash-of-u1");
        assert_eq!(p.get_user("u1").await.unwrap().unwrap(), found);
        assert_eq!(p.count_users().await.unwrap(), 1);
        assert!(p.find_user_by_email("bob@example.com").await.unwrap().is_none());
    }
);

store_test!(
    async fn tenant_creation_is_atomic(db) {
        let p = db.store.platform();
        tenant_with_owner(&db.store, "acme", "free").await;
        // The owner's email is taken: neither the tenant nor its subscription may remain.
        let r = p
            .create_tenant(
                &admin(),
                NewTenant { id: tid("beta"), name: "Beta".into(), plan: "free".into() },
                Some(user("u2", "OWNER@acme.test", Role::Owner)),
            )
            .await;
        assert!(
            matches!(&r, Err(StoreError::Conflict { kind: "user", id }) if id == "owner@acme.test"),
            "{r:?}"
        );
        assert!(p.get_tenant(&tid("beta")).await.unwrap().is_none());
        assert!(p.load_tenant(&tid("beta")).await.unwrap().is_none());
        assert_eq!(p.list_tenants().await.unwrap().len(), 1);
        let audit = p.audit(100, None).await.unwrap();
        assert!(audit.iter().all(|a| a.target != "beta"), "{audit:?}");
        // The id is free again.
        p.create_tenant(
            &admin(),
            NewTenant { id: tid("beta"), name: "Beta".into(), plan: "free".into() },
            Some(user("u2", "owner@beta.test", Role::Owner)),
        )
        .await
        .unwrap();
    }
);

store_test!(
    async fn suspends_and_renames(db) {
        let t = tenant_with_owner(&db.store, "acme", "free").await;
        let p = db.store.platform();
        let s = p.set_tenant_status(&admin(), &t, TenantStatus::Suspended).await.unwrap();
        assert_eq!(s.status, TenantStatus::Suspended);
        let r = db.store.tenant(&t).rename(&admin(), "Acme Corp").await.unwrap();
        assert_eq!(r.name, "Acme Corp");
        assert_eq!(r.status, TenantStatus::Suspended);
        assert_eq!(db.store.tenant(&t).get().await.unwrap(), Some(r));
        let missing = p.set_tenant_status(&admin(), &tid("nope"), TenantStatus::Active).await;
        assert!(matches!(missing, Err(StoreError::NotFound { kind: "tenant", .. })));
        let missing = db.store.tenant(&tid("nope")).rename(&admin(), "x").await;
        assert!(matches!(missing, Err(StoreError::NotFound { kind: "tenant", .. })));
        assert_eq!(TenantStatus::parse("suspended"), Some(TenantStatus::Suspended));
        assert_eq!(TenantStatus::parse("gone"), None);
    }
);

store_test!(
    async fn delete_tenant_removes_every_row(db) {
        let t = tenant_with_owner(&db.store, "acme", "pro").await;
        let other = tenant_with_owner(&db.store, "beta", "pro").await;
        let scope = db.store.tenant(&t);
        scope.create_user(&admin(), user("u2", "bob@acme.test", Role::Member)).await.unwrap();
        scope.create_api_key(&admin(), key("k1", "hash-k1", Role::Member)).await.unwrap();
        scope.create_route(&admin(), &full_route("web", "acme.example.com")).await.unwrap();
        scope.create_route(&admin(), &route("api", "api.acme.example.com", &["10.0.0.9:80"])).await.unwrap();

        let export = db.store.platform().delete_tenant(&admin(), &t).await.unwrap();
        assert_eq!(export["tenant"]["id"], "acme");
        assert_eq!(export["users"].as_array().unwrap().len(), 2);
        assert_eq!(export["routes"].as_array().unwrap().len(), 2);

        let p = db.store.platform();
        assert!(p.get_tenant(&t).await.unwrap().is_none());
        assert!(p.find_user_by_email("bob@acme.test").await.unwrap().is_none());
        assert!(p.find_api_key("hash-k1").await.unwrap().is_none());
        assert!(p.load_tenant(&t).await.unwrap().is_none());
        // Not a row left anywhere (counted through a scope of the deleted tenant: on
        // PostgreSQL the policies let its rows through, had any remained).
        for table in [
            "tenants WHERE id = 'acme'",
            "subscriptions WHERE tenant_id = 'acme'",
            "users WHERE tenant_id = 'acme'",
            "api_keys WHERE tenant_id = 'acme'",
            "routes WHERE tenant_id = 'acme'",
            "backends WHERE tenant_id = 'acme'",
            "domains WHERE tenant_id = 'acme'",
            "audit_log WHERE tenant_id = 'acme'",
        ] {
            let n = scope.raw_count(&format!("SELECT * FROM {table}")).await.unwrap();
            assert_eq!(n, 0, "{table}");
        }
        // The deletion is audited platform-wide, without a tenant.
        let last = &p.audit(1, None).await.unwrap()[0];
        assert_eq!(last.action, "tenant.delete");
        assert_eq!(last.target, "acme");
        assert_eq!(last.tenant, None);
        assert_eq!(last.actor, "admin-1");
        // Its hosts are free again.
        db.store
            .tenant(&other)
            .create_route(&admin(), &route("web", "acme.example.com", &["10.0.0.1:80"]))
            .await
            .unwrap();
        let missing = p.delete_tenant(&admin(), &t).await;
        assert!(matches!(missing, Err(StoreError::NotFound { kind: "tenant", .. })));
    }
);

#[tokio::test]
async fn migrate_alone_then_open() {
    let dir = tenantry_testkit::TempDir::new();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    tenantry_store::Store::migrate(&url).await.unwrap();
    tenantry_store::Store::migrate(&url).await.unwrap();
    let store = tenantry_store::Store::open(&url).await.unwrap();
    assert_eq!(store.backend(), tenantry_store::Backend::Sqlite);
    assert_eq!(store.platform().list_plans().await.unwrap().len(), 3);
    // The file is in WAL mode (readers do not block the writer).
    let t = tenant_with_owner(&store, "acme", "free").await;
    assert_eq!(
        store
            .tenant(&t)
            .raw_count("SELECT * FROM pragma_journal_mode WHERE journal_mode = 'wal'")
            .await
            .unwrap(),
        1
    );
    store.close().await;
    // Reopening does not seed twice.
    let store = tenantry_store::Store::open(&url).await.unwrap();
    assert_eq!(store.platform().list_plans().await.unwrap().len(), 3);
    store.close().await;
}

#[tokio::test]
async fn refuses_unusable_urls() {
    for url in [
        "sqlite::memory:",
        "mysql://x/y",
        "sqlite://x.db?mode=memory",
    ] {
        let r = tenantry_store::Store::open(url).await;
        assert!(matches!(r, Err(StoreError::Invalid(_))), "{url}: {r:?}");
    }
}
