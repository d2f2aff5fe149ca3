//! The ingest pipeline shared by every listener: decode → tenant → schema validation →
//! enrichment → ids → durable append → acknowledgement.
//!
//! Listeners only frame bytes; everything that decides what is stored happens here, once.
//! Memory is bounded by a byte budget ([`Pipeline::reserve`]): a listener reserves a
//! payload's size before it reads or buffers more, so a slow disk turns into TCP backpressure
//! (or counted UDP drops), never into unbounded queues.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use logcluster_proto::entry::FieldValue;
use logcluster_proto::{AckStatus, EntryRef, FieldRef, Format, LogEntry};
use logcluster_schema::{SchemaRegistry, SchemaSet};
use logcluster_storage::wal::EntryBodies;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::decode::{self, DecodeContext, DecodeOutput, Decoded, RecordError, RejectReason};
use crate::metrics::{IngestMetrics, label, labels2};

/// Durable storage as the pipeline sees it: the single-node store today, the replication
/// client (write quorum) in a cluster.
pub trait Sink: Send + Sync + 'static {
    /// Stores a batch; resolves once it is durable. `Ok(duplicates)` counts entries skipped
    /// because the batch id was already stored.
    fn append(&self, batch_uid: u64, entries: Vec<LogEntry>) -> Stored;

    /// [`Sink::append`] called from the blocking thread that decoded the entries: a sink may
    /// do its CPU work here, while the entries are still in this core's cache, and leave only
    /// the wait for durability to the future.
    fn append_from_blocking_thread(&self, batch_uid: u64, entries: Vec<LogEntry>) -> Stored {
        self.append(batch_uid, entries)
    }

    /// Whether [`Sink::append_views_from_blocking_thread`] stores views without owned
    /// entries; the pipeline then decodes JSON into views of its payload.
    fn takes_views(&self) -> bool {
        false
    }

    /// [`Sink::append_from_blocking_thread`] of entries as views, with their protobuf bodies
    /// (`bodies.spans[i]` is the encoding of `views[i]`, as prost writes it).
    fn append_views_from_blocking_thread(
        &self,
        batch_uid: u64,
        views: Vec<EntryRef<'_>>,
        bodies: &EntryBodies<'_>,
    ) -> Stored {
        let _ = bodies;
        self.append_from_blocking_thread(batch_uid, views.iter().map(EntryRef::to_entry).collect())
    }
}

/// The future [`Sink::append`] returns: what was done with the entries, once durable; an
/// error means nothing is known to be stored and the batch may be sent again.
pub type Stored = Pin<Box<dyn Future<Output = Result<SinkOutcome, String>> + Send>>;

/// What a sink did with a batch's entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkOutcome {
    /// Entries skipped because the batch id was already stored.
    pub duplicates: usize,
    /// Positions (in the entries given) of entries refused for good, the others stored:
    /// their stream's (or partition's) part of the batch would not fit in one write-ahead
    /// log record. Sending them again as they are cannot succeed.
    pub too_large: Vec<u32>,
    /// Positions of entries refused because their stream would be new on a node that holds
    /// `storage.maxStreams` streams; the others stored.
    pub too_many_streams: Vec<u32>,
}

impl Sink for Arc<logcluster_storage::Store> {
    fn append(&self, batch_uid: u64, entries: Vec<LogEntry>) -> Stored {
        let store = self.clone();
        stored(async move { store.append(batch_uid, entries).await })
    }

    /// Groups, writes the WAL records and builds due blocks right here; the future waits
    /// for the group commit.
    fn append_from_blocking_thread(&self, batch_uid: u64, entries: Vec<LogEntry>) -> Stored {
        let appended = self.append_on_this_thread(batch_uid, entries, None);
        stored(appended.durable())
    }

    fn takes_views(&self) -> bool {
        true
    }

    /// As a replica write: blocks are built from the views, and the WAL records are made
    /// of the bodies.
    fn append_views_from_blocking_thread(
        &self,
        batch_uid: u64,
        views: Vec<EntryRef<'_>>,
        bodies: &EntryBodies<'_>,
    ) -> Stored {
        let appended = self.append_received_on_this_thread(batch_uid, views, bodies);
        stored(appended.durable())
    }
}

/// A store's append as the pipeline's [`Stored`].
fn stored(
    append: impl Future<
        Output = Result<logcluster_storage::AppendOutcome, logcluster_storage::StorageError>,
    > + Send
    + 'static,
) -> Stored {
    Box::pin(async move {
        append
            .await
            .map(|outcome| SinkOutcome {
                duplicates: outcome.duplicates,
                too_large: outcome.too_large,
                too_many_streams: outcome.too_many_streams,
            })
            .map_err(|e| logcluster_common::error_chain(&e))
    })
}

/// Fields added to every entry (enrichment).
#[derive(Clone, Debug, Default)]
pub struct Enrichment {
    /// Host name of this node, for entries that carry none.
    pub host: Option<String>,
    pub environment: Option<String>,
    pub app_version: Option<String>,
    /// Kubernetes identity of the ingesting pod (from POD_NAME, POD_NAMESPACE, NODE_NAME).
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub node: Option<String>,
}

impl Enrichment {
    /// Reads the Kubernetes downward-API variables.
    pub fn from_env(
        host: Option<String>,
        environment: Option<String>,
        app_version: Option<String>,
    ) -> Enrichment {
        let env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
        Enrichment {
            host,
            environment,
            app_version,
            pod: env("POD_NAME"),
            namespace: env("POD_NAMESPACE"),
            node: env("NODE_NAME"),
        }
    }

    fn apply(&self, entry: &mut LogEntry) {
        if entry.host.is_empty()
            && let Some(host) = &self.host
        {
            entry.host = host.clone();
        }
        let mut add = |key: &str, value: &Option<String>| {
            if let Some(value) = value
                && !entry.fields.contains_key(key)
            {
                entry
                    .fields
                    .insert(key.to_string(), FieldValue::str(value.clone()));
            }
        };
        add("environment", &self.environment);
        add("app_version", &self.app_version);
        add("k8s.pod", &self.pod);
        add("k8s.namespace", &self.namespace);
        add("k8s.node", &self.node);
    }

    /// [`Enrichment::apply`] to a view (its fields stay in key order).
    fn apply_to_view<'a>(&'a self, view: &mut EntryRef<'a>) {
        if view.host.is_empty()
            && let Some(host) = &self.host
        {
            view.host = host;
        }
        for (key, value) in [
            ("environment", &self.environment),
            ("app_version", &self.app_version),
            ("k8s.pod", &self.pod),
            ("k8s.namespace", &self.namespace),
            ("k8s.node", &self.node),
        ] {
            if let Some(value) = value
                && let Err(at) = view.fields.binary_search_by(|(k, _)| (*k).cmp(key))
            {
                view.fields.insert(at, (key, FieldRef::Str(value)));
            }
        }
    }
}

/// Where a batch came from.
#[derive(Clone, Debug)]
pub struct BatchSource {
    /// Metric label: json, protobuf, avro, raw, syslog, journald.
    pub format: &'static str,
    /// Tenant set by the connection or frame; it wins over a tenant named in the entries.
    pub tenant: Option<String>,
    /// Client batch id; 0 = none (no idempotency).
    pub batch_id: u64,
}

