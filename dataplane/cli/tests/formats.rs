//! Every input format, sent through real TLS to a real node process, comes back from the query
//! API field for field.

mod common;

use std::collections::BTreeMap;

use common::TestNode;
use logcluster_proto::frame::{AckStatus, Format};
use logcluster_proto::time::format_rfc3339;
use logcluster_proto::{FieldValue, Level, LogBatch, LogEntry};
use prost::Message;
use serde_json::{Value, json};

const BASE_TS: i64 = 1_714_572_000_123_000_000; // 2024-05-01T14:00:00.123Z

fn sample(service: &str, i: i64) -> LogEntry {
    let levels = [Level::Info, Level::Warn, Level::Error];
    let mut fields = BTreeMap::new();
    fields.insert("duration_ms".to_string(), FieldValue::int(10 + i));
    fields.insert("region".to_string(), FieldValue::str("eu-west-1"));
    LogEntry {
        timestamp: BASE_TS + i * 1_000_000,
        service: service.to_string(),
        level: levels[i as usize % 3] as i32,
        message: format!("{service} message number {i} with a timeout"),
        host: format!("{service}-host-{i}"),
        trace_id: format!("{:032x}", 0xabc0 + i),
        fields,
        ..Default::default()
    }
}

/// Checks that a returned item carries everything `expected` has (core fields and fields).
fn assert_same(item: &Value, expected: &LogEntry, check_fields: bool) {
    let what = &expected.message;
    assert_eq!(item["message"], expected.message.as_str(), "{what}");
    assert_eq!(item["service"], expected.service.as_str(), "{what}");
    assert_eq!(item["level"], expected.level_enum().as_str(), "{what}");
    assert_eq!(item["host"], expected.host.as_str(), "{what}");
    assert_eq!(
        item["timestamp"],
        format_rfc3339(expected.timestamp).as_str(),
        "{what}"
    );
    if !expected.trace_id.is_empty() {
        assert_eq!(item["trace_id"], expected.trace_id.as_str(), "{what}");
    }
    if check_fields {
        for (key, value) in &expected.fields {
            assert_eq!(
                item["fields"][key],
                logcluster_proto::json::field_to_json(value),
                "{what}: field {key}"
            );
        }
    }
    assert!(
        item["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{what}: id assigned"
    );
    assert!(
        item["received_at"]
            .as_str()
            .is_some_and(|t| t.starts_with("20")),
        "{what}: received_at set"
    );
}

fn by_message(items: &[Value], message: &str) -> Value {
    items
        .iter()
        .find(|i| i["message"] == message)
        .cloned()
        .unwrap_or_else(|| panic!("no item with message {message:?} in {items:#?}"))
}

fn syslog_line(e: &LogEntry) -> String {
    let severity = match e.level_enum() {
        Level::Error => 3,
        Level::Warn => 4,
        _ => 6,
    };
    format!(
        "<{}>1 {} {} {} - - [app@32473 trace_id=\"{}\" region=\"eu-west-1\"] {}",
        16 * 8 + severity,
        format_rfc3339(e.timestamp),
        e.host,
        e.service,
        e.trace_id,
        e.message
    )
}

fn journald_entry(e: &LogEntry) -> String {
    let priority = match e.level_enum() {
        Level::Error => 3,
        Level::Warn => 4,
        _ => 6,
    };
    format!(
        "__REALTIME_TIMESTAMP={}\n_HOSTNAME={}\nSYSLOG_IDENTIFIER={}\nPRIORITY={priority}\nTRACE_ID={}\nMESSAGE={}\n\n",
        e.timestamp / 1000,
        e.host,
        e.service,
        e.trace_id,
        e.message
    )
}

#[tokio::test]
async fn every_format_sent_over_tls_comes_back_field_for_field() -> anyhow::Result<()> {
    let node = TestNode::start(|_, _| {}).await?;
    let mut client = node.connect().await?;
    let mut batch_id = 1000;
    let mut sent: Vec<(&str, Vec<LogEntry>, bool)> = Vec::new();
    for format in Format::ALL {
        let service = format!("svc-{}", format.name());
        let entries: Vec<LogEntry> = (0..3).map(|i| sample(&service, i)).collect();
        let (payload, full_fields): (Vec<u8>, bool) = match format {
            Format::Json => {
                let lines: Vec<String> = entries
                    .iter()
                    .map(|e| {
                        json!({
                            "timestamp": format_rfc3339(e.timestamp), "level": e.level_enum().as_str(),
                            "service": e.service, "host": e.host, "trace_id": e.trace_id,
                            "message": e.message, "duration_ms": e.fields["duration_ms"].as_f64().map(|f| f as i64),
                            "region": "eu-west-1",
                        })
                        .to_string()
                    })
                    .collect();
                (lines.join("\n").into_bytes(), true)
            }
            Format::Protobuf => (
                LogBatch {
                    entries: entries.clone(),
                }
                .encode_to_vec(),
                true,
            ),
            Format::Avro => (logcluster_proto::avro::encode_container(&entries)?, true),
            Format::Raw => {
                // One JSON line, one syslog line, one plain line: each auto-detected.
                let plain = &entries[2];
                let lines = [
                    json!({"timestamp": format_rfc3339(entries[0].timestamp), "level": "INFO", "service": entries[0].service,
                           "host": entries[0].host, "trace_id": entries[0].trace_id, "message": entries[0].message,
                           "duration_ms": 10, "region": "eu-west-1"})
                    .to_string(),
                    syslog_line(&entries[1]),
                    format!("{} ERROR {}", format_rfc3339(plain.timestamp), plain.message),
                ];
                (lines.join("\n").into_bytes(), false)
            }
            Format::Syslog => (
                entries
                    .iter()
                    .map(syslog_line)
                    .collect::<Vec<_>>()
                    .join("\n")
                    .into_bytes(),
                false,
            ),
            Format::Journald => (
                entries
                    .iter()
                    .map(journald_entry)
                    .collect::<String>()
                    .into_bytes(),
                false,
            ),
        };
        batch_id += 1;
        let ack = client
            .roundtrip(format, batch_id, format.name(), &payload)
            .await?;
        assert_eq!(
            ack.status,
            AckStatus::Accepted,
            "{}: {ack:?}",
            format.name()
        );
        assert_eq!(ack.accepted, 3, "{}", format.name());
        assert_eq!(ack.batch_id, batch_id);
        sent.push((format.name(), entries, full_fields));
    }
    for (tenant, entries, full_fields) in sent {
        let items = node.query_all(tenant).await?;
        assert_eq!(items.len(), 3, "{tenant}: {items:#?}");
        match tenant {
            "raw" => {
                assert_same(&by_message(&items, &entries[0].message), &entries[0], true);
                let syslog = by_message(&items, &entries[1].message);
                assert_same(&syslog, &entries[1], false);
                assert_eq!(syslog["fields"]["region"], "eu-west-1");
                // A plain line keeps the whole line as its message; level and time are read
                // from it.
                let plain = items
                    .iter()
                    .find(|i| {
                        i["message"]
                            .as_str()
                            .is_some_and(|m| m.ends_with(&entries[2].message))
                    })
                    .cloned()
                    .expect("the plain line is stored");
                assert_eq!(plain["level"], "ERROR");
                assert!(
                    plain["host"].as_str().is_some_and(|h| !h.is_empty()),
                    "host enrichment fills a missing host"
                );
                assert_eq!(
                    plain["timestamp"],
                    format_rfc3339(entries[2].timestamp).as_str()
                );
            }
            "syslog" => {
                for e in &entries {
                    let item = by_message(&items, &e.message);
                    assert_same(&item, e, false);
                    assert_eq!(item["fields"]["region"], "eu-west-1");
                }
            }
            _ => {
                for e in &entries {
                    assert_same(&by_message(&items, &e.message), e, full_fields);
                }
            }
        }
        for item in &items {
            assert_eq!(item["tenant"], tenant, "the frame tenant wins");
        }
    }
    Ok(())
}

#[tokio::test]
async fn http_and_udp_ingest_are_queryable() -> anyhow::Result<()> {
    let node = TestNode::start(|_, _| {}).await?;
    let body = "{\"service\":\"web\",\"level\":\"warn\",\"message\":\"slow request\",\"duration_ms\":812}\n{\"service\":\"web\",\"message\":\"second\"}";
    let (status, answer) = common::http(
        &node.http_addr(),
        "POST",
        "/api/v1/ingest",
        &[("X-Logcluster-Tenant", "h")],
        body.as_bytes(),
    )
    .await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 2);
    let (status, answer) = common::http(
        &node.http_addr(),
        "POST",
        "/api/v1/ingest?tenant=h",
        &[],
        b"[{\"message\":\"from an array\"}, 42]",
    )
    .await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (Some(1), Some(1))
    );
    let (status, answer) = common::http(
        &node.http_addr(),
        "POST",
        "/api/v1/ingest",
        &[],
        b"{not json",
    )
    .await?;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{answer}"
    );

    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    socket
        .send_to(b"{\"service\":\"udp-svc\",\"tenant\":\"u\",\"message\":\"over udp\",\"level\":\"ERROR\"}", ("127.0.0.1", node.port("udp")))
        .await?;
    let items = wait_for_items(&node, "u", 1).await?;
    assert_eq!(items[0]["message"], "over udp");
    assert_eq!(items[0]["level"], "ERROR");
    let items = node.query_all("h").await?;
    assert_eq!(items.len(), 3);
    let slow = by_message(&items, "slow request");
    assert_eq!(slow["level"], "WARN");
    assert_eq!(slow["fields"]["duration_ms"], 812);
    Ok(())
}

