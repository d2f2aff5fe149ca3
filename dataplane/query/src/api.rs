//! The query HTTP API of a node: `POST /v1/query` (newest-first pages with a stable cursor)
//! and `GET /api/v1/stats` (counts by level per interval).
//!
//! A request is compiled once into an exact predicate (tenant, service, level, time range,
//! `contains`, query string) plus pruning hints for the storage block index. Every answer
//! carries stats; an answer missing data (a corrupt block skipped, replicas that did not
//! answer) says `partial` and why instead of silently leaving it out. A query over its budget
//! (time, bytes scanned, groups held) fails with 422 and says which; concurrency is bounded
//! (429); the node keeps serving everyone else.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use logcluster_cluster::replication::Cluster;
use logcluster_proto::{Level, LogEntry};
use logcluster_storage::segment::{BlockMeta, NeedleScope, ROLLUP_NS};
use logcluster_storage::{Cursor, ScanFilter, ScanStats, Store};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::lang;

/// Query limits (from the node configuration).
#[derive(Clone, Debug)]
pub struct QueryLimits {
    pub max_limit: usize,
    pub timeout: Duration,
    pub max_concurrent: usize,
    pub default_tenant: String,
    /// Decoded bytes one query may scan.
    pub max_scan_bytes: u64,
    /// Groups one aggregation may hold.
    pub max_groups: usize,
    /// Bearer token → tenant; when non-empty every request needs a token.
    pub tenant_tokens: BTreeMap<String, String>,
}

/// Answers queries: from the local store on a single node or a storage member, by fanning
/// out to the storage members on a query node of a cluster.
pub struct QueryService {
    pub(crate) store: Option<Arc<Store>>,
    pub(crate) cluster: Option<Arc<Cluster>>,
    pub(crate) limits: QueryLimits,
    pub(crate) running: Semaphore,
}

/// Body of `POST /v1/query`. Every field is optional.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// One service or several separated by commas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// One level or several separated by commas (`WARN,ERROR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Inclusive start: RFC 3339 or a Unix epoch number (s, ms, µs or ns by magnitude).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ts: Option<Value>,
    /// Exclusive end, same forms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ts: Option<Value>,
    /// Case-insensitive substring of the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    /// Query string, e.g. `service:payment AND level:ERROR AND "timeout"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// Stats reported with every answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    pub objects_read: u64,
    pub objects_skipped: u64,
    /// Blocks answered from their index rollup without being read.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub objects_from_index: u64,
    pub events_scanned: u64,
    pub duration_ms: u64,
    pub partial: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_reason: Option<String>,
    /// Storage members asked and answering (cluster mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_asked: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_answered: Option<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One page of results as a storage member computes it.
#[derive(Debug, Default)]
pub struct Page {
    pub items: Vec<LogEntry>,
    pub next_cursor: Option<Cursor>,
    pub stats: Stats,
    /// Services of the tenant this member holds (that the request's service filter admits):
    /// the query node checks each against the read quorum.
    pub services: Vec<String>,
}

/// Per (service, interval start) counts by level, as one member computes them.
pub type LevelCounts = BTreeMap<(String, i64), [u64; 7]>;

/// Counts by level per interval start, while counting.
/// Interval starts are multiples of the interval, and SipHash costs more than the counting.
type ByStart =
    HashMap<i64, [u64; 7], std::hash::BuildHasherDefault<logcluster_proto::ids::Mix64Hasher>>;

