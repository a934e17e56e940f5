//! Binds pending pods to nodes, as kube-scheduler does: filter, then score.
//!
//! Filters, in order (a node is counted under the first it fails): ready, schedulable
//! (`spec.unschedulable`), node selector and required node affinity, `NoSchedule` and
//! `NoExecute` taints the pod does not tolerate, the node of the pod's persistent
//! volumes, free CPU and memory, topology spread constraints (`DoNotSchedule`), other
//! pods' required anti-affinity, the pod's required pod affinity and anti-affinity.
//! Scores, compared in order: fewest untolerated `PreferNoSchedule` taints, highest
//! preferred node affinity weight, highest preferred pod (anti-)affinity score, fewest
//! matching pods in the `ScheduleAnyway` spread domains, fewest pods of the same owner,
//! then the least requested node.
//!
//! Pods are scheduled a batch at a time on one snapshot. A [`Cluster`] reads every node
//! and what is bound to it from the snapshot's index (kept up to date as pods come and
//! go, like kube-scheduler's cache) once per batch; each binding decided in the batch is
//! then added to those sums (kube-scheduler's "assume"), so the next pod sees it without
//! waiting for the store, and one decision costs one pass over the nodes, not a pass
//! over every pod of the cluster. Rules that look at other pods are counted per batch
//! and topology domain (see [`super::placement`]), only when some pod has them.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use berth_api::{
    core::{Condition, Node, Pod, PodStatus},
    scheduling::{
        NO_EXECUTE, NO_SCHEDULE, PREFER_NO_SCHEDULE, TAINT_NOT_READY, TAINT_UNREACHABLE,
        TAINT_UNSCHEDULABLE, Taint, Toleration, untolerated,
    },
    storage::{NodeSelector, PersistentVolume, PersistentVolumeClaim},
};

use super::index::{NodeFit, holds_resources, requests};
use super::placement::{Placement, Rules, has_rules};
use super::{
    Change, Context, Outcome, Reconciler, Snapshot, Write, controller_uid, pod_is_terminal,
    reference,
};
use crate::registry::batch::Binding;

pub struct Scheduler;

/// Why a node was filtered out, worded as kube-scheduler words it (taints and the rules
/// of [`super::placement`] carry their own words).
const NOT_READY: usize = 0;
const UNSCHEDULABLE: usize = 1;
const NODE_AFFINITY: usize = 2;
const VOLUME_NODE: usize = 3;
const CPU: usize = 4;
const MEMORY: usize = 5;
const REASONS: [&str; 6] = [
    "node(s) were not ready",
    "node(s) were unschedulable",
    "node(s) didn't match Pod's node affinity/selector",
    "node(s) had volume node affinity conflict",
    "Insufficient cpu",
    "Insufficient memory",
];

impl Reconciler for Scheduler {
    type Object = Pod;

    fn name(&self) -> &'static str {
        "scheduler"
    }

    fn affected(&self, change: &Change, snapshot: &Snapshot) -> Vec<(String, String)> {
        self.affected_batch(std::slice::from_ref(change), snapshot)
    }

    /// A pending pod is looked at when it changes, and every pending pod when room may
    /// have appeared: a bound pod went away, or a node appeared or changed in a way that
    /// can let a pod in. Those are found once per batch, however many changes ask.
    fn affected_batch(&self, changes: &[Change], snapshot: &Snapshot) -> Vec<(String, String)> {
        let mut keys = Vec::new();
        let mut wake_all = false;
        for change in changes {
            if let Some(pod) = change.as_kind::<Pod>() {
                // Freed resources (a bound pod went, or finished): pods waiting for room
                // may fit now.
                if change.deleted {
                    wake_all |= holds_resources(pod);
                } else if pod_is_terminal(pod) {
                    wake_all |= change.previous_as::<Pod>().is_none_or(holds_resources);
                } else if pending(pod) {
                    keys.push(change.key());
                }
            } else if change.as_kind::<PersistentVolumeClaim>().is_some()
                || change.as_kind::<PersistentVolume>().is_some()
            {
                // A claim a pod waits for may have appeared or been bound.
                wake_all = true;
            } else if let Some(node) = change.as_kind::<Node>()
                && !change.deleted
            {
                // Node heartbeats rewrite the status of every node every few seconds;
                // only a new node, or a change to what the filters look at, can help.
                wake_all |= change
                    .previous_as::<Node>()
                    .is_none_or(|previous| fit_inputs(previous) != fit_inputs(node));
            }
        }
        if wake_all {
            return snapshot
                .list::<Pod>(None)
                .filter(|pod| pending(pod))
                .map(|pod| (pod.metadata.namespace.clone(), pod.metadata.name.clone()))
                .collect();
        }
        keys
    }

    fn reconcile(&self, pod: &Pod, snapshot: &Snapshot, ctx: &Context) -> Outcome {
        self.reconcile_batch(&[pod], snapshot, ctx)
            .pop()
            .unwrap_or_default()
    }

    /// Each pod sees the bindings made before it in the batch, through the batch's
    /// [`Cluster`] rather than the store.
    fn reconcile_batch(&self, pods: &[&Pod], snapshot: &Snapshot, _ctx: &Context) -> Vec<Outcome> {
        if !pods.iter().any(|pod| pending(pod)) {
            // Bound already (a resync or its own update coming back): nothing to sum.
            return vec![Outcome::default(); pods.len()];
        }
        let owners = pods
            .iter()
            .filter(|pod| pending(pod))
            .filter_map(|pod| controller_uid(&pod.metadata));
        let mut cluster = Cluster::new(snapshot, owners);
        pods.iter()
            .map(|pod| {
                if pending(pod) {
                    schedule(&mut cluster, pod, snapshot)
                } else {
                    Outcome::default()
                }
            })
            .collect()
    }
}

