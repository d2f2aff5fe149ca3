//! A cluster of real `logcluster node` processes on loopback: storage members, an ingestor
//! and a query node, mutual TLS between them, a members file they watch. Each node keeps its
//! ports across restarts (its configuration is rewritten with the ports it first bound), so
//! kill -9 / restart / SIGSTOP behave as they would for a pod with a stable identity.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use logcluster_cluster::membership::{Member, MemberList, write_members_file};
use logcluster_config::{RawCluster, RawNodeConfig, RawTls, Role};
use logcluster_testkit::NodeProcess;
use serde_json::{Value, json};

use super::{FrameClient, http, http_text};

/// One node process of the sandbox.
pub struct SandboxNode {
    pub name: String,
    pub config_path: PathBuf,
    pub raw: RawNodeConfig,
    pub process: Option<NodeProcess>,
    pub ports: HashMap<String, u16>,
}

impl SandboxNode {
    fn ready_path(&self) -> PathBuf {
        self.config_path.with_extension("ready.json")
    }

    pub async fn spawn(&mut self) -> anyhow::Result<()> {
        std::fs::write(&self.config_path, self.raw.to_yaml()?)?;
        let (process, ports) = super::spawn_node(&self.config_path, &self.ready_path())
            .await
            .with_context(|| format!("{} did not start", self.name))?;
        // Pin the ports for restarts.
        let pin = |addr: &mut String, port: Option<&u16>| {
            if let Some(port) = port
                && !addr.is_empty()
            {
                *addr = format!("127.0.0.1:{port}");
            }
        };
        pin(&mut self.raw.listen.http, ports.get("http"));
        pin(&mut self.raw.listen.ingest, ports.get("ingest"));
        if let Some(cluster) = self.raw.cluster.as_mut() {
            pin(&mut cluster.listen, ports.get("cluster"));
        }
        self.ports = ports;
        self.process = Some(process);
        Ok(())
    }

    pub fn port(&self, name: &str) -> u16 {
        self.ports.get(name).copied().unwrap_or(0)
    }

    pub fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.port("http"))
    }

    pub fn kill_9(&mut self) -> anyhow::Result<()> {
        if let Some(process) = self.process.as_mut() {
            process.kill_9()?;
        }
        self.process = None;
        Ok(())
    }

    pub fn sigstop(&self) -> anyhow::Result<()> {
        self.process.as_ref().context("not running")?.sigstop()
    }

    pub fn sigcont(&self) -> anyhow::Result<()> {
        self.process.as_ref().context("not running")?.sigcont()
    }

    pub async fn terminate(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.process.take() {
            process.terminate(Duration::from_secs(30)).await?;
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .map(|p| p.log_contents())
            .unwrap_or_default()
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        http_text(&self.http_addr(), "/metrics").await
    }

    /// The member's drain status (`GET /api/v1/drain`).
    pub async fn drain(&self) -> anyhow::Result<Value> {
        let (status, body) = http(&self.http_addr(), "GET", "/api/v1/drain", &[], b"").await?;
        anyhow::ensure!(status == 200, "drain answered {status}: {body}");
        Ok(body)
    }

    /// Every entry of a tenant that this storage member holds (no fan-out).
    pub async fn local_entries(&self, tenant: &str) -> anyhow::Result<Vec<Value>> {
        follow(&self.http_addr(), "/v1/local/query", tenant).await
    }
}

/// Follows cursors of a query endpoint until the end; a complete answer only: pages that
/// say `partial` (fewer than the read quorum answered, as right after restarts) are asked
/// again from the start, and a failure says so.
pub async fn follow(addr: &str, path: &str, tenant: &str) -> anyhow::Result<Vec<Value>> {
    let last_partial = std::cell::RefCell::new(Value::Null);
    let answer = super::eventually(
        &format!("a complete answer from {path}"),
        Duration::from_secs(20),
        || async {
            match follow_once(addr, path, tenant).await {
                Ok(Ok(items)) => Some(Ok(items)),
                Ok(Err(partial)) => {
                    *last_partial.borrow_mut() = partial;
                    None
                }
                Err(error) => Some(Err(error)),
            }
        },
    )
    .await;
    match answer {
        Ok(answer) => answer,
        Err(error) => Err(error.context(format!(
            "the last page was partial: {}",
            last_partial.borrow()
        ))),
    }
}

