//! Upstreams and their endpoints: load balancing, passive outlier ejection,
//! active health state and the retry budget. Shared by every worker thread,
//! so all mutable state is atomic.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::budget::RetryBudget;
use super::config::{self, LbPolicy};
use super::pool::{DEFAULT_MAX_IDLE_PER_ENDPOINT, Keep};

/// Milliseconds since the process started, for cheap atomic deadlines.
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A connection to an endpoint could not be made.
#[derive(Debug, Clone, Copy)]
pub struct DialError {
    /// Whether the connect timeout ran out (else the endpoint refused).
    pub timed_out: bool,
}

/// One backend address and what the proxy knows about its health.
#[derive(Debug)]
pub struct Endpoint {
    /// The address.
    pub addr: SocketAddr,
    in_flight: AtomicU32,
    failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// Set by active health checks; endpoints start healthy.
    healthy: AtomicBool,
}

impl Endpoint {
    /// A healthy endpoint at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            in_flight: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
        }
    }

    /// Whether requests may be sent here now.
    pub fn available(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms()
    }

    /// Requests currently in flight to this endpoint.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Records the active health check's verdict.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Whether the last health check passed.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether the endpoint is ejected now.
    pub fn ejected(&self) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms()
    }
}

/// Marks a request in flight to an endpoint until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    /// The endpoint.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Timeouts and policies of an upstream.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Time allowed from request to response head.
    pub request_timeout: Duration,
    /// How long, and how many, idle pooled connections are kept.
    pub keep: Keep,
    /// Retry policy.
    pub retries: config::Retries,
    /// Outlier ejection policy.
    pub outlier: config::Outlier,
    /// Active health checks.
    pub health_check: Option<config::HealthCheck>,
    /// Protocol spoken to the endpoints.
    pub protocol: config::UpstreamProtocol,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            keep: Keep {
                idle_timeout: Duration::from_secs(30),
                max_idle: DEFAULT_MAX_IDLE_PER_ENDPOINT,
            },
            retries: config::Retries::default(),
            outlier: config::Outlier::default(),
            health_check: None,
            protocol: config::UpstreamProtocol::Http1,
        }
    }
}

/// A named group of endpoints.
#[derive(Debug)]
pub struct Upstream {
    /// Name, for metrics and logs.
    pub name: Arc<str>,
    /// The endpoints; replaced whole when the cluster changes them, so
    /// requests in flight keep the list they chose from.
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    /// Balancing policy.
    pub lb: LbPolicy,
    /// Timeouts and policies.
    pub settings: Settings,
    next: AtomicUsize,
    budget: RetryBudget,
}

