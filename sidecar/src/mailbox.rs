//! One object's mailbox: its events become turns, one at a time in the app, pipelined behind an
//! output gate (DESIGN §3).
//!
//! - Turn N+1 is delivered to the app as soon as the app answered turn N: N's end in storage and
//!   its commit are queued first and awaited by the gate. N+1 runs against N's writes.
//! - Consecutive turns share one transaction, each in its own savepoint (group commit). The
//!   group is committed when no event is queued, or when it reaches `group_max_turns` turns or
//!   `group_max_age`; while its commit is on its way to the disk the next turn runs in the app.
//! - Every reply and WebSocket message of a group waits in the [`OutputGate`] until the group's
//!   commit is durable. A failed commit fails every turn it covered, and every turn that started
//!   before the failure was known; the object's incarnation changes.
//! - A WebSocket connect turn ends its group and waits for its release: the sockets a later turn
//!   sees include the one it accepted.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use stead_core::{EventKind, protocol};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};

use crate::alarms::{AlarmChange, MAX_RETRIES, now_ms};
use crate::app::{clean_headers, hibernate, set_object_headers};
use crate::envelope::{self, MAX_STATE_BYTES};
use crate::error::ApiError;
use crate::gate::OutputGate;
use crate::host::{Event, Host, Work};
use crate::metrics::{OutcomeLabels, ResultLabels};
use crate::object::{ObjectKey, ObjectRef};
use crate::ownership::SlotGuard;
use crate::storage::{Failures, StorageError};
use crate::turn::{AlarmTurn, Answer, CommitOutcome, Finished, ObjectCell};

/// A finished turn in the output gate.
pub(crate) struct Held {
    finished: Finished,
    object: Arc<ObjectRef>,
    work: Work,
    reply: Option<oneshot::Sender<Response<Bytes>>>,
    started: Instant,
    /// Keeps the slot from moving until the turn's commit is known.
    _admitted: Option<SlotGuard>,
}

/// The object's incarnation as the mailbox tracks it.
struct Incarnation {
    generation: u64,
    /// The app has not had an event under this incarnation yet.
    fresh: bool,
    /// Failed commits of the object known when the incarnation began.
    failures_seen: u64,
}

impl Host {
    fn next_generation(&self) -> u64 {
        self.mailbox_seq.fetch_add(1, Ordering::Relaxed)
    }

    fn incarnation_name(&self, generation: u64) -> String {
        format!("{}.{generation}", self.boot)
    }

