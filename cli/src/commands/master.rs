//! `orca master --config FILE [--workers N]`: the master's components as
//! tasks of one process, driven by the cluster in etcd (`--etcd`): the
//! ingress proxy on every master (listeners, limits and the admin server
//! from FILE, routes from the cluster's Ingresses), and, on the one master
//! that holds the leader lease, the scheduler and the control loops.
//! `orca scheduler` and `orca controller-manager` run those alone, also
//! under leader election.

use std::sync::Arc;

use anyhow::Context;
use orca_core::config::Duration;
use orca_core::leader::{ElectionConfig, campaign};
use orca_core::store::{Cidr, Network, Store};
use orca_core::telemetry::{self, Metrics};
use orca_core::watch::Informers;

use super::ingress;

/// The pause before campaigning again after etcd failed to answer.
const CAMPAIGN_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Which control loops a process runs when it leads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Loops {
    /// The scheduler and every controller.
    All,
    /// The scheduler alone.
    Scheduler,
    /// The controllers alone.
    Controllers,
}

impl Loops {
    fn election_key(self) -> &'static str {
        match self {
            Loops::All => "/orca/leader/control-plane",
            Loops::Scheduler => "/orca/leader/scheduler",
            Loops::Controllers => "/orca/leader/controller-manager",
        }
    }
}

/// The control plane's settings, shared by `orca master`, `orca scheduler`
/// and `orca controller-manager`.
#[derive(clap::Args, Clone)]
pub struct ControlFlags {
    /// This process's name in the leader election. Default: the host name
    /// and process id.
    #[arg(long)]
    pub identity: Option<String>,
    /// How long a leader that stops renewing keeps the lease.
    #[arg(long, default_value = "15s")]
    pub leader_ttl: Duration,
    /// The ClusterIP ranges, comma-separated (one per family), recorded
    /// in the cluster on first start.
    #[arg(long, default_value = "10.96.0.0/12,fd00:96::/108")]
    pub service_cidr: String,
    /// The pod ranges, comma-separated, split into a /24 (IPv6: /64) per node.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,
    /// A node whose Lease is not renewed for this long is unreachable:
    /// `Ready=Unknown`, tainted, its pods out of their Services.
    #[arg(long, default_value = "40s")]
    pub node_monitor_grace_period: Duration,
    /// How long pods stay on an unreachable node unless they tolerate it
    /// for another time (Kubernetes' default toleration).
    #[arg(long, default_value = "300s")]
    pub pod_eviction_timeout: Duration,
    /// The images the cluster allows: patterns of normalised references
    /// (`docker.io/library/*`), comma-separated, recorded in the cluster and
    /// checked as pods and pod templates are written. Not given, the
    /// policy recorded before (if any) stays.
    #[arg(long)]
    pub image_allow: Option<String>,
    /// How often every node is looked at.
    #[arg(long, default_value = "5s")]
    pub node_monitor_period: Duration,
}

impl ControlFlags {
    fn network(&self) -> anyhow::Result<Network> {
        let parse = |flag: &str, list: &str| -> anyhow::Result<Vec<Cidr>> {
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse::<Cidr>()
                        .map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
                })
                .collect()
        };
        Ok(Network {
            service_cidrs: parse("service-cidr", &self.service_cidr)?,
            cluster_cidrs: parse("cluster-cidr", &self.cluster_cidr)?,
            ..Network::default()
        })
    }
}

/// Arguments of `orca master`.
#[derive(clap::Args)]
// Its own group name: the flattened `ingress::Args` takes "Args".
#[group(id = "master")]
pub struct Args {
    #[command(flatten)]
    ingress: ingress::Args,
    #[command(flatten)]
    control: ControlFlags,
}

/// Runs the master's components until SIGINT or SIGTERM. Their
/// configuration is checked before `store` (etcd, which must answer) is
/// awaited.
pub async fn run(
    args: Args,
    store: impl Future<Output = anyhow::Result<Store>>,
) -> anyhow::Result<bool> {
    let network = args.control.network()?;
    let metrics = Metrics::new();
    let control = args.control.clone();
    let registry = metrics.clone();
    ingress::run_with(args.ingress, Some(store), metrics, move |store| {
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(e) = control_plane(store, control, network, registry, Loops::All).await {
                tracing::error!("control plane: {e:#}");
                std::process::exit(1);
            }
        });
    })
    .await
}

