//! Decoders from every input format to [`LogEntry`]: the first step after framing.
//!
//! Owns the mapping of each wire [`Format`] to entries and the per-record error isolation: one
//! bad record is reported as a [`RecordError`] with its index and the others are still decoded;
//! only a payload whose container itself is unreadable (a protobuf `LogBatch` that does not
//! parse, an Avro container with a bad header, a JSON array that does not parse) fails as a
//! whole with a [`PayloadError`]. Nothing here does I/O, touches the clock beyond inferring the
//! year of an RFC 3164 timestamp, or panics on any input.
//!
//! Decoders never fill `id` or `received_at` (the pipeline does), leave `timestamp` at 0 when a
//! record has none, and leave `tenant` empty when a record names none (the pipeline then uses
//! the frame's or connection's tenant). A record that names no service gets
//! [`DecodeContext::default_service`].
//!
//! Indexes in [`RecordError`] are 0-based: the line number within the payload for NDJSON and
//! raw lines, the element position for JSON arrays and Avro containers, and the message or entry
//! ordinal for syslog and journald payloads.
//!
//! The lenient JSON mapping (shared by JSON, NDJSON, Avro and JSON lines of raw payloads) is
//! documented in [`json`]; it rejects only an empty object, and a record without any message key
//! gets an empty message (its other keys are still worth keeping).

mod framer;
mod journald;
pub mod json;
mod raw;
mod syslog;

use logcluster_proto::{Format, Level, LogBatch, LogEntry};
use prost::Message;
use std::borrow::Cow;

pub use framer::{FramingError, SyslogFramer};
pub use json::decode_json_value;
pub use json::{Record, ViewsOutput, decode_json_views};
pub(crate) use syslog::decode_syslog_into;
pub use syslog::decode_syslog_message;

/// Settings that apply to every record of a payload.
#[derive(Clone, Debug)]
pub struct DecodeContext {
    /// Service given to records that name none; `"unknown"` when this is empty.
    pub default_service: String,
    /// Keep each JSON record's parsed value beside its entry ([`Decoded::original`]), for
    /// schema validation; without, the mapping takes the value apart instead of copying.
    pub keep_original: bool,
    /// Most records (accepted or refused) a payload may hold; a payload with more is refused
    /// as a whole ([`PayloadError::TooManyRecords`]), and decoding stops as soon as it is
    /// known. Bytes alone do not bound a batch: a frame of two-byte lines is millions of
    /// entries, each far larger in memory and in the WAL than its line.
    pub max_records: usize,
}

impl Default for DecodeContext {
    fn default() -> Self {
        DecodeContext {
            default_service: "unknown".to_string(),
            keep_original: true,
            max_records: usize::MAX,
        }
    }
}

impl DecodeContext {
    fn fill_service(&self, entry: &mut LogEntry) {
        if entry.service.is_empty() {
            entry.service = if self.default_service.is_empty() {
                "unknown".to_string()
            } else {
                self.default_service.clone()
            };
        }
    }
}

/// One decoded record.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub entry: LogEntry,
    /// The record as the user sent it, as JSON (JSON, NDJSON and Avro inputs, and JSON lines of
    /// raw payloads); schema validation checks this rather than the mapped entry.
    pub original: Option<serde_json::Value>,
}

/// Why one record of a payload was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordError {
    /// Position of the record in the payload (see the module documentation).
    pub index: usize,
    pub reason: RejectReason,
    /// Human-readable detail, suitable for an ack's error text.
    pub message: String,
}

impl RecordError {
    pub(crate) fn new(index: usize, reason: RejectReason, message: impl Into<String>) -> Self {
        RecordError {
            index,
            reason,
            message: message.into(),
        }
    }
}

