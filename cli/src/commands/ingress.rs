//! `orca ingress --config FILE [--workers N] [--etcd URL]`: the ingress
//! proxy, from the file's routes or the cluster's Ingress objects.

use std::path::PathBuf;

use anyhow::Context;
use orca_core::store::Store;

/// Arguments of `orca ingress`.
#[derive(clap::Args)]
pub struct Args {
    /// The proxy's configuration file (YAML).
    #[arg(long)]
    pub config: PathBuf,
    /// Worker threads (default: the file's `workers`, else one per core).
    #[arg(long)]
    pub workers: Option<usize>,
}

/// Runs the proxy until SIGINT or SIGTERM; with `cluster`, routes follow
/// the cluster's Ingress objects.
pub async fn run(args: Args, cluster: Option<Store>) -> anyhow::Result<bool> {
    // rustls warns on every client that sends an IP address as SNI.
    orca_core::telemetry::init_tracing("info,rustls=error");
    orca_proxy::ingress::server::run(&args.config, args.workers, cluster)
        .await
        .with_context(|| format!("ingress proxy ({})", args.config.display()))?;
    Ok(true)
}
