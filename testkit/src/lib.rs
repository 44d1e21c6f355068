//! Test support: real services started for a test and stopped with it.
//!
//! [`Etcd`] runs the real `etcd` server (Debian's `etcd-server`) on free
//! loopback ports with a temporary data directory. Tests never replace etcd
//! with an in-memory map. [`Relay`] lets a test cut a client off a server
//! that stays up. [`netns`] gives tests network namespaces of their
//! own. [`registry`] runs a real container registry (Debian's
//! `docker-registry`) and pushes busybox test images to it.

pub mod netns;
pub mod registry;
mod relay;

pub use relay::Relay;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A real etcd server for one test; killed and its data removed on drop.
pub struct Etcd {
    child: Option<Child>,
    data: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

/// How long etcd may take to answer its health check after starting.
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

fn etcd_binary() -> PathBuf {
    let candidates = [
        std::env::var_os("ORCA_ETCD_BIN").map(PathBuf::from),
        Some(PathBuf::from("/usr/bin/etcd")),
        Some(PathBuf::from("/usr/local/bin/etcd")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "etcd is missing: this test needs the real etcd server \
                 (apt-get install etcd-server, or set ORCA_ETCD_BIN)"
            )
        })
}

impl Etcd {
    /// Starts etcd on free loopback ports and waits until it is healthy.
    pub fn start() -> Self {
        let data = tempfile::Builder::new()
            .prefix("orca-etcd-")
            .tempdir()
            .expect("creating a temporary etcd data dir");
        let mut etcd = Self {
            child: None,
            data,
            client_port: free_port(),
            peer_port: free_port(),
        };
        for attempt in 0.. {
            match etcd.try_spawn() {
                Ok(()) => break,
                // Another process took a port between `free_port` and
                // etcd's bind: new ports, and a data dir etcd never used.
                Err(why) if attempt < 5 && why.contains("address already in use") => {
                    let _ = std::fs::remove_dir_all(etcd.data.path().join("data"));
                    etcd.client_port = free_port();
                    etcd.peer_port = free_port();
                }
                Err(why) => panic!("{why}"),
            }
        }
        etcd
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The client address, for a [`Relay`] in front of it.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.client_port))
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Kills etcd (SIGKILL) and waits for it to exit; the data is kept.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The process may already have exited; either way it is gone.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data dir after [`Etcd::kill`].
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        if let Err(why) = self.try_spawn() {
            panic!("{why}");
        }
    }

    /// Starts etcd and waits until it is healthy; why it did not.
    fn try_spawn(&mut self) -> Result<(), String> {
        let log_path = self.data.path().join("etcd.log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("opening the etcd log");
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(etcd_binary())
            .arg("--name=orca-test")
            .arg(format!(
                "--data-dir={}",
                self.data.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=orca-test={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the log handle"))
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "etcd exited at start ({status}); its log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                ));
            }
            if self.healthy() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "etcd did not become healthy within {START_TIMEOUT:?}; its log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        ))
    }

    /// Whether etcd answers `GET /health` with `"health":"true"`.
    fn healthy(&self) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.client_port));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.contains("\"health\":\"true\"")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nothing listens on, for unreachable-endpoint tests.
pub fn closed_port() -> u16 {
    free_port()
}
