//! A turn, from its event's delivery to its end in storage: its token, its storage view, its
//! outbox, and how the app's answer ends it ([`Turn::finish`]).
//!
//! Turn tokens are issued when an event is delivered and valid until the app answers.
//! A token is `{turn number in hex}.{mac in hex}`, where the mac is the first 128 bits of
//! SHA-256 over a random per-boot key and the turn number. Any token is checked without state:
//! a valid mac whose turn is no longer live belongs to a finished turn (410); anything else was
//! never issued by this process (401), whatever its number, so a token reveals nothing about the
//! turn counter. Nothing is kept for finished turns.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use stead_core::protocol;

use crate::alarms::AlarmChange;
use crate::app::AppError;
use crate::chain::CallChain;
use crate::envelope::{self, Carried};
use crate::error::ApiError;
use crate::limits::Limits;
use crate::object::ObjectRef;
use crate::storage::{BoxFuture, Failures, StorageError, TurnEnd, TurnRef, TurnStore};
use crate::websocket::registry::{Outgoing, Sockets};

#[derive(Debug, Clone)]
pub enum TurnKind {
    /// A turn of an object: its token reaches that object's storage only. `chain` holds the
    /// objects busy in this turn's call chain, this one last: the chain of its object calls.
    Object {
        turn: TurnRef,
        chain: CallChain,
        outbox: Outbox,
    },
    /// A stateless front-door request: no storage, and an empty call chain.
    Stateless,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TurnError {
    #[error("this turn token was never issued by this sidecar")]
    Unknown,
    #[error("the turn of this token has ended; storage calls must happen before the app answers")]
    Finished,
}

impl From<TurnError> for ApiError {
    fn from(e: TurnError) -> Self {
        match e {
            TurnError::Unknown => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unknown_turn", e.to_string())
            }
            TurnError::Finished => ApiError::new(StatusCode::GONE, "turn_finished", e.to_string()),
        }
    }
}

/// WebSocket output of a turn, held back until the turn commits (the output gate).
#[derive(Debug, Clone, Default)]
pub struct Outbox(Arc<Mutex<Vec<Outgoing>>>);

impl Outbox {
    pub fn push(&self, out: Outgoing) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(out);
    }

    pub fn take(&self) -> Vec<Outgoing> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// What an object's turns share with storage: which turn is active, and how many commits of
/// the object have failed (a turn that started before a failure is refused at its end).
#[derive(Debug, Clone, Default)]
pub struct ObjectCell {
    pub active: Arc<AtomicU64>,
    pub failures: Arc<Failures>,
}

/// How the app answered a turn's event.
pub enum Answer {
    Answered(Response<Bytes>),
    Failed(AppError),
    TimedOut(Duration),
}

/// One object turn: its token, its storage view and its outbox. Dropping it ends the token
/// (calls with it get 410), on every path.
pub struct Turn {
    storage: TurnRef,
    token: String,
    outbox: Outbox,
    turns: Arc<Turns>,
}

/// A turn that has ended in the app: the reply the output gate holds until the commit covering
/// the turn is durable, what it sent to WebSockets meanwhile, and its end in storage, which the
/// gate awaits (it is queued before the group's commit, so it is done by then).
pub struct Finished {
    pub response: Response<Bytes>,
    /// The turn's writes are kept in the object's transaction: it commits with the group. Final
    /// once [`Finished::settle`] has run.
    pub kept: bool,
    /// The turn's end ran in storage: the object's transaction may be open (the group must
    /// commit, or discard a database the turn created and rolled back).
    pub wrote: bool,
    /// What the turn sent to the object's WebSockets (released only if it commits).
    pub outbox: Vec<Outgoing>,
    /// The answer said it speaks protocol 2 (`None`: there was no answer).
    pub speaks_v2: Option<bool>,
    /// Failed commits and ends of the object known when the turn started.
    pub failures_seen: u64,
    pub turn_id: u64,
    /// The turn's end in storage, queued and not yet awaited.
    ended: Option<BoxFuture<Result<(), StorageError>>>,
}

impl Finished {
    /// A turn that never reached the app (`response` says why).
    pub fn refused(response: Response<Bytes>, failures_seen: u64) -> Self {
        Self {
            response,
            kept: false,
            wrote: false,
            outbox: vec![],
            speaks_v2: None,
            failures_seen,
            turn_id: 0,
            ended: None,
        }
    }

    /// Waits for the turn's end in storage: a kept turn that could not be kept there (its
    /// carried writes failed on disk, or it ran after a failure) answers the error instead.
    pub async fn settle(&mut self) {
        let Some(ended) = self.ended.take() else {
            return;
        };
        if let Err(e) = ended.await {
            tracing::warn!(turn_id = self.turn_id, error = %e, "the turn could not be kept; rolled back");
            if self.kept {
                self.response = ApiError::from(e).into_http();
            }
            self.kept = false;
        }
    }
}

