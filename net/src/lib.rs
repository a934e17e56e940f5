//! berth-net: links, addresses, routes, neighbours and network namespaces, configured
//! in-process over rtnetlink (and mount(2) for named namespaces), as iproute2 does.
//!
//! The agent configures the node the way a CNI plugin does, and one crate does it for the
//! agent's pod networking and for the tests' namespaces alike. Each operation's error
//! names it in `ip` terms (`ip -n <ns> link set dev eth0 up`), so a failed step can be
//! replayed by hand. Tests that want to show or change state the code under test does not
//! use [`ip`] (the `testing` feature).

use std::{
    io,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
        RouteProtocol, RouteScope, RouteType,
    },
};

mod netlink;
#[cfg(feature = "testing")]
mod testing;

use netlink::Rtnl;
#[cfg(feature = "testing")]
pub use testing::ip;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[cfg(feature = "testing")]
    #[error("could not run `ip {args}`: {source} (is iproute2 installed?)")]
    Spawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[cfg(feature = "testing")]
    #[error("`ip {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
    /// A netlink request the kernel refused; `op` is the request in `ip` terms.
    #[error("`ip {}{op}` failed: {source}", netns_option(.netns))]
    Netlink {
        op: String,
        netns: Option<String>,
        #[source]
        source: std::io::Error,
    },
    /// Creating, naming or removing a named namespace under /run/netns.
    #[error("`ip netns {op} {name}` failed: {source}")]
    Netns {
        op: &'static str,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not write {value} to /proc/sys/{key}: {source}")]
    Sysctl {
        key: String,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not enter network namespace {name}: {source}")]
    EnterNetns {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Linux interface names are at most 15 bytes (IFNAMSIZ less the terminator).
pub const MAX_INTERFACE_NAME: usize = 15;
const POD_HOST_VETH_PREFIX: &str = "bv";

/// The host-side veth name the agent gives a pod: `bv` and the first 13 letters and digits
/// of its uid (52 bits of a random uuid, so two pods on one node don't collide in
/// practice). None when the uid has no letters or digits. Kept here, not in the agent, so
/// tools that clean up after an agent (`cargo xtask down`) derive the same names.
pub fn pod_host_veth(pod_uid: &str) -> Option<String> {
    let tail: String = pod_uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(MAX_INTERFACE_NAME - POD_HOST_VETH_PREFIX.len())
        .collect();
    (!tail.is_empty()).then(|| format!("{POD_HOST_VETH_PREFIX}{tail}"))
}

/// Every pod namespace name in /run/netns, of whichever agent on this machine.
pub fn pod_netns_names() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(POD_NETNS_PREFIX))
        .collect()
}

const POD_NETNS_PREFIX: &str = "berth-pod-";

/// The /run/netns name given to a pod's namespace. Named after the host veth so it is
/// unique on the machine (test nodes share /run/netns) and found again after a restart.
pub fn pod_netns_name(host_veth: &str) -> String {
    format!("{POD_NETNS_PREFIX}{host_veth}")
}

fn netns_option(netns: &Option<String>) -> String {
    netns
        .as_deref()
        .map(|name| format!("-n {name} "))
        .unwrap_or_default()
}

const NETNS_DIR: &str = "/run/netns";

fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// A netlink socket in `netns` (or the calling thread's namespace). For another namespace
/// the socket is created on a helper thread that entered it: a socket keeps the namespace
/// it was created in, so the caller's own thread never changes namespace.
fn rtnl(netns: Option<&str>, op: &str) -> Result<Rtnl, NetError> {
    let opened = match netns {
        None => Rtnl::open(),
        Some(name) => in_netns(name, Rtnl::open)?,
    };
    opened.map_err(netlink_error(netns, op))
}

fn netlink_error(netns: Option<&str>, op: &str) -> impl FnOnce(io::Error) -> NetError {
    let op = op.to_owned();
    let netns = netns.map(str::to_owned);
    move |source| NetError::Netlink { op, netns, source }
}

/// Runs one request in `netns`, naming it `op` in its error.
fn request(
    netns: Option<&str>,
    op: &str,
    message: RouteNetlinkMessage,
    flags: u16,
) -> Result<Vec<RouteNetlinkMessage>, NetError> {
    rtnl(netns, op)?
        .request(message, flags)
        .map_err(netlink_error(netns, op))
}

/// Makes /run/netns exist and a shared mount, as iproute2 does, so names created here
/// show up in mount namespaces that were cloned from this one (and `ip netns` sees them).
fn prepare_netns_dir() -> Result<(), NetError> {
    let prepare_error = |source| NetError::Netns {
        op: "add",
        name: NETNS_DIR.to_owned(),
        source,
    };
    std::fs::create_dir_all(NETNS_DIR).map_err(prepare_error)?;
    let dir = c_path(Path::new(NETNS_DIR)).map_err(prepare_error)?;
    let make_shared = || {
        // SAFETY: `dir` is a NUL-terminated path; the other pointers may be null for a
        // propagation change.
        unsafe {
            libc::mount(
                std::ptr::null(),
                dir.as_ptr(),
                std::ptr::null(),
                libc::MS_SHARED | libc::MS_REC,
                std::ptr::null(),
            )
        }
    };
    if make_shared() == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EINVAL) {
        return Err(prepare_error(error));
    }
    // Not a mount point yet: bind it onto itself first.
    // SAFETY: both paths are NUL-terminated; fstype and data may be null for a bind mount.
    let bound = unsafe {
        libc::mount(
            dir.as_ptr(),
            dir.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if bound != 0 || make_shared() != 0 {
        return Err(prepare_error(io::Error::last_os_error()));
    }
    Ok(())
}

fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt as _;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))
}

