//! The Avro form of a [`crate::LogEntry`] (schema [`LOG_ENTRY_SCHEMA`]) and the object container
//! file codec used by `avro` frames.
//!
//! Writing uses the canonical schema only ([`encode_container`]). Reading accepts a container
//! written with *any* writer schema ([`decode_container`]) and turns every datum into JSON, so
//! users can send their own Avro records; the ingest crate then maps that JSON leniently.
//!
//! Hostile input is the normal case here (this runs on bytes from the network), so reading is
//! done in two steps:
//! 1. This module walks the container framing itself (header, metadata, blocks, sync markers),
//!    checks every length against the bytes actually present, inflates `deflate` blocks with a
//!    hard output limit, and refuses writer schemas that could make the datum decoder recurse
//!    without bound (recursive named types, over-deep nesting) or produce array items from zero
//!    input bytes (`array<null>`), which would otherwise allow unbounded allocation.
//! 2. Only then does apache-avro decode the datums, from a container that is known to be
//!    well-framed and uncompressed, with its global allocation ceiling set to
//!    [`MAX_ALLOCATION_BYTES`] (see [`init_allocation_limit`]).
//!
//! Codecs: `null` and `deflate` are accepted; others (`snappy`, `zstandard`, …) are refused
//! with [`AvroError::UnsupportedCodec`].
//!
//! Mapping of values to JSON: records and maps become objects, arrays arrays, unions their
//! branch's value, enums their symbol, `bytes`/`fixed` a string when they are UTF-8 and an array
//! of byte values otherwise, timestamp logical types an RFC 3339 string, `uuid` its text,
//! decimals the unscaled integer as a decimal string, and non-finite floats `null`. A top-level
//! record named `io.logcluster.LogEntry` has its `timestamp` and `received_at` longs (Unix
//! nanoseconds) rendered as RFC 3339 strings, so that its JSON is the canonical JSON form of
//! [`crate::json`].
//!
//! In `fields`, a [`crate::field_value::Kind::Json`] value is written as its JSON text in the
//! `string` branch (the JSON text `null` uses the `null` branch), so arrays come back as strings.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use apache_avro::Schema;
use apache_avro::types::Value as AvroValue;
use serde_json::{Map, Value};

use crate::entry::{LogEntry, field_value::Kind};
use crate::time::format_rfc3339;

/// The Avro schema of a [`LogEntry`] (record `io.logcluster.LogEntry`).
pub const LOG_ENTRY_SCHEMA: &str = r#"{
  "type": "record",
  "name": "LogEntry",
  "namespace": "io.logcluster",
  "doc": "One log record; see logcluster_proto::LogEntry",
  "fields": [
    {"name": "id", "type": "string", "default": ""},
    {"name": "timestamp", "type": "long", "default": 0, "doc": "Unix nanoseconds, UTC"},
    {"name": "received_at", "type": "long", "default": 0, "doc": "Unix nanoseconds, UTC"},
    {"name": "tenant", "type": "string", "default": ""},
    {"name": "service", "type": "string", "default": ""},
    {"name": "level", "type": "string", "default": "UNSPECIFIED", "doc": "TRACE, DEBUG, INFO, WARN, ERROR, FATAL or UNSPECIFIED"},
    {"name": "message", "type": "string", "default": ""},
    {"name": "host", "type": "string", "default": ""},
    {"name": "trace_id", "type": "string", "default": ""},
    {"name": "fields", "type": {"type": "map", "values": ["null", "boolean", "long", "double", "string"]}, "default": {}}
  ]
}"#;

/// Full name of the canonical record.
pub const LOG_ENTRY_FULLNAME: &str = "io.logcluster.LogEntry";

/// Ceiling that apache-avro applies to any single allocation while decoding (one string, one
/// `bytes` value, one array or map block reservation).
pub const MAX_ALLOCATION_BYTES: usize = 16 * 1024 * 1024;

/// Default ceiling on the total datum bytes of one container after decompression.
pub const MAX_DECODED_BYTES: usize = 32 * 1024 * 1024;

/// Most values (record fields, array items, map entries, scalars) the datums of one container
/// may decode to. An array item can take one byte on the wire and ~100 in memory once decoded
/// and turned into JSON, so bytes alone do not bound a container's memory; the datums are
/// walked and counted before any is decoded.
pub const MAX_VALUES: usize = 2_000_000;

/// Longest writer schema text accepted in a container header.
const MAX_SCHEMA_BYTES: usize = 1024 * 1024;
/// Most metadata entries accepted in a container header.
const MAX_METADATA_ENTRIES: usize = 1024;
/// Deepest nesting of a writer schema (records, arrays, maps, unions).
const MAX_SCHEMA_DEPTH: usize = 64;

const MAGIC: &[u8; 4] = b"Obj\x01";
const SYNC_LEN: usize = 16;

