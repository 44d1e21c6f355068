//! The responder's sockets: queries over UDP and TCP, cluster names
//! answered from the [`Zone`], every other name forwarded to the upstream
//! resolver over the transport the client used.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use crate::message::{self, Parsed, Query, Response, rcode};
use crate::zone::Zone;
use orca_core::telemetry::Metrics;

/// Forwarded UDP queries in flight at once; past it a query gets SERVFAIL
/// at once rather than queueing without bound.
const MAX_FORWARDS: usize = 1024;
/// TCP connections served at once.
const MAX_TCP: usize = 256;
/// A TCP connection with no query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The responder's counters, under `orca_dns_`.
#[derive(Clone)]
pub struct DnsMetrics {
    queries: Family<ResultLabels, Counter>,
    forwarded: Counter,
    upstream_failures: Counter,
}

impl DnsMetrics {
    /// Registers the counters in `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let this = DnsMetrics {
            queries: Family::default(),
            forwarded: Counter::default(),
            upstream_failures: Counter::default(),
        };
        let m = metrics.registry_with_prefix("orca_dns");
        m.register(
            "queries",
            "Queries answered, by result (forwarded for those the upstream answered)",
            this.queries.clone(),
        );
        m.register(
            "forwarded",
            "Queries for names outside the cluster domain sent to the upstream resolver",
            this.forwarded.clone(),
        );
        m.register(
            "upstream_failures",
            "Forwarded queries the upstream did not answer in time, or at all (answered SERVFAIL)",
            this.upstream_failures.clone(),
        );
        this
    }

    fn count(&self, result: &'static str) {
        self.queries.get_or_create(&ResultLabels { result }).inc();
    }
}

fn result_name(code: u16) -> &'static str {
    match code {
        rcode::NOERROR => "noerror",
        rcode::FORMERR => "formerr",
        rcode::SERVFAIL => "servfail",
        rcode::NXDOMAIN => "nxdomain",
        rcode::NOTIMP => "notimp",
        rcode::REFUSED => "refused",
        rcode::BADVERS => "badvers",
        _ => "other",
    }
}

/// What to do with one received message.
enum Action {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Ask the upstream.
    Forward(Query),
    /// Say nothing.
    Ignore,
}

/// What answering needs: the zone, the upstream, the counters.
pub struct Responder {
    zone: Zone,
    upstream: SocketAddr,
    timeout: Duration,
    metrics: DnsMetrics,
    forwards: Arc<Semaphore>,
}

impl Responder {
    /// A responder for `zone` that forwards other names to `upstream`,
    /// waiting `timeout` for it.
    pub fn new(zone: Zone, upstream: SocketAddr, timeout: Duration, metrics: DnsMetrics) -> Self {
        Responder {
            zone,
            upstream,
            timeout,
            metrics,
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
        }
    }

    /// Decides on one message: over UDP an answer must fit the client's
    /// size, over TCP anything up to 64 KiB does.
    fn decide(&self, msg: &[u8], tcp: bool) -> Action {
        let query = match message::parse(msg) {
            None | Some(Parsed::NotAQuery) => return Action::Ignore,
            Some(Parsed::Malformed { id, error }) => {
                tracing::debug!(%error, "malformed query");
                self.metrics.count("formerr");
                return Action::Reply(message::bare_answer(id, rcode::FORMERR));
            }
            Some(Parsed::Query(q)) => q,
        };
        let limit = if tcp {
            usize::from(u16::MAX)
        } else {
            query.udp_limit()
        };
        let local = |code: u16| {
            self.metrics.count(result_name(code));
            Action::Reply(Response::empty(code).encode(&query, limit))
        };
        if query.edns.is_some_and(|e| e.version > 0) {
            return local(rcode::BADVERS);
        }
        if query.opcode != 0 {
            return local(rcode::NOTIMP);
        }
        match self.zone.answer(&query) {
            Some(_) if !query.is_internet() => local(rcode::NOTIMP),
            Some(response) => {
                self.metrics.count(result_name(response.rcode));
                Action::Reply(response.encode(&query, limit))
            }
            None => Action::Forward(query),
        }
    }

