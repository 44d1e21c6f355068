//! The outputs' side: batching, delivery with retries, acknowledgement,
//! and the checkpoint writer that follows the acknowledgements.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use orca_core::telemetry::Throttle;
use tokio::sync::mpsc::Receiver;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::checkpoint::Store;
use crate::config::{BatchConfig, FailureAction, RetryConfig};
use crate::deadletter;
use crate::lane::{Item, LaneReceiver};
use crate::metrics::{OutputMetrics, ShipperMetrics};
use crate::random::random_u64;
use crate::sinks::{Batch, Encoder, Payload, Sink, SinkError, Slice};
use crate::tracker::Tracker;

/// Pause before retrying a failed checkpoint write.
const CHECKPOINT_RETRY: Duration = Duration::from_secs(1);

/// Batches an output may have acknowledged beyond the last written
/// checkpoint. Together with the batch in flight this bounds what a crash
/// re-sends; it also stops outputs from running ahead of a checkpoint
/// directory that cannot be written. A checkpoint write costs two fsyncs
/// (about 5 ms on this kind of disk) and covers every ack before it, so the
/// bound must let an output deliver for that long: with 2, the output
/// waited on the disk and shipped at 0.3x the raw copy rate.
pub const UNSAVED_BATCHES: u64 = 8;

/// Payload buffers kept for reuse per output: one being encoded, one
/// queued, one being sent.
const PAYLOAD_BUFFERS: usize = 3;

/// How often the age of an output's oldest unacknowledged event is
/// published as a metric.
const AGE_PERIOD: Duration = Duration::from_secs(1);

/// Most "batch given up" errors logged per output in this period; the
/// metrics count every one.
const GIVE_UP_LOG_PERIOD: Duration = Duration::from_secs(10);

/// What becomes of a batch an output gives up on.
#[derive(Debug, Clone)]
pub enum OnFailure {
    /// Appended to this dead-letter file.
    DeadLetter(PathBuf),
    /// Dropped.
    Drop,
}

impl OnFailure {
    /// The policy `action` names, dead letters going to `path`.
    pub fn new(action: FailureAction, path: PathBuf) -> Self {
        match action {
            FailureAction::DeadLetter => Self::DeadLetter(path),
            FailureAction::Drop => Self::Drop,
        }
    }
}

/// What `/healthz` reads of one output: since when its oldest
/// unacknowledged event has waited.
#[derive(Debug)]
pub struct OutputHealth {
    name: String,
    unhealthy_after: Duration,
    waiting_since: Mutex<Option<std::time::Instant>>,
}

impl OutputHealth {
    /// An output that is unhealthy once an event waited `unhealthy_after`.
    pub fn new(name: &str, unhealthy_after: Duration) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            unhealthy_after,
            waiting_since: Mutex::new(None),
        })
    }

    fn set(&self, since: Option<std::time::Instant>) {
        *self
            .waiting_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = since;
    }

    /// How long the oldest unacknowledged event has waited (zero if none).
    pub fn age(&self) -> Duration {
        self.waiting_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// `Err` with a sentence naming the output once it has not delivered
    /// for `unhealthy_after`.
    pub fn check(&self) -> Result<(), String> {
        let age = self.age();
        if age < self.unhealthy_after {
            return Ok(());
        }
        Err(format!(
            "output {} has not delivered for {}s (unhealthy_after {}s)",
            self.name,
            age.as_secs(),
            self.unhealthy_after.as_secs()
        ))
    }
}

/// One output: takes chunks from its queue, delivers them in batches.
pub struct Output {
    /// The output's position, under which the tracker records its acks.
    pub index: usize,
    /// The configured name, for logs.
    pub name: String,
    /// Turns batches into payloads.
    pub encoder: Encoder,
    /// Where payloads go.
    pub sink: Sink,
    /// Batching limits.
    pub batch: BatchConfig,
    /// Back-off between attempts, and how many.
    pub retry: RetryConfig,
    /// What becomes of batches given up on.
    pub on_failure: OnFailure,
    /// Chunks from the readers.
    pub chunks: LaneReceiver,
    /// Where acknowledgements are recorded.
    pub tracker: Arc<Tracker>,
    /// The output's counters.
    pub metrics: OutputMetrics,
    /// What `/healthz` reads.
    pub health: Arc<OutputHealth>,
}

