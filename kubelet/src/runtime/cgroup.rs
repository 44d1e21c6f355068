//! Where pods' cgroups live: `<parent>/pod<uid>/<container id>`, under the
//! kubelet's one cgroup parent, in every v1 hierarchy or the v2 tree. runc
//! makes and removes a container's own cgroup; the pod level and the parent
//! are the kubelet's to remove.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// The cgroup path (as runc's `cgroupsPath` takes it) of a container.
pub fn container_path(parent: &str, pod_uid: &str, id: &str) -> String {
    format!("{}/{id}", pod_path(parent, pod_uid))
}

/// The cgroup path of a pod.
pub fn pod_path(parent: &str, pod_uid: &str) -> String {
    format!("/{}/pod{pod_uid}", parent.trim_matches('/'))
}

/// Every directory `path` has on this machine: one per v1 hierarchy, or
/// the one v2 directory.
fn dirs(path: &str) -> Vec<PathBuf> {
    let relative = path.trim_start_matches('/');
    if Path::new(ROOT).join("cgroup.controllers").exists() {
        return vec![Path::new(ROOT).join(relative)];
    }
    fs::read_dir(ROOT)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                // Hierarchies mounted under two names (cpu,cpuacct) appear
                // as links too; each real one is a directory.
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path().join(relative))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the cgroup `path` and everything below it that is empty of
/// processes, deepest first. Missing directories are fine.
pub fn remove(path: &str) -> io::Result<()> {
    let mut first_error = None;
    for dir in dirs(path) {
        if let Err(e) = remove_tree(&dir)
            && first_error.is_none()
        {
            first_error = Some(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn remove_tree(dir: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.filter_map(|e| e.ok()) {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
            e.kind(),
            format!("removing cgroup {}: {e}", dir.display()),
        )),
        _ => Ok(()),
    }
}

/// The pod uids that have a cgroup under `parent`.
pub fn pods(parent: &str) -> Vec<String> {
    let mut uids: Vec<String> = dirs(&format!("/{}", parent.trim_matches('/')))
        .iter()
        .filter_map(|dir| fs::read_dir(dir).ok())
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| name.strip_prefix("pod").map(str::to_string))
        .collect();
    uids.sort();
    uids.dedup();
    uids
}

/// Whether any cgroup directory of `path` exists.
pub fn exists(path: &str) -> bool {
    dirs(path).iter().any(|d| d.exists())
}
