//! Segments: zstd-compressed blocks of entries with a per-block index.
//!
//! File layout:
//! ```text
//! "LCSEG001"                                   8-byte magic
//! block 0 … block n                            see below
//! index                                        prost SegmentIndex
//! [u64 index_offset][u32 index_len][u32 crc32(index)]["LCSEGEND"]   24-byte footer
//! ```
//! Each block's index entry holds its offset, length, CRC of the compressed bytes, time range,
//! level mask and token filter, so a query reads only blocks that can match and detects a
//! corrupt block before decompressing it. A segment is written as `seg-N.open` while its
//! stream is active (blocks only; its index lives in memory and the WAL is the durable copy),
//! and sealed by appending index and footer, fsyncing and renaming to `seg-N.seg`.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::hash::BuildHasherDefault;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use logcluster_proto::tokens::for_each_token_hash;
use logcluster_proto::{EntryRef, FieldRef, LogEntry};
use prost::Message;

use crate::traces::TraceBook;
use crate::{StorageError, bloom};

pub const SEG_MAGIC: &[u8; 8] = b"LCSEG001";
pub const FOOTER_MAGIC: &[u8; 8] = b"LCSEGEND";
pub const FOOTER_LEN: usize = 24;
/// A block larger than this (compressed or raw) is treated as corrupt.
pub(crate) const MAX_BLOCK_LEN: usize = 512 * 1024 * 1024;

/// Index entry of one block.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BlockMeta {
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    #[prost(uint32, tag = "2")]
    pub len: u32,
    #[prost(uint32, tag = "3")]
    pub crc: u32,
    #[prost(int64, tag = "4")]
    pub min_ts: i64,
    #[prost(int64, tag = "5")]
    pub max_ts: i64,
    #[prost(uint32, tag = "6")]
    pub count: u32,
    /// Bit n set when an entry of level n is in the block.
    #[prost(uint32, tag = "7")]
    pub level_mask: u32,
    #[prost(bytes = "vec", tag = "8")]
    pub bloom: Vec<u8>,
    #[prost(uint32, tag = "9")]
    pub raw_len: u32,
    /// Entries per (minute, level): count aggregations over whole blocks are answered from
    /// here without decoding. Absent in blocks written before it existed (those are decoded).
    #[prost(message, repeated, tag = "10")]
    pub rollup: Vec<RollupCell>,
    /// Per numeric free-form field: count, sum, min, max and a quantile sketch of its values
    /// in this block (metric functions over whole blocks are answered from here).
    #[prost(message, repeated, tag = "11")]
    pub numeric: Vec<NumericSummary>,
    /// Whether `numeric` covers every numeric field of the block (false when the block has
    /// more than [`MAX_NUMERIC_FIELDS`]; then a field missing from `numeric` may still be in
    /// the entries).
    #[prost(bool, tag = "12")]
    pub numeric_complete: bool,
    /// [`FORMAT_ROWS`] (0, blocks written before the column layout), [`FORMAT_COLUMNS`] or
    /// [`FORMAT_TEMPLATES`].
    #[prost(uint32, tag = "13")]
    pub format: u32,
    /// Column blocks: compressed and raw lengths of their sections (`columnar::Sections`).
    #[prost(uint32, repeated, tag = "14")]
    pub sections: Vec<u32>,
    /// [`FORMAT_TEMPLATES`] blocks: CRC of the shape section alone, so that counts read from
    /// it ([`count_block_by_level`]) fetch and verify only that section.
    #[prost(uint32, tag = "15")]
    pub shape_crc: u32,
    /// The token filter as a binary fuse filter (`fuse`), in place of `bloom`: written for
    /// [`FORMAT_TEMPLATES`] blocks with enough distinct tokens.
    #[prost(bytes = "vec", tag = "16")]
    pub fuse: Vec<u8>,
    /// [`FORMAT_TEMPLATES`] blocks: the window of the tenant's trace-id book
    /// ([`crate::traces`]) that their 32-hex-digit trace ids are ordinals of; 0 when they
    /// are stored in the block.
    #[prost(uint64, tag = "17")]
    pub trace_window: u64,
}

/// Whether a block may hold a token (by its hash): "certainly not" only when its token
/// filter says so.
pub fn may_hold_token(meta: &BlockMeta, hash: u64) -> bool {
    if meta.fuse.is_empty() {
        bloom::may_contain(&meta.bloom, hash)
    } else {
        crate::fuse::may_contain(&meta.fuse, hash)
    }
}

/// Block format: one zstd frame of length-prefixed protobuf records.
pub const FORMAT_ROWS: u32 = 0;
/// Block format: entries stored column by column in three zstd frames (`columnar`).
pub const FORMAT_COLUMNS: u32 = 1;
/// Block format: [`FORMAT_COLUMNS`] with messages stored as templates and values in two
/// frames (`columnar::templates`); the default.
pub const FORMAT_TEMPLATES: u32 = 2;

/// Which of a record's strings holds a record needle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NeedleScope {
    /// Any of them (id, tenant, service, message, host, trace id, field keys and values).
    #[default]
    Record,
    Message,
    Host,
    TraceId,
}

/// Which rows of a block to decode: a cheap prefilter run before rows are materialized (it
/// may keep rows that the query's predicate then refuses, never the other way round).
#[derive(Clone, Copy, Debug)]
pub struct RowFilter<'a> {
    /// Inclusive lower bound, Unix ns.
    pub from_ts: i64,
    /// Exclusive upper bound, Unix ns.
    pub to_ts: i64,
    /// Bit n = level n (levels outside 0..=31 clamped) may be kept.
    pub level_mask: u32,
    /// ASCII-lowercase bytes every kept row holds (ignoring ASCII case) in the given string.
    pub needle: Option<(&'a [u8], NeedleScope)>,
    /// The consumer reads only id, timestamps, tenant, service, level and message: column
    /// blocks may leave host, trace id and fields empty. Row blocks decode everything.
    pub core_and_message_only: bool,
    /// The consumer reads only timestamps, tenant, service and level: a
    /// [`NeedleScope::Message`] needle is then applied exactly (ASCII case ignored), and
    /// column blocks may leave ids, received times, messages, host, trace id and fields
    /// empty.
    pub message_unread: bool,
}

impl RowFilter<'_> {
    /// Every row, every field.
    pub fn everything() -> RowFilter<'static> {
        RowFilter {
            from_ts: i64::MIN,
            to_ts: i64::MAX,
            level_mask: u32::MAX,
            needle: None,
            core_and_message_only: false,
            message_unread: false,
        }
    }

    /// The message needle that must be applied exactly ([`RowFilter::message_unread`]).
    pub fn exact_message_needle(&self) -> Option<&[u8]> {
        match self.needle {
            Some((needle, NeedleScope::Message)) if self.message_unread => Some(needle),
            _ => None,
        }
    }

    /// Whether a row with this timestamp and level is kept (before the needle).
    pub fn keeps(&self, timestamp: i64, level: i32) -> bool {
        timestamp >= self.from_ts
            && timestamp < self.to_ts
            && self.level_mask & (1 << level.clamp(0, 31)) != 0
    }
}

/// Numeric fields summarized per block, at most.
pub const MAX_NUMERIC_FIELDS: usize = 32;

/// The values of one numeric field in a block.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NumericSummary {
    #[prost(string, tag = "1")]
    pub field: String,
    #[prost(uint64, tag = "2")]
    pub count: u64,
    #[prost(double, tag = "3")]
    pub sum: f64,
    #[prost(double, tag = "4")]
    pub min: f64,
    #[prost(double, tag = "5")]
    pub max: f64,
    #[prost(sint32, repeated, tag = "6")]
    pub positive_index: Vec<i32>,
    #[prost(uint64, repeated, tag = "7")]
    pub positive_count: Vec<u64>,
    #[prost(sint32, repeated, tag = "8")]
    pub negative_index: Vec<i32>,
    #[prost(uint64, repeated, tag = "9")]
    pub negative_count: Vec<u64>,
    #[prost(uint64, tag = "10")]
    pub zeros: u64,
}

impl NumericSummary {
    /// The quantile sketch of the values.
    pub fn sketch(&self) -> crate::sketch::Sketch {
        crate::sketch::Sketch {
            positive: self
                .positive_index
                .iter()
                .copied()
                .zip(self.positive_count.iter().copied())
                .collect(),
            negative: self
                .negative_index
                .iter()
                .copied()
                .zip(self.negative_count.iter().copied())
                .collect(),
            zeros: self.zeros,
        }
    }
}

/// Accumulates a field's values the way query aggregations fold them.
#[derive(Default)]
struct NumericFold {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    sketch: crate::sketch::Sketch,
}

