//! Hibernatable WebSockets through a real sidecar, with real WebSocket clients.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::{Shard, eventually, with_proxy_app};
use tokio_tungstenite::tungstenite::Message;

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(shard: &Shard, room: &str) -> Client {
    let url = format!(
        "ws://127.0.0.1:{}/objects/Counter/name/{room}/ws",
        shard.ingress
    );
    let (ws, resp) = tokio_tungstenite::connect_async(url)
        .await
        .expect("handshake");
    assert_eq!(resp.status(), 101);
    ws
}

/// Reads text messages until `n` have arrived (or 30 s pass).
async fn read_n(ws: &mut Client, n: usize) -> Vec<String> {
    let mut got = vec![];
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => got.push(t.to_string()),
            Ok(Some(Ok(_))) => {}
            other => panic!("after {} messages: {other:?}", got.len()),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_sockets_receive_every_broadcast_in_the_same_order() {
    let (shard, _app) = with_proxy_app(&[]).await;
    let mut clients = vec![];
    for _ in 0..50 {
        clients.push(connect(&shard, "room").await);
    }
    let (mut sinks, mut streams): (Vec<_>, Vec<_>) = clients.into_iter().map(|c| c.split()).unzip();
    let senders = sinks.iter_mut().enumerate().map(|(c, sink)| async move {
        for m in 0..10 {
            sink.send(Message::Text(format!("c{c}m{m}").into()))
                .await
                .unwrap();
        }
    });
    let readers = streams.iter_mut().map(|s| async move {
        let mut got = vec![];
        while got.len() < 500 {
            match tokio::time::timeout(Duration::from_secs(60), s.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => got.push(t.to_string()),
                Ok(Some(Ok(_))) => {}
                other => panic!("after {} messages: {other:?}", got.len()),
            }
        }
        got
    });
    let (_, received) = tokio::join!(
        futures_util::future::join_all(senders),
        futures_util::future::join_all(readers)
    );
    let first = &received[0];
    for (i, r) in received.iter().enumerate() {
        assert_eq!(r, first, "client {i} saw a different order");
    }
    // Numbered 1..500 in commit order, each message of each client exactly once.
    let seqs: Vec<u64> = first
        .iter()
        .map(|m| m.split(':').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(seqs, (1..=500).collect::<Vec<u64>>());
    let mut bodies: Vec<&str> = first.iter().map(|m| m.split_once(':').unwrap().1).collect();
    bodies.sort_unstable();
    let mut want: Vec<String> = (0..50)
        .flat_map(|c| (0..10).map(move |m| format!("c{c}m{m}")))
        .collect();
    want.sort_unstable();
    assert_eq!(bodies, want);
}

#[tokio::test]
async fn messages_of_a_rolled_back_turn_are_never_delivered() {
    let (shard, _app) = with_proxy_app(&[]).await;
    let mut a = connect(&shard, "gate").await;
    let mut b = connect(&shard, "gate").await;
    a.send(Message::Text("one".into())).await.unwrap();
    a.send(Message::Text("rollback".into())).await.unwrap();
    a.send(Message::Text("two".into())).await.unwrap();
    for ws in [&mut a, &mut b] {
        // The rolled-back turn's broadcast never left, and its seq increment was undone.
        assert_eq!(read_n(ws, 2).await, vec!["1:one", "2:two"]);
    }
}

#[tokio::test]
async fn refused_handshakes_get_the_apps_status_and_tags_filter_broadcasts() {
    let (shard, _app) = with_proxy_app(&[]).await;
    let url = format!(
        "ws://127.0.0.1:{}/objects/Counter/name/r/ws?refuse=1",
        shard.ingress
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let url = format!(
        "ws://127.0.0.1:{}/objects/Counter/name/r/ws?tags=red,big",
        shard.ingress
    );
    let (_red, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let _plain = connect(&shard, "r").await;
    let (status, text) = shard
        .send(
            "POST",
            "/objects/Counter/name/r/call",
            &json!({"path": "/v1/websockets/list", "body": {"tag": "red"}}).to_string(),
        )
        .await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sockets = v["body"]["sockets"].as_array().unwrap();
    assert_eq!(sockets.len(), 1, "{v}");
    assert_eq!(sockets[0]["tags"], json!(["red", "big"]));
}

#[tokio::test]
async fn an_object_hibernates_while_its_sockets_stay_open() {
    let (shard, _app) = with_proxy_app(&["--idle-timeout", "500ms"]).await;
    let mut ws = connect(&shard, "sleepy").await;
    ws.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(read_n(&mut ws, 1).await, vec!["1:hello"]);
    assert_eq!(shard.metric("stead_objects_open ").await, 1.0);
    eventually("the room's database closed", || async {
        shard.metric("stead_objects_open ").await == 0.0
    })
    .await;
    assert_eq!(
        shard.metric("stead_websockets_open ").await,
        1.0,
        "the socket stayed open"
    );
    ws.send(Message::Text("again".into())).await.unwrap();
    assert_eq!(
        read_n(&mut ws, 1).await,
        vec!["2:again"],
        "the next message reopened it"
    );
}

#[tokio::test]
async fn auto_responses_are_answered_without_waking_the_object() {
    let (shard, app) = with_proxy_app(&["--idle-timeout", "500ms"]).await;
    let mut ws = connect(&shard, "auto").await;
    let (status, _) = shard
        .send(
            "POST",
            "/objects/Counter/name/auto/call",
            &json!({"path": "/v1/websockets/auto-response", "body": {"request": "ping", "response": "pong"}}).to_string(),
        )
        .await;
    assert_eq!(status, 200);
    // Make sure the object has a database, then let it hibernate.
    ws.send(Message::Text("x".into())).await.unwrap();
    read_n(&mut ws, 1).await;
    eventually("the object hibernated", || async {
        shard.metric("stead_objects_open ").await == 0.0
    })
    .await;
    // The database closes first, then the app is told: count events only after that notice.
    eventually("the app heard of the hibernation", || async {
        !app.events_of("hibernate").is_empty()
    })
    .await;
    let events_before = app.events.lock().unwrap().len();
    let opened_before = shard.metric("stead_objects_opened_total").await;
    ws.send(Message::Text("ping".into())).await.unwrap();
    assert_eq!(read_n(&mut ws, 1).await, vec!["pong"]);
    assert_eq!(
        shard.metric("stead_objects_open ").await,
        0.0,
        "it stayed closed"
    );
    assert_eq!(
        shard.metric("stead_objects_opened_total").await,
        opened_before
    );
    assert_eq!(
        app.events.lock().unwrap().len(),
        events_before,
        "the app saw no event"
    );
}

#[tokio::test]
async fn sockets_close_with_1012_when_the_sidecar_stops() {
    let (mut shard, _app) = with_proxy_app(&[]).await;
    let mut ws = connect(&shard, "bye").await;
    shard.stop_sidecar();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                assert_eq!(u16::from(frame.code), 1012);
                break;
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn large_messages_cross_the_small_read_buffer_whole() {
    let (shard, _app) = with_proxy_app(&[]).await;
    let mut ws = connect(&shard, "big").await;
    let big = "x".repeat(3 << 20);
    ws.send(Message::Text(big.clone().into())).await.unwrap();
    let got = read_n(&mut ws, 1).await;
    assert_eq!(got[0], format!("1:{big}"));
}
