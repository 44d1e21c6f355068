//! `orca up` and `orca down`: a local cluster on one machine (see
//! [`crate::local`]), brought up step by step with progress shown, and
//! removed whole.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::Context;
use orca_core::api::Node;
use orca_core::config::Duration as ConfigDuration;
use orca_core::store::{Store, StoreConfig};
use serde_json::json;

use crate::local::client::{self, ClientFile, DEFAULT_STATE};
use crate::local::processes;
use crate::local::{
    ADMIN_PORT, CLUSTER_CIDR, ETCD_PORT, INGRESS_PORT, Plan, Record, SHIPPER_ADMIN_PORT, network,
    pki, write_json,
};

/// Arguments of `orca up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// The number of nodes, each in a network namespace of its own.
    #[arg(long, default_value_t = 3)]
    nodes: u8,
    /// The number of masters; more than one runs three etcd members.
    #[arg(long, default_value_t = 1)]
    masters: u8,
    /// The cluster's state directory; its last component names the
    /// cluster (its namespaces are NAME-hub, NAME-node-N).
    #[arg(long, default_value = DEFAULT_STATE)]
    state: PathBuf,
    /// A kubelet configuration every node's starts from (registries, the
    /// image allow-list); each node's directories, address, pod range and
    /// cgroup are set by `orca up`.
    #[arg(long)]
    kubelet_config: Option<PathBuf>,
    /// How long the leader's lease outlives a leader that stopped renewing.
    #[arg(long, default_value = "15s")]
    leader_ttl: ConfigDuration,
    /// How long a node's Lease may go unrenewed before it is unreachable.
    #[arg(long, default_value = "40s")]
    node_monitor_grace_period: ConfigDuration,
    /// How long pods stay on an unreachable node before they are evicted.
    #[arg(long, default_value = "300s")]
    pod_eviction_timeout: ConfigDuration,
    /// The images the cluster allows (`docker.io/library/*`),
    /// comma-separated: the masters refuse pods and templates naming
    /// others as they are written, and every node's kubelet refuses to pull
    /// them. Default: every image.
    #[arg(long)]
    image_allow: Option<String>,
    /// How long to wait for every node to be Ready.
    #[arg(long, default_value = "120s")]
    timeout: ConfigDuration,
}

/// Arguments of `orca down`.
#[derive(clap::Args)]
pub struct DownArgs {
    /// The cluster's state directory, as given to `orca up`.
    #[arg(long, default_value = DEFAULT_STATE)]
    state: PathBuf,
}

/// The orca binaries' directory: `orca` itself, `orca-monitor` beside it.
fn orca_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("finding the orca binary")
}

/// Fails naming the first program of `programs` not on the PATH.
fn require(programs: &[(&str, &str)]) -> anyhow::Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for (program, package) in programs {
        if !std::env::split_paths(&path).any(|dir| dir.join(program).is_file()) {
            anyhow::bail!("{program} is not installed (Debian package {package})");
        }
    }
    Ok(())
}

/// A cluster being brought up: its record and the processes it started.
struct Bringup {
    record: Record,
    /// The kubelet configuration the nodes' start from, if one was given.
    kubelet_base: Option<PathBuf>,
    /// How often each node renews its Lease.
    heartbeat: Duration,
    children: Vec<Child>,
    started: Instant,
}

impl Bringup {
    fn plan(&self) -> &Plan {
        &self.record.plan
    }

    fn step(&self, what: &str) {
        println!("[{:>5.1}s] {what}", self.started.elapsed().as_secs_f64());
    }

    /// Starts a process in `netns` and records it before anything waits on it.
    fn spawn(
        &mut self,
        what: &str,
        netns: &Path,
        program: &Path,
        args: Vec<String>,
    ) -> anyhow::Result<()> {
        let log = self.plan().logs().join(format!("{what}.log"));
        let (child, started) = processes::spawn(what, netns, program, &args, &log)?;
        self.children.push(child);
        self.record.processes.push(started);
        self.record.save()
    }