/// Every page once; `Ok(Err(page))` when a page was partial.
async fn follow_once(
    addr: &str,
    path: &str,
    tenant: &str,
) -> anyhow::Result<Result<Vec<Value>, Value>> {
    let mut items = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let body = json!({"tenant_id": tenant, "limit": 1000, "cursor": cursor});
        let (status, page) = http(addr, "POST", path, &[], body.to_string().as_bytes()).await?;
        anyhow::ensure!(status == 200, "{path} answered {status}: {page}");
        if page["stats"]["partial"] == true {
            return Ok(Err(page["stats"].clone()));
        }
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        cursor = page["next_cursor"].clone();
        if cursor.is_null() {
            return Ok(Ok(items));
        }
    }
}

pub struct ClusterSandbox {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub pki: logcluster_common::certs::DevPki,
    pub customize: fn(&mut RawNodeConfig),
    /// Addresses published instead of a member's own (a fault proxy in front of it).
    pub addr_override: HashMap<String, String>,
    pub members_file: PathBuf,
    pub storage: Vec<SandboxNode>,
    pub ingestor: SandboxNode,
    pub query: SandboxNode,
}

fn node_config(
    name: &str,
    dir: &Path,
    pki: &logcluster_common::certs::DevPki,
    members_file: &Path,
    roles: Vec<Role>,
) -> RawNodeConfig {
    let mut raw = RawNodeConfig::for_test(dir.join(name));
    raw.name = Some(name.to_string());
    raw.roles = roles;
    for addr in [
        &mut raw.listen.ingest,
        &mut raw.listen.udp,
        &mut raw.listen.syslog_tcp,
        &mut raw.listen.syslog_tls,
        &mut raw.listen.syslog_udp,
    ] {
        addr.clear();
    }
    raw.tls = Some(RawTls {
        cert_file: pki.node_cert.clone(),
        key_file: pki.node_key.clone(),
        client_ca_file: None,
    });
    raw.stats_log_interval = "0s".into();
    let mut cluster = RawCluster::for_test(&pki.ca_cert, members_file);
    cluster.listen.clear();
    // The production default. Shorter timeouts made tests flaky on a loaded 2-core machine:
    // a debug build's replica call (a new stream's first fsyncs, a hand-over) has taken over
    // 2 s while several clusters ran at once, turning latency into refused writes.
    cluster.call_timeout = "5s".into();
    cluster.handoff_interval = "200ms".into();
    // Off unless a test turns it on, so read repair is what repairs in read-repair tests.
    cluster.anti_entropy_interval = "1h".into();
    raw.cluster = Some(cluster);
    raw
}

impl ClusterSandbox {
    /// Starts `storage` storage members, then the query node and the ingestor.
    pub async fn start(storage: usize) -> anyhow::Result<ClusterSandbox> {
        Self::start_with(storage, |_| {}).await
    }

    /// Like [`ClusterSandbox::start`], with `customize` applied to every node's config.
    pub async fn start_with(
        storage: usize,
        customize: fn(&mut RawNodeConfig),
    ) -> anyhow::Result<ClusterSandbox> {
        let dir = tempfile::tempdir()?;
        let pki = logcluster_common::certs::generate_dev_pki(
            &dir.path().join("tls"),
            &["localhost", "127.0.0.1"],
        )?;
        let members_file = dir.path().join("members.yaml");
        write_members_file(&members_file, &MemberList::default())?;
        let mut nodes = Vec::new();
        for i in 0..storage {
            let name = format!("storage-{i}");
            let mut raw = node_config(&name, dir.path(), &pki, &members_file, vec![Role::Storage]);
            if let Some(cluster) = raw.cluster.as_mut() {
                cluster.listen = "127.0.0.1:0".into();
            }
            customize(&mut raw);
            let mut node = SandboxNode {
                config_path: dir.path().join(format!("{name}.yaml")),
                name,
                raw,
                process: None,
                ports: HashMap::new(),
            };
            node.spawn().await?;
            nodes.push(node);
        }
        let mut sandbox = ClusterSandbox {
            ca: pki.ca_cert.clone(),
            customize,
            addr_override: HashMap::new(),
            members_file: members_file.clone(),
            storage: nodes,
            ingestor: SandboxNode {
                name: "ingestor".into(),
                config_path: dir.path().join("ingestor.yaml"),
                raw: {
                    let mut raw = node_config(
                        "ingestor",
                        dir.path(),
                        &pki,
                        &members_file,
                        vec![Role::Ingestor],
                    );
                    raw.listen.ingest = "127.0.0.1:0".into();
                    raw
                },
                process: None,
                ports: HashMap::new(),
            },
            query: SandboxNode {
                name: "query".into(),
                config_path: dir.path().join("query.yaml"),
                raw: {
                    let mut raw =
                        node_config("query", dir.path(), &pki, &members_file, vec![Role::Query]);
                    customize(&mut raw);
                    raw
                },
                process: None,
                ports: HashMap::new(),
            },
            pki,
            dir,
        };
        sandbox.publish_members(&[])?;
        sandbox.query.spawn().await?;
        sandbox.ingestor.spawn().await?;
        Ok(sandbox)
    }

