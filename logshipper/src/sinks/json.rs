//! JSON payloads: JSON lines, Elasticsearch `_bulk` and Loki push.

use std::sync::Arc;

use crate::event::{Event, Source, Stream};
use crate::json::push_str;
use crate::sinks::Batch;
use crate::time::format_rfc3339;

/// Appends one JSON object per event and line:
/// `{"timestamp":...,"stream":...,"line":...,"input":...,"file":...,<pod fields>}`.
pub fn json_lines(batch: &Batch, out: &mut Vec<u8>) {
    for (chunk, event) in batch.events() {
        object(
            b"timestamp",
            b"line",
            chunk.line(event),
            event,
            &chunk.source,
            out,
        );
        out.push(b'\n');
    }
}

/// Appends an Elasticsearch bulk body: a `create` action line and a
/// document line per event (`@timestamp`, `message`, ...), each ending in
/// a newline, as the `_bulk` API requires. `create` also works for data streams.
pub fn elasticsearch_bulk(batch: &Batch, index: &str, out: &mut Vec<u8>) {
    let mut action = b"{\"create\":{\"_index\":".to_vec();
    push_str(&mut action, index);
    action.extend_from_slice(b"}}\n");
    for (chunk, event) in batch.events() {
        out.extend_from_slice(&action);
        object(
            b"@timestamp",
            b"message",
            chunk.line(event),
            event,
            &chunk.source,
            out,
        );
        out.push(b'\n');
    }
}

fn object(
    ts_key: &[u8],
    line_key: &[u8],
    line: &str,
    event: &Event,
    source: &Source,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(ts_key);
    out.extend_from_slice(b"\":\"");
    format_rfc3339(event.timestamp, 9, out);
    // One copy for what lies between the timestamp and the line.
    out.extend_from_slice(match event.stream {
        Some(Stream::Stdout) => b"\",\"stream\":\"stdout\",\"",
        Some(Stream::Stderr) => b"\",\"stream\":\"stderr\",\"",
        None => b"\",\"",
    });
    out.extend_from_slice(line_key);
    out.extend_from_slice(b"\":");
    push_str(out, line);
    out.extend_from_slice(source.json_fields().as_bytes());
    out.push(b'}');
}

/// Events of one Loki stream share their file (by `Source` identity) and stream.
type StreamKey = (*const Source, Option<Stream>);

/// A Loki value in the making: the event's source, line and event.
type Value<'a> = (&'a Arc<Source>, &'a str, &'a Event);

