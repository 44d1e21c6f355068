//! The node proxy (`orca node-proxy`) against the real kernel: each test
//! builds its own network namespaces (a node, pods, an outside client),
//! runs the node proxy on them against a real etcd, sends real packets and
//! reads the kernel's ruleset back with `nft -j`.
//!
//! The namespaces have no link to the host: pods and the client are wired
//! to the node namespace by veth pairs created inside it, the node routes
//! the service CIDR to a dead-end veth and the rest of the cluster CIDR to a
//! blackhole, and nothing has a default route out. They need root and
//! iproute2 and nftables; without them the tests fail saying so.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use orca_testkit::Etcd;
use orca_testkit::netns::{Netns, enter, require_root, run};

const ORCA: &str = env!("CARGO_BIN_EXE_orca");

/// A pod: a namespace with a TCP server on 8080 and a UDP server on 5353,
/// both answering with the pod's name.
struct Pod {
    /// Held so the namespace lives as long as the pod.
    _ns: Netns,
    ip: String,
    stop: Arc<AtomicBool>,
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(path: String, name: String, stop: Arc<AtomicBool>) {
    let (tcp_path, tcp_name, tcp_stop) = (path.clone(), name.clone(), stop.clone());
    let ready = Arc::new(AtomicUsize::new(0));
    let r = ready.clone();
    thread::spawn(move || {
        enter(&tcp_path);
        let listener = TcpListener::bind("[::]:8080").expect("bind 8080");
        listener.set_nonblocking(true).unwrap();
        r.fetch_add(1, Ordering::SeqCst);
        while !tcp_stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.write_all(tcp_name.as_bytes());
                }
                Err(_) => thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    let r = ready.clone();
    thread::spawn(move || {
        enter(&path);
        let socket = UdpSocket::bind("[::]:5353").expect("bind 5353");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        r.fetch_add(1, Ordering::SeqCst);
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(name.as_bytes(), from);
            }
        }
    });
    while ready.load(Ordering::SeqCst) < 2 {
        thread::sleep(Duration::from_millis(5));
    }
}

/// The test's little cluster: etcd, a node namespace running the node
/// proxy, pods routed through it, and a client outside the cluster.
struct Cluster {
    proxy: Option<Child>,
    /// The node proxy's /metrics and /healthz, on loopback.
    admin: String,
    pods: Vec<Pod>,
    client: Netns,
    node: Netns,
    etcd: Etcd,
    dir: tempfile::TempDir,
}

/// The node's address on the client's link (NodePorts are reached on it).
const NODE_IP: &str = "192.168.77.1";

impl Cluster {
    fn new(tag: &str, pods: usize) -> Self {
        require_root("the node proxy tests (network namespaces, nftables)");
        run("nft", &["--version"]);
        let id = format!("orca-{}-{tag}", std::process::id());
        let node = Netns::new(format!("{id}-node"));
        // Service and cluster CIDRs end inside the node: the service CIDR
        // on a veth whose peer stays down (so packets pass the forward and
        // output hooks, where unanswered ones are rejected, then die).
        node.ip(&[
            "link",
            "add",
            "svc0",
            "type",
            "veth",
            "peer",
            "name",
            "svc0-sink",
        ]);
        node.ip(&["link", "set", "svc0", "up"]);
        node.ip(&["route", "add", "10.96.0.0/12", "dev", "svc0"]);
        node.ip(&["route", "add", "blackhole", "10.244.0.0/16"]);
        node.ip(&["-6", "route", "add", "fd00:96::/108", "dev", "svc0"]);
        node.ip(&["-6", "route", "add", "blackhole", "fd00:244::/56"]);
        for knob in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            let out = node.exec(&["sysctl", "-qw", knob]);
            assert!(out.status.success(), "{knob} in the node namespace");
        }

