//! Running the ingress proxy: worker threads, listeners, reload, health
//! checks, admin and shutdown.
//!
//! Each worker is an OS thread with a single-threaded runtime and its own
//! `SO_REUSEPORT` socket per listener, so the kernel spreads connections over
//! workers and a request never crosses threads. Routes, certificates and
//! limits are swapped in whole on reload; open connections keep going.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use orca_core::config::{self, ConfigError};
use orca_core::telemetry::{self, Admin, AdminResponse, Metrics};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::LazyConfigAcceptor;

use orca_core::store::Store;

use super::access_log::AccessLog;
use super::config::IngressConfig;
use super::h1_server;
use super::metrics::ProxyMetrics;
use super::pool::Keep;
use super::routes::{Route, RouteTable};
use super::tls::{self, Certificates, Resolver};
use super::upstream::{Endpoint, Settings, Upstream};
use super::worker::{Shared, Worker};
use super::{cluster, h2_server};

/// Why the proxy could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A certificate could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The admin server could not start.
    #[error(transparent)]
    Admin(#[from] telemetry::TelemetryError),
    /// The access log could not be opened.
    #[error("access log {path}: {source}")]
    AccessLog {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A worker thread could not be started.
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
}

/// Endpoints by (upstream, address), so their health survives reloads.
type EndpointRegistry = HashMap<(String, SocketAddr), Arc<Endpoint>>;

/// Builds the route table of `config`, reusing known endpoints.
pub fn build_routes(config: &IngressConfig, known: &mut EndpointRegistry) -> RouteTable {
    let mut next = EndpointRegistry::new();
    let upstreams: HashMap<&str, Arc<Upstream>> = config
        .upstreams
        .iter()
        .map(|u| {
            let endpoints = u
                .endpoints
                .iter()
                .map(|addr| {
                    let key = (u.name.clone(), *addr);
                    let e = known
                        .get(&key)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(Endpoint::new(*addr)));
                    next.insert(key, e.clone());
                    e
                })
                .collect();
            let settings = Settings {
                connect_timeout: u.connect_timeout.get(),
                request_timeout: u.request_timeout.get(),
                keep: Keep {
                    idle_timeout: u.idle_timeout.get(),
                    max_idle: u.max_idle_per_endpoint,
                },
                retries: u.retries.clone(),
                outlier: u.outlier.clone(),
                health_check: u.health_check.clone(),
                protocol: u.protocol,
            };
            (
                u.name.as_str(),
                Arc::new(Upstream::with_endpoints(&u.name, endpoints, u.lb, settings)),
            )
        })
        .collect();
    *known = next;
    let mut table = RouteTable::default();
    for r in &config.routes {
        let targets: Vec<(Arc<Upstream>, u32)> = match &r.upstream {
            Some(name) => vec![(upstreams[name.as_str()].clone(), 1)],
            None => r
                .upstreams
                .iter()
                .map(|w| (upstreams[w.name.as_str()].clone(), w.weight))
                .collect(),
        };
        let name = format!("{}{}", r.host.as_deref().unwrap_or("*"), r.path);
        let headers = r
            .headers
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        let route = Route::new(name, headers, targets, r.redirect_https);
        table.insert(r.host.as_deref(), &r.path, r.path_type, Arc::new(route));
    }
    table
}

/// The `/routes` admin view: the routes being served, whether they came
/// from the file or from the cluster, and the upstreams they send to.
fn routes_json(table: &RouteTable) -> String {
    let mut upstreams: Vec<&Arc<Upstream>> = Vec::new();
    let mut seen = HashSet::new();
    let routes: Vec<_> = table
        .routes()
        .iter()
        .map(|l| {
            let targets: Vec<_> = l
                .route
                .upstreams()
                .map(|(u, weight)| {
                    if seen.insert(Arc::as_ptr(u)) {
                        upstreams.push(u);
                    }
                    serde_json::json!({"name": &*u.name, "weight": weight})
                })
                .collect();
            let headers: Vec<_> = l
                .route
                .headers
                .iter()
                .map(|(name, value)| serde_json::json!({"name": name, "value": value}))
                .collect();
            serde_json::json!({
                "name": &*l.route.name,
                "host": l.host,
                "path": l.path,
                "path_type": l.path_type,
                "headers": headers,
                "upstreams": targets,
                "redirect_https": l.route.redirect_https,
            })
        })
        .collect();
    let upstreams: Vec<_> = upstreams
        .into_iter()
        .map(|u| {
            let endpoints: Vec<_> = u.endpoints().iter().map(|e| e.addr).collect();
            serde_json::json!({
                "name": &*u.name,
                "endpoints": endpoints,
                "lb": u.lb,
                "protocol": u.settings.protocol,
            })
        })
        .collect();
    serde_json::json!({
        "count": table.len(),
        "routes": routes,
        "upstreams": upstreams,
    })
    .to_string()
}