/// Appends a Loki push body: one stream per file and container stream,
/// labelled with the input, the file and the pod fields, its values
/// `["<unix nanoseconds>", "<line>"]` in read order.
pub fn loki(batch: &Batch, out: &mut Vec<u8>) {
    let mut streams: Vec<(StreamKey, Vec<Value<'_>>)> = Vec::new();
    for slice in &batch.slices {
        let chunk = &*slice.chunk;
        for event in &chunk.events[slice.from..slice.to] {
            let key = (Arc::as_ptr(&chunk.source), event.stream);
            let entry = (&chunk.source, chunk.line(event), event);
            match streams.iter_mut().find(|(k, _)| *k == key) {
                Some((_, values)) => values.push(entry),
                None => streams.push((key, vec![entry])),
            }
        }
    }
    out.extend_from_slice(b"{\"streams\":[");
    for (i, (_, values)) in streams.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let (source, _, first) = values[0];
        out.extend_from_slice(b"{\"stream\":{");
        let mut label = |name: &str, value: &str, first_label: bool| {
            if !first_label {
                out.push(b',');
            }
            push_str(out, name);
            out.push(b':');
            push_str(out, value);
        };
        label("input", &source.input, true);
        if let Some(file) = source.file() {
            label("filename", file, false);
        }
        if let Some(stream) = first.stream {
            label("stream", stream.as_str(), false);
        }
        if let Some(pod) = &source.pod {
            label("namespace", &pod.namespace, false);
            label("pod", &pod.pod, false);
            label("container", &pod.container, false);
        }
        out.extend_from_slice(b"},\"values\":[");
        for (j, (_, line, event)) in values.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            out.extend_from_slice(format!("[\"{}\",", event.timestamp).as_bytes());
            push_str(out, line);
            out.push(b']');
        }
        out.extend_from_slice(b"]}");
    }
    out.extend_from_slice(b"]}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileField;
    use crate::event::{Chunk, FileId};
    use serde_json::{Value, json};

    fn batch() -> Batch {
        let pod = Arc::new(Source::new(
            "pods".into(),
            "/l/ns_web-1_u-1/nginx/0.log".into(),
            FileField::Always,
        ));
        let mut a = Chunk::new(FileId(1), pod);
        a.push(
            "GET / 200",
            1_704_067_200_000_000_001,
            Some(Stream::Stdout),
            10,
        );
        a.push(
            "warn \"x\"\n",
            1_704_067_201_000_000_000,
            Some(Stream::Stderr),
            20,
        );
        a.push(
            "GET /b 404",
            1_704_067_202_000_000_000,
            Some(Stream::Stdout),
            30,
        );
        let plain = Arc::new(Source::new(
            "sys".into(),
            "/var/log/syslog".into(),
            FileField::Auto,
        ));
        let mut b = Chunk::new(FileId(2), plain);
        b.push("kernel: hi", 0, None, 5);
        Batch::of([Arc::new(a), Arc::new(b)])
    }

    fn lines(out: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(out).expect("utf-8");
        assert!(text.ends_with('\n'), "every line ends in a newline");
        text.lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect()
    }

    #[test]
    fn json_lines_payload() {
        let mut out = Vec::new();
        json_lines(&batch(), &mut out);
        let lines = lines(&out);
        assert_eq!(
            lines[0],
            json!({"timestamp": "2024-01-01T00:00:00.000000001Z", "stream": "stdout",
                   "line": "GET / 200", "input": "pods", "file": "/l/ns_web-1_u-1/nginx/0.log",
                   "namespace": "ns", "pod": "web-1", "uid": "u-1", "container": "nginx"})
        );
        assert_eq!(lines[1]["line"], "warn \"x\"\n");
        assert_eq!(
            lines[3],
            json!({"timestamp": "1970-01-01T00:00:00.000000000Z", "line": "kernel: hi",
                   "input": "sys", "file": "/var/log/syslog"})
        );
        assert_eq!(batch().acks(), [(FileId(1), 30), (FileId(2), 5)]);
    }

    /// The `_bulk` API: NDJSON, an action line (`create` with `_index`)
    /// followed by the source document, newline after each including the last.
    #[test]
    fn elasticsearch_bulk_payload() {
        let mut out = Vec::new();
        elasticsearch_bulk(&batch(), "logs-orca", &mut out);
        let lines = lines(&out);
        assert_eq!(lines.len(), 8);
        for pair in lines.chunks(2) {
            assert_eq!(pair[0], json!({"create": {"_index": "logs-orca"}}));
            assert!(pair[1]["@timestamp"].is_string() && pair[1]["message"].is_string());
        }
        assert_eq!(lines[1]["@timestamp"], "2024-01-01T00:00:00.000000001Z");
        assert_eq!(lines[1]["message"], "GET / 200");
        assert_eq!(lines[1]["pod"], "web-1");
    }

    /// Loki's push API: `{"streams":[{"stream":{labels},"values":[["<ns>","<line>"]]}]}`,
    /// timestamps as strings of Unix nanoseconds.
    #[test]
    fn loki_payload() {
        let mut out = Vec::new();
        loki(&batch(), &mut out);
        let body: Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(
            body,
            json!({"streams": [
                {"stream": {"input": "pods", "filename": "/l/ns_web-1_u-1/nginx/0.log", "stream": "stdout",
                            "namespace": "ns", "pod": "web-1", "container": "nginx"},
                 "values": [["1704067200000000001", "GET / 200"], ["1704067202000000000", "GET /b 404"]]},
                {"stream": {"input": "pods", "filename": "/l/ns_web-1_u-1/nginx/0.log", "stream": "stderr",
                            "namespace": "ns", "pod": "web-1", "container": "nginx"},
                 "values": [["1704067201000000000", "warn \"x\"\n"]]},
                {"stream": {"input": "sys", "filename": "/var/log/syslog"},
                 "values": [["0", "kernel: hi"]]}
            ]})
        );
    }
}
