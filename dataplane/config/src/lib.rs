//! The node configuration: one schema shared by the data plane (which parses it) and the
//! operator (which renders it into a ConfigMap) — one source of truth.
//!
//! Two layers, as in Vector and linkerd: [`RawNodeConfig`] is the serde form with
//! `deny_unknown_fields` (every field documented, because the docs are user documentation),
//! and [`NodeConfig`] is the validated, typed form (`SocketAddr`, `Duration`, non-zero sizes)
//! that the rest of the code uses. Durations are written as `500ms`, `10s`, `5m`, `1h`, `7d`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a node does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Ingestor,
    Storage,
    Query,
}

/// The configuration file as written by users and the operator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawNodeConfig {
    /// Stable node name (the pod name in Kubernetes). Defaults to the host name.
    #[serde(default)]
    pub name: Option<String>,
    /// Roles this process runs. Default: all three (a single node).
    #[serde(default = "default_roles")]
    pub roles: Vec<Role>,
    /// Directory for WALs and segments (storage role).
    pub data_dir: PathBuf,
    #[serde(default)]
    pub listen: RawListen,
    /// TLS for the framed ingest port and syslog over TLS. Required when the ingestor runs.
    #[serde(default)]
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub ingest: RawIngest,
    #[serde(default)]
    pub enrichment: RawEnrichment,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub query: RawQuery,
    /// Cluster mode: replication over storage members. Absent = a single node that stores
    /// locally.
    #[serde(default)]
    pub cluster: Option<RawCluster>,
    /// Alert rules evaluated by a query node.
    #[serde(default)]
    pub alerts: RawAlerts,
    /// Interval of the one-line stats log; `0s` disables it.
    #[serde(default = "default_stats_interval")]
    pub stats_log_interval: String,
}

/// Listen addresses. An empty string disables a listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawListen {
    /// Universal framed protocol over TLS.
    #[serde(default = "default_ingest_addr")]
    pub ingest: String,
    /// UDP JSON (lossy; every drop counted).
    #[serde(default = "default_udp_addr")]
    pub udp: String,
    /// Syslog over plain TCP (octet counting or LF framing).
    #[serde(default = "default_syslog_tcp_addr")]
    pub syslog_tcp: String,
    /// Syslog over TLS (RFC 5425).
    #[serde(default = "default_syslog_tls_addr")]
    pub syslog_tls: String,
    /// Syslog over UDP.
    #[serde(default = "default_syslog_udp_addr")]
    pub syslog_udp: String,
    /// HTTP: JSON/NDJSON ingest, query API, metrics, health, dashboard.
    #[serde(default = "default_http_addr")]
    pub http: String,
}

/// Certificate and key files (PEM).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// Membership from Kubernetes EndpointSlices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawKubernetes {
    /// The storage members' headless Service.
    pub service: String,
    /// Its namespace; default: this pod's (`POD_NAMESPACE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The members' cluster RPC port.
    #[serde(default = "default_cluster_port")]
    pub port: u16,
    /// A file the operator writes with the members that are leaving (`leaving: [pod, …]`);
    /// re-read when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaving_file: Option<PathBuf>,
}

fn default_cluster_port() -> u16 {
    7000
}

/// Alert rules (query role): where they are, how often they are evaluated, where
/// notifications go.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAlerts {
    /// Folder of rule files (`*.yaml`), reloaded when they change. No folder, no rules.
    #[serde(default)]
    pub rule_dir: Option<PathBuf>,
    /// Evaluation interval (default 15s).
    #[serde(default)]
    pub interval: Option<String>,
    /// Webhook that receives firing and resolved notifications (Alertmanager's format).
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Names of all query nodes that evaluate rules; each rule is evaluated by one of them.
    /// Empty: this node evaluates every rule.
    #[serde(default)]
    pub evaluators: Vec<String>,
    /// In Kubernetes: a Lease the query nodes elect a leader with; only the holder evaluates
    /// rules (one evaluation and one notification per rule, whatever the replica count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_lease: Option<String>,
}

/// Ingestion limits and behaviour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawIngest {
    /// Largest accepted frame payload, in bytes.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: u32,
    /// Frames a single connection may have in flight before the server stops reading from it
    /// (TCP backpressure instead of dropping).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight_per_connection: u32,
    /// Bytes of decoded-but-not-yet-durable payload across all connections; above it, readers
    /// wait (bounded memory under any load).
    #[serde(default = "default_max_pending_bytes")]
    pub max_pending_bytes: u64,
    /// Most records one batch (frame, request, datagram) may hold; a batch with more is
    /// refused as a whole (`too_many_records`). Bytes alone do not bound a batch's memory or
    /// its WAL record: a frame of two-byte lines is millions of entries.
    #[serde(default = "default_max_batch_records")]
    pub max_batch_records: u32,
    /// Open TCP connections across the framed and syslog listeners; one more is closed
    /// right after it is accepted (counted as `too_many_connections`). Each holds read
    /// buffers and TLS state, so this bounds memory as `maxPendingBytes` does.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// A framed or syslog TCP connection that sends nothing for this long is closed (its
    /// pending acknowledgements still go out; a syslog line it left unfinished is stored);
    /// `0s` keeps idle connections open.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: String,
    /// Once a frame's first byte has arrived, the rest of its header must arrive within this,
    /// and its payload within this once the node has room for it; a connection that
    /// trickles a frame slower is closed (counted as `frame_timeout`), so it cannot hold its
    /// share of `maxPendingBytes` for long. `0s` waits forever.
    #[serde(default = "default_frame_timeout")]
    pub frame_timeout: String,
    /// Tenant for entries that name none and arrive without a frame tenant.
    #[serde(default = "default_tenant")]
    pub default_tenant: String,
    /// Records stamped further ahead of this node's clock are rejected
    /// (`future_timestamp`): a clock years ahead would otherwise keep a whole segment from
    /// age retention until that date, and hide the record from every recent time range.
    /// `0s` accepts any timestamp.
    #[serde(default = "default_max_timestamp_ahead")]
    pub max_timestamp_ahead: String,
    /// Folder of LogSchema YAML files, reloaded on change.
    #[serde(default)]
    pub schema_dir: Option<PathBuf>,
    /// How often the schema folder is checked for changes.
    #[serde(default = "default_schema_poll")]
    pub schema_poll_interval: String,
    /// Largest syslog message over TCP/UDP, in bytes.
    #[serde(default = "default_max_syslog_bytes")]
    pub max_syslog_message_bytes: u32,
    /// How documents sent to the Elasticsearch-compatible `_bulk` API name their service.
    #[serde(default)]
    pub elasticsearch: RawElasticsearch,
    /// Watch LogSchema resources in this pod's namespace (Kubernetes; set by the operator)
    /// in addition to `schemaDir`.
    #[serde(default)]
    pub schemas_from_kubernetes: bool,
}

