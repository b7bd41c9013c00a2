//! Reconcile against a mocked API server (the tower-test pattern of kube-rs's controller-rs):
//! every request the operator makes is recorded and answered, and each test checks the exact
//! sequence of calls and the bodies that matter.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use stead_operator::coordinator::{Coordinator, CoordinatorError, Progress, Target};
use stead_operator::{Context, DurableNamespace, OperatorConfig, reconcile::reconcile};

const SIDECAR: &str = "ghcr.io/stead-dev/stead:test";

/// One request as the operator sent it.
#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    query: String,
    body: Value,
}

impl Call {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// What the fake API server holds before the reconcile.
#[derive(Default, Clone)]
struct World {
    statefulset: Option<Value>,
    secret: Option<Value>,
    pods: Vec<Value>,
    service_monitor_crd: bool,
    /// The DurableNamespace itself, as the server would return it.
    namespace: Value,
}

fn not_found() -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                 "message": "not found", "reason": "NotFound", "code": 404}),
    )
}

/// Answer like the API server would for the calls the operator makes.
fn answer(world: &World, call: &Call) -> (u16, Value) {
    let p = call.path.as_str();
    match call.method.as_str() {
        "GET" if p.ends_with("/statefulsets/chat") => world
            .statefulset
            .clone()
            .map(|s| (200, s))
            .unwrap_or_else(not_found),
        "GET" if p.ends_with("/secrets/chat-peer-token") => world
            .secret
            .clone()
            .map(|s| (200, s))
            .unwrap_or_else(not_found),
        "GET" if p.ends_with("/pods") => (
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": world.pods}),
        ),
        "GET" if p == "/apis/monitoring.coreos.com/v1" => {
            if world.service_monitor_crd {
                (
                    200,
                    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "monitoring.coreos.com/v1",
                    "resources": [{"name": "servicemonitors", "singularName": "servicemonitor", "namespaced": true,
                                   "kind": "ServiceMonitor", "verbs": ["get", "list", "patch"]}]}),
                )
            } else {
                not_found()
            }
        }
        "PATCH" if p.ends_with("/statefulsets/chat") => {
            // The server keeps the status it has (readiness comes from the kubelet).
            let mut body = call.body.clone();
            body["metadata"]["generation"] = json!(1);
            if let Some(status) = world.statefulset.as_ref().and_then(|s| s.get("status")) {
                body["status"] = status.clone();
            }
            (200, body)
        }
        "PATCH" if p.ends_with("/status") => {
            let mut dns = world.namespace.clone();
            dns["status"] = call.body["status"].clone();
            (200, dns)
        }
        "PATCH" | "POST" => {
            let mut body = call.body.clone();
            if body.get("metadata").is_none() {
                body["metadata"] = json!({"name": "chat", "namespace": "apps"});
            }
            (if call.method == "POST" { 201 } else { 200 }, body)
        }
        _ => panic!("unexpected call {}", call.line()),
    }
}

/// Shard 0's coordinator, scripted: every call gets `answer` (a progress report as JSON, or an
/// error), and is recorded as "POST 5" or "GET".
#[derive(Default)]
struct FakeCoordinator {
    answer: Option<Value>,
    calls: Mutex<Vec<String>>,
}

impl FakeCoordinator {
    fn answering(answer: Value) -> Arc<Self> {
        Arc::new(Self {
            answer: Some(answer),
            calls: Mutex::new(Vec::new()),
        })
    }

    fn reply(&self, call: String) -> Result<Progress, CoordinatorError> {
        self.calls.lock().expect("calls").push(call);
        match &self.answer {
            Some(v) => Ok(serde_json::from_value(v.clone()).expect("progress")),
            None => Err(CoordinatorError::Unreachable("not scripted".into())),
        }
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls").clone()
    }
}

impl Coordinator for FakeCoordinator {
    fn start<'a>(
        &'a self,
        _at: &'a Target,
        to: i32,
    ) -> BoxFuture<'a, Result<Progress, CoordinatorError>> {
        Box::pin(async move { self.reply(format!("POST {to}")) })
    }

    fn progress<'a>(
        &'a self,
        _at: &'a Target,
    ) -> BoxFuture<'a, Result<Progress, CoordinatorError>> {
        Box::pin(async move { self.reply("GET".into()) })
    }
}

