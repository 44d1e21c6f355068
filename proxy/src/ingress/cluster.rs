//! Cluster mode: routes from networking.k8s.io/v1 Ingress objects (class
//! `orca`), their Services and ready EndpointSlice endpoints, and TLS
//! certificates from `kubernetes.io/tls` Secrets, all followed through the
//! core watch pipeline. Every change rebuilds the route table in the
//! background and swaps it in whole; open connections are untouched. A
//! Secret's certificate is parsed once per version of it, and the TLS
//! listeners share one set, replaced only when a TLS section or Secret
//! changed.
//!
//! Conflicts go to the oldest Ingress, for routes and certificates alike,
//! and an Ingress's certificate is served only for the hosts it covers: an
//! Ingress in another namespace cannot take a host name over, nor get a
//! certificate served for a name it was not issued for.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use orca_core::api::{EndpointSlice, Ingress, Object, Secret, Service};
use orca_core::store::Store;
use orca_core::watch::{self, Reader, WatchMetrics};
use tokio::sync::Notify;

use super::config::{LbPolicy, PathType};
use super::routes::{Route, RouteTable};
use super::tls::{Certificates, Parsed, Resolver};
use super::upstream::{Endpoint, Settings, Upstream};
use super::worker::Shared;

/// The ingress class this proxy serves.
pub const INGRESS_CLASS: &str = "orca";

/// Label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How long changes are gathered before one rebuild, so a burst of events
/// (a rollout) costs one table, not hundreds.
const DEBOUNCE: Duration = Duration::from_millis(5);

/// The caches cluster mode reads.
#[derive(Clone)]
pub struct Caches {
    ingresses: Reader<Ingress>,
    services: Reader<Service>,
    slices: Reader<EndpointSlice>,
    secrets: Reader<Secret>,
}

/// Runs one reflector; every event pokes `changed`.
/// Its state goes to `watches` (metrics, rate-limited failure logs, the
/// recovery).
fn follow<K: Object>(
    store: &Store,
    changed: Arc<Notify>,
    watches: &WatchMetrics,
) -> (Reader<K>, impl Stream<Item = ()> + Send) {
    let (reader, writer) = watch::store::<K>();
    let status = watches.status(&K::KIND.to_ascii_lowercase());
    let events = watch::reflector(writer, watch::watcher_with_status(store.all::<K>(), status))
        .map(move |_| changed.notify_one());
    (reader, events)
}

/// Endpoints by (upstream key, address), so health survives rebuilds.
type Registry = HashMap<(String, SocketAddr), Arc<Endpoint>>;

/// Follows the cluster and keeps `shared.routes` (and the TLS resolvers)
/// in step with it, until the future is dropped; sets `listed` once the
/// first table from complete lists is served. The watches' states go to
/// `watches`.
pub async fn run(
    store: Store,
    shared: Arc<Shared>,
    resolvers: Vec<Arc<Resolver>>,
    listed: Arc<AtomicBool>,
    watches: WatchMetrics,
) {
    let changed = Arc::new(Notify::new());
    let (ingresses, a) = follow::<Ingress>(&store, changed.clone(), &watches);
    let (services, b) = follow::<Service>(&store, changed.clone(), &watches);
    let (slices, c) = follow::<EndpointSlice>(&store, changed.clone(), &watches);
    let (secrets, d) = follow::<Secret>(&store, changed.clone(), &watches);
    let caches = Caches {
        ingresses,
        services,
        slices,
        secrets,
    };
    let pump =
        futures::stream::select(futures::stream::select(a, b), futures::stream::select(c, d))
            .for_each(|()| async {});
    let rebuild = async {
        // Nothing is served from a partial view of the cluster.
        caches.ingresses.wait_until_synced().await;
        caches.services.wait_until_synced().await;
        caches.slices.wait_until_synced().await;
        caches.secrets.wait_until_synced().await;
        let mut registry = Registry::new();
        let mut parsed = ParsedCerts::new();
        let mut served: Option<Vec<TlsEntry>> = None;
        loop {
            let started = Instant::now();
            let (table, tls) = build(&caches, &mut registry);
            let routes = table.len();
            shared.routes.store(Arc::new(table));
            if served.as_ref() != Some(&tls) {
                let certs = Arc::new(certificates(&caches, &tls, &mut parsed));
                for r in &resolvers {
                    r.replace_shared(certs.clone());
                }
                served = Some(tls);
            }
            listed.store(true, Ordering::Relaxed);
            tracing::debug!(routes, took = ?started.elapsed(), "routes rebuilt from the cluster");
            changed.notified().await;
            tokio::time::sleep(DEBOUNCE).await;
        }
    };
    tokio::select! {
        () = pump => {}
        () = rebuild => {}
    }
}