/// Why an Avro container could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum AvroError {
    #[error("not an avro object container file (bad magic)")]
    BadMagic,
    #[error("avro container is truncated in the {0}")]
    Truncated(&'static str),
    #[error("avro container has a malformed variable-length integer")]
    BadVarint,
    #[error("avro container header is malformed: {0}")]
    BadHeader(&'static str),
    #[error("avro container header names no schema")]
    MissingSchema,
    #[error("avro writer schema is invalid")]
    BadSchema(#[source] apache_avro::Error),
    #[error("avro writer schema is refused: {0}")]
    RefusedSchema(String),
    #[error("avro schema names {0:?}, which is not a valid Avro name")]
    BadName(String),
    #[error("avro codec {0:?} is not supported (use null or deflate)")]
    UnsupportedCodec(String),
    #[error("avro block {block} is malformed: {reason}")]
    BadBlock { block: usize, reason: &'static str },
    #[error("avro block {block} does not end with the file's sync marker")]
    BadSyncMarker { block: usize },
    #[error("avro block {block} is not valid deflate data")]
    Inflate { block: usize },
    #[error("avro container decodes to more than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("avro container holds {records} records, more than {limit}")]
    TooManyRecords { records: usize, limit: usize },
    #[error("avro container holds more than {limit} values (fields, array items, map entries)")]
    TooManyValues { limit: usize },
    #[error("avro datum could not be decoded")]
    Decode(#[source] apache_avro::Error),
    #[error("avro container could not be written")]
    Encode(#[source] apache_avro::Error),
}

/// Sets apache-avro's process-wide allocation ceiling to [`MAX_ALLOCATION_BYTES`].
///
/// apache-avro keeps this ceiling in a global that only its *first* setter (or first decode)
/// fixes, so every entry point of this module calls this before touching apache-avro. Other
/// crates that decode Avro datums with apache-avro should call it first too. Returns the
/// ceiling in force.
pub fn init_allocation_limit() -> usize {
    apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES)
}

fn log_entry_schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        Schema::parse_str(LOG_ENTRY_SCHEMA).expect("LOG_ENTRY_SCHEMA is a valid constant schema")
    })
}

/// Union branch indexes of the `fields` map values.
const BRANCH_NULL: u32 = 0;
const BRANCH_BOOL: u32 = 1;
const BRANCH_LONG: u32 = 2;
const BRANCH_DOUBLE: u32 = 3;
const BRANCH_STRING: u32 = 4;

fn entry_to_avro(entry: &LogEntry) -> AvroValue {
    let fields: HashMap<String, AvroValue> = entry
        .fields
        .iter()
        .map(|(key, value)| {
            let (branch, inner) = match &value.kind {
                None => (BRANCH_NULL, AvroValue::Null),
                Some(Kind::Json(text)) if text == "null" => (BRANCH_NULL, AvroValue::Null),
                Some(Kind::Bool(b)) => (BRANCH_BOOL, AvroValue::Boolean(*b)),
                Some(Kind::Int(i)) => (BRANCH_LONG, AvroValue::Long(*i)),
                Some(Kind::Float(f)) => (BRANCH_DOUBLE, AvroValue::Double(*f)),
                Some(Kind::Str(s) | Kind::Json(s)) => (BRANCH_STRING, AvroValue::String(s.clone())),
            };
            (key.clone(), AvroValue::Union(branch, Box::new(inner)))
        })
        .collect();
    AvroValue::Record(vec![
        ("id".into(), AvroValue::String(entry.id.clone())),
        ("timestamp".into(), AvroValue::Long(entry.timestamp)),
        ("received_at".into(), AvroValue::Long(entry.received_at)),
        ("tenant".into(), AvroValue::String(entry.tenant.clone())),
        ("service".into(), AvroValue::String(entry.service.clone())),
        (
            "level".into(),
            AvroValue::String(entry.level_enum().as_str().to_string()),
        ),
        ("message".into(), AvroValue::String(entry.message.clone())),
        ("host".into(), AvroValue::String(entry.host.clone())),
        ("trace_id".into(), AvroValue::String(entry.trace_id.clone())),
        ("fields".into(), AvroValue::Map(fields)),
    ])
}

/// Writes `entries` as an Avro object container file (codec `null`) with [`LOG_ENTRY_SCHEMA`].
pub fn encode_container(entries: &[LogEntry]) -> Result<Vec<u8>, AvroError> {
    init_allocation_limit();
    let schema = log_entry_schema();
    let mut writer = apache_avro::Writer::new(schema, Vec::new());
    for entry in entries {
        writer
            .append_value_ref(&entry_to_avro(entry))
            .map_err(AvroError::Encode)?;
    }
    writer.into_inner().map_err(AvroError::Encode)
}

/// Whether `name` is a valid Avro (full) name: dot-separated parts of `[A-Za-z_][A-Za-z0-9_]*`.
fn valid_avro_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// The `name` of every named type (record, enum, fixed) in a schema's JSON.
fn check_names(value: &Value) -> Result<(), AvroError> {
    match value {
        Value::Object(map) => {
            let named = matches!(
                map.get("type").and_then(Value::as_str),
                Some("record" | "error" | "enum" | "fixed")
            );
            if named && let Some(name) = map.get("name") {
                match name.as_str() {
                    Some(text) if valid_avro_name(text) => {}
                    _ => return Err(AvroError::BadName(name.to_string())),
                }
            }
            map.values().try_for_each(check_names)
        }
        Value::Array(items) => items.iter().try_for_each(check_names),
        _ => Ok(()),
    }
}

/// Parses an untrusted Avro schema. apache-avro 0.21 panics (an `unwrap` in `Name::parse`)
/// on an invalid type name, so names are checked first; the parse also runs under
/// `catch_unwind` in case another input reaches a panic inside the library — bad input must
/// never take a process down.
pub fn parse_untrusted_schema(text: &str) -> Result<Schema, AvroError> {
    if let Ok(json) = serde_json::from_str::<Value>(text) {
        check_names(&json)?;
    }
    match std::panic::catch_unwind(|| Schema::parse_str(text)) {
        Ok(parsed) => parsed.map_err(AvroError::BadSchema),
        Err(_) => Err(AvroError::RefusedSchema(
            "the schema could not be parsed".into(),
        )),
    }
}

/// Reads an Avro object container file written with any schema and returns each datum as JSON
/// (see the module documentation for the mapping), with the default [`MAX_DECODED_BYTES`].
pub fn decode_container(bytes: &[u8]) -> Result<Vec<Value>, AvroError> {
    decode_container_with_limit(bytes, MAX_DECODED_BYTES)
}

/// [`decode_container`] of a container of at most `max_records` records: one with more is
/// refused from its block headers, before any datum is decoded.
pub fn decode_container_of_at_most(
    bytes: &[u8],
    max_records: usize,
) -> Result<Vec<Value>, AvroError> {
    decode_limited(bytes, MAX_DECODED_BYTES, max_records)
}

/// [`decode_container`] with an explicit ceiling on the decompressed datum bytes.
pub fn decode_container_with_limit(
    bytes: &[u8],
    max_decoded: usize,
) -> Result<Vec<Value>, AvroError> {
    decode_limited(bytes, max_decoded, usize::MAX)
}

fn decode_limited(
    bytes: &[u8],
    max_decoded: usize,
    max_records: usize,
) -> Result<Vec<Value>, AvroError> {
    init_allocation_limit();
    let container = Container::parse(bytes, max_decoded)?;
    if container.records > max_records {
        return Err(AvroError::TooManyRecords {
            records: container.records,
            limit: max_records,
        });
    }
    let schema = parse_untrusted_schema(container.schema_text)?;
    let named = SchemaCheck::run(&schema)?;
    let mut values = ValueCount {
        named,
        values: 0,
        limit: MAX_VALUES,
    };
    for (data, count) in &container.blocks {
        let mut cur = Cursor {
            bytes: data,
            pos: 0,
        };
        for _ in 0..*count {
            values.walk(&schema, &mut cur)?;
        }
    }
    let canonical =
        matches!(&schema, Schema::Record(r) if r.name.fullname(None) == LOG_ENTRY_FULLNAME);

    let plain;
    let framed: &[u8] = if container.rebuilt_needed {
        plain = container.rebuild();
        &plain
    } else {
        bytes
    };
    // The schema was checked above; the reader parses the header again, so it runs under
    // the same guard.
    let read = std::panic::catch_unwind(|| -> Result<Vec<Value>, AvroError> {
        let reader = apache_avro::Reader::new(framed).map_err(AvroError::Decode)?;
        let mut out = Vec::with_capacity(container.records);
        for datum in reader {
            let datum = datum.map_err(AvroError::Decode)?;
            out.push(if canonical {
                canonical_to_json(datum)
            } else {
                avro_to_json(datum)
            });
        }
        Ok(out)
    });
    read.unwrap_or_else(|_| {
        Err(AvroError::RefusedSchema(
            "the container could not be decoded".into(),
        ))
    })
}

/// The framing of a container, validated.
struct Container<'a> {
    schema_text: &'a str,
    marker: [u8; SYNC_LEN],
    /// Decompressed (or original, for `null`) datum bytes and record count per block.
    blocks: Vec<(std::borrow::Cow<'a, [u8]>, usize)>,
    records: usize,
    /// The original bytes cannot go to apache-avro as they are (compressed blocks).
    rebuilt_needed: bool,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn long(&mut self, what: &'static str) -> Result<i64, AvroError> {
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = *self.bytes.get(self.pos).ok_or(AvroError::Truncated(what))?;
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err(AvroError::BadVarint);
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err(AvroError::BadVarint)
    }

    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], AvroError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(AvroError::Truncated(what))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn bytes_value(&mut self, what: &'static str) -> Result<&'a [u8], AvroError> {
        let len = self.long(what)?;
        let len = usize::try_from(len).map_err(|_| AvroError::BadHeader("negative length"))?;
        self.take(len, what)
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }
}

impl<'a> Container<'a> {
    fn parse(bytes: &'a [u8], max_decoded: usize) -> Result<Container<'a>, AvroError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(AvroError::BadMagic);
        }
        let mut cur = Cursor {
            bytes,
            pos: MAGIC.len(),
        };
        let mut schema_text = None;
        let mut codec: &[u8] = b"null";
        let mut entries = 0usize;
        loop {
            let count = cur.long("header")?;
            if count == 0 {
                break;
            }
            let count = if count < 0 {
                cur.long("header")?; // block size in bytes, not needed
                count.unsigned_abs()
            } else {
                count as u64
            };
            for _ in 0..count {
                entries += 1;
                if entries > MAX_METADATA_ENTRIES {
                    return Err(AvroError::BadHeader("too many metadata entries"));
                }
                let key = cur.bytes_value("header")?;
                let value = cur.bytes_value("header")?;
                match key {
                    b"avro.schema" => {
                        if value.len() > MAX_SCHEMA_BYTES {
                            return Err(AvroError::BadHeader("schema is too long"));
                        }
                        let text = std::str::from_utf8(value)
                            .map_err(|_| AvroError::BadHeader("schema is not UTF-8"))?;
                        schema_text = Some(text);
                    }
                    b"avro.codec" => codec = value,
                    _ => {}
                }
            }
        }
        let schema_text = schema_text.ok_or(AvroError::MissingSchema)?;
        let deflate = match codec {
            b"null" | b"" => false,
            b"deflate" => true,
            other => {
                return Err(AvroError::UnsupportedCodec(
                    String::from_utf8_lossy(other).into_owned(),
                ));
            }
        };
        let marker: [u8; SYNC_LEN] = cur
            .take(SYNC_LEN, "header")?
            .try_into()
            .expect("take returned exactly SYNC_LEN bytes");

        let mut blocks = Vec::new();
        let mut records = 0usize;
        let mut decoded = 0usize;
        while !cur.at_end() {
            let block = blocks.len();
            let count = cur.long("block header")?;
            let size = cur.long("block header")?;
            let (Ok(count), Ok(size)) = (usize::try_from(count), usize::try_from(size)) else {
                return Err(AvroError::BadBlock {
                    block,
                    reason: "negative record count or size",
                });
            };
            let data = cur.take(size, "block data")?;
            if cur.take(SYNC_LEN, "block sync marker")? != marker {
                return Err(AvroError::BadSyncMarker { block });
            }
            let data: std::borrow::Cow<'a, [u8]> = if deflate {
                let room = max_decoded.saturating_sub(decoded);
                match miniz_oxide::inflate::decompress_to_vec_with_limit(data, room) {
                    Ok(plain) => plain.into(),
                    Err(e) if e.status == miniz_oxide::inflate::TINFLStatus::HasMoreOutput => {
                        return Err(AvroError::TooLarge { limit: max_decoded });
                    }
                    Err(_) => return Err(AvroError::Inflate { block }),
                }
            } else {
                data.into()
            };
            decoded = decoded.saturating_add(data.len());
            if decoded > max_decoded {
                return Err(AvroError::TooLarge { limit: max_decoded });
            }
            // Every datum of an accepted schema takes at least one byte (see SchemaCheck), so a
            // block claiming more records than bytes is lying; refusing it bounds the work.
            if count > data.len() {
                return Err(AvroError::BadBlock {
                    block,
                    reason: "more records than bytes",
                });
            }
            records += count;
            blocks.push((data, count));
        }
        Ok(Container {
            schema_text,
            marker,
            blocks,
            records,
            rebuilt_needed: deflate,
        })
    }

    /// An equivalent `null`-codec container holding the decompressed blocks.
    fn rebuild(&self) -> Vec<u8> {
        let size = self.blocks.iter().map(|(d, _)| d.len() + 40).sum::<usize>();
        let mut out = Vec::with_capacity(self.schema_text.len() + size + 64);
        out.extend_from_slice(MAGIC);
        write_long(&mut out, 2);
        write_bytes(&mut out, b"avro.schema");
        write_bytes(&mut out, self.schema_text.as_bytes());
        write_bytes(&mut out, b"avro.codec");
        write_bytes(&mut out, b"null");
        write_long(&mut out, 0);
        out.extend_from_slice(&self.marker);
        for (data, count) in &self.blocks {
            write_long(&mut out, *count as i64);
            write_bytes(&mut out, data);
            out.extend_from_slice(&self.marker);
        }
        out
    }
}

