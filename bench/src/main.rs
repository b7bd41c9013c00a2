//! `stead-bench`: a wrk-like load generator. Each of N workers owns one keep-alive HTTP/1.1
//! connection and sends requests back-to-back; every request targets an object picked uniformly
//! at random out of M. Prints a human-readable block and one JSON line.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout_at};

#[derive(Parser, Debug, Clone)]
#[command(version, about = "HTTP load generator: req/s and latency percentiles")]
struct Args {
    /// URL template; `{object}` is replaced per request, e.g.
    /// http://127.0.0.1:8787/objects/Counter/name/{object}/increment
    #[arg(long)]
    url: String,
    #[arg(long, default_value = "POST")]
    method: String,
    /// Concurrent keep-alive connections (one worker each).
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

/// `http://host:port` + path template, split so that `{object}` never has to parse as a URI.
#[derive(Debug, PartialEq)]
struct Target {
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .context("only http:// URLs are supported")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            bail!("missing host in {url}");
        }
        let authority = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Target {
            authority,
            path: path.to_string(),
        })
    }
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

/// xorshift64*: cheap per-worker randomness, no shared state.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((u128::from(x) * u128::from(n)) >> 64) as u64
    }
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

async fn connect(authority: &str) -> Result<http1::SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn worker(
    args: &Args,
    target: &Target,
    method: Method,
    seed: u64,
    p: Phases,
) -> (Stats, Histogram<u64>) {
    let mut hist = new_hist();
    let mut stats = Stats::default();
    let mut rng = Rng(seed | 1);
    let mut sender = None;
    while Instant::now() < p.end {
        if sender.as_ref().is_some_and(http1::SendRequest::is_closed) {
            sender = None; // server closed the keep-alive connection: not an error
        }
        let s = match sender.as_mut() {
            Some(s) => s,
            None => match timeout_at(p.end, connect(&target.authority)).await {
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
            .method(method.clone())
            .uri(expand(&target.path, &name))
            .header(hyper::header::HOST, &target.authority)
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
                sender = None; // reconnect
            }
        }
    }
    (stats, hist)
}

/// Latencies in microseconds, 1 us .. 60 s, 3 significant digits.
fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

#[derive(Debug, PartialEq)]
struct Summary {
    rps: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

fn summarize(hist: &Histogram<u64>, ok: u64, secs: f64) -> Summary {
    let ms = |us: u64| us as f64 / 1000.0;
    Summary {
        rps: ok as f64 / secs,
        p50: ms(hist.value_at_quantile(0.50)),
        p90: ms(hist.value_at_quantile(0.90)),
        p99: ms(hist.value_at_quantile(0.99)),
        max: ms(hist.max()),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.connections == 0 || args.duration <= 0.0 || args.warmup < 0.0 {
        bail!("--connections and --duration must be positive, --warmup not negative");
    }
    let target = Target::parse(&args.url)?;
    let method: Method = args.method.to_uppercase().parse().context("bad --method")?;
    let from = Instant::now() + Duration::from_secs_f64(args.warmup);
    let p = Phases {
        from,
        end: from + Duration::from_secs_f64(args.duration),
    };
    let shared = std::sync::Arc::new((args.clone(), target));
    let seeds = RandomState::new();
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let shared = shared.clone();
        let (method, seed) = (method.clone(), seeds.hash_one(i));
        tasks.push(tokio::spawn(async move {
            let (args, target) = &*shared;
            worker(args, target, method, seed, p).await
        }));
    }
    let mut hist = new_hist();
    let mut total = Stats::default();
    for t in tasks {
        let (s, h) = t.await?;
        hist.add(&h)?;
        total.ok += s.ok;
        total.status_errors += s.status_errors;
        total.transport_errors += s.transport_errors;
    }
    let sum = summarize(&hist, total.ok, args.duration);
    let label = if args.label.is_empty() {
        "stead-bench"
    } else {
        &args.label
    };
    println!(
        "{label}: {method} {}, {} connections, {} objects, {}s (+{}s warmup)",
        args.url, args.connections, args.objects, args.duration, args.warmup
    );
    println!(
        "  requests {} (2xx), errors {} non-2xx / {} transport",
        total.ok, total.status_errors, total.transport_errors
    );
    println!(
        "  {:.1} req/s   latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        sum.rps, sum.p50, sum.p90, sum.p99, sum.max
    );
    let json = serde_json::json!({
        "label": args.label, "url": args.url, "method": method.as_str(),
        "connections": args.connections, "objects": args.objects, "duration_s": args.duration,
        "requests": total.ok, "errors_status": total.status_errors,
        "errors_transport": total.transport_errors,
        "rps": (sum.rps * 10.0).round() / 10.0,
        "p50_ms": sum.p50, "p90_ms": sum.p90, "p99_ms": sum.p99, "max_ms": sum.max,
    });
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
        assert_eq!(t.authority, "127.0.0.1:8787");
        assert_eq!(
            expand(&t.path, &object_name("obj", 1000, 42)),
            "/objects/Counter/name/obj42/increment"
        );
        assert_eq!(object_name("obj", 1, 0), "hot");
        assert_eq!(object_name("room-", 5, 3), "room-3");
        assert_eq!(Target::parse("http://localhost").unwrap().path, "/");
        assert_eq!(
            Target::parse("http://localhost/x").unwrap().authority,
            "localhost:80"
        );
        assert!(Target::parse("https://x/").is_err());
    }

    #[test]
    fn random_objects_cover_range() {
        let mut rng = Rng(12345);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[rng.below(10) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }

    #[test]
    fn percentiles() {
        let mut h = new_hist();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap(); // 0.01 .. 10 ms
        }
        let s = summarize(&h, 1000, 2.0);
        assert_eq!(s.rps, 500.0);
        assert!((s.p50 - 5.0).abs() < 0.01, "{s:?}");
        assert!((s.p90 - 9.0).abs() < 0.01, "{s:?}");
        assert!((s.p99 - 9.9).abs() < 0.01, "{s:?}");
        assert!((s.max - 10.0).abs() < 0.01, "{s:?}");
    }
}
