//! berth-agent: the node agent. Runs pods through the Docker Engine, wires their network,
//! and programs the eBPF service datapath.

pub mod net;
pub mod podnet;
pub mod runtime;