/// Binds one pending pod to the best node of `cluster` and records it there, or reports
/// why it fits nowhere.
fn schedule(cluster: &mut Cluster, pod: &Pod, snapshot: &Snapshot) -> Outcome {
    let owner = controller_uid(&pod.metadata);
    let (cpu, memory) = requests(pod);
    let (namespace, name) = (&pod.metadata.namespace, &pod.metadata.name);
    let chosen = volume_nodes(pod, snapshot)
        .and_then(|volumes| cluster.choose(pod, owner, &volumes, snapshot));
    match chosen {
        Ok(i) => {
            cluster.bind(i, pod, cpu, memory, owner, snapshot);
            let node = cluster.nodes[i].fit.name.clone();
            let message = format!("Successfully assigned {namespace}/{name} to {node}");
            Outcome::writes(vec![
                Write::Bind(Binding {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    node,
                    resource_version: resource_version(pod),
                }),
                Write::Event {
                    involved: reference(pod),
                    reason: "Scheduled".to_owned(),
                    message,
                    type_: "Normal",
                },
            ])
        }
        Err(reason) => {
            let already_reported = pod.status.as_ref().is_some_and(|s| s.message == reason);
            let mut writes = Vec::new();
            if !already_reported {
                let mut unschedulable = pod.clone();
                unschedulable.status = Some(PodStatus {
                    phase: "Pending".to_owned(),
                    message: reason.clone(),
                    conditions: vec![Condition {
                        type_: "PodScheduled".to_owned(),
                        status: "False".to_owned(),
                        reason: "Unschedulable".to_owned(),
                        message: reason.clone(),
                        ..Condition::default()
                    }],
                    ..PodStatus::default()
                });
                writes.push(Write::update_status(unschedulable));
                writes.push(Write::Event {
                    involved: reference(pod),
                    reason: "FailedScheduling".to_owned(),
                    message: reason,
                    type_: "Warning",
                });
            }
            // Node changes re-queue pending pods; this is the safety net.
            Outcome {
                writes,
                requeue_after: Some(std::time::Duration::from_secs(10)),
            }
        }
    }
}

/// The revision the pod was read at: a binding made on an older one is refused.
/// Where the pod's bound claims' volumes are (a node-local volume is used only on its
/// node), or why the pod cannot be placed yet: a claim that does not exist, or whose
/// volume nobody can make. An unbound claim constrains nothing else: its volume is made
/// where the pod goes.
fn volume_nodes<'a>(pod: &Pod, snapshot: &'a Snapshot) -> Result<Vec<&'a NodeSelector>, String> {
    let mut selectors = Vec::new();
    for claim_name in pod.spec.claim_names() {
        let claim = snapshot
            .get::<PersistentVolumeClaim>(&pod.metadata.namespace, claim_name)
            .ok_or_else(|| format!("persistentvolumeclaim {claim_name:?} not found"))?;
        if claim.spec.volume_name.is_empty() {
            if !claim.is_provisionable() {
                return Err(format!(
                    "persistentvolumeclaim {claim_name:?} is of storage class {:?}, which no provisioner serves (Berth provisions class {:?})",
                    claim.spec.storage_class_name.as_deref().unwrap_or_default(),
                    berth_api::storage::LOCAL_STORAGE_CLASS
                ));
            }
            continue;
        }
        let volume = snapshot
            .get::<PersistentVolume>("", &claim.spec.volume_name)
            .ok_or_else(|| {
                format!(
                    "persistentvolume {:?} of persistentvolumeclaim {claim_name:?} not found",
                    claim.spec.volume_name
                )
            })?;
        selectors.extend(volume.spec.node_affinity.as_ref().map(|a| &a.required));
    }
    Ok(selectors)
}

fn resource_version(pod: &Pod) -> u64 {
    pod.metadata.resource_version.parse().unwrap_or(0)
}

fn pending(pod: &Pod) -> bool {
    pod.spec.node_name.is_empty() && !pod_is_terminal(pod)
}

/// What the filters read of a node: its Ready status, whether it is cordoned, its labels,
/// taints and what it offers. A change to anything else (a heartbeat's timestamps)
/// cannot make a pod fit.
type FitInputs<'a> = (
    Option<&'a str>,
    bool,
    &'a BTreeMap<String, String>,
    &'a [Taint],
    Option<&'a BTreeMap<String, String>>,
);

fn fit_inputs(node: &Node) -> FitInputs<'_> {
    let status = node.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str());
    (
        ready,
        node.spec.unschedulable,
        &node.metadata.labels,
        &node.spec.taints,
        status.map(|s| &s.allocatable),
    )
}

/// One node as the scheduler sees it during a batch: what the filters read of it, shared
/// with the snapshot's index, and what is bound to it.
struct NodeState {
    fit: Arc<NodeFit>,
    /// Requested by the pods bound to it, and how many they are.
    used_cpu: u64,
    used_memory: u64,
    pods: usize,
}

/// The nodes, in name order, with what is bound to them: read once per batch from the
/// snapshot's index, then kept up to date with the batch's own bindings.
pub struct Cluster {
    nodes: Vec<NodeState>,
    /// Per owner uid, its pods per node. Only the owners of the pods being scheduled are
    /// counted: no other count is ever asked for.
    owners: HashMap<String, Spread>,
    /// Some bound pod has required anti-affinity: every pod is checked against it.
    anti_affinity: bool,
    /// Pod affinity and spread counts, made when the first pod needing them comes.
    placement: Option<Placement>,
}

/// Why a node was filtered out for one pod.
enum Rejection<'a> {
    Fixed(usize),
    Taint(&'a Taint),
    Rule(super::placement::Broken),
}

/// What a pod asks of the node-level filters and scores, read once per decision.
struct Asks<'a> {
    pod: &'a Pod,
    tolerations: &'a [Toleration],
    /// It tolerates the taints of nodes that are not ready (DaemonSet pods do).
    enters_not_ready: bool,
    enters_cordoned: bool,
    preferred: &'a [berth_api::scheduling::PreferredSchedulingTerm],
}

