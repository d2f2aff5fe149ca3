//! Real third-party syslog senders: util-linux `logger` straight to the node, and rsyslog
//! forwarding to it (both from Debian packages, installed by scripts/test.sh).

mod common;

use std::os::unix::ffi::OsStrExt;
use std::process::Command;
use std::time::Duration;

use common::TestNode;
use serde_json::Value;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

async fn wait_for_message(node: &TestNode, needle: &str) -> anyhow::Result<Value> {
    common::eventually(
        &format!("an entry containing {needle:?}"),
        Duration::from_secs(30),
        || async {
            let page = node
                .query(serde_json::json!({"contains": needle, "limit": 10}))
                .await
                .ok()?;
            page["items"]
                .as_array()
                .and_then(|items| items.first())
                .cloned()
        },
    )
    .await
}

#[tokio::test]
async fn util_linux_logger_over_tcp_and_udp_is_queryable() -> anyhow::Result<()> {
    assert!(
        have("logger"),
        "util-linux logger is required (scripts/test.sh installs bsdutils)"
    );
    let node = TestNode::start(|_, _| {}).await?;
    let port = node.port("syslog_tcp").to_string();
    let status = Command::new("logger")
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &port,
            "--tcp",
            "--rfc5424",
            "-t",
            "billing",
            "-p",
            "local0.err",
        ])
        .args([
            "--sd-id",
            "app@32473",
            "--sd-param",
            "trace_id=\"feedbeef\"",
        ])
        .arg("invoice 42 failed: upstream timeout")
        .status()?;
    assert!(status.success());
    let item = wait_for_message(&node, "invoice 42 failed").await?;
    assert_eq!(item["service"], "billing");
    assert_eq!(item["level"], "ERROR");
    assert_eq!(item["trace_id"], "feedbeef");
    let udp_port = node.port("syslog_udp").to_string();
    let status = Command::new("logger")
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &udp_port,
            "--udp",
            "--rfc3164",
            "-t",
            "cron",
            "-p",
            "user.warning",
        ])
        .arg("disk almost full on /var")
        .status()?;
    assert!(status.success());
    let item = wait_for_message(&node, "disk almost full").await?;
    assert_eq!(item["service"], "cron");
    assert_eq!(item["level"], "WARN");
    // A legacy program writing Latin-1: syslog cannot hear a refusal, so the byte that is not
    // UTF-8 becomes U+FFFD and the message is kept (and counted).
    let status = Command::new("logger")
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &port,
            "--tcp",
            "--rfc3164",
            "-t",
            "legacy",
        ])
        .arg(std::ffi::OsStr::from_bytes(b"caf\xe9 au lait served"))
        .status()?;
    assert!(status.success());
    let item = wait_for_message(&node, "au lait served").await?;
    assert_eq!(item["message"], "caf\u{fffd} au lait served");
    assert_eq!(item["service"], "legacy");
    let metrics = node.metrics().await?;
    assert_eq!(
        common::metric_sum(
            &metrics,
            "logcluster_ingest_utf8_repaired_total",
            &["format=\"syslog\""]
        ),
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn rsyslog_forwards_to_the_syslog_port() -> anyhow::Result<()> {
    assert!(
        have("rsyslogd"),
        "rsyslog is required (scripts/test.sh installs it)"
    );
    let node = TestNode::start(|_, _| {}).await?;
    let work = tempfile::tempdir()?;
    // rsyslog listens on its own TCP port and forwards everything to the node, octet-counted,
    // in RFC 5424 (the way production relays are configured). It picks the port itself and
    // writes it to a file: a port picked here and freed could be taken by another process.
    let port_file = work.path().join("relay.port");
    let conf = work.path().join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{dir}\")\n\
             module(load=\"imtcp\")\n\
             input(type=\"imtcp\" port=\"0\" address=\"127.0.0.1\" \
             listenPortFileName=\"{port_file}\")\n\
             action(type=\"omfwd\" target=\"127.0.0.1\" port=\"{port}\" protocol=\"tcp\" \
             TCP_Framing=\"octet-counted\" template=\"RSYSLOG_SyslogProtocol23Format\")\n",
            dir = work.path().display(),
            port_file = port_file.display(),
            port = node.port("syslog_tcp"),
        ),
    )?;
    let mut rsyslog = Command::new("rsyslogd")
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(work.path().join("rsyslog.pid"))
        .spawn()?;
    let result = async {
        let relay_port: u16 = common::eventually(
            "rsyslog to listen and say on which port",
            Duration::from_secs(20),
            || async {
                let port = std::fs::read_to_string(&port_file)
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
                Some(port)
            },
        )
        .await?;
        let status = Command::new("logger")
            .args([
                "--server",
                "127.0.0.1",
                "--port",
                &relay_port.to_string(),
                "--tcp",
                "-t",
                "relayed-app",
                "-p",
                "daemon.info",
            ])
            .arg("hello through rsyslog")
            .status()?;
        anyhow::ensure!(status.success());
        let item = wait_for_message(&node, "hello through rsyslog").await?;
        anyhow::ensure!(item["service"] == "relayed-app", "service: {item}");
        anyhow::ensure!(item["level"] == "INFO", "level: {item}");
        Ok(())
    }
    .await;
    let _ = rsyslog.kill();
    let _ = rsyslog.wait();
    result
}
