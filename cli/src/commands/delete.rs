//! `orca delete -f FILE | KIND NAME...`.

use anyhow::bail;
use orca_core::api::Kind;
use orca_core::store::{DeleteOptions, Deleted, Error, Propagation, Store};

use crate::manifest::Document;
use crate::printer::resource_name;

/// Arguments of `orca delete`.
#[derive(clap::Args)]
pub struct Args {
    /// File, directory or `-` whose objects are deleted.
    #[arg(short = 'f', long, conflicts_with = "kind")]
    pub filename: Option<String>,
    /// Kind of the objects to delete (`deploy`, `pods`, ...).
    pub kind: Option<String>,
    /// Names of the objects to delete.
    pub names: Vec<String>,
    /// Namespace of the objects.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Seconds a pod gets to stop; 0 deletes it at once.
    #[arg(long)]
    pub grace_period: Option<i64>,
    /// What happens to the objects' dependents: `background` (the object
    /// goes now, its dependents after it), `foreground` (the object waits
    /// until its dependents are gone) or `orphan` (they stay, unowned).
    #[arg(long, value_enum, default_value = "background")]
    pub cascade: Cascade,
}

/// `--cascade` values.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Cascade {
    /// Delete the object now and its dependents after it.
    Background,
    /// Delete the dependents first, then the object.
    Foreground,
    /// Keep the dependents, without their owner.
    Orphan,
}

/// Deletes each named object; prints one line per object.
pub async fn run(store: &Store, args: Args, docs: Option<Vec<Document>>) -> anyhow::Result<bool> {
    let targets: Vec<(&'static Kind, Option<String>, String)> = match docs {
        Some(docs) => docs
            .iter()
            .map(|d| {
                (
                    d.kind,
                    d.namespace().map(str::to_string),
                    d.name().to_string(),
                )
            })
            .collect(),
        None => {
            let Some(kind) = &args.kind else {
                bail!("you must specify -f FILE or KIND NAME");
            };
            let kind = super::kind_arg(kind)?;
            if args.names.is_empty() {
                bail!("resource(s) were provided, but no name was specified");
            }
            args.names
                .iter()
                .map(|n| {
                    let ns = super::namespace_arg(kind, args.namespace.as_deref());
                    (kind, ns.map(str::to_string), n.clone())
                })
                .collect()
        }
    };
    let options = DeleteOptions {
        grace_period_seconds: args.grace_period,
        propagation: Some(match args.cascade {
            Cascade::Background => Propagation::Background,
            Cascade::Foreground => Propagation::Foreground,
            Cascade::Orphan => Propagation::Orphan,
        }),
    };
    let mut all_ok = true;
    for (kind, namespace, name) in targets {
        match store
            .delete_value(kind, namespace.as_deref(), &name, options)
            .await
        {
            Ok(Deleted::Gone(_) | Deleted::Pending(_)) => {
                println!("{} {name:?} deleted", resource_name(kind));
            }
            Err(e @ Error::Unavailable { .. }) => return Err(e.into()),
            Err(e) => {
                eprintln!("error: {e}");
                all_ok = false;
            }
        }
    }
    Ok(all_ok)
}
