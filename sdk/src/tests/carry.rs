//! SQL statements and socket operations that travel with the answer (`stead-carry`): what the
//! document carries and in which order, the fallback to calls, the flushes before calls that
//! ask the sidecar, and rollback.

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::protocol2::{Sidecar, b64, empty_state};
use crate::{
    App, DurableObject, Error, Message, ObjectInfo, Request, RequestExt, Response, ResponseExt,
    Result, Turn, async_trait, response,
};

/// Routes that queue SQL and socket operations.
struct Carrier;

const INSERT: &str = "INSERT INTO messages(seq, text) VALUES (?, ?)";

/// Every queued operation once, in the order the document must keep.
async fn queue_everything(turn: &Turn) -> Result<()> {
    let s = turn.storage();
    let ws = turn.websockets();
    s.put("n", &1).await?;
    s.queue_sql(INSERT, &[7.into(), "hi".into()]).await?;
    ws.set_attachment("ws-1", &json!({"name": "ann"})).await?;
    ws.set_auto_response("ping", "pong").await?;
    ws.clear_auto_response().await?;
    ws.queue_send_text("ws-1", "hello").await?;
    ws.queue_send("ws-1", Message::Binary(vec![0u8, 1, 2].into()))
        .await?;
    ws.queue_broadcast("hi all", Some("room"), &["ws-1"])
        .await?;
    ws.queue_close("ws-2", 1000, "bye").await?;
    s.queue_sql("DELETE FROM messages WHERE seq < 2", &[])
        .await?;
    Ok(())
}

/// The document `queue_everything` must produce.
fn everything() -> Value {
    json!({
        "put": [{"key": "n", "value": b64("1")}],
        "sql": [
            {"sql": INSERT, "params": [7, "hi"]},
            {"sql": "DELETE FROM messages WHERE seq < 2"},
        ],
        "websockets": [
            {"op": "attachment", "id": "ws-1", "attachment": {"name": "ann"}},
            {"op": "auto_response", "request": "ping", "response": "pong"},
            {"op": "auto_response"},
            {"op": "send", "id": "ws-1", "text": "hello"},
            {"op": "send", "id": "ws-1", "binary": "AAEC"},
            {"op": "broadcast", "text": "hi all", "tag": "room", "except": ["ws-1"]},
            {"op": "close", "id": "ws-2", "code": 1000, "reason": "bye"},
        ],
    })
}

/// The calls that do what `queue_everything` does, in the order they must be made.
fn everything_as_calls() -> Vec<(&'static str, Value)> {
    vec![
        ("/v1/sql/exec", json!({"sql": INSERT, "params": [7, "hi"]})),
        (
            "/v1/websockets/attachment",
            json!({"id": "ws-1", "attachment": {"name": "ann"}}),
        ),
        (
            "/v1/websockets/auto-response",
            json!({"request": "ping", "response": "pong"}),
        ),
        ("/v1/websockets/auto-response", json!({})),
        (
            "/v1/websockets/send",
            json!({"id": "ws-1", "text": "hello"}),
        ),
        (
            "/v1/websockets/send",
            json!({"id": "ws-1", "binary": "AAEC"}),
        ),
        (
            "/v1/websockets/broadcast",
            json!({"text": "hi all", "tag": "room", "except": ["ws-1"]}),
        ),
        (
            "/v1/websockets/close",
            json!({"id": "ws-2", "code": 1000, "reason": "bye"}),
        ),
        (
            "/v1/sql/exec",
            json!({"sql": "DELETE FROM messages WHERE seq < 2", "params": []}),
        ),
    ]
}

fn api_error(e: Error) -> Result<Response> {
    match e {
        Error::Api(e) => Ok(e.to_response()),
        e => Err(e),
    }
}

#[async_trait]
impl DurableObject for Carrier {
    fn new(_: &ObjectInfo) -> Self {
        Carrier
    }

