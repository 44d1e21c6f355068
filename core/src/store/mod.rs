//! The one etcd client every component uses: typed create / get / list /
//! update / update_status / delete / watch over `etcd-client`.
//!
//! Objects live at `/registry/{plural}/{namespace}/{name}` (cluster-scoped:
//! `/registry/{plural}/{name}`) as JSON. `metadata.resourceVersion` is the
//! key's etcd `mod_revision` and is never stored; every write is a
//! transaction guarded by it, so a stale writer gets a conflict instead of
//! overwriting someone else's change.

mod images;
mod services;

use std::marker::PhantomData;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, Txn, TxnOp,
    TxnOpResponse, TxnResponse, WatchOptions,
};
use futures::stream::BoxStream;
use futures::{StreamExt, stream};
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::{Map, Value};

pub use images::{IMAGES_KEY, ImagePolicy};
pub use services::{Cidr, NETWORK_KEY, Network};

use crate::api::{Cached, Kind, Namespace, Object, Pod, kind_of};
use crate::telemetry::Metrics;
use crate::validation::{FieldError, Invalid};

/// Namespace objects land in when a manifest names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Root of every key Orca writes.
const ROOT: &str = "/registry";

/// Where the node view of bound pods lives: `{NODE_VIEW}/{node}/{ns}/{name}`
/// holds a copy of each pod bound to `node`, written in the same
/// transaction (so at the same revision) as the pod itself. etcd cannot
/// filter a watch by `spec.nodeName`; a node watches this prefix instead of
/// every pod of the cluster (see the README's storage contract).
const NODE_VIEW: &str = "/registry/podsbynode";

/// Objects fetched per etcd range request while listing.
const LIST_PAGE: i64 = 500;

/// Random Service addresses tried before a create gives up (each attempt
/// collides only if another Service holds every address drawn).
const ALLOCATION_ATTEMPTS: usize = 16;

/// Pods one [`Api::bind_all`] transaction takes at most (etcd allows 128
/// operations a transaction; a binding is two).
pub const BIND_BATCH: usize = 60;

/// Attempts of [`Api::modify`] before a conflict is given back to the caller.
const MODIFY_ATTEMPTS: u32 = 8;
/// First pause between [`Api::modify`] attempts; doubled per conflict.
const MODIFY_FIRST_PAUSE: Duration = Duration::from_millis(10);

/// Names tried for an object with `metadata.generateName` before giving up.
const GENERATE_NAME_ATTEMPTS: usize = 8;
/// The characters of a generated name's suffix, as Kubernetes picks them
/// (no vowels, no look-alikes, so no words and no ambiguity).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// Length of a generated name's random suffix.
const SUFFIX_LEN: usize = 5;
/// Longest `generateName` prefix kept, so a generated name stays a valid
/// DNS label (63 characters).
const MAX_GENERATE_PREFIX: usize = 63 - SUFFIX_LEN;

/// Errors of the store, named for what the caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// etcd could not be reached or did not answer in time.
    #[error("cannot reach etcd at {endpoint}: {message}")]
    Unavailable {
        /// The endpoint that was tried.
        endpoint: String,
        /// The underlying cause, in one line.
        message: String,
    },
    /// The object does not exist.
    #[error("{plural} {name:?} not found")]
    NotFound {
        /// Lower-case plural of the kind.
        plural: String,
        /// Object name.
        name: String,
    },
    /// An object of that name already exists.
    #[error("{plural} {name:?} already exists")]
    AlreadyExists {
        /// Lower-case plural of the kind.
        plural: String,
        /// Object name.
        name: String,
    },
    /// The object changed since it was read; re-read and try again.
    #[error(
        "Operation cannot be fulfilled on {plural} {name:?}: the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict {
        /// Lower-case plural of the kind.
        plural: String,
        /// Object name.
        name: String,
    },
    /// The object failed validation; nothing was written.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The write was made under a leadership this process no longer holds.
    #[error("not the leader any more (lease key {key}); the write was refused")]
    NotLeader {
        /// The election key whose ownership was checked.
        key: String,
    },
    /// The watch start revision has been compacted away; re-list.
    #[error("revision {requested} has been compacted (oldest kept: {compacted})")]
    Compacted {
        /// The revision the watch asked for.
        requested: i64,
        /// The compaction revision reported by etcd.
        compacted: i64,
    },
    /// A stored value could not be decoded.
    #[error("stored object at {key} is corrupt: {message}")]
    Corrupt {
        /// The etcd key.
        key: String,
        /// What failed to decode.
        message: String,
    },
    /// A namespaced kind was addressed without a namespace.
    #[error("{plural} {name:?}: a namespace is required for a namespaced kind")]
    NamespaceRequired {
        /// Lower-case plural of the kind.
        plural: String,
        /// Object name.
        name: String,
    },
    /// Any other error etcd reported.
    #[error("etcd at {endpoint}: {message}")]
    Etcd {
        /// The endpoint in use.
        endpoint: String,
        /// etcd's message.
        message: String,
    },
}

impl Error {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Etcd { .. })
    }
}

/// Store result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// etcd client URLs, comma-separated, e.g. `http://127.0.0.1:2379` or
    /// `https://10.0.0.1:2379,https://10.0.0.2:2379` (a cluster's members).
    pub endpoint: String,
    /// The CA and client certificate for an etcd that serves only TLS
    /// with client certificates; `None` for plain TCP.
    pub tls: Option<TlsFiles>,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for one request.
    pub request_timeout: Duration,
}

impl StoreConfig {
    /// Defaults for `endpoint`: a few seconds to connect and per request, so an
    /// unreachable etcd is reported quickly.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            tls: None,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// The PEM files of a TLS client of etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signed etcd's serving certificate.
    pub ca: std::path::PathBuf,
    /// This client's certificate, which etcd checks against its CA.
    pub cert: std::path::PathBuf,
    /// The certificate's private key.
    pub key: std::path::PathBuf,
}

impl TlsFiles {
    /// Reads the three files into etcd-client's options.
    fn options(&self) -> Result<etcd_client::TlsOptions> {
        let read = |what: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| Error::Unavailable {
                endpoint: path.display().to_string(),
                message: format!("cannot read the etcd {what}: {e}"),
            })
        };
        let ca = read("CA certificate", &self.ca)?;
        let cert = read("client certificate", &self.cert)?;
        let key = read("client key", &self.key)?;
        Ok(etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(ca))
            .identity(etcd_client::Identity::from_pem(cert, key)))
    }
}

/// A write precondition that holds only while this process leads: the
/// election key still exists with the create revision it had when this
/// process won. A deposed leader's writes fail with [`Error::NotLeader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// The election key.
    pub key: String,
    /// Its create revision when leadership was won.
    pub create_revision: i64,
}

/// The finalizer that holds an owner deleted with `--cascade=orphan` until
/// its dependents no longer name it.
pub const FINALIZER_ORPHAN: &str = "orphan";
/// The finalizer that holds an owner deleted with `--cascade=foreground`
/// until its dependents are gone.
pub const FINALIZER_FOREGROUND: &str = "foregroundDeletion";

/// The kinds whose dependents the garbage collector follows; only their
/// deletion can be held for a foreground or orphan cascade.
pub const CASCADE_OWNERS: [&str; 3] = ["deployments", "replicasets", "services"];

/// The finalizer that holds a Namespace being deleted until everything in
/// it is gone.
pub const FINALIZER_NAMESPACE: &str = "kubernetes";

