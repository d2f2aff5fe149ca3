//! Nothing acknowledged is ever lost: kill -9 in the middle of a send, restart, resend every
//! batch with its original id — each acknowledged entry is present exactly once.

mod common;

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use common::TestNode;
use logcluster_proto::frame::{AckStatus, Format};

fn payload(batch: u64, per_batch: u64) -> Vec<u8> {
    spread_payload(batch, per_batch, Spread::OneServicePerBatch)
}

/// How a batch's entries fall into streams.
#[derive(Clone, Copy, PartialEq)]
enum Spread {
    /// All of a batch in one of three services.
    OneServicePerBatch,
    /// Each batch over this many services, entry by entry (a shipper's batch from many
    /// workloads).
    Services(u64),
}

fn spread_payload(batch: u64, per_batch: u64, spread: Spread) -> Vec<u8> {
    let service = |i: u64| match spread {
        Spread::OneServicePerBatch => batch % 3,
        Spread::Services(n) => i % n,
    };
    (0..per_batch)
        .map(|i| format!("{{\"service\":\"svc-{}\",\"message\":\"batch {batch} entry {i}\",\"level\":\"INFO\",\"trace_id\":\"{}\"}}", service(i), trace_of(batch, i)))
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes()
}

/// A trace spans five entries of each of three consecutive batches, so three services (its
/// id goes to the tenant's trace-id book once).
fn trace_of(batch: u64, i: u64) -> String {
    format!(
        "{:032x}",
        u128::from(batch / 3 * 1_000 + i / 5) * 0x9e37_79b9_7f4a_7c15
    )
}

#[tokio::test]
async fn kill_9_during_a_send_loses_no_acknowledged_entry_and_retries_never_duplicate()
-> anyhow::Result<()> {
    kill_9_during_a_send(Spread::OneServicePerBatch, 50).await
}

/// The same with every batch over more streams than a commit round fsyncs one by one: the
/// rounds make them durable with one `syncfs` (`file_system_syncs_total`).
#[tokio::test]
async fn kill_9_during_a_send_of_batches_over_many_streams_loses_nothing_acknowledged()
-> anyhow::Result<()> {
    let services = logcluster_storage::SYNCFS_FROM as u64 + 8;
    kill_9_during_a_send(Spread::Services(services), services * 2).await
}

