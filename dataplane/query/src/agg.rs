//! Aggregations: counts per interval (histograms), top values of a field, and metric
//! functions over a numeric field, all computed by one engine.
//!
//! An [`AggSpec`] names a log filter (the same as a search), an optional numeric field, the
//! labels to group by, and a step. Each storage member (or the single node) folds every
//! matching entry into [`Cell`]s keyed by (service, step bucket, label values); cells are
//! mergeable (count, sum, min, max, and a quantile [`Sketch`]). Copies of a service live on
//! its replicas, so the query node takes **one** replica's cells per service — the replica that
//! counted the most entries, i.e. the most complete copy — and merges across services. Nothing
//! is double counted, and a lagging replica never lowers a result.
//!
//! # Metric expressions
//!
//! ```text
//! func(field) [by (label, ...)] [over <duration>] [where <log query>]
//! p95(duration_ms) by (service) over 5m where level:ERROR
//! rate() by (level) over 1m
//! count() where service:checkout AND "declined"
//! ```
//!
//! `func` is `count`, `rate` (matching entries per second of the window), `sum`, `avg`,
//! `min`, `max`, or a quantile `p50`, `p90`, `p95`, `p99` (within 1 % relative error, see
//! [`crate::sketch`]). `count` and `rate` take no field; the others need a numeric field, and
//! entries without a numeric value in it are left out. Labels are `service`, `level`, `host`,
//! `trace_id` or any field name.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use logcluster_proto::{Level, LogEntry};
use serde::{Deserialize, Serialize};

use crate::api::{QueryRequest, Stats};
use crate::sketch::Sketch;

/// A metric function.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Func {
    Count,
    Rate,
    Sum,
    Avg,
    Min,
    Max,
    /// A quantile in (0, 1).
    Quantile(f64),
}

impl Func {
    fn parse(name: &str) -> Option<Func> {
        Some(match name {
            "count" => Func::Count,
            "rate" => Func::Rate,
            "sum" => Func::Sum,
            "avg" => Func::Avg,
            "min" => Func::Min,
            "max" => Func::Max,
            "p50" => Func::Quantile(0.5),
            "p90" => Func::Quantile(0.9),
            "p95" => Func::Quantile(0.95),
            "p99" => Func::Quantile(0.99),
            _ => return None,
        })
    }

    pub fn name(self) -> String {
        match self {
            Func::Count => "count".into(),
            Func::Rate => "rate".into(),
            Func::Sum => "sum".into(),
            Func::Avg => "avg".into(),
            Func::Min => "min".into(),
            Func::Max => "max".into(),
            Func::Quantile(q) => format!("p{}", (q * 100.0).round() as u32),
        }
    }

    pub fn needs_field(self) -> bool {
        !matches!(self, Func::Count | Func::Rate)
    }

    /// The function's value for a cell over a window of `window_secs`.
    pub fn value(self, cell: &Cell, window_secs: f64) -> Option<f64> {
        if cell.count == 0 && !matches!(self, Func::Count | Func::Rate | Func::Sum) {
            return None;
        }
        Some(match self {
            Func::Count => cell.count as f64,
            Func::Rate => cell.count as f64 / window_secs.max(1e-9),
            Func::Sum => cell.sum,
            Func::Avg => cell.sum / cell.count as f64,
            Func::Min => cell.min,
            Func::Max => cell.max,
            Func::Quantile(q) => cell.sketch.as_ref()?.quantile(q)?,
        })
    }
}

/// A parsed metric expression.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricExpr {
    pub func: Func,
    pub field: Option<String>,
    pub by: Vec<String>,
    pub window: Option<Duration>,
    /// The log query that selects entries (`where …`).
    pub filter: Option<String>,
}

