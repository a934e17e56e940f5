//! Service discovery: a DNS server on each node answering for the cluster's services,
//! the names Kubernetes users expect:
//!
//! - `<service>.<namespace>.svc.<domain>` A → the ClusterIP (or, for a headless service,
//!   the ready endpoints' addresses);
//! - `_<port>._<tcp|udp>.<service>.<namespace>.svc.<domain>` SRV → the port and the
//!   service's name, for every named port.
//!
//! Authoritative for `svc.<domain>` only: other names are refused (pods resolve only
//! cluster names through it; there is no forwarding to upstream resolvers yet). UDP only.
//! Records are rebuilt from the same Service/Endpoints watch that programs the datapath.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    str::FromStr as _,
    sync::{Arc, RwLock},
};

use berth_api::core::{Endpoints, Service};
use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, SRV},
    },
};

/// Answers may be cached this long: short, so endpoint changes show quickly.
pub const TTL_SECONDS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cluster domain {domain:?} is not a valid DNS name: {reason}")]
    Domain { domain: String, reason: String },
    #[error("DNS server on {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Every name the server answers for, by lower-case FQDN.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Records {
    a: HashMap<String, Vec<Ipv4Addr>>,
    srv: HashMap<String, Vec<(u16, String)>>,
}

impl Records {
    /// Builds the records of `services` under `domain` (`cluster.local`).
    pub fn build(services: &[Service], endpoints: &[Endpoints], domain: &str) -> Records {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let ready: HashMap<(&str, &str), Vec<Ipv4Addr>> = endpoints
            .iter()
            .map(|e| {
                let addresses = e
                    .subsets
                    .iter()
                    .flat_map(|subset| &subset.addresses)
                    .filter_map(|address| Ipv4Addr::from_str(&address.ip).ok())
                    .collect();
                (
                    (e.metadata.namespace.as_str(), e.metadata.name.as_str()),
                    addresses,
                )
            })
            .collect();
        let mut records = Records::default();
        for service in services {
            let meta = &service.metadata;
            let fqdn = format!(
                "{}.{}.svc.{domain}.",
                meta.name.to_ascii_lowercase(),
                meta.namespace.to_ascii_lowercase()
            );
            let addresses = match Ipv4Addr::from_str(&service.spec.cluster_ip) {
                Ok(ip) => vec![ip],
                Err(_) if service.spec.cluster_ip == "None" => ready
                    .get(&(meta.namespace.as_str(), meta.name.as_str()))
                    .cloned()
                    .unwrap_or_default(),
                Err(_) => continue,
            };
            for port in &service.spec.ports {
                let (Ok(number), false) = (u16::try_from(port.port), port.name.is_empty()) else {
                    continue;
                };
                let proto = port.protocol.to_ascii_lowercase();
                let name = format!("_{}._{proto}.{fqdn}", port.name.to_ascii_lowercase());
                records
                    .srv
                    .entry(name)
                    .or_default()
                    .push((number, fqdn.clone()));
            }
            records.a.insert(fqdn, addresses);
        }
        records
    }

    fn knows(&self, name: &str) -> bool {
        self.a.contains_key(name) || self.srv.contains_key(name)
    }
}

/// The DNS zone the server is authoritative for: `svc.<domain>.`
fn zone(domain: &str) -> Result<Name, DnsError> {
    let text = format!("svc.{}.", domain.trim_end_matches('.'));
    Name::from_ascii(&text).map_err(|error| DnsError::Domain {
        domain: domain.to_owned(),
        reason: error.to_string(),
    })
}

/// Answers one DNS query. Returns None for input that is not a DNS message (dropped, as
/// a resolver would time out on it anyway).
pub fn answer(records: &Records, zone: &Name, query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    if request.message_type() != MessageType::Query {
        return None;
    }
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(false);
    response.add_queries(request.queries().iter().cloned());
    let [question] = request.queries() else {
        response.set_response_code(ResponseCode::FormErr);
        return response.to_vec().ok();
    };
    if request.op_code() != OpCode::Query {
        response.set_response_code(ResponseCode::NotImp);
        return response.to_vec().ok();
    }
    let name = question.name().to_lowercase();
    if !zone.zone_of(&name) {
        response.set_response_code(ResponseCode::Refused);
        return response.to_vec().ok();
    }
    response.set_authoritative(true);
    let key = name.to_ascii();
    let key = if key.ends_with('.') {
        key
    } else {
        format!("{key}.")
    };
    if !records.knows(&key) {
        response.set_response_code(ResponseCode::NXDomain);
        return response.to_vec().ok();
    }
    match question.query_type() {
        RecordType::A => {
            for ip in records.a.get(&key).into_iter().flatten() {
                response.add_answer(Record::from_rdata(
                    name.clone(),
                    TTL_SECONDS,
                    RData::A(A(*ip)),
                ));
            }
        }
        RecordType::SRV => {
            for (port, target) in records.srv.get(&key).into_iter().flatten() {
                let Ok(target) = Name::from_ascii(target) else {
                    continue;
                };
                response.add_answer(Record::from_rdata(
                    name.clone(),
                    TTL_SECONDS,
                    RData::SRV(SRV::new(0, 100, *port, target)),
                ));
            }
        }
        // The name exists but has no records of that type (AAAA: IPv4 only).
        _ => {}
    }
    response.set_response_code(ResponseCode::NoError);
    response.to_vec().ok()
}

