//! Reconcile scenarios against a fake API server (tower-test): what the operator applies, how
//! (server-side apply, one field manager, forced), what it writes to status, and the storage
//! scale-down sequence against a real local HTTP drain endpoint.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{Call, FakeApi};
use logcluster_operator::build;
use logcluster_operator::crd::LogCluster;
use logcluster_operator::reconcile::{Context, reconcile};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LC_PATH: &str = "/apis/logcluster.io/v1alpha1/namespaces/logs/logclusters/lc";
const STS_PATH: &str = "/apis/apps/v1/namespaces/logs/statefulsets/lc-storage";

fn logcluster(spec: Value) -> Value {
    json!({
        "apiVersion": "logcluster.io/v1alpha1",
        "kind": "LogCluster",
        "metadata": {"name": "lc", "namespace": "logs", "uid": "uid-1", "generation": 1},
        "spec": spec,
    })
}

/// A real HTTP server answering drain status per pod (`/drain/<pod>`).
async fn drain_server(states: Arc<Mutex<BTreeMap<String, bool>>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let states = states.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let pod = request
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .trim_start_matches("/drain/")
                    .to_string();
                let drained = states
                    .lock()
                    .expect("states")
                    .get(&pod)
                    .copied()
                    .unwrap_or(false);
                let body = json!({"leaving": true, "drained": drained, "streams_to_hand_over": if drained { 0 } else { 3 }}).to_string();
                let _ = socket.write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

fn context(api: &FakeApi, drain: String) -> Arc<Context> {
    let mut ctx = Context::new(api.client.clone(), None);
    ctx.drain_url = Box::new(move |_, pod| format!("{drain}/drain/{pod}"));
    // The settle time is exercised in its own test; here a drained answer counts at once.
    ctx.drain_settle = std::time::Duration::ZERO;
    Arc::new(ctx)
}

async fn pass(api: &FakeApi, ctx: &Arc<Context>) -> anyhow::Result<Vec<Call>> {
    api.clear_calls();
    let lc: LogCluster = serde_json::from_value(api.get(LC_PATH).expect("the LogCluster"))?;
    reconcile(Arc::new(lc), ctx.clone()).await?;
    Ok(api.calls())
}

fn applied<'a>(calls: &'a [Call], path: &str) -> Option<&'a Call> {
    calls.iter().find(|c| c.is_apply() && c.path == path)
}

fn status_patch(calls: &[Call]) -> Value {
    calls
        .iter()
        .rev()
        .find(|c| c.method == "PATCH" && c.path.ends_with("/status"))
        .map(|c| c.body["status"].clone())
        .expect("a status patch")
}

fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn the_first_reconcile_applies_every_object_with_one_field_manager() -> anyhow::Result<()> {
    let api = FakeApi::start();
    api.put(LC_PATH, logcluster(json!({"ingestor": {"replicas": 2}})));
    let ctx = context(&api, drain_server(Arc::default()).await);
    let calls = pass(&api, &ctx).await?;
    let applies: Vec<&Call> = calls.iter().filter(|c| c.is_apply()).collect();
    let paths: Vec<&str> = applies.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "/api/v1/namespaces/logs/secrets/lc-ca",
            "/api/v1/namespaces/logs/configmaps/lc-config",
            "/api/v1/namespaces/logs/secrets/lc-tls",
            "/api/v1/namespaces/logs/serviceaccounts/lc-node",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/logs/roles/lc-node",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/logs/rolebindings/lc-node",
            "/api/v1/namespaces/logs/services/lc-storage",
            "/apis/apps/v1/namespaces/logs/statefulsets/lc-storage",
            "/api/v1/namespaces/logs/services/lc-ingestor",
            "/apis/apps/v1/namespaces/logs/deployments/lc-ingestor",
            "/api/v1/namespaces/logs/services/lc-query",
            "/apis/apps/v1/namespaces/logs/deployments/lc-query",
            "/apis/policy/v1/namespaces/logs/poddisruptionbudgets/lc-storage",
            "/apis/policy/v1/namespaces/logs/poddisruptionbudgets/lc-ingestor",
            "/apis/policy/v1/namespaces/logs/poddisruptionbudgets/lc-query",
        ]
    );
    for call in &applies {
        assert!(
            call.query.contains("force=true"),
            "{}: {}",
            call.path,
            call.query
        );
        assert!(
            call.query.contains("fieldManager=logcluster-operator"),
            "{}",
            call.query
        );
        assert_eq!(
            call.body["metadata"]["ownerReferences"][0]["uid"], "uid-1",
            "{}",
            call.path
        );
        assert_eq!(
            call.body["metadata"]["ownerReferences"][0]["controller"],
            true
        );
    }
    // Bodies are exactly what the pure builders produce.
    let lc: LogCluster = serde_json::from_value(api.get(LC_PATH).expect("lc"))?;
    let plan = build::StoragePlan {
        statefulset_replicas: 3,
        leaving: vec![],
    };
    let hash =
        applied(&calls, STS_PATH).expect("sts").body["spec"]["template"]["metadata"]["annotations"]
            ["logcluster.io/config-hash"]
            .as_str()
            .expect("hash")
            .to_string();
    assert_eq!(
        applied(&calls, "/api/v1/namespaces/logs/configmaps/lc-config")
            .expect("cm")
            .body,
        build::config_map(&lc, &plan).expect("cm")
    );
    assert_eq!(
        applied(&calls, STS_PATH).expect("sts").body,
        build::storage(&lc, &plan, &hash)[1]
    );
    assert_eq!(
        applied(
            &calls,
            "/apis/apps/v1/namespaces/logs/deployments/lc-ingestor"
        )
        .expect("d")
        .body["spec"]["replicas"],
        2
    );
    // A CA and a certificate were generated; the node certificate names the storage pods.
    let tls = &applied(&calls, "/api/v1/namespaces/logs/secrets/lc-tls")
        .expect("tls")
        .body;
    assert!(
        tls["stringData"]["tls.crt"]
            .as_str()
            .is_some_and(|c| c.starts_with("-----BEGIN CERTIFICATE-----"))
    );
    assert!(
        tls["metadata"]["annotations"]["logcluster.io/names"]
            .as_str()
            .is_some_and(|n| n.contains("*.lc-storage.logs.svc"))
    );
    // Status: valid, rolling out (no pod is ready in the fake cluster).
    let status = status_patch(&calls);
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(condition(&status, "Degraded")["status"], "False");
    assert_eq!(condition(&status, "Ready")["status"], "False");
    assert_eq!(condition(&status, "Progressing")["reason"], "RollingOut");
    assert_eq!(
        status["ringMembers"],
        json!(["lc-storage-0", "lc-storage-1", "lc-storage-2"])
    );
    Ok(())
}

