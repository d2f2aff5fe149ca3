//! Bad input of every kind gets a clear error and a metric, never crashes the node, and never
//! disturbs other connections or batches.

mod common;

use common::{FrameClient, TestNode, metric_sum};
use logcluster_proto::frame::{AckStatus, FRAME_MAGIC, Format, encode_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn good_batch(client: &mut FrameClient, id: u64) -> anyhow::Result<logcluster_proto::Ack> {
    let payload = format!("{{\"service\":\"ok\",\"message\":\"good {id}\"}}");
    client
        .roundtrip(Format::Json, id, "t", payload.as_bytes())
        .await
}

/// An Elasticsearch `_bulk` request of NDJSON `body` for `tenant`: status and JSON answer.
async fn bulk_request(
    node: &TestNode,
    tenant: &str,
    body: &str,
) -> anyhow::Result<(u16, serde_json::Value)> {
    common::http(
        &node.http_addr(),
        "POST",
        "/_bulk",
        &[
            ("Content-Type", "application/x-ndjson"),
            ("X-Logcluster-Tenant", tenant),
        ],
        body.as_bytes(),
    )
    .await
}

#[tokio::test]
async fn malformed_input_is_refused_clearly_and_other_connections_carry_on() -> anyhow::Result<()> {
    let node = TestNode::start(|raw, dir| {
        raw.ingest.max_frame_bytes = 64 * 1024;
        raw.ingest.schema_dir = Some(dir.join("schemas"));
        let _ = std::fs::create_dir_all(dir.join("schemas"));
        let _ = std::fs::write(
            dir.join("schemas/orders.yaml"),
            "apiVersion: logcluster.io/v1alpha1\nkind: LogSchema\nmetadata: {name: orders}\nspec:\n  selector: {services: [orders]}\n  format: json\n  schema: {type: object, required: [order_id]}\n",
        );
    })
    .await?;
    // A long-lived healthy connection, opened first and used between every bad case.
    let mut healthy = node.connect().await?;
    assert_eq!(
        good_batch(&mut healthy, 1).await?.status,
        AckStatus::Accepted
    );

    // 1. Invalid UTF-8 and invalid JSON lines: those records are refused, the rest stored.
    let mut c = node.connect().await?;
    let mut payload = b"{\"service\":\"mixed\",\"message\":\"fine\"}\n".to_vec();
    payload.extend_from_slice(b"{\"message\":\"bad \xff\xfe bytes\"}\n{broken json\n");
    let ack = c.roundtrip(Format::Json, 500, "t", &payload).await?;
    assert_eq!(ack.status, AckStatus::Partial, "{ack:?}");
    assert_eq!((ack.accepted, ack.rejected), (1, 2));
    assert!(
        ack.error.contains("record 1"),
        "first error names the record: {}",
        ack.error
    );

    // 2. Schema violation: refused with the schema's name; the valid one is stored.
    let ack = c
        .roundtrip(Format::Json, 501, "t", b"{\"service\":\"orders\",\"message\":\"no id\"}\n{\"service\":\"orders\",\"message\":\"has id\",\"order_id\":7}")
        .await?;
    assert_eq!(ack.status, AckStatus::Partial, "{ack:?}");
    assert!(ack.error.contains("orders"), "{}", ack.error);

    // 2b. A clock decades ahead: that record is refused (it would hold its segment from age
    // retention until 2099); the one beside it, an hour ahead, is stored.
    let in_an_hour = logcluster_proto::time::format_rfc3339(
        logcluster_proto::time::now_nanos() + 3_600_000_000_000,
    );
    let payload = format!(
        "{{\"message\":\"from 2099\",\"timestamp\":\"2099-01-01T00:00:00Z\"}}\n{{\"message\":\"an hour ahead\",\"timestamp\":\"{in_an_hour}\"}}"
    );
    let ack = c
        .roundtrip(Format::Json, 504, "t", payload.as_bytes())
        .await?;
    assert_eq!(ack.status, AckStatus::Partial, "{ack:?}");
    assert_eq!((ack.accepted, ack.rejected), (1, 1));
    assert!(
        ack.error.contains("record 0") && ack.error.contains("maxTimestampAhead"),
        "{}",
        ack.error
    );

    // 3. An undecodable protobuf payload: the batch is rejected, the connection stays usable.
    let ack = c
        .roundtrip(Format::Protobuf, 502, "t", &[0xff, 0xff, 0xff, 0xff, 0x0f])
        .await?;
    assert_eq!(ack.status, AckStatus::Rejected, "{ack:?}");
    let ack = c
        .roundtrip(
            Format::Json,
            503,
            "t",
            b"{\"message\":\"after a bad batch\"}",
        )
        .await?;
    assert_eq!(ack.status, AckStatus::Accepted);
    assert_eq!(
        good_batch(&mut healthy, 2).await?.status,
        AckStatus::Accepted
    );

    // 4. Oversize frame: refused from the header with a protocol error, then closed.
    let mut c = node.connect().await?;
    let big = vec![b'x'; 64 * 1024 + 1];
    // The server may answer from the header and stop reading before the payload is sent;
    // a failed write of the rest is expected, the ack must still arrive.
    let _ = c.send(Format::Raw, 600, "t", &big).await;
    let ack = c.read_ack().await?.expect("an ack before the close");
    assert_eq!(ack.status, AckStatus::ProtocolError);
    assert!(ack.error.contains("exceeds"), "{}", ack.error);
    assert!(
        c.read_ack().await?.is_none(),
        "connection closed after a protocol error"
    );

    // 5. Random bytes instead of a frame (bad magic).
    let mut c = node.connect().await?;
    c.send_raw(b"\x13\x37random garbage that is not a frame at all")
        .await?;
    let ack = c.read_ack().await?.expect("ack");
    assert_eq!(ack.status, AckStatus::ProtocolError);
    assert!(ack.error.contains("magic"), "{}", ack.error);

    // 6. Truncated frame: header promises more bytes than arrive, then the client leaves.
    let mut c = node.connect().await?;
    let frame = encode_frame(Format::Json, 700, "t", b"{\"message\":\"never complete\"}");
    c.send_raw(&frame[..frame.len() - 5]).await?;
    c.stream.shutdown().await?;
    drop(c);
    // A bad length that claims a huge payload is refused like an oversize frame.
    let mut c = node.connect().await?;
    let mut bad_len = encode_frame(Format::Json, 701, "", b"");
    bad_len[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(&bad_len[..2], &FRAME_MAGIC);
    c.send_raw(&bad_len).await?;
    assert_eq!(
        c.read_ack().await?.map(|a| a.status),
        Some(AckStatus::ProtocolError)
    );

    // 7. Plaintext on the TLS port.
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", node.port("ingest"))).await?;
    plain
        .write_all(&encode_frame(
            Format::Json,
            800,
            "t",
            b"{\"message\":\"plaintext\"}",
        ))
        .await?;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        plain.read_to_end(&mut sink),
    )
    .await;

    // The healthy connection still works and the node is alive.
    assert_eq!(
        good_batch(&mut healthy, 3).await?.status,
        AckStatus::Accepted
    );
    let metrics = common::eventually(
        "the tls handshake failure to be counted",
        std::time::Duration::from_secs(10),
        || async {
            node.metrics().await.ok().filter(|text| {
                metric_sum(
                    text,
                    "logcluster_ingest_protocol_errors_total",
                    &["tls_handshake"],
                ) >= 1.0
            })
        },
    )
    .await?;
    assert!(
        metric_sum(
            &metrics,
            "logcluster_ingest_rejected_total",
            &["invalid_utf8"]
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        metric_sum(
            &metrics,
            "logcluster_ingest_rejected_total",
            &["invalid_json"]
        ) >= 1.0
    );
    assert!(
        metric_sum(
            &metrics,
            "logcluster_ingest_rejected_total",
            &["reason=\"schema\""]
        ) >= 1.0
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "logcluster_ingest_rejected_total",
            &["reason=\"future_timestamp\""]
        ),
        1.0
    );
    assert!(
        metric_sum(
            &metrics,
            "logcluster_ingest_schema_rejects_total",
            &["schema=\"orders\""]
        ) >= 1.0
    );
    assert!(
        metric_sum(
            &metrics,
            "logcluster_ingest_rejected_total",
            &["invalid_protobuf"]
        ) >= 1.0
    );
    assert!(
        metric_sum(
            &metrics,
            "logcluster_ingest_protocol_errors_total",
            &["oversize_frame"]
        ) >= 2.0
    );
    assert!(
        metric_sum(
            &metrics,
            "logcluster_ingest_protocol_errors_total",
            &["bad_magic"]
        ) >= 1.0
    );
    assert!(
        metric_sum(
            &metrics,
            "logcluster_ingest_protocol_errors_total",
            &["truncated_frame"]
        ) >= 1.0
    );
    let items = node.query_all("t").await?;
    let messages: Vec<&str> = items.iter().filter_map(|i| i["message"].as_str()).collect();
    assert!(
        messages.contains(&"fine")
            && messages.contains(&"has id")
            && messages.contains(&"an hour ahead")
            && messages.contains(&"after a bad batch")
    );
    assert!(!messages.iter().any(|m| m.contains("never complete")
        || m.contains("no id")
        || m.contains("2099")
        || m.contains("plaintext")));
    Ok(())
}

#[tokio::test]
async fn udp_garbage_is_counted_and_the_listener_keeps_working() -> anyhow::Result<()> {
    let node = TestNode::start(|_, _| {}).await?;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let target = ("127.0.0.1", node.port("udp"));
    socket.send_to(b"\xff\xfe\x00 not json", target).await?;
    // Datagrams without a record are refused too, not silently taken.
    socket.send_to(b"[]", target).await?;
    socket.send_to(b" \n ", target).await?;
    socket
        .send_to(
            b"{\"service\":\"u\",\"message\":\"valid after garbage\"}",
            target,
        )
        .await?;
    node.stored_when("default", "the valid datagram to be stored", |items| {
        items.iter().any(|i| i["message"] == "valid after garbage")
    })
    .await?;
    // Datagrams are parsed with their batch, and batches are stored side by side: the
    // garbage's may be counted a moment after the valid one is stored.
    let metrics = common::eventually(
        "the garbage and the empty datagrams to be counted as rejected",
        std::time::Duration::from_secs(20),
        || async {
            let metrics = node.metrics().await.ok()?;
            (metric_sum(
                &metrics,
                "logcluster_ingest_rejected_total",
                &["format=\"json\""],
            ) >= 3.0)
                .then_some(metrics)
        },
    )
    .await?;
    let rejected = |reason: &str| {
        metric_sum(
            &metrics,
            "logcluster_ingest_rejected_total",
            &["format=\"json\"", &format!("reason=\"{reason}\"")],
        )
    };
    assert_eq!((rejected("invalid_utf8"), rejected("empty")), (1.0, 2.0));
    // Rejected, not also dropped.
    assert_eq!(
        metric_sum(&metrics, "logcluster_ingest_udp_drops_total", &[]),
        0.0
    );
    Ok(())
}

#[tokio::test]
async fn every_udp_datagram_is_stored_or_counted_as_dropped_even_by_the_kernel()
-> anyhow::Result<()> {
    let node = TestNode::start(|_, _| {}).await?;
    let process = node.process.as_ref().expect("running");
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let target = ("127.0.0.1", node.port("udp"));
    // While the node hangs, its socket's receive buffer fills and the kernel drops the rest.
    process.sigstop()?;
    let sent = 30_000u32;
    let padding = "p".repeat(200);
    for k in 0..sent {
        // Some garbage among them: rejected (or dropped by the kernel), never both.
        let datagram = if k % 1000 == 7 {
            format!("not json {padding}")
        } else {
            format!("{{\"service\":\"u\",\"message\":\"d{k} {padding}\"}}")
        };
        socket.send_to(datagram.as_bytes(), target).await?;
    }
    process.sigcont()?;
    let counted = |metrics: &str| {
        (
            metric_sum(
                metrics,
                "logcluster_ingest_entries_total",
                &["format=\"json\""],
            ),
            metric_sum(metrics, "logcluster_ingest_udp_drops_total", &[]),
            metric_sum(
                metrics,
                "logcluster_ingest_udp_drops_total",
                &["reason=\"kernel\""],
            ),
            metric_sum(
                metrics,
                "logcluster_ingest_rejected_total",
                &["format=\"json\""],
            ),
        )
    };
    let all_counted = |(stored, dropped, _, rejected): (f64, f64, f64, f64)| {
        stored + dropped + rejected == f64::from(sent)
    };
    let (stored, dropped, by_kernel, rejected) = common::eventually(
        "every datagram to be stored or counted as dropped or rejected",
        std::time::Duration::from_secs(30),
        || async {
            let counts = counted(&node.metrics().await.ok()?);
            all_counted(counts).then_some(counts)
        },
    )
    .await?;
    assert!(
        stored > 0.0 && by_kernel > 0.0 && rejected > 0.0,
        "{stored} {dropped} {by_kernel} {rejected}"
    );
    // And no datagram is counted twice later (the kernel count is read every second).
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let later = counted(&node.metrics().await?);
    assert!(all_counted(later), "{later:?}");
    let items = node.query_all("default").await?;
    assert_eq!(items.len() as f64, stored);
    Ok(())
}

#[tokio::test]
async fn a_batch_of_more_records_than_allowed_is_refused_whole() -> anyhow::Result<()> {
    // Tiny records: the frames are small in bytes, large in entries.
    let node = TestNode::start(|raw, _| raw.ingest.max_batch_records = 1000).await?;
    let lines = |n: usize, tag: &str| -> Vec<u8> {
        (0..n)
            .map(|k| format!("{tag}{k}\n"))
            .collect::<String>()
            .into_bytes()
    };
    let mut c = node.connect().await?;
    let ack = c.roundtrip(Format::Raw, 1, "t", &lines(1001, "r")).await?;
    assert_eq!(ack.status, AckStatus::Rejected, "{ack:?}");
    assert!(ack.error.contains("maxBatchRecords"), "{}", ack.error);
    // The connection carries on, and a batch at the limit is stored whole.
    let ack = c.roundtrip(Format::Raw, 2, "t", &lines(1000, "a")).await?;
    assert_eq!((ack.status, ack.accepted), (AckStatus::Accepted, 1000));

    let proto = logcluster_proto::LogBatch {
        entries: (0..1001)
            .map(|k| logcluster_proto::LogEntry {
                message: format!("p{k}"),
                ..Default::default()
            })
            .collect(),
    };
    let ack = c
        .roundtrip(
            Format::Protobuf,
            3,
            "t",
            &prost::Message::encode_to_vec(&proto),
        )
        .await?;
    assert_eq!(ack.status, AckStatus::Rejected, "{ack:?}");

    // Over HTTP: the ingest API and the Elasticsearch bulk API (which decodes before the
    // count is known) refuse the request, and no document is answered as created.
    let tenant = [("X-Logcluster-Tenant", "t")];
    let (status, body) = common::http(
        &node.http_addr(),
        "POST",
        "/api/v1/ingest",
        &tenant,
        &lines(1001, "h"),
    )
    .await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("maxBatchRecords"), "{body}");
    let bulk: String = (0..1001)
        .map(|k| format!("{{\"index\":{{\"_index\":\"es\"}}}}\n{{\"message\":\"e{k}\"}}\n"))
        .collect();
    let (status, body) = bulk_request(&node, "t", &bulk).await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["type"], "illegal_argument_exception",
        "{body}"
    );

    // Actions that are not documents count too: each one is answered.
    let deletes = "{\"delete\":{\"_index\":\"es\",\"_id\":\"x\"}}\n".repeat(1001);
    let (status, body) = bulk_request(&node, "t", &deletes).await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("more than 1000 actions")),
        "{body}"
    );
    // Loki and OTLP: labels and resource attributes are copied into every record, so the
    // mapping stops at the limit rather than after it.
    let values: Vec<String> = (0..1001)
        .map(|k| format!("[\"{}\",\"l{k}\"]", 1_700_000_000_000_000_000u64 + k))
        .collect();
    let loki = format!(
        "{{\"streams\":[{{\"stream\":{{\"service\":\"lk\"}},\"values\":[{}]}}]}}",
        values.join(",")
    );
    refused_400(&node, "/loki/api/v1/push", &loki, "maxBatchRecords").await?;
    let records: Vec<String> = (0..1001)
        .map(|k| format!("{{\"body\":{{\"stringValue\":\"o{k}\"}}}}"))
        .collect();
    let otlp = format!(
        "{{\"resourceLogs\":[{{\"scopeLogs\":[{{\"logRecords\":[{}]}}]}}]}}",
        records.join(",")
    );
    refused_400(&node, "/v1/logs", &otlp, "maxBatchRecords").await?;

    let metrics = node.metrics().await?;
    for (format, refused) in [
        ("raw", 1.0),
        ("protobuf", 1.0),
        ("json", 1.0),
        ("elasticsearch", 2.0),
        ("loki", 1.0),
        ("otlp", 1.0),
    ] {
        assert_eq!(
            metric_sum(
                &metrics,
                "logcluster_ingest_rejected_total",
                &[&format!("format=\"{format}\""), "too_many_records"]
            ),
            refused,
            "{format}: {metrics}"
        );
    }
    let items = node.query_all("t").await?;
    assert_eq!(items.len(), 1000);
    assert!(
        items
            .iter()
            .all(|i| { i["message"].as_str().is_some_and(|m| m.starts_with('a')) })
    );

    // A syslog stream is cut into batches by the listener, whatever their count: 1,500 lines
    // in one write are all stored.
    let mut syslog = tokio::net::TcpStream::connect(("127.0.0.1", node.port("syslog_tcp"))).await?;
    let stream: String = (0..1500).map(|k| format!("<13>line {k}\n")).collect();
    syslog.write_all(stream.as_bytes()).await?;
    syslog.shutdown().await?;
    node.stored_when("default", "every syslog line to be stored", |items| {
        items.len() == 1500
    })
    .await?;
    Ok(())
}

