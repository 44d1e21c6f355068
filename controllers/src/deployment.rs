//! The Deployment controller: one ReplicaSet per pod template (named by the
//! template's hash), rolled from the old ones to the new one as the
//! strategy says (`RollingUpdate` within `maxSurge` and `maxUnavailable`,
//! or `Recreate`), old ones kept up to `revisionHistoryLimit`, and the
//! Deployment's status and conditions written.
//!
//! Decisions read the ReplicaSets' status only once their controller has
//! observed their latest spec, and count a ReplicaSet's available pods at
//! most as its replicas, so a scale-down still in progress is never
//! counted twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus, ReplicaSetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use orca_core::api::{Deployment, LabelSelector, ObjectMeta, ReplicaSet, Time};
use orca_core::store::{DeleteOptions, Error, Store};
use orca_core::watch::{Action, Controller, Informers, ObjectKey, Reader};
use serde_json::Value;

use crate::replicaset::owner_reference;

/// The label a ReplicaSet's pods carry with their template's hash.
pub const TEMPLATE_HASH: &str = "pod-template-hash";
/// The annotation numbering a ReplicaSet's revision.
pub const REVISION: &str = "deployment.kubernetes.io/revision";

/// The Deployment control loop.
pub struct Deployments {
    store: Store,
    deployments: Reader<Deployment>,
    sets: Reader<ReplicaSet>,
}

/// What a Deployment's ReplicaSets add up to.
#[derive(Default)]
struct Counts {
    /// Pods that exist.
    pods: i32,
    /// Pods ready.
    ready: i32,
    /// Pods available (ready for `minReadySeconds`), at most each set's replicas.
    available: i32,
    /// Replicas asked of the sets.
    wanted: i32,
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    rs.status.as_ref().map_or((0, 0, 0), |s| {
        (
            s.replicas,
            s.ready_replicas.unwrap_or(0),
            s.available_replicas.unwrap_or(0),
        )
    })
}

fn count(sets: &[&ReplicaSet]) -> Counts {
    let mut c = Counts::default();
    for rs in sets {
        let (pods, ready, available) = status_of(rs);
        c.pods += pods;
        c.ready += ready;
        c.available += available.min(spec_replicas(rs));
        c.wanted += spec_replicas(rs);
    }
    c
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// A template as JSON without its hash label, for comparing templates.
fn template_value(template: &impl serde::Serialize) -> Value {
    let mut value = serde_json::to_value(template).unwrap_or_default();
    if let Some(labels) = value
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(TEMPLATE_HASH);
        if labels.is_empty()
            && let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.remove("labels");
        }
    }
    value
}

/// The hash naming a template's ReplicaSet: FNV-1a of its JSON, written in
/// Kubernetes' alphabet without vowels.
pub fn template_hash(template: &impl serde::Serialize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let text = template_value(template).to_string();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (0..10)
        .map(|i| {
            let digit = (hash >> (i * 6)) % ALPHABET.len() as u64;
            char::from(ALPHABET[usize::try_from(digit).unwrap_or(0)])
        })
        .collect()
}

/// `value` of `total`, rounded as Kubernetes rounds surge (up) and
/// unavailability (down).
fn scaled(value: Option<&IntOrString>, default_percent: i32, total: i32, round_up: bool) -> i32 {
    match value {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let percent: i32 = s.trim_end_matches('%').parse().unwrap_or(default_percent);
            percent_of(percent, total, round_up)
        }
        None => percent_of(default_percent, total, round_up),
    }
}

