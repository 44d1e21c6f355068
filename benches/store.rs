//! The etcd store against a real etcd: creates, guarded updates, pipelined
//! creates, watch throughput and get latency.
//!
//! Run: `cargo bench -p orca-benches --bench store` (needs `/usr/bin/etcd`,
//! or `ORCA_ETCD_BIN`). One etcd (`orca_testkit::Etcd`) serves every bench;
//! all objects are ConfigMaps written through `Store::api`, over the one gRPC
//! connection a `Store` holds.
//!
//! - `create`: sequential `Api::create` with unique names (one etcd txn each;
//!   etcd fsyncs every write).
//! - `update`: sequential guarded `Api::update` of one object, carrying the
//!   returned resourceVersion (a read plus a txn each).
//! - `create_concurrent_16`: creates spread over 16 tokio tasks, pipelined
//!   on the one connection, so etcd can batch their fsyncs.
//! - `watch_live_16`: `orca_core::watch::watcher` on an empty namespace, then
//!   creates from 16 tasks; timed until the watcher has seen every `Apply`.
//! - `watch_catchup_1000`: `Api::watch` from a past revision, replaying 1000
//!   stored creates, as a watcher resuming after a disconnect does. etcd
//!   (3.4) feeds such an unsynced watcher at most 1000 revisions per 100 ms
//!   sync tick, so this is etcd's catch-up pace, not Orca's decode cost:
//!   2500 events took ~310 ms in a trial run.
//! - `get`: latency of one `Api::get`.
//!
//! Latest results, 2026-11-25, this machine (2 cores, shared; etcd 3.4.23
//! from Debian's etcd-server): criterion's estimate [95% confidence
//! interval] of the time per element, and the estimated elements/s:
//!
//! | bench                | time per element              | elements/s |
//! |----------------------|-------------------------------|------------|
//! | create               | 822 µs [792 µs, 852 µs]       | 1,217      |
//! | update               | 1.10 ms [1.09 ms, 1.13 ms]    | 906        |
//! | create_concurrent_16 | 250 µs [236 µs, 268 µs]       | 4,000      |
//! | watch_live_16        | 291 µs [281 µs, 305 µs]       | 3,440      |
//! | watch_catchup_1000   | 103 µs (102.7 ms per 1000)    | 9,736      |
//! | get                  | 409 µs [381 µs, 456 µs]       | 2,445      |
//!
//! So: 16 creates in flight give ~3.3x the sequential rate; a live watcher
//! keeps up with them (its rate is the write rate); an update costs ~1.3
//! creates (it reads before its guarded txn).
//!
//! Absolute numbers are noisy on this shared machine (other builds run
//! beside it); only ratios within one run are meaningful.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use orca_core::store::{Api, Store, StoreConfig, WatchEvent};
use orca_core::watch::{Event, watcher};
use orca_testkit::Etcd;
use tokio::runtime::Runtime;

/// Tasks in flight for the concurrent benches.
const CONCURRENCY: u64 = 16;
/// Objects one watch replays per iteration of `watch_catchup_1000`.
const REPLAYED: u64 = 1000;
/// Longest wait for a watch to deliver what was written.
const WATCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Names are unique across the whole run, so no create ever collides.
static NEXT_NAME: AtomicU64 = AtomicU64::new(0);

fn config_map(prefix: &str) -> ConfigMap {
    let n = NEXT_NAME.fetch_add(1, Ordering::Relaxed);
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(format!("{prefix}-{n}"));
    cm.data = Some(BTreeMap::from([
        (
            "app.conf".to_string(),
            format!("listen = 8080\nworkers = 4\nid = {n}\n"),
        ),
        ("owner".to_string(), "bench".to_string()),
    ]));
    cm
}

async fn create_namespace(store: &Store, name: &str) {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.into());
    store
        .cluster_api::<Namespace>()
        .create(&ns)
        .await
        .expect("creating a bench namespace");
}

