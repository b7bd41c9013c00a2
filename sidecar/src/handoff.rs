//! Handing a slot to another shard, both ends (DESIGN §9).
//!
//! The source copies the slot's databases while it still serves them (pre-copy), fences the
//! slot, lets the turns in flight finish, copies only what was written since, and asks the
//! target to install. The target writes everything aside (`incoming/{slot}.{attempt}`), syncs
//! it, moves it into `slots/{slot}` in one rename, records the slot's alarms and then its
//! ownership. The source then records the hand-over (a forwarding tombstone) and deletes its
//! copy. So the pause of a slot is the delta, not the slot's size.
//!
//! Every step another party relies on is recorded first (see [`Ownership`]), so a kill -9 of
//! either end at any step ends in the hand-off completing or rolling back, never in a slot that
//! two shards serve: the source stops serving before the target installs, and a source that
//! restarts while it was asking the target to install keeps the slot fenced until the target
//! says whether it did ([`Handoffs::resolve`]).

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use stead_core::{ClassName, ObjectId, ObjectName, Slot};

use crate::alarms::Alarms;
use crate::forward::{ForwardError, PeerClient};
use crate::host::Host;
use crate::membership::Membership;
use crate::metrics::{Metrics, ResultLabels};
use crate::object::{ObjectKey, ObjectRef};
use crate::ownership::{HandoffStep, Ownership, OwnershipError, SlotState, UnfinishedHandoff};
use crate::storage::{Snapshot, Storage, StorageError};
use crate::websocket::registry::Sockets;

/// A stage request carries at most about this much (one object may exceed it alone).
const STAGE_BATCH_BYTES: usize = 8 << 20;
/// How long one admin exchange with the target may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("slot {slot} is not owned by this shard ({state:?})")]
    NotOwner { slot: Slot, state: SlotState },
    #[error("slot {slot} cannot be handed to this shard itself")]
    ToSelf { slot: Slot },
    #[error("no address is known for shard {0}")]
    NoAddress(u32),
    #[error("shard {ordinal} refused the hand-off ({status}): {body}")]
    Refused {
        ordinal: u32,
        status: http::StatusCode,
        body: String,
    },
    #[error("{0}")]
    Peer(#[from] ForwardError),
    #[error("slot {slot}: turns still in flight after {bound:?}; the hand-off rolled back")]
    NotDrained { slot: Slot, bound: Duration },
    #[error(
        "slot {slot}: the target did not confirm the install; the slot stays fenced until it answers"
    )]
    Unresolved { slot: Slot },
    #[error("{0}")]
    Ownership(#[from] OwnershipError),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Alarms(#[from] crate::alarms::AlarmError),
    #[error("slot files: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed hand-off data: {0}")]
    Malformed(String),
    #[error("slot {slot} is already owned by this shard")]
    AlreadyOwned { slot: Slot },
    #[error("slot {slot}: nothing staged for attempt {attempt} (aborted or never sent)")]
    NotStaged { slot: Slot, attempt: u64 },
    #[error("slot {slot}: object {key} was not staged")]
    MissingObject { slot: Slot, key: String },
}

/// What a finished hand-off moved.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Moved {
    pub objects: usize,
    pub bytes: u64,
    /// How long the slot was fenced, in milliseconds.
    pub pause_ms: f64,
}

/// One object of a slot as the install request names it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstalledObject {
    pub class: String,
    pub id: String,
    /// The object's alarm, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstallRequest {
    pub attempt: u64,
    pub epoch: u64,
    /// Every object of the slot: what was staged and is not listed is dropped.
    pub objects: Vec<InstalledObject>,
}

/// Both ends of slot hand-offs on this shard.
pub struct Handoffs {
    pub data_dir: PathBuf,
    pub slots: u32,
    pub ownership: Arc<Ownership>,
    pub membership: Arc<dyn Membership>,
    pub storage: Storage,
    pub host: Arc<Host>,
    pub sockets: Arc<Sockets>,
    pub alarms: Alarms,
    pub peers: PeerClient,
    pub metrics: Metrics,
    /// How long a fenced slot waits for its turns in flight before the hand-off rolls back.
    pub drain_bound: Duration,
    /// Test hook: a pause between steps.
    pub step_delay: Option<Duration>,
    /// One hand-off or install per slot at a time.
    busy: Mutex<HashSet<u32>>,
}

