//! One config loader for every component: a YAML file, flag overrides, then validation.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration as StdDuration;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::yaml::YamlError;

/// A component's configuration: a serde struct with
/// `#[serde(default, deny_unknown_fields)]` and a doc comment on every field.
pub trait ComponentConfig: DeserializeOwned + Default {
    /// Checks what the types alone cannot (ranges, combinations of fields);
    /// build the error with [`ConfigError::invalid`].
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not valid YAML, has an unknown key, or a value of the wrong type.
    #[error(transparent)]
    Parse(#[from] YamlError),
    /// A value parsed but was rejected by `validate()`.
    #[error("{}: {field}: {message}", path.as_ref().map_or_else(|| "config".into(), |p| p.display().to_string()))]
    Invalid {
        /// The file the config came from; `None` for defaults and flags only.
        path: Option<PathBuf>,
        /// The offending field, dotted for nested ones (`upstream.timeout`).
        field: String,
        /// Why the value is rejected.
        message: String,
    },
}

impl ConfigError {
    /// A validation failure of `field`; the loader fills in the file it came from.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: None,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Loads a config: `path`'s YAML (or the defaults when `None`), then the
/// command-line `overrides`, then `validate()`.
///
/// Overrides are applied before validation so a flag can fix a bad file value
/// and a bad flag is rejected like a bad file value.
pub fn load<C: ComponentConfig>(
    path: Option<&Path>,
    overrides: impl FnOnce(&mut C),
) -> Result<C, ConfigError> {
    let mut config = match path {
        Some(path) => parse_file(path)?,
        None => C::default(),
    };
    overrides(&mut config);
    config.validate().map_err(|err| match err {
        ConfigError::Invalid {
            path: None,
            field,
            message,
        } => ConfigError::Invalid {
            path: path.map(Path::to_path_buf),
            field,
            message,
        },
        other => other,
    })?;
    Ok(config)
}

/// Reloads a config file for a running component, re-applying the same flag
/// overrides so a flag keeps winning over the file after a reload.
///
/// On error the caller keeps the config it is running with.
pub fn reload<C: ComponentConfig>(
    path: &Path,
    overrides: impl FnOnce(&mut C),
) -> Result<C, ConfigError> {
    load(Some(path), overrides)
}

fn parse_file<C: ComponentConfig>(path: &Path) -> Result<C, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(crate::yaml::from_str(&path.display().to_string(), &text)?)
}

/// A config value given as text that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {input:?}: {reason}")]
pub struct ValueError {
    kind: &'static str,
    input: String,
    reason: String,
}

impl ValueError {
    fn new(kind: &'static str, input: &str, reason: impl Into<String>) -> Self {
        Self {
            kind,
            input: input.to_string(),
            reason: reason.into(),
        }
    }
}

/// Splits `"64MiB"` into `(64, "MiB")`; the unit may be empty or follow a space.
fn split_number(kind: &'static str, input: &str, text: &str) -> Result<(u64, usize), ValueError> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(ValueError::new(
            kind,
            input,
            "expected a whole number first",
        ));
    }
    let number = text[..digits]
        .parse()
        .map_err(|_| ValueError::new(kind, input, "number too large"))?;
    Ok((number, digits))
}

/// A size in bytes, written as plain bytes (`100`, `100B`) or with a binary
/// unit (`512KiB`, `64MiB`, `1GiB`, `1TiB`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

const BYTE_UNITS: [(&str, u64); 5] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("B", 1),
];

impl ByteSize {
    /// `n` kibibytes, for `const fn` defaults.
    pub const fn kib(n: u64) -> Self {
        Self(n << 10)
    }

    /// `n` mebibytes, for `const fn` defaults.
    pub const fn mib(n: u64) -> Self {
        Self(n << 20)
    }

    /// `n` gibibytes, for `const fn` defaults.
    pub const fn gib(n: u64) -> Self {
        Self(n << 30)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = ValueError;

    fn from_str(input: &str) -> Result<Self, ValueError> {
        const KIND: &str = "byte size";
        let text = input.trim();
        let (number, digits) = split_number(KIND, input, text)?;
        let unit = text[digits..].trim_start();
        let multiplier = if unit.is_empty() {
            1
        } else if let Some(&(_, m)) = BYTE_UNITS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(unit))
        {
            m
        } else {
            // Decimal units are ambiguous (some tools read MB as 2^20), so make
            // the writer say which one they mean.
            let reason = match unit.to_ascii_uppercase().as_str() {
                "KB" | "K" => "ambiguous unit, write KiB (1024 bytes)".to_string(),
                "MB" | "M" => "ambiguous unit, write MiB (1024 KiB)".to_string(),
                "GB" | "G" => "ambiguous unit, write GiB (1024 MiB)".to_string(),
                "TB" | "T" => "ambiguous unit, write TiB (1024 GiB)".to_string(),
                _ => format!("unknown unit {unit:?}, expected B, KiB, MiB, GiB or TiB"),
            };
            return Err(ValueError::new(KIND, input, reason));
        };
        number
            .checked_mul(multiplier)
            .map(Self)
            .ok_or_else(|| ValueError::new(KIND, input, "too large"))
    }
}

