//! berth-agent: the node agent. Runs pods through the Docker Engine, wires their network,
//! and programs the eBPF service datapath.

pub mod datapath;
pub mod ipam;
pub use berth_net as net;
pub mod dns;
pub mod metrics;
pub mod podnet;
pub mod pods;
pub mod probes;
pub mod readiness;
pub mod runtime;
pub mod services;
