//! Background maintenance of a storage member: rebalancing and anti-entropy.
//!
//! **Rebalancing.** A stream this member holds but no longer owns (a member joined and took
//! its partition, or this member is leaving) is pushed, page by page, to every current owner
//! as repair writes; once all of them confirmed, and nothing was appended meanwhile, the
//! local copy is deleted. A leaving member with nothing left to hand over is *drained*.
//!
//! **Anti-entropy.** For each peer, both sides summarise the streams of the partitions they
//! both own as a Merkle tree over (partition, time bucket) digests. Equal roots end the
//! comparison; otherwise the differing leaf slots, then the differing keys, then the id
//! lists of those keys are exchanged, and missing entries are pushed to the peer and pulled
//! from it (repair writes, which never duplicate). Each pass is bounded by `max_repair`.
//!
//! Must not: delete data before every new owner confirmed it, or repair outside the
//! partitions both sides own.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use logcluster_proto::LogEntry;
use logcluster_storage::{Cursor, ScanFilter, Store};
use prost::Message;
use tracing::{debug, info, warn};

use crate::merkle::{Digest, Key, MerkleTree, diff_digests};
use crate::messages::{
    AppendRequest, DigestsReply, DigestsRequest, EntriesReply, FetchRequest, IdRef, IdsRequest,
    KeysRequest, Kind,
};
use crate::replication::Cluster;
use crate::ring::{Ring, partition_of};

/// Leaf slots of the trees: 1024 (a clean comparison sends one root; a dirty one 8 KiB of
/// leaves).
pub const DEPTH: u32 = 10;
/// Entries per repair or hand-over call.
const CHUNK: usize = 2000;

/// Settings of the maintenance loop.
#[derive(Clone, Debug)]
pub struct MaintenanceConfig {
    pub interval: Duration,
    pub bucket: Duration,
    /// Entries repaired per peer per pass, at most (rate limit).
    pub max_repair: usize,
}

fn shared(ring: &Ring, partition: u32, a: &str, b: &str) -> bool {
    ring.is_owner(partition, a) && ring.is_owner(partition, b)
}

fn bucket_ns(bucket_secs: u64) -> i64 {
    (bucket_secs.max(1) as i64).saturating_mul(1_000_000_000)
}

fn every_entry<'a>(
    tenant: &'a str,
    services: &'a BTreeSet<String>,
    from_ts: i64,
    to_ts: i64,
    predicate: &'a (dyn Fn(&LogEntry) -> bool + Sync),
) -> ScanFilter<'a> {
    ScanFilter::whole(tenant, Some(services), from_ts, to_ts, predicate)
}

/// Visits (stream, key, entry) of every local stream in partitions `me` and `peer` both own,
/// restricted to `keys` when given. Blocking.
fn scan_shared(
    store: &Store,
    ring: &Ring,
    me: &str,
    peer: &str,
    bucket_secs: u64,
    keys: Option<&BTreeSet<Key>>,
    mut visit: impl FnMut(&str, &str, Key, &LogEntry),
) {
    let width = bucket_ns(bucket_secs);
    let always = |_: &LogEntry| true;
    for (tenant, service) in store.streams() {
        let partition = partition_of(&tenant, &service);
        if !shared(ring, partition, me, peer) {
            continue;
        }
        let (from, to) = match keys {
            None => (i64::MIN, i64::MAX),
            Some(keys) => {
                let buckets: Vec<i64> = keys
                    .iter()
                    .filter(|k| k.partition == partition)
                    .map(|k| k.bucket)
                    .collect();
                let (Some(lo), Some(hi)) = (buckets.iter().min(), buckets.iter().max()) else {
                    continue;
                };
                (
                    lo.saturating_mul(width),
                    hi.saturating_add(1).saturating_mul(width),
                )
            }
        };
        let services = BTreeSet::from([service.clone()]);
        store.scan(
            &every_entry(&tenant, &services, from, to, &always),
            |entry| {
                let key = Key {
                    partition,
                    bucket: entry.timestamp.div_euclid(width),
                };
                if keys.is_none_or(|k| k.contains(&key)) {
                    visit(&tenant, &service, key, entry);
                }
            },
        );
    }
}

/// Per-stream digests by time bucket, cached while the stream is unchanged: an idle
/// cluster's anti-entropy pass then costs a few hashes instead of reading every entry.
#[derive(Default)]
pub struct DigestCache {
    #[allow(clippy::type_complexity)]
    streams: std::sync::Mutex<
        std::collections::HashMap<(String, String), (u64, u64, Arc<BTreeMap<i64, Digest>>)>,
    >,
}

