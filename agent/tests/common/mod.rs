//! What the datapath program tests share: this node and its peer, the programs' verdicts,
//! and a datapath with small limits loaded into a test's own pin directory.

use std::net::Ipv4Addr;

use berth_agent::datapath::{Datapath, DatapathOptions, Limits, Node, Service, ServiceSet};
use berth_ebpf_common::Reason;
use berth_testkit::PinDir;

pub const NODE_ID: u32 = 1;
pub const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const PEER_NODE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
// Not every test binary runs the XDP program to a drop.
#[allow(dead_code)]
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// `services` on a cluster of this node and its peer.
pub fn set(services: Vec<Service>) -> ServiceSet {
    ServiceSet {
        services,
        nodes: vec![
            Node {
                id: NODE_ID,
                addr: NODE_ADDR,
            },
            Node {
                id: 2,
                addr: PEER_NODE_ADDR,
            },
        ],
    }
}

/// The datapath pinned under `pins`, with `services` applied.
pub fn open(pins: &PinDir, services: Vec<Service>) -> Datapath {
    let mut datapath = Datapath::open(DatapathOptions {
        pin_dir: pins.path().to_path_buf(),
        node_id: NODE_ID,
        node_addr: NODE_ADDR,
        limits: Limits {
            max_services: 64,
            max_backends: 256,
            max_connections: 4096,
            max_affinity: 1024,
            max_nodes: 16,
            maglev_min_table: 1021,
            maglev_pool_slots: 1 << 16,
        },
    })
    .expect("loading the datapath");
    datapath.apply(&set(services)).expect("applying services");
    datapath
}

/// How many packets the programs counted for `reason` so far, on every CPU.
pub fn counted(datapath: &Datapath, reason: Reason) -> u64 {
    datapath
        .reasons()
        .expect("reading reasons")
        .into_iter()
        .find(|(r, _)| *r == reason)
        .map_or(0, |(_, count)| count)
}
