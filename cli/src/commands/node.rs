//! `orca node --node NAME`: the per-node agent, its components as tasks of
//! one process: the kubelet, the node proxy and, when configured, the log
//! shipper and the DNS responder.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use orca_core::store::Store;
use orca_core::telemetry::{self, Metrics};
use orca_core::watch::Informers;

use super::{dns, kubelet, node_proxy};

/// Arguments of `orca node`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    proxy: node_proxy::Flags,
    #[command(flatten)]
    kubelet: kubelet::KubeletFlags,
    #[command(flatten)]
    dns: dns::NodeFlags,
    /// The log shipper's configuration file; without one no logs are shipped.
    #[arg(long)]
    pub logshipper_config: Option<PathBuf>,
    /// Address of the node's /metrics and /healthz (the log shipper serves
    /// its own, as its file says).
    #[arg(long)]
    pub admin: Option<SocketAddr>,
}

/// Runs the node's components until SIGINT or SIGTERM; the first that
/// fails stops the node with its error.
pub async fn run(
    args: Args,
    store: impl Future<Output = anyhow::Result<Store>>,
) -> anyhow::Result<bool> {
    telemetry::init_tracing("info");
    // Every configuration is read before anything starts.
    let shipper_config: Option<orca_logshipper::config::Config> = args
        .logshipper_config
        .as_deref()
        .map(|path| orca_core::config::load(Some(path), |_| {}))
        .transpose()?;
    let mut kubelet_config = kubelet::load(args.kubelet.config.as_deref())?;
    let dns_settings = match args.dns.listen {
        Some(listen) => Some(dns_settings(
            listen,
            args.dns,
            &mut kubelet_config,
            &args.proxy,
        )?),
        None => None,
    };
    let node = super::node_name(args.proxy.node.clone())?;
    let kubelet_settings =
        kubelet::settings(node.clone(), kubelet_config, args.proxy.netns.clone())?;
    let store = store.await?;
    let metrics = Metrics::new();
    // One list and watch per kind for the components that share caches.
    let informers = Informers::new(store.clone(), &metrics);
    let readiness = node_proxy::Readiness::new(&metrics, args.proxy.unhealthy_after);
    if let Some(addr) = args.admin {
        node_proxy::spawn_admin(addr, metrics.clone(), readiness.clone()).await?;
    }
    let proxy = async {
        node_proxy::serve(
            args.proxy,
            &metrics,
            readiness,
            store.clone(),
            telemetry::shutdown_signal(),
        )
        .await
        .context("node proxy")
    };
    let shipper = async {
        match shipper_config {
            Some(config) => {
                let cluster = orca_logshipper::Cluster {
                    store: &store,
                    node: &node,
                };
                orca_logshipper::run(config, Some(cluster), telemetry::shutdown_signal())
                    .await
                    .context("log shipper")
            }
            None => Ok(()),
        }
    };
    let kubelet = async {
        orca_kubelet::agent::run(&informers, kubelet_settings, telemetry::shutdown_signal())
            .await
            .context("kubelet")
    };
    let dns = async {
        match dns_settings {
            Some(settings) => {
                orca_dns::run(&informers, settings, &metrics, telemetry::shutdown_signal())
                    .await
                    .context("DNS responder")
            }
            None => Ok(()),
        }
    };
    tokio::try_join!(kubelet, proxy, shipper, dns)?;
    Ok(true)
}

/// The DNS responder's settings, and the kubelet's made to agree with
/// them: pods are pointed at the responder (`cluster_dns`) unless the
/// kubelet's file names another server, and both use one cluster domain.
fn dns_settings(
    listen: SocketAddr,
    flags: dns::NodeFlags,
    kubelet_config: &mut orca_kubelet::config::Config,
    proxy: &node_proxy::Flags,
) -> anyhow::Result<orca_dns::Settings> {
    let default_domain = orca_kubelet::config::Config::default().cluster_domain;
    if let Some(domain) = flags.cluster_domain {
        // The pods' search list and the responder must name one domain.
        anyhow::ensure!(
            kubelet_config.cluster_domain == domain
                || kubelet_config.cluster_domain == default_domain,
            "--cluster-domain {domain} differs from the kubelet's cluster_domain {}: pods would search a domain the DNS responder does not answer",
            kubelet_config.cluster_domain
        );
        kubelet_config.cluster_domain = domain;
    }
    // resolv.conf has no port: pods can only use a responder on 53.
    if kubelet_config.cluster_dns.is_none() && listen.port() == 53 && !listen.ip().is_unspecified()
    {
        kubelet_config.cluster_dns = Some(listen.ip());
    }
    dns::settings(
        listen,
        kubelet_config.cluster_domain.clone(),
        flags.dns_upstream,
        proxy.netns.clone(),
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn settings(
        flags: &[&str],
        kubelet: orca_kubelet::config::Config,
    ) -> anyhow::Result<(orca_dns::Settings, orca_kubelet::config::Config)> {
        let mut all = vec!["orca", "--dns-upstream", "127.0.0.1:5300"];
        all.extend_from_slice(flags);
        let args = Cli::try_parse_from(all)?.args;
        let mut kubelet = kubelet;
        let listen = args.dns.listen.expect("--dns given");
        let dns = dns_settings(listen, args.dns, &mut kubelet, &args.proxy)?;
        Ok((dns, kubelet))
    }

    #[test]
    fn pods_are_pointed_at_a_responder_on_port_53() {
        let (dns, kubelet) = settings(&["--dns", "10.244.1.1"], Default::default()).unwrap();
        assert_eq!(dns.listen, "10.244.1.1:53".parse().unwrap());
        assert_eq!(dns.domain, "cluster.local");
        assert_eq!(kubelet.cluster_dns, Some("10.244.1.1".parse().unwrap()));
        // resolv.conf cannot name another port, and the kubelet's own choice stays.
        let (_, kubelet) = settings(&["--dns", "127.0.0.1:5353"], Default::default()).unwrap();
        assert_eq!(kubelet.cluster_dns, None);
        let own = orca_kubelet::config::Config {
            cluster_dns: Some("10.96.0.10".parse().unwrap()),
            ..Default::default()
        };
        let (_, kubelet) = settings(&["--dns", "10.244.1.1"], own).unwrap();
        assert_eq!(kubelet.cluster_dns, Some("10.96.0.10".parse().unwrap()));
    }

    #[test]
    fn the_responder_and_the_pods_share_one_domain() {
        let (dns, kubelet) = settings(
            &["--dns", "10.244.1.1", "--cluster-domain", "orca.test"],
            Default::default(),
        )
        .unwrap();
        assert_eq!(dns.domain, "orca.test");
        assert_eq!(kubelet.cluster_domain, "orca.test");
        let other = orca_kubelet::config::Config {
            cluster_domain: "corp.example".into(),
            ..Default::default()
        };
        let (dns, _) = settings(&["--dns", "10.244.1.1"], other.clone()).unwrap();
        assert_eq!(dns.domain, "corp.example");
        let err = settings(
            &["--dns", "10.244.1.1", "--cluster-domain", "orca.test"],
            other,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("differs from the kubelet's cluster_domain"),
            "{err}"
        );
    }
}
