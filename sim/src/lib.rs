//! berth-sim: what tests and the scale benchmark run instead of real machines. Hollow
//! nodes speak the real agent API but run no containers (kubemark's idea); `server`
//! starts a real control plane on ephemeral ports with a client from its admin.conf.

pub mod hollow;
pub mod script;
pub mod server;
