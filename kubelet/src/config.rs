//! The kubelet's configuration file (`orca kubelet --config FILE`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use orca_core::config::{ByteSize, ComponentConfig, ConfigError, Duration};
use orca_core::store::Cidr;
use serde::{Deserialize, Serialize};

use crate::image::RegistryConfig;

/// The kubelet's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Images, bundles, network namespaces, address allocations, runc's
    /// state: everything the kubelet makes but logs.
    pub state_dir: PathBuf,
    /// Container logs, `<ns>_<pod>_<uid>/<container>/<restart>.log`.
    pub log_dir: PathBuf,
    /// The node's pod CIDR; by default the Node's `spec.podCIDR`, set by
    /// the master.
    pub pod_cidr: Option<Cidr>,
    /// Per-registry mirrors and plain-HTTP registries.
    pub registries: BTreeMap<String, RegistryConfig>,
    /// Which images may run.
    pub images: ImagePolicy,
    /// The cgroup every pod's cgroup lives under.
    pub cgroup_parent: String,
    /// The runc binary.
    pub runc: PathBuf,
    /// The `orca-monitor` binary; by default the one beside this program.
    pub monitor: Option<PathBuf>,
    /// The pods' bridge.
    pub bridge: String,
    /// The node's address (its InternalIP), where the kubelet's server
    /// (logs, exec) listens, in the kubelet's own network namespace. The
    /// default keeps that server off every network but loopback.
    pub address: IpAddr,
    /// The port of the kubelet's server.
    pub port: u16,
    /// How often the node's Lease is renewed.
    pub heartbeat: Duration,
    /// Pods the node takes.
    pub max_pods: u32,
    /// The first delay before a crashed container starts again; it doubles
    /// up to `restart_backoff_max`.
    pub restart_backoff: Duration,
    /// See `restart_backoff`.
    pub restart_backoff_max: Duration,
    /// A container that ran this long before it ended starts again after
    /// the first delay: its back-off starts over.
    pub restart_backoff_reset: Duration,
    /// Before it stops a pod that is deleted gracefully, the kubelet waits
    /// (within the pod's grace period) for the pod's endpoints to leave
    /// every Service, then this long more, so load balancers that follow
    /// the EndpointSlices (the ingress, the node proxies) stop sending to
    /// it before it stops; `0s` stops at once, as Kubernetes' kubelet does.
    pub termination_drain: Duration,
    /// How often the kubelet retries a pull that failed (it doubles up to
    /// `restart_backoff_max`, as ImagePullBackOff does).
    pub pull_backoff: Duration,
    /// A container log is rotated at this size.
    pub log_max_size: ByteSize,
    /// Log files kept per container, the live one included.
    pub log_max_files: u32,
    /// The cluster's DNS server written into pods' `resolv.conf`; without
    /// one, pods get the node's own `resolv.conf`.
    pub cluster_dns: Option<IpAddr>,
    /// The cluster's DNS domain.
    pub cluster_domain: String,
}

/// Which images the node runs, and when it removes unused ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImagePolicy {
    /// Patterns of images allowed (`127.0.0.1:5000/*`); empty allows all.
    pub allow: Vec<String>,
    /// Disk use (percent of the state directory's filesystem) above which
    /// unused images are removed...
    pub gc_high_percent: u8,
    /// ... until it is below this.
    pub gc_low_percent: u8,
}

impl Default for ImagePolicy {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            gc_high_percent: 85,
            gc_low_percent: 80,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: "/var/lib/orca".into(),
            log_dir: "/var/log/pods".into(),
            pod_cidr: None,
            registries: BTreeMap::new(),
            images: ImagePolicy::default(),
            cgroup_parent: "orca".into(),
            runc: "runc".into(),
            monitor: None,
            bridge: "orca0".into(),
            address: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            port: 10250,
            heartbeat: Duration(std::time::Duration::from_secs(10)),
            max_pods: 110,
            restart_backoff: Duration(std::time::Duration::from_secs(10)),
            restart_backoff_max: Duration(std::time::Duration::from_secs(300)),
            restart_backoff_reset: Duration(std::time::Duration::from_secs(600)),
            pull_backoff: Duration(std::time::Duration::from_secs(10)),
            termination_drain: Duration(std::time::Duration::from_secs(1)),
            log_max_size: ByteSize(10 << 20),
            log_max_files: 5,
            cluster_dns: None,
            cluster_domain: "cluster.local".into(),
        }
    }
}

