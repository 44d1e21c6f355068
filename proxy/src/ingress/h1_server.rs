//! The HTTP/1.1 front end. One client connection: read a request, route
//! it, forward it to an upstream endpoint, stream the response back; repeat
//! while keep-alive lasts. Requests on one connection are handled strictly
//! in order, so pipelined requests are answered in order. A connection that
//! opens with the h2c preface goes to `h2_server`.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::access_log::Entry;
use super::body::{BodyError, BodyProgress, Framing};
use super::config::{Limits, UpstreamProtocol};
use super::h1::{self, Forwarding, Head, HeadError, RequestInfo};
use super::h1_reply::{Done, drain_body_or_close, local};
use super::retry::Attempts;
use super::routes::{Route, normalize_path};
use super::upstream::{InFlight, Upstream};
use super::worker::{Buf, BufferFull, LeasedBuf, Worker, fail, no_route, record};

/// Where a request's failure came from, for status choice and metrics.
#[derive(Debug)]
enum Failure {
    /// Could not connect: 502, or 504 when it timed out.
    Connect { timed_out: bool },
    /// No response head in time: 504.
    Timeout,
    /// The upstream broke the protocol or the connection: 502.
    Upstream(&'static str),
    /// The client broke the connection: nothing to answer.
    Client,
    /// The client's body stalled past `body_read_timeout`: 408.
    ClientTimeout,
    /// The client sent a malformed body: 400.
    BadBody,
    /// The client's body grew past the limit: 413.
    BodyTooLarge,
}

impl From<BodyError> for Failure {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::Malformed => Self::BadBody,
            BodyError::TooLarge => Self::BodyTooLarge,
        }
    }
}

/// A client connection.
pub trait Connection: AsyncRead + AsyncWrite + Unpin {
    /// Ready when bytes may be read; polled rather than awaited, so an idle
    /// connection's wait keeps no waiter of its own (the socket's single
    /// reader slot holds the waker).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<()>;

    /// Reads what is there, pending when nothing is; `None` when the
    /// connection cannot tell (then it is read the usual way, buffer in
    /// hand).
    fn poll_read_now(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Option<Poll<io::Result<usize>>>;
}

impl Connection for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        // An error surfaces on the read that follows.
        TcpStream::poll_read_ready(self, cx).map(|_| ())
    }

    fn poll_read_now(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Option<Poll<io::Result<usize>>> {
        // Not `try_read`: a read shorter than the buffer clears tokio's
        // readiness, so the wait after the response costs no read that
        // would block (one system call per request).
        let mut buf = tokio::io::ReadBuf::new(buf);
        Some(
            std::pin::Pin::new(self)
                .poll_read(cx, &mut buf)
                .map_ok(|()| buf.filled().len()),
        )
    }
}

impl Connection for tokio_rustls::server::TlsStream<TcpStream> {
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
        // rustls may already hold decrypted bytes the socket will never
        // signal again: read at once.
        Poll::Ready(())
    }

    fn poll_read_now(
        &mut self,
        _cx: &mut Context<'_>,
        _buf: &mut [u8],
    ) -> Option<Poll<io::Result<usize>>> {
        None
    }
}

/// Serves one client connection until it closes, errs, idles out, or the
/// worker drains.
///
/// Between requests a connection is only this future: the wait for its
/// next bytes, with no buffer. Everything a request needs lives in
/// `serve_requests`, boxed while the connection is busy, so an idle
/// keep-alive connection costs a few hundred bytes, not the largest state
/// a request can reach.
pub async fn serve<S>(worker: Rc<Worker>, mut client: S, peer: SocketAddr, tls: bool)
where
    S: Connection + 'static,
{
    let mut first = true;
    loop {
        let Some((cbuf, deadline)) = wait_for_bytes(&worker, &mut client, first).await else {
            return;
        };
        let next = Box::pin(serve_requests(
            &worker,
            &mut client,
            cbuf,
            peer,
            tls,
            first,
            deadline,
        ))
        .await;
        match next {
            Next::Idle => first = false,
            Next::Close => return,
            Next::H2c(prefix) => {
                // An HTTP/2 client with prior knowledge: hand the connection,
                // and the bytes already read, to the HTTP/2 server.
                let io = super::h2_server::Prefixed::new(prefix, client);
                Box::pin(super::h2_server::serve(worker, io, peer, tls)).await;
                return;
            }
        }
    }
}

/// What follows a busy spell of a client connection.
enum Next {
    /// Every request read so far is answered: wait for more.
    Idle,
    /// The connection is done with.
    Close,
    /// The client speaks h2c with prior knowledge; these are the bytes it
    /// sent so far.
    H2c(Vec<u8>),
}

