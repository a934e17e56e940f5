//! Keeps each PodDisruptionBudget's status the way Kubernetes' disruption controller
//! does: how many of its pods are healthy, how many must be, and so how many may be
//! evicted now (`disruptionsAllowed`, which the Eviction subresource spends).

use std::{collections::BTreeMap, time::Duration};

use berth_api::{
    apps::{Deployment, ReplicaSet},
    core::{Condition, IntOrString, Pod},
    disruption::{PodDisruptionBudget, PodDisruptionBudgetStatus},
};

use super::{
    Change, Context, Outcome, Reconciler, Snapshot, Write, controller_of, deployment::scaled,
    pod_is_ready, pod_is_terminating,
};
use crate::util::{parse_rfc3339, rfc3339};

pub struct DisruptionController;

/// An evicted pod still there after this long counts as healthy again (Kubernetes'
/// DeletionTimeout): its deletion was refused or lost.
pub const DELETION_TIMEOUT: Duration = Duration::from_secs(120);

impl Reconciler for DisruptionController {
    type Object = PodDisruptionBudget;

    fn name(&self) -> &'static str {
        "disruption"
    }

    fn affected(&self, change: &Change, snapshot: &Snapshot) -> Vec<(String, String)> {
        if change.as_kind::<PodDisruptionBudget>().is_some() {
            return vec![change.key()];
        }
        let namespace = change.object.namespace();
        let selecting = |budget: &&PodDisruptionBudget| {
            if let Some(pod) = change.as_kind::<Pod>() {
                budget.selects(&pod.metadata.labels)
                    || change
                        .previous_as::<Pod>()
                        .is_some_and(|old| budget.selects(&old.metadata.labels))
            } else {
                // A controller's scale is what percentages count from.
                change.as_kind::<Deployment>().is_some() || change.as_kind::<ReplicaSet>().is_some()
            }
        };
        snapshot
            .list::<PodDisruptionBudget>(Some(namespace))
            .filter(selecting)
            .map(|budget| {
                (
                    budget.metadata.namespace.clone(),
                    budget.metadata.name.clone(),
                )
            })
            .collect()
    }

    fn reconcile(
        &self,
        budget: &PodDisruptionBudget,
        snapshot: &Snapshot,
        ctx: &Context,
    ) -> Outcome {
        let pods: Vec<&Pod> = snapshot
            .list::<Pod>(Some(&budget.metadata.namespace))
            .filter(|pod| budget.selects(&pod.metadata.labels))
            .collect();
        let (status, recheck) = status(budget, &pods, snapshot, ctx.now);
        let mut writes = Vec::new();
        if budget.status.as_ref() != Some(&status) {
            let mut updated = budget.clone();
            updated.status = Some(status);
            writes.push(Write::update_status(updated));
        }
        Outcome {
            writes,
            requeue_after: recheck,
        }
    }
}

