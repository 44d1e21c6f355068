//! A file deleted while the shipper is still reading it (its reader held
//! back by a sink that is down): what was written before the delete is
//! read from the open file to its end and delivered, and the deleted file
//! is closed afterwards rather than held open for ever.

use std::time::Duration;

use crate::common::{
    Dirs, Shipper, Writer, cri, free_port, http_output, wait_reader_held_back, wait_until,
};
use crate::http_server::{Mode, TestServer};

const LINES: u64 = 100_000;

/// Files the process holds open that were deleted.
fn deleted_open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("lists the shipper's descriptors")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().ends_with(" (deleted)"))
        .count()
}

#[test]
fn a_file_deleted_mid_read_is_read_to_its_end_then_closed() {
    let dirs = Dirs::new();
    let server = TestServer::start();
    server.set(Mode::Down);
    let admin = free_port();
    let config = dirs.config(admin, "1MiB", &http_output(server.port));
    let shipper = Shipper::start(&config, &dirs.root.path().join("shipper.log"));
    let path = dirs.container("api", "api").join("0.log");
    let mut writer = Writer::open(path.clone());
    for seq in 0..LINES {
        writer.write(&cri(seq, 0));
    }
    // The sink is down, so the reader stops part-way, its buffer full.
    wait_reader_held_back(admin, 1 << 20, LINES);

    drop(writer);
    std::fs::remove_file(&path).expect("deletes the log file");
    server.set(Mode::Up);
    wait_until("every line delivered", Duration::from_secs(120), || {
        server.delivered(|d| d.missing(LINES).is_empty())
    });
    wait_until("the deleted file closed", Duration::from_secs(30), || {
        deleted_open_files(shipper.pid()) == 0
    });
    assert!(shipper.terminate().success());
    server.delivered(|d| assert!(d.garbled.is_empty() && d.torn == 0));
}
