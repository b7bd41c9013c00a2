//! The object host: one mailbox per object, exactly one turn in flight per object, many objects
//! in parallel up to a bound.
//!
//! A mailbox is a bounded queue drained by one task. The task delivers each event to the app as a
//! turn, ends the turn in storage (commit or rollback) and only then releases the answer (the
//! output gate). After `idle_timeout` without events it closes the object's database, tells the
//! app, and goes away; the next event starts a new mailbox.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use stead_core::{EventKind, protocol};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;

use crate::app::{AppClient, clean_headers, set_object_headers};
use crate::chain::CallChain;
use crate::error::ApiError;
use crate::metrics::{Metrics, OutcomeLabels};
use crate::object::{ObjectKey, ObjectRef};
use crate::storage::Storage;
use crate::turn::Turns;

#[derive(Debug, Clone)]
pub struct HostConfig {
    pub turn_timeout: Duration,
    pub idle_timeout: Duration,
    pub mailbox_capacity: usize,
    pub max_concurrent_turns: usize,
    /// Test hook: at the first commit, wait a moment and abort the process, so a test can prove
    /// that no answer leaves before its commit.
    pub abort_at_commit: bool,
}

struct Event {
    object: Arc<ObjectRef>,
    /// The objects busy waiting on this event (object calls), outermost first.
    chain: CallChain,
    request: Request<Bytes>,
    reply: oneshot::Sender<Response<Bytes>>,
}

pub struct Host {
    mailboxes: Mutex<HashMap<ObjectKey, mpsc::Sender<Event>>>,
    turn_permits: Semaphore,
    storage: Storage,
    app: AppClient,
    turns: Arc<Turns>,
    metrics: Metrics,
    config: HostConfig,
    boot: String,
    mailbox_seq: AtomicU64,
}

impl Host {
    pub fn new(
        config: HostConfig,
        storage: Storage,
        app: AppClient,
        turns: Arc<Turns>,
        metrics: Metrics,
    ) -> Result<Arc<Self>, getrandom::Error> {
        let mut boot = [0u8; 4];
        getrandom::fill(&mut boot)?;
        Ok(Arc::new(Self {
            mailboxes: Mutex::new(HashMap::new()),
            turn_permits: Semaphore::new(config.max_concurrent_turns.max(1)),
            storage,
            app,
            turns,
            metrics,
            config,
            boot: hex::encode(boot),
            mailbox_seq: AtomicU64::new(0),
        }))
    }

