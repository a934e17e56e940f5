//! A cluster on one machine for multi-node tests and benchmarks.
//!
//! Every node is a network namespace whose `eth0` is plugged into a bridge in a fabric
//! namespace (the underlay, 198.18.0.0/24, node N at 198.18.0.N); node N's pods get
//! 198.18.N.0/24 and are wired by the agent's own pod networking (`podnet`), and the
//! nodes route each other's pod ranges with the agent's own routing (`routing`). An
//! external client namespace sits on the same underlay at 198.18.0.100. Each node runs its
//! own datapath (maps pinned under a bpffs directory of the test), with the TC programs on
//! its pods' host veths and the XDP program on its `eth0`. Everything is removed when the
//! [`Cluster`] drops, also when a test fails.

pub mod e2e;
pub mod process;

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::Path,
    time::Duration,
};

use berth_agent::{
    datapath::{Datapath, DatapathError, DatapathOptions, Limits, Node, XdpMode},
    podnet,
    routing::{self, KernelUnderlay, NodeRoute, RoutingMode},
};
use berth_echo::{EchoConfig, EchoServer, Reply};
use berth_testkit::{
    PinDir,
    netns::{ChildGuard, NetNs},
};

/// Where the external client sits on the underlay.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// The port every echo backend listens on.
pub const BACKEND_PORT: u16 = 8080;

pub fn node_addr(node_id: u32) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, node_id as u8)
}

pub fn pod_addr(node_id: u32, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, node_id as u8, host)
}

/// Small maps: many test clusters run side by side.
pub fn test_limits() -> Limits {
    Limits {
        max_services: 64,
        max_backends: 1024,
        max_connections: 16_384,
        max_affinity: 1024,
        max_nodes: 16,
        maglev_min_table: 1021,
        maglev_pool_slots: 1 << 16,
    }
}

pub struct SimPod {
    pub name: String,
    pub node_id: u32,
    pub ip: Ipv4Addr,
    pub host_veth: String,
    /// The echo server answering on `ip:BACKEND_PORT`, if the pod is a backend.
    pub server: Option<EchoServer>,
    // Drop order: server, wiring, holder process, namespace.
    network: podnet::PodNetwork,
    _holder: ChildGuard,
    pub ns: NetNs,
}

impl Drop for SimPod {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
        if let Err(error) = self.network.teardown() {
            eprintln!("cleanup: pod {}: {error}", self.name);
        }
    }
}

pub struct SimNode {
    pub id: u32,
    pub addr: Ipv4Addr,
    /// Map sizes of the node's datapath: [`test_limits`] unless changed before
    /// [`SimNode::open_datapath`] (benchmarks program 10,000 services).
    pub limits: Limits,
    pub datapath: Option<Datapath>,
    pub pins: PinDir,
    pub ns: NetNs,
}

impl SimNode {
    pub fn as_datapath_node(&self) -> Node {
        Node {
            id: self.id,
            addr: self.addr,
        }
    }

    fn options(&self) -> DatapathOptions {
        DatapathOptions {
            pin_dir: self.pins.path().to_path_buf(),
            node_id: self.id,
            node_addr: self.addr,
            limits: self.limits,
        }
    }

    /// Opens the datapath (again, after [`SimNode::close_datapath`]): the programs are
    /// reloaded, the pinned maps reused and the pinned links' programs replaced.
    pub fn open_datapath(&mut self, pod_veths: &[(String, Ipv4Addr)]) {
        let options = self.options();
        let veths = pod_veths.to_vec();
        let datapath = self.ns.run(move || {
            let mut datapath = Datapath::open(options).expect("opening the datapath");
            for (veth, pod_ip) in &veths {
                datapath
                    .attach_pod_interface(veth, *pod_ip)
                    .unwrap_or_else(|error| panic!("attaching to {veth}: {error}"));
            }
            // Generic mode: in native mode on a veth, XDP_TX frames only reach the peer
            // when the peer runs an XDP program itself; the test fabric's bridge ports
            // don't. Real NICs take native mode.
            datapath
                .attach_external_interface("eth0", XdpMode::Generic)
                .expect("attaching XDP to eth0");
            datapath
        });
        self.datapath = Some(datapath);
    }

