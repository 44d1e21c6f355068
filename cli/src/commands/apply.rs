//! `orca apply -f FILE|DIR|-`: create what is missing, update what changed.

use orca_core::store::{Error, Store};
use serde_json::{Map, Value};

use crate::manifest::Document;
use crate::printer::resource_name;

/// Arguments of `orca apply`.
#[derive(clap::Args)]
pub struct Args {
    /// File, directory or `-` (stdin) holding the manifests.
    #[arg(short = 'f', long)]
    pub filename: String,
    /// Namespace for objects that name none.
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// What applying one document did.
enum Outcome {
    Created,
    Configured,
    Unchanged,
}

/// Applies every document; prints one line per object. Returns whether all
/// of them were applied.
pub async fn run(store: &Store, docs: Vec<Document>) -> anyhow::Result<bool> {
    let mut all_ok = true;
    for doc in docs {
        let label = format!("{}/{}", resource_name(doc.kind), doc.name());
        match apply_one(store, &doc).await {
            Ok(Outcome::Created) => println!("{label} created"),
            Ok(Outcome::Configured) => println!("{label} configured"),
            Ok(Outcome::Unchanged) => println!("{label} unchanged"),
            // Unreachable etcd ends the command: every later write would fail too.
            Err(e @ Error::Unavailable { .. }) => return Err(e.into()),
            Err(e) => {
                eprintln!("error: {}: {e}", doc.origin);
                all_ok = false;
            }
        }
    }
    Ok(all_ok)
}

/// Whether a change to `key` of the top level is the user's to make.
fn user_owned(key: &str) -> bool {
    !matches!(key, "metadata" | "status")
}

async fn apply_one(store: &Store, doc: &Document) -> Result<Outcome, Error> {
    loop {
        let current = match store.get_value(doc.kind, doc.namespace(), doc.name()).await {
            Err(Error::NotFound { .. }) => {
                match store.create_value(doc.kind, doc.object.clone()).await {
                    Ok(_) => return Ok(Outcome::Created),
                    // Created by someone else meanwhile: apply on top of theirs.
                    Err(Error::AlreadyExists { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            other => other?,
        };
        let desired = merge(&current, &doc.object);
        if desired == current {
            return Ok(Outcome::Unchanged);
        }
        match store.update_value(doc.kind, desired).await {
            Ok(_) => return Ok(Outcome::Configured),
            Err(Error::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The stored object with the manifest laid over it: the manifest's fields
/// replace the object's own (spec, data, ...), its labels and annotations
/// replace the stored ones, and what controllers and the store keep in
/// metadata (uid, owner references, finalizers, resourceVersion) stays.
fn merge(current: &Value, manifest: &Value) -> Value {
    let mut out = Map::new();
    let empty = Map::new();
    let cur = current.as_object().unwrap_or(&empty);
    let man = manifest.as_object().unwrap_or(&empty);
    for (k, v) in man.iter().filter(|(k, _)| user_owned(k)) {
        out.insert(k.clone(), v.clone());
    }
    if let Some(status) = cur.get("status") {
        out.insert("status".into(), status.clone());
    }
    let mut meta = cur
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let man_meta = man
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for field in ["labels", "annotations"] {
        match man_meta.get(field) {
            Some(v) => meta.insert(field.into(), v.clone()),
            None => meta.remove(field),
        };
    }
    for (k, v) in man_meta {
        if !matches!(
            k.as_str(),
            "labels"
                | "annotations"
                | "resourceVersion"
                | "uid"
                | "creationTimestamp"
                | "generation"
        ) {
            meta.insert(k, v);
        }
    }
    out.insert("metadata".into(), Value::Object(meta));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_keeps_what_the_store_and_controllers_own() {
        let current = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "uid": "u", "resourceVersion": "7", "labels": {"old": "x"},
                         "ownerReferences": [{"name": "o"}]},
            "spec": {"replicas": 1, "paused": true},
            "status": {"readyReplicas": 1}
        });
        let manifest = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": 3}
        });
        let merged = merge(&current, &manifest);
        assert_eq!(merged["spec"], json!({"replicas": 3}));
        assert_eq!(merged["status"], json!({"readyReplicas": 1}));
        assert_eq!(merged["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(merged["metadata"]["resourceVersion"], "7");
        assert_eq!(merged["metadata"]["ownerReferences"][0]["name"], "o");
        // Applying the same manifest to its own result changes nothing.
        assert_eq!(merge(&merged, &manifest), merged);
    }
}
