//! `stead-bench soak`: mixed load for minutes on end, with the servers' memory and descriptors
//! sampled, to see whether anything grows. Against running sidecars (e.g. `stead dev --example
//! counter` and `stead dev --example chat`), at once:
//!
//! - counter increments over `--objects` objects picked at random (they open, hibernate after
//!   the sidecar's idle timeout and open again), a share of them on one hot object;
//! - alarms set at a fixed rate on random objects, 0.5–5 s ahead (fired counted from /metrics);
//! - chat: `--rooms` rooms of `--members` WebSockets; one member of each room sends at a fixed
//!   rate, and the latency is the time until its own message comes back in the broadcast.
//!
//! Every `--sample-secs` it reads `VmRSS` (`/proc/<pid>/status`) and the open descriptors
//! (`/proc/<pid>/fd`) of each `--watch`ed process, and at the end prints throughput, latency
//! percentiles, errors by status and, per process, the RSS and descriptor series summary
//! (start, max, end, slope) and one more sample `--cooldown-secs` after the load stopped, then
//! one JSON line. It stops by itself after `--minutes` and the cool-down.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request};
use tokio::time::{Instant, MissedTickBehavior, interval, sleep, timeout_at};
use tokio_tungstenite::connect_async_with_config;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{
    Latency, Rng, Sender, Target, check_fd_budget, connect, new_hist, round1, url_port,
};
use crate::{procfs, prom};

const FIRED: &str = "stead_alarms_fired_total";

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// How long to run, in minutes.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Ingress of the sidecar serving the counter example (`Counter` objects).
    #[arg(long, default_value = "http://127.0.0.1:8787")]
    counter: String,
    /// Ingress of the sidecar serving the chat example (`ChatRoom` objects), e.g.
    /// ws://127.0.0.1:8797; no chat load without it.
    #[arg(long)]
    chat: Option<String>,
    /// Counter objects the increments are spread over.
    #[arg(long, default_value_t = 20_000)]
    objects: u64,
    /// Concurrent increment workers, each with one request in flight.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Share of increments that go to the one hot object `soak-hot`.
    #[arg(long, default_value_t = 0.2)]
    hot_share: f64,
    /// Alarms set per second (each on a random one of 1,000 objects, 0.5–5 s ahead); 0 for none.
    #[arg(long, default_value_t = 20.0)]
    alarms_per_sec: f64,
    #[arg(long, default_value_t = 4)]
    rooms: usize,
    /// WebSockets per chat room (each receives every message of its room).
    #[arg(long, default_value_t = 16)]
    members: usize,
    /// Messages per second sent into each room.
    #[arg(long, default_value_t = 10.0)]
    chat_per_sec: f64,
    /// Processes to sample, comma separated `name=port` (the process listening on that port)
    /// or `name=pid:N`; default: `sidecar=` the counter ingress port.
    #[arg(long, value_delimiter = ',')]
    watch: Vec<String>,
    /// Admin /metrics URLs of the sidecars (alarm fires are counted there), comma separated.
    #[arg(long, value_delimiter = ',')]
    metrics: Vec<String>,
    /// Seconds between samples of RSS and descriptors.
    #[arg(long, default_value_t = 5.0)]
    sample_secs: f64,
    /// After the load, wait this many seconds and sample once more (memory of objects that
    /// hibernated meanwhile should be back with the system); 0 skips it.
    #[arg(long, default_value_t = 30.0)]
    cooldown_secs: f64,
    /// Also write every sample as CSV (`t_s,process,pid,rss_kib,fds`) to this file.
    #[arg(long)]
    series: Option<std::path::PathBuf>,
    #[arg(long, default_value = "")]
    label: String,
}

