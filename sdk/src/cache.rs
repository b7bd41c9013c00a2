//! What one object instance knows of its storage under protocol 2 (docs/app-protocol.md,
//! "Protocol 2"): the committed key-value state it has seen, and the writes of the turn that is
//! running, buffered to travel with the answer (`stead-writes`).
//!
//! Pure bookkeeping: no I/O. [`crate::storage::Storage`] and [`crate::alarm::Alarm`] ask it first
//! and make calls only for what it cannot answer; the app server begins and finishes turns on it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use base64::prelude::*;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use stead_core::protocol;

/// Keys longer than this are written with a direct call, so that a limit error (413
/// `key_too_large`) reaches the caller at the call.
pub(crate) const MAX_BUFFERED_KEY: usize = 512;
/// Values larger than this are written with a direct call (413 `value_too_large` at the call),
/// and are not kept in the cache.
pub(crate) const MAX_BUFFERED_VALUE: usize = 16 << 10;
/// Batches of more keys or entries than this are direct calls (400 `batch_too_large`).
pub(crate) const MAX_BUFFERED_BATCH: usize = 128;
/// Once the buffered writes of a turn hold more key and value bytes than this, they are sent
/// with calls, so that an answer never grows by more than about this much.
pub(crate) const MAX_PENDING_BYTES: usize = 1 << 20;
/// Most SQL statements one answer may carry (the sidecar refuses more with 502 `app_failed`);
/// the SDK sends the buffered ones with calls before it buffers one more.
pub(crate) const MAX_CARRIED_SQL: usize = 128;
/// The committed entries an instance keeps, in key and value bytes; beyond it entries are
/// forgotten (and read again with a call when asked for).
pub(crate) const MAX_CACHE_BYTES: usize = 256 << 10;

/// The turn a handle belongs to has answered (or another turn has begun): the same refusal the
/// sidecar gives, `410 turn_finished`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TurnFinished;

/// What the turn knows of one key it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    Value(Bytes),
    Absent,
    /// Written with a direct call: the sidecar has it; ask it.
    Unknown,
}

/// What the keys the turn did not write are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rest {
    /// What the committed cache says.
    Committed,
    /// Absent: the turn deleted every key.
    Cleared,
    /// Unknown: a direct `delete-all` is under way.
    Unknown,
}

/// The answer to a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The value (or its absence), known without a call.
    Known(Option<Bytes>),
    /// Call the sidecar. `fill`: its answer is the committed value and may be cached.
    Ask { fill: bool },
}

/// What the event said `stead-writes` may carry besides key-value and alarm writes
/// (`stead-carry`, docs/app-protocol.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Carry {
    /// SQL statements whose result the app does not need.
    pub sql: bool,
    /// WebSocket operations.
    pub websockets: bool,
}

impl Carry {
    /// Reads the comma-separated tokens of `stead-carry` (absent: nothing); unknown tokens are
    /// ignored, whitespace around tokens too.
    pub(crate) fn parse(header: Option<&str>) -> Self {
        let mut carry = Carry::default();
        for token in header.unwrap_or_default().split(',').map(str::trim) {
            match token {
                protocol::CARRY_SQL => carry.sql = true,
                protocol::CARRY_WEBSOCKETS => carry.websockets = true,
                _ => {}
            }
        }
        carry
    }
}

/// The net key-value and alarm writes of a turn not yet sent, and its SQL statements and socket
/// operations buffered to travel with the answer: what travels as `stead-writes`. A key appears
/// at most once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Writes {
    pub delete_all: bool,
    /// Key → `Some(value)` to put, `None` to delete.
    pub entries: BTreeMap<String, Option<Bytes>>,
    /// `Some(Some(t))` sets the alarm, `Some(None)` deletes it, `None` leaves it alone.
    pub alarm: Option<Option<i64>>,
    /// SQL statements, in order: each the body of `/v1/sql/exec` (`{"sql", "params"}`).
    pub sql: Vec<Value>,
    /// WebSocket operations, in order: `{"op": "send" | "broadcast" | "close" | "attachment" |
    /// "auto_response", …}` (see [`crate::websocket`]).
    pub websockets: Vec<Value>,
}

#[derive(Serialize)]
struct WireEntry<'a> {
    key: &'a str,
    value: String,
}

#[derive(Serialize)]
struct WireAlarm {
    time_ms: Option<i64>,
}

#[derive(Serialize)]
struct WireWrites<'a> {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    delete_all: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    delete: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    put: Vec<WireEntry<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alarm: Option<WireAlarm>,
    #[serde(skip_serializing_if = "<[Value]>::is_empty")]
    sql: &'a [Value],
    #[serde(skip_serializing_if = "<[Value]>::is_empty")]
    websockets: &'a [Value],
}

