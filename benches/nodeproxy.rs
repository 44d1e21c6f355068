//! The node proxy against the real kernel: full syncs, one endpoint change
//! among 10k Services, peak RSS, and ClusterIP traffic with 10 vs 10k
//! Services programmed.
//!
//! Run (root; needs `ip`, `wrk` and `nginx`, e.g. `apt-get install iproute2
//! wrk nginx-light`):
//!
//! ```text
//! sudo cargo bench -p orca-benches --bench nodeproxy
//! ```
//!
//! Everything happens in network namespaces the bench creates
//! (`orca-bench-<pid>-{sync,small,large,pod}`) and deletes at the end, also
//! on a panic; namespaces left by a killed run are deleted by the next one.
//! The root namespace is never touched: veth pairs are created inside the
//! namespaces, and the only traffic is wrk in a node namespace to the
//! ClusterIP, DNATed to nginx in the pod namespace.
//!
//! - Full sync: a fresh `Proxier` (IPv4, `--cluster-cidr 10.244.0.0/16`,
//!   default service CIDR) plans 1k and 10k Services x 10 endpoints (TCP,
//!   ClusterIP only) into an empty table; plan and encode (the diff,
//!   streamed into the netlink batch as it is planned) and commit (send
//!   plus the kernel's verdict) are timed apart, as is a full resync over
//!   the 10k table already there (what follows a failed commit).
//! - Endpoint change with 10k Services present, timed from plan to the
//!   kernel's ack, 100 times each: a pod replaced (one endpoint's address
//!   changes: element updates only) and a pod turning unready and ready
//!   again (the endpoint count changes within its size class: element
//!   updates only).
//! - RSS: VmHWM and VmRSS from /proc/self/status before and after the 10k
//!   sync. They include the bench's own input (10k `ServicePort`s, ~12 MiB).
//! - ClusterIP: two node namespaces, one with 10 Services and one with 10k
//!   (10 first, then 9990 added incrementally), each joined by a veth to
//!   the same pod namespace (10.244.0.0/24 and 10.244.1.0/24; the service
//!   CIDR routed into the veth). nginx there (one process, `return 200`,
//!   on 10 ports: the target Service's 10 endpoints) answers both. The same
//!   `wrk -t1 -c32 -d5s` against the same ClusterIP runs from each node in
//!   turn, 5 rounds (alternating which goes first), once with keep-alive
//!   (NAT rules see only the first packet of the 32 connections) and once
//!   with `Connection: close` (a new connection, so a NAT lookup, per
//!   request). Two namespaces rather than reprogramming one: switching
//!   between 10 and 10k Services takes ~20 s, and rounds that alternate
//!   are what makes the ratio readable beside a build. Besides req/s and
//!   latency, wrk's and nginx's CPU time per request (user + system, where
//!   the netfilter work of their packets is accounted), which waiting for
//!   a CPU does not inflate.
//!
//! Latest result, 2026-11-30, one run on this 2-core machine (nothing
//! else running), kernel 6.18, with shared pick chains per size class over
//! one node-wide endpoints map and the sync streamed into the batch:
//!
//! | what                                   | measured                          | target   |
//! |----------------------------------------|-----------------------------------|----------|
//! | full sync 1k x 10                      | 0.11 s (plan and encode 21 ms, commit 94 ms) | - |
//! | full sync 10k x 10                     | 1.54 s (plan and encode 0.24 s, commit 1.30 s; 13.6 MiB batch) | < 2 s |
//! | full resync over the 10k table         | 1.65 s                            | -        |
//! | RSS after the 10k sync (this process)  | peak 35.1 MiB, then 21.6 MiB (8.6 MiB of it the input) | see below |
//! | endpoint change at 10k: pod replaced   | median 0.25 ms, p99 4.0 ms (plan and encode 38 µs, commit 0.22 ms) | < 5 ms |
//! | endpoint change at 10k: unready/ready  | median 0.25 ms, p99 0.29 ms       | < 5 ms   |
//! | 9990 Services added / removed at once  | 1.4 s / 0.7 s                     | -        |
//! | ClusterIP keep-alive, 10k/10 req/s     | 1.03 (per round 0.98 to 1.23); CPU/req 0.93 | >= 0.95 |
//! | ClusterIP Connection: close, 10k/10    | 1.00 (per round 0.89 to 1.10); CPU/req 0.99 | - |
//!
//! The run before (operation list built whole before encoding): peak RSS
//! of this process 83.7 MiB; a run beside two builds read pod replaced at a
//! median of 1.2 ms, p99 8.6 ms: the tails are the machine's.
//!
//! The RSS target is the node proxy process's: `benches/load/nodeproxy_rss.sh`
//! runs `orca node-proxy` against etcd with 10k Services and measured 40.0
//! MiB once synced, 57.1 MiB at the peak of the first sync (105.3 MiB
//! before the sync was streamed into the batch; the daemon gives a full
//! sync's freed memory back, this bench does not).
//!
//! Earlier designs, same bench: a map per service port, 10.1 s full sync
//! and 30.7 ms per count change; one endpoints map looked up by every
//! service chain, 20.7 s and 64 ms.
//!
//! The per-packet cost does not grow with the Services: an established
//! connection never reaches the NAT chains, and a new one costs a verdict
//! map lookup and on average at most four draws. An earlier `perf record
//! -a` over one wrk run each put nf_tables' evaluation at ~1% of CPU
//! samples with keep-alive and ~1.5% with Connection: close, for 10 and
//! 10k alike; the keep-alive ratio moves between runs (0.93 in the run
//! before this one, same table) while the CPU per request stays level.
//!
//! Why the shape, from where the kernel spends a commit:
//! - nf_tables checks each element added to a map against every rule bound
//!   to it (`nft_add_set_elem`) and walks every element when a rule binds
//!   (`nf_tables_bind_set`): the endpoints map is bound only by the pick
//!   chains (9 rules per class in use), never by the 10k service chains.
//! - nf_tables finds sets by name in a linked list (`nft_set_lookup`), once
//!   per new set, per element message and per rule bound: no set per
//!   service (but for session affinity), so 10k Services cost no
//!   quadratic name lookups.
//! - Any new rule with a NAT or verdict expression, and any verdict-map
//!   element with a goto, makes the commit validate the whole table
//!   (`nft_table_validate`): ~30 ms at 10k Services. An endpoint change
//!   touches neither; adding a Service or moving one to another class does.
//! - RSS: a full sync holds its 14 MiB batch and one Service's footprint
//!   at a time beside the proxier's state; the operations are encoded as
//!   they are planned, never listed whole.

