//! A small HTTP/1.1 server that can be healthy, answer 503, or be down
//! (refusing connections): the destination of the sink-down test.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::Delivered;

/// How the server behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// 200 for every request; bodies are counted.
    Up = 0,
    /// 503 for every request.
    Failing = 1,
    /// No listener; open connections are closed.
    Down = 2,
    /// 400 for every request, as Elasticsearch answers a mapping error.
    Rejecting = 3,
}

/// One accepted request.
#[derive(Debug, Clone)]
pub struct Body {
    /// Its `Content-Type`.
    pub content_type: String,
    /// Its `Content-Encoding`, empty if none.
    pub encoding: String,
    /// The body as received.
    pub bytes: Vec<u8>,
}

#[derive(Default)]
struct State {
    mode: AtomicU8,
    stop: AtomicBool,
    failed: AtomicU64,
    delivered: Mutex<Delivered>,
    bodies: Mutex<Vec<Body>>,
}

/// The running server; stops when dropped.
pub struct TestServer {
    /// Its loopback port.
    pub port: u16,
    state: Arc<State>,
}

impl TestServer {
    /// Starts, up.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        std::thread::spawn(move || accept(listener, port, &shared));
        Self { port, state }
    }

    /// Switches behaviour.
    pub fn set(&self, mode: Mode) {
        self.state.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Requests answered with 503 or 400.
    pub fn failed(&self) -> u64 {
        self.state.failed.load(Ordering::SeqCst)
    }

    /// Runs `f` on what was accepted so far (JSON-lines bodies).
    pub fn delivered<T>(&self, f: impl FnOnce(&Delivered) -> T) -> T {
        f(&self.state.delivered.lock().expect("lock"))
    }

    /// Every accepted request.
    pub fn bodies(&self) -> Vec<Body> {
        self.state.bodies.lock().expect("lock").clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
    }
}

fn mode(state: &State) -> u8 {
    state.mode.load(Ordering::SeqCst)
}

fn accept(listener: TcpListener, port: u16, state: &Arc<State>) {
    let mut listener = Some(listener);
    while !state.stop.load(Ordering::SeqCst) {
        if mode(state) == Mode::Down as u8 {
            listener = None;
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let Some(open) = &listener else {
            listener = TcpListener::bind(("127.0.0.1", port)).ok();
            if let Some(l) = &listener {
                l.set_nonblocking(true).expect("nonblocking");
            }
            continue;
        };
        open.set_nonblocking(true).expect("nonblocking");
        match open.accept() {
            Ok((stream, _)) => {
                let state = Arc::clone(state);
                std::thread::spawn(move || serve(stream, &state));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn serve(stream: TcpStream, state: &State) {
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clones");
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = Vec::new();
        let mut line = String::new();
        let mut content_length = 0usize;
        let mut content_type = String::new();
        let mut encoding = String::new();
        loop {
            if state.stop.load(Ordering::SeqCst) || mode(state) == Mode::Down as u8 {
                return;
            }
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) => {}
                Err(err) if is_timeout(&err) => continue,
                Err(_) => return,
            }
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                content_length = v.trim().parse().expect("content length");
            }
            if let Some(v) = lower.strip_prefix("content-type:") {
                content_type = v.trim().to_string();
            }
            if let Some(v) = lower.strip_prefix("content-encoding:") {
                encoding = v.trim().to_string();
            }
            head.push(line.clone());
        }
        let mut body = vec![0; content_length];
        let mut filled = 0;
        while filled < body.len() {
            match reader.read(&mut body[filled..]) {
                Ok(0) => return,
                Ok(n) => filled += n,
                Err(err) if is_timeout(&err) => {}
                Err(_) => return,
            }
        }
        let answer: &[u8] = match mode(state) {
            m if m == Mode::Failing as u8 => {
                state.failed.fetch_add(1, Ordering::SeqCst);
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy"
            }
            m if m == Mode::Rejecting as u8 => {
                state.failed.fetch_add(1, Ordering::SeqCst);
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 24\r\n\r\nmapper_parsing_exception"
            }
            m if m == Mode::Up as u8 => {
                if encoding.is_empty() {
                    let more = Delivered::from_json_lines(&body);
                    let mut delivered = state.delivered.lock().expect("lock");
                    for (seq, count) in more.counts {
                        *delivered.counts.entry(seq).or_default() += count;
                    }
                    delivered.torn += more.torn;
                    delivered.garbled.extend(more.garbled);
                }
                state.bodies.lock().expect("lock").push(Body {
                    content_type: content_type.clone(),
                    encoding: encoding.clone(),
                    bytes: body,
                });
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"errors\":false}"
            }
            _ => return,
        };
        if writer.write_all(answer).is_err() {
            return;
        }
    }
}

fn is_timeout(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}
