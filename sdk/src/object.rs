//! The traits app code implements.

use std::future::Future;

use async_trait::async_trait;

use http::StatusCode;

use crate::alarm::AlarmInfo;
use crate::error::Result;
use crate::message::{Request, Response};
use crate::turn::{ObjectInfo, StatelessContext, Turn};
use crate::websocket::{Message, WebSocketInfo};

/// A class of durable objects.
///
/// The SDK keeps one instance per object in memory: it is built with [`new`](Self::new) on
/// the first event for the object, reused for the following ones, and dropped when the sidecar
/// hibernates the object or when the object's incarnation changes (it was reopened, or its last
/// turn rolled back), so that in-memory state never drifts from storage. Events of one object
/// arrive one at a time, hence `&mut self`.
///
/// Each call of [`fetch`](Self::fetch) is a *turn*: every storage write it makes commits
/// together when it answers with a status below 500, and is rolled back together when it
/// answers 5xx, returns an `Err` (the SDK answers `500` with a JSON error body), panics, or
/// overruns the turn timeout.
///
/// The other events of an object are turns too, delivered one at a time in the same order as
/// requests: [`alarm`](Self::alarm) when the object's alarm comes due, and
/// [`websocket_connect`](Self::websocket_connect), [`websocket_message`](Self::websocket_message),
/// [`websocket_close`](Self::websocket_close) and [`websocket_error`](Self::websocket_error) for
/// the WebSockets the sidecar holds for the object. They have default implementations, so
/// implementing `fetch` alone is enough. For the hooks that answer nothing, `Ok(())` commits
/// the turn and `Err` rolls it back.
///
/// ```no_run
/// use stead_sdk::{DurableObject, ObjectInfo, Request, Response, Result, Turn, async_trait, response};
///
/// struct Greeter;
///
/// #[async_trait]
/// impl DurableObject for Greeter {
///     fn new(_object: &ObjectInfo) -> Self {
///         Greeter
///     }
///
///     async fn fetch(&mut self, turn: &Turn, _req: Request) -> Result<Response> {
///         let storage = turn.storage();
///         let greeted = storage.get::<u64>("greeted").await?.unwrap_or(0) + 1;
///         storage.put("greeted", &greeted).await?;
///         Ok(response::text(format!("hello #{greeted} from {}", turn.id())))
///     }
/// }
/// ```
#[async_trait]
pub trait DurableObject: Send + 'static {
    /// Builds the in-memory instance of an object. Runs before the object's first event, and
    /// again after a hibernation or an incarnation change. Keep it cheap and load state lazily
    /// in `fetch`, where storage is reachable.
    fn new(object: &ObjectInfo) -> Self
    where
        Self: Sized;

    /// Handles an HTTP request for this object. The path is what follows the object's address
    /// (`/objects/{class}/name/{name}`), query string included.
    async fn fetch(&mut self, turn: &Turn, req: Request) -> Result<Response>;

    /// Runs when the object's alarm comes due (see [`Turn::alarm`]). Returning `Ok` clears the
    /// alarm, unless the handler set a new one; returning `Err` (or panicking, or overrunning
    /// the turn timeout) rolls the turn back and the sidecar retries after 2 s, 4 s, 8 s…, at
    /// most 6 times, with [`AlarmInfo::retry`] counting the retries.
    ///
    /// Delivery is at least once: a handler may run again for the same alarm after a crash.
    ///
    /// The default does nothing.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use stead_sdk::{AlarmInfo, DurableObject, ObjectInfo, Request, Response, Result, Turn, async_trait, response};
    ///
    /// struct Ticker;
    ///
    /// #[async_trait]
    /// impl DurableObject for Ticker {
    ///     fn new(_: &ObjectInfo) -> Self { Ticker }
    ///
    ///     async fn fetch(&mut self, turn: &Turn, _req: Request) -> Result<Response> {
    ///         turn.alarm().set_in(Duration::from_secs(1)).await?;
    ///         Ok(response::text("ticking"))
    ///     }
    ///
    ///     async fn alarm(&mut self, turn: &Turn, _info: AlarmInfo) -> Result<()> {
    ///         let ticks = turn.storage().get::<u64>("ticks").await?.unwrap_or(0) + 1;
    ///         turn.storage().put("ticks", &ticks).await?;
    ///         turn.alarm().set_in(Duration::from_secs(1)).await?; // keep ticking
    ///         Ok(())
    ///     }
    /// }
    /// ```
    async fn alarm(&mut self, turn: &Turn, info: AlarmInfo) -> Result<()> {
        let _ = (turn, info);
        Ok(())
    }

    /// A client asks to open a WebSocket on one of the object's routes. `req` is the client's
    /// `GET` with its path (after the object's address), query and headers. A 2xx answer
    /// accepts the socket ([`response::accept_websocket`](crate::response::accept_websocket),
    /// or [`response::accept_websocket_with_tags`](crate::response::accept_websocket_with_tags)
    /// to tag it); any other status refuses the handshake, and the client gets that status and
    /// body.
    ///
    /// The turn can already use socket `ws.id`: set its attachment, send it a welcome; what is
    /// sent leaves once the turn commits.
    ///
    /// The default refuses with `400 no_websockets`.
    ///
    /// ```no_run
    /// use stead_sdk::{DurableObject, Message, ObjectInfo, Request, RequestExt, Response, Result, Turn, WebSocketInfo, async_trait, response};
    ///
    /// struct Echo;
    ///
    /// #[async_trait]
    /// impl DurableObject for Echo {
    ///     fn new(_: &ObjectInfo) -> Self { Echo }
    ///
    ///     async fn fetch(&mut self, _turn: &Turn, _req: Request) -> Result<Response> {
    ///         Ok(response::text("connect a WebSocket to /ws"))
    ///     }
    ///
    ///     async fn websocket_connect(&mut self, turn: &Turn, req: Request, ws: WebSocketInfo) -> Result<Response> {
    ///         let name = req.query_param("name").unwrap_or_else(|| "anonymous".into());
    ///         turn.websockets().set_attachment(&ws.id, &name).await?;
    ///         response::accept_websocket_with_tags(&["echo"])
    ///     }
    ///
    ///     async fn websocket_message(&mut self, turn: &Turn, ws_id: &str, msg: Message) -> Result<()> {
    ///         turn.websockets().send(ws_id, msg).await?;
    ///         Ok(())
    ///     }
    /// }
    /// ```
    async fn websocket_connect(
        &mut self,
        turn: &Turn,
        req: Request,
        ws: WebSocketInfo,
    ) -> Result<Response> {
        let _ = (turn, req, ws);
        Ok(crate::message::error_response(
            StatusCode::BAD_REQUEST,
            "no_websockets",
            "this object does not accept WebSockets",
        ))
    }

    /// A message arrived on socket `ws_id`. Reply with
    /// [`turn.websockets()`](Turn::websockets): `send`, `broadcast`….
    ///
    /// The default ignores it.
    async fn websocket_message(&mut self, turn: &Turn, ws_id: &str, msg: Message) -> Result<()> {
        let _ = (turn, ws_id, msg);
        Ok(())
    }

    /// The client closed socket `ws_id` with `code` (1005 if it gave none) and `reason`.
    ///
    /// The default does nothing.
    async fn websocket_close(
        &mut self,
        turn: &Turn,
        ws_id: &str,
        code: u16,
        reason: String,
    ) -> Result<()> {
        let _ = (turn, ws_id, code, reason);
        Ok(())
    }

    /// Socket `ws_id` failed (the connection broke, or a protocol error); `error` says how.
    ///
    /// The default does nothing.
    async fn websocket_error(&mut self, turn: &Turn, ws_id: &str, error: String) -> Result<()> {
        let _ = (turn, ws_id, error);
        Ok(())
    }
}

/// The handler of stateless requests: the app's front door, for client requests outside
/// `/objects/`. Any `async fn(Request, StatelessContext) -> Response` is one.
///
/// Stateless requests run concurrently and own no storage.
#[async_trait]
pub trait StatelessHandler: Send + Sync + 'static {
    /// Answers one stateless request.
    async fn handle(&self, req: Request, ctx: StatelessContext) -> Response;
}

#[async_trait]
impl<F, Fut> StatelessHandler for F
where
    F: Fn(Request, StatelessContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    async fn handle(&self, req: Request, ctx: StatelessContext) -> Response {
        (self)(req, ctx).await
    }
}
