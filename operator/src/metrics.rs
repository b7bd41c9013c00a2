//! Operator metrics (Prometheus text at `/metrics`): reconciles, errors by reason, durations.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReshardLabels {
    /// `started`, `done`, `failed` or `resumed`.
    pub event: String,
}

/// The operator's metrics, registered in their own registry.
#[derive(Debug)]
pub struct Metrics {
    pub reconciles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub leader: Gauge,
    pub reshards: Family<ReshardLabels, Counter>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let leader = Gauge::default();
        let reshards = Family::<ReshardLabels, Counter>::default();
        let mut registry = Registry::with_prefix("stead_operator");
        registry.register(
            "reconciles",
            "Reconciles of DurableNamespaces started",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by reason",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        registry.register(
            "reshards",
            "Reshardings started, resumed, done and failed",
            reshards.clone(),
        );
        Self {
            reconciles,
            errors,
            duration,
            leader,
            reshards,
            registry,
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn failed(&self, error: &Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                reason: error.metric_label().to_owned(),
            })
            .inc();
    }

    /// Count a resharding event (`started`, `resumed`, `done`, `failed`).
    pub fn reshard(&self, event: &str) {
        self.reshards
            .get_or_create(&ReshardLabels {
                event: event.to_owned(),
            })
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_counted_by_reason() {
        let m = Metrics::default();
        m.failed(&Error::InvalidSpec("x".into()));
        m.failed(&Error::MissingMetadata("uid"));
        m.reshard("started");
        m.reconciled(Duration::from_millis(20));
        let text = m.encode();
        assert!(text.contains(r#"stead_operator_reconcile_errors_total{reason="invalid_spec"} 1"#));
        assert!(
            text.contains(r#"stead_operator_reconcile_errors_total{reason="missing_metadata"} 1"#)
        );
        assert!(text.contains(r#"stead_operator_reshards_total{event="started"} 1"#));
        assert!(text.contains("stead_operator_reconciles_total 1"));
        assert!(text.contains("stead_operator_reconcile_duration_seconds_count 1"));
    }
}
