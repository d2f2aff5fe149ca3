//! Message templates: how the column layout with templates ([`FORMAT_TEMPLATES`]) stores
//! messages. Most log messages are a few fixed texts with numbers and identifiers filled in;
//! a block keeps each distinct text once and the filled-in values in a separate frame, so
//! that
//! - the values compress on their own (integers as varints, not digits between words);
//! - a substring query usually needs only the small *shape* frame: a needle found in a
//!   template's fixed text matches every row of that template, and a needle that cannot be in
//!   any value leaves the *vars* frame compressed.
//!
//! A message is cut into *words*, the maximal runs of bytes that are not ASCII punctuation,
//! space or control characters (every non-ASCII byte belongs to a word, so UTF-8 is never
//! cut). A word holding an ASCII digit is a *variable*: a decimal without a leading zero of at
//! most 18 digits is an *integer*, any other a *text*. The template is the message with each
//! variable replaced by one placeholder byte, [`INT`] or [`TEXT`]; a message that holds a
//! placeholder byte itself is stored whole as one text under the template `[LITERAL]`.
//!
//! ```text
//! shape  varint t, t × (varint len, template, varint ints, varint texts), t × (varint k,
//!        k × (zigzag level, varint rows)), FILTER_BYTES bigram filter of the text values
//! rows   n × varint template index
//! vars   per template, per placeholder: the values of the template's rows, in row order
//!        (an integer as a varint, a text as varint len + bytes)
//! ```
//! Each template's rows are counted by level, so a count of the rows holding a needle by
//! level needs only the shape when the needle's presence is decided per template. Values are
//! stored column by column, one column per placeholder of each template, so that like values
//! (a template's durations, its ids) sit together.
//!
//! Why a needle search is exact: placeholders are separators, so an occurrence of a needle
//! without separators lies inside one word, which is either fixed text of the template or one
//! whole variable; with separators the needle is checked on reconstructed messages wherever
//! it is not already in the fixed text.
//!
//! [`FORMAT_TEMPLATES`]: crate::segment::FORMAT_TEMPLATES

use prost::encoding::encode_varint;

use super::{LOWERED, Reader, Span, put_bytes};
use crate::segment::{BlockError, MAX_BLOCK_LEN, contains_ignore_ascii_case};

/// Placeholder of an integer variable.
pub const INT: u8 = 0x11;
/// Placeholder of a text variable.
pub const TEXT: u8 = 0x12;
/// The whole template of a message stored as one text value.
pub const LITERAL: u8 = 0x13;

const MAX_INT_DIGITS: usize = 18;
/// The room a template's value column starts with, in bytes.
const COLUMN_START: usize = 64;
/// Symbol classes of the bigram filter: a-z, 0-9 and everything else.
const CLASSES: usize = 37;
/// Bytes of the bigram filter: one bit per ordered pair of classes.
pub const FILTER_BYTES: usize = (CLASSES * CLASSES).div_ceil(8);

/// Whether `byte` ends a word (ASCII that is not a letter or digit).
const fn is_separator(byte: u8) -> bool {
    byte < 0x80 && !byte.is_ascii_alphanumeric()
}

/// Whether each byte ends a word ([`is_separator`]).
const SEPARATES: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = is_separator(byte as u8);
        byte += 1;
    }
    table
};

/// How many bytes of `bytes` come before the first one [`SCAN`] stops at (all of them when
/// none is). Eight bytes at a time: an ASCII byte strictly between two bounds sets its high
/// bit in a mask computed on its low seven bits alone, so no byte's test spills into
/// another's.
fn first_scan_stop(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const LOW7: u64 = ONES * 0x7f;
    const HIGH: u64 = ONES * 0x80;
    // Each byte of `word` that is ASCII and strictly between `low` and `high`.
    let between = |word: u64, low: u64, high: u64| {
        let seven = word & LOW7;
        (ONES * (127 + high) - seven) & !word & (seven + ONES * (127 - low)) & HIGH
    };
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let stops = between(word, u64::from(b'0') - 1, u64::from(b'9') + 1)
            | between(word, u64::from(INT) - 1, u64::from(LITERAL) + 1);
        if stops != 0 {
            return at + (stops.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    at + bytes[at..]
        .iter()
        .position(|&b| SCAN[usize::from(b)] != 0)
        .unwrap_or(bytes.len() - at)
}

/// [`SCAN`] of a placeholder byte.
const PLACEHOLDER: u8 = 2;

/// What [`Builder::split`] stops at: 1 for an ASCII digit, [`PLACEHOLDER`] for a placeholder
/// byte, 0 for the rest.
const SCAN: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = match byte as u8 {
            b'0'..=b'9' => 1,
            INT | TEXT | LITERAL => PLACEHOLDER,
            _ => 0,
        };
        byte += 1;
    }
    table
};