fn bind_mount(source: &Path, target: &Path) -> io::Result<()> {
    let source = c_path(source)?;
    let target = c_path(target)?;
    // SAFETY: both paths are NUL-terminated; fstype and data may be null for a bind mount.
    let mounted = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if mounted != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives a namespace file a name: an empty file in /run/netns with `namespace` bind-mounted
/// on it, which keeps the namespace alive without any process in it. `namespace` is
/// called with the path to bind once the file exists.
fn name_netns(
    op: &'static str,
    name: &str,
    namespace: impl FnOnce(&Path) -> io::Result<()>,
) -> Result<(), NetError> {
    let netns_error = |source| NetError::Netns {
        op,
        name: name.to_owned(),
        source,
    };
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(netns_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a namespace name",
        )));
    }
    prepare_netns_dir()?;
    let path = netns_path(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(netns_error)?;
    namespace(&path).map_err(|error| {
        let _ = std::fs::remove_file(&path);
        netns_error(error)
    })
}

/// Creates a named network namespace (`/run/netns/<name>`).
pub fn netns_add(name: &str) -> Result<(), NetError> {
    name_netns("add", name, |path| {
        // A thread of its own unshares, so no other thread's namespace changes; the bind
        // mount keeps the new namespace after the thread ends.
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: unshare changes only the calling thread's network namespace.
                    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    bind_mount(Path::new("/proc/thread-self/ns/net"), path)
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    })
}

/// Deletes a named network namespace; a missing one is not an error.
pub fn netns_delete(name: &str) -> Result<(), NetError> {
    if !netns_exists(name) {
        return Ok(());
    }
    let path = netns_path(name);
    let delete_error = |source| NetError::Netns {
        op: "delete",
        name: name.to_owned(),
        source,
    };
    let target = c_path(&path).map_err(delete_error)?;
    // SAFETY: `target` is a NUL-terminated path. A lazy unmount, as iproute2 does: the
    // namespace lives on while processes or sockets still use it.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        let error = io::Error::last_os_error();
        // A file left without its mount (a crash between the two steps) is removed too.
        if error.raw_os_error() != Some(libc::EINVAL) {
            return Err(delete_error(error));
        }
    }
    std::fs::remove_file(&path).map_err(delete_error)
}

pub fn netns_exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// Gives the network namespace of process `pid` a name, so `ip -n <name>` reaches it.
pub fn netns_attach(name: &str, pid: u32) -> Result<(), NetError> {
    name_netns("attach", name, |path| {
        bind_mount(Path::new(&format!("/proc/{pid}/ns/net")), path)
    })
}

