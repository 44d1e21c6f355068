//! The ReplicaSet controller: keeps `spec.replicas` pods of each
//! ReplicaSet's template running, and writes its status.
//!
//! Pods are made from the template with `generateName` and an owner
//! reference to the ReplicaSet; they are found again through the pod
//! cache's owner index. Expectations keep a create or delete from being
//! made twice while the pod cache catches up: a pod this controller created
//! counts until the cache holds it (or has moved past the revision it was
//! created at), and one it deleted stops counting at once.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{StreamExt, stream};
use orca_core::api::{CompactPod, ObjectMeta, OwnerReference, Pod, ReplicaSet};
use orca_core::store::{DeleteOptions, Error, Store};
use orca_core::watch::{Action, Controller, Informers, ObjectKey, Reader};

use crate::pods::{availability, is_active, is_ready};

/// Pod writes of one reconcile in flight at once.
const PARALLEL_WRITES: usize = 16;

/// What one ReplicaSet is waiting to see in the pod cache.
#[derive(Default)]
struct Expected {
    /// Pods created, by name, with the revision they were created at.
    created: HashMap<String, i64>,
    /// Pods deleted, by name.
    deleted: HashSet<String>,
}

/// The ReplicaSet control loop.
pub struct ReplicaSets {
    store: Store,
    sets: Reader<ReplicaSet>,
    pods: Reader<CompactPod>,
    expected: Mutex<HashMap<ObjectKey, Expected>>,
}

impl ReplicaSets {
    /// The loop and its controller, on the process's shared caches; every
    /// write goes through `store` (the leader's guarded store).
    pub fn new(informers: &Informers, store: Store) -> (Arc<Self>, Controller<ReplicaSet>) {
        let sets = informers.all::<ReplicaSet>();
        let pods = informers.all::<CompactPod>();
        let this = Arc::new(Self {
            store,
            sets: sets.reader(),
            pods: pods.reader(),
            expected: Mutex::new(HashMap::new()),
        });
        let controller = Controller::new(&sets).owns(&pods).named("replicaset");
        (this, controller)
    }

