//! The image store on disk: blobs by digest, unpacked layers, one record per
//! image reference, and the garbage collection of what no image uses.
//!
//! ```text
//! root/blobs/sha256/<hex>       image configs (layer blobs only until unpacked)
//! root/layers/<hex>/            an unpacked layer, named by its blob's digest
//! root/images/<escaped>.json    a Record
//! root/tmp/                     downloads and unpacks in progress
//! ```
//! Everything is written under `tmp/` and renamed into place, so a crash
//! never leaves a half blob or half layer where a reader looks.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;

use super::layer;
use super::registry::hex;
use orca_core::image::check_digest;

/// What a container's bundle needs of its image.
#[derive(Debug, Clone)]
pub struct Image {
    /// The normalised reference: `docker.io/library/nginx:1.7.9`.
    pub reference: String,
    /// The config digest, `sha256:…` (the image's ID).
    pub id: String,
    /// `docker.io/library/nginx@sha256:<manifest digest>`, a
    /// containerStatus' `imageID`.
    pub repo_digest: String,
    /// The unpacked layer directories, bottom first.
    pub layers: Vec<PathBuf>,
    /// How the image wants to be run.
    pub config: ImageConfig,
}

/// The parts of an image's config a container's process uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, `NAME=value`.
    pub env: Vec<String>,
    /// `WorkingDir`; empty for `/`.
    pub working_dir: String,
    /// `User`; empty for root.
    pub user: String,
}

impl ImageConfig {
    /// The process settings of an image config blob.
    pub(super) fn parse(json: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            config: Option<Process>,
        }
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "PascalCase", default)]
        struct Process {
            entrypoint: Option<Vec<String>>,
            cmd: Option<Vec<String>>,
            env: Option<Vec<String>>,
            working_dir: Option<String>,
            user: Option<String>,
        }
        let file: File = serde_json::from_slice(json)
            .map_err(|err| format!("the image config is not valid JSON: {err}"))?;
        let process = file.config.unwrap_or_default();
        Ok(Self {
            entrypoint: process.entrypoint.unwrap_or_default(),
            cmd: process.cmd.unwrap_or_default(),
            env: process.env.unwrap_or_default(),
            working_dir: process.working_dir.unwrap_or_default(),
            user: process.user.unwrap_or_default(),
        })
    }
}

/// What the store knows of one image reference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    /// The normalised reference.
    pub reference: String,
    /// `registry/repository@sha256:…`.
    pub repo_digest: String,
    /// The config digest.
    pub config_digest: String,
    /// The layers' blob digests, bottom first.
    pub layers: Vec<String>,
    /// The process settings.
    pub config: ImageConfig,
    /// When an `ensure` last returned it, seconds since the epoch; garbage
    /// collection removes the longest unused first.
    pub last_used: u64,
}

/// Seconds since the epoch.
pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Names temporary files apart within a process.
static TEMP: AtomicU64 = AtomicU64::new(0);