/// A namespace a link is created in or moved to: a /run/netns name, or else a pid's
/// namespace, as `ip ... netns <target>` takes it. The file stays open until the request
/// that names it by descriptor is done.
enum NetnsTarget {
    File(std::fs::File),
    Pid(u32),
}

impl NetnsTarget {
    fn open(target: &str) -> io::Result<Self> {
        match std::fs::File::open(netns_path(target)) {
            Ok(file) => Ok(NetnsTarget::File(file)),
            Err(error) => match target.parse() {
                Ok(pid) if error.kind() == io::ErrorKind::NotFound => Ok(NetnsTarget::Pid(pid)),
                _ => Err(error),
            },
        }
    }

    fn attribute(&self) -> LinkAttribute {
        match self {
            NetnsTarget::File(file) => LinkAttribute::NetNsFd(file.as_raw_fd()),
            NetnsTarget::Pid(pid) => LinkAttribute::NetNsPid(*pid),
        }
    }
}

fn veth_message(name: &str, peer: &str, peer_netns: Option<&NetnsTarget>) -> LinkMessage {
    let mut peer_message = LinkMessage::default();
    peer_message
        .attributes
        .push(LinkAttribute::IfName(peer.to_owned()));
    if let Some(target) = peer_netns {
        peer_message.attributes.push(target.attribute());
    }
    let mut message = LinkMessage::default();
    message.attributes = vec![
        LinkAttribute::IfName(name.to_owned()),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_message))),
        ]),
    ];
    message
}

/// Creates a veth pair in `netns` (or the current namespace).
pub fn veth_add(netns: Option<&str>, name: &str, peer: &str) -> Result<(), NetError> {
    let op = format!("link add {name} type veth peer name {peer}");
    let message = RouteNetlinkMessage::NewLink(veth_message(name, peer, None));
    request(netns, &op, message, NLM_F_CREATE | NLM_F_EXCL).map(drop)
}

/// Creates a veth pair in `netns` (or the current namespace) whose peer comes into being
/// in `peer_netns` (a namespace name, or a pid's namespace). Doing it in one step means
/// the peer never sits in the first namespace, where its name could collide.
pub fn veth_add_peer_in(
    netns: Option<&str>,
    name: &str,
    peer: &str,
    peer_netns: &str,
) -> Result<(), NetError> {
    let op = format!("link add {name} type veth peer name {peer} netns {peer_netns}");
    let target = NetnsTarget::open(peer_netns).map_err(netlink_error(netns, &op))?;
    let message = RouteNetlinkMessage::NewLink(veth_message(name, peer, Some(&target)));
    request(netns, &op, message, NLM_F_CREATE | NLM_F_EXCL).map(drop)
}

/// Moves a link into the named namespace (or a pid's namespace).
pub fn link_set_netns(netns: Option<&str>, link: &str, target: &str) -> Result<(), NetError> {
    let op = format!("link set dev {link} netns {target}");
    let target = NetnsTarget::open(target).map_err(netlink_error(netns, &op))?;
    let mut message = LinkMessage::default();
    message.header.index = link_index(netns, link)?;
    message.attributes.push(target.attribute());
    request(netns, &op, RouteNetlinkMessage::SetLink(message), 0).map(drop)
}

pub fn link_up(netns: Option<&str>, link: &str) -> Result<(), NetError> {
    let op = format!("link set dev {link} up");
    let mut message = LinkMessage::default();
    message.header.index = link_index(netns, link)?;
    message.header.flags = LinkFlags::Up;
    message.header.change_mask = LinkFlags::Up;
    request(netns, &op, RouteNetlinkMessage::SetLink(message), 0).map(drop)
}

/// A link's description as the kernel gives it, looked up by name.
fn link_get(netns: Option<&str>, link: &str) -> Result<LinkMessage, NetError> {
    let op = format!("link show dev {link}");
    let mut message = LinkMessage::default();
    message
        .attributes
        .push(LinkAttribute::IfName(link.to_owned()));
    request(netns, &op, RouteNetlinkMessage::GetLink(message), 0)?
        .into_iter()
        .find_map(|reply| match reply {
            RouteNetlinkMessage::NewLink(link) => Some(link),
            _ => None,
        })
        .ok_or_else(|| {
            netlink_error(netns, &op)(io::Error::new(
                io::ErrorKind::InvalidData,
                "the kernel answered without the link",
            ))
        })
}