/// A metric expression that does not parse: what is wrong and where (byte offset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExprError {
    pub position: usize,
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at position {}", self.message, self.position)
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Parses `func(field) [by (labels)] [over dur] [where query]`.
pub fn parse_metric(text: &str) -> Result<MetricExpr, ExprError> {
    let err = |position: usize, message: &str| ExprError {
        position,
        message: message.to_string(),
    };
    let mut at = 0usize;
    let bytes = text.as_bytes();
    let skip_ws = |at: &mut usize| {
        while *at < bytes.len() && bytes[*at].is_ascii_whitespace() {
            *at += 1;
        }
    };
    let word = |at: &mut usize| -> &str {
        let start = *at;
        while *at < text.len() && text[*at..].starts_with(is_name_char) {
            *at += 1;
        }
        &text[start..*at]
    };
    skip_ws(&mut at);
    let start = at;
    let name = word(&mut at).to_ascii_lowercase();
    let func = Func::parse(&name).ok_or_else(|| {
        err(
            start,
            "expected a function: count, rate, sum, avg, min, max, p50, p90, p95 or p99",
        )
    })?;
    skip_ws(&mut at);
    if bytes.get(at) != Some(&b'(') {
        return Err(err(at, "expected '(' after the function name"));
    }
    at += 1;
    skip_ws(&mut at);
    let field_at = at;
    let field = word(&mut at).to_string();
    skip_ws(&mut at);
    if bytes.get(at) != Some(&b')') {
        return Err(err(at, "expected ')' after the field"));
    }
    at += 1;
    let field = (!field.is_empty()).then_some(field);
    if func.needs_field() && field.is_none() {
        return Err(err(
            field_at,
            &format!("{} needs a numeric field", func.name()),
        ));
    }
    let mut expr = MetricExpr {
        func,
        field,
        by: Vec::new(),
        window: None,
        filter: None,
    };
    loop {
        skip_ws(&mut at);
        if at >= text.len() {
            break;
        }
        let keyword_at = at;
        let keyword = word(&mut at).to_ascii_lowercase();
        match keyword.as_str() {
            "by" if expr.by.is_empty() => {
                skip_ws(&mut at);
                if bytes.get(at) != Some(&b'(') {
                    return Err(err(at, "expected '(' after by"));
                }
                at += 1;
                loop {
                    skip_ws(&mut at);
                    let label_at = at;
                    let label = word(&mut at);
                    if label.is_empty() {
                        return Err(err(label_at, "expected a label name"));
                    }
                    expr.by.push(label.to_string());
                    skip_ws(&mut at);
                    match bytes.get(at) {
                        Some(b',') => at += 1,
                        Some(b')') => {
                            at += 1;
                            break;
                        }
                        _ => return Err(err(at, "expected ',' or ')' in the label list")),
                    }
                }
            }
            "over" if expr.window.is_none() => {
                skip_ws(&mut at);
                let dur_at = at;
                let dur = word(&mut at);
                expr.window = Some(
                    crate::api::parse_interval(dur)
                        .ok_or_else(|| err(dur_at, "expected a duration like 30s, 5m or 1h"))?,
                );
            }
            "where" => {
                let rest = text[at..].trim();
                if rest.is_empty() {
                    return Err(err(at, "expected a log query after where"));
                }
                crate::lang::parse(rest).map_err(|e| ExprError {
                    position: at + (text[at..].len() - text[at..].trim_start().len()) + e.position,
                    message: e.message.clone(),
                })?;
                expr.filter = Some(rest.to_string());
                break;
            }
            _ => return Err(err(keyword_at, "expected by, over or where")),
        }
    }
    Ok(expr)
}

impl fmt::Display for MetricExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}({})",
            self.func.name(),
            self.field.as_deref().unwrap_or("")
        )?;
        if !self.by.is_empty() {
            write!(f, " by ({})", self.by.join(", "))?;
        }
        if let Some(window) = self.window {
            write!(f, " over {}", format_duration(window))?;
        }
        if let Some(filter) = &self.filter {
            write!(f, " where {filter}")?;
        }
        Ok(())
    }
}

/// `90s` → `90s`, `300s` → `5m`, `7200s` → `2h`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{}s", s.max(1))
    }
}

/// What to aggregate (sent to storage members as JSON).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AggSpec {
    pub filter: QueryRequest,
    /// Numeric field whose values are folded; `None` counts entries.
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default)]
    pub by: Vec<String>,
    /// Bucket width in nanoseconds; 0 = one bucket for the whole range.
    #[serde(default)]
    pub step_ns: i64,
    /// Buckets start at `origin_ns + k·step_ns`.
    #[serde(default)]
    pub origin_ns: i64,
    /// Whether cells keep a quantile sketch.
    #[serde(default)]
    pub quantiles: bool,
}

/// Mergeable aggregation state of one group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub count: u64,
    #[serde(default)]
    pub sum: f64,
    #[serde(default)]
    pub min: f64,
    #[serde(default)]
    pub max: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sketch: Option<Sketch>,
}

