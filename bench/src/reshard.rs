//! `stead-bench reshard`: live resharding (issue 9) under an open-loop counter load.
//!
//! Starts a local cluster of real processes (`stead sidecar` + `counter` per shard, on loopback,
//! through `stead_e2e::LocalCluster`): `max(from, to)` shards whose ring first spans `from`.
//! Fills `objects` counters with a blob of `object_kib` KiB each (`POST /put-raw`, key `blob`),
//! starts an open-loop load of `rate` increments per second (a fixed schedule; each latency is
//! measured from the request's intended send time, so a stalled request cannot hide the ones
//! queued behind it), waits `warmup` seconds, asks shard 0 to reshard to `to`, waits until done,
//! keeps the load on for `settle` seconds more, then reports:
//!
//! - the resharding's total time, bytes moved and MB/s (the coordinator's progress);
//! - the share of requests answered 503 (during the resharding, and over the whole run);
//! - latency of requests to moved vs unmoved slots, before, during and after;
//! - the pause per moved slot, two views: the client's (per moved slot that got a request while
//!   the resharding ran, the longest such request) and the sidecars' (how long each slot was
//!   fenced: `stead_handoff_pause_seconds` from the sources' `/metrics`, and, when the sidecars
//!   log at `info` (`STEAD_E2E_LOG=info`), the exact `pause_ms` of every hand-off from their logs).
//!
//! The binaries `stead` and `counter` must be built beside `stead-bench` (same profile), or in
//! `STEAD_E2E_BIN_DIR`.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use stead_core::Ring;
use stead_core::id::DEFAULT_SLOTS;
use stead_e2e::cluster::{CLASS, object_id, owner};
use stead_e2e::{Client, Cluster, LocalCluster, Reply};

use crate::common::{Latency, Rng, new_hist, round1};
use crate::prom;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Objects filled before the resharding (each also gets the counter load).
    #[arg(long, default_value_t = 10_000)]
    objects: usize,
    /// Size of the blob written into each object, in KiB.
    #[arg(long, default_value_t = 16)]
    object_kib: usize,
    /// Counter increments per second (open loop, spread over every object and every shard's
    /// ingress).
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Shards of the ring before.
    #[arg(long, default_value_t = 3)]
    from: u32,
    /// Shards of the ring after.
    #[arg(long, default_value_t = 5)]
    to: u32,
    /// Seconds of load before the resharding starts: longer than the sidecars' idle timeout
    /// (10 s), so that the objects the fill left open have closed and the "before" latency is
    /// the steady state the resharding is compared with.
    #[arg(long, default_value_t = 15)]
    warmup: u64,
    /// Seconds of load after the resharding is done.
    #[arg(long, default_value_t = 3)]
    settle: u64,
    /// Writes in flight while filling.
    #[arg(long, default_value_t = 16)]
    fill_concurrency: usize,
    /// The resharding is given up after this many seconds.
    #[arg(long, default_value_t = 600)]
    max_seconds: u64,
    /// Also write one CSV line per request (`sent_ms,slot,moved,status,latency_ms`).
    #[arg(long)]
    requests_csv: Option<PathBuf>,
}

/// The key the blob is stored under.
const BLOB_KEY: &str = "blob";

/// One request of the load.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Intended send time, from the start of the load.
    sent: Duration,
    slot: u32,
    /// `Some(status)`, or `None` when no answer came (refused, reset, timed out).
    status: Option<u16>,
    /// From the intended send time to the answer.
    latency: Duration,
}

pub async fn run(a: Args) -> Result<()> {
    ensure!(
        a.from >= 1 && a.to >= 1,
        "--from and --to must be at least 1"
    );
    ensure!(a.from != a.to, "--from and --to must differ");
    ensure!(
        a.objects > 0 && a.rate > 0,
        "--objects and --rate must be positive"
    );
    let processes = a.from.max(a.to) as usize;
    let ring_shards = a.from.to_string();
    eprintln!(
        "starting {processes} shards (ring of {}), {} objects of {} KiB",
        a.from, a.objects, a.object_kib
    );
    let cluster =
        LocalCluster::start_with_sidecar_args(processes, &["--ring-shards", &ring_shards])
            .await
            .context("start the local cluster (build `stead` and `counter` beside stead-bench)")?;
    let result = bench(&cluster, &a).await;
    if result.is_err() {
        eprintln!("sidecar logs: {}", cluster.root().display());
    }
    result
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("rs-{i}")).collect()
}

fn slot_of(name: &str) -> u32 {
    object_id(name).slot(DEFAULT_SLOTS).0
}

