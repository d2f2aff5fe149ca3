//! The replication client: quorum writes with sloppy-quorum hints, and calls to members.
//!
//! A batch is split by partition; each partition part goes to its `replicationFactor`
//! owners in parallel. An owner that is known down (not ready, recent connection failure,
//! too many calls in flight) is replaced by a fallback that keeps the part as a durable hint
//! for it. The caller's future resolves as soon as every part is durably held by
//! `writeQuorum` *distinct* members (in their store or as a hint); the remaining calls finish
//! in the background, and an owner that fails after that gets a hint too. When the quorum
//! cannot be reached the caller gets an error (the client is told to retry later) — never a
//! false success. See `replication.md` beside this file.
//!
//! Must not: decide what is stored where on disk, or acknowledge on fewer than W holders.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use logcluster_proto::LogEntry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use prost::Message;
use rustls_pki_types::ServerName;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

use crate::membership::{MemberList, Members};
use crate::messages::{AppendReply, AppendRequest, Kind};
use crate::ring::{PartitionId, Ring, partition_of};
use crate::rpc::{RpcClient, RpcError};

/// Replication settings (from the node configuration).
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    pub replication_factor: usize,
    pub write_quorum: usize,
    pub read_quorum: usize,
    pub call_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long a member that failed a call is skipped before it is tried again.
    pub down_backoff: Duration,
    /// Calls in flight to one member before further parts go to fallbacks (bounds the memory
    /// a hung member can hold).
    pub max_in_flight_per_member: usize,
    /// Certificate name to verify on every peer; `None` = the host of the member address.
    pub tls_server_name: Option<String>,
    /// Encoded bytes of batches whose replica calls have not all finished. The client's ack
    /// comes at W, but the remaining calls still hold their payloads; past this budget new
    /// batches wait (TCP backpressure to the clients) instead of piling up in memory.
    pub max_in_flight_bytes: usize,
}

impl ReplicationConfig {
    pub fn new(replication_factor: usize, write_quorum: usize, read_quorum: usize) -> Self {
        ReplicationConfig {
            replication_factor,
            write_quorum,
            read_quorum,
            call_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            down_backoff: Duration::from_secs(1),
            max_in_flight_per_member: 256,
            tls_server_name: None,
            max_in_flight_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabel {
    member: String,
}

/// Metrics of the cluster layer.
#[derive(Clone, Default)]
pub struct ClusterMetrics {
    replica_writes: Family<ResultLabel, Counter>,
    /// Parts stored as hints on a fallback.
    pub hints_written: Counter,
    pub hints_delivered: Counter,
    pub hints_expired: Counter,
    /// Hint records that failed their checksum (or did not decode) when read for delivery.
    pub hints_corrupt: Counter,
    pub hints_pending_bytes: Gauge,
    quorum_failures: Counter,
    pub read_repairs: Counter,
    member_up: Family<MemberLabel, Gauge>,
    /// Anti-entropy comparisons (one per peer per pass).
    pub anti_entropy_comparisons: Counter,
    pub anti_entropy_keys_differing: Counter,
    pub anti_entropy_entries_repaired: Counter,
    pub anti_entropy_last_pass_ms: Gauge,
    pub rebalance_entries_moved: Counter,
    /// Appends refused because this member is leaving.
    pub appends_refused_leaving: Counter,
}

impl ClusterMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("logcluster_cluster");
        r.register(
            "replica_writes",
            "Replica write calls by result (ok, failed)",
            self.replica_writes.clone(),
        );
        r.register(
            "appends_refused_leaving",
            "Appends (replica writes, hints, repairs) this member refused because it is leaving",
            self.appends_refused_leaving.clone(),
        );
        r.register(
            "hints_written",
            "Batch parts stored as hints for an unavailable owner",
            self.hints_written.clone(),
        );
        r.register(
            "hints_delivered",
            "Hinted batch parts delivered to their owner",
            self.hints_delivered.clone(),
        );
        r.register(
            "hints_expired",
            "Hinted batch parts dropped after the hint window",
            self.hints_expired.clone(),
        );
        r.register(
            "hints_corrupt",
            "Hint records that failed their checksum or did not decode when read for delivery (their file is kept as .corrupt)",
            self.hints_corrupt.clone(),
        );
        r.register(
            "hints_pending_bytes",
            "Bytes of hints this node holds for other members",
            self.hints_pending_bytes.clone(),
        );
        r.register(
            "quorum_failures",
            "Batches refused because the write quorum could not be reached",
            self.quorum_failures.clone(),
        );
        r.register(
            "read_repairs",
            "Entries written back to a replica that lacked them during a read",
            self.read_repairs.clone(),
        );
        r.register(
            "anti_entropy_comparisons",
            "Merkle comparisons with a peer (one per peer per pass)",
            self.anti_entropy_comparisons.clone(),
        );
        r.register(
            "anti_entropy_keys_differing",
            "(partition, time bucket) ranges whose digests differed from a peer's",
            self.anti_entropy_keys_differing.clone(),
        );
        r.register(
            "anti_entropy_entries_repaired",
            "Entries pushed to or pulled from a peer by anti-entropy",
            self.anti_entropy_entries_repaired.clone(),
        );
        r.register(
            "anti_entropy_last_pass_ms",
            "Duration of the last full maintenance pass (hand-over and anti-entropy), ms",
            self.anti_entropy_last_pass_ms.clone(),
        );
        r.register(
            "rebalance_entries_moved",
            "Entries handed over to new owners before the local copy was deleted",
            self.rebalance_entries_moved.clone(),
        );
        r.register(
            "member_up",
            "1 when this node can reach the member, 0 when it is skipped as down",
            self.member_up.clone(),
        );
    }
}

/// Why a quorum write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("no storage members are known")]
    NoMembers,
    #[error(
        "write quorum not reached: {held} of {needed} replicas confirmed a part ({first_error})"
    )]
    Quorum {
        needed: usize,
        held: usize,
        first_error: String,
    },
}

