//! HorizontalPodAutoscaler: Kubernetes' replica rule over the load figures agents report.
//!
//! Per metric, `desired = ceil(ratio × pods with figures)` where `ratio` is the pods'
//! average against the target, unless the ratio is within the 0.1 tolerance of 1. Pods
//! without figures and (for CPU) pods not ready are handled as Kubernetes does: left out
//! of the first estimate, then — if the estimate scales — counted as using the target
//! (missing, scaling down) or nothing (missing or unready, scaling up), and the scale is
//! dropped if that reverses or neutralises it. Several metrics: the largest proposal.
//! Recommendations are stabilised (scale down: the highest of the window, 300 s by
//! default; scale up: the lowest of its window, 0 s by default) and clamped to
//! min/max. The recommendation history is in memory, seeded with the current size when
//! an autoscaler is first seen, so a restarted control plane waits a whole window
//! before scaling down — as kube-controller-manager does.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::Duration,
};

use berth_api::{
    apps::Deployment,
    autoscaling::{
        DEFAULT_CPU_UTILIZATION, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
        HorizontalPodAutoscalerStatus, MetricIdentifier, MetricSpec, MetricStatus, MetricTarget,
        MetricValueStatus, NEW_CONNECTIONS_PER_SECOND, PodsMetricStatus, ResourceMetricSource,
        ResourceMetricStatus, parse_milli_quantity,
    },
    core::{Condition, Pod, parse_cpu_millis, parse_memory_bytes},
};

use super::{Change, Context, Outcome, Reconciler, Snapshot, Write, pod_is_ready, reference};
use crate::{
    usage::{PodFigures, Usage},
    util,
};

/// Kubernetes' `--horizontal-pod-autoscaler-tolerance`.
pub const TOLERANCE: f64 = 0.1;

pub struct Autoscaler {
    usage: Usage,
    /// HPA uid → (unix seconds, recommendation), newest last.
    history: Mutex<HashMap<String, Vec<(u64, i32)>>>,
}

impl Autoscaler {
    pub fn new(usage: Usage) -> Self {
        Self {
            usage,
            history: Mutex::new(HashMap::new()),
        }
    }
}

/// What a metric reads from a pod.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Measure {
    Cpu,
    Memory,
    Connections,
}

/// A target, in the measure's base unit (millicores, bytes, connections/s).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Goal {
    Utilization(i32),
    Average(f64),
}

/// One pod as the rule sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodSample {
    pub name: String,
    /// Failed or finished: not counted at all.
    pub ignored: bool,
    /// Not yet running (no node, or Pending): counted as unready for every metric.
    pub pending: bool,
    pub ready: bool,
    pub cpu_request: Option<u64>,
    pub memory_request: Option<u64>,
    pub figures: Option<PodFigures>,
}

impl PodSample {
    fn value(&self, measure: Measure) -> Option<f64> {
        let f = self.figures.as_ref()?;
        Some(match measure {
            Measure::Cpu => f.cpu_millicores as f64,
            Measure::Memory => f.memory_bytes as f64,
            Measure::Connections => f.connections_per_second,
        })
    }

    fn request(&self, measure: Measure) -> Option<f64> {
        match measure {
            Measure::Cpu => self.cpu_request.map(|r| r as f64),
            Measure::Memory => self.memory_request.map(|r| r as f64),
            Measure::Connections => None,
        }
    }
}

/// A metric's proposal and what it measured (for `status.currentMetrics`).
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub replicas: i32,
    /// Average utilisation in percent (utilisation targets only).
    pub utilization: Option<i64>,
    /// Average per pod, in the measure's base unit.
    pub average: f64,
}

fn ratio(
    values: &BTreeMap<&str, f64>,
    requests: &BTreeMap<&str, f64>,
    goal: Goal,
) -> (f64, Option<i64>, f64) {
    let total: f64 = values.values().sum();
    let average = total / values.len().max(1) as f64;
    match goal {
        Goal::Utilization(target) => {
            let requested: f64 = values.keys().filter_map(|k| requests.get(k)).sum();
            // Whole percent, as Kubernetes computes it.
            let utilization = if requested > 0.0 {
                (total * 100.0 / requested) as i64
            } else {
                0
            };
            (
                utilization as f64 / f64::from(target),
                Some(utilization),
                average,
            )
        }
        Goal::Average(target) => (average / target, None, average),
    }
}

