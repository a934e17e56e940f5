//! Kinds with no rules of their own beyond the common ones.

use std::marker::PhantomData;

use berth_api::{
    apps::ReplicaSet, autoscaling::HorizontalPodAutoscaler, core::Node,
    disruption::PodDisruptionBudget, policy::ResourceQuota,
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

status_and_spec!(NodeStrategy, Node);
status_and_spec!(ReplicaSetStrategy, ReplicaSet);
status_and_spec!(HorizontalPodAutoscalerStrategy, HorizontalPodAutoscaler);
status_and_spec!(ResourceQuotaStrategy, ResourceQuota);
status_and_spec!(PodDisruptionBudgetStrategy, PodDisruptionBudget);