/// Waits until the client sends bytes, and reads them into a buffer taken
/// only then; with the buffer comes the deadline for the head they start.
/// `None`: the client closed, erred or idled out, or the worker is
/// draining.
async fn wait_for_bytes<S: Connection>(
    worker: &Worker,
    client: &mut S,
    first: bool,
) -> Option<(Buf, tokio::time::Instant)> {
    let (header_timeout, keepalive_timeout) = {
        let limits = worker.shared.limits.load();
        (
            limits.header_read_timeout.get(),
            limits.keepalive_timeout.get(),
        )
    };
    // Between requests the client may idle for the keep-alive timeout;
    // once a head has started it must finish within the header timeout,
    // whatever the keep-alive allows (slowloris). The first head's timeout
    // runs from the connection's start.
    let deadline = tokio::time::Instant::now()
        + if first {
            header_timeout
        } else {
            keepalive_timeout
        };
    let idle = tokio::time::sleep_until(deadline);
    let drained = worker.drained();
    tokio::pin!(idle, drained);
    loop {
        // Polled by hand rather than with `select!`: this is the state of
        // every idle connection, and each byte of it counts ten thousand
        // times.
        let readable = std::future::poll_fn(|cx| {
            if client.poll_read_ready(cx).is_ready() {
                Poll::Ready(true)
            } else if idle.as_mut().poll(cx).is_ready() || drained.as_mut().poll(cx).is_ready() {
                Poll::Ready(false)
            } else {
                Poll::Pending
            }
        })
        .await;
        if !readable {
            return None;
        }
        // Readiness may be stale, so a buffer is taken only for a read
        // that finds bytes, and given back otherwise.
        let mut storage = worker.take_read_buffer();
        let read =
            std::future::poll_fn(|cx| Poll::Ready(client.poll_read_now(cx, &mut storage))).await;
        match read {
            // Read with the buffer in hand; a head that starts then moves
            // the deadline on (see `read_head`).
            None => return Some((Buf::over(storage), deadline)),
            Some(Poll::Ready(Ok(0))) => {
                worker.give_read_buffer(storage);
                return None;
            }
            Some(Poll::Ready(Ok(n))) => {
                let cbuf = Buf::over_filled(storage, n);
                let deadline = if first {
                    deadline
                } else {
                    tokio::time::Instant::now() + header_timeout
                };
                return Some((cbuf, deadline));
            }
            Some(Poll::Pending) => worker.give_read_buffer(storage),
            Some(Poll::Ready(Err(_))) => {
                worker.give_read_buffer(storage);
                return None;
            }
        }
    }
}

/// Answers requests for as long as the client keeps them coming without a
/// pause: from the bytes in `cbuf` until the buffer is empty again, whose
/// storage then goes back to the worker.
#[allow(clippy::too_many_arguments)]
async fn serve_requests<S: Connection>(
    worker: &Rc<Worker>,
    client: &mut S,
    mut cbuf: Buf,
    peer: SocketAddr,
    tls: bool,
    mut first: bool,
    mut deadline: tokio::time::Instant,
) -> Next {
    let shared = &worker.shared;
    let mut head = Head::default();
    let mut out = Vec::new();
    let next = loop {
        let limits = shared.limits.load_full();
        let info = match read_head(
            worker, client, &mut cbuf, &mut head, &limits, first, deadline,
        )
        .await
        {
            Ok(Some(info)) => info,
            Ok(None) => break Next::Close,
            Err(ReadHeadError::H2c) => break Next::H2c(cbuf.filled().to_vec()),
            Err(ReadHeadError::Head(e)) => {
                out.clear();
                h1::write_local_response(&mut out, e.status(), "", &format!("{e}\n"), false);
                let _ = client.write_all(&out).await;
                record(shared, &no_route(), e.status(), Instant::now());
                break Next::Close;
            }
            Err(ReadHeadError::Timeout) => {
                out.clear();
                h1::write_local_response(
                    &mut out,
                    408,
                    "",
                    "request head not received in time\n",
                    false,
                );
                let _ = client.write_all(&out).await;
                break Next::Close;
            }
            Err(ReadHeadError::Io) => break Next::Close,
        };
        first = false;
        if out.capacity() == 0 {
            out = worker.take_write_buffer();
        }
        let started = Instant::now();
        let access = shared.access_log.load_full();
        let (route, host, log_fields, target) = {
            let buf = cbuf.filled();
            let host = h1::host(buf, &head);
            let path = h1::path(buf, &head);
            let normal_path = normalize_path(path);
            let route = shared
                .routes
                .load()
                .find(&host, &normal_path, &|name| head.header(buf, name))
                .cloned();
            let target = h1::normalized_target(buf, &head, path, &normal_path);
            let log_fields = access.as_ref().map(|_| {
                (
                    String::from_utf8_lossy(&buf[head.method.clone()]).into_owned(),
                    String::from_utf8_lossy(&buf[head.target.clone()]).into_owned(),
                )
            });
            (route, host, log_fields, target)
        };
        let route_name: Arc<str> = route.as_ref().map_or_else(no_route, |r| r.name.clone());
        let done = match route {
            None => {
                let keep = drain_body_or_close(&info);
                local(
                    client,
                    &mut cbuf,
                    &head,
                    &mut out,
                    404,
                    "",
                    "no route\n",
                    keep,
                )
                .await
            }
            Some(route) if route.redirect_https && !tls => {
                let target =
                    String::from_utf8_lossy(&cbuf.filled()[head.target.clone()]).into_owned();
                let location = format!("location: https://{host}{target}\r\n");
                let keep = drain_body_or_close(&info);
                local(client, &mut cbuf, &head, &mut out, 308, &location, "", keep).await
            }
            Some(route) => {
                let id = worker.request_id();
                let client_ip = peer.ip().to_string();
                let fwd = Forwarding {
                    client: &client_ip,
                    tls,
                    request_id: id.as_str(),
                    target: target.as_deref(),
                };
                // Boxed: forwarding has the largest state by far, and
                // neither a local answer nor a TLS client awaiting its next
                // head (a read in `read_head`) should carry it.
                Box::pin(forward(
                    worker, &route, client, &mut cbuf, &head, &info, &fwd, &mut out, &limits,
                ))
                .await
            }
        };
        record(shared, &route_name, done.status, started);
        if let (Some(log), Some((method, target))) = (access, log_fields) {
            log.write(&Entry {
                client: peer.ip(),
                method: &method,
                host: &host,
                target: &target,
                status: done.status,
                bytes: done.bytes,
                duration: started.elapsed(),
                route: &route_name,
                upstream: done.upstream.as_deref(),
                endpoint: done.endpoint,
            });
        }
        if !done.keep_alive || worker.is_draining() {
            let _ = client.shutdown().await;
            break Next::Close;
        }
        if cbuf.is_empty() {
            break Next::Idle;
        }
        deadline = tokio::time::Instant::now() + limits.header_read_timeout.get();
    };
    if let Some(storage) = cbuf.release() {
        worker.give_read_buffer(storage);
    }
    worker.give_write_buffer(out);
    next
}

