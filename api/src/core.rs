//! Core kinds (`apiVersion: v1`): Namespace, Pod, Service, Endpoints, Node, Event.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    meta::ObjectMeta,
    scheduling::{NO_EXECUTE, NO_SCHEDULE, NodeSelector, Taint, node_label, untolerated},
    validation::{FieldPath, Validator},
};

/// The pod sandbox image the agent starts first in every pod: it only holds the pod's
/// network namespace (Kubernetes' pause image). `cargo xtask images` builds it.
pub const PAUSE_IMAGE: &str = "berth/pause:v1";

/// A port given either by number or by a container port's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i32),
    String(String),
}

// ---------------------------------------------------------------------------- Namespace

/// A cluster-scoped name scope for other objects. `default` always exists; deleting a
/// namespace deletes everything in it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NamespaceStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NamespaceStatus {
    /// `Active`, or `Terminating` while its objects are being deleted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
}

impl Namespace {
    pub(crate) fn validate(&self, v: &mut Validator) {
        // Namespaces are path segments and key prefixes: labels, not subdomains.
        v.dns_label(
            &FieldPath::root("metadata").child("name"),
            &self.metadata.name,
        );
        if let Some(status) = &self.status
            && !status.phase.is_empty()
        {
            v.one_of(
                &FieldPath::root("status").child("phase"),
                &status.phase,
                &["Active", "Terminating"],
            );
        }
    }
}

// ---------------------------------------------------------------------------- Pod

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PodStatus>,
}

impl Pod {
    /// Succeeded or Failed: its containers are done for good.
    pub fn is_terminal(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| matches!(s.phase.as_str(), "Succeeded" | "Failed"))
    }

    /// Deleted gracefully and waiting for its node to stop it (Kubernetes'
    /// deletionTimestamp).
    pub fn is_terminating(&self) -> bool {
        !self.metadata.deletion_timestamp.is_empty()
    }

    pub fn is_ready(&self) -> bool {
        self.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub containers: Vec<Container>,
    /// Set by the scheduler (or by the user, which bypasses scheduling).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Node taints the pod may be scheduled onto (or stay on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<crate::scheduling::Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<crate::scheduling::Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<crate::scheduling::TopologySpreadConstraint>,
    /// `Always` (default), `OnFailure` or `Never`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub restart_policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    /// Storage the pod's containers mount (`volumeMounts`), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Secrets of type `kubernetes.io/dockerconfigjson` in the pod's namespace: the
    /// credentials the node pulls the pod's images with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Not supported: must be empty (read so that a manifest with them is refused by
    /// name instead of run without them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ephemeral_containers: Vec<Container>,
    /// Not supported: must be false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    #[serde(
        default,
        rename = "hostPID",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub host_pid: bool,
    #[serde(
        default,
        rename = "hostIPC",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub host_ipc: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub share_process_namespace: bool,
    /// The ServiceAccount the pod runs as (its token is projected into the containers):
    /// `default` when unset.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account_name: String,
    /// The deprecated alias of `serviceAccountName`, kept equal to it as Kubernetes does.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account: String,
    /// Whether the ServiceAccount's token is mounted; the ServiceAccount's own setting
    /// (default true) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
    /// What every container runs as, unless it says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<crate::security::PodSecurityContext>,
    /// The pod's host name (the pod's name when unset); with `subdomain`, also its DNS
    /// name `<hostname>.<subdomain>.<namespace>.svc.<domain>` through the headless
    /// Service named `subdomain`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subdomain: String,
}

/// Exactly one source; sources Berth does not know are refused by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirVolumeSource>,
    #[serde(
        default,
        rename = "downwardAPI",
        skip_serializing_if = "Option::is_none"
    )]
    pub downward_api: Option<DownwardApiVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaimVolumeSource>,
    /// Refused unless the cluster's admin allows the path (berth-control
    /// `--allow-host-path`): it reaches past the pod into the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPathVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projected: Option<ProjectedVolumeSource>,
}

/// Several ConfigMaps, Secrets and downward API fields as the files of one directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectedVolumeSource {
    #[serde(default)]
    pub sources: Vec<VolumeProjection>,
    #[serde(
        default,
        deserialize_with = "file_mode",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_mode: Option<i32>,
}

/// Exactly one source of a projected volume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeProjection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<KeysProjection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<KeysProjection>,
    #[serde(
        default,
        rename = "downwardAPI",
        skip_serializing_if = "Option::is_none"
    )]
    pub downward_api: Option<DownwardApiProjection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_token: Option<ServiceAccountTokenProjection>,
}

/// A token of the pod's ServiceAccount, bound to the pod, that its node refreshes
/// before it expires.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountTokenProjection {
    /// Who the token is for; the API server when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub audience: String,
    /// Requested lifetime; one hour when unset, at least 10 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_seconds: Option<i64>,
    pub path: String,
}

/// The shortest and longest lifetime a projected token may ask for (Kubernetes').
pub const TOKEN_EXPIRATION_SECONDS: std::ops::RangeInclusive<i64> = 600..=(1 << 32);

/// A ConfigMap's or Secret's keys in a projected volume (the mode is the volume's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeysProjection {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DownwardApiProjection {
    #[serde(default)]
    pub items: Vec<DownwardApiVolumeFile>,
}

/// A file or directory of the node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HostPathVolumeSource {
    /// Absolute, without `..`.
    pub path: String,
    /// What must be at `path` before the pod starts: one of [`HOST_PATH_TYPES`]; empty
    /// checks nothing.
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub type_: String,
}

/// Kubernetes' hostPath types.
pub const HOST_PATH_TYPES: &[&str] = &[
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
];

/// The volume bound to a claim in the pod's namespace: data that outlives the pod
/// (see [`crate::storage`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeClaimVolumeSource {
    pub claim_name: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// A ConfigMap's keys as files; they follow changes of the ConfigMap.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapVolumeSource {
    pub name: String,
    /// Only these keys, at these paths; all keys at their own names when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    /// File mode, 0644 by default (octal in YAML: `0400`).
    #[serde(
        default,
        deserialize_with = "file_mode",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_mode: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// A Secret's keys as files; they follow changes of the Secret.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretVolumeSource {
    pub secret_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    #[serde(
        default,
        deserialize_with = "file_mode",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_mode: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeyToPath {
    pub key: String,
    /// Relative, without `..`.
    pub path: String,
    #[serde(
        default,
        deserialize_with = "file_mode",
        skip_serializing_if = "Option::is_none"
    )]
    pub mode: Option<i32>,
}

/// An empty directory for the pod's life, shared by its containers: on the node's disk,
/// or with `medium: Memory` a tmpfs of at most `sizeLimit`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDirVolumeSource {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub medium: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<String>,
}

/// Pod fields as files; they follow changes of labels and annotations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DownwardApiVolumeSource {
    #[serde(default)]
    pub items: Vec<DownwardApiVolumeFile>,
    #[serde(
        default,
        deserialize_with = "file_mode",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_mode: Option<i32>,
}

/// Exactly one of `fieldRef` (one of [`DOWNWARD_FIELD_PATHS`], or one label or
/// annotation) or `resourceFieldRef` (with `containerName`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DownwardApiVolumeFile {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<ObjectFieldSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_field_ref: Option<ResourceFieldSelector>,
    #[serde(
        default,
        deserialize_with = "file_mode",
        skip_serializing_if = "Option::is_none"
    )]
    pub mode: Option<i32>,
}

/// What a downward API file may hold besides one label or annotation: as in Kubernetes,
/// only what is known before the pod runs.
pub const DOWNWARD_FIELD_PATHS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "metadata.labels",
    "metadata.annotations",
];

