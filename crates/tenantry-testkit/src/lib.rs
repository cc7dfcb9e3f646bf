//! Test helpers for Tenantry: start the real binary on ephemeral ports with a config written
//! to a fresh folder, read its logs, talk HTTP to it, and run sample origins. Everything a
//! helper starts is stopped when the helper is dropped.

mod redis;

pub use redis::{
    RedisServer, SHARED_REDIS_URL, free_port, redis_server_or_skip, shared_redis_or_skip,
};

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub use tenantry_dataplane::demo::EchoBackend;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Whether a test must fail, rather than skip, when a service it needs (PostgreSQL, Redis) is
/// absent: `TENANTRY_REQUIRE_SERVICES=1`, as CI sets it.
pub fn services_required() -> bool {
    std::env::var("TENANTRY_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Reports a missing service: prints `skipped: {reason}` so the caller can return early, or
/// panics when [`services_required`].
pub fn skip_or_fail(reason: &str) {
    if services_required() {
        panic!("{reason} (TENANTRY_REQUIRE_SERVICES=1)");
    }
    eprintln!("skipped: {reason}");
}

const WAF_LIBRARY_DIRS: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib",
];

/// Whether libmodsecurity 3 and Debian's CRS are installed (no notice).
pub fn waf_engine_present() -> bool {
    WAF_LIBRARY_DIRS
        .iter()
        .any(|d| Path::new(d).join("libmodsecurity.so.3").exists())
        && Path::new("/usr/share/modsecurity-crs/rules").is_dir()
}

/// Whether libmodsecurity 3 and the CRS are installed; skips (or fails in CI) otherwise.
pub fn waf_installed() -> bool {
    if waf_engine_present() {
        return true;
    }
    skip_or_fail(
        "libmodsecurity3 and modsecurity-crs are not installed (apt-get install libmodsecurity3 modsecurity-crs)",
    );
    false
}

/// The configuration a test gateway runs. Tenants on a plan get the plan's WAF level, which
/// answers `503 waf_unavailable` where libmodsecurity is absent. Outside CI, on such a machine,
/// a config without its own `waf:` section gets `waf: { on_unavailable: allow }` (with a
/// notice), so the tests of everything else still run; in CI the engine must be installed.
fn test_config(yaml: &str) -> String {
    let has_waf = yaml.lines().any(|l| l.starts_with("waf:"));
    if has_waf || services_required() || waf_engine_present() {
        return yaml.to_owned();
    }
    static NOTICE: std::sync::Once = std::sync::Once::new();
    NOTICE.call_once(|| {
        eprintln!(
            "notice: libmodsecurity3/modsecurity-crs not installed: test gateways run with \
             waf.on_unavailable: allow (requests are not inspected)"
        );
    });
    format!("waf: {{ on_unavailable: allow }}\n{yaml}")
}

/// A scratch folder removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a new empty folder under the system temp dir.
    pub fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("tenantry-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()));
        Self(p)
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Lines a child process printed, shared with the reader threads.
#[derive(Clone, Default, Debug)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn push(&self, l: String) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(l);
    }

    /// A copy of the lines so far.
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The lines so far parsed as JSON (others skipped).
    pub fn json(&self) -> Vec<serde_json::Value> {
        self.all()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Whether some line contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|l| l.contains(needle))
    }

    /// Waits until some line contains `needle`.
    pub async fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.contains(needle)
    }
}

/// The platform admin every test instance bootstraps.
pub const ADMIN_EMAIL: &str = "admin@tenantry.test";
/// Its password.
pub const ADMIN_PASSWORD: &str = "correct-horse-battery-staple";

/// A running `tenantry serve` process.
#[derive(Debug)]
pub struct Tenantry {
    child: Child,
    /// Plain HTTP listener.
    pub http: SocketAddr,
    /// TLS listener, if configured.
    pub tls: Option<SocketAddr>,
    /// Admin listener, if configured.
    pub admin: Option<SocketAddr>,
    /// The config file it was started with (rewrite it, then reload).
    pub config: PathBuf,
    /// Its stdout (the access log).
    pub stdout: Lines,
    /// Its stderr (operational JSON logs).
    pub stderr: Lines,
    /// The upgrade socket path.
    pub upgrade_socket: PathBuf,
    dir: Arc<TempDir>,
}

fn spawn_reader(r: impl std::io::Read + Send + 'static, lines: Lines, echo: bool) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if echo {
                eprintln!("[tenantry] {line}");
            }
            lines.push(line);
        }
    });
}

impl Tenantry {
    /// Writes `yaml` to `config.yaml` in a fresh folder and starts `tenantry serve` on it.
    /// Use `127.0.0.1:0` listeners; the bound ports are read from the "listening" log line.
    pub async fn start(bin: &Path, yaml: &str) -> Self {
        let dir = Arc::new(TempDir::new());
        Self::start_in(bin, yaml, dir, &[]).await
    }

