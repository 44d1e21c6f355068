//! Orca's shared core: API objects, the etcd store, the watch pipeline,
//! leader election, configuration and telemetry. Every component builds on
//! these pieces and on nothing of each other's.

pub mod api;
pub mod config;
pub mod image;
pub mod leader;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod validation;
pub mod watch;
pub mod yaml;