/// A running ingress proxy.
pub struct Ingress {
    shared: Arc<Shared>,
    config: IngressConfig,
    endpoints: EndpointRegistry,
    resolvers: HashMap<String, Arc<Resolver>>,
    health_checks: Vec<JoinHandle<()>>,
}

impl Ingress {
    fn new(config: IngressConfig, metrics: &Metrics) -> Result<Self, ServeError> {
        let mut endpoints = EndpointRegistry::new();
        let table = build_routes(&config, &mut endpoints);
        let shared = Arc::new(Shared {
            routes: ArcSwap::from_pointee(table),
            limits: ArcSwap::from_pointee(config.limits.clone()),
            metrics: ProxyMetrics::register(metrics),
            access_log: ArcSwapOption::empty(),
            open: Default::default(),
            draining: Default::default(),
            served: Default::default(),
        });
        let mut this = Self {
            shared,
            config: config.clone(),
            endpoints,
            resolvers: HashMap::new(),
            health_checks: Vec::new(),
        };
        for l in &config.listeners {
            if let Some(t) = &l.tls {
                let resolver = Arc::new(Resolver::new(Certificates::load(&t.certificates)?));
                this.resolvers.insert(l.name.clone(), resolver);
            }
        }
        this.open_access_log(&config)?;
        this.start_health_checks();
        Ok(this)
    }

    fn open_access_log(&self, config: &IngressConfig) -> Result<(), ServeError> {
        let log = match &config.access_log.path {
            Some(path) => Some(Arc::new(AccessLog::open(path).map_err(|source| {
                ServeError::AccessLog {
                    path: path.clone(),
                    source,
                }
            })?)),
            None => None,
        };
        if let Some(old) = self.shared.access_log.swap(log) {
            old.flush();
        }
        Ok(())
    }

    /// Applies a new configuration; on error nothing changes.
    pub fn reload(&mut self, config: IngressConfig) -> Result<(), ServeError> {
        // Load everything fallible first, so a bad certificate leaves the
        // running configuration whole.
        let mut certs = HashMap::new();
        for l in &config.listeners {
            if let Some(t) = &l.tls {
                certs.insert(l.name.clone(), Certificates::load(&t.certificates)?);
            }
        }
        let listeners = |c: &IngressConfig| {
            c.listeners
                .iter()
                .map(|l| (l.name.clone(), l.address, l.tls.is_some()))
                .collect::<Vec<_>>()
        };
        if listeners(&config) != listeners(&self.config) {
            tracing::warn!("listener changes take effect at the next restart");
        }
        self.open_access_log(&config)?;
        // In cluster mode the certificates follow the Secrets, not the file.
        for (name, c) in certs.into_iter().filter(|_| !config.cluster) {
            if let Some(resolver) = self.resolvers.get(&name) {
                resolver.replace(c);
            }
        }
        if !config.cluster {
            let table = build_routes(&config, &mut self.endpoints);
            self.shared.routes.store(Arc::new(table));
        }
        self.shared.limits.store(Arc::new(config.limits.clone()));
        self.config = config;
        self.start_health_checks();
        tracing::info!(
            routes = self.shared.routes.load().len(),
            "configuration reloaded"
        );
        Ok(())
    }