/// Outcomes of one kind of operation.
struct Kind {
    name: &'static str,
    ok: AtomicU64,
    hist: Mutex<Histogram<u64>>,
    /// Status code (or `transport`) → count.
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Kind {
    fn new(name: &'static str) -> Arc<Kind> {
        Arc::new(Kind {
            name,
            ok: AtomicU64::new(0),
            hist: Mutex::new(new_hist()),
            errors: Mutex::new(BTreeMap::new()),
        })
    }

    fn ok(&self, took: Duration) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        self.hist
            .lock()
            .expect("not poisoned")
            .saturating_record(took.as_micros().max(1) as u64);
    }

    fn error(&self, what: impl Into<String>) {
        *self
            .errors
            .lock()
            .expect("not poisoned")
            .entry(what.into())
            .or_default() += 1;
    }

    fn error_count(&self) -> u64 {
        self.errors.lock().expect("not poisoned").values().sum()
    }
}

/// Sends `method path` on a keep-alive connection to `authority`, (re)connecting as needed.
async fn send(
    sender: &mut Option<Sender>,
    authority: &str,
    method: Method,
    path: &str,
) -> Result<u16> {
    if sender.as_ref().is_some_and(Sender::is_closed) {
        *sender = None;
    }
    let s = match sender {
        Some(s) => s,
        None => sender.insert(connect(authority).await?),
    };
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .body(Empty::<Bytes>::new())?;
    let result = async {
        s.ready().await?;
        let resp = s.send_request(req).await?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await?;
        Ok::<_, anyhow::Error>(status)
    }
    .await;
    if result.is_err() {
        *sender = None;
    }
    result
}

/// Records one request's outcome.
fn record(kind: &Kind, started: Instant, result: Result<u16>) {
    match result {
        Ok(s) if (200..300).contains(&s) => kind.ok(started.elapsed()),
        Ok(s) => kind.error(s.to_string()),
        Err(_) => kind.error("transport"),
    }
}