/// What happens to an object's dependents (by `ownerReferences`) when it is
/// deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// The object goes at once; the garbage collector deletes its dependents.
    Background,
    /// The object stays (marked for deletion) until its dependents are gone.
    Foreground,
    /// The dependents stay, no longer owned; then the object goes.
    Orphan,
}

impl Propagation {
    fn finalizer(self) -> Option<&'static str> {
        match self {
            Propagation::Background => None,
            Propagation::Foreground => Some(FINALIZER_FOREGROUND),
            Propagation::Orphan => Some(FINALIZER_ORPHAN),
        }
    }
}

/// Options of a delete.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeleteOptions {
    /// Grace period for pods on a node; `Some(0)` deletes at once.
    pub grace_period_seconds: Option<i64>,
    /// What happens to the object's dependents (default: background).
    pub propagation: Option<Propagation>,
}

/// What a delete did.
#[derive(Debug, Clone)]
pub enum Deleted<T> {
    /// The object is gone; this is its last state.
    Gone(T),
    /// Deletion is in progress (finalizers or graceful pod termination): the
    /// object now carries `deletionTimestamp`.
    Pending(T),
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent<T> {
    /// The object was created.
    Added(T),
    /// The object was changed.
    Modified(T),
    /// The object was removed; this is its last state, with the revision of
    /// the deletion as its resourceVersion.
    Deleted(T),
    /// Nothing changed up to this revision (etcd progress notification).
    Progress(i64),
}

/// Objects of one list, read at one etcd revision.
#[derive(Debug, Clone)]
pub struct List<T> {
    /// The objects, ordered by key.
    pub items: Vec<T>,
    /// The revision the list was read at; watch from `revision + 1`.
    pub revision: i64,
}

/// One page of a list read at one etcd revision.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The page's objects, ordered by key.
    pub items: Vec<T>,
    /// The revision every page of the list is read at.
    pub revision: i64,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Vec<u8>>,
}

/// The etcd-backed object store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    members: Members,
    config: StoreConfig,
    guard: Option<Guard>,
    metrics: StoreMetrics,
}

