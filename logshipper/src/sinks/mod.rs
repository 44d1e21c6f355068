//! Destinations: each encodes a batch into its payload and delivers it,
//! returning only once the destination acknowledged it.

pub mod file;
pub mod forward;
pub mod http;
pub mod json;
pub mod syslog;
pub mod tcp;

use std::sync::Arc;

use crate::config::{OutputConfig, OutputType};
use crate::event::{Chunk, Event, FileId};

/// Why one delivery attempt failed; every failure is retried.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Connecting, writing, reading or syncing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The destination did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The HTTP server answered with a status other than 2xx.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// The destination answered something that is not an acknowledgement.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The output's settings cannot work (reported at start-up).
    #[error("{0}")]
    Config(String),
}

/// A run of events within one chunk.
#[derive(Debug, Clone)]
pub struct Slice {
    /// The chunk.
    pub chunk: Arc<Chunk>,
    /// Index of the first event.
    pub from: usize,
    /// Index past the last event.
    pub to: usize,
}

/// Events delivered together.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The events, in the order they were read.
    pub slices: Vec<Slice>,
}

impl Batch {
    /// A batch of whole chunks, for tests and benches.
    pub fn of(chunks: impl IntoIterator<Item = Arc<Chunk>>) -> Self {
        Self {
            slices: chunks
                .into_iter()
                .map(|chunk| Slice {
                    to: chunk.events.len(),
                    chunk,
                    from: 0,
                })
                .collect(),
        }
    }

    /// Every event with its chunk.
    pub fn events(&self) -> impl Iterator<Item = (&Chunk, &Event)> {
        self.slices
            .iter()
            .flat_map(|s| s.chunk.events[s.from..s.to].iter().map(move |e| (&*s.chunk, e)))
    }

    /// How many events.
    pub fn len(&self) -> usize {
        self.slices.iter().map(|s| s.to - s.from).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The highest commit offset per file: what delivering the batch acknowledges.
    pub fn acks(&self) -> Vec<(FileId, u64)> {
        let mut acks: Vec<(FileId, u64)> = Vec::new();
        for slice in &self.slices {
            if let Some(last) = slice.chunk.events[slice.from..slice.to].last() {
                match acks.iter_mut().find(|(id, _)| *id == slice.chunk.file) {
                    Some(ack) => ack.1 = ack.1.max(last.commit),
                    None => acks.push((slice.chunk.file, last.commit)),
                }
            }
        }
        acks
    }
}

/// A configured destination.
#[derive(Debug)]
pub enum Sink {
    /// JSON lines on standard output.
    Stdout(file::StdoutSink),
    /// JSON lines in a file.
    File(file::FileSink),
    /// JSON lines over TCP.
    Tcp(tcp::TcpSink),
    /// HTTP POST.
    Http(http::HttpSink),
    /// Fluentd forward protocol.
    Forward(forward::ForwardSink),
    /// RFC 5424 syslog over TCP.
    Syslog(syslog::SyslogSink),
}

impl Sink {
    /// The sink `config` describes (validated already).
    pub fn new(config: &OutputConfig) -> Result<Self, SinkError> {
        let address = || config.address.clone().unwrap_or_default();
        let timeout = config.timeout.get();
        Ok(match config.kind {
            OutputType::Stdout => Self::Stdout(file::StdoutSink::default()),
            OutputType::File => Self::File(file::FileSink::new(
                config.path.clone().unwrap_or_default(),
            )),
            OutputType::Tcp => Self::Tcp(tcp::TcpSink::new(address(), timeout)),
            OutputType::Http => Self::Http(http::HttpSink::new(config)?),
            OutputType::Forward => Self::Forward(forward::ForwardSink::new(
                tcp::TcpSink::new(address(), timeout),
                config.tag.clone().unwrap_or_else(|| "orca".to_string()),
                config.require_ack.unwrap_or(true),
            )),
            OutputType::Syslog => Self::Syslog(syslog::SyslogSink::new(
                tcp::TcpSink::new(address(), timeout),
                config.facility.unwrap_or(1),
                config.hostname.clone().unwrap_or_else(syslog::host_name),
            )),
        })
    }

    /// Appends `batch`'s payload to `out`. Done once per batch: retries
    /// resend the same bytes.
    pub fn encode(&mut self, batch: &Batch, out: &mut Vec<u8>) {
        match self {
            Self::Stdout(_) | Self::File(_) | Self::Tcp(_) => json::json_lines(batch, out),
            Self::Http(sink) => sink.encode(batch, out),
            Self::Forward(sink) => sink.encode(batch, out),
            Self::Syslog(sink) => sink.encode(batch, out),
        }
    }

    /// Delivers an encoded payload; `Ok` once the destination acknowledged it.
    pub async fn deliver(&mut self, payload: &[u8]) -> Result<(), SinkError> {
        match self {
            Self::Stdout(sink) => sink.deliver(payload).await,
            Self::File(sink) => sink.deliver(payload).await,
            Self::Tcp(sink) => sink.deliver(payload).await,
            Self::Http(sink) => sink.deliver(payload).await,
            Self::Forward(sink) => sink.deliver(payload).await,
            Self::Syslog(sink) => sink.deliver(payload).await,
        }
    }
}