/// The ring and member list in force.
pub struct View {
    pub members: Arc<MemberList>,
    pub ring: Ring,
}

struct Peer {
    addr: String,
    client: RpcClient,
    down_until: Option<Instant>,
    in_flight: Arc<Semaphore>,
}

/// The replication client shared by the ingest and query roles of a node.
pub struct Cluster {
    config: ReplicationConfig,
    view: RwLock<Arc<View>>,
    peers: Mutex<HashMap<String, Peer>>,
    connector: TlsConnector,
    metrics: ClusterMetrics,
    batches: AtomicU64,
    /// Permits of 1 KiB each: see [`ReplicationConfig::max_in_flight_bytes`].
    in_flight_budget: Arc<Semaphore>,
}

const BUDGET_UNIT: usize = 1024;

/// A batch cut into its partitions' parts, each encoded once (every replica's request
/// shares it: RF copies of a batch would otherwise be cloned and encoded RF times).
pub struct EncodedBatch {
    parts: BTreeMap<PartitionId, EncodedPart>,
    /// Positions (in the entries given) of entries left out: see [`EncodedBatch::too_large`].
    too_large: Vec<u32>,
}

/// The most encoded entry bytes one batch may send: a member's request carries all of its
/// partitions' parts in one RPC message, and stores each stream's part as one WAL record;
/// both are at most 256 MiB, and the margin covers the request's other fields and framing.
pub const MAX_BATCH_BYTES: usize = {
    let record = logcluster_storage::wal::MAX_RECORD_LEN - 8;
    let message = crate::rpc::MAX_MESSAGE_BYTES - 64 * 1024;
    if record < message { record } else { message }
};

/// The entries of one partition in a batch, encoded.
struct EncodedPart {
    encoded: Vec<u8>,
    entries: usize,
}

impl EncodedBatch {
    /// Cuts and encodes `entries` (CPU only: call it where the entries were decoded, while
    /// they are in that core's cache; the entries are freed here too).
    pub fn new(entries: Vec<LogEntry>) -> EncodedBatch {
        EncodedBatch::within(entries, MAX_BATCH_BYTES)
    }

