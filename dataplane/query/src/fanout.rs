//! Reading through the cluster: ask every storage member, merge, de-duplicate, repair.
//!
//! A query node sends the query to every member that may hold data (owners and members
//! that are leaving), merges the newest-first pages by (timestamp, id) and de-duplicates by
//! entry id. The answer is marked partial when, for some service of the tenant, fewer than
//! `readQuorum` of its owners answered, or when so many members failed that a stream could
//! be missing entirely. Read repair: an entry of the merged page that an answering owner
//! should have returned but did not is written back to it (repair writes skip ids the
//! replica already has).
//!
//! Must not: return an entry twice, or hide that a part of the data was not read.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use logcluster_cluster::messages::{EntriesReply, Kind};
use logcluster_cluster::replication::Cluster;
use logcluster_proto::LogEntry;
use logcluster_storage::Cursor;
use prost::Message;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::api::{LevelCounts, Page, QueryError, QueryRequest, Stats};

/// Prefix of a storage member's error for a request it could not understand; the query
/// node passes such errors to its caller as 400 instead of counting a failed replica.
pub const BAD_REQUEST: &str = "bad request: ";
/// Prefix of a storage member's error for a query over its budget (passed on as 422).
pub const OVER_BUDGET: &str = "over budget: ";

/// The error text a storage member sends for a failed query.
pub fn member_error(error: &QueryError) -> String {
    match error {
        QueryError::BadRequest(message) => format!("{BAD_REQUEST}{message}"),
        QueryError::Budget(message) => format!("{OVER_BUDGET}{message}"),
        other => other.to_string(),
    }
}

/// A member's error that is the caller's to see (bad request, over budget) rather than a
/// failed replica.
fn caller_error(error: &str) -> Option<QueryError> {
    if let Some(at) = error.find(BAD_REQUEST) {
        return Some(QueryError::BadRequest(
            error[at + BAD_REQUEST.len()..].to_string(),
        ));
    }
    error
        .find(OVER_BUDGET)
        .map(|at| QueryError::Budget(error[at + OVER_BUDGET.len()..].to_string()))
}

/// An aggregation across the cluster: each member folds what it holds, and per service the
/// most complete replica's cells are kept ([`crate::agg::merge_answers`]).
pub async fn aggregate(
    cluster: &Arc<Cluster>,
    spec: &crate::agg::AggSpec,
    timeout: Duration,
) -> Result<(crate::agg::Groups, Stats), QueryError> {
    let started = Instant::now();
    let payload = serde_json::to_vec(spec).map_err(|e| QueryError::Internal(e.to_string()))?;
    let (members, results) = ask_all(cluster, Kind::Aggregate, payload, timeout).await;
    let mut answers = Vec::new();
    let mut failures = Vec::new();
    for (member, result) in results {
        let parsed = result.and_then(|bytes| {
            serde_json::from_slice::<crate::agg::Answer>(&bytes)
                .map_err(|e| format!("undecodable answer: {e}"))
        });
        match parsed {
            Ok(answer) => answers.push(answer),
            Err(error) => {
                if let Some(error) = caller_error(&error) {
                    return Err(error);
                }
                failures.push(format!("{member}: {error}"));
            }
        }
    }
    let mut stats = Stats {
        replicas_asked: Some(members.len() as u64),
        replicas_answered: Some(answers.len() as u64),
        ..Stats::default()
    };
    for answer in &answers {
        stats.objects_read += answer.stats.objects_read;
        stats.objects_skipped += answer.stats.objects_skipped;
        stats.objects_from_index += answer.stats.objects_from_index;
        stats.events_scanned += answer.stats.events_scanned;
        if answer.stats.partial {
            stats.partial = true;
            stats.partial_reason = answer.stats.partial_reason.clone();
        }
    }
    let rf = cluster.view().ring.replicas_per_partition().max(1);
    let missing = members.len().saturating_sub(answers.len());
    if missing > 0 && missing >= rf.min(members.len()).max(1) {
        stats.partial = true;
        stats.partial_reason = Some(format!(
            "no replica answered for some services; storage members did not answer: {}",
            failures.join("; ")
        ));
    }
    stats.duration_ms = started.elapsed().as_millis() as u64;
    Ok((crate::agg::merge_answers(&answers), stats))
}

/// What a storage member adds to its entries.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct PageMeta {
    pub stats: Stats,
    pub services: Vec<String>,
    pub full: bool,
}

