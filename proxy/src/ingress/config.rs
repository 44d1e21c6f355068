//! The standalone ingress configuration file: listeners, routes, upstreams,
//! limits and admin. Unknown keys are errors; `validate` checks what serde
//! cannot (references between sections, duplicate names, sane values).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use orca_core::config::{ByteSize, ComponentConfig, ConfigError, Duration};
use serde::{Deserialize, Serialize};

/// The whole ingress configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngressConfig {
    /// Worker threads; 0 means one per core. `--workers` overrides it.
    pub workers: usize,
    /// Addresses to accept connections on.
    pub listeners: Vec<Listener>,
    /// Routing rules, matched by host, then path, then headers.
    pub routes: Vec<Route>,
    /// Named groups of backend endpoints.
    pub upstreams: Vec<Upstream>,
    /// Limits protecting the proxy from clients.
    pub limits: Limits,
    /// Access log; off unless a path is given.
    pub access_log: AccessLog,
    /// The admin server (`/metrics`, `/healthz`, `/routes`).
    pub admin: Option<Admin>,
    /// How long open connections may finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Set by `--etcd`, not the file: routes and certificates come from
    /// Ingress objects and Secrets instead of this file.
    #[serde(skip)]
    pub cluster: bool,
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Name, for metrics and logs.
    pub name: String,
    /// Address to bind, e.g. `127.0.0.1:8080`.
    pub address: SocketAddr,
    /// Terminate TLS on this listener.
    #[serde(default)]
    pub tls: Option<Tls>,
}

/// TLS settings of a listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Certificates, chosen by SNI.
    pub certificates: Vec<Certificate>,
}

/// One certificate and its key.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Server names this certificate serves; default: the names in it.
    #[serde(default)]
    pub sni: Vec<String>,
}

/// How a route's path is compared with the request's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum PathType {
    /// Matches the path and everything below it, element by element
    /// (`/api` matches `/api` and `/api/x`, not `/apix`).
    #[default]
    Prefix,
    /// Matches the path exactly.
    Exact,
}

/// One routing rule.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Host to match (`example.com`, `*.example.com`); absent = any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Path to match; default `/`.
    #[serde(default = "default_path")]
    pub path: String,
    /// How `path` matches.
    #[serde(default)]
    pub path_type: PathType,
    /// Request headers that must all be present with these exact values.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    /// The upstream serving this route (or use `upstreams` for a split).
    #[serde(default)]
    pub upstream: Option<String>,
    /// Weighted upstreams, for canary splits.
    #[serde(default)]
    pub upstreams: Vec<WeightedUpstream>,
    /// Answer plain-HTTP requests with a redirect to HTTPS.
    #[serde(default)]
    pub redirect_https: bool,
}

fn default_path() -> String {
    "/".into()
}

/// A header a route requires.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    pub name: String,
    /// Exact value.
    pub value: String,
}

/// An upstream with its share of a route's traffic.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedUpstream {
    /// Upstream name.
    pub name: String,
    /// Relative weight (0 takes no traffic).
    pub weight: u32,
}

/// Load-balancing policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// The less busy of two random endpoints.
    LeastRequest,
    /// A random endpoint.
    Random,
}

/// The protocol spoken to an upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 without TLS (prior knowledge), as gRPC servers speak.
    /// HTTP/1.1 clients' requests are carried over it too, their responses
    /// without trailers.
    H2c,
}

/// A named group of backend endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Name routes refer to.
    pub name: String,
    /// Backend addresses.
    pub endpoints: Vec<SocketAddr>,
    /// Load-balancing policy.
    #[serde(default)]
    pub lb: LbPolicy,
    /// Protocol spoken to the endpoints.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Time allowed to connect to an endpoint.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Time allowed from sending a request to the response head.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Duration,
    /// How long an unused pooled connection is kept.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// Idle connections each worker keeps per endpoint; a connection
    /// freed beyond it is closed. 0 keeps none: every request connects.
    #[serde(default = "default_max_idle_per_endpoint")]
    pub max_idle_per_endpoint: usize,
    /// Retries of idempotent requests.
    #[serde(default)]
    pub retries: Retries,
    /// Passive outlier ejection.
    #[serde(default)]
    pub outlier: Outlier,
    /// Active health checks; off when absent.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
}

const fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

const fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

const fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}

const fn default_max_idle_per_endpoint() -> usize {
    super::pool::DEFAULT_MAX_IDLE_PER_ENDPOINT
}

