//! A small HTTP/1.1 client for registries: one connection per request (a
//! pull makes few, large requests), plain or TLS with the system's roots.

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1;
use hyper::{Request, Response};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Where the system keeps the certificate authorities (Debian's
/// ca-certificates).
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How long connecting (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a registry may stay silent before the request is given up: the
/// response head, or the next piece of a body.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A parsed `http[s]://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Url {
    /// Whether to speak TLS.
    pub tls: bool,
    /// `host[:port]` as written, for the `Host` header.
    pub authority: String,
    /// `host:port` to connect to.
    address: String,
    /// The host alone, the name the server's certificate must carry.
    host: String,
    /// Path and query.
    pub path: String,
}

impl Url {
    /// Parses an absolute `http://` or `https://` URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: hyper::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(format!(
                    "{url:?}: only http:// and https:// URLs are supported"
                ));
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url:?} has no host"))?;
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Self {
            tls,
            authority: authority.as_str().to_string(),
            address: format!("{}:{port}", authority.host()),
            host,
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        })
    }

    /// The same server, another path (or an absolute URL, as a redirect's
    /// `Location` may be).
    pub fn join(&self, location: &str) -> Result<Self, String> {
        if location.starts_with('/') {
            Ok(Self {
                path: location.to_string(),
                ..self.clone()
            })
        } else {
            Self::parse(location)
        }
    }

    /// `scheme://authority`, how messages name the server.
    pub fn origin(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.authority
        )
    }
}

/// Makes requests; holds the TLS configuration, built on first use.
#[derive(Default)]
pub(super) struct Client {
    tls: OnceLock<Result<TlsConnector, String>>,
}

impl Client {
    /// GETs `url` with `headers`; the answer's body is read by the caller.
    pub async fn get(
        &self,
        url: &Url,
        headers: &[(&str, &str)],
    ) -> Result<Response<Incoming>, String> {
        let mut request = Request::get(&url.path).header(hyper::header::HOST, &url.authority);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|err| format!("{}: cannot build the request: {err}", url.origin()))?;
        let connect = async {
            let stream = TcpStream::connect(&url.address)
                .await
                .map_err(|err| format!("cannot connect to {}: {err}", url.origin()))?;
            // Latency of small requests (tokens, manifests) matters more than
            // packet count.
            let _ = stream.set_nodelay(true);
            if url.tls {
                let connector = self.connector()?;
                let name = ServerName::try_from(url.host.clone())
                    .map_err(|err| format!("{}: {err}", url.origin()))?;
                let stream = connector
                    .connect(name, stream)
                    .await
                    .map_err(|err| format!("TLS with {} failed: {err}", url.origin()))?;
                handshake(stream, url).await
            } else {
                handshake(stream, url).await
            }
        };
        let mut sender = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| {
                format!(
                    "cannot connect to {}: no answer within {CONNECT_TIMEOUT:?}",
                    url.origin()
                )
            })??;
        tokio::time::timeout(IDLE_TIMEOUT, sender.send_request(request))
            .await
            .map_err(|_| format!("{} did not answer within {IDLE_TIMEOUT:?}", url.origin()))?
            .map_err(|err| format!("request to {} failed: {err}", url.origin()))
    }

    fn connector(&self) -> Result<TlsConnector, String> {
        self.tls.get_or_init(|| tls_connector(SYSTEM_CAS)).clone()
    }
}

/// Reads a whole body of at most `limit` bytes.
pub(super) async fn read_body(
    response: Response<Incoming>,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = next_frame(&mut body).await? {
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit {
                return Err(format!("the answer is larger than {limit} bytes"));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

/// The next frame of a body, or `None` at its end.
pub(super) async fn next_frame(
    body: &mut Incoming,
) -> Result<Option<hyper::body::Frame<Bytes>>, String> {
    match tokio::time::timeout(IDLE_TIMEOUT, body.frame()).await {
        Err(_) => Err(format!("the registry sent nothing for {IDLE_TIMEOUT:?}")),
        Ok(None) => Ok(None),
        Ok(Some(Ok(frame))) => Ok(Some(frame)),
        Ok(Some(Err(err))) => Err(format!("reading the answer failed: {err}")),
    }
}

/// Starts HTTP/1.1 on `stream`; the connection runs on its own task until
/// the response body has been read.
async fn handshake<S>(stream: S, url: &Url) -> Result<http1::SendRequest<Empty<Bytes>>, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(Io::new(stream))
        .await
        .map_err(|err| format!("HTTP with {} failed: {err}", url.origin()))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%err, "registry connection closed");
        }
    });
    Ok(sender)
}

/// A TLS client trusting the authorities in the PEM file at `path`.
fn tls_connector(path: &str) -> Result<TlsConnector, String> {
    orca_core::tls::client_trusting(std::path::Path::new(path), &[b"http/1.1"])
        .map(TlsConnector::from)
}

/// Adapts a tokio stream to hyper's IO traits. Reads go through a buffer of
/// our own because filling hyper's cursor in place needs `unsafe`.
pub(super) struct Io<S> {
    inner: S,
    buffer: Box<[u8]>,
}

impl<S> Io<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            buffer: vec![0; 64 * 1024].into_boxed_slice(),
        }
    }
}

impl<S: AsyncRead + Unpin> hyper::rt::Read for Io<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut cursor: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let len = cursor.remaining().min(this.buffer.len());
        let mut buf = ReadBuf::new(&mut this.buffer[..len]);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf))?;
        cursor.put_slice(buf.filled());
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> hyper::rt::Write for Io<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url = Url::parse("http://127.0.0.1:5000").expect("parses");
        assert!(!url.tls);
        assert_eq!(url.address, "127.0.0.1:5000");
        assert_eq!(url.path, "/");
        let blob = url.join("/v2/bb/blobs/x").expect("joins");
        assert_eq!(blob.origin(), "http://127.0.0.1:5000");
        assert_eq!(blob.path, "/v2/bb/blobs/x");
        let secure = Url::parse("https://registry-1.docker.io/v2/").expect("parses");
        assert!(secure.tls);
        assert_eq!(secure.address, "registry-1.docker.io:443");
        assert_eq!(secure.host, "registry-1.docker.io");
        let moved = secure
            .join("https://storage.example/blob?sig=1")
            .expect("absolute");
        assert_eq!(moved.authority, "storage.example");
        assert_eq!(moved.path, "/blob?sig=1");
        assert!(Url::parse("ftp://x").is_err());
    }
}
