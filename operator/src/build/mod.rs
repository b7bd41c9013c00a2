//! Step 2: the desired child objects, built by pure functions from a [`ValidatedSpec`].
//!
//! One file per object. Nothing here talks to the API server (except the ServiceMonitor CRD
//! lookup, kept beside its builder), so "what StatefulSet do we make for this spec?" is answered
//! by reading [`statefulset::statefulset`] and its tests.

pub mod pdb;
pub mod rbac;
pub mod secret;
pub mod service;
pub mod servicemonitor;
pub mod statefulset;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::validate::ValidatedSpec;

/// Sidecar ports, as in `docs/sidecar.md`.
pub const INGRESS_PORT: i32 = 8787;
pub const PEER_PORT: i32 = 7878;
pub const API_PORT: i32 = 9787;
pub const ADMIN_PORT: i32 = 9788;

/// Where each shard's volume is mounted in the sidecar.
pub const DATA_DIR: &str = "/data";
/// Name of the volume claim template (PVCs are `data-{name}-{ordinal}`).
pub const DATA_VOLUME: &str = "data";
/// Key of the peer token in its Secret.
pub const TOKEN_KEY: &str = "token";

pub const APP_CONTAINER: &str = "app";
pub const SIDECAR_CONTAINER: &str = "sidecar";

/// Label keys.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";

/// Names of the children of one DurableNamespace.
pub mod names {
    /// The StatefulSet, the client Service and the PodDisruptionBudget.
    pub fn shards(name: &str) -> String {
        name.to_owned()
    }
    /// The headless Service giving each shard pod a stable DNS name.
    pub fn peers_service(name: &str) -> String {
        format!("{name}-peers")
    }
    pub fn client_service(name: &str) -> String {
        name.to_owned()
    }
    pub fn token_secret(name: &str) -> String {
        format!("{name}-peer-token")
    }
    /// ServiceAccount, Role and RoleBinding of the sidecars.
    pub fn sidecar_account(name: &str) -> String {
        format!("{name}-sidecar")
    }
}

/// Labels that pick the shard pods of one namespace: the StatefulSet, Services and PDB select
/// with exactly these.
pub fn selector_labels(spec: &ValidatedSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), "stead".to_owned()),
        (INSTANCE_LABEL.to_owned(), spec.name.clone()),
        (COMPONENT_LABEL.to_owned(), "shard".to_owned()),
    ])
}

/// Labels of a child object of the given component.
pub fn labels(spec: &ValidatedSpec, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), "stead".to_owned()),
        (INSTANCE_LABEL.to_owned(), spec.name.clone()),
        (COMPONENT_LABEL.to_owned(), component.to_owned()),
        (MANAGED_BY_LABEL.to_owned(), crate::FIELD_MANAGER.to_owned()),
    ])
}

/// Metadata of a child: its name, the namespace's namespace, labels, and the controller owner
/// reference so that deleting the DurableNamespace deletes it.
pub fn child_meta(spec: &ValidatedSpec, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(spec.namespace.clone()),
        labels: Some(labels(spec, component)),
        owner_references: Some(vec![spec.owner.clone()]),
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::validate::{ValidatedSpec, tests::chat, validate};

    pub(crate) fn chat_spec() -> ValidatedSpec {
        validate(&chat()).expect("valid")
    }
}
