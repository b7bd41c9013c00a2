//! Hibernatable WebSockets: the sockets the sidecar holds for an object, and the calls that
//! send to them.

use base64::prelude::*;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::cache::TurnCache;
use crate::client::ApiClient;
use crate::error::{ApiError, Error, Result};
use crate::message::Response;

/// Most tags per socket.
pub const MAX_TAGS: usize = 10;
/// Most bytes per tag.
pub const MAX_TAG_BYTES: usize = 256;
/// Most bytes of a socket's attachment, serialized as JSON.
pub const MAX_ATTACHMENT_BYTES: usize = 16 << 10;
/// Most bytes of a close reason (RFC 6455: 125 with the code).
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

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
/// The `queue_*` methods ([`WebSockets::queue_send`], [`WebSockets::queue_broadcast`],
/// [`WebSockets::queue_close`]…), [`WebSockets::set_attachment`] and the auto-response ask the
/// sidecar nothing: when it lets socket operations travel with the answer (protocol 2 and
/// `stead-carry: websockets`) they are buffered and sent with it, in order, after every call
/// the turn made; otherwise they are calls. The methods that ask the sidecar (`list`,
/// `attachment`, `send…`, `broadcast…`, `close`) send the buffered operations with calls first,
/// so order and read-your-writes hold. See `docs/sdk.md`, "Operations that travel with the
/// answer".
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
    /// Protocol 2: the turn's buffer, used when the event carried `websockets`.
    cache: Option<TurnCache>,
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

/// The body of `websockets/send` (and of its carried `send` operation, with `op`).
fn send_body(id: &str, msg: Message) -> Map<String, Value> {
    let (field, payload) = msg.wire();
    let mut body = Map::new();
    body.insert("id".into(), Value::from(id));
    body.insert(field.into(), payload);
    body
}

/// The body of `websockets/broadcast`.
fn broadcast_body(msg: Message, tag: Option<&str>, except: &[&str]) -> Map<String, Value> {
    let (field, payload) = msg.wire();
    let mut body = Map::new();
    body.insert(field.into(), payload);
    if let Some(tag) = tag {
        body.insert("tag".into(), Value::from(tag));
    }
    if !except.is_empty() {
        body.insert("except".into(), json!(except));
    }
    body
}

/// The body of `websockets/close`, after the checks the sidecar makes (the same refusal).
fn close_body(id: &str, code: u16, reason: &str) -> Result<Map<String, Value>> {
    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "{code} is not a close code an endpoint may send: use 1000-1003, 1007-1014 or 3000-4999"
            ),
        ));
    }
    if reason.len() > MAX_CLOSE_REASON_BYTES {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("a close reason is at most {MAX_CLOSE_REASON_BYTES} bytes"),
        ));
    }
    let mut body = Map::new();
    body.insert("id".into(), Value::from(id));
    body.insert("code".into(), Value::from(code));
    body.insert("reason".into(), Value::from(reason));
    Ok(body)
}

/// The body of `websockets/attachment`, after the size check the sidecar makes.
fn attachment_body<T: Serialize + ?Sized>(id: &str, value: &T) -> Result<Map<String, Value>> {
    let attachment = serde_json::to_value(value)?;
    let len = attachment.to_string().len();
    if len > MAX_ATTACHMENT_BYTES {
        return Err(refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            "attachment_too_large",
            format!("attachment is {len} bytes serialized; the limit is {MAX_ATTACHMENT_BYTES}"),
        ));
    }
    let mut body = Map::new();
    body.insert("id".into(), Value::from(id));
    body.insert("attachment".into(), attachment);
    Ok(body)
}

/// A refusal made by the SDK itself, the same the sidecar would give.
fn refusal(status: StatusCode, code: &str, message: String) -> Error {
    Error::Api(ApiError {
        status,
        code: code.to_owned(),
        message,
    })
}

/// A socket operation that can travel with the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Send,
    Broadcast,
    Close,
    Attachment,
    AutoResponse,
}

impl Op {
    const ALL: [Op; 5] = [
        Op::Send,
        Op::Broadcast,
        Op::Close,
        Op::Attachment,
        Op::AutoResponse,
    ];

