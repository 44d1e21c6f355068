//! The log shipper's configuration file, loaded with `orca_core::config::load`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use orca_core::config::{ByteSize, ComponentConfig, ConfigError, Duration};
use serde::Deserialize;

/// Everything `orca logshipper --config FILE` reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The files to tail, grouped by how their lines are parsed.
    pub inputs: Vec<InputConfig>,
    /// Where read offsets are kept across restarts; created if missing.
    pub checkpoint_dir: PathBuf,
    /// The in-memory buffer between the readers and the outputs.
    pub buffer: BufferConfig,
    /// Where events go; every event goes to every output.
    pub outputs: Vec<OutputConfig>,
    /// The admin server (metrics, health).
    pub admin: AdminConfig,
    /// How long SIGTERM waits for outputs to deliver what was read before
    /// stopping anyway (undelivered lines are re-read on the next start).
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            inputs: Vec::new(),
            checkpoint_dir: PathBuf::from("/var/lib/orca/logshipper"),
            buffer: BufferConfig::default(),
            outputs: Vec::new(),
            admin: AdminConfig::default(),
            shutdown_grace: default_shutdown_grace(),
        }
    }
}

const fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}

/// One group of files read the same way.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputConfig {
    /// Names the input in metrics and checkpoints; unique.
    pub name: String,
    /// Absolute glob patterns (`*`, `?`, `[abc]`, `**`); files that appear
    /// later are picked up by the periodic rescan.
    pub paths: Vec<String>,
    /// How each line is parsed.
    pub format: Format,
    /// Joins lines into one event when they do not start a new record.
    pub multiline: Option<MultilineConfig>,
    /// Largest event; longer lines (or joined partial lines) are split into
    /// several events of at most this size rather than dropped.
    pub max_event_size: ByteSize,
    /// How often the globs are expanded again to find new and rotated files.
    pub scan_interval: Duration,
    /// How long a reader sleeps when none of its files had new data.
    pub poll_interval: Duration,
    /// How long a rotated or deleted file is still followed, for a writer
    /// that has not reopened its log yet; it is closed at its end after that.
    pub rotate_wait: Duration,
    /// Whether events carry the path of their file (`file`, Loki's
    /// `filename`).
    pub file_field: FileField,
}

impl Default for InputConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            paths: Vec::new(),
            format: Format::Cri,
            multiline: None,
            max_event_size: default_max_event_size(),
            scan_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(250),
            rotate_wait: Duration::from_secs(5),
            file_field: FileField::Auto,
        }
    }
}

const fn default_max_event_size() -> ByteSize {
    ByteSize::kib(256)
}

/// The format of an input's lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Kubernetes CRI logs: `<RFC3339Nano> <stdout|stderr> <P|F> <text>`.
    Cri,
    /// Plain lines, timestamped when read.
    Raw,
    /// Docker's json-file driver: `{"log":"...","stream":"...","time":"..."}`.
    DockerJson,
}

/// When an event carries the path of the file it was read from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileField {
    /// For files that are not pod logs. A pod log's path only repeats its
    /// pod fields (and the container's restart count) at a third of each
    /// event's bytes; Fluent Bit, too, adds paths only when asked.
    #[default]
    Auto,
    /// For every file.
    Always,
    /// Never.
    Never,
}

/// Multiline joining: a line matching `start` begins a new event, any other
/// line is appended to the current one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MultilineConfig {
    /// Regular expression matching the first line of an event (`^\S`).
    pub start: String,
    /// Most lines joined into one event.
    pub max_lines: usize,
    /// How long an event waits for a continuation line once the file is idle.
    pub timeout: Duration,
}

impl Default for MultilineConfig {
    fn default() -> Self {
        Self {
            start: r"^\S".to_string(),
            max_lines: 500,
            timeout: Duration::from_secs(1),
        }
    }
}

/// The in-memory buffer between readers and outputs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BufferConfig {
    /// Most bytes of events held in memory; readers pause beyond it.
    pub max_memory: ByteSize,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            max_memory: ByteSize::mib(64),
        }
    }
}