impl ComponentConfig for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.state_dir.is_absolute() {
            return Err(ConfigError::invalid(
                "state_dir",
                "must be an absolute path",
            ));
        }
        if !self.log_dir.is_absolute() {
            return Err(ConfigError::invalid("log_dir", "must be an absolute path"));
        }
        if self.cgroup_parent.trim_matches('/').is_empty() {
            return Err(ConfigError::invalid(
                "cgroup_parent",
                "must name a cgroup (such as orca), not the root",
            ));
        }
        if self.bridge.is_empty() || self.bridge.len() > 15 {
            return Err(ConfigError::invalid(
                "bridge",
                "must be 1 to 15 characters, a link name",
            ));
        }
        if self.heartbeat.0.is_zero() {
            return Err(ConfigError::invalid("heartbeat", "must be above zero"));
        }
        if self.restart_backoff.0 > self.restart_backoff_max.0 {
            return Err(ConfigError::invalid(
                "restart_backoff",
                "must not exceed restart_backoff_max",
            ));
        }
        if self.log_max_files == 0 {
            return Err(ConfigError::invalid("log_max_files", "must be at least 1"));
        }
        if self.log_max_size.0 < 1024 {
            return Err(ConfigError::invalid(
                "log_max_size",
                "must be at least 1KiB",
            ));
        }
        let gc = &self.images;
        if gc.gc_high_percent > 100 || gc.gc_low_percent > gc.gc_high_percent {
            return Err(ConfigError::invalid(
                "images.gc_low_percent",
                "must be at most images.gc_high_percent, which is at most 100",
            ));
        }
        for (registry, settings) in &self.registries {
            for mirror in &settings.mirrors {
                if !(mirror.starts_with("http://") || mirror.starts_with("https://")) {
                    return Err(ConfigError::invalid(
                        format!("registries.{registry}.mirrors"),
                        format!("{mirror:?} must be a URL starting with http:// or https://"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubelet.yaml");
        std::fs::write(&path, yaml).unwrap();
        orca_core::config::load(Some(&path), |_| {})
    }

    #[test]
    fn the_documented_keys_load_as_written() {
        let config = load(
            r#"
state_dir: /var/lib/orca
log_dir: /var/log/pods
pod_cidr: 10.244.1.0/24
registries:
  docker.io: {mirrors: ["http://127.0.0.1:5000"]}
  127.0.0.1:5000: {insecure: true}
images:
  allow: ["127.0.0.1:5000/*", "docker.io/library/*"]
"#,
        )
        .unwrap();
        assert_eq!(config.pod_cidr.unwrap().to_string(), "10.244.1.0/24");
        assert!(config.registries["127.0.0.1:5000"].insecure);
        assert_eq!(
            config.registries["docker.io"].mirrors,
            ["http://127.0.0.1:5000"]
        );
        assert_eq!(config.images.allow.len(), 2);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = load("state_dirr: /x\n").unwrap_err().to_string();
        assert!(err.contains("state_dirr"), "{err}");
        let err = load("state_dir: relative\n").unwrap_err().to_string();
        assert!(err.contains("state_dir: must be an absolute path"), "{err}");
        let err = load("registries: {docker.io: {mirrors: [\"127.0.0.1:5000\"]}}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("registries.docker.io.mirrors"), "{err}");
        let err = load("pod_cidr: 10.244.1.7/24\n").unwrap_err().to_string();
        assert!(err.contains("not a network address"), "{err}");
    }
}
