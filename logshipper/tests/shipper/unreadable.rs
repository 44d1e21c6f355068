//! Files that cannot be opened (permissions): reported with the OS error,
//! counted, tried again, and, when checkpointed, resumed from their
//! checkpoint once readable rather than shipped again from the start.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use crate::common::{Delivered, Dirs, Shipper, Writer, cri, free_port, metric, wait_until};

const LINES: u64 = 1000;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn unreadable_files(admin: u16) -> Option<f64> {
    metric(
        admin,
        "orca_logshipper_input_unreadable_files{input=\"pods\"}",
    )
}

#[test]
fn an_unreadable_file_is_reported_retried_and_shipped_once_readable() {
    let dirs = Dirs::new();
    let admin = free_port();
    let config = dirs.file_config(admin, 500);
    let log = dirs.root.path().join("shipper.log");
    let mut writer = Writer::open(dirs.container("web", "web").join("0.log"));
    for seq in 0..LINES {
        writer.write(&cri(seq, 0));
    }
    chmod(&writer.path, 0o000);
    let shipper = Shipper::start_bound_by_permissions(&config, &log);
    wait_until(
        "the file reported unreadable",
        Duration::from_secs(30),
        || unreadable_files(admin) == Some(1.0),
    );
    let errors = metric(
        admin,
        "orca_logshipper_input_open_errors_total{input=\"pods\"}",
    )
    .expect("metric");
    assert!(errors >= 1.0);
    let text = std::fs::read_to_string(&log).expect("shipper log");
    assert!(
        text.contains("cannot open file")
            && text.contains(&writer.path.display().to_string())
            && text.contains("Permission denied"),
        "{text}"
    );
    chmod(&writer.path, 0o644);
    wait_until("every line delivered", Duration::from_secs(60), || {
        Delivered::from_file(&dirs.out).missing(LINES).is_empty()
    });
    assert_eq!(unreadable_files(admin), Some(0.0));
    assert!(shipper.terminate().success());
    assert_eq!(Delivered::from_file(&dirs.out).duplicates(), 0);
}

#[test]
fn a_checkpointed_file_unreadable_at_restart_keeps_its_checkpoint() {
    let dirs = Dirs::new();
    let admin = free_port();
    let config = dirs.file_config(admin, 500);
    let log = dirs.root.path().join("shipper.log");
    let mut writer = Writer::open(dirs.container("db", "db").join("0.log"));
    for seq in 0..LINES {
        writer.write(&cri(seq, 0));
    }
    let shipper = Shipper::start_bound_by_permissions(&config, &log);
    wait_until("first lines delivered", Duration::from_secs(60), || {
        Delivered::from_file(&dirs.out).missing(LINES).is_empty()
    });
    assert!(shipper.terminate().success());

    chmod(&writer.path, 0o000);
    for seq in LINES..2 * LINES {
        writer.write(&cri(seq, 0));
    }
    let shipper = Shipper::start_bound_by_permissions(&config, &log);
    wait_until(
        "the file reported unreadable",
        Duration::from_secs(30),
        || unreadable_files(admin) == Some(1.0),
    );
    // Checkpoints are written while it stays unreadable; the file's must be
    // among them for a restart now to resume it too.
    let checkpoint =
        std::fs::read_to_string(dirs.checkpoints.join("checkpoints")).expect("checkpoint");
    assert!(
        checkpoint.contains(&writer.path.display().to_string()),
        "{checkpoint}"
    );
    chmod(&writer.path, 0o644);
    wait_until("every line delivered", Duration::from_secs(60), || {
        Delivered::from_file(&dirs.out)
            .missing(2 * LINES)
            .is_empty()
    });
    assert!(shipper.terminate().success());
    let delivered = Delivered::from_file(&dirs.out);
    assert_eq!(
        delivered.duplicates(),
        0,
        "read on from its checkpoint, not again from its start"
    );
    let text = std::fs::read_to_string(&log).expect("shipper log");
    assert!(!text.contains("checkpointed file is gone"), "{text}");
}
