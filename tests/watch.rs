//! The watch pipeline against a real etcd: ordered events, re-list after
//! compaction, survival of an etcd restart, and controllers on top.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use orca_core::api::ConfigMap;
use orca_core::store::{Api, DeleteOptions, Store, StoreConfig, WatchEvent};
use orca_core::telemetry::Metrics;
use orca_core::watch::{self, Action, Controller, Event, Informers, ObjectKey, reflector, watcher};
use orca_testkit::Etcd;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);

async fn connect(etcd: &Etcd) -> Store {
    Store::connect(StoreConfig::new(etcd.endpoint()))
        .await
        .expect("connect")
}

fn cm(name: &str, value: &str) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c.data = Some(BTreeMap::from([("v".to_string(), value.to_string())]));
    c
}

fn value(c: &ConfigMap) -> &str {
    &c.data.as_ref().expect("data")["v"]
}

/// The watcher's next item, which must come in time: it never ends.
async fn next_event<S: futures::Stream + Unpin>(events: &mut S) -> S::Item {
    timeout(WAIT, events.next())
        .await
        .expect("event in time")
        .expect("the watcher never ends")
}

async fn put(api: &Api<ConfigMap>, name: &str, v: &str) {
    match api.get_opt(name).await.unwrap() {
        Some(mut existing) => {
            existing.data = cm(name, v).data;
            api.update(&existing).await.unwrap();
        }
        None => {
            api.create(&cm(name, v)).await.unwrap();
        }
    }
}

/// Creates `cm-0000` to `cm-{n-1}`, each with value "1".
async fn create_numbered(api: &Api<ConfigMap>, n: usize) {
    for i in 0..n {
        api.create(&cm(&format!("cm-{i:04}"), "1")).await.unwrap();
    }
}

/// Polls `check` until it holds, or fails the test after [`WAIT`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn watch_delivers_create_update_delete_in_order() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let api = store.api::<ConfigMap>("default");
    let start = store.ping().await.unwrap() + 1;
    let mut events = api.watch(start).await.unwrap();
    put(&api, "a", "1").await;
    put(&api, "a", "2").await;
    api.delete("a", DeleteOptions::default()).await.unwrap();

    let mut seen = Vec::new();
    while seen.len() < 3 {
        match timeout(WAIT, events.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .unwrap()
        {
            WatchEvent::Added(c) => seen.push(format!("added {}", value(&c))),
            WatchEvent::Modified(c) => seen.push(format!("modified {}", value(&c))),
            WatchEvent::Deleted(c) => seen.push(format!("deleted {}", value(&c))),
            WatchEvent::Progress(_) => {}
        }
    }
    assert_eq!(seen, ["added 1", "modified 2", "deleted 2"]);
}

#[tokio::test]
async fn compaction_forces_a_relist_that_loses_nothing() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let api = store.api::<ConfigMap>("default");
    put(&api, "kept", "1").await;
    put(&api, "removed", "1").await;

    let (reader, writer) = watch::store::<ConfigMap>();
    let mut events = Box::pin(reflector(writer, watcher(api.view())));
    // Consume the initial list only; the watch itself is not opened yet.
    let mut initial = Vec::new();
    loop {
        let e = events.next().await.unwrap().unwrap();
        let done = e == Event::InitDone;
        initial.push(e);
        if done {
            break;
        }
    }
    assert_eq!(initial.len(), 4, "Init, two InitApply, InitDone");
    assert!(reader.has_synced());

    // While the watcher is not looking: changes, then a compaction past them.
    put(&api, "kept", "2").await;
    put(&api, "added", "1").await;
    api.delete("removed", DeleteOptions::default())
        .await
        .unwrap();
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let now = store.ping().await.unwrap();
    client.compact(now, None).await.unwrap();

    let mut saw_compacted = false;
    loop {
        match timeout(WAIT, events.next())
            .await
            .expect("progress")
            .unwrap()
        {
            Err(orca_core::store::Error::Compacted { .. }) => saw_compacted = true,
            Err(e) => panic!("unexpected error: {e}"),
            Ok(Event::InitDone) => break,
            Ok(_) => {}
        }
    }
    assert!(saw_compacted, "the watcher was told its revision is gone");
    let mut names: Vec<_> = reader
        .list()
        .iter()
        .map(|c| (c.metadata.name.clone().unwrap(), value(c).to_string()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("added".into(), "1".into()),
            ("kept".to_string(), "2".to_string())
        ]
    );

    // And it keeps watching after the re-list.
    put(&api, "later", "1").await;
    let next = timeout(WAIT, events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(next, Event::Apply(c) if c.metadata.name.as_deref() == Some("later")));
}

