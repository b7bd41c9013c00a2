//! Alarms: the shard's durable index of due alarms and the schedule that turns them into `alarm`
//! events in the objects' mailboxes.
//!
//! Each object's own database holds the truth (`_stead_alarm`, written in the turn's
//! transaction). The index in `shard.sqlite` says which objects may have an alarm and when, so
//! that a restarted shard knows what to wake without opening every database. It is written
//! *ahead* of the object's commit when a turn sets an alarm (so a crash between the two can only
//! leave an extra entry, never lose an alarm), and an entry is checked against the object's
//! database before its event is delivered: stale entries are dropped there.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};
use stead_core::{ClassName, ObjectId, ObjectName};
use tokio::sync::{Notify, Semaphore};

use crate::faults::{FaultPoint, Faults, volume_is_full};
use crate::metrics::Metrics;
use crate::object::{ObjectKey, ObjectRef};

/// Retries after a failed alarm: 2 s, then doubling, at most this many.
pub const MAX_RETRIES: u32 = 6;
/// Alarm events in flight at once, across all objects.
const MAX_IN_FLIGHT: usize = 64;
/// Alarms found overdue at start-up are spread over at most this long.
const STARTUP_SPREAD: Duration = Duration::from_secs(10);

/// What a committed turn did to its object's alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmChange {
    Set(i64),
    Deleted,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How a batch of index writes ended, told to each write-ahead waiting on it.
type IndexAck = Result<(), AlarmError>;

enum IndexOp {
    Upsert(ObjectRef, i64, Option<SyncSender<IndexAck>>),
    Delete(ObjectKey),
}

#[derive(Debug, Clone)]
struct Entry {
    due_ms: i64,
    retry: u32,
    object: ObjectRef,
}

#[derive(Default)]
struct Schedule {
    by_time: BTreeSet<(i64, ObjectKey)>,
    by_key: HashMap<ObjectKey, Entry>,
}

impl Schedule {
    fn put(&mut self, e: Entry) {
        let key = e.object.key();
        self.remove(&key);
        self.by_time.insert((e.due_ms, key.clone()));
        self.by_key.insert(key, e);
    }

    fn remove(&mut self, key: &ObjectKey) -> Option<Entry> {
        let old = self.by_key.remove(key)?;
        self.by_time.remove(&(old.due_ms, key.clone()));
        Some(old)
    }

    fn next_due(&self) -> Option<i64> {
        self.by_time.iter().next().map(|(t, _)| *t)
    }

    fn pop_due(&mut self, now: i64) -> Option<Entry> {
        let (t, key) = self.by_time.iter().next()?.clone();
        if t > now {
            return None;
        }
        self.remove(&key)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AlarmError {
    #[error("alarm index (shard.sqlite): {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("alarm index: {0}")]
    Io(#[from] std::io::Error),
    #[error("the alarm index thread stopped")]
    Stopped,
    #[error("the alarm index could not be written: the shard's storage volume is full")]
    VolumeFull,
    #[error("the alarm index could not be written (I/O error; see the log line before)")]
    WriteFailed,
    #[error(
        "another sidecar uses this data folder (it holds {LOCK_FILE}); stop it, or give this one its own --data-dir"
    )]
    FolderInUse,
}

/// In a shard's data folder: held locked (`flock`) by the sidecar that serves the folder, for
/// as long as it runs. Object databases are opened without SQLite's file locks (see
/// `storage::db`), so this lock is what keeps a second sidecar away from them.
pub const LOCK_FILE: &str = "shard.lock";
/// How long a start waits for the folder's lock (a sidecar of this process that is stopping).
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// The data folder's lock ([`LOCK_FILE`]), held until dropped.
pub struct FolderLock(#[allow(dead_code)] std::fs::File);

/// Takes the data folder's lock, waiting up to [`LOCK_WAIT`] for a holder that is stopping. A
/// sidecar takes it before it reads or changes anything in the folder.
pub fn lock_data_folder(data_dir: &Path) -> Result<FolderLock, AlarmError> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data_dir.join(LOCK_FILE))?;
    let started = std::time::Instant::now();
    loop {
        // SAFETY: flock(2) on a descriptor that `file` owns and keeps open.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(FolderLock(file));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err.into());
        }
        if started.elapsed() >= LOCK_WAIT {
            return Err(AlarmError::FolderInUse);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Clone)]
