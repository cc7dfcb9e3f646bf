//! Test harness: a fresh store per test on SQLite (a temp dir) or PostgreSQL (a uniquely named
//! database, dropped afterwards), the `store_test!` macro that runs a body on both, and small
//! builders.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tenantry_config::{BackendSpec, HealthCheckSpec, RouteSpec, TlsSpec};
use tenantry_domain::{Role, TenantId};
use tenantry_store::{Actor, NewApiKey, NewTenant, NewUser, Store};
use tenantry_testkit::TempDir;

/// The server the PostgreSQL tests use; its `test` database is where fresh ones are created from.
const PG_HOST: &str = "127.0.0.1:5432";

fn pg_admin_url() -> String {
    std::env::var("TENANTRY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| format!("postgres://root@{PG_HOST}/test"))
}

async fn pg_admin() -> Option<PgConnection> {
    let opts = PgConnectOptions::from_str(&pg_admin_url()).ok()?;
    match tokio::time::timeout(Duration::from_secs(3), PgConnection::connect_with(&opts)).await {
        Ok(Ok(c)) => Some(c),
        _ => None,
    }
}

/// A database created for one test and dropped (with its connections) when this is dropped.
#[derive(Debug)]
pub struct PgTestDb {
    name: String,
    url: String,
}

impl PgTestDb {
    /// A fresh, uniquely named database; `None` (with a printed notice) if PostgreSQL is not
    /// reachable, a panic instead if `TENANTRY_REQUIRE_SERVICES=1`.
    pub async fn create() -> Option<PgTestDb> {
        static N: AtomicU64 = AtomicU64::new(0);
        let Some(mut admin) = pg_admin().await else {
            tenantry_testkit::skip_or_fail(&format!("PostgreSQL not reachable at {PG_HOST}"));
            return None;
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "tenantry_t_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        let _ = admin.close().await;
        let mut url = url_without_db(&pg_admin_url());
        url.push_str(&name);
        Some(PgTestDb { name, url })
    }

    /// Its URL (as the server's superuser login).
    pub fn url(&self) -> &str {
        &self.url
    }
}

fn url_without_db(url: &str) -> String {
    let (base, _) = url.rsplit_once('/').unwrap_or((url, ""));
    format!("{base}/")
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Some(mut admin) = pg_admin().await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    if let Err(e) = sqlx::query(AssertSqlSafe(sql)).execute(&mut admin).await {
                        eprintln!("cannot drop test database {name}: {e}");
                    }
                    let _ = admin.close().await;
                }
            });
        })
        .join();
        if done.is_err() {
            eprintln!("dropping test database {} panicked", self.name);
        }
    }
}

/// A store for one test, and what must be cleaned up after it.
#[derive(Debug)]
pub struct TestDb {
    pub store: Store,
    _dir: Option<TempDir>,
    pg: Option<PgTestDb>,
}

impl TestDb {
    /// A store in a fresh temp dir.
    pub async fn sqlite() -> TestDb {
        let dir = TempDir::new();
        let store = Store::open_in_dir(&dir.path().join("db"))
            .await
            .unwrap_or_else(|e| panic!("cannot open sqlite store: {e:?}"));
        TestDb {
            store,
            _dir: Some(dir),
            pg: None,
        }
    }

    /// A store on a fresh PostgreSQL database, or `None` when PostgreSQL is absent.
    pub async fn postgres() -> Option<TestDb> {
        let pg = PgTestDb::create().await?;
        let store = Store::open(pg.url())
            .await
            .unwrap_or_else(|e| panic!("cannot open postgres store: {e:?}"));
        Some(TestDb {
            store,
            _dir: None,
            pg: Some(pg),
        })
    }

    /// The PostgreSQL URL, if this is a PostgreSQL store.
    pub fn pg_url(&self) -> Option<&str> {
        self.pg.as_ref().map(PgTestDb::url)
    }

    /// Closes the store, then (on drop) removes its database.
    pub async fn finish(self) {
        self.store.close().await;
    }
}

/// Runs the body once on SQLite and once on PostgreSQL (skipped, with a notice, if PostgreSQL
/// is absent), each on a fresh store bound to `$db`.
macro_rules! store_test {
    ($(#[$meta:meta])* async fn $name:ident($db:ident) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let $db = $crate::support::TestDb::sqlite().await;
                $body
                $db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some($db) = $crate::support::TestDb::postgres().await else {
                    return;
                };
                $body
                $db.finish().await;
            }
        }
    };
}
pub(crate) use store_test;

// ---- builders -----------------------------------------------------------------------------

pub fn tid(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

pub fn admin() -> Actor {
    Actor::new("admin-1", Some("192.0.2.1".into()))
}

pub fn user(id: &str, email: &str, role: Role) -> NewUser {
    NewUser {
        id: id.into(),
        email: email.into(),
        password_hash: format!("$argon2id$secret-hash-of-{id}"),
        role,
    }
}

pub fn key(id: &str, hash: &str, role: Role) -> NewApiKey {
    NewApiKey {
        id: id.into(),
        name: format!("key {id}"),
        prefix: format!("tk_{id}"),
        hash: hash.into(),
        role,
    }
}

pub fn route(id: &str, host: &str, backends: &[&str]) -> RouteSpec {
    RouteSpec {
        id: id.into(),
        host: host.into(),
        path_prefix: None,
        algorithm: None,
        kind: None,
        ratelimit: None,
        waf: None,
        tls: None,
        health_check: None,
        backends: backends
            .iter()
            .map(|a| BackendSpec {
                address: (*a).into(),
                weight: None,
                state: None,
            })
            .collect(),
    }
}

/// A route using every optional field.
pub fn full_route(id: &str, host: &str) -> RouteSpec {
    RouteSpec {
        id: id.into(),
        host: host.into(),
        path_prefix: Some("/api".into()),
        algorithm: Some("weighted_round_robin".into()),
        kind: Some("llm".into()),
        ratelimit: Some(tenantry_config::RateLimitSpec {
            requests_per_minute: 600,
            burst: Some(50),
            key: Some("client_ip".into()),
        }),
        waf: Some(tenantry_config::RouteWafSpec {
            level: Some("strict".into()),
            mode: Some("detect".into()),
        }),
        tls: Some(Box::new(TlsSpec {
            cert: "certs/a.pem".into(),
            key: "certs/a.key".into(),
        })),
        health_check: Some(Box::new(HealthCheckSpec {
            path: Some("/healthz".into()),
            interval: Some("2s".into()),
            timeout: None,
            healthy_threshold: Some(2),
            unhealthy_threshold: None,
            expect_status: Some(204),
        })),
        backends: vec![
            BackendSpec {
                address: "10.0.0.2:80".into(),
                weight: Some(3),
                state: Some("active".into()),
            },
            BackendSpec {
                address: "10.0.0.1:80".into(),
                weight: None,
                state: None,
            },
        ],
    }
}

/// Creates tenant `id` on `plan` with an owner `owner@<id>.test`.
pub async fn tenant_with_owner(store: &Store, id: &str, plan: &str) -> TenantId {
    let t = tid(id);
    store
        .platform()
        .create_tenant(
            &admin(),
            NewTenant {
                id: t.clone(),
                name: format!("Tenant {id}"),
                plan: plan.into(),
            },
            Some(user(
                &format!("{id}-owner"),
                &format!("owner@{id}.test"),
                Role::Owner,
            )),
        )
        .await
        .unwrap();
    t
}
