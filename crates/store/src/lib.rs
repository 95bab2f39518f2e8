//! tern's embedded store: a write-ahead log of checksummed records in plain files, with
//! snapshots to keep it short and group commit to keep it fast.
//!
//! The broker holds its whole state in memory and tells the store every change that must
//! outlive a crash, as [`Record`]s grouped in a [`Txn`]. One writer thread takes everything
//! appended since its last turn, writes it to the current log segment with one `write`, makes
//! it durable with one `fdatasync` ([`Durability::Sync`]), and then announces the new durable
//! position: a client's acknowledgement waits for that position ([`Store::wait_durable`]), so
//! however many connections commit at once, they share one disk flush.
//!
//! The writer also keeps an [`image`] of what the log adds up to (an index, not a copy of the
//! payloads); when the log has grown to twice the last snapshot, it writes a new snapshot from
//! the image and deletes the log segments and snapshot that it replaces. At startup,
//! [`Store::open`] reads the newest complete snapshot and the segments after it, cuts off a
//! torn frame at the end of the last segment (what a crash mid-write leaves), and returns
//! what the broker rebuilds itself from ([`Recovered`]).
//!
//! Layout of the data directory's `store/` folder: `LOCK` (held while a broker runs),
//! `snapshot-<n>.snap` (the state before segment `n`), `wal-<n>.log` (segments, replayed in
//! order). The file format is in `frame.rs` and `record.rs`; `docs/storage.md` explains it.

mod frame;
mod image;
mod record;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::{error, info, warn};

pub use image::{EntryState, OwnedMessage, Recovered, RecoveredEntry, RecoveredSession};
pub use record::{EntryData, MessageData, Record, RecordError, SessionData, FORMAT_VERSION};

use frame::{BadFrame, HeaderError, HEADER_LEN, SEGMENT_MAGIC, SNAPSHOT_MAGIC};
use image::{FileId, Image, Loc, MessageIndex};

/// Files open for reading messages back, shared by readers and the writer (which forgets the
/// files a snapshot replaced).
type FileCache = Arc<Mutex<HashMap<FileId, Arc<File>>>>;

/// When an acknowledged change is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Before the acknowledgement: each commit waits for `fdatasync` (shared by all commits
    /// that arrive while the previous one is being flushed).
    Sync,
    /// Written at once, flushed to disk every interval: a crash of the machine (not of the
    /// broker alone) loses at most the last interval.
    Periodic(Duration),
}

/// How the store behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// When changes are durable.
    pub durability: Durability,
    /// A log segment is closed and a new one started past this size, in bytes.
    pub segment_size: u64,
    /// No snapshot is written before the log since the last one reaches this size, in bytes
    /// (then: when it reaches twice the last snapshot).
    pub snapshot_min: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Sync,
            segment_size: 64 * 1024 * 1024,
            snapshot_min: 64 * 1024 * 1024,
        }
    }
}

/// Why the store cannot open or write.
#[derive(Debug)]
pub enum StoreError {
    /// An operating-system error on a file.
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Another process holds the store.
    Locked(PathBuf),
    /// A file is damaged somewhere a crash cannot explain (not the end of the last segment).
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        why: String,
    },
    /// A file in a format version this tern does not read.
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            StoreError::Locked(path) => write!(
                f,
                "{}: another tern broker is using this data directory",
                path.display()
            ),
            StoreError::Corrupt { path, offset, why } => write!(
                f,
                "{}: damaged at byte {offset}: {why}; move the file away to start without it",
                path.display()
            ),
            StoreError::Version { path, found } => write!(
                f,
                "{}: store format version {found}, this tern reads version {FORMAT_VERSION}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StoreError {}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What startup found, for the log.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Files read (snapshot and segments).
    pub files: usize,
    /// Bytes read.
    pub bytes: u64,
    /// Records replayed.
    pub records: u64,
    /// Bytes cut off the end of the last segment (a write a crash interrupted).
    pub torn_bytes: u64,
    /// Retained messages, stored messages, sessions, queue entries.
    pub counts: (usize, usize, usize, usize),
    /// How long reading took.
    pub elapsed: Duration,
}