impl Writes {
    pub(crate) fn is_empty(&self) -> bool {
        self.kv_is_empty() && self.sql.is_empty() && self.websockets.is_empty()
    }

    /// No key-value or alarm write.
    pub(crate) fn kv_is_empty(&self) -> bool {
        !self.delete_all && self.entries.is_empty() && self.alarm.is_none()
    }

    /// The keys to delete, in key order.
    pub(crate) fn deletes(&self) -> Vec<&str> {
        (self.entries.iter())
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.as_str())
            .collect()
    }

    /// The entries to put, in key order.
    pub(crate) fn puts(&self) -> Vec<(&str, &Bytes)> {
        (self.entries.iter())
            .filter_map(|(k, v)| Some((k.as_str(), v.as_ref()?)))
            .collect()
    }

    /// The JSON document of `stead-writes`.
    pub(crate) fn to_json(&self) -> Vec<u8> {
        let wire = WireWrites {
            delete_all: self.delete_all,
            delete: self.deletes(),
            put: (self.puts().into_iter())
                .map(|(key, v)| WireEntry {
                    key,
                    value: BASE64_STANDARD.encode(v),
                })
                .collect(),
            alarm: self.alarm.map(|time_ms| WireAlarm { time_ms }),
            sql: &self.sql,
            websockets: &self.websockets,
        };
        // Strings, numbers, booleans and JSON values only: serializing cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }
}

/// The eager state of `stead-state`: the object's whole key-value state and its alarm.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EagerState {
    pub entries: Vec<StateEntry>,
    pub alarm: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StateEntry {
    pub key: String,
    pub value: String,
}

impl EagerState {
    /// Reads the JSON at the start of an event's body: the entries and the alarm. `Err` says
    /// what is wrong.
    #[allow(clippy::type_complexity)]
    pub(crate) fn parse(json: &[u8]) -> Result<(Vec<(String, Bytes)>, Option<i64>), String> {
        let state: EagerState =
            serde_json::from_slice(json).map_err(|e| format!("it is not the state JSON: {e}"))?;
        let entries = (state.entries.into_iter())
            .map(|e| match BASE64_STANDARD.decode(&e.value) {
                Ok(v) => Ok((e.key, Bytes::from(v))),
                Err(err) => Err(format!("the value of {:?} is not base64: {err}", e.key)),
            })
            .collect::<Result<_, _>>()?;
        Ok((entries, state.alarm))
    }
}

/// Everything the running turn wrote, sent or not: what its own reads must see.
#[derive(Debug, Clone)]
struct View {
    rest: Rest,
    entries: BTreeMap<String, Slot>,
    /// `Some(t)`: the turn set (`Some`) or deleted (`None`) the alarm.
    alarm: Option<Option<i64>>,
}

/// The two kinds of buffered operations that travel with the answer besides key-value writes.
#[derive(Debug, Clone, Copy)]
enum Carried {
    Sql,
    Sockets,
}

struct TurnState {
    id: u64,
    view: View,
    pending: Writes,
    pending_bytes: usize,
    /// Bytes of the buffered SQL statements and socket operations (their JSON), apart.
    sql_bytes: usize,
    socket_bytes: usize,
    /// An alarm event: the alarm is cleared at commit unless the turn set it.
    alarm_event: bool,
}

impl TurnState {
    /// The buffered operations of `kind` and their bytes.
    fn carried(&mut self, kind: Carried) -> (&mut Vec<Value>, &mut usize) {
        match kind {
            Carried::Sql => (&mut self.pending.sql, &mut self.sql_bytes),
            Carried::Sockets => (&mut self.pending.websockets, &mut self.socket_bytes),
        }
    }
}

/// The committed state an instance has seen, and the running turn.
pub(crate) struct ObjectCache {
    /// Key → `Some(value)` or `None` (known absent).
    committed: BTreeMap<String, Option<Bytes>>,
    committed_bytes: usize,
    /// Every key of the object is in `committed` (after eager state, or a turn's delete-all).
    complete: bool,
    /// `Some(alarm)` when known.
    alarm: Option<Option<i64>>,
    turn: Option<TurnState>,
    next_turn: u64,
}

impl Default for ObjectCache {
    fn default() -> Self {
        Self {
            committed: BTreeMap::new(),
            committed_bytes: 0,
            complete: false,
            alarm: None,
            turn: None,
            next_turn: 1,
        }
    }
}

fn json_len(v: &Value) -> usize {
    v.to_string().len()
}

fn entry_bytes(key: &str, value: &Option<Bytes>) -> usize {
    key.len() + value.as_ref().map_or(0, Bytes::len)
}

