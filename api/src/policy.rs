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