/// Whether an Ingress is ours.
fn is_ours(ing: &Ingress) -> bool {
    let spec_class = ing
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref());
    let annotation = ing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubernetes.io/ingress.class"))
        .map(String::as_str);
    spec_class.or(annotation) == Some(INGRESS_CLASS)
}

/// EndpointSlices by (namespace, service), indexed once per rebuild so
/// resolving each backend does not scan every slice of the cluster.
type SlicesByService = HashMap<(String, String), Vec<Arc<EndpointSlice>>>;

fn slices_by_service(caches: &Caches) -> SlicesByService {
    let mut index = SlicesByService::new();
    for slice in caches.slices.list() {
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned();
        if let (Some(ns), Some(service)) = (slice.metadata.namespace.clone(), service) {
            index.entry((ns, service)).or_default().push(slice);
        }
    }
    index
}

/// The ready endpoint addresses of `service`'s port `port` (number or name).
fn endpoints_of(
    caches: &Caches,
    slices: &SlicesByService,
    namespace: &str,
    service: &str,
    port: &ServicePortRef,
) -> Vec<SocketAddr> {
    let svc_key = watch::ObjectKey::new(Some(namespace), service);
    let Some(svc) = caches.services.get(&svc_key) else {
        return Vec::new();
    };
    let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref());
    let Some(svc_port) = ports.into_iter().flatten().find(|p| match port {
        ServicePortRef::Number(n) => p.port == *n,
        ServicePortRef::Name(name) => p.name.as_deref() == Some(name.as_str()),
    }) else {
        return Vec::new();
    };
    let port_name = svc_port.name.clone().unwrap_or_default();
    let mut out = Vec::new();
    let owned = slices.get(&(namespace.to_string(), service.to_string()));
    for slice in owned.into_iter().flatten() {
        if slice.address_type == "FQDN" {
            continue;
        }
        let Some(target) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.clone().unwrap_or_default() == port_name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for ep in &slice.endpoints {
            // Unset means ready, as in discovery.k8s.io/v1.
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            for address in &ep.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    out.push(SocketAddr::new(ip, target));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A Service port as an Ingress backend names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ServicePortRef {
    Number(i32),
    Name(String),
}

impl std::fmt::Display for ServicePortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Name(n) => f.write_str(n),
        }
    }
}

/// One TLS section of one of our Ingresses, oldest Ingress first: its
/// hosts, and the version of the Secret it names.
#[derive(Debug, Clone, PartialEq)]
struct TlsEntry {
    ingress: String,
    hosts: Vec<String>,
    secret: watch::ObjectKey,
    version: Option<String>,
}

/// Certificates parsed from Secrets, by Secret and version; `None` for one
/// that failed (logged once).
type ParsedCerts = HashMap<(watch::ObjectKey, Option<String>), Option<Arc<Parsed>>>;

/// The certificate set of `entries`, parsing only Secrets (or versions of
/// them) not parsed before; entries that fail to load are logged and
/// skipped, so one bad Secret cannot take TLS down.
fn certificates(caches: &Caches, entries: &[TlsEntry], parsed: &mut ParsedCerts) -> Certificates {
    let mut next = ParsedCerts::new();
    let mut certs = Certificates::default();
    for entry in entries {
        let id = (entry.secret.clone(), entry.version.clone());
        let cert = parsed.remove(&id).or_else(|| next.get(&id).cloned()).unwrap_or_else(|| {
            let secret = caches.secrets.get(&entry.secret)?;
            let data = secret.data.as_ref()?;
            let field = |k: &str| data.get(k).map(|b| b.0.as_slice());
            let (Some(cert), Some(key)) = (field("tls.crt"), field("tls.key")) else {
                tracing::warn!(secret = %entry.secret, "TLS secret has no tls.crt and tls.key; skipped");
                return None;
            };
            let origin = std::path::PathBuf::from(format!("secret {}", entry.secret));
            Parsed::new(cert, key, &origin, &origin)
                .map(Arc::new)
                .inspect_err(|e| tracing::warn!(error = %e, "TLS secret skipped"))
                .ok()
        });
        if let Some(cert) = &cert {
            let uncovered = certs.add_covering(cert, &entry.hosts);
            if !uncovered.is_empty() {
                tracing::warn!(ingress = %entry.ingress, secret = %entry.secret, hosts = ?uncovered, "the certificate does not cover these hosts; not served for them");
            }
        }
        next.insert(id, cert);
    }
    *parsed = next;
    certs
}

