//! The query role's API beyond `POST /v1/query`: simple search, histograms, top values, the
//! summary, metric functions (instant and range) and live tail. Aggregations run through one
//! engine ([`crate::agg`]): locally on a single node, fanned out to the storage members (one
//! replica's cells per service) in a cluster.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use logcluster_proto::LogEntry;
use logcluster_storage::segment::{BlockMeta, ROLLUP_NS};
use serde::Serialize;
use serde_json::{Value, json};

use crate::agg::{self, AggSpec, Cell, Func, Groups, MetricExpr, PerService};
use crate::api::{Budget, QueryError, QueryRequest, QueryService, Stats, compile, parse_interval};

type Params = HashMap<String, String>;

fn rfc3339(ns: i64) -> String {
    logcluster_proto::time::format_rfc3339(ns)
}

fn now() -> i64 {
    logcluster_proto::time::now_nanos()
}

/// A time parameter (RFC 3339, epoch, `15m` before now, `now`), or `default`.
fn time_param(params: &Params, name: &str, default: i64) -> Result<i64, QueryError> {
    match params.get(name).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(text) => crate::api::parse_time_bound(&Value::String(text.clone())).ok_or_else(|| {
            QueryError::BadRequest(format!(
                "{name}: {text:?} is not RFC 3339, an epoch number, or a duration like 15m"
            ))
        }),
    }
}

fn duration_param(params: &Params, name: &str) -> Result<Option<Duration>, QueryError> {
    match params.get(name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(text) => parse_interval(text).map(Some).ok_or_else(|| {
            QueryError::BadRequest(format!(
                "{name}: {text:?} is not a duration like 30s, 5m or 1h (at most 3650d)"
            ))
        }),
    }
}

