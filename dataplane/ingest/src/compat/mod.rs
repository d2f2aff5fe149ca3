//! The ecosystem's ingestion APIs, so existing shippers work unmodified: the
//! Elasticsearch-compatible `_bulk` API ([`elastic`]), OTLP/HTTP logs ([`otlp`]) and Loki push
//! ([`loki`]).
//!
//! Each protocol only maps its wire format onto [`DecodeOutput`]; validation, enrichment,
//! tenancy, ids and the durable write are the [`Pipeline`]'s, as for every other input. What
//! the three share lives here: the bounded body read (the protocol's own "too large" answer
//! instead of a generic one), `Content-Encoding` (gzip, deflate, zstd; snappy as Loki uses
//! it) with a bound on the decompressed size (also used by the native ingest route), the tenant headers, and the ingest budget.
//!
//! The tenant comes from `X-Logcluster-Tenant`, or Loki's `X-Scope-OrgID` (which Promtail,
//! Alloy and the Loki clients send), on every protocol; without either the node's default
//! tenant applies.

pub mod elastic;
pub mod loki;
pub mod otlp;

use std::io::Read;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::HeaderMap;

use crate::decode::{DecodeOutput, RejectReason};
use crate::metrics::labels2;
use crate::pipeline::{BatchResult, BatchSource, Pipeline};

/// Settings of the compatibility APIs.
#[derive(Clone, Debug)]
pub struct CompatOptions {
    /// Largest accepted request body, compressed and decompressed alike.
    pub max_body_bytes: usize,
    pub elastic: elastic::ElasticOptions,
}

/// The routes of all three APIs, to be merged into the node's HTTP router.
pub fn router(pipeline: Arc<Pipeline>, options: CompatOptions) -> Router {
    let limit = options.max_body_bytes;
    let shared = Arc::new(Compat {
        pipeline: pipeline.clone(),
        options,
    });
    let bounded = |routes, busy| crate::http_bodies::bounded(routes, pipeline.clone(), limit, busy);
    Router::new()
        .merge(bounded(elastic::router(shared.clone()), elastic::busy))
        .merge(bounded(otlp::router(shared.clone()), otlp::busy))
        .merge(bounded(loki::router(shared), loki::busy))
}

pub(crate) struct Compat {
    pub pipeline: Arc<Pipeline>,
    pub options: CompatOptions,
}

/// Why a request body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Over the size limit (compressed or decompressed).
    TooLarge(usize),
    /// The body could not be read or decompressed.
    Invalid(String),
    /// A `Content-Encoding` this server does not speak.
    UnsupportedEncoding(String),
    /// The body did not arrive within `ingest.frameTimeout`.
    TimedOut(String),
    /// The ingest budget has no room for the decompressed body: answered "busy" (429).
    Busy,
}

impl BodyError {
    /// Counted where it is detected (`body_timeout`) or as a busy batch, not as a
    /// protocol error.
    fn counted_elsewhere(&self) -> bool {
        matches!(self, BodyError::TimedOut(_) | BodyError::Busy)
    }

    pub fn message(&self) -> String {
        match self {
            BodyError::TooLarge(limit) => format!("request body is larger than {limit} bytes"),
            BodyError::Busy => crate::http_bodies::BUSY.to_string(),
            BodyError::Invalid(message) | BodyError::TimedOut(message) => message.clone(),
            BodyError::UnsupportedEncoding(encoding) => {
                format!(
                    "unsupported Content-Encoding {encoding:?}: use gzip, deflate, zstd, snappy or none"
                )
            }
        }
    }

    pub fn metric_kind(&self) -> &'static str {
        match self {
            BodyError::TooLarge(_) => "body_too_large",
            BodyError::Invalid(_) => "bad_body_encoding",
            BodyError::TimedOut(_) => "body_timeout",
            BodyError::UnsupportedEncoding(_) => "unsupported_encoding",
            BodyError::Busy => "busy",
        }
    }
}

impl Compat {
    /// Reads the whole body (at most the limit) and undoes its `Content-Encoding`.
    pub async fn read_body(
        &self,
        protocol: &'static str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Bytes, BodyError> {
        let limit = self.options.max_body_bytes;
        let result = match axum::body::to_bytes(body, limit).await {
            Err(error) => {
                // to_bytes reports both an over-limit body and a broken connection as errors;
                // tell them apart by the limit error type in the chain.
                let over = std::error::Error::source(&error)
                    .is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
                if over {
                    Err(BodyError::TooLarge(limit))
                } else if crate::http_bodies::timed_out(&error) {
                    Err(BodyError::TimedOut(format!(
                        "could not read the body: {error}"
                    )))
                } else {
                    Err(BodyError::Invalid(format!(
                        "could not read the body: {error}"
                    )))
                }
            }
            Ok(raw) => decode_content(&self.pipeline, headers, raw, limit).await,
        };
        // A body cut off by `ingest.frameTimeout` is counted there (`body_timeout`).
        if let Err(error) = &result
            && !error.counted_elsewhere()
        {
            self.protocol_error(protocol, error.metric_kind());
        }
        if let Err(BodyError::Busy) = &result {
            self.pipeline.metrics().count_busy();
        }
        result
    }