use std::collections::HashMap;
use std::error::Error;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use orca_proxy::nftables::Kernel;
use orca_proxy::nftables::proxier::{Endpoint, Options, Proto, Proxier, ServiceKey, ServicePort};
use orca_proxy::nftables::ruleset::Family;
use orca_proxy::nftables::runner::Backend;

type Result<T> = std::result::Result<T, Box<dyn Error>>;
type Desired = HashMap<ServiceKey, Vec<ServicePort>>;

/// Endpoints per Service.
const ENDPOINTS: u32 = 10;
/// The target Service's ClusterIP.
const TARGET_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The target's endpoint address in the kernel benches (the ClusterIP
/// benches use the pod's address on each node's veth).
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
/// nginx listens on FIRST_PORT..FIRST_PORT + ENDPOINTS.
const FIRST_PORT: u16 = 8080;
/// Repetitions of each endpoint change.
const CHANGES: usize = 100;
const WRK_ARGS: [&str; 4] = ["-t1", "-c32", "-d5s", "--latency"];
/// wrk runs per number of Services (alternating), for each connection mode.
const ROUNDS: usize = 5;

fn main() -> ExitCode {
    if let Err(missing) = preconditions() {
        eprintln!("nodeproxy bench: {missing}");
        return ExitCode::from(2);
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodeproxy bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Root, `ip`, `wrk` and `nginx`, or what is missing.
fn preconditions() -> std::result::Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Err(format!(
            "must run as root (effective uid is {euid}): it creates network namespaces \
             and programs nftables; run `sudo cargo bench -p orca-benches --bench nodeproxy`"
        ));
    }
    let missing: Vec<&str> = [("ip", "iproute2"), ("wrk", "wrk"), ("nginx", "nginx-light")]
        .into_iter()
        .filter(|(tool, _)| find_tool(tool).is_none())
        .map(|(_, package)| package)
        .collect();
    if !missing.is_empty() {
        let tools: Vec<&str> = ["ip", "wrk", "nginx"]
            .into_iter()
            .filter(|t| find_tool(t).is_none())
            .collect();
        return Err(format!(
            "missing {} in PATH: apt-get install -y {}",
            tools.join(", "),
            missing.join(" ")
        ));
    }
    Ok(())
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn run() -> Result<()> {
    remove_stale_namespaces();
    let pid = std::process::id();
    println!(
        "nodeproxy bench: pid {pid}, {} CPUs, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!("RSS at start: {}", rss());
    kernel_bench(pid)?;
    clusterip_bench(pid)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Programming the kernel.

fn kernel_bench(pid: u32) -> Result<()> {
    let ns = Netns::add(format!("orca-bench-{pid}-sync"))?;
    let mut nl = Kernel::open(Some(&ns.path()), Family::V4)?;

    println!("\n== full sync (fresh table; plan and encode / commit) ==");
    {
        let desired = services(0..1_000);
        let (_, s) = fresh_sync(&mut nl, &desired)?;
        s.print("1k x 10");
    }
    let mut desired = services(0..10_000);
    println!("RSS with the 10k Services' input built: {}", rss());
    let (mut proxier, s) = fresh_sync(&mut nl, &desired)?;
    s.print("10k x 10");
    println!("RSS after the 10k sync: {}", rss());

    proxier.invalidate();
    let s = sync(&mut nl, &mut proxier, &desired, &[])?;
    s.print("10k x 10, full resync over the existing table");

    println!("\n== one endpoint change with 10k Services present (plan to kernel ack) ==");
    let key = key(5_000);
    let original = desired[&key][0].endpoints[3];
    let replaced = SocketAddr::from((Ipv4Addr::new(10, 130, 0, 1), original.addr.port()));
    let mut change = |what: &str, edit: &dyn Fn(usize, &mut Endpoint)| -> Result<()> {
        let mut times = Vec::with_capacity(CHANGES);
        let mut last = None;
        for i in 0..CHANGES {
            edit(
                i,
                &mut desired.get_mut(&key).expect("service")[0].endpoints[3],
            );
            let s = sync(&mut nl, &mut proxier, &desired, std::slice::from_ref(&key))?;
            times.push(s.total());
            last = Some(s);
        }
        print_changes(what, &mut times, last);
        Ok(())
    };
    // Even runs change, odd runs restore: both are real changes.
    change("pod replaced (address change)", &|i, ep| {
        ep.addr = if i % 2 == 0 { replaced } else { original.addr };
    })?;
    change("pod unready / ready (count change)", &|i, ep| {
        ep.ready = i % 2 == 1;
    })?;
    println!("RSS after the endpoint changes: {}", rss());
    Ok(())
}

/// Programs `desired` with a new proxier into an emptied table.
fn fresh_sync(nl: &mut Kernel, desired: &Desired) -> Result<(Proxier, Sync)> {
    nl.cleanup()?;
    let mut proxier = Proxier::new(options(), Family::V4);
    let s = sync(nl, &mut proxier, desired, &[])?;
    assert!(s.full, "a new proxier's first sync is full");
    Ok((proxier, s))
}

fn print_changes(what: &str, times: &mut [Duration], last: Option<Sync>) {
    times.sort();
    let n = times.len();
    let p99 = times[(n * 99).div_ceil(100) - 1];
    print!(
        "{what:<38} n={n} median {} p99 {} max {}",
        fmt(times[n / 2]),
        fmt(p99),
        fmt(times[n - 1])
    );
    if let Some(s) = last {
        print!(
            "  (last: {} rules, {} elements, {} B; plan and encode {} commit {})",
            s.rules,
            s.elements,
            s.bytes,
            fmt(s.plan),
            fmt(s.commit)
        );
    }
    println!();
}

/// One sync's costs.
struct Sync {
    full: bool,
    /// Planning, with the operations encoded into the batch as they come.
    plan: Duration,
    commit: Duration,
    rules: usize,
    elements: usize,
    bytes: usize,
}

impl Sync {
    fn total(&self) -> Duration {
        self.plan + self.commit
    }

    fn print(&self, what: &str) {
        println!(
            "{what:<46} total {:>9}  plan and encode {:>9}  commit {:>9}  ({} rules, {} elements, {:.1} MiB batch)",
            fmt(self.total()),
            fmt(self.plan),
            fmt(self.commit),
            self.rules,
            self.elements,
            self.bytes as f64 / (1 << 20) as f64
        );
    }
}

/// Plans the changes to `changed` (or everything, when the proxier needs a
/// full sync) into a netlink batch and commits it, as the node proxy's loop
/// does.
fn sync(
    nl: &mut Kernel,
    proxier: &mut Proxier,
    desired: &Desired,
    changed: &[ServiceKey],
) -> Result<Sync> {
    let t = Instant::now();
    let mut tx = nl.begin();
    let plan = proxier.plan(
        changed,
        |k| desired.get(k).cloned(),
        || desired.keys().cloned().collect(),
        &mut tx,
    );
    let planned = t.elapsed();
    let bytes = tx.bytes();
    let t = Instant::now();
    if let Err(e) = nl.commit(tx) {
        proxier.invalidate();
        return Err(e.into());
    }
    Ok(Sync {
        full: plan.full,
        plan: planned,
        commit: t.elapsed(),
        rules: plan.rules,
        elements: plan.elements,
        bytes,
    })
}

/// What `orca node-proxy --cluster-cidr 10.244.0.0/16` programs (the
/// service CIDR is its default).
fn options() -> Options {
    Options {
        cluster_cidr: Some((Ipv4Addr::new(10, 244, 0, 0).into(), 16)),
        service_cidr: Some((Ipv4Addr::new(10, 96, 0, 0).into(), 12)),
    }
}

fn key(i: u32) -> ServiceKey {
    ("bench".to_string(), format!("svc-{i:05}"))
}

/// Service `i`: service 0 is the target (ClusterIP 10.96.0.10, endpoints
/// nginx's ports); the others have synthetic pod addresses in 10.128.0.0/15
/// that no traffic is sent to.
fn service(i: u32) -> (ServiceKey, Vec<ServicePort>) {
    let (cluster_ip, addrs): (Ipv4Addr, Vec<SocketAddr>) = if i == 0 {
        (
            TARGET_IP,
            (0..ENDPOINTS as u16)
                .map(|j| SocketAddr::from((POD_IP, FIRST_PORT + j)))
                .collect(),
        )
    } else {
        let base = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * ENDPOINTS;
        (
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 1, 0)) + i),
            (0..ENDPOINTS)
                .map(|j| SocketAddr::from((Ipv4Addr::from(base + j), FIRST_PORT)))
                .collect(),
        )
    };
    let endpoints = addrs
        .into_iter()
        .map(|addr| Endpoint {
            addr,
            ready: true,
            serving: true,
            terminating: false,
            local: false,
        })
        .collect();
    let port = ServicePort {
        cluster_ip: cluster_ip.into(),
        port: 80,
        proto: Proto::Tcp,
        node_port: None,
        affinity: None,
        internal_local: false,
        external_local: false,
        endpoints,
    };
    (key(i), vec![port])
}

