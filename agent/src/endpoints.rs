//! What the agent keeps of a Service's endpoints: the addresses parsed, node names shared,
//! and nothing else of the API object. At 10,000 Services × 10 endpoints the API objects
//! as decoded (four strings an address, and the metadata) were the largest part of the
//! agent's own memory; this form takes about 40 bytes an address.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    str::FromStr as _,
    sync::{Arc, Mutex},
};

use berth_api::core::{EndpointAddress, EndpointPort, Endpoints as ApiEndpoints};

/// A Service's endpoints, subset by subset as the Endpoints object lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub subsets: Vec<Subset>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subset {
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
                .map(|subset| Subset {
                    addresses: addresses(&subset.addresses),
                    not_ready_addresses: addresses(&subset.not_ready_addresses),
                    ports: subset.ports.iter().map(port).collect(),
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
}
