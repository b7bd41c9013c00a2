//! Pieces shared by the subcommands: targets, keep-alive connections, randomness, histograms.

use std::hash::{BuildHasher, RandomState};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// `http://host:port` + path template, split so that placeholders never have to parse as a URI.
#[derive(Debug, PartialEq, Clone)]
pub struct Target {
    pub authority: String,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .context("only http:// URLs are supported")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        Ok(Target {
            authority: authority_with_port(authority, 80)?,
            path: path.to_string(),
        })
    }
}

/// `host` or `host:port` → `host:port`.
pub fn authority_with_port(authority: &str, default_port: u16) -> Result<String> {
    if authority.is_empty() {
        bail!("missing host");
    }
    Ok(if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    })
}

/// The port of a `ws://` or `http://` URL (80 when absent).
pub fn url_port(url: &str) -> Result<u16> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .context("URL without a scheme")?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let authority = authority_with_port(authority, 80)?;
    let port = authority.rsplit(':').next().unwrap_or_default();
    port.parse().with_context(|| format!("bad port in {url}"))
}

pub type Sender = http1::SendRequest<Empty<Bytes>>;

/// One keep-alive HTTP/1.1 connection (no Nagle).
pub async fn connect(authority: &str) -> Result<Sender> {
    let stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// xorshift64*: cheap per-task randomness, no shared state.
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from the process's random hasher keys and `i`.
    pub fn new(i: u64) -> Rng {
        Rng(RandomState::new().hash_one(i) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// Latencies in microseconds, 1 us .. 60 s, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Latency percentiles in milliseconds.
#[derive(Debug, PartialEq, Clone, Copy)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(hist: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(hist.value_at_quantile(0.50)),
            p90: ms(hist.value_at_quantile(0.90)),
            p99: ms(hist.value_at_quantile(0.99)),
            max: ms(hist.max()),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            self.p50, self.p90, self.p99, self.max
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"p50_ms": self.p50, "p90_ms": self.p90, "p99_ms": self.p99, "max_ms": self.max})
    }
}

/// The soft limit on open files of this process (`ulimit -n`), from /proc/self/limits.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Fails early when `sockets` (plus some slack) would not fit under `ulimit -n`.
pub fn check_fd_budget(sockets: usize) -> Result<()> {
    if let Some(limit) = open_files_limit()
        && sockets as u64 + 64 > limit
    {
        bail!(
            "{sockets} sockets need more than `ulimit -n` = {limit} file descriptors in this process"
        );
    }
    Ok(())
}

/// Rounds to one decimal, for JSON output.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_ports() {
        let t =
            Target::parse("http://127.0.0.1:8787/objects/Counter/name/{object}/increment").unwrap();
        assert_eq!(t.authority, "127.0.0.1:8787");
        assert_eq!(t.path, "/objects/Counter/name/{object}/increment");
        assert_eq!(Target::parse("http://localhost").unwrap().path, "/");
        assert_eq!(
            Target::parse("http://localhost/x").unwrap().authority,
            "localhost:80"
        );
        assert!(Target::parse("https://x/").is_err());
        assert_eq!(
            url_port("ws://127.0.0.1:18787/objects/ChatRoom/name/{room}/ws?name=u{i}").unwrap(),
            18787
        );
        assert_eq!(url_port("ws://localhost?x=1").unwrap(), 80);
    }

    #[test]
    fn random_numbers_cover_range() {
        let mut rng = Rng(12345);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[rng.below(10) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }

    #[test]
    fn latency_percentiles() {
        let mut h = new_hist();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap(); // 0.01 .. 10 ms
        }
        let l = Latency::of(&h);
        assert!((l.p50 - 5.0).abs() < 0.01, "{l:?}");
        assert!((l.p90 - 9.0).abs() < 0.01, "{l:?}");
        assert!((l.p99 - 9.9).abs() < 0.01, "{l:?}");
        assert!((l.max - 10.0).abs() < 0.01, "{l:?}");
    }

    #[test]
    fn this_process_has_a_file_limit() {
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }
}
