//! DaemonSet → one pod per eligible node: a node is eligible when the pod, with the
//! tolerations Kubernetes gives every daemon pod, passes its node selector, required
//! node affinity and taints ([`node_admits`]). Pods are bound to their node when made
//! (the node is the point), follow nodes joining and leaving, and take a new template
//! node by node within maxUnavailable (or beside the old pod within maxSurge), or only
//! when deleted (`OnDelete`).

use std::collections::{BTreeMap, BTreeSet};

use berth_api::{
    apps::{DaemonSet, DaemonSetStatus},
    core::{IntOrString, Node, Pod, PodSpec, node_admits},
    meta::ObjectMeta,
    scheduling::{
        NO_EXECUTE, NO_SCHEDULE, TAINT_NOT_READY, TAINT_UNREACHABLE, TAINT_UNSCHEDULABLE,
        Toleration,
    },
};

use super::{
    Change, Context, Outcome, Reconciler, Snapshot, Write, controller_of, controller_uid,
    deployment::scaled, owner_reference, pod_is_ready, pod_is_terminal, pod_is_terminating,
    replicaset::free_name,
};
use crate::objects::Kind as _;

pub struct DaemonSetController;

/// Label that ties a daemon pod to the template (and ControllerRevision) it was made
/// from, Kubernetes' name for it.
pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";

/// What every daemon pod tolerates, as Kubernetes' DaemonSet controller adds: it stays
/// on a node that is not ready or unreachable, and goes on one under pressure or
/// cordoned (a node agent has to run there too).
const DAEMON_TOLERATIONS: [(&str, &str); 6] = [
    (TAINT_NOT_READY, NO_EXECUTE),
    (TAINT_UNREACHABLE, NO_EXECUTE),
    ("node.kubernetes.io/disk-pressure", NO_SCHEDULE),
    ("node.kubernetes.io/memory-pressure", NO_SCHEDULE),
    ("node.kubernetes.io/pid-pressure", NO_SCHEDULE),
    (TAINT_UNSCHEDULABLE, NO_SCHEDULE),
];

/// The spec of `ds`'s pods: its template's, with [`DAEMON_TOLERATIONS`] in place of
/// any toleration of the same key and effect.
pub fn daemon_pod_spec(ds: &DaemonSet) -> PodSpec {
    let mut spec = ds.spec.template.spec.clone();
    for (key, effect) in DAEMON_TOLERATIONS {
        spec.tolerations
            .retain(|t| !(t.key == key && t.effect == effect));
        spec.tolerations.push(Toleration {
            key: key.to_owned(),
            operator: "Exists".to_owned(),
            effect: effect.to_owned(),
            ..Toleration::default()
        });
    }
    spec
}

/// What of a node decides whether daemon pods belong on it.
fn placement_inputs(node: &Node) -> (&BTreeMap<String, String>, &berth_api::core::NodeSpec) {
    (&node.metadata.labels, &node.spec)
}

impl Reconciler for DaemonSetController {
    type Object = DaemonSet;

    fn name(&self) -> &'static str {
        "daemonset"
    }

    fn affected(&self, change: &Change, snapshot: &Snapshot) -> Vec<(String, String)> {
        self.affected_batch(std::slice::from_ref(change), snapshot)
    }

    /// A DaemonSet when it or one of its pods changes; every DaemonSet when a node comes,
    /// goes, or changes its labels or spec (heartbeats, which only rewrite the status,
    /// do not count).
    fn affected_batch(&self, changes: &[Change], snapshot: &Snapshot) -> Vec<(String, String)> {
        let mut keys = Vec::new();
        let mut every = false;
        for change in changes {
            if change.as_kind::<DaemonSet>().is_some() {
                keys.push(change.key());
            } else if let Some(pod) = change.as_kind::<Pod>() {
                if let Some(owner) = controller_of(&pod.metadata)
                    && owner.kind == "DaemonSet"
                {
                    keys.push((pod.metadata.namespace.clone(), owner.name.clone()));
                }
            } else if let Some(node) = change.as_kind::<Node>() {
                every |= change.deleted
                    || change
                        .previous_as::<Node>()
                        .is_none_or(|old| placement_inputs(old) != placement_inputs(node));
            }
        }
        if every {
            keys.extend(
                snapshot
                    .list::<DaemonSet>(None)
                    .map(|ds| (ds.metadata.namespace.clone(), ds.metadata.name.clone())),
            );
        }
        keys
    }

    fn reconcile(&self, ds: &DaemonSet, snapshot: &Snapshot, _ctx: &Context) -> Outcome {
        let plan = plan(ds, snapshot);
        let mut writes = plan.writes;
        if writes.is_empty() && ds.status.as_ref() != Some(&plan.status) {
            let mut updated = ds.clone();
            updated.status = Some(plan.status);
            writes.push(Write::update_status(updated));
        }
        Outcome::writes(writes)
    }
}