/// Posts `body` as JSON for tenant `t`; asserts a 400 whose answer mentions `says`.
async fn refused_400(node: &TestNode, path: &str, body: &str, says: &str) -> anyhow::Result<()> {
    let json = [
        ("X-Logcluster-Tenant", "t"),
        ("Content-Type", "application/json"),
    ];
    let (status, answer) =
        common::http(&node.http_addr(), "POST", path, &json, body.as_bytes()).await?;
    assert_eq!(status, 400, "{path}: {answer}");
    assert!(answer.to_string().contains(says), "{path}: {answer}");
    Ok(())
}

/// A Loki stream's labels and an OTLP resource's attributes are sent once and copied into
/// each record: a small request must not map onto more memory than the ingest budget holds.
#[tokio::test]
async fn requests_whose_records_outgrow_the_ingest_budget_are_refused_and_nothing_stored()
-> anyhow::Result<()> {
    let node = TestNode::start(|raw, _| {
        raw.ingest.max_frame_bytes = 256 * 1024;
        raw.ingest.max_pending_bytes = 1024 * 1024;
    })
    .await?;
    let json = [
        ("X-Logcluster-Tenant", "t"),
        ("Content-Type", "application/json"),
    ];
    // 100 labels of ~50 bytes on one stream, 200 empty lines: a ~30 KB body whose records
    // would take some 3 MB.
    let labels: Vec<String> = (0..100)
        .map(|k| format!("\"label{k:03}\":\"{}\"", "v".repeat(40)))
        .collect();
    let values: Vec<String> = (0..200)
        .map(|k| format!("[\"{}\",\"\"]", 1_700_000_000_000_000_000u64 + k))
        .collect();
    let loki = format!(
        "{{\"streams\":[{{\"stream\":{{\"service\":\"wide\",{}}},\"values\":[{}]}}]}}",
        labels.join(","),
        values.join(",")
    );
    assert!(loki.len() < 40_000, "{}", loki.len());
    refused_400(&node, "/loki/api/v1/push", &loki, "maxPendingBytes").await?;
    let attributes: Vec<String> = (0..100)
        .map(|k| {
            format!(
                "{{\"key\":\"attr{k:03}\",\"value\":{{\"stringValue\":\"{}\"}}}}",
                "v".repeat(40)
            )
        })
        .collect();
    let records: Vec<String> = (0..200).map(|_| "{}".to_string()).collect();
    let otlp = format!(
        "{{\"resourceLogs\":[{{\"resource\":{{\"attributes\":[{}]}},\"scopeLogs\":[{{\"logRecords\":[{}]}}]}}]}}",
        attributes.join(","),
        records.join(",")
    );
    refused_400(&node, "/v1/logs", &otlp, "maxPendingBytes").await?;
    let metrics = node.metrics().await?;
    for format in ["loki", "otlp"] {
        assert_eq!(
            metric_sum(
                &metrics,
                "logcluster_ingest_rejected_total",
                &[&format!("format=\"{format}\""), "too_large"]
            ),
            1.0,
            "{format}: {metrics}"
        );
    }
    // The room was given back: the same stream with a few lines is stored.
    let few = format!(
        "{{\"streams\":[{{\"stream\":{{\"service\":\"wide\",{}}},\"values\":[{}]}}]}}",
        labels.join(","),
        values[..5].join(",")
    );
    let (status, body) = common::http(
        &node.http_addr(),
        "POST",
        "/loki/api/v1/push",
        &json,
        few.as_bytes(),
    )
    .await?;
    assert_eq!(status, 204, "{body}");
    let items = node
        .stored_when("t", "the five lines", |items| items.len() == 5)
        .await?;
    assert!(items.iter().all(|i| i["service"] == "wide"));
    Ok(())
}