impl NumericFold {
    fn add(&mut self, v: f64) {
        if self.count == 0 {
            self.min = v;
            self.max = v;
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.sum += v;
        self.count += 1;
        self.sketch.add(v);
    }

    fn into_summary(self, field: String) -> NumericSummary {
        NumericSummary {
            field,
            count: self.count,
            sum: self.sum,
            min: self.min,
            max: self.max,
            positive_index: self.sketch.positive.keys().copied().collect(),
            positive_count: self.sketch.positive.values().copied().collect(),
            negative_index: self.sketch.negative.keys().copied().collect(),
            negative_count: self.sketch.negative.values().copied().collect(),
            zeros: self.sketch.zeros,
        }
    }
}

/// The numeric fields of a block's entries: at most [`MAX_NUMERIC_FIELDS`], the first seen
/// (entries in order, each entry's fields in key order).
#[derive(Default)]
struct NumericFolds {
    folds: Vec<(String, NumericFold)>,
    /// Where the previous entry's numeric values went, in order ([`usize::MAX`]: nowhere).
    /// Entries of a block mostly have the same numeric fields, so each value is tried first
    /// where the previous entry's value at its position went.
    last: Vec<usize>,
    /// A numeric field was left out (there were more than [`MAX_NUMERIC_FIELDS`]).
    incomplete: bool,
}

impl NumericFolds {
    fn add(&mut self, entry: &EntryRef<'_>) {
        let mut position = 0;
        for &(key, value) in &entry.fields {
            let Some(v) = value.as_f64() else {
                continue;
            };
            let found = match self.last.get(position) {
                Some(&at) if self.folds.get(at).is_some_and(|(k, _)| *k == key) => Some(at),
                _ => self.folds.iter().position(|(k, _)| *k == key),
            };
            let at = match found {
                Some(at) => at,
                None if self.folds.len() < MAX_NUMERIC_FIELDS => {
                    self.folds.push((key.to_string(), NumericFold::default()));
                    self.folds.len() - 1
                }
                None => {
                    self.incomplete = true;
                    usize::MAX
                }
            };
            if let Some((_, fold)) = self.folds.get_mut(at) {
                fold.add(v);
            }
            match self.last.get_mut(position) {
                Some(slot) => *slot = at,
                None => self.last.push(at),
            }
            position += 1;
        }
    }

    /// The summaries in field order, and whether every numeric field has one.
    fn into_summaries(mut self) -> (Vec<NumericSummary>, bool) {
        self.folds.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let summaries = self
            .folds
            .into_iter()
            .map(|(field, fold)| fold.into_summary(field))
            .collect();
        (summaries, !self.incomplete)
    }
}

/// One cell of a block's rollup.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct RollupCell {
    /// Minutes since the Unix epoch (`timestamp.div_euclid(60 s)`).
    #[prost(int64, tag = "1")]
    pub minute: i64,
    #[prost(uint32, tag = "2")]
    pub level: u32,
    #[prost(uint32, tag = "3")]
    pub count: u32,
}

/// Nanoseconds per rollup minute.
pub const ROLLUP_NS: i64 = 60_000_000_000;

/// The index of a sealed segment.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SegmentIndex {
    #[prost(string, tag = "1")]
    pub tenant: String,
    #[prost(string, tag = "2")]
    pub service: String,
    #[prost(uint64, tag = "3")]
    pub seq: u64,
    #[prost(message, repeated, tag = "4")]
    pub blocks: Vec<BlockMeta>,
    /// Batch ids stored in this segment, for idempotent retries after rotation.
    #[prost(fixed64, repeated, tag = "5")]
    pub batch_uids: Vec<u64>,
    /// Original batch ids of entries that arrived here by repair (under another uid): a
    /// later copy of such a batch is filtered by id instead of refused or stored twice.
    #[prost(fixed64, repeated, tag = "6")]
    pub repaired_uids: Vec<u64>,
}

impl SegmentIndex {
    pub fn min_ts(&self) -> i64 {
        self.blocks
            .iter()
            .map(|b| b.min_ts)
            .min()
            .unwrap_or(i64::MAX)
    }
    pub fn max_ts(&self) -> i64 {
        self.blocks
            .iter()
            .map(|b| b.max_ts)
            .max()
            .unwrap_or(i64::MIN)
    }
    pub fn entries(&self) -> u64 {
        self.blocks.iter().map(|b| u64::from(b.count)).sum()
    }
}

/// Calls `f` with the hash of every token that the block filter indexes for `entry`.
pub fn for_each_indexed_token(entry: &LogEntry, f: impl FnMut(u64)) {
    for_each_token_but(&EntryRef::of(entry), false, false, None, f);
}

/// [`for_each_indexed_token`], leaving out the host or the trace id when told to (those of
/// the previous entry of a block, whose tokens are already known), and a host whose tokens
/// `known` knows.
fn for_each_token_but(
    entry: &EntryRef<'_>,
    host: bool,
    trace: bool,
    known: Option<&mut KnownHosts>,
    mut f: impl FnMut(u64),
) {
    for_each_token_hash(entry.message, &mut f);
    if !host && known.is_none_or(|hosts| hosts.fresh(entry.host)) {
        for_each_token_hash(entry.host, &mut f);
    }
    if !trace {
        for_each_token_hash(entry.trace_id, &mut f);
    }
    for (_, value) in &entry.fields {
        if let FieldRef::Str(s) = value {
            for_each_token_hash(s, &mut f);
        }
    }
}

/// The longest host [`KnownHosts`] keeps (longer ones seldom repeat).
const KNOWN_LEN: usize = 64;

/// How many hosts [`KnownHosts`] keeps.
const KNOWN_HOSTS: usize = 8;

/// The last hosts whose tokens a block has: a stream's rows come from a service's few pods
/// in turn.
#[derive(Default)]
struct KnownHosts {
    hosts: [String; KNOWN_HOSTS],
    /// The slot the next new host takes.
    next: usize,
}

impl KnownHosts {
    /// Whether `host`'s tokens are new to the block (then it is kept, and they will not be).
    fn fresh(&mut self, host: &str) -> bool {
        if host.len() > KNOWN_LEN {
            return true;
        }
        // An empty host has no tokens.
        if host.is_empty() || self.hosts.iter().any(|h| h == host) {
            return false;
        }
        let slot = &mut self.hosts[self.next];
        slot.clear();
        slot.push_str(host);
        self.next = (self.next + 1) % KNOWN_HOSTS;
        true
    }
}

/// Compresses `entries` into a column block; returns the compressed bytes and the block's
/// metadata (offset left 0 for the caller to set).
pub fn build_block(
    entries: &[LogEntry],
    zstd_level: i32,
) -> Result<(Vec<u8>, BlockMeta), StorageError> {
    build_block_in(entries, zstd_level, FORMAT_TEMPLATES)
}

/// [`build_block`] in the given layout ([`FORMAT_TEMPLATES`], [`FORMAT_COLUMNS`] or
/// [`FORMAT_ROWS`]).
pub fn build_block_in(
    entries: &[LogEntry],
    zstd_level: i32,
    format: u32,
) -> Result<(Vec<u8>, BlockMeta), StorageError> {
    build_block_with(entries, zstd_level, format, None)
}

/// [`build_block_in`]; a [`FORMAT_TEMPLATES`] block with a trace-id book stores its
/// 32-hex-digit trace ids as ordinals of the book's current window (adding those it lacks).
pub fn build_block_with(
    entries: &[LogEntry],
    zstd_level: i32,
    format: u32,
    traces: Option<&TraceBook>,
) -> Result<(Vec<u8>, BlockMeta), StorageError> {
    let mut builder = BlockBuilder::new(format);
    builder.push_entries(entries);
    builder.finish(zstd_level, traces)
}

/// A block built one entry at a time: a stream adds each entry to its next block when the
/// entry arrives, while it is still in cache, and [`BlockBuilder::finish`] compresses the
/// block when the stream cuts it. Where the batches were cut does not change the bytes.
pub struct BlockBuilder {
    /// The summaries so far (`format` set at the start).
    meta: BlockMeta,
    /// The token hashes in the order they were first met, with some repeats: the block
    /// filter is built from their set when the block is cut.
    tokens: Vec<u64>,
    /// This builder in [`RECENT_TOKENS`].
    id: u64,
    /// Hosts whose tokens the block has.
    known: KnownHosts,
    rollup: std::collections::BTreeMap<(i64, u32), u32>,
    /// Entries of one minute and level come in runs: counted here, added to `rollup` per run.
    run: Option<((i64, u32), u32)>,
    numeric: NumericFolds,
    layout: Layout,
}

/// The rows of a block under construction, in its layout.
enum Layout {
    /// [`FORMAT_ROWS`]: each entry's length (u32 LE) and protobuf bytes.
    Rows(Vec<u8>),
    /// The column layouts.
    Columns(Box<crate::columnar::Columns>),
}

/// Slots of [`RECENT_TOKENS`] (a power of two).
const RECENT_SLOTS: usize = 4096;

