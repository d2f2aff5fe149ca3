//! Wiring of the cluster layer into a node: membership source → replication client, the
//! storage member's RPC handler, the ingest pipeline's sink, and the cluster status view.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use logcluster_cluster::hints::HintStore;
use logcluster_cluster::membership::{self, Member, MemberList};
use logcluster_cluster::messages::Kind;
use logcluster_cluster::replication::{Cluster, ClusterMetrics, EncodedBatch, ReplicationConfig};
use logcluster_cluster::rpc::Handler;
use logcluster_common::shutdown::Shutdown;
use logcluster_config::{ClusterConfig, MembersSource, RawTls};
use logcluster_ingest::pipeline::{Sink, SinkOutcome, Stored};
use logcluster_proto::{EntryRef, LogEntry};
use logcluster_query::api::{QueryRequest, QueryService};
use logcluster_query::fanout;
use logcluster_storage::Store;
use logcluster_storage::wal::EntryBodies;
use serde_json::{Value, json};

/// Follows the configured membership source and builds the replication client.
pub async fn connect(
    config: &ClusterConfig,
    tls: &RawTls,
    metrics: ClusterMetrics,
    shutdown: Shutdown,
) -> anyhow::Result<Arc<Cluster>> {
    let members = match &config.members {
        MembersSource::File(path) => {
            membership::watch_members_file(path.clone(), Duration::from_millis(500), async move {
                shutdown.wait().await
            })
            .with_context(|| format!("cannot read the members file {}", path.display()))?
        }
        MembersSource::Static(list) => {
            let (sender, receiver) = membership::static_members(MemberList::new(
                list.iter()
                    .map(|(id, addr)| Member {
                        id: id.clone(),
                        addr: addr.clone(),
                        ready: true,
                        leaving: false,
                    })
                    .collect(),
            ));
            // The list never changes; keep the sender so receivers stay open.
            tokio::spawn(async move {
                shutdown.wait().await;
                drop(sender);
            });
            receiver
        }
        MembersSource::Kubernetes(k8s) => {
            let client = kube::Client::try_default()
                .await
                .context("cannot reach the Kubernetes API for EndpointSlice discovery")?;
            let namespace = k8s
                .namespace
                .clone()
                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                .context("cluster.kubernetes.namespace or POD_NAMESPACE is required")?;
            let (sender, receiver) = membership::static_members(MemberList::default());
            let source = logcluster_k8s::members::Source {
                service: k8s.service.clone(),
                namespace,
                port: k8s.port,
                leaving_file: k8s.leaving_file.clone(),
            };
            tokio::spawn(async move {
                tokio::select! {
                    _ = logcluster_k8s::members::watch_members(client, source, sender) => {}
                    _ = shutdown.wait() => {}
                }
            });
            receiver
        }
    };
    let client_config = logcluster_common::tls::load_client_config(
        &config.ca_file,
        Some((&tls.cert_file, &tls.key_file)),
    )
    .context("failed to load the cluster client TLS configuration")?;
    let mut replication = ReplicationConfig::new(
        config.replication_factor,
        config.write_quorum,
        config.read_quorum,
    );
    replication.call_timeout = config.call_timeout;
    replication.tls_server_name = config.tls_server_name.clone();
    Ok(Cluster::new(
        replication,
        members,
        tokio_rustls::TlsConnector::from(client_config),
        metrics,
    ))
}

/// The ingest pipeline's sink in a cluster: a quorum write.
pub struct ClusterSink(pub Arc<Cluster>);

impl Sink for ClusterSink {
    /// Cuts and encodes the batch's parts at once, by the caller: on the thread that decoded
    /// it when called through [`Sink::append_from_blocking_thread`].
    fn append(&self, batch_uid: u64, entries: Vec<LogEntry>) -> Stored {
        self.send(batch_uid, EncodedBatch::new(entries))
    }

    fn takes_views(&self) -> bool {
        true
    }

    /// The parts are made of the bodies: no entry is encoded again.
    fn append_views_from_blocking_thread(
        &self,
        batch_uid: u64,
        views: Vec<EntryRef<'_>>,
        bodies: &EntryBodies<'_>,
    ) -> Stored {
        self.send(batch_uid, EncodedBatch::from_views(&views, bodies))
    }
}

impl ClusterSink {
    /// Replicates an encoded batch; the future ends once the write quorum stored it.
    fn send(&self, batch_uid: u64, batch: EncodedBatch) -> Stored {
        let too_large = batch.too_large().to_vec();
        let cluster = self.0.clone();
        Box::pin(async move {
            let duplicates = if batch.is_empty() {
                0
            } else {
                cluster
                    .append_encoded(batch_uid, batch)
                    .await
                    .map_err(|e| e.to_string())?
            };
            Ok(SinkOutcome {
                duplicates,
                too_large,
                too_many_streams: Vec::new(),
            })
        })
    }
}

/// A storage member's answers to cluster calls.
pub struct StorageHandler {
    inner: Arc<HandlerInner>,
}

struct HandlerInner {
    name: String,
    digests: Arc<logcluster_cluster::antientropy::DigestCache>,
    cluster: Arc<Cluster>,
    store: Arc<Store>,
    hints: Arc<HintStore>,
    query: Arc<QueryService>,
}

impl StorageHandler {
    pub fn new(
        name: String,
        digests: Arc<logcluster_cluster::antientropy::DigestCache>,
        cluster: Arc<Cluster>,
        store: Arc<Store>,
        hints: Arc<HintStore>,
        query: Arc<QueryService>,
    ) -> StorageHandler {
        StorageHandler {
            inner: Arc::new(HandlerInner {
                name,
                digests,
                cluster,
                store,
                hints,
                query,
            }),
        }
    }
}

