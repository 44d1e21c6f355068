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
//! (`orca-bench-<pid>-{sync,node,pod}`) and deletes at the end, also on a
//! panic; namespaces left by a killed run are deleted by the next one. The
//! root namespace is never touched: the veth pair is created inside the
//! namespaces, and the only traffic is wrk in the node namespace to a
//! ClusterIP DNATed to nginx in the pod namespace.
//!
//! - Full sync: a fresh `Proxier` plans 1k and 10k Services x 10 endpoints
//!   (TCP, ClusterIP only) into an empty namespace; plan (the diff), encode
//!   (the netlink batch) and commit (send plus the kernel's verdict) are
//!   timed apart, as is a full resync over the 10k table already there
//!   (what follows a failed commit).
//! - Endpoint change with 10k Services present, timed from plan to the
//!   kernel's ack, 100 times each: a pod replaced (one endpoint's address
//!   changes) and a pod turning unready and ready again (the endpoint count
//!   changes, so the service chain's rule is rewritten).
//! - RSS: VmHWM and VmRSS from /proc/self/status after the 10k sync. They
//!   include the bench's own input (10k `ServicePort`s).
//! - ClusterIP: nginx (one process, `return 200`) on 10 ports in the pod
//!   namespace is the target Service's 10 endpoints; `wrk -t1 -c32 -d5s`
//!   runs in the node namespace against the ClusterIP with 10 Services
//!   programmed, then with 10k (9990 added incrementally), then with 10
//!   again (drift check). Once with keep-alive (NAT rules see only the
//!   first packet of the 32 connections) and once with `Connection: close`
//!   (a new connection, so a NAT lookup, per request).
//!
//! Latest result, 2026-11-26, one run on this 2-core machine (shared, a
//! build was running beside it), kernel 6.18:
//!
//! RESULTS-PLACEHOLDER

use std::collections::HashMap;
use std::error::Error;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use orca_proxy::nftables::TABLE;
use orca_proxy::nftables::netlink::Netlink;
use orca_proxy::nftables::proxier::{Endpoint, Options, Proto, Proxier, ServiceKey, ServicePort};
use orca_proxy::nftables::ruleset::Op;
use orca_proxy::nftables::runner::plan_size;

type Result<T> = std::result::Result<T, Box<dyn Error>>;
type Desired = HashMap<ServiceKey, Vec<ServicePort>>;

/// Endpoints per Service.
const ENDPOINTS: u32 = 10;
/// The target Service's ClusterIP.
const TARGET_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The node namespace's end of the veth.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The pod namespace's end, where nginx listens.
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
/// nginx listens on FIRST_PORT..FIRST_PORT + ENDPOINTS.
const FIRST_PORT: u16 = 8080;
/// Repetitions of each endpoint change.
const CHANGES: usize = 100;
const WRK_ARGS: [&str; 4] = ["-t1", "-c32", "-d5s", "--latency"];

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
            "missing {} in PATH (or /usr/sbin, /sbin): apt-get install -y {}",
            tools.join(", "),
            missing.join(" ")
        ));
    }
    Ok(())
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
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
    let mut nl = Netlink::open(Some(&ns.path()))?;

    println!("\n== full sync (fresh table; plan / encode / commit) ==");
    {
        let desired = services(0..1_000);
        let (_, s) = fresh_sync(&mut nl, &desired)?;
        s.print("1k x 10");
    }
    let desired = services(0..10_000);
    let (mut proxier, s) = fresh_sync(&mut nl, &desired)?;
    s.print("10k x 10");
    println!("RSS after the 10k sync: {}", rss());

    proxier.invalidate();
    let s = sync(&mut nl, &mut proxier, &desired, &[])?;
    s.print("10k x 10, full resync over the existing table");

    println!("\n== one endpoint change with 10k Services present (plan to kernel ack) ==");
    let mut desired = desired;
    let key = key(5_000);
    let original = desired[&key][0].endpoints[3].clone();
    let replaced = SocketAddrV4::new(Ipv4Addr::new(10, 130, 0, 1), original.addr.port());
    let mut times = Vec::with_capacity(CHANGES);
    let mut last = None;
    for i in 0..CHANGES {
        let ep = &mut desired
            .get_mut(&key)
            .expect("service")
            .first_mut()
            .expect("port")
            .endpoints[3];
        ep.addr = if i % 2 == 0 { replaced } else { original.addr };
        let s = sync(&mut nl, &mut proxier, &desired, std::slice::from_ref(&key))?;
        times.push(s.total());
        last = Some(s);
    }
    print_changes("pod replaced (address change)", &mut times, last);
    desired.get_mut(&key).expect("service")[0].endpoints[3] = original.clone();
    sync(&mut nl, &mut proxier, &desired, std::slice::from_ref(&key))?;
    let mut times = Vec::with_capacity(CHANGES);
    let mut last = None;
    for i in 0..CHANGES {
        let ep = &mut desired.get_mut(&key).expect("service")[0].endpoints[3];
        ep.ready = i % 2 == 1;
        let s = sync(&mut nl, &mut proxier, &desired, std::slice::from_ref(&key))?;
        times.push(s.total());
        last = Some(s);
    }
    print_changes("pod unready / ready (count change)", &mut times, last);
    println!("RSS after the endpoint changes: {}", rss());
    Ok(())
}

