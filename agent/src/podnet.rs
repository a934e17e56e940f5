//! Pod network wiring, done the way a CNI plugin does it (Calico's routed model).
//!
//! Each pod gets a veth pair: `eth0` inside the container's network namespace with the pod
//! address as a /32, and a host-side end in the node's namespace with a /32 route to the
//! pod. The pod's default route goes via 169.254.1.1 "onlink": no subnet is shared with
//! the host, so every packet leaves through the host veth, where the datapath's TC program
//! sees it. The host answers for 169.254.1.1 with proxy ARP; the pod also gets a permanent
//! neighbour entry for it, so its traffic doesn't depend on the host having a route that
//! proxy ARP would need (test node namespaces often have none).
//!
//! All steps go through netlink in-process (crate::net); each error names its step in `ip`
//! terms, so it can be replayed by hand.

use std::{net::Ipv4Addr, path::Path};

use crate::net::{self, NetError};

/// The pod's next hop. Link-local, never assigned anywhere: only proxy ARP answers it.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The interface name inside the pod.
pub const POD_INTERFACE: &str = "eth0";
pub use crate::net::{MAX_INTERFACE_NAME, pod_netns_name};

#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error("interface name {0:?} is not usable: 1 to 15 letters, digits, '-' or '_'")]
    InvalidInterfaceName(String),
    #[error("pod uid {0:?} has no letters or digits to name an interface after")]
    InvalidUid(String),
    #[error("process {pid} has no network namespace to wire (has the container exited?)")]
    NoSuchProcess { pid: u32 },
    #[error("host veth {host_veth} exists already: the pod is wired, or a stale link is left")]
    AlreadyWired { host_veth: String },
    #[error("{step}: {source}")]
    Net {
        step: &'static str,
        #[source]
        source: NetError,
    },
}

/// What to wire.
#[derive(Debug, Clone, Copy)]
pub struct PodNetSpec<'a> {
    /// Any process in the container's network namespace (its init, from inspect).
    pub pid: u32,
    pub pod_ip: Ipv4Addr,
    /// Name of the host-side veth; see [`host_veth_name`].
    pub host_veth: &'a str,
    /// The named namespace the host side lives in; None is the agent's own namespace.
    /// Tests pass a node namespace here.
    pub host_netns: Option<&'a str>,
    /// The MTU of both ends of the pod's veth; None leaves the kernel's (1500). Lowered
    /// where pod traffic may cross the tunnel (see [`crate::routing::RoutingMode::pod_mtu`]).
    pub mtu: Option<u32>,
}

/// A wired pod; [`PodNetwork::teardown`] undoes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    pub pod_ip: Ipv4Addr,
    pub host_veth: String,
    pub host_netns: Option<String>,
    /// The container's namespace under /run/netns, so `ip -n <name>` reaches it.
    pub pod_netns: String,
}

/// The host-side veth name for a pod; see [`crate::net::pod_host_veth`].
pub fn host_veth_name(pod_uid: &str) -> Result<String, PodNetError> {
    net::pod_host_veth(pod_uid).ok_or_else(|| PodNetError::InvalidUid(pod_uid.to_owned()))
}

fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_INTERFACE_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// Wires the pod. On failure, whatever this call created is removed again.
pub fn setup(spec: &PodNetSpec<'_>) -> Result<PodNetwork, PodNetError> {
    if !valid_interface_name(spec.host_veth) {
        return Err(PodNetError::InvalidInterfaceName(spec.host_veth.to_owned()));
    }
    if !Path::new(&format!("/proc/{}/ns/net", spec.pid)).exists() {
        return Err(PodNetError::NoSuchProcess { pid: spec.pid });
    }
    // Checked before anything changes: cleaning up after a failure must never take down
    // the wiring of a pod that was already working.
    if net::link_exists(spec.host_netns, spec.host_veth) {
        return Err(PodNetError::AlreadyWired {
            host_veth: spec.host_veth.to_owned(),
        });
    }
    let network = PodNetwork {
        pod_ip: spec.pod_ip,
        host_veth: spec.host_veth.to_owned(),
        host_netns: spec.host_netns.map(str::to_owned),
        pod_netns: pod_netns_name(spec.host_veth),
    };
    match wire(spec.pid, &network, spec.mtu) {
        Ok(()) => Ok(network),
        Err(error) => {
            // Best effort: the wiring error is the one worth reporting.
            let _ = network.teardown();
            Err(error)
        }
    }
}

