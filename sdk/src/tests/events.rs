//! Alarms and WebSockets: the calls' wire format against the fake API, and the dispatch of
//! `alarm` and `websocket-*` events to the hooks of `DurableObject`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::prelude::*;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::fake_api::FakeApi;
use crate::client::ApiClient;
use crate::{
    AlarmInfo, App, DurableObject, Error, Message, ObjectInfo, Request, RequestExt, Response,
    Result, Turn, WebSocketInfo, async_trait, now_ms, response,
};

const ID: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

async fn turn_with(token: &'static str) -> (FakeApi, Turn) {
    let (fake, url) = FakeApi::start().await;
    let info = Arc::new(ObjectInfo {
        class: "Room".into(),
        id: ID.into(),
        name: Some("r".into()),
    });
    let api = ApiClient::new(&url).unwrap();
    (fake, Turn::new(info, HeaderValue::from_static(token), api))
}

#[tokio::test]
async fn alarm_calls_carry_epoch_ms_and_the_turn() {
    let (fake, turn) = turn_with("tok-a").await;
    let alarm = turn.alarm();
    assert_eq!(alarm.get().await.unwrap(), None);
    assert_eq!(fake.last().path, "/v1/alarm/get");
    assert_eq!(fake.last().body, json!({}));
    assert_eq!(fake.last().turn.as_deref(), Some("tok-a"));

    alarm.set_ms(1_764_000_000_000).await.unwrap();
    assert_eq!(fake.last().path, "/v1/alarm/set");
    assert_eq!(fake.last().body, json!({"time_ms": 1_764_000_000_000i64}));
    assert_eq!(alarm.get().await.unwrap(), Some(1_764_000_000_000));
    assert_eq!(
        alarm.get_time().await.unwrap(),
        Some(UNIX_EPOCH + Duration::from_millis(1_764_000_000_000))
    );

    alarm
        .set(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        .await
        .unwrap();
    assert_eq!(fake.alarm(), Some(1_700_000_000_123));

    let before = now_ms();
    let at = alarm.set_in(Duration::from_millis(500)).await.unwrap();
    let after = now_ms();
    assert!((before + 500..=after + 500).contains(&at), "{at}");
    assert_eq!(fake.alarm(), Some(at));

    assert!(alarm.delete().await.unwrap());
    assert_eq!(fake.last().path, "/v1/alarm/delete");
    assert!(!alarm.delete().await.unwrap());
    assert_eq!(alarm.get().await.unwrap(), None);
}

#[tokio::test]
async fn alarm_refusals_are_api_errors() {
    let (_fake, turn) = turn_with("finished").await;
    match turn.alarm().set(SystemTime::now()).await {
        Err(Error::Api(e)) => assert_eq!(e.code, "turn_finished"),
        other => panic!("expected turn_finished, got {other:?}"),
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
}

#[tokio::test]
async fn socket_calls_have_the_documented_bodies() {
    let (fake, turn) = turn_with("tok-w").await;
    fake.add_socket("s1", &["player"]);
    fake.add_socket("s2", &[]);
    let ws = turn.websockets();

    assert!(ws.send_text("s1", "hi").await.unwrap());
    let call = fake.last();
    assert_eq!(call.path, "/v1/websockets/send");
    assert_eq!(call.turn.as_deref(), Some("tok-w"));
    assert_eq!(call.body, json!({"id": "s1", "text": "hi"}));

    assert!(
        ws.send_binary("s2", Bytes::from_static(&[0, 255]))
            .await
            .unwrap()
    );
    assert_eq!(
        fake.last().body,
        json!({"id": "s2", "binary": BASE64_STANDARD.encode([0u8, 255])})
    );
    // A socket that is gone.
    assert!(!ws.send("gone", "x").await.unwrap());
    assert!(ws.send_json("s1", &json!({"seq": 1})).await.unwrap());
    assert_eq!(fake.last().body, json!({"id": "s1", "text": "{\"seq\":1}"}));

    assert_eq!(ws.broadcast_all("all").await.unwrap(), 2);
    assert_eq!(fake.last().path, "/v1/websockets/broadcast");
    assert_eq!(fake.last().body, json!({"text": "all"}));
    assert_eq!(
        ws.broadcast(Message::from(vec![1u8]), Some("player"), &["s2"])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        fake.last().body,
        json!({"binary": "AQ==", "tag": "player", "except": ["s2"]})
    );
    assert_eq!(ws.broadcast("x", None, &["s1"]).await.unwrap(), 1);

    ws.set_attachment("s1", &User { name: "al".into() })
        .await
        .unwrap();
    assert_eq!(fake.last().path, "/v1/websockets/attachment");
    assert_eq!(
        fake.last().body,
        json!({"id": "s1", "attachment": {"name": "al"}})
    );
    let listed = ws.list(None).await.unwrap();
    assert_eq!(fake.last().body, json!({}));
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].id, "s1");
    assert!(listed[0].has_tag("player"));
    assert_eq!(
        listed[0].attachment::<User>().unwrap(),
        Some(User { name: "al".into() })
    );
    assert_eq!(listed[1].attachment::<User>().unwrap(), None);
    assert_eq!(
        ws.attachment::<User>("s1").await.unwrap(),
        Some(User { name: "al".into() })
    );
    assert_eq!(ws.attachment::<User>("nope").await.unwrap(), None);

    let players = ws.list(Some("player")).await.unwrap();
    assert_eq!(fake.last().body, json!({"tag": "player"}));
    assert_eq!(players.len(), 1);

    ws.set_auto_response("ping", "pong").await.unwrap();
    assert_eq!(
        fake.last().body,
        json!({"request": "ping", "response": "pong"})
    );
    assert_eq!(fake.auto_response(), Some(("ping".into(), "pong".into())));
    ws.clear_auto_response().await.unwrap();
    assert_eq!(fake.last().body, json!({}));
    assert_eq!(fake.auto_response(), None);

    assert!(ws.close("s2", 1000, "bye").await.unwrap());
    assert_eq!(fake.last().path, "/v1/websockets/close");
    assert_eq!(
        fake.last().body,
        json!({"id": "s2", "code": 1000, "reason": "bye"})
    );
    assert!(!ws.close("s2", 1000, "again").await.unwrap());

    // A refusal of the API is an error.
    assert!(matches!(
        ws.set_attachment("gone", &1).await,
        Err(Error::Api(e)) if e.code == "unknown_socket"
    ));
}