const fn class_of(byte: u8) -> u8 {
    match byte.to_ascii_lowercase() {
        b @ b'a'..=b'z' => b - b'a',
        b @ b'0'..=b'9' => 26 + (b - b'0'),
        _ => 36,
    }
}

/// Each byte's symbol class in the bigram filter.
const CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = class_of(byte as u8);
        byte += 1;
    }
    table
};

fn class(byte: u8) -> usize {
    usize::from(CLASS[usize::from(byte)])
}

/// Sets the filter bit of every adjacent pair of bytes in `value`.
fn add_bigrams(filter: &mut [u8; FILTER_BYTES], value: &[u8]) {
    for pair in value.windows(2) {
        let bit = class(pair[0]) * CLASSES + class(pair[1]);
        filter[bit / 8] |= 1 << (bit % 8);
    }
}

/// Whether a text value holding `needle` may exist: every adjacent pair of the needle must
/// be in the filter (needles of one byte always may).
fn filter_may_hold(filter: &[u8], needle: &[u8]) -> bool {
    needle.windows(2).all(|pair| {
        let bit = class(pair[0]) * CLASSES + class(pair[1]);
        filter[bit / 8] & (1 << (bit % 8)) != 0
    })
}

/// An integer variable's value, when `word` is one (it then prints back to the same bytes).
fn as_int(word: &[u8]) -> Option<u64> {
    if word.is_empty()
        || word.len() > MAX_INT_DIGITS
        || !word.iter().all(u8::is_ascii_digit)
        || (word[0] == b'0' && word.len() > 1)
    {
        return None;
    }
    Some(word.iter().fold(0u64, |v, d| v * 10 + u64::from(d - b'0')))
}

fn put_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Encodes (message, level) rows into the raw shape, rows and vars sections.
#[cfg(test)]
pub fn encode<'m>(rows: impl Iterator<Item = (&'m [u8], i32)>) -> [Vec<u8>; 3] {
    let mut builder = Builder::default();
    for (message, level) in rows {
        builder.push(message, level);
    }
    builder.finish()
}

/// The shape, rows and vars sections built one row at a time (a block's rows are added as
/// they arrive, while they are still in cache, and the sections finished when it is cut).
#[derive(Default)]
pub struct Builder {
    index: foldhash::HashMap<Vec<u8>, u32>,
    templates: Vec<Vec<u8>>,
    levels: Vec<Vec<(i32, u64)>>,
    row_ids: Vec<u8>,
    /// Per template, per placeholder: that column's values.
    columns: Vec<Vec<Vec<u8>>>,
    /// The row being added: its template, its values one after another, where each ends.
    template: Vec<u8>,
    values: Vec<u8>,
    ends: Vec<usize>,
    filter: Filter,
}

/// The bigram filter of the text values.
struct Filter([u8; FILTER_BYTES]);

impl Default for Filter {
    fn default() -> Self {
        Filter([0; FILTER_BYTES])
    }
}

impl Builder {
    fn add_text(&mut self, value: &[u8]) {
        put_bytes(&mut self.values, value);
        add_bigrams(&mut self.filter.0, value);
    }

    /// Cuts `message` into its template and values; false when it holds a placeholder byte
    /// (it is then stored whole). Only the words with a digit become values, so the message
    /// is scanned for digits and placeholder bytes, a word is found around each digit met,
    /// and the text between such words is copied as it is.
    fn split(&mut self, message: &[u8]) -> bool {
        let len = message.len();
        let mut copied = 0;
        let mut at = 0;
        loop {
            at += first_scan_stop(&message[at..]);
            if at == len {
                break;
            }
            if SCAN[usize::from(message[at])] == PLACEHOLDER {
                return false;
            }
            // A digit: its word reaches back to a separator (at most to the end of the
            // previous value, which a separator follows) and on to the next one. Placeholder
            // bytes are separators, so none is skipped inside a word.
            let mut start = at;
            while start > copied && !SEPARATES[usize::from(message[start - 1])] {
                start -= 1;
            }
            at += 1;
            while at < len && !SEPARATES[usize::from(message[at])] {
                at += 1;
            }
            let word = &message[start..at];
            self.template.extend_from_slice(&message[copied..start]);
            if let Some(value) = as_int(word) {
                self.template.push(INT);
                encode_varint(value, &mut self.values);
            } else {
                self.template.push(TEXT);
                self.add_text(word);
            }
            self.ends.push(self.values.len());
            copied = at;
        }
        self.template.extend_from_slice(&message[copied..]);
        true
    }

