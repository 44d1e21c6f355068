//! Garbage collection by `ownerReferences`: an object all of whose owners
//! are gone is deleted (its own dependents follow it the same way), as
//! Kubernetes' background cascading deletion does. An owner deleted with
//! `--cascade=orphan` first has the references to it removed from its
//! dependents; one deleted with `--cascade=foreground` waits until its
//! dependents are gone. Both are held by a finalizer this loop removes.
//!
//! An owner missing from the cache is looked up in the store before a
//! dependent is deleted, so a dependent seen before its new owner never
//! is.

use std::sync::Arc;

use k8s_openapi::Resource;
use orca_core::api::{
    Cached, CompactPod, Deployment, Object, OwnerReference, ReplicaSet, Service, kind_of,
};
use orca_core::store::{
    CASCADE_OWNERS, DeleteOptions, Error, FINALIZER_FOREGROUND, FINALIZER_ORPHAN, Store,
};
use orca_core::watch::{Action, Controller, Informers, ObjectKey, Reader};

/// The owner kinds whose dependents are collected, and their caches.
#[derive(Clone)]
struct Owners {
    deployments: Reader<Deployment>,
    sets: Reader<ReplicaSet>,
    services: Reader<Service>,
}

/// Whether an owner reference's object exists.
#[derive(Debug, PartialEq, Eq)]
enum Owner {
    Present,
    Gone,
    /// A kind this collector does not follow: left alone.
    Unknown,
}

fn same_uid<K: Object>(found: Option<Arc<K>>, uid: &str) -> Owner {
    match found {
        Some(o) if o.metadata().uid.as_deref() == Some(uid) => Owner::Present,
        _ => Owner::Gone,
    }
}

impl Owners {
    fn state(&self, r: &OwnerReference, namespace: Option<&str>) -> Owner {
        let key = ObjectKey::new(namespace, &r.name);
        match (r.api_version.as_str(), r.kind.as_str()) {
            ("apps/v1", "Deployment") => same_uid(self.deployments.get(&key), &r.uid),
            ("apps/v1", "ReplicaSet") => same_uid(self.sets.get(&key), &r.uid),
            ("v1", "Service") => same_uid(self.services.get(&key), &r.uid),
            _ => Owner::Unknown,
        }
    }
}

/// Collects dependents of kind `D`.
pub struct Collector<D: Cached> {
    store: Store,
    dependents: Reader<D>,
    owners: Owners,
}

impl<D: Cached> Collector<D> {
    /// The loop and its controller: a dependent's change, or its owner's,
    /// brings it here.
    pub fn new(informers: &Informers, store: Store) -> (Arc<Self>, Controller<D>) {
        let dependents = informers.all::<D>();
        let deployments = informers.all::<Deployment>();
        let sets = informers.all::<ReplicaSet>();
        let services = informers.all::<Service>();
        let owners = Owners {
            deployments: deployments.reader(),
            sets: sets.reader(),
            services: services.reader(),
        };
        let this = Arc::new(Self {
            store,
            dependents: dependents.reader(),
            owners,
        });
        let by_owner = |reader: Reader<D>| {
            move |owner_uid: Option<&str>| -> Vec<ObjectKey> {
                reader
                    .owned_by(owner_uid.unwrap_or_default())
                    .iter()
                    .map(|d| ObjectKey::of(&**d))
                    .collect()
            }
        };
        let (a, b, c) = (
            by_owner(dependents.reader()),
            by_owner(dependents.reader()),
            by_owner(dependents.reader()),
        );
        let name = format!("gc-{}", kind_of::<D::Kind>().plural);
        let controller = Controller::new(&dependents)
            .watches(&deployments, move |o: &Deployment| {
                a(o.metadata.uid.as_deref())
            })
            .watches(&sets, move |o: &ReplicaSet| b(o.metadata.uid.as_deref()))
            .watches(&services, move |o: &Service| c(o.metadata.uid.as_deref()))
            .named(name);
        (this, controller)
    }