/// The tenant of a GET request: header or token, else `?tenant=` (see `QueryService::tenant_of`).
fn tenant_param(
    service: &QueryService,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Option<String>, QueryError> {
    service.tenant_of(headers, params.get("tenant").map(String::as_str))
}

/// A time already resolved to epoch nanoseconds, as text that every filter parses back to
/// exactly it: RFC 3339 (a bare number would have its unit guessed from its magnitude, so
/// times before March 1973 would be misread), or the number where RFC 3339 cannot hold it.
fn bound_text(nanos: i64) -> String {
    let text = rfc3339(nanos);
    if logcluster_proto::time::parse_rfc3339(&text) == Some(nanos) {
        text
    } else {
        nanos.to_string()
    }
}

/// The log filter named by the usual parameters.
fn filter_of(params: &Params, from: i64, to: i64) -> QueryRequest {
    QueryRequest {
        tenant_id: None,
        service: params.get("service").cloned(),
        level: params.get("level").cloned(),
        from_ts: Some(Value::String(bound_text(from))),
        to_ts: Some(Value::String(bound_text(to))),
        contains: params.get("contains").cloned(),
        query: params
            .get("query")
            .cloned()
            .filter(|q| !q.trim().is_empty()),
        limit: None,
        cursor: None,
    }
}

impl QueryService {
    /// Runs an aggregation for the tenant resolved by the caller.
    pub async fn aggregate(
        self: &Arc<Self>,
        mut spec: AggSpec,
        tenant: Option<String>,
    ) -> Result<(Groups, Stats), QueryError> {
        let compiled = compile(&spec.filter, tenant, &self.limits.default_tenant)?;
        spec.filter.tenant_id = Some(compiled.tenant.clone());
        let _permit = self.running.try_acquire().map_err(|_| QueryError::Busy)?;
        match &self.cluster {
            Some(cluster) => crate::fanout::aggregate(cluster, &spec, self.limits.timeout).await,
            None => {
                let (groups, stats) = self.local_aggregate_compiled(compiled, spec).await?;
                Ok((agg::flatten(groups), stats))
            }
        }
    }

    /// A storage member's part of an aggregation.
    pub async fn local_aggregate(
        self: &Arc<Self>,
        spec: AggSpec,
    ) -> Result<agg::Answer, QueryError> {
        let compiled = compile(&spec.filter, None, &self.limits.default_tenant)?;
        let (groups, stats) = self.local_aggregate_compiled(compiled, spec).await?;
        Ok(agg::Answer::from_groups(groups, stats))
    }

    async fn local_aggregate_compiled(
        self: &Arc<Self>,
        compiled: crate::api::Compiled,
        spec: AggSpec,
    ) -> Result<(PerService, Stats), QueryError> {
        let store = self.local_store()?;
        let limits = self.limits.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let budget = Budget::new(&limits);
            let predicate = |e: &LogEntry| budget.admit(e) && compiled.matches(e);
            let filter = compiled.scan_filter(&predicate);
            // Whole blocks from their index, when nothing but time, service and level filters:
            // - counting by service and/or level with minute-aligned buckets: the (minute,
            //   level) rollup;
            // - a numeric field by service (or ungrouped), when the block falls in one bucket
            //   and all its levels are wanted: the block's summary of that field.
            let level_mask = compiled.level_mask;
            let aligned = spec.step_ns == 0
                || (spec.step_ns % ROLLUP_NS == 0 && spec.origin_ns % ROLLUP_NS == 0);
            let counts_ok = compiled.counts_from_index()
                && spec.field.is_none()
                && !spec.quantiles
                && spec.by.iter().all(|l| l == "service" || l == "level")
                && aligned;
            let numeric_ok = compiled.counts_from_index()
                && spec.field.is_some()
                && spec.by.iter().all(|l| l == "service");
            let from_index = |(groups, acc): &mut (usize, PerService),
                              service: &str,
                              meta: &BlockMeta|
             -> bool {
                let mut keys: Vec<((i64, Vec<String>), Cell)> = Vec::new();
                if counts_ok {
                    if meta.rollup.is_empty() {
                        return false;
                    }
                    for cell in &meta.rollup {
                        if level_mask & (1 << cell.level.min(31)) == 0 {
                            continue;
                        }
                        let level =
                            logcluster_proto::Level::from_i32_lossy(cell.level as i32).as_str();
                        let group = spec
                            .by
                            .iter()
                            .map(|l| {
                                if l == "service" {
                                    service.to_string()
                                } else {
                                    level.to_string()
                                }
                            })
                            .collect();
                        let counted = Cell {
                            count: u64::from(cell.count),
                            ..Cell::default()
                        };
                        keys.push(((spec.bucket_of(cell.minute * ROLLUP_NS), group), counted));
                    }
                } else if numeric_ok {
                    let field = spec.field.as_deref().unwrap_or_default();
                    let bucket = spec.bucket_of(meta.min_ts);
                    let all_levels_wanted = meta.level_mask & !level_mask == 0;
                    let summary = meta.numeric.iter().find(|n| n.field == field);
                    if !all_levels_wanted
                        || bucket != spec.bucket_of(meta.max_ts)
                        || (summary.is_none() && !meta.numeric_complete)
                        || meta.rollup.is_empty()
                    {
                        return false;
                    }
                    let Some(summary) = summary else {
                        // The block has no number in this field: it contributes nothing.
                        return true;
                    };
                    let group = spec.by.iter().map(|_| service.to_string()).collect();
                    let cell = Cell {
                        count: summary.count,
                        sum: summary.sum,
                        min: summary.min,
                        max: summary.max,
                        sketch: spec.quantiles.then(|| summary.sketch()),
                    };
                    keys.push(((bucket, group), cell));
                } else {
                    return false;
                }
                let cells = match acc.get_mut(service) {
                    Some(cells) => cells,
                    None => acc.entry(service.to_string()).or_default(),
                };
                for (key, cell) in keys {
                    if !cells.contains_key(&key) {
                        *groups += 1;
                        if !budget.groups(*groups) {
                            return true;
                        }
                    }
                    cells.entry(key).or_default().merge(&cell);
                }
                true
            };
            type Acc = (usize, PerService);
            let summary: Option<logcluster_storage::scan::Summary<'_, Acc>> =
                (counts_ok || numeric_ok).then_some(&from_index);
            let (parts, scan) = store.scan_parallel_summarized(
                &filter,
                || (0usize, PerService::new()),
                |(groups, acc), entry| {
                    let Some(value) = spec.value_of(entry) else {
                        return;
                    };
                    let key = (
                        spec.bucket_of(entry.timestamp),
                        spec.by.iter().map(|l| agg::label_value(entry, l)).collect(),
                    );
                    if !acc.contains_key(entry.service.as_str()) {
                        acc.insert(entry.service.clone(), Groups::new());
                    }
                    let Some(cells) = acc.get_mut(entry.service.as_str()) else {
                        return;
                    };
                    let cell = match cells.get_mut(&key) {
                        Some(cell) => cell,
                        None => {
                            *groups += 1;
                            if !budget.groups(*groups) {
                                return;
                            }
                            cells.entry(key).or_default()
                        }
                    };
                    cell.add(value, spec.quantiles);
                },
                summary,
                None,
            );
            budget.check()?;
            let mut merged = PerService::new();
            for (_, part) in parts {
                for (service, cells) in part {
                    let slot = merged.entry(service).or_default();
                    for (key, cell) in cells {
                        slot.entry(key).or_default().merge(&cell);
                    }
                }
            }
            Ok((merged, crate::api::stats_from(&scan, started)))
        })
        .await
        .map_err(|e| QueryError::Internal(e.to_string()))?
    }
}

