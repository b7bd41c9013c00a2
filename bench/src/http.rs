//! `stead-bench http`: a wrk-like load generator. Each of N workers sends requests back-to-back,
//! one at a time, over keep-alive HTTP/1.1 connections (one per entry); every request targets an
//! object picked uniformly at random out of M, through an entry picked at random when
//! `--entries` lists several. Prints a human-readable block and one JSON line.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request};
use tokio::time::{Instant, sleep, timeout_at};

use crate::common::{Latency, Rng, Sender, Target, authority_with_port, connect, new_hist, round1};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// URL template; `{object}` is replaced per request, e.g.
    /// http://127.0.0.1:8787/objects/Counter/name/{object}/increment
    #[arg(long)]
    url: String,
    /// Entries to spread requests over, comma separated `host:port` (or `http://host:port`):
    /// each request goes to one picked at random, replacing the host of `--url`.
    #[arg(long, value_delimiter = ',')]
    entries: Vec<String>,
    #[arg(long, default_value = "POST")]
    method: String,
    /// Concurrent workers, each with one request in flight (and one keep-alive connection
    /// per entry).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Number of distinct objects; 1 means the single object `hot`.
    #[arg(long, default_value_t = 1)]
    objects: u64,
    #[arg(long, default_value = "obj")]
    object_prefix: String,
    /// Measured seconds.
    #[arg(long, default_value_t = 15.0)]
    duration: f64,
    /// Seconds of load before measuring starts (not counted).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    #[arg(long, default_value = "")]
    label: String,
}

/// The object name for index `k`: `hot` when there is one object, else `{prefix}{k}`.
fn object_name(prefix: &str, objects: u64, k: u64) -> String {
    if objects <= 1 {
        "hot".to_string()
    } else {
        format!("{prefix}{k}")
    }
}

fn expand(template: &str, name: &str) -> String {
    template.replace("{object}", name)
}

/// The authorities requests go to: `--entries`, else the host of `--url`.
fn entry_authorities(target: &Target, entries: &[String]) -> Result<Vec<String>> {
    if entries.is_empty() {
        return Ok(vec![target.authority.clone()]);
    }
    entries
        .iter()
        .map(|e| {
            let e = e.trim();
            let e = e.strip_prefix("http://").unwrap_or(e).trim_end_matches('/');
            authority_with_port(e, 80).with_context(|| format!("bad entry {e:?}"))
        })
        .collect()
}

#[derive(Default)]
struct Stats {
    ok: u64,
    status_errors: u64,
    transport_errors: u64,
}

/// Measurement window: requests started before `from` are warmup; `end` stops everything.
#[derive(Clone, Copy)]
struct Phases {
    from: Instant,
    end: Instant,
}

struct Shared {
    args: Args,
    path: String,
    entries: Vec<String>,
    method: Method,
}