    /// Counts a request refused before any record was looked at.
    pub fn protocol_error(&self, protocol: &'static str, kind: &'static str) {
        self.pipeline
            .metrics()
            .protocol_errors
            .get_or_create(&labels2("protocol", protocol, "kind", kind))
            .inc();
    }

    /// Runs `decode` on a blocking thread and ingests the result through the pipeline, after
    /// reserving `len` bytes of the ingest budget; `None` when the budget is exhausted (the
    /// caller answers "too many requests"). `decode` admits each record it makes through
    /// [`MapLimits::admit`], which holds the records' room in the budget until they are stored.
    pub async fn ingest<F>(&self, source: BatchSource, len: usize, decode: F) -> Option<BatchResult>
    where
        F: FnOnce(&mut MapLimits) -> Result<DecodeOutput, (RejectReason, String)> + Send + 'static,
    {
        let Some(reservation) = self.pipeline.try_reserve(len) else {
            self.pipeline.metrics().count_busy();
            return None;
        };
        let limits = Arc::new(std::sync::Mutex::new(MapLimits::new(
            self.pipeline.clone(),
            self.pipeline.max_batch_records(),
            len,
        )));
        let mapping = limits.clone();
        let result = self
            .pipeline
            .ingest_with(source, len, move |_| {
                let mut limits = mapping.lock().unwrap_or_else(|p| p.into_inner());
                decode(&mut limits)
            })
            .await;
        drop(reservation);
        let busy = limits.lock().unwrap_or_else(|p| p.into_inner()).busy;
        if busy {
            self.pipeline.metrics().count_busy();
            return None;
        }
        Some(result)
    }
}

/// What a compatible API's mapping may make of one request. Labels and resource attributes
/// are sent once and copied into every record, so a small request could map onto millions of
/// large records: the mapping stops past `ingest.maxBatchRecords` records (refused as a
/// batch that holds too many), and each record's size is reserved in the ingest budget before
/// it is made (in steps of [`MAP_STEP`]; the request is answered "too many requests" when
/// the budget has no room). The room is held until the records are stored.
pub struct MapLimits {
    pipeline: Arc<Pipeline>,
    max_records: usize,
    records: usize,
    /// Reserved and not yet used.
    room: usize,
    /// Reserved in all, the request's body included.
    reserved: usize,
    held: Vec<crate::pipeline::Reservation>,
    /// The budget had no room for a record.
    busy: bool,
}

/// Mapped records' room is reserved this much at a time.
pub const MAP_STEP: usize = 256 * 1024;

impl MapLimits {
    /// `body`: the bytes the request already holds in the budget.
    fn new(pipeline: Arc<Pipeline>, max_records: usize, body: usize) -> MapLimits {
        MapLimits {
            pipeline,
            max_records,
            records: 0,
            room: 0,
            reserved: body,
            held: Vec::new(),
            busy: false,
        }
    }

    /// Admits one more record of about `bytes` (before it is made); an error once past the
    /// record limit or when the ingest budget has no room.
    pub fn admit(&mut self, bytes: usize) -> Result<(), (RejectReason, String)> {
        self.records += 1;
        if self.records > self.max_records {
            let error = crate::decode::PayloadError::TooManyRecords(self.max_records);
            return Err((error.reason(), error.to_string()));
        }
        while self.room < bytes {
            let step = MAP_STEP.max(bytes - self.room);
            // More than the whole budget could ever hold: a retry would fare no better.
            if self.reserved + step > self.pipeline.budget_bytes() {
                return Err((
                    RejectReason::TooLarge,
                    format!(
                        "the request's records would take more than the node's ingest budget \
                         (ingest.maxPendingBytes, {} bytes) in memory; send smaller requests",
                        self.pipeline.budget_bytes()
                    ),
                ));
            }
            match self.pipeline.try_reserve(step) {
                Some(reservation) => {
                    self.held.push(reservation);
                    self.room += step;
                    self.reserved += step;
                }
                None => {
                    self.busy = true;
                    return Err((
                        RejectReason::TooLarge,
                        "the node has no room for this request's records now; retry later"
                            .to_string(),
                    ));
                }
            }
        }
        self.room -= bytes;
        Ok(())
    }
}

