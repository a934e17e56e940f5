//! The datapath across two nodes with real TCP connections: pods and clients are network
//! namespaces, backends are echo servers, every node runs its own programs and maps.
//! Needs root, BPF and ethtool (installed by `cargo xtask setup`).

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    thread,
    time::Duration,
};

use berth_agent::datapath::{
    Algorithm, BackendSpec, BackendState, Frontend, Protocol, Reason, Service, ServiceSet,
};
use berth_tests::{BACKEND_PORT, CLIENT_ADDR, Cluster, KeepAlive, Load, get, node_addr};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 10);
const NODE_PORT: u16 = 30080;
const BACKENDS: [&str; 4] = ["web-1a", "web-1b", "web-2a", "web-2b"];

/// Two nodes, two echo backends on each, a client pod on node 1; the external client
/// reaches the LoadBalancer IP through node 1.
fn cluster() -> Cluster {
    let mut cluster = Cluster::new(2);
    cluster.add_pod(1, 2, "web-1a", true);
    cluster.add_pod(1, 3, "web-1b", true);
    cluster.add_pod(1, 10, "client", false);
    cluster.add_pod(2, 2, "web-2a", true);
    cluster.add_pod(2, 3, "web-2b", true);
    let via = node_addr(1).to_string();
    cluster
        .client
        .ip(&["route", "add", &format!("{LB_IP}/32"), "via", &via])
        .expect("client route to the LoadBalancer IP");
    cluster.start_datapaths();
    cluster
}

/// The service as node `node_id` programs it: its NodePort answers on its own address.
fn web(cluster: &Cluster, node_id: u32, failed: &[&str]) -> ServiceSet {
    let backends = BACKENDS
        .iter()
        .map(|name| {
            let pod = cluster.pod(name);
            BackendSpec {
                addr: pod.ip,
                port: BACKEND_PORT,
                node_id: pod.node_id,
                state: if failed.contains(name) {
                    BackendState::Failed
                } else {
                    BackendState::Active
                },
            }
        })
        .collect();
    let tcp = |addr, port, external| Frontend {
        addr,
        port,
        protocol: Protocol::Tcp,
        external,
    };
    ServiceSet {
        services: vec![Service {
            name: "default/web:80".into(),
            frontends: vec![
                tcp(VIP, 80, false),
                tcp(LB_IP, 80, true),
                tcp(node_addr(node_id), NODE_PORT, true),
            ],
            backends,
            algorithm: Algorithm::Maglev,
            affinity_timeout: None,
        }],
        nodes: cluster.datapath_nodes(),
    }
}

fn apply_everywhere(cluster: &mut Cluster, failed: &[&str]) {
    let sets: Vec<(u32, ServiceSet)> = cluster
        .nodes
        .iter()
        .map(|node| (node.id, web(cluster, node.id, failed)))
        .collect();
    for (id, set) in sets {
        cluster
            .node(id)
            .datapath()
            .apply(&set)
            .expect("applying the service");
    }
}

fn reason(cluster: &mut Cluster, node_id: u32, wanted: Reason) -> u64 {
    cluster
        .node(node_id)
        .datapath()
        .reasons()
        .expect("reading reasons")
        .into_iter()
        .find(|(reason, _)| *reason == wanted)
        .map_or(0, |(_, count)| count)
}