impl ObjectCache {
    /// Forgets everything committed (a turn of protocol 1 wrote without telling the cache).
    pub(crate) fn forget(&mut self) {
        self.committed.clear();
        self.committed_bytes = 0;
        self.complete = false;
        self.alarm = None;
    }

    /// Takes the object's whole state from `stead-state`: every key not listed is absent.
    pub(crate) fn load_state(&mut self, entries: Vec<(String, Bytes)>, alarm: Option<i64>) {
        self.forget();
        for (k, v) in entries {
            self.committed_bytes += entry_bytes(&k, &Some(v.clone()));
            self.committed.insert(k, Some(v));
        }
        self.complete = true;
        self.alarm = Some(alarm);
        self.trim();
    }

    /// Begins a turn; the previous one, if it never finished, is dropped unsent.
    pub(crate) fn begin(&mut self, alarm_event: bool) -> u64 {
        let id = self.next_turn;
        self.next_turn += 1;
        if alarm_event {
            // The sidecar clears the firing alarm when the turn commits; until then ask it.
            self.alarm = None;
        }
        self.turn = Some(TurnState {
            id,
            view: View {
                rest: Rest::Committed,
                entries: BTreeMap::new(),
                alarm: None,
            },
            pending: Writes::default(),
            pending_bytes: 0,
            sql_bytes: 0,
            socket_bytes: 0,
            alarm_event,
        });
        id
    }

    fn turn(&self, id: u64) -> Result<&TurnState, TurnFinished> {
        self.turn
            .as_ref()
            .filter(|t| t.id == id)
            .ok_or(TurnFinished)
    }

    fn turn_mut(&mut self, id: u64) -> Result<&mut TurnState, TurnFinished> {
        self.turn
            .as_mut()
            .filter(|t| t.id == id)
            .ok_or(TurnFinished)
    }

    /// Reads `key` as turn `id` sees it.
    pub(crate) fn get(&self, id: u64, key: &str) -> Result<Lookup, TurnFinished> {
        let t = self.turn(id)?;
        Ok(match t.view.entries.get(key) {
            Some(Slot::Value(v)) => Lookup::Known(Some(v.clone())),
            Some(Slot::Absent) => Lookup::Known(None),
            Some(Slot::Unknown) => Lookup::Ask { fill: false },
            None => match t.view.rest {
                Rest::Cleared => Lookup::Known(None),
                Rest::Unknown => Lookup::Ask { fill: false },
                Rest::Committed => match self.committed.get(key) {
                    Some(v) => Lookup::Known(v.clone()),
                    None if self.complete => Lookup::Known(None),
                    None => Lookup::Ask { fill: true },
                },
            },
        })
    }

    /// Caches the committed value of `key` read by a call of turn `id` (when the turn still
    /// runs and has not written the key since).
    pub(crate) fn fill(&mut self, id: u64, key: &str, value: Option<Bytes>) {
        let Ok(t) = self.turn(id) else { return };
        if t.view.rest != Rest::Committed || t.view.entries.contains_key(key) {
            return;
        }
        if value.as_ref().is_some_and(|v| v.len() > MAX_BUFFERED_VALUE) {
            return;
        }
        self.set_committed(key.to_owned(), value);
        self.trim();
    }

    fn set_committed(&mut self, key: String, value: Option<Bytes>) {
        self.committed_bytes += entry_bytes(&key, &value);
        if let Some(old) = self.committed.insert(key.clone(), value) {
            self.committed_bytes -= entry_bytes(&key, &old);
        }
    }

    fn remove_committed(&mut self, key: &str) {
        if let Some(old) = self.committed.remove(key) {
            self.committed_bytes -= entry_bytes(key, &old);
        }
    }

    /// Forgets committed entries until they fit in [`MAX_CACHE_BYTES`].
    fn trim(&mut self) {
        while self.committed_bytes > MAX_CACHE_BYTES {
            let Some((k, v)) = self.committed.pop_first() else {
                break;
            };
            self.committed_bytes -= entry_bytes(&k, &v);
            self.complete = false;
        }
    }

    /// Buffers a put of a small entry. `Ok(true)`: the buffer is over [`MAX_PENDING_BYTES`]
    /// and should be sent now.
    pub(crate) fn put(&mut self, id: u64, key: &str, value: Bytes) -> Result<bool, TurnFinished> {
        let t = self.turn_mut(id)?;
        t.pending_bytes += key.len() + value.len();
        t.view
            .entries
            .insert(key.to_owned(), Slot::Value(value.clone()));
        t.pending.entries.insert(key.to_owned(), Some(value));
        Ok(t.pending_bytes > MAX_PENDING_BYTES)
    }

