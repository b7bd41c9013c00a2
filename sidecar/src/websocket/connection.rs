//! A socket's connection: the handshake (a `websocket-connect` turn decides), then its reader,
//! which posts the client's messages as events to the object's mailbox, and its writer, which
//! drains the socket's queue in the [`registry`](crate::websocket::registry).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Method, Request};
use stead_core::{EventKind, protocol};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite;

use crate::app::clean_headers;
use crate::chain::CallChain;
use crate::client::ClientAddr;
use crate::error::ApiError;
use crate::host::{Host, Work};
use crate::object::ObjectRef;
use crate::websocket::registry::{
    CLOSE_GRACE, CLOSE_INVALID_DATA, CLOSE_PROTOCOL_ERROR, CLOSE_SLOW_CONSUMER, CLOSE_TOO_BIG,
    Ending, MAX_INBOUND_BYTES, MAX_MESSAGE_BYTES, MAX_UNANSWERED_PINGS, MAX_WRITE_BUFFER_BYTES,
    Out, Queue, READ_BUFFER_BYTES, Sockets, WsMessage, ended,
};

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
    ClientAddr::set_header(&mut parts.headers, &parts.extensions);
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
    // Counted open from here, before the 101 leaves: a sidecar that stops meanwhile waits for
    // the socket to take its Close (1012) instead of ending under it.
    let open = OpenSocket::new(&sockets.metrics);
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| async move {
            let _open = open;
            // Up: from here `run` tells the app how the socket ends.
            reservation.disarm();
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
        })
}

/// A socket in `stead_websockets_open`, from its acceptance until its task ends, or until its
/// upgrade fails (the task's callback is then dropped unrun).
struct OpenSocket(prometheus_client::metrics::gauge::Gauge);

impl OpenSocket {
    fn new(metrics: &crate::metrics::Metrics) -> Self {
        metrics.websockets_open.inc();
        Self(metrics.websockets_open.clone())
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.dec();
    }
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
                break failed(&ended_why(&ending));
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
        // Holds its share of the socket's inbound bytes, and of every socket's, until the event
        // has left the mailbox. Waiting for either stops reading this client.
        let mut req = req;
        let permits = req.body().len().clamp(1, MAX_INBOUND_BYTES) as u32;
        match inbound.clone().acquire_many_owned(permits).await {
            Ok(permit) => {
                req.extensions_mut().insert(Arc::new(permit));
            }
            // Never closed.
            Err(_) => break failed("internal: the inbound limit closed"),
        }
        let held = tokio::select! {
            biased;
            () = ended(&mut ending) => break failed(&ended_why(&ending)),
            held = sockets.inbound.wait(req.body().len()) => held,
        };
        req.extensions_mut().insert(Arc::new(held));
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

/// Why the registry ended the socket, as its error event says.
fn ended_why(ending: &tokio::sync::watch::Receiver<Option<Ending>>) -> String {
    match &*ending.borrow() {
        Some(Ending::Fail { code, reason }) => format!("closed with {code}: {reason}"),
        _ => "closed".to_owned(),
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
