//! The netlink encoder against the running kernel, in a network namespace
//! this test creates: what it writes reads back with `nft`, a refused
//! transaction names the operation and changes nothing. Needs root,
//! iproute2 and nftables.

use std::process::Command;

use orca_proxy::nftables::Kernel;
use orca_proxy::nftables::proxier::{Options, skeleton};
use orca_proxy::nftables::ruleset::{Chain, Expr, Family, Op, Verdict};

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("orca-{}-{tag}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("the netlink tests need iproute2 (ip)");
        assert!(
            out.status.success(),
            "ip netns add (the netlink tests need root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Netns(name)
    }

    fn path(&self) -> std::path::PathBuf {
        format!("/run/netns/{}", self.0).into()
    }

    fn nft(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft"])
            .args(args)
            .output()
            .expect("the netlink tests need nftables (nft)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

#[test]
fn the_skeleton_reads_back_and_a_refused_transaction_changes_nothing() {
    let ns = Netns::new("netlink");
    for family in [Family::V4, Family::V6] {
        let mut kernel = Kernel::open(Some(&ns.path()), family).expect("netlink");
        let mut ops = vec![Op::AddTable];
        ops.extend(skeleton(&Options::default(), family));
        kernel.apply(&ops).expect("the kernel takes the skeleton");
        let (ok, json) = ns.nft(&["-j", "list", "table", family.name(), "orca"]);
        assert!(ok, "nft lists the table");
        let json: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        let chains: Vec<&str> = json["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["chain"]["name"].as_str())
            .collect();
        for want in [
            "services",
            "nat-prerouting",
            "filter-forward",
            "reject-chain",
        ] {
            assert!(chains.contains(&want), "{want} in {chains:?}");
        }

        // The second operation is refused, so the first is not applied.
        let err = kernel
            .apply(&[
                Op::AddChain(Chain {
                    name: "half-done".into(),
                    base: None,
                }),
                Op::AddRule {
                    chain: "no-such-chain".into(),
                    exprs: vec![Expr::Verdict(Verdict::Accept)],
                },
            ])
            .expect_err("a rule in a missing chain is refused");
        assert!(
            err.to_string().contains("add rule to no-such-chain"),
            "{err}"
        );
        let (_, text) = ns.nft(&["list", "table", family.name(), "orca"]);
        assert!(!text.contains("half-done"), "{text}");

        // The socket still works after a refusal.
        kernel
            .apply(&[Op::AddChain(Chain {
                name: "after".into(),
                base: None,
            })])
            .expect("a good transaction after a bad one");

        kernel.cleanup().expect("cleanup");
        let (ok, _) = ns.nft(&["list", "table", family.name(), "orca"]);
        assert!(!ok, "the table is gone");
        kernel.cleanup().expect("cleanup of nothing is fine");
    }
}
