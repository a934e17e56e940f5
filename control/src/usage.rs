//! Load figures: the latest CPU, memory and connection-rate figures agents send with
//! their heartbeats. Kept in memory only, as metrics-server does — they are minutes-old
//! facts, not state: a restarted control plane has none until the next heartbeats, and
//! the autoscaler treats pods without figures conservatively.
//!
//! CPU and memory are attributed to a pod only while it is still bound to the node that
//! reported them and has the uid it reported, so a node cannot speak for other nodes'
//! pods, and a replaced pod does not inherit its predecessor's figures. A pod's
//! connection rate is the sum of what every node's datapath sent to its address.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use berth_api::{agent::NodeUsage, core::Pod};
use serde_json::{Value, json};

use crate::util;

/// Figures older than this are dropped (a node that stopped reporting has none).
pub const MAX_AGE_SECS: u64 = 30;

#[derive(Debug, Clone, PartialEq)]
pub struct NodeFigures {
    /// Unix seconds when the control plane received them.
    pub received: u64,
    pub window_ms: u32,
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
    pub pods: Vec<PodFigures>,
    /// Backend address → new connections per second this node's datapath sent there.
    pub backends: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodFigures {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
    /// Summed over the nodes' backend rates for the pod's address.
    pub connections_per_second: f64,
    /// (container name, millicores, bytes).
    pub containers: Vec<(String, u64, u64)>,
}

fn pods_of(usage: &NodeUsage) -> Vec<PodFigures> {
    {
        usage
            .pods
            .iter()
            .map(|p| PodFigures {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                uid: p.uid.clone(),
                cpu_millicores: p.cpu_millicores,
                memory_bytes: p.memory_bytes,
                connections_per_second: 0.0,
                containers: p
                    .containers
                    .iter()
                    .map(|c| (c.name.clone(), c.cpu_millicores, c.memory_bytes))
                    .collect(),
            })
            .collect()
    }
}

/// The shared table, by node name.
#[derive(Clone, Default)]
pub struct Usage {
    nodes: Arc<RwLock<BTreeMap<String, NodeFigures>>>,
}

/// Fresh figures at one moment, for the REST API and the autoscaler.
#[derive(Debug, Clone, Default)]
pub struct UsageView {
    pub nodes: BTreeMap<String, NodeFigures>,
    /// `namespace/name` → (reporting node, figures).
    pods: BTreeMap<String, (String, PodFigures)>,
    /// Pod address → new connections per second, summed over the nodes.
    connections: BTreeMap<String, f64>,
}

impl Usage {
    pub fn record(&self, node: &str, usage: &NodeUsage, now: u64) {
        let figures = NodeFigures {
            received: now,
            window_ms: usage.window_ms,
            cpu_millicores: usage.cpu_millicores,
            memory_bytes: usage.memory_bytes,
            pods: pods_of(usage),
            backends: usage
                .backends
                .iter()
                // A NaN or negative rate is a broken report, not a figure.
                .filter(|b| b.connections_per_second.is_finite() && b.connections_per_second >= 0.0)
                .map(|b| (b.ip.clone(), b.connections_per_second))
                .collect(),
        };
        if let Ok(mut nodes) = self.nodes.write() {
            nodes.insert(node.to_owned(), figures);
        }
    }

    /// Figures no older than [`MAX_AGE_SECS`] at `now`.
    pub fn view(&self, now: u64) -> UsageView {
        let nodes: BTreeMap<String, NodeFigures> = self
            .nodes
            .read()
            .map(|nodes| {
                nodes
                    .iter()
                    .filter(|(_, f)| now.saturating_sub(f.received) <= MAX_AGE_SECS)
                    .map(|(n, f)| (n.clone(), f.clone()))
                    .collect()
            })
            .unwrap_or_default();
        UsageView::new(nodes)
    }
}

impl UsageView {
    pub fn new(nodes: BTreeMap<String, NodeFigures>) -> Self {
        let pods = nodes
            .iter()
            .flat_map(|(node, figures)| {
                figures.pods.iter().map(move |p| {
                    (
                        format!("{}/{}", p.namespace, p.name),
                        (node.clone(), p.clone()),
                    )
                })
            })
            .collect();
        let mut connections = BTreeMap::new();
        for (ip, rate) in nodes.values().flat_map(|f| &f.backends) {
            *connections.entry(ip.clone()).or_insert(0.0) += rate;
        }
        Self {
            nodes,
            pods,
            connections,
        }
    }

