//! Nodes: each registered Node gets a pod CIDR from the cluster's range,
//! and a node whose Lease goes silent is marked `Ready=Unknown`, tainted
//! `node.kubernetes.io/unreachable:NoExecute`, its pods marked not ready
//! at once (so they leave their Services' endpoints) and evicted once their
//! toleration of the taint runs out, so their ReplicaSets replace them on
//! other nodes. A node that renews its Lease again is untainted.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{NodeCondition, Taint};
use orca_core::api::{CompactPod, Lease, Node, Pod, Time};
use orca_core::store::{Cidr, DeleteOptions, Error, Store};
use orca_core::watch::{Action, Controller, Informers, ObjectKey, Reader};

/// Pods of an unreachable node marked not ready at once, at most.
const MARKS_IN_FLIGHT: usize = 32;

/// The taint an unreachable node gets.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Where node Leases live.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// How the node lifecycle controller judges nodes.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A node whose Lease was not renewed for this long is unreachable.
    pub grace: Duration,
    /// How long a pod stays on an unreachable node when it names no
    /// toleration of its own (Kubernetes adds 300 s to every pod).
    pub eviction: Duration,
    /// How often each node is looked at, events or not.
    pub period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(40),
            eviction: Duration::from_secs(300),
            period: Duration::from_secs(5),
        }
    }
}

/// The node loops: pod CIDRs and lifecycle.
pub struct Nodes {
    store: Store,
    nodes: Reader<Node>,
    leases: Reader<Lease>,
    pods: Reader<CompactPod>,
    timing: Timing,
    cluster_cidr: Option<Cidr>,
    /// Pod CIDRs given out that the cache may not show yet.
    assigned: Mutex<HashMap<String, String>>,
}

fn ts(t: &Time) -> k8s_openapi::jiff::Timestamp {
    t.0
}

fn since(t: k8s_openapi::jiff::Timestamp) -> Duration {
    Duration::try_from(k8s_openapi::jiff::Timestamp::now().duration_since(t))
        .unwrap_or(Duration::ZERO)
}

impl Nodes {
    /// The loop and its controller on the shared caches, writing through
    /// `store`; pod CIDRs are /24s of `cluster_cidr` (the first range).
    pub fn new(
        informers: &Informers,
        store: Store,
        timing: Timing,
        cluster_cidr: Option<Cidr>,
    ) -> (Arc<Self>, Controller<Node>) {
        let nodes = informers.all::<Node>();
        let leases = informers.all::<Lease>();
        let pods = informers.all::<CompactPod>();
        let this = Arc::new(Self {
            store,
            nodes: nodes.reader(),
            leases: leases.reader(),
            pods: pods.reader(),
            timing,
            cluster_cidr,
            assigned: Mutex::new(HashMap::new()),
        });
        let controller = Controller::new(&nodes)
            .watches(&leases, |lease: &Lease| {
                if lease.metadata.namespace.as_deref() == Some(LEASE_NAMESPACE) {
                    vec![ObjectKey::new(
                        None,
                        lease.metadata.name.as_deref().unwrap_or_default(),
                    )]
                } else {
                    Vec::new()
                }
            })
            .reads(&pods)
            .named("node");
        (this, controller)
    }

    /// Gives the node a pod CIDR if it has none, then judges its health.
    pub async fn reconcile(&self, key: ObjectKey) -> Result<Action, Error> {
        let Some(node) = self.nodes.get(&key) else {
            self.assigned_mut().remove(&key.name);
            return Ok(Action::AwaitChange);
        };
        if node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .is_none()
        {
            self.assign_cidr(&key.name).await?;
        }
        self.judge(&node).await
    }

