use berth_api::core::Pod;

use super::Strategy;
use crate::registry::DeleteOptions;

/// Kubernetes' default `terminationGracePeriodSeconds`.
pub const DEFAULT_POD_GRACE_SECONDS: i64 = 30;

pub(in crate::registry) struct PodStrategy;

impl Strategy for PodStrategy {
    type Object = Pod;

    fn prepare_for_create(&self, pod: &mut Pod) {
        pod.status = None;
    }

    fn prepare_for_update(&self, pod: &mut Pod, old: &Pod) {
        pod.status = old.status.clone();
    }

    fn spec_changed(&self, pod: &Pod, old: &Pod) -> bool {
        pod.spec != old.spec
    }

    /// A pod's deletion waits for its node to stop it, unless no node runs it (unbound,
    /// or already finished) or the grace asked for is 0.
    fn graceful_deletion(&self, pod: &Pod, options: &DeleteOptions) -> Option<i64> {
        let finished = pod
            .status
            .as_ref()
            .is_some_and(|s| matches!(s.phase.as_str(), "Succeeded" | "Failed"));
        if pod.spec.node_name.is_empty() || finished {
            return None;
        }
        let grace = options
            .grace_period_seconds
            .or(pod.spec.termination_grace_period_seconds)
            .unwrap_or(DEFAULT_POD_GRACE_SECONDS);
        (grace > 0).then_some(grace)
    }
}