impl Cell {
    pub fn add(&mut self, value: Option<f64>, quantiles: bool) {
        if let Some(v) = value {
            if self.count == 0 {
                self.min = v;
                self.max = v;
            } else {
                self.min = self.min.min(v);
                self.max = self.max.max(v);
            }
            self.sum += v;
            if quantiles {
                self.sketch.get_or_insert_with(Sketch::default).add(v);
            }
        }
        self.count += 1;
    }

    pub fn merge(&mut self, other: &Cell) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            self.min = other.min;
            self.max = other.max;
        } else {
            self.min = self.min.min(other.min);
            self.max = self.max.max(other.max);
        }
        self.count += other.count;
        self.sum += other.sum;
        if let Some(sketch) = &other.sketch {
            self.sketch
                .get_or_insert_with(Sketch::default)
                .merge(sketch);
        }
    }
}

/// Group key: bucket start and label values.
pub type Key = (i64, Vec<String>);
/// Cells of one service.
pub type Groups = HashMap<Key, Cell>;
/// Cells per service, as one member computes them.
pub type PerService = BTreeMap<String, Groups>;

/// A label's value for an entry (`""` when the entry has none).
pub fn label_value(entry: &LogEntry, name: &str) -> String {
    match name {
        "service" => entry.service.clone(),
        "level" => Level::from_i32_lossy(entry.level).as_str().to_string(),
        "host" => entry.host.clone(),
        "trace_id" => entry.trace_id.clone(),
        "tenant" => entry.tenant.clone(),
        other => entry
            .fields
            .get(other)
            .map(|v| v.to_text())
            .unwrap_or_default(),
    }
}

impl AggSpec {
    pub fn bucket_of(&self, ts: i64) -> i64 {
        if self.step_ns <= 0 {
            self.origin_ns
        } else {
            self.origin_ns + (ts - self.origin_ns).div_euclid(self.step_ns) * self.step_ns
        }
    }

    /// The value an entry contributes: `Some(None)` counts it without a value, `None` leaves
    /// it out (a field was asked for and the entry has no number in it).
    pub fn value_of(&self, entry: &LogEntry) -> Option<Option<f64>> {
        match &self.field {
            None => Some(None),
            Some(field) => entry.fields.get(field)?.as_f64().map(Some),
        }
    }
}

/// One row of a member's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub service: String,
    pub bucket: i64,
    pub group: Vec<String>,
    pub cell: Cell,
}

/// A member's answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Answer {
    pub rows: Vec<Row>,
    pub stats: Stats,
}

impl Answer {
    pub fn from_groups(groups: PerService, stats: Stats) -> Answer {
        let mut rows = Vec::new();
        for (service, cells) in groups {
            for ((bucket, group), cell) in cells {
                rows.push(Row {
                    service: service.clone(),
                    bucket,
                    group,
                    cell,
                });
            }
        }
        Answer { rows, stats }
    }
}

/// Merges members' answers: per service the cells of the member that counted the most
/// entries of it, then summed across services.
pub fn merge_answers(answers: &[Answer]) -> Groups {
    let mut best: HashMap<&str, (u64, usize)> = HashMap::new();
    for (index, answer) in answers.iter().enumerate() {
        let mut totals: HashMap<&str, u64> = HashMap::new();
        for row in &answer.rows {
            *totals.entry(row.service.as_str()).or_default() += row.cell.count;
        }
        for (service, total) in totals {
            let slot = best.entry(service).or_insert((total, index));
            if total > slot.0 {
                *slot = (total, index);
            }
        }
    }
    let mut merged = Groups::new();
    for (index, answer) in answers.iter().enumerate() {
        for row in &answer.rows {
            if best.get(row.service.as_str()).map(|b| b.1) == Some(index) {
                merged
                    .entry((row.bucket, row.group.clone()))
                    .or_default()
                    .merge(&row.cell);
            }
        }
    }
    merged
}