/// Run one reconcile of `dns` against `world`; return its result and the calls made.
async fn run(
    dns: DurableNamespace,
    world: World,
    config: OperatorConfig,
) -> (Result<Action, stead_operator::Error>, Vec<Call>) {
    run_with(dns, world, config, Arc::new(FakeCoordinator::default())).await
}

/// [`run`] with a scripted coordinator.
async fn run_with(
    dns: DurableNamespace,
    mut world: World,
    config: OperatorConfig,
    coordinator: Arc<FakeCoordinator>,
) -> (Result<Action, stead_operator::Error>, Vec<Call>) {
    world.namespace = serde_json::to_value(&dns).expect("namespace json");
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let calls = Arc::new(Mutex::new(Vec::new()));
    let server = {
        let calls = calls.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().to_string();
                let path = request.uri().path().to_owned();
                let query = request.uri().query().unwrap_or_default().to_owned();
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .expect("request body");
                let body = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).expect("json body")
                };
                let call = Call {
                    method,
                    path,
                    query,
                    body,
                };
                let (code, reply) = answer(&world, &call);
                calls.lock().expect("calls").push(call);
                send.send_response(
                    Response::builder()
                        .status(code)
                        .body(Body::from(serde_json::to_vec(&reply).expect("reply")))
                        .expect("response"),
                );
            }
        })
    };
    let ctx = Context::with_coordinator(client, config, coordinator);
    let result = tokio::time::timeout(Duration::from_secs(10), reconcile(Arc::new(dns), ctx))
        .await
        .expect("reconcile finished");
    // Dropping the context drops the client; the fake server then sees no more requests.
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stopped")
        .expect("server task");
    let calls = calls.lock().expect("calls").clone();
    (result, calls)
}

fn config() -> OperatorConfig {
    OperatorConfig {
        sidecar_image: SIDECAR.into(),
        service_monitors: false,
        ..OperatorConfig::default()
    }
}

fn chat(shards: i32, image: &str) -> DurableNamespace {
    serde_json::from_value(json!({
        "apiVersion": "stead.dev/v1alpha1",
        "kind": "DurableNamespace",
        "metadata": {"name": "chat", "namespace": "apps", "uid": "0b1c2d3e-aaaa-bbbb-cccc-000000000001", "generation": 2},
        "spec": {"shards": shards, "classes": ["ChatRoom", "Lobby"], "app": {"image": image, "port": 3000}}
    }))
    .expect("DurableNamespace")
}

fn running_statefulset(replicas: i32, ready: i32, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "chat", "namespace": "apps", "generation": 1},
        "spec": {"replicas": replicas, "serviceName": "chat-peers", "selector": {"matchLabels": {"app.kubernetes.io/instance": "chat"}},
                 "template": {"spec": {"containers": [{"name": "app", "image": image}]}}},
        "status": {"replicas": replicas, "readyReplicas": ready, "updatedReplicas": replicas, "observedGeneration": 1}
    })
}

fn lines(calls: &[Call]) -> Vec<String> {
    calls.iter().map(Call::line).collect()
}

fn find<'a>(calls: &'a [Call], method: &str, suffix: &str) -> &'a Call {
    calls
        .iter()
        .find(|c| c.method == method && c.path.ends_with(suffix))
        .unwrap_or_else(|| panic!("no {method} …{suffix} in {:#?}", lines(calls)))
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

