//! One file per verb.

pub mod apply;
mod change;
pub mod delete;
pub mod describe;
pub mod dns;
pub mod get;
pub mod hollow_node;
pub mod ingress;
pub mod kubelet;
pub mod logs;
pub mod logshipper;
pub mod master;
pub mod node;
pub mod node_proxy;
pub mod patch;
pub mod rollout;
pub mod scale;
pub mod up;

use anyhow::Context;
use orca_core::api::Kind;
use orca_core::store::DEFAULT_NAMESPACE;

/// The kind a user named on the command line.
pub fn kind_arg(name: &str) -> anyhow::Result<&'static Kind> {
    Kind::lookup(name).with_context(|| {
        let known: Vec<&str> = Kind::all().iter().map(|k| k.plural).collect();
        format!(
            "the server doesn't have a resource type {name:?} (known: {})",
            known.join(", ")
        )
    })
}

/// The namespace a command addresses: the one given, else `default` for a
/// namespaced kind (as kubectl's context does); none for a cluster-scoped one.
pub fn namespace_arg<'a>(kind: &Kind, given: Option<&'a str>) -> Option<&'a str> {
    kind.namespaced.then(|| given.unwrap_or(DEFAULT_NAMESPACE))
}

/// This node's name: the one given, else the host name.
pub fn node_name(given: Option<String>) -> anyhow::Result<String> {
    given
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .context("--node is required: the host name is unknown")
}

/// Serves the process's `/metrics` and `/healthz` on `addr`, if given,
/// until SIGINT or SIGTERM.
pub async fn serve_metrics(
    addr: Option<std::net::SocketAddr>,
    metrics: &orca_core::telemetry::Metrics,
) -> anyhow::Result<()> {
    use orca_core::telemetry;
    if let Some(addr) = addr {
        let listener = telemetry::bind_admin(addr).await?;
        let admin = telemetry::Admin::new(metrics.clone());
        tokio::spawn(telemetry::serve_admin(
            listener,
            admin,
            telemetry::shutdown_signal(),
        ));
    }
    Ok(())
}