/// A volume of the pod, mounted into one container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: String,
    /// Absolute, and mounted once per container.
    pub mount_path: String,
    /// ConfigMap, Secret and downward API volumes are always read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// A path inside the volume to mount instead of its root (relative, without `..`).
    /// As in Kubernetes, a file mounted this way from a ConfigMap or Secret does not
    /// follow changes of the object.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_path: String,
}

/// A relative path without `..`, `.` or empty components: what a volume item or subPath
/// may be.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if path.starts_with('/') {
        return Err("must be a relative path".to_owned());
    }
    if path.split('/').any(|part| part == "..") {
        return Err("must not contain '..'".to_owned());
    }
    if path.split('/').any(|part| part.is_empty() || part == ".") || path.starts_with("..") {
        return Err("must not contain empty or '.' components or start with '..'".to_owned());
    }
    Ok(())
}

/// A file mode as a number (JSON: `420`), or as YAML 1.1 writes octal, which is what
/// Kubernetes manifests use (`0400`, read by YAML 1.2 parsers as a string): a leading
/// `0` or `0o` means octal.
fn file_mode<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Mode {
        Number(i32),
        Text(String),
    }
    match Option::<Mode>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Mode::Number(mode)) => Ok(Some(mode)),
        Some(Mode::Text(text)) => {
            let digits = text
                .strip_prefix("0o")
                .or_else(|| text.strip_prefix('0'))
                .filter(|digits| !digits.is_empty())
                .ok_or_else(|| {
                    serde::de::Error::custom(format!("{text:?} is not a file mode such as 0644"))
                })?;
            i32::from_str_radix(digits, 8).map(Some).map_err(|_| {
                serde::de::Error::custom(format!("{text:?} is not an octal file mode"))
            })
        }
    }
}

fn check_mode(v: &mut Validator, path: &FieldPath, mode: Option<i32>) {
    if let Some(mode) = mode
        && !(0..=0o777).contains(&mode)
    {
        v.error(path, "must be a file mode between 0000 and 0777 (octal)");
    }
}

impl Volume {
    fn validate(&self, v: &mut Validator, path: &FieldPath, pod: &PodSpec) {
        v.dns_label(&path.child("name"), &self.name);
        let sources = [
            self.config_map.is_some(),
            self.secret.is_some(),
            self.empty_dir.is_some(),
            self.downward_api.is_some(),
            self.persistent_volume_claim.is_some(),
            self.host_path.is_some(),
            self.projected.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            v.error(
                path,
                "must have exactly one source: configMap, secret, emptyDir, downwardAPI, persistentVolumeClaim, hostPath or projected",
            );
        }
        if let Some(source) = &self.host_path {
            let p = path.child("hostPath");
            if !source.path.starts_with('/') || source.path.split('/').any(|part| part == "..") {
                v.error(&p.child("path"), "must be an absolute path without '..'");
            }
            if !source.type_.is_empty() {
                v.one_of(&p.child("type"), &source.type_, HOST_PATH_TYPES);
            }
        }
        if let Some(source) = &self.persistent_volume_claim {
            v.dns_subdomain(
                &path.child("persistentVolumeClaim").child("claimName"),
                &source.claim_name,
            );
        }
        let items = |v: &mut Validator, p: &FieldPath, items: &[KeyToPath]| {
            for (i, item) in items.iter().enumerate() {
                let ip = p.child("items").index(i);
                if item.key.is_empty() {
                    v.error(&ip.child("key"), "is required");
                }
                if let Err(reason) = check_relative_path(&item.path) {
                    v.error(&ip.child("path"), &reason);
                }
                check_mode(v, &ip.child("mode"), item.mode);
            }
        };
        if let Some(source) = &self.config_map {
            let p = path.child("configMap");
            v.dns_subdomain(&p.child("name"), &source.name);
            items(v, &p, &source.items);
            check_mode(v, &p.child("defaultMode"), source.default_mode);
        }
        if let Some(source) = &self.secret {
            let p = path.child("secret");
            v.dns_subdomain(&p.child("secretName"), &source.secret_name);
            items(v, &p, &source.items);
            check_mode(v, &p.child("defaultMode"), source.default_mode);
        }
        if let Some(source) = &self.empty_dir {
            let p = path.child("emptyDir");
            if !source.medium.is_empty() {
                v.one_of(&p.child("medium"), &source.medium, &["Memory"]);
            }
            if let Some(size) = &source.size_limit {
                if let Err(reason) = parse_memory_bytes(size) {
                    v.error(&p.child("sizeLimit"), &reason);
                } else if source.medium.is_empty() {
                    v.warn(
                        &p.child("sizeLimit"),
                        "not enforced for an emptyDir on the node's disk (only with medium: Memory)",
                    );
                }
            }
        }
        if let Some(source) = &self.projected {
            let p = path.child("projected");
            check_mode(v, &p.child("defaultMode"), source.default_mode);
            for (i, projection) in source.sources.iter().enumerate() {
                let sp = p.child("sources").index(i);
                let parts = [
                    projection.config_map.is_some(),
                    projection.secret.is_some(),
                    projection.downward_api.is_some(),
                    projection.service_account_token.is_some(),
                ];
                if parts.iter().filter(|s| **s).count() != 1 {
                    v.error(
                        &sp,
                        "must have exactly one of configMap, secret, downwardAPI or serviceAccountToken",
                    );
                }
                if let Some(token) = &projection.service_account_token {
                    let tp = sp.child("serviceAccountToken");
                    if let Err(reason) = check_relative_path(&token.path) {
                        v.error(&tp.child("path"), &reason);
                    }
                    if let Some(seconds) = token.expiration_seconds
                        && !TOKEN_EXPIRATION_SECONDS.contains(&seconds)
                    {
                        v.error(
                            &tp.child("expirationSeconds"),
                            "must be at least 600 (10 minutes) and at most 4294967296",
                        );
                    }
                }
                for (field, keys) in [
                    ("configMap", &projection.config_map),
                    ("secret", &projection.secret),
                ] {
                    if let Some(keys) = keys {
                        v.dns_subdomain(&sp.child(field).child("name"), &keys.name);
                        items(v, &sp.child(field), &keys.items);
                    }
                }
                if let Some(downward) = &projection.downward_api {
                    downward_items(v, &sp.child("downwardAPI"), &downward.items, pod);
                }
            }
        }
        if let Some(source) = &self.downward_api {
            let p = path.child("downwardAPI");
            check_mode(v, &p.child("defaultMode"), source.default_mode);
            downward_items(v, &p, &source.items, pod);
        }
    }
}

