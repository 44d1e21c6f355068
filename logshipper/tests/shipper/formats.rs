//! Payloads as their receivers define them, end to end through the
//! shipper process: Elasticsearch bulk and Loki push over HTTP, the Fluentd
//! forward protocol with acks (decoded by an independent msgpack library),
//! and RFC 5424 syslog received by a real rsyslog.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rmpv::Value;
use serde_json::json;

use crate::common::{Delivered, Dirs, Shipper, Writer, cri, free_port, wait_until};
use crate::http_server::TestServer;

const LINES: u64 = 300;

fn write_lines(dirs: &Dirs) {
    let mut writer = Writer::open(dirs.container("shop", "cart").join("0.log"));
    for seq in 0..LINES {
        writer.write(&cri(seq, 5));
    }
}

fn http_output(port: u16, format: &str) -> String {
    format!(
        "  - name: http\n    type: http\n    url: http://127.0.0.1:{port}/x\n    format: {format}\n    headers: {{X-Scope-OrgID: tenant-1}}\n    batch: {{max_events: 100, max_bytes: 1MiB, max_wait: 50ms}}\n"
    )
}

#[test]
fn elasticsearch_bulk_over_http() {
    let dirs = Dirs::new();
    let server = TestServer::start();
    let config = dirs.config(
        free_port(),
        "8MiB",
        &http_output(server.port, "elasticsearch_bulk"),
    );
    let shipper = Shipper::start(&config, &dirs.root.path().join("shipper.log"));
    write_lines(&dirs);
    let mut delivered = Delivered::default();
    wait_until("every line delivered", Duration::from_secs(60), || {
        delivered = Delivered::default();
        for body in server.bodies() {
            assert_eq!(body.content_type, "application/x-ndjson");
            let text = String::from_utf8(body.bytes).expect("utf-8");
            assert!(text.ends_with('\n'), "the bulk body ends in a newline");
            let lines: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).expect("JSON"))
                .collect();
            for pair in lines.chunks(2) {
                assert_eq!(pair[0], json!({"create": {"_index": "orca-logs"}}));
                let doc = &pair[1];
                assert_eq!(doc["namespace"], "default");
                assert_eq!(doc["pod"], "shop");
                assert_eq!(doc["container"], "cart");
                assert_eq!(doc["stream"], "stdout");
                assert!(
                    doc["@timestamp"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("2026-11-25T10:"))
                );
                delivered.add(doc["message"].as_str().expect("message"));
            }
        }
        delivered.missing(LINES).is_empty()
    });
    assert!(shipper.terminate().success());
    assert!(delivered.garbled.is_empty(), "{:?}", delivered.garbled);
}

#[test]
fn loki_push_over_http() {
    let dirs = Dirs::new();
    let server = TestServer::start();
    let config = dirs.config(free_port(), "8MiB", &http_output(server.port, "loki"));
    let shipper = Shipper::start(&config, &dirs.root.path().join("shipper.log"));
    write_lines(&dirs);
    let mut delivered = Delivered::default();
    wait_until("every line delivered", Duration::from_secs(60), || {
        delivered = Delivered::default();
        for body in server.bodies() {
            assert_eq!(body.content_type, "application/json");
            let push: serde_json::Value = serde_json::from_slice(&body.bytes).expect("JSON");
            for stream in push["streams"].as_array().expect("streams") {
                assert_eq!(stream["stream"]["pod"], "shop");
                assert_eq!(stream["stream"]["stream"], "stdout");
                for value in stream["values"].as_array().expect("values") {
                    let ts = value[0].as_str().expect("timestamp string");
                    assert!(
                        ts.parse::<i64>()
                            .is_ok_and(|ns| ns > 1_700_000_000_000_000_000)
                    );
                    delivered.add(value[1].as_str().expect("line"));
                }
            }
        }
        delivered.missing(LINES).is_empty()
    });
    assert!(shipper.terminate().success());
    assert!(delivered.garbled.is_empty(), "{:?}", delivered.garbled);
}

/// Gzip-compressed JSON lines, decompressed by GNU gzip.
#[test]
fn gzip_json_lines_over_http() {
    let dirs = Dirs::new();
    let server = TestServer::start();
    let output = http_output(server.port, "json_lines") + "    gzip: true\n";
    let config = dirs.config(free_port(), "8MiB", &output);
    let shipper = Shipper::start(&config, &dirs.root.path().join("shipper.log"));
    write_lines(&dirs);
    let mut delivered = Delivered::default();
    wait_until("every line delivered", Duration::from_secs(60), || {
        delivered = Delivered::default();
        for body in server.bodies() {
            assert_eq!(body.encoding, "gzip");
            let mut gunzip = Command::new("gzip")
                .arg("-dc")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("runs gzip");
            gunzip
                .stdin
                .take()
                .expect("stdin")
                .write_all(&body.bytes)
                .expect("feeds gzip");
            let out = gunzip.wait_with_output().expect("gzip finishes");
            assert!(out.status.success(), "gzip accepts the body");
            let more = Delivered::from_json_lines(&out.stdout);
            assert_eq!(more.torn, 0);
            for (seq, count) in more.counts {
                *delivered.counts.entry(seq).or_default() += count;
            }
        }
        delivered.missing(LINES).is_empty()
    });
    assert!(shipper.terminate().success());
}