/// Most idle connections to one endpoint a worker may keep: one source
/// address cannot hold more connections to one destination than it has
/// ports.
const MAX_IDLE_PER_ENDPOINT_LIMIT: usize = 65_535;

/// When to try a request again on another endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retries {
    /// Extra attempts after the first (0 disables retries).
    pub attempts: u32,
    /// Response statuses that are retried (connect failures always are).
    pub on_status: Vec<u16>,
    /// Retries allowed as a share of requests, in percent, so retries
    /// cannot multiply load on a failing upstream.
    pub budget_percent: u32,
    /// The time over which the budget counts requests and retries.
    pub budget_window: Duration,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            attempts: 1,
            on_status: Vec::new(),
            budget_percent: 20,
            budget_window: Duration::from_secs(10),
        }
    }
}

/// Passive outlier ejection: endpoints that keep failing are skipped.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Outlier {
    /// Consecutive failures (connect errors, 5xx from the proxy's view)
    /// that eject an endpoint; 0 disables ejection.
    pub consecutive_failures: u32,
    /// How long an ejected endpoint is skipped.
    pub ejection: Duration,
}

impl Default for Outlier {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            ejection: Duration::from_secs(10),
        }
    }
}

/// Active HTTP health checks.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheck {
    /// Path requested with GET; a 2xx answer is healthy.
    pub path: String,
    /// Time between checks.
    pub interval: Duration,
    /// Time allowed for an answer.
    pub timeout: Duration,
    /// Failed checks in a row that mark an endpoint unhealthy.
    pub unhealthy_threshold: u32,
    /// Passed checks in a row that mark it healthy again.
    pub healthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            path: "/healthz".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
        }
    }
}

/// Limits on what clients may send.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request head (request line and headers).
    pub max_header_bytes: ByteSize,
    /// Most headers in a request.
    pub max_headers: usize,
    /// Time allowed to send a complete request head (slowloris guard), or
    /// for an HTTP/2 client to open its first stream.
    pub header_read_timeout: Duration,
    /// Largest request body.
    pub max_body_bytes: ByteSize,
    /// Most open client connections per process.
    pub max_connections: usize,
    /// How long an idle keep-alive client connection is kept (an HTTP/2
    /// one with no stream open, too).
    pub keepalive_timeout: Duration,
    /// Longest wait between two reads of a body, the client's request body
    /// (answered 408) or an upstream's response body (the client's
    /// connection is closed); nginx's `client_body_timeout` and
    /// `proxy_read_timeout`.
    pub body_read_timeout: Duration,
    /// Longest wait between two writes of a body to a peer that does not
    /// read it (the connection is closed); nginx's `send_timeout`.
    pub send_timeout: Duration,
    /// How long a WebSocket (or other upgraded) tunnel may carry nothing
    /// either way before it is closed; nginx's `proxy_read_timeout`.
    pub tunnel_idle_timeout: Duration,
    /// Most streams an HTTP/2 client may have open at once on one
    /// connection, each holding an upstream request; nginx's
    /// `http2_max_concurrent_streams`.
    pub h2_max_concurrent_streams: u32,
    /// How often an HTTP/2 connection, a client's or an h2c upstream's, is
    /// pinged; unanswered within as long again, it is closed (0s: never).
    pub h2_ping_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: ByteSize::kib(32),
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            max_body_bytes: ByteSize::mib(8),
            max_connections: 100_000,
            keepalive_timeout: Duration::from_secs(75),
            body_read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            tunnel_idle_timeout: Duration::from_secs(60),
            h2_max_concurrent_streams: 128,
            h2_ping_interval: Duration::from_secs(30),
        }
    }
}

/// Access log settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLog {
    /// File to append JSON lines to (`-` for stdout); off when absent.
    pub path: Option<PathBuf>,
}

/// Admin server settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address of `/metrics`, `/healthz` and `/routes`.
    pub address: SocketAddr,
}

fn check_host(field: &str, host: &str) -> Result<(), ConfigError> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            format!("{host:?} is not a lower-case DNS name (optionally starting with \"*.\")"),
        ))
    }
}