/// The answer for a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchResult {
    pub status: AckStatus,
    pub accepted: u32,
    pub rejected: u32,
    pub duplicate: bool,
    /// The first error, empty when none.
    pub error: String,
    /// Every refused record with its position in the payload, in position order (for the
    /// protocols that answer per item).
    pub record_errors: Vec<RecordError>,
    /// The batch's uid (0 when nothing was stored): the k-th stored record's id is
    /// `logcluster_common::ids::entry_id(batch_uid, k)`.
    pub batch_uid: u64,
}

impl BatchResult {
    pub fn to_ack(&self, batch_id: u64) -> logcluster_proto::Ack {
        logcluster_proto::Ack {
            status: self.status,
            batch_id,
            accepted: self.accepted,
            rejected: self.rejected,
            duplicate: self.duplicate,
            error: self.error.clone(),
        }
    }
}

/// A batch counted in `inflight_batches` until this is dropped.
struct InFlight(prometheus_client::metrics::gauge::Gauge);

impl InFlight {
    fn start(metrics: &IngestMetrics) -> InFlight {
        metrics.inflight_batches.inc();
        InFlight(metrics.inflight_batches.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A reservation of pending bytes; released when dropped.
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
    metrics: IngestMetrics,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.metrics.pending_bytes.dec_by(self.bytes as i64);
    }
}

/// What a node's ingest may hold at once.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Payload bytes decoded but not yet durable, across all connections.
    pub max_pending_bytes: u64,
    /// Records one batch may hold (`ingest.maxBatchRecords`).
    pub max_batch_records: usize,
    /// Open TCP connections across the framed and syslog listeners (`ingest.maxConnections`).
    pub max_connections: usize,
    /// How long a TCP connection may send nothing before it is closed (`ingest.idleTimeout`).
    pub idle_timeout: Option<std::time::Duration>,
    /// How long the rest of a started frame may take (`ingest.frameTimeout`).
    pub frame_timeout: Option<std::time::Duration>,
    /// How far ahead of this node's clock a record's timestamp may be
    /// (`ingest.maxTimestampAhead`).
    pub max_timestamp_ahead: Option<std::time::Duration>,
}

/// An admitted TCP connection: counted in the `connections` gauge and holding one of the
/// node's connection slots until dropped.
pub struct Connection {
    _slot: OwnedSemaphorePermit,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Shared by every listener of a node.
pub struct Pipeline {
    sink: Box<dyn Sink>,
    schemas: SchemaRegistry,
    enrichment: Enrichment,
    metrics: IngestMetrics,
    default_tenant: String,
    budget: Arc<Semaphore>,
    budget_kib: u32,
    /// Most records a batch may hold (`ingest.maxBatchRecords`).
    max_batch_records: usize,
    connection_slots: Arc<Semaphore>,
    idle_timeout: Option<std::time::Duration>,
    frame_timeout: Option<std::time::Duration>,
    /// Nanoseconds a record's timestamp may be ahead of its receive time (`i64::MAX`: any).
    max_ahead_nanos: i64,
    first_seen: std::sync::Mutex<FirstSeen>,
    /// When storage last failed a batch in the node's log (at most one line per
    /// [`STORAGE_WARNING_EVERY`]; every failure is counted in `batches{status="retry_later"}`).
    storage_warned: std::sync::Mutex<Option<Instant>>,
}

/// Least time between two log lines about batches storage failed.
const STORAGE_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// When recent batches (by uid) were first received. A retried batch sent to this node gets
/// its first attempt's receive time, so that entries without a timestamp of their own
/// (stamped with it) are the same entries on every replica and in every attempt: one id, one
/// timestamp.
#[derive(Default)]
struct FirstSeen {
    at: std::collections::HashMap<u64, i64>,
    order: std::collections::VecDeque<u64>,
}

impl FirstSeen {
    /// Batches remembered: retries come within seconds; this is many minutes of batches.
    const CAPACITY: usize = 65_536;

    fn received_at(&mut self, batch_uid: u64, now: i64) -> i64 {
        if let Some(first) = self.at.get(&batch_uid) {
            return *first;
        }
        if self.order.len() >= Self::CAPACITY
            && let Some(oldest) = self.order.pop_front()
        {
            self.at.remove(&oldest);
        }
        self.at.insert(batch_uid, now);
        self.order.push_back(batch_uid);
        now
    }
}

impl Pipeline {
    pub fn new(
        sink: Box<dyn Sink>,
        schemas: SchemaRegistry,
        enrichment: Enrichment,
        metrics: IngestMetrics,
        default_tenant: String,
        limits: Limits,
    ) -> Arc<Pipeline> {
        let budget_kib =
            (limits.max_pending_bytes / 1024).clamp(1, u64::from(u32::MAX >> 3)) as u32;
        Arc::new(Pipeline {
            sink,
            schemas,
            enrichment,
            metrics,
            default_tenant,
            budget: Arc::new(Semaphore::new(budget_kib as usize)),
            budget_kib,
            max_batch_records: limits.max_batch_records,
            connection_slots: Arc::new(Semaphore::new(limits.max_connections)),
            idle_timeout: limits.idle_timeout,
            frame_timeout: limits.frame_timeout,
            max_ahead_nanos: limits.max_timestamp_ahead.map_or(i64::MAX, |ahead| {
                i64::try_from(ahead.as_nanos()).unwrap_or(i64::MAX)
            }),
            first_seen: std::sync::Mutex::new(FirstSeen::default()),
            storage_warned: std::sync::Mutex::new(None),
        })
    }

    /// `ingest.maxPendingBytes`, as the budget counts it (whole KiB).
    pub fn budget_bytes(&self) -> usize {
        self.budget_kib as usize * 1024
    }

    /// `ingest.maxBatchRecords`.
    pub fn max_batch_records(&self) -> usize {
        self.max_batch_records
    }

    pub fn metrics(&self) -> &IngestMetrics {
        &self.metrics
    }

    pub fn schemas(&self) -> &SchemaRegistry {
        &self.schemas
    }

    fn permits_for(&self, bytes: usize) -> u32 {
        ((bytes as u64).div_ceil(1024).max(1)).min(u64::from(self.budget_kib)) as u32
    }

    /// Admits a TCP connection just accepted, or refuses it (counted as a protocol error of
    /// kind `too_many_connections`, and logged) when every slot is taken: each connection
    /// holds buffers and TLS state, so their number bounds memory as the byte budget does.
    pub fn admit_connection(
        &self,
        listener: &str,
        peer: std::net::SocketAddr,
    ) -> Option<Connection> {
        let Ok(slot) = self.connection_slots.clone().try_acquire_owned() else {
            let refused = self
                .metrics
                .protocol_errors
                .get_or_create(&label("kind", "too_many_connections"));
            // Once per 1,000 refusals: a flood of connections must not flood the log too.
            let before = refused.inc();
            if before.is_multiple_of(1000) {
                tracing::warn!(
                    %peer,
                    listener,
                    refused = before + 1,
                    "connection refused: every ingest connection slot is taken (ingest.maxConnections)"
                );
            }
            return None;
        };
        self.metrics.connections.inc();
        Some(Connection {
            _slot: slot,
            gauge: self.metrics.connections.clone(),
        })
    }

    /// Resolves once a TCP connection has been idle too long (`ingest.idleTimeout`; never
    /// without one), counting the close: race it with the connection's next read.
    pub async fn idle(&self) {
        match self.idle_timeout {
            Some(timeout) => {
                tokio::time::sleep(timeout).await;
                self.metrics.idle_closes.inc();
            }
            None => std::future::pending().await,
        }
    }