    /// Brings one ReplicaSet's pods and status to what it asks for.
    pub async fn reconcile(&self, key: ObjectKey) -> Result<Action, Error> {
        let Some(rs) = self.sets.get(&key) else {
            // Gone: its pods go through garbage collection.
            self.expected_mut().remove(&key);
            return Ok(Action::AwaitChange);
        };
        let uid = rs.metadata.uid.clone().unwrap_or_default();
        let owned: Vec<Arc<CompactPod>> = self.pods.owned_by(&uid);
        let active = self.active_pods(&key, owned.iter().filter(|p| is_active(p)).cloned());
        let wanted = rs
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1)
            .max(0);
        let wanted = usize::try_from(wanted).unwrap_or(0);
        if rs.metadata.deletion_timestamp.is_none() {
            let have = active.len() + self.pending_creates(&key);
            if have < wanted {
                self.create(&rs, wanted - have).await?;
            } else if active.len() > wanted && self.pending_creates(&key) == 0 {
                self.delete(&key, &rs, active.clone(), active.len() - wanted)
                    .await?;
            }
        }
        self.write_status(&rs, &active).await
    }

    fn expected_mut(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, Expected>> {
        self.expected.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The active pods, less those this controller deleted; and settles
    /// the expectations the cache now meets.
    fn active_pods(
        &self,
        key: &ObjectKey,
        active: impl Iterator<Item = Arc<CompactPod>>,
    ) -> Vec<Arc<CompactPod>> {
        let seen = self.pods.revision();
        let mut expected = self.expected_mut();
        let entry = expected.entry(key.clone()).or_default();
        let pods: Vec<Arc<CompactPod>> = active.collect();
        let names: HashSet<&str> = pods
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect();
        entry
            .created
            .retain(|name, revision| !names.contains(name.as_str()) && *revision > seen);
        // A deleted pod has left the active set once the cache shows it
        // gone or terminating.
        entry.deleted.retain(|name| names.contains(name.as_str()));
        pods.into_iter()
            .filter(|p| {
                !entry
                    .deleted
                    .contains(p.metadata.name.as_deref().unwrap_or_default())
            })
            .collect()
    }

    fn pending_creates(&self, key: &ObjectKey) -> usize {
        self.expected_mut().get(key).map_or(0, |e| e.created.len())
    }

    async fn create(&self, rs: &ReplicaSet, count: usize) -> Result<(), Error> {
        let key = ObjectKey::of(rs);
        let namespace = rs.metadata.namespace.clone().unwrap_or_default();
        let api = self.store.api::<Pod>(&namespace);
        let pod = pod_for(rs);
        let results: Vec<Result<Pod, Error>> = stream::iter(0..count)
            .map(|_| api.create(&pod))
            .buffer_unordered(PARALLEL_WRITES)
            .collect()
            .await;
        let mut first_error = None;
        for result in results {
            match result {
                Ok(created) => {
                    let revision = created
                        .metadata
                        .resource_version
                        .as_deref()
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(i64::MAX);
                    let name = created.metadata.name.unwrap_or_default();
                    self.expected_mut()
                        .entry(key.clone())
                        .or_default()
                        .created
                        .insert(name, revision);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn delete(
        &self,
        key: &ObjectKey,
        rs: &ReplicaSet,
        mut pods: Vec<Arc<CompactPod>>,
        count: usize,
    ) -> Result<(), Error> {
        // Kubernetes' order: unbound, pending, not ready, then the newest.
        pods.sort_by_key(|p| deletion_rank(p));
        let namespace = rs.metadata.namespace.clone().unwrap_or_default();
        let api = self.store.api::<Pod>(&namespace);
        let names: Vec<String> = pods
            .iter()
            .take(count)
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        let results: Vec<(String, Result<(), Error>)> = stream::iter(names)
            .map(|name| {
                let api = api.clone();
                async move {
                    let result = api
                        .delete_if_exists(&name, DeleteOptions::default())
                        .await
                        .map(|_| ());
                    (name, result)
                }
            })
            .buffer_unordered(PARALLEL_WRITES)
            .collect()
            .await;
        let mut first_error = None;
        for (name, result) in results {
            match result {
                Ok(()) => {
                    self.expected_mut()
                        .entry(key.clone())
                        .or_default()
                        .deleted
                        .insert(name);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn write_status(
        &self,
        rs: &ReplicaSet,
        active: &[Arc<CompactPod>],
    ) -> Result<Action, Error> {
        let min_ready = Duration::from_secs(
            rs.spec
                .as_ref()
                .and_then(|s| s.min_ready_seconds)
                .unwrap_or(0)
                .max(0)
                .unsigned_abs()
                .into(),
        );
        let now = jiff::Timestamp::now();
        let mut available = 0;
        let mut next_check: Option<Duration> = None;
        for pod in active {
            match availability(pod, min_ready, now) {
                Ok(()) => available += 1,
                Err(Some(wait)) => next_check = Some(next_check.map_or(wait, |n| n.min(wait))),
                Err(None) => {}
            }
        }
        let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        let status = k8s_openapi::api::apps::v1::ReplicaSetStatus {
            replicas: count(active.len()),
            fully_labeled_replicas: Some(count(active.len())),
            ready_replicas: Some(count(active.iter().filter(|p| is_ready(p)).count())),
            available_replicas: Some(available),
            observed_generation: rs.metadata.generation,
            conditions: None,
            terminating_replicas: None,
        };
        if rs.status.as_ref() != Some(&status) {
            let namespace = rs.metadata.namespace.clone().unwrap_or_default();
            let name = rs.metadata.name.clone().unwrap_or_default();
            let api = self.store.api::<ReplicaSet>(&namespace);
            api.modify_if_exists(&name, true, |fresh| fresh.status = Some(status.clone()))
                .await?;
        }
        // Pods ready but not yet for minReadySeconds become available later
        // without any event: look again then.
        Ok(next_check.map_or(Action::AwaitChange, |d| {
            Action::Requeue(d + Duration::from_millis(50))
        }))
    }
}

/// Sorts pods by the order they go in when a ReplicaSet shrinks.
fn deletion_rank(pod: &CompactPod) -> (bool, u8, bool, Reverse<Option<jiff::Timestamp>>) {
    let assigned = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Running") => 2,
        _ => 1,
    };
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (assigned, phase, is_ready(pod), Reverse(created))
}

/// A new pod of `rs`'s template, owned by it.
pub fn pod_for(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let name = rs.metadata.name.clone().unwrap_or_default();
    let template_meta = template.metadata.unwrap_or_default();
    let metadata = ObjectMeta {
        generate_name: Some(format!("{name}-")),
        namespace: rs.metadata.namespace.clone(),
        labels: template_meta.labels,
        annotations: template_meta.annotations,
        owner_references: Some(vec![owner_reference("apps/v1", "ReplicaSet", &rs.metadata)]),
        ..ObjectMeta::default()
    };
    Pod {
        metadata,
        spec: template.spec,
        status: None,
    }
}

/// A controller owner reference to the object `meta` describes.
pub fn owner_reference(api_version: &str, kind: &str, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use orca_core::api::Time;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool, created: i64) -> CompactPod {
        let mut p = Pod {
            spec: Some(PodSpec {
                node_name: node.map(str::to_string),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        p.metadata.name = Some(name.into());
        p.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(created).unwrap()));
        CompactPod::of(&p)
    }

    #[test]
    fn a_shrinking_set_deletes_unbound_pending_unready_then_newest_pods_first() {
        let mut pods = [
            pod("ready-old", Some("n"), "Running", true, 100),
            pod("ready-new", Some("n"), "Running", true, 300),
            pod("unready", Some("n"), "Running", false, 50),
            pod("pending", Some("n"), "Pending", false, 10),
            pod("unbound", None, "Pending", false, 5),
        ];
        pods.sort_by_key(deletion_rank);
        let order: Vec<&str> = pods
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(
            order,
            ["unbound", "pending", "unready", "ready-new", "ready-old"]
        );
    }
}