fn sidecar_env(sts: &Value, name: &str) -> Value {
    let containers = sts["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    let sidecar = containers
        .iter()
        .find(|c| c["name"] == "sidecar")
        .expect("sidecar container");
    sidecar["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

fn events(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.path.ends_with("/events"))
        .map(|c| c.body["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

const CREATE_CALLS: [&str; 13] = [
    "GET /apis/apps/v1/namespaces/apps/statefulsets/chat",
    "GET /api/v1/namespaces/apps/secrets/chat-peer-token",
    "PATCH /api/v1/namespaces/apps/secrets/chat-peer-token",
    "PATCH /api/v1/namespaces/apps/serviceaccounts/chat-sidecar",
    "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/apps/roles/chat-sidecar",
    "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/apps/rolebindings/chat-sidecar",
    "PATCH /api/v1/namespaces/apps/services/chat-peers",
    "PATCH /api/v1/namespaces/apps/services/chat",
    "PATCH /apis/policy/v1/namespaces/apps/poddisruptionbudgets/chat",
    "PATCH /apis/apps/v1/namespaces/apps/statefulsets/chat",
    "GET /api/v1/namespaces/apps/pods",
    "PATCH /apis/stead.dev/v1alpha1/namespaces/apps/durablenamespaces/chat/status",
    "POST /apis/events.k8s.io/v1/namespaces/apps/events",
];

#[tokio::test]
async fn a_new_namespace_gets_all_its_children_applied_and_a_status() {
    let (result, calls) = run(chat(3, "acme/chat:1"), World::default(), config()).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(lines(&calls), CREATE_CALLS);

    for call in calls.iter().filter(|c| c.method == "PATCH") {
        assert!(
            call.query.contains("fieldManager=stead-operator"),
            "{}: {}",
            call.line(),
            call.query
        );
        assert!(
            call.query.contains("force=true"),
            "{}: {}",
            call.line(),
            call.query
        );
        if !call.path.ends_with("/status") {
            assert_eq!(
                call.body["metadata"]["ownerReferences"][0]["kind"],
                "DurableNamespace",
                "{}",
                call.line()
            );
            assert_eq!(
                call.body["metadata"]["ownerReferences"][0]["controller"],
                true,
                "{}",
                call.line()
            );
        }
    }
    let secret = find(&calls, "PATCH", "/secrets/chat-peer-token");
    let token = secret.body["data"]["token"].as_str().expect("token");
    assert_eq!(token.len(), 88, "base64 of 64 hex characters");

    let sts = &find(&calls, "PATCH", "/statefulsets/chat").body;
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(sidecar_env(sts, "STEAD_CLASSES")["value"], "ChatRoom,Lobby");
    assert_eq!(
        sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
        "Retain"
    );

    let status = &find(&calls, "PATCH", "/status").body["status"];
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(status["shards"], 3);
    assert_eq!(status["readyShards"], 0);
    assert_eq!(
        status["ring"],
        json!({"epoch": 1, "shards": 3, "moving": 0})
    );
    assert_eq!(condition(status, "Progressing")["status"], "True");
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(condition(status, "Degraded")["status"], "False");
    assert_eq!(events(&calls), ["Created"]);
}

#[tokio::test]
async fn a_new_image_rolls_the_statefulset_and_keeps_the_token() {
    let world = World {
        statefulset: Some(running_statefulset(3, 3, "acme/chat:1")),
        secret: Some(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "chat-peer-token", "namespace": "apps"}, "data": {"token": "a2VwdA=="}})),
        ..World::default()
    };
    let (result, calls) = run(chat(3, "acme/chat:2"), world, config()).await;
    assert!(result.is_ok(), "{result:?}");
    let secret = find(&calls, "PATCH", "/secrets/chat-peer-token");
    assert_eq!(
        secret.body["data"]["token"], "a2VwdA==",
        "the existing token is kept"
    );
    let sts = &find(&calls, "PATCH", "/statefulsets/chat").body;
    let app = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(app["name"], "app");
    assert_eq!(app["image"], "acme/chat:2");
    assert_eq!(sts["spec"]["replicas"], 3);
    assert!(
        !events(&calls).contains(&"Created".to_owned()),
        "nothing was created"
    );
}

#[tokio::test]
async fn ready_shards_are_published_and_a_second_reconcile_writes_nothing() {
    let world = World {
        statefulset: Some(running_statefulset(3, 3, "acme/chat:1")),
        secret: Some(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "chat-peer-token", "namespace": "apps"}, "data": {"token": "a2VwdA=="}})),
        ..World::default()
    };
    let (result, calls) = run(chat(3, "acme/chat:1"), world.clone(), config()).await;
    assert!(result.is_ok(), "{result:?}");
    let status = find(&calls, "PATCH", "/status").body["status"].clone();
    assert_eq!(status["readyShards"], 3);
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert_eq!(condition(&status, "Ready")["reason"], "ShardsReady");
    assert_eq!(events(&calls), ["Ready"]);

    // Feed the published status back: the next reconcile finds nothing to change.
    let mut again = chat(3, "acme/chat:1");
    again.status = Some(serde_json::from_value(status).expect("status"));
    let (result, calls) = run(again, world, config()).await;
    assert!(result.is_ok(), "{result:?}");
    assert!(
        !lines(&calls).iter().any(|l| l.ends_with("/status")),
        "status rewritten: {:#?}",
        lines(&calls)
    );
    assert!(events(&calls).is_empty());
}

