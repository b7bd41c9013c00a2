//! Turn tokens: issued when an event is delivered, valid until the app answers.
//!
//! A token is `{turn number in hex}.{mac in hex}`, where the mac is the first 128 bits of
//! SHA-256 over a random per-boot key and the turn number. Any token is checked without state:
//! a valid mac whose turn is no longer live belongs to a finished turn (410); anything else was
//! never issued by this process (401), whatever its number, so a token reveals nothing about the
//! turn counter. Nothing is kept for finished turns.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::StatusCode;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::chain::CallChain;
use crate::error::ApiError;
use crate::object::ObjectRef;
use crate::storage::TurnRef;
use crate::websocket::registry::Outgoing;

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

/// A started object turn: storage's view of it, its token, and its outbox.
pub struct ObjectTurn {
    pub turn: TurnRef,
    pub token: String,
    pub outbox: Outbox,
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

    /// Starts a turn of `object`, whose active-turn cell is `active`; storage interrupts its
    /// SQL at `deadline`.
    pub fn begin_object(
        &self,
        object: Arc<ObjectRef>,
        active: Arc<AtomicU64>,
        chain: CallChain,
        deadline: Instant,
    ) -> Result<ObjectTurn, getrandom::Error> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let turn = TurnRef {
            object,
            id,
            active,
            deadline: Some(deadline),
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
        Ok(ObjectTurn {
            turn,
            token,
            outbox,
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
        let turns = Turns::new();
        let active = Arc::new(AtomicU64::new(0));
        let obj = object();
        let ObjectTurn { turn, token, .. } = turns
            .begin_object(
                obj.clone(),
                active.clone(),
                CallChain::default(),
                Instant::now(),
            )
            .unwrap();
        assert_eq!(active.load(Ordering::Acquire), turn.id);
        match turns.resolve(&token) {
            Ok(TurnKind::Object { turn: t, .. }) => assert_eq!(t.object, obj),
            other => panic!("unexpected {other:?}"),
        }
        turns.end(turn.id);
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
