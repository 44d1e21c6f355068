//! HTTP/2: clients that negotiate `h2` by ALPN or speak h2c with prior
//! knowledge, and upstreams that speak h2c (gRPC needs HTTP/2 end to end).
//!
//! HTTP/2 framing is hyper's; routing, balancing, forwarding headers,
//! failure statuses and metrics are the same as for HTTP/1.1. Bodies and
//! trailers stream through untouched.

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::config::UpstreamProtocol;
use super::proxy::{Worker, no_route, record};
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

type Body = Either<Incoming, Full<Bytes>>;

/// Upstream connections of one worker, by endpoint.
#[derive(Default)]
pub struct Clients {
    h2: RefCell<HashMap<SocketAddr, hyper::client::conn::http2::SendRequest<Incoming>>>,
    h1: RefCell<HashMap<SocketAddr, Vec<hyper::client::conn::http1::SendRequest<Incoming>>>>,
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

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves an HTTP/2 client connection until it ends or the worker drains.
pub async fn serve<S>(
    worker: Rc<Worker>,
    io: S,
    peer: SocketAddr,
    tls: bool,
    mut draining: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let worker = worker.clone();
        async move { Ok::<_, Infallible>(handle(&worker, req, peer, tls).await) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(LocalExec);
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = draining.wait_for(|d| *d) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
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

/// Headers that describe one connection; `te: trailers` is the exception
/// HTTP/2 allows, and gRPC needs it.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
    ] {
        headers.remove(name);
    }
    if headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

async fn handle(
    worker: &Worker,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    tls: bool,
) -> Response<Body> {
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
    let route = {
        let headers = req.headers();
        worker
            .shared
            .routes
            .load()
            .find(&host, req.uri().path(), &|name| {
                headers.get(name).map(HeaderValue::as_bytes)
            })
            .cloned()
    };
    let Some(route) = route else {
        record(&worker.shared, &no_route(), 404, started);
        return local(StatusCode::NOT_FOUND, "no route\n");
    };
    let route_name = route.name.clone();
    if route.redirect_https && !tls {
        let location = format!(
            "https://{authority}{}",
            req.uri().path_and_query().map_or("/", |p| p.as_str())
        );
        let mut r = local(StatusCode::PERMANENT_REDIRECT, "");
        if let Ok(v) = HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        record(&worker.shared, &route_name, 308, started);
        return r;
    }
    let Some(upstream) = route.pick(worker.roll()).cloned() else {
        record(&worker.shared, &route_name, 503, started);
        return local(StatusCode::SERVICE_UNAVAILABLE, "no upstream\n");
    };
    upstream.count_request();
    let Some(flight) = upstream.choose(worker.roll(), &[]) else {
        record(&worker.shared, &route_name, 503, started);
        return local(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream endpoint\n",
        );
    };
    let addr = flight.endpoint().addr;

    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    let client = peer.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {client}"),
        None => client.clone(),
    };
    let proto = if tls { "https" } else { "http" };
    // Earlier hops' elements are kept, as for HTTP/1.1.
    let mut forwarded = Vec::new();
    if let Some(previous) = headers.get(header::FORWARDED) {
        forwarded.extend_from_slice(previous.as_bytes());
        forwarded.extend_from_slice(b", ");
    }
    super::h1::write_forwarded_element(&mut forwarded, &client, proto, Some(authority.as_bytes()));
    for (name, value) in [
        ("x-forwarded-for", xff.into_bytes()),
        ("x-forwarded-proto", proto.as_bytes().to_vec()),
        ("forwarded", forwarded),
    ] {
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            headers.insert(name, v);
        }
    }
    if !headers.contains_key("x-request-id")
        && let Ok(v) = HeaderValue::from_str(&worker.request_id())
    {
        headers.insert("x-request-id", v);
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();

    let protocol = upstream.settings.protocol;
    let sent = tokio::time::timeout(upstream.settings.request_timeout, async {
        match protocol {
            UpstreamProtocol::H2c => {
                *req.uri_mut() = Uri::try_from(format!("http://{authority}{path}"))
                    .map_err(|_| Failure::Protocol)?;
                *req.version_mut() = hyper::Version::HTTP_2;
                send_h2(worker, &upstream, addr, req).await
            }
            UpstreamProtocol::Http1 => {
                *req.uri_mut() = Uri::try_from(path.as_str()).map_err(|_| Failure::Protocol)?;
                *req.version_mut() = hyper::Version::HTTP_11;
                if let Ok(v) = HeaderValue::from_str(&authority) {
                    req.headers_mut().insert(header::HOST, v);
                }
                send_h1(worker, &upstream, addr, req).await
            }
        }
    })
    .await;
    let (status, response) = match sent {
        Ok(Ok(mut response)) => {
            strip_hop_by_hop(response.headers_mut());
            let status = response.status();
            upstream.record(flight.endpoint(), !matches!(status.as_u16(), 502..=504));
            (status, response.map(Either::Left))
        }
        Ok(Err(Failure::Connect)) => {
            upstream.record(flight.endpoint(), false);
            (
                StatusCode::BAD_GATEWAY,
                local(StatusCode::BAD_GATEWAY, "upstream unreachable\n"),
            )
        }
        Ok(Err(Failure::Protocol)) => {
            upstream.record(flight.endpoint(), false);
            (
                StatusCode::BAD_GATEWAY,
                local(StatusCode::BAD_GATEWAY, "upstream failed\n"),
            )
        }
        Err(_) => {
            upstream.record(flight.endpoint(), false);
            (
                StatusCode::GATEWAY_TIMEOUT,
                local(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n"),
            )
        }
    };
    record(&worker.shared, &route_name, status.as_u16(), started);
    drop(flight);
    response
}

/// Why a request could not be forwarded.
enum Failure {
    Connect,
    Protocol,
}

async fn connect(upstream: &Upstream, addr: SocketAddr) -> Result<TcpStream, Failure> {
    match tokio::time::timeout(upstream.settings.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        _ => Err(Failure::Connect),
    }
}

async fn send_h2(
    worker: &Worker,
    upstream: &Upstream,
    addr: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, Failure> {
    let cached = worker
        .h2
        .h2
        .borrow()
        .get(&addr)
        .filter(|s| !s.is_closed())
        .cloned();
    let mut sender = match cached {
        Some(s) => s,
        None => {
            let stream = connect(upstream, addr).await?;
            let (sender, conn) = hyper::client::conn::http2::Builder::new(LocalExec)
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|_| Failure::Protocol)?;
            tokio::task::spawn_local(async move {
                let _ = conn.await;
            });
            worker.h2.h2.borrow_mut().insert(addr, sender.clone());
            sender
        }
    };
    sender.ready().await.map_err(|_| Failure::Protocol)?;
    sender
        .send_request(req)
        .await
        .map_err(|_| Failure::Protocol)
}

async fn send_h1(
    worker: &Worker,
    upstream: &Upstream,
    addr: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, Failure> {
    let idle = {
        let mut pool = worker.h2.h1.borrow_mut();
        let list = pool.entry(addr).or_default();
        list.retain(|s| !s.is_closed());
        let ready = list
            .iter()
            .position(hyper::client::conn::http1::SendRequest::is_ready);
        ready.map(|i| list.swap_remove(i))
    };
    let mut sender = match idle {
        Some(s) => s,
        None => {
            let stream = connect(upstream, addr).await?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|_| Failure::Protocol)?;
            tokio::task::spawn_local(async move {
                let _ = conn.await;
            });
            sender
        }
    };
    let response = sender
        .send_request(req)
        .await
        .map_err(|_| Failure::Protocol)?;
    // The connection is free again once this response's body is read; it
    // waits in the pool until then and is skipped while busy.
    worker
        .h2
        .h1
        .borrow_mut()
        .entry(addr)
        .or_default()
        .push(sender);
    Ok(response)
}
