//! The admin API against the real binary, on SQLite and on PostgreSQL: helpers (a JSON
//! client, store backends with a fresh PostgreSQL database per test, `store_test!`) and the
//! test modules.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

pub use super::*;

/// Runs one async body on SQLite and on PostgreSQL: `store_test!(name, |backend| async {…})`
/// defines the tests `name::sqlite` and `name::postgres`. The PostgreSQL variant gets a fresh
/// database (dropped afterwards) and skips with a notice when no server is reachable, unless
/// `TENANTRY_REQUIRE_SERVICES=1`.
macro_rules! store_test {
    ($name:ident, |$backend:ident| async $(move)? $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($backend: crate::api::Backend) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run(crate::api::Backend::sqlite()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(b) = crate::api::Backend::postgres() {
                    run(b).await;
                }
            }
        }
    };
}

mod audit;
mod crash;
mod flow;
mod input;
mod limits;
mod login;
mod matrix;
mod openapi;
mod policy;
pub(crate) mod tokens;
mod waf;

/// Password of every user the tests create (long enough for the policy).
pub const PASSWORD: &str = "tenant-password-1234";

// ---------------------------------------------------------------------------------------
// PostgreSQL

const PG_HOST: &str = "127.0.0.1";
const PG_PORT: &str = "5432";
const PG_USER: &str = "root";
const PG_ADMIN_DB: &str = "test";

fn psql(sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([
            "-h",
            PG_HOST,
            "-p",
            PG_PORT,
            "-U",
            PG_USER,
            "-d",
            PG_ADMIN_DB,
        ])
        .args(["-v", "ON_ERROR_STOP=1", "-Atqc", sql])
        .env("PGCONNECT_TIMEOUT", "3")
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Whether PostgreSQL is reachable. When it is not, prints a notice and returns false, or
/// panics when `TENANTRY_REQUIRE_SERVICES=1` (CI).
pub fn require_postgres() -> bool {
    match psql("SELECT 1") {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("TENANTRY_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
                panic!(
                    "PostgreSQL is required (TENANTRY_REQUIRE_SERVICES=1) but not reachable: {e}"
                );
            }
            eprintln!("skipped: PostgreSQL not reachable ({})", e.trim());
            false
        }
    }
}

/// A fresh database, dropped (with its connections) when this is dropped, even if the test
/// panicked.
#[derive(Debug)]
pub struct PgDatabase {
    name: String,
    /// `postgres://root@127.0.0.1:5432/<name>`.
    pub url: String,
}