/// Shippers compress their HTTP bodies (Fluent Bit, Vector, OpenTelemetry exporters): the
/// native ingest route takes gzip, deflate and zstd bodies, bounds what they decompress to, and
/// refuses an encoding it does not speak with 415.
#[tokio::test]
async fn http_ingest_takes_compressed_bodies_within_the_size_limit() -> anyhow::Result<()> {
    use std::io::Write;
    let node = TestNode::start(|raw, _| raw.ingest.max_frame_bytes = 64 * 1024).await?;
    let lines = |name: &str| {
        format!(
            "{{\"service\":\"zip\",\"message\":\"{name} one\"}}\n{{\"service\":\"zip\",\"message\":\"{name} two\"}}"
        )
    };
    let gzip = {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(lines("gzip").as_bytes())?;
        encoder.finish()?
    };
    let deflate = {
        let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(lines("deflate").as_bytes())?;
        encoder.finish()?
    };
    let zstd = zstd::bulk::compress(lines("zstd").as_bytes(), 3)?;
    for (encoding, body) in [("gzip", gzip), ("deflate", deflate), ("zstd", zstd)] {
        let (status, answer) = common::http(
            &node.http_addr(),
            "POST",
            "/api/v1/ingest",
            &[("X-Logcluster-Tenant", "z"), ("Content-Encoding", encoding)],
            &body,
        )
        .await?;
        assert_eq!(
            (status, &answer["accepted"]),
            (200, &json!(2)),
            "{encoding}: {answer}"
        );
    }
    // Small on the wire, past the limit once decompressed: 413, nothing stored.
    let bomb = zstd::bulk::compress(&vec![b' '; 1 << 20], 3)?;
    let (status, answer) = common::http(
        &node.http_addr(),
        "POST",
        "/api/v1/ingest",
        &[("X-Logcluster-Tenant", "z"), ("Content-Encoding", "zstd")],
        &bomb,
    )
    .await?;
    assert!(bomb.len() < 64 * 1024);
    assert_eq!(status, 413, "{answer}");
    let (status, answer) = common::http(
        &node.http_addr(),
        "POST",
        "/api/v1/ingest",
        &[("X-Logcluster-Tenant", "z"), ("Content-Encoding", "zstd")],
        b"not zstd at all",
    )
    .await?;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = common::http(
        &node.http_addr(),
        "POST",
        "/api/v1/ingest",
        &[("X-Logcluster-Tenant", "z"), ("Content-Encoding", "br")],
        lines("brotli").as_bytes(),
    )
    .await?;
    assert_eq!(status, 415, "{answer}");
    assert!(
        answer["error"].as_str().is_some_and(|e| e.contains("zstd")),
        "{answer}"
    );
    let mut messages: Vec<String> = node
        .query_all("z")
        .await?
        .iter()
        .filter_map(|item| item["message"].as_str().map(str::to_string))
        .collect();
    messages.sort();
    assert_eq!(
        messages,
        [
            "deflate one",
            "deflate two",
            "gzip one",
            "gzip two",
            "zstd one",
            "zstd two"
        ]
    );
    let metrics = node.metrics().await?;
    for kind in [
        "body_too_large",
        "bad_body_encoding",
        "unsupported_encoding",
    ] {
        assert_eq!(
            common::metric_sum(
                &metrics,
                "logcluster_ingest_protocol_errors_total",
                &[&format!("kind=\"{kind}\"")]
            ),
            1.0,
            "{kind}"
        );
    }
    Ok(())
}