/// The items of a downward API volume or projection at `p`.
fn downward_items(
    v: &mut Validator,
    p: &FieldPath,
    items: &[DownwardApiVolumeFile],
    pod: &PodSpec,
) {
    for (i, item) in items.iter().enumerate() {
        let ip = p.child("items").index(i);
        if let Err(reason) = check_relative_path(&item.path) {
            v.error(&ip.child("path"), &reason);
        }
        check_mode(v, &ip.child("mode"), item.mode);
        match (&item.field_ref, &item.resource_field_ref) {
            (Some(field), None) => {
                if !DOWNWARD_FIELD_PATHS.contains(&field.field_path.as_str())
                    && field_path_key(&field.field_path).is_none()
                {
                    v.error(
                        &ip.child("fieldRef").child("fieldPath"),
                        &format!(
                            "unsupported field path {:?}: use one of {}, metadata.labels['KEY'] or metadata.annotations['KEY']",
                            field.field_path,
                            DOWNWARD_FIELD_PATHS.join(", ")
                        ),
                    );
                }
            }
            (None, Some(resource)) => {
                resource.validate(v, &ip.child("resourceFieldRef"), pod, true);
            }
            _ => v.error(&ip, "must have exactly one of fieldRef or resourceFieldRef"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`; empty takes Kubernetes' default (`Always` for
    /// an image tagged `:latest` or not tagged, `IfNotPresent` otherwise).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_pull_policy: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Every key of a ConfigMap or Secret as a variable; `env` wins over these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(default, skip_serializing_if = "ResourceRequirements::is_empty")]
    pub resources: ResourceRequirements,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// Not supported: must be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<crate::security::SecurityContext>,
}

/// Hooks the node runs around a container's life; Berth supports `preStop`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    /// Runs when the pod is deleted, before its containers get SIGTERM; its time counts
    /// against the pod's termination grace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_stop: Option<LifecycleHandler>,
}

/// Exactly one of `exec` or `sleep`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LifecycleHandler {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep: Option<SleepAction>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExecAction {
    /// Run directly in the container, not through a shell.
    #[serde(default)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SleepAction {
    pub seconds: i64,
}

/// A variable set once, when the container is created: a later change of what
/// `valueFrom` points at reaches the next container, not this one (as in Kubernetes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    /// May reference earlier variables as `$(NAME)`; `$$` is a literal `$`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

/// Exactly one source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVarSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeySelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeySelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<ObjectFieldSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_field_ref: Option<ResourceFieldSelector>,
}

/// One key of a ConfigMap or Secret in the pod's namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeySelector {
    pub name: String,
    pub key: String,
    /// The container starts without the variable when the object or key is missing,
    /// instead of waiting for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// A field of the pod: one of [`ENV_FIELD_PATHS`], or `metadata.labels['KEY']` /
/// `metadata.annotations['KEY']`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectFieldSelector {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    pub field_path: String,
}

/// The fields `env[].valueFrom.fieldRef` may name besides single labels and annotations.
pub const ENV_FIELD_PATHS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "status.podIP",
];

/// A container's request or limit, in units of `divisor`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceFieldSelector {
    /// Required in a volume; in `env`, empty means the container itself.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_name: String,
    /// One of [`RESOURCE_FIELDS`].
    pub resource: String,
    /// `1` by default; e.g. `1m` for millicores, `1Mi` for mebibytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub divisor: Option<String>,
}

pub const RESOURCE_FIELDS: &[&str] = &[
    "limits.cpu",
    "limits.memory",
    "requests.cpu",
    "requests.memory",
];

/// Exactly one of `configMapRef` or `secretRef`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvFromSource {
    /// Put before every key to make the variable's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<OptionalReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<OptionalReference>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OptionalReference {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// An object of the same namespace, by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LocalObjectReference {
    pub name: String,
}

/// The values `containers[].imagePullPolicy` may take.
pub const IMAGE_PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];

/// The label or annotation a field path such as `metadata.labels['app']` names:
/// (`labels` or `annotations`, key).
pub fn field_path_key(path: &str) -> Option<(&str, &str)> {
    let (map, rest) = path
        .strip_prefix("metadata.labels[")
        .map(|rest| ("labels", rest))
        .or_else(|| {
            path.strip_prefix("metadata.annotations[")
                .map(|rest| ("annotations", rest))
        })?;
    let quoted = rest.strip_suffix(']')?;
    let key = quoted
        .strip_prefix('\'')
        .and_then(|k| k.strip_suffix('\''))
        .or_else(|| quoted.strip_prefix('"').and_then(|k| k.strip_suffix('"')))?;
    Some((map, key))
}

/// A divisor of `resource` in its base unit (millicores, bytes).
pub fn resource_divisor(resource: &str, divisor: Option<&str>) -> Result<u64, String> {
    let divisor = divisor.unwrap_or("1");
    let value = if resource.ends_with(".cpu") {
        parse_cpu_millis(divisor)?
    } else {
        parse_memory_bytes(divisor)?
    };
    if value == 0 {
        return Err(format!("divisor {divisor:?} must be more than 0"));
    }
    Ok(value)
}

impl EnvVarSource {
    fn validate(&self, v: &mut Validator, path: &FieldPath, pod: &PodSpec) {
        let mut sources = 0;
        for (field, selector) in [
            ("configMapKeyRef", &self.config_map_key_ref),
            ("secretKeyRef", &self.secret_key_ref),
        ] {
            if let Some(selector) = selector {
                sources += 1;
                let p = path.child(field);
                v.dns_subdomain(&p.child("name"), &selector.name);
                if selector.key.is_empty() {
                    v.error(&p.child("key"), "is required");
                }
            }
        }
        if let Some(field) = &self.field_ref {
            sources += 1;
            let p = path.child("fieldRef").child("fieldPath");
            if !ENV_FIELD_PATHS.contains(&field.field_path.as_str())
                && field_path_key(&field.field_path).is_none()
            {
                v.error(
                    &p,
                    &format!(
                        "unsupported field path {:?}: use one of {}, metadata.labels['KEY'] or metadata.annotations['KEY']",
                        field.field_path,
                        ENV_FIELD_PATHS.join(", ")
                    ),
                );
            }
        }
        if let Some(resource) = &self.resource_field_ref {
            sources += 1;
            resource.validate(v, &path.child("resourceFieldRef"), pod, false);
        }
        if sources != 1 {
            v.error(
                path,
                "must have exactly one of configMapKeyRef, secretKeyRef, fieldRef or resourceFieldRef",
            );
        }
    }
}

impl ResourceFieldSelector {
    pub(crate) fn validate(
        &self,
        v: &mut Validator,
        path: &FieldPath,
        pod: &PodSpec,
        container_required: bool,
    ) {
        if !RESOURCE_FIELDS.contains(&self.resource.as_str()) {
            v.one_of(&path.child("resource"), &self.resource, RESOURCE_FIELDS);
        } else if let Err(reason) = resource_divisor(&self.resource, self.divisor.as_deref()) {
            v.error(&path.child("divisor"), &reason);
        }
        if self.container_name.is_empty() {
            if container_required {
                v.error(&path.child("containerName"), "is required");
            }
        } else if !pod.containers.iter().any(|c| c.name == self.container_name) {
            v.error(
                &path.child("containerName"),
                &format!(
                    "no container of this pod is named {:?}",
                    self.container_name
                ),
            );
        }
    }
}

impl EnvFromSource {
    fn validate(&self, v: &mut Validator, path: &FieldPath) {
        match (&self.config_map_ref, &self.secret_ref) {
            (Some(reference), None) => {
                v.dns_subdomain(&path.child("configMapRef").child("name"), &reference.name)
            }
            (None, Some(reference)) => {
                v.dns_subdomain(&path.child("secretRef").child("name"), &reference.name)
            }
            _ => v.error(path, "must have exactly one of configMapRef or secretRef"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub container_port: i32,
    #[serde(default = "tcp")]
    pub protocol: String,
}

fn tcp() -> String {
    "TCP".to_owned()
}

/// Quantities in Kubernetes notation (`250m` CPU, `128Mi` memory).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResourceRequirements {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

impl ResourceRequirements {
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.limits.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    #[serde(default)]
    pub initial_delay_seconds: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HttpGetAction {
    #[serde(default = "slash")]
    pub path: String,
    pub port: IntOrString,
}

fn slash() -> String {
    "/".to_owned()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TcpSocketAction {
    pub port: IntOrString,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    #[serde(default)]
    pub phase: String,
    #[serde(default, rename = "podIP", skip_serializing_if = "String::is_empty")]
    pub pod_ip: String,
    #[serde(default, rename = "hostIP", skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// One per container, as the node's agent last saw it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_statuses: Vec<ContainerStatus>,
}

/// A container's state as Kubernetes reports it in `status.containerStatuses`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// The engine's id, `docker://<id>` as Kubernetes writes it.
    #[serde(
        default,
        rename = "containerID",
        skip_serializing_if = "String::is_empty"
    )]
    pub container_id: String,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub started: bool,
    #[serde(default)]
    pub restart_count: u32,
    #[serde(default)]
    pub state: ContainerState,
    /// How the previous container ended, once there has been one.
    #[serde(default)]
    pub last_state: ContainerState,
}

/// Exactly one of the three is set for a known state; none before the first report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<ContainerStateWaiting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<ContainerStateRunning>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated: Option<ContainerStateTerminated>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStateWaiting {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStateRunning {}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStateTerminated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub finished_at: String,
}

