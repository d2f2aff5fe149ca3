//! Ingestion: listeners, framing and decoding, validation and enrichment, batching.

pub mod decode;
