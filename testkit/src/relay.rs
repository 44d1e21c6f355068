//! A TCP relay on loopback that a test can cut and restore, to take a
//! client's connection to a real server away while the server stays up
//! (a watch that drops while others still write).

use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

/// Forwards connections from a loopback port to `target` until cut.
pub struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Starts relaying from a free loopback port to `target`.
    pub fn start(target: SocketAddr) -> Self {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding the relay's port");
        let addr = listener.local_addr().expect("the relay's address");
        let relay = Self {
            addr,
            cut: Arc::new(AtomicBool::new(false)),
            open: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (cut, open, stop) = (relay.cut.clone(), relay.open.clone(), relay.stop.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if cut.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                if let Err(e) = pipe(client, server, &open) {
                    eprintln!("relay: {e}");
                }
            }
        });
        relay
    }

    /// Where clients connect: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every relayed connection and refuses new ones (they are
    /// accepted and closed at once) until [`Relay::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes the accept loop so it sees `stop`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies both ways between `client` and `server` on two threads; keeps
/// handles in `open` so a cut can close them.
fn pipe(client: TcpStream, server: TcpStream, open: &Mutex<Vec<TcpStream>>) -> io::Result<()> {
    {
        let mut open = open.lock().unwrap_or_else(PoisonError::into_inner);
        open.push(client.try_clone()?);
        open.push(server.try_clone()?);
    }
    for (mut from, mut to) in [(client.try_clone()?, server.try_clone()?), (server, client)] {
        thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut read = conn.try_clone().unwrap();
                    let mut write = conn;
                    let _ = io::copy(&mut read, &mut write);
                });
            }
        });
        addr
    }

    fn echo(addr: &str) -> io::Result<String> {
        let mut conn = TcpStream::connect(addr)?;
        conn.write_all(b"ping")?;
        let mut buf = [0; 4];
        conn.read_exact(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    #[test]
    fn relays_until_cut_and_again_once_restored() {
        let relay = Relay::start(echo_server());
        let addr = relay.addr.to_string();
        assert_eq!(echo(&addr).unwrap(), "ping");
        let mut held = TcpStream::connect(&addr).unwrap();
        held.write_all(b"ping").unwrap();
        let mut buf = [0; 4];
        held.read_exact(&mut buf).unwrap();
        relay.cut();
        assert!(
            held.read(&mut buf).map_or(true, |n| n == 0),
            "cut closes open connections"
        );
        assert!(echo(&addr).is_err(), "cut refuses new ones");
        relay.restore();
        assert_eq!(echo(&addr).unwrap(), "ping");
    }
}