/// One etcd client per member, used one at a time, as etcd's own Go client
/// pins an endpoint: a request that cannot reach its member moves every
/// later one to the next. (etcd-client's balancer keeps sending to a member
/// that is down: its requests fail at once, so it looks the least loaded.)
#[derive(Clone)]
struct Members {
    clients: std::sync::Arc<[Client]>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Members {
    /// The member in use and its index.
    fn current(&self) -> (usize, Client) {
        let index = self.current.load(std::sync::atomic::Ordering::Relaxed) % self.clients.len();
        (index, self.clients[index].clone())
    }

    /// Moves on from member `index` unless another request already did.
    fn failed(&self, index: usize) {
        let next = (index + 1) % self.clients.len();
        let _ = self.current.compare_exchange(
            index,
            next,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// Whether `e` says the member could not be reached at all (refused, no
/// route, no connection): the request never got there, so any request,
/// a write too, may go to another member.
fn unreachable(e: &etcd_client::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::NotConnected
            )
        {
            return true;
        }
        // Some layers of tonic's chain hold the OS error as text only.
        let text = err.to_string();
        if [
            "Connection refused",
            "No route to host",
            "Network is unreachable",
        ]
        .iter()
        .any(|t| text.contains(t))
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// Labels naming one stored key.
type KeyLabels = Vec<(&'static str, String)>;

/// What the store counts; clones share the counters.
#[derive(Debug, Clone, Default)]
struct StoreMetrics {
    /// Stored values skipped because they did not decode, by key.
    corrupt: Family<KeyLabels, Counter>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("endpoint", &self.config.endpoint)
            .field("guard", &self.guard)
            .finish()
    }
}

/// Key of one object. A namespaced kind needs its namespace: there is no
/// silent default here.
pub fn object_key(kind: &Kind, namespace: Option<&str>, name: &str) -> Result<String> {
    match (kind.namespaced, namespace) {
        (true, Some(ns)) => Ok(format!("{ROOT}/{}/{ns}/{name}", kind.plural)),
        (true, None) => Err(Error::NamespaceRequired {
            plural: kind.plural.into(),
            name: name.into(),
        }),
        (false, _) => Ok(format!("{ROOT}/{}/{name}", kind.plural)),
    }
}

fn join(cidrs: &[Cidr]) -> String {
    cidrs
        .iter()
        .map(Cidr::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Key of a bound pod's copy in its node's view.
fn node_view_key(node: &str, namespace: &str, name: &str) -> String {
    format!("{NODE_VIEW}/{node}/{namespace}/{name}")
}

/// The node a stored pod is bound to.
fn node_of(obj: &Value) -> Option<&str> {
    obj.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
}

/// Key prefix of a kind, or of a kind within one namespace.
pub fn kind_prefix(kind: &Kind, namespace: Option<&str>) -> String {
    match namespace.filter(|_| kind.namespaced) {
        Some(ns) => format!("{ROOT}/{}/{ns}/", kind.plural),
        None => format!("{ROOT}/{}/", kind.plural),
    }
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    // Keys here are ASCII and end in '/', so the last byte never overflows.
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

fn now_rfc3339() -> String {
    rfc3339_after(0)
}

/// The time `seconds` from now, as Kubernetes writes timestamps.
fn rfc3339_after(seconds: i64) -> String {
    let now = jiff::Timestamp::now();
    now.checked_add(jiff::SignedDuration::from_secs(seconds))
        .unwrap_or(now)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    let root = obj
        .as_object_mut()
        .expect("objects are JSON maps (checked on decode)");
    root.entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .expect("metadata is a map (checked on decode)")
}

/// Everything of an object but its metadata and status: what `generation`
/// counts changes of.
fn spec_of(obj: &Value) -> Map<String, Value> {
    obj.as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn has_finalizers(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

/// Whether a pod marked for deletion still waits for its kubelet's final
/// delete (a grace period above zero).
fn awaits_kubelet(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .is_some_and(|g| g > 0)
}

/// A name for an object with `generateName`: the prefix (cut so the name
/// stays a DNS label) and five random characters, as Kubernetes makes them.
fn generated_name(prefix: &str) -> String {
    let cut = prefix
        .char_indices()
        .nth(MAX_GENERATE_PREFIX)
        .map_or(prefix.len(), |(i, _)| i);
    let random = uuid::Uuid::new_v4();
    let suffix = random.as_bytes()[..SUFFIX_LEN]
        .iter()
        .map(|b| char::from(SUFFIX_ALPHABET[usize::from(*b) % SUFFIX_ALPHABET.len()]));
    prefix[..cut].chars().chain(suffix).collect()
}

/// The deletes that release the addresses an object removed from the store
/// held (a Service's ClusterIPs and NodePorts).
fn release_ops(kind: &Kind, removed: &Value) -> Vec<TxnOp> {
    match kind.plural {
        "services" => services::release(removed),
        _ => Vec::new(),
    }
}

/// The operations that keep the node view of a pod in step with a write
/// taking it from `before` to `after` (`None`: absent).
fn node_view_ops(
    kind: &Kind,
    before: Option<&Value>,
    after: Option<(&Value, &[u8])>,
) -> Vec<TxnOp> {
    if kind.plural != "pods" {
        return Vec::new();
    }
    let view_key = |obj: &Value| {
        Some(node_view_key(
            node_of(obj)?,
            meta_str(obj, "namespace")?,
            meta_str(obj, "name")?,
        ))
    };
    let old = before.and_then(view_key);
    let new = after.and_then(|(obj, bytes)| Some((view_key(obj)?, bytes)));
    let mut ops = Vec::new();
    if let Some(old) = old.filter(|o| new.as_ref().is_none_or(|(n, _)| n != o)) {
        ops.push(TxnOp::delete(old, None));
    }
    if let Some((key, bytes)) = new {
        ops.push(TxnOp::put(key, bytes.to_vec(), None));
    }
    ops
}

impl Store {
    /// Connects to etcd. The connection itself is lazy; an unreachable
    /// endpoint is reported by the first request.
    pub async fn connect(config: StoreConfig) -> Result<Self> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let Some(tls) = &config.tls {
            options = options.with_tls(tls.options()?);
        }
        let mut clients = Vec::new();
        for endpoint in config
            .endpoint
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let connect = Client::connect([endpoint], Some(options.clone()));
            let client = tokio::time::timeout(config.connect_timeout, connect)
                .await
                .map_err(|_| Error::Unavailable {
                    endpoint: endpoint.to_string(),
                    message: "timed out connecting".into(),
                })?
                .map_err(|e| map_err(endpoint, e))?;
            clients.push(client);
        }
        if clients.is_empty() {
            return Err(Error::Unavailable {
                endpoint: config.endpoint.clone(),
                message: "no etcd endpoint given".into(),
            });
        }
        Ok(Self {
            members: Members {
                clients: clients.into(),
                current: Default::default(),
            },
            config,
            guard: None,
            metrics: StoreMetrics::default(),
        })
    }

    /// A new connection to the same etcd: for traffic that must not queue
    /// behind this connection's (a node's heartbeat behind its watches, as
    /// Kubernetes' kubelet keeps a client of its own for its Lease).
    pub async fn reconnect(&self) -> Result<Self> {
        let mut fresh = Self::connect(self.config.clone()).await?;
        fresh.guard = self.guard.clone();
        Ok(fresh)
    }

    /// Registers the store's metrics (stored values skipped as corrupt, by
    /// key) under `metrics`; once per process.
    pub fn register_metrics(&self, metrics: &Metrics) {
        metrics.register(
            "store_corrupt_objects",
            "Stored values skipped because they do not decode, by etcd key",
            self.metrics.corrupt.clone(),
        );
    }

    /// Logs and counts a stored value that does not decode, so one bad
    /// value costs its own object, not the whole list or watch of its kind.
    fn skip_corrupt(&self, error: &Error) {
        if let Error::Corrupt { key, .. } = error {
            self.metrics
                .corrupt
                .get_or_create(&vec![("key", key.clone())])
                .inc();
        }
        tracing::error!(%error, "skipping a stored object that does not decode");
    }

    /// The endpoint this store talks to.
    pub fn endpoint(&self) -> &str {
        &self.config.endpoint
    }

    /// A store whose every write also requires `guard` to hold.
    pub fn with_guard(&self, guard: Guard) -> Self {
        Self {
            guard: Some(guard),
            ..self.clone()
        }
    }

    /// The raw etcd client, for the pieces of core that need etcd itself
    /// (leases for leader election).
    pub(crate) fn client(&self) -> Client {
        self.members.current().1
    }

    /// Runs `request` on the member in use, and again on the next while
    /// the one it reached cannot be reached at all (a member that is down).
    pub(crate) async fn call<T, F, Fut>(
        &self,
        mut request: F,
    ) -> std::result::Result<T, etcd_client::Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut left = self.members.clients.len();
        loop {
            let (index, client) = self.members.current();
            match request(client).await {
                Err(e) if left > 1 && unreachable(&e) => {
                    self.members.failed(index);
                    left -= 1;
                }
                other => return other,
            }
        }
    }

    /// Moves later requests to the next member when `e` says the one in
    /// use cannot be reached (for streams, which [`Store::call`] cannot retry).
    pub(crate) fn check_reachable(&self, client_index: usize, e: &etcd_client::Error) {
        if unreachable(e) {
            self.members.failed(client_index);
        }
    }

    /// The member in use and its client, to report with [`Store::check_reachable`].
    pub(crate) fn member(&self) -> (usize, Client) {
        self.members.current()
    }

    fn err(&self, e: etcd_client::Error) -> Error {
        map_err(&self.config.endpoint, e)
    }

    /// Checks that etcd answers, with a clear error when it does not.
    pub async fn ping(&self) -> Result<i64> {
        let resp = self
            .call(
                |mut c| async move { c.get(ROOT, Some(GetOptions::new().with_count_only())).await },
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    /// Typed access to the objects of a namespaced kind in `namespace`.
    pub fn api<K: Object<Scope = NamespaceResourceScope>>(&self, namespace: &str) -> Api<K> {
        Api {
            store: self.clone(),
            namespace: Some(namespace.to_string()),
            kind: PhantomData,
        }
    }

    /// Typed access to the objects of a cluster-scoped kind.
    pub fn cluster_api<K: Object<Scope = ClusterResourceScope>>(&self) -> Api<K> {
        Api {
            store: self.clone(),
            namespace: None,
            kind: PhantomData,
        }
    }

    /// Every object of a kind, in every namespace: to list and watch.
    pub fn all<K: Cached>(&self) -> View<K> {
        View::typed(self.clone(), kind_prefix(kind_of::<K::Kind>(), None))
    }

    /// The pods bound to `node`, and only those: to list and watch. Backed
    /// by the node view the store writes beside each bound pod.
    pub fn pods_on_node(&self, node: &str) -> View<Pod> {
        View::typed(self.clone(), format!("{NODE_VIEW}/{node}/"))
    }

    /// The pods bound to any node, through the node views: for a process
    /// that stands in for many nodes (hollow nodes), one watch instead of
    /// one per node.
    pub fn bound_pods(&self) -> View<Pod> {
        View::typed(self.clone(), format!("{NODE_VIEW}/"))
    }

    /// Objects of `kind` in `namespace` (every namespace with `None`), as
    /// JSON: to list and watch without knowing the type.
    pub fn view_values(&self, kind: &'static Kind, namespace: Option<&str>) -> View<Value> {
        View {
            store: self.clone(),
            prefix: kind_prefix(kind, namespace),
            decode: decode_value,
            revision: |obj| {
                obj.pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .and_then(|rv| rv.parse().ok())
                    .unwrap_or_default()
            },
        }
    }

    /// One etcd range read, retried while etcd is unreachable for up to the
    /// request timeout: reads are idempotent, and a brief leader election or
    /// restart of etcd should not fail a caller.
    async fn range(
        &self,
        key: Vec<u8>,
        options: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse> {
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            let result = self
                .call(|mut c| {
                    let (key, options) = (key.clone(), options.clone());
                    async move { c.get(key, options).await }
                })
                .await
                .map_err(|e| self.err(e));
            match result {
                Err(Error::Unavailable { .. })
                    if tokio::time::Instant::now() + pause < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
    }

    /// Reads several keys at one revision, in one request: each key's
    /// value, `None` where it does not exist. The read is linearizable: a
    /// serializable one may miss a write whose watch event is already out
    /// (etcd notifies watchers before the write is visible to new reads),
    /// and a binder reads pods it has just been told of.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>> {
        let txn = Txn::new().and_then(
            keys.iter()
                .map(|k| TxnOp::get(k.as_str(), None))
                .collect::<Vec<_>>(),
        );
        let resp = self.txn(txn).await?;
        Ok(resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(mut got) => got.take_kvs().into_iter().next(),
                _ => None,
            })
            .collect())
    }

    /// Sends one transaction.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.call(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
        .map_err(|e| self.err(e))
    }

    async fn get_kv(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut resp = self.range(key.as_bytes().to_vec(), None).await?;
        Ok(resp.take_kvs().into_iter().next())
    }

    /// Runs a write transaction: `compares` (plus the leader guard) then
    /// `ops`; returns the new revision, or `None` when a compare failed.
    async fn commit(&self, mut compares: Vec<Compare>, ops: Vec<TxnOp>) -> Result<Option<i64>> {
        let mut otherwise = Vec::new();
        if let Some(g) = &self.guard {
            compares.push(Compare::create_revision(
                g.key.as_str(),
                CompareOp::Equal,
                g.create_revision,
            ));
            otherwise.push(TxnOp::get(g.key.as_str(), None));
        }
        let txn = Txn::new().when(compares).and_then(ops).or_else(otherwise);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            return Ok(Some(
                resp.header().map(|h| h.revision()).unwrap_or_default(),
            ));
        }
        if let Some(g) = &self.guard {
            let held = resp.op_responses().into_iter().any(|r| match r {
                TxnOpResponse::Get(g2) => g2
                    .kvs()
                    .first()
                    .is_some_and(|kv| kv.create_revision() == g.create_revision),
                _ => false,
            });
            if !held {
                return Err(Error::NotLeader { key: g.key.clone() });
            }
        }
        Ok(None)
    }

    fn decode_kv(&self, kv: &KeyValue) -> Result<Value> {
        decode_value(kv, kv.mod_revision())
    }

    fn encode(obj: &Value) -> Vec<u8> {
        let mut stored = obj.clone();
        meta_mut(&mut stored).remove("resourceVersion");
        serde_json::to_vec(&stored).expect("JSON values serialise")
    }

    /// Creates an object from its JSON form; fills in namespace (`default`
    /// when the object names none), uid, creationTimestamp and generation,
    /// and a name from `metadata.generateName` when it has none. Fails with
    /// [`Error::AlreadyExists`] rather than replacing anything.
    pub async fn create_value(&self, kind: &Kind, obj: Value) -> Result<Value> {
        let prefix = match (meta_str(&obj, "name"), meta_str(&obj, "generateName")) {
            (None | Some(""), Some(prefix)) if !prefix.is_empty() => prefix.to_string(),
            _ => return self.create_named(kind, obj).await,
        };
        let mut last = None;
        for _ in 0..GENERATE_NAME_ATTEMPTS {
            let mut attempt = obj.clone();
            meta_mut(&mut attempt).insert("name".into(), Value::String(generated_name(&prefix)));
            match self.create_named(kind, attempt).await {
                Err(e @ Error::AlreadyExists { .. }) => last = Some(e),
                other => return other,
            }
        }
        Err(last.expect("at least one attempt was made"))
    }

    async fn create_named(&self, kind: &Kind, obj: Value) -> Result<Value> {
        // The canonical form: explicit nulls and other spellings of "unset"
        // are gone, so a later typed update compares like with like.
        let mut obj = kind.normalize(&obj)?;
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        let namespace = if kind.namespaced {
            Some(
                meta_str(&obj, "namespace")
                    .unwrap_or(DEFAULT_NAMESPACE)
                    .to_string(),
            )
        } else {
            None
        };
        {
            let meta = meta_mut(&mut obj);
            match &namespace {
                Some(ns) => meta.insert("namespace".into(), Value::String(ns.clone())),
                None => meta.remove("namespace"),
            };
            for field in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                meta.remove(field);
            }
            meta.insert(
                "uid".into(),
                Value::String(uuid::Uuid::new_v4().to_string()),
            );
            meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
            meta.insert("generation".into(), Value::from(1));
        }
        let key = object_key(kind, namespace.as_deref(), &name)?;
        self.check_images(kind, &name, &obj, None).await?;
        let network = match kind.plural {
            "services" => Some(self.network().await?),
            _ => None,
        };
        let ns_key = match namespace.as_deref() {
            Some(ns) => Some(object_key(kind_of::<Namespace>(), None, ns)?),
            None => None,
        };
        let mut made_default = false;
        let mut taken = None;
        for _ in 0..ALLOCATION_ATTEMPTS {
            let mut obj = obj.clone();
            let plan = match &network {
                Some(network) => services::plan(network, None, &mut obj, taken.as_ref())?,
                None => services::Plan::default(),
            };
            let value = Self::encode(&obj);
            let mut compares = vec![Compare::version(key.as_str(), CompareOp::Equal, 0)];
            if let Some(ns_key) = &ns_key {
                compares.push(Compare::version(ns_key.as_str(), CompareOp::Greater, 0));
            }
            compares.extend(plan.compares);
            let mut ops = vec![TxnOp::put(key.as_str(), value.clone(), None)];
            ops.extend(node_view_ops(kind, None, Some((&obj, &value))));
            ops.extend(plan.ops);
            if let Some(rev) = self.commit(compares, ops).await? {
                meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rev.to_string()));
                return Ok(obj);
            }
            if self.get_kv(&key).await?.is_some() {
                return Err(Error::AlreadyExists {
                    plural: kind.plural.into(),
                    name,
                });
            }
            if let Some(ns_key) = &ns_key
                && self.get_kv(ns_key).await?.is_none()
            {
                let ns = namespace.as_deref().unwrap_or_default();
                if ns != DEFAULT_NAMESPACE || made_default {
                    return Err(Error::NotFound {
                        plural: "namespaces".into(),
                        name: ns.into(),
                    });
                }
                self.ensure_default_namespace().await?;
                made_default = true;
                continue;
            }
            self.check_requested(kind, &name, plan.requested).await?;
            // A random address was taken meanwhile: draw again, among the
            // ones still free.
            taken = Some(self.taken_addresses().await?);
        }
        Err(Error::Conflict {
            plural: kind.plural.into(),
            name,
        })
    }

    /// After a failed write: an error naming the first address the object
    /// asked for by value that another object holds.
    async fn check_requested(
        &self,
        kind: &Kind,
        name: &str,
        requested: Vec<(String, FieldError)>,
    ) -> Result<()> {
        for (key, error) in requested {
            if self.get_kv(&key).await?.is_some() {
                return Err(Error::Invalid(Invalid {
                    kind: kind.kind.into(),
                    name: name.into(),
                    errors: vec![error],
                }));
            }
        }
        Ok(())
    }

    /// The Service addresses held now, from the allocation keys' names.
    async fn taken_addresses(&self) -> Result<services::Taken> {
        let options = GetOptions::new()
            .with_range(prefix_end(services::RANGES))
            .with_keys_only();
        let resp = self
            .range(services::RANGES.as_bytes().to_vec(), Some(options))
            .await?;
        Ok(services::Taken::from_keys(
            resp.kvs().iter().filter_map(|kv| kv.key_str().ok()),
        ))
    }

    /// The cluster's image policy: as `orca master --image-allow` recorded
    /// it, else one that allows every image.
    pub async fn image_policy(&self) -> Result<ImagePolicy> {
        match self.get_kv(IMAGES_KEY).await? {
            Some(kv) => serde_json::from_slice(kv.value()).map_err(|e| corrupt(&kv, e.to_string())),
            None => Ok(ImagePolicy::default()),
        }
    }

    /// Records the cluster's image policy; it applies to what is written
    /// from now on (running workloads keep their images).
    pub async fn set_image_policy(&self, policy: &ImagePolicy) -> Result<()> {
        let value = serde_json::to_vec(policy).expect("plain data serialises");
        self.commit(Vec::new(), vec![TxnOp::put(IMAGES_KEY, value, None)])
            .await?;
        Ok(())
    }

    /// Refuses `obj` when it names a new image the cluster's policy does
    /// not allow (`current`: what is stored, whose images are not new).
    async fn check_images(
        &self,
        kind: &Kind,
        name: &str,
        obj: &Value,
        current: Option<&Value>,
    ) -> Result<()> {
        let found = images::images(kind.plural, obj);
        let before = current
            .map(|c| images::images(kind.plural, c))
            .unwrap_or_default();
        if !images::any_new(&found, &before) {
            return Ok(());
        }
        let errors = images::refused(&self.image_policy().await?, &found, &before);
        if errors.is_empty() {
            return Ok(());
        }
        Err(Error::Invalid(Invalid {
            kind: kind.kind.into(),
            name: name.to_string(),
            errors,
        }))
    }

    /// The cluster's address ranges: as `orca master` recorded them, else
    /// the defaults.
    pub async fn network(&self) -> Result<Network> {
        match self.get_kv(NETWORK_KEY).await? {
            Some(kv) => serde_json::from_slice(kv.value()).map_err(|e| corrupt(&kv, e.to_string())),
            None => Ok(Network::default()),
        }
    }

    /// Records the cluster's address ranges, once: a cluster keeps the
    /// ranges it started with, and a different `network` is an error naming
    /// both.
    pub async fn set_network(&self, network: &Network) -> Result<()> {
        let value = serde_json::to_vec(network).expect("plain data serialises");
        let compare = vec![Compare::version(NETWORK_KEY, CompareOp::Equal, 0)];
        if self
            .commit(compare, vec![TxnOp::put(NETWORK_KEY, value, None)])
            .await?
            .is_some()
        {
            return Ok(());
        }
        let stored = self.network().await?;
        if &stored == network {
            return Ok(());
        }
        Err(Error::Invalid(Invalid {
            kind: "Cluster".into(),
            name: "network".into(),
            errors: vec![FieldError::forbidden(
                "network",
                format!(
                    "the cluster was set up with service CIDRs {} and cluster CIDRs {}; they cannot change",
                    join(&stored.service_cidrs),
                    join(&stored.cluster_cidrs)
                ),
            )],
        }))
    }

    async fn ensure_default_namespace(&self) -> Result<()> {
        let ns = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": DEFAULT_NAMESPACE},
            "status": {"phase": "Active"},
        });
        match Box::pin(self.create_value(kind_of::<Namespace>(), ns)).await {
            Ok(_) | Err(Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads one object.
    pub async fn get_value(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value> {
        let key = object_key(kind, namespace, name)?;
        match self.get_kv(&key).await? {
            Some(kv) => self.decode_kv(&kv),
            None => Err(Error::NotFound {
                plural: kind.plural.into(),
                name: name.into(),
            }),
        }
    }

    /// Lists a kind (in one namespace, or all with `None`) at one revision,
    /// page by page so a large kind never arrives as one huge response.
    pub async fn list_values(&self, kind: &Kind, namespace: Option<&str>) -> Result<List<Value>> {
        self.list_decoded(&kind_prefix(kind, namespace), decode_value)
            .await
    }

    /// Every object under `prefix` at one revision, each decoded by
    /// `decode` as its page arrives.
    async fn list_decoded<T>(&self, prefix: &str, decode: Decoder<T>) -> Result<List<T>> {
        let mut page = self.page_decoded(prefix, None, 0, decode).await?;
        let mut items = std::mem::take(&mut page.items);
        while let Some(from) = page.next {
            page = self
                .page_decoded(prefix, Some(from), page.revision, decode)
                .await?;
            items.append(&mut page.items);
        }
        Ok(List {
            items,
            revision: page.revision,
        })
    }

    /// One page of a list: from the start of `prefix` (`from` is `None`) or
    /// from a previous page's `next`, at `revision` (0: now). A value that
    /// does not decode is skipped, logged and counted.
    async fn page_decoded<T>(
        &self,
        prefix: &str,
        from: Option<Vec<u8>>,
        revision: i64,
        decode: Decoder<T>,
    ) -> Result<Page<T>> {
        let mut options = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_limit(LIST_PAGE);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let mut resp = self
            .range(
                from.unwrap_or_else(|| prefix.as_bytes().to_vec()),
                Some(options),
            )
            .await?;
        let revision = match revision {
            0 => resp.header().map(|h| h.revision()).unwrap_or_default(),
            r => r,
        };
        let more = resp.more();
        let kvs = resp.take_kvs();
        let items = kvs
            .iter()
            .filter_map(|kv| match decode(kv, kv.mod_revision()) {
                Ok(obj) => Some(obj),
                Err(e) => {
                    self.skip_corrupt(&e);
                    None
                }
            })
            .collect();
        let next = kvs.last().filter(|_| more).map(|last| {
            let mut next = last.key().to_vec();
            next.push(0);
            next
        });
        Ok(Page {
            items,
            revision,
            next,
        })
    }

    /// Replaces an object's spec and metadata, guarded by its
    /// `metadata.resourceVersion`; the stored status is kept.
    pub async fn update_value(&self, kind: &Kind, obj: Value) -> Result<Value> {
        let obj = kind.normalize(&obj)?;
        self.write_guarded(kind, obj, false).await
    }

    /// Replaces an object's status only, guarded by its resourceVersion; the
    /// stored spec and metadata are kept.
    pub async fn update_status_value(&self, kind: &Kind, obj: Value) -> Result<Value> {
        let obj = kind.normalize(&obj)?;
        self.write_guarded(kind, obj, true).await
    }

    async fn write_guarded(&self, kind: &Kind, obj: Value, status_only: bool) -> Result<Value> {
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        let key = object_key(kind, meta_str(&obj, "namespace"), &name)?;
        let invalid_rv = || {
            Error::Invalid(Invalid {
                kind: kind.kind.into(),
                name: name.clone(),
                errors: vec![FieldError::invalid(
                    "metadata.resourceVersion",
                    "0",
                    "must be specified for an update",
                )],
            })
        };
        let rv: i64 = meta_str(&obj, "resourceVersion")
            .ok_or_else(invalid_rv)?
            .parse()
            .map_err(|_| invalid_rv())?;
        let conflict = || Error::Conflict {
            plural: kind.plural.into(),
            name: name.clone(),
        };
        let current_kv = self.get_kv(&key).await?.ok_or_else(|| Error::NotFound {
            plural: kind.plural.into(),
            name: name.clone(),
        })?;
        if current_kv.mod_revision() != rv {
            return Err(conflict());
        }
        let current = self.decode_kv(&current_kv)?;
        if !status_only {
            self.check_images(kind, &name, &obj, Some(&current)).await?;
        }
        let merged = if status_only {
            let mut merged = current.clone();
            match obj.get("status") {
                Some(status) => merged["status"] = status.clone(),
                None => {
                    merged.as_object_mut().map(|m| m.remove("status"));
                }
            }
            merged
        } else {
            let mut merged = obj;
            // Identity and lifecycle fields belong to the store, not the writer.
            let keep = current.get("metadata").cloned().unwrap_or_default();
            let generation = keep.get("generation").and_then(Value::as_i64).unwrap_or(1);
            let bumped = spec_of(&merged) != spec_of(&current);
            let meta = meta_mut(&mut merged);
            for field in [
                "uid",
                "creationTimestamp",
                "namespace",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                match keep.get(field) {
                    Some(v) => meta.insert(field.into(), v.clone()),
                    None => meta.remove(field),
                };
            }
            meta.insert(
                "generation".into(),
                Value::from(generation + i64::from(bumped)),
            );
            if kind.has_status {
                match current.get("status") {
                    Some(s) => merged["status"] = s.clone(),
                    None => {
                        merged.as_object_mut().map(|m| m.remove("status"));
                    }
                }
            }
            merged
        };
        let mut merged = merged;
        let plan = match (kind.plural, status_only) {
            ("services", false) => {
                services::plan(&self.network().await?, Some(&current), &mut merged, None)?
            }
            _ => services::Plan::default(),
        };
        let mut guard = vec![Compare::mod_revision(key.as_str(), CompareOp::Equal, rv)];
        // Only the write that removes the last finalizer of an object being
        // deleted removes it (a bound pod waits for its kubelet's final
        // delete as well); any other write to it, a status update above
        // all, keeps it.
        let removes = merged.pointer("/metadata/deletionTimestamp").is_some()
            && has_finalizers(&current)
            && !has_finalizers(&merged)
            && !awaits_kubelet(&merged);
        if removes {
            let mut ops = vec![TxnOp::delete(key.as_str(), None)];
            ops.extend(node_view_ops(kind, Some(&current), None));
            ops.extend(release_ops(kind, &current));
            return match self.commit(guard, ops).await? {
                Some(_) => Ok(merged),
                None => Err(conflict()),
            };
        }
        let value = Self::encode(&merged);
        let mut ops = vec![TxnOp::put(key.as_str(), value.clone(), None)];
        ops.extend(node_view_ops(kind, Some(&current), Some((&merged, &value))));
        guard.extend(plan.compares);
        ops.extend(plan.ops);
        match self.commit(guard, ops).await? {
            Some(rev) => {
                meta_mut(&mut merged)
                    .insert("resourceVersion".into(), Value::String(rev.to_string()));
                Ok(merged)
            }
            None => {
                self.check_requested(kind, &name, plan.requested).await?;
                Err(conflict())
            }
        }
    }

    /// Deletes an object. Objects with finalizers, and pods bound to a node
    /// (unless the grace period is zero), are marked with
    /// `deletionTimestamp` and left for their owners to finish; deleting
    /// them again changes nothing but a shorter grace period.
    pub async fn delete_value(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        name: &str,
        options: DeleteOptions,
    ) -> Result<Deleted<Value>> {
        let key = object_key(kind, namespace, name)?;
        loop {
            let kv = self.get_kv(&key).await?.ok_or_else(|| Error::NotFound {
                plural: kind.plural.into(),
                name: name.into(),
            })?;
            let mut obj = self.decode_kv(&kv)?;
            let guard = vec![Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                kv.mod_revision(),
            )];
            let current = obj.clone();
            // A cascade other than background holds the object with a
            // finalizer the garbage collector removes; a Namespace waits
            // for its contents to go.
            let cascade = match kind.plural {
                "namespaces" => Some(FINALIZER_NAMESPACE),
                plural if CASCADE_OWNERS.contains(&plural) => {
                    options.propagation.and_then(Propagation::finalizer)
                }
                // No dependents the collector knows of: every cascade is
                // the same, and nothing would remove a finalizer.
                _ => None,
            };
            if let Some(finalizer) = cascade
                && obj.pointer("/metadata/deletionTimestamp").is_none()
            {
                let meta = meta_mut(&mut obj);
                let list = meta
                    .entry("finalizers")
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Some(list) = list.as_array_mut()
                    && !list.iter().any(|f| f == finalizer)
                {
                    list.push(Value::String(finalizer.into()));
                }
            }
            let grace = self.grace_period(kind, &obj, options);
            let waits = has_finalizers(&obj) || grace.is_some_and(|g| g > 0);
            if !waits {
                let mut ops = vec![TxnOp::delete(key.as_str(), None)];
                ops.extend(node_view_ops(kind, Some(&current), None));
                ops.extend(release_ops(kind, &current));
                if self.commit(guard, ops).await?.is_some() {
                    return Ok(Deleted::Gone(obj));
                }
                continue;
            }
            let marked = obj.pointer("/metadata/deletionTimestamp").is_some();
            let granted = obj
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64);
            // A second delete may shorten a pod's grace period, never
            // lengthen it, and never moves the deletion of an object that
            // only waits for its finalizers.
            let shortens = grace.is_some_and(|g| granted.is_none_or(|had| g < had));
            if marked && !shortens {
                return Ok(Deleted::Pending(obj));
            }
            let meta = meta_mut(&mut obj);
            meta.insert(
                "deletionTimestamp".into(),
                Value::String(rfc3339_after(grace.unwrap_or(0))),
            );
            if let Some(g) = grace {
                meta.insert("deletionGracePeriodSeconds".into(), Value::from(g));
            }
            let value = Self::encode(&obj);
            let mut ops = vec![TxnOp::put(key.as_str(), value.clone(), None)];
            ops.extend(node_view_ops(kind, Some(&current), Some((&obj, &value))));
            if let Some(rev) = self.commit(guard, ops).await? {
                meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rev.to_string()));
                return Ok(Deleted::Pending(obj));
            }
        }
    }

