//! OTLP/HTTP logs: `POST /v1/logs` with an `ExportLogsServiceRequest` in protobuf
//! (`application/x-protobuf`) or JSON (`application/json`, OTLP's JSON mapping: lowerCamelCase
//! keys — snake_case accepted too —, hex trace and span ids, 64-bit integers as strings or
//! numbers), optionally gzip-compressed.
//!
//! Mapping onto LogEntry:
//! - resource attribute `service.name` → service, `host.name` → host; every other resource
//!   attribute (`k8s.pod.name`, `k8s.namespace.name`, `deployment.environment`, …) is kept as a
//!   field under its own key;
//! - `time_unix_nano` (or `observed_time_unix_nano` when it is 0) → timestamp;
//! - `severity_number` → level (1–4 TRACE, 5–8 DEBUG, 9–12 INFO, 13–16 WARN, 17–20 ERROR,
//!   21–24 FATAL), or `severity_text` when the number is unset;
//! - `trace_id` → trace_id (hex), `span_id` → field `span_id` (hex);
//! - a string body → message; any other body → its JSON text as message;
//! - record attributes → fields under their own keys (a nested map is flattened with dotted
//!   keys, an array becomes its JSON text); they win over resource attributes of the same key;
//! - the instrumentation scope's name → field `otel.scope.name`; `event_name` → `event.name`.
//!
//! Answers follow the OTLP/HTTP specification: 200 with an `ExportLogsServiceResponse` in the
//! request's encoding (with `partial_success` when a schema refused some records); 400 with a
//! `google.rpc.Status` for a body that does not decode; 413 over the size limit; 415 for another
//! content type; 429 and 503 with `Retry-After`, which exporters retry.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use logcluster_proto::{AckStatus, FieldValue, Level, LogEntry};
use prost::Message;
use serde_json::{Map, Value, json};

use logcluster_proto::ids::hex;

use super::{BodyError, Compat};
use crate::decode::{DecodeOutput, Decoded, RejectReason};
use crate::pipeline::BatchSource;