/// A sender that invents service names cannot make the node open streams without end: past
/// `storage.maxStreams` the records of a new stream are refused (and counted), the batch's
/// others stored.
#[tokio::test]
async fn records_of_new_streams_past_the_limit_are_refused_and_the_rest_stored()
-> anyhow::Result<()> {
    let node = TestNode::start(|raw, _| raw.storage.max_streams = 2).await?;
    let mut c = node.connect().await?;
    let lines: String = ["a", "b", "c", "a", "d"]
        .iter()
        .map(|service| format!("{{\"service\":\"{service}\",\"message\":\"m\"}}\n"))
        .collect();
    let ack = c.roundtrip(Format::Json, 1, "t", lines.as_bytes()).await?;
    assert_eq!(ack.status, AckStatus::Partial, "{ack:?}");
    assert_eq!((ack.accepted, ack.rejected), (3, 2), "{ack:?}");
    assert!(ack.error.contains("storage.maxStreams"), "{}", ack.error);
    let items = node
        .stored_when("t", "the three records", |items| items.len() == 3)
        .await?;
    assert!(
        items
            .iter()
            .all(|i| i["service"] == "a" || i["service"] == "b")
    );
    let metrics = node.metrics().await?;
    assert_eq!(
        metric_sum(
            &metrics,
            "logcluster_ingest_rejected_total",
            &["format=\"json\"", "too_many_streams"]
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "logcluster_storage_streams_refused_total", &[]),
        2.0,
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn records_that_grow_past_the_wal_record_limit_are_refused_and_the_rest_stored()
-> anyhow::Result<()> {
    let node = TestNode::start(|_, _| {}).await?;
    let payload = common::expanding_ndjson();
    assert!(payload.len() < 4 * 1024 * 1024);
    let mut c = node.connect().await?;
    let ack = c.roundtrip(Format::Json, 1, "t", &payload).await?;
    assert_eq!(
        (ack.status, ack.accepted, ack.rejected),
        (AckStatus::Partial, 2, 300),
        "{ack:?}"
    );
    assert!(
        ack.error.starts_with("record 1: ")
            && ack.error.contains("limit of a write-ahead log record"),
        "{}",
        ack.error
    );
    // Sent again, the same answer: the small records are not stored twice, and the wide ones
    // are refused again rather than answered "retry later" forever.
    let again = c.roundtrip(Format::Json, 1, "t", &payload).await?;
    assert_eq!(
        (again.status, again.accepted, again.rejected),
        (AckStatus::Partial, 2, 300),
        "{again:?}"
    );
    // The connection carries on.
    assert_eq!(good_batch(&mut c, 2).await?.status, AckStatus::Accepted);

    // Over the Elasticsearch bulk API, item by item.
    let bulk: String = String::from_utf8(payload)?
        .lines()
        .map(|doc| format!("{{\"create\":{{\"_index\":\"es\"}}}}\n{doc}\n"))
        .collect();
    let (status, body) = bulk_request(&node, "es", &bulk).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["errors"], true);
    let items = body["items"].as_array().expect("items");
    assert_eq!(items.len(), 302);
    let status_of = |k: usize| items[k]["create"]["status"].as_u64();
    assert_eq!(
        (status_of(0), status_of(301)),
        (Some(201), Some(201)),
        "{body}"
    );
    assert!((1..301).all(|k| status_of(k) == Some(400)));
    let reason = items[150]["create"]["error"]["reason"]
        .as_str()
        .unwrap_or("");
    assert!(
        reason.contains("limit of a write-ahead log record"),
        "{reason}"
    );

    let metrics = node.metrics().await?;
    for (format, refused) in [("json", 600.0), ("elasticsearch", 300.0)] {
        assert_eq!(
            metric_sum(
                &metrics,
                "logcluster_ingest_rejected_total",
                &[&format!("format=\"{format}\""), "part_too_large"]
            ),
            refused,
            "{format}: {metrics}"
        );
    }
    assert_eq!(
        metric_sum(&metrics, "logcluster_storage_too_large_parts_total", &[]),
        3.0
    );
    let stored = node.query_all("t").await?;
    let mut messages: Vec<&str> = stored
        .iter()
        .filter_map(|i| i["message"].as_str())
        .collect();
    messages.sort_unstable();
    assert_eq!(messages, ["first", "good 2", "last"]);
    // The ids answered are those stored (the refused records still took their positions).
    let mut es_ids: Vec<String> = node
        .query_all("es")
        .await?
        .iter()
        .filter_map(|i| i["id"].as_str().map(str::to_owned))
        .collect();
    es_ids.sort_unstable();
    let mut answered: Vec<String> = [0, 301]
        .iter()
        .filter_map(|&k| items[k]["create"]["_id"].as_str().map(str::to_owned))
        .collect();
    answered.sort_unstable();
    assert_eq!(es_ids, answered);
    Ok(())
}

#[tokio::test]
async fn connections_past_the_limit_are_refused_and_slots_come_back() -> anyhow::Result<()> {
    let node = TestNode::start(|raw, _| raw.ingest.max_connections = 2).await?;
    let mut first = node.connect().await?;
    let mut second = node.connect().await?;
    assert_eq!(good_batch(&mut first, 1).await?.status, AckStatus::Accepted);
    assert_eq!(
        good_batch(&mut second, 2).await?.status,
        AckStatus::Accepted
    );
    // A third connection, framed or syslog, is closed as soon as it is accepted.
    assert!(node.connect().await.is_err(), "a third TLS connection");
    let mut syslog = tokio::net::TcpStream::connect(("127.0.0.1", node.port("syslog_tcp"))).await?;
    let _ = syslog.write_all(b"<13>refused line\n").await;
    common::closed_by_server(&mut syslog)
        .await
        .map_err(anyhow::Error::msg)?;
    let metrics = node.metrics().await?;
    assert_eq!(
        metric_sum(
            &metrics,
            "logcluster_ingest_protocol_errors_total",
            &["too_many_connections"]
        ),
        2.0,
        "{metrics}"
    );
    // The admitted connections were not disturbed; closing one frees its slot.
    assert_eq!(good_batch(&mut first, 3).await?.status, AckStatus::Accepted);
    drop(second);
    let mut third = common::eventually(
        "a slot to come back",
        std::time::Duration::from_secs(20),
        || async { node.connect().await.ok() },
    )
    .await?;
    assert_eq!(good_batch(&mut third, 4).await?.status, AckStatus::Accepted);
    let items = node.query_all("t").await?;
    assert_eq!(items.len(), 4, "{items:?}");
    Ok(())
}

/// Waits until `what` holds the node's whole 64 KiB budget.
async fn budget_held(node: &TestNode, what: &str) -> anyhow::Result<()> {
    common::eventually(
        &format!("{what} to hold the whole budget"),
        std::time::Duration::from_secs(20),
        || async {
            let metrics = node.metrics().await.ok()?;
            (metric_sum(&metrics, "logcluster_ingest_pending_bytes", &[]) >= 65536.0).then_some(())
        },
    )
    .await
}

/// A node for the stalled-client tests: its budget holds one full frame (64 KiB), and its
/// `ingest.frameTimeout` is long enough for the test to see a stalled request hold the
/// budget first, even on a loaded machine.
async fn stall_node() -> anyhow::Result<TestNode> {
    TestNode::start(|raw, _| {
        raw.ingest.frame_timeout =
            format!("{}ms", (3000.0 * logcluster_testkit::patience()) as u64);
        raw.ingest.max_frame_bytes = 64 * 1024;
        raw.ingest.max_pending_bytes = 64 * 1024;
    })
    .await
}

/// Reads an HTTP answer to its end (the server closes the connection): a 400.
async fn answered_400_then_closed(connection: &mut tokio::net::TcpStream) -> anyhow::Result<()> {
    let mut answer = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30).mul_f64(logcluster_testkit::patience()),
        connection.read_to_string(&mut answer),
    )
    .await??;
    anyhow::ensure!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    Ok(())
}

