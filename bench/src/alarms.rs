//! `stead-bench alarms`: sets one alarm on each of M objects (bounded concurrency, keep-alive
//! connections), then scrapes the sidecars' /metrics every 100 ms until all M alarms fired with
//! success. Prints the set rate, the fire rate (from the first scrape that saw a fire to the one
//! that saw the last; so ±1 scrape interval), and lag percentiles estimated from the buckets of
//! `stead_alarm_lag_seconds` (so only as precise as those buckets).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request};
use tokio::time::{Instant, MissedTickBehavior, interval};

use crate::common::{Latency, Sender, Target, connect, new_hist, round1};
use crate::prom;

const FIRED: &str = "stead_alarms_fired_total";
const LAG: &str = "stead_alarm_lag_seconds";

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// URL that sets an alarm; `{object}` is replaced by the object's name and `{in_ms}` (if
    /// present) by the delay, e.g.
    /// http://127.0.0.1:8787/objects/Counter/name/{object}/alarm?in_ms={in_ms}
    #[arg(long)]
    url: String,
    /// Admin /metrics URLs of every shard, comma separated (their counters are summed).
    #[arg(long, value_delimiter = ',', required = true)]
    metrics: Vec<String>,
    #[arg(long, default_value_t = 10_000)]
    objects: u64,
    /// Object names are `{prefix}{k}`; the default adds a random run id so that every run
    /// uses new objects.
    #[arg(long)]
    object_prefix: Option<String>,
    /// Requests in flight while setting alarms.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Each alarm is due this long after its own request (sent as `{in_ms}`).
    #[arg(long, default_value_t = 1000)]
    in_ms: u64,
    /// Instead: every alarm is due at the same instant, this long after the bench starts
    /// (each request's `{in_ms}` is computed so), to measure firing alone.
    #[arg(long)]
    all_due_after_ms: Option<u64>,
    #[arg(long, default_value_t = 100)]
    scrape_ms: u64,
    /// Give up when not every alarm fired this many seconds after the last one was set.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    #[arg(long, default_value = "")]
    label: String,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn request(s: &mut Sender, method: Method, t: &Target, path: &str) -> Result<(u16, Bytes)> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, &t.authority)
        .body(Empty::<Bytes>::new())?;
    s.ready().await?;
    let resp = s.send_request(req).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// The concatenated /metrics text of every shard.
async fn scrape(urls: &[Target]) -> Result<String> {
    let mut all = String::new();
    for t in urls {
        let mut s = connect(&t.authority)
            .await
            .with_context(|| format!("connecting {}", t.authority))?;
        let (status, body) = request(&mut s, Method::GET, t, &t.path).await?;
        if status != 200 {
            bail!("{}{} answered {status}", t.authority, t.path);
        }
        all.push_str(std::str::from_utf8(&body)?);
        all.push('\n');
    }
    Ok(all)
}

fn fired(text: &str) -> f64 {
    prom::sum(text, FIRED, &[("result", "success")])
}

