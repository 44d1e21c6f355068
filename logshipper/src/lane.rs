//! An output's own queue between the readers and its batches, bounded in
//! bytes: how far one output may fall behind the others.
//!
//! When the queue is full, `block` makes the reader wait (nothing is lost;
//! the other outputs stop once they are that far ahead), `drop_newest`
//! skips the output for the chunk. A skipped chunk is still acknowledged
//! for that output, but only after everything queued before it, so the
//! checkpoint never passes an event the output has yet to send: the reader
//! remembers the skipped offsets and hands them on, as one marker, once
//! the queue has room.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::config::{OutputBufferConfig, WhenFull};
use crate::event::{Chunk, FileId};

/// What travels to an output.
#[derive(Debug)]
pub enum Item {
    /// Events to send.
    Chunk(Arc<Chunk>),
    /// Events this output skipped while its queue was full: done with, for
    /// the checkpoint, once everything before them is.
    Skipped {
        /// Per file, the commit offset past the last skipped event.
        acks: Vec<(FileId, u64)>,
        /// How many events were skipped.
        events: u64,
    },
}

#[derive(Debug)]
struct Shared {
    queued: AtomicUsize,
    max: usize,
    when_full: WhenFull,
    freed: Notify,
}

/// A reader's end of one output's queue.
#[derive(Debug)]
pub struct Lane {
    tx: UnboundedSender<Item>,
    shared: Arc<Shared>,
    /// Offsets skipped and not handed on yet; one entry per file at most.
    skipped: BTreeMap<FileId, u64>,
    skipped_events: u64,
    dropped: Counter,
}

/// What [`Lane::offer`] did with a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued.
    Queued,
    /// Skipped for this output (`drop_newest`, queue full).
    Dropped,
    /// The queue is full and the reader must wait (`block`).
    Full,
    /// The output has gone.
    Closed,
}

/// The output's end of its queue.
#[derive(Debug)]
pub struct LaneReceiver {
    rx: UnboundedReceiver<Item>,
    shared: Arc<Shared>,
}

/// A queue with `config`'s bound; events skipped while it is full are
/// counted in `dropped`.
pub fn lane(config: &OutputBufferConfig, dropped: Counter) -> (Lane, LaneReceiver) {
    let (tx, rx) = unbounded_channel();
    let shared = Arc::new(Shared {
        queued: AtomicUsize::new(0),
        max: usize::try_from(config.max_bytes.bytes()).unwrap_or(usize::MAX),
        when_full: config.when_full,
        freed: Notify::new(),
    });
    (
        Lane {
            tx,
            shared: Arc::clone(&shared),
            skipped: BTreeMap::new(),
            skipped_events: 0,
            dropped,
        },
        LaneReceiver { rx, shared },
    )
}

impl Clone for Lane {
    /// Another reader's end; what this one skipped stays with it.
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            shared: Arc::clone(&self.shared),
            skipped: BTreeMap::new(),
            skipped_events: 0,
            dropped: self.dropped.clone(),
        }
    }
}

impl Lane {
    /// Queues `chunk` if it fits; an empty queue takes any chunk, so one
    /// larger than the bound cannot wait for ever.
    pub fn offer(&mut self, chunk: &Arc<Chunk>) -> Offer {
        let size = chunk.memory();
        let queued = self.shared.queued.load(Ordering::Acquire);
        if queued > 0 && queued + size > self.shared.max {
            if self.shared.when_full == WhenFull::Block {
                return Offer::Full;
            }
            if let Some(last) = chunk.events.last() {
                let commit = self.skipped.entry(chunk.file).or_default();
                *commit = (*commit).max(last.commit);
                let events = chunk.events.len() as u64;
                self.skipped_events += events;
                self.dropped.inc_by(events);
            }
            return Offer::Dropped;
        }
        if !self.hand_on_skipped() {
            return Offer::Closed;
        }
        self.shared.queued.fetch_add(size, Ordering::AcqRel);
        if self.tx.send(Item::Chunk(Arc::clone(chunk))).is_err() {
            return Offer::Closed;
        }
        Offer::Queued
    }