/// A running DNS server; records are swapped in whole by [`DnsServer::update`].
pub struct DnsServer {
    records: Arc<RwLock<Arc<Records>>>,
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl DnsServer {
    /// Listens on `addr` (UDP) and answers for `svc.<domain>`.
    pub async fn start(addr: SocketAddr, domain: &str) -> Result<DnsServer, DnsError> {
        let zone = zone(domain)?;
        let socket = tokio::net::UdpSocket::bind(addr)
            .await
            .map_err(|source| DnsError::Io { addr, source })?;
        let local_addr = socket
            .local_addr()
            .map_err(|source| DnsError::Io { addr, source })?;
        let records: Arc<RwLock<Arc<Records>>> = Arc::default();
        let shared = records.clone();
        let task = tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
                    continue;
                };
                let current = match shared.read() {
                    Ok(records) => records.clone(),
                    Err(poisoned) => poisoned.into_inner().clone(),
                };
                if let Some(reply) = answer(&current, &zone, &buffer[..len]) {
                    // A lost reply is retried by the resolver.
                    let _ = socket.send_to(&reply, peer).await;
                }
            }
        });
        Ok(DnsServer {
            records,
            local_addr,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replaces every record at once.
    pub fn update(&self, records: Records) {
        let records = Arc::new(records);
        match self.records.write() {
            Ok(mut current) => *current = records,
            Err(poisoned) => *poisoned.into_inner() = records,
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use berth_api::{
        core::{EndpointAddress, EndpointSubset, ServicePort, ServiceSpec},
        meta::ObjectMeta,
    };
    use hickory_proto::op::Query;

    use super::*;

    fn service(name: &str, cluster_ip: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                ..ObjectMeta::default()
            },
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

    fn ask(records: &Records, name: &str, kind: RecordType) -> Message {
        let mut query = Message::new();
        query
            .set_id(7)
            .set_message_type(MessageType::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).expect("name"), kind));
        let zone = zone("cluster.local").expect("zone");
        let reply = answer(records, &zone, &query.to_vec().expect("encode")).expect("a reply");
        Message::from_vec(&reply).expect("decode")
    }

    fn records() -> Records {
        let headless_endpoints = Endpoints {
            metadata: ObjectMeta {
                name: "db".into(),
                namespace: "default".into(),
                ..ObjectMeta::default()
            },
            subsets: vec![EndpointSubset {
                addresses: vec![EndpointAddress {
                    ip: "198.18.1.5".into(),
                    ..EndpointAddress::default()
                }],
                ..EndpointSubset::default()
            }],
            ..Endpoints::default()
        };
        Records::build(
            &[service("web", "198.19.0.10"), service("db", "None")],
            &[headless_endpoints],
            "cluster.local",
        )
    }

    #[test]
    fn a_records_for_services() {
        let reply = ask(&records(), "web.default.svc.cluster.local.", RecordType::A);
        assert_eq!(reply.id(), 7);
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert!(reply.authoritative());
        let answers: Vec<String> = reply
            .answers()
            .iter()
            .map(|r| r.data().to_string())
            .collect();
        assert_eq!(answers, ["198.19.0.10"]);
        // Names are case-insensitive.
        let reply = ask(&records(), "WEB.default.svc.cluster.local.", RecordType::A);
        assert_eq!(reply.answers().len(), 1);
    }

    #[test]
    fn headless_services_answer_with_ready_endpoints() {
        let reply = ask(&records(), "db.default.svc.cluster.local.", RecordType::A);
        let answers: Vec<String> = reply
            .answers()
            .iter()
            .map(|r| r.data().to_string())
            .collect();
        assert_eq!(answers, ["198.18.1.5"]);
    }

    #[test]
    fn srv_records_for_named_ports() {
        let reply = ask(
            &records(),
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        );
        let [record] = reply.answers() else {
            panic!("one SRV record: {reply:?}");
        };
        let RData::SRV(srv) = record.data() else {
            panic!("not SRV: {record:?}");
        };
        assert_eq!(srv.port(), 80);
        assert_eq!(srv.target().to_ascii(), "web.default.svc.cluster.local.");
    }

    #[test]
    fn unknown_names_and_other_zones() {
        let reply = ask(&records(), "nope.default.svc.cluster.local.", RecordType::A);
        assert_eq!(reply.response_code(), ResponseCode::NXDomain);
        let reply = ask(&records(), "example.com.", RecordType::A);
        assert_eq!(reply.response_code(), ResponseCode::Refused);
        let reply = ask(
            &records(),
            "web.default.svc.cluster.local.",
            RecordType::AAAA,
        );
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert!(reply.answers().is_empty());
    }

    #[test]
    fn garbage_gets_no_reply() {
        let zone = zone("cluster.local").expect("zone");
        assert!(answer(&records(), &zone, b"not dns").is_none());
    }

    #[tokio::test]
    async fn the_server_answers_over_udp() {
        let server = DnsServer::start("127.0.0.1:0".parse().expect("addr"), "cluster.local")
            .await
            .expect("start");
        server.update(records());
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut query = Message::new();
        query.set_id(9).add_query(Query::query(
            Name::from_ascii("web.default.svc.cluster.local.").expect("name"),
            RecordType::A,
        ));
        client
            .send_to(&query.to_vec().expect("encode"), server.local_addr())
            .await
            .expect("send");
        let mut buffer = [0u8; 512];
        let (len, _) = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.recv_from(&mut buffer),
        )
        .await
        .expect("a reply in time")
        .expect("recv");
        let reply = Message::from_vec(&buffer[..len]).expect("decode");
        assert_eq!(reply.answers().len(), 1);
    }
}