pub fn link_exists(netns: Option<&str>, link: &str) -> bool {
    link_get(netns, link).is_ok()
}

/// Deletes a link (and with a veth, its peer); a missing link is not an error.
pub fn link_delete(netns: Option<&str>, link: &str) -> Result<(), NetError> {
    let index = match link_index(netns, link) {
        Ok(index) => index,
        Err(NetError::Netlink { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => {
            return Ok(());
        }
        Err(error) => return Err(error),
    };
    let op = format!("link delete dev {link}");
    let mut message = LinkMessage::default();
    message.header.index = index;
    request(netns, &op, RouteNetlinkMessage::DelLink(message), 0).map(drop)
}

/// Splits `198.18.0.1/24` into the address and the prefix length.
fn parse_cidr(cidr: &str) -> io::Result<(Ipv4Addr, u8)> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidInput, "not an IPv4 address/prefix");
    let (addr, prefix) = cidr.split_once('/').ok_or_else(invalid)?;
    let addr = addr.parse().map_err(|_| invalid())?;
    let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
    if prefix > 32 {
        return Err(invalid());
    }
    Ok((addr, prefix))
}

/// Adds an address in CIDR form (`198.18.0.1/24`) to a link.
pub fn addr_add(netns: Option<&str>, link: &str, cidr: &str) -> Result<(), NetError> {
    let op = format!("addr add {cidr} dev {link}");
    let (addr, prefix_len) = parse_cidr(cidr).map_err(netlink_error(netns, &op))?;
    let mut message = AddressMessage::default();
    message.header.family = AddressFamily::Inet;
    message.header.prefix_len = prefix_len;
    message.header.index = link_index(netns, link)?;
    message.attributes = vec![
        AddressAttribute::Local(addr.into()),
        AddressAttribute::Address(addr.into()),
    ];
    let message = RouteNetlinkMessage::NewAddress(message);
    request(netns, &op, message, NLM_F_CREATE | NLM_F_EXCL).map(drop)
}

/// An IPv4 route in the main table: `destination/prefix_len` out of `dev`, via `gateway`
/// or (without one) straight onto the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    pub destination: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dev: &'a str,
    /// The gateway counts as on the link even though no address of the link covers it.
    pub onlink: bool,
    /// The path MTU for the destination (`mtu N`); None leaves the link's.
    pub mtu: Option<u32>,
    /// The route's origin (`proto N`): who made it, so that a program removes only the
    /// routes it made. None is `boot`, what `ip route` sets.
    pub protocol: Option<u8>,
}

impl std::fmt::Display for Route<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix_len == 0 {
            write!(f, "default")?;
        } else {
            write!(f, "{}/{}", self.destination, self.prefix_len)?;
        }
        if let Some(gateway) = self.gateway {
            write!(f, " via {gateway}")?;
        }
        write!(f, " dev {}", self.dev)?;
        if self.onlink {
            write!(f, " onlink")?;
        }
        if let Some(mtu) = self.mtu {
            write!(f, " mtu {mtu}")?;
        }
        if let Some(protocol) = self.protocol {
            write!(f, " proto {protocol}")?;
        }
        Ok(())
    }
}

/// Adds or replaces a route.
pub fn route_replace(netns: Option<&str>, route: &Route<'_>) -> Result<(), NetError> {
    let op = format!("route replace {route}");
    let mut message = RouteMessage::default();
    message.header.address_family = AddressFamily::Inet;
    message.header.destination_prefix_length = route.prefix_len;
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    // What `ip route` sets unless told: "boot" routes, and a route without a gateway
    // reaches only the link.
    message.header.protocol = route
        .protocol
        .map_or(RouteProtocol::Boot, RouteProtocol::from);
    message.header.scope = match route.gateway {
        Some(_) => RouteScope::Universe,
        None => RouteScope::Link,
    };
    message.header.kind = RouteType::Unicast;
    if route.onlink {
        message.header.flags = RouteFlags::Onlink;
    }
    if route.prefix_len > 0 {
        message
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                route.destination,
            )));
    }
    if let Some(gateway) = route.gateway {
        message
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
    }
    message
        .attributes
        .push(RouteAttribute::Oif(link_index(netns, route.dev)?));
    if let Some(mtu) = route.mtu {
        message
            .attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    let message = RouteNetlinkMessage::NewRoute(message);
    request(netns, &op, message, NLM_F_CREATE | NLM_F_REPLACE).map(drop)
}