/// The routes of this module, merged into the query router.
pub fn router(service: Arc<QueryService>) -> Router {
    Router::new()
        .route("/api/v1/logs/search", get(search))
        .route("/api/v1/logs/histogram", get(histogram))
        .route("/api/v1/logs/top", get(top))
        .route("/api/v1/logs/stats", get(summary))
        .route("/api/v1/metrics/query", get(metric_instant))
        .route("/api/v1/metrics/range", get(metric_range))
        .route("/api/v1/tail", get(tail))
        .with_state(service)
}

fn answer(result: Result<Value, QueryError>) -> Response {
    match result {
        Ok(value) => axum::Json(value).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn search(
    State(service): State<Arc<QueryService>>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Response {
    answer(
        async {
            let tenant = tenant_param(&service, &headers, &params)?;
            let limit = match params.get("limit") {
                None => None,
                Some(text) => Some(text.parse::<usize>().map_err(|_| {
                    QueryError::BadRequest(format!("limit: {text:?} is not a number"))
                })?),
            };
            let mut request = filter_of(&params, 0, 0);
            request.from_ts = params.get("from").map(|v| Value::String(v.clone()));
            request.to_ts = params.get("to").map(|v| Value::String(v.clone()));
            request.limit = limit;
            request.cursor = params.get("cursor").cloned();
            service.query(request, tenant).await
        }
        .await,
    )
}

/// Buckets and groups of a count aggregation, as the histogram answers them.
async fn histogram(
    State(service): State<Arc<QueryService>>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Response {
    async {
        let tenant = tenant_param(&service, &headers, &params)?;
        let to = time_param(&params, "to", now())?;
        let from = time_param(&params, "from", to - 3600 * 1_000_000_000)?;
        let interval = duration_param(&params, "interval")?.unwrap_or(Duration::from_secs(60));
        let group_by = params.get("group_by").map_or("level", String::as_str);
        if !matches!(group_by, "level" | "service") {
            return Err(QueryError::BadRequest(format!(
                "group_by: {group_by:?} must be level or service"
            )));
        }
        let step = interval.as_nanos() as i64;
        let origin = from.div_euclid(step) * step;
        if (to - origin) / step > MAX_POINTS {
            return Err(QueryError::BadRequest(format!(
                "interval: {} buckets is more than {MAX_POINTS}; use a larger interval",
                (to - origin) / step
            )));
        }
        // Every bucket of the range, empty ones included, so charts keep their time axis:
        // bucket i starts at origin + i * step. Group names borrow from the answers below.
        let mut histogram = Histogram::new(origin, to, step);
        let counted;
        let aggregated;
        let stats = if interval.subsec_nanos() == 0 {
            // Whole-second buckets are epoch-aligned like `/api/v1/stats`'s: count on its
            // path (block rollups; one replica per service in a cluster) and reshape.
            let mut counting: Params = ["service", "level", "contains", "query"]
                .into_iter()
                .filter_map(|key| Some((key.to_string(), params.get(key)?.clone())))
                .collect();
            counting.insert("from".into(), bound_text(from));
            counting.insert("to".into(), bound_text(to));
            counting.insert("interval".into(), format!("{}s", interval.as_secs()));
            let (counts, stats) = service.level_counts(counting, tenant).await?;
            counted = counts;
            for ((service_name, bucket), by_level) in &counted {
                for (level, count) in by_level.iter().enumerate() {
                    let name = if group_by == "service" {
                        service_name.as_str()
                    } else {
                        logcluster_proto::Level::from_i32_lossy(level as i32).as_str()
                    };
                    histogram.add(*bucket, name, *count);
                }
            }
            stats
        } else {
            let spec = AggSpec {
                filter: filter_of(&params, from, to),
                by: vec![group_by.to_string()],
                step_ns: step,
                origin_ns: origin,
                ..AggSpec::default()
            };
            let (groups, stats) = service.aggregate(spec, tenant).await?;
            aggregated = groups;
            for ((bucket, group), cell) in &aggregated {
                let name = group.first().map_or("", String::as_str);
                histogram.add(*bucket, name, cell.count);
            }
            stats
        };
        let body = histogram_json(histogram, from, to, group_by, interval, stats);
        Ok((
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response())
    }
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

/// The histogram answer's JSON: the same bytes as the sorted JSON object it was built as
/// before it was typed.
fn histogram_json(
    mut histogram: Histogram<'_>,
    from: i64,
    to: i64,
    group_by: &str,
    interval: Duration,
    stats: Stats,
) -> Vec<u8> {
    // Each bucket's cells in the order of their group names.
    let mut by_name: Vec<u32> = (0..histogram.names.len() as u32).collect();
    by_name.sort_by(|a, b| histogram.names[*a as usize].cmp(histogram.names[*b as usize]));
    let mut rank = vec![0u32; by_name.len()];
    for (position, group) in by_name.iter().enumerate() {
        rank[*group as usize] = position as u32;
    }
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for cells in &mut histogram.buckets {
        cells.sort_unstable_by_key(|(group, _)| rank[*group as usize]);
        for (group, count) in cells.iter() {
            *totals.entry(histogram.names[*group as usize]).or_default() += count;
        }
    }
    let names = &histogram.names;
    let (origin, step) = (histogram.origin, histogram.step);
    let buckets = histogram
        .buckets
        .iter()
        .enumerate()
        .map(|(i, cells)| HistogramBucket {
            counts: CountsAt { names, cells },
            start: rfc3339(origin + i as i64 * step),
        })
        .collect();
    let answer = HistogramAnswer {
        buckets,
        from: rfc3339(from),
        group_by,
        interval_seconds: interval.as_secs_f64(),
        // As a JSON object, so that its keys are sorted as they were.
        stats: json!(stats),
        to: rfc3339(to),
        totals,
    };
    serde_json::to_vec(&answer).unwrap_or_default()
}

/// The histogram answer (fields in the order of a sorted JSON object).
#[derive(Serialize)]
struct HistogramAnswer<'a> {
    buckets: Vec<HistogramBucket<'a>>,
    from: String,
    group_by: &'a str,
    interval_seconds: f64,
    stats: Value,
    to: String,
    totals: BTreeMap<&'a str, u64>,
}

#[derive(Serialize)]
struct HistogramBucket<'a> {
    counts: CountsAt<'a>,
    start: String,
}

/// A bucket's counts by group name (its cells sorted by name, none zero).
struct CountsAt<'a> {
    names: &'a [&'a str],
    cells: &'a [(u32, u64)],
}

impl Serialize for CountsAt<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.cells.len()))?;
        for (group, count) in self.cells {
            map.serialize_entry(self.names[*group as usize], count)?;
        }
        map.end()
    }
}