async fn kill_9_during_a_send(spread: Spread, per_batch: u64) -> anyhow::Result<()> {
    // Streams seal segments during the send (a batch over many streams gives each a little).
    let (segment, block) = match spread {
        Spread::OneServicePerBatch => (128 * 1024, 16 * 1024),
        Spread::Services(_) => (16 * 1024, 4 * 1024),
    };
    let mut node = TestNode::start(|raw, _| {
        raw.storage.segment_max_bytes = segment;
        raw.storage.block_target_bytes = block;
    })
    .await?;
    let payload = |batch: u64| spread_payload(batch, per_batch, spread);
    let mut client = node.connect().await?;
    // Pipeline frames so that some are in flight when the process dies.
    let mut acked: HashSet<u64> = HashSet::new();
    let mut sent = 0u64;
    let mut next = 1u64;
    let mut killed = false;
    while !killed {
        for _ in 0..8 {
            client
                .send(Format::Json, next, "dur", &payload(next))
                .await?;
            next += 1;
            sent += 1;
        }
        for _ in 0..4 {
            match client.read_ack().await {
                Ok(Some(ack)) if ack.status == AckStatus::Accepted => {
                    acked.insert(ack.batch_id);
                }
                other => anyhow::bail!("unexpected answer before the kill: {other:?}"),
            }
        }
        if acked.len() >= 100 {
            if let Spread::Services(services) = spread {
                let metrics = node.metrics().await?;
                let syncs =
                    common::metric_sum(&metrics, "logcluster_storage_file_system_syncs_total", &[]);
                let fsyncs = common::metric_sum(&metrics, "logcluster_storage_fsyncs_total", &[]);
                let data_dir = std::fs::File::open(node.dir.path().join("data/streams"))?;
                if logcluster_storage::file_system_sync_usable(&data_dir) {
                    // (A round whose streams a syncfs mostly made clean already fsyncs the
                    // few left one by one.)
                    assert!(syncs > 0.0, "{syncs} syncfs, {fsyncs} fsyncs");
                } else {
                    assert!(fsyncs >= services as f64, "{fsyncs} fsyncs");
                }
            }
            node.kill_9()?;
            killed = true;
        }
    }
    // Acks that were already on the wire may still be readable.
    while let Ok(Some(ack)) = client.read_ack().await {
        if ack.status == AckStatus::Accepted {
            acked.insert(ack.batch_id);
        }
    }
    drop(client);
    // Sealed segments refer to trace ids in windows written before the kill.
    let book = node.dir.path().join("data/streams/dur/.traces");
    let sealed = std::fs::read_dir(node.dir.path().join("data/streams/dur/svc-0"))?
        .filter(|f| {
            f.as_ref()
                .is_ok_and(|f| f.file_name().to_string_lossy().ends_with(".seg"))
        })
        .count();
    assert!(sealed > 0, "no segment was sealed before the kill");
    assert!(std::fs::read_dir(&book)?.count() > 0, "no trace-id window");
    node.spawn().await?;
    let items = node.query_all("dur").await?;
    let present: HashMap<String, String> = items
        .iter()
        .filter_map(|i| {
            let message = i["message"].as_str()?.to_string();
            Some((message, i["trace_id"].as_str()?.to_string()))
        })
        .collect();
    assert_eq!(present.len(), items.len(), "no entry is stored twice");
    for batch in &acked {
        for i in 0..per_batch {
            let trace = present.get(&format!("batch {batch} entry {i}"));
            assert!(
                trace.is_some(),
                "acknowledged batch {batch} entry {i} was lost"
            );
            assert_eq!(trace, Some(&trace_of(*batch, i)), "batch {batch} entry {i}");
        }
    }
    // Retry every batch with its original id (what a client does after a crash).
    let mut client = node.connect().await?;
    let mut duplicates = 0;
    for batch in 1..next {
        let ack = client
            .roundtrip(Format::Json, batch, "dur", &payload(batch))
            .await?;
        assert_eq!(ack.status, AckStatus::Accepted, "{ack:?}");
        if ack.duplicate {
            duplicates += 1;
        }
    }
    assert!(
        duplicates >= acked.len(),
        "every acknowledged batch is recognised as a duplicate ({duplicates} < {})",
        acked.len()
    );
    let items = node.query_all("dur").await?;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for item in &items {
        *counts
            .entry(item["message"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        items.len() as u64,
        sent * per_batch,
        "every batch stored exactly once after retries"
    );
    assert!(counts.values().all(|c| *c == 1), "an entry was duplicated");
    Ok(())
}

#[tokio::test]
async fn sigterm_flushes_and_exits_cleanly_and_data_survives_restart() -> anyhow::Result<()> {
    let mut node = TestNode::start(|raw, _| raw.storage.fsync = "1h".into()).await?;
    let mut client = node.connect().await?;
    for batch in 1..=20u64 {
        let ack = client
            .roundtrip(Format::Json, batch, "term", &payload(batch, 10))
            .await?;
        assert_eq!(ack.status, AckStatus::Accepted);
    }
    drop(client);
    let status = node.terminate().await?;
    assert!(status.success(), "node exit status {status}");
    let log = node
        .process
        .as_ref()
        .map(|p| p.log_contents())
        .unwrap_or_default();
    assert!(log.contains("stopped cleanly"), "{log}");
    node.spawn().await?;
    let items = node.query_all("term").await?;
    assert_eq!(items.len(), 200);
    Ok(())
}

/// The tenant holds `count` entries, each message once.
async fn assert_each_message_once(
    node: &TestNode,
    tenant: &str,
    count: usize,
) -> anyhow::Result<()> {
    let items = node.query_all(tenant).await?;
    let mut messages: Vec<&str> = items
        .iter()
        .filter_map(|item| item["message"].as_str())
        .collect();
    messages.sort_unstable();
    let stored = messages.len();
    messages.dedup();
    assert_eq!((messages.len(), stored), (count, count), "each entry once");
    Ok(())
}

/// Unmounts a file system mounted for a test (lazily: the node may still hold files there).
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Mounts a tmpfs of `megabytes` at `at`; `None` where this process may not mount.
fn mount_small_file_system(at: &std::path::Path, megabytes: u32) -> Option<Mounted> {
    std::fs::create_dir_all(at).ok()?;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
        .arg(at)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    mounted.then(|| Mounted(at.to_path_buf()))
}

/// Fills the file system of `dir` with one file until a write fails for lack of space.
fn fill(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path)?;
    let block = vec![0u8; 64 * 1024];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if error.raw_os_error() == Some(28) => break,
            Err(error) => return Err(error.into()),
        }
    }
    // Whatever a partial block left.
    while file.write(&block[..512]).is_ok_and(|n| n > 0) {}
    Ok(path)
}

