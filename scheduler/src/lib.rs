//! Orca's scheduler: filter, score and bind pods to nodes.
//!
//! Each pending pod is checked against every node (resources against what
//! the node can allocate less what its pods request, `nodeSelector`,
//! required node affinity, taints and tolerations, host ports, readiness,
//! `unschedulable`); the nodes that pass are scored (least allocated,
//! balanced allocation, spreading one owner's pods, preferred affinity);
//! the best gets the pod: `spec.nodeName` written in a transaction guarded
//! by the pod's resourceVersion (and the leader's guard), which also
//! writes the pod into the node's view. A pod that fits nowhere gets
//! `PodScheduled=False` with the reason per filter, as kubectl users know
//! it, and is tried again when nodes or pods change.

pub mod resources;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, NodeSelectorTerm, PodCondition, Taint, Toleration,
};
use orca_core::api::{Node, Pod, Time};
use orca_core::store::{BIND_BATCH, Error, Store};
use orca_core::telemetry::Metrics;
use orca_core::watch::{Action, Controller, Informers, ObjectKey, Reader};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Unit;

use resources::Resources;

/// The names a pod may give in `schedulerName` for this scheduler.
const NAMES: [&str; 2] = ["default-scheduler", "orca"];
/// How long an unschedulable pod waits before it is tried again even if
/// nothing changes (node and pod changes try it at once).
const RETRY: Duration = Duration::from_secs(10);
/// Bindings assumed and not yet written, at most.
const BINDS_IN_FLIGHT: usize = 256;

/// One binding on its way to the store.
struct Binding {
    key: ObjectKey,
    /// The pod as read, with `spec.nodeName` set.
    pod: Arc<Pod>,
    node: String,
    /// Its place among [`BINDS_IN_FLIGHT`].
    _permit: tokio::sync::OwnedSemaphorePermit,
}
/// Below this many nodes every node is checked; above it, a share of
/// them, as kube-scheduler's `percentageOfNodesToScore`.
const MIN_NODES_TO_FIND: usize = 100;

/// How many feasible nodes to look for among `all`: every node in a small
/// cluster, then kube-scheduler's adaptive share (50% less 1% per 125
/// nodes, at least 5%).
fn nodes_to_find(all: usize) -> usize {
    if all <= MIN_NODES_TO_FIND {
        return all;
    }
    let percent = (50 - all / 125).max(5);
    (all * percent / 100).max(MIN_NODES_TO_FIND)
}

/// The scheduler's metrics.
#[derive(Clone)]
struct SchedulerMetrics {
    /// From the pod first seen pending to its binding stored.
    latency: Histogram,
    bound: Counter,
    unschedulable: Counter,
}

impl SchedulerMetrics {
    fn register(metrics: &Metrics) -> Self {
        let this = Self {
            latency: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            bound: Counter::default(),
            unschedulable: Counter::default(),
        };
        let m = metrics.registry_with_prefix("orca_scheduler");
        m.register_with_unit(
            "pod_scheduling_duration",
            "Time from a pod first seen pending to its binding stored",
            Unit::Seconds,
            this.latency.clone(),
        );
        m.register("bindings", "Pods bound to a node", this.bound.clone());
        m.register(
            "unschedulable",
            "Attempts that found no node for a pod",
            this.unschedulable.clone(),
        );
        this
    }
}

/// The scheduling loop.
pub struct Scheduler {
    store: Store,
    pods: Reader<Pod>,
    nodes: Reader<Node>,
    /// Pods bound by this scheduler that the pod cache does not show bound
    /// yet: counted on their node, so the next pod sees the room they took
    /// (kube-scheduler's assumed pods).
    assumed: Mutex<HashMap<ObjectKey, Arc<Pod>>>,
    /// Bindings waiting to be written.
    binds: Arc<tokio::sync::Semaphore>,
    /// The bindings the binder writes next.
    to_bind: Mutex<Vec<Binding>>,
    /// Wakes the binder.
    wake_binder: tokio::sync::Notify,
    /// Pods whose binding failed, to try again.
    retry: tokio::sync::mpsc::UnboundedSender<ObjectKey>,
    /// When each pending pod was first seen, for the latency histogram.
    first_seen: Mutex<HashMap<ObjectKey, Instant>>,
    /// Where the next search through the nodes starts, so sampled searches
    /// spread over all of them.
    next_start: Mutex<usize>,
    metrics: SchedulerMetrics,
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn pending(pod: &Pod) -> bool {
    node_name(pod).is_none()
        && pod.metadata.deletion_timestamp.is_none()
        && pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .is_none_or(|n| NAMES.contains(&n))
}

/// Whether the scheduler already found no node for the pod.
fn found_unschedulable(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "PodScheduled" && c.status == "False")
        })
}

