//! One way for a command to change a live object: read, change, write
//! back guarded by its resourceVersion, again on a conflict.

use orca_core::api::Kind;
use orca_core::store::{Error, Store};
use serde_json::Value;

/// Conflicts retried before the command gives up.
const ATTEMPTS: usize = 5;

/// Reads the object, lets `change` edit it, writes it back; returns whether
/// anything changed. A concurrent writer's conflict is retried on a fresh
/// read.
pub async fn change_object(
    store: &Store,
    kind: &Kind,
    namespace: Option<&str>,
    name: &str,
    mut change: impl FnMut(&mut Value) -> anyhow::Result<()>,
) -> anyhow::Result<bool> {
    let mut attempt = 1;
    loop {
        let live = store.get_value(kind, namespace, name).await?;
        let mut edited = live.clone();
        change(&mut edited)?;
        if edited == live {
            return Ok(false);
        }
        match store.update_value(kind, edited).await {
            Ok(_) => return Ok(true),
            Err(Error::Conflict { .. }) if attempt < ATTEMPTS => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    }
}
