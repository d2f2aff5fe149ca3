//! A tenant's trace-id book: the 16-byte trace ids of the tenant's blocks, each stored once
//! per *window*, so that blocks refer to them by ordinal instead of repeating them.
//!
//! A trace's lines are spread over services, and so over streams: within one stream's block
//! a trace id seldom repeats and costs its full 16 bytes every time. The book keeps each id
//! once per window, and a block ([`crate::segment::BlockMeta::trace_window`]) stores the
//! ordinals, which are close together and compress to about a byte.
//!
//! Files: `<tenant dir>/.traces/w-<window>.ids` (a leading dot cannot be a service's
//! directory). A file is [`MAGIC`], then chunks, one per block that added ids:
//! `"TRID" | first ordinal u32 | count u32 | crc32(first, count, ids) u32 | count × 16 bytes`.
//! A chunk that fails its checksum makes only its own ordinals unreadable; reading resumes at
//! the next chunk marker. A block that refers to an unreadable ordinal fails to decode as a
//! whole (its rows are never served with a wrong or missing trace id), and its segment is
//! quarantined like any segment with a corrupt block: in a cluster, anti-entropy restores
//! its entries from the other replicas; blocks that refer only to readable ordinals, and the
//! other tenants' books, are not affected.
//!
//! Durability: a window is written without fsync; [`TraceBook::sync`] runs before a segment
//! whose blocks refer to it is sealed (the open segment is rebuilt from the WAL after a
//! crash, so only sealed segments need their ids on disk), and a window is fsynced when the
//! next one starts. A restarted process starts a new window instead of appending to one with
//! a possibly torn tail. Windows no block refers to any more are deleted by
//! [`TraceBook::remove_unreferenced`] (retention).

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::StorageError;
use crate::segment::BlockError;

/// The book's directory inside a tenant's directory.
pub const DIR: &str = ".traces";
/// Ids per window: a window file is at most 1 MiB of ids.
pub const WINDOW_IDS: usize = 65_536;
/// A row without an id in the book.
pub const NO_REF: u32 = u32::MAX;
const MAGIC: &[u8; 8] = b"LCTRIDS1";
const CHUNK_MAGIC: &[u8; 4] = b"TRID";
const CHUNK_HEADER: usize = 16;
pub(crate) const ID_LEN: usize = 16;
/// A window file is read up to this (one id per chunk would take 2 MiB).
const MAX_WINDOW_FILE: u64 = 4 << 20;
/// Windows kept decoded for reads, by all the books of a store together (1 MiB each at
/// most): a trace lookup over a day of a busy tenant touches a few dozen.
pub const CACHED_WINDOWS: usize = 32;

/// The ids of one window, by ordinal.
pub struct TraceWindow {
    ids: Vec<u8>,
    present: Vec<bool>,
}

impl TraceWindow {
    /// The id at `ordinal`, unless it is unreadable (a damaged chunk) or past the window.
    pub fn get(&self, ordinal: u32) -> Option<&[u8]> {
        let i = ordinal as usize;
        if !*self.present.get(i)? {
            return None;
        }
        self.ids.get(ID_LEN * i..ID_LEN * (i + 1))
    }

    /// Ordinals the window holds (readable or not).
    pub fn len(&self) -> usize {
        self.present.len()
    }

    pub fn is_empty(&self) -> bool {
        self.present.is_empty()
    }

    /// Reads a window file: every chunk whose checksum holds.
    fn parse(bytes: &[u8]) -> Option<TraceWindow> {
        if bytes.get(..MAGIC.len())? != MAGIC {
            return None;
        }
        let most = (bytes.len() / ID_LEN).min(WINDOW_IDS);
        let mut window = TraceWindow {
            ids: Vec::with_capacity(ID_LEN * most),
            present: Vec::with_capacity(most),
        };
        let mut pos = MAGIC.len();
        while pos + CHUNK_HEADER <= bytes.len() {
            match chunk_at(bytes, pos) {
                Some((first, ids)) => {
                    let end = first + ids.len() / ID_LEN;
                    if window.present.len() < end {
                        window.present.resize(end, false);
                        window.ids.resize(ID_LEN * end, 0);
                    }
                    window.ids[ID_LEN * first..ID_LEN * end].copy_from_slice(ids);
                    window.present[first..end].fill(true);
                    pos += CHUNK_HEADER + ids.len();
                }
                None => {
                    // Resume at the next chunk marker.
                    match memchr::memmem::find(&bytes[pos + 1..], CHUNK_MAGIC) {
                        Some(at) => pos += 1 + at,
                        None => break,
                    }
                }
            }
        }
        Some(window)
    }
}

