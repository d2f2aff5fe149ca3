//! A log entry borrowed from its encoded bytes: what a replica builds blocks from, without an
//! allocation per string and per field the owned [`LogEntry`] costs.
//!
//! [`EntryRef::decode`] reads exactly what prost's decoding of a [`LogEntry`] gives (the last
//! value of a repeated scalar, fields sorted by key with the last of a repeated key, a
//! repeated field value merged into the one before it), and refuses what it refuses; it also
//! refuses groups, which prost skips, so a caller that falls back to prost on `None` stores
//! the same entries either way.

use crate::wire::{put_key, put_varint, read_key, read_varint};
use prost::encoding::WireType;

use crate::entry::{FieldValue, LogEntry, field_value::Kind};

/// A free-form field value, borrowed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum FieldRef<'a> {
    /// A value message without a kind.
    #[default]
    Absent,
    Str(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
    Json(&'a str),
}

impl<'a> FieldRef<'a> {
    /// The value of `value`.
    pub fn of(value: &'a FieldValue) -> FieldRef<'a> {
        match &value.kind {
            None => FieldRef::Absent,
            Some(Kind::Str(s)) => FieldRef::Str(s),
            Some(Kind::Int(i)) => FieldRef::Int(*i),
            Some(Kind::Float(f)) => FieldRef::Float(*f),
            Some(Kind::Bool(b)) => FieldRef::Bool(*b),
            Some(Kind::Json(s)) => FieldRef::Json(s),
        }
    }

    /// The owned value.
    pub fn to_value(self) -> FieldValue {
        FieldValue {
            kind: match self {
                FieldRef::Absent => None,
                FieldRef::Str(s) => Some(Kind::Str(s.to_string())),
                FieldRef::Int(i) => Some(Kind::Int(i)),
                FieldRef::Float(f) => Some(Kind::Float(f)),
                FieldRef::Bool(b) => Some(Kind::Bool(b)),
                FieldRef::Json(s) => Some(Kind::Json(s.to_string())),
            },
        }
    }

    /// The value as a number, when it is one (or a string holding one).
    pub fn as_f64(self) -> Option<f64> {
        match self {
            FieldRef::Int(i) => Some(i as f64),
            FieldRef::Float(f) => Some(f),
            FieldRef::Str(s) if crate::entry::may_be_number(s) => s.parse().ok(),
            _ => None,
        }
    }
}

/// A [`LogEntry`] whose strings borrow from elsewhere (its encoded bytes, or an owned entry).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EntryRef<'a> {
    pub id: &'a str,
    pub timestamp: i64,
    pub received_at: i64,
    pub tenant: &'a str,
    pub service: &'a str,
    pub level: i32,
    pub message: &'a str,
    pub host: &'a str,
    pub trace_id: &'a str,
    /// Sorted by key, each key once (the order of [`LogEntry::fields`]).
    pub fields: Vec<(&'a str, FieldRef<'a>)>,
}

impl<'a> EntryRef<'a> {
    /// The entry whose protobuf encoding (a `LogEntry` message's body) is `bytes`; `None`
    /// when prost would not decode it, or when it holds a group.
    pub fn decode(bytes: &'a [u8]) -> Option<EntryRef<'a>> {
        let mut entry = EntryRef::default();
        let mut rest = bytes;
        while !rest.is_empty() {
            let (tag, wire_type) = read_key(&mut rest)?;
            match (tag, wire_type) {
                (2 | 3 | 6, WireType::Varint) => {
                    let value = read_varint(&mut rest)?;
                    match tag {
                        2 => entry.timestamp = value as i64,
                        3 => entry.received_at = value as i64,
                        _ => entry.level = value as i32,
                    }
                }
                (1 | 4 | 5 | 7 | 8 | 9, WireType::LengthDelimited) => {
                    let text = text(delimited(&mut rest)?)?;
                    match tag {
                        1 => entry.id = text,
                        4 => entry.tenant = text,
                        5 => entry.service = text,
                        7 => entry.message = text,
                        8 => entry.host = text,
                        _ => entry.trace_id = text,
                    }
                }
                (10, WireType::LengthDelimited) => {
                    entry.fields.push(map_entry(delimited(&mut rest)?)?);
                }
                (1..=10, _) => return None,
                (_, wire_type) => skip(wire_type, &mut rest)?,
            }
        }
        // Encoders write a map in key order; anything else is put in it here.
        if !entry.fields.windows(2).all(|w| w[0].0 < w[1].0) {
            entry.fields = by_key(std::mem::take(&mut entry.fields));
        }
        Some(entry)
    }

    /// The view of an owned entry.
    pub fn of(entry: &'a LogEntry) -> EntryRef<'a> {
        let mut view = EntryRef::default();
        view.set(entry);
        view
    }

    /// Makes this the view of `entry`, keeping the fields' room (one view serves a batch).
    pub fn set(&mut self, entry: &'a LogEntry) {
        self.id = &entry.id;
        self.timestamp = entry.timestamp;
        self.received_at = entry.received_at;
        self.tenant = &entry.tenant;
        self.service = &entry.service;
        self.level = entry.level;
        self.message = &entry.message;
        self.host = &entry.host;
        self.trace_id = &entry.trace_id;
        self.fields.clear();
        self.fields.extend(
            entry
                .fields
                .iter()
                .map(|(key, value)| (key.as_str(), FieldRef::of(value))),
        );
    }

    /// Appends the entry's protobuf encoding (a `LogEntry` message's body, without key and
    /// length): byte for byte what prost writes for [`EntryRef::to_entry`], without making
    /// it. `fields` must be in key order, each key once, as the type requires.
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        let text = |tag: u32, value: &str, out: &mut Vec<u8>| {
            if !value.is_empty() {
                put_text(tag, value, out);
            }
        };
        let number = |tag: u32, value: u64, out: &mut Vec<u8>| {
            if value != 0 {
                put_key(tag, WireType::Varint, out);
                put_varint(value, out);
            }
        };
        text(1, self.id, out);
        number(2, self.timestamp as u64, out);
        number(3, self.received_at as u64, out);
        text(4, self.tenant, out);
        text(5, self.service, out);
        // An enum is an int32: a negative one takes ten bytes, as prost writes it.
        number(6, i64::from(self.level) as u64, out);
        text(7, self.message, out);
        text(8, self.host, out);
        text(9, self.trace_id, out);
        for (key, value) in &self.fields {
            // A map entry leaves out a default key and a default value, as prost does.
            let key_len = if key.is_empty() { 0 } else { text_len(key) };
            let value_len = value.encoded_len();
            let value_field = match value {
                FieldRef::Absent => 0,
                _ => 1 + varint_len(value_len as u64) + value_len,
            };
            put_key(10, WireType::LengthDelimited, out);
            put_varint((key_len + value_field) as u64, out);
            text(1, key, out);
            if value_field > 0 {
                put_key(2, WireType::LengthDelimited, out);
                put_varint(value_len as u64, out);
                value.encode_body(out);
            }
        }
    }

    /// The owned entry.
    pub fn to_entry(&self) -> LogEntry {
        LogEntry {
            id: self.id.to_string(),
            timestamp: self.timestamp,
            received_at: self.received_at,
            tenant: self.tenant.to_string(),
            service: self.service.to_string(),
            level: self.level,
            message: self.message.to_string(),
            host: self.host.to_string(),
            trace_id: self.trace_id.to_string(),
            fields: self
                .fields
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_value()))
                .collect(),
        }
    }
}

