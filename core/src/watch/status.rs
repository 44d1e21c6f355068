//! The state of a component's watches, for `/metrics`, the log and
//! `/healthz`: whether each watch is established, and how long it has not
//! been. Failures are logged at most every [`WARN_PERIOD`] (with how many
//! were held back) and the recovery once, with how long it was down.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Unit;

use crate::store::Error;
use crate::telemetry::{Metrics, Throttle};

/// Most one "watch failed" warning per watch in this period.
pub const WARN_PERIOD: Duration = Duration::from_secs(10);

type Labels = Vec<(&'static str, String)>;

/// The watch metrics of one process (prefix `orca_watch`); make one per
/// registry and a [`WatchStatus`] per watch from it.
#[derive(Debug, Clone, Default)]
pub struct WatchMetrics {
    up: Family<Labels, Gauge>,
    since: Family<Labels, SecondsDown>,
    failures: Family<Labels, Counter>,
}

impl WatchMetrics {
    /// Registers `orca_watch_up`, `orca_watch_seconds_since_last_sync` and
    /// `orca_watch_failures_total` in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::default();
        let m = metrics.registry_with_prefix("orca_watch");
        m.register(
            "up",
            "1 while the watch is established, 0 while it is failing or not yet listed",
            this.up.clone(),
        );
        m.register_with_unit(
            "since_last_sync",
            "Time since the watch was last known in step with etcd (0 while it is up)",
            Unit::Seconds,
            this.since.clone(),
        );
        m.register(
            "failures",
            "Failed lists and watches, each followed by a retry",
            this.failures.clone(),
        );
        this
    }

    /// The status of the watch called `name` (e.g. `services`).
    pub fn status(&self, name: &str) -> WatchStatus {
        let labels = vec![("watch", name.to_string())];
        let since = self.since.get_or_create(&labels).clone();
        WatchStatus {
            inner: Arc::new(Inner {
                name: name.to_string(),
                up: self.up.get_or_create(&labels).clone(),
                failures: self.failures.get_or_create(&labels).clone(),
                state: Arc::clone(&since.0),
                log: Mutex::new(Throttle::new(WARN_PERIOD)),
            }),
        }
    }
}

#[derive(Debug)]
struct State {
    up: bool,
    /// When the watch was last known good (or created, before that).
    last_good: Instant,
    failures_while_down: u64,
}

/// Seconds since the watch was last known good; 0 while it is up.
#[derive(Debug, Clone)]
struct SecondsDown(Arc<Mutex<State>>);

impl Default for SecondsDown {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(State {
            up: false,
            last_good: Instant::now(),
            failures_while_down: 0,
        })))
    }
}

impl TypedMetric for SecondsDown {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for SecondsDown {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let seconds = if state.up {
            0.0
        } else {
            state.last_good.elapsed().as_secs_f64()
        };
        drop(state);
        encoder.encode_gauge(&seconds)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[derive(Debug)]
struct Inner {
    name: String,
    up: Gauge,
    failures: Counter,
    state: Arc<Mutex<State>>,
    log: Mutex<Throttle>,
}

/// One watch's state; the watcher keeps it current
/// ([`crate::watch::watcher_with_status`]). Cheap to clone.
#[derive(Debug, Clone)]
pub struct WatchStatus {
    inner: Arc<Inner>,
}

impl WatchStatus {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The watch is in step with etcd: listed, re-established or
    /// delivering events. Logs the recovery after a failure.
    pub(crate) fn good(&self) {
        let mut state = self.state();
        let was_up = state.up;
        let down_for = state.last_good.elapsed();
        let failures = std::mem::take(&mut state.failures_while_down);
        state.up = true;
        state.last_good = Instant::now();
        drop(state);
        self.inner.up.set(1);
        if !was_up && failures > 0 {
            self.inner
                .log
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .reset();
            tracing::info!(
                watch = %self.inner.name,
                down_for = ?down_for,
                failures,
                "watch recovered"
            );
        }
    }

    /// The watch is being set up again (a re-list): not up, not failing.
    pub(crate) fn relisting(&self) {
        let mut state = self.state();
        if state.up {
            state.up = false;
            state.last_good = Instant::now();
        }
        drop(state);
        self.inner.up.set(0);
    }

    /// A list or watch failed; it is retried.
    pub(crate) fn failed(&self, error: &Error) {
        let mut state = self.state();
        if state.up {
            state.up = false;
            state.last_good = Instant::now();
        }
        state.failures_while_down += 1;
        drop(state);
        self.inner.up.set(0);
        self.inner.failures.inc();
        let allowed = self
            .inner
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .allow();
        if let Some(held_back) = allowed {
            tracing::warn!(
                watch = %self.inner.name,
                %error,
                held_back,
                "watch failed; retrying (logged at most every 10s)"
            );
        }
    }

    /// Whether the watch is established now.
    pub fn is_up(&self) -> bool {
        self.state().up
    }

    /// `Err` naming the watch once it has not been up for `limit`.
    pub fn check(&self, limit: Duration) -> Result<(), String> {
        let state = self.state();
        let down = state.last_good.elapsed();
        if state.up || down < limit {
            return Ok(());
        }
        Err(format!(
            "watch {} down for {}s",
            self.inner.name,
            down.as_secs()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_metrics_follow_failures_and_recovery() {
        let registry = Metrics::new();
        let status = WatchMetrics::register(&registry).status("services");
        let text = || registry.encode().expect("encodes");
        assert!(
            text().contains("orca_watch_up{watch=\"services\"} 0"),
            "{}",
            text()
        );
        assert!(
            status.check(Duration::ZERO).is_err(),
            "not up before the first list"
        );
        status.good();
        assert!(status.is_up());
        assert!(
            text().contains("orca_watch_since_last_sync_seconds{watch=\"services\"} 0.0"),
            "{}",
            text()
        );
        status.failed(&Error::Unavailable {
            endpoint: "http://127.0.0.1:1".into(),
            message: "refused".into(),
        });
        status.failed(&Error::Unavailable {
            endpoint: "http://127.0.0.1:1".into(),
            message: "refused".into(),
        });
        assert!(!status.is_up());
        let metrics = text();
        assert!(
            metrics.contains("orca_watch_up{watch=\"services\"} 0"),
            "{metrics}"
        );
        assert!(
            metrics.contains("orca_watch_failures_total{watch=\"services\"} 2"),
            "{metrics}"
        );
        assert!(
            status.check(Duration::from_secs(3600)).is_ok(),
            "within the limit"
        );
        let err = status.check(Duration::ZERO).unwrap_err();
        assert!(err.contains("watch services down"), "{err}");
        status.good();
        assert!(status.check(Duration::ZERO).is_ok());
    }
}
