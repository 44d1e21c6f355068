//! The HTTP/2 front end: clients that negotiate `h2` by ALPN or speak h2c
//! with prior knowledge.
//!
//! HTTP/2 framing is hyper's; routing, balancing, forwarding headers,
//! retries, failure statuses, metrics and the access log are the same as
//! for HTTP/1.1. Requests go upstream through `h2_upstream`, which HTTP/1.1
//! clients of h2c upstreams share (see `bridge`).

use std::borrow::Cow;
use std::cell::Cell;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body_util::{Either, Full};
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::access_log::{AccessLog, Entry};
use super::config::UpstreamProtocol;
use super::failure::Failure;
use super::h2_body::{Allowance, Capped, Meter, Metered, Stalls};
use super::h2_upstream::{FromUpstream, add_forwarding, send_with_retries, strip_hop_by_hop};
use super::routes::normalize_path;
use super::worker::{LocalExec, Shared, Worker, no_route, record};

/// The connection preface an h2c client with prior knowledge starts with.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A response body: the upstream's, or the proxy's own.
type Body = Either<Stalls<FromUpstream>, Full<Bytes>>;

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
            inner: Stalls::new(inner, body_timeout),
            meter: Allowance::new(max_body),
        })
    });
    match send_with_retries(worker, &upstream, req, replayable).await {
        Ok((mut response, addr)) => {
            finish.endpoint = Some(addr);
            strip_hop_by_hop(response.headers_mut());
            // An upstream that goes quiet mid-body is cut off as HTTP/1.1
            // cuts it off: the stream is reset.
            response.map(|inner| Either::Left(Stalls::new(inner, body_timeout)))
        }
        Err((failure, addr)) => {
            finish.endpoint = addr;
            let (status, body) = failure.answer();
            local(status, body)
        }
    }
}
