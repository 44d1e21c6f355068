//! What has been read and what has been acknowledged, per file and output:
//! the source of every checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, watch};

use crate::checkpoint::Entry;
use crate::event::FileId;
use crate::tail::fingerprint::Fingerprint;

/// Shared by the readers (which register files and what they handed on),
/// the outputs (which acknowledge) and the checkpoint writer.
#[derive(Debug)]
pub struct Tracker {
    state: Mutex<State>,
    changed: Notify,
    outputs: usize,
    /// What the last written checkpoint holds.
    saved: watch::Sender<Marks>,
}

/// How far a checkpoint goes: per output, how many of its acks it holds,
/// and how many file identities (registrations and fingerprint changes).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Marks {
    /// Per output, the number of its last ack the checkpoint holds.
    pub acks: Vec<u64>,
    /// The number of the last identity change the checkpoint holds.
    pub identities: u64,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    files: BTreeMap<FileId, Tracked>,
    /// Entries of the last run that an input has not resolved yet; written
    /// back unchanged until it has, so an early checkpoint cannot lose them.
    preloaded: Vec<Entry>,
    /// Per output, how many acks it made.
    acks: Vec<u64>,
    /// How many identity changes were made.
    identities: u64,
}

#[derive(Debug)]
struct Tracked {
    input: String,
    path: PathBuf,
    fingerprint: Fingerprint,
    /// Per output: the offset up to which it acknowledged.
    acked: Vec<u64>,
    /// The commit offset of the last event handed on.
    emitted: u64,
    /// The file's size when last read, for the lag metric.
    size: u64,
    released: bool,
    /// The number of this file's last identity change.
    identity: u64,
}

impl Tracked {
    fn checkpoint(&self) -> u64 {
        self.acked.iter().copied().min().unwrap_or(self.emitted)
    }
}

/// A consistent view for one checkpoint write.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// What to write.
    pub entries: Vec<Entry>,
    /// Bytes read from files but not yet acknowledged by every output, plus
    /// bytes in the files not read yet as of the last read.
    pub lag_bytes: u64,
    /// Files being tracked.
    pub files: usize,
    /// How far this snapshot goes; hand back to [`Tracker::saved`] once it
    /// is written.
    pub marks: Marks,
}