thread_local! {
    /// Token hashes lately added to a block, as (builder id, hash), one slot per hash's low
    /// bits: a hash found with the builder's id is already in its list and is not added again.
    /// A block's tokens repeat a lot (its templates' words, its service's hosts), and leaving
    /// out a repeat changes nothing: a hash set holds the same keys in the same places
    /// whether or not a key is inserted again.
    static RECENT_TOKENS: std::cell::RefCell<Vec<(u64, u64)>> =
        std::cell::RefCell::new(vec![(0, 0); RECENT_SLOTS]);
}

/// Builder ids for [`RECENT_TOKENS`]; 0, the empty slot's, is never given out.
static NEXT_BUILDER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl BlockBuilder {
    pub fn new(format: u32) -> Self {
        BlockBuilder {
            id: NEXT_BUILDER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            meta: BlockMeta {
                min_ts: i64::MAX,
                max_ts: i64::MIN,
                format,
                ..Default::default()
            },
            // A block's distinct tokens number in the thousands.
            tokens: Vec::with_capacity(1024),
            known: KnownHosts::default(),
            rollup: std::collections::BTreeMap::new(),
            run: None,
            numeric: NumericFolds::default(),
            layout: if format == FORMAT_ROWS {
                Layout::Rows(Vec::new())
            } else {
                Layout::Columns(Box::new(crate::columnar::Columns::new(format)))
            },
        }
    }

    /// Adds an entry to the block (a view of an owned entry, or of its received bytes: the
    /// block is the same).
    pub fn push(&mut self, entry: &EntryRef<'_>) {
        let meta = &mut self.meta;
        meta.count += 1;
        self.numeric.add(entry);
        let cell = (
            entry.timestamp.div_euclid(ROLLUP_NS),
            entry.level.clamp(0, 31) as u32,
        );
        match &mut self.run {
            Some((key, count)) if *key == cell => *count += 1,
            run => {
                if let Some((key, count)) = run.replace((cell, 1)) {
                    *self.rollup.entry(key).or_default() += count;
                }
            }
        }
        meta.min_ts = meta.min_ts.min(entry.timestamp);
        meta.max_ts = meta.max_ts.max(entry.timestamp);
        meta.level_mask |= 1 << (entry.level.clamp(0, 31) as u32);
        // A host or trace id equal to the previous entry's adds no token to the set (the
        // column layouts know; the rows layout hashes them again, adding nothing new).
        let (same_host, same_trace) = match &mut self.layout {
            Layout::Columns(columns) => columns.push(entry),
            Layout::Rows(rows) => {
                // The legacy layout: encoded from an owned copy.
                let entry = entry.to_entry();
                rows.extend_from_slice(&(entry.encoded_len() as u32).to_le_bytes());
                entry.encode_raw(rows);
                (false, false)
            }
        };
        let known = &mut self.known;
        RECENT_TOKENS.with_borrow_mut(|recent| {
            for_each_token_but(entry, same_host, same_trace, Some(known), |h| {
                let slot = &mut recent[h as usize & (RECENT_SLOTS - 1)];
                if *slot != (self.id, h) {
                    *slot = (self.id, h);
                    self.tokens.push(h);
                }
            })
        });
    }

    /// Adds owned entries to the block, through one reused view.
    pub fn push_entries(&mut self, entries: &[LogEntry]) {
        let mut view = EntryRef::default();
        for entry in entries {
            view.set(entry);
            self.push(&view);
        }
    }

    /// Compresses the block; returns its bytes and its metadata (offset left 0 for the
    /// caller to set). With a trace-id book, a [`FORMAT_TEMPLATES`] block stores its
    /// 32-hex-digit trace ids as ordinals of the book's current window (adding those it
    /// lacks).
    pub fn finish(
        self,
        zstd_level: i32,
        traces: Option<&TraceBook>,
    ) -> Result<(Vec<u8>, BlockMeta), StorageError> {
        let BlockBuilder {
            mut meta,
            tokens,
            mut rollup,
            run,
            numeric,
            layout,
            id: _,
            known: _,
        } = self;
        let format = meta.format;
        if let Some((key, count)) = run {
            *rollup.entry(key).or_default() += count;
        }
        let mut set: HashSet<u64, BuildHasherDefault<logcluster_proto::ids::Mix64Hasher>> =
            HashSet::with_capacity_and_hasher(meta.count as usize * 4, Default::default());
        // One by one (`extend` would reserve for the repeats too): the set grows as it did
        // when every repeat was inserted again, and holds its keys in the same places.
        for hash in tokens {
            set.insert(hash);
        }
        let hashes: Vec<u64> = set.into_iter().collect();
        match (format == FORMAT_TEMPLATES)
            .then(|| crate::fuse::build(&hashes))
            .flatten()
        {
            Some(fuse) => meta.fuse = fuse,
            None => meta.bloom = bloom::build(&hashes),
        }
        (meta.numeric, meta.numeric_complete) = numeric.into_summaries();
        meta.rollup = rollup
            .into_iter()
            .map(|((minute, level), count)| RollupCell {
                minute,
                level,
                count,
            })
            .collect();
        let compressed = match layout {
            Layout::Rows(rows) => {
                meta.raw_len = block_len(rows.len())?;
                zstd::bulk::compress(&rows, zstd_level)
                    .map_err(|source| StorageError::Compress { source })?
            }
            Layout::Columns(columns) => {
                let refs = match traces {
                    Some(book) if format == FORMAT_TEMPLATES => {
                        book.intern_keys(&columns.trace_keys())?
                    }
                    _ => None,
                };
                if let Some((window, _)) = &refs {
                    meta.trace_window = *window;
                }
                let (compressed, sections) =
                    columns.encode(zstd_level, refs.as_ref().map(|(_, ordinals)| &ordinals[..]))?;
                meta.raw_len = block_len(
                    sections
                        .iter()
                        .skip(1)
                        .step_by(2)
                        .map(|l| *l as usize)
                        .sum(),
                )?;
                if format == FORMAT_TEMPLATES {
                    let start = sections[0] as usize;
                    meta.shape_crc =
                        crc32fast::hash(&compressed[start..start + sections[2] as usize]);
                }
                meta.sections = sections;
                compressed
            }
        };
        meta.len = block_len(compressed.len())?;
        meta.crc = crc32fast::hash(&compressed);
        Ok((compressed, meta))
    }
}

/// A block length as stored in its metadata; blocks over [`MAX_BLOCK_LEN`] are refused.
pub(crate) fn block_len(len: usize) -> Result<u32, StorageError> {
    if len > MAX_BLOCK_LEN {
        return Err(StorageError::Encode(format!(
            "a block of {len} bytes is over the {MAX_BLOCK_LEN}-byte limit"
        )));
    }
    Ok(len as u32)
}

/// Decodes a block read from disk; verifies its checksum first.
pub fn decode_block(
    compressed: &[u8],
    meta: &BlockMeta,
    traces: Option<&TraceBook>,
) -> Result<Vec<LogEntry>, BlockError> {
    decode_block_filtered(compressed, meta, &RowFilter::everything(), traces)
        .map(|(entries, _)| entries)
}

/// Whether [`count_block_by_level`] may answer for a block without decoding its rows.
pub fn may_count_by_level(meta: &BlockMeta, rows: &RowFilter<'_>) -> bool {
    meta.format == FORMAT_TEMPLATES
        && meta.min_ts >= rows.from_ts
        && meta.max_ts < rows.to_ts
        && matches!(rows.needle, None | Some((_, NeedleScope::Message)))
}

/// Counts by level of the rows of a block that `rows` keeps, read from the block's shape
/// section alone (the message templates and their rows by level; only that section is read
/// and verified), when [`may_count_by_level`] and the templates decide the needle;
/// `Ok(None)` when the rows must be decoded instead.
pub fn count_block_by_level(
    file: &File,
    meta: &BlockMeta,
    rows: &RowFilter<'_>,
) -> Result<Option<Vec<(i32, u64)>>, BlockError> {
    if !may_count_by_level(meta, rows) {
        return Ok(None);
    }
    let (Some(&core_len), Some(&shape_len), Some(&shape_raw)) = (
        meta.sections.first(),
        meta.sections.get(2),
        meta.sections.get(3),
    ) else {
        return Err(BlockError::Decode);
    };
    if u64::from(core_len) + u64::from(shape_len) > u64::from(meta.len) {
        return Err(BlockError::Truncated);
    }
    let mut frame = vec![0u8; shape_len as usize];
    file.read_exact_at(&mut frame, meta.offset + u64::from(core_len))
        .map_err(|_| BlockError::Io)?;
    if crc32fast::hash(&frame) != meta.shape_crc {
        return Err(BlockError::Checksum);
    }
    let counts = crate::columnar::level_counts(&frame, shape_raw, meta.count, rows)?;
    Ok(counts.map(|counts| {
        counts
            .into_iter()
            .filter(|(level, _)| rows.level_mask & (1 << (*level).clamp(0, 31)) != 0)
            .collect()
    }))
}