/// A request that could not be understood: 400 with a message pointing at the problem.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    BadRequest(String),
    #[error("too many concurrent queries, retry later")]
    Busy,
    /// Over a per-query budget (time, bytes scanned, groups in memory).
    #[error("{0}")]
    Budget(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("query failed: {0}")]
    Internal(String),
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let status = match self {
            QueryError::BadRequest(_) => StatusCode::BAD_REQUEST,
            QueryError::Busy => StatusCode::TOO_MANY_REQUESTS,
            QueryError::Budget(_) => StatusCode::UNPROCESSABLE_ENTITY,
            QueryError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            QueryError::Forbidden(_) => StatusCode::FORBIDDEN,
            QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, axum::Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// Parses a time bound: RFC 3339 text, a numeric string, a number, or a duration before now
/// (`15m`, `2h`, `7d`).
pub fn parse_time_bound(value: &Value) -> Option<i64> {
    match value {
        Value::String(text) if text == "now" => Some(logcluster_proto::time::now_nanos()),
        Value::String(text) => logcluster_proto::time::parse_rfc3339(text)
            .or_else(|| {
                text.parse::<i64>()
                    .ok()
                    .and_then(logcluster_proto::time::nanos_from_epoch_int)
            })
            .or_else(|| {
                parse_interval(text)
                    .map(|d| logcluster_proto::time::now_nanos() - d.as_nanos() as i64)
            }),
        Value::Number(n) => match n.as_i64() {
            Some(i) => logcluster_proto::time::nanos_from_epoch_int(i),
            None => n
                .as_f64()
                .and_then(logcluster_proto::time::nanos_from_epoch_number),
        },
        _ => None,
    }
}

/// A compiled request: exact predicate plus conservative pruning hints.
pub struct Compiled {
    pub tenant: String,
    pub services: Option<BTreeSet<String>>,
    pub from_ts: i64,
    pub to_ts: i64,
    pub level_mask: u32,
    pub tokens: Vec<String>,
    contains: Option<String>,
    query: Option<lang::Query>,
    /// Bytes every match holds (see `ScanFilter::record_needle`).
    record_needle: Option<(String, NeedleScope)>,
    /// Matching reads only id, tenant, service, level and message.
    core_and_message_only: bool,
}

impl Compiled {
    /// The storage scan for this request: pruning hints plus the exact `predicate`.
    pub fn scan_filter<'a>(
        &'a self,
        predicate: &'a (dyn Fn(&LogEntry) -> bool + Sync),
    ) -> ScanFilter<'a> {
        ScanFilter {
            tenant: &self.tenant,
            services: self.services.as_ref(),
            from_ts: self.from_ts,
            to_ts: self.to_ts,
            level_mask: self.level_mask,
            required_tokens: &self.tokens,
            record_needle: self
                .record_needle
                .as_ref()
                .map(|(needle, scope)| (needle.as_bytes(), *scope)),
            core_and_message_only: false,
            message_unread: false,
            predicate,
        }
    }

    /// Whether a consumer that reads no message can leave messages unread: with no query
    /// string, the only message predicate is `contains`, which storage then applies exactly
    /// (see [`Compiled::message_free_scan_filter`]).
    pub fn messages_needed(&self) -> bool {
        // A non-ASCII `contains` is matched after Unicode lower-casing, which storage's
        // byte-wise needle cannot do.
        self.query.is_some() || self.contains.as_ref().is_some_and(|c| !c.is_ascii())
    }

    /// [`Compiled::scan_filter`] for a consumer that reads only an entry's timestamp,
    /// tenant, service and level, when [`Compiled::messages_needed`] is false: `predicate`
    /// must then not read messages ([`Compiled::matches_without_message`]).
    pub fn message_free_scan_filter<'a>(
        &'a self,
        predicate: &'a (dyn Fn(&LogEntry) -> bool + Sync),
    ) -> ScanFilter<'a> {
        ScanFilter {
            core_and_message_only: true,
            message_unread: true,
            ..self.scan_filter(predicate)
        }
    }

    /// [`Compiled::matches`] but for `contains`, for a scan that applies it itself.
    pub fn matches_without_message(&self, entry: &LogEntry) -> bool {
        debug_assert!(!self.messages_needed());
        self.services
            .as_ref()
            .is_none_or(|services| services.contains(&entry.service))
    }

    /// [`Compiled::scan_filter`] for a consumer that reads only an entry's id, timestamps,
    /// tenant, service, level and message: when the predicate reads no more either, storage
    /// leaves host, trace id and fields undecoded.
    pub fn core_scan_filter<'a>(
        &'a self,
        predicate: &'a (dyn Fn(&LogEntry) -> bool + Sync),
    ) -> ScanFilter<'a> {
        ScanFilter {
            core_and_message_only: self.core_and_message_only,
            ..self.scan_filter(predicate)
        }
    }

    /// Whether every entry of the scanned streams, time range and levels matches (no message
    /// or query predicate): count aggregations can then use block rollups.
    pub fn counts_from_index(&self) -> bool {
        self.contains.is_none() && self.query.is_none()
    }

    pub fn matches(&self, entry: &LogEntry) -> bool {
        if let Some(needle) = &self.contains
            && !lang::contains_folded(&entry.message, needle)
        {
            return false;
        }
        if let Some(services) = &self.services
            && !services.contains(&entry.service)
        {
            return false;
        }
        match &self.query {
            Some(query) => query.matches(entry),
            None => true,
        }
    }
}