struct Pending {
    /// Whole frames not yet taken by the writer.
    buf: Vec<u8>,
    /// The number of the last committed transaction.
    lsn: u64,
    /// The writer is to finish what is pending and stop.
    closing: bool,
    /// The writer is asleep on the condition variable: only then does a commit wake it (a
    /// wake is a system call; while it writes or flushes, commits just pile up for its next
    /// turn).
    idle: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// The last write or flush failed (disk full, I/O error) and is being retried.
    failing: AtomicBool,
}

fn lock(m: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The store of a running broker.
pub struct Store {
    shared: Arc<Shared>,
    durable: watch::Receiver<u64>,
    writer: Mutex<Option<JoinHandle<()>>>,
    next_id: AtomicU64,
    anchor: (Instant, u64),
    dir: PathBuf,
    index: MessageIndex,
    files: FileCache,
    _lock: File,
}

/// Records appended together: they reach the disk in one frame, all or none. While a
/// transaction is open no other can append, so records about the same key are in the log in
/// the order the broker made the changes when it appends under the lock that orders them.
pub struct Txn<'a> {
    pending: MutexGuard<'a, Pending>,
    shared: &'a Shared,
    start: usize,
}

impl Txn<'_> {
    /// Adds a record.
    pub fn push(&mut self, record: &Record<'_>) {
        if !self.pending.closing {
            record.encode(&mut self.pending.buf);
        }
    }

    /// Ends the transaction; returns the position to pass to [`Store::wait_durable`], or 0 if
    /// nothing was written (nothing to wait for).
    pub fn commit(mut self) -> u64 {
        self.finish()
    }

    fn finish(&mut self) -> u64 {
        let start = std::mem::replace(&mut self.start, usize::MAX);
        if start == usize::MAX || !frame::end_frame(&mut self.pending.buf, start) {
            return 0;
        }
        self.pending.lsn += 1;
        if self.pending.idle {
            self.pending.idle = false;
            self.shared.wake.notify_one();
        }
        self.pending.lsn
    }
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Store {
    /// Opens (creating it if needed) the store in `dir`, recovers its state and starts the
    /// writer thread.
    pub fn open(
        dir: &Path,
        options: Options,
    ) -> Result<(Store, Recovered, RecoveryReport), StoreError> {
        let started = Instant::now();
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let lock_path = dir.join("LOCK");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        if lock_file.try_lock().is_err() {
            return Err(StoreError::Locked(dir.to_owned()));
        }
        let files = list_files(dir)?;
        let mut report = RecoveryReport::default();
        let mut image = Image::default();
        let mut loaded: HashMap<FileId, Vec<u8>> = HashMap::new();

        // The newest complete snapshot; an incomplete one (a crash while writing it) is
        // ignored: the segments it would have replaced are still there.
        let mut base = 0;
        for id in files.iter().rev().filter(|f| f.snapshot) {
            let path = file_path(dir, *id);
            let bytes = fs::read(&path).map_err(io_error(&path))?;
            let mut candidate = Image::default();
            match replay(&bytes, *id, SNAPSHOT_MAGIC, &mut candidate) {
                Ok(Replayed {
                    records,
                    complete: true,
                    bad: None,
                }) => {
                    report.files += 1;
                    report.bytes += bytes.len() as u64;
                    report.records += records;
                    image = candidate;
                    loaded.insert(*id, bytes);
                    base = id.number;
                    break;
                }
                Err(HeaderError::Version(found)) => {
                    return Err(StoreError::Version { path, found })
                }
                _ => warn!(file = %path.display(), "incomplete snapshot ignored"),
            }
        }
        let segments: Vec<FileId> = files
            .iter()
            .filter(|f| !f.snapshot && f.number >= base)
            .copied()
            .collect();
        for (i, id) in segments.iter().enumerate() {
            let path = file_path(dir, *id);
            let bytes = fs::read(&path).map_err(io_error(&path))?;
            let last = i + 1 == segments.len();
            let replayed = match replay(&bytes, *id, SEGMENT_MAGIC, &mut image) {
                Ok(r) => r,
                Err(HeaderError::Version(found)) => {
                    return Err(StoreError::Version { path, found })
                }
                // A crash right after creating the segment leaves it without its header.
                Err(HeaderError::NotOurs) if last && bytes.len() < HEADER_LEN => Replayed {
                    records: 0,
                    complete: false,
                    bad: Some(BadFrame {
                        offset: 0,
                        why: "header incomplete",
                    }),
                },
                Err(HeaderError::NotOurs) => {
                    return Err(StoreError::Corrupt {
                        path,
                        offset: 0,
                        why: "not a tern log segment".into(),
                    })
                }
            };
            report.files += 1;
            report.bytes += bytes.len() as u64;
            report.records += replayed.records;
            if let Some(bad) = replayed.bad {
                if !last {
                    return Err(StoreError::Corrupt {
                        path,
                        offset: bad.offset as u64,
                        why: bad.why.into(),
                    });
                }
                let torn = bytes.len() - bad.offset;
                warn!(file = %path.display(), offset = bad.offset, bytes = torn, why = bad.why,
                    "cutting off the end of the log that a crash left unfinished");
                report.torn_bytes = torn as u64;
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_error(&path))?;
                file.set_len(bad.offset as u64).map_err(io_error(&path))?;
                file.sync_all().map_err(io_error(&path))?;
            }
            loaded.insert(*id, bytes);
        }
        let recovered = image.recovered(|loc| {
            let bytes = loaded.get(&loc.file)?;
            let start = usize::try_from(loc.offset).ok()?;
            bytes.get(start..start + loc.len as usize)
        });
        report.counts = image.counts();
        report.elapsed = started.elapsed();
        drop(loaded);

        // Files the snapshot replaced, if a crash came before they were deleted.
        for id in files.iter().filter(|f| f.number < base) {
            let _ = fs::remove_file(file_path(dir, *id));
        }
        let next = files.iter().map(|f| f.number).max().unwrap_or(0) + 1;
        let segment = FileId {
            snapshot: false,
            number: next,
        };
        let (file, len) = create_file(dir, segment, SEGMENT_MAGIC)?;
        let snapshot_len = if base > 0 {
            fs::metadata(file_path(
                dir,
                FileId {
                    snapshot: true,
                    number: base,
                },
            ))
            .map(|m| m.len())
            .unwrap_or(0)
        } else {
            0
        };
        let since_snapshot = report.bytes.saturating_sub(snapshot_len);
        let next_id = image.max_id + 1;
        let index = image.index.clone();
        let files: FileCache = Arc::default();
        let (durable_tx, durable_rx) = watch::channel(0);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                lsn: 0,
                closing: false,
                idle: false,
            }),
            wake: Condvar::new(),
            failing: AtomicBool::new(false),
        });
        let writer = Writer {
            dir: dir.to_owned(),
            segment: file,
            segment_id: segment,
            segment_len: len,
            image,
            options,
            durable: durable_tx,
            since_snapshot,
            snapshot_len,
            files: files.clone(),
            job: None,
        };
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("tern-store".into())
            .spawn(move || writer.run(&thread_shared))
            .map_err(io_error(dir))?;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let store = Store {
            shared,
            durable: durable_rx,
            writer: Mutex::new(Some(handle)),
            next_id: AtomicU64::new(next_id),
            anchor: (Instant::now(), wall),
            dir: dir.to_owned(),
            index,
            files,
            _lock: lock_file,
        };
        Ok((store, recovered, report))
    }

    /// Starts a transaction. Until it is committed or dropped, other appends wait.
    pub fn begin(&self) -> Txn<'_> {
        let mut pending = lock(&self.shared.pending);
        let start = frame::begin_frame(&mut pending.buf);
        Txn {
            pending,
            shared: &self.shared,
            start,
        }
    }

    /// Appends one record on its own; returns its position (see [`Txn::commit`]).
    pub fn append(&self, record: &Record<'_>) -> u64 {
        let mut txn = self.begin();
        txn.push(record);
        txn.commit()
    }

    /// A fresh id for a [`Record::Message`] or an entry's `seq`: never used before in this
    /// store, so a late record about an old entry cannot touch a new one.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether writing to disk fails now (the writer retries until it works): a broker should
    /// not accept what it would have to keep.
    pub fn is_failing(&self) -> bool {
        self.shared.failing.load(Ordering::Relaxed)
    }

    /// Whether message `id` is on disk and can be read back with [`Store::read_message`]
    /// (its record has been written and not yet forgotten).
    pub fn has_message(&self, id: u64) -> bool {
        self.index.lock().contains_key(&id)
    }

    /// Reads stored message `id` back from its file (for a queue entry the broker took out of
    /// memory). `None` if the store does not hold it.
    pub fn read_message(&self, id: u64) -> Option<OwnedMessage> {
        // Twice: a snapshot may move the record and delete its file between the two steps.
        for _ in 0..2 {
            let loc = *self.index.lock().get(&id)?;
            let cached = self
                .files
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&loc.file)
                .cloned();
            let file = match cached {
                Some(f) => f,
                None => match File::open(file_path(&self.dir, loc.file)) {
                    Ok(f) => {
                        let f = Arc::new(f);
                        self.files
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(loc.file, f.clone());
                        f
                    }
                    Err(_) => continue,
                },
            };
            let mut buf = vec![0; loc.len as usize];
            if file.read_exact_at(&mut buf, loc.offset).is_err() {
                continue;
            }
            if let Ok((Record::Message { message, .. }, _)) = Record::decode(&buf) {
                return Some(message.into());
            }
        }
        None
    }

    /// The position of the last committed transaction (durable or not yet).
    pub fn last_commit(&self) -> u64 {
        lock(&self.shared.pending).lsn
    }

    /// The last position that is durable.
    pub fn durable(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Waits until position `lsn` is durable. False if the store stopped before it was.
    pub async fn wait_durable(&self, lsn: u64) -> bool {
        let mut rx = self.durable.clone();
        let ok = rx.wait_for(|d| *d >= lsn).await.is_ok();
        ok
    }

    /// Milliseconds since the Unix epoch at `t` (for expiry times that must mean the same
    /// after a restart).
    pub fn wall_ms(&self, t: Instant) -> u64 {
        let (at, wall) = self.anchor;
        if t >= at {
            wall.saturating_add(t.duration_since(at).as_millis() as u64)
        } else {
            wall.saturating_sub(at.duration_since(t).as_millis() as u64)
        }
    }

    /// The instant of a wall-clock time in ms since the Unix epoch, as seen from `now`.
    pub fn instant_of(&self, ms: u64, now: Instant) -> Instant {
        let now_ms = self.wall_ms(now);
        if ms >= now_ms {
            now + Duration::from_millis(ms - now_ms)
        } else {
            now.checked_sub(Duration::from_millis(now_ms - ms))
                .unwrap_or(now)
        }
    }

    /// Writes what is pending, flushes it to disk and stops the writer. Later appends are
    /// dropped: a broker shutting down must not change what it saved.
    pub fn close(&self) {
        lock(&self.shared.pending).closing = true;
        self.shared.wake.notify_one();
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

struct Replayed {
    records: u64,
    /// A snapshot ended with its end record.
    complete: bool,
    bad: Option<BadFrame>,
}

/// Applies the records of one file to `image`, stopping at the first bad frame.
fn replay(
    bytes: &[u8],
    id: FileId,
    magic: &[u8; 8],
    image: &mut Image,
) -> Result<Replayed, HeaderError> {
    frame::check_header(bytes, magic)?;
    let mut at = HEADER_LEN;
    let mut out = Replayed {
        records: 0,
        complete: false,
        bad: None,
    };
    loop {
        let body = match frame::read_frame(bytes, at) {
            Ok(Some(body)) => body,
            Ok(None) => break,
            Err(bad) => {
                out.bad = Some(bad);
                break;
            }
        };
        let frame_start = at;
        at = body.end;
        // Decode the whole frame before applying it: a frame is all or nothing.
        let mut records = Vec::new();
        let mut pos = body.start;
        while pos < body.end {
            match Record::decode(&bytes[pos..body.end]) {
                Ok((record, used)) => {
                    records.push((record, pos, used));
                    pos += used;
                }
                Err(_) => break,
            }
        }
        if pos != body.end {
            out.bad = Some(BadFrame {
                offset: frame_start,
                why: "frame holds a record this tern cannot read",
            });
            break;
        }
        for (record, pos, used) in records {
            if let Record::SnapshotEnd { .. } = record {
                out.complete = true;
            }
            let loc = Loc {
                file: id,
                offset: pos as u64,
                len: used as u32,
            };
            image.apply(&record, &bytes[pos..pos + used], loc);
            out.records += 1;
        }
    }
    Ok(out)
}

fn file_path(dir: &Path, id: FileId) -> PathBuf {
    if id.snapshot {
        dir.join(format!("snapshot-{:020}.snap", id.number))
    } else {
        dir.join(format!("wal-{:020}.log", id.number))
    }
}

/// The store's files, in order (by number; a snapshot before the segment of its number).
fn list_files(dir: &Path) -> Result<Vec<FileId>, StoreError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".tmp") {
            // A snapshot a crash interrupted.
            let _ = fs::remove_file(entry.path());
            continue;
        }
        let parsed = if let Some(n) = name
            .strip_prefix("snapshot-")
            .and_then(|s| s.strip_suffix(".snap"))
        {
            n.parse().ok().map(|number| FileId {
                snapshot: true,
                number,
            })
        } else if let Some(n) = name
            .strip_prefix("wal-")
            .and_then(|s| s.strip_suffix(".log"))
        {
            n.parse().ok().map(|number| FileId {
                snapshot: false,
                number,
            })
        } else {
            None
        };
        files.extend(parsed);
    }
    files.sort_by_key(|f| (f.number, !f.snapshot));
    Ok(files)
}

