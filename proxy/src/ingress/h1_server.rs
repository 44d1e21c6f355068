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
use super::dispatch::{Conn, Outcome, dispatch};
use super::failure::Failure;
use super::h1::{self, Forwarding, Head, HeadError, RequestInfo};
use super::h1_reply::{Done, drain_body_or_close, local};
use super::routes::{Route, normalize_path};
use super::upstream::Upstream;
use super::worker::{Buf, BufferFull, LeasedBuf, Worker, fail, no_route, record};

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

/// One HTTP/1.1 request on its way upstream, as every step of forwarding
/// it reads it.
struct Outgoing<'a> {
    worker: &'a Rc<Worker>,
    upstream: &'a Upstream,
    head: &'a Head,
    info: &'a RequestInfo,
    fwd: &'a Forwarding<'a>,
    limits: &'a Limits,
    /// Whether the proxy answers the client's `Expect: 100-continue`.
    expects_continue: bool,
    /// Whether the request may be sent again once sent: idempotent, and
    /// without a body (the body is streamed, not kept).
    replayable: bool,
}

/// The client's side of a request being forwarded: its connection, what
/// was read from it, and the buffer answers are written from.
struct ClientSide<'a, S> {
    client: &'a mut S,
    cbuf: &'a mut Buf,
    out: &'a mut Vec<u8>,
}

/// An upstream's answer, its head read, before any of it reached the
/// client.
struct Answer<'w> {
    stream: TcpStream,
    addr: SocketAddr,
    /// What was read from the upstream: the head, and maybe body after it.
    ubuf: LeasedBuf<&'w Worker>,
    rhead: Head,
    rinfo: h1::ResponseInfo,
    /// The upstream stopped taking the request body (it may, once it has
    /// answered): neither connection is at a message boundary.
    body_cut: bool,
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
    let name = Some(upstream.name.clone());
    let mut side = ClientSide { client, cbuf, out };
    // A chunked body already past the limit, or malformed, in what arrived
    // with the head is refused before an upstream connection is taken.
    if info.framing == Framing::Chunked {
        let mut body = BodyProgress::limited(info.framing, limits.max_body_bytes.bytes());
        if let Err(e) = body.feed(&side.cbuf.filled()[head.len..]) {
            return failure_response(&mut side, head, e.into(), name, None).await;
        }
    }
    if upstream.settings.protocol == UpstreamProtocol::H2c {
        // Boxed, so HTTP/1.1 upstreams' requests do not carry its state.
        let ClientSide { client, cbuf, out } = side;
        return Box::pin(super::bridge::forward(
            worker, &upstream, client, cbuf, head, info, fwd, out, limits,
        ))
        .await;
    }
    let req = Outgoing {
        worker,
        upstream: &upstream,
        head,
        info,
        fwd,
        limits,
        // HTTP/1.0 has no interim responses, so no `Expect` to answer.
        expects_continue: head.version == 1
            && head
                .header(side.cbuf.filled(), "expect")
                .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue")),
        replayable: info.idempotent && info.framing == Framing::Empty,
    };
    let sent = dispatch(worker, &upstream, req.replayable, async |conn, addr, _| {
        match conn {
            Conn::H1 { stream, reused } => send(&req, &mut side, stream, reused, addr).await,
            // Only h2c upstreams get h2c connections, and their requests
            // take the bridge above.
            Conn::H2(_) => Outcome::Fatal(Failure::Protocol),
        }
    })
    .await;
    let (answer, flight) = match sent {
        Ok(sent) => sent,
        Err((failure, endpoint)) => {
            return failure_response(&mut side, head, failure, name, endpoint).await;
        }
    };
    let addr = flight.endpoint().addr;
    match relay(&req, &mut side, answer).await {
        Ok(done) => Done {
            upstream: name,
            endpoint: Some(addr),
            ..done
        },
        Err(failure) => {
            if let Some(kind) = failure.upstream_kind() {
                upstream.record(flight.endpoint(), false);
                fail(worker, &upstream, kind);
            }
            failure_response(&mut side, head, failure, name, Some(addr)).await
        }
    }
}