/// A status of a namespace that ran ready at `shards` shards, ring epoch `epoch`.
fn settled_status(shards: i32, epoch: i64) -> Value {
    json!({
        "shards": shards, "readyShards": shards, "ring": {"epoch": epoch, "shards": shards, "moving": 0},
        "conditions": [{"type": "Ready", "status": "True", "reason": "ShardsReady", "message": "ready",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    })
}

fn replicas_applied(calls: &[Call]) -> Vec<i64> {
    calls
        .iter()
        .filter(|c| c.method == "PATCH" && c.path.ends_with("/statefulsets/chat"))
        .map(|c| c.body["spec"]["replicas"].as_i64().expect("replicas"))
        .collect()
}

#[tokio::test]
async fn a_grow_first_starts_the_new_shards_and_waits_for_them() {
    let world = World {
        statefulset: Some(running_statefulset(3, 3, "acme/chat:1")),
        ..World::default()
    };
    let mut dns = chat(5, "acme/chat:1");
    dns.status = Some(serde_json::from_value(settled_status(3, 1)).expect("status"));
    let coordinator = Arc::new(FakeCoordinator::default());
    let (result, calls) = run_with(dns, world, config(), coordinator.clone()).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(replicas_applied(&calls), [5]);
    assert!(
        coordinator.calls().is_empty(),
        "no slot moves before the new shards are ready"
    );
    let status = &find(&calls, "PATCH", "/status").body["status"];
    let resharding = condition(status, "Resharding");
    assert_eq!(resharding["status"], "True");
    assert_eq!(resharding["reason"], "WaitingForShards");
    assert_eq!(
        status["ring"],
        json!({"epoch": 1, "shards": 3, "moving": 0})
    );
    assert!(status.get("reshard").is_none(), "{status}");
    // The pod template is the one of 3 shards: no rolling restart.
    let sts = &find(&calls, "PATCH", "/statefulsets/chat").body;
    assert_eq!(sidecar_env(sts, "STEAD_PEERS"), Value::Null);
    assert_eq!(
        sidecar_env(sts, "STEAD_PEER_TEMPLATE")["value"],
        "chat-{i}.chat-peers.apps.svc:7878"
    );
}

#[tokio::test]
async fn a_grow_with_every_shard_ready_asks_shard_0_to_reshard() {
    let world = World {
        statefulset: Some(running_statefulset(5, 5, "acme/chat:1")),
        ..World::default()
    };
    let mut dns = chat(5, "acme/chat:1");
    dns.status = Some(serde_json::from_value(settled_status(3, 1)).expect("status"));
    let coordinator = FakeCoordinator::answering(json!({
        "state": "running", "from": 3, "to": 5, "epoch": 2, "moved": 0, "total": 1638,
        "bytes": 0, "seconds": 0.0, "error": null
    }));
    let (result, calls) = run_with(dns, world, config(), coordinator.clone()).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(coordinator.calls(), ["POST 5"]);
    assert_eq!(replicas_applied(&calls), [5]);
    let status = &find(&calls, "PATCH", "/status").body["status"];
    assert_eq!(
        condition(status, "Resharding")["message"],
        "moved 0/1638 slots"
    );
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(
        status["reshard"],
        json!({"from": 3, "to": 5, "moved": 0, "total": 1638})
    );
    assert_eq!(
        status["ring"],
        json!({"epoch": 1, "shards": 3, "moving": 1638})
    );
    assert!(
        events(&calls).contains(&"Resharding".to_owned()),
        "{:?}",
        events(&calls)
    );
}

#[tokio::test]
async fn a_finished_shrink_publishes_the_ring_then_stops_the_emptied_shards() {
    let world = World {
        statefulset: Some(running_statefulset(5, 5, "acme/chat:1")),
        ..World::default()
    };
    let mut dns = chat(2, "acme/chat:1");
    let mut status = settled_status(5, 2);
    status["reshard"] = json!({"from": 5, "to": 2, "moved": 100, "total": 2458});
    dns.status = Some(serde_json::from_value(status).expect("status"));
    let coordinator = FakeCoordinator::answering(json!({
        "state": "done", "from": 5, "to": 2, "epoch": 3, "moved": 2458, "total": 2458, "error": null
    }));
    let (result, calls) = run_with(dns, world, config(), coordinator.clone()).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(coordinator.calls(), ["GET"]);
    assert_eq!(
        replicas_applied(&calls),
        [5, 2],
        "all five run until the ring has two shards"
    );
    let status = &find(&calls, "PATCH", "/status").body["status"];
    assert_eq!(
        status["ring"],
        json!({"epoch": 3, "shards": 2, "moving": 0})
    );
    assert!(status.get("reshard").is_none(), "{status}");
    assert_eq!(condition(status, "Resharding")["status"], "False");
}

#[tokio::test]
async fn a_coordinator_that_forgot_the_resharding_is_asked_again() {
    let world = World {
        statefulset: Some(running_statefulset(5, 5, "acme/chat:1")),
        ..World::default()
    };
    let mut dns = chat(5, "acme/chat:1");
    let mut status = settled_status(3, 1);
    status["reshard"] = json!({"from": 3, "to": 5, "moved": 400, "total": 1638});
    dns.status = Some(serde_json::from_value(status).expect("status"));
    let coordinator = FakeCoordinator::answering(json!({"state": "idle"}));
    let (result, calls) = run_with(dns, world, config(), coordinator.clone()).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(coordinator.calls(), ["GET", "POST 5"]);
    let status = &find(&calls, "PATCH", "/status").body["status"];
    assert_eq!(status["reshard"]["to"], 5);
    assert_eq!(status["ring"]["shards"], 3);
}

#[tokio::test]
async fn an_invalid_spec_is_reported_and_nothing_is_applied() {
    let mut dns = chat(1, "acme/chat:1");
    dns.spec.app.port = 8787;
    let (result, calls) = run(dns, World::default(), config()).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        lines(&calls)[0],
        "GET /apis/apps/v1/namespaces/apps/statefulsets/chat"
    );
    assert!(
        calls
            .iter()
            .skip(1)
            .all(|c| c.path.ends_with("/status") || c.path.ends_with("/events"))
    );
    let status = &find(&calls, "PATCH", "/status").body["status"];
    let degraded = condition(status, "Degraded");
    assert_eq!(degraded["reason"], "InvalidSpec");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap_or_default()
            .contains("used by the Stead sidecar")
    );
    assert_eq!(events(&calls), ["InvalidSpec"]);
}