    /// Like [`Tenantry::start`], in an existing folder (for certificates), with extra args.
    pub async fn start_in(bin: &Path, yaml: &str, dir: Arc<TempDir>, extra: &[&str]) -> Self {
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, test_config(yaml))
            .unwrap_or_else(|e| panic!("cannot write config: {e}"));
        let socket = dir.path().join("upgrade.sock");
        let mut args = vec![
            "serve".to_owned(),
            "--config".into(),
            config.display().to_string(),
        ];
        args.push("--upgrade-socket".into());
        args.push(socket.display().to_string());
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Self::spawn(bin, &args, config, socket, dir).await
    }

    /// Starts a second process that takes over this one's listeners (`serve --upgrade`).
    pub async fn upgrade(&self, bin: &Path) -> Self {
        let args = vec![
            "serve".to_owned(),
            "--config".into(),
            self.config.display().to_string(),
            "--upgrade".into(),
            "--upgrade-socket".into(),
            self.upgrade_socket.display().to_string(),
        ];
        Self::spawn(
            bin,
            &args,
            self.config.clone(),
            self.upgrade_socket.clone(),
            Arc::clone(&self.dir),
        )
        .await
    }

    async fn spawn(
        bin: &Path,
        args: &[String],
        config: PathBuf,
        socket: PathBuf,
        dir: Arc<TempDir>,
    ) -> Self {
        let echo = std::env::var_os("TENANTRY_TEST_ECHO").is_some();
        let mut child = Command::new(bin)
            .args(args)
            .env("TENANTRY_LOG", "info")
            // Each instance gets its own embedded store next to its config, and a known
            // platform admin (tests log in with ADMIN_EMAIL / ADMIN_PASSWORD).
            .env("TENANTRY_DATA_DIR", dir.path().join("data"))
            .env_remove("TENANTRY_STORE")
            .env("TENANTRY_ADMIN_EMAIL", ADMIN_EMAIL)
            .env("TENANTRY_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = Lines::default();
        let stderr = Lines::default();
        if let Some(o) = child.stdout.take() {
            spawn_reader(o, stdout.clone(), false);
        }
        if let Some(e) = child.stderr.take() {
            spawn_reader(e, stderr.clone(), echo);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let listening = loop {
            if let Some(v) = stderr
                .json()
                .into_iter()
                .find(|v| v["fields"]["message"] == "listening")
            {
                break v;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "tenantry exited with {status} before listening:\n{}",
                    stderr.all().join("\n")
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "tenantry did not start in time:\n{}",
                    stderr.all().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let addr = |k: &str| listening["fields"][k].as_str().and_then(|s| s.parse().ok());
        let http = addr("http").unwrap_or_else(|| panic!("no http address in {listening}"));
        Self {
            child,
            http,
            tls: addr("tls"),
            admin: addr("admin"),
            config,
            stdout,
            stderr,
            upgrade_socket: socket,
            dir,
        }
    }

    /// The folder holding the config (and anything else the test put there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Rewrites the config file (call [`Tenantry::reload`] or send SIGHUP to apply it).
    pub fn write_config(&self, yaml: &str) {
        std::fs::write(&self.config, test_config(yaml))
            .unwrap_or_else(|e| panic!("cannot write config: {e}"));
    }

    /// `POST /admin/reload`: status and JSON body.
    pub async fn reload(&self) -> (StatusCode, serde_json::Value) {
        let admin = self
            .admin
            .unwrap_or_else(|| panic!("no admin listener configured"));
        let r = HttpClient::new()
            .request(
                "POST",
                admin,
                "localhost",
                "/admin/reload",
                &[],
                Bytes::new(),
            )
            .await;
        let r = r.unwrap_or_else(|e| panic!("reload request failed: {e}"));
        (
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// The Prometheus text from `GET /metrics` on the admin listener.
    pub async fn metrics(&self) -> String {
        let admin = self
            .admin
            .unwrap_or_else(|| panic!("no admin listener configured"));
        let r = HttpClient::new().get(admin, "localhost", "/metrics").await;
        let r = r.unwrap_or_else(|e| panic!("metrics request failed: {e}"));
        String::from_utf8_lossy(&r.body).into_owned()
    }

    /// Sends a signal (`HUP`, `TERM`, `QUIT`, `KILL`) with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Tenantry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response with its body read.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (Null if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// For echo backends: which backend answered.
    pub fn backend(&self) -> String {
        self.json()["backend"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// A keep-alive HTTP/1.1 client that sets the `Host` header explicitly.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    /// A new client with its own connection pool.
    pub fn new() -> Self {
        let mut c = HttpConnector::new();
        c.set_nodelay(true);
        Self {
            inner: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .set_host(false)
                .build(c),
        }
    }

    /// `GET http://addr{path}` with `Host: host`.
    pub async fn get(&self, addr: SocketAddr, host: &str, path: &str) -> Result<Reply, String> {
        self.request("GET", addr, host, path, &[], Bytes::new())
            .await
    }

    /// Any request.
    pub async fn request(
        &self,
        method: &str,
        addr: SocketAddr,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, String> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("host", host);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body)).map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.inner.request(req))
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
}

/// Sends raw bytes on a fresh connection and returns what came back until the server closed
/// the connection or `timeout` passed.
pub async fn raw_request(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return format!("connect error: {e}"),
    };
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Starts `n` echo backends on ephemeral ports named `b0`, `b1`, ….
pub async fn echo_backends(n: usize) -> Vec<EchoBackend> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let b = EchoBackend::start(([127, 0, 0, 1], 0).into(), &format!("b{i}"))
            .await
            .unwrap_or_else(|e| panic!("cannot start echo backend: {e}"));
        v.push(b);
    }
    v
}

/// Restarts an echo backend on the same address (after [`EchoBackend::stop`]).
pub async fn restart_backend(addr: SocketAddr, name: &str) -> EchoBackend {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match EchoBackend::start(addr, name).await {
            Ok(b) => return b,
            Err(e) if Instant::now() > deadline => panic!("cannot restart backend on {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
