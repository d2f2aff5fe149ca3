//! `logcluster node`: runs the roles of one node from a configuration file.
//!
//! Binds every listener first (so port 0 works and the ready-file reports real ports), then
//! writes the ready-file, serves until SIGINT/SIGTERM, stops accepting, lets in-flight
//! batches finish and fsyncs every WAL before exiting: nothing acknowledged is lost.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use logcluster_cluster::hints::HintStore;
use logcluster_cluster::replication::{Cluster, ClusterMetrics};
use logcluster_common::shutdown::Shutdown;
use logcluster_config::{BlockFormat, Fsync, NodeConfig, Role};
use logcluster_ingest::listeners::UdpKind;
use logcluster_ingest::metrics::IngestMetrics;
use logcluster_ingest::pipeline::{Enrichment, Limits, Pipeline, Sink};
use logcluster_query::api::{QueryLimits, QueryService};
use logcluster_schema::SchemaRegistry;
use logcluster_storage::{FsyncPolicy, StorageConfig, StorageMetrics, Store, segment};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::net::{TcpListener, UdpSocket};
use tracing::{error, info, warn};

/// Options of `logcluster node`.
#[derive(clap::Args)]
pub struct NodeArgs {
    /// Node configuration file (YAML).
    #[arg(long)]
    pub config: PathBuf,
    /// Write a JSON file with the bound ports once every listener is up.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

struct HttpState {
    registry: Registry,
    schemas: SchemaRegistry,
    store: Option<Arc<Store>>,
    cluster: Option<Arc<Cluster>>,
    /// Set on storage members of a cluster.
    hints: Option<Arc<HintStore>>,
    ready: std::sync::atomic::AtomicBool,
    name: String,
    roles: Vec<&'static str>,
    alerts: Option<Arc<logcluster_query::alerts::Alerts>>,
    /// The query service (tenant tokens decide whose alert rules a request sees).
    query: Option<Arc<QueryService>>,
    /// HTTP base URLs of the nodes the dashboard's overview shows next to this one.
    peers: Vec<String>,
    /// Which of ingest and query this node serves at `/` (dashboard for browsers).
    serves_query: bool,
    serves_ingest: bool,
    /// `query.tenantTokens` is set: tenants' names and alert rules are shown only to their
    /// tokens.
    tenant_tokens: bool,
}

/// How long a process waits for a directory whose previous owner is still exiting.
const DIR_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Takes the exclusive lock on `<dir>/<name>` for as long as the returned file is open, and
/// writes this process's id into it. A second node on a storage node's data directory (a
/// copied config, two pods on one volume) would interleave its WAL writes and segment files
/// with the first's, and a second `logcluster up` would rewrite the running one's members
/// file: each refuses to start instead, naming the holder (`holder` says what it is, `advice`
/// what to do). On a
/// filesystem without locks the process warns and runs unprotected.
pub(crate) async fn lock_exclusively(
    dir: &Path,
    name: &str,
    holder: &str,
    advice: &str,
) -> anyhow::Result<Option<std::fs::File>> {
    use std::io::Write;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    let path = dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let deadline = Instant::now() + DIR_LOCK_WAIT;
    let mut waited = false;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                if !waited {
                    info!(path = %path.display(), "waiting for the directory's lock");
                    waited = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                anyhow::bail!(
                    "{} is in use by another {holder} (pid {}): {advice}",
                    dir.display(),
                    pid.trim()
                );
            }
            Err(std::fs::TryLockError::Error(error)) => {
                warn!(path = %path.display(), %error, "cannot lock the directory (does its filesystem support locks?); running without the guard against a second process on it");
                return Ok(None);
            }
        }
    }
    // The pid only makes the refusal's message better: a full disk must not stop a node
    // (retention is what frees space).
    if let Err(error) = file
        .set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
    {
        warn!(path = %path.display(), %error, "cannot write this process's id into the lock file");
    }
    Ok(Some(file))
}

