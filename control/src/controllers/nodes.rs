//! Node lifecycle: a node whose agent stopped heartbeating is marked `Ready=Unknown`,
//! and a node is tainted the Kubernetes way while it is not ready
//! (`node.kubernetes.io/not-ready`, Ready False) or unreachable
//! (`node.kubernetes.io/unreachable`, Ready Unknown), `NoSchedule` and `NoExecute`, and
//! while it is cordoned (`node.kubernetes.io/unschedulable:NoSchedule`). Its pods are
//! then evicted by the taint manager ([`super::taints`]) when their tolerations run out:
//! the default ones admission gives every pod last `--pod-eviction-timeout`.

use std::time::Duration;

use berth_api::{
    core::{Condition, Node, Pod},
    scheduling::{
        NO_EXECUTE, NO_SCHEDULE, TAINT_NOT_READY, TAINT_UNREACHABLE, TAINT_UNSCHEDULABLE, Taint,
    },
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

pub(super) fn pods_on<'a>(snapshot: &'a Snapshot, node: &'a Node) -> impl Iterator<Item = &'a Pod> {
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

/// The taints this controller owns.
const LIFECYCLE_TAINTS: [&str; 3] = [TAINT_NOT_READY, TAINT_UNREACHABLE, TAINT_UNSCHEDULABLE];

/// The node's taints as its Ready status (None: never reported) and cordon want them:
/// the taints of others kept, this controller's added (`NoExecute` ones stamped with
/// `now`: tolerations count from then) or kept as they are, or removed.
fn lifecycle_taints(node: &Node, ready: Option<&str>, now: u64) -> Vec<Taint> {
    let mut wanted: Vec<(&str, &str)> = Vec::new();
    let down = match ready {
        Some("False") => Some(TAINT_NOT_READY),
        Some("True") | None => None,
        Some(_) => Some(TAINT_UNREACHABLE),
    };
    if let Some(key) = down {
        wanted.extend([(key, NO_SCHEDULE), (key, NO_EXECUTE)]);
    }
    if node.spec.unschedulable {
        wanted.push((TAINT_UNSCHEDULABLE, NO_SCHEDULE));
    }
    let mut taints: Vec<Taint> = node
        .spec
        .taints
        .iter()
        .filter(|t| {
            !LIFECYCLE_TAINTS.contains(&t.key.as_str())
                || wanted.contains(&(t.key.as_str(), t.effect.as_str()))
        })
        .cloned()
        .collect();
    for (key, effect) in wanted {
        if !taints.iter().any(|t| t.key == key && t.effect == effect) {
            taints.push(Taint {
                key: key.to_owned(),
                value: String::new(),
                effect: effect.to_owned(),
                time_added: (effect == NO_EXECUTE).then(|| util::rfc3339(now)),
            });
        }
    }
    taints
}

impl Reconciler for NodeLifecycle {
    type Object = Node;

    fn name(&self) -> &'static str {
        "node-lifecycle"
    }

    fn reconcile(&self, node: &Node, snapshot: &Snapshot, ctx: &Context) -> Outcome {
        let grace = ctx.settings.node_grace.as_secs();
        let Some(ready) = ready_condition(node) else {
            // Never reported: nothing to judge yet but its cordon.
            let taints = lifecycle_taints(node, None, ctx.now);
            if taints == node.spec.taints {
                return Outcome::default();
            }
            let mut tainted = node.clone();
            tainted.spec.taints = taints;
            return Outcome::writes(vec![Write::update(tainted)]);
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
        let requeue = Duration::from_secs(grace.saturating_sub(silent_for).max(1));
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
            // The taints follow once the status is stored: the change brings it back here.
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
        } else {
            let taints = lifecycle_taints(node, Some(status), ctx.now);
            if taints != node.spec.taints {
                let mut tainted = node.clone();
                tainted.spec.taints = taints;
                writes.push(Write::update(tainted));
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

    /// The taints `outcome` writes on the node, as (key, effect, stamped).
    fn written_taints(outcome: &Outcome) -> Vec<(String, String, bool)> {
        outcome
            .writes
            .iter()
            .find_map(|w| match w {
                Write::Update(Object::Node(node)) => Some(
                    node.spec
                        .taints
                        .iter()
                        .map(|t| (t.key.clone(), t.effect.clone(), t.time_added.is_some()))
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_default()
    }

    fn taints(pairs: &[(&str, &str)]) -> Vec<(String, String, bool)> {
        pairs
            .iter()
            .map(|(k, e)| ((*k).to_owned(), (*e).to_owned(), *e == NO_EXECUTE))
            .collect()
    }

    #[test]
    fn silence_marks_unknown_then_taints_unreachable() {
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
        let outcome = NodeLifecycle.reconcile(&unknown, &with_pod(unknown.clone()), &ctx(1042));
        assert_eq!(
            written_taints(&outcome),
            taints(&[
                (TAINT_UNREACHABLE, NO_SCHEDULE),
                (TAINT_UNREACHABLE, NO_EXECUTE)
            ])
        );
        assert!(
            !outcome
                .writes
                .iter()
                .any(|w| matches!(w, Write::Delete { .. })),
            "eviction is the taint manager's, by tolerations"
        );

        // Not ready (the agent says so) replaces unreachable; ready again clears them; a
        // user's taint stays throughout.
        let mut down = node("False", 1100, 1100);
        down.spec.taints = vec![Taint {
            key: "dedicated".to_owned(),
            value: "db".to_owned(),
            effect: NO_SCHEDULE.to_owned(),
            time_added: None,
        }];
        let outcome = NodeLifecycle.reconcile(&down, &with_pod(down.clone()), &ctx(1101));
        assert_eq!(
            written_taints(&outcome),
            [
                ("dedicated".to_owned(), NO_SCHEDULE.to_owned(), false),
                (TAINT_NOT_READY.to_owned(), NO_SCHEDULE.to_owned(), false),
                (TAINT_NOT_READY.to_owned(), NO_EXECUTE.to_owned(), true),
            ]
        );
        let mut up = node("True", 1200, 1200);
        up.spec.taints = lifecycle_taints(&down, Some("False"), 1101);
        up.spec.unschedulable = true;
        let outcome = NodeLifecycle.reconcile(&up, &with_pod(up.clone()), &ctx(1201));
        assert_eq!(
            written_taints(&outcome),
            [
                ("dedicated".to_owned(), NO_SCHEDULE.to_owned(), false),
                (
                    TAINT_UNSCHEDULABLE.to_owned(),
                    NO_SCHEDULE.to_owned(),
                    false
                ),
            ],
            "cordoned"
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
        restarted.now = 2041;
        let outcome = NodeLifecycle.reconcile(&n, &with_pod(n.clone()), &restarted);
        assert!(
            matches!(outcome.writes.first(), Some(Write::UpdateStatus(_))),
            "silent for a full grace period since the restart: {outcome:?}"
        );
    }
}
