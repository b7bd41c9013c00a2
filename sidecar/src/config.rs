//! The sidecar's configuration, read once from flags and the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use stead_core::ClassName;

use crate::api::Limits;
use crate::storage::{Durability, SyncMode};

fn duration(s: &str) -> Result<Duration, String> {
    stead_core::parse_duration(s).map_err(|e| e.to_string())
}

fn class(s: &str) -> Result<ClassName, String> {
    ClassName::new(s).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, clap::Args)]
pub struct SidecarConfig {
    /// Address of the client-facing ingress.
    #[arg(long, env = "STEAD_INGRESS_ADDR", default_value = "0.0.0.0:8787")]
    pub ingress: SocketAddr,
    /// Address of the app API (keep it on loopback: only the app may call it).
    #[arg(long, env = "STEAD_API_ADDR", default_value = "127.0.0.1:9787")]
    pub api: SocketAddr,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "STEAD_ADMIN_ADDR", default_value = "0.0.0.0:9788")]
    pub admin: SocketAddr,
    /// Address of the app container: `host:port`, or `unix:/path` for a Unix domain socket.
    #[arg(long, env = "STEAD_APP_ADDR", default_value = stead_core::protocol::DEFAULT_APP_ADDR)]
    pub app: String,
    /// Folder of the shard's data (object databases under slots/).
    #[arg(long, env = "STEAD_DATA_DIR", default_value = "/data")]
    pub data_dir: PathBuf,
    /// Classes this namespace serves, comma separated.
    #[arg(long, env = "STEAD_CLASSES", value_delimiter = ',', required = true, value_parser = class)]
    pub classes: Vec<ClassName>,
    /// Slots of the namespace (immutable once data exists).
    #[arg(long, env = "STEAD_SLOTS", default_value_t = stead_core::id::DEFAULT_SLOTS)]
    pub slots: u32,
    /// `strict` (fsync every commit) or `relaxed`.
    #[arg(long, env = "STEAD_DURABILITY", value_enum, default_value = "strict")]
    pub durability: Durability,
    /// How a strict commit reaches the disk: `file` (fsync each object's WAL) or `volume` (one
    /// syncfs of the data volume for every commit written meanwhile; for a volume that holds
    /// only this shard's data).
    #[arg(long, env = "STEAD_SYNC", value_enum, default_value = "file")]
    pub sync: SyncMode,
    /// Close an object's database after this long without events.
    #[arg(long, env = "STEAD_IDLE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub idle_timeout: Duration,
    /// Roll a turn back and answer 504 when the app takes longer than this.
    #[arg(long, env = "STEAD_TURN_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub turn_timeout: Duration,
    /// Delay before the first retry of a failed alarm; each next retry waits twice as long.
    #[arg(long, env = "STEAD_ALARM_FIRST_RETRY", default_value = "2s", value_parser = duration)]
    pub alarm_first_retry: Duration,
    /// Most object databases open at once (each holds 2 file descriptors).
    #[arg(long, env = "STEAD_MAX_OPEN_OBJECTS", default_value_t = 4096)]
    pub max_open_objects: usize,
    /// Threads that run SQLite; each serves many objects.
    #[arg(long, env = "STEAD_STORAGE_THREADS", default_value_t = 8)]
    pub storage_threads: usize,
    /// Most turns running at once across all objects.
    #[arg(long, env = "STEAD_MAX_CONCURRENT_TURNS", default_value_t = 256)]
    pub max_concurrent_turns: usize,
    /// Group commit: at most this many consecutive turns of one object share one commit (1
    /// commits every turn alone).
    #[arg(long, env = "STEAD_GROUP_COMMIT_MAX_TURNS", default_value_t = 64)]
    pub group_commit_max_turns: usize,
    /// Group commit: a group is committed at the latest this long after its first turn ended.
    #[arg(long, env = "STEAD_GROUP_COMMIT_MAX_AGE", default_value = "10ms", value_parser = duration)]
    pub group_commit_max_age: Duration,
    /// Most events queued for one object; more get 503.
    #[arg(long, env = "STEAD_MAILBOX_CAPACITY", default_value_t = 1024)]
    pub mailbox_capacity: usize,
    /// Largest client request body, in bytes.
    #[arg(long, env = "STEAD_MAX_REQUEST_BYTES", default_value_t = 32 << 20)]
    pub max_request_bytes: usize,
    /// Most bytes of request bodies held in memory at once (each body is read whole before its
    /// request is handled); a body that does not fit gets 503 with Retry-After.
    #[arg(long, env = "STEAD_MAX_BUFFERED_REQUEST_BYTES", default_value_t = 256 << 20)]
    pub max_buffered_request_bytes: usize,
    /// Most bytes of WebSocket messages from clients waiting for their turns, across all
    /// sockets; past it the sidecar reads from no socket until turns catch up.
    #[arg(long, env = "STEAD_MAX_BUFFERED_SOCKET_BYTES", default_value_t = 256 << 20)]
    pub max_buffered_socket_bytes: usize,
    /// Largest app answer, in bytes.
    #[arg(long, env = "STEAD_MAX_ANSWER_BYTES", default_value_t = 32 << 20)]
    pub max_answer_bytes: usize,
    /// This shard's ordinal (its index in --peers). Without it, the ordinal is the number at
    /// the end of the pod name (`chat-2` → 2), as in a StatefulSet; else 0.
    #[arg(long, env = "STEAD_SHARD_ORDINAL")]
    pub shard_ordinal: Option<u32>,
    /// The pod's name (from the downward API in Kubernetes).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// The pod's Kubernetes namespace (downward API); with --durable-namespace and a peer
    /// template, the ring comes from that DurableNamespace's status (`membership::kube`).
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// Name of the DurableNamespace this shard belongs to (set by the operator).
    #[arg(long, env = "STEAD_NAMESPACE")]
    pub durable_namespace: Option<String>,
    /// Peer-port addresses (host:port) of every shard, in ordinal order. Empty: a single shard
    /// that owns every slot.
    #[arg(long, env = "STEAD_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Shards of the ring this sidecar starts with (default: the number of --peers, or 1). A
    /// newer ring recorded in the shard's data, or pushed by a resharding, replaces it. A shard
    /// whose ordinal is past the ring owns nothing until slots are handed to it.
    #[arg(long, env = "STEAD_RING_SHARDS")]
    pub ring_shards: Option<u32>,
    /// Epoch of that ring.
    #[arg(long, env = "STEAD_RING_EPOCH", default_value_t = 1)]
    pub ring_epoch: u64,
    /// The peer-port address of any shard, `{i}` standing for its ordinal (e.g.
    /// `chat-{i}.chat-peers.apps.svc:7878`); used for ordinals --peers does not list.
    #[arg(long, env = "STEAD_PEER_TEMPLATE")]
    pub peer_template: Option<String>,
    /// Slot hand-offs a resharding runs at once (on the shard that coordinates it).
    #[arg(long, env = "STEAD_RESHARD_PARALLELISM", default_value_t = 4)]
    pub reshard_parallelism: usize,
    /// Where this sidecar listens for requests forwarded by other shards (opened only when
    /// --peers lists two or more shards).
    #[arg(long, env = "STEAD_PEER_ADDR", default_value = "0.0.0.0:7878")]
    pub peer_addr: SocketAddr,
    /// The namespace's shared secret for the peer port (required with two or more peers).
    #[arg(long, env = "STEAD_PEER_TOKEN", hide_env_values = true)]
    pub peer_token: Option<String>,
    #[command(flatten)]
    pub limits: Limits,
    #[command(flatten)]
    pub connections: crate::serve::ConnectionLimits,
    /// On SIGTERM or Ctrl-C, keep serving this long with /readyz answering 503, so that the
    /// Services stop sending traffic here before the ports close; then WebSockets close (1012)
    /// and in-flight requests drain. A second signal ends the wait. 0 (the default) stops at
    /// once; the operator sets 5s on shard pods.
    #[arg(long, env = "STEAD_SHUTDOWN_DELAY", default_value = "0s", value_parser = duration)]
    pub shutdown_delay: Duration,
    /// Log format: `text` or `json`.
    #[arg(long, env = "STEAD_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Test hook (never in production): abort the process at the first commit.
    #[arg(
        long,
        env = "STEAD_TEST_ABORT_AT_COMMIT",
        default_value_t = false,
        hide = true
    )]
    pub test_abort_at_commit: bool,
    /// Test hook (never in production): wait this long between the steps of every slot
    /// hand-off, so a test can kill a process in the middle of one.
    #[arg(long, env = "STEAD_TEST_HANDOFF_STEP_DELAY", hide = true, value_parser = duration)]
    pub test_handoff_step_delay: Option<Duration>,
}

