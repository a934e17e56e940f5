//! Pod traffic between nodes, done by the agent the way a network plugin does it (flannel's
//! host-gw, Cilium's auto-direct-node-routes or its tunnel): for every other node a route
//! to its pod range, and in the datapath's pod ranges map which node owns each range.
//!
//! Per peer node, one of two ways:
//! - **native**: `<range> via <node address>` on the link the node shares with this one;
//!   packets cross the underlay with pod addresses, as any routed packet.
//! - **tunnel**: `<range> via <next hop towards the node> mtu <link MTU - 20>`, the range
//!   marked tunnelled in the map; the datapath's TC program on the underlay interface puts
//!   an IPIP header addressed to the node around each packet as it leaves, and the other
//!   node's takes it off (`ebpf/src/tunnel.rs`). The underlay only ever sees node addresses.
//!
//! [`RoutingMode`] chooses: all native, all tunnelled, or (the default) per peer: native
//! when the peer's address is on a subnet of one of this node's links, tunnelled
//! otherwise.
//!
//! [`plan`] is a pure function of the Node set and what the node's own network says
//! (the [`Underlay`]); [`reconcile`] makes the kernel match it and is safe to repeat:
//! ranges are written to the map before the routes to them, stale routes removed before
//! their ranges, and only routes marked with [`ROUTE_PROTOCOL`] are ever replaced or
//! removed — routes someone else made (even to a pod range) are left alone.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use berth_ebpf_common::{POD_RANGE_TUNNEL, PodRange};
use tokio::sync::watch;

use crate::{
    datapath::{Datapath, DatapathError},
    ipam::Cidr,
    net::{self, NetError},
};

/// The route protocol (`proto 190` in `ip route`) that marks the routes the agent made.
pub const ROUTE_PROTOCOL: u8 = 190;
/// What IPIP adds to every packet: one IPv4 header.
pub const IPIP_OVERHEAD: u32 = 20;

/// How cross-node pod traffic travels (`--routing-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RoutingMode {
    /// Routes via the peer nodes' addresses: every node must share a link with every
    /// other (peers that do not are reported and left unrouted).
    Native,
    /// IPIP to every peer node, whatever the underlay between them.
    Encapsulation,
    /// Native to peers on a directly connected subnet, IPIP to the others.
    #[default]
    Auto,
}

impl std::str::FromStr for RoutingMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "native" => Ok(RoutingMode::Native),
            "encapsulation" => Ok(RoutingMode::Encapsulation),
            "auto" => Ok(RoutingMode::Auto),
            other => Err(format!(
                "{other:?} is not one of: native, encapsulation, auto"
            )),
        }
    }
}

impl RoutingMode {
    /// The MTU pods get on a node whose underlay link has `link_mtu`: 20 bytes less
    /// wherever a peer may be tunnelled (pods are not rewired when a peer joins later),
    /// the link's own with native routing.
    pub fn pod_mtu(self, link_mtu: u32) -> u32 {
        match self {
            RoutingMode::Native => link_mtu,
            RoutingMode::Encapsulation | RoutingMode::Auto => {
                link_mtu.saturating_sub(IPIP_OVERHEAD)
            }
        }
    }

    /// Whether the tunnel's programs belong on the underlay interface.
    pub fn may_tunnel(self) -> bool {
        self != RoutingMode::Native
    }
}

/// A node as routing sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeRoute {
    pub addr: Ipv4Addr,
    pub pod_cidr: Cidr,
}

/// A link of this node, by index, with its name and MTU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
}

/// What the node's own network says about reaching a peer's address.
pub trait Underlay {
    /// The link whose subnet holds `addr`, if any: the peer is directly connected.
    fn connected(&self, addr: Ipv4Addr) -> Option<Link>;
    /// The next hop towards `addr` and the link to it, as the kernel routes it.
    fn next_hop(&self, addr: Ipv4Addr) -> Option<(Ipv4Addr, Link)>;
}

/// One route the agent wants: `<destination>/<prefix> via <gateway> dev <link> [mtu]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedRoute {
    pub destination: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub link: Link,
    pub mtu: Option<u32>,
}

/// A peer that gets no route, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unrouted {
    pub node: Ipv4Addr,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub routes: Vec<PlannedRoute>,
    /// Every node's pod range (this node's too) → the node and whether it is tunnelled.
    pub ranges: BTreeMap<(Ipv4Addr, u8), PodRange>,
    pub unrouted: Vec<Unrouted>,
}

impl Plan {
    /// The peers reached through the tunnel.
    pub fn tunnelled(&self) -> BTreeSet<Ipv4Addr> {
        self.ranges
            .values()
            .filter(|range| range.flags & POD_RANGE_TUNNEL != 0)
            .map(|range| Ipv4Addr::from(u32::from_be(range.node_addr)))
            .collect()
    }
}

