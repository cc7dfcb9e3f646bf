//! Tenantry's control-plane store: tenants, plans, subscriptions, users, API keys, routes, the
//! host registry and the audit log, on SQLite (the embedded default) or PostgreSQL, behind one
//! [`Store`].
//!
//! Isolation is structural: tenant data is reached only through [`Store::tenant`], whose
//! [`TenantScope`] filters every query by its tenant, or through [`Store::platform`] for
//! platform-wide work. On PostgreSQL, row-level security enforces the same boundary in the
//! database: each transaction of a scope sets `app.tenant_id` (or `app.platform`), and the
//! service queries as the `tenantry_app` role, which the policies bind.
//!
//! Every write is one transaction that appends its audit row. Writes bounded by plan limits
//! first touch the tenant's row (`UPDATE tenants SET updated_at …`), which serialises them per
//! tenant on both backends, then count, then insert.

mod codec;
mod error;
mod platform;
mod records;
mod sql;
mod tenant;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{AnyConnection, AnyPool};
use tenantry_domain::TenantId;

pub use error::StoreError;
pub use platform::PlatformStore;
pub use records::{
    Actor, ApiKeyRecord, AuditEntry, NewApiKey, NewTenant, NewUser, PlanRecord, Subscription,
    TenantRecord, TenantState, TenantStatus, UserPatch, UserRecord,
};
pub use tenant::TenantScope;

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// The role the service queries as on PostgreSQL; row-level security policies bind it.
pub const APP_ROLE: &str = "tenantry_app";

/// SQLite waits this long for another writer before failing with "database is locked".
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// A SQLite file (`sqlite://path?mode=rwc`).
    Sqlite,
    /// PostgreSQL (`postgres://…`).
    Postgres,
}

impl Backend {
    /// The backend a database URL names.
    pub fn from_url(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("sqlite:") {
            if url.contains(":memory:") || url.contains("mode=memory") {
                return Err(StoreError::Invalid(
                    "in-memory sqlite is not supported (each pooled connection would see its own \
                     database): use a file, e.g. Store::open_in_dir"
                        .into(),
                ));
            }
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::Invalid(
                "database url must start with sqlite: or postgres://".into(),
            ))
        }
    }
}

/// The store: a cheap-to-clone handle on a connection pool.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: it is not kept, let alone printed.
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Which rows a transaction may see on PostgreSQL.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope<'a> {
    Tenant(&'a TenantId),
    Platform,
}

pub(crate) type Tx = sqlx::Transaction<'static, sqlx::Any>;

impl Store {
    /// Connects to `url` (`sqlite://path?mode=rwc` or `postgres://…`), runs the migrations and
    /// seeds the default plans into an empty plan table.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let backend = Backend::from_url(url)?;
        Self::migrate(url).await?;
        sqlx::any::install_default_drivers();
        let opts = AnyConnectOptions::from_str(url)?;
        let max = match backend {
            Backend::Sqlite => 4,
            Backend::Postgres => 10,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .after_connect(move |conn, _meta| Box::pin(prepare_connection(conn, backend)))
            .connect_with(opts)
            .await?;
        let store = Store { pool, backend };
        store.platform().seed_default_plans().await?;
        Ok(store)
    }

    /// Opens (creating if needed) `dir/tenantry.db`, creating `dir` too.
    pub async fn open_in_dir(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Invalid(format!("cannot create directory {}: {e}", dir.display()))
        })?;
        let path = dir.join("tenantry.db");
        Self::open(&format!("sqlite://{}?mode=rwc", path.display())).await
    }

    /// Runs the migrations on `url` and nothing else (`tenantry migrate`). On SQLite it also
    /// creates the file and switches it to WAL mode (a persistent property of the file).
    pub async fn migrate(url: &str) -> Result<(), StoreError> {
        match Backend::from_url(url)? {
            Backend::Sqlite => {
                let opts = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .foreign_keys(true)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT);
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(opts)
                    .await?;
                let res = SQLITE_MIGRATOR.run(&pool).await;
                pool.close().await;
                res.map_err(|e| StoreError::Database(e.into()))
            }
            Backend::Postgres => {
                // As the login role, without `SET ROLE`: migrations create tables and policies.
                let opts = PgConnectOptions::from_str(url)?;
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(opts)
                    .await?;
                let res = POSTGRES_MIGRATOR.run(&pool).await;
                pool.close().await;
                res.map_err(|e| StoreError::Database(e.into()))
            }
        }
    }

    /// The database behind this store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Platform-wide operations (tenant lifecycle, plans, lookups across tenants).
    pub fn platform(&self) -> PlatformStore<'_> {
        PlatformStore::new(self)
    }

    /// Operations on one tenant's data; every query filters by `id`.
    pub fn tenant<'a>(&'a self, id: &TenantId) -> TenantScope<'a> {
        TenantScope::new(self, id.clone())
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a transaction for `scope`. On SQLite a write transaction takes the write lock at
    /// once (`BEGIN IMMEDIATE`), so it cannot fail later on a stale read snapshot; on
    /// PostgreSQL the scope's setting is applied for the transaction only (`set_config(…, true)`
    /// is `SET LOCAL`).
    pub(crate) async fn begin(&self, scope: Scope<'_>, write: bool) -> Result<Tx, StoreError> {
        let mut tx = match (self.backend, write) {
            (Backend::Sqlite, true) => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            _ => self.pool.begin().await?,
        };
        if self.backend == Backend::Postgres {
            match scope {
                Scope::Tenant(id) => {
                    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
                        .bind(id.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
                Scope::Platform => {
                    sqlx::query("SELECT set_config('app.platform', 'on', true)")
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        Ok(tx)
    }
}

/// Per-connection setup. PostgreSQL: if the login role could bypass row-level security
/// (superuser or BYPASSRLS), drop to the service role so that the policies hold. SQLite: the
/// pragmas that are per connection.
async fn prepare_connection(conn: &mut AnyConnection, backend: Backend) -> Result<(), sqlx::Error> {
    match backend {
        Backend::Postgres => {
            let bypass: i64 = sqlx::query_scalar(
                "SELECT CAST(CASE WHEN rolsuper OR rolbypassrls THEN 1 ELSE 0 END AS BIGINT) \
                 FROM pg_roles WHERE rolname = current_user",
            )
            .fetch_optional(&mut *conn)
            .await?
            .unwrap_or(0);
            if bypass != 0 {
                sqlx::query("SET ROLE tenantry_app")
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Backend::Sqlite => {
            sqlx::query("PRAGMA foreign_keys = ON")
                .execute(&mut *conn)
                .await?;
            sqlx::query("PRAGMA busy_timeout = 5000")
                .execute(&mut *conn)
                .await?;
            sqlx::query("PRAGMA synchronous = NORMAL")
                .execute(&mut *conn)
                .await?;
            // SQLite's default page cache is 2 MiB per connection, filled by start-up's
            // whole-store read and never given back: 8 MiB over the pool, for pages the
            // kernel caches anyway. Reads here are one-off (start-up, reloads) or small (the
            // API), so 512 KiB per connection costs no speed that matters.
            sqlx::query("PRAGMA cache_size = -512")
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}
