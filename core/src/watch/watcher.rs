//! List-then-watch as an explicit state machine that never gives up:
//! `Listing → Initialising → Connecting → Watching`, back to `Connecting`
//! when the stream drops (resuming from the last revision seen) and back to
//! `Listing` when that revision has been compacted away.

use std::collections::VecDeque;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt, stream};

use super::status::WatchStatus;
use crate::store::{Error, View, WatchEvent};

/// What the watcher reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<K> {
    /// A (re-)list started; the objects that follow replace everything known.
    Init,
    /// One object of the list in progress.
    InitApply(K),
    /// The list is complete; readers may now act on it.
    InitDone,
    /// An object was created or changed.
    Apply(K),
    /// An object was deleted; this is its last state.
    Delete(K),
}

/// Delay before the first retry after an error; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between retries, so a restarted etcd is noticed quickly.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

enum State<K> {
    Listing,
    /// Handing out a list page by page, so a large kind is never held
    /// whole: a reader that keeps less than the objects needs less.
    Initialising {
        items: VecDeque<K>,
        revision: i64,
        next: Option<Vec<u8>>,
    },
    Connecting {
        revision: i64,
    },
    Watching {
        events: BoxStream<'static, Result<WatchEvent<K>, Error>>,
        revision: i64,
    },
}

struct Machine<K> {
    view: View<K>,
    state: State<K>,
    backoff: Duration,
    status: Option<WatchStatus>,
}

impl<K: Send + 'static> Machine<K> {
    async fn pause(&mut self) {
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Advances until there is one thing to report.
    /// One step, with the status kept current.
    async fn observed_step(&mut self) -> Result<Event<K>, Error> {
        let relisting = matches!(self.state, State::Listing);
        let item = self.step().await;
        if let Some(status) = &self.status {
            match &item {
                Err(e) => status.failed(e),
                // The first page alone is not in step yet; a re-list after
                // compaction is not a failure either.
                Ok(Event::Init) if relisting => status.relisting(),
                Ok(Event::InitApply(_) | Event::Init) => {}
                Ok(_) => status.good(),
            }
        }
        item
    }

    async fn step(&mut self) -> Result<Event<K>, Error> {
        loop {
            match std::mem::replace(&mut self.state, State::Listing) {
                State::Listing => match self.view.list_page(None, 0).await {
                    Ok(page) => {
                        self.backoff = FIRST_BACKOFF;
                        self.state = State::Initialising {
                            items: page.items.into(),
                            revision: page.revision,
                            next: page.next,
                        };
                        return Ok(Event::Init);
                    }
                    Err(e) => {
                        self.pause().await;
                        return Err(e);
                    }
                },
                State::Initialising {
                    mut items,
                    revision,
                    next,
                } => match (items.pop_front(), next) {
                    (Some(obj), next) => {
                        self.state = State::Initialising {
                            items,
                            revision,
                            next,
                        };
                        return Ok(Event::InitApply(obj));
                    }
                    (None, Some(from)) => match self.view.list_page(Some(from), revision).await {
                        Ok(page) => {
                            self.state = State::Initialising {
                                items: page.items.into(),
                                revision,
                                next: page.next,
                            };
                        }
                        // Compacted past the list's revision, or etcd
                        // gone: list again from the start.
                        Err(e) => {
                            self.pause().await;
                            return Err(e);
                        }
                    },
                    (None, None) => {
                        self.state = State::Connecting { revision };
                        return Ok(Event::InitDone);
                    }
                },
                State::Connecting { revision } => {
                    // etcd drops a deletion made at exactly the revision it
                    // compacts to from a watch that starts there, so a
                    // watch that would start at or below the compaction
                    // re-lists instead.
                    match self.view.compacted_past(revision).await {
                        Ok(false) => {}
                        Ok(true) => {
                            self.state = State::Listing;
                            return Err(Error::Compacted {
                                requested: revision + 1,
                                compacted: revision + 1,
                            });
                        }
                        Err(e) => {
                            self.state = State::Connecting { revision };
                            self.pause().await;
                            return Err(e);
                        }
                    }
                    match self.view.watch(revision + 1).await {
                        Ok(events) => {
                            // Re-established without an event to show for
                            // it: the status is told here.
                            if let Some(status) = &self.status {
                                status.good();
                            }
                            self.state = State::Watching { events, revision };
                        }
                        Err(e) => {
                            self.state = State::Connecting { revision };
                            self.pause().await;
                            return Err(e);
                        }
                    }
                }
                State::Watching {
                    mut events,
                    revision,
                } => match events.next().await {
                    Some(Ok(event)) => {
                        self.backoff = FIRST_BACKOFF;
                        let (revision, out) = match event {
                            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                                (self.view.revision_of(&o), Some(Event::Apply(o)))
                            }
                            WatchEvent::Deleted(o) => {
                                (self.view.revision_of(&o), Some(Event::Delete(o)))
                            }
                            WatchEvent::Progress(r) => (r.max(revision), None),
                        };
                        self.state = State::Watching { events, revision };
                        if let Some(out) = out {
                            return Ok(out);
                        }
                    }
                    Some(Err(e @ Error::Compacted { .. })) => {
                        self.state = State::Listing;
                        return Err(e);
                    }
                    Some(Err(e)) => {
                        self.state = State::Connecting { revision };
                        self.pause().await;
                        return Err(e);
                    }
                    None => self.state = State::Connecting { revision },
                },
            }
        }
    }
}

/// Watches every object of `view`, forever: errors are reported in the
/// stream and followed by a retry with back-off, never by the end of it.
pub fn watcher<K: Send + 'static>(
    view: View<K>,
) -> impl Stream<Item = Result<Event<K>, Error>> + Send {
    watch_with(view, None)
}

/// [`watcher`] that keeps `status` current (up, failing, recovered) and
/// logs its failures through it, rate-limited: a consumer need not log
/// the errors it is given again.
pub fn watcher_with_status<K: Send + 'static>(
    view: View<K>,
    status: WatchStatus,
) -> impl Stream<Item = Result<Event<K>, Error>> + Send {
    watch_with(view, Some(status))
}

fn watch_with<K: Send + 'static>(
    view: View<K>,
    status: Option<WatchStatus>,
) -> impl Stream<Item = Result<Event<K>, Error>> + Send {
    let machine = Machine {
        view,
        state: State::Listing,
        backoff: FIRST_BACKOFF,
        status,
    };
    stream::unfold(machine, |mut m| async move {
        let item = m.observed_step().await;
        Some((item, m))
    })
}
