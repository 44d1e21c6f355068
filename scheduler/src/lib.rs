//! Orca's scheduler: filter, score and bind pods to nodes.