    async fn fetch(&mut self, turn: &Turn, req: Request) -> Result<Response> {
        let s = turn.storage();
        let ws = turn.websockets();
        match req.uri().path() {
            "/everything" => {
                queue_everything(turn).await?;
                if req.query_param("fail").is_some() {
                    return Err(Error::msg("fails after queueing"));
                }
                if req.query_param("rollback").is_some() {
                    return Ok(response::text("kept nothing").rollback());
                }
                if req.query_param("no-content").is_some() {
                    return Ok(response::status(StatusCode::NO_CONTENT));
                }
                Ok(response::text("queued"))
            }
            "/then-read" => {
                s.queue_sql("INSERT INTO t VALUES (?)", &[1.into()]).await?;
                s.queue_sql("INSERT INTO t VALUES (?)", &[2.into()]).await?;
                let r = s.sql("SELECT ?", &["read".into()]).await?;
                s.queue_sql("INSERT INTO t VALUES (?)", &[3.into()]).await?;
                Ok(response::json(&r.rows))
            }
            "/then-list" => {
                ws.queue_send_text("ws-1", "first").await?;
                ws.set_attachment("ws-1", &json!({"name": "bob"})).await?;
                let sockets = ws.list(None).await?;
                let sent = ws.send_text("ws-1", "second").await?;
                ws.queue_broadcast_all("third").await?;
                Ok(response::json(&json!({
                    "attachment": sockets[0].attachment,
                    "sent": sent,
                })))
            }
            "/many-sql" => {
                for i in 0..=128 {
                    s.queue_sql("INSERT INTO t VALUES (?)", &[i.into()]).await?;
                }
                Ok(response::text("queued"))
            }
            "/failing-flush" => {
                s.queue_sql("INSERT INTO t VALUES (1)", &[]).await?;
                s.queue_sql("FAIL", &[]).await?;
                s.queue_sql("INSERT INTO t VALUES (3)", &[]).await?;
                match s.sql("SELECT 1", &[]).await {
                    Ok(_) => Ok(response::text("no error?")),
                    Err(e) => api_error(e),
                }
            }
            "/gone-attachment" => {
                ws.set_attachment("ws-9", &json!({"name": "gone"})).await?;
                ws.queue_send_text("ws-1", "after").await?;
                let sockets = ws.list(None).await?;
                Ok(response::json(&sockets.len()))
            }
            "/bad-close" => match ws.queue_close("ws-1", 999, "").await {
                Ok(()) => Ok(response::text("accepted")),
                Err(e) => api_error(e),
            },
            "/long-reason" => match ws.queue_close("ws-1", 1000, &"r".repeat(124)).await {
                Ok(()) => Ok(response::text("accepted")),
                Err(e) => api_error(e),
            },
            "/big-attachment" => match ws.set_attachment("ws-1", &"x".repeat(16 << 10)).await {
                Ok(()) => Ok(response::text("accepted")),
                Err(e) => api_error(e),
            },
            _ => Ok(response::error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no route",
            )),
        }
    }
}

async fn carrier() -> Sidecar {
    let s = Sidecar::start(App::new().class::<Carrier>("Store")).await;
    s.fake.add_socket("ws-1", &["room"]);
    s.fake.add_socket("ws-2", &[]);
    s
}

const CARRY_ALL: &[(&str, &str)] = &[("stead-protocol", "2"), ("stead-carry", "sql, websockets")];

impl Sidecar {
    /// A protocol-2 event whose `stead-carry` is `carry`.
    async fn carrying(&self, path: &str, carry: &str) -> super::protocol2::Answer {
        self.event(
            Method::POST,
            path,
            "1",
            empty_state(),
            "",
            &[("stead-protocol", "2"), ("stead-carry", carry)],
        )
        .await
    }

    fn calls_with_bodies(&self) -> Vec<(String, Value)> {
        (self.log().into_iter()).map(|c| (c.path, c.body)).collect()
    }
}

fn owned(calls: Vec<(&str, Value)>) -> Vec<(String, Value)> {
    calls.into_iter().map(|(p, b)| (p.to_owned(), b)).collect()
}

#[tokio::test]
async fn queued_sql_and_socket_operations_travel_with_the_answer_in_order() {
    let s = carrier().await;
    let a = s.carrying("/everything", "sql, websockets").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, "queued");
    assert_eq!(a.headers["stead-protocol"], "2");
    assert_eq!(a.writes, Some(everything()));
    assert_eq!(s.calls(), Vec::<String>::new());
}

#[tokio::test]
async fn carry_tokens_are_read_one_by_one_and_only_named_ones_are_carried() {
    let s = carrier().await;
    // Whitespace around tokens is ignored, unknown tokens too.
    let a = s.carrying("/everything", " websockets ,sql,future").await;
    assert_eq!(a.writes, Some(everything()));
    assert_eq!(s.calls(), Vec::<String>::new());

    // Only `sql`: the socket operations are calls, made at once.
    let s = carrier().await;
    let a = s.carrying("/everything", "sql").await;
    let mut expected = everything();
    expected.as_object_mut().unwrap().remove("websockets");
    assert_eq!(a.writes, Some(expected));
    let socket_calls: Vec<_> = (everything_as_calls().into_iter())
        .filter(|(p, _)| p.starts_with("/v1/websockets/"))
        .collect();
    assert_eq!(s.calls_with_bodies(), owned(socket_calls));
}