impl Turn {
    pub fn id(&self) -> u64 {
        self.storage.id
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Ends the turn by the app's `answer`: decides whether it commits (status < 500, no
    /// `stead-rollback`), takes the writes a protocol-2 answer carries, and queues the turn's end
    /// in `store` (kept in the object's transaction, or rolled back to its savepoint), which
    /// [`Finished::settle`] awaits. The socket operations a kept turn's answer carries are
    /// applied to `sockets` (attachments, auto-response) and its outbox (sends). `alarm` says
    /// whether this is an alarm turn, and whether its failure drops the alarm (last retry).
    /// With `seal` (the object's failures), the turn is the last of its group: its end and
    /// the group's commit go to storage together, and the commit's outcome is returned to be
    /// awaited by the output gate.
    pub fn finish(
        self,
        answer: Answer,
        store: &dyn TurnStore,
        limits: &Limits,
        sockets: &Sockets,
        alarm: Option<AlarmTurn>,
        seal: Option<Arc<Failures>>,
    ) -> (Finished, Option<CommitOutcome>) {
        let mut speaks_v2 = None;
        let (keep, carried, response) = match answer {
            Answer::TimedOut(after) => (
                false,
                Carried::default(),
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "turn_timeout",
                    format!(
                        "the app did not answer within the turn timeout of {after:?}; the turn was rolled back"
                    ),
                )
                .into_http(),
            ),
            Answer::Failed(e) => (
                false,
                Carried::default(),
                ApiError::new(StatusCode::BAD_GATEWAY, "app_failed", e.to_string()).into_http(),
            ),
            Answer::Answered(mut resp) => {
                let v2 = envelope::speaks_v2(resp.headers());
                speaks_v2 = Some(v2);
                let rollback = resp.status().is_server_error()
                    || resp.headers().contains_key(protocol::ROLLBACK);
                if !v2 {
                    (!rollback, Carried::default(), resp)
                } else {
                    // The writes come off the body either way; a rolled-back turn drops them.
                    match envelope::take_writes(&mut resp, limits) {
                        Ok(carried) if !rollback => (true, carried, resp),
                        Ok(_) => (false, Carried::default(), resp),
                        Err(e) => (false, Carried::default(), e.into_http()),
                    }
                }
            }
        };
        let Carried {
            writes,
            sockets: ops,
        } = carried;
        if !ops.is_empty() {
            // Applied now, before the object's next event goes to the app (so it sees them);
            // sends go to the outbox after the turn's called ones, and leave only if it commits.
            for out in sockets.apply_carried(&self.storage.object.key(), ops) {
                self.outbox.push(out);
            }
        }
        // The token ends before storage ends the turn: a late call finds it finished.
        self.turns.end(self.storage.id);
        let end = TurnEnd {
            keep,
            writes,
            alarm_turn: alarm.is_some(),
            drop_alarm: !keep && alarm.is_some_and(|a| a.last),
        };
        // A turn that wrote nothing through calls, carries no writes and is no alarm turn has
        // nothing to end in storage: one hop less for read-only and cached turns. Otherwise its
        // end is queued now and awaited by the output gate: the next turn goes to the app
        // meanwhile.
        let touched = self.storage.close();
        let needs_storage = touched || end.writes.is_some() || end.alarm_turn;
        let (ended, commit) = match (needs_storage, seal) {
            (false, _) => (None, None),
            (true, None) => (Some(store.end_turn(&self.storage, end)), None),
            (true, Some(failures)) => {
                let (ended, committed) = store.end_turn_and_commit(&self.storage, end, failures);
                (Some(ended), Some(committed))
            }
        };
        let finished = Finished {
            response,
            kept: keep,
            wrote: needs_storage,
            outbox: self.outbox.take(),
            speaks_v2,
            failures_seen: self.storage.failures_seen,
            turn_id: self.storage.id,
            ended,
        };
        (finished, commit)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.turns.end(self.storage.id);
    }
}

/// The outcome of a group's commit, once storage has it.
pub type CommitOutcome = BoxFuture<Result<Option<AlarmChange>, StorageError>>;

/// An alarm turn: `last` if its failure exhausts the retries.
#[derive(Debug, Clone, Copy)]
pub struct AlarmTurn {
    pub last: bool,
}

/// Bytes of the token's mac (hex doubles them).
const MAC_BYTES: usize = 16;

pub struct Turns {
    next: AtomicU64,
    /// The per-boot key of the tokens' macs; `None` if the OS had no randomness to give, and
    /// then every token is refused (`begin_*` report the error).
    key: Option<[u8; 32]>,
    live: Mutex<HashMap<u64, TurnKind>>,
}

impl Default for Turns {
    fn default() -> Self {
        Self::new()
    }
}

impl Turns {
    pub fn new() -> Self {
        let mut key = [0u8; 32];
        let key = match getrandom::fill(&mut key) {
            Ok(()) => Some(key),
            Err(e) => {
                tracing::error!(error = %e, "no randomness for the turn token key");
                None
            }
        };
        Self {
            next: AtomicU64::new(1),
            key,
            live: Mutex::new(HashMap::new()),
        }
    }

    fn mac(key: &[u8; 32], id: u64) -> [u8; MAC_BYTES] {
        let mut h = Sha256::new();
        h.update(key);
        h.update(id.to_be_bytes());
        let digest = h.finalize();
        let mut mac = [0u8; MAC_BYTES];
        mac.copy_from_slice(&digest[..MAC_BYTES]);
        mac
    }

