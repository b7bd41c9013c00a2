//! The socket registry: per object, each socket's sender, tags and attachment, and the object's
//! auto-response pair; the bounds of what waits to be written to a socket; what a turn asks to
//! send ([`Outgoing`]), released when it commits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::StatusCode;
use tokio::sync::{Notify, mpsc, watch};

use crate::body::BodyBudget;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::object::ObjectKey;

pub const MAX_SOCKETS_PER_OBJECT: usize = 32_768;
pub const MAX_MESSAGE_BYTES: usize = 32 << 20;
pub const MAX_TAGS: usize = 10;
pub const MAX_TAG_BYTES: usize = 256;
pub const MAX_ATTACHMENT_BYTES: usize = 16 << 10;
/// Read buffer per socket. tungstenite's default is 128 KiB, which made an idle socket cost
/// about 135 KiB of sidecar memory; messages larger than the buffer are still read, in steps.
pub(super) const READ_BUFFER_BYTES: usize = 4 << 10;
/// Close code sent to every socket when the sidecar shuts down: clients should reconnect.
pub const CLOSE_SERVICE_RESTART: u16 = 1012;
/// Bytes of messages waiting to be written to one socket (the one being written included). A
/// message is always taken onto an empty queue, so one of [`MAX_MESSAGE_BYTES`] still goes out.
pub const MAX_QUEUED_BYTES: usize = 16 << 20;
/// Messages waiting to be written to one socket.
pub const MAX_QUEUED_MESSAGES: usize = 16_384;
/// Pings a client may send while the pongs to earlier ones are not written yet. Then the sidecar
/// reads no further until they are; a client that leaves them unread for [`CLOSE_GRACE`] is
/// closed with 1008.
pub const MAX_UNANSWERED_PINGS: usize = 1024;
/// Bytes of one socket's messages waiting in the object's mailbox for their turns. Over it the
/// sidecar stops reading that client until turns catch up (TCP pushes back on the client); a
/// single larger message waits until nothing else of that socket is waiting.
pub const MAX_INBOUND_BYTES: usize = 4 << 20;
/// Close code for a client that stays over those bounds: 1008 (policy violation). Not 1013
/// (try again later): the cause is the client's reading, not the server's load, and a client
/// that reconnects at once and still does not read would be closed again.
pub const CLOSE_SLOW_CONSUMER: u16 = 1008;
pub(super) const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub(super) const CLOSE_INVALID_DATA: u16 = 1007;
pub(super) const CLOSE_TOO_BIG: u16 = 1009;
/// How long a closing socket may take to write its Close frame, and to get the client's Close
/// after the app closed it; then the connection is dropped (a client that does not read would
/// otherwise hold it forever).
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// tungstenite's own write buffer holds the frame being written and the pongs and close replies
/// it queues itself; unbounded by default, it grew by every pong owed to a non-reading client.
/// One message of the largest size plus room for the pongs owed ([`MAX_UNANSWERED_PINGS`] of
/// at most 127 bytes) and a Close; a pong over it is dropped.
pub(super) const MAX_WRITE_BUFFER_BYTES: usize = MAX_MESSAGE_BYTES + (256 << 10);

/// Whether an app may close a socket with `code`: the codes RFC 6455 §7.4 defines for sending
/// (1004, 1005, 1006 and 1015 must never be sent), those IANA registered since (1012–1014), and
/// the ranges for libraries and applications (3000–4999).
pub fn is_sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Checks a close the app asks for: a code an endpoint may send and a reason of at most 123
/// bytes (what fits a Close frame). 400 `bad_request` otherwise.
pub fn check_close(code: u16, reason: &str) -> Result<(), ApiError> {
    if !is_sendable_close_code(code) {
        return Err(ApiError::bad_request(
            "bad_request",
            format!(
                "{code} is not a close code an endpoint may send: use 1000-1003, 1007-1014 or 3000-4999"
            ),
        ));
    }
    if reason.len() > MAX_CLOSE_REASON_BYTES {
        return Err(ApiError::bad_request(
            "bad_request",
            "a close reason is at most 123 bytes",
        ));
    }
    Ok(())
}

/// Longest close reason: a Close frame's payload is at most 125 bytes, 2 of them the code.
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

