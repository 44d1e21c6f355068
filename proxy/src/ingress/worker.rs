//! A worker thread's context: what every worker shares (routes, limits,
//! metrics, the access log), and what each owns: its upstream connection
//! pools, spare buffers and request ids. Each worker runs its connections
//! on a single-threaded runtime, so the hot path takes no locks.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::AsyncRead;
use tokio::net::TcpStream;

use super::access_log::AccessLog;
use super::config::Limits;
use super::h2_body::UpstreamBody;
use super::metrics::{FailureLabels, ProxyMetrics, RequestLabels, RouteLabels};
use super::pool::Pool;
use super::routes::RouteTable;
use super::upstream::Upstream;

/// What every worker shares: the current routes and limits, metrics, logs.
pub struct Shared {
    /// The route table in force; replaced whole on reload.
    pub routes: arc_swap::ArcSwap<RouteTable>,
    /// The limits in force; replaced whole on reload.
    pub limits: arc_swap::ArcSwap<Limits>,
    /// Metrics.
    pub metrics: ProxyMetrics,
    /// Access log, when enabled.
    pub access_log: arc_swap::ArcSwapOption<AccessLog>,
    /// Client connections open now, across workers.
    pub open: std::sync::atomic::AtomicUsize,
    /// Set when shutdown begins: responses from then on close their
    /// connection, so clients reconnect elsewhere.
    pub draining: std::sync::atomic::AtomicBool,
    /// Requests answered, across workers: the proxy going quiet after a
    /// load gives its freed memory back.
    pub served: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// No routes, default limits, no access log.
    #[cfg(test)]
    pub(super) fn for_tests() -> Self {
        Self {
            routes: arc_swap::ArcSwap::from_pointee(RouteTable::default()),
            limits: arc_swap::ArcSwap::from_pointee(Limits::default()),
            metrics: ProxyMetrics::register(&orca_core::telemetry::Metrics::new()),
            access_log: arc_swap::ArcSwapOption::empty(),
            open: Default::default(),
            draining: Default::default(),
            served: Default::default(),
        }
    }
}

/// Per-thread state of a worker.
pub struct Worker {
    /// Process-wide state.
    pub shared: Arc<Shared>,
    /// This worker's idle upstream connections.
    pub pool: Pool<TcpStream>,
    rng: Cell<u64>,
    requests: Cell<u64>,
    id: u64,
    /// The process id, read once: glibc asks the kernel on every call.
    pid: u32,
    /// Read buffers for clients, reused so an idle keep-alive connection
    /// holds no buffer at all.
    spare_reads: RefCell<Vec<Vec<u8>>>,
    /// Read buffers for upstream responses, likewise.
    spare_upstream_reads: RefCell<Vec<Vec<u8>>>,
    /// Write buffers, likewise.
    spare_writes: RefCell<Vec<Vec<u8>>>,
    /// Upstream connections of HTTP/2 clients.
    pub h2: Clients,
    /// Wakes this worker's connections when draining begins.
    drain: tokio::sync::Notify,
}

/// Size of a client's read buffer; larger heads grow it up to the header
/// limit.
const READ_BUFFER: usize = 16 * 1024;

/// Size of an upstream's read buffer: a 16 KiB body and its head arrive in
/// one read and leave in one write, where 16 KiB took two of each (~9% less
/// CPU per 16 KiB response, wrk -c64, three rounds each). Clients' buffers
/// stay at 16 KiB: requests rarely fill them, and 32 KiB for both raised
/// the peak RSS at 256 connections by ~9 MiB.
const UPSTREAM_READ_BUFFER: usize = 32 * 1024;

/// Spare buffers a worker keeps while busy, at most (of each kind): a busy
/// request holds two read buffers (client and upstream), so below twice
/// the concurrency most requests allocated and zeroed fresh ones (4% of
/// the CPU at 64 connections with 64 spares). The spares go when the
/// worker turns quiet ([`Worker::release_spares`]).
const MAX_SPARE: usize = 512;

impl Worker {
    /// A worker numbered `id`.
    pub fn new(shared: Arc<Shared>, id: u64) -> Self {
        // Workers and processes must not balance in lockstep: mix the
        // clock, the worker id and the process id.
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let pid = std::process::id();
        let seed = clock ^ (id.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ u64::from(pid);
        Self {
            shared,
            pool: Pool::default(),
            rng: Cell::new(seed | 1),
            requests: Cell::new(0),
            id,
            pid,
            spare_reads: RefCell::new(Vec::new()),
            spare_upstream_reads: RefCell::new(Vec::new()),
            spare_writes: RefCell::new(Vec::new()),
            h2: Clients::default(),
            drain: tokio::sync::Notify::new(),
        }
    }

    /// Wakes every connection of this worker waiting in `drained`; called
    /// once `Shared::draining` is set.
    pub fn start_draining(&self) {
        self.drain.notify_waiters();
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.shared
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves once the worker drains. Every idle connection waits on
    /// this, and it is about half the size of waiting on the drain channel.
    pub async fn drained(&self) {
        let notified = self.drain.notified();
        tokio::pin!(notified);
        // Registered before the flag is read, so a drain that begins in
        // between still wakes it.
        notified.as_mut().enable();
        if !self.is_draining() {
            notified.await;
        }
    }

    pub(super) fn take_read_buffer(&self) -> Vec<u8> {
        self.spare_reads
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0; READ_BUFFER])
    }

