//! berth-net: a thin wrapper over iproute2 (`ip`) for links, addresses, routes and network namespaces.
//!
//! The agent configures the node the way a CNI plugin does; going through `ip` keeps every
//! step visible and reproducible by hand (`ip -n <ns> ...`), and one helper does it for the
//! agent's pod networking and for the tests' namespaces alike.

use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("could not run `ip {args}`: {source} (is iproute2 installed?)")]
    Spawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`ip {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
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

/// Runs `ip [-n netns] args...` and returns its standard output.
pub fn ip(netns: Option<&str>, args: &[&str]) -> Result<String, NetError> {
    let mut full: Vec<&str> = Vec::with_capacity(args.len() + 2);
    if let Some(ns) = netns {
        full.extend(["-n", ns]);
    }
    full.extend_from_slice(args);
    let shown = full.join(" ");
    let output = Command::new("ip")
        .args(&full)
        .output()
        .map_err(|source| NetError::Spawn {
            args: shown.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(NetError::Failed {
            args: shown,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Creates a named network namespace (`/run/netns/<name>`).
pub fn netns_add(name: &str) -> Result<(), NetError> {
    ip(None, &["netns", "add", name]).map(drop)
}

/// Deletes a named network namespace; a missing one is not an error.
pub fn netns_delete(name: &str) -> Result<(), NetError> {
    if !netns_exists(name) {
        return Ok(());
    }
    ip(None, &["netns", "delete", name]).map(drop)
}

pub fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

/// Gives the network namespace of process `pid` a name, so `ip -n <name>` reaches it.
pub fn netns_attach(name: &str, pid: u32) -> Result<(), NetError> {
    ip(None, &["netns", "attach", name, &pid.to_string()]).map(drop)
}

/// Creates a veth pair in `netns` (or the current namespace).
pub fn veth_add(netns: Option<&str>, name: &str, peer: &str) -> Result<(), NetError> {
    ip(
        netns,
        &["link", "add", name, "type", "veth", "peer", "name", peer],
    )
    .map(drop)
}

/// Moves a link into the named namespace.
pub fn link_set_netns(netns: Option<&str>, link: &str, target: &str) -> Result<(), NetError> {
    ip(netns, &["link", "set", "dev", link, "netns", target]).map(drop)
}

pub fn link_up(netns: Option<&str>, link: &str) -> Result<(), NetError> {
    ip(netns, &["link", "set", "dev", link, "up"]).map(drop)
}

pub fn link_exists(netns: Option<&str>, link: &str) -> bool {
    ip(netns, &["link", "show", "dev", link]).is_ok()
}

/// Deletes a link (and with a veth, its peer); a missing link is not an error.
pub fn link_delete(netns: Option<&str>, link: &str) -> Result<(), NetError> {
    if !link_exists(netns, link) {
        return Ok(());
    }
    ip(netns, &["link", "delete", "dev", link]).map(drop)
}

/// Adds an address in CIDR form (`198.18.0.1/24`) to a link.
pub fn addr_add(netns: Option<&str>, link: &str, cidr: &str) -> Result<(), NetError> {
    ip(netns, &["addr", "add", cidr, "dev", link]).map(drop)
}

/// Adds or replaces a route: `route` is the destination and anything after it, as `ip route`
/// takes it (`["198.18.1.0/24", "via", "198.18.0.2"]`).
pub fn route_replace(netns: Option<&str>, route: &[&str]) -> Result<(), NetError> {
    let mut args = vec!["route", "replace"];
    args.extend_from_slice(route);
    ip(netns, &args).map(drop)
}

/// The interface index of a link, as XDP and TC attachment report it.
pub fn link_index(netns: Option<&str>, link: &str) -> Result<u32, NetError> {
    let out = ip(netns, &["-o", "link", "show", "dev", link])?;
    out.split(':')
        .next()
        .and_then(|index| index.trim().parse().ok())
        .ok_or_else(|| NetError::Failed {
            args: format!("-o link show dev {link}"),
            stderr: format!("unexpected output {out:?}"),
        })
}

/// The MAC address of a link.
pub fn link_mac(netns: Option<&str>, link: &str) -> Result<[u8; 6], NetError> {
    let out = ip(netns, &["-o", "link", "show", "dev", link])?;
    let parse_error = || NetError::Failed {
        args: format!("-o link show dev {link}"),
        stderr: format!("no link/ether address in {out:?}"),
    };
    let text = out
        .split_whitespace()
        .skip_while(|word| *word != "link/ether")
        .nth(1)
        .ok_or_else(parse_error)?;
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = parts
            .next()
            .and_then(|part| u8::from_str_radix(part, 16).ok())
            .ok_or_else(parse_error)?;
    }
    Ok(mac)
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
    ip(
        netns,
        &[
            "link", "add", name, "type", "veth", "peer", "name", peer, "netns", peer_netns,
        ],
    )
    .map(drop)
}

/// Adds or replaces a permanent neighbour (ARP) entry: `ip` is reached at `mac` over `link`.
pub fn neigh_replace_permanent(
    netns: Option<&str>,
    ip_addr: &str,
    mac: [u8; 6],
    link: &str,
) -> Result<(), NetError> {
    let mac = mac
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    ip(
        netns,
        &[
            "neigh",
            "replace",
            ip_addr,
            "lladdr",
            &mac,
            "dev",
            link,
            "nud",
            "permanent",
        ],
    )
    .map(drop)
}

/// Writes a sysctl of `netns` (or the current namespace). `key` is the path below
/// /proc/sys (`net/ipv4/conf/eth0/proxy_arp`): the dotted form is ambiguous for interface
/// names with dots. /proc/sys/net shows the namespace of whoever opens it, so for another
/// namespace the write runs under `ip netns exec`.
pub fn sysctl_set(netns: Option<&str>, key: &str, value: &str) -> Result<(), NetError> {
    if key.split('/').any(|part| part.is_empty() || part == "..") {
        return Err(NetError::Sysctl {
            key: key.to_owned(),
            value: value.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a sysctl path"),
        });
    }
    let path = format!("/proc/sys/{key}");
    match netns {
        None => std::fs::write(&path, value).map_err(|source| NetError::Sysctl {
            key: key.to_owned(),
            value: value.to_owned(),
            source,
        }),
        // Positional parameters keep the value and path out of the shell's parsing.
        Some(ns) => ip(
            None,
            &[
                "netns",
                "exec",
                ns,
                "sh",
                "-c",
                "echo \"$1\" > \"$2\"",
                "sysctl",
                value,
                &path,
            ],
        )
        .map(drop),
    }
}

/// Moves the calling thread into the named network namespace. Only for threads that
/// exist to work in that namespace and end afterwards (see [`in_netns`]).
pub fn enter_netns(name: &str) -> Result<(), NetError> {
    use std::os::fd::AsRawFd as _;
    let enter_error = |source| NetError::EnterNetns {
        name: name.to_owned(),
        source,
    };
    let netns =
        std::fs::File::open(std::path::Path::new("/run/netns").join(name)).map_err(enter_error)?;
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
    let joined = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                enter_netns(name)?;
                Ok(f())
            })
            .join()
    });
    match joined {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
