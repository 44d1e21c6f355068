//! `orca ingress --config FILE [--workers N] [--etcd URL]`: the ingress
//! proxy, from the file's routes or the cluster's Ingress objects.

use std::path::PathBuf;

use anyhow::Context;
use orca_core::store::Store;
use orca_core::telemetry::Metrics;
use orca_proxy::ingress::server;

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
/// the cluster's Ingress objects. The file is checked before `cluster` is
/// awaited, so a broken file is reported first, whatever etcd's state.
pub async fn run(
    args: Args,
    cluster: Option<impl Future<Output = anyhow::Result<Store>>>,
) -> anyhow::Result<bool> {
    run_with(args, cluster, Metrics::new(), |_| {}).await
}

/// [`run`], with the proxy's metrics in `metrics`, and `with_store` given
/// the cluster's store once it answers (the master starts its control
/// loops there).
pub async fn run_with(
    args: Args,
    cluster: Option<impl Future<Output = anyhow::Result<Store>>>,
    metrics: Metrics,
    with_store: impl FnOnce(&Store),
) -> anyhow::Result<bool> {
    // rustls warns on every client that sends an IP address as SNI.
    orca_core::telemetry::init_tracing("info,rustls=error");
    let config =
        server::load(&args.config, args.workers, cluster.is_some()).context("ingress proxy")?;
    let store = match cluster {
        Some(store) => Some(store.await?),
        None => None,
    };
    if let Some(store) = &store {
        with_store(store);
    }
    server::run(&args.config, config, store, metrics)
        .await
        .context("ingress proxy")?;
    Ok(true)
}