#[tokio::test]
async fn a_watcher_survives_an_etcd_restart() {
    let mut etcd = Etcd::start();
    let store = connect(&etcd).await;
    let api = store.api::<ConfigMap>("default");
    put(&api, "before", "1").await;

    let (reader, writer) = watch::store::<ConfigMap>();
    let errors = Arc::new(Mutex::new(0usize));
    let counted = errors.clone();
    let pipeline = tokio::spawn(reflector(writer, watcher(api.view())).for_each(move |e| {
        if e.is_err() {
            *counted.lock().unwrap() += 1;
        }
        async {}
    }));
    eventually("first sync", || reader.has_synced() && reader.len() == 1).await;

    etcd.kill();
    eventually("the watcher to notice etcd is gone", || {
        *errors.lock().unwrap() > 0
    })
    .await;
    etcd.restart();

    // Written after the restart: reaches the cache through the resumed watch.
    let writer_store = connect(&etcd).await;
    let api2 = writer_store.api::<ConfigMap>("default");
    put(&api2, "after", "1").await;
    put(&api2, "before", "2").await;
    eventually("changes after the restart", || {
        reader.len() == 2
            && reader
                .get(&ObjectKey::new(Some("default"), "before"))
                .is_some_and(|c| value(&c) == "2")
    })
    .await;
    assert!(reader.has_synced());
    pipeline.abort();
}

/// The value of `series` (exact, with labels) in `metrics`.
fn series(metrics: &Metrics, series: &str) -> Option<f64> {
    metrics
        .encode()
        .expect("encodes")
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn a_watch_status_reports_an_etcd_outage_and_the_recovery() {
    let mut etcd = Etcd::start();
    let store = connect(&etcd).await;
    let api = store.api::<ConfigMap>("default");
    put(&api, "before", "1").await;
    let registry = Metrics::new();
    let status = watch::WatchMetrics::register(&registry).status("configmaps");
    let (reader, writer) = watch::store::<ConfigMap>();
    let pipeline = tokio::spawn(
        reflector(
            writer,
            watch::watcher_with_status(api.view(), status.clone()),
        )
        .for_each(|_| async {}),
    );
    eventually("first sync", || reader.has_synced() && status.is_up()).await;
    let up = r#"orca_watch_up{watch="configmaps"}"#;
    let since = r#"orca_watch_since_last_sync_seconds{watch="configmaps"}"#;
    let failures = r#"orca_watch_failures_total{watch="configmaps"}"#;
    assert_eq!(series(&registry, up), Some(1.0));
    assert_eq!(series(&registry, since), Some(0.0));

    etcd.kill();
    eventually("the status says the watch is down", || {
        !status.is_up() && series(&registry, failures).is_some_and(|n| n >= 1.0)
    })
    .await;
    assert_eq!(series(&registry, up), Some(0.0));
    eventually("the time since the last sync grows", || {
        series(&registry, since).is_some_and(|s| s > 0.0)
    })
    .await;
    assert!(status.check(Duration::ZERO).is_err());

    // Nothing changes in etcd meanwhile: the watch coming back is itself
    // the recovery, with no event to show for it.
    etcd.restart();
    eventually("the status says the watch is up again", || status.is_up()).await;
    assert_eq!(series(&registry, up), Some(1.0));
    assert_eq!(series(&registry, since), Some(0.0));
    assert!(status.check(Duration::ZERO).is_ok());
    pipeline.abort();
}

#[tokio::test]
async fn controller_reconciles_each_change_once_it_has_synced() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let api = store.api::<ConfigMap>("default");
    put(&api, "one", "1").await;

    let informers = Informers::new(store.clone(), &Metrics::new());
    let controller = Controller::new(&informers.informer(api.view()));
    let reader = controller.reader();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = log.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let requeued = Arc::new(Mutex::new(0usize));
    let requeues = requeued.clone();
    let cache = reader.clone();
    let task = tokio::spawn(controller.run(
        move |key: ObjectKey| {
            let seen = seen.clone();
            let requeues = requeues.clone();
            let cache = cache.clone();
            async move {
                let state = cache
                    .get(&key)
                    .map_or("gone".to_string(), |c| value(&c).to_string());
                seen.lock().unwrap().push(format!("{} {state}", key.name));
                if key.name == "again" {
                    let mut n = requeues.lock().unwrap();
                    *n += 1;
                    if *n < 3 {
                        return Ok::<_, String>(Action::Requeue(Duration::from_millis(50)));
                    }
                }
                Ok(Action::AwaitChange)
            }
        },
        async {
            let _ = stop_rx.await;
        },
    ));

    eventually("initial reconcile", || {
        log.lock().unwrap().contains(&"one 1".to_string())
    })
    .await;
    put(&api, "two", "1").await;
    eventually("new object", || {
        log.lock().unwrap().contains(&"two 1".to_string())
    })
    .await;
    api.delete("two", DeleteOptions::default()).await.unwrap();
    eventually("deleted object", || {
        log.lock().unwrap().contains(&"two gone".to_string())
    })
    .await;
    put(&api, "again", "1").await;
    eventually("requeues", || *requeued.lock().unwrap() >= 3).await;
    assert!(reader.has_synced());

    stop_tx.send(()).unwrap();
    timeout(WAIT, task)
        .await
        .expect("controller stops on shutdown")
        .unwrap();
}

