//! `orca node-proxy --node NAME`: the nftables service proxy alone.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use orca_core::config::Duration;
use orca_core::store::Store;
use orca_core::telemetry::{self, Admin, Metrics};
use orca_core::watch::{WatchMetrics, WatchStatus};
use orca_proxy::nftables::proxier::Options;
use orca_proxy::nftables::ruleset::Family;
use orca_proxy::nftables::runner::{self, Settings, SyncMetrics, Table};
use orca_proxy::nftables::{Kernel, TABLE};

/// The node proxy's settings, shared by `orca node-proxy` and `orca node`.
#[derive(clap::Args)]
pub struct Flags {
    /// This node's name, as EndpointSlices' `nodeName` gives it (for
    /// `Local` traffic policies). Default: the host name.
    #[arg(long)]
    pub node: Option<String>,
    /// The pod CIDRs, comma-separated (one per family); ClusterIP traffic
    /// from outside them is masqueraded.
    #[arg(long)]
    pub cluster_cidr: Option<String>,
    /// The ClusterIP ranges, comma-separated (one per family, as in a
    /// dual-stack cluster). Each family named gets its table (`ip orca`,
    /// `ip6 orca`); connections to an address in a range that no Service
    /// has are refused.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cidr: String,
    /// At most one sync per period; changes in between are batched.
    #[arg(long, default_value = "100ms")]
    pub min_sync_period: Duration,
    /// /healthz answers 503 once a watch of the cluster (Services,
    /// EndpointSlices) has been down this long: the rules in the kernel
    /// stay, but may be stale.
    #[arg(long, default_value = "60s")]
    pub unhealthy_after: Duration,
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

/// Parses `a.b.c.d/n,x:y::/m`: at most one CIDR per family.
fn parse_cidrs(flag: &str, list: &str) -> anyhow::Result<Vec<(IpAddr, u8)>> {
    let mut out: Vec<(IpAddr, u8)> = Vec::new();
    for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (ip, bits) = s.split_once('/').with_context(|| {
            format!("{flag} {s:?}: expected a CIDR like 10.244.0.0/16 or fd00::/64")
        })?;
        let ip: IpAddr = ip
            .parse()
            .with_context(|| format!("{flag} {s:?}: {ip:?} is not an IP address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits: u8 = bits
            .parse()
            .ok()
            .filter(|b| *b <= max)
            .with_context(|| format!("{flag} {s:?}: the prefix length must be 0 to {max}"))?;
        if out.iter().any(|(other, _)| other.is_ipv4() == ip.is_ipv4()) {
            anyhow::bail!("{flag} {list:?}: at most one range per address family");
        }
        out.push((ip, bits));
    }
    Ok(out)
}

fn open(netns: Option<&std::path::Path>, family: Family) -> anyhow::Result<Kernel> {
    Kernel::open(netns, family).with_context(|| match netns {
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
        for family in [Family::V4, Family::V6] {
            open(args.flags.netns.as_deref(), family)?
                .cleanup()
                .with_context(|| format!("removing table {} {TABLE}", family.name()))?;
        }
        return Ok(true);
    }
    let metrics = Metrics::new();
    let readiness = Readiness::new(&metrics, args.flags.unhealthy_after);
    if let Some(addr) = args.admin {
        spawn_admin(addr, metrics.clone(), readiness.clone()).await?;
    }
    serve(
        args.flags,
        &metrics,
        readiness,
        store.await?,
        telemetry::shutdown_signal(),
    )
    .await?;
    Ok(true)
}

/// What the node proxy's `/healthz` reads: its first sync, and its
/// watches of the cluster.
#[derive(Clone)]
pub struct Readiness {
    synced: Arc<AtomicBool>,
    services: WatchStatus,
    slices: WatchStatus,
    unhealthy_after: std::time::Duration,
}

impl Readiness {
    /// Not ready until the first sync; registers the watches' metrics
    /// (`orca_watch_*{watch="services"|"endpointslices"}`) in `metrics`.
    pub fn new(metrics: &Metrics, unhealthy_after: Duration) -> Self {
        let watches = WatchMetrics::register(metrics);
        Self {
            synced: Arc::new(AtomicBool::new(false)),
            services: watches.status("services"),
            slices: watches.status("endpointslices"),
            unhealthy_after: unhealthy_after.get(),
        }
    }

    /// `Ok` once the first sync is in the kernel and while every watch is
    /// up or has been down for less than `--unhealthy-after`.
    fn check(&self) -> Result<(), String> {
        if !self.synced.load(Ordering::Relaxed) {
            return Err("the node proxy has not completed its first sync".into());
        }
        self.services.check(self.unhealthy_after)?;
        self.slices.check(self.unhealthy_after)?;
        Ok(())
    }
}

/// Serves /metrics and /healthz on `addr` until SIGINT or SIGTERM, healthy
/// as `readiness` says.
pub async fn spawn_admin(
    addr: SocketAddr,
    metrics: Metrics,
    readiness: Readiness,
) -> anyhow::Result<()> {
    let listener = telemetry::bind_admin(addr).await?;
    let admin = Admin::new(metrics).health(move || {
        readiness
            .check()
            .map_err(|reason| format!("{reason} (rules in the kernel stay as they are)"))
    });
    tokio::spawn(telemetry::serve_admin(
        listener,
        admin,
        telemetry::shutdown_signal(),
    ));
    Ok(())
}

/// Runs the node proxy on `store` until `shutdown`; `readiness` follows
/// its first sync and its watches.
pub async fn serve(
    flags: Flags,
    metrics: &Metrics,
    readiness: Readiness,
    store: Store,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let service_cidrs = parse_cidrs("--service-cidr", &flags.service_cidr)?;
    let cluster_cidrs = match &flags.cluster_cidr {
        Some(list) => parse_cidrs("--cluster-cidr", list)?,
        None => Vec::new(),
    };
    anyhow::ensure!(
        !service_cidrs.is_empty(),
        "--service-cidr: at least one range is needed"
    );
    let mut kernels = Vec::new();
    for (net, bits) in &service_cidrs {
        let family = Family::of(*net);
        let options = Options {
            cluster_cidr: cluster_cidrs
                .iter()
                .copied()
                .find(|(c, _)| Family::of(*c) == family),
            service_cidr: Some((*net, *bits)),
        };
        kernels.push((family, options, open(flags.netns.as_deref(), family)?));
    }
    let node = super::node_name(flags.node)?;
    let sync_metrics = SyncMetrics::new(&metrics.registry_with_prefix("orca_node_proxy"));
    let settings = Settings {
        node,
        min_sync_period: flags.min_sync_period.into(),
        watch_status: Some((readiness.services.clone(), readiness.slices.clone())),
    };
    let tables = kernels
        .iter_mut()
        .map(|(family, options, kernel)| Table {
            family: *family,
            options: options.clone(),
            backend: kernel,
        })
        .collect();
    tracing::info!(node = %settings.node, "node proxy starting");
    runner::run(
        store,
        settings,
        tables,
        sync_metrics,
        |plan| {
            if plan.full {
                tracing::info!(
                    ops = plan.ops,
                    rules = plan.rules,
                    elements = plan.elements,
                    "table {TABLE} replaced"
                );
            }
            readiness.synced.store(true, Ordering::Relaxed);
        },
        shutdown,
    )
    .await;
    Ok(())
}