    /// Its `op` in `stead-writes`.
    fn name(self) -> &'static str {
        match self {
            Op::Send => "send",
            Op::Broadcast => "broadcast",
            Op::Close => "close",
            Op::Attachment => "attachment",
            Op::AutoResponse => "auto_response",
        }
    }

    /// The call that does the same, with the same body less `op`.
    fn path(self) -> &'static str {
        match self {
            Op::Send => "websockets/send",
            Op::Broadcast => "websockets/broadcast",
            Op::Close => "websockets/close",
            Op::Attachment => "websockets/attachment",
            Op::AutoResponse => "websockets/auto-response",
        }
    }

    fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// Applies buffered socket operations with calls, in order. An attachment for a socket that
/// is gone is skipped, as the sidecar skips a carried one. On an error, returns it with the
/// operations after the failed one, unsent.
pub(crate) async fn apply_all(
    api: &ApiClient,
    token: &HeaderValue,
    ops: Vec<Value>,
) -> std::result::Result<(), (Error, Vec<Value>)> {
    let mut ops = ops.into_iter();
    while let Some(op) = ops.next() {
        // The SDK built each operation (see `WebSockets::queue`): an object with a known `op`.
        let Value::Object(mut body) = op else {
            continue;
        };
        let Some(kind) = body
            .remove("op")
            .as_ref()
            .and_then(Value::as_str)
            .and_then(Op::from_name)
        else {
            continue;
        };
        match api.call::<_, Value>(token, kind.path(), &body).await {
            Ok(_) => {}
            Err(Error::Api(e)) if kind == Op::Attachment && e.status == StatusCode::NOT_FOUND => {}
            Err(e) => return Err((e, ops.collect())),
        }
    }
    Ok(())
}

impl WebSockets {
    pub(crate) fn new(api: ApiClient, token: HeaderValue, cache: Option<TurnCache>) -> Self {
        Self { api, token, cache }
    }

    async fn call<R: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<R> {
        self.api.call(&self.token, path, body).await
    }

    /// The turn's buffer when the answer may carry socket operations.
    fn carrying(&self) -> Option<&TurnCache> {
        self.cache.as_ref().filter(|c| c.carry().websockets)
    }

    /// A call that asks the sidecar: the buffered operations are sent first, in order.
    async fn asking<R: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<R> {
        let Some(cache) = self.carrying() else {
            return self.call(path, body).await;
        };
        let _op = cache.op().await;
        self.flush(cache).await?;
        self.call(path, body).await
    }

    /// Sends the buffered operations with calls (the caller holds the turn's operation lock).
    async fn flush(&self, cache: &TurnCache) -> Result<()> {
        let ops = cache.lock().take_sockets(cache.id())?;
        if let Err((e, unsent)) = apply_all(&self.api, &self.token, ops).await {
            cache.lock().restore_sockets(cache.id(), unsent);
            return Err(e);
        }
        Ok(())
    }

    /// Buffers the operation `op` with `body` when the answer may carry it; otherwise makes
    /// the matching call, its answer discarded.
    async fn queue(&self, op: Op, mut body: Map<String, Value>) -> Result<()> {
        let Some(cache) = self.carrying() else {
            let _: Value = self.call(op.path(), &Value::Object(body)).await?;
            return Ok(());
        };
        body.insert("op".into(), Value::from(op.name()));
        let _op = cache.op().await;
        let full = cache.lock().queue_socket(cache.id(), Value::Object(body))?;
        if full {
            self.flush(cache).await?;
        }
        Ok(())
    }

    /// The open sockets, all of them or those with tag `tag`.
    pub async fn list(&self, tag: Option<&str>) -> Result<Vec<WebSocket>> {
        let body = match tag {
            Some(tag) => json!({ "tag": tag }),
            None => json!({}),
        };
        let answer: ListAnswer = self.asking("websockets/list", &body).await?;
        Ok(answer.sockets)
    }

    /// Sends `msg` to socket `id`. Returns `false` if that socket is gone.
    pub async fn send(&self, id: &str, msg: impl Into<Message>) -> Result<bool> {
        let body = Value::Object(send_body(id, msg.into()));
        let answer: SentAnswer = self.asking("websockets/send", &body).await?;
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
        let body = Value::Object(broadcast_body(msg.into(), tag, except));
        let answer: SentAnswer = self.asking("websockets/broadcast", &body).await?;
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
            .asking(
                "websockets/close",
                &json!({ "id": id, "code": code, "reason": reason }),
            )
            .await?;
        Ok(answer.closed)
    }

