//! `stead-bench idle-sockets`: opens K WebSockets spread over rooms, keeps them open and idle,
//! and reports how much the server's resident memory (VmRSS) grew per open socket. The server
//! is found as the process listening on the URL's port, or given with `--pid` (repeatable: the
//! growth of each is reported, and their sum).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::connect_async_with_config;

use crate::common::{Latency, Rng, check_fd_budget, new_hist, round1, url_port};
use crate::procfs;

/// Most sockets one object accepts (docs/app-protocol.md).
const MAX_PER_OBJECT: usize = 32_768;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// WebSocket URL template; `{room}` and `{i}` (the socket's index) are replaced, e.g.
    /// ws://127.0.0.1:8787/objects/ChatRoom/name/{room}/ws?name=u{i}
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
    /// Sockets per room (at most 32,768, the limit per object).
    #[arg(long, default_value_t = 1000)]
    per_room: usize,
    /// Rooms are `{prefix}{n}`; the default adds a random run id, so rooms start empty.
    #[arg(long)]
    room_prefix: Option<String>,
    /// Handshakes in flight while opening.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Server process(es) to measure; default: the one listening on the URL's port.
    #[arg(long)]
    pid: Vec<u32>,
    /// Seconds to wait after the last socket opened before measuring.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    /// Seconds to keep the sockets open after that, then measure again (e.g. past the
    /// sidecar's idle timeout, when the rooms have hibernated); 0 skips it.
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
    #[arg(long, default_value = "")]
    label: String,
}

/// Opens socket `url`, reports the outcome, then reads (answering pings) until told to stop.
async fn hold_socket(
    url: String,
    permits: Arc<Semaphore>,
    opened: mpsc::UnboundedSender<Result<Duration, String>>,
    open_now: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let permit = permits.acquire_owned().await;
    let started = Instant::now();
    let ws = connect_async_with_config(url.as_str(), None, true).await;
    let took = started.elapsed();
    drop(permit);
    let mut ws = match ws {
        Ok((ws, _)) => ws,
        Err(e) => {
            let _ = opened.send(Err(e.to_string()));
            return;
        }
    };
    open_now.fetch_add(1, Ordering::Relaxed);
    let _ = opened.send(Ok(took));
    loop {
        tokio::select! {
            msg = ws.next() => if !matches!(msg, Some(Ok(_))) { break },
            _ = stop.changed() => {
                let _ = timeout(Duration::from_secs(5), ws.close(None)).await;
                break;
            }
        }
    }
    open_now.fetch_sub(1, Ordering::Relaxed);
}

fn rss_all(pids: &[u32]) -> Result<Vec<u64>> {
    pids.iter().map(|&p| procfs::rss_bytes(p)).collect()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

pub async fn run(args: Args) -> Result<()> {
    if args.sockets == 0 || args.per_room == 0 || args.concurrency == 0 {
        bail!("--sockets, --per-room and --concurrency must be positive");
    }
    if args.per_room > MAX_PER_OBJECT {
        bail!("--per-room is at most {MAX_PER_OBJECT} (sockets per object)");
    }
    check_fd_budget(args.sockets)?;
    let pids = if args.pid.is_empty() {
        let (pid, cmd) = procfs::listener_pid(url_port(&args.url)?)?;
        println!("measuring pid {pid}: {cmd}");
        vec![pid]
    } else {
        args.pid.clone()
    };
    let prefix = args.room_prefix.clone().unwrap_or_else(|| {
        let run = Rng::new(0).next() as u32;
        format!("idle-{run:08x}-")
    });
    let before = rss_all(&pids)?;

    let permits = Arc::new(Semaphore::new(args.concurrency));
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let open_now = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..args.sockets)
        .map(|i| {
            let url = args
                .url
                .replace("{room}", &format!("{prefix}{}", i / args.per_room))
                .replace("{i}", &i.to_string());
            tokio::spawn(hold_socket(
                url,
                permits.clone(),
                opened_tx.clone(),
                open_now.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    let (mut ok, mut failed, mut first_error) = (0usize, 0usize, None);
    let mut handshakes = new_hist();
    while ok + failed < args.sockets {
        match opened_rx.recv().await {
            Some(Ok(took)) => {
                ok += 1;
                handshakes.saturating_record(took.as_micros().max(1) as u64);
            }
            Some(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            None => break,
        }
    }
    let open_secs = t0.elapsed().as_secs_f64();
    sleep(Duration::from_secs_f64(args.settle)).await;
    let after = rss_all(&pids)?;
    let still_open = open_now.load(Ordering::Relaxed);
    let held = if args.hold > 0.0 {
        sleep(Duration::from_secs_f64(args.hold)).await;
        Some((rss_all(&pids)?, open_now.load(Ordering::Relaxed)))
    } else {
        None
    };
    let _ = stop_tx.send(true);
    let closing = Instant::now();
    for t in tasks {
        let _ = timeout(Duration::from_secs(30).saturating_sub(closing.elapsed()), t).await;
    }

    let label = if args.label.is_empty() {
        "stead-bench idle-sockets"
    } else {
        &args.label
    };
    let rooms = args.sockets.div_ceil(args.per_room);
    println!(
        "{label}: {} sockets over {rooms} rooms of {}, {}",
        args.sockets, args.per_room, args.url
    );
    println!(
        "  opened {ok} ({failed} failed) in {open_secs:.2}s: {:.0}/s{}",
        ok as f64 / open_secs,
        first_error.map_or(String::new(), |e| format!("; first error: {e}"))
    );
    let handshake = Latency::of(&handshakes);
    println!("  handshake {}", handshake.line());
    let per_socket = |b: u64, a: u64, n: u64| (a as f64 - b as f64) / n.max(1) as f64;
    let mut json_pids = Vec::new();
    for (j, &pid) in pids.iter().enumerate() {
        let (b, a) = (before[j], after[j]);
        let per = per_socket(b, a, still_open);
        println!(
            "  pid {pid}: RSS {:.1} MiB before, {:.1} MiB with {still_open} open after {}s: {:.0} bytes per socket",
            mib(b),
            mib(a),
            args.settle,
            per
        );
        let mut entry = serde_json::json!({"pid": pid, "rss_before": b, "rss_after": a,
            "bytes_per_socket": round1(per)});
        if let Some((h, n)) = &held {
            let per_h = per_socket(b, h[j], *n);
            println!(
                "  pid {pid}: RSS {:.1} MiB with {n} open {}s later: {per_h:.0} bytes per socket",
                mib(h[j]),
                args.hold
            );
            entry["rss_held"] = h[j].into();
            entry["bytes_per_socket_held"] = round1(per_h).into();
        }
        json_pids.push(entry);
    }
    if pids.len() > 1 {
        let (b, a): (u64, u64) = (before.iter().sum(), after.iter().sum());
        println!(
            "  all: {:.0} bytes per socket",
            per_socket(b, a, still_open)
        );
    }
    let json = serde_json::json!({
        "bench": "idle-sockets", "label": args.label, "url": args.url, "sockets": args.sockets,
        "per_room": args.per_room, "opened": ok, "failed": failed, "open_s": round1(open_secs),
        "handshake": handshake.json(), "still_open": still_open, "settle_s": args.settle, "hold_s": args.hold, "pids": json_pids,
    });
    println!("{json}");
    Ok(())
}
