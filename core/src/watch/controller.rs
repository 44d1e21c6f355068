//! Reconcile loops on top of the watch pipeline: each changed object's key is
//! queued once however often it changes, no key is reconciled twice at once,
//! and nothing runs before the first complete list.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use futures::stream::{BoxStream, FuturesUnordered, SelectAll};
use futures::{FutureExt, Stream, StreamExt};

use super::reflector::{ObjectKey, Reader, reflector, store};
use super::watcher::{Event, watcher};
use crate::api::Object;
use crate::store::Api;

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

/// A reconcile loop over one kind.
pub struct Controller<K: Object> {
    reader: Reader<K>,
    events: BoxStream<'static, Result<Event<K>, crate::store::Error>>,
    triggers: SelectAll<BoxStream<'static, ObjectKey>>,
    concurrency: usize,
}

impl<K: Object> Controller<K> {
    /// A controller over every object `api` sees.
    pub fn new(api: Api<K>) -> Self {
        let (reader, writer) = store();
        Self {
            reader,
            events: reflector(writer, watcher(api)).boxed(),
            triggers: SelectAll::new(),
            concurrency: 4,
        }
    }

    /// The cache this controller fills; reconcilers read objects from it.
    pub fn reader(&self) -> Reader<K> {
        self.reader.clone()
    }

    /// Also reconciles the keys `keys` yields (e.g. the owner of a changed
    /// pod, mapped from a second watch).
    pub fn trigger(mut self, keys: impl Stream<Item = ObjectKey> + Send + 'static) -> Self {
        self.triggers.push(keys.boxed());
        self
    }

    /// How many different keys may be reconciled at once (default 4).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
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
            reader,
            mut events,
            mut triggers,
            concurrency,
        } = self;
        let mut shutdown = pin!(shutdown.fuse());
        let mut queue = Queue::default();
        let mut running = FuturesUnordered::new();
        let mut timers = FuturesUnordered::new();
        let mut failures: HashMap<ObjectKey, Duration> = HashMap::new();
        loop {
            while running.len() < concurrency {
                let Some(key) = queue.next_idle() else { break };
                let work = reconcile(key.clone());
                let span = tracing::debug_span!("reconcile", kind = K::KIND, object = %key);
                running
                    .push(async move { (key, tracing::Instrument::instrument(work, span).await) });
            }
            tokio::select! {
                () = &mut shutdown => break,
                Some(event) = events.next() => match event {
                    Ok(Event::InitDone) => queue.extend(reader.keys()),
                    Ok(Event::Apply(o) | Event::Delete(o)) if reader.has_synced() => {
                        queue.push(ObjectKey::of(&o));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(kind = K::KIND, error = %e, "watch failed; retrying"),
                },
                Some(key) = triggers.next(), if !triggers.is_empty() => {
                    if reader.has_synced() {
                        queue.push(key);
                    }
                }
                Some(key) = timers.next() => queue.push(key),
                Some((key, result)) = running.next() => {
                    queue.finish(&key);
                    let delay = match result {
                        Ok(Action::Requeue(d)) => { failures.remove(&key); Some(d) }
                        Ok(Action::AwaitChange) => { failures.remove(&key); None }
                        Err(e) => {
                            let d = failures.get(&key).map_or(FIRST_ERROR_BACKOFF, |d| (*d * 2).min(MAX_ERROR_BACKOFF));
                            failures.insert(key.clone(), d);
                            tracing::warn!(kind = K::KIND, object = %key, error = %e, retry_in = ?d, "reconcile failed");
                            Some(d)
                        }
                    };
                    if let Some(d) = delay {
                        timers.push(tokio::time::sleep(d).map(move |()| key));
                    }
                }
            }
        }
        // Let reconciles already started finish rather than cut them mid-write.
        while running.next().await.is_some() {}
    }
}

/// Pending keys, deduplicated, and the keys being reconciled now.
#[derive(Default)]
struct Queue {
    order: std::collections::VecDeque<ObjectKey>,
    pending: HashSet<ObjectKey>,
    busy: HashSet<ObjectKey>,
}

impl Queue {
    fn push(&mut self, key: ObjectKey) {
        if self.pending.insert(key.clone()) {
            self.order.push_back(key);
        }
    }

    fn extend(&mut self, keys: impl IntoIterator<Item = ObjectKey>) {
        for key in keys {
            self.push(key);
        }
    }

    /// The first pending key not being reconciled right now; a busy key stays
    /// queued and runs again once its current reconcile finishes.
    fn next_idle(&mut self) -> Option<ObjectKey> {
        let pos = self.order.iter().position(|k| !self.busy.contains(k))?;
        let key = self.order.remove(pos)?;
        self.pending.remove(&key);
        self.busy.insert(key.clone());
        Some(key)
    }

    fn finish(&mut self, key: &ObjectKey) {
        self.busy.remove(key);
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
}
