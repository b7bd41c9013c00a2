//! The app server: receives events from the sidecar and dispatches them to objects.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use percent_encoding::percent_decode_str;
use stead_core::ObjectId;
use stead_core::protocol::{self, EventKind};
use tokio::net::TcpListener;

use crate::alarm::AlarmInfo;
use crate::cache::{Carry, EagerState, ObjectCache, TurnCache};
use crate::client::ApiClient;
use crate::error::{Error, Result};
use crate::message::{Request, Response, error_response};
use crate::object::{DurableObject, StatelessHandler};
use crate::turn::{ObjectInfo, StatelessContext, Turn};
use crate::websocket::{Message, WebSocketInfo};

/// An object event, decoded from its headers and body, ready for its hook.
enum ObjectEvent {
    Request(Request),
    Alarm(AlarmInfo),
    Connect(Request, WebSocketInfo),
    Message(String, Message),
    Close(String, u16, String),
    Error(String, String),
}

impl ObjectEvent {
    fn name(&self) -> &'static str {
        match self {
            ObjectEvent::Request(_) => "fetch",
            ObjectEvent::Alarm(_) => "alarm",
            ObjectEvent::Connect(..) => "websocket_connect",
            ObjectEvent::Message(..) => "websocket_message",
            ObjectEvent::Close(..) => "websocket_close",
            ObjectEvent::Error(..) => "websocket_error",
        }
    }

    /// Decodes the event of kind `kind` (an object event other than `hibernate`).
    fn decode(kind: EventKind, req: Request) -> Result<Self, Reject> {
        let headers = req.headers();
        let socket_id = |headers: &HeaderMap| -> Result<String, Reject> {
            match header(headers, protocol::WEBSOCKET_ID)? {
                Some(id) if !id.is_empty() => Ok(id.to_owned()),
                _ => Err(bad_request(format!(
                    "a WebSocket event needs a {} header",
                    protocol::WEBSOCKET_ID
                ))),
            }
        };
        Ok(match kind {
            EventKind::Request | EventKind::Hibernate => ObjectEvent::Request(req),
            EventKind::Alarm => {
                let retry = match header(headers, protocol::ALARM_RETRY)? {
                    None => 0,
                    Some(v) => v.parse().map_err(|_| {
                        bad_request(format!(
                            "{} must be a whole number, not {v:?}",
                            protocol::ALARM_RETRY
                        ))
                    })?,
                };
                ObjectEvent::Alarm(AlarmInfo::new(retry))
            }
            EventKind::WebSocketConnect => {
                let ws = WebSocketInfo::new(socket_id(headers)?);
                ObjectEvent::Connect(req, ws)
            }
            EventKind::WebSocketMessage => {
                let id = socket_id(headers)?;
                let msg = match header(headers, protocol::WEBSOCKET_KIND)? {
                    None | Some("text") => {
                        let body = req.into_body();
                        match String::from_utf8(body.to_vec()) {
                            Ok(text) => Message::Text(text),
                            Err(_) => return Err(bad_request("a text message is not UTF-8")),
                        }
                    }
                    Some("binary") => Message::Binary(req.into_body()),
                    Some(other) => {
                        return Err(bad_request(format!(
                            "{} must be text or binary, not {other:?}",
                            protocol::WEBSOCKET_KIND
                        )));
                    }
                };
                ObjectEvent::Message(id, msg)
            }
            EventKind::WebSocketClose => {
                let id = socket_id(headers)?;
                let code = match header(headers, protocol::WEBSOCKET_CLOSE_CODE)? {
                    None | Some("") => 1005,
                    Some(v) => v.parse().map_err(|_| {
                        bad_request(format!(
                            "{} must be a number, not {v:?}",
                            protocol::WEBSOCKET_CLOSE_CODE
                        ))
                    })?,
                };
                let reason = decoded(header(headers, protocol::WEBSOCKET_CLOSE_REASON)?);
                ObjectEvent::Close(id, code, reason)
            }
            EventKind::WebSocketError => {
                let id = socket_id(headers)?;
                let error = decoded(header(headers, protocol::WEBSOCKET_ERROR)?);
                ObjectEvent::Error(id, error)
            }
        })
    }

    /// Runs the event's hook. Hooks that answer nothing answer `200` with an empty body.
    async fn run(self, object: &mut dyn DurableObject, turn: &Turn) -> Result<Response> {
        let done = |r: Result<()>| r.map(|()| crate::message::status(StatusCode::OK));
        match self {
            ObjectEvent::Request(req) => object.fetch(turn, req).await,
            ObjectEvent::Alarm(info) => done(object.alarm(turn, info).await),
            ObjectEvent::Connect(req, ws) => object.websocket_connect(turn, req, ws).await,
            ObjectEvent::Message(id, msg) => done(object.websocket_message(turn, &id, msg).await),
            ObjectEvent::Close(id, code, reason) => {
                done(object.websocket_close(turn, &id, code, reason).await)
            }
            ObjectEvent::Error(id, error) => done(object.websocket_error(turn, &id, error).await),
        }
    }
}