    /// Fails if a process started has ended, with the end of its log.
    fn check(&mut self) -> anyhow::Result<()> {
        for (child, started) in self.children.iter_mut().zip(&self.record.processes) {
            if let Ok(Some(status)) = child.try_wait() {
                anyhow::bail!(
                    "{} ended ({status}); the end of {}:\n{}",
                    started.what,
                    started.log.display(),
                    started.log_tail(15)
                );
            }
        }
        Ok(())
    }

    /// Waits up to `limit` for `ready` while every process lives.
    async fn wait_for<F, Fut>(
        &mut self,
        what: &str,
        limit: Duration,
        mut ready: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let start = Instant::now();
        loop {
            if ready().await {
                return Ok(());
            }
            self.check()?;
            anyhow::ensure!(
                start.elapsed() < limit,
                "timed out after {}s waiting for {what}; the logs are in {}",
                limit.as_secs(),
                self.plan().logs().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The `--etcd` flags of a process that shows certificate `who`.
    fn etcd_args(&self, who: &str) -> Vec<String> {
        let plan = self.plan();
        let files = pki::pair(plan, who);
        let mut args = vec!["--etcd".into(), plan.etcd_endpoints()];
        for (flag, path) in [
            ("--etcd-ca", pki::ca(plan)),
            ("--etcd-cert", files.cert),
            ("--etcd-key", files.key),
        ] {
            args.push(flag.into());
            args.push(path.display().to_string());
        }
        args
    }

    fn start_etcd(&mut self) -> anyhow::Result<()> {
        let plan = self.plan().clone();
        // etcd's data on a tmpfs of its own: on the disk the nodes unpack
        // images to, its fsyncs waited seconds behind their writes, and a
        // node whose Lease renewal timed out looked dead. A local cluster
        // does not outlive a reboot anyway (its namespaces do not).
        let data = plan.etcd_data();
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        nix::mount::mount(
            Some("tmpfs"),
            &data,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some("size=1g,mode=0700"),
        )
        .with_context(|| format!("mounting a tmpfs for etcd at {}", data.display()))?;
        let peers: Vec<String> = (1..=plan.members())
            .map(|i| format!("etcd-{i}=https://{}:2380", plan.etcd_ip(i)))
            .collect();
        for i in 1..=plan.members() {
            let ip = plan.etcd_ip(i);
            let files = pki::pair(&plan, &format!("etcd-{i}"));
            let ca = pki::ca(&plan).display().to_string();
            let (cert, key) = (
                files.cert.display().to_string(),
                files.key.display().to_string(),
            );
            let client_url = format!("https://{ip}:{ETCD_PORT}");
            let peer_url = format!("https://{ip}:2380");
            let args: Vec<String> = [
                "--name",
                &format!("etcd-{i}"),
                "--data-dir",
                &plan
                    .etcd_data()
                    .join(format!("etcd-{i}"))
                    .display()
                    .to_string(),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &peers.join(","),
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &plan.name,
                "--client-cert-auth",
                "--trusted-ca-file",
                &ca,
                "--cert-file",
                &cert,
                "--key-file",
                &key,
                "--peer-client-cert-auth",
                "--peer-trusted-ca-file",
                &ca,
                "--peer-cert-file",
                &cert,
                "--peer-key-file",
                &key,
                "--logger",
                "zap",
                "--log-level",
                "warn",
            ]
            .into_iter()
            .map(str::to_string)
            .collect();
            self.spawn(
                &format!("etcd-{i}"),
                &plan.hub_netns(),
                Path::new("etcd"),
                args,
            )?;
        }
        Ok(())
    }

    fn start_masters(&mut self, args: &UpArgs) -> anyhow::Result<()> {
        let plan = self.plan().clone();
        let orca = orca_exe()?;
        for i in 1..=plan.masters {
            let ip = plan.master_ip(i);
            let config = plan.state.join(format!("master-{i}.yaml"));
            write_json(
                &config,
                &json!({
                    "workers": 1,
                    "listeners": [{"name": "web", "address": format!("{ip}:{INGRESS_PORT}")}],
                    "admin": {"address": format!("{ip}:{ADMIN_PORT}")},
                }),
            )?;
            let mut command = self.etcd_args(&format!("master-{i}"));
            command.extend(
                [
                    "master",
                    "--config",
                    &config.display().to_string(),
                    "--identity",
                    &format!("master-{i}"),
                    "--cluster-cidr",
                    CLUSTER_CIDR,
                    "--leader-ttl",
                    &args.leader_ttl.to_string(),
                    "--node-monitor-grace-period",
                    &args.node_monitor_grace_period.to_string(),
                    "--pod-eviction-timeout",
                    &args.pod_eviction_timeout.to_string(),
                ]
                .map(str::to_string),
            );
            if let Some(allow) = &args.image_allow {
                command.extend(["--image-allow".to_string(), allow.clone()]);
            }
            self.spawn(&format!("master-{i}"), &plan.hub_netns(), &orca, command)?;
        }
        Ok(())
    }

    /// Writes every node's kubelet and log shipper configuration, each
    /// checked before it takes its name: a bad base configuration stops
    /// `orca up` before anything is made, and `orca down` only ever reads
    /// configurations that load.
    fn write_node_configs(
        &self,
        base: &serde_json::Map<String, serde_json::Value>,
    ) -> anyhow::Result<()> {
        let plan = self.plan();
        for i in 1..=plan.nodes {
            let dir = plan.node_dir(i);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let ip = plan.node_ip(i);
            let (net, bits) = plan.pod_cidr(i);
            let mut kubelet = base.clone();
            for (key, value) in [
                ("state_dir", json!(dir.join("kubelet"))),
                ("log_dir", json!(dir.join("pods"))),
                ("pod_cidr", json!(format!("{net}/{bits}"))),
                ("cgroup_parent", json!(plan.cgroup_parent(i))),
                ("address", json!(ip.to_string())),
                // A quarter of the grace period, as the kubelet's Lease
                // renewal is to Kubernetes' 40 s: a node is unreachable
                // only after several renewals went missing.
                (
                    "heartbeat",
                    json!(format!("{}ms", self.heartbeat.as_millis())),
                ),
            ] {
                kubelet.insert(key.into(), value);
            }
            let draft = dir.join("kubelet.yaml.new");
            write_json(&draft, &serde_json::Value::Object(kubelet))?;
            super::kubelet::load(Some(&draft)).with_context(|| match &self.kubelet_base {
                Some(path) => format!("the kubelet configuration {}", path.display()),
                None => "the kubelet configuration".into(),
            })?;
            let kubelet_path = dir.join("kubelet.yaml");
            std::fs::rename(&draft, &kubelet_path)
                .with_context(|| format!("writing {}", kubelet_path.display()))?;
            write_json(
                &dir.join("logshipper.yaml"),
                &json!({
                    "inputs": [{
                        "name": "pods",
                        "paths": [format!("{}/*/*/*.log", dir.join("pods").display())],
                        "format": "cri",
                    }],
                    "checkpoint_dir": dir.join("logshipper"),
                    "outputs": [{"name": "sink", "type": "file", "path": plan.shipped(i)}],
                    "admin": {"address": format!("{ip}:{SHIPPER_ADMIN_PORT}")},
                }),
            )?;
        }
        Ok(())
    }

    fn start_nodes(&mut self) -> anyhow::Result<()> {
        let plan = self.plan().clone();
        let orca = orca_exe()?;
        for i in 1..=plan.nodes {
            let dir = plan.node_dir(i);
            let ip = plan.node_ip(i);
            let mut command = self.etcd_args(&format!("node-{i}"));
            command.extend(
                [
                    "node",
                    "--node",
                    &plan.node_name(i),
                    "--cluster-cidr",
                    CLUSTER_CIDR,
                    "--kubelet-config",
                    &dir.join("kubelet.yaml").display().to_string(),
                    "--logshipper-config",
                    &dir.join("logshipper.yaml").display().to_string(),
                    "--admin",
                    &format!("{ip}:{ADMIN_PORT}"),
                    // The node's DNS responder on its own address, port 53:
                    // the kubelet points its pods' resolv.conf at it.
                    "--dns",
                    &ip.to_string(),
                ]
                .map(str::to_string),
            );
            self.spawn(&plan.node_name(i), &plan.node_netns(i), &orca, command)?;
        }
        Ok(())
    }

    async fn store(&self) -> anyhow::Result<Store> {
        let plan = self.plan();
        let mut config = StoreConfig::new(plan.etcd_endpoints());
        let files = pki::pair(plan, "admin");
        config.tls = Some(orca_core::store::TlsFiles {
            ca: pki::ca(plan),
            cert: files.cert,
            key: files.key,
        });
        Ok(Store::connect(config).await?)
    }

    async fn bring_up(&mut self, args: &UpArgs) -> anyhow::Result<()> {
        let plan = self.plan().clone();
        let base = match &args.kubelet_config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("{}: cannot read the kubelet configuration", path.display())
                })?;
                let value: serde_json::Value =
                    orca_core::yaml::from_str(&path.display().to_string(), &text)?;
                match value {
                    serde_json::Value::Object(map) => map,
                    serde_json::Value::Null => serde_json::Map::new(),
                    _ => {
                        anyhow::bail!("{}: expected a mapping of kubelet settings", path.display())
                    }
                }
            }
            None => serde_json::Map::new(),
        };
        let mut base = base;
        if let Some(list) = &args.image_allow {
            let allow: Vec<&str> = list
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .collect();
            let images = base.entry("images").or_insert_with(|| json!({}));
            if let Some(images) = images.as_object_mut() {
                images.insert("allow".into(), json!(allow));
            }
        }
        for dir in [plan.logs(), plan.state.join("shipped")] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }

        self.write_node_configs(&base)?;
        self.step("making the cluster's CA and certificates");
        pki::make(&plan)?;

        self.step(&format!(
            "making the network: namespace {}, bridge 172.30.0.0/24",
            plan.hub_netns().display()
        ));
        network::make_hub(&plan).await?;
        for i in 1..=plan.nodes {
            self.step(&format!(
                "making {}: namespace {}, eth0 {}, pods {}.0/24",
                plan.node_name(i),
                plan.node_netns(i).display(),
                plan.node_ip(i),
                plan.pod_cidr(i).0.to_string().trim_end_matches(".0")
            ));
            network::make_node(&plan, i).await?;
        }
        // From here the process lives in the hub, where etcd and the
        // masters listen; the nodes' namespaces were all made above.
        client::join(&plan.hub_netns())?;

        self.step(&format!(
            "starting etcd ({} member(s), TLS with client certificates)",
            plan.members()
        ));
        self.start_etcd()?;
        let store = self.store().await?;
        // Each try is bounded: a request to members without a quorum yet
        // may wait for one.
        self.wait_for("etcd to answer", Duration::from_secs(30), || async {
            matches!(
                tokio::time::timeout(Duration::from_secs(1), store.ping()).await,
                Ok(Ok(_))
            )
        })
        .await?;
        self.step(&format!("etcd answers at {}", plan.etcd_endpoints()));

        self.step(&format!("starting {} master(s)", plan.masters));
        self.start_masters(args)?;
        let listeners: Vec<SocketAddr> = (1..=plan.masters)
            .map(|i| SocketAddr::from((plan.master_ip(i), INGRESS_PORT)))
            .collect();
        self.wait_for(
            "the masters' ingress listeners",
            Duration::from_secs(30),
            || {
                let up = listeners.iter().all(|addr| {
                    TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok()
                });
                async move { up }
            },
        )
        .await?;
        self.step(&format!(
            "the masters' ingress listens: {}",
            listeners
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));

        self.step(&format!(
            "starting {} node(s): kubelet, node proxy, DNS, log shipper; waiting for them to be Ready",
            plan.nodes
        ));
        self.start_nodes()?;
        let limit = args.timeout.0;
        let start = Instant::now();
        let mut ready = std::collections::BTreeSet::new();
        while ready.len() < plan.nodes as usize {
            for name in ready_nodes(&store).await {
                if ready.insert(name.clone()) {
                    self.step(&format!("{name} is Ready"));
                }
            }
            self.check()?;
            anyhow::ensure!(
                start.elapsed() < limit,
                "timed out after {}s waiting for every node to be Ready ({} of {}); the logs are in {}",
                limit.as_secs(),
                ready.len(),
                plan.nodes,
                plan.logs().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

/// The names of the Nodes whose Ready condition is True.
async fn ready_nodes(store: &Store) -> Vec<String> {
    let Ok(list) = store.cluster_api::<Node>().list().await else {
        return Vec::new();
    };
    list.items
        .into_iter()
        .filter(|node| {
            node.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
        })
        .filter_map(|node| node.metadata.name)
        .collect()
}

/// Brings up a local cluster; on failure removes what it made.
pub async fn up(args: UpArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "orca up needs root: it makes network namespaces, links, mounts and cgroups"
    );
    require(&[
        ("etcd", "etcd-server"),
        ("runc", "runc"),
        ("nsenter", "util-linux"),
    ])?;
    let state = std::path::absolute(&args.state)
        .with_context(|| format!("--state {}", args.state.display()))?;
    let name = state
        .file_name()
        .and_then(|n| n.to_str())
        .context("--state must name a directory")?
        .to_string();
    let plan = Plan {
        name,
        nodes: args.nodes,
        masters: args.masters,
        state: state.clone(),
    };
    plan.validate()?;
    if let Some(path) = &args.kubelet_config {
        // Checked as the kubelet reads it, so its errors name its lines.
        super::kubelet::load(Some(path))?;
    }
    if Plan::record_path(&state).exists() {
        anyhow::bail!(
            "{} holds a cluster already; `orca down --state {}` removes it",
            state.display(),
            state.display()
        );
    }
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    let record = Record {
        plan: plan.clone(),
        processes: Vec::new(),
    };
    record.save()?;
    let mut bringup = Bringup {
        record,
        kubelet_base: args.kubelet_config.clone(),
        heartbeat: (args.node_monitor_grace_period.0 / 4).min(Duration::from_secs(10)),
        children: Vec::new(),
        started: Instant::now(),
    };
    println!(
        "bringing up cluster {:?}: {} master(s), {} node(s); state in {}",
        plan.name,
        plan.masters,
        plan.nodes,
        state.display()
    );
    if let Err(e) = bringup.bring_up(&args).await {
        eprintln!("error: {e:#}");
        eprintln!("removing what was made");
        let record = bringup.record.clone();
        drop(bringup);
        tear_down(&record).await;
        anyhow::bail!("orca up failed");
    }
    let admin = pki::pair(&plan, "admin");
    let client = ClientFile {
        etcd: plan.etcd_endpoints(),
        ca: pki::ca(&plan),
        cert: admin.cert,
        key: admin.key,
        netns: Some(plan.hub_netns()),
    };
    let client_path = ClientFile::path(&state);
    std::fs::write(
        &client_path,
        serde_json::to_string_pretty(&client).expect("serialises"),
    )
    .with_context(|| format!("writing {}", client_path.display()))?;
    bringup.step("every node is Ready");
    println!();
    println!("The cluster {:?} is up.", plan.name);
    if state != Path::new(DEFAULT_STATE) {
        println!("  export ORCA_CLUSTER={}", client_path.display());
    }
    println!(
        "  orca get nodes -o wide          # as root: the CLI joins the cluster's network namespace"
    );
    for i in 1..=plan.masters {
        println!(
            "  master-{i}'s ingress: http://{}:{INGRESS_PORT}/, from the cluster's namespace:",
            plan.master_ip(i)
        );
        println!(
            "    nsenter --net={} curl -H 'Host: nginx.local' http://{}/",
            plan.hub_netns().display(),
            plan.master_ip(i)
        );
    }
    println!(
        "  logs the nodes' shippers delivered: {}/node-N.jsonl",
        plan.state.join("shipped").display()
    );
    let down = if state == Path::new(DEFAULT_STATE) {
        "orca down".to_string()
    } else {
        format!("orca down --state {}", state.display())
    };
    println!("  {down}                       # removes all of it");
    Ok(true)
}

/// Removes the cluster recorded in `--state`.
pub async fn down(args: DownArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "orca down needs root: it removes network namespaces, mounts and cgroups"
    );
    let state = std::path::absolute(&args.state)
        .with_context(|| format!("--state {}", args.state.display()))?;
    let record = Record::load(&state)?;
    let failed = tear_down(&record).await;
    if failed.is_empty() {
        println!(
            "removed cluster {:?} ({})",
            record.plan.name,
            state.display()
        );
        Ok(true)
    } else {
        for line in &failed {
            eprintln!("error: {line}");
        }
        anyhow::bail!(
            "some of cluster {:?} is left (above); {} is kept so `orca down` can be run again",
            record.plan.name,
            state.display()
        )
    }
}

