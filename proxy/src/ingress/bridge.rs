//! HTTP/1.1 clients of h2c upstreams: the request goes upstream as an
//! HTTP/2 stream (with the same retries as every request) and the response
//! comes back as HTTP/1.1, chunked when the upstream gave no length.
//!
//! Response trailers are dropped: an HTTP/1.1 client sees them only if it
//! asked with `TE: trailers` and reads them out of a chunked body, which
//! few do; clients that depend on trailers (gRPC) speak HTTP/2 and get
//! them untouched.

use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;

use http_body_util::{BodyExt, Either};
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, Uri};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::body::{BodyError, BodyProgress, Framing};
use super::config::Limits;
use super::failure::Failure;
use super::h1::{self, Forwarding, Head, RequestInfo};
use super::h1_reply::{Done, drain_body_or_close, local};
use super::h2_body::Piped;
use super::h2_upstream::{self, FromUpstream};
use super::upstream::Upstream;
use super::worker::{Buf, Worker};

/// How relaying the request body ended early.
enum Cut {
    /// The client closed or broke its connection.
    Client,
    /// The client sent nothing of its body for the body read timeout.
    Stalled,
    /// The client's chunked framing is malformed, or its body grew past
    /// the limit.
    Body(BodyError),
    /// The upstream stopped reading: it has answered already, or failed.
    Upstream,
}

/// Where a request stands once the upstream answered or the request broke.
// Lives briefly on the stack, once per request: boxing the answer would
// cost an allocation to save nothing.
#[allow(clippy::large_enum_variant)]
enum Relay {
    /// The upstream's answer (or failure), and how the body relay ended.
    Sent(
        Result<(Response<FromUpstream>, SocketAddr), (Failure, Option<SocketAddr>)>,
        Result<(), Cut>,
    ),
    /// The client's side broke before an answer came.
    Broken(Cut),
}

/// Forwards one HTTP/1.1 request to an h2c `upstream` and writes the
/// answer back in HTTP/1.1.
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward<S: AsyncRead + AsyncWrite + Unpin>(
    worker: &Rc<Worker>,
    upstream: &Upstream,
    client: &mut S,
    cbuf: &mut Buf,
    head: &Head,
    info: &RequestInfo,
    fwd: &Forwarding<'_>,
    out: &mut Vec<u8>,
    limits: &Limits,
) -> Done {
    let Some(request) = request(cbuf.filled(), head, fwd) else {
        let keep = drain_body_or_close(info);
        let body = "request cannot be forwarded over HTTP/2\n";
        let mut done = local(client, cbuf, head, out, 400, "", body, keep).await;
        done.upstream = Some(upstream.name.clone());
        return done;
    };
    // HTTP/1.0 has no interim responses, so no `Expect` to answer.
    let expects_continue = head.version == 1
        && head
            .header(cbuf.filled(), "expect")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
    cbuf.consume(head.len);
    let replayable = info.idempotent && info.framing == Framing::Empty;
    let (sender, body) = match info.framing {
        Framing::Empty => (None, Piped::empty()),
        _ => {
            let (tx, body) = Piped::channel();
            (Some(tx), body)
        }
    };
    let max_read = usize::try_from(limits.max_header_bytes.bytes()).unwrap_or(usize::MAX);
    let body_limit = BodyProgress::limited(info.framing, limits.max_body_bytes.bytes());
    let relay = {
        let sending = h2_upstream::send_with_retries(
            worker,
            upstream,
            request.map(|()| Either::Right(body)),
            replayable,
        );
        let pumping = async {
            match sender {
                Some(tx) => {
                    let timeout = limits.body_read_timeout.get();
                    pump(
                        client,
                        cbuf,
                        body_limit,
                        tx,
                        expects_continue,
                        max_read,
                        timeout,
                    )
                    .await
                }
                None => Ok(()),
            }
        };
        tokio::pin!(sending, pumping);
        let mut pumped = None;
        loop {
            tokio::select! {
                sent = &mut sending => {
                    // An answer before the whole body: read the rest still,
                    // as HTTP/1.1 forwarding does, so the connection is at a
                    // request boundary again.
                    let pumped = match pumped {
                        Some(p) => p,
                        None if sent.is_ok() => pumping.await,
                        None => Err(Cut::Upstream),
                    };
                    break Relay::Sent(sent, pumped);
                }
                p = &mut pumping, if pumped.is_none() => match p {
                    // The request is broken: abandon it without blaming the
                    // endpoint. The sender is gone, so the upstream stream
                    // is reset rather than seen to end.
                    Err(cut @ (Cut::Client | Cut::Stalled | Cut::Body(_))) => {
                        break Relay::Broken(cut);
                    }
                    p => pumped = Some(p),
                },
            }
        }
    };
    let name = Some(upstream.name.clone());
    match relay {
        Relay::Broken(Cut::Body(BodyError::Malformed)) => {
            answer(client, out, 400, "malformed request body\n", name, None).await
        }
        Relay::Broken(Cut::Body(BodyError::TooLarge)) => {
            answer(client, out, 413, "request body too large\n", name, None).await
        }
        Relay::Broken(Cut::Stalled) => {
            let text = "request body not received in time\n";
            answer(client, out, 408, text, name, None).await
        }
        Relay::Broken(_) => Done {
            status: 499,
            keep_alive: false,
            upstream: name,
            endpoint: None,
            bytes: 0,
        },
        Relay::Sent(Err((failure, addr)), _) => {
            let (status, text) = failure.answer();
            answer(client, out, status.as_u16(), text, name, addr).await
        }
        Relay::Sent(Ok((response, addr)), pumped) => {
            let keep_alive = info.keep_alive
                && pumped.is_ok()
                && !worker
                    .shared
                    .draining
                    .load(std::sync::atomic::Ordering::Relaxed);
            let mut done = respond(
                client,
                out,
                response,
                (head.version, info.is_head, keep_alive),
                limits,
            )
            .await;
            done.upstream = name;
            done.endpoint = Some(addr);
            done
        }
    }
}

