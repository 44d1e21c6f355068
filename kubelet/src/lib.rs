//! Orca's kubelet: runs the pods bound to its node.
