//! berth-control: the control plane. The API server validates resources, stores them in
//! a revisioned store and streams their changes to watchers.
//!
//! Public: what the binary, the tests and berth-sim start and inspect a server with
//! (`config`, `server`, `store`); everything else is the crate's own.

mod agent_api;
/// Where the allocation ranges and keys are, for configuration and controllers.
use registry::allocation;
mod api;
pub mod config;
mod credentials;
// Public only until the typed-core branches land: they hold items only unit tests use
// (`Snapshot::from_objects`, `scheduler::choose_node`) or nothing uses (`Registry::ranges`).
pub mod controllers;
mod metrics;
mod node_client;
mod objects;
mod pki;
pub mod registry;
pub mod server;
pub mod store;
mod tokens;
mod usage;
mod util;
mod watch_cache;