pub fn storage_config(config: &NodeConfig) -> StorageConfig {
    let mut storage = StorageConfig::new(&config.data_dir);
    storage.fsync = match config.fsync {
        Fsync::Always => FsyncPolicy::Always,
        Fsync::Interval(d) => FsyncPolicy::Interval(d),
    };
    storage.segment_max_bytes = config.segment_max_bytes;
    storage.segment_max_age = config.segment_max_age;
    storage.block_target_bytes = config.block_target_bytes;
    storage.tail_memory_bytes = config.tail_memory_bytes;
    // Not on a cluster's storage members yet: a member refusing a replica write for a new
    // stream would see it hinted to another member instead, and a repair or hand-over must
    // never be refused (its source deletes its copy once it succeeds).
    storage.max_streams = if config.cluster.is_some() {
        0
    } else {
        config.max_streams
    };
    storage.zstd_level = config.zstd_level;
    storage.block_format = match config.block_format {
        BlockFormat::Templates => segment::FORMAT_TEMPLATES,
        BlockFormat::Columns => segment::FORMAT_COLUMNS,
        BlockFormat::Rows => segment::FORMAT_ROWS,
    };
    storage.shared_trace_ids = config.shared_trace_ids;
    storage.retention_max_age = config.retention_max_age;
    storage.retention_max_bytes = config.retention_max_bytes;
    storage
}

async fn bind_tcp(
    addr: Option<std::net::SocketAddr>,
    what: &str,
) -> anyhow::Result<Option<TcpListener>> {
    match addr {
        None => Ok(None),
        Some(addr) => Ok(Some(TcpListener::bind(addr).await.with_context(|| {
            format!("failed to bind the {what} listener on {addr}")
        })?)),
    }
}

async fn bind_udp(
    addr: Option<std::net::SocketAddr>,
    what: &str,
) -> anyhow::Result<Option<UdpSocket>> {
    match addr {
        None => Ok(None),
        Some(addr) => Ok(Some(UdpSocket::bind(addr).await.with_context(|| {
            format!("failed to bind the {what} listener on {addr}")
        })?)),
    }
}

fn write_ready_file(path: &Path, ports: &BTreeMap<&str, u16>, name: &str) -> anyhow::Result<()> {
    let body = json!({ "name": name, "pid": std::process::id(), "ports": ports });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&body)?)
        .with_context(|| format!("failed to write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("failed to publish ready file {}", path.display()))?;
    Ok(())
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let config = NodeConfig::from_file(&args.config)
        .with_context(|| format!("invalid node configuration {}", args.config.display()))?;
    raise_open_file_limit();
    let shutdown = Shutdown::new();
    let signal_shutdown = shutdown.clone();
    let signals = logcluster_common::shutdown::listen_for_signals();
    tokio::spawn(async move {
        signals.wait().await;
        info!("signal received: stopping listeners, finishing in-flight batches, flushing");
        signal_shutdown.trigger();
    });
    run_node(config, args.ready_file, shutdown).await
}

/// Runs a node until `shutdown` fires.
/// Every stream keeps its WAL and its segments open, so a node with many streams (tenants ×
/// services) needs more descriptors than the usual soft limit of 1024 (what containers get
/// under containerd 2 and systemd's default): the soft limit is raised to the hard one.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => info!(limit, "open file limit"),
        Err(error) => warn!(%error, "could not raise the open file limit"),
    }
}

