//! The README's first command: `logcluster up` runs a whole local cluster. Logs sent through
//! it are queryable, a storage member killed with -9 is restarted with its identity and the
//! data stays complete, and SIGTERM stops every process cleanly.

mod common;

use std::time::Duration;

use common::cluster::follow;
use common::eventually;
use logcluster_testkit::{NodeProcess, binary_path};
use serde_json::Value;

fn ready(dir: &std::path::Path) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(
        dir.join("ready.json"),
    )?)?)
}

fn send(ca: &str, ingest: u16, http: u16, count: u64, seed: u64) -> anyhow::Result<()> {
    let output = std::process::Command::new(binary_path("logcluster"))
        .args(["send", "--tls-ca", ca, "--tcp-port", &ingest.to_string()])
        .args(["--query-url", &format!("http://127.0.0.1:{http}")])
        .args(["--count", &count.to_string(), "--batch", "200", "--burst"])
        .args(["--seed", &seed.to_string(), "--stats-interval", "60"])
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "send failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

fn alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test]
async fn up_runs_a_cluster_that_survives_a_killed_member_and_stops_cleanly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let args: Vec<String> = ["up", "--ephemeral-ports", "--data-dir"]
        .iter()
        .map(|s| s.to_string())
        .chain([data.display().to_string()])
        .collect();
    let mut up = NodeProcess::spawn(&binary_path("logcluster"), &args)?;
    let ports = up
        .wait_ready(&data.join("ready.json"), Duration::from_secs(60))
        .await?;
    let info = ready(&data)?;
    let storage = info["storage"].as_array().cloned().unwrap_or_default();
    assert_eq!(storage.len(), 3, "{info}");
    let ca = info["ca"].as_str().unwrap_or_default().to_string();
    let (ingest, http) = (ports["ingest"], ports["http"]);
    let query_addr = format!("127.0.0.1:{http}");

    send(&ca, ingest, http, 2000, 1)?;
    let items = follow(&query_addr, "/v1/query", "default").await?;
    assert_eq!(items.len(), 2000, "every acknowledged entry is queryable");

    // A second `up` on the same directory refuses to start before it touches anything (it
    // used to rewrite the members file, leaving the running cluster without members).
    let (ok, stderr) = common::run_to_end(&args.iter().map(Into::into).collect::<Vec<_>>()).await?;
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("in use by another `logcluster up`"),
        "{stderr}"
    );
    let members = std::fs::read_to_string(data.join("members.yaml"))?;
    assert_eq!(members.matches("storage-").count(), 3, "{members}");
    send(&ca, ingest, http, 10, 3)?;

    // kill -9 a storage member: `up` restarts it; writes and reads go on meanwhile.
    let victim = storage[1]["pid"].as_u64().unwrap_or_default();
    assert!(alive(victim));
    std::process::Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()?;
    send(&ca, ingest, http, 1000, 2)?;
    let restarted = eventually("storage-1 restarted", Duration::from_secs(30), || {
        let data = data.clone();
        async move {
            let pid = ready(&data).ok()?["storage"][1]["pid"].as_u64()?;
            (pid != victim && alive(pid)).then_some(pid)
        }
    })
    .await?;
    assert_ne!(restarted, victim);
    let cluster = common::http(&query_addr, "GET", "/api/v1/cluster", &[], b"")
        .await?
        .1;
    assert_eq!(
        cluster["members"].as_array().map(Vec::len),
        Some(3),
        "{cluster}"
    );
    eventually(
        "every member reachable again",
        Duration::from_secs(30),
        || {
            let query_addr = query_addr.clone();
            async move {
                let cluster = common::http(&query_addr, "GET", "/api/v1/cluster", &[], b"")
                    .await
                    .ok()?
                    .1;
                cluster["members"]
                    .as_array()?
                    .iter()
                    .all(|m| m["reachable"] == true)
                    .then_some(())
            }
        },
    )
    .await?;
    let items = follow(&query_addr, "/v1/query", "default").await?;
    assert_eq!(items.len(), 3010);

    // `logcluster cluster status` shows the three members, up, with their ring shares.
    let output = std::process::Command::new(binary_path("logcluster"))
        .args([
            "cluster",
            "status",
            "--url",
            &format!("http://{query_addr}"),
        ])
        .output()?;
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        table.contains("replication factor 3, write quorum 2, read quorum 2"),
        "{table}"
    );
    for member in ["storage-0", "storage-1", "storage-2"] {
        let line = table
            .lines()
            .find(|l| l.starts_with(member))
            .ok_or_else(|| anyhow::anyhow!("{member} missing:\n{table}"))?;
        assert!(line.contains(" up ") && line.contains("100.0%"), "{line}");
    }

    // SIGTERM: every child stops, `up` exits successfully.
    let children: Vec<u64> = ready(&data)?["storage"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["pid"].as_u64())
        .chain(
            ["ingestor", "query"]
                .iter()
                .filter_map(|n| info["pids"][n].as_u64()),
        )
        .collect();
    let status = up.terminate(Duration::from_secs(60)).await?;
    assert!(
        status.success(),
        "up exit status {status}\n{}",
        up.log_contents()
    );
    for pid in children {
        assert!(!alive(pid), "child {pid} still running after up stopped");
    }
    Ok(())
}

