//! Hot paths of the ingress proxy: route lookup among 10k routes, the
//! per-request head work (parse, validate, rewrite for the upstream), and
//! what one cluster change costs cluster mode.
//!
//! Run: `cargo bench -p orca-benches --bench ingress`
//!
//! Latest results (2026-11-25, this 2-core shared machine, criterion
//! medians; another build was running beside it):
//!
//! | bench                                   | time     |
//! |-----------------------------------------|----------|
//! | route_lookup/10k_routes/exact_host      | 72 ns    |
//! | route_lookup/10k_routes/deep_prefix     | 204 ns   |
//! | route_lookup/10k_routes/miss            | 31 ns    |
//! | head/parse_and_rewrite/wrk_get          | 230 ns   |
//! | head/parse_and_rewrite/browser_get      | 1.39 µs  |
//!
//! Before uninitialised header storage and the Connection-scan shortcut,
//! wrk_get took 550 ns in the same session.
//!
//! Cluster changes with 1,000 Ingresses (2026-12-07, one run, nothing else
//! running): an EndpointSlice change 9.4 µs (its one upstream's endpoints
//! swapped in place), an Ingress change 2.81 ms (a new table of 1,000
//! routes, the upstreams kept): 300 to 1. Before, every change of any
//! kind rebuilt the table and resolved every upstream's endpoints again,
//! at least the Ingress change's cost.
//!
//! Absolute times are noisy on this machine; compare within one run.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use orca_core::api::{EndpointSlice, Ingress, Secret, Service};
use orca_core::watch::{self, Event};
use orca_proxy::ingress::cluster::{Caches, ClusterRoutes, INGRESS_CLASS, Pending};
use orca_proxy::ingress::config::{LbPolicy, PathType};
use orca_proxy::ingress::h1::{self, Forwarding, Head};
use orca_proxy::ingress::routes::{Route, RouteTable};
use orca_proxy::ingress::upstream::Upstream;

fn table(n: usize) -> RouteTable {
    let upstream = Arc::new(Upstream::new(
        "u",
        vec!["127.0.0.1:1".parse().unwrap()],
        LbPolicy::RoundRobin,
    ));
    let mut t = RouteTable::default();
    for i in 0..n {
        let host = format!("svc-{}.example.com", i / 10);
        let path = format!("/api/v{}/items", i % 10);
        let route = Route::new(
            format!("r{i}"),
            Vec::new(),
            vec![(upstream.clone(), 1)],
            false,
        );
        t.insert(Some(&host), &path, PathType::Prefix, Arc::new(route));
    }
    t
}

fn no_headers(_: &str) -> Option<&'static [u8]> {
    None
}

fn route_lookup(c: &mut Criterion) {
    let t = table(10_000);
    let mut g = c.benchmark_group("route_lookup/10k_routes");
    g.bench_function("exact_host", |b| {
        b.iter(|| {
            t.find(
                black_box("svc-512.example.com"),
                black_box("/api/v3/items"),
                &no_headers,
            )
        })
    });
    g.bench_function("deep_prefix", |b| {
        b.iter(|| {
            t.find(
                black_box("svc-999.example.com"),
                black_box("/api/v7/items/42/parts/9/history"),
                &no_headers,
            )
        })
    });
    g.bench_function("miss", |b| {
        b.iter(|| {
            t.find(
                black_box("nobody.example.org"),
                black_box("/x/y/z"),
                &no_headers,
            )
        })
    });
    g.finish();
}

const WRK: &[u8] = b"GET /2b HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";
const BROWSER: &[u8] = b"GET /api/v1/items?page=2&sort=name HTTP/1.1\r\nHost: shop.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n\
Connection: keep-alive\r\nCookie: session=0123456789abcdef; theme=dark\r\n\
Upgrade-Insecure-Requests: 1\r\nSec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\n\
Sec-Fetch-Site: none\r\nSec-Fetch-User: ?1\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n";

