//! Reconcile loops on shared caches: each changed object's key is queued
//! once however often it changes, no key is reconciled twice at once, the
//! objects a controller owns (or any related ones) requeue their owner, and
//! nothing runs before every cache the controller reads has listed.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::Display;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, FuturesUnordered, SelectAll};
use futures::{FutureExt, Stream, StreamExt, stream};
use k8s_openapi::Resource;
use tokio::time::Instant;

use super::informer::{Informer, PipelineMetrics, Queued};
use super::reflector::{ObjectKey, Reader};
use crate::api::{Cached, Object};
use crate::store::jittered;

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reconcile this key again after the delay, even if nothing changes.
    Requeue(Duration),
    /// Reconcile again only when the object (or a trigger) changes.
    AwaitChange,
}

/// Delay before retrying a failed reconcile; doubled per failure up to
/// [`MAX_ERROR_BACKOFF`], reset on success.
const FIRST_ERROR_BACKOFF: Duration = Duration::from_millis(200);
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(60);

/// Something that asks for a reconcile: a key, or a cache that just listed
/// (which may make the controller ready).
enum Trigger {
    Key(ObjectKey),
    Synced,
}

impl From<Queued> for Trigger {
    fn from(queued: Queued) -> Self {
        match queued {
            Queued::Key(key) => Trigger::Key(key),
            Queued::Synced => Trigger::Synced,
        }
    }
}

/// A reconcile loop over one kind, fed by shared caches.
pub struct Controller<K: Cached> {
    name: String,
    reader: Reader<K>,
    triggers: SelectAll<BoxStream<'static, Trigger>>,
    /// Whether each cache the controller reads has listed once.
    caches: Vec<Box<dyn Fn() -> bool + Send + Sync>>,
    concurrency: usize,
    first_backoff: Duration,
    max_backoff: Duration,
    metrics: Arc<PipelineMetrics>,
}

fn synced_check<O: Cached>(reader: Reader<O>) -> Box<dyn Fn() -> bool + Send + Sync> {
    Box::new(move || reader.has_synced())
}

impl<K: Cached> Controller<K> {
    /// A controller over every object of `informer`'s cache.
    pub fn new(informer: &Informer<K>) -> Self {
        let primary = informer
            .subscribe_keys(|o| vec![ObjectKey::of(o)])
            .map(Trigger::from);
        let mut triggers = SelectAll::new();
        triggers.push(primary.boxed());
        Self {
            name: K::Kind::KIND.to_ascii_lowercase(),
            reader: informer.reader(),
            triggers,
            caches: vec![synced_check(informer.reader())],
            concurrency: 4,
            first_backoff: FIRST_ERROR_BACKOFF,
            max_backoff: MAX_ERROR_BACKOFF,
            metrics: informer.metrics(),
        }
    }

    /// The primary cache; reconcilers read objects from it.
    pub fn reader(&self) -> Reader<K> {
        self.reader.clone()
    }

    /// The name the controller's metrics and logs carry (default: the kind,
    /// lower-case).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Waits for `informer`'s cache to list before reconciling anything,
    /// without being triggered by its changes.
    pub fn reads<O: Cached>(mut self, informer: &Informer<O>) -> Self {
        let reader = informer.reader();
        self.caches.push(synced_check(reader.clone()));
        let synced = async move { reader.wait_until_synced().await };
        self.triggers
            .push(stream::once(synced).map(|()| Trigger::Synced).boxed());
        self
    }

    /// Reconciles the owner of each changed object of `children` (through
    /// its `ownerReferences` naming a `K`), and waits for that cache too:
    /// a pod's change requeues its ReplicaSet.
    pub fn owns<C: Cached>(self, children: &Informer<C>) -> Self {
        self.watches(children, |child: &C| {
            let namespace = child.namespace().filter(|_| K::Kind::namespaced());
            child
                .owner_references()
                .iter()
                .filter(|r| r.kind == K::Kind::KIND && r.api_version == K::Kind::API_VERSION)
                .map(|r| ObjectKey::new(namespace, &r.name))
                .collect()
        })
    }