/// The files under a root directory.
#[derive(Debug)]
pub(super) struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating) the store at `root` and drops what an earlier
    /// process left half done.
    pub fn open(root: PathBuf) -> io::Result<Self> {
        let store = Self { root };
        match fs::remove_dir_all(store.root.join("tmp")) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        for dir in ["blobs/sha256", "layers", "images", "tmp"] {
            fs::create_dir_all(store.root.join(dir))?;
        }
        Ok(store)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn temp(&self, what: &str) -> PathBuf {
        self.root.join("tmp").join(format!(
            "{what}-{}-{}",
            std::process::id(),
            TEMP.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Where blob `digest` is kept (the digest was checked when parsed).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// Where layer `digest` is unpacked.
    pub fn layer_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("layers")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// A writer for blob `digest` that checks the digest before the blob
    /// appears.
    pub async fn blob_writer(&self, digest: &str) -> io::Result<BlobWriter> {
        check_digest(digest).map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
        let temp = self.temp("blob");
        Ok(BlobWriter {
            file: tokio::fs::File::create(&temp).await?,
            context: ring::digest::Context::new(&ring::digest::SHA256),
            temp,
            dest: self.blob_path(digest),
            expected: digest.to_string(),
        })
    }

    /// Unpacks blob `digest` into its layer directory, then removes the
    /// blob: containers use the unpacked files, and keeping both would take
    /// twice the disk.
    pub fn unpack_layer(&self, digest: &str) -> io::Result<PathBuf> {
        let blob = self.blob_path(digest);
        let dest = self.layer_path(digest);
        let temp = self.temp("layer");
        let result = layer::unpack(&blob, &temp).and_then(|()| {
            // The files must be on disk before the layer is seen as whole.
            rustix::fs::syncfs(fs::File::open(&temp)?)?;
            fs::rename(&temp, &dest)
        });
        if let Err(err) = result {
            // A half-unpacked directory is of no use to anybody.
            let _ = fs::remove_dir_all(&temp);
            return Err(io::Error::new(
                err.kind(),
                format!("unpacking layer {digest}: {err}"),
            ));
        }
        fs::remove_file(&blob)?;
        Ok(dest)
    }

    fn record_path(&self, reference: &str) -> PathBuf {
        let escaped: String = reference
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_') {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        self.root.join("images").join(format!("{escaped}.json"))
    }

    /// The record of `reference`, when it is present with all its layers.
    pub fn record(&self, reference: &str) -> io::Result<Option<Record>> {
        let bytes = match fs::read(self.record_path(reference)) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let Ok(record) = serde_json::from_slice::<Record>(&bytes) else {
            // Written by rename, so only tampering gets here: pull again.
            return Ok(None);
        };
        let whole = record
            .layers
            .iter()
            .all(|digest| self.layer_path(digest).is_dir());
        Ok(whole.then_some(record))
    }

    /// Writes (or replaces) `record`.
    pub fn save(&self, record: &Record) -> io::Result<()> {
        let temp = self.temp("record");
        let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        fs::write(&temp, json)?;
        fs::rename(&temp, self.record_path(&record.reference))
    }

    /// The image `record` describes, with its layers' paths.
    pub fn image(&self, record: &Record) -> Image {
        Image {
            reference: record.reference.clone(),
            id: record.config_digest.clone(),
            repo_digest: record.repo_digest.clone(),
            layers: record
                .layers
                .iter()
                .map(|digest| self.layer_path(digest))
                .collect(),
            config: record.config.clone(),
        }
    }

    /// Every readable record.
    fn records(&self) -> io::Result<Vec<(PathBuf, Record)>> {
        let mut records = Vec::new();
        for entry in fs::read_dir(self.root.join("images"))? {
            let path = entry?.path();
            if let Some(record) = fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok())
            {
                records.push((path, record));
            }
        }
        Ok(records)
    }

    /// When the filesystem holding the store is fuller than `high_percent`,
    /// removes images not named in `in_use`, longest unused first, and the
    /// layers and blobs no remaining image (nor a pull in progress, `pinned`)
    /// uses, until it is below `low_percent`. Returns the bytes freed.
    pub fn collect_garbage(
        &self,
        in_use: &HashSet<String>,
        pinned: &HashSet<String>,
        high_percent: u8,
        low_percent: u8,
    ) -> io::Result<u64> {
        let stat = rustix::fs::statvfs(&self.root)?;
        let total = stat.f_blocks.saturating_mul(stat.f_frsize);
        let used = stat
            .f_blocks
            .saturating_sub(stat.f_bfree)
            .saturating_mul(stat.f_frsize);
        if used.saturating_mul(100) <= total.saturating_mul(u64::from(high_percent)) {
            return Ok(0);
        }
        let target = total / 100 * u64::from(low_percent);
        let (mut keep, mut unused): (Vec<_>, Vec<_>) =
            self.records()?.into_iter().partition(|(_, record)| {
                in_use.contains(&record.reference) || in_use.contains(&record.repo_digest)
            });
        unused.sort_by_key(|(_, record)| std::cmp::Reverse(record.last_used));
        let mut freed = 0;
        while used.saturating_sub(freed) > target {
            let Some((path, record)) = unused.pop() else {
                break;
            };
            tracing::info!(image = %record.reference, "removing unused image");
            freed += size(&path)?;
            fs::remove_file(&path)?;
            keep.retain(|(_, other)| other.reference != record.reference);
            let mut wanted: HashSet<String> = pinned.clone();
            for (_, other) in keep.iter().chain(&unused) {
                wanted.insert(other.config_digest.clone());
                wanted.extend(other.layers.iter().cloned());
            }
            freed += self.sweep(&wanted)?;
        }
        Ok(freed)
    }

    /// Removes the layers and blobs whose digests are not in `wanted`.
    fn sweep(&self, wanted: &HashSet<String>) -> io::Result<u64> {
        let mut freed = 0;
        for dir in ["layers", "blobs/sha256"] {
            for entry in fs::read_dir(self.root.join(dir))? {
                let path = entry?.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if wanted.contains(&format!("sha256:{name}")) {
                    continue;
                }
                freed += size(&path)?;
                if path.is_dir() {
                    fs::remove_dir_all(&path)?;
                } else {
                    fs::remove_file(&path)?;
                }
            }
        }
        Ok(freed)
    }
}

/// The disk space a file or tree takes.
fn size(path: &Path) -> io::Result<u64> {
    let meta = fs::symlink_metadata(path)?;
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            total += size(&entry?.path())?;
        }
    }
    Ok(total)
}