    /// Adds one row.
    pub fn push(&mut self, message: &[u8], level: i32) {
        self.template.clear();
        self.values.clear();
        self.ends.clear();
        if !self.split(message) {
            self.template.clear();
            self.values.clear();
            self.ends.clear();
            self.template.push(LITERAL);
            self.add_text(message);
            self.ends.push(self.values.len());
        }
        let id = match self.index.get(&self.template[..]) {
            Some(&id) => {
                // A template met again gets room for a few dozen values at once: a column
                // that starts small is moved by every doubling. (Not before: a template met
                // once, as most are in messages of unique words, keeps its few bytes.)
                let columns = &mut self.columns[id as usize];
                if columns.first().is_some_and(|c| c.capacity() < COLUMN_START) {
                    columns.iter_mut().for_each(|c| c.reserve(COLUMN_START));
                }
                id
            }
            None => {
                let id = self.templates.len() as u32;
                self.index.insert(self.template.clone(), id);
                self.templates.push(self.template.clone());
                self.levels.push(Vec::new());
                self.columns.push(vec![Vec::new(); self.ends.len()]);
                id
            }
        };
        encode_varint(u64::from(id), &mut self.row_ids);
        let mut start = 0;
        for (column, end) in self.columns[id as usize].iter_mut().zip(&self.ends) {
            column.extend_from_slice(&self.values[start..*end]);
            start = *end;
        }
        let counts = &mut self.levels[id as usize];
        match counts.iter_mut().find(|(l, _)| *l == level) {
            Some((_, count)) => *count += 1,
            None => counts.push((level, 1)),
        }
    }

    /// The raw shape, rows and vars sections of the rows added.
    pub fn finish(self) -> [Vec<u8>; 3] {
        let mut shape = Vec::with_capacity(self.templates.len() * 48 + FILTER_BYTES + 8);
        encode_varint(self.templates.len() as u64, &mut shape);
        for template in &self.templates {
            put_bytes(&mut shape, template);
            let (ints, texts) = placeholders(template);
            encode_varint(u64::from(ints), &mut shape);
            encode_varint(u64::from(texts), &mut shape);
        }
        for counts in &self.levels {
            encode_varint(counts.len() as u64, &mut shape);
            for (level, count) in counts {
                encode_varint(super::zigzag(i64::from(*level)), &mut shape);
                encode_varint(*count, &mut shape);
            }
        }
        shape.extend_from_slice(&self.filter.0);
        let vars = self.columns.concat().concat();
        [shape, self.row_ids, vars]
    }
}

/// The integer and text values a template calls for.
fn placeholders(template: &[u8]) -> (u32, u32) {
    if template == [LITERAL] {
        return (0, 1);
    }
    let (mut ints, mut texts) = (0, 0);
    for byte in template {
        match *byte {
            INT => ints += 1,
            TEXT => texts += 1,
            _ => {}
        }
    }
    (ints, texts)
}

/// One template of a parsed shape.
struct Template {
    span: Span,
    ints: u32,
    texts: u32,
    /// Rows by level.
    levels: Vec<(i32, u64)>,
}

/// A parsed shape section.
pub struct Shape {
    templates: Vec<Template>,
    /// Template index of every row (empty until [`parse_rows`]).
    rows: Vec<u32>,
    filter: Span,
}

