//! SQL statements and WebSocket operations that travel with a protocol-2 answer
//! (`stead-writes` `sql` and `websockets`, offered by `stead-carry`), through a real sidecar and
//! an app written here that answers raw protocol-2 responses.
//!
//! The app (on loopback, like any app): an object request `/turn` has a JSON body
//! `{"calls": [{"path": "/v1/…", "body": {…}}], "writes": {…}, "status": 200, "rollback": false}`;
//! the app makes the calls in order with the event's token, then answers `status` with
//! `stead-protocol: 2`, `stead-writes` carrying `writes` (if given), `stead-rollback: 1` (if
//! `rollback`), and the calls' results as the client's body. A WebSocket connect on
//! `/ws?name=N&tags=T` is accepted with tags `T` and the socket's id recorded under `N`; with
//! `&greet=1` its answer carries an attachment and a send for that socket and an SQL INSERT.
//! Every event's `stead-*` headers are recorded; the object's state (`stead-state`) is skipped.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use support::{Shard, free_port};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Clone)]
struct CarryApp {
    api: u16,
    /// The `stead-*` headers of every event, with `:path`.
    events: Arc<Mutex<Vec<HashMap<String, String>>>>,
    /// Socket ids by the `name` of their handshake.
    sockets: Arc<Mutex<HashMap<String, String>>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl CarryApp {
    async fn call(&self, token: &str, path: &str, body: &Value) -> Value {
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://127.0.0.1:{}{path}", self.api))
            .header("stead-turn", token)
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = self.client.request(req).await.expect("app API unreachable");
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        json!({"status": status, "body": serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null)})
    }
}

/// A protocol-2 answer: `writes` (if any) at the head of the body, then `body`.
fn answer(status: u16, writes: Option<&Value>, rollback: bool, body: &str) -> Response {
    let doc = writes.map(Value::to_string).unwrap_or_default();
    let mut b = Response::builder()
        .status(status)
        .header("stead-protocol", "2");
    if writes.is_some() {
        b = b.header("stead-writes", doc.len());
    }
    if rollback {
        b = b.header("stead-rollback", "1");
    }
    b.body(Body::from(format!("{doc}{body}"))).unwrap()
}

async fn handle(State(app): State<CarryApp>, req: Request) -> Response {
    let mut seen = HashMap::new();
    for (k, v) in req.headers() {
        if k.as_str().starts_with("stead-") {
            seen.insert(k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned());
        }
    }
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    seen.insert(":path".into(), path.clone());
    app.events.lock().unwrap().push(seen.clone());
    let mut body = req.into_body().collect().await.unwrap().to_bytes();
    // The object's state, sent with the first event of an incarnation, comes first.
    if let Some(n) = seen
        .get("stead-state")
        .and_then(|n| n.parse::<usize>().ok())
    {
        body = body.slice(n..);
    }
    let token = seen.get("stead-turn").cloned().unwrap_or_default();
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
    };
    match seen.get("stead-event").map(String::as_str) {
        Some("websocket-connect") => {
            let id = seen["stead-websocket-id"].clone();
            if let Some(name) = param("name") {
                app.sockets.lock().unwrap().insert(name, id.clone());
            }
            let writes = param("greet").map(|_| {
                json!({
                    "sql": [
                        {"sql": "CREATE TABLE IF NOT EXISTS joined(id TEXT)"},
                        {"sql": "INSERT INTO joined(id) VALUES (?)", "params": [id]},
                    ],
                    "websockets": [
                        {"op": "attachment", "id": id, "attachment": {"greeted": true}},
                        {"op": "send", "id": id, "text": "welcome"},
                    ],
                })
            });
            let mut resp = answer(200, writes.as_ref(), false, "");
            if let Some(tags) = param("tags") {
                resp.headers_mut()
                    .insert("stead-websocket-tags", tags.parse().unwrap());
            }
            return resp;
        }
        Some("request") if path == "/turn" => {}
        _ => return answer(200, None, false, ""),
    }
    let spec: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut results = vec![];
    for c in spec["calls"].as_array().into_iter().flatten() {
        results.push(
            app.call(&token, c["path"].as_str().unwrap(), &c["body"])
                .await,
        );
    }
    let writes = spec.get("writes").filter(|w| !w.is_null());
    answer(
        spec["status"].as_u64().unwrap_or(200) as u16,
        writes,
        spec["rollback"] == json!(true),
        &json!({ "calls": results }).to_string(),
    )
}

