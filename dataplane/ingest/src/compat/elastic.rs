//! The Elasticsearch-compatible bulk API: `POST|PUT /_bulk` and `/<index>/_bulk` with `index`
//! and `create` actions, answered item by item in Elasticsearch's response format, plus the
//! probes shippers make before sending (`GET /` — routed by the node, which shares `/` with the
//! dashboard —, `GET /_cluster/health`, `GET /_license`).
//!
//! Every answer carries `X-Elastic-Product: Elasticsearch`, which current clients check.
//!
//! Mapping: each document goes through the lenient JSON mapping (`@timestamp`, `message`,
//! `log.level`, `service.name`, `host.name`, `trace.id`, … — see [`crate::decode::json`]); its
//! service is [`ElasticOptions::service_field`] when set and present, else the document's own
//! service keys, else (with [`ElasticOptions::index_as_service`]) the target index. The index
//! and a client-given `_id` are kept as the fields `_index` and `_id`.
//!
//! Status codes: 200 with per-item results once the stored items are durable (`errors: true`
//! when any item failed: 400 for a document that does not parse or that a schema refuses, 400
//! for the unsupported `update` and `delete` actions); a malformed action line fails the whole
//! request with 400, as in Elasticsearch; 413 over the size limit; 429 with `Retry-After` when
//! the ingest budget is exhausted; 503 with `Retry-After` when storage cannot take the batch.
//!
//! Idempotency: when every `index`/`create` action names an `_id`, the request body's hash is
//! the batch id, so a shipper's retry of the same request is stored once (`create` items of a
//! retry answer 409 `version_conflict_engine_exception`, `index` items 200 `updated`, as
//! Elasticsearch would).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use logcluster_proto::{AckStatus, FieldValue};
use serde_json::{Map, Value, json};

use super::{BodyError, Compat};
use crate::decode::{self, DecodeContext, DecodeOutput, RecordError, RejectReason};
use crate::pipeline::BatchSource;

/// The version reported to shippers that check it (Filebeat, Vector's `api_version: auto`).
pub const REPORTED_VERSION: &str = "8.17.0";

/// How documents name their service (see the module documentation).
#[derive(Clone, Debug)]
pub struct ElasticOptions {
    pub service_field: Option<String>,
    pub index_as_service: bool,
}

impl Default for ElasticOptions {
    fn default() -> Self {
        ElasticOptions {
            service_field: None,
            index_as_service: true,
        }
    }
}

pub(super) fn router(compat: Arc<Compat>) -> Router {
    Router::new()
        .route("/_cluster/health", get(health))
        .route("/_license", get(license))
        .route("/_bulk", post(bulk_default).put(bulk_default))
        .route("/{index}/_bulk", post(bulk_index).put(bulk_index))
        .with_state(compat)
}

/// The answer when the ingest budget is full.
pub(super) fn busy(_: &HeaderMap) -> Response {
    super::retry_after(es_error(
        StatusCode::TOO_MANY_REQUESTS,
        "es_rejected_execution_exception",
        crate::http_bodies::BUSY,
    ))
}

fn product(mut response: Response) -> Response {
    response.headers_mut().insert(
        "x-elastic-product",
        HeaderValue::from_static("Elasticsearch"),
    );
    response
}

fn es_json(status: StatusCode, body: Value) -> Response {
    product((status, axum::Json(body)).into_response())
}

/// Elasticsearch's error body.
fn es_error(status: StatusCode, kind: &str, reason: &str) -> Response {
    es_json(
        status,
        json!({
            "error": {
                "root_cause": [{"type": kind, "reason": reason}],
                "type": kind,
                "reason": reason,
            },
            "status": status.as_u16(),
        }),
    )
}

/// The answer to `GET /` (served by the node's router, which shares `/` with the dashboard).
pub fn info_body(node_name: &str) -> Value {
    json!({
        "name": node_name,
        "cluster_name": "logcluster",
        "cluster_uuid": "logcluster",
        "version": {
            "number": REPORTED_VERSION,
            "build_flavor": "default",
            "build_type": "logcluster",
            "lucene_version": "9.12.0",
            "minimum_wire_compatibility_version": "7.17.0",
            "minimum_index_compatibility_version": "7.0.0",
        },
        "tagline": "LogCluster, speaking the Elasticsearch bulk API",
    })
}