    /// Queues a request for `object` and waits for its answer.
    pub async fn deliver(
        self: &Arc<Self>,
        object: ObjectRef,
        request: Request<Bytes>,
        chain: CallChain,
    ) -> Response<Bytes> {
        let (reply, answer) = oneshot::channel();
        let event = Event {
            object: Arc::new(object),
            chain,
            request,
            reply,
        };
        if let Err(e) = self.enqueue(event) {
            return e.into_http();
        }
        answer.await.unwrap_or_else(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the object's mailbox stopped before answering",
            )
            .into_http()
        })
    }

    fn enqueue(self: &Arc<Self>, event: Event) -> Result<(), ApiError> {
        let key = event.object.key();
        let mut mailboxes = self.mailboxes.lock().unwrap_or_else(|p| p.into_inner());
        let tx = match mailboxes.get(&key) {
            Some(tx) => tx.clone(),
            None => {
                let (tx, rx) = mpsc::channel(self.config.mailbox_capacity.max(1));
                mailboxes.insert(key.clone(), tx.clone());
                let host = self.clone();
                let span = tracing::info_span!("object", class = %key.0, object_id = %key.1);
                tokio::spawn(host.run_mailbox(key, rx).instrument(span));
                tx
            }
        };
        tx.try_send(event).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "object_overloaded",
                format!(
                    "the object has {} events queued; retry later",
                    self.config.mailbox_capacity
                ),
            ),
            mpsc::error::TrySendError::Closed(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "object_closing",
                "the object is closing; retry",
            ),
        })
    }

    async fn run_mailbox(self: Arc<Self>, key: ObjectKey, mut rx: mpsc::Receiver<Event>) {
        let active = Arc::new(AtomicU64::new(0));
        let mut generation = self.mailbox_seq.fetch_add(1, Ordering::Relaxed);
        let mut last_object: Option<Arc<ObjectRef>> = None;
        loop {
            match tokio::time::timeout(self.config.idle_timeout, rx.recv()).await {
                Ok(Some(event)) => {
                    last_object = Some(event.object.clone());
                    let incarnation = format!("{}.{generation}", self.boot);
                    let rolled_back = self.run_turn(event, &active, &incarnation).await;
                    if rolled_back {
                        // The app's in-memory instance may hold state the rollback undid.
                        generation = self.mailbox_seq.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(None) => return,
                Err(_idle) => {
                    if let Err(e) = self.storage.close(key.clone()).await {
                        tracing::warn!(error = %e, "closing idle object failed");
                    }
                    if let Some(obj) = &last_object {
                        let incarnation = format!("{}.{generation}", self.boot);
                        self.app.hibernate(obj, &incarnation).await;
                    }
                    let mut mailboxes = self.mailboxes.lock().unwrap_or_else(|p| p.into_inner());
                    if rx.is_empty() {
                        mailboxes.remove(&key);
                        tracing::debug!("object hibernated");
                        return;
                    }
                    // Events arrived while closing: keep serving, as a new incarnation.
                    generation = self.mailbox_seq.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Runs one event as a turn. Returns whether the turn rolled back.
    async fn run_turn(&self, event: Event, active: &Arc<AtomicU64>, incarnation: &str) -> bool {
        let _permit = self.turn_permits.acquire().await;
        let started = Instant::now();
        let chain = event.chain.with(event.object.key());
        let (turn, token) =
            match self
                .turns
                .begin_object(event.object.clone(), active.clone(), chain)
            {
                Ok(t) => t,
                Err(e) => {
                    let _ = event.reply.send(
                        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                            .into_http(),
                    );
                    return false;
                }
            };
        let turn_id = turn.id;
        let mut request = event.request;
        set_object_headers(
            request.headers_mut(),
            EventKind::Request,
            &event.object,
            incarnation,
        );
        if let Ok(v) = HeaderValue::from_str(&token) {
            request.headers_mut().insert(protocol::TURN, v);
        }

        let answer = tokio::time::timeout(self.config.turn_timeout, self.app.send(request)).await;
        let (commit, mut response) = match answer {
            Err(_elapsed) => {
                self.metrics.turns_timed_out.inc();
                tracing::warn!(turn_id, timeout = ?self.config.turn_timeout, "turn timed out; rolling back");
                (
                    false,
                    ApiError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "turn_timeout",
                        format!(
                            "the app did not answer within the turn timeout of {:?}; the turn was rolled back",
                            self.config.turn_timeout
                        ),
                    )
                    .into_http(),
                )
            }
            Ok(Err(e)) => {
                tracing::warn!(turn_id, error = %e, "app failed; rolling back");
                (
                    false,
                    ApiError::new(StatusCode::BAD_GATEWAY, "app_failed", e.to_string()).into_http(),
                )
            }
            Ok(Ok(resp)) => {
                let rollback = resp.status().is_server_error()
                    || resp.headers().contains_key(protocol::ROLLBACK);
                (!rollback, resp)
            }
        };
        self.turns.end(turn.id);

        if commit && self.config.abort_at_commit {
            tracing::error!(turn_id, "test hook: aborting at commit");
            tokio::time::sleep(Duration::from_millis(300)).await;
            std::process::abort();
        }
        let outcome = self.storage.finish_turn(&turn, commit).await;
        let committed = commit && outcome.is_ok();
        if let Err(e) = outcome {
            tracing::error!(turn_id, error = %e, "ending the turn failed");
            response = ApiError::from(e).into_http();
        }
        clean_headers(response.headers_mut(), true);
        self.metrics
            .turn_seconds
            .get_or_create(&OutcomeLabels {
                outcome: if committed { "commit" } else { "rollback" },
            })
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(turn_id, committed, "turn ended");
        // The output gate: the answer leaves only now, after the commit.
        let _ = event.reply.send(response);
        !committed
    }
}