impl Upstream {
    /// A new connection to `addr`, within this upstream's connect timeout,
    /// with Nagle off (heads and small bodies go out at once); the error
    /// says whether the time ran out.
    pub async fn dial(&self, addr: SocketAddr) -> Result<tokio::net::TcpStream, DialError> {
        let connecting = tokio::net::TcpStream::connect(addr);
        match tokio::time::timeout(self.settings.connect_timeout, connecting).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(_)) => Err(DialError { timed_out: false }),
            Err(_) => Err(DialError { timed_out: true }),
        }
    }

    /// An upstream with default settings.
    pub fn new(name: &str, addrs: Vec<SocketAddr>, lb: LbPolicy) -> Self {
        Self::with_endpoints(
            name,
            addrs
                .into_iter()
                .map(|a| Arc::new(Endpoint::new(a)))
                .collect(),
            lb,
            Settings::default(),
        )
    }

    /// An upstream over existing endpoints, so their health survives a
    /// reload that keeps them.
    pub fn with_endpoints(
        name: &str,
        endpoints: Vec<Arc<Endpoint>>,
        lb: LbPolicy,
        settings: Settings,
    ) -> Self {
        let budget = RetryBudget::new(
            settings.retries.budget_percent,
            settings.retries.budget_window.get(),
        );
        Self {
            name: name.into(),
            endpoints: ArcSwap::from_pointee(endpoints),
            lb,
            settings,
            next: AtomicUsize::new(0),
            budget,
        }
    }

    /// The endpoints now.
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// Replaces the endpoints with those at `addrs`, keeping the ones
    /// already known (their health, ejection and requests in flight).
    pub fn set_endpoints(&self, addrs: &[SocketAddr]) {
        let old = self.endpoints.load();
        let known: HashMap<SocketAddr, &Arc<Endpoint>> = old.iter().map(|e| (e.addr, e)).collect();
        let endpoints = addrs
            .iter()
            .map(|addr| match known.get(addr) {
                Some(e) => Arc::clone(e),
                None => Arc::new(Endpoint::new(*addr)),
            })
            .collect();
        self.endpoints.store(Arc::new(endpoints));
    }

    /// Chooses an available endpoint other than those in `tried`, and marks
    /// a request in flight to it. `roll` is any random number.
    pub fn choose(&self, roll: u32, tried: &[SocketAddr]) -> Option<InFlight> {
        let usable = |e: &&Arc<Endpoint>| e.available() && !tried.contains(&e.addr);
        let endpoints = self.endpoints.load();
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        let chosen = match self.lb {
            LbPolicy::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|i| &endpoints[(start + i) % n]).find(usable)
            }
            LbPolicy::Random => {
                let start = roll as usize;
                (0..n).map(|i| &endpoints[(start + i) % n]).find(usable)
            }
            LbPolicy::LeastRequest => {
                // Power of two choices: as good as a full scan in practice,
                // and O(1).
                let a = (roll as usize) % n;
                let b = ((roll >> 16) as usize) % n;
                let pair = [&endpoints[a], &endpoints[b]];
                let best = pair
                    .into_iter()
                    .filter(usable)
                    .min_by_key(|e| e.in_flight());
                best.or_else(|| {
                    endpoints
                        .iter()
                        .filter(usable)
                        .min_by_key(|e| e.in_flight())
                })
            }
        }?;
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(chosen.clone()))
    }

    /// Records a request's outcome at an endpoint for outlier ejection.
    pub fn record(&self, endpoint: &Endpoint, success: bool) {
        if success {
            if endpoint.failures.load(Ordering::Relaxed) != 0 {
                endpoint.failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let limit = self.settings.outlier.consecutive_failures;
        let failures = endpoint.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if limit > 0 && failures >= limit {
            let until = now_ms()
                + u64::try_from(self.settings.outlier.ejection.get().as_millis())
                    .unwrap_or(u64::MAX);
            endpoint.ejected_until_ms.store(until, Ordering::Relaxed);
            endpoint.failures.store(0, Ordering::Relaxed);
            tracing::warn!(upstream = %self.name, endpoint = %endpoint.addr, "endpoint ejected after {failures} consecutive failures");
        }
    }

    /// Counts a request against the retry budget.
    pub fn count_request(&self) {
        self.budget.count_request(now_ms());
    }

    /// Takes a retry from the budget: retries may be at most
    /// `budget_percent` of the requests of the last `budget_window` (with a
    /// floor of a few, so a quiet upstream can still retry).
    pub fn take_retry(&self) -> bool {
        self.budget.take_retry(now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (1..=n)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect()
    }

    #[test]
    fn round_robin_visits_each_endpoint() {
        let u = Upstream::new("u", addrs(3), LbPolicy::RoundRobin);
        let picks: Vec<u16> = (0..6)
            .map(|_| u.choose(0, &[]).unwrap().endpoint().addr.port())
            .collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn least_request_avoids_busy_endpoints() {
        let u = Upstream::new("u", addrs(2), LbPolicy::LeastRequest);
        let busy = u.choose(0, &[]).unwrap();
        let roll = 1 << 16;
        let next = u.choose(roll, &[]).unwrap();
        assert_ne!(next.endpoint().addr, busy.endpoint().addr);
        drop(busy);
        drop(next);
        assert_eq!(
            u.endpoints()[0].in_flight() + u.endpoints()[1].in_flight(),
            0
        );
    }

    #[test]
    fn failing_endpoints_are_ejected_and_skipped() {
        let u = Upstream::new("u", addrs(2), LbPolicy::RoundRobin);
        let bad = u.endpoints()[0].clone();
        for _ in 0..5 {
            u.record(&bad, false);
        }
        assert!(bad.ejected());
        for _ in 0..4 {
            assert_eq!(u.choose(0, &[]).unwrap().endpoint().addr.port(), 2);
        }
        assert!(
            u.choose(0, &[SocketAddr::from(([127, 0, 0, 1], 2))])
                .is_none(),
            "nothing left"
        );
        u.endpoints()[1].set_healthy(false);
        assert!(u.choose(0, &[]).is_none());
    }
}
