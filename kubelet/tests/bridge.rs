//! The node's pod bridge (and the local cluster's hub bridge, made the same
//! way) in a network namespace the test creates: its hardware address is
//! its own, so it stays when ports come and go.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use orca_kubelet::network::{connect, ensure_bridge};
use orca_testkit::netns::{Netns, require_root};

/// `ip -n NETNS ARGS`, which must succeed; its output.
fn ip(netns: &Netns, args: &[&str]) -> String {
    let name = netns.path().trim_start_matches("/run/netns/").to_string();
    let out = Command::new("ip")
        .args(["-n", &name])
        .args(args)
        .output()
        .expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The hardware address of link `name`.
fn mac(netns: &Netns, name: &str) -> String {
    let shown = ip(netns, &["-br", "link", "show", name]);
    shown
        .split_whitespace()
        .nth(2)
        .expect("a hardware address")
        .to_string()
}

#[tokio::test]
async fn a_bridge_keeps_its_address_when_its_ports_come_and_go() {
    require_root("a bridge in a network namespace");
    let netns = Netns::new(format!("orca-bridge-{}", std::process::id()));
    let handle = connect(Some(Path::new(&netns.path()))).expect("netlink in the namespace");
    let gateway = Ipv4Addr::new(10, 244, 9, 1);
    ensure_bridge(&handle, "orca0", gateway)
        .await
        .expect("the bridge");
    let own = "02:6f:0a:f4:09:01";
    assert_eq!(mac(&netns, "orca0"), own);
    // Ports with lower addresses than the bridge's: a bridge without an
    // address of its own would take the lowest, then another when it goes.
    for i in 1..=3 {
        let port = format!("v{i}");
        let address = format!("02:00:00:00:00:0{i}");
        let peer = format!("p{i}");
        ip(
            &netns,
            &[
                "link", "add", &port, "address", &address, "type", "veth", "peer", "name", &peer,
            ],
        );
        ip(&netns, &["link", "set", &port, "master", "orca0"]);
    }
    assert_eq!(mac(&netns, "orca0"), own);
    ip(&netns, &["link", "del", "v1"]);
    assert_eq!(mac(&netns, "orca0"), own);
    // Made again (a kubelet restarting): the same bridge, untouched.
    ensure_bridge(&handle, "orca0", gateway)
        .await
        .expect("the bridge again");
    assert_eq!(mac(&netns, "orca0"), own);
}
