//! The control plane as operators run it: `orca master` (one or two) and
//! hollow nodes (`orca hollow-node`, one process per node, so a node can be
//! stopped) against a real etcd, driven with the `orca` CLI. Nothing here
//! sends traffic anywhere: hollow nodes run no containers.

use std::collections::{BTreeSet, HashMap};
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use orca_testkit::Etcd;
use serde_json::{Value, json};

const ORCA: &str = env!("CARGO_BIN_EXE_orca");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
/// Far above what any wait here takes; only a hang reaches it.
const WAIT: Duration = Duration::from_secs(90);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// etcd, masters and hollow nodes, all stopped on drop.
struct Plane {
    etcd: Etcd,
    dir: tempfile::TempDir,
    masters: Vec<Option<Child>>,
    nodes: HashMap<String, Child>,
}

impl Plane {
    fn start(masters: usize, nodes: &[&str]) -> Self {
        let mut plane = Self {
            etcd: Etcd::start(),
            dir: tempfile::tempdir().unwrap(),
            masters: Vec::new(),
            nodes: HashMap::new(),
        };
        for i in 0..masters {
            plane.start_master(i);
        }
        for node in nodes {
            plane.start_node(node);
        }
        plane.wait_for("every node ready", |p| {
            let ready = p.json(&["get", "nodes"])["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| {
                    condition(n, "Ready") == Some("True") && n["spec"]["podCIDR"].is_string()
                })
                .count();
            ready == nodes.len()
        });
        plane
    }

    fn start_master(&mut self, i: usize) {
        let config = self.dir.path().join(format!("master-{i}.yaml"));
        std::fs::write(
            &config,
            format!(
                "listeners:\n  - {{name: web, address: \"127.0.0.1:{}\"}}\nadmin: {{address: \"127.0.0.1:{}\"}}\n",
                free_port(),
                free_port()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(self.dir.path().join(format!("master-{i}.log"))).unwrap();
        let child = Command::new(ORCA)
            .args(["--etcd", &self.etcd.endpoint(), "master"])
            .args(["--config", config.to_str().unwrap(), "--workers", "1"])
            .args(["--identity", &format!("master-{i}"), "--leader-ttl", "3s"])
            .args([
                "--node-monitor-grace-period",
                "3s",
                "--pod-eviction-timeout",
                "2s",
            ])
            .args(["--node-monitor-period", "500ms"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start orca master");
        if self.masters.len() <= i {
            self.masters.resize_with(i + 1, || None);
        }
        self.masters[i] = Some(child);
    }

    /// Starts `orca scheduler` or `orca controller-manager` alone, kept
    /// with the masters.
    fn start_alone(&mut self, command: &str) {
        let log = std::fs::File::create(self.dir.path().join(format!("{command}.log"))).unwrap();
        let child = Command::new(ORCA)
            .args(["--etcd", &self.etcd.endpoint(), command])
            .args(["--identity", command, "--leader-ttl", "3s"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the control loop");
        self.masters.push(Some(child));
    }

    fn start_node(&mut self, name: &str) {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let child = Command::new(ORCA)
            .args([
                "--etcd",
                &self.etcd.endpoint(),
                "hollow-node",
                "--count",
                "1",
            ])
            .args(["--prefix", &format!("{name}-"), "--heartbeat", "500ms"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start orca hollow-node");
        self.nodes.insert(format!("{name}-0"), child);
    }

    /// SIGKILLs the process of node `name` (its Lease goes silent).
    fn kill_node(&mut self, name: &str) {
        let mut child = self.nodes.remove(name).expect("a node of this plane");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGKILLs master `i`.
    fn kill_master(&mut self, i: usize) {
        let mut child = self.masters[i].take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn orca(&self, args: &[&str]) -> Output {
        Command::new(ORCA)
            .args(["--etcd", &self.etcd.endpoint()])
            .args(args)
            .output()
            .expect("run orca")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.orca(args);
        assert!(
            out.status.success(),
            "orca {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, manifest: &str) {
        let path = self.dir.path().join("manifest.yaml");
        std::fs::write(&path, manifest).unwrap();
        self.ok(&["apply", "-f", path.to_str().unwrap()]);
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(&[args, &["-o", "json"]].concat())).unwrap()
    }

    fn pods(&self) -> Vec<Value> {
        self.json(&["get", "pods"])["items"]
            .as_array()
            .unwrap()
            .clone()
    }

    fn wait_for(&self, what: &str, mut check: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !check(self) {
            if Instant::now() > deadline {
                let logs: Vec<String> = std::fs::read_dir(self.dir.path())
                    .unwrap()
                    .flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                    .map(|e| {
                        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                        let tail: Vec<&str> = text.lines().rev().take(15).collect();
                        format!(
                            "{}:\n{}",
                            e.path().display(),
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        )
                    })
                    .collect();
                panic!("timed out waiting for: {what}\n{}", logs.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn available(&self, deployment: &str) -> i64 {
        self.json(&["get", "deploy", deployment])["status"]["availableReplicas"]
            .as_i64()
            .unwrap_or(0)
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        for child in self
            .masters
            .iter_mut()
            .flatten()
            .chain(self.nodes.values_mut())
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a str> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?["status"]
        .as_str()
}

fn running_on(pod: &Value) -> Option<String> {
    (pod["status"]["phase"] == "Running" && pod["metadata"]["deletionTimestamp"].is_null()).then(
        || {
            pod["spec"]["nodeName"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        },
    )
}

fn deployment(name: &str, replicas: u32, image: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n{extra_spec}  \
         selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    \
         spec: {{containers: [{{name: c, image: \"{image}\", ports: [{{containerPort: 80}}]}}]}}\n"
    )
}

/// Every change of one kind in etcd's order, through the core watcher, on
/// a thread of its own until dropped.
struct Events<K> {
    rx: std::sync::mpsc::Receiver<(String, Option<K>, i64)>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Every pod change.
type PodEvents = Events<orca_core::api::Pod>;

impl<K: orca_core::api::Object> Events<K> {
    fn follow(endpoint: &str) -> Self {
        let endpoint = endpoint.to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                use futures::StreamExt;
                use orca_core::watch::{Event, watcher};
                let store =
                    orca_core::store::Store::connect(orca_core::store::StoreConfig::new(endpoint))
                        .await
                        .unwrap();
                let events = watcher(store.all::<K>());
                let mut events = std::pin::pin!(events);
                let mut stopped = std::pin::pin!(stopped);
                loop {
                    let event = tokio::select! {
                        _ = &mut stopped => return,
                        e = events.next() => e,
                    };
                    let (object, gone) = match event {
                        Some(Ok(Event::Apply(o) | Event::InitApply(o))) => (o, false),
                        Some(Ok(Event::Delete(o))) => (o, true),
                        _ => continue,
                    };
                    let name = object.metadata().name.clone().unwrap_or_default();
                    // A deleted object carries the revision it was deleted at.
                    let at = orca_core::store::revision_of(&object);
                    let _ = tx.send((name, (!gone).then_some(object), at));
                }
            });
        });
        Self {
            rx,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The next change: an object's name, and the object (`None`: deleted).
    fn next(&self) -> (String, Option<K>) {
        let (name, object, _) = self.next_at();
        (name, object)
    }

    /// The next change, with the revision it was made at.
    fn next_at(&self) -> (String, Option<K>, i64) {
        self.rx.recv_timeout(WAIT).expect("objects change")
    }

    /// The revision at which the object named `prefix...` was deleted.
    fn deleted_at(&self, prefix: &str) -> i64 {
        loop {
            if let (name, None, at) = self.next_at()
                && name.starts_with(prefix)
            {
                return at;
            }
        }
    }
}

impl<K> Drop for Events<K> {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn image_of(pod: &orca_core::api::Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.as_deref())
        .unwrap_or_default()
}

#[test]
fn the_example_deployment_runs_spread_over_three_nodes_behind_its_service() {
    let plane = Plane::start(1, &["n1", "n2", "n3"]);
    plane.ok(&["apply", "-f", EXAMPLES]);
    plane.wait_for("3 available replicas", |p| {
        p.available("nginx-deployment") == 3
    });

    let pods = plane.pods();
    let nodes: BTreeSet<String> = pods.iter().filter_map(running_on).collect();
    assert_eq!(pods.len(), 3);
    assert_eq!(nodes.len(), 3, "one pod a node: {nodes:?}");
    for pod in &pods {
        assert!(
            pod["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("nginx-deployment-")
        );
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        let ip = pod["status"]["podIP"].as_str().unwrap();
        assert!(ip.starts_with("10.244."), "{ip}");
    }

    // The Service got an address, and its slice lists the pods, ready.
    let svc = plane.json(&["get", "svc", "nginx"]);
    assert!(
        svc["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .starts_with("10."),
        "{svc}"
    );
    plane.wait_for("the Service's endpoints", |p| {
        let slices = p.json(&["get", "endpointslices"]);
        let endpoints: Vec<&Value> = slices["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "nginx")
            .flat_map(|s| s["endpoints"].as_array().unwrap().iter())
            .filter(|e| e["conditions"]["ready"] == true)
            .collect();
        endpoints.len() == 3
    });
    let deploy = plane.json(&["get", "deploy", "nginx-deployment"]);
    assert_eq!(condition(&deploy, "Available"), Some("True"));
    assert_eq!(condition(&deploy, "Progressing"), Some("True"));
    // The ReplicaSet's status counts its pods, for the generation it saw.
    plane.wait_for("the ReplicaSet's status", |p| {
        let sets = p.json(&["get", "rs"]);
        let rs = &sets["items"][0];
        let status = &rs["status"];
        status["replicas"] == 3
            && status["readyReplicas"] == 3
            && status["availableReplicas"] == 3
            && status["fullyLabeledReplicas"] == 3
            && status["observedGeneration"] == rs["metadata"]["generation"]
    });
}

#[test]
fn a_deleted_node_gives_its_pod_cidr_back() {
    let mut plane = Plane::start(1, &["n1", "n2"]);
    let cidr_of = |p: &Plane, node: &str| {
        p.json(&["get", "node", node])["spec"]["podCIDR"]
            .as_str()
            .map(str::to_string)
    };
    let first = cidr_of(&plane, "n1-0").unwrap();
    let second = cidr_of(&plane, "n2-0").unwrap();
    assert_ne!(first, second);
    plane.kill_node("n2-0");
    plane.ok(&["delete", "node", "n2-0"]);
    // The next node gets the range that was let go.
    plane.start_node("n3");
    plane.wait_for("n3 with a pod CIDR", |p| {
        p.orca(&["get", "node", "n3-0"]).status.success() && cidr_of(p, "n3-0").is_some()
    });
    // n1 and n2 had the two lowest ranges, so n2's is the lowest free one.
    assert_eq!(cidr_of(&plane, "n3-0").unwrap(), second);
}

#[test]
fn a_rolling_update_never_drops_below_the_available_minimum() {
    let plane = Plane::start(1, &["n1", "n2", "n3"]);
    let strategy =
        "  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 1}}\n";
    plane.apply(&deployment("web", 4, "nginx:1.7.9", strategy));
    plane.wait_for("4 available", |p| p.available("web") == 4);

    // Every pod change, in etcd's order: how many are available, and how
    // many of those are new.
    let events = PodEvents::follow(&plane.etcd.endpoint());
    // Per pod: available, of the new template, not being deleted.
    let mut state: HashMap<String, (bool, bool, bool)> = HashMap::new();
    let mut next = || {
        let (name, pod) = events.next();
        match pod {
            None => state.remove(&name),
            Some(pod) => {
                let ready = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let new = image_of(&pod) == "nginx:1.9.1";
                let live = pod.metadata.deletion_timestamp.is_none();
                state.insert(name, (ready && live, new, live))
            }
        };
        let available = state.values().filter(|(a, _, _)| *a).count();
        let updated = state.values().filter(|(a, new, _)| *a && *new).count();
        let live = state.values().filter(|(_, _, live)| *live).count();
        (available, updated, live)
    };
    // The watcher has listed once it reports the 4 pods.
    while next().0 < 4 {}
    let mut most = 0;

    plane.ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:1.9.1", "ports": [{"containerPort": 80}]}]}}}}"#,
    ]);
    let mut fewest = usize::MAX;
    loop {
        let (available, updated, pods) = next();
        fewest = fewest.min(available);
        most = most.max(pods);
        if updated == 4 && available == 4 {
            break;
        }
    }
    assert!(
        fewest >= 3,
        "available fell to {fewest}, below replicas - maxUnavailable = 3"
    );
    assert!(
        most <= 5,
        "{most} pods at once (not being deleted), above replicas + maxSurge = 5"
    );
    plane.wait_for("the rollout complete", |p| {
        let d = p.json(&["get", "deploy", "web"]);
        d["status"]["updatedReplicas"] == 4 && d["status"]["replicas"] == 4
    });
    let sets = plane.json(&["get", "rs"]);
    let sizes: Vec<i64> = sets["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rs| rs["spec"]["replicas"].as_i64().unwrap())
        .collect();
    assert_eq!(
        sizes.iter().sum::<i64>(),
        4,
        "the old set scaled to 0: {sizes:?}"
    );
    assert_eq!(sizes.len(), 2, "the old set is kept for history");
}

#[test]
fn recreate_min_ready_seconds_history_limit_and_undo_to_a_revision() {
    let plane = Plane::start(1, &["n1", "n2"]);
    let spec = "  strategy: {type: Recreate}\n  revisionHistoryLimit: 1\n";
    plane.apply(&deployment("web", 2, "nginx:1.7.9", spec));
    plane.wait_for("2 available", |p| p.available("web") == 2);

    // Recreate: no pod of the new template exists while one of the old
    // does, in etcd's order of changes.
    let events = PodEvents::follow(&plane.etcd.endpoint());
    let mut images: HashMap<String, String> = HashMap::new();
    let mut next = || {
        let (name, pod) = events.next();
        match pod {
            Some(pod) => images.insert(name, image_of(&pod).to_string()),
            None => images.remove(&name),
        };
        let old = images.values().filter(|i| *i == "nginx:1.7.9").count();
        let new = images.len() - old;
        (old, new)
    };
    while next().0 < 2 {}
    let image = |tag: &str| {
        format!(
            r#"{{"spec": {{"template": {{"spec": {{"containers": [{{"name": "c", "image": "nginx:{tag}"}}]}}}}}}}}"#
        )
    };
    plane.ok(&["patch", "deploy", "web", "-p", &image("1.9.1")]);
    loop {
        let (old, new) = next();
        assert!(old == 0 || new == 0, "{old} old and {new} new pods at once");
        if new == 2 {
            break;
        }
    }
    drop(events);
    plane.ok(&["rollout", "status", "deploy/web", "--timeout", "60s"]);

    // revisionHistoryLimit 1: one old ReplicaSet is kept, the oldest goes.
    plane.ok(&["patch", "deploy", "web", "-p", &image("1.10.3")]);
    plane.ok(&["rollout", "status", "deploy/web", "--timeout", "60s"]);
    plane.wait_for("the oldest ReplicaSet pruned", |p| {
        p.json(&["get", "rs"])["items"].as_array().unwrap().len() == 2
    });
    let history = plane.ok(&["rollout", "history", "deploy/web"]);
    let revisions: Vec<&str> = history
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["2", "3"], "{history}");
    let out = plane.orca(&["rollout", "undo", "deploy/web", "--to-revision", "1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unable to find the specified revision 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    plane.ok(&["rollout", "undo", "deploy/web", "--to-revision", "2"]);
    plane.ok(&["rollout", "status", "deploy/web", "--timeout", "60s"]);
    plane.wait_for("the pods of revision 2", |p| {
        let pods = p.pods();
        pods.len() == 2
            && pods
                .iter()
                .all(|x| x["spec"]["containers"][0]["image"] == "nginx:1.9.1")
    });

    // minReadySeconds: pods ready for less than it are not available.
    let slow = deployment("slow", 2, "nginx:1.7.9", "  minReadySeconds: 300\n");
    plane.apply(&slow);
    plane.wait_for("the slow pods ready", |p| {
        p.json(&["get", "deploy", "slow"])["status"]["readyReplicas"] == 2
    });
    let status = plane.json(&["get", "deploy", "slow"]);
    assert_eq!(plane.available("slow"), 0, "{status}");
    assert_eq!(condition(&status, "Available"), Some("False"), "{status}");
}

#[test]
fn endpoint_slices_hold_at_most_100_endpoints_per_port_mapping() {
    let plane = Plane::start(1, &["n1", "n2"]);
    // Two Deployments behind one Service, whose named targetPort is 8080
    // in one's pods and 9090 in the other's.
    let tiered = |name: &str, replicas: u32, port: u16| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  \
             replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    \
             metadata: {{labels: {{app: {name}, tier: web}}}}\n    spec: {{containers: [{{name: c, \
             image: \"nginx:1.7.9\", ports: [{{name: http, containerPort: {port}}}]}}]}}\n"
        )
    };
    plane.apply(&format!(
        "{}---\n{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  \
         selector: {{tier: web}}\n  ports: [{{name: web, port: 80, targetPort: http}}]\n",
        tiered("many", 120, 8080),
        tiered("few", 2, 9090)
    ));
    let slices = |p: &Plane| -> Vec<Value> {
        p.json(&["get", "endpointslices"])["items"]
            .as_array()
            .unwrap()
            .clone()
    };
    let ready = |slice: &Value| {
        slice["endpoints"].as_array().map_or(0, |e| {
            e.iter()
                .filter(|e| e["conditions"]["ready"] == true)
                .count()
        })
    };
    plane.wait_for("122 ready endpoints", |p| {
        slices(p).iter().map(ready).sum::<usize>() == 122
    });
    let mut by_port: Vec<(i64, usize)> = Vec::new();
    for slice in slices(&plane) {
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            "web"
        );
        assert_eq!(
            slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
            "endpointslice-controller.orca.dev",
            "{slice}"
        );
        assert_eq!(slice["ports"][0]["name"], "web", "{slice}");
        let endpoints = slice["endpoints"].as_array().unwrap();
        for e in endpoints {
            let c = &e["conditions"];
            assert!(
                c["ready"] == true && c["serving"] == true && c["terminating"] == false,
                "{e}"
            );
            assert!(
                ["n1-0", "n2-0"].contains(&e["nodeName"].as_str().unwrap_or_default()),
                "{e}"
            );
        }
        by_port.push((slice["ports"][0]["port"].as_i64().unwrap(), endpoints.len()));
    }
    by_port.sort();
    assert_eq!(by_port, [(8080, 20), (8080, 100), (9090, 2)]);
}

#[test]
fn pods_of_a_stopped_node_run_on_the_others_after_the_eviction_time() {
    let mut plane = Plane::start(1, &["n1", "n2", "n3"]);
    // Every node has its pod CIDR, none the same.
    let cidrs: BTreeSet<String> = plane.json(&["get", "nodes"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["spec"]["podCIDR"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(cidrs.len(), 3, "{cidrs:?}");
    plane.apply(&deployment("web", 3, "nginx:1.7.9", ""));
    // Pods that tolerate an unreachable node for ever, one on each node.
    let patient = deployment("patient", 3, "nginx:1.7.9", "").replace(
        "spec: {containers:",
        "spec: {tolerations: [{key: node.kubernetes.io/unreachable, operator: Exists, \
         effect: NoExecute}], containers:",
    );
    plane.apply(&patient);
    plane.wait_for("3 + 3 available", |p| {
        p.available("web") == 3 && p.available("patient") == 3
    });
    let app = |pod: &Value| {
        pod["metadata"]["labels"]["app"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let on_n1 = |p: &Plane, name: &str| -> Vec<Value> {
        p.pods()
            .into_iter()
            .filter(|pod| app(pod) == name && pod["spec"]["nodeName"] == "n1-0")
            .collect()
    };
    assert_eq!(
        on_n1(&plane, "patient").len(),
        1,
        "one patient pod per node"
    );

    plane.kill_node("n1-0");
    plane.wait_for("n1 unreachable and tainted", |p| {
        let node = p.json(&["get", "node", "n1-0"]);
        condition(&node, "Ready") == Some("Unknown")
            && node["spec"]["taints"][0]["key"] == "node.kubernetes.io/unreachable"
    });
    plane.wait_for("3 pods running on the other nodes", |p| {
        let pods = p.pods();
        let running: Vec<String> = pods
            .iter()
            .filter(|pod| app(pod) == "web")
            .filter_map(running_on)
            .collect();
        running.len() == 3 && running.iter().all(|n| n != "n1-0")
    });
    plane.wait_for("3 available again", |p| p.available("web") == 3);
    // The patient pod stays, not ready: its endpoints left at once.
    let stayed = on_n1(&plane, "patient");
    assert_eq!(stayed.len(), 1, "{stayed:?}");
    assert!(
        stayed[0]["metadata"]["deletionTimestamp"].is_null(),
        "{}",
        stayed[0]
    );
    assert_eq!(
        condition(&stayed[0], "Ready"),
        Some("False"),
        "{}",
        stayed[0]
    );

    // The node comes back: untainted, Ready, and its evicted pod finished.
    plane.start_node("n1");
    plane.wait_for("n1 back", |p| {
        let node = p.json(&["get", "node", "n1-0"]);
        condition(&node, "Ready") == Some("True") && node["spec"]["taints"].is_null()
    });
    plane.wait_for("no web pod left on n1, the patient one ready", |p| {
        let patient = on_n1(p, "patient");
        on_n1(p, "web").is_empty()
            && patient.len() == 1
            && condition(&patient[0], "Ready") == Some("True")
    });
}

#[test]
fn an_unschedulable_pod_says_why() {
    let plane = Plane::start(1, &["n1", "n2", "n3"]);
    plane.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: big}\nspec:\n  containers:\n  - name: c\n    image: nginx\n    \
         resources: {requests: {memory: 100Gi}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: picky}\nspec:\n  nodeSelector: {disk: ssd}\n  \
         containers: [{name: c, image: nginx}]\n",
    );
    for (pod, message) in [
        ("big", "0/3 nodes are available: 3 Insufficient memory."),
        (
            "picky",
            "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.",
        ),
    ] {
        plane.wait_for(&format!("{pod} unschedulable"), |p| {
            let got = p.json(&["get", "pod", pod]);
            got["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "PodScheduled" && c["message"] == message)
            })
        });
        assert!(plane.json(&["get", "pod", pod])["spec"]["nodeName"].is_null());
    }
    // Once a node fits, the pod goes there.
    plane.ok(&[
        "patch",
        "node",
        "n2-0",
        "-p",
        r#"{"metadata": {"labels": {"disk": "ssd"}}}"#,
    ]);
    plane.wait_for("picky bound to n2", |p| {
        p.json(&["get", "pod", "picky"])["spec"]["nodeName"] == "n2-0"
    });
}

#[test]
fn the_other_master_takes_over_and_nothing_is_created_twice() {
    let mut plane = Plane::start(2, &["n1", "n2", "n3"]);
    plane.apply(&deployment("web", 3, "nginx:1.7.9", ""));
    plane.wait_for("3 available", |p| p.available("web") == 3);
    // The election key holds the leader's identity.
    let mut client_out = None;
    let deadline = Instant::now() + WAIT;
    while client_out.is_none() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let endpoint = plane.etcd.endpoint();
        client_out = runtime.block_on(async move {
            let mut client = etcd_client::Client::connect([endpoint], None).await.ok()?;
            let got = client.get("/orca/leader/control-plane", None).await.ok()?;
            got.kvs()
                .first()
                .map(|kv| kv.value_str().unwrap().to_string())
        });
        assert!(Instant::now() < deadline, "no leader");
    }
    let leader = client_out.unwrap();
    let index: usize = leader.trim_start_matches("master-").parse().unwrap();

    // The leader dies as it creates 27 pods; the survivor takes over and
    // finishes: 30 pods, none created twice.
    let events = PodEvents::follow(&plane.etcd.endpoint());
    plane.ok(&["scale", "deploy", "web", "--replicas", "30"]);
    plane.kill_master(index);
    plane.wait_for("30 available", |p| p.available("web") == 30);
    // A pod made after it all marks where the watch has caught up.
    plane.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: marker}\n\
         spec: {containers: [{name: c, image: \"nginx:1.7.9\"}]}\n",
    );
    let mut created = BTreeSet::new();
    loop {
        match events.next() {
            (name, _) if name == "marker" => break,
            (name, Some(_)) => {
                created.insert(name);
            }
            (_, None) => {}
        }
    }
    let names: BTreeSet<String> = plane
        .pods()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .filter(|n| n != "marker")
        .collect();
    assert_eq!(names.len(), 30, "{names:?}");
    // Every pod the watch ever saw is one of them: none was made and then
    // taken back.
    drop(events);
    assert_eq!(created, names);
}

#[test]
fn deleting_with_a_cascade_orphans_or_waits_for_dependents() {
    let plane = Plane::start(1, &["n1"]);
    plane.apply(&deployment("kept", 1, "nginx:1.7.9", ""));
    plane.apply(&deployment("gone", 1, "nginx:1.7.9", ""));
    plane.wait_for("both available", |p| {
        p.available("kept") == 1 && p.available("gone") == 1
    });

    // Orphan: the ReplicaSet stays, unowned, with its pod.
    plane.ok(&["delete", "deploy", "kept", "--cascade", "orphan"]);
    plane.wait_for("kept deleted", |p| {
        !p.orca(&["get", "deploy", "kept"]).status.success()
    });
    let sets = plane.json(&["get", "rs"]);
    let kept: Vec<&Value> = sets["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rs| {
            rs["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("kept-")
        })
        .collect();
    assert_eq!(kept.len(), 1);
    assert!(
        kept[0]["metadata"]["ownerReferences"].is_null()
            || kept[0]["metadata"]["ownerReferences"] == json!([])
    );

    // Foreground: the Deployment goes only after its ReplicaSet and pod,
    // in etcd's order.
    let endpoint = plane.etcd.endpoint();
    let pods = PodEvents::follow(&endpoint);
    let sets = Events::<orca_core::api::ReplicaSet>::follow(&endpoint);
    let deploys = Events::<orca_core::api::Deployment>::follow(&endpoint);
    plane.ok(&["delete", "deploy", "gone", "--cascade", "foreground"]);
    let pod_gone = pods.deleted_at("gone-");
    let set_gone = sets.deleted_at("gone-");
    let deploy_gone = deploys.deleted_at("gone");
    assert!(
        pod_gone < deploy_gone && set_gone < deploy_gone,
        "pod deleted at {pod_gone}, set at {set_gone}, Deployment at {deploy_gone}"
    );
    drop((pods, sets, deploys));
    plane.wait_for("gone, with everything it owned", |p| {
        !p.orca(&["get", "deploy", "gone"]).status.success()
            && p.pods().iter().all(|pod| {
                !pod["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("gone-")
            })
    });
    // The same Deployment made again adopts the orphaned set: no new pods.
    let set = kept[0]["metadata"]["name"].as_str().unwrap().to_string();
    let kept_pods: BTreeSet<String> = plane
        .pods()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    plane.apply(&deployment("kept", 1, "nginx:1.7.9", ""));
    plane.wait_for("the set adopted", |p| {
        p.json(&["get", "rs", &set])["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    });
    plane.wait_for("kept available", |p| p.available("kept") == 1);
    let now: BTreeSet<String> = plane
        .pods()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(now, kept_pods, "the adopted set's pod stays");

    // Background (the default): the set and its pod go with the Deployment.
    plane.ok(&["delete", "deploy", "kept"]);
    plane.wait_for("everything collected", |p| {
        p.pods().is_empty()
            && p.json(&["get", "rs"])["items"]
                .as_array()
                .unwrap()
                .is_empty()
    });
}

#[test]
fn rollout_commands_follow_and_steer_a_deployment() {
    let plane = Plane::start(1, &["n1", "n2"]);
    plane.apply(&deployment("web", 2, "nginx:1.7.9", ""));
    let out = plane.ok(&["rollout", "status", "deployment/web", "--timeout", "60s"]);
    assert!(
        out.ends_with("deployment \"web\" successfully rolled out\n"),
        "{out}"
    );

    // A new template, then back to the first.
    plane.ok(&["patch", "deploy", "web", "-p", r#"{"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:1.9.1"}]}}}}"#]);
    plane.ok(&["rollout", "status", "deploy", "web", "--timeout", "60s"]);
    let history = plane.ok(&["rollout", "history", "deploy/web"]);
    assert_eq!(history.lines().skip(2).count(), 2, "{history}");
    assert_eq!(
        plane.ok(&["rollout", "undo", "deploy/web"]),
        "deployment.apps/web rolled back\n"
    );
    plane.ok(&["rollout", "status", "deploy/web", "--timeout", "60s"]);
    let image = |p: &Plane| {
        p.json(&["get", "deploy", "web"])["spec"]["template"]["spec"]["containers"][0]["image"]
            .clone()
    };
    assert_eq!(image(&plane), "nginx:1.7.9");
    let history = plane.ok(&["rollout", "history", "deploy/web"]);
    assert!(
        history.lines().last().unwrap().starts_with('3'),
        "the old template is revision 3 now: {history}"
    );

    // Restart replaces every pod.
    let before: BTreeSet<String> = plane
        .pods()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        plane.ok(&["rollout", "restart", "deploy/web"]),
        "deployment.apps/web restarted\n"
    );
    plane.ok(&["rollout", "status", "deploy/web", "--timeout", "60s"]);
    plane.wait_for("every pod replaced", |p| {
        let now: BTreeSet<String> = p
            .pods()
            .iter()
            .filter(|x| running_on(x).is_some())
            .map(|x| x["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        now.len() == 2 && now.is_disjoint(&before)
    });

    // Paused: a template change waits for resume.
    let sets = |p: &Plane| p.json(&["get", "rs"])["items"].as_array().unwrap().len();
    let before = sets(&plane);
    assert_eq!(
        plane.ok(&["rollout", "pause", "deploy/web"]),
        "deployment.apps/web paused\n"
    );
    plane.ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec": {"template": {"metadata": {"labels": {"app": "web", "v": "2"}}}}}"#,
    ]);
    plane.wait_for("the paused deployment observed", |p| {
        let d = p.json(&["get", "deploy", "web"]);
        d["status"]["observedGeneration"] == d["metadata"]["generation"]
    });
    assert_eq!(sets(&plane), before, "no new ReplicaSet while paused");
    assert_eq!(
        plane.ok(&["rollout", "resume", "deploy/web"]),
        "deployment.apps/web resumed\n"
    );
    plane.ok(&["rollout", "status", "deploy/web", "--timeout", "60s"]);

    // A rollout that cannot progress fails `rollout status` past its deadline.
    plane.apply(
        &deployment("stuck", 1, "nginx:1.7.9", "  progressDeadlineSeconds: 2\n").replace(
            "ports: [{containerPort: 80}]",
            "ports: [{containerPort: 80}], resources: {requests: {memory: 100Gi}}",
        ),
    );
    let out = plane.orca(&["rollout", "status", "deploy/stuck", "--timeout", "60s"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("deployment \"stuck\" exceeded its progress deadline"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn deleting_a_namespace_deletes_everything_in_it_first() {
    let plane = Plane::start(1, &["n1"]);
    plane.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n");
    let web = deployment("web", 2, "nginx:1.7.9", "").replace(
        "metadata: {name: web}",
        "metadata: {name: web, namespace: team}",
    );
    plane.apply(&format!(
        "{web}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: team}}\n\
         spec: {{selector: {{app: web}}, ports: [{{port: 80}}]}}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings, namespace: team}}\ndata: {{a: b}}\n"
    ));
    plane.wait_for("2 pods in team", |p| {
        p.json(&["get", "pods", "-n", "team"])["items"]
            .as_array()
            .unwrap()
            .len()
            == 2
    });
    plane.ok(&["delete", "namespace", "team"]);
    let ns = plane.json(&["get", "ns", "team"]);
    assert!(ns["metadata"]["deletionTimestamp"].is_string(), "{ns}");
    plane.wait_for("the namespace and everything in it gone", |p| {
        !p.orca(&["get", "ns", "team"]).status.success()
    });
    for kind in ["pods", "deploy", "rs", "svc", "cm", "endpointslices"] {
        let left = plane.json(&["get", kind, "-n", "team"]);
        assert!(
            left["items"].as_array().unwrap().is_empty(),
            "{kind} left: {left}"
        );
    }
}

#[test]
fn the_scheduler_and_the_controllers_also_run_as_processes_of_their_own() {
    let mut plane = Plane::start(0, &[]);
    plane.start_alone("controller-manager");
    plane.start_alone("scheduler");
    plane.start_node("n1");
    plane.start_node("n2");
    plane.wait_for("both nodes with pod CIDRs", |p| {
        p.json(&["get", "nodes"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["spec"]["podCIDR"].is_string())
            .count()
            == 2
    });
    plane.apply(&deployment("web", 2, "nginx:1.7.9", ""));
    plane.wait_for("2 available", |p| p.available("web") == 2);
    let nodes: BTreeSet<String> = plane.pods().iter().filter_map(running_on).collect();
    assert_eq!(nodes.len(), 2, "spread: {nodes:?}");
}