/// [`decode_block`] of only the rows `rows` keeps; also returns how many it passed over.
/// `traces` is the book of the block's tenant; blocks whose trace ids are in it
/// ([`BlockMeta::trace_window`]) cannot be read in full without it.
pub fn decode_block_filtered(
    compressed: &[u8],
    meta: &BlockMeta,
    rows: &RowFilter<'_>,
    traces: Option<&TraceBook>,
) -> Result<(Vec<LogEntry>, u64), BlockError> {
    if crc32fast::hash(compressed) != meta.crc {
        return Err(BlockError::Checksum);
    }
    // The window is needed only where trace ids are read.
    let tags_read = !(rows.core_and_message_only || rows.message_unread)
        || matches!(
            rows.needle,
            Some((
                _,
                NeedleScope::TraceId | NeedleScope::Record | NeedleScope::Host
            ))
        );
    let window = match (meta.trace_window, traces) {
        (0, _) => None,
        (_, _) if !tags_read => None,
        (number, Some(book)) => Some(book.window(number)?),
        (_, None) => return Err(BlockError::TraceIds),
    };
    match meta.format {
        FORMAT_COLUMNS | FORMAT_TEMPLATES => crate::columnar::decode(
            compressed,
            meta.format,
            &meta.sections,
            meta.count,
            rows,
            window.as_deref(),
        ),
        FORMAT_ROWS => decode_rows(compressed, meta, rows),
        _ => Err(BlockError::Decode),
    }
}

/// A [`FORMAT_ROWS`] block: records are passed over by their level and timestamp (read from
/// the bytes) and by a needle anywhere in their bytes; a malformed record is kept so that
/// its full decode reports it.
fn decode_rows(
    compressed: &[u8],
    meta: &BlockMeta,
    rows: &RowFilter<'_>,
) -> Result<(Vec<LogEntry>, u64), BlockError> {
    let by_level = meta.level_mask & !rows.level_mask != 0;
    let by_time = meta.min_ts < rows.from_ts || meta.max_ts >= rows.to_ts;
    let capacity = (meta.raw_len as usize).min(MAX_BLOCK_LEN);
    let raw = zstd::bulk::decompress(compressed, capacity).map_err(|_| BlockError::Decompress)?;
    let mut entries = Vec::with_capacity(meta.count as usize);
    let mut skipped = 0u64;
    let mut pos = 0;
    while pos < raw.len() {
        let len_bytes: [u8; 4] = raw
            .get(pos..pos + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or(BlockError::Truncated)?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        let body = raw
            .get(pos + 4..pos + 4 + len)
            .ok_or(BlockError::Truncated)?;
        let passed_over = ((by_level || by_time)
            && record_time_and_level(body).is_some_and(|(ts, level)| !rows.keeps(ts, level)))
            || rows
                .needle
                .is_some_and(|(needle, _)| !contains_ignore_ascii_case(body, needle));
        if passed_over {
            skipped += 1;
        } else {
            let entry = LogEntry::decode(body).map_err(|_| BlockError::Decode)?;
            if rows
                .exact_message_needle()
                .is_some_and(|needle| !contains_ignore_ascii_case(entry.message.as_bytes(), needle))
            {
                skipped += 1;
            } else {
                entries.push(entry);
            }
        }
        pos += 4 + len;
    }
    Ok((entries, skipped))
}

/// The timestamp and level of an encoded `LogEntry`, read by walking its top-level fields
/// without decoding them (absent fields are proto3 zeros; a repeated field's last value
/// wins, as in a full decode). `None` when the bytes are not a well-formed message.
pub fn record_time_and_level(record: &[u8]) -> Option<(i64, i32)> {
    use logcluster_proto::wire::{RawField, walk_fields};
    let (mut timestamp, mut level) = (0i64, 0i32);
    walk_fields(record, |tag, field| match (tag, field) {
        (2, RawField::Varint(value)) => timestamp = value as i64,
        (6, RawField::Varint(value)) => level = value as i32,
        _ => {}
    })?;
    Some((timestamp, level))
}

/// Whether `haystack` contains `needle`, ignoring ASCII case (other bytes compare as they
/// are). The one substring test of the query path: record prefilter and entry predicates.
pub fn contains_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    if needle.len() > haystack.len() {
        return false;
    }
    let last_start = haystack.len() - needle.len();
    let candidates = &haystack[..=last_start];
    let first = first.to_ascii_lowercase();
    memchr::memchr2_iter(first, first.to_ascii_uppercase(), candidates)
        .any(|at| haystack[at + 1..at + needle.len()].eq_ignore_ascii_case(rest))
}

/// Why a block could not be read. The block is skipped and counted; the query says partial.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockError {
    #[error("block checksum mismatch")]
    Checksum,
    #[error("block does not decompress")]
    Decompress,
    #[error("block is truncated")]
    Truncated,
    #[error("block entry does not decode")]
    Decode,
    #[error("block could not be read from disk")]
    Io,
    #[error("block's trace ids are missing from the tenant's trace-id book")]
    TraceIds,
}

/// Reads a block's compressed bytes with a positional read (no shared cursor).
pub fn read_block(file: &File, meta: &BlockMeta) -> Result<Vec<u8>, BlockError> {
    let len = meta.len as usize;
    if len > MAX_BLOCK_LEN {
        return Err(BlockError::Truncated);
    }
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, meta.offset)
        .map_err(|_| BlockError::Io)?;
    Ok(buf)
}

/// An active segment being filled with blocks.
pub struct OpenSegment {
    pub path: PathBuf,
    /// Written only at positions (`write_all_at`), so readers share this handle
    /// (`Arc::clone`) instead of holding a descriptor of their own.
    pub file: std::sync::Arc<File>,
    pub len: u64,
    /// Why an fsync of the file failed, once one has. The kernel reports a lost write-back
    /// once and then counts the pages written, so a later fsync that succeeds proves nothing:
    /// the segment is never sealed, and its WAL stays until a restart rebuilds it.
    pub sync_failed: Option<String>,
}

impl OpenSegment {
    /// Creates (or replaces) `seg-N.open`.
    pub fn create(path: PathBuf) -> Result<OpenSegment, StorageError> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| StorageError::io("create segment", &path, source))?;
        file.write_all(SEG_MAGIC)
            .map_err(|source| StorageError::io("write segment header", &path, source))?;
        Ok(OpenSegment {
            path,
            file: std::sync::Arc::new(file),
            len: SEG_MAGIC.len() as u64,
            sync_failed: None,
        })
    }

    /// An error once an fsync of the file has failed (see `sync_failed`).
    pub fn refuse_after_failed_sync(&self) -> Result<(), StorageError> {
        match &self.sync_failed {
            None => Ok(()),
            Some(error) => Err(StorageError::SealRefused(format!(
                "an earlier fsync of {} failed ({error}); the WAL keeps its batches until the node restarts and rebuilds the segment",
                self.path.display()
            ))),
        }
    }

    /// Appends a compressed block; returns its offset.
    pub fn append_block(&mut self, bytes: &[u8]) -> Result<u64, StorageError> {
        let offset = self.len;
        self.file
            .write_all_at(bytes, offset)
            .map_err(|source| StorageError::io("write block", &self.path, source))?;
        self.len += bytes.len() as u64;
        Ok(offset)
    }

    /// Writes index and footer after the blocks (cutting off whatever a failed attempt left
    /// there), fsyncs, and renames the file to `sealed_path`, which must not exist yet.
    /// `Err`: nothing was renamed, and sealing may be tried again. `Ok`: the sealed file, its
    /// size, and whether fsyncing the directory (the rename's durability) succeeded. Tests'
    /// shorthand for [`OpenSegment::write_index`] then [`OpenSegment::rename`]: a stream syncs
    /// the trace ids its blocks refer to and makes the next segment's files between the two.
    #[cfg(test)]
    pub fn seal(
        &mut self,
        index: &SegmentIndex,
        sealed_path: &Path,
    ) -> Result<Sealing, StorageError> {
        let size = self.write_index(index)?;
        self.rename(sealed_path, size)
    }

    /// Writes index and footer after the blocks (cutting off whatever a failed attempt left
    /// there) and fsyncs; returns the segment's size. A failed fsync is final (see
    /// `sync_failed`).
    pub fn write_index(&mut self, index: &SegmentIndex) -> Result<u64, StorageError> {
        self.refuse_after_failed_sync()?;
        let body = index.encode_to_vec();
        let mut tail = Vec::with_capacity(body.len() + FOOTER_LEN);
        tail.extend_from_slice(&body);
        tail.extend_from_slice(&self.len.to_le_bytes());
        tail.extend_from_slice(&(body.len() as u32).to_le_bytes());
        tail.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        tail.extend_from_slice(FOOTER_MAGIC);
        let size = self.len + tail.len() as u64;
        self.file
            .write_all_at(&tail, self.len)
            .and_then(|()| self.file.set_len(size))
            .map_err(|source| StorageError::io("seal segment", &self.path, source))?;
        if let Err(source) = self.file.sync_all() {
            let error = StorageError::io("sync segment", &self.path, source);
            self.sync_failed = Some(logcluster_common::error_chain(&error));
            return Err(error);
        }
        Ok(size)
    }

    /// Renames the file, its index written ([`OpenSegment::write_index`] gave `size`), to
    /// `sealed_path`, which must not exist yet.
    pub fn rename(&self, sealed_path: &Path, size: u64) -> Result<Sealing, StorageError> {
        if sealed_path.exists() {
            let taken = std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a sealed segment of this sequence already exists",
            );
            return Err(StorageError::io("rename segment", sealed_path, taken));
        }
        let file = self
            .file
            .try_clone()
            .map_err(|source| StorageError::io("clone segment handle", &self.path, source))?;
        std::fs::rename(&self.path, sealed_path)
            .map_err(|source| StorageError::io("rename segment", sealed_path, source))?;
        Ok(Sealing {
            file,
            size,
            dir_synced: sync_dir(sealed_path),
        })
    }
}