#[tokio::test]
async fn a_changed_spec_patches_what_changed_and_keeps_the_certificate() -> anyhow::Result<()> {
    let api = FakeApi::start();
    api.put(LC_PATH, logcluster(json!({})));
    let ctx = context(&api, drain_server(Arc::default()).await);
    let first = pass(&api, &ctx).await?;
    let mut lc = api.get(LC_PATH).expect("lc");
    lc["spec"]["query"] = json!({"replicas": 3});
    lc["spec"]["retention"] = json!({"maxAge": "3d"});
    lc["metadata"]["generation"] = json!(2);
    api.put(LC_PATH, lc);
    let second = pass(&api, &ctx).await?;
    // The certificate is fresh: not re-issued.
    assert!(applied(&second, "/api/v1/namespaces/logs/secrets/lc-tls").is_none());
    assert!(applied(&second, "/api/v1/namespaces/logs/secrets/lc-ca").is_none());
    let before = &applied(&first, "/apis/apps/v1/namespaces/logs/deployments/lc-query")
        .expect("q")
        .body;
    let after = &applied(
        &second,
        "/apis/apps/v1/namespaces/logs/deployments/lc-query",
    )
    .expect("q")
    .body;
    assert_eq!(
        (
            before["spec"]["replicas"].clone(),
            after["spec"]["replicas"].clone()
        ),
        (json!(1), json!(3))
    );
    let cm = &applied(&second, "/api/v1/namespaces/logs/configmaps/lc-config")
        .expect("cm")
        .body;
    assert!(
        cm["data"]["storage.yaml"]
            .as_str()
            .is_some_and(|y| y.contains("maxAge: 3d")),
        "{cm}"
    );
    // The changed configuration rolls the pods: the template's config hash changed.
    let hash = |calls: &[Call]| {
        applied(calls, STS_PATH).expect("sts").body["spec"]["template"]["metadata"]["annotations"]["logcluster.io/config-hash"].clone()
    };
    assert_ne!(hash(&first), hash(&second));
    assert_eq!(status_patch(&second)["observedGeneration"], 2);

    // The certificate nears expiry: it is re-issued by the same CA and the pods roll to it.
    let tls_path = "/api/v1/namespaces/logs/secrets/lc-tls";
    let mut secret = api.get(tls_path).expect("secret");
    secret["metadata"]["annotations"]["logcluster.io/not-after"] = json!("2026-12-01T00:00:00Z");
    api.put(tls_path, secret);
    let third = pass(&api, &ctx).await?;
    let rotated = &applied(&third, tls_path)
        .expect("a rotated certificate")
        .body;
    assert!(
        applied(&third, "/api/v1/namespaces/logs/secrets/lc-ca").is_none(),
        "the CA is kept"
    );
    assert_ne!(
        rotated["metadata"]["annotations"]["logcluster.io/not-after"],
        "2026-12-01T00:00:00Z"
    );
    assert_ne!(
        hash(&second),
        hash(&third),
        "pods roll to load the new certificate"
    );
    Ok(())
}

/// A spec the operator's own checks pass but the nodes would refuse (the data plane checks
/// each role's rendered configuration) is reported, not rolled out to crash-looping pods.
#[tokio::test]
async fn a_spec_the_nodes_would_refuse_sets_degraded_and_applies_nothing() -> anyhow::Result<()> {
    let status = refused_spec(json!({"defaultTenant": ""})).await?;
    let degraded = condition(&status, "Degraded");
    assert!(
        degraded["message"]
            .as_str()
            .is_some_and(|m| m.contains("configuration") && m.contains("defaultTenant")),
        "{degraded}"
    );
    Ok(())
}

/// One pass over a LogCluster of `spec`: nothing is applied, and the status patch (returned)
/// says Degraded/InvalidSpec.
async fn refused_spec(spec: Value) -> anyhow::Result<Value> {
    let api = FakeApi::start();
    api.put(LC_PATH, logcluster(spec));
    let ctx = context(&api, drain_server(Arc::default()).await);
    let calls = pass(&api, &ctx).await?;
    assert!(
        calls.iter().all(|c| !c.is_apply()),
        "nothing may be applied: {calls:?}"
    );
    let status = status_patch(&calls);
    let degraded = condition(&status, "Degraded");
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("True"), Some("InvalidSpec")),
        "{degraded}"
    );
    Ok(status)
}

#[tokio::test]
async fn an_invalid_spec_sets_degraded_and_applies_nothing() -> anyhow::Result<()> {
    let status =
        refused_spec(json!({"replication": {"factor": 3, "writeQuorum": 1, "readQuorum": 1}}))
            .await?;
    let degraded = condition(&status, "Degraded");
    assert!(
        degraded["message"]
            .as_str()
            .is_some_and(|m| m.contains("must exceed factor")),
        "{degraded}"
    );
    assert_eq!(condition(&status, "Ready")["status"], "False");
    Ok(())
}

