//! The admin endpoints of the peer port (`/v1/admin/…`, same token as forwarded requests):
//! what this shard owns, the ring, resharding, and both ends of slot hand-offs.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use stead_core::{Ring, Slot};

use crate::body::read_body;
use crate::coordinator::{
    Coordinator, CoordinatorError, HandoffOrder, MovingView, RingOffer, RingView, SlotsView,
};
use crate::error::ApiError;
use crate::handoff::{HandoffError, Handoffs, InstallRequest};
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::ownership::{Ownership, SlotState};

/// Largest stage request (a batch of object databases). One object database larger than this
/// cannot be handed over; the hand-off fails with `413` and the slot stays where it is.
pub const MAX_STAGE_BYTES: usize = 1 << 30;
const MAX_JSON_BYTES: usize = 64 << 20;
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct PeerAdmin {
    pub slots: u32,
    pub ownership: Arc<Ownership>,
    pub membership: Arc<dyn Membership>,
    pub handoffs: Arc<Handoffs>,
    pub coordinator: Arc<Coordinator>,
    pub metrics: Metrics,
}

fn json_response(status: StatusCode, v: serde_json::Value) -> Response {
    (status, axum::Json(v)).into_response()
}

impl From<HandoffError> for ApiError {
    fn from(e: HandoffError) -> Self {
        let msg = e.to_string();
        let (status, code) = match e {
            HandoffError::NotOwner { .. } => (StatusCode::CONFLICT, "not_owner"),
            HandoffError::AlreadyOwned { .. } => (StatusCode::CONFLICT, "already_owned"),
            HandoffError::NotStaged { .. } => (StatusCode::CONFLICT, "not_staged"),
            HandoffError::MissingObject { .. } => (StatusCode::CONFLICT, "missing_object"),
            HandoffError::ToSelf { .. } | HandoffError::Malformed(_) => {
                (StatusCode::BAD_REQUEST, "bad_handoff")
            }
            HandoffError::NotDrained { .. } | HandoffError::Unresolved { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "handoff_interrupted")
            }
            HandoffError::NoAddress(_) | HandoffError::Refused { .. } | HandoffError::Peer(_) => {
                (StatusCode::BAD_GATEWAY, "target_failed")
            }
            HandoffError::Ownership(_)
            | HandoffError::Storage(_)
            | HandoffError::Alarms(_)
            | HandoffError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "handoff_failed"),
        };
        ApiError::new(status, code, msg)
    }
}

impl From<CoordinatorError> for ApiError {
    fn from(e: CoordinatorError) -> Self {
        let msg = e.to_string();
        match e {
            CoordinatorError::InProgress { .. } => {
                ApiError::new(StatusCode::CONFLICT, "resharding_in_progress", msg)
            }
            CoordinatorError::InvalidShards(_) => ApiError::bad_request("invalid_shards", msg),
        }
    }
}

async fn json_body<T: for<'de> Deserialize<'de>>(body: Body) -> Result<T, ApiError> {
    let bytes = read_body(body, MAX_JSON_BYTES, BODY_TIMEOUT).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid request body: {e}")))
}

fn query_u64(req: &Request, key: &str) -> Result<u64, ApiError> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ApiError::bad_request("invalid_query", format!("`{key}` is required")))
}

/// Runs a hand-off step to its end even if the caller hangs up: a step dropped half-way (a
/// coordinator killed mid-request) would leave a slot fenced, or installed but not recorded.
async fn detached<T: Send + 'static>(
    step: impl Future<Output = Result<T, HandoffError>> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::spawn(step).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "handoff_failed",
            format!("the hand-off step stopped: {e}"),
        )),
    }
}

impl PeerAdmin {
    /// Serves `/v1/admin/…` (the token was checked by the peer port).
    pub async fn handle(self: &Arc<Self>, req: Request) -> Response {
        match self.route(req).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    }