/// `GET /` as an Elasticsearch client expects it.
pub fn info_response(node_name: &str) -> Response {
    es_json(StatusCode::OK, info_body(node_name))
}

async fn health() -> Response {
    es_json(
        StatusCode::OK,
        json!({
            "cluster_name": "logcluster",
            "status": "green",
            "timed_out": false,
            "number_of_nodes": 1,
            "number_of_data_nodes": 1,
            "active_primary_shards": 0,
            "active_shards": 0,
            "relocating_shards": 0,
            "initializing_shards": 0,
            "unassigned_shards": 0,
            "delayed_unassigned_shards": 0,
            "number_of_pending_tasks": 0,
            "number_of_in_flight_fetch": 0,
            "task_max_waiting_in_queue_millis": 0,
            "active_shards_percent_as_number": 100.0,
        }),
    )
}

async fn license() -> Response {
    es_json(
        StatusCode::OK,
        json!({"license": {"status": "active", "type": "basic", "mode": "basic", "uid": "logcluster"}}),
    )
}

async fn bulk_default(
    State(compat): State<Arc<Compat>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    bulk(compat, None, headers, body).await
}

async fn bulk_index(
    State(compat): State<Arc<Compat>>,
    Path(index): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    bulk(compat, Some(index), headers, body).await
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Index,
    Create,
    Update,
    Delete,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Index => "index",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// One action of a bulk request.
#[derive(Debug)]
struct Item {
    action: Action,
    index: String,
    id: Option<String>,
    /// Byte range of the document line in the body (index and create only).
    doc: Option<(usize, usize)>,
}

/// A malformed bulk request (the whole request fails).
#[derive(Debug, PartialEq)]
struct BulkError(String);

/// The start of the [`BulkError`] of a request of too many actions.
const TOO_MANY_ACTIONS: &str = "the request holds more than";

/// Splits a bulk body into its actions; documents stay as byte ranges of `body`.
/// The request's actions; more than `max_items` of them (documents or not) is an error:
/// each one is answered, and an answer item costs far more than its action line.
fn parse_bulk(
    body: &[u8],
    path_index: Option<&str>,
    max_items: usize,
) -> Result<Vec<Item>, BulkError> {
    let mut lines = Vec::new();
    let mut start = 0;
    for (at, byte) in body.iter().enumerate() {
        if *byte == b'\n' {
            lines.push((start, at));
            start = at + 1;
        }
    }
    if start < body.len() {
        lines.push((start, body.len()));
    }
    let lines: Vec<(usize, (usize, usize))> = lines
        .into_iter()
        .enumerate()
        .map(|(n, (s, mut e))| {
            if e > s && body[e - 1] == b'\r' {
                e -= 1;
            }
            (n + 1, (s, e))
        })
        .filter(|(_, (s, e))| !body[*s..*e].iter().all(u8::is_ascii_whitespace))
        .collect();
    let mut items = Vec::new();
    let mut next = lines.into_iter();
    while let Some((number, (s, e))) = next.next() {
        if items.len() == max_items {
            return Err(BulkError(format!(
                "{TOO_MANY_ACTIONS} {max_items} actions (ingest.maxBatchRecords); send smaller requests"
            )));
        }
        let malformed = |detail: &str| {
            BulkError(format!(
                "Malformed action/metadata line [{number}], {detail}"
            ))
        };
        let line: Map<String, Value> = serde_json::from_slice(&body[s..e])
            .map_err(|error| malformed(&format!("expected a JSON object: {error}")))?;
        if line.len() != 1 {
            return Err(malformed(&format!(
                "expected exactly one action but found {}",
                line.len()
            )));
        }
        let (name, meta) = line.into_iter().next().expect("one entry");
        let action = match name.as_str() {
            "index" => Action::Index,
            "create" => Action::Create,
            "update" => Action::Update,
            "delete" => Action::Delete,
            other => {
                return Err(malformed(&format!(
                    "expected one of [create, delete, index, update] but found [{other}]"
                )));
            }
        };
        let Value::Object(meta) = meta else {
            return Err(malformed("the action's metadata is not an object"));
        };
        let index = match meta.get("_index") {
            Some(Value::String(index)) if !index.is_empty() => index.clone(),
            Some(Value::String(_)) | None => match path_index {
                Some(index) => index.to_string(),
                None => return Err(BulkError(format!("index is missing (line [{number}])"))),
            },
            Some(_) => return Err(malformed("_index is not a string")),
        };
        let id = match meta.get("_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) => Some(id.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(_) => return Err(malformed("_id is not a string")),
        };
        let doc = match action {
            Action::Delete => None,
            Action::Index | Action::Create | Action::Update => match next.next() {
                Some((_, range)) => Some(range),
                None => {
                    return Err(BulkError(format!(
                        "the {} action on line [{number}] has no document line",
                        action.name()
                    )));
                }
            },
        };
        items.push(Item {
            action,
            index,
            id,
            doc: if action == Action::Update { None } else { doc },
        });
    }
    Ok(items)
}

/// FNV-1a: a stable 64-bit hash of the body, the batch id of a request whose items all carry
/// an `_id`.
fn body_hash(body: &[u8]) -> u64 {
    logcluster_common::ids::fnv1a64(body).max(1)
}

/// Decodes the documents of `items` (in order) into pipeline records; an error's index is the
/// document's ordinal among them.
fn decode_documents(body: &[u8], items: &[Item], options: &ElasticOptions) -> DecodeOutput {
    let mut output = DecodeOutput::default();
    for (ordinal, item) in items.iter().filter(|i| i.doc.is_some()).enumerate() {
        let (s, e) = item.doc.expect("filtered");
        let value: Value = match serde_json::from_slice(&body[s..e]) {
            Ok(value) => value,
            Err(error) => {
                output.errors.push(RecordError::new(
                    ordinal,
                    RejectReason::InvalidJson,
                    format!("failed to parse the document: {error}"),
                ));
                continue;
            }
        };
        let ctx = DecodeContext {
            default_service: if options.index_as_service {
                item.index.clone()
            } else {
                String::new()
            },
            ..DecodeContext::default()
        };
        match decode::decode_json_value(value, &ctx) {
            Ok(mut decoded) => {
                let entry = &mut decoded.entry;
                if let Some(field) = &options.service_field
                    && let Some(service) = entry.fields.remove(field)
                {
                    entry.service = service.to_text();
                }
                entry
                    .fields
                    .insert("_index".into(), FieldValue::str(item.index.clone()));
                if let Some(id) = &item.id {
                    entry
                        .fields
                        .insert("_id".into(), FieldValue::str(id.clone()));
                }
                output.records.push(decoded);
            }
            Err(mut error) => {
                error.index = ordinal;
                output.errors.push(error);
            }
        }
    }
    output
}

async fn bulk(
    compat: Arc<Compat>,
    path_index: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let body = match compat.read_body("elasticsearch", &headers, body).await {
        Ok(body) => body,
        Err(error @ BodyError::TooLarge(_)) => {
            return es_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "content_too_long_exception",
                &error.message(),
            );
        }
        Err(BodyError::Busy) => return busy(&headers),
        Err(error) => {
            return es_error(StatusCode::BAD_REQUEST, "parse_exception", &error.message());
        }
    };
    if let Some(media) = super::media_type(&headers)
        && !(media.contains("json") || media == "text/plain" || media.is_empty())
    {
        compat.protocol_error("elasticsearch", "unsupported_media_type");
        return es_error(
            StatusCode::NOT_ACCEPTABLE,
            "media_type_header_exception",
            &format!(
                "Content-Type {media:?} is not supported: send application/x-ndjson or application/json"
            ),
        );
    }
    let items = match parse_bulk(
        &body,
        path_index.as_deref(),
        compat.pipeline.max_batch_records(),
    ) {
        Ok(items) => items,
        Err(BulkError(reason)) if reason.starts_with(TOO_MANY_ACTIONS) => {
            compat
                .pipeline
                .metrics()
                .count_rejected("elasticsearch", "too_many_records", 1);
            return es_error(
                StatusCode::BAD_REQUEST,
                "illegal_argument_exception",
                &reason,
            );
        }
        Err(BulkError(reason)) => {
            compat.protocol_error("elasticsearch", "malformed_bulk");
            return es_error(
                StatusCode::BAD_REQUEST,
                "illegal_argument_exception",
                &reason,
            );
        }
    };
    let unsupported = items.iter().filter(|i| i.doc.is_none()).count();
    if unsupported > 0 {
        compat.pipeline.metrics().count_rejected(
            "elasticsearch",
            "unsupported_action",
            unsupported as u64,
        );
    }
    let with_docs: Vec<&Item> = items.iter().filter(|i| i.doc.is_some()).collect();
    let all_have_ids = !with_docs.is_empty() && with_docs.iter().all(|i| i.id.is_some());
    let source = BatchSource {
        format: "elasticsearch",
        tenant: super::tenant(&headers),
        batch_id: if all_have_ids { body_hash(&body) } else { 0 },
    };
    let options = compat.options.elastic.clone();
    let len = body.len();
    let (result, items) = {
        let body: Bytes = body.clone();
        let items = Arc::new(items);
        let for_decode = items.clone();
        let result = compat
            .ingest(source, len, move |_| {
                Ok(decode_documents(&body, &for_decode, &options))
            })
            .await;
        (result, items)
    };
    let Some(result) = result else {
        return busy(&HeaderMap::new());
    };
    if result.status == AckStatus::RetryLater {
        return super::retry_after(es_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable_shards_exception",
            &result.error,
        ));
    }
    // The request as a whole was refused (more documents than a batch may hold): no item
    // was stored, so none may be answered as created.
    if result.status == AckStatus::Rejected && result.record_errors.is_empty() {
        return es_error(
            StatusCode::BAD_REQUEST,
            "illegal_argument_exception",
            &result.error,
        );
    }
    // Answer item by item. Records were numbered among the documents; stored records among
    // the documents that decoded.
    let mut errors = result.record_errors.iter().peekable();
    let mut decode_failures_before = 0u32;
    let mut ordinal = 0usize;
    let mut any_error = false;
    let mut answers = Vec::with_capacity(items.len());
    for item in items.iter() {
        let mut answer = Map::new();
        answer.insert("_index".into(), Value::String(item.index.clone()));
        let outcome: Result<(), (u16, &str, String)> = if item.doc.is_none() {
            Err((
                400,
                "illegal_argument_exception",
                format!(
                    "the {} action is not supported: LogCluster stores logs append-only",
                    item.action.name()
                ),
            ))
        } else {
            let this = ordinal;
            ordinal += 1;
            match errors.peek() {
                Some(error) if error.index == this => {
                    let error = errors.next().expect("peeked");
                    // Refused after decoding: such a record still took its position.
                    if !error.reason.after_decoding() {
                        decode_failures_before += 1;
                    }
                    Err((400, "document_parsing_exception", error.message.clone()))
                }
                _ => {
                    let position = this as u32 - decode_failures_before;
                    let id = item.id.clone().unwrap_or_else(|| {
                        logcluster_common::ids::entry_id(result.batch_uid, position)
                    });
                    answer.insert("_id".into(), Value::String(id));
                    Ok(())
                }
            }
        };
        match outcome {
            Ok(()) if result.duplicate && item.action == Action::Create => {
                any_error = true;
                let reason = "version conflict, document already exists";
                answer.insert("status".into(), json!(409));
                answer.insert(
                    "error".into(),
                    json!({"type": "version_conflict_engine_exception", "reason": reason}),
                );
            }
            Ok(()) => {
                let (status, result_name, version) = if result.duplicate {
                    (200, "updated", 2)
                } else {
                    (201, "created", 1)
                };
                answer.insert("_version".into(), json!(version));
                answer.insert("result".into(), json!(result_name));
                answer.insert(
                    "_shards".into(),
                    json!({"total": 1, "successful": 1, "failed": 0}),
                );
                answer.insert("_seq_no".into(), json!(0));
                answer.insert("_primary_term".into(), json!(1));
                answer.insert("status".into(), json!(status));
            }
            Err((status, kind, reason)) => {
                any_error = true;
                if let Some(id) = &item.id {
                    answer.insert("_id".into(), Value::String(id.clone()));
                }
                answer.insert("status".into(), json!(status));
                answer.insert("error".into(), json!({"type": kind, "reason": reason}));
            }
        }
        let mut wrapped = Map::new();
        wrapped.insert(item.action.name().into(), Value::Object(answer));
        answers.push(Value::Object(wrapped));
    }
    es_json(
        StatusCode::OK,
        json!({
            "took": started.elapsed().as_millis() as u64,
            "errors": any_error,
            "items": answers,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_actions_documents_and_blank_lines() {
        let body = b"{\"index\":{\"_index\":\"web\",\"_id\":\"a\"}}\r\n{\"message\":\"one\"}\n\n{\"create\":{}}\n{\"message\":\"two\"}\n{\"delete\":{\"_index\":\"x\",\"_id\":\"9\"}}\n{\"update\":{\"_id\":\"3\"}}\n{\"doc\":{}}\n";
        let items = parse_bulk(body, Some("fallback"), 100).expect("valid");
        let summary: Vec<_> = items
            .iter()
            .map(|i| {
                (
                    i.action,
                    i.index.as_str(),
                    i.id.as_deref(),
                    i.doc
                        .map(|(s, e)| std::str::from_utf8(&body[s..e]).expect("utf8")),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    Action::Index,
                    "web",
                    Some("a"),
                    Some("{\"message\":\"one\"}")
                ),
                (
                    Action::Create,
                    "fallback",
                    None,
                    Some("{\"message\":\"two\"}")
                ),
                (Action::Delete, "x", Some("9"), None),
                (Action::Update, "fallback", Some("3"), None),
            ]
        );
    }

    #[test]
    fn malformed_requests_fail_as_a_whole_with_the_line_number() {
        let cases: [(&[u8], &str); 5] = [
            (b"{\"index\":{}}\n{}\n{nope\n", "line [3]"),
            (b"{\"upsert\":{}}\n{}\n", "found [upsert]"),
            (b"{\"index\":{}}\n", "no document line"),
            (b"{\"index\":{},\"create\":{}}\n{}\n", "exactly one action"),
            (b"[1]\n", "line [1]"),
        ];
        for (body, needle) in cases {
            let error = parse_bulk(body, Some("i"), 100).expect_err("malformed");
            assert!(error.0.contains(needle), "{needle:?} not in {:?}", error.0);
        }
        let error = parse_bulk(b"{\"index\":{}}\n{}\n", None, 100).expect_err("no index");
        assert!(error.0.contains("index is missing"), "{error:?}");
    }

    #[test]
    fn documents_map_service_from_field_document_or_index() {
        let body = b"{\"index\":{\"_index\":\"checkout\"}}\n{\"@timestamp\":\"2026-11-23T10:00:00Z\",\"message\":\"a\",\"log.level\":\"warn\"}\n{\"index\":{\"_index\":\"checkout\",\"_id\":\"7\"}}\n{\"service\":{\"name\":\"billing\"},\"message\":\"b\",\"team\":\"pay\"}\n{\"index\":{\"_index\":\"checkout\"}}\nnot json\n";
        let items = parse_bulk(body, None, 100).expect("valid");
        let output = decode_documents(body, &items, &ElasticOptions::default());
        assert_eq!(output.records.len(), 2);
        let first = &output.records[0].entry;
        assert_eq!(first.service, "checkout");
        assert_eq!(first.level_enum(), logcluster_proto::Level::Warn);
        assert_eq!(first.timestamp, 1_795_428_000_000_000_000);
        assert_eq!(first.fields["_index"].to_text(), "checkout");
        let second = &output.records[1].entry;
        assert_eq!(second.service, "billing");
        assert_eq!(second.fields["_id"].to_text(), "7");
        assert_eq!(output.errors.len(), 1);
        assert_eq!(output.errors[0].index, 2);
        assert_eq!(output.errors[0].reason, RejectReason::InvalidJson);

        let by_field = ElasticOptions {
            service_field: Some("team".into()),
            index_as_service: false,
        };
        let output = decode_documents(body, &items, &by_field);
        assert_eq!(output.records[0].entry.service, "unknown");
        assert_eq!(output.records[1].entry.service, "pay");
        assert!(!output.records[1].entry.fields.contains_key("team"));
    }

    #[test]
    fn body_hash_is_stable() {
        assert_eq!(body_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(body_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(body_hash(b"ab"), body_hash(b"ba"));
    }
}
