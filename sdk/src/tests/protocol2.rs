//! Protocol 2 end to end inside the SDK: a client plays a sidecar that offers protocol 2 and
//! sends events to an `App` over loopback; the fake app API counts the calls the app makes.

use std::net::SocketAddr;
use std::time::Duration;

use base64::prelude::*;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::fake_api::{Call, FakeApi};
use crate::{
    App, DurableObject, Error, ListOptions, ObjectInfo, Request, RequestExt, Response, ResponseExt,
    Result, Turn, async_trait, response,
};

const ID: &str = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";

/// Routes that exercise each storage operation.
struct Store;

#[async_trait]
impl DurableObject for Store {
    fn new(_: &ObjectInfo) -> Self {
        Store
    }

    async fn fetch(&mut self, turn: &Turn, req: Request) -> Result<Response> {
        let s = turn.storage();
        let key = req.query_param("key").unwrap_or_else(|| "n".into());
        match req.uri().path() {
            "/increment" => {
                let n = s.get::<i64>("n").await?.unwrap_or(0) + 1;
                s.put("n", &n).await?;
                if req.query_param("fail").is_some() {
                    return Ok(response::error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "failed_on_purpose",
                        "rolls back",
                    ));
                }
                if req.query_param("rollback").is_some() {
                    return Ok(response::text(n.to_string()).rollback());
                }
                if req.query_param("no-content").is_some() {
                    return Ok(response::status(StatusCode::NO_CONTENT));
                }
                Ok(response::text(n.to_string()))
            }
            "/get" => Ok(response::json(&s.get::<Value>(&key).await?)),
            "/put" => {
                let len: usize = req
                    .query_param("len")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(1);
                match s.put(&key, &"x".repeat(len)).await {
                    Ok(()) => Ok(response::text("stored")),
                    Err(Error::Api(e)) => Ok(e.to_response()),
                    Err(e) => Err(e),
                }
            }
            "/small-then-big" => {
                s.put("a", &1).await?;
                s.put("big", &"x".repeat(20_000)).await?;
                s.put("b", &2).await?;
                Ok(response::text("stored"))
            }
            "/reset" => {
                s.put("old", &0).await?;
                s.delete_all().await?;
                s.put("b", &2).await?;
                s.delete("x").await?;
                turn.alarm().set_ms(1_234).await?;
                Ok(response::status(StatusCode::NO_CONTENT))
            }
            "/delete" => Ok(response::json(&s.delete(&key).await?)),
            "/delete-all" => Ok(response::json(&s.delete_all().await?)),
            "/put-then-list" => {
                s.put("a", &1).await?;
                s.delete("gone").await?;
                let all: Vec<(String, Value)> = s.list(ListOptions::all()).await?;
                Ok(response::json(&all))
            }
            "/many" => {
                s.put_many([("a", 1), ("b", 2)]).await?;
                let got: Vec<(String, i64)> = s.get_many(&["a", "b", "c"]).await?;
                Ok(response::json(&got))
            }
            "/body" => Ok(response::text(
                String::from_utf8_lossy(req.body()).into_owned(),
            )),
            "/alarm" => {
                let before = turn.alarm().get().await?;
                turn.alarm().set_ms(1_900_000_000_000).await?;
                let after = turn.alarm().get().await?;
                Ok(response::json(&json!({"before": before, "after": after})))
            }
            "/late" => {
                // A handle that outlives its turn.
                let (tx, rx) = tokio::sync::oneshot::channel();
                LATE.lock().unwrap().replace(rx);
                let late = s.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let put = late.put("n", &999).await;
                    let get = late.get::<i64>("n").await;
                    let _ = tx.send((put, get));
                });
                s.put("n", &5).await?;
                Ok(response::text("answered"))
            }
            _ => Ok(response::error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no route",
            )),
        }
    }
}

type LateResult = (Result<()>, Result<Option<i64>>);
static LATE: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<LateResult>>> =
    std::sync::Mutex::new(None);

pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    /// The `stead-writes` JSON, if the answer carried writes.
    pub(super) writes: Option<Value>,
    /// The body after the writes.
    pub(super) body: Bytes,
}

