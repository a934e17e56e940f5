//! Node lifecycle: a node whose agent stopped heartbeating is marked `Ready=Unknown`;
//! after the eviction timeout its pods are deleted so their ReplicaSets replace them
//! on live nodes.

use std::time::Duration;

use berth_api::{
    core::{Condition, Node, Pod},
    kinds::PODS,
};

use super::{Context, Outcome, Reconciler, Snapshot, Write, reference};
use crate::util;

pub struct NodeLifecycle;

fn ready_condition(node: &Node) -> Option<&Condition> {
    node.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
}

fn timestamp(text: &str) -> Option<u64> {
    util::parse_rfc3339(text)
}

fn pods_on<'a>(snapshot: &'a Snapshot, node: &'a Node) -> impl Iterator<Item = &'a Pod> {
    snapshot
        .list::<Pod>(None)
        .filter(move |pod| pod.spec.node_name == node.metadata.name)
}

/// The pod with its Ready condition False (reason NodeNotReady), if it was Ready.
fn marked_not_ready(pod: &Pod) -> Option<Pod> {
    let mut pod = pod.clone();
    let condition = pod
        .status
        .as_mut()?
        .conditions
        .iter_mut()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    *condition = Condition {
        type_: "Ready".to_owned(),
        status: "False".to_owned(),
        reason: "NodeNotReady".to_owned(),
        ..condition.clone()
    };
    Some(pod)
}

impl Reconciler for NodeLifecycle {
    type Object = Node;

