//! Shared by the process tests: the shipper binary, log writers and the
//! reading of what was delivered.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A scratch tree: pod logs, checkpoints, output, shipper logs.
pub struct Dirs {
    /// Removed on drop.
    pub root: tempfile::TempDir,
    /// Where pod log directories go.
    pub logs: PathBuf,
    /// The shipper's checkpoint directory.
    pub checkpoints: PathBuf,
    /// The file output.
    pub out: PathBuf,
}

impl Dirs {
    /// A fresh tree.
    pub fn new() -> Self {
        let root = tempfile::tempdir().expect("temp dir");
        let logs = root.path().join("pods");
        std::fs::create_dir_all(&logs).expect("mkdir");
        Self {
            checkpoints: root.path().join("checkpoints"),
            out: root.path().join("out/shipped.jsonl"),
            logs,
            root,
        }
    }

    /// A container's log directory, `<ns>_<pod>_<uid>/<container>`, created.
    pub fn container(&self, pod: &str, container: &str) -> PathBuf {
        let dir = self
            .logs
            .join(format!("default_{pod}_uid-{pod}"))
            .join(container);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    /// A config tailing every container's `*.log` (CRI) into the file output.
    pub fn file_config(&self, admin_port: u16, max_events: usize) -> PathBuf {
        let output = format!(
            "  - name: out\n    type: file\n    path: {}\n    batch: {{max_events: {max_events}, max_bytes: 4MiB, max_wait: 50ms}}\n    retry: {{initial_backoff: 20ms, max_backoff: 200ms}}\n",
            self.out.display()
        );
        self.config(admin_port, "8MiB", &output)
    }

    /// A config tailing every container's `*.log` (CRI) into `outputs` (YAML list items).
    pub fn config(&self, admin_port: u16, max_memory: &str, outputs: &str) -> PathBuf {
        let text = format!(
            "inputs:\n  - name: pods\n    paths: [\"{}/*/*/*.log\"]\n    format: cri\n    scan_interval: 100ms\n    poll_interval: 20ms\n    rotate_wait: 200ms\ncheckpoint_dir: {}\nbuffer: {{max_memory: {max_memory}}}\noutputs:\n{outputs}admin: {{address: \"127.0.0.1:{admin_port}\"}}\nshutdown_grace: 10s\n",
            self.logs.display(),
            self.checkpoints.display(),
        );
        let path = self.root.path().join("shipper.yaml");
        std::fs::write(&path, text).expect("writes config");
        path
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binds")
        .port()
}

/// The text of log line `seq`; long enough to look like a real log line.
pub fn text(seq: u64) -> String {
    format!(
        "seq={seq:09} GET /api/v1/items?page={} 200 OK user-agent=test/1.0",
        seq % 97
    )
}

/// A CRI line holding `text(seq)`: whole, or (every `split`th) as a `P`
/// piece and an `F` piece.
pub fn cri(seq: u64, split: u64) -> String {
    let ts = format!(
        "2026-11-25T10:{:02}:{:02}.{:09}Z",
        seq / 60 % 60,
        seq % 60,
        seq
    );
    let text = text(seq);
    if split > 0 && seq.is_multiple_of(split) {
        let (a, b) = text.split_at(20);
        format!("{ts} stdout P {a}\n{ts} stdout F {b}\n")
    } else {
        format!("{ts} stdout F {text}\n")
    }
}

/// What a JSON-lines output holds.
#[derive(Debug, Default)]
pub struct Delivered {
    /// How often each sequence number arrived.
    pub counts: HashMap<u64, u32>,
    /// Lines that are not whole JSON (torn by a SIGKILL mid-write; their
    /// batch was not acknowledged and was written again).
    pub torn: usize,
    /// Events whose text is not exactly `text(seq)`.
    pub garbled: Vec<String>,
}

impl Delivered {
    /// Sequence numbers missing from `0..n`.
    pub fn missing(&self, n: u64) -> Vec<u64> {
        (0..n).filter(|s| !self.counts.contains_key(s)).collect()
    }

    /// Deliveries beyond the first.
    pub fn duplicates(&self) -> u64 {
        self.counts.values().map(|&c| u64::from(c) - 1).sum()
    }

    /// Reads JSON lines whose `line` field is a `text(seq)`. Only that
    /// field is picked out, so reading a million lines stays quick.
    pub fn from_json_lines(bytes: &[u8]) -> Self {
        const KEY: &str = "\"line\":\"";
        let mut delivered = Self::default();
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let whole = line.first() == Some(&b'{') && line.last() == Some(&b'}');
            let text = std::str::from_utf8(line).ok().and_then(|l| {
                let start = l.find(KEY)? + KEY.len();
                let len = l[start..].find('"')?;
                Some(&l[start..start + len])
            });
            match (whole, text) {
                (true, Some(text)) => delivered.add(text),
                _ => delivered.torn += 1,
            }
        }
        delivered
    }

    /// Counts one delivered event text.
    pub fn add(&mut self, line: &str) {
        let seq = line
            .strip_prefix("seq=")
            .and_then(|rest| rest.get(..9))
            .and_then(|digits| digits.parse::<u64>().ok());
        match seq {
            Some(seq) if line == text(seq) => *self.counts.entry(seq).or_default() += 1,
            _ => self.garbled.push(line.to_string()),
        }
    }

    /// Reads a file output (missing file: nothing delivered yet).
    pub fn from_file(path: &Path) -> Self {
        Self::from_json_lines(&std::fs::read(path).unwrap_or_default())
    }
}

/// Polls `done` until it holds; panics naming `what` after `limit`, which
/// only guards against a hang and is far above the expected time.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The shipper as a separate process.
pub struct Shipper {
    child: Child,
}

impl Shipper {
    /// Starts `orca-logshipper --config <config>`, appending its log to `log`.
    pub fn start(config: &Path, log: &Path) -> Self {
        Self::spawn(
            Command::new(env!("CARGO_BIN_EXE_orca-logshipper")),
            config,
            log,
        )
    }

