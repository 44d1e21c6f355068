//! A pod's place on disk, under `<state_dir>/pods/<uid>/`: its pinned
//! network namespace, its `/etc/hosts`, `/etc/hostname` and
//! `/etc/resolv.conf`, its volumes, and one directory per container attempt
//! (`containers/<name>/<attempt>/`: the OCI bundle, its overlay root, the
//! monitor's records). `pod.json` names the pod, so a kubelet that restarts
//! knows what each directory belongs to.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use orca_core::api::{ConfigMap, Pod, Secret};
use serde::{Deserialize, Serialize};

use crate::runtime::bundle::Bind;

/// Which pod a directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: String,
}

/// A pod's directory.
#[derive(Debug, Clone)]
pub struct PodDir {
    root: PathBuf,
}

impl PodDir {
    /// The directory of pod `uid` under `state_dir`.
    pub fn new(state_dir: &Path, uid: &str) -> Self {
        Self {
            root: state_dir.join("pods").join(uid),
        }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Every pod directory under `state_dir`, with its record.
    pub fn all(state_dir: &Path) -> Vec<(Self, Option<PodRecord>)> {
        let Ok(entries) = fs::read_dir(state_dir.join("pods")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .map(|e| {
                let dir = Self { root: e.path() };
                let record = fs::read(dir.root.join("pod.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                (dir, record)
            })
            .collect()
    }

    /// Makes the directory and records whose it is.
    pub fn create(&self, record: &PodRecord) -> io::Result<()> {
        fs::create_dir_all(self.root.join("etc"))?;
        let path = self.root.join("pod.json");
        if !path.exists() {
            crate::runtime::monitor::write_atomic(&path, &serde_json::to_vec(record)?)?;
        }
        Ok(())
    }

    /// Where the pod's network namespace is pinned.
    pub fn netns(&self) -> PathBuf {
        self.root.join("netns")
    }

    /// The directory of a container's attempt.
    pub fn attempt(&self, container: &str, attempt: u32) -> PathBuf {
        self.root
            .join("containers")
            .join(container)
            .join(attempt.to_string())
    }

    /// A container's attempts so far, in order.
    pub fn attempts(&self, container: &str) -> Vec<u32> {
        let mut attempts: Vec<u32> = fs::read_dir(self.root.join("containers").join(container))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        attempts.sort_unstable();
        attempts
    }

    /// Every container name with a directory.
    pub fn containers(&self) -> Vec<String> {
        fs::read_dir(self.root.join("containers"))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Writes the pod's `/etc/hosts`, `/etc/hostname` and
    /// `/etc/resolv.conf`, as the kubelet does, and returns their binds.
    pub fn write_etc(
        &self,
        pod: &Pod,
        ip: Ipv4Addr,
        dns: Option<(std::net::IpAddr, &str)>,
    ) -> io::Result<Vec<Bind>> {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let spec = pod.spec.as_ref();
        let hostname = spec.and_then(|s| s.hostname.as_deref()).unwrap_or(name);
        let etc = self.root.join("etc");
        let mut hosts = format!(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{hostname}\n"
        );
        for alias in spec
            .and_then(|s| s.host_aliases.as_ref())
            .into_iter()
            .flatten()
        {
            hosts.push_str(&format!(
                "{}\t{}\n",
                alias.ip,
                alias.hostnames.clone().unwrap_or_default().join("\t")
            ));
        }
        fs::write(etc.join("hosts"), hosts)?;
        fs::write(etc.join("hostname"), format!("{hostname}\n"))?;
        let policy = spec
            .and_then(|s| s.dns_policy.as_deref())
            .unwrap_or("ClusterFirst");
        let resolv = match dns {
            Some((server, domain)) if policy.starts_with("ClusterFirst") => format!(
                "search {namespace}.svc.{domain} svc.{domain} {domain}\nnameserver {server}\noptions ndots:5\n"
            ),
            _ => fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        };
        fs::write(etc.join("resolv.conf"), resolv)?;
        Ok(["hosts", "hostname", "resolv.conf"]
            .map(|file| Bind {
                source: etc.join(file),
                destination: format!("/etc/{file}"),
                read_only: false,
            })
            .to_vec())
    }

    /// The host directory of volume `name`.
    pub fn volume(&self, name: &str) -> PathBuf {
        self.root.join("volumes").join(name)
    }
}

/// What a volume's content comes from, fetched by the caller.
pub enum Source<'a> {
    /// An emptyDir: a directory of the pod's.
    Empty,
    /// A directory of the node's (hostPath) and its `type`.
    Host(&'a str, Option<&'a str>),
    /// Files from a ConfigMap's keys.
    ConfigMap(&'a ConfigMap),
    /// Files from a Secret's keys.
    Secret(&'a Secret),
}

/// Makes volume `name` ready and returns its host path. ConfigMap and
/// Secret files are written afresh each time (`items` pick and rename keys;
/// `defaultMode` sets their mode).
pub fn prepare_volume(
    dir: &PodDir,
    name: &str,
    source: Source<'_>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
    default_mode: Option<i32>,
) -> io::Result<PathBuf> {
    let path = dir.volume(name);
    let files: BTreeMap<String, Vec<u8>> = match source {
        Source::Empty => {
            fs::create_dir_all(&path)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o777))?;
            return Ok(path);
        }
        Source::Host(host, kind) => {
            let host = PathBuf::from(host);
            match kind.unwrap_or("") {
                "DirectoryOrCreate" => fs::create_dir_all(&host)?,
                "FileOrCreate" if !host.exists() => {
                    if let Some(parent) = host.parent() {
                        fs::create_dir_all(parent)?;
                    }
                    fs::File::create(&host)?;
                }
                "Directory" if !host.is_dir() => {
                    return Err(io::Error::other(format!(
                        "hostPath {} is not a directory",
                        host.display()
                    )));
                }
                "File" if !host.is_file() => {
                    return Err(io::Error::other(format!(
                        "hostPath {} is not a file",
                        host.display()
                    )));
                }
                _ => {}
            }
            return Ok(host);
        }
        Source::ConfigMap(map) => {
            let mut files: BTreeMap<String, Vec<u8>> = map
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                .collect();
            files.extend(
                map.binary_data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.0.clone())),
            );
            files
        }
        Source::Secret(secret) => {
            let mut files: BTreeMap<String, Vec<u8>> = secret
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect();
            files.extend(
                secret
                    .string_data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.clone().into_bytes())),
            );
            files
        }
    };
    // Written into a fresh directory swapped in whole, so a container never
    // reads half an update.
    let staging = path.with_extension("new");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    let mode = default_mode.unwrap_or(0o644) as u32;
    let wanted: Vec<(String, String, Option<i32>)> = match items {
        Some(items) => items
            .iter()
            .map(|i| (i.key.clone(), i.path.clone(), i.mode))
            .collect(),
        None => files.keys().map(|k| (k.clone(), k.clone(), None)).collect(),
    };
    for (key, relative, item_mode) in wanted {
        let Some(content) = files.get(&key) else {
            return Err(io::Error::other(format!(
                "volume {name}: key {key:?} is not in its source"
            )));
        };
        if relative.split('/').any(|part| part == "..") || relative.starts_with('/') {
            return Err(io::Error::other(format!(
                "volume {name}: path {relative:?} leaves the volume"
            )));
        }
        let file = staging.join(&relative);
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&file, content)?;
        let mode = item_mode.map_or(mode, |m| m as u32);
        fs::set_permissions(&file, fs::Permissions::from_mode(mode))?;
    }
    let _ = fs::remove_dir_all(&path);
    fs::rename(&staging, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::KeyToPath;

    #[test]
    fn config_map_items_pick_and_rename_keys() {
        let state = tempfile::tempdir().unwrap();
        let dir = PodDir::new(state.path(), "u1");
        let map = ConfigMap {
            data: Some(BTreeMap::from([
                ("a".to_string(), "one".to_string()),
                ("b".to_string(), "two".to_string()),
            ])),
            ..ConfigMap::default()
        };
        let items = [KeyToPath {
            key: "b".into(),
            path: "sub/b.txt".into(),
            mode: Some(0o600),
        }];
        let path =
            prepare_volume(&dir, "cfg", Source::ConfigMap(&map), Some(&items), None).unwrap();
        assert_eq!(fs::read_to_string(path.join("sub/b.txt")).unwrap(), "two");
        assert!(!path.join("a").exists());
        let mode = fs::metadata(path.join("sub/b.txt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let escape = [KeyToPath {
            key: "a".into(),
            path: "../x".into(),
            mode: None,
        }];
        let err =
            prepare_volume(&dir, "cfg", Source::ConfigMap(&map), Some(&escape), None).unwrap_err();
        assert!(err.to_string().contains("leaves the volume"), "{err}");
    }
}
