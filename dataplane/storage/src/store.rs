//! The store: streams by (tenant, service), appends with group commit, reads, maintenance.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use logcluster_proto::{EntryRef, LogEntry};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::commit::{CommitRequest, Syncer, run_committer, sync_streams};
use crate::scan::{self, Cursor, ScanFilter, ScanStats, TopResult};
use crate::stream::{Appended, Lock, Part, Stream, StreamSnapshot};
use crate::traces::{TraceBook, WindowCache};
use crate::{FsyncPolicy, StorageConfig, StorageError, StorageMetrics};

/// What happened to an appended batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Entries newly stored (durable when the future resolved).
    pub stored: usize,
    /// Entries skipped because their batch id was already stored in their stream.
    pub duplicates: usize,
    /// Positions (in the batch as given) of entries refused, not stored, because their
    /// stream's part would not fit in one WAL record ([`StorageError::RecordTooLarge`]); the
    /// batch's other streams are stored.
    pub too_large: Vec<u32>,
    /// The largest of those parts' record sizes.
    pub too_large_bytes: usize,
    /// Positions of entries refused because their stream would be new and the store holds
    /// `storage.maxStreams` ([`StorageError::TooManyStreams`]); the other streams are stored.
    pub too_many_streams: Vec<u32>,
}

/// Summary figures for the stats log, metrics and the dashboard.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StoreStats {
    pub streams: usize,
    pub sealed_segments: usize,
    pub stored_bytes: u64,
}

type StreamKey = (String, String);

/// A node's log store. Cheap to share behind an `Arc`.
pub struct Store {
    config: StorageConfig,
    /// Repair writes (check, then append) hold it exclusively, normal appends shared: no
    /// append of a batch can slip between a repair's check and its write, so an entry is
    /// never stored twice.
    repair_lock: std::sync::RwLock<()>,
    streams: RwLock<HashMap<StreamKey, Arc<Stream>>>,
    /// Each tenant's trace-id book, shared by its streams.
    books: std::sync::Mutex<HashMap<String, Arc<TraceBook>>>,
    /// The books' window cache, bounded for all tenants together.
    windows: Arc<WindowCache>,
    metrics: StorageMetrics,
    commit_tx: mpsc::Sender<CommitRequest>,
    syncer: Arc<Syncer>,
    /// When refusals of new streams were last logged.
    refusal_log: EveryMinute,
    /// Bytes of the quarantined copies (`*.corrupt`) in the streams' directories, as the last
    /// maintenance pass found them (they count in `stored_bytes` and for retention).
    quarantined_bytes: std::sync::atomic::AtomicU64,
}

/// A log line at most once a minute (the metric counts every case).
#[derive(Default)]
struct EveryMinute(std::sync::Mutex<Option<std::time::Instant>>);

impl EveryMinute {
    fn due(&self) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(60));
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    }
}

/// The quarantined copies (`*.corrupt`) in a stream's directory: (modified, bytes, path).
fn quarantined_in(dir: &std::path::Path) -> Vec<(std::time::SystemTime, u64, std::path::PathBuf)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".corrupt"))
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), entry.path()))
        })
        .collect()
}

/// Directory name for a tenant or service: bytes outside `[A-Za-z0-9_-]` (and a leading
/// dot) are percent-encoded, so any name maps to exactly one safe directory and back.
pub fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, byte) in name.bytes().enumerate() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' || (byte == b'.' && i > 0) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    if out.is_empty() { "%".to_string() } else { out }
}