/// A JSON string of `kib` KiB of random hex digits.
fn blob(kib: usize) -> String {
    let mut rng = Rng::new(7);
    let digits = b"0123456789abcdef";
    (0..kib * 1024)
        .map(|_| digits[rng.below(16) as usize] as char)
        .collect()
}

async fn bench(c: &LocalCluster, a: &Args) -> Result<()> {
    let names = Arc::new(names(a.objects));
    let before = Ring::new(1, DEFAULT_SLOTS, a.from);
    let after = Ring::new(2, DEFAULT_SLOTS, a.to);
    let moved: HashSet<u32> = (0..DEFAULT_SLOTS)
        .filter(|&s| before.owner(stead_core::Slot(s)) != after.owner(stead_core::Slot(s)))
        .collect();
    let moved_objects = names.iter().filter(|n| moved.contains(&slot_of(n))).count();
    let occupied: HashSet<u32> = names.iter().map(|n| slot_of(n)).collect();

    let fill_started = Instant::now();
    fill(c, &names, a).await?;
    let fill_s = fill_started.elapsed().as_secs_f64();
    let fill_mb = (a.objects * a.object_kib) as f64 / 1024.0;
    eprintln!(
        "filled {} objects ({fill_mb:.0} MiB) in {fill_s:.1} s",
        a.objects
    );
    let sources: Vec<usize> = (0..a.from as usize).collect();
    let metrics_before = pause_buckets(c, &sources).await?;

    // The load.
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let load_start = Instant::now();
    let load = tokio::spawn(open_loop(
        c.entries(),
        names.clone(),
        a.rate,
        load_start,
        stop.clone(),
        samples.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(a.warmup)).await;

    // The resharding.
    let reshard_start = load_start.elapsed();
    let progress = stead_e2e::reshard::reshard(c, a.to, Duration::from_secs(a.max_seconds)).await;
    let reshard_end = load_start.elapsed();
    let progress = match progress {
        Ok(p) => p,
        Err(e) => {
            stop.store(true, Ordering::SeqCst);
            let _ = load.await;
            return Err(e);
        }
    };
    tokio::time::sleep(Duration::from_secs(a.settle)).await;
    stop.store(true, Ordering::SeqCst);
    load.await.context("the load task")??;

    let metrics_after = pause_buckets(c, &sources).await?;
    let owned = owned_counts(c).await?;
    ensure!(
        owned.iter().sum::<usize>() == DEFAULT_SLOTS as usize
            && owned
                .iter()
                .enumerate()
                .all(|(i, n)| (*n > 0) == (i < a.to as usize)),
        "after the resharding the shards own {owned:?} slots: not every slot has one owner in the new ring"
    );
    check_blobs(c, &names, &moved, a.object_kib).await?;
    let logged = logged_pauses(c, processes(a));

    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    if let Some(path) = &a.requests_csv {
        write_csv(path, &samples, &moved)?;
    }
    let report = Report {
        a,
        samples: &samples,
        moved: &moved,
        moved_objects,
        moved_occupied: moved.intersection(&occupied).count(),
        window: (reshard_start, reshard_end),
        progress: &progress,
        pause_buckets: prom::delta(&metrics_after, &metrics_before),
        logged: &logged,
        owned: &owned,
        fill_s,
    };
    report.print();
    Ok(())
}

fn processes(a: &Args) -> usize {
    a.from.max(a.to) as usize
}

/// Writes the blob into every object, `fill_concurrency` at a time, each through the shard that
/// owns it (no forwarding hop).
async fn fill(c: &LocalCluster, names: &[String], a: &Args) -> Result<()> {
    use futures_util::StreamExt as _;
    let client = Client::new();
    let entries = c.entries();
    let body =
        Arc::new(serde_json::json!({ "key": BLOB_KEY, "value": blob(a.object_kib) }).to_string());
    let mut writes = futures_util::stream::iter(names.iter().map(|n| {
        let url = format!(
            "{}/objects/{CLASS}/name/{n}/put-raw",
            entries[owner(n, DEFAULT_SLOTS, a.from as usize)]
        );
        let client = client.clone();
        let body = body.clone();
        async move {
            for _ in 0..20 {
                match client.post(&url, &body).await {
                    Ok(r) if (200..300).contains(&r.status) => return Ok(()),
                    Ok(r) if r.status == 503 => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Ok(r) => bail!("fill {url}: {} {}", r.status, r.body),
                    Err(e) => bail!("fill: {e}"),
                }
            }
            bail!("fill {url}: still 503 after 20 tries")
        }
    }))
    .buffer_unordered(a.fill_concurrency.max(1));
    let mut done = 0usize;
    while let Some(r) = writes.next().await {
        r?;
        done += 1;
        if done.is_multiple_of(2000) {
            eprintln!("  filled {done}");
        }
    }
    Ok(())
}

/// Sends `rate` increments per second on a fixed schedule until `stop`, each to a random object
/// through a random shard's ingress, without waiting for earlier answers.
async fn open_loop(
    entries: Vec<String>,
    names: Arc<Vec<String>>,
    rate: u32,
    start: Instant,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
) -> Result<()> {
    let client = Client::new();
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut rng = Rng::new(1);
    let mut inflight = tokio::task::JoinSet::new();
    let mut i: u32 = 0;
    while !stop.load(Ordering::SeqCst) {
        let sent = period * i;
        i = i.checked_add(1).context("the load ran too long")?;
        tokio::time::sleep_until((start + sent).into()).await;
        let name = &names[rng.below(names.len() as u64) as usize];
        let entry = &entries[rng.below(entries.len() as u64) as usize];
        let url = format!("{entry}/objects/{CLASS}/name/{name}/increment");
        let slot = slot_of(name);
        let client = client.clone();
        let samples = samples.clone();
        inflight.spawn(async move {
            let reply: Result<Reply, String> = client.post(&url, "").await;
            let latency = start.elapsed().saturating_sub(sent);
            let status = reply.ok().map(|r| r.status);
            samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Sample {
                    sent,
                    slot,
                    status,
                    latency,
                });
        });
        // Reap what finished, so the set stays small.
        while inflight.try_join_next().is_some() {}
    }
    while inflight.join_next().await.is_some() {}
    Ok(())
}