enum ReadHeadError {
    /// The client speaks h2c with prior knowledge.
    H2c,
    Head(HeadError),
    Timeout,
    Io,
}

/// Reads until a whole request head is buffered, by `deadline` (which is
/// moved to the header timeout once a head has started after an idle
/// spell). `Ok(None)`: the client closed or idled out between requests, or
/// the worker is draining.
async fn read_head<S: Connection>(
    worker: &Worker,
    client: &mut S,
    cbuf: &mut Buf,
    head: &mut Head,
    limits: &Limits,
    first: bool,
    mut deadline: tokio::time::Instant,
) -> Result<Option<RequestInfo>, ReadHeadError> {
    let max_head = usize::try_from(limits.max_header_bytes.bytes()).unwrap_or(usize::MAX);
    let header_timeout = limits.header_read_timeout.get();
    // How much of the buffer a parse has already found unfinished: a head
    // is parsed again only once bytes that can end it arrive, so a head
    // trickled in a byte at a time is not parsed once per byte.
    let mut unfinished = 0;
    loop {
        // The h2c preface, or the part of it read so far, is no HTTP/1 head.
        let preface = first && {
            let seen = cbuf.filled();
            let n = seen.len().min(super::h2_server::PREFACE.len());
            !seen.is_empty() && seen[..n] == super::h2_server::PREFACE[..n]
        };
        if preface && cbuf.filled().len() >= super::h2_server::PREFACE.len() {
            return Err(ReadHeadError::H2c);
        }
        let filled = cbuf.filled();
        if !filled.is_empty()
            && !preface
            && (unfinished == 0
                || filled.len() >= max_head
                || h1::may_end_head(&filled[unfinished - 2..]))
        {
            match h1::parse_request(
                filled,
                head,
                limits.max_headers,
                max_head,
                limits.max_body_bytes.bytes(),
            ) {
                Ok(Some(info)) => return Ok(Some(info)),
                Ok(None) => unfinished = filled.len().max(2),
                Err(e) => return Err(ReadHeadError::Head(e)),
            }
        }
        let was_empty = cbuf.is_empty();
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline, cbuf.read_from(client, max_head)) => r,
            () = worker.drained(), if was_empty => return Ok(None),
        };
        match read {
            Err(_) if was_empty => return Ok(None),
            Err(_) => return Err(ReadHeadError::Timeout),
            Ok(Ok(0)) if was_empty => return Ok(None),
            Ok(Ok(0)) => return Err(ReadHeadError::Io),
            Ok(Ok(_)) => {
                if was_empty && !first {
                    deadline = tokio::time::Instant::now() + header_timeout;
                }
            }
            Ok(Err(e)) if e.get_ref().is_some_and(|i| i.is::<BufferFull>()) => {
                return Err(ReadHeadError::Head(HeadError::TooLarge));
            }
            Ok(Err(_)) => return Err(ReadHeadError::Io),
        }
    }
}

