use anyhow::Context as _;
use clap::{Parser, Subcommand};
use stead_sidecar::{config::SidecarConfig, dev, init, scale, sidecar};

/// Stead: durable objects on your own machines.
#[derive(Parser)]
#[command(name = "stead", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar of one shard (what runs in each pod).
    Sidecar(Box<SidecarConfig>),
    /// Run your project (or an example app) locally with its sidecar, without Kubernetes.
    Dev(dev::DevArgs),
    /// Create a new project: a counter object, its config, a DurableNamespace, a Dockerfile, a test.
    Init(init::InitArgs),
    /// Resize the local cluster that a running `stead dev` serves (moves slots and objects).
    Scale(scale::ScaleArgs),
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// How often freed heap memory is handed back to the system (decision 0005).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// glibc malloc keeps what closed objects' SQLite connections freed in its per-thread arenas
/// (about 200 KB per object open at the peak, for good): trim them every few seconds, on a
/// thread of its own so that no storage or runtime thread waits for it. Decision 0005.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn start_malloc_trim() -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("stead-malloc-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(MALLOC_TRIM_EVERY);
                let started = std::time::Instant::now();
                // SAFETY: malloc_trim only releases free memory of the allocator's arenas.
                let released = unsafe { libc::malloc_trim(0) };
                tracing::debug!(released, took = ?started.elapsed(), "malloc_trim");
            }
        })?;
    Ok(())
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn start_malloc_trim() -> std::io::Result<()> {
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before anything opens a SQLite database (SQLite takes these only before it starts).
    if !stead_sidecar::sqlite_memory::configure_process() {
        eprintln!("warning: SQLite started before its memory settings could be applied");
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Sidecar(config) => {
            init_logs(config.log_format == "json");
            start_malloc_trim().context("starting the malloc trim thread")?;
            let stop = sidecar::stop_signals().context("listening for stop signals")?;
            sidecar::run(*config, stop)
                .await
                .context("sidecar failed")?;
        }
        Command::Dev(args) => {
            init_logs(false);
            dev::run(args).await.context("stead dev failed")?;
        }
        Command::Init(args) => {
            init::run(args).await.context("stead init failed")?;
        }
        Command::Scale(args) => {
            init_logs(false);
            scale::run(args).await.context("stead scale failed")?;
        }
    }
    Ok(())
}
