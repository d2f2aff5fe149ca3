//! Store behaviour through its public API on a real directory with real fsync.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use logcluster_proto::{Level, LogEntry};
use logcluster_storage::{Cursor, ScanFilter, StorageConfig, StorageMetrics, Store};

fn entry(
    tenant: &str,
    service: &str,
    batch: u64,
    i: u32,
    ts: i64,
    level: Level,
    message: &str,
) -> LogEntry {
    LogEntry {
        id: format!("{batch:016x}-{i:08x}"),
        timestamp: ts,
        received_at: ts,
        tenant: tenant.into(),
        service: service.into(),
        level: level as i32,
        message: message.into(),
        host: "host-1".into(),
        trace_id: format!("trace{}", i % 7),
        ..Default::default()
    }
}

fn all_levels() -> u32 {
    u32::MAX
}

fn filter<'a>(
    tenant: &'a str,
    predicate: &'a (dyn Fn(&LogEntry) -> bool + Sync),
) -> ScanFilter<'a> {
    ScanFilter {
        tenant,
        services: None,
        from_ts: i64::MIN,
        to_ts: i64::MAX,
        level_mask: all_levels(),
        required_tokens: &[],
        record_needle: None,
        core_and_message_only: false,
        message_unread: false,
        predicate,
    }
}

fn small_config(dir: &std::path::Path) -> StorageConfig {
    let mut config = StorageConfig::new(dir);
    config.block_target_bytes = 4 * 1024;
    config.segment_max_bytes = 16 * 1024;
    config
}

/// A store in `dir` with [`small_config`], and its metrics.
async fn small_store(dir: &std::path::Path) -> (std::sync::Arc<Store>, StorageMetrics) {
    let metrics = StorageMetrics::default();
    let store = Store::open(small_config(dir), metrics.clone())
        .await
        .expect("open");
    (store, metrics)
}

/// `n` entries of batch `uid` in stream t/s, at timestamps `uid * 100 + i`.
fn numbered_batch(uid: u64, n: u32) -> Vec<LogEntry> {
    (0..n)
        .map(|i| {
            let ts = uid as i64 * 100 + i64::from(i);
            entry("t", "s", uid, i, ts, Level::Info, "payload line")
        })
        .collect()
}

/// `ids` are `count` ids, each once.
fn assert_each_once(ids: &[String], count: usize) {
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), distinct.len()), (count, count));
}

fn all_ids(store: &Store, tenant: &str) -> Vec<String> {
    let everything = |_: &LogEntry| true;
    let mut ids = Vec::new();
    store.scan(&filter(tenant, &everything), |e| ids.push(e.id.clone()));
    ids.sort();
    ids
}

#[tokio::test]
async fn appended_entries_survive_restart_exactly_once_across_rotations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = StorageMetrics::default();
    let store = Store::open(small_config(dir.path()), metrics.clone())
        .await
        .expect("open");
    let mut expected = Vec::new();
    for batch in 1..=60u64 {
        let entries: Vec<LogEntry> = (0..20)
            .map(|i| {
                entry(
                    "acme",
                    if i % 2 == 0 { "api" } else { "db" },
                    batch,
                    i,
                    batch as i64 * 1000 + i as i64,
                    Level::Info,
                    "request served in 12ms",
                )
            })
            .collect();
        expected.extend(entries.iter().map(|e| e.id.clone()));
        let outcome = store.append(batch, entries).await.expect("append");
        assert_eq!(outcome.stored, 20);
    }
    expected.sort();
    assert!(
        metrics.rotations.get() > 0,
        "the small segment size must have caused rotations"
    );
    assert_eq!(all_ids(&store, "acme"), expected);
    drop(store);
    let store = Store::open(small_config(dir.path()), StorageMetrics::default())
        .await
        .expect("reopen");
    assert_eq!(all_ids(&store, "acme"), expected);
    // Retrying already stored batches (before and after rotation) stores nothing new.
    for batch in [1u64, 59, 60] {
        let entries: Vec<LogEntry> = (0..20)
            .map(|i| {
                entry(
                    "acme",
                    if i % 2 == 0 { "api" } else { "db" },
                    batch,
                    i,
                    batch as i64 * 1000 + i as i64,
                    Level::Info,
                    "request served in 12ms",
                )
            })
            .collect();
        let outcome = store.append(batch, entries).await.expect("retry");
        assert_eq!(outcome.stored, 0, "batch {batch} was stored again");
        assert_eq!(outcome.duplicates, 20);
    }
    assert_eq!(all_ids(&store, "acme"), expected);
}

#[tokio::test]
async fn torn_wal_tail_is_cut_and_never_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(StorageConfig::new(dir.path()), StorageMetrics::default())
        .await
        .expect("open");
    store
        .append(1, vec![entry("t", "s", 1, 0, 10, Level::Info, "first")])
        .await
        .expect("append");
    store
        .append(2, vec![entry("t", "s", 2, 0, 20, Level::Info, "second")])
        .await
        .expect("append");
    drop(store);
    let wal = std::fs::read_dir(dir.path().join("streams/t/s"))
        .expect("stream dir")
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("wal-"))
        .expect("wal file")
        .path();
    let len = std::fs::metadata(&wal).expect("stat").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .expect("open wal");
    file.set_len(len - 7).expect("tear the tail");
    drop(file);
    let metrics = StorageMetrics::default();
    let store = Store::open(StorageConfig::new(dir.path()), metrics.clone())
        .await
        .expect("reopen");
    assert_eq!(all_ids(&store, "t"), vec![format!("{:016x}-{:08x}", 1, 0)]);
    assert!(metrics.wal_truncated_bytes.get() > 0);
    store
        .append(3, vec![entry("t", "s", 3, 0, 30, Level::Info, "third")])
        .await
        .expect("append after recovery");
    drop(store);
    let store = Store::open(StorageConfig::new(dir.path()), StorageMetrics::default())
        .await
        .expect("reopen");
    assert_eq!(all_ids(&store, "t").len(), 2);
}