impl DigestCache {
    fn stream(
        &self,
        store: &Store,
        tenant: &str,
        service: &str,
        bucket_secs: u64,
    ) -> Arc<BTreeMap<i64, Digest>> {
        let key = (tenant.to_string(), service.to_string());
        let generation = store.stream_generation(tenant, service).unwrap_or(u64::MAX);
        if let Some((g, b, digests)) = self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && *g == generation
            && *b == bucket_secs
        {
            return digests.clone();
        }
        let width = bucket_ns(bucket_secs);
        let services = BTreeSet::from([service.to_string()]);
        let always = |_: &LogEntry| true;
        let mut digests: BTreeMap<i64, Digest> = BTreeMap::new();
        store.scan(
            &every_entry(tenant, &services, i64::MIN, i64::MAX, &always),
            |entry| {
                digests
                    .entry(entry.timestamp.div_euclid(width))
                    .or_default()
                    .add(&entry.id);
            },
        );
        let digests = Arc::new(digests);
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (generation, bucket_secs, digests.clone()));
        digests
    }
}

/// Digests of the partitions `me` and `peer` both own. Blocking.
pub fn local_digests(
    cache: &DigestCache,
    store: &Store,
    ring: &Ring,
    me: &str,
    peer: &str,
    bucket_secs: u64,
) -> BTreeMap<Key, Digest> {
    let mut digests: BTreeMap<Key, Digest> = BTreeMap::new();
    for (tenant, service) in store.streams() {
        let partition = partition_of(&tenant, &service);
        if !shared(ring, partition, me, peer) {
            continue;
        }
        for (bucket, digest) in cache.stream(store, &tenant, &service, bucket_secs).iter() {
            digests
                .entry(Key {
                    partition,
                    bucket: *bucket,
                })
                .or_default()
                .merge(digest);
        }
    }
    digests
}

/// The Merkle tree of the partitions `me` and `peer` both own. Blocking.
fn shared_tree(
    cache: &DigestCache,
    store: &Store,
    ring: &Ring,
    me: &str,
    peer: &str,
    bucket_secs: u64,
    depth: u32,
) -> MerkleTree {
    MerkleTree::build(
        depth,
        local_digests(cache, store, ring, me, peer, bucket_secs),
    )
}

/// Ids of the given keys. Blocking.
pub fn local_ids(
    store: &Store,
    ring: &Ring,
    me: &str,
    peer: &str,
    bucket_secs: u64,
    keys: &BTreeSet<Key>,
) -> BTreeSet<IdRef> {
    let mut ids = BTreeSet::new();
    scan_shared(
        store,
        ring,
        me,
        peer,
        bucket_secs,
        Some(keys),
        |tenant, service, _, entry| {
            ids.insert(IdRef {
                tenant: tenant.to_string(),
                service: service.to_string(),
                timestamp: entry.timestamp,
                id: entry.id.clone(),
            });
        },
    );
    ids
}

/// The entries of `ids` in one stream. Blocking.
pub fn local_fetch(store: &Store, request: &FetchRequest) -> Vec<LogEntry> {
    let wanted: HashSet<&str> = request.ids.iter().map(String::as_str).collect();
    let services = BTreeSet::from([request.service.clone()]);
    let always = |_: &LogEntry| true;
    let mut out = Vec::new();
    store.scan(
        &every_entry(
            &request.tenant,
            &services,
            request.from_ts,
            request.to_ts.saturating_add(1),
            &always,
        ),
        |entry| {
            if wanted.contains(entry.id.as_str()) {
                out.push(entry.clone());
            }
        },
    );
    out
}

