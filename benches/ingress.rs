//! Hot paths of the ingress proxy: route lookup among 10k routes, and the
//! per-request head work (parse, validate, rewrite for the upstream).
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
//! Absolute times are noisy on this machine; compare within one run.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
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

criterion_group!(benches, route_lookup, head);
criterion_main!(benches);
