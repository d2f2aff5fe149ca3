//! `logcluster up`: the embedded default — a whole local cluster on 127.0.0.1.
//!
//! Generates (or reuses) a self-signed CA and node certificate in the data directory, then
//! starts, as child processes: `--storage N` storage members (default 3), one ingestor and
//! one query node, all talking mutual TLS. Storage members start first with ephemeral or
//! fixed cluster ports; once they are ready `up` writes `members.yaml`, which every node
//! watches. Prints the endpoints, writes `<data-dir>/ready.json` (ports and pids, for scripts
//! and tests), and on Ctrl+C / SIGTERM stops the ingestor first (in-flight batches finish),
//! then the query node, then the storage members — each with SIGTERM, so they flush.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use logcluster_cluster::membership::{Member, MemberList, write_members_file};
use logcluster_config::{RawCluster, RawNodeConfig, RawTls, Role};
use serde_json::json;
use tokio::process::{Child, Command};
use tracing::{info, warn};

/// Options of `logcluster up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// Where data, certificates and configuration live.
    #[arg(long, default_value = "logcluster-data")]
    pub data_dir: PathBuf,
    /// Folder of LogSchema YAML files (created if missing).
    #[arg(long)]
    pub schemas: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Number of storage members.
    #[arg(long, default_value_t = 3)]
    pub storage: usize,
    /// Copies of every entry (capped at the number of storage members).
    #[arg(long, default_value_t = 3)]
    pub replication_factor: u32,
    /// Durable replica acknowledgements before a client is acknowledged.
    #[arg(long, default_value_t = 2)]
    pub write_quorum: u32,
    /// Replicas a query must hear from per stream.
    #[arg(long, default_value_t = 2)]
    pub read_quorum: u32,
    /// Framed TLS ingest port.
    #[arg(long, default_value_t = 3001)]
    pub ingest_port: u16,
    /// UDP JSON port.
    #[arg(long, default_value_t = 3002)]
    pub udp_port: u16,
    /// Syslog port (TCP and UDP).
    #[arg(long, default_value_t = 5514)]
    pub syslog_port: u16,
    /// Syslog over TLS port.
    #[arg(long, default_value_t = 6514)]
    pub syslog_tls_port: u16,
    /// HTTP port of the query node: query API, schemas, metrics, health.
    #[arg(long, default_value_t = 3100)]
    pub http_port: u16,
    /// HTTP port of the ingestor: JSON/NDJSON ingest, metrics, health.
    #[arg(long, default_value_t = 3101)]
    pub ingest_http_port: u16,
    /// First cluster (node-to-node) port; storage member i uses this + i.
    #[arg(long, default_value_t = 7000)]
    pub cluster_port: u16,
    /// First HTTP port of the storage members (metrics, health); member i uses this + i.
    #[arg(long, default_value_t = 3110)]
    pub storage_http_port: u16,
    /// Use ephemeral ports everywhere (tests; the ports are printed and written to
    /// `<data-dir>/ready.json`).
    #[arg(long)]
    pub ephemeral_ports: bool,
    /// fsync policy: `always` or an interval such as `100ms`.
    #[arg(long, default_value = "always")]
    pub fsync: String,
    /// How often storage members compare Merkle trees and hand over streams they no
    /// longer own.
    #[arg(long, default_value = "30s")]
    pub anti_entropy_interval: String,
    /// Folder of alert rule files (created if missing; default `<data-dir>/alerts`).
    #[arg(long)]
    pub alerts: Option<PathBuf>,
    /// Webhook that receives alert notifications (Alertmanager's JSON body).
    #[arg(long)]
    pub alert_webhook: Option<String>,
}

struct Paths {
    data_dir: PathBuf,
    schemas: PathBuf,
    alerts: PathBuf,
    members: PathBuf,
    pki: logcluster_common::certs::DevPki,
}

