//! The etcd store against a real etcd: key layout, metadata the store owns,
//! optimistic concurrency, status/spec separation, deletion rules, bad input.

use std::time::{Duration, Instant};

use futures::StreamExt;
use orca_core::api::{ConfigMap, Deployment, Kind, Pod};
use orca_core::store::WatchEvent;
use orca_core::store::{
    DeleteOptions, Deleted, Error, Guard, PodBinding, Store, StoreConfig, revision_of,
};
use orca_core::yaml;
use orca_testkit::Etcd;
use serde_json::{Value, json};

const SEED: &str = include_str!("../examples/nginx-deployment.yaml");

async fn connect(etcd: &Etcd) -> Store {
    Store::connect(StoreConfig::new(etcd.endpoint()))
        .await
        .expect("connect")
}

/// Stores the seed manifest.
async fn seed(store: &Store) -> Value {
    let docs: Vec<Value> = yaml::from_str_multi("seed", SEED).expect("seed parses");
    store
        .create_value(deployments(), docs[0].clone())
        .await
        .expect("create")
}

fn deployments() -> &'static Kind {
    Kind::lookup("deploy").expect("deployments kind")
}

#[tokio::test]
async fn seed_manifest_round_trips() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let created = seed(&store).await;

    let meta = &created["metadata"];
    assert_eq!(meta["namespace"], "default");
    assert_eq!(meta["generation"], 1);
    assert!(meta["uid"].as_str().is_some_and(|u| u.len() == 36));
    assert!(
        meta["creationTimestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    let api = store.api::<Deployment>("default");
    let read = api.get("nginx-deployment").await.expect("get");
    let spec = read.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(3));
    let container = &spec.template.spec.as_ref().expect("pod spec").containers[0];
    assert_eq!(container.image.as_deref(), Some("nginx:1.7.9"));
    assert_eq!(
        container.ports.as_ref().expect("ports")[0].container_port,
        80
    );
    assert_eq!(
        read.metadata.resource_version,
        meta["resourceVersion"].as_str().map(String::from)
    );

    // The `default` namespace was created on first use.
    let ns = store
        .get_value(Kind::lookup("ns").unwrap(), None, "default")
        .await
        .expect("namespace");
    assert_eq!(ns["metadata"]["name"], "default");

    // Stored under the documented key, as JSON without resourceVersion.
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let raw = client
        .get("/registry/deployments/default/nginx-deployment", None)
        .await
        .unwrap();
    let stored: Value = serde_json::from_slice(raw.kvs()[0].value()).unwrap();
    assert_eq!(stored["spec"]["replicas"], 3);
    assert!(stored["metadata"].get("resourceVersion").is_none());
}

#[tokio::test]
async fn stale_resource_version_is_a_conflict() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let api = store.api::<Deployment>("default");
    seed(&store).await;

    let first = api.get("nginx-deployment").await.unwrap();
    let mut a = first.clone();
    a.spec.as_mut().unwrap().replicas = Some(5);
    let updated = api.update(&a).await.expect("first writer wins");
    assert_eq!(updated.metadata.generation, Some(2));

    let mut stale = first;
    stale.spec.as_mut().unwrap().replicas = Some(1);
    let err = api.update(&stale).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert!(
        err.to_string().contains("the object has been modified"),
        "{err}"
    );
    assert_eq!(
        api.get("nginx-deployment")
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas,
        Some(5)
    );

    // `modify` re-reads and retries, so it always lands.
    let done = api
        .modify("nginx-deployment", false, |d| {
            d.spec.as_mut().unwrap().replicas = Some(7)
        })
        .await
        .unwrap();
    assert_eq!(done.spec.unwrap().replicas, Some(7));
}

