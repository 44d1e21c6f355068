//! Namespace deletion: a Namespace being deleted is marked `Terminating`,
//! everything in it is deleted, and once nothing is left its finalizer goes
//! and the store removes it.

use std::sync::Arc;
use std::time::Duration;

use orca_core::api::{Kind, Namespace};
use orca_core::store::{DeleteOptions, Error, FINALIZER_NAMESPACE, Store};
use orca_core::watch::{Action, Controller, Informers, ObjectKey, Reader};
use serde_json::Value;

/// How often a Namespace whose contents are still going is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

/// The Namespace loop.
pub struct Namespaces {
    store: Store,
    namespaces: Reader<Namespace>,
}

impl Namespaces {
    /// The loop and its controller on the shared caches, writing through `store`.
    pub fn new(informers: &Informers, store: Store) -> (Arc<Self>, Controller<Namespace>) {
        let namespaces = informers.all::<Namespace>();
        let this = Arc::new(Self {
            store,
            namespaces: namespaces.reader(),
        });
        (this, Controller::new(&namespaces).named("namespace"))
    }

    /// Empties a Namespace being deleted, then lets it go.
    pub async fn reconcile(&self, key: ObjectKey) -> Result<Action, Error> {
        let Some(ns) = self.namespaces.get(&key) else {
            return Ok(Action::AwaitChange);
        };
        let held = ns
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == FINALIZER_NAMESPACE);
        if ns.metadata.deletion_timestamp.is_none() || !held {
            return Ok(Action::AwaitChange);
        }
        let name = key.name.clone();
        let namespaces = Kind::lookup("namespaces").expect("a stored kind");
        if ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating") {
            let mut value = self.store.get_value(namespaces, None, &name).await?;
            value["status"]["phase"] = Value::String("Terminating".into());
            match self.store.update_status_value(namespaces, value).await {
                Ok(_) | Err(Error::NotFound { .. }) => {}
                Err(Error::Conflict { .. }) => return Ok(Action::Requeue(RECHECK)),
                Err(e) => return Err(e),
            }
        }
        let mut left = 0;
        for kind in Kind::all().iter().filter(|k| k.namespaced) {
            let list = self.store.list_values(kind, Some(&name)).await?;
            for obj in list.items {
                left += 1;
                if obj.pointer("/metadata/deletionTimestamp").is_some() {
                    continue;
                }
                let object = obj
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match self
                    .store
                    .delete_value(kind, Some(&name), object, DeleteOptions::default())
                    .await
                {
                    Ok(_) | Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if left > 0 {
            return Ok(Action::Requeue(RECHECK));
        }
        let mut value = self.store.get_value(namespaces, None, &name).await?;
        if let Some(list) = value
            .pointer_mut("/metadata/finalizers")
            .and_then(Value::as_array_mut)
        {
            list.retain(|f| f != FINALIZER_NAMESPACE);
        }
        match self.store.update_value(namespaces, value).await {
            Ok(_) | Err(Error::NotFound { .. }) => Ok(Action::AwaitChange),
            Err(Error::Conflict { .. }) => Ok(Action::Requeue(RECHECK)),
            Err(e) => Err(e),
        }
    }
}