/// The OTLP messages LogCluster reads (field numbers of opentelemetry-proto's
/// `collector/logs/v1`, `logs/v1`, `common/v1` and `resource/v1`).
pub mod wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportLogsServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_logs: Vec<ResourceLogs>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceLogs {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_logs: Vec<ScopeLogs>,
        #[prost(string, tag = "3")]
        pub schema_url: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
        #[prost(uint32, tag = "2")]
        pub dropped_attributes_count: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeLogs {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub log_records: Vec<LogRecord>,
        #[prost(string, tag = "3")]
        pub schema_url: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(message, repeated, tag = "3")]
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LogRecord {
        #[prost(fixed64, tag = "1")]
        pub time_unix_nano: u64,
        #[prost(fixed64, tag = "11")]
        pub observed_time_unix_nano: u64,
        #[prost(int32, tag = "2")]
        pub severity_number: i32,
        #[prost(string, tag = "3")]
        pub severity_text: String,
        #[prost(message, optional, tag = "5")]
        pub body: Option<AnyValue>,
        #[prost(message, repeated, tag = "6")]
        pub attributes: Vec<KeyValue>,
        #[prost(uint32, tag = "7")]
        pub dropped_attributes_count: u32,
        #[prost(fixed32, tag = "8")]
        pub flags: u32,
        #[prost(bytes = "vec", tag = "9")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "10")]
        pub span_id: Vec<u8>,
        #[prost(string, tag = "12")]
        pub event_name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "Value", tags = "1, 2, 3, 4, 5, 6, 7")]
        pub value: Option<Value>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(string, tag = "1")]
        String(String),
        #[prost(bool, tag = "2")]
        Bool(bool),
        #[prost(int64, tag = "3")]
        Int(i64),
        #[prost(double, tag = "4")]
        Double(f64),
        #[prost(message, tag = "5")]
        Array(ArrayValue),
        #[prost(message, tag = "6")]
        KvList(KeyValueList),
        #[prost(bytes = "vec", tag = "7")]
        Bytes(Vec<u8>),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ArrayValue {
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<AnyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValueList {
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportLogsServiceResponse {
        #[prost(message, optional, tag = "1")]
        pub partial_success: Option<ExportLogsPartialSuccess>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportLogsPartialSuccess {
        #[prost(int64, tag = "1")]
        pub rejected_log_records: i64,
        #[prost(string, tag = "2")]
        pub error_message: String,
    }

    /// `google.rpc.Status`, the body of an OTLP error answer.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(string, tag = "2")]
        pub message: String,
    }
}

pub(super) fn router(compat: Arc<Compat>) -> Router {
    Router::new()
        .route("/v1/logs", post(export))
        .with_state(compat)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

/// The answer when the ingest budget is full, in the request's encoding.
pub(super) fn busy(headers: &HeaderMap) -> Response {
    let encoding = match super::media_type(headers).as_deref() {
        Some("application/x-protobuf") | Some("application/protobuf") => Encoding::Protobuf,
        _ => Encoding::Json,
    };
    answer(
        encoding,
        StatusCode::TOO_MANY_REQUESTS,
        crate::http_bodies::BUSY,
    )
}

fn answer(encoding: Encoding, status: StatusCode, message: &str) -> Response {
    // google.rpc.Code: INVALID_ARGUMENT 3, RESOURCE_EXHAUSTED 8, UNAVAILABLE 14.
    let code = match status {
        StatusCode::TOO_MANY_REQUESTS | StatusCode::PAYLOAD_TOO_LARGE => 8,
        StatusCode::SERVICE_UNAVAILABLE => 14,
        _ => 3,
    };
    let mut response = match encoding {
        Encoding::Protobuf => (
            status,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            wire::Status {
                code,
                message: message.to_string(),
            }
            .encode_to_vec(),
        )
            .into_response(),
        Encoding::Json => (
            status,
            axum::Json(json!({"code": code, "message": message})),
        )
            .into_response(),
    };
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        response = super::retry_after(response);
    }
    response
}

fn success(encoding: Encoding, rejected: u32, message: &str) -> Response {
    let partial = (rejected > 0).then(|| wire::ExportLogsPartialSuccess {
        rejected_log_records: i64::from(rejected),
        error_message: message.to_string(),
    });
    match encoding {
        Encoding::Protobuf => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            wire::ExportLogsServiceResponse {
                partial_success: partial,
            }
            .encode_to_vec(),
        )
            .into_response(),
        Encoding::Json => {
            let body = match partial {
                Some(p) => json!({"partialSuccess": {
                    "rejectedLogRecords": p.rejected_log_records.to_string(),
                    "errorMessage": p.error_message,
                }}),
                None => json!({}),
            };
            (StatusCode::OK, axum::Json(body)).into_response()
        }
    }
}

