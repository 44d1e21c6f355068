//! The local cluster of `orca up`: etcd, masters and nodes on one machine,
//! each node in a network namespace of its own (as kind gives each node a
//! container), joined by a bridge in a namespace of the cluster's, the hub.
//!
//! Every name, address and path follows from the [`Plan`] (the cluster's
//! name, its size, its state directory), and the plan is written to the
//! state directory before anything is made, with every process as it
//! starts, so `orca down` finds all of it, also after `orca up` crashed.

pub mod client;
pub mod network;
pub mod pki;
pub mod processes;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The hub's bridge network, where etcd, the masters and every node's
/// `eth0` have their addresses. It exists only inside the cluster's
/// namespaces: the host has no route to it, and no route leads out of it.
pub const NODE_NETWORK: (Ipv4Addr, u8) = (Ipv4Addr::new(172, 30, 0, 0), 24);
/// The hub bridge's own address, the first on it: connections from the
/// hub's processes start from it.
pub const HUB_ADDRESS: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
/// The pod ranges: node `i` gets `10.244.i.0/24`.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The ClusterIP range (the masters' default).
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 12);
/// The port of each master's ingress listener.
pub const INGRESS_PORT: u16 = 80;
/// The port of each master's and node's admin server (/metrics, /healthz).
pub const ADMIN_PORT: u16 = 9090;
/// The port of each node's log shipper's admin server.
pub const SHIPPER_ADMIN_PORT: u16 = 9902;
/// etcd's client port on each member's address.
pub const ETCD_PORT: u16 = 2379;

/// What a local cluster is made of; everything else is derived from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Prefixes the namespaces (`NAME-hub`, `NAME-node-1`) and cgroups.
    pub name: String,
    /// The number of nodes.
    pub nodes: u8,
    /// The number of masters; more than one gets three etcd members.
    pub masters: u8,
    /// Where configurations, logs, data and the record of processes live.
    pub state: PathBuf,
}

impl Plan {
    /// Checks the sizes and the name.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=100).contains(&self.nodes),
            "--nodes {}: a local cluster has 1 to 100 nodes",
            self.nodes
        );
        anyhow::ensure!(
            (1..=5).contains(&self.masters),
            "--masters {}: a local cluster has 1 to 5 masters",
            self.masters
        );
        anyhow::ensure!(
            !self.name.is_empty()
                && self.name.len() <= 32
                && self
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "--name {:?}: expected 1 to 32 letters, digits or dashes",
            self.name
        );
        Ok(())
    }

    /// The file the plan and the processes are recorded in.
    pub fn record_path(state: &Path) -> PathBuf {
        state.join("cluster.json")
    }

    /// The hub's network namespace: the bridge, etcd and the masters.
    pub fn hub_netns(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}-hub", self.name))
    }

    /// Node `i`'s name (from 1), as it registers.
    pub fn node_name(&self, i: u8) -> String {
        format!("node-{i}")
    }

    /// Node `i`'s network namespace.
    pub fn node_netns(&self, i: u8) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}-node-{i}", self.name))
    }

    /// Node `i`'s directory: its configurations, kubelet state and pod logs.
    pub fn node_dir(&self, i: u8) -> PathBuf {
        self.state.join(format!("node-{i}"))
    }

    /// Node `i`'s address on the hub's bridge (its InternalIP).
    pub fn node_ip(&self, i: u8) -> Ipv4Addr {
        Ipv4Addr::new(172, 30, 0, 100 + i)
    }

    /// Node `i`'s pod range.
    pub fn pod_cidr(&self, i: u8) -> (Ipv4Addr, u8) {
        (Ipv4Addr::new(10, 244, i, 0), 24)
    }

    /// Master `i`'s address (from 1): its ingress listener and admin server.
    pub fn master_ip(&self, i: u8) -> Ipv4Addr {
        Ipv4Addr::new(172, 30, 0, 10 + i)
    }

    /// The number of etcd members: three when there are several masters,
    /// so the loss of one keeps a quorum.
    pub fn members(&self) -> u8 {
        if self.masters > 1 { 3 } else { 1 }
    }

    /// etcd member `i`'s address (from 1).
    pub fn etcd_ip(&self, i: u8) -> Ipv4Addr {
        Ipv4Addr::new(172, 30, 0, 1 + i)
    }

    /// Every member's client URL, comma-separated, as `--etcd` takes them.
    pub fn etcd_endpoints(&self) -> String {
        (1..=self.members())
            .map(|i| format!("https://{}:{ETCD_PORT}", self.etcd_ip(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The cgroup under which node `i`'s pods run.
    pub fn cgroup_parent(&self, i: u8) -> String {
        format!("{}-node-{i}", self.name)
    }

    /// etcd's data: a tmpfs, one directory per member.
    pub fn etcd_data(&self) -> PathBuf {
        self.state.join("etcd")
    }

    /// The certificates' directory.
    pub fn pki(&self) -> PathBuf {
        self.state.join("pki")
    }

    /// Where the log shipper of node `i` delivers (a JSON-lines file).
    pub fn shipped(&self, i: u8) -> PathBuf {
        self.state.join("shipped").join(format!("node-{i}.jsonl"))
    }

    /// The processes' logs.
    pub fn logs(&self) -> PathBuf {
        self.state.join("logs")
    }
}

/// The plan and every process started for it, as `cluster.json` holds them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// What was planned.
    pub plan: Plan,
    /// Every process started, in order.
    pub processes: Vec<processes::Started>,
}

impl Record {
    /// Reads the record of the cluster whose state directory is `state`.
    pub fn load(state: &Path) -> anyhow::Result<Self> {
        let path = Plan::record_path(state);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{}: no cluster recorded there (is --state right?)",
                path.display()
            )
        })?;
        serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: not a cluster record ({e}); remove what it names by hand",
                path.display()
            )
        })
    }

    /// Writes the record atomically (a temporary file renamed over it), so
    /// a crash leaves the old record or the new, never half of one.
    pub fn save(&self) -> anyhow::Result<()> {
        let path = Plan::record_path(&self.plan.state);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("a record serialises");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }
}

/// Writes `value` as JSON (which YAML readers take) to `path`.
pub fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).expect("a JSON value serialises");
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
