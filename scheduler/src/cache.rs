//! The scheduler's picture of the cluster, kept incrementally: per node
//! what its pods request, the host ports they hold and their owners, so
//! checking a node is O(1) whatever it runs; and per equivalence class of
//! pods (same requests, selectors, affinity, tolerations, ports and owner)
//! the verdicts already reached, reused until the node they were reached on
//! changes (Borg's equivalence classes).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use orca_core::api::CompactPodSpec;
use orca_core::api::{CompactPod, Node};
use orca_core::watch::ObjectKey;

use crate::resources::Resources;
use crate::{found_unschedulable, node_name, occupies, pending};

/// Equivalence classes remembered at most; past it they are all forgotten
/// (a class is cheap to rebuild, an unbounded map is not).
const MAX_CLASSES: usize = 256;

/// A host port and its protocol.
type HostPort = (i32, String);

/// One node and what the pods on it (bound or assumed) take of it.
struct NodeInfo {
    /// The node, once it has registered (a pod may name it before).
    node: Option<Arc<Node>>,
    name: String,
    allocatable: Resources,
    ready: bool,
    requested: Resources,
    host_ports: HashMap<HostPort, usize>,
    /// Pods on the node per owner uid, for spreading.
    owners: HashMap<String, usize>,
    /// Pods accounted here.
    pods: usize,
    /// Set from the cluster's counter on every change to the node or its
    /// pods, so it is never the same for two states of any slot.
    generation: u64,
    /// Its place in [`ClusterState::order`] while it is a candidate.
    position: Option<usize>,
}

/// What one pod takes of its node, as it was added, so that it is taken
/// away exactly.
struct PodUse {
    slot: usize,
    requests: Resources,
    host_ports: Vec<HostPort>,
    owners: Vec<String>,
    /// Chosen by this scheduler, binding not yet seen in the pod cache.
    assumed: bool,
}

/// A filter's verdict on one node for one class.
#[derive(Clone)]
enum Verdict {
    /// The node's score before spreading.
    Fits(f64),
    /// Every reason it does not fit, as kubectl users know them.
    Fails(Vec<String>),
}

/// The verdicts for one equivalence class.
#[derive(Default)]
struct Class {
    /// Per node slot: the node's generation when judged, and the verdict.
    verdicts: Vec<Option<(u64, Verdict)>>,
    /// When no node fitted: the cluster's generation then, and the message.
    none_fit: Option<(u64, String)>,
}

/// What the scheduler needs of a pod, read once per attempt.
pub(crate) struct Requirements<'a> {
    spec: Option<&'a CompactPodSpec>,
    wants: Resources,
    host_ports: Vec<HostPort>,
    /// The controller owner's uid, for spreading.
    owner: Option<&'a str>,
    /// The equivalence class: everything above that filters and scores
    /// depend on.
    class: String,
}

impl<'a> Requirements<'a> {
    /// Reads `pod`'s requirements.
    pub(crate) fn of(pod: &'a CompactPod) -> Self {
        let spec = pod.spec.as_ref();
        let wants = Resources::requested_by(pod);
        let host_ports = host_ports_of(pod);
        let owner = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.as_str());
        // Debug output of these types is deterministic (ordered maps and
        // vectors), and only this process compares it.
        let class = format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            wants.cpu.to_bits(),
            wants.memory.to_bits(),
            host_ports,
            owner,
            spec.and_then(|s| s.node_selector.as_ref()),
            spec.and_then(|s| s.affinity.as_ref())
                .and_then(|a| a.node_affinity.as_ref()),
            spec.and_then(|s| s.tolerations.as_ref()),
        );
        Self {
            spec,
            wants,
            host_ports,
            owner,
            class,
        }
    }
}

/// Where a search for a node ended.
#[derive(Debug, PartialEq)]
pub(crate) enum Placement {
    /// The node chosen.
    Node(String),
    /// No node fits: kubectl's message (`0/3 nodes are available: ...`).
    Nowhere(String),
}

