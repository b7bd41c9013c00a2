//! Assembles and runs the sidecar: storage, host, ingress, app API and admin servers.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::admin::{self, AdminState};
use crate::alarms::Alarms;
use crate::api::{self, ApiState};
use crate::app::AppClient;
use crate::config::SidecarConfig;
use crate::forward::PeerClient;
use crate::host::{Host, HostConfig};
use crate::ingress::{self, Ingress};
use crate::membership::{Membership, StaticMembership};
use crate::metrics::Metrics;
use crate::ownership::Ownership;
use crate::peer::{self, PeerServer};
use crate::route::ObjectRouter;
use crate::serve::{self, Port};
use crate::storage::{DbOptions, Storage, StorageConfig};
use crate::turn::Turns;
use crate::websocket::registry::Sockets;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start storage in {dir}: {source}")]
    Storage {
        dir: String,
        source: crate::storage::StorageError,
    },
    #[error("{0}")]
    Membership(#[from] crate::membership::MembershipError),
    #[error("{0}")]
    Ownership(#[from] crate::ownership::OwnershipError),
    #[error("{0}")]
    Alarms(#[from] crate::alarms::AlarmError),
    #[error("no randomness: {0}")]
    Random(#[from] getrandom::Error),
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

pub async fn run(
    config: SidecarConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let metrics = Metrics::new();
    let membership = StaticMembership::new(config.ordinal(), config.peers.clone(), config.slots)?;
    if config.peers.len() > 1 && config.peer_token.as_deref().is_none_or(str::is_empty) {
        return Err(crate::membership::MembershipError::MissingToken.into());
    }
    let ownership = {
        let dir = config.data_dir.clone();
        let me = config.ordinal();
        let ring = membership.ring();
        tokio::task::spawn_blocking(move || Ownership::load(&dir, me, &ring))
            .await
            .map_err(|e| StartError::Serve(std::io::Error::other(e)))??
    };
    metrics.slots_owned.set(ownership.count() as i64);
    let alarms = {
        let dir = config.data_dir.clone();
        let slots = config.slots;
        let first_retry = config.alarm_first_retry;
        let m = metrics.clone();
        tokio::task::spawn_blocking(move || Alarms::start(&dir, slots, first_retry, m))
            .await
            .map_err(|e| StartError::Serve(std::io::Error::other(e)))??
    };
    let sockets = Arc::new(Sockets::new(metrics.clone()));
    let storage = Storage::start(
        StorageConfig {
            data_dir: config.data_dir.clone(),
            threads: config.storage_threads,
            max_open: config.max_open_objects,
            db: DbOptions {
                durability: config.durability,
                max_database_bytes: config.limits.max_database_bytes,
            },
        },
        metrics.clone(),
        alarms.clone(),
    )
    .map_err(|source| StartError::Storage {
        dir: config.data_dir.display().to_string(),
        source,
    })?;
    let turns = Arc::new(Turns::new());
    let app = AppClient::new(config.app.clone(), config.max_answer_bytes);
    let host = Host::new(
        HostConfig {
            turn_timeout: config.turn_timeout,
            idle_timeout: config.idle_timeout,
            mailbox_capacity: config.mailbox_capacity,
            max_concurrent_turns: config.max_concurrent_turns,
            abort_at_commit: config.test_abort_at_commit,
        },
        storage.clone(),
        app.clone(),
        turns.clone(),
        metrics.clone(),
        alarms.clone(),
        sockets.clone(),
    )?;
    {
        let host = host.clone();
        tokio::spawn(alarms.run(move |due| {
            let host = host.clone();
            async move { host.deliver_alarm(due).await }
        }));
    }
    let router = Arc::new(ObjectRouter {
        classes: config.classes.iter().map(|c| c.to_string()).collect(),
        slots: config.slots,
        max_request_bytes: config.max_request_bytes,
        body_timeout: config.connections.body_timeout,
        host,
        ownership,
        membership: Arc::new(membership),
        peers: PeerClient::new(
            config.peer_token.as_deref(),
            config.turn_timeout + Duration::from_secs(5),
        ),
        metrics: metrics.clone(),
        sockets: sockets.clone(),
    });
    let ingress_state = Arc::new(Ingress {
        router: router.clone(),
        app: app.clone(),
        turns: turns.clone(),
        metrics: metrics.clone(),
    });
    let peer_state = Arc::new(PeerServer {
        token: config.peer_token.clone().filter(|t| !t.is_empty()),
        router: router.clone(),
    });
    let api_state = Arc::new(ApiState {
        storage,
        turns,
        limits: config.limits.clone(),
        router,
        sockets: sockets.clone(),
    });
    let admin_state = Arc::new(AdminState {
        metrics: metrics.clone(),
        app_addr: config.app.clone(),
    });
    let nofile = serve::raise_nofile_limit();
    let bounds = serve::connection_bounds(
        nofile,
        config.max_open_objects,
        config.connections.max_connections,
        config.peers.len() > 1,
    );
    if (nofile as usize) < 2 * config.max_open_objects + serve::BASE_RESERVE + bounds.ingress {
        tracing::warn!(
            nofile,
            max_open_objects = config.max_open_objects,
            "the descriptor limit cannot keep the storage reserve: raise `ulimit -n` or lower --max-open-objects"
        );
    }
    tracing::info!(
        nofile,
        ingress = bounds.ingress,
        peer = bounds.peer,
        admin = bounds.admin,
        "connection bounds"
    );

    let listen = |what, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen { what, addr, source })
    };
    let ingress_l = listen("ingress", config.ingress).await?;
    let api_l = listen("app API", config.api).await?;
    let admin_l = listen("admin", config.admin).await?;
    // One shard has no peers: the peer port opens only with two or more.
    let peer_l = if config.peers.len() > 1 {
        Some(listen("peer", config.peer_addr).await?)
    } else {
        None
    };

    tracing::info!(
        ingress = %config.ingress,
        api = %config.api,
        admin = %config.admin,
        peer = %config.peer_addr,
        shard = config.ordinal(),
        shards = config.peers.len().max(1),
        app = %config.app,
        data_dir = %config.data_dir.display(),
        classes = ?config.classes.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        durability = ?config.durability,
        "sidecar listening"
    );

    let ingress_app = axum::Router::new()
        .fallback(ingress::handle)
        .with_state(ingress_state);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        // Sockets first: clients reconnect (1012) while in-flight requests drain.
        sockets.close_all();
        let _ = stop_tx.send(true);
    });
    let port = |name, max_connections| Port {
        name,
        max_connections,
        limits: config.connections.clone(),
    };
    // Ingress drains in-flight requests on shutdown; the app API keeps serving until the
    // process ends so that draining turns can finish their calls.
    let api_srv = axum::serve(api_l, api::router(api_state));
    tokio::spawn(async move {
        if let Err(e) = api_srv.await {
            tracing::error!(error = %e, "app API server failed");
        }
    });
    if let Some(peer_l) = peer_l {
        let peer_app = axum::Router::new()
            .fallback(peer::handle)
            .with_state(peer_state);
        tokio::spawn(serve::serve(
            peer_l,
            peer_app,
            port("peer", bounds.peer),
            metrics.clone(),
            None,
        ));
    }
    tokio::spawn(serve::serve(
        admin_l,
        admin::router(admin_state),
        port("admin", bounds.admin),
        metrics.clone(),
        None,
    ));
    serve::serve(
        ingress_l,
        ingress_app,
        port("ingress", bounds.ingress),
        metrics,
        Some(stop_rx),
    )
    .await;
    tracing::info!("sidecar stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM: the signal to drain and stop.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
