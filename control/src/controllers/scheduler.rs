//! Binds pending pods to nodes: filter (ready, schedulable, node selector, free CPU and
//! memory), then score (fewest pods of the same owner, then least requested).

use std::collections::BTreeMap;

use berth_api::{
    ResourceType,
    core::{Node, Pod, parse_cpu_millis, parse_memory_bytes},
};
use serde_json::{Value, json};

use super::{
    Change, Context, NODES, Outcome, PODS, Reconciler, Snapshot, Write, controller_of, is_kind,
    pod_is_terminal,
};
use crate::registry::{name_of, namespace_of};

pub struct Scheduler;

/// What a node offers when its status does not say (hollow or just-joined nodes).
const DEFAULT_CPU_MILLIS: u64 = 4_000;
const DEFAULT_MEMORY_BYTES: u64 = 8 << 30;

impl Reconciler for Scheduler {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    fn kind(&self) -> &'static ResourceType {
        &PODS
    }

    fn affected(&self, change: &Change, snapshot: &Snapshot) -> Vec<(String, String)> {
        let pending = |pod: &&Value| {
            pod.pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .is_empty()
                && !pod_is_terminal(pod)
        };
        if is_kind(change, &PODS) {
            return if change.deleted {
                // Freed resources: pods waiting for room may fit now.
                snapshot
                    .list(&PODS, None)
                    .filter(pending)
                    .map(key)
                    .collect()
            } else if pending(&&change.object) {
                vec![key(&change.object)]
            } else {
                Vec::new()
            };
        }
        if is_kind(change, &NODES) {
            return snapshot
                .list(&PODS, None)
                .filter(pending)
                .map(key)
                .collect();
        }
        Vec::new()
    }

    fn reconcile(&self, pod: &Value, snapshot: &Snapshot, _ctx: &Context) -> Outcome {
        if !pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .is_empty()
            || pod_is_terminal(pod)
        {
            return Outcome::default();
        }
        let Ok(typed) = serde_json::from_value::<Pod>(pod.clone()) else {
            return Outcome::default();
        };
        match choose_node(&typed, pod, snapshot) {
            Ok(node) => {
                let mut bound = pod.clone();
                bound["spec"]["nodeName"] = json!(node);
                let message = format!(
                    "Successfully assigned {}/{} to {node}",
                    namespace_of(pod),
                    name_of(pod)
                );
                Outcome::writes(vec![
                    Write::Update {
                        rt: &PODS,
                        object: bound,
                    },
                    Write::Event {
                        involved: pod.clone(),
                        reason: "Scheduled".to_owned(),
                        message,
                        type_: "Normal",
                    },
                ])
            }
            Err(reason) => {
                let already_reported =
                    pod.pointer("/status/message").and_then(Value::as_str) == Some(reason.as_str());
                let mut writes = Vec::new();
                if !already_reported {
                    let mut status = pod.clone();
                    status["status"] = json!({"phase": "Pending", "message": reason, "conditions": [
                        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": reason}
                    ]});
                    writes.push(Write::UpdateStatus {
                        rt: &PODS,
                        object: status,
                    });
                    writes.push(Write::Event {
                        involved: pod.clone(),
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

    fn sequential(&self) -> bool {
        true
    }
}

fn key(object: &Value) -> (String, String) {
    (namespace_of(object).to_owned(), name_of(object).to_owned())
}

fn requests(pod: &Pod) -> (u64, u64) {
    pod.spec.containers.iter().fold((0, 0), |(cpu, mem), c| {
        let r = &c.resources.requests;
        (
            cpu + r
                .get("cpu")
                .and_then(|q| parse_cpu_millis(q).ok())
                .unwrap_or(0),
            mem + r
                .get("memory")
                .and_then(|q| parse_memory_bytes(q).ok())
                .unwrap_or(0),
        )
    })
}

fn node_ready(node: &Node) -> bool {
    node.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// The chosen node's name, or why no node fits (counted per reason, like kube-scheduler).
pub fn choose_node(pod: &Pod, raw: &Value, snapshot: &Snapshot) -> Result<String, String> {
    let nodes: Vec<Node> = snapshot.typed(&NODES, None);
    if nodes.is_empty() {
        return Err("0 nodes are available: no nodes registered".to_owned());
    }
    let (cpu, memory) = requests(pod);
    let owner = controller_of(raw).map(|(_, _, uid)| uid.to_owned());
    // Per node: requested CPU, memory, pods of the same owner, all pods.
    let mut used: BTreeMap<String, (u64, u64, usize, usize)> = BTreeMap::new();
    for other in snapshot.list(&PODS, None) {
        let node = other
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if node.is_empty() || pod_is_terminal(other) {
            continue;
        }
        let Ok(typed) = serde_json::from_value::<Pod>(other.clone()) else {
            continue;
        };
        let (c, m) = requests(&typed);
        let entry = used.entry(node.to_owned()).or_default();
        entry.0 += c;
        entry.1 += m;
        entry.2 += usize::from(
            owner.is_some() && controller_of(other).map(|(_, _, uid)| uid) == owner.as_deref(),
        );
        entry.3 += 1;
    }
    let mut rejected: BTreeMap<&str, usize> = BTreeMap::new();
    let mut best: Option<((usize, u64, usize), String)> = None;
    for node in &nodes {
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
            Some("node(s) didn't match the pod's node selector")
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
        let (used_cpu, used_mem, same_owner, pods) = used.get(name).copied().unwrap_or_default();
        if used_cpu + cpu > cap_cpu {
            *rejected.entry("node(s) had insufficient cpu").or_default() += 1;
            continue;
        }
        if used_mem + memory > cap_mem {
            *rejected
                .entry("node(s) had insufficient memory")
                .or_default() += 1;
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
        let reasons: Vec<String> = rejected.iter().map(|(r, n)| format!("{n} {r}")).collect();
        format!(
            "0/{} nodes are available: {}",
            nodes.len(),
            reasons.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
        let snapshot = Snapshot::from_objects(objects, 1);
        let raw = snapshot.get(&PODS, "default", name).expect("pod").clone();
        let typed: Pod = serde_json::from_value(raw.clone()).expect("typed");
        choose_node(&typed, &raw, &snapshot)
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
        let objects = vec![
            node("down", false, "4", json!({})),
            node("small", true, "1", json!({})),
            node("wrong", true, "8", json!({"zone": "b"})),
            pod("hog", "small", "800m", "x"),
            pod("p", "", "500m", "rs"),
        ];
        let mut objects = objects;
        objects[4].1["spec"]["nodeSelector"] = json!({"zone": "a"});
        let reason = schedule(objects, "p").expect_err("nothing fits");
        assert!(reason.starts_with("0/3 nodes are available"), "{reason}");
        assert!(reason.contains("1 node(s) were not ready"), "{reason}");
        assert!(reason.contains("node selector"), "{reason}");
        assert!(
            reason.contains("insufficient cpu") || reason.contains("node selector"),
            "{reason}"
        );
    }

    #[test]
    fn reconcile_binds_and_is_idempotent() {
        let snapshot = Snapshot::from_objects(
            vec![node("a", true, "4", json!({})), pod("p", "", "100m", "rs")],
            1,
        );
        let ctx = Context {
            now: 0,
            settings: super::super::Settings::default(),
        };
        let p = snapshot.get(&PODS, "default", "p").expect("pod");
        let outcome = Scheduler.reconcile(p, &snapshot, &ctx);
        let Some(Write::Update { object, .. }) = outcome.writes.first() else {
            panic!("{outcome:?}");
        };
        assert_eq!(object["spec"]["nodeName"], "a");
        // Once bound, nothing more to do.
        assert_eq!(
            Scheduler.reconcile(object, &snapshot, &ctx),
            Outcome::default()
        );
    }
}