/// The upstream connection of one attempt, and whether it came from the pool.
struct Attempt {
    stream: TcpStream,
    reused: bool,
    addr: SocketAddr,
}

/// A connection to `addr`: a pooled one when `pooled` and one fit for the
/// request is idle (see [`Pool::take_for`]), else a new one.
async fn connect(
    worker: &Worker,
    upstream: &Upstream,
    addr: SocketAddr,
    pooled: bool,
    replayable: bool,
) -> Result<Attempt, Failure> {
    if let Some(stream) = pooled
        .then(|| worker.pool.take_for(addr, replayable))
        .flatten()
    {
        return Ok(Attempt {
            stream,
            reused: true,
            addr,
        });
    }
    match upstream.dial(addr).await {
        Ok(stream) => Ok(Attempt {
            stream,
            reused: false,
            addr,
        }),
        Err(e) => Err(Failure::Connect {
            timed_out: e.timed_out,
        }),
    }
}

/// Forwards one request and its response.
#[allow(clippy::too_many_arguments)]
async fn forward<S: AsyncRead + AsyncWrite + Unpin>(
    worker: &Rc<Worker>,
    route: &Route,
    client: &mut S,
    cbuf: &mut Buf,
    head: &Head,
    info: &RequestInfo,
    fwd: &Forwarding<'_>,
    out: &mut Vec<u8>,
    limits: &Limits,
) -> Done {
    let Some(upstream) = route.pick(worker.roll()).cloned() else {
        let keep = drain_body_or_close(info);
        return local(client, cbuf, head, out, 503, "", "no upstream\n", keep).await;
    };
    upstream.count_request();
    // A chunked body already past the limit, or malformed, in what arrived
    // with the head is refused before an upstream connection is taken.
    if info.framing == Framing::Chunked {
        let mut body = BodyProgress::limited(info.framing, limits.max_body_bytes.bytes());
        if let Err(e) = body.feed(&cbuf.filled()[head.len..]) {
            let failure = e.into();
            let name = Some(upstream.name.clone());
            return failure_response(client, cbuf, head, out, failure, name, None).await;
        }
    }
    if upstream.settings.protocol == UpstreamProtocol::H2c {
        // Boxed, so HTTP/1.1 upstreams' requests do not carry its state.
        return Box::pin(super::bridge::forward(
            worker, &upstream, client, cbuf, head, info, fwd, out, limits,
        ))
        .await;
    }
    // Once sent, only requests without a body can be replayed: the body is
    // streamed, not kept.
    let replayable = info.idempotent && info.framing == Framing::Empty;
    let mut attempts = Attempts::new(worker, &upstream, replayable);
    let Some(mut flight) = attempts.first() else {
        return failure_response(
            client,
            cbuf,
            head,
            out,
            Failure::Upstream("no healthy endpoint"),
            Some(upstream.name.clone()),
            None,
        )
        .await;
    };
    // HTTP/1.0 has no interim responses, so no `Expect` to answer.
    let expects_continue = head.version == 1
        && head
            .header(cbuf.filled(), "expect")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
    // Whether this attempt may take a pooled connection, and whether the one
    // retry on a new connection is spent.
    let (mut pooled, mut fresh_retry_used) = (true, false);
    let failure = loop {
        let addr = flight.endpoint().addr;
        let attempt = match connect(worker, &upstream, addr, pooled, replayable).await {
            Ok(a) => a,
            Err(failure) => {
                upstream.record(flight.endpoint(), false);
                fail(worker, &upstream, "connect");
                match attempts.retry_unsent(addr) {
                    Some(next) => {
                        (flight, pooled) = (next, true);
                        continue;
                    }
                    None => break failure,
                }
            }
        };
        let exchanged = exchange(
            worker,
            &upstream,
            attempt,
            client,
            cbuf,
            head,
            info,
            fwd,
            out,
            limits,
            expects_continue,
            &mut attempts,
        )
        .await;
        match exchanged {
            Ok(done) => {
                let status = done.status;
                let healthy = !matches!(status, 502..=504);
                upstream.record(flight.endpoint(), healthy);
                return Done {
                    upstream: Some(upstream.name.clone()),
                    endpoint: Some(addr),
                    ..done
                };
            }
            // A pooled connection the upstream had already closed is no
            // fault of the endpoint: try it once more on a new connection.
            Err(ExchangeError::Retry { reused: true } | ExchangeError::Unsent { reused: true })
                if !fresh_retry_used =>
            {
                (pooled, fresh_retry_used) = (false, true);
            }
            Err(ExchangeError::Unsent { .. }) => {
                upstream.record(flight.endpoint(), false);
                match attempts.retry_unsent(addr) {
                    Some(next) => (flight, pooled) = (next, true),
                    None => break Failure::Upstream("upstream failed before answering"),
                }
            }
            Err(ExchangeError::Stale) => {
                fail(worker, &upstream, "stale_connection");
                return failure_response(
                    client,
                    cbuf,
                    head,
                    out,
                    Failure::Upstream("pooled connection closed before answering"),
                    Some(upstream.name.clone()),
                    Some(addr),
                )
                .await;
            }
            Err(ExchangeError::Retry { .. }) => {
                upstream.record(flight.endpoint(), false);
                match attempts.retry(addr) {
                    Some(next) => (flight, pooled) = (next, true),
                    None => break Failure::Upstream("upstream failed before answering"),
                }
            }
            Err(ExchangeError::Status(next)) => {
                upstream.record(flight.endpoint(), false);
                (flight, pooled) = (next, true);
            }
            Err(ExchangeError::Fatal(failure)) => {
                let clients_fault = matches!(
                    failure,
                    Failure::Client
                        | Failure::ClientTimeout
                        | Failure::BadBody
                        | Failure::BodyTooLarge
                );
                if !clients_fault {
                    upstream.record(flight.endpoint(), false);
                }
                let kind = match failure {
                    Failure::Timeout => "timeout",
                    Failure::Upstream(_) => "protocol",
                    _ => "client",
                };
                if kind != "client" {
                    fail(worker, &upstream, kind);
                }
                return failure_response(
                    client,
                    cbuf,
                    head,
                    out,
                    failure,
                    Some(upstream.name.clone()),
                    Some(addr),
                )
                .await;
            }
        }
    };
    failure_response(
        client,
        cbuf,
        head,
        out,
        failure,
        Some(upstream.name.clone()),
        None,
    )
    .await
}

