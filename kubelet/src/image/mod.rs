//! The image manager: pulls OCI images through the distribution API (from
//! mirrors or the registry itself) and keeps them as unpacked layers for
//! overlayfs, one download shared by every container that asks at once.
//!
//! `reference` parses names, `auth` holds pull credentials, `http` and
//! `registry` talk to registries, `layer` unpacks and `store` keeps the
//! files; this module ties them together in [`Images`].

mod auth;
mod http;
mod layer;
mod registry;
mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

pub use auth::{Credential, credentials_from_docker_config};
pub use orca_core::image::{PullPolicy, Reference, allowed, normalize};
pub use registry::RegistryConfig;
pub use store::{Image, ImageConfig};

use registry::{Session, sources};
use store::{Record, Store};

/// Why an image could not be made present.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The node's allow-list has no rule for the image; nothing was pulled.
    #[error("{0}")]
    Refused(String),
    /// The pull policy is `Never` and the image is not on the node.
    #[error("{0}")]
    NeverPull(String),
    /// The image name does not parse.
    #[error("{0}")]
    InvalidName(String),
    /// The registry refused or failed, or the content did not check out.
    #[error("{0}")]
    Pull(String),
}

impl PullError {
    /// The container status reason Kubernetes gives this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Refused(_) | Self::Pull(_) => "ErrImagePull",
            Self::NeverPull(_) => "ErrImageNeverPull",
            Self::InvalidName(_) => "InvalidImageName",
        }
    }
}

/// The node's images; cheap to clone, every clone shares the store.
#[derive(Clone)]
pub struct Images {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    registries: BTreeMap<String, RegistryConfig>,
    allow: Vec<String>,
    client: http::Client,
    /// One async lock per image reference or blob digest being pulled, so
    /// concurrent callers wait for one download instead of starting their
    /// own. Entries die with their last holder.
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    /// Digests of layers and configs that pulls in progress have fetched
    /// but not yet recorded; garbage collection leaves them alone.
    pinned: Mutex<HashMap<String, usize>>,
    /// Blobs downloaded since start.
    blobs_pulled: AtomicU64,
}

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Images")
            .field("root", &self.inner.store.root())
            .finish_non_exhaustive()
    }
}

