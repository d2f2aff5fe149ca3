//! `logcluster query`, `logcluster tail` and `logcluster alerts`: search, follow and watch
//! from the terminal (table, JSON or NDJSON output).

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Output formats.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
    Ndjson,
}

/// Options of `logcluster query`.
#[derive(clap::Args, Clone, Debug)]
pub struct QueryArgs {
    /// Query string, e.g. `service:payment AND level:ERROR AND "timeout"`.
    pub query: Option<String>,
    /// Query API of a node.
    #[arg(long, default_value = "http://127.0.0.1:3100")]
    pub url: String,
    #[arg(long)]
    pub tenant: Option<String>,
    /// Bearer token (when the node maps tokens to tenants).
    #[arg(long)]
    pub token: Option<String>,
    #[arg(long)]
    pub service: Option<String>,
    /// One level or several separated by commas.
    #[arg(long)]
    pub level: Option<String>,
    /// Start: RFC 3339, or a duration ago such as 15m, 2h, 7d.
    #[arg(long)]
    pub from: Option<String>,
    /// End (exclusive): RFC 3339, or a duration ago.
    #[arg(long)]
    pub to: Option<String>,
    /// Case-insensitive substring of the message.
    #[arg(long)]
    pub contains: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
    /// Follow cursors until every match is printed.
    #[arg(long)]
    pub all: bool,
}

/// RFC 3339 as is; `15m` / `2h` / `7d` as that long before now.
pub fn resolve_time(text: &str) -> anyhow::Result<String> {
    if logcluster_proto::time::parse_rfc3339(text).is_some() {
        return Ok(text.to_string());
    }
    let ago = logcluster_config::parse_duration(text)
        .with_context(|| format!("{text:?} is neither RFC 3339 nor a duration like 15m"))?;
    Ok(logcluster_proto::time::format_rfc3339(
        logcluster_proto::time::now_nanos() - ago.as_nanos() as i64,
    ))
}

/// One table row, cut to `width` characters.
pub fn table_row(item: &Value, width: usize) -> String {
    let text = |k: &str| item[k].as_str().unwrap_or("").to_string();
    let row = format!(
        "{:<24} {:<5} {:<16} {:<20} {}",
        text("timestamp"),
        text("level"),
        text("service"),
        text("host"),
        text("message").replace('\n', " ")
    );
    row.chars().take(width).collect()
}

pub async fn run(args: QueryArgs) -> anyhow::Result<()> {
    let url = format!("{}/v1/query", args.url.trim_end_matches('/'));
    let mut body = json!({
        "tenant_id": args.tenant, "service": args.service, "level": args.level,
        "contains": args.contains, "query": args.query, "limit": args.limit,
        "from_ts": args.from.as_deref().map(resolve_time).transpose()?,
        "to_ts": args.to.as_deref().map(resolve_time).transpose()?,
    });
    let width = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(160);
    let mut all_items = Vec::new();
    let mut printed = 0usize;
    if args.output == Output::Table {
        out!(
            "{:<24} {:<5} {:<16} {:<20} MESSAGE",
            "TIMESTAMP",
            "LEVEL",
            "SERVICE",
            "HOST"
        )?;
    }
    loop {
        let response = logcluster_common::http_client::request(
            "POST",
            &url,
            &auth_headers(&args.tenant, &args.token)
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
            body.to_string().as_bytes(),
            Duration::from_secs(120),
        )
        .await?;
        let page: Value = serde_json::from_str(&response.body).with_context(|| {
            format!(
                "the node answered {} with a body that is not JSON",
                response.status
            )
        })?;
        if response.status != 200 {
            bail!(
                "query failed ({}): {}",
                response.status,
                page["error"].as_str().unwrap_or(&response.body)
            );
        }
        let items = page["items"].as_array().cloned().unwrap_or_default();
        printed += items.len();
        match args.output {
            Output::Table => {
                for item in &items {
                    out!("{}", table_row(item, width))?;
                }
            }
            Output::Ndjson => {
                for item in &items {
                    out!("{item}")?;
                }
            }
            Output::Json => all_items.extend(items),
        }
        note!("stats: {}", page["stats"]);
        let next = page["next_cursor"].clone();
        if !args.all || next.is_null() {
            break;
        }
        body["cursor"] = next;
    }
    if args.output == Output::Json {
        out!("{}", serde_json::to_string_pretty(&all_items)?)?;
    }
    note!("{printed} entries");
    Ok(())
}

/// Tenant and bearer-token headers.
fn auth_headers(tenant: &Option<String>, token: &Option<String>) -> Vec<(&'static str, String)> {
    let mut headers = Vec::new();
    if let Some(tenant) = tenant {
        headers.push(("X-Logcluster-Tenant", tenant.clone()));
    }
    if let Some(token) = token {
        headers.push(("Authorization", format!("Bearer {token}")));
    }
    headers
}

