//! `orca scale KIND NAME --replicas N`: set a workload's `spec.replicas`.

use anyhow::bail;
use orca_core::store::Store;
use serde_json::Value;

use super::change::change_object;
use crate::printer::resource_name;

/// Arguments of `orca scale`.
#[derive(clap::Args)]
pub struct Args {
    /// Kind of the object (`deployments`, `deploy`, `rs`, ...).
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// The number of replicas wanted.
    #[arg(long)]
    pub replicas: i32,
    /// Namespace of the object.
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// Sets `spec.replicas`; prints `KIND/NAME scaled`.
pub async fn run(store: &Store, args: Args) -> anyhow::Result<bool> {
    let kind = super::kind_arg(&args.kind)?;
    if !matches!(kind.kind, "Deployment" | "ReplicaSet") {
        bail!(
            "{} cannot be scaled: only deployments and replicasets have replicas",
            kind.plural
        );
    }
    let namespace = super::namespace_arg(kind, args.namespace.as_deref());
    change_object(store, kind, namespace, &args.name, |obj| {
        obj["spec"]["replicas"] = Value::from(args.replicas);
        Ok(())
    })
    .await?;
    println!("{}/{} scaled", resource_name(kind), args.name);
    Ok(true)
}