pub async fn run_node(
    config: NodeConfig,
    ready_file: Option<PathBuf>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let storage_metrics = StorageMetrics::default();
    storage_metrics.register(&mut registry);
    let ingest_metrics = IngestMetrics::default();
    ingest_metrics.register(&mut registry);
    let cluster_metrics = ClusterMetrics::default();
    if config.cluster.is_some() {
        cluster_metrics.register(&mut registry);
    }

    // Held until the node exits (the kernel releases it even on kill -9).
    let _data_dir_lock = if config.has_role(Role::Storage) {
        Some(
            lock_exclusively(
                &config.data_dir,
                "lock",
                "LogCluster node",
                "each node needs a data directory of its own",
            )
            .await?,
        )
    } else {
        None
    };
    let store = if config.has_role(Role::Storage) {
        Some(
            Store::open(storage_config(&config), storage_metrics.clone())
                .await
                .with_context(|| {
                    format!("failed to open storage in {}", config.data_dir.display())
                })?,
        )
    } else {
        None
    };

    let schemas = SchemaRegistry::new();
    if config.schemas_from_kubernetes {
        let client = kube::Client::try_default()
            .await
            .context("cannot reach the Kubernetes API to watch LogSchemas")?;
        let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into());
        let registry = schemas.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = logcluster_k8s::schemas::watch_schemas(client, namespace, registry) => {}
                _ = stop.wait() => {}
            }
        });
    }
    if let Some(dir) = &config.schema_dir {
        match schemas.load_dir(dir) {
            Ok(report) => info!(?report, dir = %dir.display(), "schemas loaded"),
            Err(error) => {
                warn!(%error, dir = %dir.display(), "schema folder could not be read; it is retried on change")
            }
        }
        tokio::spawn(logcluster_schema::watch_dir(
            schemas.clone(),
            dir.clone(),
            config.schema_poll_interval,
            {
                let shutdown = shutdown.clone();
                async move { shutdown.wait().await }
            },
        ));
    }

    let tls_files = config.tls.clone();
    let cluster = match &config.cluster {
        Some(cluster_config) => Some(
            crate::cluster_wiring::connect(
                cluster_config,
                tls_files
                    .as_ref()
                    .context("cluster mode needs tls.certFile and tls.keyFile (the node certificate used for mutual TLS)")?,
                cluster_metrics.clone(),
                shutdown.clone(),
            )
            .await?,
        ),
        None => None,
    };

    let query_limits = QueryLimits {
        max_limit: config.query_max_limit,
        timeout: config.query_timeout,
        max_concurrent: config.query_max_concurrent,
        default_tenant: config.default_tenant.clone(),
        max_scan_bytes: config.query_max_scan_bytes,
        max_groups: config.query_max_groups,
        tenant_tokens: config.query_tenant_tokens.clone(),
    };
    let local_query = store
        .as_ref()
        .map(|store| QueryService::new(store.clone(), query_limits.clone()));

    let mut ports: BTreeMap<&str, u16> = BTreeMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut member_hints: Option<Arc<HintStore>> = None;

    // The storage member's side of the cluster: replica writes, hints, local queries.
    if let (Some(cluster_config), Some(cluster), Some(store), Some(local_query)) =
        (&config.cluster, &cluster, &store, &local_query)
        && let Some(addr) = cluster_config.listen
    {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("failed to bind the cluster listener on {addr}"))?;
        ports.insert("cluster", listener.local_addr()?.port());
        let hints = Arc::new(
            HintStore::open(config.data_dir.join("hints"))
                .context("failed to open the hint store")?,
        );
        let tls = tls_files
            .as_ref()
            .context("cluster mode needs tls.certFile and tls.keyFile")?;
        let acceptor = tokio_rustls::TlsAcceptor::from(
            logcluster_common::tls::load_server_config(
                &tls.cert_file,
                &tls.key_file,
                Some(&cluster_config.ca_file),
            )
            .context("failed to load the cluster TLS configuration")?,
        );
        let digests = Arc::new(logcluster_cluster::antientropy::DigestCache::default());
        let handler = crate::cluster_wiring::StorageHandler::new(
            config.name.clone(),
            digests.clone(),
            cluster.clone(),
            store.clone(),
            hints.clone(),
            local_query.clone(),
        );
        member_hints = Some(hints.clone());
        let stop = shutdown.clone();
        tokio::spawn(logcluster_cluster::antientropy::run(
            digests,
            cluster.clone(),
            store.clone(),
            config.name.clone(),
            logcluster_cluster::antientropy::MaintenanceConfig {
                interval: cluster_config.anti_entropy_interval,
                bucket: cluster_config.anti_entropy_bucket,
                max_repair: cluster_config.anti_entropy_max_repair,
            },
            async move { stop.wait().await },
        ));
        let stop = shutdown.clone();
        tasks.spawn(logcluster_cluster::rpc::serve(
            listener,
            acceptor,
            Arc::new(handler),
            256,
            async move { stop.wait().await },
        ));
        let stop = shutdown.clone();
        tokio::spawn(logcluster_cluster::server::run_handoff(
            cluster.clone(),
            hints,
            cluster_config.hint_window,
            cluster_config.handoff_interval,
            async move { stop.wait().await },
        ));
    }

    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| Some(config.name.clone()));
    let enrichment = Enrichment::from_env(
        if config.host_fallback { host } else { None },
        config.environment.clone(),
        config.app_version.clone(),
    );
    let sink: Option<Box<dyn Sink>> = match (&cluster, &store) {
        (Some(cluster), _) => Some(Box::new(crate::cluster_wiring::ClusterSink(
            cluster.clone(),
        ))),
        (None, Some(store)) => Some(Box::new(store.clone())),
        (None, None) => None,
    };
    let pipeline = match sink {
        Some(sink) if config.has_role(Role::Ingestor) => Some(Pipeline::new(
            sink,
            schemas.clone(),
            enrichment,
            ingest_metrics.clone(),
            config.default_tenant.clone(),
            Limits {
                max_pending_bytes: config.max_pending_bytes,
                max_batch_records: config.max_batch_records,
                max_connections: config.max_connections,
                idle_timeout: config.idle_timeout,
                frame_timeout: config.frame_timeout,
                max_timestamp_ahead: config.max_timestamp_ahead,
            },
        )),
        _ => None,
    };

    let tls = match &config.tls {
        Some(tls) => Some(tokio_rustls::TlsAcceptor::from(
            logcluster_common::tls::load_server_config(
                &tls.cert_file,
                &tls.key_file,
                tls.client_ca_file.as_deref(),
            )
            .context("failed to load the TLS certificate and key")?,
        )),
        None => None,
    };

    if let Some(pipeline) = &pipeline {
        let ingest = bind_tcp(config.listen.ingest, "framed ingest").await?;
        let udp = bind_udp(config.listen.udp, "UDP JSON").await?;
        let syslog_tcp = bind_tcp(config.listen.syslog_tcp, "syslog TCP").await?;
        let syslog_tls = bind_tcp(config.listen.syslog_tls, "syslog TLS").await?;
        let syslog_udp = bind_udp(config.listen.syslog_udp, "syslog UDP").await?;
        if let Some(listener) = ingest {
            ports.insert("ingest", listener.local_addr()?.port());
            let acceptor = tls
                .clone()
                .context("the framed ingest listener needs TLS")?;
            let framed = logcluster_ingest::framed::FramedConfig {
                max_frame_bytes: config.max_frame_bytes,
                max_in_flight: config.max_in_flight_per_connection,
                handshake_timeout: Duration::from_secs(10),
            };
            tasks.spawn(logcluster_ingest::framed::run(
                listener,
                acceptor,
                pipeline.clone(),
                framed,
                shutdown.clone(),
            ));
        }
        if let Some(socket) = udp {
            ports.insert("udp", socket.local_addr()?.port());
            tasks.spawn(logcluster_ingest::listeners::run_udp(
                socket,
                UdpKind::Json,
                pipeline.clone(),
                shutdown.clone(),
            ));
        }
        if let Some(listener) = syslog_tcp {
            ports.insert("syslog_tcp", listener.local_addr()?.port());
            tasks.spawn(logcluster_ingest::listeners::run_syslog_tcp(
                listener,
                None,
                pipeline.clone(),
                config.max_syslog_message_bytes,
                shutdown.clone(),
            ));
        }
        if let Some(listener) = syslog_tls {
            ports.insert("syslog_tls", listener.local_addr()?.port());
            let acceptor = tls.clone().context("the syslog TLS listener needs TLS")?;
            tasks.spawn(logcluster_ingest::listeners::run_syslog_tcp(
                listener,
                Some(acceptor),
                pipeline.clone(),
                config.max_syslog_message_bytes,
                shutdown.clone(),
            ));
        }
        if let Some(socket) = syslog_udp {
            ports.insert("syslog_udp", socket.local_addr()?.port());
            tasks.spawn(logcluster_ingest::listeners::run_udp(
                socket,
                UdpKind::Syslog,
                pipeline.clone(),
                shutdown.clone(),
            ));
        }
    }

    let query = if config.has_role(Role::Query) {
        match &cluster {
            Some(cluster) => Some(QueryService::new_cluster(cluster.clone(), query_limits)),
            None => local_query.clone(),
        }
    } else {
        None
    };
    let alerts = match (&query, &config.alerts.rule_dir) {
        (Some(query), Some(_)) => {
            let alerts = logcluster_query::alerts::Alerts::new(
                logcluster_query::alerts::AlertSettings {
                    rule_dir: config.alerts.rule_dir.clone(),
                    interval: config.alerts_interval,
                    webhook_url: config.alerts.webhook_url.clone(),
                    evaluators: config.alerts.evaluators.clone(),
                    node_name: config.name.clone(),
                    leading: match &config.alerts.leader_lease {
                        None => None,
                        Some(lease) => {
                            Some(alerts_leadership(lease, &config.name, shutdown.clone()).await?)
                        }
                    },
                },
                &mut registry,
            );
            let stop = shutdown.clone();
            tokio::spawn(
                alerts
                    .clone()
                    .run(query.clone(), async move { stop.wait().await }),
            );
            Some(alerts)
        }
        _ => None,
    };
    let query_metrics = logcluster_query::api::QueryMetrics::default();
    query_metrics.register(&mut registry);
    let http_refused = prometheus_client::metrics::counter::Counter::<u64>::default();
    registry.register(
        "logcluster_http_refused_connections",
        "HTTP connections closed as soon as accepted because ingest.maxConnections HTTP connections were open",
        http_refused.clone(),
    );
    let state = Arc::new(HttpState {
        registry,
        schemas: schemas.clone(),
        store: store.clone(),
        cluster: cluster.clone(),
        hints: member_hints,
        ready: std::sync::atomic::AtomicBool::new(false),
        name: config.name.clone(),
        roles: config
            .roles
            .iter()
            .map(|r| match r {
                Role::Ingestor => "ingestor",
                Role::Storage => "storage",
                Role::Query => "query",
            })
            .collect(),
        alerts,
        query: query.clone(),
        peers: config.query_peers.clone(),
        serves_query: query.is_some(),
        serves_ingest: pipeline.is_some(),
        tenant_tokens: !config.query_tenant_tokens.is_empty(),
    });
    let http = bind_tcp(config.listen.http, "HTTP").await?;
    if let Some(listener) = http {
        ports.insert("http", listener.local_addr()?.port());
        let mut app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/api/v1/schemas", get(list_schemas))
            .route("/api/v1/node", get(node_info))
            .route("/api/v1/cluster", get(cluster_status))
            .route("/api/v1/drain", get(drain_status))
            .route("/", get(root).head(root_head))
            .route("/api/v1/overview", get(overview))
            .route("/api/v1/alerts", get(alerts_status))
            .with_state(state.clone());
        if let Some(pipeline) = &pipeline {
            app = app.merge(logcluster_ingest::http::router(
                pipeline.clone(),
                config.max_frame_bytes as usize,
            ));
            app = app.merge(logcluster_ingest::compat::router(
                pipeline.clone(),
                logcluster_ingest::compat::CompatOptions {
                    max_body_bytes: config.max_frame_bytes as usize,
                    elastic: logcluster_ingest::compat::elastic::ElasticOptions {
                        service_field: config.elasticsearch.service_field.clone(),
                        index_as_service: config.elasticsearch.index_as_service,
                    },
                },
            ));
        }
        if let Some(query) = &query {
            app = app.merge(logcluster_query::api::router(
                query.clone(),
                query_metrics.clone(),
            ));
        }
        if let (Some(local), Some(_)) = (&local_query, &cluster) {
            app = app.merge(logcluster_query::api::local_router(
                local.clone(),
                query_metrics.clone(),
            ));
        }
        // The same bounds as the framed listener: as many connections (counted apart), and
        // a request's head within the frame timeout.
        let limits = crate::http_server::HttpLimits {
            max_connections: config.max_connections,
            header_timeout: config.frame_timeout,
        };
        tasks.spawn(crate::http_server::serve(
            listener,
            app,
            limits,
            http_refused,
            shutdown.clone(),
        ));
    }
    if let Some(store) = &store {
        tokio::spawn(maintenance(store.clone(), config.fsync, shutdown.clone()));
    }
    if let Some(interval) = config.stats_log_interval {
        tokio::spawn(stats_log(
            ingest_metrics.clone(),
            storage_metrics.clone(),
            interval,
            shutdown.clone(),
        ));
    }
    state.ready.store(true, Ordering::SeqCst);
    info!(name = %config.name, roles = ?config.roles, ?ports, data_dir = %config.data_dir.display(), "node ready");
    if let Some(path) = &ready_file {
        write_ready_file(path, &ports, &config.name)?;
    }
    shutdown.wait().await;
    state.ready.store(false, Ordering::SeqCst);
    while tasks.join_next().await.is_some() {}
    if let Some(store) = &store {
        store
            .shutdown()
            .await
            .context("final flush of the write-ahead logs failed")?;
    }
    info!("node stopped cleanly; every acknowledged entry is on disk");
    Ok(())
}