/// Encodes a member's page for the query node.
pub fn encode_page(page: Page, limit: usize) -> Vec<u8> {
    let meta = PageMeta {
        full: page.items.len() >= limit,
        stats: page.stats,
        services: page.services,
    };
    EntriesReply {
        entries: page.items,
        meta_json: serde_json::to_string(&meta).unwrap_or_default(),
    }
    .encode_to_vec()
}

struct Answer {
    member: String,
    items: Vec<LogEntry>,
    meta: PageMeta,
}

async fn ask_all(
    cluster: &Arc<Cluster>,
    kind: Kind,
    payload: Vec<u8>,
    timeout: Duration,
) -> (Vec<String>, Vec<(String, Result<Vec<u8>, String>)>) {
    let view = cluster.view();
    let members: Vec<String> = view.members.members.iter().map(|m| m.id.clone()).collect();
    let payload = Arc::new(payload);
    let mut calls = JoinSet::new();
    for member in &members {
        let cluster = cluster.clone();
        let member = member.clone();
        let payload = payload.clone();
        calls.spawn(async move {
            let result = cluster
                .call(&member, kind, &payload, timeout)
                .await
                .map_err(|e| e.to_string());
            (member, result)
        });
    }
    // Once all but (RF - R) members have answered, every partition has R answering
    // replicas whatever the stragglers hold: give those at most one call timeout more
    // instead of the whole query budget, so one hung replica does not stall every query.
    let view = cluster.view();
    let spare = view
        .ring
        .replicas_per_partition()
        .saturating_sub(cluster.config().read_quorum);
    let enough = members.len().saturating_sub(spare);
    let mut answers = Vec::new();
    let mut straggler_deadline: Option<tokio::time::Instant> = None;
    loop {
        let next = match straggler_deadline {
            None => calls.join_next().await,
            Some(deadline) => match tokio::time::timeout_at(deadline, calls.join_next()).await {
                Ok(next) => next,
                Err(_) => {
                    calls.abort_all();
                    break;
                }
            },
        };
        let Some(joined) = next else {
            break;
        };
        if let Ok(answer) = joined {
            answers.push(answer);
        }
        // Only answers count toward "enough": a failed call is no replica.
        let answered = answers.iter().filter(|(_, r)| r.is_ok()).count();
        if straggler_deadline.is_none() && answered >= enough && answers.len() < members.len() {
            straggler_deadline = Some(tokio::time::Instant::now() + cluster.config().call_timeout);
        }
    }
    (members, answers)
}

/// Folds one member's answer to a counts request into `counts` (replicas hold the same
/// entries: the larger count of each cell) and `stats`.
fn merge_counts_answer(counts: &mut LevelCounts, stats: &mut Stats, member: &str, value: &Value) {
    if let Ok(member_stats) = serde_json::from_value::<Stats>(value["stats"].clone()) {
        stats.objects_read += member_stats.objects_read;
        stats.events_scanned += member_stats.events_scanned;
        stats.objects_skipped += member_stats.objects_skipped;
        stats.objects_from_index += member_stats.objects_from_index;
        // A member that left something out (a corrupt block) says so, as in a search.
        if member_stats.partial {
            stats.partial = true;
            stats.partial_reason = member_stats
                .partial_reason
                .map(|reason| format!("{member}: {reason}"));
        }
    }
    for row in value["counts"].as_array().into_iter().flatten() {
        let (Some(service), Some(start)) = (row[0].as_str(), row[1].as_i64()) else {
            continue;
        };
        let slot = counts.entry((service.to_string(), start)).or_default();
        for (i, count) in row[2].as_array().into_iter().flatten().enumerate().take(7) {
            slot[i] = slot[i].max(count.as_u64().unwrap_or(0));
        }
    }
}