    /// `ingest.frameTimeout`: how long a started frame (or HTTP request body) may take.
    pub fn frame_timeout(&self) -> Option<std::time::Duration> {
        self.frame_timeout
    }

    /// `read` (the rest of a started frame's header, or its payload) if it finishes within
    /// `ingest.frameTimeout`; `None`, counted as the protocol error `frame_timeout`, if not.
    pub async fn frame_part<T>(&self, read: impl Future<Output = T>) -> Option<T> {
        let Some(timeout) = self.frame_timeout else {
            return Some(read.await);
        };
        let result = tokio::time::timeout(timeout, read).await.ok();
        if result.is_none() {
            self.metrics
                .protocol_errors
                .get_or_create(&label("kind", "frame_timeout"))
                .inc();
        }
        result
    }

    /// Waits until `bytes` fit in the pending budget (backpressure for TCP listeners).
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(self.permits_for(bytes))
            .await
            .expect("the budget semaphore is never closed");
        self.metrics.pending_bytes.inc_by(bytes as i64);
        Reservation {
            _permit: permit,
            bytes: bytes as u64,
            metrics: self.metrics.clone(),
        }
    }

    /// Reserves without waiting (UDP and HTTP answer "busy" instead of waiting).
    pub fn try_reserve(&self, bytes: usize) -> Option<Reservation> {
        let permit = self
            .budget
            .clone()
            .try_acquire_many_owned(self.permits_for(bytes))
            .ok()?;
        self.metrics.pending_bytes.inc_by(bytes as i64);
        Some(Reservation {
            _permit: permit,
            bytes: bytes as u64,
            metrics: self.metrics.clone(),
        })
    }

    /// Decodes a payload of `format` and ingests it. Decoding runs on a blocking thread.
    pub async fn ingest_payload(
        self: &Arc<Self>,
        format: Format,
        source: BatchSource,
        payload: Vec<u8>,
    ) -> BatchResult {
        let len = payload.len();
        let input_format = source.format;
        let max_records = self.max_batch_records;
        // Records keep their parsed JSON only when a schema of the set that will validate
        // them could want it.
        let context = move |schemas: &SchemaSet| DecodeContext {
            default_service: "unknown".to_string(),
            keep_original: schemas.has_schema_for_format(input_format),
            max_records,
        };
        if self.sink.takes_views() {
            let views: Option<ViewsDecoder> = match format {
                Format::Json => Some(decode::decode_json_views),
                Format::Protobuf => Some(decode::decode_protobuf_views),
                _ => None,
            };
            if let Some(views) = views {
                return self
                    .ingest_views(format, views, source, payload, context)
                    .await;
            }
        }
        self.ingest_with(source, len, move |schemas| {
            decode::decode_payload(format, &payload, &context(schemas))
                .map_err(|error| (error.reason(), error.to_string()))
        })
        .await
    }

    /// [`Pipeline::ingest_payload`] for a sink that takes views: records are decoded as
    /// views of the payload by `views` and stored from them on the decoding thread; a
    /// payload the views cannot read is decoded as usual.
    async fn ingest_views(
        self: &Arc<Self>,
        format: Format,
        views: ViewsDecoder,
        source: BatchSource,
        payload: Vec<u8>,
        context: impl FnOnce(&SchemaSet) -> DecodeContext + Send + 'static,
    ) -> BatchResult {
        let len = payload.len();
        self.ingest_prepared(source, len, move |pipeline, source, schemas| {
            let ctx = context(schemas);
            match views(&payload, &ctx) {
                Some(Ok(output)) => {
                    pipeline.check_record_count(output.records.len() + output.errors.len())?;
                    Ok(pipeline.prepare_views_and_store(source, output, schemas))
                }
                Some(Err(error)) => Err((error.reason(), error.to_string())),
                None => decode::decode_payload(format, &payload, &ctx)
                    .map_err(|error| (error.reason(), error.to_string()))
                    .and_then(|output| pipeline.within_limit(output))
                    .map(|output| pipeline.prepare_and_store(source, output, schemas)),
            }
        })
        .await
    }

    /// Runs `decode` (a payload of `payload_len` bytes) on a blocking thread and ingests what
    /// it yields; an `Err` refuses the whole payload with that reason and message. `decode`
    /// is given the schemas that will validate its records.
    pub async fn ingest_with<F>(
        self: &Arc<Self>,
        source: BatchSource,
        payload_len: usize,
        decode: F,
    ) -> BatchResult
    where
        F: FnOnce(&SchemaSet) -> Result<DecodeOutput, (RejectReason, String)> + Send + 'static,
    {
        self.ingest_on_blocking_thread(source, payload_len, true, decode)
            .await
    }

    /// [`Pipeline::ingest_with`]; `client_batch: false` for a batch a listener cut itself
    /// (UDP, a syslog stream), bounded by its read size and never refused for its record
    /// count.
    pub(crate) async fn ingest_on_blocking_thread<F>(
        self: &Arc<Self>,
        source: BatchSource,
        payload_len: usize,
        client_batch: bool,
        decode: F,
    ) -> BatchResult
    where
        F: FnOnce(&SchemaSet) -> Result<DecodeOutput, (RejectReason, String)> + Send + 'static,
    {
        self.ingest_prepared(source, payload_len, move |pipeline, source, schemas| {
            let output = decode(schemas)?;
            let output = if client_batch {
                pipeline.within_limit(output)?
            } else {
                output
            };
            Ok(pipeline.prepare_and_store(source, output, schemas))
        })
        .await
    }

    /// [`Pipeline::prepare`], and the accepted entries handed to the sink on this (blocking)
    /// thread.
    fn prepare_and_store(
        &self,
        source: &BatchSource,
        output: DecodeOutput,
        schemas: &SchemaSet,
    ) -> Prepared {
        let mut prepared = self.prepare(source, output, schemas);
        if let Accepted::Entries(entries) = &mut prepared.accepted
            && !entries.is_empty()
        {
            let entries = std::mem::take(entries);
            // Counted until the store future ends, or is dropped unfinished (the ingest was
            // abandoned), or the sink panics here.
            let inflight = InFlight::start(&self.metrics);
            let stored = self
                .sink
                .append_from_blocking_thread(prepared.batch_uid, entries);
            prepared.accepted = Accepted::Storing(Box::pin(async move {
                let _inflight = inflight;
                stored.await
            }));
        }
        prepared
    }