#[tokio::test]
async fn a_list_longer_than_a_page_arrives_whole_then_the_watch_follows() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let api = store.api::<ConfigMap>("default");
    // More than two pages of 500.
    create_numbered(&api, 1100).await;
    let mut events = Box::pin(watcher(api.view()));
    let mut next = async || next_event(&mut events).await.expect("no error");
    assert_eq!(next().await, Event::Init);
    let mut names = Vec::new();
    let mut revisions = std::collections::BTreeSet::new();
    loop {
        match next().await {
            Event::InitApply(c) => {
                names.push(c.metadata.name.clone().unwrap());
                revisions.insert(c.metadata.resource_version.clone().unwrap());
            }
            Event::InitDone => break,
            other => panic!("unexpected {other:?} during the list"),
        }
    }
    let want: Vec<String> = (0..1100).map(|i| format!("cm-{i:04}")).collect();
    assert_eq!(names, want, "every object once, in key order");
    assert_eq!(revisions.len(), 1100, "each object keeps its own revision");
    put(&api, "cm-0500", "2").await;
    match next().await {
        Event::Apply(c) => assert_eq!(value(&c), "2"),
        other => panic!("expected the change, got {other:?}"),
    }
}

#[tokio::test]
async fn a_list_broken_between_pages_starts_over_from_the_current_state() {
    let mut etcd = Etcd::start();
    let store = connect(&etcd).await;
    let api = store.api::<ConfigMap>("default");
    create_numbered(&api, 1100).await;
    let mut events = Box::pin(watcher(api.view()));
    let mut next = async || next_event(&mut events).await;
    // The first page only: the next is read when this one is handed out.
    assert_eq!(next().await.unwrap(), Event::Init);
    for _ in 0..500 {
        assert!(matches!(next().await.unwrap(), Event::InitApply(_)));
    }
    // Changes in the pages not read yet, then etcd goes away.
    api.delete("cm-0900", DeleteOptions::default())
        .await
        .unwrap();
    put(&api, "cm-2000", "1").await;
    etcd.kill();
    assert!(next().await.is_err(), "the next page cannot be read");

    // Once etcd is back the list starts over, at the current revision.
    etcd.restart();
    let mut names = Vec::new();
    let mut started = false;
    loop {
        match next().await {
            Err(_) if !started => continue,
            Ok(Event::Init) if !started => started = true,
            Ok(Event::InitApply(c)) if started => names.push(c.metadata.name.unwrap()),
            Ok(Event::InitDone) if started => break,
            other => panic!("unexpected {other:?} (relist started: {started})"),
        }
    }
    let mut want: Vec<String> = (0..1100)
        .filter(|i| *i != 900)
        .map(|i| format!("cm-{i:04}"))
        .collect();
    want.push("cm-2000".into());
    assert_eq!(names, want, "every current object once, none deleted");
}

/// etcd's own count of open watchers, from its `/metrics`.
fn etcd_watchers(etcd: &Etcd) -> u64 {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(etcd.client_addr()).expect("etcd metrics");
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .expect("etcd reports its watchers")
        .trim()
        .parse()
        .unwrap()
}

