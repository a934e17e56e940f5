//! From the cluster's Services, Endpoints and Nodes (as the control plane sends them) to
//! the datapath's [`ServiceSet`]: one datapath service per service port, with the node's
//! own NodePort addresses and the LoadBalancer addresses as external frontends, the
//! algorithm the service's annotation asks for, every endpoint with its node, and
//! not-ready endpoints marked failed so their flows move at once.
//!
//! Pure functions of their input: the agent computes one Service's ports when it or its
//! Endpoints change ([`service_ports`]), and every Service's only when the [`NodeView`]
//! changes; [`service_set`] is the whole set at once.

use std::{collections::HashMap, net::Ipv4Addr, str::FromStr as _, time::Duration};

use berth_api::core::{
    Endpoints as ApiEndpoints, IntOrString, Node as ApiNode, Service as ApiService,
};

use crate::{
    datapath::{
        Algorithm, BackendSpec, BackendState, Frontend, Node, Protocol, Service, ServiceSet,
    },
    endpoints::Endpoints,
};

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10_800);

/// Something in the input the datapath cannot serve, said in words for the agent's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub object: String,
    pub reason: String,
}

/// A node's datapath id: the network address of its pod range. Pod ranges never overlap,
/// so the id is unique, and every agent derives the same one from the Node object.
pub fn node_id(node: &ApiNode) -> Option<u32> {
    let (network, prefix) = parse_cidr(&node.spec.pod_cidr)?;
    (prefix > 0).then_some(u32::from(network))
}

fn parse_cidr(cidr: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = cidr.split_once('/')?;
    let addr = Ipv4Addr::from_str(addr).ok()?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Some((Ipv4Addr::from(u32::from(addr) & mask), prefix))
}

/// The node's address on the underlay: its InternalIP (else ExternalIP).
pub fn node_address(node: &ApiNode) -> Option<Ipv4Addr> {
    let addresses = &node.status.as_ref()?.addresses;
    ["InternalIP", "ExternalIP"].iter().find_map(|kind| {
        addresses
            .iter()
            .filter(|address| address.type_ == *kind)
            .find_map(|address| Ipv4Addr::from_str(&address.address).ok())
    })
}

/// Every address of the node that NodePorts answer on.
fn node_addresses(node: &ApiNode) -> Vec<Ipv4Addr> {
    let mut addresses: Vec<Ipv4Addr> = node
        .status
        .iter()
        .flat_map(|status| &status.addresses)
        .filter(|address| address.type_ == "InternalIP" || address.type_ == "ExternalIP")
        .filter_map(|address| Ipv4Addr::from_str(&address.address).ok())
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    addresses
}

fn protocol(name: &str) -> Option<Protocol> {
    match name.to_ascii_uppercase().as_str() {
        "TCP" | "" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        _ => None,
    }
}

fn object_name(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// What the services' datapath entries need from the Nodes: their datapath ids and
/// addresses, their pod ranges (to place endpoints without a nodeName) and the addresses
/// this node answers NodePorts on. Services are recomputed only when it changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    /// The nodes with an address, in order.
    pub nodes: Vec<Node>,
    ids_by_name: HashMap<String, u32>,
    /// (network, mask, node id) of each pod range.
    ranges: Vec<(u32, u32, u32)>,
    own_addresses: Vec<Ipv4Addr>,
    skipped: Vec<Skipped>,
}

impl NodeView {
    /// The view of node `me` on `nodes`.
    pub fn new<'a>(nodes: impl IntoIterator<Item = &'a ApiNode>, me: &str) -> NodeView {
        let mut view = NodeView::default();
        for node in nodes {
            if node.metadata.name == me {
                view.own_addresses = node_addresses(node);
            }
            let Some(id) = node_id(node) else {
                view.skipped.push(Skipped {
                    object: format!("node {}", node.metadata.name),
                    reason: "it has no pod range (spec.podCIDR) yet".into(),
                });
                continue;
            };
            view.ids_by_name.insert(node.metadata.name.clone(), id);
            if let Some((network, prefix)) = parse_cidr(&node.spec.pod_cidr) {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                view.ranges.push((u32::from(network), mask, id));
            }
            if let Some(addr) = node_address(node) {
                view.nodes.push(Node { id, addr });
            }
        }
        view.nodes.sort_unstable();
        view
    }

    /// The Nodes that cannot be used, and why.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    fn node_of(&self, ip: Ipv4Addr, node_name: &str) -> Option<u32> {
        self.ids_by_name.get(node_name).copied().or_else(|| {
            self.ranges
                .iter()
                .find(|(network, mask, _)| u32::from(ip) & mask == *network)
                .map(|(_, _, id)| *id)
        })
    }
}