/// How one batch's delivery ended.
enum Delivery {
    Sent,
    /// Given up: rejected for good, or out of attempts.
    Failed(SinkError, u32),
    Aborted,
}

impl Output {
    /// Delivers until the readers are gone and everything they sent is
    /// delivered, or until `abort` turns true (undelivered events are then
    /// not acknowledged, and read again on the next start).
    pub async fn run(self, mut abort: watch::Receiver<bool>) {
        let Self {
            index,
            name,
            encoder,
            mut sink,
            batch,
            retry,
            on_failure,
            chunks,
            tracker,
            metrics,
            health,
        } = self;
        let gzip = matches!(encoder, Encoder::Gzip(_));
        // The next batch is encoded on the blocking pool while this one is
        // sent, so encoding and writing use both cores.
        // Delivered payloads go back to be encoded into again: a few buffers
        // reused rather than one allocated and freed per batch across
        // threads, which the allocator would keep as resident memory.
        let (encoded_tx, mut encoded) = tokio::sync::mpsc::channel(1);
        let (spare_tx, spare) = tokio::sync::mpsc::channel(PAYLOAD_BUFFERS);
        let encoding = tokio::spawn(encode_batches(
            chunks,
            batch,
            Arc::new(encoder),
            encoded_tx,
            spare,
        ));
        let ages = tokio::spawn({
            let (health, gauge) = (Arc::clone(&health), metrics.oldest_age.clone());
            async move {
                let mut tick = tokio::time::interval(AGE_PERIOD);
                loop {
                    tick.tick().await;
                    gauge.set(health.age().as_secs_f64());
                }
            }
        });
        let mut give_up_log = Throttle::new(GIVE_UP_LOG_PERIOD);
        while let Some((batch, payload)) = encoded.recv().await {
            if !batch.is_empty() {
                health.set(batch.read_at());
                let events = batch.len() as u64;
                match deliver(&mut sink, &name, &retry, &metrics, &payload, &mut abort).await {
                    Delivery::Sent => {
                        metrics.events.inc_by(events);
                        metrics.bytes.inc_by(payload.bytes.len() as u64);
                    }
                    Delivery::Failed(err, attempts) => {
                        metrics.failed.inc_by(events);
                        // A gzip output's dead letter is its body before
                        // compression, readable and sendable again.
                        let body = if gzip {
                            &payload.scratch
                        } else {
                            &payload.bytes
                        };
                        let reason = match attempts {
                            1 => err.to_string(),
                            n => format!("{err} (after {n} attempts)"),
                        };
                        let gave_up = GiveUp {
                            output: &name,
                            reason: &reason,
                            events,
                            body,
                        };
                        if !gave_up
                            .handle(&on_failure, &retry, &metrics, &mut give_up_log, &mut abort)
                            .await
                        {
                            break;
                        }
                    }
                    Delivery::Aborted => break,
                }
                health.set(None);
            }
            if batch.skipped_events > 0 {
                tracing::debug!(output = %name, events = batch.skipped_events, "skipped while the output's queue was full");
            }
            let acks = batch.acks();
            // Returns the chunks to the memory budget before waiting below.
            drop(batch);
            let _ = spare_tx.try_send(payload);
            let number = tracker.ack(index, &acks);
            if let Some(wait_for) = number.checked_sub(UNSAVED_BATCHES) {
                tokio::select! {
                    () = tracker.wait_saved(index, wait_for) => {}
                    _ = abort.wait_for(|abort| *abort) => break,
                }
            }
        }
        ages.abort();
        encoding.abort();
        let _ = encoding.await;
    }
}

/// A batch given up on, on its way to the dead-letter file or the floor.
struct GiveUp<'a> {
    output: &'a str,
    reason: &'a str,
    events: u64,
    body: &'a [u8],
}

