//! Loki push: `POST /loki/api/v1/push` with a snappy-compressed protobuf `PushRequest`
//! (`application/x-protobuf`, what Promtail, Alloy and the Loki clients send) or JSON
//! (`application/json`, optionally gzip: `{"streams":[{"stream":{labels},"values":[["<unix
//! ns>","<line>",{structured metadata}]]}]}`).
//!
//! Mapping: the line is the message and the timestamp is the entry's. Stream labels: the first
//! of `service`, `service_name`, `app`, `application`, `job` names the service (else
//! `unknown`); the first of `level`, `severity`, `detected_level`, `lvl` the level; `host` or
//! `hostname` the host; every other label, and every structured-metadata pair, is kept as a
//! field under its own name (`trace_id` in structured metadata becomes the trace id).
//!
//! Answers as Loki gives them: 204 once every line is durable; 400 with a plain-text reason for
//! a body or labels that do not decode, and when a schema refused some lines (the others are
//! stored, and Promtail does not resend a 400); 413 over the size limit; 415 for another
//! content type; 429 and 503 with `Retry-After`, which shippers retry.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use logcluster_proto::{AckStatus, FieldValue, Level, LogEntry};
use prost::Message;
use serde_json::Value;

use super::{BodyError, Compat};
use crate::decode::{DecodeOutput, Decoded, RejectReason};
use crate::pipeline::BatchSource;

/// Loki's push messages (field numbers of Loki's `push.proto`).
pub mod wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushRequest {
        #[prost(message, repeated, tag = "1")]
        pub streams: Vec<Stream>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Stream {
        /// Labels in Prometheus text form: `{app="web", level="info"}`.
        #[prost(string, tag = "1")]
        pub labels: String,
        #[prost(message, repeated, tag = "2")]
        pub entries: Vec<Entry>,
        #[prost(uint64, tag = "3")]
        pub hash: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Entry {
        #[prost(message, optional, tag = "1")]
        pub timestamp: Option<Timestamp>,
        #[prost(string, tag = "2")]
        pub line: String,
        #[prost(message, repeated, tag = "3")]
        pub structured_metadata: Vec<LabelPair>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPair {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `google.protobuf.Timestamp`.
    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Timestamp {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }
}

pub(super) fn router(compat: Arc<Compat>) -> Router {
    Router::new()
        .route("/loki/api/v1/push", post(push))
        .with_state(compat)
}

/// The answer when the ingest budget is full.
pub(super) fn busy(_: &HeaderMap) -> Response {
    text(StatusCode::TOO_MANY_REQUESTS, crate::http_bodies::BUSY)
}

fn text(status: StatusCode, message: &str) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response();
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        response = super::retry_after(response);
    }
    response
}

async fn push(State(compat): State<Arc<Compat>>, headers: HeaderMap, body: Body) -> Response {
    let protobuf = match super::media_type(&headers).as_deref() {
        // Loki treats a push without a content type as protobuf.
        None | Some("") | Some("application/x-protobuf") => true,
        Some("application/json") => false,
        Some(other) => {
            compat.protocol_error("loki", "unsupported_media_type");
            return text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!(
                    "unsupported Content-Type {other:?}: Loki push takes application/x-protobuf (snappy) or application/json"
                ),
            );
        }
    };
    let body = match compat.read_body("loki", &headers, body).await {
        Ok(body) => body,
        Err(error @ BodyError::TooLarge(_)) => {
            return text(StatusCode::PAYLOAD_TOO_LARGE, &error.message());
        }
        Err(BodyError::Busy) => return busy(&headers),
        Err(error) => return text(StatusCode::BAD_REQUEST, &error.message()),
    };
    let body = if protobuf
        && super::header_text(&headers, "content-encoding").is_none_or(|e| e.trim().is_empty())
    {
        match super::snappy_body(&compat.pipeline, body, compat.options.max_body_bytes).await {
            Ok(body) => body,
            Err(BodyError::Busy) => {
                compat.pipeline.metrics().count_busy();
                return busy(&headers);
            }
            Err(error) => {
                compat.protocol_error("loki", error.metric_kind());
                let status = match error {
                    BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                    _ => StatusCode::BAD_REQUEST,
                };
                return text(status, &error.message());
            }
        }
    } else {
        body
    };
    let source = BatchSource {
        format: "loki",
        tenant: super::tenant(&headers),
        batch_id: 0,
    };
    let len = body.len();
    let Some(result) = compat
        .ingest(source, len, move |limits| {
            let request = if protobuf {
                wire::PushRequest::decode(&body[..]).map_err(|e| {
                    (
                        RejectReason::InvalidProtobuf,
                        format!("body is not a Loki PushRequest: {e}"),
                    )
                })?
            } else {
                from_json(&body).map_err(|e| {
                    (
                        RejectReason::InvalidJson,
                        format!("body is not a Loki JSON push: {e}"),
                    )
                })?
            };
            to_records(request, &mut |bytes| limits.admit(bytes))
        })
        .await
    else {
        return busy(&headers);
    };
    match result.status {
        AckStatus::Accepted => StatusCode::NO_CONTENT.into_response(),
        AckStatus::RetryLater => text(StatusCode::SERVICE_UNAVAILABLE, &result.error),
        AckStatus::Partial => text(
            StatusCode::BAD_REQUEST,
            &format!(
                "{} of {} lines refused, the others were stored; {}",
                result.rejected,
                result.rejected + result.accepted,
                result.error
            ),
        ),
        AckStatus::Rejected | AckStatus::ProtocolError => {
            text(StatusCode::BAD_REQUEST, &result.error)
        }
    }
}

