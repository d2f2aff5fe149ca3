//! The pure builders against golden files: each fixture LogCluster in tests/fixtures renders
//! to exactly tests/golden/<fixture>.yaml (UPDATE_GOLDEN=1 rewrites them after a deliberate
//! change; review the diff). The golden files hold one JSON document per object. Every rendered object also deserializes into its Kubernetes type,
//! and the node configurations validate with the data plane's own parser.

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use logcluster_operator::build::{self, StoragePlan, TlsMaterial};
use logcluster_operator::crd::LogCluster;
use serde_json::Value;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name)
}

fn material() -> TlsMaterial {
    TlsMaterial {
        ca_pem: "-----BEGIN CERTIFICATE-----\nfixture-ca\n-----END CERTIFICATE-----\n".into(),
        cert_pem: "-----BEGIN CERTIFICATE-----\nfixture-node\n-----END CERTIFICATE-----\n".into(),
        key_pem: "-----BEGIN PRIVATE KEY-----\nfixture-key\n-----END PRIVATE KEY-----\n".into(),
        not_after: "2027-11-23T00:00:00Z".into(),
    }
}

fn typed(object: &Value) -> Result<(), String> {
    let o = object.clone();
    let result = match object["kind"].as_str() {
        Some("ConfigMap") => serde_json::from_value::<ConfigMap>(o).map(|_| ()),
        Some("Secret") => serde_json::from_value::<Secret>(o).map(|_| ()),
        Some("ServiceAccount") => serde_json::from_value::<ServiceAccount>(o).map(|_| ()),
        Some("Role") => serde_json::from_value::<Role>(o).map(|_| ()),
        Some("RoleBinding") => serde_json::from_value::<RoleBinding>(o).map(|_| ()),
        Some("Service") => serde_json::from_value::<Service>(o).map(|_| ()),
        Some("StatefulSet") => serde_json::from_value::<StatefulSet>(o).map(|_| ()),
        Some("Deployment") => serde_json::from_value::<Deployment>(o).map(|_| ()),
        Some("PodDisruptionBudget") => serde_json::from_value::<PodDisruptionBudget>(o).map(|_| ()),
        other => return Err(format!("unexpected kind {other:?}")),
    };
    result.map_err(|e| format!("{}: {e}", build::object_key(object)))
}

#[test]
fn fixtures_render_to_their_golden_files() {
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(dir("fixtures"))
        .expect("fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 2, "fixtures missing");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for fixture in fixtures {
        let lc: LogCluster =
            serde_yaml::from_str(&std::fs::read_to_string(&fixture).expect("read"))
                .expect("a LogCluster");
        logcluster_operator::validate::validate(&lc.spec).expect("fixtures are valid");
        let plan = StoragePlan {
            statefulset_replicas: lc.spec.storage.replicas,
            leaving: vec![],
        };
        let objects =
            build::all(&lc, &plan, Some(&material()), &material().not_after).expect("builds");
        let mut rendered = String::new();
        for object in &objects {
            typed(object).expect("a valid Kubernetes object");
            // JSON documents (valid YAML) so no YAML 1.1 reader takes a string for a timestamp.
            rendered.push_str("---\n");
            rendered.push_str(&serde_json::to_string_pretty(object).expect("json"));
            rendered.push('\n');
        }
        // The ConfigMap's node configurations are accepted by the data plane.
        let data = &objects[0]["data"];
        for role in ["storage.yaml", "ingestor.yaml", "query.yaml"] {
            let raw: logcluster_config::RawNodeConfig =
                serde_yaml::from_str(data[role].as_str().expect("text")).expect("parses");
            raw.validate()
                .unwrap_or_else(|e| panic!("{role} of {}: {e}", fixture.display()));
        }
        let golden = dir("golden").join(fixture.file_name().expect("name"));
        if update {
            std::fs::create_dir_all(dir("golden")).expect("dir");
            std::fs::write(&golden, &rendered).expect("write golden");
            continue;
        }
        let expected = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("{} missing: run with UPDATE_GOLDEN=1", golden.display()));
        assert!(
            expected == rendered,
            "{} differs from the builders' output; run with UPDATE_GOLDEN=1 and review the diff",
            golden.display()
        );
    }
}
