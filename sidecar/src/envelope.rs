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
use crate::storage::{State, Writes};

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

fn malformed(why: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "app_failed",
        format!("the app's stead-writes are malformed: {why}"),
    )
}

/// Takes the writes off the head of a protocol-2 answer's body, checked against the limits. The
/// answer keeps only the client's part of the body. `None`: the answer carries no writes.
pub fn take_writes(
    resp: &mut Response<Bytes>,
    limits: &Limits,
) -> Result<Option<Writes>, ApiError> {
    let Some(len) = resp.headers_mut().remove(protocol::WRITES) else {
        return Ok(None);
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
    Ok((!writes.is_empty()).then_some(writes))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let w = take_writes(&mut r, &Limits::default()).unwrap().unwrap();
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