    /// Runs `work` (decode, prepare, hand to the sink) for a payload of `payload_len` bytes
    /// on a blocking thread, and answers the batch once stored; an `Err` refuses the whole
    /// payload with that reason and message.
    async fn ingest_prepared<F>(
        self: &Arc<Self>,
        source: BatchSource,
        payload_len: usize,
        work: F,
    ) -> BatchResult
    where
        F: FnOnce(&Pipeline, &BatchSource, &SchemaSet) -> Result<Prepared, (RejectReason, String)>
            + Send
            + 'static,
    {
        let started = Instant::now();
        self.metrics
            .bytes
            .get_or_create(&label("format", source.format))
            .inc_by(payload_len as u64);
        self.metrics
            .totals
            .bytes
            .fetch_add(payload_len as u64, Ordering::Relaxed);
        let pipeline = self.clone();
        let src = source.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            let schemas = pipeline.schemas.current();
            work(&pipeline, &src, &schemas)
        })
        .await;
        match prepared {
            Ok(Ok(prepared)) => self.commit(source, prepared, started).await,
            Ok(Err((reason, message))) => self.refuse(&source, started, reason, &message),
            Err(join) => self.finish(
                started,
                BatchResult {
                    status: AckStatus::RetryLater,
                    accepted: 0,
                    rejected: 0,
                    duplicate: false,
                    error: format!("internal error while decoding or storing the batch: {join}"),
                    record_errors: Vec::new(),
                    batch_uid: 0,
                },
            ),
        }
    }

    /// The check of `ingest.maxBatchRecords` for batches a client cut (frames, HTTP bodies,
    /// compatible APIs; decoders of framed payloads stop at it already). Batches the UDP and
    /// syslog listeners make themselves (`Pipeline::ingest_on_blocking_thread` with `client_batch: false`) are bounded by their
    /// read size instead, and are never refused for their count.
    fn within_limit(&self, output: DecodeOutput) -> Result<DecodeOutput, (RejectReason, String)> {
        self.check_record_count(output.len())?;
        Ok(output)
    }

    /// [`Pipeline::within_limit`] of a payload's count of records, accepted or refused.
    fn check_record_count(&self, records: usize) -> Result<(), (RejectReason, String)> {
        if records > self.max_batch_records {
            let error = decode::PayloadError::TooManyRecords(self.max_batch_records);
            return Err((error.reason(), error.to_string()));
        }
        Ok(())
    }

    /// Refuses a whole payload: counted by format and reason, answered with the reason.
    fn refuse(
        &self,
        source: &BatchSource,
        started: Instant,
        reason: RejectReason,
        message: &str,
    ) -> BatchResult {
        self.count_rejected(source.format, reason, 1);
        self.finish(
            started,
            BatchResult {
                status: AckStatus::Rejected,
                accepted: 0,
                rejected: 1,
                duplicate: false,
                error: format!("payload rejected: {message}"),
                record_errors: Vec::new(),
                batch_uid: 0,
            },
        )
    }

    /// Tenant, validation, enrichment and ids (CPU only).
    fn prepare(&self, source: &BatchSource, output: DecodeOutput, schemas: &SchemaSet) -> Prepared {
        let (batch_uid, received_at) = self.batch_uid_and_time(source);
        if output.repaired > 0 {
            self.metrics
                .utf8_repaired
                .get_or_create(&label("format", source.format))
                .inc_by(output.repaired as u64);
        }
        let records = output
            .records
            .into_iter()
            .map(|Decoded { entry, original }| (entry, original));
        let (kept, errors) =
            self.prepare_entries(source, records, output.errors, schemas, received_at);
        let entries: Vec<LogEntry> = kept
            .into_iter()
            .map(|(position, mut entry)| {
                entry.id = logcluster_common::ids::entry_id(batch_uid, position);
                entry
            })
            .collect();
        Prepared {
            batch_uid,
            count: entries.len() as u32,
            accepted: Accepted::Entries(entries),
            errors,
        }
    }

    /// [`Pipeline::prepare`] of JSON decoded as views of its payload, handed to the sink
    /// right here with their protobuf bodies (which become the WAL records): no owned entry
    /// is made for a record the views took.
    fn prepare_views_and_store(
        &self,
        source: &BatchSource,
        output: decode::ViewsOutput<'_>,
        schemas: &SchemaSet,
    ) -> Prepared {
        let (batch_uid, received_at) = self.batch_uid_and_time(source);
        // Records the views left are owned entries: kept aside, viewed once prepared.
        let mut owned = Vec::new();
        let records = output.records.into_iter().map(|record| match record {
            decode::Record::View(view) => (Draft::View(view), None),
            decode::Record::Owned(Decoded { entry, original }) => (Draft::Owned(entry), original),
        });
        let (kept, errors) =
            self.prepare_entries(source, records, output.errors, schemas, received_at);
        let kept: Vec<(u32, Option<EntryRef<'_>>)> = kept
            .into_iter()
            .map(|(position, draft)| match draft {
                Draft::View(view) => (position, Some(view)),
                Draft::Owned(entry) => {
                    owned.push(entry);
                    (position, None)
                }
            })
            .collect();
        let count = kept.len() as u32;
        if kept.is_empty() {
            return Prepared {
                batch_uid,
                count,
                accepted: Accepted::Entries(Vec::new()),
                errors,
            };
        }
        // Every id in one string (they are all ENTRY_ID_LEN ASCII bytes long).
        use logcluster_proto::ids::{ENTRY_ID_LEN, push_entry_id};
        let mut id_bytes = Vec::with_capacity(kept.len() * ENTRY_ID_LEN);
        for (position, _) in &kept {
            push_entry_id(&mut id_bytes, batch_uid, *position);
        }
        let ids = String::from_utf8(id_bytes).unwrap_or_default();
        let mut owned = owned.iter();
        let views: Vec<EntryRef<'_>> = kept
            .into_iter()
            .enumerate()
            .map(|(i, (_, view))| {
                let mut view = view.unwrap_or_else(|| {
                    EntryRef::of(owned.next().expect("one owned entry per draft left"))
                });
                view.id = ids
                    .get(i * ENTRY_ID_LEN..(i + 1) * ENTRY_ID_LEN)
                    .unwrap_or_default();
                view
            })
            .collect();
        let mut source_bytes = Vec::with_capacity(views.len() * 256);
        let mut spans = Vec::with_capacity(views.len());
        for view in &views {
            let start = source_bytes.len();
            view.encode_body(&mut source_bytes);
            spans.push(start..source_bytes.len());
        }
        let bodies = EntryBodies {
            source: &source_bytes,
            spans,
        };
        // Counted until the store future ends, or is dropped unfinished (the ingest was
        // abandoned), or the sink panics here.
        let inflight = InFlight::start(&self.metrics);
        let stored = self
            .sink
            .append_views_from_blocking_thread(batch_uid, views, &bodies);
        Prepared {
            batch_uid,
            count,
            accepted: Accepted::Storing(Box::pin(async move {
                let _inflight = inflight;
                stored.await
            })),
            errors,
        }
    }

    /// The batch's uid and receive time: a retried batch id keeps its first receive time.
    fn batch_uid_and_time(&self, source: &BatchSource) -> (u64, i64) {
        let now = logcluster_proto::time::now_nanos();
        if source.batch_id == 0 {
            (logcluster_common::ids::random_u64(), now)
        } else {
            let uid = logcluster_common::ids::batch_uid(
                source.tenant.as_deref().unwrap_or(""),
                source.batch_id,
            );
            let mut first_seen = self.first_seen.lock().unwrap_or_else(|p| p.into_inner());
            (uid, first_seen.received_at(uid, now))
        }
    }

    /// Tenant, validation, receive time and enrichment of decoded records (each with its
    /// parsed JSON when kept), after `errors` the decoder refused: the entries kept, each
    /// with its position among the records (which its id is made of), and every refusal,
    /// counted, in payload order.
    fn prepare_entries<'a, E: Prepare<'a>>(
        &'a self,
        source: &'a BatchSource,
        records: impl Iterator<Item = (E, Option<serde_json::Value>)>,
        errors: Vec<RecordError>,
        schemas: &SchemaSet,
        received_at: i64,
    ) -> (Vec<(u32, E)>, Vec<RecordError>) {
        let mut errors = errors;
        for error in &errors {
            self.count_rejected(source.format, error.reason, 1);
        }
        let mut entries = Vec::with_capacity(records.size_hint().0);
        // Every payload item is either a record or a decode error, in order: the k-th record's
        // payload index is the k-th index that no decode error took.
        let mut decode_failed: Vec<usize> = errors.iter().map(|e| e.index).collect();
        decode_failed.sort_unstable();
        let mut failed = decode_failed.into_iter().peekable();
        let mut next_index = 0usize;
        for (position, (mut entry, original)) in records.enumerate() {
            while let Some(&taken) = failed.peek() {
                if taken > next_index {
                    break;
                }
                failed.next();
                if taken == next_index {
                    next_index += 1;
                }
            }
            let index = next_index;
            next_index += 1;
            if let Some(tenant) = &source.tenant {
                entry.set_tenant(tenant);
            } else if entry.tenant_is_empty() {
                entry.set_tenant(&self.default_tenant);
            }
            if entry.service().is_empty() {
                entry.set_service("unknown");
            }
            if schemas.has_schema_for(entry.service(), source.format) {
                let view = original.unwrap_or_else(|| entry.schema_view());
                if let Err(violation) = schemas.validate(entry.service(), source.format, &view) {
                    self.metrics
                        .schema_rejects
                        .get_or_create(&labels2(
                            "schema",
                            &violation.schema,
                            "reason",
                            violation.reason,
                        ))
                        .inc();
                    self.count_rejected(source.format, RejectReason::Schema, 1);
                    errors.push(RecordError {
                        index,
                        reason: decode::RejectReason::Schema,
                        message: format!("schema {}: {}", violation.schema, violation.message),
                    });
                    continue;
                }
            }
            let timestamp = entry.timestamp();
            if timestamp == 0 {
                entry.set_times(received_at, received_at);
            } else if timestamp.saturating_sub(received_at) > self.max_ahead_nanos {
                // Judged against the batch's first receive time: a retry is judged the same.
                self.count_rejected(source.format, RejectReason::FutureTimestamp, 1);
                errors.push(RecordError {
                    index,
                    reason: RejectReason::FutureTimestamp,
                    message: format!(
                        "timestamp {} is more than ingest.maxTimestampAhead ahead of the node's clock ({})",
                        logcluster_proto::time::format_rfc3339(timestamp),
                        logcluster_proto::time::format_rfc3339(received_at),
                    ),
                });
                continue;
            } else {
                entry.set_times(timestamp.min(LAST_TIMESTAMP), received_at);
            }
            entry.enrich(&self.enrichment);
            entries.push((position as u32, entry));
        }
        errors.sort_by_key(|e| e.index);
        (entries, errors)
    }

    async fn commit(
        &self,
        source: BatchSource,
        prepared: Prepared,
        started: Instant,
    ) -> BatchResult {
        let Prepared {
            batch_uid,
            accepted,
            mut errors,
            count,
        } = prepared;
        let first_error = |errors: &[RecordError]| {
            errors
                .first()
                .map(|e| format!("record {}: {}", e.index, e.message))
                .unwrap_or_default()
        };
        if count == 0 {
            let rejected = errors.len() as u32;
            return self.finish(
                started,
                BatchResult {
                    status: if rejected > 0 {
                        AckStatus::Rejected
                    } else {
                        AckStatus::Accepted
                    },
                    accepted: 0,
                    rejected,
                    duplicate: false,
                    error: first_error(&errors),
                    record_errors: errors,
                    batch_uid: 0,
                },
            );
        }
        let stored = match accepted {
            // Counted in flight since it was handed to the sink.
            Accepted::Storing(stored) => stored.await,
            Accepted::Entries(entries) => {
                let _inflight = InFlight::start(&self.metrics);
                self.sink.append(batch_uid, entries).await
            }
        };
        match stored {
            Ok(SinkOutcome {
                duplicates,
                too_large,
                too_many_streams,
            }) => {
                let count = count - too_large.len() as u32 - too_many_streams.len() as u32;
                for (positions, reason, message) in [
                    (&too_large, RejectReason::PartTooLarge, PART_TOO_LARGE),
                    (
                        &too_many_streams,
                        RejectReason::TooManyStreams,
                        TOO_MANY_STREAMS,
                    ),
                ] {
                    if positions.is_empty() {
                        continue;
                    }
                    self.count_rejected(source.format, reason, positions.len() as u64);
                    let refused = payload_indices(&errors, positions)
                        .into_iter()
                        .map(|index| RecordError {
                            index,
                            reason,
                            message: message.to_string(),
                        })
                        .collect::<Vec<_>>();
                    errors.extend(refused);
                }
                errors.sort_by_key(|e| e.index);
                let rejected = errors.len() as u32;
                self.metrics.duplicate_entries.inc_by(duplicates as u64);
                self.metrics
                    .entries
                    .get_or_create(&label("format", source.format))
                    .inc_by(u64::from(count) - duplicates as u64);
                self.metrics
                    .totals
                    .entries
                    .fetch_add(u64::from(count) - duplicates as u64, Ordering::Relaxed);
                self.finish(
                    started,
                    BatchResult {
                        status: if count == 0 {
                            AckStatus::Rejected
                        } else if rejected > 0 {
                            AckStatus::Partial
                        } else {
                            AckStatus::Accepted
                        },
                        accepted: count,
                        rejected,
                        duplicate: duplicates > 0 && duplicates == count as usize,
                        error: first_error(&errors),
                        record_errors: errors,
                        batch_uid: if count == 0 { 0 } else { batch_uid },
                    },
                )
            }
            Err(message) => {
                self.warn_storage_failed(&message);
                self.finish(
                    started,
                    BatchResult {
                        status: AckStatus::RetryLater,
                        accepted: 0,
                        rejected: errors.len() as u32,
                        duplicate: false,
                        error: format!("storage unavailable, retry later: {message}"),
                        record_errors: errors,
                        batch_uid: 0,
                    },
                )
            }
        }
    }

    /// Logs why storage failed a batch: the client only gets retry-later, and an operator
    /// needs the cause (a full disk, the open-file limit). Rate-limited.
    fn warn_storage_failed(&self, message: &str) {
        let mut warned = self
            .storage_warned
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if warned.is_none_or(|at| at.elapsed() >= STORAGE_WARNING_EVERY) {
            *warned = Some(Instant::now());
            tracing::warn!(error = %message, "storage failed a batch; the client is told to retry later (logged at most every 10 s; counted in logcluster_ingest_batches{{status=\"retry_later\"}})");
        }
    }

    /// Counts `n` refused records in `logcluster_ingest_rejected{format,reason}`.
    fn count_rejected(&self, format: &str, reason: RejectReason, n: u64) {
        self.metrics.count_rejected(format, reason.label(), n);
    }

    fn finish(&self, started: Instant, result: BatchResult) -> BatchResult {
        let elapsed = started.elapsed();
        self.metrics
            .ack_latency_seconds
            .observe(elapsed.as_secs_f64());
        let totals = &self.metrics.totals;
        totals.acks.fetch_add(1, Ordering::Relaxed);
        totals
            .ack_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        totals
            .rejected
            .fetch_add(u64::from(result.rejected), Ordering::Relaxed);
        let status = match result.status {
            AckStatus::Accepted => "accepted",
            AckStatus::Partial => "partial",
            AckStatus::Rejected => "rejected",
            AckStatus::RetryLater => "retry_later",
            AckStatus::ProtocolError => "protocol_error",
        };
        self.metrics
            .batches
            .get_or_create(&label("status", status))
            .inc();
        result
    }
}

