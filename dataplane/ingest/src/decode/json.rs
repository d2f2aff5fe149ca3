//! JSON payloads (one object, an array of objects, or NDJSON) and the lenient mapping of a JSON
//! object to a [`LogEntry`], shared by the JSON, Avro, raw, HTTP and UDP paths.
//!
//! Mapping of an object's keys (the first key present in each list wins; a later one of the
//! same list is kept in `fields` under its own name):
//! - timestamp: `timestamp`, `@timestamp`, `ts`, `time` — an RFC 3339 string, an epoch number
//!   (seconds, milliseconds, microseconds or nanoseconds, told apart by magnitude) or a numeric
//!   string; anything else is a `bad_timestamp` rejection.
//! - level: `level`, `severity`, `lvl`, `log.level` — a level name, a syslog severity 0-7, or a
//!   pino/bunyan number (10 trace … 60 fatal); an unknown value gives level `UNSPECIFIED` and
//!   keeps the text in `fields["level_raw"]` (never a rejection).
//! - message: `message`, `msg`, `log`, `MESSAGE`; a missing message is an empty message.
//! - service: `service`, `service.name`, `app`, `application`, `SYSLOG_IDENTIFIER`.
//! - host: `host`, `hostname`, `host.name`, `_HOSTNAME`.
//! - trace id: `trace_id`, `traceId`, `trace.id`. Tenant: `tenant`, `tenant_id`.
//!
//! Dotted names match both a literal dotted key and a nested object (`{"service":{"name":…}}`,
//! as ECS sends it): all other keys are flattened into `fields` with dotted keys first, and the
//! dotted aliases are then taken out of `fields`. A `fields` object is merged into `fields`.
//! Null values count as absent. An object that has both `id` and `received_at` is taken to be
//! the canonical form of `logcluster_proto::json::to_json`, whose `id` and `received_at` are
//! dropped (the pipeline assigns them); elsewhere those keys are ordinary fields.
//!
//! Only an empty object is rejected (`missing_message`): any other object carries something
//! worth storing even without a message.

use std::borrow::Cow;
use std::collections::BTreeMap;

use logcluster_proto::json::flatten_owned;
use logcluster_proto::time::{
    nanos_from_epoch_decimal, nanos_from_epoch_int, nanos_from_epoch_number, parse_rfc3339,
};
use logcluster_proto::{EntryRef, FieldRef, FieldValue, Level, LogEntry, field_value::Kind};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::{
    DecodeContext, DecodeOutput, Decoded, PayloadError, RecordError, RejectReason,
    level_from_severity,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Timestamp = 0,
    Level = 1,
    Message = 2,
    Service = 3,
    Host = 4,
    Trace = 5,
    Tenant = 6,
}
const SLOTS: usize = 7;
const RANKS: usize = 5;

/// Direct (top-level key) aliases: slot and rank within the slot's list.
fn classify(key: &str) -> Option<(Slot, usize)> {
    Some(match key {
        "timestamp" => (Slot::Timestamp, 0),
        "@timestamp" => (Slot::Timestamp, 1),
        "ts" => (Slot::Timestamp, 2),
        "time" => (Slot::Timestamp, 3),
        "level" => (Slot::Level, 0),
        "severity" => (Slot::Level, 1),
        "lvl" => (Slot::Level, 2),
        "message" => (Slot::Message, 0),
        "msg" => (Slot::Message, 1),
        "log" => (Slot::Message, 2),
        "MESSAGE" => (Slot::Message, 3),
        "service" => (Slot::Service, 0),
        "app" => (Slot::Service, 2),
        "application" => (Slot::Service, 3),
        "SYSLOG_IDENTIFIER" => (Slot::Service, 4),
        "host" => (Slot::Host, 0),
        "hostname" => (Slot::Host, 1),
        "_HOSTNAME" => (Slot::Host, 3),
        "trace_id" => (Slot::Trace, 0),
        "traceId" => (Slot::Trace, 1),
        "tenant" => (Slot::Tenant, 0),
        "tenant_id" => (Slot::Tenant, 1),
        _ => return None,
    })
}

/// Dotted aliases, looked up in the flattened fields: slot, rank, key.
const DOTTED: [(Slot, usize, &str); 4] = [
    (Slot::Level, 3, "log.level"),
    (Slot::Service, 1, "service.name"),
    (Slot::Host, 2, "host.name"),
    (Slot::Trace, 2, "trace.id"),
];

/// The dotted alias of a slot's `rank`, if that rank is one.
fn dotted_alias(slot: usize, rank: usize) -> Option<&'static str> {
    DOTTED
        .iter()
        .find(|(s, r, _)| *s as usize == slot && *r == rank)
        .map(|(_, _, key)| *key)
}

/// Whether a value can fill a slot (otherwise it is kept as an ordinary field).
fn usable(slot: Slot, value: &Value) -> bool {
    match value {
        Value::String(_) | Value::Number(_) => true,
        Value::Bool(_) => slot == Slot::Message,
        _ => false,
    }
}

/// A value chosen for a slot.
enum Pick {
    Json(Value),
    Field(FieldValue),
}

impl Pick {
    fn text(self) -> String {
        match self {
            Pick::Json(Value::String(s)) => s,
            Pick::Json(other) => other.to_string(),
            Pick::Field(f) => f.to_text(),
        }
    }
}

/// Decodes one JSON value with the lenient mapping. The error's index is 0; callers that know
/// the record's position set it. The value itself is kept only when
/// [`DecodeContext::keep_original`] asks for it (schema validation).
pub fn decode_json_value(value: Value, ctx: &DecodeContext) -> Result<Decoded, RecordError> {
    let original = ctx.keep_original.then(|| value.clone());
    let Value::Object(map) = value else {
        return Err(not_an_object(kind_name(&value)));
    };
    // A map's members come in key order, one per key.
    let members = map.into_iter().map(|(k, v)| (Cow::Owned(k), v)).collect();
    let entry = map_members(members, ctx)?;
    Ok(Decoded { entry, original })
}

fn not_an_object(kind: &str) -> RecordError {
    RecordError::new(
        0,
        RejectReason::NotAnObject,
        format!("record is a JSON {kind}, not an object"),
    )
}

