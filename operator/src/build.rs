//! Pure builders: a LogCluster (plus the observed scale-down plan and TLS material) in, every
//! child object out. No I/O, no clock, no randomness — golden files pin the output.
//!
//! The node configuration in the ConfigMap is `logcluster_config::RawNodeConfig`, the type the
//! data plane parses: one source of truth for what a node accepts.

use std::collections::BTreeMap;

use logcluster_config::{RawAlerts, RawCluster, RawKubernetes, RawNodeConfig, RawTls, Role};
use serde_json::{Value, json};

use crate::crd::{LogCluster, Scheduling};

/// Paths inside the pods.
pub const CONFIG_DIR: &str = "/etc/logcluster/config";
pub const TLS_DIR: &str = "/etc/logcluster/tls";
pub const ALERTS_DIR: &str = "/etc/logcluster/alerts";
pub const DATA_DIR: &str = "/var/lib/logcluster";
/// The operator's field manager for server-side apply.
pub const FIELD_MANAGER: &str = "logcluster-operator";
/// The default data-plane image (this release).
pub const DEFAULT_IMAGE: &str =
    concat!("ghcr.io/logcluster/logcluster:", env!("CARGO_PKG_VERSION"));

/// Generated TLS material (when the spec names no Secret).
#[derive(Clone, Debug, PartialEq)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// RFC 3339 expiry of the certificate (kept as an annotation; rotation reads it).
    pub not_after: String,
}

/// What the reconciler decided about storage membership (see `scaling`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoragePlan {
    /// Replicas the StatefulSet gets now.
    pub statefulset_replicas: i32,
    /// Members (pod names) marked leaving in the ring configuration.
    pub leaving: Vec<String>,
}

pub fn name_of(lc: &LogCluster) -> String {
    lc.metadata.name.clone().unwrap_or_default()
}

pub fn namespace_of(lc: &LogCluster) -> String {
    lc.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

pub fn storage_service(lc: &LogCluster) -> String {
    format!("{}-storage", name_of(lc))
}

pub fn tls_secret_name(lc: &LogCluster) -> String {
    lc.spec
        .tls
        .secret_name
        .clone()
        .unwrap_or_else(|| format!("{}-tls", name_of(lc)))
}

/// Pod name of storage member `i`.
pub fn storage_pod(lc: &LogCluster, i: i32) -> String {
    format!("{}-storage-{i}", name_of(lc))
}

fn labels(lc: &LogCluster, component: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "logcluster",
        "app.kubernetes.io/instance": name_of(lc),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
    })
}

fn selector(lc: &LogCluster, component: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "logcluster",
        "app.kubernetes.io/instance": name_of(lc),
        "app.kubernetes.io/component": component,
    })
}

fn owner(lc: &LogCluster) -> Value {
    json!([{
        "apiVersion": "logcluster.io/v1alpha1",
        "kind": "LogCluster",
        "name": name_of(lc),
        "uid": lc.metadata.uid.clone().unwrap_or_default(),
        "controller": true,
        "blockOwnerDeletion": true,
    }])
}

fn metadata(lc: &LogCluster, name: &str, component: &str) -> Value {
    json!({
        "name": name,
        "namespace": namespace_of(lc),
        "labels": labels(lc, component),
        "ownerReferences": owner(lc),
    })
}

/// The DNS names the generated certificate must carry.
pub fn certificate_names(lc: &LogCluster) -> Vec<String> {
    let (name, ns) = (name_of(lc), namespace_of(lc));
    let mut names = vec!["localhost".to_string()];
    for service in ["storage", "ingestor", "query"] {
        let svc = format!("{name}-{service}");
        names.push(svc.clone());
        names.push(format!("{svc}.{ns}"));
        names.push(format!("{svc}.{ns}.svc"));
        names.push(format!("{svc}.{ns}.svc.cluster.local"));
    }
    names.push(format!("*.{name}-storage.{ns}.svc"));
    names.push(format!("*.{name}-storage.{ns}.svc.cluster.local"));
    names
}