impl GiveUp<'_> {
    /// Dead-letters or drops the batch; false if aborted first. A
    /// dead-letter file that cannot be written is retried like a sink:
    /// the batch is acknowledged only once it is safe there.
    async fn handle(
        &self,
        on_failure: &OnFailure,
        retry: &RetryConfig,
        metrics: &OutputMetrics,
        log: &mut Throttle,
        abort: &mut watch::Receiver<bool>,
    ) -> bool {
        let Self {
            output,
            reason,
            events,
            body,
        } = *self;
        match on_failure {
            OnFailure::Drop => {
                metrics.dropped.inc_by(events);
                if let Some(held_back) = log.allow() {
                    tracing::error!(
                        output,
                        reason,
                        events,
                        held_back,
                        "batch given up and dropped (on_failure: drop)"
                    );
                }
            }
            OnFailure::DeadLetter(path) => {
                let mut backoff = retry.initial_backoff.get();
                loop {
                    let record = (
                        path.clone(),
                        output.to_string(),
                        reason.to_string(),
                        body.to_vec(),
                    );
                    let written = tokio::task::spawn_blocking(move || {
                        let (path, output, reason, body) = record;
                        deadletter::append(&path, &output, &reason, events, &body)
                    })
                    .await
                    .unwrap_or_else(|err| Err(std::io::Error::other(err)));
                    match written {
                        Ok(()) => break,
                        Err(err) => {
                            tracing::error!(output, path = %path.display(), %err, "cannot write the dead-letter file; retrying");
                            tokio::select! {
                                () = tokio::time::sleep(jitter(backoff)) => {}
                                _ = abort.wait_for(|abort| *abort) => return false,
                            }
                            backoff = (backoff * 2).min(retry.max_backoff.get());
                        }
                    }
                }
                metrics.dead_lettered.inc_by(events);
                if let Some(held_back) = log.allow() {
                    tracing::error!(output, reason, events, held_back, path = %path.display(), "batch given up; kept in the dead-letter file");
                }
            }
        }
        true
    }
}

/// Cuts the chunk stream into batches and encodes each, one ahead of delivery.
///
/// The next batch is gathered while the one before it is encoded: a batch
/// holds more chunks than the channel, so gathering only after encoding
/// would stop the reader for every encoding, and reading, encoding and
/// sending would take turns on one core instead of sharing two.
async fn encode_batches(
    mut chunks: LaneReceiver,
    limits: BatchConfig,
    encoder: Arc<Encoder>,
    encoded: tokio::sync::mpsc::Sender<(Batch, Payload)>,
    mut spare: Receiver<Payload>,
) {
    let mut rest = None;
    let mut in_flight = None;
    loop {
        // The encoded batch is handed on as soon as it is done, not once
        // the next one is full: a quiet input must not hold it back.
        let hand_on = async {
            let Some(job) = in_flight.take() else {
                return true;
            };
            // An encoder that panicked is a bug; ending here ends the
            // output, which stops the shipper.
            match job.await {
                Ok(done) => encoded.send(done).await.is_ok(),
                Err(_) => false,
            }
        };
        let (next, handed_on) = tokio::join!(next_batch(&mut chunks, &limits, &mut rest), hand_on);
        let (Some(batch), true) = (next, handed_on) else {
            return;
        };
        let encoder = Arc::clone(&encoder);
        let mut payload = spare.try_recv().unwrap_or_default();
        in_flight = Some(tokio::task::spawn_blocking(move || {
            encoder.encode(&batch, &mut payload);
            (batch, payload)
        }));
    }
}

