//! Garbage collection: an object whose controller owner no longer exists (or was
//! replaced by a new object of the same name) is deleted, as Kubernetes' GC does for
//! pods of a deleted ReplicaSet and ReplicaSets of a deleted Deployment.

use std::marker::PhantomData;

use berth_api::find_by_kind;

use super::{Change, Context, Outcome, Reconciler, Snapshot, Write, controller_of};
use crate::objects::Kind;

/// Collects the orphans of kind `K`.
pub struct GarbageCollector<K>(PhantomData<fn() -> K>);

impl<K> GarbageCollector<K> {
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<K> Default for GarbageCollector<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Kind> Reconciler for GarbageCollector<K> {
    type Object = K;

    fn name(&self) -> &'static str {
        "garbage-collector"
    }

    fn affected(&self, change: &Change, snapshot: &Snapshot) -> Vec<(String, String)> {
        if let Some(object) = change.as_kind::<K>() {
            // Only a new object, or a new owner, can be an orphan the last look did not
            // see: a status report or a binding leaves the owner as it was, and owners
            // going are handled below. Every pod change passes here.
            if !change.deleted
                && change.previous_as::<K>().is_some_and(|previous| {
                    controller_of(previous.meta()) == controller_of(object.meta())
                })
            {
                return Vec::new();
            }
            return vec![change.key()];
        }
        if change.deleted {
            // Dependents of the deleted owner.
            let owner = change.object.uid();
            return snapshot
                .list::<K>(Some(change.object.namespace()))
                .filter(|o| controller_of(o.meta()).is_some_and(|r| r.uid == owner))
                .map(|o| (o.meta().namespace.clone(), o.meta().name.clone()))
                .collect();
        }
        Vec::new()
    }

    fn reconcile(&self, object: &K, snapshot: &Snapshot, _ctx: &Context) -> Outcome {
        let meta = object.meta();
        let Some(owner) = controller_of(meta) else {
            return Outcome::default();
        };
        let Some(owner_type) = find_by_kind(&owner.api_version, &owner.kind).or_else(|| {
            berth_api::RESOURCE_TYPES
                .iter()
                .find(|t| t.kind == owner.kind)
        }) else {
            return Outcome::default();
        };
        let namespace = if owner_type.namespaced {
            meta.namespace.as_str()
        } else {
            ""
        };
        let alive = snapshot
            .get_any(owner_type, namespace, &owner.name)
            .is_some_and(|found| found.uid() == owner.uid);
        if alive {
            return Outcome::default();
        }
        Outcome::writes(vec![Write::delete(object)])
    }
}
