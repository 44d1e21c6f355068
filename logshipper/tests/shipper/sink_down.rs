//! A sink that is down, then failing, then back: nothing is lost, the
//! buffer stays within `buffer.max_memory` and the reader pauses.

use std::time::Duration;

use crate::common::{
    Dirs, Shipper, Writer, cri, free_port, http_output, metric, wait_reader_held_back, wait_until,
};
use crate::http_server::{Mode, TestServer};

const BEFORE: u64 = 20_000;
const DURING: u64 = 200_000;
const MAX_MEMORY: u64 = 1 << 20;

#[test]
fn a_sink_down_loses_nothing_and_memory_stays_bounded() {
    let dirs = Dirs::new();
    let server = TestServer::start();
    let admin = free_port();
    let config = dirs.config(admin, "1MiB", &http_output(server.port));
    let shipper = Shipper::start(&config, &dirs.root.path().join("shipper.log"));
    let mut writer = Writer::open(dirs.container("api", "api").join("0.log"));
    for seq in 0..BEFORE {
        writer.write(&cri(seq, 0));
    }
    wait_until("first lines delivered", Duration::from_secs(60), || {
        server.delivered(|d| d.missing(BEFORE).is_empty())
    });
    // The process's own size (code, runtime, a debug build's bulk) is not
    // what the buffer bound is about: what the outage adds is.
    let running = shipper.peak_rss();

    server.set(Mode::Down);
    for seq in BEFORE..BEFORE + DURING {
        writer.write(&cri(seq, 0));
    }
    let total = BEFORE + DURING;
    // The budget fills up to within a chunk or two, then the reader must wait.
    wait_reader_held_back(admin, MAX_MEMORY, total);
    let read = metric(admin, "orca_logshipper_input_events_total{input=\"pods\"}").expect("metric");
    let fill = metric(admin, "orca_logshipper_buffer_fill_bytes").expect("metric");
    let rss = shipper.peak_rss();
    eprintln!(
        "sink down: buffer {fill} bytes, read {read}/{total} lines, peak RSS {} KiB ({} KiB before the outage)",
        rss >> 10,
        running >> 10
    );
    assert!(
        rss.saturating_sub(running) < MAX_MEMORY + (16 << 20),
        "peak RSS {rss} bytes, {running} before the outage"
    );

    server.set(Mode::Failing);
    wait_until("retries against 503s", Duration::from_secs(60), || {
        server.failed() >= 3
    });
    server.set(Mode::Up);
    wait_until("every line delivered", Duration::from_secs(120), || {
        server.delivered(|d| d.missing(total).is_empty())
    });
    let retries = metric(
        admin,
        "orca_logshipper_output_retries_total{output=\"http\"}",
    )
    .expect("metric");
    assert!(retries >= 3.0, "{retries} retries");
    assert!(shipper.terminate().success());
    server.delivered(|d| assert!(d.garbled.is_empty() && d.torn == 0));
}
