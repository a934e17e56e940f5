//! Service discovery: a DNS server on each node, on hickory's server crate, answering the
//! names Kubernetes users expect and forwarding every other name:
//!
//! - `<service>.<namespace>.svc.<domain>` A → the ClusterIP, or for a headless service the
//!   ready endpoints' addresses, each also named `<a-b-c-d>.<service>.<namespace>.svc.<domain>`,
//!   or `<hostname>.<service>.<namespace>.svc.<domain>` when the endpoint has a hostname (a
//!   pod whose `subdomain` is the service, such as a StatefulSet's `web-0`);
//! - `_<port>._<tcp|udp>.<service>.<namespace>.svc.<domain>` SRV → for every named port: the
//!   service's name and port, or for a headless service each endpoint's name and port;
//! - PTR (`d.c.b.a.in-addr.arpa`) for ClusterIPs (→ the service's name) and ready endpoint
//!   (pod) addresses (→ `<a-b-c-d>.<service>.<namespace>.svc.<domain>`);
//! - authoritative for `<domain>`: unknown names are NXDOMAIN and names without the asked
//!   type NODATA, both with the zone's SOA in the authority section (its minimum is the
//!   negative-caching time);
//! - everything else, reverse names it does not know included, goes to the upstream
//!   resolvers through hickory-resolver, whose cache honours the upstream TTLs.
//!
//! UDP and TCP on the same address. Over UDP an answer larger than 512 bytes, or than the
//! client's EDNS buffer size, is truncated with the TC bit set so the client asks over TCP.
//! Records come from the same Service/Endpoints watch that programs the datapath: a change
//! to one Service or its Endpoints replaces that service's records in place
//! ([`DnsServer::replace`]); a resync builds them all and swaps them in whole
//! ([`DnsServer::update`]).

use std::{
    collections::{BTreeSet, HashMap},
    io,
    net::{Ipv4Addr, SocketAddr},
    str::FromStr as _,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use berth_api::core::{Endpoints as ApiEndpoints, Service};
use hickory_proto::{
    op::ResponseCode,
    rr::{
        LowerName, Name, RData, Record, RecordSet, RecordType, RrKey,
        rdata::{A, NS, PTR, SOA, SRV},
    },
    serialize::binary::{BinDecodable as _, BinEncoder},
    xfer::Protocol,
};
use hickory_resolver::config::{NameServerConfig, NameServerConfigGroup, ResolverOpts};
use hickory_server::{
    ServerFuture,
    authority::{
        AuthLookup, Authority, Catalog, LookupControlFlow, LookupOptions, LookupRecords,
        MessageRequest, MessageResponse, UpdateResult, ZoneType,
    },
    server::{Request, RequestHandler, RequestInfo, ResponseHandler, ResponseInfo},
    store::{
        forwarder::{ForwardAuthority, ForwardConfig},
        in_memory::InMemoryAuthority,
    },
};

use crate::{endpoints::Endpoints, services::KeptService};

/// Answers may be cached this long: short, so endpoint changes show quickly. Also the
/// SOA minimum, so a name that does not exist yet is not remembered for longer.
pub const TTL_SECONDS: u32 = 5;
/// The largest UDP answer for a client that did not say (EDNS) it takes more (RFC 1035).
const UDP_PLAIN_LIMIT: u16 = 512;
/// Idle TCP connections are closed after this long.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one upstream query may take before the next server (or try) is used.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Answers from upstream kept in the forwarder's cache.
const UPSTREAM_CACHE_ENTRIES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cluster domain {domain:?} is not a valid DNS name: {reason}")]
    Domain { domain: String, reason: String },
    #[error("DNS server on {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("forwarding to {upstreams:?}: {reason}")]
    Forwarder {
        upstreams: Vec<SocketAddr>,
        reason: String,
    },
}

/// Every record the server answers with itself: the cluster zone's and the reverse names
/// of cluster addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records {
    domain: Name,
    forward: Vec<Record>,
    /// Reverse names: an address and the name it points to.
    reverse: Vec<(Ipv4Addr, ReverseName)>,
}