async fn failure_response<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    cbuf: &mut Buf,
    head: &Head,
    out: &mut Vec<u8>,
    failure: Failure,
    upstream: Option<Arc<str>>,
    endpoint: Option<SocketAddr>,
) -> Done {
    let (status, body) = match failure {
        Failure::Connect { timed_out: true } | Failure::Timeout => (504, "upstream timed out\n"),
        Failure::Connect { timed_out: false } => (502, "upstream unreachable\n"),
        Failure::Upstream("no healthy endpoint") => (503, "no healthy upstream endpoint\n"),
        Failure::Upstream(_) => (502, "upstream failed\n"),
        Failure::BadBody => (400, "malformed request body\n"),
        Failure::BodyTooLarge => (413, "request body too large\n"),
        Failure::ClientTimeout => (408, "request body not received in time\n"),
        Failure::Client => {
            return Done {
                status: 499,
                keep_alive: false,
                upstream,
                endpoint,
                bytes: 0,
            };
        }
    };
    // The request body may be partly unread: the connection cannot be
    // trusted to be at a request boundary any more.
    let mut done = local(client, cbuf, head, out, status, "", body, false).await;
    done.upstream = upstream;
    done.endpoint = endpoint;
    done
}

enum ExchangeError {
    /// Nothing reached the client and the request may be sent again.
    Retry { reused: bool },
    /// Not a byte of the request reached the upstream: it may go again
    /// whatever its method.
    Unsent { reused: bool },
    /// A pooled connection closed before any answer to a request that
    /// cannot be sent again: the upstream closed it as the request went
    /// out, most likely, which is no fault of the endpoint.
    Stale,
    /// The answer's status is retried: send the request to this endpoint.
    Status(InFlight),
    /// Give up with this failure.
    Fatal(Failure),
}