/// Fills a batch up to its limits or until `max_wait` after its first event;
/// `None` once the queue is closed and drained. Skipped markers ride along
/// in the batch without counting towards its limits.
async fn next_batch(
    chunks: &mut LaneReceiver,
    limits: &BatchConfig,
    rest: &mut Option<Slice>,
) -> Option<Batch> {
    let whole = |chunk: Arc<crate::event::Chunk>| Slice {
        to: chunk.events.len(),
        chunk,
        from: 0,
    };
    let (mut batch, mut events, mut bytes) = (Batch::default(), 0, 0);
    let mut next = match rest.take() {
        Some(slice) => slice,
        None => match chunks.recv().await? {
            Item::Chunk(chunk) => whole(chunk),
            Item::Skipped { acks, events } => {
                // A marker alone is a batch: nothing waits behind it.
                batch.skipped.extend(acks);
                batch.skipped_events += events;
                return Some(batch);
            }
        },
    };
    let deadline = Instant::now() + limits.max_wait.get();
    let max_bytes = usize::try_from(limits.max_bytes.bytes()).unwrap_or(usize::MAX);
    loop {
        let mut to = next.from;
        while to < next.to && events < limits.max_events && bytes < max_bytes {
            let event = &next.chunk.events[to];
            bytes += (event.end - event.start) as usize;
            events += 1;
            to += 1;
        }
        if to > next.from {
            batch.slices.push(Slice {
                chunk: Arc::clone(&next.chunk),
                from: next.from,
                to,
            });
        }
        if to < next.to {
            *rest = Some(Slice { from: to, ..next });
            break;
        }
        if events >= limits.max_events || bytes >= max_bytes {
            break;
        }
        let item = match chunks.try_recv() {
            Ok(item) => item,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                match tokio::time::timeout_at(deadline, chunks.recv()).await {
                    Ok(Some(item)) => item,
                    Ok(None) | Err(_) => break,
                }
            }
        };
        next = match item {
            Item::Chunk(chunk) => whole(chunk),
            Item::Skipped { acks, events } => {
                batch.skipped.extend(acks);
                batch.skipped_events += events;
                break;
            }
        };
    }
    Some(batch)
}

/// Tries until the sink acknowledges, the batch is rejected for good, or
/// `retry.max_attempts` are spent.
async fn deliver(
    sink: &mut Sink,
    name: &str,
    retry: &RetryConfig,
    metrics: &OutputMetrics,
    payload: &Payload,
    abort: &mut watch::Receiver<bool>,
) -> Delivery {
    let mut backoff = retry.initial_backoff.get();
    let mut attempts = 0;
    let delivery = loop {
        let result = tokio::select! {
            result = sink.deliver(payload) => result,
            _ = abort.wait_for(|abort| *abort) => break Delivery::Aborted,
        };
        let Err(err) = result else {
            break Delivery::Sent;
        };
        attempts += 1;
        if err.is_permanent() || (retry.max_attempts > 0 && attempts >= retry.max_attempts) {
            break Delivery::Failed(err, attempts);
        }
        metrics.retries.inc();
        metrics.retrying.set(1);
        let wait = jitter(backoff);
        tracing::warn!(output = %name, %err, retry_in = ?wait, "delivery failed; retrying");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = abort.wait_for(|abort| *abort) => break Delivery::Aborted,
        }
        backoff = (backoff * 2).min(retry.max_backoff.get());
    };
    metrics.retrying.set(0);
    delivery
}

/// "Equal jitter": half the back-off plus a random part of the other half,
/// so outputs that failed together do not retry together.
fn jitter(backoff: Duration) -> Duration {
    let half = backoff / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_nanos(random_u64() % nanos)
}

/// Writes a checkpoint after every acknowledgement (coalescing those that
/// arrive during a write), and a last one once `stop` turns true.
pub async fn write_checkpoints(
    store: Store,
    tracker: Arc<Tracker>,
    metrics: ShipperMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let mut failed = false;
    loop {
        let stopping = tokio::select! {
            () = tracker.changed(), if !failed => false,
            () = tokio::time::sleep(CHECKPOINT_RETRY), if failed => false,
            _ = stop.wait_for(|stop| *stop) => true,
        };
        failed = !write_checkpoint(&store, &tracker, &metrics).await;
        if stopping {
            return;
        }
    }
}