async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        logcluster_common::metrics::encode_registry(&state.registry),
    )
}

/// Why the node needs a restart: a file of its store failed to sync (see
/// `Store::sync_failed`), and only recovery, reading what the device holds, can go on.
fn needs_restart(state: &HttpState) -> Option<&'static str> {
    state.store.as_ref().and_then(|store| store.sync_failed())
}

/// Live unless the node needs a restart (the kubelet's liveness probe then restarts it).
async fn healthz(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    match needs_restart(&state) {
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
        None => (StatusCode::OK, "ok"),
    }
}

async fn readyz(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    if let Some(why) = needs_restart(&state) {
        return (StatusCode::SERVICE_UNAVAILABLE, why);
    }
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn list_schemas(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let statuses = state.schemas.statuses();
    let resources = state.schemas.resources();
    let schemas: Vec<serde_json::Value> = statuses
        .iter()
        .map(|status| {
            let resource = resources.iter().find(|r| r.metadata.name == status.name);
            json!({ "name": status.name, "accepted": status.accepted, "error": status.error, "resource": resource })
        })
        .collect();
    axum::Json(json!({ "schemas": schemas }))
}

async fn node_info(
    State(state): State<Arc<HttpState>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let mut tenants = state
        .store
        .as_ref()
        .map(|s| s.tenants())
        .unwrap_or_default();
    // With tenant tokens, tenants' names are theirs: a request sees its own tenant's, and
    // none without a valid token (the rest of the answer holds no tenant's data). A node
    // without the query role names none.
    if state.tenant_tokens {
        let own = state
            .query
            .as_ref()
            .and_then(|query| query.tenant_of(&headers, None).ok().flatten());
        tenants.retain(|t| own.as_ref() == Some(t));
    }
    axum::Json(json!({
        "name": state.name,
        "roles": state.roles,
        "storage": state.store.as_ref().map(|s| s.stats()),
        "tenants": tenants,
        "overview": node_snapshot(&state),
    }))
}

/// This node's counters for the dashboard: totals since start (the page computes rates).
fn node_snapshot(state: &HttpState) -> Value {
    let text = logcluster_common::metrics::encode_registry(&state.registry);
    let mut sums: HashMap<&str, f64> = HashMap::new();
    let mut rejected_by_reason: BTreeMap<String, f64> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        *sums.entry(name).or_default() += value;
        if name == "logcluster_ingest_rejected_total" {
            let label = |key: &str| {
                series
                    .split(&format!("{key}=\""))
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or("")
                    .to_string()
            };
            *rejected_by_reason
                .entry(format!("{}/{}", label("format"), label("reason")))
                .or_default() += value;
        }
    }
    let sum = |name: &str| sums.get(name).copied().unwrap_or(0.0);
    json!({
        "name": state.name,
        "role": state.roles,
        "url": Value::Null,
        "up": true,
        "ingest": state.serves_ingest.then(|| json!({
            "entries": sum("logcluster_ingest_entries_total"),
            "bytes": sum("logcluster_ingest_bytes_total"),
            "rejected": sum("logcluster_ingest_rejected_total"),
            "acks": sum("logcluster_ingest_ack_latency_seconds_count"),
            "ack_micros": sum("logcluster_ingest_ack_latency_seconds_sum") * 1e6,
            "pending_bytes": sum("logcluster_ingest_pending_bytes"),
            "udp_drops": sum("logcluster_ingest_udp_drops_total"),
            "rejected_by_reason": rejected_by_reason,
        })),
        "storage": state.store.as_ref().map(|store| json!({
            "stored_bytes": sum("logcluster_storage_stored_bytes"),
            "segments": sum("logcluster_storage_segments"),
            "rotations": sum("logcluster_storage_rotations_total"),
            "streams": store.stats().streams,
        })),
    })
}