/// `type`/`status` pairs such as `Ready=True`, shared by pods, nodes and deployments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_transition_time: String,
    /// For node conditions: when the agent last confirmed it (its heartbeat).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_heartbeat_time: String,
}

impl PodSpec {
    /// The PersistentVolumeClaims its volumes use.
    pub fn claim_names(&self) -> impl Iterator<Item = &str> {
        self.volumes
            .iter()
            .filter_map(|v| v.persistent_volume_claim.as_ref())
            .map(|source| source.claim_name.as_str())
    }

    /// The ConfigMaps, Secrets and PersistentVolumeClaims the pod reads, as (kind, name):
    /// what its node may fetch.
    pub fn config_references(&self) -> BTreeSet<(&'static str, &str)> {
        let mut references = BTreeSet::new();
        for secret in &self.image_pull_secrets {
            references.insert(("Secret", secret.name.as_str()));
        }
        for claim in self.claim_names() {
            references.insert(("PersistentVolumeClaim", claim));
        }
        for volume in &self.volumes {
            for projection in volume.projected.iter().flat_map(|p| &p.sources) {
                if let Some(source) = &projection.config_map {
                    references.insert(("ConfigMap", source.name.as_str()));
                }
                if let Some(source) = &projection.secret {
                    references.insert(("Secret", source.name.as_str()));
                }
            }
            if let Some(source) = &volume.config_map {
                references.insert(("ConfigMap", source.name.as_str()));
            }
            if let Some(source) = &volume.secret {
                references.insert(("Secret", source.secret_name.as_str()));
            }
        }
        for container in &self.containers {
            for source in container.env.iter().filter_map(|e| e.value_from.as_ref()) {
                if let Some(selector) = &source.config_map_key_ref {
                    references.insert(("ConfigMap", selector.name.as_str()));
                }
                if let Some(selector) = &source.secret_key_ref {
                    references.insert(("Secret", selector.name.as_str()));
                }
            }
            for source in &container.env_from {
                if let Some(reference) = &source.config_map_ref {
                    references.insert(("ConfigMap", reference.name.as_str()));
                }
                if let Some(reference) = &source.secret_ref {
                    references.insert(("Secret", reference.name.as_str()));
                }
            }
        }
        references
    }

    pub(crate) fn validate(&self, v: &mut Validator, path: &FieldPath) {
        let containers = path.child("containers");
        if self.containers.is_empty() {
            v.error(&containers, "must have at least one container");
        }
        let mut names = BTreeSet::new();
        let mut host_ports = BTreeSet::new();
        for (i, c) in self.containers.iter().enumerate() {
            let p = containers.index(i);
            v.dns_label(&p.child("name"), &c.name);
            if !names.insert(c.name.as_str()) {
                v.error(
                    &p.child("name"),
                    &format!("duplicate container name {:?}", c.name),
                );
            }
            if c.image.trim().is_empty() {
                v.error(&p.child("image"), "is required");
            }
            if !c.image_pull_policy.is_empty() {
                v.one_of(
                    &p.child("imagePullPolicy"),
                    &c.image_pull_policy,
                    IMAGE_PULL_POLICIES,
                );
            }
            let mut port_names = BTreeSet::new();
            for (j, port) in c.ports.iter().enumerate() {
                let pp = p.child("ports").index(j);
                v.port(&pp.child("containerPort"), port.container_port);
                v.protocol(&pp.child("protocol"), &port.protocol);
                if !port.name.is_empty() {
                    v.dns_label(&pp.child("name"), &port.name);
                    if !port_names.insert(port.name.as_str()) {
                        v.error(
                            &pp.child("name"),
                            &format!("duplicate port name {:?}", port.name),
                        );
                    }
                }
                // Containers of a pod share one network namespace.
                if !host_ports.insert((port.container_port, port.protocol.as_str())) {
                    v.error(
                        &pp.child("containerPort"),
                        &format!(
                            "port {}/{} is used twice in this pod",
                            port.container_port, port.protocol
                        ),
                    );
                }
            }
            for (j, env) in c.env.iter().enumerate() {
                let ep = p.child("env").index(j);
                if env.name.is_empty() || env.name.contains('=') {
                    v.error(&ep.child("name"), "must be non-empty and contain no '='");
                }
                if let Some(source) = &env.value_from {
                    if !env.value.is_empty() {
                        v.error(&ep.child("valueFrom"), "may not be set together with value");
                    }
                    source.validate(v, &ep.child("valueFrom"), self);
                }
            }
            for (j, source) in c.env_from.iter().enumerate() {
                source.validate(v, &p.child("envFrom").index(j));
            }
            let mut mount_paths = BTreeSet::new();
            for (j, mount) in c.volume_mounts.iter().enumerate() {
                let mp = p.child("volumeMounts").index(j);
                if !self.volumes.iter().any(|volume| volume.name == mount.name) {
                    v.error(
                        &mp.child("name"),
                        &format!("no volume of this pod is named {:?}", mount.name),
                    );
                }
                if !mount.mount_path.starts_with('/') {
                    v.error(&mp.child("mountPath"), "must be an absolute path");
                } else if !mount_paths.insert(mount.mount_path.trim_end_matches('/')) {
                    v.error(&mp.child("mountPath"), "is mounted twice in this container");
                }
                if !mount.sub_path.is_empty()
                    && let Err(reason) = check_relative_path(&mount.sub_path)
                {
                    v.error(&mp.child("subPath"), &reason);
                }
            }
            validate_resources(v, &p.child("resources"), &c.resources);
            for (field, probe) in [
                ("readinessProbe", &c.readiness_probe),
                ("livenessProbe", &c.liveness_probe),
            ] {
                if let Some(probe) = probe {
                    probe.validate(v, &p.child(field), c);
                }
            }
            if let Some(pre_stop) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
                pre_stop.validate(v, &p.child("lifecycle").child("preStop"));
            }
            if let Some(context) = &c.security_context {
                context.validate(v, &p.child("securityContext"));
            }
        }
        if let Some(context) = &self.security_context {
            context.validate(v, &path.child("securityContext"));
        }
        if !self.restart_policy.is_empty() {
            v.one_of(
                &path.child("restartPolicy"),
                &self.restart_policy,
                &["Always", "OnFailure", "Never"],
            );
        }
        if !self.node_name.is_empty() {
            v.dns_subdomain(&path.child("nodeName"), &self.node_name);
        }
        // Each is one label of a DNS name.
        if !self.hostname.is_empty() {
            v.dns_label(&path.child("hostname"), &self.hostname);
        }
        if !self.subdomain.is_empty() {
            v.dns_label(&path.child("subdomain"), &self.subdomain);
        }
        for (key, value) in &self.node_selector {
            let p = path.child("nodeSelector").key(key);
            v.label_key(&p, key);
            v.label_value(&p, value);
        }
        if let Some(grace) = self.termination_grace_period_seconds {
            v.non_negative(&path.child("terminationGracePeriodSeconds"), grace);
        }
        validate_pod_placement(self, v, path);
        for (field, present, reason) in [
            (
                "initContainers",
                !self.init_containers.is_empty(),
                "init containers are not supported",
            ),
            (
                "ephemeralContainers",
                !self.ephemeral_containers.is_empty(),
                "ephemeral containers are not supported",
            ),
            (
                "hostNetwork",
                self.host_network,
                "pods always get a network namespace of their own",
            ),
            (
                "hostPID",
                self.host_pid,
                "pods always get a PID namespace of their own",
            ),
            (
                "hostIPC",
                self.host_ipc,
                "pods always get an IPC namespace of their own",
            ),
            (
                "shareProcessNamespace",
                self.share_process_namespace,
                "containers never share a PID namespace",
            ),
        ] {
            if present {
                v.error(&path.child(field), reason);
            }
        }
        for (i, c) in self.containers.iter().enumerate() {
            if c.startup_probe.is_some() {
                v.error(
                    &path.child("containers").index(i).child("startupProbe"),
                    "startup probes are not supported",
                );
            }
        }
        let mut volume_names = BTreeSet::new();
        for (i, volume) in self.volumes.iter().enumerate() {
            let vp = path.child("volumes").index(i);
            if !volume_names.insert(volume.name.as_str()) {
                v.error(
                    &vp.child("name"),
                    &format!("duplicate volume name {:?}", volume.name),
                );
            }
            volume.validate(v, &vp, self);
        }
        for (i, secret) in self.image_pull_secrets.iter().enumerate() {
            v.dns_subdomain(
                &path.child("imagePullSecrets").index(i).child("name"),
                &secret.name,
            );
        }
        if !self.service_account_name.is_empty() {
            v.dns_subdomain(
                &path.child("serviceAccountName"),
                &self.service_account_name,
            );
        }
        if !self.service_account.is_empty()
            && !self.service_account_name.is_empty()
            && self.service_account != self.service_account_name
        {
            v.error(
                &path.child("serviceAccount"),
                "must be the same as serviceAccountName (its deprecated alias)",
            );
        }
    }
}