/// The service of an Elasticsearch `_bulk` document: the document's `serviceField` when it
/// has one, else (with `indexAsService`) the index it was sent to, else the usual JSON aliases
/// (`service`, `service.name`, `app`, …), else `unknown`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawElasticsearch {
    /// A document field (dotted path) that names the service; checked first.
    #[serde(default)]
    pub service_field: Option<String>,
    /// Whether the target index names the service of documents whose fields name none.
    #[serde(default = "default_true")]
    pub index_as_service: bool,
}

impl Default for RawElasticsearch {
    fn default() -> Self {
        RawElasticsearch {
            service_field: None,
            index_as_service: true,
        }
    }
}

/// Fields added to every entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawEnrichment {
    /// `environment` field (e.g. production). Env var LOGCLUSTER_ENVIRONMENT overrides.
    #[serde(default)]
    pub environment: Option<String>,
    /// `app_version` field. Env var LOGCLUSTER_APP_VERSION overrides.
    #[serde(default)]
    pub app_version: Option<String>,
    /// Set `host` on entries that have none to the ingesting node's host name.
    #[serde(default = "default_true")]
    pub host_fallback: bool,
}

/// Storage tuning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawStorage {
    /// `always` (acknowledge after fsync, the default) or an interval such as `100ms`
    /// (acknowledge after write, fsync periodically).
    #[serde(default = "default_fsync")]
    pub fsync: String,
    /// Raw bytes per segment before it is sealed.
    #[serde(default = "default_segment_bytes")]
    pub segment_max_bytes: u64,
    /// Age after which a segment is sealed.
    #[serde(default = "default_segment_age")]
    pub segment_max_age: String,
    /// Raw bytes per compressed block.
    #[serde(default = "default_block_bytes")]
    pub block_target_bytes: u64,
    /// Raw bytes that the streams' tails (entries not yet compressed into a block) may hold
    /// in memory together: past it, the larger tails are cut into blocks early, so memory
    /// does not grow with the number of streams (tenant × service).
    #[serde(default = "default_tail_memory_bytes")]
    pub tail_memory_bytes: u64,
    /// zstd level for blocks (1-22). The default, 1, stores the benchmark dataset within
    /// 0.2 % of level 3's bytes (column sections leave zstd little to find by searching
    /// harder) for about a quarter fewer compression instructions (BENCHMARKS.md,
    /// "Link-time optimization and zstd level 1").
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// Layout of new blocks: `templates` (the default: columns, with messages stored as
    /// templates and values), `columns` (columns with whole messages, the layout the
    /// previous release writes) or `rows` (the layout of releases before columns). Set an
    /// older one while a rollback to a release that reads only that must stay possible;
    /// every release reads all the layouts before its own.
    #[serde(default = "default_block_format")]
    pub block_format: String,
    /// `templates` blocks keep each trace id of 32 hex digits once per tenant, in the
    /// tenant's trace-id book, and refer to it (the default; a trace's lines are spread over
    /// services, so a block seldom repeats one). Set false while a rollback to a release
    /// without the book must stay possible.
    #[serde(default = "default_true")]
    pub shared_trace_ids: bool,
    /// Most streams (tenant × service) the node creates; appends that would create one more
    /// are refused (`too_many_streams`) while the others are stored. Each stream keeps its
    /// WAL and segments open, so a sender inventing service names must not exhaust the
    /// node's files. Applied by a node without a `cluster` section; a cluster's storage
    /// members do not apply it yet (a refused replica write would be hinted elsewhere, and
    /// a hand-over must never be refused). 0: no limit.
    #[serde(default = "default_max_streams")]
    pub max_streams: u64,
    #[serde(default)]
    pub retention: RawRetention,
}

/// Layout of new storage blocks (`storage.blockFormat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockFormat {
    /// Columns, messages as templates and values (the default).
    Templates,
    /// Columns with whole messages.
    Columns,
    /// One record after another.
    Rows,
}

/// Retention; absent values keep data forever.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRetention {
    /// Delete segments whose newest entry is older than this (e.g. `7d`).
    #[serde(default)]
    pub max_age: Option<String>,
    /// Delete the oldest segments while the node stores more than this many bytes.
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

