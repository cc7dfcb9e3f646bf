//! Users and API keys: email uniqueness, roles, last-owner protection, token versions, keys.

use tenantry_domain::Role;
use tenantry_store::{Actor, StoreError, UserPatch};

use crate::support::*;

store_test!(
    async fn emails_are_unique_across_tenants_in_any_case(db) {
        let a = tenant_with_owner(&db.store, "acme", "pro").await;
        let b = tenant_with_owner(&db.store, "beta", "pro").await;
        db.store.tenant(&a).create_user(&admin(), user("u1", "bob@x.test", Role::Member)).await.unwrap();
        let r = db.store.tenant(&b).create_user(&admin(), user("u2", "BOB@X.test", Role::Member)).await;
        assert!(
            matches!(&r, Err(StoreError::Conflict { kind: "user", id }) if id == "bob@x.test"),
            "{r:?}"
        );
        let r = db.store.platform().create_platform_admin(&Actor::system(), user("u3", "Bob@x.test", Role::PlatformAdmin)).await;
        assert!(matches!(&r, Err(StoreError::Conflict { kind: "user", .. })), "{r:?}");
        // Same id, other email: a conflict on the id.
        let r = db.store.tenant(&b).create_user(&admin(), user("u1", "carol@x.test", Role::Member)).await;
        assert!(
            matches!(&r, Err(StoreError::Conflict { kind: "user", id }) if id == "u1"),
            "{r:?}"
        );
        assert_eq!(db.store.tenant(&b).list_users().await.unwrap().len(), 1);
    }
);

store_test!(
    async fn platform_admins_belong_to_no_tenant(db) {
        let p = db.store.platform();
        assert_eq!(p.count_users().await.unwrap(), 0);
        // The role is forced.
        let u = p.create_platform_admin(&Actor::system(), user("root", "Root@Example.com", Role::Viewer)).await.unwrap();
        assert_eq!(u.role, Role::PlatformAdmin);
        assert_eq!(u.tenant, None);
        assert_eq!(p.find_user_by_email("root@example.com").await.unwrap(), Some(u));
        assert_eq!(p.count_users().await.unwrap(), 1);
        // No tenant sees it, and a tenant cannot make one.
        let t = tenant_with_owner(&db.store, "acme", "free").await;
        assert!(db.store.tenant(&t).get_user("root").await.unwrap().is_none());
        let r = db.store.tenant(&t).create_user(&admin(), user("x", "x@acme.test", Role::PlatformAdmin)).await;
        assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
        let patch = UserPatch { role: Some(Role::PlatformAdmin), password_hash: None };
        let r = db.store.tenant(&t).update_user(&admin(), "acme-owner", patch).await;
        assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
    }
);

store_test!(
    async fn keeps_the_last_owner(db) {
        let t = tenant_with_owner(&db.store, "acme", "free").await;
        let s = db.store.tenant(&t);
        let demote = || UserPatch { role: Some(Role::Member), password_hash: None };
        assert!(matches!(s.update_user(&admin(), "acme-owner", demote()).await, Err(StoreError::LastOwner)));
        assert!(matches!(s.delete_user(&admin(), "acme-owner").await, Err(StoreError::LastOwner)));
        s.create_user(&admin(), user("o2", "o2@acme.test", Role::Owner)).await.unwrap();
        let u = s.update_user(&admin(), "acme-owner", demote()).await.unwrap();
        assert_eq!(u.role, Role::Member);
        // o2 is now the only owner.
        assert!(matches!(s.delete_user(&admin(), "o2").await, Err(StoreError::LastOwner)));
        s.delete_user(&admin(), "acme-owner").await.unwrap();
        assert!(s.get_user("acme-owner").await.unwrap().is_none());
        let r = s.delete_user(&admin(), "acme-owner").await;
        assert!(matches!(r, Err(StoreError::NotFound { kind: "user", .. })), "{r:?}");
        // Another tenant's scope cannot see, change or delete this tenant's users.
        let other = tenant_with_owner(&db.store, "beta", "free").await;
        let r = db.store.tenant(&other).delete_user(&admin(), "o2").await;
        assert!(matches!(r, Err(StoreError::NotFound { kind: "user", .. })), "{r:?}");
        assert!(db.store.tenant(&other).get_user("o2").await.unwrap().is_none());
    }
);

