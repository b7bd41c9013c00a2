//! Hibernatable WebSockets: the sidecar holds every socket; the app sees events.
//!
//! The registry keeps, per object, each socket's sender, tags and attachment, and the object's
//! auto-response pair. It outlives the object's mailbox and database, so an idle object can
//! hibernate while its sockets stay connected. Messages from clients become events in the
//! object's mailbox; messages from the app wait in the turn's outbox until the turn commits.
//!
//! Each socket has a reader (this module's `run`) and a writer task. What waits to be written is
//! bounded per socket, in bytes and in messages, and so are the pongs owed to a client's pings;
//! a client that does not read is closed with 1008 instead of growing the sidecar's memory.
//! Protocol failures are answered with a Close frame of their RFC 6455 §7.4.1 code.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Method, Request, StatusCode};
use stead_core::{EventKind, protocol};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite;

use crate::app::clean_headers;
use crate::chain::CallChain;
use crate::error::ApiError;
use crate::host::{Host, Work};
use crate::metrics::Metrics;
use crate::object::{ObjectKey, ObjectRef};

pub const MAX_SOCKETS_PER_OBJECT: usize = 32_768;
pub const MAX_MESSAGE_BYTES: usize = 32 << 20;
pub const MAX_TAGS: usize = 10;
pub const MAX_TAG_BYTES: usize = 256;
pub const MAX_ATTACHMENT_BYTES: usize = 16 << 10;
/// Read buffer per socket. tungstenite's default is 128 KiB, which made an idle socket cost
/// about 135 KiB of sidecar memory; messages larger than the buffer are still read, in steps.
const READ_BUFFER_BYTES: usize = 4 << 10;
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
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
const CLOSE_INVALID_DATA: u16 = 1007;
const CLOSE_TOO_BIG: u16 = 1009;
/// How long a closing socket may take to write its Close frame, and to get the client's Close
/// after the app closed it; then the connection is dropped (a client that does not read would
/// otherwise hold it forever).
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// tungstenite's own write buffer holds the frame being written and the pongs and close replies
/// it queues itself; unbounded by default, it grew by every pong owed to a non-reading client.
/// One message of the largest size plus room for the pongs owed ([`MAX_UNANSWERED_PINGS`] of
/// at most 127 bytes) and a Close; a pong over it is dropped.
const MAX_WRITE_BUFFER_BYTES: usize = MAX_MESSAGE_BYTES + (256 << 10);

/// Whether an app may close a socket with `code`: the codes RFC 6455 §7.4 defines for sending
/// (1004, 1005, 1006 and 1015 must never be sent), those IANA registered since (1012–1014), and
/// the ranges for libraries and applications (3000–4999).
pub fn is_sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
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

#[derive(Debug)]
enum Out {
    Msg(WsMessage),
    Close(u16, String),
}

/// Why a socket is being closed by the sidecar (not by the app's close call).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    /// The client sent a Close: tungstenite queued the echo; write it and drop the connection.
    Echo,
    /// Fail the connection with this close code (a protocol error, or a slow consumer).
    Fail { code: u16, reason: String },
}