/// Kubernetes' replica calculation for one metric (`GetResourceReplicas` and
/// `calcPlainMetricReplicas`).
fn metric_replicas(
    current: i32,
    pods: &[PodSample],
    measure: Measure,
    goal: Goal,
) -> Result<Proposal, String> {
    let mut values: BTreeMap<&str, f64> = BTreeMap::new();
    let mut unready: Vec<&str> = Vec::new();
    let mut missing: Vec<&str> = Vec::new();
    for pod in pods.iter().filter(|p| !p.ignored) {
        if pod.pending {
            unready.push(&pod.name);
            continue;
        }
        match pod.value(measure) {
            None => missing.push(&pod.name),
            // Starting pods burn CPU warming up: their CPU says nothing about load.
            Some(_) if measure == Measure::Cpu && !pod.ready => unready.push(&pod.name),
            Some(value) => {
                values.insert(&pod.name, value);
            }
        }
    }
    let mut requests: BTreeMap<&str, f64> = BTreeMap::new();
    if matches!(goal, Goal::Utilization(_)) {
        for pod in pods.iter().filter(|p| !p.ignored) {
            let request = pod.request(measure).filter(|r| *r > 0.0).ok_or_else(|| {
                format!(
                    "missing request for {} in pod {}",
                    measure_name(measure),
                    pod.name
                )
            })?;
            requests.insert(&pod.name, request);
        }
    }
    if values.is_empty() {
        return Err(format!(
            "no figures for any of the {} pods (they may not be ready or reported yet)",
            pods.iter().filter(|p| !p.ignored).count()
        ));
    }
    let ready_count = values.len();
    let (usage_ratio, utilization, average) = ratio(&values, &requests, goal);
    let proposal = |replicas| Proposal {
        replicas,
        utilization,
        average,
    };
    let scale_up_with_unready = !unready.is_empty() && usage_ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        if (1.0 - usage_ratio).abs() <= TOLERANCE {
            return Ok(proposal(current));
        }
        return Ok(proposal(ceil(usage_ratio * ready_count as f64)));
    }
    // What a pod would show at exactly the target.
    let at_target = |name: &str| match goal {
        Goal::Utilization(target) => {
            requests.get(name).copied().unwrap_or(0.0) * f64::from(target) / 100.0
        }
        Goal::Average(target) => target,
    };
    if usage_ratio < 1.0 {
        for name in &missing {
            values.insert(name, at_target(name));
        }
    } else if usage_ratio > 1.0 {
        for name in &missing {
            values.insert(name, 0.0);
        }
    }
    if scale_up_with_unready {
        for name in &unready {
            values.insert(name, 0.0);
        }
    }
    let (new_ratio, _, _) = ratio(&values, &requests, goal);
    if (1.0 - new_ratio).abs() <= TOLERANCE
        || (usage_ratio < 1.0 && new_ratio > 1.0)
        || (usage_ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(proposal(current));
    }
    let replicas = ceil(new_ratio * values.len() as f64);
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(proposal(current));
    }
    Ok(proposal(replicas))
}

fn ceil(value: f64) -> i32 {
    let rounded = value.ceil();
    if rounded >= f64::from(i32::MAX) {
        i32::MAX
    } else {
        rounded as i32
    }
}

fn measure_name(measure: Measure) -> &'static str {
    match measure {
        Measure::Cpu => "cpu",
        Measure::Memory => "memory",
        Measure::Connections => NEW_CONNECTIONS_PER_SECOND,
    }
}

/// The metrics to evaluate: the spec's, or 80% CPU when it has none.
fn metrics_of(spec: &HorizontalPodAutoscalerSpec) -> Vec<MetricSpec> {
    if !spec.metrics.is_empty() {
        return spec.metrics.clone();
    }
    vec![MetricSpec {
        type_: "Resource".to_owned(),
        resource: Some(ResourceMetricSource {
            name: "cpu".to_owned(),
            target: MetricTarget {
                type_: "Utilization".to_owned(),
                average_utilization: Some(DEFAULT_CPU_UTILIZATION),
                average_value: None,
            },
        }),
        pods: None,
    }]
}

/// (measure, goal) of a validated metric spec.
fn goal_of(metric: &MetricSpec) -> Option<(Measure, Goal)> {
    let (measure, target) = match (&metric.resource, &metric.pods) {
        (Some(r), _) if r.name == "cpu" => (Measure::Cpu, &r.target),
        (Some(r), _) if r.name == "memory" => (Measure::Memory, &r.target),
        (_, Some(p)) if p.metric.name == NEW_CONNECTIONS_PER_SECOND => {
            (Measure::Connections, &p.target)
        }
        _ => return None,
    };
    let goal = match (target.average_utilization, target.average_value.as_deref()) {
        (Some(percent), _) if target.type_ == "Utilization" => Goal::Utilization(percent),
        (_, Some(value)) => Goal::Average(match measure {
            Measure::Cpu => parse_cpu_millis(value).ok()? as f64,
            Measure::Memory => parse_memory_bytes(value).ok()? as f64,
            Measure::Connections => parse_milli_quantity(value).ok()? as f64 / 1000.0,
        }),
        _ => return None,
    };
    Some((measure, goal))
}

