//! `orca rollout status|history|undo|restart|pause|resume deploy/NAME`:
//! following and steering a Deployment's rollout, as kubectl's.

use std::pin::pin;

use anyhow::{Context, bail};
use futures::StreamExt;
use orca_core::api::Kind;
use orca_core::store::Store;
use orca_core::watch::{Event, watcher};
use serde_json::Value;

use super::change::change_object;

/// The annotation numbering a ReplicaSet's revision.
const REVISION: &str = "deployment.kubernetes.io/revision";
/// The label a ReplicaSet's template carries with its hash.
const TEMPLATE_HASH: &str = "pod-template-hash";

/// Arguments of `orca rollout`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

/// The object a rollout command acts on: `deploy/NAME` or `deploy NAME`.
#[derive(clap::Args)]
pub struct Target {
    /// `deployment/NAME`, or the kind when NAME follows.
    pub resource: String,
    /// The Deployment's name.
    pub name: Option<String>,
    /// Namespace of the Deployment.
    #[arg(short, long)]
    pub namespace: Option<String>,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Wait until the rollout completes; fails if it stalls past its
    /// progress deadline (or `--timeout`).
    Status {
        #[command(flatten)]
        target: Target,
        /// Give up after this long (default: wait as long as it progresses).
        #[arg(long)]
        timeout: Option<orca_core::config::Duration>,
    },
    /// List the Deployment's revisions.
    History {
        #[command(flatten)]
        target: Target,
    },
    /// Roll back to the previous revision, or to `--to-revision`.
    Undo {
        #[command(flatten)]
        target: Target,
        /// The revision to go back to (default: the one before the current).
        #[arg(long)]
        to_revision: Option<i64>,
    },
    /// Replace every pod, with the same template.
    Restart {
        #[command(flatten)]
        target: Target,
    },
    /// Stop rolling out template changes until resumed.
    Pause {
        #[command(flatten)]
        target: Target,
    },
    /// Roll out again after a pause.
    Resume {
        #[command(flatten)]
        target: Target,
    },
}

impl Target {
    /// The Deployment kind, its namespace and name.
    fn resolve(&self) -> anyhow::Result<(&'static Kind, String, String)> {
        let (kind, name) = match (self.resource.split_once('/'), &self.name) {
            (Some((kind, name)), None) => (kind, name.to_string()),
            (None, Some(name)) => (self.resource.as_str(), name.clone()),
            _ => bail!("name the Deployment as deployment/NAME or deployment NAME"),
        };
        let kind = super::kind_arg(kind)?;
        if kind.kind != "Deployment" {
            bail!("rollout works on deployments, not {}", kind.plural);
        }
        let namespace = super::namespace_arg(kind, self.namespace.as_deref())
            .unwrap_or_default()
            .to_string();
        Ok((kind, namespace, name))
    }
}

/// Runs one rollout command.
pub async fn run(store: &Store, args: Args) -> anyhow::Result<bool> {
    match args.action {
        Action::Status { target, timeout } => {
            let (kind, ns, name) = target.resolve()?;
            let wait = status(store, kind, &ns, &name);
            match timeout {
                Some(t) => tokio::time::timeout(t.0, wait).await.map_err(|_| {
                    anyhow::anyhow!("timed out waiting for the rollout of {name:?}")
                })?,
                None => wait.await,
            }
        }
        Action::History { target } => {
            let (_, ns, name) = target.resolve()?;
            history(store, &ns, &name).await
        }
        Action::Undo {
            target,
            to_revision,
        } => {
            let (kind, ns, name) = target.resolve()?;
            undo(store, kind, &ns, &name, to_revision).await
        }
        Action::Restart { target } => {
            let (kind, ns, name) = target.resolve()?;
            let now = jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            change_object(store, kind, Some(&ns), &name, |d| {
                d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] =
                    Value::String(now.clone());
                Ok(())
            })
            .await?;
            println!("deployment.apps/{name} restarted");
            Ok(true)
        }
        Action::Pause { target } => set_paused(store, target, true).await,
        Action::Resume { target } => set_paused(store, target, false).await,
    }
}

async fn set_paused(store: &Store, target: Target, paused: bool) -> anyhow::Result<bool> {
    let (kind, ns, name) = target.resolve()?;
    let changed = change_object(store, kind, Some(&ns), &name, |d| {
        d["spec"]["paused"] = Value::Bool(paused);
        Ok(())
    })
    .await?;
    let verb = if paused { "paused" } else { "resumed" };
    if changed {
        println!("deployment.apps/{name} {verb}");
    } else {
        println!("deployment.apps/{name} is already {verb}");
    }
    Ok(true)
}

