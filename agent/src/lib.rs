//! berth-agent: the node agent. Runs pods through the Docker Engine, wires their network,
//! and programs the eBPF service datapath.

pub mod datapath;
pub use berth_net as net;
pub mod dns;
pub mod metrics;
pub mod podnet;
pub mod runtime;
pub mod services;