    fn start_health_checks(&mut self) {
        for task in self.health_checks.drain(..) {
            task.abort();
        }
        for u in &self.config.upstreams {
            let Some(hc) = u.health_check.clone() else {
                continue;
            };
            for addr in &u.endpoints {
                let endpoint = self.endpoints[&(u.name.clone(), *addr)].clone();
                self.health_checks
                    .push(tokio::spawn(health_check(endpoint, hc.clone())));
            }
        }
    }
}

/// Checks one endpoint forever with `GET path`; a 2xx answer is healthy.
async fn health_check(endpoint: Arc<Endpoint>, hc: super::config::HealthCheck) {
    let (mut passes, mut fails) = (0u32, 0u32);
    let mut ticker = tokio::time::interval(hc.interval.get());
    loop {
        ticker.tick().await;
        let ok = tokio::time::timeout(hc.timeout.get(), probe(endpoint.addr, &hc.path))
            .await
            .unwrap_or(false);
        if ok {
            (passes, fails) = (passes + 1, 0);
            if !endpoint.healthy() && passes >= hc.healthy_threshold {
                tracing::info!(endpoint = %endpoint.addr, "endpoint healthy again");
                endpoint.set_healthy(true);
            }
        } else {
            (passes, fails) = (0, fails + 1);
            if endpoint.healthy() && fails >= hc.unhealthy_threshold {
                tracing::warn!(endpoint = %endpoint.addr, "endpoint failed its health checks");
                endpoint.set_healthy(false);
            }
        }
    }
}

async fn probe(addr: SocketAddr, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: orca-health-check\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.is_ok() && head.starts_with(b"HTTP/1.") && head[9] == b'2'
}

fn bind_reuseport(addr: SocketAddr) -> Result<std::net::TcpListener, ServeError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| ServeError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_reuse_port(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(4096).map_err(err)?;
    Ok(socket.into())
}

/// One listener as a worker sees it.
struct WorkerListener {
    socket: std::net::TcpListener,
    tls: Option<Arc<ServerConfig>>,
}

fn worker_main(
    id: u64,
    shared: Arc<Shared>,
    listeners: Vec<WorkerListener>,
    draining: watch::Receiver<bool>,
    grace: Duration,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a worker runtime starts");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let worker = Rc::new(Worker::new(shared.clone(), id));
        let active = Rc::new(std::cell::Cell::new(0usize));
        let handshakes = Rc::new(Semaphore::new(1));
        let mut accepts = Vec::new();
        for l in listeners {
            let listener = TcpListener::from_std(l.socket).expect("a worker listener registers");
            accepts.push(tokio::task::spawn_local(accept_loop(
                worker.clone(),
                listener,
                l.tls,
                handshakes.clone(),
                draining.clone(),
                active.clone(),
            )));
        }
        let expiry = {
            let worker = worker.clone();
            tokio::task::spawn_local(async move {
                // Idle upstream connections close within a second of their
                // upstream's idle timeout. A second after a load stops each
                // worker drops its spare buffers and gives the process's
                // freed memory back (buffers, pooled connections and request
                // state of the burst), never while requests flow.
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let mut quiet = crate::memory::QuietAfterWork::default();
                loop {
                    tick.tick().await;
                    worker.pool.expire();
                    worker.h2.expire();
                    let served = worker.shared.served.load(Ordering::Relaxed);
                    if quiet.tick(served) {
                        worker.release_spares();
                        crate::memory::release_free_memory();
                    }
                }
            })
        };
        // The accept loops end when draining begins: then idle connections
        // close and busy ones finish their request.
        for a in accepts {
            let _ = a.await;
        }
        worker.start_draining();
        expiry.abort();
        let deadline = tokio::time::Instant::now() + grace;
        while active.get() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

async fn accept_loop(
    worker: Rc<Worker>,
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    handshakes: Rc<Semaphore>,
    mut draining: watch::Receiver<bool>,
    active: Rc<std::cell::Cell<usize>>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = draining.wait_for(|d| *d) => return,
        };
        let shared = &worker.shared;
        let limit = shared.limits.load().max_connections;
        if shared.open.fetch_add(1, Ordering::Relaxed) >= limit {
            shared.open.fetch_sub(1, Ordering::Relaxed);
            drop(stream);
            continue;
        }
        shared.metrics.accepted.inc();
        shared.metrics.connections.inc();
        let _ = stream.set_nodelay(true);
        active.set(active.get() + 1);
        let open = Open {
            worker: worker.clone(),
            active: active.clone(),
        };
        let worker = worker.clone();
        // One task per kind of connection: a task is as large as its
        // largest state, and an idle plain connection should not carry
        // room for a TLS handshake or a TLS stream.
        match &tls {
            None => tokio::task::spawn_local(async move {
                let _open = open;
                h1_server::serve(worker, stream, peer, false).await;
            }),
            Some(config) => {
                let (config, handshakes) = (config.clone(), handshakes.clone());
                tokio::task::spawn_local(async move {
                    let _open = open;
                    serve_tls(worker, config, &handshakes, stream, peer).await;
                })
            }
        };
    }
}

