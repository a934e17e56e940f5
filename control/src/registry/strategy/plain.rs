//! Kinds with no rules of their own beyond the common ones.

use std::marker::PhantomData;

use berth_api::{
    apps::ReplicaSet, autoscaling::HorizontalPodAutoscaler, core::Node,
    disruption::PodDisruptionBudget, networking::NetworkPolicy, policy::ResourceQuota,
};

use super::Strategy;
use crate::objects::Kind;

/// A kind with neither a status subresource nor a spec (Endpoints, Event,
/// ControllerRevision): every write replaces the whole object.
pub(in crate::registry) struct Plain<R>(PhantomData<R>);

impl<R> Plain<R> {
    pub(in crate::registry) const fn new() -> Self {
        Self(PhantomData)
    }
}

impl<R: Kind> Strategy for Plain<R> {
    type Object = R;
}

/// A kind whose status is written through `/status` only and whose spec is what the
/// generation counts, with no other rule.
macro_rules! status_and_spec {
    ($strategy:ident, $kind:ty) => {
        pub(in crate::registry) struct $strategy;

        impl Strategy for $strategy {
            type Object = $kind;

            fn prepare_for_create(&self, object: &mut $kind) {
                object.status = None;
            }

            fn prepare_for_update(&self, object: &mut $kind, old: &$kind) {
                object.status = old.status.clone();
            }

            fn spec_changed(&self, object: &$kind, old: &$kind) -> bool {
                object.spec != old.spec
            }
        }
    };
}

/// Nodes: status through `/status` only; a `NoExecute` taint is stamped with the time it
/// was added (tolerations count from then), as Kubernetes' API server does.
pub(in crate::registry) struct NodeStrategy;

impl Strategy for NodeStrategy {
    type Object = Node;

    fn prepare_for_create(&self, node: &mut Node) {
        node.status = None;
        stamp_no_execute(node, None);
    }

    fn prepare_for_update(&self, node: &mut Node, old: &Node) {
        node.status = old.status.clone();
        stamp_no_execute(node, Some(old));
    }

    fn spec_changed(&self, node: &Node, old: &Node) -> bool {
        node.spec != old.spec
    }
}

/// Gives each `NoExecute` taint without `timeAdded` the one it had in `old`, or now.
fn stamp_no_execute(node: &mut Node, old: Option<&Node>) {
    use berth_api::scheduling::NO_EXECUTE;
    for taint in &mut node.spec.taints {
        if taint.effect != NO_EXECUTE || taint.time_added.is_some() {
            continue;
        }
        let before = old
            .into_iter()
            .flat_map(|o| &o.spec.taints)
            .find(|t| t.key == taint.key && t.value == taint.value && t.effect == taint.effect)
            .and_then(|t| t.time_added.clone());
        taint.time_added = Some(before.unwrap_or_else(berth_api::time::rfc3339_now));
    }
}
status_and_spec!(ReplicaSetStrategy, ReplicaSet);
status_and_spec!(HorizontalPodAutoscalerStrategy, HorizontalPodAutoscaler);
status_and_spec!(ResourceQuotaStrategy, ResourceQuota);
status_and_spec!(PodDisruptionBudgetStrategy, PodDisruptionBudget);

/// NetworkPolicies: stored with `policyTypes` filled in, as Kubernetes defaults it, so
/// what a reader sees is what the agents enforce.
pub(in crate::registry) struct NetworkPolicyStrategy;

impl Strategy for NetworkPolicyStrategy {
    type Object = NetworkPolicy;

    fn prepare_for_create(&self, policy: &mut NetworkPolicy) {
        policy.default_policy_types();
    }

    fn prepare_for_update(&self, policy: &mut NetworkPolicy, _old: &NetworkPolicy) {
        policy.default_policy_types();
    }

    fn spec_changed(&self, policy: &NetworkPolicy, old: &NetworkPolicy) -> bool {
        policy.spec != old.spec
    }
}
