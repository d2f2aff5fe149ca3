//! `logcluster-operator`: `run` (default) reconciles LogClusters and LogSchemas while this
//! replica holds the leader Lease; `crd` prints or writes the CRD YAML.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use logcluster_operator::crd::{LogCluster, LogSchema};
use logcluster_operator::reconcile::{self, Context};
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    name = "logcluster-operator",
    version,
    about = "The LogCluster Kubernetes operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile LogCluster and LogSchema resources (leader-elected).
    Run(RunArgs),
    /// Print the CRDs, or write them into a folder (crds/).
    Crd {
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(clap::Args, Default)]
struct RunArgs {
    /// Lease used for leader election.
    #[arg(long, default_value = "logcluster-operator")]
    lease_name: String,
    /// Seconds a lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// Namespace to watch; all namespaces when unset.
    #[arg(long)]
    namespace: Option<String>,
    /// Port of the health endpoints (`/healthz`, `/readyz`) for the kubelet's probes.
    #[arg(long, default_value_t = 8080)]
    health_port: u16,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run(RunArgs {
        lease_name: "logcluster-operator".into(),
        lease_duration: 15,
        namespace: None,
        health_port: 8080,
    })) {
        Command::Crd { out } => {
            for (file, yaml) in logcluster_operator::crd_yaml() {
                match &out {
                    Some(dir) => {
                        std::fs::create_dir_all(dir)?;
                        std::fs::write(dir.join(file), &yaml)?;
                        eprintln!("wrote {}", dir.join(file).display());
                    }
                    None => print!("---\n{yaml}"),
                }
            }
            Ok(())
        }
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run(args)),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("cannot reach the Kubernetes API")?;
    // Liveness and readiness: the process runs and its runtime answers. A standby is ready
    // too (it is waiting for the Lease, which is its job).
    let health = tokio::net::TcpListener::bind(("0.0.0.0", args.health_port))
        .await
        .with_context(|| format!("cannot listen on the health port {}", args.health_port))?;
    tokio::spawn(async move {
        let app = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route("/readyz", axum::routing::get(|| async { "ok" }));
        if let Err(error) = axum::serve(health, app).await {
            warn!(%error, "health endpoint failed");
        }
    });
    let identity = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("logcluster-operator-{}", std::process::id()));
    let lease_namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into());
    let mut lease =
        logcluster_k8s::lease::LeaseConfig::new(&args.lease_name, &lease_namespace, &identity);
    lease.duration = Duration::from_secs(args.lease_duration.max(3));
    lease.renew_every = lease.duration / 3;
    let (leader_tx, mut leader) = tokio::sync::watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let lease_task = tokio::spawn(logcluster_k8s::lease::run(
        Api::namespaced(client.clone(), &lease_namespace),
        lease,
        leader_tx,
        async move {
            let mut stop_rx = stop_rx;
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    info!(%identity, "waiting for leadership");
    let mut controllers: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            changed = leader.changed() => {
                if changed.is_err() {
                    break;
                }
                let leading = *leader.borrow();
                if leading && controllers.is_none() {
                    info!(%identity, "leading: reconciling");
                    controllers = Some(tokio::spawn(controllers_task(client.clone(), args.namespace.clone(), identity.clone())));
                } else if !leading && let Some(task) = controllers.take() {
                    warn!(%identity, "lost the lease: stopped reconciling");
                    task.abort();
                }
            }
            _ = shutdown_signal() => {
                info!("shutting down: stopping reconciles, releasing the lease");
                break;
            }
        }
    }
    if let Some(task) = controllers.take() {
        task.abort();
    }
    let _ = stop_tx.send(true);
    let _ = lease_task.await;
    Ok(())
}

async fn controllers_task(client: Client, namespace: Option<String>, identity: String) {
    let clusters: Api<LogCluster> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let schemas: Api<LogSchema> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let config_maps: Api<ConfigMap> = scoped(&client, &namespace);
    let secrets: Api<Secret> = scoped(&client, &namespace);
    let services: Api<Service> = scoped(&client, &namespace);
    let statefulsets: Api<StatefulSet> = scoped(&client, &namespace);
    let deployments: Api<Deployment> = scoped(&client, &namespace);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "logcluster-operator".into(),
            instance: Some(identity),
        },
    );
    let context = Arc::new(Context::new(client.clone(), Some(recorder)));
    let labels =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=logcluster-operator");
    let cluster_controller = Controller::new(clusters, watcher::Config::default())
        .owns(config_maps, labels.clone())
        .owns(secrets, labels.clone())
        .owns(services, labels.clone())
        .owns(statefulsets, labels.clone())
        .owns(deployments, labels)
        .run(reconcile::reconcile, reconcile::error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "LogCluster reconcile error");
            }
        });
    let schema_controller = Controller::new(schemas, watcher::Config::default())
        .run(
            logcluster_operator::schema::reconcile,
            logcluster_operator::schema::error_policy,
            Arc::new(client),
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "LogSchema reconcile error");
            }
        });
    futures_util::join!(cluster_controller, schema_controller);
}

/// An API for one namespace, or for all.
fn scoped<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// SIGTERM (pod deletion) or SIGINT.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            warn!(%error, "cannot listen for SIGTERM; only Ctrl+C stops the operator");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