#[tokio::test]
async fn status_and_spec_have_separate_owners() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let api = store.api::<Deployment>("default");
    seed(&store).await;

    let mut d = api.get("nginx-deployment").await.unwrap();
    d.status = Some(Default::default());
    d.status.as_mut().unwrap().ready_replicas = Some(2);
    d.spec.as_mut().unwrap().replicas = Some(9);
    let after_status = api.update_status(&d).await.unwrap();
    assert_eq!(
        after_status.status.as_ref().unwrap().ready_replicas,
        Some(2)
    );
    assert_eq!(
        after_status.spec.as_ref().unwrap().replicas,
        Some(3),
        "status write left spec alone"
    );
    assert_eq!(after_status.metadata.generation, Some(1));

    let mut d = after_status;
    d.status = None;
    d.metadata
        .labels
        .get_or_insert_default()
        .insert("tier".into(), "web".into());
    let after_spec = api.update(&d).await.unwrap();
    assert_eq!(
        after_spec.status.as_ref().unwrap().ready_replicas,
        Some(2),
        "spec write left status alone"
    );
    assert_eq!(
        after_spec.metadata.generation,
        Some(1),
        "a label change is not a spec change"
    );
}

#[tokio::test]
async fn create_refuses_to_overwrite_and_needs_a_namespace() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let docs: Vec<Value> = yaml::from_str_multi("seed", SEED).unwrap();
    seed(&store).await;
    let err = store
        .create_value(deployments(), docs[0].clone())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "deployments \"nginx-deployment\" already exists"
    );

    let mut elsewhere = docs[0].clone();
    elsewhere["metadata"]["namespace"] = json!("nowhere");
    let err = store
        .create_value(deployments(), elsewhere)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "namespaces \"nowhere\" not found");
}

#[tokio::test]
async fn invalid_objects_write_nothing() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let mut doc: Value = yaml::from_str_multi::<Value>("seed", SEED)
        .unwrap()
        .remove(0);
    doc["spec"]["replicas"] = json!(-1);
    let err = store.create_value(deployments(), doc).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.replicas: Invalid value: -1: must be greater than or equal to 0"),
        "{err}"
    );
    assert!(
        store
            .list_values(deployments(), None)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn finalizers_and_graceful_pod_deletion() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let cms = store.api::<ConfigMap>("default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("held".into());
    cm.metadata.finalizers = Some(vec!["orca.dev/test".into()]);
    cms.create(&cm).await.unwrap();
    let Deleted::Pending(pending) = cms.delete("held", DeleteOptions::default()).await.unwrap()
    else {
        panic!("a finalizer must hold the object");
    };
    assert!(pending.metadata.deletion_timestamp.is_some());
    let mut release = pending;
    release.metadata.finalizers = None;
    cms.update(&release).await.unwrap();
    assert!(
        cms.get_opt("held").await.unwrap().is_none(),
        "gone once the last finalizer is"
    );

    let pods = store.api::<Pod>("default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "nginx:1.7.9"}]}
    }))
    .unwrap();
    pods.create(&pod).await.unwrap();
    let Deleted::Pending(p) = pods.delete("web", DeleteOptions::default()).await.unwrap() else {
        panic!("a bound pod terminates gracefully");
    };
    assert_eq!(p.metadata.deletion_grace_period_seconds, Some(30));
    let forced = DeleteOptions {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    assert!(matches!(
        pods.delete("web", forced).await.unwrap(),
        Deleted::Gone(_)
    ));
    let err = pods.delete("web", forced).await.unwrap_err();
    assert_eq!(err.to_string(), "pods \"web\" not found");
}

#[tokio::test]
async fn lists_span_many_pages_at_one_revision() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let cms = store.api::<ConfigMap>("default");
    for i in 0..620 {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(format!("cm-{i:04}"));
        cms.create(&cm).await.unwrap();
    }
    let list = cms.list().await.unwrap();
    assert_eq!(list.items.len(), 620);
    assert_eq!(list.items[619].metadata.name.as_deref(), Some("cm-0619"));
    assert!(list.revision > 620);
}

#[tokio::test]
async fn unreachable_etcd_is_one_clear_error() {
    let endpoint = format!("http://127.0.0.1:{}", orca_testkit::closed_port());
    let started = Instant::now();
    let result = async {
        let store = Store::connect(StoreConfig::new(endpoint.clone())).await?;
        store.ping().await
    }
    .await;
    let err = result.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "reported within a few seconds"
    );
    let text = err.to_string();
    assert!(matches!(err, Error::Unavailable { .. }), "{text}");
    assert!(
        text.starts_with(&format!("cannot reach etcd at {endpoint}")),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");
}