    fn assigned_mut(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.assigned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn assign_cidr(&self, name: &str) -> Result<(), Error> {
        let Some(range) = self.cluster_cidr else {
            return Ok(());
        };
        let bits = if range.addr.is_ipv4() { 24 } else { 64 };
        let cidr = {
            let mut assigned = self.assigned_mut();
            // A node gone from the cache was deleted (this one is in it):
            // its range is free now, even before its own reconcile lets
            // it go, so a node registered right after can have it.
            assigned.retain(|node, _| self.nodes.get(&ObjectKey::new(None, node)).is_some());
            // Given one already, whose write the cache does not show yet
            // (or that a writer of a stale copy took away): the same one.
            if let Some(cidr) = assigned.get(name) {
                cidr.clone()
            } else {
                let mut used: HashSet<String> = self
                    .nodes
                    .list()
                    .iter()
                    .filter_map(|n| n.spec.as_ref()?.pod_cidr.clone())
                    .collect();
                used.extend(assigned.values().cloned());
                let Some(cidr) = (0..)
                    .map_while(|i| range.subnet(bits, i))
                    .map(|c| c.to_string())
                    .find(|c| !used.contains(c))
                else {
                    tracing::error!(node = name, %range, "no pod CIDR is left in the cluster's range");
                    return Ok(());
                };
                assigned.insert(name.to_string(), cidr.clone());
                cidr
            }
        };
        self.store
            .cluster_api::<Node>()
            .modify_if_exists(name, false, |fresh| {
                let spec = fresh.spec.get_or_insert_with(Default::default);
                if spec.pod_cidr.is_none() {
                    spec.pod_cidr = Some(cidr.clone());
                    spec.pod_cidrs = Some(vec![cidr.clone()]);
                }
            })
            .await
            .map(|_| ())
    }

    /// The node's last sign of life: its Lease's renewal, else its creation.
    fn last_seen(&self, node: &Node) -> Option<k8s_openapi::jiff::Timestamp> {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        self.leases
            .get(&ObjectKey::new(Some(LEASE_NAMESPACE), name))
            .and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0))
            .or_else(|| node.metadata.creation_timestamp.as_ref().map(ts))
    }

    async fn judge(&self, node: &Node) -> Result<Action, Error> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut silent_for = self.last_seen(node).map_or(Duration::ZERO, since);
        if silent_for >= self.timing.grace {
            // The cache may be behind (a loaded master applies its watch
            // events late): a node is declared dead only on the Lease as
            // etcd holds it now, never on a stale copy.
            let fresh = self
                .store
                .api::<Lease>(LEASE_NAMESPACE)
                .get_opt(&name)
                .await?
                .and_then(|l| l.spec?.renew_time.map(|t| t.0));
            if let Some(renewed) = fresh {
                silent_for = silent_for.min(since(renewed));
            }
        }
        let taint = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .and_then(|t| {
                t.iter()
                    .find(|t| t.key == UNREACHABLE && t.effect == "NoExecute")
            })
            .cloned();
        if silent_for < self.timing.grace {
            if taint.is_some() {
                tracing::info!(node = %name, "node is back: untainted");
                self.set_taint(&name, false).await?;
            }
            return Ok(Action::Requeue(
                (self.timing.grace - silent_for).min(self.timing.period),
            ));
        }
        // Unreachable.
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone());
        if ready.as_deref() != Some("Unknown") {
            tracing::warn!(node = %name, silent = ?silent_for, "node unreachable: Ready=Unknown, tainted");
            self.mark_unknown(&name).await?;
        }
        let tainted_at = match taint.and_then(|t| t.time_added) {
            Some(t) => t.0,
            None => {
                self.set_taint(&name, true).await?;
                k8s_openapi::jiff::Timestamp::now()
            }
        };
        let mut next = self.timing.period;
        let pods: Vec<Arc<CompactPod>> = self
            .pods
            .on_node(&name)
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        // Their endpoints leave the Services at once: many writes in
        // flight, not one round trip after another.
        let marked: Vec<Result<(), Error>> = stream::iter(pods.clone())
            .map(|pod| async move { self.mark_not_ready(&pod).await })
            .buffer_unordered(MARKS_IN_FLIGHT)
            .collect()
            .await;
        marked.into_iter().collect::<Result<(), Error>>()?;
        for pod in pods {
            match tolerated_for(&pod, self.timing.eviction) {
                None => {}
                Some(allowed) => {
                    let waited = since(tainted_at);
                    if waited >= allowed {
                        self.evict(&pod).await?;
                    } else {
                        next = next.min(allowed - waited);
                    }
                }
            }
        }
        Ok(Action::Requeue(next))
    }

    async fn set_taint(&self, name: &str, on: bool) -> Result<(), Error> {
        self.store
            .cluster_api::<Node>()
            .modify_if_exists(name, false, |fresh| {
                let spec = fresh.spec.get_or_insert_with(Default::default);
                let taints = spec.taints.get_or_insert_with(Vec::new);
                taints.retain(|t| t.key != UNREACHABLE);
                if on {
                    taints.push(Taint {
                        key: UNREACHABLE.into(),
                        effect: "NoExecute".into(),
                        time_added: Some(Time(k8s_openapi::jiff::Timestamp::now())),
                        value: None,
                    });
                }
                if taints.is_empty() {
                    spec.taints = None;
                }
            })
            .await
            .map(|_| ())
    }

    async fn mark_unknown(&self, name: &str) -> Result<(), Error> {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        self.store
            .cluster_api::<Node>()
            .modify_if_exists(name, true, |fresh| {
                let status = fresh.status.get_or_insert_with(Default::default);
                let conditions = status.conditions.get_or_insert_with(Vec::new);
                conditions.retain(|c| c.type_ != "Ready");
                conditions.push(NodeCondition {
                    type_: "Ready".into(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusUnknown".into()),
                    message: Some("Kubelet stopped posting node status.".into()),
                    last_heartbeat_time: None,
                    last_transition_time: Some(now.clone()),
                });
            })
            .await
            .map(|_| ())
    }

    async fn mark_not_ready(&self, pod: &CompactPod) -> Result<(), Error> {
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        if !ready {
            return Ok(());
        }
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        self.store
            .api::<Pod>(&namespace)
            .modify_if_exists(&name, true, |fresh| {
                let status = fresh.status.get_or_insert_with(Default::default);
                for c in status.conditions.iter_mut().flatten() {
                    if c.type_ == "Ready" || c.type_ == "ContainersReady" {
                        c.status = "False".into();
                        c.reason = Some("NodeUnreachable".into());
                        c.last_transition_time = Some(now.clone());
                    }
                }
            })
            .await
            .map(|_| ())
    }

    async fn evict(&self, pod: &CompactPod) -> Result<(), Error> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        tracing::info!(pod = %ObjectKey::of(pod), "evicting from an unreachable node");
        self.store
            .api::<Pod>(&namespace)
            .delete_if_exists(&name, DeleteOptions::default())
            .await
            .map(|_| ())
    }
}