/// A decoder of a format's payload into views of it ([`decode::decode_json_views`]).
type ViewsDecoder = for<'a> fn(
    &'a [u8],
    &'a DecodeContext,
) -> Option<Result<decode::ViewsOutput<'a>, decode::PayloadError>>;

/// What [`Pipeline::prepare_entries`] changes in an entry, owned or a view; a view takes
/// the text it is given by reference.
trait Prepare<'a> {
    fn tenant_is_empty(&self) -> bool;
    fn set_tenant(&mut self, tenant: &'a str);
    fn service(&self) -> &str;
    fn set_service(&mut self, service: &'static str);
    fn timestamp(&self) -> i64;
    fn set_times(&mut self, timestamp: i64, received_at: i64);
    fn enrich(&mut self, enrichment: &'a Enrichment);
    /// What a schema validates when the record's JSON was not kept.
    fn schema_view(&self) -> serde_json::Value;
}

impl<'a> Prepare<'a> for LogEntry {
    fn tenant_is_empty(&self) -> bool {
        self.tenant.is_empty()
    }
    fn set_tenant(&mut self, tenant: &'a str) {
        tenant.clone_into(&mut self.tenant);
    }
    fn service(&self) -> &str {
        &self.service
    }
    fn set_service(&mut self, service: &'static str) {
        service.clone_into(&mut self.service);
    }
    fn timestamp(&self) -> i64 {
        self.timestamp
    }
    fn set_times(&mut self, timestamp: i64, received_at: i64) {
        self.timestamp = timestamp;
        self.received_at = received_at;
    }
    fn enrich(&mut self, enrichment: &'a Enrichment) {
        enrichment.apply(self);
    }
    fn schema_view(&self) -> serde_json::Value {
        schema_view(self)
    }
}

impl<'a> Prepare<'a> for EntryRef<'a> {
    fn tenant_is_empty(&self) -> bool {
        self.tenant.is_empty()
    }
    fn set_tenant(&mut self, tenant: &'a str) {
        self.tenant = tenant;
    }
    fn service(&self) -> &str {
        self.service
    }
    fn set_service(&mut self, service: &'static str) {
        self.service = service;
    }
    fn timestamp(&self) -> i64 {
        self.timestamp
    }
    fn set_times(&mut self, timestamp: i64, received_at: i64) {
        self.timestamp = timestamp;
        self.received_at = received_at;
    }
    fn enrich(&mut self, enrichment: &'a Enrichment) {
        enrichment.apply_to_view(self);
    }
    fn schema_view(&self) -> serde_json::Value {
        schema_view(&self.to_entry())
    }
}

/// A record of [`Pipeline::prepare_views_and_store`]: a view of its payload, or an owned
/// entry the views could not take.
enum Draft<'a> {
    View(EntryRef<'a>),
    Owned(LogEntry),
}

impl<'a> Prepare<'a> for Draft<'a> {
    fn tenant_is_empty(&self) -> bool {
        match self {
            Draft::View(view) => view.tenant_is_empty(),
            Draft::Owned(entry) => entry.tenant_is_empty(),
        }
    }
    fn set_tenant(&mut self, tenant: &'a str) {
        match self {
            Draft::View(view) => view.set_tenant(tenant),
            Draft::Owned(entry) => entry.set_tenant(tenant),
        }
    }
    fn service(&self) -> &str {
        match self {
            Draft::View(view) => view.service,
            Draft::Owned(entry) => &entry.service,
        }
    }
    fn set_service(&mut self, service: &'static str) {
        match self {
            Draft::View(view) => view.set_service(service),
            Draft::Owned(entry) => Prepare::set_service(entry, service),
        }
    }
    fn timestamp(&self) -> i64 {
        match self {
            Draft::View(view) => view.timestamp,
            Draft::Owned(entry) => entry.timestamp,
        }
    }
    fn set_times(&mut self, timestamp: i64, received_at: i64) {
        match self {
            Draft::View(view) => view.set_times(timestamp, received_at),
            Draft::Owned(entry) => entry.set_times(timestamp, received_at),
        }
    }
    fn enrich(&mut self, enrichment: &'a Enrichment) {
        match self {
            Draft::View(view) => view.enrich(enrichment),
            Draft::Owned(entry) => entry.enrich(enrichment),
        }
    }
    fn schema_view(&self) -> serde_json::Value {
        match self {
            Draft::View(view) => Prepare::schema_view(view),
            Draft::Owned(entry) => schema_view(entry),
        }
    }
}

