//! Which slots this shard serves, and the record of their hand-offs. Authority is the data: the
//! owned slots are recorded in `{data}/shard.sqlite`, and a slot is served only while it is
//! recorded there and not fenced. The ring is only the routing table. An empty shard takes the
//! slots the ring gives it on first start.
//!
//! Every step of a hand-off that another party relies on is recorded here, in one transaction
//! with the ownership it changes: the journal row of a slot being handed away (`handoffs`), the
//! owned slots, and the forwarding tombstone a source keeps for a slot it gave away.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use stead_core::{Ring, Slot};
use tokio::sync::watch;

use crate::object::{ObjectKey, ObjectRef};

#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    #[error("shard.sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot create the data folder: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "this shard's data was created with {recorded} slots but --slots is {configured}; slots cannot change"
    )]
    SlotsChanged { recorded: u32, configured: u32 },
    #[error(
        "this shard's data belongs to shard {recorded}, not {configured}; give each shard its own data folder"
    )]
    OrdinalChanged { recorded: u32, configured: u32 },
}

/// What this shard does with a request for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Another shard owns it: route by the ring.
    NotOwned,
    /// Served here.
    Owned,
    /// Owned, but being handed away: new events wait (bounded), in-flight turns finish.
    Fenced,
    /// Handed to shard `to`: forward there (the tombstone).
    Gone { to: u32 },
}

const NOT_OWNED: u32 = 0;
const OWNED: u32 = 1;
const FENCED: u32 = 2;
const GONE_BASE: u32 = 16;

fn encode(s: SlotState) -> u32 {
    match s {
        SlotState::NotOwned => NOT_OWNED,
        SlotState::Owned => OWNED,
        SlotState::Fenced => FENCED,
        SlotState::Gone { to } => GONE_BASE + to,
    }
}

fn decode(v: u32) -> SlotState {
    match v {
        OWNED => SlotState::Owned,
        FENCED => SlotState::Fenced,
        v if v >= GONE_BASE => SlotState::Gone { to: v - GONE_BASE },
        _ => SlotState::NotOwned,
    }
}

/// Where a hand-off of a slot stands at its source (the journal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffStep {
    /// Copying the slot's databases while still serving them; on a restart: roll back.
    Copying,
    /// The target was asked to install; whether it did is known only to it. On a restart the
    /// slot stays fenced until the target says (installed: complete; not: roll back).
    Installing,
}

impl HandoffStep {
    fn as_str(self) -> &'static str {
        match self {
            Self::Copying => "copying",
            Self::Installing => "installing",
        }
    }
}

/// A journal row found at start: a hand-off that was asking its target to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnfinishedHandoff {
    pub slot: Slot,
    pub to: u32,
    pub attempt: u64,
    pub epoch: u64,
}

/// The slots this shard owns, with their fences and tombstones.
pub struct Ownership {
    me: u32,
    states: Vec<AtomicU32>,
    /// Events admitted per slot and not yet finished (see [`SlotGuard`]).
    in_flight: Vec<AtomicU32>,
    /// Bumped on every state change: requests waiting on a fence watch it.
    changed: watch::Sender<u64>,
    db: Mutex<Connection>,
    /// Objects written since a slot's pre-copy began, per slot being copied.
    dirty: Mutex<HashMap<Slot, HashSet<ObjectKey>>>,
}

/// An event admitted to an owned slot; a fence waits until every guard of its slot is dropped.
pub struct SlotGuard {
    ownership: Arc<Ownership>,
    slot: usize,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(n) = self.ownership.in_flight.get(self.slot) {
            n.fetch_sub(1, Ordering::SeqCst);
        }
        self.ownership.changed.send_modify(|v| *v += 1);
    }
}