/// The budget's status over the pods it selects, and when to look again (an evicted
/// pod's entry expiring).
fn status(
    budget: &PodDisruptionBudget,
    pods: &[&Pod],
    snapshot: &Snapshot,
    now: u64,
) -> (PodDisruptionBudgetStatus, Option<Duration>) {
    let old = budget.status.clone().unwrap_or_default();
    // Evicted pods not yet deleting stay out of the healthy count until they are, or
    // until the deletion timeout says their deletion is not coming.
    let mut disrupted = BTreeMap::new();
    let mut recheck: Option<Duration> = None;
    for pod in pods {
        let Some(at) = old.disrupted_pods.get(&pod.metadata.name) else {
            continue;
        };
        if pod_is_terminating(pod) {
            continue;
        }
        let expires = parse_rfc3339(at).unwrap_or(0) + DELETION_TIMEOUT.as_secs();
        if expires > now {
            disrupted.insert(pod.metadata.name.clone(), at.clone());
            let left = Duration::from_secs(expires - now);
            recheck = Some(recheck.map_or(left, |r| r.min(left)));
        }
    }
    let current_healthy = pods
        .iter()
        .filter(|pod| {
            !pod_is_terminating(pod)
                && !disrupted.contains_key(&pod.metadata.name)
                && pod_is_ready(pod)
        })
        .count();
    let current_healthy = i64::try_from(current_healthy).unwrap_or(i64::MAX);
    let spec = &budget.spec;
    let counts = match (&spec.max_unavailable, &spec.min_available) {
        (Some(max), _) => expected_scale(pods, snapshot).map(|expected| {
            let unavailable = scaled(Some(max), expected, true, 0);
            (expected, (expected - unavailable).max(0))
        }),
        (None, Some(IntOrString::Int(min))) => {
            let pods = i64::try_from(pods.len()).unwrap_or(i64::MAX);
            Ok((pods, i64::from(*min)))
        }
        (None, Some(min)) => expected_scale(pods, snapshot)
            .map(|expected| (expected, scaled(Some(min), expected, true, 0))),
        (None, None) => Ok((0, 0)),
    };
    let count = |n: i64| i32::try_from(n).unwrap_or(i32::MAX);
    let (expected, desired, allowed, condition) = match counts {
        Ok((expected, desired)) => {
            let allowed = if expected <= 0 {
                0
            } else {
                (current_healthy - desired).max(0)
            };
            let (state, reason, message) = if allowed > 0 {
                ("True", "SufficientPods", String::new())
            } else {
                ("False", "InsufficientPods", String::new())
            };
            (expected, desired, allowed, (state, reason, message))
        }
        // As Kubernetes' fail-safe: nothing may be evicted while the budget cannot be
        // worked out.
        Err(message) => (0, 0, 0, ("False", "SyncFailed", message)),
    };
    let (state, reason, message) = condition;
    let previous = old
        .conditions
        .iter()
        .find(|c| c.type_ == "DisruptionAllowed");
    let last_transition_time = match previous {
        Some(c) if c.status == state => c.last_transition_time.clone(),
        _ => rfc3339(now),
    };
    let status = PodDisruptionBudgetStatus {
        observed_generation: budget.metadata.generation,
        disrupted_pods: disrupted,
        disruptions_allowed: count(allowed),
        current_healthy: count(current_healthy),
        desired_healthy: count(desired),
        expected_pods: count(expected),
        conditions: vec![Condition {
            type_: "DisruptionAllowed".to_owned(),
            status: state.to_owned(),
            reason: reason.to_owned(),
            message,
            last_transition_time,
            last_heartbeat_time: String::new(),
        }],
    };
    (status, recheck)
}

