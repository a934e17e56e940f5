//! Each netlink operation against the kernel, checked with `ip`'s view of the result, in
//! namespaces of their own (deleted when their guards drop, also on failure). Needs root.

use std::{
    net::{Ipv4Addr, UdpSocket},
    time::{Duration, Instant},
};

use berth_net::{self as net, NeighbourEvent, NeighbourEvents, Route};
use berth_testkit::{
    netns::{NetNs, veth_between},
    unique_name,
};

const A_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 40, 1);
const B_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 40, 2);

/// Two namespaces joined by a veth pair (`a0` / `b0`) on 198.18.40.0/24.
fn pair() -> (NetNs, NetNs) {
    let a = NetNs::new("bnla").expect("namespace a");
    let b = NetNs::new("bnlb").expect("namespace b");
    veth_between(
        &a,
        "a0",
        Some(&format!("{A_ADDR}/24")),
        &b,
        "b0",
        Some(&format!("{B_ADDR}/24")),
    )
    .expect("veth between a and b");
    (a, b)
}

/// Deletes a namespace name made outside [`NetNs`] even when the test fails.
struct NameGuard(String);

impl Drop for NameGuard {
    fn drop(&mut self) {
        if let Err(error) = net::netns_delete(&self.0) {
            eprintln!("cleanup: {error}");
        }
    }
}

#[test]
fn namespaces_are_added_attached_and_deleted() {
    let name = unique_name("bnlns");
    let _guard = NameGuard(name.clone());
    net::netns_add(&name).expect("add");
    assert!(net::netns_exists(&name));
    let listed = net::ip(None, &["netns", "list"]).expect("ip netns list");
    assert!(listed.contains(&name), "ip netns list: {listed}");
    // A new namespace: loopback only.
    let links = net::ip(Some(&name), &["-o", "link", "show"]).expect("links");
    assert_eq!(links.lines().count(), 1, "links: {links}");
    let again = net::netns_add(&name).expect_err("a second add of one name");
    assert!(again.to_string().contains(&name), "{again}");

    // A second name for a process's namespace reaches the same namespace.
    let holder = NetNs::new("bnlhold").expect("holder namespace");
    let sleeper = holder.hold();
    let attached = unique_name("bnlat");
    let _attached_guard = NameGuard(attached.clone());
    net::netns_attach(&attached, sleeper.id()).expect("attach");
    net::veth_add(Some(holder.name()), "via0", "via1").expect("veth in the holder");
    assert!(net::link_exists(Some(&attached), "via0"));

    net::netns_delete(&attached).expect("delete the attached name");
    assert!(!net::netns_exists(&attached));
    assert!(
        net::link_exists(Some(holder.name()), "via0"),
        "the namespace lives on"
    );
    net::netns_delete(&name).expect("delete");
    assert!(!net::netns_exists(&name));
    net::netns_delete(&name).expect("deleting a missing name is no error");
}

