//! Pod traffic between nodes routed by the agent's own routing (`berth_agent::routing`:
//! plan and reconcile, and the datapath's tunnel programs), without the control plane or
//! Docker. Nodes 1 and 2 share a link, node 3 sits on another one behind a router that
//! knows node addresses only; in auto mode node 1 reaches node 2's pods natively and node
//! 3's through the IPIP tunnel. Bulk TCP both ways (segmentation offload on the veths)
//! arrives intact over both paths, and the routes follow a node changing address and
//! leaving. Needs root and bpffs.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream},
    sync::Mutex,
    time::Duration,
};

use berth_agent::{
    datapath::{Datapath, DatapathOptions, Node, Reason, ServiceSet},
    podnet,
    routing::{self, KernelUnderlay, NodeRoute, RoutingMode},
};
use berth_testkit::{
    PinDir,
    netns::{ChildGuard, NetNs},
};
use berth_tests::{node_sysctls, plug_into, test_limits};

const ROUTER_HOST: u8 = 254;
const PORT: u16 = 7000;
/// Enough to fill many 64 KiB segmentation-offload packets each way.
const BULK: usize = 4 << 20;

struct TestNode {
    route: NodeRoute,
    // Drop order: the datapath before its pins, the namespace last.
    datapath: Mutex<Datapath>,
    _pins: PinDir,
    ns: NetNs,
}

impl TestNode {
    fn reason(&self, reason: Reason) -> u64 {
        self.datapath
            .lock()
            .expect("datapath")
            .reasons()
            .expect("reasons")
            .into_iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, count)| count)
    }

    /// Plans and reconciles this node's routes among `nodes`, as the agent does.
    fn route(&self, nodes: &[NodeRoute]) -> routing::Reconciled {
        let underlay = KernelUnderlay::read(Some(self.ns.name())).expect("the node's addresses");
        let plan = routing::plan(&self.route, nodes, RoutingMode::Auto, &underlay);
        assert!(plan.unrouted.is_empty(), "{:?}", plan.unrouted);
        routing::reconcile(Some(self.ns.name()), &plan, &self.datapath).expect("reconcile")
    }
}

struct Pod {
    ip: Ipv4Addr,
    network: podnet::PodNetwork,
    _holder: ChildGuard,
    ns: NetNs,
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Err(error) = self.network.teardown() {
            eprintln!("cleanup: {error}");
        }
    }
}

struct Topology {
    // Drop order: pods, nodes, router, fabric.
    pods: Vec<Pod>,
    nodes: Vec<TestNode>,
    _router: NetNs,
    _fabric: NetNs,
}

fn node_addr(id: u8) -> Ipv4Addr {
    // Nodes 1 and 2 on 198.18.80.0/24, node 3 on 198.18.81.0/24.
    Ipv4Addr::new(198, 18, if id == 3 { 81 } else { 80 }, id)
}

fn pod_cidr(id: u8) -> String {
    format!("198.18.{}.0/24", 90 + id)
}

fn topology() -> Topology {
    let fabric = NetNs::new("brfab").expect("fabric");
    for bridge in ["br0", "br1"] {
        fabric
            .ip(&["link", "add", bridge, "type", "bridge"])
            .expect("bridge");
        fabric
            .ip(&["link", "set", bridge, "up"])
            .expect("bridge up");
    }
    let router = NetNs::new("brrt").expect("router");
    node_sysctls(&router);
    for (link, bridge) in ["br0", "br1"].into_iter().enumerate() {
        let addr = Ipv4Addr::new(198, 18, 80 + link as u8, ROUTER_HOST);
        plug_into(
            &fabric,
            bridge,
            &router,
            &format!("r{link}"),
            &format!("eth{link}"),
            addr,
        );
    }
    let routes: Vec<NodeRoute> = (1..=3)
        .map(|id| NodeRoute {
            addr: node_addr(id),
            pod_cidr: pod_cidr(id).parse().expect("cidr"),
        })
        .collect();
    let nodes = (1..=3u8)
        .map(|id| {
            let ns = NetNs::new(&format!("brn{id}")).expect("node");
            node_sysctls(&ns);
            let addr = node_addr(id);
            let bridge = if id == 3 { "br1" } else { "br0" };
            plug_into(&fabric, bridge, &ns, &format!("n{id}"), "eth0", addr);
            let [a, b, link, _] = addr.octets();
            let gateway = Ipv4Addr::new(a, b, link, ROUTER_HOST).to_string();
            ns.ip(&["route", "add", "default", "via", &gateway])
                .expect("default route");
            let pins = PinDir::new(&format!("brn{id}"));
            let options = DatapathOptions {
                pin_dir: pins.path().to_path_buf(),
                node_id: u32::from(routes[usize::from(id) - 1].pod_cidr.network()),
                node_addr: addr,
                limits: test_limits(),
            };
            let nodes: Vec<Node> = routes
                .iter()
                .map(|route| Node {
                    id: u32::from(route.pod_cidr.network()),
                    addr: route.addr,
                })
                .collect();
            let datapath = ns.run(move || {
                let mut datapath = Datapath::open(options).expect("datapath");
                datapath
                    .attach_underlay_interface("eth0")
                    .expect("tunnel programs");
                datapath
                    .apply(&ServiceSet {
                        services: Vec::new(),
                        nodes,
                    })
                    .expect("nodes");
                datapath
            });
            TestNode {
                route: routes[usize::from(id) - 1],
                datapath: Mutex::new(datapath),
                _pins: pins,
                ns,
            }
        })
        .collect();
    Topology {
        pods: Vec::new(),
        nodes,
        _router: router,
        _fabric: fabric,
    }
}