/// About what a record made of `base` plus a message of `message` bytes holds in memory
/// ([`LogEntry::approx_size`](logcluster_proto::LogEntry::approx_size) and each field's map
/// node and `String` headers).
pub fn mapped_size(base: &logcluster_proto::LogEntry, message: usize) -> usize {
    const PER_FIELD: usize = 96;
    const PER_ENTRY: usize = 192;
    PER_ENTRY + base.approx_size() + message + PER_FIELD * base.fields.len()
}

/// Undoes a body's `Content-Encoding`; the result may be at most `limit` bytes.
/// Decompression runs on a blocking thread, and what it produces holds room in the ingest
/// budget as it grows ([`BodyError::Busy`] when there is none): the compressed body was
/// counted while it was read, and without this a few hundred small requests could each
/// inflate to `limit` bytes at once. The room is given back on return; the caller then
/// reserves what it decodes, as for a plain body.
pub(crate) async fn decode_content(
    pipeline: &Arc<Pipeline>,
    headers: &HeaderMap,
    raw: Bytes,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let encoding = header_text(headers, "content-encoding")
        .map(|e| e.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if matches!(encoding.as_str(), "" | "identity") {
        return Ok(raw);
    }
    let len = raw.len();
    budgeted(pipeline, len, move |room| {
        decompress(&encoding, &raw, limit, room)
    })
    .await
}

/// Bodies inflated at once: the blocking threads are shared with the WAL writes and fsyncs,
/// which must not wait behind a burst of compressed requests.
static INFLATING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Runs `work` on a blocking thread with a `room` that reserves its output in the ingest
/// budget as it grows; the room is given back when `work` returns. The `raw_len` bytes of
/// the compressed body hold room while they wait their turn ([`INFLATING`]).
async fn budgeted(
    pipeline: &Arc<Pipeline>,
    raw_len: usize,
    work: impl FnOnce(&mut dyn FnMut(usize) -> bool) -> Result<Bytes, BodyError> + Send + 'static,
) -> Result<Bytes, BodyError> {
    let waiting = pipeline.try_reserve(raw_len).ok_or(BodyError::Busy)?;
    let _turn = INFLATING
        .acquire()
        .await
        .map_err(|_| BodyError::Invalid("the node is stopping".into()))?;
    let pipeline = pipeline.clone();
    tokio::task::spawn_blocking(move || {
        let mut held = vec![waiting];
        let mut room = |bytes: usize| {
            pipeline
                .try_reserve(bytes)
                .map(|reservation| held.push(reservation))
                .is_some()
        };
        work(&mut room)
    })
    .await
    .unwrap_or_else(|join| Err(BodyError::Invalid(format!("decompressing failed: {join}"))))
}

/// Output taken in steps of this much, each reserved in the budget first.
const INFLATE_STEP: usize = 256 * 1024;

/// Decompresses `raw` as `encoding` says; `room(n)` must reserve `n` more bytes of output.
fn decompress(
    encoding: &str,
    raw: &[u8],
    limit: usize,
    room: &mut dyn FnMut(usize) -> bool,
) -> Result<Bytes, BodyError> {
    match encoding {
        "gzip" | "x-gzip" => inflate(flate2::read::MultiGzDecoder::new(raw), limit, "gzip", room),
        "deflate" => inflate(flate2::read::ZlibDecoder::new(raw), limit, "deflate", room),
        "zstd" => match zstd::stream::read::Decoder::new(raw) {
            Ok(decoder) => inflate(decoder, limit, "zstd", room),
            Err(error) => Err(BodyError::Invalid(format!(
                "body is not valid zstd: {error}"
            ))),
        },
        "snappy" => snappy(raw, limit, room),
        other => Err(BodyError::UnsupportedEncoding(other.to_string())),
    }
}

fn inflate(
    mut reader: impl Read,
    limit: usize,
    name: &str,
    room: &mut dyn FnMut(usize) -> bool,
) -> Result<Bytes, BodyError> {
    let mut out = Vec::new();
    loop {
        // At most one byte past the limit is read: enough to tell it was passed.
        let step = INFLATE_STEP.min(limit + 1 - out.len());
        if !room(step) {
            return Err(BodyError::Busy);
        }
        let before = out.len();
        // Exactly the reserved step: a doubling vector would hold up to twice what it holds.
        out.reserve_exact(step);
        match reader.by_ref().take(step as u64).read_to_end(&mut out) {
            Ok(_) if out.len() > limit => return Err(BodyError::TooLarge(limit)),
            Ok(_) if out.len() - before < step => return Ok(Bytes::from(out)),
            Ok(_) => {}
            Err(error) => {
                return Err(BodyError::Invalid(format!(
                    "body is not valid {name}: {error}"
                )));
            }
        }
    }
}

/// Snappy's block format, as Loki and Prometheus remote-write use it (not the framed format).
pub(crate) fn snappy(
    raw: &[u8],
    limit: usize,
    room: &mut dyn FnMut(usize) -> bool,
) -> Result<Bytes, BodyError> {
    let len = snap::raw::decompress_len(raw)
        .map_err(|e| BodyError::Invalid(format!("body is not valid snappy: {e}")))?;
    if len > limit {
        return Err(BodyError::TooLarge(limit));
    }
    if !room(len) {
        return Err(BodyError::Busy);
    }
    snap::raw::Decoder::new()
        .decompress_vec(raw)
        .map(Bytes::from)
        .map_err(|e| BodyError::Invalid(format!("body is not valid snappy: {e}")))
}

/// [`snappy`] for a Loki push's body (snappy without a `Content-Encoding` header), under the
/// same budget as [`decode_content`].
pub(crate) async fn snappy_body(
    pipeline: &Arc<Pipeline>,
    raw: Bytes,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let len = raw.len();
    budgeted(pipeline, len, move |room| snappy(&raw, limit, room)).await
}

/// Adds `Retry-After: 1` (shippers back off and resend on 429 and 503).
pub(crate) fn retry_after(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    response
}

pub(crate) fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The media type of `Content-Type`, lowercased, without parameters.
pub(crate) fn media_type(headers: &HeaderMap) -> Option<String> {
    header_text(headers, "content-type").map(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    })
}

