//! HTTP/2: clients that negotiate `h2` by ALPN or speak h2c with prior
//! knowledge, and upstreams that speak h2c (gRPC needs HTTP/2 end to end).
//!
//! HTTP/2 framing is hyper's; routing, balancing, forwarding headers,
//! retries, failure statuses, metrics and the access log are the same as
//! for HTTP/1.1. Bodies and trailers stream through untouched between h2
//! peers; HTTP/1.1 upstreams are spoken to by `h1_upstream`. HTTP/1.1
//! clients reach h2c upstreams through `send_with_retries` too (see
//! `bridge`).

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http_body_util::{Either, Full};
use hyper::body::{Body as _, Bytes, Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::access_log::{AccessLog, Entry};
use super::config::UpstreamProtocol;
use super::h1_upstream;
use super::proxy::{Shared, Worker, fail, no_route, record};
use super::retry::Attempts;
use super::routes::normalize_path;
use super::upstream::Upstream;

/// The connection preface an h2c client with prior knowledge starts with.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Runs hyper's tasks on the worker's own thread.
#[derive(Clone, Copy, Debug)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// A response body: the upstream's, or the proxy's own.
type Body = Either<Stalls<FromUpstream>, Full<Bytes>>;

/// A request body sent upstream: an HTTP/2 client's as it arrives, or one
/// read from an HTTP/1.1 client (empty for a retry's copy).
pub(super) type UpstreamBody = Either<Capped, Piped>;

/// An HTTP/2 client's request body, cut off with an error (which aborts
/// the upstream request) once its data passes the body limit: with or
/// without a `content-length`, DATA frames are counted as they pass.
pub(super) type Capped = Metered<Stalls<Incoming>, Allowance>;

/// A client's request body that fails when no frame comes within the body
/// read timeout (nginx's `client_body_timeout`), so a client that goes
/// quiet mid-body does not hold its stream and an upstream request open.
pub(super) struct Stalls<B> {
    inner: B,
    timeout: std::time::Duration,
    /// Armed when a poll finds nothing, from then; boxed only for bodies
    /// that ever have to wait.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A frame came since the timer was armed: wait afresh.
    rearm: bool,
    /// Set when the timeout cut the body off, so the failure that follows
    /// upstream is answered 408 and not blamed on the endpoint.
    stalled: Rc<Cell<bool>>,
}

/// The client's request body stopped coming.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body stopped coming")]
pub(super) struct BodyStalled;

impl<B> hyper::body::Body for Stalls<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            self.rearm = true;
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let this = &mut *self;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if std::mem::take(&mut this.rearm) {
            timer.as_mut().reset(deadline);
        }
        ready!(timer.as_mut().poll(cx));
        this.stalled.set(true);
        Poll::Ready(Some(Err(Box::new(BodyStalled))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// What is left of a request body's limit.
pub(super) struct Allowance {
    left: u64,
    /// Set when the limit cut the body off, so the failure that follows
    /// upstream is answered 413 and not blamed on the endpoint.
    exceeded: Rc<Cell<bool>>,
}

impl Meter for Allowance {
    fn data(&mut self, len: u64) -> bool {
        if len > self.left {
            self.exceeded.set(true);
            return false;
        }
        self.left -= len;
        true
    }
}

/// Sees the size of every DATA frame of a body.
pub(super) trait Meter {
    /// Counts `len` bytes of data; `false` cuts the body off there.
    fn data(&mut self, len: u64) -> bool;

    /// The body's reader asks for its next frame.
    fn polled(&mut self) {}
}

/// A body whose DATA frames pass through a meter on their way.
pub(super) struct Metered<B, M> {
    inner: B,
    meter: M,
}

/// The client's request body passed the body limit.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body is larger than allowed")]
pub(super) struct BodyTooLarge;

impl<B, M> hyper::body::Body for Metered<B, M>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    M: Meter + Unpin,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.meter.polled();
        let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &polled
            && let Some(data) = frame.data_ref()
            && !self.meter.data(data.len() as u64)
        {
            return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
        }
        Poll::Ready(polled.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body read from an HTTP/1.1 client and handed over piece by
/// piece; `None` marks its end. A sender dropped before the end aborts the
/// stream, so a body cut short never looks complete upstream.
pub(super) struct Piped(Option<mpsc::Receiver<Option<Bytes>>>);

/// The client's request body ended before its framing said it would.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body was cut short")]
pub(super) struct BodyCut;

impl Piped {
    /// An empty body.
    pub(super) fn empty() -> Self {
        Self(None)
    }

    /// A body fed through the returned sender; a few pieces are buffered,
    /// so a slow upstream slows the client down rather than filling memory.
    pub(super) fn channel() -> (mpsc::Sender<Option<Bytes>>, Self) {
        let (tx, rx) = mpsc::channel(4);
        (tx, Self(Some(rx)))
    }
}

impl hyper::body::Body for Piped {
    type Data = Bytes;
    type Error = BodyCut;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyCut>>> {
        let Some(rx) = self.0.as_mut() else {
            return Poll::Ready(None);
        };
        let piece = ready!(rx.poll_recv(cx));
        match piece {
            Some(Some(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Some(None) => {
                self.0 = None;
                Poll::Ready(None)
            }
            None => {
                self.0 = None;
                Poll::Ready(Some(Err(BodyCut)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}

/// The h2c upstream connections of one worker, one shared connection per
/// endpoint. HTTP/1.1 upstreams of HTTP/2 clients use the worker's pool,
/// as HTTP/1.1 clients do (see `h1_upstream`).
#[derive(Default)]
pub struct Clients {
    h2: RefCell<HashMap<SocketAddr, hyper::client::conn::http2::SendRequest<UpstreamBody>>>,
}

impl Clients {
    /// Forgets h2c connections that have closed.
    pub fn expire(&self) {
        self.h2.borrow_mut().retain(|_, s| !s.is_closed());
    }
}

/// A response body from an upstream: an h2c stream's, or one read from an
/// HTTP/1.1 connection.
pub(super) enum FromUpstream {
    /// From an h2c upstream.
    H2(Incoming),
    /// From an HTTP/1.1 upstream.
    H1(h1_upstream::Body),
}

impl hyper::body::Body for FromUpstream {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = match self.get_mut() {
            Self::H2(b) => ready!(Pin::new(b).poll_frame(cx)).map(|r| r.map_err(Into::into)),
            Self::H1(b) => ready!(Pin::new(b).poll_frame(cx)).map(|r| r.map_err(Into::into)),
        };
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::H2(b) => b.is_end_stream(),
            Self::H1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Self::H2(b) => b.size_hint(),
            Self::H1(b) => b.size_hint(),
        }
    }
}

/// A stream that yields `prefix` before the bytes of `inner`: the bytes
/// read while telling HTTP/1.1 from h2c.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, with `prefix` read first.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.drain(..n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    // Forwarded so the HTTP/2 server writes a frame's head and payload in
    // one system call, as it does on a connection that is not prefixed.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves an HTTP/2 client connection until it ends or the worker drains.
pub async fn serve<S>(worker: Rc<Worker>, io: S, peer: SocketAddr, tls: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let drain = worker.clone();
    let (first_stream, keepalive, max_streams, send_timeout, ping) = {
        let limits = worker.shared.limits.load();
        (
            limits.header_read_timeout.get(),
            limits.keepalive_timeout.get(),
            limits.h2_max_concurrent_streams,
            limits.send_timeout.get(),
            limits.h2_ping_interval.get(),
        )
    };
    let streams = Rc::new(Streams {
        open: Cell::new(0),
        waiting: Cell::new(0),
        progress: Cell::new(tokio::time::Instant::now()),
        served: Cell::new(false),
        since: Cell::new(tokio::time::Instant::now()),
        quiet: tokio::sync::Notify::new(),
    });
    let counted = streams.clone();
    let service = hyper::service::service_fn(move |req| {
        let worker = worker.clone();
        let stream = OpenStream::new(&counted);
        async move { Ok::<_, Infallible>(handle(&worker, req, peer, tls, stream).await) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(LocalExec);
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(max_streams);
    // Pings find a peer that vanished without a word while its streams wait
    // on it; unanswered for as long again, the connection closes.
    if !ping.is_zero() {
        builder.keep_alive_interval(ping).keep_alive_timeout(ping);
    }
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    // A client must open its first stream within the header timeout (which
    // bounds the handshake too), and another within the keep-alive timeout
    // of its streams all ending, as nginx's keepalive_timeout does. A client
    // that takes none of the response data waiting for it for the send
    // timeout is cut off, as nginx's send_timeout cuts it off: its streams
    // hold upstream connections. Checked every send timeout, so a stall is
    // found within two.
    let mut check = tokio::time::Instant::now() + send_timeout;
    loop {
        let idle = if streams.served.get() {
            keepalive
        } else {
            first_stream
        };
        tokio::select! {
            _ = conn.as_mut() => return,
            () = drain.drained() => break,
            () = streams.quiet.notified(), if streams.open.get() > 0 => {}
            // Always armed: a stream may open while the loop waits.
            () = tokio::time::sleep_until(check) => {
                let now = tokio::time::Instant::now();
                check = now + send_timeout;
                if streams.waiting.get() > 0 {
                    let stalled = streams.progress.get() + send_timeout;
                    if stalled <= now {
                        return;
                    }
                    check = stalled;
                }
            }
            () = tokio::time::sleep_until(streams.since.get() + idle), if streams.open.get() == 0 => {
                if streams.open.get() == 0
                    && streams.since.get() + idle <= tokio::time::Instant::now()
                {
                    break;
                }
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// The streams open on one HTTP/2 client connection, for its idle and send
/// timeouts.
struct Streams {
    open: Cell<usize>,
    /// Streams whose last frame of response data the client has not taken
    /// yet (it waits for flow-control window or the socket).
    waiting: Cell<usize>,
    /// When the client last took response data, or was handed some.
    progress: Cell<tokio::time::Instant>,
    /// Whether any stream was opened yet.
    served: Cell<bool>,
    /// When the last stream ended (or the connection began).
    since: Cell<tokio::time::Instant>,
    /// Signalled when the last open stream ends.
    quiet: tokio::sync::Notify,
}

/// One open stream: counted from its request until its response body is
/// done with.
struct OpenStream {
    streams: Rc<Streams>,
    /// Whether the client has yet to take the frame handed over last.
    waiting: bool,
}

impl OpenStream {
    fn new(streams: &Rc<Streams>) -> Self {
        streams.open.set(streams.open.get() + 1);
        streams.served.set(true);
        Self {
            streams: streams.clone(),
            waiting: false,
        }
    }

    /// A frame of response data was handed to the connection.
    fn handed_over(&mut self) {
        let streams = &self.streams;
        if !self.waiting {
            self.waiting = true;
            streams.waiting.set(streams.waiting.get() + 1);
        }
        streams.progress.set(tokio::time::Instant::now());
    }

    /// The connection asks for the next frame: the last one was taken.
    fn taken(&mut self) {
        if std::mem::take(&mut self.waiting) {
            let streams = &self.streams;
            streams.waiting.set(streams.waiting.get() - 1);
            streams.progress.set(tokio::time::Instant::now());
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.taken();
        let streams = &self.streams;
        streams.open.set(streams.open.get() - 1);
        if streams.open.get() == 0 {
            streams.since.set(tokio::time::Instant::now());
            streams.quiet.notify_one();
        }
    }
}

fn local(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that describe one connection; `te: trailers` is the exception
/// HTTP/2 allows, and gRPC needs it. Names are constants, not text to
/// parse for every request.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Usually `keep-alive` or `close`: nothing to collect then.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
        // As for HTTP/1.1: the Host routed by and a length framing a body
        // are not the sender's to remove.
        .filter(|t| !t.eq_ignore_ascii_case("host") && !t.eq_ignore_ascii_case("content-length"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    if headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

/// Adds this hop's `X-Forwarded-For`, `X-Forwarded-Proto`, `Forwarded` and,
/// when the client sent none, `x-request-id`; earlier hops' elements, of
/// every line in order, are kept, as for HTTP/1.1.
pub(super) fn add_forwarding(
    headers: &mut HeaderMap,
    client: &str,
    tls: bool,
    authority: &[u8],
    request_id: impl FnOnce() -> String,
) {
    let mut xff = Vec::new();
    for previous in headers.get_all(X_FORWARDED_FOR) {
        xff.extend_from_slice(previous.as_bytes());
        xff.extend_from_slice(b", ");
    }
    xff.extend_from_slice(client.as_bytes());
    let proto = if tls { "https" } else { "http" };
    let mut forwarded = Vec::new();
    for previous in headers.get_all(header::FORWARDED) {
        forwarded.extend_from_slice(previous.as_bytes());
        forwarded.extend_from_slice(b", ");
    }
    super::h1::write_forwarded_element(&mut forwarded, client, proto, Some(authority));
    for (name, value) in [(X_FORWARDED_FOR, xff), (header::FORWARDED, forwarded)] {
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
            headers.insert(name, v);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if !headers.contains_key(X_REQUEST_ID)
        && let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(request_id()))
    {
        headers.insert(X_REQUEST_ID, v);
    }
}

/// What the access log says of a request besides its outcome.
struct LogFields {
    client: IpAddr,
    method: Method,
    host: String,
    target: String,
}

/// A request's outcome, counted in the metrics and written to the access
/// log when dropped: with its response body, or with the request if the
/// client gave up first (then as 499, as HTTP/1.1 counts it).
struct Finish {
    shared: Arc<Shared>,
    started: Instant,
    route: Arc<str>,
    status: u16,
    bytes: u64,
    upstream: Option<Arc<str>>,
    endpoint: Option<SocketAddr>,
    log: Option<(Arc<AccessLog>, LogFields)>,
    /// Held until the response body is done with: the stream is open.
    _stream: OpenStream,
}

impl Drop for Finish {
    fn drop(&mut self) {
        record(&self.shared, &self.route, self.status, self.started);
        if let Some((log, fields)) = &self.log {
            log.write(&Entry {
                client: fields.client,
                method: fields.method.as_str(),
                host: &fields.host,
                target: &fields.target,
                status: self.status,
                bytes: self.bytes,
                duration: self.started.elapsed(),
                route: &self.route,
                upstream: self.upstream.as_deref(),
                endpoint: self.endpoint,
            });
        }
    }
}

/// A response body on its way to an HTTP/2 client, counting its bytes; the
/// request is recorded when it ends, as HTTP/1.1 records it once its
/// response is written.
type Logged = Metered<Body, Finish>;

impl Meter for Finish {
    fn data(&mut self, len: u64) -> bool {
        self.bytes += len;
        self._stream.handed_over();
        true
    }

    fn polled(&mut self) {
        self._stream.taken();
    }
}

async fn handle(
    worker: &Rc<Worker>,
    req: Request<Incoming>,
    peer: SocketAddr,
    tls: bool,
    stream: OpenStream,
) -> Response<Logged> {
    let started = Instant::now();
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let host = authority
        .rsplit_once(':')
        .map_or(authority.as_str(), |(h, _)| h)
        .to_ascii_lowercase();
    let log = worker.shared.access_log.load_full().map(|log| {
        let fields = LogFields {
            client: peer.ip(),
            method: req.method().clone(),
            host: host.clone(),
            target: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
        };
        (log, fields)
    });
    let mut finish = Finish {
        shared: worker.shared.clone(),
        started,
        route: no_route(),
        status: 499,
        bytes: 0,
        upstream: None,
        endpoint: None,
        log,
        _stream: stream,
    };
    let response = respond(worker, req, peer, tls, &authority, &host, &mut finish).await;
    finish.status = response.status().as_u16();
    response.map(|inner| Metered {
        inner,
        meter: finish,
    })
}

/// Routes and forwards one request, noting its route, upstream and
/// endpoint in `finish`.
async fn respond(
    worker: &Rc<Worker>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    tls: bool,
    authority: &str,
    host: &str,
    finish: &mut Finish,
) -> Response<Body> {
    // As for HTTP/1.1: an absolute path (or `OPTIONS *`), so no CONNECT and
    // no target an upstream could read as another request line.
    let target = req.uri().path_and_query().map_or("", |p| p.as_str());
    if !(target.starts_with('/') || (req.method() == Method::OPTIONS && target == "*")) {
        return local(
            StatusCode::BAD_REQUEST,
            "request target must be an absolute path\n",
        );
    }
    // Routed by the normal form of its path, and forwarded with it, as
    // HTTP/1.1 requests are.
    if let Cow::Owned(path) = normalize_path(req.uri().path()) {
        let query = req.uri().query().map(|q| ["?", q].concat());
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = [path, query.unwrap_or_default()].concat().parse().ok();
        match Uri::from_parts(parts) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return local(StatusCode::BAD_REQUEST, "invalid request target\n"),
        }
    }
    let route = {
        let headers = req.headers();
        worker
            .shared
            .routes
            .load()
            .find(host, req.uri().path(), &|name| {
                headers.get(name).map(HeaderValue::as_bytes)
            })
            .cloned()
    };
    let Some(route) = route else {
        return local(StatusCode::NOT_FOUND, "no route\n");
    };
    finish.route = route.name.clone();
    if route.redirect_https && !tls {
        let location = format!(
            "https://{authority}{}",
            req.uri().path_and_query().map_or("/", |p| p.as_str())
        );
        let mut r = local(StatusCode::PERMANENT_REDIRECT, "");
        if let Ok(v) = HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return r;
    }
    let Some(upstream) = route.pick(worker.roll()).cloned() else {
        return local(StatusCode::SERVICE_UNAVAILABLE, "no upstream\n");
    };
    upstream.count_request();
    finish.upstream = Some(upstream.name.clone());

    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    add_forwarding(
        headers,
        &peer.ip().to_string(),
        tls,
        authority.as_bytes(),
        || worker.request_id().as_str().to_owned(),
    );
    match upstream.settings.protocol {
        UpstreamProtocol::H2c => {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let Ok(target) = Uri::try_from(format!("http://{authority}{path}")) else {
                let (status, body) = Failure::Protocol.answer();
                return local(status, body);
            };
            *req.version_mut() = hyper::Version::HTTP_2;
            *req.uri_mut() = target;
        }
        // The request line is written from the URI's path and query, so
        // the URI stays as the client sent it.
        UpstreamProtocol::Http1 => {
            *req.version_mut() = hyper::Version::HTTP_11;
            let Ok(host) = HeaderValue::from_str(authority) else {
                let (status, body) = Failure::Protocol.answer();
                return local(status, body);
            };
            req.headers_mut().insert(header::HOST, host);
        }
    }
    let replayable = req.method().is_idempotent() && req.body().is_end_stream();
    let (max_body, body_timeout) = {
        let limits = worker.shared.limits.load();
        (
            limits.max_body_bytes.bytes(),
            limits.body_read_timeout.get(),
        )
    };
    // A declared length past the limit is refused before anything goes
    // upstream; a body without one is cut off where it passes the limit.
    if req.body().size_hint().lower() > max_body {
        let (status, body) = Failure::BodyTooLarge.answer();
        return local(status, body);
    }
    let req = req.map(|inner| {
        Either::Left(Capped {
            inner: Stalls {
                inner,
                timeout: body_timeout,
                timer: None,
                rearm: false,
                stalled: Rc::default(),
            },
            meter: Allowance {
                left: max_body,
                exceeded: Rc::default(),
            },
        })
    });
    match send_with_retries(worker, &upstream, req, replayable).await {
        Ok((mut response, addr)) => {
            finish.endpoint = Some(addr);
            strip_hop_by_hop(response.headers_mut());
            // An upstream that goes quiet mid-body is cut off as HTTP/1.1
            // cuts it off: the stream is reset.
            response.map(|inner| {
                Either::Left(Stalls {
                    inner,
                    timeout: body_timeout,
                    timer: None,
                    rearm: false,
                    stalled: Rc::default(),
                })
            })
        }
        Err((failure, addr)) => {
            finish.endpoint = addr;
            let (status, body) = failure.answer();
            local(status, body)
        }
    }
}

/// Why a request could not be forwarded.
#[derive(Debug, Clone, Copy)]
pub(super) enum Failure {
    /// No connection to the endpoint.
    Connect { timed_out: bool },
    /// No response head within the request timeout.
    Timeout,
    /// The upstream broke the protocol or the connection.
    Protocol,
    /// No endpoint was available to try.
    NoEndpoint,
    /// The client's request body passed the body limit.
    BodyTooLarge,
    /// The client's request body stopped coming for the body read timeout.
    BodyStalled,
    /// A pooled HTTP/1.1 connection closed before any answer to a request
    /// without a body: the upstream had let it go, so a new one may retry.
    Stale,
}

impl Failure {
    /// The status and text that answer the client, as for HTTP/1.1.
    pub(super) fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Connect { timed_out: true } | Self::Timeout => {
                (StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n")
            }
            Self::Connect { timed_out: false } => {
                (StatusCode::BAD_GATEWAY, "upstream unreachable\n")
            }
            Self::Protocol | Self::Stale => (StatusCode::BAD_GATEWAY, "upstream failed\n"),
            Self::NoEndpoint => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream endpoint\n",
            ),
            Self::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
            Self::BodyStalled => (
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time\n",
            ),
        }
    }
}

/// Sends `req` to an endpoint of `upstream`, retried on other endpoints as
/// HTTP/1.1 retries: a request whose connection could not be made goes
/// elsewhere whatever it is; one that was sent and failed before an answer,
/// or got a configured status, only when it is `replayable` (idempotent with
/// an empty body, so every attempt can send a copy). All within the policy
/// and the budget. Returns the response and the endpoint that gave it. A
/// failure names an endpoint only when one is to blame for the answer (it
/// timed out), as HTTP/1.1 logs it; when the retries ran out there is none.
pub(super) async fn send_with_retries(
    worker: &Rc<Worker>,
    upstream: &Upstream,
    req: Request<UpstreamBody>,
    replayable: bool,
) -> Result<(Response<FromUpstream>, SocketAddr), (Failure, Option<SocketAddr>)> {
    let mut attempts = Attempts::new(worker, upstream, replayable);
    let Some(mut flight) = attempts.first() else {
        return Err((Failure::NoEndpoint, None));
    };
    let (mut parts, body) = req.into_parts();
    let (exceeded, stalled) = match &body {
        Either::Left(capped) => (capped.meter.exceeded.clone(), capped.inner.stalled.clone()),
        Either::Right(_) => (Rc::default(), Rc::default()),
    };
    let mut body = Some(body);
    // A pooled HTTP/1.1 connection the upstream had already closed is no
    // fault of the endpoint: the request goes once more on a new one.
    let (mut pooled, mut fresh_retry_used) = (true, false);
    loop {
        let addr = flight.endpoint().addr;
        // The request is built only once a connection is at hand, so one
        // that never left keeps its body for the next endpoint.
        // A connection whose handshake hangs is a connection not made:
        // the whole of opening it is held to the connect timeout.
        let opened = tokio::time::timeout(
            upstream.settings.connect_timeout,
            open(worker, upstream, addr, pooled, replayable),
        )
        .await
        .unwrap_or(Err(Failure::Connect { timed_out: true }));
        let conn = match opened {
            Ok(conn) => conn,
            Err(failure) => {
                upstream.record(flight.endpoint(), false);
                fail(worker, upstream, "connect");
                match attempts.retry_unsent(addr) {
                    Some(next) => {
                        (flight, pooled) = (next, true);
                        continue;
                    }
                    None => return Err((failure, None)),
                }
            }
        };
        let attempt = Attempt {
            body: body.take().unwrap_or_else(|| Either::Right(Piped::empty())),
            may_retry: attempts.may_retry(),
        };
        let next = match send(worker, upstream, addr, conn, &mut parts, attempt).await {
            Ok(response) => {
                let status = response.status().as_u16();
                match attempts.retry_status(addr, status) {
                    Some(next) => next,
                    None => {
                        upstream.record(flight.endpoint(), !matches!(status, 502..=504));
                        return Ok((response, addr));
                    }
                }
            }
            // The client's body broke the request, not the endpoint (a body
            // that can be cut off is never replayed).
            Err(_) if exceeded.get() => return Err((Failure::BodyTooLarge, None)),
            Err(_) if stalled.get() => return Err((Failure::BodyStalled, None)),
            Err(Failure::Stale) if replayable && !fresh_retry_used => {
                (pooled, fresh_retry_used) = (false, true);
                continue;
            }
            // One that cannot go again fails, but the endpoint is not to
            // blame: it closed an idle connection as the request went out.
            Err(Failure::Stale) if !replayable => {
                fail(worker, upstream, "stale_connection");
                return Err((Failure::Protocol, Some(addr)));
            }
            Err(Failure::Timeout) => {
                upstream.record(flight.endpoint(), false);
                fail(worker, upstream, "timeout");
                return Err((Failure::Timeout, Some(addr)));
            }
            // Nothing reached the client: tried elsewhere if the request
            // allows, as HTTP/1.1 retries a connection closed before an
            // answer.
            Err(failure) => {
                fail(worker, upstream, "protocol");
                match attempts.retry(addr) {
                    Some(next) => next,
                    None => {
                        upstream.record(flight.endpoint(), false);
                        return Err((failure, None));
                    }
                }
            }
        };
        upstream.record(flight.endpoint(), false);
        (flight, pooled) = (next, true);
    }
}

/// A connection to an endpoint, ready to carry one request.
enum Conn {
    /// The endpoint's shared h2c connection.
    H2(hyper::client::conn::http2::SendRequest<UpstreamBody>),
    /// An HTTP/1.1 connection of its own, from the pool (`reused`) or new.
    H1 { stream: TcpStream, reused: bool },
}

/// A connection to `addr` for one request of `upstream`: nothing of the
/// request is sent yet.
async fn open(
    worker: &Worker,
    upstream: &Upstream,
    addr: SocketAddr,
    pooled: bool,
    replayable: bool,
) -> Result<Conn, Failure> {
    // Making a connection is boxed: it is rare, and its state would
    // otherwise make every request's task larger.
    match upstream.settings.protocol {
        UpstreamProtocol::H2c => {
            let cached = worker
                .h2
                .h2
                .borrow()
                .get(&addr)
                .filter(|s| !s.is_closed())
                .cloned();
            let mut sender = match cached {
                Some(s) => s,
                None => Box::pin(handshake_h2c(worker, upstream, addr)).await?,
            };
            sender.ready().await.map_err(|_| Failure::Protocol)?;
            Ok(Conn::H2(sender))
        }
        UpstreamProtocol::Http1 => match pooled
            .then(|| worker.pool.take_for(addr, replayable))
            .flatten()
        {
            Some(stream) => Ok(Conn::H1 {
                stream,
                reused: true,
            }),
            None => Ok(Conn::H1 {
                stream: Box::pin(connect(upstream, addr)).await?,
                reused: false,
            }),
        },
    }
}

/// A new h2c connection to `addr`, kept for the worker's later requests.
async fn handshake_h2c(
    worker: &Worker,
    upstream: &Upstream,
    addr: SocketAddr,
) -> Result<hyper::client::conn::http2::SendRequest<UpstreamBody>, Failure> {
    let stream = connect(upstream, addr).await?;
    let ping = worker.shared.limits.load().h2_ping_interval.get();
    let mut builder = hyper::client::conn::http2::Builder::new(LocalExec);
    builder.timer(TokioTimer::new());
    // An endpoint that vanished (its host gone, no reset) fails its
    // requests within two ping intervals instead of their whole timeout.
    if !ping.is_zero() {
        builder.keep_alive_interval(ping).keep_alive_timeout(ping);
    }
    let (sender, conn) = builder
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|_| Failure::Protocol)?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    worker.h2.h2.borrow_mut().insert(addr, sender.clone());
    Ok(sender)
}

/// One attempt's share of a request: its body, and whether another
/// attempt may follow (and so need the head again).
struct Attempt {
    body: UpstreamBody,
    may_retry: bool,
}

/// Sends the request of `parts` on `conn` and waits for the response head,
/// for at most the upstream's request timeout.
async fn send(
    worker: &Rc<Worker>,
    upstream: &Upstream,
    addr: SocketAddr,
    conn: Conn,
    parts: &mut hyper::http::request::Parts,
    attempt: Attempt,
) -> Result<Response<FromUpstream>, Failure> {
    let timeout = upstream.settings.request_timeout;
    match conn {
        Conn::H2(mut sender) => {
            let mut req = Request::new(attempt.body);
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = parts.uri.clone();
            *req.version_mut() = parts.version;
            // The headers are copied only while another attempt may need
            // them.
            *req.headers_mut() = if attempt.may_retry {
                parts.headers.clone()
            } else {
                std::mem::take(&mut parts.headers)
            };
            // hyper sends the body while it waits for the answer, so the
            // timeout covers both.
            let response = tokio::time::timeout(timeout, sender.send_request(req))
                .await
                .map_err(|_| Failure::Timeout)?
                .map_err(|_| Failure::Protocol)?;
            Ok(response.map(FromUpstream::H2))
        }
        Conn::H1 { stream, reused } => {
            let exchange = h1_upstream::Exchange {
                origin: h1_upstream::Origin {
                    addr,
                    keep: upstream.settings.keep,
                },
                reused,
                timeout,
            };
            // The head is written from `parts`, so retries need no copy.
            let response = h1_upstream::send(worker, exchange, stream, parts, attempt.body).await?;
            Ok(response.map(FromUpstream::H1))
        }
    }
}

async fn connect(upstream: &Upstream, addr: SocketAddr) -> Result<TcpStream, Failure> {
    upstream.dial(addr).await.map_err(|e| Failure::Connect {
        timed_out: e.timed_out,
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use super::*;
    use crate::ingress::config::LbPolicy;

    /// Reads a request head from `s`.
    fn read_head(s: &mut std::net::TcpStream) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
    }

    #[test]
    fn a_pooled_connection_found_closed_is_retried_once_on_a_new_one() {
        // The upstream's first connection takes the request and closes
        // unanswered, as an upstream does that let it go idle meanwhile;
        // its second answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        // Gives up after a few seconds, so a proxy that never reconnects
        // fails the test rather than hanging it.
        let accept = move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        return Some(s);
                    }
                    Err(_) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => return None,
                }
            }
        };
        let upstream_side = std::thread::spawn(move || {
            let mut first = accept().expect("the pooled connection");
            read_head(&mut first);
            drop(first);
            if let Some(mut second) = accept() {
                read_head(&mut second);
                let _ = second.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let worker = Rc::new(Worker::for_tests());
        let upstream = Upstream::new("u", vec![addr], LbPolicy::RoundRobin);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let status = tokio::task::LocalSet::new().block_on(&runtime, async {
            let idle = TcpStream::connect(addr).await.unwrap();
            worker.pool.put(addr, idle, upstream.settings.keep);
            let req = Request::get("/x")
                .header(header::HOST, "example.com")
                .body(Either::Right(Piped::empty()))
                .unwrap();
            match send_with_retries(&worker, &upstream, req, true).await {
                Ok((response, _)) => Ok(response.status().as_u16()),
                Err((failure, _)) => Err(failure),
            }
        });
        // With the one endpoint tried already, anything but a retry on a
        // new connection would have been a 502.
        assert_eq!(status.unwrap(), 200);
        upstream_side.join().unwrap();
    }
}