/// A small compressed body that inflates past what is left of the ingest budget (held here by
/// a frame still arriving) is answered 429 (busy, retry later), and taken once the budget is
/// free again. (That the inflating itself holds room as it grows, not only its result, is
/// `compat::tests::inflated_output_is_reserved_as_it_grows` in the ingest crate.)
#[tokio::test]
async fn inflating_a_body_needs_room_in_the_ingest_budget() -> anyhow::Result<()> {
    use std::io::Write;
    let node = TestNode::start(|raw, _| {
        raw.ingest.max_frame_bytes = 1 << 20;
        raw.ingest.max_pending_bytes = 1 << 20;
    })
    .await?;
    let lines: String = (0..4000)
        .map(|i| format!("{{\"service\":\"zip\",\"message\":\"line {i:0>100}\"}}\n"))
        .collect();
    assert!(lines.len() > 400 * 1024 && lines.len() < 1 << 20);
    let gzip = {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(lines.as_bytes())?;
        encoder.finish()?
    };
    assert!(gzip.len() < 64 * 1024, "{}", gzip.len());
    let addr = node.http_addr();
    let post = || {
        common::http(
            &addr,
            "POST",
            "/api/v1/ingest",
            &[("X-Logcluster-Tenant", "z"), ("Content-Encoding", "gzip")],
            &gzip,
        )
    };
    // A frame of 900 KiB whose payload has not arrived holds 900 KiB of the 1 MiB budget.
    let payload = vec![b' '; 900 * 1024];
    let frame = logcluster_proto::frame::encode_frame(Format::Json, 1, "z", &payload);
    let mut stalled = node.connect().await?;
    stalled
        .send_raw(&frame[..frame.len() - payload.len() + 10])
        .await?;
    let (status, answer) = common::eventually(
        "a busy answer",
        std::time::Duration::from_secs(10),
        || async {
            let (status, answer) = post().await.ok()?;
            (status != 200).then_some((status, answer))
        },
    )
    .await?;
    assert_eq!(status, 429, "{answer}");
    // The rest of the frame arrives: its budget comes back, and the body is taken.
    stalled
        .send_raw(&frame[frame.len() - payload.len() + 10..])
        .await?;
    assert!(stalled.read_ack().await?.is_some());
    let (status, answer) = post().await?;
    assert_eq!(
        (status, &answer["accepted"]),
        (200, &json!(4000)),
        "{answer}"
    );
    Ok(())
}

pub async fn wait_for_items(
    node: &TestNode,
    tenant: &str,
    count: usize,
) -> anyhow::Result<Vec<Value>> {
    common::eventually(
        &format!("{count} entries of tenant {tenant}"),
        std::time::Duration::from_secs(20),
        || async {
            node.query_all(tenant)
                .await
                .ok()
                .filter(|found| found.len() >= count)
        },
    )
    .await
}
