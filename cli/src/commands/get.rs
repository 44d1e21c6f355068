//! `orca get KIND [NAME] [-n NS | -A] [-o wide|yaml|json] [-w]`.

use futures::StreamExt;
use orca_core::api::Kind;
use orca_core::store::{DEFAULT_NAMESPACE, Store, WatchEvent};
use orca_core::yaml;
use serde_json::{Value, json};

use crate::printer::{columns, render, row};

/// Output formats.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// More columns.
    Wide,
    /// The objects as YAML.
    Yaml,
    /// The objects as JSON.
    Json,
}

/// Arguments of `orca get`.
#[derive(clap::Args)]
pub struct Args {
    /// Kind to show (`deployments`, `deploy`, `po`, ...).
    pub kind: String,
    /// One object to show; all when absent.
    pub name: Option<String>,
    /// Namespace to look in.
    #[arg(short, long, conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Look in every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short, long, value_enum)]
    pub output: Option<Output>,
    /// After listing, print changes as they happen.
    #[arg(short, long)]
    pub watch: bool,
}

/// Prints the objects asked for.
pub async fn run(store: &Store, args: Args) -> anyhow::Result<bool> {
    let kind = super::kind_arg(&args.kind)?;
    let namespace = match (&args.namespace, args.all_namespaces) {
        (_, true) => None,
        (Some(ns), false) => Some(ns.as_str()),
        (None, false) => Some(DEFAULT_NAMESPACE),
    };
    let show_namespace = args.all_namespaces && kind.namespaced;
    let (objects, revision) = match &args.name {
        Some(name) => {
            let obj = store.get_value(kind, namespace, name).await?;
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|r| r.parse().ok())
                .unwrap_or_default();
            (vec![obj], rv)
        }
        None => {
            let list = store.list_values(kind, namespace).await?;
            (list.items, list.revision)
        }
    };
    match args.output {
        Some(Output::Yaml) => print!("{}", yaml::to_string(&as_output(&args, objects))),
        Some(Output::Json) => println!(
            "{}",
            serde_json::to_string_pretty(&as_output(&args, objects))?
        ),
        _ => {
            let wide = args.output == Some(Output::Wide);
            if objects.is_empty() {
                match namespace.filter(|_| kind.namespaced) {
                    Some(ns) => eprintln!("No resources found in {ns} namespace."),
                    None => eprintln!("No resources found"),
                }
            } else {
                let header = header(kind, wide, show_namespace);
                let rows: Vec<_> = objects
                    .iter()
                    .map(|o| cells(kind, o, wide, show_namespace))
                    .collect();
                print!("{}", render(Some(&header), &rows));
            }
            if args.watch {
                watch(
                    store,
                    kind,
                    namespace,
                    args.name.as_deref(),
                    revision,
                    wide,
                    show_namespace,
                )
                .await?;
            }
        }
    }
    Ok(true)
}

fn as_output(args: &Args, mut objects: Vec<Value>) -> Value {
    if args.name.is_some() {
        objects.remove(0)
    } else {
        json!({"apiVersion": "v1", "kind": "List", "items": objects})
    }
}

fn header(kind: &Kind, wide: bool, show_namespace: bool) -> Vec<String> {
    let mut h: Vec<String> = columns(kind, wide).into_iter().map(String::from).collect();
    if show_namespace {
        h.insert(0, "NAMESPACE".into());
    }
    h
}

fn cells(kind: &Kind, obj: &Value, wide: bool, show_namespace: bool) -> Vec<String> {
    let mut r = row(kind, obj, wide);
    if show_namespace {
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        r.insert(0, ns.into());
    }
    r
}

async fn watch(
    store: &Store,
    kind: &'static Kind,
    namespace: Option<&str>,
    name: Option<&str>,
    revision: i64,
    wide: bool,
    show_namespace: bool,
) -> anyhow::Result<()> {
    let mut events = store.watch_values(kind, namespace, revision + 1).await?;
    while let Some(event) = events.next().await {
        let obj = match event? {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => o,
            WatchEvent::Progress(_) => continue,
        };
        if name.is_some_and(|n| obj.pointer("/metadata/name").and_then(Value::as_str) != Some(n)) {
            continue;
        }
        print!(
            "{}",
            render(None, &[cells(kind, &obj, wide, show_namespace)])
        );
    }
    Ok(())
}
