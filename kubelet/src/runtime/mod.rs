//! The container runtime: OCI bundles run by `runc`, each under a monitor
//! process of its own ([`monitor`]), and the cgroups they live in.

pub mod bundle;
pub mod cgroup;
pub mod monitor;

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use self::monitor::{EXIT_FILE, ExitRecord, MonitorSpec, SPEC_FILE};

/// How long `runc` may take for a kill, a delete or a state query.
const RUNC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `runc run --detach` may take to start a container.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The runc binary, its state root and the monitor binary.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The runc binary.
    pub runc: PathBuf,
    /// runc's state directory (`runc --root`), one per kubelet.
    pub root: PathBuf,
    /// The `orca-monitor` binary.
    pub monitor: PathBuf,
}

/// A container the kubelet started or adopted, as it records it in
/// `container.json` in the container's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// The runc id.
    pub id: String,
    /// The container's init process.
    pub pid: i32,
    /// Its monitor.
    pub monitor_pid: i32,
    /// When it started (RFC 3339).
    pub started_at: String,
}

/// The file the kubelet records a started container in.
pub const RUNNING_FILE: &str = "container.json";

impl Runtime {
    /// Starts a container: writes the monitor's spec into `dir`, runs the
    /// monitor there and waits for it to report the container started.
    /// Returns an error with runc's reason when it could not start.
    pub async fn start(&self, dir: &Path, spec: &MonitorSpec) -> Result<Running, String> {
        let spec_json = serde_json::to_vec(spec).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(dir.join(EXIT_FILE));
        monitor::write_atomic(&dir.join(SPEC_FILE), &spec_json)
            .map_err(|e| format!("writing {}: {e}", dir.join(SPEC_FILE).display()))?;
        let diagnostics = std::fs::File::create(dir.join("monitor.log"))
            .map_err(|e| format!("creating {}: {e}", dir.join("monitor.log").display()))?;
        let mut child = Command::new(&self.monitor)
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(diagnostics)
            // Its own process group: a signal to the kubelet's is not one to
            // the containers.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.monitor.display()))?;
        let monitor_pid = child.id().map_or(0, |p| p as i32);
        let stdout = child.stdout.take().expect("stdout is piped");
        // The monitor lives on after this; its exit is reaped here.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let mut line = String::new();
        let mut stdout = BufReader::new(stdout);
        let handshake = stdout.read_line(&mut line);
        if tokio::time::timeout(START_TIMEOUT, handshake)
            .await
            .is_err()
        {
            // runc hangs: the container is given up, its monitor with it.
            if let Some(pid) = rustix::process::Pid::from_raw(monitor_pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            let _ = self.delete(&spec.id).await;
            return Err(format!(
                "runc did not start the container within {}s",
                START_TIMEOUT.as_secs()
            ));
        }
        let started_at = jiff::Timestamp::now().to_string();
        match line.trim().split_once(' ') {
            Some(("started", pid)) => Ok(Running {
                id: spec.id.clone(),
                pid: pid.parse().map_err(|_| format!("monitor said {line:?}"))?,
                monitor_pid,
                started_at,
            }),
            Some(("failed", reason)) => Err(reason.to_string()),
            _ => Err(format!(
                "the monitor ended without starting the container: {}",
                std::fs::read_to_string(dir.join("monitor.log"))
                    .unwrap_or_default()
                    .trim()
            )),
        }
    }

    /// Sends `signal` to the container's processes.
    pub async fn kill(&self, id: &str, signal: &str) -> io::Result<()> {
        self.runc(&["kill", "--all", id, signal]).await.map(|_| ())
    }

    /// Removes the container from runc (and its cgroup), killing what runs.
    pub async fn delete(&self, id: &str) -> io::Result<()> {
        match self.runc(&["delete", "--force", id]).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("does not exist") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The ids of every container runc knows under this root.
    pub async fn list(&self) -> io::Result<Vec<String>> {
        let out = self.runc(&["list", "--format", "json"]).await?;
        let list: Option<Vec<serde_json::Value>> = serde_json::from_slice(&out).ok();
        Ok(list
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c["id"].as_str().map(str::to_string))
            .collect())
    }

    /// Runs `command` in the container and returns its exit code and what
    /// it printed (stdout, then stderr), ending it after `timeout`.
    pub async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> io::Result<(i32, Vec<u8>)> {
        let mut cmd = Command::new(&self.runc);
        cmd.arg("--root")
            .arg(&self.root)
            .args(["exec", id])
            .args(command)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(timeout, cmd.output())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "command timed out"))??;
        let mut printed = out.stdout;
        printed.extend_from_slice(&out.stderr);
        Ok((out.status.code().unwrap_or(128), printed))
    }

    async fn runc(&self, args: &[&str]) -> io::Result<Vec<u8>> {
        let out = tokio::time::timeout(
            RUNC_TIMEOUT,
            Command::new(&self.runc)
                .arg("--root")
                .arg(&self.root)
                .args(args)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, format!("runc {args:?} timed out"))
        })??;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(io::Error::other(format!(
                "runc {}: {}",
                args.first().unwrap_or(&""),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }
}

/// The exit record in a container's directory, once its monitor wrote it.
pub fn exit_record(dir: &Path) -> Option<ExitRecord> {
    serde_json::from_slice(&std::fs::read(dir.join(EXIT_FILE)).ok()?).ok()
}

/// The running-container record in a container's directory.
pub fn running_record(dir: &Path) -> Option<Running> {
    serde_json::from_slice(&std::fs::read(dir.join(RUNNING_FILE)).ok()?).ok()
}

/// A handle that becomes ready when a process ends, whether or not it is
/// this process's child (a pidfd), so adopted monitors are watched as
/// closely as the ones started here.
pub struct ProcessWatch(AsyncFd<OwnedFd>);

impl ProcessWatch {
    /// Watches `pid`; `None` when it is gone already or is not the process
    /// `dir`'s monitor (its pid reused since).
    pub fn monitor(pid: i32, dir: &Path) -> Option<Self> {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let dir = dir.as_os_str().as_encoded_bytes();
        if !cmdline.windows(dir.len()).any(|w| w == dir) {
            return None;
        }
        let fd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(pid)?,
            rustix::process::PidfdFlags::empty(),
        )
        .ok()?;
        // The AsyncFd owns the pidfd until it drops, so nothing closes or
        // reuses the descriptor behind the reactor's back: the I/O-safety
        // concern that deprecated `new` does not hold here.
        #[allow(deprecated)]
        let watch = AsyncFd::new(fd).ok().map(Self);
        watch
    }

    /// Resolves when the process has ended.
    pub async fn ended(&self) {
        let _ = self.0.readable().await;
    }
}
