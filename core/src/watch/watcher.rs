//! List-then-watch as an explicit state machine that never gives up:
//! `Listing → Initialising → Connecting → Watching`, back to `Connecting`
//! when the stream drops (resuming from the last revision seen) and back to
//! `Listing` when that revision has been compacted away.

use std::collections::VecDeque;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt, stream};

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
}

impl<K: Send + 'static> Machine<K> {
    async fn pause(&mut self) {
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Advances until there is one thing to report.
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
    let machine = Machine {
        view,
        state: State::Listing,
        backoff: FIRST_BACKOFF,
    };
    stream::unfold(machine, |mut m| async move {
        let item = m.step().await;
        Some((item, m))
    })
}
