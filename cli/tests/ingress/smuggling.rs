//! The published request-smuggling variants, one row each: CL.TE, TE.CL,
//! TE.TE with obfuscated `Transfer-Encoding` values and whitespace,
//! `Content-Length` with signs, spaces and leading zeros, obs-fold, bare LF,
//! chunk sizes with extensions and overflow, HTTP/1.0 with
//! `Transfer-Encoding`. Each row's bytes, followed by a pipelined
//! `GET /second`, go over one connection to the proxy with nginx behind it,
//! then to nginx alone; nginx's access log says which requests it read and
//! with what body.
//!
//! For each row the proxy either refuses (its own 4xx or 5xx as the only
//! answer, the connection closed, nothing reaching nginx), or forwards the
//! row's number of requests, the client's answers matching nginx's log line
//! for line, and nginx alone accepts the same bytes as the same requests
//! with the same bodies: the proxy and nginx agree on where every request
//! ends, or the proxy refuses. The table is printed (`--nocapture`) with
//! what nginx alone answered, which shows where nginx is the laxer.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};

use super::{Nginx, Proxy, connect, read_response, wait_until};

/// What the proxy does with a row's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// It answers the first request itself with an error and closes.
    Refused,
    /// It forwards this many requests, each answered by nginx.
    Forwarded(usize),
}

use Outcome::{Forwarded, Refused};

/// The request pipelined after every row's bytes.
const SECOND: &str = "GET /second HTTP/1.1\r\nHost: a.test\r\n\r\n";

/// Name, the bytes sent before `SECOND`, and what the proxy does.
const CASES: &[(&str, &str, Outcome)] = &[
    // Both framings at once: a front end reading one and a back end the
    // other is the classic desync. Refused whichever comes first.
    (
        "CL.TE",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nSMUGGLED",
        Refused,
    ),
    (
        "TE.CL",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "CL.TE with Content-Length: 0",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        Refused,
    ),
    // TE.TE: one Transfer-Encoding one side does not recognise.
    (
        "TE.TE: chunked, then x",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "TE.TE: chunked twice",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "TE: xchunked, with CL",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\nhello",
        Refused,
    ),
    (
        "TE: chunked, identity",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "TE: gzip, chunked",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "TE: quoted \"chunked\"",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "TE: space before the colon",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello",
        Refused,
    ),
    (
        "TE: vertical tab before chunked",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "TE: NUL after chunked",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\x00\r\n\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "TE: obs-fold",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: x\r\n chunked\r\n\r\n0\r\n\r\n",
        Refused,
    ),
    // A tab is whitespace to RFC 9110 and part of the value to nginx.
    (
        "TE: tab before chunked",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding:\tchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "TE: space and tab after chunked",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked \t\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "TE: spaces around chunked",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding:   chunked  \r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Forwarded(2),
    ),
    (
        "TE: Chunked, upper case",
        "POST / HTTP/1.1\r\nHost: a.test\r\ntransfer-encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Forwarded(2),
    ),
    (
        "Transfer_Encoding with CL",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello",
        Forwarded(2),
    ),
    // Content-Length spellings.
    (
        "CL: +5",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: +5\r\n\r\nhello",
        Refused,
    ),
    (
        "CL: -1",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: -1\r\n\r\nhello",
        Refused,
    ),
    (
        "CL: 0x5",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0x5\r\n\r\nhello",
        Refused,
    ),
    (
        "CL: 5 5",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5 5\r\n\r\nhello",
        Refused,
    ),
    (
        "CL: 5, 5",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5, 5\r\n\r\nhello",
        Refused,
    ),
    (
        "CL twice, equal",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        Refused,
    ),
    (
        "CL twice, different",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 0\r\n\r\nhello",
        Refused,
    ),
    (
        "CL: space before the colon",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length : 5\r\n\r\nhello",
        Refused,
    ),
    (
        "CL: 2^64 + 5",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 18446744073709551621\r\n\r\nhello",
        Refused,
    ),
    (
        "CL: 005",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 005\r\n\r\nhello",
        Forwarded(2),
    ),
    (
        "CL: twenty leading zeros",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 000000000000000000005\r\n\r\nhello",
        Refused,
    ),
    (
        "CL: spaces and a tab around 5",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length:  5 \t\r\n\r\nhello",
        Refused,
    ),
    (
        "CL: spaces around 5",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length:   5  \r\n\r\nhello",
        Forwarded(2),
    ),
    (
        "CL on a GET",
        "GET / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello",
        Forwarded(2),
    ),
    (
        "CL body holding a request",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 40\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n",
        Forwarded(2),
    ),
    // Line ends and folding.
    (
        "obs-fold in another header",
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\n folded\r\n\r\n",
        Refused,
    ),
    (
        "bare LF line ends",
        "GET / HTTP/1.1\nHost: a.test\nX-A: 1\n\n",
        Forwarded(2),
    ),
    (
        "bare LF ending the head",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\nhello",
        Forwarded(2),
    ),
    (
        "bare CR in the head",
        "GET / HTTP/1.1\rHost: a.test\r\n\r\n",
        Refused,
    ),
    // Chunk sizes and the lines around chunk data.
    (
        "chunk extensions",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n1 ; q=\"x\"\r\n!\r\n0;last\r\n\r\n",
        Forwarded(2),
    ),
    (
        "chunk size with leading zeros",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n0005\r\nhello\r\n000\r\n\r\n",
        Forwarded(2),
    ),
    (
        "chunk size of 17 digits, leading zeros",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000005\r\nhello\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "chunk size overflowing 64 bits",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "chunk size of sixteen f",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "chunk size with a sign",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "chunk size 0x5",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "chunk size line ending in bare LF",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "chunk data ending in bare LF",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n",
        Refused,
    ),
    (
        "last chunk ending in bare LF",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\n\n",
        Refused,
    ),
    (
        "chunk data longer than its size",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "chunk holding a request",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n28\r\nGET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n\r\n0\r\n\r\n",
        Forwarded(2),
    ),
    (
        "chunked with a trailer",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        Forwarded(2),
    ),
    // HTTP/1.0.
    (
        "HTTP/1.0 with TE",
        "POST / HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "HTTP/1.0 with TE and CL",
        "POST / HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello",
        Refused,
    ),
    (
        "HTTP/1.0 with CL, then closed",
        "POST / HTTP/1.0\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello",
        Forwarded(1),
    ),
    (
        "plain pipelined GET",
        "GET /first HTTP/1.1\r\nHost: a.test\r\n\r\n",
        Forwarded(2),
    ),
];

