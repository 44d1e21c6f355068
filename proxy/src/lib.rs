//! Orca's data-plane proxies: the L7 ingress proxy and the nftables service proxy.

pub mod ingress;
pub mod memory;
pub mod nftables;