    /// [`EncodedBatch::new`] with at most `limit` encoded bytes sent: parts over it are
    /// left out, largest first, until the rest fits (their entries are reported by
    /// [`EncodedBatch::too_large`]).
    fn within(entries: Vec<LogEntry>, limit: usize) -> EncodedBatch {
        // Each entry is encoded straight into its partition's part (what
        // `messages::encode_entries` gives for the partition's entries in order), without
        // moving the entries into groups first. A stream's entries share a partition, and
        // batches mostly come in runs of one stream: the partition is looked up per run.
        let mut parts: BTreeMap<PartitionId, EncodedPart> = BTreeMap::new();
        let mut run: Option<(&str, &str, PartitionId)> = None;
        for entry in &entries {
            let partition = match run {
                Some((tenant, service, p))
                    if tenant == entry.tenant && service == entry.service =>
                {
                    p
                }
                _ => {
                    let p = partition_of(&entry.tenant, &entry.service);
                    run = Some((&entry.tenant, &entry.service, p));
                    p
                }
            };
            let part = parts.entry(partition).or_insert_with(|| EncodedPart {
                encoded: Vec::new(),
                entries: 0,
            });
            logcluster_proto::entry::encode_entry_field(4, entry, &mut part.encoded);
            part.entries += 1;
        }
        let mut batch = EncodedBatch {
            parts,
            too_large: Vec::new(),
        };
        if batch.bytes() > limit {
            batch.leave_out_over(limit, &entries);
        }
        batch
    }