fn wire(pid: u32, network: &PodNetwork, mtu: Option<u32>) -> Result<(), PodNetError> {
    let step = |step: &'static str| move |source| PodNetError::Net { step, source };
    let host = network.host_netns.as_deref();
    let pod = Some(network.pod_netns.as_str());
    let host_veth = network.host_veth.as_str();
    let pod_cidr = format!("{}/32", network.pod_ip);

    // A name left by a pod whose wiring was never torn down points at a dead namespace.
    net::netns_delete(&network.pod_netns).map_err(step("removing a stale pod netns name"))?;
    net::netns_attach(&network.pod_netns, pid).map_err(step("naming the pod's netns"))?;
    net::veth_add_peer_in(host, host_veth, POD_INTERFACE, &network.pod_netns)
        .map_err(step("creating the pod's veth pair"))?;

    // Host side. Proxy ARP needs forwarding on the interface the request comes in on;
    // proxy_delay 0 answers at once instead of after up to 0.8 s of random delay.
    // accept_local: a pod answering a NodePort client has its reply translated (by the
    // datapath, as it leaves the pod) to come from the node's own address; without it the
    // kernel takes such a packet for a spoofed one and drops it.
    for (key, value) in [
        (format!("net/ipv4/conf/{host_veth}/forwarding"), "1"),
        (format!("net/ipv4/conf/{host_veth}/proxy_arp"), "1"),
        (format!("net/ipv4/neigh/{host_veth}/proxy_delay"), "0"),
        (format!("net/ipv4/conf/{host_veth}/accept_local"), "1"),
    ] {
        net::sysctl_set(host, &key, value).map_err(step("setting the host veth's sysctls"))?;
    }
    if let Some(mtu) = mtu {
        net::link_set_mtu(host, host_veth, mtu).map_err(step("setting the host veth's MTU"))?;
        net::link_set_mtu(pod, POD_INTERFACE, mtu).map_err(step("setting the pod's MTU"))?;
    }
    net::link_up(host, host_veth).map_err(step("bringing the host veth up"))?;
    let host_mac = net::link_mac(host, host_veth).map_err(step("reading the host veth's MAC"))?;

    // Pod side.
    net::addr_add(pod, POD_INTERFACE, &pod_cidr).map_err(step("adding the pod address"))?;
    net::link_up(pod, "lo").map_err(step("bringing the pod's lo up"))?;
    net::link_up(pod, POD_INTERFACE).map_err(step("bringing the pod's eth0 up"))?;
    net::neigh_replace_permanent(pod, GATEWAY, host_mac, POD_INTERFACE)
        .map_err(step("adding the gateway's neighbour entry in the pod"))?;
    let default_route = net::Route {
        destination: Ipv4Addr::UNSPECIFIED,
        prefix_len: 0,
        gateway: Some(GATEWAY),
        dev: POD_INTERFACE,
        onlink: true,
        mtu: None,
        protocol: None,
    };
    net::route_replace(pod, &default_route).map_err(step("adding the pod's default route"))?;

    let pod_route = net::Route {
        destination: network.pod_ip,
        prefix_len: 32,
        gateway: None,
        dev: host_veth,
        onlink: false,
        mtu: None,
        protocol: None,
    };
    net::route_replace(host, &pod_route).map_err(step("adding the host route to the pod"))?;
    Ok(())
}

impl PodNetwork {
    /// Removes the host veth (its peer and the routes over it go with it) and the netns
    /// name. Safe to repeat.
    pub fn teardown(&self) -> Result<(), PodNetError> {
        teardown(self.host_netns.as_deref(), &self.host_veth)
    }
}

/// Tears down a pod's wiring from the names alone, for an agent that restarted and no
/// longer holds the [`PodNetwork`]. Missing pieces are not an error.
pub fn teardown(host_netns: Option<&str>, host_veth: &str) -> Result<(), PodNetError> {
    let link = net::link_delete(host_netns, host_veth).map_err(|source| PodNetError::Net {
        step: "deleting the host veth",
        source,
    });
    // The name goes even when the link could not: it is only a bind mount.
    let name = net::netns_delete(&pod_netns_name(host_veth)).map_err(|source| PodNetError::Net {
        step: "removing the pod netns name",
        source,
    });
    link.and(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_fit_and_come_from_the_uid() {
        let name = host_veth_name("0F8E2A4C-1b2d-4e5f-8a9b-0c1d2e3f4a5b").expect("a uuid");
        assert_eq!(name, "bv0f8e2a4c1b2d4");
        assert_eq!(name.len(), MAX_INTERFACE_NAME);
        assert_eq!(host_veth_name("ab").expect("short uid"), "bvab");
        assert!(matches!(
            host_veth_name("--"),
            Err(PodNetError::InvalidUid(_))
        ));
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(valid_interface_name("bv0f8e2a4c1b2d4"));
        assert!(!valid_interface_name("bv0f8e2a4c1b2d4x"));
        assert!(!valid_interface_name(""));
        assert!(!valid_interface_name("a b"));
    }

    #[test]
    fn setup_refuses_bad_names_before_touching_anything() {
        let spec = PodNetSpec {
            pid: std::process::id(),
            pod_ip: Ipv4Addr::new(198, 18, 1, 2),
            host_veth: "much-too-long-name",
            host_netns: None,
            mtu: None,
        };
        assert!(matches!(
            setup(&spec),
            Err(PodNetError::InvalidInterfaceName(_))
        ));
    }
}
