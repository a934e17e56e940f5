use berth_api::{
    Resource as _,
    apps::StatefulSet,
    validation::{FieldError, FieldPath, Validator},
};

use super::Strategy;
use crate::{
    registry::{Batch, Registry, Result},
    store::Op,
};

/// A StatefulSet keeps each of its pod templates as a revision it owns, as a Deployment
/// does; the controller labels pods with the revision they were made from.
pub(in crate::registry) struct StatefulSetStrategy;

impl Strategy for StatefulSetStrategy {
    type Object = StatefulSet;

    fn prepare_for_create(&self, set: &mut StatefulSet) {
        set.status = None;
    }

    fn prepare_for_update(&self, set: &mut StatefulSet, old: &StatefulSet) {
        set.status = old.status.clone();
    }

    /// As in Kubernetes, what names and selects the pods and their claims is fixed.
    fn validate_update(&self, set: &StatefulSet, old: &StatefulSet) -> Vec<FieldError> {
        let mut v = Validator::default();
        let (new, old) = (&set.spec, &old.spec);
        let spec = FieldPath::root("spec");
        for (field, changed) in [
            ("selector", new.selector != old.selector),
            ("serviceName", new.service_name != old.service_name),
            (
                "volumeClaimTemplates",
                new.volume_claim_templates != old.volume_claim_templates,
            ),
            (
                "podManagementPolicy",
                new.pod_management_policy != old.pod_management_policy,
            ),
        ] {
            if changed {
                v.error(
                    &spec.child(field),
                    "field is immutable: updates to a statefulset may change only replicas, ordinals, template, updateStrategy, persistentVolumeClaimRetentionPolicy and minReadySeconds",
                );
            }
        }
        v.into_errors()
    }

    fn spec_changed(&self, set: &StatefulSet, old: &StatefulSet) -> bool {
        set.spec != old.spec
    }

    async fn complete(
        &self,
        registry: &Registry,
        _old: Option<&StatefulSet>,
        set: &mut StatefulSet,
        _batch: &mut Batch,
    ) -> Result<Vec<Op>> {
        // Refused here rather than pod by pod once the controller makes them.
        registry.admit_pod_spec(
            StatefulSet::KIND,
            &set.metadata.name,
            &set.spec.template.spec,
            &FieldPath::root("spec").child("template").child("spec"),
        )?;
        registry.plan_revision_history(set).await
    }

    /// Revision history is owned by its StatefulSet and goes with it.
    async fn delete_ops(&self, registry: &Registry, set: &StatefulSet) -> Result<Vec<Op>> {
        registry.history_deletion(set).await
    }
}
