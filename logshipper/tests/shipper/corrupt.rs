//! A damaged checkpoint file at start-up: reported (log and metric), kept
//! aside, and every file shipped again from its start; no crash, no loss.

use std::time::Duration;

use crate::common::{Delivered, Dirs, Shipper, Writer, cri, free_port, metric, wait_until};

const LINES: u64 = 2000;

#[test]
fn a_corrupt_checkpoint_is_reported_and_files_are_read_again() {
    let dirs = Dirs::new();
    let admin = free_port();
    let config = dirs.file_config(admin, 500);
    let shipper_log = dirs.root.path().join("shipper.log");
    let mut writer = Writer::open(dirs.container("db", "db").join("0.log"));
    for seq in 0..LINES {
        writer.write(&cri(seq, 0));
    }
    let shipper = Shipper::start(&config, &shipper_log);
    wait_until("every line delivered", Duration::from_secs(60), || {
        Delivered::from_file(&dirs.out).missing(LINES).is_empty()
    });
    assert!(shipper.terminate().success());

    let checkpoint = dirs.checkpoints.join("checkpoints");
    let mut damaged = std::fs::read(&checkpoint).expect("checkpoint written");
    let last = damaged.len() - 2;
    damaged[last] ^= 0x55;
    std::fs::write(&checkpoint, &damaged).expect("damages the checkpoint");

    let shipper = Shipper::start(&config, &shipper_log);
    wait_until(
        "every line delivered again",
        Duration::from_secs(60),
        || {
            Delivered::from_file(&dirs.out)
                .counts
                .values()
                .all(|&count| count == 2)
        },
    );
    assert_eq!(
        metric(admin, "orca_logshipper_checkpoint_corrupt_total"),
        Some(1.0)
    );
    assert!(shipper.terminate().success());
    let kept = corrupt_files(&dirs);
    assert_eq!(kept.len(), 1);
    assert_eq!(std::fs::read(&kept[0]).expect("kept aside"), damaged);
    let log = std::fs::read_to_string(&shipper_log).expect("shipper log");
    assert!(log.contains("checkpoint file is damaged"), "{log}");
    let delivered = Delivered::from_file(&dirs.out);
    assert!(delivered.missing(LINES).is_empty());
    assert_eq!(
        delivered.duplicates(),
        LINES,
        "each line once more, from the start"
    );

    // A second damaged checkpoint is kept beside the first, not over it.
    std::fs::write(&checkpoint, b"garbage").expect("damages it again");
    let shipper = Shipper::start(&config, &shipper_log);
    shipper.wait_ready(admin);
    assert!(shipper.terminate().success());
    let kept = corrupt_files(&dirs);
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert_eq!(std::fs::read(&kept[0]).expect("first kept"), damaged);
    assert_eq!(std::fs::read(&kept[1]).expect("second kept"), b"garbage");
}

/// The damaged checkpoint files kept, oldest first.
fn corrupt_files(dirs: &Dirs) -> Vec<std::path::PathBuf> {
    let mut kept: Vec<_> = std::fs::read_dir(&dirs.checkpoints)
        .expect("lists checkpoints")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("checkpoints.corrupt.")
        })
        .map(|e| e.path())
        .collect();
    kept.sort();
    kept
}
