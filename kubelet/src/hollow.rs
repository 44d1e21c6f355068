//! Hollow nodes, as Kubemark's: many nodes in one process that register,
//! heartbeat their Leases and report the pods bound to them Running and
//! Ready, with addresses from their pod CIDRs, without starting anything.
//! They drive the control plane in tests and benchmarks as real kubelets
//! would. One watch covers every node of the process (the store's node
//! views, all of them), never the cluster's pending pods.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStatus, PodCondition, PodIP, PodStatus,
};
use orca_core::api::{Lease, Node, Pod, Time};
use orca_core::store::{Cidr, DeleteOptions, Error, Store};
use orca_core::telemetry::Metrics;
use orca_core::watch::{Action, Controller, Informers, ObjectKey, Reader};

use crate::node::{Capacity, Registration, lease_namespace, register, renew};

/// What a hollow node process stands in for.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How many nodes.
    pub count: usize,
    /// Their names: the prefix and a number from 0.
    pub prefix: String,
    /// How often each renews its Lease.
    pub heartbeat: Duration,
    /// What each offers.
    pub capacity: Capacity,
}

/// Node registrations and Lease renewals in flight at once.
const PARALLEL: usize = 32;

/// The pod addresses handed out, per node.
#[derive(Default)]
struct Addresses {
    by_pod: HashMap<ObjectKey, (String, IpAddr)>,
    used: HashMap<String, BTreeSet<IpAddr>>,
}

struct Hollow {
    store: Store,
    ours: HashSet<String>,
    pods: Reader<Pod>,
    nodes: Reader<Node>,
    addresses: Mutex<Addresses>,
}

