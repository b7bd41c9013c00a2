//! One object's SQLite database: opening and creating it, the KV table, the app's SQL, and the
//! turn's transaction. Synchronous; only ever used on a storage worker thread.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine as _;
use rusqlite::fallible_iterator::FallibleIterator as _;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Batch, Connection, OpenFlags, StatementStatus, params};
use serde_json::json;

use super::{Durability, StorageError, SyncMode};
use crate::alarms::AlarmChange;
use crate::faults::{Fault, FaultPoint, Faults};
use crate::object::ObjectRef;

/// SQLite page cache per open database, in KiB: small, because a shard holds thousands.
const CACHE_KIB: i64 = 512;

/// The SQLite VFS of object databases: the unix VFS without file locks. SQLite's locking unix
/// VFS keeps every locked file of the process in one list, searched linearly under a global
/// mutex on every open (twice: `findReusableFd` and `findInodeInfo`); with thousands of objects
/// open that search was the largest single cost of creating and opening an object (issue 10).
/// The locks protected nothing the sidecar needs: each object database is opened by one
/// connection only (the storage thread that owns the object), in exclusive locking mode with
/// the WAL index in heap memory, and one sidecar owns a data folder (`shard.lock`, taken by
/// the alarm index at start-up).
const OBJECT_VFS: &std::ffi::CStr = c"unix-none";

/// Options that hold for every database of the shard.
#[derive(Debug, Clone)]
pub struct DbOptions {
    pub durability: Durability,
    pub sync: SyncMode,
    pub max_database_bytes: u64,
}

impl DbOptions {
    /// Strict durability with an fsync per file (not left to the volume's sync).
    fn fsyncs_files(&self) -> bool {
        self.durability == Durability::Strict && self.sync == SyncMode::File
    }
}

/// How often (in SQLite VM steps) a running statement checks the turn's deadline.
const DEADLINE_CHECK_STEPS: i32 = 10_000;

/// What the app's SQL may cost: the turn's deadline and the size of its result.
#[derive(Debug, Clone, Copy)]
pub struct SqlBudget {
    pub deadline: Option<Instant>,
    pub max_result_bytes: usize,
}

/// Why the open transaction can no longer commit: SQLite rolled it back under the turn (after
/// an I/O error), or a statement was interrupted at the deadline. Every later call of the turn
/// fails the same way and its end rolls back, so nothing of the turn is committed piecemeal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lost {
    DatabaseFull,
    StorageFull,
    Io,
    Deadline,
}

impl Lost {
    fn of(e: &StorageError) -> Self {
        match e {
            StorageError::DatabaseFull => Lost::DatabaseFull,
            StorageError::StorageFull => Lost::StorageFull,
            StorageError::Deadline => Lost::Deadline,
            _ => Lost::Io,
        }
    }

    fn error(self) -> StorageError {
        match self {
            Lost::DatabaseFull => StorageError::DatabaseFull,
            Lost::StorageFull => StorageError::StorageFull,
            Lost::Io => StorageError::Io,
            Lost::Deadline => StorageError::Deadline,
        }
    }
}

/// What the app asked the KV list call for.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub prefix: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub limit: Option<u64>,
    pub reverse: bool,
}

/// The answer to one SQL exec call.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SqlOutput {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<serde_json::Value>>,
    pub rows_read: u64,
    pub rows_written: u64,
}

pub struct ObjectDb {
    conn: Connection,
    path: PathBuf,
    /// A turn's write transaction is open.
    in_tx: bool,
    /// The open transaction created this database file: a rollback deletes the file again, so a
    /// turn that never committed leaves nothing on disk.
    created_in_tx: bool,
    /// A call of the open transaction wrote something.
    dirty: bool,
    /// What the open transaction did to the object's alarm.
    alarm_change: Option<AlarmChange>,
    name_recorded: bool,
    /// The open transaction can no longer commit (see [`Lost`]).
    lost: Option<Lost>,
    /// The running turn's savepoint inside the transaction (group commit: consecutive turns
    /// share one transaction, each in its own savepoint).
    turn: TurnState,
    faults: Faults,
}

/// The running turn inside the group's transaction.
#[derive(Debug, Default)]
struct TurnState {
    /// `SAVEPOINT stead_turn` is open.
    open: bool,
    /// A call of the turn wrote something.
    dirty: bool,
    /// What the turn did to the alarm.
    alarm: Option<AlarmChange>,
    /// The turn can no longer commit, though the transaction lives on (a statement was
    /// interrupted at the turn's deadline): the turn's end rolls back to its savepoint.
    lost: Option<Lost>,
}

impl ObjectDb {
    /// Opens the object's database if it exists on disk.
    pub fn open_existing(
        obj: &ObjectRef,
        data_dir: &Path,
        opts: &DbOptions,
        faults: &Faults,
    ) -> Result<Option<Self>, StorageError> {
        let path = obj.database_path(data_dir);
        if !path.exists() {
            return Ok(None);
        }
        if let Some(f) = faults.at(FaultPoint::Open) {
            return Err(f.to_io_error().into());
        }
        let conn = Connection::open_with_flags_and_vfs(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            OBJECT_VFS,
        )?;
        configure(&conn, opts)?;
        let committed: bool = conn.query_row(
            "SELECT count(*) = 2 FROM sqlite_master WHERE name IN ('_stead_kv', '_stead_meta')",
            [],
            |r| r.get(0),
        )?;
        if !committed {
            // A crash between creating the file and the first commit: the object was never
            // written. Remove the empty file so that reading it creates nothing.
            let db = Self {
                conn,
                path,
                in_tx: false,
                created_in_tx: false,
                dirty: false,
                alarm_change: None,
                name_recorded: true,
                lost: None,
                turn: TurnState::default(),
                faults: faults.clone(),
            };
            db.discard()?;
            return Ok(None);
        }
        let name_recorded = obj.name.is_none()
            || conn
                .query_row("SELECT 1 FROM _stead_meta WHERE key = 'name'", [], |_| {
                    Ok(())
                })
                .is_ok();
        Ok(Some(Self {
            conn,
            path,
            in_tx: false,
            created_in_tx: false,
            dirty: false,
            alarm_change: None,
            name_recorded,
            lost: None,
            turn: TurnState::default(),
            faults: faults.clone(),
        }))
    }

