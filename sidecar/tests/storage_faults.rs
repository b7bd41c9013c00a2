//! Fault injection under storage, in-process: the real storage threads, real SQLite files in a
//! temporary folder and the real alarm index, with ENOSPC and EIO injected (through the
//! `Faults` seam) at each point where a turn can fail. For every point and fault: the turn rolls
//! back, the error is the documented JSON 5xx, the object recovers once the fault is cleared,
//! nothing acknowledged is lost and nothing refused appears later.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use stead_core::{ClassName, ObjectId, ObjectName};
use stead_sidecar::alarms::Alarms;
use stead_sidecar::error::ApiError;
use stead_sidecar::metrics::Metrics;
use stead_sidecar::object::ObjectRef;
use stead_sidecar::storage::{
    DbOptions, Durability, Fault, FaultPoint, Faults, Storage, StorageConfig, StorageError,
    SyncMode, TurnRef,
};

/// Every call of these tests ends within this (a hung storage thread fails the test instead of
/// hanging it).
const BOUND: Duration = Duration::from_secs(30);

struct Rig {
    dir: PathBuf,
    faults: Faults,
    storage: Storage,
    next_turn: u64,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn object(name: &str) -> Arc<ObjectRef> {
    let class = ClassName::new("Counter").unwrap();
    let name = ObjectName::new(name).unwrap();
    Arc::new(ObjectRef::new(
        class.clone(),
        ObjectId::named(&class, &name),
        Some(name),
        16,
    ))
}

impl Rig {
    fn start(max_database_bytes: u64) -> Rig {
        Self::start_with(max_database_bytes, SyncMode::File)
    }

