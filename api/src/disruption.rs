//! Voluntary disruptions (`apiVersion: policy/v1`): the PodDisruptionBudget, which bounds
//! how many of a set of pods may be evicted at once, and the Eviction a drain posts to a
//! pod's `eviction` subresource instead of deleting it.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    apps::check_int_or_percent,
    core::{Condition, IntOrString},
    meta::{LabelSelector, ObjectMeta},
    validation::{FieldPath, Validator},
};

pub const GROUP: &str = "policy";

/// Kubernetes' refusal of an eviction that would break a budget, word for word: kubectl
/// drain matches on the 429, people on the text.
pub const EVICTION_REFUSED: &str =
    "Cannot evict pod as it would violate the pod's disruption budget.";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodDisruptionBudget {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodDisruptionBudgetSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PodDisruptionBudgetStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodDisruptionBudgetSpec {
    /// Pods that must stay healthy: a number, or a percentage of the pods the selected
    /// pods' controllers want.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<IntOrString>,
    /// Pods that may be unhealthy at once (the other way to say it; one of the two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
    /// The pods covered. As in policy/v1, an empty selector covers every pod of the
    /// namespace and no selector covers none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// `IfHealthyBudget` (default): a pod that is not Ready may be evicted only while the
    /// budget is met; `AlwaysAllow`: a pod that is not Ready may always be evicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_pod_eviction_policy: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodDisruptionBudgetStatus {
    #[serde(default)]
    pub observed_generation: i64,
    /// Pods evicted but not yet gone (name → when), not counted as healthy meanwhile.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub disrupted_pods: BTreeMap<String, String>,
    #[serde(default)]
    pub disruptions_allowed: i32,
    #[serde(default)]
    pub current_healthy: i32,
    #[serde(default)]
    pub desired_healthy: i32,
    #[serde(default)]
    pub expected_pods: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl PodDisruptionBudget {
    pub(crate) fn validate(&self, v: &mut Validator) {
        let spec = &self.spec;
        let path = FieldPath::root("spec");
        match (&spec.min_available, &spec.max_unavailable) {
            (Some(_), Some(_)) => v.error(
                &path.child("minAvailable"),
                "minAvailable and maxUnavailable cannot both be set",
            ),
            (Some(min), None) => {
                check_int_or_percent(v, &path.child("minAvailable"), min);
            }
            (None, Some(max)) => {
                check_int_or_percent(v, &path.child("maxUnavailable"), max);
            }
            (None, None) => {}
        }
        if let Some(selector) = &spec.selector
            && !selector.is_empty()
        {
            selector.validate(v, &path.child("selector"));
        }
        if let Some(policy) = &spec.unhealthy_pod_eviction_policy {
            v.one_of(
                &path.child("unhealthyPodEvictionPolicy"),
                policy,
                &["IfHealthyBudget", "AlwaysAllow"],
            );
        }
    }

    /// Whether the budget covers a pod with these labels (policy/v1's selector rule).
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        match &self.spec.selector {
            None => false,
            Some(selector) if selector.is_empty() => true,
            Some(selector) => selector.matches(labels),
        }
    }

    pub fn disruptions_allowed(&self) -> i32 {
        self.status.as_ref().map_or(0, |s| s.disruptions_allowed)
    }
}

/// The body of `POST .../pods/NAME/eviction`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Eviction {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// How the pod is deleted once the eviction is allowed (grace, preconditions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_options: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use crate::{Source, find_by_kind};

    /// What decoding `yaml` as a budget reports; empty when it is valid.
    fn errors(yaml: &str) -> String {
        let rt = find_by_kind("policy/v1", "PodDisruptionBudget").expect("served");
        rt.decode(Source::Yaml(yaml))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_budget_says_one_bound_well() {
        let head = "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: b}\nspec:\n";
        assert_eq!(
            errors(&format!("{head}  minAvailable: 50%\n  selector: {{}}\n")),
            ""
        );
        let both = errors(&format!("{head}  minAvailable: 1\n  maxUnavailable: 1\n"));
        assert!(
            both.contains("spec.minAvailable: minAvailable and maxUnavailable cannot both be set"),
            "{both}"
        );
        let percent = errors(&format!("{head}  maxUnavailable: 150%\n"));
        assert!(percent.contains("spec.maxUnavailable"), "{percent}");
        let policy = errors(&format!("{head}  unhealthyPodEvictionPolicy: Sometimes\n"));
        assert!(
            policy.contains("spec.unhealthyPodEvictionPolicy"),
            "{policy}"
        );
    }
}
