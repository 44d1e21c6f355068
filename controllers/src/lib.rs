//! Orca's control loops, run by the leading master on the process's shared
//! caches: ReplicaSets, Deployments, EndpointSlices, and nodes (pod CIDRs
//! and lifecycle), Namespace deletion and garbage collection. Every write goes
//! through the store the caller gives, which for a leader carries its
//! leadership's guard.

pub mod deployment;
pub mod endpointslice;
pub mod gc;
pub mod namespaces;
pub mod nodes;
mod pods;
pub mod replicaset;

use std::future::Future;
use std::sync::Arc;

use orca_core::api::{Cached, CompactPod, Deployment, EndpointSlice, Object, ReplicaSet, Service};
use orca_core::store::{Error, Store};
use orca_core::watch::{Action, Controller, Informers, ObjectKey};
use tokio::sync::watch;

/// One control loop's work on one object.
pub trait Reconcile: Send + Sync + 'static {
    /// Brings the object `key` names a step closer to what it asks for.
    fn reconcile(&self, key: ObjectKey) -> impl Future<Output = Result<Action, Error>> + Send;
}

impl Reconcile for replicaset::ReplicaSets {
    fn reconcile(&self, key: ObjectKey) -> impl Future<Output = Result<Action, Error>> + Send {
        replicaset::ReplicaSets::reconcile(self, key)
    }
}

impl Reconcile for deployment::Deployments {
    fn reconcile(&self, key: ObjectKey) -> impl Future<Output = Result<Action, Error>> + Send {
        deployment::Deployments::reconcile(self, key)
    }
}

impl Reconcile for nodes::Nodes {
    fn reconcile(&self, key: ObjectKey) -> impl Future<Output = Result<Action, Error>> + Send {
        nodes::Nodes::reconcile(self, key)
    }
}

impl<D: Cached> Reconcile for gc::Collector<D> {
    fn reconcile(&self, key: ObjectKey) -> impl Future<Output = Result<Action, Error>> + Send {
        gc::Collector::reconcile(self, key)
    }
}

impl<K: Object> Reconcile for gc::CascadeOf<K> {
    fn reconcile(&self, key: ObjectKey) -> impl Future<Output = Result<Action, Error>> + Send {
        gc::CascadeOf::reconcile(self, key)
    }
}

impl Reconcile for namespaces::Namespaces {
    fn reconcile(&self, key: ObjectKey) -> impl Future<Output = Result<Action, Error>> + Send {
        namespaces::Namespaces::reconcile(self, key)
    }
}

impl Reconcile for endpointslice::EndpointSlices {
    fn reconcile(&self, key: ObjectKey) -> impl Future<Output = Result<Action, Error>> + Send {
        endpointslice::EndpointSlices::reconcile(self, key)
    }
}

/// Runs `controller` with `work` until `stopped` turns true.
pub async fn drive<K: Cached, R: Reconcile>(
    controller: Controller<K>,
    work: Arc<R>,
    mut stopped: watch::Receiver<bool>,
) {
    controller
        .run(
            move |key| {
                let work = Arc::clone(&work);
                async move { work.reconcile(key).await }
            },
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        )
        .await;
}

/// How the control loops are tuned.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// When a node is unreachable and its pods evicted.
    pub nodes: nodes::Timing,
    /// The range node pod CIDRs come from.
    pub cluster_cidr: Option<orca_core::store::Cidr>,
}

/// Runs every control loop until `shutdown` resolves; loops already
/// reconciling finish their object first.
pub async fn run(
    informers: &Informers,
    store: Store,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopped) = watch::channel(false);
    let (node_work, node_loop) = nodes::Nodes::new(
        informers,
        store.clone(),
        settings.nodes,
        settings.cluster_cidr,
    );
    let (sets, set_loop) = replicaset::ReplicaSets::new(informers, store.clone());
    let (deployments, deployment_loop) = deployment::Deployments::new(informers, store.clone());
    let (slices, slice_loop) = endpointslice::EndpointSlices::new(informers, store.clone());
    let (gc_sets, gc_set_loop) = gc::Collector::<ReplicaSet>::new(informers, store.clone());
    let (gc_pods, gc_pod_loop) = gc::Collector::<CompactPod>::new(informers, store.clone());
    let (gc_slices, gc_slice_loop) = gc::Collector::<EndpointSlice>::new(informers, store.clone());
    let (namespaces, namespace_loop) = namespaces::Namespaces::new(informers, store.clone());
    let cascades = gc::Cascades::new(informers, store);
    let loops = async {
        tokio::join!(
            drive(set_loop, sets, stopped.clone()),
            drive(deployment_loop, deployments, stopped.clone()),
            drive(slice_loop, slices, stopped.clone()),
            drive(node_loop, node_work, stopped.clone()),
            drive(namespace_loop, namespaces, stopped.clone()),
            drive(gc_set_loop, gc_sets, stopped.clone()),
            drive(gc_pod_loop, gc_pods, stopped.clone()),
            drive(gc_slice_loop, gc_slices, stopped.clone()),
            drive(
                gc::Cascades::controller::<Deployment>(informers),
                gc::CascadeOf::<Deployment>::new(&cascades, informers),
                stopped.clone(),
            ),
            drive(
                gc::Cascades::controller::<ReplicaSet>(informers),
                gc::CascadeOf::<ReplicaSet>::new(&cascades, informers),
                stopped.clone(),
            ),
            drive(
                gc::Cascades::controller::<Service>(informers),
                gc::CascadeOf::<Service>::new(&cascades, informers),
                stopped.clone(),
            ),
        );
    };
    let signal = async {
        shutdown.await;
        let _ = stop.send(true);
    };
    tokio::join!(loops, signal);
}