pub struct Alarms {
    index: std::sync::mpsc::Sender<IndexOp>,
    schedule: Arc<Mutex<Schedule>>,
    changed: Arc<Notify>,
    metrics: Metrics,
    first_retry: Duration,
}

/// What the schedule hands to the host when an alarm is due.
#[derive(Debug, Clone)]
pub struct DueAlarm {
    pub object: ObjectRef,
    pub due_ms: i64,
    pub retry: u32,
}

impl Alarms {
    /// Opens the index in `{data}/shard.sqlite`, loads it, and starts its writer thread. Alarms
    /// already overdue are spread over the next seconds rather than fired at once.
    pub fn start(
        data_dir: &Path,
        slots: u32,
        first_retry: Duration,
        metrics: Metrics,
    ) -> Result<Self, AlarmError> {
        Self::start_with_faults(data_dir, slots, first_retry, metrics, Faults::default())
    }

    /// [`Alarms::start`] with a fault injector consulted before each index commit (tests).
    pub fn start_with_faults(
        data_dir: &Path,
        slots: u32,
        first_retry: Duration,
        metrics: Metrics,
        faults: Faults,
    ) -> Result<Self, AlarmError> {
        std::fs::create_dir_all(data_dir)?;
        let lock = lock_data_folder(data_dir)?;
        Self::start_locked(lock, data_dir, slots, first_retry, metrics, faults)
    }

