//! Turn tokens: issued when an event is delivered, valid until the app answers.
//!
//! A token is `{turn number in hex}.{32 random hex}`. Turn numbers only grow, so a token whose
//! turn is no longer active but whose number was issued by this process belongs to a finished
//! turn (410); anything else was never issued (401). Nothing is kept for finished turns.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::chain::CallChain;
use crate::object::ObjectRef;
use crate::storage::TurnRef;
use crate::websocket::Outgoing;

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

pub struct Turns {
    next: AtomicU64,
    live: Mutex<HashMap<u64, (String, TurnKind)>>,
}

impl Default for Turns {
    fn default() -> Self {
        Self::new()
    }
}

impl Turns {
    pub fn new() -> Self {
        Self {
            next: AtomicU64::new(1),
            live: Mutex::new(HashMap::new()),
        }
    }

    /// Starts a turn of `object`, whose active-turn cell is `active`.
    pub fn begin_object(
        &self,
        object: Arc<ObjectRef>,
        active: Arc<AtomicU64>,
        chain: CallChain,
    ) -> Result<ObjectTurn, getrandom::Error> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let turn = TurnRef { object, id, active };
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
        let mut secret = [0u8; 16];
        getrandom::fill(&mut secret)?;
        let secret = hex::encode(secret);
        let token = format!("{id:x}.{secret}");
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (secret, kind));
        Ok(token)
    }

    pub fn end(&self, id: u64) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    pub fn resolve(&self, token: &str) -> Result<TurnKind, TurnError> {
        let (id, secret) = token.split_once('.').ok_or(TurnError::Unknown)?;
        let id = u64::from_str_radix(id, 16).map_err(|_| TurnError::Unknown)?;
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match live.get(&id) {
            Some((s, kind)) if s.as_bytes() == secret.as_bytes() => Ok(kind.clone()),
            Some(_) => Err(TurnError::Unknown),
            None if id > 0 && id < self.next.load(Ordering::Relaxed) => Err(TurnError::Finished),
            None => Err(TurnError::Unknown),
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
            .begin_object(obj.clone(), active.clone(), CallChain::default())
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
}
