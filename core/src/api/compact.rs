//! The compact pod the master's shared cache holds. k8s-openapi's `Pod` is
//! 2.2 KiB before its first string and about 11 KiB decoded for a typical
//! running pod; at 50,000 pods that alone is over half a gigabyte. The
//! master's loops read a few fields of a pod and write it back only
//! through the store (which reads the stored object first), so their cache
//! keeps those fields alone, decoded straight from the stored JSON, and
//! what an owner's pods hold alike (labels, owners, template) once.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::LazyLock;

use k8s_openapi::api::core::v1::{Affinity, ContainerPort, PodIP, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Serialize};

use super::shared::{Pool, Pooled, Shared};
use super::{OwnerReference, Pod, Time};

/// The conditions a master loop reads: the scheduler's verdict and
/// readiness. Others (Initialized, ContainersReady, …) are dropped.
const KEPT_CONDITIONS: [&str; 2] = ["PodScheduled", "Ready"];

/// A pod as the master's caches keep it: the fields its loops read, under
/// the names and shapes `Pod` gives them, so code reads both alike.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompactPod {
    /// Identity, labels, owners and lifecycle timestamps.
    #[serde(default)]
    pub metadata: CompactMeta,
    /// What placing and serving the pod reads of its spec.
    #[serde(default)]
    pub spec: Option<CompactPodSpec>,
    /// Phase, addresses and the conditions the loops read.
    #[serde(default)]
    pub status: Option<CompactPodStatus>,
}

/// What the loops read of a pod's `ObjectMeta`, under its names; the rest
/// (annotations, managed fields, …) is not kept.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CompactMeta {
    /// The pod's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Its uid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The revision it was read at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// When it was created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<Time>,
    /// When its deletion began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<Time>,
    /// What holds its deletion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finalizers: Option<Vec<String>>,
    /// Its labels, shared with every pod labelled alike.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Shared<BTreeMap<String, String>>>,
    /// Its owners, shared with every pod owned alike.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_references: Option<Shared<Vec<OwnerReference>>>,
}

/// The part of a `PodSpec` the scheduler and controllers read: the node,
/// and the rest ([`PodTemplateFields`], shared by an owner's pods) through
/// `Deref`, so `spec.tolerations` reads as on a `PodSpec`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(from = "SpecFields", into = "SpecFields")]
pub struct CompactPodSpec {
    /// The node the pod is bound to.
    pub node_name: Option<String>,
    template: Shared<PodTemplateFields>,
}

impl Deref for CompactPodSpec {
    type Target = PodTemplateFields;
    fn deref(&self) -> &PodTemplateFields {
        &self.template
    }
}

/// A pod spec as stored, the fields [`CompactPodSpec`] keeps.
#[derive(Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
struct SpecFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    node_name: Option<String>,
    #[serde(flatten)]
    template: PodTemplateFields,
}

impl From<SpecFields> for CompactPodSpec {
    fn from(s: SpecFields) -> Self {
        Self {
            node_name: s.node_name,
            template: Shared::new(s.template),
        }
    }
}

impl From<CompactPodSpec> for SpecFields {
    fn from(s: CompactPodSpec) -> Self {
        Self {
            node_name: s.node_name,
            template: (*s.template).clone(),
        }
    }
}

/// What the pods of one template share of their spec: how they are placed
/// and what they run.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodTemplateFields {
    /// The scheduler meant to place it.
    pub scheduler_name: Option<String>,
    /// Labels a node must carry.
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Affinity rules.
    pub affinity: Option<Affinity>,
    /// The taints it tolerates.
    pub tolerations: Option<Vec<Toleration>>,
    /// Its containers' names, ports and requests.
    pub containers: Vec<CompactContainer>,
    /// Its init containers', likewise.
    pub init_containers: Option<Vec<CompactContainer>>,
}

/// What the loops read of a container: its name, ports and requests.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(from = "ContainerFields", into = "ContainerFields")]
pub struct CompactContainer {
    /// The container's name.
    pub name: String,
    /// The ports it declares (host ports and named target ports).
    pub ports: Option<Vec<ContainerPort>>,
    /// Its requests by resource name, a limit standing for a request it
    /// does not name (as the API server defaults them).
    pub requests: Vec<(String, Quantity)>,
}

