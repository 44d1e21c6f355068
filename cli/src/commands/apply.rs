//! `orca apply -f FILE|DIR|-`: create what is missing, update what changed,
//! keeping what others wrote.
//!
//! As kubectl's client-side apply: the manifest applied last is kept in the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation, and an
//! update is a three-way merge of it, the live object and the new manifest.
//! A field the manifest sets is set; a field it set last time and no longer
//! does is removed; any other field (a scheduler's `nodeName`, replicas
//! changed by `orca scale` in a manifest that never set them, a
//! controller's owner references) stays. Maps merge key by key; lists are
//! replaced whole.

use futures::{StreamExt, stream};
use orca_core::store::{Error, Store};
use serde_json::{Map, Value};

use crate::manifest::Document;
use crate::printer::resource_name;

/// Where the manifest applied last is kept, as kubectl keeps it.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Documents applied at once: etcd round trips overlap, and one file of
/// 20,000 objects does not take 20,000 round trips end to end.
const IN_FLIGHT: usize = 32;

/// Metadata the store owns; a manifest's copy (from `orca get -o yaml`) is
/// ignored rather than written back.
const STORE_OWNED: [&str; 7] = [
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
];

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

/// Applies every document, several at a time but each Namespace alone and
/// before what follows it; prints one line per object, in the file's order.
/// Returns whether all of them were applied.
pub async fn run(store: &Store, docs: Vec<Document>) -> anyhow::Result<bool> {
    // Checked before anything is written, as the manifests were.
    let unnamed: Vec<String> = docs
        .iter()
        .filter(|d| d.name().is_empty())
        .map(|d| {
            format!(
                "{}: metadata.name: Required value: apply needs a name (generateName is for create)",
                d.origin
            )
        })
        .collect();
    if !unnamed.is_empty() {
        anyhow::bail!(unnamed.join("\nerror: "));
    }
    let mut all_ok = true;
    let mut rest = docs.as_slice();
    while !rest.is_empty() {
        // A run of documents up to (and without) the next Namespace, or the
        // Namespace itself: objects in a namespace the file creates must
        // not race its creation.
        let is_namespace = |d: &Document| d.kind.kind == "Namespace";
        let len = if is_namespace(&rest[0]) {
            1
        } else {
            rest.iter().position(is_namespace).unwrap_or(rest.len())
        };
        let (batch, next) = rest.split_at(len);
        rest = next;
        let mut results = stream::iter(batch)
            .map(|doc| async move { (doc, apply_one(store, doc).await) })
            .buffered(IN_FLIGHT);
        while let Some((doc, result)) = results.next().await {
            let label = format!("{}/{}", resource_name(doc.kind), doc.name());
            match result {
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
    }
    Ok(all_ok)
}

async fn apply_one(store: &Store, doc: &Document) -> Result<Outcome, Error> {
    let new = recorded(&doc.object());
    loop {
        let current = match store.get_value(doc.kind, doc.namespace(), doc.name()).await {
            Err(Error::NotFound { .. }) => match store.create_value(doc.kind, new.clone()).await {
                Ok(_) => return Ok(Outcome::Created),
                // Created by someone else meanwhile: apply on top of theirs.
                Err(Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e),
            },
            other => other?,
        };
        let last = current
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(LAST_APPLIED))
            .and_then(Value::as_str)
            .and_then(|text| serde_json::from_str::<Value>(text).ok());
        let desired = three_way(last.as_ref(), &current, &new);
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

/// The manifest as the user wrote it, without what the store owns or the
/// status (and without a last-applied annotation of its own).
fn applied_form(manifest: &Value) -> Value {
    let mut form = manifest.clone();
    if let Some(root) = form.as_object_mut() {
        root.remove("status");
    }
    if let Some(meta) = form.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in STORE_OWNED {
            meta.remove(field);
        }
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.remove(LAST_APPLIED);
            if annotations.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    form
}

/// The manifest to write: its applied form, recording itself in the
/// last-applied annotation.
fn recorded(manifest: &Value) -> Value {
    let mut form = applied_form(manifest);
    let text = serde_json::to_string(&form).expect("JSON values serialise");
    if let Some(meta) = form.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(annotations) = annotations.as_object_mut() {
            annotations.insert(LAST_APPLIED.into(), Value::String(text));
        }
    }
    form
}

/// The live object changed as `new` asks, given that `last` was applied
/// before: keys of `new` set (maps merged recursively), keys `last` had and
/// `new` has not removed, every other key of `live` kept.
fn three_way(last: Option<&Value>, live: &Value, new: &Value) -> Value {
    let (Value::Object(live), Value::Object(new)) = (live, new) else {
        return new.clone();
    };
    let last = last.and_then(Value::as_object);
    let mut out = live.clone();
    for key in last.into_iter().flat_map(Map::keys) {
        if !new.contains_key(key) {
            out.remove(key);
        }
    }
    for (key, value) in new {
        let merged = match out.get(key) {
            Some(current) => three_way(last.and_then(|l| l.get(key)), current, value),
            None => value.clone(),
        };
        out.insert(key.clone(), merged);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(spec: Value, labels: Value) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": labels},
            "spec": spec
        })
    }

    #[test]
    fn what_others_wrote_stays_and_what_the_manifest_dropped_goes() {
        let first = recorded(&deployment(
            json!({"paused": true, "template": {"spec": {"containers": [{"name": "a"}]}}}),
            json!({"app": "web", "old": "x"}),
        ));
        // Live: as applied, plus what the store, a controller and `orca
        // scale` wrote.
        let mut live = first.clone();
        live["metadata"]["uid"] = json!("u");
        live["metadata"]["resourceVersion"] = json!("7");
        live["metadata"]["ownerReferences"] = json!([{"name": "o"}]);
        live["metadata"]["labels"]["added-by-hand"] = json!("y");
        live["spec"]["replicas"] = json!(5);
        live["status"] = json!({"readyReplicas": 1});

        let next = recorded(&deployment(
            json!({"template": {"spec": {"containers": [{"name": "b"}]}}}),
            json!({"app": "web"}),
        ));
        let last: Value = serde_json::from_str(
            first["metadata"]["annotations"][LAST_APPLIED]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let merged = three_way(Some(&last), &live, &next);
        assert_eq!(merged["spec"]["replicas"], 5, "never in a manifest: kept");
        assert!(
            merged["spec"].get("paused").is_none(),
            "dropped from the manifest: removed"
        );
        assert_eq!(
            merged["spec"]["template"]["spec"]["containers"],
            json!([{"name": "b"}])
        );
        assert_eq!(
            merged["metadata"]["labels"],
            json!({"app": "web", "added-by-hand": "y"})
        );
        assert_eq!(merged["metadata"]["resourceVersion"], "7");
        assert_eq!(merged["metadata"]["ownerReferences"][0]["name"], "o");
        assert_eq!(merged["status"], json!({"readyReplicas": 1}));
        let recorded_now: Value = serde_json::from_str(
            merged["metadata"]["annotations"][LAST_APPLIED]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(recorded_now, applied_form(&next));
        // Applying the same manifest to its own result changes nothing.
        assert_eq!(three_way(Some(&recorded_now), &merged, &next), merged);
    }

    #[test]
    fn without_a_record_nothing_is_removed_and_store_fields_are_ignored() {
        let live = json!({"metadata": {"name": "c", "resourceVersion": "3"}, "data": {"a": "1"}});
        let mut manifest = json!({"metadata": {"name": "c", "resourceVersion": "1", "uid": "x"}, "data": {"b": "2"}});
        manifest["status"] = json!({"x": 1});
        let merged = three_way(None, &live, &recorded(&manifest));
        assert_eq!(merged["data"], json!({"a": "1", "b": "2"}));
        assert_eq!(merged["metadata"]["resourceVersion"], "3");
        assert!(merged["metadata"].get("uid").is_none());
        assert!(merged.get("status").is_none());
    }
}