fn range_key(cidr: &Cidr) -> (Ipv4Addr, u8) {
    (cidr.network(), cidr.prefix())
}

/// The routes and pod ranges for node `own` among `nodes` (which may include it).
pub fn plan(
    own: &NodeRoute,
    nodes: &[NodeRoute],
    mode: RoutingMode,
    underlay: &dyn Underlay,
) -> Plan {
    let mut plan = Plan::default();
    plan.ranges.insert(
        range_key(&own.pod_cidr),
        PodRange {
            node_addr: u32::from(own.addr).to_be(),
            flags: 0,
        },
    );
    let mut peers: Vec<&NodeRoute> = nodes
        .iter()
        .filter(|node| {
            node.addr != own.addr && range_key(&node.pod_cidr) != range_key(&own.pod_cidr)
        })
        .collect();
    peers.sort_by_key(|node| (node.addr, range_key(&node.pod_cidr)));
    for peer in peers {
        let connected = underlay.connected(peer.addr);
        let tunnel = match mode {
            RoutingMode::Native => false,
            RoutingMode::Encapsulation => true,
            RoutingMode::Auto => connected.is_none(),
        };
        let (destination, prefix_len) = range_key(&peer.pod_cidr);
        let route = if tunnel {
            underlay
                .next_hop(peer.addr)
                .map(|(gateway, link)| PlannedRoute {
                    destination,
                    prefix_len,
                    gateway,
                    mtu: Some(link.mtu.saturating_sub(IPIP_OVERHEAD)),
                    link,
                })
                .ok_or("no route to the node's address")
        } else {
            connected
                .map(|link| PlannedRoute {
                    destination,
                    prefix_len,
                    gateway: peer.addr,
                    link,
                    mtu: None,
                })
                .ok_or("not on a link of this node: native routing needs one (use encapsulation or auto)")
        };
        match route {
            Ok(route) => {
                plan.routes.push(route);
                plan.ranges.insert(
                    (destination, prefix_len),
                    PodRange {
                        node_addr: u32::from(peer.addr).to_be(),
                        flags: if tunnel { POD_RANGE_TUNNEL } else { 0 },
                    },
                );
            }
            Err(reason) => plan.unrouted.push(Unrouted {
                node: peer.addr,
                reason: reason.to_owned(),
            }),
        }
    }
    plan
}

/// The node's network as the kernel reports it, read once per reconcile.
pub struct KernelUnderlay {
    netns: Option<String>,
    addresses: Vec<net::LinkAddress>,
}

impl KernelUnderlay {
    pub fn read(netns: Option<&str>) -> Result<Self, NetError> {
        Ok(KernelUnderlay {
            netns: netns.map(str::to_owned),
            addresses: net::addresses(netns)?,
        })
    }

    fn link(&self, index: u32) -> Option<Link> {
        let (name, mtu) = net::link_by_index(self.netns.as_deref(), index).ok()?;
        Some(Link { index, name, mtu })
    }

    /// The link holding `addr` (the node's underlay interface for its own address).
    pub fn link_of(&self, addr: Ipv4Addr) -> Option<Link> {
        let address = self.addresses.iter().find(|a| a.addr == addr)?;
        self.link(address.ifindex)
    }
}

impl Underlay for KernelUnderlay {
    fn connected(&self, addr: Ipv4Addr) -> Option<Link> {
        let address = self
            .addresses
            .iter()
            .filter(|a| a.prefix_len < 32 && !a.addr.is_loopback())
            .find(|a| a.covers(addr))?;
        self.link(address.ifindex)
    }