#[tokio::test]
async fn a_deposed_leaders_writes_are_refused() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let put = client.put("/orca/leader/test", "me", None).await.unwrap();
    let guard = Guard {
        key: "/orca/leader/test".into(),
        create_revision: put.header().unwrap().revision(),
    };
    let leader = store.with_guard(guard).api::<ConfigMap>("default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("a".into());
    leader.create(&cm).await.expect("the leader may write");

    client.delete("/orca/leader/test", None).await.unwrap();
    cm.metadata.name = Some("b".into());
    let err = leader.create(&cm).await.unwrap_err();
    assert!(matches!(err, Error::NotLeader { .. }), "{err}");
    assert!(
        store
            .api::<ConfigMap>("default")
            .get_opt("b")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn corrupt_stored_values_are_reported_with_their_key() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    client
        .put("/registry/configmaps/default/broken", "{not json", None)
        .await
        .unwrap();
    let err = store
        .api::<ConfigMap>("default")
        .get("broken")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("stored object at /registry/configmaps/default/broken is corrupt"),
        "{err}"
    );
}

fn pod_on(name: &str, node: Option<&str>) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    });
    if let Some(node) = node {
        pod["spec"]["nodeName"] = json!(node);
    }
    pod
}

fn pods() -> &'static Kind {
    Kind::lookup("pods").expect("pods kind")
}

fn rv(obj: &Value) -> &str {
    obj["metadata"]["resourceVersion"].as_str().unwrap()
}

#[tokio::test]
async fn a_pod_in_graceful_termination_survives_its_status_updates() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    store
        .create_value(pods(), pod_on("p", Some("n1")))
        .await
        .unwrap();
    let api = store.api::<Pod>("default");
    let Deleted::Pending(pending) = api.delete("p", DeleteOptions::default()).await.unwrap() else {
        panic!("a bound pod waits for its kubelet");
    };
    assert_eq!(pending.metadata.deletion_grace_period_seconds, Some(30));

    // The kubelet reports the containers stopping: the pod stays.
    let mut status = pending.clone();
    status.status = Some(Default::default());
    status.status.as_mut().unwrap().phase = Some("Running".into());
    let written = api.update_status(&status).await.expect("status update");
    assert!(
        api.get_opt("p").await.unwrap().is_some(),
        "status update removed the pod"
    );
    // So does a spec/metadata write that keeps no finalizers.
    let mut labelled = written.clone();
    labelled.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
    api.update(&labelled).await.expect("metadata update");
    assert!(
        api.get_opt("p").await.unwrap().is_some(),
        "update removed the pod"
    );

    // The kubelet's final delete removes it.
    let done = api
        .delete(
            "p",
            DeleteOptions {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(matches!(done, Deleted::Gone(_)));
    assert!(api.get_opt("p").await.unwrap().is_none());
}

#[tokio::test]
async fn deleting_again_changes_nothing_but_a_shorter_grace_period() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let cms = store.api::<ConfigMap>("default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("held".into());
    cm.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&cm).await.unwrap();
    let Deleted::Pending(first) = cms.delete("held", DeleteOptions::default()).await.unwrap()
    else {
        panic!("finalizers hold the object");
    };
    for grace in [None, Some(0)] {
        let again = cms
            .delete(
                "held",
                DeleteOptions {
                    grace_period_seconds: grace,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let Deleted::Pending(again) = again else {
            panic!("still held")
        };
        assert_eq!(
            again.metadata.resource_version, first.metadata.resource_version,
            "a second delete (grace {grace:?}) wrote the object again"
        );
        assert_eq!(
            again.metadata.deletion_timestamp,
            first.metadata.deletion_timestamp
        );
    }

    // A held, bound pod: grace 30, then 0 (shortened once), then 0 again (nothing).
    let mut pod = pod_on("p", Some("n1"));
    pod["metadata"]["finalizers"] = json!(["example.com/hold"]);
    store.create_value(pods(), pod).await.unwrap();
    let delete = |grace| {
        store.delete_value(
            pods(),
            Some("default"),
            "p",
            DeleteOptions {
                grace_period_seconds: grace,
                ..Default::default()
            },
        )
    };
    let Deleted::Pending(a) = delete(None).await.unwrap() else {
        panic!()
    };
    let Deleted::Pending(b) = delete(Some(0)).await.unwrap() else {
        panic!()
    };
    let Deleted::Pending(c) = delete(Some(0)).await.unwrap() else {
        panic!()
    };
    assert_eq!(a["metadata"]["deletionGracePeriodSeconds"], 30);
    assert_eq!(b["metadata"]["deletionGracePeriodSeconds"], 0);
    assert_ne!(rv(&a), rv(&b), "the shorter grace period is recorded");
    assert_eq!(rv(&b), rv(&c), "the same grace period again writes nothing");
    assert!(
        b["metadata"]["deletionTimestamp"].as_str() <= a["metadata"]["deletionTimestamp"].as_str()
    );

    // Removing the last finalizer of the pod (grace 0) removes it.
    let api = store.api::<Pod>("default");
    let mut held = api.get("p").await.unwrap();
    held.metadata.finalizers = None;
    api.update(&held).await.unwrap();
    assert!(api.get_opt("p").await.unwrap().is_none());
}

#[tokio::test]
async fn a_namespaced_kind_is_never_addressed_without_a_namespace() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    seed(&store).await;
    let err = store
        .get_value(deployments(), None, "nginx-deployment")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NamespaceRequired { .. }), "{err}");
    let err = store
        .delete_value(
            deployments(),
            None,
            "nginx-deployment",
            DeleteOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NamespaceRequired { .. }), "{err}");
    // Listing every namespace is a view of its own, and sees the object.
    let all = store.all::<Deployment>().list().await.unwrap();
    assert_eq!(all.items.len(), 1);
}