/// A client connection counted as open until it is dropped.
struct Open {
    worker: Rc<Worker>,
    active: Rc<std::cell::Cell<usize>>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.active.set(self.active.get() - 1);
        let shared = &self.worker.shared;
        shared.open.fetch_sub(1, Ordering::Relaxed);
        shared.metrics.connections.dec();
    }
}

/// Serves a connection to a TLS listener: the handshake, then HTTP/2 or
/// HTTP/1.x as ALPN chose.
///
/// Answering a ClientHello (the certificate's signature) costs a worker
/// ~1 ms, fifty requests' worth. So, as HAProxy runs handshakes in its
/// "heavy" class, a worker answers one ClientHello at a time and lets the
/// connections that are ready go first: a burst of new connections delays
/// the requests of open ones by one signature, not by the whole burst.
/// (A client that gets a HelloRetryRequest has its second ClientHello
/// answered outside its turn; clients offering a key share the server
/// supports, as all common ones do, never get one.)
async fn serve_tls(
    worker: Rc<Worker>,
    config: Arc<ServerConfig>,
    handshakes: &Semaphore,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let deadline =
        tokio::time::Instant::now() + worker.shared.limits.load().header_read_timeout.get();
    // Each stage boxed, so the task holds one of them at a time rather
    // than room for all.
    let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let Ok(Ok(start)) = Box::pin(tokio::time::timeout_at(deadline, hello)).await else {
        return;
    };
    let finish = {
        let Ok(_turn) = handshakes.acquire().await else {
            return;
        };
        tokio::task::yield_now().await;
        // Out of time while waiting: not worth a signature.
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        // Signs and queues the server's flight.
        start.into_stream(config)
    };
    let Ok(Ok(tls_stream)) = Box::pin(tokio::time::timeout_at(deadline, finish)).await else {
        return;
    };
    if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        Box::pin(h2_server::serve(worker, tls_stream, peer, true)).await;
    } else {
        Box::pin(h1_server::serve(worker, tls_stream, peer, true)).await;
    }
}

/// Reads and validates the configuration at `path`, for cluster mode when
/// `cluster`; `workers` overrides the file's worker count. Callers load it
/// before they contact etcd, so a broken file is reported as such.
pub fn load(
    path: &Path,
    workers: Option<usize>,
    cluster: bool,
) -> Result<IngressConfig, ServeError> {
    Ok(config::load(Some(path), |c: &mut IngressConfig| {
        if let Some(w) = workers {
            c.workers = w;
        }
        c.cluster = cluster;
    })?)
}

