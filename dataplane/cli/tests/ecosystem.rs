//! The ecosystem's ingestion APIs, driven by real clients nobody here wrote: elasticsearch-py's
//! `helpers.bulk`, the OpenTelemetry Python SDK's OTLP/HTTP exporter behind Python's logging,
//! and python-logging-loki. What each client reports it sent is the ground truth the stored
//! entries are compared with. The malformed-input tests speak the wire formats directly.
//!
//! The Python clients come from PyPI; `./scripts/test.sh` installs them into `target/pyenv`
//! (or set LOGCLUSTER_PYTHON to an interpreter that has them).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use common::TestNode;
use logcluster_common::http_client::Response;
use logcluster_ingest::compat::loki::wire as loki;
use prost::Message;
use serde_json::Value;

fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("LOGCLUSTER_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Runs a client script from tests/clients and parses the JSON it prints.
async fn run_client(script: &str, args: &[&str]) -> anyhow::Result<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let python = python();
    let output = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new(&python)
            .arg(&path)
            .args(args)
            .output(),
    )
    .await
    .context("client script timed out")?
    .with_context(|| format!("running {}", python.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("ModuleNotFoundError") {
        bail!(
            "{script} needs the Python clients: run ./scripts/test.sh (it installs them into target/pyenv) or set LOGCLUSTER_PYTHON\n{stderr}"
        );
    }
    ensure!(
        output.status.success(),
        "{script} failed ({}):\n{stderr}",
        output.status
    );
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("{script} printed no JSON; stderr:\n{stderr}"))
}

