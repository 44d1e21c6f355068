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

mod cache;
pub mod resources;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, NodeSelectorTerm, PodCondition, Taint, Toleration,
};
use orca_core::api::{CompactPod, Node, Pod, Time};
use orca_core::store::{BIND_BATCH, Error, PodBinding, Store, revision_of};
use orca_core::telemetry::Metrics;
use orca_core::watch::{Action, Change, Controller, Informers, ObjectKey, Reader};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Unit;

use cache::{ClusterState, Placement, Requirements};

/// The names a pod may give in `schedulerName` for this scheduler.
const NAMES: [&str; 2] = ["default-scheduler", "orca"];
/// How long a pod found unschedulable waits before it is tried again: as
/// kube-scheduler's podInitialBackoffSeconds and podMaxBackoffSeconds, the
/// first wait, doubled per failure up to the last. A node or pod change
/// tries it again once its wait is over; without one, it is tried when
/// the wait ends.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The wait after a pod's `failures`-th failure to fit anywhere.
fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// A pod found unschedulable: how often, and until when it waits.
struct Backoff {
    failures: u32,
    until: Instant,
}
/// How long a pod whose binding met a change waits before it is tried
/// again: time for the cache to show the change.
const CONFLICT_RETRY: Duration = Duration::from_millis(100);
/// Binding transactions written at once: a write waits on etcd's commit,
/// so one at a time leaves etcd and the scheduler both idle between them.
const BIND_WRITES: usize = 8;
/// Bindings assumed and not yet written, at most: the writes in flight
/// and as many again waiting.
const BINDS_IN_FLIGHT: usize = 2 * BIND_WRITES * BIND_BATCH;

/// One binding on its way to the store.
struct Binding {
    key: ObjectKey,
    /// The pod, the revision it was read at, and the node.
    binding: PodBinding,
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
    let percent = 50usize.saturating_sub(all / 125).max(5);
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
    pods: Reader<CompactPod>,
    /// Nodes and the room their pods (bound or assumed) take, kept from
    /// the caches' changes as they are made (see [`Scheduler::follow`]).
    state: Mutex<ClusterState>,
    /// Whether `state` has taken in the pod and the node cache's first
    /// lists.
    listed: Mutex<(bool, bool)>,
    /// Told when both have been.
    state_synced: tokio::sync::watch::Sender<bool>,
    /// Bindings waiting to be written.
    binds: Arc<tokio::sync::Semaphore>,
    /// The bindings the binder writes next.
    to_bind: Mutex<Vec<Binding>>,
    /// Wakes the binder.
    wake_binder: tokio::sync::Notify,
    /// Pods whose binding failed, to try again.
    retry: tokio::sync::mpsc::UnboundedSender<ObjectKey>,
    /// Told when room may have appeared, to try the unschedulable pods
    /// again; a burst of changes wakes them once.
    room: tokio::sync::Notify,
    /// When each pending pod was first seen, for the latency histogram.
    first_seen: Mutex<HashMap<ObjectKey, Instant>>,
    /// The pods found unschedulable and their back-off.
    backoffs: Mutex<HashMap<ObjectKey, Backoff>>,
    /// Where the next search through the nodes starts, so sampled searches
    /// spread over all of them.
    next_start: Mutex<usize>,
    metrics: SchedulerMetrics,
}

/// A change to one of the two caches the scheduler's state follows.
#[derive(Clone, Copy)]
enum Followed<'a> {
    Pod(&'a Change<CompactPod>),
    Node(&'a Change<Node>),
}

fn node_name(pod: &CompactPod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn pending(pod: &CompactPod) -> bool {
    node_name(pod).is_none()
        && pod.metadata.deletion_timestamp.is_none()
        && pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .is_none_or(|n| NAMES.contains(&n))
}

/// Whether the scheduler already found no node for the pod.
fn found_unschedulable(pod: &CompactPod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "PodScheduled" && c.status == "False")
        })
}

