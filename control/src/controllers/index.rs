//! Sums the controllers would otherwise recompute from every pod of the cluster on each
//! pass, kept up to date as the cache applies each change (client-go's indexers,
//! kube-scheduler's cache): what the pods bound to each node request, how many pods of
//! each controller sit on each node, and how many live and ready pods each controller
//! has. Maintained by [`super::Snapshot`] itself, so it always describes exactly the
//! objects of the snapshot it belongs to, and a controller reading it costs a look-up,
//! not a pass over tens of thousands of pods.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use berth_api::{
    core::{Node, Pod, parse_cpu_millis, parse_memory_bytes},
    scheduling::Taint,
};

use super::{controller_uid, pod_is_ready, pod_is_terminal, pod_is_terminating};
use crate::objects::Object;

/// What a node offers when its status does not say (hollow or just-joined nodes).
pub const DEFAULT_CPU_MILLIS: u64 = 4_000;
pub const DEFAULT_MEMORY_BYTES: u64 = 8 << 30;

/// What the scheduler's filters read of a Node, parsed once per change of the Node
/// rather than once per scheduling pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFit {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Its Ready condition is True.
    pub ready: bool,
    /// Cordoned (`spec.unschedulable`).
    pub unschedulable: bool,
    /// Allocatable millicores and bytes.
    pub cpu: u64,
    pub memory: u64,
    pub taints: Vec<Taint>,
}

impl NodeFit {
    pub fn parse(node: &Node) -> Self {
        let ready = node.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        let allocatable = node.status.as_ref().map(|s| &s.allocatable);
        let cpu = allocatable
            .and_then(|a| a.get("cpu"))
            .and_then(|q| parse_cpu_millis(q).ok())
            .unwrap_or(DEFAULT_CPU_MILLIS);
        let memory = allocatable
            .and_then(|a| a.get("memory"))
            .and_then(|q| parse_memory_bytes(q).ok())
            .unwrap_or(DEFAULT_MEMORY_BYTES);
        Self {
            name: node.metadata.name.clone(),
            labels: node.metadata.labels.clone(),
            ready,
            unschedulable: node.spec.unschedulable,
            cpu,
            memory,
            taints: node.spec.taints.clone(),
        }
    }
}

/// What the pods bound to one node request. Wider than any one request, so adding and
/// taking away pods is exact (a sum can never wrap); readers saturate it to u64.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu: u128,
    pub memory: u128,
    pub pods: usize,
}

impl Usage {
    pub fn cpu(&self) -> u64 {
        u64::try_from(self.cpu).unwrap_or(u64::MAX)
    }

    pub fn memory(&self) -> u64 {
        u64::try_from(self.memory).unwrap_or(u64::MAX)
    }
}

/// A controller's pods that count as its replicas (not finished, not being deleted),
/// and how many of them are ready: what a ReplicaSet's status reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replicas {
    pub active: usize,
    pub ready: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    /// Nodes by name, parsed for the scheduler.
    nodes: BTreeMap<String, Arc<NodeFit>>,
    /// Per node name: the pods bound to it that hold resources (see [`holds_resources`]).
    usage: HashMap<String, Usage>,
    /// Per controller uid: how many of its pods holding resources each node has.
    spread: HashMap<String, HashMap<String, usize>>,
    /// Per namespace and controller uid: its replicas (a ReplicaSet counts the pods of
    /// its own namespace only).
    replicas: HashMap<(String, String), Replicas>,
    /// How many pods holding resources have required pod anti-affinity: while there are
    /// none, no pod need be checked against other pods' terms.
    anti_affinity: usize,
}

/// Whether the pod counts against its node's resources: bound and not finished
/// (a terminating pod still runs, and holds what it asked for until it is gone).
pub fn holds_resources(pod: &Pod) -> bool {
    !pod.spec.node_name.is_empty() && !pod_is_terminal(pod)
}

fn has_required_anti_affinity(pod: &Pod) -> bool {
    pod.spec
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .is_some_and(|a| {
            !a.required_during_scheduling_ignored_during_execution
                .is_empty()
        })
}