/// The node configuration of a role, as the data plane parses it.
pub fn node_config(lc: &LogCluster, role: Role) -> RawNodeConfig {
    let spec = &lc.spec;
    let mut raw = RawNodeConfig::for_test(DATA_DIR);
    raw.name = None; // the pod name (host name)
    raw.roles = vec![role];
    let ports = &spec.services.ports;
    let any = |port: i32| format!("0.0.0.0:{port}");
    raw.listen.http = any(ports.http);
    if role == Role::Ingestor {
        raw.listen.ingest = any(ports.ingest);
        raw.listen.udp = any(ports.udp);
        raw.listen.syslog_tcp = any(ports.syslog);
        raw.listen.syslog_udp = any(ports.syslog);
        raw.listen.syslog_tls = any(ports.syslog_tls);
    } else {
        raw.listen.ingest = String::new();
        raw.listen.udp = String::new();
        raw.listen.syslog_tcp = String::new();
        raw.listen.syslog_udp = String::new();
        raw.listen.syslog_tls = String::new();
    }
    raw.tls = Some(RawTls {
        cert_file: format!("{TLS_DIR}/tls.crt").into(),
        key_file: format!("{TLS_DIR}/tls.key").into(),
        client_ca_file: None,
    });
    if let Some(tenant) = &spec.default_tenant {
        raw.ingest.default_tenant = tenant.clone();
    }
    raw.enrichment.environment = spec.enrichment.environment.clone();
    raw.enrichment.app_version = spec.enrichment.app_version.clone();
    raw.storage.retention.max_age = spec.retention.max_age.clone();
    raw.storage.retention.max_bytes = spec.retention.max_bytes;
    let mut cluster = RawCluster::for_test(format!("{TLS_DIR}/ca.crt"), "");
    cluster.members_file = None;
    cluster.kubernetes = Some(RawKubernetes {
        service: storage_service(lc),
        namespace: Some(namespace_of(lc)),
        port: ports.cluster as u16,
        leaving_file: Some(format!("{CONFIG_DIR}/leaving.yaml").into()),
    });
    cluster.listen = if role == Role::Storage {
        any(ports.cluster)
    } else {
        String::new()
    };
    cluster.replication_factor = spec.replication.factor;
    cluster.write_quorum = spec.replication.write_quorum;
    cluster.read_quorum = spec.replication.read_quorum;
    raw.cluster = Some(cluster);
    if role == Role::Query {
        raw.alerts = RawAlerts {
            rule_dir: (!spec.alerts.rules.is_empty()).then(|| ALERTS_DIR.into()),
            interval: spec.alerts.interval.clone(),
            webhook_url: spec.alerts.webhook_url.clone(),
            evaluators: Vec::new(),
            // Query replicas elect one evaluator: one notification per transition.
            leader_lease: Some(format!("{}-alerts", name_of(lc))),
        };
    }
    if role == Role::Ingestor {
        raw.ingest.schemas_from_kubernetes = true;
    }
    raw.stats_log_interval = "60s".into();
    raw
}

/// The ConfigMap: one node configuration per role, the leaving members and the alert rules.
pub fn config_map(lc: &LogCluster, plan: &StoragePlan) -> Result<Value, String> {
    let yaml = |role| {
        node_config(lc, role)
            .to_yaml()
            .map_err(|e| format!("node configuration: {e}"))
    };
    let leaving =
        serde_yaml::to_string(&json!({"leaving": plan.leaving})).map_err(|e| e.to_string())?;
    let alerts = serde_yaml::to_string(&json!({"rules": lc.spec.alerts.rules}))
        .map_err(|e| e.to_string())?;
    Ok(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(lc, &format!("{}-config", name_of(lc)), "config"),
        "data": {
            "storage.yaml": yaml(Role::Storage)?,
            "ingestor.yaml": yaml(Role::Ingestor)?,
            "query.yaml": yaml(Role::Query)?,
            "leaving.yaml": leaving,
            "alerts.yaml": alerts,
        },
    }))
}

