//! The container monitor (`orca-monitor`), Orca's conmon: one small process
//! per container that outlives the kubelet. It runs `runc run --detach`
//! with pipes for the container's stdout and stderr, becomes the
//! container's parent (a child subreaper), writes what the container prints
//! to its CRI log file, and records its exit in `exit.json` beside the
//! bundle. The kubelet learns the container's pid from the monitor's first
//! line on stdout and its end from the exit record, so a restarted kubelet
//! adopts running containers instead of starting them again.
//!
//! Plain threads and blocking I/O: the monitor must stay small (a couple of
//! MiB of RSS), so no async runtime runs here.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

use nix::sys::wait::{WaitStatus, waitpid};
use serde::{Deserialize, Serialize};

/// What the kubelet tells a monitor, as `monitor.json` in its directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonitorSpec {
    /// The runc container id.
    pub id: String,
    /// The OCI bundle directory.
    pub bundle: PathBuf,
    /// The runc binary.
    pub runc: PathBuf,
    /// runc's state root (`runc --root`).
    pub runc_root: PathBuf,
    /// The CRI log file.
    pub log_path: PathBuf,
    /// Size at which the log file is rotated.
    pub log_max_size: u64,
    /// Log files kept, the live one included.
    pub log_max_files: u32,
    /// The container's cgroup path (as in the bundle), to tell an OOM kill.
    pub cgroup: String,
}

/// How a container ended, as the monitor records it in `exit.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit code; 128 + the signal for a container killed by one.
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// When it ended (RFC 3339).
    pub finished_at: String,
    /// Whether the kernel's OOM killer ended it.
    pub oom_killed: bool,
    /// Why it never ran, when `runc run` failed.
    pub error: Option<String>,
}

/// The file name of the monitor's spec in its directory.
pub const SPEC_FILE: &str = "monitor.json";
/// The file name of the exit record in the monitor's directory.
pub const EXIT_FILE: &str = "exit.json";
/// The longest line written as one CRI entry; longer ones are split into
/// partial (`P`) entries, as CRI-O and containerd do.
const MAX_LINE: usize = 16 * 1024;

/// The monitor's entry point: `orca-monitor DIR`. Returns the process's exit
/// code; errors are written to stderr, which the kubelet points at
/// `monitor.log` in DIR.
pub fn main() -> i32 {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: orca-monitor DIR (a container directory holding {SPEC_FILE})");
        return 2;
    };
    match run(&dir) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("orca-monitor {}: {e}", dir.display());
            1
        }
    }
}

fn run(dir: &Path) -> io::Result<()> {
    let spec: MonitorSpec = serde_json::from_slice(&fs::read(dir.join(SPEC_FILE))?)
        .map_err(|e| io::Error::other(format!("{SPEC_FILE}: {e}")))?;
    // Away from the kubelet's session and signals, and the parent of the
    // container once `runc run --detach` hands it over.
    let _ = rustix::process::setsid();
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;

    let (out_read, out_write) = io::pipe()?;
    let (err_read, err_write) = io::pipe()?;
    let log = Arc::new(Mutex::new(LogFile::open(
        &spec.log_path,
        spec.log_max_size,
        spec.log_max_files,
    )?));
    let pid_file = dir.join("container.pid");
    let _ = fs::remove_file(&pid_file);
    let runc_log = dir.join("runc.log");
    let created = Command::new(&spec.runc)
        .arg("--root")
        .arg(&spec.runc_root)
        .arg("--log")
        .arg(&runc_log)
        // `run --detach` creates and starts in one runc process: one Go
        // start-up a container fewer than `create` then `start`.
        .args(["--log-format", "json", "run", "--detach", "--bundle"])
        .arg(&spec.bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&spec.id)
        .stdin(Stdio::null())
        .stdout(out_write)
        .stderr(err_write)
        .status();
    // The pipes' write ends now live only in the container, so the readers
    // see end-of-file when it ends.
    let readers = [("stdout", out_read), ("stderr", err_read)].map(|(stream, pipe)| {
        let log = Arc::clone(&log);
        std::thread::spawn(move || copy_lines(pipe, stream, &log))
    });
    let failed = match created {
        Ok(status) if status.success() => None,
        Ok(status) => Some(format!("runc run {status}: {}", runc_error(&runc_log))),
        Err(e) => Some(format!("cannot run {}: {e}", spec.runc.display())),
    };
    if let Some(error) = failed {
        return fail(dir, error);
    }
    let pid: i32 = fs::read_to_string(&pid_file)?
        .trim()
        .parse()
        .map_err(|_| io::Error::other("runc wrote no pid"))?;
    // The handshake: the kubelet waits for this one line.
    println!("started {pid}");
    let _ = io::stdout().flush();

    let (exit_code, signal) = wait_for(pid);
    for reader in readers {
        let _ = reader.join();
    }
    let record = ExitRecord {
        exit_code,
        signal,
        finished_at: jiff::Timestamp::now().to_string(),
        oom_killed: oom_killed(&spec.cgroup),
        error: None,
    };
    write_atomic(&dir.join(EXIT_FILE), &serde_json::to_vec(&record)?)
}

