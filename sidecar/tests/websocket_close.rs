//! The sidecar ends WebSockets as RFC 6455 says (§5.5.1, §7.4): it echoes a client's Close,
//! answers invalid UTF-8 with 1007, protocol errors with 1002 and messages over 32 MiB with 1009,
//! then drops the connection and tells the app; a handshake with an invalid key gets 400 JSON.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::proxy_app::ProxyApp;
use support::raw_ws::{self, OP_BINARY, OP_CONTINUE, OP_PING, OP_TEXT, RawWs, frame, header};
use support::{Shard, eventually, with_proxy_app};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

async fn raw(shard: &Shard, room: &str) -> RawWs {
    let path = format!("/objects/Counter/name/{room}/ws");
    raw_ws::connect(shard.ingress, &path, raw_ws::GOOD_KEY)
        .await
        .expect("handshake")
}

/// Sends `bytes` and returns the close code the sidecar answers with, checking that it then
/// ends the connection.
async fn close_code_after(shard: &Shard, room: &str, bytes: &[u8]) -> Option<u16> {
    let mut ws = raw(shard, room).await;
    // The sidecar may close before reading all of it (an oversize header): ignore write errors.
    let _ = ws.send(bytes).await;
    let (_, code) = tokio::time::timeout(Duration::from_secs(30), ws.read_until_close())
        .await
        .expect("no close frame and no end of connection after 30 s");
    let ended = tokio::time::timeout(Duration::from_secs(30), ws.ends())
        .await
        .expect("the sidecar kept the connection open after its Close");
    assert!(ended, "the sidecar sent a frame after its Close");
    code
}

/// The app's events of `kind` for the socket(s) of its room, eventually `n` of them.
async fn app_events(
    app: &ProxyApp,
    kind: &str,
    n: usize,
) -> Vec<std::collections::HashMap<String, String>> {
    eventually(&format!("the app got {n} {kind} events"), || async {
        app.events_of(kind).len() >= n
    })
    .await;
    app.events_of(kind)
}

#[tokio::test]
async fn a_clients_close_is_echoed_with_its_code_before_the_connection_drops() {
    let (shard, app) = with_proxy_app(&[]).await;
    for (i, code) in [1000u16, 4001].into_iter().enumerate() {
        let url = format!(
            "ws://127.0.0.1:{}/objects/Counter/name/echo{i}/ws",
            shard.ingress
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: "bye".into(),
        })))
        .await
        .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("no answer to the close after 30 s");
        match answer {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), code);
                assert_eq!(f.reason.as_str(), "bye");
            }
            other => panic!("expected the echo of close {code}, got {other:?}"),
        }
        // The closing handshake is complete: the server ends the connection.
        let end = tokio::time::timeout(Duration::from_secs(30), ws.next()).await;
        assert!(matches!(end, Ok(None)), "got {end:?} after the close");
        let events = app_events(&app, "websocket-close", i + 1).await;
        assert_eq!(events[i]["stead-websocket-close-code"], code.to_string());
        assert_eq!(events[i]["stead-websocket-close-reason"], "bye");
    }
}

#[tokio::test]
async fn a_close_without_a_code_is_echoed_without_one() {
    let (shard, app) = with_proxy_app(&[]).await;
    let code = close_code_after(&shard, "empty", &frame(true, 0, 0x8, &[], true)).await;
    assert_eq!(code, Some(1005), "an empty Close is echoed empty");
    let events = app_events(&app, "websocket-close", 1).await;
    assert_eq!(events[0]["stead-websocket-close-code"], "1005");
}

#[tokio::test]
async fn invalid_utf8_in_a_text_message_is_closed_with_1007() {
    let (shard, app) = with_proxy_app(&[]).await;
    // Whole, and split so that the invalid sequence is only seen when the message completes.
    let whole = frame(true, 0, OP_TEXT, b"ok \xff\xfe", true);
    let mut split = frame(false, 0, OP_TEXT, b"ok \xe2\x82", true);
    split.extend(frame(true, 0, OP_CONTINUE, b"\x28", true));
    for (i, bytes) in [whole, split].iter().enumerate() {
        assert_eq!(
            close_code_after(&shard, &format!("utf{i}"), bytes).await,
            Some(1007)
        );
    }
    let errors = app_events(&app, "websocket-error", 2).await;
    assert!(
        errors[0]["stead-websocket-error"].contains("UTF"),
        "{errors:?}"
    );
    assert!(
        app.events_of("websocket-message").is_empty(),
        "no message reached the app"
    );
}