impl Ownership {
    /// Opens (or initialises) `{data}/shard.sqlite`, and returns the ownership with the ring
    /// to route by: `configured`, or the newer one recorded here. Blocking: call at start-up, off
    /// the runtime.
    pub fn load(
        data_dir: &Path,
        me: u32,
        configured: &Ring,
    ) -> Result<(Arc<Self>, Ring, Vec<UnfinishedHandoff>), OwnershipError> {
        std::fs::create_dir_all(data_dir)?;
        let mut conn = Connection::open(data_dir.join("shard.sqlite"))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000;
             CREATE TABLE IF NOT EXISTS shard_meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS owned_slots(slot INTEGER PRIMARY KEY);
             CREATE TABLE IF NOT EXISTS tombstones(slot INTEGER PRIMARY KEY, to_shard INTEGER NOT NULL, epoch INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS handoffs(slot INTEGER PRIMARY KEY, to_shard INTEGER NOT NULL,
                 attempt INTEGER NOT NULL, epoch INTEGER NOT NULL, step TEXT NOT NULL);",
        )?;
        let slots = configured.slots();
        match meta(&conn, "slots")? {
            None => {
                let tx = conn.transaction()?;
                tx.execute(
                    "INSERT INTO shard_meta(key, value) VALUES ('slots', ?1), ('ordinal', ?2)",
                    params![slots, me],
                )?;
                {
                    let mut ins = tx.prepare("INSERT INTO owned_slots(slot) VALUES (?1)")?;
                    for s in configured.slots_of(me) {
                        ins.execute(params![s.0])?;
                    }
                }
                tx.commit()?;
            }
            Some(recorded) if recorded != u64::from(slots) => {
                return Err(OwnershipError::SlotsChanged {
                    recorded: recorded as u32,
                    configured: slots,
                });
            }
            Some(_) => {}
        }
        if let Some(recorded) = meta(&conn, "ordinal")?
            && recorded != u64::from(me)
        {
            return Err(OwnershipError::OrdinalChanged {
                recorded: recorded as u32,
                configured: me,
            });
        }
        let ring = match (meta(&conn, "ring_epoch")?, meta(&conn, "ring_shards")?) {
            (Some(epoch), Some(shards)) if epoch > configured.epoch => {
                Ring::new(epoch, slots, shards as u32)
            }
            _ => configured.clone(),
        };

        let states: Vec<AtomicU32> = (0..slots).map(|_| AtomicU32::new(NOT_OWNED)).collect();
        {
            let mut stmt = conn.prepare("SELECT slot, to_shard FROM tombstones")?;
            for row in stmt.query_map([], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, u32>(1)?)))? {
                let (s, to) = row?;
                if let Some(st) = states.get(s as usize) {
                    st.store(encode(SlotState::Gone { to }), Ordering::SeqCst);
                }
            }
            let mut stmt = conn.prepare("SELECT slot FROM owned_slots")?;
            for s in stmt.query_map([], |r| r.get::<_, u32>(0))? {
                if let Some(st) = states.get(s? as usize) {
                    st.store(OWNED, Ordering::SeqCst);
                }
            }
        }
        // A hand-off that was still copying rolls back: the slot was never fenced for good and
        // the target installed nothing. One that was installing stays fenced until its target
        // says whether it installed.
        conn.execute("DELETE FROM handoffs WHERE step = 'copying'", [])?;
        let mut unfinished = vec![];
        {
            let mut stmt = conn.prepare("SELECT slot, to_shard, attempt, epoch FROM handoffs")?;
            for row in stmt.query_map([], |r| {
                Ok(UnfinishedHandoff {
                    slot: Slot(r.get(0)?),
                    to: r.get(1)?,
                    attempt: r.get::<_, i64>(2)? as u64,
                    epoch: r.get::<_, i64>(3)? as u64,
                })
            })? {
                let h = row?;
                if let Some(st) = states.get(h.slot.0 as usize) {
                    st.store(FENCED, Ordering::SeqCst);
                }
                unfinished.push(h);
            }
        }
        let (changed, _) = watch::channel(0);
        let ownership = Arc::new(Self {
            me,
            in_flight: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            states,
            changed,
            db: Mutex::new(conn),
            dirty: Mutex::new(HashMap::new()),
        });
        Ok((ownership, ring, unfinished))
    }

    pub fn me(&self) -> u32 {
        self.me
    }

    pub fn state(&self, slot: Slot) -> SlotState {
        self.states
            .get(slot.0 as usize)
            .map_or(SlotState::NotOwned, |s| decode(s.load(Ordering::SeqCst)))
    }

    fn set(&self, slot: Slot, state: SlotState) {
        if let Some(s) = self.states.get(slot.0 as usize) {
            s.store(encode(state), Ordering::SeqCst);
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// Whether this shard serves `slot` now (owned and not fenced).
    pub fn owns(&self, slot: Slot) -> bool {
        self.state(slot) == SlotState::Owned
    }

    /// Admits an event to `slot` if this shard serves it; otherwise says what the slot is.
    /// Counted before the state is checked, so a fence set concurrently either sees the event
    /// in flight or the event sees the fence.
    pub fn enter(self: &Arc<Self>, slot: Slot) -> Result<SlotGuard, SlotState> {
        let i = slot.0 as usize;
        let Some(n) = self.in_flight.get(i) else {
            return Err(SlotState::NotOwned);
        };
        n.fetch_add(1, Ordering::SeqCst);
        let guard = SlotGuard {
            ownership: self.clone(),
            slot: i,
        };
        match self.state(slot) {
            SlotState::Owned => Ok(guard),
            other => Err(other),
        }
    }

    /// Resolves when any slot's state or in-flight count changed after `seen`.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Slots owned (served or fenced), in order.
    pub fn owned(&self) -> Vec<u32> {
        (0..self.states.len() as u32)
            .filter(|s| matches!(self.state(Slot(*s)), SlotState::Owned | SlotState::Fenced))
            .collect()
    }

    pub fn count(&self) -> usize {
        self.owned().len()
    }

    /// Fences `slot`: new events wait; the caller then waits for [`Ownership::drained`].
    pub fn fence(&self, slot: Slot) {
        self.set(slot, SlotState::Fenced);
    }

    /// Lifts a fence (a hand-off rolled back): the slot is served here again.
    pub fn unfence(&self, slot: Slot) {
        self.set(slot, SlotState::Owned);
    }

    /// Waits until no event of `slot` is in flight, at most `bound`. Whether it drained.
    pub async fn drained(&self, slot: Slot, bound: Duration) -> bool {
        let Some(n) = self.in_flight.get(slot.0 as usize) else {
            return true;
        };
        let mut rx = self.changed.subscribe();
        let wait = async {
            loop {
                if n.load(Ordering::SeqCst) == 0 {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(bound, wait).await.is_ok()
    }

    /// Starts recording which objects of `slot` commit (the pre-copy is about to begin).
    pub fn track(&self, slot: Slot) {
        self.lock_dirty().insert(slot, HashSet::new());
    }

    /// `object` committed a turn: if its slot is being copied, it must be copied again.
    pub fn mark_written(&self, object: &ObjectRef) {
        if let Some(set) = self.lock_dirty().get_mut(&object.slot) {
            set.insert(object.key());
        }
    }

    /// The objects of `slot` written since [`Ownership::track`]; stops tracking.
    pub fn take_written(&self, slot: Slot) -> HashSet<ObjectKey> {
        self.lock_dirty().remove(&slot).unwrap_or_default()
    }

    fn lock_dirty(&self) -> std::sync::MutexGuard<'_, HashMap<Slot, HashSet<ObjectKey>>> {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- recorded steps (blocking: call from a blocking task) ----

    /// Records the newest ring this shard took, so a restart routes by it.
    pub fn record_ring(&self, ring: &Ring) -> Result<(), OwnershipError> {
        let conn = self.lock_db();
        conn.execute(
            "INSERT OR REPLACE INTO shard_meta(key, value) VALUES ('ring_epoch', ?1), ('ring_shards', ?2)",
            params![ring.epoch as i64, ring.shards],
        )?;
        Ok(())
    }

    /// Journals a hand-off step of `slot` (source side).
    pub fn journal(
        &self,
        slot: Slot,
        to: u32,
        attempt: u64,
        epoch: u64,
        step: HandoffStep,
    ) -> Result<(), OwnershipError> {
        let conn = self.lock_db();
        conn.execute(
            "INSERT OR REPLACE INTO handoffs(slot, to_shard, attempt, epoch, step) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![slot.0, to, attempt as i64, epoch as i64, step.as_str()],
        )?;
        Ok(())
    }

    /// The hand-off of `slot` rolled back: forget its journal row and serve the slot again.
    pub fn roll_back(&self, slot: Slot) -> Result<(), OwnershipError> {
        self.lock_db()
            .execute("DELETE FROM handoffs WHERE slot = ?1", params![slot.0])?;
        self.take_written(slot);
        self.unfence(slot);
        Ok(())
    }

    /// The target installed `slot` (source side): in one transaction, the slot stops being
    /// owned here, a tombstone points to its new owner, and the journal row goes.
    pub fn handed_over(&self, slot: Slot, to: u32, epoch: u64) -> Result<(), OwnershipError> {
        {
            let mut conn = self.lock_db();
            let tx = conn.transaction()?;
            tx.execute("DELETE FROM owned_slots WHERE slot = ?1", params![slot.0])?;
            tx.execute(
                "INSERT OR REPLACE INTO tombstones(slot, to_shard, epoch) VALUES (?1, ?2, ?3)",
                params![slot.0, to, epoch as i64],
            )?;
            tx.execute("DELETE FROM handoffs WHERE slot = ?1", params![slot.0])?;
            tx.commit()?;
        }
        self.set(slot, SlotState::Gone { to });
        Ok(())
    }

    /// `slot` was installed here (target side): it is owned from now on.
    pub fn installed(&self, slot: Slot) -> Result<(), OwnershipError> {
        {
            let mut conn = self.lock_db();
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT OR IGNORE INTO owned_slots(slot) VALUES (?1)",
                params![slot.0],
            )?;
            tx.execute("DELETE FROM tombstones WHERE slot = ?1", params![slot.0])?;
            tx.commit()?;
        }
        self.set(slot, SlotState::Owned);
        Ok(())
    }

    /// The hand-off journal, for the admin view: (slot, to, step).
    pub fn journal_rows(&self) -> Result<Vec<(u32, u32, String)>, OwnershipError> {
        let conn = self.lock_db();
        let mut stmt = conn.prepare("SELECT slot, to_shard, step FROM handoffs ORDER BY slot")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

fn meta(conn: &Connection, key: &str) -> Result<Option<u64>, rusqlite::Error> {
    conn.query_row(
        "SELECT value FROM shard_meta WHERE key = ?1",
        params![key],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map(|v| v.map(|v| v as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "stead-own-{}-{}",
            std::process::id(),
            stead_core::ObjectId::unique().unwrap().to_hex()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_empty_shard_takes_its_ring_slots_and_keeps_them() {
        let dir = tempdir();
        let ring = Ring::new(1, 256, 3);
        let (o, _, _) = Ownership::load(&dir, 1, &ring).unwrap();
        assert_eq!(o.count(), ring.slots_of(1).count());
        for s in 0..256 {
            assert_eq!(o.owns(Slot(s)), ring.owner(Slot(s)) == 1);
        }
        drop(o);
        // A bigger ring later does not hand this shard slots it never received.
        let (again, _, _) = Ownership::load(&dir, 1, &Ring::new(2, 256, 5)).unwrap();
        assert_eq!(again.count(), ring.slots_of(1).count());
    }

    #[test]
    fn a_changed_ordinal_or_slot_count_is_refused() {
        let dir = tempdir();
        drop(Ownership::load(&dir, 0, &Ring::new(1, 256, 1)).unwrap());
        assert!(matches!(
            Ownership::load(&dir, 1, &Ring::new(1, 256, 2)),
            Err(OwnershipError::OrdinalChanged { .. })
        ));
        assert!(matches!(
            Ownership::load(&dir, 0, &Ring::new(1, 128, 1)),
            Err(OwnershipError::SlotsChanged { .. })
        ));
    }

    #[test]
    fn a_new_shard_beyond_the_ring_owns_nothing() {
        let dir = tempdir();
        let (o, _, _) = Ownership::load(&dir, 3, &Ring::new(1, 256, 3)).unwrap();
        assert_eq!(o.count(), 0);
    }

    #[test]
    fn the_newest_recorded_ring_wins_over_an_older_configured_one() {
        let dir = tempdir();
        let (o, ring, _) = Ownership::load(&dir, 0, &Ring::new(1, 64, 2)).unwrap();
        assert_eq!(ring.epoch, 1);
        o.record_ring(&Ring::new(4, 64, 3)).unwrap();
        drop(o);
        let (_, ring, _) = Ownership::load(&dir, 0, &Ring::new(1, 64, 2)).unwrap();
        assert_eq!((ring.epoch, ring.shards), (4, 3));
    }

    #[test]
    fn a_handed_over_slot_is_a_tombstone_after_a_restart_and_an_installed_one_is_owned() {
        let dir = tempdir();
        let (o, _, _) = Ownership::load(&dir, 0, &Ring::new(1, 16, 1)).unwrap();
        o.fence(Slot(3));
        o.journal(Slot(3), 1, 7, 2, HandoffStep::Installing)
            .unwrap();
        o.handed_over(Slot(3), 1, 2).unwrap();
        assert_eq!(o.state(Slot(3)), SlotState::Gone { to: 1 });
        drop(o);
        let (o, _, unfinished) = Ownership::load(&dir, 0, &Ring::new(1, 16, 1)).unwrap();
        assert!(unfinished.is_empty());
        assert_eq!(o.state(Slot(3)), SlotState::Gone { to: 1 });
        o.installed(Slot(3)).unwrap();
        drop(o);
        let (o, _, _) = Ownership::load(&dir, 0, &Ring::new(1, 16, 1)).unwrap();
        assert_eq!(o.state(Slot(3)), SlotState::Owned);
    }

    #[test]
    fn a_restart_rolls_back_a_copy_and_keeps_an_install_fenced() {
        let dir = tempdir();
        let (o, _, _) = Ownership::load(&dir, 0, &Ring::new(1, 16, 1)).unwrap();
        o.journal(Slot(1), 1, 5, 2, HandoffStep::Copying).unwrap();
        o.journal(Slot(2), 1, 6, 2, HandoffStep::Installing)
            .unwrap();
        drop(o);
        let (o, _, unfinished) = Ownership::load(&dir, 0, &Ring::new(1, 16, 1)).unwrap();
        assert_eq!(o.state(Slot(1)), SlotState::Owned);
        assert_eq!(o.state(Slot(2)), SlotState::Fenced);
        assert_eq!(
            unfinished,
            vec![UnfinishedHandoff {
                slot: Slot(2),
                to: 1,
                attempt: 6,
                epoch: 2
            }]
        );
        o.roll_back(Slot(2)).unwrap();
        assert_eq!(o.state(Slot(2)), SlotState::Owned);
    }

    #[tokio::test]
    async fn a_fence_waits_for_admitted_events_and_refuses_new_ones() {
        let dir = tempdir();
        let (o, _, _) = Ownership::load(&dir, 0, &Ring::new(1, 16, 1)).unwrap();
        let guard = o.enter(Slot(5)).unwrap();
        o.fence(Slot(5));
        assert_eq!(o.enter(Slot(5)).err(), Some(SlotState::Fenced));
        let drained = o.drained(Slot(5), Duration::from_secs(30));
        tokio::pin!(drained);
        assert!(futures_util::poll!(&mut drained).is_pending());
        drop(guard);
        assert!(drained.await);
    }
}
