//! Alert rules: a log query or a metric expression compared with a threshold, evaluated on an
//! interval by the query role, with states inactive → pending → firing → resolved, webhook
//! notifications with retries, `GET /api/v1/alerts` and Prometheus metrics.
//!
//! Rules come from YAML files in a folder (`alerts.ruleDir`), reloaded when they change; on
//! Kubernetes the operator renders LogCluster `spec.alerts.rules` into the same file format
//! (see docs/alerts.md):
//!
//! ```yaml
//! rules:
//!   - name: checkout-errors
//!     query: 'count() by (service) over 5m where level:ERROR AND service:checkout'
//!     op: ">"
//!     threshold: 10
//!     for: 1m
//!     labels: {severity: page}
//!     annotations: {summary: "checkout is failing"}
//! ```
//!
//! `query` is a metric expression ([`crate::agg`]) or a log query, which counts its matches
//! over `window` (default 5m). A rule grouped `by` labels has one state per label set.
//! Notifications (Alertmanager's webhook body, so existing receivers understand it) go out when
//! a group starts firing and when it resolves, retried with backoff.
//!
//! In a cluster with several query nodes, `alerts.evaluators` lists their names and each rule
//! is evaluated by exactly one of them (rendezvous hashing of the rule name); the others list
//! the rule and say who evaluates it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::agg::{self, Func, MetricExpr};
use crate::api::{QueryService, parse_interval};

/// One rule as written in a file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    pub query: String,
    pub op: String,
    pub threshold: f64,
    #[serde(default, rename = "for")]
    pub for_duration: Option<String>,
    /// Window of a log-query rule (default 5m).
    #[serde(default)]
    pub window: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Op {
    pub fn parse(text: &str) -> Option<Op> {
        Some(match text.trim() {
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            "<=" => Op::Le,
            "==" => Op::Eq,
            "!=" => Op::Ne,
            _ => return None,
        })
    }

    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Gt => value > threshold,
            Op::Ge => value >= threshold,
            Op::Lt => value < threshold,
            Op::Le => value <= threshold,
            Op::Eq => value == threshold,
            Op::Ne => value != threshold,
        }
    }
}

/// A rule ready to evaluate.
#[derive(Clone, Debug)]
pub struct Rule {
    pub raw: RawRule,
    pub expr: MetricExpr,
    pub op: Op,
    pub for_duration: Duration,
}

/// Compiles a rule; the error says which field is wrong.
pub fn compile_rule(raw: RawRule) -> Result<Rule, String> {
    if raw.name.trim().is_empty() {
        return Err("name: must not be empty".into());
    }
    let op = Op::parse(&raw.op)
        .ok_or_else(|| format!("op: {:?} is not one of >, >=, <, <=, ==, !=", raw.op))?;
    let for_duration = match raw.for_duration.as_deref().map(str::trim) {
        None | Some("") | Some("0") | Some("0s") => Duration::ZERO,
        Some(text) => {
            parse_interval(text).ok_or_else(|| format!("for: {text:?} is not a duration"))?
        }
    };
    let expr = match agg::parse_metric(&raw.query) {
        Ok(expr) => expr,
        Err(metric_error) => {
            // Not a metric expression: a log query counted over the window.
            crate::lang::parse(&raw.query).map_err(|e| {
                format!("query: neither a metric expression ({metric_error}) nor a log query ({e})")
            })?;
            let window = match raw.window.as_deref() {
                None => Duration::from_secs(300),
                Some(text) => parse_interval(text)
                    .ok_or_else(|| format!("window: {text:?} is not a duration"))?,
            };
            MetricExpr {
                func: Func::Count,
                field: None,
                by: Vec::new(),
                window: Some(window),
                filter: Some(raw.query.clone()),
            }
        }
    };
    Ok(Rule {
        raw,
        expr,
        op,
        for_duration,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Inactive,
    Resolved,
    Pending,
    Firing,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Inactive => "inactive",
            State::Pending => "pending",
            State::Firing => "firing",
            State::Resolved => "resolved",
        }
    }
}

#[derive(Clone, Debug)]
struct Group {
    labels: BTreeMap<String, String>,
    state: State,
    value: Option<f64>,
    active_since: Option<i64>,
    resolved_at: Option<i64>,
    /// Since when the group has had no value while neither pending nor firing.
    idle_since: Option<i64>,
}

#[derive(Clone, Debug, Default)]
struct RuleStatus {
    groups: BTreeMap<String, Group>,
    last_evaluation: Option<i64>,
    last_error: Option<String>,
}

/// A notification to deliver.
#[derive(Clone, Debug)]
struct Notice {
    body: Value,
}