#[tokio::test]
async fn protocol_errors_are_closed_with_1002() {
    let (shard, app) = with_proxy_app(&[]).await;
    let mut fragmented_ping = frame(false, 0, OP_PING, b"a", true);
    fragmented_ping.extend(frame(true, 0, OP_CONTINUE, b"b", true));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("reserved bits", frame(true, 0b100, OP_TEXT, b"x", true)),
        ("unmasked frame", frame(true, 0, OP_TEXT, b"x", false)),
        ("unknown data opcode", frame(true, 0, 0x3, b"x", true)),
        ("unknown control opcode", frame(true, 0, 0xB, b"x", true)),
        (
            "continuation first",
            frame(true, 0, OP_CONTINUE, b"x", true),
        ),
        (
            "ping over 125 bytes",
            frame(true, 0, OP_PING, &[7; 126], true),
        ),
        ("fragmented ping", fragmented_ping),
        ("new message inside a fragmented one", {
            let mut b = frame(false, 0, OP_TEXT, b"a", true);
            b.extend(frame(true, 0, OP_BINARY, b"b", true));
            b
        }),
        ("close code 1005 on the wire", raw_ws::close(1005)),
        ("close code 999", raw_ws::close(999)),
        ("close with a 1-byte body", frame(true, 0, 0x8, &[3], true)),
    ];
    let n = cases.len();
    for (i, (what, bytes)) in cases.into_iter().enumerate() {
        let code = close_code_after(&shard, &format!("proto{i}"), &bytes).await;
        assert_eq!(code, Some(1002), "{what}");
    }
    // Each socket's end reached the app once, as a close (bad close codes) or an error.
    eventually("the app heard of every socket's end", || async {
        app.events_of("websocket-error").len() + app.events_of("websocket-close").len() == n
    })
    .await;
}

#[tokio::test]
async fn messages_over_32_mib_are_closed_with_1009() {
    let (shard, app) = with_proxy_app(&[]).await;
    // One frame announcing 32 MiB + 1: refused from its header, before its payload is read.
    let mut one = header(true, 0, OP_BINARY, (32 << 20) + 1, true);
    one.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(close_code_after(&shard, "big0", &one).await, Some(1009));
    // Two fragments of 17 MiB each: the message only goes over when the second arrives.
    let part = vec![b'a'; 17 << 20];
    let mut two = frame(false, 0, OP_TEXT, &part, true);
    two.extend(frame(true, 0, OP_CONTINUE, &part, true));
    assert_eq!(close_code_after(&shard, "big1", &two).await, Some(1009));
    let errors = app_events(&app, "websocket-error", 2).await;
    assert!(
        errors
            .iter()
            .all(|e| e["stead-websocket-error"].contains("long")),
        "{errors:?}"
    );
}

#[tokio::test]
async fn messages_of_exactly_32_mib_still_arrive() {
    let (shard, app) = with_proxy_app(&[]).await;
    let mut ws = raw(&shard, "limit").await;
    ws.send(&frame(true, 0, OP_BINARY, &vec![b'z'; 32 << 20], true))
        .await
        .unwrap();
    ws.send(&raw_ws::close(1000)).await.unwrap();
    let (_, code) = tokio::time::timeout(Duration::from_secs(60), ws.read_until_close())
        .await
        .unwrap();
    assert_eq!(code, Some(1000));
    app_events(&app, "websocket-message", 1).await;
    assert!(app.events_of("websocket-error").is_empty());
}