async fn request(
    node: &TestNode,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Response> {
    Ok(logcluster_common::http_client::request(
        method,
        &format!("http://{}{path}", node.http_addr()),
        headers,
        body,
        Duration::from_secs(60),
    )
    .await?)
}

fn by_message(items: &[Value]) -> HashMap<String, Value> {
    items
        .iter()
        .map(|i| (i["message"].as_str().unwrap_or("").to_string(), i.clone()))
        .collect()
}

#[tokio::test]
async fn elasticsearch_py_bulk_documents_are_stored_with_their_fields() -> anyhow::Result<()> {
    let node = TestNode::start(|_, _| {}).await?;
    let url = format!("http://{}", node.http_addr());
    let report = run_client("es_bulk.py", &[&url, "es"]).await?;
    assert_eq!(report["version"], "8.17.0");
    assert_eq!(
        (report["ok"].as_u64(), report["errors"].as_u64()),
        (Some(500), Some(0))
    );
    assert_eq!(
        (report["first_ok"].as_u64(), report["first_errors"].as_u64()),
        (Some(100), Some(0))
    );
    // The same create actions again: every one a conflict, nothing stored twice.
    assert_eq!(report["second_ok"], 0);
    assert_eq!(report["second_statuses"], serde_json::json!([409]));

    let items = node.query_all("es").await?;
    assert_eq!(items.len(), 600, "500 documents and 100 created once");
    let stored = by_message(&items);
    let sent = report["sent"].as_array().context("sent")?;
    for (i, doc) in sent.iter().enumerate() {
        let message = doc["message"].as_str().context("message")?;
        let entry = stored
            .get(message)
            .with_context(|| format!("{message} missing"))?;
        let service = if i % 2 == 0 { "payments" } else { "shop" };
        assert_eq!(entry["service"], service, "{entry}");
        let level = ["INFO", "WARN", "ERROR"][i % 3];
        assert_eq!(entry["level"], level, "{entry}");
        assert_eq!(entry["host"], doc["host"]["name"], "{entry}");
        assert_eq!(entry["trace_id"], doc["trace.id"], "{entry}");
        assert_eq!(
            entry["fields"]["duration_ms"], doc["duration_ms"],
            "{entry}"
        );
        assert_eq!(entry["fields"]["_index"], "shop", "{entry}");
        let nanos = |v: &Value| v.as_str().and_then(logcluster_proto::time::parse_rfc3339);
        assert_eq!(
            nanos(&entry["timestamp"]),
            nanos(&doc["@timestamp"]),
            "{entry}"
        );
        assert!(nanos(&entry["timestamp"]).is_some(), "{entry}");
    }
    for i in 0..100 {
        let entry = stored
            .get(&format!("audit {i}"))
            .with_context(|| format!("audit {i} missing"))?;
        assert_eq!(entry["service"], "audit");
        assert_eq!(entry["fields"]["_id"], format!("a-{i}"));
    }
    Ok(())
}

#[tokio::test]
async fn opentelemetry_sdk_logs_arrive_with_service_severity_and_trace_ids() -> anyhow::Result<()> {
    let node = TestNode::start(|_, _| {}).await?;
    let url = format!("http://{}", node.http_addr());
    let report = run_client("otel_logging.py", &[&url, "otel"]).await?;
    assert_eq!(
        report["flushed"], true,
        "the exporter could not deliver everything"
    );
    let sent = report["sent"].as_array().context("sent")?;
    let items = node.query_all("otel").await?;
    assert_eq!(items.len(), sent.len());
    let stored = by_message(&items);
    for record in sent {
        let message = record["message"].as_str().context("message")?;
        let entry = stored
            .get(message)
            .with_context(|| format!("{message} missing"))?;
        assert_eq!(entry["service"], "otel-checkout", "{entry}");
        assert_eq!(entry["host"], "otel-host-1", "{entry}");
        let level = match record["level"].as_str() {
            Some("WARNING") => "WARN",
            Some(other) => other,
            None => bail!("no level in {record}"),
        };
        assert_eq!(entry["level"], level, "{entry}");
        assert_eq!(entry["trace_id"], record["trace_id"], "{entry}");
        assert_eq!(entry["fields"]["span_id"], record["span_id"], "{entry}");
        assert_eq!(entry["fields"]["order_id"], record["order_id"], "{entry}");
        assert_eq!(entry["fields"]["k8s.pod.name"], "checkout-6d9f", "{entry}");
        assert_eq!(entry["fields"]["k8s.namespace.name"], "shop", "{entry}");
        assert_eq!(entry["fields"]["otel.scope.name"], "checkout", "{entry}");
    }
    Ok(())
}

#[tokio::test]
async fn python_logging_loki_lines_arrive_with_their_labels() -> anyhow::Result<()> {
    let node = TestNode::start(|raw, _| raw.ingest.default_tenant = "lokitenant".into()).await?;
    let url = format!("http://{}", node.http_addr());
    let report = run_client("loki_logging.py", &[&url]).await?;
    let sent = report["sent"].as_array().context("sent")?;
    let items = node.query_all("lokitenant").await?;
    assert_eq!(items.len(), sent.len());
    let stored = by_message(&items);
    for record in sent {
        let message = record["message"].as_str().context("message")?;
        let entry = stored
            .get(message)
            .with_context(|| format!("{message} missing"))?;
        assert_eq!(entry["service"], "loki-py", "{entry}");
        let level = match record["level"].as_str() {
            Some("WARNING") => "WARN",
            Some("CRITICAL") => "FATAL",
            Some(other) => other,
            None => bail!("no level in {record}"),
        };
        assert_eq!(entry["level"], level, "{entry}");
        assert_eq!(entry["fields"]["env"], "test", "{entry}");
        assert_eq!(entry["fields"]["region"], record["region"], "{entry}");
        assert_eq!(entry["fields"]["logger"], "loki-py", "{entry}");
    }
    Ok(())
}

/// A snappy-compressed protobuf push, as Promtail and Alloy send it.
fn loki_push(tenant_line: &str, count: usize) -> Vec<u8> {
    let request = loki::PushRequest {
        streams: vec![loki::Stream {
            labels: r#"{job="shop/api", service_name="api", level="warn", pod="api-0"}"#.into(),
            entries: (0..count)
                .map(|i| loki::Entry {
                    timestamp: Some(loki::Timestamp {
                        seconds: 1_795_428_000 + i as i64,
                        nanos: 5,
                    }),
                    line: format!("{tenant_line} {i}"),
                    structured_metadata: vec![loki::LabelPair {
                        name: "trace_id".into(),
                        value: format!("t{i}"),
                    }],
                })
                .collect(),
            hash: 0,
        }],
    };
    snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .expect("in memory")
}

#[tokio::test]
async fn loki_snappy_protobuf_push_is_stored() -> anyhow::Result<()> {
    let node = TestNode::start(|_, _| {}).await?;
    let response = request(
        &node,
        "POST",
        "/loki/api/v1/push",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("X-Scope-OrgID", "promtail"),
        ],
        &loki_push("upstream slow", 25),
    )
    .await?;
    assert_eq!(response.status, 204, "{}", response.body);
    let items = node.query_all("promtail").await?;
    assert_eq!(items.len(), 25);
    let stored = by_message(&items);
    let e = &stored["upstream slow 7"];
    assert_eq!(e["service"], "api");
    assert_eq!(e["level"], "WARN");
    assert_eq!(e["trace_id"], "t7");
    assert_eq!(e["timestamp"], "2026-11-23T10:00:07.000000005Z");
    assert_eq!(e["fields"]["job"], "shop/api");
    assert_eq!(e["fields"]["pod"], "api-0");
    Ok(())
}