/// An IPv4 route of the main table as the kernel lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstalledRoute {
    pub destination: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub mtu: Option<u32>,
    pub protocol: u8,
}

impl InstalledRoute {
    fn from_message(message: &RouteMessage) -> Option<Self> {
        let header = &message.header;
        if header.address_family != AddressFamily::Inet {
            return None;
        }
        let mut route = InstalledRoute {
            destination: Ipv4Addr::UNSPECIFIED,
            prefix_len: header.destination_prefix_length,
            gateway: None,
            oif: None,
            mtu: None,
            protocol: u8::from(header.protocol),
        };
        let mut table = u32::from(header.table);
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Destination(RouteAddress::Inet(addr)) => route.destination = *addr,
                RouteAttribute::Gateway(RouteAddress::Inet(addr)) => route.gateway = Some(*addr),
                RouteAttribute::Oif(index) => route.oif = Some(*index),
                RouteAttribute::Table(number) => table = *number,
                RouteAttribute::Metrics(metrics) => {
                    for metric in metrics {
                        if let RouteMetric::Mtu(mtu) = metric {
                            route.mtu = Some(*mtu);
                        }
                    }
                }
                _ => {}
            }
        }
        (table == u32::from(RouteHeader::RT_TABLE_MAIN)).then_some(route)
    }
}

/// The IPv4 routes of the main table of `netns` (or the current namespace), all of them
/// or those whose origin is `protocol` (`ip route show proto N`).
pub fn routes(netns: Option<&str>, protocol: Option<u8>) -> Result<Vec<InstalledRoute>, NetError> {
    let op = match protocol {
        Some(protocol) => format!("route show proto {protocol}"),
        None => "route show".to_owned(),
    };
    let mut message = RouteMessage::default();
    message.header.address_family = AddressFamily::Inet;
    let replies = rtnl(netns, &op)?
        .dump(RouteNetlinkMessage::GetRoute(message))
        .map_err(netlink_error(netns, &op))?;
    Ok(replies
        .iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewRoute(message) => InstalledRoute::from_message(message),
            _ => None,
        })
        .filter(|route| protocol.is_none_or(|protocol| route.protocol == protocol))
        .collect())
}

/// Deletes the main table's route to `destination/prefix_len` made by `protocol`; a
/// missing one is not an error.
pub fn route_delete(
    netns: Option<&str>,
    destination: Ipv4Addr,
    prefix_len: u8,
    protocol: u8,
) -> Result<(), NetError> {
    let op = format!("route delete {destination}/{prefix_len} proto {protocol}");
    let mut message = RouteMessage::default();
    message.header.address_family = AddressFamily::Inet;
    message.header.destination_prefix_length = prefix_len;
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    message.header.protocol = RouteProtocol::from(protocol);
    message.header.scope = RouteScope::NoWhere;
    message
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(destination)));
    match request(netns, &op, RouteNetlinkMessage::DelRoute(message), 0) {
        Ok(_) => Ok(()),
        Err(NetError::Netlink { source, .. }) if source.raw_os_error() == Some(libc::ESRCH) => {
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// Where the kernel would send a packet for `destination`: `ip route get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteLookup {
    /// The next hop, when the destination is not on a directly connected link.
    pub gateway: Option<Ipv4Addr>,
    pub oif: u32,
}

pub fn route_get(netns: Option<&str>, destination: Ipv4Addr) -> Result<RouteLookup, NetError> {
    let op = format!("route get {destination}");
    let mut message = RouteMessage::default();
    message.header.address_family = AddressFamily::Inet;
    message.header.destination_prefix_length = 32;
    message
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(destination)));
    let replies = request(netns, &op, RouteNetlinkMessage::GetRoute(message), 0)?;
    replies
        .iter()
        .find_map(|reply| match reply {
            RouteNetlinkMessage::NewRoute(message) => {
                let mut gateway = None;
                let mut oif = None;
                for attribute in &message.attributes {
                    match attribute {
                        RouteAttribute::Gateway(RouteAddress::Inet(addr)) => gateway = Some(*addr),
                        RouteAttribute::Oif(index) => oif = Some(*index),
                        _ => {}
                    }
                }
                Some(RouteLookup { gateway, oif: oif? })
            }
            _ => None,
        })
        .ok_or_else(|| {
            netlink_error(netns, &op)(io::Error::new(
                io::ErrorKind::InvalidData,
                "the kernel answered without a route",
            ))
        })
}

