//! `orca dns --listen ADDR`: the node-local DNS responder alone; `orca node
//! --dns ADDR` runs it beside the kubelet, on the same shared caches.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use orca_core::store::Store;
use orca_core::telemetry::{self, Metrics};
use orca_core::watch::Informers;
use orca_dns::Settings;

/// An address with an optional port: `10.244.1.1` is `10.244.1.1:53`.
fn dns_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{s:?} is not an address like 10.244.1.1 or 127.0.0.1:5353"))
}

/// The DNS responder's settings in `orca node`.
#[derive(clap::Args)]
pub struct NodeFlags {
    /// Serve the cluster's DNS on this address, over UDP and TCP (like the
    /// pods' bridge address, 10.244.1.1; port 53 unless given). Pods use it
    /// when the kubelet's `cluster_dns` names its address, which it does by
    /// default when the port is 53.
    #[arg(long = "dns", value_parser = dns_addr)]
    pub listen: Option<SocketAddr>,
    /// The cluster domain it answers for. Default: the kubelet's
    /// `cluster_domain` (cluster.local).
    #[arg(long)]
    pub cluster_domain: Option<String>,
    /// Where names outside the cluster domain are forwarded. Default: the
    /// first nameserver of the node's /etc/resolv.conf.
    #[arg(long, value_parser = dns_addr)]
    pub dns_upstream: Option<SocketAddr>,
}

/// Arguments of `orca dns`.
#[derive(clap::Args)]
pub struct Args {
    /// The address to serve on, over UDP and TCP (port 53 unless given).
    #[arg(long, value_parser = dns_addr)]
    pub listen: SocketAddr,
    /// The cluster domain it answers for.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Where names outside the cluster domain are forwarded. Default: the
    /// first nameserver of /etc/resolv.conf.
    #[arg(long, value_parser = dns_addr)]
    pub dns_upstream: Option<SocketAddr>,
    /// The network namespace (a path like /run/netns/NAME) to listen in,
    /// as the node's pods live there; etcd and the upstream are reached
    /// from the process's own.
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Address of /metrics and /healthz.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
}

/// The responder's settings: the upstream is read from the host's
/// resolv.conf when not given.
pub fn settings(
    listen: SocketAddr,
    domain: String,
    upstream: Option<SocketAddr>,
    netns: Option<PathBuf>,
) -> anyhow::Result<Settings> {
    let upstream = match upstream {
        Some(addr) => addr,
        None => orca_dns::upstream_from(Path::new(orca_dns::RESOLV_CONF))?,
    };
    Ok(Settings {
        listen,
        netns,
        domain,
        upstream,
        upstream_timeout: orca_dns::DEFAULT_UPSTREAM_TIMEOUT,
    })
}

/// Runs the responder until SIGINT or SIGTERM.
pub async fn run(
    args: Args,
    store: impl Future<Output = anyhow::Result<Store>>,
) -> anyhow::Result<bool> {
    telemetry::init_tracing("info");
    let settings = settings(
        args.listen,
        args.cluster_domain,
        args.dns_upstream,
        args.netns,
    )?;
    let store = store.await?;
    let metrics = Metrics::new();
    let informers = Informers::new(store, &metrics);
    super::serve_metrics(args.admin, &metrics).await?;
    orca_dns::run(&informers, settings, &metrics, telemetry::shutdown_signal())
        .await
        .context("DNS responder")?;
    Ok(true)
}
