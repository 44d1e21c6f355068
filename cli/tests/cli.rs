//! The `orca` binary against a real etcd, as a user runs it.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use orca_testkit::Etcd;

const SEED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/nginx-deployment.yaml"
);

fn orca(etcd: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orca"))
        .args(args)
        .env("ORCA_ETCD", etcd)
        .output()
        .expect("running orca")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn apply_get_describe_delete_the_seed_manifest() {
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    let out = orca(&ep, &["apply", "-f", SEED]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "deployment.apps/nginx-deployment created\n");
    let again = orca(&ep, &["apply", "-f", SEED]);
    assert_eq!(
        stdout(&again),
        "deployment.apps/nginx-deployment unchanged\n"
    );

    let table = stdout(&orca(&ep, &["get", "deploy"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    assert_eq!(
        &lines[1].split_whitespace().collect::<Vec<_>>()[..4],
        ["nginx-deployment", "0/3", "0", "0"]
    );

    let json: serde_json::Value = serde_json::from_slice(
        &orca(
            &ep,
            &["get", "deployments", "nginx-deployment", "-o", "json"],
        )
        .stdout,
    )
    .unwrap();
    assert_eq!(
        json["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.7.9"
    );
    let yaml = stdout(&orca(&ep, &["get", "deployment", "-o", "yaml"]));
    assert!(yaml.starts_with("apiVersion: v1\nitems:\n"), "{yaml}");
    let all = stdout(&orca(&ep, &["get", "deploy", "-A"]));
    assert!(all.starts_with("NAMESPACE"), "{all}");
    let described = stdout(&orca(&ep, &["describe", "deploy", "nginx-deployment"]));
    assert!(described.contains("3 desired | 0 updated"), "{described}");

    let deleted = orca(&ep, &["delete", "-f", SEED]);
    assert_eq!(
        stdout(&deleted),
        "deployment.apps \"nginx-deployment\" deleted\n"
    );
    let missing = orca(&ep, &["get", "deploy", "nginx-deployment"]);
    assert!(!missing.status.success());
    assert_eq!(
        stderr(&missing),
        "error: deployments \"nginx-deployment\" not found\n"
    );
}

#[test]
fn a_bad_document_anywhere_writes_nothing() {
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a-good.yaml"),
        std::fs::read_to_string(SEED).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b-bad.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fine\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: -1\n  replicaz: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c, image: nginx}]}\n",
    )
    .unwrap();
    let out = orca(&ep, &["apply", "-f", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("b-bad.yaml (document 2): The Deployment \"web\" is invalid"),
        "{err}"
    );
    assert!(err.contains("spec.replicaz: unknown field"), "{err}");
    assert!(
        err.contains("spec.replicas: Invalid value: -1: must be greater than or equal to 0"),
        "{err}"
    );
    assert!(
        stdout(&orca(&ep, &["get", "deploy"])).is_empty(),
        "the good file was not written either"
    );
    assert!(stdout(&orca(&ep, &["get", "cm"])).is_empty());

    std::fs::write(
        dir.path().join("syntax.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [x\n",
    )
    .unwrap();
    let out = orca(
        &ep,
        &[
            "apply",
            "-f",
            dir.path().join("syntax.yaml").to_str().unwrap(),
        ],
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.starts_with(&format!(
            "error: {}:4:",
            dir.path().join("syntax.yaml").display()
        )),
        "{err}"
    );

    std::fs::write(
        dir.path().join("kind.yaml"),
        "apiVersion: v9\nkind: Widget\nmetadata: {name: x}\n",
    )
    .unwrap();
    let out = orca(
        &ep,
        &[
            "apply",
            "-f",
            dir.path().join("kind.yaml").to_str().unwrap(),
        ],
    );
    assert!(
        stderr(&out).contains("no kind \"Widget\" is registered for version \"v9\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn apply_reads_stdin_and_honours_the_namespace_flag() {
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: web\n";
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  answer: \"42\"\n  short: y\n";
    for (doc, extra) in [(ns, vec![]), (cm, vec!["-n", "web"])] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_orca"))
            .args(["apply", "-f", "-"])
            .args(extra)
            .env("ORCA_ETCD", &ep)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(doc.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let got: serde_json::Value = serde_json::from_slice(
        &orca(&ep, &["get", "cm", "settings", "-n", "web", "-o", "json"]).stdout,
    )
    .unwrap();
    assert_eq!(got["data"]["short"], "y", "YAML 1.2: y is a string");
    let empty = orca(&ep, &["get", "cm"]);
    assert_eq!(stderr(&empty), "No resources found in default namespace.\n");
}

#[test]
fn unreachable_etcd_is_one_line_and_a_failure() {
    let ep = format!("http://127.0.0.1:{}", orca_testkit::closed_port());
    let started = std::time::Instant::now();
    let out = orca(&ep, &["get", "deploy"]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("error: cannot reach etcd at {ep}: ")),
        "{err}"
    );
    assert!(err.contains("Connection refused"), "{err}");

    let out = orca(&ep, &["apply", "-f", SEED]);
    assert!(!out.status.success());
    assert!(stderr(&out).starts_with(&format!("error: cannot reach etcd at {ep}")));
}

#[test]
fn get_watch_prints_changes() {
    use std::io::BufRead;
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    orca(&ep, &["apply", "-f", SEED]);
    let mut watch = Command::new(env!("CARGO_BIN_EXE_orca"))
        .args(["get", "deploy", "-w"])
        .env("ORCA_ETCD", &ep)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(20))
            .expect("a line in time")
    };
    assert!(next().starts_with("NAME"));
    assert!(next().contains("0/3"));
    // Whether the change lands before or after the watch opens, it is shown.
    let out = orca(
        &ep,
        &["scale", "deploy", "nginx-deployment", "--replicas", "5"],
    );
    assert_eq!(stdout(&out), "deployment.apps/nginx-deployment scaled\n");
    assert!(next().contains("0/5"));
    orca(&ep, &["delete", "deploy", "nginx-deployment"]);
    assert!(
        next().starts_with("nginx-deployment"),
        "a deletion prints its last row"
    );
    watch.kill().unwrap();
    watch.wait().unwrap();
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn json(etcd: &str, args: &[&str]) -> serde_json::Value {
    let out = orca(etcd, &[args, &["-o", "json"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn apply_keeps_what_others_wrote_and_removes_what_the_manifest_dropped() {
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let pod = write(
        &dir,
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {app: web, tier: front}}\n\
         spec: {containers: [{name: c, image: nginx}]}\n",
    );
    assert_eq!(
        stdout(&orca(&ep, &["apply", "-f", &pod])),
        "pod/p created\n"
    );
    // A scheduler binds it; the user applies the same manifest again.
    let out = orca(
        &ep,
        &["patch", "pod", "p", "-p", r#"{"spec": {"nodeName": "n1"}}"#],
    );
    assert_eq!(stdout(&out), "pod/p patched\n", "{}", stderr(&out));
    assert_eq!(
        stdout(&orca(&ep, &["apply", "-f", &pod])),
        "pod/p unchanged\n"
    );
    assert_eq!(json(&ep, &["get", "pod", "p"])["spec"]["nodeName"], "n1");
    // A label dropped from the manifest goes; one added by hand stays.
    orca(
        &ep,
        &[
            "patch",
            "pod",
            "p",
            "-p",
            r#"{"metadata": {"labels": {"by-hand": "1"}}}"#,
        ],
    );
    let pod = write(
        &dir,
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {app: web}}\n\
         spec: {containers: [{name: c, image: nginx}]}\n",
    );
    assert_eq!(
        stdout(&orca(&ep, &["apply", "-f", &pod])),
        "pod/p configured\n"
    );
    let live = json(&ep, &["get", "pod", "p"]);
    assert_eq!(
        live["metadata"]["labels"],
        serde_json::json!({"app": "web", "by-hand": "1"})
    );
    assert_eq!(live["spec"]["nodeName"], "n1");

    // Replicas the manifest never set survive `orca scale` and a re-apply.
    let deploy = write(
        &dir,
        "deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  \
         selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    \
         spec: {containers: [{name: c, image: nginx}]}\n",
    );
    orca(&ep, &["apply", "-f", &deploy]);
    let out = orca(&ep, &["scale", "deploy", "web", "--replicas", "4"]);
    assert_eq!(
        stdout(&out),
        "deployment.apps/web scaled\n",
        "{}",
        stderr(&out)
    );
    assert_eq!(
        stdout(&orca(&ep, &["apply", "-f", &deploy])),
        "deployment.apps/web unchanged\n"
    );
    assert_eq!(json(&ep, &["get", "deploy", "web"])["spec"]["replicas"], 4);

    // Errors a person reads, and nothing written.
    let out = orca(&ep, &["scale", "cm", "x", "--replicas", "2"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("configmaps cannot be scaled"),
        "{}",
        stderr(&out)
    );
    let out = orca(&ep, &["patch", "pod", "p", "-p", "{not json"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).starts_with("error: the patch is not valid JSON or YAML"),
        "{}",
        stderr(&out)
    );
    let out = orca(
        &ep,
        &["patch", "pod", "p", "-p", r#"{"spec": {"containers": 5}}"#],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("spec.containers"), "{}", stderr(&out));
    let out = orca(&ep, &["patch", "pod", "missing", "-p", "{}"]);
    assert!(
        stderr(&out).contains(r#"pods "missing" not found"#),
        "{}",
        stderr(&out)
    );
    let generated = write(
        &dir,
        "gen.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {generateName: x-}\n",
    );
    let out = orca(&ep, &["apply", "-f", &generated]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("gen.yaml (document 2): metadata.name: Required value"),
        "{}",
        stderr(&out)
    );
    assert!(
        orca(&ep, &["get", "cm", "ok"]).status.code() != Some(0),
        "nothing written"
    );
}

#[test]
fn apply_streams_a_file_of_thousands_of_documents() {
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let doc = |i: usize| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i}}}\ndata: {{i: \"{i}\"}}\n"
        )
    };
    let many: String = (0..3000).map(doc).collect::<Vec<_>>().join("---\n");
    // One bad document at the end: nothing is written.
    let bad = write(
        &dir,
        "bad.yaml",
        &format!("{many}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: Bad_Name}}\n"),
    );
    let out = orca(&ep, &["apply", "-f", &bad]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("bad.yaml (document 3001): The ConfigMap \"Bad_Name\" is invalid"),
        "{}",
        stderr(&out)
    );
    assert!(orca(&ep, &["get", "cm", "cm-0"]).status.code() != Some(0));

    let good = write(&dir, "many.yaml", &many);
    let out = orca(&ep, &["apply", "-f", &good]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(String::from).collect();
    assert_eq!(lines.len(), 3000);
    assert_eq!(lines[0], "configmap/cm-0 created");
    assert_eq!(
        lines[2999], "configmap/cm-2999 created",
        "printed in the file's order"
    );
    let listed = json(&ep, &["get", "cm"]);
    assert_eq!(listed["items"].as_array().unwrap().len(), 3000);
}

/// The README's first command, as a user runs it: everything it shows is
/// there, and it leaves no process, namespace or file behind. It reads the
/// CLI's tables, the kubelets' logs and the shippers' sink, so a change to
/// any of them that breaks the demo breaks this test.
#[test]
fn the_demo_runs_end_to_end_and_leaves_nothing_behind() {
    orca_testkit::netns::require_root("the demo's cluster (network namespaces, containers)");
    let mut demo = Command::new("bash");
    demo.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/demo.sh"))
        // This build's binary: no build (nor package check) inside a test.
        .env("ORCA_BIN", env!("CARGO_BIN_EXE_orca"))
        .env_remove("ORCA_CLUSTER")
        .env_remove("ORCA_ETCD");
    let demo = demo
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The script names its cluster after its process id.
    let name = format!("orca-demo-{}", demo.id());
    let out = demo.wait_with_output().unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for shown in [
        "node-3 is Ready",
        "deployment.apps/nginx-deployment created",
        "service/nginx created",
        "ingress.networking.k8s.io/nginx created",
        "deployment \"nginx-deployment\" successfully rolled out",
        "nginx-deployment   3/3     3            3",
        // Through the master's ingress by host name: the page and nginx's
        // own Server header.
        "HTTP/1.1 200 OK\r\nServer: nginx/",
        "<h1>Welcome to nginx!</h1>",
        // Through the ClusterIP from the client pod.
        "| grep '<title>'\n<title>Welcome to nginx!</title>",
        // By the Service's name, from the client's node's DNS responder.
        "nameserver 172.30.0.10",
        "Name:\tnginx.default.svc.cluster.local\nAddress: 10.",
        "http://nginx/ | grep '<title>'\n<title>Welcome to nginx!</title>",
        // The pods' access log, through the kubelets, from the ingress and
        // from the client pod.
        "\"GET / HTTP/1.1\" 200 615 \"-\" \"curl/",
        "\"GET / HTTP/1.1\" 200 615 \"-\" \"Wget\"",
        // The same lines, as the shippers delivered them, with the pod's labels.
        "\\\"GET / HTTP/1.1\\\" 200 615",
        "\"labels\":{\"app\":\"nginx\"",
    ] {
        assert!(text.contains(shown), "{shown:?} missing from:\n{text}");
    }
    // The scheduler spread the three replicas over the three nodes.
    let nodes: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("nginx-deployment-") && l.contains("Running"))
        .filter_map(|l| l.split_whitespace().nth(6))
        .collect();
    assert_eq!(nodes.len(), 3, "the pods are not on three nodes:\n{text}");

    let state = text
        .split_once("state in ")
        .and_then(|(_, rest)| rest.split_once('\n'))
        .map(|(dir, _)| dir.to_string())
        .unwrap_or_else(|| panic!("no state dir in:\n{text}"));
    let work = std::path::Path::new(&state).parent().unwrap();
    assert!(!work.exists(), "{} is left", work.display());
    let work = work.display().to_string();
    let namespaces: Vec<_> = std::fs::read_dir("/run/netns")
        .map(|dir| dir.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        !namespaces
            .iter()
            .any(|n| n.to_string_lossy().starts_with(&format!("{name}-"))),
        "a namespace of {name} is left: {namespaces:?}"
    );
    let prefix = &name;
    let cgroups: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .flat_map(|c| (1..=3).map(move |i| c.path().join(format!("{prefix}-node-{i}"))))
        .filter(|c| c.exists())
        .collect();
    assert!(
        cgroups.is_empty(),
        "the pods' cgroups are left: {cgroups:?}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&work), "a mount under {work} is left");
    // etcd, the masters, the nodes and the registry name the temp dir in
    // their arguments, the pods' monitors their directories under it.
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(!cmdline.contains(&work), "left running: {cmdline}");
    }
}

#[test]
fn pod_logs_found_before_the_pods_were_listed_get_their_labels() {
    let etcd = Etcd::start();
    let relay = orca_testkit::Relay::start(etcd.client_addr());
    let dir = tempfile::tempdir().unwrap();
    let pod = write(
        &dir,
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, labels: {app: web}}\n\
         spec: {nodeName: n1, containers: [{name: c, image: nginx}]}\n",
    );
    let out = orca(&etcd.endpoint(), &["apply", "-f", &pod]);
    assert!(out.status.success(), "{}", stderr(&out));
    let uid = json(&etcd.endpoint(), &["get", "pod", "web-0"])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let logs = dir.path().join("pods");
    let container = logs.join(format!("default_web-0_{uid}")).join("c");
    std::fs::create_dir_all(&container).unwrap();
    let log = container.join("0.log");
    let shipped = dir.path().join("shipped.jsonl");
    let config = write(
        &dir,
        "shipper.yaml",
        &format!(
            "inputs:\n  - {{name: pods, paths: [\"{}/*/*/*.log\"], format: cri, poll_interval: 20ms}}\n\
             checkpoint_dir: {}\noutputs:\n  - name: out\n    type: file\n    path: {}\n    \
             batch: {{max_events: 1, max_bytes: 1MiB, max_wait: 10ms}}\n\
             admin: {{address: \"127.0.0.1:{}\"}}\n",
            logs.display(),
            dir.path().join("checkpoints").display(),
            shipped.display(),
            orca_testkit::closed_port(),
        ),
    );
    // The cluster is out of reach when the shipper starts.
    relay.cut();
    let mut shipper = Command::new(env!("CARGO_BIN_EXE_orca"))
        .args(["--etcd", &relay.endpoint(), "logshipper", "--node", "n1"])
        .args(["--config", &config])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = |n: usize| format!("2026-12-06T10:00:00.{n:09}Z stdout F line {n}\n");
    let append = |n: usize| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        f.write_all(line(n).as_bytes()).unwrap();
    };
    let shipped_line = |n: usize| -> Option<serde_json::Value> {
        std::fs::read_to_string(&shipped)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["line"] == format!("line {n}"))
    };
    let wait_shipped = |n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(v) = shipped_line(n) {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "line {n} never shipped"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    append(0);
    let first = wait_shipped(0);
    assert_eq!(first["pod"], "web-0");
    assert!(first.get("labels").is_none(), "{first}");

    // The cluster comes back: a later line of the same file has the labels.
    relay.restore();
    let mut n = 1;
    let labelled = loop {
        append(n);
        let v = wait_shipped(n);
        if v.get("labels").is_some() {
            break v;
        }
        assert!(n < 500, "labels never arrived");
        n += 1;
    };
    assert_eq!(labelled["labels"], serde_json::json!({"app": "web"}));
    shipper.kill().unwrap();
    shipper.wait().unwrap();
}