/// Settings of the evaluator.
#[derive(Clone, Debug, Default)]
pub struct AlertSettings {
    pub rule_dir: Option<PathBuf>,
    pub interval: Duration,
    pub webhook_url: Option<String>,
    /// Names of every query node that evaluates rules; empty = this node evaluates all.
    pub evaluators: Vec<String>,
    pub node_name: String,
    /// When set, rules are evaluated only while this is true (this node holds the alerts
    /// Lease in Kubernetes).
    pub leading: Option<tokio::sync::watch::Receiver<bool>>,
}

#[derive(Clone, Default)]
struct AlertMetrics {
    firing: Family<Vec<(String, String)>, Gauge>,
    evaluations: Family<Vec<(String, String)>, Counter>,
    notifications: Family<Vec<(String, String)>, Counter>,
    rule_errors: Counter,
}

/// The loaded rules, the load errors, and the files (with modification times) they came from.
type Loaded = (Vec<Rule>, Vec<String>, BTreeMap<PathBuf, SystemTime>);

/// Rules, their states and the notifier.
pub struct Alerts {
    settings: AlertSettings,
    rules: Mutex<Loaded>,
    status: Mutex<HashMap<String, RuleStatus>>,
    metrics: AlertMetrics,
    notices: tokio::sync::mpsc::Sender<Notice>,
}

/// Notifications waiting for the webhook, at most; past it a new one is dropped (counted as
/// `dropped`): a webhook that is down must not make them pile up in memory.
const QUEUED_NOTICES: usize = 1024;

/// A group that is neither pending nor firing, and has had no value for this long, is
/// forgotten: label sets that stop appearing (pods, hosts) must not be kept and stepped on
/// every evaluation for good.
const IDLE_GROUP_NANOS: i64 = 3600 * 1_000_000_000;

/// Marks the groups without a value this time that are neither pending nor firing as idle
/// (since `now`, unless they already were), and forgets those idle for
/// [`IDLE_GROUP_NANOS`].
fn forget_idle_groups(
    groups: &mut BTreeMap<String, Group>,
    seen: &std::collections::HashSet<String>,
    now: i64,
) {
    groups.retain(|key, group| {
        if seen.contains(key) || matches!(group.state, State::Pending | State::Firing) {
            group.idle_since = None;
            return true;
        }
        let since = *group.idle_since.get_or_insert(now);
        now - since < IDLE_GROUP_NANOS
    });
}

fn labels_key(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_default()
}

fn rendezvous(rule: &str, node: &str) -> u64 {
    // FNV-1a over "rule\0node": stable across processes and versions.
    logcluster_common::ids::fnv1a64(format!("{rule}\0{node}").as_bytes())
}

