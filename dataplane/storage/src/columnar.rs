//! The column layouts of a block ([`FORMAT_COLUMNS`], [`FORMAT_TEMPLATES`]): entries stored
//! field by field in separately compressed sections, so that
//! - like values sit together (timestamps as scaled deltas, levels, repeated strings as one
//!   flag byte) and compress far better than whole records do;
//! - a query reads only the sections it needs: time and level prune rows from the small
//!   *core* section; a message substring is tested on the *message* section alone; the
//!   *rest* (host, trace id, free-form fields) is decompressed only when a row survives and
//!   its consumer wants those fields.
//!
//! ```text
//! core     varint n, u8 e, n × zigzag Δ(timestamp / 10^e), n × zigzag Δ(received_at),
//!          n × zigzag level, n × id cell, tenant column, service column
//! message  n × (varint len, bytes)
//! rest     host column, trace_id column, varint k, k × (varint len, key, n × field cell)
//! ```
//! With templates ([`FORMAT_TEMPLATES`]):
//! - the message section is replaced by the shape, rows and vars sections of [`templates`];
//! - the core puts what counting reads first: n, e, timestamps, levels, tenant and service
//!   columns, then received times and ids;
//! - the rest is split in *tags* (host and trace id columns, read alone for a host or
//!   trace id needle) and *fields* (varint k, k × (varint len, key, n × field cell)), and
//!   both store a string of lower-case hex digits (an even number, up to 510) as the bytes
//!   it spells: string cell 2 + u8 len + bytes, field cell 8 + u8 len + bytes.
//! - with a trace-id book ([`crate::traces`], `BlockMeta::trace_window` set), a trace id of
//!   32 hex digits is string cell 3 + varint zigzag(ordinal − the previous cell 3's ordinal,
//!   0 before the first): its ordinal in the book's window.
//!
//! A *string column* is n cells: 0 = the previous row's value ("" before the first row), or
//! 1 + varint len + bytes. An *id cell* is 0 + varint len + bytes, 1 = the previous id's
//! batch at the next position, or 2 + u64 LE batch uid + varint position (ids of the form
//! `<16 hex>-<8 hex>`). A *field cell* is 0 absent, 1 string, 2 zigzag int, 3 f64 LE,
//! 4 bool byte, 5 JSON text, 6 present without a value, 7 f64 as its shortest decimal text
//! (u8 len + ASCII; every value but a NaN, which keeps its bits under 3).
//! Each section is one zstd frame; the block's metadata holds their compressed and raw
//! lengths, and its CRC covers them all.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use logcluster_proto::entry::field_value::Kind;
use logcluster_proto::ids::{entry_id, parse_entry_id_after, push_hex as put_hex};
use logcluster_proto::{EntryRef, FieldRef, FieldValue, LogEntry};
use prost::encoding::{decode_varint, encode_varint};

use crate::StorageError;
use crate::segment::{
    BlockError, FORMAT_COLUMNS, FORMAT_TEMPLATES, MAX_BLOCK_LEN, NeedleScope, RowFilter,
    contains_ignore_ascii_case,
};
use crate::traces::TraceWindow;

mod templates;

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// A string column built one row at a time: each value is written once per run of equal
/// values; with `hex`, a value of lower-case hex digits is stored as the bytes they spell
/// (cell 2: u8 len, bytes).
#[derive(Default)]
struct StringColumn {
    out: Vec<u8>,
    previous: String,
    hex: bool,
    bytes: Vec<u8>,
}

impl StringColumn {
    fn new(hex: bool) -> Self {
        StringColumn {
            hex,
            ..Default::default()
        }
    }

    /// Adds a row's value; returns whether it is the previous row's ("" before the first).
    fn push(&mut self, value: &str) -> bool {
        if value == self.previous {
            self.out.push(0);
            return true;
        }
        put_string_cell(&mut self.out, value, self.hex, &mut self.bytes);
        self.previous.clear();
        self.previous.push_str(value);
        false
    }
}

/// One string cell (1: varint len, bytes; with `hex`, 2 for lower-case hex as bytes).
fn put_string_cell(out: &mut Vec<u8>, value: &str, hex: bool, bytes: &mut Vec<u8>) {
    if hex && hex_bytes(value, bytes) {
        out.push(2);
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    } else {
        out.push(1);
        put_bytes(out, value.as_bytes());
    }
}

/// The trace ids of a block's rows, kept until the block is cut: only then is it known
/// whether they are stored as ordinals of a trace-id book window.
#[derive(Default)]
struct TraceIds {
    /// Each value that differs from the previous row's, one after another.
    text: Vec<u8>,
    /// Per row, its value's range in `text`: a repeated value has its predecessor's range,
    /// and only a repeated value does (a new value starts where `text` ended).
    rows: Vec<(u32, u32)>,
}

impl TraceIds {
    /// Adds a row's trace id; returns whether it is the previous row's ("" before the first).
    fn push(&mut self, value: &str) -> bool {
        let previous = self.rows.last().copied().unwrap_or((0, 0));
        if self.value(previous) == value.as_bytes() {
            self.rows.push(previous);
            return true;
        }
        let start = self.text.len() as u32;
        self.text.extend_from_slice(value.as_bytes());
        self.rows.push((start, self.text.len() as u32));
        false
    }

    fn value(&self, (start, end): (u32, u32)) -> &[u8] {
        &self.text[start as usize..end as usize]
    }

    /// Each row's trace id, as a value or as "the previous row's".
    fn cells(&self) -> impl Iterator<Item = Option<&str>> {
        let mut previous = (0, 0);
        self.rows.iter().map(move |&range| {
            let repeated = range == previous;
            previous = range;
            // The text is a concatenation of whole `&str` values.
            (!repeated).then(|| std::str::from_utf8(self.value(range)).unwrap_or_default())
        })
    }

    /// Each row's trace-id book key ([`crate::traces::trace_key`]).
    pub(crate) fn keys(&self) -> Vec<Option<[u8; crate::traces::ID_LEN]>> {
        let mut key = None;
        self.cells()
            .map(|cell| {
                if let Some(value) = cell {
                    key = crate::traces::trace_key(value);
                }
                key
            })
            .collect()
    }

