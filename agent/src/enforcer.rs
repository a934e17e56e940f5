//! Keeps the datapath's policy maps current: follows the policies watch
//! (NetworkPolicies, Namespaces, every node's Pods), compiles the latest view with
//! [`crate::policy::compile`] and writes what changed with [`PolicyMaps::apply`]. Events
//! that arrive while a compilation runs are folded into the next one.

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc};

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
    datapath::PolicyMaps,
    policy::{Identities, PolicyInput, compile},
};

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
pub async fn enforce(client: AgentClient<Channel>, maps: PolicyMaps, node: NodeSelf) {
    let (tx, rx) = watch::channel(None);
    let applier = tokio::spawn(apply_latest(rx, maps, node));
    berth_watch::run(client, Watched::Policies, &mut Latest(tx)).await;
    applier.abort();
}

async fn apply_latest(mut rx: watch::Receiver<Option<View>>, mut maps: PolicyMaps, node: NodeSelf) {
    let mut ids = Identities::default();
    while rx.changed().await.is_ok() {
        let Some(view) = rx.borrow_and_update().clone() else {
            continue;
        };
        let node = node.clone();
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