    /// Deletes the dependent if every owner it names is gone.
    pub async fn reconcile(&self, key: ObjectKey) -> Result<Action, Error> {
        let Some(dependent) = self.dependents.get(&key) else {
            return Ok(Action::AwaitChange);
        };
        let refs = dependent.owner_references().to_vec();
        if refs.is_empty() || dependent.deleting() {
            return Ok(Action::AwaitChange);
        }
        let namespace = key.namespace.as_deref();
        for r in &refs {
            match self.owners.state(r, namespace) {
                Owner::Present | Owner::Unknown => return Ok(Action::AwaitChange),
                Owner::Gone => {
                    // The cache may not show a new owner yet: ask the store.
                    if self.exists(r, namespace).await? {
                        return Ok(Action::AwaitChange);
                    }
                }
            }
        }
        tracing::debug!(kind = D::Kind::KIND, object = %key, "every owner is gone: deleting");
        let kind = kind_of::<D::Kind>();
        match self
            .store
            .delete_value(kind, namespace, &key.name, DeleteOptions::default())
            .await
        {
            Ok(_) | Err(Error::NotFound { .. }) => Ok(Action::AwaitChange),
            Err(e) => Err(e),
        }
    }

    async fn exists(&self, r: &OwnerReference, namespace: Option<&str>) -> Result<bool, Error> {
        let kind = orca_core::api::Kind::for_manifest(&r.api_version, &r.kind);
        let Some(kind) = kind else { return Ok(true) };
        let namespace = namespace.filter(|_| kind.namespaced);
        match self.store.get_value(kind, namespace, &r.name).await {
            Ok(owner) => {
                Ok(owner.pointer("/metadata/uid").and_then(|u| u.as_str()) == Some(&r.uid))
            }
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Finishes the deletion of owners deleted with `--cascade=orphan` or
/// `--cascade=foreground`.
pub struct Cascades {
    store: Store,
    dependents: Dependents,
}

#[derive(Clone)]
struct Dependents {
    sets: Reader<ReplicaSet>,
    pods: Reader<CompactPod>,
    slices: Reader<orca_core::api::EndpointSlice>,
}

impl Dependents {
    /// `(kind, namespace, name)` of every object owned by `uid`.
    fn of(&self, uid: &str) -> Vec<(&'static orca_core::api::Kind, ObjectKey)> {
        fn keys<K: Cached>(
            reader: &Reader<K>,
            uid: &str,
        ) -> Vec<(&'static orca_core::api::Kind, ObjectKey)> {
            reader
                .owned_by(uid)
                .iter()
                .map(|o| (kind_of::<K::Kind>(), ObjectKey::of(&**o)))
                .collect()
        }
        let mut all = keys(&self.sets, uid);
        all.extend(keys(&self.pods, uid));
        all.extend(keys(&self.slices, uid));
        all
    }
}

impl Cascades {
    /// The loop's state on the shared caches, writing through `store`; one
    /// controller per owner kind comes from [`Cascades::controller`].
    pub fn new(informers: &Informers, store: Store) -> Arc<Self> {
        Arc::new(Self {
            store,
            dependents: Dependents {
                sets: informers.all::<ReplicaSet>().reader(),
                pods: informers.all::<CompactPod>().reader(),
                slices: informers.all::<orca_core::api::EndpointSlice>().reader(),
            },
        })
    }

    /// Its controller for `K`'s owners, requeued when their dependents change.
    pub fn controller<K: Object>(informers: &Informers) -> Controller<K> {
        let owners = informers.all::<K>();
        // An owner of kind `K` named by a dependent's references.
        fn up<K: Object, D: Cached>(dependent: &D) -> Vec<ObjectKey> {
            dependent
                .owner_references()
                .iter()
                .filter(|r| r.kind == K::KIND)
                .map(|r| ObjectKey::new(dependent.namespace(), &r.name))
                .collect()
        }
        Controller::new(&owners)
            .watches(&informers.all::<ReplicaSet>(), up::<K, ReplicaSet>)
            .watches(&informers.all::<CompactPod>(), up::<K, CompactPod>)
            .named(format!("cascade-{}", kind_of::<K>().plural))
    }

    /// Orphans or waits for the dependents of an owner being deleted, then
    /// lets it go.
    async fn reconcile_owner<K: Object>(&self, key: ObjectKey, owner: &K) -> Result<Action, Error> {
        let meta = owner.metadata();
        let deleting = meta.deletion_timestamp.is_some();
        let finalizers = meta.finalizers.clone().unwrap_or_default();
        let orphan = finalizers.iter().any(|f| f == FINALIZER_ORPHAN);
        let foreground = finalizers.iter().any(|f| f == FINALIZER_FOREGROUND);
        if !deleting || !(orphan || foreground) {
            return Ok(Action::AwaitChange);
        }
        let uid = meta.uid.clone().unwrap_or_default();
        let dependents = self.dependents.of(&uid);
        for (kind, dep) in &dependents {
            let namespace = dep.namespace.as_deref();
            if orphan {
                let value = match self.store.get_value(kind, namespace, &dep.name).await {
                    Ok(v) => v,
                    Err(Error::NotFound { .. }) => continue,
                    Err(e) => return Err(e),
                };
                let mut freed = value.clone();
                if let Some(refs) = freed
                    .pointer_mut("/metadata/ownerReferences")
                    .and_then(|r| r.as_array_mut())
                {
                    refs.retain(|r| r.get("uid").and_then(|u| u.as_str()) != Some(uid.as_str()));
                }
                match self.store.update_value(kind, freed).await {
                    Ok(_) | Err(Error::NotFound { .. }) => {}
                    Err(Error::Conflict { .. }) => {
                        return Ok(Action::Requeue(std::time::Duration::from_millis(50)));
                    }
                    Err(e) => return Err(e),
                }
            } else {
                // Owners among the dependents wait for theirs in turn; a
                // leaf (a pod) has nothing to wait for.
                let owns = CASCADE_OWNERS.contains(&kind.plural);
                let options = DeleteOptions {
                    propagation: Some(if owns {
                        orca_core::store::Propagation::Foreground
                    } else {
                        orca_core::store::Propagation::Background
                    }),
                    ..DeleteOptions::default()
                };
                match self
                    .store
                    .delete_value(kind, namespace, &dep.name, options)
                    .await
                {
                    Ok(_) | Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if foreground && !dependents.is_empty() {
            // Their deletion brings this owner back here.
            return Ok(Action::AwaitChange);
        }
        let kind = kind_of::<K>();
        let namespace = key.namespace.as_deref().filter(|_| kind.namespaced);
        let mut value = match self.store.get_value(kind, namespace, &key.name).await {
            Ok(v) => v,
            Err(Error::NotFound { .. }) => return Ok(Action::AwaitChange),
            Err(e) => return Err(e),
        };
        if let Some(list) = value
            .pointer_mut("/metadata/finalizers")
            .and_then(|f| f.as_array_mut())
        {
            list.retain(|f| f != FINALIZER_ORPHAN && f != FINALIZER_FOREGROUND);
        }
        match self.store.update_value(kind, value).await {
            Ok(_) | Err(Error::NotFound { .. }) => Ok(Action::AwaitChange),
            Err(Error::Conflict { .. }) => {
                Ok(Action::Requeue(std::time::Duration::from_millis(50)))
            }
            Err(e) => Err(e),
        }
    }
}

/// [`Cascades`] for the owners of kind `K`.
pub struct CascadeOf<K> {
    cascades: Arc<Cascades>,
    owners: Reader<K>,
}

impl<K: Object> CascadeOf<K> {
    /// The loop for `K`'s owners, on the shared cache of them.
    pub fn new(cascades: &Arc<Cascades>, informers: &Informers) -> Arc<Self> {
        Arc::new(Self {
            cascades: Arc::clone(cascades),
            owners: informers.all::<K>().reader(),
        })
    }

    /// Orphans or waits for the dependents of an owner being deleted with
    /// such a cascade, then lets it go.
    pub async fn reconcile(&self, key: ObjectKey) -> Result<Action, Error> {
        match self.owners.get(&key) {
            Some(owner) => self.cascades.reconcile_owner(key, &*owner).await,
            None => Ok(Action::AwaitChange),
        }
    }
}
