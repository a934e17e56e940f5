//! Keeps the datapath's policy maps current: follows the policies watch
//! (NetworkPolicies, Namespaces, every node's Pods), compiles the latest view with
//! [`crate::policy::compile`] and writes what changed with [`PolicyMaps::apply`]. Events
//! that arrive while a compilation runs are folded into the next one. Also prints the
//! flows the programs report dropped, naming pods and policies.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{Arc, RwLock},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use berth_ebpf_common::{IPPROTO_TCP, IPPROTO_UDP, POLICY_INGRESS, PolicyDrop};

use berth_api::{
    agent::agent_client::AgentClient,
    core::{Container, Namespace, Pod, PodSpec, PodStatus},
    meta::ObjectMeta,
    networking::NetworkPolicy,
};
use berth_watch::{Change, Consumer, Objects, WatchObject, Watched};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::{
    datapath::{PolicyMaps, policy_drop},
    policy::{Identities, PolicyInput, compile},
};

/// Names of what the compiled policies number, for the verdict metrics and drop log.
#[derive(Debug, Default)]
pub struct PolicyNames {
    /// Policy id → (namespace, name).
    pub policies: BTreeMap<u32, (String, String)>,
    /// Pod address → `namespace/name`.
    pub pods: BTreeMap<Ipv4Addr, String>,
}

/// The names as of the last compilation, shared with the metrics and the drop log.
pub type SharedPolicyNames = Arc<RwLock<PolicyNames>>;

/// One object of the policies watch, decoded once and kept to what policies read.
#[derive(Debug, Clone)]
pub enum PolicyObject {
    Pod(Arc<Pod>),
    Namespace(Arc<Namespace>),
    Policy(Arc<NetworkPolicy>),
}

/// A pod as policies see it: namespace, name, labels, node, named ports, address.
fn slim_pod(pod: Pod) -> Pod {
    let status = pod.status.map(|s| PodStatus {
        phase: s.phase,
        pod_ip: s.pod_ip,
        ..PodStatus::default()
    });
    Pod {
        metadata: ObjectMeta {
            name: pod.metadata.name,
            namespace: pod.metadata.namespace,
            labels: pod.metadata.labels,
            ..ObjectMeta::default()
        },
        spec: PodSpec {
            node_name: pod.spec.node_name,
            containers: pod
                .spec
                .containers
                .into_iter()
                .map(|c| Container {
                    ports: c.ports,
                    ..Container::default()
                })
                .collect(),
            ..PodSpec::default()
        },
        status,
        ..Pod::default()
    }
}

impl WatchObject for PolicyObject {
    fn decode(kind: &str, json: &[u8]) -> Option<(String, Self)> {
        let decoded = match kind {
            "Pod" => serde_json::from_slice(json).map(|p| Self::Pod(Arc::new(slim_pod(p)))),
            "Namespace" => serde_json::from_slice(json).map(|n| Self::Namespace(Arc::new(n))),
            "NetworkPolicy" => serde_json::from_slice(json).map(|p| Self::Policy(Arc::new(p))),
            _ => return None,
        };
        let object = match decoded {
            Ok(object) => object,
            Err(error) => {
                tracing::warn!(kind, %error, "undecodable object in the policies watch");
                return None;
            }
        };
        let meta = match &object {
            Self::Pod(pod) => &pod.metadata,
            Self::Namespace(namespace) => &namespace.metadata,
            Self::Policy(policy) => &policy.metadata,
        };
        let key = format!("{kind} {}/{}", meta.namespace, meta.name);
        (!meta.name.is_empty()).then_some((key, object))
    }
}

type View = Arc<BTreeMap<String, PolicyObject>>;

/// Hands the latest view to the compiling task; only the newest one matters.
struct Latest(watch::Sender<Option<View>>);

impl Consumer<PolicyObject> for Latest {
    async fn changed(
        &mut self,
        objects: &Objects<PolicyObject>,
        _change: Change<PolicyObject>,
    ) -> bool {
        self.0.send(Some(Arc::new(objects.by_key.clone()))).is_ok()
    }

    fn wanted(&self) -> bool {
        !self.0.is_closed()
    }
}

/// What this node compiles for: its name and its own addresses.
#[derive(Debug, Clone)]
pub struct NodeSelf {
    pub name: String,
    pub addrs: Vec<Ipv4Addr>,
}

/// Follows the policies watch and keeps `maps` current, until the watch ends.
pub async fn enforce(
    client: AgentClient<Channel>,
    maps: PolicyMaps,
    node: NodeSelf,
    names: SharedPolicyNames,
) {
    let (tx, rx) = watch::channel(None);
    let applier = tokio::spawn(apply_latest(rx, maps, node, names));
    berth_watch::run(client, Watched::Policies, &mut Latest(tx)).await;
    applier.abort();
}