pub(super) struct Sidecar {
    addr: SocketAddr,
    pub(super) fake: FakeApi,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Sidecar {
    pub(super) async fn start(app: App) -> Self {
        let (fake, url) = FakeApi::start().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(app.api_url(url).serve_on(listener));
        let client = Client::builder(TokioExecutor::new()).build_http();
        Sidecar { addr, fake, client }
    }

    async fn store() -> Self {
        Self::start(App::new().class::<Store>("Store")).await
    }

    /// Calls made to the fake API so far, as paths.
    pub(super) fn calls(&self) -> Vec<String> {
        self.fake.log().iter().map(|c| c.path.clone()).collect()
    }

    pub(super) fn log(&self) -> Vec<Call> {
        self.fake.log()
    }

    /// An event of protocol 2 for the object, with `state` as eager state if given.
    pub(super) async fn event(
        &self,
        method: Method,
        path: &str,
        incarnation: &str,
        state: Option<Value>,
        body: &str,
        extra: &[(&str, &str)],
    ) -> Answer {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("stead-event", "request")
            .header("stead-class", "Store")
            .header("stead-object-id", ID)
            .header("stead-object-incarnation", incarnation)
            .header("stead-turn", "tok");
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let mut payload = Vec::new();
        if let Some(state) = state {
            let json = serde_json::to_vec(&state).unwrap();
            req = req.header("stead-state", json.len().to_string());
            payload.extend_from_slice(&json);
        }
        payload.extend_from_slice(body.as_bytes());
        let req = req.body(Full::new(Bytes::from(payload))).unwrap();
        let res = self.client.request(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let all = res.into_body().collect().await.unwrap().to_bytes();
        let (writes, body) = match headers.get("stead-writes") {
            Some(n) => {
                let n: usize = n.to_str().unwrap().parse().unwrap();
                (
                    Some(serde_json::from_slice(&all[..n]).unwrap()),
                    all.slice(n..),
                )
            }
            None => (None, all),
        };
        Answer {
            status,
            headers,
            writes,
            body,
        }
    }

    pub(super) async fn v2(&self, path: &str, state: Option<Value>) -> Answer {
        self.event(
            Method::POST,
            path,
            "1",
            state,
            "",
            &[("stead-protocol", "2")],
        )
        .await
    }
}

pub(super) fn b64(s: &str) -> String {
    BASE64_STANDARD.encode(s)
}

pub(super) fn empty_state() -> Option<Value> {
    Some(json!({"entries": [], "alarm": null}))
}

#[tokio::test]
async fn a_hot_counter_makes_no_storage_call_with_eager_state() {
    let s = Sidecar::store().await;
    let first = s.v2("/increment", empty_state()).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.headers["stead-protocol"], "2");
    assert_eq!(
        first.writes,
        Some(json!({"put": [{"key": "n", "value": b64("1")}]}))
    );
    assert_eq!(first.body, "1");
    for n in 2..=5 {
        let a = s.v2("/increment", None).await;
        assert_eq!(a.body, n.to_string());
        assert_eq!(
            a.writes,
            Some(json!({"put": [{"key": "n", "value": b64(&n.to_string())}]}))
        );
    }
    assert_eq!(s.calls(), Vec::<String>::new());
}

#[tokio::test]
async fn without_eager_state_only_the_first_read_is_a_call() {
    let s = Sidecar::store().await;
    for n in 1..=3 {
        assert_eq!(s.v2("/increment", None).await.body, n.to_string());
    }
    assert_eq!(s.calls(), ["/v1/kv/get"]);
    // A read-only turn carries nothing.
    let a = s.v2("/get?key=n", None).await;
    assert_eq!(a.body, "3");
    assert_eq!(a.writes, None);
    assert_eq!(a.headers["stead-protocol"], "2");
    assert_eq!(s.calls().len(), 1);
}

#[tokio::test]
async fn a_rolled_back_turn_carries_nothing_and_leaves_the_cache_alone() {
    let s = Sidecar::store().await;
    assert_eq!(s.v2("/increment", empty_state()).await.body, "1");
    for path in ["/increment?fail=1", "/increment?rollback=1"] {
        let a = s.v2(path, None).await;
        assert_eq!(a.writes, None, "{path}");
        assert_eq!(a.headers["stead-protocol"], "2");
    }
    // Had the cache taken the dropped writes, this would answer 4.
    assert_eq!(s.v2("/increment", None).await.body, "2");
    assert_eq!(s.calls(), Vec::<String>::new());
}

#[tokio::test]
async fn writes_that_could_break_a_limit_are_calls_after_the_buffer_is_sent() {
    let s = Sidecar::store().await;
    // A value over 16 KiB: the buffer (`a`) goes first, as a batch, then the value as a call;
    // what comes after it is buffered again.
    let a = s.v2("/small-then-big", empty_state()).await;
    assert_eq!(a.body, "stored");
    let log = s.log();
    let paths: Vec<&str> = log.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths, ["/v1/kv/put", "/v1/kv/put"]);
    assert_eq!(
        log[0].body,
        json!({"entries": [{"key": "a", "value": b64("1")}]})
    );
    assert_eq!(log[1].body["key"], "big");
    assert_eq!(
        a.writes,
        Some(json!({"put": [{"key": "b", "value": b64("2")}]}))
    );