#[tokio::test]
async fn scale_down_marks_leaving_waits_for_the_drain_then_shrinks() -> anyhow::Result<()> {
    let api = FakeApi::start();
    api.put(LC_PATH, logcluster(json!({"storage": {"replicas": 3}})));
    api.put(STS_PATH, json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "lc-storage", "namespace": "logs"},
        "spec": {"replicas": 5, "selector": {"matchLabels": {}}, "serviceName": "lc-storage", "template": {}},
        "status": {"replicas": 5, "readyReplicas": 5},
    }));
    let states: Arc<Mutex<BTreeMap<String, bool>>> = Arc::default();
    let ctx = context(&api, drain_server(states.clone()).await);
    let leaving_in = |calls: &[Call]| -> String {
        applied(calls, "/api/v1/namespaces/logs/configmaps/lc-config")
            .expect("cm")
            .body["data"]["leaving.yaml"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let replicas =
        |calls: &[Call]| applied(calls, STS_PATH).expect("sts").body["spec"]["replicas"].clone();

    // 1. Mark: both leaving members are published; the StatefulSet keeps 5.
    let calls = pass(&api, &ctx).await?;
    assert!(
        leaving_in(&calls).contains("lc-storage-3") && leaving_in(&calls).contains("lc-storage-4")
    );
    assert_eq!(replicas(&calls), 5);
    let status = status_patch(&calls);
    assert_eq!(condition(&status, "Progressing")["reason"], "ScalingDown");
    assert!(
        condition(&status, "Progressing")["message"]
            .as_str()
            .is_some_and(|m| m.contains("lc-storage-3, lc-storage-4"))
    );
    assert_eq!(
        status["leavingMembers"],
        json!(["lc-storage-3", "lc-storage-4"])
    );

    // 2. One drained: still waiting for the other.
    states
        .lock()
        .expect("states")
        .insert("lc-storage-3".into(), true);
    let calls = pass(&api, &ctx).await?;
    assert_eq!(replicas(&calls), 5);
    assert!(
        condition(&status_patch(&calls), "Progressing")["message"]
            .as_str()
            .is_some_and(|m| m.contains("lc-storage-4") && !m.contains("lc-storage-3,"))
    );

    // 3. Both drained: the StatefulSet shrinks to 3.
    states
        .lock()
        .expect("states")
        .insert("lc-storage-4".into(), true);
    let calls = pass(&api, &ctx).await?;
    assert_eq!(replicas(&calls), 3);

    // 4. The leaving pods are gone: nobody is leaving any more, and the plan is steady.
    let mut sts = api.get(STS_PATH).expect("sts");
    sts["status"]["replicas"] = json!(3);
    api.put(STS_PATH, sts);
    let calls = pass(&api, &ctx).await?;
    assert_eq!(replicas(&calls), 3);
    assert!(
        !leaving_in(&calls).contains("lc-storage"),
        "{}",
        leaving_in(&calls)
    );
    assert_eq!(status_patch(&calls)["leavingMembers"], json!([]));
    Ok(())
}

#[tokio::test]
async fn scale_up_raises_the_statefulset_at_once() -> anyhow::Result<()> {
    let api = FakeApi::start();
    api.put(LC_PATH, logcluster(json!({"storage": {"replicas": 5}})));
    api.put(STS_PATH, json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "lc-storage", "namespace": "logs"}, "spec": {"replicas": 3, "selector": {"matchLabels": {}}, "template": {}}}));
    let ctx = context(&api, drain_server(Arc::default()).await);
    let calls = pass(&api, &ctx).await?;
    assert_eq!(
        applied(&calls, STS_PATH).expect("sts").body["spec"]["replicas"],
        5
    );
    assert_eq!(
        condition(&status_patch(&calls), "Progressing")["reason"],
        "ScalingUp"
    );
    Ok(())
}

fn statefulset(spec_replicas: i32, existing: i32, size: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "lc-storage", "namespace": "logs"},
        "spec": {"replicas": spec_replicas, "selector": {"matchLabels": {}}, "serviceName": "lc-storage", "template": {},
                 "volumeClaimTemplates": [{"metadata": {"name": "data"},
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}}]},
        "status": {"replicas": existing, "readyReplicas": existing},
    })
}