/// Checks a socket's attachment: at most [`MAX_ATTACHMENT_BYTES`] serialized (413
/// `attachment_too_large`).
pub fn check_attachment(attachment: &serde_json::Value) -> Result<(), ApiError> {
    let len = attachment.to_string().len();
    if len > MAX_ATTACHMENT_BYTES {
        return Err(ApiError::too_large(
            "attachment_too_large",
            format!("attachment is {len} bytes serialized; the limit is {MAX_ATTACHMENT_BYTES}"),
        ));
    }
    Ok(())
}

/// The auto-response pair the app gives: both `request` and `response`, or neither (remove it).
pub fn auto_response_pair(
    request: Option<String>,
    response: Option<String>,
) -> Result<Option<(String, String)>, ApiError> {
    match (request, response) {
        (Some(q), Some(a)) => Ok(Some((q, a))),
        (None, None) => Ok(None),
        _ => Err(ApiError::bad_request(
            "bad_request",
            "give both \"request\" and \"response\", or neither to remove the pair",
        )),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    Text(String),
    Binary(Bytes),
}

impl WsMessage {
    pub fn len(&self) -> usize {
        match self {
            WsMessage::Text(t) => t.len(),
            WsMessage::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A message the app gives as `text` or `binary` (base64), exactly one, of at most
    /// [`MAX_MESSAGE_BYTES`]: 400 `bad_request` or 413 `message_too_large` otherwise.
    pub fn from_app(text: Option<String>, binary: Option<&str>) -> Result<Self, ApiError> {
        let msg = match (text, binary) {
            (Some(t), None) => WsMessage::Text(t),
            (None, Some(b)) => WsMessage::Binary(
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|e| {
                        ApiError::bad_request("bad_request", format!("binary is not base64: {e}"))
                    })?
                    .into(),
            ),
            _ => {
                return Err(ApiError::bad_request(
                    "bad_request",
                    "give exactly one of \"text\" and \"binary\"",
                ));
            }
        };
        if msg.len() > MAX_MESSAGE_BYTES {
            return Err(ApiError::too_large(
                "message_too_large",
                format!(
                    "message is {} bytes; the limit is {MAX_MESSAGE_BYTES}",
                    msg.len()
                ),
            ));
        }
        Ok(msg)
    }
}

/// Something a turn asked to send, released when it commits.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Send {
        id: String,
        msg: WsMessage,
    },
    Broadcast {
        tag: Option<String>,
        except: Vec<String>,
        msg: WsMessage,
    },
    Close {
        id: String,
        code: u16,
        reason: String,
    },
}

/// A socket operation carried by a turn's answer (protocol 2), already checked.
#[derive(Debug, Clone)]
pub enum SocketOp {
    /// A send, broadcast or close: goes to the turn's outbox.
    Out(Outgoing),
    /// Sets a socket's attachment (ignored if the socket is gone).
    Attachment {
        id: String,
        attachment: serde_json::Value,
    },
    /// Sets (or, with `None`, removes) the object's auto-response pair.
    AutoResponse(Option<(String, String)>),
}

#[derive(Debug)]
pub(super) enum Out {
    Msg(WsMessage),
    Close(u16, String),
}

/// Why a socket is being closed by the sidecar (not by the app's close call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ending {
    /// The client sent a Close: tungstenite queued the echo; write it and drop the connection.
    Echo,
    /// Fail the connection with this close code (a protocol error, or a slow consumer).
    Fail { code: u16, reason: String },
}

/// What a socket's registry entry, reader and writer share.
pub(super) struct Link {
    queued_bytes: AtomicUsize,
    queued_messages: AtomicUsize,
    /// Pings received since the writer last flushed tungstenite's buffer (which holds the pongs).
    pub(super) pings: AtomicUsize,
    pub(super) pinged: Notify,
    /// Told after each flush of the writer.
    pub(super) flushed: Notify,
    pub(super) ending: watch::Sender<Option<Ending>>,
}

impl Link {
    fn new() -> Self {
        Self {
            queued_bytes: AtomicUsize::new(0),
            queued_messages: AtomicUsize::new(0),
            pings: AtomicUsize::new(0),
            pinged: Notify::new(),
            flushed: Notify::new(),
            ending: watch::Sender::new(None),
        }
    }

