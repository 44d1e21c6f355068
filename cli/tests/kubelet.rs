//! The kubelet running real pods: `orca kubelet` against a real etcd, with
//! images built by the test (Debian's busybox-static, umoci, skopeo) and
//! pulled from a real registry (Debian's docker-registry) on loopback,
//! containers run by runc under `orca-monitor`. Each node's bridge and pods
//! live in a network namespace the test creates, whose only routes are its
//! own pod CIDR: no packet leaves it. Pods are bound to the node directly
//! (no scheduler), as a DaemonSet's are.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use orca_testkit::Etcd;
use orca_testkit::netns::{Netns, require_root};
use orca_testkit::registry::{ImageSpec, PASSWORD, Registry, USERNAME};
use serde_json::{Value, json};

const ORCA: &str = env!("CARGO_BIN_EXE_orca");
/// Far above what any wait here takes; only a hang reaches it.
const WAIT: Duration = Duration::from_secs(120);
const NODE: &str = "kubelet-node";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// etcd, a registry with a busybox image, a node namespace and a kubelet;
/// all of it removed on drop (the kubelet's own `--cleanup` included).
struct Node {
    etcd: Etcd,
    registry: Registry,
    netns: Netns,
    dir: tempfile::TempDir,
    config: PathBuf,
    kubelet: Option<Child>,
    image: String,
    cgroup: String,
}

impl Node {
    fn start() -> Self {
        Self::start_with(Registry::start())
    }

    fn start_with(registry: Registry) -> Self {
        require_root("the kubelet's tests (namespaces, mounts, cgroups, runc)");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", std::process::id());
        let etcd = Etcd::start();
        let image = registry.push_busybox("bb:1", &ImageSpec::default());
        let netns = Netns::new(format!("orca-kl-{id}"));
        let dir = tempfile::tempdir().unwrap();
        let cgroup = format!("orca-test-{id}");
        let config = dir.path().join("kubelet.yaml");
        std::fs::write(
            &config,
            format!(
                "state_dir: {state}\nlog_dir: {logs}\npod_cidr: 10.244.1.0/24\n\
                 cgroup_parent: {cgroup}\nport: {port}\nheartbeat: 1s\n\
                 restart_backoff: 1s\nrestart_backoff_max: 4s\nrestart_backoff_reset: 3s\n\
                 pull_backoff: 1s\n\
                 registries:\n  \"{addr}\": {{insecure: true}}\n\
                 images:\n  allow: [\"{addr}/*\"]\n",
                state = dir.path().join("state").display(),
                logs = dir.path().join("logs").display(),
                port = free_port(),
                addr = registry.addr(),
            ),
        )
        .unwrap();
        let mut node = Self {
            etcd,
            registry,
            netns,
            dir,
            config,
            kubelet: None,
            image,
            cgroup,
        };
        node.start_kubelet();
        node.wait_for("the node to register", |n| {
            n.orca(&["get", "node", NODE, "-o", "json"])
                .status
                .success()
        });
        node
    }

