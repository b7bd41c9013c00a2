//! Step 4: the status, computed only from what was applied and observed: the StatefulSet the
//! server returned, the shard pods, and the problem (if any) that stopped the reconcile.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use stead_core::crd::{DurableNamespaceStatus, RingStatus, condition};

use crate::build::SIDECAR_CONTAINER;
use crate::error::Error;
use crate::reshard::{self, Outcome};

/// Condition reasons besides those of [`Error::condition_reason`].
pub mod reason {
    pub const CREATING: &str = "Creating";
    pub const SHARDS_READY: &str = "ShardsReady";
    pub const SHARDS_NOT_READY: &str = "ShardsNotReady";
    pub const ROLLING_OUT: &str = "RollingOut";
    pub const STABLE: &str = "Stable";
    pub const SHARD_FAILING: &str = "ShardFailing";
    pub const AS_EXPECTED: &str = "AsExpected";
    pub const RESHARDING: &str = "Resharding";
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

/// Waiting reasons that mean the node cannot get the container's image.
const IMAGE_PULL_REASONS: [&str; 3] = ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"];

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
    /// What the resharding step concluded; `None` when it did not run (a refused spec): the
    /// published ring and resharding stay as they are.
    pub resharding: Option<&'a Outcome>,
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

    let mut ready_condition = match shards {
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
    let resharding = o.resharding.filter(|r| r.condition.0);
    if let (Some(r), (true, _, _)) = (resharding, &ready_condition) {
        ready_condition = (false, reason::RESHARDING, r.condition.2.clone());
    }
    let mut progressing = match (shards, o.problem) {
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
    if let (Some(r), (false, _, _)) = (resharding, &progressing) {
        progressing = (true, reason::RESHARDING, r.condition.2.clone());
    }
    let reshard_failure = o.resharding.and_then(|r| r.failure.clone());
    let degraded = match (o.problem, reshard_failure, failing.is_empty()) {
        (Some(problem), _, _) => (true, problem.condition_reason(), problem.to_string()),
        (None, Some(failure), _) => (true, reshard::reason::FAILED, failure),
        (None, None, false) => (true, reason::SHARD_FAILING, failing.join("; ")),
        (None, None, true) => (false, reason::AS_EXPECTED, String::new()),
    };

    let mut conditions = vec![
        make_condition(condition::READY, ready_condition, &previous, o),
        make_condition(condition::PROGRESSING, progressing, &previous, o),
        make_condition(condition::DEGRADED, degraded, &previous, o),
    ];
    match o.resharding {
        Some(r) => conditions.push(make_condition(
            condition::RESHARDING,
            r.condition.clone(),
            &previous,
            o,
        )),
        None => conditions.extend(previous.condition(condition::RESHARDING).cloned()),
    }
    // The ring is published once the shards exist; only a finished resharding moves it to a new
    // epoch. While one runs, `moving` counts the slots still to move.
    let published = o
        .resharding
        .and_then(|r| r.ring.clone())
        .or(previous.ring.clone())
        .or_else(|| {
            shards.map(|n| RingStatus {
                epoch: 1,
                shards: n,
                moving: 0,
            })
        });
    let reshard = match o.resharding {
        Some(r) => r.reshard.clone(),
        None => previous.reshard.clone(),
    };
    let ring = match &reshard {
        Some(r) => reshard::ring_while_moving(published.as_ref(), r),
        None => published.map(|r| RingStatus { moving: 0, ..r }),
    };
    DurableNamespaceStatus {
        observed_generation: o.generation,
        conditions,
        shards: shards.or(previous.shards),
        ready_shards: shards.map(|_| ready).or(previous.ready_shards),
        ring,
        reshard,
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

/// "shard 2 not ready: container app: CrashLoopBackOff: …" for each shard stuck in a way that
/// will not fix itself, in ordinal order; shards stuck on the same thing (most often an image no
/// node can pull) share one line: "shards 0, 1, 2 cannot pull image …".
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
                    "not ready: cannot be scheduled: {}",
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
            let detail = w.message.as_deref().filter(|m| !m.is_empty());
            let msg = if IMAGE_PULL_REASONS.contains(&reason) {
                image_pull_failure(&cs.name, &cs.image, reason, detail)
            } else {
                let mut msg = format!("not ready: container {}: {reason}", cs.name);
                if let Some(m) = detail {
                    msg.push_str(": ");
                    msg.extend(m.chars().take(300));
                }
                msg
            };
            found.push((ordinal, msg));
            break;
        }
    }
    found.sort();
    let mut lines: Vec<(Vec<String>, String)> = Vec::new();
    for (ordinal, what) in found {
        match lines.iter_mut().find(|(_, w)| *w == what) {
            Some((ordinals, _)) => ordinals.push(ordinal.to_string()),
            None => lines.push((vec![ordinal.to_string()], what)),
        }
    }
    lines
        .into_iter()
        .map(|(ordinals, what)| match ordinals.as_slice() {
            [one] => format!("shard {one} {what}"),
            many => format!("shards {} {what}", many.join(", ")),
        })
        .collect()
}

/// "cannot pull image "…" for container app (ErrImagePull: …): " and what to do, which depends on
/// whose image it is: the app's comes from the DurableNamespace, the sidecar's from the
/// operator's configuration (the Helm chart's `sidecar.image`).
fn image_pull_failure(container: &str, image: &str, reason: &str, detail: Option<&str>) -> String {
    let advice = match (container == SIDECAR_CONTAINER, reason == "InvalidImageName") {
        (false, true) => "fix the image name in spec.app.image".to_owned(),
        (false, false) => format!(
            "check spec.app.image, and that the cluster's nodes can pull it: push it to a \
             registry they can pull from, or on a kind cluster run \
             `kind load docker-image {image}`"
        ),
        (true, _) => "this is the sidecar image the operator injects (STEAD_SIDECAR_IMAGE; the \
             Helm chart's sidecar.image.repository and sidecar.image.tag): publish it where \
             the nodes can pull it, or point the chart at an image they can pull"
            .to_owned(),
    };
    let detail: String = detail
        .map(|m| format!(": {}", m.chars().take(200).collect::<String>()))
        .unwrap_or_default();
    format!("cannot pull image \"{image}\" for container {container} ({reason}{detail}): {advice}")
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
            resharding: None,
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

    fn reshard_status(
        from: i32,
        to: i32,
        moved: i64,
        total: i64,
    ) -> stead_core::crd::ReshardStatus {
        stead_core::crd::ReshardStatus {
            from,
            to,
            moved,
            total,
        }
    }

    #[test]
    fn a_running_resharding_shows_its_progress_and_the_ring_it_leaves() {
        let sts = sts(5, 5, 5);
        let before = compute(observe(Some(&sts), &[], None));
        let outcome = Outcome {
            ring: None,
            reshard: Some(reshard_status(3, 5, 812, 1638)),
            condition: (
                true,
                crate::reshard::reason::MOVING_SLOTS,
                "moved 812/1638 slots".into(),
            ),
            failure: None,
            post_again: false,
        };
        let previous = DurableNamespaceStatus {
            ring: Some(RingStatus {
                epoch: 1,
                shards: 3,
                moving: 0,
            }),
            ..before
        };
        let s = compute(Observed {
            previous: Some(&previous),
            resharding: Some(&outcome),
            ..observe(Some(&sts), &[], None)
        });
        let r = cond(&s, "Resharding");
        assert_eq!(
            (r.status.as_str(), r.message.as_str()),
            ("True", "moved 812/1638 slots")
        );
        assert_eq!(cond(&s, "Ready").status, "False", "Ready again when done");
        assert_eq!(cond(&s, "Ready").reason, "Resharding");
        assert_eq!(cond(&s, "Progressing").status, "True");
        assert_eq!(cond(&s, "Degraded").status, "False");
        assert_eq!(
            s.ring,
            Some(RingStatus {
                epoch: 1,
                shards: 3,
                moving: 826
            })
        );
        assert_eq!(s.reshard, Some(reshard_status(3, 5, 812, 1638)));

        let done = Outcome {
            ring: Some(RingStatus {
                epoch: 2,
                shards: 5,
                moving: 0,
            }),
            reshard: None,
            condition: (false, crate::reshard::reason::SETTLED, "resharded".into()),
            failure: None,
            post_again: false,
        };
        let s = compute(Observed {
            previous: Some(&s),
            resharding: Some(&done),
            ..observe(Some(&sts), &[], None)
        });
        assert_eq!(cond(&s, "Resharding").status, "False");
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(
            s.ring.map(|r| (r.epoch, r.shards, r.moving)),
            Some((2, 5, 0))
        );
        assert_eq!(s.reshard, None);
    }

    #[test]
    fn a_failed_resharding_is_degraded_with_the_coordinators_error() {
        let sts = sts(5, 5, 5);
        let failed = Outcome {
            ring: None,
            reshard: Some(reshard_status(3, 5, 10, 1638)),
            condition: (
                true,
                crate::reshard::reason::FAILED,
                "failed: shard 4".into(),
            ),
            failure: Some("resharding 3→5 failed: shard 4 does not answer".into()),
            post_again: false,
        };
        let s = compute(Observed {
            resharding: Some(&failed),
            ..observe(Some(&sts), &[], None)
        });
        let d = cond(&s, "Degraded");
        assert_eq!(d.status, "True");
        assert_eq!(d.reason, "ReshardFailed");
        assert!(
            d.message.contains("shard 4 does not answer"),
            "{}",
            d.message
        );
        assert!(crate::reshard::failure_reported(Some(&s)));
    }

    #[test]
    fn a_refused_spec_keeps_the_resharding_as_published() {
        let sts = sts(5, 5, 5);
        let previous = DurableNamespaceStatus {
            reshard: Some(reshard_status(3, 5, 1, 2)),
            ..DurableNamespaceStatus::default()
        };
        let err = Error::InvalidSpec("spec.shards is 0".into());
        let s = compute(Observed {
            previous: Some(&previous),
            ..observe(Some(&sts), &[], Some(&err))
        });
        assert_eq!(s.reshard, previous.reshard);
        assert_eq!(cond(&s, "Degraded").reason, "InvalidSpec");
    }

    fn waiting_pod(name: &str, container: &str, image: &str, reason: &str, message: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: container.into(),
                    image: image.into(),
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some(reason.into()),
                            message: Some(message.into()),
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn a_stuck_shard_is_named_with_its_reason() {
        let pod = waiting_pod(
            "chat-2",
            "app",
            "acme/chat:1",
            "CrashLoopBackOff",
            "back-off 5m0s restarting",
        );
        let sts = sts(3, 2, 3);
        let s = compute(observe(Some(&sts), std::slice::from_ref(&pod), None));
        let d = cond(&s, "Degraded");
        assert_eq!(d.status, "True");
        assert_eq!(d.reason, "ShardFailing");
        assert_eq!(
            d.message,
            "shard 2 not ready: container app: CrashLoopBackOff: back-off 5m0s restarting"
        );
        assert_eq!(cond(&s, "Ready").reason, "ShardFailing");
    }

    #[test]
    fn an_app_image_that_cannot_be_pulled_is_named_with_what_to_do() {
        for reason in ["ErrImagePull", "ImagePullBackOff"] {
            let pod = waiting_pod("chat-1", "app", "acme/chat:nope", reason, "not found");
            let sts = sts(3, 2, 3);
            let s = compute(observe(Some(&sts), std::slice::from_ref(&pod), None));
            let d = cond(&s, "Degraded");
            assert_eq!(d.status, "True");
            assert_eq!(d.reason, "ShardFailing");
            assert_eq!(
                d.message,
                format!(
                    "shard 1 cannot pull image \"acme/chat:nope\" for container app ({reason}: \
                     not found): check spec.app.image, and that the cluster's nodes can pull it: \
                     push it to a registry they can pull from, or on a kind cluster run \
                     `kind load docker-image acme/chat:nope`"
                )
            );
            let r = cond(&s, "Ready");
            assert_eq!(
                (r.status.as_str(), r.message.as_str()),
                ("False", d.message.as_str())
            );
        }
    }

    #[test]
    fn a_sidecar_image_that_cannot_be_pulled_points_at_the_chart() {
        let pod = waiting_pod(
            "chat-0",
            "sidecar",
            "ghcr.io/stead-dev/stead:9.9.9",
            "ImagePullBackOff",
            "",
        );
        let sts = sts(1, 0, 1);
        let s = compute(observe(Some(&sts), std::slice::from_ref(&pod), None));
        let d = cond(&s, "Degraded");
        assert!(
            d.message.starts_with(
                "shard 0 cannot pull image \"ghcr.io/stead-dev/stead:9.9.9\" for container \
                 sidecar (ImagePullBackOff): this is the sidecar image the operator injects"
            ),
            "{}",
            d.message
        );
        assert!(
            d.message.contains("sidecar.image.repository"),
            "{}",
            d.message
        );
    }

    #[test]
    fn shards_stuck_on_the_same_image_share_one_line() {
        let pods: Vec<Pod> = [2, 0, 1]
            .iter()
            .map(|i| {
                let msg = "Back-off pulling image \"acme/chat:nope\"";
                waiting_pod(
                    &format!("chat-{i}"),
                    "app",
                    "acme/chat:nope",
                    "ImagePullBackOff",
                    msg,
                )
            })
            .chain([waiting_pod(
                "chat-3",
                "app",
                "acme/chat:1",
                "CrashLoopBackOff",
                "",
            )])
            .collect();
        let failures = shard_failures(&pods);
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(
            failures[0].starts_with(
                "shards 0, 1, 2 cannot pull image \"acme/chat:nope\" for container app \
                 (ImagePullBackOff: Back-off pulling image \"acme/chat:nope\"): check spec.app.image"
            ),
            "{}",
            failures[0]
        );
        assert_eq!(
            failures[1],
            "shard 3 not ready: container app: CrashLoopBackOff"
        );
    }

    #[test]
    fn a_malformed_image_name_says_to_fix_the_name() {
        let pod = waiting_pod("chat-0", "app", "Acme/Chat", "InvalidImageName", "bad");
        let sts = sts(1, 0, 1);
        let s = compute(observe(Some(&sts), std::slice::from_ref(&pod), None));
        assert_eq!(
            cond(&s, "Degraded").message,
            "shard 0 cannot pull image \"Acme/Chat\" for container app (InvalidImageName: bad): \
             fix the image name in spec.app.image"
        );
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