struct Setup {
    shard: Shard,
    app: CarryApp,
}

async fn start() -> Setup {
    let api = free_port();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = CarryApp {
        api,
        events: Arc::default(),
        sockets: Arc::default(),
        client: Client::builder(TokioExecutor::new()).build_http(),
    };
    let router = axum::Router::new().fallback(handle).with_state(app.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let shard = Shard::start_for(port, api, &[]).await;
    Setup { shard, app }
}

impl Setup {
    /// Runs one `/turn` of object `name`: the client's status and the body as JSON (the calls'
    /// results, or the sidecar's error).
    async fn turn(&self, name: &str, spec: Value) -> (u16, Value) {
        let (status, text) = tokio::time::timeout(
            Duration::from_secs(30),
            self.shard.send(
                "POST",
                &format!("/objects/Counter/name/{name}/turn"),
                &spec.to_string(),
            ),
        )
        .await
        .expect("the turn did not end");
        let v = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "text": text }));
        (status, v)
    }

    /// The results of `calls`, made in a committed turn of `name`.
    async fn calls(&self, name: &str, calls: Value) -> Vec<Value> {
        let (status, v) = self.turn(name, json!({ "calls": calls })).await;
        assert_eq!(status, 200, "{v}");
        v["calls"].as_array().unwrap().clone()
    }

    async fn sql(&self, name: &str, sql: &str) -> Value {
        let out = self
            .calls(
                name,
                json!([{"path": "/v1/sql/exec", "body": {"sql": sql}}]),
            )
            .await;
        out[0].clone()
    }

    async fn kv(&self, name: &str, key: &str) -> Value {
        let out = self
            .calls(name, json!([{"path": "/v1/kv/get", "body": {"key": key}}]))
            .await;
        out[0]["body"]["value"].clone()
    }

    async fn connect(&self, object: &str, query: &str) -> Ws {
        let url = format!(
            "ws://127.0.0.1:{}/objects/Counter/name/{object}/ws?{query}",
            self.shard.ingress
        );
        let (ws, resp) = tokio_tungstenite::connect_async(url)
            .await
            .expect("handshake");
        assert_eq!(resp.status(), 101);
        ws
    }

    fn socket_id(&self, name: &str) -> String {
        self.app.sockets.lock().unwrap()[name].clone()
    }
}

/// The next text message of `ws` (waiting up to 30 s).
async fn next_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(Message::Binary(b)))) => return format!("binary:{b:?}"),
            Ok(Some(Ok(_))) => {}
            other => panic!("no message: {other:?}"),
        }
    }
}

