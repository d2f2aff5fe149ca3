//! The log entry data model (`proto/logcluster.proto` is the same schema for other languages).

use std::collections::BTreeMap;

/// One log record as LogCluster stores and returns it.
///
/// `timestamp` and `received_at` are Unix nanoseconds (UTC). `id` is assigned by the ingestor
/// and is deterministic for a given (tenant, client batch id, position), so a retried batch
/// produces the same ids and can be de-duplicated anywhere.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LogEntry {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
    #[prost(int64, tag = "3")]
    pub received_at: i64,
    #[prost(string, tag = "4")]
    pub tenant: String,
    #[prost(string, tag = "5")]
    pub service: String,
    #[prost(enumeration = "Level", tag = "6")]
    pub level: i32,
    #[prost(string, tag = "7")]
    pub message: String,
    #[prost(string, tag = "8")]
    pub host: String,
    #[prost(string, tag = "9")]
    pub trace_id: String,
    /// Free-form fields; nested objects are flattened to dotted keys on ingest.
    #[prost(btree_map = "string, message", tag = "10")]
    pub fields: BTreeMap<String, FieldValue>,
}

/// A batch of entries: the payload of a `protobuf` frame.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LogBatch {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<LogEntry>,
}

/// A typed free-form field value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FieldValue {
    #[prost(oneof = "field_value::Kind", tags = "1, 2, 3, 4, 5")]
    pub kind: Option<field_value::Kind>,
}

pub mod field_value {
    /// The value of a free-form field.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(string, tag = "1")]
        Str(String),
        #[prost(int64, tag = "2")]
        Int(i64),
        #[prost(double, tag = "3")]
        Float(f64),
        #[prost(bool, tag = "4")]
        Bool(bool),
        /// Arrays and nulls keep their JSON text.
        #[prost(string, tag = "5")]
        Json(String),
    }
}

/// Severity, ordered from least to most severe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Level {
    Unspecified = 0,
    Trace = 1,
    Debug = 2,
    Info = 3,
    Warn = 4,
    Error = 5,
    Fatal = 6,
}

impl Level {
    /// All levels, in numeric order.
    pub const ALL: [Level; 7] = [
        Level::Unspecified,
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
        Level::Fatal,
    ];

    /// The canonical upper-case name (`INFO`); `UNSPECIFIED` for 0.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Unspecified => "UNSPECIFIED",
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
            Level::Fatal => "FATAL",
        }
    }

    /// Parses the usual spellings case-insensitively (`warning`, `err`, `critical`, syslog
    /// keywords, numeric syslog severities are handled by the syslog decoder).
    pub fn parse(text: &str) -> Option<Level> {
        let lower = text.trim().to_ascii_lowercase();
        Some(match lower.as_str() {
            "trace" | "trc" | "verbose" => Level::Trace,
            "debug" | "dbg" => Level::Debug,
            "info" | "information" | "informational" | "notice" | "inf" => Level::Info,
            "warn" | "warning" | "wrn" => Level::Warn,
            "error" | "err" | "eror" => Level::Error,
            "fatal" | "critical" | "crit" | "alert" | "emerg" | "emergency" | "panic" => {
                Level::Fatal
            }
            "unspecified" | "" => Level::Unspecified,
            _ => return None,
        })
    }

    /// From the stored i32; unknown numbers read as `Unspecified`.
    pub fn from_i32_lossy(value: i32) -> Level {
        Level::try_from(value).unwrap_or(Level::Unspecified)
    }
}

impl LogEntry {
    /// The entry's level as an enum.
    pub fn level_enum(&self) -> Level {
        Level::from_i32_lossy(self.level)
    }

    /// Approximate in-memory/raw size in bytes, used for budgets and rotation.
    pub fn approx_size(&self) -> usize {
        let mut size = 64
            + self.id.len()
            + self.tenant.len()
            + self.service.len()
            + self.message.len()
            + self.host.len()
            + self.trace_id.len();
        for (key, value) in &self.fields {
            size += key.len() + 8;
            if let Some(field_value::Kind::Str(s) | field_value::Kind::Json(s)) = &value.kind {
                size += s.len();
            }
        }
        size
    }
}

impl FieldValue {
    pub fn str(value: impl Into<String>) -> FieldValue {
        FieldValue {
            kind: Some(field_value::Kind::Str(value.into())),
        }
    }
    pub fn int(value: i64) -> FieldValue {
        FieldValue {
            kind: Some(field_value::Kind::Int(value)),
        }
    }
    pub fn float(value: f64) -> FieldValue {
        FieldValue {
            kind: Some(field_value::Kind::Float(value)),
        }
    }
    pub fn bool(value: bool) -> FieldValue {
        FieldValue {
            kind: Some(field_value::Kind::Bool(value)),
        }
    }

    /// The value as display text (strings without quotes).
    pub fn to_text(&self) -> String {
        match &self.kind {
            Some(field_value::Kind::Str(s)) | Some(field_value::Kind::Json(s)) => s.clone(),
            Some(field_value::Kind::Int(i)) => i.to_string(),
            Some(field_value::Kind::Float(f)) => f.to_string(),
            Some(field_value::Kind::Bool(b)) => b.to_string(),
            None => String::new(),
        }
    }

    /// The value as a number, when it is one (or a string holding one).
    pub fn as_f64(&self) -> Option<f64> {
        crate::FieldRef::of(self).as_f64()
    }
}