async fn export(State(compat): State<Arc<Compat>>, headers: HeaderMap, body: Body) -> Response {
    let encoding = match super::media_type(&headers).as_deref() {
        Some("application/x-protobuf") | Some("application/protobuf") => Encoding::Protobuf,
        Some("application/json") => Encoding::Json,
        other => {
            compat.protocol_error("otlp", "unsupported_media_type");
            return answer(
                Encoding::Json,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!(
                    "unsupported Content-Type {:?}: OTLP/HTTP takes application/x-protobuf or application/json",
                    other.unwrap_or("")
                ),
            );
        }
    };
    let body = match compat.read_body("otlp", &headers, body).await {
        Ok(body) => body,
        Err(error @ BodyError::TooLarge(_)) => {
            return answer(encoding, StatusCode::PAYLOAD_TOO_LARGE, &error.message());
        }
        Err(BodyError::Busy) => return busy(&headers),
        Err(error) => return answer(encoding, StatusCode::BAD_REQUEST, &error.message()),
    };
    let source = BatchSource {
        format: "otlp",
        tenant: super::tenant(&headers),
        batch_id: 0,
    };
    let len = body.len();
    let Some(result) = compat
        .ingest(source, len, move |limits| {
            let request = match encoding {
                Encoding::Protobuf => {
                    wire::ExportLogsServiceRequest::decode(&body[..]).map_err(|e| {
                        (
                            RejectReason::InvalidProtobuf,
                            format!("body is not an OTLP ExportLogsServiceRequest: {e}"),
                        )
                    })?
                }
                Encoding::Json => from_json(&body).map_err(|e| {
                    (
                        RejectReason::InvalidJson,
                        format!("body is not OTLP JSON: {e}"),
                    )
                })?,
            };
            to_records(request, &mut |bytes| limits.admit(bytes))
        })
        .await
    else {
        return answer(
            encoding,
            StatusCode::TOO_MANY_REQUESTS,
            crate::http_bodies::BUSY,
        );
    };
    match result.status {
        AckStatus::RetryLater => answer(encoding, StatusCode::SERVICE_UNAVAILABLE, &result.error),
        AckStatus::Rejected | AckStatus::ProtocolError if result.record_errors.is_empty() => {
            answer(encoding, StatusCode::BAD_REQUEST, &result.error)
        }
        _ => success(encoding, result.rejected, &result.error),
    }
}

/// Maps a decoded request onto records; `admit` is called with each record's size before it
/// is made, and its refusal refuses the request (see [`super::MapLimits::admit`]).
pub fn to_records(
    request: wire::ExportLogsServiceRequest,
    admit: &mut dyn FnMut(usize) -> Result<(), (RejectReason, String)>,
) -> Result<DecodeOutput, (RejectReason, String)> {
    let mut output = DecodeOutput::default();
    for resource_logs in request.resource_logs {
        let mut base = LogEntry::default();
        for kv in resource_logs
            .resource
            .map(|r| r.attributes)
            .unwrap_or_default()
        {
            match (kv.key.as_str(), kv.value.and_then(|v| v.value)) {
                ("service.name", Some(wire::Value::String(name))) => base.service = name,
                ("host.name", Some(wire::Value::String(host))) => base.host = host,
                (_, Some(value)) => put_value(&mut base.fields, kv.key, value),
                (_, None) => {}
            }
        }
        for scope_logs in resource_logs.scope_logs {
            let scope = scope_logs.scope.map(|s| s.name).unwrap_or_default();
            for record in scope_logs.log_records {
                admit(super::mapped_size(
                    &base,
                    scope.len() + record.encoded_len(),
                ))?;
                let mut entry = base.clone();
                if !scope.is_empty() {
                    entry
                        .fields
                        .insert("otel.scope.name".into(), FieldValue::str(scope.clone()));
                }
                map_record(record, &mut entry);
                output.records.push(Decoded {
                    entry,
                    original: None,
                });
            }
        }
    }
    Ok(output)
}

fn map_record(record: wire::LogRecord, entry: &mut LogEntry) {
    let time = if record.time_unix_nano != 0 {
        record.time_unix_nano
    } else {
        record.observed_time_unix_nano
    };
    entry.timestamp = i64::try_from(time).unwrap_or(0);
    entry.level = match record.severity_number {
        1..=4 => Level::Trace,
        5..=8 => Level::Debug,
        9..=12 => Level::Info,
        13..=16 => Level::Warn,
        17..=20 => Level::Error,
        21..=24 => Level::Fatal,
        _ => Level::parse(&record.severity_text).unwrap_or(Level::Unspecified),
    } as i32;
    if !record.trace_id.is_empty() && record.trace_id.iter().any(|b| *b != 0) {
        entry.trace_id = hex(&record.trace_id);
    }
    if !record.span_id.is_empty() && record.span_id.iter().any(|b| *b != 0) {
        entry
            .fields
            .insert("span_id".into(), FieldValue::str(hex(&record.span_id)));
    }
    entry.message = match record.body.and_then(|b| b.value) {
        None => String::new(),
        Some(wire::Value::String(text)) => text,
        Some(other) => any_to_json(&other).to_string(),
    };
    for kv in record.attributes {
        if let Some(value) = kv.value.and_then(|v| v.value) {
            put_value(&mut entry.fields, kv.key, value);
        }
    }
    if !record.event_name.is_empty() {
        entry
            .fields
            .insert("event.name".into(), FieldValue::str(record.event_name));
    }
}

