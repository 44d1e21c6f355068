//! `orca describe KIND NAME`: one object in detail, for people.

use std::fmt::Write as _;

use orca_core::store::Store;
use orca_core::yaml;
use serde_json::Value;

use crate::printer::age;

/// Arguments of `orca describe`.
#[derive(clap::Args)]
pub struct Args {
    /// Kind of the object.
    pub kind: String,
    /// Name of the object.
    pub name: String,
    /// Namespace of the object.
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// Prints the object.
pub async fn run(store: &Store, args: Args) -> anyhow::Result<bool> {
    let kind = super::kind_arg(&args.kind)?;
    let obj = store
        .get_value(
            kind,
            super::namespace_arg(kind, args.namespace.as_deref()),
            &args.name,
        )
        .await?;
    print!("{}", describe(&obj));
    Ok(true)
}

fn map_lines(obj: &Value, pointer: &str) -> String {
    match obj.pointer(pointer).and_then(Value::as_object) {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n                   "),
        _ => "<none>".into(),
    }
}

/// Indents a YAML rendering under a section title.
fn section(out: &mut String, title: &str, value: Option<&Value>) {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return;
    };
    let _ = writeln!(out, "{title}:");
    for line in yaml::to_string(value).lines() {
        let _ = writeln!(out, "  {line}");
    }
}

fn describe(obj: &Value) -> String {
    let s = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut out = String::new();
    let _ = writeln!(out, "{:<19}{}", "Name:", s("/metadata/name"));
    if obj.pointer("/metadata/namespace").is_some() {
        let _ = writeln!(out, "{:<19}{}", "Namespace:", s("/metadata/namespace"));
    }
    let _ = writeln!(out, "{:<19}{}", "Kind:", s("/kind"));
    let _ = writeln!(
        out,
        "{:<19}{}",
        "Labels:",
        map_lines(obj, "/metadata/labels")
    );
    let _ = writeln!(
        out,
        "{:<19}{}",
        "Annotations:",
        map_lines(obj, "/metadata/annotations")
    );
    let _ = writeln!(
        out,
        "{:<19}{} ({} ago)",
        "CreationTimestamp:",
        s("/metadata/creationTimestamp"),
        age(obj)
    );
    let _ = writeln!(out, "{:<19}{}", "UID:", s("/metadata/uid"));
    let _ = writeln!(
        out,
        "{:<19}{}",
        "ResourceVersion:",
        s("/metadata/resourceVersion")
    );
    if let Some(g) = obj.pointer("/metadata/generation").and_then(Value::as_i64) {
        let _ = writeln!(out, "{:<19}{g}", "Generation:");
    }
    if s("/kind") == "Deployment" {
        let n = |p: &str| obj.pointer(p).and_then(Value::as_i64).unwrap_or_default();
        let desired = obj
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let _ = writeln!(
            out,
            "{:<19}{desired} desired | {} updated | {} total | {} available | {} unavailable",
            "Replicas:",
            n("/status/updatedReplicas"),
            n("/status/replicas"),
            n("/status/availableReplicas"),
            n("/status/unavailableReplicas"),
        );
    }
    if s("/kind") == "Pod" {
        pod_summary(&mut out, obj);
    }
    if let Some(d) = obj
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
    {
        let _ = writeln!(out, "{:<19}{d}", "Terminating since:");
    }
    for (title, field) in [("Spec", "spec"), ("Data", "data"), ("Status", "status")] {
        section(&mut out, title, obj.get(field));
    }
    out
}

/// A pod's node, phase and address, and each container's state as kubectl
/// shows it: the reason and message of a waiting or ended one (an image
/// the registry refused says so here).
fn pod_summary(out: &mut String, pod: &Value) {
    let s = |v: &Value, p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let _ = writeln!(out, "{:<19}{}", "Node:", s(pod, "/spec/nodeName"));
    let _ = writeln!(out, "{:<19}{}", "Status:", s(pod, "/status/phase"));
    let _ = writeln!(out, "{:<19}{}", "IP:", s(pod, "/status/podIP"));
    for (title, field) in [
        ("Init Containers:", "initContainerStatuses"),
        ("Containers:", "containerStatuses"),
    ] {
        let Some(statuses) = pod
            .pointer(&format!("/status/{field}"))
            .and_then(Value::as_array)
        else {
            continue;
        };
        let _ = writeln!(out, "{title}");
        for c in statuses {
            let _ = writeln!(out, "  {}:", s(c, "/name"));
            let _ = writeln!(out, "    {:<15}{}", "Image:", s(c, "/image"));
            let _ = writeln!(out, "    {:<15}{}", "Container ID:", s(c, "/containerID"));
            for (label, pointer) in [("State:", "/state"), ("Last State:", "/lastState")] {
                let Some((state, detail)) = c
                    .pointer(pointer)
                    .and_then(Value::as_object)
                    .and_then(|m| m.iter().next())
                else {
                    continue;
                };
                let _ = writeln!(
                    out,
                    "    {label:<15}{}{}",
                    state[..1].to_uppercase(),
                    &state[1..]
                );
                for key in ["reason", "message", "exitCode", "startedAt", "finishedAt"] {
                    if let Some(v) = detail.get(key) {
                        let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                        let mut name = key.to_string();
                        name[..1].make_ascii_uppercase();
                        let _ = writeln!(out, "      {:<13}{text}", format!("{name}:"));
                    }
                }
            }
            let _ = writeln!(
                out,
                "    {:<15}{}",
                "Ready:",
                c.get("ready").and_then(Value::as_bool).unwrap_or(false)
            );
            let _ = writeln!(
                out,
                "    {:<15}{}",
                "Restart Count:",
                c.get("restartCount").and_then(Value::as_i64).unwrap_or(0)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_summary_shows_why_a_container_waits() {
        let pod = json!({
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1"},
            "status": {"phase": "Pending", "containerStatuses": [{
                "name": "c", "image": "bb:1", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ErrImagePull", "message": "manifest unknown"}},
            }]},
        });
        let text = describe(&pod);
        assert!(text.contains("    State:         Waiting\n      Reason:      ErrImagePull\n      Message:     manifest unknown\n"), "{text}");
        assert!(text.contains("Node:              n1"), "{text}");
    }

    #[test]
    fn deployment_summary() {
        let d = json!({
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"},
                         "creationTimestamp": "2020-01-01T00:00:00Z", "generation": 2},
            "spec": {"replicas": 3},
            "status": {"updatedReplicas": 1, "replicas": 1, "availableReplicas": 1}
        });
        let text = describe(&d);
        assert!(text.contains("Name:              web\n"), "{text}");
        assert!(text.contains("Labels:            app=web\n"), "{text}");
        assert!(
            text.contains("3 desired | 1 updated | 1 total | 1 available | 0 unavailable"),
            "{text}"
        );
        assert!(text.contains("Spec:\n  replicas: 3\n"), "{text}");
    }
}