/// An IPv4 address of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkAddress {
    pub ifindex: u32,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl LinkAddress {
    /// Whether `other` is on this address's subnet (a directly connected peer).
    pub fn covers(&self, other: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        u32::from(self.addr) & mask == u32::from(other) & mask
    }
}

/// Every IPv4 address of `netns` (or the current namespace): `ip -4 addr show`.
pub fn addresses(netns: Option<&str>) -> Result<Vec<LinkAddress>, NetError> {
    let op = "-4 addr show";
    let mut message = AddressMessage::default();
    message.header.family = AddressFamily::Inet;
    let replies = rtnl(netns, op)?
        .dump(RouteNetlinkMessage::GetAddress(message))
        .map_err(netlink_error(netns, op))?;
    Ok(replies
        .iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewAddress(message)
                if message.header.family == AddressFamily::Inet =>
            {
                message
                    .attributes
                    .iter()
                    .find_map(|attribute| match attribute {
                        AddressAttribute::Local(std::net::IpAddr::V4(addr)) => Some(LinkAddress {
                            ifindex: message.header.index,
                            addr: *addr,
                            prefix_len: message.header.prefix_len,
                        }),
                        _ => None,
                    })
            }
            _ => None,
        })
        .collect())
}

/// A link's name and MTU, looked up by index.
pub fn link_by_index(netns: Option<&str>, index: u32) -> Result<(String, u32), NetError> {
    let op = format!("link show index {index}");
    let mut message = LinkMessage::default();
    message.header.index = index;
    let reply = request(netns, &op, RouteNetlinkMessage::GetLink(message), 0)?
        .into_iter()
        .find_map(|reply| match reply {
            RouteNetlinkMessage::NewLink(link) => Some(link),
            _ => None,
        });
    let name = reply.as_ref().and_then(|link| {
        link.attributes
            .iter()
            .find_map(|attribute| match attribute {
                LinkAttribute::IfName(name) => Some(name.clone()),
                _ => None,
            })
    });
    let mtu = reply.as_ref().and_then(|link| {
        link.attributes
            .iter()
            .find_map(|attribute| match attribute {
                LinkAttribute::Mtu(mtu) => Some(*mtu),
                _ => None,
            })
    });
    name.zip(mtu).ok_or_else(|| {
        netlink_error(netns, &op)(io::Error::new(
            io::ErrorKind::InvalidData,
            "the kernel answered without the link's name and MTU",
        ))
    })
}

/// Sets a link's MTU.
pub fn link_set_mtu(netns: Option<&str>, link: &str, mtu: u32) -> Result<(), NetError> {
    let op = format!("link set dev {link} mtu {mtu}");
    let mut message = LinkMessage::default();
    message.header.index = link_index(netns, link)?;
    message.attributes.push(LinkAttribute::Mtu(mtu));
    request(netns, &op, RouteNetlinkMessage::SetLink(message), 0).map(drop)
}

/// The interface index of a link, as XDP and TC attachment report it.
pub fn link_index(netns: Option<&str>, link: &str) -> Result<u32, NetError> {
    link_get(netns, link).map(|message| message.header.index)
}