/// Merges the cells of every service (single node).
pub fn flatten(groups: PerService) -> Groups {
    let mut merged = Groups::new();
    for (_, cells) in groups {
        for (key, cell) in cells {
            merged.entry(key).or_default().merge(&cell);
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints_metric_expressions() {
        let e =
            parse_metric("p95(duration_ms) by (service, host) over 5m where level:ERROR AND \"x\"")
                .expect("valid");
        assert_eq!(e.func, Func::Quantile(0.95));
        assert_eq!(e.field.as_deref(), Some("duration_ms"));
        assert_eq!(e.by, ["service", "host"]);
        assert_eq!(e.window, Some(Duration::from_secs(300)));
        assert_eq!(e.filter.as_deref(), Some("level:ERROR AND \"x\""));
        assert_eq!(
            e.to_string(),
            "p95(duration_ms) by (service, host) over 5m where level:ERROR AND \"x\""
        );
        let e = parse_metric("  RATE ( )  ").expect("valid");
        assert_eq!((e.func, e.field, e.by.len()), (Func::Rate, None, 0));
    }

    #[test]
    fn expression_errors_point_at_the_problem() {
        for (text, position, needle) in [
            ("median(x)", 0, "expected a function"),
            ("sum()", 4, "needs a numeric field"),
            ("count() by service", 11, "expected '('"),
            ("count() over 5 minutes", 13, "duration"),
            ("count() sideways", 8, "expected by, over or where"),
            ("count() where (level:ERROR", 14, "never closed"),
            ("avg(x", 5, "expected ')'"),
        ] {
            let error = parse_metric(text).expect_err(text);
            assert_eq!(error.position, position, "{text}: {error}");
            assert!(error.message.contains(needle), "{text}: {error}");
        }
    }

    proptest! {
        #[test]
        fn printed_expressions_parse_back(
            func in prop::sample::select(vec!["count", "rate", "sum", "avg", "min", "max", "p50", "p90", "p95", "p99"]),
            field in "[a-z][a-z_.]{0,8}",
            by in proptest::collection::vec("[a-z][a-z_]{0,6}", 0..3),
            window in proptest::option::of(1u64..100_000),
            filter in proptest::option::of(prop::sample::select(vec!["level:ERROR", "service:a* OR host:b", "\"x y\" -z"])),
        ) {
            let field = if matches!(func, "count" | "rate") { String::new() } else { field };
            let mut text = format!("{func}({field})");
            if !by.is_empty() { text.push_str(&format!(" by ({})", by.join(", "))); }
            if let Some(w) = window { text.push_str(&format!(" over {w}s")); }
            if let Some(f) = filter { text.push_str(&format!(" where {f}")); }
            let parsed = parse_metric(&text).expect("valid");
            let printed = parsed.to_string();
            prop_assert_eq!(parse_metric(&printed).expect("printed"), parsed);
        }
    }

    #[test]
    fn cells_merge_like_one_cell() {
        let values = [3.0, -1.0, 7.5, 0.0, 2.0];
        let mut whole = Cell::default();
        let (mut a, mut b) = (Cell::default(), Cell::default());
        for (i, v) in values.iter().enumerate() {
            whole.add(Some(*v), true);
            if i % 2 == 0 {
                a.add(Some(*v), true)
            } else {
                b.add(Some(*v), true)
            }
        }
        a.merge(&b);
        assert_eq!(a, whole);
        assert_eq!(
            (whole.count, whole.sum, whole.min, whole.max),
            (5, 11.5, -1.0, 7.5)
        );
        assert_eq!(Func::Avg.value(&whole, 1.0), Some(2.3));
        assert_eq!(Func::Rate.value(&whole, 10.0), Some(0.5));
    }

    #[test]
    fn merging_takes_the_most_complete_replica_per_service() {
        let row = |service: &str, count: u64| Row {
            service: service.into(),
            bucket: 0,
            group: vec![],
            cell: Cell {
                count,
                ..Cell::default()
            },
        };
        let answers = vec![
            Answer {
                rows: vec![row("a", 10), row("b", 4)],
                stats: Stats::default(),
            },
            Answer {
                rows: vec![row("a", 9), row("b", 5)],
                stats: Stats::default(),
            },
            Answer {
                rows: vec![row("b", 5)],
                stats: Stats::default(),
            },
        ];
        let merged = merge_answers(&answers);
        assert_eq!(merged[&(0, vec![])].count, 15, "a from the first, b once");
    }

    #[test]
    fn buckets_align_to_the_origin() {
        let spec = AggSpec {
            step_ns: 10,
            origin_ns: 5,
            ..AggSpec::default()
        };
        assert_eq!(
            (
                spec.bucket_of(5),
                spec.bucket_of(14),
                spec.bucket_of(15),
                spec.bucket_of(4)
            ),
            (5, 5, 15, -5)
        );
    }
}
