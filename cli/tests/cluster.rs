//! `orca up` and `orca down`, and failure drills on the clusters they make:
//! real etcd members over TLS, masters and nodes in network namespaces the
//! tests make through `orca up`, nginx images from a real registry. Each
//! test has a cluster of its own (named after the test and this process),
//! removed by `orca down` whatever happens.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use orca_testkit::registry::{Mirror, Registry};

const ORCA: &str = env!("CARGO_BIN_EXE_orca");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
const NGINX_IMAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/nginx-image.sh");

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Clusters are brought up one at a time: two at once on a small machine
/// starve each other's etcd (a Lease renewal waiting seconds for a write
/// makes a living node look dead), which is not what the drills test.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the machine for one test's cluster; taken before the cluster is
/// made, so it is dropped after `orca down`.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A cluster `orca up` made for one test; `orca down` on drop.
struct Cluster {
    dir: tempfile::TempDir,
    state: PathBuf,
    name: String,
    _mirror: Option<Mirror>,
}

/// Everything a cluster named `name` could leave: namespaces, cgroups,
/// processes naming `state`, mounts under it, and `state` itself.
fn leftovers(name: &str, state: &Path) -> Vec<String> {
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with(&format!("{name}-")) {
            left.push(format!("namespace {file}"));
        }
    }
    for controller in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        for sub in std::fs::read_dir(controller.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if sub
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}-"))
            {
                left.push(format!("cgroup {}", sub.path().display()));
            }
        }
    }
    let state_text = state.display().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&state_text) {
            left.push(format!("process {cmdline}"));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    if mounts.contains(&state_text) {
        left.push(format!("a mount under {state_text}"));
    }
    if state.exists() {
        left.push(state_text);
    }
    left
}

impl Cluster {
    /// The state directory and name of a cluster for test `tag`.
    fn plan(tag: &str) -> (tempfile::TempDir, PathBuf, String) {
        orca_testkit::netns::require_root("orca up (network namespaces, containers)");
        let dir = tempfile::Builder::new()
            .prefix("orca-cluster-")
            .tempdir()
            .unwrap();
        let name = format!("t{}-{tag}", std::process::id());
        let state = dir.path().join(&name);
        (dir, state, name)
    }

    /// `orca up --state ... ARGS`, failing the test if it fails.
    fn up(tag: &str, args: &[&str]) -> Self {
        let (dir, state, name) = Self::plan(tag);
        let out = Command::new(ORCA)
            .arg("up")
            .arg("--state")
            .arg(&state)
            .args(args)
            .env_remove("ORCA_CLUSTER")
            .env_remove("ORCA_ETCD")
            .output()
            .unwrap();
        let cluster = Self {
            dir,
            state,
            name,
            _mirror: None,
        };
        assert!(
            out.status.success(),
            "orca up failed:\n{}\n{}",
            stdout(&out),
            stderr(&out)
        );
        cluster
    }

    /// `orca ARGS` against the cluster, through its client file.
    fn orca(&self, args: &[&str]) -> Output {
        Command::new(ORCA)
            .args(args)
            .env("ORCA_CLUSTER", self.state.join("client.yaml"))
            .env_remove("ORCA_ETCD")
            .output()
            .unwrap()
    }