fn write_long(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    loop {
        let byte = (zigzag & 0x7f) as u8;
        zigzag >>= 7;
        if zigzag == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_long(out, bytes.len() as i64);
    out.extend_from_slice(bytes);
}

/// Refuses writer schemas whose decoding could recurse or allocate without bound.
struct SchemaCheck<'s> {
    named: HashMap<String, &'s Schema>,
    /// Named types on the current walk path (a reference back to one is recursion).
    active: HashSet<String>,
    /// Named types already checked, with the depth and emptiness found.
    done: HashMap<String, (usize, bool)>,
}

impl<'s> SchemaCheck<'s> {
    /// Checks `schema`; returns its named types by full name.
    fn run(schema: &'s Schema) -> Result<HashMap<String, &'s Schema>, AvroError> {
        let mut check = SchemaCheck {
            named: HashMap::new(),
            active: HashSet::new(),
            done: HashMap::new(),
        };
        check.collect(schema, 0)?;
        check.visit(schema, 0)?;
        Ok(check.named)
    }

    fn collect(&mut self, schema: &'s Schema, depth: usize) -> Result<(), AvroError> {
        if depth > MAX_SCHEMA_DEPTH {
            return Err(AvroError::RefusedSchema(
                "schema is nested too deeply".into(),
            ));
        }
        match schema {
            Schema::Record(record) => {
                self.named.insert(record.name.fullname(None), schema);
                for field in &record.fields {
                    self.collect(&field.schema, depth + 1)?;
                }
            }
            Schema::Enum(e) => {
                self.named.insert(e.name.fullname(None), schema);
            }
            Schema::Fixed(f) => {
                self.named.insert(f.name.fullname(None), schema);
            }
            Schema::Array(a) => self.collect(&a.items, depth + 1)?,
            Schema::Map(m) => self.collect(&m.types, depth + 1)?,
            Schema::Union(u) => {
                for variant in u.variants() {
                    self.collect(variant, depth + 1)?;
                }
            }
            Schema::Decimal(d) => self.collect(&d.inner, depth + 1)?,
            _ => {}
        }
        Ok(())
    }

    /// Returns (nesting depth, whether a datum can encode in zero bytes).
    fn visit(&mut self, schema: &'s Schema, depth: usize) -> Result<(usize, bool), AvroError> {
        if depth > MAX_SCHEMA_DEPTH {
            return Err(AvroError::RefusedSchema(
                "schema is nested too deeply".into(),
            ));
        }
        let result = match schema {
            Schema::Null => (0, true),
            Schema::Fixed(f) => (0, f.size == 0),
            Schema::Record(record) => {
                let name = record.name.fullname(None);
                if let Some(found) = self.done.get(&name) {
                    return Ok(*found);
                }
                if !self.active.insert(name.clone()) {
                    return Err(AvroError::RefusedSchema(format!(
                        "recursive type {name} is not accepted"
                    )));
                }
                let mut deepest = 0;
                let mut empty = true;
                for field in &record.fields {
                    let (d, e) = self.visit(&field.schema, depth + 1)?;
                    deepest = deepest.max(d + 1);
                    empty &= e;
                }
                self.active.remove(&name);
                self.done.insert(name, (deepest, empty));
                (deepest, empty)
            }
            Schema::Ref { name } => {
                let full = name.fullname(None);
                if self.active.contains(&full) {
                    return Err(AvroError::RefusedSchema(format!(
                        "recursive type {full} is not accepted"
                    )));
                }
                let target = *self.named.get(&full).ok_or_else(|| {
                    AvroError::RefusedSchema(format!("unknown type reference {full}"))
                })?;
                self.visit(target, depth)?
            }
            Schema::Array(a) => {
                let (d, empty_items) = self.visit(&a.items, depth + 1)?;
                if empty_items {
                    return Err(AvroError::RefusedSchema(
                        "arrays of zero-size items are not accepted".into(),
                    ));
                }
                (d + 1, false)
            }
            Schema::Map(m) => (self.visit(&m.types, depth + 1)?.0 + 1, false),
            Schema::Union(u) => {
                let mut deepest = 0;
                for variant in u.variants() {
                    deepest = deepest.max(self.visit(variant, depth + 1)?.0 + 1);
                }
                (deepest, false)
            }
            Schema::Decimal(d) => self.visit(&d.inner, depth + 1)?,
            _ => (0, false),
        };
        if result.0 > MAX_SCHEMA_DEPTH {
            return Err(AvroError::RefusedSchema(
                "schema is nested too deeply".into(),
            ));
        }
        Ok(result)
    }
}

/// Walks datums as apache-avro would decode them, counting their values without making any
/// (see [`MAX_VALUES`]). Run after [`SchemaCheck`], so references resolve and the walk's depth
/// is bounded by the schema's.
struct ValueCount<'s> {
    named: HashMap<String, &'s Schema>,
    values: usize,
    limit: usize,
}

