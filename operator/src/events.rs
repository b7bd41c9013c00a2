//! Kubernetes Events on the transitions a user wants to hear about: shards created, a change
//! refused, ready, degraded. Which events follow from a status change is a pure function.

use kube::Resource;
use kube::runtime::events::{Event, EventType};
use stead_core::crd::{DurableNamespace, DurableNamespaceStatus, condition};

use crate::context::Context;

/// Events for the move from `previous` to `next` status.
pub fn transitions(
    previous: Option<&DurableNamespaceStatus>,
    next: &DurableNamespaceStatus,
) -> Vec<Event> {
    let was = |t: &str| {
        previous
            .and_then(|p| p.condition(t))
            .map(|c| (c.status.as_str(), c.reason.as_str()))
    };
    let mut events = Vec::new();
    if let Some(d) = next.condition(condition::DEGRADED)
        && d.status == "True"
        && was(condition::DEGRADED) != Some(("True", d.reason.as_str()))
    {
        events.push(Event {
            type_: EventType::Warning,
            reason: d.reason.clone(),
            note: Some(d.message.clone()),
            action: "Reconcile".into(),
            secondary: None,
        });
    }
    if let Some(r) = next.condition(condition::RESHARDING)
        && was(condition::RESHARDING).map(|(s, _)| s) != Some(r.status.as_str())
    {
        let (reason, type_) = match r.status.as_str() {
            "True" => ("Resharding", EventType::Normal),
            _ => ("Resharded", EventType::Normal),
        };
        // The first Resharding=False of a new namespace is no news.
        if r.status == "True" || was(condition::RESHARDING).is_some() {
            events.push(Event {
                type_,
                reason: reason.into(),
                note: Some(r.message.clone()),
                action: "Reshard".into(),
                secondary: None,
            });
        }
    }
    if let Some(r) = next.condition(condition::READY)
        && r.status == "True"
        && was(condition::READY).map(|(s, _)| s) != Some("True")
    {
        events.push(Event {
            type_: EventType::Normal,
            reason: "Ready".into(),
            note: Some(r.message.clone()),
            action: "Reconcile".into(),
            secondary: None,
        });
    }
    events
}

/// The event for a StatefulSet the operator has just created.
pub fn created(shards: i32, slots: u32) -> Event {
    Event {
        type_: EventType::Normal,
        reason: "Created".into(),
        note: Some(format!("created {shards} shards over {slots} slots")),
        action: "Create".into(),
        secondary: None,
    }
}

/// Publish events; a failure to record one is logged, not fatal to the reconcile.
pub async fn publish(ctx: &Context, dns: &DurableNamespace, events: &[Event]) {
    let reference = dns.object_ref(&());
    for event in events {
        if let Err(e) = ctx.recorder.publish(event, &reference).await {
            tracing::warn!(error = %e, reason = %event.reason, "could not record event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::status::{Observed, compute};
    use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetStatus};
    use k8s_openapi::jiff::Timestamp;

    fn sts(ready: i32) -> StatefulSet {
        StatefulSet {
            spec: Some(StatefulSetSpec {
                replicas: Some(2),
                ..StatefulSetSpec::default()
            }),
            status: Some(StatefulSetStatus {
                replicas: 2,
                ready_replicas: Some(ready),
                updated_replicas: Some(2),
                ..StatefulSetStatus::default()
            }),
            ..StatefulSet::default()
        }
    }

    fn status(
        sts: &StatefulSet,
        problem: Option<&Error>,
        previous: Option<&DurableNamespaceStatus>,
    ) -> DurableNamespaceStatus {
        compute(Observed {
            generation: Some(1),
            previous,
            statefulset: Some(sts),
            pods: &[],
            problem,
            resharding: None,
            now: Timestamp::UNIX_EPOCH,
        })
    }

    fn reasons(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.reason.as_str()).collect()
    }

    #[test]
    fn becoming_ready_is_announced_once() {
        let starting = status(&sts(0), None, None);
        assert!(transitions(None, &starting).is_empty());
        let ready = status(&sts(2), None, Some(&starting));
        assert_eq!(reasons(&transitions(Some(&starting), &ready)), ["Ready"]);
        assert!(transitions(Some(&ready), &ready).is_empty());
    }

    #[test]
    fn a_refused_spec_is_a_warning_once() {
        let ready = status(&sts(2), None, None);
        let err = Error::InvalidSpec("spec.shards is 0".into());
        let refused = status(&sts(2), Some(&err), Some(&ready));
        let events = transitions(Some(&ready), &refused);
        assert_eq!(reasons(&events), ["InvalidSpec"]);
        assert_eq!(events[0].type_, EventType::Warning);
        assert!(transitions(Some(&refused), &refused).is_empty());
    }
}