    /// Like [`Cluster::orca`], failing the test if it fails; its output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.orca(args);
        assert!(
            out.status.success(),
            "orca {args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    fn hub(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}-hub", self.name))
    }

    /// `PROGRAM ARGS` run inside the hub's namespace.
    fn in_hub(&self, program: &str, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.hub().display()))
            .arg(program)
            .args(args)
            .env_remove("ORCA_CLUSTER")
            .env_remove("ORCA_ETCD")
            .output()
            .unwrap()
    }

    /// The HTTP status of `GET /` for nginx.local at a master's ingress.
    fn ingress_status(&self, master: u8) -> String {
        let out = self.in_hub(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-m",
                "5",
                "-w",
                "%{http_code}",
                "-H",
                "Host: nginx.local",
                &format!("http://172.30.0.{}/", 10 + master),
            ],
        );
        stdout(&out)
    }

    /// The cluster's record: the plan and every process started.
    fn record(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.state.join("cluster.json")).unwrap())
            .unwrap()
    }

    /// The recorded process `what` (`node-2`, `etcd-1`).
    fn process(&self, what: &str) -> serde_json::Value {
        self.record()["processes"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|p| p["what"] == what)
            .unwrap_or_else(|| panic!("no process {what} recorded"))
            .clone()
    }

    /// SIGKILLs the recorded process `what`.
    fn kill(&self, what: &str) {
        let pid = self.process(what)["pid"].as_u64().unwrap();
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "killing {what} (pid {pid})");
    }

    /// The contents of a process's log.
    fn log(&self, what: &str) -> String {
        std::fs::read_to_string(self.state.join("logs").join(format!("{what}.log")))
            .unwrap_or_default()
    }

    /// A kubelet configuration whose nodes pull docker.io through a mirror
    /// at 172.30.0.1:5000 (see [`Cluster::serve_images`]).
    fn mirror_config(dir: &Path) -> PathBuf {
        let path = dir.join("kubelet-base.yaml");
        std::fs::write(
            &path,
            "registries:\n  docker.io: {mirrors: [\"http://172.30.0.1:5000\"]}\n\
             images:\n  allow: [\"docker.io/library/*\"]\n",
        )
        .unwrap();
        path
    }

    /// Serves `registry`'s images at 172.30.0.1:5000 in the hub.
    fn serve_images(&mut self, registry: &Registry) {
        self._mirror = Some(registry.serve_in(&self.hub(), "172.30.0.1:5000"));
    }

    /// Applies the examples and waits for the rollout.
    fn run_example(&self) {
        self.ok(&["apply", "-f", EXAMPLES]);
        self.ok(&[
            "rollout",
            "status",
            "deployment/nginx-deployment",
            "--timeout",
            "120s",
        ]);
    }

    /// The access-log lines of successful `GET /`s at the shippers' sinks.
    fn shipped_requests(&self) -> usize {
        std::fs::read_dir(self.state.join("shipped"))
            .unwrap()
            .flatten()
            .map(|f| {
                std::fs::read_to_string(f.path())
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("\\\"GET / HTTP/1.1\\\" 200"))
                    .count()
            })
            .sum()
    }

    /// The nginx pods' names, nodes, phases and addresses (`get pods -o wide`).
    fn nginx_pods(&self) -> Vec<(String, String, String, String)> {
        self.ok(&["get", "pods", "-o", "wide"])
            .lines()
            .filter(|l| l.starts_with("nginx-deployment-"))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let field = |i: usize| f.get(i).copied().unwrap_or_default().to_string();
                (field(0), field(6), field(2), field(5))
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self._mirror = None;
        // ORCA_KEEP_LOGS=DIR keeps every cluster's logs (etcd's, the
        // masters', the nodes') in DIR/NAME, passed or failed, for faults
        // that show only in some runs.
        if let Ok(keep) = std::env::var("ORCA_KEEP_LOGS") {
            let _ = Command::new("cp")
                .arg("-r")
                .arg(self.state.join("logs"))
                .arg(Path::new(&keep).join(&self.name))
                .status();
        }
        let out = Command::new(ORCA)
            .arg("down")
            .arg("--state")
            .arg(&self.state)
            .output()
            .unwrap();
        if !std::thread::panicking() {
            assert!(out.status.success(), "orca down: {}", stderr(&out));
            let left = leftovers(&self.name, &self.state);
            assert!(left.is_empty(), "orca down left: {left:#?}");
        }
    }
}

