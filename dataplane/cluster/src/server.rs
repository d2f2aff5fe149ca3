//! The storage member's side of replication: applying appends (replica writes, hints,
//! repairs) and handing hints off to their owners.
//!
//! Must not: acknowledge an append before it is durable — the replication client counts
//! the answer toward the write quorum.

use std::sync::Arc;
use std::time::Duration;

use logcluster_common::error_chain;
use logcluster_storage::wal::EntryBodies;
use logcluster_storage::{Store, Written};
use prost::Message;
use tracing::{debug, info, warn};

use crate::hints::HintStore;
use crate::messages::{AppendReply, AppendRequest, Kind, entry_spans, plain_write};
use crate::replication::Cluster;

/// Applies one `Append` call on this storage member (`name`). The request is decoded on a
/// blocking thread, and a replica write is stored on that same thread while its entries are
/// in the core's cache ([`Store::append_on_this_thread`]); only the wait for durability is
/// async.
///
/// A leaving member takes no new data: what it acknowledged now might be on no owner once it
/// is removed (it may have reported itself drained already). Refused (and counted), the
/// writer keeps the copy as a hint on a member that stays. Only a writer with a stale view
/// still sends here.
pub async fn handle_append(
    cluster: &Cluster,
    name: &str,
    store: &Arc<Store>,
    hints: &Arc<HintStore>,
    payload: Vec<u8>,
) -> Result<Vec<u8>, String> {
    if cluster.view().members.is_leaving(name) {
        cluster.metrics().appends_refused_leaving.inc();
        return Err(format!("member {name} is leaving and takes no new writes"));
    }
    enum Decoded {
        Hinted(u64),
        Repair(Vec<logcluster_proto::LogEntry>),
        Stored(Written),
    }
    let (store_for_task, hints) = (store.clone(), hints.clone());
    let decoded = tokio::task::spawn_blocking(move || -> Result<Decoded, String> {
        // The usual case: a replica write stored from views of the received bytes, without
        // an entry allocated (anything else, or bytes that do not read as entries, is
        // decoded whole below, which also says what is wrong).
        if let Some(write) = plain_write(&payload) {
            let bodies = EntryBodies {
                source: &payload,
                spans: write.spans,
            };
            return Ok(Decoded::Stored(
                store_for_task.append_received_on_this_thread(
                    write.batch_uid,
                    write.entries,
                    &bodies,
                ),
            ));
        }
        let request = AppendRequest::decode(payload.as_slice())
            .map_err(|e| format!("append request is not valid protobuf: {e}"))?;
        if !request.hint_for.is_empty() {
            let count = request.entries.len() as u64;
            hints
                .append(&request.hint_for, &request)
                .map_err(|e| error_chain(&e))?;
            Ok(Decoded::Hinted(count))
        } else if request.repair {
            Ok(Decoded::Repair(request.entries))
        } else {
            // The WAL records are assembled from the entries' received bytes.
            let bodies = entry_spans(&payload)
                .filter(|spans| spans.len() == request.entries.len())
                .map(|spans| EntryBodies {
                    source: &payload,
                    spans,
                });
            Ok(Decoded::Stored(store_for_task.append_on_this_thread(
                request.batch_uid,
                request.entries,
                bodies.as_ref(),
            )))
        }
    })
    .await
    .map_err(|e| format!("append task failed: {e}"))??;
    let reply = match decoded {
        Decoded::Hinted(count) => AppendReply {
            stored: count,
            duplicates: 0,
        },
        Decoded::Repair(entries) => {
            let outcome = store
                .append_missing(entries)
                .await
                .map_err(|e| format!("repair write failed: {}", error_chain(&e)))?;
            AppendReply {
                stored: outcome.stored as u64,
                duplicates: outcome.duplicates as u64,
            }
        }
        Decoded::Stored(appended) => {
            let outcome = appended
                .durable()
                .await
                .map_err(|e| format!("replica write failed: {}", error_chain(&e)))?;
            if !outcome.too_large.is_empty() {
                // Senders leave such parts out (`EncodedBatch`); never answer as stored.
                return Err(format!(
                    "replica write refused: {} entries are in a stream part over the {}-byte limit of a write-ahead log record",
                    outcome.too_large.len(),
                    logcluster_storage::wal::MAX_RECORD_LEN
                ));
            }
            if !outcome.too_many_streams.is_empty() {
                // Members run without the limit (see `storage.maxStreams`); were one set,
                // never answer the refused entries as stored.
                return Err(format!(
                    "replica write refused: {} entries would start a new stream on a member that holds its limit of {} streams (storage.maxStreams)",
                    outcome.too_many_streams.len(),
                    store.config().max_streams
                ));
            }
            AppendReply {
                stored: outcome.stored as u64,
                duplicates: outcome.duplicates as u64,
            }
        }
    };
    Ok(reply.encode_to_vec())
}