/// Runs a page query across the cluster.
pub async fn query(
    cluster: &Arc<Cluster>,
    request: QueryRequest,
    limit: usize,
    timeout: Duration,
) -> Result<Page, QueryError> {
    let started = Instant::now();
    let tenant = request.tenant_id.clone().unwrap_or_default();
    let payload = serde_json::to_vec(&request).map_err(|e| QueryError::Internal(e.to_string()))?;
    let (members, results) = ask_all(cluster, Kind::Query, payload, timeout).await;
    let mut answers = Vec::new();
    let mut failures = Vec::new();
    for (member, result) in results {
        let decoded = result.and_then(|bytes| {
            let reply = EntriesReply::decode(bytes.as_slice())
                .map_err(|e| format!("undecodable answer: {e}"))?;
            let meta: PageMeta = serde_json::from_str(&reply.meta_json)
                .map_err(|e| format!("undecodable answer metadata: {e}"))?;
            Ok((reply.entries, meta))
        });
        match decoded {
            Ok((items, meta)) => answers.push(Answer {
                member,
                items,
                meta,
            }),
            Err(error) => {
                // Every member compiles the same request: a bad request is the caller's.
                if let Some(error) = caller_error(&error) {
                    return Err(error);
                }
                failures.push((member, error));
            }
        }
    }
    // Merge newest first by (timestamp, id), de-duplicated by id.
    let mut merged: Vec<&LogEntry> = answers.iter().flat_map(|a| a.items.iter()).collect();
    merged.sort_by(|a, b| (b.timestamp, &b.id).cmp(&(a.timestamp, &a.id)));
    // By id alone: a batch retried after a refused write may carry other timestamps on the
    // replicas that stored the first attempt (entries without their own timestamp).
    let mut seen: HashSet<&str> = HashSet::new();
    merged.retain(|e| seen.insert(e.id.as_str()));
    let any_full = answers.iter().any(|a| a.meta.full);
    // A member whose page was full may hold more entries older than its last one (a member
    // can also cut pages shorter than asked, at its own `query.maxLimit`): the page ends at
    // the newest of those last entries, and the next page goes on from there.
    let horizon = answers
        .iter()
        .filter(|a| a.meta.full)
        .filter_map(|a| a.items.last())
        .map(|e| (e.timestamp, e.id.as_str()))
        .max();
    if let Some(horizon) = horizon {
        merged.retain(|e| (e.timestamp, e.id.as_str()) >= horizon);
    }
    merged.truncate(limit);
    let items: Vec<LogEntry> = merged.into_iter().cloned().collect();
    let next_cursor = if items.len() >= limit || (any_full && !items.is_empty()) {
        items.last().map(|e| Cursor {
            timestamp: e.timestamp,
            id: e.id.clone(),
        })
    } else {
        None
    };

    let view = cluster.view();
    let read_quorum = cluster
        .config()
        .read_quorum
        .min(view.ring.replicas_per_partition())
        .max(1);
    let answered: BTreeSet<&str> = answers.iter().map(|a| a.member.as_str()).collect();
    let services: BTreeSet<&str> = answers
        .iter()
        .flat_map(|a| a.meta.services.iter().map(String::as_str))
        .collect();
    let mut short: Vec<String> = Vec::new();
    for service in &services {
        let owners = view.ring.owners_of(&tenant, service);
        let got = owners.iter().filter(|o| answered.contains(*o)).count();
        if got < read_quorum {
            short.push(format!(
                "{service} ({got} of {read_quorum} replicas answered)"
            ));
        }
    }
    // Members that failed, and stragglers cut off at the deadline (in neither list).
    let unreachable = members.len() - answers.len();
    let mut stats = Stats {
        replicas_asked: Some(members.len() as u64),
        replicas_answered: Some(answers.len() as u64),
        ..Stats::default()
    };
    for answer in &answers {
        stats.objects_read += answer.meta.stats.objects_read;
        stats.objects_skipped += answer.meta.stats.objects_skipped;
        stats.events_scanned += answer.meta.stats.events_scanned;
        if answer.meta.stats.partial {
            stats.partial = true;
            stats.partial_reason = answer.meta.stats.partial_reason.clone();
        }
    }
    if !short.is_empty() {
        stats.partial = true;
        stats.partial_reason = Some(format!("read quorum not met for: {}", short.join(", ")));
    } else if unreachable > 0 && unreachable >= view.ring.replicas_per_partition().max(1) {
        stats.partial = true;
        stats.partial_reason = Some(format!(
            "{unreachable} storage members did not answer; some streams may be missing: {}",
            failures
                .iter()
                .map(|(m, e)| format!("{m}: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    stats.duration_ms = started.elapsed().as_millis() as u64;

    read_repair(cluster, &tenant, &items, &answers, limit);
    Ok(Page {
        items,
        next_cursor,
        stats,
        services: services.into_iter().map(str::to_string).collect(),
    })
}

/// Writes entries of the merged page back to answering owners that should have returned
/// them but did not.
fn read_repair(
    cluster: &Arc<Cluster>,
    tenant: &str,
    items: &[LogEntry],
    answers: &[Answer],
    limit: usize,
) {
    let view = cluster.view();
    // Each member's ids, built once per answer (not once per item).
    let by_member: HashMap<&str, (&Answer, HashSet<&str>)> = answers
        .iter()
        .map(|a| {
            let ids = a.items.iter().map(|e| e.id.as_str()).collect();
            (a.member.as_str(), (a, ids))
        })
        .collect();
    let mut missing: BTreeMap<String, Vec<LogEntry>> = BTreeMap::new();
    let mut owners_by_service: HashMap<&str, Vec<&str>> = HashMap::new();
    for item in items {
        let owners = owners_by_service
            .entry(item.service.as_str())
            .or_insert_with(|| view.ring.owners_of(tenant, &item.service));
        for owner in owners.iter() {
            let Some((answer, ids)) = by_member.get(owner) else {
                continue;
            };
            if ids.contains(item.id.as_str()) {
                continue;
            }
            // The member's page covers everything newer than its last item (or everything
            // when it returned fewer than `limit`).
            let covered = answer.items.len() < limit
                || answer
                    .items
                    .last()
                    .is_some_and(|last| (item.timestamp, &item.id) > (last.timestamp, &last.id));
            if covered {
                missing
                    .entry(owner.to_string())
                    .or_default()
                    .push(item.clone());
            }
        }
    }
    for (member, entries) in missing {
        cluster.repair(member, entries);
    }
}

/// Counts by level per interval across the cluster: per (service, interval, level) the
/// largest count any replica reports (replicas hold copies; a lagging one reports less).
pub async fn level_counts(
    cluster: &Arc<Cluster>,
    params: &HashMap<String, String>,
    timeout: Duration,
) -> Result<(LevelCounts, Stats), QueryError> {
    let started = Instant::now();
    let payload = serde_json::to_vec(params).map_err(|e| QueryError::Internal(e.to_string()))?;
    let (members, results) = ask_all(cluster, Kind::Stats, payload, timeout).await;
    let mut counts: LevelCounts = BTreeMap::new();
    let mut stats = Stats {
        replicas_asked: Some(members.len() as u64),
        ..Stats::default()
    };
    let mut answered = 0u64;
    let mut failures = Vec::new();
    for (member, result) in results {
        let parsed = result.and_then(|bytes| {
            serde_json::from_slice::<Value>(&bytes).map_err(|e| format!("undecodable answer: {e}"))
        });
        let value = match parsed {
            Ok(value) => value,
            Err(error) => {
                if let Some(error) = caller_error(&error) {
                    return Err(error);
                }
                failures.push(format!("{member}: {error}"));
                continue;
            }
        };
        answered += 1;
        merge_counts_answer(&mut counts, &mut stats, &member, &value);
    }
    stats.replicas_answered = Some(answered);
    let rf = cluster.view().ring.replicas_per_partition().max(1);
    let missing = members.len().saturating_sub(answered as usize);
    if missing > 0 && missing >= rf.min(members.len()).max(1) {
        stats.partial = true;
        stats.partial_reason = Some(format!(
            "storage members did not answer: {}",
            failures.join("; ")
        ));
    }
    stats.duration_ms = started.elapsed().as_millis() as u64;
    Ok((counts, stats))
}

/// Encodes a member's counts for the query node.
pub fn encode_counts(counts: &LevelCounts, stats: &Stats) -> Vec<u8> {
    let rows: Vec<Value> = counts
        .iter()
        .map(|((service, start), by_level)| json!([service, start, by_level]))
        .collect();
    serde_json::to_vec(&json!({ "counts": rows, "stats": stats })).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts from replicas merge cell by cell (the larger count), and one replica that left
    /// something out makes the answer partial, naming it.
    #[test]
    fn a_members_partial_counts_make_the_merged_answer_partial() {
        let mut counts = LevelCounts::new();
        let mut stats = Stats::default();
        let whole = serde_json::json!({
            "stats": {"objects_read": 2, "events_scanned": 10, "objects_skipped": 0, "duration_ms": 1, "partial": false},
            "counts": [["api", 60, [0, 0, 0, 4, 0, 0, 0]]],
        });
        let missing_a_block = serde_json::json!({
            "stats": {"objects_read": 1, "events_scanned": 6, "objects_skipped": 0, "duration_ms": 1,
                      "partial": true, "partial_reason": "1 corrupt block skipped"},
            "counts": [["api", 60, [0, 0, 0, 3, 0, 0, 0]]],
        });
        merge_counts_answer(&mut counts, &mut stats, "storage-0", &whole);
        assert!(!stats.partial);
        merge_counts_answer(&mut counts, &mut stats, "storage-1", &missing_a_block);
        assert_eq!(counts[&("api".to_string(), 60)][3], 4);
        assert_eq!(stats.events_scanned, 16);
        assert!(stats.partial);
        assert_eq!(
            stats.partial_reason.as_deref(),
            Some("storage-1: 1 corrupt block skipped")
        );
    }
}
