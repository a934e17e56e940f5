//! What each kind adds to the generic registry, after Kubernetes' registry strategies
//! (pkg/registry/<kind>/strategy.go): server-owned fields on create and update, what an
//! update keeps from the stored object (status, owned by the `/status` subresource), when
//! the spec changed (the generation), the store writes that go with a write or a delete
//! (allocations, revision history), and how a delete begins (grace, a terminating phase).
//!
//! Every hook works on the kind's typed object: the registry decodes a write once, runs
//! the hooks, and encodes the result once for the store. Adding a kind is a file here
//! and an arm in [`with_strategy`].

mod batch;
mod configmap;
mod deployment;
mod namespace;
mod plain;
pub(super) mod pod;
mod rbac;
mod secret;
mod service;
mod statefulset;
mod storage;

use std::future::Future;

use berth_api::validation::{FieldError, FieldPath, Validator};
use serde_json::Value;

pub(super) use self::{
    batch::{CronJobStrategy, JobStrategy},
    configmap::ConfigMapStrategy,
    deployment::{Templated, WithHistory},
    namespace::NamespaceStrategy,
    plain::*,
    pod::PodStrategy,
    rbac::{ClusterRoleBindingStrategy, RoleBindingStrategy},
    secret::SecretStrategy,
    service::ServiceStrategy,
    statefulset::StatefulSetStrategy,
    storage::{PersistentVolumeClaimStrategy, PersistentVolumeStrategy},
};
use super::{Batch, DeleteOptions, Registry, Result};
use crate::{
    objects::Kind,
    store::{Op, Revision},
};

pub(super) trait Strategy: Sync {
    type Object: Kind;

    /// Server-owned fields of a new object beyond its metadata.
    fn prepare_for_create(&self, _object: &mut Self::Object) {}

    /// What an update keeps from the stored object beyond its metadata: the status, for
    /// kinds whose status is written through the `/status` subresource only.
    fn prepare_for_update(&self, _object: &mut Self::Object, _old: &Self::Object) {}

    /// What forbids writing `object` over `old` beyond the kind's own validation (fields
    /// fixed once set).
    fn validate_update(&self, _object: &Self::Object, _old: &Self::Object) -> Vec<FieldError> {
        Vec::new()
    }

    /// Whether `object` asks for something else than `old` did: the generation counts these.
    fn spec_changed(&self, _object: &Self::Object, _old: &Self::Object) -> bool {
        false
    }

    /// Fills what the control plane allocates or records for the write of `object` over
    /// `old` (None: a create), and returns the store writes that go with it; `batch` is
    /// what earlier objects of the same transaction took.
    fn complete(
        &self,
        _registry: &Registry,
        _old: Option<&Self::Object>,
        _object: &mut Self::Object,
        _batch: &mut Batch,
    ) -> impl Future<Output = Result<Vec<Op>>> + Send {
        async { Ok(Vec::new()) }
    }

    /// The store writes that go with a status write of `object` over `old`.
    fn status_ops(&self, _old: &Self::Object, _object: &Self::Object) -> Vec<Op> {
        Vec::new()
    }

    /// Runs before a delete: Some(object as it now is) when the delete only began and the
    /// object stays for now.
    fn begin_delete(
        &self,
        _registry: &Registry,
        _name: &str,
        _wanted: Option<Revision>,
    ) -> impl Future<Output = Result<Option<Value>>> + Send {
        async { Ok(None) }
    }

    /// The grace `object` gets before it goes (None: it goes now).
    fn graceful_deletion(&self, _object: &Self::Object, _options: &DeleteOptions) -> Option<i64> {
        None
    }

    /// The store writes that go with deleting `object`.
    fn delete_ops(
        &self,
        _registry: &Registry,
        _object: &Self::Object,
    ) -> impl Future<Output = Result<Vec<Op>>> + Send {
        async { Ok(Vec::new()) }
    }
}

/// Counts a new object of kind `plural` against its namespace's quotas.
async fn admit_count<K: Kind>(
    registry: &Registry,
    plural: &str,
    object: &K,
    batch: &mut Batch,
) -> Result<()> {
    let meta = object.meta();
    registry
        .admit_quota(
            plural,
            &meta.name,
            &meta.namespace,
            [(plural.to_owned(), 1)].into(),
            batch,
        )
        .await
}

/// Kubernetes' rule for ConfigMaps and Secrets marked `immutable`: their values and the
/// mark itself stay as they are.
fn immutable_update(old: Option<bool>, new: Option<bool>, values_changed: bool) -> Vec<FieldError> {
    let mut v = Validator::default();
    if old == Some(true) {
        if new != Some(true) {
            v.error(
                &FieldPath::root("immutable"),
                "field is immutable when `immutable` is set",
            );
        }
        if values_changed {
            v.error(
                &FieldPath::root("data"),
                "field is immutable when `immutable` is set",
            );
        }
    }
    v.into_errors()
}