fn split_list(text: &Option<String>) -> Option<Vec<String>> {
    text.as_ref()
        .map(|t| {
            t.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
}

/// Compiles a request (pure; unit-tested without a store).
pub fn compile(
    request: &QueryRequest,
    header_tenant: Option<String>,
    default_tenant: &str,
) -> Result<Compiled, QueryError> {
    let tenant = header_tenant
        .or_else(|| request.tenant_id.clone())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| default_tenant.to_string());
    let mut services: Option<BTreeSet<String>> =
        split_list(&request.service).map(|v| v.into_iter().collect());
    let mut level_mask = u32::MAX;
    if let Some(levels) = split_list(&request.level) {
        let mut mask = 0u32;
        for name in levels {
            let level = Level::parse(&name).ok_or_else(|| {
                QueryError::BadRequest(format!(
                    "level: unknown level {name:?} (use TRACE, DEBUG, INFO, WARN, ERROR, FATAL)"
                ))
            })?;
            mask |= 1 << level as u32;
        }
        level_mask = mask;
    }
    let bound = |value: &Option<Value>, name: &str, default: i64| -> Result<i64, QueryError> {
        match value {
            None | Some(Value::Null) => Ok(default),
            Some(v) => parse_time_bound(v).ok_or_else(|| {
                QueryError::BadRequest(format!("{name}: {v} is not RFC 3339 or an epoch number"))
            }),
        }
    };
    let mut from_ts = bound(&request.from_ts, "from_ts", i64::MIN)?;
    let to_ts = bound(&request.to_ts, "to_ts", i64::MAX)?;
    // Swapped bounds are a mistake to point out, not an empty answer to give.
    if from_ts > to_ts {
        return Err(QueryError::BadRequest(format!(
            "from_ts ({}) is after to_ts ({}): the range is [from_ts, to_ts)",
            logcluster_proto::time::format_rfc3339(from_ts),
            logcluster_proto::time::format_rfc3339(to_ts)
        )));
    }
    let mut tokens = Vec::new();
    let mut record_needle = None;
    let mut core_and_message_only = true;
    let contains = request
        .contains
        .as_ref()
        .filter(|c| !c.is_empty())
        .map(|c| {
            // Matched as the query language's free text is (`ÜBER` finds `über`), with the
            // same pruning facts: tokens and bytes only for ASCII text.
            let needle = lang::fold_case(c);
            tokens.extend(lang::substring_tokens(&needle));
            needle
        });
    let query = match request
        .query
        .as_deref()
        .map(str::trim)
        .filter(|q| !q.is_empty())
    {
        None => None,
        Some(text) => {
            let parsed =
                lang::parse(text).map_err(|e| QueryError::BadRequest(format!("query: {e}")))?;
            let hints = parsed.hints();
            if let Some(hinted) = hints.services {
                services = Some(match services {
                    Some(existing) => existing.intersection(&hinted).cloned().collect(),
                    None => hinted,
                });
            }
            if let Some(mask) = hints.levels {
                level_mask &= u32::from(mask);
            }
            tokens.extend(hints.required_tokens);
            record_needle = hints.record_needle;
            core_and_message_only = hints.core_and_message_only;
            if let Some(last) = parsed.last {
                from_ts = from_ts.max(logcluster_proto::time::now_nanos() - last.as_nanos() as i64);
            }
            Some(parsed)
        }
    };
    // Of two needles the longer is the more selective.
    if let Some(found) = contains
        .as_deref()
        .and_then(|needle| lang::substring_needle(needle, NeedleScope::Message))
        && found.0.len() > record_needle.as_ref().map_or(0, |(n, _)| n.len())
    {
        record_needle = Some(found);
    }
    Ok(Compiled {
        record_needle,
        core_and_message_only,
        tenant,
        services,
        from_ts,
        to_ts,
        level_mask,
        tokens,
        contains,
        query,
    })
}

/// The per-query budget: a predicate wrapper that stops matching once the time or the bytes
/// to scan are spent (or an aggregation holds too many groups); [`Budget::check`] then turns
/// that into a clear error.
pub(crate) struct Budget {
    deadline: Instant,
    timeout: Duration,
    checked: AtomicU64,
    bytes: AtomicU64,
    max_bytes: u64,
    max_groups: usize,
    /// 0 within budget, then which budget ran out: 1 time, 2 bytes, 3 groups.
    over: AtomicU8,
}

impl Budget {
    pub(crate) fn new(limits: &QueryLimits) -> Budget {
        Budget {
            deadline: Instant::now() + limits.timeout,
            timeout: limits.timeout,
            checked: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            max_bytes: limits.max_scan_bytes,
            max_groups: limits.max_groups,
            over: AtomicU8::new(0),
        }
    }

    /// Charges an entry's decoded size; false once any budget is spent.
    pub(crate) fn admit(&self, entry: &LogEntry) -> bool {
        if self.over.load(Ordering::Relaxed) != 0 {
            return false;
        }
        let size = entry.approx_size() as u64;
        if self.bytes.fetch_add(size, Ordering::Relaxed) + size > self.max_bytes {
            self.over.store(2, Ordering::Relaxed);
            return false;
        }
        if self
            .checked
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(4096)
            && Instant::now() > self.deadline
        {
            self.over.store(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Records that an aggregation holds `groups` groups; false when that is over budget.
    pub(crate) fn groups(&self, groups: usize) -> bool {
        if groups > self.max_groups {
            self.over.store(3, Ordering::Relaxed);
            false
        } else {
            true
        }
    }

    /// The error for a spent budget.
    pub(crate) fn check(&self) -> Result<(), QueryError> {
        let scanned = self.bytes.load(Ordering::Relaxed);
        match self.over.load(Ordering::Relaxed) {
            0 => Ok(()),
            1 => Err(QueryError::Budget(format!(
                "query exceeded its time budget of {:?} (after scanning {scanned} bytes); narrow the time range or add filters",
                self.timeout
            ))),
            2 => Err(QueryError::Budget(format!(
                "query would scan more than its budget of {} bytes; narrow the time range or add filters",
                self.max_bytes
            ))),
            _ => Err(QueryError::Budget(format!(
                "aggregation has more than {} groups; group by fewer or less distinct labels",
                self.max_groups
            ))),
        }
    }
}

pub(crate) fn stats_from(scan: &ScanStats, started: Instant) -> Stats {
    let mut stats = Stats {
        objects_read: scan.objects_read,
        objects_skipped: scan.objects_skipped,
        objects_from_index: scan.objects_from_index,
        events_scanned: scan.events_scanned,
        duration_ms: started.elapsed().as_millis() as u64,
        partial: false,
        partial_reason: None,
        replicas_asked: None,
        replicas_answered: None,
    };
    if scan.corrupt_blocks > 0 {
        stats.partial = true;
        stats.partial_reason = Some(format!(
            "{} corrupt block(s) were skipped",
            scan.corrupt_blocks
        ));
    }
    stats
}

impl QueryService {
    pub fn new(store: Arc<Store>, limits: QueryLimits) -> Arc<QueryService> {
        Arc::new(QueryService {
            running: Semaphore::new(limits.max_concurrent),
            store: Some(store),
            cluster: None,
            limits,
        })
    }

    /// A query service that reads through the cluster (read quorum, read repair).
    pub fn new_cluster(cluster: Arc<Cluster>, limits: QueryLimits) -> Arc<QueryService> {
        Arc::new(QueryService {
            running: Semaphore::new(limits.max_concurrent),
            store: None,
            cluster: Some(cluster),
            limits,
        })
    }

    /// The local store (single node, storage member); an error on a query-only node.
    pub(crate) fn local_store(&self) -> Result<Arc<Store>, QueryError> {
        self.store
            .clone()
            .ok_or_else(|| QueryError::Internal("this node holds no data".into()))
    }

    pub fn limits(&self) -> &QueryLimits {
        &self.limits
    }

    fn parse_cursor(request: &QueryRequest) -> Result<Option<Cursor>, QueryError> {
        match &request.cursor {
            None => Ok(None),
            Some(text) if text.is_empty() => Ok(None),
            Some(text) => Cursor::decode(text).map(Some).ok_or_else(|| {
                QueryError::BadRequest(format!(
                    "cursor: {text:?} is not a cursor returned by this API"
                ))
            }),
        }
    }

    /// Runs a page query (used by the HTTP handler and by tests).
    pub async fn query(
        self: &Arc<Self>,
        request: QueryRequest,
        header_tenant: Option<String>,
    ) -> Result<Value, QueryError> {
        let page = self.query_page(request, header_tenant).await?;
        Ok(json!({
            "items": page.items.iter().map(logcluster_proto::json::to_json).collect::<Vec<_>>(),
            "next_cursor": page.next_cursor.map(|c| c.encode()),
            "stats": page.stats,
        }))
    }

    /// A page of entries and the cursor of the next one (live tail uses this).
    pub async fn query_entries(
        self: &Arc<Self>,
        request: QueryRequest,
        header_tenant: Option<String>,
    ) -> Result<(Vec<LogEntry>, Option<String>), QueryError> {
        let page = self.query_page(request, header_tenant).await?;
        Ok((page.items, page.next_cursor.map(|c| c.encode())))
    }

    async fn query_page(
        self: &Arc<Self>,
        request: QueryRequest,
        header_tenant: Option<String>,
    ) -> Result<Page, QueryError> {
        let compiled = compile(&request, header_tenant, &self.limits.default_tenant)?;
        let limit = request.limit.unwrap_or(100).clamp(1, self.limits.max_limit);
        let cursor = Self::parse_cursor(&request)?;
        let _permit = self.running.try_acquire().map_err(|_| QueryError::Busy)?;
        match &self.cluster {
            Some(cluster) => {
                let mut forwarded = request.clone();
                forwarded.tenant_id = Some(compiled.tenant.clone());
                forwarded.limit = Some(limit);
                crate::fanout::query(cluster, forwarded, limit, self.limits.timeout).await
            }
            None => self.local_page_compiled(compiled, limit, cursor).await,
        }
    }

    /// One page from the local store (a storage member answering a query node).
    pub async fn local_page(self: &Arc<Self>, request: QueryRequest) -> Result<Page, QueryError> {
        let compiled = compile(&request, None, &self.limits.default_tenant)?;
        let limit = request.limit.unwrap_or(100).clamp(1, self.limits.max_limit);
        let cursor = Self::parse_cursor(&request)?;
        self.local_page_compiled(compiled, limit, cursor).await
    }

    async fn local_page_compiled(
        self: &Arc<Self>,
        compiled: Compiled,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<Page, QueryError> {
        let store = self.local_store()?;
        let limits = self.limits.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let budget = Budget::new(&limits);
            let predicate = |e: &LogEntry| budget.admit(e) && compiled.matches(e);
            let filter = compiled.scan_filter(&predicate);
            let result = store.query_top(&filter, limit, cursor.as_ref());
            budget.check()?;
            let stats = stats_from(&result.stats, started);
            let services = store
                .services(&compiled.tenant)
                .into_iter()
                .filter(|s| compiled.services.as_ref().is_none_or(|set| set.contains(s)))
                .collect();
            Ok(Page {
                items: result.items,
                next_cursor: result.next_cursor,
                stats,
                services,
            })
        })
        .await
        .map_err(|e| QueryError::Internal(e.to_string()))?
    }

    /// Counts by level per interval.
    pub async fn level_stats(
        self: &Arc<Self>,
        params: HashMap<String, String>,
        header_tenant: Option<String>,
    ) -> Result<LevelStats, QueryError> {
        let interval = stats_interval(&params)?;
        let (counts, stats) = self.level_counts(params, header_tenant).await?;
        let mut buckets: BTreeMap<i64, [u64; 7]> = BTreeMap::new();
        for ((_, start), by_level) in &counts {
            add_counts(buckets.entry(*start).or_default(), by_level);
        }
        let mut totals = [0u64; 7];
        let buckets = buckets
            .into_iter()
            .map(|(start, counts)| {
                add_counts(&mut totals, &counts);
                LevelBucket {
                    start: logcluster_proto::time::format_rfc3339(start),
                    counts: ByLevel(counts),
                }
            })
            .collect();
        Ok(LevelStats {
            interval_seconds: interval.as_secs_f64(),
            buckets,
            totals: ByLevel(totals),
            stats,
        })
    }

    /// Entries per (service, epoch-aligned interval start) by level, filtered as
    /// `/api/v1/stats` is (`service`, `level`, `from`, `to`, `contains`, `query`,
    /// `interval`): from block rollups where they answer; in a cluster through the fan-out,
    /// one replica per service.
    pub async fn level_counts(
        self: &Arc<Self>,
        mut params: HashMap<String, String>,
        header_tenant: Option<String>,
    ) -> Result<(LevelCounts, Stats), QueryError> {
        let interval = stats_interval(&params)?;
        let request = stats_request(&params);
        let compiled = compile(&request, header_tenant, &self.limits.default_tenant)?;
        let _permit = self.running.try_acquire().map_err(|_| QueryError::Busy)?;
        match &self.cluster {
            Some(cluster) => {
                params.remove("tenant");
                params.insert("tenant_id".into(), compiled.tenant.clone());
                crate::fanout::level_counts(cluster, &params, self.limits.timeout).await
            }
            None => self.local_counts_compiled(compiled, interval).await,
        }
    }

    /// Counts by (service, interval start) and level from the local store (a storage member
    /// answering a query node).
    pub async fn local_counts(
        self: &Arc<Self>,
        params: HashMap<String, String>,
    ) -> Result<(LevelCounts, Stats), QueryError> {
        let interval = stats_interval(&params)?;
        let compiled = compile(&stats_request(&params), None, &self.limits.default_tenant)?;
        self.local_counts_compiled(compiled, interval).await
    }

    async fn local_counts_compiled(
        self: &Arc<Self>,
        compiled: Compiled,
        interval: Duration,
    ) -> Result<(LevelCounts, Stats), QueryError> {
        let store = self.local_store()?;
        let interval_ns = (interval.as_nanos() as i64).max(1);
        let limits = self.limits.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let budget = Budget::new(&limits);
            // Counting reads service, timestamp and level only; with no query string, storage
            // applies `contains` and messages stay compressed where the layout allows.
            let messages_needed = compiled.messages_needed();
            let predicate = |e: &LogEntry| {
                budget.admit(e)
                    && if messages_needed {
                        compiled.matches(e)
                    } else {
                        compiled.matches_without_message(e)
                    }
            };
            let filter = if messages_needed {
                compiled.core_scan_filter(&predicate)
            } else {
                compiled.message_free_scan_filter(&predicate)
            };
            // Per thread: service -> interval start -> counts by level. Keyed by service
            // first so the hot path looks a service up by &str and clones it only once per
            // service, not once per entry; merged below.
            type Acc = CountCells;
            let level_mask = compiled.level_mask;
            // Whole blocks from their (minute, level) rollup when nothing else filters and the
            // interval is whole minutes (epoch-aligned buckets contain whole minutes).
            let from_index = |acc: &mut Acc, service: &str, meta: &BlockMeta| -> bool {
                if meta.rollup.is_empty() {
                    return false;
                }
                // Cells come in minute order: a run of cells in one interval is added at once.
                let mut run: Option<(i64, [u64; 7])> = None;
                for cell in &meta.rollup {
                    if level_mask & (1 << cell.level.min(31)) == 0 {
                        continue;
                    }
                    let ts = cell.minute * ROLLUP_NS;
                    let start = ts.div_euclid(interval_ns) * interval_ns;
                    let counts = match &mut run {
                        Some((run_start, counts)) if *run_start == start => counts,
                        _ => {
                            if let Some((done, counts)) = run.take()
                                && let Some(slot) = acc.slot(service, done)
                            {
                                add_counts(slot, &counts);
                            }
                            &mut run.insert((start, [0; 7])).1
                        }
                    };
                    counts[level_slot(cell.level as i32)] += u64::from(cell.count);
                }
                if let Some((done, counts)) = run
                    && let Some(slot) = acc.slot(service, done)
                {
                    add_counts(slot, &counts);
                }
                true
            };
            let summary: Option<logcluster_storage::scan::Summary<'_, Acc>> =
                (compiled.counts_from_index() && interval_ns % ROLLUP_NS == 0)
                    .then_some(&from_index);
            // Whole blocks within one interval from their message templates' counts by level
            // (when no query string asks more of a row than `contains`).
            let wants = |meta: &BlockMeta| {
                meta.min_ts.div_euclid(interval_ns) == meta.max_ts.div_euclid(interval_ns)
            };
            let add = |acc: &mut Acc, service: &str, meta: &BlockMeta, counts: &[(i32, u64)]| {
                let start = meta.min_ts.div_euclid(interval_ns) * interval_ns;
                if let Some(slot) = acc.slot(service, start) {
                    for (level, count) in counts {
                        slot[level_slot(*level)] += count;
                    }
                }
            };
            let by_level =
                (!messages_needed).then_some(logcluster_storage::scan::BlockLevelCounts {
                    wants: &wants,
                    add: &add,
                });
            let (parts, scan) = store.scan_parallel_summarized(
                &filter,
                Acc::default,
                |acc, entry| {
                    let start = entry.timestamp.div_euclid(interval_ns) * interval_ns;
                    if let Some(slot) = acc.slot(&entry.service, start) {
                        slot[level_slot(entry.level)] += 1;
                    }
                },
                summary,
                by_level,
            );
            // Merged per service first, so each service's name is cloned once per interval.
            let mut parts = parts.into_iter();
            let mut merged = parts.next().unwrap_or_default();
            for part in parts {
                merged.overflowed |= part.overflowed;
                for (service, by_start) in part.services {
                    for (start, by_level) in by_start {
                        if let Some(slot) = merged.slot(&service, start) {
                            add_counts(slot, &by_level);
                        }
                    }
                }
            }
            if merged.overflowed {
                return Err(QueryError::BadRequest(format!(
                    "interval: more than {MAX_STATS_CELLS} (service, interval) buckets; use a larger interval or a shorter time range"
                )));
            }
            let merged = merged.services;
            // In key order, so that building the map does not sort.
            let mut services: Vec<_> = merged.into_iter().collect();
            services.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let mut sorted = Vec::new();
            for (service, by_start) in services {
                let mut starts: Vec<_> = by_start.into_iter().collect();
                starts.sort_unstable_by_key(|(start, _)| *start);
                sorted.extend(
                    starts
                        .into_iter()
                        .map(|(start, by_level)| ((service.clone(), start), by_level)),
                );
            }
            let counts: LevelCounts = sorted.into_iter().collect();
            budget.check()?;
            Ok((counts, stats_from(&scan, started)))
        })
        .await
        .map_err(|e| QueryError::Internal(e.to_string()))?
    }
}

/// The most (service, interval start) buckets one `/api/v1/stats` answer may have: an
/// interval of a millisecond over a year of data would otherwise make one per entry.
pub const MAX_STATS_CELLS: usize = 200_000;

/// Counts by level per service and interval start, while counting; at most
/// [`MAX_STATS_CELLS`] buckets, past which `overflowed` is set and nothing more is added.
struct CountCells {
    services: HashMap<String, ByStart>,
    cells: usize,
    limit: usize,
    overflowed: bool,
}

impl Default for CountCells {
    fn default() -> Self {
        CountCells {
            services: HashMap::new(),
            cells: 0,
            limit: MAX_STATS_CELLS,
            overflowed: false,
        }
    }
}

impl CountCells {
    /// The counts of `service`'s bucket starting at `start`; `None` once the cap is reached.
    fn slot(&mut self, service: &str, start: i64) -> Option<&mut [u64; 7]> {
        if !self.services.contains_key(service) {
            self.services
                .insert(service.to_string(), ByStart::default());
        }
        let by_start = self.services.get_mut(service)?;
        match by_start.entry(start) {
            std::collections::hash_map::Entry::Occupied(slot) => Some(slot.into_mut()),
            std::collections::hash_map::Entry::Vacant(slot) => {
                if self.cells >= self.limit {
                    self.overflowed = true;
                    return None;
                }
                self.cells += 1;
                Some(slot.insert([0; 7]))
            }
        }
    }
}

/// The answer of `/api/v1/stats`.
#[derive(serde::Serialize)]
pub struct LevelStats {
    pub interval_seconds: f64,
    pub buckets: Vec<LevelBucket>,
    pub totals: ByLevel,
    pub stats: Stats,
}

#[derive(serde::Serialize)]
pub struct LevelBucket {
    /// RFC 3339.
    pub start: String,
    pub counts: ByLevel,
}

/// Counts by level slot, written as an object of the levels that have any.
pub struct ByLevel(pub [u64; 7]);

impl serde::Serialize for ByLevel {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        // In name order, as the JSON object maps used before wrote them.
        let mut named: Vec<(&str, u64)> = self
            .0
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (Level::from_i32_lossy(i as i32).as_str(), *c))
            .collect();
        named.sort_unstable();
        for (name, count) in named {
            map.serialize_entry(name, &count)?;
        }
        map.end()
    }
}

