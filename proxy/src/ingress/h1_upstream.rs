//! HTTP/1.1 upstreams of HTTP/2 clients, on the proxy's own exchange: the
//! worker's pool of upstream connections (the one HTTP/1.1 clients use),
//! the request head written in one go, the response read into a pooled
//! buffer and handed to hyper's HTTP/2 server frame by frame. A client
//! library's connection task, its channels and its fresh read buffer per
//! response cost more than the rest of such a request's own work.
//!
//! The request body, if any, is sent whole before the response is read (as
//! nginx buffers it): an HTTP/1.1 upstream that answers early gets the rest
//! of the body anyway, and one that closes instead has its answer read all
//! the same. Response trailers are dropped; HTTP/1.1 upstreams rarely send
//! them, and gRPC, which needs them, uses h2c upstreams.

use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Body as _, Bytes, Frame};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::body::{BodyError, BodyProgress};
use super::failure::Failure;
use super::h1::{self, Head};
use super::h2_body::UpstreamBody;
use super::pool::Keep;
use super::worker::{LeasedBuf, Worker};

/// The largest response head accepted, as for HTTP/1.1 clients.
const MAX_HEAD: usize = 64 * 1024;

/// Where a response came from and where its connection goes afterwards.
pub(super) struct Origin {
    /// The endpoint.
    pub addr: SocketAddr,
    /// How its idle connections are kept.
    pub keep: Keep,
}

/// How one request goes to an HTTP/1.1 upstream.
pub(super) struct Exchange {
    /// The endpoint, and how its connections are kept.
    pub origin: Origin,
    /// Whether the connection came from the pool.
    pub reused: bool,
    /// How long the answer may take once the request is sent, as for
    /// HTTP/1.1 clients: a slow upload is the client's, not the endpoint's.
    pub timeout: Duration,
}