/// A full disk under a running node (a real file system: a small tmpfs mounted for the test):
/// a batch whose WAL records cannot be written is answered retry-later, never acknowledged; the
/// node stays up; once space is back the retried batch is stored, and after kill -9 and a
/// restart every acknowledged entry is there exactly once. Skipped, saying so, where the test
/// may not mount a file system (not root).
#[tokio::test]
async fn a_full_disk_answers_retry_later_and_the_retry_is_stored_once_space_returns()
-> anyhow::Result<()> {
    let probe = tempfile::tempdir()?;
    if mount_small_file_system(&probe.path().join("probe"), 1).is_none() {
        eprintln!("skipped: mounting a small tmpfs needs root (mount -t tmpfs)");
        return Ok(());
    }
    let mut mounted = None;
    let mut node = TestNode::start(|_, dir| {
        mounted = mount_small_file_system(&dir.join("data"), 16);
    })
    .await?;
    let _mounted = mounted.context("mount the data directory")?;
    let data = node.dir.path().join("data");
    let mut client = node.connect().await?;
    // The stream (svc-1: batches 1 and 4 of `payload`) and its files exist before the disk
    // fills.
    let ack = client
        .roundtrip(Format::Json, 1, "full", &payload(1, 20))
        .await?;
    assert_eq!(ack.status, AckStatus::Accepted, "{ack:?}");
    let filler = fill(&data)?;
    let ack = client
        .roundtrip(Format::Json, 2, "full", &payload(4, 200))
        .await?;
    assert_eq!(ack.status, AckStatus::RetryLater, "{ack:?}");
    assert!(ack.error.contains("No space left"), "{}", ack.error);
    let metrics = node.metrics().await?;
    assert!(metrics.contains("logcluster_"), "the node answers");
    std::fs::remove_file(&filler)?;
    let ack = client
        .roundtrip(Format::Json, 2, "full", &payload(4, 200))
        .await?;
    assert_eq!(ack.status, AckStatus::Accepted, "{ack:?}");
    drop(client);
    node.kill_9()?;
    node.spawn().await?;
    assert_each_message_once(&node, "full", 220).await
}

/// A node whose data directory is on a [`FailingDisk`]; `None` (saying the test is skipped)
/// where this process may not mount file systems or set up loop devices.
async fn node_on_failing_disk(
    customize: impl FnOnce(&mut logcluster_config::RawNodeConfig),
) -> anyhow::Result<Option<(TestNode, FailingDisk)>> {
    let probe = tempfile::tempdir()?;
    if FailingDisk::mount(&probe.path().join("backing"), &probe.path().join("data")).is_none() {
        eprintln!(
            "skipped: a loop device over a small tmpfs needs root (mount, losetup, mkfs.ext4)"
        );
        return Ok(None);
    }
    let mut disk = None;
    let node = TestNode::start(|raw, dir| {
        customize(raw);
        disk = FailingDisk::mount(&dir.join("backing"), &dir.join("data"));
    })
    .await?;
    let disk = disk.context("mount the failing disk")?;
    Ok(Some((node, disk)))
}

/// A file system whose device fails writes once its backing store is full: ext2-style ext4
/// (no journal) on a loop device over a sparse image in a small tmpfs. Writes land in the page
/// cache; the fsync that writes them back fails (ENOSPC from the loop device), as on a disk
/// that fails under a running node.
struct FailingDisk {
    backing: std::path::PathBuf,
    device: String,
    mount: std::path::PathBuf,
}