/// Offers stored hints to their members every `interval` until `stop` resolves.
pub async fn run_handoff(
    cluster: Arc<Cluster>,
    hints: Arc<HintStore>,
    window: Duration,
    interval: Duration,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut stop => return,
        }
        let pending: u64 = {
            let hints = hints.clone();
            tokio::task::spawn_blocking(move || hints.pending_bytes().values().sum())
                .await
                .unwrap_or(0)
        };
        cluster.metrics().hints_pending_bytes.set(pending as i64);
        if pending == 0 {
            continue;
        }
        let members = {
            let hints = hints.clone();
            tokio::task::spawn_blocking(move || hints.members())
                .await
                .unwrap_or_default()
        };
        for member in members {
            let view = cluster.view();
            // Only a member missing from a known, non-empty membership has left, or one
            // marked leaving (it takes no new writes); an empty view (this node is still
            // starting) says nothing about it.
            let gone = view.members.get(&member).is_none() || view.members.is_leaving(&member);
            if gone && !view.ring.members().is_empty() {
                // The member left the cluster or is leaving it: its partitions have new
                // owners, and the hinted entries go to them instead.
                redirect_member(&cluster, &hints, &member, window).await;
                continue;
            }
            if !cluster.is_up(&member, &view) {
                // Nothing is delivered to a member that is down, but what it has missed for
                // longer than the window is dropped all the same (anti-entropy repairs it
                // from the other replicas when it is back).
                expire_member(&cluster, &hints, &member, window).await;
                continue;
            }
            deliver_member(&cluster, &hints, &member, window).await;
        }
    }
}

/// Drops a member's hint files older than the window (on a blocking thread), counted as
/// expired.
async fn expire_member(
    cluster: &Arc<Cluster>,
    hints: &Arc<HintStore>,
    member: &str,
    window: Duration,
) {
    let (store, name) = (hints.clone(), member.to_string());
    match tokio::task::spawn_blocking(move || store.expire(&name, window)).await {
        Ok(Ok(0)) | Err(_) => {}
        Ok(Ok(dropped)) => {
            cluster.metrics().hints_expired.inc_by(dropped as u64);
            warn!(
                member,
                hints = dropped,
                "dropped hints older than the hint window for a member that is down; anti-entropy repairs it from the other replicas"
            );
        }
        Ok(Err(error)) => warn!(%error, member, "cannot expire hints"),
    }
}

/// The oldest hint file of a member and its records, read on a blocking thread.
async fn take_oldest(
    hints: &Arc<HintStore>,
    member: &str,
) -> Result<Result<Option<crate::hints::HintFile>, crate::hints::HintError>, tokio::task::JoinError>
{
    let hints = hints.clone();
    let member = member.to_string();
    tokio::task::spawn_blocking(move || hints.take_oldest(&member)).await
}