#[test]
fn connections_from_pods_and_from_outside_reach_backends_on_both_nodes() {
    let mut cluster = cluster();
    apply_everywhere(&mut cluster, &[]);
    let client_pod_ip = cluster.pod("client").ip;

    let mut seen = BTreeSet::new();
    for _ in 0..60 {
        let reply = get(&cluster.pod("client").ns, SocketAddrV4::new(VIP, 80))
            .unwrap_or_else(|error| panic!("pod to ClusterIP: {error}"));
        assert_eq!(
            reply.client.ip(),
            std::net::IpAddr::V4(client_pod_ip),
            "the backend sees the pod"
        );
        seen.insert(reply.pod);
    }
    assert_eq!(seen, BACKENDS.iter().map(|b| b.to_string()).collect());
    // Node 1's own backends (and their replies to the client pod) are handed straight
    // to the pod past the node's stack.
    assert!(reason(&mut cluster, 1, Reason::DeliveredToPod) > 0);

    let mut seen = BTreeSet::new();
    for _ in 0..60 {
        let reply = get(&cluster.client, SocketAddrV4::new(LB_IP, 80))
            .unwrap_or_else(|error| panic!("outside to LoadBalancer IP: {error}"));
        assert_eq!(
            reply.client.ip(),
            std::net::IpAddr::V4(CLIENT_ADDR),
            "client address preserved"
        );
        seen.insert(reply.pod);
    }
    assert_eq!(seen, BACKENDS.iter().map(|b| b.to_string()).collect());
    assert!(reason(&mut cluster, 1, Reason::ForwardedToNode) > 0);
    assert!(reason(&mut cluster, 2, Reason::TunnelDelivered) > 0);

    // Any node answers for the NodePort, on its own address, with local and remote
    // backends alike.
    for node in [1, 2] {
        let mut seen = BTreeSet::new();
        for _ in 0..40 {
            let target = SocketAddrV4::new(node_addr(node), NODE_PORT);
            let reply = get(&cluster.client, target)
                .unwrap_or_else(|error| panic!("NodePort on node {node}: {error}"));
            assert_eq!(reply.client.ip(), std::net::IpAddr::V4(CLIENT_ADDR));
            seen.insert(reply.pod);
        }
        assert_eq!(
            seen.len(),
            BACKENDS.len(),
            "NodePort on node {node}: {seen:?}"
        );
    }
    // The pod's ClusterIP is not reachable from outside.
    assert!(get(&cluster.client, SocketAddrV4::new(VIP, 80)).is_err());
}

#[test]
fn failed_backend_gets_no_new_connections_and_other_connections_see_no_error() {
    let mut cluster = cluster();
    apply_everywhere(&mut cluster, &[]);
    // One established keep-alive connection per backend.
    let mut connections = cluster.pod("client").ns.run(|| {
        let mut connections = Vec::new();
        let mut covered = BTreeSet::new();
        for _ in 0..200 {
            let mut connection = KeepAlive::connect(SocketAddrV4::new(VIP, 80)).expect("connect");
            let reply = connection.get().expect("first request");
            if covered.insert(reply.pod.clone()) {
                connections.push((reply.pod, connection));
            }
            if covered.len() == BACKENDS.len() {
                break;
            }
        }
        connections
    });
    assert_eq!(
        connections.len(),
        BACKENDS.len(),
        "a connection to every backend"
    );

    apply_everywhere(&mut cluster, &["web-2a"]);

    let (healthy, failed): (Vec<_>, Vec<_>) =
        connections.iter_mut().partition(|(pod, _)| pod != "web-2a");
    for (pod, connection) in healthy {
        for _ in 0..5 {
            let reply = connection
                .get()
                .unwrap_or_else(|error| panic!("established connection to {pod}: {error}"));
            assert_eq!(&reply.pod, pod, "the flow stays on its backend");
        }
    }
    // The failed backend's flow is moved on its next packet: the new backend knows no such
    // connection and resets it, so the client learns at once instead of hanging.
    for (_, connection) in failed {
        assert!(connection.get().is_err());
    }
    let client = &cluster.pod("client").ns;
    for _ in 0..100 {
        let reply = get(client, SocketAddrV4::new(VIP, 80)).expect("new connection");
        assert_ne!(
            reply.pod, "web-2a",
            "no new connection reaches the failed backend"
        );
    }
    for _ in 0..40 {
        let reply = get(&cluster.client, SocketAddrV4::new(LB_IP, 80)).expect("from outside");
        assert_ne!(reply.pod, "web-2a");
    }
}

