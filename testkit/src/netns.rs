//! Network namespaces that play nodes, pods and clients in tests. Each one is deleted when
//! its guard drops, which also removes the veth ends inside it.

use std::{
    process::{Child, Command, Output},
    thread,
};

use berth_net::{self as net, NetError};

use crate::{require_root, unique_name};

pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace named `<prefix><unique suffix>` with loopback up.
    pub fn new(prefix: &str) -> Result<Self, NetError> {
        require_root();
        let name = unique_name(prefix);
        net::netns_add(&name)?;
        let ns = NetNs { name };
        net::link_up(Some(&ns.name), "lo")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip` inside this namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String, NetError> {
        net::ip(Some(&self.name), args)
    }

    /// Sets a sysctl inside this namespace; `key` is the path below /proc/sys
    /// (`net/ipv4/ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) {
        net::sysctl_set(Some(&self.name), key, value)
            .unwrap_or_else(|error| panic!("in {}: {error}", self.name));
    }

    /// Runs a program inside this namespace and waits for it.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .unwrap_or_else(|error| panic!("running {program} in {}: {error}", self.name))
    }

    /// Starts a program inside this namespace; the guard kills it (by pid) on drop.
    pub fn spawn(&self, program: &str, args: &[&str]) -> ChildGuard {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .spawn()
            .unwrap_or_else(|error| panic!("starting {program} in {}: {error}", self.name));
        ChildGuard { child }
    }

    /// Starts a process that only sleeps inside this namespace, as a container's init
    /// would: code that wires pods by pid (podnet) gets its pid. Killed on drop.
    pub fn hold(&self) -> ChildGuard {
        use std::os::unix::fs::MetadataExt as _;
        let guard = self.spawn("sleep", &["infinity"]);
        let wanted = std::fs::metadata(format!("/run/netns/{}", self.name))
            .unwrap_or_else(|error| panic!("{}: {error}", self.name))
            .ino();
        // `ip netns exec` enters the namespace and then execs sleep under the same pid.
        for _ in 0..250 {
            let theirs = std::fs::metadata(format!("/proc/{}/ns/net", guard.id()));
            if theirs.is_ok_and(|meta| meta.ino() == wanted) {
                return guard;
            }
            thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("the holder process never entered {}", self.name);
    }

    /// Runs `f` on a fresh thread that has entered this namespace.
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        net::in_netns(&self.name, f)
            .unwrap_or_else(|error| panic!("entering {}: {error}", self.name))
    }

    /// Starts `f` on a thread inside this namespace and returns its handle.
    pub fn spawn_thread<F, R>(&self, f: F) -> thread::JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let name = self.name.clone();
        thread::spawn(move || {
            net::enter_netns(&name).unwrap_or_else(|error| panic!("entering {name}: {error}"));
            f()
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(error) = net::netns_delete(&self.name) {
            eprintln!("cleanup: {error}");
        }
    }
}

/// A child process killed and reaped on drop.
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects namespace `a` (interface `a_if`, address `a_cidr`) with namespace `b` through
/// a veth pair. Interfaces come up; addresses are added where given.
pub fn veth_between(
    a: &NetNs,
    a_if: &str,
    a_cidr: Option<&str>,
    b: &NetNs,
    b_if: &str,
    b_cidr: Option<&str>,
) -> Result<(), NetError> {
    net::veth_add(Some(a.name()), a_if, b_if)?;
    net::link_set_netns(Some(a.name()), b_if, b.name())?;
    for (ns, link, cidr) in [(a, a_if, a_cidr), (b, b_if, b_cidr)] {
        if let Some(cidr) = cidr {
            net::addr_add(Some(ns.name()), link, cidr)?;
        }
        net::link_up(Some(ns.name()), link)?;
    }
    Ok(())
}