/// Creates a file with its header, durable along with its directory entry.
fn create_file(dir: &Path, id: FileId, magic: &[u8; 8]) -> Result<(File, u64), StoreError> {
    let path = file_path(dir, id);
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_error(&path))?;
    file.write_all_at(&frame::header(magic), 0)
        .map_err(io_error(&path))?;
    file.sync_all().map_err(io_error(&path))?;
    sync_dir(dir)?;
    Ok((file, HEADER_LEN as u64))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    segment: File,
    segment_id: FileId,
    segment_len: u64,
    image: Image,
    options: Options,
    durable: watch::Sender<u64>,
    since_snapshot: u64,
    snapshot_len: u64,
    files: FileCache,
    /// The snapshot being written on its own thread, and its id.
    job: Option<(
        FileId,
        std::thread::JoinHandle<Result<SnapshotDone, StoreError>>,
    )>,
}

impl Writer {
    fn run(mut self, shared: &Shared) {
        let mut batch = Vec::new();
        let mut last_flush = Instant::now();
        let mut unflushed = false;
        loop {
            let (lsn, closing) = {
                let mut p = lock(&shared.pending);
                while p.buf.is_empty() && !p.closing {
                    p.idle = true;
                    if self.job.is_some() {
                        // A snapshot is being written: look up now and then to finish it.
                        p = shared
                            .wake
                            .wait_timeout(p, Duration::from_millis(50))
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                        if self.job.as_ref().is_some_and(|(_, j)| j.is_finished()) {
                            break;
                        }
                        continue;
                    }
                    match self.options.durability {
                        Durability::Periodic(every) if unflushed => {
                            let left = every.saturating_sub(last_flush.elapsed());
                            if left.is_zero() {
                                break;
                            }
                            p = shared
                                .wake
                                .wait_timeout(p, left)
                                .unwrap_or_else(|e| e.into_inner())
                                .0;
                        }
                        _ => p = shared.wake.wait(p).unwrap_or_else(|e| e.into_inner()),
                    }
                }
                p.idle = false;
                std::mem::swap(&mut p.buf, &mut batch);
                (p.lsn, p.closing)
            };
            if !batch.is_empty() {
                let at = self.segment_len;
                self.write(&batch, &shared.failing);
                match self.options.durability {
                    Durability::Sync => self.flush(&shared.failing),
                    Durability::Periodic(_) => unflushed = true,
                }
                self.durable.send_replace(lsn);
                self.apply(&batch, at);
                batch.clear();
                if batch.capacity() > 16 * 1024 * 1024 {
                    batch = Vec::new();
                }
                self.compact_if_due();
            }
            if let Durability::Periodic(every) = self.options.durability {
                if unflushed && (closing || last_flush.elapsed() >= every) {
                    self.flush(&shared.failing);
                    unflushed = false;
                    last_flush = Instant::now();
                }
            }
            if batch.is_empty() {
                self.finish_snapshot(false);
            }
            if closing {
                self.flush(&shared.failing);
                self.finish_snapshot(true);
                return;
            }
        }
    }