/// Waits up to `limit` for `ready`, failing with `what` and `context()`.
fn wait_for(
    what: &str,
    limit: Duration,
    mut ready: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A cluster for test `tag` whose nodes pull nginx (1.7.9 and `tags`)
/// from a registry in its hub, with the example applied and rolled out;
/// `args` go to `orca up`. Bind as `let (_one, _registry, cluster)`, so
/// the cluster goes first.
fn nginx_cluster(
    tag: &str,
    tags: &[&str],
    args: &[&str],
) -> (std::sync::MutexGuard<'static, ()>, Registry, Cluster) {
    let one = one_at_a_time();
    let registry = nginx_registry(tags);
    let (dir, _, _) = Cluster::plan(tag);
    let base = Cluster::mirror_config(dir.path());
    let base = base.display().to_string();
    let mut all = vec!["--kubelet-config", base.as_str()];
    all.extend_from_slice(args);
    let mut cluster = Cluster::up(tag, &all);
    cluster.serve_images(&registry);
    cluster.run_example();
    (one, registry, cluster)
}

/// Whether any endpoint on `node` is ready in `orca get endpointslices -o json`.
fn victim_ready(json: &str, node: &str) -> bool {
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    let items = value["items"].as_array().cloned().unwrap_or_default();
    items.iter().any(|slice| {
        slice["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["nodeName"] == node && e["conditions"]["ready"] != false)
    })
}

/// A registry holding nginx:1.7.9 and the `tags` given, built from
/// Debian's nginx-light.
fn nginx_registry(tags: &[&str]) -> Registry {
    let registry = Registry::start();
    for tag in std::iter::once("1.7.9").chain(tags.iter().copied()) {
        let out = Command::new("bash")
            .arg(NGINX_IMAGE)
            .arg(registry.addr())
            .arg(tag)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "building the nginx image: {}",
            stderr(&out)
        );
    }
    registry
}

#[test]
fn up_makes_a_cluster_that_speaks_only_tls_and_down_removes_all_of_it() {
    let _one = one_at_a_time();
    let (dir, state, name) = Cluster::plan("tls");
    let out = Command::new(ORCA)
        .args([
            "up",
            "--nodes",
            "2",
            "--image-allow",
            "docker.io/library/*",
            "--state",
        ])
        .arg(&state)
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    let cluster = Cluster {
        dir,
        state: state.clone(),
        name: name.clone(),
        _mirror: None,
    };
    for shown in [
        "making the cluster's CA and certificates",
        &format!("namespace /run/netns/{name}-node-2, eth0 172.30.0.102"),
        "starting etcd (1 member(s), TLS with client certificates)",
        "node-1 is Ready",
        "node-2 is Ready",
        &format!("export ORCA_CLUSTER={}/client.yaml", state.display()),
    ] {
        assert!(text.contains(shown), "{shown:?} missing from:\n{text}");
    }
    let nodes = cluster.ok(&["get", "nodes", "-o", "wide"]);
    assert_eq!(nodes.matches(" Ready ").count(), 2, "{nodes}");
    assert!(
        nodes.contains("172.30.0.101") && nodes.contains("172.30.0.102"),
        "{nodes}"
    );

    // Plain TCP is refused; TLS without a client certificate too; the
    // CLI's certificate is let in.
    let plain = cluster.in_hub(ORCA, &["--etcd", "http://172.30.0.2:2379", "get", "nodes"]);
    assert!(
        !plain.status.success(),
        "a plain-TCP client got in: {}",
        stdout(&plain)
    );
    let pki = state.join("pki");
    let ca = pki.join("ca.crt").display().to_string();
    let url = "https://172.30.0.2:2379/version";
    let bare = cluster.in_hub("curl", &["-s", "-m", "5", "--cacert", &ca, url]);
    assert!(
        !bare.status.success(),
        "a client without a certificate got in: {}",
        stdout(&bare)
    );
    let cert = pki.join("admin.crt").display().to_string();
    let key = pki.join("admin.key").display().to_string();
    let admitted = cluster.in_hub(
        "curl",
        &[
            "-s", "-m", "5", "--cacert", &ca, "--cert", &cert, "--key", &key, url,
        ],
    );
    assert!(
        stdout(&admitted).contains("etcdserver"),
        "{}",
        stderr(&admitted)
    );

    // A pod naming an image the cluster does not allow is refused at apply,
    // saying why.
    let manifest = cluster.dir.path().join("pod.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\n\
         spec: {containers: [{name: c, image: evil.example/x:1}]}\n",
    )
    .unwrap();
    let refused = cluster.orca(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(!refused.status.success(), "{}", stdout(&refused));
    let why = stderr(&refused);
    assert!(
        why.contains("spec.containers[0].image") && why.contains("not allowed in this cluster"),
        "{why}"
    );

    // A second `orca up` on the same state is refused and changes nothing.
    let again = Command::new(ORCA)
        .args(["up", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("holds a cluster already; `orca down --state"),
        "{}",
        stderr(&again)
    );
    assert!(cluster.ok(&["get", "nodes"]).contains("node-2"));
    // Drop runs `orca down` and checks nothing is left.
}

#[test]
fn up_refuses_bad_input_and_leaves_nothing() {
    let _one = one_at_a_time();
    let (dir, state, name) = Cluster::plan("bad");
    let out = Command::new(ORCA)
        .args(["up", "--nodes", "0", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--nodes 0: a local cluster has 1 to 100 nodes"),
        "{}",
        stderr(&out)
    );
    assert!(!state.exists());

    let config = dir.path().join("kubelet.yaml");
    std::fs::write(&config, "registries: {}\nmax_podz: 3\n").unwrap();
    let out = Command::new(ORCA)
        .args(["up", "--nodes", "1", "--kubelet-config"])
        .arg(&config)
        .arg("--state")
        .arg(&state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("kubelet.yaml") && err.contains("max_podz"),
        "{err}"
    );
    assert!(err.contains("kubelet.yaml:2:1"), "{err}");
    let left = leftovers(&name, &state);
    assert!(left.is_empty(), "a failed orca up left: {left:#?}");

    let out = Command::new(ORCA)
        .args(["down", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no cluster recorded there"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn down_removes_a_cluster_whose_up_was_killed_midway() {
    let _one = one_at_a_time();
    let (_dir, state, name) = Cluster::plan("crash");
    let mut up = Command::new(ORCA)
        .args(["up", "--nodes", "2", "--state"])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once the nodes are being started: etcd and the master run,
    // the namespaces exist, the nodes' processes may or may not.
    let lines = BufReader::new(up.stdout.take().unwrap());
    for line in lines.lines() {
        if line.unwrap().contains("starting 2 node(s)") {
            break;
        }
    }
    up.kill().unwrap();
    up.wait().unwrap();
    assert!(!leftovers(&name, &state).is_empty(), "nothing to clean up?");
    let out = Command::new(ORCA)
        .args(["down", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // The processes `orca up` started outlive it; none is left now.
    let left = leftovers(&name, &state);
    assert!(left.is_empty(), "orca down left: {left:#?}");
}

#[test]
fn a_dead_node_s_pods_move_and_the_ingress_stops_sending_to_them() {
    let (_one, _registry, cluster) = nginx_cluster(
        "node",
        &[],
        &[
            "--nodes",
            "3",
            "--node-monitor-grace-period",
            "20s",
            "--pod-eviction-timeout",
            "2s",
        ],
    );
    let pods = cluster.nginx_pods();
    let victim = pods[0].1.clone();
    let victim_ips: Vec<String> = pods
        .iter()
        .filter(|p| p.1 == victim)
        .map(|p| p.3.clone())
        .collect();
    wait_for(
        "the ingress to serve",
        Duration::from_secs(30),
        || cluster.ingress_status(1) == "200",
        || cluster.log("master-1"),
    );

    // The node dies: its process, its pods' processes, its namespace.
    cluster.kill(&victim);
    let kubelet_config = cluster
        .state
        .join(&victim)
        .join("kubelet.yaml")
        .display()
        .to_string();
    let netns = format!("/run/netns/{}-{victim}", cluster.name);
    let out = Command::new(ORCA)
        .args([
            "kubelet",
            "--cleanup",
            "--config",
            &kubelet_config,
            "--netns",
            &netns,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = Command::new("umount").arg(&netns).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_file(&netns).unwrap();

    // Unreachable once its Lease is silent for the grace period; from then
    // on the ingress sends nothing to its pods.
    wait_for(
        "the node to be unreachable",
        Duration::from_secs(60),
        || {
            cluster
                .ok(&["get", "node", &victim, "-o", "json"])
                .contains("node.kubernetes.io/unreachable")
        },
        || cluster.ok(&["get", "nodes"]),
    );
    wait_for(
        "the victim's endpoints to be not ready",
        Duration::from_secs(30),
        || {
            !victim_ready(
                &cluster.ok(&["get", "endpointslices", "-o", "json"]),
                &victim,
            )
        },
        || cluster.ok(&["get", "endpointslices", "-o", "json"]),
    );
    // Once the ingress and a living node's proxy have taken the change
    // (their own views, event by event), neither sends to the dead pods.
    let routes = || stdout(&cluster.in_hub("curl", &["-s", "http://172.30.0.11:9090/routes"]));
    wait_for(
        "the ingress to drop the victim's pods",
        Duration::from_secs(30),
        || {
            !victim_ips
                .iter()
                .any(|ip| routes().contains(&format!("\"{ip}:80\"")))
        },
        routes,
    );
    let living = pods
        .iter()
        .map(|p| &p.1)
        .find(|n| **n != victim)
        .unwrap()
        .clone();
    let living_ns = format!("--net=/run/netns/{}-{living}", cluster.name);
    let in_living = |program: &str, args: &[&str]| {
        stdout(
            &Command::new("nsenter")
                .arg(&living_ns)
                .arg(program)
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let table = || in_living("nft", &["list", "table", "ip", "orca"]);
    wait_for(
        "a living node's proxy to drop the victim's pods",
        Duration::from_secs(30),
        || {
            !victim_ips
                .iter()
                .any(|ip| table().contains(&format!("{ip} ")))
        },
        table,
    );
    let cluster_ip = cluster
        .ok(&["get", "service", "nginx", "-o", "json"])
        .split_once("\"clusterIP\": \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(ip, _)| ip.to_string())
        .expect("the Service's ClusterIP");
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(cluster.ingress_status(1));
        let url = format!("http://{cluster_ip}/");
        let args = [
            "-s",
            "-o",
            "/dev/null",
            "-m",
            "5",
            "-w",
            "%{http_code}",
            url.as_str(),
        ];
        statuses.push(in_living("curl", &args));
    }
    assert!(
        statuses.iter().all(|s| s == "200"),
        "the ingress or a ClusterIP failed requests after the node went: {statuses:?}\n{}\n{}",
        cluster.log("master-1"),
        (1..=3)
            .map(|i| cluster.log(&format!("node-{i}")))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Evicted after the eviction timeout; replaced on the living nodes.
    wait_for(
        "three nginx pods Running on the living nodes",
        Duration::from_secs(90),
        || {
            let pods = cluster.nginx_pods();
            let living: Vec<_> = pods
                .iter()
                .filter(|(_, node, phase, _)| *node != victim && phase == "Running")
                .collect();
            living.len() == 3
        },
        || cluster.ok(&["get", "pods", "-o", "wide"]),
    );
    let nodes: BTreeSet<String> = cluster
        .nginx_pods()
        .into_iter()
        .filter(|(_, _, phase, _)| phase == "Running")
        .map(|(_, node, _, _)| node)
        .collect();
    assert!(!nodes.contains(&victim), "{nodes:?}");

    // The access-log lines of those requests reached the shippers' sinks.
    wait_for(
        "the access log at the shippers' sinks",
        Duration::from_secs(30),
        || {
            std::fs::read_dir(cluster.state.join("shipped"))
                .unwrap()
                .flatten()
                .map(|f| std::fs::read_to_string(f.path()).unwrap_or_default())
                .any(|text| text.contains("\\\"GET / HTTP/1.1\\\" 200"))
        },
        String::new,
    );
}

#[test]
fn the_leader_master_killed_another_leads_and_the_ingress_keeps_serving() {
    let (_one, _registry, cluster) = nginx_cluster(
        "lead",
        &[],
        &["--nodes", "2", "--masters", "2", "--leader-ttl", "3s"],
    );
    let leading = |master: u8| {
        cluster
            .log(&format!("master-{master}"))
            .contains("leading: control loops start")
    };
    wait_for(
        "a leader",
        Duration::from_secs(30),
        || leading(1) || leading(2),
        || cluster.log("master-1") + &cluster.log("master-2"),
    );
    let (leader, survivor) = if leading(1) { (1, 2) } else { (2, 1) };
    wait_for(
        "the survivor's ingress to serve",
        Duration::from_secs(30),
        || cluster.ingress_status(survivor) == "200",
        || cluster.log(&format!("master-{survivor}")),
    );

    // Requests to the survivor's ingress go on from before the kill until
    // the survivor leads.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let statuses = std::thread::scope(|scope| {
        let requests = scope.spawn(|| {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                statuses.push(cluster.ingress_status(survivor));
            }
            statuses
        });
        cluster.kill(&format!("master-{leader}"));
        wait_for(
            "the survivor to lead",
            Duration::from_secs(60),
            || leading(survivor),
            || cluster.log(&format!("master-{survivor}")),
        );
        // A few more after the change of leader.
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        requests.join().unwrap()
    });
    assert!(statuses.len() > 5, "too few requests: {statuses:?}");
    assert!(
        statuses.iter().all(|s| s == "200"),
        "the survivor's ingress failed requests: {statuses:?}"
    );
    // Their access-log lines reach the shippers' sinks at least once.
    wait_for(
        "the requests' access-log lines at the shippers' sinks",
        Duration::from_secs(30),
        || cluster.shipped_requests() >= statuses.len(),
        || {
            format!(
                "{} of {} shipped",
                cluster.shipped_requests(),
                statuses.len()
            )
        },
    );

    // The new leader's control loops act: a scale-up is carried out.
    cluster.ok(&["scale", "deployment", "nginx-deployment", "--replicas", "4"]);
    cluster.ok(&[
        "rollout",
        "status",
        "deployment/nginx-deployment",
        "--timeout",
        "60s",
    ]);
    let running = cluster
        .nginx_pods()
        .iter()
        .filter(|(_, _, phase, _)| phase == "Running")
        .count();
    assert_eq!(running, 4, "{}", cluster.ok(&["get", "pods", "-o", "wide"]));
}

#[test]
fn one_of_three_etcd_members_killed_the_cluster_works_and_it_catches_up() {
    let _one = one_at_a_time();
    let cluster = Cluster::up("etcd", &["--nodes", "1", "--masters", "2"]);
    cluster.kill("etcd-2");
    // Writes and reads go on with two of three members.
    let manifest = cluster.dir.path().join("configmap.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: during-outage}\ndata: {k: v}\n",
    )
    .unwrap();
    cluster.ok(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(cluster.ok(&["get", "configmaps"]).contains("during-outage"));
    assert!(cluster.ok(&["get", "nodes"]).contains(" Ready "));

    // Started again as it was, the member catches up: a linearizable read
    // through it alone waits for it to apply what the others committed.
    let member = cluster.process("etcd-2");
    let command: Vec<String> = serde_json::from_value(member["command"].clone()).unwrap();
    let log = std::fs::File::options()
        .append(true)
        .open(member["log"].as_str().unwrap())
        .unwrap();
    let mut restarted = Command::new("nsenter")
        .arg(format!("--net={}", member["netns"].as_str().unwrap()))
        .args(&command)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let pki = cluster.state.join("pki");
    let via_member = |args: &[&str]| {
        let mut all = vec!["--etcd", "https://172.30.0.3:2379"];
        let ca = pki.join("ca.crt").display().to_string();
        let cert = pki.join("admin.crt").display().to_string();
        let key = pki.join("admin.key").display().to_string();
        all.extend(["--etcd-ca", &ca, "--etcd-cert", &cert, "--etcd-key", &key]);
        all.extend(args);
        cluster.in_hub(ORCA, &all)
    };
    wait_for(
        "the restarted member to serve the write it missed",
        Duration::from_secs(60),
        || stdout(&via_member(&["get", "configmap", "during-outage"])).contains("during-outage"),
        || cluster.log("etcd-2"),
    );
    let _ = restarted.kill();
    let _ = restarted.wait();
}

#[test]
fn a_rolling_update_under_load_fails_no_request() {
    let (_one, _registry, cluster) = nginx_cluster("roll", &["1.9.1"], &["--nodes", "2"]);
    wait_for(
        "the ingress to serve",
        Duration::from_secs(30),
        || cluster.ingress_status(1) == "200",
        || cluster.log("master-1"),
    );
    let old: BTreeSet<String> = cluster.nginx_pods().into_iter().map(|p| p.0).collect();

    // wrk, bounded in time, through the master's ingress, while the
    // Deployment moves to another image.
    let wrk = Command::new("nsenter")
        .arg(format!("--net={}", cluster.hub().display()))
        .args(["wrk", "-t1", "-c8", "-d12s", "-H", "Host: nginx.local"])
        .arg("http://172.30.0.11/")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wrk (Debian's wrk) runs");
    cluster.ok(&[
        "patch",
        "deployment",
        "nginx-deployment",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.9.1"}]}}}}"#,
    ]);
    cluster.ok(&[
        "rollout",
        "status",
        "deployment/nginx-deployment",
        "--timeout",
        "60s",
    ]);
    // Three new pods run (old ones may still be terminating).
    let new: BTreeSet<String> = cluster
        .nginx_pods()
        .into_iter()
        .filter(|(name, _, phase, _)| !old.contains(name) && phase == "Running")
        .map(|p| p.0)
        .collect();
    let out = wrk.wait_with_output().unwrap();
    let report = stdout(&out);
    assert!(out.status.success(), "{report}{}", stderr(&out));
    assert_eq!(
        new.len(),
        3,
        "the rollout was not done before the load ended: {old:?} {new:?}\n{report}"
    );
    assert!(report.contains("requests in"), "{report}");
    assert!(
        !report.contains("Non-2xx") && !report.contains("Socket errors"),
        "requests failed during the rolling update:\n{report}\n{}",
        cluster.log("master-1")
    );
    // Every request is a line of some pod's access log, the old pods' too:
    // each reaches the shippers' sinks at least once.
    let requests: usize = report
        .lines()
        .find_map(|l| l.trim().split_once(" requests in"))
        .and_then(|(n, _)| n.parse().ok())
        .expect("wrk's request count");
    wait_for(
        "every request's access-log line at the shippers' sinks",
        Duration::from_secs(60),
        || cluster.shipped_requests() >= requests,
        || format!("{} of {requests} shipped", cluster.shipped_requests()),
    );
}