/// Runs `$body` with `$strategy` bound to the strategy of kind `$rt`: the kind table of
/// the registry. A kind missing here is refused as an internal error.
macro_rules! with_strategy {
    ($rt:expr, |$strategy:ident| $body:expr) => {{
        use berth_api::{
            Resource as _,
            accounts::ServiceAccount,
            apps::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet},
            autoscaling::HorizontalPodAutoscaler,
            batch::{CronJob, Job},
            configuration::{ConfigMap, Secret},
            core::{Endpoints, Event, Namespace, Node, Pod, Service},
            discovery::EndpointSlice,
            disruption::PodDisruptionBudget,
            networking::NetworkPolicy,
            policy::{LimitRange, ResourceQuota},
            rbac::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
            storage::{PersistentVolume, PersistentVolumeClaim},
        };
        use $crate::registry::strategy::*;
        match $rt.kind {
            Namespace::KIND => {
                let $strategy = &NamespaceStrategy;
                $body
            }
            Pod::KIND => {
                let $strategy = &PodStrategy;
                $body
            }
            Service::KIND => {
                let $strategy = &ServiceStrategy;
                $body
            }
            Deployment::KIND => {
                let $strategy = &Deployment::STRATEGY;
                $body
            }
            Node::KIND => {
                let $strategy = &NodeStrategy;
                $body
            }
            ReplicaSet::KIND => {
                let $strategy = &ReplicaSetStrategy;
                $body
            }
            DaemonSet::KIND => {
                let $strategy = &DaemonSet::STRATEGY;
                $body
            }
            PodDisruptionBudget::KIND => {
                let $strategy = &PodDisruptionBudgetStrategy;
                $body
            }
            NetworkPolicy::KIND => {
                let $strategy = &NetworkPolicyStrategy;
                $body
            }
            StatefulSet::KIND => {
                let $strategy = &StatefulSetStrategy;
                $body
            }
            HorizontalPodAutoscaler::KIND => {
                let $strategy = &HorizontalPodAutoscalerStrategy;
                $body
            }
            Job::KIND => {
                let $strategy = &JobStrategy;
                $body
            }
            CronJob::KIND => {
                let $strategy = &CronJobStrategy;
                $body
            }
            Endpoints::KIND => {
                let $strategy = &Plain::<Endpoints>::new();
                $body
            }
            EndpointSlice::KIND => {
                let $strategy = &Plain::<EndpointSlice>::new();
                $body
            }
            Event::KIND => {
                let $strategy = &Plain::<Event>::new();
                $body
            }
            ControllerRevision::KIND => {
                let $strategy = &Plain::<ControllerRevision>::new();
                $body
            }
            ConfigMap::KIND => {
                let $strategy = &ConfigMapStrategy;
                $body
            }
            Secret::KIND => {
                let $strategy = &SecretStrategy;
                $body
            }
            PersistentVolumeClaim::KIND => {
                let $strategy = &PersistentVolumeClaimStrategy;
                $body
            }
            PersistentVolume::KIND => {
                let $strategy = &PersistentVolumeStrategy;
                $body
            }
            LimitRange::KIND => {
                let $strategy = &Plain::<LimitRange>::new();
                $body
            }
            ResourceQuota::KIND => {
                let $strategy = &ResourceQuotaStrategy;
                $body
            }
            ServiceAccount::KIND => {
                let $strategy = &Plain::<ServiceAccount>::new();
                $body
            }
            Role::KIND => {
                let $strategy = &Plain::<Role>::new();
                $body
            }
            ClusterRole::KIND => {
                let $strategy = &Plain::<ClusterRole>::new();
                $body
            }
            RoleBinding::KIND => {
                let $strategy = &RoleBindingStrategy;
                $body
            }
            ClusterRoleBinding::KIND => {
                let $strategy = &ClusterRoleBindingStrategy;
                $body
            }
            kind => Err($crate::registry::Error::internal(format!(
                "the registry has no strategy for kind {kind}"
            ))),
        }
    }};
}
pub(super) use with_strategy;

#[cfg(test)]
mod tests {
    /// A kind the API serves but the registry cannot write fails only at its first write
    /// (a controller's, in the field); every kind of the table must have a strategy.
    #[test]
    fn every_kind_the_api_serves_has_a_strategy() {
        for rt in berth_api::RESOURCE_TYPES {
            let found: Result<(), crate::registry::Error> = with_strategy!(rt, |_strategy| Ok(()));
            assert!(found.is_ok(), "{}: {found:?}", rt.kind);
        }
    }
}