/// Cluster membership and replication.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCluster {
    /// Listen address of the cluster RPC (mutual TLS), on storage members.
    #[serde(default = "default_cluster_addr")]
    pub listen: String,
    /// CA that signs every node certificate; peers must present a certificate from it.
    pub ca_file: PathBuf,
    /// Name every peer certificate must carry; default: the host part of the member address.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// YAML file listing the storage members (`members: [{id, addr, ready, leaving}]`),
    /// re-read when it changes. Exactly one of membersFile and members is required outside
    /// Kubernetes.
    #[serde(default)]
    pub members_file: Option<PathBuf>,
    /// A fixed list of storage members: `id=host:port` each.
    #[serde(default)]
    pub members: Vec<String>,
    /// In Kubernetes: members from the EndpointSlices of the storage headless Service (the
    /// operator sets this). Exactly one of membersFile, members and kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<RawKubernetes>,
    /// Copies of every entry.
    #[serde(default = "default_rf")]
    pub replication_factor: u32,
    /// Durable replica acknowledgements before a client is acknowledged.
    #[serde(default = "default_quorum")]
    pub write_quorum: u32,
    /// Replicas asked per key range by a query.
    #[serde(default = "default_quorum")]
    pub read_quorum: u32,
    /// Time a replica may take to answer one call before it counts as failed.
    #[serde(default = "default_call_timeout")]
    pub call_timeout: String,
    /// Hints older than this are dropped (anti-entropy repairs what they carried).
    #[serde(default = "default_hint_window")]
    pub hint_window: String,
    /// How often hints are offered to their members.
    #[serde(default = "default_handoff_interval")]
    pub handoff_interval: String,
    /// How often a storage member hands over streams it no longer owns and compares Merkle
    /// trees with the other replicas.
    #[serde(default = "default_anti_entropy_interval")]
    pub anti_entropy_interval: String,
    /// Time bucket of the anti-entropy digests (entries are compared per partition and
    /// bucket of their timestamp).
    #[serde(default = "default_anti_entropy_bucket")]
    pub anti_entropy_bucket: String,
    /// Entries repaired per peer per pass, at most (rate limit).
    #[serde(default = "default_anti_entropy_max_repair")]
    pub anti_entropy_max_repair: u64,
}

/// Query limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawQuery {
    /// Largest `limit` a query may ask for.
    #[serde(default = "default_max_limit")]
    pub max_limit: u32,
    /// Time budget of one query.
    #[serde(default = "default_query_timeout")]
    pub timeout: String,
    /// Queries running at once; more are refused with 429.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: u32,
    /// Bytes of entries one query may scan (decoded size); over it the query fails with 422.
    #[serde(default = "default_max_scan_bytes")]
    pub max_scan_bytes: u64,
    /// Groups one aggregation may hold in memory (per member); over it the query fails.
    #[serde(default = "default_max_groups")]
    pub max_groups: u64,
    /// Bearer tokens and the tenant each one reads. When any is set, every query request
    /// must carry one (`Authorization: Bearer …`) and sees only its tenant.
    #[serde(default)]
    pub tenant_tokens: std::collections::BTreeMap<String, String>,
    /// HTTP base URLs of other nodes (ingestors, storage members) whose state the dashboard's
    /// overview shows next to this node's.
    #[serde(default)]
    pub peers: Vec<String>,
}

fn default_roles() -> Vec<Role> {
    vec![Role::Ingestor, Role::Storage, Role::Query]
}
fn default_stats_interval() -> String {
    "10s".into()
}
fn default_ingest_addr() -> String {
    "0.0.0.0:3001".into()
}
fn default_udp_addr() -> String {
    "0.0.0.0:3002".into()
}
fn default_syslog_tcp_addr() -> String {
    "0.0.0.0:5514".into()
}
fn default_syslog_tls_addr() -> String {
    "0.0.0.0:6514".into()
}
fn default_syslog_udp_addr() -> String {
    "0.0.0.0:5514".into()
}
fn default_http_addr() -> String {
    "0.0.0.0:3100".into()
}
/// The largest `ingest.maxFrameBytes`: a frame's entries for one stream are one WAL record,
/// and a record is at most 256 MiB. Typical entries encode to about their input size; each
/// also adds an id, times, tenant and service, which [`MAX_BATCH_RECORDS`] bounds.
pub const MAX_FRAME_BYTES: u32 = 64 * 1024 * 1024;

/// The largest `ingest.maxBatchRecords`: with a full frame of typical records this keeps a
/// batch's WAL record (the frame's bytes plus 100–300 bytes of ids, times, names and
/// enrichment per entry) under 256 MiB; a part whose record would not be (JSON whose
/// flattened keys expand a lot) is refused with reason `part_too_large`, the rest stored.
pub const MAX_BATCH_RECORDS: u32 = 500_000;

fn default_max_connections() -> u32 {
    1024
}
fn default_idle_timeout() -> String {
    "10m".into()
}
fn default_frame_timeout() -> String {
    "1m".into()
}
fn default_max_timestamp_ahead() -> String {
    "2d".into()
}
fn default_max_batch_records() -> u32 {
    100_000
}

