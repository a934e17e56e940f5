//! berth-bench: Berth's eBPF datapath side by side with the paths users run today, on one
//! machine, in one run — the datapath and programming-time parts of `cargo xtask bench` —
//! and failover on a real cluster against Kubernetes' probe defaults ([`failover`]).
//!
//! The run: build the topology (one node namespace per mode and service count), program
//! every mode (timing it), then send the same wrk load to each mode in interleaved rounds
//! (a b c … a b c …) so slow drifts of the machine hit every mode alike, take medians, and
//! write docs/BENCHMARKS.md with SVG charts and the raw results.

pub mod agents;
pub mod agents_report;
pub mod connect_loop;
pub mod failover;
pub mod failover_report;
pub mod figures;
pub mod kubeproxy;
pub mod policies;
pub mod procs;
pub mod programming;
pub mod report;
pub mod run;
pub mod scale;
pub mod scale_report;
pub mod servers;
pub mod services;
pub mod store;
pub mod svg;
pub mod topology;
pub mod wrk;

use serde::{Deserialize, Serialize};

/// A way for the client pod to reach the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Mode {
    /// The client itself spreads its connections over the three backends' pod IPs: the
    /// limit, with the same number of busy server processes as behind a VIP.
    Direct,
    /// Every connection to one backend's pod IP (one server process busy).
    DirectOne,
    /// Like `Direct`, on a node whose pod veths run Berth's programs with no service to
    /// translate: what the programs cost on traffic they only inspect (a diagnostic).
    DirectEbpfAttached,
    /// A ClusterIP served by Berth: the socket program at the client's `connect()`, the
    /// TC programs on the pod veths for everything else.
    Ebpf,
    /// The same with the per-packet translation alone (the client pod's namespace not
    /// registered with the socket program), as before it existed: what it saves.
    EbpfPerPacket,
    /// `Ebpf` with 1,000 NetworkPolicies in place, the backends isolated ([`policies`]).
    EbpfPolicies,
    /// A ClusterIP served by kube-proxy-shaped iptables rules (iptables-legacy).
    Iptables,
    /// A ClusterIP served by HAProxy (TCP mode) in the node's namespace.
    Haproxy,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Direct => "direct (3 pod IPs)",
            Mode::DirectOne => "direct (1 pod IP)",
            Mode::DirectEbpfAttached => "direct, Berth programs attached",
            Mode::Ebpf => "Berth eBPF",
            Mode::EbpfPerPacket => "Berth eBPF, per-packet translation only",
            Mode::EbpfPolicies => "Berth eBPF, 1,000 NetworkPolicies",
            Mode::Iptables => "iptables (kube-proxy)",
            Mode::Haproxy => "HAProxy",
        }
    }

    /// Whether the service count matters (direct has no services).
    pub fn has_services(self) -> bool {
        !matches!(
            self,
            Mode::Direct | Mode::DirectOne | Mode::DirectEbpfAttached
        )
    }
}
