//! The access log: one JSON object per request, appended to a file (or
//! stdout). Lines are buffered and flushed about once a second, and on
//! shutdown, so logging never costs a syscall per request.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// Client address.
    pub client: IpAddr,
    /// Request method.
    pub method: &'a str,
    /// Host the request was for.
    pub host: &'a str,
    /// Request target (path and query).
    pub target: &'a str,
    /// Response status.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// Time from request head to the end of the response.
    #[serde(serialize_with = "millis")]
    pub duration: Duration,
    /// Route that matched (`-` when none).
    pub route: &'a str,
    /// Upstream that served the request.
    pub upstream: Option<&'a str>,
    /// Endpoint that served the request.
    pub endpoint: Option<SocketAddr>,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e3)
}

/// Where access log lines go.
pub struct AccessLog {
    out: Mutex<BufWriter<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLog")
    }
}

impl AccessLog {
    /// Opens `path` for appending (`-` is stdout).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let sink: Box<dyn Write + Send> = if path == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            Box::new(File::options().create(true).append(true).open(path)?)
        };
        Ok(Self {
            out: Mutex::new(BufWriter::with_capacity(64 * 1024, sink)),
        })
    }

    /// Appends one line.
    pub fn write(&self, entry: &Entry<'_>) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // A full disk must not stop the proxy; the line is lost, not the request.
        if serde_json::to_writer(&mut *out, entry).is_ok() {
            let _ = out.write_all(b"\n");
        }
    }

    /// Writes buffered lines out.
    pub fn flush(&self) {
        let _ = self.out.lock().unwrap_or_else(|e| e.into_inner()).flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&path).unwrap();
        log.write(&Entry {
            client: "127.0.0.1".parse().unwrap(),
            method: "GET",
            host: "example.com",
            target: "/a?b=\"c\"",
            status: 200,
            bytes: 2,
            duration: Duration::from_micros(1500),
            route: "routes[0]",
            upstream: Some("api"),
            endpoint: Some("127.0.0.1:9001".parse().unwrap()),
        });
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["target"], "/a?b=\"c\"");
        assert_eq!(v["duration"], 1.5);
        assert_eq!(v["endpoint"], "127.0.0.1:9001");
    }
}
