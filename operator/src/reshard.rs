//! Resharding, decided by pure functions: how many pods to run, whether to start, follow or
//! finish a resharding, and what the status says about it. The reconcile asks the coordinator
//! (shard 0, see [`crate::coordinator`]) and feeds its answer back in here.
//!
//! Grow n→m: run m pods; when all m are ready, ask shard 0 to reshard to m; when it is done,
//! publish the ring of m shards. Shrink n→m: reshard to m while all n pods run; when done, publish
//! the ring and only then lower the pods to m. A change while one runs waits for it: only one
//! resharding is ever in flight, so two rings are never half-applied.

use stead_core::crd::{DurableNamespaceStatus, ReshardStatus, RingStatus};

use crate::coordinator::{CoordinatorError, Progress, ReshardState};

/// Condition reasons of `Resharding` (and of `Degraded` for a failed resharding).
pub mod reason {
    /// The ring has `spec.shards` shards; nothing moves.
    pub const SETTLED: &str = "RingSettled";
    /// New pods are starting (or old ones are not ready): slots move only when all are ready.
    pub const WAITING_FOR_SHARDS: &str = "WaitingForShards";
    /// The coordinator moves slots.
    pub const MOVING_SLOTS: &str = "MovingSlots";
    /// Shard 0 does not answer; the operator keeps asking.
    pub const COORDINATOR_UNREACHABLE: &str = "CoordinatorUnreachable";
    /// Shard 0 runs a resharding the operator did not ask for; the operator waits for it.
    pub const OTHER_RESHARD_RUNNING: &str = "OtherReshardRunning";
    /// The last attempt failed; the operator retries.
    pub const FAILED: &str = "ReshardFailed";
}

/// What the reconcile knows before talking to the coordinator.
#[derive(Debug, Clone, Copy)]
pub struct Shape<'a> {
    /// `spec.shards`.
    pub wanted: i32,
    /// The published ring (`None` before the first status).
    pub ring: Option<&'a RingStatus>,
    /// The resharding the status says is in flight.
    pub reshard: Option<&'a ReshardStatus>,
    /// Ready pods of the StatefulSet as it is now.
    pub ready: i32,
    /// Replicas of the StatefulSet as it is now.
    pub replicas: Option<i32>,
}

impl Shape<'_> {
    /// Shards of the ring the sidecars follow now.
    pub fn ring_shards(&self) -> i32 {
        self.ring.map_or(self.wanted, |r| r.shards)
    }
}

/// The pods to run. Never fewer than any shard that still owns slots: while a resharding runs,
/// both the old and the new shards run; a shrink lowers the pods only once the ring is smaller.
pub fn desired_replicas(shape: &Shape<'_>) -> i32 {
    match shape.reshard {
        Some(r) => r.from.max(r.to),
        None => shape.wanted.max(shape.ring_shards()),
    }
}

/// What to do with the coordinator in this reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The ring has the wanted size (`shards`) and nothing runs.
    Settled { shards: i32 },
    /// `want` pods must be ready before any slot moves.
    WaitForShards { from: i32, to: i32, want: i32 },
    /// Ask shard 0 to reshard to `to`.
    Start { from: i32, to: i32 },
    /// A resharding runs (per the status): ask shard 0 how far it is.
    Follow(ReshardStatus),
}

pub fn step(shape: &Shape<'_>) -> Step {
    if let Some(r) = shape.reshard {
        return Step::Follow(r.clone());
    }
    let from = shape.ring_shards();
    let to = shape.wanted;
    if from == to {
        return Step::Settled { shards: to };
    }
    let want = from.max(to);
    if shape.replicas == Some(want) && shape.ready >= want {
        Step::Start { from, to }
    } else {
        Step::WaitForShards { from, to, want }
    }
}

/// What this reconcile concluded about resharding; [`crate::status::compute`] publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The ring to publish; `None` keeps the published one.
    pub ring: Option<RingStatus>,
    /// The resharding in flight after this reconcile.
    pub reshard: Option<ReshardStatus>,
    /// The `Resharding` condition: (status, reason, message).
    pub condition: (bool, &'static str, String),
    /// A failed attempt, for `Degraded`.
    pub failure: Option<String>,
    /// Ask the coordinator again: it forgot (restarted) or the last attempt failed.
    pub post_again: bool,
}

impl Outcome {
    /// Nothing runs and the ring has `shards` shards.
    pub fn settled(shards: i32) -> Self {
        Self {
            ring: None,
            reshard: None,
            condition: (
                false,
                reason::SETTLED,
                format!("the ring has {shards} shards"),
            ),
            failure: None,
            post_again: false,
        }
    }

