//! The chat room: one `ChatRoom` object per room, holding the room's WebSockets (through the
//! sidecar, so they survive the object's hibernation) and its history in SQL.
//!
//! A client connects a WebSocket to `/objects/ChatRoom/name/{room}/ws?name=alice` and sends
//! text. Every message is stored in the table
//! `messages (seq INTEGER PRIMARY KEY, name, text, at_ms)` with `seq` the room's message number
//! (1, 2, 3… in commit order) and broadcast to every socket of the room as
//! `{"seq": n, "name": "alice", "text": "…", "at_ms": …}`. A socket that connects first gets the
//! last 100 messages, oldest first, in the same form.
//!
//! Object routes (under `/objects/ChatRoom/name/{room}`):
//!
//! | route | what |
//! |---|---|
//! | `GET /ws?name=alice` with `Upgrade: websocket` | joins the room as `alice` (1 to 32 characters; `anonymous` if absent) |
//! | `GET /messages?limit=N` | the last N messages (default 100, at most 1000), oldest first, as a JSON array |
//!
//! On a socket: any text is a message (trimmed; at most 2000 characters; empty ones are
//! ignored). `ping` is answered `pong` by the sidecar itself, without waking the room. A message
//! starting with `!rollback` is stored and broadcast, and then its turn fails: the turn rolls
//! back, so nobody receives it and it is not in the history (the output gate at work).
//!
//! Stateless routes: `GET /` serves the chat page.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use stead_sdk::http::{Method, StatusCode};
use stead_sdk::{
    App, DurableObject, Error, Message, ObjectInfo, Request, RequestExt, Response, ResponseExt,
    Result, StatelessContext, Storage, Turn, WebSocketInfo, async_trait, now_ms, response,
};

/// Messages sent to a socket when it joins.
const HISTORY: i64 = 100;
/// Longest message, in characters.
const MAX_TEXT: usize = 2000;
/// Longest user name, in characters.
const MAX_NAME: usize = 32;

const PAGE: &str = include_str!("index.html");

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    text TEXT NOT NULL,
    at_ms INTEGER NOT NULL
)";

/// One message, as stored, broadcast and sent on join.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChatMessage {
    seq: i64,
    name: String,
    text: String,
    at_ms: i64,
}

/// What the room keeps with each socket (it survives hibernation).
#[derive(Debug, Serialize, Deserialize)]
struct Member {
    name: String,
}

struct ChatRoom {
    /// Socket id → user name: a cache of the sockets' attachments (empty after hibernation,
    /// refilled from them).
    names: HashMap<String, String>,
    /// Whether this instance created the table already.
    schema_ready: bool,
}

impl ChatRoom {
    async fn ensure_schema(&mut self, storage: &Storage) -> Result<()> {
        if !self.schema_ready {
            storage.sql(SCHEMA, &[]).await?;
            self.schema_ready = true;
        }
        Ok(())
    }

    /// The name of the user on socket `ws_id`.
    async fn name_of(&mut self, turn: &Turn, ws_id: &str) -> Result<String> {
        if let Some(name) = self.names.get(ws_id) {
            return Ok(name.clone());
        }
        let name = turn
            .websockets()
            .attachment::<Member>(ws_id)
            .await?
            .map_or_else(|| "anonymous".to_owned(), |m| m.name);
        self.names.insert(ws_id.to_owned(), name.clone());
        Ok(name)
    }
}

/// The last `limit` messages, oldest first; none if the room never had one (reading creates
/// nothing).
async fn history(storage: &Storage, limit: i64) -> Result<Vec<ChatMessage>> {
    let r = storage
        .sql(
            "SELECT seq, name, text, at_ms FROM
               (SELECT seq, name, text, at_ms FROM messages ORDER BY seq DESC LIMIT ?)
             ORDER BY seq",
            &[limit.into()],
        )
        .await;
    match r {
        Ok(r) => r.rows_as(),
        Err(Error::Api(e)) if e.message.contains("no such table") => Ok(vec![]),
        Err(e) => Err(e),
    }
}

/// The user's name from `?name=`: `anonymous` if absent, `None` if it is not acceptable.
fn user_name(req: &Request) -> Option<String> {
    let name = req.query_param("name").unwrap_or_default();
    let name = name.trim();
    if name.is_empty() {
        return Some("anonymous".to_owned());
    }
    if name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return None;
    }
    Some(name.to_owned())
}

#[async_trait]
impl DurableObject for ChatRoom {
    fn new(_object: &ObjectInfo) -> Self {
        ChatRoom {
            names: HashMap::new(),
            schema_ready: false,
        }
    }

