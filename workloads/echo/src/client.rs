//! The clients users get inside the workload image: `wget` and `nslookup`.
//!
//! Installed as links to the berth-echo binary (it picks the tool by the name it was run
//! as). Names are resolved here, from /etc/hosts and the servers in /etc/resolv.conf, and
//! never through the C library: a statically linked glibc looks names up by loading NSS
//! modules at run time, which an image without shared libraries does not have.

use std::{
    fmt,
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::Path,
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};

/// How long one connection, request or DNS try may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Tries per name server over UDP before moving on to the next one.
const UDP_TRIES: usize = 2;
const DNS_PORT: u16 = 53;
/// Linux's resolver defaults when resolv.conf says nothing.
const DEFAULT_NDOTS: usize = 1;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad URL {0:?} (expected http://HOST[:PORT][/PATH])")]
    Url(String),
    #[error("bad address '{0}'")]
    BadAddress(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("server returned error: {0}")]
    Status(String),
    #[error("malformed HTTP response from {0}")]
    Response(String),
    #[error("DNS: {0}")]
    Dns(String),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> ClientError {
    let what = what.into();
    move |source| ClientError::Io { what, source }
}

/// What /etc/resolv.conf says, as far as a stub resolver needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<SocketAddr>,
    pub search: Vec<String>,
    pub ndots: usize,
}

impl ResolvConf {
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf {
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: DEFAULT_NDOTS,
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(ip) = words.next().and_then(|word| word.parse::<IpAddr>().ok()) {
                        conf.nameservers.push(SocketAddr::new(ip, DNS_PORT));
                    }
                }
                // The last of `search` and `domain` wins, as in glibc.
                Some("search" | "domain") => {
                    conf.search = words
                        .map(|word| word.trim_end_matches('.').to_owned())
                        .collect();
                }
                Some("options") => {
                    for option in words {
                        if let Some(Ok(ndots)) = option.strip_prefix("ndots:").map(str::parse) {
                            conf.ndots = ndots;
                        }
                    }
                }
                _ => {}
            }
        }
        if conf.nameservers.is_empty() {
            conf.nameservers
                .push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DNS_PORT));
        }
        conf
    }

    pub fn load(path: &Path) -> ResolvConf {
        // No resolv.conf means the local server, as for the C library.
        ResolvConf::parse(&std::fs::read_to_string(path).unwrap_or_default())
    }

    /// The names to ask for, in order: as given first when it has enough dots (or ends with
    /// a dot), else each search domain first.
    pub fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(absolute) = name.strip_suffix('.') {
            return vec![absolute.to_owned()];
        }
        let searched = self.search.iter().map(|domain| format!("{name}.{domain}"));
        if name.matches('.').count() >= self.ndots {
            std::iter::once(name.to_owned()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(name.to_owned())).collect()
        }
    }
}

/// The addresses /etc/hosts gives `name`.
pub fn hosts_lookup(hosts: &str, name: &str) -> Vec<IpAddr> {
    let name = name.trim_end_matches('.');
    hosts
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let ip = words.next()?.parse::<IpAddr>().ok()?;
            words
                .any(|alias| alias.eq_ignore_ascii_case(name))
                .then_some(ip)
        })
        .collect()
}

/// One DNS answer: the name that was found and its IPv4 addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub name: String,
    pub addresses: Vec<Ipv4Addr>,
}

/// Asks `server` for the A records of `name` (absolute, without the trailing dot): over UDP,
/// again over TCP when the answer was truncated. `Ok(None)` when the name does not exist
/// or has no address.
pub fn query_a(server: SocketAddr, name: &str) -> Result<Option<Answer>, ClientError> {
    let fqdn = Name::from_ascii(format!("{name}."))
        .map_err(|error| ClientError::Dns(format!("{name:?} is not a DNS name: {error}")))?;
    let id = query_id();
    let mut query = Message::new();
    query
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(fqdn, RecordType::A));
    let bytes = query
        .to_vec()
        .map_err(|error| ClientError::Dns(error.to_string()))?;
    let mut reply = query_udp(server, &bytes, id)?;
    if reply.truncated() {
        reply = query_tcp(server, &bytes, id)?;
    }
    match reply.response_code() {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Ok(None),
        code => return Err(ClientError::Dns(format!("{server} answered {code}"))),
    }
    let addresses: Vec<Ipv4Addr> = reply
        .answers()
        .iter()
        .filter_map(|record| match record.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    Ok((!addresses.is_empty()).then(|| Answer {
        name: name.to_owned(),
        addresses,
    }))
}

/// Query ids only need to differ between tries; the clock's nanoseconds do.
fn query_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    (nanos ^ std::process::id()) as u16
}