fn put_value(fields: &mut BTreeMap<String, FieldValue>, key: String, value: wire::Value) {
    match value {
        wire::Value::String(s) => {
            fields.insert(key, FieldValue::str(s));
        }
        wire::Value::Bool(b) => {
            fields.insert(key, FieldValue::bool(b));
        }
        wire::Value::Int(i) => {
            fields.insert(key, FieldValue::int(i));
        }
        wire::Value::Double(d) => {
            fields.insert(key, FieldValue::float(d));
        }
        wire::Value::KvList(list) => {
            for kv in list.values {
                if let Some(inner) = kv.value.and_then(|v| v.value) {
                    put_value(fields, format!("{key}.{}", kv.key), inner);
                }
            }
        }
        other @ (wire::Value::Array(_) | wire::Value::Bytes(_)) => {
            let text = match any_to_json(&other) {
                Value::String(s) => s,
                json => json.to_string(),
            };
            fields.insert(key, FieldValue::str(text));
        }
    }
}

fn any_to_json(value: &wire::Value) -> Value {
    match value {
        wire::Value::String(s) => Value::String(s.clone()),
        wire::Value::Bool(b) => Value::Bool(*b),
        wire::Value::Int(i) => json!(i),
        wire::Value::Double(d) => json!(d),
        wire::Value::Bytes(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        wire::Value::Array(array) => Value::Array(
            array
                .values
                .iter()
                .map(|v| v.value.as_ref().map_or(Value::Null, any_to_json))
                .collect(),
        ),
        wire::Value::KvList(list) => Value::Object(
            list.values
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        kv.value
                            .as_ref()
                            .and_then(|v| v.value.as_ref())
                            .map_or(Value::Null, any_to_json),
                    )
                })
                .collect(),
        ),
    }
}

// ---- OTLP/JSON ----

/// Parses OTLP's JSON encoding into the protobuf structs.
pub fn from_json(body: &[u8]) -> Result<wire::ExportLogsServiceRequest, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let root = object(&value, "the request")?;
    Ok(wire::ExportLogsServiceRequest {
        resource_logs: array(root, "resourceLogs", "resource_logs")?
            .iter()
            .map(resource_logs)
            .collect::<Result<_, _>>()?,
    })
}

fn object<'a>(value: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| format!("{what} is not an object"))
}

/// A key in lowerCamelCase or its protobuf (snake_case) name.
fn get<'a>(map: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    map.get(camel)
        .or_else(|| map.get(snake))
        .filter(|v| !v.is_null())
}

fn array<'a>(map: &'a Map<String, Value>, camel: &str, snake: &str) -> Result<&'a [Value], String> {
    match get(map, camel, snake) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(format!("{camel} is not an array")),
    }
}

fn string(map: &Map<String, Value>, camel: &str, snake: &str) -> Result<String, String> {
    match get(map, camel, snake) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("{camel} is not a string")),
    }
}

/// A 64-bit integer: a JSON number or a decimal string.
fn integer(map: &Map<String, Value>, camel: &str, snake: &str) -> Result<i128, String> {
    match get(map, camel, snake) {
        None => Ok(0),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .ok_or_else(|| format!("{camel} is not an integer")),
        Some(Value::String(s)) => s
            .parse::<i128>()
            .map_err(|_| format!("{camel} is not an integer: {s:?}")),
        Some(_) => Err(format!("{camel} is not an integer")),
    }
}