/// A quantity for status: millicores as `250m`, bytes and rates as plain or milli numbers.
fn quantity(measure: Measure, average: f64) -> String {
    match measure {
        Measure::Cpu => format!("{}m", average.round() as u64),
        Measure::Memory => format!("{}", average.round() as u64),
        Measure::Connections => {
            let millis = (average * 1000.0).round() as u64;
            if millis.is_multiple_of(1000) {
                format!("{}", millis / 1000)
            } else {
                format!("{millis}m")
            }
        }
    }
}

/// Everything one autoscaling pass decides.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub desired: i32,
    /// Why, when `desired` differs from the current size (the event's text).
    pub reason: String,
    /// The metrics' proposal to remember for stabilisation, when there was one.
    pub recommendation: Option<i32>,
    pub current_metrics: Vec<MetricStatus>,
    /// (type, status, reason, message) for AbleToScale, ScalingActive, ScalingLimited.
    pub conditions: Vec<(&'static str, &'static str, &'static str, String)>,
}

/// Stabilisation windows in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub up: u64,
    pub down: u64,
}

/// The pure rule: the spec, the target's current size, its pods, the recommendation
/// history and the clock in; the size to set and why out.
pub fn decide(
    spec: &HorizontalPodAutoscalerSpec,
    current: i32,
    pods: &[PodSample],
    history: &[(u64, i32)],
    now: u64,
    windows: Windows,
) -> Decision {
    let (min, max) = (spec.min_replicas, spec.max_replicas);
    let mut current_metrics = Vec::new();
    let mut proposals = Vec::new();
    let mut failures = Vec::new();
    for metric in metrics_of(spec) {
        let Some((measure, goal)) = goal_of(&metric) else {
            failures.push(format!("unsupported metric {metric:?}"));
            continue;
        };
        match metric_replicas(current, pods, measure, goal) {
            Ok(proposal) => {
                let current = MetricValueStatus {
                    average_value: Some(quantity(measure, proposal.average)),
                    average_utilization: proposal
                        .utilization
                        .map(|u| i32::try_from(u).unwrap_or(i32::MAX)),
                };
                current_metrics.push(if measure == Measure::Connections {
                    MetricStatus {
                        type_: "Pods".to_owned(),
                        resource: None,
                        pods: Some(PodsMetricStatus {
                            metric: MetricIdentifier {
                                name: NEW_CONNECTIONS_PER_SECOND.to_owned(),
                            },
                            current,
                        }),
                    }
                } else {
                    MetricStatus {
                        type_: "Resource".to_owned(),
                        resource: Some(ResourceMetricStatus {
                            name: measure_name(measure).to_owned(),
                            current,
                        }),
                        pods: None,
                    }
                });
                let reason = match (measure, goal) {
                    (Measure::Connections, _) => {
                        format!("pods metric {NEW_CONNECTIONS_PER_SECOND} above target")
                    }
                    (_, Goal::Utilization(_)) => format!(
                        "{} resource utilization (percentage of request) above target",
                        measure_name(measure)
                    ),
                    (_, Goal::Average(_)) => {
                        format!("{} resource above target", measure_name(measure))
                    }
                };
                proposals.push((proposal.replicas, reason));
            }
            Err(message) => failures.push(message),
        }
    }
    let able = (
        "AbleToScale",
        "True",
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale".to_owned(),
    );
    if current == 0 {
        return Decision {
            desired: 0,
            reason: String::new(),
            recommendation: None,
            current_metrics,
            conditions: vec![
                able,
                (
                    "ScalingActive",
                    "False",
                    "ScalingDisabled",
                    "scaling is disabled since the replica count of the target is zero".to_owned(),
                ),
            ],
        };
    }
    let mut conditions = vec![able];
    let (desired, reason, recommendation) = if current > max {
        conditions.push(active(&failures));
        (
            max,
            "Current number of replicas above Spec.MaxReplicas".to_owned(),
            None,
        )
    } else if current < min {
        conditions.push(active(&failures));
        (
            min,
            "Current number of replicas below Spec.MinReplicas".to_owned(),
            None,
        )
    } else {
        let best = proposals
            .iter()
            .max_by_key(|(replicas, _)| *replicas)
            .cloned();
        match best {
            // Every metric failed, or a failed one might have wanted more: keep the size.
            None => {
                conditions.push(active(&failures));
                (current, String::new(), None)
            }
            Some((replicas, _)) if !failures.is_empty() && replicas < current => {
                conditions.push(active(&failures));
                (current, String::new(), None)
            }
            Some((proposed, above)) => {
                conditions.push(active(&failures));
                let stabilized = stabilize(current, proposed, history, now, windows);
                if stabilized != proposed {
                    conditions[0] = if proposed < current {
                        ("AbleToScale", "True", "ScaleDownStabilized", "recent recommendations were higher than current one, applying the highest recent recommendation".to_owned())
                    } else {
                        ("AbleToScale", "True", "ScaleUpStabilized", "recent recommendations were lower than current one, applying the lowest recent recommendation".to_owned())
                    };
                }
                let clamped = stabilized.clamp(min, max);
                let limited = if clamped > stabilized {
                    (
                        "ScalingLimited",
                        "True",
                        "TooFewReplicas",
                        "the desired replica count is less than the minimum replica count"
                            .to_owned(),
                    )
                } else if clamped < stabilized {
                    (
                        "ScalingLimited",
                        "True",
                        "TooManyReplicas",
                        "the desired replica count is more than the maximum replica count"
                            .to_owned(),
                    )
                } else {
                    (
                        "ScalingLimited",
                        "False",
                        "DesiredWithinRange",
                        "the desired count is within the acceptable range".to_owned(),
                    )
                };
                conditions.push(limited);
                let reason = if clamped > current {
                    above
                } else {
                    "All metrics below target".to_owned()
                };
                (clamped, reason, Some(proposed))
            }
        }
    };
    Decision {
        desired,
        reason: if desired == current {
            String::new()
        } else {
            reason
        },
        recommendation,
        current_metrics,
        conditions,
    }
}