/// Classification of a rejected record, used as a metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    InvalidJson,
    NotAnObject,
    InvalidUtf8,
    InvalidSyslog,
    InvalidJournald,
    InvalidProtobuf,
    InvalidAvro,
    MissingMessage,
    BadTimestamp,
    BadLevel,
    TooLarge,
    /// A Loki stream's label set that does not parse.
    InvalidLabels,
    /// Refused by a registered schema (set by the pipeline, not by decoders).
    Schema,
    /// A payload of more records than `ingest.maxBatchRecords`.
    TooManyRecords,
    /// Records whose stream's part of the batch was too large for one write-ahead log record
    /// once decoded (set by the pipeline from the sink's answer, not by decoders).
    PartTooLarge,
    /// A timestamp further ahead of the node's clock than `ingest.maxTimestampAhead` (set
    /// by the pipeline, not by decoders).
    FutureTimestamp,
    /// Records of a new stream on a node that holds `storage.maxStreams` streams (set by the
    /// pipeline from the sink's answer).
    TooManyStreams,
}

impl RejectReason {
    /// Set by the pipeline to a record that decoded: such a record still took its position
    /// among the batch's decoded records (and its entry id's ordinal).
    pub fn after_decoding(self) -> bool {
        matches!(
            self,
            RejectReason::Schema
                | RejectReason::PartTooLarge
                | RejectReason::FutureTimestamp
                | RejectReason::TooManyStreams
        )
    }

    /// The snake_case metrics label.
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::InvalidSyslog => "invalid_syslog",
            RejectReason::InvalidJournald => "invalid_journald",
            RejectReason::InvalidProtobuf => "invalid_protobuf",
            RejectReason::InvalidAvro => "invalid_avro",
            RejectReason::MissingMessage => "missing_message",
            RejectReason::BadTimestamp => "bad_timestamp",
            RejectReason::BadLevel => "bad_level",
            RejectReason::TooLarge => "too_large",
            RejectReason::InvalidLabels => "invalid_labels",
            RejectReason::Schema => "schema",
            RejectReason::TooManyRecords => "too_many_records",
            RejectReason::PartTooLarge => "part_too_large",
            RejectReason::TooManyStreams => "too_many_streams",
            RejectReason::FutureTimestamp => "future_timestamp",
        }
    }
}

/// Text of bytes whose invalid UTF-8 sequences are U+FFFD, and whether there were any
/// ([`DecodeOutput::repaired`] counts those records).
pub(crate) fn lossy_utf8(bytes: &[u8]) -> (Cow<'_, str>, bool) {
    let text = String::from_utf8_lossy(bytes);
    let repaired = matches!(text, Cow::Owned(_));
    (text, repaired)
}

/// The records of a payload and the errors of the records that were rejected.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DecodeOutput {
    pub records: Vec<Decoded>,
    pub errors: Vec<RecordError>,
    /// Records stored with invalid UTF-8 replaced by U+FFFD: syslog messages, raw lines and
    /// journald values, whose senders (network devices, legacy applications writing Latin-1)
    /// have no way to hear a refusal and resend, unlike JSON's.
    pub repaired: usize,
}

impl DecodeOutput {
    /// Adds a record decoded from text that was not taken as-is when `repaired` (invalid
    /// UTF-8 replaced by U+FFFD), counted as such.
    pub fn push_text_record(&mut self, entry: LogEntry, repaired: bool) {
        self.repaired += usize::from(repaired);
        self.records.push(Decoded {
            entry,
            original: None,
        });
    }