    /// [`Alarms::start_with_faults`] in a folder whose lock the caller already holds (the
    /// sidecar takes it first thing); the index keeps it for as long as it runs.
    pub fn start_locked(
        lock: FolderLock,
        data_dir: &Path,
        slots: u32,
        first_retry: Duration,
        metrics: Metrics,
        faults: Faults,
    ) -> Result<Self, AlarmError> {
        let conn = Connection::open(data_dir.join("shard.sqlite"))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000;
             CREATE TABLE IF NOT EXISTS alarms(
                 class TEXT NOT NULL, id TEXT NOT NULL, name TEXT, time_ms INTEGER NOT NULL,
                 PRIMARY KEY (class, id)) WITHOUT ROWID;",
        )?;
        let mut loaded = vec![];
        {
            let mut stmt =
                conn.prepare("SELECT class, id, name, time_ms FROM alarms ORDER BY time_ms")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            for row in rows {
                let (class, id, name, t) = row?;
                let (Ok(class), Ok(id)) = (ClassName::new(&class), ObjectId::parse(&id)) else {
                    continue;
                };
                let name = name.and_then(|n| ObjectName::new(&n).ok());
                loaded.push((ObjectRef::new(class, id, name, slots), t));
            }
        }
        let now = now_ms();
        let overdue = loaded.iter().filter(|(_, t)| *t <= now).count().max(1);
        let step = (STARTUP_SPREAD.as_millis() as i64 / overdue as i64).min(20);
        let mut schedule = Schedule::default();
        let mut i = 0;
        for (object, t) in loaded {
            let due_ms = if t <= now {
                i += 1;
                now + step * i
            } else {
                t
            };
            schedule.put(Entry {
                due_ms,
                retry: 0,
                object,
            });
        }
        metrics.alarms_pending.set(schedule.by_key.len() as i64);
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = IndexWriter {
            conn,
            dir: data_dir.to_path_buf(),
            faults,
            _lock: lock,
        };
        std::thread::Builder::new()
            .name("stead-alarm-index".into())
            .spawn(move || writer.run(rx))?;
        Ok(Self {
            index: tx,
            schedule: Arc::new(Mutex::new(schedule)),
            changed: Arc::new(Notify::new()),
            metrics,
            first_retry,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the schedule and keeps the pending-alarms gauge in step with it.
    fn update<R>(&self, change: impl FnOnce(&mut Schedule) -> R) -> R {
        let mut s = self.lock();
        let r = change(&mut s);
        self.metrics.alarms_pending.set(s.by_key.len() as i64);
        r
    }

    /// Records `object`'s alarm at `time_ms` in the index and waits until it is durable.
    /// Blocking: called on a storage thread just before the object's commit.
    pub fn write_ahead(&self, object: &ObjectRef, time_ms: i64) -> Result<(), AlarmError> {
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        self.index
            .send(IndexOp::Upsert(object.clone(), time_ms, Some(ack)))
            .map_err(|_| AlarmError::Stopped)?;
        done.recv().map_err(|_| AlarmError::Stopped)?
    }

    /// A turn of `object` committed `change`.
    pub fn committed(&self, object: &ObjectRef, change: AlarmChange) {
        match change {
            AlarmChange::Set(t) => self.schedule(object, t, 0),
            AlarmChange::Deleted => self.forget(&object.key()),
        }
    }

    fn schedule(&self, object: &ObjectRef, due_ms: i64, retry: u32) {
        self.update(|s| {
            s.put(Entry {
                due_ms,
                retry,
                object: object.clone(),
            })
        });
        self.changed.notify_one();
    }

    /// Takes over the alarms of objects handed to this shard: records them in the index (durably,
    /// before the slot is owned). It does not schedule them: an alarm due before the slot is
    /// owned would be delivered to a slot this shard does not own yet, and dropped; the caller
    /// schedules them ([`Alarms::reschedule`]) once it owns the slot. Blocking: call from a
    /// blocking task.
    pub fn adopt(&self, alarms: &[(ObjectRef, i64)]) -> Result<(), AlarmError> {
        let mut waits = Vec::with_capacity(alarms.len());
        for (object, time_ms) in alarms {
            let (ack, done) = std::sync::mpsc::sync_channel(1);
            self.index
                .send(IndexOp::Upsert(object.clone(), *time_ms, Some(ack)))
                .map_err(|_| AlarmError::Stopped)?;
            waits.push(done);
        }
        for done in waits {
            done.recv().map_err(|_| AlarmError::Stopped)??;
        }
        Ok(())
    }

    /// Drops every alarm of `slot` (handed to another shard) from the schedule and the index.
    pub fn forget_slot(&self, slot: stead_core::Slot) {
        let keys: Vec<ObjectKey> = self.update(|s| {
            let keys: Vec<ObjectKey> = s
                .by_key
                .values()
                .filter(|e| e.object.slot == slot)
                .map(|e| e.object.key())
                .collect();
            for k in &keys {
                s.remove(k);
            }
            keys
        });
        for k in keys {
            let _ = self.index.send(IndexOp::Delete(k));
        }
    }

    /// The object has no alarm (any more): drop it from the schedule and the index.
    pub fn forget(&self, key: &ObjectKey) {
        self.update(|s| s.remove(key));
        let _ = self.index.send(IndexOp::Delete(key.clone()));
    }

    /// The object's alarm is at `due_ms` (found when checking a stale entry): wait for it.
    pub fn reschedule(&self, object: &ObjectRef, due_ms: i64) {
        self.schedule(object, due_ms, 0);
    }

    /// The alarm failed on attempt `retry`: try again later, or report that it must be dropped.
    /// Returns the delay of the next attempt, or `None` when retries are exhausted.
    pub fn retry_after_failure(&self, object: &ObjectRef, retry: u32) -> Option<Duration> {
        if retry >= MAX_RETRIES {
            return None;
        }
        let delay = self.first_retry * 2u32.pow(retry);
        self.metrics.alarms_retried.inc();
        self.schedule(object, now_ms() + delay.as_millis() as i64, retry + 1);
        Some(delay)
    }

    /// Runs the schedule: waits for the next due alarm and hands it to `deliver`, at most
    /// `MAX_IN_FLIGHT` at a time.
    pub async fn run<F, Fut>(self, deliver: F)
    where
        F: Fn(DueAlarm) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let deliver = Arc::new(deliver);
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        loop {
            let now = now_ms();
            let due = self.update(|s| s.pop_due(now));
            if let Some(e) = due {
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    return;
                };
                let deliver = deliver.clone();
                tokio::spawn(async move {
                    deliver(DueAlarm {
                        object: e.object,
                        due_ms: e.due_ms,
                        retry: e.retry,
                    })
                    .await;
                    drop(permit);
                });
                continue;
            }
            let wait = self
                .lock()
                .next_due()
                .map(|t| Duration::from_millis((t - now).clamp(0, 60_000) as u64))
                .unwrap_or(Duration::from_secs(60));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.changed.notified() => {}
            }
        }
    }
}

/// The thread that writes the index, in batches: one transaction (and one fsync) for
/// everything queued.
struct IndexWriter {
    conn: Connection,
    dir: PathBuf,
    faults: Faults,
    /// The data folder's lock ([`LOCK_FILE`]): held while the index is written, released when
    /// the last handle on the alarms is gone.
    _lock: FolderLock,
}

