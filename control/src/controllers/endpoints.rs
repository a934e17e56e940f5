//! Service → Endpoints: the addresses of the pods a service selects, ready ones in
//! `addresses` and the rest in `notReadyAddresses`, with target ports resolved.

use std::collections::BTreeMap;

use berth_api::{
    core::{
        EndpointAddress, EndpointPort, EndpointSubset, Endpoints, IntOrString, Pod, Service,
        ServicePort,
    },
    meta::ObjectMeta,
};

use super::{
    Change, Context, Outcome, Reconciler, Snapshot, Write, owner_reference, pod_is_ready,
    pod_is_terminal, pod_is_terminating,
};

pub struct EndpointsController;

fn selects(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = &pod.metadata.labels;
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Reconciler for EndpointsController {
    type Object = Service;

    fn name(&self) -> &'static str {
        "endpoints"
    }

    fn affected(&self, change: &Change, snapshot: &Snapshot) -> Vec<(String, String)> {
        if let Some(pod) = change.as_kind::<Pod>() {
            // A pod whose labels changed away from a selector is caught by the resync.
            return selecting(pod, snapshot);
        }
        if change.as_kind::<Service>().is_some() || change.as_kind::<Endpoints>().is_some() {
            // For Endpoints: someone else edited ours, put them back.
            return vec![change.key()];
        }
        Vec::new()
    }

    fn reconcile(&self, service: &Service, snapshot: &Snapshot, _ctx: &Context) -> Outcome {
        let Some(selected) = select(service, snapshot) else {
            // Without a selector the user manages Endpoints by hand.
            return Outcome::default();
        };
        let ns = &service.metadata.namespace;
        let (mut ready, mut not_ready) = (Vec::new(), Vec::new());
        for endpoint in selected.endpoints {
            if endpoint.ready && !endpoint.address.terminating {
                ready.push(endpoint.address);
            } else {
                // A terminating pod is out of the ready addresses at once, so every node
                // stops sending it new connections while its preStop hook and grace run.
                not_ready.push(endpoint.address);
            }
        }
        let subsets = if ready.is_empty() && not_ready.is_empty() {
            Vec::new()
        } else {
            vec![EndpointSubset {
                addresses: ready,
                not_ready_addresses: not_ready,
                ports: selected.ports,
            }]
        };
        let write = match snapshot.get::<Endpoints>(ns, &service.metadata.name) {
            Some(current) if current.subsets == subsets => return Outcome::default(),
            Some(current) => {
                let mut updated = current.clone();
                updated.subsets = subsets;
                Write::update(updated)
            }
            None => Write::create(Endpoints {
                api_version: "v1".to_owned(),
                kind: "Endpoints".to_owned(),
                metadata: ObjectMeta {
                    name: service.metadata.name.clone(),
                    namespace: ns.clone(),
                    labels: service.metadata.labels.clone(),
                    owner_references: vec![owner_reference(service)],
                    ..ObjectMeta::default()
                },
                subsets,
            }),
        };
        Outcome::writes(vec![write])
    }
}

/// A pod a Service selects, as its endpoint.
pub struct SelectedEndpoint {
    pub address: EndpointAddress,
    /// The pod's Ready condition (a terminating pod may still be ready: serving).
    pub ready: bool,
    pub pod_uid: String,
}

/// What a Service's selector finds: its endpoints in pod-name order and its ports with
/// their targets resolved.
pub struct Selected {
    pub endpoints: Vec<SelectedEndpoint>,
    pub ports: Vec<EndpointPort>,
}

/// The name a pod has under `service` (Kubernetes' rule): its `hostname`, when its
/// `subdomain` names the Service; none otherwise.
fn dns_hostname<'a>(service: &Service, pod: &'a Pod) -> &'a str {
    if pod.spec.subdomain == service.metadata.name {
        &pod.spec.hostname
    } else {
        ""
    }
}

/// The pods `service` selects that have an address and are not finished; None for a
/// Service without a selector, whose endpoints the user manages.
pub fn select(service: &Service, snapshot: &Snapshot) -> Option<Selected> {
    let selector = &service.spec.selector;
    if selector.is_empty() {
        return None;
    }
    let mut endpoints = Vec::new();
    let mut pods: Vec<&Pod> = Vec::new();
    for pod in snapshot.list::<Pod>(Some(&service.metadata.namespace)) {
        let ip = pod.status.as_ref().map_or("", |s| s.pod_ip.as_str());
        if !selects(selector, pod) || ip.is_empty() || pod_is_terminal(pod) {
            continue;
        }
        endpoints.push(SelectedEndpoint {
            address: EndpointAddress {
                ip: ip.to_owned(),
                node_name: pod.spec.node_name.clone(),
                target_pod: pod.metadata.name.clone(),
                hostname: dns_hostname(service, pod).to_owned(),
                terminating: pod_is_terminating(pod),
            },
            ready: pod_is_ready(pod),
            pod_uid: pod.metadata.uid.clone(),
        });
        pods.push(pod);
    }
    let ports = service
        .spec
        .ports
        .iter()
        .filter_map(|p| resolve_port(p, &pods))
        .collect();
    Some(Selected { endpoints, ports })
}