/// Inverse of [`encode_name`].
pub fn decode_name(text: &str) -> Option<String> {
    if text == "%" {
        return Some(String::new());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A batch written by [`Store::append_on_this_thread`], not yet known to be durable.
pub struct Written {
    store: Arc<Store>,
    written: Result<(AppendOutcome, Vec<Arc<Stream>>), StorageError>,
}

impl Written {
    /// Resolves once the batch is durable (under [`FsyncPolicy::Always`], fsynced).
    pub async fn durable(self) -> Result<AppendOutcome, StorageError> {
        let (outcome, touched) = self.written?;
        self.store.commit(touched).await?;
        Ok(outcome)
    }
}

impl Store {
    /// Opens the store, recovering every stream found on disk, and starts the committer.
    /// Must be called inside a tokio runtime.
    pub async fn open(
        config: StorageConfig,
        metrics: StorageMetrics,
    ) -> Result<Arc<Store>, StorageError> {
        // Before recovery writes anything: the handle `syncfs` reports write errors through
        // is opened first.
        let root = config.data_dir.join("streams");
        let syncer = tokio::task::spawn_blocking(move || {
            logcluster_common::durable::create_dir_all(&root)
                .map_err(|source| StorageError::io("create data dir", &root, source))?;
            Ok::<_, StorageError>(Arc::new(Syncer::new(&root)))
        })
        .await
        .map_err(|e| StorageError::Task(e.to_string()))??;
        let recover_config = config.clone();
        let recover_metrics = metrics.clone();
        let windows = Arc::new(WindowCache::default());
        let recover_windows = windows.clone();
        let (streams, books) = tokio::task::spawn_blocking(move || {
            recover(&recover_config, &recover_metrics, &recover_windows)
        })
        .await
        .map_err(|e| StorageError::Task(e.to_string()))??;
        let (commit_tx, commit_rx) = mpsc::channel(4096);
        tokio::spawn(run_committer(commit_rx, syncer.clone(), metrics.clone()));
        let store = Arc::new(Store {
            config,
            streams: RwLock::new(streams),
            books: std::sync::Mutex::new(books),
            windows,
            repair_lock: std::sync::RwLock::new(()),
            metrics,
            commit_tx,
            syncer,
            refusal_log: EveryMinute::default(),
            quarantined_bytes: Default::default(),
        });
        store.refresh_gauges();
        Ok(store)
    }

    /// Why the node needs a restart, if a sync failed since the store opened: streams whose
    /// WAL sync failed refuse their batches, and segments whose own sync (or their trace-id
    /// window's) failed are not sealed, until the process restarts and recovery reads what
    /// the device holds.
    pub fn sync_failed(&self) -> Option<&'static str> {
        if self.metrics.wal_sync_failures.get() > 0 {
            Some("a WAL sync failed: this node refuses those streams' batches until it restarts")
        } else if self.metrics.segment_sync_failures.get() > 0 {
            Some(
                "a segment or trace-id window sync failed: this node seals no segment that needs it (the WALs keep the batches) until it restarts",
            )
        } else {
            None
        }
    }

    /// Whether commit rounds with many dirty WALs sync the data directory's file system at
    /// once (see `commit`).
    pub fn syncs_file_system(&self) -> bool {
        self.syncer.syncs_file_system()
    }

    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    pub fn metrics(&self) -> &StorageMetrics {
        &self.metrics
    }

    fn stream(&self, tenant: &str, service: &str) -> Result<Arc<Stream>, StorageError> {
        let key = (tenant.to_string(), service.to_string());
        if let Some(stream) = self
            .streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(stream.clone());
        }
        let mut streams = self.streams.write().unwrap_or_else(|p| p.into_inner());
        if let Some(stream) = streams.get(&key) {
            return Ok(stream.clone());
        }
        let limit = self.config.max_streams;
        if limit > 0 && streams.len() >= limit {
            return Err(StorageError::TooManyStreams { limit });
        }
        let dir = stream_dir(&self.config.data_dir, tenant, service);
        let stream = Arc::new(Stream::open(
            tenant,
            service,
            dir,
            &self.config,
            &self.metrics,
            self.book(tenant)?,
        )?);
        streams.insert(key, stream.clone());
        Ok(stream)
    }

    /// The trace-id book of a tenant, opened on first use.
    fn book(&self, tenant: &str) -> Result<Arc<TraceBook>, StorageError> {
        let mut books = self.books.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(book) = books.get(tenant) {
            return Ok(book.clone());
        }
        let dir = tenant_dir(&self.config.data_dir, tenant);
        let book = Arc::new(TraceBook::open_with(
            &dir,
            self.windows.clone(),
            self.metrics.segment_sync_failures.clone(),
        )?);
        books.insert(tenant.to_string(), book.clone());
        Ok(book)
    }

    fn books(&self) -> Vec<(String, Arc<TraceBook>)> {
        let books = self.books.lock().unwrap_or_else(|p| p.into_inner());
        books.iter().map(|(t, b)| (t.clone(), b.clone())).collect()
    }

    /// Deletes the trace-id book windows no block of the tenant refers to any more, and lets
    /// quiet tenants' books drop their lookup tables.
    fn remove_unreferenced_trace_ids(&self) -> Result<(), StorageError> {
        // One tenant's failure holds up none of the others.
        let mut first_error = None;
        for (tenant, book) in self.books() {
            if let Err(error) = self.remove_unreferenced_trace_ids_of(&tenant, &book) {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn remove_unreferenced_trace_ids_of(
        &self,
        tenant: &str,
        book: &TraceBook,
    ) -> Result<(), StorageError> {
        book.rest_if_idle(BOOK_IDLE)?;
        // Read before the streams: a block built meanwhile refers to a window at or above it.
        let floor = book.floor();
        let mut referenced = std::collections::HashSet::new();
        for stream in self.all_streams() {
            if stream.tenant == tenant {
                stream.trace_windows(&mut referenced);
            }
        }
        let removed = book.remove_unreferenced(floor, &referenced)?;
        if removed > 0 {
            info!(tenant = %tenant, windows = removed, "retention: deleted trace-id windows no block refers to");
            self.metrics.trace_windows_deleted.inc_by(removed as u64);
        }
        Ok(())
    }

    /// Appends a batch. Entries are routed to their (tenant, service) stream; each stream part
    /// is skipped when that stream already stored `batch_uid` (an idempotent retry). With
    /// [`FsyncPolicy::Always`] this resolves only once everything stored, or found already
    /// stored, is fsynced.
    pub async fn append(
        self: &Arc<Self>,
        batch_uid: u64,
        entries: Vec<LogEntry>,
    ) -> Result<AppendOutcome, StorageError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.append_on_this_thread(batch_uid, entries, None))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?
            .durable()
            .await
    }

    /// [`Store::append`] with the routing, WAL writes and block building done on the calling
    /// thread, which must be one that may block (the blocking-pool thread that decoded the
    /// entries, so that they are still in its core's cache); [`Written::durable`] then
    /// waits for the group commit. Entries decoded from `bodies` (a replica write) have their
    /// WAL records assembled from those bytes, not encoded again.
    pub fn append_on_this_thread(
        self: &Arc<Self>,
        batch_uid: u64,
        entries: Vec<LogEntry>,
        bodies: Option<&crate::wal::EntryBodies<'_>>,
    ) -> Written {
        let written = {
            let _shared = self.repair_lock.read().unwrap_or_else(|p| p.into_inner());
            self.append_blocking(batch_uid, Part::Owned(entries), bodies)
        };
        Written {
            store: self.clone(),
            written,
        }
    }

    /// [`Store::append_on_this_thread`] for a replica write whose entries are views of the
    /// received `bodies` (one per span, in order): no entry is allocated, and the WAL records
    /// are those bytes.
    pub fn append_received_on_this_thread(
        self: &Arc<Self>,
        batch_uid: u64,
        views: Vec<EntryRef<'_>>,
        bodies: &crate::wal::EntryBodies<'_>,
    ) -> Written {
        let written = {
            let _shared = self.repair_lock.read().unwrap_or_else(|p| p.into_inner());
            self.append_blocking(batch_uid, Part::Views(views), Some(bodies))
        };
        Written {
            store: self.clone(),
            written,
        }
    }

    /// Waits until the touched streams' WAL writes are fsynced (group commit), under
    /// [`FsyncPolicy::Always`].
    async fn commit(&self, mut touched: Vec<Arc<Stream>>) -> Result<(), StorageError> {
        if touched.is_empty() || !matches!(self.config.fsync, FsyncPolicy::Always) {
            return Ok(());
        }
        touched.sort_by_key(|s| Arc::as_ptr(s) as usize);
        touched.dedup_by_key(|s| Arc::as_ptr(s) as usize);
        let (done, wait) = oneshot::channel();
        self.commit_tx
            .send(CommitRequest {
                streams: touched,
                done,
            })
            .await
            .map_err(|_| StorageError::ShuttingDown)?;
        wait.await
            .map_err(|_| StorageError::ShuttingDown)?
            .map_err(StorageError::Fsync)
    }

    /// Appends repair writes (read repair, anti-entropy, hand-over): only entries whose id
    /// the stream does not hold yet are stored, whatever batch they first came in, so
    /// repairing never duplicates. Checking and appending happen under one lock, so
    /// concurrent repairs of the same entries (two old owners handing a stream over) store
    /// them once. Slower than [`Store::append`] (it reads the stream's blocks in the
    /// entries' time range), which is fine for the rare repair path.
    pub async fn append_missing(
        self: &Arc<Self>,
        entries: Vec<LogEntry>,
    ) -> Result<AppendOutcome, StorageError> {
        let store = self.clone();
        let (outcome, touched) = tokio::task::spawn_blocking(move || {
            let _exclusive = store.repair_lock.write().unwrap_or_else(|p| p.into_inner());
            let (missing, present, holding) = store.find_missing(entries);
            let (mut outcome, mut touched) = store.store_missing(missing)?;
            outcome.duplicates += present;
            // Entries found present may still be waiting for their fsync: their streams
            // commit too before the repair is answered (a hand-over deletes its copy then).
            touched.extend(holding);
            Ok::<_, StorageError>((outcome, touched))
        })
        .await
        .map_err(|e| StorageError::Task(e.to_string()))??;
        self.commit(touched).await?;
        Ok(outcome)
    }

    /// Splits repair entries into those the store lacks and a count of those it holds, with
    /// the streams holding those.
    fn find_missing(
        self: &Arc<Self>,
        entries: Vec<LogEntry>,
    ) -> (Vec<LogEntry>, usize, Vec<Arc<Stream>>) {
        let store = self;
        let parts = group_by_stream(entries);
        let mut missing = Vec::new();
        let mut present = 0usize;
        let mut holding = Vec::new();
        for ((tenant, service), (part, _)) in parts {
            let from = part.iter().map(|e| e.timestamp).min().unwrap_or(0);
            let to = part.iter().map(|e| e.timestamp).max().unwrap_or(0);
            let services = std::collections::BTreeSet::from([service.clone()]);
            let wanted: std::collections::HashSet<&str> =
                part.iter().map(|e| e.id.as_str()).collect();
            let mut held: std::collections::HashSet<String> = std::collections::HashSet::new();
            let always = |_: &LogEntry| true;
            let filter = ScanFilter::whole(
                &tenant,
                Some(&services),
                from,
                to.saturating_add(1),
                &always,
            );
            store.scan(&filter, |entry| {
                if wanted.contains(entry.id.as_str()) {
                    held.insert(entry.id.clone());
                }
            });
            // An entry whose original batch this stream stored may sit at another
            // timestamp (a retried batch without timestamps gets new ones): look for
            // those ids in the whole stream. Only then is it present — a corrupt
            // block may have lost it although its batch was stored.
            let existing = store.existing_stream(&tenant, &service);
            let elsewhere: std::collections::HashSet<&str> = part
                .iter()
                .filter(|e| !held.contains(&e.id))
                .filter(|e| {
                    existing.as_ref().is_some_and(|stream| {
                        batch_uid_of(&e.id).is_some_and(|uid| stream.has_batch(uid))
                    })
                })
                .map(|e| e.id.as_str())
                .collect();
            if !elsewhere.is_empty() {
                let whole = ScanFilter {
                    from_ts: i64::MIN,
                    to_ts: i64::MAX,
                    ..filter
                };
                store.scan(&whole, |entry| {
                    if elsewhere.contains(entry.id.as_str()) {
                        held.insert(entry.id.clone());
                    }
                });
            }
            if !held.is_empty()
                && let Some(stream) = existing
            {
                holding.push(stream);
            }
            let mut seen = std::collections::HashSet::new();
            for entry in part {
                if held.contains(&entry.id) || !seen.insert(entry.id.clone()) {
                    present += 1;
                } else {
                    missing.push(entry);
                }
            }
        }
        (missing, present, holding)
    }

    /// Stores the entries `find_missing` found missing (see `append_missing`).
    #[allow(clippy::type_complexity)]
    fn store_missing(
        self: &Arc<Self>,
        missing: Vec<LogEntry>,
    ) -> Result<(AppendOutcome, Vec<Arc<Stream>>), StorageError> {
        let store = self;
        // Repairs never record the original batch uid (a repair may carry only part of a
        // batch; recording it would make the real copy look like a duplicate). They go in
        // under a uid derived from their ids, and the stream notes the original uids: a
        // later copy of such a batch is filtered by id (see `Appended::Repaired`).
        let mut outcome = AppendOutcome::default();
        let mut touched: Vec<Arc<Stream>> = Vec::new();
        let leftovers = missing;
        if !leftovers.is_empty() {
            let mut ids: Vec<&str> = leftovers.iter().map(|e| e.id.as_str()).collect();
            ids.sort_unstable();
            let mut uid: u64 = 0x6c63_7265_7061_6972; // "lcrepair"
            for id in ids {
                for byte in id.bytes().chain(std::iter::once(0xff)) {
                    uid ^= u64::from(byte);
                    uid = uid.wrapping_mul(0x0000_0100_0000_01b3);
                }
            }
            let (part, streams) = store.append_blocking(uid | 1, Part::Owned(leftovers), None)?;
            // A repair (hand-over, anti-entropy, a redirected hint) must store everything or
            // fail: its source may be deleted once it succeeds.
            if !part.too_large.is_empty() {
                return Err(StorageError::RecordTooLarge {
                    bytes: part.too_large_bytes,
                });
            }
            if !part.too_many_streams.is_empty() {
                return Err(StorageError::TooManyStreams {
                    limit: store.config.max_streams,
                });
            }
            outcome.stored += part.stored;
            outcome.duplicates += part.duplicates;
            touched.extend(streams);
        }
        Ok((outcome, touched))
    }

    fn existing_stream(&self, tenant: &str, service: &str) -> Option<Arc<Stream>> {
        self.streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(tenant.to_string(), service.to_string()))
            .cloned()
    }

    fn append_blocking(
        &self,
        batch_uid: u64,
        entries: Part<'_>,
        bodies: Option<&crate::wal::EntryBodies<'_>>,
    ) -> Result<(AppendOutcome, Vec<Arc<Stream>>), StorageError> {
        let parts: Vec<(StreamKey, (Part<'_>, Vec<u32>))> = match entries {
            Part::Owned(entries) => group_by_stream(entries)
                .into_iter()
                .map(|(key, (part, positions))| (key, (Part::Owned(part), positions)))
                .collect(),
            Part::Views(views) => group_by_stream(views)
                .into_iter()
                .map(|(key, (part, positions))| (key, (Part::Views(part), positions)))
                .collect(),
        };
        let mut outcome = AppendOutcome::default();
        let mut touched = Vec::with_capacity(parts.len());
        // Concurrent batches mostly touch the same streams: a part whose stream another
        // batch holds is put back and appended after this batch's other parts (waiting for
        // it then), instead of this thread sleeping behind that batch's block building.
        let mut todo: std::collections::VecDeque<_> = parts
            .into_iter()
            .map(|(key, (part, positions))| (key, part, positions, Lock::IfFree))
            .collect();
        while let Some(((tenant, service), mut part, positions, mut lock)) = todo.pop_front() {
            let count = part.len();
            let mut busy = None;
            // The bytes the part was received as, while the part is whole (a part filtered
            // below is encoded by the stream).
            let mut received = bodies.map(|b| (b, positions.as_slice()));
            // A stream removed by a hand-over between lookup and append is looked up again:
            // the new incarnation takes the part (and hands it over in turn if needed).
            let mut filtered = false;
            let mut held = 0usize;
            // Every way out holds the stream: what it stored, or what it found already stored
            // (which may still wait for its fsync), is answered after its commit round.
            let stream = loop {
                let stream = match self.stream(&tenant, &service) {
                    Err(StorageError::TooManyStreams { limit }) => {
                        self.metrics.streams_refused.inc_by(count as u64);
                        if self.refusal_log.due() {
                            warn!(
                                tenant,
                                service,
                                limit,
                                "refused entries of a new stream: the node holds storage.maxStreams streams (logged at most once a minute; logcluster_storage_streams_refused_total counts them)"
                            );
                        }
                        outcome.too_many_streams.extend_from_slice(&positions);
                        break None;
                    }
                    other => other?,
                };
                // Only the first try may find the stream busy: a part taken back from a
                // removed stream, or filtered after a repair, waits.
                let appended = match stream.append(
                    std::mem::replace(&mut lock, Lock::Wait),
                    batch_uid,
                    part,
                    &self.config,
                    &self.metrics,
                    filtered,
                    received,
                ) {
                    Err(StorageError::RecordTooLarge { bytes }) => {
                        warn!(
                            tenant,
                            service,
                            bytes,
                            entries = count,
                            "refused a batch part over the WAL record limit"
                        );
                        self.metrics.too_large_parts.inc();
                        outcome.too_large.extend_from_slice(&positions);
                        outcome.too_large_bytes = outcome.too_large_bytes.max(bytes);
                        break None;
                    }
                    other => other?,
                };
                match appended {
                    Appended::Stored => {
                        outcome.stored += count - held;
                        outcome.duplicates += held;
                        break Some(stream);
                    }
                    Appended::Duplicate => {
                        // The first copy may not be fsynced yet (its own commit still
                        // waiting, or its append failed after the WAL write).
                        outcome.duplicates += count;
                        break Some(stream);
                    }
                    Appended::Removed(back) => part = back,
                    Appended::Busy(back) => {
                        busy = Some(back);
                        break None;
                    }
                    Appended::Repaired(back) => {
                        // Some of this batch came earlier by repair: store only what the
                        // stream does not hold (any timestamp: a retried batch may differ).
                        let ids: std::collections::HashSet<String> =
                            back.iter().map(|e| e.id.clone()).collect();
                        let mut present = std::collections::HashSet::new();
                        let services = std::collections::BTreeSet::from([service.clone()]);
                        let always = |_: &LogEntry| true;
                        self.scan(
                            &ScanFilter::whole(
                                &tenant,
                                Some(&services),
                                i64::MIN,
                                i64::MAX,
                                &always,
                            ),
                            |entry| {
                                if ids.contains(&entry.id) {
                                    present.insert(entry.id.clone());
                                }
                            },
                        );
                        let rest: Vec<LogEntry> = back
                            .into_iter()
                            .filter(|e| !present.contains(&e.id))
                            .collect();
                        held = count - rest.len();
                        if rest.is_empty() {
                            outcome.duplicates += count;
                            break Some(stream);
                        }
                        part = Part::Owned(rest);
                        filtered = true;
                        received = None;
                    }
                }
            };
            if let Some(part) = busy {
                todo.push_back(((tenant, service), part, positions, Lock::Wait));
                continue;
            }
            touched.extend(stream);
        }
        outcome.too_large.sort_unstable();
        Ok((outcome, touched))
    }

    fn snapshots(&self, tenant: &str) -> Vec<StreamSnapshot> {
        let streams: Vec<Arc<Stream>> = self
            .streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|(_, s)| s.clone())
            .collect();
        streams.iter().map(|s| s.snapshot()).collect()
    }

    /// Newest-first page of matching entries (blocking: call from a blocking thread).
    pub fn query_top(
        &self,
        filter: &ScanFilter<'_>,
        limit: usize,
        cursor: Option<&Cursor>,
    ) -> TopResult {
        let snaps = self.snapshots(filter.tenant);
        let result = scan::top(&snaps, filter, limit, cursor);
        self.metrics
            .corrupt_blocks
            .inc_by(result.stats.corrupt_blocks);
        self.quarantine(filter.tenant, &result.stats.corrupt_segments);
        result
    }

    /// Visits every matching entry (blocking).
    pub fn scan(&self, filter: &ScanFilter<'_>, visit: impl FnMut(&LogEntry)) -> ScanStats {
        let snaps = self.snapshots(filter.tenant);
        let stats = scan::scan(&snaps, filter, visit);
        self.metrics.corrupt_blocks.inc_by(stats.corrupt_blocks);
        self.quarantine(filter.tenant, &stats.corrupt_segments);
        stats
    }

    /// Like [`Store::scan`], on every core: each thread folds into its own accumulator
    /// (blocking; see [`scan::scan_parallel`]).
    pub fn scan_parallel<A: Send>(
        &self,
        filter: &ScanFilter<'_>,
        init: impl Fn() -> A + Sync,
        visit: impl Fn(&mut A, &LogEntry) + Sync,
    ) -> (Vec<A>, ScanStats) {
        self.scan_parallel_summarized(filter, init, visit, None, None)
    }

    /// [`Store::scan_parallel`] answering whole blocks from their index rollup where `summary`
    /// can (count aggregations without an entry predicate), and from their counts by level
    /// where `by_level` wants them (see [`scan::BlockLevelCounts`]).
    pub fn scan_parallel_summarized<A: Send>(
        &self,
        filter: &ScanFilter<'_>,
        init: impl Fn() -> A + Sync,
        visit: impl Fn(&mut A, &LogEntry) + Sync,
        summary: Option<scan::Summary<'_, A>>,
        by_level: Option<scan::BlockLevelCounts<'_, A>>,
    ) -> (Vec<A>, ScanStats) {
        let snaps = self.snapshots(filter.tenant);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (accs, stats) =
            scan::scan_parallel(&snaps, filter, threads, init, visit, summary, by_level);
        self.metrics.corrupt_blocks.inc_by(stats.corrupt_blocks);
        self.quarantine(filter.tenant, &stats.corrupt_segments);
        (accs, stats)
    }

    /// Every (tenant, service) stream on this node, sorted.
    pub fn streams(&self) -> Vec<(String, String)> {
        let streams = self.streams.read().unwrap_or_else(|p| p.into_inner());
        let mut keys: Vec<(String, String)> = streams.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Appends a stream has seen since it was opened (`None`: no such stream).
    pub fn stream_generation(&self, tenant: &str, service: &str) -> Option<u64> {
        self.existing_stream(tenant, service)
            .map(|s| s.generation())
    }

    /// Removes a stream whose data now lives on other members (rebalancing), but only if
    /// nothing was appended since `generation` was read — otherwise returns false and the
    /// caller hands over the newer entries first. Blocking.
    pub fn remove_stream_if_unchanged(
        &self,
        tenant: &str,
        service: &str,
        generation: u64,
    ) -> Result<bool, StorageError> {
        let removed = self.remove_stream(tenant, service, generation)?;
        if removed {
            self.metrics.streams_handed_over.inc();
        }
        Ok(removed)
    }

    /// Removes the streams that hold nothing (see [`Stream::empty_generation`]): their
    /// directory, files and slot under `storage.maxStreams`. Streams come from the records'
    /// tenants and services, and those come and go; a stream whose data retention deleted
    /// must not stay open for good. Returns how many were removed.
    pub fn remove_empty_streams(&self) -> Result<usize, StorageError> {
        let mut removed = 0;
        for stream in self.all_streams() {
            let Some(generation) = stream.empty_generation() else {
                continue;
            };
            // Its quarantined copies are kept until retention deletes them.
            if stream
                .quarantined
                .load(std::sync::atomic::Ordering::Relaxed)
                && !quarantined_in(&stream.dir).is_empty()
            {
                continue;
            }
            if self.remove_stream(&stream.tenant, &stream.service, generation)? {
                removed += 1;
            }
        }
        self.metrics.streams_removed_empty.inc_by(removed as u64);
        Ok(removed)
    }

    /// [`Store::remove_stream_if_unchanged`] without the hand-over's count.
    fn remove_stream(
        &self,
        tenant: &str,
        service: &str,
        generation: u64,
    ) -> Result<bool, StorageError> {
        let key = (tenant.to_string(), service.to_string());
        let (stream, doomed) = {
            let mut streams = self.streams.write().unwrap_or_else(|p| p.into_inner());
            // Checked and marked under the stream's lock, so an append that already holds
            // the stream either lands before (and changes the generation) or sees `removed`
            // and retries on a new incarnation — it never writes into deleted files.
            let Some(stream) = streams
                .get(&key)
                .filter(|s| s.mark_removed_if(generation))
                .cloned()
            else {
                return Ok(false);
            };
            streams.remove(&key);
            // Renamed while the map is still locked: a retried append can only create the
            // new incarnation after the old files left the path. `~` never appears in an
            // encoded name, so recovery can tell these apart.
            let mut doomed_name = stream.dir.file_name().unwrap_or_default().to_os_string();
            doomed_name.push(format!(
                "~removed-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            ));
            let doomed = stream.dir.with_file_name(doomed_name);
            std::fs::rename(&stream.dir, &doomed)
                .map_err(|source| StorageError::io("rename removed stream", &stream.dir, source))?;
            (stream, doomed)
        };
        drop(stream);
        std::fs::remove_dir_all(&doomed)
            .map_err(|source| StorageError::io("delete removed stream", &doomed, source))?;
        Ok(true)
    }

    /// Services of a tenant with data on this node, sorted.
    pub fn services(&self, tenant: &str) -> Vec<String> {
        let streams = self.streams.read().unwrap_or_else(|p| p.into_inner());
        streams
            .keys()
            .filter(|(t, _)| t == tenant)
            .map(|(_, s)| s.clone())
            .collect::<std::collections::BTreeSet<String>>()
            .into_iter()
            .collect()
    }

    /// Quarantines sealed segments in which a read found a corrupt block.
    fn quarantine(&self, tenant: &str, segments: &[(String, u64)]) {
        for (service, seq) in segments {
            let Some(stream) = self.existing_stream(tenant, service) else {
                continue;
            };
            match stream.quarantine_sealed(*seq) {
                Ok(true) => {
                    self.metrics.corrupt_segments.inc();
                    warn!(
                        tenant,
                        service,
                        seq,
                        "segment with a corrupt block quarantined; replicas restore its entries"
                    );
                }
                Ok(false) => {}
                Err(error) => {
                    warn!(%error, tenant, service, seq, "cannot quarantine a corrupt segment")
                }
            }
        }
    }

    /// Tenants with data on this node.
    pub fn tenants(&self) -> Vec<String> {
        let streams = self.streams.read().unwrap_or_else(|p| p.into_inner());
        let mut tenants: Vec<String> = streams.keys().map(|(t, _)| t.clone()).collect();
        tenants.sort();
        tenants.dedup();
        tenants
    }

    fn all_streams(&self) -> Vec<Arc<Stream>> {
        self.streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Seals old segments and applies retention (blocking). Called periodically.
    pub fn maintain(&self) -> Result<(), StorageError> {
        self.relieve_tail_memory();
        // A stream whose seal fails (counted and logged there) holds up neither the others
        // nor retention.
        let mut first_error = None;
        for stream in self.all_streams() {
            match stream.rotate_if_old(&self.config, &self.metrics) {
                // Reported where the sync failed (a log line, a metric, the probes).
                Ok(_) | Err(StorageError::SealRefused(_)) => {}
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        // Quarantined copies are kept for a look at what was lost until retention wants them:
        // past the age limit, and first when over the byte limit.
        let mut quarantined = self.quarantined_files();
        if let Some(max_age) = self.config.retention_max_age {
            let mut kept = Vec::with_capacity(quarantined.len());
            for (modified, size, path) in quarantined {
                if modified.elapsed().is_ok_and(|age| age > max_age) {
                    self.delete_quarantined(&path)?;
                } else {
                    kept.push((modified, size, path));
                }
            }
            quarantined = kept;
        }
        self.quarantined_bytes.store(
            quarantined.iter().map(|(_, size, _)| size).sum(),
            std::sync::atomic::Ordering::Relaxed,
        );
        if let Some(max_age) = self.config.retention_max_age {
            let cutoff = logcluster_proto::time::now_nanos() - max_age.as_nanos() as i64;
            for stream in self.all_streams() {
                for sealed in stream.sealed() {
                    if sealed.max_ts < cutoff && stream.delete_sealed(sealed.seq)? {
                        info!(tenant = %stream.tenant, service = %stream.service, seq = sealed.seq, "retention: deleted segment past max age");
                        self.metrics.retention_deleted_segments.inc();
                    }
                }
            }
        }
        if let Some(max_bytes) = self.config.retention_max_bytes {
            let mut total = self.stats().stored_bytes;
            for (_, size, path) in &quarantined {
                if total <= max_bytes {
                    break;
                }
                self.delete_quarantined(path)?;
                total = total.saturating_sub(*size);
                self.quarantined_bytes
                    .fetch_sub(*size, std::sync::atomic::Ordering::Relaxed);
            }
            let mut all: Vec<(i64, u64, u64, Arc<Stream>)> = Vec::new();
            for stream in self.all_streams() {
                for sealed in stream.sealed() {
                    all.push((sealed.max_ts, sealed.seq, sealed.size, stream.clone()));
                }
            }
            all.sort_by_key(|(max_ts, seq, _, _)| (*max_ts, *seq));
            for (_, seq, size, stream) in all {
                if total <= max_bytes {
                    break;
                }
                if stream.delete_sealed(seq)? {
                    info!(tenant = %stream.tenant, service = %stream.service, seq, "retention: deleted oldest segment over the byte limit");
                    self.metrics.retention_deleted_segments.inc();
                    total = total.saturating_sub(size);
                }
            }
        }
        if let Err(error) = self.remove_empty_streams() {
            first_error.get_or_insert(error);
        }
        if let Err(error) = self.remove_unreferenced_trace_ids() {
            first_error.get_or_insert(error);
        }
        self.refresh_gauges();
        first_error.map_or(Ok(()), Err)
    }

    /// Cuts the largest tails into blocks while the tails together hold more than
    /// `storage.tailMemoryBytes` (appends do this for their own stream; this is for tails
    /// left by streams that went idle).
    fn relieve_tail_memory(&self) {
        let budget = self.config.tail_memory_bytes;
        let held = || usize::try_from(self.metrics.tail_bytes.get()).unwrap_or(0);
        if held() <= budget {
            return;
        }
        let mut streams: Vec<(usize, Arc<Stream>)> = self
            .all_streams()
            .into_iter()
            .map(|stream| (stream.tail_bytes(), stream))
            .collect();
        streams.sort_unstable_by_key(|(held, _)| std::cmp::Reverse(*held));
        for (_, stream) in streams {
            if held() <= budget {
                break;
            }
            // A failed flush is counted and logged there, and tried again later; the
            // other streams still go.
            let _ = stream.relieve_memory(&self.config, &self.metrics);
        }
    }

    fn refresh_gauges(&self) {
        let stats = self.stats();
        self.metrics.stored_bytes.set(stats.stored_bytes as i64);
        self.metrics.segments.set(stats.sealed_segments as i64);
    }

    pub fn stats(&self) -> StoreStats {
        let streams = self.all_streams();
        let mut stats = StoreStats {
            streams: streams.len(),
            ..Default::default()
        };
        for stream in streams {
            let sealed = stream.sealed();
            stats.sealed_segments += sealed.len();
            stats.stored_bytes +=
                sealed.iter().map(|s| s.size).sum::<u64>() + stream.active_bytes();
        }
        stats.stored_bytes += self.books().iter().map(|(_, b)| b.bytes()).sum::<u64>();
        stats.stored_bytes += self
            .quarantined_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        stats
    }

    /// The quarantined copies (`*.corrupt`: segments, open segments) in the streams'
    /// directories, oldest first: (modified, bytes, path).
    fn quarantined_files(&self) -> Vec<(std::time::SystemTime, u64, std::path::PathBuf)> {
        let mut files: Vec<_> = self
            .all_streams()
            .iter()
            .filter(|stream| {
                stream
                    .quarantined
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .flat_map(|stream| quarantined_in(&stream.dir))
            .collect();
        files.sort();
        files
    }

    /// Deletes a quarantined copy for retention; counted.
    fn delete_quarantined(&self, path: &std::path::Path) -> Result<(), StorageError> {
        std::fs::remove_file(path)
            .map_err(|source| StorageError::io("delete quarantined copy", path, source))?;
        info!(path = %path.display(), "retention: deleted a quarantined copy");
        self.metrics.retention_deleted_quarantined.inc();
        Ok(())
    }

    /// Fsyncs every dirty WAL (periodic flush under `FsyncPolicy::Interval`, and shutdown).
    pub async fn flush(&self) -> Result<(), StorageError> {
        sync_streams(self.all_streams(), &self.syncer, &self.metrics)
            .await
            .map_err(|failures| StorageError::Fsync(failures.into_message()))
    }

    /// Final flush before exit: every written record is fsynced.
    pub async fn shutdown(&self) -> Result<(), StorageError> {
        let streams = self.all_streams();
        tokio::task::spawn_blocking(move || {
            // A stream that fails (one whose WAL sync failed before refuses) keeps none of the
            // others from being synced.
            let mut first_error = None;
            for stream in streams {
                if let Err(error) = stream.sync() {
                    warn!(%error, tenant = %stream.tenant, service = %stream.service, "final wal sync failed");
                    first_error.get_or_insert(error);
                }
            }
            first_error.map_or(Ok(()), Err)
        })
        .await
        .map_err(|e| StorageError::Task(e.to_string()))?
    }
}

/// What entries are grouped by: their stream.
trait InStream {
    fn stream_key(&self) -> (&str, &str);
}

impl InStream for LogEntry {
    fn stream_key(&self) -> (&str, &str) {
        (&self.tenant, &self.service)
    }
}

impl InStream for EntryRef<'_> {
    fn stream_key(&self) -> (&str, &str) {
        (self.tenant, self.service)
    }
}

/// Entries grouped by their (tenant, service) stream, with each entry's position in `entries`.
fn group_by_stream<E: InStream>(entries: Vec<E>) -> BTreeMap<StreamKey, (Vec<E>, Vec<u32>)> {
    // Each entry's group, found by its own strings (a name is copied once per stream, not per
    // entry), then every group filled at its final size: no per-entry string copies, and no
    // entry moved twice by a growing vector.
    // Batches come in runs of one stream: the group is looked up once per run.
    let mut groups: foldhash::HashMap<(&str, &str), usize> = Default::default();
    let mut sizes: Vec<usize> = Vec::new();
    let mut run: Option<((&str, &str), usize)> = None;
    let group_of: Vec<usize> = entries
        .iter()
        .map(|entry| {
            let key = entry.stream_key();
            let group = match run {
                Some((previous, group)) if previous == key => group,
                _ => {
                    let next = groups.len();
                    let group = *groups.entry(key).or_insert(next);
                    if group == next {
                        sizes.push(0);
                    }
                    run = Some((key, group));
                    group
                }
            };
            sizes[group] += 1;
            group
        })
        .collect();
    let mut keys: Vec<(String, String)> = vec![Default::default(); groups.len()];
    for ((tenant, service), group) in groups {
        keys[group] = (tenant.to_string(), service.to_string());
    }
    let mut parts: Vec<(Vec<E>, Vec<u32>)> = sizes
        .into_iter()
        .map(|size| (Vec::with_capacity(size), Vec::with_capacity(size)))
        .collect();
    for (position, (entry, group)) in entries.into_iter().zip(group_of).enumerate() {
        parts[group].0.push(entry);
        parts[group].1.push(position as u32);
    }
    keys.into_iter().zip(parts).collect()
}

/// The batch uid an entry id starts with (`<16 hex digits>-<position>`).
pub(crate) fn batch_uid_of(entry_id: &str) -> Option<u64> {
    let (uid, _) = entry_id.split_once('-')?;
    (uid.len() == 16).then(|| u64::from_str_radix(uid, 16).ok())?
}

fn tenant_dir(root: &std::path::Path, tenant: &str) -> PathBuf {
    root.join("streams").join(encode_name(tenant))
}

fn stream_dir(root: &std::path::Path, tenant: &str, service: &str) -> PathBuf {
    tenant_dir(root, tenant).join(encode_name(service))
}

type Recovered = (
    HashMap<StreamKey, Arc<Stream>>,
    HashMap<String, Arc<TraceBook>>,
);

/// A tenant's book drops the lookup table of its window after this long without new ids.
const BOOK_IDLE: std::time::Duration = std::time::Duration::from_secs(300);

fn recover(
    config: &StorageConfig,
    metrics: &StorageMetrics,
    windows: &Arc<WindowCache>,
) -> Result<Recovered, StorageError> {
    let root = config.data_dir.join("streams");
    logcluster_common::durable::create_dir_all(&root)
        .map_err(|source| StorageError::io("create data dir", &root, source))?;
    let mut streams = HashMap::new();
    let mut books = HashMap::new();
    for tenant_dir in read_dirs(&root)? {
        let Some(tenant) = tenant_dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(decode_name)
        else {
            continue;
        };
        let book = Arc::new(TraceBook::open_with(
            &tenant_dir,
            windows.clone(),
            metrics.segment_sync_failures.clone(),
        )?);
        books.insert(tenant.clone(), book.clone());
        for service_dir in read_dirs(&tenant_dir)? {
            // The trace-id book (an encoded name never starts with a dot).
            if service_dir
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
            {
                continue;
            }
            // A handed-over stream whose deletion a crash interrupted.
            if service_dir
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains('~'))
            {
                let _ = std::fs::remove_dir_all(&service_dir);
                continue;
            }
            let Some(service) = service_dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(decode_name)
            else {
                continue;
            };
            let stream = Stream::open(
                &tenant,
                &service,
                service_dir,
                config,
                metrics,
                book.clone(),
            )?;
            streams.insert((tenant.clone(), service), Arc::new(stream));
        }
    }
    if !streams.is_empty() {
        info!(streams = streams.len(), "storage recovered");
    }
    Ok((streams, books))
}

fn read_dirs(dir: &std::path::Path) -> Result<Vec<PathBuf>, StorageError> {
    let mut out = Vec::new();
    for entry in
        std::fs::read_dir(dir).map_err(|source| StorageError::io("list directory", dir, source))?
    {
        let entry = entry.map_err(|source| StorageError::io("list directory", dir, source))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// An entry of stream (t, `service`).
    fn entry(service: &str, message: &str) -> LogEntry {
        LogEntry {
            id: format!("{service}-{message}"),
            tenant: "t".into(),
            service: service.into(),
            message: message.into(),
            timestamp: 1,
            ..Default::default()
        }
    }

    /// A store whose streams (t, a) and (t, b) hold batch 1, and those streams.
    async fn two_streams(dir: &std::path::Path) -> (Arc<Store>, Arc<Stream>, Arc<Stream>) {
        let store = Store::open(StorageConfig::new(dir), StorageMetrics::default())
            .await
            .expect("store");
        store
            .append(1, vec![entry("a", "first"), entry("b", "first")])
            .await
            .expect("first batch");
        let a = store.stream("t", "a").expect("a");
        let b = store.stream("t", "b").expect("b");
        (store, a, b)
    }

    /// Waits (30 s at most) until `stream` holds batch `uid`.
    fn wait_for_batch(stream: &Stream, uid: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stream.has_batch(uid) {
            assert!(
                Instant::now() < deadline,
                "the stream never took its part of batch {uid}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A batch part whose stream another append holds waits until the batch's other parts
    /// are appended: the other streams take their parts meanwhile, and the held one takes
    /// its part once free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_stream_takes_its_part_after_the_batch_s_other_streams() {
        let dir = tempfile::tempdir().expect("tempdir");
        // "a" comes first in the batch's order.
        let (store, a, b) = two_streams(dir.path()).await;
        let held = a.hold();
        let appending = {
            let store = store.clone();
            std::thread::spawn(move || {
                store
                    .append_on_this_thread(2, vec![entry("a", "m"), entry("b", "m")], None)
                    .written
                    .map(|(outcome, _)| outcome.stored)
            })
        };
        wait_for_batch(&b, 2);
        drop(held);
        let stored = appending.join().expect("no panic").expect("appended");
        assert_eq!(stored, 2);
        assert!(a.has_batch(2) && b.has_batch(2));
    }

    /// The same batch sent twice at once while one of its streams is busy (a client's retry
    /// racing its first attempt): each stream stores it once, and the two appends account
    /// for every entry as stored or duplicate.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_raced_by_its_retry_past_a_busy_stream_is_stored_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, a, b) = two_streams(dir.path()).await;
        let held = a.hold();
        let attempt = || {
            let store = store.clone();
            std::thread::spawn(move || {
                let batch = vec![entry("a", "raced"), entry("b", "raced")];
                store
                    .append_on_this_thread(2, batch, None)
                    .written
                    .map(|(outcome, _)| (outcome.stored, outcome.duplicates))
            })
        };
        let (first, second) = (attempt(), attempt());
        wait_for_batch(&b, 2);
        drop(held);
        let first = first.join().expect("no panic").expect("appended");
        let second = second.join().expect("no panic").expect("appended");
        assert_eq!(first.0 + second.0, 2, "{first:?} {second:?}");
        assert_eq!(first.1 + second.1, 2, "{first:?} {second:?}");
        for service in ["a", "b"] {
            let services = std::collections::BTreeSet::from([service.to_string()]);
            let mut messages = Vec::new();
            let always = |_: &LogEntry| true;
            store.scan(
                &ScanFilter::whole("t", Some(&services), i64::MIN, i64::MAX, &always),
                |entry| messages.push(entry.message.clone()),
            );
            messages.sort();
            assert_eq!(messages, ["first", "raced"], "stream {service}");
        }
    }

    proptest::proptest! {
        /// Every entry lands in its (tenant, service) group once, in its batch order.
        #[test]
        fn entries_are_grouped_by_stream_in_order(
            streams in proptest::collection::vec((0u8..3, 0u8..4), 0..200)
        ) {
            let entries: Vec<LogEntry> = streams
                .iter()
                .enumerate()
                .map(|(i, (tenant, service))| LogEntry {
                    id: i.to_string(),
                    tenant: format!("t{tenant}"),
                    service: format!("s{service}"),
                    ..Default::default()
                })
                .collect();
            let mut expected: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
            for entry in &entries {
                expected
                    .entry((entry.tenant.clone(), entry.service.clone()))
                    .or_default()
                    .push(entry.id.clone());
            }
            let grouped: BTreeMap<(String, String), Vec<String>> = group_by_stream(entries)
                .into_iter()
                .map(|(key, (part, positions))| {
                    assert_eq!(part.len(), positions.len());
                    for (entry, position) in part.iter().zip(&positions) {
                        assert_eq!((&entry.tenant, &entry.service), (&key.0, &key.1));
                        // Each entry's position is where it was in the batch.
                        assert_eq!(entry.id, position.to_string());
                    }
                    (key, part.into_iter().map(|e| e.id).collect())
                })
                .collect();
            proptest::prop_assert_eq!(grouped, expected);
        }
    }
}
