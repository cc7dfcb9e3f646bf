//! Wiring of the control plane into `serve`: open the store, import the file's tenants,
//! bootstrap the platform admin, mount the admin API and feed the data plane from the store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tenantry_auth::{JwtAlgorithm, Throttle, TokenIssuer};
use tenantry_config::{AuthSettings, GatewaySpec, TenantSpec};
use tenantry_dataplane::{BoxFuture, ConfigSource, Gateway, ReloadError};
use tenantry_domain::{Change, Role, Snapshot, TenantId};
use tenantry_store::{Actor, NewUser, Store};

use crate::cli::StoreArgs;
use crate::cluster::Cluster;

/// Opens (and migrates) the store named by the arguments.
pub async fn open_store(args: &StoreArgs) -> Result<Store> {
    match &args.store {
        Some(url) => Store::open(url)
            .await
            .with_context(|| format!("cannot open the store {}", redact(url))),
        None => Store::open_in_dir(&args.data_dir)
            .await
            .with_context(|| format!("cannot open the store in {}", args.data_dir.display())),
    }
}

/// `tenantry migrate`.
pub async fn migrate(args: &StoreArgs) -> Result<()> {
    let store = open_store(args).await?;
    store.close().await;
    println!("migrations applied");
    Ok(())
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The file's tenants (taken out of the spec, not copied: a large file's are most of its
/// memory) with certificate paths made absolute (the store outlives the file's folder as a
/// base).
pub fn file_tenants(spec: &mut GatewaySpec, base: &Path) -> Vec<TenantSpec> {
    let mut tenants = std::mem::take(&mut spec.tenants);
    for t in &mut tenants {
        for r in &mut t.routes {
            if let Some(tls) = &mut r.tls {
                tls.cert = absolute(base, &tls.cert);
                tls.key = absolute(base, &tls.key);
            }
        }
    }
    tenants
}

fn absolute(base: &Path, p: &str) -> String {
    let path = Path::new(p);
    if path.is_absolute() {
        p.to_owned()
    } else {
        base.join(path).to_string_lossy().into_owned()
    }
}

/// Creates the platform admin when the store has no user at all.
pub async fn bootstrap_admin(store: &Store) -> Result<()> {
    let platform = store.platform();
    if platform.count_users().await? > 0 {
        return Ok(());
    }
    let email = std::env::var("TENANTRY_ADMIN_EMAIL")
        .unwrap_or_else(|_| "admin@tenantry.localhost".to_owned())
        .trim()
        .to_lowercase();
    let (password, generated) = match std::env::var("TENANTRY_ADMIN_PASSWORD") {
        Ok(p) => (p, false),
        Err(_) => (tenantry_auth::random_password()?, true),
    };
    if let Err(e) = tenantry_auth::check_password_policy(&password, &email) {
        bail!("TENANTRY_ADMIN_PASSWORD: {e}");
    }
    let user = NewUser {
        id: tenantry_auth::random_id("u")?,
        email: email.clone(),
        password_hash: tenantry_auth::hash_password(&password)?,
        role: Role::PlatformAdmin,
    };
    let actor = Actor {
        id: "system".to_owned(),
        ip: None,
    };
    platform.create_platform_admin(&actor, user).await?;
    if generated {
        // Printed once, on the terminal of whoever started the first instance.
        eprintln!(
            "tenantry: created the platform admin {email} with password {password}\n\
             tenantry: it is shown only this once; change it with POST /api/me/password"
        );
    }
    tracing::info!(%email, generated, "platform admin created");
    Ok(())
}

/// The token issuer from the `auth:` settings.
pub fn token_issuer(auth: &AuthSettings, data_dir: &Path) -> Result<TokenIssuer> {
    match &auth.jwt {
        Some(keys) => {
            let alg: JwtAlgorithm = keys
                .algorithm
                .parse()
                .with_context(|| format!("auth.jwt.algorithm {:?}", keys.algorithm))?;
            Ok(TokenIssuer::from_pem_files(
                alg,
                &keys.private_key,
                &keys.public_key,
                &auth.issuer,
                auth.token_ttl,
            )?)
        }
        None => {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("cannot create {}", data_dir.display()))?;
            Ok(TokenIssuer::hs256_in_dir(
                data_dir,
                &auth.issuer,
                auth.token_ttl,
            )?)
        }
    }
}

/// Reloads: re-read the file, import its tenants into the store, serve the store.
pub struct StoreSource {
    /// The store.
    pub store: Store,
    /// The configuration file.
    pub path: PathBuf,
    /// The cluster to tell about the tenants the file changed.
    pub cluster: Option<Arc<Cluster>>,
}

