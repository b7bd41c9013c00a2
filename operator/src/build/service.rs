//! The two Services: headless peers (stable DNS per shard pod) and the client Service.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{ADMIN_PORT, PEER_PORT, child_meta, names, selector_labels};
use crate::validate::ValidatedSpec;

/// Headless Service that gives shard `i` the name `{name}-{i}.{name}-peers.{ns}.svc`. Not-ready
/// pods are published too: shards must reach each other before they all pass readiness. It
/// also carries the admin port, for ServiceMonitors to scrape every shard.
pub fn peers_service(spec: &ValidatedSpec) -> Service {
    Service {
        metadata: child_meta(spec, names::peers_service(&spec.name), "peers"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(spec)),
            ports: Some(vec![
                ServicePort {
                    name: Some("peer".into()),
                    port: PEER_PORT,
                    target_port: Some(IntOrString::String("peer".into())),
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("admin".into()),
                    port: ADMIN_PORT,
                    target_port: Some(IntOrString::String("admin".into())),
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The Service clients call: any ready shard's ingress, which routes to the owner.
pub fn client_service(spec: &ValidatedSpec) -> Service {
    Service {
        metadata: child_meta(spec, names::client_service(&spec.name), "client"),
        spec: Some(ServiceSpec {
            type_: Some(spec.service_type.as_str().to_owned()),
            selector: Some(selector_labels(spec)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: spec.service_port,
                target_port: Some(IntOrString::String("ingress".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::chat_spec;

    #[test]
    fn peers_service_is_headless_and_publishes_unready_shards() {
        let svc = peers_service(&chat_spec());
        assert_eq!(svc.metadata.name.as_deref(), Some("chat-peers"));
        let s = svc.spec.expect("spec");
        assert_eq!(s.cluster_ip.as_deref(), Some("None"));
        assert_eq!(s.publish_not_ready_addresses, Some(true));
        let ports = s.ports.expect("ports");
        assert_eq!(ports[0].port, 7878);
        assert_eq!(
            ports[0].target_port,
            Some(IntOrString::String("peer".into()))
        );
        assert_eq!(ports[1].port, 9788);
    }

    #[test]
    fn client_service_forwards_the_chosen_port_to_the_ingress() {
        let svc = client_service(&chat_spec());
        assert_eq!(svc.metadata.name.as_deref(), Some("chat"));
        let s = svc.spec.expect("spec");
        assert_eq!(s.type_.as_deref(), Some("LoadBalancer"));
        let port = &s.ports.expect("ports")[0];
        assert_eq!(port.port, 8080);
        assert_eq!(
            port.target_port,
            Some(IntOrString::String("ingress".into()))
        );
    }

    #[test]
    fn both_services_select_the_shard_pods() {
        let spec = chat_spec();
        for svc in [peers_service(&spec), client_service(&spec)] {
            assert_eq!(
                svc.spec.and_then(|s| s.selector),
                Some(selector_labels(&spec))
            );
            let owners = svc.metadata.owner_references.expect("owner refs");
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].controller, Some(true));
        }
    }
}