#[tokio::test]
async fn drained_must_hold_for_the_settle_time_and_pods_stay_leaving_until_gone()
-> anyhow::Result<()> {
    let api = FakeApi::start();
    api.put(LC_PATH, logcluster(json!({"storage": {"replicas": 3}})));
    api.put(STS_PATH, statefulset(5, 5, "10Gi"));
    let states: Arc<Mutex<BTreeMap<String, bool>>> = Arc::default();
    states
        .lock()
        .expect("states")
        .insert("lc-storage-3".into(), true);
    states
        .lock()
        .expect("states")
        .insert("lc-storage-4".into(), true);
    let mut ctx = Context::new(api.client.clone(), None);
    let drain = drain_server(states.clone()).await;
    ctx.drain_url = Box::new(move |_, pod| format!("{drain}/drain/{pod}"));
    ctx.drain_settle = std::time::Duration::from_millis(300);
    let ctx = Arc::new(ctx);
    let replicas =
        |calls: &[Call]| applied(calls, STS_PATH).expect("sts").body["spec"]["replicas"].clone();
    // Drained, but not for long enough: no shrink yet.
    let calls = pass(&api, &ctx).await?;
    assert_eq!(replicas(&calls), 5);
    // A member that stops reporting drained restarts its clock.
    states
        .lock()
        .expect("states")
        .insert("lc-storage-4".into(), false);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let calls = pass(&api, &ctx).await?;
    assert_eq!(replicas(&calls), 5);
    states
        .lock()
        .expect("states")
        .insert("lc-storage-4".into(), true);
    let calls = pass(&api, &ctx).await?;
    assert_eq!(
        replicas(&calls),
        5,
        "lc-storage-4's drain only just started to hold"
    );
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let calls = pass(&api, &ctx).await?;
    assert_eq!(replicas(&calls), 3, "both held long enough: shrink");
    // The StatefulSet says 3 but five pods still exist (terminating): still marked leaving,
    // and the StatefulSet is not raised again although, shutting down, they no longer
    // answer their drain status.
    api.put(STS_PATH, statefulset(3, 5, "10Gi"));
    states.lock().expect("states").clear();
    let calls = pass(&api, &ctx).await?;
    assert_eq!(replicas(&calls), 3);
    assert_eq!(
        status_patch(&calls)["leavingMembers"],
        json!(["lc-storage-3", "lc-storage-4"])
    );
    // lc-storage-3 went first: the StatefulSet counts four pods, and lc-storage-4, still
    // shutting down, stays marked leaving (from the status the last pass wrote).
    let mut lc = logcluster(json!({"storage": {"replicas": 3}}));
    lc["status"] = json!({"leavingMembers": ["lc-storage-3", "lc-storage-4"]});
    api.put(LC_PATH, lc);
    api.put(STS_PATH, statefulset(3, 4, "10Gi"));
    let calls = pass(&api, &ctx).await?;
    assert_eq!(replicas(&calls), 3);
    assert_eq!(
        status_patch(&calls)["leavingMembers"],
        json!(["lc-storage-3", "lc-storage-4"])
    );
    api.put(STS_PATH, statefulset(3, 3, "10Gi"));
    let calls = pass(&api, &ctx).await?;
    assert_eq!(status_patch(&calls)["leavingMembers"], json!([]));
    Ok(())
}