impl FailingDisk {
    /// Mounted at `at`, its backing store in `backing`; `None` where this process may not
    /// mount file systems or set up loop devices.
    fn mount(backing: &std::path::Path, at: &std::path::Path) -> Option<FailingDisk> {
        let run = |program: &str, args: &[&std::ffi::OsStr]| -> Option<String> {
            let output = std::process::Command::new(program)
                .args(args)
                .stderr(std::process::Stdio::null())
                .output()
                .ok()?;
            output
                .status
                .success()
                .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
        };
        let tmpfs = mount_small_file_system(backing, 24)?;
        let image = backing.join("disk.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(256 << 20))
            .ok()?;
        run(
            "mkfs.ext4",
            &[
                "-q".as_ref(),
                "-O".as_ref(),
                "^has_journal".as_ref(),
                image.as_os_str(),
            ],
        )?;
        let device = run(
            "losetup",
            &["-f".as_ref(), "--show".as_ref(), image.as_os_str()],
        )?;
        std::fs::create_dir_all(at).ok()?;
        let disk = FailingDisk {
            backing: backing.to_path_buf(),
            device: device.clone(),
            mount: at.to_path_buf(),
        };
        std::mem::forget(tmpfs); // unmounted by `disk`
        // Whatever the image's default, an I/O error must not turn the file system read-only:
        // the node writes again once the device works.
        run(
            "mount",
            &[
                "-o".as_ref(),
                "errors=continue".as_ref(),
                device.as_ref(),
                at.as_os_str(),
            ],
        )?;
        Some(disk)
    }
}

impl FailingDisk {
    /// Unmounts and mounts the file system again: its page cache is dropped, and what is read
    /// next comes from the device, as after a machine restart.
    fn remount(&self) -> anyhow::Result<()> {
        for (program, args) in [
            ("umount", vec![self.mount.as_os_str()]),
            (
                "mount",
                vec![
                    "-o".as_ref(),
                    "errors=continue".as_ref(),
                    self.device.as_ref(),
                    self.mount.as_os_str(),
                ],
            ),
        ] {
            let status = std::process::Command::new(program).args(&args).status()?;
            anyhow::ensure!(status.success(), "{program} {args:?}: {status}");
        }
        Ok(())
    }
}

impl Drop for FailingDisk {
    fn drop(&mut self) {
        let quiet = |program: &str, args: &[&std::ffi::OsStr]| {
            let _ = std::process::Command::new(program)
                .args(args)
                .stderr(std::process::Stdio::null())
                .status();
        };
        quiet("umount", &["-l".as_ref(), self.mount.as_os_str()]);
        quiet("losetup", &["-d".as_ref(), self.device.as_ref()]);
        quiet("umount", &["-l".as_ref(), self.backing.as_os_str()]);
    }
}

/// A WAL whose fsync failed (a real device error under the page cache) is not trusted again:
/// the kernel reports the error once and then counts the lost pages as written, so a retry of
/// the batch, found as a duplicate, would be acknowledged for data that never reached the disk.
/// The node answers that stream's batches retry-later (even once the device works again),
/// counts `wal_sync_failures_total`, and after a restart takes them again, from what the device
/// holds rather than what the page cache kept: after a remount (a machine restart's view of
/// the disk) every acknowledged entry is there once. Skipped, saying so,
/// where the test may not mount file systems or set up loop devices.
#[tokio::test]
async fn a_failed_wal_fsync_is_never_trusted_again_until_a_restart() -> anyhow::Result<()> {
    let Some((mut node, disk)) = node_on_failing_disk(|_| {}).await? else {
        return Ok(());
    };
    let mut client = node.connect().await?;
    let ack = client
        .roundtrip(Format::Json, 1, "eio", &payload(1, 20))
        .await?;
    assert_eq!(ack.status, AckStatus::Accepted, "{ack:?}");
    // The device's backing store fills up: the next writeback fails.
    let filler = fill(&disk.backing)?;
    let ack = client
        .roundtrip(Format::Json, 2, "eio", &payload(4, 200))
        .await?;
    assert_eq!(ack.status, AckStatus::RetryLater, "{ack:?}");
    let metrics = common::http_text(&node.http_addr(), "/metrics").await?;
    assert!(
        common::metric_sum(&metrics, "logcluster_storage_wal_sync_failures_total", &[]) >= 1.0,
        "counted"
    );
    // Neither live nor ready: the kubelet restarts it, and traffic goes elsewhere meanwhile.
    for probe in ["/healthz", "/readyz"] {
        let (status, body) = common::http(&node.http_addr(), "GET", probe, &[], b"").await?;
        assert_eq!(status, 503, "{probe}: {body}");
        assert!(
            body.to_string().contains("WAL sync failed"),
            "{probe}: {body}"
        );
    }
    // The device works again; the retry is still refused (its record may be lost).
    std::fs::remove_file(&filler)?;
    let ack = client
        .roundtrip(Format::Json, 2, "eio", &payload(4, 200))
        .await?;
    assert_eq!(ack.status, AckStatus::RetryLater, "{ack:?}");
    assert!(ack.error.contains("earlier sync"), "{}", ack.error);
    let ack = client
        .roundtrip(Format::Json, 3, "eio", &payload(7, 10))
        .await?;
    assert_eq!(
        ack.status,
        AckStatus::RetryLater,
        "a new batch too: {ack:?}"
    );
    drop(client);
    node.kill_9()?;
    node.spawn().await?;
    let (status, _) = common::http(&node.http_addr(), "GET", "/healthz", &[], b"").await?;
    assert_eq!(status, 200, "live again after the restart");
    let mut client = node.connect().await?;
    for (id, batch, count) in [(2, 4, 200), (3, 7, 10)] {
        let ack = client
            .roundtrip(Format::Json, id, "eio", &payload(batch, count))
            .await?;
        assert_eq!(
            ack.status,
            AckStatus::Accepted,
            "after the restart: {ack:?}"
        );
        // The device never got batch 2's record: recovery must not find it (in pages the
        // kernel kept cached after the failed write-back) and take the retry for a duplicate.
        assert!(!ack.duplicate, "stored anew after the restart: {ack:?}");
    }
    assert_each_message_once(&node, "eio", 230).await?;
    // What the device holds, as after a machine restart: every acknowledged entry, once
    // (recovery appending after records only the page cache had would lose what follows them).
    drop(client);
    node.kill_9()?;
    disk.remount()?;
    node.spawn().await?;
    assert_each_message_once(&node, "eio", 230).await
}

/// A segment whose blocks (or the trace ids they refer to) failed to reach the device is never
/// sealed: the kernel reports a lost write-back once and then counts the pages written, so a
/// seal that tries again would fsync "successfully", delete the WAL and leave a segment the
/// disk does not hold. The device's backing store fills while blocks wait in the page cache
/// (their first write-back is the seal's fsync), and then works again: every later seal is
/// refused and counted, the probes answer 503, batches are still taken, and after a restart
/// over a remounted file system (what the device holds) every acknowledged entry is there
/// once, rebuilt from the WAL. Skipped, saying so, where the test may not mount file systems.
#[tokio::test]
async fn a_failed_segment_sync_never_lets_it_be_sealed() -> anyhow::Result<()> {
    a_failed_sync_under_blocks_never_seals(false).await
}

/// The same with a trace id per entry: the tenant's trace-id book, synced before the segment,
/// or the segment fails (whichever's pages the file system placed where the device has no
/// room); `trace_id_book_sync_failures_are_final` checks the book's part alone.
#[tokio::test]
async fn a_failed_sync_under_blocks_with_trace_ids_never_lets_a_segment_be_sealed()
-> anyhow::Result<()> {
    a_failed_sync_under_blocks_never_seals(true).await
}

async fn a_failed_sync_under_blocks_never_seals(traces: bool) -> anyhow::Result<()> {
    let Some((mut node, disk)) = node_on_failing_disk(|raw| {
        // Blocks are cut as batches arrive; the segment is sealed by age, by maintenance.
        raw.storage.block_target_bytes = 16 * 1024;
        raw.storage.segment_max_age = "1s".into();
    })
    .await?
    else {
        return Ok(());
    };
    // Entries whose blocks do not compress much: a block spans many pages of the segment.
    let batch = |batch: u64, count: u64| -> Vec<u8> {
        (0..count)
            .map(|i| {
                let noise: String = (1..=8u64)
                    .map(|k| format!("{:016x} ", (batch * 1_000 + i * 10 + k).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
                    .collect();
                // One trace per entry: the book's window outgrows its first page (synced
                // when the window was made).
                let trace = if traces {
                    let id = u128::from(batch * 1_000 + i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
                    format!(",\"trace_id\":\"{id:032x}\"")
                } else {
                    String::new()
                };
                format!("{{\"service\":\"svc-0\",\"message\":\"batch {batch} entry {i} {noise}\",\"level\":\"INFO\"{trace}}}")
            })
            .collect::<Vec<_>>()
            .join("\n")
            .into_bytes()
    };
    let mut client = node.connect().await?;
    let ack = client
        .roundtrip(Format::Json, 1, "seal", &batch(1, 600))
        .await?;
    assert_eq!(ack.status, AckStatus::Accepted, "{ack:?}");
    // The batch's WAL record is on the device; its blocks (and trace ids) are only cached.
    // The first write-back of those fails: the device's backing store fills right away, long
    // before maintenance (every 5 s) finds the segment old enough to be sealed.
    let filler = fill(&disk.backing)?;
    let metric = |text: &str, name: &str| common::metric_sum(text, name, &[]);
    wait_for_metric(&node, "logcluster_storage_seal_failures_total", 1.0).await?;
    std::fs::remove_file(&filler)?;
    // The device works again: the next seals are refused too (a failed fsync proves the
    // pages lost, and a later one that succeeds proves nothing).
    let failures = common::http_text(&node.http_addr(), "/metrics").await?;
    let metrics = wait_for_metric(
        &node,
        "logcluster_storage_seal_failures_total",
        metric(&failures, "logcluster_storage_seal_failures_total") + 1.0,
    )
    .await?;
    assert_eq!(
        metric(&metrics, "logcluster_storage_rotations_total"),
        0.0,
        "nothing is sealed over pages the device may lack"
    );
    assert_eq!(
        metric(&metrics, "logcluster_storage_segment_sync_failures_total"),
        1.0,
        "counted once"
    );
    let ack = client
        .roundtrip(Format::Json, 4, "seal", &batch(4, 200))
        .await?;
    assert_eq!(
        ack.status,
        AckStatus::Accepted,
        "the WAL still takes batches: {ack:?}"
    );
    for probe in ["/healthz", "/readyz"] {
        let (status, body) = common::http(&node.http_addr(), "GET", probe, &[], b"").await?;
        assert_eq!(status, 503, "{probe}: {body}");
        assert!(body.to_string().contains("sync failed"), "{probe}: {body}");
    }
    drop(client);
    node.kill_9()?;
    disk.remount()?;
    node.spawn().await?;
    assert_each_message_once(&node, "seal", 800).await
}

/// The node's metrics once `name` has reached `at_least`, or a segment was sealed
/// (maintenance runs every few seconds).
async fn wait_for_metric(node: &TestNode, name: &str, at_least: f64) -> anyhow::Result<String> {
    common::eventually(
        &format!("{name} at {at_least} or a sealed segment"),
        std::time::Duration::from_secs(60),
        || async {
            // Not `node.metrics()`: the node is not live then.
            let metrics = common::http_text(&node.http_addr(), "/metrics")
                .await
                .ok()?;
            (common::metric_sum(&metrics, name, &[]) >= at_least
                || common::metric_sum(&metrics, "logcluster_storage_rotations_total", &[]) > 0.0)
                .then_some(metrics)
        },
    )
    .await
}

/// `logcluster up` restarts a node that says it needs one, as the kubelet's liveness probe
/// does: a storage member whose WAL sync failed answers /healthz 503; after a few such answers
/// `up` restarts it with its identity and data, the retried batch is taken, and every
/// acknowledged entry is there once. Skipped, saying so, where the test may not mount file
/// systems.
#[tokio::test]
async fn up_restarts_a_member_that_says_it_needs_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(disk) = FailingDisk::mount(&dir.path().join("backing"), &dir.path().join("disk"))
    else {
        eprintln!(
            "skipped: a loop device over a small tmpfs needs root (mount, losetup, mkfs.ext4)"
        );
        return Ok(());
    };
    let data = disk.mount.join("data");
    let args = common::up_with_one_member(&data);
    let mut up = logcluster_testkit::NodeProcess::spawn(
        &logcluster_testkit::binary_path("logcluster"),
        &args,
    )?;
    let ports = up
        .wait_ready(&data.join("ready.json"), std::time::Duration::from_secs(60))
        .await?;
    let ready = || -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&std::fs::read_to_string(
            data.join("ready.json"),
        )?)?)
    };
    let member = |info: &serde_json::Value| info["storage"][0]["pid"].as_u64().unwrap_or(0);
    let first = member(&ready()?);
    let ca = data.join("tls").join("ca.pem");
    let mut client = common::FrameClient::connect(ports["ingest"], &ca).await?;
    let ack = client
        .roundtrip(Format::Json, 1, "live", &payload(1, 20))
        .await?;
    assert_eq!(ack.status, AckStatus::Accepted, "{ack:?}");
    // A large batch: its WAL pages cannot all land on blocks the device already backs (files
    // `up` rewrote and deleted).
    let filler = fill(&disk.backing)?;
    let ack = client
        .roundtrip(Format::Json, 2, "live", &payload(4, 5000))
        .await?;
    assert_eq!(ack.status, AckStatus::RetryLater, "{ack:?}");
    std::fs::remove_file(&filler)?;
    // The member says it needs a restart (503), and stays refused until `up` restarts it.
    let member_http = format!(
        "127.0.0.1:{}",
        ready()?["storage"][0]["http"].as_u64().unwrap_or(0)
    );
    let (status, body) = common::http(&member_http, "GET", "/healthz", &[], b"").await?;
    assert_eq!(status, 503, "{body}");
    // `logcluster cluster status` says so too.
    let output = std::process::Command::new(logcluster_testkit::binary_path("logcluster"))
        .args(["cluster", "status", "--url"])
        .arg(format!("http://127.0.0.1:{}", ports["http"]))
        .output()?;
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("needs restart"), "{table}");
    common::eventually(
        "up to restart the member",
        std::time::Duration::from_secs(60),
        || async { ready().ok().filter(|info| member(info) != first) },
    )
    .await?;
    let ack = common::eventually(
        "the retried batch to be taken",
        std::time::Duration::from_secs(30),
        || async {
            let mut client = common::FrameClient::connect(ports["ingest"], &ca)
                .await
                .ok()?;
            let ack = client
                .roundtrip(Format::Json, 2, "live", &payload(4, 5000))
                .await
                .ok()?;
            (ack.status == AckStatus::Accepted).then_some(ack)
        },
    )
    .await?;
    assert!(!ack.duplicate, "stored anew: {ack:?}");
    let items =
        common::cluster::follow(&format!("127.0.0.1:{}", ports["http"]), "/v1/query", "live")
            .await?;
    let mut messages: Vec<&str> = items.iter().filter_map(|i| i["message"].as_str()).collect();
    messages.sort_unstable();
    messages.dedup();
    assert_eq!(
        (messages.len(), items.len()),
        (5020, 5020),
        "each entry once"
    );
    up.terminate(std::time::Duration::from_secs(60)).await?;
    Ok(())
}