/// The protocol errors of `kind` a node's metrics count.
fn protocol_errors(metrics: &str, kind: &str) -> f64 {
    metric_sum(
        metrics,
        "logcluster_ingest_protocol_errors_total",
        &[&format!("kind=\"{kind}\"")],
    )
}

#[tokio::test]
async fn frames_that_trickle_past_the_frame_timeout_are_dropped_and_free_their_budget()
-> anyhow::Result<()> {
    // The budget holds one full frame: while a trickling frame holds it, nothing else fits.
    let node = stall_node().await?;
    // A header that stops after five bytes, and a full-size frame that stops after its
    // header and ten payload bytes.
    let mut header_only = node.connect().await?;
    let frame = encode_frame(Format::Raw, 1, "t", &vec![b'x'; 64 * 1024]);
    header_only.send_raw(&frame[..5]).await?;
    let mut trickle = node.connect().await?;
    let payload_at = frame.len() - 64 * 1024;
    trickle.send_raw(&frame[..payload_at + 10]).await?;
    // A good batch waits for budget until the trickling frame is dropped, then is stored.
    budget_held(&node, "the trickling frame").await?;
    let mut good = node.connect().await?;
    assert_eq!(good_batch(&mut good, 2).await?.status, AckStatus::Accepted);
    for stalled in [&mut header_only, &mut trickle] {
        common::closed_by_server(&mut stalled.stream)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    let metrics = node.metrics().await?;
    assert_eq!(protocol_errors(&metrics, "frame_timeout"), 2.0, "{metrics}");
    let items = node.query_all("t").await?;
    assert_eq!(items.len(), 1, "only the good batch: {items:?}");
    Ok(())
}

#[tokio::test]
async fn http_requests_that_trickle_are_cut_off_and_free_their_budget() -> anyhow::Result<()> {
    let node = stall_node().await?;
    let addr = node.http_addr();
    // A request head that stops halfway: the connection is closed.
    let mut head = tokio::net::TcpStream::connect(&addr).await?;
    head.write_all(b"POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\n")
        .await?;
    // A body declared at the whole budget that stops after ten bytes: it holds the budget
    // (other bodies are answered 429) until it is cut off.
    let mut body = tokio::net::TcpStream::connect(&addr).await?;
    body.write_all(
        format!(
            "POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nX-Logcluster-Tenant: t\r\nContent-Length: {}\r\n\r\n{{\"message\"",
            64 * 1024
        )
        .as_bytes(),
    )
    .await?;
    let good = br#"{"service":"ok","message":"good"}"#;
    let tenant = [("X-Logcluster-Tenant", "t")];
    budget_held(&node, "the trickling body").await?;
    let (status, _) = common::http(&addr, "POST", "/api/v1/ingest", &tenant, good).await?;
    assert_eq!(status, 429, "the budget is held by the trickling body");
    common::eventually(
        "a good request to be stored once the trickling body is cut off",
        std::time::Duration::from_secs(20),
        || async {
            let (status, _) = common::http(&addr, "POST", "/api/v1/ingest", &tenant, good)
                .await
                .ok()?;
            (status == 200).then_some(())
        },
    )
    .await?;
    common::closed_by_server(&mut head)
        .await
        .map_err(anyhow::Error::msg)?;
    // The cut-off body is answered with an error, then its connection closed.
    answered_400_then_closed(&mut body).await?;
    // The same on an ecosystem API, counted once, as a timeout.
    let mut loki = tokio::net::TcpStream::connect(&addr).await?;
    loki.write_all(
        b"POST /loki/api/v1/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"streams\"",
    )
    .await?;
    answered_400_then_closed(&mut loki).await?;
    let metrics = node.metrics().await?;
    assert_eq!(
        (
            protocol_errors(&metrics, "body_timeout"),
            protocol_errors(&metrics, "bad_body_encoding")
        ),
        (2.0, 0.0),
        "{metrics}"
    );
    let items = node.query_all("t").await?;
    assert_eq!(items.len(), 1, "only the good request: {items:?}");
    Ok(())
}

#[tokio::test]
async fn http_connections_past_the_limit_are_refused_and_slots_come_back() -> anyhow::Result<()> {
    let node = TestNode::start(|raw, _| raw.ingest.max_connections = 2).await?;
    let addr = node.http_addr();
    let health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    // Two connections take the two slots, and are served, keep-alive.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut connection = tokio::net::TcpStream::connect(&addr).await?;
        connection.write_all(health).await?;
        let mut head = [0u8; 12];
        connection.read_exact(&mut head).await?;
        assert_eq!(&head, b"HTTP/1.1 200");
        held.push(connection);
    }
    // Past them, a connection is served one request, then closed (probes and scrapes get
    // through while shippers hold every slot).
    let mut once = tokio::net::TcpStream::connect(&addr).await?;
    once.write_all(health).await?;
    let mut answer = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        once.read_to_string(&mut answer),
    )
    .await??;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Those are bounded too (at least 8 of them): past them, closed at once.
    for _ in 0..8 {
        held.push(tokio::net::TcpStream::connect(&addr).await?);
    }
    let mut refused = tokio::net::TcpStream::connect(&addr).await?;
    common::closed_by_server(&mut refused)
        .await
        .map_err(anyhow::Error::msg)?;
    drop(held);
    let metrics = common::eventually(
        "the HTTP slots to come back",
        std::time::Duration::from_secs(20),
        || async { node.metrics().await.ok() },
    )
    .await?;
    assert!(
        metric_sum(&metrics, "logcluster_http_refused_connections_total", &[]) >= 1.0,
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn idle_connections_are_closed_and_their_last_syslog_line_kept() -> anyhow::Result<()> {
    let node = TestNode::start(|raw, _| raw.ingest.idle_timeout = "300ms".into()).await?;
    // A framed client that goes quiet after a batch: answered, then let go.
    let mut framed = node.connect().await?;
    assert_eq!(
        good_batch(&mut framed, 1).await?.status,
        AckStatus::Accepted
    );
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(30).mul_f64(logcluster_testkit::patience()),
        framed.read_ack(),
    )
    .await?;
    assert!(
        matches!(closed, Ok(None) | Err(_)),
        "the idle connection is closed: {closed:?}"
    );
    // A syslog sender that stops in the middle of a line: the line is kept.
    let mut syslog = tokio::net::TcpStream::connect(("127.0.0.1", node.port("syslog_tcp"))).await?;
    syslog.write_all(b"<13>the last words").await?;
    common::closed_by_server(&mut syslog)
        .await
        .map_err(anyhow::Error::msg)?;
    node.stored_when("default", "the unfinished line to be stored", |items| {
        items.iter().any(|i| i["message"] == "the last words")
    })
    .await?;
    let metrics = node.metrics().await?;
    assert_eq!(
        metric_sum(&metrics, "logcluster_ingest_idle_closes_total", &[]),
        2.0,
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn a_node_raises_its_open_file_limit_to_hold_many_streams() -> anyhow::Result<()> {
    // Each stream keeps its WAL and segments open. Containers often start with a soft limit
    // of 1024 under a far larger hard one; here the node inherits a soft limit of 256.
    let (_, hard) = rlimit::Resource::NOFILE.get()?;
    anyhow::ensure!(
        hard > 2048,
        "the hard open-file limit ({hard}) leaves nothing to raise"
    );
    rlimit::Resource::NOFILE.set(256, hard)?;
    let node = TestNode::start(|_, _| {}).await?;
    let pid = node.process.as_ref().expect("running").pid();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .expect("a soft limit");
    assert_eq!(soft, hard, "{limits}");
    // 300 services: more open files than 256 allow, stored at once.
    let payload: String = (0..300)
        .map(|k| format!("{{\"service\":\"svc-{k}\",\"message\":\"line {k}\"}}\n"))
        .collect();
    let mut client = node.connect().await?;
    let ack = client
        .roundtrip(Format::Json, 1, "many", payload.as_bytes())
        .await?;
    assert_eq!(
        (ack.status, ack.accepted),
        (AckStatus::Accepted, 300),
        "{ack:?}"
    );
    assert_eq!(node.query_all("many").await?.len(), 300);
    Ok(())
}

/// Two nodes on one data directory would interleave their WAL writes: the second refuses to
/// start and names the first, which carries on; once the first is gone (kill -9), a node
/// starts on the directory and finds everything the first acknowledged.
#[tokio::test]
async fn a_second_node_on_the_same_data_directory_refuses_to_start() -> anyhow::Result<()> {
    let mut node = TestNode::start(|_, _| {}).await?;
    let mut client = node.connect().await?;
    assert_eq!(
        good_batch(&mut client, 1).await?.status,
        AckStatus::Accepted
    );
    let first = node.process.as_ref().map(|p| p.pid()).unwrap_or_default();
    let (ok, stderr) = common::run_to_end(&[
        "node".into(),
        "--config".into(),
        node.config_path.clone().into(),
    ])
    .await?;
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("in use by another LogCluster node")
            && stderr.contains(&format!("pid {first}")),
        "{stderr}"
    );
    assert_eq!(
        good_batch(&mut client, 2).await?.status,
        AckStatus::Accepted
    );
    node.kill_9()?;
    node.spawn().await?;
    let messages: Vec<String> = node
        .query_all("t")
        .await?
        .iter()
        .filter_map(|item| item["message"].as_str().map(str::to_string))
        .collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    Ok(())
}

/// A node whose stderr is a pipe nobody reads any more (the log shipper it was piped into
/// exited) keeps serving and still stops cleanly on SIGTERM: a log line it cannot write is
/// dropped. The log subscriber used to report the failed write with `eprint!`, which panicked
/// on the same broken pipe in whatever task logged: at start the node itself, later the task
/// that turns SIGTERM into a graceful shutdown (the node then ignored SIGTERM).
#[tokio::test]
async fn a_node_whose_log_pipe_is_closed_keeps_serving_and_stops_on_sigterm() -> anyhow::Result<()>
{
    use tokio::io::AsyncBufReadExt;
    let mut node = TestNode::start(|_, _| {}).await?;
    node.terminate().await?;
    let ready = node.dir.path().join("piped-ready.json");
    let mut child = tokio::process::Command::new(logcluster_testkit::binary_path("logcluster"))
        .arg("node")
        .arg("--config")
        .arg(&node.config_path)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    // Read one line, then close the pipe: every later line (the stats line each second, the
    // shutdown's) meets a broken pipe.
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("piped")).lines();
    lines.next_line().await?;
    drop(lines);
    let port = common::eventually("the ready-file", std::time::Duration::from_secs(30), || {
        let ready = ready.clone();
        async move {
            let text = std::fs::read_to_string(&ready).ok()?;
            let value: serde_json::Value = serde_json::from_str(&text).ok()?;
            value["ports"]["ingest"].as_u64()
        }
    })
    .await?;
    // Past a few stats lines, it still takes batches.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let mut client = FrameClient::connect(u16::try_from(port)?, &node.ca).await?;
    assert_eq!(
        good_batch(&mut client, 7).await?.status,
        AckStatus::Accepted
    );
    let pid = child.id().expect("running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    assert!(status.success());
    let exit = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait())
        .await
        .map_err(|_| anyhow::anyhow!("the node ignored SIGTERM with its log pipe closed"))??;
    assert!(exit.success(), "{exit}");
    Ok(())
}