#[tokio::test]
async fn one_undecodable_value_costs_only_its_own_object() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let metrics = orca_core::telemetry::Metrics::new();
    store.register_metrics(&metrics);
    let cms = store.api::<ConfigMap>("default");
    for name in ["a", "c"] {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cms.create(&cm).await.unwrap();
    }
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    client
        .put("/registry/configmaps/default/b", "{not json", None)
        .await
        .unwrap();
    let names = |list: &[ConfigMap]| -> Vec<String> {
        list.iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect()
    };
    let list = cms.list().await.expect("the list skips the bad value");
    assert_eq!(names(&list.items), ["a", "c"]);

    // The watch moves past a bad value to the next event.
    let mut events = cms.watch(list.revision + 1).await.unwrap();
    client
        .put("/registry/configmaps/default/b", "[]", None)
        .await
        .unwrap();
    let mut d = ConfigMap::default();
    d.metadata.name = Some("d".into());
    cms.create(&d).await.unwrap();
    let event = loop {
        match tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("an event in time")
            .expect("the watch goes on")
            .expect("no error for a bad value")
        {
            WatchEvent::Progress(_) => continue,
            other => break other,
        }
    };
    let WatchEvent::Added(added) = event else {
        panic!("{event:?}")
    };
    assert_eq!(added.metadata.name.as_deref(), Some("d"));
    let text = metrics.encode().unwrap();
    assert!(
        text.contains(r#"store_corrupt_objects_total{key="/registry/configmaps/default/b"} 2"#),
        "{text}"
    );
}

#[tokio::test]
async fn explicit_nulls_are_stored_as_unset() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let docs: Vec<Value> = yaml::from_str_multi("seed", SEED).expect("seed parses");
    let mut manifest = docs[0].clone();
    manifest["metadata"]["creationTimestamp"] = Value::Null;
    manifest["spec"]["template"]["metadata"]["creationTimestamp"] = Value::Null;
    manifest["spec"]["paused"] = Value::Null;
    let created = store.create_value(deployments(), manifest).await.unwrap();
    assert!(
        created["spec"]["template"]["metadata"]
            .get("creationTimestamp")
            .is_none()
    );
    assert!(created["spec"].get("paused").is_none());

    // A typed read and write back is no spec change.
    let api = store.api::<Deployment>("default");
    let read = api.get("nginx-deployment").await.unwrap();
    let written = api.update(&read).await.unwrap();
    assert_eq!(written.metadata.generation, Some(1));
}

