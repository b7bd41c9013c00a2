//! Per-object SQLite databases on a bounded pool of storage threads.
//!
//! Every object is pinned to one storage thread (by its id), which owns the object's open
//! connection. The threads are the only place SQLite runs: tokio workers never block on it. The
//! pool is bounded by `threads`, each serving many connections; the number of open databases is
//! bounded by an LRU cap. Calls of one object run in order on its thread, which is what makes the
//! turn check below airtight: a call runs only if its turn is still the object's active turn at
//! the moment it executes. Closing idle objects is background work on the same threads, behind
//! the turn work, and closing databases evicted by the cap is idle work, behind both (see
//! `lanes` and [`Shelf::insert`]).
//!
//! Group commit (DESIGN §3): consecutive turns of an object share one transaction, each inside
//! its own savepoint. [`Storage::end_turn`] keeps a turn's writes in the transaction or rolls
//! them back to the turn's savepoint; [`Storage::commit`] makes everything kept durable with one
//! COMMIT, and answers once it is. A failed commit counts in the object's failure cell, so every
//! turn that started before the failure was known is refused at its end (it may have seen the
//! lost writes).

mod barrier;
mod db;
mod error;
mod lanes;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use rusqlite::types::Value;
use tokio::sync::oneshot;

pub use crate::faults::{Fault, FaultPoint, Faults, volume_is_full};
pub use barrier::VolumeBarrier;
pub use db::{DbOptions, ListQuery, SqlBudget, SqlOutput, param_from_json};
pub use error::StorageError;

use crate::alarms::{AlarmChange, Alarms};
use crate::metrics::Metrics;
use crate::object::{ObjectKey, ObjectRef};
use db::ObjectDb;
use lanes::{Lane, Lanes};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// `synchronous=FULL`: a commit survives power loss.
    Strict,
    /// `synchronous=NORMAL`: survives a process crash; the last commits may be lost on power loss.
    Relaxed,
}

/// How a strict commit reaches the disk (decision 0012).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// Each commit fsyncs its object's WAL (SQLite's `synchronous=FULL`), a new database its
    /// file too.
    #[default]
    File,
    /// Commits are written without an fsync of their own; one `syncfs` of the data volume makes
    /// every commit written before it durable, and their replies wait for it. For a volume that
    /// holds only the shard's data: the sync writes back whatever else is on it too.
    Volume,
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub threads: usize,
    pub max_open: usize,
    pub db: DbOptions,
}

/// A turn as storage sees it: its object, its number, the object's active-turn cell, its
/// deadline (the turn timeout), at which running SQL is interrupted, and the object's count of
/// failed commits as it was when the turn started.
#[derive(Debug, Clone)]
pub struct TurnRef {
    pub object: Arc<ObjectRef>,
    pub id: u64,
    pub active: Arc<AtomicU64>,
    pub deadline: Option<Instant>,
    pub failures: Arc<Failures>,
    pub failures_seen: u64,
    /// A call of the turn reached storage (set before its check, see [`TurnRef::close`]).
    pub touched: Arc<AtomicBool>,
}

impl TurnRef {
    fn check(&self) -> Result<(), StorageError> {
        // Marked before the check: if the check passes, [`TurnRef::close`] sees the mark.
        self.touched.store(true, Ordering::SeqCst);
        if self.active.load(Ordering::SeqCst) != self.id {
            return Err(StorageError::TurnFinished);
        }
        self.check_failures()
    }

    /// Closes the turn to further calls, from outside storage; whether any call of it reached
    /// storage (then its end must run in storage; otherwise there is nothing to end there).
    pub fn close(&self) -> bool {
        let _ = self
            .active
            .compare_exchange(self.id, 0, Ordering::SeqCst, Ordering::SeqCst);
        self.touched.load(Ordering::SeqCst)
    }

    /// Refuses a turn that started before a commit of its object failed: it ran against writes
    /// that are gone.
    fn check_failures(&self) -> Result<(), StorageError> {
        // Exact here: the object's storage jobs run in turn order, so a job that runs after a
        // failure belongs to a turn after the failed one.
        if self.failures.count() != self.failures_seen {
            return Err(StorageError::EarlierCommitFailed);
        }
        Ok(())
    }
}

/// An object's failed commits and failed turn ends: every turn that ran after one (against
/// writes that are gone) must fail too.
#[derive(Debug, Default)]
pub struct Failures {
    count: AtomicU64,
    /// The id of the last failed turn end; 0 for a failed commit (every turn that started
    /// before the failure was known ran against lost writes).
    after: AtomicU64,
}

impl Failures {
    /// How many failures there were so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// A failure that invalidates the turns after turn `after` (0: all of them).
    pub fn record(&self, after: u64) {
        self.after.store(after, Ordering::SeqCst);
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether turn `turn_id`, started when the count was `seen`, ran against lost writes.
    /// Conservative when several failures happened since.
    pub fn stale(&self, seen: u64, turn_id: u64) -> bool {
        let now = self.count();
        if now == seen {
            return false;
        }
        if now - seen > 1 {
            return true;
        }
        let after = self.after.load(Ordering::SeqCst);
        self.count() != now || turn_id > after
    }
}

/// How a turn ends, as storage applies it.
#[derive(Debug, Clone, Default)]
pub struct TurnEnd {
    /// Keep the turn's writes (they commit with the group); otherwise roll back to its savepoint.
    pub keep: bool,
    /// Writes the app sent with its answer (protocol 2), applied only if the turn is kept.
    pub writes: Option<Writes>,
    /// An alarm turn: kept without touching the alarm, it clears the alarm.
    pub alarm_turn: bool,
    /// The alarm's last retry failed: delete it, in the group's transaction.
    pub drop_alarm: bool,
}

/// A turn's writes carried by the app's answer (protocol 2), already checked against the limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Writes {
    pub delete_all: bool,
    pub delete: Vec<String>,
    pub put: Vec<(String, Vec<u8>)>,
    /// `Some(Some(t))` sets the alarm, `Some(None)` deletes it.
    pub alarm: Option<Option<i64>>,
    /// SQL statements run after the other writes, in order; their results are discarded.
    pub sql: Option<CarriedSql>,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        !self.delete_all
            && self.delete.is_empty()
            && self.put.is_empty()
            && self.alarm.is_none()
            && self.sql.as_ref().is_none_or(|s| s.statements.is_empty())
    }
}