/// A forward server that leaves the first message unacknowledged (closing
/// the connection), then acks every chunk.
#[test]
fn forward_protocol_with_acks() {
    let dirs = Dirs::new();
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
    let port = listener.local_addr().expect("addr").port();
    let output = format!(
        "  - name: fluentd\n    type: forward\n    address: 127.0.0.1:{port}\n    require_ack: true\n    tag: kube.shop\n    timeout: 2s\n    retry: {{initial_backoff: 20ms, max_backoff: 100ms}}\n    batch: {{max_events: 100, max_bytes: 1MiB, max_wait: 50ms}}\n"
    );
    let config = dirs.config(free_port(), "8MiB", &output);
    let shipper = Shipper::start(&config, &dirs.root.path().join("shipper.log"));
    write_lines(&dirs);

    let mut delivered = Delivered::default();
    let mut unacked = 0;
    let mut first = true;
    listener.set_nonblocking(true).expect("nonblocking");
    while !delivered.missing(LINES).is_empty() {
        let mut accepted = None;
        wait_until("the shipper connects", Duration::from_secs(60), || {
            accepted = listener.accept().ok();
            accepted.is_some()
        });
        let (mut stream, _) = accepted.expect("accepted");
        stream.set_nonblocking(false).expect("blocking");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        while let Ok(message) = rmpv::decode::read_value(&mut stream) {
            let (chunk, records) = check_forward_message(&message);
            if first {
                // No ack: the shipper must send this chunk again.
                first = false;
                unacked = records.len();
                break;
            }
            for record in records {
                delivered.add(&record);
            }
            let mut ack = Vec::new();
            rmpv::encode::write_value(
                &mut ack,
                &Value::Map(vec![(Value::from("ack"), Value::from(chunk.as_str()))]),
            )
            .expect("encodes");
            stream.write_all(&ack).expect("acks");
            if delivered.missing(LINES).is_empty() {
                break;
            }
        }
    }
    assert!(shipper.terminate().success());
    assert!(unacked > 0);
    assert!(delivered.garbled.is_empty(), "{:?}", delivered.garbled);
}

/// Checks the Forward-mode shape `[tag, [[EventTime, record]...], {size, chunk}]`
/// and returns the chunk id and the records' `log` fields.
fn check_forward_message(message: &Value) -> (String, Vec<String>) {
    let parts = message.as_array().expect("message is an array");
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0].as_str(), Some("kube.shop"));
    let entries = parts[1].as_array().expect("entries");
    let mut logs = Vec::new();
    for entry in entries {
        let entry = entry.as_array().expect("entry is [time, record]");
        match &entry[0] {
            Value::Ext(0, bytes) => {
                assert_eq!(bytes.len(), 8, "EventTime is 8 bytes");
                let secs = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes"));
                assert!(secs > 1_700_000_000);
            }
            other => panic!("time is not an EventTime: {other}"),
        }
        let record = entry[1].as_map().expect("record is a map");
        let field = |name: &str| {
            record
                .iter()
                .find(|(k, _)| k.as_str() == Some(name))
                .and_then(|(_, v)| v.as_str())
                .map(str::to_string)
        };
        assert_eq!(field("namespace").as_deref(), Some("default"));
        assert_eq!(field("container").as_deref(), Some("cart"));
        assert_eq!(field("stream").as_deref(), Some("stdout"));
        logs.push(field("log").expect("log field"));
    }
    let option = parts[2].as_map().expect("option map");
    let get = |name: &str| {
        option
            .iter()
            .find(|(k, _)| k.as_str() == Some(name))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        get("size").and_then(|v| v.as_u64()),
        Some(entries.len() as u64)
    );
    let chunk = get("chunk")
        .and_then(|v| v.as_str().map(str::to_string))
        .expect("chunk id");
    assert_eq!(chunk.len(), 24, "base64 of 128 bits");
    (chunk, logs)
}

/// rsyslogd with its own config, listening on a loopback TCP port and
/// writing what it parsed, field by field, to a file.
struct Rsyslog {
    child: Child,
}

