//! Why a request forwarded through hyper failed, and the answer the client
//! gets for it.

use hyper::StatusCode;

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