/// The request's tenant: `X-Logcluster-Tenant`, else `X-Scope-OrgID`.
pub(crate) fn tenant(headers: &HeaderMap) -> Option<String> {
    header_text(headers, "x-logcluster-tenant")
        .or_else(|| header_text(headers, "x-scope-orgid"))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflate_is_bounded() {
        use std::io::Write;
        let zeros = vec![0u8; 100_000];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&zeros).expect("in memory");
        let packed = gz.finish().expect("in memory");
        assert!(packed.len() < 1_000);
        let room = &mut |_| true;
        let ok = decompress("gzip", &packed, 100_000, room).expect("fits");
        assert_eq!(ok.len(), 100_000);
        assert!(matches!(
            decompress("gzip", &packed, 99_999, room),
            Err(BodyError::TooLarge(99_999))
        ));
        assert!(matches!(
            decompress("gzip", b"not gzip", 10, room),
            Err(BodyError::Invalid(_))
        ));
    }

    /// What a body inflates to is reserved before it is produced, step by step: never more
    /// than one step ahead of the output, and a budget without room stops it (busy).
    #[test]
    fn inflated_output_is_reserved_as_it_grows() {
        let plain = vec![b'x'; 1 << 20];
        let packed = zstd::bulk::compress(&plain, 3).expect("in memory");
        let mut reserved = 0;
        let out = decompress("zstd", &packed, 2 << 20, &mut |bytes| {
            reserved += bytes;
            true
        })
        .expect("fits");
        assert_eq!(out.len(), 1 << 20);
        assert!(
            reserved >= out.len() && reserved <= out.len() + INFLATE_STEP,
            "{reserved}"
        );
        let mut left = 512 * 1024;
        let mut room = |bytes: usize| {
            let fits = bytes <= left;
            left = left.saturating_sub(bytes);
            fits
        };
        assert!(matches!(
            decompress("zstd", &packed, 2 << 20, &mut room),
            Err(BodyError::Busy)
        ));
    }

    #[test]
    fn snappy_checks_the_claimed_length_before_allocating() {
        let packed = snap::raw::Encoder::new()
            .compress_vec(&[7u8; 5000])
            .expect("in memory");
        let room = &mut |_| true;
        assert_eq!(snappy(&packed, 5000, room).expect("fits").len(), 5000);
        assert!(matches!(
            snappy(&packed, 4999, room),
            Err(BodyError::TooLarge(_))
        ));
        assert!(snappy(b"\xff\xff\xff\xff\x0f", 1 << 20, room).is_err());
        assert!(matches!(
            snappy(&packed, 5000, &mut |_| false),
            Err(BodyError::Busy)
        ));
        assert!(matches!(
            snappy(b"\x05abc", 100, room),
            Err(BodyError::Invalid(_))
        ));
    }
}
