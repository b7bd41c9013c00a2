//! The `DurableNamespace` custom resource (`stead.dev/v1alpha1`): one application, its shards and
//! how they are run. The operator reconciles it; the sidecar reads its status to learn the ring.
//!
//! The schema carries the checks the API server can make on its own (shards ≥ 1, slots immutable,
//! class names, duration syntax) so that a bad manifest is refused at `kubectl apply`, not later.

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::id::DEFAULT_SLOTS;

/// API group of every Stead resource.
pub const GROUP: &str = "stead.dev";
/// Version of the `DurableNamespace` API.
pub const VERSION: &str = "v1alpha1";

/// Pattern a class name must match; the same rule as [`crate::ClassName`].
pub const CLASS_NAME_PATTERN: &str = "^[A-Za-z][A-Za-z0-9_]{0,63}$";
/// Pattern a duration must match; the same syntax as [`crate::parse_duration`].
pub const DURATION_PATTERN: &str = "^[0-9]+(ms|s|m|h)$";

/// Condition types published in `status.conditions`.
pub mod condition {
    /// Every shard is ready and the ring is published.
    pub const READY: &str = "Ready";
    /// The operator is creating or rolling the shards.
    pub const PROGRESSING: &str = "Progressing";
    /// Something needs the user's attention; the reason says what.
    pub const DEGRADED: &str = "Degraded";
    /// Slots are being moved to a new ring (a change of `spec.shards`); the message says how far.
    pub const RESHARDING: &str = "Resharding";
}

/// A Stead application: one app image serving one or more classes of durable objects, run as
/// `shards` pods, each a shard owning part of the namespace's slots.
// `printcolumn(...)` is repeated once per column, which clippy takes for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "stead.dev",
    version = "v1alpha1",
    kind = "DurableNamespace",
    namespaced,
    status = "DurableNamespaceStatus",
    shortname = "dn",
    category = "stead",
    derive = "PartialEq",
    doc = "A Stead application: durable objects of the listed classes, served by an app image on `shards` StatefulSet pods.",
    printcolumn(name = "Shards", type_ = "integer", json_path = ".spec.shards"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyShards"),
    printcolumn(name = "Ring", type_ = "integer", json_path = ".status.ring.shards"),
    printcolumn(name = "Epoch", type_ = "integer", json_path = ".status.ring.epoch"),
    printcolumn(name = "Moving", type_ = "integer", json_path = ".status.ring.moving"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DurableNamespaceSpec {
    /// Number of shards (pods). Changing it reshards live: slots and their objects move to the
    /// new ring, then the pods no longer needed stop.
    #[schemars(range(min = 1))]
    pub shards: i32,
    /// Number of slots objects are hashed into. Fixed at creation.
    #[serde(default = "default_slots")]
    #[schemars(range(min = 1, max = 1048576))]
    #[x_kube(
        validation = Rule::new("self == oldSelf").message("slots is immutable: it fixes where every object lives; create a new DurableNamespace to change it")
    )]
    pub slots: i32,
    /// Classes of durable objects the app serves, e.g. `[ChatRoom, Lobby]`.
    #[schemars(
        length(min = 1),
        inner(regex(pattern = "^[A-Za-z][A-Za-z0-9_]{0,63}$"))
    )]
    pub classes: Vec<String>,
    /// The user's app container.
    pub app: AppSpec,
    /// Each shard's PersistentVolumeClaim.
    #[serde(default)]
    pub storage: StorageSpec,
    /// `strict` syncs every commit to disk; `relaxed` may lose the last commits on power loss.
    #[serde(default)]
    pub durability: Durability,
    /// Close (hibernate) an object after this long without events, e.g. `10s`.
    #[serde(default = "default_idle_timeout")]
    #[schemars(regex(pattern = "^[0-9]+(ms|s|m|h)$"))]
    pub idle_timeout: String,
    /// Roll a turn back and answer 504 after this long, e.g. `30s`.
    #[serde(default = "default_turn_timeout")]
    #[schemars(regex(pattern = "^[0-9]+(ms|s|m|h)$"))]
    pub turn_timeout: String,
    /// The client Service in front of every shard's ingress.
    #[serde(default)]
    pub service: ServiceSpec,
}

/// The user's app container: it answers events and calls the sidecar's app API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppSpec {
    /// Container image of the app.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Port the app listens on, on 127.0.0.1 inside the pod.
    #[serde(default = "default_app_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Extra environment for the app container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Requests and limits of the app container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// Each shard's volume.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested size of each shard's volume, e.g. `10Gi`.
    #[serde(default = "default_storage_size")]
    pub size: Quantity,
    /// StorageClass of the volumes; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// What happens to the volume of a shard removed by lowering `shards` (after its slots moved
    /// away): `Retain` (the default) keeps it, `Delete` deletes it.
    #[serde(default)]
    pub when_scaled_down: VolumePolicy,
    /// How a `strict` commit reaches the disk: `file` (the default) fsyncs each object's
    /// database; `volume` syncs the shard's whole volume once for every commit written
    /// meanwhile, which is much faster with many objects but writes back whatever else shares
    /// the filesystem: use it where each shard has a volume of its own.
    #[serde(default)]
    pub sync: CommitSync,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
            when_scaled_down: VolumePolicy::default(),
            sync: CommitSync::default(),
        }
    }
}