impl<'a> Asks<'a> {
    fn new(pod: &'a Pod) -> Self {
        let tolerations = pod.spec.tolerations.as_slice();
        let tolerates = |key: &str| {
            let taint = Taint {
                key: key.to_owned(),
                effect: NO_SCHEDULE.to_owned(),
                ..Taint::default()
            };
            tolerations.iter().any(|t| t.tolerates(&taint))
        };
        Self {
            pod,
            tolerations,
            enters_not_ready: !tolerations.is_empty()
                && tolerates(TAINT_NOT_READY)
                && tolerates(TAINT_UNREACHABLE),
            enters_cordoned: !tolerations.is_empty() && tolerates(TAINT_UNSCHEDULABLE),
            preferred: pod
                .spec
                .affinity
                .as_ref()
                .and_then(|a| a.node_affinity.as_ref())
                .map_or(&[][..], |a| {
                    &a.preferred_during_scheduling_ignored_during_execution
                }),
        }
    }

    /// The node-level filters a node fails, resources aside.
    fn reject(&self, fit: &'a NodeFit) -> Option<Rejection<'a>> {
        if !fit.ready && !self.enters_not_ready {
            return Some(Rejection::Fixed(NOT_READY));
        }
        if fit.unschedulable && !self.enters_cordoned {
            return Some(Rejection::Fixed(UNSCHEDULABLE));
        }
        if !self.pod.spec.selects_node(&fit.name, &fit.labels) {
            return Some(Rejection::Fixed(NODE_AFFINITY));
        }
        if fit.taints.is_empty() {
            return None;
        }
        untolerated(&fit.taints, self.tolerations, &[NO_SCHEDULE, NO_EXECUTE]).map(Rejection::Taint)
    }

    /// (untolerated `PreferNoSchedule` taints, preferred node affinity weight)
    fn node_score(&self, fit: &NodeFit) -> (usize, i64) {
        let soft_taints = fit
            .taints
            .iter()
            .filter(|t| t.effect == PREFER_NO_SCHEDULE)
            .filter(|t| !self.tolerations.iter().any(|o| o.tolerates(t)))
            .count();
        let weight = self
            .preferred
            .iter()
            .filter(|term| term.preference.matches(&fit.name, &fit.labels))
            .map(|term| i64::from(term.weight))
            .sum();
        (soft_taints, weight)
    }
}

impl Cluster {
    /// The snapshot's nodes with what is bound to each; `owners` are the controllers
    /// (uids) whose replicas will be spread. Costs a pass over the nodes, not the pods:
    /// the snapshot's index keeps the sums as pods come and go.
    pub fn new<'a>(snapshot: &Snapshot, owners: impl IntoIterator<Item = &'a str>) -> Self {
        let index = snapshot.index();
        let mut positions: HashMap<&str, usize> = HashMap::new();
        let nodes: Vec<NodeState> = index
            .nodes()
            .enumerate()
            .map(|(i, fit)| {
                positions.insert(fit.name.as_str(), i);
                let usage = index.usage(&fit.name);
                NodeState {
                    fit: Arc::clone(fit),
                    used_cpu: usage.cpu(),
                    used_memory: usage.memory(),
                    pods: usage.pods,
                }
            })
            .collect();
        // Each pod of the batch names its owner: thousands of times the same one.
        let distinct: std::collections::HashSet<&str> = owners.into_iter().collect();
        let owners = distinct
            .into_iter()
            .map(|uid| {
                let mut spread: Vec<(usize, usize)> = index
                    .spread(uid)
                    // Pods of a node that is gone take nothing from the others.
                    .filter_map(|(node, count)| positions.get(node).map(|&i| (i, count)))
                    .collect();
                spread.sort_unstable();
                (uid.to_owned(), Spread(spread))
            })
            .collect();
        Self {
            nodes,
            owners,
            anti_affinity: index.has_anti_affinity(),
            placement: None,
        }
    }

    /// The rules of `pod` that look at other pods, if it has any or other pods' terms
    /// may concern it.
    fn rules(&mut self, pod: &Pod, snapshot: &Snapshot) -> Option<Rules> {
        if !has_rules(pod) && !self.anti_affinity && self.placement.is_none() {
            return None;
        }
        let nodes = &self.nodes;
        let placement = self.placement.get_or_insert_with(|| {
            Placement::new(nodes.iter().map(|n| Arc::clone(&n.fit)).collect(), snapshot)
        });
        Some(placement.rules(pod, snapshot)).filter(|rules| !rules.is_empty())
    }