    /// Creates the object's database, inside an open transaction that the turn commits. A
    /// creation that fails leaves no file behind.
    pub fn create(
        obj: &ObjectRef,
        data_dir: &Path,
        opts: &DbOptions,
        faults: &Faults,
    ) -> Result<Self, StorageError> {
        let path = obj.database_path(data_dir);
        let dir = path
            .parent()
            .ok_or_else(|| StorageError::Internal("database path has no parent".into()))?;
        fs::create_dir_all(dir)?;
        let created = Self::create_in(obj, path.clone(), dir, opts, faults);
        if created.is_err() {
            // The connection is closed by now: remove what it may have left (a 0-byte file).
            if let Err(e) = remove_files(&path) {
                tracing::error!(error = %e, "removing a database whose creation failed");
            }
        }
        created
    }

    fn create_in(
        obj: &ObjectRef,
        path: PathBuf,
        dir: &Path,
        opts: &DbOptions,
        faults: &Faults,
    ) -> Result<Self, StorageError> {
        let written = write_new_database(&path, dir, opts)?;
        let conn = Connection::open_with_flags_and_vfs(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            OBJECT_VFS,
        )?;
        if let Some(f) = faults.at(FaultPoint::Open) {
            return Err(f.to_io_error().into());
        }
        configure(&conn, opts)?;
        if !written && opts.fsyncs_files() {
            // A new file is durable only once its directory entry is.
            fs::File::open(dir)?.sync_all()?;
        }
        let mut db = Self {
            conn,
            path,
            in_tx: false,
            created_in_tx: false,
            dirty: false,
            alarm_change: None,
            name_recorded: true,
            lost: None,
            turn: TurnState::default(),
            faults: faults.clone(),
        };
        db.begin()?;
        db.created_in_tx = true;
        // `_stead_meta` is created here, in the turn's transaction, not in the image: a file
        // without it is one whose creating turn never committed (see `open_existing`). A file
        // written from the image has the other two tables already; one found on disk may not.
        db.conn.execute_batch(if written {
            "CREATE TABLE IF NOT EXISTS _stead_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;"
        } else {
            "CREATE TABLE IF NOT EXISTS _stead_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS _stead_kv(key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS _stead_alarm(one INTEGER PRIMARY KEY CHECK (one = 1), time_ms INTEGER NOT NULL);"
        })?;
        let mut meta = vec![
            ("class", obj.class.to_string()),
            ("id", obj.id.to_hex()),
            ("created_ms", now_ms().to_string()),
        ];
        if let Some(name) = &obj.name {
            meta.push(("name", name.to_string()));
        }
        // One statement for every row: each statement is parsed anew on a new connection.
        let rows = vec!["(?, ?)"; meta.len()].join(", ");
        db.conn.execute(
            &format!("INSERT OR IGNORE INTO _stead_meta(key, value) VALUES {rows}"),
            rusqlite::params_from_iter(meta.iter().flat_map(|(k, v)| [*k, v.as_str()])),
        )?;
        Ok(db)
    }

    /// The committed database as one file (the WAL checkpointed into it), its alarm and name. Only
    /// between turns.
    pub fn snapshot(&self) -> Result<super::Snapshot, StorageError> {
        if self.in_tx {
            return Err(StorageError::Internal(
                "snapshot of a database inside a turn".into(),
            ));
        }
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let bytes = fs::read(&self.path)?;
        let name = self
            .conn
            .query_row(
                "SELECT value FROM _stead_meta WHERE key = 'name'",
                [],
                |r| r.get::<_, String>(0),
            )
            .ok();
        Ok(super::Snapshot::Copied {
            bytes,
            alarm: self.alarm_get()?,
            name,
        })
    }

    pub fn in_tx(&self) -> bool {
        self.in_tx
    }

    /// Frees the connection's cached pages (best effort; never inside a transaction).
    pub fn release_memory(&self) {
        if !self.in_tx
            && let Err(e) = self.conn.release_memory()
        {
            tracing::debug!(error = %e, "releasing an object's page cache failed");
        }
    }

    /// The open transaction was created with the database (a rollback deletes it).
    pub fn created_in_tx(&self) -> bool {
        self.created_in_tx
    }

    /// Fails if the open transaction can no longer commit: every call of its turn fails then.
    pub fn usable(&self) -> Result<(), StorageError> {
        match self.lost.or(self.turn.lost) {
            Some(l) => Err(l.error()),
            None => Ok(()),
        }
    }

    fn begin(&mut self) -> Result<(), StorageError> {
        self.usable()?;
        if !self.in_tx {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.in_tx = true;
        }
        Ok(())
    }

    /// Makes sure the turn's write transaction is open; records the name the object was reached
    /// by if the database does not know it yet.
    pub fn begin_write(&mut self, obj: &ObjectRef) -> Result<(), StorageError> {
        self.begin()?;
        if !self.name_recorded {
            if let Some(name) = &obj.name {
                self.conn.execute(
                    "INSERT OR IGNORE INTO _stead_meta(key, value) VALUES ('name', ?1)",
                    params![name.as_str()],
                )?;
            }
            self.name_recorded = true;
        }
        if !self.turn.open {
            if let Err(e) = self.conn.execute_batch("SAVEPOINT stead_turn") {
                return Err(self.lose(e.into()));
            }
            self.turn.open = true;
        }
        Ok(())
    }

