//! `orca node --node NAME`: the per-node agent, its components as tasks of
//! one process: the kubelet, the node proxy and, given a configuration, the
//! log shipper.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use orca_core::store::Store;
use orca_core::telemetry::{self, Metrics};

use super::{kubelet, node_proxy};

/// Arguments of `orca node`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    proxy: node_proxy::Flags,
    #[command(flatten)]
    kubelet: kubelet::KubeletFlags,
    /// The log shipper's configuration file; without one no logs are shipped.
    #[arg(long)]
    pub logshipper_config: Option<PathBuf>,
    /// Address of the node's /metrics and /healthz (the log shipper serves
    /// its own, as its file says).
    #[arg(long)]
    pub admin: Option<SocketAddr>,
}

/// Runs the node's components until SIGINT or SIGTERM; the first that
/// fails stops the node with its error.
pub async fn run(
    args: Args,
    store: impl Future<Output = anyhow::Result<Store>>,
) -> anyhow::Result<bool> {
    telemetry::init_tracing("info");
    // Every configuration is read before anything starts.
    let shipper_config: Option<orca_logshipper::config::Config> = args
        .logshipper_config
        .as_deref()
        .map(|path| orca_core::config::load(Some(path), |_| {}))
        .transpose()?;
    let kubelet_config = kubelet::load(args.kubelet.config.as_deref())?;
    let node = super::node_name(args.proxy.node.clone())?;
    let kubelet_settings =
        kubelet::settings(node.clone(), kubelet_config, args.proxy.netns.clone())?;
    let store = store.await?;
    let metrics = Metrics::new();
    let readiness = node_proxy::Readiness::new(&metrics, args.proxy.unhealthy_after);
    if let Some(addr) = args.admin {
        node_proxy::spawn_admin(addr, metrics.clone(), readiness.clone()).await?;
    }
    let proxy = async {
        node_proxy::serve(
            args.proxy,
            &metrics,
            readiness,
            store.clone(),
            telemetry::shutdown_signal(),
        )
        .await
        .context("node proxy")
    };
    let shipper = async {
        match shipper_config {
            Some(config) => {
                let cluster = orca_logshipper::Cluster {
                    store: &store,
                    node: &node,
                };
                orca_logshipper::run(config, Some(cluster), telemetry::shutdown_signal())
                    .await
                    .context("log shipper")
            }
            None => Ok(()),
        }
    };
    let kubelet = async {
        orca_kubelet::agent::run(
            store.clone(),
            kubelet_settings,
            &metrics,
            telemetry::shutdown_signal(),
        )
        .await
        .context("kubelet")
    };
    tokio::try_join!(kubelet, proxy, shipper)?;
    Ok(true)
}