/// Histogram counts per bucket (bucket i starts at `origin + i * step`) and group name.
struct Histogram<'a> {
    /// Group names by index, as first seen.
    names: Vec<&'a str>,
    index: HashMap<&'a str, u32>,
    /// Per bucket: (group index, count) of its groups with a count (few: memory follows the
    /// cells that have counts, however many groups and buckets there are).
    buckets: Vec<Vec<(u32, u64)>>,
    origin: i64,
    step: i64,
}

impl<'a> Histogram<'a> {
    /// Every bucket from `origin` up to `to`, empty ones included.
    fn new(origin: i64, to: i64, step: i64) -> Histogram<'a> {
        let count = if to <= origin {
            0
        } else {
            usize::try_from((to - origin - 1) / step + 1).unwrap_or(0)
        };
        Histogram {
            names: Vec::new(),
            index: HashMap::new(),
            buckets: vec![Vec::new(); count],
            origin,
            step,
        }
    }

    /// Adds `count` entries of group `name` to the bucket starting at `bucket` (counts
    /// outside the range are dropped).
    fn add(&mut self, bucket: i64, name: &'a str, count: u64) {
        if count == 0 {
            return;
        }
        let Some(cells) = usize::try_from((bucket - self.origin).div_euclid(self.step))
            .ok()
            .and_then(|i| self.buckets.get_mut(i))
        else {
            return;
        };
        let names = &mut self.names;
        let group = *self.index.entry(name).or_insert_with(|| {
            names.push(name);
            (names.len() - 1) as u32
        });
        match cells.iter_mut().find(|(g, _)| *g == group) {
            Some(cell) => cell.1 += count,
            None => cells.push((group, count)),
        }
    }
}

