use berth_api::{Resource as _, core::Pod, validation::FieldPath};

use super::Strategy;
use crate::{
    registry::{Batch, DeleteOptions, Registry, Result},
    store::Op,
};

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

    async fn complete(
        &self,
        registry: &Registry,
        old: Option<&Pod>,
        pod: &mut Pod,
        batch: &mut Batch,
    ) -> Result<Vec<Op>> {
        if old.is_none() {
            registry.admit_pod_security(pod, batch).await?;
            registry.admit_service_account(pod, batch).await?;
            registry.admit_default_tolerations(pod);
            registry.apply_limit_ranges(pod, batch).await?;
            let namespace = pod.metadata.namespace.clone();
            registry
                .admit_quota(
                    "pods",
                    &pod.metadata.name,
                    &namespace,
                    crate::registry::quota::pod_usage(pod),
                    batch,
                )
                .await?;
        }
        registry.admit_pod_spec(
            Pod::KIND,
            &pod.metadata.name,
            &pod.spec,
            &FieldPath::root("spec"),
        )?;
        Ok(Vec::new())
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

#[cfg(test)]
mod tests {
    use berth_api::core::PodStatus;

    use super::*;

    fn bound(grace: Option<i64>) -> Pod {
        let mut pod = Pod::default();
        pod.spec.node_name = "n1".into();
        pod.spec.termination_grace_period_seconds = grace;
        pod
    }

    fn asked(grace: Option<i64>) -> DeleteOptions {
        DeleteOptions {
            grace_period_seconds: grace,
            ..DeleteOptions::default()
        }
    }

    #[test]
    fn a_running_pod_gets_the_grace_asked_for_then_its_own_then_the_default() {
        assert_eq!(
            PodStrategy.graceful_deletion(&bound(Some(5)), &asked(Some(2))),
            Some(2)
        );
        assert_eq!(
            PodStrategy.graceful_deletion(&bound(Some(5)), &asked(None)),
            Some(5)
        );
        assert_eq!(
            PodStrategy.graceful_deletion(&bound(None), &asked(None)),
            Some(DEFAULT_POD_GRACE_SECONDS)
        );
    }

    #[test]
    fn a_pod_no_node_runs_or_asked_to_go_now_goes_now() {
        assert_eq!(
            PodStrategy.graceful_deletion(&Pod::default(), &asked(None)),
            None
        );
        assert_eq!(
            PodStrategy.graceful_deletion(&bound(None), &DeleteOptions::force()),
            None
        );
        let mut finished = bound(None);
        finished.status = Some(PodStatus {
            phase: "Succeeded".into(),
            ..PodStatus::default()
        });
        assert_eq!(PodStrategy.graceful_deletion(&finished, &asked(None)), None);
    }

    #[test]
    fn an_update_keeps_the_stored_status_and_a_create_drops_the_given_one() {
        let mut stored = bound(None);
        stored.status = Some(PodStatus {
            phase: "Running".into(),
            ..PodStatus::default()
        });
        let mut update = bound(Some(3));
        PodStrategy.prepare_for_update(&mut update, &stored);
        assert_eq!(update.status, stored.status);
        assert!(PodStrategy.spec_changed(&update, &stored));
        let mut create = stored.clone();
        PodStrategy.prepare_for_create(&mut create);
        assert_eq!(create.status, None);
    }
}