    pub(super) fn take_upstream_read_buffer(&self) -> Vec<u8> {
        self.spare_upstream_reads
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0; UPSTREAM_READ_BUFFER])
    }

    /// Keeps a client or upstream read buffer for reuse; buffers grown for
    /// a large head are not kept.
    pub(super) fn give_read_buffer(&self, buf: Vec<u8>) {
        let spares = match buf.len() {
            READ_BUFFER => &self.spare_reads,
            UPSTREAM_READ_BUFFER => &self.spare_upstream_reads,
            _ => return,
        };
        let mut spare = spares.borrow_mut();
        if spare.len() < MAX_SPARE {
            spare.push(buf);
        }
    }

    /// Drops the spare buffers: called once a load has stopped, so what a
    /// burst needed is not kept while idle.
    pub fn release_spares(&self) {
        *self.spare_reads.borrow_mut() = Vec::new();
        *self.spare_upstream_reads.borrow_mut() = Vec::new();
        *self.spare_writes.borrow_mut() = Vec::new();
    }

    pub(super) fn take_write_buffer(&self) -> Vec<u8> {
        self.spare_writes
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(4096))
    }

    pub(super) fn give_write_buffer(&self, mut buf: Vec<u8>) {
        let mut spare = self.spare_writes.borrow_mut();
        if buf.capacity() > 0 && buf.capacity() <= 64 * 1024 && spare.len() < MAX_SPARE {
            buf.clear();
            spare.push(buf);
        }
    }

    /// A worker with no routes and default limits.
    #[cfg(test)]
    pub(super) fn for_tests() -> Self {
        Self::new(Arc::new(Shared::for_tests()), 0)
    }

    /// A fast, non-cryptographic random number (xorshift) for balancing.
    pub(super) fn roll(&self) -> u32 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        (x >> 32) as u32
    }

    /// A process-unique id for a request that arrived without one.
    pub(super) fn request_id(&self) -> RequestId {
        let n = self.requests.get() + 1;
        self.requests.set(n);
        RequestId::new(self.pid, self.id, n)
    }
}

/// A request id: the process id, the worker and the worker's request
/// count in hex (8, 4 and 12 digits), written without an allocation.
pub(super) struct RequestId([u8; 24]);

impl RequestId {
    fn new(pid: u32, worker: u64, n: u64) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 24];
        let mut put = |at: usize, digits: usize, value: u64| {
            for i in 0..digits {
                let shift = 4 * (digits - 1 - i);
                text[at + i] = HEX[((value >> shift) & 0xf) as usize];
            }
        };
        put(0, 8, u64::from(pid));
        put(8, 4, worker);
        put(12, 12, n);
        Self(text)
    }

    /// The id as text.
    pub(super) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits")
    }
}

/// A read buffer with a consumed prefix, so leftovers (pipelined requests,
/// body bytes read with a head) stay in place.
pub struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

/// A full read buffer (the head is larger than the limit).
#[derive(Debug)]
pub(super) struct BufferFull;

impl std::fmt::Display for BufferFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("buffer full")
    }
}

impl std::error::Error for BufferFull {}

impl Buf {
    /// A buffer over `storage` (its length is the capacity).
    pub(super) fn over(storage: Vec<u8>) -> Self {
        Self {
            data: storage,
            start: 0,
            end: 0,
        }
    }

    /// A buffer over `storage` whose first `n` bytes were read into it.
    pub(super) fn over_filled(storage: Vec<u8>, n: usize) -> Self {
        let mut buf = Self::over(storage);
        buf.end = n;
        buf
    }

    /// Gives the storage back when no bytes are held.
    pub(super) fn release(&mut self) -> Option<Vec<u8>> {
        (self.is_empty() && !self.data.is_empty()).then(|| std::mem::take(&mut self.data))
    }

    /// The bytes read and not yet consumed.
    pub(super) fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// Whether no bytes are held.
    pub(super) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Drops the first `n` bytes held.
    pub(super) fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more bytes, growing the buffer up to `max` when it is full.
    pub(super) async fn read_from<R: AsyncRead + Unpin>(
        &mut self,
        src: &mut R,
        max: usize,
    ) -> io::Result<usize> {
        if self.end == self.data.len() {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.data.len() < max {
                let grown = (self.data.len() * 2).min(max);
                self.data.resize(grown, 0);
            } else {
                return Err(io::Error::other(BufferFull));
            }
        }
        std::future::poll_fn(|cx| self.poll_read_from(cx, src)).await
    }

    /// Reads more bytes into the room after those held, which the caller
    /// has made sure there is.
    pub(super) fn poll_read_from<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
    ) -> Poll<io::Result<usize>> {
        let mut read = tokio::io::ReadBuf::new(&mut self.data[self.end..]);
        std::task::ready!(std::pin::Pin::new(src).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        self.end += n;
        Poll::Ready(Ok(n))
    }
}

