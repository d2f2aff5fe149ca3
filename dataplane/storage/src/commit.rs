//! Group commit: appenders write their WAL records, then wait here; one committer task
//! makes every dirty stream touched since its last round durable and wakes all waiters of
//! that round together. Under load a round covers many batches, so the sync cost per batch
//! falls as the load grows.
//!
//! A round fsyncs each dirty WAL (in parallel on blocking threads), or, with at least
//! [`SYNCFS_FROM`] of them on the data directory's file system, syncs that file system once
//! (`syncfs`): with hundreds of streams (services) in every batch, one fsync per stream per
//! round was most of a node's system time.
//!
//! A failed sync is final for the streams it covered (see `Stream::mark_sync_failed`): the
//! kernel reports a write error once and may then count the lost pages as written.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tracing::{error, info};

use crate::stream::Stream;
use crate::{StorageError, StorageMetrics};

pub struct CommitRequest {
    pub streams: Vec<Arc<Stream>>,
    pub done: oneshot::Sender<Result<(), String>>,
}

/// From this many dirty WALs on the data directory's file system, a round syncs the file
/// system once instead of each WAL.
pub const SYNCFS_FROM: usize = 8;

/// How rounds make WALs durable.
pub(crate) struct Syncer {
    /// The data directory's device and a handle of the directory opened before any WAL of
    /// this process was written, when its file system may be synced at once: `syncfs`
    /// through this handle reports every write error on the file system since it was opened
    /// (once; see the module docs).
    file_system: Option<(u64, File)>,
    /// A `syncfs` failed: rounds fsync each WAL from then on. The handle reports a write error
    /// on the file system once, so a later `syncfs` would succeed over pages lost to it that
    /// belong to WALs the failed round did not cover (written meanwhile, or written back by
    /// the kernel's flusher); each WAL's own fsync reports its own errors.
    file_system_failed: std::sync::atomic::AtomicBool,
    fsync: fn(&File) -> std::io::Result<()>,
    syncfs: fn(&File) -> std::io::Result<()>,
}

impl Syncer {
    /// A syncer for the streams under `data_dir` (which exists): `syncfs` where
    /// [`file_system_sync_usable`] says it is sound, fsyncs otherwise.
    pub(crate) fn new(data_dir: &Path) -> Syncer {
        let file_system = File::open(data_dir).ok().and_then(|dir| {
            let meta = dir.metadata().ok()?;
            file_system_sync_usable(&dir).then(|| (std::os::unix::fs::MetadataExt::dev(&meta), dir))
        });
        match &file_system {
            Some(_) => info!(
                data_dir = %data_dir.display(),
                from = SYNCFS_FROM,
                "commit rounds with many dirty WALs sync the data directory's file system at once"
            ),
            None => info!(
                data_dir = %data_dir.display(),
                "commit rounds fsync each dirty WAL (syncfs is not relied on for this file system or kernel)"
            ),
        }
        Syncer {
            file_system,
            file_system_failed: Default::default(),
            fsync: File::sync_data,
            syncfs: syncfs_of,
        }
    }

    /// Whether rounds may sync the file system at once.
    pub(crate) fn syncs_file_system(&self) -> bool {
        self.usable_file_system().is_some()
    }

    /// The data directory's device and handle while rounds may sync it at once.
    fn usable_file_system(&self) -> Option<&(u64, File)> {
        self.file_system
            .as_ref()
            .filter(|_| !self.file_system_failed.load(Ordering::Relaxed))
    }
}

