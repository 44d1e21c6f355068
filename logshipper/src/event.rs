//! Events as they travel from a reader to the outputs: a chunk of lines
//! from one file, sharing one description of where they came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::buffer::Reservation;
use crate::config::FileField;
use crate::json;

/// One tailed file's byte stream; stays the same across renames and a
/// copy made by copytruncate, and changes when the file is truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u64);

/// The container stream a line was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// The name used in CRI logs and in every output.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// The pod and container a log file belongs to, from its path
/// `.../<namespace>_<pod>_<uid>/<container>/<restart>.log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's UID.
    pub uid: String,
    /// The container's name.
    pub container: String,
}

impl PodRef {
    /// Reads the pod from a kubelet log path; `None` for other paths.
    pub fn from_path(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?;
        let (restart, _) = name.split_once(".log")?;
        if restart.is_empty() || !restart.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let container_dir = path.parent()?;
        let container = container_dir.file_name()?.to_str()?;
        let pod_dir = container_dir.parent()?.file_name()?.to_str()?;
        // Namespaces and pod names are DNS names and UIDs are hex with
        // dashes, so none contains an underscore.
        let mut parts = pod_dir.split('_');
        let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || [namespace, pod, uid, container].contains(&"") {
            return None;
        }
        Some(Self {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            uid: uid.to_string(),
            container: container.to_string(),
        })
    }
}

/// Where a file's events come from; shared by all of its chunks.
#[derive(Debug)]
pub struct Source {
    /// The input's configured name.
    pub input: Arc<str>,
    /// The path the file was found at.
    pub path: PathBuf,
    /// The pod, for kubelet log paths.
    pub pod: Option<PodRef>,
    /// The pod's labels, when the cluster knows the pod.
    pub labels: Option<BTreeMap<String, String>>,
    /// The path as events carry it, if they do (`file_field`).
    file: Option<String>,
    json_fields: String,
}

impl Source {
    /// Describes the file at `path`, read by `input`, without labels.
    pub fn new(input: Arc<str>, path: PathBuf, file_field: FileField) -> Self {
        Self::with_labels(input, path, file_field, |_| None)
    }

    /// Like [`Source::new`], with the pod's labels as `labels` finds them.
    pub fn with_labels(
        input: Arc<str>,
        path: PathBuf,
        file_field: FileField,
        labels: impl FnOnce(&PodRef) -> Option<BTreeMap<String, String>>,
    ) -> Self {
        let pod = PodRef::from_path(&path);
        let labels = pod.as_ref().and_then(labels);
        let file = match file_field {
            FileField::Always => true,
            FileField::Auto => pod.is_none(),
            FileField::Never => false,
        }
        .then(|| path.to_string_lossy().into_owned());
        let mut fields = Vec::new();
        let mut put = |key: &str, value: &str| {
            fields.extend_from_slice(b",\"");
            fields.extend_from_slice(key.as_bytes());
            fields.extend_from_slice(b"\":");
            json::push_str(&mut fields, value);
        };
        put("input", &input);
        if let Some(file) = &file {
            put("file", file);
        }
        if let Some(pod) = &pod {
            put("namespace", &pod.namespace);
            put("pod", &pod.pod);
            put("uid", &pod.uid);
            put("container", &pod.container);
        }
        if let Some(labels) = &labels {
            fields.extend_from_slice(b",\"labels\":{");
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    fields.push(b',');
                }
                json::push_str(&mut fields, k);
                fields.push(b':');
                json::push_str(&mut fields, v);
            }
            fields.push(b'}');
        }
        let json_fields = String::from_utf8(fields).unwrap_or_default();
        Self {
            input,
            path,
            pod,
            labels,
            file,
            json_fields,
        }
    }

    /// The file's path, if its events carry it.
    pub fn file(&self) -> Option<&str> {
        self.file.as_deref()
    }

    /// `,"input":...`, the file and the pod fields, already escaped, for
    /// appending to a JSON object being written.
    pub fn json_fields(&self) -> &str {
        &self.json_fields
    }
}

/// One event inside a [`Chunk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Where the event's text starts in the chunk's text.
    pub start: u32,
    /// Where it ends.
    pub end: u32,
    /// When the line was written, in nanoseconds since the Unix epoch.
    pub timestamp: i64,
    /// The stream, when the format records one.
    pub stream: Option<Stream>,
    /// The file offset from which reading resumes once this event (and
    /// every one before it) is delivered: past its last line, or at the
    /// start of a partial line still waiting for its end.
    pub commit: u64,
}

/// Consecutive events of one file, as a reader hands them on.
#[derive(Debug)]
pub struct Chunk {
    /// The file's stream.
    pub file: FileId,
    /// Where the events come from.
    pub source: Arc<Source>,
    /// The events' text, back to back.
    pub text: String,
    /// The events, in file order.
    pub events: Vec<Event>,
    /// When the chunk was read, for the age of what an output holds.
    pub read_at: std::time::Instant,
    /// Held until the last output is done with the chunk, so the buffer
    /// counts it until then.
    reservation: Option<Reservation>,
}

