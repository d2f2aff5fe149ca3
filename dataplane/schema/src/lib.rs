//! LogSchema resources: parsing, compiling and validating entries against them, and
//! hot-reloading a folder of them.
//!
//! A LogSchema is the same resource the operator serves (`apiVersion: logcluster.io/v1alpha1`,
//! `kind: LogSchema`); locally it is read from YAML files. Its selector picks services (and
//! optionally input formats); its `format` says what `schema` holds:
//! - `json`: a JSON Schema object; the record's JSON view must validate.
//! - `avro`: an Avro schema (object or JSON string); the view must resolve against it (Avro
//!   schema resolution: missing fields need defaults, numeric types promote, extra keys of the
//!   record are ignored).
//! - `protobuf`: `{descriptorSet: <base64 FileDescriptorSet>, messageName}`; the view must map
//!   onto the message with the protobuf JSON mapping, unknown fields denied.
//!
//! The *view* is the record as the user sent it for JSON and Avro input, and for other
//! inputs an object of the core fields (message, level, service, host, tenant, trace_id,
//! timestamp) with the free-form fields beside them. A schema that fails to parse or compile is
//! reported and not applied; if an earlier version of it compiled, that version stays in force.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{info, warn};

/// Kubernetes-style metadata (the part LogCluster uses).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A LogSchema resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogSchemaResource {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: LogSchemaSpec,
}

/// Which logs a schema applies to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    /// Services it applies to; empty = every service.
    #[serde(default)]
    pub services: Vec<String>,
    /// Input formats it applies to (json, protobuf, avro, raw, syslog, journald, and the
    /// compatibility APIs elasticsearch, otlp, loki); empty = all.
    #[serde(default)]
    pub formats: Vec<String>,
}

/// The kind of schema in `spec.schema`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchemaFormat {
    Json,
    Avro,
    Protobuf,
}

/// The spec of a LogSchema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogSchemaSpec {
    #[serde(default)]
    pub selector: Selector,
    pub format: SchemaFormat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    pub schema: Value,
}

/// Why a schema cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("apiVersion must be logcluster.io/v1alpha1 and kind LogSchema, got {0}")]
    WrongKind(String),
    #[error("invalid JSON Schema: {0}")]
    JsonSchema(String),
    #[error("invalid Avro schema: {0}")]
    Avro(String),
    #[error("protobuf schema needs {{descriptorSet: <base64>, messageName: <name>}}: {0}")]
    ProtobufShape(String),
    #[error("invalid protobuf descriptor set: {0}")]
    Descriptor(String),
    #[error("message {0:?} is not in the descriptor set")]
    UnknownMessage(String),
}

/// A record refused by a schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub schema: String,
    /// Metric label: `json_schema`, `avro_mismatch`, `protobuf_mismatch`.
    pub reason: &'static str,
    pub message: String,
}

enum Validator {
    Json(Box<jsonschema::Validator>),
    Avro(apache_avro::Schema),
    Protobuf(prost_reflect::MessageDescriptor),
}

/// A compiled, ready-to-use schema.
pub struct CompiledSchema {
    pub resource: LogSchemaResource,
    validator: Validator,
}