/// A segment [`OpenSegment::seal`] renamed to its sealed name.
pub struct Sealing {
    pub file: File,
    pub size: u64,
    /// Fsyncing the directory after the rename.
    pub dir_synced: Result<(), StorageError>,
}

/// Fsyncs the directory holding `path` so a create, rename or delete is durable.
pub fn sync_dir(path: &Path) -> Result<(), StorageError> {
    logcluster_common::durable::sync_parent(path).map_err(|source| {
        StorageError::io(
            "sync directory",
            path.parent().unwrap_or(Path::new(".")),
            source,
        )
    })
}

/// Opens a sealed segment and reads its index; any inconsistency is `CorruptSegment`.
pub fn open_sealed(path: &Path) -> Result<(File, SegmentIndex, u64), StorageError> {
    let corrupt = |why: &str| StorageError::CorruptSegment {
        path: path.to_path_buf(),
        reason: why.to_string(),
    };
    let mut file =
        File::open(path).map_err(|source| StorageError::io("open segment", path, source))?;
    let size = file
        .metadata()
        .map_err(|source| StorageError::io("stat segment", path, source))?
        .len();
    if size < (SEG_MAGIC.len() + FOOTER_LEN) as u64 {
        return Err(corrupt("shorter than header and footer"));
    }
    let mut magic = [0u8; 8];
    file.read_exact(&mut magic)
        .map_err(|source| StorageError::io("read segment", path, source))?;
    if &magic != SEG_MAGIC {
        return Err(corrupt("bad header magic"));
    }
    let mut footer = [0u8; FOOTER_LEN];
    file.seek(SeekFrom::Start(size - FOOTER_LEN as u64))
        .and_then(|_| file.read_exact(&mut footer))
        .map_err(|source| StorageError::io("read segment footer", path, source))?;
    if &footer[16..24] != FOOTER_MAGIC {
        return Err(corrupt("bad footer magic"));
    }
    let index_offset = u64::from_le_bytes(footer[0..8].try_into().expect("8 bytes"));
    let index_len = u32::from_le_bytes(footer[8..12].try_into().expect("4 bytes")) as u64;
    let crc = u32::from_le_bytes(footer[12..16].try_into().expect("4 bytes"));
    if index_offset + index_len + FOOTER_LEN as u64 != size {
        return Err(corrupt("footer offsets do not match the file size"));
    }
    let mut body = vec![0u8; index_len as usize];
    file.read_exact_at(&mut body, index_offset)
        .map_err(|source| StorageError::io("read segment index", path, source))?;
    if crc32fast::hash(&body) != crc {
        return Err(corrupt("index checksum mismatch"));
    }
    let index =
        SegmentIndex::decode(body.as_slice()).map_err(|_| corrupt("index does not decode"))?;
    if index
        .blocks
        .iter()
        .any(|b| b.offset + u64::from(b.len) > index_offset)
    {
        return Err(corrupt("a block lies outside the data area"));
    }
    Ok((file, index, size))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use logcluster_proto::Level;
    use logcluster_proto::entry::field_value::Kind;

    pub(crate) fn entries(n: i64) -> Vec<LogEntry> {
        (0..n)
            .map(|i| LogEntry {
                id: format!("{i:08}"),
                timestamp: 1_000 + i,
                level: if i % 2 == 0 {
                    Level::Info
                } else {
                    Level::Error
                } as i32,
                message: format!("request {i} finished in {}ms", i * 3),
                service: "api".into(),
                tenant: "acme".into(),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn blocks_built_side_by_side_on_one_thread_each_index_every_token() {
        // Two builders on one thread meet the same tokens in turn, and a third after them:
        // each block's filter holds every token of its own entries.
        let all = entries(400);
        let (first, second) = all.split_at(200);
        let mut a = BlockBuilder::new(FORMAT_TEMPLATES);
        let mut b = BlockBuilder::new(FORMAT_TEMPLATES);
        for (x, y) in first.iter().zip(second) {
            a.push(&EntryRef::of(x));
            b.push(&EntryRef::of(x));
            b.push(&EntryRef::of(y));
        }
        let mut c = BlockBuilder::new(FORMAT_TEMPLATES);
        for entry in first {
            c.push(&EntryRef::of(entry));
        }
        for (builder, held) in [(a, first), (b, &all[..]), (c, first)] {
            let (_, meta) = builder.finish(1, None).expect("block");
            for entry in held {
                for_each_indexed_token(entry, |h| assert!(may_hold_token(&meta, h)));
            }
        }
    }

    #[test]
    fn blocks_summarize_numeric_fields_like_folding_every_value() {
        use logcluster_proto::FieldValue;
        let mut block = entries(300);
        for (i, entry) in block.iter_mut().enumerate() {
            entry.fields.insert(
                "duration_ms".into(),
                FieldValue::int((i as i64 * 37) % 1000),
            );
            if i % 3 == 0 {
                entry
                    .fields
                    .insert("ratio".into(), FieldValue::float(i as f64 / -7.0));
            }
            entry.fields.insert(
                "status".into(),
                FieldValue::str(if i % 2 == 0 { "200" } else { "ok" }),
            );
        }
        let (_, meta) = build_block(&block, 1).expect("build");
        assert!(meta.numeric_complete);
        let fields: Vec<&str> = meta.numeric.iter().map(|n| n.field.as_str()).collect();
        assert_eq!(
            fields,
            ["duration_ms", "ratio", "status"],
            "numeric strings count, as in queries"
        );
        for summary in &meta.numeric {
            let values: Vec<f64> = block
                .iter()
                .filter_map(|e| e.fields.get(&summary.field)?.as_f64())
                .collect();
            let mut sketch = crate::sketch::Sketch::default();
            values.iter().for_each(|v| sketch.add(*v));
            assert_eq!(summary.count, values.len() as u64);
            assert_eq!(summary.sum, values.iter().sum::<f64>());
            assert_eq!(
                summary.min,
                values.iter().copied().fold(f64::INFINITY, f64::min)
            );
            assert_eq!(
                summary.max,
                values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
            );
            assert_eq!(summary.sketch(), sketch);
        }
        // More numeric fields than are summarized: the block says its summary is incomplete.
        let mut wide = entries(2);
        for i in 0..(MAX_NUMERIC_FIELDS + 1) {
            wide[0]
                .fields
                .insert(format!("f{i:02}"), FieldValue::int(i as i64));
        }
        let (_, meta) = build_block(&wide, 1).expect("build");
        assert!(!meta.numeric_complete);
        assert_eq!(meta.numeric.len(), MAX_NUMERIC_FIELDS);
    }

    #[test]
    fn sealed_segment_reads_back_every_block() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut open = OpenSegment::create(dir.path().join("seg-1.open")).expect("create");
        let mut index = SegmentIndex {
            tenant: "acme".into(),
            service: "api".into(),
            seq: 1,
            ..Default::default()
        };
        let all = entries(300);
        for chunk in all.chunks(100) {
            let (bytes, mut meta) = build_block(chunk, 3).expect("block");
            meta.offset = open.append_block(&bytes).expect("append");
            index.blocks.push(meta);
        }
        index.batch_uids = vec![7, 8];
        let sealed = dir.path().join("seg-1.seg");
        open.seal(&index, &sealed)
            .expect("seal")
            .dir_synced
            .expect("dir");
        let (file, read_index, _) = open_sealed(&sealed).expect("open");
        assert_eq!(read_index, index);
        let mut back = Vec::new();
        for meta in &read_index.blocks {
            assert_eq!(meta.level_mask, (1 << 3) | (1 << 5));
            let bytes = read_block(&file, meta).expect("read");
            back.extend(decode_block(&bytes, meta, None).expect("decode"));
        }
        assert_eq!(back, all);
    }

    #[test]
    fn corrupt_block_and_corrupt_index_are_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut open = OpenSegment::create(dir.path().join("seg-1.open")).expect("create");
        let (bytes, mut meta) = build_block(&entries(50), 3).expect("block");
        meta.offset = open.append_block(&bytes).expect("append");
        let index = SegmentIndex {
            blocks: vec![meta.clone()],
            ..Default::default()
        };
        let sealed = dir.path().join("seg-1.seg");
        open.seal(&index, &sealed)
            .expect("seal")
            .dir_synced
            .expect("dir");
        let mut raw = std::fs::read(&sealed).expect("read");
        raw[meta.offset as usize + 10] ^= 0xff;
        std::fs::write(&sealed, &raw).expect("write");
        let (file, index, _) = open_sealed(&sealed).expect("index still fine");
        let bytes = read_block(&file, &index.blocks[0]).expect("read");
        assert_eq!(
            decode_block(&bytes, &index.blocks[0], None),
            Err(BlockError::Checksum)
        );
        let len = raw.len();
        raw[len - 30] ^= 0xff;
        std::fs::write(&sealed, &raw).expect("write");
        assert!(matches!(
            open_sealed(&sealed),
            Err(StorageError::CorruptSegment { .. })
        ));
    }

    #[test]
    fn block_filter_knows_message_tokens() {
        let (_, meta) = build_block(&entries(10), 1).expect("block");
        assert!(may_hold_token(&meta, bloom::fnv1a64(b"request")));
        assert!(may_hold_token(&meta, bloom::fnv1a64(b"finished")));
    }

    /// A templates block with enough distinct tokens carries a fuse filter (older layouts and
    /// small blocks a Bloom filter); either knows every indexed token and rules out most
    /// others.
    #[test]
    fn token_filters_of_every_layout_know_their_tokens() {
        let mut all = entries(2_000);
        for (i, entry) in all.iter_mut().enumerate() {
            entry.message = format!("order ord{i} shipped to user{}", i * 7);
        }
        for (format, fuse) in [
            (FORMAT_TEMPLATES, true),
            (FORMAT_COLUMNS, false),
            (FORMAT_ROWS, false),
        ] {
            let (_, meta) = build_block_in(&all, 1, format).expect("block");
            assert_eq!(!meta.fuse.is_empty(), fuse, "format {format}");
            assert_eq!(meta.bloom.is_empty(), fuse, "format {format}");
            let mut indexed = Vec::new();
            for entry in &all {
                for_each_indexed_token(entry, |h| indexed.push(h));
            }
            assert!(indexed.iter().all(|h| may_hold_token(&meta, *h)));
            let absent = (0..10_000)
                .filter(|i| may_hold_token(&meta, bloom::fnv1a64(format!("absent{i}").as_bytes())))
                .count();
            assert!(
                absent < 200,
                "format {format}: {absent} of 10000 absent tokens pass"
            );
        }
        let (_, small) = build_block(&entries(2), 1).expect("block");
        assert!(small.fuse.is_empty() && !small.bloom.is_empty());
    }

    #[test]
    fn substring_prefilter_ignores_ascii_case_and_never_drops_a_match() {
        assert!(contains_ignore_ascii_case(b"upstream TIMEOUT", b"timeout"));
        assert!(contains_ignore_ascii_case(b"Timeout", b"timeout"));
        assert!(contains_ignore_ascii_case(b"anything", b""));
        assert!(!contains_ignore_ascii_case(b"timeou", b"timeout"));
        assert!(!contains_ignore_ascii_case(b"time out", b"timeout"));
        assert!(contains_ignore_ascii_case(b"tttimeout", b"ttimeout"));
        assert!(contains_ignore_ascii_case(b"upstream timeout", b"TimeOut"));

        let mut all = entries(50);
        for (i, entry) in all.iter_mut().enumerate() {
            match i % 5 {
                0 => entry.message = format!("upstream TimeOut after {i}ms"),
                1 => entry.host = "timeout-host".into(),
                2 => {
                    entry.fields.insert(
                        "note".into(),
                        logcluster_proto::FieldValue::str("an upstream TIMEOUT"),
                    );
                }
                _ => {}
            }
        }
        let needle = |scope| RowFilter {
            needle: Some((&b"timeout"[..], scope)),
            ..RowFilter::everything()
        };
        for (bytes, meta) in [build_block(&all, 1).expect("block"), row_block(&all)] {
            let (kept, passed_over) =
                decode_block_filtered(&bytes, &meta, &needle(NeedleScope::Record), None)
                    .expect("decodes");
            // Records with the needle anywhere are decoded (the caller's predicate decides);
            // every record whose message has it is among them; the rest were passed over.
            assert_eq!(
                (kept.len(), passed_over),
                (30, 20),
                "format {}",
                meta.format
            );
            let with_message = kept
                .iter()
                .filter(|e| e.message.to_ascii_lowercase().contains("timeout"))
                .count();
            assert_eq!(with_message, 10);
            assert_eq!(decode_block(&bytes, &meta, None).expect("decodes"), all);
        }
        // A column block tests a scoped needle on that string alone.
        let (bytes, meta) = build_block(&all, 1).expect("block");
        for (scope, expected) in [
            (NeedleScope::Message, 0),
            (NeedleScope::Host, 1),
            (NeedleScope::TraceId, 99),
        ] {
            let (kept, passed_over) =
                decode_block_filtered(&bytes, &meta, &needle(scope), None).expect("decodes");
            let wanted: Vec<&LogEntry> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 5 == expected)
                .map(|(_, e)| e)
                .collect();
            assert_eq!(kept.iter().collect::<Vec<_>>(), wanted, "{scope:?}");
            assert_eq!(passed_over, 50 - wanted.len() as u64);
        }
    }

    /// With a trace-id book, trace ids read back, and trace id and record needles find
    /// them, whether they are ordinals of the book or stored in the block.
    #[test]
    fn trace_id_needles_read_ids_from_the_book() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = TraceBook::open(dir.path()).expect("book");
        let mut all = entries(60);
        for (i, entry) in all.iter_mut().enumerate() {
            entry.trace_id = match i % 3 {
                0 => "0af7651916cd43dd8448eb211c80319c".to_string(),
                1 => format!("{:032x}", 0xfeed_0000_u128 + i as u128),
                _ => format!("custom-{i}"),
            };
        }
        let (bytes, meta) =
            build_block_with(&all, 1, FORMAT_TEMPLATES, Some(&book)).expect("block");
        assert_ne!(meta.trace_window, 0);
        assert_eq!(
            decode_block(&bytes, &meta, Some(&book)).expect("decodes"),
            all
        );
        for (needle, scope, residue) in [
            (&b"0af7651916cd43dd"[..], NeedleScope::TraceId, 0),
            (&b"8448eb211c8031"[..], NeedleScope::Record, 0),
            (&b"custom-"[..], NeedleScope::TraceId, 2),
        ] {
            let rows = RowFilter {
                needle: Some((needle, scope)),
                ..RowFilter::everything()
            };
            let (kept, passed_over) =
                decode_block_filtered(&bytes, &meta, &rows, Some(&book)).expect("decodes");
            let wanted: Vec<&LogEntry> = all.iter().skip(residue).step_by(3).collect();
            assert_eq!(kept.iter().collect::<Vec<_>>(), wanted, "{scope:?}");
            assert_eq!(passed_over, 40);
        }
        let one = b"000000000000000000000000feed000d";
        let rows = RowFilter {
            needle: Some((&one[..], NeedleScope::TraceId)),
            ..RowFilter::everything()
        };
        let (kept, _) = decode_block_filtered(&bytes, &meta, &rows, Some(&book)).expect("decodes");
        assert_eq!(kept, vec![all[13].clone()]);
        // 20 distinct ids of 32 hex digits were added once each.
        assert_eq!(book.window(meta.trace_window).expect("window").len(), 21);
    }

    /// A block in the layout written before the column one ([`FORMAT_ROWS`]).
    fn row_block(entries: &[LogEntry]) -> (Vec<u8>, BlockMeta) {
        build_block_in(entries, 1, FORMAT_ROWS).expect("block")
    }

    #[test]
    fn both_formats_pass_over_rows_by_time_and_level() {
        let all = entries(40);
        let rows = RowFilter {
            from_ts: 1_010,
            to_ts: 1_030,
            level_mask: 1 << Level::Error as u32,
            ..RowFilter::everything()
        };
        let wanted: Vec<LogEntry> = all
            .iter()
            .filter(|e| (1_010..1_030).contains(&e.timestamp) && e.level == Level::Error as i32)
            .cloned()
            .collect();
        for (bytes, meta) in [build_block(&all, 3).expect("block"), row_block(&all)] {
            let (kept, passed_over) =
                decode_block_filtered(&bytes, &meta, &rows, None).expect("decodes");
            assert_eq!(kept, wanted, "format {}", meta.format);
            assert_eq!(passed_over, 30);
        }
    }

    #[test]
    fn a_core_and_message_reader_gets_no_host_trace_or_fields() {
        use logcluster_proto::FieldValue;
        let mut all = entries(10);
        for entry in &mut all {
            entry.host = "h1".into();
            entry.trace_id = "t1".into();
            entry.fields.insert("n".into(), FieldValue::int(7));
        }
        let (bytes, meta) = build_block(&all, 3).expect("block");
        let rows = RowFilter {
            core_and_message_only: true,
            message_unread: false,
            ..RowFilter::everything()
        };
        let (kept, _) = decode_block_filtered(&bytes, &meta, &rows, None).expect("decodes");
        let expected: Vec<LogEntry> = all
            .iter()
            .map(|e| LogEntry {
                host: String::new(),
                trace_id: String::new(),
                fields: Default::default(),
                ..e.clone()
            })
            .collect();
        assert_eq!(kept, expected);
    }

    #[test]
    fn time_and_level_are_read_without_decoding() {
        use logcluster_proto::FieldValue;
        let mut entry = entries(2).remove(1);
        entry.timestamp = -5;
        entry.host = "h".into();
        entry.fields.insert("n".into(), FieldValue::float(2.5));
        let bytes = entry.encode_to_vec();
        assert_eq!(
            record_time_and_level(&bytes),
            Some((-5, Level::Error as i32))
        );
        let plain = LogEntry::default().encode_to_vec();
        assert_eq!(record_time_and_level(&plain), Some((0, 0)));
        assert_eq!(record_time_and_level(&bytes[..bytes.len() - 1]), None);
        assert_eq!(record_time_and_level(&[0x0b]), None);
    }

    fn arb_field() -> impl proptest::strategy::Strategy<Value = logcluster_proto::FieldValue> {
        use logcluster_proto::FieldValue;
        use proptest::prelude::*;
        prop_oneof![
            any::<String>().prop_map(FieldValue::str),
            "[0-9a-fA-F]{0,9}".prop_map(FieldValue::str),
            any::<i64>().prop_map(FieldValue::int),
            any::<f64>().prop_map(FieldValue::float),
            prop_oneof![
                Just(0.1),
                Just(-0.0),
                Just(1e300),
                Just(f64::NAN),
                Just(12.34)
            ]
            .prop_map(FieldValue::float),
            any::<bool>().prop_map(FieldValue::bool),
            any::<String>().prop_map(|s| FieldValue {
                kind: Some(Kind::Json(s))
            }),
            Just(FieldValue { kind: None }),
        ]
    }

    /// A lower-cased needle cut from one of the messages (`None` when it is empty).
    fn needle_cut(all: &[LogEntry], pick: usize, from: usize, len: usize) -> Option<Vec<u8>> {
        let message = all.get(pick % all.len().max(1))?.message.as_bytes();
        if message.is_empty() {
            return None;
        }
        let from = from % message.len();
        Some(message[from..(from + len).min(message.len())].to_ascii_lowercase())
    }

    pub(crate) fn arb_entries() -> impl proptest::strategy::Strategy<Value = Vec<LogEntry>> {
        use proptest::prelude::*;
        let id = prop_oneof![
            any::<String>(),
            (any::<u64>(), 0u32..4).prop_map(|(uid, p)| format!("{uid:016x}-{p:08x}")),
            Just("00000000000000ab-00000001".to_string()),
            Just("00000000000000ab-00000002".to_string()),
            Just("00000000000000AB-00000003".to_string()),
            Just("00000000000000ab-ffffffff".to_string()),
        ];
        let entry = (
            id,
            prop_oneof![any::<i64>(), (0i64..1_000).prop_map(|t| t * 1_000_000)],
            any::<i64>(),
            prop_oneof![Just("acme".to_string()), any::<String>()],
            prop_oneof![Just("api".to_string()), Just(String::new())],
            prop_oneof![0i32..7, any::<i32>()],
            prop_oneof![
                any::<String>(),
                "(GET|get|upstream|id=|[0-9]{1,22}|0[0-9]{1,3}|x[0-9a-f]{1,8}|\\u{11}|\\u{12}|\\u{13}|é9|[ _./:=-]){0,12}",
            ],
            prop_oneof![Just("h".to_string()), any::<String>(), "[0-9a-f]{1,6}"],
            prop_oneof![
                Just(String::new()),
                "[0-9a-f]{32}",
                "[0-9a-fA-F]{0,33}",
                Just("0af7651916cd43dd8448eb211c80319c".to_string()),
                Just("4bf92f3577b34da6a3ce929d0e0e4736".to_string()),
            ],
            prop::collection::btree_map(
                prop_oneof![
                    Just("n".to_string()),
                    Just("m".to_string()),
                    any::<String>()
                ],
                arb_field(),
                0..4,
            ),
        )
            .prop_map(
                |(
                    id,
                    timestamp,
                    received_at,
                    tenant,
                    service,
                    level,
                    message,
                    host,
                    trace_id,
                    fields,
                )| {
                    LogEntry {
                        id,
                        timestamp,
                        received_at,
                        tenant,
                        service,
                        level,
                        message,
                        host,
                        trace_id,
                        fields,
                    }
                },
            );
        prop::collection::vec(entry, 0..24)
    }

    /// The numeric summaries and rollup of a block as they were first defined: a map lookup
    /// per field and per entry.
    fn reference_summaries(entries: &[LogEntry]) -> (Vec<NumericSummary>, bool, Vec<RollupCell>) {
        let mut numeric: std::collections::BTreeMap<&str, NumericFold> = Default::default();
        let mut complete = true;
        let mut rollup: std::collections::BTreeMap<(i64, u32), u32> = Default::default();
        for entry in entries {
            for (key, value) in &entry.fields {
                let Some(v) = value.as_f64() else { continue };
                if let Some(fold) = numeric.get_mut(key.as_str()) {
                    fold.add(v);
                } else if numeric.len() < MAX_NUMERIC_FIELDS {
                    numeric.entry(key.as_str()).or_default().add(v);
                } else {
                    complete = false;
                }
            }
            let cell = (
                entry.timestamp.div_euclid(ROLLUP_NS),
                entry.level.clamp(0, 31) as u32,
            );
            *rollup.entry(cell).or_default() += 1;
        }
        (
            numeric
                .into_iter()
                .map(|(k, f)| f.into_summary(k.to_string()))
                .collect(),
            complete,
            rollup
                .into_iter()
                .map(|((minute, level), count)| RollupCell {
                    minute,
                    level,
                    count,
                })
                .collect(),
        )
    }

    /// The token hashes a block of `format` collects from `entries`, and those
    /// `for_each_indexed_token` gives for them.
    fn collected_and_indexed_tokens(
        format: u32,
        entries: &[LogEntry],
    ) -> (HashSet<u64>, HashSet<u64>) {
        let mut builder = BlockBuilder::new(format);
        builder.push_entries(entries);
        let collected = builder.tokens.iter().copied().collect();
        let mut indexed = HashSet::new();
        for entry in entries {
            for_each_indexed_token(entry, |h| {
                indexed.insert(h);
            });
        }
        (collected, indexed)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// A block's numeric summaries and rollup are what one map lookup per field and entry
        /// gives, with fields that come and go between entries and more numeric fields than
        /// a block summarizes.
        #[test]
        fn numeric_summaries_and_rollup_match_their_definition(
            rows in proptest::collection::vec(
                (
                    proptest::collection::btree_map(0usize..40, -5i64..5, 0..12),
                    0i64..4,
                    0i32..3,
                ),
                1..60,
            ),
        ) {
            let entries: Vec<LogEntry> = rows
                .into_iter()
                .map(|(fields, minute, level)| LogEntry {
                    timestamp: minute * ROLLUP_NS,
                    level,
                    message: "m".to_string(),
                    fields: fields
                        .into_iter()
                        .map(|(k, v)| {
                            let value = match v {
                                -5 => logcluster_proto::FieldValue::str("text"),
                                -4 => logcluster_proto::FieldValue::str(format!("{}", v * 3)),
                                _ => logcluster_proto::FieldValue::int(v),
                            };
                            (format!("f{k:02}"), value)
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect();
            let (_, meta) = build_block(&entries, 1).expect("block");
            let (numeric, complete, rollup) = reference_summaries(&entries);
            proptest::prop_assert_eq!(meta.numeric, numeric);
            proptest::prop_assert_eq!(meta.numeric_complete, complete);
            proptest::prop_assert_eq!(meta.rollup, rollup);
        }

        /// Hosts that come back after more others than a block keeps, and hosts at and past
        /// the longest it keeps, are all in its token set, and only they.
        #[test]
        fn a_block_collects_the_tokens_of_hosts_that_come_back(
            order in proptest::collection::vec(0usize..12, 1..200),
        ) {
            let hosts: Vec<String> = (0..10)
                .map(|i| format!("svc-{i}a7f-Pod{}", i * 13))
                .chain([
                    format!("h{}", "x".repeat(KNOWN_LEN - 1)),
                    format!("h{}", "y".repeat(KNOWN_LEN)),
                ])
                .collect();
            let all: Vec<LogEntry> = order
                .iter()
                .map(|&i| LogEntry {
                    host: hosts[i].clone(),
                    message: "m".into(),
                    ..Default::default()
                })
                .collect();
            let (collected, indexed) = collected_and_indexed_tokens(FORMAT_TEMPLATES, &all);
            proptest::prop_assert_eq!(collected, indexed);
        }

        /// A block's filter is built from exactly the tokens of its entries in every layout
        /// (the hosts and trace ids a block skips as repeats included).
        #[test]
        fn a_block_collects_exactly_the_tokens_of_its_entries(all in arb_entries()) {
            for format in [FORMAT_TEMPLATES, FORMAT_COLUMNS, FORMAT_ROWS] {
                let (collected, indexed) = collected_and_indexed_tokens(format, &all);
                proptest::prop_assert_eq!(collected, indexed, "format {}", format);
            }
        }

        /// Column blocks, with and without templates, give back every entry bit for bit
        /// (compared as protobuf bytes, so NaN payloads and -0.0 count too).
        #[test]
        fn column_blocks_round_trip(all in arb_entries()) {
            let dir = tempfile::tempdir().expect("tempdir");
            let book = TraceBook::open(dir.path()).expect("book");
            // A block of the same book before: ordinals do not start at 0.
            build_block_with(&all[all.len() / 2..], 1, FORMAT_TEMPLATES, Some(&book)).expect("block");
            for (format, shared) in [
                (FORMAT_COLUMNS, None),
                (FORMAT_TEMPLATES, None),
                (FORMAT_TEMPLATES, Some(&book)),
            ] {
                let (bytes, meta) = build_block_with(&all, 1, format, shared).expect("block");
                proptest::prop_assert_eq!(meta.format, format);
                let in_book = all
                    .iter()
                    .any(|e| crate::traces::trace_key(&e.trace_id).is_some());
                proptest::prop_assert_eq!(meta.trace_window != 0, shared.is_some() && in_book);
                let back = decode_block(&bytes, &meta, shared).expect("decodes");
                let encode = |entries: &[LogEntry]| -> Vec<Vec<u8>> {
                    entries.iter().map(Message::encode_to_vec).collect()
                };
                proptest::prop_assert_eq!(encode(&back), encode(&all));
                if meta.trace_window != 0 {
                    // Without the book the block's trace ids cannot be had ...
                    proptest::prop_assert_eq!(
                        decode_block(&bytes, &meta, None).err(),
                        Some(BlockError::TraceIds)
                    );
                    // ... but readers that do not read them need no book.
                    let rows = RowFilter {
                        core_and_message_only: true,
                        ..RowFilter::everything()
                    };
                    let (kept, _) = decode_block_filtered(&bytes, &meta, &rows, None).expect("decodes");
                    proptest::prop_assert_eq!(kept.len(), all.len());
                }
            }
        }

        /// A message needle keeps exactly the rows whose message holds it (ASCII case
        /// ignored) in every layout, whether it is found in a template's fixed text, in a
        /// value, or across both.
        #[test]
        fn message_needles_are_exact_in_every_layout(
            all in arb_entries(),
            pick in 0usize..64,
            from in 0usize..16,
            len in 1usize..12,
        ) {
            let needle = needle_cut(&all, pick, from, len).unwrap_or_else(|| b"timeout".to_vec());
            // What a message-free reader sees of a row.
            let seen = |e: &LogEntry| (e.timestamp, e.level, e.tenant.clone(), e.service.clone());
            let wanted: Vec<_> = all
                .iter()
                .filter(|e| contains_ignore_ascii_case(e.message.as_bytes(), &needle))
                .map(seen)
                .collect();
            for format in [FORMAT_ROWS, FORMAT_COLUMNS, FORMAT_TEMPLATES] {
                let (bytes, meta) = build_block_in(&all, 1, format).expect("block");
                let rows = RowFilter {
                    needle: Some((&needle, NeedleScope::Message)),
                    core_and_message_only: true,
                    message_unread: true,
                    ..RowFilter::everything()
                };
                let (kept, passed_over) = decode_block_filtered(&bytes, &meta, &rows, None).expect("decodes");
                let got: Vec<_> = kept.iter().map(seen).collect();
                proptest::prop_assert_eq!(&got, &wanted, "format {}", format);
                proptest::prop_assert_eq!(passed_over as usize, all.len() - kept.len());
            }
        }

        /// Counts by level from the shape section, when it can give them, equal counting the
        /// rows a full read keeps; a damaged shape section is a checksum error, and damage
        /// elsewhere in the block does not reach this read.
        #[test]
        fn counts_from_templates_equal_counting_rows(
            all in arb_entries(),
            pick in 0usize..64,
            from in 0usize..16,
            len in 1usize..12,
            level_mask in proptest::prelude::any::<u32>(),
            flip in 0usize..1 << 16,
        ) {
            // Some cases count every row.
            let needle = needle_cut(&all, pick, from, len).filter(|_| pick % 5 != 0);
            let (bytes, meta) = build_block(&all, 1).expect("block");
            let rows = RowFilter {
                level_mask,
                needle: needle.as_deref().map(|n| (n, NeedleScope::Message)),
                core_and_message_only: true,
                message_unread: true,
                ..RowFilter::everything()
            };
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("block");
            std::fs::write(&path, &bytes).expect("write");
            let file = File::open(&path).expect("open");
            let counted = count_block_by_level(&file, &meta, &rows).expect("counts");
            if let Some(counts) = &counted {
                let (kept, _) = decode_block_filtered(&bytes, &meta, &rows, None).expect("decodes");
                let mut wanted: Vec<(i32, u64)> = Vec::new();
                for entry in &kept {
                    match wanted.iter_mut().find(|(l, _)| *l == entry.level) {
                        Some((_, c)) => *c += 1,
                        None => wanted.push((entry.level, 1)),
                    }
                }
                let mut got = counts.clone();
                got.retain(|(_, c)| *c > 0);
                got.sort();
                wanted.sort();
                proptest::prop_assert_eq!(got, wanted);
            }
            if !all.is_empty() {
                let mut damaged = bytes.clone();
                let at = flip % damaged.len();
                damaged[at] ^= 0x5a;
                std::fs::write(&path, &damaged).expect("write");
                let file = File::open(&path).expect("open");
                let shape = meta.sections[0] as usize..(meta.sections[0] + meta.sections[2]) as usize;
                let result = count_block_by_level(&file, &meta, &rows);
                if shape.contains(&at) {
                    proptest::prop_assert!(matches!(result, Err(BlockError::Checksum)));
                } else {
                    proptest::prop_assert_eq!(result.expect("counts"), counted);
                }
            }
        }

        /// A damaged section (with a matching CRC, as if written that way) is an error or
        /// some entries, never a panic.
        #[test]
        fn damaged_column_sections_are_errors(all in arb_entries(), at in 0usize..4096, byte in 0u8..=255, cut in 0usize..64) {
            for format in [FORMAT_COLUMNS, FORMAT_TEMPLATES] {
            let (_, meta) = build_block_in(&all, 1, format).expect("block");
            let raws = crate::columnar::raw_sections(&all, format, None);
            for damaged in 0..raws.len() {
                let mut sections = Vec::new();
                let mut bytes = Vec::new();
                for (i, raw) in raws.iter().enumerate() {
                    let mut raw = raw.clone();
                    if i == damaged && !raw.is_empty() {
                        let at = at % raw.len();
                        raw[at] = byte;
                        raw.truncate(raw.len().saturating_sub(cut % 3));
                    }
                    let frame = zstd::bulk::compress(&raw, 1).expect("compress");
                    sections.extend([frame.len() as u32, raw.len() as u32]);
                    bytes.extend_from_slice(&frame);
                }
                let meta = BlockMeta {
                    crc: crc32fast::hash(&bytes),
                    len: bytes.len() as u32,
                    sections,
                    ..meta.clone()
                };
                // Whatever decodes holds the rows the index promises.
                if let Ok(entries) = decode_block(&bytes, &meta, None) {
                    proptest::prop_assert_eq!(entries.len(), all.len());
                }
            }
            }
        }
    }
}