#[tokio::test]
async fn handshakes_with_an_invalid_key_are_refused_with_400_json() {
    let (shard, app) = with_proxy_app(&[]).await;
    use base64::Engine as _;
    let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![1u8; n]);
    let bad = [
        "abc".to_owned(),
        "!!!!!!!!!!!!!!!!!!!!!!==".to_owned(),
        b64(15),
        b64(17),
        b64(32),
        "dGhlIHNhbXBsZSBub25jZQ".to_owned(), // 16 bytes, padding missing
    ];
    for key in &bad {
        match raw_ws::connect(shard.ingress, "/objects/Counter/name/keys/ws", key).await {
            Ok(_) => panic!("key {key:?} was accepted"),
            Err(r) => {
                assert_eq!(r.status, 400, "key {key:?}: {}", r.body);
                let v: serde_json::Value = serde_json::from_str(&r.body)
                    .unwrap_or_else(|_| panic!("not JSON: {}", r.body));
                assert_eq!(v["error"]["code"], "invalid_websocket", "{v}");
                assert!(
                    v["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("Sec-WebSocket-Key"),
                    "{v}"
                );
            }
        }
    }
    assert!(
        app.events_of("websocket-connect").is_empty(),
        "the app was never asked about a bad handshake"
    );
    let good = raw_ws::connect(shard.ingress, "/objects/Counter/name/keys/ws", &b64(16)).await;
    assert!(good.is_ok(), "a valid key is accepted: {:?}", good.err());
}

/// Calls the app API from inside a turn of `room` (the test app's `/call`).
async fn call(shard: &Shard, room: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    let (status, text) = shard
        .send(
            "POST",
            &format!("/objects/Counter/name/{room}/call"),
            &serde_json::json!({"path": path, "body": body}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn the_app_closes_a_socket_with_a_valid_code_and_cannot_send_a_reserved_one() {
    let (shard, app) = with_proxy_app(&[]).await;
    let url = format!(
        "ws://127.0.0.1:{}/objects/Counter/name/bye/ws",
        shard.ingress
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let listed = call(&shard, "bye", "/v1/websockets/list", serde_json::json!({})).await;
    let id = listed["body"]["sockets"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for code in [1005, 1006, 1015, 999, 2000, 5000] {
        let v = call(
            &shard,
            "bye",
            "/v1/websockets/close",
            serde_json::json!({"id": id, "code": code}),
        )
        .await;
        assert_eq!(v["status"], 400, "code {code}: {v}");
        assert_eq!(v["body"]["error"]["code"], "bad_request");
    }
    let v = call(
        &shard,
        "bye",
        "/v1/websockets/close",
        serde_json::json!({"id": id, "code": 4000, "reason": "done"}),
    )
    .await;
    assert_eq!(v["body"]["closed"], true, "{v}");
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(Message::Close(Some(f))))) => {
            assert_eq!(u16::from(f.code), 4000);
            assert_eq!(f.reason.as_str(), "done");
        }
        other => panic!("expected close 4000, got {other:?}"),
    }
    // Reading on makes the client library send its answering Close; the sidecar then ends the
    // connection, and the app hears the client's code.
    let end = tokio::time::timeout(Duration::from_secs(30), ws.next()).await;
    assert!(matches!(end, Ok(None)), "got {end:?} after the close");
    let events = app_events(&app, "websocket-close", 1).await;
    assert_eq!(events[0]["stead-websocket-close-code"], "4000");
}

#[tokio::test]
async fn a_client_gone_during_the_connect_turn_leaves_no_socket_behind() {
    let (shard, app) = with_proxy_app(&[]).await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", shard.ingress))
        .await
        .unwrap();
    let req = format!(
        "GET /objects/Counter/name/gone/ws?hold=1000 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        raw_ws::GOOD_KEY
    );
    use tokio::io::AsyncWriteExt as _;
    stream.write_all(req.as_bytes()).await.unwrap();
    // While the app holds the connect turn (and then accepts), the client resets the connection.
    eventually("the app was asked to accept", || async {
        !app.events_of("websocket-connect").is_empty()
    })
    .await;
    stream.set_zero_linger().unwrap();
    drop(stream);
    // Once the turn is over, the socket the app accepted is not held, listed or sent to.
    let held = || async {
        let v = call(
            &shard,
            "gone",
            "/v1/websockets/broadcast",
            serde_json::json!({"text": "x"}),
        )
        .await;
        v["body"]["sent"].as_u64().unwrap()
    };
    eventually("the abandoned socket left the registry", || async {
        app.events_of("websocket-connect").len() == 1 && held().await == 0
    })
    .await;
    let listed = call(&shard, "gone", "/v1/websockets/list", serde_json::json!({})).await;
    assert_eq!(listed["body"]["sockets"], serde_json::json!([]), "{listed}");
    assert_eq!(shard.metric("stead_websockets_open ").await, 0.0);
}
