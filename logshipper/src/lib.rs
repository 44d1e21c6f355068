//! Orca's log shipper: tails container logs and delivers them at least once.
//!
//! One reader thread per input (glob, fingerprint, read, parse) hands
//! chunks of events through a byte-bounded buffer to one task per output
//! (batch, encode, deliver, retry). Offsets are checkpointed only from the
//! outputs' acknowledgements, so a crash re-sends, never skips.

pub mod buffer;
pub mod checkpoint;
pub mod config;
pub mod deadletter;
pub mod event;
pub mod json;
pub mod lane;
pub mod metadata;
pub mod metrics;
pub mod parse;
pub mod pipeline;
pub mod random;
pub mod sinks;
pub mod tail;
pub mod time;
pub mod tracker;

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use orca_core::telemetry::{Admin, Metrics, TelemetryError, bind_admin, serve_admin};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::buffer::Budget;
use crate::checkpoint::{CheckpointError, Store};
use crate::config::Config;
use crate::metrics::ShipperMetrics;
use crate::pipeline::{OnFailure, Output, OutputHealth, write_checkpoints};
use crate::sinks::{Encoder, Sink, SinkError};
use crate::tail::watcher::{WatchError, Watcher, Wiring};
use crate::tracker::Tracker;

/// How long start-up waits for the cluster's pod list before reading files
/// without labels.
const CLUSTER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the shipper could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ShipperError {
    /// The checkpoint directory or file is unusable.
    #[error("checkpoints: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The admin server could not listen.
    #[error(transparent)]
    Admin(#[from] TelemetryError),
    /// An input could not start.
    #[error("input {input}: {source}")]
    Input {
        /// The input's name.
        input: String,
        /// What was wrong.
        source: WatchError,
    },
    /// An output could not be built.
    #[error("output {output}: {source}")]
    Output {
        /// The output's name.
        output: String,
        /// What was wrong.
        source: SinkError,
    },
    /// A reader thread could not be started.
    #[error("cannot start reader thread: {0}")]
    Thread(std::io::Error),
    /// A reader or output stopped on its own (a bug: it panicked).
    #[error("a pipeline task stopped unexpectedly; shut down to restart from the checkpoints")]
    TaskDied,
}

/// Signals that a reader thread ended, however it ended.
struct ExitNotice(Arc<Notify>);

impl Drop for ExitNotice {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

/// The cluster a shipper enriches pod logs from.
#[derive(Debug, Clone, Copy)]
pub struct Cluster<'a> {
    /// The cluster's store.
    pub store: &'a orca_core::store::Store,
    /// The node the shipper runs on: only its pods are watched.
    pub node: &'a str,
}

/// Runs the shipper until `shutdown` resolves, then stops reading, lets the
/// outputs deliver what was read (for at most `shutdown_grace`) and writes
/// a last checkpoint. Serves `/metrics` and `/healthz` on `admin.address`.
///
/// With `cluster`, events of pod log files carry the pod's labels.
pub async fn run(
    config: Config,
    cluster: Option<Cluster<'_>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ShipperError> {
    let mut shutdown = pin!(shutdown);
    // Polling once installs the signal handlers before the slow part of
    // start-up, so an early SIGTERM already takes the orderly path.
    if poll_fn(|cx| Poll::Ready(shutdown.as_mut().poll(cx).is_ready())).await {
        return Ok(());
    }
    let registry = Metrics::new();
    let metrics = ShipperMetrics::register(&registry);
    let listener = bind_admin(config.admin.address).await?;
    let store = Store::open(&config.checkpoint_dir)?;
    let loaded = store.load()?;
    if let Some((reason, kept)) = &loaded.corrupt {
        metrics.checkpoint_corrupt.inc();
        tracing::error!(
            path = %store.path().display(),
            kept = %kept.display(),
            %reason,
            "checkpoint file is damaged; kept aside, every file is read again from its start"
        );
    }
    let tracker = Tracker::new(config.outputs.len(), loaded.entries);
    let max_memory = usize::try_from(config.buffer.max_memory.bytes()).unwrap_or(usize::MAX);
    metrics
        .buffer_max
        .set(i64::try_from(max_memory).unwrap_or(i64::MAX));
    let budget = Budget::new(max_memory, metrics.buffer_fill.clone());

    let (abort_tx, abort_rx) = watch::channel(false);
    let mut outputs = JoinSet::new();
    let mut senders = Vec::new();
    let mut health = Vec::new();
    for (index, output) in config.outputs.iter().enumerate() {
        let sink = Sink::new(output).map_err(|source| ShipperError::Output {
            output: output.name.clone(),
            source,
        })?;
        let output_metrics = metrics.output(&output.name);
        let (tx, rx) = lane::lane(&output.buffer, output_metrics.dropped.clone());
        senders.push(tx);
        let dead_letters = output
            .dead_letter_path
            .clone()
            .unwrap_or_else(|| deadletter::default_path(&config.checkpoint_dir, &output.name));
        let output_health = OutputHealth::new(&output.name, output.unhealthy_after.get());
        health.push(Arc::clone(&output_health));
        outputs.spawn(
            Output {
                index,
                name: output.name.clone(),
                encoder: Encoder::new(output),
                sink,
                batch: output.batch.clone(),
                retry: output.retry.clone(),
                on_failure: OnFailure::new(output.on_failure, dead_letters),
                chunks: rx,
                tracker: Arc::clone(&tracker),
                metrics: output_metrics,
                health: output_health,
            }
            .run(abort_rx.clone()),
        );
    }

    let pods = match cluster {
        Some(cluster) => {
            let status = orca_core::watch::WatchMetrics::register(&registry).status("pods");
            let (pods, driver) = metadata::PodMetadata::follow(cluster.store, cluster.node, status);
            let follow = tokio::spawn(driver);
            if !pods.wait_synced(CLUSTER_WAIT).await {
                tracing::warn!(
                    "this node's pods are not listed yet; lines read meanwhile carry no labels"
                );
            }
            Some((pods, follow))
        }
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let reader_exit = Arc::new(Notify::new());
    let mut readers = Vec::new();
    for input in &config.inputs {
        let wiring = Wiring {
            tracker: Arc::clone(&tracker),
            budget: Arc::clone(&budget),
            outputs: senders.clone(),
            stop: Arc::clone(&stop),
            runtime: tokio::runtime::Handle::current(),
            metrics: metrics.input(&input.name),
            pods: pods.as_ref().map(|(p, _)| p.clone()),
        };
        let watcher = Watcher::new(input, wiring).map_err(|source| ShipperError::Input {
            input: input.name.clone(),
            source,
        })?;
        let notice = ExitNotice(Arc::clone(&reader_exit));
        let thread = std::thread::Builder::new()
            .name(format!("logshipper-{}", input.name))
            .spawn(move || {
                let _notice = notice;
                watcher.run();
            })
            .map_err(ShipperError::Thread)?;
        readers.push(thread);
    }
    // The readers hold the only senders now, so the outputs end once they do.
    drop(senders);

    let (stop_checkpoints, checkpoints_stopped) = watch::channel(false);
    let checkpoints = tokio::spawn(write_checkpoints(
        store,
        Arc::clone(&tracker),
        metrics.clone(),
        checkpoints_stopped,
    ));
    let (stop_admin, admin_stopped) = watch::channel(false);
    let admin = Admin::new(registry).health(move || {
        let unhealthy: Vec<String> = health.iter().filter_map(|h| h.check().err()).collect();
        if unhealthy.is_empty() {
            Ok(())
        } else {
            Err(unhealthy.join("; "))
        }
    });
    let admin = tokio::spawn(serve_admin(listener, admin, async move {
        let mut stopped = admin_stopped;
        let _ = stopped.wait_for(|stop| *stop).await;
    }));
    tracing::info!(
        inputs = config.inputs.len(),
        outputs = config.outputs.len(),
        admin = %config.admin.address,
        "log shipper running"
    );

    let mut result = Ok(());
    tokio::select! {
        () = &mut shutdown => {}
        () = reader_exit.notified() => result = Err(ShipperError::TaskDied),
        Some(_) = outputs.join_next() => result = Err(ShipperError::TaskDied),
    }
    if result.is_err() {
        tracing::error!("a reader or output stopped unexpectedly; shutting down");
    }

    stop.store(true, Ordering::Relaxed);
    let joined = tokio::task::spawn_blocking(move || {
        readers
            .into_iter()
            .map(std::thread::JoinHandle::join)
            .all(|joined| joined.is_ok())
    })
    .await;
    if !matches!(joined, Ok(true)) {
        result = Err(ShipperError::TaskDied);
    }
    let drained = tokio::time::timeout(config.shutdown_grace.get(), async {
        while outputs.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            grace = %config.shutdown_grace,
            "outputs still busy after the grace period; what they hold is read again on the next start"
        );
        let _ = abort_tx.send(true);
        while outputs.join_next().await.is_some() {}
    }
    let _ = stop_checkpoints.send(true);
    let _ = checkpoints.await;
    let _ = stop_admin.send(true);
    let _ = admin.await;
    if let Some((_, follow)) = pods {
        follow.abort();
    }
    tracing::info!("log shipper stopped");
    result
}
