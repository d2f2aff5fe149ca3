//! Reading: newest-first top-k with a stable cursor, and full scans for aggregations.
//!
//! Blocks are pruned by time range, level mask and token filter before they are read; a block
//! whose checksum fails is skipped, counted and makes the answer `partial` — corrupt data is
//! never returned. Order is (timestamp, id) descending, so a cursor (timestamp, id) of the last
//! returned entry is stable even when many entries share a timestamp.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::fs::File;
use std::sync::Arc;
use std::time::Instant;

use logcluster_proto::LogEntry;

use crate::bloom;
use crate::segment::{self, BlockError, BlockMeta, NeedleScope};
use crate::stream::StreamSnapshot;
use crate::traces::TraceBook;

/// Position after which the next page starts: entries strictly older in (timestamp, id) order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub timestamp: i64,
    pub id: String,
}

impl Cursor {
    /// Opaque text form used by the HTTP API.
    pub fn encode(&self) -> String {
        format!("{}_{}", self.timestamp, self.id)
    }
    pub fn decode(text: &str) -> Option<Cursor> {
        let (ts, id) = text.split_once('_')?;
        Some(Cursor {
            timestamp: ts.parse().ok()?,
            id: id.to_string(),
        })
    }
}

/// What to read. `predicate` is the exact filter; the other fields are pruning hints that
/// must be implied by it (never narrower).
pub struct ScanFilter<'a> {
    pub tenant: &'a str,
    pub services: Option<&'a BTreeSet<String>>,
    /// Inclusive lower bound, Unix ns.
    pub from_ts: i64,
    /// Exclusive upper bound, Unix ns.
    pub to_ts: i64,
    /// Bit n = level n may match.
    pub level_mask: u32,
    /// Tokens every match contains as whole tokens (see `logcluster_proto::tokens`).
    pub required_tokens: &'a [String],
    /// ASCII-lowercase bytes that every match holds, ignoring ASCII case, in the given
    /// string (e.g. a message substring or an exact trace id). Records without it are passed
    /// over before they are decoded. Must be implied by `predicate`.
    pub record_needle: Option<(&'a [u8], NeedleScope)>,
    /// `predicate` and the consumer read only id, timestamps, tenant, service, level and
    /// message of an entry: host, trace id and fields may be left empty (and are then not
    /// decompressed).
    pub core_and_message_only: bool,
    /// `predicate` and the consumer read only timestamps, tenant, service and level: the
    /// scan applies a [`NeedleScope::Message`] `record_needle` exactly (the predicate need
    /// not), and ids, received times, messages, host, trace id and fields may be left
    /// empty.
    pub message_unread: bool,
    pub predicate: &'a (dyn Fn(&LogEntry) -> bool + Sync),
}

impl<'a> ScanFilter<'a> {
    /// Every entry of `services` (all of the tenant's when `None`) in `[from_ts, to_ts)` that
    /// `predicate` keeps, whole: no level, token or needle narrows it.
    pub fn whole(
        tenant: &'a str,
        services: Option<&'a BTreeSet<String>>,
        from_ts: i64,
        to_ts: i64,
        predicate: &'a (dyn Fn(&LogEntry) -> bool + Sync),
    ) -> ScanFilter<'a> {
        ScanFilter {
            tenant,
            services,
            from_ts,
            to_ts,
            level_mask: u32::MAX,
            required_tokens: &[],
            record_needle: None,
            core_and_message_only: false,
            message_unread: false,
            predicate,
        }
    }

    /// The row prefilter of a block read: the same time range, levels and needle.
    fn rows(&self) -> segment::RowFilter<'_> {
        segment::RowFilter {
            from_ts: self.from_ts,
            to_ts: self.to_ts,
            level_mask: self.level_mask,
            needle: self.record_needle,
            core_and_message_only: self.core_and_message_only,
            message_unread: self.message_unread,
        }
    }

    fn entry_in_range(&self, entry: &LogEntry) -> bool {
        self.rows().keeps(entry.timestamp, entry.level) && (self.predicate)(entry)
    }

    fn block_may_match(&self, meta: &BlockMeta, token_hashes: &[u64]) -> bool {
        meta.max_ts >= self.from_ts
            && meta.min_ts < self.to_ts
            && meta.level_mask & self.level_mask != 0
            && token_hashes
                .iter()
                .all(|h| segment::may_hold_token(meta, *h))
    }
}

/// Work done by a read, reported with every answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Blocks read from disk (plus in-memory tails scanned).
    pub objects_read: u64,
    /// Blocks skipped by the index without reading.
    pub objects_skipped: u64,
    pub events_scanned: u64,
    /// Blocks answered from their index rollup without being read (count aggregations).
    pub objects_from_index: u64,
    /// Blocks that could not be read (failed verification, or an I/O error) and were left
    /// out.
    pub corrupt_blocks: u64,
    /// Sealed segments (service, sequence) with a block that failed verification; the store
    /// quarantines them so replicas can restore their entries.
    pub corrupt_segments: Vec<(String, u64)>,
    pub duration_ms: u64,
}