/// Builds what node `me` should serve.
pub fn service_set(
    services: &[ApiService],
    endpoints: &[ApiEndpoints],
    nodes: &[ApiNode],
    me: &str,
) -> (ServiceSet, Vec<Skipped>) {
    let view = NodeView::new(nodes, me);
    let mut skipped = view.skipped().to_vec();
    let endpoints_by_name: HashMap<(&str, &str), Endpoints> = endpoints
        .iter()
        .map(|e| {
            let meta = &e.metadata;
            (
                (meta.namespace.as_str(), meta.name.as_str()),
                Endpoints::from(e),
            )
        })
        .collect();
    let mut out = Vec::new();
    for service in services {
        let meta = &service.metadata;
        let endpoints = endpoints_by_name.get(&(meta.namespace.as_str(), meta.name.as_str()));
        out.extend(service_ports(service, endpoints, &view, &mut skipped));
    }
    (
        ServiceSet {
            services: out,
            nodes: view.nodes,
        },
        skipped,
    )
}

/// The datapath services (one per port) of one Service and its Endpoints, as node
/// `view` sees them; what cannot be served goes to `skipped`.
pub fn service_ports(
    service: &ApiService,
    endpoints: Option<&Endpoints>,
    view: &NodeView,
    skipped: &mut Vec<Skipped>,
) -> Vec<Service> {
    let mut out = Vec::new();
    let meta = &service.metadata;
    let name = object_name(&meta.namespace, &meta.name);
    let spec = &service.spec;
    let cluster_ip = match spec.cluster_ip.as_str() {
        "" | "None" => None,
        ip => match Ipv4Addr::from_str(ip) {
            Ok(ip) => Some(ip),
            Err(_) => {
                skipped.push(Skipped {
                    object: format!("service {name}"),
                    reason: format!("clusterIP {ip:?} is not an IPv4 address"),
                });
                None
            }
        },
    };
    let affinity = (spec.session_affinity == "ClientIP").then_some(DEFAULT_AFFINITY_TIMEOUT);
    let algorithm = match service.lb_algorithm() {
        "random" => Algorithm::Random,
        _ => Algorithm::Maglev,
    };
    let mut load_balancer_ips = Vec::new();
    if spec.type_ == "LoadBalancer" {
        for ip in service.load_balancer_ips() {
            match Ipv4Addr::from_str(ip) {
                Ok(ip) => load_balancer_ips.push(ip),
                Err(_) => skipped.push(Skipped {
                    object: format!("service {name}"),
                    reason: format!("load-balancer address {ip:?} is not an IPv4 address"),
                }),
            }
        }
    }
    let subsets = endpoints.map(|e| e.subsets.as_slice()).unwrap_or_default();
    for port in &spec.ports {
        let port_label = if port.name.is_empty() {
            port.port.to_string()
        } else {
            port.name.clone()
        };
        let object = format!("service {name} port {port_label}");
        let Some(protocol) = protocol(&port.protocol) else {
            skipped.push(Skipped {
                object,
                reason: format!(
                    "protocol {} is not supported (TCP and UDP are)",
                    port.protocol
                ),
            });
            continue;
        };
        let Ok(service_port) = u16::try_from(port.port) else {
            skipped.push(Skipped {
                object,
                reason: format!("port {} is out of range", port.port),
            });
            continue;
        };
        let mut frontends = Vec::new();
        if let Some(ip) = cluster_ip {
            frontends.push(Frontend {
                addr: ip,
                port: service_port,
                protocol,
                external: false,
            });
        }
        // Served on every node, like the NodePorts: any node answers from outside.
        for addr in &load_balancer_ips {
            frontends.push(Frontend {
                addr: *addr,
                port: service_port,
                protocol,
                external: true,
            });
        }
        if spec.has_node_ports()
            && let Some(node_port) = port.node_port.and_then(|p| u16::try_from(p).ok())
        {
            for addr in &view.own_addresses {
                frontends.push(Frontend {
                    addr: *addr,
                    port: node_port,
                    protocol,
                    external: true,
                });
            }
        }
        if frontends.is_empty() {
            // Headless or not yet allocated: nothing for the datapath to answer on.
            continue;
        }
        let mut backends = Vec::new();
        for subset in subsets {
            // The endpoint port: by name when the service port is named, else the
            // subset's only port (targetPort resolved by the endpoints controller).
            let target = subset
                .ports
                .iter()
                .find(|p| *p.name == *port.name && protocol_matches(&p.protocol, protocol))
                .or_else(|| (subset.ports.len() == 1).then(|| &subset.ports[0]))
                .and_then(|p| u16::try_from(p.port).ok())
                .or_else(|| match port.target_port {
                    Some(IntOrString::Int(n)) => u16::try_from(n).ok(),
                    _ => None,
                });
            let Some(target) = target else { continue };
            for (list, not_ready) in [
                (&subset.addresses, BackendState::Active),
                (&subset.not_ready_addresses, BackendState::Failed),
            ] {
                for address in list {
                    let state = if address.terminating {
                        BackendState::Terminating
                    } else {
                        not_ready
                    };
                    let ip = address.ip;
                    let Some(node_id) = view.node_of(ip, &address.node_name) else {
                        skipped.push(Skipped {
                            object: format!("{object} endpoint {ip}"),
                            reason: "no known node runs it".into(),
                        });
                        continue;
                    };
                    backends.push(BackendSpec {
                        addr: ip,
                        port: target,
                        node_id,
                        state,
                    });
                }
            }
        }
        out.push(Service {
            name: format!("{name}:{port_label}"),
            frontends,
            backends,
            algorithm,
            affinity_timeout: affinity,
        });
    }
    out
}

