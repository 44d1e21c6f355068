//! Leader election on an etcd lease.
//!
//! A candidate wins by creating the election key attached to its own lease
//! and keeps it by renewing the lease. If the process dies, the lease
//! expires after its TTL, etcd deletes the key, and a waiting candidate
//! wins. Leadership is also a write precondition ([`Guard`]): a leader that
//! lost its lease cannot write, even before it notices.

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::store::{Error, Guard, Result, Store};

/// How to campaign.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// The election key, e.g. `/orca/leader/controllers`.
    pub key: String,
    /// Who this candidate is (stored as the key's value), e.g. the host name.
    pub identity: String,
    /// Lease TTL: how long a dead leader keeps the key (default 15 s).
    pub ttl: Duration,
}

impl ElectionConfig {
    /// An election on `key` as `identity` with the default 15 s TTL.
    pub fn new(key: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            identity: identity.into(),
            ttl: Duration::from_secs(15),
        }
    }
}

/// Held while this process leads. Dropping it stops renewing the lease (so
/// leadership ends within the TTL); [`Leadership::resign`] ends it at once.
#[derive(Debug)]
pub struct Leadership {
    guard: Guard,
    lease: i64,
    store: Store,
    lost: watch::Receiver<bool>,
    keeper: JoinHandle<()>,
}

impl Leadership {
    /// The write precondition of this leadership: pass it to
    /// [`Store::with_guard`] for every write the leader makes.
    pub fn guard(&self) -> Guard {
        self.guard.clone()
    }

    /// Whether leadership has been lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves when leadership is lost (lease expired or revoked, key
    /// deleted, etcd unreachable for longer than the TTL).
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        // A closed channel means the keeper task ended: leadership is over.
        let _ = lost.wait_for(|l| *l).await;
    }

    /// Gives leadership up now, so another candidate need not wait the TTL.
    pub async fn resign(self) -> Result<()> {
        self.keeper.abort();
        self.store
            .client()
            .lease_revoke(self.lease)
            .await
            .map_err(|e| Error::Etcd {
                endpoint: self.store.endpoint().into(),
                message: e.to_string(),
            })?;
        Ok(())
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

fn etcd_err(store: &Store) -> impl Fn(etcd_client::Error) -> Error + '_ {
    |e| Error::Unavailable {
        endpoint: store.endpoint().into(),
        message: e.to_string(),
    }
}

/// Campaigns until this candidate leads; returns its [`Leadership`].
pub async fn campaign(store: &Store, config: &ElectionConfig) -> Result<Leadership> {
    let ttl = i64::try_from(config.ttl.as_secs().max(1)).unwrap_or(i64::MAX);
    loop {
        let lease = store
            .call(|mut c| async move { c.lease_grant(ttl, None).await })
            .await
            .map_err(etcd_err(store))?
            .id();
        let key = config.key.as_str();
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                config.identity.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = store
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(etcd_err(store))?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        if resp.succeeded() {
            tracing::info!(key, identity = %config.identity, "became leader");
            let guard = Guard {
                key: config.key.clone(),
                create_revision: revision,
            };
            let (lost_tx, lost) = watch::channel(false);
            let keeper = tokio::spawn(keep(
                store.clone(),
                lease,
                config.ttl,
                guard.clone(),
                lost_tx,
            ));
            return Ok(Leadership {
                guard,
                lease,
                store: store.clone(),
                lost,
                keeper,
            });
        }
        // Someone else leads: give our lease back and wait for their key to go.
        let _ = store
            .call(|mut c| async move { c.lease_revoke(lease).await })
            .await;
        let holder = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .map(|kv| (kv.mod_revision(), kv.value_str().unwrap_or("?").to_string())),
            _ => None,
        });
        if let Some((seen, leader)) = holder {
            tracing::info!(key, %leader, "standing by: another candidate leads");
            wait_for_delete(store, key, seen + 1).await?;
        }
    }
}

/// Waits until `key` is deleted at or after `from_revision`.
async fn wait_for_delete(store: &Store, key: &str, from_revision: i64) -> Result<()> {
    let options = WatchOptions::new().with_start_revision(from_revision);
    let mut watch = store
        .call(|mut c| {
            let options = options.clone();
            async move { c.watch(key, Some(options)).await }
        })
        .await
        .map_err(etcd_err(store))?;
    loop {
        match watch.message().await {
            Ok(Some(resp)) => {
                // A compacted start revision means we may have missed the
                // delete: campaign again rather than wait forever.
                if resp.canceled()
                    || resp
                        .events()
                        .iter()
                        .any(|e| e.event_type() == EventType::Delete)
                {
                    return Ok(());
                }
            }
            Ok(None) => return Ok(()),
            Err(e) => return Err(etcd_err(store)(e)),
        }
    }
}

/// Renews the lease every third of its TTL; reports loss when the lease is
/// gone, the key no longer ours, or no renewal succeeded for a whole TTL.
async fn keep(store: Store, lease: i64, ttl: Duration, guard: Guard, lost: watch::Sender<bool>) {
    let mut expires = Instant::now() + ttl;
    let period = ttl / 3;
    let mut stream = None;
    let (mut member, mut client) = store.member();
    loop {
        if Instant::now() >= expires {
            break;
        }
        if stream.is_none() {
            // A new stream goes to the member in use now, which a failed
            // request elsewhere in the process may have moved on.
            (member, client) = store.member();
            stream = match tokio::time::timeout(period, client.lease_keep_alive(lease)).await {
                Ok(Ok(stream)) => Some(stream),
                Ok(Err(e)) => {
                    store.check_reachable(member, &e);
                    None
                }
                Err(_) => None,
            };
        }
        if let Some((keeper, responses)) = &mut stream {
            let renewed = tokio::time::timeout(period, async {
                keeper.keep_alive().await?;
                responses.message().await
            })
            .await;
            match renewed {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                    expires = Instant::now() + Duration::from_secs(resp.ttl().unsigned_abs());
                }
                // TTL 0: etcd says the lease has expired or was revoked.
                Ok(Ok(Some(_))) => break,
                _ => stream = None,
            }
        }
        // The key may have been deleted by hand; then we lead no more.
        match client.get(guard.key.as_str(), None).await {
            Ok(resp)
                if resp.kvs().first().map(|kv| kv.create_revision())
                    != Some(guard.create_revision) =>
            {
                break;
            }
            Err(e) => store.check_reachable(member, &e),
            _ => {}
        }
        tokio::time::sleep_until((Instant::now() + period).min(expires)).await;
    }
    tracing::warn!(key = %guard.key, "leadership lost");
    lost.send_replace(true);
}