/// Set by `up` for its nodes to its own pid: a node stops (SIGTERM, so cleanly) when that
/// process dies, even by kill -9, instead of living on without its supervisor and holding the
/// ports and the data directory ([`exit_with_parent`]).
pub const EXIT_WITH_PARENT: &str = "LOGCLUSTER_EXIT_WITH_PARENT";

/// In a node started by `up` ([`EXIT_WITH_PARENT`]): asks the kernel for a SIGTERM when the
/// parent dies. Returns false when the parent is already gone (the node should not start).
/// `up` starts its nodes from the thread that runs its whole life (the runtime's `block_on`),
/// so the signal comes only when the process ends.
pub fn exit_with_parent() -> bool {
    let Some(parent) = std::env::var(EXIT_WITH_PARENT)
        .ok()
        .and_then(|pid| pid.parse::<i32>().ok())
    else {
        return true;
    };
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{Signal, getppid, set_parent_process_death_signal};
        if let Err(error) = set_parent_process_death_signal(Some(Signal::TERM)) {
            warn!(%error, "cannot ask to be stopped when `up` exits");
        }
        // The parent may have died before the request: the node was then handed to another.
        getppid().is_some_and(|pid| pid.as_raw_nonzero().get() == parent)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = parent;
        true
    }
}

/// A child node of `up`.
struct Node {
    name: String,
    raw: RawNodeConfig,
    child: Child,
    ready: serde_json::Value,
    /// Liveness checks in a row that the node answered "needs a restart" (503).
    unhealthy: u32,
    /// When this process was started.
    started: tokio::time::Instant,
    /// The wait before the next restart: none after a node ran [`STABLE_AFTER`], then 1 s,
    /// doubling up to [`RESTART_BACKOFF_MAX`] while restarts fail or the node soon stops again
    /// (the kubelet's crash-loop back-off), so that a node that cannot start (its disk still
    /// failing, its port taken) is not started twice a second.
    backoff: Duration,
    /// When the node, stopped, is started again.
    restart_at: Option<tokio::time::Instant>,
}

/// A node that ran this long before it stopped is restarted at once.
const STABLE_AFTER: Duration = Duration::from_secs(60);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The back-off after `backoff`: 1 s, then doubling up to [`RESTART_BACKOFF_MAX`].
fn longer(backoff: Duration) -> Duration {
    (backoff * 2).clamp(Duration::from_secs(1), RESTART_BACKOFF_MAX)
}

/// How often `up` asks each node whether it is live (`/healthz`), and after how many answers
/// in a row that it needs a restart (a 503: a WAL or segment sync failed, see
/// `Store::sync_failed`) it restarts it: the kubelet's liveness probe, as the operator sets it
/// (every 10 s, 6 failures), made quicker for a local cluster. A node that does not answer
/// (starting, busy, stopped with SIGSTOP) is not judged: only its own 503 counts.
const LIVENESS_EVERY: Duration = Duration::from_secs(5);
const LIVENESS_FAILURES: u32 = 3;

/// A node's answer to a liveness check.
enum Liveness {
    Live,
    /// It answered 503, saying why.
    NeedsRestart(String),
    /// No answer, or another one: not judged.
    Unknown,
}

impl Node {
    /// Asks the node whether it is live (`/healthz`).
    async fn liveness(&self) -> Liveness {
        let url = format!("http://{}/healthz", self.raw.listen.http);
        match logcluster_common::http_client::request("GET", &url, &[], b"", Duration::from_secs(1))
            .await
        {
            Ok(response) if response.status == 200 => Liveness::Live,
            Ok(response) if response.status == 503 => Liveness::NeedsRestart(response.body),
            _ => Liveness::Unknown,
        }
    }
}

