//! berth-control: the control plane. The API server validates resources, stores them in
//! a revisioned store and streams their changes to watchers.
//!
//! Public: what the binary, the tests and berth-sim start and inspect a server with
//! (`config`, `server`, `store`); everything else is the crate's own.

mod agent_api;
/// Where the allocation ranges and keys are, for configuration and controllers.
use registry::allocation;
mod api;
mod audit;
mod authn;
mod authz;
mod cluster_files;
pub mod config;
mod controllers;
mod credentials;
pub mod limits;
mod metrics;
mod node_batches;
mod node_client;
mod objects;
mod pki;
mod policy;
mod registry;
mod satokens;
pub mod server;
pub mod snapshot;
mod spdy;
pub mod store;
mod tokens;
mod usage;
mod util;
mod watch_cache;
