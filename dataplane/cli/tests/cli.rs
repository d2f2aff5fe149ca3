//! The `send` and `query` commands, run as real processes against a real node.

mod common;

use std::process::Command;

use common::TestNode;
use serde_json::Value;

fn logcluster(args: &[String]) -> anyhow::Result<(bool, String, String)> {
    let output = Command::new(logcluster_testkit::binary_path("logcluster"))
        .args(args)
        .output()?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

fn send_args(node: &TestNode, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "send".into(),
        "--tls-ca".into(),
        node.ca.display().to_string(),
        "--tcp-port".into(),
        node.port("ingest").to_string(),
        "--udp-port".into(),
        node.port("udp").to_string(),
        "--query-url".into(),
        format!("http://{}", node.http_addr()),
        "--json-summary".into(),
        "--burst".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn summary(stdout: &str) -> Value {
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn send_ships_every_format_with_failover_and_query_prints_it() -> anyhow::Result<()> {
    let node = TestNode::start(|_, _| {}).await?;
    // Generated JSON over two connections; the first address refuses, so connections fail over.
    let (ok, out, err) = logcluster(&send_args(
        &node,
        &[
            "--count",
            "5000",
            "--batch",
            "500",
            "--connections",
            "2",
            "--tenant",
            "cli",
            "--address",
            "127.0.0.2,127.0.0.1",
        ],
    ))?;
    assert!(ok, "{err}");
    let s = summary(&out);
    assert_eq!(
        (s["acked"].as_u64(), s["failed"].as_u64()),
        (Some(5000), Some(0)),
        "{out}\n{err}"
    );
    assert_eq!(node.query_all("cli").await?.len(), 5000);
    for format in ["proto", "avro", "raw", "syslog"] {
        let tenant = format!("f-{format}");
        let (ok, out, err) = logcluster(&send_args(
            &node,
            &[
                "--count", "300", "--batch", "100", "--format", format, "--tenant", &tenant,
            ],
        ))?;
        assert!(ok, "{format}: {err}");
        assert_eq!(
            summary(&out)["acked"].as_u64(),
            Some(300),
            "{format}: {out}"
        );
        assert_eq!(node.query_all(&tenant).await?.len(), 300, "{format}");
    }
    // A file of NDJSON lines.
    let file = node.dir.path().join("app.ndjson");
    let lines: Vec<String> = (0..250)
        .map(|i| {
            format!("{{\"service\":\"file-app\",\"level\":\"WARN\",\"message\":\"line {i}\"}}")
        })
        .collect();
    std::fs::write(&file, lines.join("\n"))?;
    let (ok, out, err) = logcluster(&send_args(
        &node,
        &[
            "--file",
            &file.display().to_string(),
            "--tenant",
            "file",
            "--batch",
            "64",
        ],
    ))?;
    assert!(ok, "{err}");
    assert_eq!(summary(&out)["acked"].as_u64(), Some(250));
    // UDP: datagrams under 1400 bytes; loopback delivers them.
    let (ok, out, err) = logcluster(&send_args(
        &node,
        &[
            "--udp", "--count", "200", "--batch", "50", "--tenant", "ignored",
        ],
    ))?;
    assert!(ok, "{err}");
    assert_eq!(summary(&out)["sent"].as_u64(), Some(200));
    node.stored_when("default", "udp entries", |items| items.len() >= 190)
        .await?;
    // query: the command prints what the API returns.
    let (ok, out, err) = logcluster(&[
        "query".into(),
        "--url".into(),
        format!("http://{}", node.http_addr()),
        "--tenant".into(),
        "cli".into(),
        "--limit".into(),
        "5".into(),
        "--output".into(),
        "ndjson".into(),
        "level:ERROR".into(),
    ])?;
    assert!(ok, "{err}");
    let rows: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(rows.len(), 5, "{out}");
    assert!(rows.iter().all(|r| r["level"] == "ERROR"));
    let (ok, out, _) = logcluster(&[
        "query".into(),
        "--url".into(),
        format!("http://{}", node.http_addr()),
        "--tenant".into(),
        "file".into(),
        "--all".into(),
        "--limit".into(),
        "100".into(),
    ])?;
    assert!(ok);
    assert_eq!(
        out.lines().filter(|l| l.contains("file-app")).count(),
        250,
        "table output follows cursors"
    );
    let (ok, _, err) = logcluster(&[
        "query".into(),
        "--url".into(),
        format!("http://{}", node.http_addr()),
        "level:(".into(),
    ])?;
    assert!(!ok && err.contains("query"), "{err}");
    // Piped into a reader that stops early (`| head -1`): a quiet, successful end, not a
    // panic about a broken pipe.
    let mut child = std::process::Command::new(logcluster_testkit::binary_path("logcluster"))
        .args(["query", "--url", &format!("http://{}", node.http_addr())])
        .args([
            "--tenant", "cli", "--all", "--limit", "50", "--output", "ndjson",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("piped")),
        &mut first,
    )?;
    assert!(first.starts_with('{'), "{first}");
    let output = child.wait_with_output()?;
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !err.contains("panicked"),
        "{err}"
    );
    // Both streams into one reader that stops at once (`2>&1 | head -1`): with JSON output,
    // printed at the end, the first write to meet the closed pipe is a page's summary line
    // on stderr.
    let script = format!(
        "{} query --url http://{} --tenant cli --all --limit 50 --output json 2>&1 | head -1 >/dev/null; echo \"status=${{PIPESTATUS[0]}}\"",
        logcluster_testkit::binary_path("logcluster").display(),
        node.http_addr()
    );
    let output = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()?;
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(out.contains("status=0"), "{out}");
    Ok(())
}

/// What a query returns for an entry, without what the node assigns (id, arrival).
fn stored_form(mut item: Value) -> Value {
    if let Some(object) = item.as_object_mut() {
        for assigned in ["id", "received_at", "tenant"] {
            object.remove(assigned);
        }
    }
    item
}

#[tokio::test]
async fn send_converts_a_file_of_ndjson_to_protobuf_and_avro_records() -> anyhow::Result<()> {
    let node = TestNode::start(|_, _| {}).await?;
    // Lines of the shapes shippers write: aliases, nested objects, every value type, epoch
    // and RFC 3339 times; and two lines that are not records.
    let mut lines: Vec<String> = (0..120)
        .map(|i| {
            const LEVELS: [&str; 3] = ["INFO", "warn", "ERROR"];
            serde_json::json!({
                "timestamp": format!("2026-11-24T10:{:02}:{:02}.{:03}Z", i / 60, i % 60, i),
                "level": LEVELS[i % 3],
                "service": format!("svc-{}", i % 4),
                "host": "web-1",
                "trace_id": format!("{i:032x}"),
                "message": format!("request {i} took {}ms", i * 7),
                "http": {"status": 200 + i, "path": "/api/items"},
                "ratio": i as f64 / 8.0,
                "cached": i % 2 == 0,
            })
            .to_string()
        })
        .collect();
    lines.push(
        r#"{"ts": 1732442400123, "severity": 3, "msg": "epoch and aliases", "app": "legacy"}"#
            .into(),
    );
    lines.push("not json at all".into());
    lines.push(r#"["an", "array"]"#.into());
    let file = node.dir.path().join("mixed.ndjson");
    std::fs::write(&file, lines.join("\n"))?;
    let file = file.display().to_string();
    let mut stored = Vec::new();
    for format in ["json", "proto", "avro"] {
        let tenant = format!("file-{format}");
        let (ok, out, err) = logcluster(&send_args(
            &node,
            &[
                "--file", &file, "--format", format, "--tenant", &tenant, "--batch", "50",
            ],
        ))?;
        assert!(ok, "{format}: {err}");
        let s = summary(&out);
        assert_eq!(s["acked"].as_u64(), Some(121), "{format}: {out}\n{err}");
        if format != "json" {
            // Lines that are no record are counted and named, not sent; the warnings are
            // plain text (stderr is a pipe here, as in a pod).
            assert!(!err.contains('\x1b'), "colour codes in a pipe: {err:?}");
            assert_eq!(s["invalid"].as_u64(), Some(2), "{format}: {out}");
            assert!(
                err.contains("line=122") && err.contains("line=123"),
                "{err}"
            );
        }
        let items = node.query_all(&tenant).await?;
        stored.push(items.into_iter().map(stored_form).collect::<Vec<_>>());
    }
    assert_eq!(stored[0].len(), 121);
    assert_eq!(
        stored[1], stored[0],
        "protobuf records differ from the JSON lines"
    );
    assert_eq!(
        stored[2], stored[0],
        "Avro records differ from the JSON lines"
    );
    Ok(())
}

#[tokio::test]
async fn send_checks_the_nodes_schemas_before_sending() -> anyhow::Result<()> {
    let node = TestNode::start(|raw, dir| {
        let _ = std::fs::create_dir_all(dir.join("schemas"));
        let _ = std::fs::write(
            dir.join("schemas/checkout.yaml"),
            "apiVersion: logcluster.io/v1alpha1\nkind: LogSchema\nmetadata: {name: checkout-needs-order}\nspec:\n  selector: {services: [checkout]}\n  format: json\n  schema: {type: object, required: [order_id]}\n",
        );
        raw.ingest.schema_dir = Some(dir.join("schemas"));
    })
    .await?;
    let (ok, out, err) = logcluster(&send_args(
        &node,
        &["--count", "100", "--service", "checkout", "--tenant", "sc"],
    ))?;
    assert!(ok, "{err}");
    let s = summary(&out);
    assert_eq!(
        (s["invalid"].as_u64(), s["sent"].as_u64()),
        (Some(100), Some(0)),
        "{out}"
    );
    let (ok, out, err) = logcluster(&send_args(
        &node,
        &["--count", "100", "--service", "search", "--tenant", "sc"],
    ))?;
    assert!(ok, "{err}");
    assert_eq!(summary(&out)["acked"].as_u64(), Some(100));
    Ok(())
}

/// The node's allocator asks for no transparent huge pages, so its memory is faulted in
/// 4 KiB at a time and counted as used.
#[tokio::test]
async fn a_node_holds_no_transparent_huge_pages() -> anyhow::Result<()> {
    let node = TestNode::start(|_, _| {}).await?;
    let pid = node.process.as_ref().expect("started").pid();
    // The allocator is built to use no huge pages, whatever the host's mode (its options as
    // it prints them on exit when asked to).
    let options = Command::new(logcluster_testkit::binary_path("logcluster"))
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()?;
    let printed = String::from_utf8_lossy(&options.stderr);
    assert!(
        printed.contains("opt.thp: \"never\""),
        "the allocator may use huge pages: {}",
        printed
            .lines()
            .find(|l| l.contains("opt.thp"))
            .unwrap_or("no opt.thp printed")
    );
    // Where huge pages are given on request (the kernel's `madvise` mode, as on these
    // machines) or by default (`always`), the node holds none.
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.contains("[madvise]") || thp.contains("[always]") {
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
        let huge = rollup
            .lines()
            .find(|l| l.starts_with("AnonHugePages:"))
            .unwrap_or_default();
        assert!(
            huge.split_whitespace().nth(1) == Some("0"),
            "the node holds transparent huge pages: {huge}"
        );
    } else {
        eprintln!(
            "transparent huge pages are {thp:?}, never given: the huge page check is skipped"
        );
    }
    Ok(())
}

/// A port nothing listens on (bound, then closed).
fn closed_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether `child` succeeded, and its stdout and stderr. The deadline only keeps a hang
/// from hanging the suite.
async fn finished(child: tokio::process::Child) -> anyhow::Result<(bool, String, String)> {
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        child.wait_with_output(),
    )
    .await??;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// `logcluster send` to `address` (where no ingestor answers), as a child process.
fn unreachable_send(
    ca: &std::path::Path,
    address: &str,
    extra: &[&str],
) -> anyhow::Result<tokio::process::Child> {
    let mut args = vec![
        "send".to_string(),
        "--tls-ca".into(),
        ca.display().to_string(),
        "--address".into(),
        address.to_string(),
        "--no-schema-check".into(),
        "--json-summary".into(),
        "--burst".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Ok(
        tokio::process::Command::new(logcluster_testkit::binary_path("logcluster"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?,
    )
}

#[tokio::test]
async fn send_takes_host_and_port_and_gives_up_on_an_unreachable_ingestor() -> anyhow::Result<()> {
    let node = TestNode::start(|_, _| {}).await?;
    // `--address host:port`: the port overrides --tcp-port (here a wrong one).
    let address = format!("127.0.0.1:{}", node.port("ingest"));
    let mut args = send_args(
        &node,
        &["--count", "600", "--batch", "100", "--tenant", "hp"],
    );
    let tcp_port = args.iter().position(|a| a == "--tcp-port").expect("set") + 1;
    args[tcp_port] = "1".into();
    args.extend(["--address".into(), address]);
    let (ok, out, err) = logcluster(&args)?;
    assert!(ok, "{err}");
    assert_eq!(summary(&out)["acked"].as_u64(), Some(600), "{out}\n{err}");
    assert_eq!(node.query_all("hp").await?.len(), 600);
    // Nothing listens: every batch uses up its tries and fails, and the command says so
    // (before, it waited for a connection forever). The deadline only keeps a hang from
    // hanging the suite.
    let closed = format!("127.0.0.1:{}", closed_port()?);
    let child = unreachable_send(&node.ca, &closed, &["--count", "500", "--batch", "100"])?;
    let (success, out, err) = finished(child).await?;
    assert!(!success, "{out}\n{err}");
    assert!(err.contains("500 entries failed after retries"), "{err}");
    let s = summary(&out);
    assert_eq!(
        (s["acked"].as_u64(), s["failed"].as_u64()),
        (Some(0), Some(500)),
        "{out}"
    );
    Ok(())
}

#[tokio::test]
async fn send_stops_on_sigterm_even_when_nothing_drains_its_queue() -> anyhow::Result<()> {
    // Only its CA is used: the sender is pointed elsewhere.
    let node = TestNode::start(|_, _| {}).await?;
    // Endless, and its queue fills at once: the producer waits on it when the signal comes.
    let closed = format!("127.0.0.1:{}", closed_port()?);
    let child = unreachable_send(&node.ca, &closed, &["--count", "0", "--batch", "10"])?;
    let pid = child.id().expect("running");
    let queued = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    tokio::time::sleep_until(queued).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    assert!(status.success());
    let (success, out, err) = finished(child).await?;
    assert!(err.contains("signal received"), "{err}");
    // What was queued and never acknowledged is reported failed.
    let s = summary(&out);
    assert_eq!(s["acked"].as_u64(), Some(0), "{out}\n{err}");
    assert!(s["failed"].as_u64() > Some(0), "{out}\n{err}");
    assert_eq!(s["failed"], s["sent"], "{out}");
    assert!(!success);
    Ok(())
}

#[tokio::test]
async fn send_gives_up_on_a_peer_that_accepts_but_never_answers_the_handshake() -> anyhow::Result<()>
{
    let node = TestNode::start(|_, _| {}).await?;
    // Accepts TCP connections and holds them, silent.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = silent.local_addr()?.to_string();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let child = unreachable_send(
        &node.ca,
        &address,
        &[
            "--count",
            "200",
            "--batch",
            "100",
            "--connect-timeout",
            "1s",
        ],
    )?;
    let (success, out, err) = finished(child).await?;
    held.abort();
    assert!(!success, "{out}\n{err}");
    assert!(err.contains("--connect-timeout"), "{err}");
    let s = summary(&out);
    assert_eq!(
        (s["acked"].as_u64(), s["failed"].as_u64()),
        (Some(0), Some(200)),
        "{out}"
    );
    Ok(())
}