fn default_max_frame_bytes() -> u32 {
    8 * 1024 * 1024
}
fn default_max_in_flight() -> u32 {
    64
}
fn default_max_pending_bytes() -> u64 {
    // Decoded entries take several times their payload size; 32 MiB of payload keeps the
    // node's resident memory near the 256 MB goal under any load.
    32 * 1024 * 1024
}
fn default_tenant() -> String {
    "default".into()
}
fn default_schema_poll() -> String {
    "2s".into()
}
fn default_max_syslog_bytes() -> u32 {
    64 * 1024
}
fn default_true() -> bool {
    true
}
fn default_fsync() -> String {
    "always".into()
}
fn default_segment_bytes() -> u64 {
    50 * 1024 * 1024
}
fn default_segment_age() -> String {
    "1h".into()
}
fn default_block_bytes() -> u64 {
    1024 * 1024
}
fn default_tail_memory_bytes() -> u64 {
    32 * 1024 * 1024
}
fn default_max_streams() -> u64 {
    10_000
}
fn default_block_format() -> String {
    "templates".into()
}
fn default_zstd_level() -> i32 {
    1
}
fn default_max_limit() -> u32 {
    10_000
}
fn default_query_timeout() -> String {
    "30s".into()
}
fn default_max_scan_bytes() -> u64 {
    64 * 1024 * 1024 * 1024
}
fn default_max_groups() -> u64 {
    100_000
}
fn default_max_concurrent() -> u32 {
    8
}
fn default_cluster_addr() -> String {
    "0.0.0.0:7000".into()
}
fn default_rf() -> u32 {
    3
}
fn default_quorum() -> u32 {
    2
}
fn default_call_timeout() -> String {
    "5s".into()
}
fn default_hint_window() -> String {
    "3h".into()
}
fn default_handoff_interval() -> String {
    "1s".into()
}
fn default_anti_entropy_interval() -> String {
    "30s".into()
}
fn default_anti_entropy_bucket() -> String {
    "1h".into()
}
fn default_anti_entropy_max_repair() -> u64 {
    1_000_000
}

impl Default for RawListen {
    fn default() -> Self {
        RawListen {
            ingest: default_ingest_addr(),
            udp: default_udp_addr(),
            syslog_tcp: default_syslog_tcp_addr(),
            syslog_tls: default_syslog_tls_addr(),
            syslog_udp: default_syslog_udp_addr(),
            http: default_http_addr(),
        }
    }
}
impl Default for RawEnrichment {
    fn default() -> Self {
        RawEnrichment {
            environment: None,
            app_version: None,
            host_fallback: true,
        }
    }
}
impl Default for RawIngest {
    fn default() -> Self {
        RawIngest {
            max_frame_bytes: default_max_frame_bytes(),
            max_in_flight_per_connection: default_max_in_flight(),
            max_pending_bytes: default_max_pending_bytes(),
            max_batch_records: default_max_batch_records(),
            max_connections: default_max_connections(),
            idle_timeout: default_idle_timeout(),
            frame_timeout: default_frame_timeout(),
            max_timestamp_ahead: default_max_timestamp_ahead(),
            default_tenant: default_tenant(),
            schema_dir: None,
            schema_poll_interval: default_schema_poll(),
            max_syslog_message_bytes: default_max_syslog_bytes(),
            elasticsearch: RawElasticsearch::default(),
            schemas_from_kubernetes: false,
        }
    }
}
impl Default for RawStorage {
    fn default() -> Self {
        RawStorage {
            fsync: default_fsync(),
            segment_max_bytes: default_segment_bytes(),
            segment_max_age: default_segment_age(),
            block_target_bytes: default_block_bytes(),
            tail_memory_bytes: default_tail_memory_bytes(),
            zstd_level: default_zstd_level(),
            block_format: default_block_format(),
            shared_trace_ids: true,
            max_streams: default_max_streams(),
            retention: RawRetention::default(),
        }
    }
}
impl Default for RawQuery {
    fn default() -> Self {
        RawQuery {
            max_limit: default_max_limit(),
            timeout: default_query_timeout(),
            max_concurrent: default_max_concurrent(),
            max_scan_bytes: default_max_scan_bytes(),
            max_groups: default_max_groups(),
            tenant_tokens: Default::default(),
            peers: Vec::new(),
        }
    }
}

/// Why a configuration was refused. Messages name the offending field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config is not valid YAML for a node: {0}")]
    Parse(#[from] serde_yaml::Error),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

/// Parses `500ms`, `10s`, `5m`, `1h`, `7d` (and `0`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let millis = match unit {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(millis))
}

fn duration_field(field: &'static str, text: &str) -> Result<Duration, ConfigError> {
    parse_duration(text).ok_or_else(|| {
        invalid(
            field,
            format!("{text:?} is not a duration like 500ms, 10s, 5m, 1h or 7d"),
        )
    })
}

fn nonzero(value: Duration, field: &'static str) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        Err(invalid(field, "must be longer than 0"))
    } else {
        Ok(value)
    }
}

fn addr_field(field: &'static str, text: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        invalid(
            field,
            format!("{text:?} is not an address like 0.0.0.0:3001"),
        )
    })
}

/// Validated listen addresses; `None` = disabled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    pub ingest: Option<SocketAddr>,
    pub udp: Option<SocketAddr>,
    pub syslog_tcp: Option<SocketAddr>,
    pub syslog_tls: Option<SocketAddr>,
    pub syslog_udp: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
}