impl LifecycleHandler {
    fn validate(&self, v: &mut Validator, path: &FieldPath) {
        match (&self.exec, &self.sleep) {
            (Some(exec), None) => {
                if exec.command.is_empty() {
                    v.error(&path.child("exec").child("command"), "must not be empty");
                }
            }
            (None, Some(sleep)) => {
                v.non_negative(&path.child("sleep").child("seconds"), sleep.seconds);
            }
            _ => v.error(path, "must specify exactly one handler: exec or sleep"),
        }
    }
}

impl Probe {
    fn validate(&self, v: &mut Validator, path: &FieldPath, container: &Container) {
        let port = match (&self.http_get, &self.tcp_socket) {
            (Some(http), None) => Some((path.child("httpGet").child("port"), &http.port)),
            (None, Some(tcp)) => Some((path.child("tcpSocket").child("port"), &tcp.port)),
            _ => {
                v.error(path, "must have exactly one of httpGet or tcpSocket");
                None
            }
        };
        if let Some((port_path, port)) = port {
            match port {
                IntOrString::Int(n) => v.port(&port_path, *n),
                IntOrString::String(name) => {
                    if !container.ports.iter().any(|p| &p.name == name) {
                        v.error(&port_path, &format!("no container port is named {name:?}"));
                    }
                }
            }
        }
        v.non_negative(
            &path.child("initialDelaySeconds"),
            self.initial_delay_seconds.into(),
        );
        for (field, value) in [
            ("periodSeconds", self.period_seconds),
            ("timeoutSeconds", self.timeout_seconds),
            ("failureThreshold", self.failure_threshold),
            ("successThreshold", self.success_threshold),
        ] {
            if value.is_some_and(|n| n < 1) {
                v.error(&path.child(field), "must be at least 1");
            }
        }
    }
}

fn validate_resources(v: &mut Validator, path: &FieldPath, resources: &ResourceRequirements) {
    for (section, map) in [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ] {
        for (name, quantity) in map {
            let p = path.child(section).key(name);
            let parsed = match name.as_str() {
                "cpu" => parse_cpu_millis(quantity).map(drop),
                "memory" => parse_memory_bytes(quantity).map(drop),
                other => Err(format!("unsupported resource {other:?}: use cpu or memory")),
            };
            if let Err(reason) = parsed {
                v.error(&p, &reason);
            }
        }
    }
}

/// `"2"`, `"0.5"` or `"250m"` → millicores.
pub fn parse_cpu_millis(quantity: &str) -> Result<u64, String> {
    parse_milli(quantity, 1e6)
        .ok_or_else(|| format!("{quantity:?} is not a CPU quantity such as 250m or 0.5"))
}

/// A decimal quantity up to `max` in thousandths: `"10"` → 10000, `"1.5"` → 1500,
/// `"250m"` → 250.
pub fn parse_milli(quantity: &str, max: f64) -> Option<u64> {
    if let Some(millis) = quantity.strip_suffix('m') {
        return millis.parse::<u64>().ok();
    }
    let value: f64 = quantity.parse().ok()?;
    if !value.is_finite() || !(0.0..=max).contains(&value) {
        return None;
    }
    // Kubernetes rounds sub-milli amounts up.
    Some((value * 1000.0).ceil() as u64)
}

/// `"128Mi"`, `"1G"`, `"1000"` → bytes.
pub fn parse_memory_bytes(quantity: &str) -> Result<u64, String> {
    const SUFFIXES: &[(&str, u64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let bad = || format!("{quantity:?} is not a memory quantity such as 128Mi or 1G");
    let (number, multiplier) = SUFFIXES
        .iter()
        .find_map(|(suffix, m)| quantity.strip_suffix(suffix).map(|n| (n, *m)))
        .unwrap_or((quantity, 1));
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(bad)
}

// ---------------------------------------------------------------------------- Service

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceStatus>,
}

/// Chooses how a Service's backends are picked; the annotation Cilium users know.
pub const LB_ALGORITHM_ANNOTATION: &str = "service.cilium.io/lb-algorithm";
/// The values [`LB_ALGORITHM_ANNOTATION`] takes; the first is the default.
pub const LB_ALGORITHMS: &[&str] = &["maglev", "random"];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    #[serde(default, skip_serializing_if = "LoadBalancerStatus::is_empty")]
    pub load_balancer: LoadBalancerStatus,
    /// `LoadBalancerReady` for type LoadBalancer: whether an address was assigned and,
    /// if not, why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LoadBalancerStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<LoadBalancerIngress>,
}

impl LoadBalancerStatus {
    pub fn is_empty(&self) -> bool {
        self.ingress.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LoadBalancerIngress {
    pub ip: String,
}

impl Service {
    /// The external addresses assigned to a LoadBalancer service.
    pub fn load_balancer_ips(&self) -> impl Iterator<Item = &str> {
        self.status
            .iter()
            .flat_map(|s| &s.load_balancer.ingress)
            .map(|i| i.ip.as_str())
    }

    /// `maglev` (default) or `random`, from [`LB_ALGORITHM_ANNOTATION`].
    pub fn lb_algorithm(&self) -> &str {
        self.metadata
            .annotations
            .get(LB_ALGORITHM_ANNOTATION)
            .map_or(LB_ALGORITHMS[0], String::as_str)
    }

    pub(crate) fn validate(&self, v: &mut Validator) {
        self.spec.validate(v, &FieldPath::root("spec"));
        if let Some(algorithm) = self.metadata.annotations.get(LB_ALGORITHM_ANNOTATION) {
            v.one_of(
                &FieldPath::root("metadata")
                    .child("annotations")
                    .key(LB_ALGORITHM_ANNOTATION),
                algorithm,
                LB_ALGORITHMS,
            );
        }
        for (i, ingress) in self
            .status
            .iter()
            .flat_map(|s| &s.load_balancer.ingress)
            .enumerate()
        {
            let path = FieldPath::root("status")
                .child("loadBalancer")
                .child("ingress")
                .index(i)
                .child("ip");
            v.ipv4(&path, &ingress.ip);
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// `ClusterIP` (default), `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub type_: String,
    /// Allocated by the control plane from `--service-cidr` when empty; `None` makes a
    /// headless service. Immutable once set.
    #[serde(
        default,
        rename = "clusterIP",
        skip_serializing_if = "String::is_empty"
    )]
    pub cluster_ip: String,
    /// `None` (default) or `ClientIP`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session_affinity: String,
    /// For type LoadBalancer: the address wanted from the load-balancer pool.
    #[serde(
        default,
        rename = "loadBalancerIP",
        skip_serializing_if = "String::is_empty"
    )]
    pub load_balancer_ip: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub port: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    /// For types NodePort and LoadBalancer; allocated by the control plane when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<i32>,
    #[serde(default = "tcp")]
    pub protocol: String,
}

