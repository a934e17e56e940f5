//! Cluster-wide unique values Services hold: ClusterIPs, NodePorts and LoadBalancer IPs.
//!
//! Each value a Service holds is a key under `/allocations/` written in the *same store
//! transaction* as the Service (create with `Absent`, so two concurrent writers can never
//! both take it), released in the transaction that drops it or deletes the Service. The
//! keys are derived from the Service's own fields ([`claims`]), so the allocations are as
//! durable as the objects and can never disagree with them.

use std::{collections::BTreeSet, fmt, net::Ipv4Addr, ops::RangeInclusive, str::FromStr};

use berth_api::{
    core::{NODE_PORT_RANGE, Service},
    kinds::SERVICES,
    validation::FieldError,
};
use serde_json::json;

use super::{Error, Registry, Result, decode_stored, decode_typed, prefix};
use crate::{
    objects::str_at,
    store::{Op, Precondition},
};

/// The Service condition saying whether a LoadBalancer address was assigned.
pub const LOAD_BALANCER_CONDITION: &str = "LoadBalancerReady";

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
pub fn claim_ops(before: &BTreeSet<String>, after: &BTreeSet<String>, owner: &Service) -> Vec<Op> {
    let record = json!({
        "kind": "Allocation",
        "owner": {
            "kind": owner.kind,
            "namespace": owner.metadata.namespace,
            "name": owner.metadata.name,
            "uid": owner.metadata.uid,
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

impl Registry {
    /// Writes the allocation keys of Services that hold values without them (stored
    /// before allocation existed), so nothing else can take those values. Two Services
    /// holding the same value are reported; the first keeps it.
    pub async fn reserve_held_values(&self) -> Result<()> {
        for kv in self.read_prefix(prefix(&SERVICES, None)).await? {
            let service: Service = decode_typed(&kv)?;
            let name = &service.metadata.name;
            for key in claims(&service) {
                if let Some(kv) = self.read(key.clone()).await? {
                    let holder = decode_stored(&kv)?;
                    let owner = str_at(&holder, "/owner/uid");
                    if owner != service.metadata.uid {
                        tracing::warn!(service = %name, "{key} is held by another object ({owner})");
                    }
                    continue;
                }
                let ops = claim_ops(&BTreeSet::new(), &BTreeSet::from([key.clone()]), &service);
                if let Err(e) = self.commit(ops).await {
                    tracing::warn!(service = %name, "could not reserve {key}: {e}");
                }
            }
        }
        Ok(())
    }

    /// Gives a Service what the control plane allocates: a clusterIP and the nodePorts
    /// left empty, kept across updates (an apply that leaves them out keeps them);
    /// checks the ones the user chose. LoadBalancer status goes when the type does.
    pub(super) async fn complete_service(
        &self,
        old: Option<&Service>,
        new: &mut Service,
    ) -> Result<()> {
        let held = old.map(claims).unwrap_or_default();
        let mut errors = Vec::new();
        let mut error = |field: String, reason: String| errors.push(FieldError { field, reason });

        let old_ip = old
            .map(|o| o.spec.cluster_ip.clone())
            .filter(|ip| !ip.is_empty());
        match old_ip {
            Some(ip) if new.spec.cluster_ip.is_empty() => new.spec.cluster_ip = ip,
            Some(ip) if new.spec.cluster_ip != ip => error(
                "spec.clusterIP".into(),
                format!("field is immutable (it is {ip})"),
            ),
            Some(_) => {}
            None if new.spec.cluster_ip.is_empty() => {
                new.spec.cluster_ip = self.allocate_cluster_ip().await?;
            }
            None if new.spec.is_headless() => {}
            None => {
                let cidr = self.ranges.service_cidr;
                let ip: Ipv4Addr =
                    new.spec.cluster_ip.parse().map_err(|_| {
                        Error::internal("a validated clusterIP did not parse as IPv4")
                    })?;
                if !cidr.contains(ip) {
                    error(
                        "spec.clusterIP".into(),
                        format!(
                            "failed to allocate IP {ip}: the provided IP is not in the valid range; the range of valid IPs is {cidr}"
                        ),
                    );
                } else if self
                    .read(cluster_ip_key(&new.spec.cluster_ip))
                    .await?
                    .is_some()
                {
                    error(
                        "spec.clusterIP".into(),
                        format!("failed to allocate IP {ip}: provided IP is already allocated"),
                    );
                }
            }
        }

        if new.spec.has_node_ports() {
            let mut chosen: BTreeSet<i32> = BTreeSet::new();
            for (i, port) in new.spec.ports.iter().enumerate() {
                let Some(node_port) = port.node_port else {
                    continue;
                };
                let key = node_port_key(node_port);
                if chosen.insert(node_port)
                    && !held.contains(&key)
                    && self.read(key).await?.is_some()
                {
                    error(
                        format!("spec.ports[{i}].nodePort"),
                        format!("provided port {node_port} is already allocated"),
                    );
                }
            }
            let taken = if new.spec.ports.iter().any(|p| p.node_port.is_none()) {
                self.allocated("nodeports", |t| t.parse().ok()).await?
            } else {
                BTreeSet::new()
            };
            for port in new.spec.ports.iter_mut().filter(|p| p.node_port.is_none()) {
                // The same service port keeps its nodePort across updates.
                let kept = old
                    .iter()
                    .flat_map(|o| &o.spec.ports)
                    .find(|p| p.port == port.port && p.protocol == port.protocol)
                    .and_then(|p| p.node_port)
                    .filter(|n| !chosen.contains(n));
                let node_port = match kept {
                    Some(n) => n,
                    None => {
                        let free = pick_free(node_port_range(), |v| {
                            taken.contains(&v) || chosen.contains(&(v as i32))
                        })
                        .ok_or_else(|| {
                            Error::internal(
                                "failed to allocate a nodePort: the range 30000-32767 is full",
                            )
                        })?;
                        free as i32
                    }
                };
                chosen.insert(node_port);
                port.node_port = Some(node_port);
            }
        }

        if new.spec.type_ != "LoadBalancer"
            && let Some(status) = &mut new.status
        {
            status.load_balancer = Default::default();
            status
                .conditions
                .retain(|c| c.type_ != LOAD_BALANCER_CONDITION);
        }
        if !errors.is_empty() {
            return Err(Error::invalid("Service", &new.metadata.name, errors));
        }
        Ok(())
    }

    async fn allocate_cluster_ip(&self) -> Result<String> {
        let taken = self
            .allocated("clusterips", |t| t.parse::<Ipv4Addr>().ok().map(u32::from))
            .await?;
        let cidr = self.ranges.service_cidr;
        pick_free(cidr.hosts(), |v| taken.contains(&v))
            .map(|ip| Ipv4Addr::from(ip).to_string())
            .ok_or_else(|| {
                Error::internal(format!(
                    "failed to allocate a cluster IP: the service range {cidr} is full"
                ))
            })
    }

    /// The values held under `/allocations/<kind>/`.
    async fn allocated(
        &self,
        kind: &str,
        parse: impl Fn(&str) -> Option<u32>,
    ) -> Result<BTreeSet<u32>> {
        let prefix = format!("{PREFIX}{kind}/");
        Ok(self
            .read_prefix(prefix.clone())
            .await?
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(&prefix).and_then(&parse))
            .collect())
    }
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
        let ops = claim_ops(&before, &after, &Service::default());
        assert!(
            matches!(&ops[0], Op::Put { key, precondition: Precondition::Absent, .. } if key == "c")
        );
        assert!(matches!(&ops[1], Op::Delete { key, .. } if key == "a"));
        assert_eq!(ops.len(), 2);
    }
}
