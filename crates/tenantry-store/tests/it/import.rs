//! The YAML file's tenants imported into the store.

use tenantry_config::TenantSpec;
use tenantry_store::{Actor, NewTenant, StoreError};

use crate::support::*;

fn spec(id: &str, plan: Option<&str>, routes: Vec<tenantry_config::RouteSpec>) -> TenantSpec {
    TenantSpec {
        id: id.into(),
        plan: plan.map(Into::into),
        policy: None,
        waf: None,
        routes,
    }
}

store_test!(
    async fn import_is_idempotent(db) {
        let p = db.store.platform();
        let file = vec![
            spec("acme", Some("pro"), vec![full_route("web", "acme.example.com"), route("api", "api.acme.example.com", &["10.0.0.1:80"])]),
            spec("beta", None, vec![route("web", "beta.example.com", &["10.0.1.1:80"])]),
        ];
        assert_eq!(p.import_file_tenants(&file).await.unwrap(), vec![tid("acme"), tid("beta")]);
        let audit_len = p.audit(1000, None).await.unwrap().len();
        assert_eq!(p.import_file_tenants(&file).await.unwrap(), vec![]);
        assert_eq!(p.audit(1000, None).await.unwrap().len(), audit_len, "a no-op import writes nothing");

        let acme = p.load_tenant(&tid("acme")).await.unwrap().unwrap();
        assert_eq!(acme.tenant.managed_by, "file");
        assert_eq!(acme.tenant.name, "acme");
        assert_eq!(acme.plan, "pro");
        assert_eq!(acme.routes.len(), 2);
        let beta = p.load_tenant(&tid("beta")).await.unwrap().unwrap();
        assert_eq!(beta.plan, "free");

        // One route changes: only that tenant is reported.
        let mut file2 = file.clone();
        file2[1].routes[0].backends[0].address = "10.0.1.2:80".into();
        assert_eq!(p.import_file_tenants(&file2).await.unwrap(), vec![tid("beta")]);
        assert_eq!(
            db.store.tenant(&tid("beta")).list_routes().await.unwrap()[0].backends[0].address,
            "10.0.1.2:80"
        );
        // A plan change is reported too.
        let mut file3 = file2.clone();
        file3[0].plan = Some("enterprise".into());
        assert_eq!(p.import_file_tenants(&file3).await.unwrap(), vec![tid("acme")]);
        assert_eq!(db.store.tenant(&tid("acme")).subscription().await.unwrap().plan, "enterprise");

        // The file's policy wins too, is loaded with the tenant, and a removal is reported.
        let mut file4 = file3.clone();
        file4[0].policy = Some(tenantry_config::PolicySpec {
            allowed_models: Some(vec!["gpt-4o-mini".into()]),
            allowed_tools: None,
        });
        assert_eq!(p.import_file_tenants(&file4).await.unwrap(), vec![tid("acme")]);
        let acme = p.load_tenant(&tid("acme")).await.unwrap().unwrap();
        assert_eq!(acme.policy, file4[0].policy);
        assert_eq!(acme.routes[1], full_route("web", "acme.example.com"), "kind and ratelimit round-trip");
        let all = p.load_all().await.unwrap();
        assert_eq!(all[0].policy, file4[0].policy);
        assert_eq!(all[1].policy, None);
        assert!(all[0].billing_anchor_ms > 0);
        assert_eq!(p.import_file_tenants(&file3).await.unwrap(), vec![tid("acme")]);
        assert_eq!(db.store.tenant(&tid("acme")).policy().await.unwrap(), None);

        // So do its WAF settings.
        let mut file5 = file3.clone();
        file5[0].waf = Some(tenantry_config::TenantWafSpec {
            level: Some("off".into()),
            mode: Some("detect".into()),
            exclusions: Some(vec![942100]),
        });
        assert_eq!(p.import_file_tenants(&file5).await.unwrap(), vec![tid("acme")]);
        assert!(p.import_file_tenants(&file5).await.unwrap().is_empty());
        let acme = p.load_tenant(&tid("acme")).await.unwrap().unwrap();
        assert_eq!(acme.waf, file5[0].waf);
        let all = p.load_all().await.unwrap();
        assert_eq!((&all[0].waf, &all[1].waf), (&file5[0].waf, &None));
        let audit = db.store.tenant(&tid("acme")).audit(1, None).await.unwrap();
        assert_eq!((audit[0].action.as_str(), audit[0].actor.as_str()), ("tenant.waf_updated", "file"));
        assert_eq!(p.import_file_tenants(&file3).await.unwrap(), vec![tid("acme")]);
        assert_eq!(db.store.tenant(&tid("acme")).waf().await.unwrap(), None);
    }
);

