//! Logs, metrics and the admin HTTP server every process runs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::{Metric, Registry, Unit};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument as _;
use tracing_subscriber::EnvFilter;

/// Content type of the OpenMetrics text exposition served on `/metrics`.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
const JSON_CONTENT_TYPE: &str = "application/json";

/// Admin responses are small and computed synchronously, so a connection
/// still busy after this long on shutdown is a stuck client, not a slow answer.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Accept errors are mostly transient (a peer gone before accept, out of file
/// descriptors); pausing keeps the loop from spinning while they last.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The admin server's address could not be bound.
    #[error("cannot listen on admin address {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },
}

/// Installs the process's log subscriber: human-readable lines on stderr,
/// filtered by `RUST_LOG` or else by `default_directive` (e.g. `"info"`).
///
/// Later calls are no-ops, so tests and binaries may both call it.
pub fn init_tracing(default_directive: &str) {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|dirs| !dirs.trim().is_empty());
    // A typo in RUST_LOG must not silence the process; fall back and say so
    // once the subscriber can carry the warning.
    let (filter, rejected) = match from_env.map(|dirs| (EnvFilter::try_new(&dirs), dirs)) {
        Some((Ok(filter), _)) => (filter, None),
        Some((Err(err), dirs)) => (EnvFilter::new(default_directive), Some((dirs, err))),
        None => (EnvFilter::new(default_directive), None),
    };
    let installed = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .try_init()
        .is_ok();
    if let (true, Some((dirs, err))) = (installed, rejected) {
        tracing::warn!(
            rust_log = %dirs,
            %err,
            "ignoring invalid RUST_LOG, using {default_directive:?}"
        );
    }
}

/// Lets a repeated warning through at most once per period and counts the
/// ones it held back, so a failure that lasts is reported without
/// flooding the log.
#[derive(Debug, Clone)]
pub struct Throttle {
    period: Duration,
    last: Option<std::time::Instant>,
    held_back: u64,
}