/// A percent-encoded header value, decoded (invalid UTF-8 replaced); empty if absent.
fn decoded(raw: Option<&str>) -> String {
    raw.map(|r| percent_decode_str(r).decode_utf8_lossy().into_owned())
        .unwrap_or_default()
}

type Factory = Box<dyn Fn(&ObjectInfo) -> Box<dyn DurableObject> + Send + Sync>;

/// The in-memory instance of one object for one incarnation. The mutex keeps the object's events
/// one at a time.
type Instance = Arc<tokio::sync::Mutex<InstanceSlot>>;

#[derive(Default)]
struct InstanceSlot {
    /// `None` until the first event builds it (and again after a panic in a hook).
    object: Option<Box<dyn DurableObject>>,
    /// What the instance knows of its storage (protocol 2). A new object starts a new cache.
    cache: Arc<Mutex<ObjectCache>>,
}

struct Entry {
    incarnation: Option<String>,
    instance: Instance,
}

struct Class {
    factory: Factory,
    /// Object id → its instance. A `std` mutex: it is held only to look up, insert or remove.
    instances: Mutex<HashMap<String, Entry>>,
}

impl Class {
    /// The instance of object `id` under `incarnation`. When the incarnation differs from the
    /// one the cached instance was built under, the cached one is forgotten (an event still
    /// running on it keeps it until it ends) and a fresh, empty one takes its place.
    fn instance(&self, info: &ObjectInfo, incarnation: Option<String>) -> Instance {
        let mut map = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get(&info.id) {
            if entry.incarnation == incarnation {
                return Arc::clone(&entry.instance);
            }
            tracing::debug!(class = %info.class, id = %info.id, "new incarnation; rebuilding the instance");
        }
        let instance = Instance::default();
        map.insert(
            info.id.clone(),
            Entry {
                incarnation,
                instance: Arc::clone(&instance),
            },
        );
        instance
    }

    fn drop_instance(&self, id: &str) -> bool {
        let mut map = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(id).is_some()
    }
}

struct Shared {
    classes: HashMap<String, Arc<Class>>,
    stateless: Option<Arc<dyn StatelessHandler>>,
    api: ApiClient,
    /// The highest app protocol this app speaks: 1 or 2.
    protocol: u32,
}

/// Environment variable that forces the app protocol: `1` makes an app speak protocol 1 (every
/// storage operation a call, no cache), whatever [`App::protocol`] says.
pub use stead_core::protocol::ENV_APP_PROTOCOL;

/// An app: the classes it serves and its stateless front door.
///
/// ```no_run
/// use stead_sdk::{App, DurableObject, ObjectInfo, Request, Response, Result, StatelessContext, Turn, async_trait, response};
///
/// struct Room;
///
/// #[async_trait]
/// impl DurableObject for Room {
///     fn new(_: &ObjectInfo) -> Self { Room }
///     async fn fetch(&mut self, _turn: &Turn, _req: Request) -> Result<Response> {
///         Ok(response::text("a room"))
///     }
/// }
///
/// async fn front_door(_req: Request, _ctx: StatelessContext) -> Response {
///     response::text("try /objects/Room/name/lobby/")
/// }
///
/// #[tokio::main]
/// async fn main() -> stead_sdk::Result<()> {
///     App::new().class::<Room>("Room").stateless(front_door).serve().await
/// }
/// ```
pub struct App {
    classes: HashMap<String, Arc<Class>>,
    stateless: Option<Arc<dyn StatelessHandler>>,
    api_url: Option<String>,
    protocol: u32,
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    /// An app serving no class yet.
    pub fn new() -> Self {
        Self {
            classes: HashMap::new(),
            stateless: None,
            api_url: None,
            protocol: 2,
        }
    }