/// The HTTP/2 form of an HTTP/1.1 request head: `Host` becomes the
/// authority, hop-by-hop headers go, forwarding headers come. `None` when
/// the head has no HTTP/2 form (no Host, a target or header HTTP/2 refuses).
fn request(buf: &[u8], head: &Head, fwd: &Forwarding<'_>) -> Option<Request<()>> {
    let authority = head.header(buf, "host").filter(|h| !h.is_empty())?;
    let uri = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(fwd.target.map_or(&buf[head.target.clone()], str::as_bytes))
        .build()
        .ok()?;
    let mut headers = HeaderMap::with_capacity(head.headers.len() + 4);
    for (n, v) in &head.headers {
        let name = HeaderName::from_bytes(&buf[n.clone()]).ok()?;
        // The authority carries the host; the proxy answers Expect itself;
        // request trailers are not relayed, so neither is their announcement.
        if matches!(name, header::HOST | header::EXPECT | header::TRAILER) {
            continue;
        }
        headers.append(name, HeaderValue::from_bytes(&buf[v.clone()]).ok()?);
    }
    h2_upstream::strip_hop_by_hop(&mut headers);
    h2_upstream::add_forwarding(&mut headers, fwd.client, fwd.tls, authority, || {
        fwd.request_id.to_string()
    });
    let mut request = Request::new(());
    *request.method_mut() = Method::from_bytes(&buf[head.method.clone()]).ok()?;
    *request.uri_mut() = uri;
    *request.version_mut() = hyper::Version::HTTP_2;
    *request.headers_mut() = headers;
    Some(request)
}