    /// The trace id column: a string column (hex as bytes when `hex`); with `ordinals` (one
    /// per row), cell 3 (varint zigzag difference to the previous cell 3's ordinal,
    /// starting from 0) for an id with an ordinal.
    fn put(&self, out: &mut Vec<u8>, hex: bool, ordinals: Option<&[u32]>) {
        let mut last = 0i64;
        let mut bytes = Vec::new();
        for (row, cell) in self.cells().enumerate() {
            let Some(value) = cell else {
                out.push(0);
                continue;
            };
            match ordinals.map(|o| o[row]) {
                Some(ordinal) if ordinal != crate::traces::NO_REF => {
                    out.push(3);
                    encode_varint(zigzag(i64::from(ordinal) - last), out);
                    last = i64::from(ordinal);
                }
                _ => put_string_cell(out, value, hex, &mut bytes),
            }
        }
    }
}

/// The bytes spelled by `text` when it is 2 to 510 lower-case hex digits, an even number
/// (so that it prints back the same); false otherwise.
fn hex_bytes(text: &str, out: &mut Vec<u8>) -> bool {
    let digits = text.as_bytes();
    let lower_hex = |b: &u8| matches!(b, b'0'..=b'9' | b'a'..=b'f');
    // Most texts (names, hosts, regions) show in their first two bytes that they are not hex.
    if digits.len() < 2
        || digits.len() > 510
        || !digits.len().is_multiple_of(2)
        || !digits[..2].iter().all(lower_hex)
    {
        return false;
    }
    out.clear();
    out.resize(digits.len() / 2, 0);
    logcluster_proto::ids::unhex_into(digits, out)
}

/// The largest power of ten (up to 10^9) dividing every timestamp, as its exponent.
fn timestamp_scale(timestamps: &[i64]) -> u8 {
    let mut exponent = 9u8;
    let mut unit = 1_000_000_000i64;
    for timestamp in timestamps {
        while exponent > 0 && timestamp % unit != 0 {
            exponent -= 1;
            unit /= 10;
        }
        if exponent == 0 {
            break;
        }
    }
    exponent
}

/// The parts of the core section, in the order [`FORMAT_COLUMNS`] writes them;
/// [`FORMAT_TEMPLATES`] writes [`TEMPLATES_CORE_ORDER`], so that a reader of timestamps,
/// levels, tenant and service can stop there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CorePart {
    Timestamps,
    Received,
    Levels,
    Ids,
    Tenants,
    Services,
}

const COLUMNS_CORE_ORDER: [CorePart; 6] = [
    CorePart::Timestamps,
    CorePart::Received,
    CorePart::Levels,
    CorePart::Ids,
    CorePart::Tenants,
    CorePart::Services,
];
const TEMPLATES_CORE_ORDER: [CorePart; 6] = [
    CorePart::Timestamps,
    CorePart::Levels,
    CorePart::Tenants,
    CorePart::Services,
    CorePart::Received,
    CorePart::Ids,
];

fn core_order(format: u32) -> &'static [CorePart; 6] {
    if format == FORMAT_TEMPLATES {
        &TEMPLATES_CORE_ORDER
    } else {
        &COLUMNS_CORE_ORDER
    }
}

/// The core section built one row at a time (timestamps are kept as they are: their scale
/// is known only once every row is in).
#[derive(Default)]
struct CoreColumns {
    timestamps: Vec<i64>,
    received: Vec<u8>,
    previous_received: i64,
    levels: Vec<u8>,
    ids: Vec<u8>,
    /// The previous id, when it parsed, with its uid and position.
    previous_id: Option<(String, u64, u32)>,
    tenants: StringColumn,
    services: StringColumn,
}

impl CoreColumns {
    fn push(&mut self, entry: &EntryRef<'_>) {
        self.timestamps.push(entry.timestamp);
        encode_varint(
            zigzag(entry.received_at.wrapping_sub(self.previous_received)),
            &mut self.received,
        );
        self.previous_received = entry.received_at;
        encode_varint(zigzag(i64::from(entry.level)), &mut self.levels);
        self.push_id(entry.id);
        self.tenants.push(entry.tenant);
        self.services.push(entry.service);
    }

    fn push_id(&mut self, id: &str) {
        let previous = self.previous_id.as_ref();
        let parsed = parse_entry_id_after(id, previous.map(|(p, uid, _)| (p.as_str(), *uid)));
        let out = &mut self.ids;
        match parsed {
            Some((uid, position))
                if previous
                    .is_some_and(|&(_, u, p)| u == uid && p.checked_add(1) == Some(position)) =>
            {
                out.push(1)
            }
            Some((uid, position)) => {
                out.push(2);
                out.extend_from_slice(&uid.to_le_bytes());
                encode_varint(u64::from(position), out);
            }
            None => {
                out.push(0);
                put_bytes(out, id.as_bytes());
            }
        }
        match parsed {
            Some((uid, position)) => {
                let kept = self.previous_id.get_or_insert_with(Default::default);
                kept.0.clear();
                kept.0.push_str(id);
                (kept.1, kept.2) = (uid, position);
            }
            None => self.previous_id = None,
        }
    }

    fn finish(self, format: u32) -> Vec<u8> {
        let n = self.timestamps.len();
        let mut out = Vec::with_capacity(
            n * 4
                + self.received.len()
                + self.levels.len()
                + self.ids.len()
                + self.tenants.out.len()
                + self.services.out.len()
                + 16,
        );
        encode_varint(n as u64, &mut out);
        let exponent = timestamp_scale(&self.timestamps);
        out.push(exponent);
        for part in core_order(format) {
            match part {
                CorePart::Timestamps => {
                    let unit = 10i64.pow(u32::from(exponent));
                    let mut previous = 0i64;
                    for timestamp in &self.timestamps {
                        let scaled = timestamp / unit;
                        encode_varint(zigzag(scaled.wrapping_sub(previous)), &mut out);
                        previous = scaled;
                    }
                }
                CorePart::Received => out.extend_from_slice(&self.received),
                CorePart::Levels => out.extend_from_slice(&self.levels),
                CorePart::Ids => out.extend_from_slice(&self.ids),
                CorePart::Tenants => out.extend_from_slice(&self.tenants.out),
                CorePart::Services => out.extend_from_slice(&self.services.out),
            }
        }
        out
    }
}

/// The field columns built one row at a time; with `hex`, hex strings are stored as bytes
/// (cell 8).
#[derive(Default)]
struct FieldColumns {
    hex: bool,
    rows: usize,
    /// The distinct keys so far, sorted (a block has few: a binary search per new key beats
    /// sorting every entry's keys), and each one's column.
    keys: Vec<String>,
    columns: Vec<Vec<u8>>,
    /// The previous row's keys, as indices of `keys`. Rows mostly have the keys of the one
    /// before them: such a row adds no key, and its fields go where the previous row's went.
    slots: Vec<usize>,
    text: String,
    bytes: Vec<u8>,
}