    /// The grace period a pod gets, or `None` for any other object: only
    /// pods already bound to a node need their kubelet to stop them.
    fn grace_period(&self, kind: &Kind, obj: &Value, options: DeleteOptions) -> Option<i64> {
        if kind.plural != "pods" || node_of(obj).is_none() {
            return None;
        }
        Some(
            options
                .grace_period_seconds
                .unwrap_or_else(|| {
                    obj.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                        .unwrap_or(30)
                })
                .max(0),
        )
    }

    /// Watches a kind (in one namespace, or all) from `from_revision`
    /// (inclusive). The stream ends after an error; callers resume from the
    /// last revision they saw, or re-list after [`Error::Compacted`].
    pub async fn watch_values(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        from_revision: i64,
    ) -> Result<BoxStream<'static, Result<WatchEvent<Value>>>> {
        self.watch_decoded(&kind_prefix(kind, namespace), from_revision, decode_value)
            .await
    }

    /// Watches every key under `prefix`, each object decoded by `decode`.
    async fn watch_decoded<T: Send + 'static>(
        &self,
        prefix: &str,
        from_revision: i64,
        decode: Decoder<T>,
    ) -> Result<BoxStream<'static, Result<WatchEvent<T>>>> {
        let options = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_start_revision(from_revision)
            .with_prev_key()
            .with_progress_notify();
        let watch = self
            .call(|mut c| {
                let options = options.clone();
                async move { c.watch(prefix, Some(options)).await }
            })
            .await
            .map_err(|e| self.err(e))?;
        let store = self.clone();
        let state = Some((watch, store));
        let responses = stream::unfold(state, move |state| async move {
            let (mut watch, store) = state?;
            match watch.message().await {
                Ok(Some(resp)) => {
                    if resp.canceled() {
                        let err = if resp.compact_revision() > 0 {
                            Error::Compacted {
                                requested: from_revision,
                                compacted: resp.compact_revision(),
                            }
                        } else {
                            Error::Etcd {
                                endpoint: store.config.endpoint.clone(),
                                message: format!("watch cancelled: {}", resp.cancel_reason()),
                            }
                        };
                        return Some((vec![Err(err)], None));
                    }
                    let events = store.watch_events(&resp, decode);
                    Some((events, Some((watch, store))))
                }
                Ok(None) => {
                    let err = Error::Unavailable {
                        endpoint: store.config.endpoint.clone(),
                        message: "watch stream closed".into(),
                    };
                    Some((vec![Err(err)], None))
                }
                Err(e) => Some((vec![Err(store.err(e))], None)),
            }
        });
        Ok(responses.flat_map(stream::iter).boxed())
    }

    /// The events of one watch response. A value that does not decode is
    /// skipped (logged and counted) and reported as progress to its
    /// revision, so a watcher moves past it instead of resuming onto it.
    fn watch_events<T>(
        &self,
        resp: &etcd_client::WatchResponse,
        decode: Decoder<T>,
    ) -> Vec<Result<WatchEvent<T>>> {
        if resp.events().is_empty() {
            if resp.created() {
                return Vec::new();
            }
            let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            return vec![Ok(WatchEvent::Progress(revision))];
        }
        resp.events()
            .iter()
            .filter_map(|event| {
                let kv = event.kv()?;
                let decoded = match event.event_type() {
                    EventType::Put => decode(kv, kv.mod_revision()).map(|obj| {
                        if kv.create_revision() == kv.mod_revision() {
                            WatchEvent::Added(obj)
                        } else {
                            WatchEvent::Modified(obj)
                        }
                    }),
                    // The last state, as of the deletion. Without the previous
                    // value (compacted meanwhile) the object cannot be named
                    // to the watcher, so it must re-list to learn what went.
                    EventType::Delete => match event.prev_kv() {
                        Some(prev) => decode(prev, kv.mod_revision()).map(WatchEvent::Deleted),
                        None => {
                            return Some(Err(Error::Compacted {
                                requested: kv.mod_revision(),
                                compacted: kv.mod_revision(),
                            }));
                        }
                    },
                };
                Some(decoded.or_else(|e| {
                    self.skip_corrupt(&e);
                    Ok(WatchEvent::Progress(kv.mod_revision()))
                }))
            })
            .collect()
    }
}

