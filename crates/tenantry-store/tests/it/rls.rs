//! PostgreSQL row-level security: the database itself keeps tenants apart, whatever SQL runs
//! inside a tenant's scope.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tenantry_domain::Role;
use tenantry_store::StoreError;

use crate::support::*;

/// Two tenants with users, keys and routes.
async fn two_tenants(db: &TestDb) {
    for (t, n) in [("acme", 2), ("beta", 3)] {
        let id = tenant_with_owner(&db.store, t, "pro").await;
        let s = db.store.tenant(&id);
        for i in 0..n {
            s.create_route(
                &admin(),
                &route(
                    &format!("r{i}"),
                    &format!("r{i}.{t}.example.com"),
                    &["10.0.0.1:80"],
                ),
            )
            .await
            .unwrap();
        }
        s.create_user(
            &admin(),
            user(&format!("{t}-m"), &format!("m@{t}.test"), Role::Member),
        )
        .await
        .unwrap();
        s.create_api_key(
            &admin(),
            key(&format!("{t}-k"), &format!("{t}-hash"), Role::Viewer),
        )
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rls_confines_raw_sql_to_the_scope_tenant() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    two_tenants(&db).await;
    let a = db.store.tenant(&tid("acme"));
    let b = db.store.tenant(&tid("beta"));

    // The store queries as the service role, even though it logged in as a superuser.
    assert_eq!(
        a.raw_count("SELECT 1 WHERE current_user = 'tenantry_app'")
            .await
            .unwrap(),
        1
    );

    // No WHERE clause: the policies alone filter.
    for (table, na, nb) in [
        ("routes", 2, 3),
        ("backends", 2, 3),
        ("users", 2, 2),
        ("api_keys", 1, 1),
        ("tenants", 1, 1),
        ("subscriptions", 1, 1),
    ] {
        let sql = format!("SELECT * FROM {table}");
        assert_eq!(a.raw_count(&sql).await.unwrap(), na, "acme {table}");
        assert_eq!(b.raw_count(&sql).await.unwrap(), nb, "beta {table}");
    }
    // The audit log: only the tenant's own rows, not platform rows.
    let audit = a.raw_count("SELECT * FROM audit_log").await.unwrap();
    assert_eq!(audit, a.audit(1000, None).await.unwrap().len() as i64);
    assert_eq!(
        a.raw_count("SELECT * FROM audit_log WHERE tenant_id IS NULL OR tenant_id <> 'acme'")
            .await
            .unwrap(),
        0
    );
    // The host registry is readable by all (it holds no secret).
    assert_eq!(a.raw_count("SELECT * FROM domains").await.unwrap(), 5);

    // Writes to another tenant's rows: invisible to UPDATE and DELETE, refused to INSERT.
    assert_eq!(
        a.raw_count("UPDATE routes SET host = 'x.example.com' WHERE tenant_id = 'beta'")
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        a.raw_count("DELETE FROM users").await.unwrap(),
        2,
        "only acme's users (rolled back)"
    );
    assert_eq!(
        a.raw_count("DELETE FROM domains WHERE tenant_id = 'beta'")
            .await
            .unwrap(),
        0
    );
    let err = a
        .raw_count(
            "INSERT INTO routes (tenant_id, id, host, created_at, updated_at) \
             VALUES ('beta', 'evil', 'evil.example.com', 0, 0)",
        )
        .await
        .unwrap_err();
    match &err {
        StoreError::Database(sqlx::Error::Database(d)) => {
            assert!(
                d.message().contains("row-level security"),
                "{}",
                d.message()
            )
        }
        other => panic!("expected a policy violation, got {other:?}"),
    }
    let err = a
        .raw_count("INSERT INTO domains (host, tenant_id) VALUES ('grab.example.com', 'beta')")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
    // raw_count rolled everything back.
    assert_eq!(b.list_routes().await.unwrap().len(), 3);
    assert_eq!(a.list_users().await.unwrap().len(), 2);

    // A connection as the service role with no tenant setting sees nothing at all; as the
    // superuser (which bypasses policies, hence the store's SET ROLE) it sees everything.
    let url = db.pg_url().unwrap().to_owned();
    let mut conn = PgConnection::connect_with(&PgConnectOptions::from_str(&url).unwrap())
        .await
        .unwrap();
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql);
    assert_eq!(
        count("SELECT COUNT(*) FROM routes")
            .fetch_one(&mut conn)
            .await
            .unwrap(),
        5
    );
    sqlx::query("SET ROLE tenantry_app")
        .execute(&mut conn)
        .await
        .unwrap();
    for sql in [
        "SELECT COUNT(*) FROM routes",
        "SELECT COUNT(*) FROM backends",
        "SELECT COUNT(*) FROM users",
        "SELECT COUNT(*) FROM api_keys",
        "SELECT COUNT(*) FROM tenants",
        "SELECT COUNT(*) FROM subscriptions",
        "SELECT COUNT(*) FROM audit_log",
    ] {
        assert_eq!(count(sql).fetch_one(&mut conn).await.unwrap(), 0, "{sql}");
    }
    // Nor may it read the migration history.
    assert!(
        count("SELECT COUNT(*) FROM _sqlx_migrations")
            .fetch_one(&mut conn)
            .await
            .is_err()
    );
    conn.close().await.unwrap();
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_on_one_database_open_concurrently() {
    // Migrations and plan seeding tolerate a second process starting at the same time.
    let Some(pg) = PgTestDb::create().await else {
        return;
    };
    let url = pg.url().to_owned();
    let (x, y) = tokio::join!(
        tenantry_store::Store::open(&url),
        tenantry_store::Store::open(&url)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.platform().list_plans().await.unwrap().len(), 3);
    assert_eq!(y.platform().list_plans().await.unwrap().len(), 3);
    x.close().await;
    y.close().await;
}