/// SQL statements a turn's answer carries, with the result limit they run under (as a call's).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CarriedSql {
    pub statements: Vec<Statement>,
    pub max_result_bytes: usize,
}

/// One SQL statement (or several without parameters) with its bound parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Value>,
}

/// An object's whole state, sent with the first event of an incarnation (protocol 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub entries: Vec<(String, Vec<u8>)>,
    pub alarm: Option<i64>,
}

/// What the object host needs of storage between and at the ends of turns: the seam that lets
/// the turn pipeline run in tests against a store whose commits the test holds and fails.
pub trait TurnStore: Send + Sync + 'static {
    /// Ends a turn (see [`TurnEnd`]); refused if a commit of the object failed since the turn
    /// started. Like `commit`, ordered among the object's operations when called, not when
    /// the future is first polled.
    fn end_turn(&self, turn: &TurnRef, end: TurnEnd) -> BoxFuture<Result<(), StorageError>>;
    /// Commits every turn kept since the last commit; answers once durable, with what they did
    /// to the alarm. A failure counts in `failures` before it is answered.
    fn commit(
        &self,
        object: Arc<ObjectRef>,
        failures: Arc<Failures>,
    ) -> BoxFuture<Result<Option<AlarmChange>, StorageError>>;
    /// Ends a turn and then commits its group, queued together: one trip to storage for the
    /// last turn of a group.
    fn end_turn_and_commit(
        &self,
        turn: &TurnRef,
        end: TurnEnd,
        failures: Arc<Failures>,
    ) -> EndAndCommit {
        let ended = self.end_turn(turn, end);
        (ended, self.commit(turn.object.clone(), failures))
    }
    /// The object's alarm, read between turns.
    fn alarm_time(&self, object: &ObjectRef) -> BoxFuture<Result<Option<i64>, StorageError>>;
    /// The object's whole state if its KV data is at most `max_bytes`.
    fn state(
        &self,
        object: &ObjectRef,
        max_bytes: usize,
    ) -> BoxFuture<Result<Option<State>, StorageError>>;
    /// Closes the object's database (hibernation); false if it is inside a transaction.
    fn close(&self, key: ObjectKey) -> BoxFuture<Result<bool, StorageError>>;
}

pub type BoxFuture<T> = futures_util::future::BoxFuture<'static, T>;

/// A turn's end and its group's commit, queued together: their outcomes, in that order.
pub type EndAndCommit = (
    BoxFuture<Result<(), StorageError>>,
    BoxFuture<Result<Option<AlarmChange>, StorageError>>,
);

type Job = Box<dyn FnOnce(&mut Shelf) + Send>;

#[derive(Clone)]
pub struct Storage {
    pool: Arc<Pool>,
    barrier: Option<VolumeBarrier>,
}

/// The storage threads' queues; the threads stop once the last [`Storage`] handle is gone.
struct Pool {
    lanes: Vec<Arc<Lanes<Job>>>,
}

impl Pool {
    fn send(&self, idx: usize, lane: Lane, job: Job) -> Result<(), StorageError> {
        self.lanes[idx]
            .push(lane, job)
            .map_err(|_| StorageError::Closed)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for l in &self.lanes {
            l.close();
        }
    }
}

impl Storage {
    pub fn start(
        config: StorageConfig,
        metrics: Metrics,
        alarms: Alarms,
    ) -> Result<Self, StorageError> {
        Self::start_with_faults(config, metrics, alarms, Faults::default())
    }

    /// [`Storage::start`] with a fault injector that the storage threads consult (tests).
    pub fn start_with_faults(
        config: StorageConfig,
        metrics: Metrics,
        alarms: Alarms,
        faults: Faults,
    ) -> Result<Self, StorageError> {
        std::fs::create_dir_all(config.data_dir.join("slots"))?;
        let threads = config.threads.max(1);
        let barrier = match (config.db.durability, config.db.sync) {
            (Durability::Strict, SyncMode::Volume) => Some(VolumeBarrier::start(
                &config.data_dir,
                faults.clone(),
                metrics.clone(),
            )?),
            _ => None,
        };
        let per_thread_open = (config.max_open / threads).max(1);
        let mut lanes = Vec::with_capacity(threads);
        for i in 0..threads {
            let queue = Arc::new(Lanes::<Job>::default());
            let jobs = queue.clone();
            let mut shelf = Shelf {
                data_dir: config.data_dir.clone(),
                opts: config.db.clone(),
                max_open: per_thread_open,
                open: HashMap::new(),
                closing: VecDeque::new(),
                lanes: queue.clone(),
                close_queued: false,
                tick: 0,
                metrics: metrics.clone(),
                alarms: alarms.clone(),
                faults: faults.clone(),
                barrier: barrier.clone(),
                unsynced: false,
            };
            std::thread::Builder::new()
                .name(format!("stead-storage-{i}"))
                .spawn(move || {
                    while let Some(job) = jobs.next() {
                        job(&mut shelf);
                    }
                })?;
            lanes.push(queue);
        }
        Ok(Self {
            pool: Arc::new(Pool { lanes }),
            barrier,
        })
    }

    /// A sync of the data volume failed (`--sync volume`): the shard takes no more writes.
    pub fn volume_failed(&self) -> bool {
        self.barrier.as_ref().is_some_and(VolumeBarrier::failed)
    }