#[derive(Default)]
struct SetStats {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Sets the alarms of objects `next..objects`, one request at a time, on one connection.
async fn setter(
    args: &Args,
    target: &Target,
    prefix: &str,
    due_at_ms: Option<u64>,
    next: &AtomicU64,
    stats: &SetStats,
) -> hdrhistogram::Histogram<u64> {
    let mut hist = new_hist();
    let mut sender: Option<Sender> = None;
    loop {
        let k = next.fetch_add(1, Ordering::Relaxed);
        if k >= args.objects {
            return hist;
        }
        let in_ms = due_at_ms.map_or(args.in_ms, |at| at.saturating_sub(unix_ms()));
        let path = target
            .path
            .replace("{object}", &format!("{prefix}{k}"))
            .replace("{in_ms}", &in_ms.to_string());
        let start = Instant::now();
        let mut result = None;
        for _ in 0..2 {
            // a closed keep-alive connection gets one retry on a new one
            if sender.as_ref().is_none_or(Sender::is_closed) {
                sender = connect(&target.authority).await.ok();
            }
            let Some(s) = sender.as_mut() else { break };
            match request(s, Method::POST, target, &path).await {
                Ok((status, _)) => {
                    result = Some(status);
                    break;
                }
                Err(_) => sender = None,
            }
        }
        if result.is_some_and(|s| (200..300).contains(&s)) {
            stats.ok.fetch_add(1, Ordering::Relaxed);
            hist.saturating_record(start.elapsed().as_micros().max(1) as u64);
        } else {
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `(seconds since start, alarms fired since start)` every `scrape_ms`, until `expected`
/// (set once every alarm is set) have fired, or `deadline` after that.
async fn watch(
    urls: &[Target],
    base: f64,
    t0: Instant,
    every: Duration,
    expected: &AtomicU64,
    timeout: Duration,
) -> Result<(Vec<(f64, f64)>, String, bool)> {
    let mut samples = Vec::new();
    let mut tick = interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut deadline: Option<Instant> = None;
    loop {
        tick.tick().await;
        let at = t0.elapsed().as_secs_f64();
        let text = scrape(urls).await?;
        let n = fired(&text) - base;
        samples.push((at, n));
        let want = expected.load(Ordering::Acquire);
        if want != u64::MAX {
            if n >= want as f64 {
                return Ok((samples, text, false));
            }
            let d = *deadline.get_or_insert_with(|| Instant::now() + timeout);
            if Instant::now() >= d {
                return Ok((samples, text, true));
            }
        }
    }
}

/// Fires per second between the first sample that saw a fire and the first that saw them all,
/// with that window; `None` when everything fired between two samples.
fn fire_rate(samples: &[(f64, f64)], total: f64) -> Option<(f64, f64, f64)> {
    let first = samples.iter().find(|s| s.1 > 0.0)?;
    let last = samples.iter().find(|s| s.1 >= total)?;
    (last.0 > first.0).then(|| ((last.1 - first.1) / (last.0 - first.0), first.0, last.0))
}

pub async fn run(args: Args) -> Result<()> {
    if args.objects == 0 || args.concurrency == 0 || args.scrape_ms == 0 {
        bail!("--objects, --concurrency and --scrape-ms must be positive");
    }
    let target = Target::parse(&args.url)?;
    if args.all_due_after_ms.is_some() && !target.path.contains("{in_ms}") {
        bail!("--all-due-after-ms needs {{in_ms}} in --url");
    }
    let urls: Vec<Target> = args
        .metrics
        .iter()
        .map(|u| Target::parse(u))
        .collect::<Result<_>>()?;
    let prefix = args.object_prefix.clone().unwrap_or_else(|| {
        let run = crate::common::Rng::new(0).next() as u32;
        format!("alarm-{run:08x}-")
    });
    let before = scrape(&urls).await?;
    let (base, lag_before) = (fired(&before), prom::buckets(&before, LAG));

    let t0 = Instant::now();
    let due_at_ms = args.all_due_after_ms.map(|d| unix_ms() + d);
    let expected = Arc::new(AtomicU64::new(u64::MAX));
    let watcher = {
        let (urls, expected) = (urls.clone(), expected.clone());
        let every = Duration::from_millis(args.scrape_ms);
        let timeout = Duration::from_secs_f64(args.timeout);
        tokio::spawn(async move { watch(&urls, base, t0, every, &expected, timeout).await })
    };
    let shared = Arc::new((
        args.clone(),
        target,
        prefix,
        AtomicU64::new(0),
        SetStats::default(),
    ));
    let setters: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let sh = shared.clone();
            tokio::spawn(async move {
                let (args, target, prefix, next, stats) = &*sh;
                setter(args, target, prefix, due_at_ms, next, stats).await
            })
        })
        .collect();
    let mut set_hist = new_hist();
    for s in setters {
        set_hist.add(&s.await?)?;
    }
    let set_secs = t0.elapsed().as_secs_f64();
    let (ok, failed) = (
        shared.4.ok.load(Ordering::Relaxed),
        shared.4.failed.load(Ordering::Relaxed),
    );
    expected.store(ok, Ordering::Release);
    let (samples, after, timed_out) = watcher.await??;

    let total = samples.last().map_or(0.0, |s| s.1);
    let lag = prom::delta(&prom::buckets(&after, LAG), &lag_before);
    let q = |p| prom::quantile(&lag, p).map_or(f64::NAN, |s| s * 1000.0);
    let (p50, p90, p99, p100) = (q(0.5), q(0.9), q(0.99), q(1.0));
    let label = if args.label.is_empty() {
        "stead-bench alarms"
    } else {
        &args.label
    };
    let due = match args.all_due_after_ms {
        Some(d) => format!("all due {d} ms after the start"),
        None => format!("each due {} ms after its request", args.in_ms),
    };
    println!(
        "{label}: {} objects ({due}), {} setters, metrics {:?}",
        args.objects, args.concurrency, args.metrics
    );
    println!(
        "  set {ok} alarms ({failed} failed) in {set_secs:.2}s: {:.1}/s, set {}",
        ok as f64 / set_secs,
        Latency::of(&set_hist).line()
    );
    let first_seen = samples.iter().find(|s| s.1 > 0.0).map(|s| s.0);
    let rate = fire_rate(&samples, ok as f64);
    match (rate, first_seen) {
        (Some((r, from, to)), _) => println!(
            "  fired {total} (success): {r:.1} fires/s from the first fire seen at +{from:.2}s to the last at +{to:.2}s (scrapes every {} ms)",
            args.scrape_ms
        ),
        (None, Some(at)) => println!(
            "  fired {total} (success), all within one scrape interval ({} ms) at +{at:.2}s",
            args.scrape_ms
        ),
        (None, None) => println!("  fired {total} (success)"),
    }
    println!(
        "  lag (due → first attempt) ms, from histogram buckets (×2 apart, so coarse): p50 ~{p50:.1}  p90 ~{p90:.1}  p99 ~{p99:.1}  max ≤{p100:.1}"
    );
    if timed_out {
        println!(
            "  TIMED OUT: {total} of {ok} fired {}s after the last set",
            args.timeout
        );
    }
    let json = serde_json::json!({
        "bench": "alarms", "label": args.label, "url": args.url, "objects": args.objects,
        "concurrency": args.concurrency, "in_ms": args.in_ms,
        "all_due_after_ms": args.all_due_after_ms, "set_ok": ok, "set_failed": failed,
        "set_s": (set_secs * 100.0).round() / 100.0, "set_per_s": round1(ok as f64 / set_secs),
        "fired": total, "fires_per_s": rate.map(|r| round1(r.0)),
        "first_fire_s": first_seen, "all_fired_s": samples.last().map(|s| s.0),
        "lag_p50_ms": round1(p50), "lag_p90_ms": round1(p90), "lag_p99_ms": round1(p99),
        "lag_max_bucket_ms": round1(p100), "timed_out": timed_out,
    });
    println!("{json}");
    if timed_out {
        bail!("not every alarm fired");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_between_first_and_last_fire() {
        let s = [
            (0.1, 0.0),
            (0.2, 0.0),
            (1.1, 100.0),
            (2.1, 1100.0),
            (2.2, 1100.0),
        ];
        let (r, from, to) = fire_rate(&s, 1100.0).unwrap();
        assert!((r - 1000.0).abs() < 1e-6);
        assert_eq!((from, to), (1.1, 2.1));
        assert_eq!(fire_rate(&[(0.1, 0.0), (0.2, 50.0)], 50.0), None);
        assert_eq!(fire_rate(&[(0.1, 0.0)], 50.0), None);
    }
}
