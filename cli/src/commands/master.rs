//! `orca master --config FILE [--workers N]`: the master's components as
//! tasks of one process, driven by the cluster in etcd (`--etcd`). Today
//! that is the ingress proxy in cluster mode: listeners, limits and the
//! admin server (`/metrics`, `/healthz`, `/routes`) from FILE, routes and
//! certificates from the cluster's Ingress objects. The scheduler and the
//! controllers do not exist yet; they will join it here.

use orca_core::store::Store;

use super::ingress;

/// Arguments of `orca master`.
#[derive(clap::Args)]
// Its own group name: the flattened `ingress::Args` takes "Args".
#[group(id = "master")]
pub struct Args {
    #[command(flatten)]
    ingress: ingress::Args,
}

/// Runs the master's components until SIGINT or SIGTERM. Their
/// configuration is checked before `store` (etcd, which must answer) is
/// awaited.
pub async fn run(
    args: Args,
    store: impl Future<Output = anyhow::Result<Store>>,
) -> anyhow::Result<bool> {
    ingress::run(args.ingress, Some(store)).await
}
