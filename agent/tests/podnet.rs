//! Pod network wiring without Docker: two "pods" (a sleeping process in a namespace of its
//! own each) wired into one node namespace, with echo servers running inside them. Checks
//! node-to-pod and pod-to-pod traffic through the host veths, in a node namespace that has
//! no default route (so the pods' gateway must work without one). Needs root.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::Duration,
};

use berth_agent::{net, podnet};
use berth_echo::{EchoConfig, EchoServer, Reply};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const POD_A: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 10);
const POD_B: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 11);
const PORT: u16 = 8080;

fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test creates network namespaces: run it as root"
    );
}

fn unique(suffix: &str) -> String {
    format!("bt-{}-{suffix}", std::process::id())
}

struct NetnsGuard(String);

impl NetnsGuard {
    fn create(name: String) -> Self {
        net::netns_delete(&name).expect("remove a leftover namespace");
        net::netns_add(&name).expect("create a namespace");
        NetnsGuard(name)
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(error) = net::netns_delete(&self.0) {
            eprintln!("cleanup: deleting namespace {}: {error}", self.0);
        }
    }
}

/// A process holding a pod's namespace, as a container's init would.
struct PodProcess(Child);

impl PodProcess {
    fn start(netns: &str) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "sleep", "300"])
            .stdin(Stdio::null())
            .spawn()
            .expect("start a process in the pod namespace");
        let process = PodProcess(child);
        // `ip netns exec` enters the namespace, then execs sleep under the same pid.
        for _ in 0..100 {
            let theirs = std::fs::metadata(format!("/proc/{}/ns/net", process.0.id()));
            let wanted = std::fs::metadata(format!("/run/netns/{netns}"));
            if let (Ok(theirs), Ok(wanted)) = (theirs, wanted) {
                use std::os::unix::fs::MetadataExt as _;
                if theirs.ino() == wanted.ino() {
                    return process;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the pod process never entered {netns}");
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct PodNetGuard(podnet::PodNetwork);

impl Drop for PodNetGuard {
    fn drop(&mut self) {
        if let Err(error) = self.0.teardown() {
            eprintln!("cleanup: tearing down {}: {error}", self.0.host_veth);
        }
    }
}

struct Pod {
    server: EchoServer,
    network: PodNetGuard,
    _process: PodProcess,
    _netns: NetnsGuard,
}

fn start_pod(name: &str, ip: Ipv4Addr, node: &str) -> Pod {
    let netns = NetnsGuard::create(unique(name));
    let process = PodProcess::start(&netns.0);
    let host_veth =
        podnet::host_veth_name(&format!("{}{name}", std::process::id())).expect("a veth name");
    let network = PodNetGuard(
        podnet::setup(&podnet::PodNetSpec {
            pid: process.0.id(),
            pod_ip: ip,
            host_veth: &host_veth,
            host_netns: Some(node),
            mtu: None,
        })
        .unwrap_or_else(|error| panic!("wiring {name}: {error}")),
    );
    let server = net::in_netns(&network.0.pod_netns, || {
        EchoServer::bind(EchoConfig {
            bind: ip.into(),
            port: PORT,
            ..EchoConfig::loopback(name)
        })
    })
    .expect("enter the pod namespace")
    .expect("start the echo server in the pod");
    Pod {
        server,
        network,
        _process: process,
        _netns: netns,
    }
}

fn get_root(netns: &str, server: SocketAddr) -> Reply {
    let body = net::in_netns(netns, || {
        let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))
            .unwrap_or_else(|error| panic!("connecting to {server} from {netns}: {error}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set a read timeout");
        stream
            .write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .expect("send the request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        response
    })
    .expect("enter the namespace");
    let line = body
        .split_once("\r\n\r\n")
        .map(|(_, line)| line)
        .unwrap_or_default();
    Reply::parse(line).unwrap_or_else(|| panic!("not a reply: {body:?}"))
}

#[test]
fn pods_reach_each_other_and_the_node_through_their_veths() {
    require_root();
    let node = NetnsGuard::create(unique("pn-node"));
    net::link_up(Some(&node.0), "lo").expect("lo up");
    net::addr_add(Some(&node.0), "lo", &format!("{NODE_IP}/32")).expect("node address");

    let a = start_pod("pn-a", POD_A, &node.0);
    let b = start_pod("pn-b", POD_B, &node.0);
    assert_eq!(a.server.local_addr(), SocketAddr::from((POD_A, PORT)));

    // Node to pod: the host route over the pod's veth.
    let reply = get_root(&node.0, SocketAddr::from((POD_B, PORT)));
    assert_eq!(reply.pod, "pn-b");
    assert_eq!(reply.client.ip(), NODE_IP);

    // Pod to pod: out of A through its gateway, routed by the node, into B; and back.
    let reply = get_root(&a.network.0.pod_netns, SocketAddr::from((POD_B, PORT)));
    assert_eq!(reply.pod, "pn-b");
    assert_eq!(reply.addr, SocketAddr::from((POD_B, PORT)));
    assert_eq!(reply.client.ip(), POD_A, "no NAT between pods");

    // The pod's view: its /32, and the default route through the link-local gateway.
    let routes = net::ip(Some(&a.network.0.pod_netns), &["route", "show"]).expect("routes");
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "pod routes: {routes}"
    );
    // Proxy ARP on the host side answers for the gateway as well.
    let proxy_arp = net::ip(
        None,
        &[
            "netns",
            "exec",
            &node.0,
            "cat",
            &format!(
                "/proc/sys/net/ipv4/conf/{}/proxy_arp",
                b.network.0.host_veth
            ),
        ],
    )
    .expect("read proxy_arp");
    assert_eq!(proxy_arp.trim(), "1");

    // Wiring the same pod twice is refused without harming the first wiring.
    let again = podnet::setup(&podnet::PodNetSpec {
        pid: b._process.0.id(),
        pod_ip: POD_B,
        host_veth: &b.network.0.host_veth,
        host_netns: Some(&node.0),
        mtu: None,
    });
    assert!(matches!(
        again,
        Err(podnet::PodNetError::AlreadyWired { .. })
    ));
    assert_eq!(
        get_root(&node.0, SocketAddr::from((POD_B, PORT))).pod,
        "pn-b"
    );
}
