//! `orca patch KIND NAME -p PATCH`: a JSON merge patch (RFC 7386) on the
//! live object, as `kubectl patch --type merge`.

use anyhow::{Context, bail};
use orca_core::store::Store;
use serde_json::Value;

use super::change::change_object;
use crate::printer::resource_name;

/// Arguments of `orca patch`.
#[derive(clap::Args)]
pub struct Args {
    /// Kind of the object.
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// The patch, as JSON (or YAML): maps merge, `null` removes a key,
    /// anything else replaces what it names.
    #[arg(short, long)]
    pub patch: String,
    /// The patch format; only `merge` (RFC 7386) is supported.
    #[arg(long = "type", default_value = "merge")]
    pub patch_type: String,
    /// Namespace of the object.
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// Applies the patch; prints `KIND/NAME patched` (or `(no change)`).
pub async fn run(store: &Store, args: Args) -> anyhow::Result<bool> {
    let kind = super::kind_arg(&args.kind)?;
    if args.patch_type != "merge" {
        bail!(
            "--type {:?} is not supported: use merge (a JSON merge patch)",
            args.patch_type
        );
    }
    let patch: Value = orca_core::yaml::from_str("--patch", &args.patch)
        .context("the patch is not valid JSON or YAML")?;
    if !patch.is_object() {
        bail!("the patch must be a JSON object, as {{\"spec\": {{...}}}}");
    }
    let namespace = super::namespace_arg(kind, args.namespace.as_deref());
    let changed = change_object(store, kind, namespace, &args.name, |obj| {
        let before = (identity(obj, "name"), identity(obj, "namespace"));
        merge_patch(obj, &patch);
        if (identity(obj, "name"), identity(obj, "namespace")) != before {
            bail!("the patch may not change metadata.name or metadata.namespace");
        }
        Ok(())
    })
    .await?;
    let label = format!("{}/{}", resource_name(kind), args.name);
    if changed {
        println!("{label} patched");
    } else {
        println!("{label} patched (no change)");
    }
    Ok(true)
}

fn identity(obj: &Value, field: &str) -> Option<String> {
    obj.pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// RFC 7386: `patch`'s maps merge into `target`, `null` removes a key, any
/// other value replaces the target's.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let map = target.as_object_mut().expect("made a map above");
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7386_examples() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(
            &mut target,
            &json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"x": 1}}),
        );
        assert_eq!(
            target,
            json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"x": 1}})
        );
    }
}