    /// Reconciles the keys `map` finds for each changed object of
    /// `related` (any relation but ownership), and waits for that cache too.
    pub fn watches<O: Cached>(
        mut self,
        related: &Informer<O>,
        map: impl Fn(&O) -> Vec<ObjectKey> + Send + Sync + 'static,
    ) -> Self {
        self.caches.push(synced_check(related.reader()));
        let keys = related.subscribe_keys(map).map(Trigger::from);
        self.triggers.push(keys.boxed());
        self
    }

    /// Also reconciles the keys `keys` yields (a timer, a signal from
    /// outside the caches).
    pub fn trigger(mut self, keys: impl Stream<Item = ObjectKey> + Send + 'static) -> Self {
        self.triggers.push(keys.map(Trigger::Key).boxed());
        self
    }

    /// How many different keys may be reconciled at once (default 4).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The delay after a key's first failed reconcile and the most it grows
    /// to, doubling per failure (default 200 ms and 60 s); jittered by up
    /// to half again.
    pub fn error_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.first_backoff = first;
        self.max_backoff = max.max(first);
        self
    }

    /// Runs until `shutdown` resolves. `reconcile` gets the key; it reads the
    /// object from [`Controller::reader`] (absent = deleted).
    pub async fn run<F, Fut, E>(self, reconcile: F, shutdown: impl Future<Output = ()>)
    where
        F: Fn(ObjectKey) -> Fut,
        Fut: Future<Output = Result<Action, E>>,
        E: Display,
    {
        let Self {
            name,
            mut triggers,
            caches,
            concurrency,
            first_backoff,
            max_backoff,
            metrics,
            ..
        } = self;
        let labels = vec![("controller", name.clone())];
        let depth = metrics.queue_depth.get_or_create(&labels).clone();
        let reconciles = metrics.reconciles.get_or_create(&labels).clone();
        let errors = metrics.reconcile_errors.get_or_create(&labels).clone();
        let duration = metrics.reconcile_duration.get_or_create(&labels).clone();
        let mut shutdown = pin!(shutdown.fuse());
        let mut queue = Queue::default();
        let mut running = FuturesUnordered::new();
        let mut failures: HashMap<ObjectKey, Duration> = HashMap::new();
        let mut ready = false;
        loop {
            // Nothing runs against a cache that has not listed: a
            // ReplicaSet reconciled against an empty pod cache would
            // create its pods twice.
            ready = ready || caches.iter().all(|synced| synced());
            while ready && running.len() < concurrency {
                let Some(key) = queue.next_idle() else { break };
                let work = reconcile(key.clone());
                let span = tracing::debug_span!("reconcile", controller = %name, object = %key);
                running.push(async move {
                    let started = Instant::now();
                    let result = tracing::Instrument::instrument(work, span).await;
                    (key, result, started.elapsed())
                });
            }
            depth.set(i64::try_from(queue.depth()).unwrap_or(i64::MAX));
            let due = queue.next_due();
            tokio::select! {
                () = &mut shutdown => break,
                Some(trigger) = triggers.next() => {
                    if let Trigger::Key(key) = trigger {
                        queue.push(key);
                    }
                }
                () = sleep_until(due), if due.is_some() => queue.promote(Instant::now()),
                Some((key, result, took)) = running.next() => {
                    queue.finish(&key);
                    reconciles.inc();
                    duration.observe(took.as_secs_f64());
                    match result {
                        Ok(Action::Requeue(d)) => {
                            failures.remove(&key);
                            queue.push_after(key, Instant::now() + d);
                        }
                        Ok(Action::AwaitChange) => {
                            failures.remove(&key);
                        }
                        Err(e) => {
                            errors.inc();
                            let d = failures
                                .get(&key)
                                .map_or(first_backoff, |d| (*d * 2).min(max_backoff));
                            failures.insert(key.clone(), d);
                            let wait = jittered(d);
                            tracing::warn!(controller = %name, object = %key, error = %e, retry_in = ?wait, "reconcile failed");
                            queue.push_after(key, Instant::now() + wait);
                        }
                    }
                }
            }
        }
        // Let reconciles already started finish rather than cut them mid-write.
        while running.next().await.is_some() {}
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Keys due now (deduplicated), keys due later (one entry per key, the
/// earliest wins), and the keys being reconciled now.
#[derive(Default)]
struct Queue {
    ready: VecDeque<ObjectKey>,
    pending: HashSet<ObjectKey>,
    delayed: HashMap<ObjectKey, Instant>,
    timeline: BTreeSet<(Instant, ObjectKey)>,
    busy: HashSet<ObjectKey>,
}

impl Queue {
    /// Queues `key` now; a later entry for it is dropped.
    fn push(&mut self, key: ObjectKey) {
        if let Some(at) = self.delayed.remove(&key) {
            self.timeline.remove(&(at, key.clone()));
        }
        if self.pending.insert(key.clone()) {
            self.ready.push_back(key);
        }
    }

    /// Queues `key` for `at`, unless it is already due then or sooner.
    fn push_after(&mut self, key: ObjectKey, at: Instant) {
        if self.pending.contains(&key) || self.delayed.get(&key).is_some_and(|t| *t <= at) {
            return;
        }
        if let Some(old) = self.delayed.insert(key.clone(), at) {
            self.timeline.remove(&(old, key.clone()));
        }
        self.timeline.insert((at, key));
    }

    /// When the next delayed key falls due.
    fn next_due(&self) -> Option<Instant> {
        self.timeline.first().map(|(at, _)| *at)
    }

    /// Moves every delayed key due by `now` to the keys due now.
    fn promote(&mut self, now: Instant) {
        while let Some((at, _)) = self.timeline.first()
            && *at <= now
        {
            let (_, key) = self.timeline.pop_first().expect("checked above");
            self.delayed.remove(&key);
            if self.pending.insert(key.clone()) {
                self.ready.push_back(key);
            }
        }
    }

    /// The first key due now that is not being reconciled right now; a busy
    /// key stays queued and runs again once its current reconcile finishes.
    fn next_idle(&mut self) -> Option<ObjectKey> {
        let pos = self.ready.iter().position(|k| !self.busy.contains(k))?;
        let key = self.ready.remove(pos)?;
        self.pending.remove(&key);
        self.busy.insert(key.clone());
        Some(key)
    }

    fn finish(&mut self, key: &ObjectKey) {
        self.busy.remove(key);
    }

    /// Keys waiting, now or later.
    fn depth(&self) -> usize {
        self.pending.len() + self.delayed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_dedupes_and_never_runs_a_key_twice() {
        let mut q = Queue::default();
        let a = ObjectKey::new(None, "a");
        let b = ObjectKey::new(None, "b");
        q.push(a.clone());
        q.push(a.clone());
        q.push(b.clone());
        assert_eq!(q.next_idle(), Some(a.clone()));
        q.push(a.clone());
        // `a` is busy: `b` runs, the second `a` waits.
        assert_eq!(q.next_idle(), Some(b.clone()));
        assert_eq!(q.next_idle(), None);
        q.finish(&a);
        assert_eq!(q.next_idle(), Some(a));
        assert_eq!(q.next_idle(), None);
    }

    #[test]
    fn one_delayed_entry_per_key_and_the_earliest_wins() {
        let mut q = Queue::default();
        let a = ObjectKey::new(None, "a");
        let now = Instant::now();
        let s = Duration::from_secs(1);
        q.push_after(a.clone(), now + 10 * s);
        q.push_after(a.clone(), now + 5 * s);
        q.push_after(a.clone(), now + 20 * s);
        assert_eq!(q.depth(), 1);
        assert_eq!(q.next_due(), Some(now + 5 * s));
        q.promote(now + 4 * s);
        assert_eq!(q.next_idle(), None);
        q.promote(now + 5 * s);
        assert_eq!(q.next_idle(), Some(a.clone()));
        q.finish(&a);
        assert_eq!(q.depth(), 0);

        // A change now beats a retry later, and leaves no later entry.
        q.push_after(a.clone(), now + 10 * s);
        q.push(a.clone());
        assert_eq!(q.depth(), 1);
        assert_eq!(q.next_due(), None);
        // Due now already: a later request adds nothing.
        q.push_after(a.clone(), now + s);
        assert_eq!(q.depth(), 1);
    }
}
