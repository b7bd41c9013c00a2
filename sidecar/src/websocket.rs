//! Hibernatable WebSockets: the sidecar holds every socket; the app sees events.
//!
//! The registry keeps, per object, each socket's sender, tags and attachment, and the object's
//! auto-response pair. It outlives the object's mailbox and database, so an idle object can
//! hibernate while its sockets stay connected. Messages from clients become events in the
//! object's mailbox; messages from the app wait in the turn's outbox until the turn commits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Method, Request, StatusCode};
use stead_core::{EventKind, protocol};
use tokio::sync::mpsc;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    Text(String),
    Binary(Bytes),
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

struct Socket {
    tx: mpsc::UnboundedSender<Out>,
    tags: Vec<String>,
    attachment: Option<serde_json::Value>,
    accepted: bool,
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
    fn reserve(&self, key: &ObjectKey) -> Result<(String, mpsc::UnboundedReceiver<Out>), ApiError> {
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
        entry.sockets.insert(
            id.clone(),
            Socket {
                tx,
                tags: vec![],
                attachment: None,
                accepted: false,
            },
        );
        Ok((id, rx))
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
                        let _ = s.tx.send(Out::Msg(msg));
                        self.metrics.websocket_messages_out.inc();
                    }
                }
                Outgoing::Broadcast { tag, except, msg } => {
                    for (id, s) in &o.sockets {
                        if s.accepted && matches(s, id, tag.as_deref(), &except) {
                            let _ = s.tx.send(Out::Msg(msg.clone()));
                            self.metrics.websocket_messages_out.inc();
                        }
                    }
                }
                Outgoing::Close { id, code, reason } => {
                    if let Some(s) = o.sockets.get(&id) {
                        let _ = s.tx.send(Out::Close(code, reason));
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
            let _ = s.tx.send(Out::Msg(msg));
            self.metrics.websocket_messages_out.inc();
        }
    }

    /// Closes every socket with 1012 (service restart): the sidecar is shutting down.
    pub fn close_all(&self) {
        for o in self.lock().values() {
            for s in o.sockets.values() {
                let _ = s.tx.send(Out::Close(
                    CLOSE_SERVICE_RESTART,
                    "server restarting".into(),
                ));
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
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(e) => {
            return ApiError::bad_request("invalid_websocket", e.body_text()).into_response();
        }
    };
    let key = object.key();
    let (id, rx) = match sockets.reserve(&key) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
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
    let path = rest.split('?').next().unwrap_or("/").to_owned();
    let metrics = sockets.metrics.clone();
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| async move {
            metrics.websockets_open.inc();
            run(host, sockets.clone(), object, id.clone(), path, socket, rx).await;
            sockets.remove(&key, &id);
            metrics.websockets_open.dec();
        })
}

async fn run(
    host: Arc<Host>,
    sockets: Arc<Sockets>,
    object: ObjectRef,
    id: String,
    path: String,
    socket: WebSocket,
    mut rx: mpsc::UnboundedReceiver<Out>,
) {
    let key = object.key();
    let (mut sink, mut stream) = socket.split();
    let writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            let result = match out {
                Out::Msg(WsMessage::Text(t)) => sink.send(Message::Text(t.into())).await,
                Out::Msg(WsMessage::Binary(b)) => sink.send(Message::Binary(b)).await,
                Out::Close(code, reason) => {
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code,
                            reason: reason.into(),
                        })))
                        .await;
                    break;
                }
            };
            if result.is_err() {
                break;
            }
        }
    });
    let event = |kind: EventKind, body: Bytes, extra: Vec<(&'static str, String)>| {
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
                ws_id: id.clone(),
            },
            req,
        )
    };
    // Set once the app has been told how the socket ended (close or error event).
    let mut ended = false;
    while let Some(msg) = stream.next().await {
        let (work, req) = match msg {
            Ok(Message::Text(t)) => {
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
            Ok(Message::Binary(b)) => {
                sockets.metrics.websocket_messages_in.inc();
                event(
                    EventKind::WebSocketMessage,
                    b,
                    vec![(protocol::WEBSOCKET_KIND, "binary".into())],
                )
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(Message::Close(frame)) => {
                ended = true;
                let (code, reason) = frame
                    .map(|f| (f.code, f.reason.as_str().to_owned()))
                    .unwrap_or((1005, String::new()));
                event(
                    EventKind::WebSocketClose,
                    Bytes::new(),
                    vec![
                        (protocol::WEBSOCKET_CLOSE_CODE, code.to_string()),
                        (protocol::WEBSOCKET_CLOSE_REASON, encode(&reason)),
                    ],
                )
            }
            Err(e) => {
                ended = true;
                event(
                    EventKind::WebSocketError,
                    Bytes::new(),
                    vec![(protocol::WEBSOCKET_ERROR, encode(&e.to_string()))],
                )
            }
        };
        let last = !matches!(
            work,
            Work::WebSocket {
                kind: EventKind::WebSocketMessage,
                ..
            }
        );
        host.post(object.clone(), work, req).await;
        if last {
            break;
        }
    }
    if !ended {
        // The connection ended without a close frame or an error: tell the app it closed.
        let (work, req) = event(
            EventKind::WebSocketClose,
            Bytes::new(),
            vec![
                (protocol::WEBSOCKET_CLOSE_CODE, "1006".into()),
                (protocol::WEBSOCKET_CLOSE_REASON, String::new()),
            ],
        );
        host.post(object.clone(), work, req).await;
    }
    sockets.remove(&key, &id);
    writer.abort();
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
