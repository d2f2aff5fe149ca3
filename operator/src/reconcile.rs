//! The LogCluster reconciler: read → validate (pure) → build (pure) → apply (server-side
//! apply, one field manager, owner references) → status.
//!
//! Level-triggered and idempotent: every pass applies the whole desired state. An invalid
//! spec sets `Degraded` and applies nothing until the spec changes; a transient error is
//! retried with backoff (see [`error_policy`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::build::{self, FIELD_MANAGER, StoragePlan, TlsMaterial};
use crate::crd::LogCluster;
use crate::scaling::{self, Phase};

/// Renew the generated certificate when less than this is left.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
const CERT_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Build(String),
    #[error("certificates: {0}")]
    Certs(#[from] logcluster_common::certs::CertError),
}

/// Where to ask a leaving storage pod for its drain status.
pub type DrainUrl = Box<dyn Fn(&LogCluster, &str) -> String + Send + Sync>;

/// Shared by every reconcile pass.
pub struct Context {
    pub client: Client,
    /// Consecutive failures per LogCluster (namespace/name), for the retry backoff.
    pub failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// Publishes Kubernetes Events (None in tests that do not look at events).
    pub recorder: Option<Recorder>,
    /// The drain status URL of a leaving storage pod.
    pub drain_url: DrainUrl,
    /// How long a leaving member must keep reporting drained before the StatefulSet shrinks:
    /// longer than the kubelet takes to deliver the leaving list (a ConfigMap volume) to every
    /// pod, so nobody still writes to a member that is about to go.
    pub drain_settle: Duration,
    /// Since when each leaving pod has reported drained without interruption.
    /// (LogCluster as `namespace/name`, pod) → since when its drain has held.
    pub drained_since: std::sync::Mutex<BTreeMap<(String, String), std::time::Instant>>,
}

impl Context {
    pub fn new(client: Client, recorder: Option<Recorder>) -> Context {
        Context {
            client,
            failures: Default::default(),
            drain_settle: Duration::from_secs(90),
            drained_since: Default::default(),
            recorder,
            drain_url: Box::new(|lc, pod| {
                format!(
                    "http://{pod}.{}.{}.svc:{}/api/v1/drain",
                    build::storage_service(lc),
                    build::namespace_of(lc),
                    lc.spec.services.ports.http
                )
            }),
        }
    }
}

fn api_resource(object: &Value) -> ApiResource {
    let api_version = object["apiVersion"].as_str().unwrap_or("v1");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let kind = object["kind"].as_str().unwrap_or("");
    let plural = match kind {
        "ConfigMap" => "configmaps",
        "Secret" => "secrets",
        "ServiceAccount" => "serviceaccounts",
        "Role" => "roles",
        "RoleBinding" => "rolebindings",
        "Service" => "services",
        "StatefulSet" => "statefulsets",
        "Deployment" => "deployments",
        "PodDisruptionBudget" => "poddisruptionbudgets",
        other => return ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, other)),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// Server-side apply of one object under the operator's field manager.
pub async fn apply(client: &Client, namespace: &str, object: &Value) -> Result<(), Error> {
    let resource = api_resource(object);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await?;
    Ok(())
}

