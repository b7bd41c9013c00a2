//! What an event handler knows about its turn.

use std::sync::Arc;

use http::HeaderValue;

use crate::alarm::Alarm;
use crate::cache::TurnCache;
use crate::client::ApiClient;
use crate::storage::Storage;
use crate::stub::{ObjectAddr, ObjectStub};
use crate::websocket::WebSockets;

/// Which object an instance or a turn is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectInfo {
    /// The class, e.g. `Counter`.
    pub class: String,
    /// The object id: 64 lowercase hex characters.
    pub id: String,
    /// The name the object was addressed by, decoded; `None` when it was addressed by id.
    ///
    /// An object addressed once by name and once by id is the same object (the id of a named
    /// object is derived from its name), so do not rely on the name being present.
    pub name: Option<String>,
}

/// One event being handled for an object: its identity and its storage.
///
/// Everything done through the turn's [`Storage`] is one transaction that commits when the
/// answer has a status below 500 (and no `stead-rollback` header), and rolls back otherwise.
pub struct Turn {
    object: Arc<ObjectInfo>,
    token: HeaderValue,
    storage: Storage,
    api: ApiClient,
    /// Protocol 2: the instance's cache and this turn's buffered writes.
    cache: Option<TurnCache>,
}

impl Turn {
    /// A turn of protocol 1: every storage operation is a call.
    #[cfg(test)]
    pub(crate) fn new(object: Arc<ObjectInfo>, token: HeaderValue, api: ApiClient) -> Self {
        Self::with_cache(object, token, api, None)
    }

    /// A turn whose storage answers from `cache` and buffers its writes there when it is
    /// `Some` (protocol 2).
    pub(crate) fn with_cache(
        object: Arc<ObjectInfo>,
        token: HeaderValue,
        api: ApiClient,
        cache: Option<TurnCache>,
    ) -> Self {
        let storage = Storage::with_cache(api.clone(), token.clone(), cache.clone());
        Self {
            object,
            token,
            storage,
            api,
            cache,
        }
    }

    /// The object's class.
    pub fn class(&self) -> &str {
        &self.object.class
    }

    /// The object's id, 64 lowercase hex characters.
    pub fn id(&self) -> &str {
        &self.object.id
    }

    /// The name the object was addressed by in this request, if it was addressed by name.
    pub fn name(&self) -> Option<&str> {
        self.object.name.as_deref()
    }

    /// Class, id and name together.
    pub fn object(&self) -> &ObjectInfo {
        &self.object
    }

    /// The turn token (`stead-turn`), for calling the app API by hand.
    pub fn token(&self) -> &str {
        self.token.to_str().unwrap_or_default()
    }

    pub(crate) fn token_value(&self) -> &HeaderValue {
        &self.token
    }

    /// The object's storage, bound to this turn. Cheap: a clone of a handle.
    pub fn storage(&self) -> Storage {
        self.storage.clone()
    }

    /// The object's alarm, bound to this turn: setting and deleting it are part of the turn's
    /// transaction.
    ///
    /// ```no_run
    /// # async fn f(turn: &stead_sdk::Turn) -> stead_sdk::Result<()> {
    /// turn.alarm().set_in(std::time::Duration::from_secs(30)).await?;
    /// # Ok(()) }
    /// ```
    pub fn alarm(&self) -> Alarm {
        Alarm::new(self.api.clone(), self.token.clone(), self.cache.clone())
    }

    /// The object's open WebSockets, bound to this turn: what is sent leaves once the turn
    /// commits.
    ///
    /// ```no_run
    /// # async fn f(turn: &stead_sdk::Turn) -> stead_sdk::Result<()> {
    /// let sent = turn.websockets().broadcast_all("tick").await?;
    /// # let _ = sent;
    /// # Ok(()) }
    /// ```
    pub fn websockets(&self) -> WebSockets {
        WebSockets::new(self.api.clone(), self.token.clone(), self.cache.clone())
    }

    /// A handle on the object of class `class` at `addr`, for calling it during this turn.
    /// Its answers are its own turn's: they commit or roll back apart from this one.
    ///
    /// ```no_run
    /// # async fn f(turn: &stead_sdk::Turn) -> stead_sdk::Result<()> {
    /// use stead_sdk::ObjectAddr;
    /// let res = turn.stub("Counter", ObjectAddr::name("b")).post("/increment", "").await?;
    /// assert!(res.status().is_success());
    /// # Ok(()) }
    /// ```
    pub fn stub(&self, class: &str, addr: ObjectAddr) -> ObjectStub {
        ObjectStub::new(self.api.clone(), self.token.clone(), class, addr)
    }
}

/// What a stateless (front-door) request handler gets besides the request.
///
/// Stateless requests are client requests outside `/objects/`. They run concurrently and own
/// no storage, but they can call objects.
#[derive(Clone)]
pub struct StatelessContext {
    token: HeaderValue,
    api: ApiClient,
}

impl StatelessContext {
    pub(crate) fn new(token: HeaderValue, api: ApiClient) -> Self {
        Self { token, api }
    }

    /// The request's turn token (`stead-turn`), for calling the app API by hand.
    pub fn token(&self) -> &str {
        self.token.to_str().unwrap_or_default()
    }

    /// A handle on the object of class `class` at `addr`, for calling it during this request.
    ///
    /// ```no_run
    /// use stead_sdk::{ObjectAddr, Request, Response, StatelessContext, response};
    /// use stead_sdk::http::StatusCode;
    ///
    /// async fn front_door(_req: Request, ctx: StatelessContext) -> Response {
    ///     match ctx.stub("Counter", ObjectAddr::name("home")).get("/value").await {
    ///         Ok(res) => res,
    ///         Err(e) => response::error(StatusCode::BAD_GATEWAY, e.code(), &e.to_string()),
    ///     }
    /// }
    /// ```
    pub fn stub(&self, class: &str, addr: ObjectAddr) -> ObjectStub {
        ObjectStub::new(self.api.clone(), self.token.clone(), class, addr)
    }
}
