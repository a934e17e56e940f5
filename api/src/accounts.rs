//! Identities for programs (`apiVersion: v1`): ServiceAccount, and the TokenRequest that
//! asks the control plane for one of its tokens (`POST
//! .../serviceaccounts/NAME/token`, what `berthctl create token` and the kubelet use).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    core::{
        Container, DownwardApiProjection, DownwardApiVolumeFile, KeyToPath, KeysProjection,
        ObjectFieldSelector, PodSpec, ProjectedVolumeSource, ServiceAccountTokenProjection, Volume,
        VolumeMount, VolumeProjection,
    },
    meta::ObjectMeta,
    validation::Validator,
};

/// The ServiceAccount every namespace has and pods use unless they name another.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// The audience tokens are for unless asked otherwise: the API server itself.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
/// A ServiceAccount's user name: `system:serviceaccount:<namespace>:<name>`.
pub fn user_name(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccount {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Whether pods using it get a token mounted unless they say otherwise (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
}

impl ServiceAccount {
    pub(crate) fn validate(&self, _v: &mut Validator) {}
}

/// `authentication.k8s.io/v1` TokenRequest, the body of a token request and its answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenRequest {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: TokenRequestSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TokenRequestStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenRequestSpec {
    /// Who the token is for; the API server when empty.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Lifetime; one hour when unset, at least 10 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_seconds: Option<i64>,
    /// A pod the token lives no longer than.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_object_ref: Option<BoundObjectReference>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BoundObjectReference {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub uid: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenRequestStatus {
    pub token: String,
    pub expiration_timestamp: String,
}

/// Where a pod's ServiceAccount token, the cluster's CA and the pod's namespace are, in
/// every container (Kubernetes' path: client libraries look there).
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The ConfigMap every namespace has with the cluster CA as `ca.crt`.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// The key of [`ROOT_CA_CONFIG_MAP`] holding the CA.
pub const ROOT_CA_KEY: &str = "ca.crt";
/// The lifetime of projected tokens Kubernetes injects (an hour and seven seconds: the
/// kubelet's refresh starts at 80 %).
pub const INJECTED_TOKEN_SECONDS: i64 = 3607;
/// The prefix of the injected volume's name; a random suffix follows.
pub const TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";

/// Kubernetes' ServiceAccount admission, on a new pod: the ServiceAccount defaults to
/// `default`, and unless the pod (or else its ServiceAccount, `account_automount`) says
/// not to, a projected volume named `kube-api-access-<suffix>` with the token, `ca.crt`
/// and `namespace` is mounted read-only at [`TOKEN_MOUNT_PATH`] in every container that
/// has nothing mounted there already.
pub fn admit_service_account(spec: &mut PodSpec, account_automount: Option<bool>, suffix: &str) {
    if spec.service_account_name.is_empty() {
        spec.service_account_name = if spec.service_account.is_empty() {
            DEFAULT_SERVICE_ACCOUNT.to_owned()
        } else {
            spec.service_account.clone()
        };
    }
    spec.service_account = spec.service_account_name.clone();
    let automount = spec
        .automount_service_account_token
        .or(account_automount)
        .unwrap_or(true);
    let mounted = |c: &Container| {
        c.volume_mounts
            .iter()
            .any(|m| m.mount_path.trim_end_matches('/') == TOKEN_MOUNT_PATH)
    };
    if !automount || spec.containers.iter().all(mounted) {
        return;
    }
    let name = format!("{TOKEN_VOLUME_PREFIX}{suffix}");
    spec.volumes.push(Volume {
        name: name.clone(),
        projected: Some(ProjectedVolumeSource {
            sources: vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: String::new(),
                        expiration_seconds: Some(INJECTED_TOKEN_SECONDS),
                        path: "token".to_owned(),
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    config_map: Some(KeysProjection {
                        name: ROOT_CA_CONFIG_MAP.to_owned(),
                        items: vec![KeyToPath {
                            key: ROOT_CA_KEY.to_owned(),
                            path: ROOT_CA_KEY.to_owned(),
                            mode: None,
                        }],
                        optional: None,
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardApiProjection {
                        items: vec![DownwardApiVolumeFile {
                            path: "namespace".to_owned(),
                            field_ref: Some(ObjectFieldSelector {
                                api_version: "v1".to_owned(),
                                field_path: "metadata.namespace".to_owned(),
                            }),
                            resource_field_ref: None,
                            mode: None,
                        }],
                    }),
                    ..VolumeProjection::default()
                },
            ],
            default_mode: Some(0o644),
        }),
        ..Volume::default()
    });
    for container in spec.containers.iter_mut().filter(|c| !mounted(c)) {
        container.volume_mounts.push(VolumeMount {
            name: name.clone(),
            mount_path: TOKEN_MOUNT_PATH.to_owned(),
            read_only: true,
            sub_path: String::new(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> PodSpec {
        serde_norway::from_str(yaml).expect("a pod spec")
    }

    #[test]
    fn pods_get_their_account_and_its_token_mounted_unless_told_not_to() {
        let mut plain = spec(
            "containers: [{name: a, image: i}, {name: b, image: i, volumeMounts: [{name: own, mountPath: /var/run/secrets/kubernetes.io/serviceaccount/}]}]\nvolumes: [{name: own, emptyDir: {}}]",
        );
        admit_service_account(&mut plain, None, "x1y2z");
        assert_eq!(
            (
                plain.service_account_name.as_str(),
                plain.service_account.as_str()
            ),
            ("default", "default")
        );
        let volume = &plain.volumes[1];
        assert_eq!(volume.name, "kube-api-access-x1y2z");
        let sources = &volume.projected.as_ref().expect("projected").sources;
        assert_eq!(
            sources[0]
                .service_account_token
                .as_ref()
                .map(|t| t.path.as_str()),
            Some("token")
        );
        assert_eq!(
            sources[1].config_map.as_ref().map(|c| c.name.as_str()),
            Some("kube-root-ca.crt")
        );
        // Only the container without its own mount there gets the token.
        assert_eq!(plain.containers[0].volume_mounts[0].name, volume.name);
        assert!(plain.containers[0].volume_mounts[0].read_only);
        assert_eq!(plain.containers[1].volume_mounts.len(), 1);

        // The deprecated field names the account; the pod's false beats the account's true.
        let mut off = spec(
            "serviceAccount: robot\nautomountServiceAccountToken: false\ncontainers: [{name: a, image: i}]",
        );
        admit_service_account(&mut off, Some(true), "abcde");
        assert_eq!(off.service_account_name, "robot");
        assert!(off.volumes.is_empty());
        // The account's false holds when the pod says nothing.
        let mut by_account = spec("serviceAccountName: robot\ncontainers: [{name: a, image: i}]");
        admit_service_account(&mut by_account, Some(false), "abcde");
        assert!(by_account.volumes.is_empty() && by_account.containers[0].volume_mounts.is_empty());
    }
}