    // A key over the sidecar's limit fails at the call, as in protocol 1.
    let long = "k".repeat(2049);
    let refused = s.v2(&format!("/put?key={long}"), None).await;
    assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
    let err: Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(err["error"]["code"], "key_too_large");
    assert_eq!(refused.writes, None);

    // Read back after a direct write: a call (the cache does not keep large values); `a` and
    // `b` are known.
    let before = s.calls().len();
    let got = s.v2("/get?key=big", None).await;
    assert_eq!(got.body.len(), 20_002);
    assert_eq!(s.v2("/get?key=a", None).await.body, "1");
    assert_eq!(s.v2("/get?key=b", None).await.body, "2");
    assert_eq!(s.calls().len(), before + 1);
}

#[tokio::test]
async fn list_sends_the_turns_writes_before_it_lists() {
    let s = Sidecar::store().await;
    let a = s.v2("/put-then-list", None).await;
    assert_eq!(a.status, StatusCode::OK);
    let log = s.log();
    let paths: Vec<&str> = log.iter().map(|c| c.path.as_str()).collect();
    // `gone` was unknown: its delete was a call (it tells whether the key existed).
    assert_eq!(paths, ["/v1/kv/delete", "/v1/kv/put", "/v1/kv/list"]);
    assert_eq!(
        log[1].body,
        json!({"entries": [{"key": "a", "value": b64("1")}]})
    );
    let listed: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(listed, json!([["a", 1]]));
    // Sent already: nothing left to carry.
    assert_eq!(a.writes, None);
    // What the list returned is cached.
    s.v2("/get?key=a", None).await;
    assert_eq!(s.calls().len(), 3);
}

#[tokio::test]
async fn batches_are_buffered_and_answered_from_the_turns_writes() {
    let s = Sidecar::store().await;
    let a = s.v2("/many", None).await;
    let got: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(got, json!([["a", 1], ["b", 2]]));
    // Only `c` was asked for.
    let log = s.log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].body, json!({"keys": ["c"]}));
    assert_eq!(
        a.writes,
        Some(json!({"put": [{"key": "a", "value": b64("1")}, {"key": "b", "value": b64("2")}]}))
    );
}

#[tokio::test]
async fn delete_and_delete_all_answer_from_a_complete_cache() {
    let s = Sidecar::store().await;
    let state = json!({"entries": [{"key": "a", "value": b64("1")}, {"key": "b", "value": b64("2")}], "alarm": null});
    let a = s.v2("/delete?key=a", Some(state)).await;
    assert_eq!(a.body, "true");
    assert_eq!(a.writes, Some(json!({"delete": ["a"]})));
    assert_eq!(s.v2("/delete?key=a", None).await.body, "false");
    let all = s.v2("/delete-all", None).await;
    assert_eq!(all.body, "1");
    assert_eq!(all.writes, Some(json!({"delete_all": true})));
    assert_eq!(s.calls(), Vec::<String>::new());
}

