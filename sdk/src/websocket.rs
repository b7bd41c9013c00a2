//! Hibernatable WebSockets: the sockets the sidecar holds for an object, and the calls that
//! send to them.

use base64::prelude::*;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::client::ApiClient;
use crate::error::{Error, Result};
use crate::message::Response;

/// Most tags per socket.
pub const MAX_TAGS: usize = 10;
/// Most bytes per tag.
pub const MAX_TAG_BYTES: usize = 256;

/// A WebSocket message: text or binary.
///
/// ```
/// use stead_sdk::Message;
/// let m = Message::from("hello");
/// assert_eq!(m.as_text(), Some("hello"));
/// let j = Message::json(&serde_json::json!({"seq": 1})).unwrap();
/// assert_eq!(j, Message::Text(r#"{"seq":1}"#.into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message (UTF-8).
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

impl Message {
    /// A text message holding the JSON of `value`.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        Ok(Message::Text(serde_json::to_string(value)?))
    }

    /// The text of a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(t) => Some(t),
            Message::Binary(_) => None,
        }
    }

    /// The payload's bytes, whatever the kind.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
        }
    }

    /// The payload parsed as JSON (text or binary alike).
    pub fn parse_json<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(serde_json::from_slice(self.as_bytes())?)
    }

    /// The payload's field for the app API: `"text"` or `"binary"` (base64).
    fn wire(&self) -> (&'static str, Value) {
        match self {
            Message::Text(t) => ("text", Value::from(t.as_str())),
            Message::Binary(b) => ("binary", Value::from(BASE64_STANDARD.encode(b))),
        }
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Self {
        Message::Text(s.to_owned())
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Message::Text(s)
    }
}

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Self {
        Message::Binary(b)
    }
}

impl From<Vec<u8>> for Message {
    fn from(b: Vec<u8>) -> Self {
        Message::Binary(Bytes::from(b))
    }
}

impl From<&[u8]> for Message {
    fn from(b: &[u8]) -> Self {
        Message::Binary(Bytes::copy_from_slice(b))
    }
}

/// The socket a `websocket-connect` event is about, handed to
/// [`DurableObject::websocket_connect`](crate::DurableObject::websocket_connect).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WebSocketInfo {
    /// The socket's id (`stead-websocket-id`), for the calls of [`WebSockets`] and for the
    /// later events of this socket.
    pub id: String,
}

impl WebSocketInfo {
    /// The info of socket `id`.
    pub fn new(id: impl Into<String>) -> Self {
        Self { id: id.into() }
    }
}

/// An open socket of the object, as [`WebSockets::list`] answers it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct WebSocket {
    /// The socket's id.
    pub id: String,
    /// The tags it was accepted with.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Its attachment: the JSON set with [`WebSockets::set_attachment`], `null` if none.
    #[serde(default)]
    pub attachment: Value,
}

impl WebSocket {
    /// The attachment deserialized as `T`; `None` if there is none.
    ///
    /// ```
    /// let ws = stead_sdk::WebSocket {
    ///     id: "1".into(),
    ///     tags: vec![],
    ///     attachment: serde_json::json!({"name": "alice"}),
    /// };
    /// #[derive(serde::Deserialize)]
    /// struct User { name: String }
    /// assert_eq!(ws.attachment::<User>().unwrap().unwrap().name, "alice");
    /// ```
    pub fn attachment<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        if self.attachment.is_null() {
            return Ok(None);
        }
        Ok(Some(T::deserialize(&self.attachment)?))
    }

    /// Whether the socket has tag `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// The answer to a `websocket-connect` event that accepts the socket, without tags: `200` with
/// an empty body.
///
/// ```
/// let res = stead_sdk::response::accept_websocket();
/// assert!(res.status().is_success());
/// ```
pub fn accept() -> Response {
    crate::message::status(StatusCode::OK)
}

/// The answer that accepts the socket with `tags` (at most 10 tags of 1 to 256 bytes, no
/// commas), so that [`WebSockets::list`] and [`WebSockets::broadcast`] can select it by tag.
/// Fails if a tag breaks these rules.
///
/// ```
/// use stead_sdk::response::accept_websocket_with_tags;
/// let res = accept_websocket_with_tags(&["player", "team:red"]).unwrap();
/// assert_eq!(res.headers()["stead-websocket-tags"], "player,team:red");
/// assert!(accept_websocket_with_tags(&["a,b"]).is_err());
/// ```
pub fn accept_with_tags<T: AsRef<str>>(tags: &[T]) -> Result<Response> {
    if tags.len() > MAX_TAGS {
        return Err(Error::msg(format!(
            "a socket has at most {MAX_TAGS} tags, not {}",
            tags.len()
        )));
    }
    for tag in tags {
        let tag = tag.as_ref();
        if tag.is_empty() || tag.len() > MAX_TAG_BYTES || tag.contains(',') {
            return Err(Error::msg(format!(
                "invalid tag {tag:?}: a tag has 1 to {MAX_TAG_BYTES} bytes and no comma"
            )));
        }
    }
    let joined = tags.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(",");
    let value = HeaderValue::from_str(&joined)
        .map_err(|_| Error::msg("a tag must be visible ASCII to travel in a header"))?;
    let mut res = accept();
    if !joined.is_empty() {
        res.headers_mut().insert(
            http::HeaderName::from_static(stead_core::protocol::WEBSOCKET_TAGS),
            value,
        );
    }
    Ok(res)
}

