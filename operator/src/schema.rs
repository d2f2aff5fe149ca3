//! The LogSchema reconciler: compiles each schema with the data plane's own compiler and
//! reports the result as the `Accepted` condition (with the compile error when invalid).
//! Ingestors watch LogSchemas themselves; this only tells the user whether theirs is good.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::crd::LogSchema;

/// Compiles a LogSchema as an ingestor would; `Err` carries the reason.
pub fn check(schema: &LogSchema) -> Result<(), String> {
    let resource: logcluster_schema::LogSchemaResource = serde_json::from_value(json!({
        "apiVersion": "logcluster.io/v1alpha1",
        "kind": "LogSchema",
        "metadata": {"name": schema.name_any(), "namespace": schema.namespace()},
        "spec": schema.spec,
    }))
    .map_err(|e| format!("spec: {e}"))?;
    logcluster_schema::compile(&resource)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub async fn reconcile(schema: Arc<LogSchema>, client: Arc<Client>) -> Result<Action, kube::Error> {
    let outcome = check(&schema);
    let (status, reason, message) = match &outcome {
        Ok(()) => (
            "True",
            "Compiled",
            "the schema compiles; ingestors apply it".to_string(),
        ),
        Err(error) => ("False", "Invalid", error.clone()),
    };
    let generation = schema.metadata.generation;
    let unchanged = schema.status.as_ref().is_some_and(|s| {
        s.observed_generation == generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Accepted" && c.status == status && c.message == message)
    });
    if !unchanged {
        match &outcome {
            Ok(()) => info!(schema = %schema.name_any(), "LogSchema accepted"),
            Err(error) => warn!(schema = %schema.name_any(), %error, "LogSchema rejected"),
        }
        let api: Api<LogSchema> = Api::namespaced(
            client.as_ref().clone(),
            &schema.namespace().unwrap_or_else(|| "default".into()),
        );
        api.patch_status(
            &schema.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "observedGeneration": generation,
                "conditions": [{
                    "type": "Accepted", "status": status, "reason": reason, "message": message,
                    "observedGeneration": generation,
                    "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
                }],
            }})),
        )
        .await?;
    }
    Ok(Action::await_change())
}

pub fn error_policy(_: Arc<LogSchema>, error: &kube::Error, _: Arc<Client>) -> Action {
    warn!(%error, "LogSchema status update failed; retrying");
    Action::requeue(Duration::from_secs(10))
}