fn int(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// What a Deployment's status says of its rollout: done, stalled, or a
/// line saying what it waits for.
fn progress(d: &Value) -> Result<Option<String>, String> {
    let name = d
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let stalled = d
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded");
    if stalled {
        return Err(format!(
            "deployment {name:?} exceeded its progress deadline"
        ));
    }
    let wanted = d
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    if int(d, "/status/observedGeneration") < int(d, "/metadata/generation") {
        return Ok(Some(
            "Waiting for deployment spec update to be observed...".into(),
        ));
    }
    let updated = int(d, "/status/updatedReplicas");
    let replicas = int(d, "/status/replicas");
    let available = int(d, "/status/availableReplicas");
    Ok(if updated < wanted {
        Some(format!(
            "Waiting for deployment {name:?} rollout to finish: {updated} out of {wanted} new replicas have been updated..."
        ))
    } else if replicas > updated {
        Some(format!(
            "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...",
            replicas - updated
        ))
    } else if available < updated {
        Some(format!(
            "Waiting for deployment {name:?} rollout to finish: {available} of {updated} updated replicas are available..."
        ))
    } else {
        None
    })
}

async fn status(store: &Store, kind: &'static Kind, ns: &str, name: &str) -> anyhow::Result<bool> {
    // The Deployment must exist; then every change of it is judged.
    store.get_value(kind, Some(ns), name).await?;
    let mut events = pin!(watcher(store.view_values(kind, Some(ns))));
    let mut last = String::new();
    while let Some(event) = events.next().await {
        let d = match event {
            Ok(Event::Apply(d) | Event::InitApply(d)) => d,
            Ok(Event::Delete(d))
                if d.pointer("/metadata/name").and_then(Value::as_str) == Some(name) =>
            {
                bail!("deployment {name:?} was deleted");
            }
            Ok(_) => continue,
            Err(e) => {
                eprintln!("warning: {e}; retrying");
                continue;
            }
        };
        if d.pointer("/metadata/name").and_then(Value::as_str) != Some(name) {
            continue;
        }
        match progress(&d) {
            Err(stalled) => bail!(stalled),
            Ok(None) => {
                println!("deployment {name:?} successfully rolled out");
                return Ok(true);
            }
            Ok(Some(line)) if line != last => {
                println!("{line}");
                last = line;
            }
            Ok(Some(_)) => {}
        }
    }
    Ok(false)
}

/// The Deployment's ReplicaSets with their revisions, oldest first.
async fn revisions(
    store: &Store,
    ns: &str,
    name: &str,
) -> anyhow::Result<(Value, Vec<(i64, Value)>)> {
    let deploy_kind = super::kind_arg("deploy")?;
    let d = store.get_value(deploy_kind, Some(ns), name).await?;
    let uid = d
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let sets = store.list_values(super::kind_arg("rs")?, Some(ns)).await?;
    let mut owned: Vec<(i64, Value)> = sets
        .items
        .into_iter()
        .filter(|rs| {
            rs.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid.as_str()))
        })
        .map(|rs| {
            let revision = rs
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(REVISION))
                .and_then(Value::as_str)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            (revision, rs)
        })
        .collect();
    owned.sort_by_key(|(r, _)| *r);
    Ok((d, owned))
}

async fn history(store: &Store, ns: &str, name: &str) -> anyhow::Result<bool> {
    let (_, owned) = revisions(store, ns, name).await?;
    println!("deployment.apps/{name}");
    println!("REVISION  CHANGE-CAUSE");
    for (revision, rs) in owned {
        let cause = rs
            .pointer("/metadata/annotations")
            .and_then(|a| a.get("kubernetes.io/change-cause"))
            .and_then(Value::as_str)
            .unwrap_or("<none>");
        println!("{revision:<9} {cause}");
    }
    Ok(true)
}

async fn undo(
    store: &Store,
    kind: &'static Kind,
    ns: &str,
    name: &str,
    to: Option<i64>,
) -> anyhow::Result<bool> {
    let (_, owned) = revisions(store, ns, name).await?;
    let current = owned.last().map(|(r, _)| *r).unwrap_or(0);
    let wanted = match to {
        Some(r) => r,
        None => owned
            .iter()
            .rev()
            .map(|(r, _)| *r)
            .find(|r| *r < current)
            .context("no previous revision to roll back to")?,
    };
    let Some((_, rs)) = owned.iter().find(|(r, _)| *r == wanted) else {
        bail!("unable to find the specified revision {wanted}");
    };
    let mut template = rs.pointer("/spec/template").cloned().unwrap_or_default();
    if let Some(labels) = template
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(TEMPLATE_HASH);
    }
    let changed = change_object(store, kind, Some(ns), name, |d| {
        d["spec"]["template"] = template.clone();
        Ok(())
    })
    .await?;
    if changed {
        println!("deployment.apps/{name} rolled back");
    } else {
        println!(
            "deployment.apps/{name} skipped rollback (current template already matches revision {wanted})"
        );
    }
    Ok(true)
}
