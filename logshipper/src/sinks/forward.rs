//! The Fluentd forward protocol (v1): Forward-mode messages
//! `[tag, [[EventTime, record], ...], {"size": n, "chunk": id}]` in msgpack
//! over TCP; with `require_ack` a batch counts only once the server
//! answered `{"ack": id}`.

use crate::deadletter::base64;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::event::Event;
use crate::random::random_u64;
use crate::sinks::tcp::TcpSink;
use crate::sinks::{Batch, Payload, SinkError};

/// Sends Forward-mode messages.
#[derive(Debug)]
pub struct ForwardSink {
    tcp: TcpSink,
}

/// A new chunk id: base64 of 128 random bits, as the protocol suggests.
pub fn chunk_id() -> String {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&random_u64().to_be_bytes());
    id[8..].copy_from_slice(&random_u64().to_be_bytes());
    base64(&id)
}

impl ForwardSink {
    /// A forward sink over `tcp`.
    pub fn new(tcp: TcpSink) -> Self {
        Self { tcp }
    }

    /// Sends the message and, if it carries a chunk id, waits for its ack.
    pub async fn deliver(&mut self, payload: &Payload) -> Result<(), SinkError> {
        let result = self.exchange(payload).await;
        if result.is_err() {
            self.tcp.reset();
        }
        result
    }

    async fn exchange(&mut self, payload: &Payload) -> Result<(), SinkError> {
        let timeout = self.tcp.timeout();
        let require_ack = !payload.chunk.is_empty();
        let stream = self.tcp.connection().await?;
        let ack = tokio::time::timeout(timeout, async {
            stream.write_all(&payload.bytes).await?;
            stream.flush().await?;
            if !require_ack {
                return Ok(None);
            }
            let mut answer = Vec::new();
            loop {
                if let Some(ack) = decode_ack(&answer)? {
                    return Ok(Some(ack));
                }
                if stream.read_buf(&mut answer).await? == 0 {
                    return Err(SinkError::Protocol(
                        "connection closed before the ack".to_string(),
                    ));
                }
            }
        })
        .await
        .map_err(|_| SinkError::Timeout(timeout))??;
        match ack {
            Some(ack) if ack != payload.chunk => Err(SinkError::Protocol(format!(
                "ack for chunk {ack:?}, expected {:?}",
                payload.chunk
            ))),
            _ => Ok(()),
        }
    }
}

/// Appends a Forward-mode message; `chunk` asks the server for an ack.
pub fn forward_message(batch: &Batch, tag: &str, chunk: Option<&str>, out: &mut Vec<u8>) {
    array(out, 3);
    str(out, tag);
    array(out, batch.len());
    for (chunk_of, event) in batch.events() {
        array(out, 2);
        event_time(out, event);
        let source = &chunk_of.source;
        let pod = source.pod.as_ref();
        let fields = 2
            + usize::from(event.stream.is_some())
            + usize::from(source.file().is_some())
            + if pod.is_some() { 4 } else { 0 }
            + usize::from(source.labels.is_some());
        map(out, fields);
        str(out, "log");
        str(out, chunk_of.line(event));
        if let Some(stream) = event.stream {
            str(out, "stream");
            str(out, stream.as_str());
        }
        str(out, "input");
        str(out, &source.input);
        if let Some(file) = source.file() {
            str(out, "file");
            str(out, file);
        }
        if let Some(pod) = pod {
            for (key, value) in [
                ("namespace", &pod.namespace),
                ("pod", &pod.pod),
                ("uid", &pod.uid),
                ("container", &pod.container),
            ] {
                str(out, key);
                str(out, value);
            }
        }
        if let Some(labels) = &source.labels {
            str(out, "labels");
            map(out, labels.len());
            for (key, value) in labels {
                str(out, key);
                str(out, value);
            }
        }
    }
    map(out, if chunk.is_some() { 2 } else { 1 });
    str(out, "size");
    uint(out, batch.len() as u64);
    if let Some(chunk) = chunk {
        str(out, "chunk");
        str(out, chunk);
    }
}

/// Fluentd's EventTime: msgpack ext type 0, seconds and nanoseconds as big-endian u32.
fn event_time(out: &mut Vec<u8>, event: &Event) {
    let secs = event.timestamp.div_euclid(1_000_000_000);
    let nanos = event.timestamp.rem_euclid(1_000_000_000);
    out.extend_from_slice(&[0xd7, 0x00]);
    out.extend_from_slice(&(secs.clamp(0, i64::from(u32::MAX)) as u32).to_be_bytes());
    out.extend_from_slice(&(nanos as u32).to_be_bytes());
}

