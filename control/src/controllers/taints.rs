//! The taint manager: evicts the pods of a node with `NoExecute` taints, as Kubernetes'
//! does. A pod that does not tolerate one of them is deleted at once; one that tolerates
//! them all is deleted when the shortest `tolerationSeconds` of the tolerations it uses
//! has passed since the taint was added (`timeAdded`), and stays if none sets one.

use std::time::Duration;

use berth_api::{
    core::{Node, Pod},
    scheduling::{NO_EXECUTE, Taint},
};

use super::{
    Change, Context, Outcome, Reconciler, Snapshot, Write, nodes::pods_on, pod_is_terminal,
    pod_is_terminating, reference,
};
use crate::util;

pub struct TaintManager;

fn no_execute(node: &Node) -> impl Iterator<Item = &Taint> {
    node.spec.taints.iter().filter(|t| t.effect == NO_EXECUTE)
}

/// When (unix seconds) `pod` must leave a node with `taints`, each added at the time its
/// `timeAdded` says (not before `since`); None: it may stay.
pub fn eviction_time<'a>(
    pod: &Pod,
    taints: impl IntoIterator<Item = &'a Taint>,
    since: u64,
) -> Option<u64> {
    let mut at: Option<u64> = None;
    for taint in taints {
        let added = taint
            .time_added
            .as_deref()
            .and_then(util::parse_rfc3339)
            .unwrap_or(since)
            .max(since);
        let used: Vec<_> = pod
            .spec
            .tolerations
            .iter()
            .filter(|t| t.tolerates(taint))
            .collect();
        let seconds = if used.is_empty() {
            Some(0)
        } else {
            used.iter()
                .filter_map(|t| t.toleration_seconds)
                .min()
                .map(|s| u64::try_from(s).unwrap_or(0))
        };
        if let Some(seconds) = seconds {
            let due = added.saturating_add(seconds);
            at = Some(at.map_or(due, |at| at.min(due)));
        }
    }
    at
}

impl Reconciler for TaintManager {
    type Object = Node;

    fn name(&self) -> &'static str {
        "taint-eviction"
    }

    /// A node whose `NoExecute` taints changed, and the node of a pod bound to a node
    /// that has some (its tolerations may have changed, or it just arrived).
    fn affected(&self, change: &Change, snapshot: &Snapshot) -> Vec<(String, String)> {
        if let Some(node) = change.as_kind::<Node>() {
            let before = change.previous_as::<Node>();
            let changed = before.is_none_or(|b| no_execute(b).ne(no_execute(node)));
            if !change.deleted && changed && no_execute(node).next().is_some() {
                return vec![change.key()];
            }
        } else if let Some(pod) = change.as_kind::<Pod>()
            && !change.deleted
            && !pod.spec.node_name.is_empty()
            && snapshot
                .get::<Node>("", &pod.spec.node_name)
                .is_some_and(|node| no_execute(node).next().is_some())
        {
            return vec![(String::new(), pod.spec.node_name.clone())];
        }
        Vec::new()
    }

    fn reconcile(&self, node: &Node, snapshot: &Snapshot, ctx: &Context) -> Outcome {
        if no_execute(node).next().is_none() {
            return Outcome::default();
        }
        // No agent confirms a graceful deletion on a node that is not ready.
        let ready = node.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        let mut writes = Vec::new();
        let mut next: Option<u64> = None;
        for pod in pods_on(snapshot, node) {
            if pod_is_terminal(pod) || (pod_is_terminating(pod) && ready) {
                continue;
            }
            let Some(at) = eviction_time(pod, no_execute(node), ctx.settings.observing_since)
            else {
                continue;
            };
            if at > ctx.now {
                next = Some(next.map_or(at, |n| n.min(at)));
                continue;
            }
            writes.push(Write::Delete {
                rt: &berth_api::kinds::PODS,
                namespace: pod.metadata.namespace.clone(),
                name: pod.metadata.name.clone(),
                force: !ready,
            });
            writes.push(Write::Event {
                involved: reference(pod),
                reason: "TaintManagerEviction".to_owned(),
                message: format!(
                    "Marking for deletion Pod {}/{}",
                    pod.metadata.namespace, pod.metadata.name
                ),
                type_: "Normal",
            });
        }
        Outcome {
            writes,
            requeue_after: next.map(|at| Duration::from_secs(at.saturating_sub(ctx.now).max(1))),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::controllers::{Settings, fixtures::typed};

    fn node(taints: serde_json::Value) -> Node {
        typed(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
            "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        )
    }

    fn pod(name: &str, tolerations: serde_json::Value) -> Pod {
        typed(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": "n1", "tolerations": tolerations,
                "containers": [{"name": "c", "image": "i"}]}}))
    }

    fn evicted(node: &Node, pods: &[Pod], now: u64) -> (Vec<String>, Option<Duration>) {
        let mut objects = vec![node.clone().into_object()];
        objects.extend(pods.iter().cloned().map(Kind::into_object));
        let snapshot = Snapshot::from_objects(objects, 1);
        let ctx = Context {
            now,
            settings: Settings::default(),
        };
        let outcome = TaintManager.reconcile(node, &snapshot, &ctx);
        let names = outcome
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::Delete { name, force, .. } => {
                    assert!(!force, "a ready node's agent stops the pod");
                    Some(name.clone())
                }
                _ => None,
            })
            .collect();
        (names, outcome.requeue_after)
    }

    use crate::objects::Kind;

    #[test]
    fn no_execute_evicts_at_once_or_after_the_toleration_seconds() {
        let n = node(json!([{"key": "k", "value": "v", "effect": "NoExecute",
            "timeAdded": util::rfc3339(1000)}]));
        let pods = [
            pod("bare", json!([])),
            pod(
                "brief",
                json!([{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]),
            ),
            pod(
                "shortest",
                json!([
                    {"key": "k", "operator": "Exists", "tolerationSeconds": 100},
                    {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 10},
                ]),
            ),
            pod(
                "forever",
                json!([{"key": "k", "value": "v", "effect": "NoExecute"}]),
            ),
            pod(
                "wrong-value",
                json!([{"key": "k", "value": "w", "effect": "NoExecute", "tolerationSeconds": 500}]),
            ),
        ];
        assert_eq!(
            evicted(&n, &pods, 1001),
            (
                vec!["bare".to_owned(), "wrong-value".to_owned()],
                Some(Duration::from_secs(9))
            )
        );
        assert_eq!(
            evicted(&n, &pods[1..4], 1010),
            (vec!["shortest".to_owned()], Some(Duration::from_secs(20)))
        );
        assert_eq!(
            evicted(&n, &[pods[1].clone(), pods[3].clone()], 1030),
            (vec!["brief".to_owned()], None)
        );
        // A control plane restarted at 2000 counts a toleration's seconds from then.
        let taint: Taint =
            serde_json::from_value(json!({"key": "k", "value": "v", "effect": "NoExecute",
                "timeAdded": util::rfc3339(1000)}))
            .expect("taint");
        assert_eq!(eviction_time(&pods[1], [&taint], 0), Some(1030));
        assert_eq!(eviction_time(&pods[1], [&taint], 2000), Some(2030));
        assert_eq!(
            eviction_time(&pods[3], [&taint], 0),
            None,
            "no seconds: stays"
        );
        let untainted = node(json!([{"key": "k", "effect": "NoSchedule"}]));
        assert_eq!(evicted(&untainted, &pods, 5000), (vec![], None));
    }
}