impl fmt::Display for ByteSize {
    /// Uses the largest unit that divides the size exactly, so it parses back unchanged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, m) = BYTE_UNITS
            .iter()
            .find(|(_, m)| self.0 != 0 && self.0.is_multiple_of(*m))
            .unwrap_or(&("B", 1));
        write!(f, "{}{name}", self.0 / m)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ByteSizeVisitor;

        impl Visitor<'_> for ByteSizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte size such as 512KiB, 64MiB or 100")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_any(ByteSizeVisitor)
    }
}

/// A span of time written with units: `250ms`, `30s`, `2m`, `1h`, or combined
/// as in `1m30s`; also `ns`, `us` and `d`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub StdDuration);

impl Duration {
    /// `n` seconds, for `const fn` defaults.
    pub const fn from_secs(n: u64) -> Self {
        Self(StdDuration::from_secs(n))
    }

    /// `n` milliseconds, for `const fn` defaults.
    pub const fn from_millis(n: u64) -> Self {
        Self(StdDuration::from_millis(n))
    }

    /// The standard-library duration, for timers and timeouts.
    pub const fn get(self) -> StdDuration {
        self.0
    }
}

impl From<Duration> for StdDuration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl From<StdDuration> for Duration {
    fn from(d: StdDuration) -> Self {
        Self(d)
    }
}

impl FromStr for Duration {
    type Err = ValueError;

    fn from_str(input: &str) -> Result<Self, ValueError> {
        const KIND: &str = "duration";
        let mut rest = input.trim();
        if rest.is_empty() {
            return Err(ValueError::new(KIND, input, "empty, expected e.g. 30s"));
        }
        let mut total = StdDuration::ZERO;
        while !rest.is_empty() {
            let (n, digits) = split_number(KIND, input, rest)?;
            rest = rest[digits..].trim_start();
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c.is_whitespace())
                .unwrap_or(rest.len());
            let (unit, tail) = rest.split_at(unit_len);
            rest = tail.trim_start();
            let too_large = || ValueError::new(KIND, input, "too large");
            let part = match unit {
                "ns" => StdDuration::from_nanos(n),
                "us" | "µs" => StdDuration::from_micros(n),
                "ms" => StdDuration::from_millis(n),
                "s" => StdDuration::from_secs(n),
                "m" => StdDuration::from_secs(n.checked_mul(60).ok_or_else(too_large)?),
                "h" => StdDuration::from_secs(n.checked_mul(3600).ok_or_else(too_large)?),
                "d" => StdDuration::from_secs(n.checked_mul(86_400).ok_or_else(too_large)?),
                // A bare number could mean seconds or milliseconds depending
                // on who wrote it; make it explicit.
                "" => {
                    return Err(ValueError::new(
                        KIND,
                        input,
                        "missing unit, expected e.g. 30s or 250ms",
                    ));
                }
                other => {
                    return Err(ValueError::new(
                        KIND,
                        input,
                        format!("unknown unit {other:?}, expected ns, us, ms, s, m, h or d"),
                    ));
                }
            };
            total = total.checked_add(part).ok_or_else(too_large)?;
        }
        Ok(Self(total))
    }
}

