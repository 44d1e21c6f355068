//! File identity: device, inode and a checksum of the first bytes, so a
//! reused inode or a truncated-and-rewritten file is not mistaken for the
//! file it replaced.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};

use serde::{Deserialize, Serialize};

/// How many leading bytes the checksum covers once the file is that long.
pub const HEAD_BYTES: usize = 256;

/// Who a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The device the file is on.
    pub dev: u64,
    /// The file's inode on that device.
    pub ino: u64,
    /// How many leading bytes `head_hash` covers (less than
    /// [`HEAD_BYTES`] while the file is shorter).
    pub head_len: u64,
    /// FNV-1a of the first `head_len` bytes.
    pub head_hash: u64,
}

impl Fingerprint {
    /// Fingerprints an open file by its first bytes as they are now.
    pub fn of(file: &File) -> io::Result<Self> {
        let meta = file.metadata()?;
        let head = read_head(file, HEAD_BYTES)?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            head_len: head.len() as u64,
            head_hash: fnv1a(&head),
        })
    }

    /// Device and inode, the key of a file while it is open.
    pub const fn inode(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    /// Whether `file`'s first `head_len` bytes still hash to `head_hash`:
    /// false once the file was truncated or rewritten.
    pub fn head_matches(&self, file: &File) -> io::Result<bool> {
        let len = usize::try_from(self.head_len).unwrap_or(HEAD_BYTES);
        let head = read_head(file, len)?;
        Ok(head.len() == len && fnv1a(&head) == self.head_hash)
    }

    /// Whether the head is still shorter than [`HEAD_BYTES`] and so may grow.
    pub fn head_is_short(&self) -> bool {
        self.head_len < HEAD_BYTES as u64
    }
}

fn read_head(file: &File, len: usize) -> io::Result<Vec<u8>> {
    let mut head = vec![0; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut head[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    head.truncate(filled);
    Ok(head)
}

/// 64-bit FNV-1a: tiny and good enough to tell different log heads apart;
/// nothing here defends against an adversary crafting collisions.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn fnv1a_known_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn head_grows_then_detects_rewrite() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a.log");
        let mut file = File::create(&path).expect("create");
        file.write_all(b"first line\n").expect("write");
        let reader = File::open(&path).expect("open");
        let short = Fingerprint::of(&reader).expect("fingerprint");
        assert_eq!(short.head_len, 11);
        assert!(short.head_is_short());

        file.write_all(&[b'x'; 300]).expect("write");
        assert!(
            short.head_matches(&reader).expect("reads"),
            "appending keeps the head"
        );
        let full = Fingerprint::of(&reader).expect("fingerprint");
        assert_eq!(full.head_len, HEAD_BYTES as u64);
        assert_eq!(full.inode(), short.inode());

        file.set_len(0).expect("truncate");
        assert!(
            !full.head_matches(&reader).expect("reads"),
            "truncation is seen"
        );
        std::fs::write(&path, [b'y'; 400]).expect("rewrite");
        assert!(
            !full.head_matches(&reader).expect("reads"),
            "a rewrite is seen"
        );
    }
}