async fn apply_latest(
    mut rx: watch::Receiver<Option<View>>,
    mut maps: PolicyMaps,
    node: NodeSelf,
    names: SharedPolicyNames,
) {
    let mut ids = Identities::default();
    while rx.changed().await.is_ok() {
        let Some(view) = rx.borrow_and_update().clone() else {
            continue;
        };
        let node = node.clone();
        let names = names.clone();
        // Map writes are syscalls, one per changed entry: off the async workers.
        let done = tokio::task::spawn_blocking(move || {
            let (mut pods, mut namespaces, mut policies) = (Vec::new(), Vec::new(), Vec::new());
            for object in view.values() {
                match object {
                    PolicyObject::Pod(pod) => pods.push(Pod::clone(pod)),
                    PolicyObject::Namespace(ns) => namespaces.push(Namespace::clone(ns)),
                    PolicyObject::Policy(p) => policies.push(NetworkPolicy::clone(p)),
                }
            }
            let plan = compile(
                &PolicyInput {
                    node_name: &node.name,
                    host_addrs: &node.addrs,
                    pods: &pods,
                    namespaces: &namespaces,
                    policies: &policies,
                },
                &mut ids,
            );
            let result = maps.apply(&plan);
            let pods = pods
                .iter()
                .filter_map(|pod| {
                    let addr = pod.status.as_ref()?.pod_ip.parse().ok()?;
                    let meta = &pod.metadata;
                    Some((addr, format!("{}/{}", meta.namespace, meta.name)))
                })
                .collect();
            let fresh = PolicyNames {
                policies: plan.policies,
                pods,
            };
            match names.write() {
                Ok(mut names) => *names = fresh,
                Err(poisoned) => *poisoned.into_inner() = fresh,
            }
            (maps, ids, result)
        })
        .await;
        match done {
            Ok((returned_maps, returned_ids, result)) => {
                maps = returned_maps;
                ids = returned_ids;
                if let Err(error) = result {
                    tracing::warn!(%error, "writing the policy maps failed; retrying at the next change");
                }
            }
            Err(error) => {
                tracing::error!(%error, "the policy compilation panicked; policies are no longer updated");
                return;
            }
        }
    }
}

/// How often the drop log is read: records wait at most this long, and the ring buffer
/// holds far more than the programs' budget sends in it.
const DROP_LOG_PERIOD: Duration = Duration::from_secs(1);

/// Prints the flows the programs report dropped for a NetworkPolicy (at most
/// `POLICY_LOG_PER_SECOND` a second per CPU), one line each, until the agent stops.
pub async fn log_drops(mut log: RingBuf<MapData>, names: SharedPolicyNames) {
    let mut tick = tokio::time::interval(DROP_LOG_PERIOD);
    loop {
        tick.tick().await;
        let names = match names.read() {
            Ok(names) => names,
            Err(poisoned) => poisoned.into_inner(),
        };
        while let Some(item) = log.next() {
            if let Some(drop) = policy_drop(&item) {
                tracing::info!("{}", describe_drop(&drop, &names));
            }
        }
    }
}

/// One drop as a line: direction, pod, source, destination, port, and the policy it
/// was counted under; the peer named too when it is a pod.
pub fn describe_drop(drop: &PolicyDrop, names: &PolicyNames) -> String {
    let flow = &drop.flow;
    let addr = |a: u32| Ipv4Addr::from(u32::from_be(a));
    let endpoint = addr(drop.endpoint);
    let pod = names
        .pods
        .get(&endpoint)
        .map_or_else(|| endpoint.to_string(), Clone::clone);
    let side = |a: u32, port: u16| {
        let a = addr(a);
        let port = u16::from_be(port);
        match names.pods.get(&a) {
            Some(name) if a != endpoint => format!("{a}:{port} ({name})"),
            _ => format!("{a}:{port}"),
        }
    };
    let proto = match flow.proto {
        IPPROTO_TCP => "TCP".to_owned(),
        IPPROTO_UDP => "UDP".to_owned(),
        other => other.to_string(),
    };
    let direction = if flow.direction == POLICY_INGRESS {
        "ingress"
    } else {
        "egress"
    };
    let policy = names
        .policies
        .get(&drop.policy)
        .map_or_else(|| "-".to_owned(), |(ns, name)| format!("{ns}/{name}"));
    format!(
        "NetworkPolicy dropped {direction} of pod {pod}: {} -> {} {proto} (policy {policy})",
        side(flow.src_addr, flow.src_port),
        side(flow.dst_addr, flow.dst_port),
    )
}

#[cfg(test)]
mod tests {
    use berth_ebpf_common::{FlowKey, POLICY_EGRESS};

    use super::*;

    #[test]
    fn a_drop_names_its_pods_port_direction_and_policy() {
        let names = PolicyNames {
            policies: BTreeMap::from([(3, ("c".to_owned(), "lock".to_owned()))]),
            pods: BTreeMap::from([
                (Ipv4Addr::new(10, 0, 1, 5), "c/client".to_owned()),
                (Ipv4Addr::new(10, 0, 2, 7), "a/server".to_owned()),
            ]),
        };
        let drop = PolicyDrop {
            flow: FlowKey {
                src_addr: u32::from(Ipv4Addr::new(10, 0, 1, 5)).to_be(),
                dst_addr: u32::from(Ipv4Addr::new(198, 18, 0, 9)).to_be(),
                src_port: 40_000u16.to_be(),
                dst_port: 443u16.to_be(),
                proto: IPPROTO_TCP,
                direction: POLICY_EGRESS,
                _pad: 0,
            },
            endpoint: u32::from(Ipv4Addr::new(10, 0, 1, 5)).to_be(),
            policy: 3,
        };
        assert_eq!(
            describe_drop(&drop, &names),
            "NetworkPolicy dropped egress of pod c/client: 10.0.1.5:40000 -> 198.18.0.9:443 TCP (policy c/lock)"
        );
        let into_server = PolicyDrop {
            flow: FlowKey {
                dst_addr: u32::from(Ipv4Addr::new(10, 0, 2, 7)).to_be(),
                dst_port: 80u16.to_be(),
                direction: POLICY_INGRESS,
                ..drop.flow
            },
            endpoint: u32::from(Ipv4Addr::new(10, 0, 2, 7)).to_be(),
            policy: 9,
        };
        assert_eq!(
            describe_drop(&into_server, &names),
            "NetworkPolicy dropped ingress of pod a/server: 10.0.1.5:40000 (c/client) -> 10.0.2.7:80 TCP (policy -)"
        );
    }
}
