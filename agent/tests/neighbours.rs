//! The datapath's view of another node's link-layer address follows the kernel's neighbour
//! table as it changes, without polling: a node whose entry is removed is resolved again at
//! once, and a node that comes back with a new MAC is known by it as soon as the kernel
//! learns it. Two namespaces on one veth play the nodes. Needs root.

use std::{
    net::{Ipv4Addr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use berth_agent::{datapath::NeighbourKeeper, net};
use berth_testkit::netns::{NetNs, veth_between};

const A_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 50, 1);
const B_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 50, 2);
/// Well under the 30 s the agent used to poll at.
const PROMPTLY: Duration = Duration::from_secs(3);

fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + PROMPTLY;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("not within {PROMPTLY:?}: {what}");
}

fn valid_entry(ns: &NetNs, addr: Ipv4Addr) -> Option<[u8; 6]> {
    net::neighbours(Some(ns.name()))
        .expect("neighbour table")
        .into_iter()
        .find(|entry| entry.addr == addr && entry.valid)
        .and_then(|entry| entry.mac)
}

#[test]
fn a_peer_node_entry_is_restored_and_its_new_mac_seen_at_once() {
    let a = NetNs::new("bnka").expect("namespace a");
    let b = NetNs::new("bnkb").expect("namespace b");
    veth_between(
        &a,
        "a0",
        Some(&format!("{A_ADDR}/24")),
        &b,
        "b0",
        Some(&format!("{B_ADDR}/24")),
    )
    .expect("veth between the nodes");
    let keeper = a
        .run(NeighbourKeeper::start)
        .expect("follow a's neighbour table");
    let first_mac = net::link_mac(Some(b.name()), "b0").expect("b's mac");

    keeper.set_peers([B_ADDR]);
    eventually("b is resolved", || keeper.mac(B_ADDR) == Some(first_mac));

    // The kernel forgets the entry (as its garbage collection does): resolved again.
    a.ip(&["neigh", "del", &B_ADDR.to_string(), "dev", "a0"])
        .expect("ip neigh del");
    eventually("b's entry is valid again", || {
        valid_entry(&a, B_ADDR) == Some(first_mac)
    });

    // Node b comes back with another MAC and speaks first: its ARP request updates a's
    // entry, and the keeper's view follows.
    let second_mac = [0x02, 0x42, 0xc6, 0x12, 0x32, 0x02];
    b.ip(&["link", "set", "dev", "b0", "address", "02:42:c6:12:32:02"])
        .expect("new mac for b");
    let _ = b.ip(&["neigh", "del", &A_ADDR.to_string(), "dev", "b0"]);
    b.run(|| {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("socket in b");
        socket.send_to(b"hello", (A_ADDR, 9)).expect("send to a");
    });
    eventually("b's new mac is seen", || {
        keeper.mac(B_ADDR) == Some(second_mac)
    });
    assert_eq!(valid_entry(&a, B_ADDR), Some(second_mac));

    // A node that leaves the set is no longer followed.
    keeper.set_peers([]);
    assert_eq!(keeper.mac(B_ADDR), None);
}