    /// Drops the datapath handle, as an agent that exits would; pinned maps and links
    /// keep the programs running.
    pub fn close_datapath(&mut self) {
        self.datapath = None;
    }

    pub fn datapath(&mut self) -> &mut Datapath {
        self.datapath.as_mut().expect("the node's datapath is open")
    }

    /// Registers pods (network namespace name under /run/netns, host-side veth, address)
    /// with the node's socket program and attaches it to the cgroup v2 directory
    /// `cgroup`, as the agent does on the hierarchy's root: TCP connects to a ClusterIP
    /// from those pods' processes in that cgroup go straight to a backend.
    pub fn balance_pod_sockets(
        &mut self,
        pods: &[(String, String, Ipv4Addr)],
        cgroup: &Path,
    ) -> Result<(), DatapathError> {
        let datapath = self.datapath.as_mut().expect("the node's datapath is open");
        // The veths' indexes are the node namespace's.
        self.ns.run(move || {
            for (netns, veth, addr) in pods {
                datapath.register_pod_sockets(&Path::new("/run/netns").join(netns), veth, *addr)?;
            }
            datapath.attach_node_sockets(cgroup)
        })
    }
}

pub struct Cluster {
    // Fields drop in order: pods, then nodes (datapath, pins), then the client and fabric.
    pub pods: Vec<SimPod>,
    pub nodes: Vec<SimNode>,
    pub client: NetNs,
    pub fabric: NetNs,
}

impl Cluster {
    /// Builds the underlay, `nodes` nodes (ids 1..=nodes) and the external client.
    pub fn new(nodes: u32) -> Cluster {
        let fabric = NetNs::new("bfab").expect("fabric namespace");
        fabric
            .ip(&["link", "add", "br0", "type", "bridge"])
            .expect("bridge");
        fabric.ip(&["link", "set", "br0", "up"]).expect("bridge up");
        let client = NetNs::new("bcli").expect("client namespace");
        plug(&fabric, &client, "cl", CLIENT_ADDR);
        full_checksums(&client);
        let mut cluster = Cluster {
            pods: Vec::new(),
            nodes: Vec::new(),
            client,
            fabric,
        };
        for id in 1..=nodes {
            let ns = NetNs::new(&format!("bn{id}")).expect("node namespace");
            node_sysctls(&ns);
            plug(&cluster.fabric, &ns, &format!("n{id}"), node_addr(id));
            let pins = PinDir::new(&format!("n{id}"));
            cluster.nodes.push(SimNode {
                id,
                addr: node_addr(id),
                limits: test_limits(),
                datapath: None,
                pins,
                ns,
            });
        }
        cluster
    }

    pub fn node(&mut self, id: u32) -> &mut SimNode {
        self.nodes
            .iter_mut()
            .find(|node| node.id == id)
            .expect("no such node")
    }

    pub fn datapath_nodes(&self) -> Vec<Node> {
        self.nodes.iter().map(SimNode::as_datapath_node).collect()
    }

    /// Adds a pod on `node_id` at 198.18.<node>.<host>; with `serve`, an echo server
    /// named after the pod answers on port 8080.
    pub fn add_pod(&mut self, node_id: u32, host: u8, name: &str, serve: bool) -> usize {
        let ip = pod_addr(node_id, host);
        let ns = NetNs::new("bpod").expect("pod namespace");
        let holder = ns.hold();
        let host_veth = podnet::host_veth_name(ns.name()).expect("veth name");
        let node_ns = self.node(node_id).ns.name().to_owned();
        let network = podnet::setup(&podnet::PodNetSpec {
            pid: holder.id(),
            pod_ip: ip,
            host_veth: &host_veth,
            host_netns: Some(&node_ns),
            mtu: None,
        })
        .unwrap_or_else(|error| panic!("wiring pod {name}: {error}"));
        let server = serve.then(|| {
            let config = EchoConfig {
                bind: ip.into(),
                port: BACKEND_PORT,
                ..EchoConfig::loopback(name)
            };
            ns.run(move || EchoServer::bind(config))
                .unwrap_or_else(|error| panic!("echo server in {name}: {error}"))
        });
        self.pods.push(SimPod {
            name: name.to_owned(),
            node_id,
            ip,
            host_veth,
            server,
            network,
            _holder: holder,
            ns,
        });
        self.pods.len() - 1
    }