#[tokio::test]
async fn pagination_over_equal_timestamps_returns_every_entry_once_newest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(small_config(dir.path()), StorageMetrics::default())
        .await
        .expect("open");
    for batch in 1..=10u64 {
        // Only three distinct timestamps across 500 entries.
        let entries: Vec<LogEntry> = (0..50)
            .map(|i| {
                entry(
                    "acme",
                    "api",
                    batch,
                    i,
                    1_000 + (i % 3) as i64,
                    Level::Warn,
                    "same time",
                )
            })
            .collect();
        store.append(batch, entries).await.expect("append");
    }
    let everything = |_: &LogEntry| true;
    let mut seen = Vec::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let page = store.query_top(&filter("acme", &everything), 37, cursor.as_ref());
        for pair in page.items.windows(2) {
            assert!((pair[0].timestamp, &pair[0].id) > (pair[1].timestamp, &pair[1].id));
        }
        seen.extend(page.items.iter().map(|e| e.id.clone()));
        match page.next_cursor {
            Some(next) => cursor = Some(Cursor::decode(&next.encode()).expect("cursor round trip")),
            None => break,
        }
    }
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(seen.len(), 500);
    assert_eq!(unique.len(), 500);
}

#[tokio::test]
async fn tenants_are_separated_and_filters_prune_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(small_config(dir.path()), StorageMetrics::default())
        .await
        .expect("open");
    for batch in 1..=40u64 {
        let entries: Vec<LogEntry> = (0..25)
            .map(|i| {
                let level = if i == 0 && batch == 7 {
                    Level::Error
                } else {
                    Level::Info
                };
                let message = if level == Level::Error {
                    "upstream timeout calling payment"
                } else {
                    "ok"
                };
                entry(
                    if batch % 2 == 0 { "a" } else { "b" },
                    "api",
                    batch,
                    i,
                    batch as i64 * 100 + i as i64,
                    level,
                    message,
                )
            })
            .collect();
        store.append(batch, entries).await.expect("append");
    }
    let everything = |_: &LogEntry| true;
    assert_eq!(all_ids(&store, "a").len(), 500);
    assert_eq!(all_ids(&store, "b").len(), 500);
    let errors_only = |e: &LogEntry| e.level == Level::Error as i32;
    let mut f = filter("b", &errors_only);
    f.level_mask = 1 << Level::Error as u32;
    let page = store.query_top(&f, 10, None);
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].message, "upstream timeout calling payment");
    assert!(
        page.stats.objects_skipped > 0,
        "level mask should skip blocks: {:?}",
        page.stats
    );
    let tokens = vec!["timeout".to_string()];
    let has_timeout = |e: &LogEntry| e.message.contains("timeout");
    let mut f = filter("b", &has_timeout);
    f.required_tokens = &tokens;
    let page = store.query_top(&f, 10, None);
    assert_eq!(page.items.len(), 1);
    assert!(
        page.stats.objects_skipped > 0,
        "the token filter should skip blocks: {:?}",
        page.stats
    );
    let services: BTreeSet<String> = ["db".to_string()].into();
    let mut f = filter("a", &everything);
    f.services = Some(&services);
    assert!(store.query_top(&f, 10, None).items.is_empty());
    let mut f = filter("a", &everything);
    f.from_ts = 2_000;
    f.to_ts = 2_010;
    let page = store.query_top(&f, 100, None);
    assert_eq!(page.items.len(), 10);
    assert!(
        page.items
            .iter()
            .all(|e| (2_000..2_010).contains(&e.timestamp))
    );
}

#[tokio::test]
async fn corrupt_segment_is_quarantined_and_corrupt_block_never_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(small_config(dir.path()), StorageMetrics::default())
        .await
        .expect("open");
    for batch in 1..=40u64 {
        store
            .append(batch, numbered_batch(batch, 25))
            .await
            .expect("append");
    }
    drop(store);
    let stream_dir = dir.path().join("streams/t/s");
    let mut segs: Vec<_> = std::fs::read_dir(&stream_dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 2, "need two sealed segments, got {segs:?}");
    // Break the footer of the first and one block of the second.
    let mut first = std::fs::read(&segs[0]).expect("read");
    let n = first.len();
    first[n - 3] ^= 0xff;
    std::fs::write(&segs[0], &first).expect("write");
    let mut second = std::fs::read(&segs[1]).expect("read");
    second[20] ^= 0xff;
    std::fs::write(&segs[1], &second).expect("write");
    let metrics = StorageMetrics::default();
    // Every healthy segment's batches stay known, so that retries below are duplicates.
    let mut config = small_config(dir.path());
    config.dedup_segments = 1_000;
    let store = Store::open(config, metrics.clone()).await.expect("reopen");
    assert_eq!(metrics.corrupt_segments.get(), 1);
    assert!(segs[0].with_extension("seg.corrupt").exists());
    let everything = |_: &LogEntry| true;
    let page = store.query_top(&filter("t", &everything), 10_000, None);
    assert!(page.stats.corrupt_blocks >= 1);
    assert!(page.items.iter().all(|e| e.message == "payload line"));
    assert!(page.items.len() < 1000);
    assert_eq!(
        metrics.corrupt_segments.get(),
        2,
        "the read quarantined the second"
    );

    // Retries (or hints, or repairs) of every batch restore exactly what the quarantined
    // segments held: their batches are no longer known here, and the others are duplicates.
    for batch in 1..=40u64 {
        store
            .append(batch, numbered_batch(batch, 25))
            .await
            .expect("retry");
    }
    assert_each_once(&all_ids(&store, "t"), 1000);
}

/// A rotation whose seal fails (here at the rename: the sealed name is taken) leaves the
/// stream as it was: appends go on and are stored (the WAL
/// holds them), the seal is tried again a second later and succeeds once it can, and after a
/// restart every entry is there exactly once.
#[tokio::test]
async fn a_failed_seal_leaves_the_stream_whole_and_a_later_rotation_seals_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, metrics) = small_store(dir.path()).await;
    let batch = |uid: u64| numbered_batch(uid, 25);
    store.append(1, batch(1)).await.expect("append");
    let stream_dir = dir.path().join("streams/t/s");
    let obstacle = stream_dir.join(format!("seg-{:016}.seg", 1));
    std::fs::create_dir(&obstacle).expect("obstacle");
    for uid in 2..=30u64 {
        let stored = store.append(uid, batch(uid)).await.expect("stored");
        assert_eq!(stored.stored, 25);
    }
    assert!(
        metrics.seal_failures.get() >= 1,
        "a seal was tried and failed"
    );
    assert_eq!(metrics.rotations.get(), 0);
    // A failed attempt leaves nothing of the next segment behind.
    assert!(!stream_dir.join(format!("seg-{:016}.open", 2)).exists());
    assert!(!stream_dir.join(format!("wal-{:016}.log", 2)).exists());
    // Freed: appends go on, and a rotation succeeds once the retry is due.
    std::fs::remove_dir(&obstacle).expect("free");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut uid = 30;
    while metrics.rotations.get() == 0 {
        assert!(std::time::Instant::now() < deadline, "never sealed");
        uid += 1;
        store.append(uid, batch(uid)).await.expect("append");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(all_ids(&store, "t").len(), uid as usize * 25);
    store.shutdown().await.expect("shutdown");
    drop(store);
    let (store, metrics) = small_store(dir.path()).await;
    assert_each_once(&all_ids(&store, "t"), uid as usize * 25);
    assert_eq!(metrics.corrupt_segments.get(), 0);
}