/// A JSON record as the NDJSON path parses it, without building a map: an object's members,
/// one per key with the last of equal keys kept (as `serde_json::Map` keeps them), keys
/// borrowed from the input where they have no escapes; or the kind of anything else.
enum Parsed<'de> {
    Object(Vec<(Cow<'de, str>, Value)>),
    Other(&'static str),
}

/// `members` with one member per key, the last of equal keys kept (as `serde_json::Map`
/// keeps it), in key order; or in input order when that maps to the same entry. That is
/// when the keys all differ and no value is an object: a nested object is flattened into
/// dotted keys, which may meet another member's key (`{"a.b":1,"a":{"b":2}}`), and then
/// the order decides which value stays. Flat records with distinct keys (nearly all) are
/// not sorted: their keys are compared by a cheap digest, and a repeated digest sorts.
fn one_per_key<K: std::ops::Deref<Target = str> + Ord, V: MemberValue>(members: &mut Vec<(K, V)>) {
    const SMALL: usize = 32;
    if members.len() <= SMALL {
        let mut digests = [0u64; SMALL];
        // One bit per digest's low six bits: a digest whose bit is clear is new, without
        // looking through the others.
        let mut seen = 0u64;
        let mut must_sort = false;
        for (i, (key, value)) in members.iter().enumerate() {
            let digest = key_digest(key.as_bytes());
            let bit = 1u64 << (digest % 64);
            must_sort |= value.is_object() || (seen & bit != 0 && digests[..i].contains(&digest));
            seen |= bit;
            digests[i] = digest;
        }
        if !must_sort {
            return;
        }
    }
    // Stable: equal keys stay in input order, and the last of them is kept.
    members.sort_by(|a, b| a.0.cmp(&b.0));
    members.dedup_by(|later, earlier| {
        let equal = *later.0 == *earlier.0;
        if equal {
            std::mem::swap(later, earlier);
        }
        equal
    });
}

/// A digest of a key from its length and its first and last eight bytes: equal keys have
/// equal digests, and different keys seldom do.
fn key_digest(key: &[u8]) -> u64 {
    // Whole words where there are eight bytes; a shorter key is its own head and tail,
    // zero-padded (read byte by byte: a copy of a variable length would call memcpy).
    let (head, tail) = if key.len() >= 8 {
        let word = |bytes: &[u8]| {
            let mut word = [0u8; 8];
            word.copy_from_slice(bytes);
            u64::from_le_bytes(word)
        };
        (word(&key[..8]), word(&key[key.len() - 8..]))
    } else {
        let word = key
            .iter()
            .enumerate()
            .fold(0u64, |word, (i, &b)| word | u64::from(b) << (8 * i));
        (word, word)
    };
    // Only compared for equality: no mixing needed.
    head ^ tail.rotate_left(29) ^ key.len() as u64
}

/// A value of a flat record, borrowed from its line.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Flat<'a> {
    Str(&'a str),
    Number(serde_json::Number),
    Bool(bool),
    Null,
}

impl Flat<'_> {
    fn to_value(&self) -> Value {
        match self {
            Flat::Str(s) => Value::String((*s).to_string()),
            Flat::Number(n) => Value::Number(n.clone()),
            Flat::Bool(b) => Value::Bool(*b),
            Flat::Null => Value::Null,
        }
    }
}

/// Whether a member's value is an object (and so is flattened, see [`one_per_key`]).
trait MemberValue {
    fn is_object(&self) -> bool;
}

impl MemberValue for Value {
    fn is_object(&self) -> bool {
        Value::is_object(self)
    }
}

impl MemberValue for Flat<'_> {
    fn is_object(&self) -> bool {
        false
    }
}