impl Tracker {
    /// A tracker for `outputs` outputs, holding the entries of the last run.
    pub fn new(outputs: usize, preloaded: Vec<Entry>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                preloaded,
                acks: vec![0; outputs],
                ..State::default()
            }),
            changed: Notify::new(),
            outputs,
            saved: watch::Sender::new(Marks {
                acks: vec![0; outputs],
                identities: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent before it can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last run's entries of `input`.
    pub fn preloaded(&self, input: &str) -> Vec<Entry> {
        self.lock()
            .preloaded
            .iter()
            .filter(|e| e.input == input)
            .cloned()
            .collect()
    }

    /// `input` has registered every file it resumes; its old entries go,
    /// except `kept`: files that exist but cannot be opened yet, whose
    /// checkpoints are written back until they can.
    pub fn preload_done(&self, input: &str, kept: &[Entry]) {
        self.lock()
            .preloaded
            .retain(|e| e.input != input || kept.contains(e));
    }

    /// A kept entry is resolved: its file was opened, or is gone.
    pub fn preload_resolved(&self, entry: &Entry) {
        self.lock().preloaded.retain(|e| e != entry);
        self.changed.notify_one();
    }

    /// Starts tracking a file read from `offset`.
    pub fn register(
        &self,
        input: &str,
        path: &Path,
        fingerprint: Fingerprint,
        offset: u64,
    ) -> FileId {
        let mut state = self.lock();
        state.next_id += 1;
        state.identities += 1;
        let id = FileId(state.next_id);
        let identity = state.identities;
        state.files.insert(
            id,
            Tracked {
                input: input.to_string(),
                path: path.to_path_buf(),
                fingerprint,
                acked: vec![offset; self.outputs],
                emitted: offset,
                size: offset,
                released: false,
                identity,
            },
        );
        drop(state);
        // Checkpointed at once, so a file rotated away soon after it was
        // found is still looked for after a crash.
        self.changed.notify_one();
        id
    }

    /// The file's identity changed: its head grew, or reading moved to the
    /// copy copytruncate left at `path`.
    pub fn update(&self, id: FileId, path: Option<&Path>, fingerprint: Fingerprint) {
        let mut state = self.lock();
        state.identities += 1;
        let identity = state.identities;
        if let Some(file) = state.files.get_mut(&id) {
            file.fingerprint = fingerprint;
            file.identity = identity;
            if let Some(path) = path {
                file.path = path.to_path_buf();
            }
        }
        drop(state);
        self.changed.notify_one();
    }

    /// The number of the file's identity change that no written checkpoint
    /// holds yet, if any: what the reader waits for with
    /// [`Tracker::wait_identity_saved`] before it hands on what it read.
    pub fn unsaved_identity(&self, id: FileId) -> Option<u64> {
        let identity = self.lock().files.get(&id)?.identity;
        (identity > self.saved.borrow().identities).then_some(identity)
    }

    /// Events up to `commit` were handed on; the file is `size` bytes long.
    pub fn emitted(&self, id: FileId, commit: u64, size: u64) {
        if let Some(file) = self.lock().files.get_mut(&id) {
            file.emitted = file.emitted.max(commit);
            file.size = size;
        }
    }

    /// The file will not be read again; it is forgotten once acknowledged.
    pub fn release(&self, id: FileId) {
        if let Some(file) = self.lock().files.get_mut(&id) {
            file.released = true;
        }
        self.changed.notify_one();
    }

    /// `output` delivered events up to these commit offsets; returns the
    /// ack's number, to wait for with [`Tracker::wait_saved`].
    pub fn ack(&self, output: usize, acks: &[(FileId, u64)]) -> u64 {
        let mut state = self.lock();
        for &(id, offset) in acks {
            if let Some(file) = state.files.get_mut(&id) {
                let acked = &mut file.acked[output];
                *acked = (*acked).max(offset);
            }
        }
        state.acks[output] += 1;
        let number = state.acks[output];
        drop(state);
        self.changed.notify_one();
        number
    }

    /// A checkpoint holding `marks` (from [`Snapshot::marks`]) is written.
    pub fn saved(&self, marks: Marks) {
        self.saved.send_replace(marks);
    }

    /// Resolves once a written checkpoint holds `output`'s ack number `number`.
    pub async fn wait_saved(&self, output: usize, number: u64) {
        let mut saved = self.saved.subscribe();
        // The sender lives as long as the tracker, which outlives this call.
        let _ = saved.wait_for(|marks| marks.acks[output] >= number).await;
    }

    /// Resolves once a written checkpoint holds identity change `number`.
    pub async fn wait_identity_saved(&self, number: u64) {
        let mut saved = self.saved.subscribe();
        let _ = saved.wait_for(|marks| marks.identities >= number).await;
    }

    /// Resolves once something worth a checkpoint happened.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// What to checkpoint now. Released files every output has acknowledged
    /// are dropped here: nothing of them is left to resume.
    pub fn snapshot(&self) -> Snapshot {
        let mut state = self.lock();
        state
            .files
            .retain(|_, f| !(f.released && f.acked.iter().all(|&a| a >= f.emitted)));
        let mut snapshot = Snapshot {
            files: state.files.len(),
            marks: Marks {
                acks: state.acks.clone(),
                identities: state.identities,
            },
            ..Snapshot::default()
        };
        for file in state.files.values() {
            let offset = file.checkpoint();
            snapshot.lag_bytes += file.size.saturating_sub(offset);
            snapshot.entries.push(Entry {
                input: file.input.clone(),
                path: file.path.clone(),
                fingerprint: file.fingerprint,
                offset,
            });
        }
        snapshot.entries.extend(state.preloaded.iter().cloned());
        snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn fp(ino: u64) -> Fingerprint {
        Fingerprint {
            dev: 1,
            ino,
            head_len: 3,
            head_hash: 7,
        }
    }

    #[test]
    fn checkpoint_is_the_slowest_outputs_ack() {
        let tracker = Tracker::new(2, Vec::new());
        let id = tracker.register("in", Path::new("/a"), fp(1), 5);
        tracker.emitted(id, 100, 150);
        assert_eq!(tracker.snapshot().entries[0].offset, 5);
        tracker.ack(0, &[(id, 100)]);
        assert_eq!(tracker.snapshot().entries[0].offset, 5);
        tracker.ack(1, &[(id, 60)]);
        let snapshot = tracker.snapshot();
        assert_eq!(snapshot.entries[0].offset, 60);
        assert_eq!(snapshot.lag_bytes, 90);
        tracker.ack(1, &[(id, 40)]);
        assert_eq!(
            tracker.snapshot().entries[0].offset,
            60,
            "acks never go back"
        );
    }

    #[test]
    fn released_files_go_once_fully_acked() {
        let tracker = Tracker::new(1, Vec::new());
        let id = tracker.register("in", Path::new("/a"), fp(1), 0);
        tracker.emitted(id, 10, 10);
        tracker.release(id);
        assert_eq!(tracker.snapshot().files, 1, "still waiting for its ack");
        tracker.ack(0, &[(id, 10)]);
        let snapshot = tracker.snapshot();
        assert_eq!((snapshot.files, snapshot.entries.len()), (0, 0));
        assert_eq!(snapshot.marks.acks, [1]);
    }

    #[test]
    fn preloaded_entries_survive_until_resolved() {
        let old = Entry {
            input: "in".into(),
            path: "/old".into(),
            fingerprint: fp(9),
            offset: 42,
        };
        let tracker = Tracker::new(1, vec![old.clone()]);
        assert_eq!(tracker.preloaded("in"), std::slice::from_ref(&old));
        assert!(tracker.preloaded("other").is_empty());
        assert_eq!(tracker.snapshot().entries, std::slice::from_ref(&old));
        let id = tracker.register("in", Path::new("/old.1"), fp(9), 42);
        tracker.preload_done("in", &[]);
        let entries = tracker.snapshot().entries;
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].path, Path::new("/old.1"));
        tracker.update(id, Some(Path::new("/copy")), fp(10));
        assert_eq!(tracker.snapshot().entries[0].fingerprint, fp(10));
    }
}

