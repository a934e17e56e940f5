//! berth-agent: the node agent. Runs pods through the Docker Engine, wires their network,
//! and programs the eBPF service datapath.

pub use berth_net as net;

pub mod cluster;
pub mod config;
pub mod controlplane;
pub mod datapath;
pub mod dns;
pub mod endpoints;
pub mod enforcer;
pub mod failover;
pub mod ipam;
pub mod metrics;
pub mod nodeapi;
pub mod podnet;
pub mod pods;
pub mod policy;
pub mod probes;
pub mod programmer;
pub mod readiness;
pub mod routing;
pub mod run;
pub mod runtime;
pub mod services;
pub mod statefile;
pub mod usage;