    /// Whether `key` exists as turn `id` sees it, if known without a call.
    pub(crate) fn exists(&self, id: u64, key: &str) -> Result<Option<bool>, TurnFinished> {
        Ok(match self.get(id, key)? {
            Lookup::Known(v) => Some(v.is_some()),
            Lookup::Ask { .. } => None,
        })
    }

    /// Buffers a delete of `key` when whether it exists is known; `Ok(None)` otherwise (make a
    /// direct call, see [`ObjectCache::direct_write`]).
    pub(crate) fn delete(&mut self, id: u64, key: &str) -> Result<Option<bool>, TurnFinished> {
        let Some(existed) = self.exists(id, key)? else {
            return Ok(None);
        };
        let t = self.turn_mut(id)?;
        t.pending_bytes += key.len();
        t.view.entries.insert(key.to_owned(), Slot::Absent);
        t.pending.entries.insert(key.to_owned(), None);
        Ok(Some(existed))
    }

    /// Before a direct call that writes `key`: the turn's reads of it ask the sidecar from now
    /// on, whatever becomes of the call.
    pub(crate) fn direct_write(&mut self, id: u64, key: &str) -> Result<(), TurnFinished> {
        let t = self.turn_mut(id)?;
        t.view.entries.insert(key.to_owned(), Slot::Unknown);
        Ok(())
    }

    /// After a direct call deleted `key`.
    pub(crate) fn deleted(&mut self, id: u64, key: &str) {
        if let Ok(t) = self.turn_mut(id) {
            t.view.entries.insert(key.to_owned(), Slot::Absent);
        }
    }

    /// Buffers a delete of every key when the turn knows them all, answering how many there
    /// were; `Ok(None)` otherwise (flush, then a direct call; see
    /// [`ObjectCache::direct_delete_all`]).
    pub(crate) fn delete_all(&mut self, id: u64) -> Result<Option<u64>, TurnFinished> {
        let t = self.turn(id)?;
        let exists = |s: &Slot| !matches!(s, Slot::Absent);
        if t.view.entries.values().any(|s| *s == Slot::Unknown) {
            return Ok(None);
        }
        let written = t.view.entries.values().filter(|s| exists(s)).count();
        let count = match t.view.rest {
            Rest::Cleared => written,
            Rest::Committed if self.complete => {
                let untouched = (self.committed.iter())
                    .filter(|(k, v)| v.is_some() && !t.view.entries.contains_key(*k))
                    .count();
                written + untouched
            }
            _ => return Ok(None),
        };
        let t = self.turn_mut(id)?;
        t.view.rest = Rest::Cleared;
        t.view.entries.clear();
        t.pending.delete_all = true;
        t.pending.entries.clear();
        t.pending_bytes = 0;
        Ok(Some(count as u64))
    }

    /// Before a direct `delete-all` call (after the buffer was sent).
    pub(crate) fn direct_delete_all(&mut self, id: u64) -> Result<(), TurnFinished> {
        let t = self.turn_mut(id)?;
        t.view.rest = Rest::Unknown;
        t.view.entries.clear();
        Ok(())
    }

    /// After a direct `delete-all` call succeeded.
    pub(crate) fn deleted_all(&mut self, id: u64) {
        if let Ok(t) = self.turn_mut(id) {
            t.view.rest = Rest::Cleared;
            t.view.entries.clear();
        }
    }

    /// The buffered key-value and alarm writes of turn `id` (not its SQL statements or socket
    /// operations), to send with calls. They stay buffered until [`ObjectCache::sent`]: if the
    /// turn answers meanwhile they travel with the answer too, which is harmless, since
    /// applying the same net writes twice gives the same state.
    pub(crate) fn pending(&self, id: u64) -> Result<Writes, TurnFinished> {
        let p = &self.turn(id)?.pending;
        Ok(Writes {
            delete_all: p.delete_all,
            entries: p.entries.clone(),
            alarm: p.alarm,
            sql: vec![],
            websockets: vec![],
        })
    }

    /// The writes returned by [`ObjectCache::pending`] were applied by calls.
    pub(crate) fn sent(&mut self, id: u64) {
        if let Ok(t) = self.turn_mut(id) {
            t.pending.delete_all = false;
            t.pending.entries.clear();
            t.pending.alarm = None;
            t.pending_bytes = 0;
        }
    }

    /// How many SQL statements turn `id` has buffered.
    pub(crate) fn sql_count(&self, id: u64) -> Result<usize, TurnFinished> {
        Ok(self.turn(id)?.pending.sql.len())
    }