#[test]
fn links_are_created_looked_up_moved_and_deleted() {
    let a = NetNs::new("bnla").expect("namespace a");
    let b = NetNs::new("bnlb").expect("namespace b");

    net::veth_add(Some(a.name()), "x0", "x1").expect("veth");
    assert!(net::link_exists(Some(a.name()), "x0"));
    assert!(!net::link_exists(Some(b.name()), "x0"));
    let shown = a
        .ip(&["-o", "link", "show", "dev", "x0"])
        .expect("ip link show");
    let index = net::link_index(Some(a.name()), "x0").expect("index");
    assert!(shown.starts_with(&format!("{index}: x0@x1")), "{shown}");
    let mac = net::link_mac(Some(a.name()), "x0").expect("mac");
    let mac_text = mac.map(|byte| format!("{byte:02x}")).join(":");
    assert!(shown.contains(&format!("link/ether {mac_text}")), "{shown}");

    net::link_up(Some(a.name()), "x0").expect("up");
    let shown = a
        .ip(&["-o", "link", "show", "dev", "x0"])
        .expect("ip link show");
    assert!(shown.contains("MULTICAST,UP"), "{shown}");

    net::link_set_netns(Some(a.name()), "x1", b.name()).expect("move x1 into b");
    assert!(!net::link_exists(Some(a.name()), "x1"));
    assert!(net::link_exists(Some(b.name()), "x1"));

    // The peer created straight in another namespace, named by its /run/netns name.
    net::veth_add_peer_in(Some(a.name()), "y0", "eth0", b.name()).expect("veth into b");
    assert!(net::link_exists(Some(b.name()), "eth0"));
    assert!(!net::link_exists(Some(a.name()), "eth0"));
    let taken =
        net::veth_add_peer_in(Some(a.name()), "y0", "eth1", b.name()).expect_err("a second y0");
    assert!(taken.to_string().contains("link add y0"), "{taken}");
    assert!(taken.to_string().contains("File exists"), "{taken}");

    net::link_delete(Some(a.name()), "y0").expect("delete y0");
    assert!(!net::link_exists(Some(a.name()), "y0"));
    assert!(
        !net::link_exists(Some(b.name()), "eth0"),
        "the peer goes with it"
    );
    net::link_delete(Some(a.name()), "y0").expect("deleting a missing link is no error");
    let missing = net::link_up(Some(a.name()), "nosuch0").expect_err("no such link");
    assert!(
        missing.to_string().contains("link show dev nosuch0"),
        "{missing}"
    );
}

#[test]
fn addresses_and_routes_are_added() {
    let (a, b) = pair();
    let addrs = a
        .ip(&["-o", "addr", "show", "dev", "a0"])
        .expect("addresses");
    assert!(addrs.contains(&format!("inet {A_ADDR}/24")), "{addrs}");
    let bad = net::addr_add(Some(a.name()), "a0", "198.18.40.1").expect_err("no prefix");
    assert!(
        bad.to_string().contains("addr add 198.18.40.1 dev a0"),
        "{bad}"
    );

    // A /32 straight onto the link, as the host side of a pod gets.
    let host_route = Route {
        destination: Ipv4Addr::new(198, 18, 41, 7),
        prefix_len: 32,
        gateway: None,
        dev: "a0",
        onlink: false,
        mtu: None,
        protocol: None,
    };
    net::route_replace(Some(a.name()), &host_route).expect("/32 route");
    // A range via a gateway, then replaced by another.
    let mut via = Route {
        destination: Ipv4Addr::new(198, 18, 42, 0),
        prefix_len: 24,
        gateway: Some(B_ADDR),
        dev: "a0",
        onlink: false,
        mtu: None,
        protocol: None,
    };
    net::route_replace(Some(a.name()), &via).expect("route via b");
    via.gateway = Some(Ipv4Addr::new(198, 18, 40, 3));
    net::route_replace(Some(a.name()), &via).expect("replaced");
    // A default route via a gateway outside every subnet, as a pod's.
    let pod_default = Route {
        destination: Ipv4Addr::UNSPECIFIED,
        prefix_len: 0,
        gateway: Some(Ipv4Addr::new(169, 254, 1, 1)),
        dev: "b0",
        onlink: true,
        mtu: None,
        protocol: None,
    };
    net::route_replace(Some(b.name()), &pod_default).expect("default route");

    let routes = a.ip(&["route", "show"]).expect("routes of a");
    assert!(routes.contains("198.18.41.7 dev a0 scope link"), "{routes}");
    assert!(
        routes.contains("198.18.42.0/24 via 198.18.40.3 dev a0"),
        "{routes}"
    );
    assert!(
        !routes.contains("via 198.18.40.2"),
        "replaced, not added: {routes}"
    );
    let routes = b.ip(&["route", "show"]).expect("routes of b");
    assert!(
        routes.contains("default via 169.254.1.1 dev b0 onlink"),
        "{routes}"
    );
}

