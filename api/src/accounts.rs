//! Identities for programs (`apiVersion: v1`): ServiceAccount, and the TokenRequest that
//! asks the control plane for one of its tokens (`POST
//! .../serviceaccounts/NAME/token`, what `berthctl create token` and the kubelet use).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{meta::ObjectMeta, validation::Validator};

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