/// Every node and the room its pods take, updated as pods and nodes
/// change; plus the verdicts of each equivalence class.
#[derive(Default)]
pub(crate) struct ClusterState {
    slots: Vec<Option<NodeInfo>>,
    free: Vec<usize>,
    by_name: HashMap<String, usize>,
    /// The slots of registered nodes, in the order searches walk them.
    order: Vec<usize>,
    pods: HashMap<ObjectKey, PodUse>,
    /// Bumped on every change; a node's generation is its value then.
    generation: u64,
    classes: HashMap<String, Class>,
    /// Pending pods the scheduler already found no node for.
    unschedulable: HashSet<ObjectKey>,
}

impl ClusterState {
    fn bump(&mut self, slot: usize) {
        self.generation += 1;
        if let Some(info) = self.slots[slot].as_mut() {
            info.generation = self.generation;
        }
    }

    /// The slot of the node named `name`, made if it has none.
    fn slot(&mut self, name: &str) -> usize {
        if let Some(slot) = self.by_name.get(name) {
            return *slot;
        }
        let info = NodeInfo {
            node: None,
            name: name.to_string(),
            allocatable: Resources::default(),
            ready: false,
            requested: Resources::default(),
            host_ports: HashMap::new(),
            owners: HashMap::new(),
            pods: 0,
            generation: 0,
            position: None,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(info);
                slot
            }
            None => {
                self.slots.push(Some(info));
                self.slots.len() - 1
            }
        };
        self.by_name.insert(name.to_string(), slot);
        slot
    }

    /// Frees `slot` if it holds neither a node nor pods.
    fn release(&mut self, slot: usize) {
        if self.slots[slot]
            .as_ref()
            .is_some_and(|i| i.node.is_none() && i.pods == 0)
            && let Some(info) = self.slots[slot].take()
        {
            self.by_name.remove(&info.name);
            self.free.push(slot);
        }
    }

    fn info(&self, slot: usize) -> &NodeInfo {
        self.slots[slot].as_ref().expect("slots in use hold a node")
    }

    fn info_mut(&mut self, slot: usize) -> &mut NodeInfo {
        self.slots[slot].as_mut().expect("slots in use hold a node")
    }

    /// A node registered or changed.
    pub(crate) fn apply_node(&mut self, node: Arc<Node>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let slot = self.slot(&name);
        let allocatable = Resources::from_map(
            node.status
                .as_ref()
                .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref())),
        );
        let ready = is_ready(&node);
        let info = self.slots[slot].as_mut().expect("slots in use hold a node");
        info.node = Some(node);
        info.allocatable = allocatable;
        info.ready = ready;
        if info.position.is_none() {
            info.position = Some(self.order.len());
            self.order.push(slot);
        }
        self.bump(slot);
    }

    /// A node went; the pods still on it stay counted until they go too.
    pub(crate) fn remove_node(&mut self, name: &str) {
        let Some(&slot) = self.by_name.get(name) else {
            return;
        };
        let info = self.info_mut(slot);
        info.node = None;
        let position = info.position.take();
        if let Some(position) = position {
            self.order.swap_remove(position);
            if let Some(&moved) = self.order.get(position) {
                self.info_mut(moved).position = Some(position);
            }
        }
        self.bump(slot);
        self.release(slot);
    }

    /// A pod was added or changed in the pod cache. Returns whether room
    /// may have appeared (a pod stopped counting on a node).
    pub(crate) fn apply_pod(&mut self, pod: &CompactPod) -> bool {
        let key = ObjectKey::of(pod);
        if pending(pod) && found_unschedulable(pod) {
            self.unschedulable.insert(key.clone());
        } else {
            self.unschedulable.remove(&key);
        }
        match node_name(pod) {
            Some(node) if occupies(pod) => {
                self.account(key, pod, node, false);
                false
            }
            // Its binding is on its way: the cache has not caught up.
            None if self.pods.get(&key).is_some_and(|u| u.assumed) => false,
            _ => self.unaccount(&key),
        }
    }

    /// A pod was deleted. Returns whether room may have appeared.
    pub(crate) fn remove_pod(&mut self, key: &ObjectKey) -> bool {
        self.unschedulable.remove(key);
        self.unaccount(key)
    }

    /// Counts `pod` on `node` until the pod cache shows it bound there (or
    /// [`ClusterState::forget`]).
    pub(crate) fn assume(&mut self, pod: &CompactPod, node: &str) {
        self.unschedulable.remove(&ObjectKey::of(pod));
        self.account(ObjectKey::of(pod), pod, node, true);
    }

    /// Stops counting an assumed pod whose binding failed. Returns whether
    /// it was counted.
    pub(crate) fn forget(&mut self, key: &ObjectKey) -> bool {
        if self.pods.get(key).is_some_and(|u| u.assumed) {
            self.unaccount(key)
        } else {
            false
        }
    }

    /// Whether this scheduler chose a node for the pod and its binding has
    /// not shown up in the pod cache yet.
    pub(crate) fn is_assumed(&self, key: &ObjectKey) -> bool {
        self.pods.get(key).is_some_and(|u| u.assumed)
    }

    /// The pending pods already found unschedulable, to try again when
    /// room may have appeared.
    pub(crate) fn unschedulable(&self) -> Vec<ObjectKey> {
        self.unschedulable.iter().cloned().collect()
    }

    fn account(&mut self, key: ObjectKey, pod: &CompactPod, node: &str, assumed: bool) {
        let requests = Resources::requested_by(pod);
        let host_ports = host_ports_of(pod);
        let owners: Vec<String> = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .map(|o| o.uid.clone())
            .collect();
        if let Some(old) = self.pods.get(&key)
            && self.by_name.get(node) == Some(&old.slot)
            && old.requests == requests
            && old.host_ports == host_ports
            && old.owners == owners
        {
            // Nothing a filter reads changed (a status update): the node's
            // verdicts stay good.
            if let Some(u) = self.pods.get_mut(&key) {
                u.assumed = assumed;
            }
            return;
        }
        // Taken away before the slot is looked up: taking it away may
        // free the slot.
        self.unaccount(&key);
        let slot = self.slot(node);
        let info = self.info_mut(slot);
        info.requested = info.requested.plus(requests);
        for port in &host_ports {
            *info.host_ports.entry(port.clone()).or_default() += 1;
        }
        for uid in &owners {
            *info.owners.entry(uid.clone()).or_default() += 1;
        }
        info.pods += 1;
        self.bump(slot);
        self.pods.insert(
            key,
            PodUse {
                slot,
                requests,
                host_ports,
                owners,
                assumed,
            },
        );
    }

    fn unaccount(&mut self, key: &ObjectKey) -> bool {
        let Some(old) = self.pods.remove(key) else {
            return false;
        };
        let info = self.info_mut(old.slot);
        info.requested = info.requested.minus(old.requests);
        for port in &old.host_ports {
            if let Some(n) = info.host_ports.get_mut(port) {
                *n -= 1;
                if *n == 0 {
                    info.host_ports.remove(port);
                }
            }
        }
        for uid in &old.owners {
            if let Some(n) = info.owners.get_mut(uid) {
                *n -= 1;
                if *n == 0 {
                    info.owners.remove(uid);
                }
            }
        }
        info.pods -= 1;
        if info.pods == 0 {
            // No drift from summing and taking away floats.
            info.requested = Resources::default();
        }
        self.bump(old.slot);
        self.release(old.slot);
        true
    }

    /// Number of registered nodes.
    pub(crate) fn nodes(&self) -> usize {
        self.order.len()
    }

    /// Searches for a node for `pod`: from the `start`th node on, until
    /// `wanted` feasible nodes are found or every node was checked; the
    /// highest score wins, ties broken by `tie`. Verdicts for the pod's
    /// equivalence class are reused while their node is unchanged.
    pub(crate) fn place(
        &mut self,
        pod: &Requirements<'_>,
        start: usize,
        wanted: usize,
        tie: u128,
    ) -> Placement {
        if self.classes.len() >= MAX_CLASSES && !self.classes.contains_key(&pod.class) {
            self.classes.clear();
        }
        let mut class = self.classes.remove(&pod.class).unwrap_or_default();
        let placement = self.search(pod, &mut class, start, wanted, tie);
        self.classes.insert(pod.class.clone(), class);
        placement
    }

    fn search(
        &self,
        pod: &Requirements<'_>,
        class: &mut Class,
        start: usize,
        wanted: usize,
        tie: u128,
    ) -> Placement {
        if let Some((generation, message)) = &class.none_fit
            && *generation == self.generation
        {
            // Nothing changed since no node fitted this class.
            return Placement::Nowhere(message.clone());
        }
        if class.verdicts.len() < self.slots.len() {
            class.verdicts.resize(self.slots.len(), None);
        }
        let n = self.order.len();
        let mut feasible: Vec<(usize, f64)> = Vec::new();
        for i in 0..n {
            if feasible.len() >= wanted {
                break;
            }
            let slot = self.order[(start + i) % n];
            let info = self.info(slot);
            let cached = &mut class.verdicts[slot];
            if cached.as_ref().is_none_or(|(g, _)| *g != info.generation) {
                *cached = Some((info.generation, fits(pod, info)));
            }
            if let Some((_, Verdict::Fits(score))) = cached {
                feasible.push((slot, *score));
            }
        }
        if feasible.is_empty() {
            let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
            for slot in &self.order {
                if let Some((_, Verdict::Fails(why))) = &class.verdicts[*slot] {
                    for reason in why {
                        *reasons.entry(reason.as_str()).or_default() += 1;
                    }
                }
            }
            let summary: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
            let message = format!(
                "0/{n} nodes are available: {}.",
                if summary.is_empty() {
                    "no nodes are registered".to_string()
                } else {
                    summary.join(", ")
                }
            );
            class.none_fit = Some((self.generation, message.clone()));
            return Placement::Nowhere(message);
        }
        // Spreading: fewer of the owner's pods on a node scores higher.
        let siblings = |slot: usize| {
            pod.owner
                .and_then(|uid| self.info(slot).owners.get(uid).copied())
                .unwrap_or(0)
        };
        let most = feasible
            .iter()
            .map(|(s, _)| siblings(*s))
            .max()
            .unwrap_or(0);
        let scored: Vec<(f64, usize)> = feasible
            .iter()
            .map(|&(slot, score)| {
                let spread = if most == 0 {
                    100.0
                } else {
                    100.0 * (1.0 - siblings(slot) as f64 / (most as f64 + 1.0))
                };
                (score + spread, slot)
            })
            .collect();
        let top = scored.iter().map(|(s, _)| *s).fold(f64::MIN, f64::max);
        let ties: Vec<usize> = scored
            .iter()
            .filter(|(s, _)| (*s - top).abs() < 1e-9)
            .map(|(_, slot)| *slot)
            .collect();
        let pick = ties[usize::try_from(tie % ties.len() as u128).unwrap_or(0)];
        Placement::Node(self.info(pick).name.clone())
    }
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

