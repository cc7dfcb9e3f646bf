//! The `tenantry` binary: command line, runtime and wiring. Everything else lives in the
//! library crates.

mod cli;
mod cluster;
mod control;
mod serve;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator (measured in docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Serve(args) => serve::run(args),
        cli::Command::Config {
            command: cli::ConfigCommand::Check { file },
        } => serve::check(&file),
        cli::Command::DemoBackends(args) => serve::demo_backends(args),
        cli::Command::Migrate(args) => serve::migrate(args),
        cli::Command::Cluster {
            command: cli::ClusterCommand::Status { redis },
        } => serve::cluster_status(&redis),
    }
}
