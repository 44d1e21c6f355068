//! Network namespaces a test creates and deletes, so its traffic and its
//! nftables tables never touch the host's. Needs root and iproute2; a test
//! without them fails saying so.

use std::os::fd::AsFd;
use std::process::{Command, Output};

/// Runs `cmd` with `args`, failing the test with its error output if it
/// fails; its standard output.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is required by this test: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails the test unless it runs as root; `what` says what needs it.
pub fn require_root(what: &str) {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        });
    assert_eq!(uid.as_deref(), Some("0"), "{what} need root");
}

/// A network namespace with its loopback up, deleted on drop.
pub struct Netns(String);

impl Netns {
    /// Creates the namespace `name`, replacing one a killed run left.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Its path, as `--netns` and `setns` take it.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    /// Runs `ip -n NAME args`, failing the test if it fails.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Links this namespace to `peer` by a veth pair: `name` here,
    /// `peer_name` there.
    pub fn veth(&self, name: &str, peer: &Netns, peer_name: &str) {
        self.ip(&[
            "link", "add", name, "type", "veth", "peer", "name", peer_name, "netns", &peer.0,
        ]);
    }

    /// Runs `cmd` inside the namespace; its output, whatever its status.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(cmd)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {}: {e}", cmd.join(" ")))
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .expect("thread in namespace")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) {
    let ns = std::fs::File::open(path).unwrap_or_else(|e| panic!("namespace {path}: {e}"));
    rustix::thread::move_into_link_name_space(
        ns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
}