/// Creates `n` ConfigMaps from [`CONCURRENCY`] tasks taking work from one
/// counter, and returns once all are written.
async fn create_concurrently(api: &Api<ConfigMap>, prefix: &'static str, n: u64) {
    let claimed = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..CONCURRENCY.min(n))
        .map(|_| {
            let api = api.clone();
            let claimed = claimed.clone();
            tokio::spawn(async move {
                while claimed.fetch_add(1, Ordering::Relaxed) < n {
                    api.create(&config_map(prefix)).await.expect("create");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("create task");
    }
}

fn store_benches(c: &mut Criterion) {
    let etcd = Etcd::start();
    let rt = Runtime::new().expect("tokio runtime");
    let store = rt
        .block_on(Store::connect(StoreConfig::new(etcd.endpoint())))
        .expect("connecting to etcd");
    let api = store.api::<ConfigMap>("default");
    // The first create in `default` also creates the namespace; keep that
    // out of the measurements.
    let target = rt
        .block_on(api.create(&config_map("target")))
        .expect("creating the get/update target");
    let target_name = target.metadata.name.clone().expect("name");

    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(1));

    group.bench_function("create", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let api = api.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    api.create(&config_map("create")).await.expect("create");
                }
                start.elapsed()
            }
        });
    });

    group.bench_function("update", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let api = api.clone();
            let name = target_name.clone();
            async move {
                let mut cm = api.get(&name).await.expect("get the update target");
                let start = Instant::now();
                for i in 0..iters {
                    cm.data
                        .get_or_insert_default()
                        .insert("counter".into(), i.to_string());
                    cm = api.update(&cm).await.expect("guarded update");
                }
                start.elapsed()
            }
        });
    });

    group.bench_function("create_concurrent_16", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let api = api.clone();
            async move {
                let start = Instant::now();
                create_concurrently(&api, "concurrent", iters).await;
                start.elapsed()
            }
        });
    });

    let namespaces = AtomicU64::new(0);
    group.bench_function("watch_live_16", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let store = store.clone();
            // A fresh namespace per call: the watcher's initial list is empty.
            let ns = format!("live-{}", namespaces.fetch_add(1, Ordering::Relaxed));
            async move {
                create_namespace(&store, &ns).await;
                let api = store.api::<ConfigMap>(ns.as_str());
                let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
                let events = watcher(api.view());
                let seen = tokio::spawn(async move {
                    let mut events = std::pin::pin!(events);
                    let mut ready = Some(ready_tx);
                    let mut applied = 0;
                    while applied < iters {
                        match events.next().await.expect("the watcher never ends") {
                            Ok(Event::InitDone) => {
                                if let Some(tx) = ready.take() {
                                    let _ = tx.send(());
                                }
                            }
                            Ok(Event::Apply(_)) => applied += 1,
                            Ok(_) => {}
                            Err(e) => panic!("watcher error: {e}"),
                        }
                    }
                });
                ready_rx.await.expect("watcher listed");
                let start = Instant::now();
                create_concurrently(&api, "live", iters).await;
                tokio::time::timeout(WATCH_TIMEOUT, seen)
                    .await
                    .expect("watcher saw every create in time")
                    .expect("watcher task");
                start.elapsed()
            }
        });
    });

    // Written once; every iteration watches them again from the start.
    let replay = store.api::<ConfigMap>("replay");
    let replay_from = rt.block_on(async {
        create_namespace(&store, "replay").await;
        let from = store.ping().await.expect("ping") + 1;
        create_concurrently(&replay, "replay", REPLAYED).await;
        from
    });
    group.throughput(Throughput::Elements(REPLAYED));
    // ~100 ms per iteration: flat sampling fits 10 samples in the budget.
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function("watch_catchup_1000", |b| {
        b.to_async(&rt).iter(|| {
            let replay = replay.clone();
            async move {
                let mut events = replay.watch(replay_from).await.expect("watch");
                let mut added = 0;
                while added < REPLAYED {
                    let next = tokio::time::timeout(WATCH_TIMEOUT, events.next())
                        .await
                        .expect("replayed event in time")
                        .expect("watch stream open");
                    match next.expect("watch event") {
                        WatchEvent::Added(_) => added += 1,
                        other => panic!("unexpected replayed event {other:?}"),
                    }
                }
            }
        });
    });

    group.throughput(Throughput::Elements(1));
    group.sampling_mode(SamplingMode::Auto);
    group.bench_function("get", |b| {
        let (api, name) = (&api, target_name.as_str());
        b.to_async(&rt)
            .iter(move || async move { api.get(name).await.expect("get") });
    });

    group.finish();
    drop(etcd);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = store_benches
}
criterion_main!(benches);