    /// Like [`Shipper::start`], but bound by file permissions even when
    /// the test runs as root: the process runs without the capabilities
    /// that bypass them (`CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`).
    pub fn start_bound_by_permissions(config: &Path, log: &Path) -> Self {
        let euid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_string))
            })
            .expect("reads the effective uid");
        if euid != "0" {
            return Self::start(config, log);
        }
        let mut command = Command::new("setpriv");
        command
            .arg("--inh-caps=-dac_override,-dac_read_search")
            .arg("--bounding-set=-dac_override,-dac_read_search")
            .arg(env!("CARGO_BIN_EXE_orca-logshipper"));
        Self::spawn(command, config, log)
    }

    fn spawn(mut command: Command, config: &Path, log: &Path) -> Self {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("opens shipper log");
        let child = command
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starts the shipper");
        Self { child }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the admin server on `admin_port` answers, which it does
    /// once start-up is done and SIGTERM takes the orderly path.
    pub fn wait_ready(&self, admin_port: u16) {
        wait_until("the shipper is up", Duration::from_secs(30), || {
            metric(admin_port, "orca_logshipper_buffer_max_bytes").is_some()
        });
    }

    /// SIGKILL: no flush, no checkpoint.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaps");
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("runs kill");
        assert!(status.success());
        self.child.wait().expect("waits")
    }

    /// Peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("reads /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM")
            * 1024
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        // A failed test must not leave the process running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fetches the shipper's `/metrics` and returns the value of `metric`
/// (an exact series name with labels), if the admin server answers.
pub fn metric(admin_port: u16, metric: &str) -> Option<f64> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", admin_port)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(metric)?.strip_prefix(' ')?.parse().ok())
}

/// A JSON-lines HTTP output named `http` to the test server on `port`.
pub fn http_output(port: u16) -> String {
    format!(
        "  - name: http\n    type: http\n    url: http://127.0.0.1:{port}/ingest\n    format: json_lines\n    batch: {{max_events: 1000, max_bytes: 1MiB, max_wait: 50ms}}\n    retry: {{initial_backoff: 20ms, max_backoff: 200ms}}\n    timeout: 2s\n"
    )
}

/// Waits until an output that does not deliver has filled the buffer past
/// half of `max_memory`, and checks that it stays within it with the
/// reader held back short of the `written` lines.
pub fn wait_reader_held_back(admin: u16, max_memory: u64, written: u64) {
    wait_until("buffer full", Duration::from_secs(60), || {
        metric(admin, "orca_logshipper_buffer_fill_bytes")
            .is_some_and(|fill| fill > (max_memory / 2) as f64)
    });
    let fill = metric(admin, "orca_logshipper_buffer_fill_bytes").expect("metric");
    let max = metric(admin, "orca_logshipper_buffer_max_bytes").expect("metric");
    assert_eq!(max, max_memory as f64);
    assert!(fill <= max, "buffer {fill} over its {max} bytes");
    let read = metric(admin, "orca_logshipper_input_events_total{input=\"pods\"}").expect("metric");
    assert!(
        read < written as f64,
        "the reader paused: read {read} of {written} lines"
    );
}

/// Appends to a log file the way a container runtime does: whole writes, flushed.
pub struct Writer {
    /// The file written.
    pub path: PathBuf,
    file: std::fs::File,
}

impl Writer {
    /// Opens (creating) `path` for appending.
    pub fn open(path: PathBuf) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("opens log");
        Self { path, file }
    }

    /// Appends `text`.
    pub fn write(&mut self, text: &str) {
        self.file.write_all(text.as_bytes()).expect("writes log");
    }

    /// Rename rotation: moves the file to `<path>.<suffix>` and starts a new one.
    pub fn rotate_rename(&mut self, suffix: &str) {
        let rotated = PathBuf::from(format!("{}.{suffix}", self.path.display()));
        std::fs::rename(&self.path, rotated).expect("renames");
        *self = Self::open(self.path.clone());
    }

    /// copytruncate rotation, as logrotate does it: copy to `<path>.<suffix>`, truncate.
    pub fn rotate_copytruncate(&mut self, suffix: &str) {
        let rotated = PathBuf::from(format!("{}.{suffix}", self.path.display()));
        std::fs::copy(&self.path, rotated).expect("copies");
        self.file.set_len(0).expect("truncates");
    }
}

/// `GET /healthz` on the admin port: the status code and the body.
pub fn healthz(admin_port: u16) -> Option<(u16, String)> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", admin_port)).ok()?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}