struct Prepared {
    batch_uid: u64,
    accepted: Accepted,
    /// Refused records, in payload order.
    errors: Vec<RecordError>,
    /// How many entries were accepted.
    count: u32,
}

/// A batch's accepted entries: still to be handed to the sink, or handed to it already (on
/// the thread that decoded them) and being stored.
enum Accepted {
    Entries(Vec<LogEntry>),
    Storing(Stored),
}

/// The JSON view a schema validates for entries that did not arrive as JSON: the core fields
/// and the free-form fields side by side at the top level.
pub fn schema_view(entry: &LogEntry) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (key, value) in &entry.fields {
        map.insert(key.clone(), logcluster_proto::json::field_to_json(value));
    }
    let core = [
        ("message", entry.message.clone()),
        ("level", entry.level_enum().as_str().to_string()),
        ("service", entry.service.clone()),
        ("host", entry.host.clone()),
        ("tenant", entry.tenant.clone()),
        ("trace_id", entry.trace_id.clone()),
    ];
    for (key, value) in core {
        if !value.is_empty() {
            map.insert(key.to_string(), serde_json::Value::String(value));
        }
    }
    if entry.timestamp != 0 {
        map.insert(
            "timestamp".into(),
            serde_json::Value::String(logcluster_proto::time::format_rfc3339(entry.timestamp)),
        );
    }
    serde_json::Value::Object(map)
}

/// The error of an entry whose part of the batch was too large to store.
/// The latest timestamp an entry is stored with (a nanosecond before `i64::MAX`, in 2262):
/// time ranges end before their `to`, so a whole stream is read over `..i64::MAX`, and an
/// entry stamped `i64::MAX` would be left out of hand-overs and repairs.
const LAST_TIMESTAMP: i64 = i64::MAX - 1;

const TOO_MANY_STREAMS: &str = "this record's tenant and service would be a new stream, and the node holds its limit of streams (storage.maxStreams); records of existing streams are stored";
const PART_TOO_LARGE: &str = "this record's stream takes more than the 256 MiB limit of a write-ahead log record in this batch once decoded, or (in a cluster) the batch takes more than a replica request holds (for example JSON whose nested keys grow when flattened); the same batch is refused again, send fewer or smaller records per batch";

