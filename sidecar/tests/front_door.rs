//! What the front door and the app learn about clients: a WebSocket handshake outside
//! `/objects/` that the stateless front hands to an object (`stead-upgrade-to`), and the client's
//! address (`stead-client-addr`) on every route, kept across the peer hop between shards.
//! Clients connect from 127.0.0.x addresses other than the shards' own 127.0.0.1, so the address
//! the app is told can be told apart from the forwarding shard's.

mod support;

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use stead_core::{ClassName, ObjectId, ObjectName, Ring};
use support::proxy_app::ProxyApp;
use support::{Shard, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A Counter name whose slot shard `owner` owns in a two-shard ring.
fn name_owned_by(owner: u32) -> String {
    let ring = Ring::new(1, 4096, 2);
    let class = ClassName::new("Counter").unwrap();
    (0..)
        .map(|i| format!("room{i}"))
        .find(|n| {
            let id = ObjectId::named(&class, &ObjectName::new(n).unwrap());
            ring.owner(id.slot(4096)) == owner
        })
        .unwrap()
}

async fn two_shards() -> (Vec<Shard>, Vec<ProxyApp>) {
    let peers = [free_port(), free_port()];
    let peer_list = format!("127.0.0.1:{},127.0.0.1:{}", peers[0], peers[1]);
    let mut shards = vec![];
    let mut apps = vec![];
    for (i, peer) in peers.iter().enumerate() {
        let api = free_port();
        let app = ProxyApp::start(api).await;
        let ordinal = i.to_string();
        let peer_addr = format!("127.0.0.1:{peer}");
        let args = [
            "--shard-ordinal",
            &ordinal,
            "--peers",
            &peer_list,
            "--peer-addr",
            &peer_addr,
            "--peer-token",
            "test-token",
        ];
        shards.push(Shard::start_for(app.port, api, &args).await);
        apps.push(app);
    }
    for p in peers {
        support::wait_port(p).await;
    }
    (shards, apps)
}

/// A TCP connection to the ingress on `port` from the loopback address `from`.
async fn connect_from(from: &str, port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap()
}

/// One HTTP/1.1 request from `from` (with the extra header lines `extra`); the status.
async fn request_from(from: &str, port: u16, method: &str, path: &str, extra: &str) -> u16 {
    let mut s = connect_from(from, port).await;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n{extra}\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("no answer")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket handshake from `from` to `path`; the socket, or the refusal's status and body.
async fn ws_from(from: &str, port: u16, path: &str) -> Result<Ws, (u16, String)> {
    let stream = connect_from(from, port).await;
    let url = format!("ws://127.0.0.1:{port}{path}");
    match tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await {
        Ok((ws, resp)) => {
            assert_eq!(resp.status(), 101);
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("handshake failed: {e}"),
    }
}

async fn next_text(ws: &mut Ws) -> String {
    match tokio::time::timeout(std::time::Duration::from_secs(20), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.as_str().to_owned(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

#[tokio::test]
async fn a_websocket_handshake_through_the_front_door_reaches_the_object_it_names() {
    let (shards, apps) = two_shards().await;
    // The object lives on shard 1; one client enters through each shard.
    let room = name_owned_by(1);
    let path = format!("/room/{room}?name=a");
    let mut a = ws_from("127.0.0.1", shards[0].ingress, &path)
        .await
        .expect("handshake through shard 0");
    let mut b = ws_from("127.0.0.1", shards[1].ingress, &path)
        .await
        .expect("handshake through shard 1");
    a.send(Message::Text("hi".into())).await.unwrap();
    assert_eq!(next_text(&mut a).await, "1:hi");
    assert_eq!(next_text(&mut b).await, "1:hi");
    b.send(Message::Text("yo".into())).await.unwrap();
    assert_eq!(next_text(&mut a).await, "2:yo");
    assert_eq!(next_text(&mut b).await, "2:yo");

    // The front door of the shard each client entered decided; the owner's object accepted both,
    // on the path and query the front named.
    for app in &apps {
        let fronts: Vec<_> = app
            .events_of("request")
            .into_iter()
            .filter(|e| e.get("stead-upgrade").map(String::as_str) == Some("websocket"))
            .collect();
        assert_eq!(fronts.len(), 1, "{fronts:?}");
        assert!(!fronts[0].contains_key("stead-class"));
    }
    let connects = apps[1].events_of("websocket-connect");
    assert_eq!(connects.len(), 2);
    for c in &connects {
        assert_eq!(c[":path"], "/chat");
        assert_eq!(c["stead-object-name"], room);
    }
    assert!(apps[0].events_of("websocket-connect").is_empty());
    assert_eq!(shards[1].database_files().len(), 1);
    assert!(shards[0].database_files().is_empty());
}

#[tokio::test]
async fn a_front_door_that_does_not_hand_the_handshake_over_answers_it_itself() {
    let (shards, _apps) = two_shards().await;
    // No stead-upgrade-to: the front's own answer goes to the client, no socket opens.
    let refused = ws_from("127.0.0.1", shards[0].ingress, "/lobby")
        .await
        .expect_err("no upgrade");
    assert_eq!(refused.0, 200);
    assert!(refused.1.contains("front"), "{}", refused.1);
    // A stead-upgrade-to that names no object route is the app's mistake.
    let (status, body) = ws_from("127.0.0.1", shards[0].ingress, "/bad-upgrade")
        .await
        .expect_err("no upgrade");
    assert_eq!(status, 502, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "app_failed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stead-upgrade-to"),
        "{body}"
    );
}

#[tokio::test]
async fn the_app_is_told_the_clients_address_also_across_the_peer_hop() {
    let (shards, apps) = two_shards().await;
    let elsewhere = name_owned_by(1);
    let forged = "stead-client-addr: 10.9.9.9\r\n";

    // The front door, on the shard the client reached.
    let status = request_from("127.0.0.7", shards[0].ingress, "GET", "/front", forged).await;
    assert_eq!(status, 200);
    assert_eq!(
        apps[0].last_event("/front")["stead-client-addr"],
        "127.0.0.7"
    );

    // An object on the other shard: forwarded, and still the client's address, not the
    // forwarding shard's (127.0.0.1).
    let path = format!("/objects/Counter/name/{elsewhere}/hello");
    let status = request_from("127.0.0.8", shards[0].ingress, "POST", &path, forged).await;
    assert_eq!(status, 200);
    assert_eq!(
        apps[1].last_event("/hello")["stead-client-addr"],
        "127.0.0.8"
    );
    assert!(apps[0].last_event("/hello").is_empty());

    // A WebSocket tunnelled to the owner, and one handed over by the front door.
    let path = format!("/objects/Counter/name/{elsewhere}/direct");
    let _direct = ws_from("127.0.0.9", shards[0].ingress, &path)
        .await
        .expect("handshake");
    assert_eq!(
        apps[1].last_event("/direct")["stead-client-addr"],
        "127.0.0.9"
    );
    let _fronted = ws_from(
        "127.0.0.10",
        shards[0].ingress,
        &format!("/room/{elsewhere}"),
    )
    .await
    .expect("handshake");
    assert_eq!(
        apps[1].last_event("/chat")["stead-client-addr"],
        "127.0.0.10"
    );

    // Events that are not a client's carry none: an object call from the app API.
    let (_, answer) = support::call_in_turn(
        &shards[1],
        &elsewhere,
        &format!("/v1/objects/Counter/name/{elsewhere}x/called"),
        serde_json::json!({}),
    )
    .await;
    assert_ne!(answer, serde_json::Value::Null);
    let called = apps[1].last_event("/called");
    let called = if called.is_empty() {
        apps[0].last_event("/called")
    } else {
        called
    };
    assert!(!called.is_empty(), "the call reached no app");
    assert!(!called.contains_key("stead-client-addr"), "{called:?}");
}