    /// Starts one more storage member (not yet in the members file).
    pub async fn add_storage(&mut self) -> anyhow::Result<()> {
        let name = format!("storage-{}", self.storage.len());
        let mut raw = node_config(
            &name,
            self.dir.path(),
            &self.pki,
            &self.members_file,
            vec![Role::Storage],
        );
        if let Some(cluster) = raw.cluster.as_mut() {
            cluster.listen = "127.0.0.1:0".into();
        }
        (self.customize)(&mut raw);
        let mut node = SandboxNode {
            config_path: self.dir.path().join(format!("{name}.yaml")),
            name,
            raw,
            process: None,
            ports: HashMap::new(),
        };
        node.spawn().await?;
        self.storage.push(node);
        Ok(())
    }

    /// Writes the members file with only the named storage members.
    pub fn publish_only(&self, names: &[&str], leaving: &[&str]) -> anyhow::Result<()> {
        let list = MemberList::new(
            self.storage
                .iter()
                .filter(|n| names.contains(&n.name.as_str()))
                .map(|n| Member {
                    id: n.name.clone(),
                    addr: self.member_addr(n),
                    ready: true,
                    leaving: leaving.contains(&n.name.as_str()),
                })
                .collect(),
        );
        write_members_file(&self.members_file, &list)?;
        Ok(())
    }

    fn member_addr(&self, node: &SandboxNode) -> String {
        self.addr_override
            .get(&node.name)
            .cloned()
            .unwrap_or_else(|| format!("127.0.0.1:{}", node.port("cluster")))
    }

    /// Writes the members file from the storage nodes' cluster ports; `leaving` are marked.
    pub fn publish_members(&self, leaving: &[&str]) -> anyhow::Result<()> {
        let names: Vec<&str> = self.storage.iter().map(|n| n.name.as_str()).collect();
        self.publish_only(&names, leaving)
    }

    pub async fn connect(&self) -> anyhow::Result<FrameClient> {
        FrameClient::connect(self.ingestor.port("ingest"), &self.ca).await
    }

    /// Every entry of a tenant through the query node (quorum read).
    pub async fn query_all(&self, tenant: &str) -> anyhow::Result<Vec<Value>> {
        follow(&self.query.http_addr(), "/v1/query", tenant).await
    }

    pub async fn query(&self, body: Value) -> anyhow::Result<Value> {
        let (status, value) = http(
            &self.query.http_addr(),
            "POST",
            "/v1/query",
            &[],
            body.to_string().as_bytes(),
        )
        .await?;
        anyhow::ensure!(status == 200, "query answered {status}: {value}");
        Ok(value)
    }

    /// Waits until `metric` summed over `nodes` reaches `at_least`. A counter goes up once
    /// the work it counts has answered, which can be after a read already sees that work's
    /// result. A failure carries every node's log.
    pub async fn counted<'a>(
        &self,
        nodes: impl IntoIterator<Item = &'a SandboxNode>,
        metric: &str,
        at_least: f64,
    ) -> anyhow::Result<()> {
        let nodes: Vec<&SandboxNode> = nodes.into_iter().collect();
        super::eventually(
            &format!("{metric} to reach {at_least}"),
            Duration::from_secs(30),
            || async {
                let mut sum = 0.0;
                for node in &nodes {
                    sum += super::metric_sum(&node.metrics().await.ok()?, metric, &[]);
                }
                (sum >= at_least).then_some(())
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}{}", self.logs()))
    }

    /// Waits until each of `nodes` holds exactly `expected` entries of `tenant` (an ack needs
    /// only the write quorum's copies; the others follow). A failure carries every node's
    /// log.
    pub async fn holding<'a>(
        &self,
        nodes: impl IntoIterator<Item = &'a SandboxNode>,
        tenant: &str,
        expected: usize,
    ) -> anyhow::Result<()> {
        for node in nodes {
            super::eventually(
                &format!("{} to hold all {expected} entries", node.name),
                Duration::from_secs(60),
                || async {
                    let items = node.local_entries(tenant).await.ok()?;
                    (items.len() == expected).then_some(())
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}{}", self.logs()))?;
        }
        Ok(())
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in self.storage.iter().chain([&self.ingestor, &self.query]) {
            out.push_str(&format!("\n===== {} =====\n{}", node.name, node.log()));
        }
        out
    }
}