/// Programs `desired` with a new proxier into an emptied table.
fn fresh_sync(nl: &mut Netlink, desired: &Desired) -> Result<(Proxier, Sync)> {
    commit(nl, &[Op::AddTable, Op::DeleteTable])?;
    let mut proxier = Proxier::new(options());
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
            "  (last: {} rules, {} elements, {} B; plan {} encode {} commit {})",
            s.rules,
            s.elements,
            s.bytes,
            fmt(s.plan),
            fmt(s.encode),
            fmt(s.commit)
        );
    }
    println!();
}

/// One sync's costs.
struct Sync {
    full: bool,
    plan: Duration,
    encode: Duration,
    commit: Duration,
    rules: usize,
    elements: usize,
    bytes: usize,
}

impl Sync {
    fn total(&self) -> Duration {
        self.plan + self.encode + self.commit
    }

    fn print(&self, what: &str) {
        println!(
            "{what:<46} total {:>9}  plan {:>9}  encode {:>9}  commit {:>9}  ({} rules, {} elements, {:.1} MiB batch)",
            fmt(self.total()),
            fmt(self.plan),
            fmt(self.encode),
            fmt(self.commit),
            self.rules,
            self.elements,
            self.bytes as f64 / (1 << 20) as f64
        );
    }
}

/// Plans the changes to `changed` (or everything, when the proxier needs a
/// full sync) and commits them, as the node proxy's loop does.
fn sync(
    nl: &mut Netlink,
    proxier: &mut Proxier,
    desired: &Desired,
    changed: &[ServiceKey],
) -> Result<Sync> {
    let t = Instant::now();
    let plan = proxier.plan(
        changed,
        |k| desired.get(k).cloned(),
        || desired.keys().cloned().collect(),
    );
    let planned = t.elapsed();
    let (rules, elements) = plan_size(&plan.ops);
    let (encode, commit, bytes) = match commit(nl, &plan.ops) {
        Ok(t) => t,
        Err(e) => {
            proxier.invalidate();
            return Err(e);
        }
    };
    Ok(Sync {
        full: plan.full,
        plan: planned,
        encode,
        commit,
        rules,
        elements,
        bytes,
    })
}

/// Encodes and commits `ops` as one transaction, as `Kernel::apply` does,
/// timing the two halves: (encode, commit, batch bytes).
fn commit(nl: &mut Netlink, ops: &[Op]) -> Result<(Duration, Duration, usize)> {
    let t = Instant::now();
    let mut batch = nl.batch();
    for op in ops {
        batch.push(TABLE, op);
    }
    let bytes = batch.len();
    let encoded = t.elapsed();
    let t = Instant::now();
    nl.commit(batch)?;
    Ok((encoded, t.elapsed(), bytes))
}

fn options() -> Options {
    Options {
        cluster_cidr: Some((Ipv4Addr::new(10, 244, 0, 0), 16)),
    }
}

fn key(i: u32) -> ServiceKey {
    ("bench".to_string(), format!("svc-{i:05}"))
}

