//! sqlx's SQLite driver, one `SqliteConnection` per database, on a default multi-thread tokio
//! runtime. See ../common.rs for what is measured.

#[path = "../../common.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteLockingMode,
    SqliteSynchronous,
};
use sqlx::{Connection, Executor};

fn options(path: &Path, create: bool) -> SqliteConnectOptions {
    // sqlx applies its pragmas in a fixed order in which locking_mode precedes journal_mode.
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(create)
        .locking_mode(SqliteLockingMode::Exclusive)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .pragma("cache_size", "-512")
}

#[tokio::main]
async fn main() {
    let args = parse_args("sqlx");
    let (n, w, dir) = (args.n, args.writes, args.dir.clone());
    let start = proc_stats();

    let t = Instant::now();
    for i in 0..n {
        let mut c = SqliteConnection::connect_with(&options(&db_path(&dir, i), true))
            .await
            .expect("create");
        c.execute(
            "CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB) STRICT; \
             INSERT INTO kv VALUES ('seed', x'00');",
        )
        .await
        .expect("seed");
        c.close().await.expect("close");
    }
    let setup = t.elapsed();
    // Connection worker threads exit asynchronously after close; let them go before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let before = proc_stats();
    let mut conns = Vec::with_capacity(n);
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let opts = options(&db_path(&dir, i), false);
        let t = Instant::now();
        let c = SqliteConnection::connect_with(&opts).await.expect("open");
        lat.push(t.elapsed());
        conns.push(c);
    }
    let held = proc_stats();
    let version: String = sqlx::query_scalar("SELECT sqlite_version()")
        .fetch_one(&mut conns[0])
        .await
        .expect("version");

    let mut wlat = Vec::with_capacity(w);
    for i in write_targets(n, w) {
        let key = format!("k{i}");
        let c = &mut conns[i];
        let t = Instant::now();
        let mut tx = c.begin().await.expect("begin");
        sqlx::query("INSERT INTO kv VALUES (?1, x'0102030405060708')")
            .bind(&key)
            .execute(&mut *tx)
            .await
            .expect("insert");
        tx.commit().await.expect("commit");
        wlat.push(t.elapsed());
    }

    let t = Instant::now();
    for c in conns {
        c.close().await.expect("close");
    }
    let close_total = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
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
        &format!(
            "sqlx 0.9 sqlite (runtime-tokio, bundled SQLite {version}), one SqliteConnection per db, tokio multi-thread runtime"
        ),
        &args,
        &r,
    );
}