    fn start_with(max_database_bytes: u64, sync: SyncMode) -> Rig {
        let dir = std::env::temp_dir().join(format!(
            "stead-faults-{}-{}",
            std::process::id(),
            ObjectId::unique().unwrap().to_hex()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let faults = Faults::default();
        let metrics = Metrics::new();
        let alarms = Alarms::start_with_faults(
            &dir,
            16,
            Duration::from_secs(2),
            metrics.clone(),
            faults.clone(),
        )
        .unwrap();
        let storage = Storage::start_with_faults(
            StorageConfig {
                data_dir: dir.clone(),
                // One thread: a stuck statement would block every other object.
                threads: 1,
                max_open: 64,
                db: DbOptions {
                    durability: Durability::Strict,
                    sync,
                    max_database_bytes,
                },
            },
            metrics,
            alarms,
            faults.clone(),
        )
        .unwrap();
        Rig {
            dir,
            faults,
            storage,
            next_turn: 1,
        }
    }

    fn turn(&mut self, obj: &Arc<ObjectRef>, deadline: Option<Instant>) -> TurnRef {
        let id = self.next_turn;
        self.next_turn += 1;
        TurnRef {
            object: obj.clone(),
            id,
            active: Arc::new(AtomicU64::new(id)),
            deadline,
            failures: Arc::default(),
            failures_seen: 0,
            touched: Default::default(),
        }
    }

    /// One increment turn of the counter, as an app that ignores the errors of its calls and
    /// asks to commit anyway (the worst case for storage). Returns whether it was acknowledged
    /// (every call and the commit succeeded), and the first error.
    async fn increment(&mut self, obj: &Arc<ObjectRef>, set_alarm: bool) -> Outcome {
        let t = self.turn(obj, None);
        let mut first_err = None;
        let n = match bounded(self.storage.kv_get(&t, vec!["n".into()])).await {
            Ok(found) => found.first().map_or(0, |(_, v)| decode(v)),
            Err(e) => {
                first_err.get_or_insert(e);
                0
            }
        };
        let put = bounded(
            self.storage
                .kv_put(&t, vec![("n".into(), (n + 1).to_string().into_bytes())]),
        )
        .await;
        if let Err(e) = put {
            first_err.get_or_insert(e);
        }
        if set_alarm {
            // An hour ahead: it must never fire during the test, only exist or not.
            let at = now_ms() + 3_600_000;
            if let Err(e) = bounded(self.storage.alarm_set(&t, at)).await {
                first_err.get_or_insert(e);
            }
        }
        let finish = bounded(self.storage.finish_turn(&t, true, false)).await;
        let acked = first_err.is_none() && finish.is_ok();
        if let Err(e) = finish {
            first_err.get_or_insert(e);
        }
        Outcome {
            acked,
            error: first_err,
        }
    }

    /// The counter's value as committed (read in a turn of its own, rolled back).
    async fn value(&mut self, obj: &Arc<ObjectRef>) -> u64 {
        let t = self.turn(obj, None);
        let found = bounded(self.storage.kv_get(&t, vec!["n".into()]))
            .await
            .unwrap();
        bounded(self.storage.finish_turn(&t, false, false))
            .await
            .unwrap();
        found.first().map_or(0, |(_, v)| decode(v))
    }

    async fn alarm(&mut self, obj: &Arc<ObjectRef>) -> Option<i64> {
        let t = self.turn(obj, None);
        let a = bounded(self.storage.alarm_get(&t)).await.unwrap();
        bounded(self.storage.finish_turn(&t, false, false))
            .await
            .unwrap();
        a
    }

    /// Closes the object's database, so the next call reopens it from disk.
    async fn reopen(&self, obj: &Arc<ObjectRef>) {
        assert!(bounded(self.storage.close(obj.key())).await.unwrap());
    }

    /// Alarm index entries of the object, read from `shard.sqlite` itself.
    fn index_entries(&self, obj: &ObjectRef) -> i64 {
        let conn = rusqlite::Connection::open_with_flags(
            self.dir.join("shard.sqlite"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        conn.query_row(
            "SELECT count(*) FROM alarms WHERE id = ?1",
            [obj.id.to_hex()],
            |r| r.get(0),
        )
        .unwrap()
    }
}

struct Outcome {
    acked: bool,
    error: Option<StorageError>,
}

fn decode(v: &[u8]) -> u64 {
    std::str::from_utf8(v).unwrap().parse().unwrap()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("a storage call did not end: a storage thread is stuck")
}

/// What a fault must look like to a client or an app: the documented status and code, and a
/// message that names no file.
fn assert_answer(e: StorageError, fault: Fault, dir: &Path, what: &str) {
    let api = ApiError::from(e);
    let (status, code) = match fault {
        Fault::NoSpace => (507, "storage_full"),
        Fault::Io => (500, "storage_error"),
    };
    assert_eq!(
        (api.status.as_u16(), api.code),
        (status, code),
        "{what}: {}",
        api.message
    );
    assert!(
        !api.message.contains(dir.to_str().unwrap()) && !api.message.contains(".sqlite"),
        "{what}: the message leaks a path: {}",
        api.message
    );
    if fault == Fault::NoSpace {
        assert!(api.message.contains("full"), "{what}: {}", api.message);
    }
    assert!(
        !api.message.contains("rollback") && !api.message.contains("no transaction"),
        "{what}: a symptom instead of the cause: {}",
        api.message
    );
}

/// The whole matrix for one point and fault: an existing object and a new one, two turns while
/// the fault holds (so a refused turn cannot ride along with a later one), then recovery.
async fn fault_case(point: FaultPoint, fault: Fault) {
    let what = format!("{point:?}/{fault:?}");
    let mut rig = Rig::start(10 << 30);
    let old = object("existing");
    let new = object("new");
    let alarm_turns = point == FaultPoint::AlarmIndex;

    let mut acked = 0;
    for _ in 0..2 {
        assert!(rig.increment(&old, false).await.acked, "{what}: warm-up");
        acked += 1;
    }
    if point == FaultPoint::Open {
        rig.reopen(&old).await;
    }

    rig.faults.set(point, fault);
    for round in 0..2 {
        let out = rig.increment(&old, alarm_turns).await;
        assert!(
            !out.acked,
            "{what}: round {round} was acknowledged under a fault"
        );
        let e = out.error.expect("a refused turn has an error");
        assert_answer(e, fault, &rig.dir, &what);

        let out = rig.increment(&new, alarm_turns).await;
        assert!(
            !out.acked,
            "{what}: a new object was acknowledged under a fault"
        );
        assert_answer(out.error.unwrap(), fault, &rig.dir, &what);
        assert!(
            !new.database_path(&rig.dir).exists(),
            "{what}: a failed creation left a file"
        );
        // A turn that only asks to commit nothing, under the fault: it must not carry the
        // refused writes in with it.
        let t = rig.turn(&old, None);
        let _ = bounded(rig.storage.finish_turn(&t, true, false)).await;
    }
    rig.faults.clear(point);

    // Recovery: the same objects work again, on their own.
    assert_eq!(
        rig.value(&old).await,
        acked,
        "{what}: refused writes appeared"
    );
    assert_eq!(
        rig.alarm(&old).await,
        None,
        "{what}: a refused alarm appeared"
    );
    assert_eq!(
        rig.index_entries(&old),
        0,
        "{what}: a refused alarm is indexed"
    );
    let out = rig.increment(&old, alarm_turns).await;
    assert!(out.acked, "{what}: no recovery: {:?}", out.error);
    acked += 1;
    assert!(rig.increment(&new, false).await.acked, "{what}: new object");
    assert_eq!(rig.value(&new).await, 1, "{what}");
    if alarm_turns {
        assert!(
            rig.alarm(&old).await.is_some(),
            "{what}: the alarm was lost"
        );
        assert_eq!(rig.index_entries(&old), 1, "{what}");
    }
    // And on disk, as a restarted shard would find it.
    rig.reopen(&old).await;
    assert_eq!(rig.value(&old).await, acked, "{what}: after reopening");
    leftovers_are_none(&rig.dir);
}

/// No empty database files anywhere under the data folder.
fn leftovers_are_none(dir: &Path) {
    let mut stack = vec![dir.join("slots")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(
                    !(name.ends_with(".sqlite") && meta.len() == 0),
                    "empty database file left: {name}"
                );
            }
        }
    }
}

#[tokio::test]
async fn enospc_when_opening_rolls_back_and_recovers() {
    fault_case(FaultPoint::Open, Fault::NoSpace).await;
}

#[tokio::test]
async fn eio_when_opening_rolls_back_and_recovers() {
    fault_case(FaultPoint::Open, Fault::Io).await;
}

#[tokio::test]
async fn enospc_on_write_rolls_back_and_recovers() {
    fault_case(FaultPoint::Write, Fault::NoSpace).await;
}

#[tokio::test]
async fn eio_on_write_rolls_back_and_recovers() {
    fault_case(FaultPoint::Write, Fault::Io).await;
}

#[tokio::test]
async fn enospc_at_commit_rolls_back_and_recovers() {
    fault_case(FaultPoint::Commit, Fault::NoSpace).await;
}

#[tokio::test]
async fn eio_at_commit_rolls_back_and_recovers() {
    fault_case(FaultPoint::Commit, Fault::Io).await;
}

#[tokio::test]
async fn a_full_alarm_index_rolls_the_turn_back_and_nothing_is_committed_later() {
    fault_case(FaultPoint::AlarmIndex, Fault::NoSpace).await;
}

#[tokio::test]
async fn a_failing_alarm_index_rolls_the_turn_back_and_nothing_is_committed_later() {
    fault_case(FaultPoint::AlarmIndex, Fault::Io).await;
}

/// `--sync volume`: commits are acknowledged after the volume's sync; once a sync fails, the
/// turns it covered fail, and so does every later commit (the disk is in doubt until the process
/// restarts), while what was acknowledged before stays.
#[tokio::test]
async fn a_failed_volume_sync_fails_its_turns_and_every_later_commit() {
    let mut rig = Rig::start_with(10 << 30, SyncMode::Volume);
    let a = object("synced");
    for _ in 0..3 {
        assert!(rig.increment(&a, true).await.acked);
    }
    assert!(!rig.storage.volume_failed());
    rig.reopen(&a).await;
    assert_eq!(rig.value(&a).await, 3);
    assert!(rig.alarm(&a).await.is_some());

    rig.faults.set(FaultPoint::Sync, Fault::Io);
    let failed = rig.increment(&a, false).await;
    assert!(!failed.acked);
    assert!(
        matches!(failed.error, Some(StorageError::VolumeFailed)),
        "{:?}",
        failed.error
    );
    assert!(rig.storage.volume_failed());
    let answer = ApiError::from(StorageError::VolumeFailed);
    assert_eq!(answer.status, http::StatusCode::SERVICE_UNAVAILABLE);

    // Clearing the fault does not make the volume trusted again: nothing commits any more,
    // on this object or a new one.
    rig.faults.clear_all();
    for name in ["synced", "fresh"] {
        let o = object(name);
        let later = rig.increment(&o, false).await;
        assert!(!later.acked, "{name} committed after a failed sync");
        assert!(
            matches!(later.error, Some(StorageError::VolumeFailed)),
            "{name}: {:?}",
            later.error
        );
    }
}

#[tokio::test]
async fn the_size_limit_stays_database_full_and_keeps_what_was_acknowledged() {
    let mut rig = Rig::start(256 << 10);
    let obj = object("big");
    assert!(rig.increment(&obj, false).await.acked);
    let t = rig.turn(&obj, None);
    let e = bounded(
        rig.storage
            .kv_put(&t, vec![("blob".into(), vec![7u8; 1 << 20])]),
    )
    .await
    .unwrap_err();
    let api = ApiError::from(e);
    assert_eq!((api.status.as_u16(), api.code), (413, "database_full"));
    // SQLite rolled the turn's transaction back with the statement: the turn cannot commit
    // (and says why, without "cannot rollback" noise); the object goes on.
    let e = bounded(rig.storage.finish_turn(&t, true, false))
        .await
        .unwrap_err();
    assert!(matches!(e, StorageError::DatabaseFull), "{e}");
    assert!(rig.increment(&obj, false).await.acked);
    assert_eq!(rig.value(&obj).await, 2);
}

#[tokio::test]
async fn an_unopenable_database_answers_without_its_path_and_recovers() {
    let mut rig = Rig::start(10 << 30);
    let obj = object("blocked");
    // A directory where the database file belongs: SQLite cannot open it (its error names the
    // path; the answer must not).
    let path = obj.database_path(&rig.dir);
    std::fs::create_dir_all(&path).unwrap();
    let out = rig.increment(&obj, false).await;
    assert!(!out.acked);
    assert_answer(out.error.unwrap(), Fault::Io, &rig.dir, "unopenable");
    std::fs::remove_dir(&path).unwrap();
    assert!(rig.increment(&obj, false).await.acked);
    assert_eq!(rig.value(&obj).await, 1);
}

const ENDLESS: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";

#[tokio::test]
async fn endless_sql_is_interrupted_at_the_turn_deadline_and_the_thread_is_free_again() {
    let mut rig = Rig::start(10 << 30);
    let obj = object("slow");
    let other = object("bystander");
    assert!(rig.increment(&obj, false).await.acked);

    // The turn writes, then runs a statement that never ends on its own.
    let t = rig.turn(&obj, Some(Instant::now() + Duration::from_millis(500)));
    bounded(rig.storage.kv_put(&t, vec![("n".into(), b"100".to_vec())]))
        .await
        .unwrap();
    let e = bounded(rig.storage.sql_exec(&t, ENDLESS.into(), vec![], 1 << 20))
        .await
        .unwrap_err();
    let api = ApiError::from(e);
    assert_eq!((api.status.as_u16(), api.code), (504, "turn_timeout"));
    // An app that asks to commit anyway: the interrupted turn is rolled back.
    assert!(
        bounded(rig.storage.finish_turn(&t, true, false))
            .await
            .is_err()
    );
    // The storage thread (the only one) serves other objects again.
    assert!(rig.increment(&other, false).await.acked);
    assert_eq!(rig.value(&obj).await, 1);

    // Read-only SQL of an object with no database runs on a scratch database: interrupted too.
    let fresh = object("fresh");
    let t = rig.turn(&fresh, Some(Instant::now() + Duration::from_millis(300)));
    let e = bounded(rig.storage.sql_exec(&t, ENDLESS.into(), vec![], 1 << 20))
        .await
        .unwrap_err();
    assert!(matches!(e, StorageError::Deadline), "{e}");
    bounded(rig.storage.finish_turn(&t, false, false))
        .await
        .unwrap();
}

/// The peak resident memory of this process, from /proc.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test]
async fn an_sql_result_over_the_limit_is_refused_without_being_built_and_writes_nothing() {
    let mut rig = Rig::start(10 << 30);
    let obj = object("sql");
    let limit = 1 << 20;
    let t = rig.turn(&obj, None);
    bounded(rig.storage.sql_exec(
        &t,
        "CREATE TABLE t(x); INSERT INTO t VALUES (1)".into(),
        vec![],
        limit,
    ))
    .await
    .unwrap();
    bounded(rig.storage.finish_turn(&t, true, false))
        .await
        .unwrap();

    let before = peak_rss_bytes();
    let t = rig.turn(&obj, None);
    for sql in [
        // One huge value: SQLite itself is not allowed to build it.
        "INSERT INTO t VALUES (2); SELECT zeroblob(200000000)",
        // Many small rows: counted while they are produced.
        "INSERT INTO t VALUES (3); WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 10000000) SELECT x, 'some text' FROM c",
    ] {
        let e = bounded(rig.storage.sql_exec(&t, sql.into(), vec![], limit))
            .await
            .unwrap_err();
        let api = ApiError::from(e);
        assert_eq!(
            (api.status.as_u16(), api.code),
            (413, "sql_result_too_large"),
            "{sql}: {}",
            api.message
        );
        assert!(api.message.contains(&limit.to_string()), "{}", api.message);
    }
    // The refused calls wrote nothing (their savepoints rolled back); the turn still works.
    let out = bounded(
        rig.storage
            .sql_exec(&t, "SELECT count(*) FROM t".into(), vec![], limit),
    )
    .await
    .unwrap();
    assert_eq!(out.rows, vec![vec![serde_json::json!(1)]]);
    bounded(rig.storage.finish_turn(&t, true, false))
        .await
        .unwrap();
    let grown = peak_rss_bytes().saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "peak memory grew by {grown} bytes for results refused at {limit}"
    );
}

/// Group commit on the real storage: consecutive turns of one object share a transaction, each
/// in its own savepoint, and one commit.
mod group {
    use super::*;
    use std::sync::atomic::Ordering;
    use stead_sidecar::storage::{Failures, TurnEnd, Writes};

