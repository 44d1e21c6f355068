//! `orca node-proxy --node NAME`: the nftables service proxy alone.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use orca_core::config::Duration;
use orca_core::store::Store;
use orca_core::telemetry::{self, Admin, Metrics};
use orca_proxy::nftables::proxier::Options;
use orca_proxy::nftables::runner::{self, Settings, SyncMetrics};
use orca_proxy::nftables::{Kernel, TABLE};

/// The node proxy's settings, shared by `orca node-proxy` and `orca node`.
#[derive(clap::Args)]
pub struct Flags {
    /// This node's name, as EndpointSlices' `nodeName` gives it (for
    /// `Local` traffic policies). Default: the host name.
    #[arg(long)]
    pub node: Option<String>,
    /// The pod CIDR; ClusterIP traffic from outside it is masqueraded.
    #[arg(long)]
    pub cluster_cidr: Option<String>,
    /// The ClusterIP range; connections to an address in it that no
    /// Service has are refused.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cidr: String,
    /// At most one sync per period; changes in between are batched.
    #[arg(long, default_value = "100ms")]
    pub min_sync_period: Duration,
    /// Program the network namespace at this path (like
    /// /run/netns/NAME) instead of the process's own; etcd is still
    /// reached from the process's namespace.
    #[arg(long)]
    pub netns: Option<PathBuf>,
}

/// Arguments of `orca node-proxy`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    flags: Flags,
    /// Address of /metrics and /healthz.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Remove everything the node proxy made, then exit.
    #[arg(long)]
    pub cleanup: bool,
}

/// Parses `a.b.c.d/n`.
fn parse_cidr(flag: &str, s: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (ip, bits) = s
        .split_once('/')
        .with_context(|| format!("{flag} {s:?}: expected an IPv4 CIDR like 10.244.0.0/16"))?;
    let ip: Ipv4Addr = ip
        .parse()
        .with_context(|| format!("{flag} {s:?}: {ip:?} is not an IPv4 address"))?;
    let bits: u8 = bits
        .parse()
        .ok()
        .filter(|b| *b <= 32)
        .with_context(|| format!("{flag} {s:?}: the prefix length must be 0 to 32"))?;
    Ok((ip, bits))
}

fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn open(netns: Option<&std::path::Path>) -> anyhow::Result<Kernel> {
    Kernel::open(netns).with_context(|| match netns {
        Some(ns) => format!("opening netlink in {}", ns.display()),
        None => "opening netlink".into(),
    })
}

/// Runs the node proxy until SIGINT or SIGTERM (the table stays, so
/// traffic keeps flowing across a restart), or cleans up and exits.
pub async fn run(
    args: Args,
    store: impl Future<Output = anyhow::Result<Store>>,
) -> anyhow::Result<bool> {
    telemetry::init_tracing("info");
    if args.cleanup {
        open(args.flags.netns.as_deref())?
            .cleanup()
            .with_context(|| format!("removing table ip {TABLE}"))?;
        return Ok(true);
    }
    let metrics = Metrics::new();
    let synced = Arc::new(AtomicBool::new(false));
    if let Some(addr) = args.admin {
        spawn_admin(addr, metrics.clone(), synced.clone()).await?;
    }
    serve(
        args.flags,
        &metrics,
        synced,
        store.await?,
        telemetry::shutdown_signal(),
    )
    .await?;
    Ok(true)
}

/// Serves /metrics and /healthz on `addr` until SIGINT or SIGTERM; healthy
/// once `synced` is true.
pub async fn spawn_admin(
    addr: SocketAddr,
    metrics: Metrics,
    synced: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let listener = telemetry::bind_admin(addr).await?;
    let admin = Admin::new(metrics).health(move || {
        if synced.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("the node proxy has not completed its first sync".into())
        }
    });
    tokio::spawn(telemetry::serve_admin(
        listener,
        admin,
        telemetry::shutdown_signal(),
    ));
    Ok(())
}

/// Runs the node proxy on `store` until `shutdown`; `synced` turns true
/// after the first successful sync.
pub async fn serve(
    flags: Flags,
    metrics: &Metrics,
    synced: Arc<AtomicBool>,
    store: Store,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut kernel = open(flags.netns.as_deref())?;
    let options = Options {
        cluster_cidr: flags
            .cluster_cidr
            .as_deref()
            .map(|c| parse_cidr("--cluster-cidr", c))
            .transpose()?,
        service_cidr: Some(parse_cidr("--service-cidr", &flags.service_cidr)?),
    };
    let node = flags
        .node
        .or_else(host_name)
        .context("--node is required: the host name is unknown")?;
    let sync_metrics = SyncMetrics::new(&metrics.registry_with_prefix("orca_node_proxy"));
    let settings = Settings {
        node,
        options,
        min_sync_period: flags.min_sync_period.into(),
    };
    tracing::info!(node = %settings.node, "node proxy starting");
    runner::run(
        store,
        settings,
        &mut kernel,
        sync_metrics,
        |plan| {
            if plan.full {
                tracing::info!(ops = plan.ops.len(), "table ip {TABLE} replaced");
            }
            synced.store(true, Ordering::Relaxed);
        },
        shutdown,
    )
    .await;
    Ok(())
}
