//! A node's presence in the cluster: its Node object (capacity, addresses,
//! the Ready condition) and the Lease in `kube-node-lease` it renews, which
//! the master's node lifecycle controller watches.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use orca_core::api::{Lease, Namespace, Node, ObjectMeta, Time};
use orca_core::store::{Error, Store};

/// The namespace node Leases live in.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// What a node offers.
#[derive(Debug, Clone)]
pub struct Capacity {
    /// CPU cores.
    pub cpu: String,
    /// Memory, as a quantity (`16Gi`).
    pub memory: String,
    /// Pods.
    pub pods: u32,
}

fn ready_condition(now: &Time) -> NodeCondition {
    NodeCondition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: Some("KubeletReady".into()),
        message: Some("kubelet is posting ready status".into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

/// What a kubelet reports of its node.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The node's address (InternalIP).
    pub address: String,
    /// What it offers.
    pub capacity: Capacity,
    /// The kubelet's version.
    pub version: String,
    /// The container runtime's version (`runc://1.1.5`).
    pub runtime: String,
    /// The port of the kubelet's server, as `daemonEndpoints` says.
    pub port: Option<u16>,
    /// Whether the node is short of memory or disk, as measured last.
    pub pressure: Pressure,
    /// The pod CIDR from the kubelet's configuration, written with the Node
    /// when it is created, so the master never allocates it another first.
    pub pod_cidr: Option<String>,
}

/// The node's pressure conditions, measured against the kubelet's default
/// hard eviction thresholds: less than 100 MiB of memory available, less
/// than 10% of the state directory's filesystem free.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    /// `MemoryPressure`.
    pub memory: bool,
    /// `DiskPressure`.
    pub disk: bool,
}

impl Pressure {
    /// Measures the machine's available memory (`MemAvailable`) and the
    /// filesystem holding `state_dir`.
    pub fn measure(state_dir: &std::path::Path) -> Self {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let available_kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
        let disk = rustix::fs::statvfs(state_dir)
            .ok()
            .filter(|fs| fs.f_blocks > 0)
            .map(|fs| fs.f_bavail * 10 < fs.f_blocks);
        Self {
            memory: available_kib.is_some_and(|kib| kib < 100 * 1024),
            disk: disk.unwrap_or(false),
        }
    }
}

fn node_status(registration: &Registration, name: &str, now: &Time) -> NodeStatus {
    let capacity = &registration.capacity;
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(capacity.cpu.clone())),
        ("memory".to_string(), Quantity(capacity.memory.clone())),
        ("pods".to_string(), Quantity(capacity.pods.to_string())),
    ]);
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: registration.address.clone(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: name.into(),
            },
        ]),
        conditions: Some(vec![
            ready_condition(now),
            pressure_condition(
                "MemoryPressure",
                registration.pressure.memory,
                ("KubeletHasInsufficientMemory", "KubeletHasSufficientMemory"),
                now,
            ),
            pressure_condition(
                "DiskPressure",
                registration.pressure.disk,
                ("KubeletHasDiskPressure", "KubeletHasNoDiskPressure"),
                now,
            ),
        ]),
        daemon_endpoints: registration.port.map(|port| NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            kubelet_version: registration.version.clone(),
            container_runtime_version: registration.runtime.clone(),
            operating_system: "linux".into(),
            architecture: "amd64".into(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

fn pressure_condition(
    type_: &str,
    under: bool,
    reasons: (&str, &str),
    now: &Time,
) -> NodeCondition {
    NodeCondition {
        type_: type_.into(),
        status: if under { "True" } else { "False" }.into(),
        reason: Some(if under { reasons.0 } else { reasons.1 }.into()),
        message: None,
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

/// Registers `name` (or refreshes its status when it exists): capacity,
/// its address, Ready. Keeps what the master set (`spec.podCIDR`, taints).
pub async fn register(
    store: &Store,
    name: &str,
    registration: &Registration,
) -> Result<Node, Error> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = node_status(registration, name, &now);
    let api = store.cluster_api::<Node>();
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/hostname".to_string(), name.to_string()),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
            ])),
            ..ObjectMeta::default()
        },
        spec: registration.pod_cidr.as_ref().map(|cidr| NodeSpec {
            pod_cidr: Some(cidr.clone()),
            pod_cidrs: Some(vec![cidr.clone()]),
            ..NodeSpec::default()
        }),
        ..Node::default()
    };
    if let Err(e) = api.create(&node).await
        && !matches!(e, Error::AlreadyExists { .. })
    {
        return Err(e);
    }
    api.modify(name, true, |fresh| fresh.status = Some(status.clone()))
        .await
}

/// Writes the node's status again when it is not what the kubelet reports
/// (the master marked it NotReady while the kubelet was away, the address
/// or a pressure condition changed); otherwise writes nothing: the Lease is
/// the heartbeat.
pub async fn refresh(store: &Store, name: &str, registration: &Registration) -> Result<(), Error> {
    let api = store.cluster_api::<Node>();
    let node = api.get(name).await?;
    let status = node.status.unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let address = status
        .addresses
        .iter()
        .flatten()
        .any(|a| a.type_ == "InternalIP" && a.address == registration.address);
    let condition = |type_: &str, under: bool| {
        let expected = if under { "True" } else { "False" };
        status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == type_ && c.status == expected)
    };
    let pressure = condition("MemoryPressure", registration.pressure.memory)
        && condition("DiskPressure", registration.pressure.disk);
    if !(ready && address && pressure) {
        register(store, name, registration).await?;
    }
    Ok(())
}

/// Makes sure the Lease namespace exists.
pub async fn lease_namespace(store: &Store) -> Result<(), Error> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(LEASE_NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    match store.cluster_api::<Namespace>().create(&ns).await {
        Ok(_) | Err(Error::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Renews `node`'s Lease once (creating it on first use). `last` is the
/// Lease as this node last wrote it: while nobody else has written it
/// since, a renewal is one write guarded by its resourceVersion, with no
/// read before it (as Kubernetes' kubelet keeps its latest Lease).
pub async fn renew(
    store: &Store,
    node: &str,
    duration: Duration,
    last: &mut Option<Lease>,
) -> Result<(), Error> {
    let api = store.api::<Lease>(LEASE_NAMESPACE);
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let seconds = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX);
    let spec = LeaseSpec {
        holder_identity: Some(node.into()),
        lease_duration_seconds: Some(seconds),
        renew_time: Some(now),
        ..LeaseSpec::default()
    };
    if let Some(mut lease) = last.take() {
        lease.spec = Some(spec.clone());
        match api.update(&lease).await {
            Ok(written) => {
                *last = Some(written);
                return Ok(());
            }
            // Written or deleted by someone else: read it afresh.
            Err(Error::Conflict { .. } | Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    match api.get_opt(node).await? {
        Some(mut lease) => {
            lease.spec = Some(spec);
            *last = Some(api.update(&lease).await?);
            Ok(())
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(node.into()),
                    namespace: Some(LEASE_NAMESPACE.into()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
            };
            match api.create(&lease).await {
                Ok(created) => {
                    *last = Some(created);
                    Ok(())
                }
                Err(Error::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}