/// `GET /api/v1/overview`: this node, its peers and the cluster, for the dashboard.
async fn overview(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let mut nodes = vec![node_snapshot(&state)];
    let fetches = state.peers.iter().map(|peer| async move {
        let url = format!("{}/api/v1/node", peer.trim_end_matches('/'));
        let answer =
            logcluster_common::http_client::request("GET", &url, &[], b"", Duration::from_secs(2))
                .await;
        let mut node = match answer {
            Ok(r) if r.status == 200 => serde_json::from_str::<Value>(&r.body)
                .ok()
                .map(|v| v["overview"].clone())
                .filter(|v| v.is_object())
                .unwrap_or_else(|| json!({"up": false, "error": "undecodable answer"})),
            Ok(r) => json!({"up": false, "error": format!("status {}", r.status)}),
            Err(error) => json!({"up": false, "error": error.to_string()}),
        };
        node["url"] = Value::String(peer.clone());
        if node.get("name").is_none() {
            node["name"] = Value::String(peer.clone());
        }
        node
    });
    nodes.extend(futures_util::future::join_all(fetches).await);
    let cluster = match &state.cluster {
        None => Value::Null,
        Some(cluster) => {
            let status = crate::cluster_wiring::status(cluster).await;
            let members: Vec<Value> = status["members"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    let state = if m["reachable"] != true {
                        "down"
                    } else if m["leaving"] == true {
                        "leaving"
                    } else {
                        "up"
                    };
                    json!({
                        "id": m["id"], "address": m["addr"], "state": state,
                        "ring_share": m["ownership"],
                        "stored_bytes": m["status"]["storage"]["stored_bytes"],
                        "hints_pending": m["status"]["hints_pending_bytes"],
                    })
                })
                .collect();
            json!({"members": members, "replication_factor": status["replication_factor"]})
        }
    };
    axum::Json(json!({
        "time": logcluster_proto::time::format_rfc3339(logcluster_proto::time::now_nanos()),
        "nodes": nodes,
        "cluster": cluster,
    }))
}