/// What the pod's containers request: millicores and bytes.
pub fn requests(pod: &Pod) -> (u64, u64) {
    pod.spec.containers.iter().fold((0, 0), |(cpu, mem), c| {
        let r = &c.resources.requests;
        (
            cpu.saturating_add(
                r.get("cpu")
                    .and_then(|q| parse_cpu_millis(q).ok())
                    .unwrap_or(0),
            ),
            mem.saturating_add(
                r.get("memory")
                    .and_then(|q| parse_memory_bytes(q).ok())
                    .unwrap_or(0),
            ),
        )
    })
}

impl Index {
    /// Accounts for `object` appearing or going away; a change is the old version going
    /// and the new one appearing.
    pub fn count(&mut self, object: &Object, appearing: bool) {
        match object {
            Object::Node(node) => {
                let name = &node.metadata.name;
                if appearing {
                    self.nodes
                        .insert(name.clone(), Arc::new(NodeFit::parse(node)));
                } else {
                    self.nodes.remove(name);
                }
            }
            Object::Pod(pod) => self.count_pod(pod, appearing),
            _ => {}
        }
    }

    fn count_pod(&mut self, pod: &Pod, appearing: bool) {
        let owner = controller_uid(&pod.metadata);
        if holds_resources(pod) {
            if has_required_anti_affinity(pod) {
                self.anti_affinity = if appearing {
                    self.anti_affinity + 1
                } else {
                    self.anti_affinity.saturating_sub(1)
                };
            }
            let node = pod.spec.node_name.as_str();
            let (cpu, memory) = requests(pod);
            let usage = self.usage.entry(node.to_owned()).or_default();
            if appearing {
                usage.cpu += u128::from(cpu);
                usage.memory += u128::from(memory);
                usage.pods += 1;
            } else {
                usage.cpu = usage.cpu.saturating_sub(u128::from(cpu));
                usage.memory = usage.memory.saturating_sub(u128::from(memory));
                usage.pods = usage.pods.saturating_sub(1);
            }
            if *usage == Usage::default() {
                self.usage.remove(node);
            }
            if let Some(uid) = owner {
                let nodes = self.spread.entry(uid.to_owned()).or_default();
                let count = nodes.entry(node.to_owned()).or_default();
                *count = if appearing {
                    *count + 1
                } else {
                    count.saturating_sub(1)
                };
                if *count == 0 {
                    nodes.remove(node);
                }
                if nodes.is_empty() {
                    self.spread.remove(uid);
                }
            }
        }
        if let Some(uid) = owner
            && !pod_is_terminal(pod)
            && !pod_is_terminating(pod)
        {
            let key = (pod.metadata.namespace.clone(), uid.to_owned());
            let replicas = self.replicas.entry(key.clone()).or_default();
            let ready = usize::from(pod_is_ready(pod));
            if appearing {
                replicas.active += 1;
                replicas.ready += ready;
            } else {
                replicas.active = replicas.active.saturating_sub(1);
                replicas.ready = replicas.ready.saturating_sub(ready);
            }
            if *replicas == Replicas::default() {
                self.replicas.remove(&key);
            }
        }
    }

    /// Nodes in name order.
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<NodeFit>> {
        self.nodes.values()
    }

    pub fn usage(&self, node: &str) -> Usage {
        self.usage.get(node).copied().unwrap_or_default()
    }

    /// How many pods of controller `uid` holding resources each node has.
    pub fn spread(&self, uid: &str) -> impl Iterator<Item = (&str, usize)> {
        self.spread
            .get(uid)
            .into_iter()
            .flatten()
            .map(|(node, count)| (node.as_str(), *count))
    }

    /// Whether some pod holding resources has required pod anti-affinity.
    pub fn has_anti_affinity(&self) -> bool {
        self.anti_affinity > 0
    }

    /// The replicas of controller `uid` in `namespace`.
    pub fn replicas(&self, namespace: &str, uid: &str) -> Replicas {
        self.replicas
            .get(&(namespace.to_owned(), uid.to_owned()))
            .copied()
            .unwrap_or_default()
    }
}