fn query_udp(server: SocketAddr, query: &[u8], id: u16) -> Result<Message, ClientError> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).map_err(io_error("binding a UDP socket"))?;
    socket
        .connect(server)
        .map_err(io_error(format!("DNS server {server}")))?;
    socket
        .set_read_timeout(Some(TIMEOUT))
        .map_err(io_error("setting a timeout"))?;
    let mut buffer = [0u8; 4096];
    let mut last = ClientError::Dns(format!("no answer from {server}"));
    for _ in 0..UDP_TRIES {
        socket
            .send(query)
            .map_err(io_error(format!("DNS server {server}")))?;
        // Datagrams that are not our answer (stale, or not DNS) are skipped until the timeout.
        loop {
            match socket.recv(&mut buffer) {
                Ok(len) => match Message::from_vec(&buffer[..len]) {
                    Ok(reply) if reply.id() == id => return Ok(reply),
                    _ => continue,
                },
                Err(error) => {
                    last = ClientError::Io {
                        what: format!("DNS server {server}"),
                        source: error,
                    };
                    break;
                }
            }
        }
    }
    Err(last)
}

fn query_tcp(server: SocketAddr, query: &[u8], id: u16) -> Result<Message, ClientError> {
    let what = format!("DNS server {server} (TCP)");
    let mut stream =
        TcpStream::connect_timeout(&server, TIMEOUT).map_err(io_error(what.clone()))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(io_error(what.clone()))?;
    let len = u16::try_from(query.len()).map_err(|_| ClientError::Dns("query too long".into()))?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed).map_err(io_error(what.clone()))?;
    let mut len = [0u8; 2];
    stream
        .read_exact(&mut len)
        .map_err(io_error(what.clone()))?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).map_err(io_error(what))?;
    let reply = Message::from_vec(&reply)
        .map_err(|error| ClientError::Dns(format!("{server}: {error}")))?;
    if reply.id() != id {
        return Err(ClientError::Dns(format!("{server} answered another query")));
    }
    Ok(reply)
}

/// Resolves `name` the way the C library would for an IPv4 client: a literal address,
/// /etc/hosts, then each search candidate at each name server.
pub fn resolve(
    name: &str,
    hosts: &str,
    conf: &ResolvConf,
) -> Result<Option<(SocketAddr, Answer)>, ClientError> {
    if let Ok(ip) = name.parse::<Ipv4Addr>() {
        return Ok(Some((
            SocketAddr::new(IpAddr::V4(ip), 0),
            Answer {
                name: name.to_owned(),
                addresses: vec![ip],
            },
        )));
    }
    let from_hosts: Vec<Ipv4Addr> = hosts_lookup(hosts, name)
        .into_iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        })
        .collect();
    if !from_hosts.is_empty() {
        return Ok(Some((
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            Answer {
                name: name.to_owned(),
                addresses: from_hosts,
            },
        )));
    }
    let mut last_error = None;
    for server in &conf.nameservers {
        let mut reached = false;
        for candidate in conf.candidates(name) {
            match query_a(*server, &candidate) {
                Ok(Some(answer)) => return Ok(Some((*server, answer))),
                Ok(None) => reached = true,
                Err(error) => {
                    last_error = Some(error);
                    break;
                }
            }
        }
        // A server that answered for every candidate has settled it: the name is unknown.
        if reached && last_error.is_none() {
            return Ok(None);
        }
    }
    match last_error {
        Some(error) => Err(error),
        None => Ok(None),
    }
}

/// An `http://` URL's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// The request target, starting with `/`.
    pub path: String,
}

impl Url {
    pub fn parse(text: &str) -> Result<Url, ClientError> {
        let bad = || ClientError::Url(text.to_owned());
        let rest = text.strip_prefix("http://").unwrap_or(text);
        if rest.contains("://") {
            return Err(bad());
        }
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().map_err(|_| bad())?),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Url {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.path)
    }
}

/// A whole HTTP response: its status line and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status_line: String,
    pub status: u16,
    pub body: Vec<u8>,
}

/// One GET over a new connection to `addr`, asking with HTTP/1.0 so the body ends with the
/// connection (no chunked encoding to undo).
pub fn http_fetch(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse, ClientError> {
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(io_error(format!("connect {addr}")))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io_error(format!("connect {addr}")))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: berth-wget\r\nConnection: close\r\n\r\n"
    )
    .map_err(io_error(format!("send to {addr}")))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(io_error(format!("read from {addr}")))?;
    let head_end = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| ClientError::Response(addr.to_string()))?;
    let head = String::from_utf8_lossy(&response[..head_end]);
    let status_line = head.lines().next().unwrap_or_default().to_owned();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| ClientError::Response(addr.to_string()))?;
    Ok(HttpResponse {
        status_line,
        status,
        body: response[head_end + 4..].to_vec(),
    })
}

/// Where the system's resolver files are; tests point these elsewhere.
#[derive(Debug, Clone)]
pub struct System {
    pub hosts: String,
    pub resolv_conf: ResolvConf,
}

impl System {
    pub fn load() -> System {
        System {
            hosts: std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
            resolv_conf: ResolvConf::load(Path::new("/etc/resolv.conf")),
        }
    }
}

