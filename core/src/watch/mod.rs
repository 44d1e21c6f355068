//! The one watch pipeline every component builds on, after kube-rs and
//! client-go: [`watcher`] (list, then watch from the list's revision) →
//! [`reflector`] (an in-memory, indexed cache that swaps in only complete
//! lists) → [`Informers`] (one shared cache per kind and scope in a
//! process) → [`Controller`] (deduplicated, never-concurrent reconciles per
//! object, triggered by the objects it owns).

mod controller;
mod informer;
mod reflector;
mod status;
mod watcher;

pub use controller::{Action, Controller};
pub use informer::{Informer, Informers, Queued};
pub use reflector::{Change, ObjectKey, Reader, Writer, reflector, store};
pub use status::{WARN_PERIOD, WatchMetrics, WatchStatus};
pub use watcher::{Event, watcher, watcher_with_status};
