use anyhow::Context as _;
use clap::{Parser, Subcommand};
use stead_sidecar::{config::SidecarConfig, dev, sidecar};

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
    /// Run a sidecar and an example app locally, without Kubernetes.
    Dev(dev::DevArgs),
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Sidecar(config) => {
            init_logs(config.log_format == "json");
            sidecar::run(*config, sidecar::shutdown_signal())
                .await
                .context("sidecar failed")?;
        }
        Command::Dev(args) => {
            init_logs(false);
            dev::run(args).await.context("stead dev failed")?;
        }
    }
    Ok(())
}
