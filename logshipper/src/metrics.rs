//! The shipper's Prometheus metrics, under the `orca_logshipper` prefix.

use orca_core::telemetry::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Unit;
use std::sync::atomic::AtomicU64;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InputLabels {
    input: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutputLabels {
    output: String,
}

/// Every metric the shipper reports.
#[derive(Debug, Clone, Default)]
pub struct ShipperMetrics {
    input_events: Family<InputLabels, Counter>,
    input_bytes: Family<InputLabels, Counter>,
    input_malformed: Family<InputLabels, Counter>,
    input_open_errors: Family<InputLabels, Counter>,
    input_unreadable: Family<InputLabels, Gauge>,
    output_events: Family<OutputLabels, Counter>,
    output_bytes: Family<OutputLabels, Counter>,
    output_retries: Family<OutputLabels, Counter>,
    output_failed: Family<OutputLabels, Counter>,
    output_dropped: Family<OutputLabels, Counter>,
    output_dead_lettered: Family<OutputLabels, Counter>,
    output_retrying: Family<OutputLabels, Gauge>,
    output_oldest_age: Family<OutputLabels, Gauge<f64, AtomicU64>>,
    /// Bytes in tracked files not yet acknowledged by every output.
    pub checkpoint_lag: Gauge,
    /// Checkpoint files written.
    pub checkpoint_writes: Counter,
    /// Checkpoint writes that failed (retried on the next change).
    pub checkpoint_errors: Counter,
    /// Checkpoint files found damaged at start-up.
    pub checkpoint_corrupt: Counter,
    /// Bytes of events held in the buffer.
    pub buffer_fill: Gauge,
    /// The buffer's size (`buffer.max_memory`).
    pub buffer_max: Gauge,
    /// Files being tailed or awaiting acknowledgement.
    pub files: Gauge,
}

/// One input's counters.
#[derive(Debug, Clone, Default)]
pub struct InputMetrics {
    /// Events read.
    pub events: Counter,
    /// Bytes of event text read.
    pub bytes: Counter,
    /// Lines that did not parse in the input's format (shipped whole).
    pub malformed: Counter,
    /// Failed attempts to open a file the globs found.
    pub open_errors: Counter,
    /// Files the globs find that cannot be opened now.
    pub unreadable: Gauge,
}

/// One output's counters.
#[derive(Debug, Clone, Default)]
pub struct OutputMetrics {
    /// Events acknowledged by the sink.
    pub events: Counter,
    /// Bytes of payload acknowledged by the sink.
    pub bytes: Counter,
    /// Failed delivery attempts, each followed by a retry.
    pub retries: Counter,
    /// Events of batches given up on (rejected for good, or out of attempts).
    pub failed: Counter,
    /// Events dropped: given up on with `on_failure: drop`, or skipped
    /// while the output's queue was full (`when_full: drop_newest`).
    pub dropped: Counter,
    /// Events written to the dead-letter file.
    pub dead_lettered: Counter,
    /// 1 while a batch is waiting to be tried again.
    pub retrying: Gauge,
    /// Seconds the oldest event not yet acknowledged has waited.
    pub oldest_age: Gauge<f64, AtomicU64>,
}

impl ShipperMetrics {
    /// Registers every metric in `metrics` under `orca_logshipper`.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::default();
        let m = metrics.registry_with_prefix("orca_logshipper");
        m.register(
            "input_events",
            "Events read, per input",
            this.input_events.clone(),
        );
        m.register_with_unit(
            "input",
            "Bytes of event text read, per input",
            Unit::Bytes,
            this.input_bytes.clone(),
        );
        m.register(
            "input_malformed_lines",
            "Lines not in the input's format, shipped whole, per input",
            this.input_malformed.clone(),
        );
        m.register(
            "input_open_errors",
            "Failed attempts to open a file the input's globs found (retried every scan), per input",
            this.input_open_errors.clone(),
        );
        m.register(
            "input_unreadable_files",
            "Files the input's globs find that cannot be opened now, per input",
            this.input_unreadable.clone(),
        );
        m.register(
            "output_events",
            "Events acknowledged by the sink, per output",
            this.output_events.clone(),
        );
        m.register_with_unit(
            "output",
            "Payload bytes acknowledged by the sink, per output",
            Unit::Bytes,
            this.output_bytes.clone(),
        );
        m.register(
            "output_retries",
            "Failed delivery attempts (each retried), per output",
            this.output_retries.clone(),
        );
        m.register(
            "output_failed_events",
            "Events of batches given up on (rejected for good or out of attempts), per output",
            this.output_failed.clone(),
        );
        m.register(
            "output_dropped_events",
            "Events dropped (given up on with on_failure: drop, or skipped while the output's queue was full), per output",
            this.output_dropped.clone(),
        );
        m.register(
            "output_dead_lettered_events",
            "Events written to the output's dead-letter file, per output",
            this.output_dead_lettered.clone(),
        );
        m.register(
            "output_retrying",
            "1 while the output waits to try a failed batch again",
            this.output_retrying.clone(),
        );
        m.register_with_unit(
            "output_oldest_unacknowledged_age",
            "How long the output's oldest event not yet acknowledged has waited",
            Unit::Seconds,
            this.output_oldest_age.clone(),
        );
        m.register_with_unit(
            "checkpoint_lag",
            "Bytes in tailed files not yet acknowledged by every output",
            Unit::Bytes,
            this.checkpoint_lag.clone(),
        );
        m.register(
            "checkpoint_writes",
            "Checkpoint files written",
            this.checkpoint_writes.clone(),
        );
        m.register(
            "checkpoint_write_errors",
            "Checkpoint writes that failed",
            this.checkpoint_errors.clone(),
        );
        m.register(
            "checkpoint_corrupt",
            "Damaged checkpoint files found at start-up (files re-read from their start)",
            this.checkpoint_corrupt.clone(),
        );
        m.register_with_unit(
            "buffer_fill",
            "Bytes of events held in memory",
            Unit::Bytes,
            this.buffer_fill.clone(),
        );
        m.register_with_unit(
            "buffer_max",
            "Most bytes of events held in memory",
            Unit::Bytes,
            this.buffer_max.clone(),
        );
        m.register(
            "files",
            "Files tailed or awaiting acknowledgement",
            this.files.clone(),
        );
        this
    }

    /// The counters of input `name`.
    pub fn input(&self, name: &str) -> InputMetrics {
        let labels = InputLabels {
            input: name.to_string(),
        };
        InputMetrics {
            events: self.input_events.get_or_create(&labels).clone(),
            bytes: self.input_bytes.get_or_create(&labels).clone(),
            malformed: self.input_malformed.get_or_create(&labels).clone(),
            open_errors: self.input_open_errors.get_or_create(&labels).clone(),
            unreadable: self.input_unreadable.get_or_create(&labels).clone(),
        }
    }

    /// The counters of output `name`.
    pub fn output(&self, name: &str) -> OutputMetrics {
        let labels = OutputLabels {
            output: name.to_string(),
        };
        OutputMetrics {
            events: self.output_events.get_or_create(&labels).clone(),
            bytes: self.output_bytes.get_or_create(&labels).clone(),
            retries: self.output_retries.get_or_create(&labels).clone(),
            failed: self.output_failed.get_or_create(&labels).clone(),
            dropped: self.output_dropped.get_or_create(&labels).clone(),
            dead_lettered: self.output_dead_lettered.get_or_create(&labels).clone(),
            retrying: self.output_retrying.get_or_create(&labels).clone(),
            oldest_age: self.output_oldest_age.get_or_create(&labels).clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        let registry = Metrics::new();
        let metrics = ShipperMetrics::register(&registry);
        metrics.input("pods").events.inc_by(3);
        metrics.output("es").bytes.inc_by(10);
        metrics.checkpoint_lag.set(7);
        let text = registry.encode().expect("encodes");
        for line in [
            "orca_logshipper_input_events_total{input=\"pods\"} 3",
            "orca_logshipper_output_bytes_total{output=\"es\"} 10",
            "orca_logshipper_checkpoint_lag_bytes 7",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