fn host_ports_of(pod: &CompactPod) -> Vec<HostPort> {
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

/// Whether the pod fits the node: its score, or every reason it does not.
fn fits(pod: &Requirements<'_>, info: &NodeInfo) -> Verdict {
    let Some(node) = info.node.as_deref() else {
        return Verdict::Fails(vec!["node(s) were not ready".to_string()]);
    };
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
    if !info.ready {
        why.push("node(s) were not ready".to_string());
    }
    let selector_ok = pod
        .spec
        .and_then(|s| s.node_selector.as_ref())
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let affinity = pod
        .spec
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref());
    let required_ok = affinity
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|r| {
            r.node_selector_terms
                .iter()
                .any(|t| crate::term_matches(t, labels))
        });
    if !selector_ok || !required_ok {
        why.push("node(s) didn't match Pod's node affinity/selector".to_string());
    }
    let tolerations = pod
        .spec
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    for taint in node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
    {
        if matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
            && !tolerations.iter().any(|t| crate::tolerates(t, taint))
        {
            why.push(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint.key,
                taint.value.clone().unwrap_or_default()
            ));
        }
    }
    if pod
        .host_ports
        .iter()
        .any(|p| info.host_ports.contains_key(p))
    {
        why.push("node(s) didn't have free ports for the requested pod ports".to_string());
    }
    let allocatable = info.allocatable;
    let wants = pod.wants;
    let after = info.requested.plus(wants);
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
        return Verdict::Fails(why);
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
        .filter(|p| crate::term_matches(&p.preference, labels))
        .map(|p| f64::from(p.weight))
        .sum();
    Verdict::Fits(least + balanced + preferred)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Affinity, Container, NodeAffinity, NodeCondition, NodeSelector, NodeSelectorRequirement,
        NodeSelectorTerm, NodeSpec, NodeStatus, PodCondition, PodSpec, PodStatus,
        PreferredSchedulingTerm, ResourceRequirements, Taint, Toleration,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use orca_core::api::Pod;

    fn node(name: &str, memory: &str, labels: &[(&str, &str)]) -> Arc<Node> {
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
        Arc::new(n)
    }

    /// A pod requesting `memory`.
    fn pod(name: &str, memory: &str) -> Pod {
        let mut p = Pod {
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
        };
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("default".into());
        p
    }

    /// `pod` as the master's cache decodes it.
    fn cached(pod: &Pod) -> CompactPod {
        CompactPod::of(pod)
    }

    fn bound(mut p: Pod, node: &str) -> Pod {
        p.spec.as_mut().unwrap().node_name = Some(node.into());
        p
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new(Some("default"), name)
    }

    /// The verdict on one node, as a result.
    fn verdict(state: &ClusterState, pod: &Pod, node: &str) -> Result<f64, Vec<String>> {
        let pod = cached(pod);
        match fits(&Requirements::of(&pod), state.info(state.by_name[node])) {
            Verdict::Fits(score) => Ok(score),
            Verdict::Fails(why) => Err(why),
        }
    }

    /// Where a search through every node puts `pod`.
    fn place(state: &mut ClusterState, pod: &Pod) -> Placement {
        state.place(&Requirements::of(&cached(pod)), 0, usize::MAX, 0)
    }

    /// A node selector requirement: `key OPERATOR values`.
    fn requirement(key: &str, operator: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn term(requirements: Vec<NodeSelectorRequirement>) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: Some(requirements),
            match_fields: None,
        }
    }

    /// `pod` with this node affinity.
    fn with_affinity(mut pod: Pod, affinity: NodeAffinity) -> Pod {
        pod.spec.as_mut().unwrap().affinity = Some(Affinity {
            node_affinity: Some(affinity),
            ..Affinity::default()
        });
        pod
    }

    #[test]
    fn cordoned_and_unready_nodes_take_nothing() {
        let mut state = ClusterState::default();
        let mut cordoned = (*node("cordoned", "8Gi", &[])).clone();
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        state.apply_node(Arc::new(cordoned));
        let mut down = (*node("down", "8Gi", &[])).clone();
        down.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "Unknown".into();
        state.apply_node(Arc::new(down));
        let p = pod("p", "1Gi");
        assert_eq!(
            verdict(&state, &p, "cordoned").unwrap_err(),
            ["node(s) were unschedulable"]
        );
        assert_eq!(
            verdict(&state, &p, "down").unwrap_err(),
            ["node(s) were not ready"]
        );
        assert_eq!(
            place(&mut state, &p),
            Placement::Nowhere(
                "0/2 nodes are available: 1 node(s) were not ready, 1 node(s) were unschedulable."
                    .to_string()
            )
        );
        // Back in service: the node takes pods again.
        state.apply_node(node("down", "8Gi", &[]));
        assert_eq!(place(&mut state, &p), Placement::Node("down".to_string()));
    }

    #[test]
    fn cpu_and_pod_count_are_filters_too() {
        let mut state = ClusterState::default();
        let mut full = (*node("full", "8Gi", &[])).clone();
        let allocatable = full.status.as_mut().unwrap().allocatable.as_mut().unwrap();
        allocatable.insert("pods".into(), Quantity("1".into()));
        state.apply_node(Arc::new(full));
        state.apply_pod(&cached(&bound(pod("there", "1Mi"), "full")));
        let mut hungry = pod("hungry", "1Gi");
        hungry.spec.as_mut().unwrap().containers[0]
            .resources
            .as_mut()
            .unwrap()
            .requests
            .as_mut()
            .unwrap()
            .insert("cpu".into(), Quantity("8".into()));
        assert_eq!(
            verdict(&state, &hungry, "full").unwrap_err(),
            ["Insufficient cpu", "Too many pods"]
        );
    }

    #[test]
    fn required_affinity_filters_and_preferred_affinity_scores() {
        let mut state = ClusterState::default();
        state.apply_node(node("ssd", "4Gi", &[("disk", "ssd"), ("zone", "a")]));
        state.apply_node(node("hdd", "4Gi", &[("disk", "hdd"), ("zone", "b")]));
        state.apply_node(node("gpu", "4Gi", &[("disk", "ssd"), ("gpu", "yes")]));
        // Required: every expression of one term, any term.
        let required = |terms| NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: terms,
            }),
            ..NodeAffinity::default()
        };
        let ssd_without_gpu = with_affinity(
            pod("a", "1Gi"),
            required(vec![term(vec![
                requirement("disk", "In", &["ssd"]),
                requirement("gpu", "DoesNotExist", &[]),
            ])]),
        );
        let mismatch = ["node(s) didn't match Pod's node affinity/selector"];
        assert!(verdict(&state, &ssd_without_gpu, "ssd").is_ok());
        assert_eq!(
            verdict(&state, &ssd_without_gpu, "hdd").unwrap_err(),
            mismatch
        );
        assert_eq!(
            verdict(&state, &ssd_without_gpu, "gpu").unwrap_err(),
            mismatch
        );
        let either = with_affinity(
            pod("b", "1Gi"),
            required(vec![
                term(vec![requirement("zone", "NotIn", &["a", "b"])]),
                term(vec![requirement("zone", "Exists", &[])]),
            ]),
        );
        assert!(verdict(&state, &either, "hdd").is_ok());
        assert!(
            verdict(&state, &either, "gpu").is_ok(),
            "NotIn matches a missing label"
        );
        // Preferred: the weights of the matching terms add to the score.
        let prefers = with_affinity(
            pod("c", "1Gi"),
            NodeAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    PreferredSchedulingTerm {
                        weight: 30,
                        preference: term(vec![requirement("zone", "In", &["b"])]),
                    },
                    PreferredSchedulingTerm {
                        weight: 20,
                        preference: term(vec![requirement("disk", "In", &["hdd"])]),
                    },
                ]),
                ..NodeAffinity::default()
            },
        );
        let gain =
            verdict(&state, &prefers, "hdd").unwrap() - verdict(&state, &prefers, "ssd").unwrap();
        assert!((gain - 50.0).abs() < 1e-9, "{gain}");
        assert_eq!(
            place(&mut state, &prefers),
            Placement::Node("hdd".to_string())
        );
    }

    #[test]
    fn the_emptier_node_wins_and_an_owners_pods_spread() {
        let mut state = ClusterState::default();
        state.apply_node(node("big", "8Gi", &[]));
        state.apply_node(node("small", "2Gi", &[]));
        // Least allocated and balanced: the big node, by a few points.
        let lone = pod("lone", "256Mi");
        let big = verdict(&state, &lone, "big").unwrap();
        let small = verdict(&state, &lone, "small").unwrap();
        assert!(big > small && big - small < 20.0, "{big} {small}");
        // A pod on the big node makes it less attractive, but still first.
        state.apply_pod(&cached(&bound(pod("other", "256Mi"), "big")));
        assert_eq!(place(&mut state, &lone), Placement::Node("big".to_string()));
        // An owner's second pod goes where none of its pods are yet.
        let owned = |name: &str| {
            let mut p = pod(name, "256Mi");
            p.metadata.owner_references = Some(vec![OwnerReference {
                uid: "rs-1".into(),
                controller: Some(true),
                ..OwnerReference::default()
            }]);
            p
        };
        let first = owned("first");
        assert_eq!(
            place(&mut state, &first),
            Placement::Node("big".to_string())
        );
        state.assume(&cached(&first), "big");
        assert_eq!(
            place(&mut state, &owned("second")),
            Placement::Node("small".to_string())
        );
    }

    #[test]
    fn filters_give_kubectls_reasons() {
        let mut state = ClusterState::default();
        state.apply_node(node("a", "1Gi", &[]));
        state.apply_node(node("b", "4Gi", &[("disk", "ssd")]));
        let want = pod("want", "2Gi");
        assert_eq!(
            verdict(&state, &want, "a").unwrap_err(),
            ["Insufficient memory"]
        );
        assert!(verdict(&state, &want, "b").is_ok());
        // Room taken by the pods already there.
        state.apply_pod(&cached(&bound(pod("there", "3Gi"), "b")));
        assert_eq!(
            verdict(&state, &want, "b").unwrap_err(),
            ["Insufficient memory"]
        );
        // nodeSelector.
        let mut picky = pod("picky", "1Gi");
        picky.spec.as_mut().unwrap().node_selector =
            Some(BTreeMap::from([("disk".to_string(), "hdd".to_string())]));
        assert_eq!(
            verdict(&state, &picky, "b").unwrap_err(),
            ["node(s) didn't match Pod's node affinity/selector"]
        );
        // Taints.
        let mut tainted = (*node("c", "4Gi", &[])).clone();
        tainted.spec.as_mut().unwrap().taints = Some(vec![Taint {
            key: "node.kubernetes.io/unreachable".into(),
            effect: "NoExecute".into(),
            ..Taint::default()
        }]);
        state.apply_node(Arc::new(tainted));
        assert_eq!(
            verdict(&state, &want, "c").unwrap_err(),
            ["node(s) had untolerated taint {node.kubernetes.io/unreachable: }"]
        );
        let mut tolerant = want.clone();
        tolerant.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some("node.kubernetes.io/unreachable".into()),
            operator: Some("Exists".into()),
            ..Toleration::default()
        }]);
        assert!(verdict(&state, &tolerant, "c").is_ok());
    }

    #[test]
    fn room_follows_pods_bound_moved_and_deleted() {
        let mut state = ClusterState::default();
        state.apply_node(node("a", "4Gi", &[]));
        state.apply_node(node("b", "4Gi", &[]));
        let want = pod("want", "2Gi");
        let there = bound(pod("there", "3Gi"), "a");
        state.apply_pod(&cached(&there));
        assert!(verdict(&state, &want, "a").is_err());
        // A status update changes nothing a filter reads: same generation.
        let generation = state.info(state.by_name["a"]).generation;
        let mut running = there.clone();
        running.status = Some(PodStatus {
            phase: Some("Running".into()),
            ..PodStatus::default()
        });
        assert!(!state.apply_pod(&cached(&running)));
        assert_eq!(state.info(state.by_name["a"]).generation, generation);
        // Seen on another node (deleted and made again under its name):
        // the room moves with it.
        state.apply_pod(&cached(&bound(pod("there", "3Gi"), "b")));
        assert!(verdict(&state, &want, "a").is_ok());
        assert!(verdict(&state, &want, "b").is_err());
        // Finished pods take no room.
        let mut done = bound(pod("there", "3Gi"), "b");
        done.status = Some(PodStatus {
            phase: Some("Succeeded".into()),
            ..PodStatus::default()
        });
        assert!(state.apply_pod(&cached(&done)), "room appeared");
        assert!(verdict(&state, &want, "b").is_ok());
        state.apply_pod(&cached(&bound(pod("there", "3Gi"), "b")));
        assert!(state.remove_pod(&key("there")), "room appeared");
        assert!(verdict(&state, &want, "b").is_ok());
        assert_eq!(
            state.info(state.by_name["b"]).requested,
            Resources::default()
        );
        // Host ports are held until their pod goes.
        let mut web = pod("web", "1Mi");
        web.spec.as_mut().unwrap().containers[0].ports =
            Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                container_port: 80,
                host_port: Some(8080),
                ..Default::default()
            }]);
        state.apply_pod(&cached(&bound(web.clone(), "a")));
        let mut other = web.clone();
        other.metadata.name = Some("other".into());
        assert_eq!(
            verdict(&state, &other, "a").unwrap_err(),
            ["node(s) didn't have free ports for the requested pod ports"]
        );
        assert!(verdict(&state, &other, "b").is_ok());
        state.remove_pod(&key("web"));
        assert!(verdict(&state, &other, "a").is_ok());
    }

    #[test]
    fn assumed_pods_count_until_bound_or_forgotten() {
        let mut state = ClusterState::default();
        state.apply_node(node("a", "4Gi", &[]));
        let want = pod("want", "2Gi");
        let big = pod("big", "3Gi");
        state.assume(&cached(&big), "a");
        assert!(state.is_assumed(&key("big")));
        assert!(verdict(&state, &want, "a").is_err());
        // The cache shows the pod still unbound (its binding is on the
        // way): it stays counted.
        assert!(!state.apply_pod(&cached(&big)));
        assert!(verdict(&state, &want, "a").is_err());
        // The binding failed: the room is free again.
        assert!(state.forget(&key("big")));
        assert!(!state.is_assumed(&key("big")));
        assert!(verdict(&state, &want, "a").is_ok());
        // Assumed, then seen bound: counted once, and no longer forgettable.
        state.assume(&cached(&big), "a");
        state.apply_pod(&cached(&bound(big.clone(), "a")));
        assert!(!state.is_assumed(&key("big")));
        assert!(!state.forget(&key("big")));
        assert_eq!(state.info(state.by_name["a"]).pods, 1);
        assert!(verdict(&state, &want, "a").is_err());
        // An assumed pod deleted before its binding landed.
        state.remove_pod(&key("big"));
        let small = pod("small", "1Gi");
        state.assume(&cached(&small), "a");
        assert!(state.remove_pod(&key("small")));
        assert!(!state.forget(&key("small")));
        assert_eq!(state.info(state.by_name["a"]).pods, 0);
        assert!(verdict(&state, &big, "a").is_ok());
    }

    #[test]
    fn a_class_reuses_verdicts_until_its_nodes_change() {
        let mut state = ClusterState::default();
        state.apply_node(node("a", "4Gi", &[]));
        state.apply_node(node("b", "4Gi", &[]));
        // Three pods of one class: each takes a node the one before left.
        let first = pod("p1", "3Gi");
        let Placement::Node(one) = place(&mut state, &first) else {
            panic!("p1 fits")
        };
        state.assume(&cached(&first), &one);
        let second = pod("p2", "3Gi");
        let Placement::Node(two) = place(&mut state, &second) else {
            panic!("p2 fits")
        };
        assert_ne!(one, two, "the first node's verdict was judged again");
        state.assume(&cached(&second), &two);
        let third = pod("p3", "3Gi");
        let nowhere =
            Placement::Nowhere("0/2 nodes are available: 2 Insufficient memory.".to_string());
        assert_eq!(place(&mut state, &third), nowhere);
        // Nothing changed: the class's answer stands without a search.
        let class = &state.classes[&Requirements::of(&cached(&third)).class];
        assert_eq!(
            class.none_fit.as_ref().map(|(g, _)| *g),
            Some(state.generation)
        );
        assert_eq!(place(&mut state, &third), nowhere);
        // A pod of another class is judged on its own.
        assert!(matches!(
            place(&mut state, &pod("tiny", "512Mi")),
            Placement::Node(_)
        ));
        // Room appears: the class searches again.
        state.forget(&key("p1"));
        assert_eq!(place(&mut state, &third), Placement::Node(one.clone()));
        // A node that grows is judged again too.
        state.assume(&cached(&third), &one);
        assert_eq!(place(&mut state, &pod("p4", "3Gi")), nowhere);
        state.apply_node(node("b", "8Gi", &[]));
        assert_eq!(
            place(&mut state, &pod("p4", "3Gi")),
            Placement::Node("b".to_string())
        );
        // A node that goes is no longer offered.
        state.remove_node("b");
        assert_eq!(state.nodes(), 1);
        assert_eq!(
            place(&mut state, &pod("p5", "2Gi")),
            Placement::Nowhere("0/1 nodes are available: 1 Insufficient memory.".to_string())
        );
    }

    #[test]
    fn unschedulable_pods_are_remembered_until_placed() {
        let mut state = ClusterState::default();
        let mut stuck = pod("stuck", "1Gi");
        stuck.status = Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        });
        state.apply_pod(&cached(&stuck));
        assert_eq!(state.unschedulable(), [key("stuck")]);
        state.apply_node(node("a", "4Gi", &[]));
        state.assume(&cached(&stuck), "a");
        assert!(state.unschedulable().is_empty());
    }
}
