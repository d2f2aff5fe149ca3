//! The cluster under faults, with real processes on loopback: three storage members
//! (RF 3, W 2, R 2), an ingestor and a query node, mutual TLS between them.
//! Guarantee checked throughout: every acknowledged entry is readable exactly once, and a
//! client is never told "accepted" when the write quorum was not reached.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::cluster::ClusterSandbox;
use common::{FrameClient, eventually, metric_sum};
use logcluster_proto::frame::{AckStatus, Format};
use serde_json::Value;

const PER_BATCH: u64 = 20;

fn payload(batch: u64) -> Vec<u8> {
    (0..PER_BATCH)
        .map(|i| {
            format!(
                "{{\"service\":\"svc-{}\",\"message\":\"batch {batch} entry {i}\",\"level\":\"INFO\"}}",
                (batch + i) % 5
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes()
}

/// Sends `count` batches starting at `first`, 4 in flight; returns the acked batch ids and
/// any non-accepted answers.
async fn send_batches(
    client: &mut FrameClient,
    tenant: &str,
    first: u64,
    count: u64,
) -> anyhow::Result<(Vec<u64>, Vec<String>)> {
    let mut acked = Vec::new();
    let mut other = Vec::new();
    let mut sent = 0;
    let mut answered = 0;
    while answered < count {
        while sent < count && sent - answered < 4 {
            client
                .send(Format::Json, first + sent, tenant, &payload(first + sent))
                .await?;
            sent += 1;
        }
        let ack = client
            .read_ack()
            .await?
            .ok_or_else(|| anyhow::anyhow!("ingestor closed the connection"))?;
        answered += 1;
        match ack.status {
            AckStatus::Accepted => acked.push(ack.batch_id),
            status => other.push(format!("batch {}: {status:?} {}", ack.batch_id, ack.error)),
        }
    }
    Ok((acked, other))
}

fn messages(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| i["message"].as_str().map(str::to_string))
        .collect()
}

/// Every entry of the acked batches is present exactly once.
fn assert_exactly_once(items: &[Value], acked: &HashSet<u64>, logs: &dyn Fn() -> String) {
    let found = messages(items);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for m in &found {
        *counts.entry(m.as_str()).or_default() += 1;
    }
    let dupes: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(dupes.is_empty(), "entries returned twice: {dupes:?}");
    for batch in acked {
        for i in 0..PER_BATCH {
            let want = format!("batch {batch} entry {i}");
            assert!(
                counts.contains_key(want.as_str()),
                "acknowledged {want} is missing{}",
                logs()
            );
        }
    }
}

async fn converged(sandbox: &ClusterSandbox, tenant: &str, expected: usize) -> anyhow::Result<()> {
    sandbox.holding(&sandbox.storage, tenant, expected).await
}

#[tokio::test]
async fn kill_9_of_a_storage_member_keeps_acks_flowing_and_it_converges_after_restart()
-> anyhow::Result<()> {
    let mut sandbox = ClusterSandbox::start(3).await?;
    let mut client = sandbox.connect().await?;
    let mut acked: HashSet<u64> = HashSet::new();
    let (ok, other) = send_batches(&mut client, "k9", 1, 30).await?;
    assert!(other.is_empty(), "{other:?}");
    acked.extend(ok);

    sandbox.storage[1].kill_9()?;
    let (ok, other) = send_batches(&mut client, "k9", 31, 60).await?;
    hints_were_written(&sandbox, "the dead member's copies went to hints").await?;
    assert!(
        other.is_empty(),
        "with one of three members down W=2 still holds: {other:?}{}",
        sandbox.logs()
    );
    acked.extend(ok);
    // Reads while the member is down: complete (two of three replicas answer).
    let items = sandbox.query_all("k9").await?;
    assert_exactly_once(&items, &acked, &|| sandbox.logs());

    sandbox.storage[1].spawn().await?;
    let (ok, other) = send_batches(&mut client, "k9", 91, 10).await?;
    assert!(other.is_empty(), "{other:?}");
    acked.extend(ok);
    let expected = acked.len() * PER_BATCH as usize;
    // Hints deliver what storage-1 missed; it ends up with its full share (RF 3 of 3: all).
    converged(&sandbox, "k9", expected).await?;
    let items = sandbox.query_all("k9").await?;
    assert_eq!(items.len(), expected);
    assert_exactly_once(&items, &acked, &|| sandbox.logs());
    // Hints were handed off.
    sandbox
        .counted(
            &sandbox.storage,
            "logcluster_cluster_hints_delivered_total",
            1.0,
        )
        .await?;
    Ok(())
}

/// Waits until the ingestor has stored hints. A copy for an unavailable owner becomes a
/// hint when its call fails: at once for a dead member, after the call timeout for a hung or
/// cut-off one, which can be after the batch was acknowledged by the other replicas.
async fn hints_were_written(sandbox: &ClusterSandbox, what: &str) -> anyhow::Result<()> {
    sandbox
        .counted(
            [&sandbox.ingestor],
            "logcluster_cluster_hints_written_total",
            1.0,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

#[tokio::test]
async fn a_hung_member_does_not_stop_acks_and_catches_up_from_hints() -> anyhow::Result<()> {
    let sandbox = ClusterSandbox::start(3).await?;
    let mut client = sandbox.connect().await?;
    let mut acked: HashSet<u64> = HashSet::new();
    sandbox.storage[2].sigstop()?;
    let (ok, other) = send_batches(&mut client, "stop", 1, 40).await?;
    assert!(
        other.is_empty(),
        "a hung member must not fail writes: {other:?}"
    );
    acked.extend(ok);
    let items = sandbox.query_all("stop").await?;
    assert_exactly_once(&items, &acked, &|| sandbox.logs());
    hints_were_written(&sandbox, "the hung member's copies went to hints").await?;
    sandbox.storage[2].sigcont()?;
    converged(&sandbox, "stop", acked.len() * PER_BATCH as usize).await?;
    Ok(())
}

#[tokio::test]
async fn without_a_write_quorum_the_client_is_told_to_retry_never_accepted() -> anyhow::Result<()> {
    let mut sandbox = ClusterSandbox::start(3).await?;
    let mut client = sandbox.connect().await?;
    let (ok, _) = send_batches(&mut client, "wq", 1, 5).await?;
    assert_eq!(ok.len(), 5);
    sandbox.storage[0].kill_9()?;
    sandbox.storage[1].kill_9()?;
    let (ok, other) = send_batches(&mut client, "wq", 6, 5).await?;
    assert!(ok.is_empty(), "accepted with one of three members: {ok:?}");
    assert!(
        other.iter().all(|o| o.contains("RetryLater")),
        "every batch is refused with retry-later: {other:?}"
    );
    let metrics = sandbox.ingestor.metrics().await?;
    assert!(metric_sum(&metrics, "logcluster_cluster_quorum_failures_total", &[]) >= 5.0);
    // The same batch ids are accepted once the members are back.
    sandbox.storage[0].spawn().await?;
    sandbox.storage[1].spawn().await?;
    // A client retries with the same ids until the quorum is back.
    let deadline =
        std::time::Instant::now() + Duration::from_secs(30).mul_f64(logcluster_testkit::patience());
    let retried = loop {
        let (ok, other) = send_batches(&mut client, "wq", 6, 5).await?;
        if ok.len() == 5 {
            break ok;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "writes still refused after the members came back: {other:?}{}",
            sandbox.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(retried.len(), 5);
    let items = sandbox.query_all("wq").await?;
    assert_eq!(items.len(), 10 * PER_BATCH as usize);
    Ok(())
}

#[tokio::test]
async fn records_that_grow_past_a_request_are_refused_and_the_rest_replicated() -> anyhow::Result<()>
{
    let sandbox = ClusterSandbox::start(3).await?;
    let mut client = sandbox.connect().await?;
    let payload = common::expanding_ndjson();
    for _ in 0..2 {
        // The wide records' part would be over a replica request and a WAL record: refused
        // for good (not "retry later"), and the small records stored, once.
        let ack = client.roundtrip(Format::Json, 1, "big", &payload).await?;
        assert_eq!(
            (ack.status, ack.accepted, ack.rejected),
            (AckStatus::Partial, 2, 300),
            "{ack:?}{}",
            sandbox.logs()
        );
        assert!(
            ack.error.contains("limit of a write-ahead log record"),
            "{}",
            ack.error
        );
    }
    let items = sandbox.query_all("big").await?;
    let mut stored = messages(&items);
    stored.sort_unstable();
    assert_eq!(stored, ["first", "last"]);
    let metrics = sandbox.ingestor.metrics().await?;
    assert_eq!(
        metric_sum(
            &metrics,
            "logcluster_ingest_rejected_total",
            &["part_too_large"]
        ),
        600.0
    );
    assert_eq!(
        metric_sum(&metrics, "logcluster_cluster_quorum_failures_total", &[]),
        0.0
    );
    Ok(())
}

#[tokio::test]
async fn killing_every_process_mid_stream_loses_nothing_acknowledged() -> anyhow::Result<()> {
    let mut sandbox = ClusterSandbox::start(3).await?;
    let mut client = sandbox.connect().await?;
    let mut acked: HashSet<u64> = HashSet::new();
    // Pipeline a stream, and kill everything while batches are in flight.
    for batch in 1..=40u64 {
        client
            .send(Format::Json, batch, "all", &payload(batch))
            .await?;
    }
    for _ in 0..20 {
        if let Some(ack) = client.read_ack().await?
            && ack.status == AckStatus::Accepted
        {
            acked.insert(ack.batch_id);
        }
    }
    sandbox.ingestor.kill_9()?;
    sandbox.query.kill_9()?;
    for node in sandbox.storage.iter_mut() {
        node.kill_9()?;
    }
    while let Ok(Some(ack)) = client.read_ack().await {
        if ack.status == AckStatus::Accepted {
            acked.insert(ack.batch_id);
        }
    }
    for node in sandbox.storage.iter_mut() {
        node.spawn().await?;
    }
    sandbox.query.spawn().await?;
    sandbox.ingestor.spawn().await?;
    let items = sandbox.query_all("all").await?;
    assert_exactly_once(&items, &acked, &|| sandbox.logs());
    Ok(())
}

#[tokio::test]
async fn a_replica_that_lost_a_stream_is_repaired_by_quorum_reads() -> anyhow::Result<()> {
    let mut sandbox = ClusterSandbox::start(3).await?;
    let mut client = sandbox.connect().await?;
    let (ok, other) = send_batches(&mut client, "rr", 1, 10).await?;
    assert!(other.is_empty(), "{other:?}");
    let acked: HashSet<u64> = ok.into_iter().collect();
    let expected = acked.len() * PER_BATCH as usize;
    converged(&sandbox, "rr", expected).await?;
    // storage-2 loses everything of tenant rr (a wiped disk), then comes back.
    sandbox.storage[2].terminate().await?;
    let tenant_dir = sandbox.storage[2].raw.data_dir.join("streams").join("rr");
    assert!(tenant_dir.exists(), "{}", tenant_dir.display());
    std::fs::remove_dir_all(&tenant_dir)?;
    sandbox.storage[2].spawn().await?;
    assert!(sandbox.storage[2].local_entries("rr").await?.is_empty());
    // A quorum read still returns everything, and writes it back to storage-2.
    let items = sandbox.query_all("rr").await?;
    assert_exactly_once(&items, &acked, &|| sandbox.logs());
    converged(&sandbox, "rr", expected).await?;
    sandbox
        .counted(
            [&sandbox.query],
            "logcluster_cluster_read_repairs_total",
            expected as f64,
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn reads_say_partial_when_fewer_than_the_read_quorum_answer() -> anyhow::Result<()> {
    let mut sandbox = ClusterSandbox::start(3).await?;
    let mut client = sandbox.connect().await?;
    let (ok, _) = send_batches(&mut client, "part", 1, 5).await?;
    assert_eq!(ok.len(), 5);
    // An ack needs two of the three copies: wait for the third before two members die.
    converged(&sandbox, "part", 5 * PER_BATCH as usize).await?;
    let page = sandbox
        .query(serde_json::json!({"tenant_id": "part", "limit": 1000}))
        .await?;
    assert_eq!(page["stats"]["partial"], false, "{page}");
    assert_eq!(page["stats"]["replicas_answered"], 3);
    sandbox.storage[0].kill_9()?;
    sandbox.storage[1].kill_9()?;
    let page = sandbox
        .query(serde_json::json!({"tenant_id": "part", "limit": 1000}))
        .await?;
    assert_eq!(page["stats"]["partial"], true, "{page}");
    assert!(
        page["stats"]["partial_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("read quorum"),
        "{page}"
    );
    // What the remaining replica has is still returned.
    assert_eq!(
        page["items"].as_array().map(Vec::len),
        Some(5 * PER_BATCH as usize)
    );
    Ok(())
}

/// Storage members that cut pages shorter than the query node asks (their own
/// `query.maxLimit`) still let a paged read return every entry exactly once: a merged page
/// ends where the members with more to give stopped.
#[tokio::test]
async fn pages_stay_whole_when_members_answer_fewer_than_asked() -> anyhow::Result<()> {
    fn small_member_pages(raw: &mut logcluster_config::RawNodeConfig) {
        if raw.roles == [logcluster_config::Role::Storage] {
            raw.query.max_limit = 7;
        }
    }
    // Five members for three replicas: each holds a different part of the data.
    let sandbox = ClusterSandbox::start_with(5, small_member_pages).await?;
    let mut client = sandbox.connect().await?;
    let (ok, other) = send_batches(&mut client, "pages", 1, 6).await?;
    assert!(other.is_empty(), "{other:?}");
    let acked: HashSet<u64> = ok.into_iter().collect();
    // One query-node page of up to 1000 against members answering 7 at a time (every
    // acknowledged entry is on two members at least, and all are asked).
    let items = sandbox.query_all("pages").await?;
    assert_exactly_once(&items, &acked, &|| sandbox.logs());
    Ok(())
}

fn with_anti_entropy(raw: &mut logcluster_config::RawNodeConfig) {
    if let Some(cluster) = raw.cluster.as_mut() {
        cluster.anti_entropy_interval = "1s".into();
    }
}

fn small_segments_and_anti_entropy(raw: &mut logcluster_config::RawNodeConfig) {
    with_anti_entropy(raw);
    raw.storage.segment_max_bytes = 8 * 1024;
    raw.storage.block_target_bytes = 1024;
}

#[tokio::test]
async fn anti_entropy_restores_a_wiped_replica_without_any_read() -> anyhow::Result<()> {
    let mut sandbox = ClusterSandbox::start_with(3, with_anti_entropy).await?;
    let mut client = sandbox.connect().await?;
    let (ok, other) = send_batches(&mut client, "ae", 1, 20).await?;
    assert!(other.is_empty(), "{other:?}");
    let expected = ok.len() * PER_BATCH as usize;
    converged(&sandbox, "ae", expected).await?;
    sandbox.storage[0].terminate().await?;
    std::fs::remove_dir_all(sandbox.storage[0].raw.data_dir.join("streams").join("ae"))?;
    sandbox.storage[0].spawn().await?;
    // No query goes through the query node: only anti-entropy can bring the entries back.
    converged(&sandbox, "ae", expected).await?;
    sandbox
        .counted(
            &sandbox.storage,
            "logcluster_cluster_anti_entropy_entries_repaired_total",
            expected as f64,
        )
        .await?;
    let read_repairs = metric_sum(
        &sandbox.query.metrics().await?,
        "logcluster_cluster_read_repairs_total",
        &[],
    );
    assert_eq!(read_repairs, 0.0);
    Ok(())
}

#[tokio::test]
async fn a_corrupt_segment_is_quarantined_and_restored_from_the_replicas() -> anyhow::Result<()> {
    let mut sandbox = ClusterSandbox::start_with(3, small_segments_and_anti_entropy).await?;
    let mut client = sandbox.connect().await?;
    let (ok, other) = send_batches(&mut client, "cor", 1, 60).await?;
    assert!(other.is_empty(), "{other:?}");
    let acked: HashSet<u64> = ok.into_iter().collect();
    let expected = acked.len() * PER_BATCH as usize;
    converged(&sandbox, "cor", expected).await?;
    // Flip bytes inside the first block of a sealed segment of storage-1.
    sandbox.storage[1].terminate().await?;
    let tenant_dir = sandbox.storage[1].raw.data_dir.join("streams").join("cor");
    let mut sealed = Vec::new();
    for service in std::fs::read_dir(&tenant_dir)? {
        for file in std::fs::read_dir(service?.path())? {
            let path = file?.path();
            if path.extension().is_some_and(|e| e == "seg") {
                sealed.push(path);
            }
        }
    }
    sealed.sort();
    let victim = sealed
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no sealed segment in {}", tenant_dir.display()))?;
    let mut bytes = std::fs::read(&victim)?;
    for b in &mut bytes[12..40] {
        *b ^= 0x5a;
    }
    std::fs::write(&victim, &bytes)?;
    sandbox.storage[1].spawn().await?;
    // Reading the replica detects the corrupt block and quarantines the segment; anti-entropy
    // restores its entries from the other replicas.
    converged(&sandbox, "cor", expected).await?;
    let metrics = sandbox.storage[1].metrics().await?;
    assert!(metric_sum(&metrics, "logcluster_storage_corrupt_segments_total", &[]) >= 1.0);
    assert!(
        victim.with_extension("corrupt").exists(),
        "quarantined copy kept for inspection"
    );
    let items = sandbox.query_all("cor").await?;
    assert_exactly_once(&items, &acked, &|| sandbox.logs());
    let page = sandbox
        .query(serde_json::json!({"tenant_id": "cor", "limit": 10}))
        .await?;
    assert_eq!(page["stats"]["partial"], false, "{page}");
    Ok(())
}

/// Acked batch ids, answers that were not "accepted", and the next unused batch id.
type SenderOutcome = (Vec<u64>, Vec<String>, u64);

/// A sender that keeps writing until told to stop; returns the acked batch ids and anything
/// that was not accepted.
fn continuous_sender(
    mut client: FrameClient,
    tenant: &'static str,
    first: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<anyhow::Result<SenderOutcome>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut other = Vec::new();
        let mut next = first;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let (ok, not) = send_batches(&mut client, tenant, next, 8).await?;
            acked.extend(ok);
            other.extend(not);
            next += 8;
        }
        Ok((acked, other, next))
    })
}

async fn settle(
    sandbox: &ClusterSandbox,
    names: &[&str],
    tenant: &str,
    acked: &HashSet<u64>,
) -> anyhow::Result<()> {
    // Every entry sits on exactly its RF owners of the final ring, and nowhere else.
    let ring = logcluster_cluster::Ring::new(names, 3);
    let per_service = |items: &[Value]| -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for item in items {
            *counts
                .entry(item["service"].as_str().unwrap_or_default().to_string())
                .or_insert(0) += 1;
        }
        counts
    };
    let queried = std::time::Instant::now();
    let all = sandbox.query_all(tenant).await?;
    eprintln!("query_all took {:?}", queried.elapsed());
    assert_exactly_once(&all, acked, &|| sandbox.logs());
    let totals = per_service(&all);
    let deadline =
        std::time::Instant::now() + Duration::from_secs(90).mul_f64(logcluster_testkit::patience());
    for node in sandbox
        .storage
        .iter()
        .filter(|n| names.contains(&n.name.as_str()))
    {
        loop {
            let local = node.local_entries(tenant).await?;
            let held = per_service(&local);
            let wrong: Vec<String> = totals
                .iter()
                .filter_map(|(service, total)| {
                    let owner = ring
                        .owners_of(tenant, service)
                        .contains(&node.name.as_str());
                    let have = held.get(service).copied().unwrap_or(0);
                    let want = if owner { *total } else { 0 };
                    (have != want).then(|| format!("{service}: has {have}, should have {want}"))
                })
                .collect();
            if wrong.is_empty() {
                break;
            }
            if std::time::Instant::now() >= deadline {
                let ids: Vec<&str> = local.iter().filter_map(|i| i["id"].as_str()).collect();
                let distinct: HashSet<&str> = ids.iter().copied().collect();
                let known: HashSet<&str> = all.iter().filter_map(|i| i["id"].as_str()).collect();
                let mut dup_example = Vec::new();
                let mut seen = HashSet::new();
                for item in &local {
                    let id = item["id"].as_str().unwrap_or_default();
                    if !seen.insert(id) {
                        dup_example.push(
                            local
                                .iter()
                                .filter(|i| i["id"] == item["id"])
                                .cloned()
                                .collect::<Vec<_>>(),
                        );
                        if dup_example.len() >= 2 {
                            break;
                        }
                    }
                }
                anyhow::bail!(
                    "{} does not hold exactly the streams it owns: {wrong:?}; {} ids, {} distinct, {} unknown to the query node; duplicates like {dup_example:?}{}",
                    node.name,
                    ids.len(),
                    distinct.len(),
                    distinct.difference(&known).count(),
                    sandbox.logs()
                );
            }
            if std::env::var("SCALE_DEBUG").is_ok() {
                eprintln!("waiting for {}: {wrong:?}", node.name);
            }
            tokio::time::sleep(Duration::from_millis(2000)).await;
        }
    }
    Ok(())
}

/// A member marked leaving takes no new writes, even from a writer whose view is stale (an
/// ingestor still reading an old members file): it refuses them, the writer keeps that copy
/// as a hint on a member that stays, and the hint goes to the partition's owners. Otherwise
/// a drained member could acknowledge entries just before it is removed, and take them away.
#[tokio::test]
async fn a_leaving_member_takes_no_writes_from_a_writer_with_a_stale_view() -> anyhow::Result<()> {
    let mut sandbox = ClusterSandbox::start(3).await?;
    // The ingestor reads a copy of today's members file: it will not see storage-2 leave.
    let stale = sandbox.members_file.with_file_name("stale-members.yaml");
    std::fs::copy(&sandbox.members_file, &stale)?;
    sandbox.ingestor.terminate().await?;
    if let Some(cluster) = sandbox.ingestor.raw.cluster.as_mut() {
        cluster.members_file = Some(stale);
    }
    sandbox.ingestor.spawn().await?;
    sandbox.publish_members(&["storage-2"])?;
    eventually("storage-2 drained", Duration::from_secs(60), || async {
        let drain = sandbox.storage[2].drain().await.ok()?;
        (drain["drained"] == true).then_some(())
    })
    .await?;

    let mut client = sandbox.connect().await?;
    let (ok, other) = send_batches(&mut client, "stale", 1, 10).await?;
    assert!(other.is_empty(), "{other:?}{}", sandbox.logs());
    // storage-2 refused its copies: it holds none of them and is still drained.
    sandbox
        .counted(
            [&sandbox.storage[2]],
            "logcluster_cluster_appends_refused_leaving_total",
            1.0,
        )
        .await?;
    assert!(sandbox.storage[2].local_entries("stale").await?.is_empty());
    assert_eq!(sandbox.storage[2].drain().await?["drained"], true);
    // Every acknowledged entry is on both members that stay, and no hint is left over.
    let expected = ok.len() * PER_BATCH as usize;
    sandbox
        .holding(&sandbox.storage[..2], "stale", expected)
        .await?;
    // The refused copies became hints, and the members holding them send them on to the
    // owners instead of to storage-2.
    hints_were_written(&sandbox, "the refused copies went to hints").await?;
    eventually(
        "the hints for storage-2 to be redirected",
        Duration::from_secs(60),
        || async {
            let mut pending = 0;
            for node in &sandbox.storage[..2] {
                pending += node.drain().await.ok()?["hints_pending_bytes"].as_u64()?;
            }
            (pending == 0).then_some(())
        },
    )
    .await?;
    let acked: HashSet<u64> = ok.into_iter().collect();
    assert_exactly_once(&sandbox.query_all("stale").await?, &acked, &|| {
        sandbox.logs()
    });
    Ok(())
}

#[tokio::test]
async fn scaling_3_to_5_to_3_under_load_loses_nothing_and_ends_on_exactly_the_owners()
-> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut sandbox = ClusterSandbox::start_with(3, with_anti_entropy).await?;
    let mut acked: HashSet<u64> = HashSet::new();

    // 3 → 5 under load.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = continuous_sender(sandbox.connect().await?, "scale", 1, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    sandbox.add_storage().await?;
    sandbox.add_storage().await?;
    sandbox.publish_members(&[])?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, other, next) = sender.await??;
    assert!(
        other.is_empty(),
        "writes refused while scaling up: {other:?}"
    );
    acked.extend(ok);
    let started = std::time::Instant::now();
    let five = [
        "storage-0",
        "storage-1",
        "storage-2",
        "storage-3",
        "storage-4",
    ];
    settle(&sandbox, &five, "scale", &acked).await?;
    eprintln!("settled on 5 members in {:?}", started.elapsed());

    // 5 → 3 under load: mark two members leaving, wait for their drain, then remove them.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = continuous_sender(sandbox.connect().await?, "scale", next, stop.clone());
    sandbox.publish_members(&["storage-3", "storage-4"])?;
    for node in &sandbox.storage[3..] {
        eventually(
            &format!("{} drained", node.name),
            Duration::from_secs(90),
            || async {
                let drain = node.drain().await.ok()?;
                (drain["drained"] == true).then_some(())
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}{}", sandbox.logs()))?;
    }
    eprintln!("leaving members drained in {:?}", started.elapsed());
    let three = ["storage-0", "storage-1", "storage-2"];
    sandbox.publish_only(&three, &[])?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let waited = std::time::Instant::now();
    let (ok, other, _) = sender.await??;
    eprintln!("sender stopped in {:?}", waited.elapsed());
    assert!(
        other.is_empty(),
        "writes refused while scaling down: {other:?}"
    );
    acked.extend(ok);
    for node in sandbox.storage[3..].iter_mut() {
        let t = std::time::Instant::now();
        node.terminate().await?;
        eprintln!("{} stopped in {:?}", node.name, t.elapsed());
    }
    settle(&sandbox, &three, "scale", &acked).await?;
    eprintln!(
        "settled on 3 members in {:?}, {} batches acked",
        started.elapsed(),
        acked.len()
    );
    if std::env::var("SCALE_DEBUG").is_ok() {
        for line in sandbox.logs().lines().filter(|l| {
            l.contains("=====")
                || l.contains("handed")
                || l.contains("WARN")
                || l.contains("changed")
        }) {
            eprintln!("{line}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_member_cut_off_by_a_partition_gets_its_hints_after_the_heal() -> anyhow::Result<()> {
    use logcluster_testkit::{Fault, FaultProxy, SeededRng};
    let mut sandbox = ClusterSandbox::start(3).await?;
    let rng = SeededRng::new();
    let target: std::net::SocketAddr =
        format!("127.0.0.1:{}", sandbox.storage[1].port("cluster")).parse()?;
    let proxy = FaultProxy::start(target, rng.seed).await?;
    sandbox
        .addr_override
        .insert("storage-1".into(), proxy.addr.to_string());
    sandbox.publish_members(&[])?;
    let proxied = proxy.addr.to_string();
    for node in [&sandbox.ingestor, &sandbox.query] {
        eventually(
            &format!("{} to use the proxy", node.name),
            Duration::from_secs(20),
            || {
                let addr = node.http_addr();
                let proxied = proxied.clone();
                async move {
                    let (_, cluster) = common::http(&addr, "GET", "/api/v1/cluster", &[], b"")
                        .await
                        .ok()?;
                    cluster["members"]
                        .as_array()?
                        .iter()
                        .any(|m| m["addr"] == proxied.as_str() && m["reachable"] == true)
                        .then_some(())
                }
            },
        )
        .await?;
    }
    let mut client = sandbox.connect().await?;
    let mut acked: HashSet<u64> = HashSet::new();
    let (ok, other) = send_batches(&mut client, "part", 1, 10).await?;
    assert!(other.is_empty(), "{other:?}");
    acked.extend(ok);

    proxy.set(Fault::Blackhole);
    let (ok, other) = send_batches(&mut client, "part", 11, 40).await?;
    assert!(
        other.is_empty(),
        "a partitioned member must not fail writes (seed {}): {other:?}",
        rng.seed
    );
    acked.extend(ok);
    let page = sandbox
        .query(serde_json::json!({"tenant_id": "part", "limit": 2000}))
        .await?;
    assert_eq!(
        page["stats"]["partial"], false,
        "two of three replicas meet R=2: {page}"
    );
    let items = page["items"].as_array().cloned().unwrap_or_default();
    assert_exactly_once(&items, &acked, &|| sandbox.logs());
    hints_were_written(&sandbox, "copies for the cut-off member went to hints").await?;

    proxy.set(Fault::Pass);
    converged(&sandbox, "part", acked.len() * PER_BATCH as usize).await?;
    // Every hint is handed off (the owner de-duplicates what it already got).
    eventually(
        "hints delivered and none pending",
        Duration::from_secs(30),
        || async {
            let mut delivered = 0.0;
            let mut pending = 0.0;
            for node in &sandbox.storage {
                let metrics = node.metrics().await.ok()?;
                delivered += metric_sum(&metrics, "logcluster_cluster_hints_delivered_total", &[]);
                pending += metric_sum(&metrics, "logcluster_cluster_hints_pending_bytes", &[]);
            }
            (delivered > 0.0 && pending == 0.0).then_some(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e} (seed {}){}", rng.seed, sandbox.logs()))?;
    Ok(())
}

/// One `Status` call on the cluster port, as a peer would make it; `Err` when the TLS
/// session is refused or the connection closes without an answer.
async fn status_call(
    port: u16,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> anyhow::Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let mut request = 9u32.to_be_bytes().to_vec();
    request.push(4); // Kind::Status
    request.extend_from_slice(&7u64.to_be_bytes());
    tls.write_all(&request).await?;
    tls.flush().await?;
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut len)).await??;
    let mut rest = vec![0u8; u32::from_be_bytes(len) as usize];
    tls.read_exact(&mut rest).await?;
    anyhow::ensure!(rest[0] == 0, "error status {}", rest[0]);
    Ok(serde_json::from_slice(&rest[9..])?)
}

#[tokio::test]
async fn the_cluster_port_answers_only_peers_with_a_certificate_of_the_cluster_ca()
-> anyhow::Result<()> {
    let sandbox = ClusterSandbox::start(3).await?;
    let port = sandbox.storage[0].port("cluster");
    // A member's own certificate: answered.
    let member = logcluster_common::tls::load_client_config(
        &sandbox.ca,
        Some((&sandbox.pki.node_cert, &sandbox.pki.node_key)),
    )?;
    let status = status_call(port, member).await?;
    assert_eq!(status["name"], "storage-0", "{status}");
    // No client certificate: refused.
    let anonymous = logcluster_common::tls::load_client_config(&sandbox.ca, None)?;
    assert!(status_call(port, anonymous).await.is_err());
    // A certificate from another CA: refused.
    let other = tempfile::tempdir()?;
    let foreign = logcluster_common::certs::generate_dev_pki(other.path(), &["localhost"])?;
    let stranger = logcluster_common::tls::load_client_config(
        &sandbox.ca,
        Some((&foreign.node_cert, &foreign.node_key)),
    )?;
    assert!(status_call(port, stranger).await.is_err());
    Ok(())
}

fn tiny_hint_window_and_anti_entropy(raw: &mut logcluster_config::RawNodeConfig) {
    with_anti_entropy(raw);
    if let Some(cluster) = raw.cluster.as_mut() {
        cluster.hint_window = "1ms".into();
    }
}

#[tokio::test]
async fn hints_older_than_the_window_are_dropped_and_counted_and_anti_entropy_repairs_instead()
-> anyhow::Result<()> {
    let mut sandbox = ClusterSandbox::start_with(3, tiny_hint_window_and_anti_entropy).await?;
    let mut client = sandbox.connect().await?;
    sandbox.storage[2].kill_9()?;
    let (ok, other) = send_batches(&mut client, "win", 1, 20).await?;
    assert!(other.is_empty(), "{other:?}");
    let acked: HashSet<u64> = ok.into_iter().collect();
    hints_were_written(&sandbox, "copies for the dead member went to hints").await?;
    sandbox.storage[2].spawn().await?;
    // The hints are past their 1 ms window when offered: dropped and counted, not delivered.
    eventually("expired hints dropped", Duration::from_secs(30), || async {
        let mut expired = 0.0;
        let mut pending = 0.0;
        for node in &sandbox.storage {
            let metrics = node.metrics().await.ok()?;
            expired += metric_sum(&metrics, "logcluster_cluster_hints_expired_total", &[]);
            pending += metric_sum(&metrics, "logcluster_cluster_hints_pending_bytes", &[]);
        }
        (expired > 0.0 && pending == 0.0).then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", sandbox.logs()))?;
    // Anti-entropy brings storage-2 the entries the dropped hints carried.
    converged(&sandbox, "win", acked.len() * PER_BATCH as usize).await?;
    Ok(())
}

#[tokio::test]
async fn hints_for_a_member_removed_from_the_cluster_go_to_the_current_owners() -> anyhow::Result<()>
{
    let mut sandbox = ClusterSandbox::start(3).await?;
    let mut client = sandbox.connect().await?;
    sandbox.storage[1].kill_9()?;
    let (ok, other) = send_batches(&mut client, "gone", 1, 20).await?;
    assert!(other.is_empty(), "{other:?}");
    let acked: HashSet<u64> = ok.into_iter().collect();
    // storage-1 never comes back: the operator removes it from the members.
    sandbox.publish_only(&["storage-0", "storage-2"], &[])?;
    eventually(
        "no hints left for the removed member",
        Duration::from_secs(30),
        || async {
            let mut pending = 0.0;
            for node in [&sandbox.storage[0], &sandbox.storage[2]] {
                pending += metric_sum(
                    &node.metrics().await.ok()?,
                    "logcluster_cluster_hints_pending_bytes",
                    &[],
                );
            }
            (pending == 0.0).then_some(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", sandbox.logs()))?;
    let expected = acked.len() * PER_BATCH as usize;
    for node in [&sandbox.storage[0], &sandbox.storage[2]] {
        let items = node.local_entries("gone").await?;
        assert_eq!(
            items.len(),
            expected,
            "{} holds every entry once",
            node.name
        );
    }
    let items = sandbox.query_all("gone").await?;
    assert_exactly_once(&items, &acked, &|| sandbox.logs());
    Ok(())
}
