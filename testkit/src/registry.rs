//! A real container registry (Debian's `docker-registry`) and test images:
//! built from Debian's `busybox-static` with `umoci`, pushed with `skopeo`.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::free_port;

/// How long the registry may take to answer `GET /v2/` after starting.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The file every test image's first layer has and its whiteout layer
/// deletes.
pub const FIRST_LAYER_FILE: &str = "etc/orca-layer-1";
/// The file a whiteout layer adds.
pub const SECOND_LAYER_FILE: &str = "etc/orca-layer-2";

/// The user of a registry started with [`Registry::start_with_password`].
pub const USERNAME: &str = "orca";
/// [`USERNAME`]'s password.
pub const PASSWORD: &str = "orca-secret";
/// The htpasswd line for them (bcrypt, cost 4 to keep tests quick).
const HTPASSWD: &str = "orca:$2b$04$6Tes0vT7czY0Znm62AvXEe7PiA1LG7CPWA4cTGoIsVhryxDNDDjea\n";
/// `Authorization` for them: `base64(orca:orca-secret)`.
const BASIC: &str = "Basic b3JjYTpvcmNhLXNlY3JldA==";

/// A real registry on a free loopback port with a temporary storage dir;
/// killed and its storage removed on drop.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    /// Whether clients must log in as [`USERNAME`].
    password: bool,
    /// Whether the OCI layout with the base images exists yet; held while
    /// pushing, as umoci edits the layout in place.
    layout: Mutex<bool>,
}

/// What to push: the image config and the shape of the image.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    /// `Entrypoint`; left unset when empty.
    pub entrypoint: Vec<String>,
    /// `Cmd`; left unset when empty.
    pub cmd: Vec<String>,
    /// `Env`, `NAME=value`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// Adds a second layer that deletes [`FIRST_LAYER_FILE`] (a whiteout)
    /// and adds [`SECOND_LAYER_FILE`].
    pub whiteout_layer: bool,
    /// Pushes layers zstd-compressed (OCI manifest) instead of gzip.
    pub zstd: bool,
    /// Pushes a Docker schema 2 manifest instead of an OCI one.
    pub docker_schema2: bool,
}

fn require(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: this test needs Debian's {package} (install Debian's {package})"
    );
}