    /// The upstream's answer to `msg`, or SERVFAIL when it gives none.
    async fn forward(&self, msg: &[u8], query: &Query, tcp: bool) -> Vec<u8> {
        self.metrics.forwarded.inc();
        let asked = if tcp {
            forward_tcp(self.upstream, msg, query.id)
        } else {
            Box::pin(forward_udp(self.upstream, msg, query.id))
        };
        match tokio::time::timeout(self.timeout, asked).await {
            Ok(Ok(answer)) => {
                self.metrics.count("forwarded");
                return answer;
            }
            Ok(Err(e)) => {
                tracing::debug!(upstream = %self.upstream, name = %query.name, error = %e, "upstream failed")
            }
            Err(_) => {
                tracing::debug!(upstream = %self.upstream, name = %query.name, "upstream did not answer in time")
            }
        }
        self.metrics.upstream_failures.inc();
        self.metrics.count("servfail");
        let limit = if tcp {
            usize::from(u16::MAX)
        } else {
            query.udp_limit()
        };
        Response::empty(rcode::SERVFAIL).encode(query, limit)
    }
}

type Forwarding<'a> = std::pin::Pin<Box<dyn Future<Output = io::Result<Vec<u8>>> + Send + 'a>>;

/// Asks over UDP from a fresh socket (a fresh random port per query, so
/// an off-path spoofer must guess it as well as the id).
async fn forward_udp(upstream: SocketAddr, msg: &[u8], id: u16) -> io::Result<Vec<u8>> {
    let local: IpAddr = match upstream {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((local, 0)).await?;
    socket.connect(upstream).await?;
    socket.send(msg).await?;
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        let n = socket.recv(&mut buf).await?;
        // A stray datagram with another id is not the answer: keep waiting.
        if message::message_id(&buf[..n]) == Some(id) {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

fn forward_tcp(upstream: SocketAddr, msg: &[u8], id: u16) -> Forwarding<'_> {
    Box::pin(async move {
        let mut stream = TcpStream::connect(upstream).await?;
        write_framed(&mut stream, msg).await?;
        let answer = read_framed(&mut stream).await?;
        if message::message_id(&answer) != Some(id) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the upstream answered another query",
            ));
        }
        Ok(answer)
    })
}

async fn read_framed(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a DNS message over 64 KiB"))?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    stream.write_all(&framed).await
}

/// Answers every datagram on `socket`; runs until dropped.
pub async fn serve_udp(socket: UdpSocket, responder: Arc<Responder>) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                tracing::warn!(error = %e, "receiving a DNS query failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let msg = &buf[..n];
        match responder.decide(msg, false) {
            Action::Ignore => {}
            Action::Reply(answer) => {
                let _ = socket.send_to(&answer, from).await;
            }
            Action::Forward(query) => {
                let Ok(permit) = Arc::clone(&responder.forwards).try_acquire_owned() else {
                    responder.metrics.upstream_failures.inc();
                    responder.metrics.count("servfail");
                    let answer = Response::empty(rcode::SERVFAIL).encode(&query, query.udp_limit());
                    let _ = socket.send_to(&answer, from).await;
                    continue;
                };
                let (socket, responder, msg) =
                    (Arc::clone(&socket), Arc::clone(&responder), msg.to_vec());
                tokio::spawn(async move {
                    let answer = responder.forward(&msg, &query, false).await;
                    let _ = socket.send_to(&answer, from).await;
                    drop(permit);
                });
            }
        }
    }
}

/// Answers queries on every connection `listener` accepts, one at a
/// time per connection as RFC 7766 allows; runs until dropped.
pub async fn serve_tcp(listener: TcpListener, responder: Arc<Responder>) {
    let connections = Arc::new(Semaphore::new(MAX_TCP));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(got) => got,
            Err(e) => {
                // Out of descriptors, most likely: let some close.
                tracing::warn!(error = %e, "accepting a DNS connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            continue;
        };
        let responder = Arc::clone(&responder);
        tokio::spawn(async move {
            serve_connection(stream, &responder).await;
            drop(permit);
        });
    }
}

async fn serve_connection(mut stream: TcpStream, responder: &Responder) {
    loop {
        let msg = match tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await {
            Ok(Ok(msg)) => msg,
            _ => return,
        };
        let answer = match responder.decide(&msg, true) {
            Action::Ignore => continue,
            Action::Reply(answer) => answer,
            Action::Forward(query) => responder.forward(&msg, &query, true).await,
        };
        if write_framed(&mut stream, &answer).await.is_err() {
            return;
        }
    }
}