async fn increments(
    args: Arc<Args>,
    t: Arc<Target>,
    seed: u64,
    end: Instant,
    normal: Arc<Kind>,
    hot: Arc<Kind>,
) {
    let mut rng = Rng::new(seed);
    let mut sender = None;
    let hot_cut = (args.hot_share.clamp(0.0, 1.0) * 1_000_000.0) as u64;
    while Instant::now() < end {
        let is_hot = rng.below(1_000_000) < hot_cut;
        let name = if is_hot {
            "soak-hot".to_string()
        } else {
            format!("soak-{}", rng.below(args.objects.max(1)))
        };
        let path = format!("/objects/Counter/name/{name}/increment");
        let started = Instant::now();
        let Ok(result) =
            timeout_at(end, send(&mut sender, &t.authority, Method::POST, &path)).await
        else {
            break; // in flight at the end: not counted
        };
        let failed = result.is_err();
        record(if is_hot { &hot } else { &normal }, started, result);
        if failed {
            sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn alarms(args: Arc<Args>, t: Arc<Target>, end: Instant, kind: Arc<Kind>) {
    let mut rng = Rng::new(u64::MAX);
    let mut sender = None;
    let mut tick = interval(Duration::from_secs_f64(1.0 / args.alarms_per_sec));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        let path = format!(
            "/objects/Counter/name/soak-alarm-{}/alarm?in_ms={}",
            rng.below(1000),
            500 + rng.below(4500)
        );
        let started = Instant::now();
        let Ok(result) =
            timeout_at(end, send(&mut sender, &t.authority, Method::POST, &path)).await
        else {
            break;
        };
        record(&kind, started, result);
    }
}

/// Sums the alarm fires of every sidecar (NaN when a scrape fails).
async fn fired(urls: &[Target]) -> f64 {
    let mut total = 0.0;
    for t in urls {
        let mut s = None;
        let text = async {
            let sender = s.insert(connect(&t.authority).await?);
            let req = Request::builder()
                .uri(&t.path)
                .header(hyper::header::HOST, &t.authority)
                .body(Empty::<Bytes>::new())?;
            sender.ready().await?;
            let body = sender
                .send_request(req)
                .await?
                .into_body()
                .collect()
                .await?;
            Ok::<_, anyhow::Error>(String::from_utf8_lossy(&body.to_bytes()).into_owned())
        }
        .await;
        match text {
            Ok(text) => total += prom::sum(&text, FIRED, &[("result", "success")]),
            Err(_) => return f64::NAN,
        }
    }
    total
}

/// One chat room: `members` sockets, member 0 sends; latency until its own message returns.
async fn room(
    base: String,
    room: String,
    args: Arc<Args>,
    end: Instant,
    kind: Arc<Kind>,
    delivered: Arc<AtomicU64>,
) {
    let run = format!("~{room}.");
    let pending: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let url = |i: usize| format!("{base}/objects/ChatRoom/name/{room}/ws?name=m{i}");
    // Listeners: count what they receive, reconnect when dropped.
    for i in 1..args.members {
        let (url, kind, delivered) = (url(i), kind.clone(), delivered.clone());
        tokio::spawn(async move {
            while Instant::now() < end {
                match timeout_at(end, connect_async_with_config(&url, None, true)).await {
                    Err(_) => break,
                    Ok(Err(_)) => {
                        kind.error("ws connect");
                        sleep(Duration::from_secs(1)).await;
                    }
                    Ok(Ok((mut ws, _))) => {
                        while let Ok(Some(msg)) = timeout_at(end, ws.next()).await {
                            match msg {
                                Ok(Message::Text(_)) => {
                                    delivered.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(_) => {}
                                Err(_) => break,
                            }
                        }
                        if Instant::now() < end {
                            kind.error("ws dropped");
                        } else {
                            let _ = ws.close(None).await;
                        }
                    }
                }
            }
        });
    }
    let mut k = 0u64;
    let mut tick = interval(Duration::from_secs_f64(1.0 / args.chat_per_sec));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while Instant::now() < end {
        let ws = match timeout_at(end, connect_async_with_config(url(0), None, true)).await {
            Err(_) => break,
            Ok(Err(_)) => {
                kind.error("ws connect");
                sleep(Duration::from_secs(1)).await;
                continue;
            }
            Ok(Ok((ws, _))) => ws,
        };
        let (mut sink, mut stream) = ws.split();
        let reader = {
            let (pending, kind, delivered, run) = (
                pending.clone(),
                kind.clone(),
                delivered.clone(),
                run.clone(),
            );
            tokio::spawn(async move {
                while let Some(Ok(msg)) = stream.next().await {
                    let Message::Text(t) = msg else { continue };
                    delivered.fetch_add(1, Ordering::Relaxed);
                    let Some(n) = find_token(t.as_str(), &run) else {
                        continue;
                    };
                    if let Some(sent) = pending.lock().expect("not poisoned").remove(&n) {
                        kind.ok(sent.elapsed());
                    }
                }
            })
        };
        loop {
            tick.tick().await;
            if Instant::now() >= end || reader.is_finished() {
                break;
            }
            pending
                .lock()
                .expect("not poisoned")
                .insert(k, Instant::now());
            if sink
                .send(Message::text(format!("soak {run}{k}~")))
                .await
                .is_err()
            {
                break;
            }
            k += 1;
        }
        if Instant::now() < end {
            kind.error("ws dropped");
        }
        // Give the last messages a moment to come back, then close.
        sleep(Duration::from_millis(500)).await;
        let _ = sink.close().await;
        reader.abort();
        let lost = pending.lock().expect("not poisoned").drain().count() as u64;
        if lost > 0 && Instant::now() < end {
            kind.error("ws message lost");
        }
    }
}

fn find_token(hay: &str, prefix: &str) -> Option<u64> {
    let rest = &hay[hay.find(prefix)? + prefix.len()..];
    rest[..rest.find('~')?].parse().ok()
}

/// A process to sample: found by the port it listens on (again after a restart) or its pid.
struct Watched {
    name: String,
    port: Option<u16>,
    pid: Option<u32>,
    /// Seconds since start, RSS KiB, open descriptors.
    series: Vec<(f64, u64, u64)>,
    /// Times the pid changed (the process was restarted).
    restarts: u32,
}

fn parse_watch(spec: &str) -> Result<Watched> {
    let (name, what) = spec
        .split_once('=')
        .with_context(|| format!("--watch wants name=port or name=pid:N, not {spec:?}"))?;
    let (port, pid) = match what.strip_prefix("pid:") {
        Some(p) => (None, Some(p.parse().context("bad pid in --watch")?)),
        None => (Some(what.parse().context("bad port in --watch")?), None),
    };
    Ok(Watched {
        name: name.to_string(),
        port,
        pid,
        series: Vec::new(),
        restarts: 0,
    })
}

fn fd_count(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

impl Watched {
    /// One sample: (RSS KiB, fds), finding the process again by its port if it went away.
    fn sample(&mut self) -> Option<(u32, u64, u64)> {
        for _ in 0..2 {
            if let Some(pid) = self.pid
                && let (Ok(rss), Some(fds)) = (procfs::rss_bytes(pid), fd_count(pid))
            {
                return Some((pid, rss / 1024, fds));
            }
            let port = self.port?;
            let (pid, _) = procfs::listener_pid(port).ok()?;
            if self.pid.is_some_and(|old| old != pid) {
                self.restarts += 1;
            }
            self.pid = Some(pid);
        }
        None
    }
}

/// Least-squares slope of `y` over `t`, per hour of `t` seconds.
fn slope_per_hour(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let cov: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - my)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var * 3600.0 }
}

/// start, max, end, slope per hour (all samples), slope per hour (second half).
fn summary(points: &[(f64, f64)]) -> [f64; 5] {
    let Some(first) = points.first() else {
        return [f64::NAN; 5];
    };
    let max = points.iter().map(|p| p.1).fold(f64::MIN, f64::max);
    let end = points.last().map_or(f64::NAN, |p| p.1);
    let half = &points[points.len() / 2..];
    [
        first.1,
        max,
        end,
        slope_per_hour(points),
        slope_per_hour(half),
    ]
}

pub async fn run(args: Args) -> Result<()> {
    if args.minutes <= 0.0 || args.connections == 0 || args.sample_secs <= 0.0 {
        bail!("--minutes, --connections and --sample-secs must be positive");
    }
    if args.chat.is_some() && (args.rooms == 0 || args.members == 0 || args.chat_per_sec <= 0.0) {
        bail!("with --chat, --rooms, --members and --chat-per-sec must be positive");
    }
    let counter = Arc::new(Target::parse(&args.counter)?);
    let metrics: Vec<Target> = args
        .metrics
        .iter()
        .map(|m| Target::parse(m))
        .collect::<Result<_>>()?;
    let mut watched: Vec<Watched> = if args.watch.is_empty() {
        vec![parse_watch(&format!(
            "sidecar={}",
            url_port(&args.counter)?
        ))?]
    } else {
        args.watch
            .iter()
            .map(|w| parse_watch(w))
            .collect::<Result<_>>()?
    };
    if let Some(chat) = &args.chat {
        check_fd_budget(args.connections + args.rooms * args.members)?;
        if !chat.starts_with("ws://") {
            bail!("--chat must be a ws:// URL");
        }
    }
    let mut csv = match &args.series {
        Some(p) => {
            Some(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => None,
    };
    if let Some(f) = csv.as_mut() {
        use std::io::Write as _;
        writeln!(f, "t_s,process,pid,rss_kib,fds")?;
    }
    let args = Arc::new(args);
    let fired_before = fired(&metrics).await;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.minutes * 60.0);
    let (normal, hot, alarm, chat) = (
        Kind::new("increment"),
        Kind::new("hot increment"),
        Kind::new("alarm set"),
        Kind::new("chat message"),
    );
    let delivered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..args.connections {
        tasks.push(tokio::spawn(increments(
            args.clone(),
            counter.clone(),
            i as u64,
            end,
            normal.clone(),
            hot.clone(),
        )));
    }
    if args.alarms_per_sec > 0.0 {
        tasks.push(tokio::spawn(alarms(
            args.clone(),
            counter.clone(),
            end,
            alarm.clone(),
        )));
    }
    if let Some(base) = &args.chat {
        let run_id = format!("{:06x}", Rng::new(7).next() as u32 & 0xff_ffff);
        for r in 0..args.rooms {
            tasks.push(tokio::spawn(room(
                base.trim_end_matches('/').to_string(),
                format!("soak-{run_id}-{r}"),
                args.clone(),
                end,
                chat.clone(),
                delivered.clone(),
            )));
        }
    }
    let kinds = [&normal, &hot, &alarm, &chat];

    // Sample until the end; a progress line every minute.
    let mut tick = interval(Duration::from_secs_f64(args.sample_secs));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_progress = 60.0;
    loop {
        tick.tick().await;
        let t = start.elapsed().as_secs_f64();
        let mut line = format!("  [{:>5.1} min]", t / 60.0);
        for w in &mut watched {
            if let Some((pid, rss, fds)) = w.sample() {
                w.series.push((t, rss, fds));
                if let Some(f) = csv.as_mut() {
                    use std::io::Write as _;
                    writeln!(f, "{t:.1},{},{pid},{rss},{fds}", w.name)?;
                }
                let _ = write!(
                    line,
                    "  {} {:.1} MiB {fds} fds",
                    w.name,
                    rss as f64 / 1024.0
                );
            }
        }
        if t >= next_progress {
            next_progress += 60.0;
            let ok: u64 = kinds.iter().map(|k| k.ok.load(Ordering::Relaxed)).sum();
            let errors: u64 = kinds.iter().map(|k| k.error_count()).sum();
            println!("{line}  ok {ok} errors {errors}");
        }
        if Instant::now() >= end {
            break;
        }
    }
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let fired_total = fired(&metrics).await - fired_before;
    // (RSS KiB, fds) of each watched process once the load stopped and `--cooldown-secs` passed.
    let mut after: Vec<Option<(u64, u64)>> = vec![None; watched.len()];
    if args.cooldown_secs > 0.0 {
        sleep(Duration::from_secs_f64(args.cooldown_secs)).await;
        for (w, a) in watched.iter_mut().zip(after.iter_mut()) {
            *a = w.sample().map(|(_, rss, fds)| (rss, fds));
        }
    }

    let label = if args.label.is_empty() {
        "stead-bench soak"
    } else {
        &args.label
    };
    println!(
        "{label}: {} min, counter {} ({} objects, {} workers, {:.0}% hot), alarms {}/s, chat {}",
        args.minutes,
        args.counter,
        args.objects,
        args.connections,
        args.hot_share * 100.0,
        args.alarms_per_sec,
        args.chat.as_ref().map_or("off".to_string(), |c| format!(
            "{c} ({} rooms x {} members, {}/s each)",
            args.rooms, args.members, args.chat_per_sec
        ))
    );
    let mut kinds_json = serde_json::Map::new();
    for k in kinds {
        let ok = k.ok.load(Ordering::Relaxed);
        let lat = Latency::of(&k.hist.lock().expect("not poisoned"));
        let errors = k.errors.lock().expect("not poisoned").clone();
        println!(
            "  {:<14} {ok:>9} ok  {:>8.1}/s  {}  errors {errors:?}",
            k.name,
            ok as f64 / secs,
            lat.line()
        );
        let mut j =
            serde_json::json!({"ok": ok, "per_s": round1(ok as f64 / secs), "errors": errors});
        j.as_object_mut()
            .expect("object")
            .extend(lat.json().as_object().expect("object").clone());
        kinds_json.insert(k.name.to_string(), j);
    }
    let deliveries = delivered.load(Ordering::Relaxed);
    println!(
        "  chat deliveries {deliveries} ({:.1}/s); alarms fired {fired_total} (from /metrics; NaN without --metrics)",
        deliveries as f64 / secs
    );
    let mut procs = serde_json::Map::new();
    for (w, idle) in watched.iter().zip(&after) {
        let rss: Vec<(f64, f64)> = w
            .series
            .iter()
            .map(|s| (s.0, s.1 as f64 / 1024.0))
            .collect();
        let fds: Vec<(f64, f64)> = w.series.iter().map(|s| (s.0, s.2 as f64)).collect();
        let (r, f) = (summary(&rss), summary(&fds));
        println!(
            "  {:<14} RSS MiB start {:.1} max {:.1} end {:.1} slope {:+.1}/h (2nd half {:+.1}/h); fds start {} max {} end {} slope {:+.1}/h; {} samples, {} restarts",
            w.name,
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            f[0],
            f[1],
            f[2],
            f[3],
            w.series.len(),
            w.restarts
        );
        if let Some((rss, fds)) = idle {
            println!(
                "  {:<14} {}s after the load: RSS {:.1} MiB, {fds} fds",
                "",
                args.cooldown_secs,
                *rss as f64 / 1024.0
            );
        }
        procs.insert(
            w.name.clone(),
            serde_json::json!({
                "rss_mib": {"start": round1(r[0]), "max": round1(r[1]), "end": round1(r[2]),
                            "slope_per_h": round1(r[3]), "slope_2nd_half_per_h": round1(r[4])},
                "fds": {"start": f[0], "max": f[1], "end": f[2], "slope_per_h": round1(f[3])},
                "samples": w.series.len(), "restarts": w.restarts,
                "after_cooldown": idle.map(|(rss, fds)| serde_json::json!({
                    "rss_mib": round1(rss as f64 / 1024.0), "fds": fds})),
            }),
        );
    }
    let json = serde_json::json!({
        "bench": "soak", "label": args.label, "minutes": args.minutes, "seconds": round1(secs),
        "objects": args.objects, "connections": args.connections, "hot_share": args.hot_share,
        "alarms_per_sec": args.alarms_per_sec, "alarms_fired": fired_total,
        "chat": args.chat, "rooms": args.rooms, "members": args.members,
        "chat_per_sec": args.chat_per_sec, "chat_deliveries": deliveries,
        "cooldown_s": args.cooldown_secs,
        "kinds": kinds_json, "processes": procs,
    });
    println!("{json}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slopes_and_summaries() {
        let line: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64 * 360.0, 5.0 + i as f64))
            .collect();
        assert!((slope_per_hour(&line) - 10.0).abs() < 1e-9);
        let s = summary(&line);
        assert_eq!([s[0], s[1], s[2]], [5.0, 14.0, 14.0]);
        assert!((s[4] - 10.0).abs() < 1e-9);
        assert_eq!(slope_per_hour(&[(1.0, 3.0)]), 0.0);
        assert!(summary(&[])[0].is_nan());
    }

    #[test]
    fn watch_specs_and_tokens() {
        let w = parse_watch("sidecar=8787").unwrap();
        assert_eq!(
            (w.name.as_str(), w.port, w.pid),
            ("sidecar", Some(8787), None)
        );
        let w = parse_watch("app=pid:42").unwrap();
        assert_eq!((w.port, w.pid), (None, Some(42)));
        assert!(parse_watch("nothing").is_err());
        assert!(parse_watch("x=pid:y").is_err());
        assert_eq!(find_token(r#"{"text":"soak ~r-1.17~"}"#, "~r-1."), Some(17));
        assert_eq!(find_token("soak ~r-2.17~", "~r-1."), None);
    }

    #[test]
    fn samples_this_process() {
        let mut w = parse_watch(&format!("me=pid:{}", std::process::id())).unwrap();
        let (pid, rss, fds) = w.sample().unwrap();
        assert_eq!(pid, std::process::id());
        assert!(rss > 0 && fds > 0);
    }
}