    /// Hands on what was skipped once the output has emptied its queue
    /// (a reader gone idle has no next chunk to send it before); false if
    /// the output has gone.
    pub fn flush_if_empty(&mut self) -> bool {
        if self.skipped.is_empty() || self.shared.queued.load(Ordering::Acquire) > 0 {
            return true;
        }
        self.hand_on_skipped()
    }

    fn hand_on_skipped(&mut self) -> bool {
        if self.skipped.is_empty() {
            return true;
        }
        let acks = std::mem::take(&mut self.skipped).into_iter().collect();
        let events = std::mem::take(&mut self.skipped_events);
        self.tx.send(Item::Skipped { acks, events }).is_ok()
    }

    /// Resolves when the output took something off the queue (or at once,
    /// if it did since the last call).
    pub async fn freed(&self) {
        self.shared.freed.notified().await;
    }
}

impl LaneReceiver {
    /// The next item; `None` once every reader has gone and all is taken.
    pub async fn recv(&mut self) -> Option<Item> {
        let item = self.rx.recv().await;
        self.taken(item.as_ref());
        item
    }

    /// The next item if one is queued now.
    pub fn try_recv(&mut self) -> Result<Item, TryRecvError> {
        let item = self.rx.try_recv();
        self.taken(item.as_ref().ok());
        item
    }

    fn taken(&self, item: Option<&Item>) {
        if let Some(Item::Chunk(chunk)) = item {
            self.shared
                .queued
                .fetch_sub(chunk.memory(), Ordering::AcqRel);
            self.shared.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileField;
    use crate::event::Source;
    use orca_core::config::ByteSize;

    fn chunk(file: u64, commits: &[u64]) -> Arc<Chunk> {
        let mut chunk = Chunk::new(
            FileId(file),
            Arc::new(Source::new("in".into(), "/f".into(), FileField::Auto)),
        );
        for &commit in commits {
            chunk.push(&"x".repeat(100), 0, None, commit);
        }
        Arc::new(chunk)
    }

    fn config(max: u64, when_full: WhenFull) -> OutputBufferConfig {
        OutputBufferConfig {
            max_bytes: ByteSize(max),
            when_full,
        }
    }

    #[tokio::test]
    async fn block_refuses_once_full_and_takes_again_once_freed() {
        let first = chunk(1, &[10]);
        let (mut lane, mut rx) = lane(
            &config(first.memory() as u64, WhenFull::Block),
            Counter::default(),
        );
        assert_eq!(lane.offer(&first), Offer::Queued);
        assert_eq!(lane.offer(&chunk(1, &[20])), Offer::Full);
        assert!(matches!(rx.recv().await, Some(Item::Chunk(_))));
        lane.freed().await;
        assert_eq!(lane.offer(&chunk(1, &[20])), Offer::Queued);
    }

    #[tokio::test]
    async fn skipped_chunks_are_acknowledged_after_what_was_queued_before() {
        let dropped = Counter::default();
        let first = chunk(1, &[10]);
        let (mut lane, mut rx) = lane(
            &config(first.memory() as u64, WhenFull::DropNewest),
            dropped.clone(),
        );
        assert_eq!(lane.offer(&first), Offer::Queued);
        assert_eq!(lane.offer(&chunk(1, &[20, 30])), Offer::Dropped);
        assert_eq!(lane.offer(&chunk(2, &[5])), Offer::Dropped);
        assert_eq!(dropped.get(), 3);
        assert!(lane.flush_if_empty(), "still queued: nothing handed on");
        assert!(matches!(rx.try_recv(), Ok(Item::Chunk(_))));
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        assert!(lane.flush_if_empty());
        match rx.try_recv() {
            Ok(Item::Skipped { acks, events }) => {
                assert_eq!(acks, [(FileId(1), 30), (FileId(2), 5)]);
                assert_eq!(events, 3);
            }
            other => panic!("expected the skipped marker, got {other:?}"),
        }
        assert_eq!(lane.offer(&chunk(1, &[40])), Offer::Queued);
    }
}