    /// The index of the best node for `pod` (of controller `owner`), or why none fits,
    /// counted per reason like kube-scheduler.
    fn choose(
        &mut self,
        pod: &Pod,
        owner: Option<&str>,
        volumes: &[&NodeSelector],
        snapshot: &Snapshot,
    ) -> Result<usize, String> {
        if self.nodes.is_empty() {
            return Err("0 nodes are available: no nodes registered".to_owned());
        }
        let rules = self.rules(pod, snapshot);
        let rules = rules.as_ref().zip(self.placement.as_ref());
        let asks = Asks::new(pod);
        let (cpu, memory) = requests(pod);
        let mut same_owner = owner
            .and_then(|uid| self.owners.get(uid))
            .map_or(&[][..], |spread| spread.0.as_slice())
            .iter()
            .peekable();
        let mut rejected = [0usize; REASONS.len()];
        // Taints and pod rules: worded per case, counted only when they reject.
        let mut worded: BTreeMap<String, usize> = BTreeMap::new();
        type Score = (usize, i64, i64, usize, usize, u64, usize);
        let mut best: Option<(Score, usize)> = None;
        for (i, node) in self.nodes.iter().enumerate() {
            // The owner's counts are in node order: step along with the nodes.
            let same = same_owner
                .next_if(|(at, _)| *at == i)
                .map_or(0, |(_, n)| *n);
            let wanted_cpu = node.used_cpu.saturating_add(cpu);
            let wanted_memory = node.used_memory.saturating_add(memory);
            let fit = &node.fit;
            let rejection = asks.reject(fit).or_else(|| {
                if !volumes.iter().all(|v| v.matches(&fit.name, &fit.labels)) {
                    Some(Rejection::Fixed(VOLUME_NODE))
                } else if wanted_cpu > fit.cpu {
                    Some(Rejection::Fixed(CPU))
                } else if wanted_memory > fit.memory {
                    Some(Rejection::Fixed(MEMORY))
                } else {
                    rules
                        .and_then(|(rules, placement)| placement.filter(rules, i))
                        .map(Rejection::Rule)
                }
            });
            match rejection {
                Some(Rejection::Fixed(reason)) => {
                    rejected[reason] += 1;
                    continue;
                }
                Some(Rejection::Taint(taint)) => {
                    *worded
                        .entry(format!(
                            "node(s) had untolerated taint {}",
                            taint.describe()
                        ))
                        .or_default() += 1;
                    continue;
                }
                Some(Rejection::Rule(broken)) => {
                    *worded.entry(broken.reason().to_owned()).or_default() += 1;
                    continue;
                }
                None => {}
            }
            let (soft_taints, node_weight) = if fit.taints.is_empty() && asks.preferred.is_empty() {
                (0, 0)
            } else {
                asks.node_score(fit)
            };
            let (pod_weight, crowding) = rules.map_or((0, 0), |(rules, placement)| {
                (placement.preference(rules, i), placement.crowding(rules, i))
            });
            // Spread replicas first, then prefer the emptier node (in thousandths).
            let load = (wanted_cpu.saturating_mul(1000) / fit.cpu.max(1))
                .max(wanted_memory.saturating_mul(1000) / fit.memory.max(1));
            let score = (
                soft_taints,
                -node_weight,
                -pod_weight,
                crowding,
                same,
                load,
                node.pods,
            );
            if best.as_ref().is_none_or(|(s, _)| score < *s) {
                best = Some((score, i));
            }
        }
        best.map(|(_, i)| i).ok_or_else(|| {
            // Sorted as kube-scheduler sorts them: by the counted text.
            let mut reasons: Vec<String> = REASONS
                .iter()
                .zip(rejected)
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| format!("{n} {r}"))
                .chain(worded.iter().map(|(r, n)| format!("{n} {r}")))
                .collect();
            reasons.sort();
            format!(
                "0/{} nodes are available: {}.",
                self.nodes.len(),
                reasons.join(", ")
            )
        })
    }

    /// Records a binding decided in this batch, before the store has it.
    fn bind(
        &mut self,
        i: usize,
        pod: &Pod,
        cpu: u64,
        memory: u64,
        owner: Option<&str>,
        snapshot: &Snapshot,
    ) {
        let Some(node) = self.nodes.get_mut(i) else {
            return;
        };
        node.used_cpu = node.used_cpu.saturating_add(cpu);
        node.used_memory = node.used_memory.saturating_add(memory);
        node.pods += 1;
        if let Some(spread) = owner.and_then(|uid| self.owners.get_mut(uid)) {
            spread.add(i);
        }
        if let Some(placement) = &mut self.placement {
            placement.bind(pod, i, snapshot);
        }
    }
}

/// One owner's pods per node as (node index, count), in node order, listing only nodes
/// that have some: thousands of owners in a batch must not cost a count per node each.
#[derive(Default)]
struct Spread(Vec<(usize, usize)>);

