//! The one etcd client every component uses: typed create / get / list /
//! update / update_status / delete / watch over `etcd-client`.
//!
//! Objects live at `/registry/{plural}/{namespace}/{name}` (cluster-scoped:
//! `/registry/{plural}/{name}`) as JSON. `metadata.resourceVersion` is the
//! key's etcd `mod_revision` and is never stored; every write is a
//! transaction guarded by it, so a stale writer gets a conflict instead of
//! overwriting someone else's change.

use std::marker::PhantomData;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};
use futures::stream::BoxStream;
use futures::{StreamExt, stream};
use serde_json::{Map, Value};

use crate::api::{Kind, Namespace, Object, kind_of};
use crate::validation::{FieldError, Invalid};

/// Namespace objects land in when a manifest names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Root of every key Orca writes.
const ROOT: &str = "/registry";

/// Objects fetched per etcd range request while listing.
const LIST_PAGE: i64 = 500;

/// Errors of the store, named for what the caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// etcd could not be reached or did not answer in time.
    #[error("cannot reach etcd at {endpoint}: {message}")]
    Unavailable {
        /// The endpoint that was tried.
        endpoint: String,
        /// The underlying cause, in one line.
        message: String,
    },
    /// The object does not exist.
    #[error("{plural} {name:?} not found")]
    NotFound {
        /// Lower-case plural of the kind.
        plural: String,
        /// Object name.
        name: String,
    },
    /// An object of that name already exists.
    #[error("{plural} {name:?} already exists")]
    AlreadyExists {
        /// Lower-case plural of the kind.
        plural: String,
        /// Object name.
        name: String,
    },
    /// The object changed since it was read; re-read and try again.
    #[error(
        "Operation cannot be fulfilled on {plural} {name:?}: the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict {
        /// Lower-case plural of the kind.
        plural: String,
        /// Object name.
        name: String,
    },
    /// The object failed validation; nothing was written.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The write was made under a leadership this process no longer holds.
    #[error("not the leader any more (lease key {key}); the write was refused")]
    NotLeader {
        /// The election key whose ownership was checked.
        key: String,
    },
    /// The watch start revision has been compacted away; re-list.
    #[error("revision {requested} has been compacted (oldest kept: {compacted})")]
    Compacted {
        /// The revision the watch asked for.
        requested: i64,
        /// The compaction revision reported by etcd.
        compacted: i64,
    },
    /// A stored value could not be decoded.
    #[error("stored object at {key} is corrupt: {message}")]
    Corrupt {
        /// The etcd key.
        key: String,
        /// What failed to decode.
        message: String,
    },
    /// Any other error etcd reported.
    #[error("etcd at {endpoint}: {message}")]
    Etcd {
        /// The endpoint in use.
        endpoint: String,
        /// etcd's message.
        message: String,
    },
}

impl Error {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Etcd { .. })
    }
}

/// Store result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// etcd client URL, e.g. `http://127.0.0.1:2379`.
    pub endpoint: String,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for one request.
    pub request_timeout: Duration,
}

impl StoreConfig {
    /// Defaults for `endpoint`: a few seconds to connect and per request, so an
    /// unreachable etcd is reported quickly.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// A write precondition that holds only while this process leads: the
/// election key still exists with the create revision it had when this
/// process won. A deposed leader's writes fail with [`Error::NotLeader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// The election key.
    pub key: String,
    /// Its create revision when leadership was won.
    pub create_revision: i64,
}

/// Options of a delete.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeleteOptions {
    /// Grace period for pods on a node; `Some(0)` deletes at once.
    pub grace_period_seconds: Option<i64>,
}

/// What a delete did.
#[derive(Debug, Clone)]
pub enum Deleted<T> {
    /// The object is gone; this is its last state.
    Gone(T),
    /// Deletion is in progress (finalizers or graceful pod termination): the
    /// object now carries `deletionTimestamp`.
    Pending(T),
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent<T> {
    /// The object was created.
    Added(T),
    /// The object was changed.
    Modified(T),
    /// The object was removed; this is its last state, with the revision of
    /// the deletion as its resourceVersion.
    Deleted(T),
    /// Nothing changed up to this revision (etcd progress notification).
    Progress(i64),
}

/// Objects of one list, read at one etcd revision.
#[derive(Debug, Clone)]
pub struct List<T> {
    /// The objects, ordered by key.
    pub items: Vec<T>,
    /// The revision the list was read at; watch from `revision + 1`.
    pub revision: i64,
}

/// One page of a list read at one etcd revision.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The page's objects, ordered by key.
    pub items: Vec<T>,
    /// The revision every page of the list is read at.
    pub revision: i64,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Vec<u8>>,
}

