//! PodDisruptionBudget: a drain takes at most one shard down at a time.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{child_meta, names, selector_labels};
use crate::validate::ValidatedSpec;

pub fn pod_disruption_budget(spec: &ValidatedSpec) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(spec, names::shards(&spec.name), "shard"),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(spec)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::chat_spec;

    #[test]
    fn at_most_one_shard_is_disrupted_at_a_time() {
        let spec = chat_spec();
        let pdb = pod_disruption_budget(&spec);
        let s = pdb.spec.expect("spec");
        assert_eq!(s.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(s.min_available, None);
        assert_eq!(
            s.selector.and_then(|s| s.match_labels),
            Some(selector_labels(&spec))
        );
        assert!(pdb.metadata.owner_references.is_some());
    }
}
