//! Cluster mode: routes from networking.k8s.io/v1 Ingress objects (class
//! `orca`), their Services and ready EndpointSlice endpoints, and TLS
//! certificates from `kubernetes.io/tls` Secrets, all followed through the
//! core watch pipeline.
//!
//! A change costs what it changes. An EndpointSlice or Service change
//! replaces the endpoints of that Service's upstreams in place, and the
//! route table stands. An Ingress change rebuilds the table in the
//! background and swaps it in whole, keeping every upstream it still names
//! (with its endpoints' health and its retry budget). A Secret change reads
//! the TLS sections again; a Secret's certificate is parsed once per version
//! of it, and the TLS listeners share one set, replaced only when a TLS
//! section or its Secret changed. Open connections are untouched.
//!
//! Conflicts go to the oldest Ingress, for routes and certificates alike,
//! and an Ingress's certificate is served only for the hosts it covers: an
//! Ingress in another namespace cannot take a host name over, nor get a
//! certificate served for a name it was not issued for.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::networking::v1::IngressBackend;
use orca_core::api::{EndpointSlice, Ingress, Object, Secret, Service};
use orca_core::store::Store;
use orca_core::watch::{self, Change, ObjectKey, Reader, WatchMetrics};
use tokio::sync::Notify;

use super::config::{LbPolicy, PathType};
use super::routes::{Route, RouteTable};
use super::tls::{Certificates, Parsed, Resolver};
use super::upstream::{Settings, Upstream};
use super::worker::Shared;

/// The ingress class this proxy serves.
pub const INGRESS_CLASS: &str = "orca";

/// Label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How long changes are gathered before one update, so a burst of events
/// (a rollout) costs one update, not hundreds.
const DEBOUNCE: Duration = Duration::from_millis(5);

/// The caches cluster mode reads.
#[derive(Clone)]
pub struct Caches {
    ingresses: Reader<Ingress>,
    services: Reader<Service>,
    slices: Reader<EndpointSlice>,
    secrets: Reader<Secret>,
}

impl Caches {
    /// Cluster mode over these caches.
    pub fn new(
        ingresses: Reader<Ingress>,
        services: Reader<Service>,
        slices: Reader<EndpointSlice>,
        secrets: Reader<Secret>,
    ) -> Self {
        Self {
            ingresses,
            services,
            slices,
            secrets,
        }
    }
}

/// A Service: namespace and name.
type ServiceKey = (String, String);

/// What changed in the caches since the routes were last brought up to
/// date: what the next [`ClusterRoutes::update`] has to redo.
#[derive(Debug, Default)]
pub struct Pending {
    routes: bool,
    tls: bool,
    services: HashSet<ServiceKey>,
    /// Changed EndpointSlices, each with the Service it names now (`None`:
    /// deleted, or it names none).
    slices: HashMap<ObjectKey, Option<ServiceKey>>,
}

/// The object a change is about (`None` for a completed list: its
/// differences came before it as changes of their own).
fn changed<K>(change: &Change<K>) -> Option<&K> {
    match change {
        Change::Applied(o) | Change::Deleted(o) => Some(o),
        Change::Synced => None,
    }
}

impl Pending {
    /// An Ingress changed: the table and the TLS sections are made again.
    pub fn ingress(&mut self, change: &Change<Ingress>) {
        if changed(change).is_some() {
            self.routes = true;
        }
    }

    /// A Secret changed: the TLS sections are read again if it holds a
    /// certificate.
    pub fn secret(&mut self, change: &Change<Secret>) {
        let holds_certificate = changed(change)
            .and_then(|s| s.data.as_ref())
            .is_some_and(|d| d.contains_key("tls.crt"));
        self.tls |= holds_certificate;
    }

    /// A Service changed: its upstreams' endpoints are resolved again (its
    /// ports name them).
    pub fn service(&mut self, change: &Change<Service>) {
        if let Some(svc) = changed(change) {
            let meta = &svc.metadata;
            if let (Some(ns), Some(name)) = (&meta.namespace, &meta.name) {
                self.services.insert((ns.clone(), name.clone()));
            }
        }
    }

    /// An EndpointSlice changed: the endpoints of the Service it names (and
    /// of the one it named before) are resolved again.
    pub fn slice(&mut self, change: &Change<EndpointSlice>) {
        let (slice, gone) = match change {
            Change::Applied(s) => (s, false),
            Change::Deleted(s) => (s, true),
            Change::Synced => return,
        };
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .zip(slice.metadata.namespace.as_ref())
            .map(|(svc, ns)| (ns.clone(), svc.clone()));
        self.slices
            .insert(ObjectKey::of(&**slice), service.filter(|_| !gone));
    }
}