impl ScanStats {
    /// A block that could not be read, of the sealed segment `sealed` (`None`: the open
    /// segment, whose WAL is the durable copy). A block that failed verification marks its
    /// segment for quarantine; a read error (EIO, the file-descriptor limit) may pass, and
    /// only leaves this answer partial.
    fn record_unreadable(&mut self, error: &BlockError, sealed: Option<&(String, u64)>) {
        self.corrupt_blocks += 1;
        if *error == BlockError::Io {
            return;
        }
        if let Some(segment) = sealed
            && !self.corrupt_segments.contains(segment)
        {
            self.corrupt_segments.push(segment.clone());
        }
    }
}

/// Result of [`crate::Store::query_top`].
#[derive(Debug)]
pub struct TopResult {
    pub items: Vec<LogEntry>,
    pub next_cursor: Option<Cursor>,
    pub stats: ScanStats,
}

enum Source {
    Block {
        file: Arc<File>,
        meta: Arc<BlockMeta>,
        /// (service, sequence) of the sealed segment; `None` for the open segment (its WAL
        /// is the durable copy).
        sealed: Option<(String, u64)>,
        /// The tenant's trace-id book.
        traces: Arc<TraceBook>,
    },
    Tail(Arc<crate::stream::TailChunk>),
}

struct Candidate {
    max_ts: i64,
    service: String,
    source: Source,
}

fn candidates(
    snapshots: &[StreamSnapshot],
    filter: &ScanFilter<'_>,
    stats: &mut ScanStats,
) -> Vec<Candidate> {
    let hashes: Vec<u64> = filter
        .required_tokens
        .iter()
        .map(|t| bloom::fnv1a64(t.to_ascii_lowercase().as_bytes()))
        .collect();
    let mut out = Vec::new();
    for snap in snapshots {
        if let Some(services) = filter.services
            && !services.contains(&snap.service)
        {
            continue;
        }
        for sealed in &snap.sealed {
            if sealed.max_ts < filter.from_ts || sealed.min_ts >= filter.to_ts {
                stats.objects_skipped += sealed.blocks.len() as u64;
                continue;
            }
            for meta in &sealed.blocks {
                if filter.block_may_match(meta, &hashes) {
                    out.push(Candidate {
                        max_ts: meta.max_ts,
                        service: snap.service.clone(),
                        source: Source::Block {
                            file: sealed.file.clone(),
                            meta: meta.clone(),
                            sealed: Some((snap.service.clone(), sealed.seq)),
                            traces: snap.traces.clone(),
                        },
                    });
                } else {
                    stats.objects_skipped += 1;
                }
            }
        }
        for meta in &snap.open_blocks {
            if filter.block_may_match(meta, &hashes) {
                out.push(Candidate {
                    max_ts: meta.max_ts,
                    service: snap.service.clone(),
                    source: Source::Block {
                        file: snap.open_file.clone(),
                        meta: meta.clone(),
                        sealed: None,
                        traces: snap.traces.clone(),
                    },
                });
            } else {
                stats.objects_skipped += 1;
            }
        }
        for chunk in &snap.tail {
            out.push(Candidate {
                max_ts: chunk.max_ts,
                service: snap.service.clone(),
                source: Source::Tail(chunk.clone()),
            });
        }
    }
    out
}

/// Counts of whole blocks by level for a count aggregation whose predicate reads nothing but
/// levels, time and service ([`ScanFilter::message_unread`]) and whose time buckets are the
/// consumer's business: `wants` says whether it can take a block's counts as a whole (say,
/// the block lies in one bucket), `add` takes them (level, rows).
pub struct BlockLevelCounts<'a, A> {
    pub wants: &'a (dyn Fn(&BlockMeta) -> bool + Sync),
    pub add: AddBlockLevelCounts<'a, A>,
}

/// Takes a block's (level, rows) counts into an accumulator, given the block's service.
pub type AddBlockLevelCounts<'a, A> = &'a (dyn Fn(&mut A, &str, &BlockMeta, &[(i32, u64)]) + Sync);

/// A block's counts by level without decoding its rows: `Some(None)` when they cannot be
/// had that way, `None` when the block is corrupt or unreadable (recorded in `stats`).
fn count_by_level(
    candidate: &Candidate,
    filter: &ScanFilter<'_>,
    stats: &mut ScanStats,
) -> Option<Option<Vec<(i32, u64)>>> {
    let Source::Block {
        file, meta, sealed, ..
    } = &candidate.source
    else {
        return Some(None);
    };
    let counted = segment::count_block_by_level(file, meta, &filter.rows());
    match counted {
        Ok(Some(counts)) => {
            stats.objects_read += 1;
            Some(Some(counts))
        }
        Ok(None) => Some(None),
        Err(error) => {
            stats.objects_read += 1;
            stats.record_unreadable(&error, sealed.as_ref());
            None
        }
    }
}

