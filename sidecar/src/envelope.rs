//! Protocol 2's JSON envelopes at the head of bodies: the object's state before an event's body
//! (`stead-state`), and a turn's writes before its answer's body (`stead-writes`). See
//! `docs/app-protocol.md`, "Protocol 2".

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use stead_core::protocol;

use crate::error::ApiError;
use crate::limits::Limits;
use crate::storage::{CarriedSql, State, Statement, Writes};
use crate::websocket::registry::{
    Outgoing, SocketOp, WsMessage, auto_response_pair, check_attachment, check_close,
};

/// The KV state of an object is sent with its first event only up to this size (keys and values).
pub const MAX_STATE_BYTES: usize = 64 << 10;

/// Whether an answer (or any message) says it speaks protocol 2.
pub fn speaks_v2(headers: &HeaderMap) -> bool {
    headers
        .get(protocol::PROTOCOL)
        .is_some_and(|v| v.as_bytes() == protocol::PROTOCOL_VERSION.as_bytes())
}

#[derive(Serialize)]
struct WireState<'a> {
    entries: Vec<WireEntry<'a>>,
    alarm: Option<i64>,
}

#[derive(Serialize)]
struct WireEntry<'a> {
    key: &'a str,
    value: String,
}

/// Puts the object's state at the head of the event's body and says so in `stead-state`.
pub fn prepend_state(req: &mut Request<Bytes>, state: &State) {
    let wire = WireState {
        entries: state
            .entries
            .iter()
            .map(|(k, v)| WireEntry {
                key: k,
                value: base64::engine::general_purpose::STANDARD.encode(v),
            })
            .collect(),
        alarm: state.alarm,
    };
    // Serializing strings and integers cannot fail.
    let Ok(json) = serde_json::to_vec(&wire) else {
        return;
    };
    let mut body = BytesMut::with_capacity(json.len() + req.body().len());
    body.extend_from_slice(&json);
    body.extend_from_slice(req.body());
    req.headers_mut()
        .insert(protocol::STATE, HeaderValue::from(json.len()));
    req.headers_mut().remove(CONTENT_LENGTH);
    *req.body_mut() = body.freeze();
}

/// Most SQL statements one answer may carry.
pub const MAX_CARRIED_SQL: usize = 128;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireWrites {
    #[serde(default)]
    delete_all: bool,
    #[serde(default)]
    delete: Vec<String>,
    #[serde(default)]
    put: Vec<WirePut>,
    #[serde(default)]
    alarm: Option<WireAlarm>,
    #[serde(default)]
    sql: Vec<WireSql>,
    #[serde(default)]
    websockets: Vec<WireSocketOp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePut {
    key: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireAlarm {
    time_ms: Option<i64>,
}

/// A statement as `/v1/sql/exec` takes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSql {
    sql: String,
    #[serde(default)]
    params: Vec<serde_json::Value>,
}

/// A socket operation, with the fields of the matching `/v1/websockets/*` call.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum WireSocketOp {
    Send {
        id: String,
        text: Option<String>,
        binary: Option<String>,
    },
    Broadcast {
        text: Option<String>,
        binary: Option<String>,
        tag: Option<String>,
        #[serde(default)]
        except: Vec<String>,
    },
    Close {
        id: String,
        #[serde(default = "normal_close")]
        code: u16,
        #[serde(default)]
        reason: String,
    },
    Attachment {
        id: String,
        attachment: serde_json::Value,
    },
    AutoResponse {
        request: Option<String>,
        response: Option<String>,
    },
}

fn normal_close() -> u16 {
    1000
}

impl WireSocketOp {
    /// Checked as the matching call checks it.
    fn check(self) -> Result<SocketOp, ApiError> {
        Ok(match self {
            WireSocketOp::Send { id, text, binary } => SocketOp::Out(Outgoing::Send {
                id,
                msg: WsMessage::from_app(text, binary.as_deref())?,
            }),
            WireSocketOp::Broadcast {
                text,
                binary,
                tag,
                except,
            } => SocketOp::Out(Outgoing::Broadcast {
                tag,
                except,
                msg: WsMessage::from_app(text, binary.as_deref())?,
            }),
            WireSocketOp::Close { id, code, reason } => {
                check_close(code, &reason)?;
                SocketOp::Out(Outgoing::Close { id, code, reason })
            }
            WireSocketOp::Attachment { id, attachment } => {
                check_attachment(&attachment)?;
                SocketOp::Attachment { id, attachment }
            }
            WireSocketOp::AutoResponse { request, response } => {
                SocketOp::AutoResponse(auto_response_pair(request, response)?)
            }
        })
    }
}

