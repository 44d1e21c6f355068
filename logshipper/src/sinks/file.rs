//! Standard output and file sinks: JSON lines, acknowledged after a flush
//! (stdout) or an fsync (file).

use std::path::PathBuf;

use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use crate::sinks::SinkError;

/// Writes payloads to standard output.
#[derive(Debug, Default)]
pub struct StdoutSink;

impl StdoutSink {
    /// Writes and flushes; a pipe cannot be synced, so the flush is the ack.
    pub async fn deliver(&mut self, payload: &[u8]) -> Result<(), SinkError> {
        let mut stdout = tokio::io::stdout();
        stdout.write_all(payload).await?;
        stdout.flush().await?;
        Ok(())
    }
}

/// Appends payloads to a file.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    file: Option<File>,
}

impl FileSink {
    /// A sink appending to `path` (opened on first delivery).
    pub fn new(path: PathBuf) -> Self {
        Self { path, file: None }
    }

    /// Appends and fsyncs; only then is the batch acknowledged.
    pub async fn deliver(&mut self, payload: &[u8]) -> Result<(), SinkError> {
        let result = self.append(payload).await;
        if result.is_err() {
            // Reopening on the next attempt also recovers from the file
            // having been moved away or its disk remounted.
            self.file = None;
        }
        result
    }

    async fn append(&mut self, payload: &[u8]) -> Result<(), SinkError> {
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(open(&self.path).await?),
        };
        file.write_all(payload).await?;
        file.flush().await?;
        file.sync_data().await?;
        Ok(())
    }
}

/// Opens for appending. A line left half-written by a crash is ended first,
/// so the next line starts on its own; that batch was never acknowledged
/// and is delivered again whole.
async fn open(path: &std::path::Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .await?;
    let len = file.metadata().await?.len();
    if len > 0 {
        file.seek(std::io::SeekFrom::Start(len - 1)).await?;
        let mut last = [0u8; 1];
        file.read_exact(&mut last).await?;
        if last[0] != b'\n' {
            file.write_all(b"\n").await?;
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appends_and_ends_a_torn_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("out/shipped.jsonl");
        let mut sink = FileSink::new(path.clone());
        sink.deliver(b"{\"a\":1}\n").await.expect("delivers");
        drop(sink);
        let mut torn = std::fs::read(&path).expect("reads");
        torn.extend_from_slice(b"{\"b\":");
        std::fs::write(&path, &torn).expect("writes");
        let mut sink = FileSink::new(path.clone());
        sink.deliver(b"{\"b\":2}\n").await.expect("delivers");
        assert_eq!(
            std::fs::read_to_string(&path).expect("reads"),
            "{\"a\":1}\n{\"b\":\n{\"b\":2}\n"
        );
    }
}