/// `wget [-q] [-O FILE|-] URL`: the body goes to FILE (`-` is standard output; by default
/// the last path segment, or index.html, as busybox does).
pub fn wget(args: &[String], system: &System) -> Result<(), ClientError> {
    let mut quiet = false;
    let mut output: Option<String> = None;
    let mut url = None;
    let mut words = args.iter();
    while let Some(word) = words.next() {
        match word.as_str() {
            "-q" => quiet = true,
            "-O" => output = words.next().cloned(),
            "-qO" | "-Oq" => {
                quiet = true;
                output = words.next().cloned();
            }
            flag if flag.starts_with("-qO") => {
                quiet = true;
                output = Some(flag["-qO".len()..].to_owned());
            }
            flag if flag.starts_with("-O") => output = Some(flag["-O".len()..].to_owned()),
            // Accepted for compatibility: a single attempt with a fixed timeout is all we do.
            "-T" => {
                words.next();
            }
            "-s" | "--spider" => {}
            flag if flag.starts_with('-') => {
                return Err(ClientError::Url(format!("unknown option {flag}")));
            }
            other => url = Some(other),
        }
    }
    let url = Url::parse(url.ok_or_else(|| ClientError::Url(String::new()))?)?;
    let (_, answer) = resolve(&url.host, &system.hosts, &system.resolv_conf)?
        .ok_or_else(|| ClientError::BadAddress(url.host.clone()))?;
    let ip = answer.addresses[0];
    let addr = SocketAddr::new(IpAddr::V4(ip), url.port);
    if !quiet {
        eprintln!("Connecting to {} ({addr})", url.host);
    }
    let response = http_fetch(addr, &url.host, &url.path, TIMEOUT)?;
    if !(200..300).contains(&response.status) {
        return Err(ClientError::Status(response.status_line));
    }
    let output = output.unwrap_or_else(|| {
        match url.path.rsplit('/').next().filter(|name| !name.is_empty()) {
            Some(name) => name.split('?').next().unwrap_or(name).to_owned(),
            None => "index.html".to_owned(),
        }
    });
    if output == "-" {
        io::stdout()
            .write_all(&response.body)
            .map_err(io_error("standard output"))?;
    } else {
        std::fs::write(&output, &response.body).map_err(io_error(output.clone()))?;
        if !quiet {
            eprintln!("saved '{output}' ({} bytes)", response.body.len());
        }
    }
    Ok(())
}

/// `nslookup NAME [SERVER]`: the answer in busybox's layout, so scripts that grep it keep
/// working.
pub fn nslookup(args: &[String], system: &System) -> Result<String, ClientError> {
    let (name, server) = match args {
        [name] => (name, None),
        [name, server] => (name, Some(server)),
        _ => return Err(ClientError::Url("usage: nslookup NAME [SERVER]".into())),
    };
    let mut conf = system.resolv_conf.clone();
    if let Some(server) = server {
        let addr = match server.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => SocketAddr::new(
                server
                    .parse::<IpAddr>()
                    .map_err(|_| ClientError::BadAddress(server.clone()))?,
                DNS_PORT,
            ),
        };
        conf.nameservers = vec![addr];
    }
    let mut text = String::new();
    let first = conf.nameservers[0];
    text.push_str(&format!("Server:\t\t{}\nAddress:\t{first}\n\n", first.ip()));
    // nslookup asks the server: /etc/hosts is not looked at, as with busybox's.
    let found = resolve(name, "", &conf)?;
    let Some((_, answer)) = found else {
        return Err(ClientError::Dns(format!("can't resolve '{name}'")));
    };
    for address in &answer.addresses {
        text.push_str(&format!("Name:\t{}\nAddress: {address}\n", answer.name));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_as_kubernetes_writes_it() {
        let conf = ResolvConf::parse(
            "nameserver 198.18.0.1\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
        );
        assert_eq!(conf.nameservers, ["198.18.0.1:53".parse().expect("addr")]);
        assert_eq!(conf.ndots, 5);
        assert_eq!(
            conf.candidates("web"),
            [
                "web.default.svc.cluster.local",
                "web.svc.cluster.local",
                "web.cluster.local",
                "web"
            ]
        );
        assert_eq!(conf.candidates("example.com.")[..], ["example.com"]);
        let plain = ResolvConf::parse("");
        assert_eq!(plain.nameservers, ["127.0.0.1:53".parse().expect("addr")]);
        assert_eq!(plain.candidates("example.com")[0], "example.com");
    }

    #[test]
    fn hosts_file() {
        let hosts = "127.0.0.1 localhost\n# 10.0.0.1 commented\n198.18.1.2 web-0 WEB\n";
        assert_eq!(
            hosts_lookup(hosts, "web"),
            [IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2))]
        );
        assert!(hosts_lookup(hosts, "commented").is_empty());
    }

    #[test]
    fn urls() {
        let url = Url::parse("http://web.default:8080/readyz?x=1").expect("url");
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("web.default", 8080, "/readyz?x=1")
        );
        let url = Url::parse("198.19.0.10").expect("url");
        assert_eq!((url.port, url.path.as_str()), (80, "/"));
        assert!(Url::parse("https://example.com/").is_err());
        assert!(Url::parse("http://:80/").is_err());
        assert!(Url::parse("http://host:http/").is_err());
    }
}