fn condition(
    kind: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Value {
    json!({
        "type": kind,
        "status": if status { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
    })
}

async fn publish(ctx: &Context, lc: &LogCluster, type_: EventType, reason: &str, note: String) {
    let Some(recorder) = &ctx.recorder else {
        return;
    };
    let reference: ObjectReference = lc.object_ref(&());
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &reference).await {
        warn!(%error, "could not publish an event");
    }
}

/// Keeps a condition's lastTransitionTime when its status did not change.
fn merge_conditions(
    old: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    new: Vec<Value>,
) -> Vec<Value> {
    new.into_iter()
        .map(|mut c| {
            if let Some(previous) = old
                .iter()
                .find(|o| Some(o.type_.as_str()) == c["type"].as_str())
                && Some(previous.status.as_str()) == c["status"].as_str()
            {
                c["lastTransitionTime"] = json!(previous.last_transition_time.0.to_string());
            }
            c
        })
        .collect()
}

async fn patch_status(ctx: &Context, lc: &LogCluster, status: Value) -> Result<(), Error> {
    let api: Api<LogCluster> = Api::namespaced(ctx.client.clone(), &build::namespace_of(lc));
    api.patch_status(
        &lc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

/// A short fingerprint of a certificate (FNV-1a of its PEM): a new certificate rolls the pods.
fn fingerprint(pem: &[u8]) -> String {
    format!("{:016x}", logcluster_common::ids::fnv1a64(pem))
}

/// The fingerprint of the certificate a TLS Secret holds (empty when it holds none).
fn secret_fingerprint(secret: Option<&Secret>) -> String {
    secret
        .and_then(|s| s.data.as_ref())
        .and_then(|d| d.get("tls.crt"))
        .map(|c| fingerprint(&c.0))
        .unwrap_or_default()
}

/// Decides whether the generated certificate must be (re)issued, and issues it. Also returns
/// the fingerprint of the certificate the pods must run with (generated or the user's own
/// Secret): when it changes, the pods roll and load it.
async fn tls_material(
    ctx: &Context,
    lc: &LogCluster,
) -> Result<(Option<TlsMaterial>, String), Error> {
    let ns = build::namespace_of(lc);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let current = secrets.get_opt(&build::tls_secret_name(lc)).await?;
    if lc.spec.tls.secret_name.is_some() {
        return Ok((None, secret_fingerprint(current.as_ref())));
    }
    let names = build::certificate_names(lc);
    let fresh = current.as_ref().is_some_and(|secret| {
        let not_after = secret
            .annotations()
            .get("logcluster.io/not-after")
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
        let names_ok = secret.annotations().get("logcluster.io/names") == Some(&names.join(","));
        names_ok
            && not_after.is_some_and(|t| {
                t.as_second() - k8s_openapi::jiff::Timestamp::now().as_second()
                    > RENEW_BEFORE.as_secs() as i64
            })
    });
    if fresh {
        return Ok((None, secret_fingerprint(current.as_ref())));
    }
    // The CA lives in its own Secret (never mounted into pods) and outlives rotations.
    let ca_name = format!("{}-ca", build::name_of(lc));
    let ca = secrets.get_opt(&ca_name).await?;
    let ca_pems = ca.as_ref().and_then(|s| {
        let data = s.data.as_ref()?;
        let cert = String::from_utf8(data.get("ca.crt")?.0.clone()).ok()?;
        let key = String::from_utf8(data.get("ca.key")?.0.clone()).ok()?;
        Some((cert, key))
    });
    let issued = logcluster_common::certs::issue(
        ca_pems.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
        &names,
        CERT_VALIDITY,
    )?;
    if ca_pems.is_none() {
        let mut meta = json!({
            "name": ca_name, "namespace": ns,
            "labels": build::labels_map(lc, "tls"),
        });
        meta["ownerReferences"] = json!([{
            "apiVersion": "logcluster.io/v1alpha1", "kind": "LogCluster", "name": build::name_of(lc),
            "uid": lc.metadata.uid.clone().unwrap_or_default(), "controller": true, "blockOwnerDeletion": true,
        }]);
        apply(
            &ctx.client,
            &ns,
            &json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque",
                "stringData": {"ca.crt": issued.ca_pem, "ca.key": issued.ca_key_pem},
            }),
        )
        .await?;
    }
    let not_after = k8s_openapi::jiff::Timestamp::from_second(issued.not_after_secs as i64)
        .map(|t| t.to_string())
        .unwrap_or_default();
    publish(
        ctx,
        lc,
        EventType::Normal,
        if current.is_some() {
            "CertificateRotated"
        } else {
            "CertificateIssued"
        },
        format!("issued the node certificate, valid until {not_after}"),
    )
    .await;
    let version = fingerprint(issued.cert_pem.as_bytes());
    Ok((
        Some(TlsMaterial {
            ca_pem: issued.ca_pem,
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            not_after,
        }),
        version,
    ))
}

/// Asks each leaving member whether it handed everything over.
async fn drain_states(
    ctx: &Context,
    lc: &LogCluster,
    pods: &[String],
) -> BTreeMap<String, Option<bool>> {
    let mut states = BTreeMap::new();
    for pod in pods {
        let url = (ctx.drain_url)(lc, pod);
        let answer =
            logcluster_common::http_client::request("GET", &url, &[], b"", Duration::from_secs(5))
                .await;
        let drained = match answer {
            Ok(r) if r.status == 200 => serde_json::from_str::<Value>(&r.body)
                .ok()
                .and_then(|v| v["drained"].as_bool()),
            Ok(r) => {
                warn!(%pod, status = r.status, "drain status not available");
                None
            }
            Err(error) => {
                warn!(%pod, %error, "drain status not available");
                None
            }
        };
        states.insert(pod.clone(), drained);
    }
    states
}

/// Keeps a leaving pod's `drained` only once it has held for `drain_settle`.
/// `scope` names the LogCluster (namespace and name): each one's clocks are its own, however
/// many clusters the operator reconciles, and pods of the same name in two namespaces.
fn settled(
    ctx: &Context,
    scope: &str,
    states: BTreeMap<String, Option<bool>>,
) -> BTreeMap<String, Option<bool>> {
    let mut since = ctx.drained_since.lock().unwrap_or_else(|p| p.into_inner());
    since.retain(|(owner, pod), _| owner != scope || states.get(pod) == Some(&Some(true)));
    states
        .into_iter()
        .map(|(pod, state)| {
            let state = match state {
                Some(true) => {
                    let first = *since
                        .entry((scope.to_string(), pod.clone()))
                        .or_insert_with(std::time::Instant::now);
                    Some(first.elapsed() >= ctx.drain_settle)
                }
                other => other,
            };
            (pod, state)
        })
        .collect()
}

/// Volume claim templates cannot change after the StatefulSet exists: a changed size or
/// class is reported instead of wedging every apply.
fn immutable_storage_changes(lc: &LogCluster, sts: Option<&StatefulSet>) -> Vec<String> {
    let Some(claim) = sts
        .and_then(|s| s.spec.as_ref())
        .and_then(|spec| spec.volume_claim_templates.as_ref())
        .and_then(|claims| claims.first())
        .and_then(|claim| claim.spec.as_ref())
    else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    let size = claim
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone());
    // The API server keeps a quantity in its canonical spelling (`2048Mi` comes back `2Gi`):
    // sizes are compared by what they mean.
    if let Some(size) = size
        && !same_quantity(&size, &lc.spec.storage.size)
    {
        problems.push(format!(
            "storage.size cannot change from {size} to {} after creation (volume claims are immutable); revert it, and expand the PersistentVolumeClaims directly if the StorageClass allows",
            lc.spec.storage.size
        ));
    }
    // Unset counts as a change too: the claim template would lose its class.
    if claim.storage_class_name != lc.spec.storage.storage_class_name {
        problems.push(format!(
            "storage.storageClassName cannot change from {:?} to {:?} after creation (volume claims are immutable)",
            claim.storage_class_name, lc.spec.storage.storage_class_name
        ));
    }
    problems
}