/// The kind of an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputType {
    /// JSON lines on standard output.
    Stdout,
    /// JSON lines appended to a file, acknowledged after fsync.
    File,
    /// JSON lines over TCP, acknowledged after write and flush.
    Tcp,
    /// HTTP POST, acknowledged by a 2xx answer.
    Http,
    /// The Fluentd forward protocol (msgpack over TCP).
    Forward,
    /// RFC 5424 syslog over TCP with octet-counting framing.
    Syslog,
}

/// The body format of an HTTP output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpFormat {
    /// Elasticsearch `_bulk` NDJSON (`create` actions).
    ElasticsearchBulk,
    /// Loki's `/loki/api/v1/push` JSON.
    Loki,
    /// One JSON object per line.
    JsonLines,
}

/// One destination; which keys apply depends on `type`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// Names the output in metrics; unique.
    pub name: String,
    /// The kind of destination.
    #[serde(rename = "type")]
    pub kind: OutputType,
    /// `file`: the file events are appended to.
    pub path: Option<PathBuf>,
    /// `tcp`, `forward`, `syslog`: the `host:port` to connect to.
    pub address: Option<String>,
    /// `http`: the `http://` URL events are POSTed to.
    pub url: Option<String>,
    /// `http`: the body format.
    pub format: Option<HttpFormat>,
    /// `http`: extra request headers.
    pub headers: BTreeMap<String, String>,
    /// `http`: compress request bodies with gzip (`Content-Encoding: gzip`).
    pub gzip: bool,
    /// `http` with an `https://` URL: the PEM file of the certificate
    /// authorities the server's certificate must chain to; the system's
    /// (`/etc/ssl/certs/ca-certificates.crt`) by default.
    pub ca_file: Option<PathBuf>,
    /// `http` with `elasticsearch_bulk`: the index (or data stream) written to.
    pub index: Option<String>,
    /// `forward`: wait for the server's ack of each chunk before counting it delivered.
    pub require_ack: Option<bool>,
    /// `forward`: the Fluentd tag of every event.
    pub tag: Option<String>,
    /// `syslog`: the facility number (0-23); `user` (1) by default.
    pub facility: Option<u8>,
    /// `syslog`: the HOSTNAME field; the machine's host name by default.
    pub hostname: Option<String>,
    /// How events are grouped into one delivery.
    pub batch: BatchConfig,
    /// How failed deliveries are retried.
    pub retry: RetryConfig,
    /// What becomes of a batch the destination rejects for good (an HTTP
    /// 4xx other than 408 and 429, an Elasticsearch item rejected with
    /// one), or one still failing after `retry.max_attempts`.
    pub on_failure: FailureAction,
    /// With `on_failure: dead_letter`, the file such batches are appended
    /// to; `<checkpoint_dir>/dead-letter/<name>.jsonl` by default.
    pub dead_letter_path: Option<PathBuf>,
    /// The output's own queue: how far it may fall behind the other outputs.
    pub buffer: OutputBufferConfig,
    /// `/healthz` answers 503 while an event has waited this long for this
    /// output to deliver it.
    pub unhealthy_after: Duration,
    /// `http`, `forward`, `tcp`, `syslog`: longest wait for a connection,
    /// a response or an ack before the attempt counts as failed.
    pub timeout: Duration,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            kind: OutputType::Stdout,
            path: None,
            address: None,
            url: None,
            format: None,
            headers: BTreeMap::new(),
            gzip: false,
            ca_file: None,
            index: None,
            require_ack: None,
            tag: None,
            facility: None,
            hostname: None,
            batch: BatchConfig::default(),
            retry: RetryConfig::default(),
            on_failure: FailureAction::DeadLetter,
            dead_letter_path: None,
            buffer: OutputBufferConfig::default(),
            unhealthy_after: default_unhealthy_after(),
            timeout: Duration::from_secs(30),
        }
    }
}