fn active(failures: &[String]) -> (&'static str, &'static str, &'static str, String) {
    if failures.is_empty() {
        (
            "ScalingActive",
            "True",
            "ValidMetricFound",
            "the HPA was able to successfully calculate a replica count".to_owned(),
        )
    } else {
        (
            "ScalingActive",
            "False",
            "FailedGetMetrics",
            failures.join("; "),
        )
    }
}

/// Scale up to at most the lowest recommendation of the up window; down to at least the
/// highest of the down window (Kubernetes' `stabilizeRecommendationWithBehaviors`).
pub fn stabilize(
    current: i32,
    proposed: i32,
    history: &[(u64, i32)],
    now: u64,
    windows: Windows,
) -> i32 {
    let (mut up, mut down) = (proposed, proposed);
    for (at, recommendation) in history {
        if *at > now.saturating_sub(windows.up) && windows.up > 0 {
            up = up.min(*recommendation);
        }
        if *at > now.saturating_sub(windows.down) && windows.down > 0 {
            down = down.max(*recommendation);
        }
    }
    current.max(up).min(down)
}

fn pod_sample(pod: &Pod, figures: Option<PodFigures>) -> PodSample {
    let phase = pod.status.as_ref().map_or("", |s| s.phase.as_str());
    let node = pod.spec.node_name.as_str();
    let request = |resource: &str, parse: fn(&str) -> Result<u64, String>| -> Option<u64> {
        pod.spec.containers.iter().try_fold(0u64, |sum, c| {
            let quantity = c.resources.requests.get(resource)?;
            Some(sum + parse(quantity).ok()?)
        })
    };
    PodSample {
        name: pod.metadata.name.clone(),
        ignored: matches!(phase, "Failed" | "Succeeded"),
        pending: node.is_empty() || matches!(phase, "" | "Pending"),
        ready: pod_is_ready(pod),
        cpu_request: request("cpu", parse_cpu_millis),
        memory_request: request("memory", parse_memory_bytes),
        figures,
    }
}

fn windows(spec: &HorizontalPodAutoscalerSpec, ctx: &Context) -> Windows {
    let window = |rules: Option<&berth_api::autoscaling::ScalingRules>, default: u64| {
        rules
            .and_then(|r| r.stabilization_window_seconds)
            .map_or(default, |w| u64::try_from(w).unwrap_or(0))
    };
    let behavior = spec.behavior.as_ref();
    Windows {
        up: window(behavior.and_then(|b| b.scale_up.as_ref()), 0),
        down: window(
            behavior.and_then(|b| b.scale_down.as_ref()),
            ctx.settings.downscale_stabilization.as_secs(),
        ),
    }
}

/// Conditions with `lastTransitionTime` kept while their status stays the same.
fn conditions(decision: &Decision, previous: &[Condition], now: &str) -> Vec<Condition> {
    decision
        .conditions
        .iter()
        .map(|(type_, status, reason, message)| {
            let since = previous
                .iter()
                .find(|c| c.type_ == *type_)
                .filter(|c| c.status == *status)
                .map_or(now, |c| c.last_transition_time.as_str());
            Condition {
                type_: (*type_).to_owned(),
                status: (*status).to_owned(),
                reason: (*reason).to_owned(),
                message: message.clone(),
                last_transition_time: since.to_owned(),
                last_heartbeat_time: String::new(),
            }
        })
        .collect()
}

