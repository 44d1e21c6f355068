//! What a master's pod cache costs per pod: k8s-openapi's `Pod` against
//! the `CompactPod` the master's shared cache holds, decoded from the JSON
//! the store keeps for a bound, running pod of a ReplicaSet.
//!
//! Run: `cargo bench -p orca-benches --bench pod_cache`
//!
//! First it prints the memory 50,000 decoded pods take (the growth of the
//! process's RSS while they are made and held, compact first, so that
//! memory the full pods free is not counted for the compact ones), then
//! criterion times one decode of each.
//!
//! Latest results (2026-12-07, this 2-core machine, nothing else running):
//!
//! | 50,000 pods of 3 templates | RSS growth | per pod  | one decode |
//! |----------------------------|------------|----------|------------|
//! | `Pod`                      | 519.7 MiB  | 10,897 B | 12.2 µs    |
//! | `CompactPod`               | 58.9 MiB   | 1,234 B  | 12.4 µs    |
//!
//! 8.8 times less memory for the same decode time: the compact pod skips
//! most of the JSON, and spends what that saves on the pool lookups of
//! its shared labels, owners and template (each serialised to find its
//! copy).
//!
//! Absolute times are noisy on this machine; compare within one run.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use orca_core::api::{CompactPod, Pod};
use serde::de::DeserializeOwned;
use serde_json::json;

/// Pods held for the memory figure.
const PODS: usize = 50_000;

/// Pod `i` as the store keeps it: one of three ReplicaSets' pods, bound to
/// one of 5,000 nodes and reported running.
fn stored(i: usize) -> Vec<u8> {
    let set = i % 3;
    let time = "2026-12-07T07:00:00Z";
    let condition =
        |type_: &str| json!({"type": type_, "status": "True", "lastTransitionTime": time});
    let conditions = ["PodScheduled", "Initialized", "ContainersReady", "Ready"].map(condition);
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("web{set}-7d9f8c6b5-{i:05}"),
            "generateName": format!("web{set}-7d9f8c6b5-"),
            "namespace": "default",
            "uid": format!("0b6f1c9e-3a1d-4c2e-9f7a-{i:012}"),
            "generation": 2,
            "creationTimestamp": time,
            "labels": {"app": format!("web{set}"), "pod-template-hash": "7d9f8c6b5"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("web{set}-7d9f8c6b5"),
                "uid": format!("1b6f1c9e-3a1d-4c2e-9f7a-00000000000{set}"),
                "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "nodeName": format!("hollow-{}", i % 5000),
            "containers": [{"name": "web", "image": "nginx:1.9.1",
                "ports": [{"containerPort": 80, "name": "http", "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                              "limits": {"cpu": "200m", "memory": "128Mi"}}}],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler"
        },
        "status": {
            "phase": "Running", "podIP": format!("10.{}.{}.{}", i / 65536, i / 256 % 256, i % 256),
            "podIPs": [{"ip": format!("10.{}.{}.{}", i / 65536, i / 256 % 256, i % 256)}],
            "hostIP": "127.0.0.1", "startTime": time,
            "conditions": conditions,
            "containerStatuses": [{"name": "web", "image": "nginx:1.9.1", "imageID": "",
                "containerID": "hollow://web", "ready": true, "started": true,
                "restartCount": 0, "state": {"running": {"startedAt": time}}}]
        }
    }))
    .expect("JSON values serialise")
}

/// The process's resident memory, in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm's second field is the resident pages");
    pages * 4096
}

/// How much `PODS` pods of type `T` grow the RSS by, held as the cache
/// holds them.
fn held<T: DeserializeOwned>(stored: &[Vec<u8>]) -> usize {
    let before = rss();
    let pods: Vec<Arc<T>> = stored
        .iter()
        .map(|json| Arc::new(serde_json::from_slice(json).expect("the pods decode")))
        .collect();
    let grown = rss().saturating_sub(before);
    drop(black_box(pods));
    grown
}

fn memory() {
    let stored: Vec<Vec<u8>> = (0..PODS).map(stored).collect();
    let compact = held::<CompactPod>(&stored);
    let full = held::<Pod>(&stored);
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!(
        "{PODS} pods held: Pod {:.1} MiB ({} B a pod), CompactPod {:.1} MiB ({} B a pod)",
        mib(full),
        full / PODS,
        mib(compact),
        compact / PODS,
    );
}

fn decode(c: &mut Criterion) {
    memory();
    let one = stored(7);
    let mut group = c.benchmark_group("decode");
    group.bench_function("pod", |b| {
        b.iter(|| serde_json::from_slice::<Pod>(black_box(&one)).unwrap())
    });
    group.bench_function("compact_pod", |b| {
        b.iter(|| serde_json::from_slice::<CompactPod>(black_box(&one)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