impl PgDatabase {
    /// Creates `tenantry_it_<pid>_<n>_<nanos>`.
    pub fn create() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "tenantry_it_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        psql(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
        let url = format!("postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}");
        Self { name, url }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Err(e) = psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )) {
            eprintln!("warning: cannot drop database {}: {e}", self.name);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Store backends and servers

/// Which store the binary runs on.
#[derive(Debug)]
pub enum Backend {
    /// The embedded SQLite file in the instance's data directory.
    Sqlite,
    /// A fresh PostgreSQL database.
    Postgres(PgDatabase),
}

/// The YAML every API test starts with: ephemeral listeners, no file tenants.
pub const YAML: &str =
    "listen: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0 }\nshutdown: { drain: 200ms, grace: 5s }\n";

impl Backend {
    /// SQLite.
    pub fn sqlite() -> Self {
        Backend::Sqlite
    }

    /// PostgreSQL with a fresh database, or `None` (after a notice) if it is not reachable.
    pub fn postgres() -> Option<Self> {
        require_postgres().then(|| Backend::Postgres(PgDatabase::create()))
    }

    /// `sqlite` or `postgres`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Extra `serve` arguments selecting the store.
    pub fn args(&self) -> Vec<String> {
        match self {
            Backend::Sqlite => Vec::new(),
            Backend::Postgres(db) => vec!["--store".to_owned(), db.url.clone()],
        }
    }

    /// Starts the binary on this store in a fresh folder.
    pub async fn start(&self) -> Server {
        self.start_in(Arc::new(TempDir::new())).await
    }

    /// Starts the binary on this store in `dir` (the same folder again after a crash: same
    /// SQLite file and JWT secret).
    pub async fn start_in(&self, dir: Arc<TempDir>) -> Server {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let t = Tenantry::start_in(bin(), YAML, dir, &args).await;
        let admin = t.admin.expect("admin listener");
        Server { t, admin }
    }
}

/// A running instance with its admin API address.
#[derive(Debug)]
pub struct Server {
    /// The process.
    pub t: Tenantry,
    /// The admin listener (where `/api` lives).
    pub admin: SocketAddr,
}

impl Server {
    /// An anonymous client of the API.
    pub fn api(&self) -> Api {
        Api::new(self.admin)
    }

    /// An anonymous client whose requests come from `127.0.<n/250>.<n%250+2>` (the throttle
    /// counts per client address).
    pub fn api_from(&self, n: u32) -> Api {
        Api::from_ip(self.admin, client_ip(n))
    }

    /// Logs in and returns a client carrying the token.
    pub async fn login(&self, email: &str, password: &str) -> Api {
        let r = self
            .api()
            .post(
                "/api/auth/login",
                json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(r.0, 200, "login {email}: {}", r.1);
        self.api().token(r.1["access_token"].as_str().unwrap())
    }

    /// The bootstrapped platform admin.
    pub async fn admin(&self) -> Api {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    /// Platform admin creates tenant `id` on `plan` with owner `owner@<id>.test`; returns the
    /// owner's client.
    pub async fn tenant(&self, admin: &Api, id: &str, plan: &str) -> Api {
        let email = format!("owner@{id}.test");
        let r = admin
            .post(
                "/api/tenants",
                json!({"tenant_id": id, "name": id, "plan": plan,
                       "owner": {"email": email, "password": PASSWORD}}),
            )
            .await;
        assert_eq!(r.0, 201, "create tenant {id}: {}", r.1);
        self.login(&email, PASSWORD).await
    }

    /// `GET` through the proxy.
    pub async fn proxy(&self, host: &str, path: &str) -> Reply {
        HttpClient::new()
            .get(self.t.http, host, path)
            .await
            .unwrap_or_else(|e| panic!("proxy request {host}{path} failed: {e}"))
    }

    /// The HS256 secret of the instance (`<data-dir>/jwt-secret`, hex).
    pub fn jwt_secret(&self) -> Vec<u8> {
        let p = self.t.dir().join("data").join("jwt-secret");
        let text = std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
        hex_decode(text.trim())
    }
}

/// `127.0.<n/250>.<n%250+2>`: distinct loopback client addresses.
pub fn client_ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        u8::try_from(n / 250).expect("small n"),
        u8::try_from(n % 250 + 2).expect("small n"),
    ))
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// JSON client

/// A JSON client of the admin API, optionally with a bearer token.
#[derive(Clone, Debug)]
pub struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    /// The admin listener.
    pub addr: SocketAddr,
    /// Sent as `Authorization: Bearer …`.
    pub token: Option<String>,
    local: Option<IpAddr>,
}

/// Status and JSON body (`Null` if the body is not JSON).
pub type Res = (StatusCode, Value);

impl Api {
    /// An anonymous client.
    pub fn new(addr: SocketAddr) -> Self {
        Self::build(addr, None)
    }

    /// An anonymous client whose connections come from `ip`.
    pub fn from_ip(addr: SocketAddr, ip: IpAddr) -> Self {
        Self::build(addr, Some(ip))
    }

    fn build(addr: SocketAddr, local: Option<IpAddr>) -> Self {
        let mut c = HttpConnector::new();
        c.set_nodelay(true);
        c.set_local_address(local);
        Self {
            client: Client::builder(TokioExecutor::new()).build(c),
            addr,
            token: None,
            local,
        }
    }

    /// The same client with its own connection pool. The server may close a connection
    /// after refusing a body it did not read (413); a fresh pool keeps that from racing with
    /// the next request.
    pub fn fresh(&self) -> Api {
        Api {
            token: self.token.clone(),
            ..Self::build(self.addr, self.local)
        }
    }