/// Service `i`: service 0 is the target (ClusterIP 10.96.0.10, endpoints
/// nginx's ports); the others have synthetic pod addresses in 10.128.0.0/15
/// that no traffic is sent to.
fn service(i: u32) -> (ServiceKey, Vec<ServicePort>) {
    let (cluster_ip, addrs): (Ipv4Addr, Vec<SocketAddrV4>) = if i == 0 {
        (
            TARGET_IP,
            (0..ENDPOINTS as u16)
                .map(|j| SocketAddrV4::new(POD_IP, FIRST_PORT + j))
                .collect(),
        )
    } else {
        let base = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * ENDPOINTS;
        (
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 1, 0)) + i),
            (0..ENDPOINTS)
                .map(|j| SocketAddrV4::new(Ipv4Addr::from(base + j), FIRST_PORT))
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
        cluster_ip,
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
        "\n== ClusterIP {TARGET_IP}:80 from the node namespace, wrk {} ==",
        WRK_ARGS.join(" ")
    );
    let node = Netns::add(format!("orca-bench-{pid}-node"))?;
    let pod = Netns::add(format!("orca-bench-{pid}-pod"))?;
    wire(&node, &pod, pid)?;
    let server = Nginx::start(&pod, pid)?;
    wait_for_server(&node)?;

    let mut nl = Netlink::open(Some(&node.path()))?;
    let mut proxier = Proxier::new(options());
    let mut desired = services(0..10);
    sync(&mut nl, &mut proxier, &desired, &[])?;
    check_clusterip(&node)?;
    let ka10 = wrk(&node, false)?;
    let close10 = wrk(&node, true)?;

    let added: Vec<ServiceKey> = (10..10_000).map(key).collect();
    desired.extend((10..10_000).map(service));
    let s = sync(&mut nl, &mut proxier, &desired, &added)?;
    s.print("incremental: 9990 Services added");
    check_clusterip(&node)?;
    let ka10k = wrk(&node, false)?;
    let close10k = wrk(&node, true)?;

    for k in &added {
        desired.remove(k);
    }
    let s = sync(&mut nl, &mut proxier, &desired, &added)?;
    s.print("incremental: 9990 Services removed");
    check_clusterip(&node)?;
    let ka10b = wrk(&node, false)?;
    let close10b = wrk(&node, true)?;

    for (what, a, b, again) in [
        ("keep-alive", ka10, ka10k, ka10b),
        ("Connection: close", close10, close10k, close10b),
    ] {
        println!("{what}:");
        a.print("10 Services");
        b.print("10k Services");
        again.print("10 Services again");
        println!(
            "  throughput 10k/10: {:.3} (against the mean of both 10-Service runs: {:.3})",
            b.rps / a.rps,
            2.0 * b.rps / (a.rps + again.rps)
        );
    }
    drop(nl);
    drop(server);
    Ok(())
}

/// A veth pair between the node and pod namespaces, created inside them;
/// the service CIDR is routed into the veth, the pod's default route is
/// the node.
fn wire(node: &Netns, pod: &Netns, pid: u32) -> Result<()> {
    let (n, p) = (format!("ob{pid}n"), format!("ob{pid}p"));
    let node_cidr = format!("{NODE_IP}/24");
    let pod_cidr = format!("{POD_IP}/24");
    let node_ip = NODE_IP.to_string();
    for (ns, args) in [
        (node, vec!["link", "set", "lo", "up"]),
        (pod, vec!["link", "set", "lo", "up"]),
        (
            node,
            vec![
                "link", "add", &n, "type", "veth", "peer", "name", &p, "netns", &pod.name,
            ],
        ),
        (node, vec!["addr", "add", &node_cidr, "dev", &n]),
        (node, vec!["link", "set", &n, "up"]),
        (node, vec!["route", "add", "10.96.0.0/12", "dev", &n]),
        (pod, vec!["addr", "add", &pod_cidr, "dev", &p]),
        (pod, vec!["link", "set", &p, "up"]),
        (pod, vec!["route", "add", "default", "via", &node_ip]),
    ] {
        ip(&[&["-n", &ns.name], args.as_slice()].concat())?;
    }
    // Enough source ports for the Connection: close runs (this namespace's
    // own setting).
    in_netns(&node.path(), || {
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65000")
    })??;
    Ok(())
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
fn wait_for_server(node: &Netns) -> Result<()> {
    in_netns(&node.path(), || {
        let deadline = Instant::now() + Duration::from_secs(10);
        for j in 0..ENDPOINTS as u16 {
            let addr = SocketAddr::from((POD_IP, FIRST_PORT + j));
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
fn check_clusterip(node: &Netns) -> Result<()> {
    in_netns(&node.path(), || {
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
    avg: String,
    p50: String,
    p99: String,
    errors: String,
}

impl Load {
    fn print(&self, what: &str) {
        println!(
            "  {what:<18} {:>10.0} req/s  latency avg {:>8} p50 {:>8} p99 {:>8}{}",
            self.rps, self.avg, self.p50, self.p99, self.errors
        );
    }
}

fn wrk(node: &Netns, close: bool) -> Result<Load> {
    let url = format!("http://{TARGET_IP}/");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.name, "wrk"])
        .args(WRK_ARGS);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd.arg(&url).output()?;
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
    Ok(Load {
        rps,
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
/// on the endpoint ports; killed and its directory removed on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    fn start(pod: &Netns, pid: u32) -> Result<Nginx> {
        let dir = std::env::temp_dir().join(format!("orca-bench-{pid}-nginx"));
        std::fs::create_dir_all(&dir)?;
        let d = dir.display();
        let listen: String = (0..ENDPOINTS as u16)
            .map(|j| format!("        listen {POD_IP}:{} backlog=4096;\n", FIRST_PORT + j))
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