fn add_counts(into: &mut [u64; 7], counts: &[u64; 7]) {
    for (slot, count) in into.iter_mut().zip(counts) {
        *slot += count;
    }
}

/// The slot of a stored level in per-level counts: levels outside the enum count as
/// UNSPECIFIED (slot 0), as the query language matches them.
fn level_slot(level: i32) -> usize {
    if (0..=6).contains(&level) {
        level as usize
    } else {
        0
    }
}

fn stats_interval(params: &HashMap<String, String>) -> Result<Duration, QueryError> {
    match params.get("interval") {
        None => Ok(Duration::from_secs(60)),
        Some(text) => parse_interval(text).ok_or_else(|| {
            QueryError::BadRequest(format!(
                "interval: {text:?} is not a duration like 1m, 15m or 1h (at most 3650d)"
            ))
        }),
    }
}

fn stats_request(params: &HashMap<String, String>) -> QueryRequest {
    let text_value = |key: &str| params.get(key).map(|v| Value::String(v.clone()));
    QueryRequest {
        tenant_id: params
            .get("tenant_id")
            .or_else(|| params.get("tenant"))
            .cloned(),
        service: params.get("service").cloned(),
        level: params.get("level").cloned(),
        from_ts: text_value("from"),
        to_ts: text_value("to"),
        contains: params.get("contains").cloned(),
        query: params.get("query").cloned(),
        limit: None,
        cursor: None,
    }
}

