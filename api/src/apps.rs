//! Workload kinds (`apiVersion: apps/v1`): Deployment, ReplicaSet, DaemonSet, StatefulSet,
//! ControllerRevision, and the Scale subresource.

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

// ---------------------------------------------------------------------------- StatefulSet

/// Label naming a StatefulSet pod itself, so a Service can select one pod.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Label carrying a StatefulSet pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// Label naming the ControllerRevision a StatefulSet pod was made from.
pub const CONTROLLER_REVISION_HASH_LABEL: &str = "controller-revision-hash";

/// Pods with stable ordinal names (`web-0`, `web-1`, ...), each with its own claims made
/// from `volumeClaimTemplates` and its own DNS name under the governing Service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatefulSet {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: StatefulSetSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatefulSetStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatefulSetSpec {
    #[serde(default = "one")]
    pub replicas: i32,
    #[serde(default)]
    pub selector: LabelSelector,
    #[serde(default)]
    pub template: PodTemplateSpec,
    /// The headless Service whose domain the pods' DNS names live in
    /// (`<pod>.<serviceName>.<namespace>.svc.cluster.local`).
    #[serde(default)]
    pub service_name: String,
    /// One claim per template per ordinal, named `<template>-<set>-<ordinal>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_claim_templates: Vec<crate::storage::PersistentVolumeClaim>,
    /// `OrderedReady` (default): one pod at a time, in ordinal order; `Parallel`: all at
    /// once.
    #[serde(default = "ordered_ready")]
    pub pod_management_policy: String,
    #[serde(default)]
    pub update_strategy: StatefulSetUpdateStrategy,
    #[serde(default = "ten")]
    pub revision_history_limit: i32,
    #[serde(default)]
    pub min_ready_seconds: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_retention_policy: Option<ClaimRetentionPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordinals: Option<StatefulSetOrdinals>,
}

impl Default for StatefulSetSpec {
    fn default() -> Self {
        Self {
            replicas: one(),
            selector: LabelSelector::default(),
            template: PodTemplateSpec::default(),
            service_name: String::new(),
            volume_claim_templates: Vec::new(),
            pod_management_policy: ordered_ready(),
            update_strategy: StatefulSetUpdateStrategy::default(),
            revision_history_limit: ten(),
            min_ready_seconds: 0,
            persistent_volume_claim_retention_policy: None,
            ordinals: None,
        }
    }
}