/// Records a container that never ran and tells the kubelet why.
fn fail(dir: &Path, error: String) -> io::Result<()> {
    let record = ExitRecord {
        exit_code: 128,
        signal: None,
        finished_at: jiff::Timestamp::now().to_string(),
        oom_killed: false,
        error: Some(error.clone()),
    };
    write_atomic(&dir.join(EXIT_FILE), &serde_json::to_vec(&record)?)?;
    println!("failed {}", error.replace('\n', " "));
    Ok(())
}

/// The last error runc logged (its log is JSON lines with a `msg`).
fn runc_error(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|entry| entry["level"] == "error")
        .and_then(|entry| entry["msg"].as_str().map(str::to_string))
        .unwrap_or_else(|| "runc gave no reason".into())
}

/// Reaps children until `pid` ends; its exit code and killing signal.
fn wait_for(pid: i32) -> (i32, Option<i32>) {
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(p, code)) if p.as_raw() == pid => return (code, None),
            Ok(WaitStatus::Signaled(p, signal, _)) if p.as_raw() == pid => {
                return (128 + signal as i32, Some(signal as i32));
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            // No child left: the container was reaped elsewhere.
            Err(_) => return (255, None),
        }
    }
}

/// Whether the container's cgroup saw an OOM kill (v1 `memory.oom_control`
/// or v2 `memory.events`).
fn oom_killed(cgroup: &str) -> bool {
    let cgroup = cgroup.trim_start_matches('/');
    [
        Path::new("/sys/fs/cgroup/memory")
            .join(cgroup)
            .join("memory.oom_control"),
        Path::new("/sys/fs/cgroup")
            .join(cgroup)
            .join("memory.events"),
    ]
    .iter()
    .filter_map(|path| fs::read_to_string(path).ok())
    .any(|text| {
        text.lines().any(|line| {
            line.strip_prefix("oom_kill ")
                .and_then(|n| n.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
    })
}

/// Writes `data` to `path` through a temporary file and a rename, so a
/// reader sees all of it or nothing.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

/// Copies a stream's lines into the log as CRI entries until end-of-file.
fn copy_lines(pipe: impl Read, stream: &'static str, log: &Mutex<LogFile>) {
    let mut reader = BufReader::with_capacity(MAX_LINE, pipe);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line);
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let full = line.last() == Some(&b'\n');
        if full {
            line.pop();
        }
        let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = log.write(stream, full, &line) {
            eprintln!("writing {}: {e}", log.path.display());
        }
    }
}

/// A CRI log file rotated by size: the live `N.log` and up to
/// `max_files - 1` rotated `N.log.<timestamp>` beside it.
struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
}

impl LogFile {
    fn open(path: &Path, max_size: u64, max_files: u32) -> io::Result<Self> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            size,
            max_size,
            max_files,
        })
    }

    /// Appends one entry: `<RFC 3339 nano> <stream> <F|P> <line>`.
    fn write(&mut self, stream: &str, full: bool, line: &[u8]) -> io::Result<()> {
        let now = jiff::Timestamp::now();
        let tag = if full { 'F' } else { 'P' };
        let mut entry = Vec::with_capacity(line.len() + 48);
        write!(entry, "{now} {stream} {tag} ")?;
        entry.extend_from_slice(line);
        entry.push(b'\n');
        if self.size > 0 && self.size + entry.len() as u64 > self.max_size {
            self.rotate(now)?;
        }
        self.file.write_all(&entry)?;
        self.size += entry.len() as u64;
        Ok(())
    }

    /// Renames the live file aside (as the kubelet's rotation names them)
    /// and drops the oldest beyond the limit.
    fn rotate(&mut self, now: jiff::Timestamp) -> io::Result<()> {
        let stamp = now.strftime("%Y%m%d-%H%M%S%.f").to_string();
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        fs::rename(
            &self.path,
            self.path.with_file_name(format!("{name}.{stamp}")),
        )?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let prefix = format!("{name}.");
        let mut rotated: Vec<String> = fs::read_dir(dir)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        rotated.sort();
        let keep = self.max_files.saturating_sub(1) as usize;
        for old in &rotated[..rotated.len().saturating_sub(keep)] {
            let _ = fs::remove_file(dir.join(old));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_cri_entries_and_the_file_rotates_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let log = Mutex::new(LogFile::open(&path, 200, 3).unwrap());
        let input = "hello\nworld\n".repeat(20);
        copy_lines(input.as_bytes(), "stdout", &log);
        let live = fs::read_to_string(&path).unwrap();
        let first = live.lines().next().unwrap();
        let fields: Vec<&str> = first.splitn(4, ' ').collect();
        assert!(fields[0].parse::<jiff::Timestamp>().is_ok(), "{first}");
        assert_eq!(&fields[1..], ["stdout", "F", fields[3]]);
        assert!(["hello", "world"].contains(&fields[3]));
        let files = fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(files, 3, "the live file and two rotated ones");
    }

    #[test]
    fn a_long_line_is_split_into_partial_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let log = Mutex::new(LogFile::open(&path, 1 << 20, 2).unwrap());
        let long = format!("{}\n", "x".repeat(MAX_LINE + 10));
        copy_lines(long.as_bytes(), "stderr", &log);
        let text = fs::read_to_string(&path).unwrap();
        let tags: Vec<&str> = text.lines().map(|l| l.split(' ').nth(2).unwrap()).collect();
        assert_eq!(tags, ["P", "F"]);
    }
}