/// Runs `command`, panicking with its output when it fails.
fn run(command: &mut Command) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("running {command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Registry {
    /// Starts the registry and waits until `GET /v2/` answers.
    pub fn start() -> Self {
        Self::spawn(false)
    }

    /// Starts a registry that answers only [`USERNAME`] with [`PASSWORD`]
    /// (HTTP basic authentication).
    pub fn start_with_password() -> Self {
        Self::spawn(true)
    }

    fn spawn(password: bool) -> Self {
        require("/usr/bin/docker-registry", "docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("orca-registry-")
            .tempdir()
            .expect("creating a temporary registry dir");
        let port = free_port();
        let config = dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: orca-test\n",
            dir.path().join("storage").display()
        );
        if password {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, HTPASSWD).expect("writing the htpasswd file");
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: orca\n    path: {}\n",
                htpasswd.display()
            ));
        }
        std::fs::write(&config, yaml).expect("writing the registry config");
        let log_path = dir.path().join("registry.log");
        let log = File::create(&log_path).expect("creating the registry log");
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the log handle"))
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let mut registry = Self {
            child,
            dir,
            port,
            password,
            layout: Mutex::new(false),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = registry.child.try_wait() {
                panic!(
                    "docker-registry exited at start ({status}); its log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            if registry.get("/v2/", "").starts_with("HTTP/1.1 200") {
                return registry;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        registry.kill();
        panic!(
            "docker-registry did not answer within {START_TIMEOUT:?}; its log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The manifest `repo_tag` names, as the registry serves it (OCI or
    /// Docker schema 2), or its error body.
    pub fn manifest(&self, repo_tag: &str) -> String {
        let (repo, tag) = repo_tag.rsplit_once(':').unwrap_or((repo_tag, "latest"));
        let response = self.get(
            &format!("/v2/{repo}/manifests/{tag}"),
            "Accept: application/vnd.oci.image.manifest.v1+json, \
             application/vnd.docker.distribution.manifest.v2+json\r\n",
        );
        response
            .split_once("\r\n\r\n")
            .map_or(response.clone(), |(_, body)| body.to_string())
    }

    /// Builds a busybox image configured as `spec` says and pushes it as
    /// `{addr}/{repo_tag}`; returns that reference. The root file system
    /// has `/bin/busybox`, a link to it for every applet, and
    /// [`FIRST_LAYER_FILE`].
    pub fn push_busybox(&self, repo_tag: &str, spec: &ImageSpec) -> String {
        require("/usr/bin/umoci", "umoci");
        require("/usr/bin/skopeo", "skopeo");
        require("/usr/bin/busybox", "busybox-static");
        let mut built = self.layout.lock().unwrap_or_else(|e| e.into_inner());
        let layout = self.dir.path().join("oci");
        if !*built {
            self.build_base(&layout);
            *built = true;
        }
        let base = if spec.whiteout_layer {
            "base-wh"
        } else {
            "base"
        };
        // umoci gives the configured image a tag of its own in the layout.
        let tag = format!("push-{}", repo_tag.replace(['/', ':'], "-"));
        let mut config = Command::new("umoci");
        config
            .arg("config")
            .arg("--image")
            .arg(format!("{}:{base}", layout.display()))
            .arg("--tag")
            .arg(&tag);
        for arg in &spec.entrypoint {
            config.arg("--config.entrypoint").arg(arg);
        }
        for arg in &spec.cmd {
            config.arg("--config.cmd").arg(arg);
        }
        for env in &spec.env {
            config.arg("--config.env").arg(env);
        }
        if let Some(dir) = &spec.working_dir {
            config.arg("--config.workingdir").arg(dir);
        }
        run(&mut config);
        let reference = format!("{}/{repo_tag}", self.addr());
        let mut copy = Command::new("skopeo");
        copy.args([
            "copy",
            "--quiet",
            "--insecure-policy",
            "--dest-tls-verify=false",
        ]);
        if self.password {
            copy.arg(format!("--dest-creds={USERNAME}:{PASSWORD}"));
        }
        if spec.zstd {
            copy.args(["--dest-compress-format", "zstd"]);
        }
        if spec.docker_schema2 {
            copy.args(["--format", "v2s2"]);
        }
        copy.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{reference}"))
            // skopeo's blob cache lives under $HOME; keep it with the registry.
            .env("HOME", self.dir.path());
        run(&mut copy);
        reference
    }

    /// An OCI layout with `base` (busybox and [`FIRST_LAYER_FILE`]) and
    /// `base-wh` (a second layer deleting that file).
    fn build_base(&self, layout: &Path) {
        let image = |tag: &str| format!("{}:{tag}", layout.display());
        run(Command::new("umoci")
            .arg("init")
            .arg("--layout")
            .arg(layout));
        run(Command::new("umoci")
            .args(["new", "--image"])
            .arg(image("base")));
        let bundle = self.dir.path().join("bundle");
        run(Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(image("base"))
            .arg(&bundle));
        let rootfs = bundle.join("rootfs");
        let bin = rootfs.join("bin");
        std::fs::create_dir_all(&bin).expect("creating bin");
        std::fs::create_dir_all(rootfs.join("etc")).expect("creating etc");
        std::fs::copy("/usr/bin/busybox", bin.join("busybox")).expect("copying busybox");
        let list = Command::new("/usr/bin/busybox")
            .arg("--list")
            .output()
            .expect("listing busybox applets");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" && !applet.is_empty() {
                std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("linking an applet");
            }
        }
        std::fs::write(rootfs.join(FIRST_LAYER_FILE), "first layer\n").expect("writing a file");
        run(Command::new("umoci")
            .args(["repack", "--image"])
            .arg(image("base"))
            .arg(&bundle));

        let bundle = self.dir.path().join("bundle-wh");
        run(Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(image("base"))
            .arg(&bundle));
        let rootfs = bundle.join("rootfs");
        std::fs::remove_file(rootfs.join(FIRST_LAYER_FILE)).expect("deleting a file");
        std::fs::write(rootfs.join(SECOND_LAYER_FILE), "second layer\n").expect("writing a file");
        run(Command::new("umoci")
            .args(["repack", "--image"])
            .arg(image("base-wh"))
            .arg(&bundle));
    }

    /// The raw answer to `GET path` with `headers` (each ending in CRLF);
    /// empty when the registry cannot be reached.
    fn get(&self, path: &str, headers: &str) -> String {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return String::new();
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let authorization = if self.password {
            format!("Authorization: {BASIC}\r\n")
        } else {
            String::new()
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\n{authorization}{headers}Connection: close\r\n\r\n",
            self.addr()
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return String::new();
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
    }

    fn kill(&mut self) {
        // The process may already have exited; either way it is gone.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A second registry process serving a [`Registry`]'s images from another
/// network namespace (a cluster's, whose nodes cannot reach the test's
/// loopback); killed on drop.
pub struct Mirror {
    child: Child,
}

impl Registry {
    /// Serves this registry's storage at `addr` (`ip:port`) inside the
    /// network namespace at `netns` (through `nsenter`), once it answers
    /// `GET /v2/` there. Push before: the mirror reads the same files.
    pub fn serve_in(&self, netns: &Path, addr: &str) -> Mirror {
        let config = self.dir.path().join(format!("mirror-{addr}.yml"));
        let yaml = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n  secret: orca-test\n",
            self.dir.path().join("storage").display()
        );
        std::fs::write(&config, yaml).expect("writing the mirror's config");
        let log_path = self.dir.path().join(format!("mirror-{addr}.log"));
        let log = File::create(&log_path).expect("creating the mirror's log");
        let ns = format!("--net={}", netns.display());
        let mut child = Command::new("nsenter")
            .arg(&ns)
            .args(["/usr/bin/docker-registry", "serve"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the log handle"))
            .stderr(log)
            .spawn()
            .expect("starting docker-registry with nsenter");
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the mirror exited at start ({status}); its log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            let answered = Command::new("nsenter")
                .arg(&ns)
                .args(["curl", "-sf", "-o", "/dev/null"])
                .arg(format!("http://{addr}/v2/"))
                .status()
                .is_ok_and(|s| s.success());
            if answered {
                return Mirror { child };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the mirror at {addr} did not answer within {START_TIMEOUT:?}");
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