fn hex_bytes(map: &Map<String, Value>, camel: &str, snake: &str) -> Result<Vec<u8>, String> {
    let text = string(map, camel, snake)?;
    if text.len() % 2 != 0 {
        return Err(format!("{camel} is not hex: {text:?}"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("{camel} is not hex: {text:?}"))
        })
        .collect()
}

fn key_values(
    map: &Map<String, Value>,
    camel: &str,
    snake: &str,
) -> Result<Vec<wire::KeyValue>, String> {
    array(map, camel, snake)?
        .iter()
        .map(|kv| {
            let kv = object(kv, "an attribute")?;
            Ok(wire::KeyValue {
                key: string(kv, "key", "key")?,
                value: match get(kv, "value", "value") {
                    None => None,
                    Some(v) => Some(any_value(v)?),
                },
            })
        })
        .collect()
}

fn any_value(value: &Value) -> Result<wire::AnyValue, String> {
    let map = object(value, "an AnyValue")?;
    let value = if let Some(v) = get(map, "stringValue", "string_value") {
        Some(wire::Value::String(
            v.as_str().ok_or("stringValue is not a string")?.to_string(),
        ))
    } else if let Some(v) = get(map, "boolValue", "bool_value") {
        Some(wire::Value::Bool(
            v.as_bool().ok_or("boolValue is not a boolean")?,
        ))
    } else if get(map, "intValue", "int_value").is_some() {
        let i = integer(map, "intValue", "int_value")?;
        Some(wire::Value::Int(
            i64::try_from(i).map_err(|_| "intValue is out of range".to_string())?,
        ))
    } else if let Some(v) = get(map, "doubleValue", "double_value") {
        Some(wire::Value::Double(match v {
            Value::Number(n) => n.as_f64().ok_or("doubleValue is not a number")?,
            Value::String(s) => s.parse().map_err(|_| "doubleValue is not a number")?,
            _ => return Err("doubleValue is not a number".into()),
        }))
    } else if let Some(v) = get(map, "arrayValue", "array_value") {
        Some(wire::Value::Array(wire::ArrayValue {
            values: array(object(v, "arrayValue")?, "values", "values")?
                .iter()
                .map(any_value)
                .collect::<Result<_, _>>()?,
        }))
    } else if let Some(v) = get(map, "kvlistValue", "kvlist_value") {
        Some(wire::Value::KvList(wire::KeyValueList {
            values: key_values(object(v, "kvlistValue")?, "values", "values")?,
        }))
    } else if let Some(v) = get(map, "bytesValue", "bytes_value") {
        Some(wire::Value::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().ok_or("bytesValue is not a string")?)
                .map_err(|_| "bytesValue is not base64".to_string())?,
        ))
    } else {
        None
    };
    Ok(wire::AnyValue { value })
}

fn resource_logs(value: &Value) -> Result<wire::ResourceLogs, String> {
    let map = object(value, "a resourceLogs item")?;
    let resource = match get(map, "resource", "resource") {
        None => None,
        Some(r) => Some(wire::Resource {
            attributes: key_values(object(r, "resource")?, "attributes", "attributes")?,
            dropped_attributes_count: 0,
        }),
    };
    Ok(wire::ResourceLogs {
        resource,
        scope_logs: array(map, "scopeLogs", "scope_logs")?
            .iter()
            .map(scope_logs)
            .collect::<Result<_, _>>()?,
        schema_url: string(map, "schemaUrl", "schema_url")?,
    })
}