impl Chunk {
    /// An empty chunk of `file`'s events.
    pub fn new(file: FileId, source: Arc<Source>) -> Self {
        Self {
            file,
            source,
            text: String::new(),
            events: Vec::new(),
            read_at: std::time::Instant::now(),
            reservation: None,
        }
    }

    /// Appends an event whose text is `text`.
    pub fn push(&mut self, text: &str, timestamp: i64, stream: Option<Stream>, commit: u64) {
        let start = self.text.len() as u32;
        self.text.push_str(text);
        self.events.push(Event {
            start,
            end: self.text.len() as u32,
            timestamp,
            stream,
            commit,
        });
    }

    /// The text of `event`.
    pub fn line(&self, event: &Event) -> &str {
        &self.text[event.start as usize..event.end as usize]
    }

    /// Bytes the chunk holds in memory, as the buffer counts them.
    pub fn memory(&self) -> usize {
        self.text.capacity() + self.events.capacity() * std::mem::size_of::<Event>()
    }

    /// Ties the chunk to its share of the buffer.
    pub fn hold(&mut self, reservation: Reservation) {
        self.reservation = Some(reservation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_from_kubelet_paths() {
        let pod = PodRef::from_path(Path::new(
            "/var/log/pods/kube-system_coredns-5d78c9869d-abcde_6b1f8e2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b/coredns/0.log",
        ))
        .expect("pod path");
        assert_eq!(pod.namespace, "kube-system");
        assert_eq!(pod.pod, "coredns-5d78c9869d-abcde");
        assert_eq!(pod.uid, "6b1f8e2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b");
        assert_eq!(pod.container, "coredns");
        assert!(PodRef::from_path(Path::new("/p/ns_pod_uid/c/3.log.20240101-010101")).is_some());
        for other in [
            "/var/log/syslog",
            "/var/log/pods/ns_pod/c/0.log",
            "/var/log/pods/ns_pod_uid_x/c/0.log",
            "/var/log/pods/ns_pod_uid/c/app.log",
        ] {
            assert_eq!(PodRef::from_path(Path::new(other)), None, "{other}");
        }
    }

    #[test]
    fn source_json_fields_are_escaped() {
        let source = Source::new(
            "in\"put".into(),
            PathBuf::from("/l/ns_p_u/c/0.log"),
            FileField::Always,
        );
        assert_eq!(
            source.json_fields(),
            r#","input":"in\"put","file":"/l/ns_p_u/c/0.log","namespace":"ns","pod":"p","uid":"u","container":"c""#
        );
    }

    #[test]
    fn pod_logs_carry_their_path_only_when_asked() {
        let fields = |path: &str, file_field| {
            Source::new("in".into(), PathBuf::from(path), file_field)
                .json_fields()
                .to_string()
        };
        let pod = "/l/ns_p_u/c/0.log";
        assert_eq!(
            fields(pod, FileField::Auto),
            r#","input":"in","namespace":"ns","pod":"p","uid":"u","container":"c""#
        );
        assert_eq!(
            fields("/var/log/x", FileField::Auto),
            r#","input":"in","file":"/var/log/x""#
        );
        assert!(fields(pod, FileField::Always).contains(r#""file":"/l/ns_p_u/c/0.log""#));
        assert_eq!(fields("/var/log/x", FileField::Never), r#","input":"in""#);
        let source = Source::new("in".into(), PathBuf::from(pod), FileField::Auto);
        assert_eq!(source.file(), None);
        assert_eq!(source.path, PathBuf::from(pod));
    }

    #[test]
    fn pod_labels_join_the_pod_fields_escaped() {
        let labels = BTreeMap::from([
            ("app".to_string(), "web".to_string()),
            ("note".to_string(), "say \"hi\"".to_string()),
        ]);
        let source = Source::with_labels(
            "in".into(),
            PathBuf::from("/l/ns_p_u/c/0.log"),
            FileField::Always,
            |pod| {
                assert_eq!(pod.pod, "p");
                Some(labels.clone())
            },
        );
        assert_eq!(
            source.json_fields(),
            r#","input":"in","file":"/l/ns_p_u/c/0.log","namespace":"ns","pod":"p","uid":"u","container":"c","labels":{"app":"web","note":"say \"hi\""}"#
        );
        assert_eq!(source.labels, Some(labels));
        // Files that are not pod logs have no pod, so no labels are asked for.
        let plain = Source::with_labels(
            "in".into(),
            PathBuf::from("/var/log/x"),
            FileField::Auto,
            |_| panic!("asked"),
        );
        assert!(!plain.json_fields().contains("labels"));
    }
}
