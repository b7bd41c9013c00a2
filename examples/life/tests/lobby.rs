//! The lobby trusts only rooms with their player counts, and rooms added in bulk cannot hide the
//! rooms people play in: a real sidecar and the `life` app on loopback.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use support::{Cleanup, start_shard};

struct Http {
    base: String,
}

impl Http {
    /// Sends one request over a fresh connection and returns the status and the JSON body.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let addr = self.base.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw);
        let (head, rest) = text.split_once("\r\n\r\n").unwrap();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            dechunk(rest)
        } else {
            rest.to_owned()
        };
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    async fn rooms(&self) -> Vec<Value> {
        let (status, body) = self
            .call("GET", "/objects/Lobby/name/main/rooms", None)
            .await;
        assert_eq!(status, 200, "{body}");
        body["rooms"].as_array().unwrap().clone()
    }
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

async fn join(ingress: u16, room: &str) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
    let url = format!("ws://127.0.0.1:{ingress}/objects/GameRoom/name/{room}/ws");
    let (mut ws, _) = connect_async(url).await.expect("join the room");
    // The room sends the current generation at once.
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a first frame");
    assert!(first.is_some());
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_forge_players_or_hide_real_rooms() {
    let mut cleanup = Cleanup::default();
    let shard = start_shard(&mut cleanup, "lobby").await;
    let http = Http {
        base: format!("http://127.0.0.1:{}", shard.ingress),
    };

    // A client may add a room, with no players.
    let (status, body) = http
        .call(
            "POST",
            "/objects/Lobby/name/main/rooms",
            Some(json!({"name": "fresh"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["players"], 0);

    // A client may not say how many play there, for a new room or an existing one.
    for name in ["forged", "fresh"] {
        let (status, body) = http
            .call(
                "POST",
                "/objects/Lobby/name/main/rooms",
                Some(json!({"name": name, "players": 1000})),
            )
            .await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "forbidden");
    }
    // Nor can it forge the header that marks calls from rooms: the ingress strips it.
    let room_id = stead_sdk::stead_core::ObjectId::named(
        &stead_sdk::stead_core::ClassName::new("GameRoom").unwrap(),
        &stead_sdk::stead_core::ObjectName::new("forged").unwrap(),
    );
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = json!({"name": "forged", "players": 7}).to_string();
        let mut s = TcpStream::connect(("127.0.0.1", shard.ingress))
            .await
            .unwrap();
        let req = format!(
            "POST /objects/Lobby/name/main/rooms HTTP/1.1\r\nhost: x\r\nstead-caller: GameRoom/{}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            room_id.to_hex(),
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    }
    // Bad names and bad JSON are refused.
    for body in [
        json!({"name": "no spaces"}),
        json!({"name": ""}),
        json!({"nom": "x"}),
    ] {
        let (status, _) = http
            .call("POST", "/objects/Lobby/name/main/rooms", Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{body}");
    }

    // A room people play in reports itself, through an object call the sidecar marks.
    let _player = join(shard.ingress, "played").await;
    let mut played = None;
    for _ in 0..100 {
        played = http
            .rooms()
            .await
            .into_iter()
            .find(|r| r["name"] == "played");
        if played.as_ref().is_some_and(|r| r["players"] == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let played = played.expect("the played room is listed");
    assert_eq!(played["players"], 1, "{played}");

    // A client fills the lobby with empty rooms: the played room stays listed, and the lobby
    // keeps a bounded number of empty rooms.
    for i in 0..150 {
        let (status, body) = http
            .call(
                "POST",
                "/objects/Lobby/name/main/rooms",
                Some(json!({"name": format!("spam-{i}")})),
            )
            .await;
        assert!(status == 201 || status == 200, "{status} {body}");
    }
    let rooms = http.rooms().await;
    assert!(rooms.len() <= 50, "{} rooms listed", rooms.len());
    assert!(
        rooms
            .iter()
            .any(|r| r["name"] == "played" && r["players"] == 1),
        "the played room was hidden: {rooms:?}"
    );

    // What the lobby keeps on disk, read from its database once the processes are gone.
    for mut child in cleanup.children.drain(..) {
        let _ = child.kill();
        let _ = child.wait();
    }
    let lobby_db = find_files(&shard.scratch.join("data"), "sqlite")
        .into_iter()
        .find(|p| p.parent().is_some_and(|d| d.ends_with("Lobby")))
        .expect("the lobby's database");
    let conn = rusqlite::Connection::open(&lobby_db).unwrap();
    let kept: i64 = conn
        .query_row(
            "SELECT count(*) FROM _stead_kv WHERE key LIKE 'room:%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    // 64 empty rooms at most, and the played one.
    assert!(kept <= 65, "the lobby keeps {kept} rooms");
    assert!(kept >= 50, "the lobby kept only {kept} rooms");
}

fn find_files(dir: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(find_files(&p, ext));
        } else if p.extension().is_some_and(|e| e == ext) {
            out.push(p);
        }
    }
    out
}
