//! The netlink encoder against the running kernel, in a network namespace
//! this test creates: what it writes reads back with `nft`, a refused
//! transaction names the operation and changes nothing. Needs root,
//! iproute2 and nftables.

use std::path::Path;

use orca_proxy::nftables::Kernel;
use orca_proxy::nftables::proxier::{Options, skeleton};
use orca_proxy::nftables::ruleset::{Chain, Expr, Family, Op, Verdict};
use orca_testkit::netns::{Netns, require_root};

/// `nft ARGS` inside `ns`: whether it succeeded, and its output.
fn nft(ns: &Netns, args: &[&str]) -> (bool, String) {
    let mut cmd = vec!["nft"];
    cmd.extend_from_slice(args);
    let out = ns.exec(&cmd);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_skeleton_reads_back_and_a_refused_transaction_changes_nothing() {
    require_root("the netlink tests (network namespaces, nftables)");
    let ns = Netns::new(format!("orca-{}-netlink", std::process::id()));
    for family in [Family::V4, Family::V6] {
        let mut kernel = Kernel::open(Some(Path::new(&ns.path())), family).expect("netlink");
        let mut ops = vec![Op::AddTable];
        ops.extend(skeleton(&Options::default(), family));
        kernel.apply(&ops).expect("the kernel takes the skeleton");
        let (ok, json) = nft(&ns, &["-j", "list", "table", family.name(), "orca"]);
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
        let (_, text) = nft(&ns, &["list", "table", family.name(), "orca"]);
        assert!(!text.contains("half-done"), "{text}");

        // The socket still works after a refusal.
        kernel
            .apply(&[Op::AddChain(Chain {
                name: "after".into(),
                base: None,
            })])
            .expect("a good transaction after a bad one");

        kernel.cleanup().expect("cleanup");
        let (ok, _) = nft(&ns, &["list", "table", family.name(), "orca"]);
        assert!(!ok, "the table is gone");
        kernel.cleanup().expect("cleanup of nothing is fine");
    }
}