    /// [`EncodedBatch::new`] of entries given as views with their protobuf bodies
    /// (`bodies.spans[i]` encodes `views[i]`, as prost writes it): each part is made of the
    /// bodies as they are, not encoded again.
    pub fn from_views(
        views: &[logcluster_proto::EntryRef<'_>],
        bodies: &logcluster_storage::wal::EntryBodies<'_>,
    ) -> EncodedBatch {
        let total: usize = bodies.spans.iter().map(|span| span.len() + 6).sum();
        if total > MAX_BATCH_BYTES {
            // Rare: the owned path knows how to leave parts out.
            return EncodedBatch::new(views.iter().map(|view| view.to_entry()).collect());
        }
        // Each view's partition, looked up per run of one stream; then each part sized once.
        let mut run: Option<(&str, &str, PartitionId)> = None;
        let partitions: Vec<PartitionId> = views
            .iter()
            .map(|view| match run {
                Some((tenant, service, p)) if tenant == view.tenant && service == view.service => p,
                _ => {
                    let p = partition_of(view.tenant, view.service);
                    run = Some((view.tenant, view.service, p));
                    p
                }
            })
            .collect();
        let mut sizes: BTreeMap<PartitionId, usize> = BTreeMap::new();
        for (partition, span) in partitions.iter().zip(&bodies.spans) {
            *sizes.entry(*partition).or_default() +=
                1 + prost::length_delimiter_len(span.len()) + span.len();
        }
        let mut parts: BTreeMap<PartitionId, EncodedPart> = sizes
            .into_iter()
            .map(|(partition, size)| {
                let part = EncodedPart {
                    encoded: Vec::with_capacity(size),
                    entries: 0,
                };
                (partition, part)
            })
            .collect();
        for (partition, span) in partitions.iter().zip(&bodies.spans) {
            let Some(part) = parts.get_mut(partition) else {
                continue;
            };
            logcluster_proto::wire::put_delimited(
                4,
                &bodies.source[span.clone()],
                &mut part.encoded,
            );
            part.entries += 1;
        }
        EncodedBatch {
            parts,
            too_large: Vec::new(),
        }
    }

    /// Leaves out every stream over `limit` bytes (one WAL record each on a member), then
    /// the largest streams until the rest is at most `limit` bytes (one request), noting the
    /// positions of their entries; the parts of their partitions are encoded again without
    /// them. Rare: entries that grew far beyond their input.
    #[cold]
    fn leave_out_over(&mut self, limit: usize, entries: &[LogEntry]) {
        let mut streams: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for entry in entries {
            let len = entry.encoded_len();
            *streams.entry((&entry.tenant, &entry.service)).or_default() +=
                1 + prost::length_delimiter_len(len) + len;
        }
        let mut by_size: Vec<(usize, (&str, &str))> = streams
            .into_iter()
            .map(|(stream, size)| (size, stream))
            .collect();
        by_size.sort_unstable_by(|a, b| b.cmp(a));
        let mut total = self.bytes();
        let mut dropped = BTreeSet::new();
        for (size, stream) in by_size {
            if total <= limit && size <= limit {
                break;
            }
            total = total.saturating_sub(size);
            dropped.insert(stream);
        }
        let left_out = |e: &LogEntry| dropped.contains(&(e.tenant.as_str(), e.service.as_str()));
        let touched: BTreeSet<PartitionId> = dropped
            .iter()
            .map(|(tenant, service)| partition_of(tenant, service))
            .collect();
        for partition in &touched {
            self.parts.remove(partition);
        }
        for (position, entry) in entries.iter().enumerate() {
            if left_out(entry) {
                self.too_large.push(position as u32);
                continue;
            }
            let partition = partition_of(&entry.tenant, &entry.service);
            if touched.contains(&partition) {
                let part = self.parts.entry(partition).or_insert_with(|| EncodedPart {
                    encoded: Vec::new(),
                    entries: 0,
                });
                logcluster_proto::entry::encode_entry_field(4, entry, &mut part.encoded);
                part.entries += 1;
            }
        }
    }

    /// Positions (in the entries given to [`EncodedBatch::new`]) of entries left out
    /// because their stream's part would not fit in one WAL record or the batch in one
    /// request, in order; the batch holds the others.
    pub fn too_large(&self) -> &[u32] {
        &self.too_large
    }

    /// Whether no part is left to send.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The encoded entries' size, charged to the in-flight budget.
    fn bytes(&self) -> usize {
        self.parts.values().map(|part| part.encoded.len()).sum()
    }
}

impl Cluster {
    /// Starts following `members` (the ring is rebuilt on every change).
    pub fn new(
        config: ReplicationConfig,
        mut members: Members,
        connector: TlsConnector,
        metrics: ClusterMetrics,
    ) -> Arc<Cluster> {
        let list = members.borrow_and_update().clone();
        let view = View {
            ring: Ring::new(&list.ring_ids(), config.replication_factor),
            members: list,
        };
        let budget_units = (config.max_in_flight_bytes / BUDGET_UNIT).max(1);
        let cluster = Arc::new(Cluster {
            in_flight_budget: Arc::new(Semaphore::new(budget_units)),
            config,
            view: RwLock::new(Arc::new(view)),
            peers: Mutex::new(HashMap::new()),
            connector,
            metrics,
            batches: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&cluster);
        tokio::spawn(async move {
            while members.changed().await.is_ok() {
                let list = members.borrow_and_update().clone();
                let Some(cluster) = weak.upgrade() else {
                    return;
                };
                let ring = tokio::task::spawn_blocking({
                    let ids = list.ring_ids();
                    let rf = cluster.config.replication_factor;
                    move || Ring::new(&ids, rf)
                })
                .await;
                if let Ok(ring) = ring {
                    *cluster.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(View {
                        members: list,
                        ring,
                    });
                }
            }
        });
        cluster
    }

    pub fn config(&self) -> &ReplicationConfig {
        &self.config
    }

    pub fn metrics(&self) -> &ClusterMetrics {
        &self.metrics
    }

    /// The ring and members in force now.
    pub fn view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Writes needed per part: W, or fewer when the cluster holds fewer replicas.
    pub fn effective_write_quorum(&self, view: &View) -> usize {
        self.config
            .write_quorum
            .min(view.ring.replicas_per_partition())
            .max(1)
    }

    fn client(&self, member: &str, view: &View) -> Option<RpcClient> {
        let addr = view.members.get(member)?.addr.clone();
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(peer) = peers.get(member)
            && peer.addr == addr
        {
            return Some(peer.client.clone());
        }
        let host = addr
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(&addr);
        let name = self.config.tls_server_name.as_deref().unwrap_or(host);
        let server_name = ServerName::try_from(name.to_string()).ok()?;
        let client = RpcClient::new(
            addr.clone(),
            server_name,
            self.connector.clone(),
            self.config.connect_timeout,
        );
        peers.insert(
            member.to_string(),
            Peer {
                addr,
                client: client.clone(),
                down_until: None,
                in_flight: Arc::new(Semaphore::new(self.config.max_in_flight_per_member)),
            },
        );
        Some(client)
    }

    /// Whether a member looks usable now: listed, ready, and not recently failed.
    pub fn is_up(&self, member: &str, view: &View) -> bool {
        let Some(info) = view.members.get(member) else {
            return false;
        };
        if !info.ready {
            return false;
        }
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        match peers.get(member).and_then(|p| p.down_until) {
            Some(until) => Instant::now() >= until,
            None => true,
        }
    }

    fn mark(&self, member: &str, ok: bool) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(peer) = peers.get_mut(member) {
            let was_down = peer.down_until.is_some();
            peer.down_until = if ok {
                None
            } else {
                Some(Instant::now() + self.config.down_backoff)
            };
            if ok == was_down {
                debug!(member, up = ok, "member state changed");
            }
        }
        self.metrics
            .member_up
            .get_or_create(&MemberLabel {
                member: member.to_string(),
            })
            .set(i64::from(ok));
    }