impl Topology {
    /// A pod on node `id` at <pod range>.5, with the MTU the agent gives pods in auto mode.
    fn add_pod(&mut self, id: u8) -> usize {
        let node = &self.nodes[usize::from(id) - 1];
        let ip = Ipv4Addr::new(198, 18, 90 + id, 5);
        let ns = NetNs::new("brpod").expect("pod namespace");
        let holder = ns.hold();
        let host_veth = podnet::host_veth_name(ns.name()).expect("veth name");
        let network = podnet::setup(&podnet::PodNetSpec {
            pid: holder.id(),
            pod_ip: ip,
            host_veth: &host_veth,
            host_netns: Some(node.ns.name()),
            mtu: Some(RoutingMode::Auto.pod_mtu(1500)),
        })
        .expect("pod wiring");
        self.pods.push(Pod {
            ip,
            network,
            _holder: holder,
            ns,
        });
        self.pods.len() - 1
    }
}

/// A TCP server in `pod` that sends back everything it reads, one connection at a time.
fn echo_server(pod: &Pod) {
    let addr = SocketAddrV4::new(pod.ip, PORT);
    let listener = pod
        .ns
        .run(move || TcpListener::bind(addr))
        .expect("listening in the pod");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let Ok(mut reader) = stream.try_clone() else {
                continue;
            };
            let mut writer = stream;
            let _ = std::io::copy(&mut reader, &mut writer);
            let _ = writer.shutdown(Shutdown::Write);
        }
    });
}