/// Turns a stored key-value into an object whose `metadata.resourceVersion`
/// is the given revision.
type Decoder<T> = fn(&KeyValue, i64) -> Result<T>;

fn corrupt(kv: &KeyValue, message: String) -> Error {
    Error::Corrupt {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        message,
    }
}

fn decode_value(kv: &KeyValue, resource_version: i64) -> Result<Value> {
    let mut obj: Value =
        serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv, e.to_string()))?;
    if !obj.is_object() {
        return Err(corrupt(kv, "not a JSON object".into()));
    }
    meta_mut(&mut obj).insert(
        "resourceVersion".into(),
        Value::String(resource_version.to_string()),
    );
    Ok(obj)
}

/// Decodes straight into the type: a `Value` in between costs many times
/// the typed object's memory, which a list of 10k objects multiplies.
fn decode_object<K: Cached>(kv: &KeyValue, resource_version: i64) -> Result<K> {
    let mut obj: K = serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv, e.to_string()))?;
    obj.set_resource_version(resource_version);
    Ok(obj)
}

/// A typed object's resourceVersion as a revision (0 when absent).
pub fn revision_of<K: Cached>(obj: &K) -> i64 {
    obj.resource_version()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or_default()
}

fn map_err(endpoint: &str, e: etcd_client::Error) -> Error {
    use etcd_client::Error as E;
    let unavailable = |message: String| Error::Unavailable {
        endpoint: endpoint.to_string(),
        message,
    };
    match &e {
        E::TransportError(_) | E::IoError(_) => unavailable(root_cause(&e)),
        // A status that carries a transport error as its source is a
        // broken connection whatever its code (a cut stream says Unknown).
        E::GRpcStatus(status)
            if matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ) || std::error::Error::source(status).is_some() =>
        {
            // tonic's status carries the transport error as its source; its
            // innermost cause is the line a person needs.
            let message = if std::error::Error::source(status).is_some() {
                root_cause(status)
            } else if status.message().is_empty() {
                format!("{:?}", status.code())
            } else {
                status.message().to_string()
            };
            unavailable(message)
        }
        _ => Error::Etcd {
            endpoint: endpoint.to_string(),
            message: e.to_string(),
        },
    }
}