async fn worker(sh: &Shared, seed: u64, p: Phases) -> (Stats, hdrhistogram::Histogram<u64>) {
    let args = &sh.args;
    let mut hist = new_hist();
    let mut stats = Stats::default();
    let mut rng = Rng::new(seed);
    let mut senders: Vec<Option<Sender>> = sh.entries.iter().map(|_| None).collect();
    while Instant::now() < p.end {
        let e = rng.below(senders.len() as u64) as usize;
        let sender = &mut senders[e];
        if sender.as_ref().is_some_and(Sender::is_closed) {
            *sender = None; // server closed the keep-alive connection: not an error
        }
        let s = match sender.as_mut() {
            Some(s) => s,
            None => match timeout_at(p.end, connect(&sh.entries[e])).await {
                Err(_) => break,
                Ok(Ok(s)) => sender.insert(s),
                Ok(Err(_)) => {
                    if Instant::now() >= p.from {
                        stats.transport_errors += 1;
                    }
                    sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let name = object_name(
            &args.object_prefix,
            args.objects,
            rng.below(args.objects.max(1)),
        );
        let req = Request::builder()
            .method(sh.method.clone())
            .uri(expand(&sh.path, &name))
            .header(hyper::header::HOST, &sh.entries[e])
            .body(Empty::<Bytes>::new())
            .expect("valid request");
        let start = Instant::now();
        let result = timeout_at(p.end, async {
            s.ready().await?;
            let resp = s.send_request(req).await?;
            let status = resp.status();
            resp.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        })
        .await;
        let done = Instant::now();
        let measured = start >= p.from;
        match result {
            Err(_) => break, // still in flight at the end: not counted, like wrk
            Ok(Ok(status)) if status.is_success() => {
                if measured {
                    stats.ok += 1;
                    let us = (done - start).as_micros().max(1) as u64;
                    hist.saturating_record(us);
                }
            }
            Ok(Ok(_)) => stats.status_errors += u64::from(measured),
            Ok(Err(_)) => {
                stats.transport_errors += u64::from(measured);
                *sender = None; // reconnect
            }
        }
    }
    (stats, hist)
}

pub async fn run(args: Args) -> Result<()> {
    if args.connections == 0 || args.duration <= 0.0 || args.warmup < 0.0 {
        bail!("--connections and --duration must be positive, --warmup not negative");
    }
    let target = Target::parse(&args.url)?;
    let entries = entry_authorities(&target, &args.entries)?;
    let method: Method = args.method.to_uppercase().parse().context("bad --method")?;
    let from = Instant::now() + Duration::from_secs_f64(args.warmup);
    let p = Phases {
        from,
        end: from + Duration::from_secs_f64(args.duration),
    };
    let shared = Arc::new(Shared {
        args: args.clone(),
        path: target.path,
        entries,
        method: method.clone(),
    });
    let tasks: Vec<_> = (0..args.connections)
        .map(|i| {
            let shared = shared.clone();
            tokio::spawn(async move { worker(&shared, i as u64, p).await })
        })
        .collect();
    let mut hist = new_hist();
    let mut total = Stats::default();
    for t in tasks {
        let (s, h) = t.await?;
        hist.add(&h)?;
        total.ok += s.ok;
        total.status_errors += s.status_errors;
        total.transport_errors += s.transport_errors;
    }
    let rps = total.ok as f64 / args.duration;
    let lat = Latency::of(&hist);
    let label = if args.label.is_empty() {
        "stead-bench http"
    } else {
        &args.label
    };
    println!(
        "{label}: {method} {}, {} connections, {} objects, {} entries, {}s (+{}s warmup)",
        args.url,
        args.connections,
        args.objects,
        shared.entries.len(),
        args.duration,
        args.warmup
    );
    println!(
        "  requests {} (2xx), errors {} non-2xx / {} transport",
        total.ok, total.status_errors, total.transport_errors
    );
    println!("  {rps:.1} req/s   {}", lat.line());
    let mut json = serde_json::json!({
        "bench": "http", "label": args.label, "url": args.url, "method": method.as_str(),
        "entries": shared.entries, "connections": args.connections, "objects": args.objects,
        "duration_s": args.duration, "requests": total.ok, "errors_status": total.status_errors,
        "errors_transport": total.transport_errors, "rps": round1(rps),
    });
    json.as_object_mut()
        .expect("object")
        .extend(lat.json().as_object().expect("object").clone());
    println!("{json}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templating() {
        let t =
            Target::parse("http://127.0.0.1:8787/objects/Counter/name/{object}/increment").unwrap();
        assert_eq!(
            expand(&t.path, &object_name("obj", 1000, 42)),
            "/objects/Counter/name/obj42/increment"
        );
        assert_eq!(object_name("obj", 1, 0), "hot");
        assert_eq!(object_name("room-", 5, 3), "room-3");
    }

    #[test]
    fn entries() {
        let t = Target::parse("http://127.0.0.1:1/x").unwrap();
        assert_eq!(entry_authorities(&t, &[]).unwrap(), ["127.0.0.1:1"]);
        let list = ["http://127.0.0.1:2/".to_string(), " localhost".to_string()];
        assert_eq!(
            entry_authorities(&t, &list).unwrap(),
            ["127.0.0.1:2", "localhost:80"]
        );
    }
}