    fn start_kubelet(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("kubelet.log"))
            .unwrap();
        let child = Command::new(ORCA)
            .args(["--etcd", &self.etcd.endpoint(), "kubelet", "--node", NODE])
            .args(["--config", self.config.to_str().unwrap()])
            .args(["--netns", &self.netns.path()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start orca kubelet");
        self.kubelet = Some(child);
    }

    fn kill_kubelet(&mut self) {
        if let Some(mut child) = self.kubelet.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    fn orca(&self, args: &[&str]) -> Output {
        Command::new(ORCA)
            .args(["--etcd", &self.etcd.endpoint()])
            .args(args)
            .output()
            .expect("run orca")
    }

    fn apply(&self, object: &Value) {
        let mut child = Command::new(ORCA)
            .args(["--etcd", &self.etcd.endpoint(), "apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), object.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pod(&self, name: &str) -> Option<Value> {
        let out = self.orca(&["get", "pod", name, "-o", "json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    fn wait_for(&self, what: &str, mut check: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !check(self) {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.path().join("kubelet.log"))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "timed out waiting for {what}; kubelet log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until pod `name`'s status satisfies `check`; that status.
    fn wait_pod(&self, name: &str, what: &str, mut check: impl FnMut(&Value) -> bool) -> Value {
        let mut seen = Value::Null;
        self.wait_for(what, |n| {
            seen = n.pod(name).unwrap_or(Value::Null);
            check(&seen)
        });
        seen
    }

    fn pod_manifest(&self, name: &str, containers: Value, extra: Value) -> Value {
        let mut spec = json!({
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 5,
            "containers": containers,
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            spec[k] = v.clone();
        }
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        })
    }

    /// Deletes pod `name` and waits until the kubelet's final delete.
    fn delete_pod(&self, name: &str) {
        let out = self.orca(&["delete", "pod", name]);
        assert!(
            out.status.success(),
            "delete: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.wait_for("the pod's final delete", |n| n.pod(name).is_none());
    }

    /// Runs a command in the node's network namespace.
    fn in_node(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                self.netns.path().trim_start_matches("/run/netns/"),
            ])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_kubelet();
        let _ = Command::new(ORCA)
            .args([
                "kubelet",
                "--cleanup",
                "--config",
                self.config.to_str().unwrap(),
            ])
            .args(["--netns", &self.netns.path()])
            .output();
    }
}

fn container_status<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

fn condition<'a>(pod: &'a Value, type_: &str) -> Option<&'a str> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?["status"]
        .as_str()
}

fn uid(pod: &Value) -> String {
    pod["metadata"]["uid"].as_str().unwrap().to_string()
}

/// Processes whose command line mentions `text` (zombies aside: they hold
/// nothing and are their parent's to reap).
fn processes_mentioning(text: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            !status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(text).then_some(cmdline)
        })
        .collect()
}

fn mounts_mentioning(text: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(text))
        .map(str::to_string)
        .collect()
}

