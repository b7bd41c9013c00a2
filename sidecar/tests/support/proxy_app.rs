//! An app written by the test itself, for what the counter cannot show. It serves on a loopback
//! port like any app and makes the app API calls the test asks for, with the token of the event
//! it is handling:
//! - object event `/call` with body `{"path": "/v1/…", "body": {…}}`: makes that call and answers
//!   200 with `{"status": …, "body": …}` (so the turn commits); `/call?rollback=1` answers 500;
//! - object event `/calls` with a JSON array of such calls: makes them in order, answers the array;
//! - object event `/hold?ms=N`: keeps the turn open N ms, then answers 200;
//! - `alarm` events: answered 200, or 500 while [`ProxyApp::fail_alarms`] is set;
//! - `websocket-connect`: accepted (tags from `?tags=`), refused with 403 when `?refuse=1`,
//!   answered after `?hold=N` ms;
//! - `websocket-message`: the room's message number (KV `seq`) is incremented and
//!   `"{seq}:{text}"` broadcast to every socket; a message `rollback` is broadcast and then
//!   answered 500, so the turn rolls back;
//! - a front-door event of a WebSocket handshake (`stead-upgrade`) on `/room/{name}` hands it to
//!   `/objects/Counter/name/{name}/chat` (`stead-upgrade-to`); on `/bad-upgrade` it names a path
//!   that is no object route; elsewhere it answers 200 without handing over;
//! - every event's `stead-*` headers are recorded in [`ProxyApp::events`].
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

#[derive(Clone)]
pub struct ProxyApp {
    pub port: u16,
    pub api: u16,
    pub events: Arc<Mutex<Vec<HashMap<String, String>>>>,
    pub fail_alarms: Arc<std::sync::atomic::AtomicBool>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl ProxyApp {
    pub async fn start(api: u16) -> ProxyApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = ProxyApp {
            port,
            api,
            events: Arc::default(),
            fail_alarms: Arc::default(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        };
        let router = axum::Router::new().fallback(handle).with_state(app.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        app
    }

    /// Calls the app API directly, as an app would, with `token`.
    pub async fn api_call(&self, token: Option<&str>, path: &str, body: &str) -> (u16, Value) {
        let mut req = http::Request::builder()
            .method("POST")
            .uri(format!("http://127.0.0.1:{}{}", self.api, path))
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("stead-turn", t);
        }
        let resp = self
            .client
            .request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
            .await
            .expect("app API unreachable");
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| json!({"not_json": String::from_utf8_lossy(&bytes)}));
        (status, v)
    }

    /// The recorded events of kind `kind` (the `stead-event` header).
    pub fn events_of(&self, kind: &str) -> Vec<HashMap<String, String>> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.get("stead-event").map(String::as_str) == Some(kind))
            .cloned()
            .collect()
    }

    /// The `stead-*` headers of the last event whose path was `path`.
    pub fn last_event(&self, path: &str) -> HashMap<String, String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|e| e.get(":path").map(String::as_str) == Some(path))
            .cloned()
            .unwrap_or_default()
    }
}

async fn handle(State(app): State<ProxyApp>, req: Request) -> Response {
    let mut seen = HashMap::new();
    for (k, v) in req.headers() {
        if k.as_str().starts_with("stead-") || k.as_str().starts_with("x-") {
            seen.insert(k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned());
        }
    }
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    seen.insert(":path".into(), path.clone());
    let token = seen.get("stead-turn").cloned();
    app.events.lock().unwrap().push(seen.clone());
    let body = req.into_body().collect().await.unwrap().to_bytes();

    let answer = |status: u16, v: Value| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(v.to_string()))
            .unwrap()
    };
    // This request's own kind: the last recorded event may be another request's, handled at
    // the same time (a hibernate notice, another object's event).
    let kind = seen.get("stead-event").cloned();
    match kind.as_deref() {
        Some("alarm") => {
            let failing = app.fail_alarms.load(std::sync::atomic::Ordering::SeqCst);
            return answer(if failing { 500 } else { 200 }, json!({}));
        }
        Some("websocket-connect") => {
            if query.contains("refuse=1") {
                return answer(403, json!({"refused": true}));
            }
            if let Some(ms) = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("hold="))
                .and_then(|ms| ms.parse().ok())
            {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let tags = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("tags="))
                .unwrap_or("")
                .to_owned();
            return Response::builder()
                .status(200)
                .header("stead-websocket-tags", tags)
                .body(Body::empty())
                .unwrap();
        }
        Some("websocket-message") => {
            let text = String::from_utf8_lossy(&body).into_owned();
            let t = token.as_deref();
            let (_, got) = app
                .api_call(t, "/v1/kv/get", &json!({"key": "seq"}).to_string())
                .await;
            let seq = got["value"]
                .as_str()
                .and_then(base64_decode)
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                + 1;
            let put = json!({"key": "seq", "value": base64_encode(seq.to_string().as_bytes())});
            app.api_call(t, "/v1/kv/put", &put.to_string()).await;
            let (s, _) = app
                .api_call(
                    t,
                    "/v1/websockets/broadcast",
                    &json!({"text": format!("{seq}:{text}")}).to_string(),
                )
                .await;
            assert_eq!(s, 200);
            return answer(if text == "rollback" { 500 } else { 200 }, json!({}));
        }
        Some("websocket-close" | "websocket-error" | "hibernate") => return answer(200, json!({})),
        _ => {}
    }
    if seen.contains_key("stead-upgrade") && !seen.contains_key("stead-class") {
        let to = match path.strip_prefix("/room/") {
            Some(room) => format!("/objects/Counter/name/{room}/chat"),
            None if path == "/bad-upgrade" => "/elsewhere".to_owned(),
            None => return answer(200, json!({"front": true})),
        };
        return Response::builder()
            .status(200)
            .header("stead-upgrade-to", to)
            .body(Body::empty())
            .unwrap();
    }
    match path.as_str() {
        "/call" => {
            let call: Value = serde_json::from_slice(&body).unwrap();
            let out = one_call(&app, token.as_deref(), &call).await;
            answer(
                if query.contains("rollback=1") {
                    500
                } else {
                    200
                },
                out,
            )
        }
        "/calls" => {
            let calls: Vec<Value> = serde_json::from_slice(&body).unwrap();
            let mut outs = vec![];
            for c in &calls {
                outs.push(one_call(&app, token.as_deref(), c).await);
            }
            answer(200, Value::Array(outs))
        }
        "/hold" => {
            let ms: u64 = query
                .strip_prefix("ms=")
                .and_then(|m| m.parse().ok())
                .unwrap_or(100);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            answer(200, json!({}))
        }
        _ => answer(200, json!({})),
    }
}

async fn one_call(app: &ProxyApp, token: Option<&str>, call: &Value) -> Value {
    let path = call["path"].as_str().unwrap_or("/v1/none");
    // A raw string body is sent as it is (to test malformed JSON); anything else as JSON.
    let body = match &call["body"] {
        Value::String(s) if call["raw"] == json!(true) => s.clone(),
        v => v.to_string(),
    };
    let (status, body) = app.api_call(token, path, &body).await;
    json!({"status": status, "body": body})
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}
