//! Dead-letter files: batches an output gave up on, kept as they would have
//! been sent and with the reason, one JSON object per line:
//!
//! `{"time":"2026-11-25T10:00:00.000Z","output":"es","reason":"HTTP 400: ...","events":1000,"payload":"..."}`
//!
//! `payload` is the request body as text (uncompressed, for a gzip
//! output); a binary one (the forward protocol's msgpack) is in
//! `payload_base64` instead.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use crate::time::{format_rfc3339, now_nanos};

/// Where an output's dead letters go when `dead_letter_path` is not set:
/// `<checkpoint_dir>/dead-letter/<name>.jsonl`, the name made safe for a file.
pub fn default_path(checkpoint_dir: &Path, output: &str) -> PathBuf {
    let name: String = output
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    checkpoint_dir
        .join("dead-letter")
        .join(format!("{name}.jsonl"))
}

/// Appends one batch to the dead-letter file at `path` (creating it and
/// its directory) and syncs it: once this returns, the batch is safe and
/// may be acknowledged.
pub fn append(
    path: &Path,
    output: &str,
    reason: &str,
    events: u64,
    payload: &[u8],
) -> io::Result<()> {
    let mut time = Vec::with_capacity(30);
    format_rfc3339(now_nanos(), 3, &mut time);
    let mut record = serde_json::json!({
        "time": String::from_utf8_lossy(&time),
        "output": output,
        "reason": reason,
        "events": events,
    });
    match std::str::from_utf8(payload) {
        Ok(text) => record["payload"] = text.into(),
        Err(_) => record["payload_base64"] = base64(payload).into(),
    }
    let mut line = serde_json::to_vec(&record).map_err(io::Error::other)?;
    line.push(b'\n');
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(&line)?;
    file.sync_data()?;
    // A new file's directory entry must be durable too.
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Standard base64 with padding (RFC 4648), for the dead-letter file's
/// binary payloads and the forward output's chunk ids.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (raw, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), encoded);
        }
    }

    #[test]
    fn appends_records_with_the_reason_and_the_payload() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = default_path(dir.path(), "es/main");
        assert!(path.ends_with("dead-letter/es_main.jsonl"));
        append(
            &path,
            "es/main",
            "HTTP 400: bad",
            2,
            b"{\"a\":1}\n{\"a\":2}\n",
        )
        .expect("appends");
        append(&path, "es/main", "HTTP 400: bad", 1, &[0x93, 0xff]).expect("appends");
        let text = std::fs::read_to_string(&path).expect("reads");
        let records: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0]["reason"], "HTTP 400: bad");
        assert_eq!(records[0]["events"], 2);
        assert_eq!(records[0]["payload"], "{\"a\":1}\n{\"a\":2}\n");
        assert_eq!(records[1]["payload_base64"], "k/8=");
    }
}
