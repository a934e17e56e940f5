//! Workload kinds (`apiVersion: apps/v1`): Deployment, ReplicaSet, DaemonSet, ControllerRevision,
//! and the Scale subresource.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    core::{Condition, IntOrString, PodSpec},
    meta::{LabelSelector, ObjectMeta},
    validation::{FieldPath, Validator},
};

/// Annotation carrying a Deployment's rollout revision (the name Kubernetes uses, so
/// tooling that reads it keeps working).
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";

/// A short stable digest of a pod template: names a Deployment's ReplicaSet and
/// ControllerRevision, so the server and berthctl agree on which ReplicaSet is current.
pub fn template_hash(template: &serde_json::Value) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, template.to_string().as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    hex[..10].to_owned()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PodTemplateSpec {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
}

impl PodTemplateSpec {
    /// [`template_hash`] of the template's JSON form: the same digest berthctl computes
    /// from the template it reads.
    pub fn hash(&self) -> String {
        // Plain structs and string maps: encoding to a Value cannot fail.
        serde_json::to_value(self)
            .map(|template| template_hash(&template))
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: DeploymentSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeploymentStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentSpec {
    #[serde(default = "one")]
    pub replicas: i32,
    #[serde(default)]
    pub selector: LabelSelector,
    #[serde(default)]
    pub template: PodTemplateSpec,
    #[serde(default)]
    pub strategy: DeploymentStrategy,
    /// How many old templates `rollout undo` can go back to.
    #[serde(default = "ten")]
    pub revision_history_limit: i32,
    #[serde(default)]
    pub min_ready_seconds: i32,
    #[serde(default)]
    pub paused: bool,
}

impl Default for DeploymentSpec {
    fn default() -> Self {
        Self {
            replicas: one(),
            selector: LabelSelector::default(),
            template: PodTemplateSpec::default(),
            strategy: DeploymentStrategy::default(),
            revision_history_limit: ten(),
            min_ready_seconds: 0,
            paused: false,
        }
    }
}

fn one() -> i32 {
    1
}

fn ten() -> i32 {
    10
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStrategy {
    /// `RollingUpdate` (default) or `Recreate`.
    #[serde(rename = "type", default = "rolling_update")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

impl Default for DeploymentStrategy {
    fn default() -> Self {
        Self {
            type_: rolling_update(),
            rolling_update: None,
        }
    }
}

fn rolling_update() -> String {
    "RollingUpdate".to_owned()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub updated_replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    #[serde(default)]
    pub available_replicas: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl DeploymentSpec {
    pub(crate) fn validate(&self, v: &mut Validator, path: &FieldPath) {
        v.non_negative(&path.child("replicas"), self.replicas.into());
        validate_rolled_out(
            v,
            path,
            (self.revision_history_limit, self.min_ready_seconds),
            &self.selector,
            &self.template,
        );
        let strategy = &self.strategy;
        // Kubernetes' defaults: 25% each.
        check_strategy(
            v,
            &path.child("strategy"),
            (&strategy.type_, &["RollingUpdate", "Recreate"]),
            strategy.rolling_update.as_ref(),
            [25, 25],
        );
    }
}

/// What Deployments and DaemonSets share: the history and readiness bounds, and a
/// template their selector selects.
fn validate_rolled_out(
    v: &mut Validator,
    path: &FieldPath,
    (revision_history_limit, min_ready_seconds): (i32, i32),
    selector: &LabelSelector,
    template: &PodTemplateSpec,
) {
    v.non_negative(
        &path.child("revisionHistoryLimit"),
        revision_history_limit.into(),
    );
    v.non_negative(&path.child("minReadySeconds"), min_ready_seconds.into());
    validate_selected_template(v, path, selector, template);
}

/// Checks an update strategy at `path`: its type one of `types`, `rollingUpdate` only with
/// type RollingUpdate, each bound a number or a percentage, and not both 0 (a rollout
/// that could never make progress). `defaults`: what an absent maxSurge and
/// maxUnavailable mean.
fn check_strategy(
    v: &mut Validator,
    path: &FieldPath,
    (type_, types): (&str, &[&str]),
    rolling: Option<&RollingUpdate>,
    defaults: [i64; 2],
) {
    v.one_of(&path.child("type"), type_, types);
    let Some(rolling) = rolling else {
        return;
    };
    let rp = path.child("rollingUpdate");
    if type_ != "RollingUpdate" {
        v.error(&rp, "may only be set when type is RollingUpdate");
    }
    let surge = rolling
        .max_surge
        .as_ref()
        .map(|s| check_int_or_percent(v, &rp.child("maxSurge"), s));
    let unavailable = rolling
        .max_unavailable
        .as_ref()
        .map(|u| check_int_or_percent(v, &rp.child("maxUnavailable"), u));
    let zero =
        |bound: Option<Option<i64>>, default: i64| bound.map_or(default, |b| b.unwrap_or(-1)) == 0;
    if zero(surge, defaults[0]) && zero(unavailable, defaults[1]) {
        v.error(
            &rp.child("maxUnavailable"),
            "may not be 0 when maxSurge is 0",
        );
    }
}

/// An absolute count or a percentage; returns the number when it parses.
pub(crate) fn check_int_or_percent(
    v: &mut Validator,
    path: &FieldPath,
    value: &IntOrString,
) -> Option<i64> {
    match value {
        IntOrString::Int(n) => {
            v.non_negative(path, (*n).into());
            Some((*n).into())
        }
        IntOrString::String(s) => match s.strip_suffix('%').and_then(|n| n.parse::<i64>().ok()) {
            Some(n) if (0..=100).contains(&n) => Some(n),
            _ => {
                v.error(
                    path,
                    &format!("{s:?} must be an integer or a percentage between 0% and 100%"),
                );
                None
            }
        },
    }
}

fn validate_selected_template(
    v: &mut Validator,
    path: &FieldPath,
    selector: &LabelSelector,
    template: &PodTemplateSpec,
) {
    selector.validate(v, &path.child("selector"));
    let tp = path.child("template");
    let labels = tp.child("metadata").child("labels");
    for (key, value) in &template.metadata.labels {
        v.label_key(&labels.key(key), key);
        v.label_value(&labels.key(key), value);
    }
    if !selector.is_empty() && !selector.matches(&template.metadata.labels) {
        v.error(&labels, "`selector` does not match template `labels`");
    }
    template.spec.validate(v, &tp.child("spec"));
}

// ---------------------------------------------------------------------------- ReplicaSet

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSet {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ReplicaSetSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ReplicaSetStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSetSpec {
    #[serde(default = "one")]
    pub replicas: i32,
    #[serde(default)]
    pub selector: LabelSelector,
    #[serde(default)]
    pub template: PodTemplateSpec,
}

impl Default for ReplicaSetSpec {
    fn default() -> Self {
        Self {
            replicas: one(),
            selector: LabelSelector::default(),
            template: PodTemplateSpec::default(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSetStatus {
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
}

impl ReplicaSetSpec {
    pub(crate) fn validate(&self, v: &mut Validator, path: &FieldPath) {
        v.non_negative(&path.child("replicas"), self.replicas.into());
        validate_selected_template(v, path, &self.selector, &self.template);
    }
}

// ---------------------------------------------------------------------------- DaemonSet

/// One pod per eligible node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSet {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: DaemonSetSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DaemonSetStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSetSpec {
    #[serde(default)]
    pub selector: LabelSelector,
    #[serde(default)]
    pub template: PodTemplateSpec,
    #[serde(default)]
    pub update_strategy: DaemonSetUpdateStrategy,
    #[serde(default)]
    pub min_ready_seconds: i32,
    /// How many old templates `rollout undo` can go back to.
    #[serde(default = "ten")]
    pub revision_history_limit: i32,
}

impl Default for DaemonSetSpec {
    fn default() -> Self {
        Self {
            selector: LabelSelector::default(),
            template: PodTemplateSpec::default(),
            update_strategy: DaemonSetUpdateStrategy::default(),
            min_ready_seconds: 0,
            revision_history_limit: ten(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSetUpdateStrategy {
    /// `RollingUpdate` (default) or `OnDelete` (a pod takes the new template only when
    /// someone deletes it).
    #[serde(rename = "type", default = "rolling_update")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

impl Default for DaemonSetUpdateStrategy {
    fn default() -> Self {
        Self {
            type_: rolling_update(),
            rolling_update: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSetStatus {
    #[serde(default)]
    pub observed_generation: i64,
    /// Nodes that should run the pod.
    #[serde(default)]
    pub desired_number_scheduled: i32,
    /// Nodes that should run the pod and do.
    #[serde(default)]
    pub current_number_scheduled: i32,
    /// Nodes that run the pod and should not.
    #[serde(default)]
    pub number_misscheduled: i32,
    #[serde(default)]
    pub number_ready: i32,
    #[serde(default)]
    pub updated_number_scheduled: i32,
    #[serde(default)]
    pub number_available: i32,
    #[serde(default)]
    pub number_unavailable: i32,
}

impl DaemonSetSpec {
    pub(crate) fn validate(&self, v: &mut Validator, path: &FieldPath) {
        validate_rolled_out(
            v,
            path,
            (self.revision_history_limit, self.min_ready_seconds),
            &self.selector,
            &self.template,
        );
        let strategy = &self.update_strategy;
        // Kubernetes' defaults: maxSurge 0, maxUnavailable 1.
        check_strategy(
            v,
            &path.child("updateStrategy"),
            (&strategy.type_, &["RollingUpdate", "OnDelete"]),
            strategy.rolling_update.as_ref(),
            [0, 1],
        );
    }
}

// ---------------------------------------------------------------------------- ControllerRevision

/// One recorded pod template of a Deployment: what `rollout undo` returns to.
/// Written by the API server in the same transaction as the Deployment change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControllerRevision {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub revision: i64,
    pub data: PodTemplateSpec,
}

// ---------------------------------------------------------------------------- Scale

/// The `scale` subresource: only the replica count, so scaling never races a template edit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scale {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: ScaleSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ScaleStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScaleSpec {
    #[serde(default)]
    pub replicas: i32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScaleStatus {
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub selector: String,
}
