use crate::{
    registry::{Batch, Registry, Result},
    store::Op,
};
use berth_api::{
    storage::{LOCAL_STORAGE_CLASS, PersistentVolume, PersistentVolumeClaim},
    validation::{FieldError, FieldPath, Validator},
};

use super::Strategy;

pub(in crate::registry) struct PersistentVolumeClaimStrategy;

impl Strategy for PersistentVolumeClaimStrategy {
    type Object = PersistentVolumeClaim;

    /// The default storage class and volume mode are written down, as Kubernetes'
    /// admission does, so the claim shows what it got.
    fn prepare_for_create(&self, claim: &mut PersistentVolumeClaim) {
        claim.status = None;
        claim
            .spec
            .storage_class_name
            .get_or_insert_with(|| LOCAL_STORAGE_CLASS.to_owned());
        claim
            .spec
            .volume_mode
            .get_or_insert_with(|| "Filesystem".to_owned());
    }

    fn prepare_for_update(&self, claim: &mut PersistentVolumeClaim, old: &PersistentVolumeClaim) {
        claim.status = old.status.clone();
        // `kubectl apply` of the manifest again leaves out what the server filled in.
        if claim.spec.storage_class_name.is_none() {
            claim.spec.storage_class_name = old.spec.storage_class_name.clone();
        }
        if claim.spec.volume_mode.is_none() {
            claim.spec.volume_mode = old.spec.volume_mode.clone();
        }
        if claim.spec.volume_name.is_empty() {
            claim.spec.volume_name = old.spec.volume_name.clone();
        }
    }

    /// As in Kubernetes, a claim's spec is fixed once made, but for binding it to a
    /// volume once (volume expansion is not supported).
    fn validate_update(
        &self,
        claim: &PersistentVolumeClaim,
        old: &PersistentVolumeClaim,
    ) -> Vec<FieldError> {
        let mut v = Validator::default();
        let spec = FieldPath::root("spec");
        if !old.spec.volume_name.is_empty() && claim.spec.volume_name != old.spec.volume_name {
            v.error(
                &spec.child("volumeName"),
                "field is immutable once the claim is bound",
            );
        }
        let mut unbound = claim.spec.clone();
        unbound.volume_name.clone_from(&old.spec.volume_name);
        if unbound != old.spec {
            v.error(
                &spec,
                "is immutable after creation except volumeName (resizing is not supported)",
            );
        }
        v.into_errors()
    }

    async fn complete(
        &self,
        registry: &Registry,
        old: Option<&PersistentVolumeClaim>,
        object: &mut PersistentVolumeClaim,
        batch: &mut Batch,
    ) -> Result<Vec<Op>> {
        if old.is_none() {
            super::admit_count(registry, "persistentvolumeclaims", object, batch).await?;
        }
        Ok(Vec::new())
    }

    fn spec_changed(&self, claim: &PersistentVolumeClaim, old: &PersistentVolumeClaim) -> bool {
        claim.spec != old.spec
    }
}

pub(in crate::registry) struct PersistentVolumeStrategy;

impl Strategy for PersistentVolumeStrategy {
    type Object = PersistentVolume;

    fn prepare_for_create(&self, volume: &mut PersistentVolume) {
        volume.status = None;
    }

    fn prepare_for_update(&self, volume: &mut PersistentVolume, old: &PersistentVolume) {
        volume.status = old.status.clone();
    }

    /// Where the data is and whose it is do not move.
    fn validate_update(
        &self,
        volume: &PersistentVolume,
        old: &PersistentVolume,
    ) -> Vec<FieldError> {
        let mut v = Validator::default();
        let spec = FieldPath::root("spec");
        if volume.spec.local != old.spec.local {
            v.error(&spec.child("local"), "field is immutable");
        }
        if volume.spec.node_affinity != old.spec.node_affinity {
            v.error(&spec.child("nodeAffinity"), "field is immutable");
        }
        v.into_errors()
    }

    fn spec_changed(&self, volume: &PersistentVolume, old: &PersistentVolume) -> bool {
        volume.spec != old.spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_bound_once_and_otherwise_fixed() {
        let mut old = PersistentVolumeClaim::default();
        old.spec.access_modes = vec!["ReadWriteOnce".into()];
        let mut bound = old.clone();
        bound.spec.volume_name = "pvc-1".into();
        assert_eq!(
            PersistentVolumeClaimStrategy.validate_update(&bound, &old),
            []
        );
        let mut rebound = bound.clone();
        rebound.spec.volume_name = "pvc-2".into();
        let errors = PersistentVolumeClaimStrategy.validate_update(&rebound, &bound);
        assert_eq!(errors[0].field, "spec.volumeName");
        let mut resized = bound.clone();
        resized
            .spec
            .resources
            .requests
            .insert("storage".into(), "2Gi".into());
        let errors = PersistentVolumeClaimStrategy.validate_update(&resized, &bound);
        assert_eq!(errors[0].field, "spec");
    }
}
