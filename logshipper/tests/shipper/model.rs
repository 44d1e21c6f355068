//! Model-based test, after vector's file_watcher tests: seeded random
//! sequences of write / partial write / rename / copytruncate / truncate /
//! delete / SIGKILL / restart / sync run against the shipper process, and
//! the model (every line written) is checked against what it delivered.
//!
//! Losses no tailer can avoid are kept out of the model, not tolerated by
//! it: a truncate or delete happens only once everything written was
//! delivered; a rename only once the shipper's checkpoint lists the
//! current file (a file renamed away before the shipper recorded it, say
//! rotated twice within one scan or while the shipper was down, is not
//! looked for after a restart); a copytruncate only once the shipper read
//! the file's current content (content written and copied away between
//! two reads of a file that looked empty leaves no trace to follow). The
//! shipper hands nothing on before its checkpoint holds the head it read
//! it under, so a copy of content it delivered is found even when it is
//! killed before the acknowledgement's checkpoint is written.

use std::fmt;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{Delivered, Dirs, Shipper, Writer, cri, free_port, text, wait_until};

const OPS: usize = 60;
const MAX_EVENTS: u64 = 200;

#[derive(Debug, Clone, Copy)]
enum Op {
    Write(u64),
    Partial,
    Rename,
    CopyTruncate,
    Truncate,
    Delete,
    Kill,
    Restart,
    Sync,
}

struct Rng(u64);

impl Rng {
    /// Seeds through splitmix64, so nearby seeds give unrelated sequences.
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn op(&mut self) -> Op {
        match self.next() % 20 {
            0..=7 => Op::Write(1 + self.next() % 400),
            8 | 9 => Op::Partial,
            10 | 11 => Op::Rename,
            12 | 13 => Op::CopyTruncate,
            14 => Op::Truncate,
            15 => Op::Delete,
            16 | 17 => Op::Kill,
            18 => Op::Restart,
            _ => Op::Sync,
        }
    }
}

struct Ops<'a>(&'a [Op]);

impl fmt::Display for Ops<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for op in self.0 {
            write!(f, "{op:?} ")?;
        }
        Ok(())
    }
}

struct Model {
    dirs: Dirs,
    config: PathBuf,
    admin: u16,
    shipper_log: PathBuf,
    shipper: Option<Shipper>,
    writer: Writer,
    next_seq: u64,
    /// A line whose `P` piece is written and whose `F` piece is not.
    partial: Option<u64>,
    rotations: u64,
    kills: u64,
    history: Vec<Op>,
    /// The first line of the current file's content.
    generation: u64,
}

impl Model {
    fn new() -> Self {
        let dirs = Dirs::new();
        let log = dirs.container("model", "app").join("0.log");
        let admin = free_port();
        let config = dirs.file_config(admin, MAX_EVENTS as usize);
        let shipper_log = dirs.root.path().join("shipper.log");
        let shipper = Some(Shipper::start(&config, &shipper_log));
        Self {
            writer: Writer::open(log),
            dirs,
            config,
            admin,
            shipper_log,
            shipper,
            next_seq: 0,
            partial: None,
            rotations: 0,
            kills: 0,
            history: Vec::new(),
            generation: 0,
        }
    }

    fn shipper(&self) -> &Shipper {
        self.shipper.as_ref().expect("running")
    }