/// The etcd-backed object store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    client: Client,
    config: StoreConfig,
    guard: Option<Guard>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("endpoint", &self.config.endpoint)
            .field("guard", &self.guard)
            .finish()
    }
}

/// Key of one object.
pub fn object_key(kind: &Kind, namespace: Option<&str>, name: &str) -> String {
    match namespace.filter(|_| kind.namespaced) {
        Some(ns) => format!("{ROOT}/{}/{ns}/{name}", kind.plural),
        None => format!("{ROOT}/{}/{name}", kind.plural),
    }
}

/// Key prefix of a kind, or of a kind within one namespace.
pub fn kind_prefix(kind: &Kind, namespace: Option<&str>) -> String {
    match namespace.filter(|_| kind.namespaced) {
        Some(ns) => format!("{ROOT}/{}/{ns}/", kind.plural),
        None => format!("{ROOT}/{}/", kind.plural),
    }
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    // Keys here are ASCII and end in '/', so the last byte never overflows.
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    let root = obj
        .as_object_mut()
        .expect("objects are JSON maps (checked on decode)");
    root.entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .expect("metadata is a map (checked on decode)")
}

/// Everything of an object but its metadata and status: what `generation`
/// counts changes of.
fn spec_of(obj: &Value) -> Map<String, Value> {
    obj.as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn has_finalizers(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

impl Store {
    /// Connects to etcd. The connection itself is lazy; an unreachable
    /// endpoint is reported by the first request.
    pub async fn connect(config: StoreConfig) -> Result<Self> {
        let options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let connect = Client::connect([config.endpoint.as_str()], Some(options));
        let client = tokio::time::timeout(config.connect_timeout, connect)
            .await
            .map_err(|_| Error::Unavailable {
                endpoint: config.endpoint.clone(),
                message: "timed out connecting".into(),
            })?
            .map_err(|e| map_err(&config.endpoint, e))?;
        Ok(Self {
            client,
            config,
            guard: None,
        })
    }

    /// The endpoint this store talks to.
    pub fn endpoint(&self) -> &str {
        &self.config.endpoint
    }

    /// A store whose every write also requires `guard` to hold.
    pub fn with_guard(&self, guard: Guard) -> Self {
        Self {
            guard: Some(guard),
            ..self.clone()
        }
    }

    /// The raw etcd client, for the pieces of core that need etcd itself
    /// (leases for leader election).
    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    fn err(&self, e: etcd_client::Error) -> Error {
        map_err(&self.config.endpoint, e)
    }

    /// Checks that etcd answers, with a clear error when it does not.
    pub async fn ping(&self) -> Result<i64> {
        let resp = self
            .client
            .kv_client()
            .get(ROOT, Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| self.err(e))?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    /// Typed access to one kind, within `namespace` (ignored for
    /// cluster-scoped kinds; `None` lists and watches every namespace).
    pub fn api<K: Object>(&self, namespace: Option<&str>) -> Api<K> {
        Api {
            store: self.clone(),
            namespace: namespace.map(str::to_string),
            kind: PhantomData,
        }
    }

    /// One etcd range read, retried while etcd is unreachable for up to the
    /// request timeout: reads are idempotent, and a brief leader election or
    /// restart of etcd should not fail a caller.
    async fn range(
        &self,
        key: Vec<u8>,
        options: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse> {
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            let result = self
                .client
                .kv_client()
                .get(key.clone(), options.clone())
                .await
                .map_err(|e| self.err(e));
            match result {
                Err(Error::Unavailable { .. })
                    if tokio::time::Instant::now() + pause < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
    }

    async fn get_kv(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut resp = self.range(key.as_bytes().to_vec(), None).await?;
        Ok(resp.take_kvs().into_iter().next())
    }

    /// Runs a write transaction: `compares` (plus the leader guard) then
    /// `ops`; returns the new revision, or `None` when a compare failed.
    async fn commit(&self, mut compares: Vec<Compare>, ops: Vec<TxnOp>) -> Result<Option<i64>> {
        let mut otherwise = Vec::new();
        if let Some(g) = &self.guard {
            compares.push(Compare::create_revision(
                g.key.as_str(),
                CompareOp::Equal,
                g.create_revision,
            ));
            otherwise.push(TxnOp::get(g.key.as_str(), None));
        }
        let txn = Txn::new().when(compares).and_then(ops).or_else(otherwise);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| self.err(e))?;
        if resp.succeeded() {
            return Ok(Some(
                resp.header().map(|h| h.revision()).unwrap_or_default(),
            ));
        }
        if let Some(g) = &self.guard {
            let held = resp.op_responses().into_iter().any(|r| match r {
                TxnOpResponse::Get(g2) => g2
                    .kvs()
                    .first()
                    .is_some_and(|kv| kv.create_revision() == g.create_revision),
                _ => false,
            });
            if !held {
                return Err(Error::NotLeader { key: g.key.clone() });
            }
        }
        Ok(None)
    }

    fn decode_kv(&self, kv: &KeyValue) -> Result<Value> {
        decode_value(kv, kv.mod_revision())
    }

    fn encode(obj: &Value) -> Vec<u8> {
        let mut stored = obj.clone();
        meta_mut(&mut stored).remove("resourceVersion");
        serde_json::to_vec(&stored).expect("JSON values serialise")
    }

    /// Creates an object from its JSON form; fills in namespace, uid,
    /// creationTimestamp and generation. Fails with [`Error::AlreadyExists`]
    /// rather than replacing anything.
    pub async fn create_value(&self, kind: &Kind, mut obj: Value) -> Result<Value> {
        kind.check(&obj)?;
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        let namespace = if kind.namespaced {
            Some(
                meta_str(&obj, "namespace")
                    .unwrap_or(DEFAULT_NAMESPACE)
                    .to_string(),
            )
        } else {
            None
        };
        {
            let meta = meta_mut(&mut obj);
            match &namespace {
                Some(ns) => meta.insert("namespace".into(), Value::String(ns.clone())),
                None => meta.remove("namespace"),
            };
            meta.remove("resourceVersion");
            meta.remove("deletionTimestamp");
            meta.insert(
                "uid".into(),
                Value::String(uuid::Uuid::new_v4().to_string()),
            );
            meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
            meta.insert("generation".into(), Value::from(1));
        }
        let key = object_key(kind, namespace.as_deref(), &name);
        let value = Self::encode(&obj);
        // Two attempts: the second after creating the `default` namespace.
        for _ in 0..2 {
            let mut compares = vec![Compare::version(key.as_str(), CompareOp::Equal, 0)];
            let ns_key = namespace
                .as_deref()
                .map(|ns| object_key(kind_of::<Namespace>(), None, ns));
            if let Some(ns_key) = &ns_key {
                compares.push(Compare::version(ns_key.as_str(), CompareOp::Greater, 0));
            }
            let put = TxnOp::put(key.as_str(), value.clone(), None);
            if let Some(rev) = self.commit(compares, vec![put]).await? {
                meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rev.to_string()));
                return Ok(obj);
            }
            if self.get_kv(&key).await?.is_some() {
                return Err(Error::AlreadyExists {
                    plural: kind.plural.into(),
                    name,
                });
            }
            let ns = namespace.as_deref().unwrap_or_default();
            if ns != DEFAULT_NAMESPACE {
                return Err(Error::NotFound {
                    plural: "namespaces".into(),
                    name: ns.into(),
                });
            }
            self.ensure_default_namespace().await?;
        }
        Err(Error::Conflict {
            plural: kind.plural.into(),
            name,
        })
    }

    async fn ensure_default_namespace(&self) -> Result<()> {
        let ns = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": DEFAULT_NAMESPACE},
            "status": {"phase": "Active"},
        });
        match Box::pin(self.create_value(kind_of::<Namespace>(), ns)).await {
            Ok(_) | Err(Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads one object.
    pub async fn get_value(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value> {
        let key = object_key(kind, namespace.or(Some(DEFAULT_NAMESPACE)), name);
        match self.get_kv(&key).await? {
            Some(kv) => self.decode_kv(&kv),
            None => Err(Error::NotFound {
                plural: kind.plural.into(),
                name: name.into(),
            }),
        }
    }

    /// Lists a kind (in one namespace, or all with `None`) at one revision,
    /// page by page so a large kind never arrives as one huge response.
    pub async fn list_values(&self, kind: &Kind, namespace: Option<&str>) -> Result<List<Value>> {
        self.list_decoded(kind, namespace, decode_value).await
    }

    /// [`Store::list_values`], each object decoded by `decode` as its page
    /// arrives.
    async fn list_decoded<T>(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        decode: Decoder<T>,
    ) -> Result<List<T>> {
        let mut page = self.page_decoded(kind, namespace, None, 0, decode).await?;
        let mut items = std::mem::take(&mut page.items);
        while let Some(from) = page.next {
            page = self
                .page_decoded(kind, namespace, Some(from), page.revision, decode)
                .await?;
            items.append(&mut page.items);
        }
        Ok(List {
            items,
            revision: page.revision,
        })
    }

    /// One page of a list: from the start of the kind's keys (`from` is
    /// `None`) or from a previous page's `next`, at `revision` (0: now).
    async fn page_decoded<T>(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        from: Option<Vec<u8>>,
        revision: i64,
        decode: Decoder<T>,
    ) -> Result<Page<T>> {
        let prefix = kind_prefix(kind, namespace);
        let mut options = GetOptions::new()
            .with_range(prefix_end(&prefix))
            .with_limit(LIST_PAGE);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let mut resp = self
            .range(from.unwrap_or_else(|| prefix.into_bytes()), Some(options))
            .await?;
        let revision = match revision {
            0 => resp.header().map(|h| h.revision()).unwrap_or_default(),
            r => r,
        };
        let more = resp.more();
        let kvs = resp.take_kvs();
        let items = kvs
            .iter()
            .map(|kv| decode(kv, kv.mod_revision()))
            .collect::<Result<_>>()?;
        let next = kvs.last().filter(|_| more).map(|last| {
            let mut next = last.key().to_vec();
            next.push(0);
            next
        });
        Ok(Page {
            items,
            revision,
            next,
        })
    }

    /// Replaces an object's spec and metadata, guarded by its
    /// `metadata.resourceVersion`; the stored status is kept.
    pub async fn update_value(&self, kind: &Kind, obj: Value) -> Result<Value> {
        kind.check(&obj)?;
        self.write_guarded(kind, obj, false).await
    }

    /// Replaces an object's status only, guarded by its resourceVersion; the
    /// stored spec and metadata are kept.
    pub async fn update_status_value(&self, kind: &Kind, obj: Value) -> Result<Value> {
        kind.check(&obj)?;
        self.write_guarded(kind, obj, true).await
    }

    async fn write_guarded(&self, kind: &Kind, obj: Value, status_only: bool) -> Result<Value> {
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        let namespace = meta_str(&obj, "namespace").unwrap_or(DEFAULT_NAMESPACE);
        let key = object_key(kind, Some(namespace), &name);
        let invalid_rv = || {
            Error::Invalid(Invalid {
                kind: kind.kind.into(),
                name: name.clone(),
                errors: vec![FieldError::invalid(
                    "metadata.resourceVersion",
                    "0",
                    "must be specified for an update",
                )],
            })
        };
        let rv: i64 = meta_str(&obj, "resourceVersion")
            .ok_or_else(invalid_rv)?
            .parse()
            .map_err(|_| invalid_rv())?;
        let conflict = || Error::Conflict {
            plural: kind.plural.into(),
            name: name.clone(),
        };
        let current_kv = self.get_kv(&key).await?.ok_or_else(|| Error::NotFound {
            plural: kind.plural.into(),
            name: name.clone(),
        })?;
        if current_kv.mod_revision() != rv {
            return Err(conflict());
        }
        let current = self.decode_kv(&current_kv)?;
        let merged = if status_only {
            let mut merged = current.clone();
            match obj.get("status") {
                Some(status) => merged["status"] = status.clone(),
                None => {
                    merged.as_object_mut().map(|m| m.remove("status"));
                }
            }
            merged
        } else {
            let mut merged = obj;
            // Identity and lifecycle fields belong to the store, not the writer.
            let keep = current.get("metadata").cloned().unwrap_or_default();
            let generation = keep.get("generation").and_then(Value::as_i64).unwrap_or(1);
            let bumped = spec_of(&merged) != spec_of(&current);
            let meta = meta_mut(&mut merged);
            for field in [
                "uid",
                "creationTimestamp",
                "namespace",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                match keep.get(field) {
                    Some(v) => meta.insert(field.into(), v.clone()),
                    None => meta.remove(field),
                };
            }
            meta.insert(
                "generation".into(),
                Value::from(generation + i64::from(bumped)),
            );
            if kind.has_status {
                match current.get("status") {
                    Some(s) => merged["status"] = s.clone(),
                    None => {
                        merged.as_object_mut().map(|m| m.remove("status"));
                    }
                }
            }
            merged
        };
        let guard = vec![Compare::mod_revision(key.as_str(), CompareOp::Equal, rv)];
        // An object being deleted leaves the store when its last finalizer goes.
        if merged.pointer("/metadata/deletionTimestamp").is_some() && !has_finalizers(&merged) {
            let op = TxnOp::delete(key.as_str(), None);
            return match self.commit(guard, vec![op]).await? {
                Some(_) => Ok(merged),
                None => Err(conflict()),
            };
        }
        let put = TxnOp::put(key.as_str(), Self::encode(&merged), Some(PutOptions::new()));
        match self.commit(guard, vec![put]).await? {
            Some(rev) => {
                let mut merged = merged;
                meta_mut(&mut merged)
                    .insert("resourceVersion".into(), Value::String(rev.to_string()));
                Ok(merged)
            }
            None => Err(conflict()),
        }
    }

    /// Deletes an object. Objects with finalizers, and pods bound to a node
    /// (unless the grace period is zero), are marked with
    /// `deletionTimestamp` and left for their owners to finish.
    pub async fn delete_value(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        name: &str,
        options: DeleteOptions,
    ) -> Result<Deleted<Value>> {
        let key = object_key(kind, namespace.or(Some(DEFAULT_NAMESPACE)), name);
        loop {
            let kv = self.get_kv(&key).await?.ok_or_else(|| Error::NotFound {
                plural: kind.plural.into(),
                name: name.into(),
            })?;
            let mut obj = self.decode_kv(&kv)?;
            let guard = vec![Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                kv.mod_revision(),
            )];
            let grace = self.grace_period(kind, &obj, options);
            if has_finalizers(&obj) || grace.is_some() {
                if obj.pointer("/metadata/deletionTimestamp").is_some() && grace != Some(0) {
                    return Ok(Deleted::Pending(obj));
                }
                let meta = meta_mut(&mut obj);
                meta.insert("deletionTimestamp".into(), Value::String(now_rfc3339()));
                if let Some(g) = grace {
                    meta.insert("deletionGracePeriodSeconds".into(), Value::from(g));
                }
                let put = TxnOp::put(key.as_str(), Self::encode(&obj), None);
                if let Some(rev) = self.commit(guard, vec![put]).await? {
                    meta_mut(&mut obj)
                        .insert("resourceVersion".into(), Value::String(rev.to_string()));
                    return Ok(Deleted::Pending(obj));
                }
                continue;
            }
            if self
                .commit(guard, vec![TxnOp::delete(key.as_str(), None)])
                .await?
                .is_some()
            {
                return Ok(Deleted::Gone(obj));
            }
        }
    }

    /// The grace period a pod gets, or `None` when it is deleted at once:
    /// only pods already bound to a node need their kubelet to stop them.
    fn grace_period(&self, kind: &Kind, obj: &Value, options: DeleteOptions) -> Option<i64> {
        if kind.plural != "pods"
            || obj
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_none()
        {
            return None;
        }
        let grace = options.grace_period_seconds.unwrap_or_else(|| {
            obj.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30)
        });
        (grace > 0 || has_finalizers(obj)).then_some(grace)
    }

    /// Watches a kind (in one namespace, or all) from `from_revision`
    /// (inclusive). The stream ends after an error; callers resume from the
    /// last revision they saw, or re-list after [`Error::Compacted`].
    pub async fn watch_values(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        from_revision: i64,
    ) -> Result<BoxStream<'static, Result<WatchEvent<Value>>>> {
        self.watch_decoded(kind, namespace, from_revision, decode_value)
            .await
    }

    /// [`Store::watch_values`], each object decoded by `decode`.
    async fn watch_decoded<T: Send + 'static>(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        from_revision: i64,
        decode: Decoder<T>,
    ) -> Result<BoxStream<'static, Result<WatchEvent<T>>>> {
        let prefix = kind_prefix(kind, namespace);
        let options = WatchOptions::new()
            .with_range(prefix_end(&prefix))
            .with_start_revision(from_revision)
            .with_prev_key()
            .with_progress_notify();
        let watch = self
            .client
            .watch_client()
            .watch(prefix, Some(options))
            .await
            .map_err(|e| self.err(e))?;
        let store = self.clone();
        let state = Some((watch, store));
        let responses = stream::unfold(state, move |state| async move {
            let (mut watch, store) = state?;
            match watch.message().await {
                Ok(Some(resp)) => {
                    if resp.canceled() {
                        let err = if resp.compact_revision() > 0 {
                            Error::Compacted {
                                requested: from_revision,
                                compacted: resp.compact_revision(),
                            }
                        } else {
                            Error::Etcd {
                                endpoint: store.config.endpoint.clone(),
                                message: format!("watch cancelled: {}", resp.cancel_reason()),
                            }
                        };
                        return Some((vec![Err(err)], None));
                    }
                    let events = watch_events(&resp, decode);
                    Some((events, Some((watch, store))))
                }
                Ok(None) => {
                    let err = Error::Unavailable {
                        endpoint: store.config.endpoint.clone(),
                        message: "watch stream closed".into(),
                    };
                    Some((vec![Err(err)], None))
                }
                Err(e) => Some((vec![Err(store.err(e))], None)),
            }
        });
        Ok(responses.flat_map(stream::iter).boxed())
    }
}