/// A segment that cannot be read (an I/O error, not bad bytes) is not quarantined: the store
/// does not open, saying which file, and the segment stays where it was.
#[tokio::test]
async fn a_segment_that_cannot_be_read_is_an_error_not_a_quarantine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stream_dir = dir.path().join("streams/t/s");
    std::fs::create_dir_all(&stream_dir).expect("dir");
    // A symlink to itself fails to open with ELOOP on any filesystem: a read error, like EIO
    // or EMFILE, not bad bytes.
    let unreadable = stream_dir.join(format!("seg-{:016}.seg", 1));
    std::os::unix::fs::symlink(&unreadable, &unreadable).expect("segment");
    let metrics = StorageMetrics::default();
    let Err(error) = Store::open(small_config(dir.path()), metrics.clone()).await else {
        panic!("a store with an unreadable segment opened");
    };
    assert!(
        format!("{error}").contains("seg-0000000000000001.seg"),
        "{error}"
    );
    assert!(unreadable.symlink_metadata().is_ok(), "left where it was");
    assert_eq!(metrics.corrupt_segments.get(), 0);
}

#[tokio::test]
async fn retention_by_bytes_deletes_oldest_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = small_config(dir.path());
    config.retention_max_bytes = Some(40 * 1024);
    let metrics = StorageMetrics::default();
    let store: Arc<Store> = Store::open(config, metrics.clone()).await.expect("open");
    for batch in 1..=200u64 {
        let entries: Vec<LogEntry> = (0..25)
            .map(|i| {
                entry(
                    "t",
                    "s",
                    batch,
                    i,
                    batch as i64 * 100 + i as i64,
                    Level::Info,
                    &format!("unique payload {batch} {i} {}", batch * 7919 + i as u64),
                )
            })
            .collect();
        store.append(batch, entries).await.expect("append");
    }
    let before = store.stats();
    store.maintain().expect("maintain");
    let after = store.stats();
    assert!(metrics.retention_deleted_segments.get() > 0);
    assert!(after.sealed_segments < before.sealed_segments);
    let everything = |_: &LogEntry| true;
    let page = store.query_top(&filter("t", &everything), 1, None);
    assert_eq!(
        page.items[0].timestamp,
        200 * 100 + 24,
        "the newest entry must survive"
    );
    let oldest = store.query_top(&filter("t", &|e: &LogEntry| e.timestamp < 200), 1, None);
    assert!(oldest.items.is_empty(), "the oldest entries must be gone");
}

#[tokio::test]
async fn retention_by_age_and_rotation_by_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StorageConfig::new(dir.path());
    config.segment_max_age = Duration::from_millis(1);
    config.retention_max_age = Some(Duration::from_secs(3600));
    let metrics = StorageMetrics::default();
    let store = Store::open(config, metrics.clone()).await.expect("open");
    let now = logcluster_proto::time::now_nanos();
    store
        .append(
            1,
            vec![entry(
                "t",
                "old",
                1,
                0,
                now - 7_200_000_000_000,
                Level::Info,
                "two hours old",
            )],
        )
        .await
        .expect("append");
    store
        .append(2, vec![entry("t", "new", 2, 0, now, Level::Info, "fresh")])
        .await
        .expect("append");
    std::thread::sleep(Duration::from_millis(5));
    store.maintain().expect("maintain seals by age");
    assert_eq!(metrics.rotations.get(), 2);
    store.maintain().expect("maintain applies retention");
    assert_eq!(metrics.retention_deleted_segments.get(), 1);
    let everything = |_: &LogEntry| true;
    let page = store.query_top(&filter("t", &everything), 10, None);
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].message, "fresh");
}

#[tokio::test]
async fn a_parallel_scan_visits_exactly_what_a_sequential_scan_visits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(small_config(dir.path()), StorageMetrics::default())
        .await
        .expect("open");
    let levels = [Level::Debug, Level::Info, Level::Warn, Level::Error];
    for batch in 0..40u64 {
        let entries: Vec<LogEntry> = (0..50u32)
            .map(|i| {
                let service = ["api", "db", "web"][(batch as usize + i as usize) % 3];
                let level = levels[(i as usize) % levels.len()];
                let message = if i % 5 == 0 { "upstream timeout" } else { "ok" };
                entry(
                    "t",
                    service,
                    batch + 1,
                    i,
                    (batch as i64) * 1000 + i64::from(i),
                    level,
                    message,
                )
            })
            .collect();
        store.append(batch + 1, entries).await.expect("append");
    }
    let wanted = |e: &LogEntry| e.message.contains("timeout");
    let scan_filter = filter("t", &wanted);
    let mut sequential: Vec<(String, i64, i32)> = Vec::new();
    let stats = store.scan(&scan_filter, |e| {
        sequential.push((e.id.clone(), e.timestamp, e.level));
    });
    assert!(
        stats.objects_read >= 8,
        "enough blocks for several threads: {stats:?}"
    );
    let (parts, parallel_stats) = store.scan_parallel(&scan_filter, Vec::new, |acc, e| {
        acc.push((e.id.clone(), e.timestamp, e.level));
    });
    let mut parallel: Vec<(String, i64, i32)> = parts.into_iter().flatten().collect();
    sequential.sort();
    parallel.sort();
    assert_eq!(sequential.len(), 40 * 10);
    assert_eq!(parallel, sequential);
    assert_eq!(parallel_stats.events_scanned, stats.events_scanned);
    assert_eq!(parallel_stats.objects_read, stats.objects_read);
}