    /// Serves the class `name` with `O`, whose instances are built with [`DurableObject::new`].
    pub fn class<O: DurableObject>(self, name: &str) -> Self {
        self.class_with(name, O::new)
    }

    /// Serves the class `name` with instances built by `factory`, e.g. to hand them shared
    /// configuration.
    pub fn class_with<O, F>(mut self, name: &str, factory: F) -> Self
    where
        O: DurableObject,
        F: Fn(&ObjectInfo) -> O + Send + Sync + 'static,
    {
        let factory: Factory = Box::new(move |info| Box::new(factory(info)));
        self.classes.insert(
            name.to_owned(),
            Arc::new(Class {
                factory,
                instances: Mutex::new(HashMap::new()),
            }),
        );
        self
    }

    /// Answers stateless requests (those outside `/objects/`) with `handler`. Without one they
    /// get `404`.
    pub fn stateless<H: StatelessHandler>(mut self, handler: H) -> Self {
        self.stateless = Some(Arc::new(handler));
        self
    }

    /// The highest app protocol to speak: `2` (the default) answers a sidecar that offers
    /// protocol 2 with it — storage reads are cached per object instance and writes travel with
    /// the answer —, `1` keeps every storage operation a call of the app API. The environment
    /// variable `STEAD_APP_PROTOCOL=1` forces `1` as well. Other values are read as the nearest
    /// of the two.
    ///
    /// ```no_run
    /// # async fn f() -> stead_sdk::Result<()> {
    /// stead_sdk::App::new().protocol(1).serve().await
    /// # }
    /// ```
    pub fn protocol(mut self, version: u32) -> Self {
        self.protocol = version.clamp(1, 2);
        self
    }

    /// Uses this app API base URL instead of `STEAD_API_URL`.
    pub fn api_url(mut self, url: impl Into<String>) -> Self {
        self.api_url = Some(url.into());
        self
    }

    /// Listens on `STEAD_APP_ADDR` (default `127.0.0.1:3000`; `unix:/path` for a Unix domain
    /// socket, as the sidecar's `--app unix:/path` expects) and serves until SIGINT or SIGTERM,
    /// then finishes the events in flight.
    pub async fn serve(self) -> Result<()> {
        // A bad setting is reported before anything listens.
        protocol_from_env(self.protocol)?;
        let addr = env_or(protocol::ENV_APP_ADDR, protocol::DEFAULT_APP_ADDR);
        #[cfg(unix)]
        if let Some(path) = addr.strip_prefix(UNIX_PREFIX) {
            let listener = bind_unix(std::path::Path::new(path)).await?;
            tracing::info!(%addr, "stead app listening");
            return self
                .serve_unix_with_shutdown(listener, shutdown_signal())
                .await;
        }
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::msg(format!("cannot listen on {addr}: {e}")))?;
        tracing::info!(%addr, "stead app listening");
        self.serve_with_shutdown(listener, shutdown_signal()).await
    }

    /// Serves on `listener` forever.
    pub async fn serve_on(self, listener: TcpListener) -> Result<()> {
        self.serve_with_shutdown(listener, std::future::pending())
            .await
    }

    /// Serves on `listener` until `signal` completes, then finishes the events in flight.
    pub async fn serve_with_shutdown<S>(self, listener: TcpListener, signal: S) -> Result<()>
    where
        S: Future<Output = ()> + Send + 'static,
    {
        use axum::serve::ListenerExt;
        let router = self.into_router()?;
        // Answers are small and the sidecar waits for each: do not let Nagle delay them.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(listener, router)
            .with_graceful_shutdown(signal)
            .await?;
        Ok(())
    }

    /// Serves on the Unix domain socket `listener` until `signal` completes, then finishes the
    /// events in flight.
    #[cfg(unix)]
    pub async fn serve_unix_with_shutdown<S>(
        self,
        listener: tokio::net::UnixListener,
        signal: S,
    ) -> Result<()>
    where
        S: Future<Output = ()> + Send + 'static,
    {
        let router = self.into_router()?;
        axum::serve(listener, router)
            .with_graceful_shutdown(signal)
            .await?;
        Ok(())
    }

    fn into_router(self) -> Result<axum::Router> {
        let api_url = match self.api_url {
            Some(url) => url,
            None => env_or(protocol::ENV_API_URL, protocol::DEFAULT_API_URL),
        };
        let protocol = protocol_from_env(self.protocol)?;
        let shared = Arc::new(Shared {
            classes: self.classes,
            stateless: self.stateless,
            api: ApiClient::new(&api_url)?,
            protocol,
        });
        Ok(axum::Router::new().fallback(handle).with_state(shared))
    }
}

