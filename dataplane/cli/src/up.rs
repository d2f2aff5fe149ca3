//! `logcluster up`: the embedded default — a whole local cluster on 127.0.0.1.
//!
//! Generates (or reuses) a self-signed CA and node certificate in the data directory, writes
//! the node configuration, starts the node as a child process, waits for its ready-file,
//! prints the endpoints and example commands, and on Ctrl+C / SIGTERM stops the node with
//! SIGTERM so it flushes before exiting.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use logcluster_config::{RawNodeConfig, RawTls};
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
    /// HTTP port: ingest, query API, metrics, health.
    #[arg(long, default_value_t = 3100)]
    pub http_port: u16,
    /// Use ephemeral ports everywhere (tests; the ports are printed and written to
    /// `<data-dir>/ready.json`).
    #[arg(long)]
    pub ephemeral_ports: bool,
    /// fsync policy: `always` or an interval such as `100ms`.
    #[arg(long, default_value = "always")]
    pub fsync: String,
}

fn node_config(
    args: &UpArgs,
    data_dir: &Path,
    schemas: &Path,
    pki: &logcluster_common::certs::DevPki,
) -> RawNodeConfig {
    let mut raw = RawNodeConfig::for_test(data_dir.join("node-1"));
    raw.name = Some("node-1".into());
    let addr = |port: u16| {
        format!(
            "{}:{}",
            args.host,
            if args.ephemeral_ports { 0 } else { port }
        )
    };
    raw.listen.ingest = addr(args.ingest_port);
    raw.listen.udp = addr(args.udp_port);
    raw.listen.syslog_tcp = addr(args.syslog_port);
    raw.listen.syslog_udp = addr(args.syslog_port);
    raw.listen.syslog_tls = addr(args.syslog_tls_port);
    raw.listen.http = addr(args.http_port);
    raw.tls = Some(RawTls {
        cert_file: pki.node_cert.clone(),
        key_file: pki.node_key.clone(),
        client_ca_file: None,
    });
    raw.ingest.schema_dir = Some(schemas.to_path_buf());
    raw.storage.fsync = args.fsync.clone();
    raw
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
            bail!("the node exited during startup ({status}); see its log above");
        }
        if started.elapsed() > deadline {
            bail!("the node did not become ready within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
    }
    match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
        Ok(Ok(status)) => info!(%status, "node stopped"),
        _ => {
            warn!("node did not stop in 30s; killing it");
            let _ = child.kill().await;
        }
    }
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let schemas = match &args.schemas {
        Some(dir) => dir.clone(),
        None => data_dir.join("schemas"),
    };
    std::fs::create_dir_all(&schemas)
        .with_context(|| format!("cannot create {}", schemas.display()))?;
    let pki = logcluster_common::certs::generate_dev_pki(
        &data_dir.join("tls"),
        &["localhost", "127.0.0.1", "::1", &args.host],
    )
    .context("failed to create the development certificates")?;
    let config_path = data_dir.join("node-1.yaml");
    std::fs::write(
        &config_path,
        node_config(&args, &data_dir, &schemas, &pki).to_yaml()?,
    )?;
    let ready = data_dir.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    let exe = std::env::current_exe().context("cannot find the logcluster executable")?;
    let mut child = Command::new(exe)
        .arg("node")
        .arg("--config")
        .arg(&config_path)
        .arg("--ready-file")
        .arg(&ready)
        .kill_on_drop(true)
        .spawn()
        .context("failed to start the node process")?;
    let info = match wait_ready(&mut child, &ready, Duration::from_secs(60)).await {
        Ok(info) => info,
        Err(error) => {
            terminate(&mut child).await;
            return Err(error);
        }
    };
    let port = |name: &str| info["ports"][name].as_u64().unwrap_or(0);
    let host = &args.host;
    let ca = pki.ca_cert.display();
    println!(
        "LogCluster is up (1 node: ingestor + storage + query).\n\n\
         Endpoints\n\
         \x20 TLS ingest (framed)   {host}:{ingest}\n\
         \x20 UDP JSON              {host}:{udp}\n\
         \x20 syslog TCP / UDP      {host}:{syslog_tcp} / {host}:{syslog_udp}\n\
         \x20 syslog TLS            {host}:{syslog_tls}\n\
         \x20 HTTP (query, ingest)  http://{host}:{http}\n\
         \x20 metrics               http://{host}:{http}/metrics\n\
         \x20 CA certificate        {ca}\n\
         \x20 schemas folder        {schemas}\n\
         \x20 data                  {data}\n\n\
         Try\n\
         \x20 logcluster send --tls-ca {ca} --tcp-port {ingest} --count 100000 --burst\n\
         \x20 logcluster query --url http://{host}:{http} 'level:ERROR AND timeout' --limit 20\n\
         \x20 logger --server {host} --port {syslog_tcp} --tcp 'hello from logger'\n\
         \x20 curl -s http://{host}:{http}/api/v1/stats?interval=1m\n\n\
         Ctrl+C stops everything cleanly.",
        ingest = port("ingest"),
        udp = port("udp"),
        syslog_tcp = port("syslog_tcp"),
        syslog_udp = port("syslog_udp"),
        syslog_tls = port("syslog_tls"),
        http = port("http"),
        schemas = schemas.display(),
        data = data_dir.display(),
    );
    tokio::select! {
        () = logcluster_common::shutdown::wait_for_signal() => {
            info!("stopping the local cluster");
            terminate(&mut child).await;
        }
        status = child.wait() => {
            let status = status?;
            if !status.success() {
                bail!("the node exited unexpectedly ({status})");
            }
        }
    }
    Ok(())
}