impl FieldColumns {
    fn push(&mut self, fields: &[(&str, FieldRef<'_>)]) {
        let same = self.slots.len() == fields.len()
            && fields
                .iter()
                .zip(&self.slots)
                .all(|((key, _), &slot)| self.keys[slot] == *key);
        if !same {
            for &(key, _) in fields {
                if let Err(at) = self.keys.binary_search_by(|k| k.as_str().cmp(key)) {
                    // A new key's column starts with every earlier row absent.
                    self.keys.insert(at, key.to_string());
                    self.columns.insert(at, vec![0; self.rows]);
                }
            }
            // The row's keys and `keys` are both in byte order: its columns are found by
            // walking them side by side.
            self.slots.clear();
            let mut next = 0;
            for &(name, _) in fields {
                while self.keys[next] != name {
                    next += 1;
                }
                self.slots.push(next);
                next += 1;
            }
        }
        let mut next = 0;
        for (&(_, value), &slot) in fields.iter().zip(&self.slots) {
            for column in &mut self.columns[next..slot] {
                column.push(0);
            }
            let column = &mut self.columns[slot];
            match value {
                FieldRef::Str(s) if self.hex && hex_bytes(s, &mut self.bytes) => {
                    column.push(8);
                    column.push(self.bytes.len() as u8);
                    column.extend_from_slice(&self.bytes);
                }
                _ => put_field(column, value, &mut self.text),
            }
            next = slot + 1;
        }
        for column in &mut self.columns[next..] {
            column.push(0);
        }
        self.rows += 1;
    }

    fn put(&self, out: &mut Vec<u8>) {
        encode_varint(self.keys.len() as u64, out);
        for (key, column) in self.keys.iter().zip(&self.columns) {
            put_bytes(out, key.as_bytes());
            out.extend_from_slice(column);
        }
    }
}

/// Appends one present field cell (see the module docs for the tags).
fn put_field(out: &mut Vec<u8>, value: FieldRef<'_>, text: &mut String) {
    match value {
        FieldRef::Str(s) => {
            out.push(1);
            put_bytes(out, s.as_bytes());
        }
        FieldRef::Int(i) => {
            out.push(2);
            encode_varint(zigzag(i), out);
        }
        // Rust prints the shortest decimal that parses back to the same value, so only a
        // NaN (whose payload the text loses) or an unusually long text is stored as bits.
        FieldRef::Float(f) => {
            text.clear();
            let _ = write!(text, "{f:?}");
            if !f.is_nan() && text.len() < 256 {
                out.push(7);
                out.push(text.len() as u8);
                out.extend_from_slice(text.as_bytes());
            } else {
                out.push(3);
                out.extend_from_slice(&f.to_le_bytes());
            }
        }
        FieldRef::Bool(b) => {
            out.push(4);
            out.push(u8::from(b));
        }
        FieldRef::Json(s) => {
            out.push(5);
            put_bytes(out, s.as_bytes());
        }
        FieldRef::Absent => out.push(6),
    }
}

/// The sections of a block in a column layout ([`FORMAT_COLUMNS`] or [`FORMAT_TEMPLATES`]),
/// built one row at a time: a stream adds each entry when it arrives, while it is still in
/// cache, and compresses the sections when the block is cut. The bytes are those of the
/// layout whatever the order the rows arrive in batches.
pub(crate) struct Columns {
    core: CoreColumns,
    messages: Messages,
    hosts: StringColumn,
    traces: TraceIds,
    fields: FieldColumns,
}

/// How a column layout stores messages, which is what tells the two layouts apart.
enum Messages {
    /// [`FORMAT_COLUMNS`]: n × (varint len, bytes).
    Whole(Vec<u8>),
    /// [`FORMAT_TEMPLATES`].
    Templates(Box<templates::Builder>),
}

impl Columns {
    /// [`FORMAT_TEMPLATES`], or [`FORMAT_COLUMNS`] for any other `format`.
    pub(crate) fn new(format: u32) -> Self {
        let hex = format == FORMAT_TEMPLATES;
        Columns {
            core: CoreColumns::default(),
            messages: if hex {
                Messages::Templates(Box::default())
            } else {
                Messages::Whole(Vec::new())
            },
            hosts: StringColumn::new(hex),
            traces: TraceIds::default(),
            fields: FieldColumns {
                hex,
                ..Default::default()
            },
        }
    }

    /// Adds a row; returns whether its host and its trace id are the previous row's.
    pub(crate) fn push(&mut self, entry: &EntryRef<'_>) -> (bool, bool) {
        self.core.push(entry);
        match &mut self.messages {
            Messages::Templates(templates) => templates.push(entry.message.as_bytes(), entry.level),
            Messages::Whole(messages) => put_bytes(messages, entry.message.as_bytes()),
        }
        let host = self.hosts.push(entry.host);
        let trace = self.traces.push(entry.trace_id);
        self.fields.push(&entry.fields);
        (host, trace)
    }

    /// Each row's trace-id book key.
    pub(crate) fn trace_keys(&self) -> Vec<Option<[u8; crate::traces::ID_LEN]>> {
        self.traces.keys()
    }

    /// The uncompressed sections: core, message and rest ([`FORMAT_COLUMNS`]), or core,
    /// shape, rows, vars, tags and fields ([`FORMAT_TEMPLATES`]). `trace_ordinals`
    /// ([`FORMAT_TEMPLATES`] only, one per row): the trace ids' ordinals in a trace-id book
    /// window.
    pub(crate) fn raw_sections(self, trace_ordinals: Option<&[u32]>) -> Vec<Vec<u8>> {
        let mut tags = self.hosts.out;
        match self.messages {
            Messages::Templates(templates) => {
                let core = self.core.finish(FORMAT_TEMPLATES);
                self.traces.put(&mut tags, true, trace_ordinals);
                let [shape, rows, vars] = templates.finish();
                let mut fields = Vec::new();
                self.fields.put(&mut fields);
                vec![core, shape, rows, vars, tags, fields]
            }
            Messages::Whole(messages) => {
                let core = self.core.finish(FORMAT_COLUMNS);
                self.traces.put(&mut tags, false, None);
                self.fields.put(&mut tags);
                vec![core, messages, tags]
            }
        }
    }

    /// Compresses the sections; returns the block bytes (one zstd frame per section) and
    /// the sections' compressed and raw lengths, interleaved.
    pub(crate) fn encode(
        self,
        zstd_level: i32,
        trace_ordinals: Option<&[u32]>,
    ) -> Result<(Vec<u8>, Vec<u32>), StorageError> {
        let mut block = Vec::new();
        let raws = self.raw_sections(trace_ordinals);
        let mut sections = Vec::with_capacity(2 * raws.len());
        let mut compressor = Kept::take(zstd_level)?;
        for raw in &raws {
            let compressed = compressor.compress(raw)?;
            sections.push(crate::segment::block_len(compressed.len())?);
            sections.push(crate::segment::block_len(raw.len())?);
            block.extend_from_slice(&compressed);
        }
        Ok((block, sections))
    }
}

/// Compression contexts kept between blocks, with their levels. Setting one up allocates
/// and clears its tables (about a megabyte at level 3), which costs more than compressing a
/// small section; a context used again only clears what its last frame left dirty.
static COMPRESSORS: std::sync::Mutex<Vec<(i32, zstd::bulk::Compressor<'static>)>> =
    std::sync::Mutex::new(Vec::new());

/// How many idle contexts [`COMPRESSORS`] keeps: as many as blocks are usually compressed at
/// once (one per core); a context beyond them is dropped after its block.
const KEPT_COMPRESSORS: usize = 4;

/// A compression context taken from [`COMPRESSORS`] (or new), put back when dropped.
struct Kept(Option<(i32, zstd::bulk::Compressor<'static>)>);

impl Kept {
    fn take(level: i32) -> Result<Kept, StorageError> {
        let kept = {
            let mut idle = COMPRESSORS.lock().unwrap_or_else(|e| e.into_inner());
            let at = idle.iter().position(|(l, _)| *l == level);
            at.map(|at| idle.swap_remove(at))
        };
        let kept = match kept {
            Some(kept) => kept,
            None => (
                level,
                zstd::bulk::Compressor::new(level)
                    .map_err(|source| StorageError::Compress { source })?,
            ),
        };
        Ok(Kept(Some(kept)))
    }

    fn compress(&mut self, raw: &[u8]) -> Result<Vec<u8>, StorageError> {
        let (_, compressor) = self.0.as_mut().expect("a kept context until dropped");
        compressor
            .compress(raw)
            .map_err(|source| StorageError::Compress { source })
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let mut idle = COMPRESSORS.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < KEPT_COMPRESSORS {
            idle.extend(self.0.take());
        }
    }
}

/// The uncompressed sections of `entries` in a column layout ([`Columns::raw_sections`]).
#[cfg(test)]
pub(crate) fn raw_sections(
    entries: &[LogEntry],
    format: u32,
    trace_ordinals: Option<&[u32]>,
) -> Vec<Vec<u8>> {
    let mut columns = Columns::new(format);
    for entry in entries {
        columns.push(&EntryRef::of(entry));
    }
    columns.raw_sections(trace_ordinals)
}

/// A byte range of a decompressed section.
#[derive(Clone, Copy, Default)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn of(self, bytes: &[u8]) -> &[u8] {
        &bytes[self.start as usize..(self.start + self.len) as usize]
    }
}

/// A reader over one decompressed section.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, BlockError> {
        // Most values (lengths, deltas, levels) fit in one byte.
        if let Some(&byte) = self.bytes.get(self.pos)
            && byte < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(byte));
        }
        let mut rest = &self.bytes[self.pos..];
        let before = rest.len();
        let value = decode_varint(&mut rest).map_err(|_| BlockError::Truncated)?;
        self.pos += before - rest.len();
        Ok(value)
    }

    fn byte(&mut self) -> Result<u8, BlockError> {
        let byte = *self.bytes.get(self.pos).ok_or(BlockError::Truncated)?;
        self.pos += 1;
        Ok(byte)
    }

    fn take(&mut self, len: usize) -> Result<Span, BlockError> {
        let end = self.pos.checked_add(len).ok_or(BlockError::Truncated)?;
        if end > self.bytes.len() {
            return Err(BlockError::Truncated);
        }
        let span = Span {
            start: self.pos as u32,
            len: len as u32,
        };
        self.pos = end;
        Ok(span)
    }

    fn counted(&mut self) -> Result<Span, BlockError> {
        let len = usize::try_from(self.varint()?).map_err(|_| BlockError::Truncated)?;
        self.take(len)
    }

    fn string_column(&mut self, n: usize) -> Result<Vec<Span>, BlockError> {
        let mut out = Vec::with_capacity(n);
        let mut previous = Span::default();
        for _ in 0..n {
            match self.byte()? {
                0 => {}
                1 => previous = self.counted()?,
                _ => return Err(BlockError::Decode),
            }
            out.push(previous);
        }
        Ok(out)
    }

    /// A string column whose texts are copied to `out` (hex cells spelled out, and ordinals
    /// of `traces` looked up); the spans point into `out`.
    fn string_column_into(
        &mut self,
        n: usize,
        out: &mut Vec<u8>,
        traces: Option<&TraceWindow>,
    ) -> Result<Vec<Span>, BlockError> {
        let mut spans = Vec::with_capacity(n);
        let mut previous = Span::default();
        let mut last = 0i64;
        for _ in 0..n {
            match self.byte()? {
                3 => {
                    let window = traces.ok_or(BlockError::TraceIds)?;
                    let ordinal = last
                        .checked_add(unzigzag(self.varint()?))
                        .ok_or(BlockError::Decode)?;
                    let id = u32::try_from(ordinal)
                        .ok()
                        .and_then(|o| window.get(o))
                        .ok_or(BlockError::TraceIds)?;
                    last = ordinal;
                    let start = out.len();
                    put_hex(out, id);
                    previous = Span {
                        start: start as u32,
                        len: (out.len() - start) as u32,
                    };
                }
                0 => {}
                1 => {
                    let span = self.counted()?;
                    let start = out.len();
                    out.extend_from_slice(span.of(self.bytes));
                    previous = Span {
                        start: start as u32,
                        len: span.len,
                    };
                }
                2 => {
                    let len = usize::from(self.byte()?);
                    let raw = self.take(len)?;
                    let start = out.len();
                    put_hex(out, raw.of(self.bytes));
                    previous = Span {
                        start: start as u32,
                        len: (out.len() - start) as u32,
                    };
                }
                _ => return Err(BlockError::Decode),
            }
            spans.push(previous);
        }
        Ok(spans)
    }

    fn done(&self) -> Result<(), BlockError> {
        if self.pos == self.bytes.len() {
            Ok(())
        } else {
            Err(BlockError::Decode)
        }
    }
}