/// Appends `entry` as a length-delimited field `tag` of an enclosing message (a repeated
/// `LogEntry` field: the WAL's batches, replication requests), byte for byte what prost
/// writes. The entry is encoded in place after room for a two-byte length and moved only when
/// its length needs another size, instead of being walked once for its length first.
pub fn encode_entry_field(tag: u32, entry: &LogEntry, out: &mut Vec<u8>) {
    use prost::Message;
    const GUESS: usize = 2;
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, out);
    let at = out.len();
    out.extend_from_slice(&[0; GUESS]);
    entry.encode_raw(out);
    let len = out.len() - at - GUESS;
    let mut prefix = [0u8; 10];
    let mut cursor = &mut prefix[..];
    prost::encoding::encode_varint(len as u64, &mut cursor);
    let width = 10 - cursor.len();
    if width != GUESS {
        let end = out.len();
        if width > GUESS {
            out.resize(end + width - GUESS, 0);
        }
        out.copy_within(at + GUESS..end, at + width);
        out.truncate(at + width + len);
    }
    out[at..at + width].copy_from_slice(&prefix[..width]);
}

/// Whether `text` may parse as an `f64`: Rust's grammar allows only digits, signs, points
/// and exponent marks, or (after an optional sign) `inf`, `infinity` or `nan` in any case.
/// Most text values (ids, hex, names) fail here without a parse attempt.
pub(crate) fn may_be_number(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes
        .iter()
        .all(|b| matches!(b, b'0'..=b'9' | b'+' | b'-' | b'.' | b'e' | b'E'))
    {
        return !bytes.is_empty();
    }
    let word = bytes
        .strip_prefix(b"+")
        .or(bytes.strip_prefix(b"-"))
        .unwrap_or(bytes);
    ["inf", "infinity", "nan"]
        .iter()
        .any(|w| word.eq_ignore_ascii_case(w.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    proptest::proptest! {
        /// The quick refusal in `as_f64` never refuses what `str::parse` accepts.
        #[test]
        fn text_values_read_as_numbers_exactly_as_parse_reads_them(
            text in "[+-]{0,2}([0-9.eE_xa-fA-F+-]|inf|INF|Infinity|infinitY|nan|NaN|[ a-z]){0,12}"
        ) {
            let value = FieldValue::str(text.clone());
            let parsed: Option<f64> = text.parse().ok();
            let got = value.as_f64();
            proptest::prop_assert_eq!(got.map(f64::to_bits), parsed.map(f64::to_bits));
        }
    }

    #[test]
    fn entry_fields_are_encoded_as_prost_encodes_them() {
        // Lengths of one, two and three varint bytes, with fields.
        for message_len in [
            0, 10, 100, 126, 127, 128, 300, 16_000, 16_383, 16_384, 70_000,
        ] {
            let mut entry = LogEntry {
                id: "00000000000000ab-00000001".into(),
                message: "m".repeat(message_len),
                ..Default::default()
            };
            entry.fields.insert("k".into(), FieldValue::int(7));
            let mut expected = vec![9u8];
            prost::encoding::message::encode(4, &entry, &mut expected);
            let mut out = vec![9u8];
            encode_entry_field(4, &entry, &mut out);
            assert_eq!(out, expected, "message of {message_len} bytes");
        }
        let mut out = Vec::new();
        encode_entry_field(1, &LogEntry::default(), &mut out);
        assert_eq!(out, [0x0a, 0x00]);
    }

    #[test]
    fn numbers_in_text_values() {
        for (text, expected) in [
            ("42", Some(42.0)),
            ("-1.5e3", Some(-1500.0)),
            (".5", Some(0.5)),
            ("+inf", Some(f64::INFINITY)),
            ("eu-central-1", None),
            ("4dcabfb7", None),
            ("", None),
            ("-", None),
            ("1.", Some(1.0)),
            ("1e", None),
            ("10.0.0.1", None),
            ("2024-05-01", None),
        ] {
            assert_eq!(FieldValue::str(text).as_f64(), expected, "{text}");
        }
        assert!(FieldValue::str("NaN").as_f64().is_some_and(f64::is_nan));
    }

    #[test]
    fn level_names_round_trip() {
        for level in Level::ALL {
            assert_eq!(Level::parse(level.as_str()), Some(level));
        }
        assert_eq!(Level::parse("Warning"), Some(Level::Warn));
        assert_eq!(Level::parse("bogus"), None);
    }

    #[test]
    fn entry_protobuf_round_trip_keeps_every_field() {
        let mut entry = LogEntry {
            id: "a".into(),
            timestamp: 1_714_572_000_123_000_000,
            received_at: 1_714_572_000_200_000_000,
            tenant: "acme".into(),
            service: "payment".into(),
            level: Level::Error as i32,
            message: "charge failed".into(),
            host: "pay-1".into(),
            trace_id: "abc".into(),
            fields: BTreeMap::new(),
        };
        entry
            .fields
            .insert("amount".into(), FieldValue::float(12.5));
        entry.fields.insert("status".into(), FieldValue::int(502));
        entry.fields.insert("ok".into(), FieldValue::bool(false));
        entry
            .fields
            .insert("provider".into(), FieldValue::str("stripe"));
        let bytes = entry.encode_to_vec();
        assert_eq!(LogEntry::decode(bytes.as_slice()).expect("decodes"), entry);
    }
}
