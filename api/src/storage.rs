//! Persistent data (`apiVersion: v1`): PersistentVolumeClaim and PersistentVolume.
//!
//! Berth provisions node-local volumes, like Rancher's local-path provisioner or a
//! Kubernetes `local` PersistentVolume: a claim is bound when the first pod that uses it
//! is scheduled (`WaitForFirstConsumer`), to a new volume — a directory the agent of that
//! node keeps under its local volume directory — pinned to that node by its node
//! affinity. The data outlives the pod; the volume goes with its claim (reclaim policy
//! `Delete`) or stays (`Retain`). One storage class exists, [`LOCAL_STORAGE_CLASS`], and
//! a local directory is on one node, so `ReadWriteOnce` is the only access mode.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    core::{ObjectReference, parse_memory_bytes},
    meta::ObjectMeta,
    validation::{FieldPath, Validator},
};

/// The storage class of node-local volumes, the only one and the default.
pub const LOCAL_STORAGE_CLASS: &str = "local";
pub use crate::scheduling::{
    HOSTNAME_LABEL, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
};
const ACCESS_MODES: &[&str] = &["ReadWriteOnce"];
const RECLAIM_POLICIES: &[&str] = &["Delete", "Retain"];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeClaim {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PersistentVolumeClaimSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PersistentVolumeClaimStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeClaimSpec {
    #[serde(default)]
    pub access_modes: Vec<String>,
    /// `requests.storage`: the size the volume is recorded with.
    #[serde(default)]
    pub resources: VolumeResourceRequirements,
    /// [`LOCAL_STORAGE_CLASS`] when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// `Filesystem`, the only mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
    /// The volume the claim is bound to: set by the control plane once, when the first
    /// pod using the claim is scheduled.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub volume_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeResourceRequirements {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeClaimStatus {
    /// `Pending` until bound, then `Bound`; `Lost` when its volume is gone.
    #[serde(default)]
    pub phase: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capacity: BTreeMap<String, String>,
}

impl PersistentVolumeClaim {
    pub(crate) fn validate(&self, v: &mut Validator) {
        self.validate_spec(v, &FieldPath::root("spec"));
    }

    /// The spec's rules at `spec`: also those of a StatefulSet's claim templates.
    pub(crate) fn validate_spec(&self, v: &mut Validator, spec: &FieldPath) {
        access_modes(v, &spec.child("accessModes"), &self.spec.access_modes);
        let requests = spec.child("resources").child("requests");
        match self.spec.resources.requests.get("storage") {
            None => v.error(&requests.key("storage"), "is required"),
            Some(size) => storage_size(v, &requests.key("storage"), size),
        }
        for name in self.spec.resources.requests.keys() {
            if name != "storage" {
                v.error(&requests.key(name), "only storage can be requested");
            }
        }
        if !self.spec.resources.limits.is_empty() {
            v.error(
                &spec.child("resources").child("limits"),
                "not supported: a local volume is not limited in size",
            );
        }
        // A claim may name a class the cluster does not provision, as in Kubernetes
        // (where it waits for one to appear): it is kept, Pending, with a warning.
        if let Some(class) = &self.spec.storage_class_name {
            let path = spec.child("storageClassName");
            v.dns_subdomain(&path, class);
            if class != LOCAL_STORAGE_CLASS {
                v.warn(
                    &path,
                    &format!(
                        "no storage class {class:?}: Berth provisions node-local volumes of class {LOCAL_STORAGE_CLASS:?}; the claim stays Pending"
                    ),
                );
            }
        }
        if let Some(mode) = &self.spec.volume_mode {
            v.one_of(&spec.child("volumeMode"), mode, &["Filesystem"]);
        }
        if !self.spec.volume_name.is_empty() {
            v.dns_subdomain(&spec.child("volumeName"), &self.spec.volume_name);
        }
    }

    /// The size asked for, in bytes (0 if unreadable: validation refuses that).
    pub fn requested_bytes(&self) -> u64 {
        self.spec
            .resources
            .requests
            .get("storage")
            .and_then(|size| parse_memory_bytes(size).ok())
            .unwrap_or(0)
    }

    /// Whether Berth can make the claim's volume: its class is the local one (or unset,
    /// which means that). A claim of another class waits, Pending, as a Kubernetes claim
    /// of a class no provisioner serves does.
    pub fn is_provisionable(&self) -> bool {
        self.spec
            .storage_class_name
            .as_deref()
            .is_none_or(|class| class == LOCAL_STORAGE_CLASS)
    }

    pub fn is_bound(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.phase == "Bound")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolume {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PersistentVolumeSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PersistentVolumeStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeSpec {
    #[serde(default)]
    pub capacity: BTreeMap<String, String>,
    #[serde(default)]
    pub access_modes: Vec<String>,
    /// `Delete` (the default of provisioned volumes): the directory goes with the claim;
    /// `Retain`: it stays until the volume is deleted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub persistent_volume_reclaim_policy: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub storage_class_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
    /// The directory on the node; the only volume source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalVolumeSource>,
    /// Which node holds it: a local volume is used only there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<VolumeNodeAffinity>,
    /// The claim bound to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_ref: Option<ObjectReference>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LocalVolumeSource {
    /// Absolute; the agent uses only paths under its local volume directory.
    pub path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeNodeAffinity {
    pub required: NodeSelector,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PersistentVolumeStatus {
    /// `Available`, `Bound` or `Released` (its claim is gone, the data kept).
    #[serde(default)]
    pub phase: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl PersistentVolume {
    pub(crate) fn validate(&self, v: &mut Validator) {
        let spec = FieldPath::root("spec");
        match self.spec.capacity.get("storage") {
            None => v.error(&spec.child("capacity").key("storage"), "is required"),
            Some(size) => storage_size(v, &spec.child("capacity").key("storage"), size),
        }
        access_modes(v, &spec.child("accessModes"), &self.spec.access_modes);
        if !self.spec.persistent_volume_reclaim_policy.is_empty() {
            v.one_of(
                &spec.child("persistentVolumeReclaimPolicy"),
                &self.spec.persistent_volume_reclaim_policy,
                RECLAIM_POLICIES,
            );
        }
        if !self.spec.storage_class_name.is_empty() {
            storage_class(
                v,
                &spec.child("storageClassName"),
                &self.spec.storage_class_name,
            );
        }
        if let Some(mode) = &self.spec.volume_mode {
            v.one_of(&spec.child("volumeMode"), mode, &["Filesystem"]);
        }
        match &self.spec.local {
            None => v.error(
                &spec.child("local"),
                "is required: Berth's volumes are node-local directories",
            ),
            Some(local) => {
                if !local.path.starts_with('/') || local.path.split('/').any(|p| p == "..") {
                    v.error(
                        &spec.child("local").child("path"),
                        "must be an absolute path without '..'",
                    );
                }
            }
        }
        match &self.spec.node_affinity {
            None => v.error(
                &spec.child("nodeAffinity"),
                "is required: a local volume is on one node",
            ),
            Some(affinity) => affinity
                .required
                .validate(v, &spec.child("nodeAffinity").child("required")),
        }
    }

    /// The node it is on, when its affinity names exactly one by [`HOSTNAME_LABEL`].
    pub fn node(&self) -> Option<&str> {
        let terms = &self
            .spec
            .node_affinity
            .as_ref()?
            .required
            .node_selector_terms;
        match terms.as_slice() {
            [term] => term.match_expressions.iter().find_map(|r| {
                (r.key == HOSTNAME_LABEL && r.operator == "In" && r.values.len() == 1)
                    .then(|| r.values[0].as_str())
            }),
            _ => None,
        }
    }

    pub fn reclaim_policy(&self) -> &str {
        match self.spec.persistent_volume_reclaim_policy.as_str() {
            "" => "Retain",
            policy => policy,
        }
    }
}

fn access_modes(v: &mut Validator, path: &FieldPath, modes: &[String]) {
    if modes.is_empty() {
        v.error(path, "is required: use ReadWriteOnce");
    }
    for (i, mode) in modes.iter().enumerate() {
        if !ACCESS_MODES.contains(&mode.as_str()) {
            v.error(
                &path.index(i),
                &format!(
                    "unsupported access mode {mode:?}: a local volume is on one node, use ReadWriteOnce"
                ),
            );
        }
    }
}

fn storage_size(v: &mut Validator, path: &FieldPath, size: &str) {
    match parse_memory_bytes(size) {
        Ok(0) => v.error(path, "must be greater than 0"),
        Ok(_) => {}
        Err(reason) => v.error(path, &reason),
    }
}

fn storage_class(v: &mut Validator, path: &FieldPath, class: &str) {
    if class != LOCAL_STORAGE_CLASS {
        v.error(
            path,
            &format!(
                "no storage class {class:?}: Berth provisions node-local volumes of class {LOCAL_STORAGE_CLASS:?}"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DecodeError, ResourceType, Source};

    fn errors<R: crate::Resource>(yaml: &str) -> Vec<String> {
        match ResourceType::of::<R>().decode(Source::Yaml(yaml)) {
            Ok(_) => Vec::new(),
            Err(DecodeError::Invalid { errors }) => errors.into_iter().map(|e| e.field).collect(),
            Err(other) => panic!("malformed: {other}"),
        }
    }

    #[test]
    fn claims_are_checked_by_field() {
        let valid = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n";
        assert_eq!(errors::<PersistentVolumeClaim>(valid), Vec::<String>::new());
        let invalid = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  accessModes: [ReadWriteMany]\n  storageClassName: fast\n  resources: {requests: {}}\n";
        assert_eq!(
            errors::<PersistentVolumeClaim>(invalid),
            [
                "spec.accessModes[0]",
                "spec.resources.requests[\"storage\"]"
            ],
            "an unknown class is only a warning: the claim waits, as in Kubernetes"
        );
    }

    #[test]
    fn a_volume_names_its_node_and_is_selected_there_only() {
        let volume = PersistentVolume {
            spec: PersistentVolumeSpec {
                node_affinity: Some(VolumeNodeAffinity {
                    required: NodeSelector::hostname("n1"),
                }),
                ..PersistentVolumeSpec::default()
            },
            ..PersistentVolume::default()
        };
        assert_eq!(volume.node(), Some("n1"));
        let required = &volume.spec.node_affinity.as_ref().expect("set").required;
        assert!(required.matches("n1", &BTreeMap::new()));
        assert!(!required.matches("n2", &BTreeMap::new()));
    }
}