/// Answers the client for a request that failed: nothing when the client
/// went away, else the failure's status. The request body may be partly
/// unread, so the connection cannot be trusted to be at a request boundary
/// any more and is closed.
async fn failure_response<S: AsyncRead + AsyncWrite + Unpin>(
    side: &mut ClientSide<'_, S>,
    head: &Head,
    failure: Failure,
    upstream: Option<Arc<str>>,
    endpoint: Option<SocketAddr>,
) -> Done {
    if let Failure::Client = failure {
        return Done {
            status: 499,
            keep_alive: false,
            upstream,
            endpoint,
            bytes: 0,
        };
    }
    let (status, body) = failure.answer();
    let ClientSide { client, cbuf, out } = side;
    let mut done = local(*client, cbuf, head, out, status.as_u16(), "", body, false).await;
    done.upstream = upstream;
    done.endpoint = endpoint;
    done
}

/// One attempt: sends the request (head, buffered body, then the rest of
/// the body from the client) on `stream` to `addr`, and reads the answer's
/// head, passing interim answers to the client.
async fn send<'w, S: AsyncRead + AsyncWrite + Unpin>(
    req: &Outgoing<'w>,
    side: &mut ClientSide<'_, S>,
    mut stream: TcpStream,
    reused: bool,
    addr: SocketAddr,
) -> Outcome<Answer<'w>> {
    let (head, info, limits) = (req.head, req.info, req.limits);
    let ClientSide { client, cbuf, out } = side;
    // The request head and whatever of the body is already buffered go out
    // in one write.
    out.clear();
    h1::write_upstream_request(out, cbuf.filled(), head, info, req.fwd);
    // A chunked body past the limit in what is buffered is refused before
    // anything goes upstream.
    let mut body = BodyProgress::limited(info.framing, limits.max_body_bytes.bytes());
    let buffered = &cbuf.filled()[head.len..];
    let take = match body.feed(buffered) {
        Ok(take) => take,
        Err(e) => return Outcome::Fatal(e.into()),
    };
    let mut sent = &buffered[..take];
    if let Some(trailers) = body.trailers() {
        out.extend_from_slice(&buffered[..trailers.start]);
        sent = &buffered[trailers.end..take];
    }
    if let Err(failed) = write_head_and_body(&mut stream, out, sent).await {
        return if !failed.sent_any {
            // The upstream has none of it: whatever the request, it may go
            // again, its body still in the buffer.
            Outcome::Unsent
        } else if req.replayable {
            Outcome::Closed
        } else {
            Outcome::Fatal(Failure::Protocol)
        };
    }
    // A replayable request keeps its head in the buffer until no retry can
    // need it any more.
    if !req.replayable {
        cbuf.consume(head.len + take);
    }
    if req.expects_continue && !body.done() {
        // Answer the client's Expect ourselves, as nginx does: the body then
        // streams straight through.
        if client
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_err()
        {
            return Outcome::Fatal(Failure::Client);
        }
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
            *client,
            cbuf,
            &mut stream,
            &mut body,
            max_read,
            limits,
            true,
        )
        .await
        {
            Ok(_) => {}
            Err(Side::Sink) => body_cut = true,
            Err(Side::Source) => return Outcome::Fatal(Failure::Client),
            Err(Side::SourceStalled) => return Outcome::Fatal(Failure::BodyStalled),
            Err(Side::Body(e)) => return Outcome::Fatal(e.into()),
        }
    }

    // The response head; interim 1xx responses (but 101) pass through to
    // HTTP/1.1 clients (an HTTP/1.0 client cannot tell one from the answer,
    // RFC 9110 §15.2).
    let mut ubuf = LeasedBuf::new(&**req.worker);
    let mut rhead = Head::default();
    let max_head = 64 * 1024;
    let deadline = tokio::time::Instant::now() + req.upstream.settings.request_timeout;
    let rinfo = loop {
        if !ubuf.is_empty() {
            match h1::parse_response(ubuf.filled(), &mut rhead, max_head, info.is_head) {
                Ok(Some(r)) if rhead.status >= 100 && rhead.status < 200 && rhead.status != 101 => {
                    if head.version == 1 && (rhead.status != 100 || !req.expects_continue) {
                        out.clear();
                        h1::write_client_response(
                            out,
                            ubuf.filled(),
                            &rhead,
                            &r,
                            head.version,
                            true,
                        );
                        if client.write_all(out).await.is_err() {
                            return Outcome::Fatal(Failure::Client);
                        }
                    }
                    ubuf.consume(rhead.len);
                    continue;
                }
                Ok(Some(r)) => break r,
                Ok(None) => {}
                // A malformed response.
                Err(_) => return Outcome::Fatal(Failure::Protocol),
            }
        }
        match tokio::time::timeout_at(deadline, ubuf.read_from(&mut stream, max_head)).await {
            Err(_) => return Outcome::Fatal(Failure::Timeout),
            // Closed before answering: a request that can go again may, and
            // a pooled connection may have been let go by the upstream.
            Ok(Ok(0)) | Ok(Err(_))
                if ubuf.is_empty() && (req.replayable || (reused && !body_cut)) =>
            {
                return Outcome::Closed;
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Outcome::Fatal(Failure::Protocol),
            Ok(Ok(_)) => {}
        }
    };
    // A switch of protocols nobody asked for leaves the upstream connection
    // speaking something else: it is no answer, and the connection goes.
    if rhead.status == 101 && !info.upgrade {
        return Outcome::Fatal(Failure::Protocol);
    }
    let status = rhead.status;
    Outcome::Answered(
        Answer {
            stream,
            addr,
            ubuf,
            rhead,
            rinfo,
            body_cut,
        },
        status,
    )
}