/// Counts and logs the corrupt records of a hint file (once: the file is set aside as
/// `.corrupt` after its readable hints are delivered).
fn note_corrupt(cluster: &Arc<Cluster>, member: &str, file: &crate::hints::HintFile) {
    if file.corrupt_records > 0 {
        cluster
            .metrics()
            .hints_corrupt
            .inc_by(file.corrupt_records as u64);
        tracing::error!(
            member,
            file = %file.path.display(),
            records = file.corrupt_records,
            "hint records failed their checksum and cannot be delivered; the file is kept as .corrupt, and anti-entropy repairs the owner from the other replicas"
        );
    }
}

async fn deliver_member(
    cluster: &Arc<Cluster>,
    hints: &Arc<HintStore>,
    member: &str,
    window: Duration,
) {
    loop {
        let taken = take_oldest(hints, member).await;
        let mut file = match taken {
            Ok(Ok(Some(found))) => found,
            Ok(Ok(None)) => return,
            Ok(Err(error)) => {
                warn!(%error, member, "cannot read hints");
                return;
            }
            Err(_) => return,
        };
        note_corrupt(cluster, member, &file);
        let records = std::mem::take(&mut file.hints);
        let total = records.len();
        for hint in records {
            if HintStore::expired(&hint, window) {
                cluster.metrics().hints_expired.inc();
                continue;
            }
            let mut request = hint.request;
            request.hint_for.clear();
            let payload = request.encode_to_vec();
            match cluster
                .call(
                    member,
                    Kind::Append,
                    &payload,
                    cluster.config().call_timeout,
                )
                .await
            {
                Ok(_) => {
                    cluster.metrics().hints_delivered.inc();
                }
                Err(error) => {
                    debug!(%error, member, "hint delivery paused; retrying later");
                    return;
                }
            }
        }
        if let Err(error) = hints.finish(&file) {
            warn!(%error, "cannot delete a delivered hint file");
            return;
        }
        info!(member, hints = total, "hints handed off");
    }
}

/// Hands the hints kept for a member that is no longer listed, or is marked leaving, to the
/// current owners of their partitions, as repair writes (which skip what an owner already
/// holds).
async fn redirect_member(
    cluster: &Arc<Cluster>,
    hints: &Arc<HintStore>,
    member: &str,
    window: Duration,
) {
    loop {
        let taken = take_oldest(hints, member).await;
        let Ok(Ok(Some(mut file))) = taken else {
            return;
        };
        note_corrupt(cluster, member, &file);
        let records = std::mem::take(&mut file.hints);
        for hint in records {
            if HintStore::expired(&hint, window) {
                cluster.metrics().hints_expired.inc();
                continue;
            }
            let view = cluster.view();
            let mut by_owner: std::collections::BTreeMap<String, Vec<logcluster_proto::LogEntry>> =
                std::collections::BTreeMap::new();
            for entry in hint.request.entries {
                let owners = view.ring.owners_of(&entry.tenant, &entry.service);
                if owners.is_empty() {
                    // Nobody to give it to: keep the hints (the file stays) and try later.
                    return;
                }
                for owner in owners {
                    by_owner
                        .entry(owner.to_string())
                        .or_default()
                        .push(entry.clone());
                }
            }
            for (owner, entries) in by_owner {
                let request = AppendRequest {
                    batch_uid: 0,
                    hint_for: String::new(),
                    repair: true,
                    entries,
                };
                if let Err(error) = cluster
                    .call(
                        &owner,
                        Kind::Append,
                        &request.encode_to_vec(),
                        cluster.config().call_timeout,
                    )
                    .await
                {
                    debug!(%error, member, owner, "redirecting hints paused; retrying later");
                    return;
                }
            }
            cluster.metrics().hints_delivered.inc();
        }
        if let Err(error) = hints.finish(&file) {
            warn!(%error, "cannot delete a redirected hint file");
            return;
        }
        info!(
            member,
            "hints of a removed member handed to the current owners"
        );
    }
}