/// Maps a push onto records; an unparsable label set refuses the whole push, and so does
/// `admit` (called with each record's size before it is made: see
/// [`super::MapLimits::admit`]).
pub fn to_records(
    request: wire::PushRequest,
    admit: &mut dyn FnMut(usize) -> Result<(), (RejectReason, String)>,
) -> Result<DecodeOutput, (RejectReason, String)> {
    let mut output = DecodeOutput::default();
    for (n, stream) in request.streams.into_iter().enumerate() {
        let labels = parse_labels(&stream.labels).map_err(|e| {
            (
                RejectReason::InvalidLabels,
                format!("stream {n}: labels {:?}: {e}", stream.labels),
            )
        })?;
        let base = base_entry(labels);
        for entry in stream.entries {
            let metadata: usize = entry
                .structured_metadata
                .iter()
                .map(|pair| {
                    super::mapped_size(&LogEntry::default(), pair.name.len() + pair.value.len())
                })
                .sum();
            admit(super::mapped_size(&base, entry.line.len()) + metadata)?;
            let mut record = base.clone();
            record.timestamp = entry
                .timestamp
                .map(|t| {
                    t.seconds
                        .saturating_mul(1_000_000_000)
                        .saturating_add(i64::from(t.nanos))
                })
                .unwrap_or(0)
                .max(0);
            record.message = entry.line;
            for pair in entry.structured_metadata {
                put_metadata(&mut record, pair.name, pair.value);
            }
            output.records.push(Decoded {
                entry: record,
                original: None,
            });
        }
    }
    Ok(output)
}

fn put_metadata(record: &mut LogEntry, name: String, value: String) {
    if name == "trace_id" || name == "traceID" {
        record.trace_id = value;
    } else {
        record.fields.insert(name, FieldValue::str(value));
    }
}

const SERVICE_LABELS: [&str; 5] = ["service", "service_name", "app", "application", "job"];
const LEVEL_LABELS: [&str; 4] = ["level", "severity", "detected_level", "lvl"];
const HOST_LABELS: [&str; 2] = ["host", "hostname"];

fn base_entry(mut labels: Vec<(String, String)>) -> LogEntry {
    let mut entry = LogEntry::default();
    let mut take = |names: &[&str]| -> Option<String> {
        let at = names
            .iter()
            .find_map(|name| labels.iter().position(|(k, _)| k == name))?;
        Some(labels.remove(at).1)
    };
    entry.service = take(&SERVICE_LABELS).unwrap_or_default();
    if let Some(level) = take(&LEVEL_LABELS) {
        match Level::parse(&level) {
            Some(parsed) => entry.level = parsed as i32,
            None => {
                entry
                    .fields
                    .insert("level_raw".into(), FieldValue::str(level));
            }
        }
    }
    entry.host = take(&HOST_LABELS).unwrap_or_default();
    for (name, value) in labels {
        entry.fields.insert(name, FieldValue::str(value));
    }
    entry
}