    pub fn waiting(from: i32, to: i32, want: i32, ready: i32) -> Self {
        Self {
            ring: None,
            reshard: None,
            condition: (
                true,
                reason::WAITING_FOR_SHARDS,
                format!(
                    "resharding {from}→{to} waits until all {want} shards are ready ({ready} ready); see Degraded for shards that fail"
                ),
            ),
            failure: None,
            post_again: false,
        }
    }

    /// The coordinator could not be asked to start: nothing runs yet.
    pub fn not_started(from: i32, to: i32, error: &CoordinatorError) -> Self {
        Self {
            ring: None,
            reshard: None,
            condition: (
                true,
                if error.is_refusal() {
                    reason::FAILED
                } else {
                    reason::COORDINATOR_UNREACHABLE
                },
                format!("resharding {from}→{to} not started: {error}; retrying"),
            ),
            failure: error
                .is_refusal()
                .then(|| format!("resharding {from}→{to} not started: {error}")),
            post_again: false,
        }
    }
}

/// Fold the coordinator's answer about the resharding `r` (from the status, or just started) into
/// what to publish. `failure_reported`: the status already says this resharding failed (so a
/// `failed` answer now means "retry", not "report").
pub fn follow(
    r: &ReshardStatus,
    answer: Result<&Progress, &CoordinatorError>,
    failure_reported: bool,
) -> Outcome {
    let running = |reason: &'static str, message: String| Outcome {
        ring: None,
        reshard: Some(r.clone()),
        condition: (true, reason, message),
        failure: None,
        post_again: false,
    };
    let p = match answer {
        Err(e) => {
            return running(
                reason::COORDINATOR_UNREACHABLE,
                format!(
                    "resharding {}→{}: cannot ask shard 0 how far it is: {e}; retrying",
                    r.from, r.to
                ),
            );
        }
        Ok(p) => p,
    };
    let same_target = p.to == r.to;
    match p.state {
        // Shard 0 restarted (it keeps no state of its own) or finished another target earlier:
        // ask again; the coordinator resumes from what the shards own.
        ReshardState::Idle => Outcome {
            post_again: true,
            ..running(
                reason::MOVING_SLOTS,
                format!(
                    "resharding {}→{}: shard 0 restarted; resuming (moved {}/{} slots before)",
                    r.from, r.to, r.moved, r.total
                ),
            )
        },
        ReshardState::Running if !same_target => running(
            reason::OTHER_RESHARD_RUNNING,
            format!(
                "shard 0 runs a resharding to {} shards that this operator did not ask for; resharding {}→{} starts when it ends",
                p.to, r.from, r.to
            ),
        ),
        ReshardState::Done | ReshardState::Failed if !same_target => Outcome {
            post_again: true,
            ..running(
                reason::MOVING_SLOTS,
                format!("resharding {}→{}: starting", r.from, r.to),
            )
        },
        // The coordinator answers a start (or resume) before it has counted the slots to move
        // (`total` 0): keep what the status knew, and say so, rather than "moved 0/0 slots".
        ReshardState::Running if p.total == 0 => running(
            reason::MOVING_SLOTS,
            format!(
                "resharding {}→{}: shard 0 is counting the slots to move",
                r.from, r.to
            ),
        ),
        ReshardState::Running => {
            let now = ReshardStatus {
                from: r.from,
                to: r.to,
                moved: p.moved,
                total: p.total,
            };
            Outcome {
                ring: None,
                condition: (
                    true,
                    reason::MOVING_SLOTS,
                    format!("moved {}/{} slots", p.moved, p.total),
                ),
                reshard: Some(now),
                failure: None,
                post_again: false,
            }
        }
        ReshardState::Done => Outcome {
            ring: Some(RingStatus {
                epoch: p.epoch,
                shards: r.to,
                moving: 0,
            }),
            reshard: None,
            condition: (
                false,
                reason::SETTLED,
                format!(
                    "resharded {}→{}: moved {} slots; the ring has {} shards (epoch {})",
                    r.from, r.to, p.total, r.to, p.epoch
                ),
            ),
            failure: None,
            post_again: false,
        },
        ReshardState::Failed => {
            let error = p.error.as_deref().unwrap_or("no reason given");
            let message = format!(
                "resharding {}→{} failed after moving {}/{} slots: {error}; the operator retries",
                r.from, r.to, p.moved, p.total
            );
            Outcome {
                ring: None,
                reshard: Some(r.clone()),
                condition: (true, reason::FAILED, message.clone()),
                failure: Some(message),
                post_again: failure_reported,
            }
        }
    }
}