/// Reads a candidate's entries; `None` when the block is corrupt or unreadable.
fn load(
    candidate: &Candidate,
    filter: &ScanFilter<'_>,
    stats: &mut ScanStats,
) -> Option<Arc<Vec<LogEntry>>> {
    stats.objects_read += 1;
    match &candidate.source {
        Source::Tail(chunk) => match (chunk.entries(), filter.rows().exact_message_needle()) {
            // Block reads apply such a needle themselves; in-memory entries are filtered
            // here (the predicate does not read messages).
            (chunk, Some(needle)) => {
                let holding: Vec<LogEntry> = chunk
                    .iter()
                    .filter(|e| segment::contains_ignore_ascii_case(e.message.as_bytes(), needle))
                    .cloned()
                    .collect();
                stats.events_scanned += (chunk.len() - holding.len()) as u64;
                Some(Arc::new(holding))
            }
            (chunk, None) => Some(chunk.clone()),
        },
        Source::Block {
            file,
            meta,
            sealed,
            traces,
        } => {
            let decoded = segment::read_block(file, meta).and_then(|bytes| {
                segment::decode_block_filtered(&bytes, meta, &filter.rows(), Some(traces))
            });
            match decoded {
                Ok((entries, passed_over)) => {
                    // Passed-over records were scanned (and did not match).
                    stats.events_scanned += passed_over;
                    Some(Arc::new(entries))
                }
                Err(error) => {
                    stats.record_unreadable(&error, sealed.as_ref());
                    None
                }
            }
        }
    }
}

/// Newest-first top `limit` entries strictly after `cursor`.
pub fn top(
    snapshots: &[StreamSnapshot],
    filter: &ScanFilter<'_>,
    limit: usize,
    cursor: Option<&Cursor>,
) -> TopResult {
    let started = Instant::now();
    let mut stats = ScanStats::default();
    let mut cands = candidates(snapshots, filter, &mut stats);
    cands.sort_by_key(|c| Reverse(c.max_ts));
    // Min-heap of the best `limit` keys so far; the entries ride along.
    let mut heap: BinaryHeap<Reverse<(i64, String, usize)>> = BinaryHeap::new();
    let mut kept: Vec<Option<LogEntry>> = Vec::new();
    let limit = limit.max(1);
    for cand in &cands {
        if heap.len() >= limit
            && let Some(Reverse((min_ts, _, _))) = heap.peek()
            && cand.max_ts < *min_ts
        {
            stats.objects_skipped += 1;
            continue;
        }
        if let (Some(c), Source::Block { meta, .. }) = (cursor, &cand.source)
            && meta.min_ts > c.timestamp
        {
            stats.objects_skipped += 1;
            continue;
        }
        let Some(entries) = load(cand, filter, &mut stats) else {
            continue;
        };
        for entry in entries.iter() {
            stats.events_scanned += 1;
            if let Some(c) = cursor
                && (entry.timestamp, entry.id.as_str()) >= (c.timestamp, c.id.as_str())
            {
                continue;
            }
            if heap.len() >= limit
                && let Some(Reverse((ts, id, _))) = heap.peek()
                && (entry.timestamp, entry.id.as_str()) <= (*ts, id.as_str())
            {
                continue;
            }
            if !filter.entry_in_range(entry) {
                continue;
            }
            kept.push(Some(entry.clone()));
            heap.push(Reverse((entry.timestamp, entry.id.clone(), kept.len() - 1)));
            if heap.len() > limit
                && let Some(Reverse((_, _, slot))) = heap.pop()
            {
                kept[slot] = None;
            }
        }
    }
    let mut keys: Vec<(i64, String, usize)> = heap.into_iter().map(|Reverse(k)| k).collect();
    keys.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
    let full = keys.len() >= limit;
    let items: Vec<LogEntry> = keys
        .into_iter()
        .filter_map(|(_, _, slot)| kept[slot].take())
        .collect();
    let next_cursor = if full {
        items.last().map(|e| Cursor {
            timestamp: e.timestamp,
            id: e.id.clone(),
        })
    } else {
        None
    };
    stats.duration_ms = started.elapsed().as_millis() as u64;
    TopResult {
        items,
        next_cursor,
        stats,
    }
}