/// How a strict commit reaches the disk (the sidecar's `--sync`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CommitSync {
    /// fsync each object's database at its commit.
    #[default]
    File,
    /// One sync of the volume for every commit written meanwhile.
    Volume,
}

impl CommitSync {
    /// The word used in manifests and in the sidecar's `--sync` flag.
    pub fn as_str(self) -> &'static str {
        match self {
            CommitSync::File => "file",
            CommitSync::Volume => "volume",
        }
    }
}

/// What happens to a shard's PersistentVolumeClaim when the shard goes away.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum VolumePolicy {
    /// Keep the claim (and its volume); delete it by hand when no longer wanted.
    #[default]
    Retain,
    /// Delete the claim with the shard.
    Delete,
}

impl VolumePolicy {
    /// The word of the StatefulSet's `persistentVolumeClaimRetentionPolicy`.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumePolicy::Retain => "Retain",
            VolumePolicy::Delete => "Delete",
        }
    }
}

/// How hard a commit is pushed to disk.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `synchronous=FULL`: a commit survives power loss.
    #[default]
    Strict,
    /// `synchronous=NORMAL`: survives a process crash, may lose the last commits on power loss.
    Relaxed,
}

impl Durability {
    /// The word used in manifests and in the sidecar's `--durability` flag.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Strict => "strict",
            Durability::Relaxed => "relaxed",
        }
    }
}

/// The client Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Port the Service exposes; it forwards to each shard's ingress.
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: default_service_port(),
        }
    }
}

/// Kubernetes Service types the client Service may have.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// What the operator observed and published.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DurableNamespaceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, each with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Shards the namespace runs (the StatefulSet's replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<i32>,
    /// Shards whose pods are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_shards: Option<i32>,
    /// The routing table the sidecars follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring: Option<RingStatus>,
    /// The resharding in progress, if any: the ring moves from `from` to `to` shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reshard: Option<ReshardStatus>,
}

/// A resharding the operator started and follows until the coordinator (shard 0) says it is done.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReshardStatus {
    /// Shards of the ring before.
    pub from: i32,
    /// Shards of the ring after.
    pub to: i32,
    /// Slots moved so far.
    #[serde(default)]
    pub moved: i64,
    /// Slots that move in all.
    #[serde(default)]
    pub total: i64,
}

/// The published ring: which shards own the slots, at which epoch.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RingStatus {
    /// Grows by one each time the ring changes.
    pub epoch: i64,
    /// Shards the ring spreads the slots over.
    pub shards: i32,
    /// Slots still to be handed from one shard to another.
    pub moving: i32,
}

impl DurableNamespaceStatus {
    /// The condition of that type, if published.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

fn default_slots() -> i32 {
    DEFAULT_SLOTS as i32
}
fn default_idle_timeout() -> String {
    "10s".to_owned()
}
fn default_turn_timeout() -> String {
    "30s".to_owned()
}
fn default_app_port() -> i32 {
    3000
}
fn default_service_port() -> i32 {
    80
}
fn default_storage_size() -> Quantity {
    Quantity("1Gi".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn schema_json() -> String {
        serde_json::to_string(&DurableNamespace::crd()).unwrap_or_default()
    }

    #[test]
    fn a_minimal_manifest_gets_the_design_defaults() {
        let spec: DurableNamespaceSpec = serde_json::from_value(serde_json::json!({
            "shards": 1,
            "classes": ["Counter"],
            "app": {"image": "counter:dev"}
        }))
        .expect("minimal spec parses");
        assert_eq!(spec.slots, 4096);
        assert_eq!(spec.app.port, 3000);
        assert_eq!(spec.durability, Durability::Strict);
        assert_eq!(spec.idle_timeout, "10s");
        assert_eq!(spec.turn_timeout, "30s");
        assert_eq!(spec.service.type_, ServiceType::ClusterIP);
        assert_eq!(spec.service.port, 80);
        assert_eq!(spec.storage.size.0, "1Gi");
    }

    #[test]
    fn the_schema_enforces_what_the_api_server_can_check() {
        let json = schema_json();
        assert!(
            json.contains(r#""rule":"self == oldSelf""#),
            "slots immutability"
        );
        assert!(json.contains(CLASS_NAME_PATTERN), "class name pattern");
        assert!(json.contains(DURATION_PATTERN), "duration pattern");
        assert!(json.contains(r#""minimum":1"#), "shards minimum");
        assert!(json.contains(r#""status":{}"#), "status subresource");
    }

    #[test]
    fn patterns_agree_with_the_rust_parsers() {
        // The CRD attributes spell the patterns out (attributes take literals); keep them equal.
        let json = schema_json();
        assert_eq!(json.matches(DURATION_PATTERN).count(), 2);
        assert!(crate::parse_duration("250ms").is_ok());
        assert!(crate::ClassName::new("A_1").is_ok());
    }
}
