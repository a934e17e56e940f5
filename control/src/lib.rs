//! berth-control: the control plane. The API server validates resources, stores them in
//! a revisioned store and streams their changes to watchers.

pub mod agent_api;
pub mod api;
/// Where the allocation ranges and keys are, for configuration and controllers.
pub use registry::allocation;
pub mod client;
pub mod config;
pub mod controllers;
pub mod credentials;
pub mod ctl;
pub mod hollow;
pub mod kubeconfig;
pub mod metrics;
pub mod node_client;
pub mod objects;
pub mod pki;
pub mod registry;
pub mod server;
pub mod store;
pub mod tokens;
pub mod usage;
pub mod util;
pub mod watch_cache;
