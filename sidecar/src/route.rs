//! Where an object request goes: to this shard's object host when this shard owns the object's
//! slot, otherwise one hop to the owner the ring names.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use stead_core::protocol;

use crate::app::clean_headers;
use crate::body::{read_body, refuse_declared_length};
use crate::chain::{CallChain, MAX_DEPTH};
use crate::error::ApiError;
use crate::forward::PeerClient;
use crate::host::Host;
use crate::membership::Membership;
use crate::metrics::{ForwardLabels, Metrics};
use crate::object::ObjectRef;
use crate::ownership::Ownership;
use crate::websocket::connection::{self, is_upgrade};
use crate::websocket::registry::Sockets;

/// Most sidecars a request may pass through: the router's hop, and one more from a shard that
/// handed the slot away. More is a routing loop.
pub const MAX_HOPS: u32 = 2;

pub struct ObjectRouter {
    pub classes: HashSet<String>,
    pub slots: u32,
    pub max_request_bytes: usize,
    /// How long a request body may pause before it is refused with 408.
    pub body_timeout: std::time::Duration,
    pub host: Arc<Host>,
    pub ownership: Ownership,
    pub membership: Arc<dyn Membership>,
    pub peers: PeerClient,
    pub metrics: Metrics,
    pub sockets: Arc<Sockets>,
}

impl ObjectRouter {
    pub fn knows_class(&self, class: &str) -> bool {
        self.classes.contains(class)
    }

    /// Serves or forwards a request for `object`. `req` carries the full object path
    /// (`/objects/…`), `rest` the path the app sees; `hops` counts the sidecars it came through.
    pub async fn object(
        &self,
        object: ObjectRef,
        rest: String,
        req: Request,
        chain: CallChain,
        hops: u32,
    ) -> Response {
        // Refused here, before the body is read or streamed to another shard.
        if let Err(e) = refuse_declared_length(req.body(), self.max_request_bytes) {
            return e.into_response();
        }
        if self.ownership.owns(object.slot) {
            return self.local(object, rest, req, chain).await;
        }
        let ring = self.membership.ring();
        let owner = ring.owner(object.slot);
        if owner == self.membership.me() {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "slot_unavailable",
                format!(
                    "slot {} is assigned to this shard but not yet handed over; retry",
                    object.slot
                ),
            )
            .into_response();
        }
        if hops >= MAX_HOPS {
            return ApiError::new(
                StatusCode::LOOP_DETECTED,
                "forward_loop",
                format!(
                    "slot {} was forwarded {hops} times without reaching its owner",
                    object.slot
                ),
            )
            .into_response();
        }
        let reason = if hops == 0 { "not_owner" } else { "stale_ring" };
        self.metrics
            .forwards
            .get_or_create(&ForwardLabels { reason })
            .inc();
        let Some(addr) = self.membership.peer_addr(owner) else {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shard_unavailable",
                format!("no address known for shard {owner}"),
            )
            .into_response();
        };
        if is_upgrade(&req) {
            return match self.peers.tunnel(owner, &addr, req, hops + 1).await {
                Ok(resp) => resp,
                Err(e) => {
                    self.metrics.peer_errors.inc();
                    tracing::warn!(error = ?e, "tunnel failed");
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "shard_unavailable",
                        e.to_string(),
                    )
                    .into_response()
                }
            };
        }
        match self.peers.send(owner, &addr, req, &chain, hops + 1).await {
            Ok(mut resp) => {
                if resp.headers().contains_key(protocol::RING_STALE) {
                    tracing::info!(slot = %object.slot, owner, "the owner the ring names forwarded onwards: ring is stale");
                }
                clean_headers(resp.headers_mut(), true);
                if hops > 0 {
                    // Tell the router that sent this here that its ring is out of date.
                    resp.headers_mut()
                        .insert(protocol::RING_STALE, http::HeaderValue::from_static("1"));
                }
                resp
            }
            Err(e) => {
                self.metrics.peer_errors.inc();
                tracing::warn!(error = ?e, "forward failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shard_unavailable",
                    e.to_string(),
                )
                .into_response()
            }
        }
    }

    async fn local(
        &self,
        object: ObjectRef,
        rest: String,
        req: Request,
        chain: CallChain,
    ) -> Response {
        if chain.contains(&object.key()) {
            return ApiError::new(
                StatusCode::LOOP_DETECTED,
                "call_cycle",
                format!(
                    "{}/{} is busy earlier in this call chain; calling it again would deadlock",
                    object.class, object.id
                ),
            )
            .into_response();
        }
        if is_upgrade(&req) {
            return connection::connect(
                self.host.clone(),
                self.sockets.clone(),
                object,
                rest,
                req,
                chain,
            )
            .await;
        }
        if chain.len() >= MAX_DEPTH {
            return ApiError::new(
                StatusCode::LOOP_DETECTED,
                "call_too_deep",
                format!("object calls nest at most {MAX_DEPTH} deep"),
            )
            .into_response();
        }
        let (mut parts, body) = req.into_parts();
        let body = match read_body(body, self.max_request_bytes, self.body_timeout).await {
            Ok(b) => b,
            Err(e) => return e.into_response(),
        };
        parts.uri = match rest.parse() {
            Ok(u) => u,
            Err(_) => {
                return ApiError::bad_request("invalid_path", "invalid path").into_response();
            }
        };
        clean_headers(&mut parts.headers, true);
        let req = http::Request::from_parts(parts, body);
        self.host.deliver(object, req, chain).await.map(Body::from)
    }
}