impl Spread {
    fn add(&mut self, node: usize) {
        match self.0.binary_search_by_key(&node, |(at, _)| *at) {
            Ok(found) => self.0[found].1 += 1,
            Err(at) => self.0.insert(at, (node, 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use berth_api::core::Node;
    use serde_json::json;

    use std::sync::Arc;

    use berth_api::{
        ResourceType,
        core::{parse_cpu_millis, parse_memory_bytes},
        kinds::{NODES, PODS},
    };
    // Fixtures are manifests, edited field by field as a user edits one (see
    // `fixtures`): JSON until they are decoded into a snapshot.
    use serde_json::Value;

    use super::{
        super::{
            controller_of,
            fixtures::snapshot,
            index::{DEFAULT_CPU_MILLIS, DEFAULT_MEMORY_BYTES},
        },
        *,
    };
    use crate::objects::Object;

    /// The chosen node's name, or why no node fits (counted per reason, like kube-scheduler).
    fn choose_node(pod: &Pod, snapshot: &Snapshot) -> Result<String, String> {
        let owner = controller_uid(&pod.metadata);
        let mut cluster = Cluster::new(snapshot, owner);
        cluster
            .choose(pod, owner, &[], snapshot)
            .map(|i| cluster.nodes[i].fit.name.clone())
    }

    fn node_ready(node: &Node) -> bool {
        node.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    }

    fn node(name: &str, ready: bool, cpu: &str, labels: Value) -> (&'static ResourceType, Value) {
        (
            &NODES,
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
                "status": {"allocatable": {"cpu": cpu, "memory": "1Gi"},
                    "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}),
        )
    }

    fn pod(name: &str, node: &str, cpu: &str, owner: &str) -> (&'static ResourceType, Value) {
        (
            &PODS,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default",
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner, "uid": owner, "controller": true}]},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu}}}]}}),
        )
    }

    fn schedule(
        objects: Vec<(&'static ResourceType, Value)>,
        name: &str,
    ) -> Result<String, String> {
        let snapshot = snapshot(objects, 1);
        let pod = snapshot.get::<Pod>("default", name).expect("pod");
        choose_node(pod, &snapshot)
    }

    #[test]
    fn spreads_replicas_of_one_owner() {
        let objects = vec![
            node("a", true, "4", json!({})),
            node("b", true, "4", json!({})),
            pod("p1", "a", "100m", "rs"),
            pod("other", "b", "1", "x"),
            pod("p2", "", "100m", "rs"),
        ];
        assert_eq!(
            schedule(objects, "p2"),
            Ok("b".to_owned()),
            "b has no replica of rs yet"
        );
    }

    #[test]
    fn prefers_the_less_loaded_node() {
        let objects = vec![
            node("a", true, "4", json!({})),
            node("b", true, "4", json!({})),
            pod("busy", "a", "3", "x"),
            pod("p", "", "100m", "rs"),
        ];
        assert_eq!(schedule(objects, "p"), Ok("b".to_owned()));
    }

    #[test]
    fn filters_explain_why_nothing_fits() {
        let mut objects = vec![
            node("down", false, "4", json!({"zone": "a"})),
            node("small", true, "1", json!({"zone": "a"})),
            node("wrong", true, "8", json!({"zone": "b"})),
            node("gpu1", true, "8", json!({"zone": "a"})),
            node("gpu2", true, "8", json!({"zone": "a"})),
            pod("hog", "small", "800m", "x"),
            pod("p", "", "500m", "rs"),
        ];
        for gpu in &mut objects[3..5] {
            gpu.1["spec"]["taints"] =
                json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]);
        }
        objects[6].1["spec"]["nodeSelector"] = json!({"zone": "a"});
        assert_eq!(
            schedule(objects.clone(), "p"),
            Err("0/5 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) were not ready, 2 node(s) had untolerated taint {dedicated: gpu}.".to_owned())
        );
        objects[6].1["spec"]["tolerations"] = json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]);
        assert_eq!(schedule(objects, "p"), Ok("gpu1".to_owned()), "tolerated");
    }

    /// Pods of `owner` with `spec` merged in, pending.
    fn pods_with(owner: &str, count: usize, spec: &Value) -> Vec<(&'static ResourceType, Value)> {
        (0..count)
            .map(|i| {
                let mut p = pod(&format!("{owner}-{i:02}"), "", "10m", owner);
                p.1["metadata"]["labels"] = json!({"app": owner});
                for (key, value) in spec.as_object().into_iter().flatten() {
                    p.1["spec"][key] = value.clone();
                }
                p
            })
            .collect()
    }

    fn zones(count: usize, per_zone: usize) -> Vec<(&'static ResourceType, Value)> {
        (0..count * per_zone)
            .map(|i| {
                node(
                    &format!("n{i:02}"),
                    true,
                    "64",
                    json!({"topology.kubernetes.io/zone": format!("z{}", i % count)}),
                )
            })
            .collect()
    }

    #[test]
    fn no_execute_taints_filter_and_prefer_no_schedule_scores() {
        let mut objects = vec![
            node("a", true, "4", json!({})),
            node("b", true, "4", json!({})),
            node("c", true, "4", json!({})),
            pod("p", "", "100m", "rs"),
        ];
        objects[0].1["spec"]["taints"] = json!([{"key": "k", "effect": "NoExecute"}]);
        objects[1].1["spec"]["taints"] = json!([{"key": "k", "effect": "PreferNoSchedule"}]);
        // c is busier, but b's soft taint weighs more than load.
        objects.push(pod("busy", "c", "3", "x"));
        assert_eq!(schedule(objects.clone(), "p"), Ok("c".to_owned()));
        objects[3].1["spec"]["tolerations"] = json!([{"key": "k", "operator": "Exists"}]);
        assert_eq!(
            schedule(objects, "p"),
            Ok("a".to_owned()),
            "all tolerated: least loaded"
        );
    }

    #[test]
    fn a_cordoned_node_admits_only_pods_tolerating_its_taint() {
        let mut objects = vec![node("a", true, "4", json!({})), pod("p", "", "100m", "rs")];
        objects[0].1["spec"]["unschedulable"] = json!(true);
        assert_eq!(
            schedule(objects.clone(), "p"),
            Err("0/1 nodes are available: 1 node(s) were unschedulable.".to_owned())
        );
        objects[1].1["spec"]["tolerations"] = json!([{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]);
        assert_eq!(schedule(objects, "p"), Ok("a".to_owned()));
    }

    #[test]
    fn node_affinity_required_filters_and_preferred_weights_choose() {
        let mut objects = vec![
            node("a", true, "4", json!({"disk": "hdd", "gen": "3"})),
            node("b", true, "4", json!({"disk": "ssd", "gen": "5"})),
            node("c", true, "4", json!({"disk": "ssd", "gen": "7"})),
            pod("busy", "c", "2", "x"),
            pod("p", "", "100m", "rs"),
        ];
        objects[4].1["spec"]["affinity"] = json!({"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["4"]}]}]},
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "preference": {"matchExpressions": [{"key": "gen", "operator": "In", "values": ["7"]}]}},
            {"weight": 5, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}},
        ]}});
        assert_eq!(
            schedule(objects.clone(), "p"),
            Ok("c".to_owned()),
            "heaviest preference"
        );
        objects[4].1["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] = json!(["9"]);
        assert_eq!(
            schedule(objects, "p"),
            Err(
                "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
                    .to_owned()
            )
        );
    }

    #[test]
    fn required_anti_affinity_never_co_locates_and_says_so_when_full() {
        let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
        let mut objects = zones(2, 2);
        objects.extend(pods_with("web", 5, &anti));
        let batch = schedule_batch(objects);
        let nodes: Vec<&str> = batch.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(nodes[..4], ["n00", "n01", "n02", "n03"], "{batch:?}");
        assert_eq!(
            nodes[4],
            "0/4 nodes are available: 4 node(s) didn't satisfy existing pods anti-affinity rules."
        );
        // Symmetric: a pod the bound pods' terms select stays off their nodes too.
        let mut objects = zones(2, 1);
        objects.push(pod("held", "n00", "10m", "other"));
        objects[2].1["metadata"]["labels"] = json!({"app": "db"});
        objects[2].1["spec"]["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "topology.kubernetes.io/zone"}]}});
        objects.extend(pods_with("web", 2, &json!({})));
        let batch = schedule_batch(objects);
        assert_eq!(batch[0].1, "n01");
        assert_eq!(
            batch[1].1, "n01",
            "the zone of the pod holding the term is out; the other is not"
        );
    }

    #[test]
    fn pod_affinity_follows_its_target_by_zone() {
        let mut objects = zones(3, 2);
        let mut target = pod("cache", "n04", "10m", "x");
        target.1["metadata"]["labels"] = json!({"security": "S1"});
        let affinity = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchExpressions": [{"key": "security", "operator": "In", "values": ["S1"]}]},
             "topologyKey": "topology.kubernetes.io/zone"}]}}});
        objects.extend(pods_with("app", 4, &affinity));
        let without = schedule_batch(objects.clone());
        assert!(
            without
                .iter()
                .all(|(_, v)| v.ends_with("6 node(s) didn't match pod affinity rules.")),
            "{without:?}"
        );
        objects.push(target);
        let batch = schedule_batch(objects);
        // n04 is in z1 (i % 3 == 1), with n01.
        assert!(
            batch.iter().all(|(_, v)| v == "n01" || v == "n04"),
            "{batch:?}"
        );
        // Preferred anti-affinity spreads what it can.
        let prefer = json!({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "solo"}},
             "topologyKey": "topology.kubernetes.io/zone"}}]}}});
        let mut objects = zones(3, 2);
        objects.extend(pods_with("solo", 3, &prefer));
        let batch = schedule_batch(objects);
        let zones_used: std::collections::BTreeSet<String> = batch
            .iter()
            .map(|(_, node)| {
                let i: usize = node[1..].parse().expect("node number");
                format!("z{}", i % 3)
            })
            .collect();
        assert_eq!(zones_used.len(), 3, "{batch:?}");
    }

    #[test]
    fn topology_spread_keeps_max_skew_across_zones() {
        let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "web"}}}]});
        // z0 has one node, z1 three: the owner spread alone would fill z1.
        let mut objects = vec![
            node(
                "a",
                true,
                "64",
                json!({"topology.kubernetes.io/zone": "z0"}),
            ),
            node(
                "b",
                true,
                "64",
                json!({"topology.kubernetes.io/zone": "z1"}),
            ),
            node(
                "c",
                true,
                "64",
                json!({"topology.kubernetes.io/zone": "z1"}),
            ),
            node(
                "d",
                true,
                "64",
                json!({"topology.kubernetes.io/zone": "z1"}),
            ),
            node("nolabel", true, "64", json!({})),
        ];
        objects.extend(pods_with("web", 8, &spread));
        let batch = schedule_batch(objects.clone());
        let mut per_zone = [0usize; 2];
        for (_, node) in &batch {
            match node.as_str() {
                "a" => per_zone[0] += 1,
                "b" | "c" | "d" => per_zone[1] += 1,
                other => panic!("{other}: {batch:?}"),
            }
        }
        assert_eq!(per_zone, [4, 4], "{batch:?}");
        // z0 full: the skew would break, and the unlabelled node cannot count.
        objects[0].1["status"]["allocatable"]["cpu"] = json!("30m");
        let batch = schedule_batch(objects.clone());
        let placed = batch.iter().filter(|(_, v)| !v.starts_with("0/")).count();
        assert_eq!(placed, 7, "z0 holds 3, so z1 stops at 4: {batch:?}");
        assert_eq!(
            batch.last().map(|(_, v)| v.as_str()),
            Some(
                "0/5 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match pod topology spread constraints (missing required label), 3 node(s) didn't match pod topology spread constraints."
            )
        );
        // ScheduleAnyway only prefers.
        let soft = json!({"topologySpreadConstraints": [{"maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app": "web"}}}]});
        let mut objects: Vec<_> = objects.into_iter().take(5).collect();
        objects.extend(pods_with("web", 8, &soft));
        let batch = schedule_batch(objects);
        assert!(batch.iter().all(|(_, v)| !v.starts_with("0/")), "{batch:?}");
    }

    #[test]
    fn reconcile_binds_and_is_idempotent() {
        let snapshot = snapshot(
            vec![node("a", true, "4", json!({})), pod("p", "", "100m", "rs")],
            1,
        );
        let ctx = Context {
            now: 0,
            settings: super::super::Settings::default(),
        };
        let p = snapshot.get::<Pod>("default", "p").expect("pod");
        let outcome = Scheduler.reconcile(p, &snapshot, &ctx);
        let Some(Write::Bind(binding)) = outcome.writes.first() else {
            panic!("{outcome:?}");
        };
        assert_eq!((binding.name.as_str(), binding.node.as_str()), ("p", "a"));
        // Once bound, nothing more to do.
        let mut bound = p.clone();
        bound.spec.node_name.clone_from(&binding.node);
        assert_eq!(
            Scheduler.reconcile(&bound, &snapshot, &ctx),
            Outcome::default()
        );
    }

    fn ctx() -> Context {
        Context {
            now: 0,
            settings: super::super::Settings::default(),
        }
    }

    /// Schedules every pending pod of `objects` in one batch: pod name -> node or reason.
    fn schedule_batch(objects: Vec<(&'static ResourceType, Value)>) -> Vec<(String, String)> {
        let snapshot = snapshot(objects, 1);
        let pods: Vec<&Pod> = snapshot.list::<Pod>(None).filter(|p| pending(p)).collect();
        let outcomes = Scheduler.reconcile_batch(&pods, &snapshot, &ctx());
        assert_eq!(outcomes.len(), pods.len());
        pods.iter()
            .zip(outcomes)
            .map(|(pod, outcome)| {
                let verdict = match outcome.writes.first() {
                    Some(Write::Bind(binding)) => binding.node.clone(),
                    Some(Write::UpdateStatus(Object::Pod(pod))) => pod
                        .status
                        .as_ref()
                        .map_or("?", |s| s.message.as_str())
                        .to_owned(),
                    other => panic!("{other:?}"),
                };
                (pod.metadata.name.clone(), verdict)
            })
            .collect()
    }

    fn verdicts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(p, v)| ((*p).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_batch_spreads_one_owner_one_pod_per_node() {
        let objects = vec![
            node("a", true, "4", json!({})),
            node("b", true, "4", json!({})),
            node("c", true, "4", json!({})),
            pod("p1", "", "100m", "rs"),
            pod("p2", "", "100m", "rs"),
            pod("p3", "", "100m", "rs"),
        ];
        assert_eq!(
            schedule_batch(objects),
            verdicts(&[("p1", "a"), ("p2", "b"), ("p3", "c")])
        );
    }

    #[test]
    fn a_batch_sees_the_resources_it_has_used() {
        let objects = vec![
            node("a", true, "1", json!({})),
            pod("p1", "", "400m", "rs"),
            pod("p2", "", "400m", "rs"),
            pod("p3", "", "400m", "rs"),
        ];
        assert_eq!(
            schedule_batch(objects),
            verdicts(&[
                ("p1", "a"),
                ("p2", "a"),
                ("p3", "0/1 nodes are available: 1 Insufficient cpu."),
            ])
        );
    }

    #[test]
    fn an_unschedulable_verdict_is_reported_once_and_retried() {
        let snapshot = snapshot(
            vec![node("a", true, "1", json!({})), pod("p", "", "2", "rs")],
            1,
        );
        let p = snapshot.get::<Pod>("default", "p").expect("pod");
        let outcome = Scheduler.reconcile(p, &snapshot, &ctx());
        let Some(Write::UpdateStatus(Object::Pod(object))) = outcome.writes.first() else {
            panic!("{outcome:?}");
        };
        assert_eq!(
            object
                .status
                .as_ref()
                .map(|s| s.conditions[0].reason.as_str()),
            Some("Unschedulable")
        );
        assert!(matches!(
            outcome.writes.get(1),
            Some(Write::Event { reason, type_: "Warning", .. }) if reason == "FailedScheduling"
        ));
        let again = Scheduler.reconcile(object, &snapshot, &ctx());
        assert!(again.writes.is_empty(), "{again:?}");
        assert!(again.requeue_after.is_some());
    }

    /// The scheduler as it was before batches (every pod and node decoded per decision),
    /// kept as the reference the batch must agree with.
    fn reference_choose_node(pod: &Pod, snapshot: &Snapshot) -> Result<String, String> {
        let nodes: Vec<&Node> = snapshot.list::<Node>(None).collect();
        if nodes.is_empty() {
            return Err("0 nodes are available: no nodes registered".to_owned());
        }
        let (cpu, memory) = requests(pod);
        let owner = controller_of(&pod.metadata).map(|r| r.uid.clone());
        // Per node: requested CPU, memory, pods of the same owner, all pods.
        let mut used: BTreeMap<String, (u64, u64, usize, usize)> = BTreeMap::new();
        for other in snapshot.list::<Pod>(None) {
            let node = other.spec.node_name.as_str();
            if node.is_empty() || pod_is_terminal(other) {
                continue;
            }
            let (c, m) = requests(other);
            let entry = used.entry(node.to_owned()).or_default();
            entry.0 += c;
            entry.1 += m;
            entry.2 +=
                usize::from(owner.is_some() && controller_uid(&other.metadata) == owner.as_deref());
            entry.3 += 1;
        }
        let mut rejected: BTreeMap<&str, usize> = BTreeMap::new();
        let mut best: Option<((usize, u64, usize), String)> = None;
        for node in nodes.iter().copied() {
            let name = &node.metadata.name;
            let reason = if !node_ready(node) {
                Some("node(s) were not ready")
            } else if node.spec.unschedulable {
                Some("node(s) were unschedulable")
            } else if !pod
                .spec
                .node_selector
                .iter()
                .all(|(k, v)| node.metadata.labels.get(k) == Some(v))
            {
                Some("node(s) didn't match Pod's node affinity/selector")
            } else {
                None
            };
            if let Some(reason) = reason {
                *rejected.entry(reason).or_default() += 1;
                continue;
            }
            let allocatable = node.status.as_ref().map(|s| &s.allocatable);
            let cap_cpu = allocatable
                .and_then(|a| a.get("cpu"))
                .and_then(|q| parse_cpu_millis(q).ok())
                .unwrap_or(DEFAULT_CPU_MILLIS);
            let cap_mem = allocatable
                .and_then(|a| a.get("memory"))
                .and_then(|q| parse_memory_bytes(q).ok())
                .unwrap_or(DEFAULT_MEMORY_BYTES);
            let (used_cpu, used_mem, same_owner, pods) =
                used.get(name).copied().unwrap_or_default();
            if used_cpu + cpu > cap_cpu {
                *rejected.entry("Insufficient cpu").or_default() += 1;
                continue;
            }
            if used_mem + memory > cap_mem {
                *rejected.entry("Insufficient memory").or_default() += 1;
                continue;
            }
            // Spread replicas first, then prefer the emptier node (in thousandths).
            let load = ((used_cpu + cpu) * 1000 / cap_cpu.max(1))
                .max((used_mem + memory) * 1000 / cap_mem.max(1));
            let score = (same_owner, load, pods);
            if best.as_ref().is_none_or(|(s, _)| score < *s) {
                best = Some((score, name.clone()));
            }
        }
        best.map(|(_, name)| name).ok_or_else(|| {
            let mut reasons: Vec<String> =
                rejected.iter().map(|(r, n)| format!("{n} {r}")).collect();
            reasons.sort();
            format!(
                "0/{} nodes are available: {}.",
                nodes.len(),
                reasons.join(", ")
            )
        })
    }

    /// The batch decides as the old scheduler did one pod at a time on a store that had
    /// the earlier bindings, across owners, sizes, selectors and unfit nodes.
    #[test]
    fn a_batch_decides_as_one_pod_at_a_time_would() {
        let mut objects = vec![
            node("a", true, "2", json!({"zone": "x"})),
            node("b", true, "3", json!({"zone": "y"})),
            node("c", false, "8", json!({"zone": "x"})),
            node("d", true, "1", json!({})),
            node("e", true, "8", json!({"zone": "x"})),
            pod("old", "b", "1", "rs1"),
            pod("older", "d", "100m", "rs2"),
        ];
        objects[4].1["spec"]["unschedulable"] = json!(true);
        for i in 0..30 {
            let owner = ["rs1", "rs2", "rs3"][i % 3];
            let big_memory = i % 3 == 1;
            let cpu = if big_memory {
                "50m"
            } else {
                ["100m", "500m", "250m", "1"][i % 4]
            };
            let mut p = pod(&format!("p{i:02}"), "", cpu, owner);
            if i % 5 == 0 {
                p.1["spec"]["nodeSelector"] = json!({"zone": "x"});
            }
            if big_memory {
                p.1["spec"]["containers"][0]["resources"]["requests"]["memory"] = json!("700Mi");
            }
            if i % 6 == 0 {
                p.1["metadata"]["ownerReferences"] = json!([]);
            }
            objects.push(p);
        }
        let batch = schedule_batch(objects.clone());
        // One at a time, each binding written back before the next decision.
        let mut one_by_one = Vec::new();
        for (name, _) in &batch {
            let snapshot = snapshot(objects.clone(), 1);
            let pod = snapshot.get::<Pod>("default", name).expect("pod");
            let verdict = reference_choose_node(pod, &snapshot).unwrap_or_else(|reason| reason);
            if let Some(entry) = objects
                .iter_mut()
                .find(|(_, o)| o["metadata"]["name"] == name.as_str())
                && !verdict.starts_with("0/")
            {
                entry.1["spec"]["nodeName"] = json!(verdict);
            }
            one_by_one.push((name.clone(), verdict));
        }
        assert_eq!(batch, one_by_one);
        for full in ["Insufficient cpu", "Insufficient memory"] {
            assert!(
                batch.iter().any(|(_, v)| v.contains(full)),
                "some pod finds no room, {full}: {batch:?}"
            );
        }
    }

    /// No timing here: a cluster-sized batch must place every pod, evenly.
    #[test]
    fn a_large_batch_fills_every_node_evenly() {
        let mut objects: Vec<(&'static ResourceType, Value)> = (0..200)
            .map(|i| node(&format!("n{i:03}"), true, "4", json!({})))
            .collect();
        objects.extend((0..2000).map(|i| pod(&format!("p{i:04}"), "", "100m", "rs")));
        let batch = schedule_batch(objects);
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for (_, node) in &batch {
            *per_node.entry(node.clone()).or_default() += 1;
        }
        assert_eq!(per_node.len(), 200, "{per_node:?}");
        assert!(per_node.values().all(|n| *n == 10), "{per_node:?}");
    }

    fn change(
        rt: &ResourceType,
        object: &Value,
        previous: Option<&Value>,
        deleted: bool,
    ) -> Change {
        let object = super::super::fixtures::object(rt, object.clone());
        Change {
            object: Arc::new(object),
            deleted,
            previous: previous.map(|p| Arc::new(super::super::fixtures::object(rt, p.clone()))),
        }
    }

    #[test]
    fn heartbeats_do_not_requeue_pending_pods_but_real_node_changes_do() {
        let (_, a) = node("a", true, "4", json!({}));
        let snapshot = snapshot(
            vec![
                (&NODES, a.clone()),
                pod("bound", "a", "1", "rs"),
                pod("waiting", "", "100m", "rs"),
            ],
            1,
        );
        let waiting = vec![("default".to_owned(), "waiting".to_owned())];
        let affected = |c: Change| Scheduler.affected(&c, &snapshot);

        let mut beat = a.clone();
        beat["status"]["conditions"][0]["lastHeartbeatTime"] = json!("2026-01-01T00:00:10Z");
        assert!(affected(change(&NODES, &beat, Some(&a), false)).is_empty());
        assert_eq!(
            affected(change(&NODES, &a, None, false)),
            waiting,
            "a new node"
        );
        let mut labelled = a.clone();
        labelled["metadata"]["labels"] = json!({"zone": "x"});
        assert_eq!(
            affected(change(&NODES, &labelled, Some(&a), false)),
            waiting
        );
        let mut bigger = a.clone();
        bigger["status"]["allocatable"]["cpu"] = json!("8");
        assert_eq!(affected(change(&NODES, &bigger, Some(&a), false)), waiting);
        let (_, down) = node("a", false, "4", json!({}));
        assert_eq!(
            affected(change(&NODES, &a, Some(&down), false)),
            waiting,
            "ready again"
        );
        let mut uncordoned = a.clone();
        uncordoned["spec"]["unschedulable"] = json!(true);
        assert_eq!(
            affected(change(&NODES, &a, Some(&uncordoned), false)),
            waiting
        );
        assert!(
            affected(change(&NODES, &a, Some(&a), true)).is_empty(),
            "a node gone"
        );
    }

    #[test]
    fn only_pods_that_held_resources_free_room_for_others() {
        let snapshot = snapshot(
            vec![
                node("a", true, "4", json!({})),
                pod("waiting", "", "100m", "rs"),
            ],
            1,
        );
        let waiting = vec![("default".to_owned(), "waiting".to_owned())];
        let affected = |c: Change| Scheduler.affected(&c, &snapshot);
        let (_, bound) = pod("bound", "a", "1", "rs");
        let (_, other) = pod("other", "", "1", "rs");
        assert_eq!(affected(change(&PODS, &bound, Some(&bound), true)), waiting);
        assert!(affected(change(&PODS, &other, Some(&other), true)).is_empty());
        let mut done = bound.clone();
        done["status"] = json!({"phase": "Succeeded"});
        assert_eq!(affected(change(&PODS, &done, Some(&bound), false)), waiting);
        assert!(affected(change(&PODS, &done, Some(&done), false)).is_empty());
        assert_eq!(
            affected(change(&PODS, &other, None, false)),
            vec![("default".to_owned(), "other".to_owned())],
            "a pending pod itself"
        );
        assert!(affected(change(&PODS, &bound, None, false)).is_empty());
    }
}