impl ServiceSpec {
    /// Whether the ports are also served on every node's addresses.
    pub fn has_node_ports(&self) -> bool {
        matches!(self.type_.as_str(), "NodePort" | "LoadBalancer")
    }

    pub fn is_headless(&self) -> bool {
        self.cluster_ip == "None"
    }

    pub(crate) fn validate(&self, v: &mut Validator, path: &FieldPath) {
        let ports = path.child("ports");
        if self.ports.is_empty() {
            v.error(&ports, "must have at least one port");
        }
        let mut names = BTreeSet::new();
        let mut seen = BTreeSet::new();
        let mut node_ports = BTreeSet::new();
        for (i, port) in self.ports.iter().enumerate() {
            let p = ports.index(i);
            v.port(&p.child("port"), port.port);
            v.protocol(&p.child("protocol"), &port.protocol);
            if self.ports.len() > 1 && port.name.is_empty() {
                v.error(
                    &p.child("name"),
                    "is required when a service has more than one port",
                );
            }
            if !port.name.is_empty() {
                v.dns_label(&p.child("name"), &port.name);
                if !names.insert(port.name.as_str()) {
                    v.error(
                        &p.child("name"),
                        &format!("duplicate port name {:?}", port.name),
                    );
                }
            }
            if !seen.insert((port.port, port.protocol.as_str())) {
                v.error(
                    &p.child("port"),
                    &format!("port {}/{} is listed twice", port.port, port.protocol),
                );
            }
            match &port.target_port {
                Some(IntOrString::Int(n)) => v.port(&p.child("targetPort"), *n),
                Some(IntOrString::String(name)) => v.dns_label(&p.child("targetPort"), name),
                None => {}
            }
            if let Some(node_port) = port.node_port {
                if !self.has_node_ports() {
                    v.error(
                        &p.child("nodePort"),
                        "may only be set when type is NodePort or LoadBalancer",
                    );
                } else if !node_ports.insert((node_port, port.protocol.as_str())) {
                    v.error(
                        &p.child("nodePort"),
                        &format!("nodePort {node_port}/{} is listed twice", port.protocol),
                    );
                } else {
                    // The control plane's range is configured; it checks that one.
                    v.port(&p.child("nodePort"), node_port);
                }
            }
        }
        for (key, value) in &self.selector {
            let p = path.child("selector").key(key);
            v.label_key(&p, key);
            v.label_value(&p, value);
        }
        if !self.type_.is_empty() {
            v.one_of(
                &path.child("type"),
                &self.type_,
                &["ClusterIP", "NodePort", "LoadBalancer"],
            );
        }
        if !self.cluster_ip.is_empty() && !self.is_headless() {
            v.ipv4(&path.child("clusterIP"), &self.cluster_ip);
        }
        if self.is_headless() && self.has_node_ports() {
            v.error(
                &path.child("clusterIP"),
                &format!("may not be None when type is {}", self.type_),
            );
        }
        if !self.load_balancer_ip.is_empty() {
            if self.type_ == "LoadBalancer" {
                v.ipv4(&path.child("loadBalancerIP"), &self.load_balancer_ip);
            } else {
                v.error(
                    &path.child("loadBalancerIP"),
                    "may only be set when type is LoadBalancer",
                );
            }
        }
        if !self.session_affinity.is_empty() {
            v.one_of(
                &path.child("sessionAffinity"),
                &self.session_affinity,
                &["None", "ClientIP"],
            );
        }
    }
}

// ---------------------------------------------------------------------------- Endpoints

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub subsets: Vec<EndpointSubset>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSubset {
    #[serde(default)]
    pub addresses: Vec<EndpointAddress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready_addresses: Vec<EndpointAddress>,
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointAddress {
    pub ip: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_pod: String,
    /// The pod's `hostname` when its `subdomain` is this Service: its DNS name is then
    /// `<hostname>.<service>.<namespace>.svc.<domain>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// The pod is shutting down (it has a deletionTimestamp), as an EndpointSlice's
    /// `terminating` condition says: listed under notReadyAddresses, its established
    /// connections drain and new ones go elsewhere.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub terminating: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EndpointPort {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub port: i32,
    #[serde(default = "tcp")]
    pub protocol: String,
}

impl Endpoints {
    pub(crate) fn validate_subsets(&self, v: &mut Validator, path: &FieldPath) {
        for (i, subset) in self.subsets.iter().enumerate() {
            let p = path.index(i);
            for (field, list) in [
                ("addresses", &subset.addresses),
                ("notReadyAddresses", &subset.not_ready_addresses),
            ] {
                for (j, address) in list.iter().enumerate() {
                    v.ipv4(&p.child(field).index(j).child("ip"), &address.ip);
                }
            }
            for (j, port) in subset.ports.iter().enumerate() {
                v.port(&p.child("ports").index(j).child("port"), port.port);
                v.protocol(&p.child("ports").index(j).child("protocol"), &port.protocol);
            }
        }
    }
}

// ---------------------------------------------------------------------------- Node

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NodeSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NodeStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// The range this node's pods take addresses from.
    #[serde(default, rename = "podCIDR", skip_serializing_if = "String::is_empty")]
    pub pod_cidr: String,
    #[serde(default)]
    pub unschedulable: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<crate::scheduling::Taint>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    #[serde(default)]
    pub addresses: Vec<NodeAddress>,
    /// `cpu` and `memory` quantities the node offers to pods.
    #[serde(default)]
    pub allocatable: BTreeMap<String, String>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Where the node's agent serves the node API (logs, exec, datapath views).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_endpoints: Option<NodeDaemonEndpoints>,
}

/// Kubernetes' `daemonEndpoints`, with the agent in the kubelet's place.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeDaemonEndpoints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_endpoint: Option<DaemonEndpoint>,
    /// Where the agent serves Prometheus metrics, on the same address (Berth's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_endpoint: Option<DaemonEndpoint>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DaemonEndpoint {
    /// Spelled as in Kubernetes (`Port`): the port on the node's InternalIP.
    #[serde(rename = "Port")]
    pub port: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeAddress {
    #[serde(rename = "type")]
    pub type_: String,
    pub address: String,
}

impl NodeSpec {
    pub(crate) fn validate(&self, v: &mut Validator, path: &FieldPath) {
        if !self.pod_cidr.is_empty() {
            v.ipv4_cidr(&path.child("podCIDR"), &self.pod_cidr);
        }
        crate::scheduling::validate_taints(&self.taints, v, &path.child("taints"));
    }
}

// ---------------------------------------------------------------------------- Event

/// A record of something that happened to an object, for `berthctl events` and humans.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub involved_object: ObjectReference,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// `Normal` or `Warning`.
    #[serde(default, rename = "type")]
    pub type_: String,
    #[serde(default = "one")]
    pub count: i32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub first_timestamp: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_timestamp: String,
    /// Which component wrote it (`apiserver`; `berth-agent` with its node as host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<EventSource>,
}

/// Kubernetes' `EventSource`: an object, which kubectl decodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EventSource {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub component: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
}

