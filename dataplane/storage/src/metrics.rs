//! Storage metrics (registered by the node into its Prometheus registry).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Counters and gauges of one store. Cloning shares the underlying values.
#[derive(Clone, Debug)]
pub struct StorageMetrics {
    pub appended_entries: Counter,
    pub appended_bytes: Counter,
    pub duplicate_batches: Counter,
    pub fsyncs: Counter,
    pub file_system_syncs: Counter,
    pub file_system_sync_seconds: Histogram,
    pub wal_sync_failures: Counter,
    /// Open segments and trace-id windows whose fsync failed (never sealed on until a
    /// restart).
    pub segment_sync_failures: Counter,
    pub fsync_seconds: Histogram,
    pub rotations: Counter,
    /// Block flushes and segment rotations that failed after a batch was in the WAL.
    pub seal_failures: Counter,
    /// Batch parts refused because blocks cannot be written and the tail is full.
    pub backlog_refusals: Counter,
    /// Batch parts refused because their WAL record would be over the record limit.
    pub too_large_parts: Counter,
    /// Record bytes of the streams' tails (not yet compressed into blocks), and how many
    /// streams have one: what `storage.tailMemoryBytes` bounds.
    pub tail_bytes: Gauge,
    pub tail_streams: Gauge,
    /// Blocks cut before their target size because the tails together held more than
    /// `storage.tailMemoryBytes`.
    pub memory_flushes: Counter,
    pub stored_bytes: Gauge,
    pub segments: Gauge,
    pub wal_truncated_bytes: Counter,
    /// Entries refused because their stream would exceed `storage.maxStreams`.
    pub streams_refused: Counter,
    /// Damaged WAL records skipped at recovery (the records after them kept).
    pub wal_corrupt_records: Counter,
    pub corrupt_segments: Counter,
    pub corrupt_blocks: Counter,
    pub retention_deleted_segments: Counter,
    /// Quarantined copies (`*.corrupt`) deleted by retention.
    pub retention_deleted_quarantined: Counter,
    pub trace_windows_deleted: Counter,
    pub streams_handed_over: Counter,
    /// Streams removed because they held nothing (retention took all their data).
    pub streams_removed_empty: Counter,
}

impl Default for StorageMetrics {
    fn default() -> Self {
        StorageMetrics {
            appended_entries: Counter::default(),
            appended_bytes: Counter::default(),
            duplicate_batches: Counter::default(),
            fsyncs: Counter::default(),
            file_system_syncs: Counter::default(),
            file_system_sync_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            wal_sync_failures: Counter::default(),
            segment_sync_failures: Counter::default(),
            fsync_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            rotations: Counter::default(),
            seal_failures: Counter::default(),
            backlog_refusals: Counter::default(),
            too_large_parts: Counter::default(),
            tail_bytes: Gauge::default(),
            tail_streams: Gauge::default(),
            memory_flushes: Counter::default(),
            stored_bytes: Gauge::default(),
            segments: Gauge::default(),
            wal_truncated_bytes: Counter::default(),
            streams_refused: Counter::default(),
            wal_corrupt_records: Counter::default(),
            corrupt_segments: Counter::default(),
            corrupt_blocks: Counter::default(),
            retention_deleted_segments: Counter::default(),
            retention_deleted_quarantined: Counter::default(),
            trace_windows_deleted: Counter::default(),
            streams_handed_over: Counter::default(),
            streams_removed_empty: Counter::default(),
        }
    }
}

