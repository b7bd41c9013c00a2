//! Step 4: the status, computed only from what was applied and observed: the StatefulSet the
//! server returned, the shard pods, and the problem (if any) that stopped the reconcile.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use stead_core::crd::{DurableNamespaceStatus, RingStatus, condition};

use crate::error::Error;

/// Condition reasons besides those of [`Error::condition_reason`].
pub mod reason {
    pub const CREATING: &str = "Creating";
    pub const SHARDS_READY: &str = "ShardsReady";
    pub const SHARDS_NOT_READY: &str = "ShardsNotReady";
    pub const ROLLING_OUT: &str = "RollingOut";
    pub const STABLE: &str = "Stable";
    pub const SHARD_FAILING: &str = "ShardFailing";
    pub const AS_EXPECTED: &str = "AsExpected";
}

/// Waiting reasons of a container that will not fix themselves.
const STUCK_REASONS: [&str; 7] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Everything the status is computed from.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// `metadata.generation` of the DurableNamespace.
    pub generation: Option<i64>,
    /// The status currently published.
    pub previous: Option<&'a DurableNamespaceStatus>,
    /// The StatefulSet as the server returned it, if it exists.
    pub statefulset: Option<&'a StatefulSet>,
    /// The shard pods, when they were listed.
    pub pods: &'a [Pod],
    /// What stopped this reconcile short, if anything (invalid spec, refused shard change).
    pub problem: Option<&'a Error>,
    pub now: Timestamp,
}

pub fn compute(o: Observed<'_>) -> DurableNamespaceStatus {
    let previous = o.previous.cloned().unwrap_or_default();
    let sts_spec = o.statefulset.and_then(|s| s.spec.as_ref());
    let sts_status = o.statefulset.and_then(|s| s.status.as_ref());
    let shards = sts_spec.and_then(|s| s.replicas);
    let ready = sts_status.and_then(|s| s.ready_replicas).unwrap_or(0);
    let updated = sts_status.and_then(|s| s.updated_replicas).unwrap_or(0);
    let sts_generation = o.statefulset.and_then(|s| s.metadata.generation);
    let sts_observed = sts_status.and_then(|s| s.observed_generation);
    let rolled_out =
        shards.is_some_and(|n| sts_observed >= sts_generation && updated >= n && ready >= n);
    let failing = shard_failures(o.pods);

    let ready_condition = match shards {
        None => (
            false,
            reason::CREATING,
            "the shards are being created".to_owned(),
        ),
        Some(n) if ready >= n && n > 0 => (
            true,
            reason::SHARDS_READY,
            format!("all {n} shards are ready"),
        ),
        Some(n) => match failing.first() {
            Some(f) => (false, reason::SHARD_FAILING, f.clone()),
            None => (
                false,
                reason::SHARDS_NOT_READY,
                format!("{ready} of {n} shards are ready"),
            ),
        },
    };
    let progressing = match (shards, o.problem) {
        (None, None) => (true, reason::CREATING, "creating the shards".to_owned()),
        (None, Some(_)) => (
            false,
            reason::STABLE,
            "nothing is created until the spec is fixed".to_owned(),
        ),
        (Some(n), _) if !rolled_out => (
            true,
            reason::ROLLING_OUT,
            format!("{updated} of {n} shards updated, {ready} ready"),
        ),
        (Some(n), _) => (
            false,
            reason::STABLE,
            format!("{n} shards run the current spec"),
        ),
    };
    let degraded = match (o.problem, failing.is_empty()) {
        (Some(problem), _) => (true, problem.condition_reason(), problem.to_string()),
        (None, false) => (true, reason::SHARD_FAILING, failing.join("; ")),
        (None, true) => (false, reason::AS_EXPECTED, String::new()),
    };

    let conditions = vec![
        make_condition(condition::READY, ready_condition, &previous, o),
        make_condition(condition::PROGRESSING, progressing, &previous, o),
        make_condition(condition::DEGRADED, degraded, &previous, o),
    ];
    // The ring is published once the shards exist and kept as it is: only slot migration moves
    // it to a new epoch.
    let ring = previous.ring.clone().or_else(|| {
        shards.map(|n| RingStatus {
            epoch: 1,
            shards: n,
            moving: 0,
        })
    });
    DurableNamespaceStatus {
        observed_generation: o.generation,
        conditions,
        shards: shards.or(previous.shards),
        ready_shards: shards.map(|_| ready).or(previous.ready_shards),
        ring,
    }
}

