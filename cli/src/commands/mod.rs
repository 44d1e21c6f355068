//! One file per verb.

pub mod apply;
pub mod delete;
pub mod describe;
pub mod get;
pub mod ingress;
pub mod logshipper;
pub mod master;
pub mod node;
pub mod node_proxy;

use anyhow::Context;
use orca_core::api::Kind;

/// The kind a user named on the command line.
pub fn kind_arg(name: &str) -> anyhow::Result<&'static Kind> {
    Kind::lookup(name).with_context(|| {
        let known: Vec<&str> = Kind::all().iter().map(|k| k.plural).collect();
        format!(
            "the server doesn't have a resource type {name:?} (known: {})",
            known.join(", ")
        )
    })
}