impl Alerts {
    /// Creates the evaluator and registers its metrics; call [`Alerts::run`] to start it.
    pub fn new(settings: AlertSettings, registry: &mut Registry) -> Arc<Alerts> {
        let metrics = AlertMetrics::default();
        let r = registry.sub_registry_with_prefix("logcluster_alerts");
        r.register(
            "firing",
            "Groups of a rule that are firing",
            metrics.firing.clone(),
        );
        r.register(
            "evaluations",
            "Rule evaluations by result",
            metrics.evaluations.clone(),
        );
        r.register(
            "notifications",
            "Webhook notifications by result (sent, retried, failed)",
            metrics.notifications.clone(),
        );
        r.register(
            "rule_errors",
            "Rule files or rules that could not be loaded",
            metrics.rule_errors.clone(),
        );
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUED_NOTICES);
        let alerts = Arc::new(Alerts {
            settings,
            rules: Mutex::new((Vec::new(), Vec::new(), BTreeMap::new())),
            status: Mutex::new(HashMap::new()),
            metrics,
            notices: tx,
        });
        tokio::spawn(deliver(
            alerts.settings.webhook_url.clone(),
            alerts.metrics.clone(),
            rx,
        ));
        alerts
    }

    /// Which query node evaluates `rule`.
    pub fn evaluator_of(&self, rule: &str) -> String {
        self.settings
            .evaluators
            .iter()
            .max_by_key(|node| rendezvous(rule, node))
            .cloned()
            .unwrap_or_else(|| self.settings.node_name.clone())
    }

    /// Reloads the rule files when any changed; load errors are kept for the API.
    pub fn reload(&self) {
        let Some(dir) = &self.settings.rule_dir else {
            return;
        };
        let mut files: BTreeMap<PathBuf, SystemTime> = BTreeMap::new();
        if let Ok(read) = std::fs::read_dir(dir) {
            for entry in read.flatten() {
                let path = entry.path();
                if matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml")
                ) && let Ok(modified) = entry.metadata().and_then(|m| m.modified())
                {
                    files.insert(path, modified);
                }
            }
        }
        let mut guard = self.rules.lock().expect("rules lock");
        if guard.2 == files {
            return;
        }
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for path in files.keys() {
            let parsed = std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|text| {
                    serde_yaml::from_str::<RuleFile>(&text).map_err(|e| e.to_string())
                });
            match parsed {
                Err(error) => errors.push(format!("{}: {error}", path.display())),
                Ok(file) => {
                    for raw in file.rules {
                        let name = raw.name.clone();
                        match compile_rule(raw) {
                            Ok(rule)
                                if rules.iter().any(|r: &Rule| r.raw.name == rule.raw.name) =>
                            {
                                errors.push(format!(
                                    "{}: rule {name:?} is defined twice",
                                    path.display()
                                ))
                            }
                            Ok(rule) => rules.push(rule),
                            Err(error) => {
                                errors.push(format!("{}: rule {name:?}: {error}", path.display()))
                            }
                        }
                    }
                }
            }
        }
        for error in &errors {
            warn!(%error, "alert rule not loaded");
        }
        self.metrics.rule_errors.inc_by(errors.len() as u64);
        info!(
            rules = rules.len(),
            errors = errors.len(),
            "alert rules loaded"
        );
        *guard = (rules, errors, files);
    }

    /// Evaluates every rule this node owns, once, at `now`.
    pub async fn evaluate(&self, service: &Arc<QueryService>, now: i64) {
        self.reload();
        let rules = self.rules.lock().expect("rules lock").0.clone();
        if let Some(leading) = &self.settings.leading
            && !*leading.borrow()
        {
            return;
        }
        for rule in rules {
            if self.evaluator_of(&rule.raw.name) != self.settings.node_name {
                continue;
            }
            let outcome = crate::endpoints::evaluate_instant(
                service,
                &rule.expr,
                now,
                rule.raw.tenant.clone(),
                &HashMap::new(),
            )
            .await;
            let result_label = if outcome.is_ok() { "ok" } else { "error" };
            self.metrics
                .evaluations
                .get_or_create(&vec![
                    ("rule".into(), rule.raw.name.clone()),
                    ("result".into(), result_label.into()),
                ])
                .inc();
            let mut status = self.status.lock().expect("status lock");
            let entry = status.entry(rule.raw.name.clone()).or_default();
            entry.last_evaluation = Some(now);
            let values = match outcome {
                Err(error) => {
                    entry.last_error = Some(error.to_string());
                    continue;
                }
                Ok((values, _, _)) => {
                    entry.last_error = None;
                    values
                }
            };
            let mut seen = std::collections::HashSet::new();
            for (labels, value) in values {
                let labels: BTreeMap<String, String> =
                    serde_json::from_value(labels).unwrap_or_default();
                let key = labels_key(&labels);
                seen.insert(key.clone());
                let group = entry.groups.entry(key).or_insert_with(|| Group {
                    labels,
                    state: State::Inactive,
                    value: None,
                    active_since: None,
                    resolved_at: None,
                    idle_since: None,
                });
                group.value = Some(value);
                let holds = rule.op.holds(value, rule.raw.threshold);
                self.step(&rule, group, holds, now);
            }
            // Groups without a value this time: a count of nothing is 0.
            for (key, group) in entry.groups.iter_mut() {
                if seen.contains(key) {
                    continue;
                }
                let zero = matches!(rule.expr.func, Func::Count | Func::Rate).then_some(0.0);
                group.value = zero;
                let holds = zero.is_some_and(|v| rule.op.holds(v, rule.raw.threshold));
                self.step(&rule, group, holds, now);
            }
            forget_idle_groups(&mut entry.groups, &seen, now);
            let firing = entry
                .groups
                .values()
                .filter(|g| g.state == State::Firing)
                .count();
            self.metrics
                .firing
                .get_or_create(&vec![("rule".into(), rule.raw.name.clone())])
                .set(firing as i64);
        }
    }

    fn step(&self, rule: &Rule, group: &mut Group, holds: bool, now: i64) {
        let before = group.state;
        group.state = match (group.state, holds) {
            (State::Inactive | State::Resolved, true) => {
                group.active_since = Some(now);
                if rule.for_duration.is_zero() {
                    State::Firing
                } else {
                    State::Pending
                }
            }
            (State::Pending, true) => {
                let since = group.active_since.unwrap_or(now);
                if now - since >= rule.for_duration.as_nanos() as i64 {
                    State::Firing
                } else {
                    State::Pending
                }
            }
            (State::Firing, true) => State::Firing,
            (State::Pending, false) => {
                group.active_since = None;
                State::Inactive
            }
            (State::Firing, false) => {
                group.resolved_at = Some(now);
                State::Resolved
            }
            (state @ (State::Inactive | State::Resolved), false) => state,
        };
        if before != group.state && matches!(group.state, State::Firing | State::Resolved) {
            info!(rule = %rule.raw.name, state = group.state.name(), value = ?group.value, "alert state changed");
            let queued = self.notices.try_send(Notice {
                body: notification(rule, group),
            });
            if queued.is_err() {
                self.metrics
                    .notifications
                    .get_or_create(&vec![("result".into(), "dropped".into())])
                    .inc();
                tracing::warn!(rule = %rule.raw.name, "alert notification dropped: {QUEUED_NOTICES} are already waiting for the webhook");
            }
        }
    }

    /// `GET /api/v1/alerts`.
    pub fn snapshot(&self) -> Value {
        self.reload();
        let (rules, errors, _) = self.rules.lock().expect("rules lock").clone();
        let status = self.status.lock().expect("status lock");
        let time = |ns: Option<i64>| ns.map(logcluster_proto::time::format_rfc3339);
        let rows: Vec<Value> = rules
            .iter()
            .map(|rule| {
                let s = status.get(&rule.raw.name).cloned().unwrap_or_default();
                let state = s
                    .groups
                    .values()
                    .map(|g| g.state)
                    .max()
                    .unwrap_or(State::Inactive);
                let lead = s.groups.values().max_by(|a, b| {
                    a.state.cmp(&b.state).then(
                        a.value
                            .unwrap_or(f64::MIN)
                            .total_cmp(&b.value.unwrap_or(f64::MIN)),
                    )
                });
                json!({
                    "name": rule.raw.name,
                    "tenant": rule.raw.tenant,
                    "query": rule.raw.query,
                    "expr": rule.expr.to_string(),
                    "op": rule.raw.op,
                    "threshold": rule.raw.threshold,
                    "for_seconds": rule.for_duration.as_secs_f64(),
                    "labels": rule.raw.labels,
                    "annotations": rule.raw.annotations,
                    "evaluated_by": self.evaluator_of(&rule.raw.name),
                    "state": state.name(),
                    "value": lead.and_then(|g| g.value),
                    "active_since": time(lead.and_then(|g| g.active_since)),
                    "last_evaluation": time(s.last_evaluation),
                    "last_error": s.last_error,
                    "groups": s.groups.values().map(|g| json!({
                        "labels": g.labels, "state": g.state.name(), "value": g.value,
                        "active_since": time(g.active_since), "resolved_at": time(g.resolved_at),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({"rules": rows, "errors": errors})
    }

    /// Evaluates on the configured interval until shutdown.
    pub async fn run(
        self: Arc<Self>,
        service: Arc<QueryService>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut tick =
            tokio::time::interval(self.settings.interval.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => self.evaluate(&service, logcluster_proto::time::now_nanos()).await,
                _ = &mut stop => return,
            }
        }
    }
}

/// Alertmanager's webhook body for one group's transition.
fn notification(rule: &Rule, group: &Group) -> Value {
    let mut labels = rule.raw.labels.clone();
    labels.insert("alertname".into(), rule.raw.name.clone());
    labels.extend(group.labels.clone());
    let status = if group.state == State::Firing {
        "firing"
    } else {
        "resolved"
    };
    let time = |ns: Option<i64>| ns.map(logcluster_proto::time::format_rfc3339);
    json!({
        "version": "4",
        "receiver": "logcluster",
        "status": status,
        "groupKey": format!("{}:{}", rule.raw.name, labels_key(&group.labels)),
        "groupLabels": {"alertname": rule.raw.name},
        "commonLabels": labels,
        "commonAnnotations": rule.raw.annotations,
        "externalURL": "",
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": rule.raw.annotations,
            "startsAt": time(group.active_since),
            "endsAt": time(if status == "resolved" { group.resolved_at } else { None }),
            "value": group.value,
            "expr": rule.expr.to_string(),
        }],
    })
}

/// Delivers notifications in order, each retried with exponential backoff (5 attempts).
async fn deliver(
    url: Option<String>,
    metrics: AlertMetrics,
    mut rx: tokio::sync::mpsc::Receiver<Notice>,
) {
    while let Some(notice) = rx.recv().await {
        let Some(url) = &url else {
            continue;
        };
        let body = notice.body.to_string();
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=5 {
            let result = logcluster_common::http_client::request(
                "POST",
                url,
                &[("Content-Type", "application/json")],
                body.as_bytes(),
                Duration::from_secs(10),
            )
            .await;
            let ok = matches!(&result, Ok(r) if (200..300).contains(&r.status));
            if ok {
                metrics
                    .notifications
                    .get_or_create(&vec![("result".into(), "sent".into())])
                    .inc();
                break;
            }
            let reason = match result {
                Ok(r) => format!("status {}", r.status),
                Err(e) => e.to_string(),
            };
            if attempt == 5 {
                warn!(%url, %reason, "alert notification failed after 5 attempts");
                metrics
                    .notifications
                    .get_or_create(&vec![("result".into(), "failed".into())])
                    .inc();
            } else {
                warn!(%url, %reason, attempt, "alert notification failed; retrying");
                metrics
                    .notifications
                    .get_or_create(&vec![("result".into(), "retried".into())])
                    .inc();
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(query: &str, op: &str, for_duration: Option<&str>) -> RawRule {
        RawRule {
            name: "r".into(),
            query: query.into(),
            op: op.into(),
            threshold: 5.0,
            for_duration: for_duration.map(str::to_string),
            window: None,
            tenant: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn rules_compile_metric_expressions_and_log_queries() {
        let rule = compile_rule(raw(
            "p95(duration_ms) by (service) over 1m",
            ">",
            Some("30s"),
        ))
        .expect("valid");
        assert_eq!(rule.expr.func, Func::Quantile(0.95));
        assert_eq!(rule.for_duration, Duration::from_secs(30));
        let rule =
            compile_rule(raw("level:ERROR AND service:checkout", ">=", None)).expect("valid");
        assert_eq!(
            rule.expr.to_string(),
            "count() over 5m where level:ERROR AND service:checkout"
        );
        assert!(
            compile_rule(raw("level:ERROR", "=>", None))
                .expect_err("op")
                .starts_with("op:")
        );
        assert!(
            compile_rule(raw("(level:ERROR", ">", None))
                .expect_err("query")
                .starts_with("query:")
        );
        assert!(
            compile_rule(raw("level:ERROR", ">", Some("soon")))
                .expect_err("for")
                .starts_with("for:")
        );
    }

    #[test]
    fn groups_without_values_are_forgotten_after_an_hour_unless_active() {
        let group = |state| Group {
            labels: BTreeMap::new(),
            state,
            value: None,
            active_since: None,
            resolved_at: None,
            idle_since: None,
        };
        let mut groups: BTreeMap<String, Group> = [
            ("seen".to_string(), group(State::Inactive)),
            ("gone".to_string(), group(State::Resolved)),
            ("firing".to_string(), group(State::Firing)),
        ]
        .into();
        let seen: std::collections::HashSet<String> = ["seen".to_string()].into();
        let hour = IDLE_GROUP_NANOS;
        forget_idle_groups(&mut groups, &seen, 0);
        forget_idle_groups(&mut groups, &seen, hour - 1);
        assert_eq!(groups.len(), 3, "not yet an hour");
        forget_idle_groups(&mut groups, &seen, hour);
        assert_eq!(
            groups.keys().collect::<Vec<_>>(),
            ["firing", "seen"],
            "the idle one is forgotten; a firing one and a seen one stay"
        );
        // A group that comes back starts its idle time anew.
        groups.insert("back".into(), group(State::Inactive));
        forget_idle_groups(&mut groups, &std::collections::HashSet::new(), 2 * hour);
        let with_back: std::collections::HashSet<String> = ["back".to_string()].into();
        forget_idle_groups(&mut groups, &with_back, 3 * hour);
        assert!(groups["back"].idle_since.is_none());
    }

    #[test]
    fn ops_compare() {
        assert!(Op::Gt.holds(6.0, 5.0) && !Op::Gt.holds(5.0, 5.0));
        assert!(Op::Ge.holds(5.0, 5.0) && Op::Le.holds(5.0, 5.0) && Op::Lt.holds(4.0, 5.0));
        assert!(Op::Eq.holds(5.0, 5.0) && Op::Ne.holds(4.0, 5.0));
    }

    #[test]
    fn rendezvous_spreads_rules_and_is_stable() {
        let nodes = ["q-0", "q-1", "q-2"];
        let mut owners = BTreeMap::new();
        for i in 0..300 {
            let rule = format!("rule-{i}");
            let owner = nodes.iter().max_by_key(|n| rendezvous(&rule, n)).copied();
            *owners.entry(owner).or_insert(0) += 1;
        }
        assert_eq!(owners.len(), 3, "{owners:?}");
        assert!(owners.values().all(|c| *c > 60), "{owners:?}");
    }
}