/// Runs the proxy with `config`, loaded from `path` by [`load`], until
/// SIGINT/SIGTERM; SIGHUP or a change of the file reloads it. With a
/// `cluster` store, routes and certificates follow the cluster's Ingress
/// objects instead of the file, and `/healthz` fails until they are first
/// listed. Its metrics go into `metrics`, which the admin server serves
/// (with whatever else the process registered there).
pub async fn run(
    path: &Path,
    config: IngressConfig,
    cluster: Option<Store>,
    metrics: Metrics,
) -> Result<(), ServeError> {
    // A reload keeps what the command line decided.
    let (workers, cluster_mode) = (config.workers, config.cluster);
    let overrides = move |c: &mut IngressConfig| {
        c.workers = workers;
        c.cluster = cluster_mode;
    };
    let mut ingress = Ingress::new(config.clone(), &metrics)?;
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };

    let (drain_tx, drain_rx) = watch::channel(false);
    let mut threads = Vec::new();
    let mut per_worker: Vec<Vec<WorkerListener>> = (0..workers).map(|_| Vec::new()).collect();
    for l in &config.listeners {
        let tls = ingress
            .resolvers
            .get(&l.name)
            .map(|r| tls::server_config(r.clone()));
        for sockets in &mut per_worker {
            sockets.push(WorkerListener {
                socket: bind_reuseport(l.address)?,
                tls: tls.clone(),
            });
        }
        tracing::info!(listener = %l.name, address = %l.address, tls = l.tls.is_some(), "listening");
    }
    let grace = match config.shutdown_grace.get() {
        d if d.is_zero() => Duration::from_secs(10),
        d => d,
    };
    for (id, listeners) in per_worker.into_iter().enumerate() {
        let (shared, draining) = (ingress.shared.clone(), drain_rx.clone());
        let thread = std::thread::Builder::new()
            .name(format!("orca-ingress-{id}"))
            .spawn(move || worker_main(id as u64, shared, listeners, draining, grace))
            .map_err(ServeError::Thread)?;
        threads.push(thread);
    }

    // Routes from a file are whole at once; the cluster's once listed.
    let listed = Arc::new(AtomicBool::new(cluster.is_none()));
    let admin = match &config.admin {
        Some(a) => {
            let listener = telemetry::bind_admin(a.address).await?;
            // Rendered from the table in force, so it shows what is served
            // now, in cluster mode too.
            let shared = ingress.shared.clone();
            let listed = listed.clone();
            let admin = Admin::new(metrics.clone())
                .route("/routes", move || {
                    AdminResponse::json(routes_json(&shared.routes.load()))
                })
                .health(move || {
                    if listed.load(Ordering::Relaxed) {
                        Ok(())
                    } else {
                        Err("routes not yet listed from the cluster".into())
                    }
                });
            let stop = drain_rx.clone();
            Some(tokio::spawn(telemetry::serve_admin(
                listener,
                admin,
                async move {
                    let mut stop = stop;
                    let _ = stop.wait_for(|d| *d).await;
                },
            )))
        }
        None => None,
    };

    let follower = cluster.map(|store| {
        let resolvers = ingress.resolvers.values().cloned().collect();
        tokio::spawn(cluster::run(
            store,
            ingress.shared.clone(),
            resolvers,
            listed,
            orca_core::watch::WatchMetrics::register(&metrics),
        ))
    });

    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(ServeError::Thread)?;
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    let mut modified = mtime(path);
    let shutdown = telemetry::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let reason = tokio::select! {
            () = &mut shutdown => break,
            _ = hangup.recv() => "SIGHUP",
            _ = poll.tick() => {
                if let Some(log) = ingress.shared.access_log.load_full() {
                    log.flush();
                }
                let now = mtime(path);
                if now == modified {
                    continue;
                }
                modified = now;
                "file changed"
            }
        };
        match config::reload::<IngressConfig>(path, overrides).map_err(ServeError::from) {
            Ok(new) => match ingress.reload(new) {
                Ok(()) => tracing::info!(reason, "reloaded {}", path.display()),
                Err(e) => {
                    tracing::error!(reason, error = %e, "reload refused; the running configuration stays")
                }
            },
            Err(e) => {
                tracing::error!(reason, error = %e, "reload refused; the running configuration stays")
            }
        }
    }
    if let Some(f) = follower {
        f.abort();
    }
    tracing::info!("shutting down: draining connections for up to {grace:?}");
    ingress.shared.draining.store(true, Ordering::Relaxed);
    drain_tx.send_replace(true);
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
    if let Some(log) = ingress.shared.access_log.load_full() {
        log.flush();
    }
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    for task in ingress.health_checks.drain(..) {
        task.abort();
    }
    Ok(())
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
