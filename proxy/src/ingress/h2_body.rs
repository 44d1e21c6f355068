//! Bodies handed to hyper: an HTTP/2 client's request body metered against
//! the body limit and the body read timeout, and a body piped from an
//! HTTP/1.1 client, for upstreams spoken to through hyper.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use http_body_util::Either;
use hyper::body::{Bytes, Frame, Incoming};
use tokio::sync::mpsc;

/// A request body sent upstream: an HTTP/2 client's as it arrives, or one
/// read from an HTTP/1.1 client (empty for a retry's copy).
pub(super) type UpstreamBody = Either<Capped, Piped>;

/// An HTTP/2 client's request body, cut off with an error (which aborts
/// the upstream request) once its data passes the body limit: with or
/// without a `content-length`, DATA frames are counted as they pass.
pub(super) type Capped = Metered<Stalls<Incoming>, Allowance>;

/// A client's request body that fails when no frame comes within the body
/// read timeout (nginx's `client_body_timeout`), so a client that goes
/// quiet mid-body does not hold its stream and an upstream request open.
pub(super) struct Stalls<B> {
    inner: B,
    timeout: std::time::Duration,
    /// Armed when a poll finds nothing, from then; boxed only for bodies
    /// that ever have to wait.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A frame came since the timer was armed: wait afresh.
    rearm: bool,
    /// Set when the timeout cut the body off, so the failure that follows
    /// upstream is answered 408 and not blamed on the endpoint.
    pub(super) stalled: Rc<Cell<bool>>,
}

impl<B> Stalls<B> {
    /// `inner`, failing once no frame comes for `timeout`.
    pub(super) fn new(inner: B, timeout: std::time::Duration) -> Self {
        Self {
            inner,
            timeout,
            timer: None,
            rearm: false,
            stalled: Rc::default(),
        }
    }
}

/// The client's request body stopped coming.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body stopped coming")]
pub(super) struct BodyStalled;

impl<B> hyper::body::Body for Stalls<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            self.rearm = true;
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let this = &mut *self;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if std::mem::take(&mut this.rearm) {
            timer.as_mut().reset(deadline);
        }
        ready!(timer.as_mut().poll(cx));
        this.stalled.set(true);
        Poll::Ready(Some(Err(Box::new(BodyStalled))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// What is left of a request body's limit.
pub(super) struct Allowance {
    left: u64,
    /// Set when the limit cut the body off, so the failure that follows
    /// upstream is answered 413 and not blamed on the endpoint.
    pub(super) exceeded: Rc<Cell<bool>>,
}

impl Allowance {
    /// `left` bytes allowed.
    pub(super) fn new(left: u64) -> Self {
        Self {
            left,
            exceeded: Rc::default(),
        }
    }
}

impl Meter for Allowance {
    fn data(&mut self, len: u64) -> bool {
        if len > self.left {
            self.exceeded.set(true);
            return false;
        }
        self.left -= len;
        true
    }
}

/// Sees the size of every DATA frame of a body.
pub(super) trait Meter {
    /// Counts `len` bytes of data; `false` cuts the body off there.
    fn data(&mut self, len: u64) -> bool;

    /// The body's reader asks for its next frame.
    fn polled(&mut self) {}
}

/// A body whose DATA frames pass through a meter on their way.
pub(super) struct Metered<B, M> {
    pub(super) inner: B,
    pub(super) meter: M,
}

/// The client's request body passed the body limit.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body is larger than allowed")]
pub(super) struct BodyTooLarge;

impl<B, M> hyper::body::Body for Metered<B, M>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    M: Meter + Unpin,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.meter.polled();
        let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &polled
            && let Some(data) = frame.data_ref()
            && !self.meter.data(data.len() as u64)
        {
            return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
        }
        Poll::Ready(polled.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body read from an HTTP/1.1 client and handed over piece by
/// piece; `None` marks its end. A sender dropped before the end aborts the
/// stream, so a body cut short never looks complete upstream.
pub(super) struct Piped(Option<mpsc::Receiver<Option<Bytes>>>);

/// The client's request body ended before its framing said it would.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body was cut short")]
pub(super) struct BodyCut;

impl Piped {
    /// An empty body.
    pub(super) fn empty() -> Self {
        Self(None)
    }

    /// A body fed through the returned sender; a few pieces are buffered,
    /// so a slow upstream slows the client down rather than filling memory.
    pub(super) fn channel() -> (mpsc::Sender<Option<Bytes>>, Self) {
        let (tx, rx) = mpsc::channel(4);
        (tx, Self(Some(rx)))
    }
}

impl hyper::body::Body for Piped {
    type Data = Bytes;
    type Error = BodyCut;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyCut>>> {
        let Some(rx) = self.0.as_mut() else {
            return Poll::Ready(None);
        };
        let piece = ready!(rx.poll_recv(cx));
        match piece {
            Some(Some(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Some(None) => {
                self.0 = None;
                Poll::Ready(None)
            }
            None => {
                self.0 = None;
                Poll::Ready(Some(Err(BodyCut)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}