store_test!(
    async fn waf_is_set_audited_and_cleared(db) {
        tenant_with_owner(&db.store, "corp", "pro").await;
        let t = db.store.tenant(&tid("corp"));
        assert_eq!(t.waf().await.unwrap(), None);
        let w = tenantry_config::TenantWafSpec {
            level: Some("strict".into()),
            mode: Some("block".into()),
            exclusions: Some(vec![920350, 942100]),
        };
        assert_eq!(t.set_waf(&Actor::new("u1", None), Some(&w)).await.unwrap(), Some(w.clone()));
        assert_eq!(t.waf().await.unwrap(), Some(w.clone()));
        assert_eq!(db.store.platform().load_tenant(&tid("corp")).await.unwrap().unwrap().waf, Some(w.clone()));
        let audit = t.audit(10, None).await.unwrap();
        assert_eq!(audit[0].action, "tenant.waf_updated");
        assert_eq!(audit[0].before, Some(serde_json::Value::Null));
        assert_eq!(audit[0].after.as_ref().unwrap()["exclusions"], serde_json::json!([920350, 942100]));
        assert_eq!(t.export().await.unwrap()["waf"]["level"], "strict");
        t.set_waf(&Actor::new("u1", None), None).await.unwrap();
        assert_eq!(t.waf().await.unwrap(), None);
        let audit = t.audit(10, None).await.unwrap();
        assert_eq!(audit[0].after, Some(serde_json::Value::Null));
        let missing = db.store.tenant(&tid("nope"));
        assert!(matches!(missing.waf().await, Err(StoreError::NotFound { .. })));
        assert!(matches!(missing.set_waf(&Actor::new("u1", None), Some(&w)).await, Err(StoreError::NotFound { .. })));
    }
);

store_test!(
    async fn policy_is_set_audited_and_cleared(db) {
        tenant_with_owner(&db.store, "corp", "pro").await;
        let t = db.store.tenant(&tid("corp"));
        assert_eq!(t.policy().await.unwrap(), None);
        let p = tenantry_config::PolicySpec {
            allowed_models: Some(vec!["gpt-4o-mini".into(), "gpt-4o".into()]),
            allowed_tools: Some(vec![]),
        };
        t.set_policy(&Actor::new("u1", None), Some(&p)).await.unwrap();
        assert_eq!(t.policy().await.unwrap(), Some(p.clone()));
        let audit = t.audit(10, None).await.unwrap();
        assert_eq!(audit[0].action, "tenant.policy");
        assert_eq!(audit[0].after.as_ref().unwrap()["allowed_tools"], serde_json::json!([]));
        t.set_policy(&Actor::new("u1", None), None).await.unwrap();
        assert_eq!(t.policy().await.unwrap(), None);
        t.record_event(&Actor::new("gateway", None), "quota.warning", "tokens_per_minute", &serde_json::json!({"percent": 80}))
            .await
            .unwrap();
        let audit = t.audit(10, None).await.unwrap();
        assert_eq!(audit[0].action, "quota.warning");
        assert_eq!(audit[0].actor, "gateway");
        let missing = db.store.tenant(&tid("nope"));
        assert!(matches!(missing.policy().await, Err(StoreError::NotFound { .. })));
    }
);