fn occupies(pod: &Pod) -> bool {
    !matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

impl Scheduler {
    /// The loop and its controller on the shared caches, binding through
    /// `store`. A node's change, or a bound pod's (which may free room),
    /// tries every pending pod again.
    pub fn new(
        informers: &Informers,
        store: Store,
        metrics: &Metrics,
    ) -> (Arc<Self>, Controller<Pod>) {
        let pods = informers.all::<Pod>();
        let nodes = informers.all::<Node>();
        let (retry, retries) = tokio::sync::mpsc::unbounded_channel();
        let this = Arc::new(Self {
            store,
            pods: pods.reader(),
            nodes: nodes.reader(),
            assumed: Mutex::new(HashMap::new()),
            binds: Arc::new(tokio::sync::Semaphore::new(BINDS_IN_FLIGHT)),
            to_bind: Mutex::new(Vec::new()),
            wake_binder: tokio::sync::Notify::new(),
            retry,
            first_seen: Mutex::new(HashMap::new()),
            next_start: Mutex::new(0),
            metrics: SchedulerMetrics::register(metrics),
        });
        // Pods already found unschedulable are tried again when room may
        // have appeared: a node changed, or a bound pod is going. (Pods
        // not yet tried are queued already; waking every pending pod on
        // every binding would cost the square of the backlog.)
        let unschedulable = {
            let pods = pods.reader();
            move || -> Vec<ObjectKey> {
                pods.list()
                    .iter()
                    .filter(|p| pending(p) && found_unschedulable(p))
                    .map(|p| ObjectKey::of(&**p))
                    .collect()
            }
        };
        let after_node = unschedulable.clone();
        let controller = Controller::new(&pods)
            .watches(&nodes, move |_: &Node| after_node())
            .watches(&pods, move |pod: &Pod| {
                let freeing = pod.metadata.deletion_timestamp.is_some() || !occupies(pod);
                if node_name(pod).is_some() && freeing {
                    unschedulable()
                } else {
                    Vec::new()
                }
            })
            .trigger(futures::stream::unfold(retries, |mut rx| async move {
                rx.recv().await.map(|key| (key, rx))
            }))
            .named("scheduler");
        (this, controller)
    }

    /// Places one pod, if it is pending.
    pub async fn reconcile(self: &Arc<Self>, key: ObjectKey) -> Result<Action, Error> {
        let Some(pod) = self.pods.get(&key) else {
            self.lock(&self.first_seen).remove(&key);
            return Ok(Action::AwaitChange);
        };
        if !pending(&pod) {
            self.lock(&self.first_seen).remove(&key);
            return Ok(Action::AwaitChange);
        }
        if self.lock(&self.assumed).contains_key(&key) {
            // Its binding is being written.
            return Ok(Action::AwaitChange);
        }
        self.lock(&self.first_seen)
            .entry(key.clone())
            .or_insert_with(Instant::now);
        // Searched from a rotating start, so sampled searches spread over
        // every node (the cache's order is stable while nodes do not change).
        let mut nodes = self.nodes.list();
        let wanted = nodes_to_find(nodes.len());
        let start = {
            let mut next = self.lock(&self.next_start);
            let start = *next % nodes.len().max(1);
            *next = start + 1;
            start
        };
        nodes.rotate_left(start);
        let mut checked = 0;
        let wants = Resources::requested_by(&pod);
        let assumed = self.assumed_pods();
        let owner = pod
            .metadata
            .owner_references
            .as_ref()
            .and_then(|r| r.iter().find(|o| o.controller == Some(true)))
            .map(|o| o.uid.clone());
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut best: Vec<(f64, &str)> = Vec::new();
        let mut spread: Vec<(usize, &str, f64)> = Vec::new();
        for node in &nodes {
            if spread.len() >= wanted {
                break;
            }
            checked += 1;
            let name = node.metadata.name.as_deref().unwrap_or_default();
            let on_node: Vec<Arc<Pod>> = self
                .pods
                .on_node(name)
                .into_iter()
                .chain(
                    assumed
                        .iter()
                        .filter(|p| node_name(p) == Some(name))
                        .cloned(),
                )
                .filter(|p| occupies(p))
                .collect();
            match fits(&pod, node, &on_node, wants) {
                Err(why) => {
                    for reason in why {
                        *reasons.entry(reason).or_default() += 1;
                    }
                }
                Ok(score) => {
                    let siblings = owner.as_ref().map_or(0, |uid| {
                        on_node
                            .iter()
                            .filter(|p| {
                                p.metadata
                                    .owner_references
                                    .iter()
                                    .flatten()
                                    .any(|o| &o.uid == uid)
                            })
                            .count()
                    });
                    spread.push((siblings, name, score));
                }
            }
        }
        if spread.is_empty() {
            let summary: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
            self.metrics.unschedulable.inc();
            let message = format!(
                "0/{} nodes are available: {}.",
                checked,
                if summary.is_empty() {
                    "no nodes are registered".to_string()
                } else {
                    summary.join(", ")
                }
            );
            self.unschedulable(&pod, &message).await?;
            return Ok(Action::Requeue(RETRY));
        }
        // Spreading: fewer of the owner's pods on a node scores higher.
        let most = spread.iter().map(|(n, _, _)| *n).max().unwrap_or(0);
        for (siblings, name, score) in spread {
            let spread_score = if most == 0 {
                100.0
            } else {
                100.0 * (1.0 - siblings as f64 / (most as f64 + 1.0))
            };
            best.push((score + spread_score, name));
        }
        let top = best.iter().map(|(s, _)| *s).fold(f64::MIN, f64::max);
        let ties: Vec<&str> = best
            .iter()
            .filter(|(s, _)| (*s - top).abs() < 1e-9)
            .map(|(_, n)| *n)
            .collect();
        let pick =
            ties[usize::try_from(uuid::Uuid::new_v4().as_u128() % ties.len() as u128).unwrap_or(0)];
        self.bind(&pod, pick).await
    }

    fn lock<'a, T>(&self, m: &'a Mutex<T>) -> std::sync::MutexGuard<'a, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The assumed pods the cache does not show bound yet (the others are
    /// forgotten).
    fn assumed_pods(&self) -> Vec<Arc<Pod>> {
        let mut assumed = self.assumed.lock().unwrap_or_else(PoisonError::into_inner);
        assumed.retain(|key, _| self.pods.get(key).is_some_and(|p| node_name(&p).is_none()));
        assumed.values().cloned().collect()
    }

    /// Assumes `pod` on `node` at once and hands the binding to the
    /// binder (kube-scheduler's binding cycle), so the next pod is placed
    /// while it is written; at most [`BINDS_IN_FLIGHT`] wait at a time.
    async fn bind(self: &Arc<Self>, pod: &Pod, node: &str) -> Result<Action, Error> {
        let key = ObjectKey::of(pod);
        let mut bound = pod.clone();
        bound.spec.get_or_insert_with(Default::default).node_name = Some(node.to_string());
        let bound = Arc::new(bound);
        self.lock(&self.assumed)
            .insert(key.clone(), Arc::clone(&bound));
        let permit = Arc::clone(&self.binds)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        self.lock(&self.to_bind).push(Binding {
            key,
            pod: bound,
            node: node.to_string(),
            _permit: permit,
        });
        self.wake_binder.notify_one();
        Ok(Action::AwaitChange)
    }

    /// Writes the bindings handed over, many pods a transaction; a batch
    /// that conflicts is written pod by pod. Runs until `stopped`.
    async fn binder(self: Arc<Self>, mut stopped: tokio::sync::watch::Receiver<bool>) {
        loop {
            let batch: Vec<Binding> = {
                let mut queue = self.lock(&self.to_bind);
                let n = queue.len().min(BIND_BATCH);
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                tokio::select! {
                    () = self.wake_binder.notified() => continue,
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
            let pairs: Vec<(Pod, String)> = batch
                .iter()
                .map(|b| ((*b.pod).clone(), b.node.clone()))
                .collect();
            let api = self.store.api::<Pod>("default");
            match api.bind_all(&pairs).await {
                Ok(true) => {
                    for b in &batch {
                        self.bound(b);
                    }
                }
                Ok(false) => {
                    // One of them changed: each on its own, so the others bind.
                    for b in &batch {
                        let namespace = b.key.namespace.clone().unwrap_or_default();
                        match self.store.api::<Pod>(&namespace).update(&b.pod).await {
                            Ok(_) => self.bound(b),
                            Err(e) => self.unbound(b, &e),
                        }
                    }
                }
                Err(e) => {
                    for b in &batch {
                        self.unbound(b, &e);
                    }
                }
            }
        }
    }

    fn bound(&self, b: &Binding) {
        tracing::debug!(pod = %b.key, node = %b.node, "bound");
        if let Some(seen) = self.lock(&self.first_seen).remove(&b.key) {
            self.metrics.latency.observe(seen.elapsed().as_secs_f64());
        }
        self.metrics.bound.inc();
    }

    /// Forgets a binding that failed and tries the pod again, unless it
    /// changed or went (its own event brings it back).
    fn unbound(&self, b: &Binding, e: &Error) {
        self.lock(&self.assumed).remove(&b.key);
        if !matches!(e, Error::Conflict { .. } | Error::NotFound { .. }) {
            tracing::warn!(pod = %b.key, node = %b.node, error = %e, "binding failed; trying again");
            let _ = self.retry.send(b.key.clone());
        }
    }

    async fn unschedulable(&self, pod: &Pod, message: &str) -> Result<(), Error> {
        let current = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
        if current.is_some_and(|c| c.status == "False" && c.message.as_deref() == Some(message)) {
            return Ok(());
        }
        tracing::debug!(pod = %ObjectKey::of(pod), message, "unschedulable");
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let condition = PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some(message.to_string()),
            last_transition_time: Some(Time(k8s_openapi::jiff::Timestamp::now())),
            ..PodCondition::default()
        };
        self.store
            .api::<Pod>(&namespace)
            .modify_if_exists(&name, true, |fresh| {
                let status = fresh.status.get_or_insert_with(Default::default);
                status.phase.get_or_insert_with(|| "Pending".into());
                let conditions = status.conditions.get_or_insert_with(Vec::new);
                conditions.retain(|c| c.type_ != "PodScheduled");
                conditions.push(condition.clone());
            })
            .await
            .map(|_| ())
    }
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Whether `pod` fits `node` (holding `on_node`): its score, or every
/// reason it does not.
fn fits(
    pod: &Pod,
    node: &Node,
    on_node: &[Arc<Pod>],
    wants: Resources,
) -> Result<f64, Vec<String>> {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut why = Vec::new();
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    if node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
    {
        why.push("node(s) were unschedulable".to_string());
    }
    if !is_ready(node) {
        why.push("node(s) were not ready".to_string());
    }
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let affinity = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref());
    let required_ok = affinity
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|r| {
            r.node_selector_terms
                .iter()
                .any(|t| term_matches(t, labels))
        });
    if !selector_ok || !required_ok {
        why.push("node(s) didn't match Pod's node affinity/selector".to_string());
    }
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    for taint in node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
    {
        if matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
            && !tolerations.iter().any(|t| tolerates(t, taint))
        {
            why.push(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint.key,
                taint.value.clone().unwrap_or_default()
            ));
        }
    }
    let host_ports: Vec<(i32, String)> = host_ports_of(pod);
    if !host_ports.is_empty() {
        let used: Vec<(i32, String)> = on_node.iter().flat_map(|p| host_ports_of(p)).collect();
        if host_ports.iter().any(|p| used.contains(p)) {
            why.push("node(s) didn't have free ports for the requested pod ports".to_string());
        }
    }
    let allocatable = Resources::from_map(
        node.status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref())),
    );
    let used = on_node
        .iter()
        .map(|p| Resources::requested_by(p))
        .fold(Resources::default(), Resources::plus);
    let after = used.plus(wants);
    if after.cpu > allocatable.cpu && wants.cpu > 0.0 {
        why.push("Insufficient cpu".to_string());
    }
    if after.memory > allocatable.memory && wants.memory > 0.0 {
        why.push("Insufficient memory".to_string());
    }
    if after.pods > allocatable.pods {
        why.push("Too many pods".to_string());
    }
    if !why.is_empty() {
        return Err(why);
    }
    // Least allocated and balanced allocation, as kube-scheduler scores them.
    let fraction = |used: f64, total: f64| {
        if total > 0.0 {
            (used / total).min(1.0)
        } else {
            0.0
        }
    };
    let cpu = fraction(after.cpu, allocatable.cpu);
    let memory = fraction(after.memory, allocatable.memory);
    let least = ((1.0 - cpu) + (1.0 - memory)) * 50.0;
    let balanced = (1.0 - (cpu - memory).abs()) * 100.0;
    let preferred: f64 = affinity
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|p| term_matches(&p.preference, labels))
        .map(|p| f64::from(p.weight))
        .sum();
    Ok(least + balanced + preferred)
}

