//! Garbage collection: an object whose controller owner no longer exists (or was
//! replaced by a new object of the same name) is deleted, as Kubernetes' GC does for
//! pods of a deleted ReplicaSet and ReplicaSets of a deleted Deployment.

use berth_api::{ResourceType, find_by_kind};
use serde_json::Value;

use super::{
    Change, Context, Outcome, Reconciler, Snapshot, Write, controller_of, is_kind, uid_of,
};
use crate::registry::{name_of, namespace_of};

pub struct GarbageCollector(pub &'static ResourceType);

impl Reconciler for GarbageCollector {
    fn name(&self) -> &'static str {
        "garbage-collector"
    }

    fn kind(&self) -> &'static ResourceType {
        self.0
    }

    fn affected(&self, change: &Change, snapshot: &Snapshot) -> Vec<(String, String)> {
        if is_kind(change, self.0) {
            // Only a new object, or a new owner, can be an orphan the last look did not
            // see: a status report or a binding leaves the owner as it was, and owners
            // going are handled below. Every pod change passes here.
            if !change.deleted
                && change.previous.as_ref().is_some_and(|previous| {
                    controller_of(previous) == controller_of(&change.object)
                })
            {
                return Vec::new();
            }
            return vec![(
                namespace_of(&change.object).to_owned(),
                name_of(&change.object).to_owned(),
            )];
        }
        if change.deleted {
            // Dependents of the deleted owner.
            let owner = uid_of(&change.object);
            return snapshot
                .list(self.0, Some(namespace_of(&change.object)))
                .filter(|o| controller_of(o).is_some_and(|(_, _, uid)| uid == owner))
                .map(|o| (namespace_of(o).to_owned(), name_of(o).to_owned()))
                .collect();
        }
        Vec::new()
    }

    fn reconcile(&self, object: &Value, snapshot: &Snapshot, _ctx: &Context) -> Outcome {
        let Some((kind, name, uid)) = controller_of(object) else {
            return Outcome::default();
        };
        let api_version = object
            .pointer("/metadata/ownerReferences/0/apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(owner_type) = find_by_kind(api_version, kind)
            .or_else(|| berth_api::RESOURCE_TYPES.iter().find(|t| t.kind == kind))
        else {
            return Outcome::default();
        };
        let namespace = if owner_type.namespaced {
            namespace_of(object)
        } else {
            ""
        };
        let alive = snapshot
            .get(owner_type, namespace, name)
            .is_some_and(|owner| uid_of(owner) == uid);
        if alive {
            return Outcome::default();
        }
        Outcome::writes(vec![Write::Delete {
            rt: self.0,
            namespace: namespace_of(object).to_owned(),
            name: name_of(object).to_owned(),
            force: false,
        }])
    }
}
