//! A TCP connection that reconnects on failure: the JSON-lines TCP sink,
//! and the transport of the forward and syslog sinks.

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
}

impl TcpSink {
    /// A sink connecting to `address` (`host:port`) on first delivery.
    pub fn new(address: String, timeout: Duration) -> Self {
        Self {
            address,
            timeout,
            stream: None,
        }
    }

    /// Writes and flushes `payload`; drops the connection on any error so
    /// the retry starts on a fresh one.
    pub async fn deliver(&mut self, payload: &[u8]) -> Result<(), SinkError> {
        let result = self.write(payload).await;
        if result.is_err() {
            self.stream = None;
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
                _ => self.stream = None,
            }
        }
        let stream = match self.stream.take() {
            Some(stream) => stream,
            None => {
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
    }

    /// The answer timeout.
    pub const fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn write(&mut self, payload: &[u8]) -> Result<(), SinkError> {
        let timeout = self.timeout;
        let stream = self.connection().await?;
        tokio::time::timeout(timeout, async {
            stream.write_all(payload).await?;
            stream.flush().await
        })
        .await
        .map_err(|_| SinkError::Timeout(timeout))??;
        Ok(())
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

    #[tokio::test]
    async fn refused_connection_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let mut sink = TcpSink::new(address, Duration::from_secs(5));
        assert!(matches!(sink.deliver(b"x\n").await, Err(SinkError::Io(_))));
    }
}
