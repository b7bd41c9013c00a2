//! `stead-bench`: load generators for Stead and peer runtimes (the same workloads against
//! workerd, in the same run). Each subcommand prints a human-readable block and one JSON line.
//!
//! - `http`: wrk-like req/s and latency percentiles over keep-alive connections;
//! - `ws-fanout`: time until every client of a room received a message, and deliveries/s;
//! - `alarms`: set M alarms, then the fire rate and lag from the sidecar's /metrics;
//! - `idle-sockets`: server memory per open, idle WebSocket;
//! - `soak`: minutes of mixed load (counters, a hot object, alarms, chat) with the servers' RSS
//!   and open descriptors sampled;
//! - `reshard`: live resharding of a local cluster under an open-loop counter load: pause per
//!   slot, total time, bytes/s and the share of 503s;
//! - `transport`: the sidecar-app hop alone, loopback TCP against a Unix socket;
//! - `open-objects`: the sidecar's memory and descriptors per open object;
//! - `cold-open`: first-request latency of objects among N written to disk.

mod alarms;
mod cold_open;
mod common;
mod http;
mod idle_sockets;
mod open_objects;
mod procfs;
mod prom;
mod reshard;
mod soak;
mod transport;
mod ws_fanout;

use anyhow::Result;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about = "Load generator for Stead and peer runtimes")]
enum Cli {
    /// HTTP load: req/s and latency percentiles.
    Http(http::Args),
    /// WebSocket fanout: time until all N clients of a room got each message.
    WsFanout(ws_fanout::Args),
    /// Alarms: set M alarms, then fires/s and lag (from the sidecar's /metrics).
    Alarms(alarms::Args),
    /// Idle WebSockets: server memory (RSS) per open socket.
    IdleSockets(idle_sockets::Args),
    /// Soak: minutes of mixed load with the servers' RSS and descriptors sampled.
    Soak(soak::Args),
    /// Live resharding (e.g. 3 -> 5 shards) of a local cluster under counter load.
    Reshard(reshard::Args),
    /// The sidecar-app hop alone: HTTP/1.1 round trips over loopback TCP vs a Unix socket.
    Transport(transport::Args),
    /// Open objects: the sidecar's memory (RSS) and descriptors per open object.
    OpenObjects(open_objects::Args),
    /// Cold open: first-request latency of objects among N on disk (`populate`, `measure`).
    #[command(subcommand)]
    ColdOpen(cold_open::Args),
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse() {
        Cli::Http(a) => http::run(a).await,
        Cli::WsFanout(a) => ws_fanout::run(a).await,
        Cli::Alarms(a) => alarms::run(a).await,
        Cli::IdleSockets(a) => idle_sockets::run(a).await,
        Cli::Soak(a) => soak::run(a).await,
        Cli::Reshard(a) => reshard::run(a).await,
        Cli::Transport(a) => transport::run(a).await,
        Cli::OpenObjects(a) => open_objects::run(a).await,
        Cli::ColdOpen(a) => cold_open::run(a).await,
    }
}