impl fmt::Display for Duration {
    /// Writes the shortest combined form (`1m30s`, `250ms`), which parses back unchanged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        let secs = self.0.as_secs();
        let nanos = u64::from(self.0.subsec_nanos());
        let parts = [
            (secs / 3600, "h"),
            (secs / 60 % 60, "m"),
            (secs % 60, "s"),
            (nanos / 1_000_000, "ms"),
            (nanos / 1_000 % 1_000, "us"),
            (nanos % 1_000, "ns"),
        ];
        for (n, unit) in parts.into_iter().filter(|(n, _)| *n != 0) {
            write!(f, "{n}{unit}")?;
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with a unit, such as 30s, 250ms or 1m30s")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::net::SocketAddr;

    /// Settings of an example component, showing the pattern every component follows.
    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct ExampleConfig {
        /// Address of the admin server (metrics, health).
        admin_addr: SocketAddr,
        /// Longest log line kept whole; longer ones are split.
        max_line: ByteSize,
        /// How long in-flight work may take to finish on shutdown.
        drain_grace: Duration,
        /// Number of worker tasks.
        workers: usize,
    }

    const fn default_max_line() -> ByteSize {
        ByteSize::kib(64)
    }

    const fn default_drain_grace() -> Duration {
        Duration::from_secs(10)
    }

    impl Default for ExampleConfig {
        fn default() -> Self {
            Self {
                admin_addr: SocketAddr::from(([127, 0, 0, 1], 9090)),
                max_line: default_max_line(),
                drain_grace: default_drain_grace(),
                workers: 4,
            }
        }
    }

    impl ComponentConfig for ExampleConfig {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.workers == 0 {
                return Err(ConfigError::invalid("workers", "must be at least 1"));
            }
            Ok(())
        }
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write temp file");
        f
    }

    #[test]
    fn defaults_without_file() {
        let c: ExampleConfig = load(None, |_| {}).expect("loads");
        assert_eq!(c, ExampleConfig::default());
    }

    #[test]
    fn empty_file_gives_defaults() {
        for text in ["", "# nothing set yet\n\n"] {
            let f = file(text);
            let c: ExampleConfig = load(Some(f.path()), |_| {}).expect("loads");
            assert_eq!(c, ExampleConfig::default(), "{text:?}");
        }
    }

    #[test]
    fn file_values_replace_defaults() {
        let f = file("admin_addr: 0.0.0.0:9100\nmax_line: 1MiB\ndrain_grace: 1m30s\n");
        let c: ExampleConfig = load(Some(f.path()), |_| {}).expect("loads");
        assert_eq!(c.admin_addr, SocketAddr::from(([0, 0, 0, 0], 9100)));
        assert_eq!(c.max_line, ByteSize::mib(1));
        assert_eq!(c.drain_grace, Duration::from_secs(90));
        assert_eq!(c.workers, 4, "unset field keeps its default");
    }

    #[test]
    fn plain_integer_is_bytes() {
        let f = file("max_line: 100\n");
        let c: ExampleConfig = load(Some(f.path()), |_| {}).expect("loads");
        assert_eq!(c.max_line, ByteSize(100));
    }

    #[test]
    fn flag_override_wins_over_file() {
        let f = file("workers: 2\nmax_line: 1MiB\n");
        let flag_workers = Some(8);
        let c: ExampleConfig = load(Some(f.path()), |c: &mut ExampleConfig| {
            if let Some(w) = flag_workers {
                c.workers = w;
            }
        })
        .expect("loads");
        assert_eq!(c.workers, 8);
        assert_eq!(c.max_line, ByteSize::mib(1));
    }

    #[test]
    fn reload_reapplies_overrides() {
        let f = file("workers: 2\n");
        let c: ExampleConfig =
            reload(f.path(), |c: &mut ExampleConfig| c.workers = 3).expect("loads");
        assert_eq!(c.workers, 3);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let f = file("workers: 2\nmax_lines: 1MiB\n");
        let err = load::<ExampleConfig>(Some(f.path()), |_| {}).unwrap_err();
        let ConfigError::Parse(yaml) = &err else {
            panic!("expected a parse error, got {err:?}");
        };
        assert_eq!(yaml.location.map(|(line, _)| line), Some(2), "{err}");
        let text = err.to_string();
        assert!(text.contains("max_lines"), "{text}");
        assert!(text.starts_with(&f.path().display().to_string()), "{text}");
    }

    #[test]
    fn bad_value_type_is_a_parse_error() {
        let f = file("workers: many\n");
        let err = load::<ExampleConfig>(Some(f.path()), |_| {}).unwrap_err();
        assert!(matches!(err, ConfigError::Parse(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(":1:"), "{text}");
    }

    #[test]
    fn bad_byte_size_in_file_explains_unit() {
        let f = file("\nmax_line: 10MB\n");
        let err = load::<ExampleConfig>(Some(f.path()), |_| {}).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("MiB"), "{text}");
        assert!(text.contains(":2:"), "{text}");
    }

    #[test]
    fn bad_duration_in_file_is_rejected() {
        let f = file("drain_grace: 30\n");
        let err = load::<ExampleConfig>(Some(f.path()), |_| {}).unwrap_err();
        assert!(err.to_string().contains("missing unit"), "{err}");
    }

    #[test]
    fn validate_failure_names_file_and_field() {
        let f = file("workers: 0\n");
        let err = load::<ExampleConfig>(Some(f.path()), |_| {}).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: workers: must be at least 1", f.path().display())
        );
    }