/// Builds the route table and certificates from the caches.
fn build(caches: &Caches, registry: &mut Registry) -> (RouteTable, Vec<TlsEntry>) {
    let mut upstreams: HashMap<String, Arc<Upstream>> = HashMap::new();
    let mut next = Registry::new();
    let slices = slices_by_service(caches);
    let mut upstream_for =
        |namespace: &str, service: &str, port: &ServicePortRef| -> Arc<Upstream> {
            let key = format!("{namespace}/{service}:{port}");
            if let Some(u) = upstreams.get(&key) {
                return u.clone();
            }
            let endpoints = endpoints_of(caches, &slices, namespace, service, port)
                .into_iter()
                .map(|addr| {
                    let id = (key.clone(), addr);
                    let e = registry
                        .get(&id)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(Endpoint::new(addr)));
                    next.insert(id, e.clone());
                    e
                })
                .collect();
            let u = Arc::new(Upstream::with_endpoints(
                &key,
                endpoints,
                LbPolicy::RoundRobin,
                Settings::default(),
            ));
            upstreams.insert(key, u.clone());
            u
        };
    let mut table = RouteTable::default();
    let mut tls = Vec::new();
    let mut ingresses: Vec<_> = caches
        .ingresses
        .list()
        .into_iter()
        .filter(|i| is_ours(i))
        .collect();
    // Older Ingresses win conflicts, as with other controllers.
    ingresses.sort_by(|a, b| {
        (
            a.metadata.creation_timestamp.as_ref().map(|t| t.0),
            &a.metadata.namespace,
            &a.metadata.name,
        )
            .cmp(&(
                b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                &b.metadata.namespace,
                &b.metadata.name,
            ))
    });
    let mut defaults = Vec::new();
    for ing in &ingresses {
        let namespace = ing.metadata.namespace.as_deref().unwrap_or("default");
        let name = ing.metadata.name.as_deref().unwrap_or_default();
        let Some(spec) = &ing.spec else { continue };
        let backend_of = |b: &k8s_openapi::api::networking::v1::IngressBackend| {
            let svc = b.service.as_ref()?;
            let port = svc.port.as_ref()?;
            let port = match (&port.number, &port.name) {
                (Some(n), _) => ServicePortRef::Number(*n),
                (None, Some(n)) => ServicePortRef::Name(n.clone()),
                (None, None) => return None,
            };
            Some((svc.name.clone(), port))
        };
        for (i, rule) in spec.rules.iter().flatten().enumerate() {
            for (j, path) in rule.http.iter().flat_map(|h| &h.paths).enumerate() {
                let Some((service, port)) = backend_of(&path.backend) else {
                    continue;
                };
                let path_type = if path.path_type == "Exact" {
                    PathType::Exact
                } else {
                    PathType::Prefix
                };
                let route_name = format!("{namespace}/{name}/rules[{i}].paths[{j}]");
                let upstream = upstream_for(namespace, &service, &port);
                let route = Route::new(route_name, Vec::new(), vec![(upstream, 1)], false);
                let p = path.path.as_deref().unwrap_or("/");
                table.insert(rule.host.as_deref(), p, path_type, Arc::new(route));
            }
        }
        if let Some((service, port)) = spec.default_backend.as_ref().and_then(backend_of) {
            let upstream = upstream_for(namespace, &service, &port);
            defaults.push(Route::new(
                format!("{namespace}/{name}/defaultBackend"),
                Vec::new(),
                vec![(upstream, 1)],
                false,
            ));
        }
        for t in spec.tls.iter().flatten() {
            let Some(secret_name) = &t.secret_name else {
                continue;
            };
            let key = watch::ObjectKey::new(Some(namespace), secret_name);
            let Some(secret) = caches.secrets.get(&key) else {
                tracing::warn!(ingress = %format!("{namespace}/{name}"), secret = %secret_name, "TLS secret not found");
                continue;
            };
            tls.push(TlsEntry {
                ingress: format!("{namespace}/{name}"),
                hosts: t.hosts.clone().unwrap_or_default(),
                secret: key,
                version: secret.metadata.resource_version.clone(),
            });
        }
    }
    // Default backends catch what no rule matched: inserted last, they lose
    // every tie.
    for route in defaults {
        table.insert(None, "/", PathType::Prefix, Arc::new(route));
    }
    *registry = next;
    (table, tls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use orca_core::store::StoreConfig;

    /// `listed` (what `/healthz` reports) stays down while the cluster
    /// cannot be listed, and rises once it is; the store is connected
    /// while etcd answers, as `orca ingress --etcd` checks at start.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn routes_count_as_listed_only_once_the_cluster_is_listed() {
        let mut etcd = orca_testkit::Etcd::start();
        let store = Store::connect(StoreConfig::new(etcd.endpoint()))
            .await
            .expect("connects to etcd");
        etcd.kill();
        let listed = Arc::new(AtomicBool::new(false));
        let follower = tokio::spawn(run(
            store,
            Arc::new(Shared::for_tests()),
            Vec::new(),
            listed.clone(),
            WatchMetrics::default(),
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !listed.load(Ordering::Relaxed),
            "nothing was listed while etcd was down"
        );

        tokio::task::block_in_place(|| etcd.restart());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !listed.load(Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "listed once etcd is back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        follower.abort();
    }
}
