//! The checkpoint file: for every file still being shipped, its identity and
//! the offset up to which every output acknowledged it.
//!
//! Format: a header line `orca-logshipper-checkpoints v1 <fnv64 hex of the
//! rest>`, then one JSON entry per line. It is replaced atomically
//! (temporary file, fsync, rename, fsync of the directory), so a crash
//! leaves either the old or the new file; the checksum catches anything
//! else that damaged it.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tail::fingerprint::{Fingerprint, fnv1a};
use crate::time::{format_rfc3339, now_nanos};

const FILE_NAME: &str = "checkpoints";

/// Damaged checkpoint files kept, newest first; older ones are removed.
pub const CORRUPT_KEPT: usize = 10;
const HEADER: &str = "orca-logshipper-checkpoints v1 ";

/// Why checkpoints could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The checkpoint directory or file could not be created, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
}

/// Where one file stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The input that reads the file.
    pub input: String,
    /// Where the file was last seen (after a rename rotation, its old name).
    pub path: PathBuf,
    /// Who the file is.
    pub fingerprint: Fingerprint,
    /// Every byte before this offset was acknowledged by every output.
    pub offset: u64,
}

/// What [`Store::load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The entries, empty if there was no file or it was corrupt.
    pub entries: Vec<Entry>,
    /// Why the file was rejected, if it was, and where it was kept:
    /// `checkpoints.corrupt.<UTC time>` beside it (the last
    /// [`CORRUPT_KEPT`] are kept). Every file is read again from its start.
    pub corrupt: Option<(String, PathBuf)>,
}