    fn next_hop(&self, addr: Ipv4Addr) -> Option<(Ipv4Addr, Link)> {
        let lookup = net::route_get(self.netns.as_deref(), addr).ok()?;
        Some((lookup.gateway.unwrap_or(addr), self.link(lookup.oif)?))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("reading the node's network: {0}")]
    Net(#[from] NetError),
    #[error("the pod ranges map: {0}")]
    Datapath(#[from] DatapathError),
}

/// What one reconcile changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub routes_written: usize,
    pub routes_removed: usize,
    pub ranges_written: usize,
    pub ranges_removed: usize,
    /// Pod ranges someone else routes already: left as they are, and not routed by Berth.
    pub foreign: Vec<(Ipv4Addr, u8)>,
    /// Routes the kernel refused (the next pass tries again); the others are made.
    pub refused: Vec<String>,
}

impl Reconciled {
    pub fn changed_anything(&self) -> bool {
        self.routes_written + self.routes_removed + self.ranges_written + self.ranges_removed > 0
    }
}

/// Makes the kernel's routes (in `netns`, or the agent's own) and the datapath's pod
/// ranges match `plan`.
pub fn reconcile(
    netns: Option<&str>,
    plan: &Plan,
    datapath: &Mutex<Datapath>,
) -> Result<Reconciled, RoutingError> {
    let lock = || match datapath.lock() {
        Ok(datapath) => datapath,
        Err(poisoned) => poisoned.into_inner(),
    };
    let mut done = Reconciled {
        ranges_written: lock().add_pod_ranges(&plan.ranges)?,
        ..Reconciled::default()
    };
    let ours = net::routes(netns, Some(ROUTE_PROTOCOL))?;
    let all = net::routes(netns, None)?;
    let wanted: BTreeSet<(Ipv4Addr, u8)> = plan
        .routes
        .iter()
        .map(|route| (route.destination, route.prefix_len))
        .collect();
    for route in &plan.routes {
        let key = (route.destination, route.prefix_len);
        let installed = ours.iter().find(|r| (r.destination, r.prefix_len) == key);
        if all
            .iter()
            .any(|r| (r.destination, r.prefix_len) == key && r.protocol != ROUTE_PROTOCOL)
        {
            done.foreign.push(key);
            continue;
        }
        let same = installed.is_some_and(|r| {
            r.gateway == Some(route.gateway)
                && r.oif == Some(route.link.index)
                && r.mtu == route.mtu
        });
        if same {
            continue;
        }
        let replaced = net::route_replace(
            netns,
            &net::Route {
                destination: route.destination,
                prefix_len: route.prefix_len,
                gateway: Some(route.gateway),
                dev: &route.link.name,
                onlink: false,
                mtu: route.mtu,
                protocol: Some(ROUTE_PROTOCOL),
            },
        );
        match replaced {
            Ok(()) => done.routes_written += 1,
            Err(error) => done.refused.push(error.to_string()),
        }
    }
    for route in &ours {
        if !wanted.contains(&(route.destination, route.prefix_len)) {
            net::route_delete(netns, route.destination, route.prefix_len, ROUTE_PROTOCOL)?;
            done.routes_removed += 1;
        }
    }
    done.ranges_removed = lock().retain_pod_ranges(&plan.ranges)?;
    Ok(done)
}

/// How often routes are checked even when no Node changed: a next hop that changed under
/// the agent (the underlay's own routing) or a route someone removed is repaired.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);

/// Keeps the routes in step with the Node set sent on `nodes`, on a blocking thread per
/// pass (netlink and map writes are system calls).
pub async fn run(
    own: NodeRoute,
    mode: RoutingMode,
    datapath: Arc<Mutex<Datapath>>,
    mut nodes: watch::Receiver<Option<Vec<NodeRoute>>>,
) {
    let mut interval = tokio::time::interval(RECONCILE_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_unrouted = Vec::new();
    loop {
        tokio::select! {
            changed = nodes.changed() => if changed.is_err() { return },
            _ = interval.tick() => {}
        }
        let Some(peers) = nodes.borrow_and_update().clone() else {
            continue;
        };
        let datapath = datapath.clone();
        let passed = tokio::task::spawn_blocking(move || {
            let underlay = KernelUnderlay::read(None)?;
            let plan = plan(&own, &peers, mode, &underlay);
            let done = reconcile(None, &plan, &datapath)?;
            Ok::<_, RoutingError>((plan, done))
        })
        .await;
        match passed {
            Ok(Ok((plan, done))) => {
                if done.changed_anything() {
                    tracing::info!(
                        ?done,
                        tunnelled = ?plan.tunnelled(),
                        "routes to other nodes' pods updated"
                    );
                }
                for error in &done.refused {
                    tracing::warn!(%error, "a route to a node's pods was refused");
                }
                for (addr, prefix) in &done.foreign {
                    tracing::warn!(range = %format!("{addr}/{prefix}"), "a pod range is routed by someone else: left alone");
                }
                if plan.unrouted != last_unrouted {
                    for unrouted in &plan.unrouted {
                        tracing::warn!(node = %unrouted.node, reason = %unrouted.reason, "no route to a node's pods");
                    }
                    last_unrouted = plan.unrouted;
                }
            }
            Ok(Err(error)) => tracing::error!(%error, "routing to other nodes' pods"),
            Err(error) => tracing::error!(%error, "the routing pass stopped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Node 1's view: 198.18.64.0/24 on eth0 (MTU 1500); everything else via 198.18.64.254.
    struct Fake;

    fn eth0() -> Link {
        Link {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
        }
    }

    impl Underlay for Fake {
        fn connected(&self, addr: Ipv4Addr) -> Option<Link> {
            (addr.octets()[..3] == [198, 18, 64]).then(eth0)
        }

        fn next_hop(&self, addr: Ipv4Addr) -> Option<(Ipv4Addr, Link)> {
            match self.connected(addr) {
                Some(link) => Some((addr, link)),
                None => Some((Ipv4Addr::new(198, 18, 64, 254), eth0())),
            }
        }
    }

    fn node(addr: [u8; 4], cidr: &str) -> NodeRoute {
        NodeRoute {
            addr: Ipv4Addr::from(addr),
            pod_cidr: cidr.parse().expect("cidr"),
        }
    }

    fn nodes() -> Vec<NodeRoute> {
        vec![
            node([198, 18, 64, 1], "10.1.1.0/24"),
            node([198, 18, 64, 2], "10.1.2.0/24"),
            node([198, 18, 65, 3], "10.1.3.0/24"),
        ]
    }

    fn summary(plan: &Plan) -> Vec<String> {
        plan.routes
            .iter()
            .map(|r| {
                format!(
                    "{}/{} via {} dev {}{}",
                    r.destination,
                    r.prefix_len,
                    r.gateway,
                    r.link.name,
                    r.mtu.map(|m| format!(" mtu {m}")).unwrap_or_default()
                )
            })
            .collect()
    }

    #[test]
    fn auto_routes_connected_peers_natively_and_tunnels_the_others() {
        let all = nodes();
        let plan = plan(&all[0], &all, RoutingMode::Auto, &Fake);
        assert_eq!(
            summary(&plan),
            [
                "10.1.2.0/24 via 198.18.64.2 dev eth0",
                "10.1.3.0/24 via 198.18.64.254 dev eth0 mtu 1480",
            ]
        );
        assert_eq!(
            plan.tunnelled(),
            BTreeSet::from([Ipv4Addr::new(198, 18, 65, 3)])
        );
        assert_eq!(plan.ranges.len(), 3, "every range, this node's too");
        assert_eq!(
            plan.ranges[&(Ipv4Addr::new(10, 1, 1, 0), 24)].node_addr,
            u32::from(Ipv4Addr::new(198, 18, 64, 1)).to_be()
        );
        assert!(plan.unrouted.is_empty());
    }

    #[test]
    fn encapsulation_tunnels_every_peer_and_native_none() {
        let all = nodes();
        let plan_encap = plan(&all[0], &all, RoutingMode::Encapsulation, &Fake);
        assert_eq!(
            summary(&plan_encap),
            [
                "10.1.2.0/24 via 198.18.64.2 dev eth0 mtu 1480",
                "10.1.3.0/24 via 198.18.64.254 dev eth0 mtu 1480",
            ]
        );
        assert_eq!(plan_encap.tunnelled().len(), 2);

        let plan_native = plan(&all[0], &all, RoutingMode::Native, &Fake);
        assert_eq!(
            summary(&plan_native),
            ["10.1.2.0/24 via 198.18.64.2 dev eth0"]
        );
        assert!(plan_native.tunnelled().is_empty());
        assert_eq!(plan_native.unrouted.len(), 1, "{:?}", plan_native.unrouted);
        assert_eq!(plan_native.unrouted[0].node, Ipv4Addr::new(198, 18, 65, 3));
    }

    #[test]
    fn the_plan_follows_the_node_set() {
        let mut all = nodes();
        let before = plan(&all[0], &all, RoutingMode::Auto, &Fake);
        // Node 3 moves onto the shared link, node 2 leaves.
        all[2].addr = Ipv4Addr::new(198, 18, 64, 3);
        all.remove(1);
        let after = plan(&all[0], &all, RoutingMode::Auto, &Fake);
        assert_eq!(summary(&after), ["10.1.3.0/24 via 198.18.64.3 dev eth0"]);
        assert!(after.tunnelled().is_empty());
        assert_ne!(before.ranges, after.ranges);
        assert!(!after.ranges.contains_key(&(Ipv4Addr::new(10, 1, 2, 0), 24)));
        // The same input gives the same plan.
        assert_eq!(after, plan(&all[0], &all, RoutingMode::Auto, &Fake));
    }

    #[test]
    fn pods_lose_the_tunnels_overhead_wherever_a_peer_may_be_tunnelled() {
        assert_eq!(RoutingMode::Native.pod_mtu(1500), 1500);
        assert_eq!(RoutingMode::Auto.pod_mtu(1500), 1480);
        assert_eq!(RoutingMode::Encapsulation.pod_mtu(9000), 8980);
        assert_eq!("auto".parse(), Ok(RoutingMode::Auto));
        assert!("vxlan".parse::<RoutingMode>().is_err());
    }
}