/// The name an address points to, kept in parts so that a service's addresses share
/// its name: 10,000 Services × 10 endpoints are 110,000 reverse names, which as a
/// string each (and a list per address) were a fifth of the agent's heap (issue 25).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum ReverseName {
    /// This name, fully qualified: a ClusterIP's service, or an endpoint's hostname
    /// under its service.
    Exact(Arc<str>),
    /// `<a-b-c-d>.` and then this service's name: an endpoint without a hostname, named
    /// after its own address.
    Dashed(Arc<str>),
}

impl ReverseName {
    /// The fully qualified name, for the address `ip` it is kept under.
    fn text(&self, ip: Ipv4Addr) -> String {
        match self {
            ReverseName::Exact(name) => name.to_string(),
            ReverseName::Dashed(service) => {
                let [a, b, c, d] = ip.octets();
                format!("{a}-{b}-{c}-{d}.{service}")
            }
        }
    }
}

fn name(text: &str) -> Option<Name> {
    Name::from_ascii(text).ok().map(|name| name.to_lowercase())
}

fn domain_name(domain: &str) -> Result<Name, DnsError> {
    Name::from_ascii(format!("{}.", domain.trim_end_matches('.')))
        .map(|name| name.to_lowercase())
        .map_err(|error| DnsError::Domain {
            domain: domain.to_owned(),
            reason: error.to_string(),
        })
}

fn in_addr_arpa() -> Name {
    name("in-addr.arpa.").unwrap_or_else(Name::root)
}

/// A ready endpoint's address, its hostname (may be empty) and its port numbers by port
/// name.
type ReadyEndpoint<'a> = (Ipv4Addr, &'a str, HashMap<&'a str, u16>);

impl Records {
    /// No records, under `domain` (`cluster.local`).
    pub fn new(domain: &str) -> Records {
        Records {
            domain: domain_name(domain).unwrap_or_else(|_| Name::root()),
            forward: Vec::new(),
            reverse: Vec::new(),
        }
    }

    /// Builds the records of `services` under `domain` (`cluster.local`). Services whose
    /// names are not DNS labels are left out.
    pub fn build(services: &[Service], endpoints: &[ApiEndpoints], domain: &str) -> Records {
        let by_name: HashMap<(&str, &str), Endpoints> = endpoints
            .iter()
            .map(|e| {
                let meta = &e.metadata;
                (
                    (meta.namespace.as_str(), meta.name.as_str()),
                    Endpoints::from(e),
                )
            })
            .collect();
        let mut records = Records::new(domain);
        for service in services {
            let meta = &service.metadata;
            records.add_service(
                &KeptService::from(service),
                by_name.get(&(meta.namespace.as_str(), meta.name.as_str())),
            );
        }
        records
    }

