//! `orca logshipper --config FILE`: the log shipper alone.

use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `orca logshipper`.
#[derive(clap::Args)]
pub struct Args {
    /// The shipper's configuration file (YAML).
    #[arg(long)]
    pub config: PathBuf,
}

/// Ships logs until SIGINT or SIGTERM, then flushes and checkpoints.
pub async fn run(args: Args) -> anyhow::Result<bool> {
    orca_core::telemetry::init_tracing("info");
    let config: orca_logshipper::config::Config =
        orca_core::config::load(Some(&args.config), |_| {})?;
    orca_logshipper::run(config, orca_core::telemetry::shutdown_signal())
        .await
        .with_context(|| format!("log shipper ({})", args.config.display()))?;
    Ok(true)
}