impl Handler for StorageHandler {
    fn handle(
        &self,
        kind: u8,
        payload: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            match Kind::from_u8(kind) {
                Some(Kind::Append) => {
                    logcluster_cluster::server::handle_append(
                        &inner.cluster,
                        &inner.name,
                        &inner.store,
                        &inner.hints,
                        payload,
                    )
                    .await
                }
                Some(Kind::Query) => {
                    let request: QueryRequest = serde_json::from_slice(&payload)
                        .map_err(|e| format!("{}request body: {e}", fanout::BAD_REQUEST))?;
                    let limit = request
                        .limit
                        .unwrap_or(100)
                        .clamp(1, inner.query.limits().max_limit);
                    let page = inner
                        .query
                        .local_page(request)
                        .await
                        .map_err(|e| fanout::member_error(&e))?;
                    Ok(fanout::encode_page(page, limit))
                }
                Some(Kind::Stats) => {
                    let params: HashMap<String, String> = serde_json::from_slice(&payload)
                        .map_err(|e| format!("{}stats parameters: {e}", fanout::BAD_REQUEST))?;
                    let (counts, stats) = inner
                        .query
                        .local_counts(params)
                        .await
                        .map_err(|e| fanout::member_error(&e))?;
                    Ok(fanout::encode_counts(&counts, &stats))
                }
                Some(Kind::Aggregate) => {
                    let spec: logcluster_query::agg::AggSpec = serde_json::from_slice(&payload)
                        .map_err(|e| format!("{}aggregation: {e}", fanout::BAD_REQUEST))?;
                    let answer = inner
                        .query
                        .local_aggregate(spec)
                        .await
                        .map_err(|e| fanout::member_error(&e))?;
                    serde_json::to_vec(&answer).map_err(|e| e.to_string())
                }
                Some(Kind::Status) => {
                    let body =
                        member_status(&inner.name, &inner.cluster, &inner.store, &inner.hints)
                            .await;
                    serde_json::to_vec(&body).map_err(|e| e.to_string())
                }
                Some(kind @ (Kind::Digests | Kind::KeyDigests | Kind::Ids | Kind::Fetch)) => {
                    logcluster_cluster::antientropy::handle(
                        &inner.digests,
                        &inner.cluster,
                        &inner.store,
                        &inner.name,
                        kind,
                        &payload,
                    )
                    .await
                }
                None => Err(format!("unknown request kind {kind}")),
            }
        })
    }
}

/// A storage member's own view: stored data, hints it holds for others, and its drain
/// state (what the operator polls before removing it).
pub async fn member_status(
    name: &str,
    cluster: &Arc<Cluster>,
    store: &Arc<Store>,
    hints: &Arc<HintStore>,
) -> Value {
    let view = cluster.view();
    let leaving = view.members.is_leaving(name);
    let hints = hints.clone();
    let pending = tokio::task::spawn_blocking(move || hints.pending_bytes())
        .await
        .unwrap_or_default();
    let pending_total: u64 = pending.values().sum();
    let to_hand_over =
        logcluster_cluster::antientropy::streams_to_hand_over(store, &view.ring, name);
    json!({
        "name": name,
        // Why the member needs a restart (a sync failed; its probes answer 503), if it does.
        "needs_restart": store.sync_failed(),
        "storage": store.stats(),
        "hints_pending_bytes": pending,
        "repair": {
            "anti_entropy_comparisons": cluster.metrics().anti_entropy_comparisons.get(),
            "anti_entropy_keys_differing": cluster.metrics().anti_entropy_keys_differing.get(),
            "anti_entropy_entries_repaired": cluster.metrics().anti_entropy_entries_repaired.get(),
            "last_pass_ms": cluster.metrics().anti_entropy_last_pass_ms.get(),
            "rebalance_entries_moved": cluster.metrics().rebalance_entries_moved.get(),
        },
        "drain": {
            "leaving": leaving,
            "streams_to_hand_over": to_hand_over.len(),
            "hints_pending_bytes": pending_total,
            "drained": leaving && to_hand_over.is_empty() && pending_total == 0,
        },
    })
}

/// The cluster as this node sees it, with each member's own status.
pub async fn status(cluster: &Arc<Cluster>) -> Value {
    let view = cluster.view();
    let ownership = view.ring.ownership();
    let mut calls = tokio::task::JoinSet::new();
    for member in &view.members.members {
        let cluster = cluster.clone();
        let id = member.id.clone();
        calls.spawn(async move {
            let answer = cluster
                .call(&id, Kind::Status, &[], Duration::from_secs(2))
                .await;
            (id, answer)
        });
    }
    let mut answers: HashMap<String, Value> = HashMap::new();
    while let Some(Ok((id, answer))) = calls.join_next().await {
        let value = match answer {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            Err(error) => json!({ "error": error.to_string() }),
        };
        answers.insert(id, value);
    }
    let members: Vec<Value> = view
        .members
        .members
        .iter()
        .map(|m| {
            let status = answers.remove(&m.id).unwrap_or(Value::Null);
            json!({
                "id": m.id,
                "addr": m.addr,
                "ready": m.ready,
                "leaving": m.leaving,
                "reachable": status.get("error").is_none() && !status.is_null(),
                "ownership": ownership.get(&m.id).copied().unwrap_or(0.0),
                "status": status,
            })
        })
        .collect();
    json!({
        "replication_factor": cluster.config().replication_factor,
        "write_quorum": cluster.config().write_quorum,
        "read_quorum": cluster.config().read_quorum,
        "members": members,
    })
}