async fn write_checkpoint(store: &Store, tracker: &Tracker, metrics: &ShipperMetrics) -> bool {
    let snapshot = tracker.snapshot();
    metrics.files.set(snapshot.files as i64);
    metrics
        .checkpoint_lag
        .set(i64::try_from(snapshot.lag_bytes).unwrap_or(i64::MAX));
    let store = store.clone();
    let marks = snapshot.marks;
    let entries = snapshot.entries;
    match tokio::task::spawn_blocking(move || store.save(&entries)).await {
        Ok(Ok(())) => {
            metrics.checkpoint_writes.inc();
            tracker.saved(marks);
            true
        }
        Ok(Err(err)) => {
            metrics.checkpoint_errors.inc();
            tracing::error!(%err, "cannot write checkpoint; retrying");
            false
        }
        Err(err) => {
            metrics.checkpoint_errors.inc();
            tracing::error!(%err, "checkpoint writer failed; retrying");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileField, OutputBufferConfig, OutputConfig, OutputType};
    use crate::event::{Chunk, FileId, Source};
    use crate::lane::{Offer, lane};
    use orca_core::config::{ByteSize, Duration as ConfigDuration};
    use prometheus_client::metrics::counter::Counter;

    fn chunk(events: usize, first_commit: u64) -> Arc<Chunk> {
        let mut chunk = Chunk::new(
            FileId(1),
            Arc::new(Source::new("in".into(), "/f".into(), FileField::Auto)),
        );
        for i in 0..events {
            chunk.push("0123456789", 0, None, first_commit + i as u64 + 1);
        }
        Arc::new(chunk)
    }

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..1000 {
            let wait = jitter(Duration::from_millis(100));
            assert!(wait >= Duration::from_millis(50) && wait < Duration::from_millis(100));
        }
    }

    #[tokio::test]
    async fn an_encoded_batch_is_handed_on_while_the_input_is_quiet() {
        let limits = BatchConfig {
            max_events: 2,
            max_bytes: ByteSize::mib(1),
            max_wait: ConfigDuration::from_millis(10),
        };
        let (mut tx, rx) = lane(&OutputBufferConfig::default(), Counter::default());
        let (encoded_tx, mut encoded) = tokio::sync::mpsc::channel(1);
        let (_spare_tx, spare) = tokio::sync::mpsc::channel(1);
        let output = OutputConfig {
            name: "out".into(),
            kind: OutputType::Tcp,
            ..OutputConfig::default()
        };
        let encoding = tokio::spawn(encode_batches(
            rx,
            limits,
            Arc::new(Encoder::new(&output)),
            encoded_tx,
            spare,
        ));
        // Three events: a full batch, then one that waits out `max_wait`;
        // the channel stays open and nothing more comes.
        assert_eq!(tx.offer(&chunk(3, 0)), Offer::Queued);
        for expected in [2, 1] {
            let (batch, payload) =
                tokio::time::timeout(std::time::Duration::from_secs(10), encoded.recv())
                    .await
                    .expect("handed on without more input")
                    .expect("encoder running");
            assert_eq!(batch.len(), expected);
            assert_eq!(
                payload.bytes.iter().filter(|&&b| b == b'\n').count(),
                expected
            );
        }
        drop(tx);
        encoding.await.expect("encoder ends once the input does");
    }

    #[tokio::test]
    async fn batches_split_chunks_at_the_limits() {
        let limits = BatchConfig {
            max_events: 4,
            max_bytes: ByteSize(25),
            max_wait: ConfigDuration::from_millis(10),
        };
        let (mut tx, mut rx) = lane(&OutputBufferConfig::default(), Counter::default());
        assert_eq!(tx.offer(&chunk(5, 0)), Offer::Queued);
        assert_eq!(tx.offer(&chunk(2, 5)), Offer::Queued);
        drop(tx);
        let mut rest = None;
        let mut sizes = Vec::new();
        while let Some(batch) = next_batch(&mut rx, &limits, &mut rest).await {
            sizes.push((batch.len(), batch.acks()));
        }
        // 25 bytes allow three 10-byte lines (the limit is checked before each).
        assert_eq!(
            sizes,
            [
                (3, vec![(FileId(1), 3)]),
                (3, vec![(FileId(1), 6)]),
                (1, vec![(FileId(1), 7)])
            ]
        );
    }
}
