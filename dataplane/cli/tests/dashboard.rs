//! The built-in dashboard in a real headless Chromium (Debian's package; `./scripts/test.sh`
//! installs it): the page loads from a running node, a search deep link returns rows, the
//! histogram and the ingest chart render, and the overview lists the node. The test reads the
//! DOM Chromium produced and saves screenshots next to the test binaries.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use common::TestNode;
use serde_json::json;

fn chromium() -> PathBuf {
    std::env::var_os("LOGCLUSTER_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Runs headless Chromium on `url` with `extra` arguments; returns stdout.
async fn run_chromium(url: &str, extra: &[String]) -> anyhow::Result<String> {
    let binary = chromium();
    anyhow::ensure!(
        binary.exists(),
        "{} not found: ./scripts/test.sh installs Debian's chromium (or set LOGCLUSTER_CHROMIUM)",
        binary.display()
    );
    let profile = tempfile::tempdir()?;
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=10000",
                "--window-size=1400,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(url)
            .output(),
    )
    .await
    .context("chromium timed out")??;
    anyhow::ensure!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn attribute<'a>(dom: &'a str, name: &str) -> Option<&'a str> {
    let at = dom.find(&format!("{name}=\""))? + name.len() + 2;
    dom[at..].split('"').next()
}

fn screenshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

#[tokio::test]
async fn the_dashboard_searches_and_draws_in_a_real_browser() -> anyhow::Result<()> {
    let node = TestNode::start(|_, _| {}).await?;
    let now = logcluster_proto::time::now_nanos();
    let body: String = (0..300)
        .map(|i| {
            let level = if i % 10 == 0 { "ERROR" } else { "INFO" };
            json!({"timestamp": now - (i as i64) * 5_000_000_000, "service": format!("svc-{}", i % 3),
                   "level": level, "message": format!("event {i}"), "latency_ms": i})
            .to_string()
                + "\n"
        })
        .collect();
    let (status, answer) = common::http(
        &node.http_addr(),
        "POST",
        "/api/v1/ingest",
        &[],
        body.as_bytes(),
    )
    .await?;
    assert_eq!(
        (status, answer["accepted"].as_u64()),
        (200, Some(300)),
        "{answer}"
    );

    let url = format!("http://{}/?q=level:ERROR&range=1h", node.http_addr());
    let dom = run_chromium(&url, &["--dump-dom".to_string()]).await?;
    assert_eq!(
        attribute(&dom, "data-search-done"),
        Some("1"),
        "the search never finished"
    );
    let rows = dom.matches("class=\"result-row\"").count();
    assert_eq!(rows, 30, "every ERROR entry of the last hour is a row");
    for i in (0..300).step_by(10) {
        assert!(
            dom.contains(&format!(">event {i}<")),
            "event {i} missing from the table"
        );
    }
    let bars: usize = attribute(&dom, "data-bars")
        .context("histogram never drawn")?
        .parse()?;
    assert!(bars >= 30, "the histogram covers the hour ({bars} bars)");
    assert!(
        attribute(&dom, "data-points").is_some(),
        "the ingest chart never drawn"
    );
    assert!(
        !dom.contains("id=\"error\" class=\"visible\""),
        "the page shows an error"
    );

    let overview = run_chromium(
        &format!("http://{}/", node.http_addr()),
        &["--dump-dom".to_string()],
    )
    .await?;
    assert!(
        overview.contains("test-node"),
        "the overview lists this node"
    );

    for (name, page) in [
        ("dashboard-search.png", url.as_str()),
        (
            "dashboard-overview.png",
            &format!("http://{}/", node.http_addr()),
        ),
    ] {
        let path = screenshot_path(name);
        let _ = std::fs::remove_file(&path);
        run_chromium(page, &[format!("--screenshot={}", path.display())]).await?;
        let png =
            std::fs::read(&path).with_context(|| format!("no screenshot at {}", path.display()))?;
        assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
        assert!(
            png.len() > 20_000,
            "{name} looks empty ({} bytes)",
            png.len()
        );
        eprintln!("screenshot: {}", path.display());
    }
    Ok(())
}

#[tokio::test]
async fn shippers_probing_slash_get_elasticsearch_and_browsers_get_the_page() -> anyhow::Result<()>
{
    let node = TestNode::start(|_, _| {}).await?;
    let es = logcluster_common::http_client::request(
        "GET",
        &format!("http://{}/", node.http_addr()),
        &[],
        b"",
        Duration::from_secs(10),
    )
    .await?;
    assert_eq!(es.header("x-elastic-product"), Some("Elasticsearch"));
    let info: serde_json::Value = serde_json::from_str(&es.body)?;
    assert_eq!(info["version"]["number"], "8.17.0");
    let page = logcluster_common::http_client::request(
        "GET",
        &format!("http://{}/", node.http_addr()),
        &[("Accept", "text/html,application/xhtml+xml")],
        b"",
        Duration::from_secs(10),
    )
    .await?;
    assert!(
        page.header("content-type")
            .is_some_and(|c| c.starts_with("text/html"))
    );
    assert!(page.body.contains("<canvas id=\"histogram\""));
    // The page works offline: it references nothing outside the node.
    for needle in ["https://", "http://", "//cdn", "@import"] {
        assert!(!page.body.contains(needle), "the page references {needle}");
    }
    Ok(())
}
