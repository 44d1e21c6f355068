//! The one watch pipeline every component builds on, after kube-rs:
//! [`watcher`] (list, then watch from the list's revision) → [`reflector`]
//! (an in-memory store that swaps in only complete lists) → [`Controller`]
//! (deduplicated, never-concurrent reconciles per object).

mod controller;
mod reflector;
mod watcher;

pub use controller::{Action, Controller};
pub use reflector::{ObjectKey, Reader, Writer, reflector, store};
pub use watcher::{Event, watcher};