    /// Buffers an SQL statement (the body of `/v1/sql/exec`) to travel with the answer.
    /// `Ok(true)`: the buffered statements are over [`MAX_PENDING_BYTES`] and should be sent.
    pub(crate) fn queue_sql(&mut self, id: u64, statement: Value) -> Result<bool, TurnFinished> {
        self.queue(id, Carried::Sql, statement)
    }

    /// Takes the buffered SQL statements out, to send with calls. Unlike key-value writes they
    /// leave the buffer at once: running a statement twice is not harmless.
    pub(crate) fn take_sql(&mut self, id: u64) -> Result<Vec<Value>, TurnFinished> {
        self.take(id, Carried::Sql)
    }

    /// Puts statements taken by [`ObjectCache::take_sql`] and not sent back in front of the
    /// buffer.
    pub(crate) fn restore_sql(&mut self, id: u64, unsent: Vec<Value>) {
        self.restore(id, Carried::Sql, unsent);
    }

    /// Buffers a socket operation to travel with the answer. `Ok(true)`: the buffered
    /// operations are over [`MAX_PENDING_BYTES`] and should be sent.
    pub(crate) fn queue_socket(&mut self, id: u64, op: Value) -> Result<bool, TurnFinished> {
        self.queue(id, Carried::Sockets, op)
    }

    /// Takes the buffered socket operations out, to send with calls (see
    /// [`ObjectCache::take_sql`]).
    pub(crate) fn take_sockets(&mut self, id: u64) -> Result<Vec<Value>, TurnFinished> {
        self.take(id, Carried::Sockets)
    }

    /// Puts operations taken by [`ObjectCache::take_sockets`] and not sent back in front.
    pub(crate) fn restore_sockets(&mut self, id: u64, unsent: Vec<Value>) {
        self.restore(id, Carried::Sockets, unsent);
    }

    fn queue(&mut self, id: u64, kind: Carried, item: Value) -> Result<bool, TurnFinished> {
        let (items, bytes) = self.turn_mut(id)?.carried(kind);
        *bytes += json_len(&item);
        items.push(item);
        Ok(*bytes > MAX_PENDING_BYTES)
    }

    fn take(&mut self, id: u64, kind: Carried) -> Result<Vec<Value>, TurnFinished> {
        let (items, bytes) = self.turn_mut(id)?.carried(kind);
        *bytes = 0;
        Ok(std::mem::take(items))
    }

    fn restore(&mut self, id: u64, kind: Carried, mut unsent: Vec<Value>) {
        if let Ok(t) = self.turn_mut(id) {
            let (items, bytes) = t.carried(kind);
            *bytes += unsent.iter().map(json_len).sum::<usize>();
            unsent.append(items);
            *items = unsent;
        }
    }

    /// The alarm as turn `id` sees it, if known without a call.
    pub(crate) fn alarm(&self, id: u64) -> Result<Option<Option<i64>>, TurnFinished> {
        let t = self.turn(id)?;
        Ok(t.view.alarm.or(self.alarm))
    }

    /// Caches the alarm read by a call of turn `id` (not in an alarm event: the firing alarm is
    /// cleared at its commit).
    pub(crate) fn fill_alarm(&mut self, id: u64, alarm: Option<i64>) {
        if let Ok(t) = self.turn(id)
            && t.view.alarm.is_none()
            && !t.alarm_event
        {
            self.alarm = Some(alarm);
        }
    }

    /// Buffers setting (`Some`) or deleting (`None`) the alarm.
    pub(crate) fn set_alarm(&mut self, id: u64, alarm: Option<i64>) -> Result<(), TurnFinished> {
        let t = self.turn_mut(id)?;
        t.view.alarm = Some(alarm);
        t.pending.alarm = Some(alarm);
        Ok(())
    }

    /// After a direct `alarm/delete` call.
    pub(crate) fn alarm_deleted(&mut self, id: u64) {
        if let Ok(t) = self.turn_mut(id) {
            t.view.alarm = Some(None);
        }
    }

    /// Ends turn `id`. When its answer commits, what it wrote becomes committed state and its
    /// unsent writes are returned, to travel with the answer; otherwise they are dropped.
    /// Later calls of the turn's handles get [`TurnFinished`].
    pub(crate) fn finish(&mut self, id: u64, commits: bool) -> Option<Writes> {
        if self.turn.as_ref().is_none_or(|t| t.id != id) {
            return None;
        }
        let t = self.turn.take()?;
        if !commits {
            return None;
        }
        match t.view.rest {
            Rest::Committed => {}
            Rest::Cleared => {
                self.committed.clear();
                self.committed_bytes = 0;
                self.complete = true;
            }
            Rest::Unknown => {
                self.committed.clear();
                self.committed_bytes = 0;
                self.complete = false;
            }
        }
        for (k, slot) in t.view.entries {
            match slot {
                Slot::Value(v) => self.set_committed(k, Some(v)),
                Slot::Absent => self.set_committed(k, None),
                Slot::Unknown => {
                    self.remove_committed(&k);
                    self.complete = false;
                }
            }
        }
        match t.view.alarm {
            Some(a) => self.alarm = Some(a),
            None if t.alarm_event => self.alarm = Some(None),
            None => {}
        }
        self.trim();
        Some(t.pending)
    }
}