async fn top(
    State(service): State<Arc<QueryService>>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Response {
    answer(
        async {
            let tenant = tenant_param(&service, &headers, &params)?;
            let field = params
                .get("field")
                .filter(|f| !f.is_empty())
                .ok_or_else(|| QueryError::BadRequest("field: required (e.g. field=host)".into()))?
                .clone();
            let limit: usize = match params.get("limit") {
                None => 10,
                Some(text) => text
                    .parse()
                    .map_err(|_| QueryError::BadRequest(format!("limit: {text:?} is not a number")))?,
            };
            let to = time_param(&params, "to", now())?;
            let from = time_param(&params, "from", to - 3600 * 1_000_000_000)?;
            let spec = AggSpec {
                filter: filter_of(&params, from, to),
                by: vec![field.clone()],
                ..AggSpec::default()
            };
            let (groups, stats) = service.aggregate(spec, tenant).await?;
            let mut values: Vec<(String, u64)> = groups
                .into_iter()
                .map(|((_, group), cell)| (group.into_iter().next().unwrap_or_default(), cell.count))
                .collect();
            values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let total: u64 = values.iter().map(|v| v.1).sum();
            let shown: Vec<Value> = values
                .iter()
                .take(limit)
                .map(|(value, count)| json!({"value": value, "count": count}))
                .collect();
            let other = total - values.iter().take(limit).map(|v| v.1).sum::<u64>();
            Ok(json!({"field": field, "values": shown, "other": other, "total": total, "stats": stats}))
        }
        .await,
    )
}

async fn summary(
    State(service): State<Arc<QueryService>>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Response {
    answer(
        async {
            let tenant = tenant_param(&service, &headers, &params)?;
            let hours: u64 = match params.get("hoursBack") {
                None => 24,
                Some(text) => text.parse().ok().filter(|h| *h > 0).ok_or_else(|| {
                    QueryError::BadRequest(format!("hoursBack: {text:?} is not a positive number"))
                })?,
            };
            let to = now();
            let from = to - (hours as i64) * 3600 * 1_000_000_000;
            let spec = AggSpec {
                filter: filter_of(&params, from, to),
                by: vec!["service".into(), "level".into()],
                ..AggSpec::default()
            };
            let (groups, stats) = service.aggregate(spec, tenant).await?;
            let mut by_level: BTreeMap<String, u64> = BTreeMap::new();
            let mut by_service: BTreeMap<String, u64> = BTreeMap::new();
            let mut total = 0;
            for ((_, group), cell) in groups {
                *by_service.entry(group[0].clone()).or_default() += cell.count;
                *by_level.entry(group[1].clone()).or_default() += cell.count;
                total += cell.count;
            }
            Ok(json!({"from": rfc3339(from), "to": rfc3339(to), "hours_back": hours, "total": total,
                      "by_level": by_level, "by_service": by_service, "stats": stats}))
        }
        .await,
    )
}

fn parse_expr(params: &Params) -> Result<MetricExpr, QueryError> {
    let text = params
        .get("expr")
        .or_else(|| params.get("query"))
        .ok_or_else(|| {
            QueryError::BadRequest(
                "expr: required, e.g. expr=p95(duration_ms) by (service) over 5m".into(),
            )
        })?;
    agg::parse_metric(text).map_err(|e| QueryError::BadRequest(format!("expr: {e}")))
}

fn metric_spec(expr: &MetricExpr, params: &Params, from: i64, to: i64, step_ns: i64) -> AggSpec {
    let mut filter = filter_of(params, from, to);
    filter.query = expr.filter.clone();
    AggSpec {
        filter,
        field: if expr.func.needs_field() {
            expr.field.clone()
        } else {
            None
        },
        by: expr.by.clone(),
        step_ns,
        origin_ns: from,
        quantiles: matches!(expr.func, Func::Quantile(_)),
    }
}

fn labels_of(by: &[String], group: &[String]) -> Value {
    Value::Object(
        by.iter()
            .zip(group)
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// Evaluates a metric expression over `[at - window, at)` (alerts use this too).
pub async fn evaluate_instant(
    service: &Arc<QueryService>,
    expr: &MetricExpr,
    at: i64,
    tenant: Option<String>,
    params: &HashMap<String, String>,
) -> Result<(Vec<(Value, f64)>, Stats, Duration), QueryError> {
    let window = expr.window.unwrap_or(Duration::from_secs(300));
    let from = at - window.as_nanos() as i64;
    let spec = metric_spec(expr, params, from, at, 0);
    let (groups, stats) = service.aggregate(spec, tenant).await?;
    let mut result: Vec<(Value, f64)> = groups
        .into_iter()
        .filter_map(|((_, group), cell)| {
            expr.func
                .value(&cell, window.as_secs_f64())
                .map(|v| (labels_of(&expr.by, &group), v))
        })
        .collect();
    if result.is_empty() && expr.by.is_empty() && matches!(expr.func, Func::Count | Func::Rate) {
        result.push((json!({}), 0.0));
    }
    result.sort_by_key(|a| a.0.to_string());
    Ok((result, stats, window))
}

async fn metric_instant(
    State(service): State<Arc<QueryService>>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Response {
    answer(
        async {
            let tenant = tenant_param(&service, &headers, &params)?;
            let expr = parse_expr(&params)?;
            let at = time_param(&params, "time", now())?;
            let (result, stats, window) =
                evaluate_instant(&service, &expr, at, tenant, &params).await?;
            Ok(json!({
                "expr": expr.to_string(),
                "time": rfc3339(at),
                "window_seconds": window.as_secs_f64(),
                "result": result.into_iter().map(|(labels, value)| json!({"labels": labels, "value": value})).collect::<Vec<_>>(),
                "stats": stats,
            }))
        }
        .await,
    )
}

/// Most points a range query may return per series.
const MAX_POINTS: i64 = 11_000;

async fn metric_range(
    State(service): State<Arc<QueryService>>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Response {
    answer(
        async {
            let tenant = tenant_param(&service, &headers, &params)?;
            let expr = parse_expr(&params)?;
            let to = time_param(&params, "to", now())?;
            let from = time_param(&params, "from", to - 3600 * 1_000_000_000)?;
            if from >= to {
                return Err(QueryError::BadRequest("from must be before to".into()));
            }
            let step = duration_param(&params, "step")?.unwrap_or(Duration::from_secs(60));
            let step_ns = step.as_nanos() as i64;
            if (to - from) / step_ns > MAX_POINTS {
                return Err(QueryError::BadRequest(format!(
                    "step: {} points per series is more than {MAX_POINTS}; use a larger step",
                    (to - from) / step_ns
                )));
            }
            let spec = metric_spec(&expr, &params, from, to, step_ns);
            let (groups, stats) = service.aggregate(spec, tenant).await?;
            let mut series: BTreeMap<Vec<String>, Vec<(i64, f64)>> = BTreeMap::new();
            for ((bucket, group), cell) in groups {
                if let Some(v) = expr.func.value(&cell, step.as_secs_f64()) {
                    series.entry(group).or_default().push((bucket, v));
                }
            }
            let result: Vec<Value> = series
                .into_iter()
                .map(|(group, mut points)| {
                    points.sort_by_key(|p| p.0);
                    json!({
                        "labels": labels_of(&expr.by, &group),
                        "points": points.into_iter().map(|(t, v)| json!([rfc3339(t), v])).collect::<Vec<_>>(),
                    })
                })
                .collect();
            Ok(json!({"expr": expr.to_string(), "from": rfc3339(from), "to": rfc3339(to),
                      "step_seconds": step.as_secs_f64(), "result": result, "stats": stats}))
        }
        .await,
    )
}

// ---- live tail ----

/// How often tail looks for new entries.
const TAIL_POLL: Duration = Duration::from_millis(250);
/// Tail follows entries whose own timestamps are at most this old.
const TAIL_LOOKBACK: Duration = Duration::from_secs(300);
/// Entries become visible out of `received_at` order by at most this much (concurrent batches).
const TAIL_SLACK_NS: i64 = 10_000_000_000;
const TAIL_PAGE: usize = 1000;
const TAIL_MAX_PAGES: usize = 20;

async fn tail(
    State(service): State<Arc<QueryService>>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Response {
    let tenant = match tenant_param(&service, &headers, &params) {
        Ok(tenant) => tenant,
        Err(error) => return error.into_response(),
    };
    let mut base = filter_of(&params, 0, 0);
    base.to_ts = None;
    // Validate once up front: a bad query is a 400, not a stream that ends.
    if let Err(error) = compile(&base, tenant.clone(), &service.limits.default_tenant) {
        return error.into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(64);
    let service = service.clone();
    tokio::spawn(async move {
        if tx.send(Ok(": tail started\n\n".into())).await.is_err() {
            return;
        }
        let started = now();
        // Only entries received after the tail began.
        let mut watermark = started;
        let mut seen: HashMap<String, i64> = HashMap::new();
        let mut last_ping = Instant::now();
        loop {
            tokio::time::sleep(TAIL_POLL).await;
            if tx.is_closed() {
                return;
            }
            let mut fresh: Vec<LogEntry> = Vec::new();
            let mut cursor: Option<String> = None;
            for _ in 0..TAIL_MAX_PAGES {
                let mut request = base.clone();
                request.from_ts = Some(json!(now() - TAIL_LOOKBACK.as_nanos() as i64));
                request.limit = Some(TAIL_PAGE);
                request.cursor = cursor.clone();
                let page = match service.query_entries(request, tenant.clone()).await {
                    Ok(page) => page,
                    Err(QueryError::Busy) => break,
                    Err(error) => {
                        let _ = tx
                            .send(Ok(format!(
                                "event: error\ndata: {}\n\n",
                                json!({"error": error.to_string()})
                            )))
                            .await;
                        return;
                    }
                };
                let mut any_new = false;
                for entry in page.0 {
                    if entry.received_at >= watermark - TAIL_SLACK_NS
                        && entry.received_at >= started
                    {
                        any_new = true;
                        if !seen.contains_key(&entry.id) {
                            fresh.push(entry);
                        }
                    }
                }
                cursor = page.1;
                if cursor.is_none() || !any_new {
                    break;
                }
            }
            fresh.sort_by(|a, b| (a.received_at, &a.id).cmp(&(b.received_at, &b.id)));
            for entry in fresh {
                watermark = watermark.max(entry.received_at);
                seen.insert(entry.id.clone(), entry.received_at);
                let data = logcluster_proto::json::to_json(&entry).to_string();
                if tx
                    .send(Ok(format!("event: entry\ndata: {data}\n\n")))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let horizon = watermark - 2 * TAIL_SLACK_NS;
            seen.retain(|_, received| *received >= horizon);
            if last_ping.elapsed() > Duration::from_secs(15) {
                last_ping = Instant::now();
                if tx.send(Ok(": ping\n\n".into())).await.is_err() {
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed histogram answer is byte for byte the sorted JSON object it was built as
    /// before: keys, key order (the stats' too), empty buckets, zero counts left out, counts
    /// outside the range dropped.
    #[test]
    fn histogram_json_is_the_sorted_object_it_replaced() {
        let step = 60_000_000_000;
        let (from, to) = (30_000_000_000, 3 * step);
        let mut histogram = Histogram::new(0, to, step);
        histogram.add(0, "INFO", 3);
        histogram.add(step, "ERROR", 1);
        histogram.add(step, "INFO", 2);
        histogram.add(step, "DEBUG", 0);
        histogram.add(7 * step, "WARN", 9);
        let stats = Stats {
            objects_read: 2,
            objects_from_index: 4,
            duration_ms: 5,
            ..Stats::default()
        };
        let got = histogram_json(
            histogram,
            from,
            to,
            "level",
            Duration::from_secs(60),
            stats.clone(),
        );
        let want = json!({
            "interval_seconds": 60.0,
            "group_by": "level",
            "from": rfc3339(from),
            "to": rfc3339(to),
            "buckets": [
                {"start": rfc3339(0), "counts": {"INFO": 3}},
                {"start": rfc3339(step), "counts": {"ERROR": 1, "INFO": 2}},
                {"start": rfc3339(2 * step), "counts": {}},
            ],
            "totals": {"ERROR": 1, "INFO": 5},
            "stats": stats,
        });
        assert_eq!(
            String::from_utf8(got).expect("utf-8"),
            serde_json::to_string(&want).expect("serializes")
        );
    }
}
