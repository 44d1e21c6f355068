//! Liveness, readiness and startup probes, as the kubelet's prober runs
//! them: `httpGet` (a status from 200 to 399 passes), `tcpSocket` (a
//! connection passes) and `exec` (exit code 0 passes), with Kubernetes'
//! fields and defaults (period 10 s, timeout 1 s, failure threshold 3,
//! success threshold 1). A startup probe holds the others back until it
//! passes; liveness and startup failures past the threshold restart the
//! container; readiness decides the container's `ready`.
//!
//! Connections start in the node's network namespace, where the pod's
//! address is reached through the bridge, as the kubelet's probes do.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nix::sched::CloneFlags;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::runtime::Runtime;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Restarts the container when it fails.
    Liveness,
    /// Decides whether the container is ready.
    Readiness,
    /// Holds the others back until it passes; restarts when it fails.
    Startup,
}

/// A probe's timing, with Kubernetes' defaults.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Before the first run.
    pub initial_delay: Duration,
    /// Between runs.
    pub period: Duration,
    /// How long one run may take.
    pub timeout: Duration,
    /// Failures in a row that count as failed.
    pub failure_threshold: u32,
    /// Successes in a row that count as passed.
    pub success_threshold: u32,
}

impl Timing {
    /// The timing of `probe`.
    pub fn of(probe: &Probe) -> Self {
        let seconds = |v: Option<i32>, default: u64| {
            Duration::from_secs(v.map_or(default, |s| s.max(0) as u64))
        };
        Self {
            initial_delay: seconds(probe.initial_delay_seconds, 0),
            period: seconds(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            failure_threshold: probe.failure_threshold.map_or(3, |n| n.max(1) as u32),
            success_threshold: probe.success_threshold.map_or(1, |n| n.max(1) as u32),
        }
    }
}

/// Where a probe connects from and to.
#[derive(Debug, Clone)]
pub struct Target {
    /// The pod's address.
    pub pod_ip: IpAddr,
    /// The node's network namespace (`None`: the kubelet's own).
    pub netns: Option<PathBuf>,
    /// The runc id of the container, for `exec` probes.
    pub id: String,
}

/// A port given by number or by a container port's name.
fn port(value: &IntOrString, container: &Container) -> Result<u16, String> {
    match value {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} is out of range")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("no container port named {name:?}")),
    }
}