/// What a socket's registry entry, reader and writer share.
struct Link {
    queued_bytes: AtomicUsize,
    queued_messages: AtomicUsize,
    /// Pings received since the writer last flushed tungstenite's buffer (which holds the pongs).
    pings: AtomicUsize,
    pinged: Notify,
    /// Told after each flush of the writer.
    flushed: Notify,
    ending: watch::Sender<Option<Ending>>,
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
    fn end(&self, ending: Ending) {
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
    async fn caught_up(&self) {
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
    fn written(&self, len: usize) {
        self.queued_bytes.fetch_sub(len, Ordering::SeqCst);
        self.queued_messages.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Resolves once the socket has an ending.
async fn ended(rx: &mut watch::Receiver<Option<Ending>>) {
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
    metrics: Metrics,
}

impl Sockets {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            objects: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, ObjectSockets>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves a socket id for a handshake in progress. Messages the connect turn sends to it
    /// wait in its queue until the socket is up.
    fn reserve(&self, key: &ObjectKey) -> Result<(String, Queue), ApiError> {
        let mut objects = self.lock();
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

    fn is_accepted(&self, key: &ObjectKey, id: &str) -> bool {
        self.lock()
            .get(key)
            .and_then(|o| o.sockets.get(id))
            .is_some_and(|s| s.accepted)
    }

    fn remove(&self, key: &ObjectKey, id: &str) {
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

    fn auto_response(&self, key: &ObjectKey, text: &str) -> Option<String> {
        let objects = self.lock();
        let (req, resp) = objects.get(key)?.auto_response.as_ref()?;
        (req == text).then(|| resp.clone())
    }

    fn send_direct(&self, key: &ObjectKey, id: &str, msg: WsMessage) {
        if let Some(s) = self.lock().get(key).and_then(|o| o.sockets.get(id)) {
            s.send(msg, &self.metrics);
        }
    }

    /// Closes every socket with 1012 (service restart): the sidecar is shutting down.
    pub fn close_all(&self) {
        for o in self.lock().values() {
            for s in o.sockets.values() {
                s.close(CLOSE_SERVICE_RESTART, "server restarting".into());
            }
        }
    }
}

fn matches(s: &Socket, id: &str, tag: Option<&str>, except: &[String]) -> bool {
    tag.is_none_or(|t| s.tags.iter().any(|x| x == t)) && !except.iter().any(|e| e == id)
}

/// Whether a request asks to become a WebSocket.
pub fn is_upgrade(req: &Request<Body>) -> bool {
    req.method() == Method::GET
        && req
            .headers()
            .get(http::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Handles a WebSocket handshake for an object this shard owns: the app decides in a
/// `websocket-connect` turn; on 2xx the socket is upgraded and held here.
pub async fn connect(
    host: Arc<Host>,
    sockets: Arc<Sockets>,
    object: ObjectRef,
    rest: String,
    req: Request<Body>,
    chain: CallChain,
) -> Response {
    let (mut parts, _body) = req.into_parts();
    if let Some(key) = parts.headers.get(http::header::SEC_WEBSOCKET_KEY)
        && !valid_key(key.as_bytes())
    {
        return ApiError::bad_request(
            "invalid_websocket",
            "Sec-WebSocket-Key must be the base64 encoding of 16 random bytes (RFC 6455 §4.1)",
        )
        .into_response();
    }
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(e) => {
            return ApiError::bad_request("invalid_websocket", e.body_text()).into_response();
        }
    };
    let key = object.key();
    let (id, queue) = match sockets.reserve(&key) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let path = rest.split('?').next().unwrap_or("/").to_owned();
    let reservation = Reservation {
        host: host.clone(),
        sockets: sockets.clone(),
        object: object.clone(),
        id: id.clone(),
        path: path.clone(),
        armed: true,
    };
    clean_headers(&mut parts.headers, true);
    for h in [
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
    ] {
        parts.headers.remove(h);
    }
    let mut connect = Request::new(Bytes::new());
    *connect.method_mut() = Method::GET;
    *connect.headers_mut() = parts.headers.clone();
    *connect.uri_mut() = match rest.parse() {
        Ok(u) => u,
        Err(_) => {
            sockets.refuse(&key, &id);
            return ApiError::bad_request("invalid_path", "invalid path").into_response();
        }
    };
    let work = Work::WebSocket {
        kind: EventKind::WebSocketConnect,
        ws_id: id.clone(),
    };
    let answer = host
        .deliver_work(object.clone(), work, connect, chain)
        .await;
    if !answer.status().is_success() || !sockets.is_accepted(&key, &id) {
        sockets.refuse(&key, &id);
        return answer.map(Body::from);
    }
    let metrics = sockets.metrics.clone();
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| async move {
            // Up: from here `run` tells the app how the socket ends.
            reservation.disarm();
            metrics.websockets_open.inc();
            run(
                host,
                sockets.clone(),
                object,
                id.clone(),
                path,
                socket,
                queue,
            )
            .await;
            sockets.remove(&key, &id);
            metrics.websockets_open.dec();
        })
}

/// A socket between its reservation and its upgrade. Dropped there (the client went away during
/// the connect turn, which drops the handshake, or before the upgrade completed), it leaves the
/// registry; if the app had already accepted it, the app is told that it closed (1006). (An
/// accept that comes after the drop finds no socket, and the app is not told.)
struct Reservation {
    host: Arc<Host>,
    sockets: Arc<Sockets>,
    object: ObjectRef,
    id: String,
    path: String,
    armed: bool,
}

impl Reservation {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let key = self.object.key();
        let accepted = self.sockets.is_accepted(&key, &self.id);
        self.sockets.remove(&key, &self.id);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if accepted {
            let (host, object) = (self.host.clone(), self.object.clone());
            let (work, req) = close_event(&self.path, &self.id, 1006, "");
            runtime.spawn(async move { host.post(object, work, req).await });
        }
    }
}

/// RFC 6455 §4.1: the key is the base64 encoding of a 16-byte nonce.
fn valid_key(key: &[u8]) -> bool {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|nonce| nonce.len() == 16)
}

/// A socket's outgoing queue, drained by its writer.
struct Queue {
    rx: mpsc::UnboundedReceiver<Out>,
    link: Arc<Link>,
}

/// How a socket's writer stopped.
#[derive(Debug)]
enum WriterEnd {
    /// It wrote the app's Close frame; the client should answer with its own.
    AppClosed,
    /// It closed the connection for an [`Ending`], or the socket left the registry.
    Ended,
    /// Writing failed: the connection is gone.
    Failed(String),
}

/// Writes what the socket's turns queued, and the pongs tungstenite owes; on an [`Ending`]
/// drops the queue, writes the Close frame (for at most [`CLOSE_GRACE`]) and stops.
async fn write(mut sink: SplitSink<WebSocket, Message>, queue: Queue) -> WriterEnd {
    let Queue { mut rx, link } = queue;
    let mut ending = link.ending.subscribe();
    let stopped = loop {
        let out = tokio::select! {
            biased;
            () = ended(&mut ending) => break None,
            () = link.pinged.notified() => None,
            out = rx.recv() => match out {
                Some(out) => Some(out),
                None => break None,
            },
        };
        // A completed flush has written the pongs owed for the pings counted before it.
        let pings = link.pings.load(Ordering::SeqCst);
        let (result, len) = match out {
            None => tokio::select! {
                biased;
                () = ended(&mut ending) => break None,
                r = sink.flush() => (r, None),
            },
            Some(Out::Msg(msg)) => {
                let len = msg.len();
                let msg = match msg {
                    WsMessage::Text(t) => Message::Text(t.into()),
                    WsMessage::Binary(b) => Message::Binary(b),
                };
                tokio::select! {
                    biased;
                    () = ended(&mut ending) => break None,
                    r = sink.send(msg) => (r, Some(len)),
                }
            }
            Some(Out::Close(code, reason)) => {
                link.written(0);
                let close = Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }));
                break Some(
                    match tokio::time::timeout(CLOSE_GRACE, sink.send(close)).await {
                        Ok(Ok(())) => WriterEnd::AppClosed,
                        Ok(Err(e)) => WriterEnd::Failed(e.to_string()),
                        Err(_) => {
                            WriterEnd::Failed("the client did not read the Close frame".into())
                        }
                    },
                );
            }
        };
        if let Some(len) = len {
            link.written(len);
        }
        if let Err(e) = result {
            break Some(WriterEnd::Failed(e.to_string()));
        }
        link.pings.fetch_sub(pings, Ordering::SeqCst);
        link.flushed.notify_waiters();
    };
    // Whatever was still queued is not sent: free it now, not when the connection is dropped.
    drop(rx);
    if let Some(end) = stopped {
        return end;
    }
    let ending = ending.borrow().clone();
    match ending {
        Some(Ending::Echo) => {
            let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
        }
        Some(Ending::Fail { code, reason }) => {
            let close = Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }));
            let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(close)).await;
        }
        None => {}
    }
    WriterEnd::Ended
}

