//! What the agent keeps of a Service's endpoints: the addresses parsed, node names shared,
//! and nothing else of the API objects. At 10,000 Services × 10 endpoints the API objects
//! as decoded (four strings an address, and the metadata) were the largest part of the
//! agent's own memory; this form takes about 40 bytes an address.
//!
//! The agent's watch brings a Service's endpoints as EndpointSlices (discovery.k8s.io/v1):
//! each slice becomes one [`Subset`] named after it, and a slice's change replaces that
//! subset alone ([`Endpoints::set_slice`]). The Endpoints kind converts too (API users,
//! tests), one subset per Endpoints subset.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    str::FromStr as _,
    sync::{Arc, Mutex},
};

use berth_api::{
    core::{EndpointAddress, EndpointPort, Endpoints as ApiEndpoints},
    discovery::{self, EndpointSlice},
};

/// A Service's endpoints, subset by subset as the Endpoints object lists them, or slice
/// by slice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// Shared with the watch's copy of each slice.
    pub subsets: Vec<Arc<Subset>>,
}

impl Endpoints {
    /// Puts the subset of the slice it names in place of that slice's earlier one
    /// (`None`: the slice is gone). Subsets stay in slice-name order, so the same slices
    /// give the same endpoints whatever order they came in.
    pub fn set_slice(&mut self, slice: &str, subset: Option<Arc<Subset>>) {
        let at = self
            .subsets
            .binary_search_by(|existing| (*existing.slice).cmp(slice));
        match (at, subset) {
            (Ok(i), Some(subset)) => self.subsets[i] = subset,
            (Ok(i), None) => {
                self.subsets.remove(i);
            }
            (Err(i), Some(subset)) => self.subsets.insert(i, subset),
            (Err(_), None) => {}
        }
        self.subsets.shrink_to_fit();
    }

