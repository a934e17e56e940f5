//! Cluster-wide unique values Services hold: ClusterIPs, NodePorts and LoadBalancer IPs.
//!
//! Each value a Service holds is a key under `/allocations/` written in the *same store
//! transaction* as the Service (create with `Absent`, so two concurrent writers can never
//! both take it), released in the transaction that drops it or deletes the Service. The
//! keys are derived from the Service's own fields ([`claims`]), so the allocations are as
//! durable as the objects and can never disagree with them.

use std::{collections::BTreeSet, fmt, net::Ipv4Addr, ops::RangeInclusive, str::FromStr};

use berth_api::core::{NODE_PORT_RANGE, Service};
use serde_json::{Value, json};

use crate::store::{Op, Precondition};

pub const PREFIX: &str = "/allocations/";

/// An IPv4 range `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    fn mask(self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    pub fn overlaps(self, other: Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// Usable host addresses: the network and broadcast addresses are never handed out
    /// (for /31 and /32 every address is usable).
    pub fn hosts(self) -> RangeInclusive<u32> {
        let first = u32::from(self.network);
        let last = first | !self.mask();
        if self.prefix >= 31 {
            first..=last
        } else {
            first + 1..=last - 1
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, len) = text.split_once('/').ok_or("expected a.b.c.d/len")?;
        let addr: Ipv4Addr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("prefix length {len:?} is not 0..=32"))?;
        let cidr = Self {
            network: addr,
            prefix,
        };
        Ok(Self {
            network: Ipv4Addr::from(u32::from(addr) & cidr.mask()),
            prefix,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Where Service addresses and ports come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranges {
    pub service_cidr: Cidr,
    /// None: LoadBalancer services stay pending.
    pub load_balancer_pool: Option<Cidr>,
}

pub fn cluster_ip_key(ip: &str) -> String {
    format!("{PREFIX}clusterips/{ip}")
}

pub fn node_port_key(port: i32) -> String {
    format!("{PREFIX}nodeports/{port}")
}

pub fn load_balancer_ip_key(ip: &str) -> String {
    format!("{PREFIX}loadbalancerips/{ip}")
}

pub fn is_allocation_key(key: &str) -> bool {
    key.starts_with(PREFIX)
}

/// The allocation keys a Service holds, from its fields.
pub fn claims(service: &Service) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let spec = &service.spec;
    if !spec.cluster_ip.is_empty() && !spec.is_headless() {
        keys.insert(cluster_ip_key(&spec.cluster_ip));
    }
    if spec.has_node_ports() {
        keys.extend(
            spec.ports
                .iter()
                .filter_map(|p| p.node_port)
                .map(node_port_key),
        );
    }
    keys.extend(service.load_balancer_ips().map(load_balancer_ip_key));
    keys
}

/// Ops taking the keys `after` holds that `before` did not, and releasing the others.
pub fn claim_ops(before: &BTreeSet<String>, after: &BTreeSet<String>, owner: &Value) -> Vec<Op> {
    let record = json!({
        "kind": "Allocation",
        "owner": {
            "kind": owner["kind"],
            "namespace": owner["metadata"]["namespace"],
            "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"],
        },
    });
    let value = serde_json::to_vec(&record).unwrap_or_default();
    let taken = after.difference(before).map(|key| Op::Put {
        key: key.clone(),
        value: value.clone(),
        precondition: Precondition::Absent,
    });
    let released = before.difference(after).map(|key| Op::Delete {
        key: key.clone(),
        precondition: Precondition::Always,
    });
    taken.chain(released).collect()
}

/// A free value of `range`, starting the search at a random offset so concurrent
/// allocations rarely pick the same one (and retry when they do).
pub fn pick_free(range: RangeInclusive<u32>, taken: impl Fn(u32) -> bool) -> Option<u32> {
    let (first, last) = (*range.start(), *range.end());
    if first > last {
        return None;
    }
    let size = u64::from(last - first) + 1;
    let offset = u64::from_le_bytes(crate::util::random_bytes::<8>()) % size;
    (0..size)
        .map(|i| first + ((offset + i) % size) as u32)
        .find(|v| !taken(*v))
}

pub fn node_port_range() -> RangeInclusive<u32> {
    // NODE_PORT_RANGE is a constant of positive ports.
    (*NODE_PORT_RANGE.start() as u32)..=(*NODE_PORT_RANGE.end() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let cidr: Cidr = "198.18.192.7/18".parse().expect("valid");
        assert_eq!(cidr.to_string(), "198.18.192.0/18");
        assert!(cidr.contains(Ipv4Addr::new(198, 18, 255, 255)));
        assert!(!cidr.contains(Ipv4Addr::new(198, 18, 191, 255)));
        let hosts = cidr.hosts();
        assert_eq!(
            Ipv4Addr::from(*hosts.start()),
            Ipv4Addr::new(198, 18, 192, 1)
        );
        assert_eq!(
            Ipv4Addr::from(*hosts.end()),
            Ipv4Addr::new(198, 18, 255, 254)
        );
        assert!("198.18.0.0/33".parse::<Cidr>().is_err());
        assert!("198.18.0.0".parse::<Cidr>().is_err());
        let pool: Cidr = "198.18.128.0/18".parse().expect("valid");
        assert!(!cidr.overlaps(pool) && !pool.overlaps(cidr));
        assert!(cidr.overlaps("198.18.0.0/16".parse().expect("valid")));
    }

    #[test]
    fn pick_free_finds_the_only_free_value_and_none_when_full() {
        for _ in 0..20 {
            assert_eq!(pick_free(10..=20, |v| v != 17), Some(17));
        }
        assert_eq!(pick_free(10..=20, |_| true), None);
    }

    #[test]
    fn claim_ops_take_new_keys_and_release_dropped_ones() {
        let before: BTreeSet<String> = ["a", "b"].map(String::from).into();
        let after: BTreeSet<String> = ["b", "c"].map(String::from).into();
        let ops = claim_ops(&before, &after, &json!({"kind": "Service"}));
        assert!(
            matches!(&ops[0], Op::Put { key, precondition: Precondition::Absent, .. } if key == "c")
        );
        assert!(matches!(&ops[1], Op::Delete { key, .. } if key == "a"));
        assert_eq!(ops.len(), 2);
    }
}