store_test!(
    async fn import_adopts_api_tenants_and_releases_dropped_ones(db) {
        let p = db.store.platform();
        let api = tenant_with_owner(&db.store, "corp", "pro").await;
        let file = vec![
            spec("acme", None, vec![route("web", "acme.example.com", &["10.0.0.1:80"])]),
            spec("corp", None, vec![route("web", "corp.example.com", &["10.0.2.1:80"])]),
        ];
        assert_eq!(p.import_file_tenants(&file).await.unwrap(), vec![tid("acme"), tid("corp")]);
        let corp = p.get_tenant(&api).await.unwrap().unwrap();
        assert_eq!(corp.managed_by, "file");
        assert_eq!(corp.name, "Tenant corp", "an adopted tenant keeps its name");
        // No plan in the file: the API tenant keeps its own.
        assert_eq!(db.store.tenant(&api).subscription().await.unwrap().plan, "pro");
        assert_eq!(db.store.tenant(&api).list_users().await.unwrap().len(), 1);

        // acme leaves the file: it stops serving (routes and hosts released) but the tenant
        // is kept, managed by the API again.
        let changed = p.import_file_tenants(&file[1..]).await.unwrap();
        assert_eq!(changed, vec![tid("acme")]);
        let acme = p.get_tenant(&tid("acme")).await.unwrap().unwrap();
        assert_eq!(acme.managed_by, "api");
        assert!(db.store.tenant(&tid("acme")).list_routes().await.unwrap().is_empty());
        // Importing the same file again changes nothing.
        assert!(p.import_file_tenants(&file[1..]).await.unwrap().is_empty());
        // Its host is free for another tenant now.
        let other = tid("other");
        p.create_tenant(&admin(), NewTenant { id: other.clone(), name: "Other".into(), plan: "free".into() }, None)
            .await
            .unwrap();
        db.store
            .tenant(&other)
            .create_route(&admin(), &route("web", "acme.example.com", &["10.0.0.1:80"]))
            .await
            .map(drop)
            .unwrap_or_else(|e| panic!("host not released: {e}"));
    }
);

store_test!(
    async fn import_is_atomic_and_hosts_can_move_between_file_tenants(db) {
        let p = db.store.platform();
        let api = tid("shop");
        p.create_tenant(&admin(), NewTenant { id: api.clone(), name: "Shop".into(), plan: "free".into() }, None)
            .await
            .unwrap();
        db.store.tenant(&api).create_route(&admin(), &route("web", "shop.example.com", &["10.0.0.1:80"])).await.unwrap();

        let file = vec![
            spec("acme", None, vec![route("web", "acme.example.com", &["10.0.0.1:80"])]),
            spec("beta", None, vec![route("web", "shop.example.com", &["10.0.0.1:80"])]),
        ];
        let r = p.import_file_tenants(&file).await;
        assert!(matches!(&r, Err(StoreError::Conflict { kind: "host", .. })), "{r:?}");
        assert!(p.get_tenant(&tid("acme")).await.unwrap().is_none(), "nothing of a failed import remains");
        assert_eq!(p.list_tenants().await.unwrap().len(), 1);

        let r = p.import_file_tenants(&[spec("x", Some("gold"), vec![])]).await;
        assert!(matches!(&r, Err(StoreError::NotFound { kind: "plan", .. })), "{r:?}");
        let r = p.import_file_tenants(&[spec("Bad_Id", None, vec![])]).await;
        assert!(matches!(&r, Err(StoreError::Invalid(_))), "{r:?}");

        // A host moves from acme to beta within one import, whatever the order.
        let first = vec![
            spec("acme", None, vec![route("web", "move.example.com", &["10.0.0.1:80"])]),
            spec("beta", None, vec![]),
        ];
        p.import_file_tenants(&first).await.unwrap();
        let second = vec![
            spec("beta", None, vec![route("web", "move.example.com", &["10.0.0.1:80"])]),
            spec("acme", None, vec![route("web", "acme.example.com", &["10.0.0.1:80"])]),
        ];
        assert_eq!(p.import_file_tenants(&second).await.unwrap(), vec![tid("acme"), tid("beta")]);
        assert_eq!(db.store.tenant(&tid("beta")).list_routes().await.unwrap()[0].host, "move.example.com");
    }
);