/// Removes everything `record` names: processes (nodes first, etcd last),
/// each node's pods, mounts and cgroups, the namespaces, and the state
/// directory once nothing is mounted under it. What could not be removed.
async fn tear_down(record: &Record) -> Vec<String> {
    let plan = &record.plan;
    let mut failed = Vec::new();
    for started in record.processes.iter().rev() {
        let grace = Duration::from_secs(if started.what.starts_with("node-") {
            15
        } else {
            5
        });
        if started.running() && started.stop(grace) {
            eprintln!("{} did not stop on SIGTERM; killed", started.what);
        }
        if started.running() {
            failed.push(format!(
                "{} (pid {}) does not end",
                started.what, started.pid
            ));
        }
    }
    // A process `orca up` started just before it was killed may be missing
    // from the record: every orca or etcd process naming the state
    // directory in its arguments is the cluster's.
    let start = Instant::now();
    loop {
        let left = unrecorded(&plan.state);
        // A zombie's arguments are gone, so it is not counted.
        if left.is_empty() || start.elapsed() > Duration::from_secs(5) {
            break;
        }
        for pid in left {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 1..=plan.nodes {
        let config_path = plan.node_dir(i).join("kubelet.yaml");
        let netns = plan.node_netns(i);
        if !config_path.exists() {
            continue;
        }
        match super::kubelet::load(Some(&config_path)) {
            Ok(config) => {
                // A node whose namespace is gone (a drill removed it) still
                // has its pods' containers, mounts and cgroups to remove;
                // the cleanup gets an empty namespace in its place, never
                // this process's own, whose links are not the cluster's.
                if !netns.exists()
                    && let Err(e) = orca_kubelet::network::create_netns(&netns)
                {
                    failed.push(format!("{}: {}: {e}", plan.node_name(i), netns.display()));
                    continue;
                }
                if let Err(e) = orca_kubelet::agent::cleanup(&config, Some(&netns)).await {
                    failed.push(format!("{}: {e}", plan.node_name(i)));
                }
            }
            Err(e) => failed.push(format!("{}: {e:#}", plan.node_name(i))),
        }
    }
    failed.extend(network::remove(plan));
    if let Err(e) = unmount_under(&plan.state) {
        failed.push(e.to_string());
    } else if failed.is_empty()
        && let Err(e) = std::fs::remove_dir_all(&plan.state)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        failed.push(format!("removing {}: {e}", plan.state.display()));
    }
    failed
}

/// The ids of the orca and etcd processes (not this one) whose arguments
/// name `state`.
fn unrecorded(state: &Path) -> Vec<i32> {
    let me = std::process::id().to_string();
    let state = state.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name() != me.as_str())
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let program = Path::new(args.first()?).file_name()?.to_str()?.to_string();
            let ours = matches!(program.as_str(), "orca" | "etcd" | "nsenter")
                && args.iter().any(|a| a.contains(&state));
            ours.then_some(pid)
        })
        .collect()
}

/// Unmounts every mount under `dir`, deepest first, so removing `dir`
/// never reaches through a mount into what it shows.
fn unmount_under(dir: &Path) -> anyhow::Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("reading mounts")?;
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH)
            .with_context(|| format!("unmounting {}", point.display()))?;
    }
    Ok(())
}
