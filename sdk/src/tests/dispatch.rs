//! Event dispatch: a client plays the sidecar and sends events to an `App` over loopback.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::fake_api::FakeApi;
use crate::{
    App, DurableObject, Error, ObjectAddr, ObjectInfo, Request, RequestExt, Response, ResponseExt,
    Result, StatelessContext, Turn, async_trait, response,
};

static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);
/// `/block` says it entered here, then waits for the test to open the gate.
static ENTERED: tokio::sync::Notify = tokio::sync::Notify::const_new();
static GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

/// An object that tells which in-memory instance answered and how many events it has seen.
struct Probe {
    serial: u64,
    events: u64,
    built_for: ObjectInfo,
}

#[async_trait]
impl DurableObject for Probe {
    fn new(object: &ObjectInfo) -> Self {
        Probe {
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
            events: 0,
            built_for: object.clone(),
        }
    }

    async fn fetch(&mut self, turn: &Turn, req: Request) -> Result<Response> {
        self.events += 1;
        match req.uri().path() {
            "/fail" => Err(Error::msg("boom")),
            "/panic" => panic!("the probe panics on purpose"),
            "/put" => {
                turn.storage().put("k", &"v").await?;
                Ok(response::text("put"))
            }
            "/block" => {
                ENTERED.notify_one();
                GATE.acquire().await.map_err(Error::other)?.forget();
                Ok(response::text("unblocked"))
            }
            "/rollback" => Ok(response::text("no").rollback()),
            "/call" => turn.stub("Probe", ObjectAddr::name("b")).get("/x").await,
            "/echo" => Ok(response::json(&json!({
                "method": req.method().as_str(),
                "path": req.uri().path(),
                "q": req.query_param("q"),
                "x-client": req.headers().get("x-client").and_then(|v| v.to_str().ok()),
                "body": String::from_utf8_lossy(req.body()),
            }))),
            _ => Ok(response::json(&json!({
                "serial": self.serial,
                "events": self.events,
                "class": turn.class(),
                "id": turn.id(),
                "name": turn.name(),
                "token": turn.token(),
                "built_for_name": self.built_for.name,
            }))),
        }
    }
}

async fn front_door(req: Request, ctx: StatelessContext) -> Response {
    if req.uri().path() == "/call" {
        return match ctx.stub("Probe", ObjectAddr::name("c")).get("/y").await {
            Ok(res) => res,
            Err(e) => response::error(StatusCode::BAD_GATEWAY, e.code(), &e.to_string()),
        };
    }
    response::text(format!("front door {} {}", req.uri().path(), ctx.token()))
}

const ID_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const ID_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

