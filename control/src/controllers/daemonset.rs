//! DaemonSet → one pod per eligible node: a node is eligible when the pod, with the
//! tolerations Kubernetes gives every daemon pod, passes its node selector, required
//! node affinity and taints ([`node_admits`]). Pods are bound to their node when made
//! (the node is the point), follow nodes joining and leaving, and take a new template
//! node by node within maxUnavailable (or beside the old pod within maxSurge), or only
//! when deleted (`OnDelete`).

use std::collections::{BTreeMap, BTreeSet};

use berth_api::{
    apps::{DaemonSet, DaemonSetStatus},
    core::{IntOrString, Node, Pod, PodSpec},
    meta::ObjectMeta,
    scheduling::{
        NO_EXECUTE, NO_SCHEDULE, TAINT_NOT_READY, TAINT_UNREACHABLE, TAINT_UNSCHEDULABLE,
        Toleration, node_admits,
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
            keys.extend(snapshot.list::<DaemonSet>(None).map(|ds| {
                (ds.metadata.namespace.clone(), ds.metadata.name.clone())
            }));
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