    /// Ends the running turn inside the group's transaction: keeps its writes (`keep`; they
    /// commit with the group) or rolls back to its savepoint, leaving the turns before it intact.
    /// A turn that cannot be kept (its statement was interrupted) is rolled back and its error
    /// returned.
    pub fn end_turn(&mut self, keep: bool) -> Result<(), StorageError> {
        let turn = std::mem::take(&mut self.turn);
        if !turn.open || self.lost.is_some() || self.conn.is_autocommit() {
            // Nothing written, or the transaction is gone (the group's commit will fail).
            return match (keep, self.lost) {
                (true, Some(l)) if turn.open => Err(l.error()),
                _ => Ok(()),
            };
        }
        if keep && turn.lost.is_none() {
            if let Err(e) = self.conn.execute_batch("RELEASE stead_turn") {
                return Err(self.lose(e.into()));
            }
            self.dirty |= turn.dirty;
            if turn.alarm.is_some() {
                self.alarm_change = turn.alarm;
            }
            return Ok(());
        }
        if let Err(e) = self
            .conn
            .execute_batch("ROLLBACK TO stead_turn; RELEASE stead_turn")
        {
            tracing::error!(error = %e, "rolling a turn back to its savepoint failed");
            return Err(self.lose(e.into()));
        }
        match turn.lost {
            Some(l) if keep => Err(l.error()),
            _ => Ok(()),
        }
    }

    /// What the running turn did to the alarm.
    pub fn turn_alarm_change(&self) -> Option<AlarmChange> {
        self.turn.alarm
    }

    /// Runs one app call that writes, all or nothing: inside a savepoint that is released when
    /// the call succeeds and rolled back when it fails (a multi-statement SQL call failing at its
    /// third statement leaves the first two undone).
    ///
    /// When SQLite has already rolled the whole transaction back on its own (it does after some
    /// I/O errors), or the statement was interrupted at the deadline, the transaction is lost:
    /// the turn's later calls fail too and its end rolls back.
    pub fn write_call<R>(
        &mut self,
        call: impl FnOnce(&mut Self) -> Result<R, StorageError>,
    ) -> Result<R, StorageError> {
        self.usable()?;
        if let Err(e) = self.conn.execute_batch("SAVEPOINT stead_call") {
            return Err(self.lose(e.into()));
        }
        let result = call(self)
            .and_then(|r| self.injected(FaultPoint::Write).map(|()| r))
            .and_then(|r| {
                self.conn.execute_batch("RELEASE stead_call")?;
                Ok(r)
            });
        match result {
            Ok(r) => {
                // Outside a turn's savepoint a write belongs to the transaction itself.
                if self.turn.open {
                    self.turn.dirty = true;
                } else {
                    self.dirty = true;
                }
                Ok(r)
            }
            Err(e) => {
                if self.conn.is_autocommit() {
                    return Err(self.lose(e));
                }
                if matches!(e, StorageError::Deadline) {
                    // The transaction survived the interruption: only this turn is lost, and its
                    // end rolls back to its savepoint.
                    if let Err(undo) = self
                        .conn
                        .execute_batch("ROLLBACK TO stead_call; RELEASE stead_call")
                    {
                        tracing::error!(error = %undo, "undoing an interrupted call failed");
                        return Err(self.lose(e));
                    }
                    self.turn.lost = Some(Lost::Deadline);
                    return Err(e);
                }
                if let Err(undo) = self
                    .conn
                    .execute_batch("ROLLBACK TO stead_call; RELEASE stead_call")
                {
                    tracing::error!(error = %undo, "undoing a failed call failed");
                    return Err(self.lose(e));
                }
                Err(e)
            }
        }
    }

    /// Marks the open transaction lost by `e` (see [`Lost`]) and returns `e`.
    fn lose(&mut self, e: StorageError) -> StorageError {
        if self.in_tx {
            self.lost = Some(Lost::of(&e));
        }
        e
    }

    /// Fails as the disk would if a test armed `point`: ENOSPC keeps the transaction (SQLite
    /// fails the statement), EIO loses it (SQLite rolls the transaction back on its own).
    fn injected(&mut self, point: FaultPoint) -> Result<(), StorageError> {
        let Some(fault) = self.faults.at(point) else {
            return Ok(());
        };
        if fault == Fault::Io && !self.conn.is_autocommit() {
            self.conn.execute_batch("ROLLBACK")?;
        }
        Err(fault.to_io_error().into())
    }

    /// The object's alarm, as the database (and the open transaction) has it.
    pub fn alarm_get(&self) -> Result<Option<i64>, StorageError> {
        match self
            .conn
            .query_row("SELECT time_ms FROM _stead_alarm WHERE one = 1", [], |r| {
                r.get(0)
            }) {
            Ok(t) => Ok(Some(t)),
            Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn alarm_set(&mut self, time_ms: i64) -> Result<(), StorageError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO _stead_alarm(one, time_ms) VALUES (1, ?1)",
            params![time_ms],
        )?;
        self.turn.alarm = Some(AlarmChange::Set(time_ms));
        Ok(())
    }

    pub fn alarm_delete(&mut self) -> Result<bool, StorageError> {
        let n = self.conn.execute("DELETE FROM _stead_alarm", [])?;
        self.turn.alarm = Some(AlarmChange::Deleted);
        Ok(n > 0)
    }

    /// What the turns kept in the open transaction did to the alarm.
    pub fn alarm_change(&self) -> Option<AlarmChange> {
        self.alarm_change
    }

    /// Commits the turn's transaction, if it wrote anything. Returns false when the database
    /// must be discarded instead: the transaction created it and no call of it succeeded.
    /// On failure the transaction stays the caller's to roll back.
    pub fn commit(&mut self) -> Result<bool, StorageError> {
        if self.in_tx {
            self.usable()?;
            if self.turn.open {
                return Err(StorageError::Internal(
                    "commit with a turn still running".into(),
                ));
            }
            if self.created_in_tx && !self.dirty {
                return self.rollback();
            }
            self.injected(FaultPoint::Commit)?;
            self.conn.execute_batch("COMMIT")?;
            self.in_tx = false;
            self.created_in_tx = false;
            self.dirty = false;
            self.alarm_change = None;
        }
        Ok(true)
    }