    async fn call<R: Send + 'static>(
        &self,
        key: &ObjectKey,
        f: impl FnOnce(&mut Shelf) -> R + Send + 'static,
    ) -> Result<R, StorageError> {
        self.enqueue(key, f).await
    }

    /// Queues `f` on the object's storage thread now, not when the future is first polled: jobs
    /// of one object run in the order they were queued, and the turn pipeline relies on a
    /// commit being queued before anything the next turn does.
    fn enqueue<R: Send + 'static>(
        &self,
        key: &ObjectKey,
        f: impl FnOnce(&mut Shelf) -> R + Send + 'static,
    ) -> BoxFuture<Result<R, StorageError>> {
        self.enqueue_in(Lane::Turn, key, f)
    }

    /// [`Storage::enqueue`] in the given lane of the object's thread (see `lanes`).
    fn enqueue_in<R: Send + 'static>(
        &self,
        lane: Lane,
        key: &ObjectKey,
        f: impl FnOnce(&mut Shelf) -> R + Send + 'static,
    ) -> BoxFuture<Result<R, StorageError>> {
        let answer = self.submit(lane, key, move |shelf, tx| {
            let _ = tx.send(f(shelf));
        });
        Box::pin(answer)
    }

    /// Queues `job` on the object's thread now; it answers through the sender it is given
    /// (at once, or later: see [`Storage::enqueue_commit`]).
    fn submit<R: Send + 'static>(
        &self,
        lane: Lane,
        key: &ObjectKey,
        job: impl FnOnce(&mut Shelf, oneshot::Sender<R>) + Send + 'static,
    ) -> impl std::future::Future<Output = Result<R, StorageError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let idx = worker_index(key, self.pool.lanes.len());
        let sent = self
            .pool
            .send(idx, lane, Box::new(move |shelf| job(shelf, tx)));
        async move {
            sent?;
            rx.await.map_err(|_| StorageError::Closed)
        }
    }

    pub async fn kv_get(
        &self,
        t: &TurnRef,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let t2 = t.clone();
        self.call(&t.object.key(), move |s| {
            t2.check()?;
            match s.db_for_read(&t2.object)? {
                Some(db) => db.kv_get(&keys),
                None => Ok(vec![]),
            }
        })
        .await?
    }

    pub async fn kv_put(
        &self,
        t: &TurnRef,
        entries: Vec<(String, Vec<u8>)>,
    ) -> Result<usize, StorageError> {
        let t2 = t.clone();
        self.call(&t.object.key(), move |s| {
            t2.check()?;
            s.write(&t2.object, |db| db.kv_put(&entries))
        })
        .await?
    }

    pub async fn kv_delete(&self, t: &TurnRef, keys: Vec<String>) -> Result<usize, StorageError> {
        let t2 = t.clone();
        self.call(&t.object.key(), move |s| {
            t2.check()?;
            if s.db_for_read(&t2.object)?.is_none() {
                return Ok(0);
            }
            s.write(&t2.object, |db| db.kv_delete(&keys))
        })
        .await?
    }

    pub async fn kv_delete_all(&self, t: &TurnRef) -> Result<usize, StorageError> {
        let t2 = t.clone();
        self.call(&t.object.key(), move |s| {
            t2.check()?;
            if s.db_for_read(&t2.object)?.is_none() {
                return Ok(0);
            }
            s.write(&t2.object, |db| db.kv_delete_all())
        })
        .await?
    }

    pub async fn kv_list(
        &self,
        t: &TurnRef,
        query: ListQuery,
        max_bytes: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let t2 = t.clone();
        self.call(&t.object.key(), move |s| {
            t2.check()?;
            match s.db_for_read(&t2.object)? {
                Some(db) => db.kv_list(&query, max_bytes),
                None => Ok(vec![]),
            }
        })
        .await?
    }

    /// Runs the app's SQL, interrupted at the turn's deadline, its result bounded by
    /// `max_result_bytes` (a bigger result is refused and the call writes nothing).
    pub async fn sql_exec(
        &self,
        t: &TurnRef,
        sql: String,
        params: Vec<Value>,
        max_result_bytes: usize,
    ) -> Result<SqlOutput, StorageError> {
        let t2 = t.clone();
        let budget = SqlBudget {
            deadline: t.deadline,
            max_result_bytes,
        };
        self.call(&t.object.key(), move |s| {
            t2.check()?;
            s.sql_exec(&t2.object, &sql, &params, budget)
        })
        .await?
    }

    pub async fn alarm_get(&self, t: &TurnRef) -> Result<Option<i64>, StorageError> {
        let t2 = t.clone();
        self.call(&t.object.key(), move |s| {
            t2.check()?;
            match s.db_for_read(&t2.object)? {
                Some(db) => db.alarm_get(),
                None => Ok(None),
            }
        })
        .await?
    }

    pub async fn alarm_set(&self, t: &TurnRef, time_ms: i64) -> Result<(), StorageError> {
        let t2 = t.clone();
        self.call(&t.object.key(), move |s| {
            t2.check()?;
            s.write(&t2.object, |db| db.alarm_set(time_ms))
        })
        .await?
    }

    pub async fn alarm_delete(&self, t: &TurnRef) -> Result<bool, StorageError> {
        let t2 = t.clone();
        self.call(&t.object.key(), move |s| {
            t2.check()?;
            if s.db_for_read(&t2.object)?.is_none() {
                return Ok(false);
            }
            s.write(&t2.object, |db| db.alarm_delete())
        })
        .await?
    }

    /// The object's alarm, read between turns (to check an index entry before waking it).
    pub async fn alarm_time(&self, object: &ObjectRef) -> Result<Option<i64>, StorageError> {
        let o = object.clone();
        self.call(&object.key(), move |s| match s.db_for_read(&o)? {
            Some(db) => db.alarm_get(),
            None => Ok(None),
        })
        .await?
    }

    /// Ends a turn: see [`TurnStore::end_turn`]. Queued at once.
    pub fn end_turn(&self, t: &TurnRef, end: TurnEnd) -> BoxFuture<Result<(), StorageError>> {
        let t2 = t.clone();
        let job = self.enqueue(&t.object.key(), move |s| s.close_and_end_turn(&t2, end));
        Box::pin(async move { job.await? })
    }

    /// Commits the turns kept since the last commit: see [`TurnStore::commit`]. Queued at once.
    pub fn commit(
        &self,
        object: Arc<ObjectRef>,
        failures: Arc<Failures>,
    ) -> BoxFuture<Result<Option<AlarmChange>, StorageError>> {
        let key = object.key();
        self.enqueue_commit(&key, failures, move |s, failures| {
            s.commit_counting(&object, failures)
        })
    }

    /// Queues a job that commits (see [`Storage::enqueue`]); its answer leaves once the commit
    /// is durable: at once in `--sync file` mode (SQLite synced it), after the volume's next
    /// sync in `--sync volume` mode. A failed sync counts in `failures` before it is answered,
    /// as a failed commit does.
    fn enqueue_commit(
        &self,
        key: &ObjectKey,
        failures: Arc<Failures>,
        f: impl FnOnce(&mut Shelf, &Failures) -> Result<Option<AlarmChange>, StorageError>
        + Send
        + 'static,
    ) -> BoxFuture<Result<Option<AlarmChange>, StorageError>> {
        let answer = self.submit(Lane::Turn, key, move |shelf, tx| {
            let out = f(shelf, &failures);
            match (out, shelf.take_unsynced()) {
                (Ok(change), Some(barrier)) => barrier.after_sync(Box::new(move |synced| {
                    let out = synced.map(|()| change);
                    if out.is_err() {
                        failures.record(0);
                    }
                    let _ = tx.send(out);
                })),
                (out, _) => {
                    let _ = tx.send(out);
                }
            }
        });
        Box::pin(async move { answer.await? })
    }

    /// Ends a turn and commits it alone (a group of one).
    pub async fn finish_turn(
        &self,
        t: &TurnRef,
        commit: bool,
        alarm_turn: bool,
    ) -> Result<Option<AlarmChange>, StorageError> {
        let end = TurnEnd {
            keep: commit,
            alarm_turn,
            ..TurnEnd::default()
        };
        if let Err(e) = self.end_turn(t, end).await {
            // The turn's own end failed: nothing of it is kept; what the group held before it
            // (nothing, in a group of one) still commits.
            let _ = self.commit(t.object.clone(), t.failures.clone()).await;
            return Err(e);
        }
        self.commit(t.object.clone(), t.failures.clone()).await
    }

    /// The object's whole state if its KV data is at most `max_bytes` (keys and values).
    pub async fn state(
        &self,
        object: &ObjectRef,
        max_bytes: usize,
    ) -> Result<Option<State>, StorageError> {
        let o = object.clone();
        self.call(&object.key(), move |s| {
            let Some(db) = s.db_for_read(&o)? else {
                return Ok(Some(State {
                    entries: vec![],
                    alarm: None,
                }));
            };
            // The list budget counts base64 values: 4/3 of the raw bytes, plus the keys.
            let budget = max_bytes.saturating_mul(4) / 3 + 64;
            let entries = match db.kv_list(&ListQuery::default(), budget) {
                Ok(e) => e,
                Err(StorageError::ListTooLarge { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            let size: usize = entries.iter().map(|(k, v)| k.len() + v.len()).sum();
            if size > max_bytes {
                return Ok(None);
            }
            Ok(Some(State {
                entries,
                alarm: db.alarm_get()?,
            }))
        })
        .await?
    }

    /// A copy of the object's committed database, for handing its slot to another shard. Runs on
    /// the object's storage thread, so no turn of the object writes meanwhile; an object inside a
    /// turn answers [`Snapshot::Busy`] (its writes are copied later, once its slot is fenced).
    pub async fn snapshot(&self, object: ObjectRef) -> Result<Snapshot, StorageError> {
        self.call(&object.key(), move |s| s.snapshot(&object))
            .await?
    }

    /// Closes every open database of `slot` (its files are about to move or go). Waits for
    /// every storage thread.
    pub async fn close_slot(&self, slot: stead_core::Slot, slots: u32) -> Result<(), StorageError> {
        let mut waits = Vec::with_capacity(self.pool.lanes.len());
        for idx in 0..self.pool.lanes.len() {
            let (tx, rx) = oneshot::channel();
            self.pool.send(
                idx,
                Lane::Turn,
                Box::new(move |shelf: &mut Shelf| {
                    shelf.close_slot(slot, slots);
                    let _ = tx.send(());
                }),
            )?;
            waits.push(rx);
        }
        for rx in waits {
            rx.await.map_err(|_| StorageError::Closed)?;
        }
        Ok(())
    }

    /// Closes the object's database (hibernation). A database inside a turn stays open.
    /// Background work on the object's thread: turn work of other objects goes first (see
    /// `lanes`).
    pub async fn close(&self, key: ObjectKey) -> Result<bool, StorageError> {
        self.enqueue_in(Lane::Background, &key.clone(), move |s| s.close(&key))
            .await
    }
}

impl TurnStore for Storage {
    fn end_turn(&self, turn: &TurnRef, end: TurnEnd) -> BoxFuture<Result<(), StorageError>> {
        Storage::end_turn(self, turn, end)
    }

    fn commit(
        &self,
        object: Arc<ObjectRef>,
        failures: Arc<Failures>,
    ) -> BoxFuture<Result<Option<AlarmChange>, StorageError>> {
        Storage::commit(self, object, failures)
    }

    fn end_turn_and_commit(
        &self,
        turn: &TurnRef,
        end: TurnEnd,
        failures: Arc<Failures>,
    ) -> EndAndCommit {
        let t2 = turn.clone();
        let (ended_tx, ended_rx) = oneshot::channel();
        let job = self.enqueue_commit(&turn.object.key(), failures, move |s, failures| {
            let _ = ended_tx.send(s.close_and_end_turn(&t2, end));
            s.commit_counting(&t2.object, failures)
        });
        (
            Box::pin(async move { ended_rx.await.map_err(|_| StorageError::Closed)? }),
            job,
        )
    }

    fn alarm_time(&self, object: &ObjectRef) -> BoxFuture<Result<Option<i64>, StorageError>> {
        let (s, o) = (self.clone(), object.clone());
        Box::pin(async move { Storage::alarm_time(&s, &o).await })
    }

    fn state(
        &self,
        object: &ObjectRef,
        max_bytes: usize,
    ) -> BoxFuture<Result<Option<State>, StorageError>> {
        let (s, o) = (self.clone(), object.clone());
        Box::pin(async move { Storage::state(&s, &o, max_bytes).await })
    }

    fn close(&self, key: ObjectKey) -> BoxFuture<Result<bool, StorageError>> {
        let s = self.clone();
        Box::pin(async move { Storage::close(&s, key).await })
    }
}

/// An object's database as a slot hand-off copies it.
#[derive(Debug)]
pub enum Snapshot {
    /// No database: the object was never written (or was deleted).
    Missing,
    /// A turn of the object is open: copy it again once the slot is fenced.
    Busy,
    /// The committed database file, the object's alarm and its name.
    Copied {
        bytes: Vec<u8>,
        alarm: Option<i64>,
        name: Option<String>,
    },
}

fn worker_index(key: &ObjectKey, n: usize) -> usize {
    let b = key.1.as_bytes();
    // Bytes 8..16: independent of the slot bytes, so one slot's objects spread over threads.
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[8..16]);
    (u64::from_le_bytes(x) % n as u64) as usize
}

/// How many of a thread's `max_open` databases may wait to close after their eviction: an
/// eighth, at most 16 (a thread of 512, the default's share, keeps up to 496 in use). With fewer
/// than 8 per thread every eviction closes inline.
fn closing_headroom(max_open: usize) -> usize {
    (max_open / 8).min(16)
}

/// What one storage thread owns: its open databases.
struct Shelf {
    data_dir: PathBuf,
    opts: DbOptions,
    /// At most this many databases are open on this thread, those waiting to close included.
    max_open: usize,
    open: HashMap<ObjectKey, (ObjectDb, u64)>,
    /// Evicted databases that are still open, oldest first: an idle job of this thread
    /// closes each (see [`Shelf::insert`]); an access before that keeps it open.
    closing: VecDeque<ObjectKey>,
    /// This thread's queues, for the idle job that closes evicted databases.
    lanes: Arc<Lanes<Job>>,
    /// That job is queued (one at a time: it queues itself again while databases wait).
    close_queued: bool,
    tick: u64,
    metrics: Metrics,
    alarms: Alarms,
    faults: Faults,
    /// `--sync volume` in strict mode: commits wait for the volume's next sync.
    barrier: Option<VolumeBarrier>,
    /// The last job committed a transaction that only the next volume sync makes durable.
    unsynced: bool,
}

impl Shelf {
    /// The barrier that the last job's commit must wait for, if it must (clears the mark).
    fn take_unsynced(&mut self) -> Option<VolumeBarrier> {
        if std::mem::take(&mut self.unsynced) {
            self.barrier.clone()
        } else {
            None
        }
    }

    fn touch(&mut self, key: &ObjectKey) -> Option<&mut ObjectDb> {
        if !self.closing.is_empty() {
            // Accessed again before its close ran: it stays open.
            self.closing.retain(|k| k != key);
        }
        self.tick += 1;
        let tick = self.tick;
        self.open.get_mut(key).map(|(db, t)| {
            *t = tick;
            db
        })
    }

    /// Opens `db` in the shelf. At most `max_open` databases stay open: past that the least
    /// recently used one closes first, inline. Closing a database costs a checkpoint with its
    /// syncs, so below that an eviction only marks the database for closing: a job of this
    /// thread's idle lane closes it when no other work waits (`lanes`), off the path of the turn
    /// that opened this one, when the thread has no turn work queued (a busy thread would only
    /// move the close onto another turn's path). [`closing_headroom`] bounds how many wait.
    fn insert(&mut self, key: ObjectKey, db: ObjectDb) {
        while self.open.len() >= self.max_open {
            if !self.close_evicted() && !self.evict_lru_now() {
                break;
            }
        }
        // Room for one in use (the new one is not in the shelf yet, so it is never the victim).
        let live_max = self.max_open - closing_headroom(self.max_open);
        // Deferring a close pays only if the thread will be idle before long: with turn work
        // queued behind this job (a busy shard) it closes now, as the turn that needed the room.
        let defer = !self.lanes.turn_work_waits();
        while self.open.len().saturating_sub(self.closing.len()) >= live_max {
            let Some(victim) = self.lru_victim() else {
                break;
            };
            if defer {
                self.closing.push_back(victim);
            } else {
                self.evict(&victim);
            }
        }
        self.tick += 1;
        self.open.insert(key, (db, self.tick));
        self.metrics.objects_opened.inc();
        self.metrics.objects_open.inc();
        self.queue_close();
    }

    /// Queues the idle job that closes one evicted database, unless it is queued or nothing
    /// waits; the job queues itself again while databases wait.
    fn queue_close(&mut self) {
        if self.close_queued || self.closing.is_empty() {
            return;
        }
        let job: Job = Box::new(|shelf: &mut Shelf| {
            shelf.close_queued = false;
            shelf.close_evicted();
            shelf.queue_close();
        });
        // Refused only when shutting down: the shelf closes everything when its thread ends.
        self.close_queued = self.lanes.push(Lane::Idle, job).is_ok();
    }

    /// The least recently used database that is neither inside a turn nor already evicted.
    fn lru_victim(&self) -> Option<ObjectKey> {
        self.open
            .iter()
            .filter(|(k, (db, _))| !db.in_tx() && !self.closing.contains(k))
            .min_by_key(|(_, (_, t))| *t)
            .map(|(k, _)| k.clone())
    }

    /// Closes the oldest evicted database that waits to close; false if none waits.
    fn close_evicted(&mut self) -> bool {
        let Some(key) = self.closing.pop_front() else {
            return false;
        };
        // Never inside a turn: a turn touches its database first, which takes it off the list.
        if self.open.get(&key).is_some_and(|(db, _)| !db.in_tx()) {
            self.evict(&key);
        }
        true
    }

    /// Closes the least recently used database now; false if every open one is inside a turn.
    fn evict_lru_now(&mut self) -> bool {
        match self.lru_victim() {
            Some(victim) => {
                self.evict(&victim);
                true
            }
            None => false,
        }
    }

    /// Closes a database the cap evicted.
    fn evict(&mut self, key: &ObjectKey) {
        self.forget(key);
        self.metrics.objects_evicted.inc();
    }

    /// Takes the object's database out of the shelf (dropping it closes it).
    fn forget(&mut self, key: &ObjectKey) -> Option<ObjectDb> {
        let (db, _) = self.open.remove(key)?;
        self.closing.retain(|k| k != key);
        self.metrics.objects_open.dec();
        Some(db)
    }

    /// A full volume and a database at its size limit both answer SQLITE_FULL (and a full
    /// volume can also surface as an I/O error): the volume tells them apart.
    fn refine(&self, e: StorageError) -> StorageError {
        match e {
            StorageError::DatabaseFull | StorageError::Io if volume_is_full(&self.data_dir) => {
                StorageError::StorageFull
            }
            e => e,
        }
    }

    fn db_for_read(&mut self, obj: &ObjectRef) -> Result<Option<&mut ObjectDb>, StorageError> {
        let key = obj.key();
        if !self.open.contains_key(&key) {
            match ObjectDb::open_existing(obj, &self.data_dir, &self.opts, &self.faults)
                .map_err(|e| self.refine(e))?
            {
                Some(db) => self.insert(key.clone(), db),
                None => return Ok(None),
            }
        }
        match self.touch(&key) {
            Some(db) => {
                db.usable()?;
                Ok(Some(db))
            }
            None => Ok(None),
        }
    }

    fn db_for_write(&mut self, obj: &ObjectRef) -> Result<&mut ObjectDb, StorageError> {
        let key = obj.key();
        if self.db_for_read(obj)?.is_none() {
            let db = ObjectDb::create(obj, &self.data_dir, &self.opts, &self.faults)
                .map_err(|e| self.refine(e))?;
            self.insert(key.clone(), db);
        }
        let db = self
            .touch(&key)
            .ok_or_else(|| StorageError::Internal("database vanished".into()))?;
        db.begin_write(obj)?;
        Ok(db)
    }

    /// Runs the app's SQL (a call's, or a statement its answer carries) as one write call.
    fn sql_exec(
        &mut self,
        obj: &ObjectRef,
        sql: &str,
        params: &[Value],
        budget: SqlBudget,
    ) -> Result<SqlOutput, StorageError> {
        if self.db_for_read(obj)?.is_none() {
            // No database yet: SQL that only reads runs on an empty scratch database, so
            // reading creates nothing.
            let mut scratch = db::scratch_connection()?;
            if ObjectDb::sql_is_read_only(&scratch, sql) {
                return db::sql_exec_scratch(&mut scratch, sql, params, budget);
            }
        }
        self.write(obj, |db| db.sql_exec(sql, params, budget))
    }

    fn write<R>(
        &mut self,
        obj: &ObjectRef,
        call: impl FnOnce(&mut ObjectDb) -> Result<R, StorageError>,
    ) -> Result<R, StorageError> {
        let result = self.db_for_write(obj).and_then(|db| db.write_call(call));
        result.map_err(|e| self.refine(e))
    }

    /// Closes the turn to its calls (those queued behind this job find it over), then ends it.
    fn close_and_end_turn(&mut self, t: &TurnRef, end: TurnEnd) -> Result<(), StorageError> {
        let _ = t
            .active
            .compare_exchange(t.id, 0, Ordering::AcqRel, Ordering::Acquire);
        self.end_turn(t, end)
    }

    /// Commits the object's group; a failure counts in `failures` before it is answered.
    fn commit_counting(
        &mut self,
        obj: &ObjectRef,
        failures: &Failures,
    ) -> Result<Option<AlarmChange>, StorageError> {
        let out = self.commit_group(obj);
        if out.is_err() {
            failures.record(0);
        }
        out
    }

    /// Ends the turn `t` in its object's transaction (see [`TurnEnd`]). A kept turn whose
    /// carried writes or alarm clearing fail is rolled back to its savepoint and the error
    /// returned: nothing of it commits with the group.
    fn end_turn(&mut self, t: &TurnRef, end: TurnEnd) -> Result<(), StorageError> {
        let obj = &t.object;
        if let Err(e) = t.check_failures() {
            self.end_open_turn(obj, false);
            return Err(e);
        }
        let result = if end.keep {
            let kept = self.keep_turn(obj, t.deadline, &end);
            if kept.is_err() {
                // The app answered the next turns against this one's writes, which are gone.
                t.failures.record(t.id);
            }
            kept
        } else {
            self.end_open_turn(obj, false);
            Ok(())
        };
        if end.drop_alarm && !end.keep {
            // The alarm's last retry failed: it is deleted, in a savepoint of its own.
            let dropped = match self.db_for_read(obj) {
                Ok(Some(_)) => self.write(obj, |db| db.alarm_delete().map(|_| ())),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            match dropped {
                Ok(()) => {
                    if let Some((db, _)) = self.open.get_mut(&obj.key())
                        && let Err(e) = db.end_turn(true)
                    {
                        tracing::error!(error = %e, "deleting an alarm after its last retry failed");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "deleting an alarm after its last retry failed");
                    self.end_open_turn(obj, false);
                }
            }
        }
        result
    }

    /// Keeps the running turn in the transaction, after applying what ends it; on failure rolls
    /// it back to its savepoint.
    fn keep_turn(
        &mut self,
        obj: &ObjectRef,
        deadline: Option<Instant>,
        end: &TurnEnd,
    ) -> Result<(), StorageError> {
        if let Err(e) = self.apply_end(obj, deadline, end) {
            let e = self.refine(e);
            self.end_open_turn(obj, false);
            return Err(e);
        }
        match self.open.get_mut(&obj.key()) {
            Some((db, _)) => db.end_turn(true).map_err(|e| self.refine(e)),
            None => Ok(()),
        }
    }

    /// Applies what ends a kept turn: its carried writes (KV, alarm, then SQL, whose statements
    /// run under the turn's `deadline`), then the clearing of a finished alarm.
    fn apply_end(
        &mut self,
        obj: &ObjectRef,
        deadline: Option<Instant>,
        end: &TurnEnd,
    ) -> Result<(), StorageError> {
        if let Some(w) = &end.writes {
            if w.delete_all && self.db_for_read(obj)?.is_some() {
                self.write(obj, |db| db.kv_delete_all().map(|_| ()))?;
            }
            if !w.delete.is_empty() && self.db_for_read(obj)?.is_some() {
                self.write(obj, |db| db.kv_delete(&w.delete).map(|_| ()))?;
            }
            if !w.put.is_empty() {
                self.write(obj, |db| db.kv_put(&w.put).map(|_| ()))?;
            }
            match w.alarm {
                Some(Some(t)) => self.write(obj, |db| db.alarm_set(t))?,
                Some(None) if self.db_for_read(obj)?.is_some() => {
                    self.write(obj, |db| db.alarm_delete().map(|_| ()))?
                }
                _ => {}
            }
            if let Some(carried) = &w.sql {
                let budget = SqlBudget {
                    deadline,
                    max_result_bytes: carried.max_result_bytes,
                };
                for st in &carried.statements {
                    self.sql_exec(obj, &st.sql, &st.params, budget)?;
                }
            }
        }
        if end.alarm_turn {
            let untouched = self
                .open
                .get(&obj.key())
                .is_none_or(|(db, _)| db.turn_alarm_change().is_none());
            if untouched && self.db_for_read(obj)?.is_some() {
                // The alarm ran and the handler set no new one: it is done.
                self.write(obj, |db| db.alarm_delete().map(|_| ()))?;
            }
        }
        Ok(())
    }

    /// Rolls the object's running turn back to its savepoint (never fails: what goes wrong is
    /// logged, and a transaction that could not be rolled back is lost, so the group fails).
    fn end_open_turn(&mut self, obj: &ObjectRef, keep: bool) {
        if let Some((db, _)) = self.open.get_mut(&obj.key())
            && let Err(e) = db.end_turn(keep)
        {
            tracing::debug!(error = %e, "a turn ended with an error");
        }
    }

    /// Commits the object's open transaction (every turn kept since the last commit). Every
    /// way the commit can fail rolls the whole transaction back here, so nothing of a failed
    /// group is ever committed by a later one.
    fn commit_group(&mut self, obj: &ObjectRef) -> Result<Option<AlarmChange>, StorageError> {
        match self.commit(obj) {
            Ok(change) => Ok(change),
            Err(e) => {
                let e = self.refine(e);
                tracing::error!(error = %e, "commit failed; its turns roll back");
                self.abandon(obj);
                if e.is_disk_failure() {
                    // After a failed write the connection's state is in doubt: close it; the
                    // next event reopens the object from what is on disk.
                    self.forget(&obj.key());
                }
                Err(e)
            }
        }
    }

    fn commit(&mut self, obj: &ObjectRef) -> Result<Option<AlarmChange>, StorageError> {
        let key = obj.key();
        let Some((db, _)) = self.open.get_mut(&key) else {
            return Ok(None);
        };
        if !db.in_tx() {
            return Ok(None);
        }
        db.usable()?;
        if self.barrier.as_ref().is_some_and(VolumeBarrier::failed) {
            // The volume failed a sync: nothing written since can be trusted to reach it.
            return Err(StorageError::VolumeFailed);
        }
        let change = db.alarm_change();
        if let Some(AlarmChange::Set(t)) = change {
            // Write-ahead: the index learns of the alarm before the object commits it, so a
            // crash in between leaves an extra index entry (checked before waking), never a lost
            // alarm. If the index cannot be written, the turn rolls back.
            self.alarms.write_ahead(obj, t)?;
        }
        let Some((db, _)) = self.open.get_mut(&key) else {
            return Ok(None);
        };
        let started = Instant::now();
        if !db.commit()? {
            // The turn created the database but wrote nothing: leave nothing on disk.
            if let Some(db) = self.forget(&key) {
                db.discard()?;
            }
            return Ok(None);
        }
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.unsynced = self.barrier.is_some();
        // Between groups the object's pages go back to the allocator (they are read again, from
        // the OS's cache, by the next turn that needs them): an open object that waits holds
        // little more than its connection and WAL index.
        if let Some((db, _)) = self.open.get(&key) {
            db.release_memory();
        }
        Ok(change)
    }

    /// Rolls the object's open turn back, whatever state it is in: deletes the database if the
    /// turn created it, and closes a connection whose rollback failed (the next event reopens
    /// the object from what is on disk, where the turn was never committed). Never fails: what
    /// goes wrong here is logged.
    fn abandon(&mut self, obj: &ObjectRef) {
        let key = obj.key();
        let Some((db, _)) = self.open.get_mut(&key) else {
            return;
        };
        let created = db.created_in_tx();
        let keep = match db.rollback() {
            Ok(keep) => keep,
            Err(e) => {
                tracing::error!(error = %e, "rollback failed; closing the object's database");
                false
            }
        };
        if keep {
            return;
        }
        if let Some(db) = self.forget(&key)
            && created
            && let Err(e) = db.discard()
        {
            tracing::error!(error = %e, "deleting the database of a rolled-back creation failed");
        }
    }

    fn snapshot(&mut self, obj: &ObjectRef) -> Result<Snapshot, StorageError> {
        if let Some((db, _)) = self.open.get(&obj.key()) {
            if db.in_tx() {
                return Ok(Snapshot::Busy);
            }
            return db.snapshot();
        }
        match ObjectDb::open_existing(obj, &self.data_dir, &self.opts, &self.faults)? {
            None => Ok(Snapshot::Missing),
            Some(db) => db.snapshot(),
        }
    }

    fn close_slot(&mut self, slot: stead_core::Slot, slots: u32) {
        let keys: Vec<ObjectKey> = self
            .open
            .keys()
            .filter(|(_, id)| id.slot(slots) == slot)
            .cloned()
            .collect();
        for k in keys {
            if let Some(db) = self.forget(&k)
                && db.in_tx()
            {
                tracing::error!("closing a database inside a turn for a slot hand-off");
            }
        }
    }

    fn close(&mut self, key: &ObjectKey) -> bool {
        match self.open.get(key) {
            Some((db, _)) if !db.in_tx() => {
                self.forget(key);
                self.metrics.objects_hibernated.inc();
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::db::tests::{obj, tempdir};
    use super::*;

    /// One shelf, played by the test itself: nothing runs unless the test runs it.
    struct Rig {
        dir: PathBuf,
        shelf: Shelf,
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    impl Rig {
        fn new(max_open: usize) -> Rig {
            let dir = tempdir();
            let metrics = Metrics::new();
            let alarms =
                Alarms::start(&dir, 16, std::time::Duration::from_secs(2), metrics.clone())
                    .unwrap();
            let shelf = Shelf {
                data_dir: dir.clone(),
                opts: DbOptions {
                    durability: Durability::Strict,
                    sync: SyncMode::File,
                    max_database_bytes: 1 << 30,
                },
                max_open,
                open: HashMap::new(),
                closing: VecDeque::new(),
                lanes: Arc::new(Lanes::default()),
                close_queued: false,
                tick: 0,
                metrics,
                alarms,
                faults: Faults::default(),
                barrier: None,
                unsynced: false,
            };
            Rig { dir, shelf }
        }

        /// Writes `value` under "v" in object `name` and commits it.
        fn put(&mut self, name: &str, value: &[u8]) {
            let o = obj(name);
            self.shelf
                .write(&o, |db| db.kv_put(&[("v".into(), value.to_vec())]))
                .unwrap();
            self.shelf.end_turn_kept(&o);
            self.shelf.commit_group(&o).unwrap();
        }

        /// Writes "x" in objects o0, o1, … o{n-1}, in that order.
        fn put_objects(&mut self, n: usize) {
            for i in 0..n {
                self.put(&format!("o{i}"), b"x");
            }
        }

        fn get(&mut self, name: &str) -> Option<Vec<u8>> {
            let o = obj(name);
            let db = self.shelf.db_for_read(&o).unwrap()?;
            db.kv_get(&["v".into()])
                .unwrap()
                .into_iter()
                .next()
                .map(|(_, v)| v)
        }

        fn is_open(&self, name: &str) -> bool {
            self.shelf.open.contains_key(&obj(name).key())
        }

        /// Runs the idle lane's close jobs queued so far (leaving turn jobs queued).
        fn run_queued_closes(&mut self) {
            while let Some(job) = self.shelf.lanes.try_next_idle() {
                job(&mut self.shelf);
            }
        }

        /// Runs the jobs queued so far, as the thread does when it is idle.
        fn run_queued(&mut self) -> usize {
            let mut ran = 0;
            while let Some(job) = self.shelf.lanes.try_next() {
                job(&mut self.shelf);
                ran += 1;
            }
            ran
        }
    }

    impl Shelf {
        fn end_turn_kept(&mut self, obj: &ObjectRef) {
            if let Some((db, _)) = self.open.get_mut(&obj.key()) {
                db.end_turn(true).unwrap();
            }
        }
    }

    #[test]
    fn an_eviction_closes_the_database_later_in_an_idle_job() {
        // 16 per thread: 2 may wait to close, so 14 stay in use.
        let mut rig = Rig::new(16);
        rig.put_objects(16);
        // o0 and o1, the least recently used, wait to close; nothing has closed yet.
        assert_eq!(rig.shelf.open.len(), 16);
        let waiting: Vec<ObjectKey> = rig.shelf.closing.iter().cloned().collect();
        assert_eq!(waiting, vec![obj("o0").key(), obj("o1").key()]);
        assert_eq!(rig.shelf.metrics.objects_evicted.get(), 0);

        assert_eq!(rig.run_queued(), 2);
        assert!(!rig.is_open("o0") && !rig.is_open("o1"));
        assert_eq!(rig.shelf.open.len(), 14);
        assert_eq!(rig.shelf.metrics.objects_evicted.get(), 2);
        assert_eq!(rig.shelf.metrics.objects_open.get(), 14);
        // Closed, not lost: read back from disk.
        assert_eq!(rig.get("o0").as_deref(), Some(&b"x"[..]));
    }

    #[test]
    fn a_database_used_before_its_close_runs_stays_open() {
        let mut rig = Rig::new(16);
        rig.put_objects(15);
        assert_eq!(rig.shelf.closing.len(), 1, "o0 waits to close");
        let opened = rig.shelf.metrics.objects_opened.get();

        // A turn of o0 writes before the idle job runs: it keeps its connection.
        rig.put("o0", b"y");
        assert!(rig.is_open("o0"));
        assert_eq!(
            rig.shelf.metrics.objects_opened.get(),
            opened,
            "not reopened"
        );
        rig.run_queued();
        assert!(rig.is_open("o0"), "its close did not run");
        assert_eq!(rig.get("o0").as_deref(), Some(&b"y"[..]));
        assert_eq!(rig.shelf.metrics.objects_evicted.get(), 0);
    }

    #[test]
    fn without_a_chance_to_run_idle_jobs_evictions_close_inline_within_the_cap() {
        let mut rig = Rig::new(16);
        for i in 0..100 {
            rig.put(&format!("o{i}"), b"x");
            assert!(rig.shelf.open.len() <= 16, "{} open", rig.shelf.open.len());
        }
        assert_eq!(rig.shelf.open.len(), 16);
        assert_eq!(rig.shelf.metrics.objects_evicted.get(), 84);
        // One close job is queued at a time (it queues itself again while databases wait), not
        // one per eviction: two jobs, two closes.
        assert_eq!(rig.run_queued(), 2);
        assert_eq!(rig.shelf.open.len(), 14);
        for i in [0, 50, 99] {
            assert_eq!(rig.get(&format!("o{i}")).as_deref(), Some(&b"x"[..]));
        }
    }

    #[test]
    fn a_thread_with_turn_work_queued_closes_evictions_inline() {
        let mut rig = Rig::new(16);
        let waiting: Job = Box::new(|_| {});
        rig.shelf.lanes.push(Lane::Turn, waiting).unwrap();
        rig.put_objects(15);
        assert!(rig.shelf.closing.is_empty());
        assert!(!rig.is_open("o0"));
        assert_eq!(rig.shelf.open.len(), 14);
        assert_eq!(rig.shelf.metrics.objects_evicted.get(), 1);
    }

    #[test]
    fn a_database_opened_while_every_other_is_inside_a_turn_stays_open_past_the_cap() {
        for queued in [false, true] {
            let mut rig = Rig::new(4);
            rig.put("old", b"1");
            if queued {
                let waiting: Job = Box::new(|_| {});
                rig.shelf.lanes.push(Lane::Turn, waiting).unwrap();
            }
            // Four objects inside their turns fill the cap; "old" is evicted to make room.
            for i in 0..4 {
                let o = obj(&format!("busy{i}"));
                rig.shelf
                    .write(&o, |db| db.kv_put(&[("v".into(), b"x".to_vec())]))
                    .unwrap();
            }
            rig.run_queued_closes();
            assert!(!rig.is_open("old"));
            // Nothing can be closed now: "old" is reopened anyway, past the cap, with its data.
            assert_eq!(
                rig.get("old").as_deref(),
                Some(&b"1"[..]),
                "queued: {queued}"
            );
            rig.put("old", b"2");
            assert_eq!(rig.get("old").as_deref(), Some(&b"2"[..]));
            assert_eq!(rig.shelf.open.len(), 5);
        }
    }

    #[test]
    fn a_small_cap_closes_every_eviction_inline() {
        let mut rig = Rig::new(4);
        rig.put_objects(6);
        assert_eq!(rig.shelf.open.len(), 4);
        assert!(rig.shelf.closing.is_empty());
        assert_eq!(rig.run_queued(), 0);
        assert_eq!(rig.shelf.metrics.objects_evicted.get(), 2);
    }

    #[test]
    fn a_database_waiting_to_close_is_closed_by_hibernation_or_a_slot_hand_off() {
        let mut rig = Rig::new(16);
        rig.put_objects(16);
        let o0 = obj("o0").key();
        assert!(rig.shelf.close(&o0));
        assert_eq!(rig.shelf.closing.len(), 1, "o0 is off the list");
        let o1 = obj("o1");
        rig.shelf.close_slot(o1.id.slot(4096), 4096);
        assert!(!rig.is_open("o1"));
        assert!(
            rig.shelf
                .closing
                .iter()
                .all(|k| rig.shelf.open.contains_key(k))
        );
        rig.run_queued();
        assert_eq!(
            rig.shelf.metrics.objects_evicted.get(),
            0,
            "nothing left to evict"
        );
    }
}