    /// The same client with a token (JWT or API key).
    pub fn token(&self, token: &str) -> Api {
        Api {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    /// Any request; adds the bearer token unless `headers` has an Authorization header.
    /// Panics if the request fails (see [`Api::try_raw`]).
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        self.try_raw(method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Like [`Api::raw`], with connection errors as `Err`.
    pub async fn try_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Reply, String> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("host", "localhost");
        let has_auth = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
        if let (Some(t), false) = (&self.token, has_auth) {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body.into())).map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// A request with an optional JSON body; answers status and JSON.
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Res {
        let r = match body {
            Some(v) => {
                self.raw(
                    method,
                    path,
                    &[("content-type", "application/json")],
                    serde_json::to_vec(v).expect("json"),
                )
                .await
            }
            None => self.raw(method, path, &[], Bytes::new()).await,
        };
        (r.status, r.json())
    }

    /// `GET`.
    pub async fn get(&self, path: &str) -> Res {
        self.call("GET", path, None).await
    }

    /// `POST` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Res {
        self.call("POST", path, Some(&body)).await
    }

    /// `POST` without a body (suspend, drain…).
    pub async fn post_empty(&self, path: &str) -> Res {
        self.call("POST", path, None).await
    }

    /// `PUT` with a JSON body.
    pub async fn put(&self, path: &str, body: Value) -> Res {
        self.call("PUT", path, Some(&body)).await
    }

    /// `PATCH` with a JSON body.
    pub async fn patch(&self, path: &str, body: Value) -> Res {
        self.call("PATCH", path, Some(&body)).await
    }

    /// `DELETE`.
    pub async fn delete(&self, path: &str) -> Res {
        self.call("DELETE", path, None).await
    }

    /// `GET` that must answer 200; the body.
    pub async fn must_get(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.0, 200, "GET {path}: {}", r.1);
        r.1
    }

    /// `GET /api/me`'s `id`.
    pub async fn my_id(&self) -> String {
        let me = self.must_get("/api/me").await;
        me["id"].as_str().expect("id").to_owned()
    }

    /// Owner adds a user with `role`; returns its id.
    pub async fn add_user(&self, tenant: &str, email: &str, role: &str) -> String {
        let r = self
            .post(
                &format!("/api/tenants/{tenant}/users"),
                json!({"email": email, "password": PASSWORD, "role": role}),
            )
            .await;
        assert_eq!(r.0, 201, "add user {email}: {}", r.1);
        r.1["id"].as_str().expect("id").to_owned()
    }

    /// Owner creates an API key with `role`; returns (id, secret).
    pub async fn add_key(&self, tenant: &str, name: &str, role: &str) -> (String, String) {
        let r = self
            .post(
                &format!("/api/tenants/{tenant}/api-keys"),
                json!({"name": name, "role": role}),
            )
            .await;
        assert_eq!(r.0, 201, "add key {name}: {}", r.1);
        (
            r.1["id"].as_str().expect("id").to_owned(),
            r.1["key"].as_str().expect("key").to_owned(),
        )
    }
}

/// A route body with one weight-1 backend per address.
pub fn route(id: &str, host: &str, prefix: &str, backends: &[SocketAddr]) -> Value {
    let b: Vec<Value> = backends
        .iter()
        .map(|a| json!({"address": a.to_string(), "weight": 1}))
        .collect();
    json!({"id": id, "host": host, "path_prefix": prefix, "algorithm": "round_robin", "backends": b})
}

/// Asserts status and error code (and the error shape: a string `message`).
#[track_caller]
pub fn assert_err(r: &Res, status: u16, code: &str) {
    assert_eq!(
        r.0.as_u16(),
        status,
        "expected {status} {code}, got {}",
        r.1
    );
    assert_eq!(r.1["error"], code, "expected {status} {code}, got {}", r.1);
    assert!(
        r.1["message"].is_string(),
        "error without a message: {}",
        r.1
    );
}

/// Asserts a status; returns the body.
#[track_caller]
pub fn assert_status(r: Res, status: u16) -> Value {
    assert_eq!(r.0.as_u16(), status, "expected {status}, got {}", r.1);
    r.1
}
