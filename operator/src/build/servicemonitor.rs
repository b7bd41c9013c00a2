//! A Prometheus-operator ServiceMonitor scraping every shard's admin port, made only when the
//! ServiceMonitor CRD is installed. Built as a `DynamicObject` so the operator does not depend on
//! the Prometheus operator's types.

use kube::Client;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::{COMPONENT_LABEL, INSTANCE_LABEL, NAME_LABEL, child_meta, names};
use crate::validate::ValidatedSpec;

pub const GROUP: &str = "monitoring.coreos.com";
pub const VERSION: &str = "v1";

pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "ServiceMonitor"),
        "servicemonitors",
    )
}

pub fn service_monitor(spec: &ValidatedSpec) -> DynamicObject {
    let mut obj = DynamicObject::new(&names::shards(&spec.name), &api_resource());
    obj.metadata = child_meta(spec, names::shards(&spec.name), "shard");
    obj.data = json!({
        "spec": {
            "selector": {"matchLabels": {
                NAME_LABEL: "stead",
                INSTANCE_LABEL: spec.name,
                COMPONENT_LABEL: "peers",
            }},
            "endpoints": [{"port": "admin", "path": "/metrics"}],
        }
    });
    obj
}

/// Whether the ServiceMonitor CRD is served by the cluster.
pub async fn crd_installed(client: &Client) -> Result<bool, kube::Error> {
    match client
        .list_api_group_resources(&format!("{GROUP}/{VERSION}"))
        .await
    {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == "servicemonitors")),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::chat_spec;

    #[test]
    fn the_monitor_scrapes_the_admin_port_of_the_peers_service() {
        let spec = chat_spec();
        let sm = service_monitor(&spec);
        assert_eq!(
            sm.types.as_ref().map(|t| t.kind.as_str()),
            Some("ServiceMonitor")
        );
        assert_eq!(sm.data["spec"]["endpoints"][0]["port"], "admin");
        assert_eq!(sm.data["spec"]["endpoints"][0]["path"], "/metrics");
        // It selects the peers Service, which carries the admin port.
        let svc = crate::build::service::peers_service(&spec);
        let svc_labels = svc.metadata.labels.expect("labels");
        let want = sm.data["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("labels");
        for (k, v) in want {
            assert_eq!(svc_labels.get(k).map(String::as_str), v.as_str(), "{k}");
        }
        assert!(sm.metadata.owner_references.is_some());
    }
}
