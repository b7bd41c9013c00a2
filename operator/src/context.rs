//! What every reconcile shares: the client, the configuration, metrics and the event recorder.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::Mutex;

use crate::config::OperatorConfig;
use crate::coordinator::{Coordinator, HttpCoordinator};
use crate::metrics::Metrics;

/// Shared state of the controller.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub metrics: Metrics,
    pub recorder: Recorder,
    /// Shard 0's resharding coordinator.
    pub coordinator: Arc<dyn Coordinator>,
    /// Whether the ServiceMonitor CRD exists, and when that was last checked.
    service_monitor_crd: Mutex<Option<(Instant, bool)>>,
}

/// How long a ServiceMonitor CRD lookup is trusted before asking again.
const SERVICE_MONITOR_RECHECK: Duration = Duration::from_secs(300);

impl Context {
    pub fn new(client: Client, config: OperatorConfig) -> Arc<Context> {
        Self::with_coordinator(client, config, Arc::new(HttpCoordinator::default()))
    }

    /// A context that reaches the resharding coordinator through `coordinator`.
    pub fn with_coordinator(
        client: Client,
        config: OperatorConfig,
        coordinator: Arc<dyn Coordinator>,
    ) -> Arc<Context> {
        let reporter = Reporter {
            controller: crate::FIELD_MANAGER.to_owned(),
            instance: config.lease.as_ref().map(|l| l.identity.clone()),
        };
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            metrics: Metrics::default(),
            coordinator,
            service_monitor_crd: Mutex::new(None),
        })
    }

    /// Whether ServiceMonitors should be made: enabled in the config and the CRD installed.
    pub async fn service_monitors_available(&self) -> Result<bool, kube::Error> {
        if !self.config.service_monitors {
            return Ok(false);
        }
        let mut cached = self.service_monitor_crd.lock().await;
        if let Some((at, known)) = *cached
            && at.elapsed() < SERVICE_MONITOR_RECHECK
        {
            return Ok(known);
        }
        let known = crate::build::servicemonitor::crd_installed(&self.client).await?;
        *cached = Some((Instant::now(), known));
        Ok(known)
    }
}
