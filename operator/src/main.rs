//! `stead-operator`: reconciles DurableNamespaces while this replica holds the leader lease;
//! serves `/healthz`, `/readyz` and `/metrics` in every replica.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Parser;
use stead_core::exposition::Exposition;
use stead_operator::config::{LeaseConfig, OperatorConfig};
use stead_operator::lease::LeaderElector;
use stead_operator::{Context, config::DEFAULT_SIDECAR_IMAGE};
use tokio::sync::watch;

#[derive(Parser, Debug)]
#[command(
    name = "stead-operator",
    version,
    about = "Reconciles DurableNamespaces into StatefulSet shards"
)]
struct Args {
    /// Image of the `stead` binary injected as each shard's sidecar.
    #[arg(long, env = "STEAD_SIDECAR_IMAGE", default_value = DEFAULT_SIDECAR_IMAGE)]
    sidecar_image: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "STEAD_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Elect a leader through a Lease, so that several replicas can run.
    #[arg(long, env = "STEAD_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader election Lease.
    #[arg(long, env = "STEAD_LEASE_NAME", default_value = "stead-operator")]
    lease_name: String,
    /// Namespace of the Lease; the operator's own namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "stead-system")]
    lease_namespace: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a Lease holds without renewal.
    #[arg(long, env = "STEAD_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// Create a ServiceMonitor per namespace when the Prometheus operator's CRD exists.
    #[arg(long, env = "STEAD_SERVICE_MONITORS", default_value_t = true, action = clap::ArgAction::Set)]
    service_monitors: bool,
    /// `text` or `json`.
    #[arg(long, env = "STEAD_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// Tests only: reach every namespace's resharding coordinator (shard 0) at this `host:port`
    /// instead of its DNS name.
    #[arg(long, hide = true)]
    test_coordinator_addr: Option<String>,
}

#[derive(Clone)]
struct Http {
    ctx: Arc<Context>,
    ready: Arc<AtomicBool>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(&args.log_format);

    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "stead-operator".into());
        format!("{host}-{}", std::process::id())
    });
    let config = OperatorConfig {
        sidecar_image: args.sidecar_image.clone(),
        metrics_addr: args.metrics_addr,
        lease: args.leader_election.then(|| LeaseConfig {
            name: args.lease_name.clone(),
            namespace: args.lease_namespace.clone(),
            identity,
            duration: Duration::from_secs(args.lease_seconds.max(3)),
        }),
        service_monitors: args.service_monitors,
        coordinator_addr: args.test_coordinator_addr.clone(),
        ..OperatorConfig::default()
    };
    tracing::info!(sidecar_image = %config.sidecar_image, leader_election = args.leader_election, "starting");

    let client = kube::Client::try_default()
        .await
        .context("cannot reach the Kubernetes API (no in-cluster config or kubeconfig)")?;
    let ctx = Context::new(client.clone(), config.clone());

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });

    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.metrics_addr))?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Http {
            ctx: ctx.clone(),
            ready: ready.clone(),
        });
    let mut http_stop = stop_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await
    });
    // Standby replicas are ready too: they serve metrics and wait for the lease.
    ready.store(true, Ordering::SeqCst);

    let result = match config.lease.clone() {
        None => {
            ctx.metrics.leader.set(1);
            stead_operator::run(ctx.clone(), stopped(stop_rx.clone()))
                .await
                .map_err(anyhow::Error::from)
        }
        Some(lease) => {
            lead(
                ctx.clone(),
                LeaderElector::new(client, lease),
                stop_rx.clone(),
            )
            .await
        }
    };
    ready.store(false, Ordering::SeqCst);
    let _ = server.await;
    result
}

/// Wait for the lease, then run the controller until shutdown or until the lease is lost.
async fn lead(
    ctx: Arc<Context>,
    elector: LeaderElector,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let retry = Duration::from_secs(2);
    loop {
        match elector.try_acquire_or_renew().await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election"),
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
    tracing::info!(identity = %elector.config().identity, lease = %elector.config().name, "became leader");
    ctx.metrics.leader.set(1);

    let elector = Arc::new(elector);
    let (lost_tx, lost_rx) = watch::channel(false);
    let renewer = {
        let elector = elector.clone();
        tokio::spawn(async move {
            let mut last_ok = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(elector.renew_every()).await;
                match elector.try_acquire_or_renew().await {
                    Ok(true) => last_ok = tokio::time::Instant::now(),
                    Ok(false) => break,
                    Err(e) => tracing::warn!(error = %e, "cannot renew the leader lease"),
                }
                // Stop before the lease can expire under us: never two leaders.
                if last_ok.elapsed() >= elector.config().duration * 2 / 3 {
                    break;
                }
            }
            let _ = lost_tx.send(true);
        })
    };
    let shutdown = {
        let stop = stop.clone();
        let lost = lost_rx.clone();
        async move {
            tokio::select! {
                _ = stopped(stop) => {}
                _ = stopped(lost) => {}
            }
        }
    };
    let result = stead_operator::run(ctx.clone(), shutdown).await;
    renewer.abort();
    ctx.metrics.leader.set(0);
    if *lost_rx.borrow() && !*stop.borrow() {
        // Restart rather than carry on: the process comes back as a candidate.
        anyhow::bail!("lost the leader lease");
    }
    if let Err(e) = elector.release().await {
        tracing::warn!(error = %e, "could not release the leader lease");
    }
    result.map_err(anyhow::Error::from)
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn readyz(State(http): State<Http>) -> impl IntoResponse {
    if http.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// OpenMetrics when the scraper's `Accept` asks for it, the classic text format 0.0.4 otherwise.
async fn metrics(State(http): State<Http>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Exposition::negotiate(accept);
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "accept"),
        ],
        format.render(http.ctx.metrics.encode()),
    )
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