/// The longest duration [`parse_interval`] accepts: ten years, so that any accepted duration
/// is a positive `i64` of nanoseconds with room to spare (a step or a bucket width divides by
/// it, and a relative time subtracts it from now).
pub const MAX_INTERVAL: Duration = Duration::from_secs(3650 * 86_400);

/// `500ms`, `30s`, `1m`, `15m`, `1h`, `1d`, `1w`: more than zero and at most
/// [`MAX_INTERVAL`].
pub fn parse_interval(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = text[..split].parse().ok().filter(|n| *n > 0)?;
    let duration = match &text[split..] {
        "ms" => Duration::from_millis(n),
        unit => {
            let scale: u64 = match unit {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86_400,
                "w" => 7 * 86_400,
                _ => return None,
            };
            Duration::from_secs(n.checked_mul(scale)?)
        }
    };
    (duration <= MAX_INTERVAL).then_some(duration)
}

fn header_tenant(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-logcluster-tenant")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .filter(|t| !t.is_empty())
}

impl QueryService {
    /// The tenant a request reads. With tenant tokens configured, the bearer token decides
    /// (401 without a valid one; 403 when the request names another tenant); otherwise the
    /// `X-Logcluster-Tenant` header, then `requested` (a body's `tenant_id` or `?tenant=`),
    /// then `None` (the default tenant).
    pub fn tenant_of(
        &self,
        headers: &HeaderMap,
        requested: Option<&str>,
    ) -> Result<Option<String>, QueryError> {
        let header = header_tenant(headers);
        let requested = requested.filter(|t| !t.is_empty()).map(str::to_string);
        if self.limits.tenant_tokens.is_empty() {
            return Ok(header.or(requested));
        }
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(tenant) = token.and_then(|t| token_tenant(&self.limits.tenant_tokens, t)) else {
            return Err(QueryError::Unauthorized(
                "a valid bearer token is required (Authorization: Bearer <token>)".into(),
            ));
        };
        for named in [&header, &requested].into_iter().flatten() {
            if named != tenant {
                return Err(QueryError::Forbidden(format!(
                    "this token reads tenant {tenant:?}, not {named:?}"
                )));
            }
        }
        Ok(Some(tenant.clone()))
    }
}

