//! Cluster-wide unique values Services hold: ClusterIPs, NodePorts and LoadBalancer IPs.
//!
//! Each value a Service holds is a key under `/allocations/` written in the *same store
//! transaction* as the Service (create with `Absent`, so two concurrent writers can never
//! both take it), released in the transaction that drops it or deletes the Service. The
//! keys are derived from the Service's own fields ([`claims`]), so the allocations are as
//! durable as the objects and can never disagree with them.

use std::{
    collections::{BTreeSet, HashSet},
    fmt,
    net::Ipv4Addr,
    ops::RangeInclusive,
    str::FromStr,
};

use berth_api::{core::Service, kinds::SERVICES, validation::FieldError};
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

    /// Addresses in the range, usable or not.
    pub fn size(self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
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
    pub node_ports: PortRange,
    /// None: LoadBalancer services stay pending.
    pub load_balancer_pool: Option<Cidr>,
}

const CLUSTER_IPS: &str = "/allocations/clusterips/";
const NODE_PORTS: &str = "/allocations/nodeports/";

pub fn cluster_ip_key(ip: &str) -> String {
    format!("{CLUSTER_IPS}{ip}")
}

pub fn node_port_key(port: i32) -> String {
    format!("{NODE_PORTS}{port}")
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

/// The kinds of value allocated from a range (LoadBalancer addresses are the
/// load-balancer controller's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ClusterIp,
    NodePort,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::ClusterIp => CLUSTER_IPS,
            Kind::NodePort => NODE_PORTS,
        }
    }

    /// The value an allocation key of this kind holds.
    fn value_of(self, key: &str) -> Option<u32> {
        let text = key.strip_prefix(self.prefix())?;
        match self {
            Kind::ClusterIp => text.parse::<Ipv4Addr>().ok().map(u32::from),
            Kind::NodePort => text.parse().ok(),
        }
    }
}

/// The values of one kind as a transaction sees them: what the store held when the
/// transaction first needed one, plus what the transaction took since.
#[derive(Debug, Default)]
struct Pool {
    taken: HashSet<u32>,
    /// Where the next search starts: a random point for the transaction's first value,
    /// then just past the last one it took. A transaction's values form one run, so two
    /// concurrent transactions only collide when their runs meet.
    cursor: Option<u32>,
}

impl Pool {
    /// Takes a free value of `range` (None: every value of it is taken). Like
    /// Kubernetes' allocator, a random start and then a scan. The scan stops after
    /// `taken + 1` values (or the whole range if smaller): at least one of those is free
    /// unless the range is full.
    fn take_next(&mut self, range: RangeInclusive<u32>) -> Option<u32> {
        let (first, last) = (*range.start(), *range.end());
        if first > last {
            return None;
        }
        let size = u64::from(last - first) + 1;
        let start = match self.cursor.filter(|c| range.contains(c)) {
            Some(cursor) => u64::from(cursor - first),
            None => u64::from_le_bytes(crate::util::random_bytes::<8>()) % size,
        };
        let tries = size.min(self.taken.len() as u64 + 1);
        // `(start + i) % size < size`, and size fits the range's u32 span.
        let value = (0..tries)
            .map(|i| first + ((start + i) % size) as u32)
            .find(|v| !self.taken.contains(v))?;
        self.taken.insert(value);
        self.cursor = Some(if value == last { first } else { value + 1 });
        Some(value)
    }
}

/// What the Services planned into one store transaction have taken so far, so that a
/// later one never gets (or is given) a value an earlier one holds: a manifest of
/// thousands of Services applies as one transaction, before any of it is stored.
/// Which values the store holds is read once per kind, when first needed.
#[derive(Debug, Default)]
pub(super) struct Allocations {
    /// Keys Services of this transaction hold.
    claimed: BTreeSet<String>,
    cluster_ips: Option<Pool>,
    node_ports: Option<Pool>,
}

impl Allocations {
    /// Records keys a Service of this transaction holds.
    pub(super) fn claim<'a>(&mut self, keys: impl IntoIterator<Item = &'a String>) {
        for key in keys {
            for (kind, pool) in [
                (Kind::ClusterIp, &mut self.cluster_ips),
                (Kind::NodePort, &mut self.node_ports),
            ] {
                if let (Some(pool), Some(value)) = (pool.as_mut(), kind.value_of(key)) {
                    pool.taken.insert(value);
                }
            }
            self.claimed.insert(key.clone());
        }
    }

    fn pool(&mut self, kind: Kind) -> &mut Option<Pool> {
        match kind {
            Kind::ClusterIp => &mut self.cluster_ips,
            Kind::NodePort => &mut self.node_ports,
        }
    }
}