#[test]
fn permanent_neighbours_are_replaced_and_listed() {
    let (a, _b) = pair();
    let gateway = Ipv4Addr::new(169, 254, 1, 1);
    let mac = [0x02, 0x42, 0, 0, 0, 1];
    net::neigh_replace_permanent(Some(a.name()), gateway, mac, "a0").expect("neighbour");
    let replaced = [0x02, 0x42, 0, 0, 0, 2];
    net::neigh_replace_permanent(Some(a.name()), gateway, replaced, "a0").expect("replaced");
    let shown = a
        .ip(&["neigh", "show", "169.254.1.1"])
        .expect("ip neigh show");
    assert!(
        shown.contains("dev a0 lladdr 02:42:00:00:00:02 PERMANENT"),
        "{shown}"
    );
    let index = net::link_index(Some(a.name()), "a0").expect("index");
    let entries = net::neighbours(Some(a.name())).expect("neighbours");
    let entry = entries
        .iter()
        .find(|entry| entry.addr == gateway)
        .expect("the entry is listed");
    assert_eq!(entry.mac, Some(replaced));
    assert_eq!(entry.ifindex, index);
    assert!(entry.valid && !entry.failed);
}

fn is_valid_entry_of(event: &NeighbourEvent, addr: Ipv4Addr) -> bool {
    matches!(event, NeighbourEvent::Changed(entry) if entry.addr == addr && entry.valid)
}

fn is_removal_of(event: &NeighbourEvent, addr: Ipv4Addr) -> bool {
    matches!(event, NeighbourEvent::Removed(entry) if entry.addr == addr)
}

/// Collects announced events until one satisfies `done`, for at most five seconds.
fn events_until(
    events: &NeighbourEvents,
    seen: &mut Vec<NeighbourEvent>,
    done: impl Fn(&NeighbourEvent) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let batch = events.next().expect("events");
        let finished = batch.iter().any(&done);
        seen.extend(batch);
        if finished {
            return;
        }
    }
}

#[test]
fn neighbour_changes_are_announced() {
    let (a, b) = pair();
    let b_mac = net::link_mac(Some(b.name()), "b0").expect("b's mac");
    let seen = a.run(move || {
        let events = NeighbourEvents::subscribe(Duration::from_millis(100)).expect("subscribe");
        let mut seen = Vec::new();
        // Resolving b: the entry appears and becomes valid ...
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("socket");
        socket.send_to(b"x", (B_ADDR, 9)).expect("send to b");
        events_until(&events, &mut seen, |event| is_valid_entry_of(event, B_ADDR));
        // ... and its removal is announced too.
        net::ip(None, &["neigh", "del", &B_ADDR.to_string(), "dev", "a0"]).expect("neigh del");
        events_until(&events, &mut seen, |event| is_removal_of(event, B_ADDR));
        seen
    });
    let resolved = seen.iter().find_map(|event| match event {
        NeighbourEvent::Changed(entry) if entry.addr == B_ADDR && entry.valid => Some(entry),
        _ => None,
    });
    assert_eq!(
        resolved.and_then(|entry| entry.mac),
        Some(b_mac),
        "events: {seen:?}"
    );
    assert!(
        seen.iter().any(|event| is_removal_of(event, B_ADDR)),
        "events: {seen:?}"
    );
}