/// The generated TLS Secret.
pub fn tls_secret(lc: &LogCluster, material: &TlsMaterial) -> Value {
    let mut meta = metadata(lc, &tls_secret_name(lc), "tls");
    meta["annotations"] = json!({
        "logcluster.io/not-after": material.not_after,
        "logcluster.io/names": certificate_names(lc).join(","),
    });
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "kubernetes.io/tls",
        "stringData": {
            "ca.crt": material.ca_pem,
            "tls.crt": material.cert_pem,
            "tls.key": material.key_pem,
        },
    })
}

/// The pods' identity and the least privilege they need: read EndpointSlices (discovery)
/// and LogSchemas (ingestors reload them), and the alerts Lease (query nodes).
pub fn rbac(lc: &LogCluster) -> Vec<Value> {
    let name = format!("{}-node", name_of(lc));
    vec![
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(lc, &name, "node"),
            "automountServiceAccountToken": true,
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": metadata(lc, &name, "node"),
            "rules": [
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["logcluster.io"], "resources": ["logschemas"], "verbs": ["get", "list", "watch"]},
                // The query nodes elect the alert evaluator with a Lease.
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata(lc, &name, "node"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace_of(lc)}],
        }),
    ]
}

fn scheduling(pod: &mut Value, scheduling: &Option<Scheduling>) {
    let Some(s) = scheduling else {
        return;
    };
    if !s.node_selector.is_empty() {
        pod["nodeSelector"] = json!(s.node_selector);
    }
    if !s.tolerations.is_empty() {
        pod["tolerations"] = json!(s.tolerations);
    }
    if let Some(affinity) = &s.affinity {
        pod["affinity"] = json!(affinity);
    }
    if !s.topology_spread_constraints.is_empty() {
        pod["topologySpreadConstraints"] = json!(s.topology_spread_constraints);
    }
}

fn default_resources() -> Value {
    json!({
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    })
}

/// The pod template of a role.
fn pod_template(
    lc: &LogCluster,
    component: &str,
    role_file: &str,
    ports: Value,
    resources: &Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    sched: &Option<Scheduling>,
    config_hash: &str,
) -> Value {
    // Storage members keep their data on their volume claim; the stateless roles get scratch.
    let with_data = component == "storage";
    let image = lc
        .spec
        .image
        .clone()
        .unwrap_or_else(|| DEFAULT_IMAGE.to_string());
    let mut mounts = vec![
        json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true}),
        json!({"name": "tls", "mountPath": TLS_DIR, "readOnly": true}),
    ];
    let mut volumes = vec![
        json!({"name": "config", "configMap": {"name": format!("{}-config", name_of(lc))}}),
        json!({"name": "tls", "secret": {"secretName": tls_secret_name(lc)}}),
    ];
    if with_data {
        mounts.push(json!({"name": "data", "mountPath": DATA_DIR}));
    } else {
        mounts.push(json!({"name": "data", "mountPath": DATA_DIR}));
        volumes.push(json!({"name": "data", "emptyDir": {}}));
    }
    if component == "query" {
        mounts.push(json!({"name": "alerts", "mountPath": ALERTS_DIR, "readOnly": true}));
        volumes.push(json!({"name": "alerts", "configMap": {
            "name": format!("{}-config", name_of(lc)),
            "items": [{"key": "alerts.yaml", "path": "rules.yaml"}],
        }}));
    }
    let http = lc.spec.services.ports.http;
    let mut pod = json!({
        "serviceAccountName": format!("{}-node", name_of(lc)),
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": 60,
        "containers": [{
            "name": "logcluster",
            "image": image,
            "imagePullPolicy": lc.spec.image_pull_policy.clone().unwrap_or_else(|| "IfNotPresent".into()),
            "args": ["node", "--config", format!("{CONFIG_DIR}/{role_file}")],
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            ],
            "ports": ports,
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": http}, "periodSeconds": 5},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": http}, "periodSeconds": 10, "failureThreshold": 6},
            "resources": resources.as_ref().map_or_else(default_resources, |r| json!(r)),
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    });
    scheduling(&mut pod, sched);
    json!({
        "metadata": {
            "labels": labels(lc, component),
            // A changed configuration rolls the pods.
            "annotations": {"logcluster.io/config-hash": config_hash},
        },
        "spec": pod,
    })
}