#[tokio::test]
async fn malformed_bodies_get_each_protocols_error_and_harm_nothing() -> anyhow::Result<()> {
    let node = TestNode::start(|raw, _| raw.ingest.max_frame_bytes = 64 * 1024).await?;
    let good = |tenant: &'static str| {
        format!("{{\"index\":{{\"_index\":\"web\"}}}}\n{{\"message\":\"good {tenant}\"}}\n")
    };
    let ndjson = [
        ("Content-Type", "application/x-ndjson"),
        ("X-Logcluster-Tenant", "bad"),
    ];
    let big = vec![b'x'; 100 * 1024];

    // Elasticsearch: a malformed action line fails the request; a bad document fails its item.
    let r = request(
        &node,
        "POST",
        "/_bulk",
        &ndjson,
        b"{\"index\":{\"_index\":\"w\"}}\n{\"message\":\"kept\"}\n{oops\n",
    )
    .await?;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.header("x-elastic-product"), Some("Elasticsearch"));
    let body: Value = serde_json::from_str(&r.body)?;
    assert_eq!(
        body["error"]["type"], "illegal_argument_exception",
        "{body}"
    );
    assert!(
        body["error"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("line [3]")),
        "{body}"
    );
    let r = request(&node, "POST", "/web/_bulk", &ndjson, b"{\"index\":{}}\n{\"message\":\"kept\"}\n{\"create\":{}}\n{broken json\n{\"delete\":{\"_id\":\"1\"}}\n").await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let body: Value = serde_json::from_str(&r.body)?;
    assert_eq!(body["errors"], true);
    let statuses: Vec<_> = body["items"]
        .as_array()
        .context("items")?
        .iter()
        .map(|i| {
            i.as_object()
                .and_then(|o| o.values().next())
                .map(|v| v["status"].clone())
        })
        .collect();
    assert_eq!(
        statuses,
        vec![Some(201.into()), Some(400.into()), Some(400.into())],
        "{body}"
    );
    assert_eq!(
        body["items"][1]["create"]["error"]["type"],
        "document_parsing_exception"
    );
    let r = request(
        &node,
        "POST",
        "/_bulk",
        &[("Content-Type", "application/xml")],
        good("x").as_bytes(),
    )
    .await?;
    assert_eq!(r.status, 406, "{}", r.body);
    let r = request(&node, "POST", "/_bulk", &ndjson, &big).await?;
    assert_eq!(r.status, 413, "{}", r.body);
    let r = request(
        &node,
        "POST",
        "/_bulk",
        &[("Content-Encoding", "gzip")],
        b"not gzip",
    )
    .await?;
    assert_eq!(r.status, 400, "{}", r.body);

    // OTLP: google.rpc.Status answers.
    let proto = [("Content-Type", "application/x-protobuf")];
    let r = request(
        &node,
        "POST",
        "/v1/logs",
        &proto,
        b"\x0a\xff\xff\xff\xff\x0f",
    )
    .await?;
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("not an OTLP ExportLogsServiceRequest"),
        "{}",
        r.body
    );
    let r = request(
        &node,
        "POST",
        "/v1/logs",
        &[("Content-Type", "application/json")],
        b"{\"resourceLogs\":7}",
    )
    .await?;
    assert_eq!(r.status, 400);
    let status: Value = serde_json::from_str(&r.body)?;
    assert_eq!(status["code"], 3, "{status}");
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("resourceLogs is not an array"))
    );
    let r = request(
        &node,
        "POST",
        "/v1/logs",
        &[("Content-Type", "text/plain")],
        b"hello",
    )
    .await?;
    assert_eq!(r.status, 415, "{}", r.body);
    let r = request(&node, "POST", "/v1/logs", &proto, &big).await?;
    assert_eq!(r.status, 413, "{}", r.body);

    // Loki: plain-text reasons.
    let r = request(
        &node,
        "POST",
        "/loki/api/v1/push",
        &proto,
        b"\x10\x00not snappy at all",
    )
    .await?;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("snappy"), "{}", r.body);
    let not_proto = snap::raw::Encoder::new().compress_vec(b"\x0a\xff\xff\xff\xff\x0f")?;
    let r = request(&node, "POST", "/loki/api/v1/push", &proto, &not_proto).await?;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("not a Loki PushRequest"), "{}", r.body);
    let bad_labels = loki::PushRequest {
        streams: vec![loki::Stream {
            labels: "{app=unquoted}".into(),
            entries: vec![loki::Entry {
                timestamp: None,
                line: "x".into(),
                structured_metadata: vec![],
            }],
            hash: 0,
        }],
    };
    let packed = snap::raw::Encoder::new().compress_vec(&bad_labels.encode_to_vec())?;
    let r = request(&node, "POST", "/loki/api/v1/push", &proto, &packed).await?;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("labels"), "{}", r.body);
    let r = request(
        &node,
        "POST",
        "/loki/api/v1/push",
        &[("Content-Type", "application/json")],
        b"{\"streams\":[{\"stream\":{},\"values\":[[\"soon\",\"x\"]]}]}",
    )
    .await?;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("not unix nanoseconds"), "{}", r.body);
    let r = request(
        &node,
        "POST",
        "/loki/api/v1/push",
        &[("Content-Type", "text/csv")],
        b"a,b",
    )
    .await?;
    assert_eq!(r.status, 415);
    let oversized = snap::raw::Encoder::new().compress_vec(&big)?;
    let r = request(&node, "POST", "/loki/api/v1/push", &proto, &oversized).await?;
    assert_eq!(r.status, 413, "{}", r.body);

    // Nothing else was affected: the one good item above is stored, and good requests of
    // every protocol still go through.
    let r = request(
        &node,
        "POST",
        "/_bulk",
        &[
            ("Content-Type", "application/x-ndjson"),
            ("X-Logcluster-Tenant", "after"),
        ],
        good("es").as_bytes(),
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = request(
        &node,
        "POST",
        "/loki/api/v1/push",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("X-Scope-OrgID", "after"),
        ],
        &loki_push("good loki", 1),
    )
    .await?;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = request(&node, "POST", "/v1/logs", &[("Content-Type", "application/json"), ("X-Logcluster-Tenant", "after")],
        br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"good otlp"}}]}]}]}"#).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut after: Vec<String> = node
        .query_all("after")
        .await?
        .iter()
        .map(|i| i["message"].as_str().unwrap_or("").to_string())
        .collect();
    after.sort();
    assert_eq!(after, ["good es", "good loki 0", "good otlp"]);
    let bad: Vec<String> = node
        .query_all("bad")
        .await?
        .iter()
        .map(|i| i["message"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        bad,
        ["kept"],
        "only the well-formed item of the partly bad request"
    );

    let metrics = node.metrics().await?;
    for (protocol, kind) in [
        ("elasticsearch", "malformed_bulk"),
        ("elasticsearch", "unsupported_media_type"),
        ("elasticsearch", "body_too_large"),
        ("elasticsearch", "bad_body_encoding"),
        ("otlp", "unsupported_media_type"),
        ("otlp", "body_too_large"),
        ("loki", "bad_body_encoding"),
        ("loki", "unsupported_media_type"),
        ("loki", "body_too_large"),
    ] {
        let count = common::metric_sum(
            &metrics,
            "logcluster_ingest_protocol_errors_total",
            &[
                &format!("protocol=\"{protocol}\""),
                &format!("kind=\"{kind}\""),
            ],
        );
        assert!(count >= 1.0, "no {protocol}/{kind} protocol error counted");
    }
    for (format, reason) in [
        ("elasticsearch", "invalid_json"),
        ("elasticsearch", "unsupported_action"),
        ("otlp", "invalid_protobuf"),
        ("otlp", "invalid_json"),
        ("loki", "invalid_protobuf"),
        ("loki", "invalid_labels"),
        ("loki", "invalid_json"),
    ] {
        let count = common::metric_sum(
            &metrics,
            "logcluster_ingest_rejected_total",
            &[
                &format!("format=\"{format}\""),
                &format!("reason=\"{reason}\""),
            ],
        );
        assert!(count >= 1.0, "no {format}/{reason} rejection counted");
    }
    Ok(())
}