impl CompactContainer {
    /// What it requests of `resource`, if anything.
    pub fn request(&self, resource: &str) -> Option<&Quantity> {
        self.requests
            .iter()
            .find(|(name, _)| name == resource)
            .map(|(_, q)| q)
    }
}

/// A container as stored, the fields [`CompactContainer`] keeps.
#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
#[derive(Default)]
struct ContainerFields {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ports: Option<Vec<ContainerPort>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resources: Option<ResourceFields>,
}

#[derive(Default, Deserialize, Serialize)]
#[serde(default)]
struct ResourceFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    requests: Option<BTreeMap<String, Quantity>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<BTreeMap<String, Quantity>>,
}

impl From<ContainerFields> for CompactContainer {
    fn from(c: ContainerFields) -> Self {
        let ResourceFields { requests, limits } = c.resources.unwrap_or_default();
        let mut merged = requests.unwrap_or_default();
        for (name, limit) in limits.unwrap_or_default() {
            merged.entry(name).or_insert(limit);
        }
        Self {
            name: c.name,
            ports: c.ports,
            requests: merged.into_iter().collect(),
        }
    }
}

impl From<CompactContainer> for ContainerFields {
    fn from(c: CompactContainer) -> Self {
        Self {
            name: c.name,
            ports: c.ports,
            resources: (!c.requests.is_empty()).then(|| ResourceFields {
                requests: Some(c.requests.into_iter().collect()),
                limits: None,
            }),
        }
    }
}

/// The part of a `PodStatus` the loops read.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CompactPodStatus {
    /// Pending, Running, Succeeded, Failed or Unknown.
    pub phase: Option<String>,
    /// Its primary address.
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    /// Every address.
    #[serde(rename = "podIPs")]
    pub pod_ips: Option<Vec<PodIP>>,
    /// The PodScheduled and Ready conditions, where present.
    #[serde(deserialize_with = "kept_conditions")]
    pub conditions: Option<Vec<CompactCondition>>,
}

/// What the loops read of a pod condition, under `PodCondition`'s names.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompactCondition {
    /// PodScheduled or Ready.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    /// Why, in words (the scheduler's kubectl-style reasons).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the status last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

fn kept_conditions<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<CompactCondition>>, D::Error> {
    let all: Option<Vec<CompactCondition>> = Option::deserialize(d)?;
    Ok(all.map(|all| {
        all.into_iter()
            .filter(|c| KEPT_CONDITIONS.contains(&c.type_.as_str()))
            .collect()
    }))
}

impl CompactPod {
    /// The compact form of `pod`, as the cache decodes it from the store.
    pub fn of(pod: &Pod) -> Self {
        let value = serde_json::to_value(pod).expect("k8s-openapi objects serialise");
        serde_json::from_value(value).expect("a pod's JSON decodes as a compact pod")
    }
}

static LABELS: LazyLock<Pool<BTreeMap<String, String>>> = LazyLock::new(Pool::default);
static OWNERS: LazyLock<Pool<Vec<OwnerReference>>> = LazyLock::new(Pool::default);
static TEMPLATES: LazyLock<Pool<PodTemplateFields>> = LazyLock::new(Pool::default);

impl Pooled for BTreeMap<String, String> {
    fn pool() -> &'static Pool<Self> {
        &LABELS
    }
}

impl Pooled for Vec<OwnerReference> {
    fn pool() -> &'static Pool<Self> {
        &OWNERS
    }
}