#[tokio::test]
async fn modify_gives_up_on_endless_conflicts() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let cms = store.api::<ConfigMap>("default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("busy".into());
    cms.create(&cm).await.unwrap();
    let endpoint = etcd.endpoint();
    let mut attempts = 0;
    let result = cms
        .modify("busy", false, |c| {
            attempts += 1;
            c.data = Some([("mine".to_string(), "1".to_string())].into());
            // Another writer gets in between this attempt's read and write.
            let endpoint = endpoint.clone();
            let rival = attempts.to_string();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let store = Store::connect(StoreConfig::new(endpoint)).await.unwrap();
                    let api = store.api::<ConfigMap>("default");
                    let mut other = api.get("busy").await.unwrap();
                    other.data = Some([("rival".to_string(), rival)].into());
                    api.update(&other).await.unwrap();
                });
            })
            .join()
            .unwrap();
        })
        .await;
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert_eq!(attempts, 8, "bounded attempts");
}

#[tokio::test]
async fn generate_name_makes_a_unique_name() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let mut names = std::collections::HashSet::new();
    for _ in 0..20 {
        let mut pod = pod_on("", None);
        pod["metadata"].as_object_mut().unwrap().remove("name");
        pod["metadata"]["generateName"] = json!("nginx-deployment-7d9c6b-");
        let created = store.create_value(pods(), pod).await.expect("created");
        let name = created["metadata"]["name"].as_str().unwrap().to_string();
        assert!(name.starts_with("nginx-deployment-7d9c6b-"), "{name}");
        assert_eq!(name.len(), "nginx-deployment-7d9c6b-".len() + 5, "{name}");
        assert!(names.insert(name));
    }
    // Without name or generateName the error says so.
    let mut pod = pod_on("", None);
    pod["metadata"].as_object_mut().unwrap().remove("name");
    let err = store.create_value(pods(), pod).await.unwrap_err();
    assert!(
        err.to_string().contains("name or generateName is required"),
        "{err}"
    );
}

#[tokio::test]
async fn a_node_watch_carries_only_that_nodes_pods() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let api = store.api::<Pod>("default");
    // Created bound (as users do to bypass the scheduler), unbound, elsewhere.
    store
        .create_value(pods(), pod_on("direct", Some("n1")))
        .await
        .unwrap();
    store
        .create_value(pods(), pod_on("pending", None))
        .await
        .unwrap();
    store
        .create_value(pods(), pod_on("other", Some("n2")))
        .await
        .unwrap();

    let view = store.pods_on_node("n1");
    let list = view.list().await.unwrap();
    let names: Vec<_> = list
        .items
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["direct"]);
    assert_eq!(
        list.items[0].metadata.resource_version,
        api.get("direct").await.unwrap().metadata.resource_version,
        "the node's copy is written at the pod's own revision"
    );

    let mut events = view.watch(list.revision + 1).await.unwrap();
    // The scheduler binds `pending` to n1: it arrives.
    let mut pending = api.get("pending").await.unwrap();
    pending.spec.as_mut().unwrap().node_name = Some("n1".into());
    api.update(&pending).await.unwrap();
    // Changes on n2 never reach n1.
    let mut other = api.get("other").await.unwrap();
    other.metadata.labels = Some([("v".to_string(), "2".to_string())].into());
    api.update(&other).await.unwrap();
    store
        .create_value(pods(), pod_on("later", Some("n2")))
        .await
        .unwrap();
    // n1's pods: a status update, then graceful deletion and the final delete.
    let mut direct = api.get("direct").await.unwrap();
    direct.status = Some(Default::default());
    api.update_status(&direct).await.unwrap();
    api.delete("direct", DeleteOptions::default())
        .await
        .unwrap();
    api.delete(
        "direct",
        DeleteOptions {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("events in time")
            .expect("the watch goes on")
            .expect("no error");
        let (what, pod) = match event {
            WatchEvent::Added(p) => ("added", p),
            WatchEvent::Modified(p) => ("modified", p),
            WatchEvent::Deleted(p) => ("deleted", p),
            WatchEvent::Progress(_) => continue,
        };
        assert_eq!(pod.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
        seen.push(format!("{what} {}", pod.metadata.name.unwrap()));
        if what == "deleted" {
            break;
        }
    }
    assert_eq!(
        seen,
        [
            "added pending",
            "modified direct",
            "modified direct",
            "deleted direct"
        ]
    );

    // Nothing of a deleted pod is left in its node's view.
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let keys = client
        .get(
            "/registry/podsbynode/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await
        .unwrap();
    let keys: Vec<_> = keys
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "/registry/podsbynode/n1/default/pending",
            "/registry/podsbynode/n2/default/later",
            "/registry/podsbynode/n2/default/other",
        ]
    );
}