/// `stead_handoff_pause_seconds` buckets summed over `shards`.
async fn pause_buckets(c: &LocalCluster, shards: &[usize]) -> Result<Vec<(f64, f64)>> {
    let mut sum: Vec<(f64, f64)> = Vec::new();
    for &s in shards {
        let text = c.metrics(s).await?;
        for (le, n) in prom::buckets(&text, "stead_handoff_pause_seconds") {
            match sum.iter_mut().find(|(l, _)| *l == le) {
                Some(b) => b.1 += n,
                None => sum.push((le, n)),
            }
        }
    }
    sum.sort_by(|x, y| x.0.total_cmp(&y.0));
    Ok(sum)
}

async fn owned_counts(c: &LocalCluster) -> Result<Vec<usize>> {
    let mut out = vec![];
    for i in 0..c.shard_count() {
        let v = stead_e2e::reshard::owned_slots(c, i).await?;
        out.push(v["owned"].as_array().map_or(0, Vec::len));
    }
    Ok(out)
}

/// Reads back the blob of up to 50 objects of moved slots: the data really moved.
async fn check_blobs(
    c: &LocalCluster,
    names: &[String],
    moved: &HashSet<u32>,
    kib: usize,
) -> Result<()> {
    let client = Client::new();
    let entry = &c.entries()[0];
    let mut checked = 0;
    for n in names
        .iter()
        .filter(|n| moved.contains(&slot_of(n)))
        .take(50)
    {
        let url = format!("{entry}/objects/{CLASS}/name/{n}/get-raw?key={BLOB_KEY}");
        let r = client.get(&url).await.map_err(anyhow::Error::msg)?;
        ensure!(
            r.status == 200,
            "{n} after the move: {} {}",
            r.status,
            r.body
        );
        let len = r.json().and_then(|v| v.as_str().map(str::len));
        ensure!(
            len == Some(kib * 1024),
            "{n} after the move: blob of {len:?} bytes, expected {}",
            kib * 1024
        );
        checked += 1;
    }
    ensure!(
        checked > 0 || moved.is_empty(),
        "no object in a moved slot to check"
    );
    Ok(())
}

/// The `pause_ms` of every `slot handed over` line in the sidecars' logs (they log it at
/// `info`; empty at the default `warn`).
fn logged_pauses(c: &LocalCluster, shards: usize) -> Vec<f64> {
    let mut out = vec![];
    for i in 0..shards {
        let path = c.root().join(format!("shard-{i}")).join("sidecar.log");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        out.extend(text.lines().filter_map(pause_of_line));
    }
    out
}