impl Reconciler for Autoscaler {
    type Object = HorizontalPodAutoscaler;

    fn name(&self) -> &'static str {
        "autoscaler"
    }

    /// Spec changes and autoscalers this process has not evaluated yet (after a
    /// restart); not the autoscaler's own status writes, which would otherwise re-run
    /// it at once instead of every sync period.
    fn affected(&self, change: &Change, _snapshot: &Snapshot) -> Vec<(String, String)> {
        let Some(hpa) = change.as_kind::<HorizontalPodAutoscaler>() else {
            return Vec::new();
        };
        let Ok(mut history) = self.history.lock() else {
            return Vec::new();
        };
        if change.deleted {
            history.remove(&hpa.metadata.uid);
            return Vec::new();
        }
        let observed = hpa.status.as_ref().map(|s| s.observed_generation);
        if Some(hpa.metadata.generation) != observed || !history.contains_key(&hpa.metadata.uid) {
            return vec![change.key()];
        }
        Vec::new()
    }

    fn reconcile(
        &self,
        hpa: &HorizontalPodAutoscaler,
        snapshot: &Snapshot,
        ctx: &Context,
    ) -> Outcome {
        let sync = ctx.settings.autoscaler_sync;
        let view = self.usage.view(ctx.now);
        let mut history = match self.history.lock() {
            Ok(history) => history,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut outcome = plan(hpa, snapshot, ctx, &view, &mut history);
        outcome.requeue_after = Some(sync);
        outcome
    }
}

fn plan(
    hpa: &HorizontalPodAutoscaler,
    snapshot: &Snapshot,
    ctx: &Context,
    view: &crate::usage::UsageView,
    history: &mut HashMap<String, Vec<(u64, i32)>>,
) -> Outcome {
    let spec = &hpa.spec;
    let namespace = &hpa.metadata.namespace;
    let now_text = util::rfc3339(ctx.now);
    let previous = hpa.status.as_ref();
    let previous_conditions = previous.map_or(&[][..], |s| s.conditions.as_slice());
    let mut status = HorizontalPodAutoscalerStatus {
        observed_generation: hpa.metadata.generation,
        last_scale_time: previous
            .map(|s| s.last_scale_time.clone())
            .unwrap_or_default(),
        ..HorizontalPodAutoscalerStatus::default()
    };
    let mut writes = Vec::new();
    let target = snapshot.get::<Deployment>(namespace, &spec.scale_target_ref.name);
    let Some(deployment) = target else {
        let decision = Decision {
            desired: 0,
            reason: String::new(),
            recommendation: None,
            current_metrics: Vec::new(),
            conditions: vec![(
                "AbleToScale",
                "False",
                "FailedGetScale",
                format!(
                    "the HPA controller was unable to get the target's current scale: deployment {:?} not found",
                    spec.scale_target_ref.name
                ),
            )],
        };
        status.conditions = conditions(&decision, previous_conditions, &now_text);
        return finish(hpa, status, writes, &decision);
    };
    let current = deployment.spec.replicas;
    let selector = &deployment.spec.selector;
    let pods: Vec<PodSample> = snapshot
        .list::<Pod>(Some(namespace))
        .filter(|p| !selector.is_empty() && selector.matches(&p.metadata.labels))
        .map(|p| pod_sample(p, view.pod(p)))
        .collect();
    let entries = history
        .entry(hpa.metadata.uid.clone())
        .or_insert_with(|| vec![(ctx.now, current)]);
    let windows = windows(spec, ctx);
    let decision = decide(spec, current, &pods, entries, ctx.now, windows);
    if let Some(recommendation) = decision.recommendation {
        let keep = windows.up.max(windows.down);
        entries.retain(|(at, _)| *at > ctx.now.saturating_sub(keep));
        entries.push((ctx.now, recommendation));
    }
    status.current_replicas = deployment.status.as_ref().map_or(0, |s| s.replicas);
    status.desired_replicas = decision.desired;
    status.current_metrics.clone_from(&decision.current_metrics);
    status.conditions = conditions(&decision, previous_conditions, &now_text);
    if decision.desired != current {
        let mut scaled = deployment.clone();
        scaled.spec.replicas = decision.desired;
        writes.push(Write::update(scaled));
        writes.push(Write::Event {
            involved: reference(hpa),
            reason: "SuccessfulRescale".to_owned(),
            message: format!(
                "New size: {}; reason: {}",
                decision.desired, decision.reason
            ),
            type_: "Normal",
        });
        status.last_scale_time = now_text;
    }
    finish(hpa, status, writes, &decision)
}