fn services() -> &'static Kind {
    Kind::lookup("svc").expect("services kind")
}

fn service(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["ports"] = json!([{"port": 80}]);
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

#[tokio::test]
async fn cluster_ips_are_unique_under_concurrent_creates_and_released_on_delete() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    // A small range, so concurrent creates really compete for addresses.
    let network = orca_core::store::Network {
        service_cidrs: vec!["10.96.0.0/26".parse().unwrap()],
        ..Default::default()
    };
    store.set_network(&network).await.unwrap();
    let creates = (0..50).map(|i| {
        let store = store.clone();
        async move {
            store
                .create_value(
                    services(),
                    service(&format!("s{i}"), json!({"type": "NodePort"})),
                )
                .await
        }
    });
    let created = futures::future::join_all(creates).await;
    let mut ips = std::collections::HashSet::new();
    let mut ports = std::collections::HashSet::new();
    for svc in created {
        let svc = svc.expect("every create gets an address");
        assert!(ips.insert(svc["spec"]["clusterIP"].as_str().unwrap().to_string()));
        assert!(ports.insert(svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap()));
    }
    assert_eq!(ips.len(), 50);

    // An address that is taken, or outside the range, is an error naming it.
    let taken = ips.iter().next().unwrap().clone();
    let err = store
        .create_value(services(), service("dup", json!({"clusterIP": taken})))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("provided IP is already allocated"),
        "{err}"
    );
    assert!(err.to_string().contains("spec.clusterIPs[0]"), "{err}");
    let err = store
        .create_value(
            services(),
            service("far", json!({"clusterIP": "10.97.0.1"})),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("The range of valid IPs is 10.96.0.0/26"),
        "{err}"
    );

    // So is a node port.
    let taken_port = *ports.iter().next().unwrap();
    let node_port = |name: &str, port: u64| {
        let mut svc = service(name, json!({"type": "NodePort"}));
        svc["spec"]["ports"][0]["nodePort"] = json!(port);
        svc
    };
    let err = store
        .create_value(services(), node_port("dup-port", taken_port))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("provided port is already allocated"),
        "{err}"
    );
    assert!(err.to_string().contains("spec.ports[0].nodePort"), "{err}");
    let err = store
        .create_value(services(), node_port("low-port", 80))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("The range of valid ports is 30000-32767"),
        "{err}"
    );

    // Deleting the holder releases it.
    let holder = store
        .list_values(services(), Some("default"))
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|s| s["spec"]["clusterIP"] == taken.as_str())
        .unwrap();
    let holder_name = holder["metadata"]["name"].as_str().unwrap();
    store
        .delete_value(
            services(),
            Some("default"),
            holder_name,
            DeleteOptions::default(),
        )
        .await
        .unwrap();
    let reused = store
        .create_value(services(), service("dup", json!({"clusterIP": taken})))
        .await
        .expect("a released address can be had again");
    assert_eq!(reused["spec"]["clusterIP"], taken.as_str());

    // The ranges a cluster started with stay.
    let err = store.set_network(&Default::default()).await.unwrap_err();
    assert!(err.to_string().contains("cannot change"), "{err}");
}