fn array(out: &mut Vec<u8>, len: usize) {
    header(out, len, 0x90, 0xdc, 0xdd);
}

fn map(out: &mut Vec<u8>, len: usize) {
    header(out, len, 0x80, 0xde, 0xdf);
}

fn header(out: &mut Vec<u8>, len: usize, fix: u8, b16: u8, b32: u8) {
    if len < 16 {
        out.push(fix | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(b16);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(b32);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

fn str(out: &mut Vec<u8>, s: &str) {
    let len = s.len();
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if let Ok(len) = u8::try_from(len) {
        out.extend_from_slice(&[0xd9, len]);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(0xda);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

fn uint(out: &mut Vec<u8>, n: u64) {
    if n < 128 {
        out.push(n as u8);
    } else if let Ok(n) = u32::try_from(n) {
        out.push(0xce);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// Reads an ack `{"ack": "<chunk>"}` (other keys ignored); `None` while incomplete.
fn decode_ack(bytes: &[u8]) -> Result<Option<String>, SinkError> {
    let header = match bytes.first() {
        None => return Ok(None),
        Some(&b) if b & 0xf0 == 0x80 => Some((usize::from(b & 0x0f), 1)),
        Some(0xde) => bytes
            .get(1..3)
            .map(|b| (usize::from(u16::from_be_bytes([b[0], b[1]])), 3)),
        Some(&b) => return Err(SinkError::Protocol(format!("ack is not a map (0x{b:02x})"))),
    };
    let Some((len, mut at)) = header else {
        return Ok(None);
    };
    let mut ack = None;
    for _ in 0..len {
        let Some(key) = read_str(bytes, &mut at)? else {
            return Ok(None);
        };
        let Some(value) = read_str(bytes, &mut at)? else {
            return Ok(None);
        };
        if key == "ack" {
            ack = Some(value);
        }
    }
    ack.map(Some)
        .ok_or_else(|| SinkError::Protocol("answer without an ack".to_string()))
}

fn read_str(bytes: &[u8], at: &mut usize) -> Result<Option<String>, SinkError> {
    let Some(&first) = bytes.get(*at) else {
        return Ok(None);
    };
    let (len, skip) = match first {
        b if b & 0xe0 == 0xa0 => (usize::from(b & 0x1f), 1),
        0xd9 => match bytes.get(*at + 1) {
            Some(&n) => (usize::from(n), 2),
            None => return Ok(None),
        },
        0xda => match bytes.get(*at + 1..*at + 3) {
            Some(n) => (usize::from(u16::from_be_bytes([n[0], n[1]])), 3),
            None => return Ok(None),
        },
        b => {
            return Err(SinkError::Protocol(format!(
                "ack holds a non-string (0x{b:02x})"
            )));
        }
    };
    let Some(text) = bytes.get(*at + skip..*at + skip + len) else {
        return Ok(None);
    };
    *at += skip + len;
    Ok(Some(String::from_utf8_lossy(text).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileField;
    use crate::event::{Chunk, FileId, Source};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    /// The record of the only event of a message for a file at `path`.
    fn record(path: &str, file_field: FileField) -> Vec<(String, rmpv::Value)> {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let source = Source::with_labels("pods".into(), path.into(), file_field, |_| Some(labels));
        let mut chunk = Chunk::new(FileId(1), Arc::new(source));
        chunk.push("hello", 1_700_000_000_000_000_000, None, 6);
        let mut out = Vec::new();
        forward_message(&Batch::of([Arc::new(chunk)]), "t", None, &mut out);
        let message = rmpv::decode::read_value(&mut out.as_slice()).expect("msgpack");
        let entry = message[1][0].as_array().expect("entry").clone();
        entry[1]
            .as_map()
            .expect("record")
            .iter()
            .map(|(k, v)| (k.as_str().expect("string key").to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn records_carry_pod_fields_labels_and_the_file_as_configured() {
        let pod = record("/l/ns_p_u/c/0.log", FileField::Auto);
        let keys: Vec<&str> = pod.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "log",
                "input",
                "namespace",
                "pod",
                "uid",
                "container",
                "labels"
            ]
        );
        let labels = &pod.last().expect("labels").1;
        assert_eq!(labels["app"].as_str(), Some("web"));

        let with_file = record("/l/ns_p_u/c/0.log", FileField::Always);
        assert!(
            with_file
                .iter()
                .any(|(k, v)| k == "file" && v.as_str() == Some("/l/ns_p_u/c/0.log"))
        );
        let plain = record("/var/log/x", FileField::Auto);
        let keys: Vec<&str> = plain.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["log", "input", "file"]);
    }
}