fn services(range: std::ops::Range<u32>) -> Desired {
    range.map(service).collect()
}

// ---------------------------------------------------------------------------
// ClusterIP traffic.

fn clusterip_bench(pid: u32) -> Result<()> {
    println!(
        "\n== ClusterIP {TARGET_IP}:80, wrk {} ==",
        WRK_ARGS.join(" ")
    );
    let pod = Netns::add(format!("orca-bench-{pid}-pod"))?;
    ip(&["-n", &pod.name, "link", "set", "lo", "up"])?;
    let small = Node::add(pid, "small", 0, &pod)?;
    let large = Node::add(pid, "large", 1, &pod)?;
    let server = Nginx::start(&pod, pid)?;
    for node in [&small, &large] {
        wait_for_server(node)?;
    }

    let mut small_nl = Kernel::open(Some(&small.ns.path()), Family::V4)?;
    let mut small_proxier = Proxier::new(options(), Family::V4);
    let small_desired = node_services(&small, 0..10);
    sync(&mut small_nl, &mut small_proxier, &small_desired, &[])?;

    let mut nl = Kernel::open(Some(&large.ns.path()), Family::V4)?;
    let mut proxier = Proxier::new(options(), Family::V4);
    let mut desired = node_services(&large, 0..10);
    sync(&mut nl, &mut proxier, &desired, &[])?;
    let added: Vec<ServiceKey> = (10..10_000).map(key).collect();
    desired.extend(node_services(&large, 10..10_000));
    let s = sync(&mut nl, &mut proxier, &desired, &added)?;
    s.print("incremental: 9990 Services added to 10");
    for node in [&small, &large] {
        check_clusterip(node)?;
    }

    for close in [false, true] {
        println!(
            "{}:",
            if close {
                "Connection: close (a new connection per request)"
            } else {
                "keep-alive"
            }
        );
        let mut ratios = Vec::new();
        let mut cpu_ratios = Vec::new();
        let (mut rps_small, mut rps_large) = (Vec::new(), Vec::new());
        for round in 1..=ROUNDS {
            // Alternate which goes first, so drift (a build starting or
            // ending beside the bench) favours neither.
            let (a, b) = if round % 2 == 1 {
                let a = wrk(&small, close, &server)?;
                (a, wrk(&large, close, &server)?)
            } else {
                let b = wrk(&large, close, &server)?;
                (wrk(&small, close, &server)?, b)
            };
            a.print(&format!("round {round}, 10 Services"));
            b.print(&format!("round {round}, 10k Services"));
            ratios.push(b.rps / a.rps);
            if let (Some(x), Some(y)) = (a.cpu_per_request, b.cpu_per_request) {
                cpu_ratios.push(y.as_secs_f64() / x.as_secs_f64());
            }
            rps_small.push(a.rps);
            rps_large.push(b.rps);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        let (small_rps, large_rps) = (median(&mut rps_small), median(&mut rps_large));
        let round_ratio = median(&mut ratios);
        println!(
            "  10k/10: req/s {:.3} (medians {small_rps:.0} / {large_rps:.0}; per round: median \
             {round_ratio:.3}, {:.3} to {:.3}); CPU per request, per round: median {:.3}",
            large_rps / small_rps,
            ratios[0],
            ratios[ratios.len() - 1],
            median(&mut cpu_ratios),
        );
    }

    for k in &added {
        desired.remove(k);
    }
    let s = sync(&mut nl, &mut proxier, &desired, &added)?;
    s.print("incremental: 9990 Services removed");
    check_clusterip(&large)?;
    drop((nl, small_nl));
    drop(server);
    Ok(())
}

/// A node namespace with a veth into the pod namespace: subnet
/// 10.244.<index>.0/24, the node at .1 and the pod at .2; the service CIDR
/// is routed into the veth, the pod reaches the node's subnet directly.
struct Node {
    ns: Netns,
    pod_ip: Ipv4Addr,
}

impl Node {
    fn add(pid: u32, tag: &str, index: u8, pod: &Netns) -> Result<Node> {
        let ns = Netns::add(format!("orca-bench-{pid}-{tag}"))?;
        let node_ip = Ipv4Addr::new(10, 244, index, 1);
        let pod_ip = Ipv4Addr::new(10, 244, index, 2);
        let (node_cidr, pod_cidr) = (format!("{node_ip}/24"), format!("{pod_ip}/24"));
        let pod_if = format!("{tag}0");
        for (ns, args) in [
            (&ns, vec!["link", "set", "lo", "up"]),
            (
                &ns,
                vec![
                    "link", "add", "pod0", "type", "veth", "peer", "name", &pod_if, "netns",
                    &pod.name,
                ],
            ),
            (&ns, vec!["addr", "add", &node_cidr, "dev", "pod0"]),
            (&ns, vec!["link", "set", "pod0", "up"]),
            (&ns, vec!["route", "add", "10.96.0.0/12", "dev", "pod0"]),
            (pod, vec!["addr", "add", &pod_cidr, "dev", &pod_if]),
            (pod, vec!["link", "set", &pod_if, "up"]),
        ] {
            ip(&[&["-n", &ns.name], args.as_slice()].concat())?;
        }
        if index == 0 {
            ip(&[
                "-n",
                &pod.name,
                "route",
                "add",
                "default",
                "via",
                &node_ip.to_string(),
            ])?;
        }
        // Enough source ports for the Connection: close runs (this
        // namespace's own setting).
        in_netns(&ns.path(), || {
            std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65000")
        })??;
        Ok(Node { ns, pod_ip })
    }
}

/// Services `range` as seen from `node`: the target's endpoints are the pod
/// address on that node's veth.
fn node_services(node: &Node, range: std::ops::Range<u32>) -> Desired {
    range
        .map(|i| {
            let (key, mut ports) = service(i);
            if i == 0 {
                for ep in &mut ports[0].endpoints {
                    ep.addr.set_ip(node.pod_ip.into());
                }
            }
            (key, ports)
        })
        .collect()
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}

/// Runs `f` on a thread that entered the network namespace at `ns`.
fn in_netns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    let ns = ns.to_path_buf();
    std::thread::spawn(move || {
        let file = File::open(&ns)?;
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )?;
        Ok(f())
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// One HTTP/1.0 GET; the body if the status is 200.
fn get(addr: SocketAddr) -> io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(io::Error::other(format!("unexpected answer {out:?}"))),
    }
}

