//! The local cluster's network, all through netlink: the hub namespace
//! with its bridge (`br0`) holding the addresses of etcd and the masters,
//! a namespace per node whose `eth0` is a veth pair's end on that bridge,
//! and host-gw routes (each node's pod range via that node's address) in
//! the hub and in every node, so every pod reaches every other pod and
//! the masters reach every pod. The pod and service ranges end in
//! blackholes or on `lo` in every namespace, and no namespace has a
//! default route: nothing is routed to the host's network.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::Context;
use orca_kubelet::network::{
    connect, create_netns, ensure_address, ensure_bridge, link_index, remove_netns,
};
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::{HUB_ADDRESS, NODE_NETWORK, Plan, SERVICE_CIDR};

/// The hub's bridge.
const BRIDGE: &str = "br0";

fn netlink(what: impl FnOnce() -> String) -> impl FnOnce(rtnetlink::Error) -> anyhow::Error {
    move |e| anyhow::anyhow!("{}: {e}", what())
}

async fn up(handle: &Handle, name: &str) -> anyhow::Result<u32> {
    let index = link_index(handle, name)
        .await?
        .with_context(|| format!("link {name} is missing"))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink(|| format!("setting {name} up")))?;
    Ok(index)
}

/// Adds a route unless one to the same destination exists (a second run
/// over a half-made cluster meets its own routes).
async fn add_route(
    handle: &Handle,
    route: rtnetlink::packet_route::route::RouteMessage,
    what: &str,
) -> anyhow::Result<()> {
    match handle.route().add(route).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        Err(e) => Err(anyhow::anyhow!("adding the route {what}: {e}")),
    }
}

fn blackhole(prefix: (Ipv4Addr, u8)) -> rtnetlink::packet_route::route::RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(prefix.0, prefix.1)
        .kind(RouteType::BlackHole)
        .build()
}

/// The routes to every node's pods but `except`'s, via their addresses.
async fn pod_routes(handle: &Handle, plan: &Plan, except: Option<u8>) -> anyhow::Result<()> {
    for j in (1..=plan.nodes).filter(|j| Some(*j) != except) {
        let (net, bits) = plan.pod_cidr(j);
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(net, bits)
            .gateway(plan.node_ip(j))
            .build();
        add_route(
            handle,
            route,
            &format!("{net}/{bits} via {}", plan.node_ip(j)),
        )
        .await?;
    }
    // A pod address no node holds ends here rather than anywhere else.
    add_route(
        handle,
        blackhole((Ipv4Addr::new(10, 244, 0, 0), 16)),
        "blackhole 10.244.0.0/16",
    )
    .await
}