fn make_condition(
    type_: &str,
    (status, reason, message): (bool, &str, String),
    previous: &DurableNamespaceStatus,
    o: Observed<'_>,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    // The transition time moves only when the status does.
    let last_transition_time = previous
        .condition(type_)
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(o.now));
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        observed_generation: o.generation,
        last_transition_time,
    }
}

/// "shard 2 not ready: container app: ImagePullBackOff: …" for each shard stuck in a way that
/// will not fix itself, in ordinal order.
pub fn shard_failures(pods: &[Pod]) -> Vec<String> {
    let mut found: Vec<(u32, String)> = Vec::new();
    for pod in pods {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let ordinal = name.rsplit('-').next().and_then(|s| s.parse::<u32>().ok());
        let Some(ordinal) = ordinal else { continue };
        let Some(status) = pod.status.as_ref() else {
            continue;
        };
        let unschedulable = status.conditions.iter().flatten().find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        });
        if let Some(c) = unschedulable {
            found.push((
                ordinal,
                format!(
                    "shard {ordinal} not ready: cannot be scheduled: {}",
                    c.message.as_deref().unwrap_or("no node fits")
                ),
            ));
            continue;
        }
        for cs in status.container_statuses.iter().flatten() {
            let waiting = cs.state.as_ref().and_then(|s| s.waiting.as_ref());
            let Some(w) = waiting else { continue };
            let Some(reason) = w.reason.as_deref().filter(|r| STUCK_REASONS.contains(r)) else {
                continue;
            };
            let mut msg = format!("shard {ordinal} not ready: container {}: {reason}", cs.name);
            if let Some(m) = w.message.as_deref().filter(|m| !m.is_empty()) {
                msg.push_str(": ");
                msg.extend(m.chars().take(300));
            }
            found.push((ordinal, msg));
            break;
        }
    }
    found.sort();
    found.into_iter().map(|(_, m)| m).collect()
}

