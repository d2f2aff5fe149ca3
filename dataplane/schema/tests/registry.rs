//! Schemas from real YAML files in temp folders: every schema kind accepts and refuses,
//! broken definitions are isolated, and a watched folder reloads on change.

use std::time::Duration;

use base64::Engine;
use logcluster_schema::{SchemaRegistry, watch_dir};
use prost::Message;
use serde_json::json;

fn write(dir: &std::path::Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write schema file");
}

const JSON_SCHEMA: &str = "apiVersion: logcluster.io/v1alpha1\nkind: LogSchema\nmetadata: {name: payments}\nspec:\n  selector: {services: [payment]}\n  format: json\n  version: 2\n  schema:\n    type: object\n    required: [message, amount]\n    properties:\n      amount: {type: number, minimum: 0}\n      level: {enum: [INFO, WARN, ERROR]}\n";

#[test]
fn json_schema_accepts_good_records_and_names_the_problem_in_bad_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "payments.yaml", JSON_SCHEMA);
    let registry = SchemaRegistry::new();
    let report = registry.load_dir(dir.path()).expect("load");
    assert_eq!(report.loaded, 1);
    assert!(registry.current().has_schema_for("payment", "json"));
    assert!(!registry.current().has_schema_for("search", "json"));
    registry
        .current()
        .validate(
            "payment",
            "json",
            &json!({"message": "ok", "amount": 12.5, "level": "INFO"}),
        )
        .expect("valid record");
    let violation = registry
        .current()
        .validate("payment", "json", &json!({"message": "bad", "amount": -1}))
        .expect_err("negative amount");
    assert_eq!(violation.schema, "payments");
    assert_eq!(violation.reason, "json_schema");
    assert!(
        violation.message.contains("/amount"),
        "{}",
        violation.message
    );
    let missing = registry
        .current()
        .validate("payment", "json", &json!({"message": "no amount"}))
        .expect_err("required");
    assert!(missing.message.contains("amount"), "{}", missing.message);
    // Other services are not affected.
    registry
        .current()
        .validate("search", "json", &json!({}))
        .expect("no schema applies");
}