impl IndexWriter {
    fn run(mut self, rx: Receiver<IndexOp>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < 1024 {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let acks: Vec<SyncSender<IndexAck>> = batch
                .iter_mut()
                .filter_map(|op| match op {
                    IndexOp::Upsert(_, _, ack) => ack.take(),
                    IndexOp::Delete(_) => None,
                })
                .collect();
            let outcome = self.write(batch).map_err(|e| {
                tracing::error!(error = %e, "alarm index write failed; its turns roll back");
                let full = e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
                    || volume_is_full(&self.dir);
                if full {
                    AlarmError::VolumeFull
                } else {
                    AlarmError::WriteFailed
                }
            });
            // Every waiting commit learns the outcome: on failure its turn rolls back rather
            // than committing an alarm the index does not know.
            for a in acks {
                let _ = a.send(match &outcome {
                    Ok(()) => Ok(()),
                    Err(AlarmError::VolumeFull) => Err(AlarmError::VolumeFull),
                    Err(_) => Err(AlarmError::WriteFailed),
                });
            }
        }
    }

    fn write(&mut self, batch: Vec<IndexOp>) -> Result<(), rusqlite::Error> {
        let tx = self.conn.transaction()?;
        {
            // Prepared once per connection (cached), not parsed again for every entry.
            let mut upsert = tx.prepare_cached(
                "INSERT OR REPLACE INTO alarms(class, id, name, time_ms) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut delete =
                tx.prepare_cached("DELETE FROM alarms WHERE class = ?1 AND id = ?2")?;
            for op in batch {
                match op {
                    IndexOp::Upsert(o, t, _) => {
                        upsert.execute(params![
                            o.class.as_str(),
                            o.id.to_hex(),
                            o.name.as_ref().map(|n| n.as_str()),
                            t
                        ])?;
                    }
                    IndexOp::Delete((class, id)) => {
                        delete.execute(params![class.as_str(), id.to_hex()])?;
                    }
                }
            }
        }
        if let Some(fault) = self.faults.at(FaultPoint::AlarmIndex) {
            // As SQLite reports a failed WAL write: ENOSPC as SQLITE_FULL, EIO as IOERR.
            let code = match fault {
                crate::faults::Fault::NoSpace => rusqlite::ffi::SQLITE_FULL,
                crate::faults::Fault::Io => rusqlite::ffi::SQLITE_IOERR_WRITE,
            };
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                Some(format!("injected fault: {}", fault.to_io_error())),
            ));
        }
        tx.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "stead-alarms-test-{}-{}",
            std::process::id(),
            ObjectId::unique().unwrap().to_hex()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn start(dir: &Path) -> Result<Alarms, AlarmError> {
        Alarms::start(dir, 16, Duration::from_secs(2), Metrics::new())
    }

    #[test]
    fn a_second_shard_on_the_same_data_folder_is_refused_until_the_first_is_gone() {
        let dir = tempdir();
        let first = start(&dir).unwrap();
        // Object databases carry no SQLite locks: the folder's lock is what keeps a second
        // sidecar from opening them.
        assert!(matches!(start(&dir), Err(AlarmError::FolderInUse)));
        drop(first);
        // The index thread lets go of the lock once the last handle is gone.
        let again = start(&dir);
        assert!(again.is_ok(), "{:?}", again.err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_batch_of_write_aheads_from_many_threads_is_durable_in_the_index() {
        let dir = tempdir();
        let alarms = start(&dir).unwrap();
        let class = ClassName::new("Counter").unwrap();
        let objects: Vec<ObjectRef> = (0..64)
            .map(|i| {
                let name = ObjectName::new(&format!("o{i}")).unwrap();
                ObjectRef::new(
                    class.clone(),
                    ObjectId::named(&class, &name),
                    Some(name),
                    16,
                )
            })
            .collect();
        std::thread::scope(|s| {
            for (i, o) in objects.iter().enumerate() {
                let alarms = alarms.clone();
                s.spawn(move || alarms.write_ahead(o, 1_000 + i as i64).unwrap());
            }
        });
        // Every acknowledged write-ahead is in shard.sqlite, read by another connection.
        let conn = Connection::open(dir.join("shard.sqlite")).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM alarms", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 64);
        let t: i64 = conn
            .query_row(
                "SELECT time_ms FROM alarms WHERE id = ?1",
                [objects[5].id.to_hex()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(t, 1_005);
        drop(alarms);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