#[tokio::test]
async fn a_namespace_being_deleted_is_left_to_the_garbage_collector() {
    let mut dns = chat(3, "acme/chat:1");
    dns.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    let (result, calls) = run(dns, World::default(), config()).await;
    assert_eq!(result.ok(), Some(Action::await_change()));
    assert!(calls.is_empty(), "{:#?}", lines(&calls));
}

#[tokio::test]
async fn a_service_monitor_is_applied_only_when_its_crd_exists() {
    let with_monitors = OperatorConfig {
        service_monitors: true,
        ..config()
    };
    let (_, calls) = run(
        chat(1, "acme/chat:1"),
        World::default(),
        with_monitors.clone(),
    )
    .await;
    assert!(lines(&calls).contains(&"GET /apis/monitoring.coreos.com/v1".to_owned()));
    assert!(!lines(&calls).iter().any(|l| l.contains("servicemonitors")));

    let world = World {
        service_monitor_crd: true,
        ..World::default()
    };
    let (_, calls) = run(chat(1, "acme/chat:1"), world, with_monitors).await;
    let sm = find(
        &calls,
        "PATCH",
        "/apis/monitoring.coreos.com/v1/namespaces/apps/servicemonitors/chat",
    );
    assert_eq!(sm.body["spec"]["endpoints"][0]["port"], "admin");
}

#[tokio::test]
async fn a_stuck_shard_is_reported_by_name() {
    let world = World {
        statefulset: Some(running_statefulset(2, 1, "acme/chat:1")),
        pods: vec![
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "chat-1", "namespace": "apps"},
            "status": {"containerStatuses": [{"name": "app", "image": "acme/chat:1", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}]}}),
        ],
        ..World::default()
    };
    let (result, calls) = run(chat(2, "acme/chat:1"), world, config()).await;
    assert!(result.is_ok(), "{result:?}");
    let status = &find(&calls, "PATCH", "/status").body["status"];
    let degraded = condition(status, "Degraded");
    assert_eq!(degraded["reason"], "ShardFailing");
    assert_eq!(
        degraded["message"],
        "shard 1 cannot pull image \"acme/chat:1\" for container app (ErrImagePull: not found): \
         check spec.app.image, and that the cluster's nodes can pull it: push it to a registry \
         they can pull from, or on a kind cluster run `kind load docker-image acme/chat:1`"
    );
    assert_eq!(events(&calls), ["ShardFailing"]);
}
