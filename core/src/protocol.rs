//! Header names and event kinds of the protocol between the sidecar and the app.
//! See `docs/app-protocol.md`.

/// Every header with this prefix is reserved: the ingress strips it from clients.
pub const HEADER_PREFIX: &str = "stead-";

pub const EVENT: &str = "stead-event";
pub const CLASS: &str = "stead-class";
pub const OBJECT_ID: &str = "stead-object-id";
pub const OBJECT_NAME: &str = "stead-object-name";
pub const TURN: &str = "stead-turn";
pub const INCARNATION: &str = "stead-object-incarnation";
/// Object events that are calls from another object's turn: `{class}/{id}` of the calling
/// object. Clients cannot set it (every `stead-*` header of theirs is stripped), so an object can
/// trust it to tell calls of its peers from client requests.
pub const CALLER: &str = "stead-caller";
/// Set by the app on its answer to roll the turn back whatever the status.
pub const ROLLBACK: &str = "stead-rollback";

/// The app protocol version: the sidecar sends it on every event, a v2 app puts it on its
/// answers (docs/app-protocol.md, "Protocol 2").
pub const PROTOCOL: &str = "stead-protocol";
pub const PROTOCOL_VERSION: &str = "2";
/// On an answer: the first N bytes of the body are the turn's writes (JSON).
pub const WRITES: &str = "stead-writes";
/// On an event: the first N bytes of the body are the object's state (JSON).
pub const STATE: &str = "stead-state";
/// On an event: what else `stead-writes` may carry, comma-separated tokens (`sql`,
/// `websockets`). An app carries a field only if the event named its token.
pub const CARRY: &str = "stead-carry";
/// What this sidecar accepts in `stead-writes` besides key-value and alarm writes.
pub const CARRY_VALUE: &str = "sql, websockets";
/// The [`CARRY`] tokens.
pub const CARRY_SQL: &str = "sql";
pub const CARRY_WEBSOCKETS: &str = "websockets";

/// Peer port: the namespace's shared secret; without it (or with a wrong one) the answer is 401.
pub const PEER_TOKEN: &str = "stead-peer-token";
/// Peer port: how many sidecars forwarded this request already.
pub const HOPS: &str = "stead-hops";
/// Peer answer: the forwarding shard's ring is stale (the slot has moved).
pub const RING_STALE: &str = "stead-ring-stale";
/// The objects busy in the call chain of a request: `class/id` entries, comma separated.
pub const CHAIN: &str = "stead-chain";

/// Request and `websocket-connect` events from clients: the IP address of the client's TCP
/// connection to the ingress (kept across the peer hop between shards).
pub const CLIENT_ADDR: &str = "stead-client-addr";
/// A front-door event of a client's WebSocket handshake: `websocket` (the sidecar holds the
/// handshake; `Upgrade` and `Connection` are not passed on).
pub const UPGRADE: &str = "stead-upgrade";
/// The front door's answer to a [`UPGRADE`] event: the object route (`/objects/{class}/…/{rest}`)
/// to perform the handshake against, as if the client had asked it.
pub const UPGRADE_TO: &str = "stead-upgrade-to";

/// Alarm events: how many times this alarm has failed before (0 on the first attempt).
pub const ALARM_RETRY: &str = "stead-alarm-retry";
pub const WEBSOCKET_ID: &str = "stead-websocket-id";
pub const WEBSOCKET_KIND: &str = "stead-websocket-kind";
pub const WEBSOCKET_TAGS: &str = "stead-websocket-tags";
pub const WEBSOCKET_CLOSE_CODE: &str = "stead-websocket-close-code";
pub const WEBSOCKET_CLOSE_REASON: &str = "stead-websocket-close-reason";
pub const WEBSOCKET_ERROR: &str = "stead-websocket-error";

/// Environment variable naming the address the app listens on.
pub const ENV_APP_ADDR: &str = "STEAD_APP_ADDR";
/// Environment variable naming the base URL of the sidecar's app API.
pub const ENV_API_URL: &str = "STEAD_API_URL";
pub const DEFAULT_APP_ADDR: &str = "127.0.0.1:3000";
/// Environment variable of an app (the Rust SDK reads it) that forces its app protocol: `1`
/// (every storage operation a call) or `2` (the default where the sidecar offers it).
pub const ENV_APP_PROTOCOL: &str = "STEAD_APP_PROTOCOL";
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:9787";

/// What an event delivered to the app is about (`stead-event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// An HTTP request for an object or for the stateless front door.
    Request,
    /// The object was closed; the app drops its in-memory instance.
    Hibernate,
    /// The object's alarm is due.
    Alarm,
    /// A client asks to open a WebSocket on the object.
    WebSocketConnect,
    /// A message arrived on one of the object's WebSockets.
    WebSocketMessage,
    /// A client closed one of the object's WebSockets.
    WebSocketClose,
    /// One of the object's WebSockets failed.
    WebSocketError,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Request => "request",
            EventKind::Hibernate => "hibernate",
            EventKind::Alarm => "alarm",
            EventKind::WebSocketConnect => "websocket-connect",
            EventKind::WebSocketMessage => "websocket-message",
            EventKind::WebSocketClose => "websocket-close",
            EventKind::WebSocketError => "websocket-error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "request" => Some(EventKind::Request),
            "hibernate" => Some(EventKind::Hibernate),
            "alarm" => Some(EventKind::Alarm),
            "websocket-connect" => Some(EventKind::WebSocketConnect),
            "websocket-message" => Some(EventKind::WebSocketMessage),
            "websocket-close" => Some(EventKind::WebSocketClose),
            "websocket-error" => Some(EventKind::WebSocketError),
            _ => None,
        }
    }
}

/// Whether a header name is reserved for Stead (case-insensitive).
pub fn is_reserved_header(name: &str) -> bool {
    name.len() >= HEADER_PREFIX.len()
        && name.as_bytes()[..HEADER_PREFIX.len()].eq_ignore_ascii_case(HEADER_PREFIX.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_headers_match_case_insensitively() {
        assert!(is_reserved_header("stead-turn"));
        assert!(is_reserved_header("Stead-Object-Id"));
        assert!(!is_reserved_header("steady"));
        assert!(!is_reserved_header("x-stead-turn"));
    }

    #[test]
    fn event_kinds_round_trip() {
        for k in [
            EventKind::Request,
            EventKind::Hibernate,
            EventKind::Alarm,
            EventKind::WebSocketConnect,
            EventKind::WebSocketMessage,
            EventKind::WebSocketClose,
            EventKind::WebSocketError,
        ] {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
    }
}
