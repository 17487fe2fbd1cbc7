//! interceptor: transparent egress interception for enrolled cgroups and containers.

mod cgroup;
mod cli;
mod control;
mod daemon;
mod enrollment;
mod errors;
mod gate;
mod http;
mod identity;
mod kernel;
mod limits;
mod metrics;
mod proxy;
mod redirect;
mod relay;
mod secrets;
mod sessions;
#[cfg(test)]
mod test_net;
mod tls;
mod trust;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use cli::args::{Cli, Command};
use interceptor::private_fs;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_daemon = matches!(cli.command, Command::Run(_));
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(if is_daemon { "info" } else { "warn" })),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Run(args) => run_daemon(cli.socket, *args).map(|()| 0),
        _ => cli::run_client(cli),
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("interceptor: {}", errors::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Every relayed connection holds two sockets: the usual soft limit of 1024 descriptors would
/// cap the proxy near 500 connections while the hard limit allows far more.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open files limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open files limit"),
    }
}

fn run_daemon(socket: std::path::PathBuf, args: cli::args::RunArgs) -> anyhow::Result<()> {
    let config = daemon::DaemonConfig {
        // Borrows `args`: before the fields that move out of it.
        store: args.store_options(),
        policy: args.policy,
        data_dir: args.data_dir,
        socket,
        socket_group: args.socket_group,
        admin_group: args.admin_group,
        bpffs_dir: args.bpffs_dir,
        proxy_port: args.proxy_port,
        connect_timeout: args.connect_timeout,
        header_timeout: args.tls.header_timeout,
        rules: args.rules.sources(),
        rules_cache: args.rules.cache(),
        vault: args.vault,
        docker_root: args.docker_root,
        metrics_addr: args.metrics_addr,
        metrics_allow_remote: args.metrics_allow_remote,
        tls: args.tls.into_options(),
    };
    raise_open_files_limit();
    let runtime = tokio::runtime::Runtime::new()?;
    let writer = runtime.block_on(daemon::run(config))?;
    // Dropping the runtime drops every task and with them every store handle; then the
    // writer drains what they queued and syncs it.
    runtime.shutdown_timeout(Duration::from_secs(2));
    writer.finish();
    Ok(())
}