fn protocol_matches(name: &str, protocol: Protocol) -> bool {
    self::protocol(name) == Some(protocol)
}

#[cfg(test)]
pub(crate) mod tests {
    use berth_api::{
        core::{
            EndpointAddress, EndpointPort, EndpointSubset, NodeAddress, NodeSpec, NodeStatus,
            ServicePort, ServiceSpec,
        },
        meta::ObjectMeta,
    };

    use super::*;

    fn meta(namespace: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: name.into(),
            namespace: namespace.into(),
            ..ObjectMeta::default()
        }
    }

    fn node(name: &str, cidr: &str, ip: &str) -> ApiNode {
        ApiNode {
            metadata: meta("", name),
            spec: NodeSpec {
                pod_cidr: cidr.into(),
                ..NodeSpec::default()
            },
            status: Some(NodeStatus {
                addresses: vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.into(),
                }],
                ..NodeStatus::default()
            }),
            ..ApiNode::default()
        }
    }

    fn web() -> ApiService {
        ApiService {
            metadata: meta("default", "web"),
            spec: ServiceSpec {
                ports: vec![ServicePort {
                    name: "http".into(),
                    port: 80,
                    target_port: Some(IntOrString::Int(8080)),
                    node_port: Some(30080),
                    protocol: "TCP".into(),
                }],
                type_: "NodePort".into(),
                cluster_ip: "198.19.0.10".into(),
                session_affinity: "ClientIP".into(),
                ..ServiceSpec::default()
            },
            ..ApiService::default()
        }
    }

    fn address(ip: &str, node: &str) -> EndpointAddress {
        EndpointAddress {
            ip: ip.into(),
            node_name: node.into(),
            target_pod: String::new(),
            hostname: String::new(),
            terminating: false,
        }
    }

    pub(crate) fn web_endpoints() -> ApiEndpoints {
        ApiEndpoints {
            metadata: meta("default", "web"),
            subsets: vec![EndpointSubset {
                addresses: vec![address("198.18.1.2", "n1"), address("198.18.2.2", "")],
                not_ready_addresses: vec![
                    address("198.18.2.3", "n2"),
                    EndpointAddress {
                        terminating: true,
                        ..address("198.18.2.4", "n2")
                    },
                ],
                ports: vec![EndpointPort {
                    name: "http".into(),
                    port: 8080,
                    protocol: "TCP".into(),
                }],
            }],
            ..ApiEndpoints::default()
        }
    }

    #[test]
    fn a_nodeport_service_becomes_one_datapath_service() {
        let nodes = [
            node("n1", "198.18.1.0/24", "198.18.0.1"),
            node("n2", "198.18.2.0/24", "198.18.0.2"),
        ];
        let (set, skipped) = service_set(&[web()], &[web_endpoints()], &nodes, "n2");
        assert!(skipped.is_empty(), "{skipped:?}");
        let n1 = u32::from(Ipv4Addr::new(198, 18, 1, 0));
        let n2 = u32::from(Ipv4Addr::new(198, 18, 2, 0));
        assert_eq!(
            set.nodes,
            vec![
                Node {
                    id: n1,
                    addr: Ipv4Addr::new(198, 18, 0, 1)
                },
                Node {
                    id: n2,
                    addr: Ipv4Addr::new(198, 18, 0, 2)
                }
            ]
        );
        let [service] = set.services.as_slice() else {
            panic!("one service: {set:?}");
        };
        assert_eq!(service.name, "default/web:http");
        assert_eq!(service.affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT));
        let frontends: Vec<String> = service.frontends.iter().map(|f| f.to_string()).collect();
        assert_eq!(frontends, ["198.19.0.10:80/TCP", "198.18.0.2:30080/TCP"]);
        assert!(!service.frontends[0].external && service.frontends[1].external);
        assert_eq!(
            service.backends,
            vec![
                BackendSpec {
                    addr: Ipv4Addr::new(198, 18, 1, 2),
                    port: 8080,
                    node_id: n1,
                    state: BackendState::Active
                },
                // No nodeName: placed by its node's pod range.
                BackendSpec {
                    addr: Ipv4Addr::new(198, 18, 2, 2),
                    port: 8080,
                    node_id: n2,
                    state: BackendState::Active
                },
                BackendSpec {
                    addr: Ipv4Addr::new(198, 18, 2, 3),
                    port: 8080,
                    node_id: n2,
                    state: BackendState::Failed
                },
                // A pod shutting down drains: established flows stay, new ones go elsewhere.
                BackendSpec {
                    addr: Ipv4Addr::new(198, 18, 2, 4),
                    port: 8080,
                    node_id: n2,
                    state: BackendState::Terminating
                },
            ]
        );
    }

    #[test]
    fn unsupported_input_is_skipped_with_a_reason() {
        let mut service = web();
        service.spec.ports[0].protocol = "SCTP".into();
        let nodes = [
            node("n1", "198.18.1.0/24", "198.18.0.1"),
            node("n9", "", "198.18.0.9"),
        ];
        let (set, skipped) = service_set(&[service], &[], &nodes, "n1");
        assert!(set.services.is_empty());
        assert!(skipped.iter().any(|s| s.reason.contains("SCTP")));
        assert!(skipped.iter().any(|s| s.object == "node n9"));
    }

    #[test]
    fn a_load_balancer_service_is_served_on_its_address_and_node_ports() {
        use berth_api::core::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
        let mut service = web();
        service.spec.type_ = "LoadBalancer".into();
        service.status = Some(ServiceStatus {
            load_balancer: LoadBalancerStatus {
                ingress: vec![LoadBalancerIngress {
                    ip: "198.18.128.1".into(),
                }],
            },
            ..ServiceStatus::default()
        });
        let nodes = [
            node("n1", "198.18.1.0/24", "198.18.0.1"),
            node("n2", "198.18.2.0/24", "198.18.0.2"),
        ];
        let (set, skipped) = service_set(&[service.clone()], &[web_endpoints()], &nodes, "n1");
        assert!(skipped.is_empty(), "{skipped:?}");
        let frontends: Vec<(String, bool)> = set.services[0]
            .frontends
            .iter()
            .map(|f| (f.to_string(), f.external))
            .collect();
        assert_eq!(
            frontends,
            [
                ("198.19.0.10:80/TCP".to_owned(), false),
                ("198.18.128.1:80/TCP".to_owned(), true),
                ("198.18.0.1:30080/TCP".to_owned(), true),
            ]
        );
        // Pending (no address yet): still served on its ClusterIP and NodePorts.
        service.status = None;
        let (set, _) = service_set(&[service], &[web_endpoints()], &nodes, "n1");
        assert_eq!(set.services[0].frontends.len(), 2);
    }

    #[test]
    fn the_annotation_picks_the_algorithm() {
        let nodes = [node("n1", "198.18.1.0/24", "198.18.0.1")];
        let (set, _) = service_set(&[web()], &[], &nodes, "n1");
        assert_eq!(set.services[0].algorithm, Algorithm::Maglev, "the default");
        let mut random = web();
        random.metadata.annotations.insert(
            berth_api::core::LB_ALGORITHM_ANNOTATION.into(),
            "random".into(),
        );
        let (set, _) = service_set(&[random], &[], &nodes, "n1");
        assert_eq!(set.services[0].algorithm, Algorithm::Random);
    }

    #[test]
    fn a_headless_service_has_nothing_to_serve() {
        let mut service = web();
        service.spec.cluster_ip = "None".into();
        service.spec.type_ = String::new();
        let (set, _) = service_set(&[service], &[web_endpoints()], &[], "n1");
        assert!(set.services.is_empty());
    }
}
