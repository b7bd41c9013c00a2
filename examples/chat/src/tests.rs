//! The room's hot turns over real loopback HTTP: a client plays the sidecar sending events to
//! the chat app, and a small server plays the sidecar's app API and logs every call.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use stead_sdk::Bytes;
use stead_sdk::http::{self, StatusCode, Uri};

use super::*;

const ID: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

/// The app API: logs `(path, body)`; `sql/exec` answers a `SELECT` with `rows` (or `no such
/// table` while there are none) and anything else with nothing.
#[derive(Clone, Default)]
struct Api {
    log: Arc<Mutex<Vec<(String, Value)>>>,
    rows: Arc<Mutex<Option<Vec<Value>>>>,
}

async fn api_call(
    State(api): State<Api>,
    uri: Uri,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let body: Value = serde_json::from_slice(&body).unwrap();
    let path = uri.path().to_owned();
    api.log.lock().unwrap().push((path.clone(), body.clone()));
    let json = [("content-type", "application/json")];
    let is_select = body["sql"]
        .as_str()
        .is_some_and(|s| s.starts_with("SELECT"));
    match (path.as_str(), api.rows.lock().unwrap().clone()) {
        ("/v1/sql/exec", None) if is_select => (
            StatusCode::BAD_REQUEST,
            json,
            json!({"error": {"code": "sql_error", "message": "no such table: messages"}})
                .to_string(),
        ),
        ("/v1/sql/exec", Some(rows)) if is_select => (
            StatusCode::OK,
            json,
            json!({"columns": ["seq", "name", "text", "at_ms"], "rows": rows}).to_string(),
        ),
        ("/v1/sql/exec", _) => (
            StatusCode::OK,
            json,
            json!({"columns": [], "rows": []}).to_string(),
        ),
        ("/v1/websockets/list", _) => (StatusCode::OK, json, json!({"sockets": []}).to_string()),
        _ => (StatusCode::OK, json, json!({"sent": 1}).to_string()),
    }
}

struct Sidecar {
    app: SocketAddr,
    api: Api,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// An answer: status, the `stead-writes` document (if any).
struct Answer {
    status: StatusCode,
    writes: Option<Value>,
}

impl Sidecar {
    async fn start() -> Self {
        let api = Api::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = axum::Router::new()
            .fallback(api_call)
            .with_state(api.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = listener.local_addr().unwrap();
        tokio::spawn(
            App::new()
                .class::<ChatRoom>("ChatRoom")
                .api_url(url)
                .serve_on(listener),
        );
        let client = Client::builder(TokioExecutor::new()).build_http();
        Sidecar { app, api, client }
    }

    /// The calls made since the last `take_calls`.
    fn take_calls(&self) -> Vec<(String, Value)> {
        std::mem::take(&mut *self.api.log.lock().unwrap())
    }

    /// An event of protocol 2 under incarnation `inc`, with `stead-carry: sql, websockets`
    /// when `carry`.
    async fn event(
        &self,
        kind: &str,
        path: &str,
        socket: &str,
        body: &str,
        inc: &str,
        carry: bool,
    ) -> Answer {
        let mut req = http::Request::builder()
            .method(http::Method::GET)
            .uri(format!("http://{}{path}", self.app))
            .header("stead-event", kind)
            .header("stead-class", "ChatRoom")
            .header("stead-object-id", ID)
            .header("stead-object-incarnation", inc)
            .header("stead-turn", "tok")
            .header("stead-protocol", "2")
            .header("stead-websocket-id", socket);
        if carry {
            req = req.header("stead-carry", "sql, websockets");
        }
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let res = self.client.request(req).await.unwrap();
        let status = res.status();
        let n: Option<usize> = res
            .headers()
            .get("stead-writes")
            .map(|v| v.to_str().unwrap().parse().unwrap());
        let all = res.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            writes: n.map(|n| serde_json::from_slice(&all[..n]).unwrap()),
        }
    }

    async fn connect(&self, socket: &str, name: &str, inc: &str, carry: bool) -> Answer {
        let path = format!("/ws?name={name}");
        self.event("websocket-connect", &path, socket, "", inc, carry)
            .await
    }