/// A batch over many streams (services) is made durable with one `syncfs` of the data
/// directory's file system rather than an fsync per stream WAL; a batch over a few streams
/// with an fsync each. Both are answered once synced and read back whole after a reopen.
/// (What reaches the disk through either call only a power cut would tell: this checks
/// which call each round makes.)
#[tokio::test]
async fn a_batch_over_many_streams_takes_one_file_system_sync_not_an_fsync_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, metrics) = small_store(dir.path()).await;
    let services = logcluster_storage::SYNCFS_FROM as u32 + 8;
    let many: Vec<LogEntry> = (0..services * 3)
        .map(|i| {
            let service = format!("svc-{}", i % services);
            entry("t", &service, 1, i, i64::from(i), Level::Info, "many")
        })
        .collect();
    let outcome = store.append(1, many).await.expect("many streams");
    assert_eq!(outcome.stored, services as usize * 3);
    if store.syncs_file_system() {
        assert_eq!(metrics.file_system_syncs.get(), 1, "one syncfs");
        assert_eq!(metrics.fsyncs.get(), 0, "no fsync per stream");
    } else {
        // A kernel whose syncfs does not report write errors: an fsync each.
        assert_eq!(metrics.fsyncs.get(), u64::from(services));
    }
    let syncs = (metrics.file_system_syncs.get(), metrics.fsyncs.get());
    let few: Vec<LogEntry> = (0..6)
        .map(|i| {
            let service = format!("svc-{}", i % 3);
            entry("t", &service, 2, i, 1000 + i64::from(i), Level::Info, "few")
        })
        .collect();
    store.append(2, few).await.expect("few streams");
    assert_eq!(
        (metrics.file_system_syncs.get(), metrics.fsyncs.get()),
        (syncs.0, syncs.1 + 3),
        "an fsync for each of the three streams"
    );
    drop(store);
    let (reopened, _) = small_store(dir.path()).await;
    assert_each_once(&all_ids(&reopened, "t"), services as usize * 3 + 6);
}

/// A batch, or repair entries, that the store already holds is answered only once that copy
/// is durable: a retry that arrives while the first copy still waits for its fsync (or
/// whose first attempt failed after the WAL write) must not be acknowledged before it.
#[tokio::test]
async fn a_duplicate_is_answered_only_once_the_copy_it_found_is_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, metrics) = small_store(dir.path()).await;
    let batch = |uid: u64| numbered_batch(uid, 5);
    // The first copy is in the WAL; its own wait for the fsync has not even started.
    let first = store.append_on_this_thread(91, batch(91), None);
    assert_eq!(metrics.fsyncs.get(), 0);
    let retry = store
        .append_on_this_thread(91, batch(91), None)
        .durable()
        .await
        .expect("retry");
    assert_eq!(retry.duplicates, 5);
    assert_eq!(metrics.fsyncs.get(), 1, "the retry waited for the fsync");
    // Repair entries found present wait likewise (a hand-over deletes its copy on the answer).
    let second = store.append_on_this_thread(92, batch(92), None);
    let repair = store.append_missing(batch(92)).await.expect("repair");
    assert_eq!((repair.stored, repair.duplicates), (0, 5));
    assert_eq!(metrics.fsyncs.get(), 2, "the repair waited for the fsync");
    // Entries that came under another uid (as repairs do) and still wait for their fsync:
    // the real batch finds them all present, and waits as well.
    let third = store.append_on_this_thread(500, batch(93), None);
    let real = store
        .append_on_this_thread(93, batch(93), None)
        .durable()
        .await
        .expect("real batch");
    assert_eq!((real.stored, real.duplicates), (0, 5));
    assert_eq!(
        metrics.fsyncs.get(),
        3,
        "the real batch waited for the fsync"
    );
    first.durable().await.expect("first");
    second.durable().await.expect("second");
    third.durable().await.expect("third");
}

#[tokio::test]
async fn a_partial_repair_never_makes_the_real_batch_look_like_a_duplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(small_config(dir.path()), StorageMetrics::default())
        .await
        .expect("open");
    let batch: Vec<LogEntry> = (0..10u32)
        .map(|i| entry("t", "api", 77, i, 1_000 + i64::from(i), Level::Info, "m"))
        .collect();
    // A read repair brings 3 of the batch's 10 entries first.
    let repaired = store
        .append_missing(batch[..3].to_vec())
        .await
        .expect("repair");
    assert_eq!(repaired.stored, 3);
    // The real batch then arrives (a hint or a client retry): the 7 others are stored, the
    // 3 repaired ones are not stored again, and it is not refused as a duplicate.
    let outcome = store.append(77, batch.clone()).await.expect("append");
    assert_eq!((outcome.stored, outcome.duplicates), (7, 3));
    let ids = all_ids(&store, "t");
    assert_eq!(ids.len(), 10, "{ids:?}");
    // The same again is a plain duplicate; and all of it survives a restart.
    let again = store.append(77, batch.clone()).await.expect("append");
    assert_eq!(again.duplicates, 10);
    store.shutdown().await.expect("shutdown");
    drop(store);
    let store = Store::open(small_config(dir.path()), StorageMetrics::default())
        .await
        .expect("reopen");
    assert_eq!(all_ids(&store, "t").len(), 10);
    let after = store.append(77, batch).await.expect("append after restart");
    assert_eq!(after.stored, 0);
    assert_eq!(all_ids(&store, "t").len(), 10);
}

