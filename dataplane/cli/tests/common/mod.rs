//! Shared by the node tests: a real `logcluster node` process with its own data dir and
//! generated TLS, a TLS frame client, and a minimal HTTP/1.1 client.
#![allow(dead_code)]

pub mod cluster;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use logcluster_config::{RawNodeConfig, RawTls};
use logcluster_proto::frame::{Ack, Format, encode_frame};
use logcluster_testkit::NodeProcess;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub const READY: Duration = Duration::from_secs(30);

/// A node under test. The data directory outlives restarts.
pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub ca: PathBuf,
    pub process: Option<NodeProcess>,
    pub ports: HashMap<String, u16>,
}

impl TestNode {
    /// Starts a node with every listener on an ephemeral loopback port.
    pub async fn start(
        customize: impl FnOnce(&mut RawNodeConfig, &Path),
    ) -> anyhow::Result<TestNode> {
        let dir = tempfile::tempdir()?;
        let pki = logcluster_common::certs::generate_dev_pki(
            &dir.path().join("tls"),
            &["localhost", "127.0.0.1"],
        )?;
        let mut raw = RawNodeConfig::for_test(dir.path().join("data"));
        raw.tls = Some(RawTls {
            cert_file: pki.node_cert.clone(),
            key_file: pki.node_key.clone(),
            client_ca_file: None,
        });
        raw.stats_log_interval = "1s".into();
        customize(&mut raw, dir.path());
        let config_path = dir.path().join("node.yaml");
        std::fs::write(&config_path, raw.to_yaml()?)?;
        let mut node = TestNode {
            dir,
            config_path,
            ca: pki.ca_cert.clone(),
            process: None,
            ports: HashMap::new(),
        };
        node.spawn().await?;
        Ok(node)
    }

    /// (Re)starts the process on the same data directory and configuration.
    pub async fn spawn(&mut self) -> anyhow::Result<()> {
        let ready = self.dir.path().join("ready.json");
        let (process, ports) = spawn_node(&self.config_path, &ready).await?;
        self.ports = ports;
        self.process = Some(process);
        Ok(())
    }

    pub fn port(&self, name: &str) -> u16 {
        self.ports
            .get(name)
            .copied()
            .unwrap_or_else(|| panic!("node has no {name} port: {:?}", self.ports))
    }

    pub fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.port("http"))
    }

    pub fn kill_9(&mut self) -> anyhow::Result<()> {
        if let Some(process) = self.process.as_mut() {
            process.kill_9()?;
        }
        Ok(())
    }

    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let process = self.process.as_mut().context("node not running")?;
        process.terminate(Duration::from_secs(30)).await
    }

    pub async fn connect(&self) -> anyhow::Result<FrameClient> {
        FrameClient::connect(self.port("ingest"), &self.ca).await
    }

    pub async fn query(&self, body: Value) -> anyhow::Result<Value> {
        let (status, value) = http(
            &self.http_addr(),
            "POST",
            "/v1/query",
            &[],
            body.to_string().as_bytes(),
        )
        .await?;
        if status != 200 {
            bail!("query answered {status}: {value}");
        }
        Ok(value)
    }

    /// A tenant's entries once `done` holds for them (waiting up to 20 s, times patience).
    pub async fn stored_when(
        &self,
        tenant: &str,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> anyhow::Result<Vec<Value>> {
        eventually(what, Duration::from_secs(20), || async {
            self.query_all(tenant)
                .await
                .ok()
                .filter(|items| done(items))
        })
        .await
    }

    /// Every entry of a tenant, following cursors.
    pub async fn query_all(&self, tenant: &str) -> anyhow::Result<Vec<Value>> {
        let mut items = Vec::new();
        let mut cursor = Value::Null;
        loop {
            let page = self
                .query(serde_json::json!({"tenant_id": tenant, "limit": 1000, "cursor": cursor}))
                .await?;
            items.extend(page["items"].as_array().cloned().unwrap_or_default());
            cursor = page["next_cursor"].clone();
            if cursor.is_null() {
                return Ok(items);
            }
        }
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        let (status, _) = http(&self.http_addr(), "GET", "/healthz", &[], b"").await?;
        anyhow::ensure!(status == 200, "healthz answered {status}");
        http_text(&self.http_addr(), "/metrics").await
    }
}

