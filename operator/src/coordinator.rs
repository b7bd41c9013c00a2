//! The resharding coordinator runs inside shard 0's sidecar; the operator starts it and asks how
//! far it is, on the peer port with the namespace's peer token (`POST`/`GET /v1/admin/reshard`).
//!
//! [`Coordinator`] is the seam: [`HttpCoordinator`] speaks HTTP to the sidecar; tests may put
//! another implementation in the [`crate::Context`].

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

/// Header carrying the peer token (`stead_core::protocol::PEER_TOKEN`).
pub const PEER_TOKEN_HEADER: &str = stead_core::protocol::PEER_TOKEN;
/// The coordinator's path on the peer port.
pub const RESHARD_PATH: &str = "/v1/admin/reshard";
/// How long one call to the coordinator may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read from the coordinator.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// State of the coordinator (`GET /v1/admin/reshard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReshardState {
    Idle,
    Running,
    Done,
    Failed,
}

/// The coordinator's progress report.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Progress {
    pub state: ReshardState,
    #[serde(default)]
    pub from: i32,
    #[serde(default)]
    pub to: i32,
    /// The ring epoch published when done.
    #[serde(default)]
    pub epoch: i64,
    #[serde(default)]
    pub moved: i64,
    #[serde(default)]
    pub total: i64,
    #[serde(default)]
    pub error: Option<String>,
}

/// Where shard 0 listens and the token it wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port` of shard 0's peer port.
    pub addr: String,
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    /// Another resharding (to a different size) runs: 409 `resharding_in_progress`.
    #[error("shard 0 is running another resharding")]
    Busy,
    /// Shard 0 refused the request (4xx/5xx other than 409).
    #[error("shard 0 refused the resharding ({status} {code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// Shard 0 did not answer (not running, restarting, network).
    #[error("shard 0 does not answer on its peer port ({0})")]
    Unreachable(String),
    /// Shard 0 answered something that is not a progress report.
    #[error("shard 0 answered something unexpected: {0}")]
    BadAnswer(String),
}

impl CoordinatorError {
    /// The sidecar said no (as opposed to not answering): worth a `Degraded` condition.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            CoordinatorError::Refused { .. } | CoordinatorError::BadAnswer(_)
        )
    }
}

/// Starts and follows reshardings.
pub trait Coordinator: Send + Sync {
    /// `POST /v1/admin/reshard {"shards": to}`: start (or resume, or find running) a resharding.
    fn start<'a>(
        &'a self,
        at: &'a Target,
        to: i32,
    ) -> BoxFuture<'a, Result<Progress, CoordinatorError>>;
    /// `GET /v1/admin/reshard`.
    fn progress<'a>(&'a self, at: &'a Target) -> BoxFuture<'a, Result<Progress, CoordinatorError>>;
}

/// The coordinator of a real sidecar, over plain HTTP.
pub struct HttpCoordinator {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpCoordinator {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CALL_TIMEOUT));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl HttpCoordinator {
    async fn call(
        &self,
        at: &Target,
        method: http::Method,
        body: Option<serde_json::Value>,
    ) -> Result<Progress, CoordinatorError> {
        let uri = format!("http://{}{RESHARD_PATH}", at.addr);
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(PEER_TOKEN_HEADER, &at.token)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| CoordinatorError::Unreachable(e.to_string()))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| CoordinatorError::Unreachable(describe(&e)))?;
            let status = resp.status().as_u16();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| CoordinatorError::Unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, CoordinatorError>((status, body))
        };
        let (status, body) = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                CoordinatorError::Unreachable(format!("no answer within {CALL_TIMEOUT:?}"))
            })??;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&body)
                .map_err(|e| CoordinatorError::BadAnswer(format!("{e} (status {status})")));
        }
        let (code, message) = error_body(&body);
        if status == 409 && code == "resharding_in_progress" {
            return Err(CoordinatorError::Busy);
        }
        Err(CoordinatorError::Refused {
            status,
            code,
            message,
        })
    }
}