    /// How many records these are.
    pub fn len(&self) -> usize {
        self.forward.len() + self.reverse.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `other`'s records to these.
    pub fn extend(&mut self, other: Records) {
        self.forward.extend(other.forward);
        self.reverse.extend(other.reverse);
    }

    /// The records of one Service, given its Endpoints: what
    /// [`DnsServer::replace`] takes out and puts in when either changes.
    pub fn of_service(
        service: &KeptService,
        endpoints: Option<&Endpoints>,
        domain: &str,
    ) -> Records {
        let mut records = Records::new(domain);
        records.add_service(service, endpoints);
        records
    }

    fn add_service(&mut self, service: &KeptService, endpoints: Option<&Endpoints>) {
        let records = self;
        let domain_text = records.domain.to_ascii();
        let domain_text = domain_text.trim_end_matches('.');
        // Each ready endpoint's address and its port numbers by port name.
        let endpoints: Vec<ReadyEndpoint> = endpoints
            .into_iter()
            .flat_map(|e| &e.subsets)
            .flat_map(|subset| {
                let ports: HashMap<&str, u16> = subset
                    .ports
                    .iter()
                    .filter_map(|port| Some((&*port.name, u16::try_from(port.port).ok()?)))
                    .collect();
                subset
                    .addresses
                    .iter()
                    .map(move |address| (address.ip, &*address.hostname, ports.clone()))
            })
            .collect();
        let Some(fqdn) = name(&format!(
            "{}.{}.svc.{domain_text}.",
            service.name, service.namespace
        )) else {
            return;
        };
        // Each ready endpoint's own name: `<hostname>.<service>...` when it has a hostname
        // (CoreDNS' rule), `<a-b-c-d>.<service>...` otherwise.
        let endpoint_names: Vec<(Ipv4Addr, Name, &HashMap<&str, u16>, bool)> = endpoints
            .iter()
            .filter_map(|(ip, hostname, ports)| {
                let dashed = hostname.is_empty();
                let label = if dashed {
                    ip.to_string().replace('.', "-")
                } else {
                    (*hostname).to_owned()
                };
                Some((*ip, name(&format!("{label}.{fqdn}"))?, ports, dashed))
            })
            .collect();
        let service_name: Arc<str> = fqdn.to_ascii().into();
        for (ip, endpoint_name, _, dashed) in &endpoint_names {
            let reverse = if *dashed {
                ReverseName::Dashed(service_name.clone())
            } else {
                ReverseName::Exact(endpoint_name.to_ascii().into())
            };
            records.reverse.push((*ip, reverse));
        }
        let headless = match Ipv4Addr::from_str(&service.cluster_ip) {
            Ok(ip) => {
                records.add_a(&fqdn, ip);
                records.reverse.push((ip, ReverseName::Exact(service_name)));
                false
            }
            Err(_) if &*service.cluster_ip == "None" => {
                for (ip, endpoint_name, _, _) in &endpoint_names {
                    records.add_a(&fqdn, *ip);
                    records.add_a(endpoint_name, *ip);
                }
                true
            }
            Err(_) => return,
        };
        for port in &service.ports {
            let (Ok(number), false) = (u16::try_from(port.port), port.name.is_empty()) else {
                continue;
            };
            let Some(srv_name) = name(&format!(
                "_{}._{}.{fqdn}",
                port.name,
                port.protocol.to_ascii_lowercase()
            )) else {
                continue;
            };
            let targets: Vec<(Name, u16)> = if headless {
                endpoint_names
                    .iter()
                    .map(|(_, endpoint_name, ports, _)| {
                        let target_port = ports.get(&*port.name).copied().unwrap_or(number);
                        (endpoint_name.clone(), target_port)
                    })
                    .collect()
            } else {
                vec![(fqdn.clone(), number)]
            };
            for (target, target_port) in targets {
                records.forward.push(Record::from_rdata(
                    srv_name.clone(),
                    TTL_SECONDS,
                    RData::SRV(SRV::new(0, 100, target_port, target)),
                ));
            }
        }
    }

    fn add_a(&mut self, owner: &Name, ip: Ipv4Addr) {
        self.forward.push(Record::from_rdata(
            owner.clone(),
            TTL_SECONDS,
            RData::A(A(ip)),
        ));
    }

    /// The cluster zone: these records under an SOA and NS of their own.
    fn cluster_zone(&self, serial: u32) -> InMemoryAuthority {
        let domain = &self.domain;
        let server = Name::from_ascii("ns.dns")
            .and_then(|label| label.append_domain(domain))
            .unwrap_or_else(|_| domain.clone());
        let hostmaster = Name::from_ascii("hostmaster")
            .and_then(|label| label.append_domain(domain))
            .unwrap_or_else(|_| domain.clone());
        let mut zone = zone(domain.clone());
        let soa = SOA::new(
            server.clone(),
            hostmaster,
            serial,
            7200,
            1800,
            86400,
            TTL_SECONDS,
        );
        zone.upsert_mut(
            Record::from_rdata(domain.clone(), TTL_SECONDS, RData::SOA(soa)),
            serial,
        );
        zone.upsert_mut(
            Record::from_rdata(domain.clone(), TTL_SECONDS, RData::NS(NS(server))),
            serial,
        );
        let records = zone.records_get_mut();
        for record in &self.forward {
            let key = RrKey::new(LowerName::new(record.name()), record.record_type());
            insert(records, key, record.clone(), serial);
        }
        zone
    }
}

fn zone(origin: Name) -> InMemoryAuthority {
    InMemoryAuthority::empty(origin, ZoneType::Primary, false)
}

/// A zone whose records are replaced whole; lookups see either the old or the new set.
struct SwappableZone {
    origin: LowerName,
    current: RwLock<Arc<InMemoryAuthority>>,
}

impl SwappableZone {
    fn new(zone: InMemoryAuthority) -> SwappableZone {
        SwappableZone {
            origin: zone.origin().clone(),
            current: RwLock::new(Arc::new(zone)),
        }
    }