fn host_ports_of(pod: &Pod) -> Vec<(i32, String)> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some((
                p.host_port.filter(|h| *h > 0)?,
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            ))
        })
        .collect()
}

fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect_ok = t
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key_ok = t
        .key
        .as_deref()
        .is_none_or(|k| k.is_empty() || k == taint.key);
    let value_ok = match t.operator.as_deref() {
        Some("Exists") => true,
        _ => t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default(),
    };
    effect_ok && key_ok && value_ok
}

fn term_matches(term: &NodeSelectorTerm, labels: &BTreeMap<String, String>) -> bool {
    let expressions = term.match_expressions.iter().flatten();
    // Fields other than metadata.name are not tracked; a node's name is.
    expressions
        .clone()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && term.match_fields.iter().flatten().all(|r| {
            r.key == "metadata.name"
                && requirement_matches(r, labels.get("kubernetes.io/hostname").map(String::as_str))
        })
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.clone().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => !value.is_some_and(|v| values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(a), Some(b)) if a > b)
        }
        "Lt" => {
            matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(a), Some(b)) if a < b)
        }
        _ => false,
    }
}

/// Runs the scheduler until `shutdown` resolves; its metrics go into
/// `metrics`.
pub async fn run(
    informers: &Informers,
    store: Store,
    metrics: &Metrics,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (this, controller) = Scheduler::new(informers, store, metrics);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let binder = tokio::spawn(Arc::clone(&this).binder(stopped));
    // One pod at a time, as kube-scheduler's scheduling cycle: each sees
    // the room the one before took.
    controller
        .concurrency(1)
        .run(
            move |key| {
                let this = Arc::clone(&this);
                async move { this.reconcile(key).await }
            },
            shutdown,
        )
        .await;
    let _ = stop.send(true);
    let _ = binder.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, NodeCondition, NodeSpec, NodeStatus, PodSpec, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn node(name: &str, memory: &str, labels: &[(&str, &str)]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n.spec = Some(NodeSpec::default());
        n.status = Some(NodeStatus {
            allocatable: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("4".into())),
                ("memory".to_string(), Quantity(memory.into())),
                ("pods".to_string(), Quantity("110".into())),
            ])),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..NodeCondition::default()
            }]),
            ..NodeStatus::default()
        });
        n
    }

    fn pod(memory: &str) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "memory".to_string(),
                            Quantity(memory.into()),
                        )])),
                        ..ResourceRequirements::default()
                    }),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn filters_give_kubectls_reasons() {
        let small = node("a", "1Gi", &[]);
        let want = pod("2Gi");
        let why = fits(&want, &small, &[], Resources::requested_by(&want)).unwrap_err();
        assert_eq!(why, ["Insufficient memory"]);
        let big = node("b", "4Gi", &[("disk", "ssd")]);
        assert!(fits(&want, &big, &[], Resources::requested_by(&want)).is_ok());
        // Room taken by the pods already there.
        let there = Arc::new(pod("3Gi"));
        let why = fits(&want, &big, &[there], Resources::requested_by(&want)).unwrap_err();
        assert_eq!(why, ["Insufficient memory"]);
        // nodeSelector.
        let mut picky = pod("1Gi");
        picky.spec.as_mut().unwrap().node_selector =
            Some(BTreeMap::from([("disk".to_string(), "hdd".to_string())]));
        let why = fits(&picky, &big, &[], Resources::requested_by(&picky)).unwrap_err();
        assert_eq!(why, ["node(s) didn't match Pod's node affinity/selector"]);
        // Taints.
        let mut tainted = node("c", "4Gi", &[]);
        tainted.spec.as_mut().unwrap().taints = Some(vec![Taint {
            key: "node.kubernetes.io/unreachable".into(),
            effect: "NoExecute".into(),
            ..Taint::default()
        }]);
        let why = fits(&want, &tainted, &[], Resources::requested_by(&want)).unwrap_err();
        assert_eq!(
            why,
            ["node(s) had untolerated taint {node.kubernetes.io/unreachable: }"]
        );
        let mut tolerant = want.clone();
        tolerant.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some("node.kubernetes.io/unreachable".into()),
            operator: Some("Exists".into()),
            ..Toleration::default()
        }]);
        assert!(fits(&tolerant, &tainted, &[], Resources::requested_by(&tolerant)).is_ok());
    }
}