#[tokio::test]
async fn force_scale_down_skips_an_unreachable_members_drain() -> anyhow::Result<()> {
    let api = FakeApi::start();
    let mut lc = logcluster(json!({"storage": {"replicas": 3}}));
    api.put(STS_PATH, statefulset(4, 4, "10Gi"));
    api.put(LC_PATH, lc.clone());
    // No drain server answers for lc-storage-3 (the URL points nowhere).
    let mut ctx = Context::new(api.client.clone(), None);
    ctx.drain_url = Box::new(|_, pod| format!("http://127.0.0.1:9/drain/{pod}"));
    ctx.drain_settle = std::time::Duration::ZERO;
    let ctx = Arc::new(ctx);
    let calls = pass(&api, &ctx).await?;
    assert_eq!(
        applied(&calls, STS_PATH).expect("sts").body["spec"]["replicas"],
        4,
        "waits for the drain"
    );
    lc["metadata"]["annotations"] = json!({"logcluster.io/force-scale-down": "true"});
    api.put(LC_PATH, lc);
    let calls = pass(&api, &ctx).await?;
    assert_eq!(
        applied(&calls, STS_PATH).expect("sts").body["spec"]["replicas"],
        3,
        "the user overrode it"
    );
    // Taken off once used: the next scale-down waits for its drain again.
    assert!(
        calls.iter().any(|c| c.method == "PATCH"
            && c.path.ends_with("/logclusters/lc")
            && c.body["metadata"]["annotations"]["logcluster.io/force-scale-down"].is_null()
            && c.body["metadata"]["annotations"]
                .as_object()
                .is_some_and(|a| a.contains_key("logcluster.io/force-scale-down"))),
        "{calls:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_changed_volume_size_is_degraded_not_a_failing_apply() -> anyhow::Result<()> {
    let api = FakeApi::start();
    api.put(
        LC_PATH,
        logcluster(json!({"storage": {"replicas": 3, "size": "50Gi"}})),
    );
    api.put(STS_PATH, statefulset(3, 3, "10Gi"));
    let ctx = context(&api, drain_server(Arc::default()).await);
    let calls = pass(&api, &ctx).await?;
    assert!(calls.iter().all(|c| !c.is_apply()));
    let degraded = condition(&status_patch(&calls), "Degraded").clone();
    assert_eq!(degraded["status"], "True");
    assert!(
        degraded["message"]
            .as_str()
            .is_some_and(|m| m.contains("storage.size cannot change from 10Gi to 50Gi")),
        "{degraded}"
    );
    Ok(())
}

#[tokio::test]
async fn a_logcluster_being_deleted_is_left_to_the_garbage_collector() -> anyhow::Result<()> {
    let api = FakeApi::start();
    let mut lc = logcluster(json!({}));
    lc["metadata"]["deletionTimestamp"] = json!("2026-11-23T09:00:00Z");
    api.put(LC_PATH, lc);
    let ctx = context(&api, drain_server(Arc::default()).await);
    let calls = pass(&api, &ctx).await?;
    assert!(calls.is_empty(), "{calls:?}");
    Ok(())
}

#[tokio::test]
async fn a_missing_user_certificate_is_degraded_until_it_exists() -> anyhow::Result<()> {
    let api = FakeApi::start();
    api.put(
        LC_PATH,
        logcluster(json!({"tls": {"secretName": "my-certs"}})),
    );
    let ctx = context(&api, drain_server(Arc::default()).await);
    let calls = pass(&api, &ctx).await?;
    assert!(calls.iter().all(|c| !c.is_apply()));
    let degraded = condition(&status_patch(&calls), "Degraded").clone();
    assert!(
        degraded["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"my-certs\" does not exist")),
        "{degraded}"
    );
    use base64::Engine as _;
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
    api.put("/api/v1/namespaces/logs/secrets/my-certs", json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "my-certs", "namespace": "logs", "resourceVersion": "1"},
        "data": {"ca.crt": b64("ca"), "tls.crt": b64("cert"), "tls.key": b64("key")},
    }));
    let calls = pass(&api, &ctx).await?;
    assert!(
        applied(
            &calls,
            "/apis/apps/v1/namespaces/logs/statefulsets/lc-storage"
        )
        .is_some()
    );
    assert!(
        applied(&calls, "/api/v1/namespaces/logs/secrets/lc-tls").is_none(),
        "the user's certificate is used, none generated"
    );
    let sts = &applied(&calls, STS_PATH).expect("sts").body;
    let volumes = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes");
    assert!(
        volumes
            .iter()
            .any(|v| v["secret"]["secretName"] == "my-certs")
    );
    assert_eq!(
        condition(&status_patch(&calls), "Degraded")["status"],
        "False"
    );
    Ok(())
}
