//! rusqlite 0.43 (bundled), all connections owned by the calling thread — the shape of one
//! sidecar storage thread. See ../common.rs for what is measured.

#[path = "../../common.rs"]
mod common;

use std::path::Path;
use std::time::Instant;

use common::*;
use rusqlite::{Connection, OpenFlags};

fn open(path: &Path, create: bool) -> rusqlite::Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags)?;
    // Exclusive locking before WAL (as the sidecar does): the WAL index lives on the heap, no -shm.
    conn.execute_batch(
        "PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL; \
         PRAGMA synchronous = FULL; PRAGMA cache_size = -512;",
    )?;
    Ok(conn)
}

fn main() {
    let args = parse_args("rusqlite");
    let (n, w, dir) = (args.n, args.writes, args.dir.clone());
    let start = proc_stats();

    let t = Instant::now();
    for i in 0..n {
        let c = open(&db_path(&dir, i), true).expect("create");
        c.execute_batch(
            "CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB) STRICT; \
             INSERT INTO kv VALUES ('seed', x'00');",
        )
        .expect("seed");
        c.close().map_err(|(_, e)| e).expect("close");
    }
    let setup = t.elapsed();

    let before = proc_stats();
    let mut conns = Vec::with_capacity(n);
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let path = db_path(&dir, i);
        let t = Instant::now();
        let c = open(&path, false).expect("open");
        lat.push(t.elapsed());
        conns.push(c);
    }
    let held = proc_stats();
    // SQLite's own heap while all are open (the rest of RSS growth is allocator overhead / rusqlite).
    let sqlite_heap = unsafe { rusqlite::ffi::sqlite3_memory_used() };

    let mut wlat = Vec::with_capacity(w);
    for i in write_targets(n, w) {
        let key = format!("k{i}");
        let c = &mut conns[i];
        let t = Instant::now();
        let tx = c.transaction().expect("begin");
        tx.execute("INSERT INTO kv VALUES (?1, x'0102030405060708')", [&key]).expect("insert");
        tx.commit().expect("commit");
        wlat.push(t.elapsed());
    }

    let t = Instant::now();
    for c in conns {
        c.close().map_err(|(_, e)| e).expect("close");
    }
    let close_total = t.elapsed();
    let after_close = proc_stats();

    let r = Results {
        setup,
        start,
        before,
        open: summarize(lat),
        held,
        write: summarize(wlat),
        close_total,
        after_close,
    };
    report(
        &format!("rusqlite 0.43 (bundled SQLite {}), all connections on one thread", rusqlite::version()),
        &args,
        &r,
    );
    println!(
        "| SQLite heap while all open (sqlite3_memory_used), per db (KiB) | {:.1} |",
        sqlite_heap as f64 / 1024.0 / n as f64
    );
}
