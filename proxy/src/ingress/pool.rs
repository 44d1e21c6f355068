//! Idle HTTP/1.1 upstream connections, kept per worker thread so taking
//! and returning one never takes a lock, under their upstream's cap and
//! idle timeout. HTTP/1.1 and HTTP/2 clients' requests share them.
//!
//! Only idle connections are pooled; a busy one belongs to its request. The
//! cap per endpoint must stay above the concurrency a worker sees: when a
//! burst of responses ends, that many connections come back at once, and a
//! pool smaller than the burst closes them only to reconnect for the next
//! requests.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Idle connections a worker keeps per endpoint unless the upstream says
/// otherwise: above any concurrency one worker serves, so a burst's
/// connections all stay for the next one (see the module documentation).
pub const DEFAULT_MAX_IDLE_PER_ENDPOINT: usize = 4096;

/// How long a connection may have been idle and still carry a request that
/// cannot be sent again (a POST, a body streamed through). Servers close
/// idle keep-alive connections after a timeout (gunicorn's is 2 s, Node's
/// and Apache's 5 s, nginx's 75 s); a request sent as the close is on its
/// way is lost, and only one that may be replayed can then be retried. Below
/// a second the race is not worth a new connection.
pub const UNSAFE_REUSE_MAX_IDLE: Duration = Duration::from_secs(1);

/// How long, and how many of, an upstream's idle connections are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
    /// Idle connections kept per endpoint, at most.
    pub max_idle: usize,
}

/// A pooled connection that can tell whether it is still worth reusing.
pub trait Reusable {
    /// Whether the connection is open and quiet, as an idle one should be.
    fn usable(&self) -> bool;
}

impl Reusable for TcpStream {
    fn usable(&self) -> bool {
        // A closed or chattering connection reads something (0 bytes or
        // unsolicited data) without blocking; a healthy idle one blocks.
        // Asked of the socket itself: the runtime's readiness may not have
        // seen a close that arrived while the worker was busy.
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit()];
        matches!(
            socket2::SockRef::from(self).peek(&mut probe),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
    }
}

struct Idle<C> {
    conn: C,
    since: Instant,
    expires: Instant,
}

/// One worker's idle upstream connections of one kind, by endpoint.
pub struct Pool<C> {
    idle: RefCell<HashMap<SocketAddr, Vec<Idle<C>>>>,
}

impl<C> Default for Pool<C> {
    fn default() -> Self {
        Self {
            idle: RefCell::new(HashMap::new()),
        }
    }
}