    /// Host veths of the pods on a node, with the pods' addresses.
    pub fn pod_veths(&self, node_id: u32) -> Vec<(String, Ipv4Addr)> {
        self.pods
            .iter()
            .filter(|pod| pod.node_id == node_id)
            .map(|pod| (pod.host_veth.clone(), pod.ip))
            .collect()
    }

    /// Opens every node's datapath, routes the other nodes' pod ranges and makes each
    /// node's neighbour entries for the other nodes valid, as the agent does, so XDP can
    /// forward to them at once.
    pub fn start_datapaths(&mut self) {
        let ids: Vec<u32> = self.nodes.iter().map(|node| node.id).collect();
        let peers: Vec<Ipv4Addr> = self.nodes.iter().map(|node| node.addr).collect();
        for id in ids {
            let veths = self.pod_veths(id);
            let node = self.node(id);
            node.open_datapath(&veths);
            let addr = node.addr;
            let others: Vec<Ipv4Addr> = peers.iter().copied().filter(|p| *p != addr).collect();
            node.ns.run(move || {
                berth_agent::datapath::resolve_neighbours(&others)
                    .expect("resolving the other nodes' neighbour entries")
            });
        }
        self.route_pods();
    }

    /// Routes every other node's pod range on each node with the agent's routing (all
    /// nodes share the underlay link: native routes).
    pub fn route_pods(&mut self) {
        let routes: Vec<NodeRoute> = self
            .nodes
            .iter()
            .map(|node| NodeRoute {
                addr: node.addr,
                pod_cidr: format!("198.18.{}.0/24", node.id)
                    .parse()
                    .expect("pod range"),
            })
            .collect();
        for (node, own) in self.nodes.iter_mut().zip(&routes) {
            let underlay = KernelUnderlay::read(Some(node.ns.name())).expect("node addresses");
            let plan = routing::plan(own, &routes, RoutingMode::Auto, &underlay);
            let datapath = std::sync::Mutex::new(node.datapath.take().expect("an open datapath"));
            routing::reconcile(Some(node.ns.name()), &plan, &datapath).expect("pod routes");
            node.datapath = Some(datapath.into_inner().unwrap_or_else(|p| p.into_inner()));
        }
    }