/// Whether two Kubernetes quantities (`10Gi`, `10240Mi`, `1.5G`, `500M`) are the same amount;
/// spellings this does not read are compared as text.
fn same_quantity(a: &str, b: &str) -> bool {
    match (quantity(a), quantity(b)) {
        // a = na / da, b = nb / db
        (Some((na, da)), Some((nb, db))) => na.checked_mul(db) == nb.checked_mul(da),
        _ => a.trim() == b.trim(),
    }
}

/// A quantity as a fraction (numerator, denominator) of bytes.
fn quantity(text: &str) -> Option<(u128, u128)> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier = crate::validate::quantity_multiplier(suffix)?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.len() > 18 {
        return None;
    }
    let digits: u128 = format!("{whole}{fraction}").parse().ok()?;
    let denominator = 10u128.checked_pow(fraction.len() as u32)?;
    Some((digits.checked_mul(multiplier)?, denominator))
}

/// One reconcile pass.
pub async fn reconcile(lc: Arc<LogCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = build::namespace_of(&lc);
    let name = build::name_of(&lc);
    let generation = lc.metadata.generation;
    let old_conditions = lc
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();

    if lc.metadata.deletion_timestamp.is_some() {
        // Being deleted: the garbage collector removes the children; do not recreate them.
        return Ok(Action::await_change());
    }

    // Read what the plan depends on.
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let sts = statefulsets.get_opt(&build::storage_service(&lc)).await?;
    let mut problems = crate::validate::validate(&lc.spec)
        .err()
        .unwrap_or_default();
    problems.extend(immutable_storage_changes(&lc, sts.as_ref()));
    // What every pod will load: the data plane's own checks of each role's configuration, so
    // that a spec the nodes would refuse is reported here instead of crash-looping the pods
    // one rollout at a time.
    if problems.is_empty() {
        for role in [
            logcluster_config::Role::Storage,
            logcluster_config::Role::Ingestor,
            logcluster_config::Role::Query,
        ] {
            if let Err(error) = build::node_config(&lc, role).validate() {
                problems.push(format!("the {role:?} nodes' configuration: {error}"));
            }
        }
    }
    if let Some(secret) = &lc.spec.tls.secret_name {
        // A user-provided certificate must exist (pods would hang in ContainerCreating).
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        match secrets.get_opt(secret).await? {
            None => problems.push(format!(
                "tls.secretName {secret:?} does not exist in namespace {ns}"
            )),
            Some(found) => {
                let keys = found.data.as_ref();
                for key in ["ca.crt", "tls.crt", "tls.key"] {
                    if !keys.is_some_and(|d| d.contains_key(key)) {
                        problems.push(format!("tls.secretName {secret:?} has no {key}"));
                    }
                }
            }
        }
    }
    if !problems.is_empty() {
        let message = problems.join("; ");
        warn!(%name, %message, "invalid LogCluster spec");
        let already = old_conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.status == "True" && c.message == message);
        if !already {
            publish(
                &ctx,
                &lc,
                EventType::Warning,
                "InvalidSpec",
                message.clone(),
            )
            .await;
        }
        patch_status(&ctx, &lc, json!({
            "observedGeneration": generation,
            "conditions": merge_conditions(&old_conditions, vec![
                condition("Ready", false, "InvalidSpec", "the spec is invalid; see Degraded", generation),
                condition("Progressing", false, "InvalidSpec", "waiting for a valid spec", generation),
                condition("Degraded", true, "InvalidSpec", &message, generation),
            ]),
        }))
        .await?;
        // Nothing to retry: the next change of the resource triggers a new pass.
        return Ok(Action::await_change());
    }

    // Pods that still exist count: members stay marked leaving until they are gone, so a
    // terminating pod never rejoins the ring. But once the StatefulSet was shrunk to the
    // desired size (its drain was confirmed then), it is not raised again because those
    // pods, shutting down, no longer answer their drain status.
    let applied = sts
        .as_ref()
        .and_then(|s| s.spec.as_ref().and_then(|spec| spec.replicas));
    let current = sts.as_ref().and_then(|s| {
        let existing = s.status.as_ref().map(|st| st.replicas);
        applied.max(existing)
    });
    let desired = lc.spec.storage.replicas;
    let shrunk = applied.is_some_and(|applied| applied <= desired);
    let leaving_candidates: Vec<String> = match current {
        Some(current) if current > desired => (desired..current)
            .map(|i| build::storage_pod(&lc, i))
            .collect(),
        _ => Vec::new(),
    };
    let scope = format!("{}/{}", lc.namespace().unwrap_or_default(), lc.name_any());
    let drained = settled(
        &ctx,
        &scope,
        drain_states(&ctx, &lc, &leaving_candidates).await,
    );
    let forced = lc
        .annotations()
        .get("logcluster.io/force-scale-down")
        .is_some_and(|v| v == "true");
    let (mut plan, phase): (StoragePlan, Phase) = scaling::plan(
        |i| build::storage_pod(&lc, i),
        desired,
        current,
        |pod| {
            if forced || shrunk {
                Some(true)
            } else {
                drained.get(pod).copied().flatten()
            }
        },
    );
    // Pods of a shrunk StatefulSet go away in any order (`Parallel`): while any is left, the
    // members marked leaving before stay marked, so that one still shutting down whose
    // ordinal is above what the StatefulSet still counts never rejoins the ring.
    if shrunk && current.is_some_and(|current| current > desired) {
        let before = lc
            .status
            .as_ref()
            .map(|status| status.leaving_members.clone())
            .unwrap_or_default();
        for pod in before {
            if !plan.leaving.contains(&pod) {
                plan.leaving.push(pod);
            }
        }
        plan.leaving.sort();
    }
    let (tls, tls_version) = tls_material(&ctx, &lc).await?;
    let objects = build::all(&lc, &plan, tls.as_ref(), &tls_version).map_err(Error::Build)?;
    for object in &objects {
        apply(&ctx.client, &ns, object).await?;
    }
    // The force annotation is for one scale-down: once it shrank the StatefulSet it is taken
    // off, so that a later scale-down (perhaps months on) waits for its drain again.
    if forced && matches!(phase, Phase::Shrinking) && !shrunk {
        let api: Api<LogCluster> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch(
            &lc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": {"logcluster.io/force-scale-down": null}}
            })),
        )
        .await?;
    }
    if matches!(phase, Phase::Shrinking) {
        publish(
            &ctx,
            &lc,
            EventType::Normal,
            "StorageShrunk",
            format!(
                "{} drained; storage shrinks to {desired}",
                plan.leaving.join(", ")
            ),
        )
        .await;
    }
    if matches!(phase, Phase::ScalingUp) {
        publish(
            &ctx,
            &lc,
            EventType::Normal,
            "StorageScaledUp",
            format!("storage grows to {desired}"),
        )
        .await;
    }

    // Status from what runs.
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let ready_of = |d: &Option<Deployment>| {
        d.as_ref()
            .and_then(|d| d.status.as_ref())
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    };
    let ingestor = deployments.get_opt(&format!("{name}-ingestor")).await?;
    let query = deployments.get_opt(&format!("{name}-query")).await?;
    let storage_ready = sts
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let (ingestor_ready, query_ready) = (ready_of(&ingestor), ready_of(&query));
    let all_ready = storage_ready >= desired
        && ingestor_ready >= lc.spec.ingestor.replicas
        && query_ready >= lc.spec.query.replicas;
    let (progressing, reason, message) = match &phase {
        Phase::Draining { waiting_for } => (
            true,
            "ScalingDown",
            format!(
                "storage {} → {desired}: waiting for {} to hand over their data",
                current.unwrap_or(desired),
                waiting_for.join(", ")
            ),
        ),
        Phase::Shrinking => (
            true,
            "ScalingDown",
            format!("storage shrinking to {desired}"),
        ),
        Phase::ScalingUp => (
            true,
            "ScalingUp",
            format!("storage {} → {desired}", current.unwrap_or(0)),
        ),
        Phase::Steady if !all_ready => (
            true,
            "RollingOut",
            "waiting for pods to become ready".to_string(),
        ),
        Phase::Steady => (
            false,
            "Stable",
            "every role is at its desired size and ready".to_string(),
        ),
    };
    let ring: Vec<String> = (0..plan.statefulset_replicas)
        .map(|i| build::storage_pod(&lc, i))
        .filter(|pod| !plan.leaving.contains(pod))
        .collect();
    patch_status(&ctx, &lc, json!({
        "observedGeneration": generation,
        "ingestor": {"replicas": lc.spec.ingestor.replicas, "ready": ingestor_ready},
        "query": {"replicas": lc.spec.query.replicas, "ready": query_ready},
        "storage": {"replicas": desired, "ready": storage_ready, "summary": format!("{storage_ready}/{desired}")},
        "ringMembers": ring,
        "leavingMembers": plan.leaving,
        "conditions": merge_conditions(&old_conditions, vec![
            condition("Ready", all_ready, if all_ready { "AllReady" } else { "NotReady" },
                &format!("storage {storage_ready}/{desired}, ingestors {ingestor_ready}/{}, query {query_ready}/{}",
                    lc.spec.ingestor.replicas, lc.spec.query.replicas), generation),
            condition("Progressing", progressing, reason, &message, generation),
            condition("Degraded", false, "Valid", "the spec is valid", generation),
        ]),
    }))
    .await?;
    info!(%name, ?phase, storage_ready, ingestor_ready, query_ready, "reconciled");
    ctx.failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&format!("{ns}/{name}"));
    Ok(match phase {
        Phase::Draining { .. } | Phase::Shrinking => Action::requeue(Duration::from_secs(10)),
        _ if !all_ready => Action::requeue(Duration::from_secs(15)),
        _ => Action::requeue(Duration::from_secs(300)),
    })
}

