//! ClusterRole aggregation, as Kubernetes' clusterrole-aggregation controller does it: a
//! ClusterRole with an `aggregationRule` gets as its rules those of every other
//! ClusterRole its selectors match, in name order, each rule once. Any ClusterRole's
//! change looks at every aggregated one again, since a label added or removed changes
//! which roles are selected.

use berth_api::rbac::{ClusterRole, PolicyRule};

use super::{Change, Context, Outcome, Reconciler, Snapshot, Write};

pub struct AggregationController;

impl Reconciler for AggregationController {
    type Object = ClusterRole;

    fn name(&self) -> &'static str {
        "clusterrole-aggregation"
    }

    fn affected(&self, change: &Change, snapshot: &Snapshot) -> Vec<(String, String)> {
        if change.as_kind::<ClusterRole>().is_none() {
            return Vec::new();
        }
        snapshot
            .list::<ClusterRole>(None)
            .filter(|role| role.aggregation_rule.is_some())
            .map(|role| (String::new(), role.metadata.name.clone()))
            .collect()
    }

    fn reconcile(&self, role: &ClusterRole, snapshot: &Snapshot, _ctx: &Context) -> Outcome {
        let Some(rule) = &role.aggregation_rule else {
            return Outcome::default();
        };
        let mut rules: Vec<PolicyRule> = Vec::new();
        for other in snapshot.list::<ClusterRole>(None) {
            if other.metadata.name == role.metadata.name
                || !rule
                    .cluster_role_selectors
                    .iter()
                    .any(|selector| selector.matches(&other.metadata.labels))
            {
                continue;
            }
            for rule in &other.rules {
                if !rules.contains(rule) {
                    rules.push(rule.clone());
                }
            }
        }
        if rules == role.rules {
            return Outcome::default();
        }
        let mut updated = role.clone();
        updated.rules = rules;
        Outcome::writes(vec![Write::update(updated)])
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        controllers::{Settings, fixtures},
        objects::Kind as _,
    };

    fn ctx() -> Context {
        Context {
            now: 0,
            settings: Settings::default(),
        }
    }

    #[test]
    fn an_aggregated_role_gathers_the_rules_of_the_roles_it_selects() {
        let role = |name: &str, labels: serde_json::Value, rules: serde_json::Value| {
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": name, "labels": labels},
                "rules": rules,
            })
        };
        let read = json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]);
        let write = json!([{"verbs": ["create"], "apiGroups": [""], "resources": ["pods"]}]);
        let mut view = role("view", json!({}), json!([]));
        view["aggregationRule"] = json!({"clusterRoleSelectors": [
            {"matchLabels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}}
        ]});
        let rt = &berth_api::kinds::CLUSTER_ROLES;
        let snapshot = fixtures::snapshot(
            [
                view.clone(),
                role(
                    "a",
                    json!({"rbac.authorization.k8s.io/aggregate-to-view": "true"}),
                    read.clone(),
                ),
                role(
                    "b",
                    json!({"rbac.authorization.k8s.io/aggregate-to-view": "true"}),
                    read.clone(),
                ),
                role("c", json!({}), write),
            ]
            .into_iter()
            .map(|manifest| (rt, manifest))
            .collect(),
            1,
        );
        let view: ClusterRole = fixtures::typed(view);
        let outcome = AggregationController.reconcile(&view, &snapshot, &ctx());
        let [Write::Update(updated)] = outcome.writes.as_slice() else {
            panic!("one update: {outcome:?}");
        };
        let updated = ClusterRole::of(updated).expect("a ClusterRole");
        // The rule both selected roles hold appears once; the unselected role's not at all.
        assert_eq!(serde_json::to_value(&updated.rules).expect("json"), read);
        let settled = AggregationController.reconcile(updated, &snapshot, &ctx());
        assert!(settled.writes.is_empty());
    }
}