fn port(name: &str, port: i32, protocol: &str) -> Value {
    json!({"name": name, "containerPort": port, "protocol": protocol})
}

/// The storage members: headless Service and StatefulSet.
pub fn storage(lc: &LogCluster, plan: &StoragePlan, config_hash: &str) -> Vec<Value> {
    let name = storage_service(lc);
    let ports = &lc.spec.services.ports;
    let spec = &lc.spec.storage;
    let mut claim = json!({
        "metadata": {"name": "data", "labels": labels(lc, "storage")},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": spec.size}},
        },
    });
    if let Some(class) = &spec.storage_class_name {
        claim["spec"]["storageClassName"] = json!(class);
    }
    vec![
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(lc, &name, "storage"),
            "spec": {
                "clusterIP": "None",
                // Members stay in the ring while not ready: readiness must not make it flap.
                "publishNotReadyAddresses": true,
                "selector": selector(lc, "storage"),
                "ports": [
                    {"name": "cluster", "port": ports.cluster, "targetPort": ports.cluster, "protocol": "TCP"},
                    {"name": "http", "port": ports.http, "targetPort": ports.http, "protocol": "TCP"},
                ],
            },
        }),
        json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": metadata(lc, &name, "storage"),
            "spec": {
                "serviceName": name,
                "replicas": plan.statefulset_replicas,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": selector(lc, "storage")},
                "persistentVolumeClaimRetentionPolicy": {
                    "whenDeleted": "Retain",
                    "whenScaled": if spec.delete_volumes_on_scale_down { "Delete" } else { "Retain" },
                },
                "template": pod_template(
                    lc, "storage", "storage.yaml",
                    json!([port("cluster", ports.cluster, "TCP"), port("http", ports.http, "TCP")]),
                    &spec.resources, &spec.scheduling, config_hash,
                ),
                "volumeClaimTemplates": [claim],
            },
        }),
    ]
}

fn service_ports(lc: &LogCluster, component: &str) -> Value {
    let p = &lc.spec.services.ports;
    let np = &lc.spec.services.node_ports;
    let mut ports = if component == "ingestor" {
        vec![
            json!({"name": "ingest", "port": p.ingest, "targetPort": p.ingest, "protocol": "TCP"}),
            json!({"name": "udp", "port": p.udp, "targetPort": p.udp, "protocol": "UDP"}),
            json!({"name": "syslog", "port": p.syslog, "targetPort": p.syslog, "protocol": "TCP"}),
            json!({"name": "syslog-udp", "port": p.syslog, "targetPort": p.syslog, "protocol": "UDP"}),
            json!({"name": "syslog-tls", "port": p.syslog_tls, "targetPort": p.syslog_tls, "protocol": "TCP"}),
            json!({"name": "http", "port": p.http, "targetPort": p.http, "protocol": "TCP"}),
        ]
    } else {
        vec![json!({"name": "http", "port": p.http, "targetPort": p.http, "protocol": "TCP"})]
    };
    // NodePorts only where the Service type has them, keyed `<component>.<port name>`.
    let service_type = if component == "ingestor" {
        &lc.spec.services.ingestor_type
    } else {
        &lc.spec.services.query_type
    };
    if matches!(service_type.as_str(), "NodePort" | "LoadBalancer") {
        for port in &mut ports {
            let key = port["name"].as_str().unwrap_or("").to_string();
            if let Some(node_port) = np.get(&format!("{component}.{key}")) {
                port["nodePort"] = json!(node_port);
            }
        }
    }
    json!(ports)
}

