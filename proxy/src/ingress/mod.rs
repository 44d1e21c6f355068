//! The ingress proxy: Orca's L7 load balancer, run standalone from a YAML
//! file (`orca ingress --config FILE`) or from the cluster's Ingress
//! objects (`--etcd URL`).

pub mod access_log;
pub mod body;
pub mod bridge;
pub mod budget;
pub mod cluster;
pub mod config;
pub mod h1;
pub mod h1_upstream;
pub mod h2;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod retry;
pub mod routes;
pub mod server;
pub mod tls;
pub mod upstream;