async fn alerts_status(
    State(state): State<Arc<HttpState>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let mut snapshot = match &state.alerts {
        Some(alerts) => alerts.snapshot(),
        None => json!({"rules": [], "errors": []}),
    };
    // With tenant tokens, a request sees only its own tenant's rules.
    if let Some(query) = &state.query
        && state.tenant_tokens
    {
        let tenant = match query.tenant_of(&headers, None) {
            Ok(tenant) => tenant.unwrap_or_default(),
            Err(error) => return error.into_response(),
        };
        let default = query.limits().default_tenant.clone();
        if let Some(rules) = snapshot["rules"].as_array_mut() {
            rules.retain(|rule| rule["tenant"].as_str().unwrap_or(&default) == tenant);
        }
        snapshot["errors"] = json!([]);
    }
    axum::Json(snapshot).into_response()
}

/// `/`: the dashboard for browsers on a query node; Elasticsearch's cluster info for
/// shippers probing an ingestor (which send no `Accept: text/html`).
async fn root(
    State(state): State<Arc<HttpState>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let wants_html = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if state.serves_query && (wants_html || !state.serves_ingest) {
        (
            [
                (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (axum::http::header::CACHE_CONTROL, "no-cache"),
            ],
            logcluster_query::DASHBOARD_HTML,
        )
            .into_response()
    } else if state.serves_ingest {
        logcluster_ingest::compat::elastic::info_response(&state.name)
    } else {
        (
            StatusCode::NOT_FOUND,
            "this node serves neither the dashboard nor ingestion",
        )
            .into_response()
    }
}

async fn root_head(
    State(state): State<Arc<HttpState>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let mut response = root(State(state), headers).await;
    *response.body_mut() = axum::body::Body::empty();
    response
}

/// `GET /api/v1/drain` on a storage member: whether it is leaving and has handed everything
/// over (the operator shrinks the StatefulSet only after `drained` is true).
async fn drain_status(State(state): State<Arc<HttpState>>) -> axum::response::Response {
    match (&state.cluster, &state.store, &state.hints) {
        (Some(cluster), Some(store), Some(hints)) => axum::Json(
            crate::cluster_wiring::member_status(&state.name, cluster, store, hints).await["drain"]
                .clone(),
        )
        .into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": "only storage members of a cluster drain" })),
        )
            .into_response(),
    }
}