/// Parses a Prometheus label set: `{name="value", …}` with `\\`, `\"` and `\n` escapes.
pub fn parse_labels(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut chars = text.trim().char_indices().peekable();
    let text = text.trim();
    let mut labels = Vec::new();
    match chars.next() {
        Some((_, '{')) => {}
        _ => return Err("expected '{' at position 0".into()),
    }
    let skip_ws = |chars: &mut std::iter::Peekable<std::str::CharIndices>| {
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
    };
    loop {
        skip_ws(&mut chars);
        match chars.peek() {
            Some((_, '}')) if labels.is_empty() => {
                chars.next();
                break;
            }
            None => return Err("unterminated label set: expected '}'".into()),
            _ => {}
        }
        let mut name = String::new();
        while let Some((_, c)) = chars.peek() {
            if c.is_ascii_alphanumeric() || *c == '_' {
                name.push(*c);
                chars.next();
            } else {
                break;
            }
        }
        let position = chars.peek().map_or(text.len(), |(i, _)| *i);
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("expected a label name at position {position}"));
        }
        skip_ws(&mut chars);
        if chars.next().map(|(_, c)| c) != Some('=') {
            return Err(format!("expected '=' after label {name:?}"));
        }
        skip_ws(&mut chars);
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("expected '\"' to open the value of {name:?}"));
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                None => return Err(format!("unterminated value of {name:?}")),
                Some((_, '"')) => break,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    Some((at, c)) => {
                        return Err(format!("unknown escape \\{c} at position {at}"));
                    }
                    None => return Err(format!("unterminated value of {name:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        }
        labels.push((name, value));
        skip_ws(&mut chars);
        match chars.next() {
            Some((_, ',')) => continue,
            Some((_, '}')) => break,
            Some((at, c)) => {
                return Err(format!(
                    "expected ',' or '}}' at position {at}, found {c:?}"
                ));
            }
            None => return Err("unterminated label set: expected '}'".into()),
        }
    }
    skip_ws(&mut chars);
    if let Some((at, _)) = chars.next() {
        return Err(format!("unexpected text after '}}' at position {at}"));
    }
    Ok(labels)
}

/// Parses Loki's JSON push into the protobuf structs.
pub fn from_json(body: &[u8]) -> Result<wire::PushRequest, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let streams = value
        .get("streams")
        .and_then(Value::as_array)
        .ok_or("expected an object with a \"streams\" array")?;
    let mut request = wire::PushRequest::default();
    for (n, stream) in streams.iter().enumerate() {
        let labels = stream
            .get("stream")
            .and_then(Value::as_object)
            .ok_or_else(|| format!("streams[{n}].stream is not an object"))?;
        let mut label_pairs = Vec::with_capacity(labels.len());
        for (name, value) in labels {
            let value = value
                .as_str()
                .ok_or_else(|| format!("streams[{n}].stream.{name} is not a string"))?;
            label_pairs.push((name.clone(), value.to_string()));
        }
        let values = stream
            .get("values")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("streams[{n}].values is not an array"))?;
        let mut entries = Vec::with_capacity(values.len());
        for (i, value) in values.iter().enumerate() {
            let at = || format!("streams[{n}].values[{i}]");
            let tuple = value
                .as_array()
                .filter(|t| t.len() == 2 || t.len() == 3)
                .ok_or_else(|| {
                    format!(
                        "{} is not [timestamp, line] or [timestamp, line, metadata]",
                        at()
                    )
                })?;
            let nanos: i64 = match &tuple[0] {
                Value::String(s) => s
                    .parse()
                    .map_err(|_| format!("{}: timestamp {s:?} is not unix nanoseconds", at()))?,
                Value::Number(n) => n
                    .as_i64()
                    .ok_or_else(|| format!("{}: timestamp is not an integer", at()))?,
                _ => return Err(format!("{}: timestamp is not a string", at())),
            };
            let line = tuple[1]
                .as_str()
                .ok_or_else(|| format!("{}: line is not a string", at()))?
                .to_string();
            let mut metadata = Vec::new();
            if let Some(meta) = tuple.get(2) {
                let meta = meta
                    .as_object()
                    .ok_or_else(|| format!("{}: structured metadata is not an object", at()))?;
                for (name, value) in meta {
                    metadata.push(wire::LabelPair {
                        name: name.clone(),
                        value: match value {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        },
                    });
                }
            }
            entries.push(wire::Entry {
                timestamp: Some(wire::Timestamp {
                    seconds: nanos.div_euclid(1_000_000_000),
                    nanos: nanos.rem_euclid(1_000_000_000) as i32,
                }),
                line,
                structured_metadata: metadata,
            });
        }
        request.streams.push(wire::Stream {
            labels: format_labels(&label_pairs),
            entries,
            hash: 0,
        });
    }
    Ok(request)
}