/// Sends the request on `attempt` and streams the response to the client.
#[allow(clippy::too_many_arguments)]
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    worker: &Worker,
    upstream: &Upstream,
    mut attempt: Attempt,
    client: &mut S,
    cbuf: &mut Buf,
    head: &Head,
    info: &RequestInfo,
    fwd: &Forwarding<'_>,
    out: &mut Vec<u8>,
    limits: &Limits,
    expects_continue: bool,
    attempts: &mut Attempts<'_>,
) -> Result<Done, ExchangeError> {
    let retry = ExchangeError::Retry {
        reused: attempt.reused,
    };
    let replayable = info.idempotent && info.framing == Framing::Empty;
    // The request head and whatever of the body is already buffered go out
    // in one write.
    out.clear();
    h1::write_upstream_request(out, cbuf.filled(), head, info, fwd);
    // A chunked body past the limit in what is buffered is refused before
    // anything goes upstream.
    let mut body = BodyProgress::limited(info.framing, limits.max_body_bytes.bytes());
    let buffered = &cbuf.filled()[head.len..];
    let take = body
        .feed(buffered)
        .map_err(|e| ExchangeError::Fatal(e.into()))?;
    let upstream_stream = &mut attempt.stream;
    let mut sent = &buffered[..take];
    if let Some(trailers) = body.trailers() {
        out.extend_from_slice(&buffered[..trailers.start]);
        sent = &buffered[trailers.end..take];
    }
    if let Err(failed) = write_head_and_body(upstream_stream, out, sent).await {
        return Err(if !failed.sent_any {
            // The upstream has none of it: whatever the request, it may go
            // again, its body still in the buffer.
            ExchangeError::Unsent {
                reused: attempt.reused,
            }
        } else if replayable {
            retry
        } else {
            ExchangeError::Fatal(Failure::Upstream("write failed"))
        });
    }
    // A replayable request keeps its head in the buffer until no retry can
    // need it any more.
    if !replayable {
        cbuf.consume(head.len + take);
    }
    if expects_continue && !body.done() {
        // Answer the client's Expect ourselves, as nginx does: the body then
        // streams straight through.
        client
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| ExchangeError::Fatal(Failure::Client))?;
    }
    let max_read = usize::try_from(limits.max_header_bytes.bytes()).unwrap_or(usize::MAX);
    // Set when the upstream stopped taking the body, which it may do once
    // it has answered (a 413, say): its answer is read all the same, and
    // neither connection is reused, each being mid-body.
    let mut body_cut = false;
    if !body.done() {
        // A body cut off here (past the limit, or malformed) leaves the
        // upstream with part of it: this connection is dropped, never
        // pooled, which aborts the request upstream.
        match stream_body(
            client,
            cbuf,
            upstream_stream,
            &mut body,
            max_read,
            limits,
            true,
        )
        .await
        {
            Ok(_) => {}
            Err(Side::Sink) => body_cut = true,
            Err(Side::Source) => return Err(ExchangeError::Fatal(Failure::Client)),
            Err(Side::SourceStalled) => return Err(ExchangeError::Fatal(Failure::ClientTimeout)),
            Err(Side::Body(e)) => return Err(ExchangeError::Fatal(e.into())),
        }
    }

    // The response head; interim 1xx responses (but 101) pass through to
    // HTTP/1.1 clients (an HTTP/1.0 client cannot tell one from the answer,
    // RFC 9110 §15.2).
    let mut ubuf = LeasedBuf::new(worker);
    let mut rhead = Head::default();
    let max_head = 64 * 1024;
    let deadline = tokio::time::Instant::now() + upstream.settings.request_timeout;
    let rinfo = loop {
        if !ubuf.is_empty() {
            match h1::parse_response(ubuf.filled(), &mut rhead, max_head, info.is_head) {
                Ok(Some(r)) if rhead.status >= 100 && rhead.status < 200 && rhead.status != 101 => {
                    if head.version == 1 && (rhead.status != 100 || !expects_continue) {
                        out.clear();
                        h1::write_client_response(
                            out,
                            ubuf.filled(),
                            &rhead,
                            &r,
                            head.version,
                            true,
                        );
                        client
                            .write_all(out)
                            .await
                            .map_err(|_| ExchangeError::Fatal(Failure::Client))?;
                    }
                    ubuf.consume(rhead.len);
                    continue;
                }
                Ok(Some(r)) => break r,
                Ok(None) => {}
                Err(_) => {
                    return Err(ExchangeError::Fatal(Failure::Upstream(
                        "malformed response",
                    )));
                }
            }
        }
        match tokio::time::timeout_at(deadline, ubuf.read_from(upstream_stream, max_head)).await {
            Err(_) => return Err(ExchangeError::Fatal(Failure::Timeout)),
            Ok(Ok(0)) | Ok(Err(_)) if ubuf.is_empty() && replayable => return Err(retry),
            Ok(Ok(0)) | Ok(Err(_)) if ubuf.is_empty() && attempt.reused && !body_cut => {
                return Err(ExchangeError::Stale);
            }
            Ok(Ok(0)) | Ok(Err(_)) if body_cut => {
                return Err(ExchangeError::Fatal(Failure::Upstream(
                    "upstream closed during the request body",
                )));
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Err(ExchangeError::Fatal(Failure::Upstream(
                    "upstream closed before answering",
                )));
            }
            Ok(Ok(_)) => {}
        }
    };
    // A switch of protocols nobody asked for leaves the upstream connection
    // speaking something else: it is no answer, and the connection goes.
    if rhead.status == 101 && !info.upgrade {
        return Err(ExchangeError::Fatal(Failure::Upstream(
            "upstream switched protocols unasked",
        )));
    }
    if let Some(next) = attempts.retry_status(attempt.addr, rhead.status) {
        return Err(ExchangeError::Status(next));
    }
    if replayable {
        cbuf.consume(head.len);
    }

    // Upgrades become a tunnel.
    if rhead.status == 101 && info.upgrade {
        out.clear();
        h1::write_client_response(out, ubuf.filled(), &rhead, &rinfo, head.version, true);
        out.extend_from_slice(&ubuf.filled()[rhead.len..]);
        client
            .write_all(out)
            .await
            .map_err(|_| ExchangeError::Fatal(Failure::Client))?;
        if !cbuf.is_empty() {
            upstream_stream
                .write_all(cbuf.filled())
                .await
                .map_err(|_| ExchangeError::Fatal(Failure::Upstream("tunnel write failed")))?;
            cbuf.consume(cbuf.filled().len());
        }
        let down = tunnel(client, upstream_stream, limits.tunnel_idle_timeout.get()).await;
        return Ok(Done {
            status: 101,
            keep_alive: false,
            upstream: None,
            endpoint: None,
            bytes: down,
        });
    }

    let keep_alive = info.keep_alive
        && !body_cut
        && rinfo.framing != Framing::UntilClose
        && !worker
            .shared
            .draining
            .load(std::sync::atomic::Ordering::Relaxed);
    out.clear();
    h1::write_client_response(out, ubuf.filled(), &rhead, &rinfo, head.version, keep_alive);
    let mut rbody = BodyProgress::new(rinfo.framing);
    let buffered = &ubuf.filled()[rhead.len..];
    let take = rbody
        .feed(buffered)
        .map_err(|_| ExchangeError::Fatal(Failure::Upstream("malformed response body")))?;
    let extra = buffered.len() > take;
    let mut bytes = take as u64;
    write_head_and_body(client, out, &buffered[..take])
        .await
        .map_err(|_| ExchangeError::Fatal(Failure::Client))?;
    ubuf.consume(rhead.len + take);
    if !rbody.done() {
        match stream_body(
            upstream_stream,
            &mut ubuf,
            client,
            &mut rbody,
            max_head,
            limits,
            false,
        )
        .await
        {
            Ok(n) => bytes += n,
            // An until-close body ends with the upstream closing.
            Err(Side::Source) if rinfo.framing == Framing::UntilClose => {}
            Err(Side::Sink) => return Err(ExchangeError::Fatal(Failure::Client)),
            Err(_) => {
                // Headers are out: the client can only learn of the failure
                // by the connection closing early.
                return Ok(Done {
                    status: rhead.status,
                    keep_alive: false,
                    upstream: None,
                    endpoint: None,
                    bytes,
                });
            }
        }
    }
    // Anything beyond the response means the upstream is out of step: do
    // not reuse the connection.
    if rinfo.reusable && !extra && !body_cut && ubuf.is_empty() {
        worker
            .pool
            .put(attempt.addr, attempt.stream, upstream.settings.keep);
    }
    Ok(Done {
        status: rhead.status,
        keep_alive,
        upstream: None,
        endpoint: None,
        bytes,
    })
}

