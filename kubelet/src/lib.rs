//! Orca's kubelet: runs the pods bound to its node. Today: the node's
//! registration and Lease heartbeat ([`node`]), and hollow nodes
//! ([`hollow`]) that stand in for many kubelets in tests and benchmarks.

pub mod hollow;
pub mod node;
