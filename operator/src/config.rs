//! What the operator is told at start-up (flags and environment, read in `main`).

use std::net::SocketAddr;
use std::time::Duration;

/// Settings of one operator process.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorConfig {
    /// Image of the `stead` binary injected as the sidecar of every shard pod.
    pub sidecar_image: String,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_addr: SocketAddr,
    /// Lease used for leader election; `None` runs without election (one replica only).
    pub lease: Option<LeaseConfig>,
    /// Look for the ServiceMonitor CRD (Prometheus operator) and create one per namespace when it
    /// exists.
    pub service_monitors: bool,
    /// Reconcile every namespace at least this often, to repair drift.
    pub resync: Duration,
    /// Tests only: `host:port` used for every namespace's shard 0 (the resharding coordinator)
    /// instead of its DNS name `{name}-0.{name}-peers.{ns}.svc:7878`, so that tests can run real
    /// sidecars on loopback against an API server without pods.
    pub coordinator_addr: Option<String>,
}

/// Leader election settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseConfig {
    /// Name of the `coordination.k8s.io` Lease.
    pub name: String,
    /// Namespace of the Lease (the operator's own namespace).
    pub namespace: String,
    /// This replica's identity, usually its pod name.
    pub identity: String,
    /// How long a lease holds without renewal.
    pub duration: Duration,
}

/// Sidecar image used when none is configured: the `stead` image of this release.
pub const DEFAULT_SIDECAR_IMAGE: &str =
    concat!("ghcr.io/stead-dev/stead:", env!("CARGO_PKG_VERSION"));

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            sidecar_image: DEFAULT_SIDECAR_IMAGE.to_owned(),
            metrics_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            lease: None,
            service_monitors: true,
            resync: Duration::from_secs(300),
            coordinator_addr: None,
        }
    }
}
