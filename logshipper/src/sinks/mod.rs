//! Destinations: each encodes a batch into its payload and delivers it,
//! returning only once the destination acknowledged it.

pub mod file;
pub mod forward;
pub mod http;
pub mod json;
pub mod syslog;
pub mod tcp;

use std::io::Write as _;
use std::sync::Arc;

use crate::config::{HttpFormat, OutputConfig, OutputType};
use crate::event::{Chunk, Event, FileId};

/// Why one delivery attempt failed; see [`SinkError::is_permanent`] for
/// which are retried.
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
    /// The destination refused records for good (an Elasticsearch item
    /// rejected with a 4xx status other than 408 and 429).
    #[error("records rejected: {0}")]
    Rejected(String),
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The output's settings cannot work (reported at start-up).
    #[error("{0}")]
    Config(String),
}

impl SinkError {
    /// Whether sending the same batch again cannot succeed: a 4xx answer
    /// other than 408 (timeout) and 429 (too many requests), or records
    /// the destination rejected. Everything else may pass on a retry.
    pub const fn is_permanent(&self) -> bool {
        match self {
            Self::Status { status, .. } => {
                *status >= 400 && *status < 500 && *status != 408 && *status != 429
            }
            Self::Rejected(_) => true,
            _ => false,
        }
    }
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
    /// Offsets of events the output skipped (its queue was full), done
    /// with once this batch is.
    pub skipped: Vec<(FileId, u64)>,
    /// How many events were skipped.
    pub skipped_events: u64,
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
            ..Self::default()
        }
    }

    /// When the oldest event of the batch was read.
    pub fn read_at(&self) -> Option<std::time::Instant> {
        self.slices.iter().map(|s| s.chunk.read_at).min()
    }

    /// Every event with its chunk.
    pub fn events(&self) -> impl Iterator<Item = (&Chunk, &Event)> {
        self.slices.iter().flat_map(|s| {
            s.chunk.events[s.from..s.to]
                .iter()
                .map(move |e| (&*s.chunk, e))
        })
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
        let sent = self.slices.iter().filter_map(|slice| {
            let last = slice.chunk.events[slice.from..slice.to].last()?;
            Some((slice.chunk.file, last.commit))
        });
        for (file, commit) in sent.chain(self.skipped.iter().copied()) {
            match acks.iter_mut().find(|(id, _)| *id == file) {
                Some(ack) => ack.1 = ack.1.max(commit),
                None => acks.push((file, commit)),
            }
        }
        acks
    }
}

/// A batch encoded for its output: the bytes sent, and for the forward
/// protocol the chunk id the server's ack must name.
#[derive(Debug, Default)]
pub struct Payload {
    /// What is sent.
    pub bytes: Vec<u8>,
    /// The forward chunk id awaited in the ack; empty when none is.
    pub chunk: String,
    /// The uncompressed body of a gzip output, kept for reuse.
    pub scratch: Vec<u8>,
}

/// Turns batches into an output's payload. Owns no connection, so it can
/// encode the next batch on another thread while the last one is sent.
#[derive(Debug, Clone)]
pub enum Encoder {
    /// One JSON object per line (stdout, file, tcp, http `json_lines`).
    JsonLines,
    /// Elasticsearch `_bulk` NDJSON into this index.
    ElasticsearchBulk(String),
    /// Loki push JSON.
    Loki,
    /// Fluentd forward messages.
    Forward {
        /// The tag of every event.
        tag: String,
        /// Whether to ask for an ack.
        require_ack: bool,
    },
    /// RFC 5424 frames.
    Syslog(syslog::SyslogFormat),
    /// Another encoder's body, gzip-compressed.
    Gzip(Box<Encoder>),
}

impl Encoder {
    /// The encoder `config` needs (validated already).
    pub fn new(config: &OutputConfig) -> Self {
        let encoder = Self::uncompressed(config);
        if config.gzip {
            Self::Gzip(Box::new(encoder))
        } else {
            encoder
        }
    }