    /// Writes `batch` at the end of the segment. A failed write (disk full) is cut off and
    /// tried again until it succeeds: nothing after it may be acknowledged before it.
    fn write(&mut self, batch: &[u8], failing: &AtomicBool) {
        let mut failures = 0u32;
        while let Err(e) = self.segment.write_all_at(batch, self.segment_len) {
            if failures == 0 {
                error!(error = %e, "cannot write to the store; acknowledgements wait until it works, new QoS 1/2 publications are refused");
                failing.store(true, Ordering::Relaxed);
            }
            failures += 1;
            let _ = self.segment.set_len(self.segment_len);
            std::thread::sleep(Duration::from_millis(200));
        }
        if failures > 0 {
            info!("writing to the store works again");
            failing.store(false, Ordering::Relaxed);
        }
        self.segment_len += batch.len() as u64;
        self.since_snapshot += batch.len() as u64;
    }

    fn flush(&mut self, failing: &AtomicBool) {
        let mut failures = 0u32;
        while let Err(e) = self.segment.sync_data() {
            if failures == 0 {
                error!(error = %e, "cannot flush the store to disk; acknowledgements wait");
                failing.store(true, Ordering::Relaxed);
            }
            failures += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        if failures > 0 {
            failing.store(false, Ordering::Relaxed);
        }
    }

    fn apply(&mut self, batch: &[u8], at: u64) {
        let mut pos = 0;
        while let Ok(Some(body)) = frame::read_frame(batch, pos) {
            pos = body.end;
            let mut r = body.start;
            while r < body.end {
                let Ok((record, used)) = Record::decode(&batch[r..body.end]) else {
                    error!("the store could not read back a record it wrote");
                    break;
                };
                let loc = Loc {
                    file: self.segment_id,
                    offset: at + r as u64,
                    len: used as u32,
                };
                self.image.apply(&record, &batch[r..r + used], loc);
                r += used;
            }
        }
    }

    fn rotate(&mut self) -> Result<(), StoreError> {
        let id = FileId {
            snapshot: false,
            number: self.segment_id.number + 1,
        };
        let (file, len) = create_file(&self.dir, id, SEGMENT_MAGIC)?;
        self.segment = file;
        self.segment_id = id;
        self.segment_len = len;
        Ok(())
    }

    fn compact_if_due(&mut self) {
        self.finish_snapshot(false);
        let due = self.job.is_none()
            && self.since_snapshot >= self.options.snapshot_min.max(2 * self.snapshot_len);
        let result = if due {
            self.start_snapshot()
        } else if self.segment_len >= self.options.segment_size {
            self.rotate()
        } else {
            Ok(())
        };
        if let Err(e) = result {
            error!(error = %e, "store compaction failed; the log keeps growing until it works");
        }
    }

    /// Starts snapshot `n` (covering every segment before `n`): a new segment `n` takes the
    /// commits while another thread writes a copy of the image, so commits never wait for it.
    fn start_snapshot(&mut self) -> Result<(), StoreError> {
        self.rotate()?;
        let id = FileId {
            snapshot: true,
            number: self.segment_id.number,
        };
        self.image.prune();
        let image = self.image.clone();
        let dir = self.dir.clone();
        self.since_snapshot = 0;
        let job = std::thread::Builder::new()
            .name("tern-snapshot".into())
            .spawn(move || {
                let started = Instant::now();
                let written = write_snapshot_file(&dir, id, &image)?;
                Ok(SnapshotDone {
                    records: written.0,
                    bytes: written.1,
                    map: image.relocation_map(written.2),
                    elapsed: started.elapsed(),
                })
            })
            .map_err(io_error(&self.dir))?;
        self.job = Some((id, job));
        Ok(())
    }

    /// If the snapshot being written is done (or `wait`), points the image at it and deletes
    /// the files it replaces.
    fn finish_snapshot(&mut self, wait: bool) {
        let finished = self.job.as_ref().is_some_and(|(_, j)| j.is_finished());
        if !(finished || wait) {
            return;
        }
        let Some((id, job)) = self.job.take() else {
            return;
        };
        let done = match job.join() {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                error!(error = %e, "store snapshot failed; the log keeps growing until one works");
                return;
            }
            Err(_) => {
                error!("store snapshot thread panicked");
                return;
            }
        };
        self.image.relocate_by(&done.map, id.number);
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|f, _| f.number >= id.number);
        match list_files(&self.dir) {
            Ok(files) => {
                for f in files.into_iter().filter(|f| f.number < id.number) {
                    let _ = fs::remove_file(file_path(&self.dir, f));
                }
            }
            Err(e) => error!(error = %e, "cannot list the store to delete replaced files"),
        }
        self.snapshot_len = done.bytes;
        info!(records = done.records, bytes = done.bytes, elapsed = ?done.elapsed, "store snapshot written");
    }
}