/// The innermost cause of an error chain: for a refused connection that is
/// "Connection refused (os error 111)", not a stack of gRPC wrappers.
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Typed access to one kind: the objects of one namespace, or of a
/// cluster-scoped kind. Made by [`Store::api`] or [`Store::cluster_api`].
#[derive(Debug, Clone)]
pub struct Api<K> {
    store: Store,
    /// `None` only for cluster-scoped kinds.
    namespace: Option<String>,
    kind: PhantomData<fn() -> K>,
}

fn from_value<K: Object>(obj: Value) -> Result<K> {
    let key = format!(
        "{}/{}",
        kind_of::<K>().plural,
        meta_str(&obj, "name").unwrap_or_default()
    );
    serde_json::from_value(obj).map_err(|e| Error::Corrupt {
        key,
        message: e.to_string(),
    })
}

fn to_value<K: Object>(obj: &K) -> Value {
    serde_json::to_value(obj).expect("k8s-openapi objects serialise")
}

/// A pause of `base` plus up to half of it again, at random, so writers
/// that collided do not collide again in step.
pub(crate) fn jittered(base: Duration) -> Duration {
    let random = uuid::Uuid::new_v4().as_u128() % 1024;
    base + base.mul_f64(random as f64 / 2048.0)
}

impl<K: Object> Api<K> {
    fn kind(&self) -> &'static Kind {
        kind_of::<K>()
    }

    fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The store this API writes to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The objects this API reaches, to list and watch.
    pub fn view(&self) -> View<K> {
        View::typed(
            self.store.clone(),
            kind_prefix(self.kind(), self.namespace()),
        )
    }

    /// Creates `obj` (in this API's namespace unless it names its own).
    pub async fn create(&self, obj: &K) -> Result<K> {
        from_value(
            self.store
                .create_value(self.kind(), self.scoped(obj))
                .await?,
        )
    }

    /// Reads one object by name.
    pub async fn get(&self, name: &str) -> Result<K> {
        from_value(
            self.store
                .get_value(self.kind(), self.namespace(), name)
                .await?,
        )
    }

    /// Reads one object, `None` when it does not exist.
    pub async fn get_opt(&self, name: &str) -> Result<Option<K>> {
        match self.get(name).await {
            Ok(o) => Ok(Some(o)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists every object this API reaches.
    pub async fn list(&self) -> Result<List<K>> {
        self.view().list().await
    }

    /// Updates spec and metadata, guarded by `obj`'s resourceVersion.
    pub async fn update(&self, obj: &K) -> Result<K> {
        from_value(
            self.store
                .update_value(self.kind(), self.scoped(obj))
                .await?,
        )
    }

    /// Updates status only, guarded by `obj`'s resourceVersion.
    pub async fn update_status(&self, obj: &K) -> Result<K> {
        from_value(
            self.store
                .update_status_value(self.kind(), self.scoped(obj))
                .await?,
        )
    }

    fn scoped(&self, obj: &K) -> Value {
        let mut value = to_value(obj);
        if let Some(ns) = self.namespace()
            && meta_str(&value, "namespace").is_none()
        {
            meta_mut(&mut value).insert("namespace".into(), Value::String(ns.into()));
        }
        value
    }

    /// Reads, changes with `change` and writes back, retrying a conflict a
    /// few times with a growing, jittered pause: the way a controller
    /// changes an object it does not own alone. A conflict that outlasts
    /// the attempts is returned, for the caller to requeue.
    pub async fn modify(
        &self,
        name: &str,
        status: bool,
        mut change: impl FnMut(&mut K),
    ) -> Result<K> {
        let mut pause = MODIFY_FIRST_PAUSE;
        let mut attempt = 1;
        loop {
            let mut obj = self.get(name).await?;
            change(&mut obj);
            let written = if status {
                self.update_status(&obj).await
            } else {
                self.update(&obj).await
            };
            match written {
                Err(Error::Conflict { .. }) if attempt < MODIFY_ATTEMPTS => {
                    tokio::time::sleep(jittered(pause)).await;
                    pause *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// [`Api::modify`] of an object that may have gone meanwhile: `None`
    /// then, as a control loop whose object was deleted has nothing left
    /// to change.
    pub async fn modify_if_exists(
        &self,
        name: &str,
        status: bool,
        change: impl FnMut(&mut K),
    ) -> Result<Option<K>> {
        match self.modify(name, status, change).await {
            Ok(obj) => Ok(Some(obj)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes by name (see [`Store::delete_value`]).
    pub async fn delete(&self, name: &str, options: DeleteOptions) -> Result<Deleted<K>> {
        Ok(
            match self
                .store
                .delete_value(self.kind(), self.namespace(), name, options)
                .await?
            {
                Deleted::Gone(v) => Deleted::Gone(from_value(v)?),
                Deleted::Pending(v) => Deleted::Pending(from_value(v)?),
            },
        )
    }

    /// [`Api::delete`] of an object that may be gone already: `None` then.
    pub async fn delete_if_exists(
        &self,
        name: &str,
        options: DeleteOptions,
    ) -> Result<Option<Deleted<K>>> {
        match self.delete(name, options).await {
            Ok(deleted) => Ok(Some(deleted)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Watches the objects this API reaches from `from_revision` (inclusive).
    pub async fn watch(
        &self,
        from_revision: i64,
    ) -> Result<BoxStream<'static, Result<WatchEvent<K>>>> {
        self.view().watch(from_revision).await
    }
}

/// One pod to bind: where it is stored, the resourceVersion it was read
/// at, and the node it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodBinding {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The resourceVersion the binder read; a pod changed since is not bound.
    pub resource_version: i64,
    /// The node it is bound to.
    pub node: String,
}

impl Api<Pod> {
    /// Binds pods to nodes in one transaction, as the API server's binding
    /// subresource does: each pod is read as stored, given `spec.nodeName`
    /// and written back with its node-view copy, guarded by the
    /// resourceVersion the binder read (so a binder may keep pods in any
    /// form, and nothing stored is lost). All or nothing: `Ok(false)` when
    /// any pod changed or went since it was read, and the caller binds them
    /// one by one instead. etcd takes at most 128 operations a transaction
    /// (two a pod here): give it at most [`BIND_BATCH`] pods.
    pub async fn bind_all(&self, bindings: &[PodBinding]) -> Result<bool> {
        let kind = self.kind();
        let keys = bindings
            .iter()
            .map(|b| object_key(kind, Some(&b.namespace), &b.name))
            .collect::<Result<Vec<_>>>()?;
        let stored = self.store.get_many(&keys).await?;
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        for ((binding, key), kv) in bindings.iter().zip(&keys).zip(stored) {
            let Some(kv) = kv.filter(|kv| kv.mod_revision() == binding.resource_version) else {
                return Ok(false);
            };
            let before = self.store.decode_kv(&kv)?;
            let mut value = before.clone();
            value["spec"]["nodeName"] = Value::String(binding.node.clone());
            let generation = before
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            meta_mut(&mut value).insert("generation".into(), Value::from(generation + 1));
            let bytes = Store::encode(&value);
            compares.push(Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                binding.resource_version,
            ));
            ops.push(TxnOp::put(key.as_str(), bytes.clone(), None));
            ops.extend(node_view_ops(kind, Some(&before), Some((&value, &bytes))));
        }
        Ok(self.store.commit(compares, ops).await?.is_some())
    }
}

/// A set of stored objects to list and watch: one namespace, every
/// namespace, the pods of one node, or (as JSON) any kind. Made by
/// [`Store::all`], [`Store::pods_on_node`], [`Store::view_values`] and
/// [`Api::view`]; the watcher runs on one.
pub struct View<T> {
    store: Store,
    prefix: String,
    decode: Decoder<T>,
    revision: fn(&T) -> i64,
}

impl<T> Clone for View<T> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            prefix: self.prefix.clone(),
            decode: self.decode,
            revision: self.revision,
        }
    }
}

impl<T> std::fmt::Debug for View<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl<K: Cached> View<K> {
    fn typed(store: Store, prefix: String) -> Self {
        Self {
            store,
            prefix,
            decode: decode_object::<K>,
            revision: revision_of::<K>,
        }
    }
}

impl<T: Send + 'static> View<T> {
    /// The etcd key prefix this view covers; one view per prefix is what a
    /// shared cache is keyed by.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The store this view reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The revision an object of this view was read at.
    pub fn revision_of(&self, obj: &T) -> i64 {
        (self.revision)(obj)
    }

    /// One page of [`View::list`]: the first (`from` is `None`, `revision`
    /// 0) or the one a previous page's `next` and `revision` name.
    pub async fn list_page(&self, from: Option<Vec<u8>>, revision: i64) -> Result<Page<T>> {
        self.store
            .page_decoded(&self.prefix, from, revision, self.decode)
            .await
    }

    /// Every object of the view, at one revision.
    pub async fn list(&self) -> Result<List<T>> {
        self.store.list_decoded(&self.prefix, self.decode).await
    }

    /// Watches the view from `from_revision` (inclusive).
    pub async fn watch(
        &self,
        from_revision: i64,
    ) -> Result<BoxStream<'static, Result<WatchEvent<T>>>> {
        self.store
            .watch_decoded(&self.prefix, from_revision, self.decode)
            .await
    }

    /// Whether etcd has compacted its history up to or past `revision`:
    /// a watch resumed after it could miss a deletion.
    pub async fn compacted_past(&self, revision: i64) -> Result<bool> {
        let options = GetOptions::new()
            .with_range(prefix_end(&self.prefix))
            .with_revision(revision)
            .with_count_only();
        match self
            .store
            .range(self.prefix.as_bytes().to_vec(), Some(options))
            .await
        {
            Ok(_) => Ok(false),
            Err(Error::Etcd { message, .. }) if message.contains("compacted") => Ok(true),
            Err(e) => Err(e),
        }
    }
}
