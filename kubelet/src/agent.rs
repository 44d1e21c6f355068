//! The kubelet proper: registers the node, heartbeats its Lease, watches
//! the pods bound to it (the store's node view, never every pod) and makes
//! each true: sandbox, images, containers in order, restarts with back-off,
//! status written back when it changes, and graceful termination ending in
//! the pod's final delete.
//!
//! What runs is read back from disk (each container attempt's directory and
//! its monitor's records), not kept in memory alone, so a kubelet that
//! restarts adopts its running containers and cleans up what belongs to
//! pods that are gone.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, PodStatus};
use orca_core::api::{ConfigMap, EndpointSlice, Node, Pod, Secret};
use orca_core::store::{Cidr, DeleteOptions, Error as StoreError, Store, revision_of};
use orca_core::watch::{Action, Controller, Informers, ObjectKey, Reader};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::container::{self, Lookup};
use crate::image::{Credential, Image, Images, PullError, PullPolicy};
use crate::network::{self, Attachment, Network};
use crate::node::{self, Capacity};
use crate::probe;
use crate::runtime::bundle::{self, Bind, Limits};
use crate::runtime::monitor::{ExitRecord, MonitorSpec};
use crate::runtime::{self, ProcessWatch, Running, Runtime, cgroup};
use crate::sandbox::{self, PodDir, PodRecord, Source};
use crate::status::{self, ContainerView, Observed, PullFailure};

/// How a kubelet runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The node's name.
    pub node: String,
    /// The network namespace the node's bridge and pods live in.
    pub netns: Option<PathBuf>,
    /// The configuration file's settings.
    pub config: Config,
    /// The `orca-monitor` binary.
    pub monitor: PathBuf,
    /// The kubelet's version, as the Node reports it.
    pub version: String,
}

/// Why the kubelet stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed in a way retries do not mend.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The node's setup failed (network, directories).
    #[error("{0}")]
    Setup(String),
}

/// The kubelet's state shared by its tasks.
pub(crate) struct Kubelet {
    pub(crate) store: Store,
    pub(crate) node: String,
    pub(crate) config: Config,
    pub(crate) host_ip: String,
    pub(crate) images: Images,
    pub(crate) runtime: Runtime,
    pub(crate) network: Network,
    pub(crate) pods: Reader<Pod>,
    /// Every EndpointSlice, to see a terminating pod's endpoints leave.
    slices: Reader<EndpointSlice>,
    /// Exits of containers, as the keys of their pods.
    exits: mpsc::UnboundedSender<ObjectKey>,
    state: Arc<Mutex<State>>,
    /// The node's network namespace, where probes connect from.
    netns: Option<PathBuf>,
}

/// What is kept in memory only: it may be lost with a restart.
#[derive(Default)]
struct State {
    /// The uid of each pod seen, so a pod gone from the cache is found.
    uids: HashMap<ObjectKey, String>,
    /// Container attempts whose monitors are watched.
    watched: HashSet<PathBuf>,
    /// Failed pulls: (uid, container) → the failure.
    pulls: HashMap<(String, String), PullFailure>,
    /// The status last written per pod uid, and the pod's resourceVersion
    /// that write made: one the cache has not caught up with is not written
    /// again, but once the pod was changed after it (the node lifecycle
    /// controller marking it not ready while this node was unreachable),
    /// only what is stored counts.
    written: HashMap<String, (PodStatus, i64)>,
    /// What the probes of each running container attempt found.
    health: HashMap<PathBuf, Health>,
    /// Each pod's sandbox once made: its place on the network and the
    /// binds of its `/etc` files.
    sandboxes: HashMap<String, (Attachment, Vec<Bind>)>,
}

/// What a running container's probes found.
#[derive(Debug, Clone, Copy, Default)]
struct Health {
    /// Its startup probe passed (or it has none).
    started: bool,
    /// Its readiness probe passed (or it has none).
    ready: bool,
}