fn malformed(why: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "app_failed",
        format!("the app's stead-writes are malformed: {why}"),
    )
}

/// A check shared with a call failed on item `i` of the carried `field`: what is the caller's
/// mistake in a call (400 `bad_request`) is the app's in an answer (502); a limit keeps its code.
fn carried(e: ApiError, field: &str, i: usize) -> ApiError {
    match e.code {
        "bad_request" => malformed(format!("{field}[{i}]: {}", e.message)),
        _ => ApiError {
            message: format!("stead-writes {field}[{i}]: {}", e.message),
            ..e
        },
    }
}

/// What a protocol-2 answer carries: the turn's writes, for storage, and its socket operations,
/// applied by the turn if it is kept.
#[derive(Debug, Default)]
pub struct Carried {
    pub writes: Option<Writes>,
    pub sockets: Vec<SocketOp>,
}

/// Takes the writes off the head of a protocol-2 answer's body, all checked against the limits
/// before anything is applied. The answer keeps only the client's part of the body.
pub fn take_writes(resp: &mut Response<Bytes>, limits: &Limits) -> Result<Carried, ApiError> {
    let Some(len) = resp.headers_mut().remove(protocol::WRITES) else {
        return Ok(Carried::default());
    };
    let len: usize = len
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| malformed("stead-writes must be a byte count"))?;
    let body = resp.body();
    if len > body.len() {
        return Err(malformed(format!(
            "stead-writes says {len} bytes but the body has {}",
            body.len()
        )));
    }
    let wire: WireWrites = serde_json::from_slice(&body[..len]).map_err(malformed)?;
    let rest = body.slice(len..);
    *resp.body_mut() = rest;
    resp.headers_mut().remove(CONTENT_LENGTH);
    if wire.sql.len() > MAX_CARRIED_SQL {
        return Err(malformed(format!(
            "stead-writes carries {} SQL statements; at most {MAX_CARRIED_SQL}",
            wire.sql.len()
        )));
    }
    let mut writes = Writes {
        delete_all: wire.delete_all,
        alarm: wire.alarm.map(|a| a.time_ms),
        ..Writes::default()
    };
    for k in wire.delete {
        limits.key(&k)?;
        writes.delete.push(k);
    }
    for p in wire.put {
        limits.key(&p.key)?;
        // A value that is not base64 is the app's mistake, not the client's.
        let v = limits.value(&p.key, &p.value).map_err(|e| match e.code {
            "bad_request" => malformed(e.message),
            _ => e,
        })?;
        writes.put.push((p.key, v));
    }
    if !wire.sql.is_empty() {
        let mut statements = Vec::with_capacity(wire.sql.len());
        for (i, st) in wire.sql.into_iter().enumerate() {
            let params = limits
                .sql(&st.sql, &st.params)
                .map_err(|e| carried(e, "sql", i))?;
            statements.push(Statement {
                sql: st.sql,
                params,
            });
        }
        writes.sql = Some(CarriedSql {
            statements,
            max_result_bytes: limits.max_sql_result_bytes,
        });
    }
    let sockets = wire
        .websockets
        .into_iter()
        .enumerate()
        .map(|(i, op)| op.check().map_err(|e| carried(e, "websockets", i)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Carried {
        writes: (!writes.is_empty()).then_some(writes),
        sockets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::websocket::registry::MAX_ATTACHMENT_BYTES;
    use rusqlite::types::Value;

    fn answer(writes: &str, rest: &str) -> Response<Bytes> {
        let mut r = Response::new(Bytes::from(format!("{writes}{rest}")));
        r.headers_mut()
            .insert(protocol::WRITES, HeaderValue::from(writes.len()));
        r.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(writes.len() + rest.len()));
        r
    }

    #[test]
    fn writes_are_taken_off_the_head_of_the_body() {
        let mut r = answer(
            r#"{"delete":["a"],"put":[{"key":"n","value":"Mw=="}],"alarm":{"time_ms":5}}"#,
            "hello",
        );
        let w = take_writes(&mut r, &Limits::default())
            .unwrap()
            .writes
            .unwrap();
        assert_eq!(w.delete, ["a"]);
        assert_eq!(w.put, [("n".to_owned(), b"3".to_vec())]);
        assert_eq!(w.alarm, Some(Some(5)));
        assert_eq!(r.body().as_ref(), b"hello");
        assert!(r.headers().get(CONTENT_LENGTH).is_none());
        assert!(r.headers().get(protocol::WRITES).is_none());
    }

    #[test]
    fn writes_past_a_limit_or_malformed_are_refused() {
        let limits = Limits {
            max_key_bytes: 3,
            ..Limits::default()
        };
        let mut r = answer(r#"{"put":[{"key":"long","value":""}]}"#, "");
        assert_eq!(
            take_writes(&mut r, &limits).unwrap_err().code,
            "key_too_large"
        );
        let mut r = answer(r#"{"put":[{"key":"k"}]}"#, "");
        assert_eq!(take_writes(&mut r, &limits).unwrap_err().code, "app_failed");
        let mut r = answer("{}", "");
        r.headers_mut()
            .insert(protocol::WRITES, HeaderValue::from(99));
        assert_eq!(take_writes(&mut r, &limits).unwrap_err().code, "app_failed");
    }

    fn code_of(writes: &str, limits: &Limits) -> &'static str {
        take_writes(&mut answer(writes, "rest"), limits)
            .unwrap_err()
            .code
    }

    #[test]
    fn carried_sql_and_socket_operations_are_parsed_in_order() {
        let mut r = answer(
            r#"{"put":[{"key":"k","value":""}],
                "sql":[{"sql":"INSERT INTO m VALUES (?, ?, ?, ?, ?)","params":[7,"hi",null,true,{"base64":"AAE="}]},
                       {"sql":"DELETE FROM m"}],
                "websockets":[
                  {"op":"attachment","id":"ws-1","attachment":{"name":"ann"}},
                  {"op":"auto_response","request":"ping","response":"pong"},
                  {"op":"auto_response"},
                  {"op":"send","id":"ws-1","text":"hello"},
                  {"op":"send","id":"ws-1","binary":"AAE="},
                  {"op":"broadcast","text":"hi all","tag":"room","except":["ws-1"]},
                  {"op":"close","id":"ws-2","code":4000,"reason":"bye"},
                  {"op":"close","id":"ws-3"}]}"#,
            "body",
        );
        let limits = Limits::default();
        let c = take_writes(&mut r, &limits).unwrap();
        assert_eq!(r.body().as_ref(), b"body");
        let w = c.writes.unwrap();
        assert_eq!(w.put, [("k".to_owned(), vec![])]);
        let sql = w.sql.unwrap();
        assert_eq!(sql.max_result_bytes, limits.max_sql_result_bytes);
        assert_eq!(sql.statements.len(), 2);
        assert_eq!(
            sql.statements[0].params,
            [
                Value::Integer(7),
                Value::Text("hi".into()),
                Value::Null,
                Value::Integer(1),
                Value::Blob(vec![0, 1])
            ]
        );
        assert_eq!(sql.statements[1].sql, "DELETE FROM m");
        assert!(sql.statements[1].params.is_empty());
        let ops: Vec<String> = c.sockets.iter().map(|o| format!("{o:?}")).collect();
        assert_eq!(ops.len(), 8);
        assert!(
            matches!(&c.sockets[0], SocketOp::Attachment { id, attachment } if id == "ws-1" && attachment["name"] == "ann")
        );
        assert!(
            matches!(&c.sockets[1], SocketOp::AutoResponse(Some((q, a))) if q == "ping" && a == "pong")
        );
        assert!(matches!(&c.sockets[2], SocketOp::AutoResponse(None)));
        assert!(
            matches!(&c.sockets[3], SocketOp::Out(Outgoing::Send { id, msg: WsMessage::Text(t) }) if id == "ws-1" && t == "hello")
        );
        assert!(
            matches!(&c.sockets[4], SocketOp::Out(Outgoing::Send { msg: WsMessage::Binary(b), .. }) if b.as_ref() == [0, 1])
        );
        assert!(
            matches!(&c.sockets[5], SocketOp::Out(Outgoing::Broadcast { tag: Some(t), except, .. }) if t == "room" && except == &["ws-1"])
        );
        assert!(
            matches!(&c.sockets[6], SocketOp::Out(Outgoing::Close { code: 4000, reason, .. }) if reason == "bye")
        );
        assert!(
            matches!(&c.sockets[7], SocketOp::Out(Outgoing::Close { code: 1000, reason, .. }) if reason.is_empty())
        );
    }

    #[test]
    fn only_socket_operations_make_no_storage_writes() {
        let mut r = answer(r#"{"websockets":[{"op":"broadcast","text":"x"}]}"#, "");
        let c = take_writes(&mut r, &Limits::default()).unwrap();
        assert!(c.writes.is_none());
        assert_eq!(c.sockets.len(), 1);
        let mut r = answer(r#"{"sql":[]}"#, "");
        assert!(
            take_writes(&mut r, &Limits::default())
                .unwrap()
                .writes
                .is_none()
        );
    }

    #[test]
    fn malformed_carried_operations_are_the_apps_failure() {
        let l = Limits::default();
        for bad in [
            r#"{"websockets":[{"op":"shout","text":"x"}]}"#,
            r#"{"websockets":[{"op":"send","id":"a","text":"x","extra":1}]}"#,
            r#"{"websockets":[{"text":"x"}]}"#,
            r#"{"websockets":[{"op":"send","id":"a","binary":"not base64!"}]}"#,
            r#"{"websockets":[{"op":"send","id":"a","text":"x","binary":"AA=="}]}"#,
            r#"{"websockets":[{"op":"send","id":"a"}]}"#,
            r#"{"websockets":[{"op":"close","id":"a","code":1005}]}"#,
            r#"{"websockets":[{"op":"close","id":"a","reason":"REASON"}]}"#,
            r#"{"websockets":[{"op":"auto_response","request":"ping"}]}"#,
            r#"{"websockets":[{"op":"attachment","id":"a"}]}"#,
            r#"{"sql":[{"sql":"SELECT 1","args":[]}]}"#,
            r#"{"sql":[{"sql":"SELECT ?","params":[[1]]}]}"#,
            r#"{"sql":[{"sql":"SELECT ?","params":[{"base64":"%%"}]}]}"#,
            r#"{"sql":"SELECT 1"}"#,
        ] {
            let bad = bad.replace("REASON", &"r".repeat(124));
            let e = take_writes(&mut answer(&bad, ""), &l).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_GATEWAY, "app_failed"),
                "{bad}"
            );
            assert!(e.message.contains("stead-writes"), "{}", e.message);
        }
        let many = format!(
            r#"{{"sql":[{}]}}"#,
            vec![r#"{"sql":"SELECT 1"}"#; 129].join(",")
        );
        let e = take_writes(&mut answer(&many, ""), &l).unwrap_err();
        assert_eq!(e.code, "app_failed");
        assert!(
            e.message
                .contains("carries 129 SQL statements; at most 128"),
            "{}",
            e.message
        );
        let most = format!(
            r#"{{"sql":[{}]}}"#,
            vec![r#"{"sql":"SELECT 1"}"#; 128].join(",")
        );
        assert!(take_writes(&mut answer(&most, ""), &l).is_ok());
    }

    #[test]
    fn carried_operations_past_a_limit_get_the_limits_code() {
        let l = Limits {
            max_statement_bytes: 20,
            max_params: 2,
            ..Limits::default()
        };
        assert_eq!(
            code_of(
                r#"{"sql":[{"sql":"SELECT 1 -- longer than twenty bytes"}]}"#,
                &l
            ),
            "statement_too_large"
        );
        assert_eq!(
            code_of(r#"{"sql":[{"sql":"SELECT ?, ?, ?","params":[1,2,3]}]}"#, &l),
            "too_many_params"
        );
        assert_eq!(
            code_of(r#"{"sql":[{"sql":"DROP TABLE _stead_kv"}]}"#, &l),
            "reserved_name"
        );
        let big = format!(
            r#"{{"websockets":[{{"op":"attachment","id":"a","attachment":"{}"}}]}}"#,
            "x".repeat(MAX_ATTACHMENT_BYTES)
        );
        let e = take_writes(&mut answer(&big, ""), &l).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::PAYLOAD_TOO_LARGE, "attachment_too_large")
        );
    }

    #[test]
    fn state_goes_before_the_event_body() {
        let mut req = Request::new(Bytes::from_static(b"body"));
        prepend_state(
            &mut req,
            &State {
                entries: vec![("k".into(), b"v".to_vec())],
                alarm: None,
            },
        );
        let n: usize = req.headers()[protocol::STATE]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&req.body()[..n]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"entries": [{"key": "k", "value": "dg=="}], "alarm": null})
        );
        assert_eq!(&req.body()[n..], b"body");
    }
}
