//! berth-api: the resource model shared by the control plane, the agent and berthctl.
//!
//! Kinds are Kubernetes-shaped (`apiVersion`/`kind`/`metadata`/`spec`/`status`) so
//! manifests written for Kubernetes mostly apply unchanged; fields Berth does not
//! implement are reported back by name as warnings instead of being silently dropped.

/// The agent ↔ control plane gRPC API (`proto/berth/agent/v1/agent.proto`).
#[cfg(feature = "grpc")]
pub mod agent {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("berth.agent.v1");
}
/// The control plane → node agent gRPC API (`proto/berth/node/v1/node.proto`).
#[cfg(feature = "grpc")]
pub mod node {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("berth.node.v1");
}
pub mod accounts;
pub mod apps;
pub mod autoscaling;
pub mod batch;
pub mod channels;
pub mod configuration;
pub mod core;
pub mod discovery;
pub mod disruption;
pub mod identity;
pub mod kinds;
pub mod kubeconfig;
pub mod managed;
pub mod manifest;
pub mod meta;
pub mod networking;
pub mod patch;
pub mod podsecurity;
pub mod policy;
pub mod rbac;
mod resource;
pub mod scheduling;
pub mod security;
pub mod selector;
pub mod storage;
pub mod table;
pub mod time;
pub mod validation;

pub use resource::{
    DecodeError, Decoded, MAX_OBJECT_BYTES, RESOURCE_TYPES, Resource, ResourceType, Source,
    TypeMeta, decode_typed, find_by_kind, find_by_plural, normalize,
};
