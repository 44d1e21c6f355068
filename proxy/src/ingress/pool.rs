//! Idle upstream connections, kept per worker thread so taking and
//! returning one never takes a lock. The pool holds as many connections as
//! there were concurrent requests (up to a cap per endpoint): a pool smaller
//! than the concurrency makes the proxy reconnect on every request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Idle connections kept per endpoint, at most.
const MAX_IDLE_PER_ENDPOINT: usize = 4096;

struct Idle {
    stream: TcpStream,
    since: Instant,
}

/// One worker's idle upstream connections.
#[derive(Default)]
pub struct Pool {
    idle: RefCell<HashMap<SocketAddr, Vec<Idle>>>,
}

impl Pool {
    /// An idle connection to `addr` that is still open and younger than
    /// `max_idle`, most recently used first (its peer is least likely to
    /// have timed it out).
    pub fn take(&self, addr: SocketAddr, max_idle: Duration) -> Option<TcpStream> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        while let Some(conn) = list.pop() {
            if conn.since.elapsed() > max_idle {
                continue;
            }
            // A closed or chattering connection reads something (0 bytes or
            // unsolicited data) without blocking; a healthy idle one blocks.
            let mut probe = [0u8; 1];
            match conn.stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(conn.stream),
                _ => continue,
            }
        }
        None
    }

    /// Keeps a connection whose last response was complete.
    pub fn put(&self, addr: SocketAddr, stream: TcpStream) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(Idle {
                stream,
                since: Instant::now(),
            });
        }
    }

    /// Drops connections idle for longer than `max_idle`.
    pub fn expire(&self, max_idle: Duration) {
        let mut idle = self.idle.borrow_mut();
        for list in idle.values_mut() {
            list.retain(|c| c.since.elapsed() <= max_idle);
        }
        idle.retain(|_, list| !list.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn reuses_open_connections_and_drops_closed_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::default();
        let a = TcpStream::connect(addr).await.unwrap();
        let (server_a, _) = listener.accept().await.unwrap();
        pool.put(addr, a);
        assert!(pool.take(addr, Duration::from_secs(60)).is_some());
        assert!(
            pool.take(addr, Duration::from_secs(60)).is_none(),
            "taken once"
        );

        let b = TcpStream::connect(addr).await.unwrap();
        let (server_b, _) = listener.accept().await.unwrap();
        pool.put(addr, b);
        drop(server_b);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            pool.take(addr, Duration::from_secs(60)).is_none(),
            "peer closed it"
        );

        let c = TcpStream::connect(addr).await.unwrap();
        pool.put(addr, c);
        assert!(pool.take(addr, Duration::ZERO).is_none(), "too old");
        drop(server_a);
    }
}