/// Payload indices of the accepted entries at `positions` (ascending; sinks give them so, and
/// any other is skipped): the k-th accepted entry's index is the k-th index that no refused
/// record took (`refused` sorted by index).
fn payload_indices(refused: &[RecordError], positions: &[u32]) -> Vec<usize> {
    debug_assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    let mut out = Vec::with_capacity(positions.len());
    let mut refused = refused.iter().map(|e| e.index).peekable();
    let mut wanted = positions.iter().map(|&p| p as usize).peekable();
    let (mut index, mut position) = (0usize, 0usize);
    while let Some(&next) = wanted.peek() {
        while refused.next_if(|&r| r < index).is_some() {}
        if refused.next_if_eq(&index).is_some() {
            index += 1;
            continue;
        }
        if position > next {
            wanted.next();
            continue;
        }
        if position == next {
            out.push(index);
            wanted.next();
        }
        position += 1;
        index += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that panics while storing: the CPU work a sink does on the decoding thread.
    struct PanickingSink;

    impl Sink for PanickingSink {
        fn append(&self, _: u64, _: Vec<LogEntry>) -> Stored {
            Box::pin(async { Ok(SinkOutcome::default()) })
        }

        fn append_from_blocking_thread(&self, _: u64, _: Vec<LogEntry>) -> Stored {
            panic!("the sink failed while storing");
        }
    }

    /// A sink whose store never finishes; it says when its store is first awaited, which is
    /// on the ingest's own task, after the blocking thread has handed the batch back.
    struct StuckSink(Arc<tokio::sync::Notify>);

    impl Sink for StuckSink {
        fn append(&self, _: u64, _: Vec<LogEntry>) -> Stored {
            let awaited = self.0.clone();
            Box::pin(async move {
                awaited.notify_one();
                std::future::pending().await
            })
        }
    }

    fn pipeline(sink: Box<dyn Sink>) -> Arc<Pipeline> {
        pipeline_ahead(sink, Some(std::time::Duration::from_secs(3600)))
    }

    fn pipeline_ahead(
        sink: Box<dyn Sink>,
        max_timestamp_ahead: Option<std::time::Duration>,
    ) -> Arc<Pipeline> {
        Pipeline::new(
            sink,
            SchemaRegistry::new(),
            Enrichment::default(),
            IngestMetrics::default(),
            "default".to_string(),
            Limits {
                max_pending_bytes: 1 << 20,
                max_batch_records: 1000,
                max_connections: 8,
                idle_timeout: None,
                frame_timeout: None,
                max_timestamp_ahead,
            },
        )
    }

    /// With no limit ahead, the latest timestamps are kept, save `i64::MAX` itself: a time
    /// range ends before its `to`, so reads of a whole stream (`..i64::MAX`: hand-overs,
    /// repairs) would leave such an entry out.
    #[test]
    fn a_record_stamped_at_the_end_of_time_is_stored_a_nanosecond_earlier() {
        let pipeline = pipeline_ahead(Box::new(PanickingSink), None);
        let output = DecodeOutput {
            records: [i64::MAX, i64::MAX - 1, 1_700_000_000_000_000_000]
                .into_iter()
                .map(|timestamp| decode::Decoded {
                    entry: LogEntry {
                        timestamp,
                        message: "m".into(),
                        ..LogEntry::default()
                    },
                    original: None,
                })
                .collect(),
            ..DecodeOutput::default()
        };
        let prepared = pipeline.prepare(&source(), output, &pipeline.schemas.current());
        let Accepted::Entries(entries) = prepared.accepted else {
            panic!("prepare stores nothing");
        };
        let stamps: Vec<i64> = entries.iter().map(|e| e.timestamp).collect();
        assert_eq!(
            stamps,
            [i64::MAX - 1, i64::MAX - 1, 1_700_000_000_000_000_000]
        );
    }

    fn source() -> BatchSource {
        BatchSource {
            format: "json",
            tenant: Some("t".to_string()),
            batch_id: 7,
        }
    }

    const PAYLOAD: &[u8] = b"{\"message\":\"one\"}\n{\"message\":\"two\"}\n";

    /// A sink that keeps what it is given: owned entries, or views (then also checking that
    /// each body is the view's encoding).
    struct RecordingSink {
        views: bool,
        got: std::sync::Mutex<Vec<LogEntry>>,
        viewed: std::sync::atomic::AtomicUsize,
    }

    impl Sink for RecordingSink {
        fn append(&self, _: u64, entries: Vec<LogEntry>) -> Stored {
            self.got.lock().expect("lock").extend(entries);
            Box::pin(async { Ok(SinkOutcome::default()) })
        }

        fn takes_views(&self) -> bool {
            self.views
        }

        fn append_views_from_blocking_thread(
            &self,
            batch_uid: u64,
            views: Vec<EntryRef<'_>>,
            bodies: &EntryBodies<'_>,
        ) -> Stored {
            use prost::Message;
            assert_eq!(views.len(), bodies.spans.len());
            for (view, span) in views.iter().zip(&bodies.spans) {
                let body = &bodies.source[span.clone()];
                assert_eq!(body, view.to_entry().encode_to_vec().as_slice());
            }
            self.viewed
                .fetch_add(views.len(), std::sync::atomic::Ordering::Relaxed);
            self.append(batch_uid, views.iter().map(EntryRef::to_entry).collect())
        }
    }

    /// JSON decoded as views of the payload is prepared exactly as owned entries are:
    /// tenant, default service, receive time, refusals, ids and every enrichment field
    /// (kept where the record has its own), with records the views cannot take mixed in.
    #[tokio::test]
    async fn views_are_prepared_and_enriched_as_owned_entries_are() {
        let enrichment = Enrichment {
            host: Some("node-host".into()),
            environment: Some("prod".into()),
            app_version: Some("1.2.3".into()),
            pod: Some("pod-1".into()),
            namespace: Some("ns".into()),
            node: Some("node-a".into()),
        };
        let payload = [
            r#"{"message":"one","host":"h1","environment":"mine"}"#,
            r#"{"msg":"two","level":"warn","ts":1714572000,"service":"svc","k8s.node":"n0","zz":1}"#,
            r#"{"message":"nested","http":{"status":500}}"#,
            r#"{"message":"future","timestamp":"2999-01-01T00:00:00Z"}"#,
            "not json",
            r#"{"message":"esc\"aped","tenant":"x","app_version":"own"}"#,
            r#"{"message":"no tenant of its own, nor a service","a.b":"c"}"#,
        ]
        .join("\n");
        let mut answers = Vec::new();
        let mut stored = Vec::new();
        for views in [false, true] {
            let sink = Arc::new(RecordingSink {
                views,
                got: std::sync::Mutex::new(Vec::new()),
                viewed: std::sync::atomic::AtomicUsize::new(0),
            });
            struct Shared(Arc<RecordingSink>);
            impl Sink for Shared {
                fn append(&self, uid: u64, entries: Vec<LogEntry>) -> Stored {
                    self.0.append(uid, entries)
                }
                fn takes_views(&self) -> bool {
                    self.0.takes_views()
                }
                fn append_views_from_blocking_thread(
                    &self,
                    uid: u64,
                    views: Vec<EntryRef<'_>>,
                    bodies: &EntryBodies<'_>,
                ) -> Stored {
                    self.0.append_views_from_blocking_thread(uid, views, bodies)
                }
            }
            let pipeline = Pipeline::new(
                Box::new(Shared(sink.clone())),
                SchemaRegistry::new(),
                enrichment.clone(),
                IngestMetrics::default(),
                "default".to_string(),
                Limits {
                    max_pending_bytes: 1 << 20,
                    max_batch_records: 1000,
                    max_connections: 8,
                    idle_timeout: None,
                    frame_timeout: None,
                    max_timestamp_ahead: Some(std::time::Duration::from_secs(3600)),
                },
            );
            for tenant in [Some("t".to_string()), None] {
                let result = pipeline
                    .ingest_payload(
                        Format::Json,
                        BatchSource { tenant, ..source() },
                        payload.clone().into_bytes(),
                    )
                    .await;
                answers.push(result);
            }
            // The five entries accepted each time reach a sink that takes views as views.
            let viewed = sink.viewed.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(viewed, if views { 10 } else { 0 });
            let mut entries = std::mem::take(&mut *sink.got.lock().expect("lock"));
            for entry in &mut entries {
                // Each pipeline stamps its own receive time.
                if entry.timestamp == entry.received_at {
                    entry.timestamp = 0;
                }
                entry.received_at = 0;
            }
            stored.push(entries);
        }
        assert_eq!(answers[0], answers[2]);
        assert_eq!(answers[1], answers[3]);
        assert_eq!(answers[0].accepted, 5, "{:?}", answers[0]);
        assert_eq!(answers[0].rejected, 2, "{:?}", answers[0]);
        assert_eq!(stored[0], stored[1]);
        let first = &stored[1][0];
        assert_eq!(first.host, "h1");
        assert_eq!(first.tenant, "t");
        assert_eq!(first.fields["environment"].to_text(), "mine");
        assert_eq!(first.fields["app_version"].to_text(), "1.2.3");
        assert_eq!(first.fields["k8s.pod"].to_text(), "pod-1");
        assert_eq!(first.fields["k8s.namespace"].to_text(), "ns");
        let second = &stored[1][1];
        assert_eq!(second.host, "node-host");
        assert_eq!(second.fields["k8s.node"].to_text(), "n0");
        let last = stored[1].last().expect("entries");
        assert_eq!(
            (last.tenant.as_str(), last.service.as_str()),
            ("default", "unknown")
        );
    }

    /// A sink that panics on the decoding thread answers retry-later, and the batch is no
    /// longer counted in flight.
    #[tokio::test]
    async fn a_sink_panic_is_retry_later_and_leaves_nothing_in_flight() {
        let pipeline = pipeline(Box::new(PanickingSink));
        let result = pipeline
            .ingest_payload(Format::Json, source(), PAYLOAD.to_vec())
            .await;
        assert_eq!(result.status, AckStatus::RetryLater, "{result:?}");
        assert!(result.error.contains("storing the batch"), "{result:?}");
        assert_eq!(pipeline.metrics().inflight_batches.get(), 0);
    }

    /// A retried batch (same client batch id) is stamped with its first attempt's receive
    /// time: its entries without a timestamp of their own are the same entries every time.
    #[test]
    fn a_retried_batch_keeps_the_receive_time_of_its_first_attempt() {
        // Only prepared (ids, receive time), never handed to the sink.
        let pipeline = pipeline(Box::new(PanickingSink));
        let prepared = |source: BatchSource| {
            let output = decode::decode_payload(Format::Json, PAYLOAD, &DecodeContext::default())
                .expect("decodes");
            match pipeline
                .prepare(&source, output, &pipeline.schemas.current())
                .accepted
            {
                Accepted::Entries(entries) => entries,
                Accepted::Storing(_) => panic!("prepare stores nothing"),
            }
        };
        let first = prepared(source());
        let retry = prepared(source());
        let other = prepared(BatchSource {
            batch_id: 8,
            ..source()
        });
        assert_eq!(first, retry);
        assert!(first.iter().all(|e| e.timestamp == e.received_at));
        assert_ne!(first[0].received_at, other[0].received_at);
    }

    /// A batch is counted in flight while it is being stored, and no longer once its ingest
    /// is abandoned (a client gone while the store was waiting).
    #[tokio::test]
    async fn an_abandoned_ingest_leaves_nothing_in_flight() {
        let awaited = Arc::new(tokio::sync::Notify::new());
        let pipeline = pipeline(Box::new(StuckSink(awaited.clone())));
        let ingest = {
            let pipeline = pipeline.clone();
            tokio::spawn(async move {
                pipeline
                    .ingest_payload(Format::Json, source(), PAYLOAD.to_vec())
                    .await
            })
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), awaited.notified())
            .await
            .expect("the store is awaited");
        assert_eq!(pipeline.metrics().inflight_batches.get(), 1);
        ingest.abort();
        assert!(ingest.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!(pipeline.metrics().inflight_batches.get(), 0);
    }

    /// A record stamped further ahead than `ingest.maxTimestampAhead` (an hour here) is
    /// refused and counted; the others keep their positions (and so their entry ids).
    #[test]
    fn a_record_stamped_too_far_ahead_is_refused_and_counted() {
        let pipeline = pipeline(Box::new(PanickingSink));
        let now = logcluster_proto::time::now_nanos();
        let at =
            |seconds: i64| logcluster_proto::time::format_rfc3339(now + seconds * 1_000_000_000);
        let payload = format!(
            "{{\"message\":\"now\",\"timestamp\":\"{}\"}}\n{{\"message\":\"skewed\",\"timestamp\":\"{}\"}}\n{{\"message\":\"ahead\",\"timestamp\":\"{}\"}}\n{{\"message\":\"no time\"}}",
            at(0),
            at(600),
            at(7200),
        );
        let output =
            decode::decode_payload(Format::Json, payload.as_bytes(), &DecodeContext::default())
                .expect("decodes");
        let prepared = pipeline.prepare(&source(), output, &pipeline.schemas.current());
        let Accepted::Entries(entries) = prepared.accepted else {
            panic!("prepare stores nothing");
        };
        let messages: Vec<&str> = entries.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["now", "skewed", "no time"]);
        assert_eq!(
            entries[2].id,
            logcluster_common::ids::entry_id(prepared.batch_uid, 3)
        );
        assert_eq!(prepared.errors.len(), 1);
        assert_eq!(prepared.errors[0].index, 2);
        assert_eq!(prepared.errors[0].reason, RejectReason::FutureTimestamp);
        assert!(
            prepared.errors[0].message.contains(&at(7200)),
            "{:?}",
            prepared.errors
        );
        let rejected = pipeline
            .metrics()
            .rejected
            .get_or_create(&labels2("format", "json", "reason", "future_timestamp"))
            .get();
        assert_eq!(rejected, 1);
    }

    #[test]
    fn refused_positions_map_to_payload_indices_past_earlier_refusals() {
        let refused = |indices: &[usize]| -> Vec<RecordError> {
            indices
                .iter()
                .map(|&index| RecordError {
                    index,
                    reason: RejectReason::Schema,
                    message: String::new(),
                })
                .collect()
        };
        // Payload 0..8 with 1, 2 and 5 refused: the accepted entries are 0, 3, 4, 6, 7.
        let earlier = refused(&[1, 2, 5]);
        assert_eq!(payload_indices(&earlier, &[0, 1, 2, 3, 4]), [0, 3, 4, 6, 7]);
        assert_eq!(payload_indices(&earlier, &[1, 3]), [3, 6]);
        assert_eq!(payload_indices(&earlier, &[4]), [7]);
        assert_eq!(payload_indices(&[], &[0, 2]), [0, 2]);
        assert_eq!(payload_indices(&refused(&[0, 0, 1]), &[0]), [2]);
        assert!(payload_indices(&earlier, &[]).is_empty());
    }
}
