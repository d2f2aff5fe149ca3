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

/// Fsyncs the dirty WAL of each stream, in parallel.
pub async fn sync_streams(
    streams: Vec<Arc<Stream>>,
    metrics: &StorageMetrics,
) -> Result<(), String> {
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