    fn uncompressed(config: &OutputConfig) -> Self {
        match (config.kind, config.format) {
            (OutputType::Http, Some(HttpFormat::ElasticsearchBulk)) => Self::ElasticsearchBulk(
                config
                    .index
                    .clone()
                    .unwrap_or_else(|| "orca-logs".to_string()),
            ),
            (OutputType::Http, Some(HttpFormat::Loki)) => Self::Loki,
            (OutputType::Forward, _) => Self::Forward {
                tag: config.tag.clone().unwrap_or_else(|| "orca".to_string()),
                require_ack: config.require_ack.unwrap_or(true),
            },
            (OutputType::Syslog, _) => Self::Syslog(syslog::SyslogFormat::new(
                config.facility.unwrap_or(1),
                config.hostname.clone().unwrap_or_else(syslog::host_name),
            )),
            _ => Self::JsonLines,
        }
    }

    /// Encodes `batch` into `out` (cleared first). Done once per batch:
    /// retries resend the same bytes.
    pub fn encode(&self, batch: &Batch, out: &mut Payload) {
        out.bytes.clear();
        out.chunk.clear();
        match self {
            Self::JsonLines => json::json_lines(batch, &mut out.bytes),
            Self::ElasticsearchBulk(index) => {
                json::elasticsearch_bulk(batch, index, &mut out.bytes)
            }
            Self::Loki => json::loki(batch, &mut out.bytes),
            Self::Forward { tag, require_ack } => {
                if *require_ack {
                    out.chunk = forward::chunk_id();
                }
                let chunk = (!out.chunk.is_empty()).then_some(out.chunk.as_str());
                forward::forward_message(batch, tag, chunk, &mut out.bytes);
            }
            Self::Syslog(format) => format.encode(batch, &mut out.bytes),
            Self::Gzip(inner) => {
                let mut body = Payload {
                    bytes: std::mem::take(&mut out.scratch),
                    ..Payload::default()
                };
                inner.encode(batch, &mut body);
                // The fast level: log lines compress well even so, and the
                // encoder runs once per batch on the shipper's own CPU.
                let mut gzip = flate2::write::GzEncoder::new(
                    std::mem::take(&mut out.bytes),
                    flate2::Compression::fast(),
                );
                // Writing into a Vec cannot fail.
                gzip.write_all(&body.bytes).expect("gzip into memory");
                out.bytes = gzip.finish().expect("gzip into memory");
                out.scratch = body.bytes;
            }
        }
    }
}

/// A configured destination's connection (or file).
#[derive(Debug)]
pub enum Sink {
    /// Standard output.
    Stdout(file::StdoutSink),
    /// A file.
    File(file::FileSink),
    /// A TCP connection (the tcp and syslog outputs).
    Tcp(tcp::TcpSink),
    /// HTTP POST.
    Http(http::HttpSink),
    /// Fluentd forward protocol.
    Forward(forward::ForwardSink),
}

impl Sink {
    /// The sink `config` describes (validated already).
    pub fn new(config: &OutputConfig) -> Result<Self, SinkError> {
        let address = || config.address.clone().unwrap_or_default();
        let timeout = config.timeout.get();
        Ok(match config.kind {
            OutputType::Stdout => Self::Stdout(file::StdoutSink),
            OutputType::File => {
                Self::File(file::FileSink::new(config.path.clone().unwrap_or_default()))
            }
            OutputType::Tcp | OutputType::Syslog => {
                Self::Tcp(tcp::TcpSink::new(address(), timeout))
            }
            OutputType::Http => Self::Http(http::HttpSink::new(config)?),
            OutputType::Forward => Self::Forward(forward::ForwardSink::new(tcp::TcpSink::new(
                address(),
                timeout,
            ))),
        })
    }

    /// Delivers an encoded payload; `Ok` once the destination acknowledged it.
    pub async fn deliver(&mut self, payload: &Payload) -> Result<(), SinkError> {
        match self {
            Self::Stdout(sink) => sink.deliver(&payload.bytes).await,
            Self::File(sink) => sink.deliver(&payload.bytes).await,
            Self::Tcp(sink) => sink.deliver(&payload.bytes).await,
            Self::Http(sink) => sink.deliver(&payload.bytes).await,
            Self::Forward(sink) => sink.deliver(payload).await,
        }
    }
}