fn head(c: &mut Criterion) {
    let mut g = c.benchmark_group("head/parse_and_rewrite");
    let fwd = Forwarding {
        client: "192.0.2.1",
        tls: false,
        request_id: "0000000100000000000000000001",
        target: None,
    };
    for (name, request) in [("wrk_get", WRK), ("browser_get", BROWSER)] {
        let mut head = Head::default();
        let mut out = Vec::with_capacity(4096);
        g.bench_function(name, |b| {
            b.iter(|| {
                let info =
                    h1::parse_request(black_box(request), &mut head, 100, 32 * 1024, 1 << 20)
                        .unwrap()
                        .unwrap();
                out.clear();
                h1::write_upstream_request(&mut out, request, &head, &info, &fwd);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

/// An object of kind `K` from its JSON form.
fn object<K: serde::de::DeserializeOwned>(json: serde_json::Value) -> K {
    serde_json::from_value(json).expect("a valid object")
}

fn ingress(i: usize, version: u64) -> Ingress {
    object(serde_json::json!({
        "metadata": {"name": format!("app-{i}"), "namespace": "default",
                     "resourceVersion": version.to_string()},
        "spec": {"ingressClassName": INGRESS_CLASS, "rules": [{
            "host": format!("app-{i}.example.com"),
            "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {
                "service": {"name": format!("app-{i}"), "port": {"number": 80}}}}]}}]}
    }))
}

fn service(i: usize) -> Service {
    object(serde_json::json!({
        "metadata": {"name": format!("app-{i}"), "namespace": "default", "resourceVersion": "1"},
        "spec": {"ports": [{"port": 80, "targetPort": 8080}]}
    }))
}

fn slice(i: usize, version: u64) -> EndpointSlice {
    let endpoints: Vec<_> = (0..3)
        .map(|e| {
            let ip = format!(
                "10.{}.{}.{}",
                i / 250,
                i % 250,
                e + 1 + (version % 2) as usize
            );
            serde_json::json!({"addresses": [ip], "conditions": {"ready": true}})
        })
        .collect();
    object(serde_json::json!({
        "metadata": {"name": format!("app-{i}-abcde"), "namespace": "default",
                     "resourceVersion": version.to_string(),
                     "labels": {"kubernetes.io/service-name": format!("app-{i}")}},
        "addressType": "IPv4",
        "ports": [{"port": 8080}],
        "endpoints": endpoints
    }))
}

/// What one change costs cluster mode with 1,000 Ingresses, each with a
/// Service of its own and a slice of three endpoints: an EndpointSlice
/// change (a pod came or went) and an Ingress change (a table rebuild).
fn cluster_change(c: &mut Criterion) {
    const N: usize = 1_000;
    let (ingresses, mut iw) = watch::store::<Ingress>();
    let (services, mut sw) = watch::store::<Service>();
    let (slices, mut ew) = watch::store::<EndpointSlice>();
    let (secrets, _) = watch::store::<Secret>();
    let mut pending = Pending::default();
    for i in 0..N {
        iw.apply_with(&Event::Apply(ingress(i, 1)), |c| pending.ingress(&c));
        sw.apply_with(&Event::Apply(service(i)), |c| pending.service(&c));
        ew.apply_with(&Event::Apply(slice(i, 1)), |c| pending.slice(&c));
    }
    let mut routes = ClusterRoutes::new(Caches::new(ingresses, services, slices, secrets));
    assert_eq!(routes.update(pending).routes.map(|t| t.len()), Some(N));
    let mut g = c.benchmark_group("cluster_change/1k_ingresses");
    let mut version = 1;
    g.bench_function("endpoint_slice", |b| {
        b.iter(|| {
            version += 1;
            let mut pending = Pending::default();
            ew.apply_with(&Event::Apply(slice(N / 2, version)), |c| pending.slice(&c));
            black_box(routes.update(pending).routes.is_none())
        })
    });
    g.bench_function("ingress", |b| {
        b.iter(|| {
            version += 1;
            let mut pending = Pending::default();
            iw.apply_with(&Event::Apply(ingress(N / 2, version)), |c| {
                pending.ingress(&c)
            });
            black_box(routes.update(pending).routes.map(|t| t.len()))
        })
    });
    g.finish();
}

criterion_group!(benches, route_lookup, head, cluster_change);
criterion_main!(benches);