/// Fsync policy (mirrors the storage crate's, which this crate must not depend on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    Always,
    Interval(Duration),
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    pub roles: Vec<Role>,
    pub data_dir: PathBuf,
    pub listen: Listen,
    pub tls: Option<RawTls>,
    pub max_frame_bytes: u32,
    pub max_in_flight_per_connection: usize,
    pub max_pending_bytes: u64,
    pub max_batch_records: usize,
    pub max_connections: usize,
    /// `None`: idle connections stay open.
    pub idle_timeout: Option<Duration>,
    /// `None`: a started frame may take any time.
    pub frame_timeout: Option<Duration>,
    /// `None`: any timestamp is accepted.
    pub max_timestamp_ahead: Option<Duration>,
    pub default_tenant: String,
    pub schema_dir: Option<PathBuf>,
    pub schema_poll_interval: Duration,
    pub max_syslog_message_bytes: usize,
    pub elasticsearch: RawElasticsearch,
    pub schemas_from_kubernetes: bool,
    pub environment: Option<String>,
    pub app_version: Option<String>,
    pub host_fallback: bool,
    pub fsync: Fsync,
    pub segment_max_bytes: u64,
    pub segment_max_age: Duration,
    pub block_target_bytes: usize,
    /// `storage.tailMemoryBytes`.
    pub tail_memory_bytes: usize,
    pub zstd_level: i32,
    /// Layout of new blocks (`storage.blockFormat`).
    pub block_format: BlockFormat,
    /// `storage.sharedTraceIds`.
    pub shared_trace_ids: bool,
    /// `storage.maxStreams` (0: no limit).
    pub max_streams: usize,
    pub retention_max_age: Option<Duration>,
    pub retention_max_bytes: Option<u64>,
    pub query_max_limit: usize,
    pub query_timeout: Duration,
    pub query_max_concurrent: usize,
    pub query_max_scan_bytes: u64,
    pub query_max_groups: usize,
    pub query_tenant_tokens: std::collections::BTreeMap<String, String>,
    pub query_peers: Vec<String>,
    pub stats_log_interval: Option<Duration>,
    pub cluster: Option<ClusterConfig>,
    pub alerts: RawAlerts,
    pub alerts_interval: Duration,
}

/// Where the storage members come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembersSource {
    /// A YAML members file, watched for changes.
    File(PathBuf),
    /// A fixed list of (id, host:port).
    Static(Vec<(String, String)>),
    /// Kubernetes EndpointSlices of the storage headless Service (set by the operator).
    Kubernetes(RawKubernetes),
}

/// Validated cluster settings.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub listen: Option<SocketAddr>,
    pub ca_file: PathBuf,
    pub tls_server_name: Option<String>,
    pub members: MembersSource,
    pub replication_factor: usize,
    pub write_quorum: usize,
    pub read_quorum: usize,
    pub call_timeout: Duration,
    pub hint_window: Duration,
    pub handoff_interval: Duration,
    pub anti_entropy_interval: Duration,
    pub anti_entropy_bucket: Duration,
    pub anti_entropy_max_repair: usize,
}

impl RawCluster {
    fn validate(self) -> Result<ClusterConfig, ConfigError> {
        let (rf, w, r) = (self.replication_factor, self.write_quorum, self.read_quorum);
        if rf == 0 || w == 0 || r == 0 {
            return Err(invalid(
                "cluster",
                "replicationFactor, writeQuorum and readQuorum must be at least 1",
            ));
        }
        if w > rf || r > rf {
            return Err(invalid(
                "cluster",
                format!(
                    "writeQuorum ({w}) and readQuorum ({r}) cannot exceed replicationFactor ({rf})"
                ),
            ));
        }
        if w + r <= rf {
            return Err(invalid(
                "cluster",
                format!(
                    "writeQuorum + readQuorum ({}) must exceed replicationFactor ({rf}) so every read sees the latest acknowledged write",
                    w + r
                ),
            ));
        }
        let sources = usize::from(self.members_file.is_some())
            + usize::from(!self.members.is_empty())
            + usize::from(self.kubernetes.is_some());
        if sources != 1 {
            return Err(invalid(
                "cluster",
                "give exactly one of membersFile, members and kubernetes",
            ));
        }
        let members = match (self.members_file, self.members.is_empty()) {
            (Some(_), false) => unreachable!("counted above"),
            (Some(path), true) => MembersSource::File(path),
            (None, false) => {
                let mut list = Vec::new();
                for item in &self.members {
                    let Some((id, addr)) = item.split_once('=') else {
                        return Err(invalid(
                            "cluster.members",
                            format!("{item:?} is not id=host:port"),
                        ));
                    };
                    if id.is_empty() || addr.rsplit_once(':').is_none() {
                        return Err(invalid(
                            "cluster.members",
                            format!("{item:?} is not id=host:port"),
                        ));
                    }
                    list.push((id.to_string(), addr.to_string()));
                }
                MembersSource::Static(list)
            }
            (None, true) => match self.kubernetes {
                Some(k8s) if !k8s.service.is_empty() => MembersSource::Kubernetes(k8s),
                _ => return Err(invalid("cluster.kubernetes.service", "must not be empty")),
            },
        };
        Ok(ClusterConfig {
            listen: addr_field("cluster.listen", &self.listen)?,
            ca_file: self.ca_file,
            tls_server_name: self.tls_server_name.filter(|s| !s.is_empty()),
            members,
            replication_factor: rf as usize,
            write_quorum: w as usize,
            read_quorum: r as usize,
            call_timeout: duration_field("cluster.callTimeout", &self.call_timeout)?,
            hint_window: duration_field("cluster.hintWindow", &self.hint_window)?,
            handoff_interval: duration_field("cluster.handoffInterval", &self.handoff_interval)?,
            anti_entropy_interval: nonzero(
                duration_field("cluster.antiEntropyInterval", &self.anti_entropy_interval)?,
                "cluster.antiEntropyInterval",
            )?,
            anti_entropy_bucket: nonzero(
                duration_field("cluster.antiEntropyBucket", &self.anti_entropy_bucket)?,
                "cluster.antiEntropyBucket",
            )?,
            anti_entropy_max_repair: self.anti_entropy_max_repair.max(1) as usize,
        })
    }