fn text(bytes: &[u8], span: Span) -> Result<String, BlockError> {
    std::str::from_utf8(span.of(bytes))
        .map(str::to_owned)
        .map_err(|_| BlockError::Decode)
}

#[derive(Clone, Copy)]
enum IdCell {
    Literal(Span),
    Batch(u64, u32),
}

struct Core {
    timestamps: Vec<i64>,
    received: Vec<i64>,
    levels: Vec<i32>,
    ids: Vec<IdCell>,
    tenants: Vec<Span>,
    services: Vec<Span>,
}

/// Parses the core section of a block whose index says it holds `count` rows. `lite`
/// stops after the parts that [`RowFilter::message_unread`] readers need when the layout
/// puts them first (ids and received times are then left empty).
fn parse_core(bytes: &[u8], count: u32, format: u32, lite: bool) -> Result<Core, BlockError> {
    let mut r = Reader::new(bytes);
    let n = usize::try_from(r.varint()?).map_err(|_| BlockError::Decode)?;
    // The section and the index must agree (and every row takes at least a byte in each of
    // the six columns), before anything is sized by `n`.
    if n != count as usize || n > bytes.len() / 6 {
        return Err(BlockError::Decode);
    }
    let exponent = r.byte()?;
    if exponent > 9 {
        return Err(BlockError::Decode);
    }
    let mut core = Core {
        timestamps: Vec::new(),
        received: Vec::new(),
        levels: Vec::new(),
        ids: Vec::new(),
        tenants: Vec::new(),
        services: Vec::new(),
    };
    let order = core_order(format);
    let lite = lite && format == FORMAT_TEMPLATES;
    for part in order {
        if lite && *part == CorePart::Received {
            return Ok(core);
        }
        match part {
            CorePart::Timestamps => {
                let unit = 10i64.pow(u32::from(exponent));
                core.timestamps.reserve_exact(n);
                let mut previous = 0i64;
                for _ in 0..n {
                    previous = previous.wrapping_add(unzigzag(r.varint()?));
                    core.timestamps.push(previous.wrapping_mul(unit));
                }
            }
            CorePart::Received => {
                core.received.reserve_exact(n);
                let mut previous = 0i64;
                for _ in 0..n {
                    previous = previous.wrapping_add(unzigzag(r.varint()?));
                    core.received.push(previous);
                }
            }
            CorePart::Levels => {
                core.levels.reserve_exact(n);
                for _ in 0..n {
                    core.levels.push(
                        i32::try_from(unzigzag(r.varint()?)).map_err(|_| BlockError::Decode)?,
                    );
                }
            }
            CorePart::Ids => {
                core.ids.reserve_exact(n);
                let mut previous: Option<(u64, u32)> = None;
                for _ in 0..n {
                    let cell = match r.byte()? {
                        0 => {
                            previous = None;
                            IdCell::Literal(r.counted()?)
                        }
                        1 => {
                            let (uid, position) = previous.ok_or(BlockError::Decode)?;
                            let next = position.checked_add(1).ok_or(BlockError::Decode)?;
                            previous = Some((uid, next));
                            IdCell::Batch(uid, next)
                        }
                        2 => {
                            let span = r.take(8)?;
                            let uid = u64::from_le_bytes(
                                span.of(bytes).try_into().map_err(|_| BlockError::Decode)?,
                            );
                            let position =
                                u32::try_from(r.varint()?).map_err(|_| BlockError::Decode)?;
                            previous = Some((uid, position));
                            IdCell::Batch(uid, position)
                        }
                        _ => return Err(BlockError::Decode),
                    };
                    core.ids.push(cell);
                }
            }
            CorePart::Tenants => core.tenants = r.string_column(n)?,
            CorePart::Services => core.services = r.string_column(n)?,
        }
    }
    r.done()?;
    Ok(core)
}