    #[test]
    fn validate_failure_without_file_says_config() {
        let err = load::<ExampleConfig>(None, |c: &mut ExampleConfig| c.workers = 0).unwrap_err();
        assert_eq!(err.to_string(), "config: workers: must be at least 1");
    }

    #[test]
    fn missing_file_names_path_and_os_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("absent.yaml");
        let err = load::<ExampleConfig>(Some(&path), |_| {}).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with(&path.display().to_string()), "{text}");
        assert!(text.contains("No such file or directory"), "{text}");
        assert!(matches!(err, ConfigError::Read { .. }));
    }

    #[test]
    fn byte_size_parses() {
        for (text, bytes) in [
            ("100", 100),
            ("100B", 100),
            ("512KiB", 512 << 10),
            ("1MiB", 1 << 20),
            ("64MiB", 64 << 20),
            ("64 MiB", 64 << 20),
            ("1GiB", 1 << 30),
            ("2tib", 2 << 40),
            ("0", 0),
        ] {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
    }

    #[test]
    fn byte_size_rejects_junk() {
        for (text, reason) in [
            ("", "whole number"),
            ("MiB", "whole number"),
            ("-1", "whole number"),
            ("1.5GiB", "unknown unit \".5GiB\""),
            ("10MB", "write MiB"),
            ("1k", "write KiB"),
            ("12 bananas", "unknown unit \"bananas\""),
            ("99999999999999999999", "too large"),
            ("16777216TiB", "too large"),
        ] {
            let err = text.parse::<ByteSize>().unwrap_err().to_string();
            assert!(err.contains(reason), "{text}: {err}");
            assert!(err.starts_with("invalid byte size"), "{err}");
        }
    }

    #[test]
    fn byte_size_display_round_trips() {
        for (size, text) in [
            (ByteSize(0), "0B"),
            (ByteSize(100), "100B"),
            (ByteSize::kib(1536), "1536KiB"),
            (ByteSize::mib(64), "64MiB"),
            (ByteSize::gib(1024), "1TiB"),
        ] {
            assert_eq!(size.to_string(), text);
            assert_eq!(text.parse(), Ok(size));
        }
    }

    #[test]
    fn duration_parses() {
        for (text, d) in [
            ("1s", StdDuration::from_secs(1)),
            ("250ms", StdDuration::from_millis(250)),
            ("2m", StdDuration::from_secs(120)),
            ("1h", StdDuration::from_secs(3600)),
            ("1d", StdDuration::from_secs(86_400)),
            ("1m30s", StdDuration::from_secs(90)),
            ("1m 30s", StdDuration::from_secs(90)),
            ("5 m", StdDuration::from_secs(300)),
            ("10us", StdDuration::from_micros(10)),
            ("0s", StdDuration::ZERO),
        ] {
            assert_eq!(text.parse::<Duration>(), Ok(Duration(d)), "{text}");
        }
    }

    #[test]
    fn duration_rejects_junk() {
        for (text, reason) in [
            ("", "empty"),
            ("30", "missing unit"),
            ("1.5s", "unknown unit \".\""),
            ("5 minutes", "unknown unit \"minutes\""),
            ("s", "whole number"),
            ("-1s", "whole number"),
            ("99999999999999999999d", "too large"),
            ("18446744073709551615h", "too large"),
        ] {
            let err = text.parse::<Duration>().unwrap_err().to_string();
            assert!(err.contains(reason), "{text}: {err}");
            assert!(err.starts_with("invalid duration"), "{err}");
        }
    }

    #[test]
    fn duration_display_round_trips() {
        for (d, text) in [
            (StdDuration::ZERO, "0s"),
            (StdDuration::from_millis(250), "250ms"),
            (StdDuration::from_secs(90), "1m30s"),
            (StdDuration::from_secs(7200), "2h"),
            (StdDuration::from_nanos(1_500), "1us500ns"),
        ] {
            assert_eq!(Duration(d).to_string(), text);
            assert_eq!(text.parse(), Ok(Duration(d)));
        }
    }

    #[test]
    fn values_serialize_as_text() {
        #[derive(Serialize)]
        struct Out {
            size: ByteSize,
            wait: Duration,
        }
        let yaml = crate::yaml::to_string(&Out {
            size: ByteSize::mib(64),
            wait: Duration::from_millis(1500),
        });
        assert!(yaml.contains("size: 64MiB"), "{yaml}");
        assert!(yaml.contains("wait: 1s500ms"), "{yaml}");
    }
}
