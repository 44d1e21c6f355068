//! The HTTP sink: POSTs Elasticsearch bulk, Loki push or JSON-lines bodies
//! over a kept-alive HTTP/1.1 connection; a 2xx answer is the ack.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_ENCODING, CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{HttpFormat, OutputConfig};
use crate::sinks::SinkError;

/// Most bytes of an error response kept for the log.
const ERROR_BODY: usize = 512;

/// Why a URL is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Not a URL at all.
    #[error("{0:?} is not a URL")]
    Invalid(String),
    /// Only `http://` and `https://` are spoken.
    #[error("{0:?}: only http:// and https:// URLs are supported")]
    Scheme(String),
}

/// Where requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port` to connect to.
    pub address: String,
    /// The `Host` header.
    pub host: String,
    /// Path and query of the request.
    pub path: String,
    /// For `https://`, the name the server's certificate must carry.
    pub tls_name: Option<String>,
}

impl Endpoint {
    /// Parses an `http[s]://host[:port]/path` URL.
    pub fn parse(url: &str) -> Result<Self, EndpointError> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|_| EndpointError::Invalid(url.to_string()))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(EndpointError::Scheme(url.to_string())),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| EndpointError::Invalid(url.to_string()))?;
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host = authority.host();
        Ok(Self {
            address: format!("{host}:{port}"),
            host: authority.as_str().to_string(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
            // `[::1]` names the address `::1`.
            tls_name: tls.then(|| {
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string()
            }),
        })
    }
}

/// Where the system keeps the certificate authorities (Debian's
/// ca-certificates).
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A TLS client trusting the authorities in the PEM file at `path`.
fn tls_connector(path: &Path) -> Result<TlsConnector, SinkError> {
    orca_core::tls::client_trusting(path, &[b"http/1.1"])
        .map(TlsConnector::from)
        .map_err(SinkError::Config)
}

/// POSTs batches to one URL.
pub struct HttpSink {
    endpoint: Endpoint,
    /// For `https://` URLs.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    format: HttpFormat,
    gzip: bool,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl std::fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSink")
            .field("endpoint", &self.endpoint)
            .field("tls", &self.tls.is_some())
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl HttpSink {
    /// The sink `config` describes.
    pub fn new(config: &OutputConfig) -> Result<Self, SinkError> {
        let url = config.url.as_deref().unwrap_or_default();
        let endpoint = Endpoint::parse(url).map_err(|err| SinkError::Config(err.to_string()))?;
        let tls = match &endpoint.tls_name {
            Some(name) => {
                let cas = config.ca_file.as_deref().unwrap_or(Path::new(SYSTEM_CAS));
                let name = ServerName::try_from(name.clone())
                    .map_err(|e| SinkError::Config(format!("{url}: {e}")))?;
                Some((tls_connector(cas)?, name))
            }
            None => None,
        };
        let headers = config
            .headers
            .iter()
            .map(|(name, value)| {
                Ok((
                    HeaderName::from_bytes(name.as_bytes())
                        .map_err(|err| SinkError::Config(err.to_string()))?,
                    HeaderValue::from_str(value)
                        .map_err(|err| SinkError::Config(err.to_string()))?,
                ))
            })
            .collect::<Result<_, SinkError>>()?;
        Ok(Self {
            endpoint,
            tls,
            format: config.format.unwrap_or(HttpFormat::JsonLines),
            gzip: config.gzip,
            headers,
            timeout: config.timeout.get(),
            sender: None,
        })
    }

    /// POSTs `payload`; `Ok` on a 2xx answer (for Elasticsearch, one that
    /// reports no failed item).
    pub async fn deliver(&mut self, payload: &[u8]) -> Result<(), SinkError> {
        let result = tokio::time::timeout(self.timeout, self.post(payload))
            .await
            .unwrap_or(Err(SinkError::Timeout(self.timeout)));
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn post(&mut self, payload: &[u8]) -> Result<(), SinkError> {
        let content_type = match self.format {
            HttpFormat::Loki => "application/json",
            HttpFormat::ElasticsearchBulk | HttpFormat::JsonLines => "application/x-ndjson",
        };
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(&self.endpoint.path)
            .header(HOST, &self.endpoint.host)
            .header(CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::copy_from_slice(payload)))
            .map_err(|err| SinkError::Config(err.to_string()))?;
        if self.gzip {
            request
                .headers_mut()
                .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        for (name, value) in &self.headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        let sender = self.sender().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(SinkError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY)]).into_owned(),
            });
        }
        if self.format == HttpFormat::ElasticsearchBulk {
            bulk_errors(&body)?;
        }
        Ok(())
    }

    async fn sender(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, SinkError> {
        if let Some(sender) = &mut self.sender {
            if sender.ready().await.is_err() {
                self.sender = None;
            }
        }
        let sender = match self.sender.take() {
            Some(sender) => sender,
            None => {
                let stream = TcpStream::connect(&self.endpoint.address).await?;
                stream.set_nodelay(true)?;
                match &self.tls {
                    Some((connector, name)) => {
                        let stream = connector.connect(name.clone(), stream).await?;
                        handshake(stream).await?
                    }
                    None => handshake(stream).await?,
                }
            }
        };
        Ok(self.sender.insert(sender))
    }
}