/// The route label of requests no route matched.
pub(super) fn no_route() -> Arc<str> {
    static NO_ROUTE: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    NO_ROUTE.get_or_init(|| Arc::from("-")).clone()
}

/// Counts a request in the metrics (for both HTTP versions); the route's
/// name is shared, not copied, so counting allocates nothing.
pub(super) fn record(shared: &Shared, route: &Arc<str>, status: u16, started: Instant) {
    shared
        .served
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    shared
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            status,
        })
        .inc();
    shared
        .metrics
        .latency
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
}

pub(super) fn fail(worker: &Worker, upstream: &Upstream, kind: &'static str) {
    worker
        .shared
        .metrics
        .upstream_failures
        .get_or_create(&FailureLabels {
            upstream: upstream.name.clone(),
            kind,
        })
        .inc();
}

/// A read buffer borrowed from the worker for one exchange; `W` is how the
/// worker is held (borrowed, or shared by a body that outlives the call).
pub(super) struct LeasedBuf<W: std::ops::Deref<Target = Worker>> {
    buf: Buf,
    worker: W,
}

impl<W: std::ops::Deref<Target = Worker>> LeasedBuf<W> {
    /// An upstream read buffer of `worker`'s.
    pub(super) fn new(worker: W) -> Self {
        Self {
            buf: Buf::over(worker.take_upstream_read_buffer()),
            worker,
        }
    }

    /// The worker the buffer goes back to.
    pub(super) fn worker(&self) -> &Worker {
        &self.worker
    }
}

impl<W: std::ops::Deref<Target = Worker>> std::ops::Deref for LeasedBuf<W> {
    type Target = Buf;
    fn deref(&self) -> &Buf {
        &self.buf
    }
}

impl<W: std::ops::Deref<Target = Worker>> std::ops::DerefMut for LeasedBuf<W> {
    fn deref_mut(&mut self) -> &mut Buf {
        &mut self.buf
    }
}

impl<W: std::ops::Deref<Target = Worker>> Drop for LeasedBuf<W> {
    fn drop(&mut self) {
        self.worker
            .give_read_buffer(std::mem::take(&mut self.buf.data));
    }
}

/// Runs hyper's tasks on the worker's own thread.
#[derive(Clone, Copy, Debug)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// The h2c upstream connections of one worker, one shared connection per
/// endpoint. HTTP/1.1 upstreams of HTTP/2 clients use the worker's pool,
/// as HTTP/1.1 clients do (see `h1_upstream`).
#[derive(Default)]
pub struct Clients {
    pub(super) h2:
        RefCell<HashMap<SocketAddr, hyper::client::conn::http2::SendRequest<UpstreamBody>>>,
}

impl Clients {
    /// Forgets h2c connections that have closed.
    pub fn expire(&self) {
        self.h2.borrow_mut().retain(|_, s| !s.is_closed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_the_pid_worker_and_count_in_fixed_width_hex() {
        for (pid, worker, n) in [
            (0x1234, 2, 0xabc),
            (u32::MAX, 0xffff, (1 << 48) - 1),
            (1, 0, 1),
        ] {
            assert_eq!(
                RequestId::new(pid, worker, n).as_str(),
                format!("{pid:08x}{worker:04x}{n:012x}")
            );
        }
    }

    #[test]
    fn spare_buffers_are_reused_up_to_the_cap_and_dropped_when_quiet() {
        let worker = Worker::for_tests();
        let buf = worker.take_read_buffer();
        let at = buf.as_ptr();
        worker.give_read_buffer(buf);
        let again = worker.take_read_buffer();
        assert_eq!(again.as_ptr(), at, "reused");
        worker.give_read_buffer(again);

        let taken: Vec<Vec<u8>> = (0..MAX_SPARE + 10)
            .map(|_| worker.take_read_buffer())
            .collect();
        for buf in taken {
            worker.give_read_buffer(buf);
        }
        assert_eq!(worker.spare_reads.borrow().len(), MAX_SPARE);
        let upstream = worker.take_upstream_read_buffer();
        assert_eq!(upstream.len(), UPSTREAM_READ_BUFFER);
        worker.give_read_buffer(upstream);
        assert_eq!(worker.spare_upstream_reads.borrow().len(), 1);
        assert_eq!(
            worker.take_read_buffer().len(),
            READ_BUFFER,
            "each size has its own spares"
        );
        worker.give_read_buffer(vec![0; READ_BUFFER + 1]);
        assert_eq!(
            worker.spare_reads.borrow().len(),
            MAX_SPARE - 1,
            "a grown buffer is not kept"
        );
        worker.give_write_buffer(Vec::with_capacity(100));
        worker.release_spares();
        assert!(worker.spare_reads.borrow().is_empty());
        assert!(worker.spare_upstream_reads.borrow().is_empty());
        assert!(worker.spare_writes.borrow().is_empty());
    }
}
