//! The ingress proxy: Orca's L7 load balancer, run standalone from a YAML
//! file (`orca ingress --config FILE`) or from the cluster's Ingress
//! objects (`--etcd URL`).
//!
//! The modules form layers; each uses only those below it:
//!
//! 1. Wire formats and policies: `h1` (HTTP/1.1 heads and the forwarded
//!    head), `body` (HTTP/1.1 body framing), `h2_body` (bodies handed to
//!    hyper), `failure`, `config`, `budget`, `pool`, `access_log`,
//!    `metrics`, `tls`.
//! 2. Upstreams and routes: `upstream` (endpoints, balancing, health, the
//!    retry budget), `routes` (the route table).
//! 3. The worker thread's context: `worker` (shared state, pools, buffers).
//! 4. Talking to upstreams: `retry` (which endpoint next), `dispatch` (the
//!    one path every request takes: connections opened or pooled, one
//!    attempt after another, endpoints charged), `h1_upstream` (a request
//!    in HTTP/2 form over HTTP/1.1), `h2_upstream` (a request in HTTP/2
//!    form to any upstream), `h1_reply` (answers the proxy writes to
//!    HTTP/1.1 clients itself), `bridge` (HTTP/1.1 clients of h2c
//!    upstreams).
//! 5. Front ends: `h2_server` (HTTP/2 clients), `h1_server` (HTTP/1.1
//!    clients, and the switch to HTTP/2 on the h2c preface).
//! 6. The process: `server` (listeners, reloads, shutdown, the admin
//!    server) and `cluster` (routes and certificates from the cluster).

pub mod access_log;
pub mod body;
pub mod bridge;
pub mod budget;
pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod failure;
pub mod h1;
pub mod h1_reply;
pub mod h1_server;
pub mod h1_upstream;
pub mod h2_body;
pub mod h2_server;
pub mod h2_upstream;
pub mod metrics;
pub mod pool;
pub mod retry;
pub mod routes;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod worker;