    pub fn pod(&self, name: &str) -> &SimPod {
        self.pods
            .iter()
            .find(|pod| pod.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }
}

/// A node forwards between its pods and the underlay, and accepts replies that return by
/// another path than the request left.
pub fn node_sysctls(ns: &NetNs) {
    for (key, value) in [
        ("net/ipv4/ip_forward", "1"),
        ("net/ipv4/conf/all/rp_filter", "0"),
        ("net/ipv4/conf/default/rp_filter", "0"),
        ("net/ipv4/conf/all/send_redirects", "0"),
        ("net/ipv4/conf/default/send_redirects", "0"),
    ] {
        ns.sysctl(key, value);
    }
}

/// An outside client's kernel would leave TCP/UDP checksums to "hardware" (the veth), and
/// the packet would reach XDP with a partial checksum; a real NIC delivers full ones.
pub fn full_checksums(client: &NetNs) {
    let offload = client.exec("ethtool", &["-K", "eth0", "tx", "off"]);
    assert!(
        offload.status.success(),
        "ethtool -K eth0 tx off: {}",
        String::from_utf8_lossy(&offload.stderr)
    );
}

/// Plugs `ns` into the fabric bridge: `eth0` in `ns` with `addr`/24, `port` on the bridge.
pub fn plug(fabric: &NetNs, ns: &NetNs, port: &str, addr: Ipv4Addr) {
    plug_into(fabric, "br0", ns, port, "eth0", addr);
}

/// Plugs `ns` into the fabric's `bridge`: `interface` in `ns` with `addr`/24, `port` on
/// the bridge.
pub fn plug_into(
    fabric: &NetNs,
    bridge: &str,
    ns: &NetNs,
    port: &str,
    interface: &str,
    addr: Ipv4Addr,
) {
    berth_net::veth_add_peer_in(Some(fabric.name()), port, interface, ns.name())
        .expect("underlay veth");
    fabric
        .ip(&["link", "set", port, "master", bridge])
        .expect("bridge port");
    fabric.ip(&["link", "set", port, "up"]).expect("port up");
    berth_net::addr_add(Some(ns.name()), interface, &format!("{addr}/24")).expect("address");
    berth_net::link_up(Some(ns.name()), interface).expect("link up");
}

/// One HTTP GET / on a new connection from inside `ns`; the echo server's answer.
pub fn get(ns: &NetNs, target: SocketAddrV4) -> Result<Reply, String> {
    ns.run(move || get_here(target))
}

pub use berth_echo::http_get as get_here;

/// An HTTP/1.1 keep-alive connection to an echo server: requests reuse one TCP flow.
pub struct KeepAlive {
    stream: TcpStream,
}

impl KeepAlive {
    /// Connects from the current thread's namespace.
    pub fn connect(target: SocketAddrV4) -> Result<KeepAlive, String> {
        let stream = TcpStream::connect_timeout(&SocketAddr::V4(target), Duration::from_secs(2))
            .map_err(|error| format!("connect {target}: {error}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|error| error.to_string())?;
        Ok(KeepAlive { stream })
    }

    /// One GET / on this connection.
    pub fn get(&mut self) -> Result<Reply, std::io::Error> {
        self.stream
            .write_all(b"GET / HTTP/1.1\r\nHost: berth\r\n\r\n")?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if self.stream.read(&mut byte)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .ok_or_else(|| std::io::Error::other(format!("no Content-Length in {head:?}")))?;
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body)?;
        let body = String::from_utf8_lossy(&body);
        Reply::parse(body.trim())
            .ok_or_else(|| std::io::Error::other(format!("not an echo reply: {body:?}")))
    }
}

/// One request of a [`Load`]: when it was sent, how long it took, and which pod answered
/// (None: it failed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub at: std::time::Instant,
    pub took: Duration,
    pub pod: Option<String>,
}

/// HTTP requests on new connections in a loop from a named namespace until finished;
/// counts answers and failures, and keeps every request's [`Sample`] (benchmarks read the
/// timeline: when a backend stopped answering, when it came back).
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    failed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    samples: std::sync::Arc<std::sync::Mutex<Vec<Sample>>>,
    errors: std::thread::JoinHandle<Vec<String>>,
}

impl Load {
    /// As fast as answers come.
    pub fn start(netns: &str, target: SocketAddrV4) -> Load {
        Load::paced(netns, target, Duration::ZERO)
    }

    /// One request every `interval` at most (a steady rate).
    pub fn paced(netns: &str, target: SocketAddrV4, interval: Duration) -> Load {
        use std::sync::{
            Arc, Mutex,
            atomic::{AtomicBool, AtomicU64, Ordering},
        };
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, o, f, ns) = (stop.clone(), ok.clone(), failed.clone(), netns.to_owned());
        let timeline = samples.clone();
        let errors = std::thread::spawn(move || {
            berth_net::enter_netns(&ns).unwrap_or_else(|error| panic!("{error}"));
            let mut errors = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let started = std::time::Instant::now();
                let pod = match get_here(target) {
                    Ok(reply) => {
                        o.fetch_add(1, Ordering::Relaxed);
                        Some(reply.pod)
                    }
                    Err(error) => {
                        // Wall-clock time, to find the moment in the processes' logs.
                        let at = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default();
                        errors.push(format!("at unix time {:.3} s: {error}", at.as_secs_f64()));
                        f.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                };
                let sample = Sample {
                    at: started,
                    took: started.elapsed(),
                    pod,
                };
                timeline
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(sample);
                std::thread::sleep(interval.saturating_sub(started.elapsed()));
            }
            errors
        });
        Load {
            stop,
            ok,
            failed,
            samples,
            errors,
        }
    }

    /// Reads the requests so far, oldest first, while the load goes on.
    pub fn with_samples<R>(&self, read: impl FnOnce(&[Sample]) -> R) -> R {
        read(
            &self
                .samples
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Stops the loop: (answered, failed, the failures' messages).
    pub fn finish(self) -> (u64, u64, Vec<String>) {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        let errors = self
            .errors
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}