impl SidecarConfig {
    /// This shard's ordinal: `--shard-ordinal`, else the StatefulSet ordinal of the pod name.
    pub fn ordinal(&self) -> u32 {
        self.shard_ordinal
            .or_else(|| self.pod_name.as_deref().and_then(ordinal_of_pod))
            .unwrap_or(0)
    }

    /// The ring this sidecar starts with: `--ring-shards` (or one shard per peer) at
    /// `--ring-epoch`.
    pub fn ring(&self) -> stead_core::Ring {
        let shards = self
            .ring_shards
            .unwrap_or(self.peers.len().max(1) as u32)
            .max(1);
        stead_core::Ring::new(self.ring_epoch.max(1), self.slots, shards)
    }

    /// Whether this shard talks to peers: the peer port opens when a token is set.
    pub fn peer_token(&self) -> Option<&str> {
        self.peer_token.as_deref().filter(|t| !t.is_empty())
    }
}

/// The ordinal a StatefulSet gives its pod: the number after the last `-`.
fn ordinal_of_pod(name: &str) -> Option<u32> {
    name.rsplit_once('-').and_then(|(_, n)| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ordinal_comes_from_the_pod_name_unless_given() {
        assert_eq!(ordinal_of_pod("chat-2"), Some(2));
        assert_eq!(ordinal_of_pod("my-app-10"), Some(10));
        assert_eq!(ordinal_of_pod("nodash"), None);
        assert_eq!(ordinal_of_pod("chat-x"), None);
    }
}