/// Compiles a resource.
pub fn compile(resource: &LogSchemaResource) -> Result<CompiledSchema, CompileError> {
    if resource.api_version != "logcluster.io/v1alpha1" || resource.kind != "LogSchema" {
        return Err(CompileError::WrongKind(format!(
            "{}/{}",
            resource.api_version, resource.kind
        )));
    }
    let validator = match resource.spec.format {
        SchemaFormat::Json => Validator::Json(Box::new(
            jsonschema::validator_for(&resource.spec.schema)
                .map_err(|e| CompileError::JsonSchema(e.to_string()))?,
        )),
        SchemaFormat::Avro => {
            logcluster_proto::avro::init_allocation_limit();
            let text = match &resource.spec.schema {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            Validator::Avro(
                logcluster_proto::avro::parse_untrusted_schema(&text)
                    .map_err(|e| CompileError::Avro(logcluster_common::error_chain(&e)))?,
            )
        }
        SchemaFormat::Protobuf => {
            let field = |key: &str| {
                resource
                    .spec
                    .schema
                    .get(key)
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            let encoded = field("descriptorSet")
                .ok_or_else(|| CompileError::ProtobufShape("descriptorSet missing".into()))?;
            let name = field("messageName")
                .ok_or_else(|| CompileError::ProtobufShape("messageName missing".into()))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|e| CompileError::Descriptor(format!("not base64: {e}")))?;
            let pool = prost_reflect::DescriptorPool::decode(bytes.as_slice())
                .map_err(|e| CompileError::Descriptor(e.to_string()))?;
            Validator::Protobuf(
                pool.get_message_by_name(&name)
                    .ok_or(CompileError::UnknownMessage(name))?,
            )
        }
    };
    Ok(CompiledSchema {
        resource: resource.clone(),
        validator,
    })
}

impl CompiledSchema {
    pub fn name(&self) -> &str {
        &self.resource.metadata.name
    }

    /// Whether this schema applies to a record of `service` that arrived as `input_format`.
    pub fn applies_to(&self, service: &str, input_format: &str) -> bool {
        let services = &self.resource.spec.selector.services;
        (services.is_empty() || services.iter().any(|s| s == service))
            && self.applies_to_format(input_format)
    }

    /// Whether this schema applies to records that arrived as `input_format`, whatever
    /// their service.
    pub fn applies_to_format(&self, input_format: &str) -> bool {
        let formats = &self.resource.spec.selector.formats;
        formats.is_empty() || formats.iter().any(|f| f == input_format)
    }

    /// Checks one record view.
    pub fn validate(&self, view: &Value) -> Result<(), Violation> {
        let violation = |reason: &'static str, message: String| Violation {
            schema: self.name().to_string(),
            reason,
            message,
        };
        match &self.validator {
            Validator::Json(validator) => match validator.iter_errors(view).next() {
                None => Ok(()),
                Some(error) => {
                    let path = error.instance_path().to_string();
                    let at = if path.is_empty() {
                        "the record".to_string()
                    } else {
                        path
                    };
                    Err(violation("json_schema", format!("{at}: {error}")))
                }
            },
            Validator::Avro(schema) => {
                let value = apache_avro::types::Value::from(view.clone());
                value.resolve(schema).map(|_| ()).map_err(|e| {
                    violation(
                        "avro_mismatch",
                        format!("record does not match the Avro schema: {e}"),
                    )
                })
            }
            Validator::Protobuf(descriptor) => {
                let options = prost_reflect::DeserializeOptions::new().deny_unknown_fields(true);
                prost_reflect::DynamicMessage::deserialize_with_options(
                    descriptor.clone(),
                    view,
                    &options,
                )
                .map(|_| ())
                .map_err(|e| {
                    violation(
                        "protobuf_mismatch",
                        format!("record does not map onto {}: {e}", descriptor.full_name()),
                    )
                })
            }
        }
    }
}

/// The state of one schema, for the API and for clients that validate before sending.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SchemaStatus {
    pub name: String,
    pub version: Option<i64>,
    pub format: Option<SchemaFormat>,
    pub file: PathBuf,
    /// Whether the latest definition compiled (false: `error` says why; an earlier good
    /// version may still be in force).
    pub accepted: bool,
    pub error: Option<String>,
    /// Whether some version of it is being enforced.
    pub active: bool,
}

/// What a reload did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReloadReport {
    pub loaded: usize,
    pub failed: usize,
    pub removed: usize,
}

/// Why a folder could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read schema folder {path}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Default)]
struct Snapshot {
    schemas: Vec<Arc<CompiledSchema>>,
    statuses: Vec<SchemaStatus>,
}

/// The schemas in force at one moment ([`SchemaRegistry::current`]).
pub struct SchemaSet(Arc<Snapshot>);

impl SchemaSet {
    /// Whether any schema applies to records of this input format, whatever their service.
    pub fn has_schema_for_format(&self, input_format: &str) -> bool {
        self.0
            .schemas
            .iter()
            .any(|s| s.applies_to_format(input_format))
    }

    /// Fast check: does any schema apply? (Called for every record.)
    pub fn has_schema_for(&self, service: &str, input_format: &str) -> bool {
        self.0
            .schemas
            .iter()
            .any(|s| s.applies_to(service, input_format))
    }

    /// Every schema that applies must accept the view.
    pub fn validate(
        &self,
        service: &str,
        input_format: &str,
        view: &Value,
    ) -> Result<(), Violation> {
        for schema in self
            .0
            .schemas
            .iter()
            .filter(|s| s.applies_to(service, input_format))
        {
            schema.validate(view)?;
        }
        Ok(())
    }
}

/// The live set of schemas. Cheap to clone; readers never block writers for long.
#[derive(Clone, Default)]
pub struct SchemaRegistry {
    inner: Arc<RwLock<Arc<Snapshot>>>,
}

