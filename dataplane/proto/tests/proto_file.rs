//! proto/logcluster.proto documents the wire types for other languages; this checks that every
//! field declared there has the same tag in the Rust definitions, by encoding a value with one
//! field set and reading the tag off the wire.

use std::collections::BTreeMap;

use logcluster_proto::{FieldValue, LogBatch, LogEntry};
use prost::Message;

fn declared_tags(message: &str) -> BTreeMap<String, u32> {
    let text = include_str!("../../../proto/logcluster.proto");
    let body = text
        .split(&format!("message {message} {{"))
        .nth(1)
        .and_then(|rest| rest.split("\n}").next())
        .expect("message is declared");
    body.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && l.contains('=') && l.ends_with(';'))
        .map(|l| {
            let (left, right) = l.split_once('=').expect("field line");
            let name = left
                .split_whitespace()
                .last()
                .expect("field name")
                .to_string();
            let tag = right
                .trim()
                .trim_end_matches(';')
                .trim()
                .parse()
                .expect("tag number");
            (name, tag)
        })
        .collect()
}

fn first_tag(bytes: &[u8]) -> u32 {
    u32::from(bytes[0] >> 3)
}

#[test]
fn log_entry_tags_match_the_proto_file() {
    let tags = declared_tags("LogEntry");
    let cases: Vec<(&str, LogEntry)> = vec![
        (
            "id",
            LogEntry {
                id: "x".into(),
                ..Default::default()
            },
        ),
        (
            "timestamp",
            LogEntry {
                timestamp: 1,
                ..Default::default()
            },
        ),
        (
            "received_at",
            LogEntry {
                received_at: 1,
                ..Default::default()
            },
        ),
        (
            "tenant",
            LogEntry {
                tenant: "x".into(),
                ..Default::default()
            },
        ),
        (
            "service",
            LogEntry {
                service: "x".into(),
                ..Default::default()
            },
        ),
        (
            "level",
            LogEntry {
                level: 3,
                ..Default::default()
            },
        ),
        (
            "message",
            LogEntry {
                message: "x".into(),
                ..Default::default()
            },
        ),
        (
            "host",
            LogEntry {
                host: "x".into(),
                ..Default::default()
            },
        ),
        (
            "trace_id",
            LogEntry {
                trace_id: "x".into(),
                ..Default::default()
            },
        ),
        (
            "fields",
            LogEntry {
                fields: [("k".to_string(), FieldValue::int(1))].into(),
                ..Default::default()
            },
        ),
    ];
    assert_eq!(
        cases.len(),
        tags.len(),
        "every declared field is covered: {tags:?}"
    );
    for (name, entry) in cases {
        assert_eq!(
            Some(&first_tag(&entry.encode_to_vec())),
            tags.get(name),
            "field {name}"
        );
    }
    let batch = LogBatch {
        entries: vec![LogEntry::default()],
    };
    assert_eq!(
        Some(&first_tag(&batch.encode_to_vec())),
        declared_tags("LogBatch").get("entries")
    );
}
