//! `/healthz`, `/readyz` and `/metrics` on their own port, so that no client path is taken from
//! the app's front door.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http::{HeaderMap, StatusCode, header};
use stead_core::exposition::Exposition;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::storage::Storage;

pub struct AdminState {
    pub metrics: Metrics,
    /// Its volume's health: a failed sync makes the shard unhealthy (restart it).
    pub storage: Storage,
    pub app_addr: String,
    /// True once the sidecar got its stop signal (see `--shutdown-delay`).
    pub draining: watch::Receiver<bool>,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "the admin port serves GET /healthz, /readyz and /metrics",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "the admin port answers GET only",
            )
        })
        .with_state(state)
}

/// Healthy unless the data volume failed a sync: then the process must restart (the kubelet
/// restarts it on this) and read the objects from the disk again.
async fn healthz(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    if s.storage.volume_failed() {
        return (StatusCode::SERVICE_UNAVAILABLE, VOLUME_FAILED);
    }
    (StatusCode::OK, "ok\n")
}

const VOLUME_FAILED: &str =
    "a sync of the data volume failed: the shard takes no writes and must be restarted\n";

/// Ready when the app accepts connections: before that, every event would fail. Not ready
/// once the shard is stopping, so that Kubernetes takes it out of the Services while it still
/// serves.
async fn readyz(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    if s.storage.volume_failed() {
        return (StatusCode::SERVICE_UNAVAILABLE, VOLUME_FAILED.to_owned());
    }
    if *s.draining.borrow() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the shard is draining: it is stopping and serves only until its shutdown delay ends\n"
                .to_owned(),
        );
    }
    let addr = s.app_addr.clone();
    let connect = async move {
        match addr.strip_prefix(crate::app::UNIX_PREFIX) {
            Some(path) => tokio::net::UnixStream::connect(path).await.map(drop),
            None => tokio::net::TcpStream::connect(&addr).await.map(drop),
        }
    };
    match tokio::time::timeout(Duration::from_secs(1), connect).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".to_owned()),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the app does not accept connections yet\n".to_owned(),
        ),
    }
}

/// OpenMetrics when the scraper's `Accept` asks for it, the classic text format 0.0.4 otherwise.
async fn metrics(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Exposition::negotiate(accept);
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "accept"),
        ],
        format.render(s.metrics.encode()),
    )
}