/// A range of ports `first-last`, as `--service-node-port-range` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Kubernetes' default NodePort range.
    pub const DEFAULT: PortRange = PortRange {
        first: 30000,
        last: 32767,
    };

    pub fn contains(self, port: i32) -> bool {
        (i32::from(self.first)..=i32::from(self.last)).contains(&port)
    }

    fn values(self) -> RangeInclusive<u32> {
        u32::from(self.first)..=u32::from(self.last)
    }

    pub fn size(self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (first, last) = text.split_once('-').ok_or("expected first-last")?;
        let port = |text: &str| {
            text.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{text:?} is not a port (1-65535)"))
        };
        let range = Self {
            first: port(first)?,
            last: port(last)?,
        };
        if range.first > range.last {
            return Err(format!(
                "{range} is empty: the first port is above the last"
            ));
        }
        Ok(range)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
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

    /// What keeps the configured ranges from serving the values already allocated: one
    /// line per range that no longer holds some of them (empty: the ranges fit). A range
    /// may grow across restarts, since every value keeps its key whatever the range; it
    /// may not shrink past a value a Service holds.
    pub async fn allocations_outside_ranges(&self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        for kind in [Kind::ClusterIp, Kind::NodePort] {
            let outside: Vec<_> = self
                .read_prefix(kind.prefix().to_owned())
                .await?
                .into_iter()
                .filter(|kv| kind.value_of(&kv.key).is_some_and(|v| !self.holds(kind, v)))
                .collect();
            let Some(first) = outside.first() else {
                continue;
            };
            let record = decode_stored(first)?;
            let owner = format!(
                "{} {}/{}",
                str_at(&record, "/owner/kind"),
                str_at(&record, "/owner/namespace"),
                str_at(&record, "/owner/name")
            );
            let value = first.key.strip_prefix(kind.prefix()).unwrap_or_default();
            let more = match outside.len() - 1 {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            let (flag, what) = match kind {
                Kind::ClusterIp => (
                    format!("--service-cidr {}", self.ranges.service_cidr),
                    "ClusterIP",
                ),
                Kind::NodePort => (
                    format!("--service-node-port-range {}", self.ranges.node_ports),
                    "nodePort",
                ),
            };
            problems.push(format!(
                "{flag} does not hold {what} {value} of {owner}{more}: a range may grow but not \
                 shrink past values Services hold; use a range that holds them, or delete those \
                 Services first"
            ));
        }
        Ok(problems)
    }

    /// Whether `value` is one the configured range of `kind` may hand out or accept.
    fn holds(&self, kind: Kind, value: u32) -> bool {
        match kind {
            Kind::ClusterIp => self.ranges.service_cidr.contains(Ipv4Addr::from(value)),
            Kind::NodePort => self.ranges.node_ports.values().contains(&value),
        }
    }

    /// Whether a Service holds `key`: one in the store, or one planned earlier in the
    /// same transaction.
    async fn is_allocated(&self, allocations: &Allocations, key: &str) -> Result<bool> {
        Ok(allocations.claimed.contains(key) || self.read(key.to_owned()).await?.is_some())
    }

    /// Takes a free value of `kind` from `range` for this transaction.
    async fn take_next(
        &self,
        allocations: &mut Allocations,
        kind: Kind,
        range: RangeInclusive<u32>,
    ) -> Result<Option<u32>> {
        if allocations.pool(kind).is_none() {
            let mut taken: HashSet<u32> = self
                .read_prefix(kind.prefix().to_owned())
                .await?
                .iter()
                .filter_map(|kv| kind.value_of(&kv.key))
                .collect();
            taken.extend(allocations.claimed.iter().filter_map(|k| kind.value_of(k)));
            *allocations.pool(kind) = Some(Pool {
                taken,
                cursor: None,
            });
        }
        Ok(allocations
            .pool(kind)
            .as_mut()
            .and_then(|pool| pool.take_next(range)))
    }

    /// Gives a Service what the control plane allocates: a clusterIP and the nodePorts
    /// left empty, kept across updates (an apply that leaves them out keeps them);
    /// checks the ones the user chose. LoadBalancer status goes when the type does.
    /// Values are unique across the store and the Services planned before in the same
    /// transaction (`allocations`).
    pub(super) async fn complete_service(
        &self,
        old: Option<&Service>,
        new: &mut Service,
        allocations: &mut Allocations,
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
                let cidr = self.ranges.service_cidr;
                let ip = self
                    .take_next(allocations, Kind::ClusterIp, cidr.hosts())
                    .await?
                    .ok_or_else(|| Error::internal(cluster_ip_range_full(cidr)))?;
                new.spec.cluster_ip = Ipv4Addr::from(ip).to_string();
            }
            None if new.spec.is_headless() => {}
            None => {
                let cidr = self.ranges.service_cidr;
                let ip: Ipv4Addr =
                    new.spec.cluster_ip.parse().map_err(|_| {
                        Error::internal("a validated clusterIP did not parse as IPv4")
                    })?;
                let key = cluster_ip_key(&new.spec.cluster_ip);
                if !cidr.contains(ip) {
                    error(
                        "spec.clusterIP".into(),
                        format!(
                            "failed to allocate IP {ip}: the provided IP is not in the valid range; the range of valid IPs is {cidr}"
                        ),
                    );
                } else if self.is_allocated(allocations, &key).await? {
                    error(
                        "spec.clusterIP".into(),
                        format!("failed to allocate IP {ip}: provided IP is already allocated"),
                    );
                }
                allocations.claim([&key]);
            }
        }

        if new.spec.has_node_ports() {
            let range = self.ranges.node_ports;
            let mut chosen: BTreeSet<i32> = BTreeSet::new();
            for (i, port) in new.spec.ports.iter().enumerate() {
                let Some(node_port) = port.node_port else {
                    continue;
                };
                let key = node_port_key(node_port);
                if !range.contains(node_port) {
                    error(
                        format!("spec.ports[{i}].nodePort"),
                        format!(
                            "provided port {node_port} is not in the valid range; the range of valid ports is {range}"
                        ),
                    );
                } else if chosen.insert(node_port)
                    && !held.contains(&key)
                    && self.is_allocated(allocations, &key).await?
                {
                    error(
                        format!("spec.ports[{i}].nodePort"),
                        format!("provided port {node_port} is already allocated"),
                    );
                }
            }
            // Before any is allocated, so the ports allocated below avoid them.
            allocations.claim(&chosen.iter().map(|p| node_port_key(*p)).collect::<Vec<_>>());
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
                        let free = self
                            .take_next(allocations, Kind::NodePort, range.values())
                            .await?
                            .ok_or_else(|| Error::internal(node_port_range_full(range)))?;
                        // Within a range of u16 ports.
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
        allocations.claim(&claims(new));
        Ok(())
    }
}

