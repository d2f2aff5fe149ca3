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
use crate::metrics::{label, labels2};
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
}

impl BodyError {
    fn timed_out(&self) -> bool {
        matches!(self, BodyError::TimedOut(_))
    }

    pub fn message(&self) -> String {
        match self {
            BodyError::TooLarge(limit) => format!("request body is larger than {limit} bytes"),
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
            Ok(raw) => decode_content(headers, raw, limit),
        };
        // A body cut off by `ingest.frameTimeout` is counted there (`body_timeout`).
        if let Err(error) = &result
            && !error.timed_out()
        {
            self.protocol_error(protocol, error.metric_kind());
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
    /// caller answers "too many requests").
    pub async fn ingest<F>(&self, source: BatchSource, len: usize, decode: F) -> Option<BatchResult>
    where
        F: FnOnce() -> Result<DecodeOutput, (RejectReason, String)> + Send + 'static,
    {
        let Some(reservation) = self.pipeline.try_reserve(len) else {
            self.pipeline
                .metrics()
                .batches
                .get_or_create(&label("status", "busy"))
                .inc();
            return None;
        };
        let result = self.pipeline.ingest_with(source, len, |_| decode()).await;
        drop(reservation);
        Some(result)
    }
}

/// Undoes a body's `Content-Encoding`; the result may be at most `limit` bytes.
pub(crate) fn decode_content(
    headers: &HeaderMap,
    raw: Bytes,
    limit: usize,
) -> Result<Bytes, BodyError> {
    match header_text(headers, "content-encoding")
        .map(|e| e.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => Ok(raw),
        Some("gzip") | Some("x-gzip") => {
            inflate(flate2::read::MultiGzDecoder::new(&raw[..]), limit, "gzip")
        }
        Some("deflate") => inflate(flate2::read::ZlibDecoder::new(&raw[..]), limit, "deflate"),
        Some("zstd") => match zstd::stream::read::Decoder::new(&raw[..]) {
            Ok(decoder) => inflate(decoder, limit, "zstd"),
            Err(error) => Err(BodyError::Invalid(format!(
                "body is not valid zstd: {error}"
            ))),
        },
        Some("snappy") => snappy(&raw, limit),
        Some(other) => Err(BodyError::UnsupportedEncoding(other.to_string())),
    }
}

fn inflate(mut reader: impl Read, limit: usize, name: &str) -> Result<Bytes, BodyError> {
    let mut out = Vec::new();
    match reader.by_ref().take(limit as u64 + 1).read_to_end(&mut out) {
        Ok(_) if out.len() > limit => Err(BodyError::TooLarge(limit)),
        Ok(_) => Ok(Bytes::from(out)),
        Err(error) => Err(BodyError::Invalid(format!(
            "body is not valid {name}: {error}"
        ))),
    }
}

/// Snappy's block format, as Loki and Prometheus remote-write use it (not the framed format).
pub(crate) fn snappy(raw: &[u8], limit: usize) -> Result<Bytes, BodyError> {
    let len = snap::raw::decompress_len(raw)
        .map_err(|e| BodyError::Invalid(format!("body is not valid snappy: {e}")))?;
    if len > limit {
        return Err(BodyError::TooLarge(limit));
    }
    snap::raw::Decoder::new()
        .decompress_vec(raw)
        .map(Bytes::from)
        .map_err(|e| BodyError::Invalid(format!("body is not valid snappy: {e}")))
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
        let ok = inflate(
            flate2::read::MultiGzDecoder::new(&packed[..]),
            100_000,
            "gzip",
        )
        .expect("fits");
        assert_eq!(ok.len(), 100_000);
        assert!(matches!(
            inflate(
                flate2::read::MultiGzDecoder::new(&packed[..]),
                99_999,
                "gzip"
            ),
            Err(BodyError::TooLarge(99_999))
        ));
        assert!(matches!(
            inflate(
                flate2::read::MultiGzDecoder::new(&b"not gzip"[..]),
                10,
                "gzip"
            ),
            Err(BodyError::Invalid(_))
        ));
    }

    #[test]
    fn snappy_checks_the_claimed_length_before_allocating() {
        let packed = snap::raw::Encoder::new()
            .compress_vec(&[7u8; 5000])
            .expect("in memory");
        assert_eq!(snappy(&packed, 5000).expect("fits").len(), 5000);
        assert!(matches!(snappy(&packed, 4999), Err(BodyError::TooLarge(_))));
        assert!(snappy(b"\xff\xff\xff\xff\x0f", 1 << 20).is_err());
        assert!(matches!(
            snappy(b"\x05abc", 100),
            Err(BodyError::Invalid(_))
        ));
    }
}