impl Node {
    /// Rewrites the configuration with the ports the node bound, so a restart (after a crash)
    /// keeps its address — the members file and clients stay valid, as for a pod with a
    /// stable identity.
    fn pin_ports(&mut self, paths: &Paths) -> anyhow::Result<()> {
        let ports = &self.ready["ports"];
        let pin = |addr: &mut String, key: &str| {
            if let (false, Some(port)) = (addr.is_empty(), ports[key].as_u64())
                && let Some((host, _)) = addr.rsplit_once(':')
            {
                *addr = format!("{host}:{port}");
            }
        };
        let listen = &mut self.raw.listen;
        pin(&mut listen.ingest, "ingest");
        pin(&mut listen.udp, "udp");
        pin(&mut listen.syslog_tcp, "syslog_tcp");
        pin(&mut listen.syslog_udp, "syslog_udp");
        pin(&mut listen.syslog_tls, "syslog_tls");
        pin(&mut listen.http, "http");
        if let Some(cluster) = self.raw.cluster.as_mut() {
            pin(&mut cluster.listen, "cluster");
        }
        let config_path = paths.data_dir.join(format!("{}.yaml", self.name));
        std::fs::write(&config_path, self.raw.to_yaml()?)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        Ok(())
    }
}

impl UpArgs {
    fn addr(&self, port: u16) -> String {
        format!(
            "{}:{}",
            self.host,
            if self.ephemeral_ports { 0 } else { port }
        )
    }

    fn base_config(&self, name: &str, paths: &Paths, roles: Vec<Role>) -> RawNodeConfig {
        let mut raw = RawNodeConfig::for_test(paths.data_dir.join(name));
        raw.name = Some(name.to_string());
        raw.roles = roles;
        raw.listen.ingest = String::new();
        raw.listen.udp = String::new();
        raw.listen.syslog_tcp = String::new();
        raw.listen.syslog_udp = String::new();
        raw.listen.syslog_tls = String::new();
        raw.listen.http = String::new();
        raw.tls = Some(RawTls {
            cert_file: paths.pki.node_cert.clone(),
            key_file: paths.pki.node_key.clone(),
            client_ca_file: None,
        });
        raw.storage.fsync = self.fsync.clone();
        let mut cluster = RawCluster::for_test(&paths.pki.ca_cert, &paths.members);
        cluster.listen = String::new();
        cluster.replication_factor = self.replication_factor;
        cluster.write_quorum = self.write_quorum;
        cluster.read_quorum = self.read_quorum;
        cluster.anti_entropy_interval = self.anti_entropy_interval.clone();
        raw.cluster = Some(cluster);
        raw
    }

    fn storage_config(&self, index: usize, paths: &Paths) -> RawNodeConfig {
        let name = format!("storage-{index}");
        let mut raw = self.base_config(&name, paths, vec![Role::Storage]);
        raw.listen.http = self.addr(self.storage_http_port + index as u16);
        if let Some(cluster) = raw.cluster.as_mut() {
            cluster.listen = self.addr(self.cluster_port + index as u16);
        }
        raw
    }

    fn ingestor_config(&self, paths: &Paths) -> RawNodeConfig {
        let mut raw = self.base_config("ingestor", paths, vec![Role::Ingestor]);
        raw.listen.ingest = self.addr(self.ingest_port);
        raw.listen.udp = self.addr(self.udp_port);
        raw.listen.syslog_tcp = self.addr(self.syslog_port);
        raw.listen.syslog_udp = self.addr(self.syslog_port);
        raw.listen.syslog_tls = self.addr(self.syslog_tls_port);
        raw.listen.http = self.addr(self.ingest_http_port);
        raw.ingest.schema_dir = Some(paths.schemas.clone());
        raw
    }

    fn query_config(&self, paths: &Paths, peers: Vec<String>) -> RawNodeConfig {
        let mut raw = self.base_config("query", paths, vec![Role::Query]);
        raw.listen.http = self.addr(self.http_port);
        raw.query.peers = peers;
        raw.alerts.rule_dir = Some(paths.alerts.clone());
        raw.alerts.webhook_url = self.alert_webhook.clone();
        // The query node lists the schemas too (`logcluster send` checks them before sending).
        raw.ingest.schema_dir = Some(paths.schemas.clone());
        raw
    }
}

