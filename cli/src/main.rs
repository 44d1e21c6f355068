//! `orca`: the command-line client (and, as later components land, every
//! Orca process). Parsing and wiring only; the work lives in `orca-core`.

mod commands;
mod local;
mod manifest;
mod printer;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use local::client::ClientFile;
use orca_core::store::{Store, StoreConfig, TlsFiles};

/// Orca: a container orchestrator that speaks Kubernetes manifests.
#[derive(Parser)]
#[command(name = "orca", version, about)]
struct Cli {
    /// etcd client URL [default: http://127.0.0.1:2379].
    #[arg(long, global = true, env = "ORCA_ETCD")]
    etcd: Option<String>,
    /// The CA of etcd's certificate, for an etcd that serves TLS.
    #[arg(long, global = true, env = "ORCA_ETCD_CA", requires_all = ["etcd_cert", "etcd_key"])]
    etcd_ca: Option<PathBuf>,
    /// The client certificate etcd checks.
    #[arg(long, global = true, env = "ORCA_ETCD_CERT", requires_all = ["etcd_ca", "etcd_key"])]
    etcd_cert: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long, global = true, env = "ORCA_ETCD_KEY", requires_all = ["etcd_ca", "etcd_cert"])]
    etcd_key: Option<PathBuf>,
    /// A cluster file (as `orca up` writes: etcd, certificates, network
    /// namespace) [default: the default cluster's, when neither it nor
    /// --etcd is given and it exists].
    #[arg(long, global = true, env = "ORCA_CLUSTER")]
    cluster: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or update every object in FILE, DIR or - (stdin).
    Apply(commands::apply::Args),
    /// List objects of a kind, or show one.
    Get(commands::get::Args),
    /// Delete the objects of a file, or named objects of a kind.
    Delete(commands::delete::Args),
    /// Show one object in detail.
    Describe(commands::describe::Args),
    /// Set the number of replicas of a Deployment or ReplicaSet.
    Scale(commands::scale::Args),
    /// Change an object with a JSON merge patch.
    Patch(commands::patch::Args),
    /// Follow and steer a Deployment's rollout.
    Rollout(commands::rollout::Args),
    /// Run the ingress proxy alone, from a configuration file; given
    /// `--etcd` (or `ORCA_ETCD`), its routes follow the cluster's Ingresses.
    Ingress(commands::ingress::Args),
    /// Run the log shipper alone, from a configuration file.
    Logshipper(commands::logshipper::Args),
    /// Run a master: the ingress proxy in cluster mode and, while this
    /// master leads, the scheduler and the controllers, as tasks of one process.
    Master(commands::master::Args),
    /// Run the scheduler alone (leader-elected).
    Scheduler(commands::master::AloneArgs),
    /// Run the controllers alone (leader-elected).
    ControllerManager(commands::master::AloneArgs),
    /// Run hollow nodes: registered, heartbeating, reporting their pods
    /// running, without running anything (for tests and benchmarks).
    HollowNode(commands::hollow_node::Args),
    /// Run a node: the kubelet, the node proxy, the log shipper and the DNS
    /// responder as tasks of one process.
    Node(commands::node::Args),
    /// Run the kubelet alone: the pods bound to this node.
    Kubelet(commands::kubelet::Args),
    /// Print a container's logs (from its node's kubelet).
    Logs(commands::logs::Args),
    /// Run a command in a container (non-interactive).
    Exec(commands::logs::ExecArgs),
    /// Run the node proxy (nftables Service load balancing) alone.
    NodeProxy(commands::node_proxy::Args),
    /// Run the node-local DNS responder alone: Service names from the
    /// cluster, other names forwarded.
    Dns(commands::dns::Args),
    /// Bring up a local cluster: etcd, masters and nodes, each node in a
    /// network namespace of its own.
    Up(commands::up::UpArgs),
    /// Remove a local cluster `orca up` made, all of it.
    Down(commands::up::DownArgs),
}

/// Where and how a command reaches etcd.
struct Target {
    endpoint: String,
    tls: Option<TlsFiles>,
}

/// Where etcd is when neither `--etcd` nor `ORCA_ETCD` says.
const DEFAULT_ETCD: &str = "http://127.0.0.1:2379";