/// `up` killed with -9 takes its nodes with it: the kernel sends each a SIGTERM when its parent
/// dies, and each stops cleanly instead of living on without a supervisor, holding the ports
/// and the data directory; a new `up` on the same directory then starts.
#[tokio::test]
async fn up_killed_with_9_takes_its_nodes_down() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let args = common::up_with_one_member(&data);
    let mut up = NodeProcess::spawn(&binary_path("logcluster"), &args)?;
    up.wait_ready(&data.join("ready.json"), Duration::from_secs(60))
        .await?;
    let info = ready(&data)?;
    let pids: Vec<u64> = [
        &info["storage"][0]["pid"],
        &info["pids"]["ingestor"],
        &info["pids"]["query"],
    ]
    .iter()
    .filter_map(|pid| pid.as_u64())
    .collect();
    assert_eq!(pids.len(), 3, "{info}");
    assert!(pids.iter().all(|pid| alive(*pid)));
    up.kill_9()?;
    eventually(
        "every node of the killed up to stop",
        Duration::from_secs(30),
        || {
            let pids = pids.clone();
            async move { pids.iter().all(|pid| !alive(*pid)).then_some(()) }
        },
    )
    .await?;
    let log = std::fs::read_to_string(data.join("storage-0.log"))?;
    assert!(log.contains("stopped cleanly"), "{log}");
    // The killed `up` left its ready.json; the new one writes its own.
    std::fs::remove_file(data.join("ready.json"))?;
    let mut again = NodeProcess::spawn(&binary_path("logcluster"), &args)?;
    again
        .wait_ready(&data.join("ready.json"), Duration::from_secs(60))
        .await?;
    let status = again.terminate(Duration::from_secs(60)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}

/// A node that cannot start again is retried after a growing wait (1 s, 2 s, 4 s, … like the
/// kubelet's crash-loop back-off), not twice a second; once it can start, it is back. Its
/// HTTP port is taken here while it is down, so each restart fails.
#[tokio::test]
async fn up_waits_longer_between_failed_restarts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut up = NodeProcess::spawn(
        &binary_path("logcluster"),
        &common::up_with_one_member(&data),
    )?;
    up.wait_ready(&data.join("ready.json"), Duration::from_secs(60))
        .await?;
    let member = |info: &Value| {
        (
            info["storage"][0]["pid"].as_u64().unwrap_or(0),
            info["storage"][0]["http"].as_u64().unwrap_or(0),
        )
    };
    let (first, http) = member(&ready(&data)?);
    let taken = eventually(
        "the member's port taken while it is down",
        Duration::from_secs(30),
        || {
            let data = data.clone();
            async move {
                let (pid, _) = member(&ready(&data).ok()?);
                if alive(pid) {
                    let _ = std::process::Command::new("kill")
                        .args(["-9", &pid.to_string()])
                        .status();
                }
                std::net::TcpListener::bind(("127.0.0.1", http as u16)).ok()
            }
        },
    )
    .await?;
    eventually(
        "restarts three times refused",
        Duration::from_secs(60),
        || {
            let log = up.log_contents();
            async move { log.contains("trying again in 4s").then_some(()) }
        },
    )
    .await?;
    let log = up.log_contents();
    let waits: Vec<usize> = ["in 1s", "in 2s", "in 4s"]
        .iter()
        .filter_map(|wait| log.find(wait))
        .collect();
    assert!(
        waits.len() == 3 && waits.windows(2).all(|w| w[0] < w[1]),
        "each wait longer than the last: {log}"
    );
    drop(taken);
    eventually("the member back", Duration::from_secs(60), || {
        let data = data.clone();
        async move {
            let (pid, _) = member(&ready(&data).ok()?);
            (pid != first && alive(pid)).then_some(())
        }
    })
    .await?;
    let status = up.terminate(Duration::from_secs(60)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}
