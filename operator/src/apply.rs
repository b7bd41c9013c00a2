//! Step 3: server-side apply of the built objects, under the one field manager
//! [`crate::FIELD_MANAGER`], forcing ownership of the fields we set.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use stead_core::crd::{DurableNamespace, DurableNamespaceStatus};

use crate::error::Error;

pub fn params() -> PatchParams {
    PatchParams::apply(crate::FIELD_MANAGER).force()
}

/// Apply `obj` (which names itself) in `namespace` and return what the server stored.
pub async fn apply<K>(client: &Client, namespace: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .patch(&obj.name_any(), &params(), &Patch::Apply(obj))
        .await?)
}

/// Apply an object of a kind the operator has no Rust type for (the ServiceMonitor).
pub async fn apply_dynamic(
    client: &Client,
    namespace: &str,
    resource: &ApiResource,
    obj: &DynamicObject,
) -> Result<DynamicObject, Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    Ok(api
        .patch(&obj.name_any(), &params(), &Patch::Apply(obj))
        .await?)
}

/// The object if it exists.
pub async fn get<K>(client: &Client, namespace: &str, name: &str) -> Result<Option<K>, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    Ok(api.get_opt(name).await?)
}

/// Objects matching a label selector.
pub async fn list<K>(client: &Client, namespace: &str, selector: &str) -> Result<Vec<K>, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .list(&ListParams::default().labels(selector))
        .await?
        .items)
}

/// Write the status subresource (server-side apply, same field manager).
pub async fn apply_status(
    client: &Client,
    dns: &DurableNamespace,
    status: &DurableNamespaceStatus,
) -> Result<(), Error> {
    let namespace = dns.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<DurableNamespace> = Api::namespaced(client.clone(), &namespace);
    let body = json!({
        "apiVersion": DurableNamespace::api_version(&()),
        "kind": DurableNamespace::kind(&()),
        "status": status,
    });
    api.patch_status(&dns.name_any(), &params(), &Patch::Apply(&body))
        .await?;
    Ok(())
}
