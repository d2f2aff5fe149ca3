//! Ingest metrics: what arrived, what was refused and why, how long acknowledgements took,
//! and how full the bounded queues are.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub type Labels = Vec<(String, String)>;

/// Cloning shares the underlying values.
#[derive(Clone, Debug)]
pub struct IngestMetrics {
    /// Entries accepted and durable, by input format.
    pub entries: Family<Labels, Counter>,
    /// Payload bytes received, by input format.
    pub bytes: Family<Labels, Counter>,
    /// Entries refused, by input format and reason.
    pub rejected: Family<Labels, Counter>,
    /// Records stored with invalid UTF-8 replaced by U+FFFD, by format.
    pub utf8_repaired: Family<Labels, Counter>,
    /// Schema violations, by schema name and reason.
    pub schema_rejects: Family<Labels, Counter>,
    /// UDP datagrams dropped, by listener and reason.
    pub udp_drops: Family<Labels, Counter>,
    /// Broken streams: bad magic, oversize, truncated frames, failed TLS handshakes.
    pub protocol_errors: Family<Labels, Counter>,
    /// Batches answered, by status.
    pub batches: Family<Labels, Counter>,
    /// Entries skipped because their batch id was already stored.
    pub duplicate_entries: Counter,
    /// TCP connections closed after `ingest.idleTimeout` without a byte.
    pub idle_closes: Counter,
    /// Payload bytes decoded but not yet durable (the ingest queue depth).
    pub pending_bytes: Gauge,
    /// Batches between receipt and acknowledgement.
    pub inflight_batches: Gauge,
    pub connections: Gauge,
    /// From a batch fully received to its acknowledgement being ready.
    pub ack_latency_seconds: Histogram,
    /// Plain running totals for the periodic stats line (not exported; the labelled
    /// families above are).
    pub totals: std::sync::Arc<Totals>,
}

/// Running totals read by the one-line stats log.
#[derive(Debug, Default)]
pub struct Totals {
    pub entries: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
    pub rejected: std::sync::atomic::AtomicU64,
    pub dropped: std::sync::atomic::AtomicU64,
    pub acks: std::sync::atomic::AtomicU64,
    pub ack_micros: std::sync::atomic::AtomicU64,
}

impl Default for IngestMetrics {
    fn default() -> Self {
        IngestMetrics {
            entries: Family::default(),
            bytes: Family::default(),
            rejected: Family::default(),
            utf8_repaired: Family::default(),
            schema_rejects: Family::default(),
            udp_drops: Family::default(),
            protocol_errors: Family::default(),
            batches: Family::default(),
            duplicate_entries: Counter::default(),
            idle_closes: Counter::default(),
            pending_bytes: Gauge::default(),
            inflight_batches: Gauge::default(),
            connections: Gauge::default(),
            ack_latency_seconds: Histogram::new(exponential_buckets(0.0002, 2.0, 18)),
            totals: Default::default(),
        }
    }
}

/// One label pair.
pub fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_string(), value.to_string())]
}

/// Two label pairs.
pub fn labels2(k1: &str, v1: &str, k2: &str, v2: &str) -> Labels {
    vec![
        (k1.to_string(), v1.to_string()),
        (k2.to_string(), v2.to_string()),
    ]
}

impl IngestMetrics {
    /// Counts `n` refused records in `logcluster_ingest_rejected{format,reason}`.
    pub fn count_rejected(&self, format: &str, reason: &str, n: u64) {
        self.rejected
            .get_or_create(&labels2("format", format, "reason", reason))
            .inc_by(n);
    }

    /// Counts a batch answered "busy" (the ingest budget was full) in
    /// `logcluster_ingest_batches{status="busy"}`.
    pub fn count_busy(&self) {
        self.batches.get_or_create(&label("status", "busy")).inc();
    }

    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("logcluster_ingest");
        r.register(
            "entries",
            "Entries accepted and durable, by format",
            self.entries.clone(),
        );
        r.register(
            "bytes",
            "Payload bytes received, by format",
            self.bytes.clone(),
        );
        r.register(
            "rejected",
            "Entries refused, by format and reason",
            self.rejected.clone(),
        );
        r.register(
            "utf8_repaired",
            "Records decoded with bytes that were not UTF-8 replaced by U+FFFD instead of being refused (syslog, raw lines, journald values; counted before any later refusal), by format",
            self.utf8_repaired.clone(),
        );
        r.register(
            "schema_rejects",
            "Entries refused by a LogSchema, by schema and reason",
            self.schema_rejects.clone(),
        );
        r.register(
            "udp_drops",
            "UDP datagrams dropped, by listener and reason",
            self.udp_drops.clone(),
        );
        r.register(
            "protocol_errors",
            "Connections with broken framing or TLS, by kind",
            self.protocol_errors.clone(),
        );
        r.register(
            "batches",
            "Batches answered, by status",
            self.batches.clone(),
        );
        r.register(
            "idle_closes",
            "TCP connections closed after ingest.idleTimeout without a byte",
            self.idle_closes.clone(),
        );
        r.register(
            "duplicate_entries",
            "Entries skipped as already stored (retried batch ids)",
            self.duplicate_entries.clone(),
        );
        r.register(
            "pending_bytes",
            "Payload bytes received but not yet durable (queue depth)",
            self.pending_bytes.clone(),
        );
        r.register(
            "inflight_batches",
            "Batches received and not yet acknowledged",
            self.inflight_batches.clone(),
        );
        r.register(
            "connections",
            "Open ingest connections",
            self.connections.clone(),
        );
        r.register(
            "ack_latency_seconds",
            "Time from a batch fully received to its acknowledgement",
            self.ack_latency_seconds.clone(),
        );
    }
}