impl Images {
    /// The image store at `root` (created when missing), pulling as
    /// `registries` say and only what `allow` permits (an empty list permits
    /// everything). A mirror that is not an `http[s]://` URL is an error.
    pub fn new(
        root: PathBuf,
        registries: BTreeMap<String, RegistryConfig>,
        allow: Vec<String>,
    ) -> std::io::Result<Self> {
        for (registry, config) in &registries {
            for mirror in &config.mirrors {
                http::Url::parse(mirror).map_err(|err| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("registries.{registry}.mirrors: {err}"),
                    )
                })?;
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                store: Store::open(root)?,
                registries,
                allow,
                client: http::Client::default(),
                locks: Mutex::default(),
                pinned: Mutex::default(),
                blobs_pulled: AtomicU64::new(0),
            }),
        })
    }

    /// How many blobs (configs and layers) were downloaded since start; an
    /// image already present adds none.
    pub fn blobs_pulled(&self) -> u64 {
        self.inner.blobs_pulled.load(Ordering::Relaxed)
    }

    /// Makes `image` present as `policy` says, sharing one download among
    /// concurrent callers for the same image.
    pub async fn ensure(
        &self,
        image: &str,
        policy: PullPolicy,
        credentials: &[Credential],
    ) -> Result<Image, PullError> {
        let reference = normalize(image).map_err(PullError::InvalidName)?;
        let name = reference.to_string();
        allowed(&self.inner.allow, &name, "on this node (images.allow)")
            .map_err(PullError::Refused)?;
        if policy != PullPolicy::Always {
            if let Some(found) = self.present(&name)? {
                return Ok(found);
            }
        }
        if policy == PullPolicy::Never {
            return Err(PullError::NeverPull(format!(
                "Container image {image:?} is not present with pull policy of Never"
            )));
        }
        let lock = self.lock(&format!("image {name}"));
        let _pulling = lock.lock().await;
        // Whoever held the lock may just have pulled it.
        if policy == PullPolicy::IfNotPresent {
            if let Some(found) = self.present(&name)? {
                return Ok(found);
            }
        }
        self.pull(&reference, credentials).await
    }

    /// Removes images not named in `in_use` (normalised references or repo
    /// digests) and the layers no remaining image uses, when the filesystem
    /// holding the store is more than `high_percent` full, longest unused
    /// first, until it is below `low_percent`. Returns the bytes freed.
    pub fn collect_garbage(
        &self,
        in_use: &HashSet<String>,
        high_percent: u8,
        low_percent: u8,
    ) -> std::io::Result<u64> {
        // Callers may name images as containers do (`nginx`).
        let in_use: HashSet<String> = in_use
            .iter()
            .map(|name| normalize(name).map_or_else(|_| name.clone(), |r| r.to_string()))
            .chain(in_use.iter().cloned())
            .collect();
        let pinned: HashSet<String> = lock(&self.inner.pinned).keys().cloned().collect();
        self.inner
            .store
            .collect_garbage(&in_use, &pinned, high_percent, low_percent)
    }

    /// The image `name` when it is on the node; marks it used now.
    fn present(&self, name: &str) -> Result<Option<Image>, PullError> {
        let store = &self.inner.store;
        let local = |err: std::io::Error| {
            PullError::Pull(format!("reading the image store for {name:?}: {err}"))
        };
        let Some(mut record) = store.record(name).map_err(local)? else {
            return Ok(None);
        };
        record.last_used = store::now();
        store.save(&record).map_err(local)?;
        Ok(Some(store.image(&record)))
    }

    /// The async lock for `key`, shared with whoever holds it now.
    fn lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = lock(&self.inner.locks);
        if let Some(existing) = locks.get(key).and_then(Weak::upgrade) {
            return existing;
        }
        locks.retain(|_, weak| weak.strong_count() > 0);
        let fresh = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(key.to_string(), Arc::downgrade(&fresh));
        fresh
    }

    /// Pulls `reference` from its mirrors in order, then its registry.
    async fn pull(
        &self,
        reference: &Reference,
        credentials: &[Credential],
    ) -> Result<Image, PullError> {
        let name = reference.to_string();
        let urls = sources(reference, &self.inner.registries).map_err(PullError::Pull)?;
        let mut failures = Vec::new();
        for url in urls {
            let origin = url.origin();
            let mut session =
                Session::new(&self.inner.client, url, &reference.repository, credentials);
            match self.pull_from(&mut session, reference).await {
                Ok(image) => return Ok(image),
                Err(err) => {
                    tracing::warn!(image = %name, from = %origin, %err, "pull failed");
                    failures.push((origin, err));
                }
            }
        }
        let message = match failures.as_slice() {
            [(origin, err)] => format!("failed to pull image {name:?} from {origin}: {err}"),
            _ => format!(
                "failed to pull image {name:?}: {}",
                failures
                    .iter()
                    .map(|(origin, err)| format!("from {origin}: {err}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        };
        Err(PullError::Pull(message))
    }

    /// Pulls through one session: the manifest, the config, the layers not
    /// yet unpacked; then records the image.
    async fn pull_from(
        &self,
        session: &mut Session<'_>,
        reference: &Reference,
    ) -> Result<Image, String> {
        let store = &self.inner.store;
        let manifest = session
            .manifest(reference.manifest_reference())
            .await
            .map_err(|err| err.to_string())?;
        let _pin = Pin::new(
            &self.inner,
            std::iter::once(&manifest.config)
                .chain(&manifest.layers)
                .map(|d| d.digest.clone())
                .collect(),
        );
        let config_digest = &manifest.config.digest;
        let config_path = {
            let lock = self.lock(&format!("blob {config_digest}"));
            let _held = lock.lock().await;
            let path = store.blob_path(config_digest);
            if !path.is_file() {
                self.download(session, config_digest).await?;
            }
            path
        };
        let config = tokio::fs::read(&config_path)
            .await
            .map_err(|err| format!("reading image config {config_digest}: {err}"))?;
        let config = ImageConfig::parse(&config)?;
        for layer in &manifest.layers {
            let digest = &layer.digest;
            let lock = self.lock(&format!("blob {digest}"));
            let _held = lock.lock().await;
            if store.layer_path(digest).is_dir() {
                continue;
            }
            if !store.blob_path(digest).is_file() {
                self.download(session, digest).await?;
            }
            let inner = Arc::clone(&self.inner);
            let unpack_digest = digest.clone();
            tokio::task::spawn_blocking(move || inner.store.unpack_layer(&unpack_digest))
                .await
                .map_err(|err| format!("unpacking layer {digest}: {err}"))?
                .map_err(|err| err.to_string())?;
        }
        let record = Record {
            reference: reference.to_string(),
            repo_digest: format!("{}@{}", reference.name(), manifest.digest),
            config_digest: config_digest.clone(),
            layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
            config,
            last_used: store::now(),
        };
        store
            .save(&record)
            .map_err(|err| format!("recording the image: {err}"))?;
        tracing::info!(image = %record.reference, id = %record.config_digest, "image pulled");
        Ok(store.image(&record))
    }

    /// Downloads blob `digest` into the store, verified.
    async fn download(&self, session: &mut Session<'_>, digest: &str) -> Result<(), String> {
        let mut body = session
            .blob(digest)
            .await
            .map_err(|err| format!("blob {digest}: {err}"))?;
        let mut writer = self
            .inner
            .store
            .blob_writer(digest)
            .await
            .map_err(|err| format!("storing blob {digest}: {err}"))?;
        while let Some(frame) = http::next_frame(&mut body)
            .await
            .map_err(|err| format!("blob {digest}: {err}"))?
        {
            if let Ok(data) = frame.into_data() {
                writer
                    .write(&data)
                    .await
                    .map_err(|err| format!("storing blob {digest}: {err}"))?;
            }
        }
        writer
            .finish()
            .await
            .map_err(|err| format!("blob {digest}: {err}"))?;
        self.inner.blobs_pulled.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Locks a std mutex; a panic elsewhere while holding it leaves plain data
/// that is still consistent, so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Keeps digests out of garbage collection while a pull needs them.
struct Pin<'a> {
    inner: &'a Inner,
    digests: Vec<String>,
}

impl<'a> Pin<'a> {
    fn new(inner: &'a Inner, digests: Vec<String>) -> Self {
        let mut pinned = lock(&inner.pinned);
        for digest in &digests {
            *pinned.entry(digest.clone()).or_default() += 1;
        }
        drop(pinned);
        Self { inner, digests }
    }
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let mut pinned = lock(&self.inner.pinned);
        for digest in &self.digests {
            if let Some(count) = pinned.get_mut(digest) {
                *count -= 1;
                if *count == 0 {
                    pinned.remove(digest);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_and_never_pull_make_no_request() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let images = Images::new(
            tmp.path().to_path_buf(),
            BTreeMap::new(),
            vec!["127.0.0.1:5000/*".to_string()],
        )
        .expect("opens");
        let err = images
            .ensure("nginx", PullPolicy::Always, &[])
            .await
            .expect_err("refused");
        assert!(matches!(err, PullError::Refused(_)), "{err}");
        assert!(err.to_string().contains("127.0.0.1:5000/*"), "{err}");
        assert_eq!(err.reason(), "ErrImagePull");

        let err = images
            .ensure("127.0.0.1:5000/bb:1", PullPolicy::Never, &[])
            .await
            .expect_err("absent");
        assert_eq!(
            err.to_string(),
            r#"Container image "127.0.0.1:5000/bb:1" is not present with pull policy of Never"#
        );
        assert_eq!(err.reason(), "ErrImageNeverPull");

        let err = images
            .ensure("Bad Name", PullPolicy::Always, &[])
            .await
            .expect_err("invalid");
        assert_eq!(err.reason(), "InvalidImageName");
        assert_eq!(images.blobs_pulled(), 0);
    }

    #[test]
    fn bad_mirrors_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let registries = BTreeMap::from([(
            "docker.io".to_string(),
            RegistryConfig {
                mirrors: vec!["127.0.0.1:5000".into()],
                insecure: false,
            },
        )]);
        let err = Images::new(tmp.path().to_path_buf(), registries, vec![]).expect_err("refused");
        assert!(
            err.to_string().contains("registries.docker.io.mirrors"),
            "{err}"
        );
    }
}
