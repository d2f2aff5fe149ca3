//! Ingestion: listeners, framing and decoding, validation and enrichment, batching.

pub mod compat;
pub mod decode;
pub mod framed;
pub mod http;
pub mod http_bodies;
pub mod listeners;
pub mod metrics;
pub mod pipeline;