impl FieldRef<'_> {
    /// The length of [`FieldRef::encode_body`]'s bytes.
    fn encoded_len(&self) -> usize {
        match self {
            FieldRef::Absent => 0,
            FieldRef::Str(s) | FieldRef::Json(s) => text_len(s),
            FieldRef::Int(i) => 1 + varint_len(*i as u64),
            FieldRef::Float(_) => 9,
            FieldRef::Bool(_) => 2,
        }
    }

    /// A `FieldValue` message's body: the kind, written even when it holds its default (a
    /// oneof member is always written).
    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            FieldRef::Absent => {}
            FieldRef::Str(s) => put_text(1, s, out),
            FieldRef::Int(i) => {
                put_key(2, WireType::Varint, out);
                put_varint(*i as u64, out);
            }
            FieldRef::Float(f) => {
                put_key(3, WireType::SixtyFourBit, out);
                out.extend_from_slice(&f.to_le_bytes());
            }
            FieldRef::Bool(b) => {
                put_key(4, WireType::Varint, out);
                out.push(u8::from(*b));
            }
            FieldRef::Json(s) => put_text(5, s, out),
        }
    }
}

/// A string field (tags here are below 16: one key byte).
fn put_text(tag: u32, value: &str, out: &mut Vec<u8>) {
    put_key(tag, WireType::LengthDelimited, out);
    put_varint(value.len() as u64, out);
    out.extend_from_slice(value.as_bytes());
}

