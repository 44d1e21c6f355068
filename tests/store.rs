//! The etcd store against a real etcd: key layout, metadata the store owns,
//! optimistic concurrency, status/spec separation, deletion rules, bad input.

use std::time::{Duration, Instant};

use orca_core::api::{ConfigMap, Deployment, Kind, Pod};
use orca_core::store::{DeleteOptions, Deleted, Error, Guard, Store, StoreConfig};
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

    let api = store.api::<Deployment>(Some("default"));
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
    let api = store.api::<Deployment>(Some("default"));
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
    let api = store.api::<Deployment>(Some("default"));
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
    let cms = store.api::<ConfigMap>(Some("default"));
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

    let pods = store.api::<Pod>(Some("default"));
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
    let cms = store.api::<ConfigMap>(Some("default"));
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
    let leader = store.with_guard(guard).api::<ConfigMap>(Some("default"));
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("a".into());
    leader.create(&cm).await.expect("the leader may write");

    client.delete("/orca/leader/test", None).await.unwrap();
    cm.metadata.name = Some("b".into());
    let err = leader.create(&cm).await.unwrap_err();
    assert!(matches!(err, Error::NotLeader { .. }), "{err}");
    assert!(
        store
            .api::<ConfigMap>(Some("default"))
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
        .api::<ConfigMap>(Some("default"))
        .get("broken")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("stored object at /registry/configmaps/default/broken is corrupt"),
        "{err}"
    );
}