/// Turns a stored key-value into an object whose `metadata.resourceVersion`
/// is the given revision.
type Decoder<T> = fn(&KeyValue, i64) -> Result<T>;

fn corrupt(kv: &KeyValue, message: String) -> Error {
    Error::Corrupt {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        message,
    }
}

fn decode_value(kv: &KeyValue, resource_version: i64) -> Result<Value> {
    let mut obj: Value =
        serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv, e.to_string()))?;
    if !obj.is_object() {
        return Err(corrupt(kv, "not a JSON object".into()));
    }
    meta_mut(&mut obj).insert(
        "resourceVersion".into(),
        Value::String(resource_version.to_string()),
    );
    Ok(obj)
}

/// Decodes straight into the type: a `Value` in between costs many times
/// the typed object's memory, which a list of 10k objects multiplies.
fn decode_object<K: Object>(kv: &KeyValue, resource_version: i64) -> Result<K> {
    let mut obj: K = serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv, e.to_string()))?;
    obj.metadata_mut().resource_version = Some(resource_version.to_string());
    Ok(obj)
}

fn watch_events<T>(
    resp: &etcd_client::WatchResponse,
    decode: Decoder<T>,
) -> Vec<Result<WatchEvent<T>>> {
    if resp.events().is_empty() {
        if resp.created() {
            return Vec::new();
        }
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        return vec![Ok(WatchEvent::Progress(revision))];
    }
    resp.events()
        .iter()
        .filter_map(|event| {
            let kv = event.kv()?;
            Some(match event.event_type() {
                EventType::Put => decode(kv, kv.mod_revision()).map(|obj| {
                    if kv.create_revision() == kv.mod_revision() {
                        WatchEvent::Added(obj)
                    } else {
                        WatchEvent::Modified(obj)
                    }
                }),
                // The last state, as of the deletion. Without the previous
                // value (compacted) there is nothing to report.
                EventType::Delete => {
                    decode(event.prev_kv()?, kv.mod_revision()).map(WatchEvent::Deleted)
                }
            })
        })
        .collect()
}

