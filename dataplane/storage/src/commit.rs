//! Group commit: appenders write their WAL records, then wait here; one committer task
//! fsyncs every dirty stream touched since its last round (in parallel on blocking threads)
//! and wakes all waiters of that round together. Under load a round covers many batches, so
//! the fsync cost per batch falls as the load grows.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tracing::error;

use crate::stream::Stream;
use crate::{StorageError, StorageMetrics};

pub struct CommitRequest {
    pub streams: Vec<Arc<Stream>>,
    pub done: oneshot::Sender<Result<(), String>>,
}

/// Runs until every sender is dropped.
pub async fn run_committer(mut rx: mpsc::Receiver<CommitRequest>, metrics: StorageMetrics) {
    let mut pending: Vec<CommitRequest> = Vec::new();
    while let Some(first) = rx.recv().await {
        pending.push(first);
        while let Ok(more) = rx.try_recv() {
            pending.push(more);
        }
        let mut streams: Vec<Arc<Stream>> = Vec::new();
        for request in &pending {
            for stream in &request.streams {
                if !streams.iter().any(|s| Arc::ptr_eq(s, stream)) {
                    streams.push(stream.clone());
                }
            }
        }
        let result = sync_streams(streams, &metrics).await;
        if let Err(message) = &result {
            error!(error = %message, "wal fsync failed; the affected batches are answered retry-later");
        }
        for request in pending.drain(..) {
            let _ = request.done.send(result.clone());
        }
    }
}

/// From this many dirty WALs on one file system, a round flushes the file system once
/// (`syncfs`) instead of each WAL: with hundreds of streams (services) in every batch, one
/// fsync per stream per round was most of a node's system time.
pub const SYNCFS_FROM: usize = 32;

/// Makes the dirty WAL of each stream durable: each with its own fsync, in parallel, or (many
/// on one file system, where `syncfs` reports write errors) the file system at once.
pub async fn sync_streams(
    streams: Vec<Arc<Stream>>,
    metrics: &StorageMetrics,
) -> Result<(), String> {
    let streams = if streams.len() >= SYNCFS_FROM && syncfs_usable() {
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || sync_file_systems(streams, &metrics))
            .await
            .map_err(|join| join.to_string())??
    } else {
        streams
    };
    let mut tasks = tokio::task::JoinSet::new();
    for stream in streams {
        let metrics = metrics.clone();
        tasks.spawn_blocking(move || -> Result<(), StorageError> {
            let Some(file) = stream.take_dirty_wal()? else {
                return Ok(());
            };
            let started = Instant::now();
            let result = file.sync_data();
            metrics
                .fsync_seconds
                .observe(started.elapsed().as_secs_f64());
            metrics.fsyncs.inc();
            result.map_err(|e| {
                stream.mark_dirty();
                StorageError::Fsync(format!("{}/{}: {e}", stream.tenant, stream.service))
            })
        });
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let outcome = match joined {
            Ok(inner) => inner.map_err(|e| e.to_string()),
            Err(join) => Err(join.to_string()),
        };
        if let Err(e) = outcome {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Flushes each file system that holds at least [`SYNCFS_FROM`] of the streams' dirty WALs
/// with one `syncfs`; returns the streams left for an fsync each (on other file systems).
fn sync_file_systems(
    streams: Vec<Arc<Stream>>,
    metrics: &StorageMetrics,
) -> Result<Vec<Arc<Stream>>, String> {
    use std::os::unix::fs::MetadataExt;
    let mut by_device: std::collections::HashMap<u64, Vec<(Arc<Stream>, std::fs::File)>> =
        std::collections::HashMap::new();
    for stream in streams {
        let Some(file) = stream.take_dirty_wal().map_err(|e| e.to_string())? else {
            continue;
        };
        match file.metadata() {
            Ok(meta) => by_device
                .entry(meta.dev())
                .or_default()
                .push((stream, file)),
            Err(e) => {
                stream.mark_dirty();
                return Err(format!("{}/{}: {e}", stream.tenant, stream.service));
            }
        }
    }
    let mut rest = Vec::new();
    let mut first_error = None;
    for (_, group) in by_device {
        if group.len() < SYNCFS_FROM {
            for (stream, _) in group {
                stream.mark_dirty();
                rest.push(stream);
            }
            continue;
        }
        let started = Instant::now();
        // Everything written to the file system before the call is durable after it, and
        // a write error since the file was opened is reported (Linux 5.8 and later).
        let result = rustix::fs::syncfs(&group[0].1);
        metrics
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.file_system_syncs.inc();
        if let Err(e) = result {
            for (stream, _) in &group {
                stream.mark_dirty();
            }
            let (stream, _) = &group[0];
            first_error.get_or_insert(format!(
                "syncfs of the file system of {} WALs (through {}/{}): {e}",
                group.len(),
                stream.tenant,
                stream.service
            ));
        }
    }
    first_error.map_or(Ok(rest), Err)
}

/// Whether commit rounds may use `syncfs`: only where it reports write errors, which Linux
/// does since 5.8 (before, it answered success whatever happened, so each WAL is fsynced
/// instead).
pub fn syncfs_usable() -> bool {
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
    use super::kernel_at_least;

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
}
