//! The in-memory cache every component reads: a [`Writer`] applies watcher
//! events, [`Reader`]s see either the previous complete list or the new one,
//! never half of a re-list. The cache keeps indexes by namespace, by owner
//! uid and (for pods) by node, and reports each change it makes, re-lists
//! included: an object gone while the watch was down is reported deleted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use tokio::sync::watch;

use super::watcher::Event;
use crate::api::{Cached, selector_matches};
use crate::store::{Error, revision_of};

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
    pub fn of<K: Cached>(obj: &K) -> Self {
        Self {
            namespace: obj.namespace().map(str::to_string),
            name: obj.name().unwrap_or_default().to_string(),
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

/// One change the cache made, as its subscribers see it.
#[derive(Debug)]
pub enum Change<K> {
    /// An object was added or changed: by the watch, or found new or
    /// different by a re-list.
    Applied(Arc<K>),
    /// An object was deleted: by the watch, or missing from a re-list.
    /// This is the last state the cache knew.
    Deleted(Arc<K>),
    /// A complete list is in the cache (after the first list and after
    /// every re-list).
    Synced,
}

impl<K> Clone for Change<K> {
    fn clone(&self) -> Self {
        match self {
            Change::Applied(o) => Change::Applied(Arc::clone(o)),
            Change::Deleted(o) => Change::Deleted(Arc::clone(o)),
            Change::Synced => Change::Synced,
        }
    }
}

type Index = HashMap<String, HashSet<ObjectKey>>;

/// The objects and their indexes; replaced whole when a re-list completes.
struct Cache<K> {
    objects: HashMap<ObjectKey, Arc<K>>,
    /// The highest resourceVersion the cache has applied.
    revision: i64,
    by_namespace: Index,
    by_owner: Index,
    by_node: Index,
}

impl<K> Default for Cache<K> {
    fn default() -> Self {
        Self {
            objects: HashMap::new(),
            revision: 0,
            by_namespace: Index::new(),
            by_owner: Index::new(),
            by_node: Index::new(),
        }
    }
}

fn index_add(index: &mut Index, value: &str, key: &ObjectKey) {
    index
        .entry(value.to_string())
        .or_default()
        .insert(key.clone());
}

fn index_remove(index: &mut Index, value: &str, key: &ObjectKey) {
    if let Some(keys) = index.get_mut(value) {
        keys.remove(key);
        if keys.is_empty() {
            index.remove(value);
        }
    }
}

impl<K: Cached> Cache<K> {
    fn from_objects(objects: HashMap<ObjectKey, Arc<K>>) -> Self {
        let mut cache = Self::default();
        for (key, obj) in &objects {
            cache.index(key, obj, index_add);
            cache.revision = cache.revision.max(revision_of(&**obj));
        }
        cache.objects = objects;
        cache
    }

    /// Adds (or removes) `key`'s entries in every index, as `obj` names them.
    fn index(&mut self, key: &ObjectKey, obj: &K, op: fn(&mut Index, &str, &ObjectKey)) {
        if let Some(ns) = obj.namespace() {
            op(&mut self.by_namespace, ns, key);
        }
        for owner in obj.owner_references() {
            op(&mut self.by_owner, &owner.uid, key);
        }
        if let Some(node) = obj.node() {
            op(&mut self.by_node, node, key);
        }
    }

    fn insert(&mut self, key: ObjectKey, obj: Arc<K>) -> Option<Arc<K>> {
        let old = self.remove(&key);
        self.index(&key, &obj, index_add);
        self.objects.insert(key, obj);
        old
    }

    fn remove(&mut self, key: &ObjectKey) -> Option<Arc<K>> {
        let old = self.objects.remove(key)?;
        self.index(key, &old, index_remove);
        Some(old)
    }

    fn lookup(&self, index: &Index, value: &str) -> Vec<Arc<K>> {
        index
            .get(value)
            .into_iter()
            .flatten()
            .filter_map(|k| self.objects.get(k).cloned())
            .collect()
    }
}

/// Read side of the cache; cheap to clone.
pub struct Reader<K> {
    cache: Arc<RwLock<Cache<K>>>,
    synced: watch::Receiver<bool>,
}

impl<K> Clone for Reader<K> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            synced: self.synced.clone(),
        }
    }
}