fn parse_messages(bytes: &[u8], n: usize) -> Result<Vec<Span>, BlockError> {
    let mut r = Reader::new(bytes);
    let spans = (0..n).map(|_| r.counted()).collect::<Result<Vec<_>, _>>()?;
    r.done()?;
    Ok(spans)
}

#[derive(Clone, Copy)]
enum Cell {
    Absent,
    Str(Span),
    Int(i64),
    Float(f64),
    FloatText(Span),
    Bool(bool),
    Json(Span),
    NoValue,
    /// A string stored as the bytes its lower-case hex digits spell.
    Hex(Span),
}

/// Host, trace id and fields of a block's rows: host and trace id spans into the buffer
/// held next to it, field spans into `field_bytes` or, without, that same buffer.
struct Rest {
    hosts: Vec<Span>,
    traces: Vec<Span>,
    /// Empty while only the tags section of a [`FORMAT_TEMPLATES`] block is loaded.
    fields: Vec<(String, Vec<Cell>)>,
    /// A [`FORMAT_TEMPLATES`] block's fields section, once loaded.
    field_bytes: Option<Vec<u8>>,
}

impl Rest {
    fn field_bytes<'a>(&'a self, bytes: &'a [u8]) -> &'a [u8] {
        self.field_bytes.as_deref().unwrap_or(bytes)
    }
}