/// Adds the status write when it changed, and a warning event when scaling stopped
/// working (only on the transition, not every sync).
fn finish(
    hpa: &HorizontalPodAutoscaler,
    status: HorizontalPodAutoscalerStatus,
    mut writes: Vec<Write>,
    decision: &Decision,
) -> Outcome {
    let was_failing = |type_: &str| {
        hpa.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == type_)
                .is_some_and(|c| c.status == "False")
        })
    };
    for (type_, state, reason, message) in &decision.conditions {
        // ScalingLimited=False is the good case; the others being False is a problem.
        let failing = *state == "False" && *type_ != "ScalingLimited";
        if failing && *reason != "ScalingDisabled" && !was_failing(type_) {
            writes.push(Write::Event {
                involved: reference(hpa),
                reason: (*reason).to_owned(),
                message: message.clone(),
                type_: "Warning",
            });
        }
    }
    if hpa.status.as_ref() != Some(&status) {
        let mut updated = hpa.clone();
        updated.status = Some(status);
        writes.push(Write::update_status(updated));
    }
    Outcome {
        writes,
        requeue_after: None::<Duration>,
    }
}

#[cfg(test)]
mod tests {
    // Fixtures are manifests, edited field by field as a user edits one (see
    // `fixtures`): JSON until they are decoded into a snapshot.
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        controllers::fixtures::typed,
        objects::{Kind as _, Object},
    };

    fn spec(min: i32, max: i32, metrics: Value) -> HorizontalPodAutoscalerSpec {
        typed(json!({
            "scaleTargetRef": {"kind": "Deployment", "name": "web"},
            "minReplicas": min, "maxReplicas": max, "metrics": metrics,
        }))
    }

    fn cpu(percent: i32) -> Value {
        json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": percent}}}])
    }

    fn connections(per_pod: &str) -> Value {
        json!([{"type": "Pods", "pods": {"metric": {"name": NEW_CONNECTIONS_PER_SECOND}, "target": {"type": "AverageValue", "averageValue": per_pod}}}])
    }

    /// Ready pods requesting 100m CPU, using `cpu` millicores and `cps` connections/s.
    fn pods(usage: &[Option<(u64, f64)>]) -> Vec<PodSample> {
        usage
            .iter()
            .enumerate()
            .map(|(i, u)| PodSample {
                name: format!("p{i}"),
                ready: true,
                cpu_request: Some(100),
                memory_request: Some(1 << 20),
                figures: u.map(|(cpu, cps)| PodFigures {
                    cpu_millicores: cpu,
                    connections_per_second: cps,
                    ..PodFigures::default()
                }),
                ..PodSample::default()
            })
            .collect()
    }

    const NO_WINDOWS: Windows = Windows { up: 0, down: 0 };

    fn decision(spec: &HorizontalPodAutoscalerSpec, current: i32, pods: &[PodSample]) -> Decision {
        decide(spec, current, pods, &[], 1000, NO_WINDOWS)
    }

    fn desired(spec: &HorizontalPodAutoscalerSpec, current: i32, pods: &[PodSample]) -> i32 {
        decision(spec, current, pods).desired
    }

    #[test]
    fn the_kubernetes_rule_with_tolerance() {
        let s = spec(1, 10, cpu(50));
        // 2 pods at 90% of request against 50%: ceil(2 × 90/50) = 4.
        assert_eq!(
            desired(&s, 2, &pods(&[Some((90, 0.0)), Some((90, 0.0))])),
            4
        );
        // 54% against 50%: ratio 1.08, inside the tolerance.
        assert_eq!(
            desired(&s, 2, &pods(&[Some((54, 0.0)), Some((54, 0.0))])),
            2
        );
        // 56%: 1.12, outside: ceil(2 × 1.12) = 3.
        assert_eq!(
            desired(&s, 2, &pods(&[Some((56, 0.0)), Some((56, 0.0))])),
            3
        );
        // 10% of 50% on 4 pods: ceil(4 × 0.2) = 1.
        let four = pods(&[Some((10, 0.0)); 4]);
        assert_eq!(desired(&s, 4, &four), 1);
        let d = decision(&s, 2, &pods(&[Some((90, 0.0)), Some((90, 0.0))]));
        assert_eq!(
            d.reason,
            "cpu resource utilization (percentage of request) above target"
        );
        assert_eq!(
            d.current_metrics[0]
                .resource
                .as_ref()
                .and_then(|r| r.current.average_utilization),
            Some(90)
        );
    }

    #[test]
    fn connection_rate_per_pod_and_the_largest_proposal_wins() {
        let s = spec(1, 10, connections("10"));
        // 25 and 35 conn/s against 10 per pod: ceil(2 × 3) = 6.
        assert_eq!(
            desired(&s, 2, &pods(&[Some((0, 25.0)), Some((0, 35.0))])),
            6
        );
        let mut both = cpu(50);
        both.as_array_mut()
            .expect("array")
            .extend(connections("10").as_array().expect("array").clone());
        let s = spec(1, 10, both);
        // CPU wants 4, connections want 6: 6.
        assert_eq!(
            desired(&s, 2, &pods(&[Some((90, 25.0)), Some((90, 35.0))])),
            6
        );
        let d = decision(&s, 2, &pods(&[Some((90, 25.0)), Some((90, 35.0))]));
        assert_eq!(
            d.current_metrics[1]
                .pods
                .as_ref()
                .and_then(|p| p.current.average_value.as_deref()),
            Some("30")
        );
    }

    #[test]
    fn clamped_to_min_and_max() {
        let s = spec(2, 5, cpu(50));
        let d = decision(&s, 3, &pods(&[Some((500, 0.0)); 3]));
        assert_eq!(d.desired, 5);
        assert_eq!(d.conditions[2].2, "TooManyReplicas");
        let d = decision(&s, 3, &pods(&[Some((1, 0.0)); 3]));
        assert_eq!(d.desired, 2);
        assert_eq!(d.conditions[2].2, "TooFewReplicas");
        // Outside the range already: straight to the bound.
        assert_eq!(desired(&s, 9, &pods(&[Some((50, 0.0)); 9])), 5);
        assert_eq!(desired(&s, 1, &pods(&[Some((50, 0.0))])), 2);
        // Zero replicas: scaling is off.
        assert_eq!(desired(&s, 0, &[]), 0);
    }

    #[test]
    fn missing_figures_are_conservative() {
        let s = spec(1, 10, cpu(50));
        // Scale down with one pod unreported: it counts as at target, (10+10+50)/3 = 23%
        // → ceil(3 × 0.46) = 2 instead of ceil(2 × 0.2) = 1.
        assert_eq!(
            desired(&s, 3, &pods(&[Some((10, 0.0)), Some((10, 0.0)), None])),
            2
        );
        // Scale up with one unreported: it counts as 0, (100+100+0)/3 = 66% → 4, not 4 of 2.
        assert_eq!(
            desired(&s, 3, &pods(&[Some((100, 0.0)), Some((100, 0.0)), None])),
            4
        );
        // The unreported pod cancels a small scale-up (60+0)/2 = 30% < 50%: stay.
        assert_eq!(desired(&s, 2, &pods(&[Some((60, 0.0)), None])), 2);
        // Unready pods' CPU is ignored; on a scale-up they count as 0.
        let mut p = pods(&[Some((100, 0.0)), Some((900, 0.0))]);
        p[1].ready = false;
        assert_eq!(desired(&s, 2, &p), 2, "(100+0)/2 = 50%: at target");
        // No figures at all: no decision, and ScalingActive says why.
        let d = decision(&s, 2, &pods(&[None, None]));
        assert_eq!(d.desired, 2);
        assert_eq!(d.conditions[1].1, "False");
        // Utilisation without requests cannot be computed.
        let mut p = pods(&[Some((100, 0.0))]);
        p[0].cpu_request = None;
        let d = decision(&s, 1, &p);
        assert!(
            d.conditions[1].3.contains("missing request for cpu"),
            "{d:?}"
        );
    }

    #[test]
    fn scale_down_waits_for_the_highest_recommendation_of_the_window() {
        let windows = Windows { up: 0, down: 300 };
        let history = [(701, 6), (900, 4), (1000, 4)];
        assert_eq!(
            stabilize(6, 2, &history, 1000, windows),
            6,
            "701 is inside 300 s"
        );
        assert_eq!(
            stabilize(6, 2, &history, 1001, windows),
            4,
            "701 has left the window"
        );
        assert_eq!(stabilize(6, 2, &history, 1300, windows), 2);
        // Scaling up is not held back by a down window.
        assert_eq!(stabilize(2, 8, &history, 1000, windows), 8);
        // An up window holds scale-ups to its lowest recommendation.
        let up = Windows { up: 60, down: 0 };
        assert_eq!(stabilize(2, 8, &[(990, 3)], 1000, up), 3);
        let s = spec(1, 10, cpu(50));
        let d = decide(
            &s,
            4,
            &pods(&[Some((10, 0.0)); 4]),
            &[(900, 4)],
            1000,
            windows,
        );
        assert_eq!(d.desired, 4);
        assert_eq!(d.recommendation, Some(1));
        assert_eq!(d.conditions[0].2, "ScaleDownStabilized");
    }

    #[test]
    fn own_status_writes_do_not_retrigger_but_unseen_autoscalers_do() {
        let autoscaler = Autoscaler::new(Usage::default());
        let hpa: HorizontalPodAutoscaler = typed(
            json!({"metadata": {"name": "web", "namespace": "default", "uid": "h1", "generation": 2},
            "status": {"observedGeneration": 2}}),
        );
        let change = |object: &HorizontalPodAutoscaler, deleted| Change {
            object: std::sync::Arc::new(object.clone().into_object()),
            deleted,
            previous: None,
        };
        let snapshot = Snapshot::default();
        // Never evaluated by this process (a restart): looked at.
        assert_eq!(
            autoscaler.affected(&change(&hpa, false), &snapshot).len(),
            1
        );
        if let Ok(mut history) = autoscaler.history.lock() {
            history.insert("h1".to_owned(), vec![(1000, 2)]);
        }
        // Its own status write: left to the sync period.
        assert!(
            autoscaler
                .affected(&change(&hpa, false), &snapshot)
                .is_empty()
        );
        // A spec change: at once.
        let mut edited = hpa.clone();
        edited.metadata.generation = 3;
        assert_eq!(
            autoscaler
                .affected(&change(&edited, false), &snapshot)
                .len(),
            1
        );
        // Deleted: its history goes.
        assert!(
            autoscaler
                .affected(&change(&hpa, true), &snapshot)
                .is_empty()
        );
        assert!(autoscaler.history.lock().is_ok_and(|h| h.is_empty()));
    }

    #[test]
    fn reconcile_scales_the_deployment_records_an_event_and_is_idempotent() {
        use crate::{
            controllers::Settings,
            usage::{NodeFigures, UsageView},
        };
        let hpa: HorizontalPodAutoscaler = typed(
            json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default", "uid": "h1", "generation": 1},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 1,
                "maxReplicas": 10, "metrics": cpu(50)}}),
        );
        let deployment: Deployment = typed(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "d1", "resourceVersion": "7"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}},
            "status": {"replicas": 2}}));
        let pod = |i: u32| {
            typed::<Pod>(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("web-{i}"), "namespace": "default", "uid": format!("p{i}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "100m"}}}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}))
            .into_object()
        };
        let figures = |i: u32| PodFigures {
            namespace: "default".to_owned(),
            name: format!("web-{i}"),
            uid: format!("p{i}"),
            cpu_millicores: 90,
            ..PodFigures::default()
        };
        let view = UsageView::new(BTreeMap::from([(
            "n1".to_owned(),
            NodeFigures {
                received: 1000,
                window_ms: 1000,
                cpu_millicores: 0,
                memory_bytes: 0,
                pods: vec![figures(1), figures(2)],
                backends: BTreeMap::new(),
            },
        )]));
        let snapshot_of = |hpa: &HorizontalPodAutoscaler, deployment: Deployment| {
            Snapshot::from_objects(
                vec![
                    hpa.clone().into_object(),
                    deployment.into_object(),
                    pod(1),
                    pod(2),
                ],
                1,
            )
        };
        let snapshot = snapshot_of(&hpa, deployment);
        let ctx = Context {
            now: 1000,
            settings: Settings::default(),
        };
        let mut history = HashMap::new();
        let outcome = plan(&hpa, &snapshot, &ctx, &view, &mut history);
        let [
            Write::Update(Object::Deployment(object)),
            Write::Event { message, .. },
            Write::UpdateStatus(Object::HorizontalPodAutoscaler(status)),
        ] = outcome.writes.as_slice()
        else {
            panic!("{outcome:?}")
        };
        assert_eq!(object.spec.replicas, 4);
        assert_eq!(
            object.metadata.resource_version, "7",
            "computed from that version"
        );
        assert_eq!(
            message,
            "New size: 4; reason: cpu resource utilization (percentage of request) above target"
        );
        let reported = status.status.as_ref().expect("a status");
        assert_eq!(reported.desired_replicas, 4);
        assert_eq!(reported.last_scale_time, util::rfc3339(1000));

        // Once the deployment has 4 and the status is written, the same figures change nothing.
        let mut deployment = snapshot
            .get::<Deployment>("default", "web")
            .expect("d")
            .clone();
        deployment.spec.replicas = 4;
        let hpa = status.clone();
        let snapshot = snapshot_of(&hpa, deployment);
        // The two pods at 90% against 50% propose ceil(2 × 1.8) = 4: the current size.
        let first = plan(&hpa, &snapshot, &ctx, &view, &mut history);
        assert!(
            first.writes.iter().all(|w| !matches!(w, Write::Update(_))),
            "{first:?}"
        );
        let settled = match first.writes.as_slice() {
            [Write::UpdateStatus(Object::HorizontalPodAutoscaler(object))] => object.clone(),
            [] => hpa.clone(),
            other => panic!("{other:?}"),
        };
        let again = plan(&settled, &snapshot, &ctx, &view, &mut history);
        assert_eq!(again.writes, Vec::new(), "idempotent");
    }
}