    pub(crate) async fn run_mailbox(
        self: Arc<Self>,
        key: ObjectKey,
        mut rx: mpsc::Receiver<Box<Event>>,
    ) {
        let cell = ObjectCell::default();
        let mut inc = Incarnation {
            generation: self.next_generation(),
            fresh: true,
            failures_seen: 0,
        };
        let mut gate = OutputGate::<Held>::default();
        let mut last_object: Option<Arc<ObjectRef>> = None;
        loop {
            let event = match rx.try_recv() {
                Ok(event) => event,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.seal(&mut gate, &last_object, &cell).await;
                    gate.settle().await;
                    return;
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Nothing queued: the group ends here.
                    self.seal(&mut gate, &last_object, &cell).await;
                    match timeout(self.config.idle_timeout, rx.recv()).await {
                        Ok(Some(event)) => event,
                        Ok(None) => {
                            gate.settle().await;
                            return;
                        }
                        Err(_idle) => {
                            gate.settle().await;
                            if self.close_idle(&key, &rx, &last_object, &inc).await {
                                return;
                            }
                            // Events arrived while closing: keep serving, as a new incarnation.
                            inc = self.new_incarnation(&cell);
                            continue;
                        }
                    }
                }
            };
            last_object = Some(event.object.clone());
            if cell.failures.count() != inc.failures_seen {
                // A commit failed: the app's instance may hold writes that are gone.
                inc = self.new_incarnation(&cell);
            }
            let Some(event) = self.check_alarm(*event).await else {
                continue;
            };
            let connect = matches!(
                event.work,
                Work::WebSocket {
                    kind: EventKind::WebSocketConnect,
                    ..
                }
            );
            // The group ends with this turn if nothing else is queued when the app has
            // answered, or at its bounds: then the turn's end and the group's commit go to
            // storage together.
            let bound = gate.len() + 1 >= self.config.group_max_turns.max(1)
                || gate.age() >= self.config.group_max_age;
            let last = |rx: &mpsc::Receiver<Box<Event>>| connect || bound || rx.is_empty();
            let (held, commit) = self.run_turn(event, &cell, &mut inc, || last(&rx)).await;
            let rolled_back = !held.finished.kept;
            gate.hold(held);
            if rolled_back {
                // The app's in-memory instance may hold state the rollback undid.
                inc = self.new_incarnation(&cell);
            }
            if let Some(commit) = commit {
                // Already on its way: the group ends here, whatever arrived meanwhile.
                self.seal_with(&mut gate, &last_object, &cell, Some(commit))
                    .await;
            } else if connect || bound {
                self.seal(&mut gate, &last_object, &cell).await;
            }
            if connect {
                gate.settle().await;
            }
        }
    }

    fn new_incarnation(&self, cell: &ObjectCell) -> Incarnation {
        Incarnation {
            generation: self.next_generation(),
            fresh: true,
            failures_seen: cell.failures.count(),
        }
    }

    /// Closes an idle object: its database, the app's instance, its mailbox. False if events
    /// arrived meanwhile (the mailbox goes on).
    async fn close_idle(
        &self,
        key: &ObjectKey,
        rx: &mpsc::Receiver<Box<Event>>,
        last_object: &Option<Arc<ObjectRef>>,
        inc: &Incarnation,
    ) -> bool {
        if let Err(e) = self.store.close(key.clone()).await {
            tracing::warn!(error = %e, "closing idle object failed");
        }
        if let Some(obj) = last_object {
            hibernate(
                self.app.as_ref(),
                obj,
                &self.incarnation_name(inc.generation),
            )
            .await;
        }
        let mut mailboxes = self.mailboxes.lock().unwrap_or_else(|p| p.into_inner());
        if rx.is_empty() {
            mailboxes.remove(key);
            tracing::debug!("object hibernated");
            return true;
        }
        false
    }

    /// Seals the gate's group, if it holds any turn: sends its commit to storage now (ordered
    /// before anything the next turn does) and releases its turns once the commit is known.
    async fn seal(
        self: &Arc<Self>,
        gate: &mut OutputGate<Held>,
        object: &Option<Arc<ObjectRef>>,
        cell: &ObjectCell,
    ) {
        self.seal_with(gate, object, cell, None).await;
    }

    /// [`Host::seal`] with the group's commit already queued (`commit`), or not yet.
    async fn seal_with(
        self: &Arc<Self>,
        gate: &mut OutputGate<Held>,
        object: &Option<Arc<ObjectRef>>,
        cell: &ObjectCell,
        commit: Option<CommitOutcome>,
    ) {
        let Some(object) = object.clone() else {
            return;
        };
        if gate.is_empty() {
            return;
        }
        let wrote = gate.held().iter().any(|h| h.finished.wrote);
        if wrote && commit.is_none() && self.config.abort_at_commit {
            tracing::error!("test hook: aborting at commit");
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            std::process::abort();
        }
        // A group that left nothing in the transaction needs no commit; its replies still wait
        // for the groups before it, and fail if one of those failed (see `release_turn`).
        let commit = match commit {
            Some(queued) => queued,
            None if wrote => self.store.commit(object.clone(), cell.failures.clone()),
            None => Box::pin(std::future::ready(Ok(None))),
        };
        let host = self.clone();
        let failures = cell.failures.clone();
        gate.seal(commit, move |held, outcome| async move {
            host.release(&object, held, outcome, &failures).await;
        })
        .await;
    }

    /// An alarm event whose alarm the object's database no longer has (deleted or moved by a
    /// later turn) is not delivered: the index entry was stale.
    async fn check_alarm(&self, event: Event) -> Option<Event> {
        let Work::Alarm { .. } = event.work else {
            return Some(event);
        };
        let now = now_ms();
        match self.store.alarm_time(&event.object).await {
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

    /// Runs one event as a turn, up to the app's answer; its end in storage is queued, and its
    /// reply waits in the gate.
    async fn run_turn(
        &self,
        event: Event,
        cell: &ObjectCell,
        inc: &mut Incarnation,
        last_of_group: impl Fn() -> bool,
    ) -> (Held, Option<CommitOutcome>) {
        let permit = self.turn_permits.acquire().await;
        let started = Instant::now();
        let Event {
            object,
            chain,
            work,
            mut request,
            reply,
            admitted,
        } = event;
        let held = |finished: Finished, work: Work, reply, admitted| Held {
            finished,
            object: object.clone(),
            work,
            reply,
            started,
            _admitted: admitted,
        };
        let deadline = std::time::Instant::now() + self.config.turn_timeout;
        let turn = match self.turns.begin_object(
            object.clone(),
            cell,
            inc.failures_seen,
            chain.with(object.key()),
            deadline,
        ) {
            Ok(t) => t,
            Err(e) => {
                let response =
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                        .into_http();
                let finished = Finished::refused(response, inc.failures_seen);
                return (held(finished, work, reply, admitted), None);
            }
        };
        let _permit = self.turn_permits.hold(turn.id(), permit);
        let kind = match &work {
            Work::Request => EventKind::Request,
            Work::Alarm { .. } => EventKind::Alarm,
            Work::WebSocket { kind, ws_id } => {
                if let Ok(v) = HeaderValue::from_str(ws_id) {
                    request.headers_mut().insert(protocol::WEBSOCKET_ID, v);
                }
                *kind
            }
        };
        let incarnation = self.incarnation_name(inc.generation);
        set_object_headers(request.headers_mut(), kind, &object, &incarnation);
        request.headers_mut().insert(
            protocol::PROTOCOL,
            HeaderValue::from_static(protocol::PROTOCOL_VERSION),
        );
        request.headers_mut().insert(
            protocol::CARRY,
            HeaderValue::from_static(protocol::CARRY_VALUE),
        );
        if let Some((class, id)) = chain.caller()
            && let Ok(v) = HeaderValue::from_str(&format!("{class}/{}", id.to_hex()))
        {
            request.headers_mut().insert(protocol::CALLER, v);
        }
        if let Ok(v) = HeaderValue::from_str(turn.token()) {
            request.headers_mut().insert(protocol::TURN, v);
        }
        if std::mem::take(&mut inc.fresh) && self.app_v2.load(Ordering::Relaxed) {
            match self.store.state(&object, MAX_STATE_BYTES).await {
                Ok(Some(state)) => envelope::prepend_state(&mut request, &state),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "reading the object's state failed"),
            }
        }

        let answer = match timeout(self.config.turn_timeout, self.app.send(request)).await {
            Err(_elapsed) => {
                self.metrics.turns_timed_out.inc();
                tracing::warn!(turn_id = turn.id(), timeout = ?self.config.turn_timeout, "turn timed out; rolling back");
                Answer::TimedOut(self.config.turn_timeout)
            }
            Ok(Err(e)) => {
                tracing::warn!(turn_id = turn.id(), error = %e, "app failed; rolling back");
                Answer::Failed(e)
            }
            Ok(Ok(resp)) => Answer::Answered(resp),
        };
        let alarm = match work {
            Work::Alarm { retry, .. } => Some(AlarmTurn {
                last: retry >= MAX_RETRIES,
            }),
            _ => None,
        };
        // (The abort-at-commit test hook aborts before a commit is queued: see `seal_with`.)
        let seal = (last_of_group() && !self.config.abort_at_commit).then(|| cell.failures.clone());
        let (finished, commit) = turn.finish(
            answer,
            self.store.as_ref(),
            &self.config.limits,
            &self.sockets,
            alarm,
            seal,
        );
        if let Some(v2) = finished.speaks_v2 {
            self.app_v2.store(v2, Ordering::Relaxed);
        }
        (held(finished, work, reply, admitted), commit)
    }

    /// Releases a sealed group once its commit's `outcome` is known: what its turns answered and
    /// sent leaves now, in turn order, or — if the commit failed — every turn it kept fails.
    async fn release(
        &self,
        object: &Arc<ObjectRef>,
        mut group: Vec<Held>,
        outcome: Result<Option<AlarmChange>, StorageError>,
        failures: &Failures,
    ) {
        // The turns' ends were queued before the commit: they are done.
        for held in &mut group {
            held.finished.settle().await;
        }
        let failed = match outcome {
            Ok(change) => {
                if group.iter().any(|h| h.finished.wrote) {
                    // A slot being copied must copy this object again.
                    self.ownership.mark_written(object);
                }
                if let Some(change) = change {
                    self.alarms.committed(object, change);
                }
                None
            }
            Err(e) => {
                tracing::error!(error = %e, turns = group.len(), "a group commit failed; its turns fail");
                Some(ApiError::from(e))
            }
        };
        for held in group {
            // A turn that never reached storage cannot have been refused there: if it ran
            // after a failed commit or end, it answered from writes that are gone.
            let f = &held.finished;
            let stale = (!f.wrote && f.kept && failures.stale(f.failures_seen, f.turn_id))
                .then(|| ApiError::from(StorageError::EarlierCommitFailed));
            self.release_turn(held, failed.as_ref().or(stale.as_ref()));
        }
    }

    fn release_turn(&self, held: Held, failed: Option<&ApiError>) {
        let Held {
            finished,
            object,
            work,
            reply,
            started,
            _admitted,
        } = held;
        let Finished {
            mut response,
            kept,
            outbox,
            ..
        } = finished;
        let committed = kept && failed.is_none();
        if let (true, Some(e)) = (kept, failed) {
            response = e.clone().into_http();
        }
        match &work {
            Work::WebSocket {
                kind: EventKind::WebSocketConnect,
                ws_id,
            } => {
                let accepted = committed && response.status().is_success();
                let tags = response
                    .headers()
                    .get(protocol::WEBSOCKET_TAGS)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                if accepted {
                    if let Err(e) = self.sockets.accept(&object.key(), ws_id, &tags) {
                        response = e.into_http();
                    }
                } else {
                    self.sockets.refuse(&object.key(), ws_id);
                }
            }
            Work::Alarm { retry, .. } => self.alarm_outcome(&object, *retry, committed),
            _ => {}
        }
        // What the turn sent leaves only if it committed.
        if committed {
            self.sockets.flush(&object.key(), outbox);
        }
        clean_headers(response.headers_mut(), true);
        self.metrics
            .turn_seconds
            .get_or_create(&OutcomeLabels {
                outcome: if committed { "commit" } else { "rollback" },
            })
            .observe(started.elapsed().as_secs_f64());
        if let Some(reply) = reply {
            let _ = reply.send(response);
        }
    }

    fn alarm_outcome(&self, object: &ObjectRef, retry: u32, committed: bool) {
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
                // The turn deleted the alarm in its group's transaction (see `AlarmTurn`).
                tracing::error!(
                    retries = retry,
                    "alarm failed after its last retry; dropping it"
                );
                self.metrics.alarms_dropped.inc();
                self.alarms.forget(&object.key());
            }
        }
    }
}