async fn start(name: &str, config: RawNodeConfig, paths: &Paths) -> anyhow::Result<Node> {
    let config_path = paths.data_dir.join(format!("{name}.yaml"));
    std::fs::write(&config_path, config.to_yaml()?)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let ready = paths.data_dir.join(format!("{name}.ready.json"));
    let _ = std::fs::remove_file(&ready);
    let log_path = paths.data_dir.join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the logcluster executable")?;
    let mut child = Command::new(exe)
        .arg("node")
        .arg("--config")
        .arg(&config_path)
        .arg("--ready-file")
        .arg(&ready)
        .stderr(log)
        .env(EXIT_WITH_PARENT, std::process::id().to_string())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("failed to start {name}"))?;
    match wait_ready(&mut child, &ready, Duration::from_secs(60)).await {
        Ok(info) => {
            let mut node = Node {
                name: name.to_string(),
                raw: config,
                child,
                ready: info,
                unhealthy: 0,
                started: tokio::time::Instant::now(),
                backoff: Duration::ZERO,
                restart_at: None,
            };
            node.pin_ports(paths)?;
            Ok(node)
        }
        Err(error) => {
            terminate(name, &mut child).await;
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(error.context(format!(
                "{name} failed to start; the end of {}:\n{}",
                log_path.display(),
                tail.join("\n")
            )))
        }
    }
}

async fn wait_ready(
    child: &mut Child,
    ready: &Path,
    deadline: Duration,
) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(ready)
            && let Ok(value) = serde_json::from_str::<serde_json::Value>(&text)
        {
            return Ok(value);
        }
        if let Some(status) = child.try_wait()? {
            bail!("the node exited during startup ({status})");
        }
        if started.elapsed() > deadline {
            bail!("the node did not become ready within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn terminate(name: &str, child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
    }
    match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
        Ok(Ok(status)) => info!(node = name, %status, "stopped"),
        _ => {
            warn!(node = name, "did not stop in 30s; killing it");
            let _ = child.kill().await;
        }
    }
}

async fn stop_all(nodes: &mut [Node]) {
    // Ingestor first so in-flight batches still reach the storage members, storage last.
    for node in nodes.iter_mut().rev() {
        terminate(&node.name, &mut node.child).await;
    }
}

fn port(node: &Node, name: &str) -> u64 {
    node.ready["ports"][name].as_u64().unwrap_or(0)
}