fn map_err(endpoint: &str, e: etcd_client::Error) -> Error {
    use etcd_client::Error as E;
    let unavailable = |message: String| Error::Unavailable {
        endpoint: endpoint.to_string(),
        message,
    };
    match &e {
        E::TransportError(_) | E::IoError(_) => unavailable(root_cause(&e)),
        E::GRpcStatus(status)
            if matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ) =>
        {
            // tonic's status carries the transport error as its source; its
            // innermost cause is the line a person needs.
            let message = if std::error::Error::source(status).is_some() {
                root_cause(status)
            } else if status.message().is_empty() {
                format!("{:?}", status.code())
            } else {
                status.message().to_string()
            };
            unavailable(message)
        }
        _ => Error::Etcd {
            endpoint: endpoint.to_string(),
            message: e.to_string(),
        },
    }
}

/// The innermost cause of an error chain: for a refused connection that is
/// "Connection refused (os error 111)", not a stack of gRPC wrappers.
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Typed access to one kind in one namespace.
#[derive(Debug, Clone)]
pub struct Api<K> {
    store: Store,
    namespace: Option<String>,
    kind: PhantomData<fn() -> K>,
}

fn from_value<K: Object>(obj: Value) -> Result<K> {
    let key = format!(
        "{}/{}",
        kind_of::<K>().plural,
        meta_str(&obj, "name").unwrap_or_default()
    );
    serde_json::from_value(obj).map_err(|e| Error::Corrupt {
        key,
        message: e.to_string(),
    })
}