    /// Rolls the turn's transaction back. Returns false when the database must be closed and
    /// deleted because the rolled-back turn was the one that created it.
    pub fn rollback(&mut self) -> Result<bool, StorageError> {
        if self.in_tx {
            self.in_tx = false;
            self.dirty = false;
            self.alarm_change = None;
            self.lost = None;
            self.turn = TurnState::default();
            // SQLite may have rolled back already (after an I/O error): then there is nothing
            // to roll back, and ROLLBACK would only fail with "no transaction is active".
            if !self.conn.is_autocommit() {
                self.conn.execute_batch("ROLLBACK")?;
            }
            if self.created_in_tx {
                self.created_in_tx = false;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Closes the database and deletes its files: used when the turn that created it rolled back.
    pub fn discard(self) -> Result<(), StorageError> {
        let path = self.path.clone();
        drop(self.conn);
        Ok(remove_files(&path)?)
    }

    pub fn kv_get(&self, keys: &[String]) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT value FROM _stead_kv WHERE key = ?1")?;
        let mut found = Vec::new();
        for key in keys {
            let mut rows = stmt.query(params![key])?;
            if let Some(row) = rows.next()? {
                found.push((key.clone(), row.get::<_, Vec<u8>>(0)?));
            }
        }
        Ok(found)
    }

    pub fn kv_put(&mut self, entries: &[(String, Vec<u8>)]) -> Result<usize, StorageError> {
        let mut stmt = self
            .conn
            .prepare_cached("INSERT OR REPLACE INTO _stead_kv(key, value) VALUES (?1, ?2)")?;
        for (k, v) in entries {
            stmt.execute(params![k, v])?;
        }
        Ok(entries.len())
    }

    pub fn kv_delete(&mut self, keys: &[String]) -> Result<usize, StorageError> {
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM _stead_kv WHERE key = ?1")?;
        let mut deleted = 0;
        for k in keys {
            deleted += stmt.execute(params![k])?;
        }
        Ok(deleted)
    }

    pub fn kv_delete_all(&mut self) -> Result<usize, StorageError> {
        Ok(self.conn.execute("DELETE FROM _stead_kv", [])?)
    }

    /// The entries `q` selects, refused with [`StorageError::ListTooLarge`] as soon as their
    /// keys and values pass `max_bytes` (a list without a limit over a big object would
    /// otherwise be built whole in memory, twice: here and in the answer).
    pub fn kv_list(
        &self,
        q: &ListQuery,
        max_bytes: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        // Lower bound: the larger of start and prefix; upper: the smaller of end and the first
        // string after every string with the prefix. UTF-8 byte order is code point order, which
        // is SQLite's BINARY order for TEXT.
        let mut lo = q.start.clone();
        let mut hi = q.end.clone();
        if let Some(p) = &q.prefix {
            if lo.as_ref().is_none_or(|s| s < p) {
                lo = Some(p.clone());
            }
            if let Some(succ) = prefix_successor(p)
                && hi.as_ref().is_none_or(|e| *e > succ)
            {
                hi = Some(succ);
            }
        }
        let order = if q.reverse { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT key, value FROM _stead_kv WHERE (?1 IS NULL OR key >= ?1) AND (?2 IS NULL OR key < ?2) ORDER BY key {order} LIMIT ?3"
        );
        let limit = q.limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(params![lo, hi, limit])?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = rows.next()? {
            let (key, value) = (row.get_ref(0)?, row.get_ref(1)?);
            // Base64 in the answer makes a value a third larger.
            bytes += key.as_bytes().map_or(0, <[u8]>::len)
                + value.as_bytes().map_or(0, |v| v.len() / 3 * 4)
                + 32;
            if bytes > max_bytes {
                return Err(StorageError::ListTooLarge { limit: max_bytes });
            }
            out.push((row.get(0)?, row.get(1)?));
        }
        Ok(out)
    }

    /// Runs the app's SQL. Statements are prepared under an authorizer that refuses what would
    /// break the turn (transaction control) or the object's isolation (ATTACH, PRAGMA).
    pub fn sql_exec(
        &mut self,
        sql: &str,
        params_in: &[Value],
        budget: SqlBudget,
    ) -> Result<SqlOutput, StorageError> {
        sql_exec_on(&mut self.conn, sql, params_in, budget)
    }

    /// Whether every statement of `sql` only reads (so that running it needs no database file).
    pub fn sql_is_read_only(conn: &Connection, sql: &str) -> bool {
        let mut batch = Batch::new(conn, sql);
        loop {
            match batch.next() {
                Ok(Some(stmt)) => {
                    if !stmt.readonly() {
                        return false;
                    }
                }
                Ok(None) => return true,
                // SQL that does not even prepare here (e.g. a table that does not exist) fails
                // the same way on the object's first database: run it on the scratch database,
                // which creates nothing.
                Err(_) => return true,
            }
        }
    }
}

/// An in-memory database to run read-only SQL of an object that has no database yet.
pub fn scratch_connection() -> Result<Connection, StorageError> {
    Ok(Connection::open_in_memory()?)
}

/// Runs read-only SQL on a scratch database, under the same rules as the app's SQL.
pub fn sql_exec_scratch(
    conn: &mut Connection,
    sql: &str,
    params_in: &[Value],
    budget: SqlBudget,
) -> Result<SqlOutput, StorageError> {
    sql_exec_on(conn, sql, params_in, budget)
}

/// Runs the app's SQL on `conn` under the authorizer, interrupted at the turn's deadline, with
/// no single value longer than the result limit (so SQLite never materialises more).
fn sql_exec_on(
    conn: &mut Connection,
    sql: &str,
    params_in: &[Value],
    budget: SqlBudget,
) -> Result<SqlOutput, StorageError> {
    if budget.deadline.is_some_and(|d| Instant::now() >= d) {
        return Err(StorageError::Deadline);
    }
    let max_len = i32::try_from(budget.max_result_bytes.max(1)).unwrap_or(i32::MAX);
    let old_len = conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, max_len)?;
    let result = (|| {
        conn.authorizer(Some(app_authorizer))?;
        if let Some(deadline) = budget.deadline {
            conn.progress_handler(
                DEADLINE_CHECK_STEPS,
                Some(move || Instant::now() >= deadline),
            )?;
        }
        run_sql(conn, sql, params_in, budget.max_result_bytes)
    })();
    // Whatever happened, the connection goes back to its own rules (KV calls, Stead's tables).
    let restored = conn
        .progress_handler(0, None::<fn() -> bool>)
        .and_then(|()| conn.authorizer(None::<fn(AuthContext<'_>) -> Authorization>))
        .and_then(|()| {
            conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, old_len)
                .map(|_| ())
        });
    let out = result?;
    restored?;
    Ok(out)
}

/// What a value costs in memory once converted for the answer (a `serde_json::Value`, with
/// its allocations): a BLOB becomes a one-entry map, whose node alone is ~700 bytes.
fn json_cost(v: ValueRef<'_>) -> usize {
    const VALUE: usize = 32;
    match v {
        ValueRef::Null | ValueRef::Integer(_) | ValueRef::Real(_) => VALUE,
        ValueRef::Text(t) => VALUE + 16 + t.len(),
        ValueRef::Blob(b) => VALUE + 720 + b.len().div_ceil(3) * 4,
    }
}

fn run_sql(
    conn: &Connection,
    sql: &str,
    params_in: &[Value],
    max_result_bytes: usize,
) -> Result<SqlOutput, StorageError> {
    let too_large = StorageError::ResultTooLarge {
        limit: max_result_bytes,
    };
    let app_err = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::TooBig) => StorageError::ResultTooLarge {
            limit: max_result_bytes,
        },
        _ => StorageError::from_app_sql(e),
    };
    let mut result_bytes = 0usize;
    let mut out = SqlOutput {
        columns: vec![],
        rows: vec![],
        rows_read: 0,
        rows_written: 0,
    };
    let mut batch = Batch::new(conn, sql);
    let mut count = 0usize;
    while let Some(mut stmt) = batch.next().map_err(app_err)? {
        count += 1;
        if !params_in.is_empty() && count > 1 {
            return Err(StorageError::BadRequest(
                "SQL with bound parameters must be a single statement".into(),
            ));
        }
        let expected = stmt.parameter_count();
        let given = if count == 1 { params_in.len() } else { 0 };
        if expected != given {
            return Err(StorageError::BadRequest(format!(
                "statement {count} has {expected} parameters but {given} were given"
            )));
        }
        for (i, v) in params_in.iter().enumerate().take(given) {
            stmt.raw_bind_parameter(i + 1, v).map_err(app_err)?;
        }
        let columns: Vec<String> = stmt.column_names().map(String::from).collect();
        let changes_before = conn.total_changes();
        let mut rows_out = Vec::new();
        {
            let mut rows = stmt.raw_query();
            while let Some(row) = rows.next().map_err(app_err)? {
                let mut vals = Vec::with_capacity(columns.len());
                // The row's own vector, and its slot in the (doubling) vector of rows.
                result_bytes += 48;
                for i in 0..columns.len() {
                    let v = row.get_ref(i).map_err(app_err)?;
                    // Counted before the value is copied out: the result never holds more
                    // than the limit.
                    result_bytes += json_cost(v);
                    if result_bytes > max_result_bytes {
                        return Err(too_large);
                    }
                    vals.push(to_json(v));
                }
                rows_out.push(vals);
            }
        }
        out.rows_read += rows_out.len() as u64
            + u64::try_from(stmt.get_status(StatementStatus::FullscanStep)).unwrap_or(0);
        out.rows_written += conn.total_changes().saturating_sub(changes_before);
        if !columns.is_empty() || count == 1 {
            out.columns = columns;
            out.rows = rows_out;
        }
    }
    Ok(out)
}

fn app_authorizer(ctx: AuthContext<'_>) -> Authorization {
    match ctx.action {
        AuthAction::Transaction { .. }
        | AuthAction::Savepoint { .. }
        | AuthAction::Attach { .. }
        | AuthAction::Detach { .. }
        | AuthAction::Pragma { .. } => Authorization::Deny,
        _ => Authorization::Allow,
    }
}

/// A SQLite value as JSON: BLOBs as `{"base64": …}`, non-finite floats as null.
fn to_json(v: ValueRef<'_>) -> serde_json::Value {
    match v {
        ValueRef::Null => serde_json::Value::Null,
        ValueRef::Integer(i) => json!(i),
        ValueRef::Real(f) => serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => json!({"base64": base64::engine::general_purpose::STANDARD.encode(b)}),
    }
}

/// A JSON parameter as a SQLite value.
pub fn param_from_json(v: &serde_json::Value) -> Result<Value, String> {
    Ok(match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Integer(i64::from(*b)),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::Integer(i),
            (None, Some(f)) => Value::Real(f),
            _ => return Err(format!("number {n} does not fit a 64-bit integer or float")),
        },
        serde_json::Value::String(s) => Value::Text(s.clone()),
        serde_json::Value::Object(o) if o.len() == 1 && o.contains_key("base64") => {
            let s = o["base64"]
                .as_str()
                .ok_or("{\"base64\": …} must hold a string")?;
            Value::Blob(
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| format!("invalid base64 in blob parameter: {e}"))?,
            )
        }
        other => {
            return Err(format!(
                "unsupported parameter {other}: use null, a number, a string, a boolean or {{\"base64\": …}}"
            ));
        }
    })
}

