//! The query API end to end: filters, query strings, cursor pagination over equal
//! timestamps, counts by level per interval, tenant isolation, and schema hot reload.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::TestNode;
use logcluster_proto::frame::{AckStatus, Format};
use serde_json::json;

#[tokio::test]
async fn pagination_filters_stats_and_tenants_agree_with_what_was_sent() -> anyhow::Result<()> {
    let node = TestNode::start(|raw, _| raw.storage.block_target_bytes = 8 * 1024).await?;
    let mut client = node.connect().await?;
    let levels = ["INFO", "INFO", "WARN", "ERROR", "DEBUG"];
    let services = ["payment", "checkout", "search"];
    let mut sent = Vec::new();
    for batch in 0..20u64 {
        let mut lines = Vec::new();
        for i in 0..50u64 {
            let n = batch * 50 + i;
            // 25 distinct timestamps only: many entries share one.
            let ts = format!("2024-05-01T14:{:02}:00Z", n % 25);
            let level = levels[(n % 5) as usize];
            let service = services[(n % 3) as usize];
            let message = if n % 7 == 0 {
                format!("upstream timeout after 3000ms #{n}")
            } else {
                format!("request ok #{n}")
            };
            lines.push(
                json!({"timestamp": ts, "level": level, "service": service, "message": message})
                    .to_string(),
            );
            sent.push((n, ts, level, service, message));
        }
        let ack = client
            .roundtrip(Format::Json, batch + 1, "acme", lines.join("\n").as_bytes())
            .await?;
        assert_eq!(ack.status, AckStatus::Accepted);
    }
    // Another tenant's data must never show up.
    let ack = client.roundtrip(Format::Json, 99, "globex", b"{\"service\":\"payment\",\"level\":\"ERROR\",\"message\":\"upstream timeout in globex\"}").await?;
    assert_eq!(ack.status, AckStatus::Accepted);

    // Pagination with a small page: every entry exactly once, newest first.
    let mut seen = Vec::new();
    let mut cursor = serde_json::Value::Null;
    let mut previous: Option<(String, String)> = None;
    loop {
        let page = node
            .query(json!({"tenant_id": "acme", "limit": 33, "cursor": cursor}))
            .await?;
        for item in page["items"].as_array().expect("items") {
            let key = (
                item["timestamp"].as_str().unwrap_or_default().to_string(),
                item["id"].as_str().unwrap_or_default().to_string(),
            );
            if let Some(prev) = &previous {
                assert!(
                    key < *prev,
                    "newest first with a stable order: {key:?} after {prev:?}"
                );
            }
            previous = Some(key);
            seen.push(item["message"].as_str().unwrap_or_default().to_string());
        }
        cursor = page["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    assert_eq!(seen.len(), sent.len());
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), sent.len());

    // Filters and the query string, against ground truth.
    let expected: HashSet<String> = sent
        .iter()
        .filter(|(_, ts, level, service, message)| {
            *service == "payment"
                && *level == "ERROR"
                && message.contains("timeout")
                && ts.as_str() >= "2024-05-01T14:05:00Z"
                && ts.as_str() < "2024-05-01T14:20:00Z"
        })
        .map(|(_, _, _, _, m)| m.clone())
        .collect();
    assert!(!expected.is_empty());
    let by_fields = node
        .query(json!({"tenant_id": "acme", "service": "payment", "level": "ERROR", "contains": "timeout",
                      "from_ts": "2024-05-01T14:05:00Z", "to_ts": "2024-05-01T14:20:00Z", "limit": 1000}))
        .await?;
    let got: HashSet<String> = by_fields["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["message"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(got, expected);
    for key in ["objects_read", "events_scanned", "duration_ms"] {
        assert!(
            by_fields["stats"][key].is_u64(),
            "stats.{key}: {}",
            by_fields["stats"]
        );
    }
    assert_eq!(by_fields["stats"]["partial"], false);
    let by_query = node
        .query(json!({"tenant_id": "acme", "query": "service:payment AND level:ERROR AND \"timeout\"",
                      "from_ts": "2024-05-01T14:05:00Z", "to_ts": "2024-05-01T14:20:00Z", "limit": 1000}))
        .await?;
    let got: HashSet<String> = by_query["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["message"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(got, expected);

    // Counts by level per interval.
    let (status, stats) = common::http(
        &node.http_addr(),
        "GET",
        "/api/v1/stats?tenant_id=acme&interval=5m",
        &[],
        b"",
    )
    .await?;
    assert_eq!(status, 200, "{stats}");
    let buckets = stats["buckets"].as_array().expect("buckets");
    assert_eq!(buckets.len(), 5, "25 minutes in 5-minute buckets");
    for level in ["INFO", "WARN", "ERROR", "DEBUG"] {
        let truth = sent.iter().filter(|s| s.2 == level).count() as u64;
        assert_eq!(stats["totals"][level].as_u64(), Some(truth), "{level}");
    }
    let first_truth = sent
        .iter()
        .filter(|s| s.1.as_str() < "2024-05-01T14:05:00Z" && s.2 == "INFO")
        .count() as u64;
    assert_eq!(buckets[0]["counts"]["INFO"].as_u64(), Some(first_truth));

    // Counts of the entries holding a substring, by level. With a day's interval every
    // block lies in one bucket and is counted from its message templates where they decide
    // the needle (fixed text, or no value can hold it); the rest are read row by row.
    for needle in ["timeout", "TIMEOUT", "ok #", "3000ms", "#14", "1", "zzz"] {
        for (interval, services) in [("1d", ""), ("5m", ""), ("1d", "&service=payment,search")] {
            let (status, stats) = common::http(
                &node.http_addr(),
                "GET",
                &format!(
                    "/api/v1/stats?tenant_id=acme&interval={interval}&contains={}{services}",
                    needle.replace('#', "%23").replace(' ', "%20")
                ),
                &[],
                b"",
            )
            .await?;
            assert_eq!(status, 200, "{stats}");
            for level in ["INFO", "WARN", "ERROR", "DEBUG"] {
                let truth = sent
                    .iter()
                    .filter(|s| {
                        s.2 == level
                            && s.4
                                .to_ascii_lowercase()
                                .contains(&needle.to_ascii_lowercase())
                            && (services.is_empty() || s.3 == "payment" || s.3 == "search")
                    })
                    .count() as u64;
                assert_eq!(
                    stats["totals"][level].as_u64().unwrap_or(0),
                    truth,
                    "{needle} {interval} {services} {level}: {stats}"
                );
            }
        }
    }

    // Tenant isolation, and a clear error for a bad query.
    let globex = node.query_all("globex").await?;
    assert_eq!(globex.len(), 1);
    let (status, answer) = common::http(
        &node.http_addr(),
        "POST",
        "/v1/query",
        &[],
        json!({"query": "service:(payment"}).to_string().as_bytes(),
    )
    .await?;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("query")),
        "{answer}"
    );
    // Error answers are counted by route and status; successful ones are not.
    let (status, _) = common::http(
        &node.http_addr(),
        "GET",
        "/api/v1/stats?interval=forever",
        &[],
        b"",
    )
    .await?;
    assert_eq!(status, 400);
    let metrics = node.metrics().await?;
    let errors =
        |needles: &[&str]| common::metric_sum(&metrics, "logcluster_query_errors_total", needles);
    assert_eq!(
        errors(&["route=\"/v1/query\"", "status=\"400\""]),
        1.0,
        "{metrics}"
    );
    assert_eq!(errors(&["route=\"/api/v1/stats\"", "status=\"400\""]), 1.0);
    assert_eq!(errors(&[]), 2.0, "only the two bad requests are errors");
    Ok(())
}