#[tokio::test]
async fn only_owners_the_collector_follows_are_held_for_a_cascade() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let cms = store.api::<ConfigMap>("default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("plain".into());
    cms.create(&cm).await.unwrap();
    let foreground = DeleteOptions {
        propagation: Some(orca_core::store::Propagation::Foreground),
        ..Default::default()
    };
    // Nothing would ever remove the finalizer from a ConfigMap: it goes now.
    let gone = cms.delete("plain", foreground).await.unwrap();
    assert!(matches!(gone, Deleted::Gone(_)));
    // A Deployment waits for the collector.
    let held = seed(&store).await;
    let name = held["metadata"]["name"].as_str().unwrap();
    let pending = store
        .delete_value(deployments(), Some("default"), name, foreground)
        .await
        .unwrap();
    let Deleted::Pending(obj) = pending else {
        panic!("held")
    };
    assert_eq!(obj["metadata"]["finalizers"], json!(["foregroundDeletion"]));
}

/// A binding of `pod` as read to `node`.
fn binding(pod: &Pod, node: &str) -> PodBinding {
    PodBinding {
        namespace: pod.metadata.namespace.clone().unwrap(),
        name: pod.metadata.name.clone().unwrap(),
        resource_version: revision_of(pod),
        node: node.to_string(),
    }
}

#[tokio::test]
async fn pods_bound_in_one_transaction_or_not_at_all() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let api = store.api::<Pod>("default");
    for name in ["a", "b", "c", "d"] {
        let mut pod = pod_on(name, None);
        pod["metadata"]["annotations"] = json!({"note": "kept"});
        store.create_value(pods(), pod).await.unwrap();
    }
    let read = |name: &'static str| api.get(name);
    let (a, b) = (read("a").await.unwrap(), read("b").await.unwrap());
    let bound = api
        .bind_all(&[binding(&a, "n1"), binding(&b, "n2")])
        .await
        .unwrap();
    assert!(bound);
    let on_n1 = store.pods_on_node("n1").list().await.unwrap();
    assert_eq!(on_n1.items.len(), 1);
    // The binding is written over the stored pod: nothing else changes,
    // whatever form the binder kept the pod in.
    let b_bound = read("b").await.unwrap();
    let mut expected = b.clone();
    expected.spec.as_mut().unwrap().node_name = Some("n2".into());
    expected.metadata.generation = Some(b.metadata.generation.unwrap_or(1) + 1);
    expected.metadata.resource_version = b_bound.metadata.resource_version.clone();
    assert_eq!(b_bound, expected);
    assert_eq!(on_n1.items[0], read("a").await.unwrap());

    // One pod changed since it was read: nothing of the batch is written.
    let stale = read("c").await.unwrap();
    let mut changed = stale.clone();
    changed.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
    api.update(&changed).await.unwrap();
    let a_again = read("a").await.unwrap();
    let bound = api
        .bind_all(&[binding(&stale, "n3"), binding(&a_again, "n3")])
        .await
        .unwrap();
    assert!(!bound);
    assert_eq!(read("c").await.unwrap().spec.unwrap().node_name, None);
    assert_eq!(
        read("a").await.unwrap().spec.unwrap().node_name.as_deref(),
        Some("n1")
    );
    assert!(
        store
            .pods_on_node("n3")
            .list()
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // A pod deleted since it was read is not bound either, nor brought back.
    let gone = read("d").await.unwrap();
    api.delete("d", DeleteOptions::default()).await.unwrap();
    assert!(!api.bind_all(&[binding(&gone, "n1")]).await.unwrap());
    assert!(api.get_opt("d").await.unwrap().is_none());
}

