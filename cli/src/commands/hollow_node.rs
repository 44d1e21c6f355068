//! `orca hollow-node --count N`: nodes that register, heartbeat and report
//! their pods running without running anything, as Kubemark's hollow
//! nodes do, for tests and benchmarks of the control plane.

use orca_core::config::Duration;
use orca_core::store::Store;
use orca_core::telemetry::{self, Metrics};
use orca_kubelet::hollow;
use orca_kubelet::node::Capacity;

/// Arguments of `orca hollow-node`.
#[derive(clap::Args)]
pub struct Args {
    /// How many nodes this process stands in for.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Node names: this prefix and a number from 0.
    #[arg(long, default_value = "hollow-")]
    pub prefix: String,
    /// How often each node renews its Lease.
    #[arg(long, default_value = "10s")]
    pub heartbeat: Duration,
    /// CPU cores each node offers.
    #[arg(long, default_value = "4")]
    pub cpu: String,
    /// Memory each node offers.
    #[arg(long, default_value = "16Gi")]
    pub memory: String,
    /// Pods each node takes.
    #[arg(long, default_value_t = 110)]
    pub pods: u32,
    /// Address of /metrics and /healthz.
    #[arg(long)]
    pub admin: Option<std::net::SocketAddr>,
}

/// Runs the hollow nodes until SIGINT or SIGTERM.
pub async fn run(
    args: Args,
    store: impl Future<Output = anyhow::Result<Store>>,
) -> anyhow::Result<bool> {
    telemetry::init_tracing("info");
    let store = store.await?;
    let metrics = Metrics::new();
    super::serve_metrics(args.admin, &metrics).await?;
    let settings = hollow::Settings {
        count: args.count,
        prefix: args.prefix,
        heartbeat: args.heartbeat.0,
        capacity: Capacity {
            cpu: args.cpu,
            memory: args.memory,
            pods: args.pods,
        },
    };
    hollow::run(store, settings, &metrics, telemetry::shutdown_signal()).await?;
    Ok(true)
}