impl Kubelet {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Renews the node's Lease and refreshes its status every `period` until
/// `stopped`, on a connection of its own made on the calling runtime.
async fn heartbeat(
    kubelet: Arc<Kubelet>,
    period: Duration,
    mut registration: node::Registration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut store = kubelet
        .store
        .reconnect()
        .await
        .unwrap_or_else(|_| kubelet.store.clone());
    let mut lease = None;
    loop {
        registration.pressure = node::Pressure::measure(&kubelet.config.state_dir);
        // A renewal that failed is tried again soon, not a period later,
        // and on a new connection: the one it failed on may be stuck (as
        // Kubernetes' kubelet closes its connections after a failed
        // heartbeat). The status waits for a renewal that went through.
        let next = match node::renew(&store, &kubelet.node, period * 4, &mut lease).await {
            Ok(()) => {
                if let Err(e) = node::refresh(&store, &kubelet.node, &registration).await {
                    tracing::warn!(error = %e, "node status update failed; retrying");
                }
                period
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed; retrying on a new connection");
                if let Ok(fresh) = store.reconnect().await {
                    store = fresh;
                }
                period.min(Duration::from_millis(200))
            }
        };
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

/// Runs the kubelet on the process's shared caches until `shutdown`
/// resolves. Containers keep running after it stops (their monitors hold
/// them), as a kubelet's do.
pub async fn run(
    informers: &Informers,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let mut shutdown = std::pin::pin!(shutdown);
    let config = settings.config.clone();
    // Registering and waiting for the pod CIDR give way to a shutdown.
    let (kubelet, pods, exited, registration, listener) = tokio::select! {
        started = start(informers, &settings) => started?,
        () = &mut shutdown => return Ok(()),
    };
    let controller = Controller::new(&pods)
        .trigger(tokio_stream_of(exited))
        .concurrency(64)
        .error_backoff(Duration::from_millis(500), Duration::from_secs(30))
        .named("kubelet");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // The heartbeat runs on a thread and runtime of its own, with an etcd
    // connection of its own: nothing the pods' work does on this runtime
    // (a system call the kernel takes seconds over, a burst of syncs) can
    // hold a renewal up long enough for the node to be taken for dead, nor
    // can the watches' traffic on their shared connection.
    let heartbeat = {
        let kubelet = Arc::clone(&kubelet);
        let stopped = stopped.clone();
        let period = config.heartbeat.0;
        let registration = registration.clone();
        let (ended, end) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Setup(format!("the heartbeat's runtime: {e}")))?;
        std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || {
                runtime.block_on(heartbeat(kubelet, period, registration, stopped));
                let _ = ended.send(());
            })
            .map_err(|e| Error::Setup(format!("the heartbeat's thread: {e}")))?;
        async move {
            let _ = end.await;
        }
    };
    let housekeeping = {
        let kubelet = Arc::clone(&kubelet);
        let mut stopped = stopped.clone();
        async move {
            kubelet.pods.wait_until_synced().await;
            loop {
                kubelet.collect_orphans().await;
                kubelet.collect_images();
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(60)) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
        }
    };
    let pods_loop = {
        let kubelet = Arc::clone(&kubelet);
        let mut stopped = stopped.clone();
        controller.run(
            move |key| {
                let kubelet = Arc::clone(&kubelet);
                async move { kubelet.sync(key).await }
            },
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        )
    };
    let server = crate::server::serve(Arc::clone(&kubelet), listener, stopped.clone());
    let signal = async {
        shutdown.await;
        let _ = stop.send(true);
    };
    tokio::join!(heartbeat, housekeeping, pods_loop, server, signal);
    Ok(())
}

/// What a started kubelet runs on: its state, its pods' cache, the exits
/// of its containers and what it reports of its node.
type Started = (
    Arc<Kubelet>,
    orca_core::watch::Informer<Pod>,
    mpsc::UnboundedReceiver<ObjectKey>,
    node::Registration,
    tokio::net::TcpListener,
);

/// Registers the node, waits for its pod CIDR, opens the pod network and
/// the image store.
async fn start(informers: &Informers, settings: &Settings) -> Result<Started, Error> {
    let store = informers.store().clone();
    let config = settings.config.clone();
    let setup = |what: &str, e: io::Error| Error::Setup(format!("{what}: {e}"));
    for dir in [&config.state_dir, &config.log_dir] {
        std::fs::create_dir_all(dir).map_err(|e| setup(&dir.display().to_string(), e))?;
    }
    node::lease_namespace(&store).await?;
    let host_ip = config.address.to_string();
    let registration = node::Registration {
        address: host_ip.clone(),
        capacity: capacity(&config),
        version: settings.version.clone(),
        runtime: runtime_version(&config.runc).await,
        port: Some(config.port),
        pressure: node::Pressure::measure(&config.state_dir),
        pod_cidr: config.pod_cidr.map(|c| c.to_string()),
    };
    node::register(&store, &settings.node, &registration).await?;
    let cidr = pod_cidr(&store, &settings.node, config.pod_cidr).await?;
    tracing::info!(node = %settings.node, pod_cidr = %cidr, address = %host_ip, "node registered");
    let network = Network::open(
        settings.netns.as_deref(),
        &config.bridge,
        cidr,
        config.state_dir.join("ipam"),
    )
    .await
    .map_err(|e| setup("pod network", e))?;
    let images = Images::new(
        config.state_dir.join("images"),
        config.registries.clone(),
        config.images.allow.clone(),
    )
    .map_err(|e| setup("image store", e))?;
    let runtime = Runtime {
        runc: config.runc.clone(),
        root: config.state_dir.join("runc"),
        monitor: settings.monitor.clone(),
    };
    let pods = informers.pods_on_node(&settings.node);
    let (exits, exited) = mpsc::unbounded_channel();
    let kubelet = Arc::new(Kubelet {
        store: store.clone(),
        node: settings.node.clone(),
        config: config.clone(),
        host_ip,
        images,
        runtime,
        network,
        pods: pods.reader(),
        slices: informers.all::<EndpointSlice>().reader(),
        exits,
        state: Arc::new(Mutex::new(State::default())),
        netns: settings.netns.clone(),
    });
    let listener = crate::server::bind(std::net::SocketAddr::new(config.address, config.port))
        .await
        .map_err(|e| setup("kubelet server", e))?;
    Ok((kubelet, pods, exited, registration, listener))
}

fn tokio_stream_of(
    mut rx: mpsc::UnboundedReceiver<ObjectKey>,
) -> impl futures::Stream<Item = ObjectKey> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// What the node offers: its CPUs, its memory (the cgroup's limit when
/// lower than the machine's), its pod count.
fn capacity(config: &Config) -> Capacity {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024);
    let limit = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok())
    .min()
    .unwrap_or(u64::MAX);
    Capacity {
        cpu: cpus.to_string(),
        memory: format!("{}Ki", total.min(limit) / 1024),
        pods: config.max_pods,
    }
}

/// `runc://<version>`, as the Node's containerRuntimeVersion.
async fn runtime_version(runc: &Path) -> String {
    let out = tokio::process::Command::new(runc)
        .arg("--version")
        .output()
        .await;
    let version = out
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines()
                .next()
                .and_then(|l| l.strip_prefix("runc version "))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into());
    format!("runc://{version}")
}

