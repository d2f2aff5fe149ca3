//! One stream's files and in-memory state: the active WAL, the open segment and its block
//! index, the not-yet-compressed tail, sealed segments and the batch ids used for dedup.
//!
//! All mutation happens under the stream's mutex on blocking threads; queries take a cheap
//! [`StreamSnapshot`] (Arcs only) and read without holding the lock.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use logcluster_proto::{EntryRef, LogEntry};
use tracing::{info, warn};

use crate::segment::{self, BlockBuilder, BlockMeta, OpenSegment, SegmentIndex};
use crate::traces::TraceBook;
use crate::{StorageConfig, StorageError, StorageMetrics, wal};

/// A sealed segment, immutable once built.
pub struct Sealed {
    pub seq: u64,
    pub path: PathBuf,
    pub file: Arc<File>,
    pub blocks: Vec<Arc<BlockMeta>>,
    pub size: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    /// Original batch uids of entries stored in it by repair writes.
    repaired_uids: Vec<u64>,
}

/// What a query needs of a stream, taken under the lock in O(segments + blocks) Arc clones.
pub struct StreamSnapshot {
    pub service: String,
    pub sealed: Vec<Arc<Sealed>>,
    pub open_file: Arc<File>,
    pub open_blocks: Vec<Arc<BlockMeta>>,
    pub tail: Vec<Arc<TailChunk>>,
    /// The tenant's trace-id book, which blocks may refer to.
    pub traces: Arc<TraceBook>,
}

/// A batch part in the tail (not yet in a block): its WAL record, which holds the entries as
/// protobuf, and the entries decoded from it once a read wants them. The entries an append
/// is given are dropped as soon as they are in the tail's block, while they are still in
/// cache; a block is cut once the tail holds `block_target_bytes` of records, so the tail is
/// read far less often than it is appended to.
pub struct TailChunk {
    record: Vec<u8>,
    /// The latest timestamp of the chunk's entries.
    pub max_ts: i64,
    /// `None` when the record does not decode (it was built, or received and decoded, by
    /// this process, so only a bug gets there).
    entries: std::sync::OnceLock<Option<Arc<Vec<LogEntry>>>>,
}

impl TailChunk {
    fn decoded(&self) -> Option<&Arc<Vec<LogEntry>>> {
        self.entries
            .get_or_init(|| wal::record_entries(&self.record).map(Arc::new))
            .as_ref()
    }

    /// The chunk's entries, in the order they were appended, for a read; none (logged) if
    /// the record does not decode. A block is never built without them (see `tail_block`).
    pub fn entries(&self) -> Arc<Vec<LogEntry>> {
        self.decoded().cloned().unwrap_or_else(|| {
            warn!("a tail record does not decode; reads leave its entries out");
            Arc::default()
        })
    }
}

/// Each stream incarnation starts its content version at a distinct base.
static NEXT_GENERATION_BASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A batch part's entries: owned (decoded or made on this node), or views of the bytes a
/// replica received them as (no entry is allocated on that path).
pub(crate) enum Part<'a> {
    Owned(Vec<LogEntry>),
    Views(Vec<EntryRef<'a>>),
}

impl Part<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Part::Owned(entries) => entries.len(),
            Part::Views(views) => views.len(),
        }
    }

    /// The entries, owned (a rare path for views: hand-overs and repairs).
    fn into_owned(self) -> Vec<LogEntry> {
        match self {
            Part::Owned(entries) => entries,
            Part::Views(views) => views.iter().map(EntryRef::to_entry).collect(),
        }
    }

    /// Calls `f` with a view of each entry, in order.
    fn for_each(&self, mut f: impl FnMut(&EntryRef<'_>)) {
        match self {
            Part::Owned(entries) => {
                let mut view = EntryRef::default();
                for entry in entries {
                    view.set(entry);
                    f(&view);
                }
            }
            Part::Views(views) => views.iter().for_each(f),
        }
    }

    fn for_each_id(&self, f: impl FnMut(&str)) {
        match self {
            Part::Owned(entries) => entries.iter().map(|e| e.id.as_str()).for_each(f),
            Part::Views(views) => views.iter().map(|v| v.id).for_each(f),
        }
    }

    /// The part's WAL record, encoded here.
    fn record(&self, batch_uid: u64) -> Vec<u8> {
        match self {
            Part::Owned(entries) => wal::encode_record(batch_uid, entries),
            Part::Views(views) => {
                let entries: Vec<LogEntry> = views.iter().map(EntryRef::to_entry).collect();
                wal::encode_record(batch_uid, &entries)
            }
        }
    }
}

/// Adds a part's entries to a block; returns their latest timestamp.
fn push_part(building: &mut BlockBuilder, part: &Part<'_>) -> i64 {
    let mut max_ts = i64::MIN;
    part.for_each(|entry| {
        max_ts = max_ts.max(entry.timestamp);
        building.push(entry);
    });
    max_ts
}

/// What happened to a batch part offered to a stream.
pub(crate) enum Appended<'a> {
    Stored,
    /// The batch uid was already stored in this stream.
    Duplicate,
    /// The stream was removed (handed over) meanwhile; the entries come back for its new
    /// incarnation (as they came: views keep their received bytes for its WAL record).
    Removed(Part<'a>),
    /// Some entries of this batch arrived earlier by repair: the caller filters out the ids
    /// the stream holds and appends the rest with `filtered` set.
    Repaired(Vec<LogEntry>),
    /// [`Stream::append`] with [`Lock::IfFree`] found the stream busy; the entries come back
    /// untouched.
    Busy(Part<'a>),
}

/// Whether [`Stream::append`] waits for the stream's lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lock {
    Wait,
    /// Answer `Busy` instead of waiting behind another append (the caller appends its other
    /// parts first).
    IfFree,
}

pub struct Stream {
    pub tenant: String,
    pub service: String,
    pub dir: PathBuf,
    /// The device of the stream's directory (its WAL's file system), when known.
    pub(crate) device: Option<u64>,
    inner: Mutex<Inner>,
    /// Changes whenever the stream's content does (append, quarantine, retention):
    /// rebalancing deletes a handed-over stream only if it did not change meanwhile, and
    /// anti-entropy reuses a stream's digests while it is unchanged.
    generation: std::sync::atomic::AtomicU64,
    /// Whether the directory may hold quarantined copies (`*.corrupt`): found at open, or
    /// made since. Maintenance looks for them only in such streams.
    pub(crate) quarantined: std::sync::atomic::AtomicBool,
}

struct Inner {
    seq: u64,
    wal: File,
    wal_path: PathBuf,
    wal_bytes: u64,
    opened_at: Instant,
    /// After a failed block flush or seal, none is tried again before this.
    retry_sealing_at: Option<Instant>,
    /// The last attempt to write the tail as a block failed (a failed rotation alone does
    /// not stop blocks from being written into the open segment).
    flush_failed: bool,
    /// Written (or waiting in `unwritten`) since the last fsync.
    dirty: bool,
    /// Records appended but not yet written to the WAL file: under `FsyncPolicy::Always`
    /// nothing is answered before the commit round writes and syncs them, so a round writes
    /// a stream's records of many batches at once instead of one `write` per batch part.
    /// At most [`UNWRITTEN_LIMIT`] (then written at once). The file holds `wal_bytes` minus
    /// these bytes.
    unwritten: Vec<u8>,
    /// Directories to fsync with the WAL's next sync: a new stream's directory and its WAL's
    /// entry are durable only then (a `syncfs` covers them too).
    unsynced_dirs: Vec<PathBuf>,
    /// Why a sync of the WAL failed, once one has. The pages it covered may be lost while the
    /// kernel counts them written, so a later sync that succeeds proves nothing: every batch
    /// of the stream is answered retry-later from then on, until a restart's recovery checks
    /// the WAL (fsyncgate: errors are reported once).
    sync_failed: Option<String>,
    /// `wal_sync_failures_total`: counts each stream the first time its WAL fails.
    sync_failures: prometheus_client::metrics::counter::Counter,
    open: OpenSegment,
    open_read: Arc<File>,
    open_blocks: Vec<Arc<BlockMeta>>,
    tail: Vec<Arc<TailChunk>>,
    /// The tail's record bytes (`tails.held`), also in the store-wide count that
    /// `storage.tailMemoryBytes` bounds.
    tails: TailAccount,
    /// The tail's block, built as entries arrive (while they are in cache); `None` while
    /// the tail is empty and after a failed flush (see [`Inner::take_building`]).
    building: Option<BlockBuilder>,
    uids_current: HashSet<u64>,
    uids_recent: VecDeque<(u64, HashSet<u64>)>,
    sealed: Vec<Arc<Sealed>>,
    /// Set (under this lock) when rebalancing removes the stream: later appends must go to
    /// a new incarnation, never into the deleted files.
    removed: bool,
    /// Original batch uids of entries stored by repair writes in the open segment, and in
    /// the whole stream (see `SegmentIndex::repaired_uids`).
    repaired_current: HashSet<u64>,
    repaired: HashSet<u64>,
    /// The tenant's trace-id book.
    traces: Arc<TraceBook>,
}

fn wal_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("wal-{seq:016}.log"))
}
fn open_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("seg-{seq:016}.open"))
}
/// A stream's tail in the store-wide gauges `StorageMetrics::tail_bytes` and `tail_streams`:
/// every stream's tail waits in memory for its block, so together they grow with the number
/// of streams (tenant × service) unless `storage.tailMemoryBytes` bounds them.
struct TailAccount {
    bytes: prometheus_client::metrics::gauge::Gauge,
    streams: prometheus_client::metrics::gauge::Gauge,
    flushes: prometheus_client::metrics::counter::Counter,
    /// This tail's record bytes.
    held: usize,
}