#[tokio::test]
async fn schema_changes_are_picked_up_without_a_restart() -> anyhow::Result<()> {
    let node = TestNode::start(|raw, dir| {
        let _ = std::fs::create_dir_all(dir.join("schemas"));
        raw.ingest.schema_dir = Some(dir.join("schemas"));
        raw.ingest.schema_poll_interval = "200ms".into();
    })
    .await?;
    let schema_dir = node.dir.path().join("schemas");
    let mut client = node.connect().await?;
    let entry = b"{\"service\":\"checkout\",\"message\":\"card declined\"}";
    assert_eq!(
        client.roundtrip(Format::Json, 1, "s", entry).await?.status,
        AckStatus::Accepted
    );
    std::fs::write(
        schema_dir.join("checkout.yaml"),
        "apiVersion: logcluster.io/v1alpha1\nkind: LogSchema\nmetadata: {name: checkout-events}\nspec:\n  selector: {services: [checkout]}\n  format: json\n  schema: {type: object, required: [order_id]}\n",
    )?;
    let mut batch = 10;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        batch += 1;
        let ack = client.roundtrip(Format::Json, batch, "s", entry).await?;
        if ack.status == AckStatus::Rejected {
            assert!(ack.error.contains("checkout-events"), "{}", ack.error);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new schema was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, schemas) = common::http(&node.http_addr(), "GET", "/api/v1/schemas", &[], b"").await?;
    assert_eq!(
        schemas["schemas"][0]["name"], "checkout-events",
        "{schemas}"
    );
    assert_eq!(schemas["schemas"][0]["accepted"], true);
    std::fs::remove_file(schema_dir.join("checkout.yaml"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        batch += 1;
        if client
            .roundtrip(Format::Json, batch, "s", entry)
            .await?
            .status
            == AckStatus::Accepted
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the removed schema still rejects"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// `contains` ignores case beyond ASCII, as the query language's free text does: `ÜBER`
/// finds `über` and `Über` (and not `uber`), in searches and in counts, whether the
/// entries are still in the tail or already in blocks.
#[tokio::test]
async fn contains_ignores_case_beyond_ascii() -> anyhow::Result<()> {
    let node = TestNode::start(|raw, _| raw.storage.block_target_bytes = 1024).await?;
    let messages = [
        "Übertragung fehlgeschlagen",
        "über den Wolken",
        "ÜBER ALLES",
        "uber eats",
        "Ärger mit Straße",
        "plain ascii",
        "ΟΔΥΣΣΕΑΣ στην Ιθάκη",
    ];
    // Five rounds in two batches: the first batch is cut into a block of 1 KiB, the second
    // stays in the tail.
    for rounds in [4, 1] {
        let body: String = (0..rounds)
            .flat_map(|_| messages.iter())
            .map(|m| {
                format!(
                    "{}\n",
                    json!({"service": "de", "level": "WARN", "message": m})
                )
            })
            .collect();
        let (status, answer) = common::http(
            &node.http_addr(),
            "POST",
            "/api/v1/ingest",
            &[("X-Logcluster-Tenant", "u")],
            body.as_bytes(),
        )
        .await?;
        assert_eq!(status, 200, "{answer}");
    }
    for (needle, expected) in [
        ("ÜBER", 15),
        ("über", 15),
        ("äRGER", 5),
        ("STRASSE", 0),
        ("eats", 5),
        // Lower-cased as a whole word, ΟΔΥΣ would end in a final sigma (ς).
        ("ΟΔΥΣ", 5),
        ("ιθάκη", 5),
    ] {
        let page = node
            .query(json!({"tenant_id": "u", "contains": needle, "limit": 100}))
            .await?;
        let found = page["items"].as_array().map_or(0, Vec::len);
        assert_eq!(found, expected, "{needle}: {page}");
        // The query language's free text matches the same entries.
        let page = node
            .query(json!({"tenant_id": "u", "query": format!("\"{needle}\""), "limit": 100}))
            .await?;
        let found = page["items"].as_array().map_or(0, Vec::len);
        assert_eq!(found, expected, "query {needle}: {page}");
        let (status, stats) = common::http(
            &node.http_addr(),
            "GET",
            &format!(
                "/api/v1/stats?tenant_id=u&interval=1d&contains={}",
                needle
                    .bytes()
                    .map(|b| format!("%{b:02X}"))
                    .collect::<String>()
            ),
            &[],
            b"",
        )
        .await?;
        assert_eq!(status, 200, "{stats}");
        assert_eq!(
            stats["totals"]["WARN"].as_u64().unwrap_or(0),
            expected as u64,
            "{needle}: {stats}"
        );
    }
    Ok(())
}