/// `pause_ms` of one log line of a finished hand-off, ANSI colours removed.
fn pause_of_line(line: &str) -> Option<f64> {
    if !line.contains("slot handed over") {
        return None;
    }
    let plain = strip_ansi(line);
    let rest = &plain[plain.find("pause_ms=")? + "pause_ms=".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            // CSI: ESC [ params final-byte (a letter)
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

fn write_csv(path: &PathBuf, samples: &[Sample], moved: &HashSet<u32>) -> Result<()> {
    use std::fmt::Write as _;
    let mut text = String::from("sent_ms,slot,moved,status,latency_ms\n");
    for s in samples {
        let _ = writeln!(
            text,
            "{:.3},{},{},{},{:.3}",
            s.sent.as_secs_f64() * 1000.0,
            s.slot,
            u8::from(moved.contains(&s.slot)),
            s.status.map_or("none".to_string(), |x| x.to_string()),
            s.latency.as_secs_f64() * 1000.0
        );
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

/// Percentiles of a list of milliseconds (exact: nearest rank).
fn percentiles_ms(values: &mut [f64]) -> Option<Latency> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
        values[rank - 1]
    };
    Some(Latency {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: values[values.len() - 1],
    })
}

/// Counts and latency of a group of samples.
struct Group {
    n: usize,
    ok: usize,
    unavailable: usize,
    other: usize,
    latency: Option<Latency>,
}

impl Group {
    fn of<'a>(samples: impl Iterator<Item = &'a Sample>) -> Group {
        let mut hist = new_hist();
        let (mut n, mut ok, mut unavailable, mut other) = (0, 0, 0, 0);
        for s in samples {
            n += 1;
            match s.status {
                Some(200..=299) => ok += 1,
                Some(503) => unavailable += 1,
                _ => other += 1,
            }
            let us = u64::try_from(s.latency.as_micros()).unwrap_or(u64::MAX);
            let _ = hist.record(us.clamp(1, 60_000_000));
        }
        Group {
            n,
            ok,
            unavailable,
            other,
            latency: (n > 0).then(|| Latency::of(&hist)),
        }
    }

    fn line(&self, what: &str) -> String {
        format!(
            "  {what:<34} {:>6} req  {:>5} 503  {:>3} other  {}",
            self.n,
            self.unavailable,
            self.other,
            self.latency.map_or("-".into(), |l| l.line())
        )
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.n, "ok": self.ok, "unavailable": self.unavailable, "other": self.other,
            "latency": self.latency.map(|l| l.json()),
        })
    }
}

struct Report<'a> {
    a: &'a Args,
    samples: &'a [Sample],
    moved: &'a HashSet<u32>,
    moved_objects: usize,
    /// Moved slots that hold at least one object.
    moved_occupied: usize,
    /// The resharding, from the POST to the first `done`, on the load's clock.
    window: (Duration, Duration),
    progress: &'a serde_json::Value,
    pause_buckets: Vec<(f64, f64)>,
    logged: &'a [f64],
    owned: &'a [usize],
    fill_s: f64,
}

