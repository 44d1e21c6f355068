//! Orca's control loops: deployment, replicaset, endpoints, node lifecycle and garbage collection.