#[test]
fn tags_are_checked_before_they_travel() {
    use crate::response::{accept_websocket, accept_websocket_with_tags};
    assert_eq!(accept_websocket().status(), StatusCode::OK);
    let none: [&str; 0] = [];
    let res = accept_websocket_with_tags(&none).unwrap();
    assert!(res.headers().get("stead-websocket-tags").is_none());
    let res = accept_websocket_with_tags(&["a", "b:c"]).unwrap();
    assert_eq!(res.headers()["stead-websocket-tags"], "a,b:c");
    let eleven: Vec<String> = (0..11).map(|i| i.to_string()).collect();
    assert!(accept_websocket_with_tags(&eleven).is_err());
    assert!(accept_websocket_with_tags(&eleven[..10]).is_ok());
    assert!(accept_websocket_with_tags(&["x".repeat(257)]).is_err());
    assert!(accept_websocket_with_tags(&["x".repeat(256)]).is_ok());
    assert!(accept_websocket_with_tags(&[""]).is_err());
    assert!(accept_websocket_with_tags(&["a,b"]).is_err());
}

#[test]
fn messages_convert_and_parse() {
    assert_eq!(Message::from("a"), Message::Text("a".into()));
    assert_eq!(Message::from(String::from("a")).as_bytes(), b"a");
    assert_eq!(
        Message::from(&b"\x00"[..]),
        Message::Binary(Bytes::from_static(b"\x00"))
    );
    assert_eq!(Message::Binary(Bytes::from_static(b"x")).as_text(), None);
    let m = Message::Binary(Bytes::from_static(br#"{"name":"b"}"#));
    assert_eq!(m.parse_json::<User>().unwrap(), User { name: "b".into() });
    assert!(Message::from("nope").parse_json::<User>().is_err());
}

/// An object with every hook: each reports what it saw by broadcasting it, so the test reads
/// the fake API's log.
struct Room {
    events: Vec<String>,
}

#[async_trait]
impl DurableObject for Room {
    fn new(_: &ObjectInfo) -> Self {
        Room { events: vec![] }
    }

    async fn fetch(&mut self, _turn: &Turn, _req: Request) -> Result<Response> {
        Ok(response::json(&self.events))
    }

    async fn alarm(&mut self, turn: &Turn, info: AlarmInfo) -> Result<()> {
        self.events.push(format!("alarm {}", info.retry));
        if info.retry < 2 {
            return Err(Error::msg(format!("attempt {} fails", info.retry)));
        }
        turn.websockets()
            .broadcast_all(format!("alarm retry={}", info.retry))
            .await?;
        Ok(())
    }

    async fn websocket_connect(
        &mut self,
        turn: &Turn,
        req: Request,
        ws: WebSocketInfo,
    ) -> Result<Response> {
        self.events.push(format!("connect {}", ws.id));
        if req.uri().path() != "/ws" {
            return Ok(response::error(
                StatusCode::NOT_FOUND,
                "not_found",
                "sockets live at /ws",
            ));
        }
        let name = req.query_param("name").unwrap_or_default();
        turn.websockets()
            .send_text(&ws.id, format!("welcome {name} ({})", req.method()))
            .await?;
        response::accept_websocket_with_tags(&["player"])
    }

    async fn websocket_message(&mut self, turn: &Turn, ws_id: &str, msg: Message) -> Result<()> {
        self.events.push(format!("message {ws_id}"));
        if msg.as_text() == Some("fail") {
            return Err(Error::msg("this message fails"));
        }
        turn.websockets().send(ws_id, msg).await?;
        Ok(())
    }

    async fn websocket_close(
        &mut self,
        turn: &Turn,
        ws_id: &str,
        code: u16,
        reason: String,
    ) -> Result<()> {
        self.events.push(format!("close {ws_id}"));
        turn.websockets()
            .broadcast_all(format!("closed {ws_id} {code} {reason}"))
            .await?;
        Ok(())
    }

    async fn websocket_error(&mut self, turn: &Turn, ws_id: &str, error: String) -> Result<()> {
        self.events.push(format!("error {ws_id}"));
        turn.websockets()
            .broadcast_all(format!("error {ws_id}: {error}"))
            .await?;
        Ok(())
    }
}

/// Only `fetch`: every other hook has its default.
struct Plain;

#[async_trait]
impl DurableObject for Plain {
    fn new(_: &ObjectInfo) -> Self {
        Plain
    }

    async fn fetch(&mut self, _turn: &Turn, _req: Request) -> Result<Response> {
        Ok(response::text("plain"))
    }
}

struct Sidecar {
    addr: SocketAddr,
    fake: FakeApi,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Sidecar {
    async fn start() -> Self {
        let (fake, url) = FakeApi::start().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = App::new()
            .class::<Room>("Room")
            .class::<Plain>("Plain")
            .api_url(url);
        tokio::spawn(app.serve_on(listener));
        let client = Client::builder(TokioExecutor::new()).build_http();
        Sidecar { addr, fake, client }
    }

    /// Sends event `event` for object `ID` of `class` with `extra` headers.
    async fn event(
        &self,
        class: &str,
        event: &str,
        method: Method,
        path: &str,
        extra: &[(&str, &str)],
        body: &'static [u8],
    ) -> (StatusCode, http::HeaderMap, Bytes) {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("stead-event", event)
            .header("stead-class", class)
            .header("stead-object-id", ID)
            .header("stead-object-incarnation", "1")
            .header("stead-turn", "tok");
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let res = self
            .client
            .request(req.body(Full::new(Bytes::from_static(body))).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        (
            status,
            headers,
            res.into_body().collect().await.unwrap().to_bytes(),
        )
    }

    /// The events the `Room` instance has seen.
    async fn seen(&self) -> Vec<String> {
        let (_, _, body) = self
            .event("Room", "request", Method::GET, "/", &[], b"")
            .await;
        serde_json::from_slice(&body).unwrap()
    }

    fn last_call(&self) -> (String, Value) {
        let call = self.fake.last();
        (call.path, call.body)
    }
}

#[tokio::test]
async fn alarm_events_reach_the_alarm_hook_with_the_retry_count() {
    let s = Sidecar::start().await;
    // The sidecar sends `POST /` with the retry count; failures are 500s (the turn rolls back).
    let (status, _, body) = s.event("Room", "alarm", Method::POST, "/", &[], b"").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["message"], "attempt 0 fails");
    let (status, _, _) = s
        .event(
            "Room",
            "alarm",
            Method::POST,
            "/",
            &[("stead-alarm-retry", "1")],
            b"",
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (status, _, body) = s
        .event(
            "Room",
            "alarm",
            Method::POST,
            "/",
            &[("stead-alarm-retry", "2")],
            b"",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());
    assert_eq!(
        s.last_call(),
        (
            "/v1/websockets/broadcast".into(),
            json!({"text": "alarm retry=2"})
        )
    );
    assert_eq!(s.seen().await, ["alarm 0", "alarm 1", "alarm 2"]);

    let (status, _, _) = s
        .event(
            "Room",
            "alarm",
            Method::POST,
            "/",
            &[("stead-alarm-retry", "x")],
            b"",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn websocket_events_reach_their_hooks() {
    let s = Sidecar::start().await;
    s.fake.add_socket("w1", &["player"]);

    // Connect: the original path, query and method; 2xx accepts, with tags.
    let (status, headers, _) = s
        .event(
            "Room",
            "websocket-connect",
            Method::GET,
            "/ws?name=al%20b",
            &[("stead-websocket-id", "w1"), ("upgrade", "websocket")],
            b"",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["stead-websocket-tags"], "player");
    assert_eq!(
        s.last_call(),
        (
            "/v1/websockets/send".into(),
            json!({"id": "w1", "text": "welcome al b (GET)"})
        )
    );
    // Anything else refuses, with the hook's status and body.
    let (status, _, body) = s
        .event(
            "Room",
            "websocket-connect",
            Method::GET,
            "/elsewhere",
            &[("stead-websocket-id", "w2")],
            b"",
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["message"], "sockets live at /ws");

    // Messages: text and binary, echoed.
    let msg = |kind: &'static str, body: &'static [u8]| {
        let s = &s;
        async move {
            s.event(
                "Room",
                "websocket-message",
                Method::POST,
                "/ws?name=al%20b",
                &[("stead-websocket-id", "w1"), ("stead-websocket-kind", kind)],
                body,
            )
            .await
            .0
        }
    };
    assert_eq!(msg("text", "héllo".as_bytes()).await, StatusCode::OK);
    assert_eq!(s.last_call().1, json!({"id": "w1", "text": "héllo"}));
    assert_eq!(msg("binary", &[0, 1, 255]).await, StatusCode::OK);
    assert_eq!(
        s.last_call().1,
        json!({"id": "w1", "binary": BASE64_STANDARD.encode([0u8, 1, 255])})
    );
    // A hook error rolls the turn back; malformed events are refused.
    assert_eq!(
        msg("text", b"fail").await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(msg("text", &[0xff, 0xfe]).await, StatusCode::BAD_REQUEST);
    assert_eq!(msg("smoke", b"x").await, StatusCode::BAD_REQUEST);

    // Close and error: codes and percent-encoded words.
    let (status, _, _) = s
        .event(
            "Room",
            "websocket-close",
            Method::POST,
            "/ws",
            &[
                ("stead-websocket-id", "w1"),
                ("stead-websocket-close-code", "4001"),
                ("stead-websocket-close-reason", "gone%20home%20%E2%9C%93"),
            ],
            b"",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        s.last_call().1,
        json!({"text": "closed w1 4001 gone home ✓"})
    );
    let (status, _, _) = s
        .event(
            "Room",
            "websocket-close",
            Method::POST,
            "/ws",
            &[("stead-websocket-id", "w1")],
            b"",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.last_call().1, json!({"text": "closed w1 1005 "}));
    let (status, _, _) = s
        .event(
            "Room",
            "websocket-error",
            Method::POST,
            "/ws",
            &[
                ("stead-websocket-id", "w1"),
                ("stead-websocket-error", "connection%20reset"),
            ],
            b"",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        s.last_call().1,
        json!({"text": "error w1: connection reset"})
    );

    // One instance saw all of it, in order (the failed message did not drop it).
    assert_eq!(
        s.seen().await,
        [
            "connect w1",
            "connect w2",
            "message w1",
            "message w1",
            "message w1",
            "close w1",
            "close w1",
            "error w1"
        ]
    );

    // Every WebSocket event needs its socket id.
    for event in [
        "websocket-connect",
        "websocket-message",
        "websocket-close",
        "websocket-error",
    ] {
        let (status, _, _) = s.event("Room", event, Method::POST, "/ws", &[], b"").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{event}");
    }
}

#[tokio::test]
async fn objects_without_the_hooks_get_the_defaults() {
    let s = Sidecar::start().await;
    let (status, _, _) = s.event("Plain", "alarm", Method::POST, "/", &[], b"").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = s
        .event(
            "Plain",
            "websocket-connect",
            Method::GET,
            "/ws",
            &[("stead-websocket-id", "w")],
            b"",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "no_websockets");
    for (event, extra) in [
        ("websocket-message", ("stead-websocket-kind", "text")),
        ("websocket-close", ("stead-websocket-close-code", "1000")),
        ("websocket-error", ("stead-websocket-error", "x")),
    ] {
        let (status, _, _) = s
            .event(
                "Plain",
                event,
                Method::POST,
                "/ws",
                &[("stead-websocket-id", "w"), extra],
                b"hi",
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{event}");
    }
    // No call reached the app API.
    assert!(s.fake.log().is_empty());
}

#[tokio::test]
async fn object_events_need_a_class() {
    let s = Sidecar::start().await;
    let res = s
        .client
        .request(
            http::Request::builder()
                .method(Method::POST)
                .uri(format!("http://{}/", s.addr))
                .header("stead-event", "alarm")
                .header("stead-turn", "tok")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}