    fn permit(&self, member: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .get(member)?
            .in_flight
            .clone()
            .try_acquire_owned()
            .ok()
    }

    /// One call to a member; updates its health.
    pub async fn call(
        &self,
        member: &str,
        kind: Kind,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, RpcError> {
        self.call_shared(member, kind, Arc::new(payload.to_vec()), timeout)
            .await
    }

    /// [`Cluster::call`] with a payload that other calls share.
    pub async fn call_shared(
        &self,
        member: &str,
        kind: Kind,
        payload: Arc<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RpcError> {
        let view = self.view();
        let client = self
            .client(member, &view)
            .ok_or_else(|| RpcError::Connect {
                addr: member.to_string(),
                message: "not a known member (or its address is not a valid TLS name)".into(),
            })?;
        let result = client.call(kind as u8, payload, timeout).await;
        match &result {
            Ok(_) | Err(RpcError::Remote { .. }) => self.mark(member, true),
            Err(_) => self.mark(member, false),
        }
        result
    }

    /// Stores a batch, cut into parts and encoded ([`EncodedBatch::new`], on the thread that
    /// decoded it), on W distinct replicas per part; resolves with the number of entries that
    /// replicas already held (an idempotent retry).
    pub async fn append_encoded(
        self: &Arc<Self>,
        batch_uid: u64,
        batch: EncodedBatch,
    ) -> Result<usize, WriteError> {
        let view = self.view();
        if view.ring.members().is_empty() {
            return Err(WriteError::NoMembers);
        }
        self.batches.fetch_add(1, Ordering::Relaxed);
        let needed = self.effective_write_quorum(&view);
        // Reserve the batch's share of the in-flight budget: its encoded size (the entries
        // themselves are freed once encoded, and the encoded requests are shared by the
        // replicas they go to; each call's request framing comes on top); released when the
        // last call finishes.
        let bytes = batch.bytes();
        let max_units = (self.config.max_in_flight_bytes / BUDGET_UNIT).max(1);
        let units = (bytes / BUDGET_UNIT).clamp(1, max_units) as u32;
        let permit = self
            .in_flight_budget
            .clone()
            .acquire_many_owned(units)
            .await
            .map_err(|_| WriteError::Quorum {
                needed,
                held: 0,
                first_error: "replication is shutting down".into(),
            })?;
        let (done_tx, done_rx) = oneshot::channel();
        let cluster = self.clone();
        tokio::spawn(async move {
            cluster
                .replicate(view, batch_uid, batch, needed, done_tx)
                .await;
            drop(permit);
        });
        done_rx.await.unwrap_or(Err(WriteError::Quorum {
            needed,
            held: 0,
            first_error: "replication task ended early".into(),
        }))
    }

    /// Best fallback for `down` in a partition: the first up member in rank order that is
    /// not an owner (so the hint adds a distinct holder), else an up owner other than `down`.
    fn fallback(&self, view: &View, partition: PartitionId, down: &str) -> Option<String> {
        let ranked = view.ring.ranked(partition);
        let owners: Vec<&str> = view.ring.owners(partition).collect();
        ranked
            .iter()
            .filter(|m| !owners.contains(m))
            .chain(ranked.iter().filter(|m| owners.contains(m)))
            .find(|m| **m != down && self.is_up(m, view))
            .map(|m| m.to_string())
    }

    async fn replicate(
        self: Arc<Self>,
        view: Arc<View>,
        batch_uid: u64,
        batch: EncodedBatch,
        needed: usize,
        done: oneshot::Sender<Result<usize, WriteError>>,
    ) {
        let parts = batch.parts;
        let partitions: Vec<PartitionId> = parts.keys().copied().collect();
        let mut holders: BTreeMap<PartitionId, BTreeSet<String>> = BTreeMap::new();
        let mut duplicate_parts: BTreeSet<PartitionId> = BTreeSet::new();
        // (target member, hint_for) -> partitions
        let mut plan: BTreeMap<(String, String), Vec<PartitionId>> = BTreeMap::new();
        for partition in &partitions {
            for owner in view.ring.owners(*partition) {
                if self.is_up(owner, &view) {
                    plan.entry((owner.to_string(), String::new()))
                        .or_default()
                        .push(*partition);
                } else if let Some(fallback) = self.fallback(&view, *partition, owner) {
                    plan.entry((fallback, owner.to_string()))
                        .or_default()
                        .push(*partition);
                }
            }
        }
        // One request per distinct (hint, partitions), shared by the members it goes to: with
        // RF members all owning the same partitions, the batch is framed once, not RF times.
        let mut payloads: HashMap<(String, Vec<PartitionId>), Arc<Vec<u8>>> = HashMap::new();
        let mut payload_for = |hint_for: &str, parts_of: &[PartitionId]| {
            payloads
                .entry((hint_for.to_string(), parts_of.to_vec()))
                .or_insert_with(|| {
                    Arc::new(crate::messages::encode_append(
                        batch_uid,
                        hint_for,
                        false,
                        parts_of
                            .iter()
                            .filter_map(|p| parts.get(p).map(|part| &part.encoded)),
                    ))
                })
                .clone()
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<CallOutcome>();
        let mut outstanding = 0usize;
        for ((member, hint_for), parts_of) in plan {
            outstanding += 1;
            let payload = payload_for(&hint_for, &parts_of);
            self.spawn_write(payload, member, hint_for, parts_of, tx.clone());
        }
        let mut done = Some(done);
        let mut first_error = String::new();
        let mut rerouted: BTreeSet<(String, PartitionId)> = BTreeSet::new();
        let quorum_held = |holders: &BTreeMap<PartitionId, BTreeSet<String>>| {
            partitions
                .iter()
                .all(|p| holders.get(p).map_or(0, |h| h.len()) >= needed)
        };
        while outstanding > 0 {
            let Some(outcome) = rx.recv().await else {
                break;
            };
            outstanding -= 1;
            match outcome.result {
                Ok(reply) => {
                    for p in &outcome.partitions {
                        holders
                            .entry(*p)
                            .or_default()
                            .insert(outcome.member.clone());
                    }
                    if outcome.hint_for.is_empty() && reply.duplicates > 0 && reply.stored == 0 {
                        duplicate_parts.extend(outcome.partitions.iter().copied());
                    }
                }
                Err(error) => {
                    if first_error.is_empty() {
                        first_error = error.to_string();
                    }
                    // An owner failed: keep its copy as a hint on a fallback, once.
                    let owner = if outcome.hint_for.is_empty() {
                        Some(outcome.member.clone())
                    } else {
                        None
                    };
                    if let Some(owner) = owner {
                        let mut by_fallback: BTreeMap<String, Vec<PartitionId>> = BTreeMap::new();
                        for p in &outcome.partitions {
                            if rerouted.insert((owner.clone(), *p))
                                && let Some(fallback) = self.fallback(&view, *p, &owner)
                            {
                                by_fallback.entry(fallback).or_default().push(*p);
                            }
                        }
                        for (fallback, parts_of) in by_fallback {
                            outstanding += 1;
                            let payload = payload_for(&owner, &parts_of);
                            self.spawn_write(
                                payload,
                                fallback,
                                owner.clone(),
                                parts_of,
                                tx.clone(),
                            );
                        }
                    }
                }
            }
            if done.is_some() && quorum_held(&holders) {
                let duplicates = duplicate_parts
                    .iter()
                    .map(|p| parts.get(p).map_or(0, |part| part.entries))
                    .sum();
                if let Some(done) = done.take() {
                    let _ = done.send(Ok(duplicates));
                }
            }
        }
        if let Some(done) = done.take() {
            self.metrics.quorum_failures.inc();
            let held = partitions
                .iter()
                .map(|p| holders.get(p).map_or(0, |h| h.len()))
                .min()
                .unwrap_or(0);
            if first_error.is_empty() {
                first_error = "not enough members are up".into();
            }
            warn!(batch_uid, held, needed, %first_error, "write quorum not reached");
            let _ = done.send(Err(WriteError::Quorum {
                needed,
                held,
                first_error,
            }));
        }
    }

    /// Sends `payload` (an append request for `partitions`) to `member` and reports the
    /// outcome on `tx`.
    fn spawn_write(
        self: &Arc<Self>,
        payload: Arc<Vec<u8>>,
        member: String,
        hint_for: String,
        partitions: Vec<PartitionId>,
        tx: mpsc::UnboundedSender<CallOutcome>,
    ) {
        let cluster = self.clone();
        tokio::spawn(async move {
            let result = match cluster.permit(&member) {
                None if cluster.view().members.get(&member).is_some()
                    && cluster.peers_known(&member) =>
                {
                    Err(RpcError::Io {
                        addr: member.clone(),
                        message: "too many calls in flight".into(),
                    })
                }
                permit => {
                    let answer = cluster
                        .call_shared(&member, Kind::Append, payload, cluster.config.call_timeout)
                        .await;
                    drop(permit);
                    answer.and_then(|bytes| {
                        AppendReply::decode(bytes.as_slice()).map_err(|e| RpcError::Remote {
                            addr: member.clone(),
                            message: format!("undecodable append reply: {e}"),
                        })
                    })
                }
            };
            let label = if result.is_ok() { "ok" } else { "failed" };
            cluster
                .metrics
                .replica_writes
                .get_or_create(&ResultLabel { result: label })
                .inc();
            if result.is_ok() && !hint_for.is_empty() {
                cluster.metrics.hints_written.inc();
            }
            let _ = tx.send(CallOutcome {
                member,
                hint_for,
                partitions,
                result,
            });
        });
    }

    fn peers_known(&self, member: &str) -> bool {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(member)
    }

    /// Sends repair writes (entries a replica lacks) to one member, in the background.
    pub fn repair(self: &Arc<Self>, member: String, entries: Vec<LogEntry>) {
        if entries.is_empty() {
            return;
        }
        let count = entries.len() as u64;
        let request = AppendRequest {
            batch_uid: 0,
            hint_for: String::new(),
            repair: true,
            entries,
        };
        let cluster = self.clone();
        tokio::spawn(async move {
            let payload = request.encode_to_vec();
            match cluster
                .call(&member, Kind::Append, &payload, cluster.config.call_timeout)
                .await
            {
                Ok(bytes) => {
                    let stored = AppendReply::decode(bytes.as_slice())
                        .map(|r| r.stored)
                        .unwrap_or(count);
                    cluster.metrics.read_repairs.inc_by(stored);
                }
                Err(error) => debug!(%error, member, "read repair failed; anti-entropy will retry"),
            }
        });
    }
}

struct CallOutcome {
    member: String,
    hint_for: String,
    partitions: Vec<PartitionId>,
    result: Result<AppendReply, RpcError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_encoded_per_partition_in_entry_order() {
        let entry = |k: usize, service: &str| LogEntry {
            tenant: "acme".into(),
            service: service.into(),
            message: format!("m{k}"),
            ..Default::default()
        };
        // Runs of one service, interleaved, with services in other partitions.
        let services = ["api", "api", "db", "web", "api", "db", "db", "auth"];
        let entries: Vec<LogEntry> = services
            .iter()
            .enumerate()
            .map(|(k, s)| entry(k, s))
            .collect();
        let batch = EncodedBatch::new(entries.clone());
        let mut expected: BTreeMap<PartitionId, Vec<LogEntry>> = BTreeMap::new();
        for entry in entries.clone() {
            expected
                .entry(partition_of(&entry.tenant, &entry.service))
                .or_default()
                .push(entry);
        }
        assert_eq!(
            batch.parts.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>()
        );
        for (partition, part) in &batch.parts {
            let want = &expected[partition];
            assert_eq!(part.entries, want.len());
            assert_eq!(part.encoded, crate::messages::encode_entries(want));
        }
        // The same batch from views and their bodies is the same bytes.
        let views: Vec<logcluster_proto::EntryRef<'_>> =
            entries.iter().map(logcluster_proto::EntryRef::of).collect();
        let mut source = Vec::new();
        let mut spans = Vec::new();
        for view in &views {
            let start = source.len();
            view.encode_body(&mut source);
            spans.push(start..source.len());
        }
        let bodies = logcluster_storage::wal::EntryBodies {
            source: &source,
            spans,
        };
        let from_views = EncodedBatch::from_views(&views, &bodies);
        assert_eq!(
            from_views.parts.keys().collect::<Vec<_>>(),
            batch.parts.keys().collect::<Vec<_>>()
        );
        for (partition, part) in &batch.parts {
            assert_eq!(from_views.parts[partition].entries, part.entries);
            assert_eq!(from_views.parts[partition].encoded, part.encoded);
        }
    }

    #[test]
    fn parts_over_the_batch_limit_are_left_out_largest_first() {
        let entry = |service: &str, size: usize| LogEntry {
            tenant: "acme".into(),
            service: service.into(),
            message: "m".repeat(size),
            ..Default::default()
        };
        // db's part alone is over the limit; api's and web's fit alone but not together.
        let entries = vec![
            entry("api", 400),
            entry("db", 2000),
            entry("web", 300),
            entry("api", 400),
            entry("auth", 10),
            entry("web", 300),
        ];
        let sizes: BTreeMap<&str, usize> = ["api", "db", "web", "auth"]
            .into_iter()
            .map(|service| {
                let of: Vec<LogEntry> = entries
                    .iter()
                    .filter(|e| e.service == service)
                    .cloned()
                    .collect();
                (service, crate::messages::encode_entries(&of).len())
            })
            .collect();
        let limit = sizes["web"] + sizes["auth"];
        assert!(sizes["api"] > sizes["web"] && sizes["api"] + sizes["web"] > limit);
        let batch = EncodedBatch::within(entries.clone(), limit);
        assert_eq!(batch.too_large(), [0, 1, 3]);
        let kept: Vec<PartitionId> = batch.parts.keys().copied().collect();
        let mut want = vec![partition_of("acme", "web"), partition_of("acme", "auth")];
        want.sort_unstable();
        assert_eq!(kept, want);
        assert!(batch.bytes() <= limit);
        // Under the limit nothing is left out.
        let whole = EncodedBatch::within(entries, MAX_BATCH_BYTES);
        assert!(whole.too_large().is_empty());
        assert_eq!(whole.parts.len(), 4);
        assert!(EncodedBatch::within(vec![entry("db", 2000)], 10).is_empty());

        // A small stream that shares the huge one's partition stays, and its part is the
        // partition's part without the huge stream.
        let db = partition_of("acme", "db");
        let neighbour = (0..)
            .map(|k| format!("small-{k}"))
            .find(|s| partition_of("acme", s) == db)
            .expect("a service in db's partition");
        let entries = vec![
            entry(&neighbour, 10),
            entry("db", 2000),
            entry(&neighbour, 20),
        ];
        let batch = EncodedBatch::within(entries.clone(), 1000);
        assert_eq!(batch.too_large(), [1]);
        assert_eq!(batch.parts.len(), 1);
        assert_eq!(batch.parts[&db].entries, 2);
        assert_eq!(
            batch.parts[&db].encoded,
            crate::messages::encode_entries(&[entries[0].clone(), entries[2].clone()])
        );
    }
}
