//! SIGKILL and restart while a container writes and its log is rotated:
//! every line is delivered at least once, and the duplicates stay within
//! what can be in flight when the process dies.

use std::time::Duration;

use crate::common::{Delivered, Dirs, Shipper, Writer, cri, free_port, metric, wait_until};

/// Lines written by the container.
const LINES: u64 = 1_000_000;
/// Times the shipper is killed while they are written and shipped.
const KILLS: u64 = 5;
/// The output's batch size.
const MAX_EVENTS: u64 = 2000;
/// Batches that can be re-sent after a kill: those acknowledged but not yet
/// in a written checkpoint (the pipeline's bound) and one in flight.
const RESENT_BATCHES: u64 = orca_logshipper::pipeline::UNSAVED_BATCHES + 1;

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
    assert!(
        delivered.garbled.is_empty(),
        "{:?}",
        &delivered.garbled[..delivered.garbled.len().min(5)]
    );
    let duplicates = delivered.duplicates();
    eprintln!(
        "{LINES} lines, {kills} SIGKILLs: {duplicates} duplicates, {} torn lines",
        delivered.torn
    );
    assert!(
        duplicates <= kills * RESENT_BATCHES * MAX_EVENTS,
        "{duplicates} duplicates after {kills} kills"
    );
    assert!(
        delivered.torn as u64 <= kills,
        "at most one torn line per kill"
    );
}

/// SIGTERM delivers what was read, even a batch still waiting to fill,
/// and checkpoints it: the checkpoint then points at the end of the file.
#[test]
fn sigterm_flushes_and_checkpoints() {
    const SIGTERM_LINES: u64 = 500;
    let dirs = Dirs::new();
    let admin = free_port();
    let output = format!(
        "  - name: out\n    type: file\n    path: {}\n    batch: {{max_events: 100000, max_bytes: 64MiB, max_wait: 1h}}\n",
        dirs.out.display()
    );
    let config = dirs.config(admin, "8MiB", &output);
    let log = dirs.container("app", "app").join("0.log");
    let mut writer = Writer::open(log.clone());
    for seq in 0..SIGTERM_LINES {
        writer.write(&cri(seq, 4));
    }
    let shipper = Shipper::start(&config, &dirs.root.path().join("shipper.log"));
    wait_until("every line read", Duration::from_secs(60), || {
        metric(admin, "orca_logshipper_input_events_total{input=\"pods\"}")
            == Some(SIGTERM_LINES as f64)
    });
    assert!(
        Delivered::from_file(&dirs.out).counts.is_empty(),
        "the batch waits for more events"
    );
    assert!(shipper.terminate().success());

    let delivered = Delivered::from_file(&dirs.out);
    assert!(delivered.missing(SIGTERM_LINES).is_empty());
    assert_eq!(delivered.duplicates(), 0);
    let checkpoints =
        std::fs::read_to_string(dirs.checkpoints.join("checkpoints")).expect("checkpoint file");
    let entry: serde_json::Value =
        serde_json::from_str(checkpoints.lines().nth(1).expect("one entry")).expect("JSON");
    let size = std::fs::metadata(&log).expect("log").len();
    assert_eq!(entry["offset"], size, "{checkpoints}");
}
