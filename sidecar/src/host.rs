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
use http::{HeaderValue, Method, Request, Response, StatusCode};
use stead_core::{EventKind, protocol};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::Instrument;

use crate::alarms::{Alarms, DueAlarm, now_ms};
use crate::app::{AppClient, clean_headers, set_object_headers};
use crate::chain::CallChain;
use crate::error::ApiError;
use crate::metrics::{Metrics, OutcomeLabels, ResultLabels};
use crate::object::{ObjectKey, ObjectRef};
use crate::ownership::{Ownership, SlotGuard, SlotState};
use crate::storage::Storage;
use crate::turn::{ObjectTurn, Turns};
use crate::websocket::registry::Sockets;

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

/// What an event is, beyond its HTTP request.
#[derive(Debug, Clone)]
pub enum Work {
    /// A client request or an object call.
    Request,
    /// The object's alarm (due at `due_ms`), attempt `retry`.
    Alarm { due_ms: i64, retry: u32 },
    /// A WebSocket event; `ws_id` names the socket.
    WebSocket { kind: EventKind, ws_id: String },
}

struct Event {
    object: Arc<ObjectRef>,
    /// The objects busy waiting on this event (object calls), outermost first.
    chain: CallChain,
    work: Work,
    request: Request<Bytes>,
    reply: Option<oneshot::Sender<Response<Bytes>>>,
    /// Admits the event to its slot until its turn ended: a slot hand-off waits for it.
    _admitted: Option<SlotGuard>,
}

pub struct Host {
    mailboxes: Mutex<HashMap<ObjectKey, mpsc::Sender<Event>>>,
    turn_permits: TurnPermits,
    storage: Storage,
    app: AppClient,
    turns: Arc<Turns>,
    metrics: Metrics,
    config: HostConfig,
    boot: String,
    mailbox_seq: AtomicU64,
    alarms: Alarms,
    sockets: Arc<Sockets>,
    ownership: Arc<Ownership>,
}

/// The answer to an event for a slot this shard does not serve (now).
pub fn slot_error(slot: stead_core::Slot, state: SlotState) -> ApiError {
    match state {
        SlotState::Fenced => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "slot_moving",
            format!("slot {slot} is moving to another shard; retry"),
        ),
        _ => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "slot_not_owned",
            format!("slot {slot} is not served by this shard (it moved); retry"),
        ),
    }
}