/// What the snapshot thread hands back.
struct SnapshotDone {
    records: u64,
    bytes: u64,
    /// Old place of each record copied to its place in the snapshot.
    map: HashMap<(FileId, u64), Loc>,
    elapsed: Duration,
}

/// Writes `image` as snapshot `id`: to a `.tmp` file, flushed, renamed, the folder flushed.
/// Returns the records and bytes written and where each record went.
fn write_snapshot_file(
    dir: &Path,
    id: FileId,
    image: &Image,
) -> Result<(u64, u64, image::Relocation), StoreError> {
    let path = file_path(dir, id);
    let tmp = path.with_extension("snap.tmp");
    let file = File::create(&tmp).map_err(io_error(&tmp))?;
    let mut out = frame::header(SNAPSHOT_MAGIC).to_vec();
    let mut written = 0u64;
    let mut frame_start = frame::begin_frame(&mut out);
    let mut readers: HashMap<FileId, File> = HashMap::new();
    let mut read = |loc: Loc| -> std::io::Result<Vec<u8>> {
        let f = match readers.entry(loc.file) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(File::open(file_path(dir, loc.file))?)
            }
        };
        let mut buf = vec![0; loc.len as usize];
        f.read_exact_at(&mut buf, loc.offset)?;
        Ok(buf)
    };
    let mut emit = |raw: &[u8]| -> std::io::Result<Loc> {
        if out.len() - frame_start > 1024 * 1024 {
            frame::end_frame(&mut out, frame_start);
            file.write_all_at(&out, written)?;
            written += out.len() as u64;
            out.clear();
            frame_start = frame::begin_frame(&mut out);
        }
        let loc = Loc {
            file: id,
            offset: written + out.len() as u64,
            len: raw.len() as u32,
        };
        out.extend_from_slice(raw);
        Ok(loc)
    };
    let (records, moved) = match image.write_snapshot(&mut read, &mut emit) {
        Ok(done) => done,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(io_error(&tmp)(e));
        }
    };
    frame::end_frame(&mut out, frame_start);
    let end = frame::begin_frame(&mut out);
    Record::SnapshotEnd { records }.encode(&mut out);
    frame::end_frame(&mut out, end);
    file.write_all_at(&out, written).map_err(io_error(&tmp))?;
    written += out.len() as u64;
    file.sync_all().map_err(io_error(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_error(&path))?;
    sync_dir(dir)?;
    Ok((records, written, moved))
}

impl Writer {}