/// Calls `visit` with every matching entry (any order).
pub fn scan(
    snapshots: &[StreamSnapshot],
    filter: &ScanFilter<'_>,
    mut visit: impl FnMut(&LogEntry),
) -> ScanStats {
    let started = Instant::now();
    let mut stats = ScanStats::default();
    let cands = candidates(snapshots, filter, &mut stats);
    for cand in &cands {
        let Some(entries) = load(cand, filter, &mut stats) else {
            continue;
        };
        for entry in entries.iter() {
            stats.events_scanned += 1;
            if filter.entry_in_range(entry) {
                visit(entry);
            }
        }
    }
    stats.duration_ms = started.elapsed().as_millis() as u64;
    stats
}

/// Folds a whole block into an accumulator from its metadata alone (`(acc, service, meta)`),
/// or declines (false) so the block is read. Only offered blocks lie entirely inside the
/// filter's time range; the caller must know its predicate holds for every entry.
pub type Summary<'a, A> = &'a (dyn Fn(&mut A, &str, &BlockMeta) -> bool + Sync);

/// [`scan`] on up to `threads` threads: candidate blocks are dealt out round-robin and each
/// thread folds the entries it visits into an accumulator of its own (no shared state on the
/// hot path); the caller merges the accumulators. Small scans stay on the calling thread.
/// With a `summary`, blocks it can account for from their index are not read at all.
pub fn scan_parallel<A: Send>(
    snapshots: &[StreamSnapshot],
    filter: &ScanFilter<'_>,
    threads: usize,
    init: impl Fn() -> A + Sync,
    visit: impl Fn(&mut A, &LogEntry) + Sync,
    summary: Option<Summary<'_, A>>,
    by_level: Option<BlockLevelCounts<'_, A>>,
) -> (Vec<A>, ScanStats) {
    let started = Instant::now();
    let mut stats = ScanStats::default();
    let cands = candidates(snapshots, filter, &mut stats);
    let threads = if cands.len() < 8 {
        1
    } else {
        threads.clamp(1, cands.len())
    };
    let work = |first: usize| {
        let mut acc = init();
        let mut local = ScanStats::default();
        for cand in cands.iter().skip(first).step_by(threads) {
            if let (Some(summary), Source::Block { meta, .. }) = (summary, &cand.source)
                && meta.min_ts >= filter.from_ts
                && meta.max_ts < filter.to_ts
                && summary(&mut acc, &cand.service, meta)
            {
                local.objects_from_index += 1;
                continue;
            }
            if let (Some(by_level), Source::Block { meta, .. }) = (&by_level, &cand.source)
                && filter.message_unread
                && segment::may_count_by_level(meta, &filter.rows())
                && (by_level.wants)(meta)
            {
                match count_by_level(cand, filter, &mut local) {
                    Some(Some(counts)) => {
                        local.events_scanned += u64::from(meta.count);
                        (by_level.add)(&mut acc, &cand.service, meta, &counts);
                        continue;
                    }
                    // Rows must be decoded.
                    Some(None) => {}
                    // Corrupt: counted and left out like a failed read.
                    None => continue,
                }
            }
            let Some(entries) = load(cand, filter, &mut local) else {
                continue;
            };
            for entry in entries.iter() {
                local.events_scanned += 1;
                if filter.entry_in_range(entry) {
                    visit(&mut acc, entry);
                }
            }
        }
        (acc, local)
    };
    let parts: Vec<(A, ScanStats)> = if threads == 1 {
        vec![work(0)]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|first| {
                    let work = &work;
                    scope.spawn(move || work(first))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        })
    };
    let mut accs = Vec::with_capacity(parts.len());
    for (acc, local) in parts {
        stats.objects_read += local.objects_read;
        stats.events_scanned += local.events_scanned;
        stats.objects_from_index += local.objects_from_index;
        stats.corrupt_blocks += local.corrupt_blocks;
        for segment in local.corrupt_segments {
            if !stats.corrupt_segments.contains(&segment) {
                stats.corrupt_segments.push(segment);
            }
        }
        accs.push(acc);
    }
    stats.duration_ms = started.elapsed().as_millis() as u64;
    (accs, stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_block_that_failed_verification_marks_its_segment_for_quarantine() {
        let segment = ("api".to_string(), 7);
        let mut stats = ScanStats::default();
        stats.record_unreadable(&BlockError::Io, Some(&segment));
        assert_eq!((stats.corrupt_blocks, stats.corrupt_segments.len()), (1, 0));
        for error in [
            BlockError::Checksum,
            BlockError::Decompress,
            BlockError::Truncated,
            BlockError::Decode,
            BlockError::TraceIds,
        ] {
            stats.record_unreadable(&error, Some(&segment));
        }
        // The open segment's blocks are never quarantined: its WAL is the durable copy.
        stats.record_unreadable(&BlockError::Checksum, None);
        assert_eq!(stats.corrupt_blocks, 7);
        assert_eq!(stats.corrupt_segments, vec![segment]);
    }
}