/// nginx answering every request with its request line after reading its
/// body, and logging the request line, status, length and body it read.
const NGINX_FRAMING: &str = r#"
        access_log framing.log framing;
        location / { echo_read_request_body; echo "nginx: $request"; }
"#;

/// One request as nginx's access log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Logged {
    request: String,
    status: u16,
    body: String,
}

/// The access log's lines from the `skip`th on.
fn logged(nginx: &Nginx, skip: usize) -> Vec<Logged> {
    let text = std::fs::read(nginx.dir.path().join("framing.log")).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .lines()
        .skip(skip)
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a framing log line");
            Logged {
                request: v["request"].as_str().unwrap_or_default().to_string(),
                status: u16::try_from(v["status"].as_u64().unwrap_or_default()).unwrap(),
                body: v["body"].as_str().unwrap_or_default().to_string(),
            }
        })
        .collect()
}

/// The lines nginx logged since the `read`th, up to a request of the
/// test's own, sent now: nginx reads it after what came before, and logs
/// it once its connection is done with, which may be after it closed.
fn logged_until_now(nginx: &Nginx, read: &mut usize, marker: &str) -> Vec<Logged> {
    let line = format!("GET /sync/{marker} HTTP/1.1");
    let sync = format!("{line}\r\nHost: a.test\r\nConnection: close\r\n\r\n");
    assert!(answers(nginx.addr, sync.as_bytes()).is_some());
    let ends_with_sync = |lines: &[Logged]| lines.last().is_some_and(|l| l.request == line);
    wait_until("nginx logs the test's own request", || {
        ends_with_sync(&logged(nginx, *read))
    });
    let mut lines = logged(nginx, *read);
    *read += lines.len();
    lines.pop();
    lines
}