/// Parses a shape section of `n` rows. The templates' value counts are as stored; they are
/// checked against the templates by [`parse_vars`], before any message is rebuilt.
pub fn parse_shape(bytes: &[u8], n: usize) -> Result<Shape, BlockError> {
    let mut r = Reader::new(bytes);
    let count = usize::try_from(r.varint()?).map_err(|_| BlockError::Decode)?;
    // Every template takes at least its length byte and two counts.
    if count > bytes.len() / 3 {
        return Err(BlockError::Decode);
    }
    let mut templates = Vec::with_capacity(count);
    for _ in 0..count {
        let span = r.counted()?;
        let ints = u32::try_from(r.varint()?).map_err(|_| BlockError::Decode)?;
        let texts = u32::try_from(r.varint()?).map_err(|_| BlockError::Decode)?;
        // Each value has its placeholder byte (checked exactly by `parse_vars`).
        if u64::from(ints) + u64::from(texts) > u64::from(span.len.max(1)) {
            return Err(BlockError::Decode);
        }
        templates.push(Template {
            span,
            ints,
            texts,
            levels: Vec::new(),
        });
    }
    let mut total = 0u64;
    for template in &mut templates {
        let k = r.varint()?;
        // Every count takes at least two bytes.
        if k > (bytes.len() / 2) as u64 {
            return Err(BlockError::Decode);
        }
        for _ in 0..k {
            let level =
                i32::try_from(super::unzigzag(r.varint()?)).map_err(|_| BlockError::Decode)?;
            let rows = r.varint()?;
            total = total.checked_add(rows).ok_or(BlockError::Decode)?;
            template.levels.push((level, rows));
        }
    }
    if total != n as u64 {
        return Err(BlockError::Decode);
    }
    let filter = r.take(FILTER_BYTES)?;
    r.done()?;
    Ok(Shape {
        templates,
        rows: Vec::new(),
        filter,
    })
}

/// Parses the rows section (one template index per row) into `shape`; each template's rows
/// must be as many as its counts by level say.
pub fn parse_rows(bytes: &[u8], shape: &mut Shape) -> Result<(), BlockError> {
    let n: u64 = shape
        .templates
        .iter()
        .flat_map(|t| t.levels.iter().map(|(_, c)| c))
        .sum();
    // Every row takes at least a byte.
    if n > bytes.len() as u64 {
        return Err(BlockError::Decode);
    }
    let count = shape.templates.len() as u64;
    let mut r = Reader::new(bytes);
    let mut per_template = vec![0u64; shape.templates.len()];
    let mut rows = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let id = r.varint()?;
        if id >= count {
            return Err(BlockError::Decode);
        }
        per_template[id as usize] += 1;
        rows.push(id as u32);
    }
    r.done()?;
    let counted = |t: &Template| t.levels.iter().map(|(_, c)| c).sum::<u64>();
    if shape
        .templates
        .iter()
        .zip(&per_template)
        .any(|(t, c)| counted(t) != *c)
    {
        return Err(BlockError::Decode);
    }
    shape.rows = rows;
    Ok(())
}

#[derive(Clone, Copy)]
enum Value {
    Int(u64),
    Text(Span),
}

/// A parsed vars section: every row's values.
pub struct Vars {
    values: Vec<Value>,
    /// Per template: the index of its first value, and how many rows it has.
    columns: Vec<(usize, usize)>,
    /// Per row: which of its template's rows it is.
    occurrence: Vec<u32>,
    ints: usize,
}

impl Vars {
    /// Value `slot` (the slot-th placeholder of its template) of row `i` of template `t`.
    fn value(&self, t: usize, slot: usize, i: usize) -> Value {
        let (first, rows) = self.columns[t];
        self.values[first + slot * rows + self.occurrence[i] as usize]
    }
}

/// The placeholders of a template, in order (a [`LITERAL`] one is one text).
fn slots_of(template: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let literal = template == [LITERAL];
    template
        .iter()
        .copied()
        .filter(move |b| !literal && matches!(*b, INT | TEXT))
        .chain(literal.then_some(TEXT))
}

