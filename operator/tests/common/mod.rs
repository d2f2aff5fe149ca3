//! A fake Kubernetes API behind tower-test: no API server can run on the CI machines, so the
//! operator's requests are answered from an in-memory object store and every request is
//! recorded for the tests to assert on (method, path, query, body).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// One request the operator made.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
}

impl Call {
    pub fn is_apply(&self) -> bool {
        self.method == "PATCH" && self.query.contains("fieldManager=logcluster-operator")
    }
}

#[derive(Default)]
pub struct State {
    /// Objects by path (`/api/v1/namespaces/ns/configmaps/name`).
    pub objects: BTreeMap<String, Value>,
    pub calls: Vec<Call>,
    next_version: u64,
    /// Writes (PUT) whose `spec.holderIdentity` is this are never answered: a holder whose
    /// renewals hang.
    pub hang_writes_of: Option<String>,
}

/// The fake API: a client wired to it, and its state.
pub struct FakeApi {
    pub client: Client,
    pub state: Arc<Mutex<State>>,
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "reason": reason, "message": message, "code": code})
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

impl FakeApi {
    pub fn start() -> FakeApi {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            // Responders of requests left unanswered, kept so that they stay pending.
            let mut parked = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let path = parts.uri.path().to_string();
                let query = parts.uri.query().unwrap_or("").to_string();
                let method = parts.method.to_string();
                let (code, answer) = {
                    let mut state = shared.lock().expect("state");
                    state.calls.push(Call {
                        method: method.clone(),
                        path: path.clone(),
                        query: query.clone(),
                        body: body.clone(),
                    });
                    let hangs = method == "PUT"
                        && state.hang_writes_of.is_some()
                        && body["spec"]["holderIdentity"].as_str()
                            == state.hang_writes_of.as_deref();
                    if hangs {
                        parked.push(send);
                        continue;
                    }
                    answer(&mut state, &method, &path, &query, body)
                };
                let response = Response::builder()
                    .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap_or_default()))
                    .expect("response");
                send.send_response(response);
            }
        });
        FakeApi {
            client: Client::new(service, "default"),
            state,
        }
    }

    pub fn put(&self, path: &str, object: Value) {
        self.state
            .lock()
            .expect("state")
            .objects
            .insert(path.to_string(), object);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().expect("state").objects.get(path).cloned()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().expect("state").calls.clone()
    }

    pub fn clear_calls(&self) {
        self.state.lock().expect("state").calls.clear();
    }
}

fn answer(state: &mut State, method: &str, path: &str, query: &str, body: Value) -> (u16, Value) {
    state.next_version += 1;
    let version = state.next_version.to_string();
    match method {
        "GET" => match state.objects.get(path) {
            Some(object) => (200, object.clone()),
            None => (404, status(404, "NotFound", &format!("{path} not found"))),
        },
        "PATCH" if path.ends_with("/status") => {
            let object_path = path.trim_end_matches("/status");
            match state.objects.get_mut(object_path) {
                Some(object) => {
                    merge(object, &body);
                    object["metadata"]["resourceVersion"] = json!(version);
                    (200, object.clone())
                }
                None => (404, status(404, "NotFound", "no such object")),
            }
        }
        "PATCH" if query.contains("fieldManager=") => {
            // Server-side apply: create or update the applied fields. Like the API server, a
            // Secret's stringData is stored base64-encoded in data.
            let mut body = body;
            if let Some(Value::Object(strings)) =
                body.as_object_mut().and_then(|b| b.remove("stringData"))
            {
                use base64::Engine as _;
                let data: serde_json::Map<String, Value> = strings
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            k,
                            json!(
                                base64::engine::general_purpose::STANDARD
                                    .encode(v.as_str().unwrap_or(""))
                            ),
                        )
                    })
                    .collect();
                body["data"] = Value::Object(data);
            }
            let object = state.objects.entry(path.to_string()).or_insert(json!({}));
            merge(object, &body);
            object["metadata"]["resourceVersion"] = json!(version);
            (200, object.clone())
        }
        "PATCH" => match state.objects.get_mut(path) {
            Some(object) => {
                merge(object, &body);
                (200, object.clone())
            }
            None => (404, status(404, "NotFound", "no such object")),
        },
        "POST" => {
            let name = body["metadata"]["name"]
                .as_str()
                .unwrap_or("generated")
                .to_string();
            let object_path = format!("{path}/{name}");
            if state.objects.contains_key(&object_path) {
                return (409, status(409, "AlreadyExists", "exists"));
            }
            let mut object = body;
            object["metadata"]["resourceVersion"] = json!(version);
            state.objects.insert(object_path, object.clone());
            (201, object)
        }
        "PUT" => {
            let current = state.objects.get(path).cloned();
            let expected = body["metadata"]["resourceVersion"].clone();
            match current {
                Some(current) if current["metadata"]["resourceVersion"] != expected => {
                    (409, status(409, "Conflict", "the object has been modified"))
                }
                _ => {
                    let mut object = body;
                    object["metadata"]["resourceVersion"] = json!(version);
                    state.objects.insert(path.to_string(), object.clone());
                    (200, object)
                }
            }
        }
        _ => (405, status(405, "MethodNotAllowed", method)),
    }
}
