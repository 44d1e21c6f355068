//! RFC 5424 syslog over TCP with octet-counting framing (RFC 6587):
//! `<len> <PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [SD] MSG`, one frame per event.

use crate::event::Stream;
use crate::sinks::Batch;
use crate::time::format_rfc3339;

/// The SD-ID of the pod fields: `orca` under the documentation example
/// enterprise number of RFC 5612, until Orca has its own.
const SD_ID: &str = "orca@32473";

/// How events become syslog frames; the transport is a plain TCP sink,
/// since syslog over TCP has no acknowledgement beyond the write.
#[derive(Debug, Clone)]
pub struct SyslogFormat {
    facility: u8,
    hostname: String,
}

impl SyslogFormat {
    /// Frames for `facility` (0-23) from `hostname`.
    pub fn new(facility: u8, hostname: String) -> Self {
        Self {
            facility,
            hostname: printable(&hostname, 255),
        }
    }

    /// Appends one octet-counted frame per event.
    pub fn encode(&self, batch: &Batch, out: &mut Vec<u8>) {
        let mut message = Vec::new();
        for (chunk, event) in batch.events() {
            message.clear();
            // stderr is not necessarily an error, but it is what operators
            // filter on; everything else is informational.
            let severity = if event.stream == Some(Stream::Stderr) {
                3
            } else {
                6
            };
            let pri = u32::from(self.facility) * 8 + severity;
            message.extend_from_slice(format!("<{pri}>1 ").as_bytes());
            format_rfc3339(event.timestamp, 6, &mut message);
            let source = &chunk.source;
            let app = source.pod.as_ref().map_or_else(
                || printable(&source.input, 48),
                |p| printable(&p.container, 48),
            );
            let msgid = event.stream.map_or("-", Stream::as_str);
            message.extend_from_slice(format!(" {} {app} - {msgid} ", self.hostname).as_bytes());
            match &source.pod {
                Some(pod) => {
                    message.push(b'[');
                    message.extend_from_slice(SD_ID.as_bytes());
                    for (name, value) in [
                        ("namespace", &pod.namespace),
                        ("pod", &pod.pod),
                        ("uid", &pod.uid),
                        ("container", &pod.container),
                    ] {
                        message.extend_from_slice(format!(" {name}=\"").as_bytes());
                        param_value(value, &mut message);
                        message.push(b'"');
                    }
                    message.push(b']');
                }
                None => message.push(b'-'),
            }
            message.push(b' ');
            message.extend_from_slice(chunk.line(event).as_bytes());
            out.extend_from_slice(format!("{} ", message.len()).as_bytes());
            out.extend_from_slice(&message);
        }
    }
}

/// Header fields are printable US-ASCII without spaces, `-` when empty.
fn printable(value: &str, max: usize) -> String {
    let clean: String = value
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if clean.is_empty() {
        "-".to_string()
    } else {
        clean
    }
}

/// PARAM-VALUE escapes `"`, `\` and `]` with a backslash.
fn param_value(value: &str, out: &mut Vec<u8>) {
    for b in value.bytes() {
        if matches!(b, b'"' | b'\\' | b']') {
            out.push(b'\\');
        }
        out.push(b);
    }
}

/// The machine's host name, `-` if it cannot be read.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "-".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileField;
    use crate::event::{Chunk, FileId, Source};
    use std::sync::Arc;

    /// Splits octet-counted frames, checking each count.
    fn frames(payload: &[u8]) -> Vec<String> {
        let mut rest = payload;
        let mut out = Vec::new();
        while !rest.is_empty() {
            let space = rest.iter().position(|&b| b == b' ').expect("MSG-LEN SP");
            let len: usize = std::str::from_utf8(&rest[..space])
                .expect("digits")
                .parse()
                .expect("a length");
            let frame = &rest[space + 1..space + 1 + len];
            out.push(String::from_utf8(frame.to_vec()).expect("utf-8"));
            rest = &rest[space + 1 + len..];
        }
        out
    }

    #[test]
    fn rfc5424_frames() {
        let sink = SyslogFormat::new(16, "node 1".into());
        let pod = Arc::new(Source::new(
            "pods".into(),
            "/l/ns_web_u-1/ng]x/0.log".into(),
            FileField::Auto,
        ));
        let mut a = Chunk::new(FileId(1), pod);
        a.push(
            "GET / 200 é",
            1_704_067_200_123_456_789,
            Some(Stream::Stdout),
            1,
        );
        a.push(
            "multi\nline",
            1_704_067_200_000_000_000,
            Some(Stream::Stderr),
            2,
        );
        let mut b = Chunk::new(
            FileId(2),
            Arc::new(Source::new(
                "sys".into(),
                "/var/log/x".into(),
                FileField::Auto,
            )),
        );
        b.push("plain", 0, None, 3);
        let mut out = Vec::new();
        sink.encode(&Batch::of([Arc::new(a), Arc::new(b)]), &mut out);
        assert_eq!(
            frames(&out),
            [
                r#"<134>1 2024-01-01T00:00:00.123456Z node1 ng]x - stdout [orca@32473 namespace="ns" pod="web" uid="u-1" container="ng\]x"] GET / 200 é"#,
                "<131>1 2024-01-01T00:00:00.000000Z node1 ng]x - stderr [orca@32473 namespace=\"ns\" pod=\"web\" uid=\"u-1\" container=\"ng\\]x\"] multi\nline",
                "<134>1 1970-01-01T00:00:00.000000Z node1 sys - - - plain",
            ]
        );
        // RFC 5424's header grammar: PRI VERSION SP TIMESTAMP SP HOSTNAME SP
        // APP-NAME SP PROCID SP MSGID SP STRUCTURED-DATA.
        let header = regex::Regex::new(
            r#"^<([0-9]|[1-9][0-9]|1[0-8][0-9]|19[01])>1 \d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z [!-~]{1,255} [!-~]{1,48} [!-~]{1,128} [!-~]{1,32} (-|\[[^ =\]"]+( [^ =\]"]+="([^"\\\]]|\\.)*")*\])( |$)"#,
        )
        .expect("regex");
        for frame in frames(&out) {
            assert!(header.is_match(&frame), "{frame}");
        }
    }
}