/// The node's pod CIDR: the configured one (written to the Node when the
/// master set none), else the one the master allocates, waited for.
async fn pod_cidr(store: &Store, node: &str, configured: Option<Cidr>) -> Result<Cidr, Error> {
    let api = store.cluster_api::<Node>();
    let mut told = false;
    loop {
        let current = api
            .get(node)
            .await?
            .spec
            .and_then(|s| s.pod_cidr)
            .and_then(|c| c.parse::<Cidr>().ok());
        match (current, configured) {
            (Some(cidr), _) => return Ok(cidr),
            (None, Some(cidr)) => {
                api.modify(node, true, |n| {
                    n.spec.get_or_insert_with(Default::default).pod_cidr = Some(cidr.to_string());
                })
                .await?;
                return Ok(cidr);
            }
            (None, None) => {
                if !told {
                    tracing::info!(
                        node,
                        "waiting for the master to allocate the node's pod CIDR"
                    );
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The Secrets and ConfigMaps of a pod's namespace, read from the store as
/// a container needs them.
struct StoreLookup {
    configmaps: HashMap<String, ConfigMap>,
    secrets: HashMap<String, Secret>,
}

impl Lookup for StoreLookup {
    fn config_map(&self, name: &str) -> Option<ConfigMap> {
        self.configmaps.get(name).cloned()
    }
    fn secret(&self, name: &str) -> Option<Secret> {
        self.secrets.get(name).cloned()
    }
}

/// A pod's ConfigMaps and Secrets, read once a sync needs them.
type Lazy = tokio::sync::OnceCell<StoreLookup>;

/// The names of the ConfigMaps and Secrets a pod refers to.
fn references(pod: &Pod) -> (HashSet<String>, HashSet<String>) {
    let mut maps = HashSet::new();
    let mut secrets = HashSet::new();
    let Some(spec) = &pod.spec else {
        return (maps, secrets);
    };
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        for from in c.env_from.iter().flatten() {
            maps.extend(from.config_map_ref.as_ref().map(|r| r.name.clone()));
            secrets.extend(from.secret_ref.as_ref().map(|r| r.name.clone()));
        }
        for var in c.env.iter().flatten() {
            let Some(from) = &var.value_from else {
                continue;
            };
            maps.extend(from.config_map_key_ref.as_ref().map(|r| r.name.clone()));
            secrets.extend(from.secret_key_ref.as_ref().map(|r| r.name.clone()));
        }
    }
    for v in spec.volumes.iter().flatten() {
        maps.extend(v.config_map.as_ref().map(|c| c.name.clone()));
        secrets.extend(v.secret.as_ref().and_then(|s| s.secret_name.clone()));
    }
    secrets.extend(
        spec.image_pull_secrets
            .iter()
            .flatten()
            .map(|r| r.name.clone()),
    );
    (maps, secrets)
}

/// The state of one container, read from its latest attempt's directory.
pub(crate) enum Disk {
    /// No attempt started.
    NotStarted,
    /// Running, as recorded.
    Running(PathBuf, Running),
    /// Ended, as its monitor recorded.
    Exited(PathBuf, Option<Running>, ExitRecord),
}

impl Disk {
    pub(crate) fn read(dir: &PodDir, name: &str) -> (u32, Self) {
        let Some(&attempt) = dir.attempts(name).last() else {
            return (0, Self::NotStarted);
        };
        let path = dir.attempt(name, attempt);
        let running = runtime::running_record(&path);
        let state = match (runtime::exit_record(&path), running) {
            (Some(exit), running) => Self::Exited(path, running, exit),
            (None, Some(running)) => Self::Running(path, running),
            // Started no further than its directory (a crash mid-start):
            // this attempt starts again.
            (None, None) => Self::NotStarted,
        };
        (attempt, state)
    }
}

/// Whether a container that ended with `exit_code` starts again.
fn restarts(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

impl Kubelet {
    /// The back-off before restart number `attempt`: the first delay
    /// doubled per restart so far, capped.
    fn restart_delay(&self, attempt: u32) -> Duration {
        let first = self.config.restart_backoff.0;
        first
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.config.restart_backoff_max.0)
    }

    /// Makes one pod true. Runs for a pod at a time (the controller never
    /// runs one key twice at once).
    async fn sync(&self, key: ObjectKey) -> Result<Action, String> {
        let Some(pod) = self.pods.get(&key) else {
            // Gone from the store (final-deleted, force-deleted or moved):
            // nothing of it may run here.
            let uid = self.state().uids.remove(&key);
            if let Some(uid) = uid {
                self.terminate(&uid, Duration::ZERO).await;
                self.teardown(&uid).await.map_err(|e| e.to_string())?;
            }
            return Ok(Action::AwaitChange);
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(self.node.as_str()) {
            return Ok(Action::AwaitChange);
        }
        self.state().uids.insert(key.clone(), uid.clone());
        if pod.metadata.deletion_timestamp.is_some() {
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .or(pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds))
                .unwrap_or(30);
            let grace = Duration::from_secs(grace.max(0) as u64);
            let drained = self.drain(&uid, grace).await;
            // As after a preStop hook, the containers get at least 2 s.
            let left = grace
                .saturating_sub(drained)
                .max(grace.min(Duration::from_secs(2)));
            self.terminate(&uid, left).await;
            self.teardown(&uid).await.map_err(|e| e.to_string())?;
            let api = self
                .store
                .api::<Pod>(key.namespace.as_deref().unwrap_or("default"));
            let now = DeleteOptions {
                grace_period_seconds: Some(0),
                ..DeleteOptions::default()
            };
            api.delete_if_exists(&key.name, now)
                .await
                .map_err(|e| e.to_string())?;
            self.state().uids.remove(&key);
            return Ok(Action::AwaitChange);
        }
        let next = self.run_pod(&key, &pod, &uid).await?;
        Ok(next.map_or(Action::AwaitChange, Action::Requeue))
    }

    /// Starts what should run, writes the status, and says when to look
    /// again (a back-off ending).
    async fn run_pod(
        &self,
        key: &ObjectKey,
        pod: &Pod,
        uid: &str,
    ) -> Result<Option<Duration>, String> {
        let spec = pod.spec.clone().unwrap_or_default();
        let dir = PodDir::new(&self.config.state_dir, uid);
        let record = PodRecord {
            namespace: key.namespace.clone().unwrap_or_default(),
            name: key.name.clone(),
            uid: uid.to_string(),
        };
        // The sandbox is made once per pod and kept: a sync after that
        // (a status change, a probe) touches neither disk nor netlink for it.
        let sandbox = self.state().sandboxes.get(uid).cloned();
        let (attachment, etc) = match sandbox {
            Some(ready) => ready,
            None => {
                let ready = self.sandbox(pod, &dir, &record).await?;
                self.state()
                    .sandboxes
                    .insert(uid.to_string(), ready.clone());
                ready
            }
        };
        // Read from etcd only when a container starts.
        let lookup = Lazy::new();
        let policy = spec.restart_policy.as_deref().unwrap_or("Always");
        let mut observed = Observed::default();
        let mut next: Option<Duration> = None;
        let mut soonest = |d: Duration| next = Some(next.map_or(d, |n: Duration| n.min(d)));

        // Init containers, one at a time, each to success.
        let mut initialized = true;
        for container in spec.init_containers.iter().flatten() {
            let init_policy = if policy == "Always" {
                "OnFailure"
            } else {
                policy
            };
            let (attempt, disk) = Disk::read(&dir, &container.name);
            let done = matches!(&disk, Disk::Exited(_, _, exit) if exit.exit_code == 0);
            let view = self
                .drive(
                    pod,
                    &dir,
                    container,
                    init_policy,
                    attempt,
                    disk,
                    &etc,
                    &lookup,
                    &mut soonest,
                )
                .await;
            observed.init.push(view);
            if !done {
                initialized = false;
                break;
            }
        }
        observed.initialized = initialized;
        for container in &spec.containers {
            let (attempt, disk) = Disk::read(&dir, &container.name);
            let view = if initialized {
                self.drive(
                    pod,
                    &dir,
                    container,
                    policy,
                    attempt,
                    disk,
                    &etc,
                    &lookup,
                    &mut soonest,
                )
                .await
            } else {
                ContainerView::initializing(container)
            };
            observed.containers.push(view);
        }
        observed.pod_ip = Some(attachment.ip.to_string());
        observed.host_ip = self.host_ip.clone();
        observed.restart_policy = policy.to_string();
        let status = status::pod_status(pod, &observed);
        let unchanged = pod.status.as_ref() == Some(&status)
            || self
                .state()
                .written
                .get(uid)
                .is_some_and(|(w, at)| *w == status && revision_of(pod) <= *at);
        // Only a status that was stored counts as written: after a
        // conflict the cache's next event brings the pod back to be synced.
        if !unchanged && let Some(at) = self.write_status(key, pod, status.clone()).await? {
            self.state().written.insert(uid.to_string(), (status, at));
        }
        Ok(next)
    }

    /// Makes pod `record`'s sandbox: its directory, its pinned network
    /// namespace on the bridge, its `/etc` files. Idempotent, so a kubelet
    /// that restarts finds what it made before.
    async fn sandbox(
        &self,
        pod: &Pod,
        dir: &PodDir,
        record: &PodRecord,
    ) -> Result<(Attachment, Vec<Bind>), String> {
        dir.create(record)
            .map_err(|e| format!("pod directory: {e}"))?;
        let netns = dir.netns();
        if !is_mounted(&netns) {
            let path = netns.clone();
            network::on_own_thread(move || network::create_netns(&path))
                .await
                .and_then(|made| made)
                .map_err(|e| e.to_string())?;
        }
        let attachment = self
            .network
            .attach(&record.uid, &netns)
            .await
            .map_err(|e| format!("pod network: {e}"))?;
        let dns = self
            .config
            .cluster_dns
            .map(|ip| (ip, self.config.cluster_domain.as_str()));
        let etc = dir
            .write_etc(pod, attachment.ip, dns)
            .map_err(|e| format!("pod /etc files: {e}"))?;
        Ok((attachment, etc))
    }

    /// Stores `status` as the pod's; whether it was stored (a conflict is
    /// no error: the cache is behind, and its next event syncs the pod again).
    async fn write_status(
        &self,
        key: &ObjectKey,
        pod: &Pod,
        status: PodStatus,
    ) -> Result<Option<i64>, String> {
        let api = self
            .store
            .api::<Pod>(key.namespace.as_deref().unwrap_or("default"));
        let mut updated = pod.clone();
        updated.status = Some(status);
        match api.update_status(&updated).await {
            Ok(written) => Ok(Some(revision_of(&written))),
            Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => Ok(None),
            Err(e) => Err(format!("writing the pod's status: {e}")),
        }
    }

    async fn lookup(&self, pod: &Pod) -> StoreLookup {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let (maps, secrets) = references(pod);
        let mut lookup = StoreLookup {
            configmaps: HashMap::new(),
            secrets: HashMap::new(),
        };
        for name in maps {
            if let Ok(Some(map)) = self.store.api::<ConfigMap>(namespace).get_opt(&name).await {
                lookup.configmaps.insert(name, map);
            }
        }
        for name in secrets {
            if let Ok(Some(secret)) = self.store.api::<Secret>(namespace).get_opt(&name).await {
                lookup.secrets.insert(name, secret);
            }
        }
        lookup
    }

    /// Moves one container along: watches a running one, restarts an ended
    /// one when its policy and back-off say so, starts one never started.
    #[allow(clippy::too_many_arguments)]
    async fn drive(
        &self,
        pod: &Pod,
        dir: &PodDir,
        container: &Container,
        policy: &str,
        attempt: u32,
        disk: Disk,
        etc: &[Bind],
        lookup: &Lazy,
        soonest: &mut impl FnMut(Duration),
    ) -> ContainerView {
        let previous = previous_exit(dir, &container.name, attempt);
        match disk {
            Disk::Running(path, running) => {
                if self.watch(pod, container, &path, &running) {
                    // Running, yet not followed: started by an earlier
                    // kubelet process, adopted rather than started again.
                    tracing::info!(pod = %pod_key(pod), container = %running.id, pid = running.pid, "adopted a running container");
                }
                self.running_view(container, attempt, &path, &running, previous)
            }
            Disk::Exited(path, running, exit) => {
                // Waiting out the back-off before a restart, or ended for good.
                let mut backoff = None;
                if restarts(policy, exit.exit_code) {
                    let finished = exit
                        .finished_at
                        .parse::<jiff::Timestamp>()
                        .unwrap_or_else(|_| jiff::Timestamp::now());
                    // The back-off starts over after a run as long as
                    // `restart_backoff_reset` (10 minutes, as Kubernetes').
                    let ran = running
                        .as_ref()
                        .and_then(|r| r.started_at.parse::<jiff::Timestamp>().ok())
                        .and_then(|started| {
                            Duration::try_from(finished.duration_since(started)).ok()
                        })
                        .unwrap_or_default();
                    let step = if ran >= self.config.restart_backoff_reset.0 {
                        0
                    } else {
                        backoff_step(&path).unwrap_or(attempt)
                    };
                    let delay = self.restart_delay(step + 1);
                    let elapsed = jiff::Timestamp::now().duration_since(finished);
                    let elapsed = Duration::try_from(elapsed).unwrap_or_default();
                    if elapsed >= delay {
                        self.retire(&path, &running).await;
                        self.prune(pod, dir, &container.name, attempt);
                        let view = self
                            .start(pod, dir, container, attempt + 1, etc, lookup, soonest)
                            .await
                            .unwrap_or_else(|view| *view);
                        let next = dir.attempt(&container.name, attempt + 1);
                        if next.is_dir() {
                            let _ = std::fs::write(next.join(BACKOFF_STEP), (step + 1).to_string());
                        }
                        return view;
                    }
                    soonest(delay - elapsed);
                    backoff = Some(delay);
                }
                ContainerView::exited(
                    container,
                    attempt,
                    &path,
                    running.as_ref(),
                    &exit,
                    previous,
                    backoff,
                )
            }
            Disk::NotStarted => self
                .start(pod, dir, container, attempt, etc, lookup, soonest)
                .await
                .unwrap_or_else(|view| *view),
        }
    }

    /// Removes what an ended attempt holds (its runc container, its
    /// overlay mount) but its records, kept for `lastState` and logs.
    async fn retire(&self, path: &Path, running: &Option<Running>) {
        if let Some(running) = running
            && let Err(e) = self.runtime.delete(&running.id).await
        {
            tracing::warn!(container = %running.id, error = %e, "runc delete failed");
        }
        let _ = nix::mount::umount2(&path.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
        for scratch in ["upper", "work"] {
            let _ = std::fs::remove_dir_all(path.join(scratch));
        }
    }

    /// Removes the attempts of a container before `previous` (and their
    /// logs): as the kubelet keeps the current container and the one before
    /// it, so a crash loop does not fill the disk.
    fn prune(&self, pod: &Pod, dir: &PodDir, name: &str, previous: u32) {
        for old in dir.attempts(name).into_iter().filter(|a| *a < previous) {
            let _ = std::fs::remove_dir_all(dir.attempt(name, old));
            let log = self.log_path(pod, name, old);
            for file in crate::server::log_files(&log) {
                let _ = std::fs::remove_file(file);
            }
        }
    }

    /// Follows a running container's monitor: its end brings the pod back.
    /// Whether it was not followed before.
    fn watch(&self, pod: &Pod, container: &Container, path: &Path, running: &Running) -> bool {
        if !self.state().watched.insert(path.to_path_buf()) {
            return false;
        }
        let exits = self.exits.clone();
        let key = pod_key(pod);
        let path = path.to_path_buf();
        let (end, ended) = tokio::sync::watch::channel(false);
        self.probe(pod, container, &path, running, ended);
        match ProcessWatch::monitor(running.monitor_pid, &path) {
            Some(watch) => {
                tokio::spawn(async move {
                    watch.ended().await;
                    let _ = end.send(true);
                    let _ = exits.send(key);
                });
            }
            None => {
                // The monitor is gone without a record (killed with the
                // node): the container cannot be followed, so it ends here.
                let runtime = self.runtime.clone();
                let id = running.id.clone();
                tokio::spawn(async move {
                    let _ = end.send(true);
                    let _ = runtime.kill(&id, "KILL").await;
                    if runtime::exit_record(&path).is_none() {
                        let record = ExitRecord {
                            exit_code: 255,
                            signal: None,
                            finished_at: jiff::Timestamp::now().to_string(),
                            oom_killed: false,
                            error: Some(
                                "the container's monitor ended without recording its exit".into(),
                            ),
                        };
                        if let Ok(json) = serde_json::to_vec(&record) {
                            let _ = runtime::monitor::write_atomic(
                                &path.join(runtime::monitor::EXIT_FILE),
                                &json,
                            );
                        }
                    }
                    let _ = exits.send(key);
                });
            }
        }
        true
    }

    /// A running container's view, with what its probes found.
    fn running_view(
        &self,
        container: &Container,
        attempt: u32,
        path: &Path,
        running: &Running,
        previous: Option<(ExitRecord, Option<Running>)>,
    ) -> ContainerView {
        let mut view = ContainerView::running(container, attempt, path, running, previous);
        let health = self.state().health.get(path).copied().unwrap_or_default();
        view.set_health(health.started, health.ready);
        view
    }

    /// Starts the probes of a running container; what they find lands in
    /// the kubelet's state and brings the pod back to be synced.
    fn probe(
        &self,
        pod: &Pod,
        container: &Container,
        path: &Path,
        running: &Running,
        ended: tokio::sync::watch::Receiver<bool>,
    ) {
        let probed = container.startup_probe.is_some()
            || container.liveness_probe.is_some()
            || container.readiness_probe.is_some();
        let health = Health {
            started: container.startup_probe.is_none(),
            ready: container.readiness_probe.is_none(),
        };
        self.state().health.insert(path.to_path_buf(), health);
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let pod_ip = self.state().sandboxes.get(uid).map(|(a, _)| a.ip);
        let (true, Some(pod_ip)) = (probed, pod_ip) else {
            return;
        };
        let target = probe::Target {
            pod_ip: std::net::IpAddr::V4(pod_ip),
            netns: self.netns.clone(),
            id: running.id.clone(),
        };
        let state = Arc::clone(&self.state);
        let exits = self.exits.clone();
        let key = pod_key(pod);
        let path = path.to_path_buf();
        let runtime = self.runtime.clone();
        let grace = Duration::from_secs(
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30)
                .max(0) as u64,
        );
        let id = running.id.clone();
        let container = container.clone();
        let report = move |report: probe::Report| {
            if let probe::Report::Ready(ready) = report {
                tracing::info!(pod = %key, container = %id, ready, "readiness changed");
            }
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            let health = state.health.entry(path.clone()).or_default();
            match &report {
                probe::Report::Started => health.started = true,
                probe::Report::Ready(ready) => health.ready = *ready,
                probe::Report::Failed(..) => {}
            }
            drop(state);
            let _ = exits.send(key.clone());
            if let probe::Report::Failed(kind, why) = report {
                tracing::info!(pod = %key, container = %id, ?kind, reason = %why, "restarting the container: its probe failed");
                tokio::spawn(stop(runtime.clone(), id.clone(), path.clone(), grace));
            }
        };
        tokio::spawn(probe::supervise(
            container,
            target,
            self.runtime.clone(),
            ended,
            report,
        ));
    }

    /// Pulls the image and starts attempt `attempt` of `container`; a view
    /// of why it did not start otherwise.
    #[allow(clippy::too_many_arguments)]
    async fn start(
        &self,
        pod: &Pod,
        dir: &PodDir,
        container: &Container,
        attempt: u32,
        etc: &[Bind],
        lookup: &Lazy,
        soonest: &mut impl FnMut(Duration),
    ) -> Result<ContainerView, Box<ContainerView>> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let lookup = lookup.get_or_init(|| self.lookup(pod)).await;
        let image = match self.pull(pod, &uid, container, lookup, soonest).await {
            Ok(image) => image,
            Err(failure) => {
                return Err(Box::new(ContainerView::pull_failed(
                    container, attempt, failure,
                )));
            }
        };
        let path = dir.attempt(&container.name, attempt);
        match self
            .create(pod, dir, container, &image, &path, attempt, etc, lookup)
            .await
        {
            Ok(running) => {
                self.watch(pod, container, &path, &running);
                let previous = previous_exit(dir, &container.name, attempt);
                Ok(self.running_view(container, attempt, &path, &running, previous))
            }
            Err(CreateError::Config(message)) => {
                soonest(self.config.pull_backoff.0);
                Err(Box::new(ContainerView::waiting(
                    container,
                    attempt,
                    "CreateContainerConfigError",
                    &message,
                )))
            }
            Err(CreateError::Start(message)) => {
                // Recorded as an ended attempt, so the restart policy and
                // its back-off apply (as a runc start error does in CRI).
                let record = ExitRecord {
                    exit_code: 128,
                    signal: None,
                    finished_at: jiff::Timestamp::now().to_string(),
                    oom_killed: false,
                    error: Some(message),
                };
                let _ = std::fs::create_dir_all(&path);
                if let Ok(json) = serde_json::to_vec(&record) {
                    let _ = runtime::monitor::write_atomic(
                        &path.join(runtime::monitor::EXIT_FILE),
                        &json,
                    );
                }
                soonest(self.restart_delay(attempt + 1));
                Err(Box::new(ContainerView::exited(
                    container,
                    attempt,
                    &path,
                    None,
                    &record,
                    None,
                    Some(self.restart_delay(attempt + 1)),
                )))
            }
        }
    }

    async fn pull(
        &self,
        pod: &Pod,
        uid: &str,
        container: &Container,
        lookup: &StoreLookup,
        soonest: &mut impl FnMut(Duration),
    ) -> Result<Image, PullFailure> {
        let image = container.image.clone().unwrap_or_default();
        let slot = (uid.to_string(), container.name.clone());
        if let Some(failure) = self.state().pulls.get(&slot)
            && failure.retry_at > Instant::now()
        {
            soonest(failure.retry_at - Instant::now());
            return Err(failure.backing_off());
        }
        let policy = PullPolicy::of(container.image_pull_policy.as_deref(), &image);
        let credentials = credentials(pod, lookup);
        match self.images.ensure(&image, policy, &credentials).await {
            Ok(image) => {
                self.state().pulls.remove(&slot);
                Ok(image)
            }
            Err(e) => {
                let failures = self.state().pulls.get(&slot).map_or(0, |f| f.failures) + 1;
                let delay = self
                    .config
                    .pull_backoff
                    .0
                    .saturating_mul(1 << (failures - 1).min(20))
                    .min(self.config.restart_backoff_max.0);
                let failure = PullFailure {
                    reason: e.reason().to_string(),
                    message: e.to_string(),
                    image: image.clone(),
                    failures,
                    retry_at: Instant::now() + delay,
                };
                tracing::warn!(pod = %pod_key(pod), container = %container.name, error = %e, "image pull failed");
                self.state().pulls.insert(slot, failure.clone());
                // Shown as the pull's error first, as back-off after.
                soonest(Duration::from_secs(1).min(delay));
                if matches!(e, PullError::Refused(_)) {
                    tracing::warn!(image, "image refused by the node's allow-list");
                }
                Err(failure)
            }
        }
    }

    /// Builds the attempt's bundle (overlay root, config) and starts it
    /// under a monitor.
    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        pod: &Pod,
        dir: &PodDir,
        container: &Container,
        image: &Image,
        path: &Path,
        attempt: u32,
        etc: &[Bind],
        lookup: &StoreLookup,
    ) -> Result<Running, CreateError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let start_error = |what: &str, e: io::Error| CreateError::Start(format!("{what}: {e}"));
        let _ = nix::mount::umount2(&path.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(path);
        for sub in ["rootfs", "upper", "work"] {
            std::fs::create_dir_all(path.join(sub))
                .map_err(|e| start_error("container directory", e))?;
        }
        mount_overlay(&image.layers, path).map_err(|e| start_error("root filesystem", e))?;
        std::fs::write(path.join("image_id"), &image.repo_digest)
            .map_err(|e| start_error("container directory", e))?;
        let env = container::environment(pod, container, &image.config, &self.host_ip, lookup)
            .map_err(CreateError::Config)?;
        let args = container::command_line(container, &image.config, &env);
        if args.is_empty() {
            return Err(CreateError::Config(
                "no command specified: the image has no Entrypoint or Cmd and the container no command".into(),
            ));
        }
        let (uid_n, gid_n) = container::user(pod, container, &image.config, &path.join("rootfs"))
            .map_err(CreateError::Config)?;
        let mut binds = etc.to_vec();
        binds.extend(
            self.volume_binds(pod, dir, container, lookup)
                .map_err(CreateError::Config)?,
        );
        let env_lines: Vec<String> = std::iter::once(format!(
            "HOSTNAME={}",
            pod.metadata.name.as_deref().unwrap_or_default()
        ))
        .chain(env.iter().map(|(k, v)| format!("{k}={v}")))
        .collect();
        let id = format!("{uid}-{}-{attempt}", container.name);
        let cgroup = cgroup::container_path(&self.config.cgroup_parent, &uid, &id);
        let resources = container.resources.as_ref();
        let quantity = |map: Option<
            &std::collections::BTreeMap<
                String,
                k8s_openapi::apimachinery::pkg::api::resource::Quantity,
            >,
        >,
                        name: &str| {
            map.and_then(|m| m.get(name))
                .and_then(|q| orca_core::validation::parse_quantity(&q.0))
        };
        let requests = resources.and_then(|r| r.requests.as_ref());
        let limits_map = resources.and_then(|r| r.limits.as_ref());
        let limits = Limits::from_resources(
            quantity(requests, "cpu"),
            quantity(limits_map, "cpu"),
            quantity(limits_map, "memory"),
        );
        let cwd = container
            .working_dir
            .clone()
            .unwrap_or_else(|| image.config.working_dir.clone());
        let hostname = pod.metadata.name.clone().unwrap_or_default();
        let netns = dir.netns();
        let config = bundle::config(&bundle::Spec {
            args: &args,
            env: &env_lines,
            cwd: &cwd,
            uid: uid_n,
            gid: gid_n,
            hostname: &hostname,
            netns: &netns,
            cgroup: &cgroup,
            binds: &binds,
            limits,
        });
        let json =
            serde_json::to_vec_pretty(&config).map_err(|e| CreateError::Start(e.to_string()))?;
        std::fs::write(path.join("config.json"), json)
            .map_err(|e| start_error("config.json", e))?;
        let log_path = self.log_path(pod, &container.name, attempt);
        let spec = MonitorSpec {
            id,
            bundle: path.to_path_buf(),
            runc: self.runtime.runc.clone(),
            runc_root: self.runtime.root.clone(),
            log_path,
            log_max_size: self.config.log_max_size.0,
            log_max_files: self.config.log_max_files,
            cgroup,
        };
        let running = self
            .runtime
            .start(path, &spec)
            .await
            .map_err(CreateError::Start)?;
        let json = serde_json::to_vec(&running).map_err(|e| CreateError::Start(e.to_string()))?;
        runtime::monitor::write_atomic(&path.join(runtime::RUNNING_FILE), &json)
            .map_err(|e| start_error("container record", e))?;
        Ok(running)
    }

    fn volume_binds(
        &self,
        pod: &Pod,
        dir: &PodDir,
        container: &Container,
        lookup: &StoreLookup,
    ) -> Result<Vec<Bind>, String> {
        let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
        let mut binds = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            let volume = volumes
                .into_iter()
                .flatten()
                .find(|v| v.name == mount.name)
                .ok_or_else(|| format!("volume {:?} is not defined in the pod", mount.name))?;
            let map;
            let secret;
            let (source, items, mode) = if volume.empty_dir.is_some() {
                (Source::Empty, None, None)
            } else if let Some(host) = &volume.host_path {
                (Source::Host(&host.path, host.type_.as_deref()), None, None)
            } else if let Some(c) = &volume.config_map {
                map = lookup
                    .config_map(&c.name)
                    .ok_or_else(|| format!("configmap \"{}\" not found", c.name))?;
                (Source::ConfigMap(&map), c.items.as_deref(), c.default_mode)
            } else if let Some(s) = &volume.secret {
                let name = s.secret_name.clone().unwrap_or_default();
                secret = lookup
                    .secret(&name)
                    .ok_or_else(|| format!("secret \"{name}\" not found"))?;
                (Source::Secret(&secret), s.items.as_deref(), s.default_mode)
            } else {
                return Err(format!(
                    "volume {:?}: only emptyDir, hostPath, configMap and secret volumes are supported",
                    volume.name
                ));
            };
            let host = sandbox::prepare_volume(dir, &volume.name, source, items, mode)
                .map_err(|e| format!("volume {:?}: {e}", volume.name))?;
            let source = match &mount.sub_path {
                Some(sub) if !sub.is_empty() => {
                    if sub.split('/').any(|p| p == "..") || sub.starts_with('/') {
                        return Err(format!("subPath {sub:?} leaves volume {:?}", volume.name));
                    }
                    let path = host.join(sub);
                    if !path.exists() {
                        std::fs::create_dir_all(&path).map_err(|e| e.to_string())?;
                    }
                    path
                }
                _ => host,
            };
            binds.push(Bind {
                source,
                destination: mount.mount_path.clone(),
                read_only: mount.read_only == Some(true),
            });
        }
        Ok(binds)
    }

    /// `<log_dir>/<ns>_<pod>_<uid>/<container>/<attempt>.log`.
    pub(crate) fn log_path(&self, pod: &Pod, container: &str, attempt: u32) -> PathBuf {
        let meta = &pod.metadata;
        self.config
            .log_dir
            .join(format!(
                "{}_{}_{}",
                meta.namespace.as_deref().unwrap_or("default"),
                meta.name.as_deref().unwrap_or_default(),
                meta.uid.as_deref().unwrap_or_default()
            ))
            .join(container)
            .join(format!("{attempt}.log"))
    }

    /// Stops every running container of pod `uid`: SIGTERM, then SIGKILL
    /// once `grace` has passed.
    /// Waits, within `grace`, for pod `uid`'s endpoints to be ready in no
    /// EndpointSlice (the EndpointSlice controller takes a deleted pod's
    /// out at once), then `termination_drain` more for the load balancers
    /// that follow the slices; how long it waited. Without this the pod
    /// would stop while an ingress still sends it requests, which fail.
    async fn drain(&self, uid: &str, grace: Duration) -> Duration {
        let start = Instant::now();
        let drain = self.config.termination_drain.0;
        if grace.is_zero() || drain.is_zero() || !self.has_running(uid) {
            return Duration::ZERO;
        }
        // Whether a slice lists the pod, and whether one lists it ready.
        let listed = || {
            let slices = self.slices.list();
            let endpoints = slices
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .filter(|e| e.target_ref.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid));
            endpoints.fold((false, false), |(_, ready), e| {
                let this = e.conditions.as_ref().and_then(|c| c.ready) != Some(false);
                (true, ready || this)
            })
        };
        // A pod no Service selects has no load balancer to wait for.
        if !listed().0 {
            return Duration::ZERO;
        }
        while listed().1 && start.elapsed() < grace {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let settle = drain.min(grace.saturating_sub(start.elapsed()));
        tokio::time::sleep(settle).await;
        start.elapsed()
    }

    /// Whether any container of pod `uid` runs.
    fn has_running(&self, uid: &str) -> bool {
        let dir = PodDir::new(&self.config.state_dir, uid);
        dir.containers()
            .iter()
            .any(|name| matches!(Disk::read(&dir, name), (_, Disk::Running(..))))
    }

    async fn terminate(&self, uid: &str, grace: Duration) {
        let dir = PodDir::new(&self.config.state_dir, uid);
        let mut running = Vec::new();
        for name in dir.containers() {
            if let (_, Disk::Running(path, record)) = Disk::read(&dir, &name) {
                running.push((path, record));
            }
        }
        if running.is_empty() {
            return;
        }
        let signal = if grace.is_zero() { "KILL" } else { "TERM" };
        for (_, record) in &running {
            if let Err(e) = self.runtime.kill(&record.id, signal).await {
                tracing::debug!(container = %record.id, error = %e, "kill failed");
            }
        }
        let ended = |running: &[(PathBuf, Running)]| {
            running
                .iter()
                .all(|(path, _)| runtime::exit_record(path).is_some())
        };
        let deadline = Instant::now() + grace;
        while !ended(&running) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !ended(&running) {
            for (_, record) in &running {
                let _ = self.runtime.kill(&record.id, "KILL").await;
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while !ended(&running) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Removes everything of pod `uid` from the node: its runc containers,
    /// mounts, network, cgroups, directories and logs.
    pub(crate) async fn teardown(&self, uid: &str) -> io::Result<()> {
        let dir = PodDir::new(&self.config.state_dir, uid);
        let record = PodDir::all(&self.config.state_dir)
            .into_iter()
            .find(|(d, _)| d.path() == dir.path())
            .and_then(|(_, r)| r);
        for name in dir.containers() {
            for attempt in dir.attempts(&name) {
                let path = dir.attempt(&name, attempt);
                let running = runtime::running_record(&path);
                self.retire(&path, &running).await;
            }
        }
        self.network.detach(uid).await?;
        network::remove_netns(&dir.netns())?;
        cgroup::remove(&cgroup::pod_path(&self.config.cgroup_parent, uid))?;
        match std::fs::remove_dir_all(dir.path()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        if let Some(record) = record {
            let logs = self.config.log_dir.join(format!(
                "{}_{}_{}",
                record.namespace, record.name, record.uid
            ));
            let _ = std::fs::remove_dir_all(logs);
        }
        self.state().watched.retain(|p| !p.starts_with(dir.path()));
        self.state()
            .health
            .retain(|p, _| !p.starts_with(dir.path()));
        self.state().pulls.retain(|(u, _), _| u != uid);
        self.state().written.remove(uid);
        self.state().sandboxes.remove(uid);
        Ok(())
    }

    /// Removes what belongs to no pod bound here any more: pod directories
    /// (and what they hold), veths, address allocations, cgroups and runc
    /// containers left by pods deleted while the kubelet was away.
    async fn collect_orphans(&self) {
        // Everything is listed before the live pods are: a pod's directory,
        // veth, address, cgroup and runc container all come after the pod is
        // in the cache, so none of a pod that has just arrived is taken for
        // an orphan.
        let dirs = PodDir::all(&self.config.state_dir);
        let links = self.network.pod_links().await.unwrap_or_default();
        let allocations = self.network.allocations().unwrap_or_default();
        let cgroups = cgroup::pods(&self.config.cgroup_parent);
        let containers = self.runtime.list().await.unwrap_or_default();
        let live: HashSet<String> = self
            .pods
            .list()
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        for (dir, _) in dirs {
            let uid = dir
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !live.contains(&uid) {
                tracing::info!(pod_uid = %uid, "removing a pod that is no longer bound here");
                self.terminate(&uid, Duration::ZERO).await;
                if let Err(e) = self.teardown(&uid).await {
                    tracing::warn!(pod_uid = %uid, error = %e, "cleanup failed; retrying later");
                }
            }
        }
        let veths: HashSet<String> = live.iter().map(|u| Network::veth_name(u)).collect();
        for link in links.iter().filter(|l| !veths.contains(*l)) {
            let _ = self.network.remove_link(link).await;
        }
        for (ip, owner) in allocations {
            if !live.contains(&owner) {
                let _ =
                    std::fs::remove_file(self.config.state_dir.join("ipam").join(ip.to_string()));
            }
        }
        for uid in cgroups.iter().filter(|u| !live.contains(*u)) {
            let _ = cgroup::remove(&cgroup::pod_path(&self.config.cgroup_parent, uid));
        }
        for id in containers {
            if !live.iter().any(|uid| id.starts_with(uid.as_str())) {
                let _ = self.runtime.delete(&id).await;
            }
        }
    }

    /// Removes unused images above the disk threshold.
    fn collect_images(&self) {
        let in_use: HashSet<String> = self
            .pods
            .list()
            .iter()
            .filter_map(|p| p.spec.as_ref())
            .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
            .filter_map(|c| c.image.as_deref())
            .filter_map(|i| crate::image::normalize(i).ok().map(|r| r.to_string()))
            .collect();
        let policy = &self.config.images;
        match self
            .images
            .collect_garbage(&in_use, policy.gc_high_percent, policy.gc_low_percent)
        {
            Ok(0) => {}
            Ok(freed) => tracing::info!(bytes = freed, "removed unused images"),
            Err(e) => tracing::warn!(error = %e, "image garbage collection failed"),
        }
    }
}

/// Stops one container: SIGTERM, then SIGKILL once `grace` has passed
/// without its monitor recording the exit.
async fn stop(runtime: Runtime, id: String, path: PathBuf, grace: Duration) {
    let _ = runtime.kill(&id, "TERM").await;
    let deadline = Instant::now() + grace;
    while runtime::exit_record(&path).is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if runtime::exit_record(&path).is_none() {
        let _ = runtime.kill(&id, "KILL").await;
    }
}

enum CreateError {
    /// The pod's spec cannot be made into a container (a missing ConfigMap).
    Config(String),
    /// runc or the bundle failed.
    Start(String),
}

/// The file an attempt records its restart back-off step in: how many
/// restarts in a row came before it without a long run between them.
const BACKOFF_STEP: &str = "backoff_step";

/// The back-off step recorded for an attempt.
fn backoff_step(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path.join(BACKOFF_STEP))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// How attempt `attempt - 1` of a container ended, with its record.
fn previous_exit(dir: &PodDir, name: &str, attempt: u32) -> Option<(ExitRecord, Option<Running>)> {
    let path = dir.attempt(name, attempt.checked_sub(1)?);
    Some((runtime::exit_record(&path)?, runtime::running_record(&path)))
}

fn pod_key(pod: &Pod) -> ObjectKey {
    ObjectKey::of(pod)
}

/// Credentials from the pod's `imagePullSecrets`.
fn credentials(pod: &Pod, lookup: &StoreLookup) -> Vec<Credential> {
    pod.spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|r| lookup.secret(&r.name))
        .filter_map(|s| {
            let data = s.data?;
            let json = data
                .get(".dockerconfigjson")
                .or_else(|| data.get(".dockercfg"))?;
            crate::image::credentials_from_docker_config(&json.0).ok()
        })
        .flatten()
        .collect()
}

/// Whether something is mounted at `path`.
fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let target = path.to_string_lossy();
    mounts
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(target.as_ref()))
}

/// Mounts the image's layers (bottom first) under the attempt's own upper
/// directory at `rootfs`.
fn mount_overlay(layers: &[PathBuf], path: &Path) -> io::Result<()> {
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    let lower = if lower.is_empty() {
        // An image of no layers: an empty lower directory.
        let empty = path.join("empty");
        std::fs::create_dir_all(&empty)?;
        empty.to_string_lossy().into_owned()
    } else {
        lower.join(":")
    };
    let options = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        path.join("upper").display(),
        path.join("work").display()
    );
    nix::mount::mount(
        Some("overlay"),
        &path.join("rootfs"),
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(io::Error::from)
}

/// Removes everything a kubelet with `config` made on this node: its
/// containers (killed), their mounts, the pods' network namespaces (and
/// with them their veths), address allocations, the bridge in `netns`,
/// the cgroups under the parent, and the state but the image cache.
pub async fn cleanup(config: &Config, netns: Option<&Path>) -> Result<(), Error> {
    // Each step runs whatever failed before it, so one stuck piece does not
    // leave the rest behind; the failures are reported together.
    let mut failed: Vec<String> = Vec::new();
    let mut note = |what: String, result: io::Result<()>| {
        if let Err(e) = result {
            failed.push(format!("{what}: {e}"));
        }
    };
    let runtime = Runtime {
        runc: config.runc.clone(),
        root: config.state_dir.join("runc"),
        monitor: PathBuf::new(),
    };
    for id in runtime.list().await.unwrap_or_default() {
        note(
            format!("removing container {id}"),
            runtime.delete(&id).await,
        );
    }
    for (dir, _) in PodDir::all(&config.state_dir) {
        for name in dir.containers() {
            for attempt in dir.attempts(&name) {
                let rootfs = dir.attempt(&name, attempt).join("rootfs");
                let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        note(
            format!("pod network namespace {}", dir.netns().display()),
            network::remove_netns(&dir.netns()),
        );
    }
    for sub in ["pods", "ipam", "runc"] {
        let path = config.state_dir.join(sub);
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                note(path.display().to_string(), Err(e))
            }
            _ => {}
        }
    }
    let parent = format!("/{}", config.cgroup_parent.trim_matches('/'));
    note(format!("cgroup {parent}"), cgroup::remove(&parent));
    match network::connect(netns) {
        Ok(handle) => note(
            format!("bridge {}", config.bridge),
            network::remove_link(&handle, &config.bridge).await,
        ),
        Err(e) => note("node network namespace".into(), Err(e)),
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Setup(format!("cleanup left: {}", failed.join("; "))))
    }
}