/// Answers the anti-entropy calls on a storage member.
pub async fn handle(
    cache: &Arc<DigestCache>,
    cluster: &Arc<Cluster>,
    store: &Arc<Store>,
    me: &str,
    kind: Kind,
    payload: &[u8],
) -> Result<Vec<u8>, String> {
    let ring = cluster.view();
    let store = store.clone();
    let cache = cache.clone();
    let me = me.to_string();
    let bad = |e: serde_json::Error| format!("malformed anti-entropy request: {e}");
    // This member's tree of the partitions it shares with the requester (blocking work).
    let tree = |requester: String, bucket_secs: u64, depth: u32| {
        let (cache, store, ring, me) = (cache.clone(), store.clone(), ring.clone(), me.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                shared_tree(
                    &cache,
                    &store,
                    &ring.ring,
                    &me,
                    &requester,
                    bucket_secs,
                    depth,
                )
            })
            .await
            .map_err(|e| e.to_string())
        }
    };
    match kind {
        Kind::Digests => {
            let request: DigestsRequest = serde_json::from_slice(payload).map_err(bad)?;
            let tree = tree(request.requester, request.bucket_secs, request.depth).await?;
            let reply = DigestsReply {
                root: tree.root(),
                leaves: (tree.root() != request.root).then(|| tree.level(tree.depth()).to_vec()),
            };
            serde_json::to_vec(&reply).map_err(|e| e.to_string())
        }
        Kind::KeyDigests => {
            let request: KeysRequest = serde_json::from_slice(payload).map_err(bad)?;
            let tree = tree(request.requester, request.bucket_secs, request.depth).await?;
            let mut slots = request.slots;
            slots.sort_unstable();
            let keys: Vec<(Key, Digest)> = tree.keys_in_slots(&slots).into_iter().collect();
            serde_json::to_vec(&keys).map_err(|e| e.to_string())
        }
        Kind::Ids => {
            let request: IdsRequest = serde_json::from_slice(payload).map_err(bad)?;
            let ids = tokio::task::spawn_blocking(move || {
                let keys: BTreeSet<Key> = request.keys.into_iter().collect();
                local_ids(
                    &store,
                    &ring.ring,
                    &me,
                    &request.requester,
                    request.bucket_secs,
                    &keys,
                )
            })
            .await
            .map_err(|e| e.to_string())?;
            serde_json::to_vec(&ids).map_err(|e| e.to_string())
        }
        Kind::Fetch => {
            let request: FetchRequest = serde_json::from_slice(payload).map_err(bad)?;
            let entries = tokio::task::spawn_blocking(move || local_fetch(&store, &request))
                .await
                .map_err(|e| e.to_string())?;
            Ok(EntriesReply {
                entries,
                meta_json: String::new(),
            }
            .encode_to_vec())
        }
        other => Err(format!("{other:?} is not an anti-entropy call")),
    }
}

/// What this member still has to hand over (drain status).
pub fn streams_to_hand_over(store: &Store, ring: &Ring, me: &str) -> Vec<(String, String)> {
    store
        .streams()
        .into_iter()
        .filter(|(tenant, service)| !ring.is_owner(partition_of(tenant, service), me))
        .collect()
}

/// Runs rebalancing and anti-entropy every `interval` until `stop` resolves.
pub async fn run(
    cache: Arc<DigestCache>,
    cluster: Arc<Cluster>,
    store: Arc<Store>,
    me: String,
    config: MaintenanceConfig,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut stop => return,
        }
        let started = Instant::now();
        hand_over(&cluster, &store, &me).await;
        let view = cluster.view();
        let peers: Vec<String> = view
            .ring
            .members()
            .iter()
            .filter(|m| **m != me && cluster.is_up(m, &view))
            .cloned()
            .collect();
        if view.ring.members().contains(&me) {
            for peer in peers {
                if let Err(error) =
                    compare_with(&cache, &cluster, &store, &me, &peer, &config).await
                {
                    debug!(%error, peer, "anti-entropy with a peer failed; retrying next pass");
                }
            }
        }
        cluster
            .metrics()
            .anti_entropy_last_pass_ms
            .set(started.elapsed().as_millis() as i64);
    }
}

async fn call_json<T: serde::de::DeserializeOwned>(
    cluster: &Arc<Cluster>,
    peer: &str,
    kind: Kind,
    body: &impl serde::Serialize,
) -> Result<T, String> {
    let payload = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let answer = cluster
        .call(peer, kind, &payload, cluster.config().call_timeout * 6)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&answer).map_err(|e| format!("undecodable {kind:?} answer: {e}"))
}

