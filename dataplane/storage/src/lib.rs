//! Storage: per-stream write-ahead logs, zstd segments with block indexes, retention and
//! crash recovery.
//!
//! A *stream* is (tenant, service). Each stream lives in its own directory with one active
//! WAL (`wal-N.log`), the segment being filled from it (`seg-N.open`) and sealed segments
//! (`seg-M.seg`). An append is durable when its WAL record is fsynced; with the default
//! [`FsyncPolicy::Always`] the caller's future resolves only then (group commit: one fsync
//! covers every append that reached the file before it started). Beside its streams, a
//! tenant's directory holds its trace-id book (`.traces/`, see [`traces`]), which the
//! tenant's blocks refer to for their trace ids. This crate must not know
//! about networks, formats or replicas: it stores `LogEntry` values and answers scans.

mod bloom;
mod columnar;
mod commit;
mod fuse;
mod metrics;
pub mod scan;
pub mod segment;
pub mod sketch;
mod store;
mod stream;
pub mod traces;
pub mod wal;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use commit::{SYNCFS_FROM, file_system_sync_usable};
pub use metrics::StorageMetrics;
pub use scan::{Cursor, ScanFilter, ScanStats, TopResult};
pub use store::{AppendOutcome, Store, StoreStats, Written};

/// When an append counts as durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Acknowledge only after the WAL record is fsynced (group commit). The default.
    Always,
    /// Acknowledge after the write reaches the OS; fsync dirty WALs on this interval. A crash
    /// of the machine (not just the process) can lose up to one interval of acknowledged data.
    Interval(Duration),
}

/// Storage settings (the node configuration maps onto this).
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// Root directory; streams live in `<data_dir>/streams/<tenant>/<service>/`.
    pub data_dir: PathBuf,
    pub fsync: FsyncPolicy,
    /// Raw (uncompressed) bytes of WAL after which the stream's segment is sealed and a new
    /// one started.
    pub segment_max_bytes: u64,
    /// Age after which a non-empty active segment is sealed even if small.
    pub segment_max_age: Duration,
    /// Raw bytes (the entries' WAL records) per compressed block (the unit of reading and
    /// skipping).
    pub block_target_bytes: usize,
    /// Record bytes the streams' tails may hold in memory together: past it, tails at or
    /// above their fair share of it (and at least 16 KiB, or a 64th of it) are cut into blocks before their
    /// target size (on their next append, or by [`Store::maintain`], the largest first, for
    /// idle ones).
    pub tail_memory_bytes: usize,
    pub zstd_level: i32,
    /// Layout of new blocks: [`segment::FORMAT_TEMPLATES`] (the default),
    /// [`segment::FORMAT_COLUMNS`] or [`segment::FORMAT_ROWS`], for as long as a rollback to
    /// a release that reads only those must stay possible (every release reads the layouts
    /// before its own).
    pub block_format: u32,
    /// [`segment::FORMAT_TEMPLATES`] blocks store 32-hex-digit trace ids once per tenant in
    /// its trace-id book ([`traces`]) and refer to them by ordinal (the default); when false
    /// each block holds its own, which releases before the book can read.
    pub shared_trace_ids: bool,
    /// Delete sealed segments whose newest entry is older than this.
    pub retention_max_age: Option<Duration>,
    /// Delete the oldest sealed segments while stored bytes exceed this.
    pub retention_max_bytes: Option<u64>,
    /// How many sealed segments per stream keep their batch ids for de-duplicating retries.
    pub dedup_segments: usize,
    /// Most streams the store creates (those recovered count too); 0: no limit. A batch
    /// part that would create one more is refused ([`StorageError::TooManyStreams`]).
    pub max_streams: usize,
}

impl StorageConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> StorageConfig {
        StorageConfig {
            data_dir: data_dir.into(),
            fsync: FsyncPolicy::Always,
            segment_max_bytes: 50 * 1024 * 1024,
            segment_max_age: Duration::from_secs(3600),
            block_target_bytes: 1024 * 1024,
            tail_memory_bytes: 32 * 1024 * 1024,
            zstd_level: 1,
            block_format: segment::FORMAT_TEMPLATES,
            shared_trace_ids: true,
            retention_max_age: None,
            retention_max_bytes: None,
            dedup_segments: 4,
            max_streams: 10_000,
        }
    }
}

/// Storage failures, one variant per failed action.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("failed to {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("segment {path} is corrupt: {reason}")]
    CorruptSegment { path: PathBuf, reason: String },
    #[error("failed to compress a block")]
    Compress {
        #[source]
        source: std::io::Error,
    },
    #[error("failed to encode an entry: {0}")]
    Encode(String),
    /// A batch part whose WAL record would be over [`wal::MAX_RECORD_LEN`] (entries whose
    /// decoded form is far larger than what was sent, such as JSON whose nested keys expand
    /// when flattened). Nothing of it is written; retrying cannot help.
    #[error(
        "the batch's entries for this stream encode to {bytes} bytes, over the {}-byte limit of a write-ahead log record; send them in smaller batches",
        wal::MAX_RECORD_LEN
    )]
    RecordTooLarge { bytes: usize },
    #[error("the WAL could not be made durable: {0}")]
    Fsync(String),
    /// The store holds `storage.maxStreams` streams: a part for a new (tenant, service) is
    /// refused, the batch's other parts stored.
    #[error(
        "this node holds its limit of {limit} streams (storage.maxStreams): entries of a new tenant and service are refused"
    )]
    TooManyStreams { limit: usize },
    /// An open segment, or a trace-id window its blocks refer to, failed to sync before: it
    /// is not sealed until a restart (the WAL keeps its batches).
    #[error("not sealed: {0}")]
    SealRefused(String),
    #[error("blocks cannot be written and {tail_bytes} bytes already wait in memory; retry later")]
    Backlog { tail_bytes: usize },
    #[error("storage is shutting down")]
    ShuttingDown,
    #[error("storage task failed: {0}")]
    Task(String),
}

impl StorageError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> StorageError {
        StorageError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}
