//! Resharding: moving every slot to the shard a new ring names, one hand-off per slot with
//! bounded parallelism, then publishing the ring to every shard.
//!
//! The coordinator keeps no state of its own that matters: each round asks every shard what it
//! owns and derives the moves from that, so a coordinator restarted in the middle (or a second
//! request after a failure) resumes where the shards are. It runs in the sidecar of shard 0,
//! started by `stead scale` locally or by the operator in Kubernetes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use stead_core::{Ring, Slot};

use crate::forward::PeerClient;
use crate::handoff::Moved;
use crate::membership::Membership;

/// Rounds of "ask the shards, move what is misplaced" before a resharding gives up.
const MAX_ROUNDS: usize = 30;
/// How long one slot hand-off may take, as seen by the coordinator.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(600);
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    #[default]
    Idle,
    Running,
    Done,
    Failed,
}

/// Where a resharding stands (`GET /v1/admin/reshard`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    pub state: State,
    pub from: u32,
    pub to: u32,
    /// The epoch of the ring published when done.
    pub epoch: u64,
    pub moved: usize,
    pub total: usize,
    pub objects: usize,
    pub bytes: u64,
    /// The longest time one slot was fenced, in milliseconds.
    pub max_pause_ms: f64,
    pub seconds: f64,
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("a resharding to {running} shards is in progress; wait for it to finish")]
    InProgress { running: u32 },
    #[error("a namespace needs at least one shard, got {0}")]
    InvalidShards(u32),
}

/// What a shard says it owns (`GET /v1/admin/slots`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotsView {
    pub ordinal: u32,
    pub ring: RingView,
    pub owned: Vec<u32>,
    pub moving: Vec<MovingView>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RingView {
    pub epoch: u64,
    pub shards: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MovingView {
    pub slot: u32,
    pub to: u32,
    pub state: String,
}

/// Body of `PUT /v1/admin/ring`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RingOffer {
    pub epoch: u64,
    pub shards: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<String>>,
}

/// Body of `POST /v1/admin/slots/{slot}/handoff`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandoffOrder {
    pub to: u32,
    pub epoch: u64,
}

pub struct Coordinator {
    slots: u32,
    membership: Arc<dyn Membership>,
    peers: PeerClient,
    parallelism: usize,
    progress: Mutex<Progress>,
}

impl Coordinator {
    pub fn new(
        slots: u32,
        membership: Arc<dyn Membership>,
        peers: PeerClient,
        parallelism: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            slots,
            membership,
            peers,
            parallelism: parallelism.max(1),
            progress: Mutex::new(Progress::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn progress(&self) -> Progress {
        self.lock().clone()
    }

    /// Starts resharding to `shards` (in the background). The same target while it runs answers
    /// its progress; another target is refused until it ends.
    pub fn start(
        self: &Arc<Self>,
        shards: u32,
        peers: Option<Vec<String>>,
    ) -> Result<Progress, CoordinatorError> {
        if shards < 1 {
            return Err(CoordinatorError::InvalidShards(shards));
        }
        let mut p = self.lock();
        if p.state == State::Running {
            if p.to == shards {
                return Ok(p.clone());
            }
            return Err(CoordinatorError::InProgress { running: p.to });
        }
        if let Some(peers) = &peers {
            let ring = (*self.membership.ring()).clone();
            self.membership.offer(ring, Some(peers.clone()));
        }
        let ring = self.membership.ring();
        *p = Progress {
            state: State::Running,
            from: ring.shards,
            to: shards,
            epoch: ring.epoch + 1,
            ..Progress::default()
        };
        let started = p.clone();
        drop(p);
        let me = self.clone();
        let span = ring
            .shards
            .max(shards)
            .max(peers.map_or(0, |p| p.len() as u32));
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = me.run(shards, span).await;
            let mut p = me.lock();
            p.seconds = started.elapsed().as_secs_f64();
            match outcome {
                Ok(()) => {
                    p.state = State::Done;
                    p.error = None;
                    tracing::info!(
                        to = shards,
                        moved = p.moved,
                        bytes = p.bytes,
                        seconds = p.seconds,
                        "resharding done"
                    );
                }
                Err(e) => {
                    p.state = State::Failed;
                    tracing::error!(to = shards, error = %e, "resharding failed");
                    p.error = Some(e);
                }
            }
        });
        Ok(started)
    }

    fn addr(&self, ordinal: u32) -> Result<String, String> {
        self.membership
            .peer_addr(ordinal)
            .ok_or_else(|| format!("no address is known for shard {ordinal}"))
    }

