//! EndpointSlice discovery against a fake API (tower-test): the initial list and then a
//! sequence of watch events (a member stops serving, a new slice adds a member, a member is
//! marked leaving by the operator's file) yield the right member lists on the channel.

use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use logcluster_cluster::membership::MemberList;
use logcluster_k8s::members::{Source, watch_members};
use serde_json::{Value, json};

fn endpoint(pod: &str, serving: bool) -> Value {
    json!({"addresses": ["10.0.0.1"], "hostname": pod,
           "targetRef": {"kind": "Pod", "name": pod, "namespace": "logs"},
           "conditions": {"ready": true, "serving": serving, "terminating": false}})
}

fn slice(name: &str, version: &str, endpoints: Vec<Value>) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": "logs", "resourceVersion": version,
                        "labels": {"kubernetes.io/service-name": "lc-storage"}},
           "addressType": "IPv4", "endpoints": endpoints})
}

fn summary(list: &MemberList) -> Vec<(String, bool, bool)> {
    list.members
        .iter()
        .map(|m| (m.id.clone(), m.ready, m.leaving))
        .collect()
}

async fn wait_for(
    receiver: &mut tokio::sync::watch::Receiver<std::sync::Arc<MemberList>>,
    want: &[(&str, bool, bool)],
) {
    let want: Vec<(String, bool, bool)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), *b, *c))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if summary(&receiver.borrow()) == want {
            return;
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            tokio::time::timeout(remaining, receiver.changed())
                .await
                .is_ok(),
            "member list never became {want:?}; last {:?}",
            summary(&receiver.borrow())
        );
    }
}

#[tokio::test]
async fn watch_events_become_member_lists() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let leaving_dir = tempfile::tempdir().expect("dir");
    let leaving_file = leaving_dir.path().join("leaving.yaml");
    std::fs::write(&leaving_file, "leaving: []\n").expect("write");
    let (sender, mut receiver) =
        tokio::sync::watch::channel(std::sync::Arc::new(MemberList::default()));
    let source = Source {
        service: "lc-storage".into(),
        namespace: "logs".into(),
        port: 7000,
        leaving_file: Some(leaving_file.clone()),
    };
    let client = Client::new(service, "logs");
    tokio::spawn(watch_members(client, source, sender));

    let server = tokio::spawn(async move {
        let mut watches = 0;
        let mut parked = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let uri = request.uri().to_string();
            assert!(
                uri.starts_with("/apis/discovery.k8s.io/v1/namespaces/logs/endpointslices"),
                "{uri}"
            );
            assert!(
                uri.contains("labelSelector=kubernetes.io%2Fservice-name%3Dlc-storage"),
                "{uri}"
            );
            let body = if !uri.contains("watch=true") {
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                       "metadata": {"resourceVersion": "10"},
                       "items": [slice("lc-storage-a", "10", vec![
                           endpoint("lc-storage-0", true), endpoint("lc-storage-1", true), endpoint("lc-storage-2", true)])]})
                .to_string()
            } else {
                watches += 1;
                if watches > 1 {
                    // Later watches stay open with nothing new.
                    parked.push(send);
                    continue;
                }
                let events = [
                    json!({"type": "MODIFIED", "object": slice("lc-storage-a", "11", vec![
                        endpoint("lc-storage-0", true), endpoint("lc-storage-1", false), endpoint("lc-storage-2", true)])}),
                    json!({"type": "ADDED", "object": slice("lc-storage-b", "12", vec![endpoint("lc-storage-3", true)])}),
                ];
                events
                    .iter()
                    .map(|e| e.to_string() + "\n")
                    .collect::<String>()
            };
            send.send_response(
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Body::from(body.into_bytes()))
                    .expect("response"),
            );
        }
    });

    wait_for(
        &mut receiver,
        &[
            ("lc-storage-0", true, false),
            ("lc-storage-1", false, false),
            ("lc-storage-2", true, false),
            ("lc-storage-3", true, false),
        ],
    )
    .await;
    // The operator marks lc-storage-3 leaving.
    std::fs::write(&leaving_file, "leaving: [lc-storage-3]\n").expect("write");
    wait_for(
        &mut receiver,
        &[
            ("lc-storage-0", true, false),
            ("lc-storage-1", false, false),
            ("lc-storage-2", true, false),
            ("lc-storage-3", true, true),
        ],
    )
    .await;
    let list = receiver.borrow().clone();
    assert_eq!(
        list.ring_ids(),
        ["lc-storage-0", "lc-storage-1", "lc-storage-2"]
    );
    assert_eq!(
        list.get("lc-storage-0").expect("member").addr,
        "lc-storage-0.lc-storage.logs.svc:7000"
    );
    server.abort();
}

/// A restarted pod in a steady cluster: the initial list is all it gets (no further events),
/// and it must still know every member.
#[tokio::test]
async fn the_initial_list_alone_yields_the_members() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (sender, mut receiver) =
        tokio::sync::watch::channel(std::sync::Arc::new(MemberList::default()));
    let source = Source {
        service: "lc-storage".into(),
        namespace: "logs".into(),
        port: 7000,
        leaving_file: None,
    };
    tokio::spawn(watch_members(Client::new(service, "logs"), source, sender));
    let server = tokio::spawn(async move {
        let mut parked = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            if request.uri().to_string().contains("watch=true") {
                parked.push(send);
                continue;
            }
            let body = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                "metadata": {"resourceVersion": "5"},
                "items": [slice("lc-storage-a", "5", vec![endpoint("lc-storage-0", true), endpoint("lc-storage-1", true)])]})
            .to_string();
            send.send_response(
                Response::builder()
                    .body(Body::from(body.into_bytes()))
                    .expect("response"),
            );
        }
    });
    wait_for(
        &mut receiver,
        &[("lc-storage-0", true, false), ("lc-storage-1", true, false)],
    )
    .await;
    server.abort();
}