impl Rsyslog {
    fn start(dir: &Path, port: u16, out: &Path) -> Self {
        let rsyslogd = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("rsyslogd not found: install Debian's rsyslog package (scripts/deps.sh)");
        let config = dir.join("rsyslog.conf");
        std::fs::write(
            &config,
            format!(
                r#"global(workDirectory="{dir}")
module(load="imtcp")
template(name="fields" type="string" string="%pri%|%timereported:::date-rfc3339%|%hostname%|%app-name%|%msgid%|%structured-data%|%msg%\n")
ruleset(name="orca") {{
  action(type="omfile" file="{out}" template="fields")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="orca")
"#,
                dir = dir.display(),
                out = out.display(),
            ),
        )
        .expect("writes rsyslog config");
        let child = Command::new(rsyslogd)
            .args(["-n", "-i"])
            .arg(dir.join("rsyslogd.pid"))
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starts rsyslogd");
        Self { child }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn syslog_received_by_rsyslog() {
    let dirs = Dirs::new();
    let port = free_port();
    let received = dirs.root.path().join("rsyslog.out");
    let rsyslog_dir = dirs.root.path().join("rsyslog");
    std::fs::create_dir_all(&rsyslog_dir).expect("mkdir");
    let _rsyslog = Rsyslog::start(&rsyslog_dir, port, &received);
    wait_until("rsyslog listening", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let output = format!(
        "  - name: syslog\n    type: syslog\n    address: 127.0.0.1:{port}\n    facility: 16\n    hostname: node-1\n    batch: {{max_events: 50, max_bytes: 1MiB, max_wait: 50ms}}\n"
    );
    let config = dirs.config(free_port(), "8MiB", &output);
    let shipper = Shipper::start(&config, &dirs.root.path().join("shipper.log"));
    write_lines(&dirs);
    let mut delivered = Delivered::default();
    wait_until(
        "rsyslog received every line",
        Duration::from_secs(60),
        || {
            delivered = Delivered::default();
            let text = std::fs::read_to_string(&received).unwrap_or_default();
            // rsyslog may be writing the last line as it is read.
            let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            for line in complete.lines() {
                let fields: Vec<&str> = line.splitn(7, '|').collect();
                assert_eq!(fields.len(), 7, "{line}");
                // local0 (16) * 8 + informational (6)
                assert_eq!(fields[0], "134", "{line}");
                assert!(fields[1].starts_with("2026-11-25T10:"), "{line}");
                assert_eq!(fields[2], "node-1");
                assert_eq!(fields[3], "cart");
                assert_eq!(fields[4], "stdout");
                assert_eq!(
                    fields[5],
                    r#"[orca@32473 namespace="default" pod="shop" uid="uid-shop" container="cart"]"#
                );
                delivered.add(fields[6]);
            }
            delivered.missing(LINES).is_empty()
        },
    );
    assert!(shipper.terminate().success());
    assert!(delivered.garbled.is_empty(), "{:?}", delivered.garbled);
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the HTTPS test needs openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate authority `ca.pem` (key `ca.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    let subject = format!("/CN={name}");
    openssl(
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", &subject,
            "-keyout", "ca.key", "-out", "ca.pem",
        ],
        dir,
    );
}

/// A TLS terminator in front of a test server: socat with a certificate
/// for `localhost` signed by a test authority (`ca.pem` in `dir`); killed
/// on drop.
struct TlsFront {
    port: u16,
    child: Child,
}

impl TlsFront {
    fn start(dir: &Path, backend: u16) -> Self {
        make_ca(dir, "orca test authority");
        std::fs::write(
            dir.join("leaf.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "key.pem",
                "-out",
                "leaf.csr",
            ],
            dir,
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "leaf.ext",
                "-out",
                "cert.pem",
            ],
            dir,
        );
        let port = free_port();
        let child = Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
                dir.join("cert.pem").display(),
                dir.join("key.pem").display()
            ))
            .arg(format!("TCP:127.0.0.1:{backend}"))
            .stderr(Stdio::null())
            .spawn()
            .expect("the HTTPS test needs socat");
        wait_until("socat listening", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self { port, child }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// JSON lines over HTTPS, the server's certificate checked against the
/// configured authority; a certificate it does not vouch for delivers
/// nothing and says why.
#[test]
fn json_lines_over_https() {
    let dirs = Dirs::new();
    let server = TestServer::start();
    let front = TlsFront::start(dirs.root.path(), server.port);
    let output = |ca: &Path| {
        format!(
            "  - name: https\n    type: http\n    url: https://localhost:{}/x\n    format: json_lines\n    ca_file: {}\n    batch: {{max_events: 100, max_bytes: 1MiB, max_wait: 50ms}}\n    retry: {{initial_backoff: 50ms, max_backoff: 200ms}}\n",
            front.port,
            ca.display()
        )
    };

    // An authority that did not sign the server's certificate.
    let other = dirs.root.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    make_ca(&other, "another authority");
    let config = dirs.config(free_port(), "8MiB", &output(&other.join("ca.pem")));
    let log = dirs.root.path().join("untrusted.log");
    let shipper = Shipper::start(&config, &log);
    write_lines(&dirs);
    wait_until(
        "the certificate is refused",
        Duration::from_secs(30),
        || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("certificate")),
    );
    assert!(server.bodies().is_empty(), "nothing reached the server");
    assert!(shipper.terminate().success());

    // The right authority: every line arrives.
    let config = dirs.config(
        free_port(),
        "8MiB",
        &output(&dirs.root.path().join("ca.pem")),
    );
    let log = dirs.root.path().join("shipper.log");
    let shipper = Shipper::start(&config, &log);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !server.delivered(|d| d.missing(LINES).is_empty()) {
        assert!(
            std::time::Instant::now() < deadline,
            "not every line delivered over HTTPS; the shipper said:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(shipper.terminate().success());
}
