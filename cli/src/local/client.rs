//! The client file `orca up` writes (`STATE/client.yaml`), as a kubeconfig
//! is for kubectl: where etcd is, the certificate to show it, and the
//! network namespace the cluster's addresses live in. The CLI reads the
//! file given with `--cluster` (or `ORCA_CLUSTER`), else the default
//! cluster's when it exists and neither `--etcd` nor `ORCA_ETCD` is set.

use std::path::{Path, PathBuf};

use anyhow::Context;
use orca_core::store::TlsFiles;
use serde::{Deserialize, Serialize};

/// The default cluster's state directory (`orca up` without `--state`).
pub const DEFAULT_STATE: &str = "/var/lib/orca/orca";

/// How a command reaches a cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// etcd's client URLs, comma-separated.
    pub etcd: String,
    /// The CA of etcd's certificates.
    pub ca: PathBuf,
    /// The client certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The network namespace the cluster's addresses are reached from;
    /// joining it needs root.
    pub netns: Option<PathBuf>,
}

impl ClientFile {
    /// The file's path in a cluster's state directory.
    pub fn path(state: &Path) -> PathBuf {
        state.join("client.yaml")
    }

    /// Reads the client file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the cluster file", path.display()))?;
        Ok(orca_core::yaml::from_str(
            &path.display().to_string(),
            &text,
        )?)
    }

    /// The certificate files as the store takes them.
    pub fn tls(&self) -> TlsFiles {
        TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

/// Moves the calling thread into the network namespace at `netns`. Called
/// before any other thread exists, so the whole process lives there.
pub fn join(netns: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(netns).with_context(|| {
        format!(
            "the cluster's network namespace {} is gone (is the cluster up?)",
            netns.display()
        )
    })?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        anyhow::anyhow!(
            "joining the cluster's network namespace {}: {e} (it takes root)",
            netns.display()
        )
    })
}