/// The tenant of `token`: every configured token is compared in full, whatever matches, so
/// that answer times do not tell how much of a guess was right.
fn token_tenant<'a>(tokens: &'a BTreeMap<String, String>, token: &str) -> Option<&'a String> {
    let mut found = None;
    for (known, tenant) in tokens {
        let same = known.len() == token.len()
            && known
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0;
        if std::hint::black_box(same) {
            found = Some(tenant);
        }
    }
    found
}

async fn post_query(
    State(service): State<Arc<QueryService>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let request: QueryRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return QueryError::BadRequest(format!("request body: {error}")).into_response();
        }
    };
    let tenant = match service.tenant_of(&headers, request.tenant_id.as_deref()) {
        Ok(tenant) => tenant,
        Err(error) => return error.into_response(),
    };
    match service.query(request, tenant).await {
        Ok(value) => axum::Json(value).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn get_stats(
    State(service): State<Arc<QueryService>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let tenant = match service.tenant_of(&headers, params.get("tenant").map(String::as_str)) {
        Ok(tenant) => tenant,
        Err(error) => return error.into_response(),
    };
    match service.level_stats(params, tenant).await {
        Ok(value) => axum::Json(value).into_response(),
        Err(error) => error.into_response(),
    }
}

/// `POST /v1/local/query`: what this storage member holds, without fan-out (for operators
/// checking one replica, and for tests).
pub fn local_router(service: Arc<QueryService>, metrics: QueryMetrics) -> Router {
    Router::new()
        .route("/v1/local/query", post(post_local_query))
        .with_state(service)
        .route_layer(axum::middleware::from_fn_with_state(metrics, count_errors))
}

async fn post_local_query(
    State(service): State<Arc<QueryService>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let mut request: QueryRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return QueryError::BadRequest(format!("request body: {error}")).into_response();
        }
    };
    // The same tenant rules as every query route: with tenant tokens, the token's tenant.
    match service.tenant_of(&headers, request.tenant_id.as_deref()) {
        Ok(tenant) => request.tenant_id = tenant,
        Err(error) => return error.into_response(),
    }
    let Ok(_permit) = service.running.try_acquire() else {
        return QueryError::Busy.into_response();
    };
    match service.local_page(request).await {
        Ok(page) => axum::Json(json!({
            "items": page.items.iter().map(logcluster_proto::json::to_json).collect::<Vec<_>>(),
            "next_cursor": page.next_cursor.map(|c| c.encode()),
            "stats": page.stats,
        }))
        .into_response(),
        Err(error) => error.into_response(),
    }
}