/// The MAC address of a link.
pub fn link_mac(netns: Option<&str>, link: &str) -> Result<[u8; 6], NetError> {
    let message = link_get(netns, link)?;
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::Address(bytes) => bytes.as_slice().try_into().ok(),
            _ => None,
        })
        .ok_or_else(|| {
            netlink_error(netns, &format!("link show dev {link}"))(io::Error::new(
                io::ErrorKind::InvalidData,
                "the link has no Ethernet address",
            ))
        })
}

/// The id this namespace knows the namespace of `link`'s peer by (the other end of a
/// veth, when it is in another namespace): what BPF socket look-ups name a namespace
/// by. None for a link whose peer is in this namespace, or that has no peer.
pub fn link_peer_netnsid(netns: Option<&str>, link: &str) -> Result<Option<u32>, NetError> {
    let message = link_get(netns, link)?;
    Ok(message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::LinkNetNsId(id) => u32::try_from(*id).ok(),
            _ => None,
        }))
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Adds or replaces a permanent neighbour (ARP) entry: `addr` is reached at `mac` over
/// `link`.
pub fn neigh_replace_permanent(
    netns: Option<&str>,
    addr: Ipv4Addr,
    mac: [u8; 6],
    link: &str,
) -> Result<(), NetError> {
    let op = format!(
        "neigh replace {addr} lladdr {} dev {link} nud permanent",
        format_mac(mac)
    );
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Inet;
    message.header.ifindex = link_index(netns, link)?;
    message.header.state = NeighbourState::Permanent;
    message.attributes = vec![
        NeighbourAttribute::Destination(NeighbourAddress::Inet(addr)),
        NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
    ];
    let message = RouteNetlinkMessage::NewNeighbour(message);
    request(netns, &op, message, NLM_F_CREATE | NLM_F_REPLACE).map(drop)
}

/// An IPv4 neighbour (ARP) entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    pub addr: Ipv4Addr,
    pub ifindex: u32,
    /// The link-layer address, once resolved.
    pub mac: Option<[u8; 6]>,
    /// The entry can be used to send (the kernel's NUD_VALID states: reachable, stale,
    /// delay, probe, permanent, noarp); `bpf_fib_lookup` finds only such entries.
    pub valid: bool,
    /// Resolution failed (no answer to ARP).
    pub failed: bool,
}

impl Neighbour {
    fn from_message(message: &NeighbourMessage) -> Option<Self> {
        if message.header.family != AddressFamily::Inet {
            return None;
        }
        let mut addr = None;
        let mut mac = None;
        for attribute in &message.attributes {
            match attribute {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => addr = Some(*ip),
                NeighbourAttribute::LinkLayerAddress(bytes) => {
                    mac = bytes.as_slice().try_into().ok();
                }
                _ => {}
            }
        }
        let state = message.header.state;
        Some(Neighbour {
            addr: addr?,
            ifindex: message.header.ifindex,
            mac,
            valid: matches!(
                state,
                NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe
                    | NeighbourState::Permanent
                    | NeighbourState::Noarp
            ),
            failed: state == NeighbourState::Failed,
        })
    }
}

/// Every IPv4 neighbour entry of `netns` (or the current namespace).
pub fn neighbours(netns: Option<&str>) -> Result<Vec<Neighbour>, NetError> {
    let op = "neigh show";
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Inet;
    let replies = rtnl(netns, op)?
        .dump(RouteNetlinkMessage::GetNeighbour(message))
        .map_err(netlink_error(netns, op))?;
    Ok(replies
        .iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewNeighbour(message) => Neighbour::from_message(message),
            _ => None,
        })
        .collect())
}

/// A change to the neighbour table, as the kernel announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighbourEvent {
    /// An entry was added or changed state or address.
    Changed(Neighbour),
    /// An entry was removed (garbage-collected, flushed, or its link went away).
    Removed(Neighbour),
    /// The kernel dropped announcements (the socket's buffer overflowed): read the table
    /// afresh with [`neighbours`].
    Lost,
}

/// A subscription to the neighbour table of the calling thread's namespace
/// (RTNLGRP_NEIGH): changes arrive as they happen instead of being polled for.
pub struct NeighbourEvents {
    rtnl: Rtnl,
}

const RTNLGRP_NEIGH: u32 = 3;

