//! Step 1: check a `DurableNamespace` and turn it into a [`ValidatedSpec`], or say what to fix.
//!
//! The CRD schema already refuses most bad values at `kubectl apply`; this step re-checks them
//! (a schema can be bypassed or older) and adds the checks a schema cannot express.

use std::time::Duration;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use stead_core::crd::{CommitSync, Durability, DurableNamespace, ServiceType, VolumePolicy};
use stead_core::{ClassName, parse_duration};

use crate::error::Error;

/// Ports the sidecar holds inside the pod; the app must not listen on them.
pub const SIDECAR_PORTS: [i32; 4] = [
    crate::build::INGRESS_PORT,
    crate::build::PEER_PORT,
    crate::build::API_PORT,
    crate::build::ADMIN_PORT,
];

/// Longest DurableNamespace name: pods are `{name}-{ordinal}`, the peers Service `{name}-peers`,
/// and the StatefulSet's revision label `{name}-{10 char hash}` must fit in 63 characters.
pub const MAX_NAME_LEN: usize = 52;

/// A spec that can be built and run.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedSpec {
    pub name: String,
    pub namespace: String,
    /// Controller owner reference pointing at the DurableNamespace.
    pub owner: OwnerReference,
    pub shards: i32,
    pub slots: u32,
    pub classes: Vec<ClassName>,
    pub app: ValidatedApp,
    pub storage_size: String,
    pub storage_class_name: Option<String>,
    /// What happens to a removed shard's volume (`persistentVolumeClaimRetentionPolicy.whenScaled`).
    pub when_scaled_down: VolumePolicy,
    pub durability: Durability,
    pub sync: CommitSync,
    pub idle_timeout: Duration,
    pub turn_timeout: Duration,
    pub service_type: ServiceType,
    pub service_port: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedApp {
    pub image: String,
    pub port: i32,
    pub env: Vec<EnvVar>,
    pub resources: Option<ResourceRequirements>,
}

/// Check `dns` and resolve its defaults.
pub fn validate(dns: &DurableNamespace) -> Result<ValidatedSpec, Error> {
    let name = dns
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingMetadata("name"))?;
    let namespace = dns
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let owner = dns
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata("uid"))?;
    let spec = &dns.spec;
    let invalid = |msg: String| Err(Error::InvalidSpec(msg));

    if name.len() > MAX_NAME_LEN {
        return invalid(format!(
            "metadata.name {name:?} is {} characters; at most {MAX_NAME_LEN} fit in the names of the shard pods and Services",
            name.len()
        ));
    }
    if spec.slots < 1 {
        return invalid(format!(
            "spec.slots is {}; it must be at least 1",
            spec.slots
        ));
    }
    if spec.shards < 1 {
        return invalid(format!(
            "spec.shards is {}; a namespace needs at least 1 shard (to stop serving, delete the DurableNamespace)",
            spec.shards
        ));
    }
    if spec.shards > spec.slots {
        return invalid(format!(
            "spec.shards ({}) is more than spec.slots ({}): each shard must own at least one slot",
            spec.shards, spec.slots
        ));
    }
    if spec.classes.is_empty() {
        return invalid(
            "spec.classes is empty; list the classes the app serves, e.g. [Counter]".into(),
        );
    }
    let mut classes = Vec::with_capacity(spec.classes.len());
    for class in &spec.classes {
        let class =
            ClassName::new(class).map_err(|e| Error::InvalidSpec(format!("spec.classes: {e}")))?;
        if classes.contains(&class) {
            return invalid(format!("spec.classes lists {class} twice"));
        }
        classes.push(class);
    }
    if spec.app.image.trim().is_empty() {
        return invalid("spec.app.image is empty; set the image of your app".into());
    }
    if !(1..=65535).contains(&spec.app.port) {
        return invalid(format!(
            "spec.app.port {} is not a port (1-65535)",
            spec.app.port
        ));
    }
    if SIDECAR_PORTS.contains(&spec.app.port) {
        return invalid(format!(
            "spec.app.port {} is used by the Stead sidecar in the same pod ({SIDECAR_PORTS:?}); make the app listen on another port",
            spec.app.port
        ));
    }
    if let Some(reserved) = spec.app.env.iter().find(|e| e.name.starts_with("STEAD_")) {
        return invalid(format!(
            "spec.app.env sets {}; STEAD_* variables are set by the operator",
            reserved.name
        ));
    }
    if !(1..=65535).contains(&spec.service.port) {
        return invalid(format!(
            "spec.service.port {} is not a port (1-65535)",
            spec.service.port
        ));
    }
    let idle_timeout = positive_duration("spec.idleTimeout", &spec.idle_timeout)?;
    let turn_timeout = positive_duration("spec.turnTimeout", &spec.turn_timeout)?;
    if spec.storage.size.0.trim().is_empty() {
        return invalid("spec.storage.size is empty; set a size such as 10Gi".into());
    }

    Ok(ValidatedSpec {
        name,
        namespace,
        owner,
        shards: spec.shards,
        slots: spec.slots as u32,
        classes,
        app: ValidatedApp {
            image: spec.app.image.clone(),
            port: spec.app.port,
            env: spec.app.env.clone(),
            resources: spec.app.resources.clone(),
        },
        storage_size: spec.storage.size.0.clone(),
        storage_class_name: spec.storage.storage_class_name.clone(),
        when_scaled_down: spec.storage.when_scaled_down,
        durability: spec.durability,
        sync: spec.storage.sync,
        idle_timeout,
        turn_timeout,
        service_type: spec.service.type_,
        service_port: spec.service.port,
    })
}

