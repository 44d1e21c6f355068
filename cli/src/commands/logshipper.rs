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
}

/// Ships logs until SIGINT or SIGTERM, then flushes and checkpoints; with
/// `cluster`, pod log events carry their pod's labels.
pub async fn run(args: Args, cluster: Option<Store>) -> anyhow::Result<bool> {
    orca_core::telemetry::init_tracing("info");
    let config: orca_logshipper::config::Config =
        orca_core::config::load(Some(&args.config), |_| {})?;
    orca_logshipper::run(
        config,
        cluster.as_ref(),
        orca_core::telemetry::shutdown_signal(),
    )
    .await
    .with_context(|| format!("log shipper ({})", args.config.display()))?;
    Ok(true)
}