#[tokio::test]
async fn changing_or_deleting_what_is_gone_is_nothing_to_do() {
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let cms = store.api::<ConfigMap>("default");
    let changed = cms
        .modify_if_exists("missing", false, |c| c.data = None)
        .await
        .unwrap();
    assert!(changed.is_none());
    let deleted = cms
        .delete_if_exists("missing", DeleteOptions::default())
        .await
        .unwrap();
    assert!(deleted.is_none());
    // An object that is there is changed as by `modify`.
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("here".into());
    cms.create(&cm).await.unwrap();
    let changed = cms
        .modify_if_exists("here", false, |c| {
            c.data = Some([("k".to_string(), "v".to_string())].into())
        })
        .await
        .unwrap()
        .expect("there");
    assert_eq!(changed.data.unwrap()["k"], "v");
}

/// Given several members, the store moves on from one it cannot reach:
/// reads, writes and watches all reach the member that is up, every time.
#[tokio::test]
async fn a_member_that_is_down_is_passed_over() {
    let etcd = Etcd::start();
    let down = format!("http://127.0.0.1:{}", orca_testkit::closed_port());
    let store = Store::connect(StoreConfig::new(format!("{down},{}", etcd.endpoint())))
        .await
        .expect("connect");
    for _ in 0..10 {
        store
            .ping()
            .await
            .expect("a ping reaches the member that is up");
    }
    let created = seed(&store).await;
    assert_eq!(created["metadata"]["name"], "nginx-deployment");
    let api = store.api::<Deployment>("default");
    assert!(api.get("nginx-deployment").await.is_ok());
    // A second store begins again with the member that is down: its first
    // request, a watch, reaches the other too.
    let again = Store::connect(StoreConfig::new(format!("{down},{}", etcd.endpoint())))
        .await
        .expect("connect");
    let mut events = again.all::<ConfigMap>().watch(0).await.expect("watch");
    let map: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "m", "namespace": "default"},
    }))
    .unwrap();
    store
        .api::<ConfigMap>("default")
        .create(&map)
        .await
        .expect("create");
    let event = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an event");
    assert!(matches!(event, Some(Ok(WatchEvent::Added(_)))), "{event:?}");
}

/// The cluster's image policy refuses, as they are written, pods and pod
/// templates naming an image it does not allow, and says which field and
/// which rules; what is already stored keeps its images through updates.
#[tokio::test]
async fn the_image_policy_refuses_new_images_it_does_not_allow() {
    use orca_core::store::ImagePolicy;
    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let pod = |name: &str, image: &str| -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": image}]},
        }))
        .unwrap()
    };
    let pods = store.api::<Pod>("default");
    // Stored before there is a policy.
    let old = pods
        .create(&pod("old", "evil.io/x:1"))
        .await
        .expect("no policy yet");
    store
        .set_image_policy(&ImagePolicy {
            allow: vec!["docker.io/library/*".into()],
        })
        .await
        .unwrap();
    assert_eq!(
        store.image_policy().await.unwrap().allow,
        ["docker.io/library/*"]
    );

    pods.create(&pod("web", "nginx:1.7.9"))
        .await
        .expect("allowed");
    let err = pods
        .create(&pod("bad", "evil.io/x:1"))
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("spec.containers[0].image"), "{text}");
    assert!(text.contains("\"evil.io/x:1\""), "{text}");
    assert!(text.contains("not allowed in this cluster"), "{text}");
    assert!(text.contains("docker.io/library/*"), "{text}");
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");

    // A change that keeps the images passes; one that brings a new image
    // the policy refuses does not.
    let mut labelled = old.clone();
    labelled.metadata.labels = Some([("a".to_string(), "b".to_string())].into());
    let labelled = pods.update(&labelled).await.expect("same images");
    let mut swapped = labelled.clone();
    swapped.spec.as_mut().unwrap().containers[0].image = Some("evil.io/y:2".into());
    assert!(matches!(
        pods.update(&swapped).await,
        Err(Error::Invalid(_))
    ));

    // A Deployment's template is checked the same way.
    let mut docs: Vec<Value> = yaml::from_str_multi("seed", SEED).unwrap();
    docs[0]["spec"]["template"]["spec"]["containers"][0]["image"] = json!("evil.io/x:1");
    let err = store
        .create_value(deployments(), docs[0].clone())
        .await
        .expect_err("refused");
    assert!(
        err.to_string()
            .contains("spec.template.spec.containers[0].image"),
        "{err}"
    );
}