/// Runs the hollow nodes until `shutdown` resolves. Their Nodes stay (as a
/// stopped kubelet's do); their Leases stop being renewed.
pub async fn run(
    store: Store,
    settings: Settings,
    metrics: &Metrics,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    lease_namespace(&store).await?;
    let registration = Registration {
        address: "127.0.0.1".into(),
        capacity: settings.capacity.clone(),
        version: "orca-hollow".into(),
        runtime: "hollow://".into(),
        port: None,
        pressure: crate::node::Pressure::default(),
        pod_cidr: None,
    };
    let names: Vec<String> = (0..settings.count)
        .map(|i| format!("{}{i}", settings.prefix))
        .collect();
    let registered: Vec<Result<Node, Error>> = stream::iter(&names)
        .map(|name| register(&store, name, &registration))
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    for result in registered {
        result?;
    }
    tracing::info!(count = names.len(), prefix = %settings.prefix, "hollow nodes registered");
    let informers = Informers::new(store.clone(), metrics);
    let pods = informers.informer(store.bound_pods());
    let nodes = informers.all::<Node>();
    let hollow = Arc::new(Hollow {
        store: store.clone(),
        ours: names.iter().cloned().collect(),
        pods: pods.reader(),
        nodes: nodes.reader(),
        addresses: Mutex::new(Addresses::default()),
    });
    // A pod waiting for its node's pod CIDR goes on once the node has one.
    let waiting = pods.reader();
    let controller = Controller::new(&pods)
        .watches(&nodes, move |node: &Node| {
            let name = node.metadata.name.as_deref().unwrap_or_default();
            waiting
                .on_node(name)
                .iter()
                .map(|p| ObjectKey::of(&**p))
                .collect()
        })
        .concurrency(16)
        .named("hollow-node");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let heartbeat = {
        let store = store.clone();
        let mut stopped = stopped.clone();
        let period = settings.heartbeat;
        let node_cache = nodes.reader();
        let registration = registration.clone();
        async move {
            let lease = (period * 4).max(Duration::from_secs(1));
            // Each node's Lease as last written, so a renewal is one write.
            let mut written: Vec<Option<Lease>> = vec![None; names.len()];
            loop {
                let renewals: Vec<Result<(), Error>> = stream::iter(names.iter().zip(&mut written))
                    .map(|(name, last)| renew(&store, name, lease, last))
                    .buffer_unordered(PARALLEL)
                    .collect()
                    .await;
                if let Some(Err(e)) = renewals.into_iter().find(Result::is_err) {
                    tracing::warn!(error = %e, "lease renewal failed; retrying");
                }
                // A node the master marked unreachable while it was away
                // reports itself Ready again, as a kubelet's status update does.
                for name in &names {
                    let ready = node_cache.get(&ObjectKey::new(None, name)).and_then(|n| {
                        n.status
                            .as_ref()?
                            .conditions
                            .as_ref()?
                            .iter()
                            .find(|c| c.type_ == "Ready")
                            .map(|c| c.status == "True")
                    });
                    if ready == Some(false)
                        && let Err(e) = register(&store, name, &registration).await
                    {
                        tracing::warn!(node = %name, error = %e, "status update failed; retrying");
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(period) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
        }
    };
    let pods_loop = {
        let mut stopped = stopped.clone();
        controller.run(
            move |key| {
                let hollow = Arc::clone(&hollow);
                async move { hollow.reconcile(key).await }
            },
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        )
    };
    let signal = async {
        shutdown.await;
        let _ = stop.send(true);
    };
    tokio::join!(heartbeat, pods_loop, signal);
    Ok(())
}

impl Hollow {
    fn addresses(&self) -> std::sync::MutexGuard<'_, Addresses> {
        self.addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action, Error> {
        let Some(pod) = self.pods.get(&key) else {
            let mut addresses = self.addresses();
            if let Some((node, ip)) = addresses.by_pod.remove(&key)
                && let Some(used) = addresses.used.get_mut(&node)
            {
                used.remove(&ip);
            }
            return Ok(Action::AwaitChange);
        };
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if !self.ours.contains(&node) {
            return Ok(Action::AwaitChange);
        }
        let namespace = key.namespace.clone().unwrap_or_default();
        let api = self.store.api::<Pod>(&namespace);
        if pod.metadata.deletion_timestamp.is_some() {
            // Nothing runs: the kubelet's final delete follows at once.
            let now = DeleteOptions {
                grace_period_seconds: Some(0),
                ..Default::default()
            };
            api.delete_if_exists(&key.name, now).await?;
            return Ok(Action::AwaitChange);
        }
        let status = pod.status.clone().unwrap_or_default();
        let ip = if let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok()) {
            // Running already (perhaps since before a restart): keep its address.
            let mut addresses = self.addresses();
            addresses.used.entry(node.clone()).or_default().insert(ip);
            addresses.by_pod.insert(key, (node, ip));
            drop(addresses);
            let ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready {
                return Ok(Action::AwaitChange);
            }
            // Marked not ready while this node was away: it runs, and says
            // so again, as a kubelet back from a restart does.
            ip
        } else {
            let Some(ip) = self.allocate(&key, &node) else {
                // No pod CIDR yet: the node's update brings the pod back.
                return Ok(Action::AwaitChange);
            };
            ip
        };
        let mut running = (*pod).clone();
        running.status = Some(running_status(&pod, ip));
        match api.update_status(&running).await {
            Ok(_) => Ok(Action::AwaitChange),
            Err(Error::Conflict { .. }) => Ok(Action::Requeue(Duration::from_millis(50))),
            Err(Error::NotFound { .. }) => Ok(Action::AwaitChange),
            Err(e) => Err(e),
        }
    }

    /// The first free address of `node`'s pod CIDR after the gateway (.1).
    fn allocate(&self, key: &ObjectKey, node: &str) -> Option<IpAddr> {
        let cidr: Cidr = self
            .nodes
            .get(&ObjectKey::new(None, node))?
            .spec
            .as_ref()?
            .pod_cidr
            .as_deref()?
            .parse()
            .ok()?;
        let mut addresses = self.addresses();
        if let Some((_, ip)) = addresses.by_pod.get(key) {
            return Some(*ip);
        }
        let used = addresses.used.entry(node.to_string()).or_default();
        let ip = (2..cidr.size())
            .map(|i| cidr.nth(i))
            .find(|ip| cidr.holds(*ip) && !used.contains(ip))?;
        used.insert(ip);
        addresses.by_pod.insert(key.clone(), (node.to_string(), ip));
        Some(ip)
    }
}

/// The status of a pod whose containers all run and are ready.
fn running_status(pod: &Pod, ip: IpAddr) -> PodStatus {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let condition = |type_: &str| PodCondition {
        type_: type_.into(),
        status: "True".into(),
        last_transition_time: Some(now.clone()),
        ..PodCondition::default()
    };
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    PodStatus {
        phase: Some("Running".into()),
        pod_ip: Some(ip.to_string()),
        pod_ips: Some(vec![PodIP { ip: ip.to_string() }]),
        host_ip: Some("127.0.0.1".into()),
        start_time: Some(now.clone()),
        conditions: Some(
            ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
                .map(condition)
                .to_vec(),
        ),
        container_statuses: Some(
            containers
                .iter()
                .map(|c| ContainerStatus {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                    image_id: String::new(),
                    container_id: Some(format!("hollow://{}", c.name)),
                    ready: true,
                    started: Some(true),
                    restart_count: 0,
                    state: Some(ContainerState {
                        running: Some(ContainerStateRunning {
                            started_at: Some(now.clone()),
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                })
                .collect(),
        ),
        ..PodStatus::default()
    }
}
