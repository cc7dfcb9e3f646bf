//! `serve`, `config check` and `demo-backends`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use tenantry_config::{GatewayConfig, GatewaySpec, ServerSettings};
use tenantry_dataplane::demo::EchoBackend;
use tenantry_dataplane::server::{Listeners, StopMode, Stopper};
use tenantry_dataplane::{Gateway, upgrade};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::{DemoArgs, ServeArgs, StoreArgs};
use crate::control;

/// The example configuration used when `serve` gets no `--config`.
const QUICKSTART: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/quickstart.yaml"
);

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TENANTRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_current_span(false)
        .init();
}

fn report(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fatal");
            eprintln!("tenantry: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Result<GatewayConfig, String> {
    load_spec(path).map(|(_, c)| c)
}

/// Reads, parses and validates a file, keeping the spec (its tenants go into the store).
fn load_spec(path: &Path) -> Result<(GatewaySpec, GatewayConfig), String> {
    let show = |errs: tenantry_config::ConfigErrors| {
        errs.iter()
            .map(|e| format!("{}: {e}", path.display()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let spec = tenantry_config::parse_yaml(&text).map_err(show)?;
    drop(text);
    let config = tenantry_config::validate(&spec, &control::base_dir(path)).map_err(show)?;
    Ok((spec, config))
}

/// `tenantry config check FILE`.
pub fn check(file: &Path) -> ExitCode {
    let config = match load(file) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::FAILURE;
        }
    };
    // Certificates are part of a valid configuration too: load each one.
    let mut bad = false;
    for (ti, t) in config.snapshot.tenants().enumerate() {
        for (ri, r) in t.routes.iter().enumerate() {
            if let Some(files) = &r.tls
                && let Err(e) = tenantry_dataplane::tls::load_certified_key(files)
            {
                eprintln!("{}: tenants[{ti}].routes[{ri}].tls: {e}", file.display());
                bad = true;
            }
        }
    }
    if bad {
        return ExitCode::FAILURE;
    }
    let routes: usize = config.snapshot.tenants().map(|t| t.routes.len()).sum();
    println!(
        "{}: ok ({} tenants, {routes} routes)",
        file.display(),
        config.snapshot.len()
    );
    ExitCode::SUCCESS
}

/// `tenantry demo-backends --listen ADDR...`.
pub fn demo_backends(args: DemoArgs) -> ExitCode {
    init_tracing();
    report(runtime().and_then(|rt| {
        rt.block_on(async {
            let mut running = Vec::new();
            for addr in args.listen {
                let b = EchoBackend::start(addr, &addr.to_string())
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                tracing::info!(addr = %b.addr, "demo backend listening");
                running.push(b);
            }
            shutdown_signal().await;
            Ok(())
        })
    }))
}

/// The control runtime (admin, health checks, reloads, signals); proxy traffic runs on the
/// workers that `serve` starts.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("tenantry")
        .build()
        .context("cannot start the runtime")
}

async fn shutdown_signal() -> &'static str {
    let (Ok(mut term), Ok(mut quit), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::quit()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return "none";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = quit.recv() => "SIGQUIT",
        _ = int.recv() => "SIGINT",
    }
}

/// `tenantry serve`.
pub fn run(args: ServeArgs) -> ExitCode {
    init_tracing();
    let demo = args.demo_backends || args.config.is_none();
    if let Some(url) = &args.redis
        && let Err(e) = tenantry_config::validate_redis_url(url)
    {
        eprintln!("tenantry: --redis: {e}");
        return ExitCode::FAILURE;
    }
    let path = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(QUICKSTART));
    let (spec, config) = match load_spec(&path) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("{msg}");
            tracing::error!(errors = %msg, "invalid configuration");
            return ExitCode::FAILURE;
        }
    };
    report(runtime().and_then(|rt| rt.block_on(serve(args, path, spec, config, demo))))
}

/// `tenantry cluster status`.
pub fn cluster_status(redis: &str) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(crate::cluster::status(redis))) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tenantry: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `tenantry migrate`.
pub fn migrate(args: StoreArgs) -> ExitCode {
    init_tracing();
    report(runtime().and_then(|rt| rt.block_on(control::migrate(&args))))
}