    async fn view(&self, ordinal: u32) -> Result<SlotsView, String> {
        let addr = self.addr(ordinal)?;
        let (status, body) = self
            .peers
            .admin(
                ordinal,
                &addr,
                http::Method::GET,
                "/v1/admin/slots",
                Bytes::new(),
                ADMIN_TIMEOUT,
            )
            .await
            .map_err(|e| format!("shard {ordinal} is not reachable ({e}); start it first"))?;
        if !status.is_success() {
            return Err(format!(
                "shard {ordinal} answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        serde_json::from_slice(&body).map_err(|e| format!("shard {ordinal}: {e}"))
    }

    async fn run(self: &Arc<Self>, to: u32, span: u32) -> Result<(), String> {
        let epoch = self.lock().epoch;
        let target = Ring::new(epoch, self.slots, to);
        let mut last_error = None;
        let mut counted = false;
        for _round in 0..MAX_ROUNDS {
            // What every shard owns now, and what is mid-move.
            let mut owner: Vec<Option<u32>> = vec![None; self.slots as usize];
            let mut moving = 0usize;
            for ordinal in 0..span {
                let view = match self.view(ordinal).await {
                    Ok(v) => v,
                    Err(e) if ordinal < to => return Err(e),
                    // A shard beyond the new size that is gone owns nothing any more.
                    Err(e) => {
                        tracing::debug!(ordinal, error = %e, "shard past the new size not reachable");
                        continue;
                    }
                };
                for s in view.owned {
                    if let Some(o) = owner.get_mut(s as usize) {
                        *o = Some(ordinal);
                    }
                }
                moving += view.moving.len();
                for m in view.moving {
                    if let Some(o) = owner.get_mut(m.slot as usize) {
                        *o = None;
                    }
                }
            }
            let moves: Vec<(Slot, u32, u32)> = owner
                .iter()
                .enumerate()
                .filter_map(|(s, o)| {
                    let slot = Slot(s as u32);
                    let o = (*o)?;
                    let t = target.owner(slot);
                    (o != t).then_some((slot, o, t))
                })
                .collect();
            if !counted {
                self.lock().total = moves.len() + moving;
                counted = true;
            }
            if moves.is_empty() && moving == 0 {
                return self.publish(&target, span).await;
            }
            if moves.is_empty() {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            let mut results = futures_util::stream::iter(moves)
                .map(|(slot, from, to)| {
                    let me = self.clone();
                    async move { (slot, me.hand_off(slot, from, to, epoch).await) }
                })
                .buffer_unordered(self.parallelism);
            let mut failed = false;
            while let Some((slot, r)) = results.next().await {
                match r {
                    Ok(m) => {
                        let mut p = self.lock();
                        p.moved += 1;
                        p.objects += m.objects;
                        p.bytes += m.bytes;
                        p.max_pause_ms = p.max_pause_ms.max(m.pause_ms);
                    }
                    Err(e) => {
                        tracing::warn!(%slot, error = %e, "slot hand-off failed; retrying in the next round");
                        last_error = Some(format!("slot {slot}: {e}"));
                        failed = true;
                    }
                }
            }
            if failed {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Err(last_error.unwrap_or_else(|| "slots still misplaced after every round".into()))
    }

    async fn hand_off(&self, slot: Slot, from: u32, to: u32, epoch: u64) -> Result<Moved, String> {
        let addr = self.addr(from)?;
        let body = serde_json::to_vec(&HandoffOrder { to, epoch }).map_err(|e| e.to_string())?;
        let (status, body) = self
            .peers
            .admin(
                from,
                &addr,
                http::Method::POST,
                &format!("/v1/admin/slots/{}/handoff", slot.0),
                body.into(),
                HANDOFF_TIMEOUT,
            )
            .await
            .map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!(
                "shard {from} answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }

    /// Tells every shard the new ring. Shards of the new ring must take it; shards past it
    /// (about to be stopped) are told when they still answer.
    async fn publish(&self, ring: &Ring, span: u32) -> Result<(), String> {
        let peers: Vec<String> = (0..span)
            .filter_map(|i| self.membership.peer_addr(i))
            .collect();
        let offer = RingOffer {
            epoch: ring.epoch,
            shards: ring.shards,
            peers: (peers.len() == span as usize).then_some(peers),
        };
        let body: Bytes = serde_json::to_vec(&offer)
            .map_err(|e| e.to_string())?
            .into();
        for ordinal in 0..span {
            let addr = self.addr(ordinal)?;
            let mut tries = 0;
            loop {
                let r = self
                    .peers
                    .admin(
                        ordinal,
                        &addr,
                        http::Method::PUT,
                        "/v1/admin/ring",
                        body.clone(),
                        ADMIN_TIMEOUT,
                    )
                    .await;
                match r {
                    Ok((s, _)) if s.is_success() => break,
                    _ if ordinal >= ring.shards => break,
                    Ok((s, b)) if tries >= 5 => {
                        return Err(format!(
                            "shard {ordinal} refused the ring ({s}): {}",
                            String::from_utf8_lossy(&b)
                        ));
                    }
                    Err(e) if tries >= 5 => return Err(e.to_string()),
                    _ => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
        Ok(())
    }
}
