use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The object's class, or `-` for stateless front-door requests.
    pub class: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `commit` or `rollback`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardLabels {
    /// `not_owner` (the router's hop), `stale_ring` (a shard that no longer owns the slot passed
    /// it on), `tombstone` (after a handoff).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success` or `failure`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabels {
    /// `ingress`, `admin` or `peer`.
    pub port: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs to ~52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// The sidecar's metrics, cheap to clone (every field is shared).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Arc<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: HistogramFamily<ClassLabels>,
    pub turn_seconds: HistogramFamily<OutcomeLabels>,
    pub commit_seconds: Histogram,
    pub volume_sync_seconds: Histogram,
    pub volume_synced_commits: Counter,
    pub objects_open: Gauge,
    pub objects_open_max: Gauge,
    pub request_bodies_buffered: Gauge,
    pub websocket_messages_buffered: Gauge,
    pub objects_opened: Counter,
    pub objects_hibernated: Counter,
    pub objects_evicted: Counter,
    pub turns_timed_out: Counter,
    pub forwards: Family<ForwardLabels, Counter>,
    pub peer_errors: Counter,
    pub slots_owned: Gauge,
    pub alarms_pending: Gauge,
    pub alarms_fired: Family<ResultLabels, Counter>,
    pub alarms_retried: Counter,
    pub alarms_dropped: Counter,
    pub alarm_lag_seconds: Histogram,
    pub websockets_open: Gauge,
    pub websocket_messages_in: Counter,
    pub websocket_messages_out: Counter,
    pub websockets_refused: Counter,
    pub connections_open: Family<PortLabels, Gauge>,
    pub connections_max: Family<PortLabels, Gauge>,
    pub connections_timed_out: Family<PortLabels, Counter>,
    pub connections_deferred: Family<PortLabels, Counter>,
    pub accept_errors: Family<PortLabels, Counter>,
    pub websockets_slow_closed: Counter,
    pub ring_epoch: Gauge,
    pub handoffs: Family<ResultLabels, Counter>,
    pub handoff_pause_seconds: Histogram,
    pub handoff_bytes: Counter,
    pub slots_moving: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds: HistogramFamily<ClassLabels> =
            Family::new_with_constructor(latency_histogram);
        let turn_seconds: HistogramFamily<OutcomeLabels> =
            Family::new_with_constructor(latency_histogram);
        let commit_seconds = latency_histogram();
        let volume_sync_seconds = latency_histogram();
        let volume_synced_commits = Counter::default();
        let objects_open = Gauge::default();
        let objects_open_max = Gauge::default();
        let request_bodies_buffered = Gauge::default();
        let websocket_messages_buffered = Gauge::default();
        let objects_opened = Counter::default();
        let objects_hibernated = Counter::default();
        let objects_evicted = Counter::default();
        let turns_timed_out = Counter::default();
        let forwards = Family::<ForwardLabels, Counter>::default();
        for reason in ["not_owner", "stale_ring", "tombstone"] {
            let _ = forwards.get_or_create(&ForwardLabels { reason });
        }
        let peer_errors = Counter::default();
        let slots_owned = Gauge::default();
        let alarms_pending = Gauge::default();
        let alarms_fired = Family::<ResultLabels, Counter>::default();
        let alarms_retried = Counter::default();
        let alarms_dropped = Counter::default();
        let alarm_lag_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let websockets_open = Gauge::default();
        let websocket_messages_in = Counter::default();
        let websocket_messages_out = Counter::default();
        let websockets_refused = Counter::default();
        let connections_open = Family::<PortLabels, Gauge>::default();
        let connections_max = Family::<PortLabels, Gauge>::default();
        let connections_timed_out = Family::<PortLabels, Counter>::default();
        let connections_deferred = Family::<PortLabels, Counter>::default();
        let accept_errors = Family::<PortLabels, Counter>::default();
        let websockets_slow_closed = Counter::default();
        let ring_epoch = Gauge::default();
        let handoffs = Family::<ResultLabels, Counter>::default();
        let handoff_pause_seconds = latency_histogram();
        let handoff_bytes = Counter::default();
        let slots_moving = Gauge::default();

        let mut r = Registry::with_prefix("stead");
        r.register(
            "requests",
            "Client requests answered, by class and status code",
            requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Client request latency at the ingress, by class",
            request_seconds.clone(),
        );
        r.register(
            "turn_duration_seconds",
            "Duration of object turns (event delivered to outcome durable), by outcome",
            turn_seconds.clone(),
        );
        r.register(
            "commit_duration_seconds",
            "Duration of SQLite commits of turns that wrote",
            commit_seconds.clone(),
        );
        r.register(
            "volume_sync_duration_seconds",
            "Duration of syncs of the data volume (--sync volume), each covering every commit written before it",
            volume_sync_seconds.clone(),
        );
        r.register(
            "volume_synced_commits",
            "Commits made durable by syncs of the data volume (--sync volume)",
            volume_synced_commits.clone(),
        );
        r.register(
            "objects_open",
            "Object databases currently open",
            objects_open.clone(),
        );
        r.register(
            "objects_open_max",
            "Most object databases kept open at once: --max-open-objects, or less when the descriptor limit cannot hold that many",
            objects_open_max.clone(),
        );
        r.register(
            "request_bodies_buffered_bytes",
            "Bytes of request bodies held in memory, counted in KiB per body (at most --max-buffered-request-bytes)",
            request_bodies_buffered.clone(),
        );
        r.register(
            "websocket_messages_buffered_bytes",
            "Bytes of client WebSocket messages waiting for their turns, counted in KiB per message (at most --max-buffered-socket-bytes)",
            websocket_messages_buffered.clone(),
        );
        r.register(
            "objects_opened",
            "Object databases opened or created",
            objects_opened.clone(),
        );
        r.register(
            "objects_hibernated",
            "Object databases closed after their idle timeout",
            objects_hibernated.clone(),
        );
        r.register(
            "objects_evicted",
            "Object databases closed by the open-database cap (least recently used first)",
            objects_evicted.clone(),
        );
        r.register(
            "turns_timed_out",
            "Turns rolled back because the app did not answer within the turn timeout",
            turns_timed_out.clone(),
        );
        r.register(
            "forwards",
            "Requests forwarded to the shard that owns their slot, by reason",
            forwards.clone(),
        );
        r.register(
            "peer_errors",
            "Forwards that failed because the owning shard was unreachable or too slow",
            peer_errors.clone(),
        );
        r.register(
            "slots_owned",
            "Slots this shard owns (recorded in shard.sqlite)",
            slots_owned.clone(),
        );
        r.register(
            "alarms_pending",
            "Alarms scheduled on this shard",
            alarms_pending.clone(),
        );
        r.register(
            "alarms_fired",
            "Alarm events delivered, by result",
            alarms_fired.clone(),
        );
        r.register(
            "alarms_retried",
            "Alarms scheduled again after a failed attempt",
            alarms_retried.clone(),
        );
        r.register(
            "alarms_dropped",
            "Alarms deleted after their last retry failed",
            alarms_dropped.clone(),
        );
        r.register(
            "alarm_lag_seconds",
            "Delay from an alarm's time to the delivery of its first attempt",
            alarm_lag_seconds.clone(),
        );
        r.register(
            "websockets_open",
            "WebSockets held by this sidecar",
            websockets_open.clone(),
        );
        r.register(
            "websocket_messages_in",
            "WebSocket messages received from clients",
            websocket_messages_in.clone(),
        );
        r.register(
            "websocket_messages_out",
            "WebSocket messages sent to clients",
            websocket_messages_out.clone(),
        );
        r.register(
            "websockets_refused",
            "WebSocket handshakes refused because the object holds too many sockets",
            websockets_refused.clone(),
        );
        r.register(
            "connections_open",
            "Client connections open, by port",
            connections_open.clone(),
        );
        r.register(
            "connections_max",
            "The bound on open connections of each port (computed from RLIMIT_NOFILE)",
            connections_max.clone(),
        );
        r.register(
            "connections_timed_out",
            "Connections closed because a request head or the next request did not arrive in time, by port",
            connections_timed_out.clone(),
        );
        r.register(
            "connections_deferred",
            "Times a port stopped accepting because it held its bound of open connections",
            connections_deferred.clone(),
        );
        r.register(
            "accept_errors",
            "Failed accepts (e.g. EMFILE), by port; the port retries after a pause",
            accept_errors.clone(),
        );
        r.register(
            "websockets_slow_closed",
            "WebSockets closed with 1008 because the client did not read what it was sent",
            websockets_slow_closed.clone(),
        );
        r.register(
            "ring_epoch",
            "Epoch of the ring this shard routes by",
            ring_epoch.clone(),
        );
        r.register(
            "handoffs",
            "Slot hand-offs this shard ran as the source, by result",
            handoffs.clone(),
        );
        r.register(
            "handoff_pause_seconds",
            "How long a slot handed away was fenced (requests to it waited or got 503)",
            handoff_pause_seconds.clone(),
        );
        r.register(
            "handoff_bytes",
            "Bytes of object databases sent to other shards by slot hand-offs",
            handoff_bytes.clone(),
        );
        r.register(
            "slots_moving",
            "Slots of this shard being handed away now (migration progress)",
            slots_moving.clone(),
        );
        Self {
            registry: Arc::new(r),
            requests,
            request_seconds,
            turn_seconds,
            commit_seconds,
            volume_sync_seconds,
            volume_synced_commits,
            objects_open,
            objects_open_max,
            request_bodies_buffered,
            websocket_messages_buffered,
            objects_opened,
            objects_hibernated,
            objects_evicted,
            turns_timed_out,
            forwards,
            peer_errors,
            slots_owned,
            alarms_pending,
            alarms_fired,
            alarms_retried,
            alarms_dropped,
            alarm_lag_seconds,
            websockets_open,
            websocket_messages_in,
            websocket_messages_out,
            websockets_refused,
            connections_open,
            connections_max,
            connections_timed_out,
            connections_deferred,
            accept_errors,
            websockets_slow_closed,
            ring_epoch,
            handoffs,
            handoff_pause_seconds,
            handoff_bytes,
            slots_moving,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