fn one() -> i32 {
    1
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    #[serde(default)]
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

impl Event {
    pub(crate) fn validate_body(&self, v: &mut Validator) {
        let r = FieldPath::root("involvedObject");
        if self.involved_object.kind.is_empty() {
            v.error(&r.child("kind"), "is required");
        }
        if self.involved_object.name.is_empty() {
            v.error(&r.child("name"), "is required");
        }
        if self.reason.is_empty() {
            v.error(&FieldPath::root("reason"), "is required");
        }
        if !self.type_.is_empty() {
            v.one_of(
                &FieldPath::root("type"),
                &self.type_,
                &["Normal", "Warning"],
            );
        }
    }
}

// ---------------------------------------------------------------------------- placement
// The pod spec's placement fields (their types are in `scheduling`) checked against
// nodes.

/// The placement fields of a pod spec: `tolerations`, `affinity`,
/// `topologySpreadConstraints`.
pub(crate) fn validate_pod_placement(spec: &PodSpec, v: &mut Validator, path: &FieldPath) {
    for (i, toleration) in spec.tolerations.iter().enumerate() {
        toleration.validate(v, &path.child("tolerations").index(i));
    }
    if let Some(affinity) = &spec.affinity {
        affinity.validate(v, &path.child("affinity"));
    }
    let constraints = path.child("topologySpreadConstraints");
    for (i, constraint) in spec.topology_spread_constraints.iter().enumerate() {
        let p = constraints.index(i);
        constraint.validate(v, &p);
        if spec.topology_spread_constraints[..i].iter().any(|c| {
            c.topology_key == constraint.topology_key
                && c.when_unsatisfiable == constraint.when_unsatisfiable
        }) {
            v.error(
                &p,
                &format!(
                    "duplicate constraint for topologyKey {:?} and whenUnsatisfiable {:?}",
                    constraint.topology_key, constraint.when_unsatisfiable
                ),
            );
        }
    }
}

// ---------------------------------------------------------------------------- the predicate

/// Why a pod may not run on a node, worded as kube-scheduler words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Misfit {
    #[error("node(s) didn't match Pod's node affinity/selector")]
    NodeAffinity,
    #[error("node(s) had untolerated taint {}", .0.describe())]
    Taint(Taint),
}

/// Whether a pod with `spec` may run on `node` as far as its node selector, its required
/// node affinity and the node's `NoSchedule` and `NoExecute` taints go; why not if not.
/// Resources, readiness and other pods are the scheduler's business.
pub fn node_admits(spec: &PodSpec, node: &Node) -> Result<(), Misfit> {
    if !spec.selects_node(&node.metadata.name, &node.metadata.labels) {
        return Err(Misfit::NodeAffinity);
    }
    match untolerated(
        &node.spec.taints,
        &spec.tolerations,
        &[NO_SCHEDULE, NO_EXECUTE],
    ) {
        Some(taint) => Err(Misfit::Taint(taint.clone())),
        None => Ok(()),
    }
}

impl PodSpec {
    /// Whether the node `name` with `labels` passes the pod's `nodeSelector` and its
    /// required node affinity.
    pub fn selects_node(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.node_selector
            .iter()
            .all(|(k, v)| node_label(name, labels, k) == Some(v.as_str()))
            && self
                .required_node_affinity()
                .is_none_or(|required| required.matches(name, labels))
    }

    /// `affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution`.
    pub fn required_node_affinity(&self) -> Option<&NodeSelector> {
        self.affinity
            .as_ref()?
            .node_affinity
            .as_ref()?
            .required_during_scheduling_ignored_during_execution
            .as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DecodeError, ResourceType, Source};

    fn service_errors(yaml: &str) -> Vec<(String, String)> {
        match ResourceType::of::<Service>().decode(Source::Yaml(yaml)) {
            Ok(_) => Vec::new(),
            Err(DecodeError::Invalid { errors }) => {
                errors.into_iter().map(|e| (e.field, e.reason)).collect()
            }
            Err(other) => panic!("malformed: {other}"),
        }
    }

    #[test]
    fn service_types_addresses_and_algorithm_are_validated_with_paths() {
        let ok = "metadata: {name: web, annotations: {service.cilium.io/lb-algorithm: random}}
spec: {type: LoadBalancer, loadBalancerIP: 198.18.128.9, ports: [{port: 80, nodePort: 30080}]}";
        assert_eq!(service_errors(ok), []);
        let bad = "metadata: {name: web, annotations: {service.cilium.io/lb-algorithm: fastest}}
spec:
  type: ClusterIP
  loadBalancerIP: 198.18.128.9
  ports: [{name: a, port: 80, nodePort: 30080}]";
        let fields: Vec<String> = service_errors(bad).into_iter().map(|e| e.0).collect();
        assert_eq!(
            fields,
            [
                "spec.ports[0].nodePort",
                "spec.loadBalancerIP",
                r#"metadata.annotations["service.cilium.io/lb-algorithm"]"#,
            ]
        );
        let twice = "metadata: {name: web}
spec:
  type: NodePort
  clusterIP: None
  ports: [{name: a, port: 80, nodePort: 30080}, {name: b, port: 81, nodePort: 30080}, {name: c, port: 81, protocol: UDP, nodePort: 30080}]";
        let fields: Vec<String> = service_errors(twice).into_iter().map(|e| e.0).collect();
        // The same nodePort for TCP and UDP is allowed, as in Kubernetes.
        assert_eq!(fields, ["spec.ports[1].nodePort", "spec.clusterIP"]);
    }

    #[test]
    fn pre_stop_hooks_need_exactly_one_handler() {
        let fields = |lifecycle: &str| -> Vec<String> {
            let yaml = format!(
                "metadata: {{name: p}}\nspec: {{containers: [{{name: c, image: i, lifecycle: {lifecycle}}}]}}"
            );
            match ResourceType::of::<Pod>().decode(Source::Yaml(&yaml)) {
                Ok(_) => Vec::new(),
                Err(DecodeError::Invalid { errors }) => {
                    errors.into_iter().map(|e| e.field).collect()
                }
                Err(other) => panic!("malformed: {other}"),
            }
        };
        assert_eq!(
            fields("{preStop: {sleep: {seconds: 2}}}"),
            Vec::<String>::new()
        );
        assert_eq!(
            fields("{preStop: {exec: {command: [sh, -c, 'sleep 1']}}}"),
            Vec::<String>::new()
        );
        let prefix = "spec.containers[0].lifecycle.preStop";
        assert_eq!(fields("{preStop: {}}"), [prefix]);
        assert_eq!(
            fields("{preStop: {sleep: {seconds: 1}, exec: {command: [x]}}}"),
            [prefix]
        );
        assert_eq!(
            fields("{preStop: {exec: {command: []}}}"),
            [format!("{prefix}.exec.command")]
        );
        assert_eq!(
            fields("{preStop: {sleep: {seconds: -1}}}"),
            [format!("{prefix}.sleep.seconds")]
        );
    }

    fn pod_errors(containers: &str) -> Vec<(String, String)> {
        let yaml = format!("metadata: {{name: p}}\nspec: {{containers: {containers}}}");
        match ResourceType::of::<Pod>().decode(Source::Yaml(&yaml)) {
            Ok(_) => Vec::new(),
            Err(DecodeError::Invalid { errors }) => {
                errors.into_iter().map(|e| (e.field, e.reason)).collect()
            }
            Err(other) => panic!("malformed: {other}"),
        }
    }