struct Plan {
    writes: Vec<Write>,
    status: DaemonSetStatus,
}

fn plan(ds: &DaemonSet, snapshot: &Snapshot) -> Plan {
    let namespace = &ds.metadata.namespace;
    let uid = ds.metadata.uid.as_str();
    let spec = daemon_pod_spec(ds);
    let hash = ds.spec.template.hash();
    let nodes: BTreeMap<&str, &Node> = snapshot
        .list::<Node>(None)
        .map(|node| (node.metadata.name.as_str(), node))
        .collect();
    let eligible: BTreeSet<&str> = nodes
        .iter()
        .filter(|(_, node)| node_admits(&spec, node).is_ok())
        .map(|(name, _)| *name)
        .collect();
    let mut writes = Vec::new();
    let delete = |pod: &Pod, force: bool| Write::Delete {
        rt: Pod::resource_type(),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        force,
    };
    // Pods already going are not counted: their replacements start at once.
    let mut by_node: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for pod in snapshot
        .list::<Pod>(Some(namespace))
        .filter(|pod| controller_uid(&pod.metadata) == Some(uid) && !pod_is_terminating(pod))
    {
        if pod_is_terminal(pod) {
            // A daemon that exited is replaced, as Kubernetes does with failed ones.
            writes.push(delete(pod, false));
        } else {
            by_node
                .entry(pod.spec.node_name.as_str())
                .or_default()
                .push(pod);
        }
    }
    let mut misscheduled = 0;
    for (node, pods) in &by_node {
        if eligible.contains(node) {
            continue;
        }
        // A node that is gone confirms no deletion: its pods go at once.
        let gone = !nodes.contains_key(node);
        misscheduled += usize::from(!gone);
        writes.extend(pods.iter().map(|pod| delete(pod, gone)));
    }

    let updated = |pod: &&Pod| pod.metadata.labels.get(REVISION_HASH_LABEL) == Some(&hash);
    let desired = eligible.len();
    let total = i64::try_from(desired).unwrap_or(i64::MAX);
    let strategy = &ds.spec.update_strategy;
    let rolling = strategy.type_ == "RollingUpdate";
    let bounds = strategy.rolling_update.as_ref();
    let max_surge = scaled(bounds.and_then(|b| b.max_surge.as_ref()), total, true, 0);
    let max_unavailable = scaled(
        Some(
            bounds
                .and_then(|b| b.max_unavailable.as_ref())
                .unwrap_or(&IntOrString::Int(1)),
        ),
        total,
        true,
        0,
    );
    let mut creating: BTreeSet<String> = BTreeSet::new();
    let mut create = |node: &str, writes: &mut Vec<Write>| {
        let name = free_name(namespace, &ds.metadata.name, snapshot, &creating);
        creating.insert(name.clone());
        writes.push(Write::create(new_pod(ds, name, node, &spec, &hash)));
    };
    let mut status = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        ..DaemonSetStatus::default()
    };
    let (mut unavailable, mut surging) = (0_i64, 0_i64);
    // Nodes running only an old, available pod: what a rolling update replaces next,
    // in node order.
    let mut replaceable: Vec<(&str, &[&Pod])> = Vec::new();
    for node in &eligible {
        let pods = by_node.get(node).map_or(&[][..], Vec::as_slice);
        let available = pods.iter().any(|pod| pod_is_ready(pod));
        if pods.is_empty() {
            create(node, &mut writes);
            unavailable += 1;
            continue;
        }
        status.current_number_scheduled += 1;
        status.number_ready += i32::from(available);
        status.number_available += i32::from(available);
        status.updated_number_scheduled += i32::from(pods.iter().any(updated));
        let (new, old): (Vec<&Pod>, Vec<&Pod>) = pods.iter().partition(|pod| updated(pod));
        if !rolling || old.is_empty() {
            // One pod a node: extra ones go, the most useful one stays (ready, new).
            let mut ranked = pods.to_vec();
            ranked.sort_by_key(|pod| (!pod_is_ready(pod), !updated(pod)));
            writes.extend(ranked.iter().skip(1).map(|pod| delete(pod, false)));
            unavailable += i64::from(!available);
        } else if !new.is_empty() {
            // A surge under way: the old pod goes once the new one is available.
            if new.iter().any(|pod| pod_is_ready(pod)) {
                writes.extend(old.iter().map(|pod| delete(pod, false)));
            } else {
                surging += 1;
                unavailable += i64::from(!available);
            }
        } else if !available {
            // Replacing a pod that serves nothing costs no availability.
            writes.extend(old.iter().map(|pod| delete(pod, false)));
            unavailable += 1;
        } else {
            replaceable.push((node, pods));
        }
    }
    if rolling {
        if max_surge > 0 {
            let room = usize::try_from(max_surge - surging).unwrap_or(0);
            for (node, _) in replaceable.iter().take(room) {
                create(node, &mut writes);
            }
        } else {
            let room = usize::try_from(max_unavailable - unavailable).unwrap_or(0);
            for (_, pods) in replaceable.iter().take(room) {
                writes.extend(pods.iter().map(|pod| delete(pod, false)));
            }
        }
    }
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    status.desired_number_scheduled = count(desired);
    status.number_misscheduled = count(misscheduled);
    status.number_unavailable = status.desired_number_scheduled - status.number_available;
    Plan { writes, status }
}