/// Starts HTTP/1.1 on `stream`; the connection runs on its own task.
async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, SinkError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%err, "HTTP output connection closed");
        }
    });
    Ok(sender)
}

/// A 200 from `_bulk` can still carry failed items (`"errors": true`).
/// When one of them may pass on a retry (429, 408, 5xx), the batch is sent
/// again whole, which may duplicate the items that did succeed: at least
/// once, never lost. When every failed item was rejected for good (a
/// mapping error, 400), sending again cannot help: the batch is
/// [`SinkError::Rejected`] and goes where the output's `on_failure` says.
fn bulk_errors(body: &[u8]) -> Result<(), SinkError> {
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Err(SinkError::Protocol("bulk answer is not JSON".to_string()));
    };
    if answer["errors"] != serde_json::Value::Bool(true) {
        return Ok(());
    }
    let failed: Vec<&serde_json::Value> = answer["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_object()?.values().next())
                .filter(|result| result.get("error").is_some())
                .collect()
        })
        .unwrap_or_default();
    let first = failed
        .first()
        .map(|result| result["error"].to_string())
        .unwrap_or_default();
    let rejected = |result: &&serde_json::Value| {
        result["status"]
            .as_u64()
            .and_then(|status| u16::try_from(status).ok())
            .is_some_and(|status| {
                SinkError::Status {
                    status,
                    body: String::new(),
                }
                .is_permanent()
            })
    };
    if !failed.is_empty() && failed.iter().all(rejected) {
        return Err(SinkError::Rejected(format!(
            "{} bulk items refused: {first}",
            failed.len()
        )));
    }
    Err(SinkError::Protocol(format!(
        "bulk request had failed items: {first}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:9200/_bulk?refresh=true").expect("parses"),
            Endpoint {
                address: "127.0.0.1:9200".into(),
                host: "127.0.0.1:9200".into(),
                path: "/_bulk?refresh=true".into(),
                tls_name: None,
            }
        );
        let secure = Endpoint::parse("https://logs.example:8443/x").expect("parses");
        assert_eq!(secure.address, "logs.example:8443");
        assert_eq!(secure.tls_name.as_deref(), Some("logs.example"));
        assert_eq!(
            Endpoint::parse("https://[::1]/")
                .expect("parses")
                .tls_name
                .as_deref(),
            Some("::1")
        );
        assert_eq!(
            Endpoint::parse("http://logs.local")
                .expect("parses")
                .address,
            "logs.local:80"
        );
        assert!(matches!(
            Endpoint::parse("ftp://x/"),
            Err(EndpointError::Scheme(_))
        ));
        assert!(matches!(
            Endpoint::parse("::"),
            Err(EndpointError::Invalid(_))
        ));
    }

    #[test]
    fn bulk_answers() {
        assert!(bulk_errors(br#"{"took":3,"errors":false,"items":[]}"#).is_ok());
        let err = bulk_errors(
            br#"{"errors":true,"items":[{"create":{"status":201}},{"create":{"status":429,"error":{"type":"es_rejected_execution_exception"}}}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("es_rejected_execution_exception"), "{err}");
        assert!(bulk_errors(b"<html>").is_err());
        let mapping = bulk_errors(
            br#"{"errors":true,"items":[{"create":{"status":201}},{"create":{"status":400,"error":{"type":"mapper_parsing_exception"}}}]}"#,
        )
        .unwrap_err();
        assert!(mapping.is_permanent(), "{mapping}");
        assert!(
            mapping.to_string().contains("mapper_parsing_exception"),
            "{mapping}"
        );
        let mixed = bulk_errors(
            br#"{"errors":true,"items":[{"create":{"status":400,"error":{}}},{"create":{"status":429,"error":{}}}]}"#,
        )
        .unwrap_err();
        assert!(!mixed.is_permanent(), "a retry may pass the 429: {mixed}");
    }
}