impl TailAccount {
    fn new(metrics: &StorageMetrics) -> TailAccount {
        TailAccount {
            bytes: metrics.tail_bytes.clone(),
            streams: metrics.tail_streams.clone(),
            flushes: metrics.memory_flushes.clone(),
            held: 0,
        }
    }

    /// This tail now holds `held` bytes.
    fn set(&mut self, held: usize) {
        let (before, after) = (self.held as i64, held as i64);
        self.bytes.inc_by(after - before);
        match (before == 0, after == 0) {
            (true, false) => {
                self.streams.inc();
            }
            (false, true) => {
                self.streams.dec();
            }
            _ => {}
        }
        self.held = held;
    }

    /// Whether this tail should become a block now to bring the tails back under `budget`:
    /// together they hold more, and this one at least its fair share of the budget (so
    /// tails below it hold at most the budget together, and blocks stay as large as the
    /// budget allows; a tail above it that no longer grows waits for `Store::maintain`).
    fn over_budget(&self, budget: usize) -> bool {
        let total = usize::try_from(self.bytes.get()).unwrap_or(0);
        let streams = usize::try_from(self.streams.get()).unwrap_or(0).max(1);
        self.held >= MIN_EARLY_BLOCK.min(budget / 64)
            && total > budget
            && self.held.saturating_mul(streams) >= budget
    }
}