async fn repair_write(
    cluster: &Arc<Cluster>,
    peer: &str,
    entries: Vec<LogEntry>,
) -> Result<(), String> {
    for chunk in entries.chunks(CHUNK) {
        let request = AppendRequest {
            batch_uid: 0,
            hint_for: String::new(),
            repair: true,
            entries: chunk.to_vec(),
        };
        cluster
            .call(
                peer,
                Kind::Append,
                &request.encode_to_vec(),
                cluster.config().call_timeout * 6,
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One comparison with one peer.
async fn compare_with(
    cache: &Arc<DigestCache>,
    cluster: &Arc<Cluster>,
    store: &Arc<Store>,
    me: &str,
    peer: &str,
    config: &MaintenanceConfig,
) -> Result<(), String> {
    let bucket_secs = config.bucket.as_secs().max(1);
    let view = cluster.view();
    let mine = {
        let (cache, store, me, peer, view) = (
            cache.clone(),
            store.clone(),
            me.to_string(),
            peer.to_string(),
            view.clone(),
        );
        tokio::task::spawn_blocking(move || {
            MerkleTree::build(
                DEPTH,
                local_digests(&cache, &store, &view.ring, &me, &peer, bucket_secs),
            )
        })
        .await
        .map_err(|e| e.to_string())?
    };
    let metrics = cluster.metrics();
    let reply: DigestsReply = call_json(
        cluster,
        peer,
        Kind::Digests,
        &DigestsRequest {
            requester: me.to_string(),
            bucket_secs,
            depth: DEPTH,
            root: mine.root(),
        },
    )
    .await?;
    metrics.anti_entropy_comparisons.inc();
    let Some(leaves) = reply.leaves else {
        return Ok(());
    };
    let own = mine.level(DEPTH);
    let slots: Vec<usize> = (0..own.len().min(leaves.len()))
        .filter(|i| own[*i] != leaves[*i])
        .collect();
    let theirs: Vec<(Key, Digest)> = call_json(
        cluster,
        peer,
        Kind::KeyDigests,
        &KeysRequest {
            requester: me.to_string(),
            bucket_secs,
            depth: DEPTH,
            slots: slots.clone(),
        },
    )
    .await?;
    // During a membership change the peer may still use the old ring and report partitions
    // this member no longer owns: only keys shared under this member's own view count, or
    // it would pull back streams it has just handed over.
    let theirs: BTreeMap<Key, Digest> = theirs
        .into_iter()
        .filter(|(key, _)| shared(&view.ring, key.partition, me, peer))
        .collect();
    let keys = diff_digests(&mine.keys_in_slots(&slots), &theirs);
    metrics
        .anti_entropy_keys_differing
        .inc_by(keys.len() as u64);
    let mut budget = config.max_repair;
    for chunk in keys.chunks(64) {
        if budget == 0 {
            break;
        }
        let keyset: BTreeSet<Key> = chunk.iter().copied().collect();
        let theirs: BTreeSet<IdRef> = call_json(
            cluster,
            peer,
            Kind::Ids,
            &IdsRequest {
                requester: me.to_string(),
                bucket_secs,
                keys: chunk.to_vec(),
            },
        )
        .await?;
        let mine: BTreeSet<IdRef> = {
            let (store, me2, peer2, view, keyset) = (
                store.clone(),
                me.to_string(),
                peer.to_string(),
                view.clone(),
                keyset.clone(),
            );
            tokio::task::spawn_blocking(move || {
                local_ids(&store, &view.ring, &me2, &peer2, bucket_secs, &keyset)
            })
            .await
            .map_err(|e| e.to_string())?
        };
        let theirs: BTreeSet<IdRef> = theirs
            .into_iter()
            .filter(|r| shared(&view.ring, partition_of(&r.tenant, &r.service), me, peer))
            .collect();
        let their_ids: HashSet<&str> = theirs.iter().map(|r| r.id.as_str()).collect();
        let my_ids: HashSet<&str> = mine.iter().map(|r| r.id.as_str()).collect();
        let push: Vec<&IdRef> = mine
            .iter()
            .filter(|r| !their_ids.contains(r.id.as_str()))
            .take(budget)
            .collect();
        budget -= push.len();
        let pull: Vec<&IdRef> = theirs
            .iter()
            .filter(|r| !my_ids.contains(r.id.as_str()))
            .take(budget)
            .collect();
        budget -= pull.len();
        // Push what the peer lacks.
        for request in fetch_requests(&push) {
            let entries = {
                let store = store.clone();
                tokio::task::spawn_blocking(move || local_fetch(&store, &request))
                    .await
                    .map_err(|e| e.to_string())?
            };
            let count = entries.len() as u64;
            repair_write(cluster, peer, entries).await?;
            metrics.anti_entropy_entries_repaired.inc_by(count);
        }
        // Pull what this member lacks.
        for request in fetch_requests(&pull) {
            let payload = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
            let answer = cluster
                .call(
                    peer,
                    Kind::Fetch,
                    &payload,
                    cluster.config().call_timeout * 6,
                )
                .await
                .map_err(|e| e.to_string())?;
            let reply = EntriesReply::decode(answer.as_slice()).map_err(|e| e.to_string())?;
            let outcome = store
                .append_missing(reply.entries)
                .await
                .map_err(|e| e.to_string())?;
            metrics
                .anti_entropy_entries_repaired
                .inc_by(outcome.stored as u64);
        }
    }
    Ok(())
}

/// Groups ids by stream into fetch requests.
fn fetch_requests(ids: &[&IdRef]) -> Vec<FetchRequest> {
    let mut by_stream: BTreeMap<(String, String), Vec<&IdRef>> = BTreeMap::new();
    for r in ids {
        by_stream
            .entry((r.tenant.clone(), r.service.clone()))
            .or_default()
            .push(r);
    }
    let mut out = Vec::new();
    for ((tenant, service), refs) in by_stream {
        for chunk in refs.chunks(CHUNK) {
            out.push(FetchRequest {
                tenant: tenant.clone(),
                service: service.clone(),
                from_ts: chunk.iter().map(|r| r.timestamp).min().unwrap_or(0),
                to_ts: chunk.iter().map(|r| r.timestamp).max().unwrap_or(0),
                ids: chunk.iter().map(|r| r.id.clone()).collect(),
            });
        }
    }
    out
}

/// Hands over every stream this member holds but does not own.
async fn hand_over(cluster: &Arc<Cluster>, store: &Arc<Store>, me: &str) {
    let view = cluster.view();
    if view.ring.members().is_empty() {
        return;
    }
    for (tenant, service) in streams_to_hand_over(store, &view.ring, me) {
        let owners: Vec<String> = view
            .ring
            .owners_of(&tenant, &service)
            .into_iter()
            .map(str::to_string)
            .collect();
        if owners.is_empty() || !owners.iter().all(|o| cluster.is_up(o, &view)) {
            continue;
        }
        let Some(generation) = store.stream_generation(&tenant, &service) else {
            continue;
        };
        match push_stream(cluster, store, &tenant, &service, &owners).await {
            Ok(moved) => {
                let removed = {
                    let (store, tenant, service) = (store.clone(), tenant.clone(), service.clone());
                    tokio::task::spawn_blocking(move || {
                        store.remove_stream_if_unchanged(&tenant, &service, generation)
                    })
                    .await
                };
                match removed {
                    Ok(Ok(true)) => {
                        cluster.metrics().rebalance_entries_moved.inc_by(moved);
                        info!(
                            tenant,
                            service,
                            entries = moved,
                            ?owners,
                            "stream handed over to its owners"
                        );
                    }
                    Ok(Ok(false)) => debug!(
                        tenant,
                        service, "stream changed during hand-over; next pass"
                    ),
                    Ok(Err(error)) => {
                        warn!(%error, tenant, service, "cannot delete a handed-over stream")
                    }
                    Err(error) => warn!(%error, "hand-over task failed"),
                }
            }
            Err(error) => debug!(%error, tenant, service, "hand-over paused; next pass"),
        }
    }
}

/// Sends every entry of a stream to every owner (repair writes, newest first, page by page).
async fn push_stream(
    cluster: &Arc<Cluster>,
    store: &Arc<Store>,
    tenant: &str,
    service: &str,
    owners: &[String],
) -> Result<u64, String> {
    let mut cursor: Option<Cursor> = None;
    let mut moved = 0u64;
    loop {
        let page = {
            let (store, tenant, service, cursor) = (
                store.clone(),
                tenant.to_string(),
                service.to_string(),
                cursor.clone(),
            );
            tokio::task::spawn_blocking(move || {
                let services = BTreeSet::from([service]);
                let always = |_: &LogEntry| true;
                store.query_top(
                    &every_entry(&tenant, &services, i64::MIN, i64::MAX, &always),
                    CHUNK,
                    cursor.as_ref(),
                )
            })
            .await
            .map_err(|e| e.to_string())?
        };
        // A page that could not read some block must not lead to deleting the stream: the
        // unread entries (still in the WAL or a segment) would go with it.
        if page.stats.corrupt_blocks > 0 {
            return Err(format!(
                "{} unreadable block(s) in the stream; not handing it over",
                page.stats.corrupt_blocks
            ));
        }
        if page.items.is_empty() {
            return Ok(moved);
        }
        moved += page.items.len() as u64;
        for owner in owners {
            repair_write(cluster, owner, page.items.clone()).await?;
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(moved),
        }
    }
}
