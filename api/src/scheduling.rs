//! Where a pod may run, in Kubernetes' terms: node selectors and node affinity, taints
//! and tolerations, pod affinity and anti-affinity, topology spread constraints.
//!
//! [`crate::core::node_admits`] (beside `PodSpec`, whose fields these types are) is the
//! part of the scheduler's verdict that depends on the pod's spec
//! and one node alone (node selector, required node affinity, `NoSchedule` and
//! `NoExecute` taints): what the scheduler filters on, and what a DaemonSet asks to
//! find the nodes its pods belong on.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    meta::LabelSelector,
    validation::{FieldPath, Validator},
};

/// The node label every node answers to: its name (whether or not its labels say so).
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// The node label of the zone a node is in, the usual spread domain.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Taints the node lifecycle controller puts on a node whose Ready condition is False…
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// …or Unknown (its agent stopped reporting),
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// and on a cordoned node (`spec.unschedulable`).
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

pub const NO_SCHEDULE: &str = "NoSchedule";
pub const PREFER_NO_SCHEDULE: &str = "PreferNoSchedule";
pub const NO_EXECUTE: &str = "NoExecute";
const EFFECTS: &[&str] = &[NO_SCHEDULE, PREFER_NO_SCHEDULE, NO_EXECUTE];
const NODE_SELECTOR_OPERATORS: &[&str] = &["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"];
/// The one node field `matchFields` can select on.
const NODE_NAME_FIELD: &str = "metadata.name";

/// The value of node label `key` of the node `name`: [`HOSTNAME_LABEL`] is its name.
pub fn node_label<'a>(
    name: &'a str,
    labels: &'a BTreeMap<String, String>,
    key: &str,
) -> Option<&'a str> {
    match labels.get(key) {
        Some(value) => Some(value),
        None if key == HOSTNAME_LABEL => Some(name),
        None => None,
    }
}

// ---------------------------------------------------------------------------- taints

/// A node repels pods that do not tolerate it (`NoSchedule`, `PreferNoSchedule` as a
/// preference), and evicts them (`NoExecute`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Taint {
    #[serde(default)]
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    #[serde(default)]
    pub effect: String,
    /// When a `NoExecute` taint was added: its tolerations' seconds count from then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_added: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Toleration {
    /// Empty with operator `Exists`: every key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// `Equal` (the default) or `Exists`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operator: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// Empty: every effect.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub effect: String,
    /// With `NoExecute`: how long the pod stays on a node after the taint appears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

impl Taint {
    /// `{key: value}`, as kube-scheduler names an untolerated taint.
    pub fn describe(&self) -> String {
        format!("{{{}: {}}}", self.key, self.value)
    }

    pub(crate) fn validate(&self, v: &mut Validator, path: &FieldPath) {
        v.label_key(&path.child("key"), &self.key);
        v.label_value(&path.child("value"), &self.value);
        v.one_of(&path.child("effect"), &self.effect, EFFECTS);
    }
}

impl Toleration {
    /// Kubernetes' `ToleratesTaint`.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if !self.effect.is_empty() && self.effect != taint.effect {
            return false;
        }
        if !self.key.is_empty() && self.key != taint.key {
            return false;
        }
        match self.operator.as_str() {
            "Exists" => true,
            "" | "Equal" => self.value == taint.value,
            _ => false,
        }
    }

    pub(crate) fn validate(&self, v: &mut Validator, path: &FieldPath) {
        if !self.key.is_empty() {
            v.label_key(&path.child("key"), &self.key);
        }
        match self.operator.as_str() {
            "" | "Equal" => {
                if self.key.is_empty() {
                    v.error(
                        &path.child("operator"),
                        "must be Exists when key is empty (to tolerate every taint)",
                    );
                }
                v.label_value(&path.child("value"), &self.value);
            }
            "Exists" => {
                if !self.value.is_empty() {
                    v.error(
                        &path.child("value"),
                        "must be empty when operator is Exists",
                    );
                }
            }
            other => v.error(
                &path.child("operator"),
                &format!("unsupported value {other:?}: use one of Equal, Exists"),
            ),
        }
        if !self.effect.is_empty() {
            v.one_of(&path.child("effect"), &self.effect, EFFECTS);
        }
        if self.toleration_seconds.is_some() && self.effect != NO_EXECUTE {
            v.error(
                &path.child("tolerationSeconds"),
                "may be set only with effect NoExecute",
            );
        }
    }
}

