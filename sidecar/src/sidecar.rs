//! Assembles and runs the sidecar: storage, host, ingress, app API and admin servers.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::{Stream, StreamExt};
use http::{HeaderValue, StatusCode, Version, header};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::alarms::Alarms;
use crate::api::{self, ApiState};
use crate::app::AppClient;
use crate::body::BodyBudget;
use crate::config::SidecarConfig;
use crate::coordinator::Coordinator;
use crate::forward::PeerClient;
use crate::handoff::Handoffs;
use crate::host::{Host, HostConfig};
use crate::ingress::{self, Ingress};
use crate::membership::{Membership, StaticMembership};
use crate::metrics::Metrics;
use crate::ownership::Ownership;
use crate::peer::{self, PeerServer};
use crate::peer_admin::PeerAdmin;
use crate::route::ObjectRouter;
use crate::serve::{self, Port};

/// How long a stopping sidecar waits for its WebSockets to end after closing them with 1012:
/// the Close frames are written by each socket's own task, which ends with the process.
const SOCKETS_CLOSE_GRACE: Duration = Duration::from_secs(5);
use crate::storage::{DbOptions, Storage, StorageConfig};
use crate::turn::Turns;
use crate::websocket::registry::Sockets;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "--max-request-bytes ({request}) is more than --max-buffered-request-bytes ({buffered}): a request that large could never be read; raise the second or lower the first"
    )]
    BodyBudget { request: usize, buffered: usize },
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
    #[cfg(feature = "kube")]
    #[error("{0}")]
    Kube(#[from] crate::membership::kube::KubeMembershipError),
    #[error("cleaning up the shard's slot folders: {0}")]
    Io(#[from] std::io::Error),
    #[error("no randomness: {0}")]
    Random(#[from] getrandom::Error),
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

/// Runs the sidecar until it has stopped. `stop` yields once per stop signal (see
/// [`stop_signals`]): the first one starts the drain (an ended stream counts as that one); a
/// second one during `--shutdown-delay` ends the delay.
pub async fn run(
    config: SidecarConfig,
    stop: impl Stream<Item = ()> + Send + Unpin + 'static,
) -> Result<(), StartError> {
    if config.max_request_bytes > config.max_buffered_request_bytes {
        return Err(StartError::BodyBudget {
            request: config.max_request_bytes,
            buffered: config.max_buffered_request_bytes,
        });
    }
    let metrics = Metrics::new();
    let membership = membership(&config).await?;
    let (folder_lock, (ownership, ring, unfinished)) = {
        let dir = config.data_dir.clone();
        let me = config.ordinal();
        let ring = membership.ring();
        let loaded = tokio::task::spawn_blocking(move || {
            // First of all: a second sidecar on this folder must not even clean up.
            std::fs::create_dir_all(&dir).map_err(StartError::Serve)?;
            let lock = crate::alarms::lock_data_folder(&dir)?;
            let loaded = Ownership::load(&dir, me, &ring)?;
            Handoffs::clean_up(&dir, &loaded.0)?;
            Ok::<_, StartError>((lock, loaded))
        });
        loaded
            .await
            .map_err(|e| StartError::Serve(std::io::Error::other(e)))??
    };
    membership.offer(ring, None);
    let ring = membership.ring();
    let clustered = ring.shards > 1 || config.peers.len() > 1;
    if clustered && config.peer_token().is_none() {
        return Err(crate::membership::MembershipError::MissingToken.into());
    }
    metrics.slots_owned.set(ownership.count() as i64);
    metrics.ring_epoch.set(ring.epoch as i64);
    let alarms = {
        let dir = config.data_dir.clone();
        let slots = config.slots;
        let first_retry = config.alarm_first_retry;
        let m = metrics.clone();
        tokio::task::spawn_blocking(move || {
            Alarms::start_locked(folder_lock, &dir, slots, first_retry, m, Default::default())
        })
        .await
        .map_err(|e| StartError::Serve(std::io::Error::other(e)))??
    };
    let sockets = Arc::new(Sockets::new(
        metrics.clone(),
        config.max_buffered_socket_bytes,
    ));
    let nofile = serve::raise_nofile_limit();
    let max_open = serve::fit_open_objects(nofile, config.max_open_objects);
    if max_open < config.max_open_objects {
        tracing::warn!(
            nofile,
            requested = config.max_open_objects,
            max_open,
            "--max-open-objects does not fit the descriptor limit (2 per open database, a quarter kept for connections): fewer databases stay open; raise `ulimit -n` to keep more"
        );
    }
    metrics
        .objects_open_max
        .set(i64::try_from(max_open).unwrap_or(i64::MAX));
    let storage = Storage::start(
        StorageConfig {
            data_dir: config.data_dir.clone(),
            threads: config.storage_threads,
            max_open,
            db: DbOptions {
                durability: config.durability,
                sync: config.sync,
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
            group_max_turns: config.group_commit_max_turns,
            group_max_age: config.group_commit_max_age,
            limits: config.limits.clone(),
        },
        Arc::new(storage.clone()),
        Arc::new(app.clone()),
        turns.clone(),
        metrics.clone(),
        alarms.clone(),
        sockets.clone(),
        ownership.clone(),
    )?;
    {
        let host = host.clone();
        tokio::spawn(alarms.clone().run(move |due| {
            let host = host.clone();
            async move { host.deliver_alarm(due).await }
        }));
    }
    let peers = PeerClient::new(
        config.peer_token(),
        config.turn_timeout + Duration::from_secs(5),
    );
    let handoffs = Handoffs::new(
        config.data_dir.clone(),
        config.slots,
        ownership.clone(),
        membership.clone(),
        storage.clone(),
        host.clone(),
        sockets.clone(),
        alarms.clone(),
        peers.clone(),
        metrics.clone(),
        config.turn_timeout + Duration::from_secs(1),
        config.test_handoff_step_delay,
    );
    for h in unfinished {
        tracing::warn!(slot = %h.slot, to = h.to, "a hand-off was installing when this shard stopped; asking its target how it ended");
        handoffs.spawn_resolve(h);
    }
    let coordinator = Coordinator::new(
        config.slots,
        membership.clone(),
        peers.clone(),
        config.reshard_parallelism,
    );
    let router = Arc::new(ObjectRouter {
        classes: config.classes.iter().map(|c| c.to_string()).collect(),
        slots: config.slots,
        max_request_bytes: config.max_request_bytes,
        body_budget: BodyBudget::new(
            config.max_buffered_request_bytes,
            metrics.request_bodies_buffered.clone(),
        ),
        body_timeout: config.connections.body_timeout,
        host,
        ownership: ownership.clone(),
        membership: membership.clone(),
        peers,
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
        token: config.peer_token().map(str::to_owned),
        router: router.clone(),
        admin: Arc::new(PeerAdmin {
            slots: config.slots,
            ownership,
            membership,
            handoffs,
            coordinator,
            metrics: metrics.clone(),
        }),
    });
    let api_state = Arc::new(ApiState {
        storage: storage.clone(),
        turns,
        limits: config.limits.clone(),
        router,
        sockets: sockets.clone(),
    });
    // True from the first stop signal on: /readyz answers 503 and the ingress asks HTTP/1
    // clients to reconnect (elsewhere) while the ports keep serving for the drain delay.
    let (draining_tx, draining) = watch::channel(false);
    let admin_state = Arc::new(AdminState {
        metrics: metrics.clone(),
        storage: storage.clone(),
        app_addr: config.app.clone(),
        draining: draining.clone(),
    });
    let bounds = serve::connection_bounds(
        nofile,
        max_open,
        config.connections.max_connections,
        config.peer_token().is_some(),
    );
    if (nofile as usize) < 2 * max_open + serve::BASE_RESERVE + bounds.ingress {
        tracing::warn!(
            nofile,
            max_open,
            max_connections = bounds.ingress,
            "the descriptor limit cannot keep the storage reserve beside --max-connections: raise `ulimit -n` or lower --max-connections"
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
    // The peer port opens whenever there is a token to guard it: one shard can then be resharded.
    let peer_l = if config.peer_token().is_some() {
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
        shards = ring.shards,
        ring_epoch = ring.epoch,
        app = %config.app,
        data_dir = %config.data_dir.display(),
        classes = ?config.classes.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        durability = ?config.durability,
        sync = ?config.sync,
        "sidecar listening"
    );

    let ingress_app = axum::Router::new()
        .fallback(ingress::handle)
        .with_state(ingress_state)
        .layer(axum::middleware::from_fn_with_state(
            draining,
            close_while_draining,
        ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let delay = config.shutdown_delay;
    tokio::spawn(async move {
        let mut stop = stop;
        let _ = stop.next().await;
        // Kubernetes takes a terminating pod out of its Services asynchronously: until every
        // node's proxy has heard, connections still arrive here, and a closed port refuses them.
        let _ = draining_tx.send(true);
        if !delay.is_zero() {
            tracing::info!(
                delay = ?delay,
                "stop signal: /readyz answers 503 while the ports keep serving for the shutdown delay"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                Some(()) = stop.next() => {
                    tracing::info!("second stop signal: ending the shutdown delay");
                }
            }
        }
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
    let open_sockets = metrics.websockets_open.clone();
    serve::serve(
        ingress_l,
        ingress_app,
        port("ingress", bounds.ingress),
        metrics,
        Some(stop_rx),
    )
    .await;
    // Upgraded connections are not part of the ingress drain: without this wait the process
    // may end before a socket's Close (1012) is written, and its client sees a dropped
    // connection instead of a restart.
    let deadline = tokio::time::Instant::now() + SOCKETS_CLOSE_GRACE;
    while open_sockets.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::info!("sidecar stopped");
    Ok(())
}

/// Who the shards are: the peer list or template from the flags, and the ring they start with.
async fn membership(config: &SidecarConfig) -> Result<Arc<dyn Membership>, StartError> {
    // In Kubernetes (a peer template, the pod's namespace and DurableNamespace, no --peers): the
    // ring is the one the operator publishes in the namespace status, followed by a watch.
    #[cfg(feature = "kube")]
    if let Some((m, _watch)) = crate::membership::kube::KubeMembership::start_for(
        config,
        config.peer_template.as_deref(),
        |_| false,
    )
    .await?
    {
        return Ok(m);
    }
    Ok(Arc::new(StaticMembership::new(
        config.ordinal(),
        config.peers.clone(),
        config.peer_template.clone(),
        config.ring(),
    )?))
}

/// While the shard drains, HTTP/1 answers on the ingress close their connection: a client's
/// next request opens a new one, which the Service sends to a shard that is not stopping.
async fn close_while_draining(
    State(draining): State<watch::Receiver<bool>>,
    req: Request,
    next: Next,
) -> Response {
    let http1 = req.version() < Version::HTTP_2;
    let mut resp = next.run(req).await;
    if http1 && *draining.borrow() && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Every SIGTERM and Ctrl-C (SIGINT) as it arrives: what [`run`] stops on.
pub fn stop_signals() -> std::io::Result<impl Stream<Item = ()> + Send + Unpin + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    Ok(Box::pin(futures_util::stream::unfold(
        signals,
        |(mut term, mut int)| async move {
            tokio::select! {
                r = term.recv() => r,
                r = int.recv() => r,
            }?;
            Some(((), (term, int)))
        },
    )))
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