/// Members, readiness as this node sees it, ring ownership and each member's own status
/// (hints pending, stored bytes).
async fn cluster_status(State(state): State<Arc<HttpState>>) -> axum::response::Response {
    match &state.cluster {
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": "this node runs alone, not in a cluster" })),
        )
            .into_response(),
        Some(cluster) => axum::Json(crate::cluster_wiring::status(cluster).await).into_response(),
    }
}

async fn maintenance(store: Arc<Store>, fsync: Fsync, shutdown: Shutdown) {
    let flush_every = match fsync {
        Fsync::Interval(d) => d,
        Fsync::Always => Duration::from_secs(3600),
    };
    let mut flush = tokio::time::interval(flush_every);
    let mut maintain = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = flush.tick() => {
                if matches!(fsync, Fsync::Interval(_))
                    && let Err(error) = store.flush().await
                {
                    error!(%error, "periodic wal flush failed");
                }
            }
            _ = maintain.tick() => {
                let store = store.clone();
                match tokio::task::spawn_blocking(move || store.maintain()).await {
                    Ok(Err(error)) => error!(%error, "storage maintenance failed"),
                    Err(error) => error!(%error, "storage maintenance panicked"),
                    Ok(Ok(())) => {}
                }
            }
            () = shutdown.wait() => return,
        }
    }
}