/// How many pods the controllers of `pods` want, each controller counted once
/// (Kubernetes' getExpectedScale): a Deployment's replicas for the pods of its
/// ReplicaSets, a lone ReplicaSet's own. Percentages and maxUnavailable need it.
fn expected_scale(pods: &[&Pod], snapshot: &Snapshot) -> Result<i64, String> {
    let mut scales: BTreeMap<String, i64> = BTreeMap::new();
    for pod in pods {
        let namespace = &pod.metadata.namespace;
        let Some(owner) = controller_of(&pod.metadata) else {
            return Err(format!(
                "found no controller for pod {:?}: a percentage or maxUnavailable counts from the pods' controllers",
                pod.metadata.name
            ));
        };
        if scales.contains_key(&owner.uid) {
            continue;
        }
        let scale = match owner.kind.as_str() {
            "ReplicaSet" => {
                let Some(rs) = snapshot.get::<ReplicaSet>(namespace, &owner.name) else {
                    continue;
                };
                match controller_of(&rs.metadata).filter(|o| o.kind == "Deployment") {
                    Some(parent) => {
                        if scales.contains_key(&parent.uid) {
                            continue;
                        }
                        let replicas = snapshot
                            .get::<Deployment>(namespace, &parent.name)
                            .map_or(0, |d| i64::from(d.spec.replicas));
                        scales.insert(parent.uid.clone(), replicas);
                        continue;
                    }
                    None => i64::from(rs.spec.replicas),
                }
            }
            kind => {
                return Err(format!(
                    "pod {:?} is controlled by a {kind}, which has no scale a percentage or maxUnavailable can count from",
                    pod.metadata.name
                ));
            }
        };
        scales.insert(owner.uid.clone(), scale);
    }
    Ok(scales.values().sum())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        controllers::{Settings, fixtures::typed},
        objects::Kind as _,
    };

    fn budget(spec: serde_json::Value) -> PodDisruptionBudget {
        typed(
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "web", "namespace": "default", "uid": "pdb", "generation": 2},
            "spec": spec}),
        )
    }

    fn pod(name: &str, ready: bool) -> Pod {
        typed(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "rs", "controller": true}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
    }

    fn run(budget: PodDisruptionBudget, pods: Vec<Pod>, now: u64) -> PodDisruptionBudgetStatus {
        let deployment: Deployment = typed(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "deploy"},
            "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}));
        let rs: ReplicaSet = typed(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-abc", "namespace": "default", "uid": "rs",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "deploy", "controller": true}]},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}));
        let mut objects = vec![
            budget.into_object(),
            deployment.into_object(),
            rs.into_object(),
        ];
        objects.extend(pods.into_iter().map(Pod::into_object));
        let snapshot = Snapshot::from_objects(objects, 1);
        let budget = snapshot
            .get::<PodDisruptionBudget>("default", "web")
            .expect("budget");
        let outcome = DisruptionController.reconcile(
            budget,
            &snapshot,
            &Context {
                now,
                settings: Settings::default(),
            },
        );
        match outcome.writes.as_slice() {
            [Write::UpdateStatus(object)] => PodDisruptionBudget::of(object)
                .and_then(|b| b.status.clone())
                .expect("a budget's status"),
            other => panic!("{other:?}"),
        }
    }

    fn ready_pods(n: usize) -> Vec<Pod> {
        (0..n).map(|i| pod(&format!("web-{i}"), true)).collect()
    }

    #[test]
    fn min_available_as_a_number_counts_the_pods() {
        let status = run(
            budget(json!({"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}})),
            vec![pod("a", true), pod("b", true), pod("c", false)],
            1_000,
        );
        assert_eq!(
            (
                status.current_healthy,
                status.desired_healthy,
                status.expected_pods,
                status.disruptions_allowed,
                status.observed_generation
            ),
            (2, 2, 3, 0, 2)
        );
        assert_eq!(status.conditions[0].reason, "InsufficientPods");
    }

    #[test]
    fn max_unavailable_and_percentages_count_from_the_deployment() {
        let status = run(
            budget(json!({"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}})),
            ready_pods(4),
            1_000,
        );
        assert_eq!((status.expected_pods, status.desired_healthy), (4, 3));
        assert_eq!(status.disruptions_allowed, 1);
        assert_eq!(status.conditions[0].status, "True");
        // 50% of 4, rounded up.
        let status = run(
            budget(json!({"minAvailable": "50%", "selector": {"matchLabels": {"app": "web"}}})),
            ready_pods(3),
            1_000,
        );
        assert_eq!((status.desired_healthy, status.disruptions_allowed), (2, 1));
    }

    #[test]
    fn evicted_pods_are_not_healthy_until_their_deletion_times_out() {
        let mut evicted = budget(json!({"minAvailable": 2, "selector": {}}));
        evicted.status = Some(PodDisruptionBudgetStatus {
            disrupted_pods: [("web-0".to_owned(), rfc3339(1_000))].into(),
            ..PodDisruptionBudgetStatus::default()
        });
        let status = run(evicted.clone(), ready_pods(3), 1_010);
        assert_eq!((status.current_healthy, status.disruptions_allowed), (2, 0));
        assert!(status.disrupted_pods.contains_key("web-0"));
        let later = 1_000 + DELETION_TIMEOUT.as_secs() + 1;
        let status = run(evicted, ready_pods(3), later);
        assert_eq!((status.current_healthy, status.disruptions_allowed), (3, 1));
        assert!(status.disrupted_pods.is_empty());
    }

    #[test]
    fn no_selector_covers_nothing_and_pods_without_a_controller_fail_safe() {
        let status = run(budget(json!({"minAvailable": 1})), ready_pods(3), 1_000);
        assert_eq!((status.expected_pods, status.disruptions_allowed), (0, 0));
        let mut lone = pod("lone", true);
        lone.metadata.owner_references.clear();
        let status = run(
            budget(json!({"maxUnavailable": "10%", "selector": {"matchLabels": {"app": "web"}}})),
            vec![lone],
            1_000,
        );
        assert_eq!(status.conditions[0].reason, "SyncFailed");
        assert_eq!(status.disruptions_allowed, 0);
    }
}