type Log = Arc<Mutex<Vec<String>>>;

/// Runs `controller`, logging `name state` per reconcile into the returned
/// log, until the returned sender is dropped or sent to.
fn run_logged(
    controller: Controller<ConfigMap>,
) -> (
    Log,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let log: Log = Arc::default();
    let seen = log.clone();
    let reader = controller.reader();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(controller.run(
        move |key: ObjectKey| {
            let state = reader
                .get(&key)
                .map_or("gone".to_string(), |c| value(&c).to_string());
            seen.lock().unwrap().push(format!("{} {state}", key.name));
            async { Ok::<_, String>(Action::AwaitChange) }
        },
        async {
            let _ = stop_rx.await;
        },
    ));
    (log, stop_tx, task)
}

fn logged(log: &Log, line: &str) -> bool {
    log.lock().unwrap().iter().any(|l| l == line)
}

#[tokio::test]
async fn controllers_sharing_a_cache_make_one_watch() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let api = store.api::<ConfigMap>("default");
    put(&api, "one", "1").await;
    let before = etcd_watchers(&etcd);

    let metrics = Metrics::new();
    let informers = Informers::new(store.clone(), &metrics);
    let (a, _stop_a, _ta) = run_logged(Controller::new(&informers.all::<ConfigMap>()).named("a"));
    let (b, _stop_b, _tb) = run_logged(Controller::new(&informers.all::<ConfigMap>()).named("b"));
    eventually("both reconcile what was listed", || {
        logged(&a, "one 1") && logged(&b, "one 1")
    })
    .await;
    put(&api, "two", "1").await;
    eventually("both reconcile a change", || {
        logged(&a, "two 1") && logged(&b, "two 1")
    })
    .await;

    assert_eq!(etcd_watchers(&etcd) - before, 1, "one watch for both");
    let text = metrics.encode().unwrap();
    assert!(
        text.contains(r#"cache_lists_total{kind="ConfigMap",prefix="/registry/configmaps/"} 1"#),
        "one list for both:\n{text}"
    );
    for name in ["a", "b"] {
        assert!(
            text.contains(&format!(
                r#"controller_reconciles_total{{controller="{name}"}}"#
            )),
            "{text}"
        );
    }
}

#[tokio::test]
async fn a_controller_waits_for_every_cache_it_reads() {
    // The secondary cache follows a second etcd, down at first.
    let etcd = Etcd::start();
    let mut other = Etcd::start();
    let store = connect(&etcd).await;
    let other_store = connect(&other).await;
    other.kill();
    let api = store.api::<ConfigMap>("default");
    put(&api, "one", "1").await;

    let metrics = Metrics::new();
    let informers = Informers::new(store.clone(), &metrics);
    let secondary = Informers::new(other_store, &Metrics::new());
    let primary = informers.all::<ConfigMap>();
    let controller = Controller::new(&primary)
        .named("waiting")
        .reads(&secondary.all::<ConfigMap>());
    let (log, _stop, _task) = run_logged(controller);

    // The key is queued once the primary cache has listed, and waits.
    eventually("the key queued", || {
        primary.reader().has_synced()
            && metrics
                .encode()
                .unwrap()
                .contains(r#"controller_queue_depth{controller="waiting"} 1"#)
    })
    .await;
    assert!(
        log.lock().unwrap().is_empty(),
        "reconciled before the secondary cache listed"
    );

    other.restart();
    eventually("reconciled once every cache listed", || {
        logged(&log, "one 1")
    })
    .await;
}

#[tokio::test]
async fn an_object_deleted_while_the_watch_was_down_is_reconciled_as_deleted() {
    let etcd = Etcd::start();
    let relay = orca_testkit::Relay::start(etcd.client_addr());
    let direct = connect(&etcd).await;
    let relayed = Store::connect(StoreConfig::new(relay.endpoint()))
        .await
        .expect("connect through the relay");
    let api = direct.api::<ConfigMap>("default");
    put(&api, "kept", "1").await;
    put(&api, "doomed", "1").await;

    let metrics = Metrics::new();
    let informers = Informers::new(relayed, &metrics);
    let (log, _stop, _task) = run_logged(Controller::new(&informers.all::<ConfigMap>()));
    eventually("first reconciles", || logged(&log, "doomed 1")).await;

    // The watch goes down; meanwhile the object is deleted and the history
    // compacted, so the watch cannot resume and the cache re-lists.
    relay.cut();
    api.delete("doomed", DeleteOptions::default())
        .await
        .unwrap();
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let revision = client
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(revision, None).await.unwrap();
    relay.restore();
    eventually("the deletion reconciled", || logged(&log, "doomed gone")).await;
    assert!(
        metrics
            .encode()
            .unwrap()
            .contains(r#"cache_lists_total{kind="ConfigMap",prefix="/registry/configmaps/"} 2"#),
        "found through a re-list"
    );
}

#[tokio::test]
async fn owned_objects_requeue_their_owner() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let api = store.api::<ConfigMap>("default");
    put(&api, "parent", "1").await;
    let parent = api.get("parent").await.unwrap();

    let informers = Informers::new(store.clone(), &Metrics::new());
    let controller = Controller::new(&informers.all::<ConfigMap>())
        .owns(&informers.all::<k8s_openapi::api::core::v1::Secret>());
    let (log, _stop, _task) = run_logged(controller);
    eventually("first reconcile", || logged(&log, "parent 1")).await;
    let first = log.lock().unwrap().len();

    let secrets = store.api::<k8s_openapi::api::core::v1::Secret>("default");
    let mut child = k8s_openapi::api::core::v1::Secret::default();
    child.metadata.name = Some("child".into());
    child.metadata.owner_references = Some(vec![orca_core::api::OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "parent".into(),
        uid: parent.metadata.uid.clone().unwrap(),
        ..Default::default()
    }]);
    secrets.create(&child).await.unwrap();
    eventually("the owner requeued by its child", || {
        log.lock().unwrap().len() > first
    })
    .await;
    assert!(log.lock().unwrap()[first..].iter().all(|l| l == "parent 1"));
}

