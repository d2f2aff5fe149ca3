//! The committed CRDs are what the Rust types generate (and the chart ships the same files);
//! the samples in manifests/samples validate against those CRD schemas and against the
//! operator's own validation.

use std::path::PathBuf;

use logcluster_operator::crd::{LogCluster, LogSchema};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn committed_crds_match_the_types_and_the_chart() {
    for (file, yaml) in logcluster_operator::crd_yaml() {
        for dir in ["crds", "charts/logcluster-operator/crds"] {
            let path = repo().join(dir).join(file);
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == yaml,
                "{} is stale: run `cargo run -p logcluster-operator -- crd --out crds` and copy crds/*.yaml into charts/logcluster-operator/crds/",
                path.display()
            );
        }
    }
}

fn schema_of(file: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(repo().join("crds").join(file)).expect("crd");
    let crd: serde_json::Value = serde_yaml::from_str(&text).expect("yaml");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

#[test]
fn samples_validate_against_the_crd_schemas_and_the_operator() {
    let clusters =
        jsonschema::validator_for(&schema_of("logcluster.io_logclusters.yaml")).expect("schema");
    let schemas =
        jsonschema::validator_for(&schema_of("logcluster.io_logschemas.yaml")).expect("schema");
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("manifests/samples")).expect("samples") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        let value: serde_json::Value = serde_yaml::from_str(&text).expect("yaml");
        match value["kind"].as_str() {
            Some("LogCluster") => {
                if let Err(error) = clusters.validate(&value) {
                    panic!("{}: {error}", path.display());
                }
                let lc: LogCluster = serde_json::from_value(value).expect("typed");
                logcluster_operator::validate::validate(&lc.spec)
                    .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
            }
            Some("LogSchema") => {
                if let Err(error) = schemas.validate(&value) {
                    panic!("{}: {error}", path.display());
                }
                let schema: LogSchema = serde_json::from_value(value).expect("typed");
                logcluster_operator::schema::check(&schema)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            other => panic!("{}: unexpected kind {other:?}", path.display()),
        }
        seen += 1;
    }
    assert!(seen >= 3);
    // And the schema rejects what it must.
    let bad = serde_json::json!({"apiVersion": "logcluster.io/v1alpha1", "kind": "LogCluster",
        "metadata": {"name": "x"}, "spec": {"storage": {"replicas": "three"}}});
    assert!(clusters.validate(&bad).is_err());
}