    fn name(&self) -> &'static str {
        "node-lifecycle"
    }

    fn reconcile(&self, node: &Node, snapshot: &Snapshot, ctx: &Context) -> Outcome {
        let grace = ctx.settings.node_grace.as_secs();
        let eviction = ctx.settings.pod_eviction_timeout.as_secs();
        let Some(ready) = ready_condition(node) else {
            // Never reported: nothing to judge yet.
            return Outcome::default();
        };
        let mut writes = Vec::new();
        let observing_since = ctx.settings.observing_since;
        let heartbeat = timestamp(&ready.last_heartbeat_time).unwrap_or(0);
        let status = if ready.status.is_empty() {
            "Unknown"
        } else {
            ready.status.as_str()
        };
        let silent_for = ctx.now.saturating_sub(heartbeat.max(observing_since));
        let mut requeue = Duration::from_secs(grace.saturating_sub(silent_for).max(1));
        if status == "True" && silent_for > grace {
            let mut updated = node.clone();
            if let Some(node_status) = updated.status.as_mut() {
                for condition in node_status
                    .conditions
                    .iter_mut()
                    .filter(|c| c.type_ == "Ready")
                {
                    *condition = Condition {
                        type_: "Ready".to_owned(),
                        status: "Unknown".to_owned(),
                        reason: "NodeStatusUnknown".to_owned(),
                        message: format!("no heartbeat for {silent_for}s"),
                        last_heartbeat_time: ready.last_heartbeat_time.clone(),
                        last_transition_time: util::rfc3339(ctx.now),
                    };
                }
            }
            writes.push(Write::update_status(updated));
            // As Kubernetes does: its pods stop being Ready, so the Services' endpoints
            // drop them now, not at eviction. The agent reports them again when it returns.
            for pod in pods_on(snapshot, node) {
                if let Some(not_ready) = marked_not_ready(pod) {
                    writes.push(Write::update_status(not_ready));
                }
            }
            writes.push(Write::Event {
                involved: reference(node),
                reason: "NodeNotReady".to_owned(),
                message: format!(
                    "Node {} stopped posting status for {silent_for}s",
                    node.metadata.name
                ),
                type_: "Warning",
            });
            requeue = Duration::from_secs(eviction.max(1));
        } else if status != "True" {
            let since = timestamp(&ready.last_transition_time).unwrap_or(heartbeat);
            let down_for = ctx.now.saturating_sub(since.max(observing_since));
            if down_for >= eviction {
                for pod in pods_on(snapshot, node) {
                    writes.push(Write::Delete {
                        rt: &PODS,
                        namespace: pod.metadata.namespace.clone(),
                        name: pod.metadata.name.clone(),
                        // The node is gone: no agent will confirm a graceful deletion.
                        force: true,
                    });
                }
                requeue = Duration::from_secs(eviction.max(1));
            } else {
                requeue = Duration::from_secs((eviction - down_for).max(1));
            }
        }
        Outcome {
            writes,
            requeue_after: Some(requeue),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        controllers::{Settings, fixtures::typed},
        objects::{Kind as _, Object},
    };

    fn node(status: &str, heartbeat: u64, transition: u64) -> Node {
        typed(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
            "status": {"conditions": [{"type": "Ready", "status": status,
                "lastHeartbeatTime": util::rfc3339(heartbeat), "lastTransitionTime": util::rfc3339(transition)}]}}),
        )
    }

    fn ctx(now: u64) -> Context {
        Context {
            now,
            settings: Settings {
                node_grace: Duration::from_secs(40),
                pod_eviction_timeout: Duration::from_secs(60),
                ..Settings::default()
            },
        }
    }

    fn with_pod(node: Node) -> Snapshot {
        let pod: Pod = typed(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]}}),
        );
        Snapshot::from_objects(vec![node.into_object(), pod.into_object()], 1)
    }

    #[test]
    fn a_fresh_heartbeat_changes_nothing() {
        let n = node("True", 1000, 900);
        let outcome = NodeLifecycle.reconcile(&n, &with_pod(n.clone()), &ctx(1010));
        assert!(outcome.writes.is_empty());
        assert_eq!(outcome.requeue_after, Some(Duration::from_secs(30)));
    }

    #[test]
    fn silence_marks_unknown_then_evicts() {
        let n = node("True", 1000, 900);
        let outcome = NodeLifecycle.reconcile(&n, &with_pod(n.clone()), &ctx(1041));
        let Some(Write::UpdateStatus(Object::Node(object))) = outcome.writes.first() else {
            panic!("{outcome:?}")
        };
        assert_eq!(
            ready_condition(object).map(|c| c.status.as_str()),
            Some("Unknown")
        );

        let unknown = node("Unknown", 1000, 1041);
        let early = NodeLifecycle.reconcile(&unknown, &with_pod(unknown.clone()), &ctx(1060));
        assert!(early.writes.is_empty(), "not yet past the eviction timeout");
        let late = NodeLifecycle.reconcile(&unknown, &with_pod(unknown.clone()), &ctx(1101));
        assert!(
            matches!(late.writes.as_slice(), [Write::Delete { name, .. }] if name == "p"),
            "{late:?}"
        );
    }

    #[test]
    fn a_silent_nodes_ready_pods_stop_being_ready() {
        let n = node("True", 1000, 900);
        let mut pod: Pod = typed(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}));
        let snapshot =
            Snapshot::from_objects(vec![n.clone().into_object(), pod.clone().into_object()], 1);
        let outcome = NodeLifecycle.reconcile(&n, &snapshot, &ctx(1041));
        let updated: Vec<&Pod> = outcome
            .writes
            .iter()
            .filter_map(|write| match write {
                Write::UpdateStatus(Object::Pod(pod)) => Some(pod),
                _ => None,
            })
            .collect();
        if let Some(status) = pod.status.as_mut() {
            status.conditions[0] =
                typed(json!({"type": "Ready", "status": "False", "reason": "NodeNotReady"}));
        }
        assert_eq!(updated, [&pod]);
    }

    #[test]
    fn a_restarted_control_plane_gives_every_node_a_full_grace_period() {
        // Last heartbeat long ago, but the controllers only started watching at 2000.
        let mut restarted = ctx(2030);
        restarted.settings.observing_since = 2000;
        let n = node("True", 1000, 900);
        let outcome = NodeLifecycle.reconcile(&n, &with_pod(n.clone()), &restarted);
        assert!(outcome.writes.is_empty(), "{outcome:?}");

        // A node already Unknown before the restart is not evicted at once either.
        let unknown = node("Unknown", 1000, 1041);
        let outcome = NodeLifecycle.reconcile(&unknown, &with_pod(unknown.clone()), &restarted);
        assert!(outcome.writes.is_empty(), "{outcome:?}");
        restarted.now = 2061;
        let outcome = NodeLifecycle.reconcile(&unknown, &with_pod(unknown.clone()), &restarted);
        assert!(
            !outcome.writes.is_empty(),
            "evicted once the timeout passed since the restart"
        );
    }
}