/// Copies both ways between an upgraded client connection and its
/// upstream until either side closes or nothing passes for `idle`; the
/// bytes sent down to the client.
async fn tunnel<C, U>(client: &mut C, upstream: &mut U, idle: std::time::Duration) -> u64
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let last = Cell::new(tokio::time::Instant::now());
    let mut client = Active {
        inner: client,
        last: &last,
    };
    let mut upstream = Active {
        inner: upstream,
        last: &last,
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            copied = &mut copy => return copied.map(|(_, down)| down).unwrap_or_default(),
            () = tokio::time::sleep_until(last.get() + idle) => {
                // Bytes may have passed while this timer ran: wait again
                // from the last of them.
                if last.get() + idle <= tokio::time::Instant::now() {
                    return 0;
                }
            }
        }
    }
}

/// A stream that notes when it last read something, for the tunnel's idle
/// timeout (a byte read on one side is a byte written on the other).
struct Active<'a, S> {
    inner: &'a mut S,
    last: &'a Cell<tokio::time::Instant>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Active<'_, S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut *self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.set(tokio::time::Instant::now());
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Active<'_, S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut *self.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// Bodies up to this size are copied behind their head and sent in one
/// `send`; larger ones go out beside it in one `writev`, saving the copy.
const COPIED_BODY_MAX: usize = 4096;

