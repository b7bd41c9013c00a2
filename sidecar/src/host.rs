//! The object host: one mailbox per object, exactly one event of an object in the app at a time,
//! many objects in parallel up to a bound. How a mailbox runs its turns (pipelined, group
//! commit, output gate) is in [`crate::mailbox`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use stead_core::{EventKind, protocol};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::Instrument;

use crate::alarms::{Alarms, DueAlarm, now_ms};
use crate::app::App;
use crate::chain::CallChain;
use crate::error::ApiError;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::object::{ObjectKey, ObjectRef};
use crate::ownership::{Ownership, SlotGuard, SlotState};
use crate::storage::TurnStore;
use crate::turn::Turns;
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
    /// Group commit: at most this many consecutive turns of an object share one commit.
    pub group_max_turns: usize,
    /// Group commit: a group is committed at the latest this long after its first turn ended.
    pub group_max_age: Duration,
    /// Limits that writes carried by an answer (protocol 2) are checked against.
    pub limits: Limits,
}

impl HostConfig {
    /// The defaults of the sidecar's flags.
    pub fn new(turn_timeout: Duration) -> Self {
        Self {
            turn_timeout,
            idle_timeout: Duration::from_secs(10),
            mailbox_capacity: 1024,
            max_concurrent_turns: 1024,
            abort_at_commit: false,
            group_max_turns: 64,
            group_max_age: Duration::from_millis(10),
            limits: Limits::default(),
        }
    }
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

pub(crate) struct Event {
    pub(crate) object: Arc<ObjectRef>,
    /// The objects busy waiting on this event (object calls), outermost first.
    pub(crate) chain: CallChain,
    pub(crate) work: Work,
    pub(crate) request: Request<Bytes>,
    pub(crate) reply: Option<oneshot::Sender<Response<Bytes>>>,
    /// Admits the event to its slot until its turn was committed or rolled back: a slot
    /// hand-off waits for it.
    pub(crate) admitted: Option<SlotGuard>,
}

pub struct Host {
    /// Events are boxed in the queues: an idle object's queue block holds pointers, not events.
    pub(crate) mailboxes: Mutex<HashMap<ObjectKey, mpsc::Sender<Box<Event>>>>,
    pub(crate) turn_permits: TurnPermits,
    pub(crate) store: Arc<dyn TurnStore>,
    pub(crate) app: Arc<dyn App>,
    /// The app's latest answer to an object event spoke protocol 2: objects get their state
    /// with their first event.
    pub(crate) app_v2: AtomicBool,
    pub(crate) turns: Arc<Turns>,
    pub(crate) metrics: Metrics,
    pub(crate) config: HostConfig,
    pub(crate) boot: String,
    pub(crate) mailbox_seq: AtomicU64,
    pub(crate) alarms: Alarms,
    pub(crate) sockets: Arc<Sockets>,
    pub(crate) ownership: Arc<Ownership>,
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
        store: Arc<dyn TurnStore>,
        app: Arc<dyn App>,
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
            store,
            app,
            app_v2: AtomicBool::new(false),
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
        let event = Box::new(Event {
            object: Arc::new(object),
            chain,
            work,
            request,
            reply: Some(reply),
            admitted: None,
        });
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
        let mut event = Box::new(Event {
            object: Arc::new(object),
            chain: CallChain::default(),
            work,
            request,
            reply: None,
            admitted: Some(admitted),
        });
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
    fn mailbox(self: &Arc<Self>, key: &ObjectKey) -> mpsc::Sender<Box<Event>> {
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

    fn enqueue(self: &Arc<Self>, mut event: Box<Event>) -> Result<(), ApiError> {
        if event.admitted.is_none() {
            let slot = event.object.slot;
            event.admitted = Some(
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
}

/// The bound on turns running in the app at once (`--max-concurrent-turns`). A running turn holds
/// a permit, except while it waits on object calls of its own ([`Host::while_calling`]): a chain
/// of nested calls then holds at most one permit (the turn running at its tip), whatever its
/// depth, and the permits always belong to turns that can make progress.
pub(crate) struct TurnPermits {
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

    pub(crate) async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        // The semaphore is never closed: `None` cannot happen, and would only lift the bound.
        self.semaphore.clone().acquire_owned().await.ok()
    }

    /// Records the permit of the running turn `turn_id`; the guard gives it back when the turn
    /// ends.
    pub(crate) fn hold(
        &self,
        turn_id: u64,
        permit: Option<OwnedSemaphorePermit>,
    ) -> TurnPermitGuard {
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
pub(crate) struct TurnPermitGuard {
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