impl SchemaRegistry {
    pub fn new() -> SchemaRegistry {
        SchemaRegistry::default()
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The schemas in force now, unchanged by later reloads: a batch decided and validated
    /// with one set sees no reload halfway.
    pub fn current(&self) -> SchemaSet {
        SchemaSet(self.snapshot())
    }

    /// Loads every `.yaml`/`.yml` file of `dir`, replacing the previous set.
    pub fn load_dir(&self, dir: &Path) -> Result<ReloadReport, RegistryError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| RegistryError::ReadDir {
                path: dir.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        let mut documents = Vec::new();
        for file in files {
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                Err(error) => {
                    warn!(file = %file.display(), %error, "cannot read schema file");
                    continue;
                }
            };
            for (position, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
                let parsed = Value::deserialize(document)
                    .map_err(|e| e.to_string())
                    .and_then(|value| {
                        if value.is_null() {
                            return Ok(None);
                        }
                        serde_json::from_value::<LogSchemaResource>(value)
                            .map(Some)
                            .map_err(|e| e.to_string())
                    });
                let label = format!(
                    "{}#{position}",
                    file.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                );
                match parsed {
                    Ok(None) => {}
                    Ok(Some(resource)) => documents.push((file.clone(), label, Ok(resource))),
                    Err(error) => documents.push((file.clone(), label, Err(error))),
                }
            }
        }
        Ok(self.load_resources(documents))
    }

    /// Replaces the set with these resources (from files, or from the Kubernetes API: the
    /// same path either way). Each item is (source, label for a resource that did not
    /// parse, the parsed resource or why it did not parse). A resource that does not
    /// compile keeps its previous good version in force.
    pub fn load_resources(
        &self,
        documents: Vec<(PathBuf, String, Result<LogSchemaResource, String>)>,
    ) -> ReloadReport {
        let previous = self.snapshot();
        let mut by_name: BTreeMap<String, (Arc<CompiledSchema>, SchemaStatus)> = BTreeMap::new();
        let mut failures: Vec<SchemaStatus> = Vec::new();
        let mut report = ReloadReport::default();
        for (file, label, parsed) in documents {
            let resource = match parsed {
                Ok(resource) => resource,
                Err(error) => {
                    report.failed += 1;
                    warn!(file = %file.display(), document = %label, %error, "not a valid LogSchema");
                    failures.push(SchemaStatus {
                        name: label,
                        version: None,
                        format: None,
                        file: file.clone(),
                        accepted: false,
                        error: Some(error),
                        active: false,
                    });
                    continue;
                }
            };
            let name = resource.metadata.name.clone();
            let mut status = SchemaStatus {
                name: name.clone(),
                version: resource.spec.version,
                format: Some(resource.spec.format),
                file: file.clone(),
                accepted: true,
                error: None,
                active: true,
            };
            match compile(&resource) {
                Ok(compiled) => {
                    report.loaded += 1;
                    by_name.insert(name, (Arc::new(compiled), status));
                }
                Err(error) => {
                    report.failed += 1;
                    warn!(schema = %name, file = %file.display(), %error, "schema does not compile; not applied");
                    status.accepted = false;
                    status.error = Some(error.to_string());
                    match previous.schemas.iter().find(|s| s.name() == name) {
                        Some(good) => {
                            warn!(schema = %name, "keeping the previous good version in force");
                            by_name.insert(name, (good.clone(), status));
                        }
                        None => {
                            status.active = false;
                            failures.push(status);
                        }
                    }
                }
            }
        }
        report.removed = previous
            .schemas
            .iter()
            .filter(|s| !by_name.contains_key(s.name()))
            .count();
        let mut statuses: Vec<SchemaStatus> = by_name.values().map(|(_, s)| s.clone()).collect();
        statuses.extend(failures);
        let snapshot = Snapshot {
            schemas: by_name.into_values().map(|(c, _)| c).collect(),
            statuses,
        };
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
        report
    }

    pub fn statuses(&self) -> Vec<SchemaStatus> {
        self.snapshot().statuses.clone()
    }

    /// The resources in force.
    pub fn resources(&self) -> Vec<LogSchemaResource> {
        self.snapshot()
            .schemas
            .iter()
            .map(|s| s.resource.clone())
            .collect()
    }
}

fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let meta = e.metadata().ok()?;
                    Some((e.path(), meta.len(), meta.modified().ok()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Polls `dir` every `interval` and reloads when a file appears, changes or disappears.
pub async fn watch_dir(
    registry: SchemaRegistry,
    dir: PathBuf,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // Start from "nothing seen": the first poll reloads whatever is there, so files written
    // between the caller's initial load and this task starting are never missed.
    let mut last = Vec::new();
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut shutdown => return,
        }
        let dir_for_fp = dir.clone();
        let Ok(current) = tokio::task::spawn_blocking(move || fingerprint(&dir_for_fp)).await
        else {
            continue;
        };
        if current == last {
            continue;
        }
        last = current;
        let registry = registry.clone();
        let dir_for_load = dir.clone();
        match tokio::task::spawn_blocking(move || registry.load_dir(&dir_for_load)).await {
            Ok(Ok(report)) => info!(?report, dir = %dir.display(), "schemas reloaded"),
            Ok(Err(error)) => warn!(%error, "schema reload failed"),
            Err(error) => warn!(%error, "schema reload task failed"),
        }
    }
}