fn occupies(pod: &CompactPod) -> bool {
    !matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

impl Scheduler {
    /// The loop and its controller on the shared caches; its state
    /// follows the pod and node caches (see [`Scheduler::follow`]).
    fn new(
        informers: &Informers,
        store: Store,
        metrics: &Metrics,
    ) -> (Arc<Self>, Controller<CompactPod>) {
        let pods = informers.all::<CompactPod>();
        let nodes = informers.all::<Node>();
        let (retry, retries) = tokio::sync::mpsc::unbounded_channel();
        let this = Arc::new(Self {
            store,
            pods: pods.reader(),
            state: Mutex::new(ClusterState::default()),
            listed: Mutex::new((false, false)),
            state_synced: tokio::sync::watch::Sender::new(false),
            binds: Arc::new(tokio::sync::Semaphore::new(BINDS_IN_FLIGHT)),
            to_bind: Mutex::new(Vec::new()),
            wake_binder: tokio::sync::Notify::new(),
            retry,
            room: tokio::sync::Notify::new(),
            first_seen: Mutex::new(HashMap::new()),
            backoffs: Mutex::new(HashMap::new()),
            next_start: Mutex::new(0),
            metrics: SchedulerMetrics::register(metrics),
        });
        let scheduler = Arc::downgrade(&this);
        pods.on_change(move |change| {
            scheduler
                .upgrade()
                .is_some_and(|s| s.follow(Followed::Pod(change)))
        });
        let scheduler = Arc::downgrade(&this);
        nodes.on_change(move |change| {
            scheduler
                .upgrade()
                .is_some_and(|s| s.follow(Followed::Node(change)))
        });
        let controller = Controller::new(&pods)
            .reads(&nodes)
            .trigger(futures::stream::unfold(retries, |mut rx| async move {
                rx.recv().await.map(|key| (key, rx))
            }))
            .trigger(
                futures::stream::unfold(Arc::clone(&this), |this| async move {
                    this.room.notified().await;
                    let keys = this.lock(&this.state).unschedulable();
                    Some((futures::stream::iter(keys), this))
                })
                .flatten(),
            )
            .named("scheduler");
        (this, controller)
    }

    /// Applies one change of the caches to the state, as the cache makes
    /// it, so the state is never behind the cache a pod is read from. A
    /// pod found unschedulable is tried again when room may have appeared:
    /// a node changed, or a pod left one. Returns whether to keep
    /// following.
    fn follow(&self, change: Followed<'_>) -> bool {
        let mut state = self.lock(&self.state);
        let room = match change {
            Followed::Pod(Change::Applied(pod)) => state.apply_pod(pod),
            Followed::Pod(Change::Deleted(pod)) => state.remove_pod(&ObjectKey::of(&**pod)),
            Followed::Node(Change::Applied(node)) => {
                state.apply_node(Arc::clone(node));
                true
            }
            Followed::Node(Change::Deleted(node)) => {
                state.remove_node(node.metadata.name.as_deref().unwrap_or_default());
                true
            }
            Followed::Pod(Change::Synced) | Followed::Node(Change::Synced) => {
                let mut listed = self.lock(&self.listed);
                if matches!(change, Followed::Pod(_)) {
                    listed.0 = true;
                } else {
                    listed.1 = true;
                }
                if listed.0 && listed.1 {
                    self.state_synced.send_replace(true);
                }
                false
            }
        };
        drop(state);
        if room {
            self.room.notify_one();
        }
        true
    }

    /// Places one pod, if it is pending.
    pub async fn reconcile(self: &Arc<Self>, key: ObjectKey) -> Result<Action, Error> {
        let Some(pod) = self.pods.get(&key).filter(|p| pending(p)) else {
            self.lock(&self.first_seen).remove(&key);
            self.lock(&self.backoffs).remove(&key);
            return Ok(Action::AwaitChange);
        };
        // Woken before its back-off is over (by a change, its own status
        // among them): tried when it is.
        let now = Instant::now();
        if let Some(b) = self.lock(&self.backoffs).get(&key)
            && b.until > now
        {
            return Ok(Action::Requeue(b.until - now));
        }
        // Nothing is placed on a state that has not taken in every pod
        // already bound.
        let _ = self.state_synced.subscribe().wait_for(|s| *s).await;
        self.lock(&self.first_seen)
            .entry(key.clone())
            .or_insert_with(Instant::now);
        let needs = Requirements::of(&pod);
        let tie = uuid::Uuid::new_v4().as_u128();
        let placement = {
            let mut state = self.lock(&self.state);
            if state.is_assumed(&key) {
                // Its binding is being written.
                return Ok(Action::AwaitChange);
            }
            // Searched from a rotating start, so sampled searches spread
            // over every node.
            let nodes = state.nodes();
            let start = {
                let mut next = self.lock(&self.next_start);
                let start = *next % nodes.max(1);
                *next = start + 1;
                start
            };
            let placement = state.place(&needs, start, nodes_to_find(nodes), tie);
            if let Placement::Node(node) = &placement {
                // Assumed before the lock is let go, so the next pod sees
                // the room this one took.
                state.assume(&pod, node);
            }
            placement
        };
        match placement {
            Placement::Node(node) => self.bind(&pod, &node).await,
            Placement::Nowhere(message) => {
                self.metrics.unschedulable.inc();
                self.unschedulable(&pod, &message).await?;
                let wait = {
                    let mut backoffs = self.lock(&self.backoffs);
                    let b = backoffs.entry(key).or_insert(Backoff {
                        failures: 0,
                        until: now,
                    });
                    b.failures += 1;
                    let wait = backoff(b.failures);
                    b.until = Instant::now() + wait;
                    wait
                };
                Ok(Action::Requeue(wait))
            }
        }
    }

    fn lock<'a, T>(&self, m: &'a Mutex<T>) -> std::sync::MutexGuard<'a, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands the binding of `pod` (assumed on `node` already) to the
    /// binder (kube-scheduler's binding cycle), so the next pod is placed
    /// while it is written; at most [`BINDS_IN_FLIGHT`] wait at a time.
    async fn bind(self: &Arc<Self>, pod: &CompactPod, node: &str) -> Result<Action, Error> {
        let key = ObjectKey::of(pod);
        let binding = PodBinding {
            namespace: key.namespace.clone().unwrap_or_default(),
            name: key.name.clone(),
            resource_version: revision_of(pod),
            node: node.to_string(),
        };
        let permit = Arc::clone(&self.binds)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        self.lock(&self.to_bind).push(Binding {
            key,
            binding,
            _permit: permit,
        });
        self.wake_binder.notify_one();
        Ok(Action::AwaitChange)
    }

    /// Writes the bindings handed over, many pods a transaction and
    /// [`BIND_WRITES`] transactions in flight (etcd commits concurrent
    /// ones together); a batch that conflicts is written pod by pod. Runs
    /// until `stopped`, then lets the writes in flight finish.
    async fn binder(self: Arc<Self>, mut stopped: tokio::sync::watch::Receiver<bool>) {
        let mut writing = FuturesUnordered::new();
        loop {
            let batch: Vec<Binding> = if writing.len() < BIND_WRITES {
                let mut queue = self.lock(&self.to_bind);
                let n = queue.len().min(BIND_BATCH);
                queue.drain(..n).collect()
            } else {
                Vec::new()
            };
            if !batch.is_empty() {
                writing.push(Arc::clone(&self).write(batch));
                continue;
            }
            let stop = tokio::select! {
                Some(()) = writing.next() => false,
                () = self.wake_binder.notified(), if writing.len() < BIND_WRITES => false,
                _ = stopped.wait_for(|s| *s) => true,
            };
            if stop {
                while writing.next().await.is_some() {}
                return;
            }
        }
    }

    /// Writes one batch of bindings.
    async fn write(self: Arc<Self>, batch: Vec<Binding>) {
        let bindings: Vec<PodBinding> = batch.iter().map(|b| b.binding.clone()).collect();
        let api = self.store.api::<Pod>("default");
        match api.bind_all(&bindings).await {
            Ok(true) => {
                for b in &batch {
                    self.bound(b);
                }
            }
            Ok(false) => {
                // One of them changed: each on its own, so the others bind.
                for b in &batch {
                    match api.bind_all(std::slice::from_ref(&b.binding)).await {
                        Ok(true) => self.bound(b),
                        Ok(false) => self.unbound(
                            b,
                            &Error::Conflict {
                                plural: "pods".into(),
                                name: b.binding.name.clone(),
                            },
                        ),
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

    fn bound(&self, b: &Binding) {
        tracing::debug!(pod = %b.key, node = %b.binding.node, "bound");
        if let Some(seen) = self.lock(&self.first_seen).remove(&b.key) {
            self.metrics.latency.observe(seen.elapsed().as_secs_f64());
        }
        self.metrics.bound.inc();
    }

    /// Forgets a binding that failed and tries the pod again. A pod that
    /// changed or went since it was read is tried once the cache has had
    /// [`CONFLICT_RETRY`] to show it so: its own event may have come and
    /// gone while the binding was in flight (and found it assumed), so
    /// waiting for one could wait for ever.
    fn unbound(&self, b: &Binding, e: &Error) {
        self.lock(&self.state).forget(&b.key);
        if matches!(e, Error::Conflict { .. } | Error::NotFound { .. }) {
            let (retry, key) = (self.retry.clone(), b.key.clone());
            tokio::spawn(async move {
                tokio::time::sleep(CONFLICT_RETRY).await;
                let _ = retry.send(key);
            });
        } else {
            tracing::warn!(pod = %b.key, node = %b.binding.node, error = %e, "binding failed; trying again");
            let _ = self.retry.send(b.key.clone());
        }
    }

    async fn unschedulable(&self, pod: &CompactPod, message: &str) -> Result<(), Error> {
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

    #[test]
    fn an_unschedulable_pod_waits_twice_as_long_each_time_up_to_ten_seconds() {
        let waits: Vec<u64> = (1..=6).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn large_clusters_are_sampled_as_kube_scheduler_samples_them() {
        let found: Vec<usize> = [50, 100, 150, 1_000, 5_000, 10_000]
            .into_iter()
            .map(nodes_to_find)
            .collect();
        // Every node up to 100; then 50% less 1% per 125 nodes, at least
        // 5% and at least 100 nodes.
        assert_eq!(found, [50, 100, 100, 420, 500, 500]);
    }
}
