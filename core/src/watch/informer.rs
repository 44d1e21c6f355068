//! Shared caches (client-go's shared informers): one list+watch and one
//! cache per kind and scope in a process, however many control loops read
//! them. [`Informers`] is the process's factory; an [`Informer`] hands out
//! its cache's [`Reader`] and streams of the [`Change`]s it makes.

use std::any::Any;
use std::collections::HashMap;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};

use futures::{Stream, StreamExt, stream};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Unit;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::reflector::{Change, Reader, Writer, store};
use super::watcher::{Event, watcher};
use crate::api::{Object, Pod};
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
    pub fn all<K: Object>(&self) -> Informer<K> {
        self.informer(self.store.all::<K>())
    }

    /// The shared cache of the pods bound to `node`, and only those.
    pub fn pods_on_node(&self, node: &str) -> Informer<Pod> {
        self.informer(self.store.pods_on_node(node))
    }

    /// The shared cache of `view`: started on the first call (which must be
    /// made inside a Tokio runtime), the same cache on every later one.
    pub fn informer<K: Object>(&self, view: View<K>) -> Informer<K> {
        let mut started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = started.get(view.prefix()) {
            // A prefix names one kind, so the downcast only fails on a
            // programming error.
            return existing
                .downcast_ref::<Informer<K>>()
                .expect("one kind per cache prefix")
                .clone();
        }
        let labels = vec![
            ("kind", K::KIND.to_string()),
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

struct Shared<K> {
    reader: Reader<K>,
    /// Taken while a change is applied and sent, and while a subscriber
    /// joins, so a new subscriber sees each change exactly once: in its
    /// replay of the cache or as a change after it.
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Change<K>>>>,
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

impl<K: Object> Informer<K> {
    /// The cache's read side.
    pub fn reader(&self) -> Reader<K> {
        self.shared.reader.clone()
    }

    /// A stream of the cache's changes from now on. A subscriber that joins
    /// a cache that has already listed first gets every object in it as
    /// [`Change::Applied`], then [`Change::Synced`].
    pub fn subscribe(&self) -> impl Stream<Item = Change<K>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut subscribers = self
            .shared
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.shared.reader.has_synced() {
            for obj in self.shared.reader.list() {
                let _ = tx.send(Change::Applied(obj));
            }
            let _ = tx.send(Change::Synced);
        }
        subscribers.push(tx);
        stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
    }

    pub(crate) fn metrics(&self) -> Arc<PipelineMetrics> {
        Arc::clone(&self.shared.metrics)
    }
}

/// Drives one shared cache: watcher events into the cache, each change to
/// every subscriber still listening.
async fn follow<K: Object>(view: View<K>, mut writer: Writer<K>, informer: Informer<K>) {
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
                    subscribers.retain(|tx| tx.send(change.clone()).is_ok());
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
                tracing::warn!(kind = K::KIND, error = %e, "watch failed; retrying");
            }
        }
    }
}