fn text_len(value: &str) -> usize {
    1 + varint_len(value.len() as u64) + value.len()
}

fn varint_len(value: u64) -> usize {
    prost::encoding::encoded_len_varint(value)
}

/// The contents of a length-delimited field.
fn delimited<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(read_varint(rest)?).ok()?;
    let contents = rest.get(..len)?;
    *rest = &rest[len..];
    Some(contents)
}

fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()
}

/// Skips a field prost skips (groups excepted).
fn skip(wire_type: WireType, rest: &mut &[u8]) -> Option<()> {
    match wire_type {
        WireType::Varint => {
            read_varint(rest)?;
        }
        WireType::SixtyFourBit => *rest = rest.get(8..)?,
        WireType::ThirtyTwoBit => *rest = rest.get(4..)?,
        WireType::LengthDelimited => {
            delimited(rest)?;
        }
        WireType::StartGroup | WireType::EndGroup => return None,
    }
    Some(())
}

/// One entry of the fields map: key 1, value 2 (a repeated value merges into the one before).
fn map_entry(mut rest: &[u8]) -> Option<(&str, FieldRef<'_>)> {
    let (mut key, mut value) = ("", FieldRef::Absent);
    while !rest.is_empty() {
        match read_key(&mut rest)? {
            (1, WireType::LengthDelimited) => key = text(delimited(&mut rest)?)?,
            (2, WireType::LengthDelimited) => merge_value(delimited(&mut rest)?, &mut value)?,
            (1 | 2, _) => return None,
            (_, wire_type) => skip(wire_type, &mut rest)?,
        }
    }
    Some((key, value))
}

/// A `FieldValue` message merged into `value`: the last kind present wins.
fn merge_value<'a>(mut rest: &'a [u8], value: &mut FieldRef<'a>) -> Option<()> {
    while !rest.is_empty() {
        *value = match read_key(&mut rest)? {
            (1, WireType::LengthDelimited) => FieldRef::Str(text(delimited(&mut rest)?)?),
            (2, WireType::Varint) => FieldRef::Int(read_varint(&mut rest)? as i64),
            (3, WireType::SixtyFourBit) => {
                let bits = rest.get(..8)?;
                rest = &rest[8..];
                FieldRef::Float(f64::from_le_bytes(bits.try_into().ok()?))
            }
            (4, WireType::Varint) => FieldRef::Bool(read_varint(&mut rest)? != 0),
            (5, WireType::LengthDelimited) => FieldRef::Json(text(delimited(&mut rest)?)?),
            (1..=5, _) => return None,
            (_, wire_type) => {
                skip(wire_type, &mut rest)?;
                continue;
            }
        };
    }
    Some(())
}