/// Parses a vars section holding the values `shape` (with its rows) calls for.
pub fn parse_vars(shape_bytes: &[u8], bytes: &[u8], shape: &Shape) -> Result<Vars, BlockError> {
    for template in &shape.templates {
        let text = template.span.of(shape_bytes);
        if (text != [LITERAL] && memchr::memchr(LITERAL, text).is_some())
            || placeholders(text) != (template.ints, template.texts)
        {
            return Err(BlockError::Decode);
        }
    }
    let mut rows_of = vec![0u32; shape.templates.len()];
    let mut occurrence = Vec::with_capacity(shape.rows.len());
    for row in &shape.rows {
        let seen = &mut rows_of[*row as usize];
        occurrence.push(*seen);
        *seen += 1;
    }
    let wanted: u64 = shape
        .templates
        .iter()
        .zip(&rows_of)
        .map(|(t, rows)| u64::from(*rows) * (u64::from(t.ints) + u64::from(t.texts)))
        .sum();
    // Every value takes at least one byte.
    if wanted > bytes.len() as u64 {
        return Err(BlockError::Decode);
    }
    let mut r = Reader::new(bytes);
    let mut values = Vec::with_capacity(wanted as usize);
    let mut columns = Vec::with_capacity(shape.templates.len());
    let mut ints = 0;
    for (template, rows) in shape.templates.iter().zip(&rows_of) {
        columns.push((values.len(), *rows as usize));
        for kind in slots_of(template.span.of(shape_bytes)) {
            for _ in 0..*rows {
                values.push(if kind == INT {
                    let value = r.varint()?;
                    if value >= 10u64.pow(MAX_INT_DIGITS as u32) {
                        return Err(BlockError::Decode);
                    }
                    ints += 1;
                    Value::Int(value)
                } else {
                    Value::Text(r.counted()?)
                });
            }
        }
    }
    r.done()?;
    Ok(Vars {
        values,
        columns,
        occurrence,
        ints,
    })
}

