//! The canonical JSON form of a [`LogEntry`], as the query API returns it.
//!
//! ```json
//! {"id":"…","timestamp":"2024-05-01T14:00:00.123Z","received_at":"…","tenant":"acme",
//!  "service":"payment","level":"ERROR","message":"…","host":"…","trace_id":"…",
//!  "fields":{"duration_ms":42,"http.method":"GET"}}
//! ```
//! Lenient decoding of arbitrary shipper JSON (other key names, epoch numbers, nested objects)
//! lives in the ingest crate; this module is the strict, lossless form.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::entry::{FieldValue, Level, LogEntry, field_value::Kind};
use crate::time::{format_rfc3339, parse_rfc3339};

/// Converts a field value to JSON (numbers stay numbers).
pub fn field_to_json(value: &FieldValue) -> Value {
    match &value.kind {
        Some(Kind::Str(s)) => Value::String(s.clone()),
        Some(Kind::Int(i)) => Value::from(*i),
        Some(Kind::Float(f)) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Some(Kind::Bool(b)) => Value::Bool(*b),
        Some(Kind::Json(text)) => serde_json::from_str(text).unwrap_or(Value::String(text.clone())),
        None => Value::Null,
    }
}

/// Converts a JSON scalar to a field value; arrays and null keep their JSON text. Objects
/// are not expected here (callers flatten them first) and are kept as JSON text too.
pub fn field_from_json(value: &Value) -> FieldValue {
    match value {
        Value::String(s) => FieldValue::str(s.clone()),
        Value::Bool(b) => FieldValue::bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::int(i),
            None => FieldValue::float(n.as_f64().unwrap_or(0.0)),
        },
        other => FieldValue {
            kind: Some(Kind::Json(other.to_string())),
        },
    }
}

/// [`field_from_json`] of a value it may take apart (strings are moved, not copied).
pub fn field_from_json_owned(value: Value) -> FieldValue {
    match value {
        Value::String(s) => FieldValue::str(s),
        other => field_from_json(&other),
    }
}

/// [`flatten_into`] of a value it may take apart (keys and strings are moved, not copied).
pub fn flatten_owned(prefix: String, value: Value, out: &mut BTreeMap<String, FieldValue>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                let path = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                flatten_owned(path, inner, out);
            }
        }
        scalar => {
            out.insert(prefix, field_from_json_owned(scalar));
        }
    }
}

/// Flattens a JSON object into dotted keys (`{"http":{"status":200}}` → `http.status`) and
/// inserts the scalars into `out`.
pub fn flatten_into(prefix: &str, value: &Value, out: &mut BTreeMap<String, FieldValue>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten_into(&path, inner, out);
            }
        }
        scalar => {
            out.insert(prefix.to_string(), field_from_json(scalar));
        }
    }
}

/// The canonical JSON object of an entry.
pub fn to_json(entry: &LogEntry) -> Value {
    let mut map = Map::with_capacity(10);
    map.insert("id".into(), Value::String(entry.id.clone()));
    map.insert(
        "timestamp".into(),
        Value::String(format_rfc3339(entry.timestamp)),
    );
    map.insert(
        "received_at".into(),
        Value::String(format_rfc3339(entry.received_at)),
    );
    map.insert("tenant".into(), Value::String(entry.tenant.clone()));
    map.insert("service".into(), Value::String(entry.service.clone()));
    map.insert(
        "level".into(),
        Value::String(entry.level_enum().as_str().to_string()),
    );
    map.insert("message".into(), Value::String(entry.message.clone()));
    map.insert("host".into(), Value::String(entry.host.clone()));
    map.insert("trace_id".into(), Value::String(entry.trace_id.clone()));
    let fields: Map<String, Value> = entry
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), field_to_json(v)))
        .collect();
    map.insert("fields".into(), Value::Object(fields));
    Value::Object(map)
}

/// Why a canonical JSON entry was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum JsonEntryError {
    #[error("entry is not a JSON object")]
    NotAnObject,
    #[error("field {0:?} has the wrong type")]
    WrongType(&'static str),
    #[error("timestamp {0:?} is not RFC 3339")]
    BadTimestamp(String),
    #[error("unknown level {0:?}")]
    BadLevel(String),
}

/// Parses the canonical JSON form back (the inverse of [`to_json`]).
pub fn from_json(value: &Value) -> Result<LogEntry, JsonEntryError> {
    let map = value.as_object().ok_or(JsonEntryError::NotAnObject)?;
    let text = |key: &'static str| -> Result<String, JsonEntryError> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(JsonEntryError::WrongType(key)),
        }
    };
    let time = |key: &'static str| -> Result<i64, JsonEntryError> {
        let raw = text(key)?;
        if raw.is_empty() {
            return Ok(0);
        }
        parse_rfc3339(&raw).ok_or(JsonEntryError::BadTimestamp(raw))
    };
    let level_text = text("level")?;
    let level = Level::parse(&level_text).ok_or(JsonEntryError::BadLevel(level_text))?;
    let mut fields = BTreeMap::new();
    match map.get("fields") {
        None | Some(Value::Null) => {}
        Some(Value::Object(obj)) => {
            for (k, v) in obj {
                fields.insert(k.clone(), field_from_json(v));
            }
        }
        Some(_) => return Err(JsonEntryError::WrongType("fields")),
    }
    Ok(LogEntry {
        id: text("id")?,
        timestamp: time("timestamp")?,
        received_at: time("received_at")?,
        tenant: text("tenant")?,
        service: text("service")?,
        level: level as i32,
        message: text("message")?,
        host: text("host")?,
        trace_id: text("trace_id")?,
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_round_trips() {
        let mut entry = LogEntry {
            id: "0000000000000001-00000000".into(),
            timestamp: 1_714_572_000_123_000_000,
            received_at: 1_714_572_001_000_000_000,
            tenant: "acme".into(),
            service: "payment".into(),
            level: Level::Warn as i32,
            message: "slow".into(),
            host: "h".into(),
            trace_id: "t".into(),
            fields: BTreeMap::new(),
        };
        entry
            .fields
            .insert("duration_ms".into(), FieldValue::int(42));
        entry
            .fields
            .insert("amount".into(), FieldValue::float(1.25));
        entry.fields.insert(
            "tags".into(),
            FieldValue {
                kind: Some(Kind::Json("[1,2]".into())),
            },
        );
        let json = to_json(&entry);
        assert_eq!(json["timestamp"], "2024-05-01T14:00:00.123Z");
        assert_eq!(json["fields"]["duration_ms"], 42);
        assert_eq!(from_json(&json).expect("parses"), entry);
    }

    #[test]
    fn flattening_uses_dotted_keys() {
        let mut out = BTreeMap::new();
        flatten_into(
            "",
            &serde_json::json!({"http": {"status": 200, "method": "GET"}}),
            &mut out,
        );
        assert_eq!(out.get("http.status"), Some(&FieldValue::int(200)));
        assert_eq!(out.get("http.method"), Some(&FieldValue::str("GET")));
    }
}
