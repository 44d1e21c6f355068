//! `orca logshipper --config FILE`: the log shipper alone.

use std::path::PathBuf;

use anyhow::Context;
use orca_core::store::Store;

/// Arguments of `orca logshipper`.
#[derive(clap::Args)]
pub struct Args {
    /// The shipper's configuration file (YAML).
    #[arg(long)]
    pub config: PathBuf,
    /// The node whose pods' labels pod log events carry (with a cluster).
    /// Default: the host name.
    #[arg(long)]
    pub node: Option<String>,
}

/// Ships logs until SIGINT or SIGTERM, then flushes and checkpoints; with
/// `cluster`, pod log events carry their pod's labels.
pub async fn run(args: Args, cluster: Option<Store>) -> anyhow::Result<bool> {
    orca_core::telemetry::init_tracing("info");
    let config: orca_logshipper::config::Config =
        orca_core::config::load(Some(&args.config), |_| {})?;
    let node = match &cluster {
        Some(_) => super::node_name(args.node.clone())?,
        None => String::new(),
    };
    let cluster = cluster
        .as_ref()
        .map(|store| orca_logshipper::Cluster { store, node: &node });
    orca_logshipper::run(config, cluster, orca_core::telemetry::shutdown_signal())
        .await
        .with_context(|| format!("log shipper ({})", args.config.display()))?;
    Ok(true)
}
