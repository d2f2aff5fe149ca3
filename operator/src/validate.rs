//! Pure validation of a LogCluster spec: every problem is reported with the field it is in,
//! so the Degraded condition tells the user exactly what to fix.

use crate::crd::LogClusterSpec;

/// Checks a spec; `Err` lists every problem found.
pub fn validate(spec: &LogClusterSpec) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let r = &spec.replication;
    if r.factor == 0 || r.write_quorum == 0 || r.read_quorum == 0 {
        problems.push("replication: factor, writeQuorum and readQuorum must be at least 1".into());
    }
    if r.write_quorum > r.factor {
        problems.push(format!(
            "replication.writeQuorum ({}) cannot exceed replication.factor ({})",
            r.write_quorum, r.factor
        ));
    }
    if r.read_quorum > r.factor {
        problems.push(format!(
            "replication.readQuorum ({}) cannot exceed replication.factor ({})",
            r.read_quorum, r.factor
        ));
    }
    if r.write_quorum + r.read_quorum <= r.factor {
        problems.push(format!(
            "replication: writeQuorum + readQuorum ({}) must exceed factor ({}) so every read sees the latest acknowledged write",
            r.write_quorum + r.read_quorum,
            r.factor
        ));
    }
    if spec.storage.replicas < r.factor as i32 {
        problems.push(format!(
            "storage.replicas ({}) must be at least replication.factor ({})",
            spec.storage.replicas, r.factor
        ));
    }
    for (role, replicas) in [
        ("ingestor", spec.ingestor.replicas),
        ("query", spec.query.replicas),
    ] {
        if replicas < 0 {
            problems.push(format!("{role}.replicas must not be negative"));
        }
    }
    if !is_quantity(&spec.storage.size) {
        problems.push(format!(
            "storage.size {:?} is not a quantity like 10Gi",
            spec.storage.size
        ));
    }
    if let Some(age) = &spec.retention.max_age
        && logcluster_config::parse_duration(age).is_none()
    {
        problems.push(format!(
            "retention.maxAge {age:?} is not a duration like 7d"
        ));
    }
    for (field, value) in [
        ("services.ingestorType", &spec.services.ingestor_type),
        ("services.queryType", &spec.services.query_type),
    ] {
        if !matches!(value.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer") {
            problems.push(format!(
                "{field} {value:?} must be ClusterIP, NodePort or LoadBalancer"
            ));
        }
    }
    let p = &spec.services.ports;
    for (field, port) in [
        ("ingest", p.ingest),
        ("udp", p.udp),
        ("syslog", p.syslog),
        ("syslogTls", p.syslog_tls),
        ("http", p.http),
        ("cluster", p.cluster),
    ] {
        if !(1..=65535).contains(&port) {
            problems.push(format!("services.ports.{field} ({port}) is not a port"));
        }
    }
    let known_node_ports = [
        "ingestor.ingest",
        "ingestor.udp",
        "ingestor.syslog",
        "ingestor.syslog-udp",
        "ingestor.syslog-tls",
        "ingestor.http",
        "query.http",
    ];
    for (key, port) in &spec.services.node_ports {
        if !known_node_ports.contains(&key.as_str()) {
            problems.push(format!(
                "services.nodePorts: {key:?} is not one of {}",
                known_node_ports.join(", ")
            ));
        }
        if !(30000..=32767).contains(port) {
            problems.push(format!(
                "services.nodePorts.{key} ({port}) is outside 30000-32767"
            ));
        }
    }
    for (i, rule) in spec.alerts.rules.iter().enumerate() {
        let raw = logcluster_query::alerts::RawRule {
            name: rule.name.clone(),
            query: rule.query.clone(),
            op: rule.op.clone(),
            threshold: rule.threshold,
            for_duration: rule.for_duration.clone(),
            window: rule.window.clone(),
            tenant: rule.tenant.clone(),
            labels: rule.labels.clone(),
            annotations: rule.annotations.clone(),
        };
        if let Err(error) = logcluster_query::alerts::compile_rule(raw) {
            problems.push(format!("alerts.rules[{i}] ({}): {error}", rule.name));
        }
    }
    if let Some(url) = &spec.alerts.webhook_url
        && !url.starts_with("http://")
    {
        problems.push(format!("alerts.webhookUrl {url:?} must be an http:// URL"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// A Kubernetes quantity such as `500Mi`, `10Gi`, `1T` or `1000000`.
fn is_quantity(text: &str) -> bool {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &text[digits.len()..];
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && quantity_multiplier(suffix).is_some()
}

/// What a quantity's suffix multiplies by (binary `Ki`…`Ei`, decimal `k`…`E`, none).
pub(crate) fn quantity_multiplier(suffix: &str) -> Option<u128> {
    Some(match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(validate(&LogClusterSpec::default()), Ok(()));
    }

    #[test]
    fn every_problem_is_named_with_its_field() {
        let mut spec = LogClusterSpec::default();
        spec.replication.write_quorum = 4;
        spec.replication.read_quorum = 1;
        spec.storage.replicas = 2;
        spec.storage.size = "lots".into();
        spec.retention.max_age = Some("forever".into());
        spec.services.query_type = "Ingress".into();
        spec.services.ports.http = 70000;
        let problems = validate(&spec).expect_err("invalid");
        for needle in [
            "writeQuorum (4) cannot exceed",
            "storage.replicas (2)",
            "storage.size",
            "retention.maxAge",
            "services.queryType",
            "services.ports.http",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "{needle}: {problems:?}"
            );
        }
        let mut spec = LogClusterSpec::default();
        spec.replication.read_quorum = 1;
        let problems = validate(&spec).expect_err("W + R = RF");
        assert!(problems[0].contains("must exceed factor"), "{problems:?}");
    }

    #[test]
    fn quantities() {
        for ok in ["10Gi", "500Mi", "1T", "1000000", "1.5Gi"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "Gi", "10GB", "ten"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
