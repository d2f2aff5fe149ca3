//! HTTP ingestion: `POST /api/v1/ingest` with one JSON object, a JSON array of objects or
//! NDJSON (other text formats with `?format=raw|syslog|journald`).
//!
//! The tenant comes from the `X-Logcluster-Tenant` header or `?tenant=`; an optional
//! `X-Logcluster-Batch-Id` header makes retries idempotent like the framed protocol. A body
//! may be compressed (`Content-Encoding: gzip`, `deflate`, `zstd` or `snappy`), up to the same
//! size limit once decompressed. Status
//! codes mean what shippers expect: 200 only after the batch is durable (per-record refusals
//! listed in the body), 400 when nothing could be accepted, 413 over the size limit, 415 for
//! an unknown `Content-Encoding`, 429 with
//! `Retry-After` when the ingest budget is exhausted, 503 with `Retry-After` when storage
//! cannot take the batch.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use logcluster_proto::{AckStatus, Format};
use serde_json::json;

use crate::metrics::label;
use crate::pipeline::{BatchSource, Pipeline};

/// The ingest routes, to be merged into the node's HTTP router.
pub fn router(pipeline: Arc<Pipeline>, max_body_bytes: usize) -> Router {
    let routes = Router::new()
        .route("/api/v1/ingest", post(ingest))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(Route {
            pipeline: pipeline.clone(),
            max_body_bytes,
        });
    crate::http_bodies::bounded(routes, pipeline, max_body_bytes, |_| busy())
}

/// The answer when the ingest budget is full: 429 with `Retry-After`.
fn busy() -> Response {
    error_response(
        StatusCode::TOO_MANY_REQUESTS,
        crate::http_bodies::BUSY.into(),
        true,
    )
}

#[derive(Clone)]
struct Route {
    pipeline: Arc<Pipeline>,
    /// Largest body, also once decompressed.
    max_body_bytes: usize,
}

fn error_response(status: StatusCode, message: String, retry: bool) -> Response {
    let body = axum::Json(json!({ "status": "error", "error": message }));
    if retry {
        (status, [(header::RETRY_AFTER, "1")], body).into_response()
    } else {
        (status, body).into_response()
    }
}

async fn ingest(
    State(Route {
        pipeline,
        max_body_bytes,
    }): State<Route>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let format = match params.get("format").map(String::as_str) {
        None | Some("json") | Some("ndjson") => Format::Json,
        Some(name) => match Format::from_name(name) {
            Some(format @ (Format::Raw | Format::Syslog | Format::Journald)) => format,
            _ => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unsupported format {name:?} for HTTP ingest: use json, ndjson, raw, syslog or journald"
                    ),
                    false,
                );
            }
        },
    };
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let tenant = header_text("x-logcluster-tenant")
        .or_else(|| params.get("tenant").cloned())
        .filter(|t| !t.is_empty());
    let batch_id = match header_text("x-logcluster-batch-id") {
        None => 0,
        Some(text) => match text.parse::<u64>() {
            Ok(id) => id,
            Err(_) => {
                pipeline
                    .metrics()
                    .protocol_errors
                    .get_or_create(&label("kind", "http_bad_batch_id"))
                    .inc();
                return error_response(
                    StatusCode::BAD_REQUEST,
                    format!("X-Logcluster-Batch-Id {text:?} is not an unsigned integer"),
                    false,
                );
            }
        },
    };
    let body = match crate::compat::decode_content(&pipeline, &headers, body, max_body_bytes).await
    {
        Ok(body) => body,
        Err(crate::compat::BodyError::Busy) => {
            pipeline.metrics().count_busy();
            return busy();
        }
        Err(error) => {
            pipeline
                .metrics()
                .protocol_errors
                .get_or_create(&label("kind", error.metric_kind()))
                .inc();
            let status = match error {
                crate::compat::BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                crate::compat::BodyError::UnsupportedEncoding(_) => {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE
                }
                _ => StatusCode::BAD_REQUEST,
            };
            return error_response(status, error.message(), false);
        }
    };
    let Some(reservation) = pipeline.try_reserve(body.len()) else {
        pipeline.metrics().count_busy();
        return busy();
    };
    let source = BatchSource {
        format: if format == Format::Json {
            "json"
        } else {
            format.name()
        },
        tenant,
        batch_id,
    };
    let result = pipeline.ingest_payload(format, source, body.to_vec()).await;
    drop(reservation);
    let status = match result.status {
        AckStatus::Accepted | AckStatus::Partial => StatusCode::OK,
        AckStatus::Rejected | AckStatus::ProtocolError => StatusCode::BAD_REQUEST,
        AckStatus::RetryLater => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = axum::Json(json!({
        "status": match result.status {
            AckStatus::Accepted => "accepted",
            AckStatus::Partial => "partial",
            AckStatus::Rejected => "rejected",
            AckStatus::RetryLater => "retry_later",
            AckStatus::ProtocolError => "protocol_error",
        },
        "accepted": result.accepted,
        "rejected": result.rejected,
        "duplicate": result.duplicate,
        "error": if result.error.is_empty() { None } else { Some(result.error) },
    }));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        (status, [(header::RETRY_AFTER, "1")], body).into_response()
    } else {
        (status, body).into_response()
    }
}