/// Sends `marker` to `ids` in a committed turn of `object`: read after a turn whose messages
/// must not leave, it is the next message if they never did (a socket's messages keep order).
async fn mark(s: &Setup, object: &str, ids: &[&str], marker: &str) {
    let ops: Vec<Value> = ids
        .iter()
        .map(|id| json!({"op": "send", "id": id, "text": marker}))
        .collect();
    let (status, v) = s.turn(object, json!({"writes": {"websockets": ops}})).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn every_object_event_offers_what_an_answer_may_carry() {
    let s = setup().await;
    s.calls("o", json!([])).await;
    let mut ws = s.connect("o", "name=a").await;
    ws.send(Message::Text("hi".into())).await.unwrap();
    support::eventually("the message event arrived", || async {
        s.app
            .events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.get("stead-event").map(String::as_str) == Some("websocket-message"))
    })
    .await;
    let events = s.app.events.lock().unwrap().clone();
    let kinds: Vec<&str> = events
        .iter()
        .filter_map(|e| e.get("stead-event").map(String::as_str))
        .collect();
    for kind in ["request", "websocket-connect", "websocket-message"] {
        assert!(kinds.contains(&kind), "no {kind} event in {kinds:?}");
    }
    let object_events = events.iter().filter(|e| {
        matches!(
            e.get("stead-event").map(String::as_str),
            Some("request" | "websocket-connect" | "websocket-message")
        )
    });
    for e in object_events {
        assert_eq!(
            e.get("stead-carry").map(String::as_str),
            Some("sql, websockets"),
            "{e:?}"
        );
    }
}

async fn setup() -> Setup {
    start().await
}

#[tokio::test]
async fn carried_sql_runs_after_the_turns_calls_and_the_next_turn_sees_it() {
    let s = setup().await;
    let (status, v) = s
        .turn(
            "sql",
            json!({
                "calls": [
                    {"path": "/v1/sql/exec", "body": {"sql": "CREATE TABLE m(seq INTEGER PRIMARY KEY, text TEXT, data BLOB)"}},
                    {"path": "/v1/sql/exec", "body": {"sql": "INSERT INTO m(seq, text) VALUES (1, 'called')"}},
                ],
                "writes": {
                    "put": [{"key": "k", "value": "dg=="}],
                    "sql": [
                        {"sql": "UPDATE m SET text = 'carried' WHERE seq = 1"},
                        {"sql": "INSERT INTO m VALUES (?, ?, ?)", "params": [2, "hi", {"base64": "AAE="}]},
                        {"sql": "INSERT INTO m(seq, text) VALUES (3, 'a'); INSERT INTO m(seq, text) VALUES (4, 'b')"},
                    ],
                },
            }),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["calls"][1]["status"], 200, "{v}");
    let out = s
        .sql("sql", "SELECT seq, text, data FROM m ORDER BY seq")
        .await;
    assert_eq!(
        out["body"]["rows"],
        json!([[1, "carried", null], [2, "hi", {"base64": "AAE="}], [3, "a", null], [4, "b", null]]),
        "{out}"
    );
    assert_eq!(s.kv("sql", "k").await, json!("dg=="));
}