fn positive_duration(field: &str, value: &str) -> Result<Duration, Error> {
    let d = parse_duration(value).map_err(|e| Error::InvalidSpec(format!("{field}: {e}")))?;
    if d.is_zero() {
        return Err(Error::InvalidSpec(format!(
            "{field} is zero; it must be positive, e.g. 30s"
        )));
    }
    Ok(d)
}

impl ValidatedSpec {
    /// The duration as the sidecar's flag takes it (`1500ms`, `30s`).
    pub fn duration_flag(d: Duration) -> String {
        let ms = d.as_millis();
        if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use stead_core::crd::DurableNamespaceSpec;

    /// The chat example of the design: 3 shards, two classes.
    pub(crate) fn chat() -> DurableNamespace {
        let spec: DurableNamespaceSpec = serde_json::from_value(serde_json::json!({
            "shards": 3,
            "classes": ["ChatRoom", "Lobby"],
            "app": {
                "image": "ghcr.io/acme/chat:1.2",
                "port": 3000,
                "env": [{"name": "LOG", "value": "debug"}],
                "resources": {"limits": {"memory": "256Mi"}}
            },
            "storage": {"size": "10Gi", "storageClassName": "standard", "sync": "volume"},
            "durability": "relaxed",
            "idleTimeout": "30s",
            "turnTimeout": "1500ms",
            "service": {"type": "LoadBalancer", "port": 8080}
        }))
        .expect("chat spec");
        let mut dns = DurableNamespace::new("chat", spec);
        dns.metadata = ObjectMeta {
            name: Some("chat".into()),
            namespace: Some("apps".into()),
            uid: Some("11111111-2222-3333-4444-555555555555".into()),
            generation: Some(1),
            ..ObjectMeta::default()
        };
        dns
    }

    fn refused(dns: &DurableNamespace) -> String {
        match validate(dns) {
            Err(Error::InvalidSpec(msg)) => msg,
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
    }

    #[test]
    fn the_design_example_is_valid() {
        let v = validate(&chat()).expect("valid");
        assert_eq!(v.name, "chat");
        assert_eq!(v.namespace, "apps");
        assert_eq!(v.shards, 3);
        assert_eq!(v.slots, 4096);
        assert_eq!(v.classes.len(), 2);
        assert_eq!(v.idle_timeout, Duration::from_secs(30));
        assert_eq!(v.turn_timeout, Duration::from_millis(1500));
        assert_eq!(v.owner.kind, "DurableNamespace");
        assert_eq!(v.owner.controller, Some(true));
    }

    #[test]
    fn zero_shards_is_refused() {
        let mut dns = chat();
        dns.spec.shards = 0;
        assert!(refused(&dns).contains("at least 1 shard"));
    }

    #[test]
    fn more_shards_than_slots_is_refused() {
        let mut dns = chat();
        dns.spec.slots = 2;
        assert!(refused(&dns).contains("more than spec.slots"));
    }

    #[test]
    fn bad_class_names_are_refused_with_the_rule() {
        for bad in ["", "9lives", "chat-room", &"A".repeat(65)] {
            let mut dns = chat();
            dns.spec.classes = vec![bad.to_owned()];
            assert!(
                refused(&dns).contains("must start with a letter"),
                "{bad:?}"
            );
        }
        let mut dns = chat();
        dns.spec.classes = vec!["Room".into(), "Room".into()];
        assert!(refused(&dns).contains("twice"));
        dns.spec.classes = vec![];
        assert!(refused(&dns).contains("empty"));
    }

    #[test]
    fn durations_are_parsed_and_must_be_positive() {
        let mut dns = chat();
        dns.spec.idle_timeout = "ten seconds".into();
        assert!(refused(&dns).contains("spec.idleTimeout"));
        let mut dns = chat();
        dns.spec.turn_timeout = "0s".into();
        assert!(refused(&dns).contains("spec.turnTimeout is zero"));
    }

    #[test]
    fn an_app_port_the_sidecar_uses_is_refused() {
        for port in SIDECAR_PORTS {
            let mut dns = chat();
            dns.spec.app.port = port;
            assert!(refused(&dns).contains("used by the Stead sidecar"));
        }
    }

    #[test]
    fn app_env_may_not_override_stead_variables() {
        let mut dns = chat();
        dns.spec.app.env.push(EnvVar {
            name: "STEAD_API_URL".into(),
            value: Some("http://evil".into()),
            ..EnvVar::default()
        });
        assert!(refused(&dns).contains("STEAD_API_URL"));
    }

    #[test]
    fn names_too_long_for_pod_and_service_names_are_refused() {
        let mut dns = chat();
        dns.metadata.name = Some("a".repeat(MAX_NAME_LEN + 1));
        assert!(refused(&dns).contains("at most 52"));
    }

    #[test]
    fn an_object_without_uid_cannot_own_children() {
        let mut dns = chat();
        dns.metadata.uid = None;
        assert!(matches!(validate(&dns), Err(Error::MissingMetadata(_))));
    }

    #[test]
    fn durations_are_written_back_in_the_sidecar_syntax() {
        assert_eq!(ValidatedSpec::duration_flag(Duration::from_secs(30)), "30s");
        assert_eq!(
            ValidatedSpec::duration_flag(Duration::from_millis(1500)),
            "1500ms"
        );
    }
}