#[tokio::test]
async fn block_rollups_answer_counts_exactly_like_reading_every_entry() {
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(small_config(dir.path()), StorageMetrics::default())
        .await
        .expect("open");
    let levels = [Level::Debug, Level::Info, Level::Warn, Level::Error];
    let minute = 60_000_000_000i64;
    for batch in 0..60u64 {
        let entries: Vec<LogEntry> = (0..40u32)
            .map(|i| {
                let service = ["api", "db"][(batch as usize + i as usize) % 2];
                // Spread over ~45 minutes, several minutes per block.
                let ts =
                    1_795_428_000_000_000_000 + (batch as i64 * 40 + i64::from(i)) * (minute / 53);
                entry(
                    "t",
                    service,
                    batch + 1,
                    i,
                    ts,
                    levels[(i as usize * 7 + batch as usize) % 4],
                    "m",
                )
            })
            .collect();
        store.append(batch + 1, entries).await.expect("append");
    }
    let everything = |_: &LogEntry| true;
    // A time range that cuts blocks at both ends: those are read, the inner ones summarized.
    let mut scan_filter = filter("t", &everything);
    scan_filter.from_ts = 1_795_428_000_000_000_000 + 7 * minute + 13;
    scan_filter.to_ts = 1_795_428_000_000_000_000 + 38 * minute;
    scan_filter.level_mask = (1 << Level::Info as u32) | (1 << Level::Error as u32);
    type Acc = BTreeMap<(String, i64, i32), u64>;
    let interval = 5 * minute;
    let visit = |acc: &mut Acc, e: &LogEntry| {
        *acc.entry((
            e.service.clone(),
            e.timestamp.div_euclid(interval) * interval,
            e.level,
        ))
        .or_default() += 1;
    };
    let summary = |acc: &mut Acc, service: &str, meta: &logcluster_storage::segment::BlockMeta| {
        if meta.rollup.is_empty() {
            return false;
        }
        for cell in &meta.rollup {
            if scan_filter.level_mask & (1 << cell.level) == 0 {
                continue;
            }
            let ts = cell.minute * logcluster_storage::segment::ROLLUP_NS;
            *acc.entry((
                service.to_string(),
                ts.div_euclid(interval) * interval,
                cell.level as i32,
            ))
            .or_default() += u64::from(cell.count);
        }
        true
    };
    let merge = |parts: Vec<Acc>| {
        let mut all = Acc::new();
        for part in parts {
            for (k, v) in part {
                *all.entry(k).or_default() += v;
            }
        }
        all
    };
    let (read, read_stats) = store.scan_parallel(&scan_filter, Acc::new, visit);
    let (indexed, index_stats) =
        store.scan_parallel_summarized(&scan_filter, Acc::new, visit, Some(&summary), None);
    assert_eq!(merge(indexed), merge(read.clone()));
    assert!(!merge(read).is_empty());
    assert!(index_stats.objects_from_index >= 5, "{index_stats:?}");
    assert!(
        index_stats.events_scanned < read_stats.events_scanned / 2,
        "{index_stats:?} vs {read_stats:?}"
    );
}

/// `block_format` (`storage.blockFormat`) writes the layouts that earlier releases read; a
/// store holding all three, in sealed segments, open ones and in memory, serves every entry
/// field for field, and a count scan that leaves messages unread applies a message needle
/// exactly in each.
#[tokio::test]
async fn segments_in_every_block_layout_are_read_together() {
    use logcluster_proto::FieldValue;
    use logcluster_storage::segment::{
        FORMAT_COLUMNS, FORMAT_ROWS, FORMAT_TEMPLATES, NeedleScope, open_sealed,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let batch_entries = |batch: u64| -> Vec<LogEntry> {
        (0..20)
            .map(|i| {
                let mut e = entry(
                    "acme",
                    "api",
                    batch,
                    i,
                    batch as i64 * 1000 + i as i64,
                    Level::Warn,
                    &if i % 3 == 0 {
                        format!("upstream answered {i} in {}ms", batch * 3)
                    } else {
                        format!("Upstream TIMEOUT after {}ms host=db-{i}", batch * 3)
                    },
                );
                e.fields.insert("n".into(), FieldValue::int(i64::from(i)));
                e.fields
                    .insert("ratio".into(), FieldValue::float(f64::from(i) / 7.0));
                e
            })
            .collect()
    };
    let mut expected = Vec::new();
    let mut config = small_config(dir.path());
    // Batches 1-20 written in rows, 21-40 in columns and 41-60 with templates, restarting
    // in between.
    let mut store = None;
    for (batches, format) in [
        (1..=20u64, FORMAT_ROWS),
        (21..=40, FORMAT_COLUMNS),
        (41..=60, FORMAT_TEMPLATES),
    ] {
        drop(store.take());
        config.block_format = format;
        let opened = store.insert(
            Store::open(config.clone(), StorageMetrics::default())
                .await
                .expect("open"),
        );
        for batch in batches {
            expected.extend(batch_entries(batch));
            opened
                .append(batch, batch_entries(batch))
                .await
                .expect("append");
        }
    }
    let store = store.expect("opened");
    let read_all = |store: &Store| {
        let everything = |_: &LogEntry| true;
        let mut all = Vec::new();
        store.scan(&filter("acme", &everything), |e| all.push(e.clone()));
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    };
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(read_all(&store), expected);
    let count_holding = |store: &Store, needle: &str| {
        let everything = |_: &LogEntry| true;
        let mut ids = Vec::new();
        store.scan(
            &ScanFilter {
                record_needle: Some((needle.as_bytes(), NeedleScope::Message)),
                core_and_message_only: true,
                message_unread: true,
                ..filter("acme", &everything)
            },
            |e| ids.push(e.timestamp),
        );
        ids.sort();
        ids
    };
    for needle in ["timeout", "db-1", "answered 3 in", "1", "zzz"] {
        // Timestamps are unique here (the scan leaves ids out).
        let mut wanted: Vec<i64> = expected
            .iter()
            .filter(|e| e.message.to_ascii_lowercase().contains(needle))
            .map(|e| e.timestamp)
            .collect();
        wanted.sort();
        assert_eq!(count_holding(&store, needle), wanted, "{needle}");
    }
    drop(store);
    let store = Store::open(config, StorageMetrics::default())
        .await
        .expect("reopen");
    assert_eq!(read_all(&store), expected);
    // Both layouts are on disk.
    let mut formats = BTreeSet::new();
    let mut pending = vec![dir.path().to_path_buf()];
    while let Some(path) = pending.pop() {
        for item in std::fs::read_dir(&path).expect("read dir") {
            let path = item.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|x| x == "seg") {
                let (_, index, _) = open_sealed(&path).expect("sealed segment");
                formats.extend(index.blocks.iter().map(|b| b.format));
            }
        }
    }
    assert_eq!(
        formats,
        BTreeSet::from([FORMAT_ROWS, FORMAT_COLUMNS, FORMAT_TEMPLATES])
    );
}