    /// Sends `msg` to socket `id` once the turn commits, without asking the sidecar whether
    /// the socket is still open (so it returns no answer). Carried with the turn's answer when
    /// the sidecar allows it, otherwise a call. What a turn sends leaves in order whichever
    /// form it took: a `queue_send` after a `send` leaves after it.
    ///
    /// ```no_run
    /// # async fn f(turn: &stead_sdk::Turn, id: &str) -> stead_sdk::Result<()> {
    /// turn.websockets().queue_send(id, "welcome").await?;
    /// # Ok(()) }
    /// ```
    pub async fn queue_send(&self, id: &str, msg: impl Into<Message>) -> Result<()> {
        self.queue(Op::Send, send_body(id, msg.into())).await
    }

    /// [`WebSockets::queue_send`] of a text message.
    pub async fn queue_send_text(&self, id: &str, text: impl Into<String>) -> Result<()> {
        self.queue_send(id, Message::Text(text.into())).await
    }

    /// [`WebSockets::queue_send`] of the JSON of `value` as a text message.
    pub async fn queue_send_json<T: Serialize + ?Sized>(&self, id: &str, value: &T) -> Result<()> {
        self.queue_send(id, Message::json(value)?).await
    }

    /// Sends `msg` to every open socket, or to those with tag `tag`, except the sockets in
    /// `except`, once the turn commits, without asking how many there are (see
    /// [`WebSockets::queue_send`]). The sockets are those open when the turn commits.
    ///
    /// ```no_run
    /// # async fn f(turn: &stead_sdk::Turn, me: &str) -> stead_sdk::Result<()> {
    /// use stead_sdk::Message;
    /// turn.websockets()
    ///     .queue_broadcast(Message::from("someone joined"), Some("player"), &[me])
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn queue_broadcast(
        &self,
        msg: impl Into<Message>,
        tag: Option<&str>,
        except: &[&str],
    ) -> Result<()> {
        self.queue(Op::Broadcast, broadcast_body(msg.into(), tag, except))
            .await
    }

    /// [`WebSockets::queue_broadcast`] to every open socket.
    pub async fn queue_broadcast_all(&self, msg: impl Into<Message>) -> Result<()> {
        self.queue_broadcast(msg, None, &[]).await
    }

    /// Closes socket `id` with `code` and `reason` once the turn commits, without asking
    /// whether it is still open (see [`WebSockets::queue_send`]). A code outside 1000-1003,
    /// 1007-1014 and 3000-4999, or a reason over 123 bytes, is refused here with
    /// `400 bad_request`.
    ///
    /// ```no_run
    /// # async fn f(turn: &stead_sdk::Turn, id: &str) -> stead_sdk::Result<()> {
    /// turn.websockets().queue_close(id, 1000, "bye").await?;
    /// # Ok(()) }
    /// ```
    pub async fn queue_close(&self, id: &str, code: u16, reason: &str) -> Result<()> {
        self.queue(Op::Close, close_body(id, code, reason)?).await
    }

    /// Keeps the JSON of `value` with socket `id` (at most 16 KiB serialized, else `413
    /// attachment_too_large`, here). It comes back in [`WebSocket::attachment`] from any later
    /// turn, and survives hibernation.
    ///
    /// When socket operations travel with the answer, the attachment is set when the turn is
    /// kept (before the object's next event), not if it rolls back, and an attachment for a
    /// socket that has gone meanwhile is ignored; `list` and `attachment` in the same turn see
    /// it. Otherwise it is a call, which fails with `404 no_such_socket` for a socket that is
    /// gone.
    pub async fn set_attachment<T: Serialize + ?Sized>(&self, id: &str, value: &T) -> Result<()> {
        self.queue(Op::Attachment, attachment_body(id, value)?)
            .await
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
    ///
    /// Carried with the answer when the sidecar allows it (then set when the turn is kept),
    /// otherwise a call.
    pub async fn set_auto_response(&self, request: &str, response: &str) -> Result<()> {
        let mut body = Map::new();
        body.insert("request".into(), Value::from(request));
        body.insert("response".into(), Value::from(response));
        self.queue(Op::AutoResponse, body).await
    }

    /// Removes the auto-response pair (carried like [`WebSockets::set_auto_response`]).
    pub async fn clear_auto_response(&self) -> Result<()> {
        self.queue(Op::AutoResponse, Map::new()).await
    }
}