    /// The figures of `pod` (an API object), if its node reported them for this very pod,
    /// with its connection rate from every node.
    pub fn pod(&self, pod: &Pod) -> Option<PodFigures> {
        let meta = &pod.metadata;
        let (node, figures) = self
            .pods
            .get(&format!("{}/{}", meta.namespace, meta.name))?;
        if *node != pod.spec.node_name || figures.uid != meta.uid {
            return None;
        }
        let mut figures = figures.clone();
        let ip = pod.status.as_ref().map_or("", |s| s.pod_ip.as_str());
        figures.connections_per_second = self.connections.get(ip).copied().unwrap_or(0.0);
        Some(figures)
    }
}

/// `250m`: CPU as metrics-server writes it.
pub fn cpu_quantity(millicores: u64) -> String {
    format!("{millicores}m")
}

/// `1024Ki`: memory as metrics-server writes it.
pub fn memory_quantity(bytes: u64) -> String {
    format!("{}Ki", bytes / 1024)
}

fn window(window_ms: u32) -> String {
    format!("{}s", f64::from(window_ms) / 1000.0)
}

/// A `NodeMetrics` object of metrics.k8s.io/v1beta1.
pub fn node_metrics(name: &str, figures: &NodeFigures) -> Value {
    json!({
        "metadata": {"name": name},
        "timestamp": util::rfc3339(figures.received),
        "window": window(figures.window_ms),
        "usage": {
            "cpu": cpu_quantity(figures.cpu_millicores),
            "memory": memory_quantity(figures.memory_bytes),
        },
    })
}

/// A `PodMetrics` object of metrics.k8s.io/v1beta1, plus Berth's connection rate.
pub fn pod_metrics(figures: &PodFigures, node: &NodeFigures) -> Value {
    let containers: Vec<Value> = figures
        .containers
        .iter()
        .map(|(name, cpu, memory)| {
            json!({"name": name, "usage": {"cpu": cpu_quantity(*cpu), "memory": memory_quantity(*memory)}})
        })
        .collect();
    json!({
        "metadata": {"name": figures.name, "namespace": figures.namespace},
        "timestamp": util::rfc3339(node.received),
        "window": window(node.window_ms),
        "containers": containers,
        // Not in Kubernetes' PodMetrics: what the HPA's Pods metric of that name reads.
        "newConnectionsPerSecond": figures.connections_per_second,
    })
}

#[cfg(test)]
mod tests {
    use berth_api::agent::{BackendRate, ContainerUsage, PodUsage};

    use super::*;

    fn report() -> NodeUsage {
        NodeUsage {
            cpu_millicores: 1500,
            memory_bytes: 2 << 20,
            window_ms: 2000,
            pods: vec![PodUsage {
                namespace: "default".to_owned(),
                name: "web-1".to_owned(),
                uid: "u1".to_owned(),
                cpu_millicores: 250,
                memory_bytes: 4096,
                containers: vec![ContainerUsage {
                    name: "web".to_owned(),
                    cpu_millicores: 250,
                    memory_bytes: 4096,
                }],
            }],
            backends: vec![
                BackendRate {
                    ip: "198.19.0.2".to_owned(),
                    connections_per_second: 3.0,
                },
                BackendRate {
                    ip: "198.19.1.2".to_owned(),
                    connections_per_second: f64::NAN,
                },
            ],
        }
    }

    #[test]
    fn figures_belong_to_the_reporting_node_and_pod_and_age_out() {
        let usage = Usage::default();
        usage.record("n1", &report(), 1000);
        // Another node sent connections to web-1 too; its own pods it does not report.
        let mut other = report();
        other.pods.clear();
        usage.record("n2", &other, 1005);
        let view = usage.view(1010);
        let pod: Pod = serde_json::from_value(
            json!({"metadata": {"namespace": "default", "name": "web-1", "uid": "u1"},
            "spec": {"nodeName": "n1"}, "status": {"podIP": "198.19.0.2"}}),
        )
        .expect("a pod");
        let figures = view.pod(&pod).expect("figures");
        assert_eq!(figures.cpu_millicores, 250);
        assert_eq!(figures.connections_per_second, 6.0, "both nodes' rates");
        assert!(
            !view.nodes["n1"].backends.contains_key("198.19.1.2"),
            "NaN is not a rate"
        );
        let mut elsewhere = pod.clone();
        elsewhere.spec.node_name = "n2".to_owned();
        assert!(view.pod(&elsewhere).is_none(), "another node's pod");
        let mut replaced = pod.clone();
        replaced.metadata.uid = "u2".to_owned();
        assert!(view.pod(&replaced).is_none(), "a new pod of the same name");
        assert_eq!(
            usage.view(1000 + MAX_AGE_SECS + 1).nodes.len(),
            1,
            "n1 aged out"
        );
        assert!(usage.view(1005 + MAX_AGE_SECS + 1).nodes.is_empty());

        let node = &view.nodes["n1"];
        assert_eq!(
            node_metrics("n1", node)["usage"],
            json!({"cpu": "1500m", "memory": "2048Ki"})
        );
        assert_eq!(node_metrics("n1", node)["window"], "2s");
        assert_eq!(
            pod_metrics(&figures, node)["containers"][0]["usage"]["cpu"],
            "250m"
        );
    }
}