/// Relays the rest of the request `body`, without its HTTP/1.1 framing.
async fn pump<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    cbuf: &mut Buf,
    mut body: BodyProgress,
    tx: mpsc::Sender<Option<Bytes>>,
    expects_continue: bool,
    max_read: usize,
    read_timeout: std::time::Duration,
) -> Result<(), Cut> {
    let mut data = Vec::new();
    let mut continued = !expects_continue;
    loop {
        if !cbuf.is_empty() {
            let take = body
                .scan(cbuf.filled(), |d| data.extend_from_slice(d))
                .map_err(Cut::Body)?;
            cbuf.consume(take);
            if !data.is_empty() {
                tx.send(Some(Bytes::from(std::mem::take(&mut data))))
                    .await
                    .map_err(|_| Cut::Upstream)?;
            }
            if body.done() {
                return tx.send(None).await.map_err(|_| Cut::Upstream);
            }
        }
        if !continued {
            // Answered at once: an HTTP/2 upstream says whether it wants the
            // body only by answering, which it may do only after reading it.
            continued = true;
            client
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(|_| Cut::Client)?;
        }
        match tokio::time::timeout(read_timeout, cbuf.read_from(client, max_read)).await {
            Err(_) => return Err(Cut::Stalled),
            Ok(Ok(0) | Err(_)) => return Err(Cut::Client),
            Ok(Ok(_)) => {}
        }
    }
}

/// A response of the proxy's own, closing the connection: after a failure
/// the request body may be partly unread.
async fn answer<S: AsyncWrite + Unpin>(
    client: &mut S,
    out: &mut Vec<u8>,
    status: u16,
    text: &str,
    upstream: Option<std::sync::Arc<str>>,
    endpoint: Option<SocketAddr>,
) -> Done {
    out.clear();
    h1::write_local_response(out, status, "", text, false);
    let _ = client.write_all(out).await;
    Done {
        status,
        keep_alive: false,
        upstream,
        endpoint,
        bytes: text.len() as u64,
    }
}

/// Writes an HTTP/2 response to an HTTP/1.`version` client, for a HEAD
/// request when `is_head`, keeping the connection when `keep_alive`
/// allows. An upstream quiet for the body read timeout, or a client taking
/// nothing for the send timeout, ends it and the connection.
async fn respond<S: AsyncWrite + Unpin>(
    client: &mut S,
    out: &mut Vec<u8>,
    response: Response<FromUpstream>,
    (version, is_head, keep_alive): (u8, bool, bool),
    limits: &Limits,
) -> Done {
    let (read_timeout, send_timeout) = (limits.body_read_timeout.get(), limits.send_timeout.get());
    let (parts, mut body) = response.into_parts();
    let status = parts.status.as_u16();
    let mut headers = parts.headers;
    h2_upstream::strip_hop_by_hop(&mut headers);
    let no_body = is_head || status < 200 || status == 204 || status == 304;
    let sized = headers.contains_key(header::CONTENT_LENGTH);
    // Without a length an HTTP/1.0 client can only be told the end by the
    // connection closing.
    let chunked = !no_body && !sized && version == 1;
    let keep_alive = keep_alive && (no_body || sized || chunked);
    let mut done = Done {
        status,
        keep_alive,
        upstream: None,
        endpoint: None,
        bytes: 0,
    };
    out.clear();
    let reason = parts.status.canonical_reason().unwrap_or("");
    let _ = write!(out, "HTTP/1.{version} {status} {reason}\r\n");
    for (name, value) in &headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if client.write_all(out).await.is_err() {
        return Done {
            status: 499,
            keep_alive: false,
            ..done
        };
    }
    if no_body {
        return done;
    }
    loop {
        let frame = match tokio::time::timeout(read_timeout, body.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                done.keep_alive = false;
                return done;
            }
        };
        let Ok(frame) = frame else {
            // Headers are out: the client can only learn of the failure by
            // the connection closing early.
            done.keep_alive = false;
            return done;
        };
        // Trailers are dropped (see the module documentation).
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        done.bytes += data.len() as u64;
        let written = if chunked {
            out.clear();
            let _ = write!(out, "{:x}\r\n", data.len());
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\r\n");
            tokio::time::timeout(send_timeout, client.write_all(out)).await
        } else {
            tokio::time::timeout(send_timeout, client.write_all(&data)).await
        };
        if !matches!(written, Ok(Ok(()))) {
            return Done {
                status: 499,
                keep_alive: false,
                ..done
            };
        }
    }
    if chunked && client.write_all(b"0\r\n\r\n").await.is_err() {
        done.keep_alive = false;
    }
    done
}
