//! The one dispatch path of every protocol pair: choose an endpoint, open a
//! connection to it (the endpoint's shared h2c connection, or a pooled or
//! new HTTP/1.1 one), make one attempt, and from how the attempt ended
//! decide whether the request goes again and where. Endpoints are charged,
//! failures counted and pooled connections the upstream had closed retried
//! the same way whichever front end the request came from.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::config::UpstreamProtocol;
use super::failure::Failure;
use super::h2_body::UpstreamBody;
use super::retry::Attempts;
use super::upstream::{InFlight, Upstream};
use super::worker::{Worker, fail};

/// A connection to an endpoint, ready to carry one request.
pub(super) enum Conn {
    /// The endpoint's shared h2c connection.
    H2(hyper::client::conn::http2::SendRequest<UpstreamBody>),
    /// An HTTP/1.1 connection of its own, from the pool (`reused`) or new.
    H1 { stream: TcpStream, reused: bool },
}

/// How one attempt at an endpoint ended.
pub(super) enum Outcome<T> {
    /// An answer with its status, not yet passed to the client: a status
    /// the policy retries still sends the request elsewhere.
    Answered(T, u16),
    /// None of the request reached the upstream: it may go again whatever
    /// it is.
    Unsent,
    /// The request went out, and the connection closed (or a write to it
    /// failed) before any answer: a pooled connection may have been let go
    /// by the upstream as the request left. Nothing reached the client.
    Closed,
    /// The upstream failed the request some other way before any answer
    /// (a reset stream, a broken connection); nothing reached the client.
    Failed,
    /// The request ends with this failure. The endpoint is charged unless
    /// the client was to blame.
    Fatal(Failure),
}

/// Sends a request to an endpoint of `upstream`, each attempt made by
/// `attempt` on the connection it is given (with whether another attempt
/// may follow, so it knows to keep what a retry needs). A request whose
/// connection could not be made, or that never left, goes elsewhere
/// whatever it is; one that was sent and failed before an answer, or got
/// a status the policy retries, only when it is `replayable` (idempotent
/// with its whole body at hand). All within the policy and the budget. A
/// pooled HTTP/1.1 connection found closed is no fault of its endpoint:
/// the request goes once more on a new connection, or, when it cannot be
/// sent twice, fails without charging the endpoint, as nginx does.
///
/// Returns the answer and the endpoint's in-flight mark, held while the
/// answer is relayed. A failure names an endpoint only when one is to
/// blame for the answer; when the retries ran out there is none.
pub(super) async fn dispatch<T>(
    worker: &Worker,
    upstream: &Upstream,
    replayable: bool,
    mut attempt: impl AsyncFnMut(Conn, SocketAddr, bool) -> Outcome<T>,
) -> Result<(T, InFlight), (Failure, Option<SocketAddr>)> {
    let mut attempts = Attempts::new(worker, upstream, replayable);
    let Some(mut flight) = attempts.first() else {
        return Err((Failure::NoEndpoint, None));
    };
    // Whether this attempt may take a pooled connection, and whether the
    // one retry on a new connection is spent.
    let (mut pooled, mut fresh_retry_used) = (true, false);
    loop {
        let addr = flight.endpoint().addr;
        // A connection whose handshake hangs is a connection not made: the
        // whole of opening it is held to the connect timeout.
        let opened = tokio::time::timeout(
            upstream.settings.connect_timeout,
            open(worker, upstream, addr, pooled, replayable),
        )
        .await
        .unwrap_or(Err(Failure::Connect { timed_out: true }));
        let conn = match opened {
            Ok(conn) => conn,
            Err(failure) => {
                upstream.record(flight.endpoint(), false);
                fail(worker, upstream, "connect");
                match attempts.retry_unsent(addr) {
                    Some(next) => {
                        (flight, pooled) = (next, true);
                        continue;
                    }
                    None => return Err((failure, None)),
                }
            }
        };
        let reused = matches!(conn, Conn::H1 { reused: true, .. });
        let next = match attempt(conn, addr, attempts.may_retry()).await {
            Outcome::Answered(answer, status) => match attempts.retry_status(addr, status) {
                Some(next) => next,
                None => {
                    upstream.record(flight.endpoint(), !matches!(status, 502..=504));
                    return Ok((answer, flight));
                }
            },
            Outcome::Unsent if reused && !fresh_retry_used => {
                (pooled, fresh_retry_used) = (false, true);
                continue;
            }
            Outcome::Closed if reused && replayable && !fresh_retry_used => {
                (pooled, fresh_retry_used) = (false, true);
                continue;
            }
            // It cannot go again, and the endpoint is not to blame: it
            // closed an idle connection as the request went out.
            Outcome::Closed if reused && !replayable => {
                fail(worker, upstream, "stale_connection");
                return Err((Failure::Stale, Some(addr)));
            }
            Outcome::Unsent => match attempts.retry_unsent(addr) {
                Some(next) => next,
                None => {
                    upstream.record(flight.endpoint(), false);
                    return Err((Failure::Protocol, None));
                }
            },
            Outcome::Closed | Outcome::Failed => {
                fail(worker, upstream, "protocol");
                match attempts.retry(addr) {
                    Some(next) => next,
                    None => {
                        upstream.record(flight.endpoint(), false);
                        return Err((Failure::Protocol, None));
                    }
                }
            }
            Outcome::Fatal(failure) => {
                if let Some(kind) = failure.upstream_kind() {
                    upstream.record(flight.endpoint(), false);
                    fail(worker, upstream, kind);
                }
                return Err((failure, Some(addr)));
            }
        };
        upstream.record(flight.endpoint(), false);
        (flight, pooled) = (next, true);
    }
}