impl Throttle {
    /// At most one occurrence logged per `period`.
    pub const fn new(period: Duration) -> Self {
        Self {
            period,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(n)` when this occurrence is to be logged, `n` being how many
    /// were held back since the last one logged; `None` to keep quiet.
    pub fn allow(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.period)
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }

    /// Ends the run (the failure is over): the next occurrence is logged
    /// at once. Returns how many were held back since the last one logged.
    pub fn reset(&mut self) -> u64 {
        self.last = None;
        std::mem::take(&mut self.held_back)
    }
}

/// A handle on the process's metric registry; clones share it.
///
/// Each component takes its own handle with [`Metrics::registry_with_prefix`]
/// so its metric names cannot collide with another component's.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    prefix: Option<String>,
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle on the same registry whose metric names start with `prefix_`
    /// (nested under this handle's own prefix, if any).
    pub fn registry_with_prefix(&self, prefix: &str) -> Self {
        Self {
            registry: Arc::clone(&self.registry),
            prefix: Some(self.full_name(prefix)),
        }
    }

    /// Registers `metric` (keep a clone to update it); `help` gets a full stop
    /// appended and counters get `_total`, so give neither.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.lock().register(self.full_name(name), help, metric);
    }

    /// Like [`Metrics::register`], with a unit appended to the name (`_seconds`).
    pub fn register_with_unit(&self, name: &str, help: &str, unit: Unit, metric: impl Metric) {
        self.lock()
            .register_with_unit(self.full_name(name), help, unit, metric);
    }

    /// Renders every metric of the registry in the OpenMetrics text format.
    ///
    /// Fails only if a metric's own encoding does.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.lock())?;
        Ok(text)
    }

    fn full_name(&self, name: &str) -> String {
        match &self.prefix {
            Some(prefix) => format!("{prefix}_{name}"),
            None => name.to_string(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // The registry is only appended to, so a panic while holding the lock
        // cannot leave it half-updated.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What an extra admin route answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminResponse {
    /// The HTTP status.
    pub status: StatusCode,
    /// The `Content-Type` header.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl AdminResponse {
    /// A `200 OK` JSON body.
    pub fn json(body: impl Into<String>) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: JSON_CONTENT_TYPE,
            body: body.into(),
        }
    }

    /// A plain-text body with the given status.
    pub fn text(status: StatusCode, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: TEXT_CONTENT_TYPE,
            body: body.into(),
        }
    }
}

type HealthCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;
type RouteHandler = Arc<dyn Fn() -> AdminResponse + Send + Sync>;

/// What the admin server serves: `/metrics`, `/healthz` and a component's extra routes.
#[derive(Clone)]
pub struct Admin {
    metrics: Metrics,
    health: HealthCheck,
    routes: HashMap<String, RouteHandler>,
}

impl Admin {
    /// Serves `metrics`, healthy until [`Admin::health`] says otherwise.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            health: Arc::new(|| Ok(())),
            routes: HashMap::new(),
        }
    }

    /// Sets the `/healthz` check: `Ok` answers 200 "ok", `Err(reason)` 503 with the reason.
    pub fn health(
        mut self,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.health = Arc::new(check);
        self
    }

    /// Adds a `GET` route such as `/routes`.
    ///
    /// # Panics
    ///
    /// If `path` does not start with `/` or is `/metrics` or `/healthz`,
    /// which would never be reached.
    #[track_caller]
    pub fn route(
        mut self,
        path: &str,
        handler: impl Fn() -> AdminResponse + Send + Sync + 'static,
    ) -> Self {
        assert!(
            path.starts_with('/') && path != "/metrics" && path != "/healthz",
            "admin route {path:?} must start with / and not shadow /metrics or /healthz"
        );
        self.routes.insert(path.to_string(), Arc::new(handler));
        self
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        let known = matches!(path, "/metrics" | "/healthz") || self.routes.contains_key(path);
        if !known {
            return reply(AdminResponse::text(StatusCode::NOT_FOUND, "not found\n"));
        }
        if req.method() != Method::GET {
            let mut response = reply(AdminResponse::text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET is allowed\n",
            ));
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET"));
            return response;
        }
        reply(match path {
            "/metrics" => match self.metrics.encode() {
                Ok(body) => AdminResponse {
                    status: StatusCode::OK,
                    content_type: OPENMETRICS_CONTENT_TYPE,
                    body,
                },
                Err(err) => {
                    tracing::error!(%err, "cannot encode metrics");
                    AdminResponse::text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "cannot encode metrics\n",
                    )
                }
            },
            "/healthz" => match (self.health)() {
                Ok(()) => AdminResponse::text(StatusCode::OK, "ok\n"),
                Err(reason) => AdminResponse::text(StatusCode::SERVICE_UNAVAILABLE, reason + "\n"),
            },
            _ => (self.routes[path])(),
        })
    }
}

fn reply(answer: AdminResponse) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() = answer.status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(answer.content_type));
    response
}

/// Binds the admin server's address.
pub async fn bind_admin(addr: SocketAddr) -> Result<TcpListener, TelemetryError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| TelemetryError::Bind { addr, source })
}

/// Serves `admin` on `listener` until `shutdown` resolves, then stops
/// accepting and gives open connections a few seconds to finish.
///
/// Accept errors are logged and retried rather than returned: losing the
/// admin port to a transient error would hide a process that still works.
pub async fn serve_admin(listener: TcpListener, admin: Admin, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = watch::channel(());
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let span = tracing::debug_span!("admin_connection", %peer);
                    connections.spawn(
                        serve_connection(stream, admin.clone(), stop_rx.clone()).instrument(span),
                    );
                }
                Err(err) => {
                    tracing::warn!(%err, "admin server cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                log_join(joined);
            }
        }
    }
    drop(listener);
    // Wakes every connection; each finishes its current response and closes.
    drop(stop_tx);
    let drain = async {
        while let Some(joined) = connections.join_next().await {
            log_join(joined);
        }
    };
    if tokio::time::timeout(DRAIN_GRACE, drain).await.is_err() {
        tracing::debug!(
            open = connections.len(),
            "closing admin connections still open after the grace period"
        );
    }
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(err) = joined {
        tracing::error!(%err, "admin connection task failed");
    }
}

async fn serve_connection(stream: TcpStream, admin: Admin, mut stop: watch::Receiver<()>) {
    let service = service_fn(move |req| {
        let response = admin.respond(&req);
        async move { Ok::<_, Infallible>(response) }
    });
    // The timer enables hyper's default header-read timeout, so a client that
    // connects and never sends a request does not hold the connection open.
    let mut conn = pin!(
        http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(stream), service)
    );
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%err, "admin connection ended with an error");
    }
}

/// Resolves when the process receives SIGINT or SIGTERM: the start of the one
/// shutdown path (stop accepting, then drain with a grace period).
pub async fn shutdown_signal() {
    let name = tokio::select! {
        name = wait_for(SignalKind::terminate(), "SIGTERM") => name,
        name = wait_for(SignalKind::interrupt(), "SIGINT") => name,
    };
    tracing::info!(signal = name, "shutting down");
}

async fn wait_for(kind: SignalKind, name: &'static str) -> &'static str {
    match signal(kind) {
        Ok(mut stream) => {
            stream.recv().await;
            name
        }
        Err(err) => {
            // Without a handler the signal keeps its default action, so the
            // process still stops, only without draining.
            tracing::error!(%err, signal = name, "cannot handle signal; it will stop the process abruptly");
            std::future::pending().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::sync::oneshot;

    struct Server {
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start(admin: Admin) -> Server {
        let listener = bind_admin(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve_admin(listener, admin, async {
            let _ = stopped.await;
        }));
        Server { addr, stop, task }
    }

    /// Sends one request and returns the status code, headers and body.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).await.expect("connects");
        let head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.expect("writes");
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.expect("reads");
        let (head, body) = raw.split_once("\r\n\r\n").expect("complete response");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("status line");
        (status, head.to_ascii_lowercase(), body.to_string())
    }

    #[tokio::test]
    async fn serves_prefixed_metrics() {
        let metrics = Metrics::new();
        let requests = Counter::<u64>::default();
        metrics.registry_with_prefix("orca_ingress").register(
            "requests",
            "Requests proxied",
            requests.clone(),
        );
        requests.inc_by(3);
        let server = start(Admin::new(metrics)).await;

        let (status, head, body) = request(server.addr, "GET", "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.contains(&format!("content-type: {OPENMETRICS_CONTENT_TYPE}")),
            "{head}"
        );
        assert!(
            body.contains("# HELP orca_ingress_requests Requests proxied.\n"),
            "{body}"
        );
        assert!(body.contains("\norca_ingress_requests_total 3\n"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
    }

    #[tokio::test]
    async fn nested_prefixes_join_with_underscores() {
        let metrics = Metrics::new();
        let node = metrics
            .registry_with_prefix("orca")
            .registry_with_prefix("node");
        node.register_with_unit(
            "sync_duration",
            "Sync time",
            Unit::Seconds,
            Counter::<f64>::default(),
        );
        let text = metrics.encode().expect("encodes");
        assert!(
            text.contains("# TYPE orca_node_sync_duration_seconds counter"),
            "{text}"
        );
    }

    #[test]
    fn throttle_lets_one_through_per_period_and_counts_the_rest() {
        let mut throttle = Throttle::new(Duration::from_secs(3600));
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.reset(), 2);
        assert_eq!(throttle.allow(), Some(0), "logged at once after a reset");
        let mut open = Throttle::new(Duration::ZERO);
        assert_eq!((open.allow(), open.allow()), (Some(0), Some(0)));
    }

    #[tokio::test]
    async fn healthz_reports_check() {
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let check = Arc::clone(&healthy);
        let admin = Admin::new(Metrics::new()).health(move || {
            if check.load(std::sync::atomic::Ordering::Relaxed) {
                Ok(())
            } else {
                Err("etcd unreachable".to_string())
            }
        });
        let server = start(admin).await;

        let (status, _, body) = request(server.addr, "GET", "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));

        healthy.store(false, std::sync::atomic::Ordering::Relaxed);
        let (status, _, body) = request(server.addr, "GET", "/healthz").await;
        assert_eq!((status, body.as_str()), (503, "etcd unreachable\n"));
    }

    #[tokio::test]
    async fn extra_route_unknown_path_and_wrong_method() {
        let admin =
            Admin::new(Metrics::new()).route("/routes", || AdminResponse::json(r#"{"routes":[]}"#));
        let server = start(admin).await;

        let (status, head, body) = request(server.addr, "GET", "/routes?verbose=1").await;
        assert_eq!((status, body.as_str()), (200, r#"{"routes":[]}"#));
        assert!(head.contains("content-type: application/json"), "{head}");

        let (status, _, _) = request(server.addr, "GET", "/nope").await;
        assert_eq!(status, 404);

        let (status, head, _) = request(server.addr, "POST", "/routes").await;
        assert_eq!(status, 405);
        assert!(head.contains("allow: get"), "{head}");
    }

    #[test]
    #[should_panic(expected = "shadow /metrics")]
    fn route_cannot_shadow_builtin() {
        let _ = Admin::new(Metrics::new()).route("/metrics", || AdminResponse::json(""));
    }

    #[tokio::test]
    async fn shutdown_stops_serving_and_closes_idle_connections() {
        let server = start(Admin::new(Metrics::new())).await;
        // A kept-alive idle connection must not hold the server open.
        let mut idle = TcpStream::connect(server.addr).await.expect("connects");
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .expect("writes");
        let mut buf = [0u8; 512];
        let n = idle.read(&mut buf).await.expect("reads");
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );

        server.stop.send(()).expect("server running");
        tokio::time::timeout(Duration::from_secs(2), server.task)
            .await
            .expect("serve returns promptly")
            .expect("serve did not panic");
        assert!(
            TcpStream::connect(server.addr).await.is_err(),
            "listener closed"
        );
        assert_eq!(
            idle.read(&mut buf).await.expect("reads"),
            0,
            "idle connection closed"
        );
    }

    #[tokio::test]
    async fn bind_error_names_address() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = taken.local_addr().expect("local addr");
        let err = bind_admin(addr).await.unwrap_err().to_string();
        assert!(err.contains(&addr.to_string()), "{err}");
    }

    #[tokio::test]
    async fn shutdown_signal_resolves_on_sigterm() {
        let mut signalled = pin!(shutdown_signal());
        // Polling once installs the handlers; before that SIGTERM would kill the test process.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut signalled)
                .await
                .is_err()
        );
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("runs kill");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(2), signalled)
            .await
            .expect("resolves on SIGTERM");
    }

    #[test]
    fn init_tracing_twice_is_harmless() {
        init_tracing("info");
        init_tracing("debug");
    }
}
