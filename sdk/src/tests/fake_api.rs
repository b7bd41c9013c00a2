//! A stand-in for the sidecar's app API: an in-memory KV, an echoing SQL endpoint (SQL
//! containing `FAIL` is refused with `400 sql_error`), an echoing
//! object-call endpoint, and a log of every call as it arrived on the wire.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::response::{AppendHeaders, IntoResponse};
use base64::prelude::*;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{Value, json};
use stead_core::ErrorBody;

/// One call as the fake API received it.
#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub turn: Option<String>,
    pub content_type: Option<String>,
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    log: Vec<Call>,
    kv: BTreeMap<String, String>,
    alarm: Option<i64>,
    /// Open sockets as `/v1/websockets/list` answers them: `{"id", "tags", "attachment"}`.
    sockets: Vec<Value>,
    auto_response: Option<(String, String)>,
}

#[derive(Clone, Default)]
pub struct FakeApi {
    inner: Arc<Mutex<Inner>>,
}

impl FakeApi {
    /// Starts the fake on a free loopback port; returns it and its base URL.
    pub async fn start() -> (Self, String) {
        let fake = FakeApi::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        (fake, format!("http://{addr}"))
    }

    pub fn log(&self) -> Vec<Call> {
        self.inner.lock().unwrap().log.clone()
    }

    pub fn last(&self) -> Call {
        self.log().pop().expect("no call reached the fake API")
    }

    /// Adds an open socket with `tags` and no attachment.
    pub fn add_socket(&self, id: &str, tags: &[&str]) {
        self.inner
            .lock()
            .unwrap()
            .sockets
            .push(json!({"id": id, "tags": tags, "attachment": null}));
    }

    /// The alarm as the fake keeps it.
    pub fn alarm(&self) -> Option<i64> {
        self.inner.lock().unwrap().alarm
    }

    /// The auto-response pair as the fake keeps it.
    pub fn auto_response(&self) -> Option<(String, String)> {
        self.inner.lock().unwrap().auto_response.clone()
    }

    /// The raw (base64) value stored under `key`.
    pub fn stored(&self, key: &str) -> Option<String> {
        self.inner.lock().unwrap().kv.get(key).cloned()
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> (StatusCode, String) {
    (status, ErrorBody::new(code, message).to_json())
}

async fn handle(
    State(fake): State<FakeApi>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    if uri.path().starts_with("/v1/objects/") {
        object_call(method, uri, headers, body).into_response()
    } else {
        storage_call(fake, uri, headers, body).into_response()
    }
}

/// An object call: echoes what arrived as JSON (`method`, raw `uri`, `headers` as a map of
/// lists, `body` in base64) with status 201, headers `x-echo: 1` and `x-echo: 2` (repeated
/// headers must come back) and `stead-rollback: 1` (which must not). The name `cycle` gets the sidecar's 508, and a `x-status`
/// header sets the status of the echo.
fn object_call(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    if uri.path().contains("/name/cycle/") {
        let (status, body) = error(
            StatusCode::LOOP_DETECTED,
            "call_cycle",
            "the call would come back to a busy object",
        );
        return (status, [("content-type", "application/json")], body).into_response();
    }
    let mut header_map = serde_json::Map::new();
    for name in headers.keys() {
        let values: Vec<Value> = headers
            .get_all(name)
            .iter()
            .map(|v| Value::from(v.to_str().unwrap()))
            .collect();
        header_map.insert(name.as_str().to_owned(), Value::Array(values));
    }
    let status = headers
        .get("x-status")
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .map_or(StatusCode::CREATED, |s| StatusCode::from_u16(s).unwrap());
    let echo = json!({
        "method": method.as_str(),
        "uri": uri.to_string(),
        "headers": header_map,
        "body": BASE64_STANDARD.encode(&body),
    });
    (
        status,
        [("content-type", "application/json")],
        AppendHeaders([("x-echo", "1"), ("x-echo", "2"), ("stead-rollback", "1")]),
        echo.to_string(),
    )
        .into_response()
}

fn storage_call(fake: FakeApi, uri: Uri, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    let turn = headers
        .get("stead-turn")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid_json", "body is not JSON");
    };
    let path = uri.path().to_owned();
    let mut inner = fake.inner.lock().unwrap();
    inner.log.push(Call {
        path: path.clone(),
        turn: turn.clone(),
        content_type,
        body: body.clone(),
    });
    match turn.as_deref() {
        None => return error(StatusCode::UNAUTHORIZED, "missing_turn", "no stead-turn"),
        Some("finished") => {
            return error(StatusCode::GONE, "turn_finished", "the turn already ended");
        }
        Some(_) => {}
    }
    let ok = |v: Value| (StatusCode::OK, v.to_string());
    if path.starts_with("/v1/alarm/") || path.starts_with("/v1/websockets/") {
        return alarm_or_socket_call(&mut inner, &path, &body).map_or_else(
            |(status, code)| error(status, code, "refused by the fake"),
            ok,
        );
    }
    let kv = &mut inner.kv;
    let key_ok = |k: &str| k.len() <= 2048;
    match path.as_str() {
        "/v1/kv/get" => {
            if let Some(key) = body["key"].as_str() {
                if key == "plain-error" {
                    return (StatusCode::BAD_GATEWAY, "oops, not JSON".into());
                }
                if key == "bad-base64" {
                    return ok(json!({"value": "!!!"}));
                }
                ok(json!({"value": kv.get(key)}))
            } else {
                let entries: Vec<Value> = body["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|k| {
                        let k = k.as_str().unwrap();
                        kv.get(k).map(|v| json!({"key": k, "value": v}))
                    })
                    .collect();
                ok(json!({"entries": entries}))
            }
        }
        "/v1/kv/put" => {
            let entries: Vec<(String, String)> = if let Some(key) = body["key"].as_str() {
                vec![(key.into(), body["value"].as_str().unwrap().into())]
            } else {
                body["entries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| {
                        (
                            e["key"].as_str().unwrap().into(),
                            e["value"].as_str().unwrap().into(),
                        )
                    })
                    .collect()
            };
            if entries.len() > 128 {
                return error(StatusCode::BAD_REQUEST, "batch_too_large", "too many");
            }
            if let Some((k, _)) = entries.iter().find(|(k, _)| !key_ok(k)) {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "key_too_large",
                    &format!("key is {} bytes; the limit is 2048", k.len()),
                );
            }
            let n = entries.len();
            kv.extend(entries);
            ok(json!({"written": n}))
        }
        "/v1/kv/delete" => {
            let keys: Vec<String> = if let Some(key) = body["key"].as_str() {
                vec![key.into()]
            } else {
                serde_json::from_value(body["keys"].clone()).unwrap()
            };
            let n = keys.iter().filter(|k| kv.remove(*k).is_some()).count();
            ok(json!({"deleted": n}))
        }
        "/v1/kv/list" => {
            let prefix = body["prefix"].as_str().unwrap_or("");
            let mut entries: Vec<Value> = kv
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .filter(|(k, _)| body["start"].as_str().is_none_or(|s| k.as_str() >= s))
                .filter(|(k, _)| body["end"].as_str().is_none_or(|e| k.as_str() < e))
                .map(|(k, v)| json!({"key": k, "value": v}))
                .collect();
            if body["reverse"].as_bool() == Some(true) {
                entries.reverse();
            }
            if let Some(limit) = body["limit"].as_u64() {
                entries.truncate(limit as usize);
            }
            ok(json!({"entries": entries}))
        }
        "/v1/kv/delete-all" => {
            let n = kv.len();
            kv.clear();
            ok(json!({"deleted": n}))
        }
        "/v1/sql/exec" => {
            if body["sql"].as_str().is_some_and(|s| s.contains("FAIL")) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "sql_error",
                    "near FAIL: syntax error",
                );
            }
            // Echoes the parameters back as one row, one column per parameter.
            let params = body["params"].as_array().cloned().unwrap_or_default();
            let columns: Vec<String> = (0..params.len()).map(|i| format!("p{i}")).collect();
            ok(json!({"columns": columns, "rows": [params], "rows_read": 3, "rows_written": 2}))
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such API call"),
    }
}