impl NeighbourEvents {
    /// Subscribes in the calling thread's namespace. `timeout` bounds each
    /// [`NeighbourEvents::next`], so a thread that waits for events can also stop.
    pub fn subscribe(timeout: std::time::Duration) -> Result<Self, NetError> {
        let op = "monitor neigh";
        let subscribe_error = netlink_error(None, op);
        let rtnl = Rtnl::subscribe(RTNLGRP_NEIGH).map_err(subscribe_error)?;
        rtnl.set_receive_timeout(timeout)
            .map_err(netlink_error(None, op))?;
        Ok(NeighbourEvents { rtnl })
    }

    /// The next announced changes; empty when the timeout passed without any.
    pub fn next(&self) -> Result<Vec<NeighbourEvent>, NetError> {
        let messages = match self.rtnl.receive() {
            Ok(messages) => messages,
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Vec::new());
            }
            Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => {
                return Ok(vec![NeighbourEvent::Lost]);
            }
            Err(error) => return Err(netlink_error(None, "monitor neigh")(error)),
        };
        Ok(messages
            .iter()
            .filter_map(|message| match message {
                RouteNetlinkMessage::NewNeighbour(message) => {
                    Neighbour::from_message(message).map(NeighbourEvent::Changed)
                }
                RouteNetlinkMessage::DelNeighbour(message) => {
                    Neighbour::from_message(message).map(NeighbourEvent::Removed)
                }
                _ => None,
            })
            .collect())
    }
}

/// Writes a sysctl of `netns` (or the current namespace). `key` is the path below
/// /proc/sys (`net/ipv4/conf/eth0/proxy_arp`): the dotted form is ambiguous for interface
/// names with dots. /proc/sys/net shows the namespace of the thread that opens it, so for
/// another namespace the write happens on a helper thread that entered it.
pub fn sysctl_set(netns: Option<&str>, key: &str, value: &str) -> Result<(), NetError> {
    let sysctl_error = |source| NetError::Sysctl {
        key: key.to_owned(),
        value: value.to_owned(),
        source,
    };
    if key.split('/').any(|part| part.is_empty() || part == "..") {
        return Err(sysctl_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a sysctl path",
        )));
    }
    let path = format!("/proc/sys/{key}");
    let written = match netns {
        None => std::fs::write(&path, value),
        Some(ns) => in_netns(ns, || std::fs::write(&path, value))?,
    };
    written.map_err(sysctl_error)
}

/// Moves the calling thread into the named network namespace. Only for threads that
/// exist to work in that namespace and end afterwards (see [`in_netns`]).
pub fn enter_netns(name: &str) -> Result<(), NetError> {
    enter_netns_at(&std::path::Path::new("/run/netns").join(name))
}

/// Moves the calling thread into the network namespace of a namespace file (a name in
/// /run/netns, or a process's `/proc/PID/ns/net`). Same rule as [`enter_netns`].
pub fn enter_netns_at(path: &std::path::Path) -> Result<(), NetError> {
    use std::os::fd::AsRawFd as _;
    let enter_error = |source| NetError::EnterNetns {
        name: path.display().to_string(),
        source,
    };
    let netns = std::fs::File::open(path).map_err(enter_error)?;
    // SAFETY: `netns` is an open namespace file for the duration of the call; setns
    // changes only the calling thread's network namespace.
    let entered = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
    if entered != 0 {
        return Err(enter_error(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs `f` on a thread that has entered the named network namespace, and returns what it
/// returns. Sockets `f` creates belong to that namespace for their whole life, so servers
/// and clients can be started there without `ip netns exec`. Only the helper thread ever
/// changes namespace; a panic in `f` is passed on to the caller.
pub fn in_netns<T, F>(name: &str, f: F) -> Result<T, NetError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    in_netns_at(&std::path::Path::new("/run/netns").join(name), f)
}

/// [`in_netns`] for a namespace file given by its path (`/proc/PID/ns/net`).
pub fn in_netns_at<T, F>(path: &std::path::Path, f: F) -> Result<T, NetError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let joined = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                enter_netns_at(path)?;
                Ok(f())
            })
            .join()
    });
    match joined {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