fn to_value<K: Object>(obj: &K) -> Value {
    serde_json::to_value(obj).expect("k8s-openapi objects serialise")
}

impl<K: Object> Api<K> {
    fn kind(&self) -> &'static Kind {
        kind_of::<K>()
    }

    fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The store this API writes to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Creates `obj` (in this API's namespace unless it names its own).
    pub async fn create(&self, obj: &K) -> Result<K> {
        let mut value = to_value(obj);
        if let (Some(ns), true) = (self.namespace(), self.kind().namespaced)
            && meta_str(&value, "namespace").is_none()
        {
            meta_mut(&mut value).insert("namespace".into(), Value::String(ns.into()));
        }
        from_value(self.store.create_value(self.kind(), value).await?)
    }

    /// Reads one object by name.
    pub async fn get(&self, name: &str) -> Result<K> {
        from_value(
            self.store
                .get_value(self.kind(), self.namespace(), name)
                .await?,
        )
    }

    /// Reads one object, `None` when it does not exist.
    pub async fn get_opt(&self, name: &str) -> Result<Option<K>> {
        match self.get(name).await {
            Ok(o) => Ok(Some(o)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One page of [`Api::list`]: the first (`from` is `None`, `revision`
    /// 0) or the one a previous page's `next` and `revision` name.
    pub async fn list_page(&self, from: Option<Vec<u8>>, revision: i64) -> Result<Page<K>> {
        self.store
            .page_decoded(
                self.kind(),
                self.namespace(),
                from,
                revision,
                decode_object::<K>,
            )
            .await
    }

    /// Lists every object of the kind in this API's namespace (or all).
    pub async fn list(&self) -> Result<List<K>> {
        self.store
            .list_decoded(self.kind(), self.namespace(), decode_object::<K>)
            .await
    }

    /// Updates spec and metadata, guarded by `obj`'s resourceVersion.
    pub async fn update(&self, obj: &K) -> Result<K> {
        from_value(
            self.store
                .update_value(self.kind(), self.scoped(obj))
                .await?,
        )
    }

    /// Updates status only, guarded by `obj`'s resourceVersion.
    pub async fn update_status(&self, obj: &K) -> Result<K> {
        from_value(
            self.store
                .update_status_value(self.kind(), self.scoped(obj))
                .await?,
        )
    }

    fn scoped(&self, obj: &K) -> Value {
        let mut value = to_value(obj);
        if let Some(ns) = self.namespace()
            && meta_str(&value, "namespace").is_none()
        {
            meta_mut(&mut value).insert("namespace".into(), Value::String(ns.into()));
        }
        value
    }

    /// Reads, changes with `change` and writes back, retrying on conflict:
    /// the way a controller changes an object it does not own alone.
    pub async fn modify(
        &self,
        name: &str,
        status: bool,
        mut change: impl FnMut(&mut K),
    ) -> Result<K> {
        loop {
            let mut obj = self.get(name).await?;
            change(&mut obj);
            let written = if status {
                self.update_status(&obj).await
            } else {
                self.update(&obj).await
            };
            match written {
                Err(Error::Conflict { .. }) => continue,
                other => return other,
            }
        }
    }

    /// Deletes by name (see [`Store::delete_value`]).
    pub async fn delete(&self, name: &str, options: DeleteOptions) -> Result<Deleted<K>> {
        Ok(
            match self
                .store
                .delete_value(self.kind(), self.namespace(), name, options)
                .await?
            {
                Deleted::Gone(v) => Deleted::Gone(from_value(v)?),
                Deleted::Pending(v) => Deleted::Pending(from_value(v)?),
            },
        )
    }

    /// Watches the kind from `from_revision` (inclusive).
    pub async fn watch(
        &self,
        from_revision: i64,
    ) -> Result<BoxStream<'static, Result<WatchEvent<K>>>> {
        self.store
            .watch_decoded(
                self.kind(),
                self.namespace(),
                from_revision,
                decode_object::<K>,
            )
            .await
    }
}
