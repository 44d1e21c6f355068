//! The local cluster's processes: started inside a network namespace
//! (`nsenter --net`, which execs the program, so the pid is the
//! program's), in a process group of their own so a Ctrl-C at `orca up`
//! does not reach them, their output in a log file each; recorded by pid
//! and start time, so `orca down` never signals a process that merely
//! reuses a pid.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A process `orca up` started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Started {
    /// What it is (`etcd-1`, `master-1`, `node-2`).
    pub what: String,
    /// Its process id.
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/PID/stat`).
    pub start_time: u64,
    /// Where its output goes.
    pub log: PathBuf,
    /// The network namespace it runs in.
    pub netns: PathBuf,
    /// Its program and arguments, to start it again (a drill restarts a
    /// member it killed).
    pub command: Vec<String>,
}

/// The fields of `/proc/PID/stat` after the command name.
fn stat(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces and ')'.
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The process's state letter and start time.
fn state(pid: u32) -> Option<(char, u64)> {
    let fields = stat(pid)?;
    // Field 3 (state) is the first after the name, field 22 (starttime) the 20th.
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Starts `program args` in the network namespace `netns`, its output
/// appended to `log`.
pub fn spawn(
    what: &str,
    netns: &Path,
    program: &Path,
    args: &[String],
    log: &Path,
) -> anyhow::Result<(Child, Started)> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let child = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .with_context(|| {
            format!(
                "starting {what} ({}) with nsenter (util-linux)",
                program.display()
            )
        })?;
    let pid = child.id();
    let (_, start_time) =
        state(pid).with_context(|| format!("{what} (pid {pid}) ended as it started"))?;
    Ok((
        child,
        Started {
            what: what.to_string(),
            pid,
            start_time,
            log: log.to_path_buf(),
            netns: netns.to_path_buf(),
            command: std::iter::once(program.display().to_string())
                .chain(args.iter().cloned())
                .collect(),
        },
    ))
}

impl Started {
    /// Whether the process recorded still runs (a zombie does not).
    pub fn running(&self) -> bool {
        matches!(state(self.pid), Some((s, start)) if start == self.start_time && s != 'Z')
    }

    /// Sends `signal` if the process recorded still runs.
    pub fn signal(&self, signal: Signal) {
        if self.running() {
            let _ = kill(Pid::from_raw(self.pid as i32), signal);
        }
    }

    /// Stops the process: SIGTERM, `grace` to end, then SIGKILL. Whether it
    /// had to be killed.
    pub fn stop(&self, grace: Duration) -> bool {
        self.signal(Signal::SIGTERM);
        if self.wait_gone(grace) {
            return false;
        }
        self.signal(Signal::SIGKILL);
        self.wait_gone(Duration::from_secs(5));
        true
    }

    /// Waits up to `limit` for the process to end.
    pub fn wait_gone(&self, limit: Duration) -> bool {
        let start = Instant::now();
        while self.running() {
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// The last lines of its log, to show why it failed.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}