store_test!(
    async fn large_import_is_batched_and_loaded_page_by_page(db) {
        // More tenants than one load page (1000) and more rows than one batched statement.
        let p = db.store.platform();
        let n = 2_500;
        let many = |port: u16| -> Vec<TenantSpec> {
            (0..n)
                .map(|i| {
                    let mut t = spec(
                        &format!("t{i:05}"),
                        (i % 3 == 0).then_some("pro"),
                        vec![route("web", &format!("t{i}.example.com"), &["10.0.0.2:80", "10.0.0.1:80"])],
                    );
                    if i % 2 == 1 {
                        t.routes[0].backends[1].address = format!("10.0.0.1:{port}");
                    }
                    if i % 7 == 0 {
                        t.waf = Some(tenantry_config::TenantWafSpec { level: Some("off".into()), mode: None, exclusions: None });
                    }
                    t
                })
                .collect()
        };
        let file = many(80);
        assert_eq!(p.import_file_tenants(&file).await.unwrap().len(), n);
        let mut seen = Vec::new();
        let count = p.load_each(|t| seen.push(t)).await.unwrap();
        assert_eq!((count, seen.len()), (n, n));
        assert!(seen.windows(2).all(|w| w[0].tenant.id < w[1].tenant.id), "in id order");
        for (i, t) in seen.iter().enumerate() {
            assert_eq!(t.tenant.id.as_str(), file[i].id);
            assert_eq!(t.plan, if i % 3 == 0 { "pro" } else { "free" });
            assert_eq!(t.routes, file[i].routes, "routes and backend order of {}", file[i].id);
            assert_eq!(t.waf, file[i].waf);
        }
        let audit = db.store.tenant(&tid("t00007")).audit(10, None).await.unwrap();
        let actions: Vec<&str> = audit.iter().rev().map(|a| a.action.as_str()).collect();
        assert_eq!(actions, ["tenant.create", "tenant.waf_updated", "routes.replace"]);

        // Half the tenants change a backend: exactly those are reported and rewritten.
        let file2 = many(81);
        let changed = p.import_file_tenants(&file2).await.unwrap();
        assert_eq!(changed.len(), n / 2);
        assert!(changed.iter().all(|t| t.as_str()[1..].parse::<usize>().unwrap() % 2 == 1));
        let t1 = p.load_tenant(&tid("t00001")).await.unwrap().unwrap();
        assert_eq!(t1.routes[0].backends[1].address, "10.0.0.1:81");
        assert!(p.import_file_tenants(&file2).await.unwrap().is_empty());

        // A host held by an API tenant fails the whole import, even at the end of a batch.
        let api = tid("shop");
        p.create_tenant(&admin(), NewTenant { id: api.clone(), name: "Shop".into(), plan: "free".into() }, None)
            .await
            .unwrap();
        db.store.tenant(&api).create_route(&admin(), &route("web", "shop.example.com", &["10.0.0.1:80"])).await.unwrap();
        let mut file3 = many(82);
        file3.push(spec("zz-last", None, vec![route("web", "Shop.Example.com", &["10.0.0.1:80"])]));
        let r = p.import_file_tenants(&file3).await;
        assert!(
            matches!(&r, Err(StoreError::Conflict { kind: "host", id }) if id == "shop.example.com"),
            "{r:?}"
        );
        assert!(p.get_tenant(&tid("zz-last")).await.unwrap().is_none(), "nothing of a failed import remains");
        let t1 = p.load_tenant(&tid("t00001")).await.unwrap().unwrap();
        assert_eq!(t1.routes[0].backends[1].address, "10.0.0.1:81");
    }
);