    /// Asks the writer to close the connection; the first ending wins.
    pub(super) fn end(&self, ending: Ending) {
        self.ending.send_if_modified(|e| {
            if e.is_some() {
                return false;
            }
            *e = Some(ending);
            true
        });
    }

    fn is_ending(&self) -> bool {
        self.ending.borrow().is_some()
    }

    /// Resolves once fewer than [`MAX_UNANSWERED_PINGS`] pongs are owed.
    pub(super) async fn caught_up(&self) {
        loop {
            let flushed = self.flushed.notified();
            tokio::pin!(flushed);
            flushed.as_mut().enable();
            if self.pings.load(Ordering::SeqCst) < MAX_UNANSWERED_PINGS {
                return;
            }
            flushed.await;
        }
    }

    /// The writer finished writing a message of `len` bytes.
    pub(super) fn written(&self, len: usize) {
        self.queued_bytes.fetch_sub(len, Ordering::SeqCst);
        self.queued_messages.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Resolves once the socket has an ending.
pub(super) async fn ended(rx: &mut watch::Receiver<Option<Ending>>) {
    let _ = rx.wait_for(Option::is_some).await;
}

struct Socket {
    tx: mpsc::UnboundedSender<Out>,
    link: Arc<Link>,
    tags: Vec<String>,
    attachment: Option<serde_json::Value>,
    accepted: bool,
}

impl Socket {
    /// Queues a message for the writer, within the socket's bounds. A socket over them is
    /// closed with 1008 (its queue is dropped); never blocks, so one slow socket cannot hold up
    /// a turn or a broadcast to the others.
    fn send(&self, msg: WsMessage, metrics: &Metrics) -> bool {
        if self.link.is_ending() {
            return false;
        }
        let len = msg.len();
        let bytes = self.link.queued_bytes.fetch_add(len, Ordering::SeqCst) + len;
        let count = self.link.queued_messages.fetch_add(1, Ordering::SeqCst) + 1;
        if count > 1 && (bytes > MAX_QUEUED_BYTES || count > MAX_QUEUED_MESSAGES) {
            metrics.websockets_slow_closed.inc();
            self.link.end(Ending::Fail {
                code: CLOSE_SLOW_CONSUMER,
                reason: format!(
                    "not reading: over {MAX_QUEUED_BYTES} bytes or {MAX_QUEUED_MESSAGES} messages queued"
                ),
            });
            return false;
        }
        if self.tx.send(Out::Msg(msg)).is_err() {
            return false;
        }
        metrics.websocket_messages_out.inc();
        true
    }

    /// Queues a close after what is already queued.
    fn close(&self, code: u16, reason: String) {
        if !self.link.is_ending() {
            self.link.queued_messages.fetch_add(1, Ordering::SeqCst);
            let _ = self.tx.send(Out::Close(code, reason));
        }
    }
}

#[derive(Default)]
struct ObjectSockets {
    sockets: HashMap<String, Socket>,
    auto_response: Option<(String, String)>,
}

pub struct Sockets {
    objects: Mutex<HashMap<ObjectKey, ObjectSockets>>,
    pub(super) metrics: Metrics,
    /// Client messages waiting for their turns, across every socket (`--max-buffered-socket-bytes`).
    pub(super) inbound: BodyBudget,
    /// Set by [`Sockets::close_all`] (under the lock): no socket is reserved after it, so none
    /// can miss its Close (1012).
    stopping: std::sync::atomic::AtomicBool,
}

impl Sockets {
    /// `inbound_bytes`: the most bytes of client messages that may wait for their turns, across
    /// every socket.
    pub fn new(metrics: Metrics, inbound_bytes: usize) -> Self {
        Self {
            objects: Mutex::new(HashMap::new()),
            inbound: BodyBudget::new(inbound_bytes, metrics.websocket_messages_buffered.clone()),
            metrics,
            stopping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, ObjectSockets>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves a socket id for a handshake in progress. Messages the connect turn sends to it
    /// wait in its queue until the socket is up.
    pub(super) fn reserve(&self, key: &ObjectKey) -> Result<(String, Queue), ApiError> {
        let mut objects = self.lock();
        if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the sidecar is stopping; connect again",
            ));
        }
        let entry = objects.entry(key.clone()).or_default();
        if entry.sockets.len() >= MAX_SOCKETS_PER_OBJECT {
            self.metrics.websockets_refused.inc();
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_sockets",
                format!("the object already holds {MAX_SOCKETS_PER_OBJECT} WebSockets"),
            ));
        }
        let mut raw = [0u8; 12];
        getrandom::fill(&mut raw).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        let id = hex::encode(raw);
        let (tx, rx) = mpsc::unbounded_channel();
        let link = Arc::new(Link::new());
        entry.sockets.insert(
            id.clone(),
            Socket {
                tx,
                link: link.clone(),
                tags: vec![],
                attachment: None,
                accepted: false,
            },
        );
        Ok((id, Queue { rx, link }))
    }

    /// The connect turn accepted the socket with `tags` (comma separated).
    pub fn accept(&self, key: &ObjectKey, id: &str, tags: &str) -> Result<(), ApiError> {
        let tags: Vec<String> = tags
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect();
        if tags.len() > MAX_TAGS || tags.iter().any(|t| t.len() > MAX_TAG_BYTES) {
            self.refuse(key, id);
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "invalid_tags",
                format!(
                    "the app accepted the socket with invalid tags: at most {MAX_TAGS} tags of at most {MAX_TAG_BYTES} bytes"
                ),
            ));
        }
        let mut objects = self.lock();
        if let Some(s) = objects.get_mut(key).and_then(|o| o.sockets.get_mut(id)) {
            s.tags = tags;
            s.accepted = true;
        }
        Ok(())
    }

    /// The connect turn refused the socket (or failed).
    pub fn refuse(&self, key: &ObjectKey, id: &str) {
        self.remove(key, id);
    }

    pub(super) fn is_accepted(&self, key: &ObjectKey, id: &str) -> bool {
        self.lock()
            .get(key)
            .and_then(|o| o.sockets.get(id))
            .is_some_and(|s| s.accepted)
    }

    pub(super) fn remove(&self, key: &ObjectKey, id: &str) {
        let mut objects = self.lock();
        if let Some(o) = objects.get_mut(key) {
            o.sockets.remove(id);
            if o.sockets.is_empty() && o.auto_response.is_none() {
                objects.remove(key);
            }
        }
    }

    /// Sends what a committed turn queued, in order.
    pub fn flush(&self, key: &ObjectKey, outbox: Vec<Outgoing>) {
        if outbox.is_empty() {
            return;
        }
        let objects = self.lock();
        let Some(o) = objects.get(key) else {
            return;
        };
        for out in outbox {
            match out {
                Outgoing::Send { id, msg } => {
                    if let Some(s) = o.sockets.get(&id) {
                        s.send(msg, &self.metrics);
                    }
                }
                Outgoing::Broadcast { tag, except, msg } => {
                    for (id, s) in &o.sockets {
                        if s.accepted && matches(s, id, tag.as_deref(), &except) {
                            s.send(msg.clone(), &self.metrics);
                        }
                    }
                }
                Outgoing::Close { id, code, reason } => {
                    if let Some(s) = o.sockets.get(&id) {
                        s.close(code, reason);
                    }
                }
            }
        }
    }

    /// The sockets of an object (with `tag`, if given), as the app API lists them.
    pub fn list(&self, key: &ObjectKey, tag: Option<&str>) -> Vec<serde_json::Value> {
        let objects = self.lock();
        let Some(o) = objects.get(key) else {
            return vec![];
        };
        let mut out: Vec<serde_json::Value> = o
            .sockets
            .iter()
            .filter(|(id, s)| matches(s, id, tag, &[]))
            .map(
                |(id, s)| serde_json::json!({"id": id, "tags": s.tags, "attachment": s.attachment}),
            )
            .collect();
        out.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        out
    }

    /// How many sockets a send or broadcast would reach now.
    pub fn count(
        &self,
        key: &ObjectKey,
        id: Option<&str>,
        tag: Option<&str>,
        except: &[String],
    ) -> usize {
        let objects = self.lock();
        let Some(o) = objects.get(key) else {
            return 0;
        };
        match id {
            Some(id) => usize::from(o.sockets.contains_key(id)),
            None => o
                .sockets
                .iter()
                .filter(|(i, s)| s.accepted && matches(s, i, tag, except))
                .count(),
        }
    }

    pub fn set_attachment(&self, key: &ObjectKey, id: &str, value: serde_json::Value) -> bool {
        let mut objects = self.lock();
        match objects.get_mut(key).and_then(|o| o.sockets.get_mut(id)) {
            Some(s) => {
                s.attachment = Some(value);
                true
            }
            None => false,
        }
    }

    pub fn set_auto_response(&self, key: &ObjectKey, pair: Option<(String, String)>) {
        let mut objects = self.lock();
        let o = objects.entry(key.clone()).or_default();
        o.auto_response = pair;
        if o.sockets.is_empty() && o.auto_response.is_none() {
            objects.remove(key);
        }
    }

    /// Applies the registry operations a kept turn carried, in order (an attachment for a socket
    /// that is gone is ignored: it may have closed while the turn ran); returns its sends,
    /// broadcasts and closes, in order, for the turn's outbox.
    pub fn apply_carried(&self, key: &ObjectKey, ops: Vec<SocketOp>) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for op in ops {
            match op {
                SocketOp::Out(o) => out.push(o),
                SocketOp::Attachment { id, attachment } => {
                    self.set_attachment(key, &id, attachment);
                }
                SocketOp::AutoResponse(pair) => self.set_auto_response(key, pair),
            }
        }
        out
    }

    pub(super) fn auto_response(&self, key: &ObjectKey, text: &str) -> Option<String> {
        let objects = self.lock();
        let (req, resp) = objects.get(key)?.auto_response.as_ref()?;
        (req == text).then(|| resp.clone())
    }

    pub(super) fn send_direct(&self, key: &ObjectKey, id: &str, msg: WsMessage) {
        if let Some(s) = self.lock().get(key).and_then(|o| o.sockets.get(id)) {
            s.send(msg, &self.metrics);
        }
    }

    /// Closes every socket of `slot`'s objects with 1012 (service restart): the slot is being
    /// handed to another shard, where clients reconnect. Returns how many were closed.
    pub fn close_slot(&self, slot: stead_core::Slot, slots: u32) -> usize {
        let mut n = 0;
        for ((_, id), o) in self.lock().iter() {
            if id.slot(slots) != slot {
                continue;
            }
            for s in o.sockets.values() {
                s.close(
                    CLOSE_SERVICE_RESTART,
                    "object moving to another shard".into(),
                );
                n += 1;
            }
        }
        n
    }

    /// Closes every socket with 1012 (service restart): the sidecar is shutting down.
    pub fn close_all(&self) {
        let objects = self.lock();
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        for o in objects.values() {
            for s in o.sockets.values() {
                s.close(CLOSE_SERVICE_RESTART, "server restarting".into());
            }
        }
    }
}

fn matches(s: &Socket, id: &str, tag: Option<&str>, except: &[String]) -> bool {
    tag.is_none_or(|t| s.tags.iter().any(|x| x == t)) && !except.iter().any(|e| e == id)
}

/// A socket's outgoing queue, drained by its writer.
pub(super) struct Queue {
    pub(super) rx: mpsc::UnboundedReceiver<Out>,
    pub(super) link: Arc<Link>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ObjectKey {
        let class = stead_core::ClassName::new("Room").expect("class name");
        let id = stead_core::ObjectId::unique().expect("randomness");
        crate::object::ObjectRef::new(class, id, None, 16).key()
    }

    #[test]
    fn no_socket_is_reserved_once_every_socket_was_closed() {
        let sockets = Sockets::new(Metrics::new(), 1 << 20);
        let key = key();
        let (id, mut queue) = sockets.reserve(&key).expect("reserve before the stop");
        sockets.close_all();
        // The socket reserved before the stop gets its Close, whenever it comes up.
        assert!(
            matches!(queue.rx.try_recv(), Ok(Out::Close(1012, _))),
            "socket {id}"
        );
        let refused = sockets.reserve(&key).err().expect("refused after the stop");
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.code, "shutting_down");
    }
}
