//! Orca's kubelet: runs the pods bound to its node. [`agent`] is the
//! kubelet itself: the node's registration and heartbeat ([`node`]), pods'
//! sandboxes ([`sandbox`], [`network`]), images ([`image`]), containers
//! under runc and their monitors ([`runtime`], [`container`]), status
//! ([`status`]) and the logs/exec server. [`hollow`] nodes stand in for
//! many kubelets in tests and benchmarks.

pub mod agent;
pub mod config;
pub mod container;
pub mod hollow;
pub mod image;
pub mod network;
pub mod node;
pub mod probe;
pub mod runtime;
pub mod sandbox;
mod server;
pub mod status;
