use berth_api::apps::Deployment;

use super::Strategy;
use crate::{
    registry::{
        Registry, Result,
        history::{revision_of, set_revision},
    },
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
    ) -> Result<Vec<Op>> {
        registry.plan_revision_history(deployment).await
    }

    /// Revision history is owned by its Deployment and goes with it.
    async fn delete_ops(&self, registry: &Registry, deployment: &Deployment) -> Result<Vec<Op>> {
        registry.history_deletion(deployment).await
    }
}