impl Drop for TailAccount {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// The smallest tail cut early for the memory budget (or a 64th of the budget, if less): each
/// block costs an index entry (time range, filters, summaries) and compresses worse the
/// smaller it is, so with very many streams the tails may hold up to this much each, above
/// `storage.tailMemoryBytes`.
const MIN_EARLY_BLOCK: usize = 16 * 1024;

/// How long after a failed block flush or seal the next one is tried.
const SEAL_RETRY: Duration = Duration::from_secs(1);

/// The most record bytes a stream's tail holds while its blocks cannot be written (at most
/// eight blocks' worth): past it, batch parts are refused until a flush succeeds. The tail
/// lives in memory and becomes one block, which must stay far under the block limit.
fn tail_limit(config: &StorageConfig) -> usize {
    config
        .block_target_bytes
        .saturating_mul(8)
        .min(segment::MAX_BLOCK_LEN / 2)
}

fn sealed_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("seg-{seq:016}.seg"))
}
fn parse_seq(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

impl Stream {
    /// Holds the stream's lock (a test standing for another batch's append).
    #[cfg(test)]
    pub(crate) fn hold(&self) -> MutexGuard<'_, impl Sized> {
        self.lock()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock would be a bug; the data on disk stays consistent
        // (WAL first), so continuing with the inner value is the safest choice.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens (recovering) or creates the stream in `dir`.
    pub fn open(
        tenant: &str,
        service: &str,
        dir: PathBuf,
        config: &StorageConfig,
        metrics: &StorageMetrics,
        traces: Arc<TraceBook>,
    ) -> Result<Stream, StorageError> {
        // A new stream's directories, and its WAL's entry in them, are made durable by the
        // first sync of its WAL (`Inner::unsynced_dirs`), not here: nothing of it counts as
        // durable before, and creating a stream holds every append of the store up.
        let mut unsynced_dirs = logcluster_common::durable::create_dir_all_unsynced(&dir)
            .map_err(|source| StorageError::io("create stream dir", &dir, source))?;
        if !unsynced_dirs.is_empty() {
            // The tenant's directory may be new too, made by another of its streams whose
            // first sync has not come yet (or never will: its batch refused): its entry, and
            // its own, are synced with this stream's too.
            let tenant = dir.parent();
            for ancestor in [tenant, tenant.and_then(Path::parent)]
                .into_iter()
                .flatten()
            {
                if !unsynced_dirs.iter().any(|d| d == ancestor) {
                    unsynced_dirs.insert(0, ancestor.to_path_buf());
                }
            }
        }
        let mut sealed_seqs = Vec::new();
        let mut wal_seqs = Vec::new();
        let mut has_quarantined = false;
        let entries = std::fs::read_dir(&dir)
            .map_err(|source| StorageError::io("list stream dir", &dir, source))?;
        for entry in entries {
            let entry =
                entry.map_err(|source| StorageError::io("list stream dir", &dir, source))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(seq) = parse_seq(&name, "seg-", ".seg") {
                sealed_seqs.push(seq);
            } else if let Some(seq) = parse_seq(&name, "wal-", ".log") {
                wal_seqs.push(seq);
            } else if name.ends_with(".open") || name.ends_with(".tmp") {
                // Rebuilt from the WAL below.
                let _ = std::fs::remove_file(entry.path());
            } else if name.ends_with(".corrupt") {
                has_quarantined = true;
            }
        }
        sealed_seqs.sort_unstable();
        wal_seqs.sort_unstable();
        let mut sealed = Vec::new();
        let mut uids_recent = VecDeque::new();
        let mut repaired: HashSet<u64> = HashSet::new();
        let mut quarantined = Vec::new();
        for seq in &sealed_seqs {
            let path = sealed_path(&dir, *seq);
            match segment::open_sealed(&path) {
                Ok((file, index, size)) => {
                    repaired.extend(index.repaired_uids.iter().copied());
                    push_recent(
                        &mut uids_recent,
                        *seq,
                        index.batch_uids.iter().copied().collect(),
                        config.dedup_segments,
                    );
                    sealed.push(Arc::new(sealed_from(*seq, path, file, index, size)));
                }
                Err(error @ StorageError::CorruptSegment { .. }) => {
                    warn!(%error, path = %path.display(), "quarantining corrupt segment");
                    metrics.corrupt_segments.inc();
                    has_quarantined = true;
                    match std::fs::rename(&path, path.with_extension("seg.corrupt")) {
                        Ok(()) => quarantined.push(*seq),
                        // Left in place and skipped; a WAL of it is deleted below as for any
                        // sealed segment (it could not be sealed again under the taken name).
                        Err(error) => {
                            warn!(%error, path = %path.display(), "cannot rename a corrupt segment")
                        }
                    }
                }
                // A read error (EIO, the file-descriptor limit) says nothing about the
                // segment's bytes: the stream does not open, rather than lose the segment.
                Err(error) => return Err(error),
            }
        }
        let next_seq = sealed_seqs.last().copied().unwrap_or(0) + 1;
        // Replay unsealed WALs in order. Older ones (a crash between sealing and deleting)
        // are already in their segment when that exists; otherwise they are rebuilt.
        let mut replayed: Vec<(u64, wal::Replay)> = Vec::new();
        for seq in wal_seqs {
            let path = wal_path(&dir, seq);
            // A WAL whose segment was sealed is deleted, unless that segment was just
            // quarantined: then the WAL is the good copy, and it is replayed.
            if sealed_seqs.contains(&seq) && !quarantined.contains(&seq) {
                std::fs::remove_file(&path)
                    .map_err(|source| StorageError::io("remove sealed wal", &path, source))?;
                continue;
            }
            let replay = wal::replay(&path)?;
            if replay.truncated_bytes > 0 {
                warn!(path = %path.display(), bytes = replay.truncated_bytes, "truncated torn wal tail");
                metrics.wal_truncated_bytes.inc_by(replay.truncated_bytes);
            }
            if replay.corrupt_records > 0 {
                tracing::error!(path = %path.display(), records = replay.corrupt_records, "damaged WAL records skipped (their batches are lost on this node; in a cluster anti-entropy restores them); the records after them were kept");
                metrics
                    .wal_corrupt_records
                    .inc_by(replay.corrupt_records as u64);
            }
            replayed.push((seq, replay));
        }
        let active_seq = next_seq;
        let (seq, wal_file, wal_bytes) = match replayed.last() {
            Some((seq, replay)) => {
                let path = wal_path(&dir, *seq);
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(|source| StorageError::io("open wal", &path, source))?;
                (*seq, file, replay.valid_len)
            }
            None => {
                let path = wal_path(&dir, active_seq);
                let file = wal::create_unsynced(&path)?;
                unsynced_dirs.push(dir.clone());
                (active_seq, file, wal::WAL_MAGIC.len() as u64)
            }
        };
        let open = OpenSegment::create(open_path(&dir, seq))?;
        let open_read = open.file.clone();
        let mut inner = Inner {
            seq,
            wal: wal_file,
            wal_path: wal_path(&dir, seq),
            wal_bytes,
            opened_at: Instant::now(),
            retry_sealing_at: None,
            flush_failed: false,
            dirty: false,
            unwritten: Vec::new(),
            unsynced_dirs,
            sync_failed: None,
            sync_failures: metrics.wal_sync_failures.clone(),
            open,
            open_read,
            open_blocks: Vec::new(),
            tail: Vec::new(),
            tails: TailAccount::new(metrics),
            building: None,
            uids_current: HashSet::new(),
            uids_recent,
            sealed,
            removed: false,
            repaired_current: HashSet::new(),
            repaired,
            traces,
        };
        let stream_dir = dir.clone();
        let count = replayed.len();
        for (i, (old_seq, replay)) in replayed.into_iter().enumerate() {
            for record in replay.records {
                inner.replay_record(record, config)?;
            }
            if i + 1 < count {
                // An older unsealed WAL: seal what it held into its own segment number.
                inner.seal_into(
                    &stream_dir,
                    old_seq,
                    tenant,
                    service,
                    config,
                    metrics,
                    false,
                )?;
            }
        }
        if count > 0 {
            info!(tenant, service, seq, "recovered stream from wal");
        }
        let device = std::fs::metadata(&dir)
            .ok()
            .map(|meta| std::os::unix::fs::MetadataExt::dev(&meta));
        Ok(Stream {
            tenant: tenant.to_string(),
            service: service.to_string(),
            dir,
            device,
            inner: Mutex::new(inner),
            // Distinct across incarnations of the same stream (a stream removed by a
            // hand-over and created again), so cached digests never match by accident.
            generation: std::sync::atomic::AtomicU64::new(
                NEXT_GENERATION_BASE.fetch_add(1 << 40, std::sync::atomic::Ordering::Relaxed),
            ),
            quarantined: std::sync::atomic::AtomicBool::new(has_quarantined),
        })
    }

    fn bump(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Marks the stream removed if its content version is still `generation`, atomically
    /// with respect to appends (both under the stream lock).
    pub fn mark_removed_if(&self, generation: u64) -> bool {
        let mut inner = self.lock();
        if self.generation() != generation {
            return false;
        }
        inner.removed = true;
        true
    }

    /// The stream's generation when it holds nothing at all: no sealed segment, no record in
    /// its WAL (written or waiting), no block, no tail. Such a stream (its segments all gone
    /// to retention, or its only batch refused) can be removed with
    /// [`Stream::mark_removed_if`].
    pub fn empty_generation(&self) -> Option<u64> {
        let inner = self.lock();
        let empty = inner.sealed.is_empty()
            && inner.wal_bytes <= wal::WAL_MAGIC.len() as u64
            && inner.unwritten.is_empty()
            && !inner.dirty
            && inner.open_blocks.is_empty()
            && inner.tail.is_empty()
            && !inner.removed;
        empty.then(|| self.generation())
    }

    /// The content version (see the field).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether this stream stored batch `batch_uid` (within the de-duplication horizon).
    pub fn has_batch(&self, batch_uid: u64) -> bool {
        self.lock().holds_batch(batch_uid)
    }

    /// Writes a batch part to the WAL (not yet fsynced) and makes it visible to queries.
    /// `Duplicate` when the batch id was already stored in this stream. `received`: the
    /// entries' bytes as a replica received them and their positions there, for the WAL
    /// record. Once the record is written the part is `Stored`, even if building a block or
    /// sealing the segment then fails (counted and retried, see `sealing_outcome`). With
    /// [`Lock::IfFree`], `Busy` with the entries when another append holds the stream.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn append<'a>(
        &self,
        lock: Lock,
        batch_uid: u64,
        entries: Part<'a>,
        config: &StorageConfig,
        metrics: &StorageMetrics,
        filtered: bool,
        received: Option<(&wal::EntryBodies<'_>, &[u32])>,
    ) -> Result<Appended<'a>, StorageError> {
        let mut inner = match lock {
            Lock::Wait => self.lock(),
            Lock::IfFree => match self.inner.try_lock() {
                Ok(inner) => inner,
                Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return Ok(Appended::Busy(entries)),
            },
        };
        if inner.removed {
            return Ok(Appended::Removed(entries));
        }
        // Nothing more goes into a WAL whose sync failed (its batches could never be
        // answered): the batch is answered retry-later at once.
        inner.refuse_after_failed_sync()?;
        if inner.holds_batch(batch_uid) {
            metrics.duplicate_batches.inc();
            return Ok(Appended::Duplicate);
        }
        if !filtered && inner.repaired.contains(&batch_uid) {
            return Ok(Appended::Repaired(entries.into_owned()));
        }
        // The record from the entries' bytes as received (a replica write: `received` holds
        // them and the entries' positions there), or encoded here.
        let record = received
            .and_then(|(bodies, positions)| bodies.record(batch_uid, positions))
            .unwrap_or_else(|| entries.record(batch_uid));
        // Replay (and the tail's reads) would refuse a longer record as corrupt; refused
        // first, for good, whatever else is wrong.
        if record.len() > wal::MAX_RECORD_LEN + 8 {
            return Err(StorageError::RecordTooLarge {
                bytes: record.len() - 8,
            });
        }
        // Blocks are failing to be written (disk errors, the fd limit) and the tail, which
        // waits in memory for them, is full: try once more when due, else refuse the part
        // (retry later) rather than grow the tail without bound.
        if inner.flush_failed && inner.tails.held + record.len() > tail_limit(config) {
            let flushed = inner.sealing_due() && {
                let result = inner.flush_tail(config);
                self.sealing_outcome(&mut inner, result, metrics).is_ok()
            };
            if !flushed {
                metrics.backlog_refusals.inc();
                return Err(StorageError::Backlog {
                    tail_bytes: inner.tails.held,
                });
            }
        }
        // Acknowledged only after a commit round (which writes what waits): the record
        // waits with the stream's others, up to a limit. Acknowledged after the write (an
        // fsync interval): written now.
        let wait = matches!(config.fsync, crate::FsyncPolicy::Always)
            && inner.unwritten.len() + record.len() <= UNWRITTEN_LIMIT;
        if wait {
            inner.unwritten.extend_from_slice(&record);
        } else {
            // Those waiting first, then this one from its own buffer; either failing, this
            // part is not appended (those waiting keep waiting).
            inner.write_unwritten()?;
            inner.write_record(&record)?;
        }
        inner.wal_bytes += record.len() as u64;
        inner.dirty = true;
        inner.uids_current.insert(batch_uid);
        inner.note_repaired(batch_uid, &entries);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        metrics.appended_entries.inc_by(entries.len() as u64);
        metrics.appended_bytes.inc_by(record.len() as u64);
        // The batch is in the WAL: it is acknowledged once that is fsynced, whatever happens
        // to the block and segment work below. That work, when it fails (disk full, the fd
        // limit), is counted, logged and tried again a little later, not on every append.
        let retry_due = inner.sealing_due();
        let flush = inner.may_cut_blocks();
        let sealed = inner
            .push_tail(entries, record, config, flush)
            .and_then(|()| {
                if retry_due && inner.wal_bytes >= config.segment_max_bytes {
                    self.rotate_locked(&mut inner, config, metrics)
                } else {
                    Ok(())
                }
            });
        // Counted and logged there; the append stands. Within a rotation's back-off only a
        // failure is news (a success must not end the back-off the rotation is in).
        if retry_due || sealed.is_err() {
            let _ = self.sealing_outcome(&mut inner, sealed, metrics);
        }
        Ok(Appended::Stored)
    }

    /// Records how block or segment work went: a failure is counted and logged (the
    /// batches stay in the WAL) and none is tried again for [`SEAL_RETRY`].
    fn sealing_outcome(
        &self,
        inner: &mut Inner,
        result: Result<(), StorageError>,
        metrics: &StorageMetrics,
    ) -> Result<(), StorageError> {
        match &result {
            Ok(()) => inner.retry_sealing_at = None,
            Err(error) => {
                metrics.seal_failures.inc();
                inner.retry_sealing_at = Some(Instant::now() + SEAL_RETRY);
                if matches!(error, StorageError::SealRefused(_)) {
                    // Logged once where the sync failed; the probes and metrics say so since.
                    tracing::debug!(%error, tenant = %self.tenant, service = %self.service, "segment not sealed");
                } else {
                    warn!(%error, tenant = %self.tenant, service = %self.service, "block or segment not written; the WAL holds the batches, retrying in a second");
                }
            }
        }
        result
    }

    /// A handle to the active WAL for fsync outside the lock, if anything is unsynced; the
    /// WAL counts as synced from then on (the caller marks it failed if the fsync fails).
    /// An error once a sync of the WAL has failed.
    pub fn take_dirty_wal(&self) -> Result<Option<File>, StorageError> {
        let mut inner = self.lock();
        inner.refuse_after_failed_sync()?;
        if !inner.dirty {
            return Ok(None);
        }
        inner.write_unwritten()?;
        inner.sync_dirs()?;
        let file = inner
            .wal
            .try_clone()
            .map_err(|source| StorageError::io("clone wal handle", &inner.wal_path, source))?;
        inner.dirty = false;
        Ok(Some(file))
    }

    /// An error if a sync of the WAL failed meanwhile. A round fsyncs a duplicate of the WAL's
    /// handle, which shares the kernel's record of write-back errors with the handle a seal
    /// syncs: an error is reported to one of the two fsyncs only, so a round's fsync that
    /// succeeds proves nothing if the other one failed.
    pub fn check_synced(&self) -> Result<(), StorageError> {
        self.lock().refuse_after_failed_sync()
    }

    /// Whether anything was unsynced ([`Stream::take_dirty_wal`] for a sync of the whole
    /// file system, which needs no handle of the WAL).
    pub fn take_dirty(&self) -> Result<bool, StorageError> {
        let mut inner = self.lock();
        inner.refuse_after_failed_sync()?;
        if inner.dirty {
            inner.write_unwritten()?;
            // The file system's sync covers the directories too.
            inner.unsynced_dirs.clear();
        }
        Ok(std::mem::replace(&mut inner.dirty, false))
    }

    /// Records that a sync covering the WAL failed (see `Inner::sync_failed`).
    pub fn mark_sync_failed(&self, error: &str) {
        self.lock().fail_sync(error.to_string());
    }

    /// Record bytes of the tail, not yet in a block.
    pub fn tail_bytes(&self) -> usize {
        self.lock().tails.held
    }

    /// Cuts the tail into a block now if the tails together hold more than
    /// `storage.tailMemoryBytes` and this one at least its fair share; appends do this
    /// themselves, so this is for streams that went idle. Whether it did.
    pub fn relieve_memory(
        &self,
        config: &StorageConfig,
        metrics: &StorageMetrics,
    ) -> Result<bool, StorageError> {
        let mut inner = self.lock();
        if inner.removed
            || !inner.may_cut_blocks()
            || !inner.tails.over_budget(config.tail_memory_bytes)
        {
            return Ok(false);
        }
        // Only a failure is news here: a success must not end a rotation's back-off.
        if let Err(error) = inner.flush_tail(config) {
            return self
                .sealing_outcome(&mut inner, Err(error), metrics)
                .map(|()| false);
        }
        inner.tails.flushes.inc();
        Ok(true)
    }

    /// Seals the active segment if it is non-empty and older than the configured age.
    pub fn rotate_if_old(
        &self,
        config: &StorageConfig,
        metrics: &StorageMetrics,
    ) -> Result<bool, StorageError> {
        let mut inner = self.lock();
        // A removed stream is not sealed: its paths may be a new incarnation's.
        if !inner.removed
            && inner.wal_bytes > wal::WAL_MAGIC.len() as u64
            && inner.opened_at.elapsed() >= config.segment_max_age
            && inner.sealing_due()
        {
            let sealed = self.rotate_locked(&mut inner, config, metrics);
            self.sealing_outcome(&mut inner, sealed, metrics)?;
            return Ok(true);
        }
        Ok(false)
    }

    fn rotate_locked(
        &self,
        inner: &mut Inner,
        config: &StorageConfig,
        metrics: &StorageMetrics,
    ) -> Result<(), StorageError> {
        let seq = inner.seq;
        inner.seal_into(
            &self.dir,
            seq,
            &self.tenant,
            &self.service,
            config,
            metrics,
            true,
        )
    }

    pub fn snapshot(&self) -> StreamSnapshot {
        let inner = self.lock();
        StreamSnapshot {
            service: self.service.clone(),
            sealed: inner.sealed.clone(),
            open_file: inner.open_read.clone(),
            open_blocks: inner.open_blocks.clone(),
            tail: inner.tail.clone(),
            traces: inner.traces.clone(),
        }
    }

    /// Adds the trace-id book windows this stream's blocks refer to.
    pub fn trace_windows(&self, out: &mut HashSet<u64>) {
        let inner = self.lock();
        let sealed = inner.sealed.iter().flat_map(|s| s.blocks.iter());
        for block in sealed.chain(inner.open_blocks.iter()) {
            if block.trace_window != 0 {
                out.insert(block.trace_window);
            }
        }
    }

    /// Sealed segments (for retention and stats).
    pub fn sealed(&self) -> Vec<Arc<Sealed>> {
        self.lock().sealed.clone()
    }

    /// Bytes on disk of the active WAL and open segment.
    pub fn active_bytes(&self) -> u64 {
        let inner = self.lock();
        inner.wal_bytes + inner.open.len
    }

    /// Removes a sealed segment from the stream and deletes its file.
    pub fn delete_sealed(&self, seq: u64) -> Result<bool, StorageError> {
        let Some(segment) = self.take_sealed(seq) else {
            return Ok(false);
        };
        std::fs::remove_file(&segment.path)
            .map_err(|source| StorageError::io("delete segment", &segment.path, source))?;
        segment::sync_dir(&segment.path)?;
        Ok(true)
    }

    /// Removes a sealed segment from the stream's read set (its file stays for the caller).
    fn take_sealed(&self, seq: u64) -> Option<Arc<Sealed>> {
        let mut inner = self.lock();
        // A removed stream's files are not at its paths any more (a new incarnation's may
        // be): nothing is deleted or quarantined through it.
        if inner.removed {
            return None;
        }
        let pos = inner.sealed.iter().position(|s| s.seq == seq)?;
        let segment = inner.sealed.remove(pos);
        // Its batches are no longer held here: a retry, hint or repair of one is stored
        // again, not answered as a duplicate (pruned under the same lock, so no append sees
        // the segment gone but its batches still known).
        inner.uids_recent.retain(|(s, _)| *s != seq);
        // Nor are the batches repaired into it: the stream's set of them would otherwise only
        // ever grow.
        if !segment.repaired_uids.is_empty() {
            let inner = &mut *inner;
            inner.repaired = inner
                .sealed
                .iter()
                .flat_map(|s| s.repaired_uids.iter().copied())
                .chain(inner.repaired_current.iter().copied())
                .collect();
        }
        drop(inner);
        self.bump();
        Some(segment)
    }

    /// Takes a sealed segment with a corrupt block out of service: it is renamed
    /// `*.corrupt` (kept for inspection) and no longer read; replicas restore its entries.
    pub fn quarantine_sealed(&self, seq: u64) -> Result<bool, StorageError> {
        let Some(segment) = self.take_sealed(seq) else {
            return Ok(false);
        };
        let target = segment.path.with_extension("corrupt");
        self.quarantined
            .store(true, std::sync::atomic::Ordering::Relaxed);
        std::fs::rename(&segment.path, &target)
            .map_err(|source| StorageError::io("quarantine segment", &segment.path, source))?;
        segment::sync_dir(&target)?;
        Ok(true)
    }

    /// Fsyncs the active WAL (shutdown path).
    pub fn sync(&self) -> Result<(), StorageError> {
        self.lock().sync_wal()
    }
}

fn push_recent(
    recent: &mut VecDeque<(u64, HashSet<u64>)>,
    seq: u64,
    uids: HashSet<u64>,
    keep: usize,
) {
    recent.push_back((seq, uids));
    while recent.len() > keep {
        recent.pop_front();
    }
}

fn sealed_from(seq: u64, path: PathBuf, file: File, index: SegmentIndex, size: u64) -> Sealed {
    Sealed {
        seq,
        path,
        file: Arc::new(file),
        min_ts: index.min_ts(),
        max_ts: index.max_ts(),
        blocks: index.blocks.into_iter().map(Arc::new).collect(),
        size,
        repaired_uids: index.repaired_uids,
    }
}

/// Bytes of records a stream keeps for its next commit round before writing them at once.
const UNWRITTEN_LIMIT: usize = 64 * 1024;

impl Drop for Inner {
    fn drop(&mut self) {
        // Records that no round wrote yet (none of them was answered): written for a later
        // open of the stream, as they would have been; not into a WAL that may end in a torn
        // record, nor into a handed-over stream's.
        if self.sync_failed.is_none() && !self.removed {
            let _ = self.write_unwritten();
        }
    }
}

/// Writes WAL bytes (tests can make a write fail part-way, as a full disk does).
fn write_wal(file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
    #[cfg(test)]
    if let Some(written) = tests::FAIL_WRITE_AFTER.take() {
        file.write_all(&bytes[..written.min(bytes.len())])?;
        return Err(std::io::Error::from_raw_os_error(28));
    }
    file.write_all(bytes)
}

impl Inner {
    /// Writes the records waiting for the WAL file, in one `write`. On failure (disk full,
    /// an I/O error) the file is cut back to the records before them and they keep waiting;
    /// if it cannot be cut back, a torn record could hide every later one from replay, so the
    /// stream fails as after a failed sync.
    fn write_unwritten(&mut self) -> Result<(), StorageError> {
        if self.unwritten.is_empty() {
            return Ok(());
        }
        // What the file holds: `wal_bytes` counts the waiting records too.
        let written = self.wal_bytes - self.unwritten.len() as u64;
        let bytes = std::mem::take(&mut self.unwritten);
        match self.write_at_end(&bytes, written) {
            // Its memory goes too: a stream holds none between rounds.
            Ok(()) => Ok(()),
            Err(error) => {
                self.unwritten = bytes;
                Err(error)
            }
        }
    }

    /// Writes one record now (nothing waits: the file holds `wal_bytes`).
    fn write_record(&mut self, record: &[u8]) -> Result<(), StorageError> {
        debug_assert!(self.unwritten.is_empty());
        self.write_at_end(record, self.wal_bytes)
    }

    /// Appends `bytes` to the WAL file, which holds `written` bytes; on failure cuts it back
    /// to them, and fails the stream if it cannot (see `write_unwritten`).
    fn write_at_end(&mut self, bytes: &[u8], written: u64) -> Result<(), StorageError> {
        write_wal(&mut self.wal, bytes).map_err(|source| {
            let error = StorageError::io("append to wal", &self.wal_path, source);
            if let Err(cut) = self.wal.set_len(written) {
                let cut = StorageError::io("cut a torn wal record", &self.wal_path, cut);
                self.fail_sync(logcluster_common::error_chain(&cut));
            }
            error
        })
    }

    /// Fsyncs the active WAL under the lock.
    fn sync_wal(&mut self) -> Result<(), StorageError> {
        self.refuse_after_failed_sync()?;
        self.write_unwritten()?;
        self.sync_dirs()?;
        self.dirty = false;
        self.wal.sync_data().map_err(|source| {
            let error = StorageError::io("sync wal", &self.wal_path, source);
            self.fail_sync(logcluster_common::error_chain(&error));
            error
        })
    }

    /// Fsyncs the directories a new stream's files need (see `unsynced_dirs`); a failure is
    /// final, as a failed WAL sync is.
    fn sync_dirs(&mut self) -> Result<(), StorageError> {
        if self.removed {
            // Renamed away by a removal (its content was handed over first, or it held
            // nothing): there is no directory entry of it left to make durable.
            self.unsynced_dirs.clear();
            return Ok(());
        }
        while let Some(dir) = self.unsynced_dirs.last() {
            if let Err(source) = logcluster_common::durable::sync_dir(dir) {
                let error = StorageError::io("sync directory", dir, source);
                self.fail_sync(logcluster_common::error_chain(&error));
                return Err(error);
            }
            self.unsynced_dirs.pop();
        }
        Ok(())
    }

    /// Fails the stream for good (see `sync_failed`): counted and logged the first time.
    fn fail_sync(&mut self, error: String) {
        if self.sync_failed.is_some() {
            return;
        }
        tracing::error!(
            wal = %self.wal_path.display(),
            %error,
            "a WAL of this stream may have lost written pages: its batches are answered retry-later until the node restarts"
        );
        self.sync_failures.inc();
        self.sync_failed = Some(error);
        // A restarted node's recovery must read the WAL from the device: replaying records
        // only the page cache kept, it would take a retry of their batch for a duplicate and
        // append after a hole that the device's next read cuts the WAL short at.
        logcluster_common::durable::forget_cached_pages(&self.wal, &self.wal_path);
    }

    /// An error once a sync of the WAL has failed.
    fn refuse_after_failed_sync(&self) -> Result<(), StorageError> {
        match &self.sync_failed {
            None => Ok(()),
            Some(error) => Err(StorageError::Fsync(format!(
                "an earlier sync of this stream's WAL failed ({error}); its batches are answered retry-later until the node restarts and recovery checks the WAL"
            ))),
        }
    }

    /// Whether block and segment work may be tried (none for a while after a failure).
    fn sealing_due(&self) -> bool {
        self.retry_sealing_at.is_none_or(|at| Instant::now() >= at)
    }

    /// Whether the tail may be cut into blocks now: during a rotation's back-off too, unless
    /// writing blocks is what fails (then only when the retry is due).
    fn may_cut_blocks(&self) -> bool {
        self.sealing_due() || !self.flush_failed
    }

    /// Whether batch `batch_uid` is in the open segment or a recent sealed one.
    fn holds_batch(&self, batch_uid: u64) -> bool {
        self.uids_current.contains(&batch_uid)
            || self.uids_recent.iter().any(|(_, s)| s.contains(&batch_uid))
    }

    /// Records the original batch uids of entries written under another uid (repairs).
    fn note_repaired(&mut self, record_uid: u64, entries: &Part<'_>) {
        // `{record_uid:016x}-`, without formatting a string for every part.
        let mut prefix = Vec::with_capacity(17);
        logcluster_proto::ids::push_hex(&mut prefix, &record_uid.to_be_bytes());
        prefix.push(b'-');
        entries.for_each_id(|id| {
            if id.as_bytes().starts_with(&prefix) {
                return;
            }
            if let Some(uid) = crate::store::batch_uid_of(id) {
                self.repaired.insert(uid);
                self.repaired_current.insert(uid);
            }
        });
    }

    /// The tail's block under construction, taken out; built again from the whole tail
    /// when there is none (a new tail, or after a failed flush). A tail record that does not
    /// decode is an error: the block is not built without its entries.
    fn take_building(&mut self, config: &StorageConfig) -> Result<BlockBuilder, StorageError> {
        if let Some(building) = self.building.take() {
            return Ok(building);
        }
        let mut block = BlockBuilder::new(config.block_format);
        for chunk in &self.tail {
            if let Some((_, views)) = wal::record_views(&chunk.record) {
                views.iter().for_each(|view| block.push(view));
                continue;
            }
            let entries = chunk
                .decoded()
                .ok_or_else(|| StorageError::Encode("a tail record does not decode".to_string()))?;
            block.push_entries(entries);
        }
        Ok(block)
    }

    /// Adds a replayed WAL record to the tail: its entries are read as views of its own bytes
    /// (prost-decoded only when views do not read them).
    fn replay_record(
        &mut self,
        record: wal::Record,
        config: &StorageConfig,
    ) -> Result<(), StorageError> {
        self.uids_current.insert(record.batch_uid);
        if let Some(entries) = record.entries {
            let part = Part::Owned(entries);
            self.note_repaired(record.batch_uid, &part);
            return self.push_tail(part, record.bytes, config, true);
        }
        let mut building = self.take_building(config)?;
        let max_ts = {
            let (_, views) = wal::record_views(&record.bytes).ok_or_else(|| {
                StorageError::Encode("a replayed WAL record does not read".to_string())
            })?;
            let part = Part::Views(views);
            self.note_repaired(record.batch_uid, &part);
            push_part(&mut building, &part)
        };
        self.add_chunk(building, record.bytes, max_ts, config, true)
    }

    /// Adds entries to the tail (they stay there whatever happens) and to its block, then
    /// flushes the tail into a block if it is full and `flush` allows.
    /// `record`: the entries' WAL record.
    fn push_tail(
        &mut self,
        entries: Part<'_>,
        record: Vec<u8>,
        config: &StorageConfig,
        flush: bool,
    ) -> Result<(), StorageError> {
        // Out of `self` while the entries go in: were this interrupted, the next push would
        // build the block again from the tail rather than use one that differs from it.
        let mut building = self.take_building(config)?;
        let max_ts = push_part(&mut building, &entries);
        drop(entries);
        self.add_chunk(building, record, max_ts, config, flush)
    }

    /// Puts the entries' record in the tail and `building` (which holds them) back, then
    /// flushes the tail into a block if it is full and `flush` allows.
    fn add_chunk(
        &mut self,
        building: BlockBuilder,
        record: Vec<u8>,
        max_ts: i64,
        config: &StorageConfig,
        flush: bool,
    ) -> Result<(), StorageError> {
        self.tails.set(self.tails.held + record.len());
        self.tail.push(Arc::new(TailChunk {
            record,
            max_ts,
            entries: std::sync::OnceLock::new(),
        }));
        self.building = Some(building);
        if !flush {
            return Ok(());
        }
        if self.tails.held >= config.block_target_bytes {
            self.flush_tail(config)?;
        } else if self.tails.over_budget(config.tail_memory_bytes) {
            self.flush_tail(config)?;
            self.tails.flushes.inc();
        }
        Ok(())
    }

    /// Compresses the tail into a block of the open segment.
    fn flush_tail(&mut self, config: &StorageConfig) -> Result<(), StorageError> {
        if self.tail.is_empty() {
            return Ok(());
        }
        let built = self
            .take_building(config)?
            .finish(
                config.zstd_level,
                config.shared_trace_ids.then_some(&*self.traces),
            )
            .and_then(|(bytes, mut meta)| {
                meta.offset = self.open.append_block(&bytes)?;
                Ok(meta)
            });
        // On an error the entries stay in the tail (and in the WAL) for the next flush.
        self.flush_failed = built.is_err();
        let meta = built?;
        self.open_blocks.push(Arc::new(meta));
        self.tail.clear();
        self.tails.set(0);
        Ok(())
    }

    /// Seals the open segment as `seg-<seq>` and starts WAL and segment `seq + 1` (when
    /// `start_next`; recovery of an older WAL reuses the current active files instead).
    #[allow(clippy::too_many_arguments)]
    fn seal_into(
        &mut self,
        dir: &Path,
        seq: u64,
        tenant: &str,
        service: &str,
        config: &StorageConfig,
        metrics: &StorageMetrics,
        start_next: bool,
    ) -> Result<(), StorageError> {
        // Refused at once (no block cut, no WAL synced) while a failed sync stands.
        self.open.refuse_after_failed_sync()?;
        self.traces.refuse_after_failed_sync()?;
        self.flush_tail(config)?;
        let next = self.seq.max(seq) + 1;
        let index = SegmentIndex {
            tenant: tenant.to_string(),
            service: service.to_string(),
            seq,
            blocks: self.open_blocks.iter().map(|b| (**b).clone()).collect(),
            batch_uids: self.uids_current.iter().copied().collect(),
            repaired_uids: self.repaired_current.iter().copied().collect(),
        };
        // What the next segment needs is made first, and the stream changes only once the
        // seal succeeded: a failure (disk full, the fd limit) leaves it as it was, to rotate
        // again on a later append, instead of sealing this index over another file later.
        let start_wal = start_next || self.seq == seq;
        let sealed_at = sealed_path(dir, seq);
        // The sealed WAL's records are durable before the seal too: if the rename does not
        // survive a crash, recovery rebuilds the segment from this WAL.
        if self.dirty {
            self.sync_wal()?;
        }
        let prepared = (|| -> Result<_, StorageError> {
            // The trace ids the blocks refer to are durable before the segment is, and the
            // segment before anything of the next one is made (the first write-back of their
            // pages is the one that can fail; a failure here is final, see `sync_failed`).
            self.traces.sync()?;
            let size = self.open.write_index(&index).inspect_err(|_| {
                if let Some(error) = &self.open.sync_failed {
                    metrics.segment_sync_failures.inc();
                    tracing::error!(segment = %self.open.path.display(), %error, "an open segment may have lost written pages: it is not sealed, and its WAL stays, until the node restarts");
                }
            })?;
            let new_open = OpenSegment::create(open_path(dir, next))?;
            let new_read = new_open.file.clone();
            let new_wal = if start_wal {
                let path = wal_path(dir, next);
                let file = wal::create(&path)?;
                // Durable before anything is written to it: the directory fsync after the
                // seal below may fail.
                segment::sync_dir(&path)?;
                Some((file, path))
            } else {
                None
            };
            let sealing = self.open.rename(&sealed_at, size)?;
            Ok((new_open, new_read, new_wal, sealing))
        })();
        let (new_open, new_read, new_wal, sealing) = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                let _ = std::fs::remove_file(open_path(dir, next));
                if start_wal {
                    let _ = std::fs::remove_file(wal_path(dir, next));
                }
                return Err(error);
            }
        };
        // Sealed: from here on the stream moves to the next sequence whatever happens.
        self.open = new_open;
        self.sealed.push(Arc::new(sealed_from(
            seq,
            sealed_at,
            sealing.file,
            index,
            sealing.size,
        )));
        self.open_read = new_read;
        self.open_blocks.clear();
        self.repaired_current.clear();
        let uids = std::mem::take(&mut self.uids_current);
        push_recent(&mut self.uids_recent, seq, uids, config.dedup_segments);
        metrics.rotations.inc();
        let old_wal = wal_path(dir, seq);
        match new_wal {
            Some((wal, path)) => {
                self.wal = wal;
                self.wal_path = path;
                self.wal_bytes = wal::WAL_MAGIC.len() as u64;
                self.dirty = false;
                self.seq = next;
            }
            None => {
                // Recovery of an older WAL: the active WAL/segment stay; renumber the open
                // segment to the active sequence.
                let active_open = open_path(dir, self.seq);
                std::fs::rename(&self.open.path, &active_open).map_err(|source| {
                    StorageError::io("rename open segment", &active_open, source)
                })?;
                self.open.path = active_open;
            }
        }
        self.opened_at = Instant::now();
        // The sealed WAL goes only once the rename is durable; otherwise it stays, and
        // recovery deletes it when it finds the segment.
        sealing.dir_synced?;
        std::fs::remove_file(&old_wal)
            .map_err(|source| StorageError::io("remove sealed wal", &old_wal, source))?;
        segment::sync_dir(&old_wal)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use prost::Message;

    use super::*;
    use crate::segment::tests::{arb_entries, entries};

    impl Stream {
        /// Appends a node's own batch part: owned entries, not filtered, no received bytes.
        fn append_owned(
            &self,
            batch_uid: u64,
            entries: Vec<LogEntry>,
            config: &StorageConfig,
            metrics: &StorageMetrics,
        ) -> Result<Appended<'static>, StorageError> {
            self.append(
                Lock::Wait,
                batch_uid,
                Part::Owned(entries),
                config,
                metrics,
                false,
                None,
            )
        }
    }

    thread_local! {
        /// Makes the next WAL write on this thread fail (ENOSPC) after this many bytes.
        pub(super) static FAIL_WRITE_AFTER: std::cell::Cell<Option<usize>> =
            const { std::cell::Cell::new(None) };
    }

    fn open_stream(dir: &Path, config: &StorageConfig, metrics: &StorageMetrics) -> Stream {
        let book = Arc::new(TraceBook::open(&dir.join("book")).expect("trace book"));
        Stream::open("acme", "api", dir.join("stream"), config, metrics, book).expect("open")
    }

    /// A new stream in a temporary directory, with the configuration `config` gives for it.
    fn new_stream(
        config: impl FnOnce(&Path) -> StorageConfig,
    ) -> (tempfile::TempDir, StorageConfig, StorageMetrics, Stream) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        let metrics = StorageMetrics::default();
        let stream = open_stream(dir.path(), &config, &metrics);
        (dir, config, metrics, stream)
    }

    /// A new stream in a tenant directory that another stream made (and may not have synced
    /// yet) syncs the tenant's directory and its entry too.
    #[test]
    fn a_new_stream_syncs_its_tenant_directory_and_its_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let streams = dir.path().join("streams");
        std::fs::create_dir_all(streams.join("t")).expect("the tenant's directory");
        let config = StorageConfig::new(dir.path());
        let metrics = StorageMetrics::default();
        let book = Arc::new(TraceBook::open(&dir.path().join("book")).expect("book"));
        let stream = Stream::open(
            "t",
            "b",
            streams.join("t").join("b"),
            &config,
            &metrics,
            book,
        )
        .expect("open");
        let pending = stream.lock().unsynced_dirs.clone();
        // Outermost first; the stream's own directory holds its WAL's entry.
        assert_eq!(
            pending,
            [
                streams.clone(),
                streams.join("t"),
                streams.join("t").join("b")
            ]
        );
    }

    /// Defaults, and a segment sealed by the next age check (`rotate_if_old`).
    fn sealing_at_once(dir: &Path) -> StorageConfig {
        let mut config = StorageConfig::new(dir);
        config.segment_max_age = Duration::ZERO;
        config
    }

    /// Once removed (a hand-over, or nothing left), a stream neither seals, deletes nor
    /// syncs anything through its paths, which a new incarnation may own.
    #[test]
    fn a_removed_stream_touches_no_file_through_its_paths() {
        let (dir, config, metrics, stream) = new_stream(sealing_at_once);
        stream
            .append_owned(1, uid_batch(1, 1, ""), &config, &metrics)
            .expect("append");
        assert!(stream.rotate_if_old(&config, &metrics).expect("seal"));
        stream
            .append_owned(2, uid_batch(2, 1, ""), &config, &metrics)
            .expect("append");
        let seq = stream.lock().sealed[0].seq;
        assert!(stream.mark_removed_if(stream.generation()));
        // Its directory goes away, as a removal renames it.
        std::fs::rename(dir.path().join("stream"), dir.path().join("gone")).expect("rename");
        assert!(!stream.rotate_if_old(&config, &metrics).expect("no seal"));
        assert!(!stream.delete_sealed(seq).expect("no delete"));
        assert!(!stream.quarantine_sealed(seq).expect("no quarantine"));
        // Its pending commit round does not fail the node over the missing directory.
        stream.take_dirty_wal().expect("no directory to sync");
        assert_eq!(metrics.wal_sync_failures.get(), 0);
    }

    /// The batches repaired into a segment are forgotten with it (retention, quarantine):
    /// the stream's set of repaired batches does not only grow.
    #[test]
    fn a_segment_taken_out_takes_its_repaired_batches_with_it() {
        let (_dir, config, metrics, stream) = new_stream(sealing_at_once);
        // Entries of batch 7 written under another record uid, as a repair writes them.
        stream
            .append_owned(99, uid_batch(7, 3, "repaired"), &config, &metrics)
            .expect("append");
        assert!(stream.lock().repaired.contains(&7));
        assert!(stream.rotate_if_old(&config, &metrics).expect("seal"));
        assert!(
            stream.lock().repaired.contains(&7),
            "kept while its segment is"
        );
        let seq = stream.lock().sealed[0].seq;
        assert!(stream.take_sealed(seq).is_some());
        assert!(stream.lock().repaired.is_empty());
    }

    /// Closes `stream` and returns what it holds when opened again (the WAL replayed).
    fn reopened_tail(
        stream: Stream,
        dir: &Path,
        config: &StorageConfig,
        metrics: &StorageMetrics,
    ) -> Vec<LogEntry> {
        drop(stream);
        let reopened = open_stream(dir, config, metrics);
        let tail = reopened.snapshot().tail;
        tail.iter().flat_map(|c| c.entries().to_vec()).collect()
    }

    /// Gives the stream's open segment a writable handle, or a read-only one (its block writes
    /// then fail, as on a read-only or full disk).
    fn set_open_segment_writable(stream: &Stream, path: &Path, writable: bool) {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .expect("segment handle");
        stream.lock().open.file = Arc::new(file);
    }

    fn small_blocks(dir: &Path) -> StorageConfig {
        let mut config = StorageConfig::new(dir);
        config.block_target_bytes = 1_500;
        config.shared_trace_ids = false;
        config
    }

    /// Appends `entries` in batches of the sizes `cuts` gives (in turn), then flushes the
    /// tail.
    fn append_in_batches(
        stream: &Stream,
        entries: &[LogEntry],
        cuts: &[usize],
        config: &StorageConfig,
        metrics: &StorageMetrics,
    ) {
        let mut rest = entries;
        for (uid, size) in (1..).zip(cuts.iter().cycle()) {
            if rest.is_empty() {
                break;
            }
            let (batch, after) = rest.split_at((*size).min(rest.len()));
            let appended = stream
                .append_owned(uid, batch.to_vec(), config, metrics)
                .expect("append");
            assert!(matches!(appended, Appended::Stored));
            rest = after;
        }
        stream.lock().flush_tail(config).expect("flush");
    }

    /// Checks that the open segment's blocks, read back, are byte for byte what
    /// `build_block_with` makes of `entries` cut where the stream cut them, and that they
    /// hold every entry.
    fn assert_built_at_once(stream: &Stream, entries: &[LogEntry], config: &StorageConfig) {
        let inner = stream.lock();
        let mut at = 0;
        for meta in &inner.open_blocks {
            let mut bytes = vec![0; meta.len as usize];
            inner
                .open_read
                .read_exact_at(&mut bytes, meta.offset)
                .expect("read block");
            let count = meta.count as usize;
            let (expected, mut expected_meta) = segment::build_block_with(
                &entries[at..at + count],
                config.zstd_level,
                config.block_format,
                None,
            )
            .expect("build");
            expected_meta.offset = meta.offset;
            assert!(bytes == expected, "block at entry {at} differs");
            // Compared encoded: a NaN in a numeric summary is not equal to itself.
            assert!(meta.encode_to_vec() == expected_meta.encode_to_vec());
            at += count;
        }
        assert_eq!(at, entries.len());
        assert!(inner.tail.is_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        #[test]
        fn blocks_built_as_batches_arrive_are_those_built_at_once(
            parts in proptest::collection::vec(arb_entries(), 1..8),
            cuts in proptest::collection::vec(1usize..12, 1..8),
        ) {
            let all: Vec<LogEntry> = parts.into_iter().flatten().collect();
            let (_dir, config, metrics, stream) = new_stream(small_blocks);
            append_in_batches(&stream, &all, &cuts, &config, &metrics);
            assert_built_at_once(&stream, &all, &config);
        }

        /// A replica stores views of the bytes it received: its WAL and its blocks are, byte
        /// for byte, those of the same entries decoded and owned.
        #[test]
        fn views_of_received_bytes_store_what_owned_entries_store(
            parts in proptest::collection::vec(arb_entries(), 1..6),
        ) {
            let (_a, config, metrics, owned) = new_stream(small_blocks);
            let (_b, _, _, viewed) = new_stream(small_blocks);
            for (uid, part) in (1..).zip(&parts) {
                let mut source = Vec::new();
                let mut spans = Vec::new();
                for entry in part {
                    let start = source.len();
                    source.extend_from_slice(&entry.encode_to_vec());
                    spans.push(start..source.len());
                }
                let views: Vec<EntryRef<'_>> = spans
                    .iter()
                    .map(|span| EntryRef::decode(&source[span.clone()]).expect("view"))
                    .collect();
                let received = wal::EntryBodies { source: &source, spans };
                let positions: Vec<u32> = (0..part.len() as u32).collect();
                owned
                    .append_owned(uid, part.clone(), &config, &metrics)
                    .expect("owned");
                viewed
                    .append(Lock::Wait, uid, Part::Views(views), &config, &metrics, false, Some((&received, &positions)))
                    .expect("views");
            }
            let files = |stream: &Stream| {
                let mut inner = stream.lock();
                inner.flush_tail(&config).expect("flush");
                // The records a commit round would write.
                inner.write_unwritten().expect("write");
                let wal = std::fs::read(&inner.wal_path).expect("wal");
                let segment = std::fs::read(&inner.open.path).expect("segment");
                (wal, segment)
            };
            let (owned_files, viewed_files) = (files(&owned), files(&viewed));
            proptest::prop_assert!(owned_files.0 == viewed_files.0, "the WALs differ");
            proptest::prop_assert!(owned_files.1 == viewed_files.1, "the segments differ");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// A stream opened again builds its tail's blocks from views of the replayed WAL
        /// records: the same bytes as from the entries.
        #[test]
        fn a_replayed_tail_builds_the_blocks_its_entries_build(
            parts in proptest::collection::vec(arb_entries(), 1..5),
        ) {
            let (dir, config, metrics, stream) = new_stream(|dir| StorageConfig {
                shared_trace_ids: false,
                ..StorageConfig::new(dir)
            });
            for (uid, part) in (1..).zip(&parts) {
                stream.append_owned(uid, part.clone(), &config, &metrics).expect("append");
            }
            drop(stream);
            let reopened = open_stream(dir.path(), &config, &metrics);
            reopened.lock().flush_tail(&config).expect("flush");
            let all: Vec<LogEntry> = parts.into_iter().flatten().collect();
            assert_built_at_once(&reopened, &all, &config);
        }
    }

    #[test]
    fn the_tail_reads_each_batch_back_from_its_record() {
        let (dir, config, metrics, stream) = new_stream(|dir| StorageConfig::new(dir));
        let mut all = entries(6);
        all[1].timestamp = 9_999;
        all[4]
            .fields
            .insert("n".into(), logcluster_proto::FieldValue::int(3));
        // Encoded here, and (as a replica gets them) from the bytes they were received in,
        // of which a part is kept.
        stream
            .append_owned(1, all[..2].to_vec(), &config, &metrics)
            .expect("append");
        let mut source = Vec::new();
        let mut spans = Vec::new();
        for entry in &all[2..] {
            let start = source.len();
            source.extend_from_slice(&entry.encode_to_vec());
            spans.push(start..source.len());
        }
        let received = wal::EntryBodies {
            source: &source,
            spans,
        };
        let kept = [all[3].clone(), all[5].clone()];
        stream
            .append(
                Lock::Wait,
                2,
                Part::Owned(kept.to_vec()),
                &config,
                &metrics,
                true,
                Some((&received, &[1, 3])),
            )
            .expect("append");
        let tail = stream.snapshot().tail;
        assert_eq!(tail.len(), 2);
        assert_eq!(**tail[0].entries(), all[..2]);
        assert_eq!(tail[0].max_ts, 9_999);
        assert_eq!(**tail[1].entries(), kept);
        assert_eq!(tail[1].max_ts, all[5].timestamp);
        // What a reopened stream replays from the WAL is what the tail held.
        let replayed = reopened_tail(stream, dir.path(), &config, &metrics);
        assert_eq!(replayed, [&all[..2], &kept[..]].concat());
    }

    #[test]
    fn a_batch_part_over_the_record_limit_is_refused_before_the_wal() {
        let (dir, config, metrics, stream) = new_stream(|dir| StorageConfig::new(dir));
        let mut huge = entries(1);
        huge[0].message = "x".repeat(wal::MAX_RECORD_LEN);
        let error = stream
            .append_owned(1, huge, &config, &metrics)
            .err()
            .expect("refused");
        assert!(
            matches!(error, StorageError::RecordTooLarge { bytes } if bytes > wal::MAX_RECORD_LEN),
            "{error}"
        );
        assert_eq!(
            stream.lock().wal_bytes,
            8,
            "nothing written after the header"
        );
        // The stream goes on, and what a reopened one replays is only the later batch.
        let later = entries(3);
        stream
            .append_owned(2, later.clone(), &config, &metrics)
            .expect("append");
        let replayed = reopened_tail(stream, dir.path(), &config, &metrics);
        assert_eq!(replayed, later);
    }

    #[test]
    fn a_block_that_failed_to_flush_is_built_again_from_the_whole_tail() {
        let (_dir, config, metrics, stream) = new_stream(small_blocks);
        let all = entries(90);
        let append = |uid: u64, batch: &[LogEntry]| {
            let appended = stream
                .append_owned(uid, batch.to_vec(), &config, &metrics)
                .expect("append");
            assert!(matches!(appended, Appended::Stored));
        };
        append(1, &all[..5]);
        // The open segment can no longer be written: the flush that the next batch calls
        // for fails (the batch itself is in the WAL and stands).
        let path = stream.lock().open.path.clone();
        set_open_segment_writable(&stream, &path, false);
        append(2, &all[5..60]);
        assert_eq!(metrics.seal_failures.get(), 1);
        assert!(stream.lock().open_blocks.is_empty());
        set_open_segment_writable(&stream, &path, true);
        // Within the back-off: added to the tail's block, which is built again first.
        append(3, &all[60..]);
        stream.lock().flush_tail(&config).expect("flush");
        assert_eq!(stream.lock().open_blocks.len(), 1);
        assert_built_at_once(&stream, &all, &config);
    }

    #[test]
    fn blocks_are_cut_while_a_failed_rotation_backs_off() {
        let (dir, config, metrics, stream) = new_stream(|dir| StorageConfig {
            segment_max_bytes: 3_000,
            ..small_blocks(dir)
        });
        // The sealed name is taken by a directory: every rotation fails.
        std::fs::create_dir(sealed_path(&dir.path().join("stream"), 1)).expect("obstacle");
        let all = entries(200);
        for (uid, batch) in (1..).zip(all.chunks(5)) {
            let appended = stream.append_owned(uid, batch.to_vec(), &config, &metrics);
            assert!(matches!(appended, Ok(Appended::Stored)), "{uid}");
        }
        assert!(metrics.seal_failures.get() >= 1);
        assert_eq!(metrics.rotations.get(), 0);
        // The tail did not wait for the rotation: blocks went on into the open segment.
        let inner = stream.lock();
        assert!(inner.open_blocks.len() > 5, "{}", inner.open_blocks.len());
        assert!(inner.tails.held < 2 * 1_500, "{}", inner.tails.held);
    }

    #[test]
    fn a_tail_that_cannot_become_blocks_stops_growing_and_drains_once_they_can() {
        let (_dir, config, metrics, stream) = new_stream(small_blocks);
        let all = entries(400);
        let path = stream.lock().open.path.clone();
        set_open_segment_writable(&stream, &path, false);
        // Blocks fail; batch parts go on into the WAL and the tail until it holds eight
        // blocks' worth, then are refused.
        let mut stored = 0;
        let refused = loop {
            let batch = all[stored..stored + 5].to_vec();
            match stream.append_owned(stored as u64 + 1, batch, &config, &metrics) {
                Ok(appended) => {
                    assert!(matches!(appended, Appended::Stored));
                    stored += 5;
                }
                Err(error) => break error,
            }
            assert!(stored < all.len(), "never refused");
        };
        assert!(matches!(refused, StorageError::Backlog { .. }), "{refused}");
        assert_eq!(metrics.backlog_refusals.get(), 1);
        let tail_bytes = stream.lock().tails.held;
        // Full: at most the limit, and one more part would have passed it.
        assert!(tail_bytes <= tail_limit(&config), "{tail_bytes}");
        assert!(tail_bytes + 1_500 > tail_limit(&config), "{tail_bytes}");
        // Still refused while the next attempt is not due, even once blocks could be written.
        set_open_segment_writable(&stream, &path, true);
        let next = all[stored..stored + 5].to_vec();
        let again = stream.append_owned(9_999, next.clone(), &config, &metrics);
        assert!(matches!(again, Err(StorageError::Backlog { .. })));
        // When due, the tail becomes a block first and the part is taken.
        stream.lock().retry_sealing_at = Some(Instant::now());
        let taken = stream.append_owned(9_999, next, &config, &metrics);
        assert!(matches!(taken, Ok(Appended::Stored)));
        stored += 5;
        assert_eq!(metrics.backlog_refusals.get(), 2);
        assert!(stream.lock().retry_sealing_at.is_none());
        stream.lock().flush_tail(&config).expect("flush");
        assert_built_at_once(&stream, &all[..stored], &config);
    }

    /// `n` entries of batch `uid` (distinct ids), messages padded with `pad`.
    fn uid_batch(uid: u64, n: u32, pad: &str) -> Vec<LogEntry> {
        (0..n)
            .map(|i| LogEntry {
                id: logcluster_proto::ids::entry_id(uid, i),
                timestamp: 1_000 + i64::from(i),
                message: format!("entry {i} of {uid} {pad}"),
                service: "api".into(),
                tenant: "acme".into(),
                ..Default::default()
            })
            .collect()
    }

    fn wal_len(stream: &Stream) -> u64 {
        let path = stream.lock().wal_path.clone();
        std::fs::metadata(path).expect("wal").len()
    }

    /// Under `FsyncPolicy::Always` a record waits for the commit round, which writes the
    /// stream's waiting records in one go; past `UNWRITTEN_LIMIT` they are written at once;
    /// under an fsync interval (acknowledged after the write) each is written at once. A
    /// reopened stream holds every record once either way.
    #[test]
    fn records_wait_for_the_commit_round_and_are_written_once() {
        // Blocks of 1 MiB: every entry is still in the tail when the stream is reopened.
        let (dir, config, metrics, stream) = new_stream(|dir| StorageConfig::new(dir));
        // The new stream's directory entries are synced with its WAL's first sync.
        assert_eq!(
            stream.lock().unsynced_dirs.last(),
            Some(&dir.path().join("stream"))
        );
        let empty = wal_len(&stream);
        let batch = |uid: u64, n: u32| uid_batch(uid, n, "");
        for uid in 1..=3 {
            stream
                .append_owned(uid, batch(uid, 4), &config, &metrics)
                .expect("append");
        }
        assert_eq!(wal_len(&stream), empty, "the records wait for the round");
        let taken = stream.take_dirty_wal().expect("round").expect("dirty");
        taken.sync_data().expect("fsync");
        assert!(
            stream.lock().unsynced_dirs.is_empty(),
            "synced in the round"
        );
        let written = wal_len(&stream);
        assert!(written > empty);
        assert_eq!(written, stream.lock().wal_bytes);
        assert!(stream.take_dirty_wal().expect("clean").is_none());
        // Past the limit the waiting records are written with the one that passes it.
        let mut uid = 10;
        while stream.lock().unwritten.len() + 4_000 <= UNWRITTEN_LIMIT {
            stream
                .append_owned(uid, batch(uid, 4), &config, &metrics)
                .expect("append");
            uid += 1;
        }
        assert_eq!(wal_len(&stream), written);
        let big = uid_batch(uid, 40, &"x".repeat(150));
        stream
            .append_owned(uid, big, &config, &metrics)
            .expect("append");
        assert_eq!(wal_len(&stream), stream.lock().wal_bytes, "written at once");
        assert!(stream.lock().unwritten.is_empty());
        let reopened = reopened_tail(stream, dir.path(), &config, &metrics);
        let mut ids: Vec<String> = reopened.iter().map(|e| e.id.clone()).collect();
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(
            (ids.len(), count),
            (count, 3 * 4 + (uid - 10) as usize * 4 + 40)
        );

        let (_dir, mut interval, metrics, stream) = new_stream(small_blocks);
        interval.fsync = crate::FsyncPolicy::Interval(Duration::from_secs(1));
        let before = wal_len(&stream);
        stream
            .append_owned(1, batch(1, 4), &interval, &metrics)
            .expect("append");
        assert!(wal_len(&stream) > before, "written at once");
    }

    /// A round whose write of the waiting records fails (here: the handle is read-only) and
    /// cannot cut the file back fails the stream as a failed sync does: a torn record could
    /// hide every later one from replay.
    #[test]
    fn a_wal_write_that_cannot_be_cut_back_fails_the_stream() {
        let (_dir, config, metrics, stream) = new_stream(small_blocks);
        stream
            .append_owned(1, uid_batch(1, 4, "a"), &config, &metrics)
            .expect("append");
        let path = stream.lock().wal_path.clone();
        stream.lock().wal = File::open(&path).expect("read-only handle");
        let error = stream.take_dirty_wal().expect_err("the write fails");
        assert!(error.to_string().contains("append to wal"), "{error}");
        let error = stream.take_dirty_wal().expect_err("the stream failed");
        assert!(error.to_string().contains("earlier sync"), "{error}");
        let refused = stream.append_owned(2, uid_batch(2, 4, "b"), &config, &metrics);
        assert!(refused.is_err());
    }

    /// A round whose write fails part-way (a full disk) cuts the file back to the records
    /// before it; they keep waiting, and the next round writes them once. An append written
    /// at once (an fsync interval) that fails is not appended. The sync of a whole file system
    /// writes what waits as well.
    #[test]
    fn a_failed_wal_write_is_cut_back_and_written_again_once() {
        let (dir, config, metrics, stream) = new_stream(|dir| StorageConfig::new(dir));
        let empty = wal_len(&stream);
        for uid in 1..=3 {
            stream
                .append_owned(uid, uid_batch(uid, 4, "waits"), &config, &metrics)
                .expect("append");
        }
        FAIL_WRITE_AFTER.set(Some(100));
        let error = stream.take_dirty_wal().expect_err("a full disk");
        assert!(error.to_string().contains("append to wal"), "{error}");
        assert_eq!(wal_len(&stream), empty, "cut back");
        assert!(!stream.lock().unwritten.is_empty(), "still waiting");
        assert!(stream.take_dirty().expect("the next round"), "was dirty");
        assert_eq!(wal_len(&stream), stream.lock().wal_bytes);
        assert!(stream.lock().unwritten.is_empty());

        let mut interval = config.clone();
        interval.fsync = crate::FsyncPolicy::Interval(Duration::from_secs(1));
        let before = (wal_len(&stream), stream.lock().wal_bytes);
        FAIL_WRITE_AFTER.set(Some(50));
        let refused = stream.append_owned(4, uid_batch(4, 4, "refused"), &interval, &metrics);
        assert!(refused.is_err(), "a full disk");
        assert_eq!((wal_len(&stream), stream.lock().wal_bytes), before);
        stream
            .append_owned(5, uid_batch(5, 4, "written"), &interval, &metrics)
            .expect("append");
        assert_eq!(wal_len(&stream), stream.lock().wal_bytes, "written at once");

        let reopened = reopened_tail(stream, dir.path(), &config, &metrics);
        let mut ids: Vec<String> = reopened.iter().map(|e| e.id.clone()).collect();
        ids.sort();
        let expected: Vec<String> = [1, 2, 3, 5]
            .into_iter()
            .flat_map(|uid| (0..4).map(move |i| logcluster_proto::ids::entry_id(uid, i)))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(
            ids, expected,
            "each record once, the refused one not at all"
        );
    }

    /// A stream that rotates while records wait writes them into the WAL it seals, not the
    /// next one: reopened, it holds each entry once.
    #[test]
    fn records_waiting_at_a_rotation_go_into_the_sealed_wal() {
        let (dir, config, metrics, stream) = new_stream(|dir| {
            let mut config = small_blocks(dir);
            config.segment_max_bytes = 4 * 1024;
            config
        });
        for uid in 1..=40 {
            stream
                .append_owned(uid, uid_batch(uid, 5, "rotating"), &config, &metrics)
                .expect("append");
        }
        assert!(metrics.rotations.get() > 0, "the stream rotated");
        drop(stream);
        let reopened = open_stream(dir.path(), &config, &metrics);
        let snapshot = reopened.snapshot();
        let read = |file: &File, blocks: &[Arc<BlockMeta>]| -> Vec<String> {
            blocks
                .iter()
                .flat_map(|meta| {
                    let bytes = segment::read_block(file, meta).expect("read");
                    segment::decode_block(&bytes, meta, Some(&snapshot.traces)).expect("decode")
                })
                .map(|entry| entry.id)
                .collect()
        };
        let mut ids = Vec::new();
        for sealed in &snapshot.sealed {
            ids.extend(read(&sealed.file, &sealed.blocks));
        }
        ids.extend(read(&snapshot.open_file, &snapshot.open_blocks));
        for chunk in &snapshot.tail {
            ids.extend(chunk.entries().iter().map(|e| e.id.clone()));
        }
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!((ids.len(), count), (200, 200));
    }
}