    async fn message(&self, socket: &str, text: &str, inc: &str, carry: bool) -> Answer {
        self.event("websocket-message", "/", socket, text, inc, carry)
            .await
    }
}

const INSERT: &str = "INSERT INTO messages (seq, name, text, at_ms) VALUES (?, ?, ?, ?)";

/// The carried INSERT and broadcast of message `seq` (its time taken from the document).
fn assert_message(writes: &Value, seq: i64, name: &str, text: &str) {
    let sql = writes["sql"].as_array().unwrap();
    let insert = sql.last().unwrap();
    assert_eq!(insert["sql"], INSERT);
    let at_ms = &insert["params"][3];
    assert_eq!(insert["params"], json!([seq, name, text, at_ms]));
    let broadcast = &writes["websockets"][0];
    assert_eq!(broadcast["op"], "broadcast");
    let sent: Value = serde_json::from_str(broadcast["text"].as_str().unwrap()).unwrap();
    assert_eq!(
        sent,
        json!({"seq": seq, "name": name, "text": text, "at_ms": at_ms})
    );
    assert_eq!(writes["websockets"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn hot_turns_are_one_exchange_and_a_rolled_back_message_leaves_memory_as_it_was() {
    let s = Sidecar::start().await;
    // The first event of the instance reads the history once (no table yet).
    let a = s.connect("ws-1", "alice", "1", true).await;
    assert_eq!(a.status, StatusCode::OK);
    let calls = s.take_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "/v1/sql/exec");
    assert_eq!(
        a.writes,
        Some(json!({"websockets": [
            {"op": "attachment", "id": "ws-1", "attachment": {"name": "alice"}},
            {"op": "auto_response", "request": "ping", "response": "pong"},
        ]}))
    );

    // The first message creates the table and stores #1: no call.
    let a = s.message("ws-1", " hello ", "1", true).await;
    assert_eq!(a.status, StatusCode::OK);
    let w = a.writes.unwrap();
    assert_eq!(w["sql"][0], json!({"sql": SCHEMA}));
    assert_eq!(w["sql"].as_array().unwrap().len(), 2);
    assert_message(&w, 1, "alice", "hello");
    assert_eq!(s.take_calls(), vec![]);

    // A rolled-back message carries nothing and leaves the room's memory alone. (The sidecar
    // would start a new incarnation after it; keeping this one shows the memory is intact.)
    let a = s.message("ws-1", "!rollback this", "1", true).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(a.writes, None);

    let a = s.message("ws-1", "again", "1", true).await;
    let w = a.writes.unwrap();
    assert_eq!(w["sql"].as_array().unwrap().len(), 1, "the table exists");
    assert_message(&w, 2, "alice", "again");
    assert_eq!(s.take_calls(), vec![]);

    // A later socket gets the history from memory: no call either.
    let a = s.connect("ws-2", "bob", "1", true).await;
    let w = a.writes.unwrap();
    let ops = w["websockets"].as_array().unwrap();
    assert_eq!(ops.len(), 4);
    let history: Vec<(i64, String)> = ops[2..]
        .iter()
        .map(|op| {
            assert_eq!(
                (op["op"].as_str(), op["id"].as_str()),
                (Some("send"), Some("ws-2"))
            );
            let m: Value = serde_json::from_str(op["text"].as_str().unwrap()).unwrap();
            (
                m["seq"].as_i64().unwrap(),
                m["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(history, [(1, "hello".to_owned()), (2, "again".to_owned())]);
    assert_eq!(s.take_calls(), vec![]);
}

#[tokio::test]
async fn a_new_incarnation_reloads_the_history_and_without_carry_the_same_turns_are_calls() {
    let s = Sidecar::start().await;
    *s.api.rows.lock().unwrap() = Some(vec![
        json!([41, "ann", "old", 5]),
        json!([42, "ann", "newer", 6]),
    ]);
    let a = s.connect("ws-1", "bob", "7", false).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.writes, None);
    let calls = s.take_calls();
    let paths: Vec<&str> = calls.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v1/sql/exec",
            "/v1/websockets/attachment",
            "/v1/websockets/auto-response",
            "/v1/websockets/send",
            "/v1/websockets/send",
        ]
    );

    // The next seq comes from the loaded history; the table exists, so no CREATE.
    let a = s.message("ws-1", "new", "7", false).await;
    assert_eq!(a.status, StatusCode::OK);
    let calls = s.take_calls();
    let paths: Vec<&str> = calls.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["/v1/sql/exec", "/v1/websockets/broadcast"]);
    assert_eq!(calls[0].1["sql"], INSERT);
    assert_eq!(calls[0].1["params"][0], 43);

    // Another incarnation: a new instance, which reads the history again.
    *s.api.rows.lock().unwrap() = Some(vec![json!([50, "ann", "moved on", 7])]);
    let a = s.message("ws-1", "after", "8", true).await;
    let calls = s.take_calls();
    let paths: Vec<&str> = calls.iter().map(|(p, _)| p.as_str()).collect();
    // The name is asked again (the new instance has no cache of it), then the history.
    assert_eq!(paths, ["/v1/websockets/list", "/v1/sql/exec"]);
    assert_message(&a.writes.unwrap(), 51, "anonymous", "after");
}