/// Passes an answer to the client: an upgrade becomes a tunnel; anything
/// else is its head and body, the upstream connection pooled after when it
/// is at a message boundary.
async fn relay<S: AsyncRead + AsyncWrite + Unpin>(
    req: &Outgoing<'_>,
    side: &mut ClientSide<'_, S>,
    answer: Answer<'_>,
) -> Result<Done, Failure> {
    let Answer {
        mut stream,
        addr,
        mut ubuf,
        rhead,
        rinfo,
        body_cut,
    } = answer;
    let (head, info, limits) = (req.head, req.info, req.limits);
    let ClientSide { client, cbuf, out } = side;
    if req.replayable {
        cbuf.consume(head.len);
    }

    // Upgrades become a tunnel.
    if rhead.status == 101 && info.upgrade {
        out.clear();
        h1::write_client_response(out, ubuf.filled(), &rhead, &rinfo, head.version, true);
        out.extend_from_slice(&ubuf.filled()[rhead.len..]);
        client.write_all(out).await.map_err(|_| Failure::Client)?;
        if !cbuf.is_empty() {
            // The upstream did not take what the client sent after its
            // request.
            stream
                .write_all(cbuf.filled())
                .await
                .map_err(|_| Failure::Protocol)?;
            cbuf.consume(cbuf.filled().len());
        }
        let down = tunnel(*client, &mut stream, limits.tunnel_idle_timeout.get()).await;
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
        && !req
            .worker
            .shared
            .draining
            .load(std::sync::atomic::Ordering::Relaxed);
    out.clear();
    h1::write_client_response(out, ubuf.filled(), &rhead, &rinfo, head.version, keep_alive);
    let mut rbody = BodyProgress::new(rinfo.framing);
    let buffered = &ubuf.filled()[rhead.len..];
    // A malformed response body.
    let take = rbody.feed(buffered).map_err(|_| Failure::Protocol)?;
    let extra = buffered.len() > take;
    let mut bytes = take as u64;
    write_head_and_body(*client, out, &buffered[..take])
        .await
        .map_err(|_| Failure::Client)?;
    ubuf.consume(rhead.len + take);
    if !rbody.done() {
        let max_head = 64 * 1024;
        match stream_body(
            &mut stream,
            &mut ubuf,
            *client,
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
            Err(Side::Sink) => return Err(Failure::Client),
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
        req.worker
            .pool
            .put(addr, stream, req.upstream.settings.keep);
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