#[cfg(test)]
mod wait_tests {
    use super::tests::fp;
    use super::*;

    #[tokio::test]
    async fn a_new_identity_is_unsaved_until_a_checkpoint_holds_it() {
        let tracker = Tracker::new(1, Vec::new());
        let id = tracker.register("in", Path::new("/a"), fp(1), 0);
        assert_eq!(tracker.unsaved_identity(id), Some(1));
        let snapshot = tracker.snapshot();
        tracker.update(id, None, fp(2));
        let number = tracker
            .unsaved_identity(id)
            .expect("the grown head is unsaved");
        let waiter = {
            let tracker = Arc::clone(&tracker);
            tokio::spawn(async move { tracker.wait_identity_saved(number).await })
        };
        tracker.saved(snapshot.marks);
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "a checkpoint taken before the change does not hold it"
        );
        assert_eq!(tracker.unsaved_identity(id), Some(number));
        let snapshot = tracker.snapshot();
        assert_eq!(snapshot.entries[0].fingerprint, fp(2));
        tracker.saved(snapshot.marks);
        waiter.await.expect("resolves");
        assert_eq!(tracker.unsaved_identity(id), None);
    }

    #[tokio::test]
    async fn wait_saved_resolves_once_written() {
        let tracker = Tracker::new(2, Vec::new());
        let number = tracker.ack(1, &[]);
        assert_eq!(number, 1);
        let waiter = {
            let tracker = Arc::clone(&tracker);
            tokio::spawn(async move { tracker.wait_saved(1, number).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let snapshot = tracker.snapshot();
        tracker.saved(snapshot.marks);
        waiter.await.expect("resolves");
    }
}
