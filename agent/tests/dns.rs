//! The node's DNS server over real UDP and TCP on loopback (one server per test, on
//! ephemeral ports): cluster names, negative answers
//! with the SOA, PTR, headless and SRV records, truncation, and forwarding (with its cache)
//! to an upstream server the test runs on another loopback address.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use berth_agent::dns::{DnsServer, Records};
use berth_api::{
    core::{
        EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service, ServicePort, ServiceSpec,
    },
    meta::ObjectMeta,
};
use hickory_proto::{
    op::{Edns, Message, MessageType, Query, ResponseCode},
    rr::{
        LowerName, Name, RData, Record, RecordType,
        rdata::{A, PTR},
    },
};
use hickory_server::{
    ServerFuture,
    authority::{Catalog, ZoneType},
    store::in_memory::InMemoryAuthority,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
};

const TIMEOUT: Duration = Duration::from_secs(5);
/// Endpoints of the big headless service: their A records are more than 512 bytes.
const MANY: u8 = 40;

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: name.into(),
        namespace: "default".into(),
        ..ObjectMeta::default()
    }
}

fn service(name: &str, cluster_ip: &str) -> Service {
    Service {
        metadata: meta(name),
        spec: ServiceSpec {
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                target_port: None,
                node_port: None,
                protocol: "TCP".into(),
            }],
            cluster_ip: cluster_ip.into(),
            ..ServiceSpec::default()
        },
        ..Service::default()
    }
}

fn endpoints(name: &str, ips: &[Ipv4Addr]) -> Endpoints {
    Endpoints {
        metadata: meta(name),
        subsets: vec![EndpointSubset {
            addresses: ips
                .iter()
                .map(|ip| EndpointAddress {
                    ip: ip.to_string(),
                    ..EndpointAddress::default()
                })
                .collect(),
            ports: vec![EndpointPort {
                name: "http".into(),
                port: 8080,
                protocol: "TCP".into(),
            }],
            ..EndpointSubset::default()
        }],
        ..Endpoints::default()
    }
}

/// Endpoints of pods with hostnames under the Service (a StatefulSet's pods).
fn stateful_endpoints(name: &str, pods: &[(Ipv4Addr, &str)]) -> Endpoints {
    let mut endpoints = endpoints(name, &pods.iter().map(|(ip, _)| *ip).collect::<Vec<_>>());
    for (address, (_, hostname)) in endpoints.subsets[0].addresses.iter_mut().zip(pods) {
        address.hostname = (*hostname).to_owned();
    }
    endpoints
}

fn records() -> Records {
    let many: Vec<Ipv4Addr> = (1..=MANY).map(|n| Ipv4Addr::new(198, 18, 2, n)).collect();
    Records::build(
        &[
            service("web", "198.19.0.10"),
            service("db", "None"),
            service("big", "None"),
            service("nginx", "None"),
        ],
        &[
            endpoints("web", &[Ipv4Addr::new(198, 18, 1, 7)]),
            endpoints("db", &[Ipv4Addr::new(198, 18, 1, 5)]),
            endpoints("big", &many),
            stateful_endpoints(
                "nginx",
                &[
                    (Ipv4Addr::new(198, 18, 1, 20), "web-0"),
                    (Ipv4Addr::new(198, 18, 1, 21), "web-1"),
                ],
            ),
        ],
        "cluster.local",
    )
}

/// An upstream server for `example.com.` and one reverse name, on 127.0.0.2.
async fn upstream() -> (SocketAddr, ServerFuture<Catalog>) {
    let origin = Name::from_ascii("example.com.").expect("name");
    let mut zone = InMemoryAuthority::empty(origin.clone(), ZoneType::Primary, false);
    zone.upsert_mut(
        Record::from_rdata(
            Name::from_ascii("www.example.com.").expect("name"),
            300,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 80))),
        ),
        1,
    );
    let reverse_origin = Name::from_ascii("2.0.192.in-addr.arpa.").expect("name");
    let mut reverse = InMemoryAuthority::empty(reverse_origin.clone(), ZoneType::Primary, false);
    reverse.upsert_mut(
        Record::from_rdata(
            Name::from_ascii("80.2.0.192.in-addr.arpa.").expect("name"),
            300,
            RData::PTR(PTR(Name::from_ascii("www.example.com.").expect("name"))),
        ),
        1,
    );
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&origin), vec![Arc::new(zone)]);
    catalog.upsert(LowerName::new(&reverse_origin), vec![Arc::new(reverse)]);
    let udp = UdpSocket::bind("127.0.0.2:0").await.expect("bind upstream");
    let addr = udp.local_addr().expect("addr");
    let tcp = TcpListener::bind(addr).await.expect("bind upstream TCP");
    let mut server = ServerFuture::new(catalog);
    server.register_socket(udp);
    server.register_listener(tcp, TIMEOUT);
    (addr, server)
}