    /// A cluster section for tests and `up`: the given members file, RF3/W2/R2.
    pub fn for_test(ca_file: impl Into<PathBuf>, members_file: impl Into<PathBuf>) -> RawCluster {
        RawCluster {
            listen: "127.0.0.1:0".into(),
            ca_file: ca_file.into(),
            tls_server_name: None,
            members_file: Some(members_file.into()),
            members: Vec::new(),
            kubernetes: None,
            replication_factor: default_rf(),
            write_quorum: default_quorum(),
            read_quorum: default_quorum(),
            call_timeout: default_call_timeout(),
            hint_window: default_hint_window(),
            handoff_interval: default_handoff_interval(),
            anti_entropy_interval: default_anti_entropy_interval(),
            anti_entropy_bucket: default_anti_entropy_bucket(),
            anti_entropy_max_repair: default_anti_entropy_max_repair(),
        }
    }
}

impl NodeConfig {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Reads and validates a YAML file.
    pub fn from_file(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    pub fn from_yaml(text: &str) -> Result<NodeConfig, ConfigError> {
        let raw: RawNodeConfig = serde_yaml::from_str(text)?;
        raw.validate()
    }
}

impl RawNodeConfig {
    /// A single-node configuration on loopback with ephemeral ports, for tests and `up`.
    pub fn for_test(data_dir: impl Into<PathBuf>) -> RawNodeConfig {
        RawNodeConfig {
            name: Some("test-node".into()),
            roles: default_roles(),
            data_dir: data_dir.into(),
            listen: RawListen {
                ingest: "127.0.0.1:0".into(),
                udp: "127.0.0.1:0".into(),
                syslog_tcp: "127.0.0.1:0".into(),
                syslog_tls: "127.0.0.1:0".into(),
                syslog_udp: "127.0.0.1:0".into(),
                http: "127.0.0.1:0".into(),
            },
            tls: None,
            ingest: RawIngest::default(),
            enrichment: RawEnrichment::default(),
            storage: RawStorage::default(),
            query: RawQuery::default(),
            cluster: None,
            alerts: RawAlerts::default(),
            stats_log_interval: default_stats_interval(),
        }
    }

    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        Ok(serde_yaml::to_string(self)?)
    }