fn cgroup_dirs(parent: &str, uid: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path().join(parent).join(format!("pod{uid}")))
        .filter(|p| p.exists())
        .collect()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn two_containers_talk_over_localhost_and_a_deleted_pod_leaves_nothing_behind() {
    let node = Node::start();
    let containers = json!([
        {
            "name": "web",
            "image": node.image,
            "command": ["sh", "-c", "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www"],
        },
        {
            "name": "client",
            "image": node.image,
            "command": ["sh", "-c", "while true; do wget -q -O - http://127.0.0.1:8080/ && sleep 0.5; done"],
        },
    ]);
    node.apply(&node.pod_manifest("pair", containers, json!({})));
    let pod = node.wait_pod("pair", "both containers running and the pod Ready", |p| {
        p["status"]["phase"] == "Running" && condition(p, "Ready") == Some("True")
    });
    let ip = pod["status"]["podIP"].as_str().unwrap().to_string();
    assert!(
        ip.starts_with("10.244.1."),
        "an address from the node's pod CIDR: {ip}"
    );
    assert_eq!(container_status(&pod, "web")["restartCount"], 0);
    assert!(
        container_status(&pod, "web")["containerID"]
            .as_str()
            .unwrap()
            .starts_with("runc://")
    );
    let uid = uid(&pod);
    // The node reports what it has and how it fares.
    let out = node.orca(&["get", "node", NODE, "-o", "json"]);
    let node_object: Value = serde_json::from_slice(&out.stdout).unwrap();
    let status = &node_object["status"];
    assert!(
        status["capacity"]["memory"]
            .as_str()
            .unwrap()
            .ends_with("Ki")
    );
    assert!(
        status["nodeInfo"]["containerRuntimeVersion"]
            .as_str()
            .unwrap()
            .starts_with("runc://1.")
    );
    for (type_, reason) in [
        ("Ready", "KubeletReady"),
        ("MemoryPressure", "KubeletHasSufficientMemory"),
        ("DiskPressure", "KubeletHasNoDiskPressure"),
    ] {
        let found = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == type_ && c["reason"] == reason);
        assert!(found, "{type_} {reason} in {status}");
    }
    // Kubernetes spells this one field with a capital.
    assert!(status["daemonEndpoints"]["kubeletEndpoint"]["Port"].is_number());

    // The client's log (CRI format, where the log shipper reads) shows the
    // page it fetched over the pod's loopback.
    let log = node.logs().join(format!("default_pair_{uid}/client/0.log"));
    node.wait_for("the client's log to show the page", |_| {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains(" stdout F hello-from-web"))
    });
    // `orca logs` reads the same through the kubelet's server.
    let out = node.orca(&["logs", "pair", "-c", "client", "--tail", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello-from-web\n");
    // A pod of two containers needs one named, and a name it has.
    let out = node.orca(&["logs", "pair"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "a container name must be specified for pod pair, choose one of: [web client]"
        ),
        "{err}"
    );
    let out = node.orca(&["logs", "pair", "-c", "nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("container nope is not valid for pod pair"),
        "{err}"
    );
    // `orca exec` runs in the container.
    let out = node.orca(&["exec", "pair", "-c", "web", "--", "cat", "/www/index.html"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello-from-web\n");
    // The node reaches the pod at its address through the bridge.
    let out = node.in_node(&[
        "busybox",
        "wget",
        "-q",
        "-O",
        "-",
        &format!("http://{ip}:8080/"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello-from-web\n");

    node.delete_pod("pair");
    assert!(
        processes_mentioning(&uid).is_empty(),
        "{:?}",
        processes_mentioning(&uid)
    );
    assert!(
        mounts_mentioning(&uid).is_empty(),
        "{:?}",
        mounts_mentioning(&uid)
    );
    assert!(cgroup_dirs(&node.cgroup, &uid).is_empty());
    let links = node.in_node(&["ip", "-o", "link"]);
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("veth"),
        "a veth is left"
    );
    assert!(
        files_under(&node.state().join("ipam")).is_empty(),
        "an address is still allocated"
    );
    assert!(!node.state().join("pods").join(&uid).exists());
    assert!(!node.logs().join(format!("default_pair_{uid}")).exists());
}

#[test]
fn a_crash_loop_backs_off_longer_each_time_and_keeps_the_last_exit() {
    let node = Node::start();
    let containers = json!([{
        "name": "crash",
        "image": node.image,
        "command": ["sh", "-c", "echo about to fail; exit 3"],
    }]);
    node.apply(&node.pod_manifest("crasher", containers, json!({})));
    let mut messages = Vec::new();
    let pod = node.wait_pod("crasher", "three restarts", |p| {
        let c = container_status(p, "crash");
        let seen = format!(
            "{} {} {}",
            c["restartCount"], c["state"]["waiting"]["reason"], c["state"]["waiting"]["message"]
        );
        if !messages.contains(&seen) {
            messages.push(seen);
        }
        c["restartCount"].as_i64().unwrap_or(0) >= 3
            && c["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    let c = container_status(&pod, "crash");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 3);
    assert_eq!(c["lastState"]["terminated"]["reason"], "Error");
    assert_eq!(pod["status"]["phase"], "Running");
    // The delay doubles (1s, 2s, 4s with this node's settings), capped.
    let delays: Vec<&str> = messages
        .iter()
        .filter_map(|m| m.split("back-off ").nth(1)?.split(' ').next())
        .collect();
    let mut expected = vec!["1s", "2s", "4s"];
    expected.retain(|d| delays.contains(d));
    assert!(expected.len() >= 2, "delays seen: {messages:?}");
    // Each attempt has its own log file; --previous reads the last one.
    let out = node.orca(&["logs", "crasher", "--previous"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "about to fail\n");
    // Only the current attempt and the one before it are kept, with their
    // logs: a crash loop does not fill the disk.
    let uid = uid(&pod);
    let attempts = files_under(&node.state().join(format!("pods/{uid}/containers/crash")));
    assert!(attempts.len() <= 2, "{attempts:?}");
    let logs = files_under(&node.logs().join(format!("default_crasher_{uid}/crash")));
    assert!(logs.len() <= 2, "{logs:?}");
}

#[test]
fn a_missing_image_and_a_refused_image_say_why_in_the_status() {
    let node = Node::start();
    let missing = format!("{}/nothing-here:1", node.registry.addr());
    node.apply(&node.pod_manifest(
        "missing",
        json!([{"name": "c", "image": missing}]),
        json!({}),
    ));
    let pod = node.wait_pod("missing", "ImagePullBackOff", |p| {
        container_status(p, "c")["state"]["waiting"]["reason"] == "ImagePullBackOff"
    });
    let message = container_status(&pod, "c")["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("manifest unknown") || message.contains("name unknown"),
        "{message}"
    );
    assert_eq!(pod["status"]["phase"], "Pending");

    node.apply(&node.pod_manifest(
        "refused",
        json!([{"name": "c", "image": "docker.io/library/nginx:1.7.9"}]),
        json!({}),
    ));
    let pod = node.wait_pod("refused", "the refusal", |p| {
        container_status(p, "c")["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("allow"))
    });
    let message = container_status(&pod, "c")["state"]["waiting"]["message"]
        .as_str()
        .unwrap();
    assert!(
        message.contains(&format!("{}/*", node.registry.addr())),
        "names the rule: {message}"
    );
}

#[test]
fn a_memory_limit_ends_in_oom_killed() {
    let node = Node::start();
    let containers = json!([{
        "name": "hog",
        "image": node.image,
        "command": ["sh", "-c", "x=$(head -c 67108864 /dev/zero | tr '\\0' x); echo survived"],
        "resources": {"limits": {"memory": "16Mi"}},
    }]);
    node.apply(&node.pod_manifest("hog", containers, json!({"restartPolicy": "Never"})));
    let pod = node.wait_pod("hog", "the container to end", |p| {
        container_status(p, "hog")["state"]["terminated"].is_object()
    });
    let terminated = &container_status(&pod, "hog")["state"]["terminated"];
    assert_eq!(terminated["reason"], "OOMKilled", "{terminated}");
    assert_eq!(terminated["exitCode"], 137);
    assert_eq!(pod["status"]["phase"], "Failed");
}

#[test]
fn a_restarted_kubelet_adopts_its_running_containers_and_logs_follow_on() {
    let mut node = Node::start();
    let containers = json!([{
        "name": "counter",
        "image": node.image,
        "command": ["sh", "-c", "i=0; while true; do i=$((i+1)); echo line-$i; sleep 0.1; done"],
    }]);
    node.apply(&node.pod_manifest("counter", containers, json!({})));
    let pod = node.wait_pod("counter", "the pod Running", |p| {
        p["status"]["phase"] == "Running"
    });
    let uid = uid(&pod);
    let record = node
        .state()
        .join(format!("pods/{uid}/containers/counter/0/container.json"));
    let before: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let pid = before["pid"].as_i64().unwrap();

    node.kill_kubelet();
    let log = node
        .logs()
        .join(format!("default_counter_{uid}/counter/0.log"));
    let lines_then = std::fs::read_to_string(&log).unwrap().lines().count();
    node.wait_for("the container to keep writing with no kubelet", |_| {
        std::fs::read_to_string(&log).unwrap().lines().count() > lines_then + 5
    });
    node.start_kubelet();
    // The restarted kubelet's status write shows it adopted the container.
    let restarted_at = std::fs::read_to_string(node.dir.path().join("kubelet.log"))
        .unwrap()
        .lines()
        .count();
    node.wait_for("the restarted kubelet to adopt the container", |n| {
        let log = std::fs::read_to_string(n.dir.path().join("kubelet.log")).unwrap();
        log.lines()
            .skip(restarted_at)
            .any(|l| l.contains("adopted a running container"))
    });
    let pod = node.pod("counter").unwrap();
    assert_eq!(container_status(&pod, "counter")["restartCount"], 0);
    let after: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(after["pid"].as_i64(), Some(pid), "the same process runs on");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert!(
        !node
            .state()
            .join(format!("pods/{uid}/containers/counter/1"))
            .exists()
    );

    // The log has every line once, in order, across the restart.
    let numbers: Vec<u64> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| l.rsplit("line-").next()?.parse().ok())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "a gap or a repeat in the log"
    );

    // `orca logs -f` follows the adopted container from where it is.
    let mut follow = Command::new(ORCA)
        .args([
            "--etcd",
            &node.etcd.endpoint(),
            "logs",
            "-f",
            "--tail",
            "1",
            "counter",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(follow.stdout.take().unwrap());
    let mut lines = Vec::new();
    while lines.len() < 3 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
        lines.push(line);
    }
    let seq: Vec<u64> = lines
        .iter()
        .map(|l| l.trim().strip_prefix("line-").unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        seq,
        [seq[0], seq[0] + 1, seq[0] + 2],
        "followed in order: {lines:?}"
    );

    // Deleting the pod ends the follower with the container.
    node.delete_pod("counter");
    let status = follow.wait().unwrap();
    assert!(status.success());
    assert!(processes_mentioning(&uid).is_empty());
}

#[test]
fn a_failing_liveness_probe_restarts_its_container_and_readiness_gates_ready() {
    let node = Node::start();
    let containers = json!([{
        "name": "web",
        "image": node.image,
        "command": ["sh", "-c", "mkdir -p /www && echo ok > /www/healthz && exec httpd -f -p 8080 -h /www"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 1,
            "failureThreshold": 2,
        },
        "readinessProbe": {
            "exec": {"command": ["cat", "/www/ready"]},
            "periodSeconds": 1,
        },
    }]);
    node.apply(&node.pod_manifest(
        "probed",
        containers,
        json!({"terminationGracePeriodSeconds": 2}),
    ));
    let pod = node.wait_pod("probed", "the container running, not ready", |p| {
        p["status"]["phase"] == "Running" && container_status(p, "web")["started"] == true
    });
    assert_eq!(condition(&pod, "Ready"), Some("False"));
    assert_eq!(container_status(&pod, "web")["ready"], false);

    // Readiness follows the probe both ways.
    let out = node.orca(&["exec", "probed", "--", "touch", "/www/ready"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    node.wait_pod("probed", "Ready", |p| condition(p, "Ready") == Some("True"));
    node.orca(&["exec", "probed", "--", "rm", "/www/ready"]);
    node.wait_pod("probed", "not Ready again", |p| {
        condition(p, "Ready") == Some("False")
    });

    // The liveness probe failing twice restarts the container.
    node.orca(&["exec", "probed", "--", "rm", "/www/healthz"]);
    let pod = node.wait_pod("probed", "a restart", |p| {
        container_status(p, "web")["restartCount"] == 1 && p["status"]["phase"] == "Running"
    });
    let last = &container_status(&pod, "web")["lastState"]["terminated"];
    assert!(
        last.is_object(),
        "the killed attempt is the last state: {pod}"
    );
    let log = std::fs::read_to_string(node.dir.path().join("kubelet.log")).unwrap();
    assert!(
        log.contains("Liveness probe failed"),
        "the kubelet says why"
    );
}

#[test]
fn init_containers_volumes_and_environment_reach_the_container() {
    let node = Node::start();
    node.apply(&json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "default"},
        "data": {"greeting": "hello", "file.txt": "from-a-configmap"},
    }));
    let pod = node.pod_manifest(
        "init",
        json!([{
            "name": "main",
            "image": node.image,
            "command": ["sh", "-c", "echo $GREETING $POD_NAME $(cat /work/made-by-init) $(cat /config/file.txt); sleep 3600"],
            "env": [
                {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ],
            "volumeMounts": [
                {"name": "work", "mountPath": "/work"},
                {"name": "config", "mountPath": "/config", "readOnly": true},
            ],
        }]),
        json!({
            "initContainers": [
                {"name": "first", "image": node.image, "command": ["sh", "-c", "echo one > /work/order"],
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                {"name": "second", "image": node.image,
                 "command": ["sh", "-c", "test -f /work/order && echo init-was-here > /work/made-by-init"],
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
            ],
            "volumes": [
                {"name": "work", "emptyDir": {}},
                {"name": "config", "configMap": {"name": "settings"}},
            ],
        }),
    );
    node.apply(&pod);
    let pod = node.wait_pod("init", "the main container running", |p| {
        p["status"]["phase"] == "Running"
    });
    assert_eq!(condition(&pod, "Initialized"), Some("True"));
    let inits = pod["status"]["initContainerStatuses"].as_array().unwrap();
    assert!(
        inits
            .iter()
            .all(|c| c["state"]["terminated"]["reason"] == "Completed")
    );
    node.wait_for("the main container's line", |n| {
        let out = n.orca(&["logs", "init", "-c", "main"]);
        String::from_utf8_lossy(&out.stdout) == "hello init init-was-here from-a-configmap\n"
    });
}

#[test]
fn a_pod_deleted_while_the_kubelet_is_down_is_cleaned_up_when_it_returns() {
    let mut node = Node::start();
    let containers = json!([{
        "name": "sleeper",
        "image": node.image,
        "command": ["sleep", "3600"],
    }]);
    node.apply(&node.pod_manifest("orphan", containers, json!({})));
    let pod = node.wait_pod("orphan", "the pod Running", |p| {
        p["status"]["phase"] == "Running"
    });
    let uid = uid(&pod);
    assert!(!processes_mentioning(&uid).is_empty(), "its monitor runs");

    node.kill_kubelet();
    let out = node.orca(&["delete", "pod", "orphan", "--grace-period", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(node.pod("orphan").is_none());
    // Nothing stops it while the kubelet is away.
    assert!(!processes_mentioning(&uid).is_empty());

    node.start_kubelet();
    node.wait_for("the returning kubelet to remove the pod", |n| {
        processes_mentioning(&uid).is_empty() && !n.state().join("pods").join(&uid).exists()
    });
    assert!(
        mounts_mentioning(&uid).is_empty(),
        "{:?}",
        mounts_mentioning(&uid)
    );
    assert!(cgroup_dirs(&node.cgroup, &uid).is_empty());
    assert!(files_under(&node.state().join("ipam")).is_empty());
    let links = node.in_node(&["ip", "-o", "link"]);
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("veth"),
        "a veth is left"
    );
}

#[test]
fn a_tcp_readiness_probe_that_passes_at_once_makes_the_pod_ready() {
    let node = Node::start();
    for i in 0..3 {
        let name = format!("ready-{i}");
        let containers = json!([{
            "name": "web",
            "image": node.image,
            "command": ["httpd", "-f", "-p", "8080"],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
        }]);
        node.apply(&node.pod_manifest(&name, containers, json!({})));
        node.wait_pod(&name, "Ready", |p| condition(p, "Ready") == Some("True"));
        node.delete_pod(&name);
    }
}

#[test]
fn a_pod_marked_not_ready_while_its_node_was_away_is_ready_again() {
    let node = Node::start();
    let containers = json!([{
        "name": "web",
        "image": node.image,
        "command": ["httpd", "-f", "-p", "8080"],
    }]);
    node.apply(&node.pod_manifest("back", containers, json!({})));
    node.wait_pod("back", "Ready", |p| condition(p, "Ready") == Some("True"));
    // What the node lifecycle controller writes when the node's Lease goes
    // silent; the kubelet, reachable again, puts its own view back.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = orca_core::store::Store::connect(orca_core::store::StoreConfig::new(
            node.etcd.endpoint(),
        ))
        .await
        .unwrap();
        store
            .api::<orca_core::api::Pod>("default")
            .modify_if_exists("back", true, |pod| {
                let conditions = pod.status.as_mut().unwrap().conditions.as_mut().unwrap();
                for c in conditions.iter_mut().filter(|c| c.type_ == "Ready") {
                    c.status = "False".into();
                }
            })
            .await
            .unwrap()
            .expect("the pod");
    });
    node.wait_pod("back", "Ready again", |p| {
        condition(p, "Ready") == Some("True")
    });
    node.delete_pod("back");
}

/// Standard base64, as a Secret's `data` holds its values.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn an_image_pull_secret_opens_a_registry_that_asks_for_a_password() {
    let node = Node::start_with(Registry::start_with_password());
    let registry = node.registry.addr();
    // Without the secret the registry's refusal is the container's reason.
    let containers = json!([{"name": "c", "image": node.image, "command": ["sleep", "3600"]}]);
    node.apply(&node.pod_manifest("no-secret", containers.clone(), json!({})));
    let pod = node.wait_pod("no-secret", "the refusal", |p| {
        container_status(p, "c")["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("authentication required"))
    });
    assert_eq!(pod["status"]["phase"], "Pending");

    let config = json!({"auths": {registry.clone(): {"username": USERNAME, "password": PASSWORD}}});
    node.apply(&json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "pull", "namespace": "default"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64(config.to_string().as_bytes())},
    }));
    node.apply(&node.pod_manifest(
        "with-secret",
        containers,
        json!({"imagePullSecrets": [{"name": "pull"}]}),
    ));
    node.wait_pod("with-secret", "the pod Running", |p| {
        p["status"]["phase"] == "Running"
    });
}

#[test]
fn a_container_that_ran_long_enough_restarts_after_the_first_delay_again() {
    let node = Node::start();
    // Each run (4 s) outlasts this node's restart_backoff_reset (3 s).
    let containers = json!([{
        "name": "slow",
        "image": node.image,
        "command": ["sh", "-c", "sleep 4; exit 1"],
    }]);
    node.apply(&node.pod_manifest("slow", containers, json!({})));
    let mut delays = Vec::new();
    node.wait_pod("slow", "three restarts", |p| {
        let c = container_status(p, "slow");
        if let Some(m) = c["state"]["waiting"]["message"].as_str()
            && !delays.contains(&m.to_string())
        {
            delays.push(m.to_string());
        }
        c["restartCount"].as_i64().unwrap_or(0) >= 3
    });
    assert_eq!(delays, ["back-off 1s restarting failed container=slow"]);
}