/// Whether the published status says every shard is ready.
pub fn is_ready(status: Option<&DurableNamespaceStatus>) -> bool {
    status
        .and_then(|s| s.condition(condition::READY))
        .is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{StatefulSetSpec, StatefulSetStatus};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodStatus,
    };
    use kube::api::ObjectMeta;

    fn sts(replicas: i32, ready: i32, updated: i32) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                generation: Some(2),
                ..ObjectMeta::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                ..StatefulSetSpec::default()
            }),
            status: Some(StatefulSetStatus {
                replicas,
                ready_replicas: Some(ready),
                updated_replicas: Some(updated),
                observed_generation: Some(2),
                ..StatefulSetStatus::default()
            }),
        }
    }

    fn observe<'a>(
        sts: Option<&'a StatefulSet>,
        pods: &'a [Pod],
        problem: Option<&'a Error>,
    ) -> Observed<'a> {
        Observed {
            generation: Some(4),
            previous: None,
            statefulset: sts,
            pods,
            problem,
            now: Timestamp::UNIX_EPOCH,
        }
    }

    fn cond<'a>(s: &'a DurableNamespaceStatus, t: &str) -> &'a Condition {
        s.condition(t).unwrap_or_else(|| panic!("no {t} condition"))
    }

    #[test]
    fn all_shards_ready_means_ready_and_the_ring_is_published() {
        let sts = sts(3, 3, 3);
        let s = compute(observe(Some(&sts), &[], None));
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(s.shards, Some(3));
        assert_eq!(s.ready_shards, Some(3));
        assert_eq!(
            s.ring,
            Some(RingStatus {
                epoch: 1,
                shards: 3,
                moving: 0
            })
        );
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "Progressing").status, "False");
        assert_eq!(cond(&s, "Degraded").status, "False");
    }

    #[test]
    fn a_rollout_in_flight_is_progressing() {
        let sts = sts(3, 2, 1);
        let s = compute(observe(Some(&sts), &[], None));
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(cond(&s, "Ready").message, "2 of 3 shards are ready");
        assert_eq!(cond(&s, "Progressing").status, "True");
        assert_eq!(cond(&s, "Progressing").reason, "RollingOut");
    }

    #[test]
    fn before_the_statefulset_exists_there_is_no_ring() {
        let s = compute(observe(None, &[], None));
        assert_eq!(s.ring, None);
        assert_eq!(cond(&s, "Ready").reason, "Creating");
    }

    #[test]
    fn a_refused_shard_change_is_degraded_and_keeps_the_running_shards() {
        let sts = sts(3, 3, 3);
        let err = Error::ShardChangeNeedsMigration {
            current: 3,
            requested: 5,
        };
        let s = compute(observe(Some(&sts), &[], Some(&err)));
        let d = cond(&s, "Degraded");
        assert_eq!(d.status, "True");
        assert_eq!(d.reason, "ShardChangeNeedsMigration");
        assert!(
            d.message.contains("slot migration is not available yet"),
            "{}",
            d.message
        );
        assert!(d.message.contains("stays at 3 shards"), "{}", d.message);
        assert_eq!(s.shards, Some(3));
        assert_eq!(cond(&s, "Ready").status, "True", "the 3 shards still serve");
    }

    #[test]
    fn a_stuck_shard_is_named_with_its_reason() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("chat-2".into()),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "app".into(),
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some("ImagePullBackOff".into()),
                            message: Some("Back-off pulling image \"acme/chat:nope\"".into()),
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        let sts = sts(3, 2, 3);
        let s = compute(observe(Some(&sts), std::slice::from_ref(&pod), None));
        let d = cond(&s, "Degraded");
        assert_eq!(d.status, "True");
        assert_eq!(d.reason, "ShardFailing");
        assert_eq!(
            d.message,
            "shard 2 not ready: container app: ImagePullBackOff: Back-off pulling image \"acme/chat:nope\""
        );
        assert_eq!(cond(&s, "Ready").reason, "ShardFailing");
    }

    #[test]
    fn transition_times_move_only_when_the_status_does() {
        let sts_ = sts(3, 3, 3);
        let first = compute(observe(Some(&sts_), &[], None));
        let later = Timestamp::from_second(1_000).expect("timestamp");
        let again = compute(Observed {
            previous: Some(&first),
            now: later,
            ..observe(Some(&sts_), &[], None)
        });
        assert_eq!(first, again, "a second reconcile changes nothing");
        let half = sts(3, 1, 3);
        let changed = compute(Observed {
            previous: Some(&first),
            now: later,
            ..observe(Some(&half), &[], None)
        });
        assert_eq!(cond(&changed, "Ready").last_transition_time, Time(later));
        assert_eq!(
            cond(&changed, "Degraded").last_transition_time,
            Time(Timestamp::UNIX_EPOCH)
        );
    }

    #[test]
    fn the_published_ring_is_kept() {
        let sts_ = sts(3, 3, 3);
        let previous = DurableNamespaceStatus {
            ring: Some(RingStatus {
                epoch: 7,
                shards: 3,
                moving: 0,
            }),
            ..DurableNamespaceStatus::default()
        };
        let s = compute(Observed {
            previous: Some(&previous),
            ..observe(Some(&sts_), &[], None)
        });
        assert_eq!(s.ring.map(|r| r.epoch), Some(7));
    }
}