/// Trace ids of 32 hex digits are kept once per tenant in its trace-id book: entries of
/// several services and tenants read back field for field across a restart, a trace id
/// needle finds exactly its entries, stored bytes count the book, and retention deletes the
/// book's windows once no segment refers to them.
#[tokio::test]
async fn trace_ids_in_the_book_read_back_and_leave_with_their_segments() {
    use logcluster_storage::segment::NeedleScope;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_config(dir.path());
    let trace = |n: u64| {
        format!(
            "{:032x}",
            u128::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c)
        )
    };
    let batch_entries = |tenant: &str, batch: u64| -> Vec<LogEntry> {
        (0..50u32)
            .map(|i| {
                let line = batch * 50 + u64::from(i);
                let mut e = entry(
                    tenant,
                    &format!("svc-{}", line % 5),
                    batch,
                    i,
                    line as i64 * 1_000,
                    Level::Info,
                    &format!("handled request {line}"),
                );
                // A trace spans four lines, so four services; some ids are not hex.
                e.trace_id = if line.is_multiple_of(11) {
                    format!("custom-{}", line / 4)
                } else {
                    trace(line / 4)
                };
                e
            })
            .collect()
    };
    let mut expected: Vec<LogEntry> = Vec::new();
    {
        let store = Store::open(config.clone(), StorageMetrics::default())
            .await
            .expect("open");
        for batch in 1..=60u64 {
            for tenant in ["a", "b"] {
                let entries = batch_entries(tenant, batch);
                if tenant == "a" {
                    expected.extend(entries.clone());
                }
                store.append(batch, entries).await.expect("append");
            }
        }
    }
    let mut config = config;
    config.retention_max_age = Some(Duration::from_secs(3600));
    let metrics = StorageMetrics::default();
    let store = Store::open(config, metrics.clone()).await.expect("reopen");
    let read_all = |store: &Store, predicate: &(dyn Fn(&LogEntry) -> bool + Sync)| {
        let mut all = Vec::new();
        store.scan(&filter("a", predicate), |e| all.push(e.clone()));
        all.sort_by(|x, y| x.id.cmp(&y.id));
        all
    };
    expected.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(read_all(&store, &|_| true), expected);
    for tenant in ["a", "b"] {
        let book = dir.path().join("streams").join(tenant).join(".traces");
        assert!(
            std::fs::read_dir(&book).expect("book").count() > 0,
            "{tenant}"
        );
    }
    // A trace id needle, as a query for `trace_id:<id>` hands storage.
    let wanted = trace(333);
    let mut found = Vec::new();
    let everything = |_: &LogEntry| true;
    store.scan(
        &ScanFilter {
            record_needle: Some((wanted.as_bytes(), NeedleScope::TraceId)),
            ..filter("a", &everything)
        },
        |e| found.push(e.clone()),
    );
    found.sort_by(|x, y| x.id.cmp(&y.id));
    let holding: Vec<LogEntry> = expected
        .iter()
        .filter(|e| e.trace_id == wanted)
        .cloned()
        .collect();
    assert_eq!(found.len(), 4);
    assert_eq!(found, holding);
    // Stored bytes are the files on disk, the book's included.
    let mut on_disk = 0;
    let mut pending = vec![dir.path().join("streams")];
    while let Some(path) = pending.pop() {
        for item in std::fs::read_dir(&path).expect("list") {
            let item = item.expect("entry");
            if item.file_type().expect("type").is_dir() {
                pending.push(item.path());
            } else {
                on_disk += item.metadata().expect("stat").len();
            }
        }
    }
    assert_eq!(store.stats().stored_bytes, on_disk);
    // Every entry is from 1970: retention deletes the sealed segments, then the windows
    // they alone referred to; what is left still reads back whole.
    // Fresh entries fill blocks in a new window (the old ones can then all go: only the
    // highest-numbered window always stays).
    for batch in 61..=80u64 {
        let fresh: Vec<LogEntry> = batch_entries("a", batch)
            .into_iter()
            .map(|mut e| {
                e.timestamp += logcluster_proto::time::now_nanos();
                e
            })
            .collect();
        expected.extend(fresh.clone());
        store.append(batch, fresh).await.expect("append");
    }
    store.maintain().expect("maintain");
    assert!(metrics.retention_deleted_segments.get() > 0);
    assert!(metrics.trace_windows_deleted.get() > 0);
    let left = read_all(&store, &|_| true);
    assert!(left.len() >= 20 * 50, "{}", left.len());
    let by_id: std::collections::HashMap<&str, &LogEntry> =
        expected.iter().map(|e| (e.id.as_str(), e)).collect();
    for entry in &left {
        assert_eq!(Some(&entry), by_id.get(entry.id.as_str()));
    }
}

/// A damaged trace-id window is detected: entries whose trace ids it held are never served
/// with a wrong one, their segments are quarantined (replicas restore them), and everything
/// else, other tenants included, still reads back whole.
#[tokio::test]
async fn a_damaged_trace_id_window_is_detected_and_never_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut expected: Vec<LogEntry> = Vec::new();
    {
        let store = Store::open(small_config(dir.path()), StorageMetrics::default())
            .await
            .expect("open");
        for batch in 1..=30u64 {
            for tenant in ["t", "u"] {
                let entries: Vec<LogEntry> = (0..40u32)
                    .map(|i| {
                        let line = batch * 40 + u64::from(i);
                        let mut e = entry(
                            tenant,
                            &format!("s{}", line % 3),
                            batch,
                            i,
                            line as i64,
                            Level::Info,
                            "payload line",
                        );
                        e.trace_id = format!("{:032x}", u128::from(line / 3) << 64 | 0xabc);
                        e
                    })
                    .collect();
                if tenant == "t" {
                    expected.extend(entries.clone());
                }
                store.append(batch, entries).await.expect("append");
            }
        }
    }
    let book = dir.path().join("streams/t/.traces");
    let mut windows: Vec<_> = std::fs::read_dir(&book)
        .expect("book")
        .map(|e| e.expect("entry").path())
        .collect();
    windows.sort();
    // One id byte in the middle of the first window's first chunk (after magic and header).
    let mut bytes = std::fs::read(&windows[0]).expect("read");
    bytes[8 + 16 + 16 * 3 + 7] ^= 0x20;
    std::fs::write(&windows[0], &bytes).expect("write");

    let metrics = StorageMetrics::default();
    let store = Store::open(small_config(dir.path()), metrics.clone())
        .await
        .expect("reopen");
    let everything = |_: &LogEntry| true;
    let page = store.query_top(&filter("t", &everything), 100_000, None);
    assert!(page.stats.corrupt_blocks >= 1, "{:?}", page.stats);
    assert!(metrics.corrupt_segments.get() >= 1);
    assert!(page.items.len() < expected.len());
    let by_id: std::collections::HashMap<&str, &LogEntry> =
        expected.iter().map(|e| (e.id.as_str(), e)).collect();
    for item in &page.items {
        assert_eq!(Some(&item), by_id.get(item.id.as_str()), "served as stored");
    }
    // The other tenant's book is its own.
    let page = store.query_top(&filter("u", &everything), 100_000, None);
    assert_eq!(page.stats.corrupt_blocks, 0);
    assert_eq!(page.items.len(), expected.len());
}

