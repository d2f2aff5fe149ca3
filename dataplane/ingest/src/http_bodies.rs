//! Request bodies of the HTTP ingest routes under the same bounds as framed payloads: a body
//! reserves its size in the pipeline's byte budget *before* it is buffered (429 with
//! `Retry-After` when the budget is full), and must arrive within `ingest.frameTimeout`.
//! Without this, every open connection could buffer a body of up to `ingest.maxFrameBytes`,
//! however slowly it trickled in.
//!
//! The reservation is released as soon as the body has been read (or dropped); the handler
//! then reserves what it decodes, as before.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;

use crate::metrics::label;
use crate::pipeline::{Pipeline, Reservation};

/// The answer to a request refused because the budget is full, in the route's protocol
/// (given the request's headers): `429` with `Retry-After`.
pub type BusyAnswer = fn(&HeaderMap) -> Response;

/// The message of every "budget full" answer.
pub const BUSY: &str = "the ingest queue is full, retry later";

#[derive(Clone)]
struct Bounds {
    pipeline: Arc<Pipeline>,
    max_body_bytes: usize,
    busy: BusyAnswer,
}

/// `router` with every request body bounded as the module describes; `busy` answers a
/// request that finds the budget full.
pub fn bounded(
    router: Router,
    pipeline: Arc<Pipeline>,
    max_body_bytes: usize,
    busy: BusyAnswer,
) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        Bounds {
            pipeline,
            max_body_bytes,
            busy,
        },
        guard,
    ))
}

/// The bytes a request's body may take: its declared length, the limit when it is chunked
/// (it may grow that far), none without a body.
fn declared_len(request: &Request, limit: usize) -> usize {
    let headers = request.headers();
    match headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        Some(len) => usize::try_from(len).unwrap_or(usize::MAX),
        None if headers.contains_key(header::TRANSFER_ENCODING) => limit,
        None => 0,
    }
}

async fn guard(State(bounds): State<Bounds>, request: Request, next: Next) -> Response {
    let len = declared_len(&request, bounds.max_body_bytes);
    // Nothing to read, or a declared length over the limit, which the handler refuses
    // (413) before reading a byte.
    if len == 0 || len > bounds.max_body_bytes {
        return next.run(request).await;
    }
    let pipeline = &bounds.pipeline;
    let Some(reservation) = pipeline.try_reserve(len) else {
        pipeline.metrics().count_busy();
        return (bounds.busy)(request.headers());
    };
    let (parts, body) = request.into_parts();
    let body = timed(body, pipeline, reservation);
    next.run(Request::from_parts(parts, body)).await
}

/// Whether a body read failed because [`bounded`] cut it off (already counted).
pub fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = error.source();
    }
    false
}

/// `body` that fails once `ingest.frameTimeout` has passed before its end, holding
/// `reservation` until its end (or until it is dropped).
fn timed(body: Body, pipeline: &Pipeline, reservation: Reservation) -> Body {
    let timeout = pipeline.frame_timeout();
    let deadline = timeout.map(|timeout| tokio::time::Instant::now() + timeout);
    let metrics = pipeline.metrics().clone();
    let state = (body.into_data_stream(), Some(reservation));
    let stream = futures_util::stream::unfold(state, move |(mut data, held)| {
        let metrics = metrics.clone();
        async move {
            // Ended (by its end, an error or the deadline): nothing more, and no longer held.
            held.as_ref()?;
            let next = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, data.next()).await,
                None => Ok(data.next().await),
            };
            let item = match next {
                Ok(Some(Ok(chunk))) => return Some((Ok(chunk), (data, held))),
                Ok(None) => return None,
                Ok(Some(Err(error))) => std::io::Error::other(error),
                Err(_) => {
                    metrics
                        .protocol_errors
                        .get_or_create(&label("kind", "body_timeout"))
                        .inc();
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "the request body did not arrive within {:?} (ingest.frameTimeout)",
                            timeout.unwrap_or(Duration::ZERO)
                        ),
                    )
                }
            };
            Some((Err::<Bytes, _>(item), (data, None)))
        }
    });
    Body::from_stream(stream)
}