/// Sends `bytes` on a new connection, says no more will come, and reads
/// the answers until the peer closes. `None` when it kept the connection
/// open past the read timeout.
fn answers(addr: SocketAddr, bytes: &[u8]) -> Option<Vec<(u16, String)>> {
    let mut s = connect(addr);
    s.write_all(bytes).unwrap();
    let _ = s.shutdown(Shutdown::Write);
    let (mut buf, mut answers) = (Vec::new(), Vec::new());
    while let Some(r) = read_response(&mut s, &mut buf) {
        answers.push((r.status, r.body));
    }
    match s.read(&mut [0]) {
        Ok(0) => Some(answers),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Some(answers),
        _ => None,
    }
}

/// A short account of what nginx made of bytes sent to it alone.
fn statuses(seen: &[Logged]) -> String {
    let all: Vec<String> = seen.iter().map(|l| l.status.to_string()).collect();
    if all.is_empty() {
        "nothing".to_string()
    } else {
        all.join(" ")
    }
}

#[test]
fn published_smuggling_variants_are_refused_or_framed_as_nginx_frames_them() {
    let nginx = Nginx::start(NGINX_FRAMING);
    // No pooled upstream connections: bytes one row left at nginx, were
    // there any, cannot be taken for the next row's.
    let config = nginx.behind_proxy().replace(
        "    endpoints:",
        "    max_idle_per_endpoint: 0\n    endpoints:",
    );
    let proxy = Proxy::start(&config);
    let (mut read, mut failures, mut table) = (0, Vec::new(), Vec::new());
    for (i, &(name, bytes, expected)) in CASES.iter().enumerate() {
        let bytes = [bytes, SECOND].concat();

        // Through the proxy, then to nginx alone. nginx may close a
        // connection before logging its last request (lingering close), so
        // each time a request of the test's own marks the end.
        let through = answers(proxy.http, bytes.as_bytes());
        let behind = logged_until_now(&nginx, &mut read, &format!("{i}/proxy"));
        let alone_answers = answers(nginx.addr, bytes.as_bytes());
        let alone = logged_until_now(&nginx, &mut read, &format!("{i}/alone"));

        let mut fail = |why: String| failures.push(format!("{name}: {why}"));
        let Some(through) = through else {
            fail("the proxy kept the connection open".into());
            continue;
        };
        if alone_answers.is_none() {
            fail("nginx alone kept the connection open".into());
        }
        let from_nginx: Vec<&str> = through
            .iter()
            .filter_map(|(_, body)| body.strip_prefix("nginx: "))
            .map(str::trim_end)
            .collect();
        let own: Vec<u16> = through
            .iter()
            .filter(|(_, body)| !body.starts_with("nginx: "))
            .map(|&(status, _)| status)
            .collect();
        let got = match (from_nginx.len(), own.as_slice()) {
            (0, &[status]) if status >= 400 => Some(Refused),
            (n, []) => Some(Forwarded(n)),
            _ => None,
        };
        if got != Some(expected) {
            fail(format!("expected {expected:?}, the client got {through:?}"));
        }
        // Every request nginx read through the proxy, and only those, was
        // answered to the client, in order.
        let requests: Vec<&str> = behind.iter().map(|l| l.request.as_str()).collect();
        if requests != from_nginx || behind.iter().any(|l| l.status != 200) {
            fail(format!(
                "nginx read {behind:?} but the client got {through:?}"
            ));
        }
        // Whatever the proxy forwards, nginx alone takes too, as the same
        // requests with the same bodies: the two agree on where every
        // request ends.
        let nginx_accepts = !alone.is_empty() && alone.iter().all(|l| l.status < 400);
        let same = |a: &[Logged], b: &[Logged]| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(a, b)| a.request == b.request && a.body == b.body)
        };
        if got != Some(Refused) && !(nginx_accepts && same(&alone, &behind)) {
            fail(format!(
                "nginx alone read {alone:?}, through the proxy {behind:?}"
            ));
        }
        table.push(format!(
            "{name:<40} {:<14} nginx alone: {}",
            format!("{expected:?}"),
            statuses(&alone)
        ));
    }
    eprintln!("{}", table.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
