//! The whole product on a real kind cluster. Skipped (with a message) unless E2E_KUBECONFIG
//! names a reachable cluster; see README.md for the setup.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use logcluster_operator::crd::LogCluster;
use serde_json::json;

const NAMESPACE: &str = "default";
const OPERATOR_NAMESPACE: &str = "logcluster-system";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

async fn cluster() -> anyhow::Result<Option<(Client, PathBuf)>> {
    let Some(path) = std::env::var_os("E2E_KUBECONFIG").map(PathBuf::from) else {
        eprintln!(
            "SKIPPED: E2E_KUBECONFIG is not set; these tests need a kind cluster (see tests/e2e/README.md)"
        );
        return Ok(None);
    };
    let kubeconfig = Kubeconfig::read_from(&path).context("reading E2E_KUBECONFIG")?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    if let Err(error) = client.apiserver_version().await {
        eprintln!(
            "SKIPPED: the cluster in {} is not reachable: {error}",
            path.display()
        );
        return Ok(None);
    }
    Ok(Some((client, path)))
}

fn run(program: &str, args: &[&str], kubeconfig: &Path) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => eprintln!("waiting for {what}: {error}"),
        }
        if started.elapsed() > timeout {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

async fn condition(
    api: &Api<LogCluster>,
    name: &str,
    kind: &str,
) -> anyhow::Result<Option<(String, String)>> {
    let lc = api.get(name).await?;
    Ok(lc.status.and_then(|s| {
        s.conditions
            .into_iter()
            .find(|c| c.type_ == kind)
            .map(|c| (c.status, c.reason))
    }))
}

async fn ready(api: &Api<LogCluster>, name: &str) -> anyhow::Result<Option<()>> {
    let lc = api.get(name).await?;
    let status = lc.status.unwrap_or_default();
    let ok = status.observed_generation == lc.metadata.generation
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
        && status.leaving_members.is_empty();
    Ok(ok.then_some(()))
}

fn logcluster_binary() -> PathBuf {
    repo().join("target/release/logcluster")
}

fn count_entries(tenant: &str) -> anyhow::Result<usize> {
    let output = Command::new(logcluster_binary())
        .args([
            "query",
            "--url",
            "http://127.0.0.1:3100",
            "--tenant",
            tenant,
            "--all",
            "--limit",
            "1000",
            "--output",
            "ndjson",
        ])
        .output()?;
    ensure!(
        output.status.success(),
        "query failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output.stdout.iter().filter(|b| **b == b'\n').count())
}

#[tokio::test]
async fn install_ingest_query_scale_and_fail_over() -> anyhow::Result<()> {
    let Some((client, kubeconfig)) = cluster().await? else {
        return Ok(());
    };
    let repo = repo();
    // 1. The operator, from the chart.
    run(
        "helm",
        &[
            "upgrade",
            "--install",
            "logcluster-operator",
            &repo
                .join("charts/logcluster-operator")
                .display()
                .to_string(),
            "--namespace",
            OPERATOR_NAMESPACE,
            "--create-namespace",
            "--set",
            "image.repository=logcluster",
            "--set",
            "image.tag=e2e",
            "--set",
            "image.pullPolicy=Never",
            "--wait",
        ],
        &kubeconfig,
    )?;
    // 2. A LogCluster.
    run(
        "kubectl",
        &[
            "apply",
            "-f",
            &repo
                .join("manifests/samples/logcluster-kind.yaml")
                .display()
                .to_string(),
        ],
        &kubeconfig,
    )?;
    let clusters: Api<LogCluster> = Api::namespaced(client.clone(), NAMESPACE);
    wait_for("LogCluster e2e Ready", Duration::from_secs(600), || {
        ready(&clusters, "e2e")
    })
    .await?;
    // 3. Logs over TLS to the ingestor NodePort, acknowledged only when durable.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let tls = secrets.get("e2e-tls").await?;
    let ca = tls
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .context("ca.crt in e2e-tls")?
        .0
        .clone();
    let ca_path = std::env::temp_dir().join("logcluster-e2e-ca.pem");
    std::fs::write(&ca_path, ca)?;
    let sent = Command::new(logcluster_binary())
        .args([
            "send",
            "--tls-ca",
            &ca_path.display().to_string(),
            "--tcp-port",
            "3001",
            "--tenant",
            "e2e",
            "--count",
            "20000",
            "--burst",
        ])
        .output()?;
    ensure!(
        sent.status.success(),
        "send failed: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    wait_for(
        "20000 entries queryable",
        Duration::from_secs(120),
        || async { Ok((count_entries("e2e")? == 20000).then_some(())) },
    )
    .await?;
    // 4. Storage 3 → 5 → 3 without loss.
    for replicas in [5, 3] {
        clusters
            .patch(
                "e2e",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"storage": {"replicas": replicas}}})),
            )
            .await?;
        if replicas == 3 {
            let progressing =
                wait_for("ScalingDown reported", Duration::from_secs(120), || async {
                    Ok(condition(&clusters, "e2e", "Progressing")
                        .await?
                        .filter(|(_, reason)| reason == "ScalingDown"))
                })
                .await;
            eprintln!("scale-down progress seen: {}", progressing.is_ok());
        }
        wait_for(
            &format!("storage at {replicas}"),
            Duration::from_secs(900),
            || async {
                let lc = clusters.get("e2e").await?;
                let status = lc.status.unwrap_or_default();
                Ok((status.storage.ready == replicas
                    && status.leaving_members.is_empty()
                    && status
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True"))
                .then_some(()))
            },
        )
        .await?;
        let count = count_entries("e2e")?;
        ensure!(
            count == 20000,
            "after scaling to {replicas}: {count} of 20000 entries"
        );
    }
    // 5. Operator fail-over: delete the leading pod; the standby takes the Lease and keeps
    //    reconciling.
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let holder = |lease: Lease| lease.spec.and_then(|s| s.holder_identity);
    let leader = holder(leases.get("logcluster-operator").await?).context("no lease holder")?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    pods.delete(&leader, &DeleteParams::default()).await?;
    let new_leader = wait_for("a new lease holder", Duration::from_secs(120), || async {
        Ok(holder(leases.get("logcluster-operator").await?).filter(|h| h != &leader))
    })
    .await?;
    eprintln!("lease moved from {leader} to {new_leader}");
    clusters
        .patch(
            "e2e",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ingestor": {"replicas": 2}}})),
        )
        .await?;
    wait_for(
        "the new leader reconciles",
        Duration::from_secs(300),
        || async {
            let lc = clusters.get("e2e").await?;
            let status = lc.status.unwrap_or_default();
            Ok(
                (status.ingestor.ready == 2
                    && status.observed_generation == lc.metadata.generation)
                    .then_some(()),
            )
        },
    )
    .await?;
    Ok(())
}