/// Reads interleaved with appends while the trace-id book rolls over several windows (more
/// distinct trace ids than one window holds): every read finds every entry appended before
/// it, with its trace id.
#[tokio::test]
async fn reads_during_ingest_see_every_trace_id_across_window_rolls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StorageConfig::new(dir.path());
    config.block_target_bytes = 64 * 1024;
    config.segment_max_bytes = 1024 * 1024;
    let store = Store::open(config, StorageMetrics::default())
        .await
        .expect("open");
    let trace = |n: u64| format!("{:032x}", u128::from(n) << 32 | 0x5eed);
    let per_batch = 4_000u64;
    let batches = 40u64;
    for batch in 0..batches {
        let entries: Vec<LogEntry> = (0..per_batch)
            .map(|i| {
                let n = batch * per_batch + i;
                let mut e = entry(
                    "t",
                    &format!("s{}", n % 4),
                    batch + 1,
                    i as u32,
                    n as i64,
                    Level::Info,
                    "m",
                );
                e.trace_id = trace(n);
                e
            })
            .collect();
        store.append(batch + 1, entries).await.expect("append");
        if batch % 4 == 3 {
            let mut seen = 0u64;
            let mut wrong = 0u64;
            let everything = |_: &LogEntry| true;
            let stats = store.scan(&filter("t", &everything), |e| {
                seen += 1;
                if e.trace_id != trace(e.timestamp as u64) {
                    wrong += 1;
                }
            });
            assert_eq!(stats.corrupt_blocks, 0, "after batch {batch}");
            assert_eq!(
                (seen, wrong),
                ((batch + 1) * per_batch, 0),
                "after batch {batch}"
            );
        }
    }
    let windows = std::fs::read_dir(dir.path().join("streams/t/.traces"))
        .expect("book")
        .count();
    assert!(windows >= 2, "{windows} windows");
}

#[tokio::test]
async fn a_stream_part_over_the_record_limit_is_refused_alone_and_a_repair_of_it_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, metrics) = small_store(dir.path()).await;
    // Positions 0 and 2 in stream t/s, 1 in stream t/huge (one entry over the limit).
    let mut batch = numbered_batch(7, 3);
    batch[1].service = "huge".into();
    batch[1].message = "x".repeat(logcluster_storage::wal::MAX_RECORD_LEN);
    let outcome = store
        .append_on_this_thread(7, batch.clone(), None)
        .durable()
        .await
        .expect("the rest is stored");
    assert_eq!((outcome.stored, outcome.too_large), (2, vec![1]));
    assert!(outcome.too_large_bytes > logcluster_storage::wal::MAX_RECORD_LEN);
    assert_eq!(metrics.too_large_parts.get(), 1);
    assert_eq!(
        all_ids(&store, "t"),
        [batch[0].id.clone(), batch[2].id.clone()]
    );
    // A repair must store everything or fail (its source may be deleted on success).
    let error = store
        .append_missing(vec![batch[1].clone()])
        .await
        .expect_err("refused");
    assert!(
        matches!(
            error,
            logcluster_storage::StorageError::RecordTooLarge { .. }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn the_tails_of_many_streams_stay_within_the_memory_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let budget = 64 * 1024;
    let config = || {
        let mut config = StorageConfig::new(dir.path());
        // Far from a full block: without the budget every tail would stay in memory.
        config.block_target_bytes = 1024 * 1024;
        config.tail_memory_bytes = budget;
        config
    };
    let metrics = StorageMetrics::default();
    let store = Store::open(config(), metrics.clone()).await.expect("open");
    let held = || usize::try_from(metrics.tail_bytes.get()).expect("not negative");
    let batch = |uid: u64, service: &str, n: u32| -> Vec<LogEntry> {
        (0..n)
            .map(|i| {
                let ts = uid as i64 * 1000 + i64::from(i);
                let message = format!("{service} handled request {uid}/{i} in 12ms");
                entry("t", service, uid, i, ts, Level::Info, &message)
            })
            .collect()
    };
    // One stream fills most of the budget, then goes idle.
    let mut expected = Vec::new();
    let mut uid = 0;
    while held() < budget * 3 / 4 {
        uid += 1;
        let entries = batch(uid, "idle", 20);
        expected.extend(entries.iter().map(|e| e.id.clone()));
        store.append(uid, entries).await.expect("append");
    }
    let idle_tail = held();
    // Forty streams take turns: the larger tails are cut into blocks early.
    let mut peak = 0;
    for _round in 0..40 {
        for s in 0..40 {
            uid += 1;
            let entries = batch(uid, &format!("s{s}"), 10);
            expected.extend(entries.iter().map(|e| e.id.clone()));
            store.append(uid, entries).await.expect("append");
            peak = peak.max(held());
        }
    }
    let appended = metrics.appended_bytes.get() as usize;
    assert!(appended > 20 * budget, "{appended}");
    // The turning streams' tails stay within about the budget: each is cut once past its
    // share (and the part that took it there).
    assert!(peak <= idle_tail + 2 * budget, "tails held {peak} bytes");
    assert!(metrics.memory_flushes.get() > 0);
    let streams = metrics.tail_streams.get();
    assert!((1..=41).contains(&streams), "{streams}");
    // The idle stream's tail keeps them over the budget after the appends that do not cut
    // theirs (the one after such an append is found at once): maintenance cuts it.
    let mut s = 0;
    while held() <= budget {
        uid += 1;
        let entries = batch(uid, &format!("s{}", s % 40), 10);
        expected.extend(entries.iter().map(|e| e.id.clone()));
        store.append(uid, entries).await.expect("append");
        s += 1;
        assert!(s < 400, "the tails never went over the budget");
    }
    let early = metrics.memory_flushes.get();
    store.maintain().expect("maintain");
    assert!(held() <= budget, "{}", held());
    assert!(metrics.memory_flushes.get() > early);
    // Nothing was lost or doubled by the early blocks, before and after a restart.
    expected.sort();
    assert_eq!(all_ids(&store, "t"), expected);
    drop(store);
    let metrics = StorageMetrics::default();
    let store = Store::open(config(), metrics.clone())
        .await
        .expect("reopen");
    assert_eq!(all_ids(&store, "t"), expected);
    let held = usize::try_from(metrics.tail_bytes.get()).expect("not negative");
    assert!(held <= 2 * budget, "{held}");
}

/// Past `max_streams`, a part that would open a new stream is refused and counted, the
/// batch's other streams are stored, and existing streams keep taking appends; the streams
/// found on disk at a restart count against the limit.
#[tokio::test]
async fn new_streams_past_the_limit_are_refused_and_the_rest_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = small_config(dir.path());
    config.max_streams = 2;
    let metrics = StorageMetrics::default();
    let store = Store::open(config.clone(), metrics.clone())
        .await
        .expect("open");
    let batch = |uid: u64, services: &[&str]| -> Vec<LogEntry> {
        services
            .iter()
            .enumerate()
            .map(|(i, service)| entry("t", service, uid, i as u32, 10 + i as i64, Level::Info, "m"))
            .collect()
    };
    let outcome = store
        .append(1, batch(1, &["a", "b", "c", "a", "c"]))
        .await
        .expect("append");
    assert_eq!(outcome.stored, 3);
    assert_eq!(outcome.too_many_streams, [2, 4]);
    assert_eq!(metrics.streams_refused.get(), 2);
    assert_eq!(store.stats().streams, 2);
    let outcome = store.append(2, batch(2, &["b"])).await.expect("append");
    assert_eq!((outcome.stored, outcome.too_many_streams.len()), (1, 0));
    drop(store);

    let store = Store::open(config, StorageMetrics::default())
        .await
        .expect("reopen");
    let outcome = store.append(3, batch(3, &["d"])).await.expect("append");
    assert_eq!((outcome.stored, outcome.too_many_streams), (0, vec![0]));
    // A repair (hand-over, anti-entropy) stores everything or fails: its source deletes its
    // copy once it succeeds.
    let error = store
        .append_missing(batch(4, &["e"]))
        .await
        .expect_err("a repair into a new stream past the limit fails");
    assert!(
        matches!(
            error,
            logcluster_storage::StorageError::TooManyStreams { limit: 2 }
        ),
        "{error}"
    );
    let everything = |_: &LogEntry| true;
    let page = store.query_top(&filter("t", &everything), 100, None);
    let mut services: Vec<&str> = page.items.iter().map(|e| e.service.as_str()).collect();
    services.sort_unstable();
    assert_eq!(services, ["a", "a", "b", "b"]);
}

