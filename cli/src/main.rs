//! `orca`: the command-line client (and, as later components land, every
//! Orca process). Parsing and wiring only; the work lives in `orca-core`.

mod commands;
mod manifest;
mod printer;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use orca_core::store::{Store, StoreConfig};

/// Orca: a container orchestrator that speaks Kubernetes manifests.
#[derive(Parser)]
#[command(name = "orca", version, about)]
struct Cli {
    /// etcd client URL [default: http://127.0.0.1:2379].
    #[arg(long, global = true, env = "ORCA_ETCD")]
    etcd: Option<String>,
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
}

/// Where etcd is when neither `--etcd` nor `ORCA_ETCD` says.
const DEFAULT_ETCD: &str = "http://127.0.0.1:2379";

async fn connect(endpoint: &Option<String>) -> anyhow::Result<Store> {
    let endpoint = endpoint.as_deref().unwrap_or(DEFAULT_ETCD);
    Ok(Store::connect(StoreConfig::new(endpoint)).await?)
}

/// Like `connect`, and checks that etcd answers: a long-running process
/// retries a watch that fails later, but an etcd it cannot reach at start
/// is a mistake to report, not to retry forever.
async fn connect_checked(endpoint: &Option<String>) -> anyhow::Result<Store> {
    let store = connect(endpoint).await?;
    store.ping().await?;
    Ok(store)
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Apply(args) => {
            // Every document is read and validated before etcd is contacted,
            // so a bad file writes nothing.
            let docs = manifest::load(&args.filename, args.namespace.as_deref())?;
            commands::apply::run(&connect(&cli.etcd).await?, docs).await
        }
        Command::Get(args) => commands::get::run(&connect(&cli.etcd).await?, args).await,
        Command::Delete(args) => {
            let docs = match &args.filename {
                Some(f) => Some(manifest::load(f, args.namespace.as_deref())?),
                None => None,
            };
            commands::delete::run(&connect(&cli.etcd).await?, args, docs).await
        }
        Command::Describe(args) => commands::describe::run(&connect(&cli.etcd).await?, args).await,
        Command::Scale(args) => commands::scale::run(&connect(&cli.etcd).await?, args).await,
        Command::Patch(args) => commands::patch::run(&connect(&cli.etcd).await?, args).await,
        Command::Rollout(args) => commands::rollout::run(&connect(&cli.etcd).await?, args).await,
        Command::Ingress(args) => {
            let cluster = cli.etcd.is_some().then(|| connect_checked(&cli.etcd));
            commands::ingress::run(args, cluster).await
        }
        Command::Logshipper(args) => {
            let cluster = match &cli.etcd {
                Some(_) => Some(connect(&cli.etcd).await?),
                None => None,
            };
            commands::logshipper::run(args, cluster).await
        }
        Command::Master(args) => commands::master::run(args, connect_checked(&cli.etcd)).await,
        Command::Scheduler(args) => {
            let loops = commands::master::Loops::Scheduler;
            commands::master::run_alone(args, connect_checked(&cli.etcd), loops).await
        }
        Command::ControllerManager(args) => {
            let loops = commands::master::Loops::Controllers;
            commands::master::run_alone(args, connect_checked(&cli.etcd), loops).await
        }
        Command::Node(args) => commands::node::run(args, connect(&cli.etcd)).await,
        Command::Kubelet(args) => commands::kubelet::run(args, connect(&cli.etcd)).await,
        Command::Logs(args) => commands::logs::logs(args, connect_checked(&cli.etcd).await?).await,
        Command::Exec(args) => commands::logs::exec(args, connect_checked(&cli.etcd).await?).await,
        Command::HollowNode(args) => {
            commands::hollow_node::run(args, connect_checked(&cli.etcd)).await
        }
        Command::NodeProxy(args) => commands::node_proxy::run(args, connect(&cli.etcd)).await,
        Command::Dns(args) => commands::dns::run(args, connect(&cli.etcd)).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime");
    let result = runtime.and_then(|rt| rt.block_on(run(cli)));
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