/// The query routes, to be merged into the node's HTTP router; error answers are counted in
/// `metrics`.
pub fn router(service: Arc<QueryService>, metrics: QueryMetrics) -> Router {
    Router::new()
        .route("/v1/query", post(post_query))
        .route("/api/v1/stats", get(get_stats))
        .with_state(service.clone())
        .merge(crate::endpoints::router(service))
        .route_layer(axum::middleware::from_fn_with_state(metrics, count_errors))
}

/// Metrics of the query API.
#[derive(Clone, Default)]
pub struct QueryMetrics {
    /// Answers with an error status, by route and status (bad requests, budgets, busy, auth).
    pub errors: Family<Vec<(String, String)>, Counter>,
}

impl QueryMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "logcluster_query_errors",
            "Query API answers with an error status (4xx/5xx), by route and status",
            self.errors.clone(),
        );
    }
}

async fn count_errors(
    State(metrics): State<QueryMetrics>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // A route layer runs only for matched routes, and the query routes have no path
    // parameters: the path is the route (a bounded label set).
    let route = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        metrics
            .errors
            .get_or_create(&vec![
                ("route".to_string(), route),
                ("status".to_string(), status.as_u16().to_string()),
            ])
            .inc();
    }
    response
}

#[cfg(test)]
mod tests {
    /// The member-local query route follows the tenant tokens like every query route: a
    /// request without a token, or naming another tenant than its token's, reads nothing.
    #[tokio::test]
    async fn the_local_query_route_requires_the_tenant_token() {
        use logcluster_proto::LogEntry;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(
            logcluster_storage::StorageConfig::new(dir.path()),
            logcluster_storage::StorageMetrics::default(),
        )
        .await
        .expect("store");
        for (uid, tenant) in [(1, "a"), (2, "b")] {
            let entry = LogEntry {
                id: logcluster_proto::ids::entry_id(uid, 0),
                tenant: tenant.into(),
                service: "s".into(),
                timestamp: 1_700_000_000_000_000_000,
                message: format!("of {tenant}"),
                ..LogEntry::default()
            };
            store.append(uid, vec![entry]).await.expect("append");
        }
        let service = QueryService::new(
            store,
            QueryLimits {
                max_limit: 100,
                timeout: Duration::from_secs(5),
                max_concurrent: 2,
                default_tenant: "default".into(),
                max_scan_bytes: 1 << 30,
                max_groups: 1000,
                tenant_tokens: [("tok-a".to_string(), "a".to_string())].into(),
            },
        );
        let ask = |headers: &[(&'static str, &'static str)], body: &'static str| {
            let service = service.clone();
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                map.insert(*name, value.parse().expect("header"));
            }
            async move {
                let response =
                    post_local_query(State(service), map, axum::body::Bytes::from(body)).await;
                let status = response.status().as_u16();
                let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .expect("body");
                (status, String::from_utf8_lossy(&bytes).into_owned())
            }
        };
        let (status, _) = ask(&[("x-logcluster-tenant", "b")], "{}").await;
        assert_eq!(status, 401, "no token");
        let (status, _) = ask(&[("authorization", "Bearer tok-a")], r#"{"tenant_id":"b"}"#).await;
        assert_eq!(status, 403, "another tenant than the token's");
        let (status, body) = ask(&[("authorization", "Bearer tok-a")], "{}").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("of a") && !body.contains("of b"), "{body}");
    }

    #[test]
    fn tokens_find_their_tenant_and_nothing_else() {
        let tokens: BTreeMap<String, String> = [
            ("tok-a".to_string(), "a".to_string()),
            ("tok-bb".to_string(), "b".to_string()),
        ]
        .into();
        assert_eq!(
            token_tenant(&tokens, "tok-a").map(String::as_str),
            Some("a")
        );
        assert_eq!(
            token_tenant(&tokens, "tok-bb").map(String::as_str),
            Some("b")
        );
        for wrong in ["", "tok-", "tok-b", "tok-ab", "tok-bbb", "TOK-A"] {
            assert_eq!(token_tenant(&tokens, wrong), None, "{wrong:?}");
        }
    }

    #[test]
    fn intervals_are_positive_and_at_most_ten_years() {
        assert_eq!(parse_interval("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_interval("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_interval("2w"), Some(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_interval("3650d"), Some(MAX_INTERVAL));
        for text in [
            "0s",
            "3651d",
            "522w",
            // 2^55 s and 2^62 min: their nanoseconds (or seconds) wrap to 0.
            "36028797018963968s",
            "4611686018427387904m",
            "18446744073709551615ms",
            "7x",
            "",
        ] {
            assert_eq!(parse_interval(text), None, "{text:?}");
        }
    }

    #[test]
    fn count_cells_stop_at_their_limit_and_say_so() {
        let mut cells = CountCells {
            limit: 3,
            ..CountCells::default()
        };
        for start in 0..3 {
            cells.slot("a", start).expect("under the limit")[1] += 1;
        }
        // A bucket that exists still counts; a new one, in any service, does not.
        cells.slot("a", 2).expect("an existing bucket")[1] += 1;
        assert!(!cells.overflowed);
        assert!(cells.slot("b", 0).is_none());
        assert!(cells.slot("a", 9).is_none());
        assert!(cells.overflowed);
        assert_eq!(cells.cells, 3);
        assert_eq!(cells.services["a"][&2][1], 2);
    }

    use super::*;

    #[test]
    fn request_compiles_to_filter_and_hints() {
        let request = QueryRequest {
            service: Some("payment, billing".into()),
            level: Some("warn,ERROR".into()),
            from_ts: Some(json!("2024-05-01T14:00:00Z")),
            to_ts: Some(json!(1_714_579_200)),
            contains: Some("upstream timeout after".into()),
            ..Default::default()
        };
        let compiled = compile(&request, None, "default").expect("compiles");
        assert_eq!(compiled.tenant, "default");
        assert_eq!(compiled.services.as_ref().map(|s| s.len()), Some(2));
        assert_eq!(compiled.level_mask, (1 << 4) | (1 << 5));
        assert_eq!(compiled.from_ts, 1_714_572_000_000_000_000);
        assert_eq!(compiled.to_ts, 1_714_579_200_000_000_000);
        assert_eq!(compiled.tokens, vec!["timeout".to_string()]);
        let entry = LogEntry {
            service: "payment".into(),
            message: "UPSTREAM Timeout After 3s".into(),
            ..Default::default()
        };
        assert!(compiled.matches(&entry));
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let bad_level = QueryRequest {
            level: Some("LOUD".into()),
            ..Default::default()
        };
        assert!(
            compile(&bad_level, None, "d")
                .err()
                .is_some_and(|e| e.to_string().contains("LOUD"))
        );
        let swapped = QueryRequest {
            from_ts: Some(json!("2024-05-01T15:00:00Z")),
            to_ts: Some(json!("2024-05-01T14:00:00Z")),
            ..Default::default()
        };
        assert!(
            compile(&swapped, None, "d")
                .err()
                .is_some_and(|e| e.to_string().contains("is after to_ts"))
        );
        let empty = QueryRequest {
            from_ts: Some(json!("2024-05-01T15:00:00Z")),
            to_ts: Some(json!("2024-05-01T15:00:00Z")),
            ..Default::default()
        };
        assert!(
            compile(&empty, None, "d").is_ok(),
            "an empty range is no mistake"
        );
        let bad_time = QueryRequest {
            from_ts: Some(json!("yesterday")),
            ..Default::default()
        };
        assert!(
            compile(&bad_time, None, "d")
                .err()
                .is_some_and(|e| e.to_string().contains("from_ts"))
        );
    }

    #[test]
    fn header_tenant_wins() {
        let request = QueryRequest {
            tenant_id: Some("a".into()),
            ..Default::default()
        };
        assert_eq!(
            compile(&request, Some("b".into()), "d")
                .map(|c| c.tenant)
                .ok(),
            Some("b".to_string())
        );
    }
}