#[cfg(target_os = "linux")]
fn syncfs_of(file: &File) -> std::io::Result<()> {
    rustix::fs::syncfs(file).map_err(std::io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn syncfs_of(_: &File) -> std::io::Result<()> {
    Err(std::io::Error::other("syncfs is Linux only"))
}

/// What a round could not make durable: the streams that failed, each with why, or (a task
/// that died) every stream of the round.
#[derive(Debug, Default)]
pub(crate) struct Failures {
    /// By the stream's address.
    streams: HashMap<usize, String>,
    all: Option<String>,
}

impl Failures {
    fn stream(&mut self, stream: &Arc<Stream>, error: String) {
        self.streams
            .entry(Arc::as_ptr(stream) as usize)
            .or_insert(error);
    }

    fn is_empty(&self) -> bool {
        self.streams.is_empty() && self.all.is_none()
    }

    /// Why one of `streams` failed, if one did.
    fn of(&self, streams: &[Arc<Stream>]) -> Option<&String> {
        self.all.as_ref().or_else(|| {
            streams
                .iter()
                .find_map(|stream| self.streams.get(&(Arc::as_ptr(stream) as usize)))
        })
    }

    /// One message for them all (a flush of every stream).
    pub(crate) fn into_message(self) -> String {
        let count = self.streams.len();
        match (self.all, self.streams.into_values().next()) {
            (Some(all), _) => all,
            (None, Some(first)) if count > 1 => format!("{first} (and {} more WALs)", count - 1),
            (None, Some(first)) => first,
            (None, None) => String::new(),
        }
    }
}

/// Runs until every sender is dropped. A request is answered with a failure only when one of
/// its own streams failed: a stream that cannot be written or synced does not hold up the
/// batches of the others.
pub(crate) async fn run_committer(
    mut rx: mpsc::Receiver<CommitRequest>,
    syncer: Arc<Syncer>,
    metrics: StorageMetrics,
) {
    let mut pending: Vec<CommitRequest> = Vec::new();
    while let Some(first) = rx.recv().await {
        pending.push(first);
        while let Ok(more) = rx.try_recv() {
            pending.push(more);
        }
        // Each stream once (by address: a hundred batches over 400 streams each are common).
        let mut seen: HashSet<usize> = HashSet::new();
        let mut streams: Vec<Arc<Stream>> = Vec::new();
        for request in &pending {
            for stream in &request.streams {
                if seen.insert(Arc::as_ptr(stream) as usize) {
                    streams.push(stream.clone());
                }
            }
        }
        let failures = match sync_streams(streams, &syncer, &metrics).await {
            Ok(()) => Failures::default(),
            Err(failures) => {
                let failed = failures.all.iter().chain(failures.streams.values()).next();
                error!(
                    error = failed.map(String::as_str).unwrap_or_default(),
                    streams = failures.streams.len(),
                    "wal write or sync failed; the batches of the affected streams are answered retry-later"
                );
                failures
            }
        };
        for request in pending.drain(..) {
            let answer = match failures.of(&request.streams) {
                Some(error) => Err(error.clone()),
                None => Ok(()),
            };
            let _ = request.done.send(answer);
        }
    }
}

/// Makes the dirty WAL of each stream durable (writing the records that wait for it first):
/// each with its own fsync, in parallel, or (at least [`SYNCFS_FROM`] on the data
/// directory's file system, where that is sound) that file system at once.
pub(crate) async fn sync_streams(
    streams: Vec<Arc<Stream>>,
    syncer: &Arc<Syncer>,
    metrics: &StorageMetrics,
) -> Result<(), Failures> {
    let (together, mut streams): (Vec<_>, Vec<_>) = match syncer.usable_file_system() {
        Some((device, _)) => streams
            .into_iter()
            .partition(|stream| stream.device == Some(*device)),
        None => (Vec::new(), streams),
    };
    let together = if together.len() >= SYNCFS_FROM {
        together
    } else {
        streams.extend(together);
        Vec::new()
    };
    let mut failures = Failures::default();
    if !together.is_empty() {
        let (syncer, metrics) = (syncer.clone(), metrics.clone());
        match tokio::task::spawn_blocking(move || sync_file_system(&together, &syncer, &metrics))
            .await
        {
            Ok(synced) => failures = synced,
            Err(join) => failures.all = Some(join.to_string()),
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for stream in streams {
        let (metrics, fsync) = (metrics.clone(), syncer.fsync);
        tasks.spawn_blocking(move || {
            let outcome = (|| -> Result<(), StorageError> {
                let Some(file) = stream.take_dirty_wal()? else {
                    return Ok(());
                };
                let started = Instant::now();
                let result = fsync(&file);
                metrics
                    .fsync_seconds
                    .observe(started.elapsed().as_secs_f64());
                metrics.fsyncs.inc();
                result.map_err(|e| {
                    let error =
                        StorageError::Fsync(format!("{}/{}: {e}", stream.tenant, stream.service));
                    stream.mark_sync_failed(&error.to_string());
                    error
                })?;
                // A seal's sync of the same file may have been the one told of an error.
                stream.check_synced()
            })();
            (stream, outcome)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((stream, Err(error))) => {
                failures.stream(&stream, logcluster_common::error_chain(&error))
            }
            Err(join) => {
                failures.all.get_or_insert(join.to_string());
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

/// Syncs the file system that holds the WALs of `streams` once, if any of them is dirty
/// (writing each one's waiting records first). Every stream is looked at (and its dirty mark
/// taken) before the call: each write of a batch that waits for this round finished before
/// the round began.
fn sync_file_system(
    streams: &[Arc<Stream>],
    syncer: &Syncer,
    metrics: &StorageMetrics,
) -> Failures {
    let mut failures = Failures::default();
    let Some((_, dir)) = &syncer.file_system else {
        failures.all = Some("no file system to sync".to_string());
        return failures;
    };
    let mut dirty = Vec::with_capacity(streams.len());
    for stream in streams {
        match stream.take_dirty() {
            Ok(true) => dirty.push(stream),
            Ok(false) => {}
            Err(error) => failures.stream(stream, logcluster_common::error_chain(&error)),
        }
    }
    if !dirty.is_empty() {
        let started = Instant::now();
        let result = (syncer.syncfs)(dir);
        metrics
            .file_system_sync_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.file_system_syncs.inc();
        if let Err(e) = result {
            if !syncer.file_system_failed.swap(true, Ordering::Relaxed) {
                error!(error = %e, "syncfs of the data directory's file system failed: commit rounds fsync each WAL from now on");
            }
            // Which file's pages were lost is unknown: every WAL the sync covered.
            let error = format!(
                "syncfs of the data directory's file system ({} WALs, among them {}/{}): {e}",
                dirty.len(),
                dirty[0].tenant,
                dirty[0].service
            );
            for stream in dirty {
                stream.mark_sync_failed(&error);
                failures.stream(stream, error.clone());
            }
        } else {
            // As after an fsync (see `Stream::check_synced`): a seal's sync of a WAL may have
            // been told of an error that a later sync no longer reports.
            for stream in dirty {
                if let Err(error) = stream.check_synced() {
                    failures.stream(stream, logcluster_common::error_chain(&error));
                }
            }
        }
    }
    failures
}

/// Whether `syncfs` through a handle of `dir` is as sound as an fsync of each file there:
/// Linux 5.8 or later (earlier, `syncfs` answered success whatever happened), on a local
/// file system whose sync is known to write and flush every file's data (ext2/3/4, XFS,
/// Btrfs, F2FS; not network, FUSE or overlay file systems, whose errors it may not report).
pub fn file_system_sync_usable(dir: &File) -> bool {
    kernel_reports_syncfs_errors() && local_file_system(dir)
}

#[cfg(target_os = "linux")]
fn local_file_system(dir: &File) -> bool {
    const EXT: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683E;
    const F2FS: i64 = 0xF2F5_2010;
    // `f_type`'s width differs by architecture.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::fstatfs(dir)
        .map(|stat| [EXT, XFS, BTRFS, F2FS].contains(&(stat.f_type as i64)))
        .unwrap_or(false)
}

#[cfg(not(target_os = "linux"))]
fn local_file_system(_: &File) -> bool {
    false
}

fn kernel_reports_syncfs_errors() -> bool {
    static REPORTS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REPORTS.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|release| kernel_at_least(&release, (5, 8)))
            .unwrap_or(false)
    })
}

/// Whether a kernel release string (`6.1.0-18-amd64`) is at least `major.minor`.
fn kernel_at_least(release: &str, (major, minor): (u32, u32)) -> Option<bool> {
    let mut parts = release.trim().split(['.', '-']);
    let got_major: u32 = parts.next()?.parse().ok()?;
    let got_minor: u32 = parts.next()?.parse().ok()?;
    Some((got_major, got_minor) >= (major, minor))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::StorageConfig;
    use crate::stream::{Appended, Lock, Part};
    use crate::traces::TraceBook;

    /// A round's outcome as one message.
    async fn round(
        streams: Vec<Arc<Stream>>,
        syncer: &Arc<Syncer>,
        metrics: &StorageMetrics,
    ) -> Result<(), String> {
        sync_streams(streams, syncer, metrics)
            .await
            .map_err(Failures::into_message)
    }

    #[test]
    fn kernel_releases_compare_by_major_then_minor() {
        assert_eq!(kernel_at_least("5.8.0", (5, 8)), Some(true));
        assert_eq!(kernel_at_least("6.1.0-18-amd64\n", (5, 8)), Some(true));
        assert_eq!(kernel_at_least("5.10.0", (5, 8)), Some(true));
        assert_eq!(kernel_at_least("5.4.0-150-generic", (5, 8)), Some(false));
        assert_eq!(kernel_at_least("4.19.0", (5, 8)), Some(false));
        assert_eq!(kernel_at_least("6", (5, 8)), None);
        assert_eq!(kernel_at_least("", (5, 8)), None);
    }

    /// `n` streams of tenant `t` under `dir`, each with one batch written (dirty).
    fn dirty_streams(dir: &Path, n: usize, metrics: &StorageMetrics) -> Vec<Arc<Stream>> {
        let config = StorageConfig::new(dir);
        let book = Arc::new(TraceBook::open(&dir.join("t")).expect("book"));
        (0..n)
            .map(|i| {
                let service = format!("s{i}");
                let stream = Stream::open(
                    "t",
                    &service,
                    dir.join("t").join(&service),
                    &config,
                    metrics,
                    book.clone(),
                )
                .expect("stream");
                let entry = logcluster_proto::LogEntry {
                    id: format!("{:016x}-{:08x}", 7, i),
                    timestamp: 1,
                    tenant: "t".into(),
                    service,
                    message: "m".into(),
                    ..Default::default()
                };
                let appended = stream
                    .append(
                        Lock::Wait,
                        7,
                        Part::Owned(vec![entry]),
                        &config,
                        metrics,
                        false,
                        None,
                    )
                    .expect("append");
                assert!(matches!(appended, Appended::Stored));
                Arc::new(stream)
            })
            .collect()
    }

    static SYNCFS_CALLS: AtomicUsize = AtomicUsize::new(0);
    static FSYNC_CALLS: AtomicUsize = AtomicUsize::new(0);

    fn syncer(dir: &Path, syncfs: fn(&File) -> std::io::Result<()>) -> Arc<Syncer> {
        let handle = File::open(dir).expect("dir");
        let device = std::os::unix::fs::MetadataExt::dev(&handle.metadata().expect("meta"));
        Arc::new(Syncer {
            file_system: Some((device, handle)),
            file_system_failed: Default::default(),
            fsync: |file| {
                FSYNC_CALLS.fetch_add(1, Ordering::SeqCst);
                file.sync_data()
            },
            syncfs,
        })
    }

    fn broken(_: &File) -> std::io::Result<()> {
        Err(std::io::Error::other("injected write error"))
    }

    /// One syncfs for a round of many dirty WALs, none for a round with nothing dirty, and a
    /// failed one is final: every stream it covered refuses later rounds, even when syncs
    /// succeed again (the lost pages would count as written), while other streams go on.
    #[tokio::test]
    async fn a_failed_file_system_sync_fails_every_later_round_of_its_streams() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = StorageMetrics::default();
        let streams = dirty_streams(dir.path(), SYNCFS_FROM + 2, &metrics);
        let counting: fn(&File) -> std::io::Result<()> = |file| {
            SYNCFS_CALLS.fetch_add(1, Ordering::SeqCst);
            syncfs_of(file)
        };
        let good = syncer(dir.path(), counting);
        let before = SYNCFS_CALLS.load(Ordering::SeqCst);
        round(streams.clone(), &good, &metrics)
            .await
            .expect("synced");
        assert_eq!(SYNCFS_CALLS.load(Ordering::SeqCst), before + 1);
        assert_eq!(metrics.file_system_syncs.get(), 1);
        // Nothing dirty: no sync at all.
        round(streams.clone(), &good, &metrics)
            .await
            .expect("clean");
        assert_eq!(metrics.file_system_syncs.get(), 1);

        let more = dirty_streams(&dir.path().join("more"), SYNCFS_FROM, &metrics);
        let failing = syncer(dir.path(), broken);
        let error = round(more.clone(), &failing, &metrics)
            .await
            .expect_err("the injected error");
        assert!(error.contains("injected write error"), "{error}");
        assert_eq!(metrics.wal_sync_failures.get(), SYNCFS_FROM as u64);
        // That syncer's handle reported the error once: its later rounds fsync each WAL,
        // whose own errors their fsyncs report.
        assert!(!failing.syncs_file_system());
        let others = dirty_streams(&dir.path().join("others"), SYNCFS_FROM + 1, &metrics);
        let fsyncs = FSYNC_CALLS.load(Ordering::SeqCst);
        round(others, &failing, &metrics)
            .await
            .expect("fsynced one by one");
        assert!(FSYNC_CALLS.load(Ordering::SeqCst) > fsyncs + SYNCFS_FROM);
        assert_eq!(metrics.wal_sync_failures.get(), SYNCFS_FROM as u64);
        for attempt in 0..2 {
            let error = round(more.clone(), &good, &metrics)
                .await
                .expect_err("refused after the failure");
            assert!(error.contains("earlier sync"), "attempt {attempt}: {error}");
        }
        // The streams the failed sync did not cover are unaffected.
        round(streams, &good, &metrics)
            .await
            .expect("other streams");
    }

    /// The stream whose sync fails (as a seal's sync of the same WAL would) while
    /// [`seal_saw_the_error`] runs as a round's fsync.
    static FAILS_MEANWHILE: std::sync::Mutex<Option<Arc<Stream>>> = std::sync::Mutex::new(None);

    /// A round's fsync that succeeds while another sync of the same file, sharing its error
    /// record, is the one told of the write error.
    fn seal_saw_the_error(file: &File) -> std::io::Result<()> {
        if let Some(stream) = FAILS_MEANWHILE.lock().expect("lock").take() {
            stream.mark_sync_failed("EIO, reported to the seal's sync");
        }
        file.sync_data()
    }

    /// A round's fsync that succeeds proves nothing when a sync of the same WAL through the
    /// other handle failed meanwhile (the kernel tells one of them): the round fails too.
    #[tokio::test]
    async fn a_round_fails_when_another_sync_of_its_wal_failed_meanwhile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = StorageMetrics::default();
        let streams = dirty_streams(dir.path(), 2, &metrics);
        *FAILS_MEANWHILE.lock().expect("lock") = Some(streams[0].clone());
        let syncer = Arc::new(Syncer {
            file_system_failed: Default::default(),
            file_system: None,
            fsync: seal_saw_the_error,
            syncfs: broken,
        });
        let Err(failures) = sync_streams(streams.clone(), &syncer, &metrics).await else {
            panic!("the failed stream's batches must not be acknowledged");
        };
        assert_eq!(failures.streams.len(), 1, "the other stream synced");
        assert!(
            failures
                .of(&streams[..1])
                .is_some_and(|e| e.contains("EIO"))
        );
        assert!(failures.of(&streams[1..]).is_none());
    }

    /// Below `SYNCFS_FROM` each dirty WAL is fsynced; a failed fsync is final for its stream
    /// alone.
    #[tokio::test]
    async fn a_failed_fsync_fails_every_later_round_of_its_stream_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = StorageMetrics::default();
        let streams = dirty_streams(dir.path(), 3, &metrics);
        let before = FSYNC_CALLS.load(Ordering::SeqCst);
        let good = syncer(dir.path(), broken);
        round(streams.clone(), &good, &metrics)
            .await
            .expect("three fsyncs, no syncfs");
        assert!(FSYNC_CALLS.load(Ordering::SeqCst) >= before + 3);
        assert_eq!(metrics.file_system_syncs.get(), 0);

        let bad = Arc::new(Syncer {
            file_system_failed: Default::default(),
            file_system: None,
            fsync: broken,
            syncfs: broken,
        });
        let more = dirty_streams(&dir.path().join("more"), 2, &metrics);
        round(more[..1].to_vec(), &bad, &metrics)
            .await
            .expect_err("the injected error");
        round(more.clone(), &good, &metrics)
            .await
            .expect_err("the failed stream refuses");
        round(more[1..].to_vec(), &good, &metrics)
            .await
            .expect("the other stream syncs");
        assert_eq!(metrics.wal_sync_failures.get(), 1);
        // Nothing more is written to the failed WAL: appends are refused at once.
        let config = StorageConfig::new(dir.path());
        let entry = logcluster_proto::LogEntry {
            id: format!("{:016x}-{:08x}", 8, 0),
            timestamp: 2,
            tenant: "t".into(),
            service: "s0".into(),
            message: "m".into(),
            ..Default::default()
        };
        let refused = more[0].append(
            Lock::Wait,
            8,
            Part::Owned(vec![entry]),
            &config,
            &metrics,
            false,
            None,
        );
        assert!(
            matches!(&refused, Err(StorageError::Fsync(e)) if e.contains("earlier sync")),
            "{:?}",
            refused.err()
        );
    }

    /// A batch is answered with a failure only when one of its own streams failed.
    #[tokio::test]
    async fn a_failed_stream_fails_only_the_batches_that_hold_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = StorageMetrics::default();
        let streams = dirty_streams(dir.path(), 2, &metrics);
        streams[0].mark_sync_failed("injected");
        let (tx, rx) = mpsc::channel(8);
        let syncer = Arc::new(Syncer {
            file_system_failed: Default::default(),
            file_system: None,
            fsync: File::sync_data,
            syncfs: broken,
        });
        tokio::spawn(run_committer(rx, syncer, metrics.clone()));
        let mut answers = Vec::new();
        for held in [
            vec![streams[0].clone(), streams[1].clone()],
            vec![streams[1].clone()],
        ] {
            let (done, answer) = oneshot::channel();
            tx.send(CommitRequest {
                streams: held,
                done,
            })
            .await
            .expect("send");
            answers.push(answer);
        }
        let second = answers.pop().expect("second").await.expect("answer");
        let first = answers.pop().expect("first").await.expect("answer");
        assert!(first.is_err_and(|e| e.contains("earlier sync")));
        assert_eq!(second, Ok(()));
    }
}
