//! Namespace policy (`apiVersion: v1`): LimitRange, the defaults and bounds of each
//! container's CPU and memory in a namespace, applied when a pod is created.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    core::{parse_cpu_millis, parse_memory_bytes},
    meta::ObjectMeta,
    validation::{FieldPath, Validator},
};

/// The resources a LimitRange speaks of.
pub const LIMITED_RESOURCES: &[&str] = &["cpu", "memory"];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitRange {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: LimitRangeSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LimitRangeSpec {
    #[serde(default)]
    pub limits: Vec<LimitRangeItem>,
}

/// Bounds and defaults for each container (`type: Container`, the only type).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitRangeItem {
    #[serde(rename = "type")]
    pub type_: String,
    /// The limit of a container that sets none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub default: BTreeMap<String, String>,
    /// The request of a container that sets none (else its limit, as in Kubernetes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub default_request: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub min: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub max: BTreeMap<String, String>,
}

/// A quantity of `resource` in its base unit (millicores, bytes).
pub fn quantity(resource: &str, text: &str) -> Result<u64, String> {
    match resource {
        "cpu" => parse_cpu_millis(text),
        _ => parse_memory_bytes(text),
    }
}

impl LimitRange {
    pub(crate) fn validate(&self, v: &mut Validator) {
        for (i, item) in self.spec.limits.iter().enumerate() {
            let p = FieldPath::root("spec").child("limits").index(i);
            v.one_of(&p.child("type"), &item.type_, &["Container"]);
            for (field, values) in [
                ("default", &item.default),
                ("defaultRequest", &item.default_request),
                ("min", &item.min),
                ("max", &item.max),
            ] {
                for (resource, text) in values {
                    let at = p.child(field).key(resource);
                    if !LIMITED_RESOURCES.contains(&resource.as_str()) {
                        v.error(&at, "only cpu and memory are limited");
                    } else if let Err(reason) = quantity(resource, text) {
                        v.error(&at, &reason);
                    }
                }
            }
        }
    }
}

/// What a ResourceQuota may bound: object counts, and the CPU and memory the
/// namespace's pods request and are limited to (`cpu` and `memory` mean the requests).
pub const QUOTA_RESOURCES: &[&str] = &[
    "pods",
    "services",
    "configmaps",
    "secrets",
    "persistentvolumeclaims",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
    "cpu",
    "memory",
];

/// The kinds (plural) whose objects a quota counts.
pub const QUOTA_COUNTED: &[&str] = &[
    "pods",
    "services",
    "configmaps",
    "secrets",
    "persistentvolumeclaims",
];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceQuota {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ResourceQuotaSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ResourceQuotaStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResourceQuotaSpec {
    #[serde(default)]
    pub hard: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResourceQuotaStatus {
    #[serde(default)]
    pub hard: BTreeMap<String, String>,
    #[serde(default)]
    pub used: BTreeMap<String, String>,
}

/// A quota resource's amount in its base unit: a count, millicores or bytes.
pub fn quota_amount(resource: &str, text: &str) -> Result<u64, String> {
    match canonical_quota_resource(resource) {
        "requests.cpu" | "limits.cpu" => parse_cpu_millis(text),
        "requests.memory" | "limits.memory" => parse_memory_bytes(text),
        _ => text
            .parse::<u64>()
            .map_err(|_| format!("{text:?} is not a whole number")),
    }
}

/// `cpu` and `memory` are the requests, as in Kubernetes.
pub fn canonical_quota_resource(resource: &str) -> &str {
    match resource {
        "cpu" => "requests.cpu",
        "memory" => "requests.memory",
        other => other,
    }
}

/// An amount as a quota shows it: `500m` or `2` for CPU, `256Mi` or bytes for memory.
pub fn format_quota_amount(resource: &str, amount: u64) -> String {
    match canonical_quota_resource(resource) {
        "requests.cpu" | "limits.cpu" if amount.is_multiple_of(1000) => (amount / 1000).to_string(),
        "requests.cpu" | "limits.cpu" => format!("{amount}m"),
        "requests.memory" | "limits.memory" if amount > 0 && amount.is_multiple_of(1 << 20) => {
            format!("{}Mi", amount >> 20)
        }
        _ => amount.to_string(),
    }
}

impl ResourceQuota {
    pub(crate) fn validate(&self, v: &mut Validator) {
        for (resource, text) in &self.spec.hard {
            let at = FieldPath::root("spec").child("hard").key(resource);
            if !QUOTA_RESOURCES.contains(&resource.as_str()) {
                v.error(
                    &at,
                    &format!(
                        "unsupported resource: use one of {}",
                        QUOTA_RESOURCES.join(", ")
                    ),
                );
            } else if let Err(reason) = quota_amount(resource, text) {
                v.error(&at, &reason);
            }
        }
    }
}