/// The chunk at `pos` when it is whole and its checksum holds: its first ordinal and ids.
fn chunk_at(bytes: &[u8], pos: usize) -> Option<(usize, &[u8])> {
    let header = bytes.get(pos..pos + CHUNK_HEADER)?;
    if &header[..4] != CHUNK_MAGIC {
        return None;
    }
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let (first, count, crc) = (word(4) as usize, word(8) as usize, word(12));
    if count == 0 || first >= WINDOW_IDS || count > WINDOW_IDS - first {
        return None;
    }
    let ids = bytes.get(pos + CHUNK_HEADER..pos + CHUNK_HEADER + ID_LEN * count)?;
    (chunk_crc(&header[4..12], ids) == crc).then_some((first, ids))
}

/// A chunk's checksum: over its first ordinal and count (`counts`, 8 bytes) and its ids.
fn chunk_crc(counts: &[u8], ids: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(counts);
    hasher.update(ids);
    hasher.finalize()
}

/// The 16 bytes of a trace id of 32 lower-case hex digits (W3C and OpenTelemetry trace ids).
pub fn trace_key(trace_id: &str) -> Option<[u8; ID_LEN]> {
    let mut key = [0u8; ID_LEN];
    logcluster_proto::ids::unhex_into(trace_id.as_bytes(), &mut key).then_some(key)
}

/// The window being filled.
struct Current {
    number: u64,
    path: PathBuf,
    file: File,
    /// Each id written to the file (readers load them from it) and its ordinal; a failed
    /// write gives the window up, so it holds exactly what the file does.
    table: foldhash::HashMap<[u8; ID_LEN], u32>,
    /// Written since the last fsync.
    dirty: bool,
    /// When ids were last looked up in it.
    used: Instant,
}

impl Current {
    /// Fsyncs the window if anything in it is unsynced.
    fn sync(&mut self, failures: &Failures) -> Result<(), StorageError> {
        if self.dirty {
            sync_window(&self.file, &self.path, failures)?;
            self.dirty = false;
        }
        Ok(())
    }
}

/// Why a window's fsync failed, once one has, and the store's count of such failures. The
/// kernel reports a lost write-back once and then counts the pages written, so a later fsync
/// that succeeds proves nothing: the book fails every sync from then on, and no segment is
/// sealed over ids the disk may lack until a restart (the WALs keep the batches).
struct Failures {
    first: Mutex<Option<String>>,
    counter: prometheus_client::metrics::counter::Counter,
}

impl Failures {
    fn refuse_after_failed_sync(&self) -> Result<(), StorageError> {
        match &*lock(&self.first) {
            None => Ok(()),
            Some(error) => Err(StorageError::SealRefused(format!(
                "an earlier fsync of the tenant's trace-id book failed ({error}); the WALs keep the batches until the node restarts"
            ))),
        }
    }
}

/// Fsyncs a window; a failure is final for the book (see [`Failures`]). The window's pages stay
/// cached: this process reads the ids of its open segments' blocks from them, and after a
/// restart no block refers to the window (only sealed segments' blocks outlive a restart, and
/// none is sealed over it), so nothing reads it from the device.
fn sync_window(file: &File, path: &Path, failures: &Failures) -> Result<(), StorageError> {
    failures.refuse_after_failed_sync()?;
    #[cfg(test)]
    if tests::FAIL_NEXT_SYNC.take() {
        let source = std::io::Error::from_raw_os_error(5);
        return Err(fail_window(path, failures, source));
    }
    file.sync_data()
        .map_err(|source| fail_window(path, failures, source))
}

