//! One input's reader: finds files by glob, follows them through rotation
//! and truncation, parses them and hands chunks to the outputs.
//!
//! It runs on its own thread with plain blocking reads, which for files in
//! the page cache are cheaper than any async file API, and it blocks on the
//! memory budget and the output channels: that is the backpressure.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::buffer::Budget;
use crate::checkpoint::Entry;
use crate::config::{FileField, InputConfig};
use crate::event::{Chunk, FileId, Source};
use crate::lane::{Lane, Offer};
use crate::metadata::PodMetadata;
use crate::metrics::InputMetrics;
use crate::parse::{ParseError, Parser};
use crate::tail::fingerprint::Fingerprint;
use crate::tail::glob::{GlobError, Pattern};
use crate::tracker::Tracker;

/// Bytes read from one file per turn, so one busy file cannot starve the others.
const READ_SIZE: usize = 128 * 1024;

/// Longest wait (sleeping, or for an output) between looks at the stop
/// flag and the scan timer.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// Why a reader could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// A glob of the input is invalid.
    #[error(transparent)]
    Glob(#[from] GlobError),
    /// The input's parser could not be built.
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// A file being read.
struct Tailed {
    id: FileId,
    file: File,
    fingerprint: Fingerprint,
    offset: u64,
    parser: Parser,
    source: Arc<Source>,
    /// When the glob stopped finding this file: it is read to its end,
    /// and let go once `rotate_wait` has passed.
    rotated: Option<Instant>,
    warned: bool,
}

/// How a file the glob no longer finds may still hold a checkpointed file's bytes.
#[derive(Debug, Clone, Copy)]
enum Match {
    /// The same inode and content, under another name.
    SameFile,
    /// Another inode with the same first bytes: a copytruncate copy.
    Copy,
    /// The same inode with other content, never read.
    Rewritten,
}

/// What one read of a file found.
enum Turn {
    Data,
    End,
    Truncated,
}

/// Everything a reader needs from the rest of the shipper.
pub struct Wiring {
    /// Tracks offsets and acknowledgements.
    pub tracker: Arc<Tracker>,
    /// The memory budget chunks are reserved from.
    pub budget: Arc<Budget>,
    /// One queue per output; every chunk goes to all of them.
    pub outputs: Vec<Lane>,
    /// Set to stop reading.
    pub stop: Arc<AtomicBool>,
    /// The runtime the outputs run on, whose timers bound the waits for them.
    pub runtime: tokio::runtime::Handle,
    /// The input's counters.
    pub metrics: InputMetrics,
    /// The cluster's pods, for their labels; `None` without a cluster.
    pub pods: Option<PodMetadata>,
}

/// One input's reader.
pub struct Watcher {
    name: Arc<str>,
    patterns: Vec<Pattern>,
    parser: Parser,
    scan_interval: Duration,
    poll_interval: Duration,
    rotate_wait: Duration,
    file_field: FileField,
    next_scan: Instant,
    wiring: Wiring,
    files: Vec<Tailed>,
    /// Files the globs find that could not be opened, with the error
    /// logged for each; tried again every scan.
    unreadable: HashMap<PathBuf, io::ErrorKind>,
    /// Checkpoints of files that exist but could not be opened at start:
    /// kept (and written back) so reading resumes where it stopped.
    waiting: Vec<Entry>,
    buf: Vec<u8>,
}

impl Watcher {
    /// A reader for `input`.
    pub fn new(input: &InputConfig, wiring: Wiring) -> Result<Self, WatchError> {
        Ok(Self {
            name: input.name.as_str().into(),
            patterns: input
                .paths
                .iter()
                .map(|p| Pattern::new(p))
                .collect::<Result<_, _>>()?,
            parser: Parser::new(input)?,
            scan_interval: input.scan_interval.get(),
            poll_interval: input.poll_interval.get(),
            rotate_wait: input.rotate_wait.get(),
            file_field: input.file_field,
            next_scan: Instant::now(),
            wiring,
            files: Vec::new(),
            unreadable: HashMap::new(),
            waiting: Vec::new(),
            buf: vec![0; READ_SIZE],
        })
    }

    /// Reads until the stop flag is set or every output has gone.
    pub fn run(mut self) {
        let span = tracing::info_span!("input", name = %self.name);
        let _entered = span.enter();
        self.resume();
        self.next_scan = Instant::now() + self.scan_interval;
        while !self.stopping() {
            self.scan_if_due();
            let mut busy = false;
            let mut i = 0;
            while i < self.files.len() && !self.stopping() {
                match self.turn(i) {
                    Ok(Turn::Data) => {
                        busy = true;
                        i += 1;
                    }
                    Ok(Turn::End)
                        if self.files[i]
                            .rotated
                            .is_some_and(|at| at.elapsed() >= self.rotate_wait) =>
                    {
                        let done = self.files.swap_remove(i);
                        self.release(done);
                    }
                    Ok(Turn::End) => {
                        self.flush_idle(i);
                        i += 1;
                    }
                    Ok(Turn::Truncated) => {
                        self.truncated(i);
                        busy = true;
                    }
                    Err(err) => {
                        let file = &mut self.files[i];
                        if !file.warned {
                            tracing::warn!(path = %file.source.path.display(), %err, "cannot read file; retrying");
                            file.warned = true;
                        }
                        i += 1;
                    }
                }
            }
            if !busy {
                for lane in &mut self.wiring.outputs {
                    if !lane.flush_if_empty() {
                        // An output only goes away when the shipper stops.
                        self.wiring.stop.store(true, Ordering::Relaxed);
                    }
                }
                self.sleep(self.poll_interval);
            }
        }
    }

    fn stopping(&self) -> bool {
        self.wiring.stop.load(Ordering::Relaxed)
    }

    fn sleep(&self, total: Duration) {
        let until = Instant::now() + total;
        while !self.stopping() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(STOP_CHECK));
        }
    }

    fn tracked(&self) -> HashSet<(u64, u64)> {
        self.files.iter().map(|f| f.fingerprint.inode()).collect()
    }

    fn expand(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.patterns.iter().flat_map(Pattern::expand).collect();
        paths.sort();
        paths.dedup();
        paths
    }

    /// The first scan: picks up where the last run's checkpoints left off.
    fn resume(&mut self) {
        let mut entries = self.wiring.tracker.preloaded(&self.name);
        for path in self.expand() {
            let Some((file, fingerprint)) = self.open_found(&path) else {
                // A file that is there but cannot be opened keeps its
                // checkpoint until it can, or until it is gone.
                if let Ok(meta) = std::fs::metadata(&path) {
                    let inode = (meta.dev(), meta.ino());
                    if let Some(i) = entries.iter().position(|e| e.fingerprint.inode() == inode) {
                        self.waiting.push(entries.swap_remove(i));
                    }
                }
                continue;
            };
            if self.tracked().contains(&fingerprint.inode()) {
                continue;
            }
            let len = file.metadata().map_or(0, |m| m.len());
            let resumed = entries.iter().position(|e| {
                e.fingerprint.inode() == fingerprint.inode()
                    && e.fingerprint.head_matches(&file).unwrap_or(false)
                    && len >= e.offset
            });
            let offset = resumed.map_or(0, |i| entries.swap_remove(i).offset);
            self.track(path, file, fingerprint, offset, false);
        }
        // Files the glob no longer finds: first those still holding the
        // checkpointed content under another name (renamed), then copies
        // of it (copytruncate), then content an inode received after the
        // last run looked at it (truncated and rewritten, then rotated).
        let mut unresolved = Vec::new();
        for entry in entries {
            if !self.adopt(&entry, Match::SameFile) {
                unresolved.push(entry);
            }
        }
        for entry in &unresolved {
            if !self.adopt(entry, Match::Copy) {
                tracing::warn!(
                    path = %entry.path.display(),
                    offset = entry.offset,
                    "a checkpointed file is gone; whatever it held past the offset was not shipped"
                );
            }
        }
        for entry in &unresolved {
            self.adopt(entry, Match::Rewritten);
        }
        self.wiring.tracker.preload_done(&self.name, &self.waiting);
    }

    /// Looks beside a checkpointed file the glob no longer finds for `how`
    /// it may live on, and reads what is left of it.
    fn adopt(&mut self, entry: &Entry, how: Match) -> bool {
        let tracked = self.tracked();
        let mut candidates = vec![entry.path.clone()];
        candidates.extend(siblings(&entry.path));
        for path in candidates {
            let Ok(Some((file, fingerprint))) = open(&path) else {
                continue;
            };
            if tracked.contains(&fingerprint.inode()) {
                continue;
            }
            let same_inode = fingerprint.inode() == entry.fingerprint.inode();
            let len = file.metadata().map_or(0, |m| m.len());
            let same_content = entry.fingerprint.head_matches(&file).unwrap_or(false);
            let offset = match how {
                Match::SameFile if same_inode && same_content && len >= entry.offset => {
                    entry.offset
                }
                Match::Copy
                    if !same_inode
                        && entry.fingerprint.head_len > 0
                        && same_content
                        && len >= entry.offset =>
                {
                    entry.offset
                }
                Match::Rewritten if same_inode && !same_content => 0,
                _ => continue,
            };
            tracing::info!(path = %path.display(), offset, "resuming a rotated file");
            self.track(path, file, fingerprint, offset, true);
            return true;
        }
        false
    }

    fn track(
        &mut self,
        path: PathBuf,
        file: File,
        fingerprint: Fingerprint,
        offset: u64,
        rotated: bool,
    ) {
        let id = self
            .wiring
            .tracker
            .register(&self.name, &path, fingerprint, offset);
        tracing::debug!(path = %path.display(), offset, rotated, "tailing");
        self.files.push(Tailed {
            id,
            file,
            fingerprint,
            offset,
            parser: self.parser.fresh(),
            source: Arc::new(Source::with_labels(
                Arc::clone(&self.name),
                path,
                self.file_field,
                |pod| self.wiring.pods.as_ref().and_then(|p| p.labels(pod)),
            )),
            rotated: rotated.then(Instant::now),
            warned: false,
        });
    }

    /// Picks up new files; marks files the glob no longer finds as rotated.
    fn scan(&mut self) {
        let mut seen = HashSet::new();
        let mut tracked = self.tracked();
        let found = self.expand();
        // A file no longer found is no longer unreadable.
        let before = self.unreadable.len();
        self.unreadable.retain(|path, _| found.contains(path));
        if self.unreadable.len() != before {
            self.wiring
                .metrics
                .unreadable
                .set(self.unreadable.len() as i64);
        }
        for path in found {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let inode = (meta.dev(), meta.ino());
            if !seen.insert(inode) || tracked.contains(&inode) {
                continue;
            }
            if let Some((file, fingerprint)) = self.open_found(&path) {
                // The path may have been replaced since the stat.
                seen.insert(fingerprint.inode());
                tracked.insert(fingerprint.inode());
                let offset = self.resume_waiting(&file, &fingerprint);
                self.track(path, file, fingerprint, offset, false);
            }
        }
        self.waiting.retain(|entry| {
            let exists = std::fs::metadata(&entry.path)
                .is_ok_and(|meta| (meta.dev(), meta.ino()) == entry.fingerprint.inode());
            if !exists {
                tracing::warn!(
                    path = %entry.path.display(),
                    offset = entry.offset,
                    "a checkpointed file that could not be opened is gone; whatever it held past the offset was not shipped"
                );
                self.wiring.tracker.preload_resolved(entry);
            }
            exists
        });
        for file in &mut self.files {
            if file.rotated.is_none() && !seen.contains(&file.fingerprint.inode()) {
                tracing::debug!(path = %file.source.path.display(), "rotated or deleted; reading to its end");
                file.rotated = Some(Instant::now());
            }
        }
    }

    /// Opens a file the globs found. A failure is logged once per file
    /// (until it opens), counted, and tried again on the next scan.
    fn open_found(&mut self, path: &Path) -> Option<(File, Fingerprint)> {
        match open(path) {
            Ok(found) => {
                if self.unreadable.remove(path).is_some() {
                    tracing::info!(path = %path.display(), "file can be opened again; reading it");
                    self.wiring
                        .metrics
                        .unreadable
                        .set(self.unreadable.len() as i64);
                }
                found
            }
            // Gone between the glob and the open: nothing to report.
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => {
                self.wiring.metrics.open_errors.inc();
                if self.unreadable.insert(path.to_path_buf(), err.kind()) != Some(err.kind()) {
                    tracing::error!(path = %path.display(), %err, "cannot open file; trying again every scan");
                    self.wiring
                        .metrics
                        .unreadable
                        .set(self.unreadable.len() as i64);
                }
                None
            }
        }
    }

    /// The offset to read a newly opened file from: its kept checkpoint's,
    /// if it is a file that could not be opened at start.
    fn resume_waiting(&mut self, file: &File, fingerprint: &Fingerprint) -> u64 {
        let len = file.metadata().map_or(0, |m| m.len());
        let Some(i) = self.waiting.iter().position(|e| {
            e.fingerprint.inode() == fingerprint.inode()
                && e.fingerprint.head_matches(file).unwrap_or(false)
                && len >= e.offset
        }) else {
            return 0;
        };
        let entry = self.waiting.swap_remove(i);
        self.wiring.tracker.preload_resolved(&entry);
        tracing::info!(path = %entry.path.display(), offset = entry.offset, "resuming a file from its checkpoint now that it can be opened");
        entry.offset
    }

    fn turn(&mut self, i: usize) -> io::Result<Turn> {
        let file = &mut self.files[i];
        let n = read_at(&file.file, &mut self.buf, file.offset)?;
        // Checked after the read: if the head is unchanged, what was read
        // belongs to the same content.
        let truncated = !file.fingerprint.head_matches(&file.file)?
            || (n == 0 && file.file.metadata()?.len() < file.offset);
        if truncated {
            return Ok(Turn::Truncated);
        }
        if n == 0 {
            return Ok(Turn::End);
        }
        // A pod log found before the cluster's pods were listed gets its
        // labels as soon as they are known, from its next lines on.
        if let (Some(pods), Some(pod), None) =
            (&self.wiring.pods, &file.source.pod, &file.source.labels)
            && let Some(labels) = pods.labels(pod)
        {
            file.source = Arc::new(Source::with_labels(
                Arc::clone(&file.source.input),
                file.source.path.clone(),
                self.file_field,
                |_| Some(labels),
            ));
        }
        if file.fingerprint.head_is_short() {
            let grown = Fingerprint::of(&file.file)?;
            if grown != file.fingerprint && file.fingerprint.head_matches(&file.file)? {
                file.fingerprint = grown;
                self.wiring.tracker.update(file.id, None, grown);
            }
        }
        let mut chunk = Chunk::new(file.id, Arc::clone(&file.source));
        chunk.text.reserve(n);
        file.parser.feed(&self.buf[..n], file.offset, &mut chunk);
        file.offset += n as u64;
        let size = file.offset;
        let malformed = file.parser.take_malformed();
        self.wiring.metrics.malformed.inc_by(malformed);
        self.send(chunk, size);
        Ok(Turn::Data)
    }

    fn flush_idle(&mut self, i: usize) {
        let file = &mut self.files[i];
        if !file.parser.has_pending() {
            return;
        }
        let mut chunk = Chunk::new(file.id, Arc::clone(&file.source));
        file.parser.flush_idle(Instant::now(), &mut chunk);
        let size = file.offset;
        self.send(chunk, size);
    }

    /// The file was truncated. With copytruncate, the copy beside it holds
    /// what was not read yet: reading moves there. Either way the file
    /// itself starts over as new content.
    fn truncated(&mut self, i: usize) {
        let mut tracked = self.tracked();
        let file = &mut self.files[i];
        tracked.remove(&file.fingerprint.inode());
        let copy = find_copy(&file.source.path, &file.fingerprint, file.offset, &tracked);
        let path = file.source.path.clone();
        let original = match copy {
            Some((copy_path, copy_file, copy_fingerprint)) => {
                tracing::info!(path = %path.display(), copy = %copy_path.display(), "file copied and truncated; reading the rest from the copy");
                file.fingerprint = copy_fingerprint;
                file.rotated = Some(Instant::now());
                self.wiring
                    .tracker
                    .update(file.id, Some(&copy_path), copy_fingerprint);
                Some(std::mem::replace(&mut file.file, copy_file))
            }
            None => {
                tracing::warn!(path = %path.display(), offset = file.offset, "file truncated; reading it again from the start (lines written past the last read before the truncation are gone)");
                let done = self.files.swap_remove(i);
                let file = done.file.try_clone().ok();
                self.release(done);
                file
            }
        };
        if let Some(original) = original {
            match Fingerprint::of(&original) {
                // A scan run while the release above waited on a slow
                // output may have picked the file up already.
                Ok(fingerprint) if self.tracked().contains(&fingerprint.inode()) => {}
                Ok(fingerprint) => self.track(path, original, fingerprint, 0, false),
                Err(err) => {
                    tracing::warn!(path = %path.display(), %err, "cannot read truncated file")
                }
            }
        }
    }

    /// Hands on what the parser still holds, then lets the file go.
    fn release(&mut self, mut done: Tailed) {
        let mut chunk = Chunk::new(done.id, Arc::clone(&done.source));
        done.parser.finish(&mut chunk);
        self.send(chunk, done.offset);
        self.wiring.tracker.release(done.id);
        tracing::debug!(path = %done.source.path.display(), "released");
    }

    /// Scans if the scan interval has passed: also while the reader waits
    /// on a slow output, so a file rotated meanwhile is already held open.
    fn scan_if_due(&mut self) {
        if Instant::now() >= self.next_scan {
            self.scan();
            self.next_scan = Instant::now() + self.scan_interval;
        }
    }

    /// Waits until a written checkpoint holds the file under the identity
    /// (path and fingerprint) its events were read under; false if the
    /// shipper stops first. Nothing of a file is handed on before then: a
    /// file copied and truncated, or renamed away, after its lines were
    /// delivered must still be found by a shipper restarted after a crash,
    /// and only the checkpoint tells it what to look for.
    fn identity_saved(&mut self, file: FileId) -> bool {
        let Some(number) = self.wiring.tracker.unsaved_identity(file) else {
            return true;
        };
        let tracker = Arc::clone(&self.wiring.tracker);
        let runtime = self.wiring.runtime.clone();
        loop {
            let waited = runtime.block_on(async {
                tokio::time::timeout(STOP_CHECK, tracker.wait_identity_saved(number)).await
            });
            match waited {
                Ok(()) => return true,
                Err(_) if self.stopping() => return false,
                Err(_) => self.scan_if_due(),
            }
        }
    }

    fn send(&mut self, mut chunk: Chunk, size: u64) {
        let Some(last) = chunk.events.last() else {
            return;
        };
        let commit = last.commit;
        if !self.identity_saved(chunk.file) {
            return;
        }
        let budget = Arc::clone(&self.wiring.budget);
        let stop = Arc::clone(&self.wiring.stop);
        let Some(reservation) = budget.reserve(chunk.memory(), &stop, &mut || self.scan_if_due())
        else {
            return;
        };
        chunk.hold(reservation);
        self.wiring.metrics.events.inc_by(chunk.events.len() as u64);
        self.wiring.metrics.bytes.inc_by(
            chunk
                .events
                .iter()
                .map(|e| u64::from(e.end - e.start))
                .sum(),
        );
        self.wiring.tracker.emitted(chunk.file, commit, size);
        let chunk = Arc::new(chunk);
        let mut lanes = std::mem::take(&mut self.wiring.outputs);
        self.offer(&mut lanes, &chunk);
        self.wiring.outputs = lanes;
    }

    /// Hands `chunk` to every output's queue, waiting while a `block`
    /// queue is full.
    fn offer(&mut self, lanes: &mut [Lane], chunk: &Arc<Chunk>) {
        let runtime = self.wiring.runtime.clone();
        for lane in lanes {
            loop {
                match lane.offer(chunk) {
                    Offer::Queued | Offer::Dropped => break,
                    Offer::Closed => {
                        // An output only goes away when the shipper stops.
                        self.wiring.stop.store(true, Ordering::Relaxed);
                        return;
                    }
                    Offer::Full => {}
                }
                // The timer must be made inside the runtime's context.
                let freed = runtime
                    .block_on(async { tokio::time::timeout(STOP_CHECK, lane.freed()).await });
                if freed.is_err() {
                    if self.stopping() {
                        return;
                    }
                    self.scan_if_due();
                }
            }
        }
    }
}