/// A stateless role: Deployment and Service.
pub fn stateless(lc: &LogCluster, component: &str, config_hash: &str) -> Vec<Value> {
    let name = format!("{}-{component}", name_of(lc));
    let (role, service_type, role_file) = if component == "ingestor" {
        (
            &lc.spec.ingestor,
            &lc.spec.services.ingestor_type,
            "ingestor.yaml",
        )
    } else {
        (&lc.spec.query, &lc.spec.services.query_type, "query.yaml")
    };
    let container_ports: Vec<Value> = service_ports(lc, component)
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            port(
                p["name"].as_str().unwrap_or(""),
                p["port"].as_i64().unwrap_or(0) as i32,
                p["protocol"].as_str().unwrap_or("TCP"),
            )
        })
        .collect();
    vec![
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(lc, &name, component),
            "spec": {
                "type": service_type,
                "selector": selector(lc, component),
                "ports": service_ports(lc, component),
            },
        }),
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(lc, &name, component),
            "spec": {
                "replicas": role.replicas,
                "selector": {"matchLabels": selector(lc, component)},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": pod_template(lc, component, role_file, json!(container_ports), &role.resources, &role.scheduling, config_hash),
            },
        }),
    ]
}

/// Disruption budgets: storage may lose RF − W members at once (acks keep flowing); the
/// stateless roles one pod at a time.
pub fn disruption_budgets(lc: &LogCluster) -> Vec<Value> {
    let r = &lc.spec.replication;
    let storage_unavailable = (r.factor.saturating_sub(r.write_quorum)).max(1);
    ["storage", "ingestor", "query"]
        .iter()
        .map(|component| {
            let max = if *component == "storage" { storage_unavailable } else { 1 };
            json!({
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": metadata(lc, &format!("{}-{component}", name_of(lc)), component),
                "spec": {"maxUnavailable": max, "selector": {"matchLabels": selector(lc, component)}},
            })
        })
        .collect()
}

/// A short stable hash of the node configuration and the certificate version (`tls`): pods
/// roll when either changes, so a rotated certificate is loaded without anyone acting.
pub fn config_hash(lc: &LogCluster, tls: &str) -> String {
    let mut text = String::from(tls);
    for role in [Role::Storage, Role::Ingestor, Role::Query] {
        text.push_str(&node_config(lc, role).to_yaml().unwrap_or_default());
    }
    text.push_str(&serde_json::to_string(&lc.spec.alerts).unwrap_or_default());
    format!("{:016x}", logcluster_common::ids::fnv1a64(text.as_bytes()))
}

/// Every child object, in apply order.
/// `tls_version` identifies the certificate the pods must run with (see [`config_hash`]).
pub fn all(
    lc: &LogCluster,
    plan: &StoragePlan,
    tls: Option<&TlsMaterial>,
    tls_version: &str,
) -> Result<Vec<Value>, String> {
    let hash = config_hash(lc, tls_version);
    let mut objects = vec![config_map(lc, plan)?];
    if let Some(material) = tls {
        objects.push(tls_secret(lc, material));
    }
    objects.extend(rbac(lc));
    objects.extend(storage(lc, plan, &hash));
    objects.extend(stateless(lc, "ingestor", &hash));
    objects.extend(stateless(lc, "query", &hash));
    objects.extend(disruption_budgets(lc));
    Ok(objects)
}

/// `kind/name` of an object, for messages and golden files.
pub fn object_key(object: &Value) -> String {
    format!(
        "{}/{}",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Labels as a map (tests, selectors).
pub fn labels_map(lc: &LogCluster, component: &str) -> BTreeMap<String, String> {
    serde_json::from_value(labels(lc, component)).unwrap_or_default()
}
