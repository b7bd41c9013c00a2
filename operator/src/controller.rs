//! Runs [`crate::reconcile::reconcile`] for every DurableNamespace in the cluster, again whenever
//! it or one of its StatefulSets changes.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Config, Controller};
use kube::runtime::watcher;
use stead_core::crd::DurableNamespace;

use crate::build::MANAGED_BY_LABEL;
use crate::config::OperatorConfig;
use crate::context::Context;
use crate::error::Error;
use crate::reconcile::{error_policy, reconcile};

/// Quiet time before a change triggers a reconcile (see [`run`]).
pub const TRIGGER_DEBOUNCE: std::time::Duration = std::time::Duration::from_secs(1);

/// Build a [`Context`] and run the controller until `shutdown` completes.
pub async fn run_controller(
    client: Client,
    config: OperatorConfig,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    run(Context::new(client, config), shutdown).await
}

/// Run the controller with an existing context (whose metrics the caller serves) until
/// `shutdown` completes; reconciles in flight finish first.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    let client = ctx.client.clone();
    let namespaces: Api<DurableNamespace> = Api::all(client.clone());
    // Fail early, and say why, when the CRD is not installed.
    namespaces
        .list(&ListParams::default().limit(1))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot list durablenamespaces.stead.dev: is the CRD installed (crds/durablenamespaces.stead.dev.yaml)?");
            Error::Kube(e)
        })?;
    let statefulsets: Api<StatefulSet> = Api::all(client);
    let owned =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={}", crate::FIELD_MANAGER));
    tracing::info!("controller started");
    // The operator's own status writes trigger a reconcile too. While a resharding runs the
    // status changes with every progress report, so without a pause between them the operator
    // would poll shard 0 and the API server in a tight loop: debounce the triggers.
    Controller::new(namespaces, watcher::Config::default().any_semantic())
        .with_config(Config::default().debounce(TRIGGER_DEBOUNCE))
        .owns(statefulsets, owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => {
                    tracing::debug!(namespace = ?obj.namespace, name = %obj.name, "reconciled")
                }
                Err(e) => tracing::debug!(error = %e, "reconcile did not finish"),
            }
        })
        .await;
    tracing::info!("controller stopped");
    Ok(())
}