    pub fn is_empty(&self) -> bool {
        self.subsets.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subset {
    /// The EndpointSlice it came from (empty: from an Endpoints object).
    pub slice: Box<str>,
    pub addresses: Vec<Address>,
    pub not_ready_addresses: Vec<Address>,
    pub ports: Vec<Port>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub ip: Ipv4Addr,
    /// Empty when the endpoint names no node.
    pub node_name: Arc<str>,
    /// The pod's hostname when its subdomain is the Service (empty otherwise).
    pub hostname: Box<str>,
    pub terminating: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub name: Box<str>,
    pub port: i32,
    pub protocol: Box<str>,
}

/// The one copy of each node name: every endpoint on a node shares it. Node names are
/// few (one per node) and a forgotten one costs its bytes.
fn shared_node_name(name: &str) -> Arc<str> {
    static NAMES: Mutex<BTreeSet<Arc<str>>> = Mutex::new(BTreeSet::new());
    let mut names = match NAMES.lock() {
        Ok(names) => names,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(known) = names.get(name) {
        return known.clone();
    }
    let name: Arc<str> = Arc::from(name);
    names.insert(name.clone());
    name
}

/// The addresses of `list` that are IPv4 addresses (neither the datapath nor DNS can use
/// the others).
fn addresses(list: &[EndpointAddress]) -> Vec<Address> {
    let mut out: Vec<Address> = list
        .iter()
        .filter_map(|address| {
            Some(Address {
                ip: Ipv4Addr::from_str(&address.ip).ok()?,
                node_name: shared_node_name(&address.node_name),
                hostname: address.hostname.as_str().into(),
                terminating: address.terminating,
            })
        })
        .collect();
    out.shrink_to_fit();
    out
}

/// The slice's endpoints as a subset named after it. As the Endpoints controller sorts
/// them: ready and not terminating among the addresses; the rest among the not-ready
/// ones, a terminating endpoint marked (it drains: its flows stay, new ones go
/// elsewhere) whatever its `serving` says. An unset `ready` is ready (Kubernetes' rule);
/// an endpoint's first address is its address (consumers may use the first only);
/// slices of IPv6 or FQDN addresses have nothing for the datapath or DNS.
impl From<&EndpointSlice> for Subset {
    fn from(slice: &EndpointSlice) -> Self {
        let mut subset = Subset {
            slice: slice.metadata.name.as_str().into(),
            ..Subset::default()
        };
        if slice.address_type != "IPv4" {
            return subset;
        }
        for endpoint in &slice.endpoints {
            let Some(ip) = endpoint
                .addresses
                .first()
                .and_then(|ip| Ipv4Addr::from_str(ip).ok())
            else {
                continue;
            };
            let conditions = &endpoint.conditions;
            let terminating = conditions.terminating == Some(true);
            let address = Address {
                ip,
                node_name: shared_node_name(endpoint.node_name.as_deref().unwrap_or_default()),
                hostname: endpoint.hostname.as_deref().unwrap_or_default().into(),
                terminating,
            };
            if conditions.ready != Some(false) && !terminating {
                subset.addresses.push(address);
            } else {
                subset.not_ready_addresses.push(address);
            }
        }
        subset.addresses.shrink_to_fit();
        subset.not_ready_addresses.shrink_to_fit();
        subset.ports = slice.ports.iter().filter_map(slice_port).collect();
        subset
    }
}

/// A slice's port; one without a number (every port) has nothing to map a Service port
/// to, so the Service's targetPort is used instead.
fn slice_port(port: &discovery::EndpointPort) -> Option<Port> {
    Some(Port {
        name: port.name.as_deref().unwrap_or_default().into(),
        port: port.port?,
        protocol: port.protocol.as_deref().unwrap_or("TCP").into(),
    })
}

fn port(port: &EndpointPort) -> Port {
    Port {
        name: port.name.as_str().into(),
        port: port.port,
        protocol: port.protocol.as_str().into(),
    }
}

impl From<&ApiEndpoints> for Endpoints {
    fn from(endpoints: &ApiEndpoints) -> Self {
        Endpoints {
            subsets: endpoints
                .subsets
                .iter()
                .map(|subset| {
                    Arc::new(Subset {
                        slice: Box::default(),
                        addresses: addresses(&subset.addresses),
                        not_ready_addresses: addresses(&subset.not_ready_addresses),
                        ports: subset.ports.iter().map(port).collect(),
                    })
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_parsed_and_node_names_shared() {
        let mut api = crate::services::tests::web_endpoints();
        api.subsets[0].addresses.push(EndpointAddress {
            ip: "fd00::2".into(),
            ..EndpointAddress::default()
        });
        api.subsets[0].not_ready_addresses[1].hostname = "web-0".into();
        let endpoints = Endpoints::from(&api);
        let [subset] = endpoints.subsets.as_slice() else {
            panic!("one subset: {endpoints:?}");
        };
        let ips: Vec<Ipv4Addr> = subset.addresses.iter().map(|a| a.ip).collect();
        assert_eq!(
            ips,
            [Ipv4Addr::new(198, 18, 1, 2), Ipv4Addr::new(198, 18, 2, 2)],
            "the IPv6 address is left out"
        );
        let [first, second] = subset.not_ready_addresses.as_slice() else {
            panic!("two not-ready addresses: {subset:?}");
        };
        assert!(
            Arc::ptr_eq(&first.node_name, &second.node_name),
            "one copy of a node's name"
        );
        assert_eq!(
            (&*second.node_name, &*second.hostname, second.terminating),
            ("n2", "web-0", true)
        );
        assert_eq!(
            (&*subset.ports[0].name, subset.ports[0].port),
            ("http", 8080)
        );
    }

    #[test]
    fn a_slice_is_one_subset_and_only_ipv4_slices_serve() {
        use berth_api::discovery::{Endpoint, EndpointConditions, EndpointPort};
        let endpoint = |ip: &str, ready: Option<bool>| Endpoint {
            addresses: vec![ip.into()],
            conditions: EndpointConditions {
                ready,
                ..EndpointConditions::default()
            },
            node_name: Some("n1".into()),
            hostname: Some("web-0".into()),
            ..Endpoint::default()
        };
        let mut slice = EndpointSlice {
            metadata: berth_api::meta::ObjectMeta {
                name: "web-0".into(),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: vec![
                endpoint("198.18.1.2", None),
                endpoint("198.18.1.3", Some(false)),
            ],
            ports: vec![
                EndpointPort {
                    name: Some("http".into()),
                    port: Some(8080),
                    ..EndpointPort::default()
                },
                // Every port: nothing to map a Service port to.
                EndpointPort::default(),
            ],
            ..EndpointSlice::default()
        };
        let subset = Subset::from(&slice);
        assert_eq!(&*subset.slice, "web-0");
        let ready: Vec<Ipv4Addr> = subset.addresses.iter().map(|a| a.ip).collect();
        assert_eq!(
            ready,
            [Ipv4Addr::new(198, 18, 1, 2)],
            "unset ready is ready"
        );
        assert_eq!(
            subset.not_ready_addresses[0].ip,
            Ipv4Addr::new(198, 18, 1, 3)
        );
        assert_eq!(&*subset.addresses[0].hostname, "web-0");
        assert_eq!(subset.ports.len(), 1);
        assert_eq!(
            (&*subset.ports[0].protocol, subset.ports[0].port),
            ("TCP", 8080)
        );

        slice.address_type = "IPv6".into();
        let ipv6 = Subset::from(&slice);
        assert!(ipv6.addresses.is_empty() && ipv6.not_ready_addresses.is_empty());

        // Slices replace their own subset only, in name order.
        let mut endpoints = Endpoints::default();
        let named = |name: &str| {
            Arc::new(Subset {
                slice: name.into(),
                ..Subset::default()
            })
        };
        endpoints.set_slice("web-1", Some(named("web-1")));
        endpoints.set_slice("web-0", Some(Arc::new(subset)));
        endpoints.set_slice("web-1", Some(named("web-1")));
        let names: Vec<&str> = endpoints.subsets.iter().map(|s| &*s.slice).collect();
        assert_eq!(names, ["web-0", "web-1"]);
        endpoints.set_slice("web-0", None);
        let names: Vec<&str> = endpoints.subsets.iter().map(|s| &*s.slice).collect();
        assert_eq!(names, ["web-1"]);
    }
}