impl Pooled for PodTemplateFields {
    fn pool() -> &'static Pool<Self> {
        &TEMPLATES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A bound, running pod as a kubelet and the API defaults leave it.
    fn running() -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-1", "namespace": "default", "uid": "u1",
                "labels": {"app": "web"},
                "annotations": {"kubectl.kubernetes.io/restartedAt": "now"},
                "managedFields": [{"manager": "orca", "operation": "Update"}],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web", "uid": "rs1", "controller": true}]
            },
            "spec": {
                "nodeName": "n1",
                "nodeSelector": {"disk": "ssd"},
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "containers": [{
                    "name": "web", "image": "nginx", "command": ["nginx"],
                    "env": [{"name": "A", "value": "b"}],
                    "ports": [{"name": "http", "containerPort": 80}],
                    "resources": {"requests": {"memory": "64Mi"},
                                  "limits": {"cpu": "1", "memory": "128Mi"}},
                    "readinessProbe": {"httpGet": {"port": 80}}
                }],
                "initContainers": [{"name": "init", "resources": {"requests": {"cpu": "2"}}}],
                "restartPolicy": "Always"
            },
            "status": {
                "phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}],
                "hostIP": "127.0.0.1",
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Initialized", "status": "True"},
                    {"type": "ContainersReady", "status": "True"},
                    {"type": "Ready", "status": "True",
                     "lastTransitionTime": "2026-12-07T07:00:00Z"}
                ],
                "containerStatuses": [{"name": "web", "image": "nginx", "imageID": "",
                    "ready": true, "restartCount": 0}]
            }
        })
    }

    #[test]
    fn a_pod_keeps_what_the_loops_read() {
        let pod: Pod = serde_json::from_value(running()).unwrap();
        let compact = CompactPod::of(&pod);
        assert_eq!(compact.metadata.name.as_deref(), Some("web-1"));
        assert_eq!(
            compact.metadata.labels.as_deref(),
            pod.metadata.labels.as_ref()
        );
        assert_eq!(
            compact.metadata.owner_references.as_deref(),
            pod.metadata.owner_references.as_ref()
        );
        let spec = compact.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.node_selector, pod.spec.as_ref().unwrap().node_selector);
        assert_eq!(spec.tolerations, pod.spec.as_ref().unwrap().tolerations);
        let web = &spec.containers[0];
        assert_eq!(web.name, "web");
        assert_eq!(web.ports.as_ref().unwrap()[0].name.as_deref(), Some("http"));
        // A request it names, and a limit standing for one it does not.
        assert_eq!(web.request("memory"), Some(&Quantity("64Mi".into())));
        assert_eq!(web.request("cpu"), Some(&Quantity("1".into())));
        assert_eq!(web.request("ephemeral-storage"), None);
        let init = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.request("cpu"), Some(&Quantity("2".into())));
        let status = compact.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(status.pod_ips.as_ref().unwrap()[0].ip, "10.0.0.5");
        let kept: Vec<&str> = status
            .conditions
            .iter()
            .flatten()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(kept, ["PodScheduled", "Ready"]);
        assert!(
            status.conditions.as_ref().unwrap()[1]
                .last_transition_time
                .is_some()
        );
    }

    #[test]
    fn what_no_loop_reads_is_dropped() {
        let compact: CompactPod = serde_json::from_value(running()).unwrap();
        let json = serde_json::to_string(&compact).unwrap();
        for gone in [
            "restartedAt",
            "managedFields",
            "nginx",
            "env",
            "readinessProbe",
            "containerStatuses",
            "Initialized",
        ] {
            assert!(!json.contains(gone), "{gone} kept in {json}");
        }
    }

    #[test]
    fn an_owners_pods_share_what_they_hold_alike() {
        let mut other = running();
        other["metadata"]["name"] = json!("web-2");
        other["spec"]["nodeName"] = json!("n2");
        let a: CompactPod = serde_json::from_value(running()).unwrap();
        let b: CompactPod = serde_json::from_value(other).unwrap();
        let (a_spec, b_spec) = (a.spec.as_ref().unwrap(), b.spec.as_ref().unwrap());
        assert_eq!(a_spec.node_name.as_deref(), Some("n1"));
        assert_eq!(b_spec.node_name.as_deref(), Some("n2"));
        assert!(std::ptr::eq(&**a_spec, &**b_spec), "one template");
        let labels = |p: &CompactPod| p.metadata.labels.as_deref().map(std::ptr::from_ref);
        assert_eq!(labels(&a), labels(&b), "one label map");
        // Written back, each is its own pod again.
        let written: serde_json::Value = serde_json::to_value(&b).unwrap();
        assert_eq!(written["metadata"]["name"], "web-2");
        assert_eq!(written["spec"]["nodeName"], "n2");
        assert_eq!(written["spec"]["containers"][0]["name"], "web");
    }

    #[test]
    fn a_pod_with_nothing_but_metadata_decodes() {
        let compact: CompactPod =
            serde_json::from_value(json!({"metadata": {"name": "bare"}})).unwrap();
        assert_eq!(compact.metadata.name.as_deref(), Some("bare"));
        assert_eq!(compact.spec, None);
        assert_eq!(compact.status, None);
    }
}