#[tokio::test]
async fn carried_sql_that_fails_rolls_the_whole_turn_back_with_the_sql_error() {
    let s = setup().await;
    s.sql("fail", "CREATE TABLE m(x INTEGER UNIQUE)").await;
    let cases = [
        (
            json!({"sql": "INSERT INTO nosuch VALUES (1)"}),
            400,
            "sql_error",
        ),
        (
            json!({"sql": "INSERT INTO m VALUES (1); INSERT INTO m VALUES (1)"}),
            400,
            "sql_error",
        ),
        (json!({"sql": "DROP TABLE _stead_kv"}), 403, "reserved_name"),
        (json!({"sql": "DETACH DATABASE main"}), 403, "not_allowed"),
    ];
    for (bad, want_status, want_code) in cases {
        let (status, v) = s
            .turn(
                "fail",
                json!({
                    "calls": [
                        {"path": "/v1/kv/put", "body": {"key": "called", "value": "MQ=="}},
                        {"path": "/v1/sql/exec", "body": {"sql": "INSERT INTO m VALUES (7)"}},
                    ],
                    "writes": {
                        "put": [{"key": "carried", "value": "Mg=="}],
                        "sql": [{"sql": "INSERT INTO m VALUES (8)"}, bad],
                    },
                }),
            )
            .await;
        assert_eq!(status, want_status, "{bad}: {v}");
        assert_eq!(v["error"]["code"], want_code, "{bad}: {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
        // Nothing of the turn stayed: neither its calls nor what it carried.
        assert_eq!(s.kv("fail", "called").await, Value::Null, "{bad}");
        assert_eq!(s.kv("fail", "carried").await, Value::Null, "{bad}");
        let rows = s.sql("fail", "SELECT x FROM m").await;
        assert_eq!(rows["body"]["rows"], json!([]), "{bad}: {rows}");
    }
    // The object goes on.
    let (status, v) = s
        .turn(
            "fail",
            json!({"writes": {"sql": [{"sql": "INSERT INTO m VALUES (9)"}]}}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        s.sql("fail", "SELECT x FROM m").await["body"]["rows"],
        json!([[9]])
    );
}

#[tokio::test]
async fn carried_sends_leave_after_the_called_ones_and_only_when_the_turn_commits() {
    let s = setup().await;
    let mut a = s.connect("room", "name=a&tags=room").await;
    let mut b = s.connect("room", "name=b&tags=room").await;
    let (ida, idb) = (s.socket_id("a"), s.socket_id("b"));
    let (status, v) = s
        .turn(
            "room",
            json!({
                "calls": [{"path": "/v1/websockets/send", "body": {"id": ida, "text": "called"}}],
                "writes": {"websockets": [
                    {"op": "send", "id": ida, "text": "carried"},
                    {"op": "send", "id": ida, "binary": "AAE="},
                    {"op": "broadcast", "text": "to all but a", "tag": "room", "except": [ida]},
                    {"op": "broadcast", "text": "to all"},
                ]},
            }),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(next_text(&mut a).await, "called");
    assert_eq!(next_text(&mut a).await, "carried");
    assert_eq!(
        next_text(&mut a).await,
        format!("binary:{:?}", Bytes::from_static(&[0, 1]))
    );
    assert_eq!(next_text(&mut a).await, "to all");
    assert_eq!(next_text(&mut b).await, "to all but a");
    assert_eq!(next_text(&mut b).await, "to all");

    // Turns that roll back send nothing: a 5xx, stead-rollback, a carried write the limits
    // refuse, carried SQL that fails when run (the turn was kept until its end in storage).
    let sends = json!([
        {"op": "send", "id": ida, "text": "never"},
        {"op": "broadcast", "text": "never"},
    ]);
    let rolled_back = [
        (json!({"status": 500, "writes": {"websockets": sends}}), 500),
        // The client gets a stead-rollback answer as it was.
        (
            json!({"rollback": true, "writes": {"websockets": sends}}),
            200,
        ),
        (
            json!({"writes": {"put": [{"key": "k".repeat(3000), "value": ""}], "websockets": sends}}),
            413,
        ),
        (
            json!({"writes": {"sql": [{"sql": "SELECT * FROM nosuch"}], "websockets": sends}}),
            400,
        ),
    ];
    for (i, (spec, want)) in rolled_back.into_iter().enumerate() {
        let (status, v) = s.turn("room", spec).await;
        assert_eq!(status, want, "{v}");
        let marker = format!("marker {i}");
        mark(&s, "room", &[&ida, &idb], &marker).await;
        assert_eq!(next_text(&mut a).await, marker);
        assert_eq!(next_text(&mut b).await, marker);
    }

    // A carried close, with its code and reason.
    let (status, v) = s
        .turn(
            "room",
            json!({"writes": {"websockets": [{"op": "close", "id": idb, "code": 4001, "reason": "bye"}]}}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    loop {
        match tokio::time::timeout(Duration::from_secs(30), b.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                assert_eq!(u16::from(frame.code), 4001);
                assert_eq!(frame.reason.as_str(), "bye");
                break;
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no close: {other:?}"),
        }
    }
}

#[tokio::test]
async fn carried_attachments_and_auto_responses_are_seen_by_the_next_turn() {
    let s = setup().await;
    let mut a = s.connect("att", "name=a").await;
    let ida = s.socket_id("a");
    let (status, v) = s
        .turn(
            "att",
            json!({"writes": {"websockets": [
                {"op": "attachment", "id": ida, "attachment": {"name": "ann"}},
                {"op": "attachment", "id": "gone", "attachment": {"name": "nobody"}},
                {"op": "auto_response", "request": "ping", "response": "pong"},
            ]}}),
        )
        .await;
    assert_eq!(status, 200, "a socket that is gone is ignored: {v}");
    let list = s
        .calls("att", json!([{"path": "/v1/websockets/list", "body": {}}]))
        .await;
    let sockets = &list[0]["body"]["sockets"];
    assert_eq!(sockets.as_array().unwrap().len(), 1, "{list:?}");
    assert_eq!(sockets[0]["id"], json!(ida));
    assert_eq!(sockets[0]["attachment"], json!({"name": "ann"}));
    a.send(Message::Text("ping".into())).await.unwrap();
    assert_eq!(next_text(&mut a).await, "pong");

    // A turn that rolls back changes neither.
    let (status, _) = s
        .turn(
            "att",
            json!({"status": 500, "writes": {"websockets": [
                {"op": "attachment", "id": ida, "attachment": {"name": "rolled back"}},
                {"op": "auto_response"},
            ]}}),
        )
        .await;
    assert_eq!(status, 500);
    let list = s
        .calls("att", json!([{"path": "/v1/websockets/list", "body": {}}]))
        .await;
    assert_eq!(
        list[0]["body"]["sockets"][0]["attachment"],
        json!({"name": "ann"})
    );
    a.send(Message::Text("ping".into())).await.unwrap();
    assert_eq!(next_text(&mut a).await, "pong");

    // Removing the pair: the next ping goes to the app (which answers nothing).
    let (status, _) = s
        .turn(
            "att",
            json!({"writes": {"websockets": [{"op": "auto_response"}]}}),
        )
        .await;
    assert_eq!(status, 200);
    a.send(Message::Text("ping".into())).await.unwrap();
    mark(&s, "att", &[&ida], "after").await;
    assert_eq!(next_text(&mut a).await, "after");
}

#[tokio::test]
async fn a_connect_turn_carries_its_sockets_attachment_greeting_and_sql() {
    let s = setup().await;
    let mut a = s.connect("chat", "name=a&greet=1").await;
    let ida = s.socket_id("a");
    assert_eq!(next_text(&mut a).await, "welcome");
    let out = s
        .calls(
            "chat",
            json!([
                {"path": "/v1/websockets/list", "body": {}},
                {"path": "/v1/sql/exec", "body": {"sql": "SELECT id FROM joined"}},
            ]),
        )
        .await;
    assert_eq!(
        out[0]["body"]["sockets"][0]["attachment"],
        json!({"greeted": true})
    );
    assert_eq!(out[1]["body"]["rows"], json!([[ida]]));
}

#[tokio::test]
async fn malformed_carried_documents_fail_the_turn_and_apply_nothing() {
    let s = setup().await;
    let mut a = s.connect("bad", "name=a").await;
    let ida = s.socket_id("a");
    s.sql("bad", "CREATE TABLE m(x)").await;
    let many: Vec<Value> = (0..129)
        .map(|i| json!({"sql": "INSERT INTO m VALUES (?)", "params": [i]}))
        .collect();
    let cases = [
        (
            json!({"websockets": [{"op": "shout", "text": "x"}]}),
            502,
            "app_failed",
        ),
        (
            json!({"websockets": [{"op": "send", "id": ida, "text": "x", "loud": true}]}),
            502,
            "app_failed",
        ),
        (json!({"messages": []}), 502, "app_failed"),
        (
            json!({"websockets": [{"op": "send", "id": ida, "binary": "!!"}]}),
            502,
            "app_failed",
        ),
        (
            json!({"websockets": [{"op": "close", "id": ida, "code": 1006}]}),
            502,
            "app_failed",
        ),
        (json!({"sql": many}), 502, "app_failed"),
        (
            json!({"sql": [{"sql": "SELECT ?", "params": [{"base64": "!!"}]}]}),
            502,
            "app_failed",
        ),
        (
            json!({"websockets": [{"op": "attachment", "id": ida, "attachment": "x".repeat(17 << 10)}]}),
            413,
            "attachment_too_large",
        ),
    ];
    for (i, (doc, want_status, want_code)) in cases.into_iter().enumerate() {
        let mut writes = doc.clone();
        // Everything else in the document is fine, and the turn also wrote with calls.
        writes["put"] = json!([{"key": "carried", "value": "MQ=="}]);
        let (status, v) = s
            .turn(
                "bad",
                json!({
                    "calls": [
                        {"path": "/v1/kv/put", "body": {"key": "called", "value": "MQ=="}},
                        {"path": "/v1/sql/exec", "body": {"sql": "INSERT INTO m VALUES (-1)"}},
                        {"path": "/v1/websockets/send", "body": {"id": ida, "text": "called"}},
                    ],
                    "writes": writes,
                }),
            )
            .await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (want_status, Some(want_code)),
            "{doc}: {v}"
        );
        if want_status == 502 {
            let message = v["error"]["message"].as_str().unwrap();
            assert!(message.contains("stead-writes"), "{message}");
        }
        assert_eq!(s.kv("bad", "called").await, Value::Null, "{doc}");
        assert_eq!(s.kv("bad", "carried").await, Value::Null, "{doc}");
        assert_eq!(
            s.sql("bad", "SELECT x FROM m").await["body"]["rows"],
            json!([]),
            "{doc}"
        );
        let marker = format!("marker {i}");
        mark(&s, "bad", &[&ida], &marker).await;
        assert_eq!(next_text(&mut a).await, marker, "{doc}");
    }
}

#[tokio::test]
async fn carried_sql_that_only_reads_creates_no_database() {
    let s = setup().await;
    let (status, v) = s
        .turn("reader", json!({"writes": {"sql": [{"sql": "SELECT 1"}]}}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(
        s.shard.database_files().is_empty(),
        "{:?}",
        s.shard.database_files()
    );
}

/// Carried SQL on the real storage threads, in-process: it runs in the turn's savepoint with
/// the carried key-value writes, under the turn's deadline.
mod storage {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    use std::time::{Duration, Instant};

    use stead_core::{ClassName, ObjectId, ObjectName};
    use stead_sidecar::alarms::Alarms;
    use stead_sidecar::error::ApiError;
    use stead_sidecar::metrics::Metrics;
    use stead_sidecar::object::ObjectRef;
    use stead_sidecar::storage::{
        CarriedSql, DbOptions, Durability, Failures, Statement, Storage, StorageConfig, SyncMode,
        TurnEnd, TurnRef, Writes,
    };

    struct Rig {
        dir: std::path::PathBuf,
        storage: Storage,
        object: Arc<ObjectRef>,
        active: Arc<AtomicU64>,
        failures: Arc<Failures>,
        next: u64,
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    impl Rig {
        fn start() -> Rig {
            let dir = std::env::temp_dir().join(format!(
                "stead-carried-{}-{}",
                std::process::id(),
                ObjectId::unique().unwrap().to_hex()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let metrics = Metrics::new();
            let alarms = Alarms::start(&dir, 16, Duration::from_secs(2), metrics.clone()).unwrap();
            let storage = Storage::start(
                StorageConfig {
                    data_dir: dir.clone(),
                    threads: 1,
                    max_open: 16,
                    db: DbOptions {
                        durability: Durability::Relaxed,
                        sync: SyncMode::File,
                        max_database_bytes: 1 << 30,
                    },
                },
                metrics,
                alarms,
            )
            .unwrap();
            let class = ClassName::new("Counter").unwrap();
            let name = ObjectName::new("carried").unwrap();
            let object = Arc::new(ObjectRef::new(
                class.clone(),
                ObjectId::named(&class, &name),
                Some(name),
                16,
            ));
            Rig {
                dir,
                storage,
                object,
                active: Arc::default(),
                failures: Arc::default(),
                next: 0,
            }
        }

        fn turn(&mut self, deadline: Option<Instant>) -> TurnRef {
            self.next += 1;
            self.active
                .store(self.next, std::sync::atomic::Ordering::SeqCst);
            TurnRef {
                object: self.object.clone(),
                id: self.next,
                active: self.active.clone(),
                deadline,
                failures: self.failures.clone(),
                failures_seen: self.failures.count(),
                touched: Default::default(),
            }
        }

        /// Ends a turn that carries `put` and `sql`, and commits its group.
        async fn carry(
            &mut self,
            deadline: Option<Instant>,
            put: &str,
            sql: &[&str],
        ) -> Result<(), ApiError> {
            let t = self.turn(deadline);
            let end = TurnEnd {
                keep: true,
                writes: Some(Writes {
                    put: vec![(put.to_owned(), b"1".to_vec())],
                    sql: Some(CarriedSql {
                        statements: sql
                            .iter()
                            .map(|s| Statement {
                                sql: (*s).to_owned(),
                                params: vec![],
                            })
                            .collect(),
                        max_result_bytes: 1 << 20,
                    }),
                    ..Writes::default()
                }),
                ..TurnEnd::default()
            };
            let (ended, committed) = tokio::time::timeout(Duration::from_secs(30), async {
                let ended = self.storage.end_turn(&t, end);
                let committed = self
                    .storage
                    .commit(self.object.clone(), self.failures.clone());
                (ended.await, committed.await)
            })
            .await
            .expect("storage did not answer");
            committed.map_err(ApiError::from)?;
            ended.map_err(ApiError::from)
        }

        async fn query(&mut self, sql: &str) -> serde_json::Value {
            let t = self.turn(None);
            let out = self
                .storage
                .sql_exec(&t, sql.to_owned(), vec![], 1 << 20)
                .await
                .unwrap();
            self.storage.finish_turn(&t, false, false).await.unwrap();
            serde_json::to_value(out).unwrap()["rows"].clone()
        }

        async fn keys(&mut self) -> Vec<String> {
            let t = self.turn(None);
            let all = self
                .storage
                .kv_list(&t, Default::default(), 1 << 20)
                .await
                .unwrap();
            self.storage.finish_turn(&t, false, false).await.unwrap();
            all.into_iter().map(|(k, _)| k).collect()
        }
    }

    #[tokio::test]
    async fn carried_sql_belongs_to_its_turn_and_is_interrupted_at_its_deadline() {
        let mut rig = Rig::start();
        rig.carry(
            None,
            "a",
            &["CREATE TABLE m(x)", "INSERT INTO m VALUES (1)"],
        )
        .await
        .unwrap();
        assert_eq!(rig.query("SELECT x FROM m").await, serde_json::json!([[1]]));
        // A deadline that has passed when the statement runs: 504, nothing of the turn kept,
        // and the object's failure cell knows (later pipelined turns fail too).
        let e = rig
            .carry(Some(Instant::now()), "b", &["INSERT INTO m VALUES (2)"])
            .await
            .unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (504, "turn_timeout"));
        assert_eq!(rig.failures.count(), 1);
        // A statement that fails after one that worked: the turn's put and first statement go.
        let e = rig
            .carry(
                None,
                "c",
                &["INSERT INTO m VALUES (3)", "INSERT INTO nosuch VALUES (1)"],
            )
            .await
            .unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "sql_error"));
        assert_eq!(rig.query("SELECT x FROM m").await, serde_json::json!([[1]]));
        assert_eq!(rig.keys().await, ["a"]);
    }
}
