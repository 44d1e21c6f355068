//! A sink that stops reading: the `tcp` output's writes stall on a
//! connection that stays open, the buffer stays within
//! `buffer.max_memory`, the reader pauses, and once the receiver reads
//! again every line arrives, whole.

use std::io::Read as _;
use std::net::TcpListener;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::common::{
    Delivered, Dirs, Shipper, Writer, cri, free_port, wait_reader_held_back, wait_until,
};

const BEFORE: u64 = 20_000;
const DURING: u64 = 200_000;
const MAX_MEMORY: u64 = 1 << 20;

/// What the receiver's connections have read, and whether they read.
#[derive(Default)]
struct Gate {
    reading: bool,
    /// Each connection's bytes, in the order they were accepted.
    received: Vec<Vec<u8>>,
    open: usize,
}

/// A JSON-lines receiver on loopback whose connections read only while
/// its gate is open; a closed gate leaves them established and unread.
struct Receiver {
    port: u16,
    gate: Arc<(Mutex<Gate>, Condvar)>,
}

impl Receiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
        let port = listener.local_addr().expect("addr").port();
        let gate = Arc::new((
            Mutex::new(Gate {
                reading: true,
                ..Gate::default()
            }),
            Condvar::new(),
        ));
        let g = gate.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let g = g.clone();
                let index = {
                    let mut gate = g.0.lock().unwrap();
                    gate.received.push(Vec::new());
                    gate.open += 1;
                    gate.received.len() - 1
                };
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        drop(g.1.wait_while(g.0.lock().unwrap(), |gate| !gate.reading));
                        let n = stream.read(&mut buf).unwrap_or(0);
                        let mut gate = g.0.lock().unwrap();
                        if n == 0 {
                            gate.open -= 1;
                            g.1.notify_all();
                            return;
                        }
                        gate.received[index].extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        Self { port, gate }
    }

    fn set_reading(&self, reading: bool) {
        self.gate.0.lock().unwrap().reading = reading;
        self.gate.1.notify_all();
    }

    /// Every connection's lines, each connection parsed on its own so a
    /// record cut at a connection's end shows as torn.
    fn delivered(&self) -> Delivered {
        let gate = self.gate.0.lock().unwrap();
        let mut all = Delivered::default();
        for bytes in &gate.received {
            let one = Delivered::from_json_lines(bytes);
            for (seq, n) in one.counts {
                *all.counts.entry(seq).or_default() += n;
            }
            all.torn += one.torn;
            all.garbled.extend(one.garbled);
        }
        all
    }

    /// Waits until every connection the shipper opened has been closed.
    fn wait_closed(&self) {
        let gate = self.gate.0.lock().unwrap();
        let (gate, timeout) = self
            .gate
            .1
            .wait_timeout_while(gate, Duration::from_secs(30), |gate| gate.open > 0)
            .unwrap();
        assert!(!timeout.timed_out(), "{} connections still open", gate.open);
    }
}

#[test]
fn a_receiver_that_stops_reading_holds_memory_to_the_bound_and_loses_nothing() {
    let dirs = Dirs::new();
    let receiver = Receiver::start();
    let admin = free_port();
    let output = format!(
        "  - name: tcp\n    type: tcp\n    address: 127.0.0.1:{}\n    batch: {{max_events: 1000, max_bytes: 1MiB, max_wait: 50ms}}\n    retry: {{initial_backoff: 20ms, max_backoff: 200ms}}\n    timeout: 500ms\n",
        receiver.port
    );
    let config = dirs.config(admin, "1MiB", &output);
    let shipper = Shipper::start(&config, &dirs.root.path().join("shipper.log"));
    let mut writer = Writer::open(dirs.container("api", "api").join("0.log"));
    for seq in 0..BEFORE {
        writer.write(&cri(seq, 0));
    }
    wait_until("first lines delivered", Duration::from_secs(60), || {
        receiver.delivered().missing(BEFORE).is_empty()
    });
    let running = shipper.peak_rss();

    // The receiver keeps its connection and stops reading: once the
    // sockets' buffers are full, every write stalls until its timeout.
    receiver.set_reading(false);
    for seq in BEFORE..BEFORE + DURING {
        writer.write(&cri(seq, 0));
    }
    let total = BEFORE + DURING;
    wait_reader_held_back(admin, MAX_MEMORY, total);
    let rss = shipper.peak_rss();
    assert!(
        rss.saturating_sub(running) < MAX_MEMORY + (16 << 20),
        "peak RSS {rss} bytes, {running} before the receiver stalled"
    );

    receiver.set_reading(true);
    wait_until("every line delivered", Duration::from_secs(120), || {
        receiver.delivered().missing(total).is_empty()
    });
    assert!(shipper.terminate().success());
    receiver.wait_closed();
    let delivered = receiver.delivered();
    assert_eq!(delivered.torn, 0, "a record cut short reached the receiver");
    assert!(delivered.garbled.is_empty(), "{:?}", delivered.garbled);
}