struct Harness {
    addr: SocketAddr,
    fake: FakeApi,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Harness {
    async fn start(app: App) -> Self {
        let (fake, url) = FakeApi::start().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(app.api_url(url).serve_on(listener));
        let client = Client::builder(TokioExecutor::new()).build_http();
        Harness { addr, fake, client }
    }

    async fn default() -> Self {
        Self::start(App::new().class::<Probe>("Probe").stateless(front_door)).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, http::HeaderMap, Bytes) {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let res = self.client.request(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body)
    }

    /// A `request` event for object `id` of class `Probe` under `incarnation`; returns the JSON.
    async fn object(&self, id: &str, incarnation: &str, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self
            .send(
                Method::GET,
                path,
                &[
                    ("stead-event", "request"),
                    ("stead-class", "Probe"),
                    ("stead-object-id", id),
                    ("stead-object-incarnation", incarnation),
                    ("stead-turn", "tok"),
                ],
                "",
            )
            .await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn hibernate(&self, id: &str) -> StatusCode {
        self.send(
            Method::POST,
            "/",
            &[
                ("stead-event", "hibernate"),
                ("stead-class", "Probe"),
                ("stead-object-id", id),
                ("stead-object-incarnation", "1"),
            ],
            "",
        )
        .await
        .0
    }
}

#[tokio::test]
async fn the_instance_is_reused_across_events_of_one_object() {
    let h = Harness::default().await;
    let (s1, first) = h.object(ID_A, "1", "/").await;
    let (s2, second) = h.object(ID_A, "1", "/").await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(first["serial"], second["serial"]);
    assert_eq!(first["events"], 1);
    assert_eq!(second["events"], 2);
    assert_eq!(second["class"], "Probe");
    assert_eq!(second["id"], ID_A);
    assert_eq!(second["name"], Value::Null);
    assert_eq!(second["token"], "tok");

    // Another object has its own instance.
    let (_, other) = h.object(ID_B, "1", "/").await;
    assert_ne!(other["serial"], first["serial"]);
    assert_eq!(other["events"], 1);
}

#[tokio::test]
async fn hibernate_drops_the_instance() {
    let h = Harness::default().await;
    let (_, before) = h.object(ID_A, "1", "/").await;
    assert_eq!(h.hibernate(ID_A).await, StatusCode::OK);
    let (_, after) = h.object(ID_A, "1", "/").await;
    assert_ne!(after["serial"], before["serial"]);
    assert_eq!(after["events"], 1);
    // Hibernating an object that has no instance is fine too.
    assert_eq!(h.hibernate(ID_B).await, StatusCode::OK);
}

#[tokio::test]
async fn a_new_incarnation_rebuilds_the_instance() {
    let h = Harness::default().await;
    let (_, first) = h.object(ID_A, "1", "/").await;
    let (_, same) = h.object(ID_A, "1", "/").await;
    let (_, rebuilt) = h.object(ID_A, "2", "/").await;
    let (_, kept) = h.object(ID_A, "2", "/").await;
    assert_eq!(same["serial"], first["serial"]);
    assert_ne!(rebuilt["serial"], first["serial"]);
    assert_eq!(rebuilt["events"], 1);
    assert_eq!(kept["serial"], rebuilt["serial"]);
    assert_eq!(kept["events"], 2);
}

#[tokio::test]
async fn an_unknown_class_is_404_json() {
    let h = Harness::default().await;
    let (status, _, body) = h
        .send(
            Method::GET,
            "/",
            &[
                ("stead-event", "request"),
                ("stead-class", "Nope"),
                ("stead-object-id", ID_A),
                ("stead-turn", "tok"),
            ],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "unknown_class");
}

#[tokio::test]
async fn a_fetch_error_is_a_500_json_answer() {
    let h = Harness::default().await;
    let (status, body) = h.object(ID_A, "1", "/fail").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        body,
        json!({"error": {"code": "app_error", "message": "boom"}})
    );
    // The instance survives an error (the sidecar changes the incarnation if it rolled back).
    let (_, next) = h.object(ID_A, "1", "/").await;
    assert_eq!(next["events"], 2);
}

#[tokio::test]
async fn a_panic_is_a_500_answer_and_the_instance_is_rebuilt() {
    let h = Harness::default().await;
    let (_, before) = h.object(ID_A, "1", "/").await;
    let (status, body) = h.object(ID_A, "1", "/panic").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["error"]["code"], "app_panic");
    let (_, after) = h.object(ID_A, "1", "/").await;
    assert_ne!(after["serial"], before["serial"]);
}

#[tokio::test]
async fn the_turn_token_goes_with_storage_calls() {
    let h = Harness::default().await;
    let (status, _, _) = h
        .send(
            Method::POST,
            "/put",
            &[
                ("stead-event", "request"),
                ("stead-class", "Probe"),
                ("stead-object-id", ID_A),
                ("stead-turn", "turn-42"),
            ],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let call = h.fake.last();
    assert_eq!(call.path, "/v1/kv/put");
    assert_eq!(call.turn.as_deref(), Some("turn-42"));
}

#[tokio::test]
async fn objects_and_the_front_door_call_objects_with_their_event_token() {
    let h = Harness::default().await;
    let object = [
        ("stead-event", "request"),
        ("stead-class", "Probe"),
        ("stead-object-id", ID_A),
        ("stead-turn", "turn-obj"),
    ];
    let (status, _, body) = h.send(Method::GET, "/call", &object, "").await;
    // The fake API's echo, passed on as it is.
    assert_eq!(status, StatusCode::CREATED);
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["uri"], "/v1/objects/Probe/name/b/x");
    assert_eq!(echo["headers"]["stead-turn"], json!(["turn-obj"]));

    let stateless = [("stead-event", "request"), ("stead-turn", "turn-front")];
    let (status, _, body) = h.send(Method::GET, "/call", &stateless, "").await;
    assert_eq!(status, StatusCode::CREATED);
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["uri"], "/v1/objects/Probe/name/c/y");
    assert_eq!(echo["headers"]["stead-turn"], json!(["turn-front"]));
}

