//! Requests in their HTTP/2 form (an HTTP/2 client's, or an HTTP/1.1
//! client's bound for an h2c upstream) sent to an upstream of either
//! protocol with retries: its forwarding headers, the connection (the
//! endpoint's shared h2c one, or a pooled HTTP/1.1 one through
//! `h1_upstream`), and the response body coming back.

use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use http_body_util::Either;
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response};

use super::dispatch::{Conn, Outcome, dispatch};
use super::failure::Failure;
use super::h1_upstream;
use super::h2_body::{Piped, UpstreamBody};
use super::upstream::Upstream;
use super::worker::Worker;

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
    // As for HTTP/1.1: a line that is no RFC 7239 list would make the whole
    // header unreadable, this hop's element included, so it is dropped.
    for previous in headers
        .get_all(header::FORWARDED)
        .iter()
        .filter(|v| super::h1::is_forwarded_list(v.as_bytes()))
    {
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

/// Sends `req` to an endpoint of `upstream` through the one dispatch path
/// (see [`dispatch`]), `replayable` when every attempt can send a copy of
/// it. Returns the response and the endpoint that gave it, or the failure
/// and the endpoint to blame for it, if any.
pub(super) async fn send_with_retries(
    worker: &Rc<Worker>,
    upstream: &Upstream,
    req: Request<UpstreamBody>,
    replayable: bool,
) -> Result<(Response<FromUpstream>, SocketAddr), (Failure, Option<SocketAddr>)> {
    let (mut parts, body) = req.into_parts();
    let (exceeded, stalled) = match &body {
        Either::Left(capped) => (capped.meter.exceeded.clone(), capped.inner.stalled.clone()),
        Either::Right(_) => (Rc::default(), Rc::default()),
    };
    let mut body = Some(body);
    let sent = dispatch(
        worker,
        upstream,
        replayable,
        async |conn, addr, may_retry| {
            // The body goes with the first attempt that has a connection; one
            // that never left keeps it for the next endpoint.
            let attempt = Attempt {
                body: body.take().unwrap_or_else(|| Either::Right(Piped::empty())),
                may_retry,
            };
            match send(worker, upstream, addr, conn, &mut parts, attempt).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    Outcome::Answered(response, status)
                }
                // The client's body broke the request, not the endpoint (a body
                // that can be cut off is never replayed).
                Err(_) if exceeded.get() => Outcome::Fatal(Failure::BodyTooLarge),
                Err(_) if stalled.get() => Outcome::Fatal(Failure::BodyStalled),
                Err(Failure::Timeout) => Outcome::Fatal(Failure::Timeout),
                Err(Failure::Stale) => Outcome::Closed,
                // Nothing reached the client: tried elsewhere if the request
                // allows, as HTTP/1.1 retries a connection closed before an
                // answer.
                Err(_) => Outcome::Failed,
            }
        },
    )
    .await;
    sent.map(|(response, flight)| (response, flight.endpoint().addr))
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_malformed_forwarded_line_is_dropped_and_this_hop_added() {
        let mut headers = HeaderMap::new();
        headers.append(header::FORWARDED, HeaderValue::from_static("for=192.0.2.1"));
        headers.append(
            header::FORWARDED,
            HeaderValue::from_static("for=\"unclosed"),
        );
        add_forwarding(&mut headers, "192.0.2.9", false, b"a.test", String::new);
        let forwarded = headers.get(header::FORWARDED).unwrap().to_str().unwrap();
        assert!(forwarded.starts_with("for=192.0.2.1, for="), "{forwarded}");
        assert!(!forwarded.contains("unclosed"), "{forwarded}");
        assert!(forwarded.contains("192.0.2.9"), "{forwarded}");
    }

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
            let idle = tokio::net::TcpStream::connect(addr).await.unwrap();
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