/// Appends row `i`'s message to `out`.
fn put_message(
    shape_bytes: &[u8],
    shape: &Shape,
    vars_bytes: &[u8],
    vars: &Vars,
    i: usize,
    out: &mut Vec<u8>,
) {
    let t = shape.rows[i] as usize;
    let template = shape.templates[t].span.of(shape_bytes);
    let put_value = |out: &mut Vec<u8>, slot: usize| match vars.value(t, slot, i) {
        Value::Int(value) => put_decimal(out, value),
        Value::Text(span) => out.extend_from_slice(span.of(vars_bytes)),
    };
    if template == [LITERAL] {
        put_value(out, 0);
        return;
    }
    let mut rest = template;
    let mut slot = 0;
    while let Some(at) = memchr::memchr2(INT, TEXT, rest) {
        out.extend_from_slice(&rest[..at]);
        put_value(out, slot);
        slot += 1;
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

/// Every row's message, one after another, with each one's span.
/// Rows that `wanted` leaves out get an empty span. Messages that would come to more than
/// a block may hold are refused (damaged sections), before anything is built.
pub fn messages(
    shape_bytes: &[u8],
    shape: &Shape,
    vars_bytes: &[u8],
    vars: &Vars,
    wanted: &[bool],
) -> Result<(Vec<u8>, Vec<Span>), BlockError> {
    // At most: every row's template, every text value, and 20 digits per integer.
    let fixed: u64 = shape
        .rows
        .iter()
        .map(|t| u64::from(shape.templates[*t as usize].span.len))
        .sum();
    if fixed + vars_bytes.len() as u64 + 20 * vars.ints as u64 > MAX_BLOCK_LEN as u64 {
        return Err(BlockError::Decode);
    }
    let kept = wanted.iter().filter(|w| **w).count();
    let mut out = Vec::with_capacity(kept * 64);
    let mut spans = Vec::with_capacity(shape.rows.len());
    for i in 0..shape.rows.len() {
        let start = out.len();
        if wanted.get(i).copied().unwrap_or(false) {
            put_message(shape_bytes, shape, vars_bytes, vars, i, &mut out);
        }
        spans.push(Span {
            start: start as u32,
            len: (out.len() - start) as u32,
        });
    }
    Ok((out, spans))
}

/// Whether a template's rows hold a needle.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Every row: the needle is in the fixed text.
    Yes,
    /// No row.
    No,
    /// Depends on each row's values.
    Values,
}

/// What the shape alone says of each template's rows and `needle` (ASCII-lowercase, not
/// empty).
fn verdicts(shape_bytes: &[u8], shape: &Shape, needle: &[u8]) -> Vec<Verdict> {
    let finder = memchr::memmem::Finder::new(needle);
    let placeholders = needle.iter().any(|b| matches!(*b, INT | TEXT | LITERAL));
    let word_needle = !needle.iter().any(|b| is_separator(*b));
    let digits_only = needle.iter().all(u8::is_ascii_digit);
    // A needle of one word with a letter is only ever inside fixed text or a text value;
    // the bigram filter may tell that no text value holds it.
    let in_texts =
        !word_needle || digits_only || filter_may_hold(shape.filter.of(shape_bytes), needle);
    LOWERED.with_borrow_mut(|lowered| {
        shape
            .templates
            .iter()
            .map(|t| {
                let values = t.ints > 0 || t.texts > 0;
                if placeholders {
                    // Such a needle is never in fixed text (a message holding those bytes
                    // is stored whole as a value).
                    return if values { Verdict::Values } else { Verdict::No };
                }
                lowered.clear();
                lowered.extend_from_slice(t.span.of(shape_bytes));
                lowered.make_ascii_lowercase();
                let may_be_in_values = if !word_needle || digits_only {
                    values
                } else {
                    t.texts > 0 && in_texts
                };
                if finder.find(lowered).is_some() {
                    Verdict::Yes
                } else if may_be_in_values {
                    Verdict::Values
                } else {
                    Verdict::No
                }
            })
            .collect()
    })
}

/// Counts by level of the rows whose message holds `needle` (ASCII-lowercase; `None`:
/// every row), when the shape alone decides it; `None` when some row's values must be read.
/// `shape` may be parsed without its rows.
pub fn level_counts(
    shape_bytes: &[u8],
    shape: &Shape,
    needle: Option<&[u8]>,
) -> Option<Vec<(i32, u64)>> {
    let verdicts = match needle.filter(|n| !n.is_empty()) {
        Some(needle) => verdicts(shape_bytes, shape, needle),
        None => vec![Verdict::Yes; shape.templates.len()],
    };
    let mut counts: Vec<(i32, u64)> = Vec::new();
    for (template, verdict) in shape.templates.iter().zip(verdicts) {
        match verdict {
            Verdict::No => {}
            Verdict::Values => return None,
            Verdict::Yes => {
                for (level, rows) in &template.levels {
                    match counts.iter_mut().find(|(l, _)| l == level) {
                        Some((_, count)) => *count += rows,
                        None => counts.push((*level, *rows)),
                    }
                }
            }
        }
    }
    Some(counts)
}

/// Clears `keep[i]` for every row whose message lacks `needle` (ASCII-lowercase; ASCII
/// case ignored in the messages). `load_vars` decompresses the vars section, called only
/// when the shape alone cannot decide; what it returned, and its parse, are handed back for
/// reuse.
pub fn keep_rows_containing(
    shape_bytes: &[u8],
    shape: &Shape,
    needle: &[u8],
    keep: &mut [bool],
    load_vars: impl FnOnce() -> Result<Vec<u8>, BlockError>,
) -> Result<Option<(Vec<u8>, Vars)>, BlockError> {
    if needle.is_empty() {
        return Ok(None);
    }
    let verdicts = verdicts(shape_bytes, shape, needle);
    let mut undecided = false;
    for (k, row) in keep.iter_mut().zip(&shape.rows) {
        match verdicts[*row as usize] {
            Verdict::Yes => {}
            Verdict::No => *k = false,
            Verdict::Values => undecided |= *k,
        }
    }
    if !undecided {
        return Ok(None);
    }
    let vars_bytes = load_vars()?;
    let vars = parse_vars(shape_bytes, &vars_bytes, shape)?;
    let only_texts =
        !needle.iter().any(|b| is_separator(*b)) && !needle.iter().all(u8::is_ascii_digit);
    let mut message = Vec::new();
    for (i, k) in keep.iter_mut().enumerate() {
        let t = shape.rows[i] as usize;
        if !*k || verdicts[t] != Verdict::Values {
            continue;
        }
        *k = if only_texts {
            // A needle of one word with a letter can only be inside a text value.
            slots_of(shape.templates[t].span.of(shape_bytes))
                .enumerate()
                .any(|(slot, kind)| {
                    kind == TEXT
                        && matches!(vars.value(t, slot, i), Value::Text(span)
                            if contains_ignore_ascii_case(span.of(&vars_bytes), needle))
                })
        } else {
            message.clear();
            put_message(shape_bytes, shape, &vars_bytes, &vars, i, &mut message);
            contains_ignore_ascii_case(&message, needle)
        };
    }
    Ok(Some((vars_bytes, vars)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(messages: &[&[u8]]) -> (Vec<u8>, Shape, Vec<u8>) {
        let [shape_bytes, rows, vars_bytes] = encode(messages.iter().map(|m| (*m, 3)));
        let mut shape = parse_shape(&shape_bytes, messages.len()).expect("shape");
        parse_rows(&rows, &mut shape).expect("rows");
        (shape_bytes, shape, vars_bytes)
    }

    fn round_trip(messages: &[&[u8]]) -> Vec<Vec<u8>> {
        let (shape_bytes, shape, vars_bytes) = parsed(messages);
        let vars = parse_vars(&shape_bytes, &vars_bytes, &shape).expect("vars");
        let everything = vec![true; messages.len()];
        let (bytes, spans) = super::messages(&shape_bytes, &shape, &vars_bytes, &vars, &everything)
            .expect("messages");
        spans.iter().map(|s| s.of(&bytes).to_vec()).collect()
    }

    #[test]
    fn messages_come_back_byte_for_byte() {
        let messages: Vec<&[u8]> = vec![
            b"",
            b"GET /api/v1/orders/123 200 45ms bytes=0",
            b"txn_3fa8c0 amount=12.50 id=007 big=12345678901234567890",
            b"caf\xc3\xa9 9\xc3\xa9 \x11 raw placeholder",
            b"   ",
            b"0 00 1 18446744073709551615 999999999999999999",
            b"GET /api/v1/orders/124 200 46ms bytes=0",
        ];
        assert_eq!(
            round_trip(&messages),
            messages.iter().map(|m| m.to_vec()).collect::<Vec<_>>()
        );
    }

    /// The module docs' definition, word by word: each word with a digit is a value.
    fn split_by_words(message: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<usize>, Vec<u8>) {
        let mut builder = Builder::default();
        if message.iter().any(|b| matches!(*b, INT | TEXT | LITERAL)) {
            builder.template.push(LITERAL);
            builder.add_text(message);
            builder.ends.push(builder.values.len());
            let filter = builder.filter.0.to_vec();
            return (builder.template, builder.values, builder.ends, filter);
        }
        let mut at = 0;
        while at < message.len() {
            let start = at;
            let separator = is_separator(message[at]);
            while at < message.len() && is_separator(message[at]) == separator {
                at += 1;
            }
            let word = &message[start..at];
            if separator || !word.iter().any(u8::is_ascii_digit) {
                builder.template.extend_from_slice(word);
                continue;
            }
            match as_int(word) {
                Some(value) => {
                    builder.template.push(INT);
                    encode_varint(value, &mut builder.values);
                }
                None => {
                    builder.template.push(TEXT);
                    builder.add_text(word);
                }
            }
            builder.ends.push(builder.values.len());
        }
        let filter = builder.filter.0.to_vec();
        (builder.template, builder.values, builder.ends, filter)
    }

    proptest::proptest! {
        /// Eight bytes at a time, the scan stops where the table says, at the first digit or
        /// placeholder byte, wherever it lies in a word.
        #[test]
        fn scans_stop_where_the_table_does(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    4 => 0x20u8..0x7f,
                    1 => b'0'..=b'9',
                    1 => 0x10u8..0x15,
                    1 => 0x80u8..=0xff,
                    1 => proptest::prop_oneof![
                        proptest::strategy::Just(b'/'),
                        proptest::strategy::Just(b':'),
                        proptest::strategy::Just(0xb0u8),
                        proptest::strategy::Just(0xb9u8),
                        proptest::strategy::Just(0x91u8),
                        proptest::strategy::Just(0x00u8),
                        proptest::strategy::Just(0x7fu8),
                    ],
                ],
                0..40,
            ),
        ) {
            let expected = bytes.iter().position(|&b| SCAN[usize::from(b)] != 0);
            proptest::prop_assert_eq!(first_scan_stop(&bytes), expected.unwrap_or(bytes.len()));
        }

        /// A message's template, values and text-value filter are those of the word-by-word
        /// definition, after any earlier row (a literal one included).
        #[test]
        fn messages_split_as_their_words_do(
            earlier in "(ab1|x\\u{11}9|GET [0-9]{1,3})?",
            message in "(GET|get|Ab|id=|txn_|[0-9]{1,22}|0[0-9]{1,3}|x[0-9a-f]{1,8}|\\u{11}|\\u{12}|\\u{13}|\\u{7f}|\\u{1}|é9|9é|ü|[ _./:=-]){0,16}",
        ) {
            let mut builder = Builder::default();
            builder.push(earlier.as_bytes(), 0);
            builder.filter = Filter::default();
            builder.push(message.as_bytes(), 0);
            let (template, values, ends, filter) = split_by_words(message.as_bytes());
            proptest::prop_assert_eq!(&builder.template, &template);
            proptest::prop_assert_eq!(builder.values, values);
            proptest::prop_assert_eq!(builder.ends, ends);
            proptest::prop_assert_eq!(builder.filter.0.to_vec(), filter);
        }
    }

    #[test]
    fn rows_of_one_template_share_it() {
        let messages: Vec<String> = (0..100)
            .map(|i| format!("upstream timeout after {i}ms calling svc-{}", i % 3))
            .collect();
        let [shape_bytes, ..] = encode(
            messages
                .iter()
                .enumerate()
                .map(|(i, m)| (m.as_bytes(), (i % 2) as i32)),
        );
        let shape = parse_shape(&shape_bytes, messages.len()).expect("shape");
        assert_eq!(shape.templates.len(), 1);
        assert_eq!(
            level_counts(&shape_bytes, &shape, Some(b"timeout")),
            Some(vec![(0, 50), (1, 50)])
        );
        assert_eq!(
            level_counts(&shape_bytes, &shape, Some(b"zebra")),
            Some(vec![])
        );
        // "svc" may be in a value: the rows must be read.
        assert_eq!(level_counts(&shape_bytes, &shape, Some(b"svc-1")), None);
    }

    /// Damaged (but checksummed) shapes: value counts past the template, and messages that
    /// would rebuild to more than a block holds, are errors before anything is allocated.
    #[test]
    fn damaged_shapes_are_refused() {
        let shape_of = |template: &[u8], ints: u64, texts: u64, rows: u64| {
            let mut shape = Vec::new();
            encode_varint(1, &mut shape);
            put_bytes(&mut shape, template);
            encode_varint(ints, &mut shape);
            encode_varint(texts, &mut shape);
            encode_varint(1, &mut shape);
            encode_varint(0, &mut shape);
            encode_varint(rows, &mut shape);
            shape.extend_from_slice(&[0; FILTER_BYTES]);
            shape
        };
        let counts = shape_of(b"", u64::from(u32::MAX), 1, 1);
        assert!(matches!(parse_shape(&counts, 1), Err(BlockError::Decode)));
        // 600 rows of a 1 MiB template: 600 MiB of messages.
        let rows = 600;
        let big = shape_of(&vec![b'a'; 1 << 20], 0, 0, rows);
        let mut shape = parse_shape(&big, rows as usize).expect("shape");
        parse_rows(&vec![0; rows as usize], &mut shape).expect("rows");
        let vars_bytes = Vec::new();
        let vars = parse_vars(&big, &vars_bytes, &shape).expect("vars");
        let everything = vec![true; rows as usize];
        assert!(matches!(
            super::messages(&big, &shape, &vars_bytes, &vars, &everything),
            Err(BlockError::Decode)
        ));
    }

    fn matching(messages: &[&str], needle: &str) -> Vec<bool> {
        let bytes: Vec<&[u8]> = messages.iter().map(|m| m.as_bytes()).collect();
        let (shape_bytes, shape, vars_bytes) = parsed(&bytes);
        let mut keep = vec![true; messages.len()];
        keep_rows_containing(&shape_bytes, &shape, needle.as_bytes(), &mut keep, || {
            Ok(vars_bytes.clone())
        })
        .expect("search");
        keep
    }

    #[test]
    fn needles_match_fixed_text_values_and_both() {
        let messages = [
            "upstream TIMEOUT after 30ms",
            "session s_7timeout9 refreshed",
            "ok 1234 done",
            "read_timeout=30s",
            "after 5000ms pool=main",
        ];
        for (needle, wanted) in [
            ("timeout", [true, true, false, true, false]),
            ("23", [false, false, true, false, false]),
            ("after 5000ms", [false, false, false, false, true]),
            ("out9", [false, true, false, false, false]),
            ("zebra", [false; 5]),
            ("\u{11}", [false; 5]),
        ] {
            assert_eq!(matching(&messages, needle), wanted, "{needle:?}");
        }
    }
}