/// The checkpoint file in its directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the checkpoint directory.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        fs::create_dir_all(dir).map_err(|source| CheckpointError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            path: dir.join(FILE_NAME),
        })
    }

    /// The checkpoint file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the checkpoints. A damaged file is not an error: it is moved
    /// aside and reported in [`Loaded::corrupt`], and shipping restarts from
    /// the safe point, the start of every file.
    pub fn load(&self) -> Result<Loaded, CheckpointError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Loaded::default()),
            Err(source) => {
                return Err(CheckpointError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        match parse(&bytes) {
            Ok(entries) => Ok(Loaded {
                entries,
                corrupt: None,
            }),
            Err(reason) => {
                let mut time = Vec::with_capacity(32);
                format_rfc3339(now_nanos(), 9, &mut time);
                // Colons are awkward in file names; the names still sort by time.
                let time = String::from_utf8_lossy(&time).replace(':', "-");
                let aside = self.dir.join(format!("{FILE_NAME}.corrupt.{time}"));
                fs::rename(&self.path, &aside).map_err(|source| CheckpointError::Io {
                    path: aside.clone(),
                    source,
                })?;
                self.prune_corrupt()?;
                Ok(Loaded {
                    entries: Vec::new(),
                    corrupt: Some((reason, aside)),
                })
            }
        }
    }

    /// Removes all but the newest [`CORRUPT_KEPT`] damaged files.
    fn prune_corrupt(&self) -> Result<(), CheckpointError> {
        let io_err = |source| CheckpointError::Io {
            path: self.dir.clone(),
            source,
        };
        let prefix = format!("{FILE_NAME}.corrupt.");
        let mut kept: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map_err(io_err)?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect();
        kept.sort();
        let excess = kept.len().saturating_sub(CORRUPT_KEPT);
        for old in &kept[..excess] {
            fs::remove_file(old).map_err(|source| CheckpointError::Io {
                path: old.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Replaces the checkpoints with `entries`, atomically and durably.
    pub fn save(&self, entries: &[Entry]) -> Result<(), CheckpointError> {
        let mut body = Vec::with_capacity(entries.len() * 160);
        for entry in entries {
            // Plain data with string keys always serialises.
            serde_json::to_writer(&mut body, entry).expect("checkpoint entry serialises");
            body.push(b'\n');
        }
        let tmp = self.dir.join(format!("{FILE_NAME}.tmp"));
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CheckpointError::Io { path, source }
        };
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(format!("{HEADER}{:016x}\n", fnv1a(&body)).as_bytes())
            .and_then(|()| file.write_all(&body))
            .and_then(|()| file.sync_all())
            .map_err(io_err(&tmp))?;
        drop(file);
        fs::rename(&tmp, &self.path).map_err(io_err(&self.path))?;
        // The rename is durable only once the directory entry is.
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_err(&self.dir))
    }
}

fn parse(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line")?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| "header is not UTF-8")?;
    let sum = header
        .strip_prefix(HEADER)
        .ok_or_else(|| format!("unknown header {header:?}"))?;
    let body = &bytes[newline + 1..];
    if u64::from_str_radix(sum, 16).ok() != Some(fnv1a(body)) {
        return Err("checksum mismatch".to_string());
    }
    body.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_slice(line).map_err(|err| format!("entry {}: {err}", i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64) -> Entry {
        Entry {
            input: "pods".into(),
            path: "/var/log/pods/ns_p_u/c/0.log".into(),
            fingerprint: Fingerprint {
                dev: 1,
                ino: 2,
                head_len: 256,
                head_hash: 0xdead_beef,
            },
            offset,
        }
    }

    #[test]
    fn save_then_load() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("nested")).expect("opens");
        assert!(store.load().expect("loads").entries.is_empty());
        store.save(&[entry(10), entry(20)]).expect("saves");
        let loaded = store.load().expect("loads");
        assert_eq!(loaded.entries, [entry(10), entry(20)]);
        assert_eq!(loaded.corrupt, None);
        store.save(&[]).expect("saves");
        assert!(store.load().expect("loads").entries.is_empty());
        assert!(!dir.path().join("nested/checkpoints.tmp").exists());
    }

    #[test]
    fn corruption_is_reported_and_moved_aside() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("opens");
        store.save(&[entry(10)]).expect("saves");
        let good = fs::read(store.path()).expect("reads");
        let mut damaged = Vec::new();
        let flipped = {
            let mut b = good.clone();
            let last = b.len() - 3;
            b[last] ^= 1;
            b
        };
        for (damage, expect) in [
            (flipped, "checksum"),
            (good[..good.len() - 5].to_vec(), "checksum"),
            (b"garbage".to_vec(), "no header"),
            (
                b"orca-logshipper-checkpoints v9 00\n".to_vec(),
                "unknown header",
            ),
            (
                format!("{HEADER}{:016x}\n{{}}\n", fnv1a(b"{}\n")).into_bytes(),
                "entry 1",
            ),
        ] {
            fs::write(store.path(), &damage).expect("writes");
            let loaded = store.load().expect("a corrupt file is not an error");
            assert!(loaded.entries.is_empty());
            let (reason, aside) = loaded.corrupt.expect("reported");
            assert!(reason.contains(expect), "{reason}");
            assert!(!store.path().exists(), "moved aside");
            assert_eq!(fs::read(&aside).expect("kept"), damage);
            damaged.push(aside);
        }
        // Each damaged file is kept under its own time, none overwritten.
        assert!(damaged.iter().all(|path| path.exists()));
        assert_eq!(damaged.len(), 5);
    }

    #[test]
    fn only_the_newest_damaged_files_are_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("opens");
        let mut damaged = Vec::new();
        for i in 0..CORRUPT_KEPT + 3 {
            fs::write(store.path(), format!("garbage {i}")).expect("writes");
            let (_, aside) = store.load().expect("loads").corrupt.expect("reported");
            damaged.push(aside);
        }
        let mut sorted = damaged.clone();
        sorted.sort();
        assert_eq!(sorted, damaged, "names sort by time");
        assert!(
            damaged[..3].iter().all(|path| !path.exists()),
            "the oldest go"
        );
        assert!(damaged[3..].iter().all(|path| path.exists()));
    }
}