/// `STEAD_APP_ADDR` of a Unix domain socket: `unix:/path`.
const UNIX_PREFIX: &str = "unix:";

/// Binds a Unix domain socket at `path`, replacing a socket file left by an earlier run (never
/// another kind of file).
#[cfg(unix)]
pub(crate) async fn bind_unix(path: &std::path::Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt as _;
    let cannot =
        |e: std::io::Error| Error::msg(format!("cannot listen on unix:{}: {e}", path.display()));
    if let Ok(meta) = tokio::fs::symlink_metadata(path).await
        && meta.file_type().is_socket()
    {
        tokio::fs::remove_file(path).await.map_err(cannot)?;
    }
    tokio::net::UnixListener::bind(path).map_err(cannot)
}

/// The protocol to speak: `STEAD_APP_PROTOCOL=1` forces 1; unset, empty or `2` leaves `code`.
fn protocol_from_env(code: u32) -> Result<u32> {
    match std::env::var(ENV_APP_PROTOCOL)
        .ok()
        .as_deref()
        .map(str::trim)
    {
        None | Some("") | Some("2") => Ok(code),
        Some("1") => Ok(1),
        Some(other) => Err(Error::msg(format!(
            "{ENV_APP_PROTOCOL} must be 1 or 2, not {other:?}"
        ))),
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let res = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => dispatch(&shared, Request::from_parts(parts, body)).await,
        Err(e) => bad_request(format!("cannot read the request body: {e}")).into_response(),
    };
    res.map(axum::body::Body::from)
}

/// An event the SDK answers itself, with a JSON error.
struct Reject {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Reject {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn into_response(self) -> Response {
        error_response(self.status, self.code, &self.message)
    }
}

fn bad_request(message: impl Into<String>) -> Reject {
    Reject::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// A `stead-*` header as a string; `Err` if present but not visible ASCII.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Reject> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| bad_request(format!("header {name} is not visible ASCII"))),
    }
}

async fn dispatch(shared: &Arc<Shared>, req: Request) -> Response {
    route(shared, req)
        .await
        .unwrap_or_else(Reject::into_response)
}

async fn route(shared: &Arc<Shared>, req: Request) -> Result<Response, Reject> {
    let headers = req.headers();
    let Some(event) = header(headers, protocol::EVENT)? else {
        return Err(bad_request(
            "this is a Stead app: it answers events from the Stead sidecar, which carry a stead-event header",
        ));
    };
    let Some(kind) = EventKind::parse(event) else {
        return Err(Reject::new(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported_event",
            format!("this app does not handle {event:?} events"),
        ));
    };
    let class = header(headers, protocol::CLASS)?.map(str::to_owned);
    match (kind, class) {
        (EventKind::Hibernate, None) => Ok(crate::message::status(StatusCode::OK)),
        (EventKind::Hibernate, Some(class)) => {
            let id = header(headers, protocol::OBJECT_ID)?;
            let dropped = match (shared.classes.get(&class), id) {
                (Some(c), Some(id)) => c.drop_instance(id),
                _ => false,
            };
            if dropped {
                tracing::debug!(%class, id, "instance dropped on hibernate");
            }
            Ok(crate::message::status(StatusCode::OK))
        }
        (EventKind::Request, None) => stateless(shared, req).await,
        (_, None) => Err(bad_request(format!(
            "a {event} event is for an object and needs a stead-class header"
        ))),
        (kind, Some(class)) => object_event(shared, class, kind, req).await,
    }
}