/// Works out how to reach etcd: `--cluster` (or the default cluster's
/// file, when nothing else is said) names etcd, the certificates and the
/// network namespace, which the process joins now, before any thread
/// starts; `--etcd` and `--etcd-ca/cert/key` say it directly.
fn target(cli: &Cli) -> anyhow::Result<Target> {
    let file = match &cli.cluster {
        Some(path) => Some(ClientFile::load(path)?),
        None if cli.etcd.is_none() => {
            let path = ClientFile::path(std::path::Path::new(local::client::DEFAULT_STATE));
            // Only commands a person types look for it: a component is
            // always told where its cluster is.
            let client = matches!(
                cli.command,
                Command::Apply(_)
                    | Command::Get(_)
                    | Command::Delete(_)
                    | Command::Describe(_)
                    | Command::Scale(_)
                    | Command::Patch(_)
                    | Command::Rollout(_)
                    | Command::Logs(_)
                    | Command::Exec(_)
            );
            if client && path.exists() {
                Some(ClientFile::load(&path)?)
            } else {
                None
            }
        }
        None => None,
    };
    let tls = match (&cli.etcd_ca, &cli.etcd_cert, &cli.etcd_key) {
        (Some(ca), Some(cert), Some(key)) => Some(TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => file.as_ref().map(ClientFile::tls),
    };
    if let Some(netns) = file.as_ref().and_then(|f| f.netns.as_deref()) {
        local::client::join(netns)?;
    }
    let endpoint = cli
        .etcd
        .clone()
        .or_else(|| file.map(|f| f.etcd))
        .unwrap_or_else(|| DEFAULT_ETCD.to_string());
    Ok(Target { endpoint, tls })
}

async fn connect(target: &Target) -> anyhow::Result<Store> {
    let mut config = StoreConfig::new(target.endpoint.clone());
    config.tls = target.tls.clone();
    Ok(Store::connect(config).await?)
}

/// Like `connect`, and checks that etcd answers: a long-running process
/// retries a watch that fails later, but an etcd it cannot reach at start
/// is a mistake to report, not to retry forever.
async fn connect_checked(target: &Target) -> anyhow::Result<Store> {
    let store = connect(target).await?;
    store.ping().await?;
    Ok(store)
}

async fn run(cli: Cli, target: Target) -> anyhow::Result<bool> {
    let given = cli.etcd.is_some() || cli.cluster.is_some();
    match cli.command {
        Command::Apply(args) => {
            // Every document is read and validated before etcd is contacted,
            // so a bad file writes nothing.
            let docs = manifest::load(&args.filename, args.namespace.as_deref())?;
            commands::apply::run(&connect(&target).await?, docs).await
        }
        Command::Get(args) => commands::get::run(&connect(&target).await?, args).await,
        Command::Delete(args) => {
            let docs = match &args.filename {
                Some(f) => Some(manifest::load(f, args.namespace.as_deref())?),
                None => None,
            };
            commands::delete::run(&connect(&target).await?, args, docs).await
        }
        Command::Describe(args) => commands::describe::run(&connect(&target).await?, args).await,
        Command::Scale(args) => commands::scale::run(&connect(&target).await?, args).await,
        Command::Patch(args) => commands::patch::run(&connect(&target).await?, args).await,
        Command::Rollout(args) => commands::rollout::run(&connect(&target).await?, args).await,
        Command::Ingress(args) => {
            let cluster = given.then(|| connect_checked(&target));
            commands::ingress::run(args, cluster).await
        }
        Command::Logshipper(args) => {
            let cluster = match given {
                true => Some(connect(&target).await?),
                false => None,
            };
            commands::logshipper::run(args, cluster).await
        }
        Command::Master(args) => commands::master::run(args, connect_checked(&target)).await,
        Command::Scheduler(args) => {
            let loops = commands::master::Loops::Scheduler;
            commands::master::run_alone(args, connect_checked(&target), loops).await
        }
        Command::ControllerManager(args) => {
            let loops = commands::master::Loops::Controllers;
            commands::master::run_alone(args, connect_checked(&target), loops).await
        }
        Command::Node(args) => commands::node::run(args, connect(&target)).await,
        Command::Kubelet(args) => commands::kubelet::run(args, connect(&target)).await,
        Command::Logs(args) => commands::logs::logs(args, connect_checked(&target).await?).await,
        Command::Exec(args) => commands::logs::exec(args, connect_checked(&target).await?).await,
        Command::HollowNode(args) => {
            commands::hollow_node::run(args, connect_checked(&target)).await
        }
        Command::NodeProxy(args) => commands::node_proxy::run(args, connect(&target)).await,
        Command::Dns(args) => commands::dns::run(args, connect(&target)).await,
        Command::Up(args) => commands::up::up(args).await,
        Command::Down(args) => commands::up::down(args).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = target(&cli).and_then(|target| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(run(cli, target))
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        // Errors of single objects were already printed one per line.
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