#[tokio::test]
async fn without_stead_carry_every_queued_operation_is_a_call() {
    // Protocol 2 without `stead-carry` (a sidecar that predates it): KV writes still travel.
    let s = carrier().await;
    let a = s.v2("/everything", empty_state()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.writes,
        Some(json!({"put": [{"key": "n", "value": b64("1")}]}))
    );
    assert_eq!(s.calls_with_bodies(), owned(everything_as_calls()));
    assert_eq!(s.fake.auto_response(), None);

    // Protocol 1: the same calls, after the put.
    let s = carrier().await;
    let a = s
        .event(Method::POST, "/everything", "1", None, "", &[])
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.writes, None);
    let mut calls = owned(everything_as_calls());
    calls.insert(
        0,
        (
            "/v1/kv/put".to_owned(),
            json!({"key": "n", "value": b64("1")}),
        ),
    );
    assert_eq!(s.calls_with_bodies(), calls);
}

#[tokio::test]
async fn a_turn_that_rolls_back_drops_its_queued_operations() {
    let s = carrier().await;
    for path in ["/everything?fail=1", "/everything?rollback=1"] {
        let a = s.carrying(path, "sql, websockets").await;
        assert_eq!(a.writes, None, "{path}");
        assert_eq!(a.headers["stead-protocol"], "2");
    }
    assert_eq!(s.calls(), Vec::<String>::new());
    // Nothing of them leaks into the next turn.
    let a = s.carrying("/then-read", "sql, websockets").await;
    assert_eq!(
        a.writes,
        Some(json!({"sql": [{"sql": "INSERT INTO t VALUES (?)", "params": [3]}]}))
    );
}

#[tokio::test]
async fn an_answer_without_a_body_sends_the_queued_operations_with_calls() {
    let s = carrier().await;
    let a = s
        .carrying("/everything?no-content=1", "sql, websockets")
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert!(a.headers.get("stead-writes").is_none());
    // The order of `stead-writes`: key-value writes, SQL, then sockets.
    let mut calls = vec![(
        "/v1/kv/put".to_owned(),
        json!({"entries": [{"key": "n", "value": b64("1")}]}),
    )];
    calls.push((
        "/v1/sql/exec".to_owned(),
        json!({"sql": INSERT, "params": [7, "hi"]}),
    ));
    calls.push((
        "/v1/sql/exec".to_owned(),
        json!({"sql": "DELETE FROM messages WHERE seq < 2"}),
    ));
    calls.extend(
        owned(everything_as_calls())
            .into_iter()
            .filter(|(p, _)| p.starts_with("/v1/websockets/")),
    );
    assert_eq!(s.calls_with_bodies(), calls);
    assert_eq!(s.fake.auto_response(), None);

    // HEAD the same.
    let s = carrier().await;
    let head = s
        .event(
            Method::HEAD,
            "/everything",
            "1",
            empty_state(),
            "",
            CARRY_ALL,
        )
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.headers.get("stead-writes").is_none());
    assert_eq!(s.calls_with_bodies(), calls);
}

#[tokio::test]
async fn sql_sends_the_queued_statements_first() {
    let s = carrier().await;
    let a = s.carrying("/then-read", "sql, websockets").await;
    assert_eq!(a.status, StatusCode::OK);
    // The fake echoes the parameters: the read ran, after the two statements.
    let rows: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(rows, json!([["read"]]));
    assert_eq!(
        s.calls_with_bodies(),
        owned(vec![
            (
                "/v1/sql/exec",
                json!({"sql": "INSERT INTO t VALUES (?)", "params": [1]})
            ),
            (
                "/v1/sql/exec",
                json!({"sql": "INSERT INTO t VALUES (?)", "params": [2]})
            ),
            (
                "/v1/sql/exec",
                json!({"sql": "SELECT ?", "params": ["read"]})
            ),
        ])
    );
    // What is queued after the read travels.
    assert_eq!(
        a.writes,
        Some(json!({"sql": [{"sql": "INSERT INTO t VALUES (?)", "params": [3]}]}))
    );
}

