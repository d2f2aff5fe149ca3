//! Prometheus helpers.

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

/// The registry in the OpenMetrics text format (what `/metrics` serves).
pub fn encode_registry(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(error) = encode(&mut out, registry) {
        tracing::error!(%error, "failed to encode metrics");
    }
    out
}

/// Latency buckets from 0.5 ms doubling up to ~16 s.
pub fn default_latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16)
}