/// Whether the published status already reports this resharding as failed.
pub fn failure_reported(previous: Option<&DurableNamespaceStatus>) -> bool {
    previous
        .and_then(|s| s.condition(stead_core::crd::condition::DEGRADED))
        .is_some_and(|c| c.status == "True" && c.reason == reason::FAILED)
}

/// The ring to publish while a resharding runs: the old one, with the slots still to move.
pub fn ring_while_moving(ring: Option<&RingStatus>, reshard: &ReshardStatus) -> Option<RingStatus> {
    ring.map(|r| RingStatus {
        moving: i32::try_from((reshard.total - reshard.moved).max(0)).unwrap_or(i32::MAX),
        ..r.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(shards: i32, epoch: i64) -> RingStatus {
        RingStatus {
            epoch,
            shards,
            moving: 0,
        }
    }

    fn running(from: i32, to: i32) -> ReshardStatus {
        ReshardStatus {
            from,
            to,
            moved: 0,
            total: 0,
        }
    }

    fn progress(state: ReshardState, to: i32, moved: i64, total: i64) -> Progress {
        Progress {
            state,
            from: 3,
            to,
            epoch: 2,
            moved,
            total,
            error: None,
        }
    }

    fn shape<'a>(
        wanted: i32,
        ring: &'a RingStatus,
        reshard: Option<&'a ReshardStatus>,
        replicas: i32,
        ready: i32,
    ) -> Shape<'a> {
        Shape {
            wanted,
            ring: Some(ring),
            reshard,
            ready,
            replicas: Some(replicas),
        }
    }

    #[test]
    fn a_grow_first_runs_the_new_pods_and_waits_until_all_are_ready() {
        let r = ring(3, 1);
        let s = shape(5, &r, None, 3, 3);
        assert_eq!(desired_replicas(&s), 5);
        assert_eq!(
            step(&s),
            Step::WaitForShards {
                from: 3,
                to: 5,
                want: 5
            }
        );
        let s = shape(5, &r, None, 5, 4);
        assert!(matches!(step(&s), Step::WaitForShards { .. }));
        let s = shape(5, &r, None, 5, 5);
        assert_eq!(step(&s), Step::Start { from: 3, to: 5 });
    }

    #[test]
    fn a_shrink_moves_slots_while_every_old_pod_runs_and_lowers_pods_after() {
        let r = ring(5, 2);
        let s = shape(2, &r, None, 5, 5);
        assert_eq!(
            desired_replicas(&s),
            5,
            "no pod stops before its slots moved"
        );
        assert_eq!(step(&s), Step::Start { from: 5, to: 2 });
        let moving = running(5, 2);
        let s = shape(2, &r, Some(&moving), 5, 5);
        assert_eq!(desired_replicas(&s), 5);
        let done = follow(
            &moving,
            Ok(&progress(ReshardState::Done, 2, 3000, 3000)),
            false,
        );
        let new_ring = done.ring.clone().expect("the new ring");
        assert_eq!(new_ring, ring(2, 2));
        let after = shape(2, &new_ring, None, 5, 5);
        assert_eq!(desired_replicas(&after), 2, "now the pods go");
        assert_eq!(step(&after), Step::Settled { shards: 2 });
    }

    #[test]
    fn a_change_during_a_resharding_waits_for_it_then_starts_the_next() {
        let r = ring(3, 1);
        let moving = running(3, 5);
        // The user asks for 7, then 2, while 3→5 runs: the running one is followed, untouched.
        for wanted in [7, 2] {
            let s = shape(wanted, &r, Some(&moving), 5, 5);
            assert_eq!(desired_replicas(&s), 5);
            assert_eq!(step(&s), Step::Follow(moving.clone()));
        }
        let done = follow(
            &moving,
            Ok(&progress(ReshardState::Done, 5, 900, 900)),
            false,
        );
        let five = done.ring.expect("ring");
        assert_eq!(five.shards, 5);
        let grow = shape(7, &five, None, 5, 5);
        assert_eq!(desired_replicas(&grow), 7);
        assert!(matches!(step(&grow), Step::WaitForShards { want: 7, .. }));
        let shrink = shape(2, &five, None, 5, 5);
        assert_eq!(step(&shrink), Step::Start { from: 5, to: 2 });
    }

    #[test]
    fn progress_is_reported_as_slots_moved() {
        let moving = running(3, 5);
        let o = follow(
            &moving,
            Ok(&progress(ReshardState::Running, 5, 812, 1638)),
            false,
        );
        assert!(o.condition.0);
        assert_eq!(o.condition.2, "moved 812/1638 slots");
        let r = o.reshard.expect("still running");
        assert_eq!((r.moved, r.total), (812, 1638));
        assert_eq!(
            ring_while_moving(Some(&ring(3, 1)), &r),
            Some(RingStatus {
                epoch: 1,
                shards: 3,
                moving: 826
            })
        );
        assert_eq!(o.ring, None, "the ring changes only when done");
    }

    #[test]
    fn a_coordinator_that_has_not_counted_yet_keeps_the_known_progress() {
        // A restarted coordinator asked again answers before it has counted what is left.
        let before = ReshardStatus {
            from: 3,
            to: 5,
            moved: 45,
            total: 98,
        };
        let o = follow(
            &before,
            Ok(&progress(ReshardState::Running, 5, 0, 0)),
            false,
        );
        assert_eq!(o.condition.1, reason::MOVING_SLOTS);
        assert_eq!(
            o.condition.2,
            "resharding 3→5: shard 0 is counting the slots to move"
        );
        assert_eq!(o.reshard, Some(before), "the last known progress stands");
        assert_eq!(o.ring, None);
    }

    #[test]
    fn a_finished_resharding_publishes_the_coordinators_epoch() {
        let o = follow(
            &running(3, 5),
            Ok(&progress(ReshardState::Done, 5, 1638, 1638)),
            false,
        );
        assert_eq!(o.ring, Some(ring(5, 2)));
        assert_eq!(o.reshard, None);
        assert!(!o.condition.0);
        assert!(o.condition.2.contains("3→5"), "{}", o.condition.2);
    }

    #[test]
    fn a_failed_resharding_is_reported_first_then_retried() {
        let mut p = progress(ReshardState::Failed, 5, 10, 1638);
        p.error = Some("shard 4 does not answer GET /v1/admin/slots".into());
        let first = follow(&running(3, 5), Ok(&p), false);
        let failure = first.failure.clone().expect("degraded");
        assert!(failure.contains("shard 4 does not answer"), "{failure}");
        assert!(!first.post_again, "reported before it is retried");
        assert_eq!(first.reshard, Some(running(3, 5)), "still to be done");
        let again = follow(&running(3, 5), Ok(&p), true);
        assert!(again.post_again);
    }

    #[test]
    fn a_restarted_coordinator_is_asked_again_and_resumes() {
        let o = follow(
            &running(3, 5),
            Ok(&progress(ReshardState::Idle, 0, 0, 0)),
            false,
        );
        assert!(o.post_again);
        assert_eq!(o.reshard, Some(running(3, 5)));
        assert_eq!(o.ring, None);
    }

    #[test]
    fn an_unreachable_coordinator_keeps_the_resharding_and_says_so() {
        let e = CoordinatorError::Unreachable("connection refused".into());
        let o = follow(&running(3, 5), Err(&e), false);
        assert_eq!(o.condition.1, reason::COORDINATOR_UNREACHABLE);
        assert!(o.condition.2.contains("connection refused"));
        assert_eq!(o.reshard, Some(running(3, 5)));
        assert_eq!(o.failure, None, "a pod restart is not a failure");
    }

    #[test]
    fn a_resharding_the_operator_did_not_ask_for_is_waited_for() {
        let o = follow(
            &running(3, 5),
            Ok(&progress(ReshardState::Running, 4, 1, 2)),
            false,
        );
        assert_eq!(o.condition.1, reason::OTHER_RESHARD_RUNNING);
        assert!(!o.post_again);
        assert_eq!(o.ring, None);
    }

    #[test]
    fn a_coordinator_that_refuses_to_start_is_a_failure_one_that_is_down_is_not() {
        let refused = CoordinatorError::Refused {
            status: 401,
            code: "unauthorized".into(),
            message: "wrong peer token".into(),
        };
        let o = Outcome::not_started(3, 5, &refused);
        assert_eq!(o.condition.1, reason::FAILED);
        assert!(o.failure.expect("degraded").contains("wrong peer token"));
        assert_eq!(o.reshard, None, "nothing runs");
        let down = CoordinatorError::Unreachable("connection refused".into());
        let o = Outcome::not_started(3, 5, &down);
        assert_eq!(o.condition.1, reason::COORDINATOR_UNREACHABLE);
        assert_eq!(o.failure, None);
    }

    #[test]
    fn an_unchanged_namespace_has_nothing_to_move() {
        let r = ring(3, 4);
        let s = shape(3, &r, None, 3, 1);
        assert_eq!(step(&s), Step::Settled { shards: 3 });
        assert_eq!(desired_replicas(&s), 3);
        let fresh = Shape {
            wanted: 3,
            ring: None,
            reshard: None,
            ready: 0,
            replicas: None,
        };
        assert_eq!(
            step(&fresh),
            Step::Settled { shards: 3 },
            "a new namespace starts with its ring"
        );
        assert_eq!(desired_replicas(&fresh), 3);
    }
}