    #[test]
    fn env_sources_are_checked_and_unknown_ones_refused_by_name() {
        let ok = "[{name: c, image: i, resources: {limits: {cpu: '1'}}, env: [
            {name: A, valueFrom: {configMapKeyRef: {name: cm, key: a.b}}},
            {name: B, valueFrom: {secretKeyRef: {name: s, key: k, optional: true}}},
            {name: C, valueFrom: {fieldRef: {fieldPath: \"metadata.labels['app']\"}}},
            {name: D, valueFrom: {fieldRef: {fieldPath: status.podIP}}},
            {name: E, valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: 1m}}}],
          envFrom: [{prefix: X_, configMapRef: {name: cm}}, {secretRef: {name: s, optional: true}}]}]";
        assert_eq!(pod_errors(ok), []);
        let fields = |containers: &str| -> Vec<String> {
            pod_errors(containers).into_iter().map(|e| e.0).collect()
        };
        let env = "spec.containers[0].env";
        assert_eq!(
            fields(
                "[{name: c, image: i, env: [{name: A, value: x, valueFrom: {fieldRef: {fieldPath: spec.hostname}}}]}]"
            ),
            [
                format!("{env}[0].valueFrom"),
                format!("{env}[0].valueFrom.fieldRef.fieldPath")
            ]
        );
        assert_eq!(
            fields(
                "[{name: c, image: i, env: [{name: A, valueFrom: {resourceFieldRef: {resource: limits.gpu, containerName: x}}}]}]"
            ),
            [
                format!("{env}[0].valueFrom.resourceFieldRef.resource"),
                format!("{env}[0].valueFrom.resourceFieldRef.containerName")
            ]
        );
        // A source Berth does not know is refused with its path, not ignored.
        let refused = pod_errors(
            "[{name: c, image: i, env: [{name: A, valueFrom: {fileKeyRef: {path: x}}}]}]",
        );
        assert_eq!(
            refused[0],
            (
                format!("{env}[0].valueFrom.fileKeyRef"),
                "unsupported env source".to_owned()
            )
        );
        assert_eq!(
            fields(
                "[{name: c, image: i, envFrom: [{prefix: X, configMapRef: {name: a}, secretRef: {name: b}}]}]"
            ),
            ["spec.containers[0].envFrom[0]"]
        );
        assert_eq!(
            pod_errors("[{name: c, image: i}], initContainers: [{name: i, image: i}]"),
            [(
                "spec.initContainers".to_owned(),
                "init containers are not supported".to_owned()
            )]
        );
    }

    #[test]
    fn field_paths_name_labels_and_annotations() {
        assert_eq!(
            field_path_key("metadata.labels['app']"),
            Some(("labels", "app"))
        );
        assert_eq!(
            field_path_key("metadata.annotations[\"a/b\"]"),
            Some(("annotations", "a/b"))
        );
        assert_eq!(field_path_key("metadata.labels"), None);
        assert_eq!(resource_divisor("limits.cpu", Some("1m")), Ok(1));
        assert_eq!(resource_divisor("limits.memory", Some("1Mi")), Ok(1 << 20));
        assert!(resource_divisor("limits.memory", Some("0")).is_err());
    }

    #[test]
    fn volumes_and_mounts_are_checked_and_unknown_sources_refused() {
        let pod = |spec: &str| -> Vec<(String, String)> {
            let yaml = format!("metadata: {{name: p}}\nspec:\n{spec}");
            match ResourceType::of::<Pod>().decode(Source::Yaml(&yaml)) {
                Ok(decoded) => {
                    let pod: Pod = serde_json::from_value(decoded.object).expect("pod");
                    pod.spec
                        .volumes
                        .iter()
                        .filter_map(|v| v.secret.as_ref()?.default_mode)
                        .map(|mode| ("mode".to_owned(), format!("{mode:o}")))
                        .collect()
                }
                Err(DecodeError::Invalid { errors }) => {
                    errors.into_iter().map(|e| (e.field, e.reason)).collect()
                }
                Err(other) => panic!("malformed: {other}"),
            }
        };
        let ok = "  containers:
  - name: c
    image: i
    volumeMounts:
    - {name: config, mountPath: /etc/app, readOnly: true}
    - {name: creds, mountPath: /etc/creds}
    - {name: scratch, mountPath: /scratch, subPath: a/b}
  volumes:
  - {name: config, configMap: {name: app, items: [{key: k, path: dir/k.conf, mode: 0644}]}}
  - {name: creds, secret: {secretName: db, defaultMode: 0400}}
  - {name: scratch, emptyDir: {medium: Memory, sizeLimit: 64Mi}}
  - {name: info, downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}},
      {path: cpu, resourceFieldRef: {containerName: c, resource: limits.cpu}}]}}
";
        // YAML's 0400 is octal, as Kubernetes reads it.
        assert_eq!(pod(ok), [("mode".to_owned(), "400".to_owned())]);
        let fields = |spec: &str| -> Vec<String> { pod(spec).into_iter().map(|e| e.0).collect() };
        assert_eq!(
            fields(
                "  containers:
  - name: c
    image: i
    volumeMounts:
    - {name: nope, mountPath: relative, subPath: ../x}
    - {name: a, mountPath: /a}
    - {name: a, mountPath: /a/}
  volumes:
  - {name: a, emptyDir: {medium: Disk}}
  - {name: a, configMap: {name: x, items: [{key: k, path: /abs}], defaultMode: 01000}}
"
            ),
            [
                "spec.containers[0].volumeMounts[0].name",
                "spec.containers[0].volumeMounts[0].mountPath",
                "spec.containers[0].volumeMounts[0].subPath",
                "spec.containers[0].volumeMounts[2].mountPath",
                "spec.volumes[0].emptyDir.medium",
                "spec.volumes[1].name",
                "spec.volumes[1].configMap.items[0].path",
                "spec.volumes[1].configMap.defaultMode",
            ]
        );
        let refused = pod(
            "  containers: [{name: c, image: i}]\n  volumes: [{name: data, nfs: {server: s, path: /}}]\n",
        );
        assert_eq!(
            refused[0],
            (
                "spec.volumes[0].nfs".to_owned(),
                "unsupported volume source".to_owned()
            )
        );
        let refused = pod(
            "  containers: [{name: c, image: i}]\n  volumes: [{name: t, projected: {sources: [{clusterTrustBundle: {path: ca}}]}}]\n",
        );
        assert_eq!(
            refused[0],
            (
                "spec.volumes[0].projected.sources[0].clusterTrustBundle".to_owned(),
                "unsupported projected volume source".to_owned()
            )
        );
    }

    #[test]
    fn a_disk_size_limit_is_accepted_with_a_warning_that_it_is_not_enforced() {
        let yaml = "metadata: {name: p}\nspec:\n  containers: [{name: c, image: i}]\n  volumes: [{name: d, emptyDir: {sizeLimit: 1Gi}}, {name: m, emptyDir: {medium: Memory, sizeLimit: 1Gi}}]\n";
        let decoded = ResourceType::of::<Pod>()
            .decode(Source::Yaml(yaml))
            .expect("valid");
        assert_eq!(
            decoded.warnings,
            [
                "spec.volumes[0].emptyDir.sizeLimit: not enforced for an emptyDir on the node's disk (only with medium: Memory)"
            ]
        );
    }

    #[test]
    fn namespace_names_are_labels() {
        let ns = ResourceType::of::<Namespace>();
        assert!(ns.decode(Source::Yaml("metadata: {name: shop}")).is_ok());
        assert!(ns.decode(Source::Yaml("metadata: {name: a.b}")).is_err());
        assert!(
            ns.decode(Source::Yaml("metadata: {name: shop, namespace: x}"))
                .is_err()
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_cpu_millis("250m"), Ok(250));
        assert_eq!(parse_cpu_millis("0.5"), Ok(500));
        assert_eq!(parse_cpu_millis("2"), Ok(2000));
        assert!(parse_cpu_millis("fast").is_err());
        assert!(parse_cpu_millis("-1").is_err());
        assert_eq!(parse_milli("10", 1e12), Some(10_000));
        assert_eq!(parse_milli("1.5", 1e12), Some(1500));
        assert_eq!(parse_milli("2e7", 1e6), None);
        assert_eq!(parse_memory_bytes("128Mi"), Ok(128 << 20));
        assert_eq!(parse_memory_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_memory_bytes("1000"), Ok(1000));
        assert!(parse_memory_bytes("1.5Gi").is_err());
        assert!(parse_memory_bytes("99999999999Ti").is_err());
    }
}