impl ValueCount<'_> {
    fn count(&mut self, n: usize) -> Result<(), AvroError> {
        self.fits(n)?;
        self.values += n;
        Ok(())
    }

    /// Whether `n` more values would stay within the limit (a block's item count is checked
    /// before its items are walked).
    fn fits(&self, n: usize) -> Result<(), AvroError> {
        if self.values.saturating_add(n) > self.limit {
            return Err(AvroError::TooManyValues { limit: self.limit });
        }
        Ok(())
    }

    fn walk(&mut self, schema: &Schema, cur: &mut Cursor<'_>) -> Result<(), AvroError> {
        const WHAT: &str = "datum";
        self.count(1)?;
        match schema {
            Schema::Null => {}
            Schema::Boolean => {
                cur.take(1, WHAT)?;
            }
            Schema::Int
            | Schema::Long
            | Schema::Enum(_)
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => {
                cur.long(WHAT)?;
            }
            Schema::Float => {
                cur.take(4, WHAT)?;
            }
            Schema::Double => {
                cur.take(8, WHAT)?;
            }
            Schema::Duration => {
                cur.take(12, WHAT)?;
            }
            Schema::Bytes | Schema::String | Schema::BigDecimal | Schema::Uuid => {
                cur.bytes_value(WHAT)?;
            }
            Schema::Fixed(fixed) => {
                cur.take(fixed.size, WHAT)?;
            }
            Schema::Decimal(decimal) => self.walk(&decimal.inner, cur)?,
            Schema::Record(record) => {
                for field in &record.fields {
                    self.walk(&field.schema, cur)?;
                }
            }
            Schema::Array(array) => {
                while let Some(items) = Self::block_len(cur)? {
                    self.fits(items)?;
                    for _ in 0..items {
                        self.walk(&array.items, cur)?;
                    }
                }
            }
            Schema::Map(map) => {
                while let Some(entries) = Self::block_len(cur)? {
                    self.fits(entries)?;
                    for _ in 0..entries {
                        cur.bytes_value(WHAT)?;
                        self.walk(&map.types, cur)?;
                    }
                }
            }
            Schema::Union(union) => {
                // apache-avro reads a union at the very end of the data as null.
                if cur.at_end() {
                    return Ok(());
                }
                let index = cur.long(WHAT)?;
                let variant = usize::try_from(index)
                    .ok()
                    .and_then(|i| union.variants().get(i))
                    .ok_or(AvroError::BadBlock {
                        block: 0,
                        reason: "union index out of range",
                    })?;
                self.walk(variant, cur)?;
            }
            Schema::Ref { name } => {
                let target = *self.named.get(&name.fullname(None)).ok_or_else(|| {
                    AvroError::RefusedSchema(format!("unknown type reference {name}"))
                })?;
                self.walk(target, cur)?;
            }
        }
        Ok(())
    }

    /// The item count of the next block of an array or map; `None` at its end.
    fn block_len(cur: &mut Cursor<'_>) -> Result<Option<usize>, AvroError> {
        let len = cur.long("datum")?;
        if len == 0 {
            return Ok(None);
        }
        if len < 0 {
            // A negative count is followed by the block's size in bytes.
            cur.long("datum")?;
        }
        Ok(Some(
            usize::try_from(len.unsigned_abs()).unwrap_or(usize::MAX),
        ))
    }
}