impl ConfigSource for StoreSource {
    fn load(&self) -> BoxFuture<Result<Snapshot, ReloadError>> {
        let store = self.store.clone();
        let path = self.path.clone();
        let cluster = self.cluster.clone();
        Box::pin(async move {
            let base = base_dir(&path);
            let text = tokio::fs::read_to_string(&path)
                .await
                .map_err(|e| ReloadError::Build(format!("cannot read {}: {e}", path.display())))?;
            let mut spec = tenantry_config::parse_yaml(&text).map_err(ReloadError::Invalid)?;
            drop(text);
            // Validation's own snapshot is not kept: the store's is what gets served.
            drop(tenantry_config::validate(&spec, &base).map_err(ReloadError::Invalid)?);
            let tenants = file_tenants(&mut spec, &base);
            drop(spec);
            let changed = store
                .platform()
                .import_file_tenants(&tenants)
                .await
                .map_err(|e| ReloadError::Build(format!("store: {e}")))?;
            drop(tenants);
            let snapshot = tenantry_control::load_snapshot(&store, &base)
                .await
                .map_err(|e| ReloadError::Build(format!("store: {e}")))?;
            // Other nodes reload these tenants from the store; this node applies the snapshot
            // as soon as it is returned (the published change may arrive first: harmless).
            if let Some(c) = &cluster {
                publish_imported(&store, c, changed)
                    .await
                    .map_err(|e| ReloadError::Build(format!("store: {e}")))?;
            }
            Ok(snapshot)
        })
    }
}

/// Tells the cluster about tenants a file import changed (at start-up and at each reload):
/// each one's configuration from the store at `tn:config:<id>` (removed when the tenant is
/// gone) and one `tn:events` message, so other nodes reload them at once.
///
/// # Errors
/// Reading a tenant from the store failed (nothing is published then).
pub async fn publish_imported(
    store: &Store,
    cluster: &Arc<Cluster>,
    changed: Vec<TenantId>,
) -> Result<(), tenantry_store::StoreError> {
    let mut published = Vec::with_capacity(changed.len());
    for id in changed {
        let config = store
            .platform()
            .load_tenant(&id)
            .await?
            .as_ref()
            .map(tenantry_control::tenant_config_json);
        published.push((id, config));
    }
    cluster.publish(published);
    Ok(())
}

/// The folder relative paths in a file are resolved against.
pub fn base_dir(path: &Path) -> PathBuf {
    path.parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The data plane of this process, as the control plane sees it, and the cluster it tells.
struct LocalDataPlane(Arc<Gateway>, Option<Arc<Cluster>>);

impl tenantry_control::DataPlane for LocalDataPlane {
    fn apply(&self, changes: Vec<Change>) -> Result<(), String> {
        self.0
            .apply_changes(&changes)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn store_sync(&self) -> &tokio::sync::Mutex<()> {
        self.0.store_sync()
    }

    fn announce(&self, tenant: &TenantId, config: Option<serde_json::Value>) {
        if let Some(c) = &self.1 {
            c.publish(vec![(tenant.clone(), config)]);
        }
    }

    fn usage(&self, tenant: &TenantId) -> tenantry_control::UsageFuture {
        let gw = Arc::clone(&self.0);
        let tenant = gw.tenant(tenant);
        Box::pin(async move {
            let Some(t) = tenant else {
                return Vec::new();
            };
            tenantry_dataplane::admission::usage(gw.limiter(), gw.quotas(), &t)
                .await
                .into_iter()
                .map(|q| tenantry_control::QuotaUsage {
                    quota: q.quota.as_str().to_owned(),
                    used: q.used,
                    limit: q.limit,
                    window_start: tenantry_domain::rfc3339(q.window.0),
                    resets_at: tenantry_domain::rfc3339(q.window.1),
                })
                .collect()
        })
    }
}

/// Mounts the admin API on the gateway's admin listener.
pub fn mount_api(
    gw: &Arc<Gateway>,
    store: Store,
    tokens: TokenIssuer,
    base: PathBuf,
    cluster: Option<Arc<Cluster>>,
) {
    let state = Arc::new(tenantry_control::AppState {
        store,
        tokens,
        throttle: Throttle::default(),
        dataplane: Arc::new(LocalDataPlane(Arc::clone(gw), cluster)),
        base_dir: base,
    });
    let router = tenantry_control::router(state);
    gw.set_api(Arc::new(move |req, peer| {
        let router = router.clone();
        Box::pin(async move {
            tenantry_control::handle(router, req.map(axum::body::Body::new), peer).await
        })
    }));
}

/// How long the store may take to answer at start-up before `serve` gives up.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(30);