impl Report<'_> {
    fn print(&self) {
        let (w0, w1) = self.window;
        let during = |s: &&Sample| s.sent >= w0 && s.sent <= w1;
        let moved = |s: &&Sample| self.moved.contains(&s.slot);
        let all = Group::of(self.samples.iter());
        let before = Group::of(self.samples.iter().filter(|s| s.sent < w0));
        let after = Group::of(self.samples.iter().filter(|s| s.sent > w1));
        let during_all = Group::of(self.samples.iter().filter(during));
        let during_moved = Group::of(self.samples.iter().filter(during).filter(moved));
        let during_kept = Group::of(
            self.samples
                .iter()
                .filter(during)
                .filter(|s| !self.moved.contains(&s.slot)),
        );

        // Client view of the pause: per moved slot, the longest request to it during the
        // resharding.
        let mut per_slot: BTreeMap<u32, f64> = BTreeMap::new();
        for s in self.samples.iter().filter(during).filter(moved) {
            let ms = s.latency.as_secs_f64() * 1000.0;
            let e = per_slot.entry(s.slot).or_insert(0.0);
            *e = e.max(ms);
        }
        let mut slot_max: Vec<f64> = per_slot.values().copied().collect();
        let client_pause = percentiles_ms(&mut slot_max);
        let mut logged = self.logged.to_vec();
        let logged_pause = percentiles_ms(&mut logged);
        let q = |x: f64| prom::quantile(&self.pause_buckets, x).map(|s| s * 1000.0);
        let metric_count = self.pause_buckets.last().map_or(0.0, |b| b.1);

        let p = self.progress;
        let secs = p["seconds"].as_f64().unwrap_or(0.0);
        let bytes = p["bytes"].as_f64().unwrap_or(0.0);
        let mb = bytes / 1e6;
        let mbps = if secs > 0.0 { mb / secs } else { 0.0 };
        let share = |g: &Group| {
            if g.n == 0 {
                0.0
            } else {
                100.0 * g.unavailable as f64 / g.n as f64
            }
        };
        let a = self.a;
        println!(
            "reshard {} -> {}: {} objects x {} KiB, {} req/s open loop over {} entries",
            a.from,
            a.to,
            a.objects,
            a.object_kib,
            a.rate,
            processes(a)
        );
        println!(
            "  fill: {:.1} s; moved slots {} ({} holding data, {} objects)",
            self.fill_s,
            self.moved.len(),
            self.moved_occupied,
            self.moved_objects
        );
        println!(
            "  resharding: {secs:.1} s (client saw {:.1} s), {} slots moved, {} objects, {mb:.1} MB, {mbps:.1} MB/s; owned after {:?}",
            (w1 - w0).as_secs_f64(),
            p["moved"],
            p["objects"],
            self.owned
        );
        println!(
            "  503 share: {:.2}% during the resharding, {:.2}% of the whole run",
            share(&during_all),
            share(&all)
        );
        println!("{}", before.line("before"));
        println!("{}", during_kept.line("during, unmoved slots"));
        println!("{}", during_moved.line("during, moved slots"));
        println!("{}", after.line("after"));
        match client_pause {
            Some(l) => println!(
                "  pause per moved slot, client view ({} of {} moved slots got a request during the resharding): {}",
                per_slot.len(),
                self.moved.len(),
                l.line()
            ),
            None => println!("  pause per moved slot, client view: no request hit a moved slot"),
        }
        println!(
            "  pause per slot, sidecar histogram ({metric_count} hand-offs): p50 {}  p99 {}  (bucket bounds double: 0.1 ms .. 52 s); coordinator max {} ms",
            fmt_ms(q(0.50)),
            fmt_ms(q(0.99)),
            p["max_pause_ms"]
        );
        match logged_pause {
            Some(l) => println!(
                "  pause per slot, sidecar logs ({} hand-offs): {}",
                self.logged.len(),
                l.line()
            ),
            None => {
                println!("  pause per slot, sidecar logs: none (run with STEAD_E2E_LOG=info)")
            }
        }
        let json = serde_json::json!({
            "bench": "reshard",
            "from": a.from, "to": a.to, "objects": a.objects, "object_kib": a.object_kib,
            "rate": a.rate, "fill_s": round1(self.fill_s),
            "moved_slots": self.moved.len(), "moved_objects": self.moved_objects,
            "reshard_s": secs, "client_window_s": (w1 - w0).as_secs_f64(),
            "bytes": bytes, "mb_per_s": round1(mbps),
            "unavailable_pct_during": share(&during_all), "unavailable_pct_all": share(&all),
            "before": before.json(), "during_unmoved": during_kept.json(),
            "during_moved": during_moved.json(), "after": after.json(),
            "pause_client": {
                "slots": per_slot.len(),
                "latency": client_pause.map(|l| l.json()),
            },
            "pause_metric": {"handoffs": metric_count, "p50_ms": q(0.50), "p99_ms": q(0.99)},
            "pause_logs": {"handoffs": self.logged.len(), "latency": logged_pause.map(|l| l.json())},
            "max_pause_ms": p["max_pause_ms"],
        });
        println!("{json}");
    }
}

fn fmt_ms(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.2} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_is_read_from_a_coloured_log_line() {
        let line = "\u{1b}[2m2026-11-29T23:40:01.1Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2mstead_sidecar::handoff\u{1b}[0m\u{1b}[2m:\u{1b}[0m slot handed over \u{1b}[3mslot\u{1b}[0m\u{1b}[2m=\u{1b}[0m12 \u{1b}[3mpause_ms\u{1b}[0m\u{1b}[2m=\u{1b}[0m3.25 \u{1b}[3mbytes\u{1b}[0m\u{1b}[2m=\u{1b}[0m9";
        assert_eq!(pause_of_line(line), Some(3.25));
        assert_eq!(
            pause_of_line("INFO slot handed over slot=1 pause_ms=0.5"),
            Some(0.5)
        );
        assert_eq!(pause_of_line("INFO something else pause_ms=7"), None);
    }

    #[test]
    fn exact_percentiles_use_the_nearest_rank() {
        let mut v: Vec<f64> = (1..=200).rev().map(f64::from).collect();
        let l = percentiles_ms(&mut v).unwrap();
        assert_eq!((l.p50, l.p90, l.p99, l.max), (100.0, 180.0, 198.0, 200.0));
        assert!(percentiles_ms(&mut []).is_none());
    }

    #[test]
    fn blobs_have_the_asked_size() {
        assert_eq!(blob(3).len(), 3 * 1024);
        assert!(blob(1).bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
