//! Reading manifests: files, directories or stdin, each possibly holding
//! several YAML documents, every one checked before anything is written.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use orca_core::api::Kind;
use orca_core::store::DEFAULT_NAMESPACE;
use orca_core::yaml;
use serde_json::Value;

/// One document of a manifest, decoded and validated.
pub struct Document {
    /// Where it came from, for messages: `file.yaml` or `file.yaml (document 2)`.
    pub origin: String,
    /// Its kind.
    pub kind: &'static Kind,
    name: String,
    namespace: Option<String>,
    /// The object as compact JSON, with the namespace filled in for
    /// namespaced kinds: a file of 20,000 documents is held in a tenth of
    /// the memory its decoded values would take.
    json: Box<str>,
}

impl Document {
    /// The object's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The object's namespace (`None` for cluster-scoped kinds).
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The object as JSON.
    pub fn object(&self) -> Value {
        serde_json::from_str(&self.json).expect("held as valid JSON")
    }
}

/// Every problem found in a manifest, reported together.
struct Problems(Vec<String>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("\nerror: "))
    }
}

/// Reads `source` (a file, a directory of `.yaml`/`.yml`/`.json` files, or
/// `-`), decodes and validates every document, and fails if any is bad.
/// Files are read as streams: however many documents a file holds, only the
/// decoded objects are kept.
pub fn load(source: &str, namespace: Option<&str>) -> anyhow::Result<Vec<Document>> {
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    if source == "-" {
        read_stream(
            "-",
            std::io::stdin().lock(),
            namespace,
            &mut docs,
            &mut problems,
        );
    } else {
        for path in files(Path::new(source))? {
            let file = std::fs::File::open(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let reader = std::io::BufReader::with_capacity(1 << 16, file);
            let origin = path.display().to_string();
            read_stream(&origin, reader, namespace, &mut docs, &mut problems);
        }
    }
    if !problems.is_empty() {
        bail!(Problems(problems).to_string());
    }
    if docs.is_empty() {
        bail!("no objects found in {source}");
    }
    Ok(docs)
}

/// Decodes every document of one stream into `docs`, or its problem into
/// `problems`. Documents are named by number (`FILE (document 7)`) when
/// the stream holds more than one.
fn read_stream(
    origin: &str,
    reader: impl Read,
    namespace: Option<&str>,
    docs: &mut Vec<Document>,
    problems: &mut Vec<String>,
) {
    let first_doc = docs.len();
    let first_problem = problems.len();
    let mut index = 0;
    // Read as a problem without a document number, then numbered below
    // once the stream's length is known.
    let mut numbered: Vec<(usize, bool)> = Vec::new();
    yaml::for_each_document::<Value>(origin, reader, |value| {
        index += 1;
        match value
            .map_err(anyhow::Error::from)
            .and_then(|v| document(v, namespace))
        {
            Ok(d) => {
                docs.push(d);
                numbered.push((index, true));
            }
            Err(e) => {
                problems.push(e.to_string());
                numbered.push((index, false));
            }
        }
    });
    let many = index > 1;
    let (mut d, mut p) = (first_doc, first_problem);
    for (i, ok) in numbered {
        let label = if many {
            format!("{origin} (document {i})")
        } else {
            origin.to_string()
        };
        if ok {
            docs[d].origin = label;
            d += 1;
        } else {
            // A YAML error already names the file and line.
            if !problems[p].starts_with(origin) {
                problems[p] = format!("{label}: {}", problems[p]);
            }
            p += 1;
        }
    }
}

fn files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in
        std::fs::read_dir(path).with_context(|| format!("cannot list {}", path.display()))?
    {
        let p = entry?.path();
        if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

fn document(mut object: Value, namespace: Option<&str>) -> anyhow::Result<Document> {
    if !object.is_object() {
        bail!("expected a YAML mapping with apiVersion and kind");
    }
    let field = |name: &str| {
        object
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (api_version, kind_name) = (field("apiVersion"), field("kind"));
    if api_version.is_empty() || kind_name.is_empty() {
        bail!("apiVersion and kind are required");
    }
    let kind = Kind::for_manifest(&api_version, &kind_name).with_context(|| {
        format!("no kind {kind_name:?} is registered for version {api_version:?}")
    })?;
    if kind.namespaced {
        let given = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str);
        match (given, namespace) {
            (Some(doc), Some(flag)) if doc != flag => bail!(
                "the namespace from the provided object {doc:?} does not match the namespace {flag:?}; you must pass '--namespace={doc}' to perform this operation"
            ),
            (None, flag) => {
                let ns = flag.unwrap_or(DEFAULT_NAMESPACE);
                if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("namespace".into(), Value::String(ns.into()));
                }
            }
            _ => {}
        }
    }
    kind.check(&object)?;
    let field = |name: &str| {
        object
            .get("metadata")
            .and_then(|m| m.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Ok(Document {
        // Named by the caller, who knows the stream's length.
        origin: String::new(),
        kind,
        name: field("name").unwrap_or_default(),
        namespace: field("namespace"),
        json: object.to_string().into_boxed_str(),
    })
}