/// Sends the request of `parts` and `body` on `stream` and reads the
/// response head; the body follows from the connection as the client
/// reads it.
pub(super) async fn send(
    worker: &Rc<Worker>,
    exchange: Exchange,
    mut stream: TcpStream,
    parts: &Parts,
    mut body: UpstreamBody,
) -> Result<Response<Body>, Failure> {
    let is_head = parts.method == Method::HEAD;
    let bodiless = body.is_end_stream();
    // A pooled connection the upstream closed meanwhile fails at once,
    // before any answer: then a request without a body may go again on a
    // new connection, and none is the endpoint's fault.
    let stale = if exchange.reused {
        Failure::Stale
    } else {
        Failure::Protocol
    };
    let mut out = worker.take_write_buffer();
    let chunked = write_head(&mut out, parts, bodiless);
    let written = stream.write_all(&out).await;
    worker.give_write_buffer(out);
    written.map_err(|_| stale)?;
    // Boxed: most requests have no body, and its state would make every
    // request's task larger.
    let body_sent = bodiless || Box::pin(send_body(&mut stream, &mut body, chunked)).await?;
    let deadline = tokio::time::Instant::now() + exchange.timeout;

    let mut buf = LeasedBuf::new(worker.clone());
    let mut head = Head::default();
    // Whether the upstream said anything at all (an interim answer counts).
    let mut heard = false;
    let info = loop {
        if !buf.is_empty() {
            match h1::parse_response(buf.filled(), &mut head, MAX_HEAD, is_head) {
                // Interim answers have no HTTP/2 form here; the final one
                // follows on the same connection.
                Ok(Some(_)) if (100..200).contains(&head.status) && head.status != 101 => {
                    buf.consume(head.len);
                    continue;
                }
                Ok(Some(info)) => break info,
                Ok(None) => {}
                Err(_) => return Err(Failure::Protocol),
            }
        }
        match tokio::time::timeout_at(deadline, buf.read_from(&mut stream, MAX_HEAD)).await {
            Err(_) => return Err(Failure::Timeout),
            Ok(Ok(0) | Err(_)) if !heard => return Err(stale),
            Ok(Ok(0) | Err(_)) => return Err(Failure::Protocol),
            Ok(Ok(_)) => heard = true,
        }
    };
    // Nothing was asked to upgrade: a 101 is not an answer to this request.
    let status = match StatusCode::from_u16(head.status) {
        Ok(s) if s != StatusCode::SWITCHING_PROTOCOLS => s,
        _ => return Err(Failure::Protocol),
    };
    let headers = response_headers(buf.filled(), &head)?;
    buf.consume(head.len);
    let mut body = Body {
        progress: BodyProgress::new(info.framing),
        // Part of a request body left on it, the connection is done.
        reusable: info.reusable && body_sent,
        stream: Some(stream),
        buf,
        origin: exchange.origin,
        ended: false,
    };
    // hyper does not poll a body that says it is over, so such a body
    // gives its connection back now.
    if body.progress.done() {
        body.finish();
    }
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// Writes the request head; returns whether the body goes chunked.
fn write_head(out: &mut Vec<u8>, parts: &Parts, ended: bool) -> bool {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        // `te: trailers` is for HTTP/2 peers, and the body is sent whole
        // whatever an `expect` asks.
        if ![header::COOKIE, header::TE, header::EXPECT].contains(name) {
            push_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    // HTTP/2 may split cookies over several fields; HTTP/1.1 wants one
    // (RFC 9113 §8.2.3).
    for (i, value) in parts.headers.get_all(header::COOKIE).iter().enumerate() {
        out.extend_from_slice(if i == 0 { b"cookie: " } else { b"; " });
        out.extend_from_slice(value.as_bytes());
    }
    if parts.headers.contains_key(header::COOKIE) {
        out.extend_from_slice(b"\r\n");
    }
    let sized = parts.headers.contains_key(header::CONTENT_LENGTH);
    let chunked = !ended && !sized;
    if chunked {
        push_field(out, b"transfer-encoding", b"chunked");
    } else if ended && !sized && has_body_semantics(&parts.method) {
        // An HTTP/1.1 server reading a POST with neither would wait for a
        // body that never comes.
        push_field(out, b"content-length", b"0");
    }
    out.extend_from_slice(b"\r\n");
    chunked
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn has_body_semantics(method: &Method) -> bool {
    [Method::POST, Method::PUT, Method::PATCH].contains(method)
}

/// Sends the client's body as it arrives, chunked unless it declared a
/// length; `Ok(false)` when the upstream stopped taking it, which it may
/// do once it has answered (a 413, say): its answer is read all the same.
/// A body cut off on the client's side (past the limit, or reset) fails the
/// request, and the connection, partly written, is dropped.
async fn send_body(
    stream: &mut TcpStream,
    body: &mut UpstreamBody,
    chunked: bool,
) -> Result<bool, Failure> {
    let mut size_line = Vec::with_capacity(20);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Failure::Protocol)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let sent = if chunked {
            size_line.clear();
            let _ = write!(size_line, "{:x}\r\n", data.len());
            let mut parts = [
                std::io::IoSlice::new(&size_line),
                std::io::IoSlice::new(&data),
                std::io::IoSlice::new(b"\r\n"),
            ];
            write_all_vectored(stream, &mut parts).await
        } else {
            stream.write_all(&data).await
        };
        if sent.is_err() {
            return Ok(false);
        }
    }
    Ok(!chunked || stream.write_all(b"0\r\n\r\n").await.is_ok())
}

async fn write_all_vectored(
    stream: &mut TcpStream,
    mut parts: &mut [std::io::IoSlice<'_>],
) -> std::io::Result<()> {
    while !parts.is_empty() {
        let n = stream.write_vectored(parts).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut parts, n);
    }
    Ok(())
}

/// The response's header fields as hyper's HTTP/2 server takes them; a
/// field HTTP/2 cannot carry makes the response a protocol failure, as
/// a client library would refuse it. The head is copied once and every
/// value is a slice of that copy, not an allocation of its own.
fn response_headers(buf: &[u8], head: &Head) -> Result<HeaderMap, Failure> {
    let text = Bytes::copy_from_slice(&buf[..head.len]);
    let mut headers = HeaderMap::with_capacity(head.headers.len());
    for (name, value) in &head.headers {
        let name = HeaderName::from_bytes(&buf[name.clone()]).map_err(|_| Failure::Protocol)?;
        let value = HeaderValue::from_maybe_shared(text.slice(value.clone()))
            .map_err(|_| Failure::Protocol)?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// A response body read from an HTTP/1.1 upstream connection, which goes
/// back to the pool once the body has been read to its end.
pub(super) struct Body {
    progress: BodyProgress,
    reusable: bool,
    stream: Option<TcpStream>,
    buf: LeasedBuf<Rc<Worker>>,
    origin: Origin,
    ended: bool,
}

/// The upstream broke the response body off, or framed it wrongly.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyFailure {
    /// The connection closed before the body's end.
    #[error("the upstream closed the connection inside the response body")]
    Closed,
    /// Reading failed.
    #[error("reading the response body failed: {0}")]
    Read(#[from] std::io::Error),
    /// The chunked framing is broken.
    #[error("malformed chunked response body")]
    Malformed,
}

impl From<BodyError> for BodyFailure {
    fn from(_: BodyError) -> Self {
        Self::Malformed
    }
}

impl Body {
    /// The body is over: its connection is pooled if it may be reused
    /// and nothing was sent past the body's end.
    fn finish(&mut self) {
        self.ended = true;
        if let Some(stream) = self.stream.take()
            && self.reusable
            && self.buf.is_empty()
        {
            let worker = self.buf.worker();
            worker.pool.put(self.origin.addr, stream, self.origin.keep);
        }
    }

    /// Ends the body and closes its connection.
    fn close(&mut self) {
        self.ended = true;
        self.stream = None;
    }

    /// Ends the body with `failure`, its connection closed.
    fn fail(&mut self, failure: BodyFailure) -> Poll<Option<Result<Frame<Bytes>, BodyFailure>>> {
        self.close();
        Poll::Ready(Some(Err(failure)))
    }

    /// The next piece of body data in what is buffered, if any.
    fn buffered_data(&mut self) -> Result<Option<Bytes>, BodyFailure> {
        let filled = self.buf.filled();
        let (data, used) = match &mut self.progress {
            BodyProgress::Length(left) => {
                let take = filled
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= take as u64;
                (Bytes::copy_from_slice(&filled[..take]), take)
            }
            BodyProgress::UntilClose => (Bytes::copy_from_slice(filled), filled.len()),
            BodyProgress::Chunked(scanner) => {
                let mut data = Vec::new();
                let used = scanner.scan(filled, |piece| data.extend_from_slice(piece))?;
                (Bytes::from(data), used)
            }
        };
        self.buf.consume(used);
        Ok((!data.is_empty()).then_some(data))
    }

    /// Reads more of the body into the buffer; `Ok(0)` at the connection's end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        // Every byte held was handed on before reading more, so the whole
        // buffer is free.
        self.buf.poll_read_from(cx, stream)
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BodyFailure;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyFailure>>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            if !self.buf.is_empty() {
                match self.buffered_data() {
                    Ok(Some(data)) => {
                        // Over with this piece: the client's last DATA
                        // frame ends the stream, and the connection is
                        // free at once.
                        if self.progress.done() {
                            self.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(None) => {}
                    Err(e) => return self.fail(e),
                }
            }
            if self.progress.done() {
                self.finish();
                return Poll::Ready(None);
            }
            match ready!(self.poll_fill(cx)) {
                // The end of an until-close body, and of its connection.
                Ok(0) if matches!(self.progress, BodyProgress::UntilClose) => {
                    self.close();
                    return Poll::Ready(None);
                }
                Ok(0) => return self.fail(BodyFailure::Closed),
                Ok(_) => {}
                Err(e) => return self.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match &self.progress {
            BodyProgress::Length(n) => hyper::body::SizeHint::with_exact(*n),
            _ => hyper::body::SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use http_body_util::Either;

    use super::*;
    use crate::ingress::h2_body::Piped;

    /// What the client of one exchange saw: the status and the body (or
    /// the body's error), and the request head the upstream received.
    struct Seen {
        answer: Result<(u16, Result<Bytes, String>), Failure>,
        request: String,
        pooled: usize,
    }

    /// Sends `req` to an upstream that answers `answer` and then closes.
    fn exchange(req: hyper::http::request::Builder, answer: &'static [u8]) -> Seen {
        exchange_on(req, answer, false, Duration::from_secs(5), Duration::ZERO)
    }

    /// Like `exchange`, on a connection taken from the pool when `reused`,
    /// with `timeout` for the answer, which comes after `delay`.
    fn exchange_on(
        req: hyper::http::request::Builder,
        answer: &'static [u8],
        reused: bool,
        timeout: Duration,
        delay: Duration,
    ) -> Seen {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap() == 1 {
                head.push(byte[0]);
            }
            std::thread::sleep(delay);
            let _ = s.write_all(answer);
            // Closed a moment later, once the proxy has read what it needs.
            std::thread::sleep(Duration::from_millis(100));
            String::from_utf8(head).unwrap()
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let worker = Rc::new(Worker::for_tests());
        let answer = tokio::task::LocalSet::new().block_on(&runtime, async {
            let stream = TcpStream::connect(addr).await.unwrap();
            let exchange = Exchange {
                origin: Origin {
                    addr,
                    keep: Keep {
                        idle_timeout: Duration::from_secs(60),
                        max_idle: 8,
                    },
                },
                reused,
                timeout,
            };
            let (parts, ()) = req.body(()).unwrap().into_parts();
            let body = Either::Right(Piped::empty());
            let response = send(&worker, exchange, stream, &parts, body).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await;
            Ok((
                status,
                body.map(|b| b.to_bytes()).map_err(|e| e.to_string()),
            ))
        });
        Seen {
            answer,
            request: upstream.join().unwrap(),
            pooled: worker.pool.len(),
        }
    }

    fn get() -> hyper::http::request::Builder {
        hyper::Request::get("/x?y=1").header("host", "example.com")
    }

    #[test]
    fn a_sized_answer_after_an_interim_one_and_the_connection_pooled() {
        // `te` and `expect` are for the client's hop only.
        let req = get()
            .header("te", "trailers")
            .header("expect", "100-continue");
        let seen = exchange(
            req,
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        );
        let (status, body) = seen.answer.unwrap();
        assert_eq!((status, body.unwrap()), (200, Bytes::from_static(b"ok")));
        assert_eq!(
            seen.request,
            "GET /x?y=1 HTTP/1.1\r\nhost: example.com\r\n\r\n"
        );
        assert_eq!(seen.pooled, 1);
    }

    #[test]
    fn an_empty_post_says_so_and_a_bodiless_answer_frees_the_connection_at_once() {
        let seen = exchange(
            hyper::Request::post("/p"),
            b"HTTP/1.1 204 No Content\r\n\r\n",
        );
        assert_eq!(seen.answer.unwrap().0, 204);
        assert_eq!(
            seen.request,
            "POST /p HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(seen.pooled, 1);
    }

    #[test]
    fn a_body_until_close_is_read_whole_and_its_connection_let_go() {
        let seen = exchange(get(), b"HTTP/1.0 200 OK\r\n\r\nuntil the end");
        let (status, body) = seen.answer.unwrap();
        assert_eq!(
            (status, body.unwrap()),
            (200, Bytes::from_static(b"until the end"))
        );
        assert_eq!(seen.pooled, 0);
    }

    #[test]
    fn bytes_past_the_body_keep_the_connection_out_of_the_pool() {
        let seen = exchange(
            get(),
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA",
        );
        assert_eq!(seen.answer.unwrap().1.unwrap(), Bytes::from_static(b"ok"));
        assert_eq!(seen.pooled, 0);
    }

    #[test]
    fn a_chunked_body_reaches_the_client_as_data_and_broken_framing_as_an_error() {
        let seen = exchange(
            get(),
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nt: 1\r\n\r\n",
        );
        assert_eq!(
            seen.answer.unwrap().1.unwrap(),
            Bytes::from_static(b"abcde")
        );
        assert_eq!(seen.pooled, 1);
        let seen = exchange(
            get(),
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nZZ\r\n",
        );
        let body = seen.answer.unwrap().1;
        assert!(body.unwrap_err().contains("malformed chunked"));
        assert_eq!(seen.pooled, 0);
    }

    #[test]
    fn a_body_cut_short_is_an_error() {
        let seen = exchange(get(), b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort");
        let body = seen.answer.unwrap().1;
        assert!(body.unwrap_err().contains("closed the connection"));
        assert_eq!(seen.pooled, 0);
    }

    #[test]
    fn only_a_pooled_connection_closed_before_any_answer_is_stale() {
        let long = Duration::from_secs(5);
        let seen = exchange_on(get(), b"", true, long, Duration::ZERO);
        assert!(matches!(seen.answer, Err(Failure::Stale)));
        let seen = exchange_on(get(), b"", false, long, Duration::ZERO);
        assert!(matches!(seen.answer, Err(Failure::Protocol)));
        // Part of an answer, or an interim one, then the close: the
        // upstream failed.
        for answer in [&b"HTTP/1.1 200"[..], b"HTTP/1.1 100 Continue\r\n\r\n"] {
            let seen = exchange_on(get(), answer, true, long, Duration::ZERO);
            assert!(matches!(seen.answer, Err(Failure::Protocol)));
        }
    }

    #[test]
    fn an_answer_later_than_the_timeout_is_a_timeout() {
        let short = Duration::from_millis(100);
        let seen = exchange_on(get(), b"HTTP/1.1 204 X\r\n\r\n", false, short, 10 * short);
        assert!(matches!(seen.answer, Err(Failure::Timeout)));
    }

    #[test]
    fn no_answer_a_malformed_one_or_a_101_fail_the_request() {
        for answer in [
            &b""[..],
            b"garbage\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        ] {
            let seen = exchange(get(), answer);
            assert!(
                matches!(seen.answer, Err(Failure::Protocol)),
                "{:?}",
                String::from_utf8_lossy(answer)
            );
        }
    }
}