/// The Prometheus text form of a label set (used for JSON pushes, whose labels arrive as an
/// object, so both encodings share one mapping).
pub fn format_labels(labels: &[(String, String)]) -> String {
    let mut out = String::from("{");
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn labels_parse_with_escapes_and_whitespace() {
        assert_eq!(
            parse_labels(r#" { app="web" , level="info",msg="a \"q\" \\ b\nc"} "#).expect("valid"),
            vec![
                ("app".to_string(), "web".to_string()),
                ("level".to_string(), "info".to_string()),
                ("msg".to_string(), "a \"q\" \\ b\nc".to_string()),
            ]
        );
        assert_eq!(parse_labels("{}").expect("empty"), vec![]);
        for bad in [
            "app=\"x\"",
            "{app=x}",
            "{app=\"x\"",
            "{1a=\"x\"}",
            "{a=\"x\"} y",
            "{a=\"\\q\"}",
            "{a=\"x\" b=\"y\"}",
        ] {
            assert!(parse_labels(bad).is_err(), "{bad:?} parsed");
        }
    }

    proptest! {
        #[test]
        fn formatted_labels_parse_back(labels in proptest::collection::vec(("[a-z_][a-z0-9_]{0,8}", "\\PC{0,12}"), 0..5)) {
            let labels: Vec<(String, String)> = labels;
            prop_assert_eq!(parse_labels(&format_labels(&labels)).expect("formatted"), labels);
        }
    }

    #[test]
    fn labels_map_to_service_level_host_and_fields() {
        let request = wire::PushRequest {
            streams: vec![wire::Stream {
                labels: r#"{job="ns/api", app="checkout", severity="warning", hostname="n1", env="prod"}"#.into(),
                entries: vec![wire::Entry {
                    timestamp: Some(wire::Timestamp { seconds: 1_795_428_000, nanos: 42 }),
                    line: "slow upstream".into(),
                    structured_metadata: vec![
                        wire::LabelPair { name: "trace_id".into(), value: "abc".into() },
                        wire::LabelPair { name: "user".into(), value: "u1".into() },
                    ],
                }],
                hash: 0,
            }],
        };
        let output = to_records(request, &mut |_| Ok(())).expect("valid");
        let e = &output.records[0].entry;
        assert_eq!(e.service, "checkout");
        assert_eq!(e.level_enum(), Level::Warn);
        assert_eq!(e.host, "n1");
        assert_eq!(e.timestamp, 1_795_428_000_000_000_042);
        assert_eq!(e.message, "slow upstream");
        assert_eq!(e.trace_id, "abc");
        assert_eq!(e.fields["job"].to_text(), "ns/api");
        assert_eq!(e.fields["env"].to_text(), "prod");
        assert_eq!(e.fields["user"].to_text(), "u1");
        assert!(!e.fields.contains_key("app"));
    }

    #[test]
    fn json_push_matches_protobuf_mapping() {
        let body = br#"{"streams":[{"stream":{"service":"billing","level":"error"},"values":[["1795428000000000007","boom",{"order":"42"}],["1795428001000000000","again"]]}]}"#;
        let request = from_json(body).expect("valid");
        let output = to_records(request, &mut |_| Ok(())).expect("valid");
        assert_eq!(output.records.len(), 2);
        let e = &output.records[0].entry;
        assert_eq!(
            (e.service.as_str(), e.level_enum(), e.timestamp),
            ("billing", Level::Error, 1_795_428_000_000_000_007)
        );
        assert_eq!(e.fields["order"].to_text(), "42");
        for (bad, needle) in [
            (&br#"{"streams":{}}"#[..], "streams"),
            (
                br#"{"streams":[{"stream":{"a":1},"values":[]}]}"#,
                "stream.a is not a string",
            ),
            (
                br#"{"streams":[{"stream":{},"values":[["x","l"]]}]}"#,
                "not unix nanoseconds",
            ),
            (
                br#"{"streams":[{"stream":{},"values":[["1"]]}]}"#,
                "values[0]",
            ),
        ] {
            let error = from_json(bad).expect_err("invalid");
            assert!(error.contains(needle), "{needle:?} not in {error:?}");
        }
    }
}