/// A failed window sync: final for the book (counted and logged once).
fn fail_window(path: &Path, failures: &Failures, source: std::io::Error) -> StorageError {
    let error = StorageError::io("sync trace-id window", path, source);
    let mut first = lock(&failures.first);
    if first.is_none() {
        let text = logcluster_common::error_chain(&error);
        tracing::error!(window = %path.display(), error = %text, "a trace-id window may have lost written pages: no segment is sealed until the node restarts");
        failures.counter.inc();
        *first = Some(text);
    }
    error
}

struct Writer {
    /// The number the next window gets.
    next: u64,
    current: Option<Current>,
    /// Earlier windows whose fsync never ran (a failed write) or failed: blocks may refer
    /// to what they hold, so [`TraceBook::sync`] fsyncs them before anything is sealed.
    unsynced: Vec<(PathBuf, File)>,
}

impl Writer {
    /// Gives up the window being filled, keeping it for [`TraceBook::sync`] if dirty.
    fn retire(&mut self) {
        if let Some(done) = self.current.take()
            && done.dirty
        {
            self.unsynced.push((done.path, done.file));
        }
    }
}

/// Windows read recently, shared by the books of a store so that their memory is bounded
/// however many tenants there are: (book, window) → the ids, and whether they were read after
/// the window stopped being filled (a copy read while it was being filled may lack ids added
/// later). Most recent last.
#[derive(Default)]
pub struct WindowCache {
    entries: Mutex<Vec<Cached>>,
}

/// (book, window), the window's ids, and whether they were read once it was done.
type Cached = ((u64, u64), Arc<TraceWindow>, bool);

/// Distinct per book in a process (the cache's key).
static NEXT_BOOK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One tenant's trace-id book (see the module docs).
pub struct TraceBook {
    dir: PathBuf,
    id: u64,
    writer: Mutex<Writer>,
    cache: Arc<WindowCache>,
    failures: Failures,
}

fn window_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("w-{number:016x}.ids"))
}