/// Marks a slot busy while a hand-off step runs on it.
struct SlotLock<'a> {
    handoffs: &'a Handoffs,
    slot: u32,
}

impl Drop for SlotLock<'_> {
    fn drop(&mut self) {
        self.handoffs.lock_busy().remove(&self.slot);
    }
}

/// The latest copy of each object the source sent, with what the install request lists.
#[derive(Default)]
struct Sent {
    objects: HashMap<ObjectKey, InstalledObject>,
    bytes: u64,
}

impl Handoffs {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        data_dir: PathBuf,
        slots: u32,
        ownership: Arc<Ownership>,
        membership: Arc<dyn Membership>,
        storage: Storage,
        host: Arc<Host>,
        sockets: Arc<Sockets>,
        alarms: Alarms,
        peers: PeerClient,
        metrics: Metrics,
        drain_bound: Duration,
        step_delay: Option<Duration>,
    ) -> Arc<Self> {
        Arc::new(Self {
            data_dir,
            slots,
            ownership,
            membership,
            storage,
            host,
            sockets,
            alarms,
            peers,
            metrics,
            drain_bound,
            step_delay,
            busy: Mutex::new(HashSet::new()),
        })
    }

    fn lock_busy(&self) -> std::sync::MutexGuard<'_, HashSet<u32>> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until no other hand-off step runs on `slot`, then holds it.
    async fn lock_slot(&self, slot: Slot) -> SlotLock<'_> {
        loop {
            if self.lock_busy().insert(slot.0) {
                return SlotLock {
                    handoffs: self,
                    slot: slot.0,
                };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn pause(&self) {
        if let Some(d) = self.step_delay {
            tokio::time::sleep(d).await;
        }
    }

    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<R, HandoffError> + Send + 'static,
    ) -> Result<R, HandoffError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| HandoffError::Io(std::io::Error::other(e)))?
    }

    fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.data_dir.join("slots").join(slot.to_string())
    }

    fn staging_dir(&self, slot: Slot, attempt: u64) -> PathBuf {
        self.data_dir
            .join("incoming")
            .join(format!("{}.{attempt:016x}", slot.0))
    }

    // ---------------- source ----------------

    /// Hands `slot` to shard `to`, for the ring of `epoch`. Idempotent: a slot already handed to
    /// `to` answers at once.
    pub async fn hand_off(
        self: &Arc<Self>,
        slot: Slot,
        to: u32,
        epoch: u64,
    ) -> Result<Moved, HandoffError> {
        let _lock = self.lock_slot(slot).await;
        match self.ownership.state(slot) {
            SlotState::Owned => {}
            SlotState::Gone { to: t } if t == to => return Ok(Moved::default()),
            state => return Err(HandoffError::NotOwner { slot, state }),
        }
        if to == self.ownership.me() {
            return Err(HandoffError::ToSelf { slot });
        }
        let addr = self
            .membership
            .peer_addr(to)
            .ok_or(HandoffError::NoAddress(to))?;
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).map_err(|e| HandoffError::Io(std::io::Error::other(e)))?;
        let attempt = u64::from_le_bytes(raw) >> 1;
        {
            let o = self.ownership.clone();
            self.blocking(move || Ok(o.journal(slot, to, attempt, epoch, HandoffStep::Copying)?))
                .await?;
        }
        self.metrics.slots_moving.inc();
        let result = self.move_slot(slot, to, &addr, attempt, epoch).await;
        self.metrics.slots_moving.dec();
        let outcome = if result.is_ok() { "success" } else { "failure" };
        self.metrics
            .handoffs
            .get_or_create(&ResultLabels { result: outcome })
            .inc();
        result
    }

    async fn move_slot(
        self: &Arc<Self>,
        slot: Slot,
        to: u32,
        addr: &str,
        attempt: u64,
        epoch: u64,
    ) -> Result<Moved, HandoffError> {
        // Pre-copy, while the slot is served.
        self.ownership.track(slot);
        let mut sent = Sent::default();
        let mut again: HashSet<ObjectKey> = HashSet::new();
        let copied = async {
            let objects = self.objects_on_disk(slot).await?;
            self.copy(slot, to, addr, attempt, &objects, &mut sent, &mut again)
                .await
        }
        .await;
        if let Err(e) = copied {
            self.roll_back(slot).await;
            return Err(e);
        }
        self.pause().await;

        // Fence, and let the turns in flight finish.
        let fenced_at = Instant::now();
        self.ownership.fence(slot);
        self.sockets.close_slot(slot, self.slots);
        if !self.ownership.drained(slot, self.drain_bound).await {
            self.roll_back(slot).await;
            return Err(HandoffError::NotDrained {
                slot,
                bound: self.drain_bound,
            });
        }

        // The delta: objects written since their copy, and objects that appeared.
        let delta = async {
            let now = self.objects_on_disk(slot).await?;
            again.extend(self.ownership.take_written(slot));
            let present: HashSet<ObjectKey> = now.iter().map(|o| o.key()).collect();
            sent.objects.retain(|k, _| present.contains(k));
            let todo: Vec<ObjectRef> = now
                .into_iter()
                .filter(|o| again.contains(&o.key()) || !sent.objects.contains_key(&o.key()))
                .collect();
            let mut busy = HashSet::new();
            self.copy(slot, to, addr, attempt, &todo, &mut sent, &mut busy)
                .await?;
            if !busy.is_empty() {
                return Err(HandoffError::Malformed(
                    "an object was inside a turn after its slot drained".into(),
                ));
            }
            Ok(())
        }
        .await;
        if let Err(e) = delta {
            self.roll_back(slot).await;
            return Err(e);
        }
        {
            let o = self.ownership.clone();
            let journaled = self
                .blocking(move || {
                    Ok(o.journal(slot, to, attempt, epoch, HandoffStep::Installing)?)
                })
                .await;
            if let Err(e) = journaled {
                self.roll_back(slot).await;
                return Err(e);
            }
        }
        self.pause().await;

        let request = InstallRequest {
            attempt,
            epoch,
            objects: sent.objects.values().cloned().collect(),
        };
        let installed = match self.install_on(to, addr, slot, &request).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(%slot, to, error = %e, "install failed; asking the target what it did");
                match self.ask_abort(to, slot, attempt).await {
                    Ok(installed) => installed,
                    Err(_) => {
                        // Only the target knows: keep the slot fenced and keep asking.
                        self.spawn_resolve(UnfinishedHandoff {
                            slot,
                            to,
                            attempt,
                            epoch,
                        });
                        return Err(HandoffError::Unresolved { slot });
                    }
                }
            }
        };
        if !installed {
            self.roll_back(slot).await;
            return Err(HandoffError::Refused {
                ordinal: to,
                status: http::StatusCode::CONFLICT,
                body: "the target did not install the slot".into(),
            });
        }
        let handed_at = self.complete(slot, to, epoch).await?;
        // The pause ends when requests waiting at the fence are forwarded, not when the copy here
        // is deleted.
        let pause = handed_at.duration_since(fenced_at);
        self.metrics
            .handoff_pause_seconds
            .observe(pause.as_secs_f64());
        self.metrics.handoff_bytes.inc_by(sent.bytes);
        tracing::info!(%slot, to, objects = sent.objects.len(), bytes = sent.bytes, pause_ms = pause.as_secs_f64() * 1000.0, "slot handed over");
        Ok(Moved {
            objects: sent.objects.len(),
            bytes: sent.bytes,
            pause_ms: pause.as_secs_f64() * 1000.0,
        })
    }

    /// The slot stays here: forget the journal row and serve it again.
    async fn roll_back(&self, slot: Slot) {
        let o = self.ownership.clone();
        if let Err(e) = self.blocking(move || Ok(o.roll_back(slot)?)).await {
            tracing::error!(%slot, error = %e, "recording the roll-back of a hand-off failed");
            // Serve it anyway: the journal row rolls back at the next start.
            self.ownership.unfence(slot);
        }
    }

    /// The target owns the slot: record the hand-over, then drop this shard's copy.
    /// Returns when the hand-over was recorded (requests then go to the target).
    async fn complete(&self, slot: Slot, to: u32, epoch: u64) -> Result<Instant, HandoffError> {
        let o = self.ownership.clone();
        self.blocking(move || Ok(o.handed_over(slot, to, epoch)?))
            .await?;
        let handed_at = Instant::now();
        self.host.forget_slot(slot, self.slots);
        self.storage.close_slot(slot, self.slots).await?;
        self.alarms.forget_slot(slot);
        let dir = self.slot_dir(slot);
        self.blocking(move || match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        })
        .await?;
        Ok(handed_at)
    }

    /// Copies `objects` to the target's staging area, in batches.
    #[allow(clippy::too_many_arguments)]
    async fn copy(
        &self,
        slot: Slot,
        to: u32,
        addr: &str,
        attempt: u64,
        objects: &[ObjectRef],
        sent: &mut Sent,
        busy: &mut HashSet<ObjectKey>,
    ) -> Result<(), HandoffError> {
        let mut batch = BytesMut::new();
        for object in objects {
            match self.storage.snapshot(object.clone()).await? {
                Snapshot::Missing => {
                    sent.objects.remove(&object.key());
                }
                Snapshot::Busy => {
                    busy.insert(object.key());
                }
                Snapshot::Copied { bytes, alarm, name } => {
                    sent.bytes += bytes.len() as u64;
                    encode_object(&mut batch, &object.class, &object.id, &bytes);
                    sent.objects.insert(
                        object.key(),
                        InstalledObject {
                            class: object.class.to_string(),
                            id: object.id.to_hex(),
                            alarm,
                            name,
                        },
                    );
                    if batch.len() >= STAGE_BATCH_BYTES {
                        self.stage_on(to, addr, slot, attempt, batch.split().freeze())
                            .await?;
                    }
                }
            }
        }
        if !batch.is_empty() || sent.objects.is_empty() {
            self.stage_on(to, addr, slot, attempt, batch.freeze())
                .await?;
        }
        Ok(())
    }

    async fn stage_on(
        &self,
        to: u32,
        addr: &str,
        slot: Slot,
        attempt: u64,
        body: Bytes,
    ) -> Result<(), HandoffError> {
        let path = format!("/v1/admin/slots/{}/stage?attempt={attempt}", slot.0);
        self.call(to, addr, http::Method::PUT, &path, body).await?;
        Ok(())
    }

    async fn install_on(
        &self,
        to: u32,
        addr: &str,
        slot: Slot,
        request: &InstallRequest,
    ) -> Result<(), HandoffError> {
        let body =
            serde_json::to_vec(request).map_err(|e| HandoffError::Malformed(e.to_string()))?;
        let path = format!("/v1/admin/slots/{}/install", slot.0);
        self.call(to, addr, http::Method::POST, &path, body.into())
            .await?;
        Ok(())
    }

    /// Asks the target to drop what it staged for `attempt`; answers whether it had already
    /// installed the slot (then the hand-off is complete).
    async fn ask_abort(&self, to: u32, slot: Slot, attempt: u64) -> Result<bool, HandoffError> {
        let addr = self
            .membership
            .peer_addr(to)
            .ok_or(HandoffError::NoAddress(to))?;
        let path = format!("/v1/admin/slots/{}/abort?attempt={attempt}", slot.0);
        let body = self
            .call(to, &addr, http::Method::POST, &path, Bytes::new())
            .await?;
        #[derive(Deserialize)]
        struct Answer {
            installed: bool,
        }
        let a: Answer =
            serde_json::from_slice(&body).map_err(|e| HandoffError::Malformed(e.to_string()))?;
        Ok(a.installed)
    }

    async fn call(
        &self,
        to: u32,
        addr: &str,
        method: http::Method,
        path: &str,
        body: Bytes,
    ) -> Result<Bytes, HandoffError> {
        let (status, body) = self
            .peers
            .admin(to, addr, method, path, body, PEER_TIMEOUT)
            .await?;
        if !status.is_success() {
            return Err(HandoffError::Refused {
                ordinal: to,
                status,
                body: String::from_utf8_lossy(&body).chars().take(500).collect(),
            });
        }
        Ok(body)
    }

    /// Resolves hand-offs found unfinished at start (or whose install got no answer): asks the
    /// target until it answers, then completes or rolls back. The slot stays fenced meanwhile.
    pub fn spawn_resolve(self: &Arc<Self>, h: UnfinishedHandoff) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(200);
            loop {
                match me.resolve(&h).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(slot = %h.slot, to = h.to, error = %e, "cannot resolve an unfinished hand-off yet; retrying")
                    }
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        });
    }

    async fn resolve(&self, h: &UnfinishedHandoff) -> Result<(), HandoffError> {
        let _lock = self.lock_slot(h.slot).await;
        if self.ownership.state(h.slot) != SlotState::Fenced {
            return Ok(());
        }
        if self.ask_abort(h.to, h.slot, h.attempt).await? {
            self.complete(h.slot, h.to, h.epoch).await?;
            tracing::info!(slot = %h.slot, to = h.to, "unfinished hand-off completed");
        } else {
            self.roll_back(h.slot).await;
            tracing::info!(slot = %h.slot, to = h.to, "unfinished hand-off rolled back");
        }
        Ok(())
    }

    /// The objects of `slot` that have a database on disk.
    async fn objects_on_disk(&self, slot: Slot) -> Result<Vec<ObjectRef>, HandoffError> {
        let dir = self.slot_dir(slot);
        let slots = self.slots;
        self.blocking(move || list_objects(&dir, slots)).await
    }

    // ---------------- target ----------------

    /// Writes staged objects of `slot` aside, synced, for attempt `attempt`.
    pub async fn stage(&self, slot: Slot, attempt: u64, body: Bytes) -> Result<(), HandoffError> {
        let _lock = self.lock_slot(slot).await;
        if matches!(
            self.ownership.state(slot),
            SlotState::Owned | SlotState::Fenced
        ) {
            return Err(HandoffError::AlreadyOwned { slot });
        }
        let dir = self.staging_dir(slot, attempt);
        self.blocking(move || stage_attempt(&dir, slot, body)).await
    }

    /// Installs the staged slot: moves it in place, records its alarms, then its ownership.
    pub async fn install(&self, slot: Slot, req: InstallRequest) -> Result<(), HandoffError> {
        let _lock = self.lock_slot(slot).await;
        match self.ownership.state(slot) {
            SlotState::Owned => return Ok(()),
            SlotState::Fenced => return Err(HandoffError::AlreadyOwned { slot }),
            _ => {}
        }
        let staged = self.staging_dir(slot, req.attempt);
        let target = self.slot_dir(slot);
        let mut alarms = vec![];
        let mut keep = HashSet::new();
        for o in &req.objects {
            let (Ok(class), Ok(id)) = (ClassName::new(&o.class), ObjectId::parse(&o.id)) else {
                return Err(HandoffError::Malformed(format!(
                    "bad object {}/{}",
                    o.class, o.id
                )));
            };
            if id.slot(self.slots) != slot {
                return Err(HandoffError::Malformed(format!(
                    "object {}/{} is not in slot {slot}",
                    o.class, o.id
                )));
            }
            keep.insert((o.class.clone(), o.id.clone()));
            if let Some(t) = o.alarm {
                let name = o.name.as_deref().and_then(|n| ObjectName::new(n).ok());
                alarms.push((ObjectRef::new(class, id, name, self.slots), t));
            }
        }
        // No database of a slot this shard does not own is open: a source closes them when it
        // hands the slot away (and a restart opens none). Mailboxes of an earlier ownership may
        // still idle: they go, so the objects start as new incarnations.
        self.host.forget_slot(slot, self.slots);
        let attempt = req.attempt;
        self.blocking(move || move_in(&staged, &target, &keep, slot, attempt))
            .await?;
        let alarms = Arc::new(alarms);
        {
            let (a, alarms) = (self.alarms.clone(), alarms.clone());
            self.blocking(move || Ok(a.adopt(&alarms)?)).await?;
        }
        let o = self.ownership.clone();
        self.blocking(move || Ok(o.installed(slot)?)).await?;
        // Only now: an alarm already due would otherwise fire before the slot is owned here,
        // be taken for a stale entry and dropped.
        for (object, time_ms) in alarms.iter() {
            self.alarms.reschedule(object, *time_ms);
        }
        self.metrics.slots_owned.set(self.ownership.count() as i64);
        tracing::info!(%slot, objects = req.objects.len(), epoch = req.epoch, "slot installed");
        Ok(())
    }

    /// Drops what was staged for `slot`; whether the slot is installed here.
    pub async fn abort(&self, slot: Slot) -> Result<bool, HandoffError> {
        let _lock = self.lock_slot(slot).await;
        if self.ownership.state(slot) == SlotState::Owned {
            return Ok(true);
        }
        let incoming = self.data_dir.join("incoming");
        let prefix = format!("{}.", slot.0);
        self.blocking(move || {
            remove_matching(&incoming, |name| name.starts_with(&prefix))?;
            Ok(())
        })
        .await?;
        Ok(false)
    }

    /// At start: drops staging areas, and slot folders this shard does not own (left by a
    /// hand-off that completed or an install that did not). Blocking.
    pub fn clean_up(data_dir: &Path, ownership: &Ownership) -> std::io::Result<()> {
        remove_matching(&data_dir.join("incoming"), |_| true)?;
        let slots_dir = data_dir.join("slots");
        let entries = match std::fs::read_dir(&slots_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Some(slot) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if matches!(
                ownership.state(Slot(slot)),
                SlotState::NotOwned | SlotState::Gone { .. }
            ) {
                tracing::info!(
                    slot,
                    "removing the folder of a slot this shard does not own"
                );
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(())
    }
}

/// `[u16 class length][class][32-byte id][u64 length][database]`, repeated.
fn encode_object(out: &mut BytesMut, class: &ClassName, id: &ObjectId, db: &[u8]) {
    out.put_u16(class.as_str().len() as u16);
    out.put_slice(class.as_str().as_bytes());
    out.put_slice(id.as_bytes());
    out.put_u64(db.len() as u64);
    out.put_slice(db);
}

fn decode_objects(mut body: Bytes) -> Result<Vec<(ClassName, ObjectId, Bytes)>, HandoffError> {
    let bad = |what: &str| HandoffError::Malformed(what.to_owned());
    let mut out = vec![];
    while body.has_remaining() {
        if body.remaining() < 2 {
            return Err(bad("truncated class length"));
        }
        let n = body.get_u16() as usize;
        if body.remaining() < n + 32 + 8 {
            return Err(bad("truncated object header"));
        }
        let class = std::str::from_utf8(&body.split_to(n))
            .ok()
            .and_then(|c| ClassName::new(c).ok())
            .ok_or_else(|| bad("bad class"))?;
        let mut id = [0u8; 32];
        body.copy_to_slice(&mut id);
        let id = ObjectId::from_bytes(id);
        let len = body.get_u64() as usize;
        if body.remaining() < len {
            return Err(bad("truncated database"));
        }
        out.push((class, id, body.split_to(len)));
    }
    Ok(out)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes a batch of `slot`'s attempt staged in `dir` (`incoming/{slot}.{attempt}`). The first
/// batch of an attempt drops what earlier attempts of the slot staged: a source that died or
/// rolled back mid-copy never installs or aborts them, and a slot is handed over one attempt at
/// a time, so they would otherwise stay on disk until this shard restarts.
fn stage_attempt(dir: &Path, slot: Slot, body: Bytes) -> Result<(), HandoffError> {
    if !dir.exists()
        && let Some(incoming) = dir.parent()
    {
        let prefix = format!("{}.", slot.0);
        remove_matching(incoming, |name| name.starts_with(&prefix))?;
    }
    write_staged(dir, body)
}

fn write_staged(dir: &Path, body: Bytes) -> Result<(), HandoffError> {
    let objects = decode_objects(body)?;
    std::fs::create_dir_all(dir)?;
    let mut dirs = HashSet::new();
    for (class, id, db) in objects {
        let class_dir = dir.join(class.as_str());
        if dirs.insert(class_dir.clone()) {
            std::fs::create_dir_all(&class_dir)?;
        }
        let path = class_dir.join(format!("{}.sqlite", id.to_hex()));
        let tmp = class_dir.join(format!("{}.sqlite.part", id.to_hex()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&db)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
    }
    for d in &dirs {
        sync_dir(d)?;
    }
    sync_dir(dir)?;
    Ok(())
}

/// Keeps only the listed objects in the staging area, then renames it to the slot's folder.
fn move_in(
    staged: &Path,
    target: &Path,
    keep: &HashSet<(String, String)>,
    slot: Slot,
    attempt: u64,
) -> Result<(), HandoffError> {
    if !staged.is_dir() {
        return Err(HandoffError::NotStaged { slot, attempt });
    }
    let mut found = HashSet::new();
    for class_entry in std::fs::read_dir(staged)? {
        let class_entry = class_entry?;
        let class = class_entry.file_name().to_string_lossy().into_owned();
        for f in std::fs::read_dir(class_entry.path())? {
            let f = f?;
            let name = f.file_name().to_string_lossy().into_owned();
            let id = name.strip_suffix(".sqlite").map(str::to_owned);
            match id {
                Some(id) if keep.contains(&(class.clone(), id.clone())) => {
                    found.insert((class.clone(), id));
                }
                _ => std::fs::remove_file(f.path())?,
            }
        }
    }
    if let Some((class, id)) = keep.iter().find(|k| !found.contains(*k)) {
        return Err(HandoffError::MissingObject {
            slot,
            key: format!("{class}/{id}"),
        });
    }
    if target.exists() {
        std::fs::remove_dir_all(target)?;
    }
    let parent = target
        .parent()
        .ok_or_else(|| HandoffError::Malformed("slot folder has no parent".into()))?;
    std::fs::create_dir_all(parent)?;
    std::fs::rename(staged, target)?;
    sync_dir(parent)?;
    if let Some(incoming) = staged.parent() {
        sync_dir(incoming)?;
    }
    Ok(())
}

fn remove_matching(dir: &Path, matches: impl Fn(&str) -> bool) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if matches(&entry.file_name().to_string_lossy()) {
            let p = entry.path();
            if p.is_dir() {
                std::fs::remove_dir_all(p)?;
            } else {
                std::fs::remove_file(p)?;
            }
        }
    }
    Ok(())
}

/// `{slot dir}/{class}/{id}.sqlite` → the objects.
fn list_objects(dir: &Path, slots: u32) -> Result<Vec<ObjectRef>, HandoffError> {
    let mut out = vec![];
    let classes = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for class_entry in classes {
        let class_entry = class_entry?;
        let Ok(class) = ClassName::new(&class_entry.file_name().to_string_lossy()) else {
            continue;
        };
        for f in std::fs::read_dir(class_entry.path())? {
            let name = f?.file_name().to_string_lossy().into_owned();
            let Some(id) = name
                .strip_suffix(".sqlite")
                .and_then(|h| ObjectId::parse(h).ok())
            else {
                continue;
            };
            out.push(ObjectRef::new(class.clone(), id, None, slots));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_objects_round_trip_and_truncation_is_refused() {
        let class = ClassName::new("Counter").unwrap();
        let a = ObjectId::unique().unwrap();
        let b = ObjectId::unique().unwrap();
        let mut buf = BytesMut::new();
        encode_object(&mut buf, &class, &a, b"first");
        encode_object(&mut buf, &class, &b, b"");
        let body = buf.freeze();
        let objects = decode_objects(body.clone()).unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0].1, a);
        assert_eq!(&objects[0].2[..], b"first");
        assert_eq!(objects[1].1, b);
        assert!(decode_objects(body.slice(..body.len() - 3)).is_err());
        assert!(decode_objects(body.slice(..4)).is_err());
    }

    #[test]
    fn a_new_attempt_drops_what_abandoned_attempts_of_its_slot_staged() {
        let root = std::env::temp_dir().join(format!(
            "stead-stage-{}-{}",
            std::process::id(),
            ObjectId::unique().unwrap().to_hex()
        ));
        let incoming = root.join("incoming");
        let class = ClassName::new("Counter").unwrap();
        let batch = |content: &[u8]| {
            let mut buf = BytesMut::new();
            encode_object(&mut buf, &class, &ObjectId::unique().unwrap(), content);
            buf.freeze()
        };
        let (old, other_slot) = (incoming.join("7.0001"), incoming.join("17.0001"));
        stage_attempt(&old, Slot(7), batch(b"abandoned")).unwrap();
        stage_attempt(&other_slot, Slot(17), batch(b"other slot")).unwrap();
        let new = incoming.join("7.0002");
        stage_attempt(&new, Slot(7), batch(b"first batch")).unwrap();
        stage_attempt(&new, Slot(7), batch(b"second batch")).unwrap();
        assert!(!old.exists(), "the abandoned attempt is dropped");
        assert!(other_slot.exists(), "another slot's attempt stays");
        let staged = std::fs::read_dir(new.join("Counter")).unwrap().count();
        assert_eq!(staged, 2, "both batches of the new attempt stay");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