/// Fields in key order, the last of a repeated key kept (a map's inserts).
fn by_key<'a>(mut fields: Vec<(&'a str, FieldRef<'a>)>) -> Vec<(&'a str, FieldRef<'a>)> {
    fields.reverse();
    // Stable: of a repeated key, the last inserted (now first) comes first and is kept.
    fields.sort_by(|a, b| a.0.cmp(b.0));
    fields.dedup_by(|later, kept| later.0 == kept.0);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    fn field_value() -> impl Strategy<Value = FieldValue> {
        prop_oneof![
            Just(FieldValue { kind: None }),
            ".{0,12}".prop_map(FieldValue::str),
            // A map entry of 128 bytes or more: a two-byte length.
            ".{100,160}".prop_map(FieldValue::str),
            any::<i64>().prop_map(FieldValue::int),
            any::<f64>().prop_map(FieldValue::float),
            any::<bool>().prop_map(FieldValue::bool),
            ".{0,12}".prop_map(|s| FieldValue {
                kind: Some(Kind::Json(s))
            }),
        ]
    }

    fn entry() -> impl Strategy<Value = LogEntry> {
        (
            (".{0,8}", any::<i64>(), any::<i64>(), ".{0,6}", ".{0,6}"),
            (any::<i32>(), ".{0,40}", ".{0,8}", "[0-9a-f]{0,32}"),
            proptest::collection::btree_map(".{0,6}", field_value(), 0..6),
        )
            .prop_map(
                |(
                    (id, timestamp, received_at, tenant, service),
                    (level, message, host, trace_id),
                    fields,
                )| LogEntry {
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
                },
            )
    }

    /// Floats compared by bits (NaN is a value like any other here).
    fn same(a: &LogEntry, b: &LogEntry) -> bool {
        a.encode_to_vec() == b.encode_to_vec()
    }

    fn agrees_with_prost(bytes: &[u8]) -> Result<(), TestCaseError> {
        if let Some(view) = EntryRef::decode(bytes) {
            let decoded = LogEntry::decode(bytes);
            prop_assert!(decoded.is_ok(), "prost refuses {bytes:?}");
            prop_assert!(same(&view.to_entry(), &decoded.expect("ok")));
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn a_view_of_the_encoding_is_the_entry(entry in entry()) {
            let bytes = entry.encode_to_vec();
            let view = EntryRef::decode(&bytes).expect("decodes");
            prop_assert!(same(&view.to_entry(), &entry));
            let of = EntryRef::of(&entry);
            prop_assert!(same(&of.to_entry(), &entry));
        }

        #[test]
        fn a_view_encodes_as_prost_encodes_the_entry(entry in entry()) {
            let mut bytes = Vec::new();
            EntryRef::of(&entry).encode_body(&mut bytes);
            prop_assert_eq!(bytes, entry.encode_to_vec());
        }

        /// Whatever the bytes, a view that decodes is what prost decodes.
        #[test]
        fn a_view_decodes_only_what_prost_decodes_and_the_same(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            agrees_with_prost(&bytes)?;
        }

        /// An entry's encoding with one byte changed: mostly still a message, often not the
        /// same one.
        #[test]
        fn a_view_of_damaged_bytes_agrees_with_prost(
            entry in entry(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut bytes = entry.encode_to_vec();
            if !bytes.is_empty() {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            agrees_with_prost(&bytes)?;
        }
    }

    #[test]
    fn repeats_resolve_as_prost_resolves_them() {
        use prost::encoding::{encode_key, encode_varint};
        let mut bytes = Vec::new();
        // Two timestamps, a field "b" then "a", "b" again, and a value sent in two parts.
        for ts in [5u64, 7] {
            encode_key(2, WireType::Varint, &mut bytes);
            encode_varint(ts, &mut bytes);
        }
        let map_entry = |key: &str, values: &[FieldValue]| {
            let mut body = Vec::new();
            prost::encoding::string::encode(1, &key.to_string(), &mut body);
            for value in values {
                prost::encoding::message::encode(2, value, &mut body);
            }
            body
        };
        for body in [
            map_entry("b", &[FieldValue::int(1)]),
            map_entry("a", &[FieldValue::str("x")]),
            map_entry("b", &[FieldValue::int(2), FieldValue { kind: None }]),
        ] {
            prost::encoding::bytes::encode(10, &body, &mut bytes);
        }
        let view = EntryRef::decode(&bytes).expect("decodes");
        let decoded = LogEntry::decode(bytes.as_slice()).expect("prost decodes");
        assert_eq!(view.to_entry(), decoded);
        assert_eq!(view.timestamp, 7);
        assert_eq!(
            view.fields,
            [("a", FieldRef::Str("x")), ("b", FieldRef::Int(2))]
        );
        // Invalid UTF-8 and a known field of the wrong wire type are refused by both.
        for bad in [&[0x3a, 0x01, 0xff][..], &[0x08, 0x01]] {
            assert!(EntryRef::decode(bad).is_none());
            assert!(LogEntry::decode(bad).is_err());
        }
    }
}
