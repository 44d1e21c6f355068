//! A TCP connection that reconnects on failure: the JSON-lines TCP sink,
//! and the transport of the forward and syslog sinks.
//!
//! A payload whose write timed out half-way is never left cut on its
//! connection: closing it there would leave the receiver a fragment of a
//! record (a JSON line without its end). The connection is kept and the
//! rest of the payload is written first on the next attempt; when that
//! attempt is the same payload (a retry), the payload is then complete
//! and nothing is sent twice.

use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::sinks::SinkError;

/// Writes payloads to `address`, acknowledged once written and flushed.
#[derive(Debug)]
pub struct TcpSink {
    address: String,
    timeout: Duration,
    stream: Option<TcpStream>,
    /// The unwritten end of a payload whose write timed out on `stream`.
    owed: Vec<u8>,
}

impl TcpSink {
    /// A sink connecting to `address` (`host:port`) on first delivery.
    pub fn new(address: String, timeout: Duration) -> Self {
        Self {
            address,
            timeout,
            stream: None,
            owed: Vec::new(),
        }
    }

    /// Writes and flushes `payload`. A timeout keeps the connection and
    /// what is still owed of the payload; any other error drops the
    /// connection, so the retry starts on a fresh one.
    pub async fn deliver(&mut self, payload: &[u8]) -> Result<(), SinkError> {
        let result = self.write(payload).await;
        if matches!(result, Err(ref err) if !matches!(err, SinkError::Timeout(_))) {
            self.reset();
        }
        result
    }

    /// The connection, opened if needed; for protocols that read an answer.
    pub async fn connection(&mut self) -> Result<&mut TcpStream, SinkError> {
        // A peer that closed while the connection sat idle would still take
        // one write into the kernel's buffer and lose it; ask first.
        if let Some(stream) = &self.stream {
            let mut probe = [0u8; 1];
            match stream.try_read(&mut probe) {
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                _ => self.reset(),
            }
        }
        let stream = match self.stream.take() {
            Some(stream) => stream,
            None => {
                // Nothing is owed on a new connection.
                self.owed.clear();
                let stream = tokio::time::timeout(self.timeout, TcpStream::connect(&self.address))
                    .await
                    .map_err(|_| SinkError::Timeout(self.timeout))??;
                stream.set_nodelay(true)?;
                stream
            }
        };
        Ok(self.stream.insert(stream))
    }

    /// Forgets the connection after a failure seen by the caller.
    pub fn reset(&mut self) {
        self.stream = None;
        self.owed.clear();
    }

    /// The answer timeout.
    pub const fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn write(&mut self, payload: &[u8]) -> Result<(), SinkError> {
        let timeout = self.timeout;
        self.connection().await?;
        let owed = std::mem::take(&mut self.owed);
        // The same payload again after a timeout: only its end is owed.
        let rest: &[u8] = if !owed.is_empty() && payload.ends_with(&owed) {
            &[]
        } else {
            payload
        };
        let Some(stream) = self.stream.as_mut() else {
            return Err(std::io::Error::from(std::io::ErrorKind::NotConnected).into());
        };
        let mut done = [0usize; 2];
        let sent = tokio::time::timeout(timeout, async {
            for (part, done) in [&owed[..], rest].into_iter().zip(done.iter_mut()) {
                while *done < part.len() {
                    let n = stream.write(&part[*done..]).await?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::WriteZero.into());
                    }
                    *done += n;
                }
            }
            stream.flush().await
        })
        .await;
        match sent {
            Ok(result) => Ok(result?),
            Err(_) => {
                // Whatever was started and not finished is owed; a payload
                // not started at all is not: the retry sends it whole.
                let [owed_done, rest_done] = done;
                if owed_done < owed.len() {
                    self.owed = owed[owed_done..].to_vec();
                } else if rest_done > 0 {
                    self.owed = rest[rest_done..].to_vec();
                }
                Err(SinkError::Timeout(timeout))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn reconnects_after_the_peer_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("addr").to_string();
        let mut sink = TcpSink::new(address, Duration::from_secs(5));
        sink.deliver(b"one\n").await.expect("delivers");
        let (mut first, _) = listener.accept().await.expect("accepts");
        let mut got = vec![0u8; 4];
        first.read_exact(&mut got).await.expect("reads");
        assert_eq!(got, b"one\n");
        drop(first);
        // Waits for the FIN to reach the sink's socket, which is the case
        // under test: a peer gone while the connection sat idle.
        sink.stream
            .as_ref()
            .expect("connected")
            .readable()
            .await
            .expect("readable");
        let accept = tokio::spawn(async move {
            let (mut second, _) = listener.accept().await.expect("accepts again");
            let mut got = Vec::new();
            second.read_to_end(&mut got).await.expect("reads");
            got
        });
        sink.deliver(b"two\n")
            .await
            .expect("delivers on a new connection");
        drop(sink);
        assert_eq!(accept.await.expect("joins"), b"two\n");
    }

    /// A receiver that stops reading makes a large write time out half-way;
    /// it must never see a record cut short, and the retry completes the
    /// payload rather than sending it again.
    #[tokio::test]
    async fn a_write_that_times_out_leaves_no_fragment() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("addr").to_string();
        let mut sink = TcpSink::new(address, Duration::from_millis(200));
        let mut payload = Vec::new();
        let mut records = 0;
        // Far beyond both sockets' buffers, so the write must stall.
        while payload.len() < 16 << 20 {
            payload.extend_from_slice(
                format!(
                    "{{\"seq\":{records},\"pad\":\"{}\"}}\n",
                    "x".repeat(records % 50)
                )
                .as_bytes(),
            );
            records += 1;
        }
        let accepted = tokio::spawn(async move { listener.accept().await.expect("accepts").0 });
        let err = sink
            .deliver(&payload)
            .await
            .expect_err("the receiver does not read");
        assert!(matches!(err, SinkError::Timeout(_)), "{err}");
        assert!(!sink.owed.is_empty(), "the write stopped half-way");
        let mut receiver = accepted.await.expect("joins");
        let read = tokio::spawn(async move {
            let mut got = Vec::new();
            receiver.read_to_end(&mut got).await.expect("reads");
            got
        });
        sink.deliver(&payload)
            .await
            .expect("the retry completes the payload");
        drop(sink);
        let got = read.await.expect("joins");
        assert!(
            got.ends_with(b"\n"),
            "the connection ends with a whole record"
        );
        assert_eq!(got, payload, "each record once, none cut");
    }

    #[tokio::test]
    async fn refused_connection_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let mut sink = TcpSink::new(address, Duration::from_secs(5));
        assert!(matches!(sink.deliver(b"x\n").await, Err(SinkError::Io(_))));
    }
}