/// Runs `logcluster <args>` to its end (at most a minute: a process that should have refused
/// to start but did not is killed); returns whether it succeeded and its stderr.
pub async fn run_to_end(args: &[std::ffi::OsString]) -> anyhow::Result<(bool, String)> {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(logcluster_testkit::binary_path("logcluster"))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("still running after a minute")??;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// Starts `logcluster node --config <config>` and waits for its ready-file; returns the
/// process and the ports it bound.
pub async fn spawn_node(
    config: &Path,
    ready: &Path,
) -> anyhow::Result<(NodeProcess, HashMap<String, u16>)> {
    let _ = std::fs::remove_file(ready);
    let binary = logcluster_testkit::binary_path("logcluster");
    let args = vec![
        "node".to_string(),
        "--config".to_string(),
        config.display().to_string(),
        "--ready-file".to_string(),
        ready.display().to_string(),
    ];
    let mut process = NodeProcess::spawn(&binary, &args)?;
    let ports = process.wait_ready(ready, READY).await?;
    Ok((process, ports))
}

/// Sum of every sample of a metric whose line contains all of `needles` (labels).
pub fn metric_sum(text: &str, name: &str, needles: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn tls_config(ca: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    Ok(logcluster_common::tls::load_client_config(ca, None)?)
}

/// A TLS connection speaking the framed protocol.
pub struct FrameClient {
    pub stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl FrameClient {
    pub async fn connect(port: u16, ca: &Path) -> anyhow::Result<FrameClient> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        let connector = TlsConnector::from(tls_config(ca)?);
        let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
        let stream = connector.connect(name, tcp).await?;
        Ok(FrameClient {
            stream,
            buf: Vec::new(),
        })
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    pub async fn send(
        &mut self,
        format: Format,
        batch_id: u64,
        tenant: &str,
        payload: &[u8],
    ) -> anyhow::Result<()> {
        self.send_raw(&encode_frame(format, batch_id, tenant, payload))
            .await
    }

    /// Reads the next ack; `None` when the server closed the connection.
    pub async fn read_ack(&mut self) -> anyhow::Result<Option<Ack>> {
        loop {
            if let Some((ack, len)) = Ack::parse(&self.buf)? {
                self.buf.drain(..len);
                return Ok(Some(ack));
            }
            let mut chunk = [0u8; 4096];
            let n =
                match tokio::time::timeout(Duration::from_secs(30), self.stream.read(&mut chunk))
                    .await
                {
                    Ok(Ok(n)) => n,
                    Ok(Err(_)) => 0,
                    Err(_) => bail!("no ack within 30s"),
                };
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn roundtrip(
        &mut self,
        format: Format,
        batch_id: u64,
        tenant: &str,
        payload: &[u8],
    ) -> anyhow::Result<Ack> {
        self.send(format, batch_id, tenant, payload).await?;
        self.read_ack()
            .await?
            .context("connection closed before the ack")
    }
}

/// One HTTP request to the node; returns status and JSON body (or the text as a JSON string
/// when it is not JSON).
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<(u16, Value)> {
    let (status, text) = http_raw(addr, method, path, headers, body).await?;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, value))
}

pub async fn http_text(addr: &str, path: &str) -> anyhow::Result<String> {
    Ok(http_raw(addr, "GET", path, &[], b"").await?.1)
}

pub async fn http_raw(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let url = format!("http://{addr}{path}");
    let response = logcluster_common::http_client::request(
        method,
        &url,
        headers,
        body,
        Duration::from_secs(60),
    )
    .await?;
    Ok((response.status, response.body))
}

/// Whether the server closes `stream` (reads to its end, or fails) within 30 s times
/// patience; what was read, or why not.
pub async fn closed_by_server(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<(), String> {
    let mut rest = Vec::new();
    let deadline = Duration::from_secs(30).mul_f64(logcluster_testkit::patience());
    match tokio::time::timeout(deadline, stream.read_to_end(&mut rest)).await {
        Ok(Ok(0) | Err(_)) => Ok(()),
        other => Err(format!("still open: {other:?}, read {} bytes", rest.len())),
    }
}

/// Polls until a value comes or the deadline (stretched by LOGCLUSTER_TEST_PATIENCE) passes.
pub use logcluster_testkit::eventually;

/// Arguments of a `logcluster up` with one storage member (one copy of everything) on
/// ephemeral ports, its data in `data`: the smallest whole cluster.
pub fn up_with_one_member(data: &Path) -> Vec<String> {
    let flags = [
        "up",
        "--ephemeral-ports",
        "--storage",
        "1",
        "--replication-factor",
        "1",
        "--write-quorum",
        "1",
        "--read-quorum",
        "1",
        "--data-dir",
    ];
    flags
        .iter()
        .map(|s| s.to_string())
        .chain([data.display().to_string()])
        .collect()
}

/// NDJSON whose `wide` records grow, once their nested keys are flattened, to over 256 MiB
/// together (300 records of 1,000 fields, each key 1,000 bytes longer than sent), between
/// two small `ok` records.
pub fn expanding_ndjson() -> Vec<u8> {
    let prefix = "k".repeat(1000);
    let fields: String = (0..1000)
        .map(|f| format!("\"f{f}\":{f}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut out = String::from("{\"service\":\"ok\",\"message\":\"first\"}\n");
    for k in 0..300 {
        out.push_str(&format!(
            "{{\"service\":\"wide\",\"message\":\"wide {k}\",\"{prefix}\":{{{fields}}}}}\n"
        ));
    }
    out.push_str("{\"service\":\"ok\",\"message\":\"last\"}\n");
    out.into_bytes()
}