    struct Cell {
        active: Arc<AtomicU64>,
        failures: Arc<Failures>,
        next: u64,
    }

    impl Cell {
        fn new() -> Self {
            Cell {
                active: Arc::new(AtomicU64::new(0)),
                failures: Arc::default(),
                next: 1000,
            }
        }

        /// A turn of the object, started knowing `failures_seen` failed commits.
        fn turn(&mut self, obj: &Arc<ObjectRef>, failures_seen: u64) -> TurnRef {
            self.next += 1;
            self.active.store(self.next, Ordering::Release);
            TurnRef {
                object: obj.clone(),
                id: self.next,
                active: self.active.clone(),
                deadline: None,
                failures: self.failures.clone(),
                failures_seen,
                touched: Default::default(),
            }
        }
    }

    fn keep() -> TurnEnd {
        TurnEnd {
            keep: true,
            ..TurnEnd::default()
        }
    }

    async fn put(rig: &Rig, t: &TurnRef, k: &str) {
        bounded(rig.storage.kv_put(t, vec![(k.into(), b"1".to_vec())]))
            .await
            .unwrap();
    }

    async fn keys(rig: &mut Rig, obj: &Arc<ObjectRef>) -> Vec<String> {
        let t = rig.turn(obj, None);
        let all = bounded(rig.storage.kv_list(&t, Default::default(), 1 << 20))
            .await
            .unwrap();
        bounded(rig.storage.finish_turn(&t, false, false))
            .await
            .unwrap();
        all.into_iter().map(|(k, _)| k).collect()
    }

