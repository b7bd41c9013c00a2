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
//!
//! The room keeps its last 100 messages and its last `seq` in memory, loaded with one SQL query
//! by the first event of an instance (a new instance is built whenever the sidecar starts a new
//! incarnation of the object, so the copy never outlives the table). With a sidecar that lets
//! SQL and socket operations travel with the answer (`stead-carry`, see `docs/sdk.md`), a hot
//! message turn is then one exchange: the INSERT and the broadcast ride on the answer; so do a
//! connect turn's attachment, auto-response and history. With an older sidecar the same code
//! makes them calls.

use std::collections::{HashMap, VecDeque};

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

/// What an instance knows of the room's table.
struct Recent {
    /// The last [`HISTORY`] messages, oldest first.
    history: VecDeque<ChatMessage>,
    /// The `seq` of the last message; 0 before the first.
    last_seq: i64,
    /// Whether the table exists (created by an earlier turn that committed).
    table: bool,
}

impl Recent {
    /// A message stored by a turn that commits.
    fn push(&mut self, message: ChatMessage) {
        self.last_seq = message.seq;
        self.table = true;
        self.history.push_back(message);
        while self.history.len() > HISTORY as usize {
            self.history.pop_front();
        }
    }
}

struct ChatRoom {
    /// Socket id → user name: a cache of the sockets' attachments (empty after hibernation,
    /// refilled from them).
    names: HashMap<String, String>,
    /// The room's recent messages, loaded by the first event of the instance that needs them.
    recent: Option<Recent>,
}

impl ChatRoom {
    /// The room's recent messages: one SQL query the first time in this instance, none after.
    async fn recent(&mut self, storage: &Storage) -> Result<&mut Recent> {
        let recent = match self.recent.take() {
            Some(recent) => recent,
            None => {
                let (history, table) = match history(storage, HISTORY).await? {
                    Some(history) => (history, true),
                    None => (vec![], false),
                };
                Recent {
                    last_seq: history.last().map_or(0, |m| m.seq),
                    history: history.into(),
                    table,
                }
            }
        };
        Ok(self.recent.insert(recent))
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

/// The last `limit` messages, oldest first; `None` if the room has no table yet (reading creates
/// nothing).
async fn history(storage: &Storage, limit: i64) -> Result<Option<Vec<ChatMessage>>> {
    let r = storage
        .sql(
            "SELECT seq, name, text, at_ms FROM
               (SELECT seq, name, text, at_ms FROM messages ORDER BY seq DESC LIMIT ?)
             ORDER BY seq",
            &[limit.into()],
        )
        .await;
    match r {
        Ok(r) => r.rows_as().map(Some),
        Err(Error::Api(e)) if e.message.contains("no such table") => Ok(None),
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
            recent: None,
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
                let history = history(&turn.storage(), limit).await?.unwrap_or_default();
                Ok(response::json(&history))
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
        let recent = self.recent(&turn.storage()).await?;
        let sockets = turn.websockets();
        sockets
            .set_attachment(&ws.id, &Member { name: name.clone() })
            .await?;
        sockets.set_auto_response("ping", "pong").await?;
        // Sent during the turn, these leave once the socket is accepted, before any later
        // broadcast.
        for message in &recent.history {
            sockets.queue_send_json(&ws.id, message).await?;
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
        let recent = self.recent(&storage).await?;
        if !recent.table {
            storage.queue_sql(SCHEMA, &[]).await?;
        }
        let message = ChatMessage {
            seq: recent.last_seq + 1,
            name,
            text: text.to_owned(),
            at_ms: now_ms(),
        };
        storage
            .queue_sql(
                "INSERT INTO messages (seq, name, text, at_ms) VALUES (?, ?, ?, ?)",
                &[
                    message.seq.into(),
                    message.name.as_str().into(),
                    text.into(),
                    message.at_ms.into(),
                ],
            )
            .await?;
        turn.websockets()
            .queue_broadcast_all(Message::json(&message)?)
            .await?;
        if text.starts_with("!rollback") {
            // Stored and broadcast, and now the turn fails: neither happens, and the room's
            // memory stays as it was.
            return Err(Error::msg(format!(
                "message {} asked to be rolled back",
                message.seq
            )));
        }
        // The turn commits: the room remembers the message. (Should the commit fail after all,
        // the next event comes with a new incarnation, hence a new instance that reloads.)
        recent.push(message);
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

#[cfg(test)]
mod tests;

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
