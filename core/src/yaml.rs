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

/// Renders a value as one YAML document.
pub fn to_string<T: Serialize>(value: &T) -> String {
    // Serialising plain data (maps, strings, numbers) into a String cannot
    // fail; an error here would be a bug in a Serialize impl.
    serde_saphyr::to_string(value).expect("serialising to YAML")
}

#[cfg(test)]
mod tests {
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