fn window_number(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("w-")?.strip_suffix(".ids")?;
    let canonical = hex.len() == 16 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    canonical.then(|| u64::from_str_radix(hex, 16).ok())?
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl TraceBook {
    /// The book of the tenant whose directory is `tenant_dir` (created on first use). Reads
    /// existing windows; new ids go to a new window.
    pub fn open(tenant_dir: &Path) -> Result<TraceBook, StorageError> {
        TraceBook::open_with(tenant_dir, Arc::default(), Default::default())
    }

    /// [`TraceBook::open`] with a window cache shared with other books, counting failed
    /// window fsyncs in `sync_failures` (`segment_sync_failures_total`).
    pub fn open_with(
        tenant_dir: &Path,
        cache: Arc<WindowCache>,
        sync_failures: prometheus_client::metrics::counter::Counter,
    ) -> Result<TraceBook, StorageError> {
        let dir = tenant_dir.join(DIR);
        let last = window_numbers(&dir)?.into_iter().max().unwrap_or(0);
        Ok(TraceBook {
            dir,
            id: NEXT_BOOK.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            writer: Mutex::new(Writer {
                next: last + 1,
                current: None,
                unsynced: Vec::new(),
            }),
            cache,
            failures: Failures {
                first: Mutex::new(None),
                counter: sync_failures,
            },
        })
    }

    /// Lets go of the window being filled (fsynced first) when no ids were looked up in it
    /// for `idle`, so that a quiet tenant holds no lookup table; its next ids start a new
    /// window. Returns whether it did.
    pub fn rest_if_idle(&self, idle: std::time::Duration) -> Result<bool, StorageError> {
        let mut writer = lock(&self.writer);
        let Some(current) = writer.current.as_mut() else {
            return Ok(false);
        };
        if current.used.elapsed() < idle {
            return Ok(false);
        }
        // A failed book syncs nothing; its table goes all the same.
        if self.failures.refuse_after_failed_sync().is_ok() {
            current.sync(&self.failures)?;
        }
        writer.current = None;
        Ok(true)
    }

    /// [`TraceBook::intern_keys`] of the trace ids of `entries`.
    #[cfg(test)]
    pub(crate) fn intern(
        &self,
        entries: &[logcluster_proto::LogEntry],
    ) -> Result<Option<(u64, Vec<u32>)>, StorageError> {
        let keys: Vec<Option<[u8; ID_LEN]>> =
            entries.iter().map(|e| trace_key(&e.trace_id)).collect();
        self.intern_keys(&keys)
    }

    /// Gives every 32-hex-digit trace id (`keys`: one [`trace_key`] per entry) an ordinal in
    /// the current window, adding those it lacks (written, not yet fsynced). Returns the
    /// window and one ordinal per entry ([`NO_REF`] for other trace ids), or `None` when no
    /// entry has such an id (or the entries are more than a window holds: the block keeps its
    /// ids itself).
    pub(crate) fn intern_keys(
        &self,
        keys: &[Option<[u8; ID_LEN]>],
    ) -> Result<Option<(u64, Vec<u32>)>, StorageError> {
        if keys.len() > WINDOW_IDS || keys.iter().all(Option::is_none) {
            return Ok(None);
        }
        let mut writer = lock(&self.writer);
        let room = writer.current.as_ref().is_some_and(|c| {
            // Counting the new ids is needed only near the window's end.
            if c.table.len() + keys.len() <= WINDOW_IDS {
                return true;
            }
            let mut fresh: Vec<&[u8; ID_LEN]> = keys
                .iter()
                .flatten()
                .filter(|k| !c.table.contains_key(*k))
                .collect();
            fresh.sort_unstable();
            fresh.dedup();
            c.table.len() + fresh.len() <= WINDOW_IDS
        });
        if !room {
            self.start_window(&mut writer)?;
        }
        let current = writer.current.as_mut().expect("a window was started");
        current.used = Instant::now();
        let first = current.table.len() as u32;
        let mut added: Vec<u8> = Vec::new();
        let ordinals: Vec<u32> = keys
            .iter()
            .map(|key| match key {
                None => NO_REF,
                Some(key) => *current.table.entry(*key).or_insert_with(|| {
                    let ordinal = first + (added.len() / ID_LEN) as u32;
                    added.extend_from_slice(key);
                    ordinal
                }),
            })
            .collect();
        if !added.is_empty() {
            let count = (added.len() / ID_LEN) as u32;
            let mut chunk = Vec::with_capacity(CHUNK_HEADER + added.len());
            chunk.extend_from_slice(CHUNK_MAGIC);
            chunk.extend_from_slice(&first.to_le_bytes());
            chunk.extend_from_slice(&count.to_le_bytes());
            let crc = chunk_crc(&chunk[4..12], &added);
            chunk.extend_from_slice(&crc.to_le_bytes());
            chunk.extend_from_slice(&added);
            // Dirty before the write: a torn write leaves earlier chunks to fsync.
            current.dirty = true;
            if let Err(source) = current.file.write_all(&chunk) {
                // No chunk goes after a possibly torn one: the next block starts a window.
                let path = current.path.clone();
                writer.retire();
                return Err(StorageError::io("append to trace-id window", &path, source));
            }
        }
        Ok(Some((current.number, ordinals)))
    }

    /// An error once a window sync has failed: no segment whose blocks may refer to the book's
    /// ids is sealed until a restart.
    pub fn refuse_after_failed_sync(&self) -> Result<(), StorageError> {
        self.failures.refuse_after_failed_sync()
    }

    /// Fsyncs every window with unsynced ids; run before a segment whose blocks may refer
    /// to them is sealed.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.failures.refuse_after_failed_sync()?;
        let mut writer = lock(&self.writer);
        while let Some((path, file)) = writer.unsynced.last() {
            sync_window(file, path, &self.failures)?;
            writer.unsynced.pop();
        }
        match writer.current.as_mut() {
            Some(current) => current.sync(&self.failures),
            None => Ok(()),
        }
    }

    /// Starts the next window; the one being filled is fsynced first (or kept for
    /// [`TraceBook::sync`] when that fails).
    fn start_window(&self, writer: &mut Writer) -> Result<(), StorageError> {
        if let Some(done) = writer.current.as_mut()
            && let Err(error) = done.sync(&self.failures)
        {
            writer.retire();
            return Err(error);
        }
        writer.current = None;
        if !self.dir.exists() {
            logcluster_common::durable::create_dir_all(&self.dir)
                .map_err(|source| StorageError::io("create trace-id book", &self.dir, source))?;
        }
        let number = writer.next;
        let path = window_path(&self.dir, number);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|source| StorageError::io("create trace-id window", &path, source))?;
        // Taken even if what follows fails: a retry creates the next one.
        writer.next = number + 1;
        file.write_all(MAGIC)
            .and_then(|()| file.sync_data())
            .map_err(|source| StorageError::io("create trace-id window", &path, source))?;
        crate::segment::sync_dir(&path)?;
        writer.current = Some(Current {
            number,
            path,
            file,
            table: HashMap::default(),
            dirty: false,
            used: Instant::now(),
        });
        Ok(())
    }

    /// The ids of window `number`, for a block that refers to it.
    pub fn window(&self, number: u64) -> Result<Arc<TraceWindow>, BlockError> {
        // The window being filled is read from its file too; a cached copy of it serves as
        // long as no ids were added since, and one read while it was being filled serves
        // no more once it is done.
        let filling = {
            let writer = lock(&self.writer);
            writer
                .current
                .as_ref()
                .filter(|c| c.number == number)
                .map(|c| c.table.len())
        };
        let key = (self.id, number);
        {
            let mut cache = lock(&self.cache.entries);
            if let Some(at) = cache.iter().position(|(k, _, _)| *k == key) {
                let hit = cache.remove(at);
                let window = hit.1.clone();
                let serves = match filling {
                    Some(len) => window.len() >= len,
                    None => hit.2,
                };
                if serves {
                    cache.push(hit);
                    return Ok(window);
                }
            }
        }
        let path = window_path(&self.dir, number);
        let mut bytes = Vec::new();
        let read =
            File::open(&path).and_then(|file| file.take(MAX_WINDOW_FILE).read_to_end(&mut bytes));
        match read {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(BlockError::TraceIds);
            }
            Err(_) => return Err(BlockError::Io),
        }
        let window = Arc::new(TraceWindow::parse(&bytes).ok_or(BlockError::TraceIds)?);
        let mut cache = lock(&self.cache.entries);
        cache.retain(|(k, _, _)| *k != key);
        if cache.len() >= CACHED_WINDOWS {
            cache.remove(0);
        }
        cache.push((key, window.clone(), filling.is_none()));
        Ok(window)
    }

    /// Windows numbered at or above this are kept by [`TraceBook::remove_unreferenced`]: read
    /// it before collecting the windows blocks refer to, so that a block built meanwhile
    /// refers to a kept window.
    pub fn floor(&self) -> u64 {
        let writer = lock(&self.writer);
        writer.current.as_ref().map_or(writer.next, |c| c.number)
    }

    /// Deletes windows below `floor` that no block refers to; returns how many. The
    /// highest-numbered window stays, so that a restarted process never gives a number
    /// twice (a block that escaped deletion must not read another window's ids).
    pub fn remove_unreferenced(
        &self,
        floor: u64,
        referenced: &HashSet<u64>,
    ) -> Result<usize, StorageError> {
        let mut removed = 0;
        let numbers = window_numbers(&self.dir)?;
        let highest = numbers.iter().copied().max();
        for number in numbers {
            if number >= floor || referenced.contains(&number) || Some(number) == highest {
                continue;
            }
            let path = window_path(&self.dir, number);
            std::fs::remove_file(&path)
                .map_err(|source| StorageError::io("delete trace-id window", &path, source))?;
            lock(&self.cache.entries).retain(|(k, _, _)| *k != (self.id, number));
            let mut writer = lock(&self.writer);
            writer.unsynced.retain(|(p, _)| *p != path);
            removed += 1;
        }
        if removed > 0 {
            crate::segment::sync_dir(&window_path(&self.dir, 0))?;
        }
        Ok(removed)
    }

    /// Bytes of the window files.
    pub fn bytes(&self) -> u64 {
        window_numbers(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| std::fs::metadata(window_path(&self.dir, n)).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// The numbers of the window files in `dir` (none when it does not exist).
fn window_numbers(dir: &Path) -> Result<Vec<u64>, StorageError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(StorageError::io("list trace-id book", dir, source)),
    };
    let mut numbers = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| StorageError::io("list trace-id book", dir, source))?;
        if let Some(number) = entry.file_name().to_str().and_then(window_number) {
            numbers.push(number);
        }
    }
    Ok(numbers)
}