fn canonical_to_json(datum: AvroValue) -> Value {
    match datum {
        AvroValue::Record(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(name, value)| {
                    let json = match (name.as_str(), value) {
                        ("timestamp" | "received_at", AvroValue::Long(nanos)) => {
                            Value::String(format_rfc3339(nanos))
                        }
                        (_, other) => avro_to_json(other),
                    };
                    (name, json)
                })
                .collect(),
        ),
        other => avro_to_json(other),
    }
}

fn bytes_to_json(bytes: Vec<u8>) -> Value {
    match String::from_utf8(bytes) {
        Ok(text) => Value::String(text),
        Err(e) => Value::Array(e.into_bytes().into_iter().map(Value::from).collect()),
    }
}

fn float_to_json(value: f64) -> Value {
    serde_json::Number::from_f64(value)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// Converts a decoded Avro value to JSON (see the module documentation).
pub fn avro_to_json(value: AvroValue) -> Value {
    match value {
        AvroValue::Null => Value::Null,
        AvroValue::Boolean(b) => Value::Bool(b),
        AvroValue::Int(i) | AvroValue::Date(i) | AvroValue::TimeMillis(i) => Value::from(i),
        AvroValue::Long(i) | AvroValue::TimeMicros(i) => Value::from(i),
        AvroValue::Float(f) => float_to_json(f64::from(f)),
        AvroValue::Double(f) => float_to_json(f),
        AvroValue::Bytes(b) | AvroValue::Fixed(_, b) => bytes_to_json(b),
        AvroValue::String(s) | AvroValue::Enum(_, s) => Value::String(s),
        AvroValue::Union(_, inner) => avro_to_json(*inner),
        AvroValue::Array(items) => Value::Array(items.into_iter().map(avro_to_json).collect()),
        AvroValue::Map(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, avro_to_json(v)))
                .collect::<Map<String, Value>>(),
        ),
        AvroValue::Record(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k, avro_to_json(v)))
                .collect::<Map<String, Value>>(),
        ),
        AvroValue::TimestampMillis(v) | AvroValue::LocalTimestampMillis(v) => {
            timestamp_json(v.checked_mul(1_000_000))
        }
        AvroValue::TimestampMicros(v) | AvroValue::LocalTimestampMicros(v) => {
            timestamp_json(v.checked_mul(1_000))
        }
        AvroValue::TimestampNanos(v) | AvroValue::LocalTimestampNanos(v) => timestamp_json(Some(v)),
        AvroValue::Uuid(u) => Value::String(u.to_string()),
        AvroValue::Decimal(d) => decimal_to_json(&d),
        AvroValue::BigDecimal(d) => Value::String(d.to_string()),
        AvroValue::Duration(d) => {
            let mut map = Map::new();
            map.insert("months".into(), Value::from(u32::from(d.months())));
            map.insert("days".into(), Value::from(u32::from(d.days())));
            map.insert("millis".into(), Value::from(u32::from(d.millis())));
            Value::Object(map)
        }
    }
}