/// A connection to `addr` for one request of `upstream`: a pooled one when
/// `pooled` and one fit for the request is idle (see
/// [`super::pool::Pool::take_for`]), else a new one. Nothing of the
/// request is sent yet.
async fn open(
    worker: &Worker,
    upstream: &Upstream,
    addr: SocketAddr,
    pooled: bool,
    replayable: bool,
) -> Result<Conn, Failure> {
    // Making a connection is boxed: it is rare, and its state would
    // otherwise make every request's task larger.
    match upstream.settings.protocol {
        UpstreamProtocol::H2c => {
            let cached = worker
                .h2
                .h2
                .borrow()
                .get(&addr)
                .filter(|s| !s.is_closed())
                .cloned();
            let mut sender = match cached {
                Some(s) => s,
                None => Box::pin(handshake_h2c(worker, upstream, addr)).await?,
            };
            sender.ready().await.map_err(|_| Failure::Protocol)?;
            Ok(Conn::H2(sender))
        }
        UpstreamProtocol::Http1 => match pooled
            .then(|| worker.pool.take_for(addr, replayable))
            .flatten()
        {
            Some(stream) => Ok(Conn::H1 {
                stream,
                reused: true,
            }),
            None => Ok(Conn::H1 {
                stream: Box::pin(connect(upstream, addr)).await?,
                reused: false,
            }),
        },
    }
}

/// A new h2c connection to `addr`, kept for the worker's later requests.
async fn handshake_h2c(
    worker: &Worker,
    upstream: &Upstream,
    addr: SocketAddr,
) -> Result<hyper::client::conn::http2::SendRequest<UpstreamBody>, Failure> {
    let stream = connect(upstream, addr).await?;
    let ping = worker.shared.limits.load().h2_ping_interval.get();
    let mut builder = hyper::client::conn::http2::Builder::new(super::worker::LocalExec);
    builder.timer(hyper_util::rt::TokioTimer::new());
    // An endpoint that vanished (its host gone, no reset) fails its
    // requests within two ping intervals instead of their whole timeout.
    if !ping.is_zero() {
        builder.keep_alive_interval(ping).keep_alive_timeout(ping);
    }
    let (sender, conn) = builder
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|_| Failure::Protocol)?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    worker.h2.h2.borrow_mut().insert(addr, sender.clone());
    Ok(sender)
}

async fn connect(upstream: &Upstream, addr: SocketAddr) -> Result<TcpStream, Failure> {
    upstream.dial(addr).await.map_err(|e| Failure::Connect {
        timed_out: e.timed_out,
    })
}