/// Runs one watch into a cache of its own, noting each change the cache
/// makes in `pending` (by `note`) and poking `wake`. Its state goes to
/// `watches` (metrics, rate-limited failure logs, the recovery).
fn follow<K: Object>(
    store: &Store,
    watches: &WatchMetrics,
    pending: Arc<Mutex<Pending>>,
    wake: Arc<Notify>,
    note: fn(&mut Pending, &Change<K>),
) -> (Reader<K>, impl Stream<Item = ()> + Send) {
    let (reader, mut writer) = watch::store::<K>();
    let status = watches.status(&K::KIND.to_ascii_lowercase());
    let events = watch::watcher_with_status(store.all::<K>(), status).map(move |event| {
        if let Ok(event) = &event {
            writer.apply_with(event, |change| {
                note(
                    &mut pending.lock().unwrap_or_else(PoisonError::into_inner),
                    &change,
                );
                wake.notify_one();
            });
        }
    });
    (reader, events)
}

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
    let pending = Arc::new(Mutex::new(Pending::default()));
    let wake = Arc::new(Notify::new());
    let (p, w) = (&pending, &wake);
    let (ingresses, a) = follow(&store, &watches, p.clone(), w.clone(), Pending::ingress);
    let (services, b) = follow(&store, &watches, p.clone(), w.clone(), Pending::service);
    let (slices, c) = follow(&store, &watches, p.clone(), w.clone(), Pending::slice);
    let (secrets, d) = follow(&store, &watches, p.clone(), w.clone(), Pending::secret);
    let caches = Caches::new(ingresses, services, slices, secrets);
    let pump =
        futures::stream::select(futures::stream::select(a, b), futures::stream::select(c, d))
            .for_each(|()| async {});
    let update = async {
        // Nothing is served from a partial view of the cluster.
        caches.ingresses.wait_until_synced().await;
        caches.services.wait_until_synced().await;
        caches.slices.wait_until_synced().await;
        caches.secrets.wait_until_synced().await;
        let mut routes = ClusterRoutes::new(caches.clone());
        loop {
            let started = Instant::now();
            let changes =
                std::mem::take(&mut *pending.lock().unwrap_or_else(PoisonError::into_inner));
            let update = routes.update(changes);
            if let Some(table) = update.routes {
                tracing::debug!(routes = table.len(), took = ?started.elapsed(), "route table rebuilt from the cluster");
                shared.routes.store(Arc::new(table));
            }
            if let Some(certs) = update.certificates {
                let certs = Arc::new(certs);
                for r in &resolvers {
                    r.replace_shared(certs.clone());
                }
            }
            listed.store(true, Ordering::Relaxed);
            wake.notified().await;
            tokio::time::sleep(DEBOUNCE).await;
        }
    };
    tokio::select! {
        () = pump => {}
        () = update => {}
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

/// The Service and port an Ingress backend names.
fn backend_of(b: &IngressBackend) -> Option<(String, ServicePortRef)> {
    let svc = b.service.as_ref()?;
    let port = svc.port.as_ref()?;
    let port = match (&port.number, &port.name) {
        (Some(n), _) => ServicePortRef::Number(*n),
        (None, Some(n)) => ServicePortRef::Name(n.clone()),
        (None, None) => return None,
    };
    Some((svc.name.clone(), port))
}

/// One TLS section of one of our Ingresses, oldest Ingress first: its
/// hosts, and the version of the Secret it names.
#[derive(Debug, Clone, PartialEq)]
struct TlsEntry {
    ingress: String,
    hosts: Vec<String>,
    secret: ObjectKey,
    version: Option<String>,
}

/// Certificates parsed from Secrets, by Secret and version; `None` for one
/// that failed (logged once).
type ParsedCerts = HashMap<(ObjectKey, Option<String>), Option<Arc<Parsed>>>;

/// An upstream the table names: one port of one Service.
struct Backend {
    service: ServiceKey,
    port: ServicePortRef,
    upstream: Arc<Upstream>,
}

/// What an update produced, each only when it changed.
#[derive(Default)]
pub struct Update {
    /// A new route table to serve.
    pub routes: Option<RouteTable>,
    /// A new certificate set for the TLS listeners.
    pub certificates: Option<Certificates>,
}

/// Cluster mode's routes and certificates, brought up to date change by
/// change from the caches.
pub struct ClusterRoutes {
    caches: Caches,
    /// The upstreams the table names, by `namespace/service:port`.
    upstreams: HashMap<String, Backend>,
    /// The keys of those upstreams, by the Service they draw from.
    by_service: HashMap<ServiceKey, Vec<String>>,
    /// EndpointSlices by the Service they name, and the other way round.
    slices: HashMap<ServiceKey, BTreeSet<ObjectKey>>,
    slice_service: HashMap<ObjectKey, ServiceKey>,
    /// Whether a table was made yet (the first update makes one).
    built: bool,
    /// The TLS sections served now (`None` before the first update).
    served: Option<Vec<TlsEntry>>,
    parsed: ParsedCerts,
}

impl ClusterRoutes {
    /// Routes over `caches`, made by the first [`ClusterRoutes::update`].
    pub fn new(caches: Caches) -> Self {
        Self {
            caches,
            upstreams: HashMap::new(),
            by_service: HashMap::new(),
            slices: HashMap::new(),
            slice_service: HashMap::new(),
            built: false,
            served: None,
            parsed: ParsedCerts::new(),
        }
    }

    /// Redoes what `pending` says changed: the table when an Ingress did,
    /// the endpoints of the Services whose Service or slices did (in place),
    /// the certificates when a TLS section or its Secret did.
    pub fn update(&mut self, pending: Pending) -> Update {
        let mut dirty = pending.services;
        for (slice, service) in pending.slices {
            let before = match &service {
                Some(s) => self.slice_service.insert(slice.clone(), s.clone()),
                None => self.slice_service.remove(&slice),
            };
            if let Some(before) = before.filter(|b| Some(b) != service.as_ref()) {
                if let Some(set) = self.slices.get_mut(&before) {
                    set.remove(&slice);
                    if set.is_empty() {
                        self.slices.remove(&before);
                    }
                }
                dirty.insert(before);
            }
            if let Some(service) = service {
                self.slices
                    .entry(service.clone())
                    .or_default()
                    .insert(slice);
                dirty.insert(service);
            }
        }
        let rebuild = pending.routes || !self.built;
        let ingresses = if rebuild || pending.tls {
            self.ours_oldest_first()
        } else {
            Vec::new()
        };
        let routes = rebuild.then(|| {
            self.built = true;
            self.rebuild(&ingresses, &mut dirty)
        });
        for service in &dirty {
            for key in self.by_service.get(service).into_iter().flatten() {
                let backend = &self.upstreams[key];
                let addrs = self.endpoints_of(&backend.service, &backend.port);
                backend.upstream.set_endpoints(&addrs);
            }
        }
        let mut certificates = None;
        if rebuild || pending.tls {
            let tls = self.tls_entries(&ingresses);
            if self.served.as_ref() != Some(&tls) {
                certificates = Some(self.certificates(&tls));
                self.served = Some(tls);
            }
        }
        Update {
            routes,
            certificates,
        }
    }

    /// Our Ingresses, oldest first: older Ingresses win conflicts, as with
    /// other controllers.
    fn ours_oldest_first(&self) -> Vec<Arc<Ingress>> {
        let mut ingresses: Vec<_> = self
            .caches
            .ingresses
            .list()
            .into_iter()
            .filter(|i| is_ours(i))
            .collect();
        let order = |i: &Ingress| {
            (
                i.metadata.creation_timestamp.as_ref().map(|t| t.0),
                i.metadata.namespace.clone(),
                i.metadata.name.clone(),
            )
        };
        ingresses.sort_by_cached_key(|i| order(i));
        ingresses
    }

    /// The route table of `ingresses`. Upstreams it still names are kept;
    /// new ones start empty, their Services added to `dirty` to be
    /// resolved; the rest are dropped.
    fn rebuild(
        &mut self,
        ingresses: &[Arc<Ingress>],
        dirty: &mut HashSet<ServiceKey>,
    ) -> RouteTable {
        let mut old = std::mem::take(&mut self.upstreams);
        self.by_service.clear();
        let mut upstream_for = |namespace: &str, service: String, port: ServicePortRef| {
            let key = format!("{namespace}/{service}:{port}");
            if let Some(b) = self.upstreams.get(&key) {
                return b.upstream.clone();
            }
            let service = (namespace.to_string(), service);
            let backend = old.remove(&key).unwrap_or_else(|| {
                dirty.insert(service.clone());
                Backend {
                    service: service.clone(),
                    port,
                    upstream: Arc::new(Upstream::with_endpoints(
                        &key,
                        Vec::new(),
                        LbPolicy::RoundRobin,
                        Settings::default(),
                    )),
                }
            });
            let upstream = backend.upstream.clone();
            self.by_service
                .entry(service)
                .or_default()
                .push(key.clone());
            self.upstreams.insert(key, backend);
            upstream
        };
        let mut table = RouteTable::default();
        let mut defaults = Vec::new();
        for ing in ingresses {
            let namespace = ing.metadata.namespace.as_deref().unwrap_or("default");
            let name = ing.metadata.name.as_deref().unwrap_or_default();
            let Some(spec) = &ing.spec else { continue };
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
                    let upstream = upstream_for(namespace, service, port);
                    let route = Route::new(route_name, Vec::new(), vec![(upstream, 1)], false);
                    let p = path.path.as_deref().unwrap_or("/");
                    table.insert(rule.host.as_deref(), p, path_type, Arc::new(route));
                }
            }
            if let Some((service, port)) = spec.default_backend.as_ref().and_then(backend_of) {
                let upstream = upstream_for(namespace, service, port);
                defaults.push(Route::new(
                    format!("{namespace}/{name}/defaultBackend"),
                    Vec::new(),
                    vec![(upstream, 1)],
                    false,
                ));
            }
        }
        // Default backends catch what no rule matched: inserted last, they
        // lose every tie.
        for route in defaults {
            table.insert(None, "/", PathType::Prefix, Arc::new(route));
        }
        table
    }

    /// The ready endpoint addresses of `service`'s port `port` (number or
    /// name).
    fn endpoints_of(&self, service: &ServiceKey, port: &ServicePortRef) -> Vec<SocketAddr> {
        let (namespace, name) = service;
        let Some(svc) = self
            .caches
            .services
            .get(&ObjectKey::new(Some(namespace), name))
        else {
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
        for key in self.slices.get(service).into_iter().flatten() {
            let Some(slice) = self.caches.slices.get(key) else {
                continue;
            };
            if slice.address_type == "FQDN" {
                continue;
            }
            let Some(target) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
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

    /// The TLS sections of `ingresses`, with the versions of their Secrets.
    fn tls_entries(&self, ingresses: &[Arc<Ingress>]) -> Vec<TlsEntry> {
        let mut tls = Vec::new();
        for ing in ingresses {
            let namespace = ing.metadata.namespace.as_deref().unwrap_or("default");
            let name = ing.metadata.name.as_deref().unwrap_or_default();
            let sections = ing.spec.iter().flat_map(|s| s.tls.iter().flatten());
            for t in sections {
                let Some(secret_name) = &t.secret_name else {
                    continue;
                };
                let key = ObjectKey::new(Some(namespace), secret_name);
                let Some(secret) = self.caches.secrets.get(&key) else {
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
        tls
    }

    /// The certificate set of `entries`, parsing only Secrets (or versions
    /// of them) not parsed before; entries that fail to load are logged
    /// and skipped, so one bad Secret cannot take TLS down.
    fn certificates(&mut self, entries: &[TlsEntry]) -> Certificates {
        let mut next = ParsedCerts::new();
        let mut certs = Certificates::default();
        for entry in entries {
            let id = (entry.secret.clone(), entry.version.clone());
            let cert = self
                .parsed
                .remove(&id)
                .or_else(|| next.get(&id).cloned())
                .unwrap_or_else(|| {
                    let secret = self.caches.secrets.get(&entry.secret)?;
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
        self.parsed = next;
        certs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orca_core::store::StoreConfig;
    use orca_core::watch::{Event, Writer};

    /// Caches fed by hand, and the changes they made, as `run` notes them.
    struct Fed {
        ingresses: Writer<Ingress>,
        services: Writer<Service>,
        slices: Writer<EndpointSlice>,
        pending: Pending,
        routes: ClusterRoutes,
    }

    impl Fed {
        fn new() -> Self {
            let (ingresses, iw) = watch::store();
            let (services, sw) = watch::store();
            let (slices, ew) = watch::store();
            let (secrets, _) = watch::store();
            Self {
                ingresses: iw,
                services: sw,
                slices: ew,
                pending: Pending::default(),
                routes: ClusterRoutes::new(Caches::new(ingresses, services, slices, secrets)),
            }
        }

        fn ingress(&mut self, event: Event<Ingress>) {
            let p = &mut self.pending;
            self.ingresses.apply_with(&event, |c| p.ingress(&c));
        }

        fn service(&mut self, event: Event<Service>) {
            let p = &mut self.pending;
            self.services.apply_with(&event, |c| p.service(&c));
        }

        fn slice(&mut self, event: Event<EndpointSlice>) {
            let p = &mut self.pending;
            self.slices.apply_with(&event, |c| p.slice(&c));
        }

        fn update(&mut self) -> Update {
            self.routes.update(std::mem::take(&mut self.pending))
        }
    }

    fn object<K: serde::de::DeserializeOwned>(json: serde_json::Value) -> K {
        serde_json::from_value(json).unwrap()
    }

    /// An Ingress of ours sending `host`'s `/` to Service `web`, port 80.
    fn ingress(version: &str, host: &str) -> Ingress {
        object(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "resourceVersion": version},
            "spec": {"ingressClassName": INGRESS_CLASS, "rules": [{"host": host, "http": {"paths": [
                {"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}
        }))
    }

    fn service() -> Service {
        object(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "resourceVersion": "1"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))
    }

    /// Slice `name` of Service `web` with ready endpoints at `ips`, port 8080.
    fn slice(name: &str, version: &str, ips: &[&str]) -> EndpointSlice {
        let endpoints: Vec<_> = ips
            .iter()
            .map(|ip| serde_json::json!({"addresses": [ip], "conditions": {"ready": true}}))
            .collect();
        object(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": version,
                         "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": endpoints
        }))
    }

    fn upstream_of(table: &RouteTable, host: &str) -> Arc<Upstream> {
        let route = table.find(host, "/", &|_| None).expect("a route");
        route.upstreams().next().expect("an upstream").0.clone()
    }

    fn addrs(u: &Upstream) -> Vec<String> {
        u.endpoints().iter().map(|e| e.addr.to_string()).collect()
    }

    /// Endpoint and Service changes swap an upstream's endpoints in place
    /// (the table stands, and a known endpoint keeps its health); an
    /// Ingress change makes a new table around the same upstream; one the
    /// table no longer names is let go.
    #[test]
    fn a_change_costs_what_it_changes() {
        let mut fed = Fed::new();
        fed.ingress(Event::Apply(ingress("1", "a.example")));
        fed.service(Event::Apply(service()));
        fed.slice(Event::Apply(slice("web-1", "1", &["10.0.0.1", "10.0.0.2"])));
        let first = fed.update().routes.expect("the first update makes a table");
        let web = upstream_of(&first, "a.example");
        assert_eq!(addrs(&web), ["10.0.0.1:8080", "10.0.0.2:8080"]);
        web.endpoints()[0].set_healthy(false);

        fed.slice(Event::Apply(slice("web-2", "2", &["10.0.0.3"])));
        fed.slice(Event::Apply(slice("web-1", "3", &["10.0.0.1"])));
        assert!(
            fed.update().routes.is_none(),
            "endpoints alone keep the table"
        );
        assert_eq!(addrs(&web), ["10.0.0.1:8080", "10.0.0.3:8080"]);
        assert!(
            !web.endpoints()[0].healthy(),
            "a known endpoint keeps its health"
        );

        fed.slice(Event::Delete(slice("web-2", "4", &["10.0.0.3"])));
        let mut renamed = service();
        renamed.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].name = Some("web".into());
        fed.service(Event::Apply(renamed));
        assert!(fed.update().routes.is_none());
        assert!(
            addrs(&web).is_empty(),
            "no slice port named as the Service's port"
        );
        fed.service(Event::Apply(service()));
        fed.update();
        assert_eq!(addrs(&web), ["10.0.0.1:8080"]);

        fed.ingress(Event::Apply(ingress("2", "b.example")));
        let second = fed
            .update()
            .routes
            .expect("an Ingress change makes a table");
        assert!(second.find("a.example", "/", &|_| None).is_none());
        assert!(Arc::ptr_eq(&upstream_of(&second, "b.example"), &web));

        fed.ingress(Event::Delete(ingress("3", "b.example")));
        let third = fed.update().routes.expect("a table without the Ingress");
        assert!(third.is_empty());
        drop((first, second));
        assert_eq!(Arc::strong_count(&web), 1, "the upstream is let go");
    }

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