fn turn_token(headers: &HeaderMap) -> Result<HeaderValue, Reject> {
    match headers.get(protocol::TURN) {
        Some(v) if v.to_str().is_ok() => Ok(v.clone()),
        Some(_) => Err(bad_request("header stead-turn is not visible ASCII")),
        None => Err(bad_request("an event needs a stead-turn header")),
    }
}

async fn stateless(shared: &Arc<Shared>, req: Request) -> Result<Response, Reject> {
    let Some(handler) = shared.stateless.clone() else {
        return Err(Reject::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this app has no stateless front door; objects are under /objects/{class}/",
        ));
    };
    let ctx = StatelessContext::new(turn_token(req.headers())?, shared.api.clone());
    let task = tokio::spawn(async move { handler.handle(req, ctx).await });
    match task.await {
        Ok(res) => Ok(res),
        Err(e) => {
            tracing::error!(error = %e, "stateless handler panicked");
            Err(Reject::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "app_panic",
                "the stateless handler panicked",
            ))
        }
    }
}

async fn object_event(
    shared: &Arc<Shared>,
    class_name: String,
    kind: EventKind,
    req: Request,
) -> Result<Response, Reject> {
    let headers = req.headers();
    let Some(class) = shared.classes.get(&class_name) else {
        return Err(Reject::new(
            StatusCode::NOT_FOUND,
            "unknown_class",
            format!("this app serves no class {class_name:?}"),
        ));
    };
    let Some(id) = header(headers, protocol::OBJECT_ID)? else {
        return Err(bad_request(
            "an object event needs a stead-object-id header",
        ));
    };
    if ObjectId::parse(id).is_err() {
        return Err(bad_request(
            "stead-object-id must be 64 lowercase hex characters",
        ));
    }
    let name = match header(headers, protocol::OBJECT_NAME)? {
        None => None,
        Some(raw) => Some(
            percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| bad_request("stead-object-name is not percent-encoded UTF-8"))?
                .into_owned(),
        ),
    };
    let incarnation = header(headers, protocol::INCARNATION)?.map(str::to_owned);
    let token = turn_token(headers)?;
    let offered = header(headers, protocol::PROTOCOL)?
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(1);
    let v2 = shared.protocol >= 2 && offered >= 2;
    // What the answer may carry besides key-value and alarm writes (a header that is not
    // visible ASCII names nothing).
    let carry = Carry::parse(header(headers, protocol::CARRY).ok().flatten());
    let head = req.method() == Method::HEAD;
    let info = Arc::new(ObjectInfo {
        class: class_name,
        id: id.to_owned(),
        name,
    });
    let (req, state) = split_state(req)?;
    let event = ObjectEvent::decode(kind, req)?;
    let hook = event.name();
    let instance = class.instance(&info, incarnation);

    let task = {
        let api = shared.api.clone();
        let class = Arc::clone(class);
        let info = Arc::clone(&info);
        tokio::spawn(async move {
            let mut slot = instance.lock_owned().await;
            // Taken out while the hook runs: if it panics, the half-updated object is dropped
            // with it and the next event builds a new one, with a new cache.
            let mut object = match slot.object.take() {
                Some(object) => object,
                None => {
                    slot.cache = Arc::default();
                    (class.factory)(&info)
                }
            };
            let turn_cache = {
                let mut cache = crate::cache::lock(&slot.cache);
                match (v2, state) {
                    (true, Some((entries, alarm))) => cache.load_state(entries, alarm),
                    (true, None) => {}
                    // A turn of protocol 1 writes behind the cache's back.
                    (false, _) => cache.forget(),
                }
                drop(cache);
                v2.then(|| TurnCache::begin(&slot.cache, kind == EventKind::Alarm, carry))
            };
            let mut ending = TurnEnding(turn_cache.clone());
            let turn = Turn::with_cache(info, token, api.clone(), turn_cache);
            let result = event.run(object.as_mut(), &turn).await;
            slot.object = Some(object);
            let res = match result {
                Ok(res) => res,
                Err(e) => {
                    tracing::warn!(class = %turn.class(), id = %turn.id(), error = %e, "{hook} failed; the turn rolls back");
                    e.to_fetch_response()
                }
            };
            match ending.0.take() {
                Some(cache) => answer_v2(&api, turn.token_value(), &cache, res, head).await,
                None => res,
            }
        })
    };

    match task.await {
        Ok(res) => Ok(res),
        Err(e) => {
            tracing::error!(class = %info.class, id = %info.id, error = %e, "{hook} panicked; the turn rolls back");
            Err(Reject::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "app_panic",
                format!("the object's {hook} panicked"),
            ))
        }
    }
}