/// A stream whose data retention deleted is removed (directory, files, and its slot under
/// `max_streams`), so streams of services that come and go do not stay open for good.
#[tokio::test]
async fn streams_emptied_by_retention_are_removed_and_free_their_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = small_config(dir.path());
    config.max_streams = 1;
    config.segment_max_age = std::time::Duration::ZERO;
    config.retention_max_age = Some(std::time::Duration::from_secs(3600));
    let metrics = StorageMetrics::default();
    let store = Store::open(config, metrics.clone()).await.expect("open");
    // Stamped a day ago: past retention as soon as its segment is sealed.
    let old = logcluster_proto::time::now_nanos() - 86_400 * 1_000_000_000;
    let entries = vec![entry("t", "old", 1, 0, old, Level::Info, "m")];
    assert_eq!(store.append(1, entries).await.expect("append").stored, 1);
    let fresh = |uid: u64, service: &str| {
        vec![entry(
            "t",
            service,
            uid,
            0,
            logcluster_proto::time::now_nanos(),
            Level::Info,
            "m",
        )]
    };
    let refused = store.append(2, fresh(2, "new")).await.expect("append");
    assert_eq!(
        refused.too_many_streams,
        [0],
        "the limit of one stream holds"
    );
    store.maintain().expect("maintain");
    assert_eq!(metrics.retention_deleted_segments.get(), 1);
    assert_eq!(metrics.streams_removed_empty.get(), 1);
    assert_eq!(store.stats().streams, 0);
    assert!(!dir.path().join("streams/t/old").exists());
    let outcome = store.append(3, fresh(3, "new")).await.expect("append");
    assert_eq!((outcome.stored, outcome.too_many_streams.len()), (1, 0));
    // A stream that holds data is never removed.
    store.maintain().expect("maintain");
    assert_eq!(store.stats().streams, 1);
    let everything = |_: &LogEntry| true;
    assert_eq!(
        store
            .query_top(&filter("t", &everything), 10, None)
            .items
            .len(),
        1
    );
}

/// Quarantined copies (`*.corrupt`) count in the stored bytes and are kept for a look until
/// retention wants them: past its age, and first when over its bytes.
#[tokio::test]
async fn quarantined_copies_count_and_go_to_retention_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = small_config(dir.path());
    config.retention_max_age = Some(std::time::Duration::from_secs(3600));
    {
        let store = Store::open(config.clone(), StorageMetrics::default())
            .await
            .expect("open");
        let now = logcluster_proto::time::now_nanos();
        let entries = vec![entry("t", "q", 1, 0, now, Level::Info, "m")];
        store.append(1, entries).await.expect("append");
    }
    let stream_dir = dir.path().join("streams/t/q");
    let old = stream_dir.join("seg-0000000000000007.seg.corrupt");
    let recent = stream_dir.join("seg-0000000000000008.seg.corrupt");
    std::fs::write(&old, vec![1u8; 1000]).expect("write");
    std::fs::write(&recent, vec![2u8; 500]).expect("write");
    std::fs::File::options()
        .write(true)
        .open(&old)
        .and_then(|f| {
            f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
        })
        .expect("age it");

    let metrics = StorageMetrics::default();
    let store = Store::open(config.clone(), metrics.clone())
        .await
        .expect("reopen");
    let before = store.stats().stored_bytes;
    store.maintain().expect("maintain");
    assert!(!old.exists(), "past the age limit");
    assert!(recent.exists(), "kept for a look");
    assert_eq!(metrics.retention_deleted_quarantined.get(), 1);
    assert_eq!(store.stats().stored_bytes, before + 500);
    drop(store);

    // Over the byte limit, the quarantined copy goes before any segment.
    config.retention_max_bytes = Some(1);
    let metrics = StorageMetrics::default();
    let store = Store::open(config, metrics.clone()).await.expect("reopen");
    store.maintain().expect("maintain");
    assert!(!recent.exists());
    assert_eq!(metrics.retention_deleted_quarantined.get(), 1);
}
