use berth_api::{
    apps::{DaemonSet, Deployment, PodTemplateSpec, REVISION_ANNOTATION, StatefulSet},
    validation::FieldPath,
};

use super::Strategy;
use crate::{
    objects::Kind,
    registry::{Batch, Registry, Result},
    store::Op,
};

/// A kind whose pod templates are kept as ControllerRevisions.
pub(in crate::registry) trait WithHistory: Kind {
    fn template(&self) -> &PodTemplateSpec;
    fn template_mut(&mut self) -> &mut PodTemplateSpec;
    fn history_limit(&self) -> i32;
    /// The revision the object says it runs, when it records one itself.
    fn recorded_revision(&self) -> Option<i64>;
    fn record_revision(&mut self, revision: i64);
}

/// Both kinds keep their template and history limit in the same places; what differs is
/// where the running revision is recorded.
macro_rules! with_history {
    ($kind:ty, |$this:ident| $recorded:expr, |$object:ident, $revision:ident| $record:expr) => {
        impl WithHistory for $kind {
            fn template(&self) -> &PodTemplateSpec {
                &self.spec.template
            }

            fn template_mut(&mut self) -> &mut PodTemplateSpec {
                &mut self.spec.template
            }

            fn history_limit(&self) -> i32 {
                self.spec.revision_history_limit
            }

            fn recorded_revision(&self) -> Option<i64> {
                let $this = self;
                $recorded
            }

            fn record_revision(&mut self, $revision: i64) {
                let $object = self;
                $record
            }
        }
    };
}

with_history!(
    Deployment,
    |deployment| Some(revision_of(deployment)),
    |deployment, revision| set_revision(deployment, revision)
);
// Like Kubernetes' DaemonSets and StatefulSets, they run their newest revision.
with_history!(DaemonSet, |_set| None, |_set, _revision| {});
with_history!(StatefulSet, |_set| None, |_set, _revision| {});

/// A kind that keeps each of its pod templates as a ControllerRevision it owns
/// (Deployment, DaemonSet), for `rollout history` and `rollout undo`.
pub(in crate::registry) trait Templated: WithHistory {
    /// Its strategy, for a rollback's write.
    type Strategy: Strategy<Object = Self> + Sync;
    const STRATEGY: Self::Strategy;
}

macro_rules! templated {
    ($($kind:ty),*) => {$(
        impl Templated for $kind {
            type Strategy = TemplatedStrategy<$kind>;
            const STRATEGY: Self::Strategy = TemplatedStrategy(std::marker::PhantomData);
        }
    )*};
}
templated!(Deployment, DaemonSet);

/// The strategy of a [`Templated`] kind: its status through `/status` only, its pod
/// template admitted when written and recorded as a revision it owns.
pub(in crate::registry) struct TemplatedStrategy<T>(std::marker::PhantomData<T>);

/// The status of a templated kind, which `/status` owns.
pub(in crate::registry) trait HasStatus {
    fn clear_status(&mut self);
    fn keep_status(&mut self, old: &Self);
    fn spec_differs(&self, old: &Self) -> bool;
}

macro_rules! has_status {
    ($($kind:ty),*) => {$(
        impl HasStatus for $kind {
            fn clear_status(&mut self) {
                self.status = None;
            }

            fn keep_status(&mut self, old: &Self) {
                self.status = old.status.clone();
            }

            fn spec_differs(&self, old: &Self) -> bool {
                self.spec != old.spec
            }
        }
    )*};
}
has_status!(Deployment, DaemonSet);

impl<T: Templated + HasStatus> Strategy for TemplatedStrategy<T> {
    type Object = T;

    fn prepare_for_create(&self, object: &mut T) {
        object.clear_status();
    }

    /// The revision annotation is server-owned: the stored one stays unless a new
    /// revision is cut.
    fn prepare_for_update(&self, object: &mut T, old: &T) {
        object.keep_status(old);
        set_revision(object, revision_of(old));
    }

    fn spec_changed(&self, object: &T, old: &T) -> bool {
        object.spec_differs(old)
    }

    async fn complete(
        &self,
        registry: &Registry,
        _old: Option<&T>,
        object: &mut T,
        _batch: &mut Batch,
    ) -> Result<Vec<Op>> {
        // Refused here rather than pod by pod once its controller runs.
        registry.admit_pod_spec(
            T::KIND,
            &object.meta().name,
            &object.template().spec,
            &FieldPath::root("spec").child("template").child("spec"),
        )?;
        registry.plan_revision_history(object).await
    }

    /// Revision history is owned by its object and goes with it.
    async fn delete_ops(&self, registry: &Registry, object: &T) -> Result<Vec<Op>> {
        registry.history_deletion(object).await
    }
}

/// The revision of the template `object` runs, from its annotation (0: none yet).
pub(in crate::registry) fn revision_of(object: &impl Kind) -> i64 {
    object
        .meta()
        .annotations
        .get(REVISION_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

pub(in crate::registry) fn set_revision(object: &mut impl Kind, revision: i64) {
    if revision != 0 {
        object
            .meta_mut()
            .annotations
            .insert(REVISION_ANNOTATION.to_owned(), revision.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_keeps_the_stored_revision_unless_none_is_stored() {
        let strategy = Deployment::STRATEGY;
        let mut stored = Deployment::default();
        set_revision(&mut stored, 3);
        let mut update = Deployment::default();
        set_revision(&mut update, 7);
        strategy.prepare_for_update(&mut update, &stored);
        assert_eq!(revision_of(&update), 3);
        let mut first = Deployment::default();
        set_revision(&mut first, 7);
        strategy.prepare_for_update(&mut first, &Deployment::default());
        assert_eq!(revision_of(&first), 7, "0 means none: the given one stays");
    }
}
