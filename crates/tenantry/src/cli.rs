//! Command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Tenantry: a multi-tenant SaaS edge gateway.
#[derive(Debug, Parser)]
#[command(name = "tenantry", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Work with configuration files.
    Config {
        /// What to do with the file.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Apply the control-plane store's migrations and exit.
    Migrate(StoreArgs),
    /// Run sample echo backends (for trying Tenantry out, tests and benchmarks).
    DemoBackends(DemoArgs),
    /// Inspect a cluster of nodes sharing Redis.
    Cluster {
        /// What to show.
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

/// `tenantry cluster`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// List the nodes with their configuration version.
    Status {
        /// The cluster's Redis.
        #[arg(long, env = "TENANTRY_REDIS", default_value = "redis://127.0.0.1:6379")]
        redis: String,
    },
}

/// `tenantry serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file. Without it, examples/quickstart.yaml is used and its backends are
    /// started in-process (demo mode).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Take over the listening sockets of the running instance (zero-downtime upgrade).
    #[arg(long)]
    pub upgrade: bool,
    /// Unix socket for upgrades (default: `upgrade_socket` from the file, else
    /// $TMPDIR/tenantry-<http port>.sock).
    #[arg(long)]
    pub upgrade_socket: Option<PathBuf>,
    /// Start echo backends on every backend address of the configuration.
    #[arg(long)]
    pub demo_backends: bool,
    /// Cluster mode: share rate limits, quotas and configuration changes through this Redis
    /// (overrides `redis:` in the file).
    #[arg(long, env = "TENANTRY_REDIS")]
    pub redis: Option<String>,
    /// Control-plane store.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Where the control plane keeps its data.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Data directory: the embedded SQLite store (`tenantry.db`) and the JWT secret.
    #[arg(long, env = "TENANTRY_DATA_DIR", default_value = "tenantry-data")]
    pub data_dir: PathBuf,
    /// Store URL instead of the embedded SQLite file, e.g. `postgres://user@host/db`.
    #[arg(long, env = "TENANTRY_STORE")]
    pub store: Option<String>,
}

/// `tenantry config`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a file and print every error with its field path (exit code 1 if any).
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

/// `tenantry demo-backends`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address to listen on (repeatable).
    #[arg(long = "listen", required = true)]
    pub listen: Vec<SocketAddr>,
}