impl Host {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: HostConfig,
        storage: Storage,
        app: AppClient,
        turns: Arc<Turns>,
        metrics: Metrics,
        alarms: Alarms,
        sockets: Arc<Sockets>,
        ownership: Arc<Ownership>,
    ) -> Result<Arc<Self>, getrandom::Error> {
        let mut boot = [0u8; 4];
        getrandom::fill(&mut boot)?;
        Ok(Arc::new(Self {
            mailboxes: Mutex::new(HashMap::new()),
            turn_permits: TurnPermits::new(config.max_concurrent_turns),
            storage,
            app,
            turns,
            metrics,
            config,
            boot: hex::encode(boot),
            mailbox_seq: AtomicU64::new(0),
            alarms,
            sockets,
            ownership,
        }))
    }

    /// Forgets the mailboxes of `slot`'s objects (the slot was handed away): their tasks end,
    /// and if the slot comes back its objects start as new incarnations.
    pub fn forget_slot(&self, slot: stead_core::Slot, slots: u32) {
        let mut mailboxes = self.mailboxes.lock().unwrap_or_else(|p| p.into_inner());
        mailboxes.retain(|(_, id), _| id.slot(slots) != slot);
    }

    /// Queues a request for `object` and waits for its answer.
    pub async fn deliver(
        self: &Arc<Self>,
        object: ObjectRef,
        request: Request<Bytes>,
        chain: CallChain,
    ) -> Response<Bytes> {
        self.deliver_work(object, Work::Request, request, chain)
            .await
    }

    /// Queues an event of any kind and waits for the turn's answer.
    pub async fn deliver_work(
        self: &Arc<Self>,
        object: ObjectRef,
        work: Work,
        request: Request<Bytes>,
        chain: CallChain,
    ) -> Response<Bytes> {
        let (reply, answer) = oneshot::channel();
        let event = Event {
            object: Arc::new(object),
            chain,
            work,
            request,
            reply: Some(reply),
            _admitted: None,
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

    /// Queues an event without waiting for its turn, but waiting for room in the mailbox: a
    /// client that sends faster than its object keeps up is slowed down, not dropped.
    pub async fn post(self: &Arc<Self>, object: ObjectRef, work: Work, request: Request<Bytes>) {
        let admitted = match self.ownership.enter(object.slot) {
            Ok(g) => g,
            Err(state) => {
                // The object's sockets were closed with 1012 for a hand-off: their last events
                // are not delivered here.
                tracing::debug!(slot = %object.slot, ?state, "a WebSocket event for a slot not served here was dropped");
                return;
            }
        };
        let mut event = Event {
            object: Arc::new(object),
            chain: CallChain::default(),
            work,
            request,
            reply: None,
            _admitted: Some(admitted),
        };
        // A mailbox can close between lookup and send (it hibernated): then take the new one.
        for _ in 0..3 {
            let tx = self.mailbox(&event.object.key());
            match tx.send(event).await {
                Ok(()) => return,
                Err(mpsc::error::SendError(e)) => event = e,
            }
        }
        tracing::warn!("a WebSocket event could not be queued");
    }

    /// The sender of the object's mailbox, started if needed.
    fn mailbox(self: &Arc<Self>, key: &ObjectKey) -> mpsc::Sender<Event> {
        let mut mailboxes = self.mailboxes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = mailboxes.get(key)
            && !tx.is_closed()
        {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(self.config.mailbox_capacity.max(1));
        mailboxes.insert(key.clone(), tx.clone());
        let host = self.clone();
        let span = tracing::info_span!("object", class = %key.0, object_id = %key.1);
        tokio::spawn(host.run_mailbox(key.clone(), rx).instrument(span));
        tx
    }

    /// Runs `call`, an object call made by the turn `caller`, with that turn's permit given back
    /// while it waits: a turn waiting on its callee does not count against
    /// `--max-concurrent-turns`, so deep or many call chains cannot take every permit and starve
    /// their own callees or unrelated objects. The turn takes a permit again before the answer
    /// reaches the app. `None` (a stateless caller, which holds no permit) just runs the call.
    pub async fn while_calling<F: Future>(&self, caller: Option<u64>, call: F) -> F::Output {
        let Some(turn_id) = caller else {
            return call.await;
        };
        let waiting = self.turn_permits.release(turn_id);
        let out = call.await;
        waiting.resume().await;
        out
    }

    /// Delivers a due alarm (called by the alarm schedule) and waits until its turn ended.
    pub async fn deliver_alarm(self: &Arc<Self>, due: DueAlarm) {
        match self.ownership.state(due.object.slot) {
            SlotState::Owned => {}
            SlotState::Fenced => {
                // The slot is moving: its alarms move with it, or fire here if the move rolls back.
                self.alarms.reschedule(&due.object, now_ms() + 1000);
                return;
            }
            SlotState::NotOwned | SlotState::Gone { .. } => {
                // The slot belongs to another shard, which holds the alarm now.
                self.alarms.forget(&due.object.key());
                return;
            }
        }
        if due.retry == 0 {
            let lag = (now_ms() - due.due_ms).max(0) as f64 / 1000.0;
            self.metrics.alarm_lag_seconds.observe(lag);
        }
        let mut request = Request::new(Bytes::new());
        *request.method_mut() = Method::POST;
        request
            .headers_mut()
            .insert(protocol::ALARM_RETRY, HeaderValue::from(due.retry));
        let work = Work::Alarm {
            due_ms: due.due_ms,
            retry: due.retry,
        };
        let resp = self
            .deliver_work(due.object.clone(), work, request, CallChain::default())
            .await;
        if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
            // The mailbox is full: try again shortly.
            self.alarms.reschedule(&due.object, now_ms() + 1000);
        }
    }

    fn enqueue(self: &Arc<Self>, mut event: Event) -> Result<(), ApiError> {
        if event._admitted.is_none() {
            let slot = event.object.slot;
            event._admitted = Some(
                self.ownership
                    .enter(slot)
                    .map_err(|state| slot_error(slot, state))?,
            );
        }
        // A mailbox can close between lookup and send (it hibernated): then take the new one.
        for _ in 0..3 {
            let tx = self.mailbox(&event.object.key());
            match tx.try_send(event) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "object_overloaded",
                        format!(
                            "the object has {} events queued; retry later",
                            self.config.mailbox_capacity
                        ),
                    ));
                }
                Err(mpsc::error::TrySendError::Closed(e)) => event = e,
            }
        }
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "object_closing",
            "the object is closing; retry",
        ))
    }

    async fn run_mailbox(self: Arc<Self>, key: ObjectKey, mut rx: mpsc::Receiver<Event>) {
        let active = Arc::new(AtomicU64::new(0));
        let mut generation = self.mailbox_seq.fetch_add(1, Ordering::Relaxed);
        let mut last_object: Option<Arc<ObjectRef>> = None;
        loop {
            match tokio::time::timeout(self.config.idle_timeout, rx.recv()).await {
                Ok(Some(event)) => {
                    last_object = Some(event.object.clone());
                    let Some(event) = self.check_alarm(event).await else {
                        continue;
                    };
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

    /// An alarm event whose alarm the object's database no longer has (deleted or moved by a
    /// later turn) is not delivered: the index entry was stale.
    async fn check_alarm(&self, event: Event) -> Option<Event> {
        let Work::Alarm { .. } = event.work else {
            return Some(event);
        };
        let now = now_ms();
        match self.storage.alarm_time(&event.object).await {
            Ok(Some(t)) if t <= now => return Some(event),
            Ok(Some(t)) => self.alarms.reschedule(&event.object, t),
            Ok(None) => self.alarms.forget(&event.object.key()),
            Err(e) => {
                tracing::warn!(error = %e, "reading the alarm failed; retrying soon");
                self.alarms.reschedule(&event.object, now + 1000);
            }
        }
        if let Some(reply) = event.reply {
            let _ = reply.send(Response::new(Bytes::new()));
        }
        None
    }

    /// Runs one event as a turn. Returns whether the turn rolled back.
    async fn run_turn(&self, event: Event, active: &Arc<AtomicU64>, incarnation: &str) -> bool {
        let permit = self.turn_permits.acquire().await;
        let started = Instant::now();
        let chain = event.chain.with(event.object.key());
        let ObjectTurn {
            turn,
            token,
            outbox,
        } = match self.turns.begin_object(
            event.object.clone(),
            active.clone(),
            chain,
            started + self.config.turn_timeout,
        ) {
            Ok(t) => t,
            Err(e) => {
                if let Some(reply) = event.reply {
                    let _ = reply.send(
                        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                            .into_http(),
                    );
                }
                return false;
            }
        };
        let turn_id = turn.id;
        let _permit = self.turn_permits.hold(turn_id, permit);
        let mut request = event.request;
        let kind = match &event.work {
            Work::Request => EventKind::Request,
            Work::Alarm { .. } => EventKind::Alarm,
            Work::WebSocket { kind, ws_id } => {
                if let Ok(v) = HeaderValue::from_str(ws_id) {
                    request.headers_mut().insert(protocol::WEBSOCKET_ID, v);
                }
                *kind
            }
        };
        set_object_headers(request.headers_mut(), kind, &event.object, incarnation);
        if let Some((class, id)) = event.chain.caller()
            && let Ok(v) = HeaderValue::from_str(&format!("{class}/{}", id.to_hex()))
        {
            request.headers_mut().insert(protocol::CALLER, v);
        }
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
        let alarm_turn = matches!(event.work, Work::Alarm { .. });
        let outcome = self.storage.finish_turn(&turn, commit, alarm_turn).await;
        let committed = commit && outcome.is_ok();
        if committed {
            // A slot being copied must copy this object again.
            self.ownership.mark_written(&event.object);
        }
        match outcome {
            Ok(Some(change)) if committed => self.alarms.committed(&event.object, change),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(turn_id, error = %e, "ending the turn failed");
                response = ApiError::from(e).into_http();
            }
        }
        if let Work::Alarm { retry, .. } = event.work {
            self.alarm_outcome(&event.object, retry, committed).await;
        }
        if let Work::WebSocket {
            kind: EventKind::WebSocketConnect,
            ws_id,
        } = &event.work
        {
            let accepted = committed && response.status().is_success();
            let tags = response
                .headers()
                .get(protocol::WEBSOCKET_TAGS)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            if accepted {
                if let Err(e) = self.sockets.accept(&event.object.key(), ws_id, &tags) {
                    response = e.into_http();
                }
            } else {
                self.sockets.refuse(&event.object.key(), ws_id);
            }
        }
        // The output gate for WebSockets: what the turn sent leaves only if it committed.
        let outgoing = outbox.take();
        if committed {
            self.sockets.flush(&event.object.key(), outgoing);
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
        if let Some(reply) = event.reply {
            let _ = reply.send(response);
        }
        !committed
    }

    async fn alarm_outcome(&self, object: &ObjectRef, retry: u32, committed: bool) {
        let result = if committed { "success" } else { "failure" };
        self.metrics
            .alarms_fired
            .get_or_create(&ResultLabels { result })
            .inc();
        if committed {
            return;
        }
        match self.alarms.retry_after_failure(object, retry) {
            Some(delay) => {
                tracing::warn!(retry, ?delay, "alarm failed; retrying");
            }
            None => {
                tracing::error!(
                    retries = retry,
                    "alarm failed after its last retry; dropping it"
                );
                self.metrics.alarms_dropped.inc();
                if let Err(e) = self.storage.alarm_drop(object).await {
                    tracing::error!(error = %e, "deleting the dropped alarm failed");
                }
                self.ownership.mark_written(object);
                self.alarms.forget(&object.key());
            }
        }
    }
}

/// The bound on turns running in the app at once (`--max-concurrent-turns`). A running turn holds
/// a permit, except while it waits on object calls of its own ([`Host::while_calling`]): a chain
/// of nested calls then holds at most one permit (the turn running at its tip), whatever its
/// depth, and the permits always belong to turns that can make progress.
struct TurnPermits {
    semaphore: Arc<Semaphore>,
    /// Running turns by turn id: their permit (none while they wait on a call) and how many
    /// object calls they are waiting on.
    turns: Arc<Mutex<HashMap<u64, HeldPermit>>>,
}

struct HeldPermit {
    permit: Option<OwnedSemaphorePermit>,
    calls: usize,
}

impl TurnPermits {
    fn new(max: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(max.max(1))),
            turns: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        // The semaphore is never closed: `None` cannot happen, and would only lift the bound.
        self.semaphore.clone().acquire_owned().await.ok()
    }

    /// Records the permit of the running turn `turn_id`; the guard gives it back when the turn
    /// ends.
    fn hold(&self, turn_id: u64, permit: Option<OwnedSemaphorePermit>) -> TurnPermitGuard {
        self.lock().insert(turn_id, HeldPermit { permit, calls: 0 });
        TurnPermitGuard {
            turns: self.turns.clone(),
            turn_id,
        }
    }

    /// The turn `turn_id` starts waiting on an object call: its permit goes back (at its first
    /// outstanding call).
    fn release(&self, turn_id: u64) -> WaitingCall {
        let released = {
            let mut turns = self.lock();
            turns.get_mut(&turn_id).and_then(|held| {
                held.calls += 1;
                held.permit.take()
            })
        };
        drop(released);
        WaitingCall {
            semaphore: self.semaphore.clone(),
            turns: self.turns.clone(),
            turn_id,
            done: false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, HeldPermit>> {
        self.turns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes a turn's entry (and drops its permit) when the turn ends, on every path.
struct TurnPermitGuard {
    turns: Arc<Mutex<HashMap<u64, HeldPermit>>>,
    turn_id: u64,
}

impl Drop for TurnPermitGuard {
    fn drop(&mut self) {
        let held = self
            .turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.turn_id);
        drop(held);
    }
}

/// An object call in flight: [`WaitingCall::resume`] takes the caller's permit again.
struct WaitingCall {
    semaphore: Arc<Semaphore>,
    turns: Arc<Mutex<HashMap<u64, HeldPermit>>>,
    turn_id: u64,
    done: bool,
}

impl WaitingCall {
    /// Counts the call as answered; at the caller's last outstanding call, waits for a permit
    /// for it. A caller whose turn has ended meanwhile (timed out) takes none.
    async fn resume(mut self) {
        self.done = true;
        if !self.finish_call() {
            return;
        }
        let Ok(permit) = self.semaphore.clone().acquire_owned().await else {
            return;
        };
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = turns.get_mut(&self.turn_id)
            && held.calls == 0
            && held.permit.is_none()
        {
            held.permit = Some(permit);
        }
    }

    /// Counts one call less; whether the caller now needs its permit back.
    fn finish_call(&self) -> bool {
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        match turns.get_mut(&self.turn_id) {
            Some(held) => {
                held.calls = held.calls.saturating_sub(1);
                held.calls == 0 && held.permit.is_none()
            }
            None => false,
        }
    }
}

impl Drop for WaitingCall {
    /// A call abandoned before its answer (the app hung up) still counts as over. Drop cannot
    /// wait, so the caller gets a permit back only if one is free now; it is ending anyway.
    fn drop(&mut self) {
        if self.done || !self.finish_call() {
            return;
        }
        if let Ok(permit) = self.semaphore.clone().try_acquire_owned() {
            let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(held) = turns.get_mut(&self.turn_id)
                && held.calls == 0
                && held.permit.is_none()
            {
                held.permit = Some(permit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free(p: &TurnPermits) -> usize {
        p.semaphore.available_permits()
    }

    #[tokio::test]
    async fn a_turn_waiting_on_a_call_gives_its_permit_to_another_turn() {
        let permits = TurnPermits::new(1);
        let caller = permits.hold(1, permits.acquire().await);
        assert_eq!(free(&permits), 0);

        // The caller waits on a callee: the callee's turn can run.
        let call = permits.release(1);
        assert_eq!(free(&permits), 1);
        let callee = permits.hold(2, permits.acquire().await);

        // The answer reaches the caller only once a permit is free again.
        let resume = call.resume();
        tokio::pin!(resume);
        assert!(futures_util::poll!(&mut resume).is_pending());
        drop(callee);
        resume.await;
        assert_eq!(free(&permits), 0, "the caller holds a permit again");
        drop(caller);
        assert_eq!(free(&permits), 1);
    }

    #[tokio::test]
    async fn nested_calls_of_one_turn_give_back_one_permit_and_take_back_one() {
        let permits = TurnPermits::new(2);
        let caller = permits.hold(1, permits.acquire().await);
        let first = permits.release(1);
        let second = permits.release(1);
        assert_eq!(free(&permits), 2);
        first.resume().await;
        assert_eq!(free(&permits), 2, "still waiting on the second call");
        second.resume().await;
        assert_eq!(free(&permits), 1);
        drop(caller);
        assert_eq!(free(&permits), 2);
    }

    #[tokio::test]
    async fn a_call_answered_after_its_turn_ended_takes_no_permit() {
        let permits = TurnPermits::new(1);
        let caller = permits.hold(1, permits.acquire().await);
        let call = permits.release(1);
        drop(caller); // the turn timed out meanwhile
        call.resume().await;
        assert_eq!(free(&permits), 1);

        // Nor does an abandoned call leak one.
        let caller = permits.hold(2, permits.acquire().await);
        drop(permits.release(2));
        assert_eq!(
            free(&permits),
            0,
            "the abandoned call's turn took its permit back"
        );
        drop(caller);
        assert_eq!(free(&permits), 1);
    }
}