    fn apply(&mut self, op: Op) {
        self.history.push(op);
        let destructive = matches!(
            op,
            Op::Rename | Op::CopyTruncate | Op::Truncate | Op::Delete
        );
        if destructive && self.partial.is_some() {
            return;
        }
        match op {
            Op::Write(lines) => {
                let mut batch = String::new();
                if let Some(seq) = self.partial.take() {
                    batch.push_str(&piece(seq, 'F'));
                }
                for _ in 0..lines {
                    batch.push_str(&cri(self.next_seq, 3));
                    self.next_seq += 1;
                }
                self.writer.write(&batch);
            }
            Op::Partial => {
                if self.partial.is_none() {
                    self.writer.write(&piece(self.next_seq, 'P'));
                    self.partial = Some(self.next_seq);
                    self.next_seq += 1;
                }
            }
            Op::Rename | Op::CopyTruncate => {
                if matches!(op, Op::Rename) {
                    self.wait_checkpointed();
                } else {
                    self.wait_read_from(self.generation);
                }
                self.generation = self.next_seq;
                self.rotations += 1;
                let suffix = self.rotations.to_string();
                if matches!(op, Op::Rename) {
                    self.writer.rotate_rename(&suffix);
                } else {
                    self.writer.rotate_copytruncate(&suffix);
                }
            }
            Op::Truncate => {
                self.sync();
                self.generation = self.next_seq;
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&self.writer.path)
                    .and_then(|f| f.set_len(0))
                    .expect("truncates");
            }
            Op::Delete => {
                self.sync();
                self.generation = self.next_seq;
                let dir = self.writer.path.parent().expect("dir").to_path_buf();
                for entry in std::fs::read_dir(&dir).expect("lists") {
                    std::fs::remove_file(entry.expect("entry").path()).expect("deletes");
                }
                self.writer = Writer::open(self.writer.path.clone());
            }
            Op::Kill => {
                self.shipper.take().expect("running").kill();
                self.kills += 1;
                self.shipper = Some(Shipper::start(&self.config, &self.shipper_log));
            }
            Op::Restart => {
                self.shipper().wait_ready(self.admin);
                let status = self.shipper.take().expect("running").terminate();
                assert!(status.success(), "clean exit on SIGTERM");
                self.shipper = Some(Shipper::start(&self.config, &self.shipper_log));
            }
            Op::Sync => self.sync(),
        }
    }

    /// Waits until every whole line written so far was delivered.
    fn sync(&self) {
        let lines = self.partial.unwrap_or(self.next_seq);
        let start = std::time::Instant::now();
        loop {
            let missing = Delivered::from_file(&self.dirs.out).missing(lines);
            if missing.is_empty() {
                return;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let log = std::fs::read_to_string(&self.shipper_log).unwrap_or_default();
                panic!(
                    "{} of {lines} lines never delivered (first {:?}) after {}\nshipper log:\n{log}",
                    missing.len(),
                    &missing[..missing.len().min(5)],
                    Ops(&self.history)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until line `seq` was delivered, if it was written.
    fn wait_read_from(&self, seq: u64) {
        if seq < self.next_seq {
            wait_until(
                "the shipper reads the current content",
                Duration::from_secs(30),
                || {
                    Delivered::from_file(&self.dirs.out)
                        .counts
                        .contains_key(&seq)
                },
            );
        }
    }

    /// Waits until the shipper's checkpoint file lists the current log file.
    fn wait_checkpointed(&self) {
        let meta = std::fs::metadata(&self.writer.path).expect("log exists");
        let (dev, ino) = (meta.dev(), meta.ino());
        let checkpoints = self.dirs.checkpoints.join("checkpoints");
        wait_until(
            "the shipper checkpoints the current file",
            Duration::from_secs(30),
            || {
                let text = std::fs::read_to_string(&checkpoints).unwrap_or_default();
                text.lines().skip(1).any(|line| {
                    let entry: serde_json::Value = serde_json::from_str(line).expect("entry");
                    entry["fingerprint"]["dev"] == dev && entry["fingerprint"]["ino"] == ino
                })
            },
        );
    }
}

fn piece(seq: u64, tag: char) -> String {
    let line = cri(seq, 0);
    let (ts, _) = line.split_once(' ').expect("timestamp");
    let text = text(seq);
    let (head, tail) = text.split_at(25);
    match tag {
        'P' => format!("{ts} stdout P {head}\n"),
        _ => format!("{ts} stdout F {tail}\n"),
    }
}

fn run(seed: u64) {
    let mut rng = Rng::new(seed);
    let ops: Vec<Op> = (0..OPS).map(|_| rng.op()).collect();
    let mut model = Model::new();
    for (i, &op) in ops.iter().enumerate() {
        model.apply(op);
        assert!(
            !Path::new(&model.dirs.out).exists()
                || Delivered::from_file(&model.dirs.out).garbled.is_empty(),
            "seed {seed}: garbled output after {}",
            Ops(&ops[..=i])
        );
    }
    model.apply(Op::Write(1));
    model.sync();
    assert!(model.shipper.take().expect("running").terminate().success());

    let delivered = Delivered::from_file(&model.dirs.out);
    let missing = delivered.missing(model.next_seq);
    assert!(
        missing.is_empty(),
        "seed {seed}: {} lines missing (first {:?}) after {}",
        missing.len(),
        &missing[..missing.len().min(5)],
        Ops(&ops)
    );
    assert!(
        delivered.garbled.is_empty(),
        "seed {seed}: {:?}",
        delivered.garbled
    );
    let duplicates = delivered.duplicates();
    eprintln!(
        "seed {seed:#x}: {} lines, {} rotations, {} kills, {duplicates} duplicates",
        model.next_seq, model.rotations, model.kills
    );
    assert!(
        duplicates <= model.kills * (orca_logshipper::pipeline::UNSAVED_BATCHES + 1) * MAX_EVENTS,
        "seed {seed}: {duplicates} duplicates after {} kills: {}",
        model.kills,
        Ops(&ops)
    );
}

#[test]
fn random_operations_against_the_model() {
    for seed in 0..6 {
        run(seed);
    }
}
