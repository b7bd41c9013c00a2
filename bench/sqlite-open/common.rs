//! Shared by the `rusqlite` and `sqlx` bench binaries (included with `#[path]`): arguments,
//! /proc readings, percentiles and the printed table. The two drivers cannot live in one binary:
//! rusqlite 0.43 needs libsqlite3-sys 0.40 and sqlx-sqlite 0.9 needs libsqlite3-sys <0.38, and
//! both crates declare `links = "sqlite3"`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct Args {
    pub n: usize,
    pub writes: usize,
    pub dir: PathBuf,
    pub keep: bool,
}

pub fn parse_args(driver: &str) -> Args {
    let mut n = 1000;
    let mut writes = 200;
    let mut base = std::env::temp_dir();
    let mut keep = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--n" => n = val().parse().unwrap_or_else(|_| usage("--n takes a number")),
            "--writes" => writes = val().parse().unwrap_or_else(|_| usage("--writes takes a number")),
            "--dir" => base = PathBuf::from(val()),
            "--keep" => keep = true,
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let dir = base.join(format!("sqlite-open-{driver}-{n}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    Args { n: n.max(1), writes: writes.min(n).max(1), dir, keep }
}

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("error: {msg}");
    }
    eprintln!("usage: --n N [--writes W (default 200)] [--dir BASE (default $TMPDIR)] [--keep]");
    std::process::exit(2)
}

pub fn db_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("obj-{i:06}.sqlite"))
}

/// Indices of the databases written to: W of them, spread evenly over all N.
pub fn write_targets(n: usize, w: usize) -> Vec<usize> {
    (0..w).map(|k| k * n / w).collect()
}

pub const PRAGMAS: &str = "locking_mode=EXCLUSIVE (before journal_mode), journal_mode=WAL, synchronous=FULL, cache_size=-512";

// ---------------------------------------------------------------- process stats

#[derive(Clone, Copy, Debug, Default)]
pub struct Proc {
    pub fds: usize,
    pub threads: usize,
    pub rss_kib: u64,
}

pub fn proc_stats() -> Proc {
    // read_dir itself holds one fd while listing; subtract it.
    let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(1).saturating_sub(1);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Proc { fds, threads: field("Threads:") as usize, rss_kib: field("VmRSS:") }
}

// ---------------------------------------------------------------- stats

pub struct Summary {
    pub mean: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub total: Duration,
}

pub fn summarize(mut v: Vec<Duration>) -> Summary {
    assert!(!v.is_empty());
    v.sort();
    let total: Duration = v.iter().sum();
    // Nearest-rank percentile.
    let pct = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    Summary { mean: total / v.len() as u32, p50: pct(0.50), p99: pct(0.99), max: *v.last().unwrap(), total }
}

pub struct Results {
    pub setup: Duration,
    pub start: Proc,
    pub before: Proc,
    pub open: Summary,
    pub held: Proc,
    pub write: Summary,
    pub close_total: Duration,
    pub after_close: Proc,
}

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn report(driver: &str, args: &Args, r: &Results) {
    let files = std::fs::read_dir(&args.dir).map(|d| d.count()).unwrap_or(0);
    if !args.keep {
        std::fs::remove_dir_all(&args.dir).ok();
    }
    let n = args.n;
    println!("driver: {driver}");
    println!("N = {n} databases, writes on {} of them, dir = {}", args.writes, args.dir.display());
    println!("pragmas: {PRAGMAS}");
    println!("setup (create + seed + close all N): {:.2} s; files left in dir: {files}", r.setup.as_secs_f64());
    println!();
    println!("| metric | value |");
    println!("|---|---|");
    println!(
        "| open latency per db, mean / p50 / p99 / max (µs) | {} / {} / {} / {} |",
        us(r.open.mean), us(r.open.p50), us(r.open.p99), us(r.open.max)
    );
    println!("| open all N, total (s) | {:.3} |", r.open.total.as_secs_f64());
    println!(
        "| open fds: before open / all open / after close | {} / {} / {} |",
        r.before.fds, r.held.fds, r.after_close.fds
    );
    println!(
        "| fds per open db | {:.2} |",
        (r.held.fds as f64 - r.before.fds as f64) / n as f64
    );
    println!(
        "| OS threads: before open / all open / after close | {} / {} / {} |",
        r.before.threads, r.held.threads, r.after_close.threads
    );
    println!(
        "| VmRSS MiB: before open / all open / after close | {:.1} / {:.1} / {:.1} |",
        mib(r.before.rss_kib), mib(r.held.rss_kib), mib(r.after_close.rss_kib)
    );
    println!(
        "| RSS per open db (KiB) | {:.1} |",
        (r.held.rss_kib as f64 - r.before.rss_kib as f64) / n as f64
    );
    println!(
        "| write tx (BEGIN; INSERT; COMMIT; sync=FULL) on {} dbs, mean / p50 / p99 / max (µs) | {} / {} / {} / {} |",
        args.writes, us(r.write.mean), us(r.write.p50), us(r.write.p99), us(r.write.max)
    );
    println!("| close all N, total (s) | {:.3} |", r.close_total.as_secs_f64());
}