/// Campaigns for the lease and, while it leads, runs `loops` on the
/// process's shared caches with every write fenced by the leadership;
/// campaigns again when leadership is lost, until SIGINT or SIGTERM.
pub async fn control_plane(
    store: Store,
    flags: ControlFlags,
    network: Network,
    metrics: Metrics,
    loops: Loops,
) -> anyhow::Result<()> {
    store
        .set_network(&network)
        .await
        .context("recording the cluster's address ranges")?;
    if let Some(list) = &flags.image_allow {
        let allow = list
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        store
            .set_image_policy(&orca_core::store::ImagePolicy { allow })
            .await
            .context("recording the cluster's image policy")?;
    }
    let identity = flags.identity.clone().unwrap_or_else(|| {
        let host = super::node_name(None).unwrap_or_else(|_| "master".into());
        format!("{host}-{}", std::process::id())
    });
    let election = ElectionConfig {
        ttl: flags.leader_ttl.0,
        ..ElectionConfig::new(loops.election_key(), identity.clone())
    };
    let settings = orca_controllers::Settings {
        nodes: orca_controllers::nodes::Timing {
            grace: flags.node_monitor_grace_period.0,
            eviction: flags.pod_eviction_timeout.0,
            period: flags.node_monitor_period.0,
        },
        cluster_cidr: network.cluster_cidrs.first().copied(),
    };
    // One cache per kind for the whole process: it outlives a leadership,
    // so a master that leads again starts from warm caches.
    let informers = Arc::new(Informers::new(store.clone(), &metrics));
    let mut shutdown = std::pin::pin!(telemetry::shutdown_signal());
    loop {
        let leadership = tokio::select! {
            () = &mut shutdown => return Ok(()),
            won = campaign(&store, &election) => match won {
                Ok(leadership) => leadership,
                // etcd away: the ingress goes on serving; campaign again.
                Err(e) => {
                    tracing::warn!(error = %e, "leader election failed; retrying");
                    tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        () = tokio::time::sleep(CAMPAIGN_RETRY) => continue,
                    }
                }
            },
        };
        tracing::info!(%identity, "leading: control loops start");
        let fenced = store.with_guard(leadership.guard());
        let lost = async { leadership.lost().await };
        let stop = async {
            tokio::select! {
                () = lost => false,
                () = &mut shutdown => true,
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let work = async {
            match loops {
                Loops::All => {
                    tokio::join!(
                        orca_scheduler::run(&informers, fenced.clone(), &metrics, stopped()),
                        orca_controllers::run(
                            &informers,
                            fenced.clone(),
                            settings.clone(),
                            stopped()
                        ),
                    );
                }
                Loops::Scheduler => {
                    orca_scheduler::run(&informers, fenced.clone(), &metrics, stopped()).await
                }
                Loops::Controllers => {
                    orca_controllers::run(&informers, fenced.clone(), settings.clone(), stopped())
                        .await;
                }
            }
        };
        let watch_stop = async {
            let quit = stop.await;
            let _ = stop_tx.send(true);
            quit
        };
        let ((), quit) = tokio::join!(work, watch_stop);
        if quit {
            let _ = leadership.resign().await;
            return Ok(());
        }
        tracing::warn!(%identity, "leadership lost: control loops stopped; campaigning again");
    }
}

/// Arguments of `orca scheduler` and `orca controller-manager`.
#[derive(clap::Args)]
pub struct AloneArgs {
    #[command(flatten)]
    control: ControlFlags,
    /// Address of /metrics and /healthz.
    #[arg(long)]
    pub admin: Option<std::net::SocketAddr>,
}

/// Runs `loops` alone (with their own leader election) until SIGINT or SIGTERM.
pub async fn run_alone(
    args: AloneArgs,
    store: impl Future<Output = anyhow::Result<Store>>,
    loops: Loops,
) -> anyhow::Result<bool> {
    telemetry::init_tracing("info");
    let network = args.control.network()?;
    let store = store.await?;
    let metrics = Metrics::new();
    super::serve_metrics(args.admin, &metrics).await?;
    control_plane(store, args.control, network, metrics, loops).await?;
    Ok(true)
}