/// Writes a sysctl under /proc/sys/net as seen from `netns`: those files
/// answer for the namespace of the thread that opens them.
fn net_sysctl(netns: &Path, key: &str, value: &str) -> anyhow::Result<()> {
    let netns = netns.to_path_buf();
    let key = key.to_string();
    let value = value.to_string();
    std::thread::spawn(move || -> anyhow::Result<()> {
        let ns = std::fs::File::open(&netns)
            .with_context(|| format!("network namespace {}", netns.display()))?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("joining {}", netns.display()))?;
        let path = format!("/proc/sys/net/{}", key.replace('.', "/"));
        std::fs::write(&path, &value).with_context(|| format!("setting net.{key}={value}"))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the sysctl thread panicked"))?
}

/// Makes the hub: its namespace, `lo`, the bridge with the addresses of
/// etcd's members and the masters, and the routes to the nodes' pods.
pub async fn make_hub(plan: &Plan) -> anyhow::Result<()> {
    let netns = plan.hub_netns();
    if !netns.exists() {
        create_netns(&netns).with_context(|| format!("creating {}", netns.display()))?;
    }
    let hub = connect(Some(&netns))?;
    up(&hub, "lo").await?;
    ensure_bridge(&hub, BRIDGE, HUB_ADDRESS).await?;
    let bridge = up(&hub, BRIDGE).await?;
    let bits = NODE_NETWORK.1;
    ensure_address(&hub, bridge, HUB_ADDRESS, bits).await?;
    for i in 1..=plan.members() {
        ensure_address(&hub, bridge, plan.etcd_ip(i), bits).await?;
    }
    for i in 1..=plan.masters {
        ensure_address(&hub, bridge, plan.master_ip(i), bits).await?;
    }
    pod_routes(&hub, plan, None).await?;
    add_route(
        &hub,
        blackhole(SERVICE_CIDR),
        "blackhole for the service range",
    )
    .await?;
    Ok(())
}

/// Makes node `i`'s namespace: a veth pair whose hub end joins the bridge
/// and whose other end is the node's `eth0` with the node's address; `lo`;
/// host-gw routes to the other nodes' pods; the service range on `lo` (a
/// connection from the node to a ClusterIP needs a route to start, and the
/// node proxy's output hook translates it before it goes anywhere); and
/// forwarding on, since the node routes for its pods.
pub async fn make_node(plan: &Plan, i: u8) -> anyhow::Result<()> {
    let netns = plan.node_netns(i);
    if !netns.exists() {
        create_netns(&netns).with_context(|| format!("creating {}", netns.display()))?;
    }
    let hub = connect(Some(&plan.hub_netns()))?;
    let node = connect(Some(&netns))?;
    let outer = format!("node-{i}");
    let inner = format!("eth-node-{i}");
    if link_index(&node, "eth0").await?.is_none() {
        // A pair left from an interrupted run is made again.
        orca_kubelet::network::remove_link(&hub, &outer).await?;
        hub.link()
            .add(LinkVeth::new(&outer, &inner).build())
            .execute()
            .await
            .map_err(netlink(|| format!("creating veth {outer}")))?;
        let ns = std::fs::File::open(&netns)?;
        hub.link()
            .set(
                LinkUnspec::new_with_name(&inner)
                    .setns_by_fd(ns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink(|| format!("moving {inner} into node-{i}")))?;
        let index = link_index(&node, &inner)
            .await?
            .with_context(|| format!("{inner} is not in node-{i}'s namespace"))?;
        node.link()
            .set(LinkUnspec::new_with_index(index).name("eth0").build())
            .execute()
            .await
            .map_err(netlink(|| format!("renaming node-{i}'s link to eth0")))?;
    }
    let bridge = link_index(&hub, BRIDGE)
        .await?
        .context("the hub's bridge is missing")?;
    let outer_index = link_index(&hub, &outer)
        .await?
        .with_context(|| format!("veth {outer} is missing"))?;
    hub.link()
        .set(
            LinkUnspec::new_with_index(outer_index)
                .controller(bridge)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(netlink(|| format!("joining {outer} to {BRIDGE}")))?;
    let eth0 = up(&node, "eth0").await?;
    ensure_address(&node, eth0, plan.node_ip(i), NODE_NETWORK.1).await?;
    let lo = up(&node, "lo").await?;
    pod_routes(&node, plan, Some(i)).await?;
    let services = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(SERVICE_CIDR.0, SERVICE_CIDR.1)
        .output_interface(lo)
        .build();
    add_route(&node, services, "for the service range on lo").await?;
    net_sysctl(&netns, "ipv4.ip_forward", "1")?;
    Ok(())
}

/// Removes the namespaces of `plan`; deleting a namespace deletes its
/// links, routes and nftables tables with it. Gone already is fine.
pub fn remove(plan: &Plan) -> Vec<String> {
    let mut failed = Vec::new();
    let mut spaces: Vec<_> = (1..=plan.nodes).map(|i| plan.node_netns(i)).collect();
    spaces.push(plan.hub_netns());
    for netns in spaces {
        if let Err(e) = remove_netns(&netns) {
            failed.push(format!("removing {}: {e}", netns.display()));
        }
    }
    failed
}