fn timestamp_json(nanos: Option<i64>) -> Value {
    match nanos {
        Some(n) => Value::String(format_rfc3339(n)),
        None => Value::Null,
    }
}

/// The unscaled two's-complement integer of a decimal, as decimal text (up to 128 bits).
fn decimal_to_json(decimal: &apache_avro::Decimal) -> Value {
    let Ok(bytes) = Vec::<u8>::try_from(decimal) else {
        return Value::Null;
    };
    if bytes.is_empty() {
        return Value::String("0".into());
    }
    if bytes.len() > 16 {
        return Value::Null;
    }
    let negative = bytes[0] & 0x80 != 0;
    let mut value: i128 = if negative { -1 } else { 0 };
    for byte in bytes {
        value = (value << 8) | i128::from(byte);
    }
    Value::String(value.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::entry::{FieldValue, Level};
    use crate::json::{from_json, to_json};
    use proptest::prelude::*;

    fn sample_entry() -> LogEntry {
        let mut fields = BTreeMap::new();
        fields.insert("duration_ms".into(), FieldValue::int(42));
        fields.insert("amount".into(), FieldValue::float(12.5));
        fields.insert("ok".into(), FieldValue::bool(false));
        fields.insert("http.method".into(), FieldValue::str("GET"));
        LogEntry {
            id: "0000000000000001-00000000".into(),
            timestamp: 1_714_572_000_123_456_789,
            received_at: 1_714_572_001_000_000_000,
            tenant: "acme".into(),
            service: "payment".into(),
            level: Level::Error as i32,
            message: "charge failed: gateway timeout".into(),
            host: "pay-1".into(),
            trace_id: "c662dcc5f36fb152848867f1486c89df".into(),
            fields,
        }
    }

    #[test]
    fn canonical_container_decodes_to_the_canonical_json_form() {
        let entry = sample_entry();
        let bytes = encode_container(std::slice::from_ref(&entry)).expect("encodes");
        assert_eq!(&bytes[..4], b"Obj\x01");
        let values = decode_container(&bytes).expect("decodes");
        assert_eq!(values.len(), 1);
        assert_eq!(values[0], to_json(&entry));
        assert_eq!(from_json(&values[0]).expect("canonical"), entry);
    }

    #[test]
    fn container_written_with_a_foreign_schema_becomes_json_objects() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"AccessLog","namespace":"com.example","fields":[
                {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
                {"name":"msg","type":"string"},
                {"name":"status","type":"int"},
                {"name":"latency","type":["null","double"]},
                {"name":"tags","type":{"type":"array","items":"string"}},
                {"name":"method","type":{"type":"enum","name":"Method","symbols":["GET","POST"]}},
                {"name":"peer","type":{"type":"record","name":"Peer","fields":[{"name":"ip","type":"string"}]}}
            ]}"#,
        )
        .expect("schema");
        let mut writer = apache_avro::Writer::with_codec(
            &schema,
            Vec::new(),
            apache_avro::Codec::Deflate(Default::default()),
        );
        for i in 0..3 {
            let record = AvroValue::Record(vec![
                (
                    "ts".into(),
                    AvroValue::TimestampMillis(1_714_572_000_000 + i),
                ),
                ("msg".into(), AvroValue::String(format!("GET /item/{i}"))),
                ("status".into(), AvroValue::Int(200)),
                (
                    "latency".into(),
                    AvroValue::Union(1, Box::new(AvroValue::Double(0.25))),
                ),
                (
                    "tags".into(),
                    AvroValue::Array(vec![AvroValue::String("edge".into())]),
                ),
                ("method".into(), AvroValue::Enum(0, "GET".into())),
                (
                    "peer".into(),
                    AvroValue::Record(vec![("ip".into(), AvroValue::String("10.0.0.7".into()))]),
                ),
            ]);
            writer.append(record).expect("append");
        }
        let bytes = writer.into_inner().expect("flush");
        // Per datum: the record, its 7 fields, the union's double, the array's item, the
        // inner record's field.
        assert_eq!(walk_container(&bytes), 3 * (1 + 7 + 1 + 1 + 1));
        let values = decode_container(&bytes).expect("decodes");
        assert_eq!(values.len(), 3);
        assert_eq!(
            values[2],
            serde_json::json!({
                "ts": "2024-05-01T14:00:00.002Z", "msg": "GET /item/2", "status": 200,
                "latency": 0.25, "tags": ["edge"], "method": "GET", "peer": {"ip": "10.0.0.7"}
            })
        );
    }

    fn container_with_schema(schema_json: &str, codec: &str, blocks: &[(i64, &[u8])]) -> Vec<u8> {
        let marker = [7u8; SYNC_LEN];
        let mut out = MAGIC.to_vec();
        write_long(&mut out, 2);
        write_bytes(&mut out, b"avro.schema");
        write_bytes(&mut out, schema_json.as_bytes());
        write_bytes(&mut out, b"avro.codec");
        write_bytes(&mut out, codec.as_bytes());
        write_long(&mut out, 0);
        out.extend_from_slice(&marker);
        for (count, data) in blocks {
            write_long(&mut out, *count);
            write_bytes(&mut out, data);
            out.extend_from_slice(&marker);
        }
        out
    }

    #[test]
    fn recursive_schema_is_refused_before_decoding() {
        let bytes = container_with_schema(
            r#"{"type":"record","name":"Node","fields":[{"name":"next","type":["null","Node"]}]}"#,
            "null",
            &[(1, &[2, 2, 2, 0])],
        );
        let err = decode_container(&bytes).expect_err("refused");
        assert!(matches!(err, AvroError::RefusedSchema(_)), "{err}");
    }

    #[test]
    fn array_of_nulls_is_refused_as_an_allocation_bomb() {
        // One byte per block could otherwise claim millions of zero-byte items.
        let bytes = container_with_schema(
            r#"{"type":"array","items":"null"}"#,
            "null",
            &[(1, &[0xfe, 0xff, 0xff, 0xff, 0x0f, 0])],
        );
        let err = decode_container(&bytes).expect_err("refused");
        assert!(matches!(err, AvroError::RefusedSchema(_)), "{err}");
    }

    #[test]
    fn block_claiming_more_records_than_bytes_is_refused() {
        let bytes = container_with_schema(r#""long""#, "null", &[(1_000_000, &[2, 4])]);
        let err = decode_container(&bytes).expect_err("refused");
        assert!(matches!(err, AvroError::BadBlock { .. }), "{err}");
    }

    /// Walks every block of a container as [`decode_limited`] does; returns the values
    /// counted, and checks that each block's datums end exactly where its data does.
    fn walk_container(bytes: &[u8]) -> usize {
        let container = Container::parse(bytes, MAX_DECODED_BYTES).expect("frames");
        let schema = parse_untrusted_schema(container.schema_text).expect("schema");
        let named = SchemaCheck::run(&schema).expect("accepted");
        let mut values = ValueCount {
            named,
            values: 0,
            limit: usize::MAX,
        };
        for (data, count) in &container.blocks {
            let mut cur = Cursor {
                bytes: data,
                pos: 0,
            };
            for _ in 0..*count {
                values.walk(&schema, &mut cur).expect("walks");
            }
            assert_eq!(cur.pos, data.len(), "the walk ends where the block does");
        }
        values.values
    }

    /// An item of an `array<long>` is one byte on the wire: two million of them deflate to a
    /// few KB and would take hundreds of MB once decoded. They are counted first.
    #[test]
    fn arrays_of_one_byte_items_are_refused_past_the_value_limit() {
        let datum = |items: i64| {
            let mut data = Vec::new();
            write_long(&mut data, items);
            data.resize(data.len() + items as usize, 0);
            write_long(&mut data, 0);
            data
        };
        let schema = r#"{"type":"record","name":"R","fields":[{"name":"a","type":{"type":"array","items":"long"}}]}"#;
        let big = datum(MAX_VALUES as i64 + 1);
        let packed = miniz_oxide::deflate::compress_to_vec(&big, 9);
        assert!(packed.len() < 64 * 1024, "{}", packed.len());
        let bytes = container_with_schema(schema, "deflate", &[(1, &packed)]);
        let err = decode_container(&bytes).expect_err("refused");
        assert!(
            matches!(err, AvroError::TooManyValues { limit } if limit == MAX_VALUES),
            "{err}"
        );
        // Under the limit the same shape decodes, item for item.
        let small = datum(1000);
        let bytes = container_with_schema(schema, "null", &[(1, &small)]);
        let values = decode_container(&bytes).expect("decodes");
        assert_eq!(values[0]["a"].as_array().map(Vec::len), Some(1000));
        assert_eq!(walk_container(&bytes), 1 + 1 + 1000);
    }

    #[test]
    fn deflate_bomb_is_stopped_at_the_decoded_limit() {
        let zeros = vec![b'a'; 4 * 1024 * 1024];
        let packed = miniz_oxide::deflate::compress_to_vec(&zeros, 9);
        assert!(packed.len() < 64 * 1024);
        let bytes = container_with_schema(r#""string""#, "deflate", &[(1, &packed)]);
        let err = decode_container_with_limit(&bytes, 1024 * 1024).expect_err("refused");
        assert!(matches!(err, AvroError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn huge_string_length_is_refused_not_allocated() {
        // A datum claiming a 2^40-byte string.
        let mut datum = Vec::new();
        write_long(&mut datum, 1i64 << 40);
        let bytes = container_with_schema(r#""string""#, "null", &[(1, &datum)]);
        assert!(decode_container(&bytes).is_err());
    }

    #[test]
    fn unsupported_codec_and_bad_marker_are_reported() {
        let bytes = container_with_schema(r#""long""#, "snappy", &[]);
        assert!(matches!(
            decode_container(&bytes),
            Err(AvroError::UnsupportedCodec(c)) if c == "snappy"
        ));
        let mut bytes = container_with_schema(r#""long""#, "null", &[(1, &[4])]);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(
            decode_container(&bytes),
            Err(AvroError::BadSyncMarker { block: 0 })
        ));
        assert!(matches!(
            decode_container(b"PK\x03\x04"),
            Err(AvroError::BadMagic)
        ));
    }

    fn arb_entry() -> impl Strategy<Value = LogEntry> {
        let field = prop_oneof![
            any::<i64>().prop_map(FieldValue::int),
            any::<bool>().prop_map(FieldValue::bool),
            "[a-z ]{0,12}".prop_map(FieldValue::str),
            (-1.0e12f64..1.0e12).prop_map(FieldValue::float),
        ];
        (
            0i64..4_102_444_800_000_000_000,
            "[a-z]{0,8}",
            "[a-z-]{1,12}",
            0usize..7,
            ".{0,40}",
            proptest::collection::btree_map("[a-z.]{1,10}", field, 0..5),
        )
            .prop_map(
                |(timestamp, tenant, service, level, message, fields)| LogEntry {
                    id: String::new(),
                    timestamp,
                    received_at: 0,
                    tenant,
                    service,
                    level: Level::ALL[level] as i32,
                    message,
                    host: "h-1".into(),
                    trace_id: String::new(),
                    fields,
                },
            )
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_the_canonical_json(entries in proptest::collection::vec(arb_entry(), 0..8)) {
            let bytes = encode_container(&entries).expect("encodes");
            // The walk that counts values reads each block exactly as the decoder does.
            walk_container(&bytes);
            let values = decode_container(&bytes).expect("decodes");
            prop_assert_eq!(values.len(), entries.len());
            for (value, entry) in values.iter().zip(&entries) {
                prop_assert_eq!(&from_json(value).expect("canonical"), entry);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_container(&bytes);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = decode_container(&with_magic);
        }

        #[test]
        fn corrupted_valid_containers_never_panic(
            entries in proptest::collection::vec(arb_entry(), 1..4),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        ) {
            let mut bytes = encode_container(&entries).expect("encodes");
            for (at, byte) in flips {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            let _ = decode_container(&bytes);
        }
    }

    #[test]
    fn invalid_type_names_are_refused_not_panicked_on() {
        for schema in [
            r#"{"type":"record","name":"LogEnt~y","fields":[]}"#,
            r#"{"type":"record","name":"ok","fields":[{"name":"f","type":{"type":"enum","name":"1bad","symbols":["A"]}}]}"#,
        ] {
            let error = parse_untrusted_schema(schema).expect_err(schema);
            assert!(
                error.to_string().contains("not a valid Avro name"),
                "{error}"
            );
        }
        assert!(parse_untrusted_schema(LOG_ENTRY_SCHEMA).is_ok());
        // The same schema inside a container, as a client would send it.
        let mut bytes = encode_container(&[]).expect("encodes");
        let at = bytes
            .windows(8)
            .position(|w| w == b"LogEntry")
            .expect("schema name in the header");
        bytes[at + 6] = b'~';
        assert!(decode_container(&bytes).is_err());
    }
}