/// The error chain of a client failure ("client error (Connect): tcp connect error: Connection
/// refused").
fn describe(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `(code, message)` of a `{"error": {"code", "message"}}` body.
fn error_body(body: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let field = |k: &str| {
        v["error"][k]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let message = field("message");
    let message = if message.is_empty() {
        String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
    } else {
        message
    };
    (field("code"), message)
}

impl Coordinator for HttpCoordinator {
    fn start<'a>(
        &'a self,
        at: &'a Target,
        to: i32,
    ) -> BoxFuture<'a, Result<Progress, CoordinatorError>> {
        Box::pin(self.call(
            at,
            http::Method::POST,
            Some(serde_json::json!({ "shards": to })),
        ))
    }

    fn progress<'a>(&'a self, at: &'a Target) -> BoxFuture<'a, Result<Progress, CoordinatorError>> {
        Box::pin(self.call(at, http::Method::GET, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Json;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;
    use std::sync::{Arc, Mutex};

    /// A loopback sidecar stand-in that records what it was sent and answers `answer`.
    async fn serve(
        status: StatusCode,
        answer: serde_json::Value,
    ) -> (String, Arc<Mutex<Vec<(String, String, String)>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let app = axum::Router::new().route(
            RESHARD_PATH,
            get({
                let record = record.clone();
                let answer = answer.clone();
                move |h: HeaderMap| async move {
                    record
                        .lock()
                        .unwrap()
                        .push(("GET".into(), token(&h), String::new()));
                    (status, Json(answer))
                }
            })
            .post(move |h: HeaderMap, body: String| async move {
                record
                    .lock()
                    .unwrap()
                    .push(("POST".into(), token(&h), body));
                (status, Json(answer))
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(l, app).await });
        (addr, seen)
    }

    fn token(h: &HeaderMap) -> String {
        h.get(PEER_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    #[tokio::test]
    async fn start_posts_the_target_with_the_token_and_reads_the_progress() {
        let (addr, seen) = serve(
            StatusCode::ACCEPTED,
            serde_json::json!({"state": "running", "from": 3, "to": 5, "epoch": 2,
                "moved": 812, "total": 1638, "bytes": 1, "seconds": 1.5, "error": null}),
        )
        .await;
        let at = Target {
            addr,
            token: "s3cret".into(),
        };
        let c = HttpCoordinator::default();
        let p = c.start(&at, 5).await.expect("started");
        assert_eq!(p.state, ReshardState::Running);
        assert_eq!((p.moved, p.total, p.epoch), (812, 1638, 2));
        let p = c.progress(&at).await.expect("progress");
        assert_eq!(p.to, 5);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[0].0, "POST");
        assert_eq!(seen[0].1, "s3cret");
        let body: serde_json::Value = serde_json::from_str(&seen[0].2).unwrap();
        assert_eq!(body, serde_json::json!({"shards": 5}));
        assert_eq!(seen[1].0, "GET");
    }

    #[tokio::test]
    async fn a_409_means_another_resharding_runs() {
        let (addr, _) = serve(
            StatusCode::CONFLICT,
            serde_json::json!({"error": {"code": "resharding_in_progress", "message": "to 4"}}),
        )
        .await;
        let at = Target {
            addr,
            token: "t".into(),
        };
        let e = HttpCoordinator::default().start(&at, 5).await.unwrap_err();
        assert_eq!(e, CoordinatorError::Busy);
    }

    #[tokio::test]
    async fn a_refusal_keeps_the_sidecars_code_and_message() {
        let (addr, _) = serve(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": {"code": "invalid_shards", "message": "shards must be at least 1"}}),
        )
        .await;
        let at = Target {
            addr,
            token: "t".into(),
        };
        let e = HttpCoordinator::default().start(&at, 0).await.unwrap_err();
        assert!(e.is_refusal());
        assert!(e.to_string().contains("invalid_shards"), "{e}");
        assert!(e.to_string().contains("at least 1"), "{e}");
    }

    #[tokio::test]
    async fn a_shard_0_that_is_down_is_unreachable_not_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let at = Target {
            addr,
            token: "t".into(),
        };
        let e = HttpCoordinator::default().progress(&at).await.unwrap_err();
        assert!(matches!(e, CoordinatorError::Unreachable(_)), "{e:?}");
        assert!(!e.is_refusal());
    }
}
