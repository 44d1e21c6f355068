//! `orca get KIND [NAME] [-n NS | -A] [-o wide|yaml|json] [-w]`.

use std::collections::HashMap;
use std::pin::pin;

use futures::StreamExt;
use orca_core::api::Kind;
use orca_core::store::{DEFAULT_NAMESPACE, Store};
use orca_core::watch::{Event, watcher};
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
    let objects = match &args.name {
        Some(name) => vec![store.get_value(kind, namespace, name).await?],
        None => store.list_values(kind, namespace).await?.items,
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
                    objects,
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

/// Where an object is, for comparing one list with the next.
fn object_id(obj: &Value) -> (String, String) {
    let field = |f: &str| {
        obj.pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (field("namespace"), field("name"))
}

fn version(obj: &Value) -> Option<&Value> {
    obj.pointer("/metadata/resourceVersion")
}

/// Prints a row for every change after the objects already shown, through
/// the core watcher: it resumes a dropped watch, and after a re-list the
/// objects changed or gone meanwhile are printed as well.
async fn watch(
    store: &Store,
    kind: &'static Kind,
    namespace: Option<&str>,
    name: Option<&str>,
    shown: Vec<Value>,
    wide: bool,
    show_namespace: bool,
) -> anyhow::Result<()> {
    let wanted = |obj: &Value| {
        name.is_none_or(|n| obj.pointer("/metadata/name").and_then(Value::as_str) == Some(n))
    };
    let print = |obj: &Value| {
        print!(
            "{}",
            render(None, &[cells(kind, obj, wide, show_namespace)])
        );
    };
    let mut known: HashMap<(String, String), Value> =
        shown.into_iter().map(|o| (object_id(&o), o)).collect();
    let mut listing: Option<HashMap<(String, String), Value>> = None;
    let mut events = pin!(watcher(store.view_values(kind, namespace)));
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listing = Some(HashMap::new()),
            Ok(Event::InitApply(obj)) => {
                if let Some(listing) = &mut listing
                    && wanted(&obj)
                {
                    listing.insert(object_id(&obj), obj);
                }
            }
            Ok(Event::InitDone) => {
                let Some(listed) = listing.take() else {
                    continue;
                };
                for (id, obj) in &known {
                    if !listed.contains_key(id) {
                        print(obj);
                    }
                }
                for (id, obj) in &listed {
                    if known.get(id).is_none_or(|k| version(k) != version(obj)) {
                        print(obj);
                    }
                }
                known = listed;
            }
            Ok(Event::Apply(obj)) if wanted(&obj) => {
                print(&obj);
                known.insert(object_id(&obj), obj);
            }
            Ok(Event::Delete(obj)) if wanted(&obj) => {
                print(&obj);
                known.remove(&object_id(&obj));
            }
            Ok(Event::Apply(_) | Event::Delete(_)) => {}
            Err(e) => eprintln!("warning: {e}; retrying"),
        }
    }
    Ok(())
}
