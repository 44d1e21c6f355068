//! Leader election against a real etcd: one leader at a time, and a quick
//! takeover when the leader dies.

use std::time::Duration;

use orca_core::leader::{ElectionConfig, campaign};
use orca_core::store::{Store, StoreConfig};
use orca_testkit::Etcd;
use tokio::time::{Instant, timeout};

const TTL: Duration = Duration::from_secs(3);

fn config(identity: &str) -> ElectionConfig {
    ElectionConfig {
        ttl: TTL,
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

    // The leader dies: it stops renewing, nothing is revoked.
    let died = Instant::now();
    drop(leader_a);
    let leader_b = timeout(TTL * 3, b_campaign)
        .await
        .expect("b takes over")
        .unwrap()
        .expect("campaign succeeds");
    let took = died.elapsed();
    // etcd checks lease expiry in coarse steps; allow one second beyond the TTL.
    assert!(
        took <= TTL + Duration::from_secs(1),
        "takeover took {took:?}"
    );
    assert!(!leader_b.is_lost());
    leader_b.resign().await.unwrap();
}

#[tokio::test]
async fn resigning_hands_over_at_once_and_deleting_the_key_is_noticed() {
    let etcd = Etcd::start();
    let (a, b) = (connect(&etcd).await, connect(&etcd).await);
    let leader_a = campaign(&a, &config("master-a")).await.unwrap();
    let b_campaign = tokio::spawn(async move { campaign(&b, &config("master-b")).await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    leader_a.resign().await.unwrap();
    let leader_b = timeout(Duration::from_secs(2), b_campaign)
        .await
        .expect("handover well within the TTL")
        .unwrap()
        .unwrap();

    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    client
        .delete("/orca/leader/controllers", None)
        .await
        .unwrap();
    timeout(TTL * 2, leader_b.lost())
        .await
        .expect("loss noticed");
    assert!(leader_b.is_lost());
}