/// The 500 Kubernetes answers when no ClusterIP is left ("range is full"), saying
/// which range, how big it is and how to grow it.
fn cluster_ip_range_full(cidr: Cidr) -> String {
    let hosts = cidr.hosts();
    let usable = u64::from(*hosts.end() - *hosts.start()) + 1;
    format!(
        "failed to allocate a ClusterIP: range {cidr} is full ({} addresses, {usable} usable, \
         all allocated); start berth-control with a larger --service-cidr to grow it",
        cidr.size()
    )
}

fn node_port_range_full(range: PortRange) -> String {
    format!(
        "failed to allocate a nodePort: range {range} is full ({} ports, all allocated); start \
         berth-control with a larger --service-node-port-range to grow it",
        range.size()
    )
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
    fn a_pool_finds_the_only_free_value_and_none_when_full() {
        for _ in 0..20 {
            let mut pool = Pool {
                taken: (10..=20).filter(|v| *v != 17).collect(),
                cursor: None,
            };
            assert_eq!(pool.take_next(10..=20), Some(17));
            assert_eq!(pool.take_next(10..=20), None, "17 is taken now");
        }
    }

    #[test]
    fn a_pool_hands_out_every_value_of_its_range_once_then_none() {
        let mut pool = Pool {
            taken: [3, 4, 100].into(),
            cursor: None,
        };
        let mut got: Vec<u32> = std::iter::from_fn(|| pool.take_next(1..=10)).collect();
        got.sort_unstable();
        assert_eq!(got, [1, 2, 5, 6, 7, 8, 9, 10]);
    }

    #[test]
    fn a_transaction_takes_one_run_from_a_random_start() {
        let mut pool = Pool::default();
        let first = pool.take_next(0..=999).expect("free");
        let next: Vec<u32> = (0..5).filter_map(|_| pool.take_next(0..=999)).collect();
        let expected: Vec<u32> = (1..=5).map(|i| (first + i) % 1000).collect();
        assert_eq!(next, expected);
    }

    #[test]
    fn allocations_see_what_earlier_services_of_the_transaction_claimed() {
        let mut allocations = Allocations {
            node_ports: Some(Pool::default()),
            ..Allocations::default()
        };
        allocations.claim(&[node_port_key(30001), cluster_ip_key("198.18.192.9")]);
        assert!(
            allocations
                .claimed
                .contains(&cluster_ip_key("198.18.192.9"))
        );
        let pool = allocations.node_ports.as_mut().expect("loaded");
        assert!(pool.taken.contains(&30001));
        assert_eq!(pool.taken.len(), 1, "a clusterIP is no port");
        pool.taken.insert(30000);
        assert_eq!(pool.take_next(30000..=30002), Some(30002));
    }

    #[test]
    fn port_ranges() {
        let range: PortRange = "30000-32767".parse().expect("valid");
        assert_eq!(range, PortRange::DEFAULT);
        assert_eq!(
            (range.size(), range.to_string()),
            (2768, "30000-32767".to_owned())
        );
        assert!(range.contains(30000) && range.contains(32767));
        assert!(!range.contains(29999) && !range.contains(32768));
        assert!("1-1".parse::<PortRange>().is_ok_and(|r| r.size() == 1));
    }

    #[test]
    fn a_full_range_says_which_and_how_big() {
        let cidr: Cidr = "198.18.200.0/30".parse().expect("valid");
        let message = cluster_ip_range_full(cidr);
        assert!(
            message
                .contains("range 198.18.200.0/30 is full (4 addresses, 2 usable, all allocated)"),
            "{message}"
        );
        let message = node_port_range_full("30000-30009".parse().expect("valid"));
        assert!(
            message.contains("range 30000-30009 is full (10 ports, all allocated)"),
            "{message}"
        );
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