/// The first of `taints` with one of `effects` that no toleration tolerates.
pub fn untolerated<'a>(
    taints: &'a [Taint],
    tolerations: &[Toleration],
    effects: &[&str],
) -> Option<&'a Taint> {
    taints.iter().find(|taint| {
        effects.contains(&taint.effect.as_str()) && !tolerations.iter().any(|t| t.tolerates(taint))
    })
}

pub(crate) fn validate_taints(taints: &[Taint], v: &mut Validator, path: &FieldPath) {
    for (i, taint) in taints.iter().enumerate() {
        let p = path.index(i);
        taint.validate(v, &p);
        if taints[..i]
            .iter()
            .any(|t| t.key == taint.key && t.effect == taint.effect)
        {
            v.error(
                &p,
                &format!(
                    "duplicate taint {:?} with effect {:?}",
                    taint.key, taint.effect
                ),
            );
        }
    }
}

// ---------------------------------------------------------------------------- node selection

/// Nodes matching any of the terms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelector {
    pub node_selector_terms: Vec<NodeSelectorTerm>,
}

/// Nodes matching all of the expressions and fields; a term with neither matches none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelectorTerm {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<NodeSelectorRequirement>,
    /// On `metadata.name` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_fields: Vec<NodeSelectorRequirement>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeSelectorRequirement {
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`, `Gt` or `Lt` (integers).
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl NodeSelector {
    /// Requires the node named `node`.
    pub fn hostname(node: &str) -> Self {
        NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_expressions: vec![NodeSelectorRequirement {
                    key: HOSTNAME_LABEL.to_owned(),
                    operator: "In".to_owned(),
                    values: vec![node.to_owned()],
                }],
                match_fields: Vec::new(),
            }],
        }
    }

    /// Whether the node `name` with `labels` is selected.
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.node_selector_terms
            .iter()
            .any(|term| term.matches(name, labels))
    }

    pub(crate) fn validate(&self, v: &mut Validator, path: &FieldPath) {
        let terms = path.child("nodeSelectorTerms");
        if self.node_selector_terms.is_empty() {
            v.error(&terms, "must have at least one term");
        }
        for (i, term) in self.node_selector_terms.iter().enumerate() {
            term.validate(v, &terms.index(i));
        }
    }
}

impl NodeSelectorTerm {
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        if self.match_expressions.is_empty() && self.match_fields.is_empty() {
            return false;
        }
        self.match_expressions
            .iter()
            .all(|r| r.matches(node_label(name, labels, &r.key)))
            && self
                .match_fields
                .iter()
                .all(|r| r.key == NODE_NAME_FIELD && r.matches(Some(name)))
    }

    fn validate(&self, v: &mut Validator, path: &FieldPath) {
        for (j, r) in self.match_expressions.iter().enumerate() {
            let p = path.child("matchExpressions").index(j);
            v.label_key(&p.child("key"), &r.key);
            r.validate(v, &p);
        }
        for (j, r) in self.match_fields.iter().enumerate() {
            let p = path.child("matchFields").index(j);
            if r.key != NODE_NAME_FIELD {
                v.error(
                    &p.child("key"),
                    &format!("unsupported field {:?}: use {NODE_NAME_FIELD}", r.key),
                );
            }
            v.one_of(&p.child("operator"), &r.operator, &["In", "NotIn"]);
            if r.values.len() != 1 {
                v.error(&p.child("values"), "must have exactly one value");
            }
        }
    }
}

impl NodeSelectorRequirement {
    /// Whether a node whose value for the key is `value` (None: no such label) matches.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let number = |text: &str| text.parse::<i64>().ok();
        let compare = |want: std::cmp::Ordering| {
            let (Some(have), Some(bound)) = (
                value.and_then(number),
                self.values.first().and_then(|v| number(v)),
            ) else {
                return false;
            };
            have.cmp(&bound) == want
        };
        match self.operator.as_str() {
            "In" => value.is_some_and(|v| self.values.iter().any(|w| w == v)),
            "NotIn" => value.is_none_or(|v| self.values.iter().all(|w| w != v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            "Gt" => compare(std::cmp::Ordering::Greater),
            "Lt" => compare(std::cmp::Ordering::Less),
            _ => false,
        }
    }

    fn validate(&self, v: &mut Validator, path: &FieldPath) {
        v.one_of(
            &path.child("operator"),
            &self.operator,
            NODE_SELECTOR_OPERATORS,
        );
        let values = path.child("values");
        match self.operator.as_str() {
            "In" | "NotIn" if self.values.is_empty() => {
                v.error(&values, "must not be empty for In and NotIn");
            }
            "Exists" | "DoesNotExist" if !self.values.is_empty() => {
                v.error(&values, "must be empty for Exists and DoesNotExist");
            }
            "Gt" | "Lt" if self.values.len() != 1 || self.values[0].parse::<i64>().is_err() => {
                v.error(&values, "must be exactly one integer for Gt and Lt");
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------- affinity

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Affinity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<NodeAffinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_affinity: Option<PodAffinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_anti_affinity: Option<PodAffinity>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeAffinity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_during_scheduling_ignored_during_execution: Option<NodeSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_during_scheduling_ignored_during_execution: Vec<PreferredSchedulingTerm>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PreferredSchedulingTerm {
    /// 1 to 100: added to a node's score when the preference matches it.
    #[serde(default)]
    pub weight: i32,
    #[serde(default)]
    pub preference: NodeSelectorTerm,
}

/// `podAffinity` and `podAntiAffinity` have the same shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodAffinity {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_during_scheduling_ignored_during_execution: Vec<PodAffinityTerm>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_during_scheduling_ignored_during_execution: Vec<WeightedPodAffinityTerm>,
}

/// The pods selected by `labelSelector` in the namespaces named or selected (the pod's
/// own when neither is given), and the domain — the nodes sharing the value of node
/// label `topologyKey` — each of them runs in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodAffinityTerm {
    /// None selects no pod; empty (`{}`) every pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Empty (`{}`): every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default)]
    pub topology_key: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WeightedPodAffinityTerm {
    /// 1 to 100.
    #[serde(default)]
    pub weight: i32,
    #[serde(default)]
    pub pod_affinity_term: PodAffinityTerm,
}

/// Pods matching `labelSelector` spread over the domains of `topologyKey`, at most
/// `maxSkew` apart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopologySpreadConstraint {
    #[serde(default)]
    pub max_skew: i32,
    #[serde(default)]
    pub topology_key: String,
    /// `DoNotSchedule` (a filter) or `ScheduleAnyway` (a score).
    #[serde(default)]
    pub when_unsatisfiable: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    /// With `DoNotSchedule`: fewer eligible domains than this count as empty domains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_domains: Option<i32>,
}

/// Whether a label selector of an affinity term or spread constraint selects `labels`:
/// empty selects everything, absent nothing (Kubernetes' rule, unlike a controller's).
pub fn term_selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    selector.is_some_and(|s| s.is_empty() || s.matches(labels))
}

impl PodAffinityTerm {
    fn validate(&self, v: &mut Validator, path: &FieldPath) {
        if let Some(selector) = self.label_selector.as_ref().filter(|s| !s.is_empty()) {
            selector.validate(v, &path.child("labelSelector"));
        }
        if let Some(selector) = self.namespace_selector.as_ref().filter(|s| !s.is_empty()) {
            selector.validate(v, &path.child("namespaceSelector"));
        }
        for (i, namespace) in self.namespaces.iter().enumerate() {
            v.dns_label(&path.child("namespaces").index(i), namespace);
        }
        let key = path.child("topologyKey");
        if self.topology_key.is_empty() {
            v.error(&key, "is required");
        } else {
            v.label_key(&key, &self.topology_key);
        }
    }
}

impl PodAffinity {
    fn validate(&self, v: &mut Validator, path: &FieldPath) {
        let required = path.child("requiredDuringSchedulingIgnoredDuringExecution");
        for (i, term) in self
            .required_during_scheduling_ignored_during_execution
            .iter()
            .enumerate()
        {
            term.validate(v, &required.index(i));
        }
        let preferred = path.child("preferredDuringSchedulingIgnoredDuringExecution");
        for (i, term) in self
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .enumerate()
        {
            let p = preferred.index(i);
            weight(v, &p.child("weight"), term.weight);
            term.pod_affinity_term
                .validate(v, &p.child("podAffinityTerm"));
        }
    }
}

fn weight(v: &mut Validator, path: &FieldPath, weight: i32) {
    if !(1..=100).contains(&weight) {
        v.error(path, "must be between 1 and 100");
    }
}

impl Affinity {
    pub(crate) fn validate(&self, v: &mut Validator, path: &FieldPath) {
        if let Some(node) = &self.node_affinity {
            let path = path.child("nodeAffinity");
            if let Some(required) = &node.required_during_scheduling_ignored_during_execution {
                required.validate(
                    v,
                    &path.child("requiredDuringSchedulingIgnoredDuringExecution"),
                );
            }
            let preferred = path.child("preferredDuringSchedulingIgnoredDuringExecution");
            for (i, term) in node
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .enumerate()
            {
                let p = preferred.index(i);
                weight(v, &p.child("weight"), term.weight);
                term.preference.validate(v, &p.child("preference"));
            }
        }
        if let Some(pod) = &self.pod_affinity {
            pod.validate(v, &path.child("podAffinity"));
        }
        if let Some(pod) = &self.pod_anti_affinity {
            pod.validate(v, &path.child("podAntiAffinity"));
        }
    }
}

impl TopologySpreadConstraint {
    pub(crate) fn validate(&self, v: &mut Validator, path: &FieldPath) {
        if self.max_skew < 1 {
            v.error(&path.child("maxSkew"), "must be greater than 0");
        }
        let key = path.child("topologyKey");
        if self.topology_key.is_empty() {
            v.error(&key, "is required");
        } else {
            v.label_key(&key, &self.topology_key);
        }
        v.one_of(
            &path.child("whenUnsatisfiable"),
            &self.when_unsatisfiable,
            &["DoNotSchedule", "ScheduleAnyway"],
        );
        if let Some(min) = self.min_domains {
            if min < 1 {
                v.error(&path.child("minDomains"), "must be greater than 0");
            }
            if self.when_unsatisfiable != "DoNotSchedule" {
                v.error(
                    &path.child("minDomains"),
                    "may be set only with whenUnsatisfiable DoNotSchedule",
                );
            }
        }
        if let Some(selector) = self.label_selector.as_ref().filter(|s| !s.is_empty()) {
            selector.validate(v, &path.child("labelSelector"));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::core::{Misfit, Node, PodSpec, node_admits, validate_pod_placement};

    fn node(value: serde_json::Value) -> Node {
        serde_json::from_value(value).expect("node")
    }

    fn spec(value: serde_json::Value) -> PodSpec {
        serde_json::from_value(value).expect("pod spec")
    }

    fn errors(spec: &PodSpec) -> Vec<String> {
        let mut v = Validator::default();
        validate_pod_placement(spec, &mut v, &FieldPath::root("spec"));
        v.into_errors()
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.reason))
            .collect()
    }

    #[test]
    fn node_selector_and_required_node_affinity() {
        let n = node(json!({
            "metadata": {"name": "n1", "labels": {"zone": "a", "gpus": "4"}},
        }));
        let admits = |s: serde_json::Value| node_admits(&spec(s), &n);
        assert_eq!(admits(json!({"nodeSelector": {"zone": "a"}})), Ok(()));
        assert_eq!(
            admits(json!({"nodeSelector": {"zone": "b"}})),
            Err(Misfit::NodeAffinity)
        );
        assert_eq!(
            admits(json!({"nodeSelector": {"kubernetes.io/hostname": "n1"}})),
            Ok(())
        );
        let required = |expressions: serde_json::Value, fields: serde_json::Value| {
            admits(json!({"affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": expressions, "matchFields": fields},
                ]},
            }}}))
        };
        let yes = |e, f| assert_eq!(required(e, f), Ok(()));
        let no = |e, f| assert_eq!(required(e, f), Err(Misfit::NodeAffinity));
        yes(
            json!([{"key": "zone", "operator": "In", "values": ["a", "b"]}]),
            json!([]),
        );
        no(
            json!([{"key": "zone", "operator": "NotIn", "values": ["a"]}]),
            json!([]),
        );
        yes(json!([{"key": "zone", "operator": "Exists"}]), json!([]));
        no(
            json!([{"key": "zone", "operator": "DoesNotExist"}]),
            json!([]),
        );
        yes(
            json!([{"key": "ssd", "operator": "DoesNotExist"}]),
            json!([]),
        );
        yes(
            json!([{"key": "gpus", "operator": "Gt", "values": ["3"]}]),
            json!([]),
        );
        no(
            json!([{"key": "gpus", "operator": "Gt", "values": ["4"]}]),
            json!([]),
        );
        yes(
            json!([{"key": "gpus", "operator": "Lt", "values": ["5"]}]),
            json!([]),
        );
        no(
            json!([{"key": "zone", "operator": "Lt", "values": ["5"]}]),
            json!([]),
        );
        yes(
            json!([]),
            json!([{"key": "metadata.name", "operator": "In", "values": ["n1"]}]),
        );
        no(
            json!([]),
            json!([{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]),
        );
        no(json!([]), json!([]));
        // Terms are ORed.
        assert_eq!(
            admits(json!({"affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                ]},
            }}})),
            Ok(())
        );
    }

    #[test]
    fn taints_repel_pods_that_do_not_tolerate_them() {
        let n = node(json!({
            "metadata": {"name": "n1"},
            "spec": {"taints": [
                {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                {"key": "soft", "effect": "PreferNoSchedule"},
            ]},
        }));
        let gpu = Taint {
            key: "dedicated".to_owned(),
            value: "gpu".to_owned(),
            effect: NO_SCHEDULE.to_owned(),
            time_added: None,
        };
        let admits = |tolerations: serde_json::Value| {
            node_admits(&spec(json!({"tolerations": tolerations})), &n)
        };
        assert_eq!(admits(json!([])), Err(Misfit::Taint(gpu.clone())));
        assert_eq!(
            Misfit::Taint(gpu).to_string(),
            "node(s) had untolerated taint {dedicated: gpu}"
        );
        for admitted in [
            json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]),
            json!([{"key": "dedicated", "value": "gpu"}]),
            json!([{"key": "dedicated", "operator": "Exists"}]),
            json!([{"operator": "Exists"}]),
        ] {
            assert_eq!(admits(admitted.clone()), Ok(()), "{admitted}");
        }
        for refused in [
            json!([{"key": "dedicated", "value": "cpu"}]),
            json!([{"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}]),
            json!([{"key": "other", "operator": "Exists"}]),
        ] {
            assert!(admits(refused.clone()).is_err(), "{refused}");
        }
        let mut n = n.clone();
        n.spec.taints[0].effect = NO_EXECUTE.to_owned();
        assert!(node_admits(&PodSpec::default(), &n).is_err());
        n.spec.taints.remove(0);
        assert_eq!(
            node_admits(&PodSpec::default(), &n),
            Ok(()),
            "PreferNoSchedule only scores"
        );
    }

    #[test]
    fn placement_fields_are_validated_with_their_paths() {
        let bad = spec(json!({
            "tolerations": [
                {"operator": "Equal", "value": "x"},
                {"key": "a", "operator": "Exists", "value": "x"},
                {"key": "a", "effect": "NoSchedule", "tolerationSeconds": 5},
                {"key": "a", "effect": "Sometimes"},
            ],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "n", "operator": "Gt", "values": ["x"]}],
                         "matchFields": [{"key": "metadata.uid", "operator": "In", "values": ["u"]}]},
                    ]},
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 0, "preference": {"matchExpressions": [{"key": "z", "operator": "In"}]}},
                    ],
                },
                "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "web"}}},
                ]},
            },
            "topologySpreadConstraints": [
                {"maxSkew": 0, "topologyKey": "zone", "whenUnsatisfiable": "Never"},
                {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway", "minDomains": 2},
                {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"},
            ],
        }));
        let want = [
            "spec.tolerations[0].operator: must be Exists when key is empty (to tolerate every taint)",
            "spec.tolerations[1].value: must be empty when operator is Exists",
            "spec.tolerations[2].tolerationSeconds: may be set only with effect NoExecute",
            "spec.tolerations[3].effect: unsupported value \"Sometimes\": use one of NoSchedule, PreferNoSchedule, NoExecute",
            "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values: must be exactly one integer for Gt and Lt",
            "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields[0].key: unsupported field \"metadata.uid\": use metadata.name",
            "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight: must be between 1 and 100",
            "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].preference.matchExpressions[0].values: must not be empty for In and NotIn",
            "spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey: is required",
            "spec.topologySpreadConstraints[0].maxSkew: must be greater than 0",
            "spec.topologySpreadConstraints[0].whenUnsatisfiable: unsupported value \"Never\": use one of DoNotSchedule, ScheduleAnyway",
            "spec.topologySpreadConstraints[1].minDomains: may be set only with whenUnsatisfiable DoNotSchedule",
            "spec.topologySpreadConstraints[2]: duplicate constraint for topologyKey \"zone\" and whenUnsatisfiable \"ScheduleAnyway\"",
        ];
        assert_eq!(errors(&bad), want);
    }

    #[test]
    fn node_taints_are_validated() {
        let mut v = Validator::default();
        let taints = vec![
            Taint {
                key: "a".to_owned(),
                effect: NO_SCHEDULE.to_owned(),
                ..Taint::default()
            },
            Taint {
                key: "a".to_owned(),
                effect: NO_SCHEDULE.to_owned(),
                ..Taint::default()
            },
            Taint {
                key: String::new(),
                effect: "Later".to_owned(),
                ..Taint::default()
            },
        ];
        validate_taints(&taints, &mut v, &FieldPath::root("spec").child("taints"));
        let errors: Vec<String> = v.into_errors().into_iter().map(|e| e.field).collect();
        assert_eq!(
            errors,
            [
                "spec.taints[1]",
                "spec.taints[2].key",
                "spec.taints[2].effect"
            ]
        );
    }
}