#[test]
fn sysctls_are_written_in_the_named_namespace() {
    let (a, _b) = pair();
    net::sysctl_set(Some(a.name()), "net/ipv4/conf/a0/proxy_arp", "1").expect("sysctl");
    let read = a.run(|| std::fs::read_to_string("/proc/sys/net/ipv4/conf/a0/proxy_arp"));
    assert_eq!(read.expect("read back").trim(), "1");
    // Seen by a process in the namespace, and not in the caller's namespace.
    let host_before = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/send_redirects")
        .expect("the caller's value");
    let flipped = if host_before.trim() == "0" { "1" } else { "0" };
    net::sysctl_set(Some(a.name()), "net/ipv4/conf/all/send_redirects", flipped).expect("set");
    let shown = a.exec("cat", &["/proc/sys/net/ipv4/conf/all/send_redirects"]);
    assert_eq!(String::from_utf8_lossy(&shown.stdout).trim(), flipped);
    let host_after = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/send_redirects")
        .expect("the caller's value");
    assert_eq!(host_after, host_before);
    let escape = net::sysctl_set(Some(a.name()), "net/../../etc/passwd", "x");
    assert!(escape.is_err(), "paths that leave /proc/sys are refused");
}

#[test]
fn marked_routes_are_listed_looked_up_and_deleted() {
    let (a, _b) = pair();
    let ns = Some(a.name());
    const MARK: u8 = 190;
    let marked = Route {
        destination: Ipv4Addr::new(198, 18, 43, 0),
        prefix_len: 24,
        gateway: Some(B_ADDR),
        dev: "a0",
        onlink: false,
        mtu: Some(1480),
        protocol: Some(MARK),
    };
    net::route_replace(ns, &marked).expect("marked route");
    let other = Route {
        destination: Ipv4Addr::new(198, 18, 44, 0),
        protocol: None,
        mtu: None,
        ..marked
    };
    net::route_replace(ns, &other).expect("someone else's route");
    let shown = a.ip(&["route", "show"]).expect("routes");
    assert!(
        shown.contains("198.18.43.0/24 via 198.18.40.2 dev a0 proto 190 mtu 1480"),
        "{shown}"
    );

    let ours = net::routes(ns, Some(MARK)).expect("marked routes");
    let index = net::link_index(ns, "a0").expect("index");
    assert_eq!(
        ours,
        [net::InstalledRoute {
            destination: marked.destination,
            prefix_len: 24,
            gateway: Some(B_ADDR),
            oif: Some(index),
            mtu: Some(1480),
            protocol: MARK,
        }]
    );
    let all = net::routes(ns, None).expect("all routes");
    assert!(
        all.iter()
            .any(|r| r.destination == other.destination && r.protocol != MARK)
    );

    // `ip route get`: a destination on the link has no gateway, one behind a route has.
    let direct = net::route_get(ns, B_ADDR).expect("route get");
    assert_eq!((direct.gateway, direct.oif), (None, index));
    let routed = net::route_get(ns, Ipv4Addr::new(198, 18, 43, 9)).expect("route get");
    assert_eq!(routed.gateway, Some(B_ADDR));
    assert!(
        net::route_get(ns, Ipv4Addr::new(192, 0, 2, 1)).is_err(),
        "no default route"
    );

    // The address and its link, as the agent finds its underlay interface.
    let addresses = net::addresses(ns).expect("addresses");
    let on_a0 = addresses
        .iter()
        .find(|address| address.addr == A_ADDR)
        .expect("a0's address");
    assert_eq!((on_a0.ifindex, on_a0.prefix_len), (index, 24));
    assert!(on_a0.covers(B_ADDR) && !on_a0.covers(Ipv4Addr::new(198, 18, 41, 1)));
    net::link_set_mtu(ns, "a0", 1400).expect("mtu");
    assert_eq!(
        net::link_by_index(ns, index).expect("link"),
        ("a0".to_owned(), 1400)
    );

    // Deleting by mark: only the marked route goes; a missing one is no error, and the
    // mark must match.
    net::route_delete(ns, other.destination, 24, MARK).expect("not ours: nothing to do");
    net::route_delete(ns, marked.destination, 24, MARK).expect("delete");
    net::route_delete(ns, marked.destination, 24, MARK).expect("delete again");
    assert!(net::routes(ns, Some(MARK)).expect("routes").is_empty());
    let shown = a.ip(&["route", "show"]).expect("routes");
    assert!(shown.contains("198.18.44.0/24 via 198.18.40.2"), "{shown}");
}
