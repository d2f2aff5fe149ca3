//! The custom resources: LogCluster and LogSchema (`logcluster.io/v1alpha1`). The Rust types
//! are the source of the CRD YAML in crds/ (`logcluster-operator crd`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A LogCluster: ingestors, storage members and query nodes, and how they replicate.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "logcluster.io",
    version = "v1alpha1",
    kind = "LogCluster",
    namespaced,
    shortname = "lc",
    status = "LogClusterStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Storage","type":"string","jsonPath":".status.storage.summary"}"#,
    printcolumn = r#"{"name":"Ingestors","type":"integer","jsonPath":".status.ingestor.ready"}"#,
    printcolumn = r#"{"name":"Query","type":"integer","jsonPath":".status.query.ready"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Progressing\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LogClusterSpec {
    /// Data-plane image (the `logcluster` binary); defaults to the operator's own version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    #[serde(default)]
    pub ingestor: RoleSpec,
    #[serde(default)]
    pub storage: StorageSpec,
    #[serde(default)]
    pub query: RoleSpec,
    #[serde(default)]
    pub replication: ReplicationSpec,
    #[serde(default)]
    pub tls: TlsSpec,
    #[serde(default)]
    pub retention: RetentionSpec,
    /// Fields added to every entry.
    #[serde(default)]
    pub enrichment: EnrichmentSpec,
    /// Tenant of entries that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_tenant: Option<String>,
    #[serde(default)]
    pub services: ServicesSpec,
    /// Alert rules evaluated by the query nodes (rendered into their rule file).
    #[serde(default)]
    pub alerts: AlertsSpec,
}

/// Replicas, resources and scheduling of a role.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleSpec {
    #[serde(default = "one")]
    pub replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<Scheduling>,
}

impl Default for RoleSpec {
    fn default() -> Self {
        RoleSpec {
            replicas: 1,
            resources: None,
            scheduling: None,
        }
    }
}

fn one() -> i32 {
    1
}

/// Where a role's pods run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scheduling {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
}

/// The storage members: a StatefulSet with one volume each.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    #[serde(default = "three")]
    pub replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<Scheduling>,
    /// StorageClass of the volumes; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Volume size per member, e.g. `20Gi`.
    #[serde(default = "default_size")]
    pub size: String,
    /// Delete the volumes of members removed by a scale-down (kept by default).
    #[serde(default)]
    pub delete_volumes_on_scale_down: bool,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            replicas: 3,
            resources: None,
            scheduling: None,
            storage_class_name: None,
            size: default_size(),
            delete_volumes_on_scale_down: false,
        }
    }
}

fn three() -> i32 {
    3
}

fn default_size() -> String {
    "10Gi".into()
}

/// Copies and quorums; W ≤ RF, R ≤ RF and W + R > RF.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationSpec {
    #[serde(default = "three_u")]
    pub factor: u32,
    #[serde(default = "two_u")]
    pub write_quorum: u32,
    #[serde(default = "two_u")]
    pub read_quorum: u32,
}

impl Default for ReplicationSpec {
    fn default() -> Self {
        ReplicationSpec {
            factor: 3,
            write_quorum: 2,
            read_quorum: 2,
        }
    }
}

fn three_u() -> u32 {
    3
}

fn two_u() -> u32 {
    2
}

/// TLS for ingestion and between nodes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A Secret with `ca.crt`, `tls.crt` and `tls.key` (the certificate must name the
    /// Services and the storage pods). When unset the operator generates a CA and a
    /// certificate, and rotates the certificate before it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Delete data older than this, e.g. `7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    /// Per storage member, delete the oldest data above this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrichmentSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_version: Option<String>,
}

/// How the Services are exposed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicesSpec {
    /// ClusterIP, NodePort or LoadBalancer, for the ingestor Service.
    #[serde(default = "cluster_ip")]
    pub ingestor_type: String,
    /// ClusterIP, NodePort or LoadBalancer, for the query Service.
    #[serde(default = "cluster_ip")]
    pub query_type: String,
    #[serde(default)]
    pub ports: PortsSpec,
    /// NodePorts when a type is NodePort (ingest, udp, syslog, http), e.g. for kind.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_ports: BTreeMap<String, i32>,
}

impl Default for ServicesSpec {
    fn default() -> Self {
        ServicesSpec {
            ingestor_type: cluster_ip(),
            query_type: cluster_ip(),
            ports: PortsSpec::default(),
            node_ports: BTreeMap::new(),
        }
    }
}

fn cluster_ip() -> String {
    "ClusterIP".into()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortsSpec {
    #[serde(default = "p3001")]
    pub ingest: i32,
    #[serde(default = "p3002")]
    pub udp: i32,
    #[serde(default = "p5514")]
    pub syslog: i32,
    #[serde(default = "p6514")]
    pub syslog_tls: i32,
    #[serde(default = "p3100")]
    pub http: i32,
    #[serde(default = "p7000")]
    pub cluster: i32,
}

impl Default for PortsSpec {
    fn default() -> Self {
        PortsSpec {
            ingest: 3001,
            udp: 3002,
            syslog: 5514,
            syslog_tls: 6514,
            http: 3100,
            cluster: 7000,
        }
    }
}

fn p3001() -> i32 {
    3001
}
fn p3002() -> i32 {
    3002
}
fn p5514() -> i32 {
    5514
}
fn p6514() -> i32 {
    6514
}
fn p3100() -> i32 {
    3100
}
fn p7000() -> i32 {
    7000
}

/// Alert rules (the same fields as a rule file; see docs/alerts.md).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertsSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AlertRule>,
    /// Receives firing and resolved notifications (Alertmanager's webhook body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Evaluation interval, e.g. `15s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AlertRule {
    pub name: String,
    /// A metric expression or a log query.
    pub query: String,
    /// One of >, >=, <, <=, ==, !=.
    pub op: String,
    pub threshold: f64,
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Observed state of a LogCluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub ingestor: RoleStatus,
    #[serde(default)]
    pub storage: StorageStatus,
    #[serde(default)]
    pub query: RoleStatus,
    /// Storage members in the ring (pod names), and those leaving it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ring_members: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaving_members: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleStatus {
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageStatus {
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready: i32,
    /// `ready/desired`, for the printer column.
    #[serde(default)]
    pub summary: String,
}

/// A LogSchema: which logs it applies to and the schema they must satisfy. The same resource
/// the data plane reads from files (see dataplane/schema).
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "logcluster.io",
    version = "v1alpha1",
    kind = "LogSchema",
    namespaced,
    status = "LogSchemaStatus",
    printcolumn = r#"{"name":"Format","type":"string","jsonPath":".spec.format"}"#,
    printcolumn = r#"{"name":"Version","type":"integer","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LogSchemaSpec {
    #[serde(default)]
    pub selector: SchemaSelector,
    /// What `schema` holds: json (a JSON Schema object), avro (an Avro schema), protobuf
    /// (`{descriptorSet: <base64 FileDescriptorSet>, messageName}`).
    pub format: SchemaFormat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    #[schemars(schema_with = "any_json")]
    pub schema: serde_json::Value,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SchemaSelector {
    /// Services it applies to; empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Input formats it applies to; empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub formats: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SchemaFormat {
    Json,
    Avro,
    Protobuf,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogSchemaStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Any JSON value (a schema body), kept as written.
fn any_json(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