#[tokio::test]
async fn exhausted_budget_answers_429_with_retry_after_then_recovers() -> anyhow::Result<()> {
    let node = TestNode::start(|raw, _| {
        raw.ingest.max_frame_bytes = 64 * 1024;
        raw.ingest.max_pending_bytes = 64 * 1024;
    })
    .await?;
    // A framed client announces a full-size frame and stalls: its reservation holds the whole
    // ingest budget.
    let payload = vec![b' '; 64 * 1024];
    let frame = logcluster_proto::frame::encode_frame(
        logcluster_proto::frame::Format::Json,
        1,
        "",
        &payload,
    );
    let mut client = node.connect().await?;
    let header_len = frame.len() - payload.len();
    client.send_raw(&frame[..header_len]).await?;
    let es = "{\"index\":{\"_index\":\"web\"}}\n{\"message\":\"while busy\"}\n";
    let busy = common::eventually("a 429 from _bulk", Duration::from_secs(20), || async {
        let r = request(
            &node,
            "POST",
            "/_bulk",
            &[("Content-Type", "application/x-ndjson")],
            es.as_bytes(),
        )
        .await
        .ok()?;
        (r.status == 429).then_some(r)
    })
    .await?;
    assert_eq!(busy.header("retry-after"), Some("1"));
    assert_eq!(busy.header("x-elastic-product"), Some("Elasticsearch"));
    let r = request(
        &node,
        "POST",
        "/loki/api/v1/push",
        &[("Content-Type", "application/x-protobuf")],
        &loki_push("busy", 1),
    )
    .await?;
    assert_eq!(
        (r.status, r.header("retry-after")),
        (429, Some("1")),
        "{}",
        r.body
    );
    let r = request(
        &node,
        "POST",
        "/v1/logs",
        &[("Content-Type", "application/json")],
        b"{}",
    )
    .await?;
    assert_eq!(
        (r.status, r.header("retry-after")),
        (429, Some("1")),
        "{}",
        r.body
    );

    // The stalled frame completes (it is only spaces: an empty batch); the budget is free again.
    client.send_raw(&payload).await?;
    common::eventually("_bulk accepted again", Duration::from_secs(20), || async {
        let r = request(
            &node,
            "POST",
            "/_bulk",
            &[("Content-Type", "application/x-ndjson")],
            es.as_bytes(),
        )
        .await
        .ok()?;
        (r.status == 200).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn through_a_cluster_each_protocol_is_acknowledged_after_the_write_quorum()
-> anyhow::Result<()> {
    let sandbox = common::cluster::ClusterSandbox::start(3).await?;
    let ingest = sandbox.ingestor.http_addr();
    let url = format!("http://{ingest}");
    let report = run_client("es_bulk.py", &[&url, "es-cluster"]).await?;
    assert_eq!(report["ok"].as_u64(), Some(500));
    let report = run_client("otel_logging.py", &[&url, "otel-cluster"]).await?;
    assert_eq!(report["flushed"], true);
    let r = logcluster_common::http_client::request(
        "POST",
        &format!("{url}/loki/api/v1/push"),
        &[
            ("Content-Type", "application/x-protobuf"),
            ("X-Scope-OrgID", "loki-cluster"),
        ],
        &loki_push("replicated", 40),
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(r.status, 204, "{}", r.body);
    // Acknowledged means on the write quorum: every entry is queryable through the query
    // node, and each storage member that owns it holds a copy.
    for (tenant, count) in [
        ("es-cluster", 600),
        ("otel-cluster", 120),
        ("loki-cluster", 40),
    ] {
        let items = sandbox.query_all(tenant).await?;
        assert_eq!(items.len(), count, "{tenant}");
        let mut copies = 0;
        for member in &sandbox.storage {
            copies += member.local_entries(tenant).await?.len();
        }
        assert!(
            copies >= 2 * count,
            "{tenant}: {copies} copies of {count} entries"
        );
    }
    // A write quorum that cannot be met is a retryable answer, never a success.
    sandbox.storage[0].sigstop()?;
    sandbox.storage[1].sigstop()?;
    let r = logcluster_common::http_client::request(
        "POST",
        &format!("{url}/loki/api/v1/push"),
        &[("Content-Type", "application/x-protobuf")],
        &loki_push("no quorum", 1),
        Duration::from_secs(60),
    )
    .await;
    sandbox.storage[0].sigcont()?;
    sandbox.storage[1].sigcont()?;
    let r = r?;
    if r.status != 503 {
        // Diagnostics for an unexpected success: what the ingestor saw of each replica.
        let metrics = sandbox.ingestor.metrics().await.unwrap_or_default();
        let replication: Vec<&str> = metrics
            .lines()
            .filter(|l| l.contains("replica") || l.contains("hint") || l.contains("quorum"))
            .collect();
        panic!(
            "a write with 2 of 3 members stopped answered {} {}\n{}\ningestor log:\n{}",
            r.status,
            r.body,
            replication.join("\n"),
            sandbox.ingestor.log()
        );
    }
    assert_eq!(r.header("retry-after"), Some("1"));
    Ok(())
}