store_test!(
    async fn every_user_change_bumps_the_token_version(db) {
        let t = tenant_with_owner(&db.store, "acme", "free").await;
        let s = db.store.tenant(&t);
        let u = s.create_user(&admin(), user("u1", "u1@acme.test", Role::Viewer)).await.unwrap();
        assert_eq!(u.token_version, 0);
        let u = s
            .update_user(&admin(), "u1", UserPatch { role: None, password_hash: Some("new-hash".into()) })
            .await
            .unwrap();
        assert_eq!((u.token_version, u.password_hash.as_str()), (1, "new-hash"));
        let u = s.update_user(&admin(), "u1", UserPatch { role: Some(Role::Member), password_hash: None }).await.unwrap();
        assert_eq!((u.token_version, u.role), (2, Role::Member));
        // No change, no bump.
        let u = s.update_user(&admin(), "u1", UserPatch::default()).await.unwrap();
        assert_eq!(u.token_version, 2);
        let u = s.update_user(&admin(), "u1", UserPatch { role: Some(Role::Member), password_hash: None }).await.unwrap();
        assert_eq!(u.token_version, 2);
        let stored = db.store.platform().get_user("u1").await.unwrap().unwrap();
        assert_eq!(stored, u);
        assert_eq!(stored.password_hash, "new-hash");
        // Debug output never shows the hash.
        assert!(!format!("{stored:?}").contains("new-hash"));
        let r = s.update_user(&admin(), "nobody", UserPatch::default()).await;
        assert!(matches!(r, Err(StoreError::NotFound { kind: "user", .. })), "{r:?}");
    }
);

store_test!(
    async fn api_keys_are_found_by_hash_and_revoked(db) {
        let t = tenant_with_owner(&db.store, "acme", "free").await;
        let s = db.store.tenant(&t);
        let actor = Actor::new("acme-owner", None);
        let k = s.create_api_key(&actor, key("k1", "hash-1", Role::Member)).await.unwrap();
        assert_eq!(k.created_by, "acme-owner");
        assert_eq!((k.revoked_at, k.last_used_at), (None, None));
        assert!(!format!("{:?}", key("k9", "hash-9", Role::Member)).contains("hash-9"));

        let p = db.store.platform();
        let found = p.find_api_key("hash-1").await.unwrap().unwrap();
        assert_eq!(found.id, "k1");
        assert_eq!(found.tenant, t);
        assert_eq!(found.role, Role::Member);
        let used = found.last_used_at.expect("use recorded");
        // Within the minute, the recorded use does not move.
        let again = p.find_api_key("hash-1").await.unwrap().unwrap();
        assert_eq!(again.last_used_at, Some(used));
        assert!(p.find_api_key("hash-unknown").await.unwrap().is_none());

        let dup = s.create_api_key(&actor, key("k2", "hash-1", Role::Viewer)).await;
        assert!(matches!(dup, Err(StoreError::Conflict { kind: "api_key", .. })), "{dup:?}");
        let admin_key = s.create_api_key(&actor, key("k3", "hash-3", Role::PlatformAdmin)).await;
        assert!(matches!(admin_key, Err(StoreError::Invalid(_))), "{admin_key:?}");

        // Another tenant cannot revoke it.
        let other = tenant_with_owner(&db.store, "beta", "free").await;
        let r = db.store.tenant(&other).revoke_api_key(&actor, "k1").await;
        assert!(matches!(r, Err(StoreError::NotFound { kind: "api_key", .. })), "{r:?}");
        assert!(db.store.tenant(&other).list_api_keys().await.unwrap().is_empty());

        let revoked = s.revoke_api_key(&actor, "k1").await.unwrap();
        let at = revoked.revoked_at.expect("revoked");
        // Idempotent.
        assert_eq!(s.revoke_api_key(&actor, "k1").await.unwrap().revoked_at, Some(at));
        // Still found (the caller refuses it), with its revocation.
        assert_eq!(p.find_api_key("hash-1").await.unwrap().unwrap().revoked_at, Some(at));
        let keys = s.list_api_keys().await.unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].revoked_at, Some(at));
    }
);