#[cfg(test)]
mod tests {
    use logcluster_proto::LogEntry;

    use super::*;

    thread_local! {
        /// Makes the next window sync on this thread fail (EIO), as a failed write-back would.
        pub(super) static FAIL_NEXT_SYNC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// A failed window sync is final: the kernel reports a lost write-back once, so a later
    /// sync that succeeds would let a segment be sealed over ids the disk may lack.
    #[test]
    fn trace_id_book_sync_failures_are_final() {
        let dir = tempfile::tempdir().expect("tempdir");
        let failures = prometheus_client::metrics::counter::Counter::default();
        let book =
            TraceBook::open_with(dir.path(), Arc::default(), failures.clone()).expect("open");
        let entry = |n: u128| logcluster_proto::LogEntry {
            trace_id: format!(
                "{:032x}",
                n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
            ),
            ..Default::default()
        };
        book.intern(&[entry(1), entry(2)]).expect("intern");
        book.sync().expect("a sync that works");
        book.intern(&[entry(3)]).expect("intern");
        FAIL_NEXT_SYNC.set(true);
        let error = book.sync().expect_err("the sync fails");
        assert!(
            error.to_string().contains("sync trace-id window"),
            "{error}"
        );
        for _ in 0..2 {
            let error = book.sync().expect_err("and stays failed");
            assert!(error.to_string().contains("earlier fsync"), "{error}");
        }
        book.intern(&[entry(4)]).expect("ids are still given out");
        assert!(book.sync().is_err(), "nor do later ids");
        assert_eq!(failures.get(), 1, "counted once");
        // Maintenance still lets an idle window's lookup table go (without a sync).
        assert!(book.rest_if_idle(std::time::Duration::ZERO).expect("rests"));
    }

    fn entry(trace_id: &str) -> LogEntry {
        LogEntry {
            trace_id: trace_id.to_string(),
            ..Default::default()
        }
    }

    fn id(n: u64) -> String {
        format!(
            "{:032x}",
            logcluster_proto::ids::mix64(n) as u128 | (n as u128) << 64
        )
    }

    #[test]
    fn ids_get_one_ordinal_per_window_and_read_back_after_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = TraceBook::open(dir.path()).expect("open");
        let entries: Vec<LogEntry> = [id(1), id(2), id(1), "not-hex".into(), String::new(), id(3)]
            .iter()
            .map(|t| entry(t))
            .collect();
        let (window, ordinals) = book.intern(&entries).expect("intern").expect("some");
        assert_eq!(ordinals, vec![0, 1, 0, NO_REF, NO_REF, 2]);
        let (again, ordinals) = book.intern(&entries[2..]).expect("intern").expect("some");
        assert_eq!((again, ordinals), (window, vec![0, NO_REF, NO_REF, 2]));
        assert_eq!(book.intern(&[entry("x")]).expect("intern"), None);
        let live = book.window(window).expect("current window");
        assert_eq!(live.get(1), trace_key(&id(2)).as_ref().map(|k| &k[..]));
        assert_eq!(live.get(3), None);
        book.sync().expect("sync");
        drop(book);

        let book = TraceBook::open(dir.path()).expect("reopen");
        let read = book.window(window).expect("window from disk");
        assert_eq!(read.len(), 3);
        for (ordinal, n) in [(0, 1), (1, 2), (2, 3)] {
            assert_eq!(
                read.get(ordinal),
                trace_key(&id(n)).as_ref().map(|k| &k[..])
            );
        }
        // New ids go to a new window after a restart.
        let (next, ordinals) = book
            .intern(&[entry(&id(1))])
            .expect("intern")
            .expect("some");
        assert_eq!((next, ordinals), (window + 1, vec![0]));
        assert_eq!(book.window(window + 7).err(), Some(BlockError::TraceIds));
    }

