//! Resource quantities as Kubernetes writes them (`100m`, `1.5`, `128Mi`,
//! `1G`, `2e3`), and what a pod asks of a node.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use orca_core::api::{CompactContainer, CompactPod};

/// A quantity's value in base units (cores, bytes, pods); `None` when it
/// does not parse.
pub fn parse(q: &str) -> Option<f64> {
    let q = q.trim();
    let suffixes: [(&str, f64); 14] = [
        ("Ki", 1024.0),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ];
    for (suffix, factor) in suffixes {
        if let Some(number) = q.strip_suffix(suffix) {
            return number.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    if let Some(number) = q.strip_suffix('E') {
        return number.parse::<f64>().ok().map(|n| n * 1e18);
    }
    q.parse().ok()
}

/// What a pod (or a node's spare room) holds of each resource.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    /// CPU in cores.
    pub cpu: f64,
    /// Memory in bytes.
    pub memory: f64,
    /// Pods.
    pub pods: f64,
}

impl Resources {
    /// From a `capacity`/`allocatable` map.
    pub fn from_map(map: Option<&BTreeMap<String, Quantity>>) -> Self {
        let get = |k: &str| {
            map.and_then(|m| m.get(k))
                .and_then(|q| parse(&q.0))
                .unwrap_or(0.0)
        };
        Self {
            cpu: get("cpu"),
            memory: get("memory"),
            pods: get("pods"),
        }
    }

    /// What `pod` requests: each container's requests (its limits where it
    /// names no request, as the compact pod keeps them), summed, and at least each init container's, as
    /// init containers run one at a time before the rest.
    pub fn requested_by(pod: &CompactPod) -> Self {
        let Some(spec) = pod.spec.as_ref() else {
            return Self {
                pods: 1.0,
                ..Self::default()
            };
        };
        let of = |c: &CompactContainer| {
            let get = |k: &str| c.request(k).and_then(|q| parse(&q.0)).unwrap_or(0.0);
            (get("cpu"), get("memory"))
        };
        let (mut cpu, mut memory) = (0.0, 0.0);
        for c in &spec.containers {
            let (c_cpu, c_mem) = of(c);
            cpu += c_cpu;
            memory += c_mem;
        }
        for c in spec.init_containers.iter().flatten() {
            let (c_cpu, c_mem) = of(c);
            cpu = f64::max(cpu, c_cpu);
            memory = f64::max(memory, c_mem);
        }
        Self {
            cpu,
            memory,
            pods: 1.0,
        }
    }

    /// What is left of `self` after `other` is taken away.
    pub fn minus(self, other: Self) -> Self {
        Self {
            cpu: self.cpu - other.cpu,
            memory: self.memory - other.memory,
            pods: self.pods - other.pods,
        }
    }

    /// The sum of two.
    pub fn plus(self, other: Self) -> Self {
        Self {
            cpu: self.cpu + other.cpu,
            memory: self.memory + other.memory,
            pods: self.pods + other.pods,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(parse("100m"), Some(0.1));
        assert_eq!(parse("2"), Some(2.0));
        assert_eq!(parse("128Mi"), Some(128.0 * 1024.0 * 1024.0));
        assert_eq!(parse("1G"), Some(1e9));
        assert_eq!(parse("2e3"), Some(2000.0));
        assert_eq!(parse("1.5Gi"), Some(1.5 * 1024f64.powi(3)));
        assert_eq!(parse("lots"), None);
    }
}
