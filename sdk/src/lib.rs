//! The Rust SDK for Stead, a self-hosted Durable Objects platform.
//!
//! An app is an HTTP/1.1 server beside the Stead sidecar. The sidecar sends it *events* (HTTP
//! requests for objects, with `stead-*` headers) one at a time per object, and the app reads and
//! writes the object's storage through the sidecar's app API during the event's *turn*. This
//! crate implements both sides of that protocol (`docs/app-protocol.md`): implement
//! [`DurableObject`] for each class, register the classes on an [`App`], and serve.
//!
//! ```no_run
//! use stead_sdk::{App, DurableObject, ObjectInfo, Request, Response, Result, Turn, async_trait, response};
//!
//! struct Counter;
//!
//! #[async_trait]
//! impl DurableObject for Counter {
//!     fn new(_object: &ObjectInfo) -> Self {
//!         Counter
//!     }
//!
//!     async fn fetch(&mut self, turn: &Turn, _req: Request) -> Result<Response> {
//!         let storage = turn.storage();
//!         let n = storage.get::<i64>("n").await?.unwrap_or(0) + 1;
//!         storage.put("n", &n).await?;
//!         Ok(response::text(n.to_string()))
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<()> {
//!     App::new().class::<Counter>("Counter").serve().await
//! }
//! ```
//!
//! A turn is atomic: if `fetch` answers with a status of 500 or more, or returns an error, every
//! write it made is rolled back. (Cloudflare keeps writes made before a throw; Stead does not.)
//!
//! Objects can also wake themselves with an alarm ([`Turn::alarm`],
//! [`DurableObject::alarm`]) and hold WebSockets that survive hibernation
//! ([`Turn::websockets`], [`DurableObject::websocket_connect`] and the other `websocket_*`
//! hooks).

mod alarm;
mod app;
mod cache;
mod client;
mod error;
mod message;
mod object;
mod storage;
mod stub;
mod turn;
mod websocket;

/// Helpers that build a [`Response`].
pub mod response {
    pub use crate::message::{error, json, status, text};
    pub use crate::websocket::{
        accept as accept_websocket, accept_with_tags as accept_websocket_with_tags,
    };
}

pub use alarm::{Alarm, AlarmInfo, now_ms};
pub use app::{App, ENV_APP_PROTOCOL};
pub use error::{ApiError, Error, Result};
pub use message::{Caller, Request, RequestExt, Response, ResponseExt};
pub use object::{DurableObject, StatelessHandler};
pub use storage::{ListOptions, SqlResult, SqlValue, Storage};
pub use stub::{ObjectAddr, ObjectStub};
pub use turn::{ObjectInfo, StatelessContext, Turn};
pub use websocket::{
    MAX_ATTACHMENT_BYTES, MAX_CLOSE_REASON_BYTES, MAX_TAG_BYTES, MAX_TAGS, Message, WebSocket,
    WebSocketInfo, WebSockets,
};

pub use async_trait::async_trait;
pub use bytes::Bytes;
pub use http;
pub use stead_core;

#[cfg(test)]
mod tests;