/// The object's open WebSockets, reached through the turn: list them, send to one, broadcast,
/// close, and keep a small attachment per socket. Get it with
/// [`Turn::websockets`](crate::Turn::websockets).
///
/// The sidecar holds the connections, so they outlive the object's in-memory instance and even
/// its hibernation. Messages sent and sockets closed during a turn leave only after the turn
/// commits, in call order; a turn that rolls back sends nothing.
///
/// ```no_run
/// # async fn f(turn: &stead_sdk::Turn, me: &str) -> stead_sdk::Result<()> {
/// use stead_sdk::Message;
/// let ws = turn.websockets();
/// ws.send_text(me, "welcome").await?;
/// let sent = ws.broadcast(Message::from("someone joined"), None, &[me]).await?;
/// for socket in ws.list(Some("player")).await? {
///     let name: Option<String> = socket.attachment()?;
///     println!("{} is {name:?}", socket.id);
/// }
/// # let _ = sent;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WebSockets {
    api: ApiClient,
    token: HeaderValue,
}

#[derive(Deserialize)]
struct ListAnswer {
    sockets: Vec<WebSocket>,
}

#[derive(Deserialize)]
struct SentAnswer {
    sent: u64,
}

#[derive(Deserialize)]
struct ClosedAnswer {
    closed: bool,
}

impl WebSockets {
    pub(crate) fn new(api: ApiClient, token: HeaderValue) -> Self {
        Self { api, token }
    }

    async fn call<R: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<R> {
        self.api.call(&self.token, path, body).await
    }

    /// The open sockets, all of them or those with tag `tag`.
    pub async fn list(&self, tag: Option<&str>) -> Result<Vec<WebSocket>> {
        let body = match tag {
            Some(tag) => json!({ "tag": tag }),
            None => json!({}),
        };
        let answer: ListAnswer = self.call("websockets/list", &body).await?;
        Ok(answer.sockets)
    }

    /// Sends `msg` to socket `id`. Returns `false` if that socket is gone.
    pub async fn send(&self, id: &str, msg: impl Into<Message>) -> Result<bool> {
        let (field, payload) = msg.into().wire();
        let mut body = Map::new();
        body.insert("id".into(), Value::from(id));
        body.insert(field.into(), payload);
        let answer: SentAnswer = self.call("websockets/send", &Value::Object(body)).await?;
        Ok(answer.sent > 0)
    }

    /// Sends a text message to socket `id`. Returns `false` if that socket is gone.
    pub async fn send_text(&self, id: &str, text: impl Into<String>) -> Result<bool> {
        self.send(id, Message::Text(text.into())).await
    }

    /// Sends a binary message to socket `id`. Returns `false` if that socket is gone.
    pub async fn send_binary(&self, id: &str, bytes: impl Into<Bytes>) -> Result<bool> {
        self.send(id, Message::Binary(bytes.into())).await
    }

    /// Sends the JSON of `value` as a text message to socket `id`.
    pub async fn send_json<T: Serialize + ?Sized>(&self, id: &str, value: &T) -> Result<bool> {
        self.send(id, Message::json(value)?).await
    }

    /// Sends `msg` to every open socket, or to those with tag `tag`, except the sockets in
    /// `except`. Returns how many it was sent to.
    pub async fn broadcast(
        &self,
        msg: impl Into<Message>,
        tag: Option<&str>,
        except: &[&str],
    ) -> Result<u64> {
        let (field, payload) = msg.into().wire();
        let mut body = Map::new();
        body.insert(field.into(), payload);
        if let Some(tag) = tag {
            body.insert("tag".into(), Value::from(tag));
        }
        if !except.is_empty() {
            body.insert("except".into(), json!(except));
        }
        let answer: SentAnswer = self
            .call("websockets/broadcast", &Value::Object(body))
            .await?;
        Ok(answer.sent)
    }

    /// Sends `msg` to every open socket. Returns how many it was sent to.
    pub async fn broadcast_all(&self, msg: impl Into<Message>) -> Result<u64> {
        self.broadcast(msg, None, &[]).await
    }

    /// Closes socket `id` with `code` (e.g. 1000) and `reason`. Returns `false` if it was
    /// already gone.
    pub async fn close(&self, id: &str, code: u16, reason: &str) -> Result<bool> {
        let answer: ClosedAnswer = self
            .call(
                "websockets/close",
                &json!({ "id": id, "code": code, "reason": reason }),
            )
            .await?;
        Ok(answer.closed)
    }

    /// Keeps the JSON of `value` with socket `id` (at most 16 KiB serialized). It comes back in
    /// [`WebSocket::attachment`] from any later turn, and survives hibernation.
    pub async fn set_attachment<T: Serialize + ?Sized>(&self, id: &str, value: &T) -> Result<()> {
        let attachment = serde_json::to_value(value)?;
        let _: Value = self
            .call(
                "websockets/attachment",
                &json!({ "id": id, "attachment": attachment }),
            )
            .await?;
        Ok(())
    }

    /// The attachment of socket `id` as `T`; `None` if the socket is gone or has none.
    pub async fn attachment<T: DeserializeOwned>(&self, id: &str) -> Result<Option<T>> {
        for socket in self.list(None).await? {
            if socket.id == id {
                return socket.attachment();
            }
        }
        Ok(None)
    }

    /// Makes the sidecar answer a text message exactly equal to `request` with `response`
    /// itself, on every socket of the object, without an event and without waking the object.
    pub async fn set_auto_response(&self, request: &str, response: &str) -> Result<()> {
        let _: Value = self
            .call(
                "websockets/auto-response",
                &json!({ "request": request, "response": response }),
            )
            .await?;
        Ok(())
    }

    /// Removes the auto-response pair.
    pub async fn clear_auto_response(&self) -> Result<()> {
        let _: Value = self.call("websockets/auto-response", &json!({})).await?;
        Ok(())
    }
}