async fn stats_log(
    ingest: IngestMetrics,
    storage: StorageMetrics,
    interval: Duration,
    shutdown: Shutdown,
) {
    let totals = ingest.totals.clone();
    let read = || {
        (
            totals.entries.load(Ordering::Relaxed),
            totals.bytes.load(Ordering::Relaxed),
            totals.acks.load(Ordering::Relaxed),
            totals.ack_micros.load(Ordering::Relaxed),
        )
    };
    let mut last = read();
    let mut last_at = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.wait() => return,
        }
        let now = read();
        let secs = last_at.elapsed().as_secs_f64().max(1e-3);
        let acks = now.2 - last.2;
        let avg_ms = if acks > 0 {
            (now.3 - last.3) as f64 / acks as f64 / 1000.0
        } else {
            0.0
        };
        info!(
            "stats: {:.0} logs/s, {:.2} MB/s, ack avg {:.2} ms, queue {} B, inflight {}, rotations {}, rejected {}, dropped {}, stored {} B",
            (now.0 - last.0) as f64 / secs,
            (now.1 - last.1) as f64 / secs / 1e6,
            avg_ms,
            ingest.pending_bytes.get(),
            ingest.inflight_batches.get(),
            storage.rotations.get(),
            totals.rejected.load(Ordering::Relaxed),
            totals.dropped.load(Ordering::Relaxed),
            storage.stored_bytes.get(),
        );
        last = now;
        last_at = Instant::now();
    }
}

/// Campaigns for the alerts Lease (Kubernetes); the receiver says whether this node leads.
async fn alerts_leadership(
    lease: &str,
    identity: &str,
    shutdown: Shutdown,
) -> anyhow::Result<tokio::sync::watch::Receiver<bool>> {
    let client = kube::Client::try_default()
        .await
        .context("cannot reach the Kubernetes API for the alerts Lease")?;
    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into());
    let api = kube::Api::namespaced(client, &namespace);
    let config = logcluster_k8s::lease::LeaseConfig::new(lease, &namespace, identity);
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(logcluster_k8s::lease::run(api, config, tx, async move {
        shutdown.wait().await
    }));
    Ok(rx)
}
