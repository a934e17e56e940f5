//! berth-control: the control plane. The API server validates and stores resources in a
//! revisioned store and streams changes to watchers.

pub mod store;