fn ordered_ready() -> String {
    "OrderedReady".to_owned()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatefulSetUpdateStrategy {
    /// `RollingUpdate` (default) or `OnDelete`.
    #[serde(rename = "type", default = "rolling_update")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<StatefulSetRollingUpdate>,
}

impl Default for StatefulSetUpdateStrategy {
    fn default() -> Self {
        Self {
            type_: rolling_update(),
            rolling_update: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatefulSetRollingUpdate {
    /// Pods with an ordinal at or above this are updated; the others keep their template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// Read for compatibility; Berth updates one pod at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// What becomes of the claims made from `volumeClaimTemplates`: `Retain` (default) or
/// `Delete`, when the set is deleted and when it is scaled down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRetentionPolicy {
    #[serde(default = "retain")]
    pub when_deleted: String,
    #[serde(default = "retain")]
    pub when_scaled: String,
}

fn retain() -> String {
    "Retain".to_owned()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatefulSetOrdinals {
    /// The first ordinal (0 by default).
    #[serde(default)]
    pub start: i32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatefulSetStatus {
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    #[serde(default)]
    pub current_replicas: i32,
    #[serde(default)]
    pub updated_replicas: i32,
    #[serde(default)]
    pub available_replicas: i32,
    /// The ControllerRevision the pods below the update ran before the update began.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub current_revision: String,
    /// The ControllerRevision of the set's current template.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub update_revision: String,
    #[serde(default)]
    pub collision_count: i32,
}

impl StatefulSet {
    /// Whether `policy` of the claim retention policy says `Delete`.
    pub fn deletes_claims(&self, when_scaled: bool) -> bool {
        self.spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .is_some_and(|p| {
                if when_scaled {
                    p.when_scaled == "Delete"
                } else {
                    p.when_deleted == "Delete"
                }
            })
    }

    /// The first ordinal.
    pub fn start_ordinal(&self) -> i32 {
        self.spec.ordinals.as_ref().map_or(0, |o| o.start)
    }
}

impl StatefulSetSpec {
    /// The pod spec of the pod `pod_name`: the template's, with a volume per claim
    /// template (named as the template, replacing a pod volume of that name) of the
    /// pod's claim `<template>-<pod>`.
    pub fn pod_spec(&self, template: &PodTemplateSpec, pod_name: &str) -> crate::core::PodSpec {
        let mut spec = template.spec.clone();
        for claim in &self.volume_claim_templates {
            let volume = crate::core::Volume {
                name: claim.metadata.name.clone(),
                persistent_volume_claim: Some(crate::core::PersistentVolumeClaimVolumeSource {
                    claim_name: format!("{}-{pod_name}", claim.metadata.name),
                    read_only: false,
                }),
                ..crate::core::Volume::default()
            };
            match spec.volumes.iter_mut().find(|v| v.name == volume.name) {
                Some(existing) => *existing = volume,
                None => spec.volumes.push(volume),
            }
        }
        spec
    }

    pub(crate) fn validate(&self, v: &mut Validator, path: &FieldPath) {
        v.non_negative(&path.child("replicas"), self.replicas.into());
        v.non_negative(
            &path.child("revisionHistoryLimit"),
            self.revision_history_limit.into(),
        );
        v.non_negative(
            &path.child("minReadySeconds"),
            self.min_ready_seconds.into(),
        );
        if self.selector.is_empty() {
            v.error(&path.child("selector"), "is required");
        }
        // Checked as the pods will be: with their claims' volumes, which mounts name.
        let template = PodTemplateSpec {
            metadata: self.template.metadata.clone(),
            spec: self.pod_spec(&self.template, "pod"),
        };
        validate_selected_template(v, path, &self.selector, &template);
        if !self.service_name.is_empty() {
            v.dns_label(&path.child("serviceName"), &self.service_name);
        }
        v.one_of(
            &path.child("podManagementPolicy"),
            &self.pod_management_policy,
            &["OrderedReady", "Parallel"],
        );
        let strategy = path.child("updateStrategy");
        v.one_of(
            &strategy.child("type"),
            &self.update_strategy.type_,
            &["RollingUpdate", "OnDelete"],
        );
        if let Some(rolling) = &self.update_strategy.rolling_update {
            let rp = strategy.child("rollingUpdate");
            if self.update_strategy.type_ != "RollingUpdate" {
                v.error(&rp, "may only be set when type is RollingUpdate");
            }
            if let Some(partition) = rolling.partition {
                v.non_negative(&rp.child("partition"), partition.into());
            }
            if let Some(unavailable) = &rolling.max_unavailable {
                check_int_or_percent(v, &rp.child("maxUnavailable"), unavailable);
            }
        }
        if let Some(policy) = &self.persistent_volume_claim_retention_policy {
            let pp = path.child("persistentVolumeClaimRetentionPolicy");
            v.one_of(
                &pp.child("whenDeleted"),
                &policy.when_deleted,
                &["Retain", "Delete"],
            );
            v.one_of(
                &pp.child("whenScaled"),
                &policy.when_scaled,
                &["Retain", "Delete"],
            );
        }
        if let Some(ordinals) = &self.ordinals {
            v.non_negative(
                &path.child("ordinals").child("start"),
                ordinals.start.into(),
            );
        }
        let templates = path.child("volumeClaimTemplates");
        let mut names = std::collections::BTreeSet::new();
        for (i, claim) in self.volume_claim_templates.iter().enumerate() {
            let tp = templates.index(i);
            let name = &claim.metadata.name;
            v.dns_label(&tp.child("metadata").child("name"), name);
            if !names.insert(name) {
                v.error(
                    &tp.child("metadata").child("name"),
                    &format!("duplicate claim template {name:?}"),
                );
            }
            claim.validate_spec(v, &tp.child("spec"));
        }
    }
}

// ---------------------------------------------------------------------------- ControllerRevision

/// One recorded pod template of a Deployment, DaemonSet or StatefulSet: what `rollout undo`
/// returns to. Written by the API server in the same transaction as the change.
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