/// Waits until nginx answers on every endpoint port.
fn wait_for_server(node: &Node) -> Result<()> {
    let pod_ip = node.pod_ip;
    in_netns(&node.ns.path(), move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        for j in 0..ENDPOINTS as u16 {
            let addr = SocketAddr::from((pod_ip, FIRST_PORT + j));
            loop {
                match get(addr) {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => {
                        return Err(format!("nginx did not answer on {addr}: {e}"));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        Ok(())
    })??;
    Ok(())
}

/// The ClusterIP answers through the DNAT, from every endpoint in a few
/// tries.
fn check_clusterip(node: &Node) -> Result<()> {
    in_netns(&node.ns.path(), || {
        let addr = SocketAddr::from((TARGET_IP, 80));
        for _ in 0..50 {
            let body = get(addr).map_err(|e| format!("GET http://{addr}/: {e}"))?;
            if body != "ok" {
                return Err(format!("GET http://{addr}/: body {body:?}"));
            }
        }
        Ok(())
    })??;
    Ok(())
}

/// What one wrk run printed.
struct Load {
    rps: f64,
    /// CPU time of wrk and nginx per request (user and system, which holds
    /// the netfilter work done in their syscalls and softirqs).
    cpu_per_request: Option<Duration>,
    avg: String,
    p50: String,
    p99: String,
    errors: String,
}

impl Load {
    fn print(&self, what: &str) {
        let cpu = self.cpu_per_request.map_or("?".into(), fmt);
        println!(
            "  {what:<26} {:>7.0} req/s  CPU/req {cpu:>6}  latency avg {:>8} p50 {:>8} p99 {:>8}{}",
            self.rps, self.avg, self.p50, self.p99, self.errors
        );
    }
}

fn wrk(node: &Node, close: bool, server: &Nginx) -> Result<Load> {
    let url = format!("http://{TARGET_IP}/");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.ns.name, "wrk"])
        .args(WRK_ARGS)
        .arg("-s")
        .arg(server.dir.join("cpu.lua"));
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let nginx_before = cpu_time(server.child.id());
    let out = cmd.arg(&url).output()?;
    let nginx_cpu = cpu_time(server.child.id())
        .zip(nginx_before)
        .map(|(after, before)| after - before);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let field = |prefix: &str, n: usize| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().nth(n))
            .unwrap_or("?")
            .to_string()
    };
    let rps: f64 = field("Requests/sec:", 0)
        .parse()
        .map_err(|_| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let mut errors = String::new();
    for prefix in ["Socket errors:", "Non-2xx or 3xx responses:"] {
        if let Some(l) = text.lines().map(str::trim).find(|l| l.starts_with(prefix)) {
            errors.push_str("  [");
            errors.push_str(l);
            errors.push(']');
        }
    }
    let requests: Option<f64> = text
        .lines()
        .map(str::trim)
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok());
    let wrk_cpu: Option<f64> = field("cpu_seconds", 0).parse().ok();
    let cpu_per_request = match (requests, wrk_cpu, nginx_cpu) {
        (Some(n), Some(w), Some(x)) if n > 0.0 => Some(Duration::from_secs_f64((w + x) / n)),
        _ => None,
    };
    Ok(Load {
        rps,
        cpu_per_request,
        avg: field("Latency", 0),
        p50: field("50%", 0),
        p99: field("99%", 0),
        errors,
    })
}