/// The close code that answers a failed read (RFC 6455 §7.4.1), with its reason, or `None`
/// when the connection itself is gone and no frame can be sent.
fn close_for(e: axum::Error) -> Option<(u16, String)> {
    use tungstenite::error::ProtocolError;
    let e = e.into_inner().downcast::<tungstenite::Error>().ok()?;
    let code = match *e {
        tungstenite::Error::Utf8(_) => CLOSE_INVALID_DATA,
        tungstenite::Error::Capacity(_) => CLOSE_TOO_BIG,
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => return None,
        tungstenite::Error::Protocol(_) => CLOSE_PROTOCOL_ERROR,
        _ => return None,
    };
    let mut reason = e.to_string();
    // A close reason is at most 123 bytes (RFC 6455 §5.5: 125 with the code).
    while reason.len() > 123 {
        reason.pop();
    }
    Some((code, reason))
}

async fn run(
    host: Arc<Host>,
    sockets: Arc<Sockets>,
    object: ObjectRef,
    id: String,
    path: String,
    socket: WebSocket,
    queue: Queue,
) {
    let key = object.key();
    let link = queue.link.clone();
    let mut ending = link.ending.subscribe();
    let (sink, mut stream) = socket.split();
    let mut writer = tokio::spawn(write(sink, queue));
    let mut writer_done = false;
    let inbound = Arc::new(Semaphore::new(MAX_INBOUND_BYTES));
    // After the app closed the socket: how long to wait for the client's Close.
    let mut deadline: Option<tokio::time::Instant> = None;
    let event = |kind: EventKind, body: Bytes, extra: Vec<(&'static str, String)>| {
        socket_event(&path, &id, kind, body, extra)
    };
    let closed = |code: u16, reason: &str| close_event(&path, &id, code, reason);
    let failed = |error: &str| {
        event(
            EventKind::WebSocketError,
            Bytes::new(),
            vec![(protocol::WEBSOCKET_ERROR, encode(error))],
        )
    };
    // How the socket ended, as the app is told (one close or error event).
    let last = loop {
        let msg = tokio::select! {
            biased;
            () = ended(&mut ending) => {
                // The registry closed a consumer over its bounds.
                let reason = match &*ending.borrow() {
                    Some(Ending::Fail { code, reason }) => format!("closed with {code}: {reason}"),
                    _ => "closed".to_owned(),
                };
                break failed(&reason);
            }
            w = &mut writer, if !writer_done => {
                writer_done = true;
                match w {
                    Ok(WriterEnd::AppClosed) => {
                        deadline = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                        continue;
                    }
                    Ok(WriterEnd::Failed(e)) => break failed(&e),
                    Ok(WriterEnd::Ended) => break closed(1006, ""),
                    Err(e) => break failed(&e.to_string()),
                }
            }
            () = sleep_until(deadline) => break closed(1006, ""),
            msg = stream.next() => msg,
        };
        let (work, req) = match msg {
            // The connection ended without a close frame or an error.
            None => break closed(1006, ""),
            Some(Ok(Message::Text(t))) => {
                sockets.metrics.websocket_messages_in.inc();
                if let Some(answer) = sockets.auto_response(&key, t.as_str()) {
                    sockets.send_direct(&key, &id, WsMessage::Text(answer));
                    continue;
                }
                event(
                    EventKind::WebSocketMessage,
                    Bytes::from(t.as_str().to_owned()),
                    vec![(protocol::WEBSOCKET_KIND, "text".into())],
                )
            }
            Some(Ok(Message::Binary(b))) => {
                sockets.metrics.websocket_messages_in.inc();
                event(
                    EventKind::WebSocketMessage,
                    b,
                    vec![(protocol::WEBSOCKET_KIND, "binary".into())],
                )
            }
            Some(Ok(Message::Ping(_))) => {
                let owed = link.pings.fetch_add(1, Ordering::SeqCst) + 1;
                link.pinged.notify_one();
                // Read no further until the pongs owed are written; a client that leaves them
                // unread for the grace period is not reading at all.
                if owed >= MAX_UNANSWERED_PINGS
                    && tokio::time::timeout(CLOSE_GRACE, link.caught_up())
                        .await
                        .is_err()
                {
                    sockets.metrics.websockets_slow_closed.inc();
                    let reason = format!("not reading: {MAX_UNANSWERED_PINGS} pings not answered");
                    link.end(Ending::Fail {
                        code: CLOSE_SLOW_CONSUMER,
                        reason: reason.clone(),
                    });
                    break failed(&format!("closed with {CLOSE_SLOW_CONSUMER}: {reason}"));
                }
                continue;
            }
            Some(Ok(Message::Pong(_))) => continue,
            Some(Ok(Message::Close(frame))) => {
                // tungstenite queued the echo of the client's Close; the writer sends it.
                link.end(Ending::Echo);
                let (code, reason) = frame
                    .map(|f| (f.code, f.reason.as_str().to_owned()))
                    .unwrap_or((1005, String::new()));
                break closed(code, &reason);
            }
            Some(Err(e)) => {
                let text = e.to_string();
                if let Some((code, reason)) = close_for(e) {
                    link.end(Ending::Fail { code, reason });
                }
                break failed(&text);
            }
        };
        // Holds its share of the socket's inbound bytes until the event has left the mailbox.
        let mut req = req;
        let permits = req.body().len().clamp(1, MAX_INBOUND_BYTES) as u32;
        match inbound.clone().acquire_many_owned(permits).await {
            Ok(permit) => {
                req.extensions_mut().insert(Arc::new(permit));
            }
            // Never closed.
            Err(_) => break failed("internal: the inbound limit closed"),
        }
        host.post(object.clone(), work, req).await;
    };
    // No more messages to this socket; the writer drops its queue and writes the Close.
    sockets.remove(&key, &id);
    let (work, req) = last;
    host.post(object.clone(), work, req).await;
    if !writer_done
        && tokio::time::timeout(CLOSE_GRACE * 2, &mut writer)
            .await
            .is_err()
    {
        writer.abort();
    }
}

/// An event about the socket `id`, posted to the path it connected on.
fn socket_event(
    path: &str,
    id: &str,
    kind: EventKind,
    body: Bytes,
    extra: Vec<(&'static str, String)>,
) -> (Work, Request<Bytes>) {
    let mut req = Request::new(body);
    *req.method_mut() = Method::POST;
    *req.uri_mut() = path.parse().unwrap_or_default();
    for (k, v) in extra {
        if let Ok(v) = HeaderValue::from_str(&v) {
            req.headers_mut().insert(k, v);
        }
    }
    (
        Work::WebSocket {
            kind,
            ws_id: id.to_owned(),
        },
        req,
    )
}

fn close_event(path: &str, id: &str, code: u16, reason: &str) -> (Work, Request<Bytes>) {
    socket_event(
        path,
        id,
        EventKind::WebSocketClose,
        Bytes::new(),
        vec![
            (protocol::WEBSOCKET_CLOSE_CODE, code.to_string()),
            (protocol::WEBSOCKET_CLOSE_REASON, encode(reason)),
        ],
    )
}

/// Resolves at `deadline`, or never without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