/// How a column block stores host, trace id and fields.
#[derive(Clone, Copy)]
enum RestFrames<'b> {
    /// [`FORMAT_COLUMNS`]: one rest section.
    Whole(&'b [u8], u32),
    /// [`FORMAT_TEMPLATES`]: tags (host, trace id) and fields sections, hex as bytes.
    Split {
        tags: (&'b [u8], u32),
        fields: (&'b [u8], u32),
        /// The trace-id book window of the block's trace ids, if they are there.
        window: Option<&'b TraceWindow>,
    },
}

impl RestFrames<'_> {
    /// Host and trace ids (and, in one rest section, the fields too).
    fn load_tags(self, n: usize) -> Result<(Vec<u8>, Rest), BlockError> {
        match self {
            RestFrames::Whole(frame, raw) => {
                let bytes = decompress(frame, raw)?;
                let parsed = parse_rest(&bytes, n)?;
                Ok((bytes, parsed))
            }
            RestFrames::Split { tags, window, .. } => {
                let section = decompress(tags.0, tags.1)?;
                let mut out = Vec::with_capacity(section.len() * 2);
                let mut r = Reader::new(&section);
                let hosts = r.string_column_into(n, &mut out, None)?;
                let traces = r.string_column_into(n, &mut out, window)?;
                r.done()?;
                Ok((
                    out,
                    Rest {
                        hosts,
                        traces,
                        fields: Vec::new(),
                        field_bytes: None,
                    },
                ))
            }
        }
    }

    /// Adds the fields to what [`RestFrames::load_tags`] loaded.
    fn load_fields(self, n: usize, rest: &mut Rest) -> Result<(), BlockError> {
        // One rest section holds the fields already.
        if let RestFrames::Split { fields, .. } = self
            && rest.field_bytes.is_none()
        {
            let section = decompress(fields.0, fields.1)?;
            let mut r = Reader::new(&section);
            rest.fields = parse_fields(&mut r, &section, n, true)?;
            r.done()?;
            rest.field_bytes = Some(section);
        }
        Ok(())
    }

    fn load_all(self, n: usize) -> Result<(Vec<u8>, Rest), BlockError> {
        let (bytes, mut rest) = self.load_tags(n)?;
        self.load_fields(n, &mut rest)?;
        Ok((bytes, rest))
    }
}

fn parse_rest(bytes: &[u8], n: usize) -> Result<Rest, BlockError> {
    let mut r = Reader::new(bytes);
    let hosts = r.string_column(n)?;
    let traces = r.string_column(n)?;
    let fields = parse_fields(&mut r, bytes, n, false)?;
    r.done()?;
    Ok(Rest {
        hosts,
        traces,
        fields,
        field_bytes: None,
    })
}

/// Reads the field columns at `r` over `bytes` (spans point into `bytes`); hex cells
/// only where `hex` (the [`FORMAT_TEMPLATES`] fields section).
fn parse_fields(
    r: &mut Reader<'_>,
    bytes: &[u8],
    n: usize,
    hex: bool,
) -> Result<Vec<(String, Vec<Cell>)>, BlockError> {
    let keys = usize::try_from(r.varint()?).map_err(|_| BlockError::Decode)?;
    if keys > bytes.len() {
        return Err(BlockError::Decode);
    }
    let mut fields = Vec::with_capacity(keys);
    for _ in 0..keys {
        let key = text(bytes, r.counted()?)?;
        let mut cells = Vec::with_capacity(n);
        for _ in 0..n {
            cells.push(match r.byte()? {
                0 => Cell::Absent,
                1 => Cell::Str(r.counted()?),
                2 => Cell::Int(unzigzag(r.varint()?)),
                3 => {
                    let span = r.take(8)?;
                    Cell::Float(f64::from_le_bytes(
                        span.of(bytes).try_into().map_err(|_| BlockError::Decode)?,
                    ))
                }
                4 => Cell::Bool(r.byte()? != 0),
                5 => Cell::Json(r.counted()?),
                6 => Cell::NoValue,
                7 => {
                    let len = usize::from(r.byte()?);
                    Cell::FloatText(r.take(len)?)
                }
                8 if hex => {
                    let len = usize::from(r.byte()?);
                    Cell::Hex(r.take(len)?)
                }
                _ => return Err(BlockError::Decode),
            });
        }
        fields.push((key, cells));
    }
    Ok(fields)
}

/// Capacity of the lower-cased scratch copy kept between blocks, per thread.
const LOWERED_KEEP: usize = 8 * 1024 * 1024;

thread_local! {
    /// One decompression context per thread (creating one per frame costs more than a small
    /// frame's decompression).
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
    /// Scratch space for a lower-cased copy of a message section.
    static LOWERED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn decompress(frame: &[u8], raw_len: u32) -> Result<Vec<u8>, BlockError> {
    let capacity = (raw_len as usize).min(MAX_BLOCK_LEN);
    let raw = DECOMPRESSOR
        .with_borrow_mut(|slot| {
            let decompressor = match slot {
                Some(decompressor) => decompressor,
                None => slot.insert(zstd::bulk::Decompressor::new()?),
            };
            decompressor.decompress(frame, capacity)
        })
        .map_err(|_| BlockError::Decompress)?;
    if raw.len() != raw_len as usize {
        return Err(BlockError::Decode);
    }
    Ok(raw)
}

/// Clears `keep[i]` for every row whose message lacks `needle` (ASCII case ignored). The
/// whole section is searched at once: one lower-cased copy, one substring search, and each
/// hit mapped to the message holding it (a hit across two messages counts for neither).
fn keep_rows_containing(bytes: &[u8], spans: &[Span], needle: &[u8], keep: &mut [bool]) {
    let needle = needle.to_ascii_lowercase();
    if needle.is_empty() {
        return;
    }
    let finder = memchr::memmem::Finder::new(&needle);
    LOWERED.with_borrow_mut(|lowered| {
        lowered.clear();
        lowered.extend_from_slice(bytes);
        lowered.make_ascii_lowercase();
        let mut found = vec![false; spans.len()];
        let mut row = 0;
        let mut from = 0;
        while let Some(at) = finder.find(&lowered[from..]).map(|at| at + from) {
            while row < spans.len() && (spans[row].start + spans[row].len) as usize <= at {
                row += 1;
            }
            let Some(span) = spans.get(row) else {
                break;
            };
            if span.start as usize <= at && at + needle.len() <= (span.start + span.len) as usize {
                found[row] = true;
                // The rest of this message need not be searched.
                from = (span.start + span.len) as usize;
            } else {
                from = at + 1;
            }
        }
        for (k, hit) in keep.iter_mut().zip(found) {
            *k = *k && hit;
        }
        // Sections are about a block's size; an unusually large one is not kept around.
        if lowered.capacity() > LOWERED_KEEP {
            *lowered = Vec::new();
        }
    });
}

/// Whether any string of row `i` in the rest section contains `needle`.
fn rest_row_contains(rest: &Rest, bytes: &[u8], i: usize, needle: &[u8]) -> bool {
    let field_bytes = rest.field_bytes(bytes);
    let mut spelled = Vec::new();
    contains_ignore_ascii_case(rest.hosts[i].of(bytes), needle)
        || contains_ignore_ascii_case(rest.traces[i].of(bytes), needle)
        || rest.fields.iter().any(|(key, cells)| match cells[i] {
            Cell::Absent => false,
            Cell::Str(s) | Cell::Json(s) | Cell::FloatText(s) => {
                contains_ignore_ascii_case(s.of(field_bytes), needle)
                    || contains_ignore_ascii_case(key.as_bytes(), needle)
            }
            Cell::Hex(s) => {
                spelled.clear();
                put_hex(&mut spelled, s.of(field_bytes));
                contains_ignore_ascii_case(&spelled, needle)
                    || contains_ignore_ascii_case(key.as_bytes(), needle)
            }
            _ => contains_ignore_ascii_case(key.as_bytes(), needle),
        })
}

/// How a column block stores its messages.
enum MessageFrames<'b> {
    /// [`FORMAT_COLUMNS`]: one section of messages.
    Plain(&'b [u8], u32),
    /// [`FORMAT_TEMPLATES`]: shape, rows and vars sections (see [`templates`]).
    Templated {
        shape: (&'b [u8], u32),
        rows: (&'b [u8], u32),
        vars: (&'b [u8], u32),
    },
}

/// A block's shape section with its rows.
fn load_shape(
    shape: (&[u8], u32),
    rows: (&[u8], u32),
    n: usize,
) -> Result<(Vec<u8>, templates::Shape), BlockError> {
    let shape_bytes = decompress(shape.0, shape.1)?;
    let mut parsed = templates::parse_shape(&shape_bytes, n)?;
    templates::parse_rows(&decompress(rows.0, rows.1)?, &mut parsed)?;
    Ok((shape_bytes, parsed))
}

/// Every message of a block (the section's bytes and each one's span).
/// Rows that `wanted` leaves out may get an empty span.
/// A templates block's sections as a needle search left them: the shape (with its rows)
/// and, when the search needed them, the values.
type SearchedShape = (
    Vec<u8>,
    templates::Shape,
    Option<(Vec<u8>, templates::Vars)>,
);

fn load_messages(
    frames: &MessageFrames<'_>,
    n: usize,
    wanted: &[bool],
    searched: Option<SearchedShape>,
) -> Result<(Vec<u8>, Vec<Span>), BlockError> {
    match *frames {
        // Whole messages are simply all there.
        MessageFrames::Plain(frame, raw) => {
            let bytes = decompress(frame, raw)?;
            let spans = parse_messages(&bytes, n)?;
            Ok((bytes, spans))
        }
        MessageFrames::Templated {
            shape,
            rows: row_frame,
            vars,
        } => {
            let (shape_bytes, parsed, searched_vars) = match searched {
                Some(searched) => searched,
                None => {
                    let (shape_bytes, parsed) = load_shape(shape, row_frame, n)?;
                    (shape_bytes, parsed, None)
                }
            };
            // The values a needle search parsed are used as they are, not parsed again.
            let (vars_bytes, values) = match searched_vars {
                Some(searched) => searched,
                None => {
                    let bytes = decompress(vars.0, vars.1)?;
                    let values = templates::parse_vars(&shape_bytes, &bytes, &parsed)?;
                    (bytes, values)
                }
            };
            Ok(templates::messages(
                &shape_bytes,
                &parsed,
                &vars_bytes,
                &values,
                wanted,
            )?)
        }
    }
}

/// Counts by level of the `count` rows of a [`FORMAT_TEMPLATES`] block that hold `rows`'
/// message needle (every row without one), from the block's shape section (`frame`, whose
/// CRC the caller checked) alone; `None` when that cannot tell (another needle scope, or
/// rows whose values must be read). Time and levels are not filtered here.
pub fn level_counts(
    frame: &[u8],
    shape_raw: u32,
    count: u32,
    rows: &RowFilter<'_>,
) -> Result<Option<Vec<(i32, u64)>>, BlockError> {
    let needle = match rows.needle {
        None => None,
        Some((needle, NeedleScope::Message)) => Some(needle.to_ascii_lowercase()),
        Some(_) => return Ok(None),
    };
    let shape_bytes = decompress(frame, shape_raw)?;
    let shape = templates::parse_shape(&shape_bytes, count as usize)?;
    Ok(templates::level_counts(
        &shape_bytes,
        &shape,
        needle.as_deref(),
    ))
}

/// Decodes the rows of a column block (`format` [`FORMAT_COLUMNS`] or
/// [`FORMAT_TEMPLATES`]) that `rows` keeps; returns them and how many rows it passed over.
/// The CRC has been checked by the caller.
pub fn decode(
    block: &[u8],
    format: u32,
    sections: &[u32],
    count: u32,
    rows: &RowFilter<'_>,
    window: Option<&TraceWindow>,
) -> Result<(Vec<LogEntry>, u64), BlockError> {
    let frames_wanted = if format == FORMAT_TEMPLATES { 6 } else { 3 };
    if sections.len() != 2 * frames_wanted {
        return Err(BlockError::Decode);
    }
    let mut frames = Vec::with_capacity(frames_wanted);
    let mut at = 0usize;
    for pair in sections.chunks_exact(2) {
        let end = at
            .checked_add(pair[0] as usize)
            .filter(|end| *end <= block.len())
            .ok_or(BlockError::Truncated)?;
        frames.push((&block[at..end], pair[1]));
        at = end;
    }
    if at != block.len() {
        return Err(BlockError::Truncated);
    }
    let (core_frame, core_raw) = frames[0];
    let rest_frames = if format == FORMAT_TEMPLATES {
        RestFrames::Split {
            tags: frames[4],
            fields: frames[5],
            window,
        }
    } else {
        RestFrames::Whole(frames[2].0, frames[2].1)
    };
    let message_frames = if format == FORMAT_TEMPLATES {
        MessageFrames::Templated {
            shape: frames[1],
            rows: frames[2],
            vars: frames[3],
        }
    } else {
        MessageFrames::Plain(frames[1].0, frames[1].1)
    };
    let core_bytes = decompress(core_frame, core_raw)?;
    // A record needle may be in an id.
    let lite = rows.message_unread && !matches!(rows.needle, Some((_, NeedleScope::Record)));
    let core = parse_core(&core_bytes, count, format, lite)?;
    let n = core.timestamps.len();
    let mut keep: Vec<bool> = (0..n)
        .map(|i| rows.keeps(core.timestamps[i], core.levels[i]))
        .collect();

    let mut messages: Option<(Vec<u8>, Vec<Span>)> = None;
    let mut searched: Option<SearchedShape> = None;
    let mut rest: Option<(Vec<u8>, Rest)> = None;
    if let Some((needle, scope)) = rows.needle
        && keep.iter().any(|k| *k)
    {
        match scope {
            NeedleScope::Message => match message_frames {
                MessageFrames::Plain(..) => {
                    let (bytes, spans) =
                        messages.insert(load_messages(&message_frames, n, &keep, None)?);
                    keep_rows_containing(bytes, spans, needle, &mut keep);
                }
                MessageFrames::Templated {
                    shape,
                    rows: row_frame,
                    vars,
                } => {
                    let (shape_bytes, parsed) = load_shape(shape, row_frame, n)?;
                    let searched_vars = templates::keep_rows_containing(
                        &shape_bytes,
                        &parsed,
                        &needle.to_ascii_lowercase(),
                        &mut keep,
                        || decompress(vars.0, vars.1),
                    )?;
                    searched = Some((shape_bytes, parsed, searched_vars));
                }
            },
            NeedleScope::Host | NeedleScope::TraceId => {
                let (bytes, parsed) = rest.insert(rest_frames.load_tags(n)?);
                let column = if scope == NeedleScope::Host {
                    &parsed.hosts
                } else {
                    &parsed.traces
                };
                for (k, span) in keep.iter_mut().zip(column.iter()) {
                    *k = *k && contains_ignore_ascii_case(span.of(bytes), needle);
                }
            }
            NeedleScope::Record => {
                let (message_bytes, spans) =
                    messages.insert(load_messages(&message_frames, n, &keep, None)?);
                let (rest_bytes, parsed) = rest.insert(rest_frames.load_all(n)?);
                for (i, k) in keep.iter_mut().enumerate() {
                    *k = *k
                        && (contains_ignore_ascii_case(spans[i].of(message_bytes), needle)
                            || rest_row_contains(parsed, rest_bytes, i, needle)
                            || contains_ignore_ascii_case(
                                core.services[i].of(&core_bytes),
                                needle,
                            )
                            || contains_ignore_ascii_case(core.tenants[i].of(&core_bytes), needle)
                            || match core.ids[i] {
                                IdCell::Literal(s) => {
                                    contains_ignore_ascii_case(s.of(&core_bytes), needle)
                                }
                                IdCell::Batch(uid, position) => contains_ignore_ascii_case(
                                    entry_id(uid, position).as_bytes(),
                                    needle,
                                ),
                            });
                }
            }
        }
    }
    let kept = keep.iter().filter(|k| **k).count();
    let passed_over = (n - kept) as u64;
    if kept == 0 {
        return Ok((Vec::new(), passed_over));
    }
    let messages = match messages {
        Some(loaded) => Some(loaded),
        None if rows.message_unread => None,
        None => Some(load_messages(&message_frames, n, &keep, searched)?),
    };
    let rest = if rows.core_and_message_only || rows.message_unread {
        rest
    } else {
        match rest {
            Some((bytes, mut parsed)) => {
                rest_frames.load_fields(n, &mut parsed)?;
                Some((bytes, parsed))
            }
            None => Some(rest_frames.load_all(n)?),
        }
    };
    let mut entries = Vec::with_capacity(kept);
    for i in (0..n).filter(|i| keep[*i]) {
        let mut entry = LogEntry {
            id: match core.ids.get(i) {
                Some(IdCell::Literal(span)) => text(&core_bytes, *span)?,
                Some(IdCell::Batch(uid, position)) => entry_id(*uid, *position),
                None => String::new(),
            },
            timestamp: core.timestamps[i],
            received_at: core.received.get(i).copied().unwrap_or_default(),
            tenant: text(&core_bytes, core.tenants[i])?,
            service: text(&core_bytes, core.services[i])?,
            level: core.levels[i],
            message: match &messages {
                Some((bytes, spans)) if !rows.message_unread => text(bytes, spans[i])?,
                _ => String::new(),
            },
            ..Default::default()
        };
        if let Some((bytes, rest)) = &rest {
            entry.host = text(bytes, rest.hosts[i])?;
            entry.trace_id = text(bytes, rest.traces[i])?;
            let bytes = rest.field_bytes(bytes);
            let mut fields = BTreeMap::new();
            for (key, cells) in &rest.fields {
                let kind = match cells[i] {
                    Cell::Absent => continue,
                    Cell::Str(span) => Some(Kind::Str(text(bytes, span)?)),
                    Cell::Hex(span) => Some(Kind::Str(logcluster_proto::ids::hex(span.of(bytes)))),
                    Cell::Int(v) => Some(Kind::Int(v)),
                    Cell::Float(v) => Some(Kind::Float(v)),
                    Cell::FloatText(span) => Some(Kind::Float(
                        std::str::from_utf8(span.of(bytes))
                            .ok()
                            .and_then(|t| t.parse().ok())
                            .ok_or(BlockError::Decode)?,
                    )),
                    Cell::Bool(v) => Some(Kind::Bool(v)),
                    Cell::Json(span) => Some(Kind::Json(text(bytes, span)?)),
                    Cell::NoValue => None,
                };
                fields.insert(key.clone(), FieldValue { kind });
            }
            entry.fields = fields;
        }
        entries.push(entry);
    }
    Ok((entries, passed_over))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context from the pool, used before on other sections, compresses a section to the
    /// bytes a new context gives, at fast, default and slow levels.
    #[test]
    fn pooled_compression_contexts_compress_as_new_ones_do() {
        let sections: Vec<Vec<u8>> = (0..4usize)
            .map(|i| {
                (0..20_000 + i * 7_000)
                    .map(|j| (((j * 31 + i) % 251) ^ (j / 97)) as u8)
                    .collect()
            })
            .collect();
        for level in [1, 3, 9, 19] {
            for raw in &sections {
                let new = zstd::bulk::Compressor::new(level)
                    .expect("context")
                    .compress(raw)
                    .expect("compressed");
                for other in sections.iter().rev() {
                    Kept::take(level)
                        .expect("context")
                        .compress(other)
                        .expect("compressed");
                }
                let pooled = Kept::take(level)
                    .expect("context")
                    .compress(raw)
                    .expect("compressed");
                assert_eq!(pooled, new, "level {level}");
            }
        }
    }

    #[test]
    fn a_message_needle_is_found_only_inside_one_message() {
        let messages = ["xa", "b", "a\u{1}b", "TIMEOUT", "no", "time", "out"];
        let mut raw = Vec::new();
        for message in messages {
            put_bytes(&mut raw, message.as_bytes());
        }
        let spans = parse_messages(&raw, messages.len()).expect("parses");
        let rows = |needle: &[u8], keep: &mut [bool]| {
            keep_rows_containing(&raw, &spans, needle, keep);
            keep.iter()
                .enumerate()
                .filter(|(_, k)| **k)
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        };
        // "xa" + length byte 1 + "b" holds the needle in the section, not in a message.
        assert_eq!(rows(b"a\x01b", &mut [true; 7]), vec![2]);
        assert_eq!(rows(b"timeout", &mut [true; 7]), vec![3]);
        assert_eq!(rows(b"Time", &mut [true; 7]), vec![3, 5]);
        // Rows already passed over stay so.
        let mut keep = [true, true, true, false, true, true, true];
        assert_eq!(rows(b"time", &mut keep), vec![5]);
        assert_eq!(rows(b"absent", &mut [true; 7]), Vec::<usize>::new());
    }
}