/// Batching limits; a batch is sent when any one is reached.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Most events in one batch.
    pub max_events: usize,
    /// Most bytes of lines in one batch.
    pub max_bytes: ByteSize,
    /// Longest a batch waits for more events after its first one.
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_events: 1000,
            max_bytes: ByteSize::mib(1),
            max_wait: Duration::from_secs(1),
        }
    }
}

const fn default_unhealthy_after() -> Duration {
    Duration::from_secs(300)
}

/// Exponential back-off with jitter between delivery attempts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Wait after the first failure.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
    /// Attempts at one batch before it is given up (`on_failure`); 0, the
    /// default, retries transient failures (a refused connection, a 5xx,
    /// a timeout) for ever.
    pub max_attempts: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            max_attempts: 0,
        }
    }
}

/// What becomes of a batch an output gives up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureAction {
    /// Appended, as it would have been sent and with the reason, to the
    /// output's dead-letter file (fsynced before the batch counts as done).
    DeadLetter,
    /// Dropped, logged and counted.
    Drop,
}

/// What an output's queue does once it holds `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// The readers wait for this output: nothing is lost, and the other
    /// outputs stop once they are `max_bytes` ahead of it.
    Block,
    /// This output skips what the readers hand on until it has room again
    /// (logged and counted); the others never wait for it.
    DropNewest,
}

/// An output's own queue, in memory.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputBufferConfig {
    /// Most bytes of events queued for this output beyond the batches it
    /// is sending; part of the shared `buffer.max_memory`.
    pub max_bytes: ByteSize,
    /// What happens when the queue is full.
    pub when_full: WhenFull,
}

impl Default for OutputBufferConfig {
    fn default() -> Self {
        Self {
            max_bytes: ByteSize::mib(8),
            when_full: WhenFull::Block,
        }
    }
}

/// The admin server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where `/metrics` and `/healthz` are served.
    pub address: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            address: SocketAddr::from(([127, 0, 0, 1], 9902)),
        }
    }
}

impl ComponentConfig for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.inputs.is_empty() {
            return Err(ConfigError::invalid(
                "inputs",
                "at least one input is required",
            ));
        }
        if self.outputs.is_empty() {
            return Err(ConfigError::invalid(
                "outputs",
                "at least one output is required",
            ));
        }
        if self.checkpoint_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("checkpoint_dir", "must not be empty"));
        }
        if self.buffer.max_memory.bytes() < ByteSize::mib(1).bytes() {
            return Err(ConfigError::invalid(
                "buffer.max_memory",
                "must be at least 1MiB",
            ));
        }
        for (i, input) in self.inputs.iter().enumerate() {
            input.validate(&format!("inputs[{i}]"))?;
            if self.inputs[..i]
                .iter()
                .any(|other| other.name == input.name)
            {
                return Err(ConfigError::invalid(
                    format!("inputs[{i}].name"),
                    format!("duplicate input name {:?}", input.name),
                ));
            }
        }
        for (i, output) in self.outputs.iter().enumerate() {
            output.validate(&format!("outputs[{i}]"))?;
            if self.outputs[..i]
                .iter()
                .any(|other| other.name == output.name)
            {
                return Err(ConfigError::invalid(
                    format!("outputs[{i}].name"),
                    format!("duplicate output name {:?}", output.name),
                ));
            }
        }
        Ok(())
    }
}

