//! `discovery.k8s.io/v1` EndpointSlice: a Service's endpoints in pieces of at most
//! [`MAX_ENDPOINTS_PER_SLICE`], so a large Service is not one object near the size limit
//! and a change to one endpoint rewrites one slice.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    core::ObjectReference,
    meta::ObjectMeta,
    validation::{FieldPath, Validator},
};

pub const GROUP: &str = "discovery.k8s.io";
/// The label naming the Service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming the controller that manages a slice; slices managed by another are
/// left alone.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// What the control plane's slices say in [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "endpointslice-controller.berth.dev";
/// What [`MANAGED_BY_LABEL`] says on the slices mirrored from the Endpoints a user
/// writes for a Service without a selector (Kubernetes' mirroring controller).
pub const MIRRORED_BY: &str = "endpointslicemirroring-controller.berth.dev";
/// The most endpoints the controller puts in one slice (Kubernetes' default
/// `--max-endpoints-per-slice`).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// The most endpoints a slice may hold, whoever writes it (Kubernetes' validation).
const MAX_ENDPOINTS: usize = 1000;
const MAX_PORTS: usize = 100;
const ADDRESS_TYPES: &[&str] = &["IPv4", "IPv6", "FQDN"];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// IPv4, IPv6 or FQDN: what every endpoint's addresses are.
    pub address_type: String,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// One address in practice (a pod's IP); consumers may use the first only.
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: EndpointConditions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<ObjectReference>,
    /// The pod's `hostname` when its `subdomain` is this Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// Unset means unknown; consumers read an unknown `ready` as ready (Kubernetes' rule).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointConditions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// Ready to serve whether or not it is terminating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminating: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Unset: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

impl EndpointSlice {
    /// The Service the slice belongs to, by its label.
    pub fn service_name(&self) -> Option<&str> {
        self.metadata
            .labels
            .get(SERVICE_NAME_LABEL)
            .map(String::as_str)
    }

    pub(crate) fn validate(&self, v: &mut Validator) {
        v.one_of(
            &FieldPath::root("addressType"),
            &self.address_type,
            ADDRESS_TYPES,
        );
        let endpoints = FieldPath::root("endpoints");
        if self.endpoints.len() > MAX_ENDPOINTS {
            v.error(
                &endpoints,
                &format!(
                    "has {} endpoints; at most {MAX_ENDPOINTS}",
                    self.endpoints.len()
                ),
            );
        }
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let addresses = endpoints.index(i).child("addresses");
            if endpoint.addresses.is_empty() || endpoint.addresses.len() > 100 {
                v.error(&addresses, "must hold 1 to 100 addresses");
            }
            if self.address_type == "IPv4" {
                for (j, address) in endpoint.addresses.iter().enumerate() {
                    v.ipv4(&addresses.index(j), address);
                }
            }
        }
        let ports = FieldPath::root("ports");
        if self.ports.len() > MAX_PORTS {
            v.error(&ports, &format!("at most {MAX_PORTS} ports"));
        }
        for (i, port) in self.ports.iter().enumerate() {
            if let Some(number) = port.port {
                v.port(&ports.index(i).child("port"), number);
            }
            if let Some(protocol) = &port.protocol {
                v.protocol(&ports.index(i).child("protocol"), protocol);
            }
        }
    }
}