impl<K: Cached> Reader<K> {
    /// One object, if known.
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.read().objects.get(key).cloned()
    }

    /// Every known object, in no particular order.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.read().objects.values().cloned().collect()
    }

    /// Every known key.
    pub fn keys(&self) -> Vec<ObjectKey> {
        self.read().objects.keys().cloned().collect()
    }

    /// The objects of one namespace.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let cache = self.read();
        cache.lookup(&cache.by_namespace, namespace)
    }

    /// The objects one of whose `ownerReferences` names `uid`.
    pub fn owned_by(&self, uid: &str) -> Vec<Arc<K>> {
        let cache = self.read();
        cache.lookup(&cache.by_owner, uid)
    }

    /// The pods whose `spec.nodeName` is `node` (nothing for other kinds).
    pub fn on_node(&self, node: &str) -> Vec<Arc<K>> {
        let cache = self.read();
        cache.lookup(&cache.by_node, node)
    }

    /// The objects of `namespace` whose labels `selector` matches.
    pub fn selected(&self, namespace: &str, selector: &LabelSelector) -> Vec<Arc<K>> {
        let empty = BTreeMap::new();
        self.in_namespace(namespace)
            .into_iter()
            .filter(|o| selector_matches(selector, o.labels().unwrap_or(&empty)))
            .collect()
    }

    /// The highest resourceVersion the cache has applied (an object's, or a
    /// deletion's): a write made at or below it is in the cache.
    pub fn revision(&self) -> i64 {
        self.read().revision
    }

    /// Number of known objects.
    pub fn len(&self) -> usize {
        self.read().objects.len()
    }

    /// Whether no object is known.
    pub fn is_empty(&self) -> bool {
        self.read().objects.is_empty()
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

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache<K>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (each write is one insert, remove or swap), so poison is ignored.
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Write side of the cache: owned by the one task that applies events.
pub struct Writer<K> {
    cache: Arc<RwLock<Cache<K>>>,
    synced: watch::Sender<bool>,
    buffer: Option<HashMap<ObjectKey, Arc<K>>>,
}

fn same_version<K: Cached>(a: &K, b: &K) -> bool {
    a.resource_version() == b.resource_version()
}

impl<K: Cached> Writer<K> {
    /// Applies one watcher event.
    pub fn apply(&mut self, event: &Event<K>) {
        self.apply_with(event, |_| {});
    }

    /// Applies one watcher event and hands each change it makes to
    /// `changed`. A completed re-list is compared with what the cache held:
    /// objects missing from it are reported deleted, new or changed ones
    /// applied, then [`Change::Synced`].
    pub fn apply_with(&mut self, event: &Event<K>, mut changed: impl FnMut(Change<K>)) {
        match event {
            Event::Init => self.buffer = Some(HashMap::new()),
            Event::InitApply(obj) => {
                if let Some(buffer) = &mut self.buffer {
                    buffer.insert(ObjectKey::of(obj), Arc::new(obj.clone()));
                }
            }
            Event::InitDone => {
                if let Some(buffer) = self.buffer.take() {
                    let mut new = Cache::from_objects(buffer);
                    let mut cache = self.write();
                    new.revision = new.revision.max(cache.revision);
                    let old = std::mem::replace(&mut *cache, new);
                    drop(cache);
                    let cache = self.read();
                    for (key, obj) in &old.objects {
                        if !cache.objects.contains_key(key) {
                            changed(Change::Deleted(Arc::clone(obj)));
                        }
                    }
                    for (key, obj) in &cache.objects {
                        if old
                            .objects
                            .get(key)
                            .is_none_or(|o| !same_version(&**o, &**obj))
                        {
                            changed(Change::Applied(Arc::clone(obj)));
                        }
                    }
                }
                self.synced.send_replace(true);
                changed(Change::Synced);
            }
            Event::Apply(obj) => {
                let obj = Arc::new(obj.clone());
                let mut cache = self.write();
                cache.revision = cache.revision.max(revision_of(&*obj));
                cache.insert(ObjectKey::of(&*obj), Arc::clone(&obj));
                drop(cache);
                changed(Change::Applied(obj));
            }
            Event::Delete(obj) => {
                let mut cache = self.write();
                // A deletion carries the revision it happened at.
                cache.revision = cache.revision.max(revision_of(obj));
                let last = cache
                    .remove(&ObjectKey::of(obj))
                    .unwrap_or_else(|| Arc::new(obj.clone()));
                drop(cache);
                changed(Change::Deleted(last));
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Cache<K>> {
        self.cache.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache<K>> {
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// A new empty cache: the reader to share, the writer to feed.
pub fn store<K: Cached>() -> (Reader<K>, Writer<K>) {
    let cache = Arc::new(RwLock::new(Cache::default()));
    let (synced_tx, synced_rx) = watch::channel(false);
    (
        Reader {
            cache: cache.clone(),
            synced: synced_rx,
        },
        Writer {
            cache,
            synced: synced_tx,
            buffer: None,
        },
    )
}

/// Applies every event of `events` to `writer`, then passes it on.
pub fn reflector<K: Cached>(
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
    use crate::api::{ConfigMap, Pod};
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn cm(name: &str, value: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.into());
        c.metadata.namespace = Some("default".into());
        c.metadata.resource_version = Some(value.into());
        c.data = Some([("v".to_string(), value.to_string())].into());
        c
    }

    fn changes(writer: &mut Writer<ConfigMap>, events: Vec<Event<ConfigMap>>) -> Vec<String> {
        let mut seen = Vec::new();
        for e in events {
            writer.apply_with(&e, |c| {
                seen.push(match c {
                    Change::Applied(o) => format!("+{}", o.metadata.name.as_deref().unwrap()),
                    Change::Deleted(o) => format!("-{}", o.metadata.name.as_deref().unwrap()),
                    Change::Synced => "synced".into(),
                });
            });
        }
        seen.sort();
        seen
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
    fn a_relist_reports_what_it_changed() {
        let (_reader, mut writer) = store::<ConfigMap>();
        let first = changes(
            &mut writer,
            vec![
                Event::Init,
                Event::InitApply(cm("a", "1")),
                Event::InitApply(cm("b", "1")),
                Event::InitApply(cm("c", "1")),
                Event::InitDone,
            ],
        );
        assert_eq!(first, ["+a", "+b", "+c", "synced"]);
        // While the watch was down: b deleted, c changed, d created.
        let relist = changes(
            &mut writer,
            vec![
                Event::Init,
                Event::InitApply(cm("a", "1")),
                Event::InitApply(cm("c", "2")),
                Event::InitApply(cm("d", "1")),
                Event::InitDone,
            ],
        );
        assert_eq!(relist, ["+c", "+d", "-b", "synced"]);
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

    fn pod(name: &str, ns: &str, node: Option<&str>, owner: Option<&str>, app: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some(ns.into());
        p.metadata.labels = Some([("app".to_string(), app.to_string())].into());
        p.metadata.owner_references = owner.map(|uid| {
            vec![OwnerReference {
                uid: uid.into(),
                ..OwnerReference::default()
            }]
        });
        p.spec = Some(PodSpec {
            node_name: node.map(String::from),
            ..PodSpec::default()
        });
        p
    }

    fn names(pods: Vec<Arc<Pod>>) -> Vec<String> {
        let mut n: Vec<_> = pods
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn indexes_follow_every_change() {
        let (reader, mut writer) = store::<Pod>();
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(pod(
            "a",
            "x",
            Some("n1"),
            Some("rs1"),
            "web",
        )));
        writer.apply(&Event::InitApply(pod("b", "x", None, Some("rs1"), "db")));
        writer.apply(&Event::InitDone);
        writer.apply(&Event::Apply(pod("c", "y", Some("n1"), None, "web")));
        assert_eq!(names(reader.in_namespace("x")), ["a", "b"]);
        assert_eq!(names(reader.owned_by("rs1")), ["a", "b"]);
        assert_eq!(names(reader.on_node("n1")), ["a", "c"]);
        let web = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            ..LabelSelector::default()
        };
        assert_eq!(names(reader.selected("x", &web)), ["a"]);

        // b is bound and loses its owner; a is deleted.
        writer.apply(&Event::Apply(pod("b", "x", Some("n2"), None, "db")));
        writer.apply(&Event::Delete(pod(
            "a",
            "x",
            Some("n1"),
            Some("rs1"),
            "web",
        )));
        assert!(reader.owned_by("rs1").is_empty());
        assert_eq!(names(reader.on_node("n1")), ["c"]);
        assert_eq!(names(reader.on_node("n2")), ["b"]);
        assert_eq!(names(reader.in_namespace("x")), ["b"]);
    }
}