// ---------------------------------------------------------------------------
// Namespaces, nginx, helpers.

/// A network namespace (`ip netns add`), deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn add(name: String) -> Result<Netns> {
        ip(&["netns", "add", &name])?;
        Ok(Netns { name })
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            eprintln!("could not delete network namespace {}: {e}", self.name);
        }
    }
}

/// Deletes `orca-bench-<pid>-*` namespaces whose process is gone (a run
/// killed by a signal cannot clean up after itself).
fn remove_stale_namespaces() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("orca-bench-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("deleting network namespace {name} left by an earlier run");
            drop(Netns { name });
        }
    }
}

/// nginx in the pod namespace: one process (no master), `return 200 "ok"`
/// on the endpoint ports; killed and its directory (which also holds the
/// wrk script) removed on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    fn start(pod: &Netns, pid: u32) -> Result<Nginx> {
        let dir = std::env::temp_dir().join(format!("orca-bench-{pid}"));
        std::fs::create_dir_all(&dir)?;
        // wrk reports its own CPU time when done.
        std::fs::write(
            dir.join("cpu.lua"),
            "done = function(summary, latency, requests)\n  \
             io.write(string.format(\"cpu_seconds %.6f\\n\", os.clock()))\nend\n",
        )?;
        let d = dir.display();
        let listen: String = (0..ENDPOINTS as u16)
            .map(|j| format!("        listen {} backlog=4096;\n", FIRST_PORT + j))
            .collect();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 4096; }}\n\
             http {{\n    access_log off;\n    keepalive_requests 1000000;\n\
             \x20   client_body_temp_path {d}/body;\n    server {{\n{listen}\
             \x20       location / {{ default_type text/plain; return 200 \"ok\"; }}\n    }}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        // `ip netns exec` execs nginx: the child is nginx itself.
        let child = Command::new("ip")
            .args(["netns", "exec", &pod.name, "nginx", "-e"])
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .spawn()?;
        let mut server = Nginx { child, dir };
        std::thread::sleep(Duration::from_millis(100));
        if let Some(status) = server.child.try_wait()? {
            let log = std::fs::read_to_string(server.dir.join("error.log")).unwrap_or_default();
            return Err(format!("nginx exited at once ({status}): {log}").into());
        }
        Ok(server)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// User and system CPU seconds of process `pid` so far (USER_HZ is 100).
fn cpu_time(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the
    // 3rd field, utime the 14th, stime the 15th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// VmHWM (peak) and VmRSS of this process.
fn rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or("?".to_string(), |kb| format!("{:.1} MiB", kb / 1024.0))
    };
    format!(
        "peak (VmHWM) {}, current (VmRSS) {}",
        get("VmHWM:"),
        get("VmRSS:")
    )
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.3} s", us / 1e6)
    }
}