/// Transient errors: retry with a backoff that doubles with each consecutive failure of the
/// same LogCluster (5 s, 10 s, … at most 5 min); a successful pass resets it.
pub fn error_policy(lc: Arc<LogCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("{}/{}", build::namespace_of(&lc), lc.name_any());
    let failures = {
        let mut map = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let count = map.entry(key).or_insert(0);
        *count += 1;
        *count
    };
    let delay = backoff(failures);
    warn!(name = %lc.name_any(), %error, failures, ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// The retry delay after `failures` consecutive failures.
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(6);
    Duration::from_secs((5u64 << exponent).min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each LogCluster's drain clocks are its own: a pass over another cluster (or over
    /// the same pod names in another namespace) neither resets nor reuses them.
    #[tokio::test]
    async fn drain_clocks_are_kept_per_logcluster() {
        let (service, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let mut ctx = Context::new(Client::new(service, "default"), None);
        ctx.drain_settle = std::time::Duration::from_millis(200);
        let drained = |pod: &str| BTreeMap::from([(pod.to_string(), Some(true))]);
        assert_eq!(
            settled(&ctx, "a/lc", drained("lc-storage-3"))["lc-storage-3"],
            Some(false)
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
        // Another cluster's pass, with a pod of the same name, starts its own clock...
        assert_eq!(
            settled(&ctx, "b/lc", drained("lc-storage-3"))["lc-storage-3"],
            Some(false)
        );
        // ... and leaves the first one's running: it has held long enough.
        assert_eq!(
            settled(&ctx, "a/lc", drained("lc-storage-3"))["lc-storage-3"],
            Some(true)
        );
    }

    #[test]
    fn quantities_compare_by_amount() {
        for (a, b) in [
            ("2048Mi", "2Gi"),
            ("1.5Gi", "1536Mi"),
            ("10Gi", "10Gi"),
            ("1G", "1000M"),
            ("1024", "1Ki"),
            ("0.5Ki", "512"),
        ] {
            assert!(same_quantity(a, b), "{a} = {b}");
        }
        for (a, b) in [
            ("10Gi", "10G"),
            ("1Gi", "2Gi"),
            ("1.5Gi", "1Gi"),
            ("1x", "1y"),
        ] {
            assert!(!same_quantity(a, b), "{a} != {b}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let delays: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }
}
