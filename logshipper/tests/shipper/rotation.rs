//! Rotation under a steady writer, by rename and by copytruncate: no line
//! lost, none duplicated, and rotated files let go once read.

use std::path::Path;
use std::time::Duration;

use crate::common::{Delivered, Dirs, Shipper, Writer, cri, free_port, wait_until};

const LINES: u64 = 200_000;
const ROTATE_EVERY: u64 = 20_000;

#[derive(Clone, Copy)]
enum Rotation {
    Rename,
    CopyTruncate,
}

fn rotate_under_a_steady_writer(rotation: Rotation) {
    let dirs = Dirs::new();
    let container = dirs.container("web", "nginx");
    let config = dirs.file_config(free_port(), 1000);
    let shipper_log = dirs.root.path().join("shipper.log");
    let shipper = Shipper::start(&config, &shipper_log);
    let log = container.join("0.log");
    let pid = shipper.pid();
    let writer = std::thread::spawn(move || {
        let mut writer = Writer::open(log.clone());
        for seq in 0..LINES {
            writer.write(&cri(seq, 7));
            if seq % ROTATE_EVERY == ROTATE_EVERY - 1 {
                // A file rotated away before the shipper ever opened it is
                // not looked for (see the crate README); kubelet rotates
                // at 10MiB, far apart, but a loaded test machine could
                // delay a scan past two of these quick rotations.
                wait_until(
                    "the shipper opens the live file",
                    Duration::from_secs(30),
                    || holds_open(pid, &log),
                );
                let suffix = (seq / ROTATE_EVERY).to_string();
                match rotation {
                    Rotation::Rename => writer.rotate_rename(&suffix),
                    Rotation::CopyTruncate => writer.rotate_copytruncate(&suffix),
                }
            }
            if seq % 2000 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    writer.join().expect("writer finished");
    let start = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let missing = Delivered::from_file(&dirs.out).missing(LINES);
        if missing.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} lines never delivered, first {:?}; shipper log:\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            std::fs::read_to_string(&shipper_log).unwrap_or_default()
        );
    }

    // Rotated files are read to their end and released: only the live
    // file stays open, and deleting the rotated ones frees them at once.
    wait_until("rotated files released", Duration::from_secs(30), || {
        open_logs(shipper.pid(), &container) == ["0.log"]
    });
    for entry in std::fs::read_dir(&container).expect("lists") {
        let path = entry.expect("entry").path();
        if path.file_name().is_some_and(|n| n != "0.log") {
            std::fs::remove_file(path).expect("deletes rotated file");
        }
    }
    assert!(
        deleted_fds(shipper.pid()).is_empty(),
        "{:?}",
        deleted_fds(shipper.pid())
    );

    assert!(shipper.terminate().success());
    let delivered = Delivered::from_file(&dirs.out);
    assert!(
        delivered.garbled.is_empty(),
        "{:?}",
        &delivered.garbled[..delivered.garbled.len().min(5)]
    );
    assert_eq!(delivered.duplicates(), 0, "no restart, so no line twice");
    let log = std::fs::read_to_string(&shipper_log).expect("shipper log");
    eprintln!(
        "{} rotations; tail moved to the copy {} times, truncations without a copy: {}",
        LINES / ROTATE_EVERY,
        log.matches("reading the rest from the copy").count(),
        log.matches("reading it again from the start").count(),
    );
}

/// Whether the process holds the file now at `path` open.
fn holds_open(pid: u32, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(|e| std::fs::metadata(e.ok()?.path()).ok())
                .any(|m| (m.dev(), m.ino()) == (meta.dev(), meta.ino()))
        })
        .unwrap_or(false)
}

/// Names of the files under `dir` the process holds open.
fn open_logs(pid: u32, dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fd_targets(pid)
        .into_iter()
        .filter_map(|t| Some(Path::new(&t).strip_prefix(dir).ok()?.display().to_string()))
        .collect();
    names.sort();
    names
}

fn deleted_fds(pid: u32) -> Vec<String> {
    fd_targets(pid)
        .into_iter()
        .filter(|t| t.ends_with(" (deleted)"))
        .collect()
}

fn fd_targets(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("lists fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.display().to_string())
        .collect()
}

#[test]
fn rename_rotation_loses_nothing() {
    rotate_under_a_steady_writer(Rotation::Rename);
}

#[test]
fn copytruncate_rotation_loses_nothing() {
    rotate_under_a_steady_writer(Rotation::CopyTruncate);
}