/// How long `pod` may stay on an unreachable node (`None`: for ever): its
/// own toleration of the unreachable taint, else `default` (the toleration
/// Kubernetes adds to every pod).
fn tolerated_for(pod: &CompactPod, default: Duration) -> Option<Duration> {
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_ref());
    let matching = tolerations.into_iter().flatten().find(|t| {
        let key_ok = t
            .key
            .as_deref()
            .is_none_or(|k| k.is_empty() || k == UNREACHABLE);
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == "NoExecute");
        key_ok && effect_ok
    });
    match matching {
        Some(t) => t
            .toleration_seconds
            .map(|s| Duration::from_secs(s.max(0).unsigned_abs())),
        None => Some(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, Toleration};

    fn tolerating(tolerations: Vec<Toleration>) -> CompactPod {
        CompactPod::of(&Pod {
            spec: Some(PodSpec {
                tolerations: Some(tolerations),
                ..PodSpec::default()
            }),
            ..Pod::default()
        })
    }

    fn toleration(key: Option<&str>, effect: Option<&str>, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: key.map(str::to_string),
            operator: Some("Exists".into()),
            effect: effect.map(str::to_string),
            toleration_seconds: seconds,
            ..Toleration::default()
        }
    }

    #[test]
    fn a_pod_stays_on_an_unreachable_node_as_long_as_it_tolerates() {
        let default = Timing::default().eviction;
        assert_eq!(default, Duration::from_secs(300));
        let minutes = |m: u64| Some(Duration::from_secs(m * 60));
        // No toleration of its own: the default.
        assert_eq!(tolerated_for(&CompactPod::default(), default), minutes(5));
        // Its own, with seconds or for ever.
        let own = toleration(Some(UNREACHABLE), Some("NoExecute"), Some(60));
        assert_eq!(tolerated_for(&tolerating(vec![own]), default), minutes(1));
        let forever = toleration(Some(UNREACHABLE), Some("NoExecute"), None);
        assert_eq!(tolerated_for(&tolerating(vec![forever]), default), None);
        // Every taint tolerated (no key, no effect).
        let all = toleration(None, None, None);
        assert_eq!(tolerated_for(&tolerating(vec![all]), default), None);
        // Tolerations of other taints or effects do not count.
        let other = vec![
            toleration(
                Some("node.kubernetes.io/not-ready"),
                Some("NoExecute"),
                None,
            ),
            toleration(Some(UNREACHABLE), Some("NoSchedule"), None),
        ];
        assert_eq!(tolerated_for(&tolerating(other), default), minutes(5));
    }
}
