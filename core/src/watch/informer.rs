//! Shared caches (client-go's shared informers): one list+watch and one
//! cache per kind and scope in a process, however many control loops read
//! them. [`Informers`] is the process's factory; an [`Informer`] hands out
//! its cache's [`Reader`], calls handlers with the [`Change`]s it makes,
//! and queues the keys they touch for the loops that follow it.

use std::any::Any;
use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};

use futures::{Stream, StreamExt, stream};
use k8s_openapi::Resource;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Unit;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::reflector::{Change, ObjectKey, Reader, Writer, store};
use super::watcher::{Event, watcher};
use crate::api::{Cached, Pod};
use crate::store::{Store, View};
use crate::telemetry::Metrics;

/// Labels of a cache's metrics: its kind and the etcd prefix it covers.
type CacheLabels = Vec<(&'static str, String)>;
/// Labels of a controller's metrics: its name.
type ControllerLabels = Vec<(&'static str, String)>;

fn reconcile_histogram() -> Histogram {
    // 1 ms to ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The watch pipeline's metrics, registered once per process by
/// [`Informers::new`] and shared by its caches and controllers.
#[derive(Debug)]
pub(crate) struct PipelineMetrics {
    cache_events: Family<CacheLabels, Counter>,
    cache_lists: Family<CacheLabels, Counter>,
    cache_objects: Family<CacheLabels, Gauge>,
    cache_watch_errors: Family<CacheLabels, Counter>,
    pub(crate) queue_depth: Family<ControllerLabels, Gauge>,
    pub(crate) reconciles: Family<ControllerLabels, Counter>,
    pub(crate) reconcile_errors: Family<ControllerLabels, Counter>,
    pub(crate) reconcile_duration: Family<ControllerLabels, Histogram, fn() -> Histogram>,
}

impl PipelineMetrics {
    fn register(metrics: &Metrics) -> Self {
        let this = Self {
            cache_events: Family::default(),
            cache_lists: Family::default(),
            cache_objects: Family::default(),
            cache_watch_errors: Family::default(),
            queue_depth: Family::default(),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(reconcile_histogram),
        };
        let m = metrics.registry_with_prefix("cache");
        m.register(
            "events",
            "Watch events applied to a shared cache",
            this.cache_events.clone(),
        );
        m.register(
            "lists",
            "Complete lists (first and re-lists) of a shared cache",
            this.cache_lists.clone(),
        );
        m.register(
            "objects",
            "Objects in a shared cache",
            this.cache_objects.clone(),
        );
        m.register(
            "watch_errors",
            "Failed lists or watches of a shared cache, each followed by a retry",
            this.cache_watch_errors.clone(),
        );
        let m = metrics.registry_with_prefix("controller");
        m.register(
            "queue_depth",
            "Keys waiting to be reconciled, now or after a delay",
            this.queue_depth.clone(),
        );
        m.register("reconciles", "Reconciles finished", this.reconciles.clone());
        m.register(
            "reconcile_errors",
            "Reconciles that failed and were retried with back-off",
            this.reconcile_errors.clone(),
        );
        m.register_with_unit(
            "reconcile_duration",
            "Time one reconcile took",
            Unit::Seconds,
            this.reconcile_duration.clone(),
        );
        this
    }
}

/// The process's shared caches, one per kind and scope, started on first
/// use. Dropping the factory stops every watch it started.
pub struct Informers {
    store: Store,
    metrics: Arc<PipelineMetrics>,
    started: Mutex<HashMap<String, Box<dyn Any + Send + Sync>>>,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Informers {
    /// The factory for `store`, registering the pipeline's metrics (and the
    /// store's) in `metrics`. Make one per process.
    pub fn new(store: Store, metrics: &Metrics) -> Self {
        let metrics = metrics.registry_with_prefix("orca");
        store.register_metrics(&metrics);
        Self {
            store,
            metrics: Arc::new(PipelineMetrics::register(&metrics)),
            started: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// The store the caches follow.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The shared cache of every object of kind `K`.
    pub fn all<K: Cached>(&self) -> Informer<K> {
        self.informer(self.store.all::<K>())
    }

    /// The shared cache of the pods bound to `node`, and only those.
    pub fn pods_on_node(&self, node: &str) -> Informer<Pod> {
        self.informer(self.store.pods_on_node(node))
    }

    /// The shared cache of `view`: started on the first call (which must be
    /// made inside a Tokio runtime), the same cache on every later one.
    pub fn informer<K: Cached>(&self, view: View<K>) -> Informer<K> {
        let mut started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = started.get(view.prefix()) {
            // A prefix names one kind, kept in one form per process (pods
            // whole in a kubelet, compact in a master): the downcast only
            // fails on a programming error.
            return existing
                .downcast_ref::<Informer<K>>()
                .expect("one kind, in one form, per cache prefix")
                .clone();
        }
        let labels = vec![
            ("kind", K::Kind::KIND.to_string()),
            ("prefix", view.prefix().to_string()),
        ];
        let (reader, writer) = store::<K>();
        let informer = Informer {
            shared: Arc::new(Shared {
                reader,
                subscribers: Mutex::new(Vec::new()),
                metrics: Arc::clone(&self.metrics),
                labels,
            }),
        };
        let task = tokio::spawn(follow(view.clone(), writer, informer.clone()));
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(task.abort_handle());
        started.insert(view.prefix().to_string(), Box::new(informer.clone()));
        informer
    }
}

impl Drop for Informers {
    fn drop(&mut self) {
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }
}

/// A subscriber's handler: called with each change; `false` when it is
/// done listening.
type Handler<K> = Box<dyn FnMut(&Change<K>) -> bool + Send>;

struct Shared<K> {
    reader: Reader<K>,
    /// Taken while a change is applied and handed out, and while a
    /// subscriber joins, so a new subscriber sees each change exactly once:
    /// in its replay of the cache or as a change after it.
    subscribers: Mutex<Vec<Handler<K>>>,
    metrics: Arc<PipelineMetrics>,
    labels: CacheLabels,
}

/// One shared cache: its reader, and change streams for the controllers
/// that follow it. Cheap to clone.
pub struct Informer<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K: Cached> Informer<K> {
    /// The cache's read side.
    pub fn reader(&self) -> Reader<K> {
        self.shared.reader.clone()
    }

    /// Calls `handler` with each change the cache makes from now on, as it
    /// makes it (client-go's event handlers), until it returns `false`. A
    /// handler that joins a cache that has already listed is first handed
    /// every object in it as [`Change::Applied`], then [`Change::Synced`].
    /// It runs in the cache's task with the cache's subscribers locked, so
    /// it must be quick and must not subscribe to the same cache.
    pub fn on_change(&self, mut handler: impl FnMut(&Change<K>) -> bool + Send + 'static) {
        let mut subscribers = self
            .shared
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.shared.reader.has_synced() {
            for obj in self.shared.reader.list() {
                if !handler(&Change::Applied(obj)) {
                    return;
                }
            }
            if !handler(&Change::Synced) {
                return;
            }
        }
        subscribers.push(Box::new(handler));
    }

    /// The keys `map` finds for each change from now on (after a replay of
    /// the cache, as [`Informer::on_change`]), and [`Queued::Synced`] after
    /// each complete list. A key waits at most once however often it
    /// changes until it is taken (client-go's workqueue), so a reader that
    /// lags holds keys, never the objects' superseded versions. `map` runs
    /// as a handler does.
    pub fn subscribe_keys(
        &self,
        map: impl Fn(&K) -> Vec<ObjectKey> + Send + 'static,
    ) -> impl Stream<Item = Queued> + Send + 'static {
        let queue = Arc::new(KeyQueue::default());
        let listening = Arc::downgrade(&queue);
        self.on_change(move |change| {
            // The stream is gone: so is this handler.
            let Some(queue) = listening.upgrade() else {
                return false;
            };
            match change {
                Change::Applied(o) | Change::Deleted(o) => {
                    for key in map(o) {
                        queue.push(key);
                    }
                }
                Change::Synced => queue.synced(),
            }
            true
        });
        stream::unfold(queue, |queue| async move {
            let next = queue.pop().await;
            Some((next, queue))
        })
    }

    pub(crate) fn metrics(&self) -> Arc<PipelineMetrics> {
        Arc::clone(&self.shared.metrics)
    }
}

/// Drives one shared cache: watcher events into the cache, each change to
/// every subscriber still listening.
async fn follow<K: Cached>(view: View<K>, mut writer: Writer<K>, informer: Informer<K>) {
    let shared = &informer.shared;
    let metrics = &shared.metrics;
    let mut events = pin!(watcher(view));
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                metrics.cache_events.get_or_create(&shared.labels).inc();
                if matches!(event, Event::InitDone) {
                    metrics.cache_lists.get_or_create(&shared.labels).inc();
                }
                let mut subscribers = shared
                    .subscribers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                writer.apply_with(&event, |change| {
                    subscribers.retain_mut(|handler| handler(&change));
                });
                drop(subscribers);
                let objects = i64::try_from(shared.reader.len()).unwrap_or(i64::MAX);
                metrics
                    .cache_objects
                    .get_or_create(&shared.labels)
                    .set(objects);
            }
            Err(e) => {
                metrics
                    .cache_watch_errors
                    .get_or_create(&shared.labels)
                    .inc();
                tracing::warn!(kind = K::Kind::KIND, error = %e, "watch failed; retrying");
            }
        }
    }
}

/// What a key subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queued {
    /// An object of this key changed (or one related to it, as the
    /// subscription's map found).
    Key(ObjectKey),
    /// The cache completed a list.
    Synced,
}

/// The keys one subscriber has yet to take, each once, in the order they
/// first changed.
#[derive(Default)]
struct KeyQueue {
    pending: Mutex<PendingKeys>,
    wake: Notify,
}

#[derive(Default)]
struct PendingKeys {
    order: VecDeque<ObjectKey>,
    queued: HashSet<ObjectKey>,
    /// A list completed since the subscriber last looked.
    synced: bool,
}

impl KeyQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, PendingKeys> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, key: ObjectKey) {
        let mut pending = self.lock();
        if pending.queued.insert(key.clone()) {
            pending.order.push_back(key);
        }
        drop(pending);
        self.wake.notify_one();
    }

    fn synced(&self) {
        self.lock().synced = true;
        self.wake.notify_one();
    }

    /// The next key (then, once they are all taken, the news of a list),
    /// waiting for one if there is none.
    async fn pop(&self) -> Queued {
        loop {
            {
                let mut pending = self.lock();
                if let Some(key) = pending.order.pop_front() {
                    pending.queued.remove(&key);
                    return Queued::Key(key);
                }
                if std::mem::take(&mut pending.synced) {
                    return Queued::Synced;
                }
            }
            // A push between the check and here leaves a permit behind, so
            // this wait ends at once.
            self.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_waits_once_however_often_it_changes() {
        let queue = KeyQueue::default();
        let a = ObjectKey::new(Some("default"), "a");
        let b = ObjectKey::new(Some("default"), "b");
        queue.push(a.clone());
        queue.push(b.clone());
        queue.push(a.clone());
        queue.synced();
        assert_eq!(queue.pop().await, Queued::Key(a.clone()));
        // Taken, it may wait again.
        queue.push(a.clone());
        assert_eq!(queue.pop().await, Queued::Key(b));
        assert_eq!(queue.pop().await, Queued::Key(a));
        assert_eq!(queue.pop().await, Queued::Synced);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), queue.pop())
                .await
                .is_err(),
            "nothing left"
        );
    }
}
