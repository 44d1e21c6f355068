//! The TCP sink of `logshipper_vs_copy.sh`: accepts connections on a free
//! loopback port, counts the bytes and lines it receives until it has the
//! number of lines asked for, then prints `<bytes> <lines> <unix time of
//! the last byte>`. With `stall` it accepts one connection and never reads.
//!
//! Usage: `count-sink PORT_FILE LINES [run|stall]`; the port is written to
//! PORT_FILE (atomically) once the sink listens.
//!
//! It shares the machine's two cores with the sender it measures, so it
//! must cost little per byte: a Python sink spent about a core on 900 MiB/s
//! and capped both the shipper and the raw copy it is compared with.

use std::io::Read as _;
use std::net::TcpListener;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, port_file, lines, rest @ ..] = args.as_slice() else {
        eprintln!("usage: count-sink PORT_FILE LINES [run|stall]");
        std::process::exit(2);
    };
    let expect: u64 = lines.parse().unwrap_or_else(|_| {
        eprintln!("count-sink: LINES must be a number, not {lines:?}");
        std::process::exit(2);
    });
    let stall = rest.first().is_some_and(|mode| mode == "stall");
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds a loopback port");
    let port = listener.local_addr().expect("local address").port();
    let tmp = format!("{port_file}.tmp");
    std::fs::write(&tmp, port.to_string()).expect("writes the port file");
    std::fs::rename(&tmp, port_file).expect("renames the port file");
    if stall {
        let _held = listener.accept().expect("accepts");
        std::thread::sleep(std::time::Duration::from_secs(3600));
        return;
    }
    let (mut bytes, mut seen) = (0u64, 0u64);
    let mut buf = vec![0u8; 1 << 20];
    while seen < expect {
        let (mut conn, _) = listener.accept().expect("accepts");
        while seen < expect {
            let n = match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            bytes += n as u64;
            seen += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
        }
    }
    let end = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    println!(
        "{bytes} {seen} {}.{:06}",
        end.as_secs(),
        end.subsec_micros()
    );
}