async fn cluster_dns(upstreams: &[SocketAddr]) -> DnsServer {
    let server = DnsServer::start(
        "127.0.0.1:0".parse().expect("addr"),
        "cluster.local",
        upstreams,
    )
    .await
    .expect("start");
    server.update(records());
    server
}

fn query(name: &str, kind: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut query = Message::new();
    query
        .set_id(7)
        .set_message_type(MessageType::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).expect("name"), kind));
    if let Some(size) = edns {
        let mut edns = Edns::new();
        edns.set_max_payload(size);
        query.set_edns(edns);
    }
    query.to_vec().expect("encode")
}

async fn ask_udp_raw(server: SocketAddr, bytes: &[u8]) -> Option<(usize, Message)> {
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    client.send_to(bytes, server).await.expect("send");
    let mut buffer = [0u8; 65535];
    let (len, _) = tokio::time::timeout(TIMEOUT, client.recv_from(&mut buffer))
        .await
        .ok()?
        .expect("recv");
    Some((len, Message::from_vec(&buffer[..len]).expect("decode")))
}

async fn ask_udp(server: SocketAddr, name: &str, kind: RecordType) -> Message {
    ask_udp_raw(server, &query(name, kind, None))
        .await
        .expect("a reply in time")
        .1
}

async fn ask_tcp(server: SocketAddr, name: &str, kind: RecordType) -> Message {
    let bytes = query(name, kind, None);
    let mut stream = TcpStream::connect(server).await.expect("connect");
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).await.expect("send");
    let mut len = [0u8; 2];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut len))
        .await
        .expect("a reply in time")
        .expect("length");
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).await.expect("reply");
    Message::from_vec(&reply).expect("decode")
}

/// Both transports must give the same answer.
async fn ask(server: SocketAddr, name: &str, kind: RecordType) -> Message {
    let udp = ask_udp(server, name, kind).await;
    let tcp = ask_tcp(server, name, kind).await;
    assert_eq!(
        (udp.response_code(), data(&udp)),
        (tcp.response_code(), data(&tcp)),
        "UDP and TCP disagree on {name} {kind}"
    );
    udp
}

fn data(reply: &Message) -> Vec<String> {
    let mut answers: Vec<String> = reply
        .answers()
        .iter()
        .map(|r| r.data().to_string())
        .collect();
    answers.sort();
    answers
}

/// The A records' addresses for `name`, asked over UDP and over TCP.
async fn addresses(dns: &DnsServer, name: &str) -> Vec<String> {
    data(&ask(dns.local_addr(), name, RecordType::A).await)
}

/// The one SRV record of an answer: its port and target.
fn only_srv(reply: &Message) -> (u16, String) {
    let [record] = reply.answers() else {
        panic!("one SRV record: {reply:?}");
    };
    let RData::SRV(srv) = record.data() else {
        panic!("not SRV: {record:?}");
    };
    (srv.port(), srv.target().to_ascii())
}

