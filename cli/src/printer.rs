//! How objects look on a terminal: kubectl's table columns per kind, its
//! resource names (`deployment.apps/web`) and its ages (`3m20s`).

use std::fmt::Write as _;

use orca_core::api::Kind;
use serde_json::Value;

/// kubectl's name for a kind in messages: `deployment.apps`, `service`.
pub fn resource_name(kind: &Kind) -> String {
    let singular = kind.kind.to_ascii_lowercase();
    match kind.api_version.split_once('/') {
        Some((group, _)) => format!("{singular}.{group}"),
        None => singular,
    }
}

fn str_at<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn int_at(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or_default()
}

fn or_none(s: String) -> String {
    if s.is_empty() { "<none>".into() } else { s }
}

/// kubectl's human age of a duration in seconds.
pub fn human_age(seconds: i64) -> String {
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        match s % 60 {
            0 => format!("{m}m"),
            rem => format!("{m}m{rem}s"),
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            rem => format!("{h}h{rem}m"),
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        match h % 24 {
            0 => format!("{d}d"),
            rem => format!("{d}d{rem}h"),
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y{}d", d / 365, d % 365)
    }
}

/// Age of an object from its `creationTimestamp`.
pub fn age(obj: &Value) -> String {
    let created = str_at(obj, "/metadata/creationTimestamp");
    match created.parse::<jiff::Timestamp>() {
        Ok(t) => human_age(jiff::Timestamp::now().as_second() - t.as_second()),
        Err(_) => "<unknown>".into(),
    }
}

fn join_strs(obj: &Value, pointer: &str, field: &str) -> String {
    obj.pointer(pointer)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.get(field).and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn selector(obj: &Value, pointer: &str) -> String {
    obj.pointer(pointer)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn count(obj: &Value, pointer: &str) -> usize {
    match obj.pointer(pointer) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

fn service_ports(obj: &Value) -> String {
    let ports = obj.pointer("/spec/ports").and_then(Value::as_array);
    let rendered: Vec<String> = ports
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            let port = p.get("port").and_then(Value::as_i64).unwrap_or_default();
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) => format!("{port}:{np}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect();
    or_none(rendered.join(","))
}

fn pod_ready(obj: &Value) -> (usize, usize, i64) {
    let total = count(obj, "/spec/containers");
    let statuses = obj
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array);
    let ready = statuses
        .into_iter()
        .flatten()
        .filter(|s| s.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    let restarts = statuses
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("restartCount").and_then(Value::as_i64))
        .sum();
    (ready, total, restarts)
}

fn node_status(obj: &Value) -> String {
    let ready = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"));
    let mut status = match ready.and_then(|c| c.get("status")).and_then(Value::as_str) {
        Some("True") => "Ready".to_string(),
        _ => "NotReady".to_string(),
    };
    if obj.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    status
}

/// Column headers and cells of one kind, in kubectl's layout.
pub fn columns(kind: &Kind, wide: bool) -> Vec<&'static str> {
    let (mut cols, extra): (Vec<&str>, Vec<&str>) = match kind.kind {
        "Deployment" => (
            vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
            vec!["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        "ReplicaSet" => (
            vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
            vec!["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        "Pod" => (
            vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
            vec!["IP", "NODE"],
        ),
        "Service" => (
            vec![
                "NAME",
                "TYPE",
                "CLUSTER-IP",
                "EXTERNAL-IP",
                "PORT(S)",
                "AGE",
            ],
            vec!["SELECTOR"],
        ),
        "Node" => (
            vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
            vec!["INTERNAL-IP"],
        ),
        "Namespace" => (vec!["NAME", "STATUS", "AGE"], vec![]),
        "Secret" => (vec!["NAME", "TYPE", "DATA", "AGE"], vec![]),
        "ConfigMap" => (vec!["NAME", "DATA", "AGE"], vec![]),
        "Ingress" => (
            vec!["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"],
            vec![],
        ),
        "EndpointSlice" => (
            vec!["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
            vec![],
        ),
        "Lease" => (vec!["NAME", "HOLDER", "AGE"], vec![]),
        _ => (vec!["NAME", "AGE"], vec![]),
    };
    if wide {
        cols.extend(extra);
    }
    cols
}

/// The cells of one object, matching [`columns`].
pub fn row(kind: &Kind, obj: &Value, wide: bool) -> Vec<String> {
    let name = str_at(obj, "/metadata/name").to_string();
    let age = age(obj);
    let template_wide = || {
        vec![
            join_strs(obj, "/spec/template/spec/containers", "name"),
            join_strs(obj, "/spec/template/spec/containers", "image"),
            selector(obj, "/spec/selector/matchLabels"),
        ]
    };
    let (mut cells, extra): (Vec<String>, Vec<String>) = match kind.kind {
        "Deployment" => {
            let desired = obj
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            (
                vec![
                    name,
                    format!("{}/{desired}", int_at(obj, "/status/readyReplicas")),
                    int_at(obj, "/status/updatedReplicas").to_string(),
                    int_at(obj, "/status/availableReplicas").to_string(),
                    age,
                ],
                template_wide(),
            )
        }
        "ReplicaSet" => (
            vec![
                name,
                obj.pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
                    .to_string(),
                int_at(obj, "/status/replicas").to_string(),
                int_at(obj, "/status/readyReplicas").to_string(),
                age,
            ],
            template_wide(),
        ),
        "Pod" => {
            let (ready, total, restarts) = pod_ready(obj);
            let mut status = str_at(obj, "/status/phase").to_string();
            if obj.pointer("/metadata/deletionTimestamp").is_some() {
                status = "Terminating".into();
            } else if status.is_empty() {
                status = "Pending".into();
            }
            (
                vec![
                    name,
                    format!("{ready}/{total}"),
                    status,
                    restarts.to_string(),
                    age,
                ],
                vec![
                    or_none(str_at(obj, "/status/podIP").into()),
                    or_none(str_at(obj, "/spec/nodeName").into()),
                ],
            )
        }
        "Service" => {
            let kind_of = obj
                .pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP");
            (
                vec![
                    name,
                    kind_of.into(),
                    or_none(str_at(obj, "/spec/clusterIP").into()),
                    or_none(join_strs(obj, "/status/loadBalancer/ingress", "ip")),
                    service_ports(obj),
                    age,
                ],
                vec![or_none(selector(obj, "/spec/selector"))],
            )
        }
        "Node" => {
            let roles: Vec<&str> = obj
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
                .collect();
            let ip = obj
                .pointer("/status/addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
                .and_then(|a| a.get("address").and_then(Value::as_str))
                .unwrap_or_default();
            (
                vec![
                    name,
                    node_status(obj),
                    or_none(roles.join(",")),
                    age,
                    str_at(obj, "/status/nodeInfo/kubeletVersion").into(),
                ],
                vec![or_none(ip.into())],
            )
        }
        "Namespace" => {
            let phase = str_at(obj, "/status/phase");
            (
                vec![
                    name,
                    if phase.is_empty() {
                        "Active".into()
                    } else {
                        phase.into()
                    },
                    age,
                ],
                vec![],
            )
        }
        "Secret" => {
            let t = obj
                .pointer("/type")
                .and_then(Value::as_str)
                .unwrap_or("Opaque");
            (
                vec![name, t.into(), count(obj, "/data").to_string(), age],
                vec![],
            )
        }
        "ConfigMap" => (
            vec![
                name,
                (count(obj, "/data") + count(obj, "/binaryData")).to_string(),
                age,
            ],
            vec![],
        ),
        "Ingress" => {
            let hosts: Vec<&str> = obj
                .pointer("/spec/rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|r| r.get("host").and_then(Value::as_str))
                .collect();
            let ports = if count(obj, "/spec/tls") > 0 {
                "80, 443"
            } else {
                "80"
            };
            (
                vec![
                    name,
                    or_none(str_at(obj, "/spec/ingressClassName").into()),
                    if hosts.is_empty() {
                        "*".into()
                    } else {
                        hosts.join(",")
                    },
                    join_strs(obj, "/status/loadBalancer/ingress", "ip"),
                    ports.into(),
                    age,
                ],
                vec![],
            )
        }
        "EndpointSlice" => {
            let ports: Vec<String> = obj
                .pointer("/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p.get("port").and_then(Value::as_i64))
                .map(|p| p.to_string())
                .collect();
            let addresses: Vec<&str> = obj
                .pointer("/endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|e| {
                    e.get("addresses")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                })
                .filter_map(Value::as_str)
                .collect();
            (
                vec![
                    name,
                    str_at(obj, "/addressType").into(),
                    or_none(ports.join(",")),
                    or_none(addresses.join(",")),
                    age,
                ],
                vec![],
            )
        }
        "Lease" => (
            vec![name, str_at(obj, "/spec/holderIdentity").into(), age],
            vec![],
        ),
        _ => (vec![name, age], vec![]),
    };
    if wide {
        cells.extend(extra);
    }
    cells
}

/// Renders rows as kubectl does: left-aligned columns three spaces apart.
pub fn render(header: Option<&[String]>, rows: &[Vec<String>]) -> String {
    let header = header.map(<[String]>::to_vec);
    let all: Vec<&Vec<String>> = header.iter().chain(rows).collect();
    let widths: Vec<usize> = (0..all.first().map_or(0, |r| r.len()))
        .map(|i| {
            all.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in all {
        let last = r.len().saturating_sub(1);
        for (i, cell) in r.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<width$}   ", width = widths[i]);
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(119), "119s");
        assert_eq!(human_age(150), "2m30s");
        assert_eq!(human_age(600), "10m");
        assert_eq!(human_age(4 * 3600 + 120), "4h2m");
        assert_eq!(human_age(30 * 3600), "30h");
        assert_eq!(human_age(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_age(100 * 86400), "100d");
        assert_eq!(human_age(800 * 86400), "2y70d");
    }

    #[test]
    fn deployment_row_and_names() {
        let kind = Kind::lookup("deploy").unwrap();
        assert_eq!(resource_name(kind), "deployment.apps");
        assert_eq!(resource_name(Kind::lookup("svc").unwrap()), "service");
        let d = json!({
            "metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1.7.9"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}
        });
        let cells = row(kind, &d, true);
        assert_eq!(&cells[..4], ["web", "2/3", "3", "2"]);
        assert_eq!(&cells[5..], ["nginx", "nginx:1.7.9", "app=web"]);
        assert_eq!(
            columns(kind, false),
            ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
        );
    }

    #[test]
    fn table_alignment() {
        let header = vec!["NAME".to_string(), "AGE".to_string()];
        let rows = vec![vec!["a-long-name".to_string(), "5s".to_string()]];
        assert_eq!(
            render(Some(&header), &rows),
            "NAME          AGE\na-long-name   5s\n"
        );
    }
}
