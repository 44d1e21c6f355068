//! Finding and following files: globs, fingerprints, and the reader.

pub mod fingerprint;
pub mod glob;
pub mod watcher;