/// The alarm and WebSocket calls, on the fake's state.
fn alarm_or_socket_call(
    inner: &mut Inner,
    path: &str,
    body: &Value,
) -> Result<Value, (StatusCode, &'static str)> {
    let bad = (StatusCode::BAD_REQUEST, "bad_request");
    let known = |inner: &Inner, id: &Value| inner.sockets.iter().any(|s| &s["id"] == id);
    // A message has exactly one of `text` and `binary` (base64).
    let check_message = |body: &Value| match (body.get("text"), body.get("binary")) {
        (Some(t), None) if t.is_string() => Ok(()),
        (None, Some(b))
            if b.as_str()
                .is_some_and(|b| BASE64_STANDARD.decode(b).is_ok()) =>
        {
            Ok(())
        }
        _ => Err(bad),
    };
    Ok(match path {
        "/v1/alarm/set" => {
            inner.alarm = Some(body["time_ms"].as_i64().ok_or(bad)?);
            json!({})
        }
        "/v1/alarm/get" => json!({"time_ms": inner.alarm}),
        "/v1/alarm/delete" => json!({"deleted": inner.alarm.take().is_some()}),
        "/v1/websockets/list" => {
            let sockets: Vec<&Value> = match body.get("tag") {
                Some(tag) => inner
                    .sockets
                    .iter()
                    .filter(|s| s["tags"].as_array().unwrap().contains(tag))
                    .collect(),
                None => inner.sockets.iter().collect(),
            };
            json!({"sockets": sockets})
        }
        "/v1/websockets/send" => {
            check_message(body)?;
            json!({"sent": u64::from(known(inner, &body["id"]))})
        }
        "/v1/websockets/broadcast" => {
            check_message(body)?;
            let except = body["except"].as_array().cloned().unwrap_or_default();
            let sent = inner
                .sockets
                .iter()
                .filter(|s| {
                    body.get("tag")
                        .is_none_or(|t| s["tags"].as_array().unwrap().contains(t))
                })
                .filter(|s| !except.contains(&s["id"]))
                .count();
            json!({"sent": sent})
        }
        "/v1/websockets/close" => {
            body["code"].as_u64().ok_or(bad)?;
            let before = inner.sockets.len();
            inner.sockets.retain(|s| s["id"] != body["id"]);
            json!({"closed": inner.sockets.len() < before})
        }
        "/v1/websockets/attachment" => {
            let socket = inner
                .sockets
                .iter_mut()
                .find(|s| s["id"] == body["id"])
                .ok_or((StatusCode::NOT_FOUND, "unknown_socket"))?;
            socket["attachment"] = body["attachment"].clone();
            json!({})
        }
        "/v1/websockets/auto-response" => {
            inner.auto_response = match (body["request"].as_str(), body["response"].as_str()) {
                (Some(req), Some(res)) => Some((req.into(), res.into())),
                _ => None,
            };
            json!({})
        }
        _ => return Err((StatusCode::NOT_FOUND, "not_found")),
    })
}