/// A turn's handle on its instance's cache: cheap to clone, shared by the turn's
/// [`Storage`](crate::Storage) and [`Alarm`](crate::Alarm) handles.
#[derive(Clone)]
pub(crate) struct TurnCache {
    object: Arc<Mutex<ObjectCache>>,
    turn: u64,
    /// What the event said the answer may carry.
    carry: Carry,
    /// One storage operation of the turn at a time, so that the cache, the buffer and the
    /// sidecar see the turn's operations in the same order.
    ops: Arc<tokio::sync::Mutex<()>>,
}

impl TurnCache {
    /// Begins a turn on `object`, whose answer may carry what `carry` says.
    pub(crate) fn begin(object: &Arc<Mutex<ObjectCache>>, alarm_event: bool, carry: Carry) -> Self {
        let turn = lock(object).begin(alarm_event);
        Self {
            object: Arc::clone(object),
            turn,
            carry,
            ops: Arc::default(),
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.turn
    }

    pub(crate) fn carry(&self) -> Carry {
        self.carry
    }

    /// The instance's cache, locked (never across an `.await`).
    pub(crate) fn lock(&self) -> MutexGuard<'_, ObjectCache> {
        lock(&self.object)
    }

    /// Waits for the turn's previous storage operation to end.
    pub(crate) async fn op(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.ops.lock().await
    }
}

