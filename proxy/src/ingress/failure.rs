//! Why a request forwarded through hyper failed, and the answer the client
//! gets for it.

use hyper::StatusCode;

use super::body::BodyError;

/// What the access log says of a request whose client went away (nginx's
/// 499).
const CLIENT_CLOSED: StatusCode = match StatusCode::from_u16(499) {
    Ok(s) => s,
    Err(_) => unreachable!(),
};

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
    /// that cannot be sent twice: the upstream let it go as the request
    /// went out.
    Stale,
    /// The client sent a malformed body.
    BadBody,
    /// The client went away: there is nobody to answer.
    Client,
}

impl Failure {
    /// What went wrong upstream, for `upstream_failures` and to charge the
    /// endpoint; `None` when the client was to blame, or nobody (no
    /// endpoint to try, or a stale pooled connection, counted where it is
    /// found).
    pub(super) fn upstream_kind(&self) -> Option<&'static str> {
        match self {
            Self::Connect { .. } => Some("connect"),
            Self::Timeout => Some("timeout"),
            Self::Protocol => Some("protocol"),
            Self::NoEndpoint
            | Self::Stale
            | Self::BodyTooLarge
            | Self::BodyStalled
            | Self::BadBody
            | Self::Client => None,
        }
    }

    /// The status and text that answer the client, as for HTTP/1.1 (a
    /// client that went away gets nothing; 499 is what the log says).
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
            Self::BadBody => (StatusCode::BAD_REQUEST, "malformed request body\n"),
            Self::Client => (CLIENT_CLOSED, ""),
        }
    }
}

impl From<BodyError> for Failure {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::Malformed => Self::BadBody,
            BodyError::TooLarge => Self::BodyTooLarge,
        }
    }
}
