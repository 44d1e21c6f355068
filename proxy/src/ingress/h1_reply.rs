//! Answers the proxy writes to HTTP/1.1 clients itself, and the outcome of
//! an HTTP/1.1 exchange.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::body::Framing;
use super::h1::{self, Head, RequestInfo};
use super::worker::Buf;

/// How a request ended.
pub(super) struct Done {
    /// The status the client got.
    pub(super) status: u16,
    /// Whether the connection may carry another request.
    pub(super) keep_alive: bool,
    /// The upstream that served the request.
    pub(super) upstream: Option<Arc<str>>,
    /// The endpoint that served the request.
    pub(super) endpoint: Option<SocketAddr>,
    /// Response body bytes sent.
    pub(super) bytes: u64,
}

/// A request the proxy answers itself may keep the connection only if its
/// body (if any) is not left unread in the stream.
pub(super) fn drain_body_or_close(info: &RequestInfo) -> bool {
    info.keep_alive && info.framing == Framing::Empty
}

/// Answers the request in `head` with a response of the proxy's own.
#[allow(clippy::too_many_arguments)]
pub(super) async fn local<S: AsyncWrite + Unpin>(
    client: &mut S,
    cbuf: &mut Buf,
    head: &Head,
    out: &mut Vec<u8>,
    status: u16,
    headers: &str,
    body: &str,
    keep_alive: bool,
) -> Done {
    cbuf.consume(head.len);
    out.clear();
    h1::write_local_response(out, status, headers, body, keep_alive);
    let ok = client.write_all(out).await.is_ok();
    Done {
        status,
        keep_alive: keep_alive && ok,
        upstream: None,
        endpoint: None,
        bytes: body.len() as u64,
    }
}
