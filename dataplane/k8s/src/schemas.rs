//! LogSchema resources from the Kubernetes API into the schema registry, through the same
//! path as the schema folder ([`SchemaRegistry::load_resources`]): an ingestor picks up a new
//! or changed schema without a restart, and a schema that does not compile keeps its previous
//! good version in force.

use std::path::PathBuf;

use futures_util::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use logcluster_schema::{LogSchemaResource, SchemaRegistry};
use tracing::{info, warn};

/// The LogSchema API resource.
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("logcluster.io", "v1alpha1", "LogSchema"),
        "logschemas",
    )
}

/// Converts an API object into the registry's resource type.
pub fn to_resource(object: &DynamicObject) -> Result<LogSchemaResource, String> {
    let mut value = serde_json::to_value(object).map_err(|e| e.to_string())?;
    // The registry's metadata is the part LogCluster uses: name and namespace.
    value["metadata"] = serde_json::json!({
        "name": object.name_any(),
        "namespace": object.namespace(),
    });
    if value.get("status").is_some() {
        value.as_object_mut().map(|m| m.remove("status"));
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// Reloads `registry` from the LogSchemas of `namespace` whenever they change.
pub async fn watch_schemas(client: Client, namespace: String, registry: SchemaRegistry) {
    let api: Api<DynamicObject> = Api::namespaced_with(client, &namespace, &api_resource());
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures_util::pin_mut!(stream);
    let mut schemas: crate::WatchedSet<DynamicObject> = crate::WatchedSet::default();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                warn!(%error, "LogSchema watch failed; retrying");
                continue;
            }
        };
        if !schemas.apply(event) {
            continue;
        }
        let documents = schemas
            .objects()
            .map(|object| {
                let name = object.name_any();
                (
                    PathBuf::from(format!("kubernetes:{namespace}/{name}")),
                    name,
                    to_resource(object),
                )
            })
            .collect();
        let report = registry.load_resources(documents);
        info!(?report, "LogSchemas reloaded from the Kubernetes API");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_objects_convert_to_registry_resources() {
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "logcluster.io/v1alpha1",
            "kind": "LogSchema",
            "metadata": {"name": "payment-events", "namespace": "logs", "uid": "u1",
                         "resourceVersion": "7", "managedFields": []},
            "spec": {"selector": {"services": ["payment"]}, "format": "json", "version": 2,
                     "schema": {"type": "object", "required": ["amount"]}},
            "status": {"conditions": []},
        }))
        .expect("object");
        let resource = to_resource(&object).expect("converts");
        assert_eq!(resource.metadata.name, "payment-events");
        assert_eq!(resource.spec.version, Some(2));
        let registry = SchemaRegistry::new();
        let report = registry.load_resources(vec![(
            PathBuf::from("k8s"),
            "payment-events".into(),
            Ok(resource),
        )]);
        assert_eq!(report.loaded, 1);
        assert!(registry.current().has_schema_for("payment", "json"));
    }
}