/// Options of `logcluster tail`.
#[derive(clap::Args, Clone, Debug)]
pub struct TailArgs {
    /// Query string; only matching entries are shown.
    pub query: Option<String>,
    #[arg(long, default_value = "http://127.0.0.1:3100")]
    pub url: String,
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long)]
    pub token: Option<String>,
    #[arg(long)]
    pub service: Option<String>,
    #[arg(long)]
    pub level: Option<String>,
    /// `table` or `ndjson` (one entry per line as it arrives).
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Follows `GET /api/v1/tail` (Server-Sent Events) until interrupted.
pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, base) = logcluster_common::http_client::split_url(&args.url)?;
    let mut params = Vec::new();
    for (key, value) in [
        ("query", &args.query),
        ("service", &args.service),
        ("level", &args.level),
    ] {
        if let Some(value) = value {
            params.push(format!("{key}={}", percent_encode(value)));
        }
    }
    let path = format!(
        "{}/api/v1/tail?{}",
        base.trim_end_matches('/'),
        params.join("&")
    );
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
    for (key, value) in auth_headers(&args.tenant, &args.token) {
        head.push_str(&format!("{key}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    let width = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(160);
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut checked_status = false;
    if args.output == Output::Table {
        out!(
            "{:<24} {:<5} {:<16} {:<20} MESSAGE",
            "TIMESTAMP",
            "LEVEL",
            "SERVICE",
            "HOST"
        )?;
    }
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the node closed the tail");
        }
        buf.extend_from_slice(&chunk[..n]);
        if !checked_status {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            if !head.starts_with("HTTP/1.1 200") {
                let mut rest = buf[end + 4..].to_vec();
                let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest))
                    .await;
                bail!(
                    "tail refused: {} {}",
                    head.lines().next().unwrap_or(""),
                    String::from_utf8_lossy(&rest).trim()
                );
            }
            buf.drain(..end + 4);
            checked_status = true;
        }
        while let Some(newline) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=newline).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end().strip_prefix("data: ") else {
                continue;
            };
            let Ok(item) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if let Some(error) = item.get("error") {
                bail!("tail stopped: {error}");
            }
            match args.output {
                Output::Table => out!("{}", table_row(&item, width))?,
                _ => out!("{item}")?,
            }
        }
    }
}

/// Options of `logcluster alerts`.
#[derive(clap::Args, Clone, Debug)]
pub struct AlertsArgs {
    #[arg(long, default_value = "http://127.0.0.1:3100")]
    pub url: String,
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

/// Prints the alert rules and their states.
pub async fn alerts(args: AlertsArgs) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/alerts", args.url.trim_end_matches('/'));
    let response =
        logcluster_common::http_client::request("GET", &url, &[], b"", Duration::from_secs(30))
            .await?;
    let body: Value = serde_json::from_str(&response.body).with_context(|| {
        format!(
            "the node answered {} with a body that is not JSON",
            response.status
        )
    })?;
    if response.status != 200 {
        bail!(
            "alerts failed ({}): {}",
            response.status,
            body["error"].as_str().unwrap_or(&response.body)
        );
    }
    if args.output != Output::Table {
        out!("{}", serde_json::to_string_pretty(&body)?)?;
        return Ok(());
    }
    out!(
        "{:<28} {:<9} {:>12} {:<16} {:<24} QUERY",
        "NAME",
        "STATE",
        "VALUE",
        "CONDITION",
        "ACTIVE SINCE"
    )?;
    for rule in body["rules"].as_array().into_iter().flatten() {
        let text = |k: &str| rule[k].as_str().unwrap_or("-").to_string();
        let value = rule["value"]
            .as_f64()
            .map_or("-".to_string(), |v| format!("{v:.3}"));
        let condition = format!(
            "{} {} for {}s",
            text("op"),
            rule["threshold"],
            rule["for_seconds"]
        );
        out!(
            "{:<28} {:<9} {:>12} {:<16} {:<24} {}",
            text("name"),
            text("state"),
            value,
            condition,
            text("active_since"),
            text("query")
        )?;
    }
    for error in body["errors"].as_array().into_iter().flatten() {
        note!("rule error: {}", error.as_str().unwrap_or(""));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_resolve_and_rfc3339_passes_through() {
        assert_eq!(
            resolve_time("2024-05-01T14:00:00Z").expect("rfc3339"),
            "2024-05-01T14:00:00Z"
        );
        let ago = resolve_time("15m").expect("relative");
        let nanos = logcluster_proto::time::parse_rfc3339(&ago).expect("formatted");
        let delta = logcluster_proto::time::now_nanos() - nanos;
        assert!((14 * 60 * 1_000_000_000..16 * 60 * 1_000_000_000).contains(&delta));
        assert!(resolve_time("yesterday").is_err());
    }

    #[test]
    fn table_rows_are_cut_to_the_width() {
        let item = json!({"timestamp": "2024-05-01T14:00:00Z", "level": "ERROR", "service": "payment", "host": "h", "message": "x".repeat(500)});
        let row = table_row(&item, 120);
        assert_eq!(row.chars().count(), 120);
        assert!(row.starts_with("2024-05-01T14:00:00Z"));
    }
}
