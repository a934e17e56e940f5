//! The Eviction subresource (`POST .../pods/NAME/eviction`): a pod deletion that first
//! spends one of the disruptions its PodDisruptionBudget allows, as Kubernetes' eviction
//! REST handler does. The budget is written with its stored revision as precondition, so
//! of two evictions racing for a budget's last allowed disruption one wins and the other
//! reads the budget again and is refused.

use berth_api::{
    core::Pod,
    disruption::{EVICTION_REFUSED, PodDisruptionBudget},
    kinds::{PDBS, PODS},
};
use serde_json::Value;

use super::{
    DeleteOptions, Error, MAX_RETRIES, Registry, Result, decode_typed, encode, key, prefix,
};
use crate::{
    store::{KeyValue, Op, Precondition},
    util,
};

impl Registry {
    /// Evicts pod `name`: deletes it with `options` if no budget covering it forbids it
    /// now, spending one allowed disruption of that budget first.
    pub async fn evict(
        &self,
        namespace: &str,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Value> {
        let mut attempt = 0;
        loop {
            let Some(kv) = self.read(key(&PODS, namespace, name)).await? else {
                return Err(Error::not_found("Pod", name));
            };
            let pod: Pod = decode_typed(&kv)?;
            // What is not running, or already going, disrupts nothing (Kubernetes'
            // canIgnorePDB).
            let pending = pod.status.as_ref().is_none_or(|s| s.phase == "Pending");
            if pod.is_terminal() || pod.is_terminating() || pending {
                return self.delete(&PODS, namespace, name, options).await;
            }
            let mut budgets = Vec::new();
            for kv in self.read_prefix(prefix(&PDBS, Some(namespace))).await? {
                let budget: PodDisruptionBudget = decode_typed(&kv)?;
                if budget.selects(&pod.metadata.labels) {
                    budgets.push((kv, budget));
                }
            }
            let (budget_kv, budget) = match budgets.len() {
                0 => return self.delete(&PODS, namespace, name, options).await,
                1 => budgets.swap_remove(0),
                _ => {
                    return Err(Error::internal(format!(
                        "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support ({})",
                        budgets
                            .iter()
                            .map(|(_, b)| b.metadata.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            };
            match spend(&budget, &pod)? {
                None => return self.delete(&PODS, namespace, name, options).await,
                Some(updated) => match self.commit(budget_write(&budget_kv, &updated)?).await {
                    Ok(_) => return self.delete(&PODS, namespace, name, options).await,
                    // Another eviction (or the disruption controller) wrote the budget
                    // since it was read: decide again on what it says now.
                    Err(e) if e.is_conflict() && attempt < MAX_RETRIES => attempt += 1,
                    Err(e) => return Err(e),
                },
            }
        }
    }
}

/// What evicting `pod` costs `budget` (Kubernetes' checkAndDecrement and its rules for
/// pods that are not Ready): one allowed disruption, as the budget to be written, or
/// None when the pod does not count as healthy and the policy lets it go for free.
fn spend(budget: &PodDisruptionBudget, pod: &Pod) -> Result<Option<PodDisruptionBudget>> {
    let name = &budget.metadata.name;
    let status = budget.status.clone().unwrap_or_default();
    let refused = |cause: String| Error::TooManyRequests {
        message: EVICTION_REFUSED.to_owned(),
        cause,
    };
    if status.observed_generation < budget.metadata.generation {
        return Err(refused(format!(
            "The disruption budget {name} is still being processed by the server."
        )));
    }
    if !pod.is_ready() {
        let always = budget.spec.unhealthy_pod_eviction_policy.as_deref() == Some("AlwaysAllow");
        let healthy_budget =
            status.current_healthy >= status.desired_healthy && status.desired_healthy > 0;
        if always || healthy_budget {
            return Ok(None);
        }
    }
    if status.disruptions_allowed < 0 {
        return Err(Error::Forbidden(format!(
            "pdb {name} has a negative number of disruptions allowed"
        )));
    }
    if status.disruptions_allowed == 0 {
        return Err(refused(format!(
            "The disruption budget {name} needs {} healthy pods and has {} currently",
            status.desired_healthy, status.current_healthy
        )));
    }
    let mut updated = budget.clone();
    let mut status = status;
    status.disruptions_allowed -= 1;
    status
        .disrupted_pods
        .insert(pod.metadata.name.clone(), util::rfc3339_now());
    updated.status = Some(status);
    Ok(Some(updated))
}

/// The budget written over its stored revision, or not at all.
fn budget_write(kv: &KeyValue, budget: &PodDisruptionBudget) -> Result<Vec<Op>> {
    Ok(vec![Op::Put {
        key: kv.key.clone(),
        value: encode(budget)?,
        precondition: Precondition::ModRevision(kv.mod_revision),
    }])
}

#[cfg(test)]
mod tests {
    use berth_api::disruption::PodDisruptionBudgetStatus;
    use serde_json::json;

    use super::*;

    fn budget(policy: Option<&str>, allowed: i32, observed: i64) -> PodDisruptionBudget {
        let mut budget: PodDisruptionBudget = serde_json::from_value(json!({
            "metadata": {"name": "zk-pdb", "generation": 2},
            "spec": {"minAvailable": 2, "selector": {}, "unhealthyPodEvictionPolicy": policy}}))
        .expect("a budget");
        budget.status = Some(PodDisruptionBudgetStatus {
            observed_generation: observed,
            disruptions_allowed: allowed,
            current_healthy: 2 + allowed,
            desired_healthy: 2,
            ..PodDisruptionBudgetStatus::default()
        });
        budget
    }

    fn pod(ready: bool) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "zk-0"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
        .expect("a pod")
    }

    fn refusal(result: Result<Option<PodDisruptionBudget>>) -> String {
        match result {
            Err(Error::TooManyRequests { message, cause }) => {
                assert_eq!(message, EVICTION_REFUSED);
                cause
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_ready_pod_spends_an_allowed_disruption_or_is_refused() {
        let spent = spend(&budget(None, 1, 2), &pod(true))
            .expect("allowed")
            .expect("spends one");
        let status = spent.status.expect("status");
        assert_eq!(status.disruptions_allowed, 0);
        assert!(status.disrupted_pods.contains_key("zk-0"));
        assert_eq!(
            refusal(spend(&budget(None, 0, 2), &pod(true))),
            "The disruption budget zk-pdb needs 2 healthy pods and has 2 currently"
        );
        // A budget the controller has not caught up with refuses everything.
        assert!(refusal(spend(&budget(None, 1, 1), &pod(true))).contains("still being processed"));
    }

    #[test]
    fn a_pod_that_is_not_ready_goes_free_while_the_budget_is_met_or_always_allowed() {
        assert_eq!(spend(&budget(None, 0, 2), &pod(false)).expect("free"), None);
        let mut short = budget(None, 0, 2);
        if let Some(status) = short.status.as_mut() {
            status.current_healthy = 1;
        }
        refusal(spend(&short, &pod(false)));
        let mut always = budget(Some("AlwaysAllow"), 0, 2);
        if let Some(status) = always.status.as_mut() {
            status.current_healthy = 1;
        }
        assert_eq!(spend(&always, &pod(false)).expect("free"), None);
    }
}