fn new_pod(ds: &DaemonSet, name: String, node: &str, spec: &PodSpec, hash: &str) -> Pod {
    let template = &ds.spec.template;
    let mut labels = template.metadata.labels.clone();
    labels.insert(REVISION_HASH_LABEL.to_owned(), hash.to_owned());
    let mut spec = spec.clone();
    spec.node_name = node.to_owned();
    Pod {
        api_version: "v1".to_owned(),
        kind: "Pod".to_owned(),
        metadata: ObjectMeta {
            name,
            namespace: ds.metadata.namespace.clone(),
            labels,
            annotations: template.metadata.annotations.clone(),
            owner_references: vec![owner_reference(ds)],
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        controllers::{Settings, fixtures::typed},
        objects::Object,
    };

    fn ds(strategy: Value, node_selector: Value) -> DaemonSet {
        typed(json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": "default", "uid": "ds", "generation": 3},
            "spec": {"selector": {"matchLabels": {"app": "agent"}}, "updateStrategy": strategy,
                "template": {"metadata": {"labels": {"app": "agent"}},
                    "spec": {"nodeSelector": node_selector, "containers": [{"name": "c", "image": "v2"}]}}}}))
    }

    fn node(name: &str, labels: Value, taints: Value) -> Node {
        typed(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}}))
    }

    /// A pod of `ds` on `node`, of the current template or an old one.
    fn pod(ds: &DaemonSet, name: &str, node: &str, current: bool, ready: bool) -> Pod {
        let hash = if current {
            ds.spec.template.hash()
        } else {
            "old".to_owned()
        };
        typed(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default",
                "labels": {"app": "agent", REVISION_HASH_LABEL: hash},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "ds", "controller": true}]},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
    }

    fn nodes(n: usize) -> Vec<Node> {
        (1..=n)
            .map(|i| node(&format!("n{i}"), json!({}), json!([])))
            .collect()
    }

    fn run(ds: &DaemonSet, nodes: Vec<Node>, pods: Vec<Pod>) -> Outcome {
        let mut objects = vec![ds.clone().into_object()];
        objects.extend(nodes.into_iter().map(Node::into_object));
        objects.extend(pods.into_iter().map(Pod::into_object));
        let snapshot = Snapshot::from_objects(objects, 1);
        DaemonSetController.reconcile(
            ds,
            &snapshot,
            &Context {
                now: 0,
                settings: Settings::default(),
            },
        )
    }

    /// (created on node, deleted pod name, forced) of an outcome.
    fn changes(outcome: &Outcome) -> (Vec<String>, Vec<(String, bool)>) {
        let mut created = Vec::new();
        let mut deleted = Vec::new();
        for write in &outcome.writes {
            match write {
                Write::Create(Object::Pod(pod)) => created.push(pod.spec.node_name.clone()),
                Write::Delete { name, force, .. } => deleted.push((name.clone(), *force)),
                _ => {}
            }
        }
        created.sort();
        deleted.sort();
        (created, deleted)
    }

    #[test]
    fn one_pod_per_eligible_node_with_the_daemon_tolerations() {
        let ds = ds(json!({}), json!({"role": "edge"}));
        let edge = json!({"role": "edge"});
        let cluster = vec![
            node("a", edge.clone(), json!([])),
            node("b", json!({}), json!([])),
            // Cordoned, and tainted so by the node lifecycle controller: daemons go anyway.
            node(
                "c",
                edge.clone(),
                json!([{"key": TAINT_UNSCHEDULABLE, "effect": NO_SCHEDULE}]),
            ),
            node(
                "d",
                edge,
                json!([{"key": "dedicated", "effect": NO_SCHEDULE}]),
            ),
        ];
        let outcome = run(&ds, cluster, Vec::new());
        let (created, deleted) = changes(&outcome);
        assert_eq!(created, ["a", "c"]);
        assert!(deleted.is_empty());
        let Write::Create(Object::Pod(pod)) = &outcome.writes[0] else {
            panic!("{outcome:?}")
        };
        assert_eq!(pod.metadata.owner_references[0].uid, "ds");
        assert_eq!(
            pod.metadata.labels.get(REVISION_HASH_LABEL),
            Some(&ds.spec.template.hash())
        );
        assert_eq!(pod.spec.tolerations.len(), DAEMON_TOLERATIONS.len());
    }

    #[test]
    fn pods_leave_nodes_that_no_longer_fit_or_are_gone() {
        let ds = ds(json!({}), json!({}));
        let pods = vec![
            pod(&ds, "on-n1", "n1", true, true),
            pod(&ds, "on-gone", "gone", true, true),
            pod(&ds, "on-tainted", "n2", true, true),
        ];
        let cluster = vec![
            node("n1", json!({}), json!([])),
            node("n2", json!({}), json!([{"key": "k", "effect": NO_EXECUTE}])),
        ];
        let (created, deleted) = changes(&run(&ds, cluster, pods));
        assert!(created.is_empty());
        assert_eq!(
            deleted,
            [
                ("on-gone".to_owned(), true),
                ("on-tainted".to_owned(), false)
            ]
        );
    }

    #[test]
    fn rolling_update_replaces_within_max_unavailable_in_node_order() {
        let rolling = ds(
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}}),
            json!({}),
        );
        let old: Vec<Pod> = (1..=4)
            .map(|i| pod(&rolling, &format!("p{i}"), &format!("n{i}"), false, true))
            .collect();
        let (_, deleted) = changes(&run(&rolling, nodes(4), old.clone()));
        assert_eq!(
            deleted,
            [("p1".to_owned(), false), ("p2".to_owned(), false)]
        );
        // One node already without a ready daemon: one more may go.
        let mut busy = old.clone();
        busy[0] = pod(&rolling, "p1", "n1", true, false);
        let (_, deleted) = changes(&run(&rolling, nodes(4), busy));
        assert_eq!(deleted, [("p2".to_owned(), false)]);
        // The default is 1.
        let default = ds(json!({}), json!({}));
        let old: Vec<Pod> = (1..=4)
            .map(|i| pod(&default, &format!("p{i}"), &format!("n{i}"), false, true))
            .collect();
        let (_, deleted) = changes(&run(&default, nodes(4), old));
        assert_eq!(deleted, [("p1".to_owned(), false)]);
    }

    #[test]
    fn max_surge_starts_the_new_pod_beside_the_old_one() {
        let surge = ds(
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
            json!({}),
        );
        let old = vec![
            pod(&surge, "p1", "n1", false, true),
            pod(&surge, "p2", "n2", false, true),
        ];
        let (created, deleted) = changes(&run(&surge, nodes(2), old.clone()));
        assert_eq!((created, deleted), (vec!["n1".to_owned()], Vec::new()));
        // The new pod ready: the old one goes, and the next node surges.
        let mut pods = old;
        pods.push(pod(&surge, "p1-new", "n1", true, true));
        let (created, deleted) = changes(&run(&surge, nodes(2), pods));
        assert_eq!(created, ["n2"]);
        assert_eq!(deleted, [("p1".to_owned(), false)]);
    }

    #[test]
    fn on_delete_keeps_old_pods_and_fills_empty_nodes_with_the_new_template() {
        let on_delete = ds(json!({"type": "OnDelete"}), json!({}));
        let pods = vec![pod(&on_delete, "p1", "n1", false, true)];
        let outcome = run(&on_delete, nodes(2), pods.clone());
        let (created, deleted) = changes(&outcome);
        assert_eq!((created, deleted), (vec!["n2".to_owned()], Vec::new()));
        // Settled: the status says one of two nodes runs the current template.
        let mut pods = pods;
        pods.push(pod(&on_delete, "p2", "n2", true, true));
        let outcome = run(&on_delete, nodes(2), pods);
        let [Write::UpdateStatus(Object::DaemonSet(updated))] = outcome.writes.as_slice() else {
            panic!("{outcome:?}")
        };
        assert_eq!(
            updated.status,
            Some(DaemonSetStatus {
                observed_generation: 3,
                desired_number_scheduled: 2,
                current_number_scheduled: 2,
                number_misscheduled: 0,
                number_ready: 2,
                updated_number_scheduled: 1,
                number_available: 2,
                number_unavailable: 0,
            })
        );
    }
}
