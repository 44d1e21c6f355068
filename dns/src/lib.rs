//! Orca's node-local DNS responder (after NodeLocal DNSCache and CoreDNS's
//! kubernetes plugin): pods ask it for `SVC`, `SVC.NS` and
//! `SVC.NS.svc.DOMAIN` (their `/etc/resolv.conf` search list makes the
//! short forms the full one) and get the Service's ClusterIP, or a
//! headless Service's ready endpoints, from the node's shared caches;
//! names outside the cluster domain go to the host's resolver.
//!
//! Messages are read and written by [`message`], a small parser of its
//! own: the responder needs one question, EDNS and five record types, and
//! a parser of that size costs less to build and audit than a general DNS
//! library and its dependencies.

pub mod message;
mod server;
pub mod zone;

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use orca_core::api::{EndpointSlice, Service};
use orca_core::telemetry::Metrics;
use orca_core::watch::Informers;
use socket2::{Domain, Protocol, Socket, Type};

pub use server::{DnsMetrics, Responder};
pub use zone::Zone;

/// The host's resolver configuration, where the default upstream is read.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// How long a forwarded query waits for the upstream by default (glibc's
/// resolver waits 5 s per try; a shorter wait leaves the client time to
/// retry).
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the responder could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster domain is not a valid DNS name.
    #[error("cluster domain {0:?} is not a valid DNS name")]
    Domain(String),
    /// No upstream was given and the host's resolv.conf names none.
    #[error("{path} names no nameserver to forward other names to; give one with --dns-upstream")]
    NoUpstream {
        /// The file read.
        path: PathBuf,
    },
    /// The host's resolv.conf could not be read.
    #[error("reading {path} for the upstream nameserver: {source}")]
    ResolvConf {
        /// The file read.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The upstream is the responder itself.
    #[error("the upstream {0} is the responder's own address: queries would loop")]
    Loop(SocketAddr),
    /// The listening sockets could not be made.
    #[error("listening for DNS on {addr}{}: {source}", in_netns(.netns))]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The network namespace, if not the process's own.
        netns: Option<PathBuf>,
        /// What failed.
        source: io::Error,
    },
}

fn in_netns(netns: &Option<PathBuf>) -> String {
    netns
        .as_ref()
        .map(|p| format!(" in network namespace {}", p.display()))
        .unwrap_or_default()
}

/// How the responder runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where it listens, over UDP and TCP.
    pub listen: SocketAddr,
    /// The network namespace (a path like /run/netns/NAME) its sockets
    /// live in, as the node's pods do; forwarded queries leave from the
    /// process's own.
    pub netns: Option<PathBuf>,
    /// The cluster domain, like `cluster.local`.
    pub domain: String,
    /// Where names outside the domain are forwarded.
    pub upstream: SocketAddr,
    /// How long the upstream has to answer before the client gets SERVFAIL.
    pub upstream_timeout: Duration,
}

/// The first `nameserver` of a resolv.conf (port 53).
pub fn upstream_from(path: &Path) -> Result<SocketAddr, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ResolvConf {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
        .ok_or_else(|| Error::NoUpstream {
            path: path.to_path_buf(),
        })
}

/// The UDP socket and TCP listener on `addr`, made in `netns` if given.
/// They may bind an address not assigned yet (the pods' bridge address,
/// which the kubelet sets up alongside).
pub fn bind(
    addr: SocketAddr,
    netns: Option<&Path>,
) -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let Some(netns) = netns else {
        return bind_here(addr);
    };
    // A socket stays in the namespace it was made in, so only a short-lived
    // thread has to enter it.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let ns = File::open(netns)?;
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                bind_here(addr)
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the binding thread panicked")))
    })
}

fn bind_here(addr: SocketAddr) -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let domain = Domain::for_address(addr);
    let freebind = |s: &Socket| match addr {
        SocketAddr::V4(_) => s.set_freebind_v4(true),
        SocketAddr::V6(_) => s.set_freebind_v6(true),
    };
    let udp = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    freebind(&udp)?;
    udp.set_nonblocking(true)?;
    udp.bind(&addr.into())?;
    let tcp = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    freebind(&tcp)?;
    tcp.set_reuse_address(true)?;
    tcp.set_nonblocking(true)?;
    tcp.bind(&addr.into())?;
    tcp.listen(1024)?;
    Ok((udp.into(), tcp.into()))
}

/// Serves DNS on `settings.listen` from `informers`' Service and
/// EndpointSlice caches until `shutdown`.
pub async fn run(
    informers: &Informers,
    settings: Settings,
    metrics: &Metrics,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    if settings.upstream == settings.listen {
        return Err(Error::Loop(settings.upstream));
    }
    let zone = Zone::new(
        &settings.domain,
        informers.all::<Service>().reader(),
        informers.all::<EndpointSlice>().reader(),
    )
    .ok_or_else(|| Error::Domain(settings.domain.clone()))?;
    let bind_error = |source| Error::Bind {
        addr: settings.listen,
        netns: settings.netns.clone(),
        source,
    };
    let (udp, tcp) = bind(settings.listen, settings.netns.as_deref()).map_err(bind_error)?;
    let udp = tokio::net::UdpSocket::from_std(udp).map_err(bind_error)?;
    let tcp = tokio::net::TcpListener::from_std(tcp).map_err(bind_error)?;
    let responder = Arc::new(Responder::new(
        zone,
        settings.upstream,
        settings.upstream_timeout,
        DnsMetrics::new(metrics),
    ));
    tracing::info!(
        listen = %settings.listen,
        domain = %settings.domain,
        upstream = %settings.upstream,
        "DNS responder serving"
    );
    tokio::select! {
        () = shutdown => {}
        () = server::serve_udp(udp, Arc::clone(&responder)) => {}
        () = server::serve_tcp(tcp, responder) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_is_the_first_nameserver() {
        let dir = std::env::temp_dir().join(format!("orca-dns-resolv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        std::fs::write(
            &path,
            "# generated\nsearch example.com\nnameserver fe80::1%eth0\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n",
        )
        .unwrap();
        // A scoped address cannot be used as a socket address: skipped.
        assert_eq!(
            upstream_from(&path).unwrap(),
            "192.0.2.53:53".parse().unwrap()
        );
        std::fs::write(&path, "search example.com\n").unwrap();
        let err = upstream_from(&path).unwrap_err().to_string();
        assert!(err.contains("names no nameserver"), "{err}");
        assert!(err.contains("--dns-upstream"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        let err = upstream_from(&dir.join("missing")).unwrap_err().to_string();
        assert!(err.starts_with("reading "), "{err}");
    }
}