fn percent_of(percent: i32, total: i32, round_up: bool) -> i32 {
    let product = i64::from(percent) * i64::from(total);
    let value = if round_up {
        (product + 99) / 100
    } else {
        product / 100
    };
    i32::try_from(value).unwrap_or(i32::MAX)
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    now: &Time,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

impl Deployments {
    /// The loop and its controller on the shared caches, writing through
    /// `store`.
    pub fn new(informers: &Informers, store: Store) -> (Arc<Self>, Controller<Deployment>) {
        let deployments = informers.all::<Deployment>();
        let sets = informers.all::<ReplicaSet>();
        let this = Arc::new(Self {
            store,
            deployments: deployments.reader(),
            sets: sets.reader(),
        });
        let controller = Controller::new(&deployments)
            .owns(&sets)
            .named("deployment");
        (this, controller)
    }

    /// Moves one Deployment a step towards its template and writes its status.
    pub async fn reconcile(&self, key: ObjectKey) -> Result<Action, Error> {
        let Some(d) = self.deployments.get(&key) else {
            return Ok(Action::AwaitChange);
        };
        if d.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let spec = d.spec.clone().unwrap_or_default();
        let owned: Vec<Arc<ReplicaSet>> = self.sets.owned_by(&uid);
        let wanted_template = template_value(&spec.template);
        let (new, mut old): (Vec<&ReplicaSet>, Vec<&ReplicaSet>) =
            owned.iter().map(|rs| &**rs).partition(|rs| {
                rs.spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| template_value(t) == wanted_template)
            });
        old.sort_by_key(|rs| revision(rs));
        let max_revision = owned.iter().map(|rs| revision(rs)).max().unwrap_or(0);
        let paused = spec.paused.unwrap_or(false);
        let replicas = spec.replicas.unwrap_or(1).max(0);

        let Some(new) = new.first().copied() else {
            if paused {
                return self.write_status(&d, None, &old, false).await;
            }
            self.create_set(&d, max_revision + 1).await?;
            // The new set's arrival in the cache triggers the next step.
            return Ok(Action::AwaitChange);
        };
        if paused {
            return self.write_status(&d, Some(new), &old, false).await;
        }
        // A rollback to an older template makes that set the newest revision.
        if revision(new) < max_revision {
            self.set_revision(new, max_revision + 1).await?;
            return Ok(Action::AwaitChange);
        }
        // Every set's controller must have seen its latest replicas before
        // their status says anything about what is available.
        let settled = owned.iter().all(|rs| {
            rs.status.as_ref().and_then(|s| s.observed_generation) >= rs.metadata.generation
        });
        let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
        let moved = if !settled {
            false
        } else if recreate {
            self.recreate(new, &old, replicas).await?
        } else {
            self.roll(&d, new, &old, replicas).await?
        };
        self.prune(&d, &old).await?;
        self.write_status(&d, Some(new), &old, moved).await
    }

    async fn create_set(&self, d: &Deployment, revision: i64) -> Result<(), Error> {
        let spec = d.spec.clone().unwrap_or_default();
        let hash = template_hash(&spec.template);
        let name = format!("{}-{hash}", d.metadata.name.clone().unwrap_or_default());
        let mut template = spec.template.clone();
        let template_meta = template.metadata.get_or_insert_with(ObjectMeta::default);
        template_meta
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(TEMPLATE_HASH.into(), hash.clone());
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(TEMPLATE_HASH.into(), hash.clone());
        let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
        let first = self
            .sets
            .owned_by(d.metadata.uid.as_deref().unwrap_or_default())
            .is_empty();
        // The first set starts at full size; a rollout grows the new one
        // step by step.
        let replicas = if first && !recreate {
            spec.replicas.unwrap_or(1)
        } else {
            0
        };
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: d.metadata.namespace.clone(),
                labels: template_meta.labels.clone(),
                annotations: Some(BTreeMap::from([(REVISION.into(), revision.to_string())])),
                owner_references: Some(vec![owner_reference("apps/v1", "Deployment", &d.metadata)]),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: spec.min_ready_seconds,
                selector: LabelSelector { ..selector },
                template: Some(template),
            }),
            status: None,
        };
        let namespace = d.metadata.namespace.clone().unwrap_or_default();
        let api = self.store.api::<ReplicaSet>(&namespace);
        let name = rs.metadata.name.clone().unwrap_or_default();
        match api.create(&rs).await {
            Ok(_) => Ok(()),
            // Made by an earlier pass the cache has not shown yet, or left
            // without an owner (`--cascade=orphan`): a set of this template
            // that no controller owns is adopted, as Kubernetes does.
            Err(Error::AlreadyExists { .. }) => {
                let owner = owner_reference("apps/v1", "Deployment", &d.metadata);
                api.modify_if_exists(&name, false, |existing| {
                    let refs = existing
                        .metadata
                        .owner_references
                        .get_or_insert_with(Vec::new);
                    if !refs.iter().any(|r| r.controller == Some(true)) {
                        refs.push(owner.clone());
                    }
                })
                .await
                .map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    async fn scale(&self, rs: &ReplicaSet, replicas: i32) -> Result<(), Error> {
        let namespace = rs.metadata.namespace.clone().unwrap_or_default();
        let name = rs.metadata.name.clone().unwrap_or_default();
        self.store
            .api::<ReplicaSet>(&namespace)
            .modify_if_exists(&name, false, |fresh| {
                fresh.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
            })
            .await
            .map(|_| ())
    }

    async fn set_revision(&self, rs: &ReplicaSet, revision: i64) -> Result<(), Error> {
        let namespace = rs.metadata.namespace.clone().unwrap_or_default();
        let name = rs.metadata.name.clone().unwrap_or_default();
        self.store
            .api::<ReplicaSet>(&namespace)
            .modify_if_exists(&name, false, |fresh| {
                fresh
                    .metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(REVISION.into(), revision.to_string());
            })
            .await
            .map(|_| ())
    }

    /// `Recreate`: the old sets go to zero, and once their pods are gone
    /// the new one comes up whole.
    async fn recreate(
        &self,
        new: &ReplicaSet,
        old: &[&ReplicaSet],
        replicas: i32,
    ) -> Result<bool, Error> {
        let mut moved = false;
        for rs in old.iter().filter(|rs| spec_replicas(rs) > 0) {
            self.scale(rs, 0).await?;
            moved = true;
        }
        if moved || old.iter().any(|rs| status_of(rs).0 > 0) {
            return Ok(moved);
        }
        if spec_replicas(new) != replicas {
            self.scale(new, replicas).await?;
            moved = true;
        }
        Ok(moved)
    }

    /// `RollingUpdate`: the new set grows within `maxSurge` over the
    /// wanted replicas; old sets shrink, unhealthy pods first, while at
    /// least `replicas - maxUnavailable` stay available.
    async fn roll(
        &self,
        d: &Deployment,
        new: &ReplicaSet,
        old: &[&ReplicaSet],
        replicas: i32,
    ) -> Result<bool, Error> {
        let spec = d.spec.clone().unwrap_or_default();
        let rolling = spec
            .strategy
            .and_then(|s| s.rolling_update)
            .unwrap_or_default();
        let surge = scaled(rolling.max_surge.as_ref(), 25, replicas, true);
        let mut unavailable = scaled(rolling.max_unavailable.as_ref(), 25, replicas, false);
        if surge == 0 && unavailable == 0 {
            unavailable = 1;
        }
        let mut all: Vec<&ReplicaSet> = old.to_vec();
        all.push(new);
        let counts = count(&all);
        let mut moved = false;

        // Grow the new set.
        let new_replicas = spec_replicas(new);
        let target = if new_replicas > replicas {
            replicas
        } else {
            let room = replicas + surge - counts.wanted;
            new_replicas + room.clamp(0, replicas - new_replicas)
        };
        if target != new_replicas {
            self.scale(new, target).await?;
            // One step a pass, as Kubernetes does: the old sets shrink on a
            // pass that sees the new set's size.
            return Ok(true);
        }

        // Shrink the old sets.
        let min_available = replicas - unavailable;
        let (_, _, new_available) = status_of(new);
        let new_unavailable = (new_replicas - new_available.min(new_replicas)).max(0);
        let mut can_remove = counts.pods - min_available - new_unavailable;
        let mut remaining: Vec<(&ReplicaSet, i32)> =
            old.iter().map(|rs| (*rs, spec_replicas(rs))).collect();
        // Unhealthy old pods cost no availability: they go first.
        for (rs, size) in remaining.iter_mut() {
            if can_remove <= 0 {
                break;
            }
            let (_, _, available) = status_of(rs);
            let unhealthy = (*size - available.min(*size)).max(0);
            let down = unhealthy.min(can_remove);
            if down > 0 {
                *size -= down;
                can_remove -= down;
            }
        }
        // Then available ones, as long as enough stay available.
        let mut spare = counts.available - min_available;
        for (rs, size) in remaining.iter_mut() {
            if spare <= 0 {
                break;
            }
            let (_, _, available) = status_of(rs);
            let down = (*size).min(spare).min(available.min(*size));
            *size -= down;
            spare -= down;
        }
        for (rs, size) in remaining {
            if size != spec_replicas(rs) {
                self.scale(rs, size).await?;
                moved = true;
            }
        }
        Ok(moved)
    }

    /// Deletes old, empty sets beyond `revisionHistoryLimit`, oldest first.
    async fn prune(&self, d: &Deployment, old: &[&ReplicaSet]) -> Result<(), Error> {
        let limit = d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0);
        let empty: Vec<&&ReplicaSet> = old
            .iter()
            .filter(|rs| spec_replicas(rs) == 0 && status_of(rs).0 == 0)
            .collect();
        let excess = empty
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(0));
        for rs in empty.into_iter().take(excess) {
            let namespace = rs.metadata.namespace.clone().unwrap_or_default();
            let name = rs.metadata.name.clone().unwrap_or_default();
            self.store
                .api::<ReplicaSet>(&namespace)
                .delete_if_exists(&name, DeleteOptions::default())
                .await?;
        }
        Ok(())
    }

    async fn write_status(
        &self,
        d: &Deployment,
        new: Option<&ReplicaSet>,
        old: &[&ReplicaSet],
        moved: bool,
    ) -> Result<Action, Error> {
        let spec = d.spec.clone().unwrap_or_default();
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let mut all: Vec<&ReplicaSet> = old.to_vec();
        all.extend(new);
        let counts = count(&all);
        let updated = new.map_or(0, |rs| status_of(rs).0);
        let rolling = spec
            .strategy
            .as_ref()
            .and_then(|s| s.rolling_update.clone())
            .unwrap_or_default();
        let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
        let unavailable_allowed = if recreate {
            replicas
        } else {
            scaled(rolling.max_unavailable.as_ref(), 25, replicas, false)
        };
        let old_pods: i32 = old.iter().map(|rs| status_of(rs).0).sum();
        let complete =
            new.is_some() && updated == replicas && counts.available >= replicas && old_pods == 0;
        let now = Time(jiff::Timestamp::now());
        let previous = d.status.clone().unwrap_or_default();
        let previous_conditions = previous.conditions.clone().unwrap_or_default();
        let find = |t: &str| previous_conditions.iter().find(|c| c.type_ == t).cloned();

        let available = counts.available >= replicas - unavailable_allowed;
        let mut available_cond = condition(
            "Available",
            available,
            if available {
                "MinimumReplicasAvailable"
            } else {
                "MinimumReplicasUnavailable"
            },
            if available {
                "Deployment has minimum availability.".into()
            } else {
                "Deployment does not have minimum availability.".into()
            },
            &now,
        );
        if let Some(prev) = find("Available")
            && prev.status == available_cond.status
        {
            available_cond = prev;
        }

        let deadline = Duration::from_secs(
            spec.progress_deadline_seconds
                .unwrap_or(600)
                .max(0)
                .unsigned_abs()
                .into(),
        );
        let counts_changed = previous.updated_replicas.unwrap_or(0) != updated
            || previous.available_replicas.unwrap_or(0) != counts.available
            || previous.ready_replicas.unwrap_or(0) != counts.ready;
        let name = d.metadata.name.clone().unwrap_or_default();
        let new_name = new
            .and_then(|rs| rs.metadata.name.clone())
            .unwrap_or_default();
        let prev_progress = find("Progressing");
        let progressing = if spec.paused.unwrap_or(false) {
            condition(
                "Progressing",
                false,
                "DeploymentPaused",
                "Deployment is paused".into(),
                &now,
            )
        } else if complete {
            condition(
                "Progressing",
                true,
                "NewReplicaSetAvailable",
                format!("ReplicaSet {new_name:?} has successfully progressed."),
                &now,
            )
        } else if moved || counts_changed || prev_progress.is_none() {
            condition(
                "Progressing",
                true,
                "ReplicaSetUpdated",
                format!("ReplicaSet {new_name:?} is progressing."),
                &now,
            )
        } else {
            let prev = prev_progress.clone().expect("checked above");
            let since = prev.last_update_time.as_ref().map_or(now.0, |t| t.0);
            let stalled = now.0.duration_since(since)
                >= jiff::SignedDuration::try_from(deadline).unwrap_or(jiff::SignedDuration::MAX);
            if stalled {
                condition(
                    "Progressing",
                    false,
                    "ProgressDeadlineExceeded",
                    format!("ReplicaSet {new_name:?} has timed out progressing."),
                    &now,
                )
            } else {
                prev
            }
        };
        // Keep the old timestamps when nothing about the condition changed.
        let progressing = match &prev_progress {
            Some(prev)
                if prev.status == progressing.status
                    && prev.reason == progressing.reason
                    && !(moved || counts_changed) =>
            {
                prev.clone()
            }
            Some(prev) if prev.status == progressing.status => DeploymentCondition {
                last_transition_time: prev.last_transition_time.clone(),
                ..progressing
            },
            _ => progressing,
        };
        let stalled = progressing.reason.as_deref() == Some("ProgressDeadlineExceeded");
        let status = DeploymentStatus {
            observed_generation: d.metadata.generation,
            replicas: Some(counts.pods),
            updated_replicas: Some(updated),
            ready_replicas: Some(counts.ready),
            available_replicas: Some(counts.available),
            unavailable_replicas: Some((replicas - counts.available).max(0)),
            terminating_replicas: None,
            conditions: Some(vec![available_cond, progressing.clone()]),
            collision_count: previous.collision_count,
        };
        if d.status.as_ref() != Some(&status) {
            let namespace = d.metadata.namespace.clone().unwrap_or_default();
            self.store
                .api::<Deployment>(&namespace)
                .modify_if_exists(&name, true, |fresh| fresh.status = Some(status.clone()))
                .await?;
        }
        // An unfinished rollout is looked at again when its deadline may
        // have passed, whatever else happens.
        Ok(if complete || stalled {
            Action::AwaitChange
        } else {
            Action::Requeue(deadline.min(Duration::from_secs(30)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodTemplateSpec;

    #[test]
    fn the_hash_ignores_its_own_label_and_follows_the_template() {
        let t = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
                ..ObjectMeta::default()
            }),
            spec: None,
        };
        let h = template_hash(&t);
        assert_eq!(h.len(), 10);
        let mut labelled = t.clone();
        labelled
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(TEMPLATE_HASH.into(), h.clone());
        assert_eq!(template_hash(&labelled), h);
        let mut other = t.clone();
        other
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert("v".into(), "2".into());
        assert_ne!(template_hash(&other), h);
    }

    #[test]
    fn surge_rounds_up_and_unavailability_down() {
        let pct = IntOrString::String("25%".into());
        assert_eq!(scaled(Some(&pct), 25, 3, true), 1);
        assert_eq!(scaled(Some(&pct), 25, 3, false), 0);
        assert_eq!(scaled(None, 25, 10, true), 3);
        assert_eq!(scaled(Some(&IntOrString::Int(2)), 25, 10, false), 2);
    }
}