/// A TCP connection to `addr` made from the network namespace `netns`.
async fn connect(netns: Option<&PathBuf>, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
    let Some(netns) = netns else {
        return tokio::net::TcpStream::connect(addr).await;
    };
    let netns = netns.clone();
    let socket = crate::network::on_own_thread(move || -> io::Result<socket2::Socket> {
        let ns = std::fs::File::open(&netns)?;
        nix::sched::setns(ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    })
    .await??;
    tokio::net::TcpSocket::from_std_stream(socket.into())
        .connect(addr)
        .await
}

/// Runs `probe` once; `Err` says why it failed.
pub async fn run_once(
    probe: &Probe,
    container: &Container,
    target: &Target,
    runtime: &Runtime,
    timeout: Duration,
) -> Result<(), String> {
    let attempt = async {
        if let Some(http) = &probe.http_get {
            let port = port(&http.port, container)?;
            let host = http
                .host
                .as_deref()
                .and_then(|h| h.parse().ok())
                .unwrap_or(target.pod_ip);
            let mut stream = connect(target.netns.as_ref(), SocketAddr::new(host, port))
                .await
                .map_err(|e| {
                    format!(
                        "Get \"http://{host}:{port}{}\": {e}",
                        http.path.as_deref().unwrap_or("/")
                    )
                })?;
            let path = http
                .path
                .as_deref()
                .filter(|p| !p.is_empty())
                .unwrap_or("/");
            let mut request = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: orca-probe\r\nAccept: */*\r\nConnection: close\r\n"
            );
            for header in http.http_headers.iter().flatten() {
                request.push_str(&format!("{}: {}\r\n", header.name, header.value));
            }
            request.push_str("\r\n");
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut head = vec![0u8; 1024];
            let n = stream.read(&mut head).await.map_err(|e| e.to_string())?;
            let line = String::from_utf8_lossy(&head[..n]);
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| "the answer is not HTTP".to_string())?;
            return if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            };
        }
        if let Some(tcp) = &probe.tcp_socket {
            let port = port(&tcp.port, container)?;
            let host = tcp
                .host
                .as_deref()
                .and_then(|h| h.parse().ok())
                .unwrap_or(target.pod_ip);
            connect(target.netns.as_ref(), SocketAddr::new(host, port))
                .await
                .map(|_| ())
                .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
            return Ok(());
        }
        if let Some(exec) = &probe.exec {
            let command = exec.command.clone().unwrap_or_default();
            let (code, output) = runtime
                .exec(&target.id, &command, timeout)
                .await
                .map_err(|e| e.to_string())?;
            return if code == 0 {
                Ok(())
            } else {
                Err(format!(
                    "command {command:?} exited with {code}: {}",
                    String::from_utf8_lossy(&output).trim()
                ))
            };
        }
        Err("the probe has no handler (httpGet, tcpSocket or exec)".to_string())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {timeout:?}")))
}

/// What the probes of one container report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The startup probe passed (or there is none).
    Started,
    /// Readiness changed.
    Ready(bool),
    /// A liveness or startup probe failed past its threshold: the
    /// container is to be restarted.
    Failed(Kind, String),
}

/// One probe's run of successes and failures.
struct Streak {
    timing: Timing,
    successes: u32,
    failures: u32,
}

impl Streak {
    fn new(probe: &Probe) -> Self {
        Self {
            timing: Timing::of(probe),
            successes: 0,
            failures: 0,
        }
    }

    /// Counts a result; `Some(passed)` when a threshold is crossed.
    fn count(&mut self, result: &Result<(), String>) -> Option<bool> {
        if result.is_ok() {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            (self.successes == self.timing.success_threshold).then_some(true)
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            (self.failures == self.timing.failure_threshold).then_some(false)
        }
    }
}

/// Runs `container`'s probes until `ended` says it has ended, reporting
/// what they find.
pub async fn supervise(
    container: Container,
    target: Target,
    runtime: Runtime,
    mut ended: tokio::sync::watch::Receiver<bool>,
    report: impl Fn(Report) + Send + Sync,
) {
    let run = async {
        if let Some(probe) = &container.startup_probe {
            let mut streak = Streak::new(probe);
            tokio::time::sleep(streak.timing.initial_delay).await;
            loop {
                let result =
                    run_once(probe, &container, &target, &runtime, streak.timing.timeout).await;
                match streak.count(&result) {
                    Some(true) => break,
                    Some(false) => {
                        let why = result.err().unwrap_or_default();
                        report(Report::Failed(
                            Kind::Startup,
                            format!("Startup probe failed: {why}"),
                        ));
                        return;
                    }
                    None => tokio::time::sleep(streak.timing.period).await,
                }
            }
        }
        report(Report::Started);
        let liveness = async {
            let Some(probe) = &container.liveness_probe else {
                return std::future::pending::<()>().await;
            };
            let mut streak = Streak::new(probe);
            tokio::time::sleep(streak.timing.initial_delay).await;
            loop {
                let result =
                    run_once(probe, &container, &target, &runtime, streak.timing.timeout).await;
                if streak.count(&result) == Some(false) {
                    let why = result.err().unwrap_or_default();
                    report(Report::Failed(
                        Kind::Liveness,
                        format!("Liveness probe failed: {why}"),
                    ));
                    return;
                }
                tokio::time::sleep(streak.timing.period).await;
            }
        };
        let readiness = async {
            let Some(probe) = &container.readiness_probe else {
                return std::future::pending::<()>().await;
            };
            let mut streak = Streak::new(probe);
            let mut ready = None;
            tokio::time::sleep(streak.timing.initial_delay).await;
            loop {
                let result =
                    run_once(probe, &container, &target, &runtime, streak.timing.timeout).await;
                if let Some(passed) = streak.count(&result)
                    && ready != Some(passed)
                {
                    ready = Some(passed);
                    report(Report::Ready(passed));
                }
                tokio::time::sleep(streak.timing.period).await;
            }
        };
        // A liveness failure ends the container; readiness goes on with it.
        tokio::select! {
            () = liveness => {}
            () = readiness => {}
        }
    };
    tokio::select! {
        () = run => {}
        _ = ended.wait_for(|e| *e) => {}
    }
}