/// A blob being downloaded: hashed as it is written, renamed into place
/// only when its digest is the one expected.
pub(super) struct BlobWriter {
    file: tokio::fs::File,
    context: ring::digest::Context,
    temp: PathBuf,
    dest: PathBuf,
    expected: String,
}

impl BlobWriter {
    /// Appends `data`.
    pub async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.context.update(data);
        self.file.write_all(data).await
    }

    /// Checks the digest and puts the blob in place; a mismatch is an
    /// error naming both digests, and the download is dropped.
    pub async fn finish(mut self) -> io::Result<PathBuf> {
        self.file.flush().await?;
        self.file.sync_all().await?;
        let actual = format!("sha256:{}", hex(self.context.clone().finish().as_ref()));
        if actual != self.expected {
            let _ = tokio::fs::remove_file(&self.temp).await;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("digest mismatch: expected {}, got {actual}", self.expected),
            ));
        }
        tokio::fs::rename(&self.temp, &self.dest).await?;
        Ok(self.dest.clone())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // An abandoned download (error, cancelled pull) leaves no file behind;
        // after a successful rename this finds nothing.
        let _ = fs::remove_file(&self.temp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::registry::digest_of;

    #[tokio::test]
    async fn blobs_are_checked_before_they_appear() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path().to_path_buf()).expect("opens");
        let digest = digest_of(b"hello");
        let mut writer = store.blob_writer(&digest).await.expect("writer");
        writer.write(b"hel").await.expect("writes");
        writer.write(b"lo").await.expect("writes");
        let path = writer.finish().await.expect("verified");
        assert_eq!(fs::read(&path).expect("stored"), b"hello");

        let other = digest_of(b"other");
        let mut writer = store.blob_writer(&other).await.expect("writer");
        writer.write(b"tampered").await.expect("writes");
        let err = writer.finish().await.expect_err("mismatch");
        let message = err.to_string();
        assert!(message.contains(&format!("expected {other}")), "{message}");
        assert!(message.contains(&digest_of(b"tampered")), "{message}");
        assert!(!store.blob_path(&other).exists());
        assert_eq!(
            fs::read_dir(tmp.path().join("tmp")).expect("tmp").count(),
            0
        );

        assert!(store.blob_writer("sha256:../../etc").await.is_err());
    }

    #[test]
    fn image_config() {
        let config = ImageConfig::parse(
            br#"{"architecture": "amd64", "config": {"Entrypoint": ["/bin/sh"],
                "Cmd": ["-c", "echo hi"], "Env": ["PATH=/bin"], "WorkingDir": "/tmp", "User": "1000"}}"#,
        )
        .expect("parses");
        assert_eq!(config.entrypoint, ["/bin/sh"]);
        assert_eq!(config.cmd, ["-c", "echo hi"]);
        assert_eq!(config.env, ["PATH=/bin"]);
        assert_eq!(config.working_dir, "/tmp");
        assert_eq!(config.user, "1000");
        assert_eq!(
            ImageConfig::parse(br#"{"config": null}"#).expect("parses"),
            ImageConfig::default()
        );
    }

    #[test]
    fn records_need_their_layers() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path().to_path_buf()).expect("opens");
        let layer = digest_of(b"layer");
        let record = Record {
            reference: "127.0.0.1:5000/bb:1".into(),
            repo_digest: format!("127.0.0.1:5000/bb@{}", digest_of(b"manifest")),
            config_digest: digest_of(b"config"),
            layers: vec![layer.clone()],
            config: ImageConfig::default(),
            last_used: now(),
        };
        store.save(&record).expect("saves");
        assert!(store.record(&record.reference).expect("reads").is_none());
        fs::create_dir(store.layer_path(&layer)).expect("layer");
        let found = store
            .record(&record.reference)
            .expect("reads")
            .expect("whole");
        assert_eq!(found.repo_digest, record.repo_digest);
        assert_eq!(store.image(&found).layers, [store.layer_path(&layer)]);
    }
}
