//! YAML in and out, behind one module.
//!
//! Orca reads manifests and config files with `serde-saphyr`: it keeps serde's
//! data model (so every serde type works unchanged), is pure Rust and actively
//! maintained, and reports errors with line and column. `serde_yaml`, named in
//! the original design, is deprecated upstream, and its forks still sit on the
//! unmaintained `unsafe-libyaml`. Nothing else in Orca names the YAML crate.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A YAML document that could not be read, with where it went wrong.
#[derive(Debug, thiserror::Error)]
#[error("{origin}{}: {message}", location.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
pub struct YamlError {
    /// The file (or `-` for standard input) the text came from.
    pub origin: String,
    /// Line and column (1-based) of the error, when the parser knows them.
    pub location: Option<(u64, u64)>,
    /// What was expected.
    pub message: String,
}

impl YamlError {
    fn from_parser(origin: &str, err: serde_saphyr::Error) -> Self {
        let location = err
            .location()
            .filter(|l| l.line() > 0)
            .map(|l| (l.line(), l.column()));
        // The rendered message repeats the location and may add a snippet;
        // keep only its first line so one error stays one line.
        let rendered = err.to_string();
        let first = rendered.lines().next().unwrap_or("invalid YAML").trim();
        // The location is reported in front already; drop the parser's copy.
        let first = first.strip_prefix("error: ").unwrap_or(first);
        let message = match first.strip_prefix("line ") {
            Some(rest) => rest.split_once(": ").map_or(first, |(_, m)| m),
            None => first,
        }
        .to_string();
        Self {
            origin: origin.to_string(),
            location,
            message,
        }
    }
}

/// YAML 1.2 core schema, as Kubernetes manifests assume: `y`, `yes`, `on`
/// stay strings instead of turning into booleans (the "Norway problem").
fn options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options
}

/// Parses one YAML document from `text`; `origin` names its source in errors.
/// A value of the wrong type is reported with the path of its field
/// (`admin.address: invalid socket address ...`).
pub fn from_str<T: DeserializeOwned>(origin: &str, text: &str) -> Result<T, YamlError> {
    let mut path = String::new();
    serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    })
    .map_err(|e| {
        let mut err = YamlError::from_parser(origin, e);
        if !path.is_empty() && path != "." && !err.message.contains(&path) {
            err.message = format!("{path}: {}", err.message);
        }
        err
    })
}

/// Parses every document of a multi-document YAML stream (`---` separated);
/// empty documents are skipped.
pub fn from_str_multi<T: DeserializeOwned>(origin: &str, text: &str) -> Result<Vec<T>, YamlError> {
    serde_saphyr::from_multiple_with_options(text, options())
        .map_err(|e| YamlError::from_parser(origin, e))
}

/// Parses the documents of a multi-document YAML stream as they are read,
/// handing each (or its error) to `each`, so a file of any number of
/// documents is never held whole, neither as text nor as values. Each
/// document keeps the parser's limits (depth, nodes, sizes); only their
/// number is unbounded. A document of the wrong shape is reported and the
/// next one read; a syntax error ends the stream.
pub fn for_each_document<T: DeserializeOwned>(
    origin: &str,
    mut reader: impl std::io::Read,
    mut each: impl FnMut(Result<T, YamlError>),
) {
    let mut options = options();
    let mut budget = options.budget.take().unwrap_or_default();
    budget.max_documents = usize::MAX;
    budget.max_reader_input_bytes = None;
    options.budget = Some(budget);
    for document in serde_saphyr::read_with_options(&mut reader, options) {
        each(document.map_err(|e| YamlError::from_parser(origin, e)));
    }
}

/// Renders a value as one YAML document.
pub fn to_string<T: Serialize>(value: &T) -> String {
    // Serialising plain data (maps, strings, numbers) into a String cannot
    // fail; an error here would be a bug in a Serialize impl.
    serde_saphyr::to_string(value).expect("serialising to YAML")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_stream_of_any_number_of_documents_is_read() {
        let text = "a: 1\n---\n".repeat(5000);
        let mut n = 0;
        super::for_each_document::<serde_json::Value>("many", text.as_bytes(), |doc| {
            assert_eq!(doc.expect("document")["a"], 1);
            n += 1;
        });
        assert_eq!(n, 5000);

        // A bad document is named and the ones after it still read.
        let mut seen = Vec::new();
        super::for_each_document::<std::collections::BTreeMap<String, u32>>(
            "m.yaml",
            "a: 1\n---\na: [x]\n---\na: 3\n".as_bytes(),
            |doc| seen.push(doc.map_err(|e| e.to_string())),
        );
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(
            seen[1].as_ref().unwrap_err().starts_with("m.yaml:"),
            "{seen:?}"
        );
        assert_eq!(seen[2].as_ref().unwrap()["a"], 3);
    }

    use super::*;
    use serde_json::Value;

    #[test]
    fn multi_document_stream() {
        let docs: Vec<Value> =
            from_str_multi("t.yaml", "a: 1\n---\nb: [x, y]\n---\n").expect("parses");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["a"], 1);
        assert_eq!(docs[1]["b"][1], "y", "YAML 1.2: y is a string");
    }

    #[test]
    fn parse_error_names_line_and_column() {
        let err = from_str_multi::<Value>("bad.yaml", "a: 1\nb: [unclosed\nc: 2\n").unwrap_err();
        let (line, _col) = err.location.expect("location known");
        assert!(line >= 2, "error at line {line}: {err}");
        let text = err.to_string();
        assert!(text.starts_with("bad.yaml:"), "{text}");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains("column"), "location given once: {text}");
    }

    #[test]
    fn wrong_types_name_their_field() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Config {
            admin: Admin,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Admin {
            port: u16,
        }
        let err = from_str::<Config>("c.yaml", "admin:\n  port: many\n").unwrap_err();
        assert!(err.to_string().contains("admin.port: "), "{err}");
    }

    #[test]
    fn round_trip() {
        let v: Value = serde_json::json!({"metadata": {"name": "x"}, "n": [1, 2]});
        let back: Value = from_str("-", &to_string(&v)).expect("parses");
        assert_eq!(v, back);
    }
}
