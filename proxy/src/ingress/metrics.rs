//! The ingress proxy's metrics (prefix `orca_ingress`): requests per route
//! and status, request latency per route, connections, upstream failures.

use std::sync::Arc;

use orca_core::telemetry::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Unit;

/// Labels of a request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route name (`-` when no route matched).
    pub route: Arc<str>,
    /// Response status code.
    pub status: u16,
}

/// Labels of per-route metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route name.
    pub route: Arc<str>,
}

/// Labels of upstream failures.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Upstream name.
    pub upstream: Arc<str>,
    /// What failed: `connect`, `timeout`, `protocol`, `reset`.
    pub kind: &'static str,
}

/// Handles on every ingress metric; clones share them.
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    /// Requests answered, by route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Seconds from request head to response complete, by route.
    pub latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Client connections open now.
    pub connections: Gauge,
    /// Client connections accepted since start.
    pub accepted: Counter,
    /// Upstream failures, by upstream and kind.
    pub upstream_failures: Family<FailureLabels, Counter>,
    /// Requests retried on another endpoint.
    pub retries: Counter,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl ProxyMetrics {
    /// Registers the metrics under `orca_ingress_` in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let m = metrics.registry_with_prefix("orca_ingress");
        let this = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            connections: Gauge::default(),
            accepted: Counter::default(),
            upstream_failures: Family::default(),
            retries: Counter::default(),
        };
        m.register(
            "requests",
            "Requests answered, by route and status",
            this.requests.clone(),
        );
        m.register_with_unit(
            "request_duration",
            "Time from request head to the end of the response, by route",
            Unit::Seconds,
            this.latency.clone(),
        );
        m.register(
            "connections",
            "Client connections open now",
            this.connections.clone(),
        );
        m.register(
            "connections_accepted",
            "Client connections accepted",
            this.accepted.clone(),
        );
        m.register(
            "upstream_failures",
            "Failed attempts to reach an upstream, by kind",
            this.upstream_failures.clone(),
        );
        m.register(
            "retries",
            "Requests retried on another endpoint",
            this.retries.clone(),
        );
        this
    }
}