impl InputConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::invalid(
                format!("{at}.name"),
                "must not be empty",
            ));
        }
        if self.paths.is_empty() {
            return Err(ConfigError::invalid(
                format!("{at}.paths"),
                "at least one glob is required",
            ));
        }
        for (j, path) in self.paths.iter().enumerate() {
            crate::tail::glob::Pattern::new(path)
                .map_err(|err| ConfigError::invalid(format!("{at}.paths[{j}]"), err.to_string()))?;
        }
        if self.max_event_size.bytes() < 1024 {
            return Err(ConfigError::invalid(
                format!("{at}.max_event_size"),
                "must be at least 1KiB",
            ));
        }
        for (field, value) in [
            ("scan_interval", self.scan_interval),
            ("poll_interval", self.poll_interval),
        ] {
            if value.get().is_zero() {
                return Err(ConfigError::invalid(
                    format!("{at}.{field}"),
                    "must be more than 0s",
                ));
            }
        }
        if let Some(multiline) = &self.multiline {
            regex::Regex::new(&multiline.start).map_err(|err| {
                ConfigError::invalid(format!("{at}.multiline.start"), err.to_string())
            })?;
            if multiline.max_lines < 2 {
                return Err(ConfigError::invalid(
                    format!("{at}.multiline.max_lines"),
                    "must be at least 2",
                ));
            }
        }
        Ok(())
    }
}

impl OutputConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::invalid(
                format!("{at}.name"),
                "must not be empty",
            ));
        }
        let kind = self.kind;
        let uses = |field: &str| -> bool {
            match field {
                "path" => kind == OutputType::File,
                "address" => matches!(
                    kind,
                    OutputType::Tcp | OutputType::Forward | OutputType::Syslog
                ),
                "url" | "format" | "headers" | "gzip" => kind == OutputType::Http,
                "ca_file" => {
                    kind == OutputType::Http
                        && self
                            .url
                            .as_deref()
                            .is_some_and(|u| u.starts_with("https://"))
                }
                "index" => {
                    kind == OutputType::Http && self.format == Some(HttpFormat::ElasticsearchBulk)
                }
                "require_ack" | "tag" => kind == OutputType::Forward,
                "facility" | "hostname" => kind == OutputType::Syslog,
                _ => true,
            }
        };
        let set = [
            ("path", self.path.is_some()),
            ("address", self.address.is_some()),
            ("url", self.url.is_some()),
            ("format", self.format.is_some()),
            ("headers", !self.headers.is_empty()),
            ("gzip", self.gzip),
            ("ca_file", self.ca_file.is_some()),
            ("index", self.index.is_some()),
            ("require_ack", self.require_ack.is_some()),
            ("tag", self.tag.is_some()),
            ("facility", self.facility.is_some()),
            ("hostname", self.hostname.is_some()),
        ];
        for (field, is_set) in set {
            if is_set && !uses(field) {
                return Err(ConfigError::invalid(
                    format!("{at}.{field}"),
                    format!("not used by outputs of type {}", type_name(kind)),
                ));
            }
        }
        let required = |field: &str, is_set: bool| {
            if is_set {
                Ok(())
            } else {
                Err(ConfigError::invalid(
                    format!("{at}.{field}"),
                    format!("required for outputs of type {}", type_name(kind)),
                ))
            }
        };
        match kind {
            OutputType::Stdout => {}
            OutputType::File => required("path", self.path.is_some())?,
            OutputType::Tcp | OutputType::Forward | OutputType::Syslog => {
                let address = self.address.as_deref().unwrap_or_default();
                required("address", !address.is_empty())?;
                if !address
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                {
                    return Err(ConfigError::invalid(
                        format!("{at}.address"),
                        format!("{address:?} is not host:port"),
                    ));
                }
            }
            OutputType::Http => {
                required("url", self.url.is_some())?;
                required("format", self.format.is_some())?;
                let url = self.url.as_deref().unwrap_or_default();
                crate::sinks::http::Endpoint::parse(url)
                    .map_err(|err| ConfigError::invalid(format!("{at}.url"), err.to_string()))?;
                for name in self.headers.keys() {
                    if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        return Err(ConfigError::invalid(
                            format!("{at}.headers"),
                            format!("{name:?} is not a valid header name"),
                        ));
                    }
                }
                for value in self.headers.values() {
                    if hyper::header::HeaderValue::from_str(value).is_err() {
                        return Err(ConfigError::invalid(
                            format!("{at}.headers"),
                            format!("{value:?} is not a valid header value"),
                        ));
                    }
                }
            }
        }
        if self.facility.is_some_and(|f| f > 23) {
            return Err(ConfigError::invalid(
                format!("{at}.facility"),
                "must be 0-23",
            ));
        }
        if self.batch.max_events == 0 {
            return Err(ConfigError::invalid(
                format!("{at}.batch.max_events"),
                "must be at least 1",
            ));
        }
        if self.batch.max_bytes.bytes() == 0 {
            return Err(ConfigError::invalid(
                format!("{at}.batch.max_bytes"),
                "must be more than 0",
            ));
        }
        if self.retry.initial_backoff.get().is_zero()
            || self.retry.max_backoff < self.retry.initial_backoff
        {
            return Err(ConfigError::invalid(
                format!("{at}.retry"),
                "initial_backoff must be more than 0s and at most max_backoff",
            ));
        }
        if self.timeout.get().is_zero() {
            return Err(ConfigError::invalid(
                format!("{at}.timeout"),
                "must be more than 0s",
            ));
        }
        if self.dead_letter_path.is_some() && self.on_failure != FailureAction::DeadLetter {
            return Err(ConfigError::invalid(
                format!("{at}.dead_letter_path"),
                "only used with on_failure: dead_letter",
            ));
        }
        if self.buffer.max_bytes.bytes() == 0 {
            return Err(ConfigError::invalid(
                format!("{at}.buffer.max_bytes"),
                "must be more than 0",
            ));
        }
        if self.unhealthy_after.get().is_zero() {
            return Err(ConfigError::invalid(
                format!("{at}.unhealthy_after"),
                "must be more than 0s",
            ));
        }
        Ok(())
    }
}