#[test]
fn avro_and_protobuf_schemas_validate_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "avro.yml",
        "apiVersion: logcluster.io/v1alpha1\nkind: LogSchema\nmetadata: {name: orders-avro}\nspec:\n  selector: {services: [orders]}\n  format: avro\n  schema: {type: record, name: Order, fields: [{name: message, type: string}, {name: order_id, type: long}, {name: note, type: string, default: \"\"}]}\n",
    );
    let file = prost_types::FileDescriptorProto {
        name: Some("audit.proto".into()),
        package: Some("acme".into()),
        syntax: Some("proto3".into()),
        message_type: vec![prost_types::DescriptorProto {
            name: Some("Audit".into()),
            field: vec![
                prost_types::FieldDescriptorProto {
                    name: Some("message".into()),
                    number: Some(1),
                    r#type: Some(prost_types::field_descriptor_proto::Type::String as i32),
                    label: Some(prost_types::field_descriptor_proto::Label::Optional as i32),
                    json_name: Some("message".into()),
                    ..Default::default()
                },
                prost_types::FieldDescriptorProto {
                    name: Some("user_id".into()),
                    number: Some(2),
                    r#type: Some(prost_types::field_descriptor_proto::Type::Int64 as i32),
                    label: Some(prost_types::field_descriptor_proto::Label::Optional as i32),
                    json_name: Some("userId".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    let set = prost_types::FileDescriptorSet { file: vec![file] };
    let encoded = base64::engine::general_purpose::STANDARD.encode(set.encode_to_vec());
    write(
        dir.path(),
        "proto.yaml",
        &format!(
            "apiVersion: logcluster.io/v1alpha1\nkind: LogSchema\nmetadata: {{name: audit}}\nspec:\n  selector: {{services: [audit]}}\n  format: protobuf\n  schema: {{descriptorSet: \"{encoded}\", messageName: acme.Audit}}\n"
        ),
    );
    let registry = SchemaRegistry::new();
    assert_eq!(registry.load_dir(dir.path()).expect("load").loaded, 2);
    registry
        .current()
        .validate("orders", "json", &json!({"message": "m", "order_id": 7}))
        .expect("avro ok");
    let bad = registry
        .current()
        .validate(
            "orders",
            "json",
            &json!({"message": "m", "order_id": "seven"}),
        )
        .expect_err("avro type");
    assert_eq!(bad.reason, "avro_mismatch");
    registry
        .current()
        .validate("orders", "json", &json!({"message": "m"}))
        .expect_err("avro missing field without default");
    registry
        .current()
        .validate(
            "audit",
            "syslog",
            &json!({"message": "login", "user_id": 42}),
        )
        .expect("protobuf ok");
    let bad = registry
        .current()
        .validate(
            "audit",
            "syslog",
            &json!({"message": "login", "unknown": 1}),
        )
        .expect_err("unknown field");
    assert_eq!(bad.reason, "protobuf_mismatch");
    assert!(bad.message.contains("acme.Audit"), "{}", bad.message);
}

#[test]
fn a_broken_schema_is_reported_and_the_previous_good_version_stays() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "payments.yaml", JSON_SCHEMA);
    write(
        dir.path(),
        "other.yaml",
        "apiVersion: logcluster.io/v1alpha1\nkind: LogSchema\nmetadata: {name: search}\nspec:\n  format: json\n  selector: {formats: [syslog]}\n  schema: {type: object}\n---\napiVersion: logcluster.io/v1alpha1\nkind: LogSchema\nmetadata: {name: typo}\nspec:\n  format: json\n  shcema: {}\n",
    );
    let registry = SchemaRegistry::new();
    let report = registry.load_dir(dir.path()).expect("load");
    assert_eq!((report.loaded, report.failed), (2, 1));
    let typo = registry
        .statuses()
        .into_iter()
        .find(|s| !s.accepted)
        .expect("failed status");
    assert!(
        typo.error.as_deref().is_some_and(|e| e.contains("shcema")),
        "{typo:?}"
    );
    assert!(
        registry.current().has_schema_for("anything", "syslog"),
        "format selector"
    );
    assert!(!registry.current().has_schema_for("anything", "json"));
    // Break the payments schema: the old version stays in force and the error is visible.
    write(
        dir.path(),
        "payments.yaml",
        &JSON_SCHEMA.replace("type: number", "type: 17"),
    );
    registry.load_dir(dir.path()).expect("reload");
    let status = registry
        .statuses()
        .into_iter()
        .find(|s| s.name == "payments")
        .expect("status");
    assert!(!status.accepted && status.active, "{status:?}");
    assert!(
        registry
            .current()
            .validate("payment", "json", &json!({"message": "m", "amount": -5}))
            .is_err()
    );
}

#[tokio::test]
async fn a_watched_folder_reloads_added_changed_and_removed_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = SchemaRegistry::new();
    registry.load_dir(dir.path()).expect("empty folder");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(watch_dir(
        registry.clone(),
        dir.path().to_path_buf(),
        Duration::from_millis(50),
        async {
            let _ = stop_rx.await;
        },
    ));
    let wait_for = |want: bool| {
        let registry = registry.clone();
        async move {
            for _ in 0..200 {
                if registry.current().has_schema_for("payment", "json") == want {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            false
        }
    };
    write(dir.path(), "payments.yaml", JSON_SCHEMA);
    assert!(wait_for(true).await, "added file picked up");
    write(
        dir.path(),
        "payments.yaml",
        &JSON_SCHEMA.replace("services: [payment]", "services: [billing]"),
    );
    assert!(wait_for(false).await, "changed selector picked up");
    assert!(registry.current().has_schema_for("billing", "json"));
    std::fs::remove_file(dir.path().join("payments.yaml")).expect("remove");
    let mut gone = false;
    for _ in 0..200 {
        if !registry.current().has_schema_for("billing", "json") {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(gone, "removed file picked up");
    let _ = stop_tx.send(());
    task.await.expect("watcher stops on shutdown");
}