pub(crate) fn lock(object: &Mutex<ObjectCache>) -> MutexGuard<'_, ObjectCache> {
    object.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn b(s: &str) -> Bytes {
        Bytes::from(s.to_owned())
    }

    fn json_of(w: &Writes) -> Value {
        serde_json::from_slice(&w.to_json()).unwrap()
    }

    #[test]
    fn the_answer_carries_the_net_effect_of_puts_and_deletes() {
        let mut c = ObjectCache::default();
        c.load_state(vec![("a".into(), b("1")), ("b".into(), b("2"))], None);
        let t = c.begin(false);
        c.put(t, "a", b("10")).unwrap();
        c.put(t, "a", b("11")).unwrap();
        assert_eq!(c.delete(t, "b").unwrap(), Some(true));
        c.put(t, "b", b("20")).unwrap();
        c.put(t, "c", b("30")).unwrap();
        assert_eq!(c.delete(t, "c").unwrap(), Some(true));
        assert_eq!(c.delete(t, "d").unwrap(), Some(false));
        let w = c.finish(t, true).unwrap();
        assert_eq!(
            json_of(&w),
            json!({
                "delete": ["c", "d"],
                "put": [
                    {"key": "a", "value": BASE64_STANDARD.encode("11")},
                    {"key": "b", "value": BASE64_STANDARD.encode("20")},
                ],
            })
        );
        // A turn that wrote nothing carries nothing.
        let t = c.begin(false);
        assert!(c.finish(t, true).unwrap().is_empty());
    }

    #[test]
    fn delete_all_drops_earlier_writes_but_keeps_the_alarm() {
        let mut c = ObjectCache::default();
        c.load_state(vec![("a".into(), b("1"))], Some(5));
        let t = c.begin(false);
        c.put(t, "b", b("2")).unwrap();
        c.set_alarm(t, Some(9)).unwrap();
        assert_eq!(c.delete_all(t).unwrap(), Some(2));
        c.put(t, "c", b("3")).unwrap();
        assert_eq!(c.get(t, "a").unwrap(), Lookup::Known(None));
        assert_eq!(c.get(t, "c").unwrap(), Lookup::Known(Some(b("3"))));
        let w = c.finish(t, true).unwrap();
        assert_eq!(
            json_of(&w),
            json!({
                "delete_all": true,
                "put": [{"key": "c", "value": BASE64_STANDARD.encode("3")}],
                "alarm": {"time_ms": 9},
            })
        );
        // The next turn knows every key without a call.
        let t = c.begin(false);
        assert_eq!(c.get(t, "a").unwrap(), Lookup::Known(None));
        assert_eq!(c.get(t, "zzz").unwrap(), Lookup::Known(None));
        assert_eq!(c.alarm(t).unwrap(), Some(Some(9)));
    }

    #[test]
    fn a_rolled_back_turn_drops_its_buffer_and_leaves_the_cache_as_it_was() {
        let mut c = ObjectCache::default();
        c.load_state(vec![("n".into(), b("1"))], None);
        let t = c.begin(false);
        c.put(t, "n", b("2")).unwrap();
        c.set_alarm(t, Some(7)).unwrap();
        assert_eq!(c.delete_all(t).unwrap(), Some(1));
        assert_eq!(c.finish(t, false), None);
        let t = c.begin(false);
        assert_eq!(c.get(t, "n").unwrap(), Lookup::Known(Some(b("1"))));
        assert_eq!(c.alarm(t).unwrap(), Some(None));
        assert!(c.pending(t).unwrap().is_empty());
    }

    #[test]
    fn a_complete_cache_answers_every_key_and_a_partial_one_asks() {
        let mut c = ObjectCache::default();
        let t = c.begin(false);
        // Nothing known yet: ask, and the answer is committed state.
        assert_eq!(c.get(t, "n").unwrap(), Lookup::Ask { fill: true });
        c.fill(t, "n", Some(b("4")));
        c.fill(t, "gone", None);
        assert_eq!(c.get(t, "n").unwrap(), Lookup::Known(Some(b("4"))));
        assert_eq!(c.get(t, "gone").unwrap(), Lookup::Known(None));
        assert_eq!(c.get(t, "other").unwrap(), Lookup::Ask { fill: true });
        assert_eq!(c.delete_all(t).unwrap(), None, "not every key is known");
        c.finish(t, true);

        c.load_state(vec![("n".into(), b("4"))], Some(1));
        let t = c.begin(false);
        assert_eq!(c.get(t, "other").unwrap(), Lookup::Known(None));
        assert_eq!(c.exists(t, "other").unwrap(), Some(false));
        assert_eq!(c.alarm(t).unwrap(), Some(Some(1)));
    }

    #[test]
    fn direct_writes_make_the_key_a_question_for_the_sidecar() {
        let mut c = ObjectCache::default();
        c.load_state(vec![("big".into(), b("old"))], None);
        let t = c.begin(false);
        c.direct_write(t, "big").unwrap();
        assert_eq!(c.get(t, "big").unwrap(), Lookup::Ask { fill: false });
        // What a call reads of a key the turn wrote is not committed state.
        c.fill(t, "big", Some(b("new")));
        assert_eq!(c.get(t, "big").unwrap(), Lookup::Ask { fill: false });
        assert_eq!(c.delete_all(t).unwrap(), None);
        c.finish(t, true);
        let t = c.begin(false);
        assert_eq!(c.get(t, "big").unwrap(), Lookup::Ask { fill: true });
        assert_eq!(c.get(t, "never").unwrap(), Lookup::Ask { fill: true });
    }

    #[test]
    fn a_direct_delete_all_is_unknown_until_it_answers() {
        let mut c = ObjectCache::default();
        c.fill(0, "x", None); // no turn: ignored
        let t = c.begin(false);
        c.direct_delete_all(t).unwrap();
        assert_eq!(c.get(t, "a").unwrap(), Lookup::Ask { fill: false });
        c.deleted_all(t);
        assert_eq!(c.get(t, "a").unwrap(), Lookup::Known(None));
        c.finish(t, true);
        let t = c.begin(false);
        assert_eq!(c.get(t, "a").unwrap(), Lookup::Known(None));
    }

    #[test]
    fn a_finished_turn_refuses_and_cannot_change_the_cache() {
        let mut c = ObjectCache::default();
        let t1 = c.begin(false);
        c.put(t1, "k", b("1")).unwrap();
        c.finish(t1, true);
        assert_eq!(c.put(t1, "k", b("late")), Err(TurnFinished));
        assert_eq!(c.get(t1, "k"), Err(TurnFinished));
        assert_eq!(c.set_alarm(t1, Some(1)), Err(TurnFinished));
        let t2 = c.begin(false);
        // A late answer of a call made by the old turn fills nothing.
        c.fill(t1, "other", Some(b("stale")));
        c.deleted(t1, "k");
        c.sent(t1);
        assert_eq!(c.finish(t1, true), None);
        assert_eq!(c.get(t2, "k").unwrap(), Lookup::Known(Some(b("1"))));
        assert_eq!(c.get(t2, "other").unwrap(), Lookup::Ask { fill: true });
    }

    #[test]
    fn sent_writes_leave_the_buffer_but_not_the_turns_view() {
        let mut c = ObjectCache::default();
        let t = c.begin(false);
        c.put(t, "a", b("1")).unwrap();
        let w = c.pending(t).unwrap();
        assert_eq!(w.puts(), vec![("a", &b("1"))]);
        c.sent(t);
        assert!(c.pending(t).unwrap().is_empty());
        assert_eq!(c.get(t, "a").unwrap(), Lookup::Known(Some(b("1"))));
        let w = c.finish(t, true).unwrap();
        assert!(w.is_empty());
        let t = c.begin(false);
        assert_eq!(c.get(t, "a").unwrap(), Lookup::Known(Some(b("1"))));
    }

    #[test]
    fn the_buffer_asks_to_be_sent_past_its_bound() {
        let mut c = ObjectCache::default();
        let t = c.begin(false);
        let value = Bytes::from(vec![b'x'; MAX_BUFFERED_VALUE]);
        let mut asked = false;
        for i in 0..(MAX_PENDING_BYTES / MAX_BUFFERED_VALUE + 1) {
            asked = c.put(t, &format!("k{i}"), value.clone()).unwrap();
        }
        assert!(asked);
    }

    #[test]
    fn the_committed_cache_stays_under_its_bound_and_is_then_incomplete() {
        let mut c = ObjectCache::default();
        c.load_state(vec![], None);
        let value = Bytes::from(vec![b'x'; MAX_BUFFERED_VALUE]);
        let t = c.begin(false);
        for i in 0..(MAX_CACHE_BYTES / MAX_BUFFERED_VALUE + 4) {
            c.put(t, &format!("k{i:04}"), value.clone()).unwrap();
        }
        c.finish(t, true);
        assert!(c.committed_bytes <= MAX_CACHE_BYTES);
        let t = c.begin(false);
        assert_eq!(c.get(t, "k0000").unwrap(), Lookup::Ask { fill: true });
    }

    #[test]
    fn an_alarm_event_clears_the_alarm_unless_the_turn_set_one() {
        let mut c = ObjectCache::default();
        c.load_state(vec![], Some(100));
        let t = c.begin(true);
        assert_eq!(c.alarm(t).unwrap(), None, "the firing alarm is asked for");
        c.fill_alarm(t, Some(100));
        c.finish(t, true);
        let t = c.begin(false);
        assert_eq!(c.alarm(t).unwrap(), Some(None));
        c.finish(t, true);

        let t = c.begin(true);
        c.set_alarm(t, Some(200)).unwrap();
        c.finish(t, true);
        let t = c.begin(false);
        assert_eq!(c.alarm(t).unwrap(), Some(Some(200)));
    }

    #[test]
    fn carried_operations_keep_their_order_when_unsent_ones_are_put_back() {
        let mut c = ObjectCache::default();
        let t = c.begin(false);
        for i in 1..=3 {
            c.queue_sql(t, json!({"sql": i})).unwrap();
        }
        let taken = c.take_sql(t).unwrap();
        assert_eq!(c.sql_count(t).unwrap(), 0);
        c.queue_sql(t, json!({"sql": 4})).unwrap();
        // The first was sent; the two after it go back in front of the one queued since.
        c.restore_sql(t, taken[1..].to_vec());
        c.queue_socket(t, json!({"op": "send"})).unwrap();
        let w = c.finish(t, true).unwrap();
        assert_eq!(
            json_of(&w),
            json!({"sql": [{"sql": 2}, {"sql": 3}, {"sql": 4}], "websockets": [{"op": "send"}]})
        );
        // A rolled-back turn drops them.
        let t = c.begin(false);
        c.queue_sql(t, json!({"sql": 5})).unwrap();
        assert_eq!(c.finish(t, false), None);
        assert_eq!(c.queue_sql(t, json!({"sql": 6})), Err(TurnFinished));
    }

    #[test]
    fn carry_names_only_the_tokens_it_lists() {
        assert_eq!(Carry::parse(None), Carry::default());
        assert_eq!(
            Carry::parse(Some(" websockets , sql ")),
            Carry {
                sql: true,
                websockets: true
            }
        );
        assert_eq!(
            Carry::parse(Some("sql,other,")),
            Carry {
                sql: true,
                websockets: false
            }
        );
        assert_eq!(Carry::parse(Some("sqlx, web sockets")), Carry::default());
    }

    #[test]
    fn eager_state_is_parsed_from_its_json() {
        let json = br#"{"entries": [{"key": "n", "value": "NDI="}], "alarm": 17}"#;
        assert_eq!(
            EagerState::parse(json).unwrap(),
            (vec![("n".to_owned(), b("42"))], Some(17))
        );
        assert!(EagerState::parse(br#"{"entries": [{"key": "n", "value": "!"}]}"#).is_err());
        assert!(EagerState::parse(b"[]").is_err());
        assert_eq!(
            EagerState::parse(br#"{"entries": [], "alarm": null}"#).unwrap(),
            (vec![], None)
        );
    }
}
