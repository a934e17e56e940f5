use berth_api::{
    Resource as _,
    apps::{Deployment, REVISION_ANNOTATION},
    validation::FieldPath,
};

use super::Strategy;
use crate::{
    registry::{Batch, Registry, Result},
    store::Op,
};

/// A Deployment keeps each of its pod templates as a revision it owns.
pub(in crate::registry) struct DeploymentStrategy;

impl Strategy for DeploymentStrategy {
    type Object = Deployment;

    fn prepare_for_create(&self, deployment: &mut Deployment) {
        deployment.status = None;
    }

    /// The revision annotation is server-owned: the stored one stays unless a new
    /// revision is cut.
    fn prepare_for_update(&self, deployment: &mut Deployment, old: &Deployment) {
        deployment.status = old.status.clone();
        set_revision(deployment, revision_of(old));
    }

    fn spec_changed(&self, deployment: &Deployment, old: &Deployment) -> bool {
        deployment.spec != old.spec
    }

    async fn complete(
        &self,
        registry: &Registry,
        _old: Option<&Deployment>,
        deployment: &mut Deployment,
        _batch: &mut Batch,
    ) -> Result<Vec<Op>> {
        // Refused here rather than pod by pod once its ReplicaSet runs.
        registry.admit_pod_spec(
            Deployment::KIND,
            &deployment.metadata.name,
            &deployment.spec.template.spec,
            &FieldPath::root("spec").child("template").child("spec"),
        )?;
        registry.plan_revision_history(deployment).await
    }

    /// Revision history is owned by its Deployment and goes with it.
    async fn delete_ops(&self, registry: &Registry, deployment: &Deployment) -> Result<Vec<Op>> {
        registry.history_deletion(deployment).await
    }
}

/// The revision of the template `deployment` runs, from its annotation (0: none yet).
pub(in crate::registry) fn revision_of(deployment: &Deployment) -> i64 {
    deployment
        .metadata
        .annotations
        .get(REVISION_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

pub(in crate::registry) fn set_revision(deployment: &mut Deployment, revision: i64) {
    if revision != 0 {
        deployment
            .metadata
            .annotations
            .insert(REVISION_ANNOTATION.to_owned(), revision.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_keeps_the_stored_revision_unless_none_is_stored() {
        let mut stored = Deployment::default();
        set_revision(&mut stored, 3);
        let mut update = Deployment::default();
        set_revision(&mut update, 7);
        DeploymentStrategy.prepare_for_update(&mut update, &stored);
        assert_eq!(revision_of(&update), 3);
        let mut first = Deployment::default();
        set_revision(&mut first, 7);
        DeploymentStrategy.prepare_for_update(&mut first, &Deployment::default());
        assert_eq!(revision_of(&first), 7, "0 means none: the given one stays");
    }
}