    async fn fetch(&mut self, turn: &Turn, req: Request) -> Result<Response> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/messages") => {
                let limit = req
                    .query_param("limit")
                    .and_then(|l| l.parse::<i64>().ok())
                    .unwrap_or(HISTORY)
                    .clamp(0, 1000);
                Ok(response::json(&history(&turn.storage(), limit).await?))
            }
            (&Method::GET, "/ws") => Ok(response::error(
                StatusCode::UPGRADE_REQUIRED,
                "upgrade_required",
                "connect a WebSocket here",
            )
            .with_header(stead_sdk::http::header::UPGRADE, "websocket")),
            (method, path) => Ok(response::error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("a chat room has no route {method} {path}"),
            )),
        }
    }

    async fn websocket_connect(
        &mut self,
        turn: &Turn,
        req: Request,
        ws: WebSocketInfo,
    ) -> Result<Response> {
        if req.uri().path() != "/ws" {
            return Ok(response::error(
                StatusCode::NOT_FOUND,
                "not_found",
                "a chat room's socket is at /ws",
            ));
        }
        let Some(name) = user_name(&req) else {
            return Ok(response::error(
                StatusCode::BAD_REQUEST,
                "invalid_name",
                &format!("a name has 1 to {MAX_NAME} printable characters"),
            ));
        };
        let sockets = turn.websockets();
        sockets
            .set_attachment(&ws.id, &Member { name: name.clone() })
            .await?;
        sockets.set_auto_response("ping", "pong").await?;
        // Sent during the turn, these leave once the socket is accepted, before any later
        // broadcast.
        for message in history(&turn.storage(), HISTORY).await? {
            sockets.send_json(&ws.id, &message).await?;
        }
        self.names.insert(ws.id, name);
        Ok(response::accept_websocket())
    }

    async fn websocket_message(&mut self, turn: &Turn, ws_id: &str, msg: Message) -> Result<()> {
        let Message::Text(text) = msg else {
            turn.websockets()
                .send_json(ws_id, &serde_json::json!({"error": "send text"}))
                .await?;
            return Ok(());
        };
        let text = text.trim();
        if text.is_empty() {
            return Ok(());
        }
        if text.chars().count() > MAX_TEXT {
            turn.websockets()
                .send_json(
                    ws_id,
                    &serde_json::json!({"error": format!("at most {MAX_TEXT} characters")}),
                )
                .await?;
            return Ok(());
        }
        let name = self.name_of(turn, ws_id).await?;
        let storage = turn.storage();
        self.ensure_schema(&storage).await?;
        let at_ms = now_ms();
        let r = storage
            .sql(
                "INSERT INTO messages (seq, name, text, at_ms)
                 VALUES ((SELECT COALESCE(MAX(seq), 0) + 1 FROM messages), ?, ?, ?)
                 RETURNING seq",
                &[name.as_str().into(), text.into(), at_ms.into()],
            )
            .await?;
        let seq = r
            .scalar()
            .and_then(serde_json::Value::as_i64)
            .ok_or_else(|| Error::msg("the insert returned no seq"))?;
        let message = ChatMessage {
            seq,
            name,
            text: text.to_owned(),
            at_ms,
        };
        turn.websockets()
            .broadcast_all(Message::json(&message)?)
            .await?;
        if text.starts_with("!rollback") {
            // Stored and broadcast, and now the turn fails: neither happens.
            return Err(Error::msg(format!("message {seq} asked to be rolled back")));
        }
        Ok(())
    }

    async fn websocket_close(
        &mut self,
        _turn: &Turn,
        ws_id: &str,
        _code: u16,
        _reason: String,
    ) -> Result<()> {
        self.names.remove(ws_id);
        Ok(())
    }

    async fn websocket_error(&mut self, _turn: &Turn, ws_id: &str, _error: String) -> Result<()> {
        self.names.remove(ws_id);
        Ok(())
    }
}

async fn front_door(req: Request, _ctx: StatelessContext) -> Response {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/" | "/index.html") => response::text(PAGE).with_header(
            stead_sdk::http::header::CONTENT_TYPE,
            "text/html; charset=utf-8",
        ),
        (method, path) => response::error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route {method} {path}; the chat page is at /"),
        ),
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let app = App::new()
        .class::<ChatRoom>("ChatRoom")
        .stateless(front_door);
    if let Err(e) = app.serve().await {
        tracing::error!(error = %e, "chat app failed");
        std::process::exit(1);
    }
}
