//! `orca kubelet --node NAME [--config FILE]`: the kubelet alone; `orca
//! node` runs it beside the node proxy and the log shipper.

use std::path::PathBuf;

use anyhow::Context;
use orca_core::store::Store;
use orca_core::telemetry::{self, Metrics};
use orca_core::watch::Informers;
use orca_kubelet::agent::{self, Settings};
use orca_kubelet::config::Config;

/// The kubelet's settings, shared by `orca kubelet` and `orca node`.
#[derive(clap::Args)]
pub struct KubeletFlags {
    /// The kubelet's configuration file (state and log directories, pod
    /// CIDR, registries, image allow-list); defaults apply without one.
    #[arg(long = "kubelet-config")]
    pub config: Option<PathBuf>,
}

/// Arguments of `orca kubelet`.
#[derive(clap::Args)]
pub struct Args {
    /// This node's name. Default: the host name.
    #[arg(long)]
    pub node: Option<String>,
    /// The kubelet's configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The network namespace (a path like /run/netns/NAME) the node's
    /// bridge and pods live in, instead of the process's own.
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Address of /metrics and /healthz.
    #[arg(long)]
    pub admin: Option<std::net::SocketAddr>,
    /// Remove every container, mount, network namespace, address, cgroup
    /// and bundle the kubelet made, then exit.
    #[arg(long)]
    pub cleanup: bool,
}

/// Loads the kubelet's configuration file.
pub fn load(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(orca_core::config::load(path, |_| {})?)
}

/// The `orca-monitor` binary beside this one.
fn monitor(config: &Config) -> anyhow::Result<PathBuf> {
    if let Some(path) = &config.monitor {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe().context("finding the orca binary")?;
    let path = exe.with_file_name("orca-monitor");
    anyhow::ensure!(
        path.exists(),
        "{} is missing: it is built and installed beside orca (or set `monitor:` in the kubelet's config)",
        path.display()
    );
    Ok(path)
}

/// The kubelet's settings from its flags and file.
pub fn settings(node: String, config: Config, netns: Option<PathBuf>) -> anyhow::Result<Settings> {
    Ok(Settings {
        node,
        netns,
        monitor: monitor(&config)?,
        config,
        version: format!("orca-{}", env!("CARGO_PKG_VERSION")),
    })
}

/// Runs the kubelet until SIGINT or SIGTERM (or cleans up and exits).
pub async fn run(
    args: Args,
    store: impl Future<Output = anyhow::Result<Store>>,
) -> anyhow::Result<bool> {
    telemetry::init_tracing("info");
    let config = load(args.config.as_deref())?;
    if args.cleanup {
        agent::cleanup(&config, args.netns.as_deref()).await?;
        eprintln!(
            "removed everything the kubelet made under {}",
            config.state_dir.display()
        );
        return Ok(true);
    }
    let node = super::node_name(args.node)?;
    let settings = settings(node, config, args.netns)?;
    let store = store.await?;
    let metrics = Metrics::new();
    let informers = Informers::new(store, &metrics);
    super::serve_metrics(args.admin, &metrics).await?;
    agent::run(&informers, settings, telemetry::shutdown_signal())
        .await
        .context("kubelet")?;
    Ok(true)
}
