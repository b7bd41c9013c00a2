//! One reconcile of one DurableNamespace: validate → build → apply → status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use stead_core::crd::{DurableNamespace, DurableNamespaceStatus, ReshardStatus};

use crate::apply::{apply, apply_dynamic, apply_status, get, list};
use crate::build::{self, names};
use crate::context::Context;
use crate::coordinator::{CoordinatorError, Target};
use crate::error::Error;
use crate::events;
use crate::reshard::{self, Outcome, Step};
use crate::status::{self, Observed};
use crate::validate::{ValidatedSpec, validate};

/// Look again this soon while shards are starting or failing.
pub const REQUEUE_NOT_READY: Duration = Duration::from_secs(15);
/// Look again this soon while a resharding runs or waits for its shards.
pub const REQUEUE_RESHARDING: Duration = Duration::from_secs(2);

/// Bring the children of `dns` to what its spec asks for, and publish its status.
pub async fn reconcile(dns: Arc<DurableNamespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&dns, &ctx).await;
    ctx.metrics.reconciled(started.elapsed());
    if let Err(e) = &result {
        ctx.metrics.failed(e);
    }
    result
}

/// What the controller does after a failed reconcile.
pub fn error_policy(dns: Arc<DurableNamespace>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(namespace = ?dns.namespace(), name = %dns.name_any(), %error, "reconcile failed");
    Action::requeue(REQUEUE_NOT_READY)
}

async fn reconcile_inner(dns: &DurableNamespace, ctx: &Context) -> Result<Action, Error> {
    // Children carry owner references: the garbage collector removes them (PVCs excepted, by
    // the retention policy). Nothing to do here.
    if dns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = dns.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let client = &ctx.client;
    let existing: Option<StatefulSet> =
        get(client, &namespace, &names::shards(&dns.name_any())).await?;

    let spec = match validate(dns) {
        Ok(spec) => spec,
        Err(e) if e.is_user_error() => return refuse(dns, ctx, existing.as_ref(), e).await,
        Err(e) => return Err(e),
    };
    let secret_name = names::token_secret(&spec.name);
    let existing_secret: Option<Secret> = get(client, &namespace, &secret_name).await?;
    let fresh = match build::secret::existing_token(existing_secret.as_ref()) {
        Some(_) => ByteString(Vec::new()),
        None => build::secret::generate_token()?,
    };
    let secret = apply(
        client,
        &namespace,
        &build::secret::peer_token_secret(&spec, existing_secret.as_ref(), fresh),
    )
    .await?;
    apply(client, &namespace, &build::rbac::service_account(&spec)).await?;
    apply(client, &namespace, &build::rbac::role(&spec)).await?;
    apply(client, &namespace, &build::rbac::role_binding(&spec)).await?;
    apply(client, &namespace, &build::service::peers_service(&spec)).await?;
    apply(client, &namespace, &build::service::client_service(&spec)).await?;
    apply(
        client,
        &namespace,
        &build::pdb::pod_disruption_budget(&spec),
    )
    .await?;
    let shape = reshard::Shape {
        wanted: spec.shards,
        ring: dns.status.as_ref().and_then(|s| s.ring.as_ref()),
        reshard: dns.status.as_ref().and_then(|s| s.reshard.as_ref()),
        ready: ready_replicas(existing.as_ref()),
        replicas: existing
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.replicas),
    };
    let replicas = reshard::desired_replicas(&shape);
    let mut desired = build::statefulset::statefulset(&spec, &ctx.config.sidecar_image, replicas);
    if build::statefulset::keep_volume_claims(&mut desired, existing.as_ref()) {
        tracing::info!(namespace = %namespace, name = %spec.name,
            "spec.storage changed; existing volumes keep their size and class (expand PVCs directly)");
    }
    let mut applied = apply(client, &namespace, &desired).await?;
    if ctx.service_monitors_available().await? {
        let resource = build::servicemonitor::api_resource();
        apply_dynamic(
            client,
            &namespace,
            &resource,
            &build::servicemonitor::service_monitor(&spec),
        )
        .await?;
    }

    // Shard 0 wants the token the shards read from the Secret.
    let token = build::secret::existing_token(Some(&secret))
        .map(|t| String::from_utf8_lossy(&t.0).into_owned())
        .unwrap_or_default();
    let target = Target {
        addr: ctx
            .config
            .coordinator_addr
            .clone()
            .unwrap_or_else(|| build::statefulset::peer_addr(&spec, 0)),
        token,
    };
    let outcome = drive_reshard(
        ctx,
        &target,
        reshard::step(&shape),
        dns.status.as_ref(),
        shape.ready,
    )
    .await;
    // A finished shrink: the shards beyond the new ring own nothing now; stop them.
    if let Some(ring) = &outcome.ring {
        let after = reshard::Shape {
            ring: Some(ring),
            reshard: None,
            ..shape
        };
        let fewer = reshard::desired_replicas(&after);
        if fewer != replicas {
            desired = build::statefulset::statefulset(&spec, &ctx.config.sidecar_image, fewer);
            build::statefulset::keep_volume_claims(&mut desired, Some(&applied));
            applied = apply(client, &namespace, &desired).await?;
        }
    }

    let pods: Vec<Pod> = list(client, &namespace, &selector(&spec)).await?;
    let status = status::compute(Observed {
        generation: dns.metadata.generation,
        previous: dns.status.as_ref(),
        statefulset: Some(&applied),
        pods: &pods,
        problem: None,
        resharding: Some(&outcome),
        now: Timestamp::now(),
    });
    let mut to_publish = Vec::new();
    if existing.is_none() {
        to_publish.push(events::created(spec.shards, spec.slots));
    }
    to_publish.extend(events::transitions(dns.status.as_ref(), &status));
    write_status(dns, ctx, &status).await?;
    events::publish(ctx, dns, &to_publish).await;

    Ok(if outcome.failure.is_some() {
        // Published as Degraded; retried (POSTed again) in the next reconcile.
        Action::requeue(REQUEUE_NOT_READY)
    } else if outcome.condition.0 {
        Action::requeue(REQUEUE_RESHARDING)
    } else if status::is_ready(Some(&status)) {
        Action::requeue(ctx.config.resync)
    } else {
        Action::requeue(REQUEUE_NOT_READY)
    })
}

