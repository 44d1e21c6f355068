//! A container's OCI runtime config (`config.json`), as containerd's CRI
//! plugin writes it for a Kubernetes container: its process, its mounts,
//! its own pid, ipc, uts and mount namespaces, the pod's network namespace,
//! and cgroup limits from the container's resources.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// Capabilities a container gets by default (Docker's and containerd's set).
const CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The host path.
    pub source: PathBuf,
    /// Where it appears in the container.
    pub destination: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// cgroup limits, in the units runc takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// CPU shares (the request: 1024 per core).
    pub cpu_shares: u64,
    /// CPU quota per 100 ms period (the limit), in microseconds.
    pub cpu_quota: Option<i64>,
}

impl Limits {
    /// Limits from a container's requests and limits (CPU in cores, memory
    /// in bytes), as the kubelet maps them: shares from the request (the
    /// limit when no request is given, 2 at least), a CFS quota from the
    /// CPU limit, the memory limit as is.
    pub fn from_resources(
        cpu_request: Option<f64>,
        cpu_limit: Option<f64>,
        memory_limit: Option<f64>,
    ) -> Self {
        let request = cpu_request.or(cpu_limit).unwrap_or(0.0);
        Self {
            memory: memory_limit.map(|m| m as i64),
            cpu_shares: ((request * 1024.0) as u64).max(2),
            cpu_quota: cpu_limit.map(|c| ((c * 100_000.0) as i64).max(1000)),
        }
    }
}

/// What a container's config is made of.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    /// The command and its arguments.
    pub args: &'a [String],
    /// `NAME=value` entries.
    pub env: &'a [String],
    /// The working directory.
    pub cwd: &'a str,
    /// The user and group ids it runs as.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// The host name (the pod's).
    pub hostname: &'a str,
    /// The pod's network namespace.
    pub netns: &'a Path,
    /// Its cgroup path.
    pub cgroup: &'a str,
    /// Volumes and the pod's `/etc` files.
    pub binds: &'a [Bind],
    /// Its limits.
    pub limits: Limits,
}

/// The OCI runtime config for `spec`; the root filesystem is `rootfs` in
/// the bundle directory.
pub fn config(spec: &Spec<'_>) -> Value {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    mounts.extend(spec.binds.iter().map(|bind| {
        let mode = if bind.read_only { "ro" } else { "rw" };
        json!({
            "destination": bind.destination,
            "type": "bind",
            "source": bind.source,
            "options": ["rbind", "rprivate", mode],
        })
    }));
    let mut resources = json!({
        "devices": [{"allow": false, "access": "rwm"}],
        "cpu": {"shares": spec.limits.cpu_shares},
    });
    if let Some(quota) = spec.limits.cpu_quota {
        resources["cpu"]["quota"] = json!(quota);
        resources["cpu"]["period"] = json!(100_000);
    }
    if let Some(memory) = spec.limits.memory {
        // No swap beyond the limit, so the limit is what OOM-kills.
        resources["memory"] = json!({"limit": memory, "swap": memory});
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": spec.uid, "gid": spec.gid},
            "args": spec.args,
            "env": spec.env,
            "cwd": if spec.cwd.is_empty() { "/" } else { spec.cwd },
            "capabilities": {
                "bounding": CAPABILITIES,
                "effective": CAPABILITIES,
                "permitted": CAPABILITIES,
            },
            "noNewPrivileges": false,
            "oomScoreAdj": 1000,
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": spec.hostname,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": spec.cgroup,
            "resources": resources,
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network", "path": spec.netns},
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_map_to_shares_quota_and_memory_as_the_kubelet_does() {
        let limits = Limits::from_resources(Some(0.25), Some(0.5), Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(limits.cpu_shares, 256);
        assert_eq!(limits.cpu_quota, Some(50_000));
        assert_eq!(limits.memory, Some(64 << 20));
        // No request: the limit stands for it; nothing at all: 2 shares.
        assert_eq!(
            Limits::from_resources(None, Some(1.0), None).cpu_shares,
            1024
        );
        assert_eq!(Limits::from_resources(None, None, None).cpu_shares, 2);
    }

    #[test]
    fn the_config_joins_the_pods_network_namespace_and_binds_volumes() {
        let binds = [Bind {
            source: "/var/lib/orca/pods/u/volumes/data".into(),
            destination: "/data".into(),
            read_only: true,
        }];
        let args = ["/bin/sh".to_string()];
        let config = config(&Spec {
            args: &args,
            env: &[],
            cwd: "",
            uid: 0,
            gid: 0,
            hostname: "web",
            netns: Path::new("/var/lib/orca/netns/u"),
            cgroup: "/orca/podu/c",
            binds: &binds,
            limits: Limits::default(),
        });
        let network = &config["linux"]["namespaces"][4];
        assert_eq!(network["path"], "/var/lib/orca/netns/u");
        let bind = config["mounts"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(bind["destination"], "/data");
        assert_eq!(bind["options"][2], "ro");
        assert_eq!(config["process"]["cwd"], "/");
    }
}