/// The fast path of an NDJSON line: one object whose values are strings without escapes,
/// numbers, booleans or nulls, parsed in one pass without serde's machinery, its members
/// borrowed from the line (one per key, as [`one_per_key`] gives them). `None` for anything
/// else (nesting, escapes, control characters, malformed text): [`Parsed`] then parses the
/// line, with serde's errors. Where it answers, it answers what [`Parsed`] gives (numbers
/// are read by serde_json itself, so they come out bit for bit the same; a property test
/// checks the rest).
fn flat_members<'a>(line: &'a str, members: &mut Vec<(&'a str, Flat<'a>)>) -> Option<()> {
    let bytes = line.as_bytes();
    let skip_ws = |mut at: usize| {
        while at < bytes.len() && matches!(bytes[at], b' ' | b'\t' | b'\n' | b'\r') {
            at += 1;
        }
        at
    };
    // The text of the string starting at `at` (a quote), and the index after its end.
    // serde refuses control characters in strings; an escape ends the fast path.
    let string = |at: usize| -> Option<(&str, usize)> {
        let start = at + 1;
        let len = first_string_stop(bytes.get(start..)?)?;
        (bytes[start + len] == b'"').then(|| (&line[start..start + len], start + len + 1))
    };
    let mut at = skip_ws(0);
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_ws(at + 1);
    members.clear();
    if bytes.get(at) == Some(&b'}') {
        at += 1;
    } else {
        loop {
            if bytes.get(at) != Some(&b'"') {
                return None;
            }
            let (key, next) = string(at)?;
            at = skip_ws(next);
            if bytes.get(at) != Some(&b':') {
                return None;
            }
            at = skip_ws(at + 1);
            let value = match *bytes.get(at)? {
                b'"' => {
                    let (text, next) = string(at)?;
                    at = next;
                    Flat::Str(text)
                }
                b'-' | b'0'..=b'9' => {
                    let start = at;
                    while at < bytes.len()
                        && matches!(bytes[at], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                    {
                        at += 1;
                    }
                    Flat::Number(number(&line[start..at])?)
                }
                b't' if bytes[at..].starts_with(b"true") => {
                    at += 4;
                    Flat::Bool(true)
                }
                b'f' if bytes[at..].starts_with(b"false") => {
                    at += 5;
                    Flat::Bool(false)
                }
                b'n' if bytes[at..].starts_with(b"null") => {
                    at += 4;
                    Flat::Null
                }
                _ => return None,
            };
            members.push((key, value));
            at = skip_ws(at);
            match bytes.get(at) {
                Some(b',') => at = skip_ws(at + 1),
                Some(b'}') => {
                    at += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (skip_ws(at) == bytes.len()).then(|| one_per_key(members))
}

/// A JSON number's text as serde_json reads it: plain integers (most numbers in logs) at
/// once, anything else by serde_json itself. `None` where serde_json refuses the text.
fn number(text: &str) -> Option<serde_json::Number> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    // Up to 18 digits always fit an i64; a leading zero (or "-0") is left to serde_json.
    if (1..=18).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (!digits.starts_with('0') || text == "0")
    {
        let mut value = 0i64;
        for b in digits.bytes() {
            value = value * 10 + i64::from(b - b'0');
        }
        return Some(if digits.len() == text.len() {
            serde_json::Number::from(value)
        } else {
            serde_json::Number::from(-value)
        });
    }
    serde_json::from_str(text).ok()
}

/// Where the first [`STRING_STOP`] byte of `bytes` is. Eight bytes at a time: in each word,
/// a byte below 0x20, a quote and a backslash each set their byte's high bit in a mask
/// (borrows may set bits above a byte that matched, never below one, so the lowest bit set
/// is the first stop).
fn first_string_stop(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    let zero_byte = |word: u64| word.wrapping_sub(ONES) & !word;
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let stops = (word.wrapping_sub(ONES * 0x20) & !word
            | zero_byte(word ^ (ONES * u64::from(b'"')))
            | zero_byte(word ^ (ONES * u64::from(b'\\'))))
            & HIGH;
        if stops != 0 {
            return Some(at + (stops.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = bytes[at..]
        .iter()
        .position(|&b| STRING_STOP[usize::from(b)])?;
    Some(at + tail)
}

/// Bytes that end a string's fast reading: its closing quote, an escape, or a control
/// character serde refuses.
const STRING_STOP: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = byte < 0x20 || byte == b'"' as usize || byte == b'\\' as usize;
        byte += 1;
    }
    table
};

/// [`flat_members`] as [`Parsed`] gives them.
fn flat_object(line: &str) -> Option<Parsed<'_>> {
    let mut members = Vec::with_capacity(16);
    flat_members(line, &mut members)?;
    Some(Parsed::Object(
        members
            .into_iter()
            .map(|(key, value)| (Cow::Borrowed(key), value.to_value()))
            .collect(),
    ))
}

/// An object key, borrowed where the input allows.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Parsed<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ParsedVisitor;
        impl<'de> Visitor<'de> for ParsedVisitor {
            type Value = Parsed<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed<'de>, A::Error> {
                let mut members: Vec<(Cow<'de, str>, Value)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(Key(key)) = map.next_key()? {
                    members.push((key, map.next_value()?));
                }
                one_per_key(&mut members);
                Ok(Parsed::Object(members))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parsed<'de>, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(Parsed::Other("array"))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Parsed<'de>, E> {
                Ok(Parsed::Other("boolean"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Parsed<'de>, E> {
                Ok(Parsed::Other("number"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Parsed<'de>, E> {
                Ok(Parsed::Other("number"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Parsed<'de>, E> {
                Ok(Parsed::Other("number"))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Parsed<'de>, E> {
                Ok(Parsed::Other("string"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Parsed<'de>, E> {
                Ok(Parsed::Other("null"))
            }
        }
        deserializer.deserialize_any(ParsedVisitor)
    }
}

/// [`decode_json_value`] of a record parsed as [`Parsed`].
fn decode_parsed(parsed: Parsed<'_>, ctx: &DecodeContext) -> Result<Decoded, RecordError> {
    match parsed {
        Parsed::Other(kind) => Err(not_an_object(kind)),
        Parsed::Object(members) => {
            let original = ctx.keep_original.then(|| {
                Value::Object(
                    members
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.clone()))
                        .collect(),
                )
            });
            let entry = map_members(members, ctx)?;
            Ok(Decoded { entry, original })
        }
    }
}

fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// An object member: key and value.
type Member<'a> = (Cow<'a, str>, Value);

/// Maps an object's members (one per key, as [`one_per_key`] orders them) to an entry.
fn map_members(members: Vec<Member<'_>>, ctx: &DecodeContext) -> Result<LogEntry, RecordError> {
    if members.is_empty() {
        return Err(RecordError::new(
            0,
            RejectReason::MissingMessage,
            "record is an empty object",
        ));
    }
    let has = |key: &str| members.iter().any(|(k, _)| k == key);
    let canonical = has("id") && has("received_at");
    let mut picks: [[Option<Member<'_>>; RANKS]; SLOTS] = Default::default();
    let mut fields = BTreeMap::new();
    let mut extra_fields: Option<Map<String, Value>> = None;
    for (key, value) in members {
        if value.is_null() {
            continue;
        }
        if key == "fields"
            && let Value::Object(inner) = value
        {
            extra_fields = Some(inner);
            continue;
        }
        if canonical && (key == "id" || key == "received_at") {
            continue;
        }
        match classify(&key) {
            Some((slot, rank)) if usable(slot, &value) => {
                picks[slot as usize][rank] = Some((key, value));
            }
            _ => flatten_owned(key.into_owned(), value, &mut fields),
        }
    }
    if let Some(inner) = extra_fields {
        for (key, value) in inner {
            if !fields.contains_key(&key) {
                flatten_owned(key, value, &mut fields);
            }
        }
    }

    let mut chosen: [Option<Pick>; SLOTS] = Default::default();
    // Walked in place: the picks are large, and moving the whole table per record showed.
    for (slot, (slot_picks, slot_choice)) in picks.iter_mut().zip(chosen.iter_mut()).enumerate() {
        for (rank, pick) in slot_picks.iter_mut().enumerate() {
            if let Some((key, value)) = pick.take() {
                if slot_choice.is_none() {
                    *slot_choice = Some(Pick::Json(value));
                } else {
                    flatten_owned(key.into_owned(), value, &mut fields);
                }
                continue;
            }
            if slot_choice.is_some() {
                continue;
            }
            if let Some(key) = dotted_alias(slot, rank)
                && let Some(value) = fields.get(key)
                && matches!(
                    value.kind,
                    Some(Kind::Str(_) | Kind::Int(_) | Kind::Float(_))
                )
                && let Some(value) = fields.remove(key)
            {
                *slot_choice = Some(Pick::Field(value));
            }
        }
    }
    let [timestamp, level, message, service, host, trace, tenant] = chosen;

    let timestamp = match timestamp {
        None => 0,
        Some(pick) => parse_timestamp(&pick)?,
    };
    let level = match level {
        None => Level::Unspecified,
        Some(pick) => match parse_level(&pick) {
            Some(level) => level,
            None => {
                fields.insert("level_raw".to_string(), FieldValue::str(pick.text()));
                Level::Unspecified
            }
        },
    };
    let text = |pick: Option<Pick>| pick.map(Pick::text).unwrap_or_default();
    let mut entry = LogEntry {
        id: String::new(),
        timestamp,
        received_at: 0,
        tenant: text(tenant),
        service: text(service),
        level: level as i32,
        message: text(message),
        host: text(host),
        trace_id: text(trace),
        fields,
    };
    ctx.fill_service(&mut entry);
    Ok(entry)
}

/// [`map_members`] of a flat record's borrowed members, giving a view whose strings borrow
/// from the record (or from `ctx`); `None` where the entry would need text the record does
/// not hold as it is (a number or a boolean as a message, host or other text, a numeric
/// level kept as `level_raw`): such a record takes [`map_members`]. Where it answers, it
/// answers what [`map_members`] does (a property test checks it).
fn map_flat<'a>(
    members: &[(&'a str, Flat<'a>)],
    ctx: &'a DecodeContext,
) -> Option<Result<EntryRef<'a>, RecordError>> {
    if members.is_empty() {
        return Some(Err(RecordError::new(
            0,
            RejectReason::MissingMessage,
            "record is an empty object",
        )));
    }
    let has = |key: &str| members.iter().any(|(k, _)| *k == key);
    let canonical = has("id") && has("received_at");
    // Each slot's members by rank, as indices of `members` (`NO_PICK`: none).
    const NO_PICK: usize = usize::MAX;
    let mut picks = [[NO_PICK; RANKS]; SLOTS];
    let mut fields: Vec<(&'a str, FieldRef<'a>)> = Vec::with_capacity(members.len());
    for (at, (key, value)) in members.iter().enumerate() {
        if *value == Flat::Null {
            continue;
        }
        if canonical && (*key == "id" || *key == "received_at") {
            continue;
        }
        match classify(key) {
            Some((slot, rank)) if !matches!(value, Flat::Bool(_)) || slot == Slot::Message => {
                picks[slot as usize][rank] = at;
            }
            _ => fields.push((key, flat_field(value))),
        }
    }
    let field_at =
        |fields: &[(&str, FieldRef<'_>)], key: &str| fields.iter().position(|(k, _)| *k == key);
    let mut chosen: [Option<FlatPick<'a>>; SLOTS] = Default::default();
    for (slot, (slot_picks, slot_choice)) in picks.iter().zip(chosen.iter_mut()).enumerate() {
        for (rank, &pick) in slot_picks.iter().enumerate() {
            if pick != NO_PICK {
                let (key, value) = &members[pick];
                if slot_choice.is_none() {
                    *slot_choice = Some(FlatPick::Json(value.clone()));
                } else {
                    fields.push((key, flat_field(value)));
                }
                continue;
            }
            if slot_choice.is_some() {
                continue;
            }
            if let Some(key) = dotted_alias(slot, rank)
                && let Some(at) = field_at(&fields, key)
                && matches!(
                    fields[at].1,
                    FieldRef::Str(_) | FieldRef::Int(_) | FieldRef::Float(_)
                )
            {
                let FieldRef::Str(text) = fields[at].1 else {
                    return None;
                };
                fields.swap_remove(at);
                *slot_choice = Some(FlatPick::Text(text));
            }
        }
    }
    let [timestamp, level, message, service, host, trace, tenant] = chosen;
    let timestamp = match timestamp {
        None => 0,
        Some(FlatPick::Json(Flat::Number(n))) => match timestamp_from_number(&n) {
            Ok(nanos) => nanos,
            Err(error) => return Some(Err(error)),
        },
        Some(FlatPick::Json(Flat::Str(text)) | FlatPick::Text(text)) => {
            match timestamp_from_str(text) {
                Ok(nanos) => nanos,
                Err(error) => return Some(Err(error)),
            }
        }
        Some(FlatPick::Json(_)) => return None,
    };
    let level = match level {
        None => Level::Unspecified,
        Some(FlatPick::Json(Flat::Number(n))) => n.as_i64().and_then(level_from_number)?,
        Some(FlatPick::Json(Flat::Str(text)) | FlatPick::Text(text)) => {
            match level_from_text(text) {
                Some(level) => level,
                None => {
                    match field_at(&fields, "level_raw") {
                        Some(at) => fields[at].1 = FieldRef::Str(text),
                        None => fields.push(("level_raw", FieldRef::Str(text))),
                    }
                    Level::Unspecified
                }
            }
        }
        Some(FlatPick::Json(_)) => return None,
    };
    let text = |pick: Option<FlatPick<'a>>| match pick {
        None => Some(""),
        Some(FlatPick::Json(Flat::Str(text)) | FlatPick::Text(text)) => Some(text),
        Some(FlatPick::Json(_)) => None,
    };
    fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut service = text(service)?;
    if service.is_empty() {
        service = if ctx.default_service.is_empty() {
            "unknown"
        } else {
            &ctx.default_service
        };
    }
    Some(Ok(EntryRef {
        id: "",
        timestamp,
        received_at: 0,
        tenant: text(tenant)?,
        service,
        level: level as i32,
        message: text(message)?,
        host: text(host)?,
        trace_id: text(trace)?,
        fields,
    }))
}

/// A value chosen for a slot of a flat record: a member's, or a dotted field's text.
enum FlatPick<'a> {
    Json(Flat<'a>),
    Text(&'a str),
}

/// [`field_from_json`](logcluster_proto::json::field_from_json) of a flat value.
fn flat_field<'a>(value: &Flat<'a>) -> FieldRef<'a> {
    match value {
        Flat::Str(s) => FieldRef::Str(s),
        Flat::Bool(b) => FieldRef::Bool(*b),
        Flat::Number(n) => match n.as_i64() {
            Some(i) => FieldRef::Int(i),
            None => FieldRef::Float(n.as_f64().unwrap_or(0.0)),
        },
        // Not met: a record's nulls count as absent and are left out before.
        Flat::Null => FieldRef::Json("null"),
    }
}

fn bad_timestamp(text: impl std::fmt::Display) -> RecordError {
    RecordError::new(
        0,
        RejectReason::BadTimestamp,
        format!(
            "timestamp {text} is neither RFC 3339 nor an epoch number, or is outside the years 1678-2262 that nanoseconds since 1970 can hold"
        ),
    )
}

fn parse_timestamp(pick: &Pick) -> Result<i64, RecordError> {
    match pick {
        Pick::Json(Value::String(s)) => timestamp_from_str(s),
        Pick::Json(Value::Number(n)) => timestamp_from_number(n),
        Pick::Json(other) => Err(bad_timestamp(other)),
        Pick::Field(f) => timestamp_from_str(&f.to_text()),
    }
}

/// An epoch number (seconds, milliseconds, microseconds or nanoseconds).
fn timestamp_from_number(n: &serde_json::Number) -> Result<i64, RecordError> {
    let nanos = match n.as_i64() {
        Some(i) => nanos_from_epoch_int(i),
        None if n.is_u64() => None,
        None => n.as_f64().and_then(nanos_from_epoch_number),
    };
    nanos.ok_or_else(|| bad_timestamp(n))
}

/// An RFC 3339 string or a numeric string holding an epoch number; empty means none.
pub(crate) fn timestamp_from_str(text: &str) -> Result<i64, RecordError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(0);
    }
    if let Some(nanos) = parse_rfc3339(trimmed) {
        return Ok(nanos);
    }
    let nanos = if let Ok(i) = trimmed.parse::<i64>() {
        nanos_from_epoch_int(i)
    } else if let Some(nanos) = nanos_from_epoch_decimal(trimmed) {
        Some(nanos)
    } else if let Ok(f) = trimmed.parse::<f64>() {
        nanos_from_epoch_number(f)
    } else {
        None
    };
    nanos.ok_or_else(|| bad_timestamp(format_args!("{trimmed:?}")))
}

/// A level from a number: syslog severities 0-7 and pino/bunyan levels 10-60.
fn level_from_number(n: i64) -> Option<Level> {
    Some(match n {
        0..=7 => level_from_severity(n as u8),
        10 => Level::Trace,
        20 => Level::Debug,
        30 => Level::Info,
        40 => Level::Warn,
        50 => Level::Error,
        60 => Level::Fatal,
        _ => return None,
    })
}

/// A level from text: a name, or a number as text.
pub(crate) fn level_from_text(text: &str) -> Option<Level> {
    // The common spellings without the allocation of `Level::parse` (hot path).
    const COMMON: [(&str, Level); 8] = [
        ("INFO", Level::Info),
        ("ERROR", Level::Error),
        ("WARN", Level::Warn),
        ("DEBUG", Level::Debug),
        ("WARNING", Level::Warn),
        ("TRACE", Level::Trace),
        ("FATAL", Level::Fatal),
        ("UNSPECIFIED", Level::Unspecified),
    ];
    if let Some((_, level)) = COMMON
        .iter()
        .find(|(name, _)| text.eq_ignore_ascii_case(name))
    {
        return Some(*level);
    }
    Level::parse(text).or_else(|| text.trim().parse::<i64>().ok().and_then(level_from_number))
}

fn parse_level(pick: &Pick) -> Option<Level> {
    match pick {
        Pick::Json(Value::String(s)) => level_from_text(s),
        Pick::Json(Value::Number(n)) => n.as_i64().and_then(level_from_number),
        Pick::Json(_) => None,
        Pick::Field(f) => match &f.kind {
            Some(Kind::Int(i)) => level_from_number(*i),
            _ => level_from_text(&f.to_text()),
        },
    }
}

/// Classifies a failed parse of `bytes` as invalid UTF-8 or invalid JSON.
fn parse_error(index: usize, bytes: &[u8], error: &serde_json::Error) -> RecordError {
    if std::str::from_utf8(bytes).is_err() {
        RecordError::new(
            index,
            RejectReason::InvalidUtf8,
            "record is not valid UTF-8",
        )
    } else {
        RecordError::new(
            index,
            RejectReason::InvalidJson,
            format!("invalid JSON: {error}"),
        )
    }
}

fn push(out: &mut DecodeOutput, index: usize, result: Result<Decoded, RecordError>) {
    match result {
        Ok(decoded) => out.records.push(decoded),
        Err(mut error) => {
            error.index = index;
            out.errors.push(error);
        }
    }
}

/// Decodes one line that should hold a JSON object (NDJSON and raw payloads).
pub(crate) fn decode_json_line(
    line: &[u8],
    index: usize,
    ctx: &DecodeContext,
    out: &mut DecodeOutput,
) {
    match serde_json::from_slice::<Parsed<'_>>(line) {
        Ok(parsed) => push(out, index, decode_parsed(parsed, ctx)),
        Err(error) => out.errors.push(parse_error(index, line, &error)),
    }
}

/// A JSON payload: one object, an array of objects, or NDJSON.
pub(crate) fn decode_json_payload(
    payload: &[u8],
    ctx: &DecodeContext,
) -> Result<DecodeOutput, PayloadError> {
    let payload = payload.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(payload);
    let mut out = DecodeOutput::default();
    let Some(first) = payload.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Ok(out);
    };
    if payload[first] == b'[' {
        let mut parser = serde_json::Deserializer::from_slice(payload);
        let (values, over) = de::DeserializeSeed::deserialize(AtMost(ctx.max_records), &mut parser)
            .and_then(|parsed| parser.end().map(|()| parsed))
            .map_err(|error| {
                if std::str::from_utf8(payload).is_err() {
                    PayloadError::InvalidUtf8
                } else {
                    PayloadError::InvalidJson(error)
                }
            })?;
        if over {
            return Err(PayloadError::TooManyRecords(ctx.max_records));
        }
        out.records.reserve(values.len());
        for (index, value) in values.into_iter().enumerate() {
            push(&mut out, index, decode_json_value(value, ctx));
        }
        return Ok(out);
    }

    // A payload that is valid UTF-8 as a whole (the usual case) is checked once here, and its
    // lines are parsed as text, without checking each string again.
    let text = std::str::from_utf8(payload).ok();
    // One record per line, mostly: sized once instead of grown (and copied) by doubling.
    out.records.reserve(
        (memchr::memchr_iter(b'\n', payload).count() + 1).min(ctx.max_records.saturating_add(1)),
    );
    let mut offset = 0usize;
    let mut first_record = true;
    let ends = memchr::memchr_iter(b'\n', payload).chain(std::iter::once(payload.len()));
    for (index, line_end) in ends.enumerate() {
        if out.over(ctx) {
            break;
        }
        let line_start = offset;
        let raw_line = &payload[line_start..line_end];
        offset = line_end + 1;
        if raw_line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = match text {
            // Cut at '\n', so on character boundaries.
            Some(text) => {
                let line = &text[line_start..line_end];
                flat_object(line).map_or_else(|| serde_json::from_str::<Parsed<'_>>(line), Ok)
            }
            None => serde_json::from_slice::<Parsed<'_>>(raw_line),
        };
        match parsed {
            Ok(parsed) => push(&mut out, index, decode_parsed(parsed, ctx)),
            Err(error) if first_record && error.is_eof() => {
                // Not NDJSON: a pretty-printed document (or a stream of them) spanning lines.
                decode_json_stream(&payload[line_start..], index, ctx, &mut out);
                return Ok(out);
            }
            Err(error) => out.errors.push(parse_error(index, raw_line, &error)),
        }
        first_record = false;
    }
    Ok(out)
}

/// A record of a JSON payload decoded by [`decode_json_views`].
pub enum Record<'a> {
    /// A flat record, as a view of the payload.
    View(EntryRef<'a>),
    /// Any other record, decoded as [`decode_json_payload`] decodes it.
    Owned(Decoded),
}

/// What [`decode_json_views`] gives: as [`DecodeOutput`], with records that may be views.
pub struct ViewsOutput<'a> {
    pub records: Vec<Record<'a>>,
    pub errors: Vec<RecordError>,
}

/// [`decode_json_payload`] of NDJSON as views of `payload` where the records allow it (flat
/// objects with unescaped strings, nearly all of what shippers send), without an allocation
/// per string and per field; other records are decoded as there. The records are the same
/// (a property test checks it). `None` for what is not NDJSON of valid UTF-8 (an array, a
/// pretty-printed document): [`decode_json_payload`] then decodes it. Never keeps the
/// original: a payload that schemas may validate takes [`decode_json_payload`].
pub fn decode_json_views<'a>(
    payload: &'a [u8],
    ctx: &'a DecodeContext,
) -> Option<Result<ViewsOutput<'a>, PayloadError>> {
    if ctx.keep_original {
        return None;
    }
    let payload = payload.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(payload);
    let mut out = ViewsOutput {
        records: Vec::new(),
        errors: Vec::new(),
    };
    let Some(first) = payload.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Some(Ok(out));
    };
    if payload[first] == b'[' {
        return None;
    }
    let text = std::str::from_utf8(payload).ok()?;
    out.records.reserve(
        (memchr::memchr_iter(b'\n', payload).count() + 1).min(ctx.max_records.saturating_add(1)),
    );
    let mut offset = 0usize;
    let mut first_record = true;
    // One list of members for every line: they all borrow from the payload.
    let mut members = Vec::with_capacity(16);
    let ends = memchr::memchr_iter(b'\n', payload).chain(std::iter::once(payload.len()));
    for (index, line_end) in ends.enumerate() {
        if out.records.len() + out.errors.len() > ctx.max_records {
            return Some(Err(PayloadError::TooManyRecords(ctx.max_records)));
        }
        let line_start = offset;
        offset = line_end + 1;
        // Cut at '\n', so on character boundaries.
        let line = &text[line_start..line_end];
        if line.bytes().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let mapped = flat_members(line, &mut members).and_then(|()| map_flat(&members, ctx));
        let result = match mapped {
            Some(Ok(view)) => {
                out.records.push(Record::View(view));
                first_record = false;
                continue;
            }
            Some(Err(error)) => Err(error),
            None => match serde_json::from_str::<Parsed<'_>>(line) {
                Ok(parsed) => decode_parsed(parsed, ctx),
                // Not NDJSON: a pretty-printed document spanning lines.
                Err(error) if first_record && error.is_eof() => return None,
                Err(error) => {
                    out.errors.push(parse_error(index, line.as_bytes(), &error));
                    first_record = false;
                    continue;
                }
            },
        };
        match result {
            Ok(decoded) => out.records.push(Record::Owned(decoded)),
            Err(mut error) => {
                error.index = index;
                out.errors.push(error);
            }
        }
        first_record = false;
    }
    if out.records.len() + out.errors.len() > ctx.max_records {
        return Some(Err(PayloadError::TooManyRecords(ctx.max_records)));
    }
    Some(Ok(out))
}