    #[tokio::test]
    async fn a_rolled_back_turn_inside_a_group_leaves_its_neighbours_writes() {
        let mut rig = Rig::start(10 << 30);
        let obj = object("group");
        let mut cell = Cell::new();
        let t1 = cell.turn(&obj, 0);
        put(&rig, &t1, "a").await;
        bounded(rig.storage.end_turn(&t1, keep())).await.unwrap();
        let t2 = cell.turn(&obj, 0);
        put(&rig, &t2, "b").await;
        bounded(rig.storage.end_turn(&t2, TurnEnd::default()))
            .await
            .unwrap();
        // The third turn writes only through its answer (protocol 2).
        let t3 = cell.turn(&obj, 0);
        let carried = TurnEnd {
            writes: Some(Writes {
                put: vec![("c".into(), b"1".to_vec())],
                ..Writes::default()
            }),
            ..keep()
        };
        bounded(rig.storage.end_turn(&t3, carried)).await.unwrap();
        bounded(rig.storage.commit(obj.clone(), cell.failures.clone()))
            .await
            .unwrap();
        assert_eq!(keys(&mut rig, &obj).await, ["a", "c"]);
    }

    #[tokio::test]
    async fn a_failed_group_commit_loses_the_whole_group_and_refuses_turns_started_before() {
        let mut rig = Rig::start(10 << 30);
        let obj = object("group-fail");
        let mut cell = Cell::new();
        let t0 = cell.turn(&obj, 0);
        put(&rig, &t0, "before").await;
        bounded(rig.storage.end_turn(&t0, keep())).await.unwrap();
        bounded(rig.storage.commit(obj.clone(), cell.failures.clone()))
            .await
            .unwrap();
        for k in ["a", "b"] {
            let t = cell.turn(&obj, 0);
            put(&rig, &t, k).await;
            bounded(rig.storage.end_turn(&t, keep())).await.unwrap();
        }
        rig.faults.set(FaultPoint::Commit, Fault::Io);
        let e = bounded(rig.storage.commit(obj.clone(), cell.failures.clone()))
            .await
            .unwrap_err();
        rig.faults.clear_all();
        assert_eq!(ApiError::from(e).status.as_u16(), 500);
        assert_eq!(cell.failures.count(), 1);

        // A turn that started before the failure was known ran against the lost writes: its
        // calls and its end are refused.
        let stale = cell.turn(&obj, 0);
        let e = bounded(rig.storage.kv_get(&stale, vec!["a".into()]))
            .await
            .unwrap_err();
        assert!(matches!(e, StorageError::EarlierCommitFailed), "{e}");
        let e = bounded(rig.storage.end_turn(&stale, keep()))
            .await
            .unwrap_err();
        assert_eq!(ApiError::from(e).code, "commit_failed");
        // The next turn sees none of the group's writes.
        assert_eq!(keys(&mut rig, &obj).await, ["before"]);
    }
}
