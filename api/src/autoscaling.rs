//! `apiVersion: autoscaling/v2`: the HorizontalPodAutoscaler, in Kubernetes' shape.
//!
//! Berth implements the Resource (cpu, memory) and Pods metric sources with the figures
//! node agents report; see docs/CONTROL_PLANE.md for the rule and what is left out.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    core::{Condition, parse_cpu_millis, parse_memory_bytes, parse_milli},
    meta::ObjectMeta,
    validation::{FieldPath, Validator},
};

/// The one per-pod metric agents report for the `Pods` source: new connections per second
/// the service datapath sent to the pod (not HTTP requests: the datapath sees connections).
pub const NEW_CONNECTIONS_PER_SECOND: &str = "new_connections_per_second";

/// Longest stabilisation window accepted (Kubernetes' limit: one hour).
pub const MAX_STABILIZATION_SECONDS: i32 = 3600;

/// CPU utilisation target used when `metrics` is empty (Kubernetes' default).
pub const DEFAULT_CPU_UTILIZATION: i32 = 80;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HorizontalPodAutoscaler {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: HorizontalPodAutoscalerSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<HorizontalPodAutoscalerStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HorizontalPodAutoscalerSpec {
    #[serde(default)]
    pub scale_target_ref: CrossVersionObjectReference,
    #[serde(default = "one")]
    pub min_replicas: i32,
    #[serde(default)]
    pub max_replicas: i32,
    /// Empty: 80% average CPU utilisation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<Behavior>,
}

impl Default for HorizontalPodAutoscalerSpec {
    fn default() -> Self {
        Self {
            scale_target_ref: CrossVersionObjectReference::default(),
            min_replicas: one(),
            max_replicas: 0,
            metrics: Vec::new(),
            behavior: None,
        }
    }
}

fn one() -> i32 {
    1
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CrossVersionObjectReference {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricSpec {
    /// `Resource` or `Pods`.
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceMetricSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodsMetricSource>,
}

/// A resource of the pods (`cpu` or `memory`), as a share of their requests or per pod.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResourceMetricSource {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub target: MetricTarget,
}

/// A per-pod figure other than a resource, averaged over the pods.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PodsMetricSource {
    #[serde(default)]
    pub metric: MetricIdentifier,
    #[serde(default)]
    pub target: MetricTarget,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MetricIdentifier {
    /// `new_connections_per_second` is the one Berth's agents measure.
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricTarget {
    /// `Utilization` (resources only) or `AverageValue`.
    #[serde(rename = "type", default)]
    pub type_: String,
    /// Percent of the pods' requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_utilization: Option<i32>,
    /// A quantity per pod (`250m`, `64Mi`, `10`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_value: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Behavior {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScalingRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScalingRules>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// Scale down: the highest recommendation of this window is used (default: the
    /// control plane's `--autoscaler-downscale-stabilization`, 300 s). Scale up: the
    /// lowest (default 0, i.e. at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stabilization_window_seconds: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HorizontalPodAutoscalerStatus {
    #[serde(default)]
    pub observed_generation: i64,
    /// RFC 3339: when the autoscaler last changed the target's replicas.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_scale_time: String,
    #[serde(default)]
    pub current_replicas: i32,
    #[serde(default)]
    pub desired_replicas: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub current_metrics: Vec<MetricStatus>,
    /// `AbleToScale`, `ScalingActive`, `ScalingLimited`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MetricStatus {
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceMetricStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodsMetricStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResourceMetricStatus {
    pub name: String,
    pub current: MetricValueStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PodsMetricStatus {
    pub metric: MetricIdentifier,
    pub current: MetricValueStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricValueStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_utilization: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_value: Option<String>,
}

/// A per-pod figure such as `10`, `1.5` or `500m`, in thousandths.
pub fn parse_milli_quantity(quantity: &str) -> Result<u64, String> {
    parse_milli(quantity, 1e12)
        .ok_or_else(|| format!("{quantity:?} is not a quantity such as 10, 1.5 or 500m"))
}

impl HorizontalPodAutoscalerSpec {
    pub(crate) fn validate(&self, v: &mut Validator, path: &FieldPath) {
        let target = path.child("scaleTargetRef");
        if self.scale_target_ref.kind != "Deployment" {
            v.error(
                &target.child("kind"),
                &format!(
                    "unsupported kind {:?}: only Deployment can be autoscaled",
                    self.scale_target_ref.kind
                ),
            );
        }
        if !self.scale_target_ref.api_version.is_empty()
            && self.scale_target_ref.api_version != "apps/v1"
        {
            v.error(
                &target.child("apiVersion"),
                &format!(
                    "{:?} is not served for Deployment: use \"apps/v1\"",
                    self.scale_target_ref.api_version
                ),
            );
        }
        if self.scale_target_ref.name.is_empty() {
            v.error(&target.child("name"), "is required");
        } else {
            v.dns_subdomain(&target.child("name"), &self.scale_target_ref.name);
        }
        if self.min_replicas < 1 {
            v.error(
                &path.child("minReplicas"),
                "must be greater than or equal to 1",
            );
        }
        if self.max_replicas < 1 {
            v.error(
                &path.child("maxReplicas"),
                "must be greater than or equal to 1",
            );
        } else if self.max_replicas < self.min_replicas {
            v.error(
                &path.child("maxReplicas"),
                &format!(
                    "must be greater than or equal to minReplicas ({})",
                    self.min_replicas
                ),
            );
        }
        let metrics = path.child("metrics");
        for (i, metric) in self.metrics.iter().enumerate() {
            metric.validate(v, &metrics.index(i));
        }
        if let Some(behavior) = &self.behavior {
            let bp = path.child("behavior");
            for (field, rules) in [
                ("scaleUp", &behavior.scale_up),
                ("scaleDown", &behavior.scale_down),
            ] {
                if let Some(window) = rules.as_ref().and_then(|r| r.stabilization_window_seconds)
                    && !(0..=MAX_STABILIZATION_SECONDS).contains(&window)
                {
                    v.error(
                        &bp.child(field).child("stabilizationWindowSeconds"),
                        &format!("must be between 0 and {MAX_STABILIZATION_SECONDS}"),
                    );
                }
            }
        }
    }
}

impl MetricSpec {
    fn validate(&self, v: &mut Validator, path: &FieldPath) {
        match self.type_.as_str() {
            "Resource" => {
                if self.pods.is_some() {
                    v.error(&path.child("pods"), "must not be set when type is Resource");
                }
                let rp = path.child("resource");
                let Some(resource) = &self.resource else {
                    v.error(&rp, "is required when type is Resource");
                    return;
                };
                v.one_of(&rp.child("name"), &resource.name, &["cpu", "memory"]);
                let parse = if resource.name == "memory" {
                    parse_memory_bytes
                } else {
                    parse_cpu_millis
                };
                resource.target.validate(
                    v,
                    &rp.child("target"),
                    &["Utilization", "AverageValue"],
                    parse,
                );
            }
            "Pods" => {
                if self.resource.is_some() {
                    v.error(&path.child("resource"), "must not be set when type is Pods");
                }
                let pp = path.child("pods");
                let Some(pods) = &self.pods else {
                    v.error(&pp, "is required when type is Pods");
                    return;
                };
                v.one_of(
                    &pp.child("metric").child("name"),
                    &pods.metric.name,
                    &[NEW_CONNECTIONS_PER_SECOND],
                );
                pods.target.validate(
                    v,
                    &pp.child("target"),
                    &["AverageValue"],
                    parse_milli_quantity,
                );
            }
            other => v.error(
                &path.child("type"),
                &format!("unsupported metric type {other:?}: use Resource or Pods"),
            ),
        }
    }
}

impl MetricTarget {
    fn validate(
        &self,
        v: &mut Validator,
        path: &FieldPath,
        types: &[&str],
        parse: fn(&str) -> Result<u64, String>,
    ) {
        v.one_of(&path.child("type"), &self.type_, types);
        match self.type_.as_str() {
            "Utilization" => match self.average_utilization {
                Some(percent) if percent > 0 => {}
                Some(_) => v.error(&path.child("averageUtilization"), "must be greater than 0"),
                None => v.error(
                    &path.child("averageUtilization"),
                    "is required when type is Utilization",
                ),
            },
            "AverageValue" => match self.average_value.as_deref().map(parse) {
                Some(Ok(value)) if value > 0 => {}
                Some(Ok(_)) => v.error(&path.child("averageValue"), "must be greater than 0"),
                Some(Err(reason)) => v.error(&path.child("averageValue"), &reason),
                None => v.error(
                    &path.child("averageValue"),
                    "is required when type is AverageValue",
                ),
            },
            _ => {}
        }
    }
}