    /// Records decoded so far, accepted or refused.
    pub fn len(&self) -> usize {
        self.records.len() + self.errors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether more records than `ctx` allows were decoded (a decoder stops there).
    pub(crate) fn over(&self, ctx: &DecodeContext) -> bool {
        self.len() > ctx.max_records
    }
}

/// The payload as a whole could not be decoded; no record of it was accepted.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("payload is not valid JSON")]
    InvalidJson(#[source] serde_json::Error),
    #[error("payload is not valid UTF-8")]
    InvalidUtf8,
    #[error("payload is not a valid protobuf LogBatch")]
    InvalidProtobuf(#[source] prost::DecodeError),
    #[error("payload is not a valid avro container")]
    InvalidAvro(#[source] logcluster_proto::avro::AvroError),
    #[error("payload holds more than {0} records (ingest.maxBatchRecords); send smaller batches")]
    TooManyRecords(usize),
}

impl PayloadError {
    /// The metrics classification of this failure.
    pub fn reason(&self) -> RejectReason {
        match self {
            PayloadError::InvalidJson(_) => RejectReason::InvalidJson,
            PayloadError::InvalidUtf8 => RejectReason::InvalidUtf8,
            PayloadError::InvalidProtobuf(_) => RejectReason::InvalidProtobuf,
            PayloadError::InvalidAvro(_) => RejectReason::InvalidAvro,
            PayloadError::TooManyRecords(_) => RejectReason::TooManyRecords,
        }
    }
}

/// Decodes a whole payload of `format`.
pub fn decode_payload(
    format: Format,
    payload: &[u8],
    ctx: &DecodeContext,
) -> Result<DecodeOutput, PayloadError> {
    let out = match format {
        Format::Json => json::decode_json_payload(payload, ctx)?,
        Format::Protobuf => decode_protobuf(payload, ctx)?,
        Format::Avro => decode_avro(payload, ctx)?,
        Format::Raw => raw::decode_raw(payload, ctx),
        Format::Syslog => syslog::decode_syslog_payload(payload, ctx),
        Format::Journald => journald::decode_journald(payload, ctx),
    };
    // Decoders stop one record past the limit.
    if out.over(ctx) {
        return Err(PayloadError::TooManyRecords(ctx.max_records));
    }
    Ok(out)
}

/// How many entries (field 1) a protobuf `LogBatch` holds, counted on the wire without
/// decoding them; `None` when the framing does not parse (the decoder then says why).
fn protobuf_entry_count(payload: &[u8]) -> Option<usize> {
    use logcluster_proto::wire::{RawField, walk_fields};
    let mut count = 0usize;
    walk_fields(payload, |tag, field| {
        count += usize::from(tag == 1 && matches!(field, RawField::Delimited(_)));
    })?;
    Some(count)
}

fn decode_protobuf(payload: &[u8], ctx: &DecodeContext) -> Result<DecodeOutput, PayloadError> {
    if protobuf_entry_count(payload).is_some_and(|count| count > ctx.max_records) {
        return Err(PayloadError::TooManyRecords(ctx.max_records));
    }
    let batch = LogBatch::decode(payload).map_err(PayloadError::InvalidProtobuf)?;
    let records = batch
        .entries
        .into_iter()
        .map(|mut entry| {
            entry.id.clear();
            entry.received_at = 0;
            entry.level = Level::from_i32_lossy(entry.level) as i32;
            ctx.fill_service(&mut entry);
            Decoded {
                entry,
                original: None,
            }
        })
        .collect();
    Ok(DecodeOutput {
        records,
        ..Default::default()
    })
}

/// [`decode_protobuf`] as views of the payload's entries (their strings borrowed, no
/// allocation per string and per field); `None` where a view cannot read the payload as
/// prost would (a malformed message, a group): [`decode_protobuf`] then decodes it, or says
/// why it cannot.
pub fn decode_protobuf_views<'a>(
    payload: &'a [u8],
    ctx: &'a DecodeContext,
) -> Option<Result<ViewsOutput<'a>, PayloadError>> {
    use logcluster_proto::wire::{RawField, walk_fields};
    if protobuf_entry_count(payload).is_some_and(|count| count > ctx.max_records) {
        return Some(Err(PayloadError::TooManyRecords(ctx.max_records)));
    }
    let mut records = Vec::new();
    let mut readable = true;
    walk_fields(payload, |tag, field| match (tag, field) {
        (1, RawField::Delimited(span)) if readable => {
            match logcluster_proto::EntryRef::decode(&payload[span]) {
                Some(mut view) => {
                    view.id = "";
                    view.received_at = 0;
                    view.level = Level::from_i32_lossy(view.level) as i32;
                    if view.service.is_empty() {
                        view.service = if ctx.default_service.is_empty() {
                            "unknown"
                        } else {
                            &ctx.default_service
                        };
                    }
                    records.push(Record::View(view));
                }
                None => readable = false,
            }
        }
        // A LogBatch has no other field: prost skips unknown ones, and refuses an entry
        // of another wire type.
        (1, _) => readable = false,
        _ => {}
    })?;
    readable.then_some(Ok(ViewsOutput {
        records,
        errors: Vec::new(),
    }))
}

fn decode_avro(payload: &[u8], ctx: &DecodeContext) -> Result<DecodeOutput, PayloadError> {
    use logcluster_proto::avro::{AvroError, decode_container_of_at_most};
    let values = decode_container_of_at_most(payload, ctx.max_records).map_err(|e| match e {
        AvroError::TooManyRecords { .. } => PayloadError::TooManyRecords(ctx.max_records),
        other => PayloadError::InvalidAvro(other),
    })?;
    let mut out = DecodeOutput {
        records: Vec::with_capacity(values.len()),
        ..Default::default()
    };
    for (index, value) in values.into_iter().enumerate() {
        match decode_json_value(value, ctx) {
            Ok(decoded) => out.records.push(decoded),
            Err(mut error) => {
                error.index = index;
                out.errors.push(error);
            }
        }
    }
    Ok(out)
}

/// Maps a syslog severity (0-7) to a level.
pub(crate) fn level_from_severity(severity: u8) -> Level {
    match severity {
        0..=2 => Level::Fatal,
        3 => Level::Error,
        4 => Level::Warn,
        5 | 6 => Level::Info,
        _ => Level::Debug,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use logcluster_proto::FieldValue;
    use proptest::prelude::*;

    fn ctx() -> DecodeContext {
        DecodeContext::default()
    }

    #[test]
    fn protobuf_batch_round_trips_and_unknown_levels_become_unspecified() {
        let mut fields = BTreeMap::new();
        fields.insert("status".to_string(), FieldValue::int(502));
        let good = LogEntry {
            id: "should-be-cleared".into(),
            timestamp: 1_714_572_000_123_000_000,
            received_at: 99,
            tenant: "acme".into(),
            service: "payment".into(),
            level: Level::Error as i32,
            message: "charge failed".into(),
            host: "pay-1".into(),
            trace_id: "abc".into(),
            fields,
        };
        let odd = LogEntry {
            level: 42,
            service: String::new(),
            message: "odd".into(),
            ..LogEntry::default()
        };
        let payload = LogBatch {
            entries: vec![good.clone(), odd],
        }
        .encode_to_vec();
        let out = decode_payload(Format::Protobuf, &payload, &ctx()).expect("decodes");
        assert!(out.errors.is_empty());
        let expected = LogEntry {
            id: String::new(),
            received_at: 0,
            ..good
        };
        assert_eq!(out.records[0].entry, expected);
        assert_eq!(out.records[0].original, None);
        assert_eq!(out.records[1].entry.level_enum(), Level::Unspecified);
        assert_eq!(out.records[1].entry.service, "unknown");
    }

    #[test]
    fn garbage_protobuf_is_a_payload_error() {
        let err = decode_payload(Format::Protobuf, &[0x0a, 0xff, 0xff, 0xff], &ctx())
            .expect_err("truncated length");
        assert_eq!(err.reason(), RejectReason::InvalidProtobuf);
        assert_eq!(err.reason().label(), "invalid_protobuf");
    }

    #[test]
    fn avro_container_of_canonical_entries_round_trips() {
        let mut fields = BTreeMap::new();
        fields.insert("duration_ms".to_string(), FieldValue::int(42));
        fields.insert("provider".to_string(), FieldValue::str("stripe"));
        let entry = LogEntry {
            id: String::new(),
            timestamp: 1_714_521_600_070_000_000,
            received_at: 0,
            tenant: "acme".into(),
            service: "payment".into(),
            level: Level::Warn as i32,
            message: "slow charge".into(),
            host: "payment-5f3a2c-9d1e0".into(),
            trace_id: "c662dcc5f36fb152848867f1486c89df".into(),
            fields,
        };
        let bytes = logcluster_proto::avro::encode_container(&[entry.clone(), entry.clone()])
            .expect("encodes");
        let out = decode_payload(Format::Avro, &bytes, &ctx()).expect("decodes");
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(out.records.len(), 2);
        assert_eq!(out.records[1].entry, entry);
        assert_eq!(
            out.records[1]
                .original
                .as_ref()
                .map(|v| v["service"].clone()),
            Some(serde_json::json!("payment"))
        );
    }

    /// A payload of `n` records of `format`, one of them refused where the format can say so
    /// record by record (the limit counts refused records too).
    fn payload_of(format: Format, n: usize) -> Vec<u8> {
        let entries = || {
            (0..n).map(|k| LogEntry {
                message: format!("m{k}"),
                ..LogEntry::default()
            })
        };
        // Line formats: record 1 is the bad line, the others `good(k)`.
        let lines = |bad: &[u8], good: &dyn Fn(usize) -> String| -> Vec<u8> {
            let mut out = Vec::new();
            for k in 0..n {
                match k {
                    1 => out.extend_from_slice(bad),
                    _ => out.extend_from_slice(good(k).as_bytes()),
                }
            }
            out
        };
        match format {
            Format::Json => lines(b"{broken\n", &|k| format!("{{\"message\":\"m{k}\"}}\n")),
            Format::Raw => lines(b"<999>bad syslog\n", &|k| format!("line {k}\n")),
            Format::Syslog => lines(b"<999>out of range\n", &|k| format!("<13>m{k}\n")),
            Format::Journald => (0..n)
                .map(|k| format!("MESSAGE=m{k}\n\n"))
                .collect::<String>()
                .into_bytes(),
            Format::Protobuf => LogBatch {
                entries: entries().collect(),
            }
            .encode_to_vec(),
            Format::Avro => {
                logcluster_proto::avro::encode_container(&entries().collect::<Vec<_>>())
                    .expect("encodes")
            }
        }
    }

    #[test]
    fn a_payload_of_more_records_than_allowed_is_refused_whole() {
        let formats = [
            Format::Json,
            Format::Raw,
            Format::Syslog,
            Format::Journald,
            Format::Protobuf,
            Format::Avro,
        ];
        for format in formats {
            let payload = payload_of(format, 5);
            let at = |max_records| DecodeContext {
                max_records,
                ..ctx()
            };
            let out = decode_payload(format, &payload, &at(5)).expect("at the limit");
            assert_eq!(out.len(), 5, "{format:?}: {out:?}");
            if matches!(format, Format::Json | Format::Raw | Format::Syslog) {
                assert_eq!(out.errors.len(), 1, "{format:?}: {out:?}");
            }
            let error = decode_payload(format, &payload, &at(4)).expect_err("over the limit");
            assert_eq!(error.reason(), RejectReason::TooManyRecords, "{format:?}");
            assert!(error.to_string().contains("more than 4 records"), "{error}");
        }
        // A JSON array counts its elements.
        let array = b"[{\"message\":\"a\"},{\"message\":\"b\"},{\"message\":\"c\"}]";
        let at_two = DecodeContext {
            max_records: 2,
            ..ctx()
        };
        let error = decode_payload(Format::Json, array, &at_two).expect_err("3 > 2");
        assert_eq!(error.reason(), RejectReason::TooManyRecords);
        // So do pretty-printed documents one after another.
        let pretty = b"{\n\"message\": \"a\"\n}\n{\n\"message\": \"b\"\n}\n{\"message\": \"c\"}";
        let out = decode_payload(Format::Json, pretty, &ctx()).expect("three documents");
        assert_eq!(out.records.len(), 3);
        let error = decode_payload(Format::Json, pretty, &at_two).expect_err("3 > 2");
        assert_eq!(error.reason(), RejectReason::TooManyRecords);
    }

    #[test]
    fn protobuf_entries_are_counted_on_the_wire() {
        let payload = payload_of(Format::Protobuf, 7);
        assert_eq!(protobuf_entry_count(&payload), Some(7));
        assert_eq!(protobuf_entry_count(&[]), Some(0));
        // A length past the end: not counted; the decoder reports the error.
        assert_eq!(protobuf_entry_count(&[0x0a, 0x05, 0x01]), None);
    }

    #[test]
    fn avro_with_a_bad_header_is_a_payload_error() {
        let err = decode_payload(Format::Avro, b"Obj\x01\x02", &ctx()).expect_err("bad");
        assert_eq!(err.reason(), RejectReason::InvalidAvro);
    }

    #[test]
    fn every_reason_has_a_distinct_snake_case_label() {
        let all = [
            RejectReason::InvalidJson,
            RejectReason::NotAnObject,
            RejectReason::InvalidUtf8,
            RejectReason::InvalidSyslog,
            RejectReason::InvalidJournald,
            RejectReason::InvalidProtobuf,
            RejectReason::InvalidAvro,
            RejectReason::MissingMessage,
            RejectReason::BadTimestamp,
            RejectReason::BadLevel,
            RejectReason::TooLarge,
            RejectReason::InvalidLabels,
            RejectReason::Schema,
            RejectReason::TooManyRecords,
            RejectReason::PartTooLarge,
            RejectReason::FutureTimestamp,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), all.len());
        assert!(labels.iter().all(|l| {
            l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        }));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_in_any_format(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            for format in Format::ALL {
                let _ = decode_payload(format, &bytes, &ctx());
            }
            let mut framer = SyslogFramer::new(64);
            framer.push(&bytes);
            while framer.next_message().is_some() {}
            let _ = framer.finish();
        }

        /// Views of a Protobuf batch are the entries prost decodes, ids, receive times,
        /// levels and default services treated alike; damaged batches are left to prost.
        #[test]
        fn protobuf_views_are_the_entries_prost_decodes(
            entries in proptest::collection::vec(
                (
                    ".{0,6}", any::<i64>(), any::<i64>(), "[a-z]{0,4}", "[a-z]{0,4}", -2i32..9,
                    (".{0,20}", ".{0,8}", "[0-9a-f]{0,32}"),
                    proptest::collection::btree_map(".{0,4}", prop_oneof![
                        ".{0,6}".prop_map(FieldValue::str),
                        any::<i64>().prop_map(FieldValue::int),
                        any::<bool>().prop_map(FieldValue::bool),
                    ], 0..4),
                ),
                0..6,
            ),
            damage in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
            extra in proptest::collection::vec(any::<u8>(), 0..3),
        ) {
            let batch = LogBatch {
                entries: entries
                    .into_iter()
                    .map(|(id, timestamp, received_at, tenant, service, level, (message, host, trace_id), fields)| {
                        LogEntry { id, timestamp, received_at, tenant, service, level, message, host, trace_id, fields }
                    })
                    .collect(),
            };
            let mut bytes = batch.encode_to_vec();
            if let Some((at, byte)) = damage && !bytes.is_empty() {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            bytes.extend_from_slice(&extra);
            let ctx = DecodeContext { default_service: "fallback".into(), ..ctx() };
            if let Some(views) = decode_protobuf_views(&bytes, &ctx) {
                let views = views.expect("within the limit");
                let owned = decode_protobuf(&bytes, &ctx);
                prop_assert!(owned.is_ok(), "prost refuses what the views read");
                let owned = owned.expect("decodes");
                prop_assert_eq!(views.records.len(), owned.records.len());
                for (view, decoded) in views.records.iter().zip(&owned.records) {
                    let Record::View(view) = view else { panic!("only views") };
                    prop_assert_eq!(view, &logcluster_proto::EntryRef::of(&decoded.entry));
                }
            }
        }

        #[test]
        fn arbitrary_text_never_panics_in_any_format(text in "(\\PC|\n|\r|\0){0,300}") {
            for format in Format::ALL {
                let _ = decode_payload(format, text.as_bytes(), &ctx());
            }
        }

        #[test]
        fn syslog_shaped_noise_never_panics(
            pri in 0u16..400,
            rest in "[ -~]{0,120}",
            version in prop_oneof![Just(""), Just("1 "), Just("12 ")],
        ) {
            let line = format!("<{pri}>{version}{rest}");
            let _ = decode_syslog_message(line.as_bytes(), &ctx());
            let _ = decode_payload(Format::Raw, line.as_bytes(), &ctx());
        }
    }
}
