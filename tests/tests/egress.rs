//! Pods reaching the world outside the cluster: the real control plane and agent in a
//! node namespace whose only way out is a link to an "outside" namespace, which holds a
//! DNS server for `example.com` (the agent's `--dns-upstream`) and an HTTP server, and no
//! route back to the pods. A pod resolves `www.example.com` through the node's DNS, and
//! its request reaches the HTTP server from the node's address (masqueraded by the
//! datapath) and its answer finds the way back; cluster names still resolve; and a pod
//! reaches itself through its own Service (hairpin, set up at connect()), and the node
//! itself reaches the Service's ClusterIP. Needs root,
//! BPF, Docker and the images from `cargo xtask images`.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    sync::Arc,
    time::Duration,
};

use berth_testkit::netns::NetNs;
use berth_tests::process::{NODE_ADDR, OutsideServer, PodShell, Setup, web_manifest};
use hickory_proto::rr::{LowerName, Name, RData, Record, rdata::A};
use hickory_server::{
    ServerFuture,
    authority::{Catalog, ZoneType},
    store::in_memory::InMemoryAuthority,
};

const VIP: &str = "198.18.200.10";
/// The outside namespace's end of the node's link.
const OUTSIDE_ROUTER: &str = "198.18.0.2";
const WEB: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const DNS: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 53);

#[tokio::test(flavor = "multi_thread")]
async fn pods_reach_the_outside_and_themselves_and_the_node_reaches_cluster_ips() {
    let setup = Setup::new("egr");
    let outside = NetNs::new("begout").expect("outside namespace");
    setup.link_out(&outside, OUTSIDE_ROUTER);
    for addr in [WEB, DNS] {
        outside
            .ip(&["addr", "add", &format!("{addr}/32"), "dev", "lo"])
            .expect("outside address");
    }
    setup.run(|setup| run(setup, &outside)).await;
}

/// An authoritative server for `example.com.` in the outside namespace, on port 53.
fn upstream(outside: &NetNs) -> ServerFuture<Catalog> {
    let origin = Name::from_ascii("example.com.").expect("name");
    let mut zone = InMemoryAuthority::empty(origin.clone(), ZoneType::Primary, false);
    zone.upsert_mut(
        Record::from_rdata(
            Name::from_ascii("www.example.com.").expect("name"),
            300,
            RData::A(A(WEB)),
        ),
        1,
    );
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&origin), vec![Arc::new(zone)]);
    let (udp, tcp) = outside.run(|| {
        let udp = std::net::UdpSocket::bind((DNS, 53)).expect("bind DNS");
        let tcp = TcpListener::bind((DNS, 53)).expect("bind DNS TCP");
        udp.set_nonblocking(true).expect("nonblocking");
        tcp.set_nonblocking(true).expect("nonblocking");
        (udp, tcp)
    });
    let mut server = ServerFuture::new(catalog);
    server.register_socket(tokio::net::UdpSocket::from_std(udp).expect("tokio UDP"));
    server.register_listener(
        tokio::net::TcpListener::from_std(tcp).expect("tokio TCP"),
        Duration::from_secs(5),
    );
    server
}

async fn run(setup: &Setup, outside: &NetNs) {
    let mut dns = upstream(outside);
    let web = OutsideServer::start(outside, WEB);
    let _control = setup.control_plane().await;
    let _agent = setup.agent_with(&["--dns-upstream", &DNS.to_string()]);

    setup.apply(&web_manifest(1, VIP, true));
    setup.wait_running(2).await;
    let client = PodShell::find(&setup.node, "client-").await;
    let lookup = client.run(&["nslookup", "www.example.com"]).await;
    assert!(
        lookup.output.contains(&WEB.to_string()),
        "www.example.com through the node's DNS and its upstream: {lookup:?}"
    );
    let fetched = client
        .run(&["wget", "-qO-", "http://www.example.com/"])
        .await;
    assert_eq!(
        (fetched.exit_code, fetched.output.trim()),
        (0, format!("client={NODE_ADDR}").as_str()),
        "the outside server answers a pod and sees the node's address: {fetched:?}"
    );
    let clients = web.clients.lock().expect("clients").clone();
    assert!(
        !clients.is_empty()
            && clients
                .iter()
                .all(|client| client.ip().to_string() == NODE_ADDR),
        "clients seen outside: {clients:?}"
    );
    let lookup = client
        .run(&["nslookup", "web.default.svc.cluster.local"])
        .await;
    assert!(
        lookup.output.contains(VIP),
        "cluster names still resolve: {lookup:?}"
    );
    // The pod reaches the service too: its ClusterIP is not masqueraded.
    let fetched = client
        .run(&["wget", "-qO-", "http://web.default.svc.cluster.local/"])
        .await;
    assert!(
        fetched.output.starts_with("pod=web-"),
        "the Service from the pod: {fetched:?}"
    );

    // Hairpin: the Service's only backend reaches itself through the Service. The socket
    // program connects it to its own address at connect(), so it sees itself as the
    // client (the per-packet path would show the hairpin address 169.254.42.1).
    let backend = PodShell::find(&setup.node, "web-").await;
    let fetched = backend
        .run(&["wget", "-qO-", &format!("http://{VIP}/")])
        .await;
    let web_ip = setup
        .running_pods()
        .into_iter()
        .find(|(name, _)| name.starts_with("web-"))
        .map(|(_, ip)| ip)
        .expect("the web pod");
    assert!(
        fetched.exit_code == 0
            && fetched.output.starts_with("pod=web-")
            && fetched
                .output
                .contains(&format!("addr={web_ip}:8080 client={web_ip}:")),
        "the web pod through its own Service: {fetched:?}"
    );

    // The node itself (a process in its network namespace) reaches the ClusterIP: the
    // socket program connects it to the backend.
    let target = SocketAddrV4::new(VIP.parse().expect("VIP"), 80);
    let reply = berth_tests::get(&setup.ns, target).expect("the ClusterIP from the node");
    assert!(
        reply.pod.starts_with("web-") && reply.addr == SocketAddr::from((web_ip, 8080)),
        "the ClusterIP from the node: {reply:?}"
    );
    drop(web);
    let _ = dns.shutdown_gracefully().await;
}