/// The Services in `pod`'s namespace whose selector picks it.
pub fn selecting(pod: &Pod, snapshot: &Snapshot) -> Vec<(String, String)> {
    let ns = &pod.metadata.namespace;
    snapshot
        .list::<Service>(Some(ns))
        .filter(|s| selects(&s.spec.selector, pod))
        .map(|s| (ns.clone(), s.metadata.name.clone()))
        .collect()
}

/// A service port's target: its own number, a number, or a named container port.
fn resolve_port(port: &ServicePort, pods: &[&Pod]) -> Option<EndpointPort> {
    let number = match &port.target_port {
        None => port.port,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(name)) => pods.iter().find_map(|pod| {
            pod.spec.containers.iter().find_map(|c| {
                c.ports
                    .iter()
                    .find(|p| &p.name == name)
                    .map(|p| p.container_port)
            })
        })?,
    };
    Some(EndpointPort {
        name: port.name.clone(),
        port: number,
        protocol: port.protocol.clone(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        controllers::{Settings, fixtures::typed},
        objects::{Kind as _, Object},
    };

    fn pod(name: &str, ip: &str, ready: bool, app: &str) -> Pod {
        typed(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
    }

    fn address(ip: &str, pod: &str, terminating: bool) -> EndpointAddress {
        EndpointAddress {
            ip: ip.to_owned(),
            node_name: "n1".to_owned(),
            target_pod: pod.to_owned(),
            hostname: String::new(),
            terminating,
        }
    }

    #[test]
    fn ready_and_not_ready_pods_with_named_ports() {
        let service: Service = typed(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default", "uid": "s"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}}),
        );
        let snapshot = Snapshot::from_objects(
            vec![
                service.clone().into_object(),
                pod("a", "198.18.1.2", true, "web").into_object(),
                pod("b", "198.18.1.3", false, "web").into_object(),
                pod("c", "198.18.1.4", true, "other").into_object(),
                pod("d", "", true, "web").into_object(),
            ],
            1,
        );
        let ctx = Context {
            now: 0,
            settings: Settings::default(),
        };
        let outcome = EndpointsController.reconcile(&service, &snapshot, &ctx);
        let [Write::Create(Object::Endpoints(object))] = outcome.writes.as_slice() else {
            panic!("{outcome:?}")
        };
        let subset = &object.subsets[0];
        assert_eq!(subset.addresses, [address("198.18.1.2", "a", false)]);
        assert_eq!(subset.not_ready_addresses[0].ip, "198.18.1.3");
        assert_eq!(
            subset.ports,
            [EndpointPort {
                name: String::new(),
                port: 8080,
                protocol: "TCP".to_owned()
            }]
        );

        let snapshot = Snapshot::from_objects(
            vec![
                service.clone().into_object(),
                object.clone().into_object(),
                pod("a", "198.18.1.2", true, "web").into_object(),
                pod("b", "198.18.1.3", false, "web").into_object(),
            ],
            2,
        );
        assert_eq!(
            EndpointsController.reconcile(&service, &snapshot, &ctx),
            Outcome::default(),
            "idempotent"
        );
    }

    #[test]
    fn terminating_pods_leave_the_ready_addresses_at_once() {
        let service: Service = typed(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default", "uid": "s"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}),
        );
        let mut leaving = pod("b", "198.18.1.3", true, "web");
        leaving.metadata.deletion_timestamp = "2026-01-01T00:00:30Z".to_owned();
        let snapshot = Snapshot::from_objects(
            vec![
                service.clone().into_object(),
                pod("a", "198.18.1.2", true, "web").into_object(),
                leaving.into_object(),
            ],
            1,
        );
        let ctx = Context {
            now: 0,
            settings: Settings::default(),
        };
        let outcome = EndpointsController.reconcile(&service, &snapshot, &ctx);
        let [Write::Create(Object::Endpoints(object))] = outcome.writes.as_slice() else {
            panic!("{outcome:?}")
        };
        let subset = &object.subsets[0];
        assert_eq!(subset.addresses, [address("198.18.1.2", "a", false)]);
        assert_eq!(
            subset.not_ready_addresses,
            [address("198.18.1.3", "b", true)]
        );
    }

    #[test]
    fn a_pod_has_its_hostname_under_the_service_it_names_as_subdomain() {
        let service = |name: &str| -> Service {
            typed(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "default", "uid": name},
                "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 80}]}}))
        };
        let mut named = pod("web-0", "198.18.1.2", true, "web");
        named.spec.hostname = "web-0".to_owned();
        named.spec.subdomain = "nginx".to_owned();
        let snapshot = Snapshot::from_objects(
            vec![
                service("nginx").into_object(),
                service("other").into_object(),
                named.into_object(),
            ],
            1,
        );
        let ctx = Context {
            now: 0,
            settings: Settings::default(),
        };
        let hostname = |name: &str| {
            let outcome = EndpointsController.reconcile(&service(name), &snapshot, &ctx);
            let [Write::Create(Object::Endpoints(object))] = outcome.writes.as_slice() else {
                panic!("{outcome:?}")
            };
            object.subsets[0].addresses[0].hostname.clone()
        };
        assert_eq!(hostname("nginx"), "web-0");
        assert_eq!(hostname("other"), "", "not its subdomain");
    }
}