/// Opens `path` and fingerprints it; `Ok(None)` if it is not a regular file.
fn open(path: &Path) -> io::Result<Option<(File, Fingerprint)>> {
    let file = File::open(path)?;
    if !file.metadata()?.is_file() {
        return Ok(None);
    }
    let fingerprint = Fingerprint::of(&file)?;
    Ok(Some((file, fingerprint)))
}

fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    loop {
        match file.read_at(buf, offset) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Files beside `path` named as rotation names them: `<name>.<suffix>` or `<name>-<suffix>`.
fn siblings(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.len() > name.len() + 1
                    && n.starts_with(name)
                    && matches!(n.as_bytes()[name.len()], b'.' | b'-')
            })
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// The copy copytruncate made of a file fingerprinted `fingerprint`, read up to `offset`.
fn find_copy(
    path: &Path,
    fingerprint: &Fingerprint,
    offset: u64,
    tracked: &HashSet<(u64, u64)>,
) -> Option<(PathBuf, File, Fingerprint)> {
    if fingerprint.head_len == 0 {
        return None;
    }
    siblings(path).into_iter().find_map(|candidate| {
        let (file, found) = open(&candidate).ok()??;
        let len = file.metadata().ok()?.len();
        let matches = !tracked.contains(&found.inode())
            && found.inode() != fingerprint.inode()
            && fingerprint.head_matches(&file).ok()?
            && len >= offset;
        matches.then_some((candidate, file, found))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ShipperMetrics;
    use prometheus_client::metrics::gauge::Gauge;

    #[test]
    fn nothing_is_handed_on_before_a_checkpoint_holds_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("a.log"), "one\ntwo\n").expect("writes the log");
        let input = InputConfig {
            name: "in".into(),
            paths: vec![format!("{}/*.log", dir.path().display())],
            format: crate::config::Format::Raw,
            ..InputConfig::default()
        };
        // A current-thread runtime's timers run only under its own
        // `block_on`; the reader calls `Handle::block_on` from its thread.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .expect("runtime");
        let tracker = Tracker::new(1, Vec::new());
        let (tx, mut rx) = crate::lane::lane(
            &crate::config::OutputBufferConfig::default(),
            prometheus_client::metrics::counter::Counter::default(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let wiring = Wiring {
            tracker: Arc::clone(&tracker),
            budget: Budget::new(1 << 20, Gauge::default()),
            outputs: vec![tx],
            stop: Arc::clone(&stop),
            runtime: runtime.handle().clone(),
            metrics: ShipperMetrics::default().input("in"),
            pods: None,
        };
        let watcher = Watcher::new(&input, wiring).expect("reader");
        let reader = std::thread::spawn(move || watcher.run());

        let found = Instant::now() + Duration::from_secs(10);
        let snapshot = loop {
            let snapshot = tracker.snapshot();
            if !snapshot.entries.is_empty() {
                break snapshot;
            }
            assert!(Instant::now() < found, "the reader registers the file");
            std::thread::sleep(Duration::from_millis(20));
        };
        // Time to read the file and, were it allowed, hand the lines on.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            rx.try_recv().is_err(),
            "read lines wait for a checkpoint that holds their file"
        );
        tracker.saved(snapshot.marks);
        let chunk = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), rx.recv()).await })
            .expect("handed on once checkpointed");
        let Some(crate::lane::Item::Chunk(chunk)) = chunk else {
            panic!("expected a chunk, got {chunk:?}");
        };
        assert_eq!(chunk.events.len(), 2);

        stop.store(true, Ordering::Relaxed);
        reader.join().expect("reader ends");
    }
}