fn scope_logs(value: &Value) -> Result<wire::ScopeLogs, String> {
    let map = object(value, "a scopeLogs item")?;
    let scope = match get(map, "scope", "scope") {
        None => None,
        Some(s) => {
            let s = object(s, "scope")?;
            Some(wire::InstrumentationScope {
                name: string(s, "name", "name")?,
                version: string(s, "version", "version")?,
                attributes: key_values(s, "attributes", "attributes")?,
            })
        }
    };
    Ok(wire::ScopeLogs {
        scope,
        log_records: array(map, "logRecords", "log_records")?
            .iter()
            .map(log_record)
            .collect::<Result<_, _>>()?,
        schema_url: string(map, "schemaUrl", "schema_url")?,
    })
}

fn log_record(value: &Value) -> Result<wire::LogRecord, String> {
    let map = object(value, "a logRecord")?;
    let time = |camel, snake| -> Result<u64, String> {
        u64::try_from(integer(map, camel, snake)?).map_err(|_| format!("{camel} is out of range"))
    };
    Ok(wire::LogRecord {
        time_unix_nano: time("timeUnixNano", "time_unix_nano")?,
        observed_time_unix_nano: time("observedTimeUnixNano", "observed_time_unix_nano")?,
        severity_number: match get(map, "severityNumber", "severity_number") {
            // Enums may be written by name in the JSON mapping.
            Some(Value::String(name)) if name.starts_with("SEVERITY_NUMBER_") => {
                severity_by_name(name)
            }
            _ => i32::try_from(integer(map, "severityNumber", "severity_number")?)
                .map_err(|_| "severityNumber is out of range".to_string())?,
        },
        severity_text: string(map, "severityText", "severity_text")?,
        body: match get(map, "body", "body") {
            None => None,
            Some(b) => Some(any_value(b)?),
        },
        attributes: key_values(map, "attributes", "attributes")?,
        dropped_attributes_count: 0,
        flags: 0,
        trace_id: hex_bytes(map, "traceId", "trace_id")?,
        span_id: hex_bytes(map, "spanId", "span_id")?,
        event_name: string(map, "eventName", "event_name")?,
    })
}

