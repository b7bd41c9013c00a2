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
use crate::body::{BodyBudget, refuse_declared_length};
use crate::chain::{CallChain, MAX_DEPTH};
use crate::client::ClientAddr;
use crate::error::ApiError;
use crate::forward::PeerClient;
use crate::host::Host;
use crate::membership::Membership;
use crate::metrics::{ForwardLabels, Metrics};
use crate::object::ObjectRef;
use crate::ownership::{Ownership, SlotState};
use crate::websocket::connection::{self, is_upgrade};
use crate::websocket::registry::Sockets;

/// Most sidecars a request may pass through: the router's hop, and up to two more from shards
/// that handed the slot away (a router whose ring is a resharding behind). More is a loop.
pub const MAX_HOPS: u32 = 3;
/// How long a request for a fenced slot (being handed to another shard) waits before it is
/// answered 503 with Retry-After.
pub const FENCE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

pub struct ObjectRouter {
    pub classes: HashSet<String>,
    pub slots: u32,
    pub max_request_bytes: usize,
    /// Request bodies held in memory at once, across the sidecar.
    pub body_budget: BodyBudget,
    /// How long a request body may pause before it is refused with 408.
    pub body_timeout: std::time::Duration,
    pub host: Arc<Host>,
    pub ownership: Arc<Ownership>,
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
        let mut changes = self.ownership.subscribe();
        let waiting_until = tokio::time::Instant::now() + FENCE_WAIT;
        let owner = loop {
            match self.ownership.state(object.slot) {
                SlotState::Owned => return self.local(object, rest, req, chain).await,
                SlotState::Gone { to } => break Some(to),
                SlotState::NotOwned => break None,
                SlotState::Fenced => {
                    // The slot is being handed over: wait for the switch, briefly.
                    match tokio::time::timeout_at(waiting_until, changes.changed()).await {
                        Ok(Ok(())) => continue,
                        _ => {
                            return crate::host::slot_error(object.slot, SlotState::Fenced)
                                .into_response();
                        }
                    }
                }
            }
        };
        let tombstone = owner.is_some();
        let ring = self.membership.ring();
        let owner = owner.unwrap_or_else(|| ring.owner(object.slot));
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
        let reason = match (tombstone, hops) {
            (true, _) => "tombstone",
            (false, 0) => "not_owner",
            (false, _) => "stale_ring",
        };
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
        // The body's share of the budget is held until the object has answered.
        let (body, _held) = match self
            .body_budget
            .read(body, self.max_request_bytes, self.body_timeout)
            .await
        {
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
        ClientAddr::set_header(&mut parts.headers, &parts.extensions);
        let req = http::Request::from_parts(parts, body);
        self.host.deliver(object, req, chain).await.map(Body::from)
    }
}