/// Ends a protocol-2 turn that never reached its answer (its hook panicked): its buffered
/// writes are dropped and its handles closed.
struct TurnEnding(Option<TurnCache>);

impl Drop for TurnEnding {
    fn drop(&mut self) {
        if let Some(cache) = self.0.take() {
            cache.lock().finish(cache.id(), false);
        }
    }
}

/// Splits the eager state (`stead-state: N`, the first N bytes of the body) off an event.
#[allow(clippy::type_complexity)]
fn split_state(
    req: Request,
) -> Result<(Request, Option<(Vec<(String, Bytes)>, Option<i64>)>), Reject> {
    let Some(raw) = header(req.headers(), protocol::STATE)? else {
        return Ok((req, None));
    };
    let n: usize = raw.trim().parse().map_err(|_| {
        bad_request(format!(
            "{} must be a byte count, not {raw:?}",
            protocol::STATE
        ))
    })?;
    let (mut parts, body) = req.into_parts();
    if n > body.len() {
        return Err(bad_request(format!(
            "{} says {n} bytes but the body has {}",
            protocol::STATE,
            body.len()
        )));
    }
    let state = EagerState::parse(&body[..n]).map_err(|e| {
        bad_request(format!(
            "the first {n} bytes of the body ({}) are not the object's state: {e}",
            protocol::STATE
        ))
    })?;
    parts.headers.remove(protocol::STATE);
    Ok((Request::from_parts(parts, body.slice(n..)), Some(state)))
}

/// Largest answer body that carries the turn's writes in front of it; a larger one is sent
/// after the writes were applied with calls, so that the two together stay well inside the
/// sidecar's answer limit (32 MiB by default).
const MAX_CARRYING_BODY: usize = 16 << 20;

/// Ends a protocol-2 turn: marks the answer `stead-protocol: 2` and, when it commits, puts the
/// turn's unsent writes, SQL statements and socket operations in front of its body
/// (`stead-writes`). Answers that cannot carry a body (to `HEAD`, `204`, `304`) or are very
/// large get them applied with calls first, in the same order; if that fails the answer becomes
/// a 500, which rolls the turn back.
async fn answer_v2(
    api: &ApiClient,
    token: &HeaderValue,
    cache: &TurnCache,
    res: Response,
    head: bool,
) -> Response {
    let commits = res.status().as_u16() < 500 && !res.headers().contains_key(protocol::ROLLBACK);
    let writes = cache.lock().finish(cache.id(), commits);
    let (mut parts, body) = res.into_parts();
    parts.headers.insert(
        protocol::PROTOCOL,
        HeaderValue::from_static(protocol::PROTOCOL_VERSION),
    );
    let Some(writes) = writes.filter(|w| !w.is_empty()) else {
        return Response::from_parts(parts, body);
    };
    let bodiless = head
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED
        || parts.status.is_informational();
    if bodiless || body.len() > MAX_CARRYING_BODY {
        if let Err(e) = crate::storage::send_writes(api, token, &writes).await {
            tracing::warn!(error = %e, "the turn's writes could not be sent; the turn rolls back");
            let mut res = e.to_fetch_response();
            res.headers_mut().insert(
                protocol::PROTOCOL,
                HeaderValue::from_static(protocol::PROTOCOL_VERSION),
            );
            return res;
        }
        return Response::from_parts(parts, body);
    }
    let json = writes.to_json();
    parts
        .headers
        .insert(protocol::WRITES, HeaderValue::from(json.len()));
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let mut carried = Vec::with_capacity(json.len() + body.len());
    carried.extend_from_slice(&json);
    carried.extend_from_slice(&body);
    Response::from_parts(parts, Bytes::from(carried))
}