impl<C: Reusable> Pool<C> {
    /// An idle connection to `addr` that is still usable and has not
    /// outlived its idle timeout, most recently used first (its peer is
    /// least likely to have timed it out), for a request that may be sent
    /// again when `replayable`. One that cannot takes only a connection idle
    /// for less than [`UNSAFE_REUSE_MAX_IDLE`], which no common server's
    /// keep-alive timeout closes, so it does not meet a close already on
    /// its way.
    pub fn take_for(&self, addr: SocketAddr, replayable: bool) -> Option<C> {
        let max_idle = (!replayable).then_some(UNSAFE_REUSE_MAX_IDLE);
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(entry) = list.last() {
            // The most recently used comes first, so once one is too old
            // for this request, the rest are too.
            if max_idle.is_some_and(|max| now.saturating_duration_since(entry.since) >= max) {
                return None;
            }
            let entry = list.pop()?;
            if entry.expires > now && entry.conn.usable() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Keeps a connection that is free for another request for up to
    /// `keep.idle_timeout`; beyond `keep.max_idle` connections to `addr` it
    /// is dropped, which closes it.
    pub fn put(&self, addr: SocketAddr, conn: C, keep: Keep) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() < keep.max_idle {
            let since = Instant::now();
            list.push(Idle {
                conn,
                since,
                expires: since + keep.idle_timeout,
            });
        }
    }

    /// Closes connections idle for longer than their idle timeout.
    pub fn expire(&self) {
        let now = Instant::now();
        let mut idle = self.idle.borrow_mut();
        for list in idle.values_mut() {
            list.retain(|c| c.expires > now);
        }
        idle.retain(|_, list| !list.is_empty());
    }

    /// Idle connections held now, across endpoints.
    pub fn len(&self) -> usize {
        self.idle.borrow().values().map(Vec::len).sum()
    }

    /// Whether no connection is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Kept for a while, up to the default cap.
    fn keep(idle_timeout: Duration) -> Keep {
        Keep {
            idle_timeout,
            max_idle: DEFAULT_MAX_IDLE_PER_ENDPOINT,
        }
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn reuses_open_connections_and_drops_closed_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::default();
        let a = TcpStream::connect(addr).await.unwrap();
        let (server_a, _) = listener.accept().await.unwrap();
        pool.put(addr, a, keep(MINUTE));
        assert!(pool.take_for(addr, true).is_some());
        assert!(pool.take_for(addr, true).is_none(), "taken once");

        let b = TcpStream::connect(addr).await.unwrap();
        let (server_b, _) = listener.accept().await.unwrap();
        pool.put(addr, b, keep(MINUTE));
        drop(server_b);
        // Asked of the socket: no turn of the runtime is needed to see it.
        assert!(pool.take_for(addr, true).is_none(), "peer closed it");

        let c = TcpStream::connect(addr).await.unwrap();
        pool.put(addr, c, keep(Duration::ZERO));
        assert!(pool.take_for(addr, true).is_none(), "too old");
        drop(server_a);
    }

    #[tokio::test]
    async fn requests_that_cannot_be_replayed_take_only_young_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::default();
        let conn = TcpStream::connect(addr).await.unwrap();
        let _server = listener.accept().await.unwrap();
        pool.put(addr, conn, keep(MINUTE));
        assert!(pool.take_for(addr, false).is_some(), "just used");
        let conn = TcpStream::connect(addr).await.unwrap();
        let _server = listener.accept().await.unwrap();
        pool.put(addr, conn, keep(MINUTE));
        pool.idle.borrow_mut().get_mut(&addr).unwrap()[0].since -= UNSAFE_REUSE_MAX_IDLE;
        assert!(pool.take_for(addr, false).is_none(), "idle a second");
        assert!(
            pool.take_for(addr, true).is_some(),
            "fine for a replayable one"
        );
    }

    /// Reads from each accepted connection until its peer closes it, and
    /// counts the connections still open.
    async fn counting_backend() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::Ordering;
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = open.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                    counter.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (addr, open)
    }

    /// Waits (generously) until `open` reads `want`.
    async fn until_open(open: &std::sync::atomic::AtomicUsize, want: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while open.load(std::sync::atomic::Ordering::SeqCst) != want {
            assert!(
                Instant::now() < deadline,
                "{} connections open at the backend, expected {want}",
                open.load(std::sync::atomic::Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn keeps_at_most_the_cap_and_closes_the_rest() {
        let (addr, open) = counting_backend().await;
        let pool = Pool::default();
        let three = Keep {
            idle_timeout: MINUTE,
            max_idle: 3,
        };
        let mut conns = Vec::new();
        for _ in 0..8 {
            conns.push(TcpStream::connect(addr).await.unwrap());
        }
        until_open(&open, 8).await;
        // Eight requests end at once: three connections stay for the next.
        for c in conns {
            pool.put(addr, c, three);
        }
        assert_eq!(pool.len(), 3);
        until_open(&open, 3).await;
        pool.expire();
        assert_eq!(pool.len(), 3, "none has idled out yet");
    }

    #[tokio::test]
    async fn expire_closes_connections_idle_past_their_timeout() {
        let (addr, open) = counting_backend().await;
        let pool = Pool::default();
        for timeout in [Duration::ZERO, Duration::ZERO, MINUTE] {
            pool.put(addr, TcpStream::connect(addr).await.unwrap(), keep(timeout));
        }
        until_open(&open, 3).await;
        pool.expire();
        assert_eq!(pool.len(), 1);
        until_open(&open, 1).await;
        assert!(pool.take_for(addr, true).is_some(), "the young one is kept");
    }
}