/// A WAL write-back that failed while nobody was looking is found at the restart: under an
/// fsync interval a batch is answered once written, and here its pages fail to reach the device
/// (a `syncfs` by another process meets the full device, as the kernel's flusher would) before
/// the node dies. The kernel keeps such pages cached as if written; recovery syncs the WAL
/// first, learns of the failure, and reads what the device holds, so the client's retry is
/// stored anew instead of answered as a duplicate of records the disk never got. After a
/// remount (a machine restart's view) the entries are there once. Skipped, saying so, where
/// the test may not mount file systems.
#[tokio::test]
async fn a_wal_write_back_that_failed_unseen_is_read_from_the_device_after_a_restart()
-> anyhow::Result<()> {
    let Some((mut node, disk)) = node_on_failing_disk(|raw| {
        raw.storage.fsync = "1h".into();
    })
    .await?
    else {
        return Ok(());
    };
    let mut client = node.connect().await?;
    // The stream, its files and a first batch reach the device while it works.
    let ack = client
        .roundtrip(Format::Json, 1, "unseen", &payload(1, 20))
        .await?;
    assert_eq!(ack.status, AckStatus::Accepted, "{ack:?}");
    let sync_file_system = || {
        std::process::Command::new("sync")
            .arg("-f")
            .arg(&disk.mount)
            .stderr(std::process::Stdio::null())
            .status()
    };
    anyhow::ensure!(sync_file_system()?.success(), "the device works");
    // Larger than a page: most of its record lies past the pages the device already has,
    // where it has no room once it is full.
    let ack = client
        .roundtrip(Format::Json, 2, "unseen", &payload(4, 200))
        .await?;
    assert_eq!(ack.status, AckStatus::Accepted, "{ack:?}");
    drop(client);
    let filler = fill(&disk.backing)?;
    let _ = sync_file_system()?;
    node.kill_9()?;
    std::fs::remove_file(&filler)?;
    node.spawn().await?;
    let mut client = node.connect().await?;
    let ack = client
        .roundtrip(Format::Json, 2, "unseen", &payload(4, 200))
        .await?;
    assert_eq!(ack.status, AckStatus::Accepted, "{ack:?}");
    assert!(
        !ack.duplicate,
        "stored anew, not found in cached pages: {ack:?}"
    );
    drop(client);
    // SIGTERM syncs what the interval has not yet.
    let status = node.terminate().await?;
    assert!(status.success(), "{status}");
    disk.remount()?;
    node.spawn().await?;
    assert_each_message_once(&node, "unseen", 220).await
}