    /// Starts a turn of `object`, whose cell is `cell`; the object's failed commits numbered
    /// `failures_seen` when it started; storage interrupts its SQL at `deadline`.
    pub fn begin_object(
        self: &Arc<Self>,
        object: Arc<ObjectRef>,
        cell: &ObjectCell,
        failures_seen: u64,
        chain: CallChain,
        deadline: Instant,
    ) -> Result<Turn, getrandom::Error> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let turn = TurnRef {
            object,
            id,
            active: cell.active.clone(),
            deadline: Some(deadline),
            failures: cell.failures.clone(),
            failures_seen,
            touched: Arc::default(),
        };
        turn.active.store(id, Ordering::Release);
        let outbox = Outbox::default();
        let token = self.register(
            id,
            TurnKind::Object {
                turn: turn.clone(),
                chain,
                outbox: outbox.clone(),
            },
        )?;
        Ok(Turn {
            storage: turn,
            token,
            outbox,
            turns: self.clone(),
        })
    }

    /// Starts a stateless request; returns its number and token.
    pub fn begin_stateless(&self) -> Result<(u64, String), getrandom::Error> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = self.register(id, TurnKind::Stateless)?;
        Ok((id, token))
    }

    fn register(&self, id: u64, kind: TurnKind) -> Result<String, getrandom::Error> {
        let Some(key) = &self.key else {
            // The OS gave no randomness at start (logged then): no token can be issued.
            return Err(getrandom::Error::UNEXPECTED);
        };
        let token = format!("{id:x}.{}", hex::encode(Self::mac(key, id)));
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, kind);
        Ok(token)
    }

    pub fn end(&self, id: u64) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    pub fn resolve(&self, token: &str) -> Result<TurnKind, TurnError> {
        let key = self.key.as_ref().ok_or(TurnError::Unknown)?;
        let (id, mac) = token.split_once('.').ok_or(TurnError::Unknown)?;
        let id = u64::from_str_radix(id, 16).map_err(|_| TurnError::Unknown)?;
        let mut given = [0u8; MAC_BYTES];
        hex::decode_to_slice(mac, &mut given).map_err(|_| TurnError::Unknown)?;
        if !bool::from(Self::mac(key, id).ct_eq(&given)) {
            return Err(TurnError::Unknown);
        }
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match live.get(&id) {
            Some(kind) => Ok(kind.clone()),
            None => Err(TurnError::Finished),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stead_core::{ClassName, ObjectId};

    fn object() -> Arc<ObjectRef> {
        let class = ClassName::new("Counter").unwrap();
        Arc::new(ObjectRef::new(class, ObjectId::unique().unwrap(), None, 16))
    }

    #[test]
    fn a_token_resolves_to_its_own_object_until_its_turn_ends() {
        let turns = Arc::new(Turns::new());
        let cell = ObjectCell::default();
        let obj = object();
        let turn = turns
            .begin_object(obj.clone(), &cell, 0, CallChain::default(), Instant::now())
            .unwrap();
        let token = turn.token().to_owned();
        assert_eq!(cell.active.load(Ordering::Acquire), turn.id());
        match turns.resolve(&token) {
            Ok(TurnKind::Object { turn: t, .. }) => assert_eq!(t.object, obj),
            other => panic!("unexpected {other:?}"),
        }
        drop(turn);
        assert_eq!(turns.resolve(&token).unwrap_err(), TurnError::Finished);
    }

    #[test]
    fn forged_tokens_are_unknown() {
        let turns = Turns::new();
        let (id, token) = turns.begin_stateless().unwrap();
        let forged = format!("{id:x}.{}", "0".repeat(32));
        assert_eq!(turns.resolve(&forged).unwrap_err(), TurnError::Unknown);
        assert_eq!(turns.resolve("ffff.00").unwrap_err(), TurnError::Unknown);
        assert_eq!(turns.resolve("garbage").unwrap_err(), TurnError::Unknown);
        assert!(matches!(turns.resolve(&token), Ok(TurnKind::Stateless)));
    }

    #[test]
    fn a_forged_token_below_the_counter_is_unknown_not_finished() {
        let turns = Turns::new();
        for _ in 0..5 {
            let (id, _) = turns.begin_stateless().unwrap();
            turns.end(id);
        }
        // Numbers that were issued and have ended, with secrets that were not: a forger learns
        // nothing about which numbers exist.
        for id in 1u64..=5 {
            let forged = format!("{id:x}.{}", "ab".repeat(MAC_BYTES));
            assert_eq!(turns.resolve(&forged).unwrap_err(), TurnError::Unknown);
        }
    }

    #[test]
    fn a_token_of_another_boot_is_unknown() {
        let before = Turns::new();
        let (id, token) = before.begin_stateless().unwrap();
        before.end(id);
        assert_eq!(before.resolve(&token).unwrap_err(), TurnError::Finished);
        let after = Turns::new();
        let _ = after.begin_stateless().unwrap();
        assert_eq!(after.resolve(&token).unwrap_err(), TurnError::Unknown);
    }
}
