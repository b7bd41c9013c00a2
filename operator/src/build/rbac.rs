//! The sidecars' identity: they read their DurableNamespace (the ring in its status) and their
//! peer-token Secret, nothing else.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::{child_meta, names};
use crate::validate::ValidatedSpec;

pub fn service_account(spec: &ValidatedSpec) -> ServiceAccount {
    ServiceAccount {
        metadata: child_meta(spec, names::sidecar_account(&spec.name), "sidecar"),
        ..ServiceAccount::default()
    }
}

pub fn role(spec: &ValidatedSpec) -> Role {
    Role {
        metadata: child_meta(spec, names::sidecar_account(&spec.name), "sidecar"),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![stead_core::crd::GROUP.to_owned()]),
                resources: Some(vec!["durablenamespaces".into()]),
                verbs: vec!["get".into(), "list".into(), "watch".into()],
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["secrets".into()]),
                resource_names: Some(vec![names::token_secret(&spec.name)]),
                verbs: vec!["get".into()],
                ..PolicyRule::default()
            },
        ]),
    }
}

pub fn role_binding(spec: &ValidatedSpec) -> RoleBinding {
    let name = names::sidecar_account(&spec.name);
    RoleBinding {
        metadata: child_meta(spec, name.clone(), "sidecar"),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: Some(spec.namespace.clone()),
            ..Subject::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::chat_spec;

    #[test]
    fn sidecars_may_read_their_namespace_and_only_their_token() {
        let role = role(&chat_spec());
        let rules = role.rules.expect("rules");
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].api_groups, Some(vec!["stead.dev".to_owned()]));
        assert_eq!(
            rules[0].resources,
            Some(vec!["durablenamespaces".to_owned()])
        );
        assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
        assert_eq!(rules[1].resources, Some(vec!["secrets".to_owned()]));
        assert_eq!(
            rules[1].resource_names,
            Some(vec!["chat-peer-token".to_owned()])
        );
        assert_eq!(rules[1].verbs, ["get"]);
    }

    #[test]
    fn the_binding_ties_the_role_to_the_sidecar_account() {
        let spec = chat_spec();
        let sa = service_account(&spec);
        let rb = role_binding(&spec);
        assert_eq!(rb.role_ref.kind, "Role");
        assert_eq!(Some(rb.role_ref.name.clone()), role(&spec).metadata.name);
        let subject = &rb.subjects.expect("subjects")[0];
        assert_eq!(subject.kind, "ServiceAccount");
        assert_eq!(Some(subject.name.clone()), sa.metadata.name);
        assert_eq!(subject.namespace.as_deref(), Some("apps"));
    }
}
