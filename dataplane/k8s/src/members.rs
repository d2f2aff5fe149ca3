//! Ring membership from EndpointSlices.
//!
//! The storage members' headless Service publishes not-ready addresses, so a member stays in
//! the ring while it restarts (its writes go to fallbacks with hints) instead of flapping with
//! readiness. Each endpoint becomes a [`Member`]: its id is the pod name (stable across
//! restarts, which ring placement needs), its address the pod's stable DNS name under the
//! Service, its readiness the endpoint's `serving` condition (`ready` is always true when
//! not-ready addresses are published). Members named in the operator's leaving file are
//! marked leaving: they leave the ring and hand their data over.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use logcluster_cluster::membership::{Member, MemberList};
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn};

/// Where the members are.
#[derive(Clone, Debug)]
pub struct Source {
    pub service: String,
    pub namespace: String,
    pub port: u16,
    pub leaving_file: Option<PathBuf>,
}

/// The members an EndpointSlice set describes (pure).
pub fn members_from_slices<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    source: &Source,
    leaving: &BTreeSet<String>,
) -> MemberList {
    let mut members: BTreeMap<String, Member> = BTreeMap::new();
    for slice in slices {
        for endpoint in &slice.endpoints {
            let pod = endpoint
                .target_ref
                .as_ref()
                .and_then(|r| r.name.clone())
                .or_else(|| endpoint.hostname.clone());
            let Some(id) = pod else {
                continue;
            };
            let addr = match (&endpoint.hostname, endpoint.addresses.first()) {
                (Some(host), _) => format!(
                    "{host}.{}.{}.svc:{}",
                    source.service, source.namespace, source.port
                ),
                (None, Some(ip)) if ip.contains(':') => format!("[{ip}]:{}", source.port),
                (None, Some(ip)) => format!("{ip}:{}", source.port),
                (None, None) => continue,
            };
            let conditions = endpoint.conditions.as_ref();
            let serving = conditions
                .and_then(|c| c.serving.or(c.ready))
                .unwrap_or(true);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            let member = Member {
                leaving: leaving.contains(&id),
                ready: serving && !terminating,
                addr,
                id: id.clone(),
            };
            // The same pod in two slices (during a slice rewrite): ready wins.
            members
                .entry(id)
                .and_modify(|m| m.ready |= member.ready)
                .or_insert(member);
        }
    }
    MemberList::new(members.into_values().collect())
}

#[derive(Default, Deserialize)]
struct LeavingFile {
    #[serde(default)]
    leaving: Vec<String>,
}

/// Reads the operator's leaving file (missing or unreadable: nobody is leaving, logged).
pub fn read_leaving(path: &Option<PathBuf>) -> BTreeSet<String> {
    let Some(path) = path else {
        return BTreeSet::new();
    };
    match std::fs::read_to_string(path) {
        Ok(text) => match serde_yaml::from_str::<LeavingFile>(&text) {
            Ok(file) => file.leaving.into_iter().collect(),
            Err(error) => {
                warn!(file = %path.display(), %error, "leaving file does not parse; ignored");
                BTreeSet::new()
            }
        },
        Err(_) => BTreeSet::new(),
    }
}

/// Watches the EndpointSlices of the Service and the leaving file, publishing every change
/// of the member list. Runs until the receivers are gone.
pub async fn watch_members(
    client: Client,
    source: Source,
    sender: watch::Sender<std::sync::Arc<MemberList>>,
) {
    let api: Api<EndpointSlice> = Api::namespaced(client, &source.namespace);
    let config = watcher::Config::default()
        .labels(&format!("kubernetes.io/service-name={}", source.service));
    let stream = watcher(api, config).default_backoff();
    futures_util::pin_mut!(stream);
    let mut slices: crate::WatchedSet<EndpointSlice> = crate::WatchedSet::default();
    let mut leaving = read_leaving(&source.leaving_file);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            event = stream.next() => match event {
                None => return,
                Some(Err(error)) => {
                    warn!(%error, service = %source.service, "EndpointSlice watch failed; retrying");
                    continue;
                }
                Some(Ok(event)) => {
                    if !slices.apply(event) {
                        continue;
                    }
                }
            },
            _ = tick.tick() => {
                let now = read_leaving(&source.leaving_file);
                if now == leaving {
                    continue;
                }
                info!(?now, "leaving members changed");
                leaving = now;
            }
        }
        if !slices.synced {
            continue;
        }
        let members = members_from_slices(slices.objects(), &source, &leaving);
        let changed = sender.send_if_modified(|current| {
            if **current == members {
                false
            } else {
                *current = std::sync::Arc::new(members.clone());
                true
            }
        });
        if changed {
            info!(
                members = ?members.members.iter().map(|m| (&m.id, m.ready, m.leaving)).collect::<Vec<_>>(),
                "ring members changed"
            );
        }
        if sender.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source() -> Source {
        Source {
            service: "lc-storage".into(),
            namespace: "logs".into(),
            port: 7000,
            leaving_file: None,
        }
    }

    fn slice(endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "lc-storage-abc", "namespace": "logs",
                         "labels": {"kubernetes.io/service-name": "lc-storage"}},
            "addressType": "IPv4",
            "endpoints": endpoints,
        }))
        .expect("valid slice")
    }

    #[test]
    fn endpoints_become_members_with_pod_names_and_stable_addresses() {
        let s = slice(json!([
            {"addresses": ["10.0.0.5"], "hostname": "lc-storage-0",
             "targetRef": {"kind": "Pod", "name": "lc-storage-0"},
             "conditions": {"ready": true, "serving": true, "terminating": false}},
            {"addresses": ["10.0.0.6"], "hostname": "lc-storage-1",
             "targetRef": {"kind": "Pod", "name": "lc-storage-1"},
             "conditions": {"ready": true, "serving": false}},
            {"addresses": ["10.0.0.7"], "targetRef": {"kind": "Pod", "name": "lc-storage-2"},
             "conditions": {"ready": true, "serving": true, "terminating": true}},
        ]));
        let leaving = BTreeSet::from(["lc-storage-1".to_string()]);
        let list = members_from_slices([&s], &source(), &leaving);
        let got: Vec<(&str, &str, bool, bool)> = list
            .members
            .iter()
            .map(|m| (m.id.as_str(), m.addr.as_str(), m.ready, m.leaving))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "lc-storage-0",
                    "lc-storage-0.lc-storage.logs.svc:7000",
                    true,
                    false
                ),
                (
                    "lc-storage-1",
                    "lc-storage-1.lc-storage.logs.svc:7000",
                    false,
                    true
                ),
                ("lc-storage-2", "10.0.0.7:7000", false, false),
            ]
        );
    }

    #[test]
    fn leaving_file_parses() {
        let dir = std::env::temp_dir().join(format!("lc-leaving-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("leaving.yaml");
        std::fs::write(&path, "leaving: [lc-storage-4, lc-storage-3]\n").expect("write");
        let got = read_leaving(&Some(path.clone()));
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            ["lc-storage-3", "lc-storage-4"]
        );
        std::fs::write(&path, "leaving: {oops").expect("write");
        assert!(read_leaving(&Some(path)).is_empty());
        assert!(read_leaving(&None).is_empty());
    }
}