async fn serve(
    args: ServeArgs,
    path: PathBuf,
    mut spec: GatewaySpec,
    mut config: GatewayConfig,
    demo: bool,
) -> Result<()> {
    let mut demo_backends = Vec::new();
    if demo {
        let addrs: BTreeSet<SocketAddr> = config
            .snapshot
            .tenants()
            .flat_map(|t| {
                t.routes
                    .iter()
                    .flat_map(|r| r.backends.iter().filter_map(|b| b.address.socket_addr()))
            })
            .collect();
        for addr in addrs {
            match EchoBackend::start(addr, &addr.to_string()).await {
                Ok(b) => demo_backends.push(b),
                Err(e) => tracing::warn!(%addr, error = %e, "demo backend not started"),
            }
        }
        tracing::info!(count = demo_backends.len(), "demo backends started");
    }

    // The control plane: the store is what the proxy serves; the file's tenants are imported
    // into it first (the file wins for the tenants it lists). The file's validated snapshot
    // is not kept meanwhile: with many tenants, holding both would double the peak.
    config.snapshot = tenantry_domain::Snapshot::new();
    let base = control::base_dir(&path);
    let store = tokio::time::timeout(control::STORE_TIMEOUT, control::open_store(&args.store))
        .await
        .context("the store did not answer in time")??;
    let tenants = control::file_tenants(&mut spec, &base);
    drop(spec);
    let imported = store
        .platform()
        .import_file_tenants(&tenants)
        .await
        .context("cannot import the file's tenants into the store")?;
    drop(tenants);
    control::bootstrap_admin(&store).await?;
    config.snapshot = tenantry_control::load_snapshot(&store, &base)
        .await
        .context("cannot load tenants from the store")?;
    let tokens = control::token_issuer(&config.server.auth, &args.store.data_dir)?;
    if let Some(url) = &args.redis {
        config.server.redis = Some(url.clone());
    }

    let (listeners, handover) = if args.upgrade {
        let socket = upgrade_socket(&args, &config.server, None)?;
        let (l, h) = upgrade::take_over(&socket).context("upgrade")?;
        (l, Some(h))
    } else {
        (Listeners::bind(&config.server)?, None)
    };
    let (http, tls, admin) = listeners.local_addrs();
    let fds = upgrade::HandoverFds::from_listeners(&listeners)?;
    let build_started = std::time::Instant::now();
    let server_settings = config.server.clone();
    let gw = Gateway::new(config, Some(path.clone())).context("cannot build the routing table")?;
    let cluster = match &server_settings.redis {
        Some(url) => Some(crate::cluster::Cluster::start(
            url,
            server_settings.cluster.node_id.clone(),
            server_settings.cluster.config_ttl,
            Arc::clone(&gw),
            store.clone(),
            base.clone(),
        )?),
        None => None,
    };
    // Tenants this start-up's import changed: other nodes reload them now, not at their next
    // resync, and their `tn:config:<id>` is current.
    if let Some(c) = &cluster
        && let Err(e) = control::publish_imported(&store, c, imported).await
    {
        tracing::warn!(error = %e, "cluster: the file's changed tenants were not published; other nodes catch up within cluster.config_ttl");
    }
    crate::cluster::install_quota_sink(&gw, store.clone(), cluster.clone());
    gw.set_config_source(Arc::new(control::StoreSource {
        store: store.clone(),
        path: path.clone(),
        cluster: cluster.clone(),
    }));
    control::mount_api(&gw, store.clone(), tokens, base, cluster);
    let build_ms = build_started.elapsed().as_secs_f64() * 1e3;
    let table = gw.table();
    tracing::info!(
        http = %addr_str(http),
        tls = %addr_str(tls),
        admin = %addr_str(admin),
        tenants = table.tenant_count(),
        routes = table.route_count(),
        build_ms,
        config = %path.display(),
        pid = std::process::id(),
        "listening"
    );
    drop(table);

    let (stopper, stop_rx) = tenantry_dataplane::stopper();
    tokio::spawn(handle_signals(Arc::clone(&gw), stopper.clone()));
    let workers = server_settings
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let serving = tokio::spawn(tenantry_dataplane::serve(
        Arc::clone(&gw),
        listeners,
        stop_rx,
        workers,
    ));

    let socket = match handover {
        Some(h) => tokio::task::spawn_blocking(move || h.confirm()).await??,
        None => upgrade_socket(&args, &server_settings, http)?,
    };
    tokio::spawn(async move {
        if let Err(e) = upgrade::serve_upgrades(socket, fds, stopper).await {
            tracing::error!(error = %e, "upgrade socket unavailable; --upgrade will not work");
        }
    });

    serving.await.context("server task failed")??;
    gw.flush_logs();
    store.close().await;
    drop(demo_backends);
    tracing::info!("stopped");
    Ok(())
}

fn addr_str(a: Option<SocketAddr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_default()
}

fn upgrade_socket(
    args: &ServeArgs,
    server: &ServerSettings,
    http: Option<SocketAddr>,
) -> Result<PathBuf> {
    if let Some(p) = args
        .upgrade_socket
        .clone()
        .or_else(|| server.upgrade_socket.clone())
    {
        return Ok(p);
    }
    let port = http.map_or(server.listen.port(), |a| a.port());
    Ok(std::env::temp_dir().join(format!("tenantry-{port}.sock")))
}

async fn handle_signals(gw: Arc<Gateway>, stopper: Stopper) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading configuration");
                let _ = gw.reload().await;
            }
            sig = shutdown_signal() => {
                tracing::info!(signal = sig, "shutting down gracefully");
                stopper.stop(StopMode::Shutdown);
                return;
            }
        }
    }
}
