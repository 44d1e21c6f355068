//! SIGKILL and restart while a container writes and its log is rotated:
//! every line is delivered at least once, and the duplicates stay within
//! what can be in flight when the process dies.

use std::time::Duration;

use crate::common::{Delivered, Dirs, Shipper, Writer, cri, free_port, wait_until};

/// Lines written by the container.
const LINES: u64 = 1_000_000;
/// Times the shipper is killed while they are written and shipped.
const KILLS: u64 = 5;
/// The output's batch size.
const MAX_EVENTS: u64 = 2000;
/// Batches that can be re-sent after a kill: two acknowledged but not yet
/// in a written checkpoint (the pipeline's bound) and one in flight.
const RESENT_BATCHES: u64 = 3;

#[test]
fn every_line_survives_sigkill_and_restart() {
    let dirs = Dirs::new();
    let container = dirs.container("app", "app");
    let config = dirs.file_config(free_port(), MAX_EVENTS as usize);
    let log = dirs.root.path().join("shipper.log");
    let writer = std::thread::spawn(move || {
        let mut writer = Writer::open(container.join("0.log"));
        for seq in 0..LINES {
            writer.write(&cri(seq, 10));
            if seq % 250_000 == 249_999 {
                writer.rotate_rename(&(seq / 250_000).to_string());
            }
            if seq % 20_000 == 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });

    let mut shipper = Shipper::start(&config, &log);
    let mut kills = 0;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    while kills < KILLS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(300 + seed % 500));
        shipper.kill();
        kills += 1;
        shipper = Shipper::start(&config, &log);
    }
    writer.join().expect("writer finished");
    wait_until("every line delivered", Duration::from_secs(300), || {
        std::thread::sleep(Duration::from_millis(500));
        Delivered::from_file(&dirs.out).missing(LINES).is_empty()
    });
    assert!(shipper.terminate().success(), "clean exit on SIGTERM");

    let delivered = Delivered::from_file(&dirs.out);
    assert!(delivered.garbled.is_empty(), "{:?}", &delivered.garbled[..delivered.garbled.len().min(5)]);
    let duplicates = delivered.duplicates();
    eprintln!(
        "{LINES} lines, {kills} SIGKILLs: {duplicates} duplicates, {} torn lines",
        delivered.torn
    );
    assert!(
        duplicates <= kills * RESENT_BATCHES * MAX_EVENTS,
        "{duplicates} duplicates after {kills} kills"
    );
    assert!(delivered.torn as u64 <= kills, "at most one torn line per kill");
}