#[tokio::test]
async fn a_failed_statement_of_a_flush_comes_back_from_the_call_and_the_rest_stays_queued() {
    let s = carrier().await;
    let a = s.carrying("/failing-flush", "sql, websockets").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let err: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(err["error"]["code"], "sql_error");
    let paths: Vec<(String, Value)> = s.calls_with_bodies();
    assert_eq!(
        paths,
        owned(vec![
            ("/v1/sql/exec", json!({"sql": "INSERT INTO t VALUES (1)"})),
            ("/v1/sql/exec", json!({"sql": "FAIL"})),
        ])
    );
    // A 4xx answer commits: the statement after the failed one was neither run nor lost.
    assert_eq!(
        a.writes,
        Some(json!({"sql": [{"sql": "INSERT INTO t VALUES (3)"}]}))
    );
}

#[tokio::test]
async fn socket_calls_that_ask_the_sidecar_send_the_queued_operations_first() {
    let s = carrier().await;
    let a = s.carrying("/then-list", "sql, websockets").await;
    assert_eq!(a.status, StatusCode::OK);
    let got: Value = serde_json::from_slice(&a.body).unwrap();
    // `list` saw the attachment set just before it.
    assert_eq!(got, json!({"attachment": {"name": "bob"}, "sent": true}));
    assert_eq!(
        s.calls_with_bodies(),
        owned(vec![
            (
                "/v1/websockets/send",
                json!({"id": "ws-1", "text": "first"})
            ),
            (
                "/v1/websockets/attachment",
                json!({"id": "ws-1", "attachment": {"name": "bob"}})
            ),
            ("/v1/websockets/list", json!({})),
            (
                "/v1/websockets/send",
                json!({"id": "ws-1", "text": "second"})
            ),
        ])
    );
    assert_eq!(
        a.writes,
        Some(json!({"websockets": [{"op": "broadcast", "text": "third"}]}))
    );
}

#[tokio::test]
async fn at_most_128_statements_travel_and_the_earlier_ones_are_sent_before_the_129th() {
    let s = carrier().await;
    let a = s.carrying("/many-sql", "sql, websockets").await;
    assert_eq!(a.status, StatusCode::OK);
    let log = s.log();
    assert_eq!(log.len(), 128);
    for (i, call) in log.iter().enumerate() {
        assert_eq!(call.path, "/v1/sql/exec");
        assert_eq!(call.body["params"], json!([i]));
    }
    assert_eq!(
        a.writes,
        Some(json!({"sql": [{"sql": "INSERT INTO t VALUES (?)", "params": [128]}]}))
    );
}

#[tokio::test]
async fn close_codes_reasons_and_attachments_are_checked_at_the_call() {
    for carry in ["sql, websockets", ""] {
        let s = carrier().await;
        for (path, status, code) in [
            ("/bad-close", StatusCode::BAD_REQUEST, "bad_request"),
            ("/long-reason", StatusCode::BAD_REQUEST, "bad_request"),
            (
                "/big-attachment",
                StatusCode::PAYLOAD_TOO_LARGE,
                "attachment_too_large",
            ),
        ] {
            let a = s.carrying(path, carry).await;
            assert_eq!(a.status, status, "{path} with carry {carry:?}");
            let err: Value = serde_json::from_slice(&a.body).unwrap();
            assert_eq!(err["error"]["code"], code, "{path}");
            assert_eq!(a.writes, None, "{path}: nothing was queued");
        }
        assert_eq!(s.calls(), Vec::<String>::new(), "carry {carry:?}");
    }
}

#[tokio::test]
async fn a_queued_attachment_for_a_socket_that_is_gone_is_skipped_when_sent_with_a_call() {
    let s = carrier().await;
    let a = s.carrying("/gone-attachment", "sql, websockets").await;
    // The carried form ignores it at the sidecar; sent with a call, its 404 is ignored too, and
    // what was queued after it is still sent.
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, "2");
    assert_eq!(
        s.calls(),
        [
            "/v1/websockets/attachment",
            "/v1/websockets/send",
            "/v1/websockets/list"
        ]
    );
    assert_eq!(a.writes, None);

    // As a call (no `stead-carry`) it is refused as before.
    let s = carrier().await;
    let a = s.carrying("/gone-attachment", "").await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    let err: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(err["error"]["code"], "unknown_socket");
    assert_eq!(s.calls(), ["/v1/websockets/attachment"]);
}