    #[test]
    fn a_full_window_gives_way_to_the_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = TraceBook::open(dir.path()).expect("open");
        let batch = |from: u64, n: u64| (from..from + n).map(|i| entry(&id(i))).collect::<Vec<_>>();
        let (first, _) = book
            .intern(&batch(0, 60_000))
            .expect("intern")
            .expect("some");
        // 5,000 of these are there already: 5,000 new ones fit.
        let (same, ordinals) = book
            .intern(&batch(55_000, 10_000))
            .expect("intern")
            .expect("some");
        assert_eq!(same, first);
        assert_eq!(ordinals, (55_000..65_000).collect::<Vec<u32>>());
        // 10,000 new ones would overflow the window: the whole block goes to the next one.
        let (second, ordinals) = book
            .intern(&batch(65_000, 10_000))
            .expect("intern")
            .expect("some");
        assert_eq!(second, first + 1);
        assert_eq!(ordinals, (0..10_000).collect::<Vec<u32>>());
        assert_eq!(book.window(first).expect("first").len(), 65_000);
        assert_eq!(book.window(second).expect("second").len(), 10_000);
        // More entries than a window holds keep their ids in the block.
        assert_eq!(
            book.intern(&batch(0, WINDOW_IDS as u64 + 1))
                .expect("intern"),
            None
        );
    }

    /// A copy of the window being filled that a reader cached is not served once the window
    /// is done and holds more (the cluster benchmark's hand-overs read while ingesting).
    #[test]
    fn a_window_read_while_being_filled_is_read_again_once_done() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = TraceBook::open(dir.path()).expect("open");
        let batch = |from: u64, n: u64| (from..from + n).map(|i| entry(&id(i))).collect::<Vec<_>>();
        let (window, _) = book.intern(&batch(0, 10)).expect("intern").expect("some");
        assert_eq!(book.window(window).expect("filling").len(), 10);
        let (same, _) = book.intern(&batch(10, 10)).expect("intern").expect("some");
        assert_eq!(same, window);
        assert_eq!(book.window(window).expect("filling").len(), 20);
        // More ids, nobody reads, then the window is done.
        book.intern(&batch(20, 10)).expect("intern");
        let (next, _) = book
            .intern(&batch(1_000, WINDOW_IDS as u64))
            .expect("intern")
            .expect("some");
        assert_eq!(next, window + 1);
        let done = book.window(window).expect("done");
        assert_eq!(done.len(), 30);
        assert_eq!(done.get(25), trace_key(&id(25)).as_ref().map(|k| &k[..]));
    }

    /// Books sharing a cache keep their windows apart (both tenants' first windows are
    /// number 1), and the cache holds at most its capacity for all of them.
    #[test]
    fn books_sharing_a_cache_read_their_own_windows() {
        let cache = Arc::new(WindowCache::default());
        let dirs: Vec<_> = (0..3)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect();
        let books: Vec<TraceBook> = dirs
            .iter()
            .map(|d| {
                TraceBook::open_with(d.path(), cache.clone(), Default::default()).expect("open")
            })
            .collect();
        for (n, book) in books.iter().enumerate() {
            let (window, _) = book
                .intern(&[entry(&id(100 + n as u64))])
                .expect("intern")
                .expect("some");
            assert_eq!(window, 1);
        }
        for _ in 0..2 {
            for (n, book) in books.iter().enumerate() {
                let read = book.window(1).expect("window");
                assert_eq!(
                    read.get(0),
                    trace_key(&id(100 + n as u64)).as_ref().map(|k| &k[..])
                );
            }
        }
        assert_eq!(lock(&cache.entries).len(), 3);
    }

    /// A quiet book lets go of its window (fsynced, table dropped); its next ids start a
    /// new window, and the old one reads back whole.
    #[test]
    fn an_idle_book_rests_and_starts_a_new_window_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = TraceBook::open(dir.path()).expect("open");
        assert!(
            !book
                .rest_if_idle(std::time::Duration::ZERO)
                .expect("nothing to rest")
        );
        let (window, _) = book
            .intern(&[entry(&id(1))])
            .expect("intern")
            .expect("some");
        assert_eq!(book.window(window).expect("filling").len(), 1);
        book.intern(&[entry(&id(2))]).expect("intern");
        assert!(
            !book
                .rest_if_idle(std::time::Duration::from_secs(3600))
                .expect("busy")
        );
        assert!(book.rest_if_idle(std::time::Duration::ZERO).expect("rests"));
        assert_eq!(book.floor(), window + 1);
        let rested = book.window(window).expect("rested");
        assert_eq!(rested.len(), 2);
        let (next, ordinals) = book
            .intern(&[entry(&id(2))])
            .expect("intern")
            .expect("some");
        assert_eq!((next, ordinals), (window + 1, vec![0]));
    }

    #[test]
    fn a_damaged_chunk_loses_only_its_own_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = TraceBook::open(dir.path()).expect("open");
        let mut window = 0;
        for n in 0..3u64 {
            let entries: Vec<LogEntry> = (0..4).map(|i| entry(&id(10 * n + i))).collect();
            window = book.intern(&entries).expect("intern").expect("some").0;
        }
        book.sync().expect("sync");
        drop(book);
        let path = window_path(&dir.path().join(DIR), window);
        let mut bytes = std::fs::read(&path).expect("read");
        // Second chunk: one flipped id byte; and a torn chunk at the end.
        let second = MAGIC.len() + CHUNK_HEADER + 4 * ID_LEN;
        bytes[second + CHUNK_HEADER + 5] ^= 0x40;
        bytes.extend_from_slice(&CHUNK_MAGIC[..]);
        bytes.extend_from_slice(&[12, 0, 0, 0, 9]);
        std::fs::write(&path, &bytes).expect("write");
        let book = TraceBook::open(dir.path()).expect("reopen");
        let read = book.window(window).expect("window");
        for ordinal in 0..12u32 {
            let want = trace_key(&id(10 * u64::from(ordinal / 4) + u64::from(ordinal % 4)));
            let got = read.get(ordinal);
            if (4..8).contains(&ordinal) {
                assert_eq!(got, None, "ordinal {ordinal}");
            } else {
                assert_eq!(got, want.as_ref().map(|k| &k[..]), "ordinal {ordinal}");
            }
        }
        std::fs::write(&path, b"garbage").expect("write");
        let fresh = TraceBook::open(dir.path()).expect("reopen");
        assert_eq!(fresh.window(window).err(), Some(BlockError::TraceIds));
    }

    #[test]
    fn unreferenced_windows_below_the_floor_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = TraceBook::open(dir.path()).expect("open");
        let mut windows = Vec::new();
        for n in 0..3u64 {
            // Each batch fills most of a window, so each lands in its own.
            let entries: Vec<LogEntry> = (0..40_000).map(|i| entry(&id(n << 32 | i))).collect();
            windows.push(book.intern(&entries).expect("intern").expect("some").0);
        }
        let bytes = book.bytes();
        assert!(bytes > 3 * 40_000 * ID_LEN as u64, "{bytes}");
        let floor = book.floor();
        assert_eq!(floor, windows[2]);
        let referenced: HashSet<u64> = [windows[1]].into();
        assert_eq!(
            book.remove_unreferenced(floor, &referenced)
                .expect("remove"),
            1
        );
        assert_eq!(book.window(windows[0]).err(), Some(BlockError::TraceIds));
        assert!(book.window(windows[1]).is_ok());
        assert_eq!(book.window(windows[2]).expect("current").len(), 40_000);
        assert!(book.bytes() < bytes);
        // After a restart nothing is being filled: every window is below the floor, and
        // the highest stays even when nothing refers to it, so numbers are never reused.
        drop(book);
        let book = TraceBook::open(dir.path()).expect("reopen");
        let floor = book.floor();
        assert_eq!(floor, windows[2] + 1);
        assert_eq!(
            book.remove_unreferenced(floor, &HashSet::new())
                .expect("remove"),
            1
        );
        assert!(book.window(windows[2]).is_ok());
        drop(book);
        let book = TraceBook::open(dir.path()).expect("reopen");
        let (next, _) = book
            .intern(&[entry(&id(7))])
            .expect("intern")
            .expect("some");
        assert_eq!(next, windows[2] + 1);
    }

    #[test]
    fn trace_keys_are_32_lower_case_hex_digits() {
        assert!(trace_key("0af7651916cd43dd8448eb211c80319c").is_some());
        for other in [
            "0AF7651916CD43DD8448EB211C80319C",
            "0af7651916cd43dd",
            "0af7651916cd43dd8448eb211c80319g",
            "0af7651916cd43dd8448eb211c80319c0",
            "",
        ] {
            assert_eq!(trace_key(other), None, "{other}");
        }
    }
}
