//! `logcluster cluster status`: the cluster as a query or ingest node sees it — members,
//! reachability, readiness, ring ownership, stored bytes, pending hints, repair progress and
//! drain state — as a table or JSON.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// `logcluster cluster …`
#[derive(clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// Members, readiness, ring ownership, pending hints and repair progress.
    Status {
        /// HTTP address of any node of the cluster (query or ingestor).
        #[arg(long, default_value = "http://127.0.0.1:3100")]
        url: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
}

fn bytes(value: u64) -> String {
    match value {
        v if v >= 1 << 30 => format!("{:.1} GiB", v as f64 / (1u64 << 30) as f64),
        v if v >= 1 << 20 => format!("{:.1} MiB", v as f64 / (1u64 << 20) as f64),
        v if v >= 1 << 10 => format!("{:.1} KiB", v as f64 / 1024.0),
        v => format!("{v} B"),
    }
}

/// Renders the `/api/v1/cluster` answer as a table.
pub fn render(status: &Value) -> String {
    let mut out = format!(
        "replication factor {}, write quorum {}, read quorum {}\n\n",
        status["replication_factor"], status["write_quorum"], status["read_quorum"]
    );
    let header = [
        "MEMBER",
        "ADDRESS",
        "STATE",
        "OWNS",
        "STORED",
        "HINTS",
        "REPAIRED",
        "LAST PASS",
        "DRAIN",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for member in status["members"].as_array().into_iter().flatten() {
        let own = &member["status"];
        let state = match (
            member["reachable"].as_bool().unwrap_or(false),
            member["ready"].as_bool().unwrap_or(false),
            member["leaving"].as_bool().unwrap_or(false),
        ) {
            (false, _, _) => "unreachable",
            (true, ..) if own["needs_restart"].is_string() => "needs restart",
            (true, _, true) => "leaving",
            (true, false, _) => "not ready",
            (true, true, false) => "up",
        };
        let hints: u64 = own["hints_pending_bytes"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        let drain = &own["drain"];
        let drain = if drain["drained"] == true {
            "drained".to_string()
        } else if drain["leaving"] == true {
            format!("{} streams left", drain["streams_to_hand_over"])
        } else {
            "-".to_string()
        };
        rows.push(vec![
            member["id"].as_str().unwrap_or("?").to_string(),
            member["addr"].as_str().unwrap_or("?").to_string(),
            state.to_string(),
            format!(
                "{:.1}%",
                member["ownership"].as_f64().unwrap_or(0.0) * 100.0
            ),
            own["storage"]["stored_bytes"]
                .as_u64()
                .map(bytes)
                .unwrap_or_else(|| "-".into()),
            bytes(hints),
            own["repair"]["anti_entropy_entries_repaired"]
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            own["repair"]["last_pass_ms"]
                .as_i64()
                .map(|v| format!("{v} ms"))
                .unwrap_or_else(|| "-".into()),
            drain,
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    match args.command {
        ClusterCommand::Status { url, json } => {
            let url = format!("{}/api/v1/cluster", url.trim_end_matches('/'));
            let response = logcluster_common::http_client::request(
                "GET",
                &url,
                &[],
                b"",
                Duration::from_secs(30),
            )
            .await
            .with_context(|| format!("cannot reach {url}"))?;
            if response.status != 200 {
                bail!("{url} answered {}: {}", response.status, response.body);
            }
            let status: Value = serde_json::from_str(&response.body)
                .with_context(|| format!("{url} did not answer JSON"))?;
            if json {
                out!("{}", serde_json::to_string_pretty(&status)?)?;
            } else {
                out!("{}", render(&status).trim_end())?;
            }
            Ok(())
        }
    }
}