    async fn route(self: &Arc<Self>, req: Request) -> Result<Response, ApiError> {
        let path = req.uri().path().to_owned();
        let parts: Vec<&str> = path.trim_start_matches("/v1/admin/").split('/').collect();
        let method = req.method().clone();
        match (&method, parts.as_slice()) {
            (&Method::GET, ["slots"]) => Ok(self.slots_view().await?),
            (&Method::PUT, ["ring"]) => {
                let offer: RingOffer = json_body(req.into_body()).await?;
                self.take_ring(offer).await
            }
            (&Method::GET, ["reshard"]) => {
                Ok(axum::Json(self.coordinator.progress()).into_response())
            }
            (&Method::POST, ["reshard"]) => {
                #[derive(Deserialize)]
                struct Order {
                    shards: u32,
                    #[serde(default)]
                    peers: Option<Vec<String>>,
                }
                let order: Order = json_body(req.into_body()).await?;
                let p = self.coordinator.start(order.shards, order.peers)?;
                Ok((StatusCode::ACCEPTED, axum::Json(p)).into_response())
            }
            (_, ["slots", slot, action]) => {
                let slot = slot
                    .parse::<u32>()
                    .ok()
                    .filter(|s| *s < self.slots)
                    .map(Slot)
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_slot",
                            format!("slots are 0..{}", self.slots),
                        )
                    })?;
                self.slot_action(&method, slot, action, req).await
            }
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no admin endpoint {method} {path}"),
            )),
        }
    }

    async fn slot_action(
        self: &Arc<Self>,
        method: &Method,
        slot: Slot,
        action: &str,
        req: Request,
    ) -> Result<Response, ApiError> {
        match (method, action) {
            (&Method::POST, "handoff") => {
                let order: HandoffOrder = json_body(req.into_body()).await?;
                let h = self.handoffs.clone();
                let moved =
                    detached(async move { h.hand_off(slot, order.to, order.epoch).await }).await?;
                self.metrics.slots_owned.set(self.ownership.count() as i64);
                Ok(axum::Json(moved).into_response())
            }
            (&Method::PUT, "stage") => {
                let attempt = query_u64(&req, "attempt")?;
                let body = read_body(req.into_body(), MAX_STAGE_BYTES, BODY_TIMEOUT).await?;
                let h = self.handoffs.clone();
                detached(async move { h.stage(slot, attempt, body).await }).await?;
                Ok(json_response(StatusCode::OK, json!({ "staged": true })))
            }
            (&Method::POST, "install") => {
                let install: InstallRequest = json_body(req.into_body()).await?;
                let h = self.handoffs.clone();
                detached(async move { h.install(slot, install).await }).await?;
                Ok(json_response(StatusCode::OK, json!({ "installed": true })))
            }
            (&Method::POST, "abort") => {
                let h = self.handoffs.clone();
                let installed = detached(async move { h.abort(slot).await }).await?;
                Ok(json_response(
                    StatusCode::OK,
                    json!({ "installed": installed }),
                ))
            }
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no admin endpoint {method} /v1/admin/slots/{slot}/{action}"),
            )),
        }
    }

    async fn slots_view(&self) -> Result<Response, ApiError> {
        let ring = self.membership.ring();
        let o = self.ownership.clone();
        let journal = match tokio::task::spawn_blocking(move || o.journal_rows()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "shard_record", e))?;
        let moving = journal
            .into_iter()
            .map(|(slot, to, step)| MovingView {
                slot,
                to,
                state: if step == "copying" && self.ownership.state(Slot(slot)) == SlotState::Fenced
                {
                    "fenced".into()
                } else {
                    step
                },
            })
            .collect();
        Ok(axum::Json(SlotsView {
            ordinal: self.ownership.me(),
            ring: RingView {
                epoch: ring.epoch,
                shards: ring.shards,
            },
            owned: self.ownership.owned(),
            moving,
        })
        .into_response())
    }

    async fn take_ring(&self, offer: RingOffer) -> Result<Response, ApiError> {
        if offer.shards < 1 {
            return Err(ApiError::bad_request(
                "invalid_shards",
                "a ring needs at least one shard",
            ));
        }
        let ring = Ring::new(offer.epoch, self.slots, offer.shards);
        let taken = self.membership.offer(ring.clone(), offer.peers);
        if taken {
            let o = self.ownership.clone();
            let recorded = match tokio::task::spawn_blocking(move || {
                o.record_ring(&ring)?;
                o.ring_taken(ring.epoch)
            })
            .await
            {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = recorded {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "shard_record",
                    e,
                ));
            }
            tracing::info!(
                epoch = offer.epoch,
                shards = offer.shards,
                "took a new ring"
            );
        }
        let now = self.membership.ring();
        self.metrics.ring_epoch.set(now.epoch as i64);
        Ok(json_response(
            StatusCode::OK,
            json!({ "taken": taken, "ring": { "epoch": now.epoch, "shards": now.shards } }),
        ))
    }
}