        let mut list = Vec::new();
        for i in 1..=pods {
            let name = format!("pod{i}");
            let ns = Netns::new(format!("{id}-{name}"));
            let host_if = format!("veth{i}");
            node.veth(&host_if, &ns, "eth0");
            node.ip(&["addr", "add", &format!("10.244.{i}.1/24"), "dev", &host_if]);
            node.ip(&[
                "addr",
                "add",
                &format!("fd00:244:{i}::1/64"),
                "dev",
                &host_if,
                "nodad",
            ]);
            node.ip(&["link", "set", &host_if, "up"]);
            let ip = format!("10.244.{i}.2");
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            ns.ip(&[
                "addr",
                "add",
                &format!("fd00:244:{i}::2/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            ns.ip(&["link", "set", "eth0", "up"]);
            ns.ip(&["route", "add", "default", "via", &format!("10.244.{i}.1")]);
            ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:244:{i}::1"),
            ]);
            let stop = Arc::new(AtomicBool::new(false));
            serve(ns.path(), name, stop.clone());
            list.push(Pod { _ns: ns, ip, stop });
        }
        let client = Netns::new(format!("{id}-client"));
        node.veth("outside", &client, "eth0");
        node.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "outside"]);
        node.ip(&["addr", "add", "fd00:77::1/64", "dev", "outside", "nodad"]);
        node.ip(&["link", "set", "outside", "up"]);
        client.ip(&["addr", "add", "192.168.77.2/24", "dev", "eth0"]);
        client.ip(&["addr", "add", "fd00:77::2/64", "dev", "eth0", "nodad"]);
        client.ip(&["link", "set", "eth0", "up"]);
        client.ip(&["route", "add", "default", "via", NODE_IP]);
        client.ip(&["-6", "route", "add", "default", "via", "fd00:77::1"]);

        let mut cluster = Cluster {
            proxy: None,
            admin: format!("127.0.0.1:{}", orca_testkit::closed_port()),
            pods: list,
            client,
            node,
            etcd: Etcd::start(),
            dir: tempfile::tempdir().unwrap(),
        };
        cluster.start_proxy();
        cluster
    }

    fn start_proxy(&mut self) {
        self.spawn_proxy();
        self.wait_for("the table to exist", |c| c.ruleset().is_some());
    }

    fn spawn_proxy(&mut self) {
        let child = Command::new(ORCA)
            .args([
                "--etcd",
                &self.etcd.endpoint(),
                "node-proxy",
                "--node",
                "node-1",
            ])
            .args(["--netns", &self.node.path(), "--min-sync-period", "10ms"])
            // Short, so an etcd outage shows in /healthz within a test.
            .args(["--unhealthy-after", "1s"])
            .args([
                "--cluster-cidr",
                "10.244.0.0/16,fd00:244::/56",
                "--service-cidr",
                "10.96.0.0/12,fd00:96::/108",
            ])
            .args(["--admin", &self.admin])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start orca node-proxy");
        self.proxy = Some(child);
    }

    fn kill_proxy(&mut self) {
        if let Some(mut p) = self.proxy.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// `nft -j list table ip orca` in the node namespace, parsed.
    fn ruleset(&self) -> Option<serde_json::Value> {
        self.table("ip")
    }

    /// `nft -j list table FAMILY orca` in the node namespace, parsed.
    fn table(&self, family: &str) -> Option<serde_json::Value> {
        let out = self
            .node
            .exec(&["nft", "-j", "list", "table", family, "orca"]);
        if !out.status.success() {
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("nft -j prints JSON"))
    }

    /// Names of the chains in the kernel's table.
    fn chains(&self) -> Vec<String> {
        let Some(rs) = self.ruleset() else {
            return Vec::new();
        };
        rs["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["chain"]["name"].as_str().map(str::to_string))
            .collect()
    }

    /// GET `path` from the admin endpoint; the body.
    fn admin_get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(&self.admin).expect("admin endpoint");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    fn apply(&self, yaml: &str) {
        let path = self.dir.path().join("manifest.yaml");
        std::fs::write(&path, yaml).unwrap();
        run(
            ORCA,
            &[
                "--etcd",
                &self.etcd.endpoint(),
                "apply",
                "-f",
                path.to_str().unwrap(),
            ],
        );
    }

    fn delete(&self, kind: &str, name: &str) {
        run(
            ORCA,
            &["--etcd", &self.etcd.endpoint(), "delete", kind, name],
        );
    }

    fn wait_for(&self, what: &str, cond: impl Fn(&Cluster) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until a TCP connection to `addr` from the client is answered.
    /// A Service and its EndpointSlice are separate objects, so the
    /// proxy may program the Service (rejecting) a sync before its
    /// endpoints: its chain existing does not mean it serves yet.
    fn wait_serving(&self, addr: &str) {
        self.wait_for(&format!("{addr} to answer"), |c| {
            c.ask_tcp(addr, 1)[0].is_ok()
        });
    }

    /// `n` TCP connections from the client namespace; the answers.
    fn ask_tcp(&self, addr: &str, n: usize) -> Vec<Result<String, ErrorKind>> {
        let addr: SocketAddr = addr.parse().unwrap();
        self.client
            .within(move || (0..n).map(|_| tcp(addr)).collect())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_proxy();
    }
}

fn tcp(addr: SocketAddr) -> Result<String, ErrorKind> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.kind())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.kind())?;
    Ok(out)
}