#[tokio::test]
async fn failures_back_off_and_concurrency_is_bounded() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let api = store.api::<ConfigMap>("default");
    for i in 0..6 {
        put(&api, &format!("cm-{i}"), "1").await;
    }
    put(&api, "flaky", "1").await;

    let informers = Informers::new(store.clone(), &Metrics::new());
    let controller = Controller::new(&informers.all::<ConfigMap>())
        .concurrency(2)
        .error_backoff(Duration::from_millis(50), Duration::from_secs(1));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let inflight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let attempts: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
    let (gate2, inflight2, most2, done2, attempts2) = (
        gate.clone(),
        inflight.clone(),
        most.clone(),
        done.clone(),
        attempts.clone(),
    );
    use std::sync::atomic::Ordering::SeqCst;
    let _task = tokio::spawn(controller.run(
        move |key: ObjectKey| {
            let (gate, inflight, most, done, attempts) = (
                gate2.clone(),
                inflight2.clone(),
                most2.clone(),
                done2.clone(),
                attempts2.clone(),
            );
            async move {
                if key.name == "flaky" {
                    let mut a = attempts.lock().unwrap();
                    a.push(tokio::time::Instant::now());
                    return if a.len() < 4 {
                        Err("not yet".to_string())
                    } else {
                        Ok(Action::AwaitChange)
                    };
                }
                let now = inflight.fetch_add(1, SeqCst) + 1;
                most.fetch_max(now, SeqCst);
                gate.acquire().await.unwrap().forget();
                inflight.fetch_sub(1, SeqCst);
                done.fetch_add(1, SeqCst);
                Ok(Action::AwaitChange)
            }
        },
        std::future::pending(),
    ));
    eventually("two reconciles held at once", || inflight.load(SeqCst) == 2).await;
    gate.add_permits(6);
    eventually("all reconciled", || done.load(SeqCst) == 6).await;
    assert_eq!(most.load(SeqCst), 2, "never more than the limit at once");

    eventually("the flaky key succeeds", || {
        attempts.lock().unwrap().len() == 4
    })
    .await;
    let at = attempts.lock().unwrap().clone();
    for (i, pair) in at.windows(2).enumerate() {
        let floor = Duration::from_millis(50) * 2u32.pow(i as u32);
        assert!(
            pair[1] - pair[0] >= floor,
            "retry {i} came after {:?}, before its back-off of {floor:?}",
            pair[1] - pair[0]
        );
    }
}