    fn current(&self) -> Arc<InMemoryAuthority> {
        match self.current.read() {
            Ok(zone) => zone.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Takes `old` out of the live zone and puts `new` in, in place: the records of
    /// other services stay untouched (each service's records are its own: their names
    /// or data hold its name).
    async fn edit(&self, old: &[Record], new: &[Record], serial: u32) {
        let zone = self.current();
        let mut records = zone.records_mut().await;
        for record in old {
            let key = RrKey::new(LowerName::new(record.name()), record.record_type());
            if let Some(set) = records.get_mut(&key) {
                let set = Arc::make_mut(set);
                set.remove(record, serial);
                if set.is_empty() {
                    records.remove(&key);
                }
            }
        }
        for record in new {
            let key = RrKey::new(LowerName::new(record.name()), record.record_type());
            insert(&mut records, key, record.clone(), serial);
        }
    }

    fn replace(&self, zone: InMemoryAuthority) {
        let zone = Arc::new(zone);
        match self.current.write() {
            Ok(mut current) => *current = zone,
            Err(poisoned) => *poisoned.into_inner() = zone,
        }
    }

    /// Answered here: no other authority is consulted.
    fn answered(result: LookupControlFlow<AuthLookup>) -> LookupControlFlow<AuthLookup> {
        match result {
            LookupControlFlow::Continue(result) => LookupControlFlow::Break(result),
            other => other,
        }
    }
}

/// What the server's own zones answer alike: primary, no transfers, the origin they hold
/// (`update`, async, cannot be generated inside `async_trait`'s impl).
macro_rules! read_only_primary {
    () => {
        type Lookup = AuthLookup;

        fn zone_type(&self) -> ZoneType {
            ZoneType::Primary
        }

        fn is_axfr_allowed(&self) -> bool {
            false
        }

        fn origin(&self) -> &LowerName {
            &self.origin
        }
    };
}

#[async_trait::async_trait]
impl Authority for SwappableZone {
    read_only_primary!();

    async fn update(&self, _update: &MessageRequest) -> UpdateResult<bool> {
        Err(ResponseCode::Refused)
    }

    async fn lookup(
        &self,
        name: &LowerName,
        rtype: RecordType,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        let zone = self.current();
        Self::answered(zone.lookup(name, rtype, lookup_options).await)
    }

    async fn search(
        &self,
        request: RequestInfo<'_>,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        let zone = self.current();
        Self::answered(zone.search(request, lookup_options).await)
    }

    async fn get_nsec_records(
        &self,
        name: &LowerName,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        self.current().get_nsec_records(name, lookup_options).await
    }
}

/// Puts `record` into the zone's set for `key`. A new set holds exactly its one record:
/// hickory's `RecordSet::new` followed by an insert reserves room for four, which for the
/// 10,000 Services' names was most of the zone's memory.
fn insert(
    records: &mut std::collections::BTreeMap<RrKey, Arc<RecordSet>>,
    key: RrKey,
    record: Record,
    serial: u32,
) {
    match records.entry(key) {
        std::collections::btree_map::Entry::Occupied(mut set) => {
            Arc::make_mut(set.get_mut()).insert(record, serial);
        }
        std::collections::btree_map::Entry::Vacant(slot) => {
            slot.insert(Arc::new(RecordSet::from(record)));
        }
    }
}

/// The reverse names of cluster addresses (ClusterIPs and ready endpoints), kept as
/// (address, name) pairs in order and answered by building the PTR records per query: as
/// hickory records in a zone, 100,000 endpoints' names took about 600 bytes each; as a
/// list of strings per address, about 100. An address's names are one range of the set,
/// and a pair is in it once however often it is added. Names it does not know are left
/// to the next authority (the forwarder).
struct ReverseZone {
    origin: LowerName,
    names: RwLock<BTreeSet<(Ipv4Addr, ReverseName)>>,
}

impl ReverseZone {
    fn new() -> ReverseZone {
        ReverseZone {
            origin: LowerName::new(&in_addr_arpa()),
            names: RwLock::default(),
        }
    }

    fn names(&self) -> std::sync::RwLockWriteGuard<'_, BTreeSet<(Ipv4Addr, ReverseName)>> {
        match self.names.write() {
            Ok(names) => names,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Takes `old` out and puts `new` in (one service's names).
    fn edit(&self, old: &[(Ipv4Addr, ReverseName)], new: &[(Ipv4Addr, ReverseName)]) {
        let mut names = self.names();
        for pair in old {
            names.remove(pair);
        }
        names.extend(new.iter().cloned());
    }

    fn replace(&self, all: &[(Ipv4Addr, ReverseName)]) {
        // Built from the sorted whole, the set's nodes are full.
        let fresh: BTreeSet<(Ipv4Addr, ReverseName)> = all.iter().cloned().collect();
        *self.names() = fresh;
    }

    /// The PTR records of `name` (`d.c.b.a.in-addr.arpa.`), if it is a cluster address.
    fn records(&self, name: &LowerName) -> Option<RecordSet> {
        let ip = address_of_reverse_name(&Name::from(name))?;
        let names = match self.names.read() {
            Ok(names) => names,
            Err(poisoned) => poisoned.into_inner(),
        };
        // The least name sorts first: the address's range starts there.
        let first = (ip, ReverseName::Exact(Arc::from("")));
        let mut set: Option<RecordSet> = None;
        for (_, target) in names.range(first..).take_while(|(at, _)| *at == ip) {
            let Ok(target) = Name::from_ascii(target.text(ip)) else {
                continue;
            };
            let record = Record::from_rdata(Name::from(name), TTL_SECONDS, RData::PTR(PTR(target)));
            match &mut set {
                Some(set) => {
                    set.insert(record, 0);
                }
                None => set = Some(RecordSet::from(record)),
            }
        }
        set
    }
}

/// `5.1.18.198.in-addr.arpa.` → `198.18.1.5`; None for any other name.
fn address_of_reverse_name(name: &Name) -> Option<Ipv4Addr> {
    let text = name.to_lowercase().to_ascii();
    let octets = text
        .trim_end_matches('.')
        .strip_suffix(".in-addr.arpa")?
        .split('.')
        .map(|part| part.parse::<u8>().ok())
        .collect::<Option<Vec<u8>>>()?;
    let [d, c, b, a] = octets.as_slice() else {
        return None;
    };
    Some(Ipv4Addr::new(*a, *b, *c, *d))
}

#[async_trait::async_trait]
impl Authority for ReverseZone {
    read_only_primary!();

    async fn update(&self, _update: &MessageRequest) -> UpdateResult<bool> {
        Err(ResponseCode::Refused)
    }

    async fn lookup(
        &self,
        name: &LowerName,
        rtype: RecordType,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        if !matches!(rtype, RecordType::PTR | RecordType::ANY) {
            return LookupControlFlow::Skip;
        }
        match self.records(name) {
            Some(set) => LookupControlFlow::Break(Ok(AuthLookup::answers(
                LookupRecords::new(lookup_options, Arc::new(set)),
                None,
            ))),
            None => LookupControlFlow::Skip,
        }
    }

    async fn search(
        &self,
        request: RequestInfo<'_>,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        self.lookup(
            request.query.name(),
            request.query.query_type(),
            lookup_options,
        )
        .await
    }

    async fn get_nsec_records(
        &self,
        _name: &LowerName,
        _lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        LookupControlFlow::Skip
    }
}

/// The catalog shared by the UDP loop and the TCP server.
#[derive(Clone)]
struct SharedCatalog(Arc<Catalog>);

#[async_trait::async_trait]
impl RequestHandler for SharedCatalog {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.0.handle_request(request, response_handle).await
    }
}

/// Encodes a UDP answer within what the client can take, and keeps the bytes for the
/// sender. hickory's own UDP handler allows 4096 bytes to clients without EDNS; RFC 1035
/// clients (glibc's default) take 512.
#[derive(Clone)]
struct UdpAnswer {
    limit: u16,
    bytes: Arc<Mutex<Vec<u8>>>,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpAnswer {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> io::Result<ResponseInfo> {
        let mut buffer = Vec::with_capacity(usize::from(self.limit));
        let info = {
            let mut encoder = BinEncoder::new(&mut buffer);
            encoder.set_max_size(self.limit);
            response
                .destructive_emit(&mut encoder)
                .map_err(io::Error::other)?
        };
        match self.bytes.lock() {
            Ok(mut bytes) => *bytes = buffer,
            Err(poisoned) => *poisoned.into_inner() = buffer,
        }
        Ok(info)
    }
}

/// What the server forwards to: upstream resolvers, each asked over UDP and TCP.
fn forwarder(origin: Name, upstreams: &[SocketAddr]) -> Result<ForwardAuthority, DnsError> {
    let name_servers: Vec<NameServerConfig> = upstreams
        .iter()
        .flat_map(|addr| {
            [
                NameServerConfig::new(*addr, Protocol::Udp),
                NameServerConfig::new(*addr, Protocol::Tcp),
            ]
        })
        .collect();
    let mut options = ResolverOpts::default();
    options.cache_size = UPSTREAM_CACHE_ENTRIES;
    options.timeout = UPSTREAM_TIMEOUT;
    options.attempts = 2;
    // Pods ask for fully qualified names (their resolver applied the search list).
    options.ndots = 0;
    ForwardAuthority::builder_tokio(ForwardConfig {
        name_servers: NameServerConfigGroup::from(name_servers),
        options: Some(options),
    })
    .with_origin(origin)
    .build()
    .map_err(|reason| DnsError::Forwarder {
        upstreams: upstreams.to_vec(),
        reason,
    })
}

/// A running DNS server; records are swapped in whole by [`DnsServer::update`].
pub struct DnsServer {
    cluster: Arc<SwappableZone>,
    reverse: Arc<ReverseZone>,
    domain: Name,
    serial: Mutex<u32>,
    local_addr: SocketAddr,
    udp_task: tokio::task::JoinHandle<()>,
    tcp: ServerFuture<SharedCatalog>,
}

impl DnsServer {
    /// Listens on `addr` (UDP and TCP, the same port), answers for `<domain>` and forwards
    /// every other name to `upstreams` (none: those names get SERVFAIL).
    pub async fn start(
        addr: SocketAddr,
        domain: &str,
        upstreams: &[SocketAddr],
    ) -> Result<DnsServer, DnsError> {
        let domain = domain_name(domain)?;
        let empty = Records {
            domain: domain.clone(),
            forward: Vec::new(),
            reverse: Vec::new(),
        };
        let cluster = Arc::new(SwappableZone::new(empty.cluster_zone(0)));
        let reverse = Arc::new(ReverseZone::new());
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&domain), vec![cluster.clone()]);
        catalog.upsert(
            LowerName::new(&in_addr_arpa()),
            vec![
                reverse.clone(),
                Arc::new(forwarder(in_addr_arpa(), upstreams)?),
            ],
        );
        catalog.upsert(
            LowerName::new(&Name::root()),
            vec![Arc::new(forwarder(Name::root(), upstreams)?)],
        );
        let catalog = SharedCatalog(Arc::new(catalog));

        let socket = tokio::net::UdpSocket::bind(addr)
            .await
            .map_err(|source| DnsError::Io { addr, source })?;
        let local_addr = socket
            .local_addr()
            .map_err(|source| DnsError::Io { addr, source })?;
        // The same port over TCP, for truncated answers (and clients that start there).
        let listener = tokio::net::TcpListener::bind(local_addr)
            .await
            .map_err(|source| DnsError::Io { addr, source })?;
        let mut tcp = ServerFuture::new(catalog.clone());
        tcp.register_listener(listener, TCP_TIMEOUT);
        let udp_task = tokio::spawn(serve_udp(Arc::new(socket), catalog));
        Ok(DnsServer {
            cluster,
            reverse,
            domain,
            serial: Mutex::new(0),
            local_addr,
            udp_task,
            tcp,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn next_serial(&self) -> u32 {
        let mut serial = match self.serial.lock() {
            Ok(serial) => serial,
            Err(poisoned) => poisoned.into_inner(),
        };
        *serial = serial.wrapping_add(1);
        *serial
    }

    /// Replaces one service's records (`old`, as built from its previous Service and
    /// Endpoints) with `new`, leaving every other record as it is: a change costs the
    /// records of one service, not a rebuild of the zones.
    pub async fn replace(&self, old: &Records, new: &Records) {
        if new.domain != self.domain || old.domain != self.domain {
            tracing::warn!(built = %new.domain, served = %self.domain, "DNS records built for another domain; not served");
            return;
        }
        let serial = self.next_serial();
        self.cluster.edit(&old.forward, &new.forward, serial).await;
        self.reverse.edit(&old.reverse, &new.reverse);
    }

    /// Replaces every record at once (at the start and on a resync).
    pub fn update(&self, records: Records) {
        let serial = self.next_serial();
        if records.domain != self.domain {
            tracing::warn!(
                built = %records.domain,
                served = %self.domain,
                "DNS records built for another domain; not served"
            );
            return;
        }
        self.cluster.replace(records.cluster_zone(serial));
        self.reverse.replace(&records.reverse);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.udp_task.abort();
        self.tcp.shutdown_token().cancel();
    }
}

/// One task per query: a forwarded name may wait on upstream while cluster names are
/// answered.
async fn serve_udp(socket: Arc<tokio::net::UdpSocket>, catalog: SharedCatalog) {
    let mut buffer = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        // Not DNS: dropped, as a resolver would time out on it anyway.
        let Ok(message) = MessageRequest::from_bytes(&buffer[..len]) else {
            continue;
        };
        let limit = match message.edns() {
            Some(_) => message.max_payload(),
            None => UDP_PLAIN_LIMIT,
        };
        let request = Request::new(message, peer, Protocol::Udp);
        let (socket, catalog) = (socket.clone(), catalog.clone());
        tokio::spawn(async move {
            let answer = UdpAnswer {
                limit,
                bytes: Arc::default(),
            };
            catalog.handle_request(&request, answer.clone()).await;
            let bytes = match answer.bytes.lock() {
                Ok(mut bytes) => std::mem::take(&mut *bytes),
                Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
            };
            if !bytes.is_empty() {
                // A lost reply is retried by the resolver.
                let _ = socket.send_to(&bytes, peer).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ptr_targets(zone: &ReverseZone, name: &str) -> Vec<String> {
        let name = LowerName::new(&Name::from_ascii(name).expect("name"));
        let mut targets: Vec<String> = zone
            .records(&name)
            .map(|set| {
                set.records_without_rrsigs()
                    .filter_map(|record| match record.data() {
                        RData::PTR(PTR(target)) => Some(target.to_ascii()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        targets.sort();
        targets
    }

    #[test]
    fn reverse_names_are_parsed_as_addresses() {
        let parse = |text: &str| address_of_reverse_name(&Name::from_ascii(text).expect("name"));
        assert_eq!(
            parse("5.1.18.198.in-addr.arpa."),
            Some(Ipv4Addr::new(198, 18, 1, 5))
        );
        assert_eq!(
            parse("5.1.18.198.IN-ADDR.ARPA"),
            Some(Ipv4Addr::new(198, 18, 1, 5))
        );
        assert_eq!(
            parse("1.18.198.in-addr.arpa."),
            None,
            "a network, not an address"
        );
        assert_eq!(parse("300.1.18.198.in-addr.arpa."), None);
        assert_eq!(parse("web.default.svc.cluster.local."), None);
    }

    #[test]
    fn an_address_of_two_services_keeps_the_name_of_the_one_left() {
        let zone = ReverseZone::new();
        let ip = Ipv4Addr::new(198, 18, 1, 5);
        let web = vec![(
            ip,
            ReverseName::Dashed("web.default.svc.cluster.local.".into()),
        )];
        let api = vec![(
            ip,
            ReverseName::Exact("198-18-1-5.api.default.svc.cluster.local.".into()),
        )];
        zone.replace(&[web.clone(), api.clone()].concat());
        assert_eq!(
            ptr_targets(&zone, "5.1.18.198.in-addr.arpa."),
            [
                "198-18-1-5.api.default.svc.cluster.local.",
                "198-18-1-5.web.default.svc.cluster.local."
            ]
        );
        zone.edit(&web, &[]);
        assert_eq!(
            ptr_targets(&zone, "5.1.18.198.in-addr.arpa."),
            ["198-18-1-5.api.default.svc.cluster.local."]
        );
        zone.edit(&api, &[]);
        assert!(ptr_targets(&zone, "5.1.18.198.in-addr.arpa.").is_empty());
        assert!(
            zone.names().is_empty(),
            "nothing kept for a forgotten address"
        );
    }
}