/// Sends `BULK` bytes from namespace `client` to the echo server at `server` and reads
/// them back.
fn bulk_echo(client: &NetNs, server: Ipv4Addr) -> Result<(), String> {
    let data: Vec<u8> = (0..BULK).map(|i| (i % 251) as u8).collect();
    let target = SocketAddrV4::new(server, PORT);
    let stream = client
        .run(move || TcpStream::connect_timeout(&target.into(), Duration::from_secs(3)))
        .map_err(|error| format!("connect {target}: {error}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|error| error.to_string())?;
    let mut writer = stream.try_clone().map_err(|error| error.to_string())?;
    let sent = data.clone();
    let sending = std::thread::spawn(move || {
        writer.write_all(&sent)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut back = Vec::with_capacity(BULK);
    let mut stream = stream;
    stream.read_to_end(&mut back).map_err(|error| {
        format!(
            "reading back from {target} after {} bytes: {error}",
            back.len()
        )
    })?;
    sending
        .join()
        .map_err(|_| "the sender panicked".to_owned())?
        .map_err(|error| format!("sending to {target}: {error}"))?;
    if back != data {
        return Err(format!(
            "{target} sent back {} bytes that differ from the {} sent",
            back.len(),
            data.len()
        ));
    }
    Ok(())
}

#[test]
fn pods_reach_pods_natively_on_a_shared_link_and_through_the_tunnel_elsewhere() {
    let mut topology = topology();
    let routes: Vec<NodeRoute> = topology.nodes.iter().map(|node| node.route).collect();
    for node in &topology.nodes {
        let done = node.route(&routes);
        assert!(
            done.changed_anything() && done.foreign.is_empty(),
            "{done:?}"
        );
    }
    let shown = topology.nodes[0]
        .ns
        .ip(&["route", "show", "proto", "190"])
        .expect("routes");
    assert!(
        shown.contains("198.18.92.0/24 via 198.18.80.2 dev eth0")
            && shown.contains("198.18.93.0/24 via 198.18.80.254 dev eth0")
            && shown.contains("mtu 1480"),
        "node 1's routes: {shown}"
    );
    assert_eq!(
        shown.matches("mtu 1480").count(),
        1,
        "only the tunnelled route leaves room for IPIP: {shown}"
    );

    let [one, two, three] = [1, 2, 3].map(|id| topology.add_pod(id));
    for pod in [two, three, one] {
        echo_server(&topology.pods[pod]);
    }
    let encapsulated = topology.nodes[0].reason(Reason::PodEncapsulated);
    let pods = &topology.pods;
    bulk_echo(&pods[one].ns, pods[two].ip).expect("node 1 to node 2, native");
    assert_eq!(
        topology.nodes[0].reason(Reason::PodEncapsulated),
        encapsulated,
        "nothing to node 2 was encapsulated"
    );
    bulk_echo(&pods[one].ns, pods[three].ip).expect("node 1 to node 3, through the tunnel");
    bulk_echo(&pods[three].ns, pods[one].ip).expect("node 3 to node 1, through the tunnel");
    bulk_echo(&pods[three].ns, pods[two].ip).expect("node 3 to node 2, through the tunnel");
    bulk_echo(&topology.nodes[0].ns, pods[three].ip)
        .expect("node 1 itself to node 3's pod, through the tunnel");
    assert!(topology.nodes[0].reason(Reason::PodEncapsulated) > encapsulated);
    assert!(topology.nodes[2].reason(Reason::PodDecapsulated) > 0);
    assert_eq!(topology.nodes[2].reason(Reason::DropTunnelSource), 0);

    // Again with the same nodes: nothing to do.
    let again = topology.nodes[0].route(&routes);
    assert!(!again.changed_anything(), "{again:?}");

    // Node 2 changes address: node 1's route to its pods follows.
    let node2 = &topology.nodes[1];
    node2
        .ns
        .ip(&["addr", "add", "198.18.80.22/24", "dev", "eth0"])
        .expect("node 2's new address");
    let mut moved = routes.clone();
    moved[1].addr = Ipv4Addr::new(198, 18, 80, 22);
    let done = topology.nodes[0].route(&moved);
    assert_eq!(
        (done.routes_written, done.ranges_written),
        (1, 1),
        "{done:?}"
    );
    let shown = topology.nodes[0]
        .ns
        .ip(&["route", "show", "proto", "190"])
        .expect("routes");
    assert!(
        shown.contains("198.18.92.0/24 via 198.18.80.22 dev eth0"),
        "node 1's routes: {shown}"
    );
    bulk_echo(&pods[one].ns, pods[two].ip).expect("node 1 to node 2 at its new address");

    // A route someone else made to a pod range is left alone; node 2 leaves: its route
    // and range go, the tunnel to node 3 stays.
    let node1 = &topology.nodes[0];
    node1
        .ns
        .ip(&["route", "add", "198.18.99.0/24", "via", "198.18.80.2"])
        .expect("someone else's route");
    let foreign = NodeRoute {
        addr: Ipv4Addr::new(198, 18, 80, 9),
        pod_cidr: "198.18.99.0/24".parse().expect("cidr"),
    };
    let done = node1.route(&[moved[0], moved[2], foreign]);
    assert_eq!(done.foreign, [(Ipv4Addr::new(198, 18, 99, 0), 24)]);
    assert_eq!(
        (done.routes_removed, done.ranges_removed),
        (1, 1),
        "{done:?}"
    );
    let shown = node1.ns.ip(&["route", "show"]).expect("routes");
    let line = |range: &str| shown.lines().find(|line| line.starts_with(range));
    assert_eq!(line("198.18.92.0/24"), None, "node 1's routes: {shown}");
    assert!(
        line("198.18.93.0/24").is_some_and(|line| line.contains("proto 190")),
        "node 1's routes: {shown}"
    );
    assert!(
        line("198.18.99.0/24").is_some_and(|line| !line.contains("proto")),
        "node 1's routes: {shown}"
    );
    bulk_echo(&pods[one].ns, pods[three].ip).expect("the tunnel to node 3 after node 2 left");
}