impl StorageMetrics {
    /// Registers every metric under the `logcluster_storage` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("logcluster_storage");
        r.register(
            "appended_entries",
            "Entries written to the WAL",
            self.appended_entries.clone(),
        );
        r.register(
            "appended_bytes",
            "Encoded bytes written to the WAL",
            self.appended_bytes.clone(),
        );
        r.register(
            "duplicate_batches",
            "Batch parts skipped because their batch id was already stored",
            self.duplicate_batches.clone(),
        );
        r.register(
            "fsyncs",
            "WAL fsyncs (one per dirty WAL in a group commit round that does not sync the file system at once)",
            self.fsyncs.clone(),
        );
        r.register(
            "file_system_syncs",
            "Group commit rounds that made many dirty WALs durable with one syncfs of the data directory's file system instead of an fsync each",
            self.file_system_syncs.clone(),
        );
        r.register(
            "file_system_sync_seconds",
            "Duration of those syncfs calls (they write whatever else is dirty on the file system too)",
            self.file_system_sync_seconds.clone(),
        );
        r.register(
            "wal_sync_failures",
            "Streams whose WAL failed to sync (an fsync, or a syncfs covering it), or whose torn write could not be cut back: they answer retry-later until the node restarts",
            self.wal_sync_failures.clone(),
        );
        r.register(
            "segment_sync_failures",
            "Open segments and trace-id windows whose fsync failed: no segment that needs them is sealed until the node restarts and rebuilds it from the WAL (which keeps the batches meanwhile)",
            self.segment_sync_failures.clone(),
        );
        r.register(
            "fsync_seconds",
            "Duration of WAL fsyncs",
            self.fsync_seconds.clone(),
        );
        r.register(
            "rotations",
            "Segments sealed (rotations)",
            self.rotations.clone(),
        );
        r.register(
            "backlog_refusals",
            "Batch parts refused (retry later) because blocks could not be written and the unsealed tail was full",
            self.backlog_refusals.clone(),
        );
        r.register(
            "too_large_parts",
            "Batch parts refused (their entries rejected, not retried) because their write-ahead log record would be over the 256 MiB record limit",
            self.too_large_parts.clone(),
        );
        r.register(
            "seal_failures",
            "Block flushes and segment rotations that failed after the batches were in the WAL (the batches stay in the WAL; the work is tried again after a second); a failure after the rename (directory fsync, deleting the sealed WAL) is counted too, and recovery finishes it",
            self.seal_failures.clone(),
        );
        r.register(
            "tail_bytes",
            "Record bytes held in memory by the streams' tails, not yet compressed into blocks (bounded by storage.tailMemoryBytes)",
            self.tail_bytes.clone(),
        );
        r.register(
            "tail_streams",
            "Streams holding a tail in memory",
            self.tail_streams.clone(),
        );
        r.register(
            "memory_flushes",
            "Blocks cut before their target size because the tails together held more than storage.tailMemoryBytes",
            self.memory_flushes.clone(),
        );
        r.register(
            "stored_bytes",
            "Bytes on disk: sealed segments, open segments and WALs",
            self.stored_bytes.clone(),
        );
        r.register("segments", "Sealed segments", self.segments.clone());
        r.register(
            "wal_truncated_bytes",
            "Bytes cut from WAL tails at recovery (torn writes)",
            self.wal_truncated_bytes.clone(),
        );
        r.register(
            "wal_corrupt_records",
            "Damaged WAL records skipped at recovery, with intact records after them (which are kept)",
            self.wal_corrupt_records.clone(),
        );
        r.register(
            "streams_refused",
            "Entries refused because their stream would be new and the node holds storage.maxStreams streams",
            self.streams_refused.clone(),
        );
        r.register(
            "corrupt_segments",
            "Segments quarantined because their index or a block failed verification",
            self.corrupt_segments.clone(),
        );
        r.register(
            "corrupt_blocks",
            "Blocks skipped because they failed verification or could not be read",
            self.corrupt_blocks.clone(),
        );
        r.register(
            "retention_deleted_quarantined",
            "Quarantined copies (*.corrupt) deleted by retention (past its age, or first when over its bytes)",
            self.retention_deleted_quarantined.clone(),
        );
        r.register(
            "retention_deleted_segments",
            "Segments deleted by retention",
            self.retention_deleted_segments.clone(),
        );
        r.register(
            "trace_windows_deleted",
            "Trace-id book windows deleted because no block refers to them any more",
            self.trace_windows_deleted.clone(),
        );
        r.register(
            "streams_removed_empty",
            "Streams removed because they held nothing any more (their segments all deleted by retention)",
            self.streams_removed_empty.clone(),
        );
        r.register(
            "streams_handed_over",
            "Streams deleted after their new owners confirmed holding them (rebalancing, drain)",
            self.streams_handed_over.clone(),
        );
    }
}