fn service(name: &str, ip: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  clusterIP: {ip}\n{extra}  ports:\n  - {{name: http, port: 80, targetPort: http}}\n  \
         - {{name: dns, port: 53, protocol: UDP}}\n"
    )
}

/// An EndpointSlice for `service` with `(ip, ready)` endpoints.
fn slice(service: &str, endpoints: &[(&str, bool)]) -> String {
    let mut eps = String::new();
    for (ip, ready) in endpoints {
        eps.push_str(&format!(
            "- addresses: [\"{ip}\"]\n  conditions: {{ready: {ready}}}\n  nodeName: node-1\n"
        ));
    }
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata:\n  name: {service}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {service}}}\n\
         addressType: IPv4\nports:\n- {{name: http, port: 8080, protocol: TCP}}\n\
         - {{name: dns, port: 5353, protocol: UDP}}\nendpoints:\n{eps}"
    )
}

fn count(answers: &[Result<String, ErrorKind>], who: &str) -> usize {
    answers.iter().filter(|a| a.as_deref() == Ok(who)).count()
}

#[test]
fn cluster_ip_spreads_follows_readiness_and_rejects_when_deleted() {
    let c = Cluster::new("cip", 2);
    let (p1, p2) = (c.pods[0].ip.clone(), c.pods[1].ip.clone());
    c.apply(&format!(
        "{}---\n{}",
        service("web", "10.96.0.10", ""),
        slice("web", &[(&p1, true), (&p2, true)])
    ));
    c.wait_serving("10.96.0.10:80");

    let answers = c.ask_tcp("10.96.0.10:80", 100);
    let (a, b) = (count(&answers, "pod1"), count(&answers, "pod2"));
    assert_eq!(a + b, 100, "every connection answered: {answers:?}");
    assert!(
        a >= 15 && b >= 15,
        "spread over both endpoints: pod1 {a}, pod2 {b}"
    );

    // pod2 unready: new connections go to pod1 only.
    c.apply(&slice("web", &[(&p1, true), (&p2, false)]));
    c.wait_for("pod2 to leave", |c| {
        count(&c.ask_tcp("10.96.0.10:80", 20), "pod1") == 20
    });
    let answers = c.ask_tcp("10.96.0.10:80", 50);
    assert_eq!(count(&answers, "pod1"), 50, "{answers:?}");

    // No ready endpoint: refused at once, not a timeout.
    c.apply(&slice("web", &[(&p1, false), (&p2, false)]));
    c.wait_for("the reject", |c| {
        c.ask_tcp("10.96.0.10:80", 1)[0] == Err(ErrorKind::ConnectionRefused)
    });

    // A port the Service does not have is refused too.
    assert_eq!(
        c.ask_tcp("10.96.0.10:81", 1)[0],
        Err(ErrorKind::ConnectionRefused)
    );

    // The syncs are measured.
    let metrics = c.admin_get("/metrics");
    for name in [
        "orca_node_proxy_sync_duration_seconds_count{family=\"ip\",mode=\"full\"} 1",
        "orca_node_proxy_sync_duration_seconds_count{family=\"ip6\",mode=\"full\"} 1",
        "orca_node_proxy_sync_duration_seconds_count{family=\"ip\",mode=\"partial\"}",
        "orca_node_proxy_network_programming_latency_seconds_count",
        "orca_node_proxy_rules_programmed_total",
        "orca_node_proxy_elements_programmed_total",
        "orca_node_proxy_services{family=\"ip\"} 1",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    assert!(c.admin_get("/healthz").starts_with("HTTP/1.1 200"));

    // Deleted: its chains leave the kernel and the IP refuses.
    c.apply(&slice("web", &[(&p1, true)]));
    c.wait_for("pod1 back", |c| {
        c.ask_tcp("10.96.0.10:80", 1)[0].as_deref() == Ok("pod1")
    });
    c.delete("service", "web");
    c.wait_for("the chains to go", |c| {
        !c.chains().iter().any(|n| n.contains("default/web"))
    });
    let text = c.node.exec(&["nft", "list", "table", "ip", "orca"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(!text.contains("10.96.0.10"), "{text}");
    // An address of the service CIDR that no Service has is refused.
    assert_eq!(
        c.ask_tcp("10.96.0.10:80", 1)[0],
        Err(ErrorKind::ConnectionRefused)
    );
}

#[test]
fn node_port_from_outside_and_udp() {
    let c = Cluster::new("np", 2);
    let (p1, p2) = (c.pods[0].ip.clone(), c.pods[1].ip.clone());
    let svc = service("np", "10.96.0.20", "  type: NodePort\n")
        .replace("targetPort: http}", "targetPort: http, nodePort: 30080}");
    c.apply(&format!(
        "{svc}---\n{}",
        slice("np", &[(&p1, true), (&p2, true)])
    ));
    c.wait_serving(&format!("{NODE_IP}:30080"));

    let answers = c.ask_tcp(&format!("{NODE_IP}:30080"), 60);
    let (a, b) = (count(&answers, "pod1"), count(&answers, "pod2"));
    assert_eq!(a + b, 60, "{answers:?}");
    assert!(a > 0 && b > 0, "pod1 {a}, pod2 {b}");

    // UDP through the ClusterIP.
    let replies: Vec<String> = c.client.within(|| {
        (0..40)
            .filter_map(|_| {
                // A new source port per query, so each is a new conntrack flow.
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                s.send_to(b"q", "10.96.0.20:53").ok()?;
                let mut buf = [0u8; 64];
                let n = s.recv(&mut buf).ok()?;
                Some(String::from_utf8_lossy(&buf[..n]).into_owned())
            })
            .collect()
    });
    assert_eq!(replies.len(), 40, "every datagram answered");
    assert!(replies.iter().any(|r| r == "pod1") && replies.iter().any(|r| r == "pod2"));
}

/// Loopback is not a NodePort address: a connection to 127.0.0.1:NODEPORT
/// from the node is refused at once, not translated to a pod it cannot
/// reach (its source would be 127.0.0.1) and left to time out; the node's
/// own address keeps serving.
#[test]
fn a_node_port_at_loopback_is_refused_at_once() {
    let c = Cluster::new("np-lo", 1);
    let p1 = c.pods[0].ip.clone();
    let svc = service("np", "10.96.0.25", "  type: NodePort\n")
        .replace("targetPort: http}", "targetPort: http, nodePort: 30081}");
    c.apply(&format!("{svc}---\n{}", slice("np", &[(&p1, true)])));
    c.wait_serving(&format!("{NODE_IP}:30081"));

    let from_node = |addr: &str| {
        let addr: SocketAddr = addr.parse().unwrap();
        c.node.within(move || tcp(addr))
    };
    assert_eq!(
        from_node(&format!("{NODE_IP}:30081")).as_deref(),
        Ok("pod1")
    );
    assert_eq!(
        from_node("127.0.0.1:30081"),
        Err(ErrorKind::ConnectionRefused)
    );
}

#[test]
fn session_affinity_pins_each_client() {
    let c = Cluster::new("aff", 2);
    let (p1, p2) = (c.pods[0].ip.clone(), c.pods[1].ip.clone());
    let svc = service("sticky", "10.96.0.30", "  sessionAffinity: ClientIP\n");
    c.apply(&format!(
        "{svc}---\n{}",
        slice("sticky", &[(&p1, true), (&p2, true)])
    ));
    c.wait_serving("10.96.0.30:80");
    let answers = c.ask_tcp("10.96.0.30:80", 40);
    let first = answers[0].clone().expect("answered");
    assert_eq!(
        count(&answers, &first),
        40,
        "one client, one endpoint: {answers:?}"
    );
}

#[test]
fn restart_under_traffic_loses_no_connection_attempt_and_cleanup_removes_all() {
    let mut c = Cluster::new("restart", 2);
    let (p1, p2) = (c.pods[0].ip.clone(), c.pods[1].ip.clone());
    c.apply(&format!(
        "{}---\n{}",
        service("web", "10.96.0.40", ""),
        slice("web", &[(&p1, true), (&p2, true)])
    ));
    c.wait_serving("10.96.0.40:80");

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let path = c.client.path();
    let load = {
        let (stop, ok, failed, errors) = (stop.clone(), ok.clone(), failed.clone(), errors.clone());
        thread::spawn(move || {
            enter(&path);
            let addr: SocketAddr = "10.96.0.40:80".parse().unwrap();
            while !stop.load(Ordering::Relaxed) {
                match tcp(addr) {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.lock().unwrap().push(e);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(300));
        c.kill_proxy();
        thread::sleep(Duration::from_millis(200));
        // The restart replaces the table in one transaction.
        c.start_proxy();
    }
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 20, "the load ran: {ok} connections");
    assert_eq!(
        failed,
        0,
        "{failed} of {} connection attempts failed across restarts: {:?}",
        ok + failed,
        errors.lock().unwrap()
    );

    // --cleanup removes the table.
    c.kill_proxy();
    run(
        ORCA,
        &["node-proxy", "--cleanup", "--netns", &c.node.path()],
    );
    assert!(c.ruleset().is_none(), "the table is gone");
    assert!(c.table("ip6").is_none(), "the ip6 table is gone");
    // And again: nothing to remove is not an error.
    run(
        ORCA,
        &["node-proxy", "--cleanup", "--netns", &c.node.path()],
    );
}

#[test]
fn with_etcd_away_a_restarted_proxy_keeps_the_table_then_catches_up() {
    let mut c = Cluster::new("etcd-away", 1);
    let p1 = c.pods[0].ip.clone();
    c.apply(&format!(
        "{}---\n{}",
        service("web", "10.96.0.50", ""),
        slice("web", &[(&p1, true)])
    ));
    let answers = |c: &Cluster| c.ask_tcp("10.96.0.50:80", 5);
    c.wait_for("the service", |c| count(&answers(c), "pod1") == 5);

    c.kill_proxy();
    c.etcd.kill();
    c.spawn_proxy();
    c.wait_for("the admin endpoint", |c| {
        TcpStream::connect(&c.admin).is_ok()
    });
    // Without a complete list it programs nothing: the table it left
    // keeps serving, and it says it is not ready.
    thread::sleep(Duration::from_millis(500));
    let health = c.admin_get("/healthz");
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert!(
        health.contains("has not completed its first sync"),
        "{health}"
    );
    assert_eq!(count(&answers(&c), "pod1"), 5, "the old table serves");

    c.etcd.restart();
    c.wait_for("the first sync", |c| {
        c.admin_get("/healthz").starts_with("HTTP/1.1 200")
    });
    assert_eq!(count(&answers(&c), "pod1"), 5);
    c.delete("service", "web");
    c.wait_for("the reject", |c| {
        c.ask_tcp("10.96.0.50:80", 1)[0] == Err(ErrorKind::ConnectionRefused)
    });
}

/// etcd killed under a running node proxy: the rules in the kernel stay
/// and serve; /healthz turns 503 naming the watch once it has been down
/// `--unhealthy-after`, and 200 again once etcd is back, when the proxy
/// follows the cluster again.
#[test]
fn an_etcd_outage_turns_healthz_503_while_the_rules_stay() {
    let mut c = Cluster::new("outage", 1);
    let p1 = c.pods[0].ip.clone();
    c.apply(&format!(
        "{}---\n{}",
        service("web", "10.96.0.55", ""),
        slice("web", &[(&p1, true)])
    ));
    c.wait_serving("10.96.0.55:80");
    assert!(c.admin_get("/healthz").starts_with("HTTP/1.1 200"));

    c.etcd.kill();
    c.wait_for("/healthz to say the watch is down", |c| {
        c.admin_get("/healthz").starts_with("HTTP/1.1 503")
    });
    let health = c.admin_get("/healthz");
    assert!(
        health.contains("watch services down for")
            || health.contains("watch endpointslices down for"),
        "{health}"
    );
    let metrics = c.admin_get("/metrics");
    assert!(
        metrics.contains("orca_watch_up{watch=\"services\"} 0"),
        "{metrics}"
    );
    assert_eq!(
        count(&c.ask_tcp("10.96.0.55:80", 5), "pod1"),
        5,
        "the rules stay while etcd is away"
    );

    c.etcd.restart();
    c.wait_for("/healthz to recover", |c| {
        c.admin_get("/healthz").starts_with("HTTP/1.1 200")
    });
    assert!(
        c.admin_get("/metrics")
            .contains("orca_watch_up{watch=\"services\"} 1")
    );
    c.delete("service", "web");
    c.wait_for("the reject", |c| {
        c.ask_tcp("10.96.0.55:80", 1)[0] == Err(ErrorKind::ConnectionRefused)
    });
}

#[test]
fn a_missing_namespace_is_a_clear_error() {
    let out = Command::new(ORCA)
        .args([
            "node-proxy",
            "--cleanup",
            "--netns",
            "/run/netns/orca-no-such-namespace",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/run/netns/orca-no-such-namespace"), "{err}");
}

#[test]
fn orca_node_runs_the_kubelet_the_node_proxy_and_the_log_shipper_as_tasks() {
    let mut c = Cluster::new("node", 1);
    c.kill_proxy();
    run(
        ORCA,
        &["node-proxy", "--cleanup", "--netns", &c.node.path()],
    );
    let p1 = c.pods[0].ip.clone();
    c.apply(&format!(
        "{}---\n{}",
        service("web", "10.96.0.50", ""),
        slice("web", &[(&p1, true)])
    ));

    // A pod with labels, bound to this node (a node only watches its own
    // pods), and a log file where the kubelet writes its logs.
    c.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: default, \
         labels: {app: web, tier: front}}\nspec:\n  nodeName: node-1\n  \
         containers:\n  - {name: nginx, image: nginx}\n",
    );
    let pod = run(
        ORCA,
        &[
            "--etcd",
            &c.etcd.endpoint(),
            "get",
            "pod",
            "web-0",
            "-o",
            "json",
        ],
    );
    let pod: serde_json::Value = serde_json::from_str(&pod).unwrap();
    let uid = pod["metadata"]["uid"].as_str().expect("uid").to_string();
    let logs = c.dir.path().join("pods");
    let container = logs.join(format!("default_web-0_{uid}")).join("nginx");
    std::fs::create_dir_all(&container).unwrap();
    std::fs::write(
        container.join("0.log"),
        "2026-11-29T10:00:00.000000001Z stdout F hello from a pod\n",
    )
    .unwrap();
    let shipped = c.dir.path().join("shipped.jsonl");
    let config = c.dir.path().join("logshipper.yaml");
    std::fs::write(
        &config,
        format!(
            "inputs:\n  - name: pods\n    paths: [\"{}/*/*/*.log\"]\n    format: cri\n\
             checkpoint_dir: {}\noutputs:\n  - name: out\n    type: file\n    path: {}\n\
             \x20   batch: {{max_events: 10, max_bytes: 1MiB, max_wait: 50ms}}\n\
             admin:\n  address: 127.0.0.1:{}\n",
            logs.display(),
            c.dir.path().join("checkpoints").display(),
            shipped.display(),
            orca_testkit::closed_port(),
        ),
    )
    .unwrap();
    // The kubelet task keeps its state in the test's directory; with no
    // master to give the node a pod CIDR it runs no pod, and its allow-list
    // admits no image, so nothing is ever pulled.
    let kubelet = c.dir.path().join("kubelet.yaml");
    std::fs::write(
        &kubelet,
        format!(
            "state_dir: {}\nlog_dir: {}\ncgroup_parent: orca-node-test-{}\nport: {}\n\
             images: {{allow: [\"127.0.0.1:1/*\"]}}\n",
            c.dir.path().join("kubelet-state").display(),
            c.dir.path().join("kubelet-logs").display(),
            std::process::id(),
            orca_testkit::closed_port(),
        ),
    )
    .unwrap();
    let mut node = Command::new(ORCA)
        .args(["--etcd", &c.etcd.endpoint(), "node", "--node", "node-1"])
        .args(["--netns", &c.node.path(), "--min-sync-period", "10ms"])
        .args(["--logshipper-config", config.to_str().unwrap()])
        .args(["--kubelet-config", kubelet.to_str().unwrap()])
        .stdout(Stdio::null())
        .spawn()
        .expect("start orca node");
    c.wait_for("the node proxy task", |c| {
        c.ask_tcp("10.96.0.50:80", 1)[0].as_deref() == Ok("pod1")
    });
    c.wait_for("the log shipper task", |_| {
        std::fs::read_to_string(&shipped).is_ok_and(|s| s.contains("hello from a pod"))
    });
    // The event carries the pod's labels, from the cluster.
    let line = std::fs::read_to_string(&shipped).unwrap();
    assert!(
        line.contains(r#""pod":"web-0","uid":""#)
            && line.contains(r#""labels":{"app":"web","tier":"front"}"#),
        "{line}"
    );
    // The kubelet task registered the node.
    c.wait_for("the kubelet task", |c| {
        Command::new(ORCA)
            .args(["--etcd", &c.etcd.endpoint(), "get", "node", "node-1"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    // SIGTERM stops all three and the process exits cleanly.
    run("kill", &["-TERM", &node.id().to_string()]);
    let status = node.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn orca_node_rejects_a_broken_log_shipper_config_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.yaml");
    std::fs::write(&config, "inputs: []\nbogus: 1\n").unwrap();
    let out = Command::new(ORCA)
        .args([
            "--etcd",
            &format!("http://127.0.0.1:{}", orca_testkit::closed_port()),
        ])
        .args([
            "node",
            "--node",
            "n",
            "--logshipper-config",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bogus"), "{err}");
}

#[test]
fn a_dual_stack_service_answers_on_both_families() {
    let c = Cluster::new("v6", 2);
    assert!(
        c.table("ip6").is_some(),
        "an IPv6 service CIDR gives the ip6 table"
    );
    let svc = service("dual", "10.96.0.60", "").replace(
        "  clusterIP: 10.96.0.60\n",
        "  clusterIP: 10.96.0.60\n  clusterIPs: [10.96.0.60, \"fd00:96::60\"]\n  ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: RequireDualStack\n",
    );
    let v4 = slice("dual", &[("10.244.1.2", true), ("10.244.2.2", true)]);
    let v6 = slice("dual", &[("fd00:244:1::2", true), ("fd00:244:2::2", true)])
        .replace("name: dual-1", "name: dual-v6")
        .replace("addressType: IPv4", "addressType: IPv6");
    c.apply(&format!("{svc}---\n{v4}---\n{v6}"));
    c.wait_for("both families", |c| {
        c.ask_tcp("[fd00:96::60]:80", 1)[0].is_ok() && c.ask_tcp("10.96.0.60:80", 1)[0].is_ok()
    });
    let answers = c.ask_tcp("[fd00:96::60]:80", 60);
    let (a, b) = (count(&answers, "pod1"), count(&answers, "pod2"));
    assert_eq!(a + b, 60, "{answers:?}");
    assert!(a > 0 && b > 0, "pod1 {a}, pod2 {b}");

    // Without ready IPv6 endpoints the IPv6 ClusterIP refuses at once.
    c.apply(
        &slice("dual", &[("fd00:244:1::2", false)])
            .replace("name: dual-1", "name: dual-v6")
            .replace("addressType: IPv4", "addressType: IPv6"),
    );
    c.wait_for("the IPv6 reject", |c| {
        c.ask_tcp("[fd00:96::60]:80", 1)[0] == Err(ErrorKind::ConnectionRefused)
    });
    assert!(c.ask_tcp("10.96.0.60:80", 1)[0].is_ok(), "IPv4 unaffected");
}

#[test]
fn a_udp_client_follows_when_its_endpoint_leaves() {
    let c = Cluster::new("udp", 2);
    let (p1, p2) = (c.pods[0].ip.clone(), c.pods[1].ip.clone());
    c.apply(&format!(
        "{}---\n{}",
        service("dns", "10.96.0.70", ""),
        slice("dns", &[(&p1, true), (&p2, true)])
    ));
    // The TCP port comes in the same EndpointSlice as the UDP one, so once
    // it answers both are programmed (a UDP probe would leave a flow).
    c.wait_serving("10.96.0.70:80");

    // One client socket, one source port: one conntrack entry, so every
    // datagram goes where the first went.
    let path = c.client.path();
    let (ask, answers) = (
        std::sync::mpsc::channel::<()>(),
        std::sync::mpsc::channel::<String>(),
    );
    let (ask_tx, ask_rx) = ask;
    let (answer_tx, answer_rx) = answers;
    let client = thread::spawn(move || {
        enter(&path);
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        while ask_rx.recv().is_ok() {
            let _ = s.send_to(b"q", "10.96.0.70:53");
            let mut buf = [0u8; 64];
            let got = match s.recv(&mut buf) {
                Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
                Err(_) => String::new(),
            };
            if answer_tx.send(got).is_err() {
                break;
            }
        }
    });
    let ask = || {
        ask_tx.send(()).unwrap();
        answer_rx.recv().unwrap()
    };
    let first = ask();
    assert!(first == "pod1" || first == "pod2", "{first:?}");
    for _ in 0..5 {
        assert_eq!(ask(), first, "one flow, one endpoint");
    }
    // The endpoint that answered leaves the Service (it still runs, so a
    // stale entry would keep reaching it).
    let (leaving, staying) = if first == "pod1" {
        (&p1, "pod2")
    } else {
        (&p2, "pod1")
    };
    let other = if first == "pod1" { &p2 } else { &p1 };
    c.apply(&slice("dns", &[(leaving, false), (other, true)]));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if ask() == staying {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the flow stayed on the departed endpoint"
        );
        thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..5 {
        assert_eq!(ask(), staying);
    }
    drop(ask_tx);
    client.join().unwrap();
    let metrics = c.admin_get("/metrics");
    assert!(
        !metrics.contains("orca_node_proxy_conntrack_entries_deleted_total 0"),
        "{metrics}"
    );
}

#[test]
fn bad_ranges_are_refused_with_the_flag_named() {
    for (flag, value, want) in [
        (
            "--service-cidr",
            "10.96.0.0/33",
            "the prefix length must be 0 to 32",
        ),
        ("--service-cidr", "10.96.0.0", "expected a CIDR"),
        (
            "--service-cidr",
            "10.96.0.0/12,10.0.0.0/8",
            "at most one range per address family",
        ),
        ("--cluster-cidr", "fd00::zz/64", "is not an IP address"),
    ] {
        let out = Command::new(ORCA)
            .args([
                "--etcd",
                &format!("http://127.0.0.1:{}", orca_testkit::closed_port()),
            ])
            .args(["node-proxy", "--node", "n", flag, value])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag} {value} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(flag) && err.contains(want),
            "{flag} {value}: {err}"
        );
    }
}
