//! Pod metadata from the cluster: the labels of the pods bound to this
//! node (and only those: a node never lists the cluster's pods), followed
//! through the core watch pipeline, for the events of their log files.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use orca_core::api::Pod;
use orca_core::store::Store;
use orca_core::watch::{self, ObjectKey, Reader, WatchStatus};

use crate::event::PodRef;

/// The pods bound to this node, as the watch last saw them.
#[derive(Clone)]
pub struct PodMetadata {
    pods: Reader<Pod>,
}

impl PodMetadata {
    /// Starts following the pods bound to `node` in `store`; the returned
    /// future drives the watch and must be polled (spawned) for the cache
    /// to fill.
    /// Its state is kept in `status` (which also logs its failures,
    /// rate-limited, and its recovery).
    pub fn follow(
        store: &Store,
        node: &str,
        status: WatchStatus,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (reader, writer) = watch::store::<Pod>();
        let events = watch::reflector(
            writer,
            watch::watcher_with_status(store.pods_on_node(node), status),
        );
        let driver = events.for_each(|_| async {});
        (PodMetadata { pods: reader }, driver)
    }

    /// Waits until the first list completed, at most `limit`: a cluster
    /// that does not answer delays shipping only that long, then files are
    /// read with what their paths say.
    pub async fn wait_synced(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.pods.wait_until_synced())
            .await
            .is_ok()
    }

    /// The labels of the pod a log file belongs to, if the cache has that
    /// pod (same namespace, name and UID).
    pub fn labels(&self, pod: &PodRef) -> Option<BTreeMap<String, String>> {
        let found = self
            .pods
            .get(&ObjectKey::new(Some(&pod.namespace), &pod.pod))?;
        if found.metadata.uid.as_deref() != Some(pod.uid.as_str()) {
            return None;
        }
        Some(found.metadata.labels.clone().unwrap_or_default())
    }
}