/// The elements of a JSON array, at most `.0` of them kept (those after are parsed, not
/// kept); `true` when there were more.
struct AtMost(usize);

impl<'de> de::DeserializeSeed<'de> for AtMost {
    type Value = (Vec<Value>, bool);

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for AtMost {
    type Value = (Vec<Value>, bool);

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut values = Vec::new();
        while values.len() < self.0 {
            match seq.next_element::<Value>()? {
                Some(value) => values.push(value),
                None => return Ok((values, false)),
            }
        }
        let mut over = false;
        while seq.next_element::<de::IgnoredAny>()?.is_some() {
            over = true;
        }
        Ok((values, over))
    }
}

/// Whitespace-separated JSON values spanning lines; the first error ends the payload.
fn decode_json_stream(
    bytes: &[u8],
    first_index: usize,
    ctx: &DecodeContext,
    out: &mut DecodeOutput,
) {
    let stream = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
    for (n, value) in stream.enumerate() {
        if out.over(ctx) {
            return;
        }
        let index = first_index + n;
        match value {
            Ok(value) => push(out, index, decode_json_value(value, ctx)),
            Err(error) => {
                out.errors.push(parse_error(index, bytes, &error));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logcluster_proto::json::to_json;
    use proptest::prelude::*;
    use serde_json::json;

    fn ctx() -> DecodeContext {
        DecodeContext {
            default_service: "fallback".into(),
            ..DecodeContext::default()
        }
    }

    fn one(value: Value) -> LogEntry {
        decode_json_value(value, &ctx()).expect("decodes").entry
    }

    #[test]
    fn ecs_style_nested_object_maps_to_core_fields() {
        let entry = one(json!({
            "@timestamp": "2024-05-01T14:00:00.123Z",
            "log": {"level": "warn", "logger": "http"},
            "message": "slow request",
            "service": {"name": "checkout", "version": "1.4.2"},
            "host": {"name": "web-3", "ip": "10.1.2.3"},
            "trace": {"id": "4bf92f3577b34da6a3ce929d0e0e4736"},
            "http": {"response": {"status_code": 200}},
        }));
        assert_eq!(entry.timestamp, 1_714_572_000_123_000_000);
        assert_eq!(entry.level_enum(), Level::Warn);
        assert_eq!(entry.message, "slow request");
        assert_eq!(entry.service, "checkout");
        assert_eq!(entry.host, "web-3");
        assert_eq!(entry.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            entry.fields.get("http.response.status_code"),
            Some(&FieldValue::int(200))
        );
        assert_eq!(
            entry.fields.get("service.version"),
            Some(&FieldValue::str("1.4.2"))
        );
        assert_eq!(
            entry.fields.get("host.ip"),
            Some(&FieldValue::str("10.1.2.3"))
        );
        assert_eq!(
            entry.fields.get("log.logger"),
            Some(&FieldValue::str("http"))
        );
        assert!(!entry.fields.contains_key("log.level"));
        assert_eq!(entry.tenant, "");
        assert_eq!(entry.id, "");
        assert_eq!(entry.received_at, 0);
    }

    #[test]
    fn pino_record_uses_numeric_levels_and_epoch_millis() {
        let entry = one(json!({
            "level": 50, "time": 1714572000123u64, "pid": 4242, "hostname": "api-7",
            "msg": "request failed", "app": "orders", "err": {"type": "TimeoutError"}
        }));
        assert_eq!(entry.level_enum(), Level::Error);
        assert_eq!(entry.timestamp, 1_714_572_000_123_000_000);
        assert_eq!(entry.host, "api-7");
        assert_eq!(entry.service, "orders");
        assert_eq!(entry.message, "request failed");
        assert_eq!(entry.fields.get("pid"), Some(&FieldValue::int(4242)));
        assert_eq!(
            entry.fields.get("err.type"),
            Some(&FieldValue::str("TimeoutError"))
        );
    }

    #[test]
    fn first_alias_wins_and_the_others_stay_as_fields() {
        let entry =
            one(json!({"msg": "second", "message": "first", "ts": "1714572000", "severity": 3}));
        assert_eq!(entry.message, "first");
        assert_eq!(entry.fields.get("msg"), Some(&FieldValue::str("second")));
        assert_eq!(entry.timestamp, 1_714_572_000_000_000_000);
        assert_eq!(entry.level_enum(), Level::Error);
        assert_eq!(entry.service, "fallback");
    }

    #[test]
    fn unknown_level_is_kept_raw_and_not_rejected() {
        let entry = one(json!({"message": "x", "level": "chatty"}));
        assert_eq!(entry.level_enum(), Level::Unspecified);
        assert_eq!(
            entry.fields.get("level_raw"),
            Some(&FieldValue::str("chatty"))
        );
    }

    #[test]
    fn unparseable_timestamp_is_rejected() {
        let err = decode_json_value(json!({"message": "x", "timestamp": "yesterday"}), &ctx())
            .expect_err("bad timestamp");
        assert_eq!(err.reason, RejectReason::BadTimestamp);
        let err = decode_json_value(json!({"message": "x", "ts": -5}), &ctx()).expect_err("neg");
        assert_eq!(err.reason, RejectReason::BadTimestamp);
    }

    #[test]
    fn empty_object_is_rejected_but_a_missing_message_is_not() {
        let err = decode_json_value(json!({}), &ctx()).expect_err("empty");
        assert_eq!(err.reason, RejectReason::MissingMessage);
        let entry = one(json!({"user": "ann", "action": "login"}));
        assert_eq!(entry.message, "");
        assert_eq!(entry.fields.len(), 2);
        let err = decode_json_value(json!([1, 2]), &ctx()).expect_err("array");
        assert_eq!(err.reason, RejectReason::NotAnObject);
    }

    #[test]
    fn fields_object_is_merged_and_original_is_kept() {
        let value = json!({"message": "m", "tenant_id": "acme", "traceId": "t-1",
                           "fields": {"a": 1, "nested": {"b": true}}});
        let decoded = decode_json_value(value.clone(), &ctx()).expect("decodes");
        assert_eq!(decoded.original, Some(value));
        assert_eq!(decoded.entry.tenant, "acme");
        assert_eq!(decoded.entry.trace_id, "t-1");
        assert_eq!(decoded.entry.fields.get("a"), Some(&FieldValue::int(1)));
        assert_eq!(
            decoded.entry.fields.get("nested.b"),
            Some(&FieldValue::bool(true))
        );
    }

    /// Without a schema to validate against, the parsed value is not kept, and the entry is
    /// the same.
    #[test]
    fn the_original_is_kept_only_when_asked_for() {
        let value = json!({"message": "m", "ts": 1_714_572_000, "log.level": "warn",
                           "service": {"name": "api", "zone": "b"}, "level": "nope",
                           "msg": "second", "fields": {"a": [1, 2], "message": "x"}});
        let kept = decode_json_value(value.clone(), &ctx()).expect("decodes");
        let lean = DecodeContext {
            keep_original: false,
            ..ctx()
        };
        let taken = decode_json_value(value.clone(), &lean).expect("decodes");
        assert_eq!(kept.original, Some(value));
        assert_eq!(taken.original, None);
        assert_eq!(taken.entry, kept.entry);
        assert_eq!(taken.entry.message, "m");
        assert_eq!(taken.entry.service, "api");
        assert_eq!(
            taken.entry.fields.get("msg"),
            Some(&FieldValue::str("second"))
        );
        assert_eq!(
            taken.entry.fields.get("level_raw"),
            Some(&FieldValue::str("nope"))
        );
    }

    #[test]
    fn ndjson_errors_are_isolated_per_line() {
        let payload = b"{\"message\":\"one\",\"level\":\"info\"}\r\n\n{\"message\": oops}\n[1]\n{\"message\":\"bad \xff byte\"}\n{\"msg\":\"five\"}\n";
        let out = decode_json_payload(payload, &ctx()).expect("decodes");
        let messages: Vec<_> = out
            .records
            .iter()
            .map(|r| r.entry.message.as_str())
            .collect();
        assert_eq!(messages, ["one", "five"]);
        let errors: Vec<_> = out.errors.iter().map(|e| (e.index, e.reason)).collect();
        assert_eq!(
            errors,
            [
                (2, RejectReason::InvalidJson),
                (3, RejectReason::NotAnObject),
                (4, RejectReason::InvalidUtf8)
            ]
        );
        // The same without the invalid byte: the payload is then checked as UTF-8 once and
        // its lines parsed as text, with the same verdicts.
        let payload = "{\"message\":\"one\",\"level\":\"info\"}\r\n\n{\"message\": oops}\n[1]\n{\"message\":\"été \\u00e9\"}\n{\"msg\":\"five\"}";
        let out = decode_json_payload(payload.as_bytes(), &ctx()).expect("decodes");
        let messages: Vec<_> = out
            .records
            .iter()
            .map(|r| r.entry.message.as_str())
            .collect();
        assert_eq!(messages, ["one", "été é", "five"]);
        let errors: Vec<_> = out.errors.iter().map(|e| (e.index, e.reason)).collect();
        assert_eq!(
            errors,
            [
                (2, RejectReason::InvalidJson),
                (3, RejectReason::NotAnObject)
            ]
        );
    }

    #[test]
    fn array_and_pretty_printed_payloads_decode() {
        let out = decode_json_payload(br#" [{"message":"a"}, 7, {"message":"c"}]"#, &ctx())
            .expect("decodes");
        assert_eq!(out.records.len(), 2);
        assert_eq!(out.errors[0].index, 1);
        let pretty = b"{\n  \"message\": \"pretty\",\n  \"level\": \"debug\"\n}\n{\n  \"message\": \"two\"\n}\n";
        let out = decode_json_payload(pretty, &ctx()).expect("decodes");
        assert_eq!(out.records.len(), 2, "{:?}", out.errors);
        assert_eq!(out.records[0].entry.level_enum(), Level::Debug);
        assert!(matches!(
            decode_json_payload(b"[{\"message\":", &ctx()),
            Err(PayloadError::InvalidJson(_))
        ));
    }

    fn arb_field() -> impl Strategy<Value = FieldValue> {
        prop_oneof![
            any::<i64>().prop_map(FieldValue::int),
            any::<bool>().prop_map(FieldValue::bool),
            "[a-zA-Z0-9 :/_-]{0,16}".prop_map(FieldValue::str),
            (-1.0e9f64..1.0e9)
                .prop_filter("not integral", |f| f.fract() != 0.0)
                .prop_map(FieldValue::float),
        ]
    }

    /// JSON text of an object with these members, duplicates and all; a key may have its
    /// first character written as a `\u` escape (such keys cannot be borrowed).
    fn object_text(members: &[(String, bool, Value)]) -> String {
        let body: Vec<String> = members
            .iter()
            .map(|(key, escaped, value)| {
                let key_text = match key.chars().next() {
                    Some(first) if *escaped => format!(
                        "\"\\u{:04x}{}",
                        first as u32,
                        &serde_json::to_string(&key[first.len_utf8()..]).expect("key")[1..]
                    ),
                    _ => serde_json::to_string(key).expect("key"),
                };
                format!(
                    "{key_text}:{}",
                    serde_json::to_string(value).expect("value")
                )
            })
            .collect();
        format!("{{{}}}", body.join(","))
    }

    /// A record's key: a short dotted name, or one the mapping treats specially.
    fn arb_key() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z.]{1,6}",
            prop::sample::select(vec![
                "message",
                "msg",
                "log",
                "MESSAGE",
                "level",
                "severity",
                "lvl",
                "log.level",
                "timestamp",
                "ts",
                "time",
                "@timestamp",
                "service",
                "app",
                "service.name",
                "host",
                "hostname",
                "host.name",
                "trace_id",
                "traceId",
                "trace.id",
                "tenant",
                "tenant_id",
                "id",
                "received_at",
                "fields",
                "level_raw",
                "é",
                "",
            ])
            .prop_map(str::to_string),
        ]
    }

    fn arb_json_value() -> impl Strategy<Value = Value> {
        let scalar = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<u64>().prop_map(|u| json!(u)),
            (-1.0e12f64..1.0e12).prop_map(|f| json!(f)),
            "[a-z0-9 :.\"\\\\é-]{0,12}".prop_map(Value::String),
            Just(json!("2024-05-01T14:00:00.123Z")),
            Just(json!("WARN")),
            Just(json!(1_714_572_000_123u64)),
        ];
        scalar.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z.]{1,5}|name|id|level", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn members_of(parsed: Parsed<'_>) -> Option<Vec<(String, Value)>> {
        match parsed {
            Parsed::Object(members) => Some(
                members
                    .into_iter()
                    .map(|(k, v)| (k.into_owned(), v))
                    .collect(),
            ),
            Parsed::Other(_) => None,
        }
    }

    /// Nested objects flatten into dotted keys that may meet another member's key: the
    /// NDJSON path keeps the same value as the map-based path whatever the input order.
    #[test]
    fn flattened_keys_that_meet_keep_the_value_the_map_keeps() {
        for line in [
            r#"{"level":false,"":{"level":0}}"#,
            r#"{"":{"level":0},"level":false}"#,
            r#"{"a.b":1,"a":{"b":2},"message":"m"}"#,
            r#"{"a":{"b":2},"a.b":1,"message":"m"}"#,
            r#"{"message":"m","x":{"y.z":1},"x.y":{"z":2}}"#,
        ] {
            let by_line = decode_json_payload(line.as_bytes(), &ctx()).expect("payload");
            let by_value = decode_json_value(serde_json::from_str(line).expect("json"), &ctx())
                .expect("an entry");
            assert_eq!(by_line.records[0].entry, by_value.entry, "{line}");
        }
    }

    #[test]
    fn flat_records_take_the_fast_path() {
        let line = r#"{"timestamp":"2024-05-01T00:00:00.141Z","level":"INFO","service":"catalog","message":"GET /a 304 92ms","http.status":304,"amount":-12.5e-1,"ok":true,"gone":null,"level":"WARN"} "#;
        let fast = members_of(flat_object(line).expect("fast path")).expect("object");
        let slow =
            members_of(serde_json::from_str::<Parsed<'_>>(line).expect("serde")).expect("object");
        assert_eq!(fast, slow);
        assert_eq!(fast.len(), 8);
        assert!(fast.contains(&("level".to_string(), json!("WARN"))));
        assert!(members_of(flat_object(" { } ").expect("empty")).is_some_and(|m| m.is_empty()));
        // Left to serde: escapes, nesting, control characters, malformed text.
        for line in [
            r#"{"m":"a\"b"}"#,
            r#"{"m":{"n":1}}"#,
            r#"{"m":[1]}"#,
            "{\"m\":\"a\u{1}b\"}",
            r#"{"m":01}"#,
            r#"{"m":1}x"#,
            r#"{"m":1,}"#,
            r#"["m"]"#,
            r#"{"m":tru}"#,
        ] {
            assert!(flat_object(line).is_none(), "{line}");
        }
    }

    proptest! {
        // Many generated lines are meant to leave the fast path; enough cases stay on it.
        #![proptest_config(ProptestConfig::with_cases(2048))]
        /// Wherever the fast path answers, it answers exactly what serde's parse does.
        #[test]
        fn the_fast_path_parses_as_serde_does(
            members in proptest::collection::vec(
                (
                    "[a-z.é\\\"]{0,4}",
                    prop_oneof![
                        "[a-z é\\\"\u{1}]{0,6}".prop_map(|s| serde_json::to_string(&s).expect("str")),
                        "[a-z é\\\"\u{1}]{0,6}".prop_map(|s| format!("\"{s}\"")),
                        // Past the bytes read one by one.
                        "[a-z]{20,30}[a-z é\\\"\u{1}]{0,6}".prop_map(|s| format!("\"{s}\"")),
                        "[a-z]{20,30}[a-z é\\\"\u{1}]{0,6}".prop_map(|s| serde_json::to_string(&s).expect("str")),
                        prop::sample::select(vec![
                            "0", "-0", "12", "-12", "1.5e3", "1E-2", "01", "1.", "-", "1e999",
                            "123456789012345678901234567890", "18446744073709551615",
                            "-9223372036854775808", "0.1", "true", "false", "null", "nul",
                            "{}", "[1,2]", "{\"a\":1}",
                        ])
                        .prop_map(str::to_string),
                    ],
                ),
                0..6,
            ),
            spaces in proptest::collection::vec(prop::sample::select(vec!["", " ", "\t", "\r", "  "]), 4),
            tail in prop::sample::select(vec!["", " ", "\r", "x", ",", "}", "{}"]),
        ) {
            let body: Vec<String> = members
                .iter()
                .map(|(key, value)| {
                    format!("{}{}{}:{}{}", spaces[0], serde_json::to_string(key).expect("key"), spaces[1], spaces[2], value)
                })
                .collect();
            let line = format!("{}{{{}{}}}{tail}", spaces[3], body.join(","), spaces[0]);
            if let Some(fast) = flat_object(&line) {
                let slow = serde_json::from_str::<Parsed<'_>>(&line);
                prop_assert!(slow.is_ok(), "fast path accepted what serde refuses: {}", line);
                prop_assert_eq!(members_of(fast), slow.ok().and_then(members_of), "{}", line);
            }
        }
    }

    /// Records of every kind the views take or leave, one per line, decoded both ways.
    /// A record of the views path is the entry (a view field for field, each key once).
    fn same_record(record: &Record<'_>, expected: &LogEntry) {
        match record {
            Record::View(view) => assert_eq!(view, &EntryRef::of(expected)),
            Record::Owned(decoded) => assert_eq!(&decoded.entry, expected),
        }
    }

    #[test]
    fn views_of_edge_records_are_the_entries_decoded_otherwise() {
        let text = [
            r#"{"level":"bogus","level_raw":"old","message":"m","service":"s"}"#,
            r#"{"id":"x","received_at":5,"message":"canonical","ts":1714572000}"#,
            r#"{"log.level":"warn","service.name":"svc","host.name":"h","trace.id":"t"}"#,
            r#"{"log.level":40,"message":"numeric dotted level"}"#,
            r#"{"message":17,"level":"INFO"}"#,
            r#"{"msg":true,"severity":99}"#,
            r#"{"level":"ERROR","lvl":"x","severity":"y","message":"first alias wins"}"#,
            r#"{"time":"yesterday"}"#,
            r#"{"timestamp":"2024-05-01T14:00:00.123Z","tenant":"t1","app":"a"}"#,
            r#"{"a":1,"a":2,"b":null,"c":1.5,"d":18446744073709551615}"#,
            r#"{}"#,
            r#"{"message":"esc\"aped"}"#,
        ]
        .join("\n");
        let ctx = DecodeContext {
            keep_original: false,
            ..ctx()
        };
        let owned = decode_json_payload(text.as_bytes(), &ctx).expect("payload");
        let views = decode_json_views(text.as_bytes(), &ctx)
            .expect("ndjson")
            .expect("payload");
        let taken = views
            .records
            .iter()
            .filter(|r| matches!(r, Record::View(_)))
            .count();
        assert_eq!(taken, 6);
        assert_eq!(views.records.len(), owned.records.len());
        for (record, expected) in views.records.iter().zip(&owned.records) {
            same_record(record, &expected.entry);
        }
        assert_eq!(views.errors, owned.errors);
    }

    proptest! {
        /// The first stop of a string, read eight bytes at a time, is the first byte that
        /// STRING_STOP names, wherever it lies in a word.
        #[test]
        fn string_stops_are_found_where_the_table_finds_them(
            bytes in proptest::collection::vec(
                prop_oneof![
                    4 => 0x20u8..0x7f,
                    1 => Just(b'"'),
                    1 => Just(b'\\'),
                    1 => 0u8..0x20,
                    1 => 0x80u8..=0xff,
                    1 => prop_oneof![Just(0x21u8), Just(0x1f), Just(0x5b), Just(0x5d), Just(0xa2), Just(0xdc)],
                ],
                0..40,
            ),
        ) {
            let expected = bytes.iter().position(|&b| STRING_STOP[usize::from(b)]);
            prop_assert_eq!(first_string_stop(&bytes), expected);
        }
    }

    proptest! {
        /// Integers read at once are what serde_json reads, sign, zeros and overflow alike.
        #[test]
        fn numbers_read_as_serde_json_reads_them(
            text in prop_oneof![
                any::<i64>().prop_map(|i| i.to_string()),
                any::<u64>().prop_map(|u| u.to_string()),
                "-?[0-9]{1,21}",
                "-?[0-9]{1,4}(\\.[0-9]{0,3})?([eE][-+]?[0-9]{0,3})?",
            ],
        ) {
            let serde = serde_json::from_str::<serde_json::Number>(&text).ok();
            prop_assert_eq!(number(&text), serde, "{}", text);
        }
    }

    proptest! {
        /// The NDJSON path (members parsed without a map) decodes every object exactly as
        /// the map-based path does: entry, original value and errors; duplicate keys (the
        /// last one counts), escaped keys, aliases, nested objects and `fields` included.
        #[test]
        fn ndjson_lines_decode_exactly_like_parsed_values(
            members in proptest::collection::vec(
                (
                    arb_key(),
                    any::<bool>(),
                    arb_json_value(),
                ),
                // Past 32 members repeated keys are found by sorting rather than by digest.
                0..40,
            ),
            keep_original in any::<bool>(),
        ) {
            let text = object_text(&members);
            let ctx = DecodeContext { keep_original, ..ctx() };
            let by_line = decode_json_payload(text.as_bytes(), &ctx).expect("payload");
            let value: Value = serde_json::from_str(&text).expect("valid JSON");
            let by_value = decode_json_value(value, &ctx);
            match by_value {
                Ok(decoded) => {
                    prop_assert!(by_line.errors.is_empty(), "{:?}", by_line.errors);
                    prop_assert_eq!(by_line.records.len(), 1);
                    prop_assert_eq!(&by_line.records[0].entry, &decoded.entry);
                    prop_assert_eq!(&by_line.records[0].original, &decoded.original);
                }
                Err(error) => {
                    prop_assert!(by_line.records.is_empty());
                    prop_assert_eq!(by_line.errors.len(), 1);
                    prop_assert_eq!(by_line.errors[0].reason, error.reason);
                    prop_assert_eq!(&by_line.errors[0].message, &error.message);
                }
            }
        }

        /// Views of NDJSON lines are the entries the owned path decodes, errors included;
        /// a payload the views path leaves alone is one the owned path decodes as a whole.
        #[test]
        fn views_of_ndjson_lines_are_the_entries_decoded_otherwise(
            lines in proptest::collection::vec(
                proptest::collection::vec(
                    (
                        arb_key(),
                        prop::sample::select(vec![false, false, false, false, false, false, false, true]),
                        prop_oneof![
                            // Values the views take (strings without escapes), then anything.
                            6 => prop_oneof![
                                Just(Value::Null),
                                any::<bool>().prop_map(Value::Bool),
                                any::<i64>().prop_map(|i| json!(i)),
                                any::<u64>().prop_map(|u| json!(u)),
                                (-1.0e12f64..1.0e12).prop_map(|f| json!(f)),
                                "[a-zA-Z0-9 :._é-]{0,12}".prop_map(Value::String),
                                // Past the bytes a string's reading takes one by one.
                                "[a-zA-Z0-9 :._é-]{20,60}".prop_map(Value::String),
                            ],
                            1 => arb_json_value(),
                            1 => prop::sample::select(vec![
                                json!("ERROR"), json!("notice"), json!(99), json!(30), json!(3),
                                json!("1714572000"), json!("yesterday"), json!(1.5e9), json!(""),
                            ]),
                        ],
                    ),
                    // Past 32 members repeated keys are found by sorting.
                    0..40,
                ),
                1..5,
            ),
            junk in prop::sample::select(vec!["", "{", "nope", "[1]", "\"text\"", " "]),
            default_service in prop::sample::select(vec!["", "from-ctx"]),
        ) {
            let mut text: Vec<String> = lines.iter().map(|members| object_text(members)).collect();
            text.insert(text.len() / 2, junk.to_string());
            let text = text.join("\n");
            let ctx = DecodeContext { default_service: default_service.to_string(), keep_original: false, ..ctx() };
            let Some(views) = decode_json_views(text.as_bytes(), &ctx) else {
                // Only a document that is not line-wise NDJSON is left to the owned path.
                prop_assert!(text.starts_with('{') || text.starts_with('['), "{}", text);
                return Ok(());
            };
            let owned = decode_json_payload(text.as_bytes(), &ctx).expect("payload");
            let views = views.expect("payload");
            prop_assert_eq!(views.records.len(), owned.records.len());
            for (record, expected) in views.records.iter().zip(&owned.records) {
                same_record(record, &expected.entry);
            }
            prop_assert_eq!(views.errors, owned.errors);
        }

        #[test]
        fn canonical_json_decodes_back_to_the_same_entry(
            timestamp in 0i64..4_102_444_800_000_000_000,
            tenant in "[a-z]{0,8}",
            service in "[a-z][a-z-]{0,11}",
            level in 0usize..7,
            message in "\\PC{0,60}",
            host in "[a-z0-9.-]{0,12}",
            trace_id in "[0-9a-f]{0,32}",
            fields in proptest::collection::btree_map("[a-z_]{1,8}(\\.[a-z_]{1,8})?", arb_field(), 0..6),
        ) {
            let entry = LogEntry {
                id: "0000000000000001-00000007".into(),
                timestamp,
                received_at: 1_714_572_001_000_000_000,
                tenant, service, level: Level::ALL[level] as i32, message, host, trace_id, fields,
            };
            let decoded = decode_json_value(to_json(&entry), &ctx()).expect("decodes");
            let expected = LogEntry { id: String::new(), received_at: 0, ..entry };
            prop_assert_eq!(decoded.entry, expected);
        }
    }
}