/// The tables of a new object database that are not created in its first turn.
const NEW_DATABASE_SCHEMA: &str = "PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL;
     CREATE TABLE _stead_kv(key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
     CREATE TABLE _stead_alarm(one INTEGER PRIMARY KEY CHECK (one = 1), time_ms INTEGER NOT NULL);";

/// The bytes of a new object database: WAL mode, `_stead_kv` and `_stead_alarm`, no rows. Built
/// once per process (in a scratch file of `dir`) and then copied for every new object: creating
/// a database with SQLite itself switches it to WAL mode through a rollback journal (a journal
/// file created, synced and deleted, and the database synced) and parses the schema, for every
/// object; the copy is one write and one fsync.
fn new_database_image(dir: &Path) -> Result<&'static [u8], StorageError> {
    static IMAGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    if let Some(image) = IMAGE.get() {
        return Ok(image);
    }
    // Threads that create their first objects at once each build one: the names must differ.
    static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let scratch = dir.join(format!(
        ".stead-new-{}-{}.sqlite",
        std::process::id(),
        BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let built = (|| -> Result<Vec<u8>, StorageError> {
        let conn = Connection::open_with_flags_and_vfs(
            &scratch,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            OBJECT_VFS,
        )?;
        conn.execute_batch(NEW_DATABASE_SCHEMA)?;
        // Closing checkpoints the WAL into the file and deletes the WAL.
        conn.close().map_err(|(_, e)| e)?;
        Ok(fs::read(&scratch)?)
    })();
    if let Err(e) = remove_files(&scratch) {
        tracing::warn!(error = %e, "removing the scratch database of new objects");
    }
    let image = built?;
    // A database file in WAL mode: "SQLite format 3\0", read and write versions 2.
    if !image.starts_with(b"SQLite format 3\0") || image.get(18..20) != Some(&[2, 2]) {
        return Err(StorageError::Internal(
            "the image of a new database is not a WAL-mode SQLite file".into(),
        ));
    }
    Ok(IMAGE.get_or_init(|| image))
}

/// Writes a new object database at `path` from [`new_database_image`], durably in strict mode
/// (the file here; its directory entry with the first commit), without ever replacing a file: returns false when `path`
/// exists already (SQLite then opens what is there, as before). Leftover companions (a WAL or
/// journal of a database deleted before) are removed first, so that nothing of an earlier
/// object is replayed into the new one.
fn write_new_database(path: &Path, dir: &Path, opts: &DbOptions) -> Result<bool, StorageError> {
    use std::io::Write as _;
    let image = new_database_image(dir)?;
    let mut file = match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    for suffix in ["-wal", "-journal"] {
        let mut p = path.to_path_buf().into_os_string();
        p.push(suffix);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    file.write_all(image)?;
    // With `--sync volume` the volume's next sync, which the first commit waits for, covers
    // the file and its directory entry; until then nothing of the object was acknowledged.
    if opts.fsyncs_files() {
        // The header (WAL mode) must be on disk before the first commit's WAL is: SQLite
        // deletes the WAL of an empty database file when it opens it. The directory entry is
        // made durable by SQLite itself: the first sync of a WAL it created also syncs its
        // directory (`UNIXFILE_DIRSYNC`), before the first commit is durable; this file's
        // entry is in the same directory. A creation that never commits is removed either way.
        file.sync_all()?;
    }
    Ok(true)
}

/// Deletes a database file and its companions, where they exist.
fn remove_files(path: &Path) -> std::io::Result<()> {
    for suffix in ["", "-wal", "-journal"] {
        let mut p = path.to_path_buf().into_os_string();
        p.push(suffix);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Turns the connection's lookaside off: SQLite's default gives every connection 48 KiB of
/// small-allocation slots (touched when set up), which at thousands of open objects costs more
/// than it saves; small allocations go to malloc instead. Done per connection so that it holds
/// even where SQLite started before [`crate::sqlite_memory::configure_process`].
fn no_lookaside(conn: &Connection) -> Result<(), StorageError> {
    // SAFETY: the handle is valid for as long as `conn`; SQLITE_DBCONFIG_LOOKASIDE takes
    // (void*, int, int), passed with exactly those types; a null buffer with size 0 and count 0
    // turns lookaside off. Nothing else uses the connection meanwhile (we hold `&conn` on the
    // only thread that uses it).
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            0 as std::ffi::c_int,
            0 as std::ffi::c_int,
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        return Err(StorageError::Internal(format!(
            "turning SQLite's lookaside off failed (code {rc})"
        )));
    }
    Ok(())
}

fn configure(conn: &Connection, opts: &DbOptions) -> Result<(), StorageError> {
    no_lookaside(conn)?;
    // Exclusive locking before WAL: the WAL index then lives in heap memory, no -shm file.
    conn.execute_batch("PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL;")?;
    // In WAL mode NORMAL syncs only around checkpoints (the WAL before, the database after),
    // which keeps the file consistent; `--sync volume` makes each commit durable with the
    // volume's next sync instead (see `barrier`).
    let sync = match (opts.durability, opts.sync) {
        (Durability::Strict, SyncMode::File) => "FULL",
        (Durability::Strict, SyncMode::Volume) | (Durability::Relaxed, _) => "NORMAL",
    };
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let max_pages = opts.max_database_bytes / u64::try_from(page_size.max(512)).unwrap_or(4096);
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {sync}; PRAGMA cache_size = -{CACHE_KIB}; PRAGMA max_page_count = {max_pages}; PRAGMA foreign_keys = ON;"
    ))?;
    Ok(())
}

/// The least string greater than every string that starts with `prefix`, if there is one.
fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = last as u32 + 1;
        if next == 0xD800 {
            next = 0xE000; // skip the surrogates, which are not chars
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use stead_core::{ClassName, ObjectId, ObjectName};

    /// A named `Counter` object (4,096 slots); the shelf's tests use it too.
    pub(in crate::storage) fn obj(name: &str) -> ObjectRef {
        let class = ClassName::new("Counter").unwrap();
        let name = ObjectName::new(name).unwrap();
        ObjectRef::new(
            class.clone(),
            ObjectId::named(&class, &name),
            Some(name),
            4096,
        )
    }

    const BUDGET: SqlBudget = SqlBudget {
        deadline: None,
        max_result_bytes: 1 << 20,
    };

    impl ObjectDb {
        fn sql_exec_t(&mut self, sql: &str, p: &[Value]) -> Result<SqlOutput, StorageError> {
            self.sql_exec(sql, p, BUDGET)
        }
    }

    fn opts() -> DbOptions {
        DbOptions {
            durability: Durability::Strict,
            sync: SyncMode::File,
            max_database_bytes: 10 << 30,
        }
    }

    #[test]
    fn reading_a_never_written_object_creates_nothing() {
        let dir = tempdir();
        let o = obj("a");
        assert!(
            ObjectDb::open_existing(&o, &dir, &opts(), &Faults::default())
                .unwrap()
                .is_none()
        );
        assert!(!o.database_path(&dir).exists());
    }

    #[test]
    fn committed_writes_survive_reopen_and_record_identity() {
        let dir = tempdir();
        let o = obj("a");
        let mut db = ObjectDb::create(&o, &dir, &opts(), &Faults::default()).unwrap();
        db.write_call(|d| d.kv_put(&[("k".into(), b"v".to_vec())]))
            .unwrap();
        assert!(db.commit().unwrap());
        drop(db);
        let db = ObjectDb::open_existing(&o, &dir, &opts(), &Faults::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            db.kv_get(&["k".into()]).unwrap(),
            vec![("k".into(), b"v".to_vec())]
        );
        let name: String = db
            .conn
            .query_row("SELECT value FROM _stead_meta WHERE key='name'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(name, "a");
        // Exclusive locking mode: no shared-memory file next to the database.
        let mut shm = o.database_path(&dir).into_os_string();
        shm.push("-shm");
        assert!(!PathBuf::from(shm).exists());
    }

    #[test]
    fn rolling_back_the_creating_turn_leaves_no_file() {
        let dir = tempdir();
        let o = obj("a");
        let mut db = ObjectDb::create(&o, &dir, &opts(), &Faults::default()).unwrap();
        db.kv_put(&[("k".into(), b"v".to_vec())]).unwrap();
        assert!(!db.rollback().unwrap());
        db.discard().unwrap();
        assert!(!o.database_path(&dir).exists());
    }

    #[test]
    fn a_failing_call_is_undone_alone() {
        let dir = tempdir();
        let mut db = ObjectDb::create(&obj("a"), &dir, &opts(), &Faults::default()).unwrap();
        db.write_call(|d| d.sql_exec_t("CREATE TABLE t(x)", &[]))
            .unwrap();
        let failed = db.write_call(|d| {
            d.sql_exec_t("INSERT INTO t VALUES (1); INSERT INTO nope VALUES (2)", &[])
        });
        assert!(matches!(failed, Err(StorageError::Sql(_))));
        let out = db.sql_exec_t("SELECT count(*) FROM t", &[]).unwrap();
        assert_eq!(out.rows, vec![vec![json!(0)]]);
    }

    #[test]
    fn a_created_database_that_no_call_wrote_is_not_kept() {
        let dir = tempdir();
        let mut db = ObjectDb::create(&obj("a"), &dir, &opts(), &Faults::default()).unwrap();
        assert!(db.write_call(|d| d.sql_exec_t("COMMIT", &[])).is_err());
        assert!(!db.commit().unwrap());
    }

    #[test]
    fn list_honours_prefix_bounds_limit_and_reverse() {
        let dir = tempdir();
        let mut db = ObjectDb::create(&obj("a"), &dir, &opts(), &Faults::default()).unwrap();
        let keys = ["a", "b1", "b2", "b3", "c"];
        db.kv_put(
            &keys
                .iter()
                .map(|k| (k.to_string(), vec![1]))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let names = |q: ListQuery| -> Vec<String> {
            db.kv_list(&q, 1 << 20)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        let prefix = |p: &str| ListQuery {
            prefix: Some(p.into()),
            ..Default::default()
        };
        assert_eq!(names(prefix("b")), ["b1", "b2", "b3"]);
        assert_eq!(
            names(ListQuery {
                start: Some("b2".into()),
                end: Some("c".into()),
                ..Default::default()
            }),
            ["b2", "b3"]
        );
        assert_eq!(
            names(ListQuery {
                limit: Some(2),
                reverse: true,
                ..prefix("b")
            }),
            ["b3", "b2"]
        );
    }

    #[test]
    fn a_list_past_the_result_limit_is_refused_not_built() {
        let dir = tempdir();
        let mut db = ObjectDb::create(&obj("a"), &dir, &opts(), &Faults::default()).unwrap();
        let entries: Vec<(String, Vec<u8>)> = (0..100)
            .map(|i| (format!("k{i:03}"), vec![7; 1000]))
            .collect();
        db.kv_put(&entries).unwrap();
        let all = ListQuery::default();
        assert!(matches!(
            db.kv_list(&all, 50_000),
            Err(StorageError::ListTooLarge { limit: 50_000 })
        ));
        // With a limit that fits, the same list is answered.
        let some = ListQuery {
            limit: Some(10),
            ..Default::default()
        };
        assert_eq!(db.kv_list(&some, 50_000).unwrap().len(), 10);
        assert_eq!(db.kv_list(&all, 1 << 20).unwrap().len(), 100);
    }

    #[test]
    fn prefix_successor_is_the_next_string() {
        assert_eq!(prefix_successor("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_successor(""), None);
    }

    #[test]
    fn sql_returns_rows_and_counts_and_refuses_transaction_control() {
        let dir = tempdir();
        let mut db = ObjectDb::create(&obj("a"), &dir, &opts(), &Faults::default()).unwrap();
        let out = db
            .sql_exec_t(
                "CREATE TABLE t(k INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'one'), (2, x'00ff')",
                &[],
            )
            .unwrap();
        assert_eq!(out.rows_written, 2);
        let out = db
            .sql_exec_t("SELECT k, v FROM t WHERE k >= ?1", &[Value::Integer(1)])
            .unwrap();
        assert_eq!(out.columns, ["k", "v"]);
        assert_eq!(out.rows[0], vec![json!(1), json!("one")]);
        assert_eq!(out.rows[1][1], json!({"base64": "AP8="}));
        for bad in [
            "COMMIT",
            "BEGIN",
            "SAVEPOINT x",
            "PRAGMA journal_mode = DELETE",
            "ATTACH 'x' AS y",
        ] {
            assert!(
                matches!(db.sql_exec_t(bad, &[]), Err(StorageError::NotAllowed(_))),
                "{bad} was allowed"
            );
        }
        assert!(matches!(
            db.sql_exec_t("SELECT * FROM nope", &[]),
            Err(StorageError::Sql(_))
        ));
    }

    /// The POSIX locks this process holds on `path`'s inode, from /proc/locks.
    fn posix_locks_on(path: &Path) -> usize {
        use std::os::unix::fs::MetadataExt as _;
        let ino = fs::metadata(path).unwrap().ino();
        let me = std::process::id().to_string();
        fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // "1: POSIX  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
                f.get(1) == Some(&"POSIX")
                    && f.get(4) == Some(&me.as_str())
                    && f.get(5).and_then(|d| d.rsplit(':').next()) == Some(&ino.to_string())
            })
            .count()
    }

    #[test]
    fn an_open_object_database_holds_no_file_lock_and_no_lookaside() {
        let dir = tempdir();
        let o = obj("a");
        let mut db = ObjectDb::create(&o, &dir, &opts(), &Faults::default()).unwrap();
        db.write_call(|d| d.kv_put(&[("k".into(), b"v".to_vec())]))
            .unwrap();
        assert!(db.commit().unwrap());
        // Exclusive locking mode on SQLite's default VFS would hold a POSIX write lock on the
        // file from the first write until close; the lock-free VFS holds none (and keeps no
        // process-wide list of locked files to search on every open).
        let path = o.database_path(&dir);
        assert_eq!(posix_locks_on(&path), 0);
        let mut used = 0;
        let mut high = 0;
        // SAFETY: a valid handle; the out-pointers are live locals.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_db_status(
                db.conn.handle(),
                rusqlite::ffi::SQLITE_DBSTATUS_LOOKASIDE_USED,
                &mut used,
                &mut high,
                0,
            )
        };
        assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
        assert_eq!((used, high), (0, 0), "lookaside slots were used");
        drop(db);
        // Reopened (WAL mode, exclusive, no locks), it reads what was committed.
        let db = ObjectDb::open_existing(&o, &dir, &opts(), &Faults::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            db.kv_get(&["k".into()]).unwrap(),
            vec![("k".into(), b"v".to_vec())]
        );
        let mode: String = db
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(posix_locks_on(&path), 0);
    }

    #[test]
    fn a_new_database_whose_first_turn_never_committed_is_not_an_object() {
        let dir = tempdir();
        let o = obj("a");
        let path = o.database_path(&dir);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        // As a crash leaves it between writing the new file and the first commit.
        assert!(write_new_database(&path, path.parent().unwrap(), &opts()).unwrap());
        assert!(path.exists());
        assert!(
            ObjectDb::open_existing(&o, &dir, &opts(), &Faults::default())
                .unwrap()
                .is_none()
        );
        assert!(!path.exists(), "the uncommitted file is removed");
        // An existing file is never replaced.
        let mut db = ObjectDb::create(&o, &dir, &opts(), &Faults::default()).unwrap();
        db.write_call(|d| d.kv_put(&[("k".into(), b"v".to_vec())]))
            .unwrap();
        assert!(db.commit().unwrap());
        assert!(!write_new_database(&path, path.parent().unwrap(), &opts()).unwrap());
        assert_eq!(db.kv_get(&["k".into()]).unwrap().len(), 1);
    }

    #[test]
    fn a_wal_left_by_a_deleted_object_is_not_replayed_into_a_new_one() {
        let dir = tempdir();
        let o = obj("a");
        let path = o.database_path(&dir);
        let mut db = ObjectDb::create(&o, &dir, &opts(), &Faults::default()).unwrap();
        db.write_call(|d| d.kv_put(&[("old".into(), b"1".to_vec())]))
            .unwrap();
        assert!(db.commit().unwrap());
        // The committed write is in the WAL; keep a copy of it as a crash during a deletion
        // (database removed, WAL not yet) would leave it.
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        let wal_bytes = fs::read(&wal).unwrap();
        assert!(!wal_bytes.is_empty());
        drop(db);
        remove_files(&path).unwrap();
        fs::write(&wal, &wal_bytes).unwrap();

        let mut db = ObjectDb::create(&o, &dir, &opts(), &Faults::default()).unwrap();
        assert!(db.kv_get(&["old".into()]).unwrap().is_empty());
        db.write_call(|d| d.kv_put(&[("new".into(), b"2".to_vec())]))
            .unwrap();
        assert!(db.commit().unwrap());
        drop(db);
        let db = ObjectDb::open_existing(&o, &dir, &opts(), &Faults::default())
            .unwrap()
            .unwrap();
        assert!(db.kv_get(&["old".into()]).unwrap().is_empty());
        assert_eq!(db.kv_get(&["new".into()]).unwrap().len(), 1);
    }

    /// A new, empty folder under the system's temporary folder.
    pub(in crate::storage) fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "stead-db-test-{}-{}",
            std::process::id(),
            ObjectId::unique().unwrap().to_hex()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
