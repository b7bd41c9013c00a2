//! `stead-bench open-objects`: opens N objects (one request each, e.g. an increment), keeps them
//! open (the sidecar's idle timeout must be longer than the run), and reports how much the
//! sidecar's resident memory (`VmRSS`) and open descriptors grew per open object. The sidecar is
//! found as the process listening on the URL's port, or given with `--pid`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request};
use tokio::time::{Instant, sleep};

use crate::common::{Latency, Sender, Target, connect, new_hist, round1, url_port};
use crate::procfs;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// URL of a request that opens an object; `{object}` is replaced by the object's name, e.g.
    /// http://127.0.0.1:18787/objects/Counter/name/{object}/increment
    #[arg(long)]
    url: String,
    /// HTTP method of that request.
    #[arg(long, default_value = "POST")]
    method: String,
    #[arg(long, default_value_t = 10_000)]
    objects: u64,
    /// Object names are `{prefix}{k}`; the default adds a random run id (new objects).
    #[arg(long)]
    object_prefix: Option<String>,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// The sidecar's pid; default: the process listening on the URL's port.
    #[arg(long)]
    pid: Option<u32>,
    /// Seconds to wait after the last request before measuring.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    #[arg(long, default_value = "")]
    label: String,
}

/// Open descriptors of `pid`.
fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

async fn opener(
    args: &Args,
    target: &Target,
    method: &Method,
    prefix: &str,
    next: &AtomicU64,
    failed: &AtomicU64,
) -> hdrhistogram::Histogram<u64> {
    let mut hist = new_hist();
    let mut sender: Option<Sender> = None;
    loop {
        let k = next.fetch_add(1, Ordering::Relaxed);
        if k >= args.objects {
            return hist;
        }
        let path = target.path.replace("{object}", &format!("{prefix}{k}"));
        let start = Instant::now();
        let mut ok = false;
        for _ in 0..2 {
            if sender.as_ref().is_none_or(Sender::is_closed) {
                sender = connect(&target.authority).await.ok();
            }
            let Some(s) = sender.as_mut() else { break };
            let req = Request::builder()
                .method(method.clone())
                .uri(&path)
                .header(hyper::header::HOST, &target.authority)
                .body(Empty::<Bytes>::new());
            let Ok(req) = req else { break };
            if s.ready().await.is_err() {
                sender = None;
                continue;
            }
            match s.send_request(req).await {
                Ok(resp) => {
                    ok = resp.status().is_success();
                    let _ = resp.into_body().collect().await;
                    break;
                }
                Err(_) => sender = None,
            }
        }
        if ok {
            hist.saturating_record(start.elapsed().as_micros().max(1) as u64);
        } else {
            failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub async fn run(args: Args) -> Result<()> {
    if args.objects == 0 || args.concurrency == 0 {
        bail!("--objects and --concurrency must be positive");
    }
    let target = Target::parse(&args.url)?;
    let method: Method = args.method.parse()?;
    let pid = match args.pid {
        Some(p) => p,
        None => procfs::listener_pid(url_port(&args.url)?)?.0,
    };
    let prefix = args.object_prefix.clone().unwrap_or_else(|| {
        let run = crate::common::Rng::new(0).next() as u32;
        format!("open-{run:08x}-")
    });
    let (rss0, fds0) = (procfs::rss_bytes(pid)?, fds(pid));
    let t0 = Instant::now();
    let shared = Arc::new((
        args.clone(),
        target,
        method,
        prefix,
        AtomicU64::new(0),
        AtomicU64::new(0),
    ));
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let sh = shared.clone();
            tokio::spawn(async move {
                let (args, target, method, prefix, next, failed) = &*sh;
                opener(args, target, method, prefix, next, failed).await
            })
        })
        .collect();
    let mut hist = new_hist();
    for t in tasks {
        hist.add(&t.await?)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    sleep(Duration::from_secs_f64(args.settle)).await;
    let (rss1, fds1) = (procfs::rss_bytes(pid)?, fds(pid));
    let failed = shared.5.load(Ordering::Relaxed);
    let ok = args.objects - failed;
    let per = rss1.saturating_sub(rss0) as f64 / ok.max(1) as f64;
    let label = if args.label.is_empty() {
        "stead-bench open-objects"
    } else {
        &args.label
    };
    println!(
        "{label}: {} objects, {} in flight, pid {pid} ({})",
        args.objects,
        args.concurrency,
        procfs::cmdline(pid)
    );
    println!(
        "  opened {ok} ({failed} failed) in {secs:.2}s: {:.1}/s, {}",
        ok as f64 / secs,
        Latency::of(&hist).line()
    );
    println!(
        "  RSS {:.1} MiB -> {:.1} MiB: {per:.0} B ({:.1} KiB) per open object; descriptors {fds0} -> {fds1}",
        rss0 as f64 / 1048576.0,
        rss1 as f64 / 1048576.0,
        per / 1024.0
    );
    let json = serde_json::json!({
        "bench": "open-objects", "label": args.label, "url": args.url, "objects": args.objects,
        "ok": ok, "failed": failed, "secs": round1(secs), "per_s": round1(ok as f64 / secs),
        "latency": Latency::of(&hist).json(), "rss_before": rss0, "rss_after": rss1,
        "rss_per_object_bytes": per.round(), "fds_before": fds0, "fds_after": fds1,
    });
    println!("{json}");
    if failed > 0 {
        bail!("{failed} requests failed");
    }
    Ok(())
}
