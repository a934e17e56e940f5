//! Object metadata shared by every resource (the Kubernetes `metadata` block).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{FieldPath, Validator};

/// The namespace objects land in when a manifest names none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The namespaces every cluster has from its first start and that may not be deleted,
/// as in Kubernetes (manifests such as DaemonSets for node daemons name `kube-system`).
pub const SYSTEM_NAMESPACES: &[&str] = &[DEFAULT_NAMESPACE, "kube-system", "kube-public"];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Required on objects; empty in pod templates.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub name: String,
    /// Empty for cluster-scoped kinds; filled with `default` for namespaced ones.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace: String,
    /// Set by the server at creation; never changes afterwards.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub uid: String,
    /// The store revision of the object's last write. Sending it back on update asks
    /// for optimistic concurrency: the write fails with a conflict if it is stale.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub resource_version: String,
    /// Bumped by the server whenever `spec` changes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: i64,
    /// RFC 3339, set by the server.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub creation_timestamp: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
    /// RFC 3339, set by the server when a graceful deletion starts: the time by which the
    /// object should be gone. Kept across updates; users cannot set or clear it.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub deletion_timestamp: String,
    /// The grace the deletion was given, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<i64>,
    /// Who owns which fields (server-side apply); kept by the server across writes that
    /// leave it out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_fields: Vec<crate::managed::ManagedFieldsEntry>,
}

/// A string that clients may send as `null` (Go's kubectl writes a zero time, such as a
/// pod template's `creationTimestamp`, as `null`): read as empty.
fn nullable<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.unwrap_or_default())
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    #[serde(default)]
    pub controller: bool,
}

impl ObjectMeta {
    /// Checks what a client may set; server-owned fields are overwritten, not checked.
    pub(crate) fn validate(
        &self,
        namespaced: bool,
        path_segment_name: bool,
        v: &mut Validator,
        path: &FieldPath,
    ) {
        let name_path = path.child("name");
        if self.name.is_empty() {
            v.error(&name_path, "is required");
        } else if path_segment_name {
            // Kubernetes' rule for RBAC names: anything that stays one URL path segment.
            if matches!(self.name.as_str(), "." | "..") || self.name.contains(['/', '%']) {
                v.error(
                    &name_path,
                    "may not be '.' or '..' and may not contain '/' or '%'",
                );
            }
        } else {
            v.dns_subdomain(&name_path, &self.name);
        }
        let ns_path = path.child("namespace");
        if namespaced {
            if !self.namespace.is_empty() {
                v.dns_label(&ns_path, &self.namespace);
            }
        } else if !self.namespace.is_empty() {
            v.error(&ns_path, "must be empty: this kind is cluster-scoped");
        }
        let labels = path.child("labels");
        for (key, value) in &self.labels {
            v.label_key(&labels.key(key), key);
            v.label_value(&labels.key(key), value);
        }
        let annotations = path.child("annotations");
        let mut total = 0usize;
        for (key, value) in &self.annotations {
            v.label_key(&annotations.key(key), key);
            total += key.len() + value.len();
        }
        if total > MAX_ANNOTATIONS_BYTES {
            v.error(
                &annotations,
                &format!("total size must be at most {MAX_ANNOTATIONS_BYTES} bytes"),
            );
        }
        for (i, entry) in self.managed_fields.iter().enumerate() {
            let p = path.child("managedFields").index(i);
            for problem in entry.problems() {
                v.error(&p.child(problem.0), problem.1);
            }
        }
    }
}

/// The same bound Kubernetes applies, so manifests that work there work here.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// `matchLabels` plus `matchExpressions`, as in Deployment and ReplicaSet selectors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl LabelSelector {
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    pub(crate) fn validate(&self, v: &mut Validator, path: &FieldPath) {
        if self.is_empty() {
            v.error(path, "must select at least one label");
        }
        let labels = path.child("matchLabels");
        for (key, value) in &self.match_labels {
            v.label_key(&labels.key(key), key);
            v.label_value(&labels.key(key), value);
        }
        for (i, req) in self.match_expressions.iter().enumerate() {
            let p = path.child("matchExpressions").index(i);
            v.label_key(&p.child("key"), &req.key);
            match req.operator.as_str() {
                "In" | "NotIn" => {
                    if req.values.is_empty() {
                        v.error(&p.child("values"), "must be non-empty for In and NotIn");
                    }
                }
                "Exists" | "DoesNotExist" => {
                    if !req.values.is_empty() {
                        v.error(
                            &p.child("values"),
                            "must be empty for Exists and DoesNotExist",
                        );
                    }
                }
                other => v.error(
                    &p.child("operator"),
                    &format!("unknown operator {other:?}: use In, NotIn, Exists or DoesNotExist"),
                ),
            }
            for (j, value) in req.values.iter().enumerate() {
                v.label_value(&p.child("values").index(j), value);
            }
        }
    }

    /// Whether an object with these labels is selected. An empty selector selects nothing,
    /// so a half-written controller never adopts every pod in a namespace.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        if self.is_empty() {
            return false;
        }
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|req| {
                let value = labels.get(&req.key);
                match req.operator.as_str() {
                    "In" => value.is_some_and(|v| req.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !req.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}