    /// Checks every field and produces the typed configuration.
    pub fn validate(self) -> Result<NodeConfig, ConfigError> {
        if let Some(url) = &self.alerts.webhook_url
            && !url.starts_with("http://")
        {
            return Err(invalid(
                "alerts.webhookUrl",
                format!("{url:?} must be an http:// URL (the notifier has no TLS client)"),
            ));
        }
        if self.roles.is_empty() {
            return Err(invalid(
                "roles",
                "at least one of ingestor, storage, query is required",
            ));
        }
        let listen = Listen {
            ingest: addr_field("listen.ingest", &self.listen.ingest)?,
            udp: addr_field("listen.udp", &self.listen.udp)?,
            syslog_tcp: addr_field("listen.syslogTcp", &self.listen.syslog_tcp)?,
            syslog_tls: addr_field("listen.syslogTls", &self.listen.syslog_tls)?,
            syslog_udp: addr_field("listen.syslogUdp", &self.listen.syslog_udp)?,
            http: addr_field("listen.http", &self.listen.http)?,
        };
        let needs_tls = self.roles.contains(&Role::Ingestor)
            && (listen.ingest.is_some() || listen.syslog_tls.is_some());
        if needs_tls && self.tls.is_none() {
            return Err(invalid(
                "tls",
                "certFile and keyFile are required for the TLS ingest and syslog-TLS listeners (or disable them with an empty address)",
            ));
        }
        if !(1024..=MAX_FRAME_BYTES).contains(&self.ingest.max_frame_bytes) {
            return Err(invalid(
                "ingest.maxFrameBytes",
                format!(
                    "must be between 1024 and {MAX_FRAME_BYTES} (a batch is stored in one write-ahead log record of at most 256 MiB per stream)"
                ),
            ));
        }
        if self.ingest.max_in_flight_per_connection == 0 {
            return Err(invalid(
                "ingest.maxInFlightPerConnection",
                "must be at least 1",
            ));
        }
        if self.ingest.max_connections == 0 {
            return Err(invalid("ingest.maxConnections", "must be at least 1"));
        }
        if !(1..=MAX_BATCH_RECORDS).contains(&self.ingest.max_batch_records) {
            return Err(invalid(
                "ingest.maxBatchRecords",
                format!("must be between 1 and {MAX_BATCH_RECORDS}"),
            ));
        }
        if self.ingest.max_pending_bytes < u64::from(self.ingest.max_frame_bytes) {
            return Err(invalid(
                "ingest.maxPendingBytes",
                "must be at least ingest.maxFrameBytes",
            ));
        }
        if self.ingest.default_tenant.is_empty() {
            return Err(invalid("ingest.defaultTenant", "must not be empty"));
        }
        let fsync = match self.storage.fsync.as_str() {
            "always" => Fsync::Always,
            other => match parse_duration(other) {
                Some(d) if !d.is_zero() => Fsync::Interval(d),
                _ => {
                    return Err(invalid(
                        "storage.fsync",
                        format!("{other:?} is neither `always` nor an interval like 100ms"),
                    ));
                }
            },
        };
        if !(1..=22).contains(&self.storage.zstd_level) {
            return Err(invalid("storage.zstdLevel", "must be between 1 and 22"));
        }
        let block_format = match self.storage.block_format.as_str() {
            "templates" => BlockFormat::Templates,
            "columns" => BlockFormat::Columns,
            "rows" => BlockFormat::Rows,
            _ => {
                return Err(invalid(
                    "storage.blockFormat",
                    "must be templates, columns or rows",
                ));
            }
        };
        if self.storage.block_target_bytes < 1024
            || self.storage.block_target_bytes > 64 * 1024 * 1024
        {
            return Err(invalid(
                "storage.blockTargetBytes",
                "must be between 1 KiB and 64 MiB",
            ));
        }
        if self.storage.tail_memory_bytes < 64 * 1024 {
            return Err(invalid(
                "storage.tailMemoryBytes",
                "must be at least 64 KiB",
            ));
        }
        if self.storage.segment_max_bytes < self.storage.block_target_bytes {
            return Err(invalid(
                "storage.segmentMaxBytes",
                "must be at least storage.blockTargetBytes",
            ));
        }
        let retention_max_age = match &self.storage.retention.max_age {
            Some(text) => Some(duration_field("storage.retention.maxAge", text)?),
            None => None,
        };
        if self.query.max_limit == 0 || self.query.max_concurrent == 0 {
            return Err(invalid(
                "query",
                "maxLimit and maxConcurrent must be at least 1",
            ));
        }
        let stats = duration_field("statsLogInterval", &self.stats_log_interval)?;
        let cluster = match self.cluster {
            Some(raw) => Some(raw.validate()?),
            None => None,
        };
        if cluster.is_none() && !(self.roles.contains(&Role::Storage)) {
            return Err(invalid(
                "cluster",
                "a node without the storage role needs a cluster section to reach storage members",
            ));
        }
        let env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
        Ok(NodeConfig {
            name: self
                .name
                .or_else(|| env("POD_NAME"))
                .or_else(|| env("HOSTNAME"))
                .unwrap_or_else(|| "logcluster".into()),
            roles: self.roles,
            data_dir: self.data_dir,
            listen,
            tls: self.tls,
            max_frame_bytes: self.ingest.max_frame_bytes,
            max_in_flight_per_connection: self.ingest.max_in_flight_per_connection as usize,
            max_pending_bytes: self.ingest.max_pending_bytes,
            max_batch_records: self.ingest.max_batch_records as usize,
            max_connections: self.ingest.max_connections as usize,
            idle_timeout: Some(duration_field(
                "ingest.idleTimeout",
                &self.ingest.idle_timeout,
            )?)
            .filter(|timeout| !timeout.is_zero()),
            frame_timeout: Some(duration_field(
                "ingest.frameTimeout",
                &self.ingest.frame_timeout,
            )?)
            .filter(|timeout| !timeout.is_zero()),
            max_timestamp_ahead: Some(duration_field(
                "ingest.maxTimestampAhead",
                &self.ingest.max_timestamp_ahead,
            )?)
            .filter(|ahead| !ahead.is_zero()),
            default_tenant: self.ingest.default_tenant,
            schema_dir: self.ingest.schema_dir,
            schema_poll_interval: duration_field(
                "ingest.schemaPollInterval",
                &self.ingest.schema_poll_interval,
            )?,
            max_syslog_message_bytes: self.ingest.max_syslog_message_bytes as usize,
            elasticsearch: self.ingest.elasticsearch.clone(),
            schemas_from_kubernetes: self.ingest.schemas_from_kubernetes,
            environment: env("LOGCLUSTER_ENVIRONMENT").or(self.enrichment.environment),
            app_version: env("LOGCLUSTER_APP_VERSION").or(self.enrichment.app_version),
            host_fallback: self.enrichment.host_fallback,
            fsync,
            segment_max_bytes: self.storage.segment_max_bytes,
            segment_max_age: duration_field(
                "storage.segmentMaxAge",
                &self.storage.segment_max_age,
            )?,
            block_target_bytes: self.storage.block_target_bytes as usize,
            tail_memory_bytes: usize::try_from(self.storage.tail_memory_bytes)
                .unwrap_or(usize::MAX),
            zstd_level: self.storage.zstd_level,
            block_format,
            shared_trace_ids: self.storage.shared_trace_ids,
            max_streams: usize::try_from(self.storage.max_streams).unwrap_or(usize::MAX),
            retention_max_age,
            retention_max_bytes: self.storage.retention.max_bytes,
            query_max_limit: self.query.max_limit as usize,
            query_timeout: duration_field("query.timeout", &self.query.timeout)?,
            query_max_concurrent: self.query.max_concurrent as usize,
            query_max_scan_bytes: self.query.max_scan_bytes,
            query_max_groups: self.query.max_groups as usize,
            query_tenant_tokens: self.query.tenant_tokens.clone(),
            query_peers: self.query.peers.clone(),
            stats_log_interval: if stats.is_zero() { None } else { Some(stats) },
            cluster,
            alerts_interval: duration_field(
                "alerts.interval",
                self.alerts.interval.as_deref().unwrap_or("15s"),
            )?,
            alerts: self.alerts.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_yaml_gets_the_documented_defaults() {
        let config =
            NodeConfig::from_yaml("dataDir: /tmp/x\ntls:\n  certFile: /c.pem\n  keyFile: /k.pem\n")
                .expect("valid");
        assert_eq!(
            config.listen.ingest,
            Some("0.0.0.0:3001".parse().expect("addr"))
        );
        assert_eq!(
            config.listen.udp,
            Some("0.0.0.0:3002".parse().expect("addr"))
        );
        assert_eq!(config.fsync, Fsync::Always);
        assert_eq!(config.segment_max_bytes, 50 * 1024 * 1024);
        assert_eq!(config.block_format, BlockFormat::Templates);
        assert_eq!(config.roles.len(), 3);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_field() {
        let err = NodeConfig::from_yaml("dataDir: /x\nbogus: 1\n").expect_err("unknown key");
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = NodeConfig::from_yaml(
            "dataDir: /x\nlisten: {ingest: '', syslogTls: ''}\nstorage: {fsync: sometimes}\n",
        )
        .expect_err("bad fsync");
        assert!(err.to_string().contains("storage.fsync"), "{err}");
        let with_format = |format: &str| {
            NodeConfig::from_yaml(&format!(
                "dataDir: /x\nlisten: {{ingest: '', syslogTls: ''}}\nstorage: {{blockFormat: {format}}}\n"
            ))
        };
        for (name, format) in [
            ("rows", BlockFormat::Rows),
            ("columns", BlockFormat::Columns),
            ("templates", BlockFormat::Templates),
        ] {
            assert_eq!(with_format(name).expect(name).block_format, format);
        }
        let err = with_format("parquet").expect_err("bad block format");
        assert!(err.to_string().contains("storage.blockFormat"), "{err}");
        let err = NodeConfig::from_yaml("dataDir: /x\n").expect_err("tls required");
        assert!(err.to_string().starts_with("tls:"), "{err}");
    }

    #[test]
    fn cluster_quorums_are_checked_and_members_parsed() {
        let base = "dataDir: /x\nlisten: {ingest: '', syslogTls: ''}\n";
        let config = NodeConfig::from_yaml(&format!(
            "{base}cluster: {{caFile: /ca.pem, members: ['s-0=127.0.0.1:7000', 's-1=127.0.0.1:7001']}}\n"
        ))
        .expect("valid cluster");
        let cluster = config.cluster.expect("cluster section");
        assert_eq!(
            (
                cluster.replication_factor,
                cluster.write_quorum,
                cluster.read_quorum
            ),
            (3, 2, 2)
        );
        assert_eq!(
            cluster.members,
            MembersSource::Static(vec![
                ("s-0".into(), "127.0.0.1:7000".into()),
                ("s-1".into(), "127.0.0.1:7001".into())
            ])
        );
        for (fields, needle) in [
            (
                "replicationFactor: 3, writeQuorum: 1, readQuorum: 2",
                "must exceed",
            ),
            ("replicationFactor: 2, writeQuorum: 3", "cannot exceed"),
            ("writeQuorum: 0", "at least 1"),
            ("members: ['nope']", "id=host:port"),
        ] {
            let err =
                NodeConfig::from_yaml(&format!("{base}cluster: {{caFile: /ca.pem, {fields}}}\n"))
                    .expect_err(fields);
            assert!(err.to_string().contains(needle), "{fields}: {err}");
        }
        let err =
            NodeConfig::from_yaml(&format!("{base}roles: [query]\n")).expect_err("query alone");
        assert!(err.to_string().starts_with("cluster:"), "{err}");
    }

    #[test]
    fn the_frame_size_is_bounded_both_ways() {
        let base = "dataDir: /x\nlisten: {ingest: '', syslogTls: ''}\n";
        for (bytes, ok) in [
            (1023, false),
            (1024, true),
            (MAX_FRAME_BYTES, true),
            (MAX_FRAME_BYTES + 1, false),
        ] {
            let yaml = format!(
                "{base}ingest: {{maxFrameBytes: {bytes}, maxPendingBytes: {}}}\n",
                u64::from(bytes) * 2
            );
            let result = NodeConfig::from_yaml(&yaml);
            assert_eq!(result.is_ok(), ok, "{bytes}: {result:?}");
            if let Err(error) = result {
                assert!(error.to_string().contains("maxFrameBytes"), "{error}");
            }
        }
    }

    #[test]
    fn the_batch_record_count_is_bounded_both_ways() {
        let base = "dataDir: /x\nlisten: {ingest: '', syslogTls: ''}\n";
        let default = NodeConfig::from_yaml(base).expect("defaults");
        assert_eq!(default.max_batch_records, 100_000);
        assert_eq!(default.max_connections, 1024);
        assert_eq!(default.idle_timeout, Some(Duration::from_secs(600)));
        let kept = NodeConfig::from_yaml(&format!("{base}ingest: {{idleTimeout: 0s}}\n"))
            .expect("no idle timeout");
        assert_eq!(kept.idle_timeout, None);
        assert_eq!(default.frame_timeout, Some(Duration::from_secs(60)));
        let patient = NodeConfig::from_yaml(&format!("{base}ingest: {{frameTimeout: 0s}}\n"))
            .expect("no frame timeout");
        assert_eq!(patient.frame_timeout, None);
        assert_eq!(
            default.max_timestamp_ahead,
            Some(Duration::from_secs(2 * 86_400))
        );
        let any = NodeConfig::from_yaml(&format!("{base}ingest: {{maxTimestampAhead: 0s}}\n"))
            .expect("any timestamp");
        assert_eq!(any.max_timestamp_ahead, None);
        let error = NodeConfig::from_yaml(&format!("{base}ingest: {{maxConnections: 0}}\n"))
            .expect_err("no connections");
        assert!(error.to_string().contains("maxConnections"), "{error}");
        for (records, ok) in [
            (0, false),
            (1, true),
            (MAX_BATCH_RECORDS, true),
            (MAX_BATCH_RECORDS + 1, false),
        ] {
            let yaml = format!("{base}ingest: {{maxBatchRecords: {records}}}\n");
            let result = NodeConfig::from_yaml(&yaml);
            assert_eq!(result.is_ok(), ok, "{records}: {result:?}");
            if let Err(error) = result {
                assert!(error.to_string().contains("maxBatchRecords"), "{error}");
            }
        }
    }

    #[test]
    fn for_test_round_trips_through_yaml() {
        let mut raw = RawNodeConfig::for_test("/data");
        raw.tls = Some(RawTls {
            cert_file: "/c".into(),
            key_file: "/k".into(),
            client_ca_file: None,
        });
        let yaml = raw.to_yaml().expect("yaml");
        let back: RawNodeConfig = serde_yaml::from_str(&yaml).expect("parse");
        assert_eq!(back, raw);
        back.validate().expect("valid");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("1w"), None);
    }
}