/// Ask the coordinator what `step` needs, and fold its answers into an [`Outcome`]. Its
/// failures end up in the status (and a short requeue), never in a failed reconcile: the rest
/// of the namespace is reconciled all the same.
async fn drive_reshard(
    ctx: &Context,
    target: &Target,
    step: Step,
    previous: Option<&DurableNamespaceStatus>,
    ready: i32,
) -> Outcome {
    let reported = reshard::failure_reported(previous);
    let outcome = match step {
        Step::Settled { shards } => return Outcome::settled(shards),
        Step::WaitForShards { from, to, want } => return Outcome::waiting(from, to, want, ready),
        Step::Start { from, to } => {
            let r = ReshardStatus {
                from,
                to,
                moved: 0,
                total: 0,
            };
            match ctx.coordinator.start(target, to).await {
                Ok(p) => {
                    tracing::info!(from, to, "resharding started");
                    ctx.metrics.reshard("started");
                    reshard::follow(&r, Ok(&p), reported)
                }
                // Another resharding runs (one this operator started and forgot, or someone
                // else's): follow it as "waiting"; ours starts when it ends.
                Err(CoordinatorError::Busy) => match ctx.coordinator.progress(target).await {
                    Ok(p) => {
                        let mut o = reshard::follow(&r, Ok(&p), reported);
                        o.reshard = None;
                        o
                    }
                    Err(e) => Outcome::not_started(from, to, &e),
                },
                Err(e) => Outcome::not_started(from, to, &e),
            }
        }
        Step::Follow(r) => {
            let answer = ctx.coordinator.progress(target).await;
            reshard::follow(&r, answer.as_ref(), reported)
        }
    };
    if outcome.ring.is_some() {
        ctx.metrics.reshard("done");
    }
    if outcome.failure.is_some() && !reported {
        ctx.metrics.reshard("failed");
    }
    if !outcome.post_again {
        return outcome;
    }
    // Shard 0 forgot the resharding (it restarted) or the last attempt failed: start it again;
    // the coordinator resumes from what the shards own.
    let Some(r) = outcome.reshard.clone() else {
        return outcome;
    };
    ctx.metrics.reshard("resumed");
    tracing::info!(from = r.from, to = r.to, "resharding resumed");
    match ctx.coordinator.start(target, r.to).await {
        Ok(p) => reshard::follow(&r, Ok(&p), false),
        Err(e) => reshard::follow(&r, Err(&e), false),
    }
}

/// Ready pods of the StatefulSet, as its status says.
fn ready_replicas(sts: Option<&StatefulSet>) -> i32 {
    sts.and_then(|s| s.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

/// The spec cannot be applied as it is: publish why, change nothing else.
async fn refuse(
    dns: &DurableNamespace,
    ctx: &Context,
    existing: Option<&StatefulSet>,
    problem: Error,
) -> Result<Action, Error> {
    tracing::info!(namespace = ?dns.namespace(), name = %dns.name_any(), %problem, "spec refused");
    ctx.metrics.failed(&problem);
    let status = status::compute(Observed {
        generation: dns.metadata.generation,
        previous: dns.status.as_ref(),
        statefulset: existing,
        pods: &[],
        problem: Some(&problem),
        resharding: None,
        now: Timestamp::now(),
    });
    let to_publish = events::transitions(dns.status.as_ref(), &status);
    write_status(dns, ctx, &status).await?;
    events::publish(ctx, dns, &to_publish).await;
    // A spec change triggers the next reconcile; the resync catches the StatefulSet's progress.
    Ok(Action::requeue(ctx.config.resync))
}

/// Write the status only when it changed, so a steady namespace causes no writes.
async fn write_status(
    dns: &DurableNamespace,
    ctx: &Context,
    status: &DurableNamespaceStatus,
) -> Result<(), Error> {
    if dns.status.as_ref() == Some(status) {
        return Ok(());
    }
    apply_status(&ctx.client, dns, status).await
}

fn selector(spec: &ValidatedSpec) -> String {
    build::selector_labels(spec)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