fn type_name(kind: OutputType) -> &'static str {
    match kind {
        OutputType::Stdout => "stdout",
        OutputType::File => "file",
        OutputType::Tcp => "tcp",
        OutputType::Http => "http",
        OutputType::Forward => "forward",
        OutputType::Syslog => "syslog",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(text.as_bytes()).expect("writes");
        orca_core::config::load(Some(file.path()), |_| {})
    }

    const ISSUE_EXAMPLE: &str = r#"
inputs:
  - name: pods
    paths: ["/var/log/pods/*/*/*.log"]
    format: cri
    multiline: {start: '^\S', max_lines: 500}
checkpoint_dir: /var/lib/orca/logshipper
buffer:
  max_memory: 64MiB
outputs:
  - name: out
    type: file
    path: /var/log/orca/shipped.jsonl
    batch: {max_events: 1000, max_bytes: 1MiB, max_wait: 1s}
admin:
  address: 127.0.0.1:9902
"#;

    #[test]
    fn issue_example_loads() {
        let config = load(ISSUE_EXAMPLE).expect("loads");
        assert_eq!(config.inputs[0].format, Format::Cri);
        assert_eq!(
            config.inputs[0].multiline.as_ref().map(|m| m.max_lines),
            Some(500)
        );
        assert_eq!(config.buffer.max_memory, ByteSize::mib(64));
        assert_eq!(config.outputs[0].kind, OutputType::File);
        assert_eq!(config.outputs[0].batch.max_bytes, ByteSize::mib(1));
        assert_eq!(config.admin.address.port(), 9902);
    }

    #[test]
    fn every_output_type_loads() {
        let text = r#"
inputs: [{name: a, paths: ["/tmp/*.log"], format: docker_json}]
outputs:
  - {name: s, type: stdout}
  - {name: t, type: tcp, address: "127.0.0.1:5170"}
  - name: h
    type: http
    url: http://127.0.0.1:9200/_bulk
    format: elasticsearch_bulk
    index: logs
    headers: {Authorization: "Basic eDp5"}
    gzip: true
  - {name: l, type: http, url: "http://127.0.0.1:3100/loki/api/v1/push", format: loki}
  - {name: f, type: forward, address: "127.0.0.1:24224", require_ack: true, tag: k8s}
  - {name: y, type: syslog, address: "127.0.0.1:514", facility: 16}
"#;
        let config = load(text).expect("loads");
        assert_eq!(config.outputs.len(), 6);
        assert_eq!(config.outputs[4].require_ack, Some(true));
        assert!(config.outputs[2].gzip);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = load("inputs: [{name: a, paths: [/x], colour: red}]\n").unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            ("inputs: []\noutputs: [{name: s, type: stdout}]\n", "inputs"),
            (
                "inputs: [{name: a, paths: [relative/*.log]}]\noutputs: [{name: s, type: stdout}]\n",
                "inputs[0].paths[0]",
            ),
            (
                "inputs: [{name: a, paths: [/x]}]\noutputs: [{name: s, type: tcp}]\n",
                "outputs[0].address",
            ),
            (
                "inputs: [{name: a, paths: [/x]}]\noutputs: [{name: s, type: file, path: /o, url: http://x/}]\n",
                "outputs[0].url",
            ),
            (
                "inputs: [{name: a, paths: [/x]}]\noutputs: [{name: s, type: http, url: 'ftp://x/', format: loki}]\n",
                "outputs[0].url",
            ),
            (
                "inputs: [{name: a, paths: [/x]}]\noutputs: [{name: s, type: http, url: 'http://x/', format: loki, ca_file: /ca.pem}]\n",
                "outputs[0].ca_file",
            ),
            (
                "inputs: [{name: a, paths: [/x], multiline: {start: '('}}]\noutputs: [{name: s, type: stdout}]\n",
                "inputs[0].multiline.start",
            ),
            (
                "inputs: [{name: a, paths: [/x]}, {name: a, paths: [/y]}]\noutputs: [{name: s, type: stdout}]\n",
                "inputs[1].name",
            ),
        ];
        for (text, field) in cases {
            let err = load(text).unwrap_err().to_string();
            assert!(err.contains(&format!("{field}: ")), "{field}: {err}");
        }
    }

    #[test]
    fn file_field_defaults_to_auto_and_names_its_place_when_wrong() {
        let config = load(
            "inputs: [{name: a, paths: [/x]}, {name: b, paths: [/y], file_field: always}]\noutputs: [{name: s, type: stdout}]\n",
        )
            .expect("loads");
        assert_eq!(config.inputs[0].file_field, FileField::Auto);
        assert_eq!(config.inputs[1].file_field, FileField::Always);
        let err = load("inputs: [{name: a, paths: [/x], file_field: sometimes}]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("file_field") && err.contains("sometimes"),
            "{err}"
        );
    }

    #[test]
    fn failure_policy_loads_and_defaults_lose_nothing() {
        let config = load(
            "inputs: [{name: a, paths: [/x]}]\noutputs:\n  - {name: s, type: stdout}\n  - {name: d, type: stdout, on_failure: drop, retry: {max_attempts: 3}, buffer: {max_bytes: 1MiB, when_full: drop_newest}, unhealthy_after: 10s}\n",
        )
        .expect("loads");
        let (default, set) = (&config.outputs[0], &config.outputs[1]);
        assert_eq!(default.on_failure, FailureAction::DeadLetter);
        assert_eq!(default.retry.max_attempts, 0);
        assert_eq!(default.buffer.when_full, WhenFull::Block);
        assert_eq!(set.on_failure, FailureAction::Drop);
        assert_eq!(set.retry.max_attempts, 3);
        assert_eq!(set.buffer.when_full, WhenFull::DropNewest);
        assert_eq!(set.unhealthy_after, Duration::from_secs(10));
        let err = load(
            "inputs: [{name: a, paths: [/x]}]\noutputs: [{name: d, type: stdout, on_failure: drop, dead_letter_path: /dl}]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("outputs[0].dead_letter_path: "), "{err}");
    }

    #[test]
    fn bad_byte_size_is_a_parse_error() {
        let err = load("buffer: {max_memory: 64MB}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("buffer.max_memory"), "{err}");
    }
}