#[test]
fn reopening_the_datapath_from_bpffs_drops_no_connection() {
    let mut cluster = cluster();
    apply_everywhere(&mut cluster, &[]);
    let east_west = Load::start(cluster.pod("client").ns.name(), SocketAddrV4::new(VIP, 80));
    let north_south = Load::start(cluster.client.name(), SocketAddrV4::new(LB_IP, 80));
    thread::sleep(Duration::from_millis(300));
    for round in 0..3 {
        for id in [1, 2] {
            let veths = cluster.pod_veths(id);
            let set = web(&cluster, id, &[]);
            let node = cluster.node(id);
            node.close_datapath();
            thread::sleep(Duration::from_millis(200));
            node.open_datapath(&veths);
            let report = node.datapath().apply(&set).expect("apply after reopen");
            assert!(
                !report.changed_anything(),
                "round {round}, node {id}: the reopened maps already matched: {report:?}"
            );
        }
    }
    thread::sleep(Duration::from_millis(300));
    for (what, load) in [
        ("pod to ClusterIP", east_west),
        ("outside to LB IP", north_south),
    ] {
        let (ok, failed, errors) = load.finish();
        assert!(ok > 20, "{what}: only {ok} requests went through");
        assert_eq!(
            failed,
            0,
            "{what}: {failed} of {} failed: {errors:?}",
            ok + failed
        );
    }
}

/// The cgroup v2 directory this test process runs in: where the socket program must be
/// attached to see its sockets.
fn own_cgroup() -> std::path::PathBuf {
    let root = berth_agent::datapath::cgroup2_root().expect("a cgroup v2 hierarchy is mounted");
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("reading /proc/self/cgroup");
    let path = own
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .expect("a cgroup v2 entry in /proc/self/cgroup");
    root.join(path.trim_start_matches('/'))
}

#[test]
fn a_pods_connect_to_a_cluster_ip_goes_straight_to_a_backend() {
    let mut cluster = cluster();
    apply_everywhere(&mut cluster, &[]);
    let client = cluster.pod("client");
    let (client_ip, registration) = (
        client.ip,
        vec![(
            client.ns.name().to_owned(),
            client.host_veth.clone(),
            client.ip,
        )],
    );
    cluster
        .node(1)
        .balance_pod_sockets(&registration, &own_cgroup())
        .expect("registering the client pod with the socket program");
    let socket_before = reason(&mut cluster, 1, Reason::SocketTranslated);
    let packets_before = reason(&mut cluster, 1, Reason::Translated);

    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let reply = get(&cluster.pod("client").ns, SocketAddrV4::new(VIP, 80))
            .unwrap_or_else(|error| panic!("pod to ClusterIP: {error}"));
        assert_eq!(
            reply.client.ip(),
            std::net::IpAddr::V4(client_ip),
            "the backend sees the pod"
        );
        seen.insert(reply.pod);
    }
    // Round robin over the four backends, two of them on the other node.
    assert_eq!(seen, BACKENDS.iter().map(|b| b.to_string()).collect());
    assert_eq!(
        reason(&mut cluster, 1, Reason::SocketTranslated) - socket_before,
        40,
        "every connect was translated by the socket program"
    );
    assert_eq!(
        reason(&mut cluster, 1, Reason::Translated),
        packets_before,
        "no packet of those connections was translated"
    );

    // A pod no longer on the node (its veth detached) is forgotten: its connects are
    // left alone.
    let veth = cluster.pod("client").host_veth.clone();
    cluster
        .node(1)
        .datapath()
        .detach_pod_interface(&veth)
        .expect("detaching the client's veth");
    let socket_before = reason(&mut cluster, 1, Reason::SocketTranslated);
    let _ = get(&cluster.pod("client").ns, SocketAddrV4::new(VIP, 80));
    assert_eq!(
        reason(&mut cluster, 1, Reason::SocketTranslated),
        socket_before
    );
}