fn severity_by_name(name: &str) -> i32 {
    let base = |level: &str| match level {
        "TRACE" => 1,
        "DEBUG" => 5,
        "INFO" => 9,
        "WARN" => 13,
        "ERROR" => 17,
        "FATAL" => 21,
        _ => 0,
    };
    let rest = name.trim_start_matches("SEVERITY_NUMBER_");
    let level: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    let offset: i32 = rest[level.len()..].parse().unwrap_or(1);
    match base(&level) {
        0 => 0,
        b => b + offset.clamp(1, 4) - 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: wire::Value) -> wire::KeyValue {
        wire::KeyValue {
            key: key.into(),
            value: Some(wire::AnyValue { value: Some(value) }),
        }
    }

    fn sample() -> wire::ExportLogsServiceRequest {
        wire::ExportLogsServiceRequest {
            resource_logs: vec![wire::ResourceLogs {
                resource: Some(wire::Resource {
                    attributes: vec![
                        kv("service.name", wire::Value::String("checkout".into())),
                        kv("host.name", wire::Value::String("node-1".into())),
                        kv("k8s.pod.name", wire::Value::String("checkout-7f".into())),
                    ],
                    dropped_attributes_count: 0,
                }),
                scope_logs: vec![wire::ScopeLogs {
                    scope: Some(wire::InstrumentationScope {
                        name: "app.payments".into(),
                        ..Default::default()
                    }),
                    log_records: vec![wire::LogRecord {
                        time_unix_nano: 1_795_428_000_123_456_789,
                        severity_number: 17,
                        severity_text: "ERROR".into(),
                        body: Some(wire::AnyValue {
                            value: Some(wire::Value::String("card declined".into())),
                        }),
                        attributes: vec![
                            kv("http.status_code", wire::Value::Int(502)),
                            kv("retry", wire::Value::Bool(true)),
                            kv(
                                "ctx",
                                wire::Value::KvList(wire::KeyValueList {
                                    values: vec![kv("user", wire::Value::String("u1".into()))],
                                }),
                            ),
                        ],
                        trace_id: vec![0xab; 16],
                        span_id: vec![0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08],
                        ..Default::default()
                    }],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    #[test]
    fn maps_resource_severity_ids_body_and_attributes() {
        let output = to_records(sample(), &mut |_| Ok(())).expect("mapped");
        assert_eq!(output.records.len(), 1);
        let e = &output.records[0].entry;
        assert_eq!(e.service, "checkout");
        assert_eq!(e.host, "node-1");
        assert_eq!(e.level_enum(), Level::Error);
        assert_eq!(e.timestamp, 1_795_428_000_123_456_789);
        assert_eq!(e.message, "card declined");
        assert_eq!(e.trace_id, "ab".repeat(16));
        assert_eq!(e.fields["span_id"].to_text(), "0102030405060708");
        assert_eq!(e.fields["k8s.pod.name"].to_text(), "checkout-7f");
        assert_eq!(e.fields["http.status_code"], FieldValue::int(502));
        assert_eq!(e.fields["retry"], FieldValue::bool(true));
        assert_eq!(e.fields["ctx.user"].to_text(), "u1");
        assert_eq!(e.fields["otel.scope.name"].to_text(), "app.payments");
    }

    #[test]
    fn json_encoding_decodes_to_the_same_request() {
        let body = br#"{"resourceLogs":[{"resource":{"attributes":[
            {"key":"service.name","value":{"stringValue":"checkout"}},
            {"key":"host.name","value":{"stringValue":"node-1"}},
            {"key":"k8s.pod.name","value":{"stringValue":"checkout-7f"}}]},
          "scopeLogs":[{"scope":{"name":"app.payments"},"logRecords":[{
            "timeUnixNano":"1795428000123456789","severityNumber":17,"severityText":"ERROR",
            "body":{"stringValue":"card declined"},
            "attributes":[{"key":"http.status_code","value":{"intValue":"502"}},
                          {"key":"retry","value":{"boolValue":true}},
                          {"key":"ctx","value":{"kvlistValue":{"values":[{"key":"user","value":{"stringValue":"u1"}}]}}}],
            "traceId":"abababababababababababababababab","spanId":"0102030405060708"}]}]}]}"#;
        assert_eq!(from_json(body).expect("valid"), sample());
    }

    #[test]
    fn json_errors_name_the_offending_key() {
        for (body, needle) in [
            (
                &br#"{"resourceLogs":{}}"#[..],
                "resourceLogs is not an array",
            ),
            (
                br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"xyz"}]}]}]}"#,
                "traceId is not hex",
            ),
            (
                br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":"-1"}]}]}]}"#,
                "out of range",
            ),
            (br#"[1]"#, "not an object"),
        ] {
            let error = from_json(body).expect_err("invalid");
            assert!(error.contains(needle), "{needle:?} not in {error:?}");
        }
    }

    #[test]
    fn severity_names_and_text_fallback() {
        assert_eq!(severity_by_name("SEVERITY_NUMBER_WARN"), 13);
        assert_eq!(severity_by_name("SEVERITY_NUMBER_ERROR3"), 19);
        assert_eq!(severity_by_name("SEVERITY_NUMBER_UNSPECIFIED"), 0);
        let mut entry = LogEntry::default();
        map_record(
            wire::LogRecord {
                severity_text: "warning".into(),
                observed_time_unix_nano: 5,
                body: Some(wire::AnyValue {
                    value: Some(wire::Value::KvList(wire::KeyValueList {
                        values: vec![kv("a", wire::Value::Int(1))],
                    })),
                }),
                ..Default::default()
            },
            &mut entry,
        );
        assert_eq!(entry.level_enum(), Level::Warn);
        assert_eq!(entry.timestamp, 5);
        assert_eq!(entry.message, r#"{"a":1}"#);
    }
}