/// Writes a message's head, then the part of its body already read, in
/// one system call where the stream allows.
///
/// `head` is the message's write buffer: a small body is appended to it.
async fn write_head_and_body<W: AsyncWrite + Unpin>(
    dst: &mut W,
    head: &mut Vec<u8>,
    body: &[u8],
) -> Result<(), WriteFailed> {
    let mut sent_any = false;
    let failed = |sent_any| move |_| WriteFailed { sent_any };
    if body.len() <= COPIED_BODY_MAX {
        head.extend_from_slice(body);
        let mut rest = &head[..];
        while !rest.is_empty() {
            let n = dst.write(rest).await.map_err(failed(sent_any))?;
            if n == 0 {
                return Err(WriteFailed { sent_any });
            }
            sent_any = true;
            rest = &rest[n..];
        }
        return Ok(());
    }
    let (mut head, mut body) = (&head[..], body);
    while !head.is_empty() {
        let n = dst
            .write_vectored(&[io::IoSlice::new(head), io::IoSlice::new(body)])
            .await
            .map_err(failed(sent_any))?;
        if n == 0 {
            return Err(WriteFailed { sent_any });
        }
        sent_any = true;
        if n < head.len() {
            head = &head[n..];
        } else {
            body = &body[n - head.len()..];
            head = &[];
        }
    }
    dst.write_all(body).await.map_err(failed(true))
}

/// A write of a head and body that failed.
struct WriteFailed {
    /// Whether any byte had gone out before it failed.
    sent_any: bool,
}

/// Which side of a copy failed.
enum Side {
    Source,
    /// The source sent nothing for the body read timeout.
    SourceStalled,
    /// The sink failed, or took nothing for the send timeout.
    Sink,
    /// The body itself: malformed, or past its limit.
    Body(BodyError),
}

/// Copies the rest of a body from `src` (its buffer first) to `dst`. A
/// request body's trailer lines are left out (`drop_trailers`), as nginx
/// leaves them: an upstream that merges trailers into the headers would
/// take them for headers the proxy has checked and set.
async fn stream_body<R, W>(
    src: &mut R,
    sbuf: &mut Buf,
    dst: &mut W,
    body: &mut BodyProgress,
    max: usize,
    limits: &Limits,
    drop_trailers: bool,
) -> Result<u64, Side>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut total = 0u64;
    loop {
        if !sbuf.is_empty() {
            let chunk = sbuf.filled();
            let take = body.feed(chunk).map_err(Side::Body)?;
            let write = async {
                match body.trailers().filter(|_| drop_trailers) {
                    None => dst.write_all(&chunk[..take]).await,
                    Some(trailers) => {
                        dst.write_all(&chunk[..trailers.start]).await?;
                        dst.write_all(&chunk[trailers.end..take]).await
                    }
                }
            };
            // A write that completes at once never arms its timer.
            match tokio::time::timeout(limits.send_timeout.get(), write).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(Side::Sink),
            }
            total += take as u64;
            sbuf.consume(take);
            if body.done() {
                return Ok(total);
            }
        }
        match tokio::time::timeout(limits.body_read_timeout.get(), sbuf.read_from(src, max)).await {
            Err(_) => return Err(Side::SourceStalled),
            Ok(Ok(0) | Err(_)) => return Err(Side::Source),
            Ok(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that takes at most `max` bytes per write, counting writes.
    struct Trickle {
        out: Vec<u8>,
        max: usize,
        writes: usize,
        vectored: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.max);
            self.out.extend_from_slice(&buf[..n]);
            self.writes += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            if !self.vectored {
                let first = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &b[..]);
                return self.poll_write(cx, first);
            }
            let mut left = self.max;
            for buf in bufs {
                let n = buf.len().min(left);
                self.out.extend_from_slice(&buf[..n]);
                left -= n;
            }
            self.writes += 1;
            Poll::Ready(Ok(self.max - left))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_head_and_its_body_arrive_whole_however_the_stream_takes_them() {
        let big: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        for body in [&b"ok"[..], &big[..]] {
            for (max, vectored) in [
                (usize::MAX, true),
                (7, true),
                (7, false),
                (usize::MAX, false),
            ] {
                let mut head = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
                let mut expected = head.clone();
                expected.extend_from_slice(body);
                let mut dst = Trickle {
                    out: Vec::new(),
                    max,
                    writes: 0,
                    vectored,
                };
                assert!(
                    write_head_and_body(&mut dst, &mut head, body).await.is_ok(),
                    "writes"
                );
                assert!(
                    dst.out == expected,
                    "{} bytes, max {max}, vectored {vectored}",
                    body.len()
                );
                if max == usize::MAX && vectored {
                    // One system call for both, and a large body not copied.
                    assert_eq!(dst.writes, 1);
                    assert_eq!(head.len() == expected.len(), body.len() <= COPIED_BODY_MAX);
                }
            }
        }
    }

    /// Ten thousand idle keep-alive connections are ten thousand of these
    /// futures (each in its task); a request's state must stay out of them.
    #[tokio::test]
    async fn an_idle_connection_is_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let conn = serve(Rc::new(Worker::for_tests()), client, addr, false);
        let size = std::mem::size_of_val(&conn);
        assert!(
            size <= 1024,
            "a plain connection's future takes {size} bytes"
        );
    }
}
