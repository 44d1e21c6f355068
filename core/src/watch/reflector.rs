//! The in-memory cache every component reads: a [`Writer`] applies watcher
//! events, [`Reader`]s see either the previous complete list or the new one,
//! never half of a re-list.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use tokio::sync::watch;

use super::watcher::Event;
use crate::api::Object;
use crate::store::Error;

/// Identifies an object within its kind: namespace (for namespaced kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The namespace, `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// The key of `obj`.
    pub fn of<K: Object>(obj: &K) -> Self {
        let meta = obj.metadata();
        Self {
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    /// A key from its parts.
    pub fn new(namespace: Option<&str>, name: &str) -> Self {
        Self {
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

type Map<K> = HashMap<ObjectKey, Arc<K>>;

/// Read side of the cache; cheap to clone.
pub struct Reader<K> {
    objects: Arc<RwLock<Map<K>>>,
    synced: watch::Receiver<bool>,
}

impl<K> Clone for Reader<K> {
    fn clone(&self) -> Self {
        Self {
            objects: self.objects.clone(),
            synced: self.synced.clone(),
        }
    }
}

impl<K: Object> Reader<K> {
    /// One object, if known.
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.read().get(key).cloned()
    }

    /// Every known object, in no particular order.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.read().values().cloned().collect()
    }

    /// Every known key.
    pub fn keys(&self) -> Vec<ObjectKey> {
        self.read().keys().cloned().collect()
    }

    /// Number of known objects.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no object is known.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Whether the first complete list has arrived.
    pub fn has_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until the first complete list has arrived.
    pub async fn wait_until_synced(&self) {
        let mut synced = self.synced.clone();
        // The writer lives as long as the pipeline; if it is gone the cache
        // will never sync, and waiting forever is the honest answer.
        if synced.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Map<K>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (each write is one insert, remove or swap), so poison is ignored.
        self.objects.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Write side of the cache: owned by the one task that applies events.
pub struct Writer<K> {
    objects: Arc<RwLock<Map<K>>>,
    synced: watch::Sender<bool>,
    buffer: Option<Map<K>>,
}

impl<K: Object> Writer<K> {
    /// Applies one watcher event.
    pub fn apply(&mut self, event: &Event<K>) {
        match event {
            Event::Init => self.buffer = Some(Map::new()),
            Event::InitApply(obj) => {
                if let Some(buffer) = &mut self.buffer {
                    buffer.insert(ObjectKey::of(obj), Arc::new(obj.clone()));
                }
            }
            Event::InitDone => {
                if let Some(buffer) = self.buffer.take() {
                    *self.write() = buffer;
                }
                self.synced.send_replace(true);
            }
            Event::Apply(obj) => {
                self.write()
                    .insert(ObjectKey::of(obj), Arc::new(obj.clone()));
            }
            Event::Delete(obj) => {
                self.write().remove(&ObjectKey::of(obj));
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Map<K>> {
        self.objects.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A new empty cache: the reader to share, the writer to feed.
pub fn store<K: Object>() -> (Reader<K>, Writer<K>) {
    let objects = Arc::new(RwLock::new(Map::new()));
    let (synced_tx, synced_rx) = watch::channel(false);
    (
        Reader {
            objects: objects.clone(),
            synced: synced_rx,
        },
        Writer {
            objects,
            synced: synced_tx,
            buffer: None,
        },
    )
}

/// Applies every event of `events` to `writer`, then passes it on.
pub fn reflector<K: Object>(
    mut writer: Writer<K>,
    events: impl Stream<Item = Result<Event<K>, Error>> + Send,
) -> impl Stream<Item = Result<Event<K>, Error>> + Send {
    events.map(move |event| {
        if let Ok(event) = &event {
            writer.apply(event);
        }
        event
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ConfigMap;

    fn cm(name: &str, value: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.into());
        c.metadata.namespace = Some("default".into());
        c.data = Some([("v".to_string(), value.to_string())].into());
        c
    }

    #[test]
    fn a_relist_is_invisible_until_complete() {
        let (reader, mut writer) = store::<ConfigMap>();
        assert!(!reader.has_synced());
        for e in [
            Event::Init,
            Event::InitApply(cm("a", "1")),
            Event::InitApply(cm("b", "1")),
            Event::InitDone,
        ] {
            writer.apply(&e);
        }
        assert!(reader.has_synced());
        assert_eq!(reader.len(), 2);

        // A re-list in progress: readers still see the old, complete list.
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(cm("a", "2")));
        assert_eq!(reader.len(), 2);
        let a = reader
            .get(&ObjectKey::new(Some("default"), "a"))
            .expect("a");
        assert_eq!(a.data.as_ref().unwrap()["v"], "1");

        writer.apply(&Event::InitDone);
        assert_eq!(reader.len(), 1, "b vanished during the gap");
        let a = reader
            .get(&ObjectKey::new(Some("default"), "a"))
            .expect("a");
        assert_eq!(a.data.as_ref().unwrap()["v"], "2");
    }

    #[test]
    fn apply_and_delete() {
        let (reader, mut writer) = store::<ConfigMap>();
        writer.apply(&Event::Init);
        writer.apply(&Event::InitDone);
        writer.apply(&Event::Apply(cm("x", "1")));
        assert_eq!(reader.keys(), [ObjectKey::new(Some("default"), "x")]);
        writer.apply(&Event::Delete(cm("x", "1")));
        assert!(reader.is_empty());
        assert_eq!(ObjectKey::new(Some("ns"), "n").to_string(), "ns/n");
    }
}