#[tokio::test]
async fn names_are_percent_decoded_and_requests_arrive_whole() {
    let h = Harness::default().await;
    let headers = [
        ("stead-event", "request"),
        ("stead-class", "Probe"),
        ("stead-object-id", ID_A),
        ("stead-object-name", "caf%C3%A9%20room~1"),
        ("stead-turn", "tok"),
        ("x-client", "yes"),
    ];
    let (_, _, body) = h.send(Method::GET, "/", &headers, "").await;
    let who: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(who["name"], "café room~1");
    assert_eq!(who["built_for_name"], "café room~1");

    let (_, _, body) = h
        .send(Method::PUT, "/echo?q=a%20b", &headers, "payload")
        .await;
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        echo,
        json!({"method": "PUT", "path": "/echo", "q": "a b", "x-client": "yes", "body": "payload"})
    );

    let (_, headers, _) = h.send(Method::GET, "/rollback", &headers, "").await;
    assert_eq!(headers["stead-rollback"], "1");
}

#[tokio::test]
async fn stateless_requests_reach_the_front_door() {
    let h = Harness::default().await;
    let (status, _, body) = h
        .send(
            Method::GET,
            "/hello",
            &[("stead-event", "request"), ("stead-turn", "t-1")],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "front door /hello t-1");

    // Without a front door, stateless requests get 404.
    let bare = Harness::start(App::new().class::<Probe>("Probe")).await;
    let (status, _, _) = bare
        .send(
            Method::GET,
            "/hello",
            &[("stead-event", "request"), ("stead-turn", "t-1")],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn malformed_events_are_refused() {
    let h = Harness::default().await;
    // Not from the sidecar at all.
    let (status, _, _) = h.send(Method::GET, "/", &[], "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // An event kind this SDK does not know yet.
    let (status, _, body) = h
        .send(Method::GET, "/", &[("stead-event", "teleport")], "")
        .await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "unsupported_event");
    // A bad object id, and a missing turn token.
    let (status, _) = h.object("ABC", "1", "/").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = h
        .send(
            Method::GET,
            "/",
            &[
                ("stead-event", "request"),
                ("stead-class", "Probe"),
                ("stead-object-id", ID_A),
            ],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn class_with_hands_shared_state_to_instances() {
    struct Tagged(String);
    #[async_trait]
    impl DurableObject for Tagged {
        fn new(_: &ObjectInfo) -> Self {
            Tagged("default".into())
        }
        async fn fetch(&mut self, _turn: &Turn, _req: Request) -> Result<Response> {
            Ok(response::text(self.0.clone()))
        }
    }
    let tag = String::from("configured");
    let h = Harness::start(App::new().class_with("Tagged", move |_| Tagged(tag.clone()))).await;
    let (_, _, body) = h
        .send(
            Method::GET,
            "/",
            &[
                ("stead-event", "request"),
                ("stead-class", "Tagged"),
                ("stead-object-id", ID_A),
                ("stead-turn", "tok"),
            ],
            "",
        )
        .await;
    assert_eq!(body, "configured");
}

#[tokio::test]
async fn a_new_incarnation_does_not_wait_for_an_event_still_running_on_the_old_one() {
    let h = std::sync::Arc::new(Harness::default().await);
    let (_, old) = h.object(ID_A, "1", "/").await;
    // An event that overran its turn: the sidecar gave up on it and reopened the object.
    let stuck = {
        let h = std::sync::Arc::clone(&h);
        tokio::spawn(async move { h.object(ID_A, "1", "/block").await })
    };
    ENTERED.notified().await;
    let (status, fresh) =
        tokio::time::timeout(std::time::Duration::from_secs(10), h.object(ID_A, "2", "/"))
            .await
            .expect("the new incarnation waited for the old event");
    assert_eq!(status, StatusCode::OK);
    assert_ne!(fresh["serial"], old["serial"]);
    assert_eq!(fresh["events"], 1);
    GATE.add_permits(1);
    assert_eq!(stuck.await.unwrap().0, StatusCode::OK);
}