/// Writes `<data-dir>/ready.json`: every endpoint and pid (rewritten after restarts).
fn write_summary(nodes: &[Node], paths: &Paths, ready_path: &Path) -> anyhow::Result<()> {
    let by_name: BTreeMap<&str, &Node> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let (Some(ingestor), Some(query)) = (by_name.get("ingestor"), by_name.get("query")) else {
        bail!("the ingestor or the query node is missing");
    };
    let storage: Vec<serde_json::Value> = nodes
        .iter()
        .filter(|n| n.name.starts_with("storage-"))
        .map(|n| {
            json!({
                "name": n.name,
                "pid": n.child.id(),
                "cluster": port(n, "cluster"),
                "http": port(n, "http"),
                "config": paths.data_dir.join(format!("{}.yaml", n.name)),
            })
        })
        .collect();
    let summary = json!({
        "ports": {
            "ingest": port(ingestor, "ingest"),
            "udp": port(ingestor, "udp"),
            "syslog_tcp": port(ingestor, "syslog_tcp"),
            "syslog_udp": port(ingestor, "syslog_udp"),
            "syslog_tls": port(ingestor, "syslog_tls"),
            "ingest_http": port(ingestor, "http"),
            "http": port(query, "http"),
        },
        "pids": { "ingestor": ingestor.child.id(), "query": query.child.id(), "up": std::process::id() },
        "storage": storage,
        "ca": paths.pki.ca_cert,
        "members_file": paths.members,
    });
    let tmp = ready_path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&summary)?)?;
    std::fs::rename(&tmp, ready_path)?;
    Ok(())
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    // Installed first: a Ctrl+C or SIGTERM while the nodes start waits for them to be up and
    // then stops them all, instead of ending `up` alone.
    let signals = logcluster_common::shutdown::listen_for_signals();
    if args.storage == 0 {
        bail!("--storage must be at least 1");
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    // Before anything in it is written: a second `up` on this directory would rewrite the
    // running cluster's members file and node configurations.
    let _up_lock = crate::node::lock_exclusively(
        &data_dir,
        "up.lock",
        "`logcluster up`",
        "stop it, or give this one another --data-dir",
    )
    .await?;
    let schemas = match &args.schemas {
        Some(dir) => dir.clone(),
        None => data_dir.join("schemas"),
    };
    std::fs::create_dir_all(&schemas)
        .with_context(|| format!("cannot create {}", schemas.display()))?;
    let alerts = args
        .alerts
        .clone()
        .unwrap_or_else(|| data_dir.join("alerts"));
    std::fs::create_dir_all(&alerts)
        .with_context(|| format!("cannot create {}", alerts.display()))?;
    let pki = logcluster_common::certs::generate_dev_pki(
        &data_dir.join("tls"),
        &["localhost", "127.0.0.1", "::1", &args.host],
    )
    .context("failed to create the development certificates")?;
    let paths = Paths {
        members: data_dir.join("members.yaml"),
        data_dir: data_dir.clone(),
        schemas,
        alerts,
        pki,
    };
    let ready_path = data_dir.join("ready.json");
    let _ = std::fs::remove_file(&ready_path);
    // Members are published once they listen; nodes watch the file.
    write_members_file(&paths.members, &MemberList::default())
        .with_context(|| format!("cannot write {}", paths.members.display()))?;

    let mut nodes: Vec<Node> = Vec::new();
    let started: anyhow::Result<()> = async {
        for index in 0..args.storage {
            let name = format!("storage-{index}");
            nodes.push(start(&name, args.storage_config(index, &paths), &paths).await?);
        }
        let members = MemberList::new(
            nodes
                .iter()
                .map(|n| Member {
                    id: n.name.clone(),
                    addr: format!("{}:{}", args.host, port(n, "cluster")),
                    ready: true,
                    leaving: false,
                })
                .collect(),
        );
        write_members_file(&paths.members, &members)
            .with_context(|| format!("cannot write {}", paths.members.display()))?;
        nodes.push(start("ingestor", args.ingestor_config(&paths), &paths).await?);
        // The dashboard's overview shows every other node next to the query node's own.
        let peers = nodes
            .iter()
            .map(|n| format!("http://{}:{}", args.host, port(n, "http")))
            .collect();
        nodes.push(start("query", args.query_config(&paths, peers), &paths).await?);
        Ok(())
    }
    .await;
    if let Err(error) = started {
        stop_all(&mut nodes).await;
        return Err(error);
    }

    write_summary(&nodes, &paths, &ready_path)?;
    let by_name: BTreeMap<&str, &Node> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let ingestor = by_name["ingestor"];
    let query = by_name["query"];
    let host = &args.host;
    let ca = paths.pki.ca_cert.display();
    let http = port(query, "http");
    let ingest = port(ingestor, "ingest");
    println!(
        "LogCluster is up: {storage} storage members (replication {rf}, write quorum {w}, read quorum {r}), \
         an ingestor and a query node.\n\n\
         Endpoints\n\
         \x20 TLS ingest (framed)   {host}:{ingest}\n\
         \x20 UDP JSON              {host}:{udp}\n\
         \x20 syslog TCP / UDP      {host}:{syslog_tcp} / {host}:{syslog_udp}\n\
         \x20 syslog TLS            {host}:{syslog_tls}\n\
         \x20 HTTP ingest           http://{host}:{ingest_http}/api/v1/ingest\n\
         \x20 query API             http://{host}:{http}\n\
         \x20 cluster status        http://{host}:{http}/api/v1/cluster\n\
         \x20 metrics               http://{host}:{http}/metrics (each node has its own)\n\
         \x20 CA certificate        {ca}\n\
         \x20 schemas folder        {schemas}\n\
         \x20 data and node logs    {data}\n\n\
         Try\n\
         \x20 logcluster send --tls-ca {ca} --tcp-port {ingest} --query-url http://{host}:{http} --count 100000 --burst\n\
         \x20 logcluster query --url http://{host}:{http} 'level:ERROR AND timeout' --limit 20\n\
         \x20 logger --server {host} --port {syslog_tcp} --tcp 'hello from logger'\n\
         \x20 curl -s http://{host}:{http}/api/v1/stats?interval=1m\n\n\
         Ctrl+C stops everything cleanly.",
        storage = args.storage,
        rf = args.replication_factor.min(args.storage as u32),
        w = args.write_quorum,
        r = args.read_quorum,
        udp = port(ingestor, "udp"),
        syslog_tcp = port(ingestor, "syslog_tcp"),
        syslog_udp = port(ingestor, "syslog_udp"),
        syslog_tls = port(ingestor, "syslog_tls"),
        ingest_http = port(ingestor, "http"),
        schemas = paths.schemas.display(),
        data = data_dir.display(),
    );
    drop(by_name);

    // Supervise: a node that exits (a crash, or kill -9 while trying things out), or that
    // says it needs a restart, is restarted with the same identity, ports and data, as
    // Kubernetes would restart a pod.
    let supervise = async {
        let mut liveness_due = tokio::time::Instant::now() + LIVENESS_EVERY;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let check_liveness = tokio::time::Instant::now() >= liveness_due;
            if check_liveness {
                liveness_due = tokio::time::Instant::now() + LIVENESS_EVERY;
            }
            let mut restarted_any = false;
            for node in nodes.iter_mut() {
                let now = tokio::time::Instant::now();
                match node.child.try_wait() {
                    Ok(Some(status)) if node.restart_at.is_none() => {
                        if node.started.elapsed() >= STABLE_AFTER {
                            node.backoff = Duration::ZERO;
                        }
                        node.restart_at = Some(now + node.backoff);
                        warn!(node = %node.name, %status, in_seconds = node.backoff.as_secs(), "node exited; restarting it (its log is in the data directory)");
                    }
                    Ok(Some(_)) => {}
                    _ if check_liveness => match node.liveness().await {
                        Liveness::NeedsRestart(why) => {
                            node.unhealthy += 1;
                            if node.unhealthy < LIVENESS_FAILURES {
                                continue;
                            }
                            warn!(node = %node.name, %why, "node says it needs a restart; restarting it (its log is in the data directory)");
                            terminate(&node.name, &mut node.child).await;
                            node.restart_at = Some(now);
                        }
                        Liveness::Live => {
                            node.unhealthy = 0;
                            continue;
                        }
                        Liveness::Unknown => continue,
                    },
                    _ => continue,
                }
                if node
                    .restart_at
                    .is_some_and(|at| tokio::time::Instant::now() < at)
                {
                    continue;
                }
                match start(&node.name, node.raw.clone(), &paths).await {
                    Ok(mut restarted) => {
                        info!(node = %node.name, "node restarted");
                        // Should it stop again soon, the next restart waits longer.
                        restarted.backoff = longer(node.backoff);
                        *node = restarted;
                        restarted_any = true;
                    }
                    Err(error) => {
                        node.backoff = longer(node.backoff);
                        node.restart_at = Some(tokio::time::Instant::now() + node.backoff);
                        warn!(node = %node.name, error = %format!("{error:#}"), "restart failed; trying again in {}s", node.backoff.as_secs())
                    }
                }
            }
            if restarted_any && let Err(error) = write_summary(&nodes, &paths, &ready_path) {
                warn!(%error, "cannot rewrite ready.json");
            }
        }
    };
    tokio::select! {
        () = signals.wait() => {
            info!("stopping the local cluster");
        }
        () = supervise => {}
    }
    stop_all(&mut nodes).await;
    let _ = std::fs::remove_file(&ready_path);
    Ok(())
}
