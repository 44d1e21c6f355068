//! The node proxy: Services and their ready endpoints turned into an
//! nftables table (`ip orca`) so packets to a ClusterIP or a NodePort reach
//! a pod with no process in the path.
//!
//! - [`source`]: what the rules need of Services and EndpointSlices;
//! - [`ruleset`]: the objects as data, and the in-memory model tests use;
//! - [`proxier`]: what each Service needs and the smallest transaction to
//!   get there;
//! - [`netlink`]: the transaction encoded for the kernel;
//! - [`conntrack`]: UDP flows to departed endpoints forgotten;
//! - [`runner`]: watch events → bounded-frequency syncs, with metrics.

pub mod conntrack;
pub mod netlink;
pub mod proxier;
pub mod ruleset;
pub mod runner;
pub mod source;

use ruleset::{Family, Op, Sink};

/// Orca's table, in the `ip` family and, where the cluster has IPv6, `ip6`.
pub const TABLE: &str = "orca";

/// One of Orca's tables in the kernel, through netlink.
pub struct Kernel {
    netlink: netlink::Netlink,
    conntrack: conntrack::Conntrack,
    family: Family,
}

impl Kernel {
    /// Opens netlink for the table of `family` in the network namespace at
    /// `netns`, or in the process's own.
    pub fn open(netns: Option<&std::path::Path>, family: Family) -> std::io::Result<Self> {
        Ok(Kernel {
            netlink: netlink::Netlink::open(netns)?,
            conntrack: conntrack::Conntrack::open(netns)?,
            family,
        })
    }

    /// Removes Orca's table and everything in it, if it exists.
    pub fn cleanup(&mut self) -> Result<(), netlink::Error> {
        self.apply(&[Op::AddTable, Op::DeleteTable])
    }

    /// Applies `ops` as one transaction.
    pub fn apply(&mut self, ops: &[Op]) -> Result<(), netlink::Error> {
        let mut batch = self.netlink.batch(self.family);
        for op in ops {
            batch.push(TABLE, op);
        }
        self.netlink.commit(batch)
    }
}

/// A transaction on Orca's table, encoded as its operations arrive.
pub struct Transaction(netlink::Batch);

impl Transaction {
    /// Bytes encoded so far.
    pub fn bytes(&self) -> usize {
        self.0.len()
    }
}

impl Sink for Transaction {
    fn push(&mut self, op: Op) {
        self.0.push(TABLE, &op);
    }
}

impl runner::Backend for Kernel {
    type Transaction = Transaction;

    fn begin(&mut self) -> Transaction {
        Transaction(self.netlink.batch(self.family))
    }

    fn commit(&mut self, tx: Transaction) -> Result<(), String> {
        self.netlink.commit(tx.0).map_err(|e| e.to_string())
    }

    fn forget_udp(&mut self, flows: &[proxier::UdpFlow]) -> Result<usize, String> {
        self.conntrack
            .forget_udp(self.family, flows)
            .map_err(|e| format!("conntrack: {e}"))
    }
}