impl ComponentConfig for IngressConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(ConfigError::invalid(
                "listeners",
                "at least one listener is required",
            ));
        }
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if !names.insert(l.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("listeners[{i}].name"),
                    format!("duplicate listener name {:?}", l.name),
                ));
            }
            if !addresses.insert(l.address) {
                return Err(ConfigError::invalid(
                    format!("listeners[{i}].address"),
                    format!("{} is used by two listeners", l.address),
                ));
            }
            if let Some(tls) = &l.tls {
                if self.cluster && !tls.certificates.is_empty() {
                    return Err(ConfigError::invalid(
                        format!("listeners[{i}].tls.certificates"),
                        "in cluster mode certificates come from the Ingresses' TLS Secrets; leave this empty",
                    ));
                }
                if !self.cluster && tls.certificates.is_empty() {
                    return Err(ConfigError::invalid(
                        format!("listeners[{i}].tls.certificates"),
                        "at least one certificate is required",
                    ));
                }
                for (j, c) in tls.certificates.iter().enumerate() {
                    for (k, name) in c.sni.iter().enumerate() {
                        check_host(
                            &format!("listeners[{i}].tls.certificates[{j}].sni[{k}]"),
                            name,
                        )?;
                    }
                }
            }
        }
        if self.cluster && !(self.routes.is_empty() && self.upstreams.is_empty()) {
            return Err(ConfigError::invalid(
                "routes",
                "in cluster mode routes come from Ingress objects; remove routes and upstreams",
            ));
        }
        let mut upstreams = HashSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            if !upstreams.insert(u.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("upstreams[{i}].name"),
                    format!("duplicate upstream name {:?}", u.name),
                ));
            }
            if u.endpoints.is_empty() {
                return Err(ConfigError::invalid(
                    format!("upstreams[{i}].endpoints"),
                    "at least one endpoint is required",
                ));
            }
            if u.connect_timeout.get().is_zero() || u.request_timeout.get().is_zero() {
                return Err(ConfigError::invalid(
                    format!("upstreams[{i}]"),
                    "connect_timeout and request_timeout must be greater than zero",
                ));
            }
            if u.max_idle_per_endpoint > MAX_IDLE_PER_ENDPOINT_LIMIT {
                return Err(ConfigError::invalid(
                    format!("upstreams[{i}].max_idle_per_endpoint"),
                    format!(
                        "{} is more connections than one address has ports (at most {MAX_IDLE_PER_ENDPOINT_LIMIT})",
                        u.max_idle_per_endpoint
                    ),
                ));
            }
            if let Some(hc) = &u.health_check
                && (!hc.path.starts_with('/') || hc.interval.get().is_zero())
            {
                return Err(ConfigError::invalid(
                    format!("upstreams[{i}].health_check"),
                    "path must start with \"/\" and interval must be greater than zero",
                ));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            let field = |f: &str| format!("routes[{i}].{f}");
            if let Some(host) = &r.host {
                check_host(&field("host"), host)?;
            }
            if !r.path.starts_with('/') {
                return Err(ConfigError::invalid(field("path"), "must start with \"/\""));
            }
            let targets: Vec<&str> = match (&r.upstream, r.upstreams.as_slice()) {
                (Some(one), []) => vec![one.as_str()],
                (None, many) if !many.is_empty() => many.iter().map(|w| w.name.as_str()).collect(),
                (None, []) if r.redirect_https => vec![],
                _ => {
                    return Err(ConfigError::invalid(
                        field("upstream"),
                        "exactly one of upstream and upstreams is required",
                    ));
                }
            };
            for t in targets {
                if !upstreams.contains(t) {
                    return Err(ConfigError::invalid(
                        field("upstream"),
                        format!("no upstream named {t:?}"),
                    ));
                }
            }
            if !r.upstreams.is_empty() && r.upstreams.iter().all(|w| w.weight == 0) {
                return Err(ConfigError::invalid(
                    field("upstreams"),
                    "at least one weight must be greater than zero",
                ));
            }
            for (j, h) in r.headers.iter().enumerate() {
                if h.name.is_empty() || !h.name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                    return Err(ConfigError::invalid(
                        field(&format!("headers[{j}].name")),
                        format!("{:?} is not a header name", h.name),
                    ));
                }
            }
        }
        let limits = &self.limits;
        if limits.max_header_bytes.bytes() < 1024
            || limits.max_header_bytes.bytes() > 1 << 20
            || !(1..=super::h1::MAX_HEADERS).contains(&limits.max_headers)
        {
            return Err(ConfigError::invalid(
                "limits",
                format!(
                    "max_header_bytes must be between 1KiB and 1MiB and max_headers between 1 and {}",
                    super::h1::MAX_HEADERS
                ),
            ));
        }
        if limits.header_read_timeout.get().is_zero() || limits.max_connections == 0 {
            return Err(ConfigError::invalid(
                "limits",
                "header_read_timeout and max_connections must be greater than zero",
            ));
        }
        if limits.h2_max_concurrent_streams == 0 {
            return Err(ConfigError::invalid(
                "limits.h2_max_concurrent_streams",
                "must be greater than zero",
            ));
        }
        for (field, timeout) in [
            ("limits.body_read_timeout", limits.body_read_timeout),
            ("limits.send_timeout", limits.send_timeout),
            ("limits.tunnel_idle_timeout", limits.tunnel_idle_timeout),
        ] {
            if timeout.get().is_zero() {
                return Err(ConfigError::invalid(field, "must be greater than zero"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orca_core::config;

    fn parse(text: &str) -> Result<IngressConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ingress.yaml");
        std::fs::write(&path, text).unwrap();
        config::load(Some(&path), |_| {})
    }

    const EXAMPLE: &str = r#"
listeners:
  - name: web
    address: 127.0.0.1:8080
  - name: websecure
    address: 127.0.0.1:8443
    tls:
      certificates:
        - cert: /path/cert.pem
          key: /path/key.pem
routes:
  - host: example.com
    path: /api
    path_type: Prefix
    upstream: api
upstreams:
  - name: api
    endpoints: ["127.0.0.1:9001", "127.0.0.1:9002"]
    lb: round_robin
admin:
  address: 127.0.0.1:9901
"#;

    #[test]
    fn the_documented_example_loads() {
        let c = parse(EXAMPLE).expect("valid");
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.routes[0].path_type, PathType::Prefix);
        assert_eq!(c.upstreams[0].endpoints.len(), 2);
        assert_eq!(c.upstreams[0].connect_timeout, Duration::from_secs(2));
        assert_eq!(c.limits.max_headers, 100);
    }

    #[test]
    fn mistakes_are_named() {
        let unknown = parse(&EXAMPLE.replace("lb: round_robin", "lb: round_robin\n    weight: 3"))
            .unwrap_err();
        assert!(unknown.to_string().contains("weight"), "{unknown}");
        let missing = parse(&EXAMPLE.replace("upstream: api", "upstream: nope")).unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("routes[0].upstream: no upstream named \"nope\""),
            "{missing}"
        );
        let bad_lb = parse(&EXAMPLE.replace("round_robin", "fastest")).unwrap_err();
        assert!(bad_lb.to_string().contains("fastest"), "{bad_lb}");
        let bad_host =
            parse(&EXAMPLE.replace("host: example.com", "host: Example.COM")).unwrap_err();
        assert!(
            bad_host.to_string().contains("routes[0].host"),
            "{bad_host}"
        );
        let bad_path = parse(&EXAMPLE.replace("path: /api", "path: api")).unwrap_err();
        assert!(
            bad_path.to_string().contains("routes[0].path"),
            "{bad_path}"
        );
        let bad_addr = parse(&EXAMPLE.replace("127.0.0.1:8080", "localhost")).unwrap_err();
        assert!(bad_addr.to_string().contains("listeners"), "{bad_addr}");
    }

    #[test]
    fn the_idle_cap_is_per_upstream_and_bounded() {
        let with = |value: &str| {
            parse(&EXAMPLE.replace(
                "lb: round_robin",
                &format!("lb: round_robin\n    max_idle_per_endpoint: {value}"),
            ))
        };
        assert_eq!(
            parse(EXAMPLE).unwrap().upstreams[0].max_idle_per_endpoint,
            4096,
            "the default"
        );
        assert_eq!(with("16").unwrap().upstreams[0].max_idle_per_endpoint, 16);
        assert_eq!(with("0").unwrap().upstreams[0].max_idle_per_endpoint, 0);
        for bad in ["70000", "-1", "many", "1.5"] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("max_idle_per_endpoint"), "{bad}: {e}");
        }
        let e = with("70000").unwrap_err().to_string();
        assert!(
            e.contains("upstreams[0].max_idle_per_endpoint: 70000 is more connections"),
            "{e}"
        );
        let typo = parse(&EXAMPLE.replace("lb: round_robin", "lb: round_robin\n    max_idle: 3"))
            .unwrap_err()
            .to_string();
        assert!(typo.contains("max_idle"), "{typo}");
    }
}