#[tokio::test]
async fn a_records_for_services() {
    let dns = cluster_dns(&[]).await;
    let reply = ask(
        dns.local_addr(),
        "web.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(reply.id(), 7);
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert!(reply.authoritative());
    assert_eq!(data(&reply), ["198.19.0.10"]);
    // Names are case-insensitive.
    assert_eq!(
        addresses(&dns, "WEB.default.svc.cluster.local.").await,
        ["198.19.0.10"]
    );
}

#[tokio::test]
async fn headless_services_answer_with_ready_endpoints() {
    let dns = cluster_dns(&[]).await;
    assert_eq!(
        addresses(&dns, "db.default.svc.cluster.local.").await,
        ["198.18.1.5"]
    );
    // Each endpoint has a name of its own.
    assert_eq!(
        addresses(&dns, "198-18-1-5.db.default.svc.cluster.local.").await,
        ["198.18.1.5"]
    );
}

#[tokio::test]
async fn srv_records_for_named_ports() {
    let dns = cluster_dns(&[]).await;
    let reply = ask(
        dns.local_addr(),
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(
        only_srv(&reply),
        (80, "web.default.svc.cluster.local.".to_owned())
    );
    // Headless: one per endpoint, with the endpoint's port.
    let reply = ask(
        dns.local_addr(),
        "_http._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(
        only_srv(&reply),
        (8080, "198-18-1-5.db.default.svc.cluster.local.".to_owned())
    );
}

#[tokio::test]
async fn negative_answers_carry_the_soa() {
    let dns = cluster_dns(&[]).await;
    let reply = ask(
        dns.local_addr(),
        "nope.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(reply.response_code(), ResponseCode::NXDomain);
    assert!(reply.authoritative());
    let soa = |reply: &Message| {
        reply
            .name_servers()
            .iter()
            .any(|r| r.record_type() == RecordType::SOA && r.name().to_ascii() == "cluster.local.")
    };
    assert!(soa(&reply), "SOA in the authority section: {reply:?}");
    // The name exists, not with that type (IPv4 only): NODATA.
    let reply = ask(
        dns.local_addr(),
        "web.default.svc.cluster.local.",
        RecordType::AAAA,
    )
    .await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert!(reply.answers().is_empty());
    assert!(soa(&reply), "SOA in the authority section: {reply:?}");
}

#[tokio::test]
async fn pods_with_hostnames_answer_by_them() {
    let dns = cluster_dns(&[]).await;
    assert_eq!(
        addresses(&dns, "web-1.nginx.default.svc.cluster.local.").await,
        ["198.18.1.21"]
    );
    assert_eq!(
        addresses(&dns, "web-0.nginx.default.svc.cluster.local.").await,
        ["198.18.1.20"]
    );
    let mut all = addresses(&dns, "nginx.default.svc.cluster.local.").await;
    all.sort();
    assert_eq!(all, ["198.18.1.20", "198.18.1.21"]);
    let reply = ask(
        dns.local_addr(),
        "20.1.18.198.in-addr.arpa.",
        RecordType::PTR,
    )
    .await;
    assert_eq!(data(&reply), ["web-0.nginx.default.svc.cluster.local."]);
    let reply = ask(
        dns.local_addr(),
        "_http._tcp.nginx.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    let mut targets: Vec<String> = data(&reply);
    targets.sort();
    assert!(
        targets[0].ends_with("web-0.nginx.default.svc.cluster.local."),
        "{targets:?}"
    );
}

#[tokio::test]
async fn ptr_for_service_and_pod_addresses() {
    let dns = cluster_dns(&[]).await;
    let reply = ask(
        dns.local_addr(),
        "10.0.19.198.in-addr.arpa.",
        RecordType::PTR,
    )
    .await;
    assert_eq!(data(&reply), ["web.default.svc.cluster.local."]);
    let reply = ask(
        dns.local_addr(),
        "7.1.18.198.in-addr.arpa.",
        RecordType::PTR,
    )
    .await;
    assert_eq!(data(&reply), ["198-18-1-7.web.default.svc.cluster.local."]);
}

#[tokio::test]
async fn large_answers_are_truncated_over_udp_only() {
    let dns = cluster_dns(&[]).await;
    let name = "big.default.svc.cluster.local.";
    let (len, reply) = ask_udp_raw(dns.local_addr(), &query(name, RecordType::A, None))
        .await
        .expect("a reply");
    assert!(len <= 512, "{len} bytes without EDNS");
    assert!(reply.truncated(), "TC set: {reply:?}");
    let reply = ask_tcp(dns.local_addr(), name, RecordType::A).await;
    assert!(!reply.truncated());
    assert_eq!(reply.answers().len(), usize::from(MANY));
    // A client that takes 4096 bytes gets it all over UDP.
    let (_, reply) = ask_udp_raw(dns.local_addr(), &query(name, RecordType::A, Some(4096)))
        .await
        .expect("a reply");
    assert!(!reply.truncated());
    assert_eq!(reply.answers().len(), usize::from(MANY));
}

#[tokio::test]
async fn other_names_are_forwarded_and_cached() {
    let (upstream_addr, mut upstream) = upstream().await;
    let dns = cluster_dns(&[upstream_addr]).await;
    let reply = ask(dns.local_addr(), "www.example.com.", RecordType::A).await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert_eq!(data(&reply), ["192.0.2.80"]);
    let reply = ask(dns.local_addr(), "nope.example.com.", RecordType::A).await;
    assert_eq!(reply.response_code(), ResponseCode::NXDomain);
    // Reverse names of addresses outside the cluster too.
    let reply = ask(
        dns.local_addr(),
        "80.2.0.192.in-addr.arpa.",
        RecordType::PTR,
    )
    .await;
    assert_eq!(data(&reply), ["www.example.com."]);
    // Cluster names still come from the cluster zone.
    assert_eq!(
        addresses(&dns, "web.default.svc.cluster.local.").await,
        ["198.19.0.10"]
    );

    // The upstream goes away: the cached answer (TTL 300 s) is still given.
    upstream
        .shutdown_gracefully()
        .await
        .expect("upstream stops");
    drop(upstream);
    let reply = ask_udp(dns.local_addr(), "www.example.com.", RecordType::A).await;
    assert_eq!(data(&reply), ["192.0.2.80"]);
    assert!(
        reply.answers().iter().all(|r| r.ttl() <= 300),
        "the TTL counts down from upstream's: {reply:?}"
    );
}

#[tokio::test]
async fn without_upstreams_other_names_fail() {
    let dns = cluster_dns(&[]).await;
    let reply = ask_udp(dns.local_addr(), "www.example.com.", RecordType::A).await;
    assert_eq!(reply.response_code(), ResponseCode::ServFail);
}

#[tokio::test]
async fn garbage_gets_no_reply() {
    let dns = cluster_dns(&[]).await;
    assert!(ask_udp_raw(dns.local_addr(), b"not dns").await.is_none());
}

#[tokio::test]
async fn updates_replace_the_records() {
    let dns = cluster_dns(&[]).await;
    dns.update(Records::build(
        &[service("api", "198.19.0.20")],
        &[],
        "cluster.local",
    ));
    assert_eq!(
        addresses(&dns, "api.default.svc.cluster.local.").await,
        ["198.19.0.20"]
    );
    let reply = ask(
        dns.local_addr(),
        "web.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(reply.response_code(), ResponseCode::NXDomain);
}

#[tokio::test]
async fn one_service_changes_in_place_and_the_others_stay() {
    let dns = cluster_dns(&[]).await;
    let domain = "cluster.local";
    let before = Records::of_service(
        &service("db", "None"),
        Some(&(&endpoints("db", &[Ipv4Addr::new(198, 18, 1, 5)])).into()),
        domain,
    );
    // db's endpoint moves; web is not touched.
    let moved = [Ipv4Addr::new(198, 18, 1, 6), Ipv4Addr::new(198, 18, 1, 8)];
    let after = Records::of_service(
        &service("db", "None"),
        Some(&(&endpoints("db", &moved)).into()),
        domain,
    );
    dns.replace(&before, &after).await;
    assert_eq!(
        addresses(&dns, "db.default.svc.cluster.local.").await,
        ["198.18.1.6", "198.18.1.8"]
    );
    assert_eq!(
        addresses(&dns, "web.default.svc.cluster.local.").await,
        ["198.19.0.10"]
    );
    let gone = ask(
        dns.local_addr(),
        "5.1.18.198.in-addr.arpa.",
        RecordType::PTR,
    )
    .await;
    assert!(data(&gone).is_empty(), "{gone:?}");
    let came = ask(
        dns.local_addr(),
        "6.1.18.198.in-addr.arpa.",
        RecordType::PTR,
    )
    .await;
    assert_eq!(data(&came), ["198-18-1-6.db.default.svc.cluster.local."]);
    // The Service deleted: its name goes.
    dns.replace(&after, &Records::new(domain)).await;
    let reply = ask(
        dns.local_addr(),
        "db.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(reply.response_code(), ResponseCode::NXDomain);
}
