//! The desired datapath state: what the agent wants programmed, in user-space terms.

use std::{fmt, net::Ipv4Addr, time::Duration};

use berth_ebpf_common::{IPPROTO_TCP, IPPROTO_UDP};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// An address clients use to reach a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    /// Also served to traffic arriving on the node's external interface (NodePort and
    /// LoadBalancer addresses); ClusterIPs are only reachable from pods.
    pub external: bool,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.protocol)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendState {
    /// Receives new flows.
    Active,
    /// Keeps its established flows, receives no new ones (pod shutting down).
    Terminating,
    /// Failed its health check: no new flows, established ones move on their next packet.
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendSpec {
    pub addr: Ipv4Addr,
    pub port: u16,
    /// The node running the backend; another node's backends are reached through it.
    pub node_id: u32,
    pub state: BackendState,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// Consistent hashing of the 5-tuple: every node picks the same backend for a flow.
    #[default]
    Maglev,
    /// A uniformly random backend per new flow.
    Random,
}

/// One service port: its frontends share one backend set and one lookup table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Stable name, `namespace/name:port`, used for ids, logs and metrics.
    pub name: String,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<BackendSpec>,
    pub algorithm: Algorithm,
    /// Session affinity by client address, with its idle timeout.
    pub affinity_timeout: Option<Duration>,
}

/// A node of the cluster: north-south traffic for its backends is sent to it in IPIP,
/// and IPIP is accepted only from these addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    pub id: u32,
    pub addr: Ipv4Addr,
}

/// Everything the datapath should serve; `Datapath::apply` makes the maps match it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceSet {
    pub services: Vec<Service>,
    pub nodes: Vec<Node>,
}
