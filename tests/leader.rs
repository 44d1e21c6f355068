//! Leader election against a real etcd: one leader at a time, and a quick
//! takeover when the leader dies.

use std::time::Duration;

use orca_core::leader::{ElectionConfig, campaign};
use orca_core::store::{Store, StoreConfig};
use orca_testkit::Etcd;
use tokio::time::timeout;

const TTL: Duration = Duration::from_secs(3);

fn config(identity: &str) -> ElectionConfig {
    config_with_ttl(identity, TTL)
}

fn config_with_ttl(identity: &str, ttl: Duration) -> ElectionConfig {
    ElectionConfig {
        ttl,
        ..ElectionConfig::new("/orca/leader/controllers", identity)
    }
}

async fn connect(etcd: &Etcd) -> Store {
    Store::connect(StoreConfig::new(etcd.endpoint()))
        .await
        .expect("connect")
}

#[tokio::test]
async fn the_other_candidate_takes_over_when_the_leader_dies() {
    let etcd = Etcd::start();
    let (a, b) = (connect(&etcd).await, connect(&etcd).await);

    let leader_a = campaign(&a, &config("master-a")).await.expect("a leads");
    let b_campaign = tokio::spawn(async move { campaign(&b, &config("master-b")).await });

    // Several renewals pass and `a` is still the only leader.
    tokio::time::sleep(TTL * 2).await;
    assert!(!b_campaign.is_finished(), "only one leader at a time");
    assert!(!leader_a.is_lost());

    // The leader dies: it stops renewing, nothing is revoked. The survivor
    // takes over once its lease has expired, on the key's deletion (how
    // long that takes is measured by benches/load/takeover.sh).
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let mut events = client
        .watch("/orca/leader/controllers", None)
        .await
        .unwrap();
    drop(leader_a);
    let leader_b = timeout(TTL * 3, b_campaign)
        .await
        .expect("b takes over")
        .unwrap()
        .expect("campaign succeeds");
    // In etcd's order: a's key expired, then b's was made; never two.
    let expired = loop {
        let response = events.message().await.unwrap().expect("watch open");
        let deleted = response
            .events()
            .iter()
            .find(|e| e.event_type() == etcd_client::EventType::Delete)
            .and_then(|e| e.kv())
            .map(|kv| kv.mod_revision());
        if let Some(revision) = deleted {
            break revision;
        }
    };
    assert!(
        expired < leader_b.guard().create_revision,
        "b led at {} before a's key expired at {expired}",
        leader_b.guard().create_revision
    );
    assert!(!leader_b.is_lost());
    leader_b.resign().await.unwrap();
}

#[tokio::test]
async fn resigning_hands_over_at_once_and_deleting_the_key_is_noticed() {
    // A lease far longer than the test waits: a handover it sees can only
    // be the resignation's, never the lease's expiry.
    let long = Duration::from_secs(120);
    let etcd = Etcd::start();
    let (a, b) = (connect(&etcd).await, connect(&etcd).await);
    let leader_a = campaign(&a, &config_with_ttl("master-a", long))
        .await
        .unwrap();
    let b_campaign =
        tokio::spawn(async move { campaign(&b, &config_with_ttl("master-b", long)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    leader_a.resign().await.unwrap();
    let leader_b = timeout(long / 4, b_campaign)
        .await
        .expect("handover before the lease could expire")
        .unwrap()
        .unwrap();
    leader_b.resign().await.unwrap();

    // A leader whose key is deleted by hand notices within a renewal.
    let leader_c = campaign(&a, &config("master-c")).await.unwrap();
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    client
        .delete("/orca/leader/controllers", None)
        .await
        .unwrap();
    timeout(TTL * 2, leader_c.lost())
        .await
        .expect("loss noticed");
    assert!(leader_c.is_lost());
}

#[tokio::test]
async fn a_deposed_leaders_controller_is_refused_and_stops() {
    use std::sync::{Arc, Mutex};

    use orca_core::api::ConfigMap;
    use orca_core::store::Error;
    use orca_core::telemetry::Metrics;
    use orca_core::watch::{Action, Controller, Informers, ObjectKey};

    let etcd = Etcd::start();
    let store = connect(&etcd).await;
    let leadership = campaign(&store, &config("master-a")).await.expect("leads");
    // Every write of the loop carries the leadership's guard.
    let fenced = store.with_guard(leadership.guard());
    let cms = store.api::<ConfigMap>("default");
    let mut trigger = ConfigMap::default();
    trigger.metadata.name = Some("trigger".into());
    cms.create(&trigger).await.unwrap();

    let informers = Informers::new(store.clone(), &Metrics::new());
    let controller = Controller::new(&informers.all::<ConfigMap>());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let results: Arc<Mutex<Vec<Result<(), String>>>> = Arc::default();
    let (gate2, results2) = (gate.clone(), results.clone());
    let lost = async move { leadership.lost().await };
    let started = Arc::new(tokio::sync::Notify::new());
    let started2 = started.clone();
    let run = controller.run(
        move |key: ObjectKey| {
            let (gate, results, fenced) = (gate2.clone(), results2.clone(), fenced.clone());
            let started = started2.clone();
            async move {
                if key.name != "trigger" {
                    return Ok::<_, String>(Action::AwaitChange);
                }
                started.notify_one();
                gate.acquire().await.unwrap().forget();
                let mut made = ConfigMap::default();
                made.metadata.name = Some("made-by-leader".into());
                let written = fenced.api::<ConfigMap>("default").create(&made).await;
                results.lock().unwrap().push(match written {
                    Ok(_) => Ok(()),
                    Err(e @ Error::NotLeader { .. }) => Err(e.to_string()),
                    Err(e) => Err(format!("not the refusal expected: {e}")),
                });
                Ok(Action::AwaitChange)
            }
        },
        lost,
    );
    let run = tokio::spawn(async move {
        run.await;
    });

    // The reconcile is under way; the leader is deposed (its key deleted,
    // as another master's takeover would leave it) before it writes.
    timeout(TTL * 3, started.notified())
        .await
        .expect("the reconcile starts");
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    client
        .delete("/orca/leader/controllers", None)
        .await
        .unwrap();
    gate.add_permits(1);

    timeout(TTL * 3, run)
        .await
        .expect("the loop stops once leadership is lost")
        .unwrap();
    let results = results.lock().unwrap().clone();
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(
        results[0]
            .as_ref()
            .is_err_and(|e| e.contains("not the leader any more")),
        "{results:?}"
    );
    assert!(cms.get_opt("made-by-leader").await.unwrap().is_none());
}
