//! The traits app code implements.

use std::future::Future;

use async_trait::async_trait;

use crate::error::Result;
use crate::message::{Request, Response};
use crate::turn::{ObjectInfo, StatelessContext, Turn};

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
/// Hooks for alarms and hibernatable WebSockets will be added to this trait as default
/// methods, so implementing `fetch` alone stays enough.
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