#[tokio::test]
async fn eager_state_is_split_off_the_body_and_fills_the_alarm() {
    let s = Sidecar::store().await;
    let state = json!({"entries": [], "alarm": 1_800_000_000_000i64});
    let a = s
        .event(
            Method::POST,
            "/body",
            "1",
            Some(state),
            "the real body",
            &[("stead-protocol", "2")],
        )
        .await;
    assert_eq!(a.body, "the real body");
    let a = s.v2("/alarm", None).await;
    let got: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(
        got,
        json!({"before": 1_800_000_000_000i64, "after": 1_900_000_000_000i64})
    );
    assert_eq!(
        a.writes,
        Some(json!({"alarm": {"time_ms": 1_900_000_000_000i64}}))
    );
    assert_eq!(s.calls(), Vec::<String>::new());

    // A state header that does not match the body is refused.
    let bad = s
        .event(
            Method::POST,
            "/body",
            "1",
            None,
            "{}",
            &[("stead-protocol", "2"), ("stead-state", "99")],
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn answers_without_a_body_send_the_writes_with_calls() {
    let s = Sidecar::store().await;
    let a = s.v2("/increment?no-content=1", empty_state()).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(a.writes, None);
    assert!(a.headers.get("stead-writes").is_none());
    assert_eq!(s.calls(), ["/v1/kv/put"]);
    assert_eq!(s.fake.stored("n"), Some(b64("1")));
    // The cache took the write all the same.
    assert_eq!(s.v2("/increment", None).await.body, "2");

    let head = s
        .event(
            Method::HEAD,
            "/increment",
            "1",
            None,
            "",
            &[("stead-protocol", "2")],
        )
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.headers.get("stead-writes").is_none());
    assert_eq!(s.calls(), ["/v1/kv/put", "/v1/kv/put"]);
    assert_eq!(s.fake.stored("n"), Some(b64("3")));
}

#[tokio::test]
async fn a_handle_that_outlives_its_turn_is_refused_and_changes_nothing() {
    let s = Sidecar::store().await;
    let a = s.v2("/late", empty_state()).await;
    assert_eq!(
        a.writes,
        Some(json!({"put": [{"key": "n", "value": b64("5")}]}))
    );
    let rx = LATE.lock().unwrap().take().unwrap();
    let (put, get) = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .unwrap()
        .unwrap();
    for e in [put.unwrap_err(), get.unwrap_err()] {
        let api = e.api().expect("a refusal");
        assert_eq!(api.status, StatusCode::GONE);
        assert_eq!(api.code, "turn_finished");
    }
    assert_eq!(s.v2("/get?key=n", None).await.body, "5");
    assert_eq!(s.calls(), Vec::<String>::new());
}

#[tokio::test]
async fn protocol_1_is_kept_when_forced_or_not_offered() {
    // Forced by the app: every operation is a call, the answer says nothing of protocol 2.
    let s = Sidecar::start(App::new().class::<Store>("Store").protocol(1)).await;
    for _ in 0..2 {
        let a = s.v2("/increment", None).await;
        assert!(a.headers.get("stead-protocol").is_none());
        assert_eq!(a.writes, None);
    }
    assert_eq!(
        s.calls(),
        ["/v1/kv/get", "/v1/kv/put", "/v1/kv/get", "/v1/kv/put"]
    );

    // Not offered by the sidecar (an older one): the same; a state header is still split off.
    let s = Sidecar::store().await;
    let a = s
        .event(Method::POST, "/body", "1", empty_state(), "real", &[])
        .await;
    assert_eq!(a.body, "real");
    let a = s
        .event(Method::POST, "/increment", "1", None, "", &[])
        .await;
    assert_eq!(a.body, "1");
    assert!(a.headers.get("stead-protocol").is_none());
    assert_eq!(s.calls(), ["/v1/kv/get", "/v1/kv/put"]);
}

#[tokio::test]
async fn a_turn_of_protocol_1_between_two_of_protocol_2_leaves_no_stale_cache() {
    let s = Sidecar::store().await;
    assert_eq!(s.v2("/increment", empty_state()).await.body, "1");
    // The fake holds nothing (the writes travelled with the answer); a protocol-1 turn writes
    // behind the cache's back.
    let old = s
        .event(Method::POST, "/increment", "1", None, "", &[])
        .await;
    assert_eq!(old.body, "1");
    // The cache was forgotten: the next read asks.
    assert_eq!(s.v2("/get?key=n", None).await.body, "1");
    assert_eq!(s.calls(), ["/v1/kv/get", "/v1/kv/put", "/v1/kv/get"]);
}

#[tokio::test]
async fn writes_sent_with_calls_keep_the_order_the_sidecar_applies() {
    let s = Sidecar::store().await;
    // A 204 cannot carry writes: they go as calls, in the order of `stead-writes`.
    let a = s.v2("/reset", empty_state()).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let log = s.log();
    let calls: Vec<(&str, &Value)> = log.iter().map(|c| (c.path.as_str(), &c.body)).collect();
    assert_eq!(
        calls,
        [
            ("/v1/kv/delete-all", &json!({})),
            ("/v1/kv/delete", &json!({"keys": ["x"]})),
            (
                "/v1/kv/put",
                &json!({"entries": [{"key": "b", "value": b64("2")}]})
            ),
            ("/v1/alarm/set", &json!({"time_ms": 1_234})),
        ]
    );
    assert_eq!(s.fake.alarm(), Some(1_234));
}
