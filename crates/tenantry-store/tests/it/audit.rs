//! The audit log and the export: every write leaves a row, no secret leaves the store.

use tenantry_domain::Role;
use tenantry_store::{Actor, UserPatch};

use crate::support::*;

store_test!(
    async fn writes_are_audited_without_secrets(db) {
        let t = tenant_with_owner(&db.store, "acme", "pro").await;
        let s = db.store.tenant(&t);
        let actor = Actor::new("acme-owner", Some("198.51.100.7".into()));
        s.create_user(&actor, user("u2", "u2@acme.test", Role::Member)).await.unwrap();
        s.update_user(&actor, "u2", UserPatch { role: Some(Role::Viewer), password_hash: Some("rotated-secret".into()) }).await.unwrap();
        s.create_api_key(&actor, key("k1", "key-hash-secret", Role::Viewer)).await.unwrap();
        s.revoke_api_key(&actor, "k1").await.unwrap();
        s.create_route(&actor, &route("web", "acme.example.com", &["10.0.0.1:80"])).await.unwrap();
        s.replace_route(&actor, &route("web", "acme.example.com", &["10.0.0.2:80"])).await.unwrap();
        s.set_backend_state(&actor, "web", "10.0.0.2:80", "drain").await.unwrap();
        s.set_plan(&actor, "enterprise").await.unwrap();
        s.rename(&actor, "Acme Inc").await.unwrap();
        s.delete_route(&actor, "web").await.unwrap();

        let log = s.audit(100, None).await.unwrap();
        let actions: Vec<_> = log.iter().rev().map(|a| a.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "tenant.create", "user.create", "user.create", "user.update", "api_key.create",
                "api_key.revoke", "route.create", "route.update", "backend.update",
                "subscription.update", "tenant.update", "route.delete",
            ]
        );
        assert!(log.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        let update = log.iter().find(|a| a.action == "user.update").unwrap();
        assert_eq!(update.actor, "acme-owner");
        assert_eq!(update.ip.as_deref(), Some("198.51.100.7"));
        assert_eq!(update.tenant, Some(t.clone()));
        assert_eq!(update.target, "u2");
        assert_eq!(update.before.as_ref().unwrap()["role"], "member");
        assert_eq!(update.after.as_ref().unwrap()["role"], "viewer");
        assert_eq!(update.after.as_ref().unwrap()["password_changed"], true);
        let route_update = log.iter().find(|a| a.action == "route.update").unwrap();
        assert_eq!(route_update.before.as_ref().unwrap()["backends"][0]["address"], "10.0.0.1:80");
        assert_eq!(route_update.after.as_ref().unwrap()["backends"][0]["address"], "10.0.0.2:80");

        let text = format!("{log:?}");
        for secret in ["rotated-secret", "key-hash-secret", "secret-hash-of"] {
            assert!(!text.contains(secret), "{secret} leaked into the audit log");
        }

        // Paging.
        let page1 = s.audit(5, None).await.unwrap();
        let page2 = s.audit(5, Some(page1[4].id)).await.unwrap();
        assert_eq!(page1.len(), 5);
        assert!(page2[0].id < page1[4].id);
        assert_eq!([page1, page2].concat(), log[..10].to_vec());

        // Another tenant sees none of it; the platform sees it all, plus plan seeding.
        let other = tenant_with_owner(&db.store, "beta", "free").await;
        assert!(db.store.tenant(&other).audit(100, None).await.unwrap().iter().all(|a| a.tenant == Some(other.clone())));
        let all = db.store.platform().audit(1000, None).await.unwrap();
        assert!(all.iter().any(|a| a.action == "plan.create" && a.actor == "system" && a.tenant.is_none()));
        assert_eq!(all.iter().filter(|a| a.tenant == Some(t.clone())).count(), log.len());
    }
);

store_test!(
    async fn export_holds_everything_but_hashes(db) {
        let t = tenant_with_owner(&db.store, "acme", "pro").await;
        let s = db.store.tenant(&t);
        s.create_user(&admin(), user("u2", "u2@acme.test", Role::Member)).await.unwrap();
        s.create_api_key(&admin(), key("k1", "key-hash-secret", Role::Viewer)).await.unwrap();
        s.create_route(&admin(), &full_route("web", "acme.example.com")).await.unwrap();
        let e = s.export().await.unwrap();
        assert_eq!(e["tenant"]["id"], "acme");
        assert_eq!(e["tenant"]["name"], "Tenant acme");
        assert_eq!(e["subscription"]["plan"], "pro");
        assert_eq!(e["subscription"]["limits"]["max_users"], 10);
        let emails: Vec<_> = e["users"].as_array().unwrap().iter().map(|u| u["email"].as_str().unwrap()).collect();
        assert_eq!(emails, ["owner@acme.test", "u2@acme.test"]);
        assert_eq!(e["api_keys"][0]["id"], "k1");
        assert_eq!(e["api_keys"][0]["prefix"], "tk_k1");
        assert_eq!(e["routes"][0]["id"], "web");
        assert_eq!(e["routes"][0]["tls"]["cert"], "certs/a.pem");
        assert_eq!(e["audit"].as_array().unwrap().len(), 5);
        let text = e.to_string();
        for secret in ["key-hash-secret", "secret-hash-of", "password_hash", "\"hash\""] {
            assert!(!text.contains(secret), "{secret} in the export");
        }
        let missing = db.store.tenant(&tid("nope")).export().await;
        assert!(matches!(missing, Err(tenantry_store::StoreError::NotFound { kind: "tenant", .. })));
    }
);
