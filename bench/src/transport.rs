//! `transport`: the sidecar ↔ app hop on its own — HTTP/1.1 keep-alive round trips over loopback
//! TCP (with `TCP_NODELAY`, as both ends set it) against a Unix domain socket, in one process, so
//! that only the kernel path differs. Prints round trips per second and latency percentiles in
//! microseconds for each transport and connection count.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::common::new_hist;

#[derive(Parser, Debug)]
pub struct Args {
    /// Seconds measured per transport and connection count.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Connection counts to run (each connection has one request in flight).
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    connections: Vec<usize>,
    /// Bytes of each request body and each answer body.
    #[arg(long, default_value_t = 64)]
    body: usize,
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Tcp,
    Unix,
}

pub async fn run(args: Args) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("stead-bench-transport-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sock = dir.join("app.sock");
    let result = measure_all(&args, &sock).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure_all(args: &Args, sock: &std::path::Path) -> Result<()> {
    let tcp = TcpListener::bind("127.0.0.1:0").await?;
    let tcp_addr = tcp.local_addr()?;
    let unix = UnixListener::bind(sock).context("binding the Unix socket")?;
    let answer = Bytes::from(vec![b'a'; args.body]);
    {
        let answer = answer.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = tcp.accept().await {
                let _ = s.set_nodelay(true);
                tokio::spawn(serve(s, answer.clone()));
            }
        });
    }
    {
        let answer = answer.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = unix.accept().await {
                tokio::spawn(serve(s, answer.clone()));
            }
        });
    }
    let mut rows = vec![];
    for &conns in &args.connections {
        for t in [
            Transport::Tcp,
            Transport::Unix,
            Transport::Tcp,
            Transport::Unix,
        ] {
            let (rps, hist) = measure(t, conns, args, tcp_addr, sock).await?;
            let us = |q: f64| hist.value_at_quantile(q);
            println!(
                "{t:?} connections {conns}: {rps:.0} round trips/s  latency µs: p50 {}  p90 {}  p99 {}  max {}",
                us(0.5),
                us(0.9),
                us(0.99),
                hist.max()
            );
            rows.push(serde_json::json!({
                "transport": format!("{t:?}"), "connections": conns, "rps": rps,
                "p50_us": us(0.5), "p90_us": us(0.9), "p99_us": us(0.99), "max_us": hist.max(),
            }));
        }
    }
    println!("{}", serde_json::json!({"transport": rows}));
    Ok(())
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(stream: S, answer: Bytes) {
    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
        let answer = answer.clone();
        async move {
            let _ = req.into_body().collect().await;
            Ok::<_, Infallible>(Response::new(Full::new(answer)))
        }
    });
    let _ = server::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

async fn measure(
    t: Transport,
    conns: usize,
    args: &Args,
    tcp: std::net::SocketAddr,
    sock: &std::path::Path,
) -> Result<(f64, hdrhistogram::Histogram<u64>)> {
    let until = Instant::now() + Duration::from_secs(args.duration);
    let body = Bytes::from(vec![b'q'; args.body]);
    let mut tasks = vec![];
    for _ in 0..conns {
        let body = body.clone();
        let sock = sock.to_path_buf();
        tasks.push(tokio::spawn(async move {
            let mut sender = match t {
                Transport::Tcp => {
                    let s = TcpStream::connect(tcp).await?;
                    s.set_nodelay(true)?;
                    handshake(s).await?
                }
                Transport::Unix => handshake(UnixStream::connect(&sock).await?).await?,
            };
            let mut hist = new_hist();
            let mut n = 0u64;
            while Instant::now() < until {
                let req = Request::post("/event")
                    .header("host", "app")
                    .body(Full::new(body.clone()))?;
                let start = Instant::now();
                let resp = sender.send_request(req).await?;
                let _ = resp.into_body().collect().await?;
                hist.record(start.elapsed().as_micros().max(1) as u64)?;
                n += 1;
            }
            anyhow::Ok((n, hist))
        }));
    }
    let started = Instant::now();
    let mut total = 0;
    let mut hist = new_hist();
    for task in tasks {
        let (n, h) = task.await??;
        total += n;
        hist.add(h)?;
    }
    Ok((total as f64 / started.elapsed().as_secs_f64(), hist))
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}
