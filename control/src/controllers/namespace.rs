//! Namespace deletion: a deleted namespace is first marked `Terminating` (the registry
//! then refuses new objects in it); this controller deletes every object in it and, once
//! none is left, deletes the namespace itself.

use std::time::Duration;

use berth_api::{RESOURCE_TYPES, core::Namespace};

use super::{Change, Context, Outcome, Reconciler, Snapshot, Write};

pub struct NamespaceController;

fn is_terminating(namespace: &Namespace) -> bool {
    namespace
        .status
        .as_ref()
        .is_some_and(|s| s.phase == "Terminating")
}

impl Reconciler for NamespaceController {
    type Object = Namespace;

    fn name(&self) -> &'static str {
        "namespace"
    }

    fn affected(&self, change: &Change, snapshot: &Snapshot) -> Vec<(String, String)> {
        if change.as_kind::<Namespace>().is_some() {
            return vec![change.key()];
        }
        // The last object of a terminating namespace went: the namespace can go.
        let namespace = change.object.namespace();
        if change.deleted
            && !namespace.is_empty()
            && snapshot
                .get::<Namespace>("", namespace)
                .is_some_and(is_terminating)
        {
            return vec![(String::new(), namespace.to_owned())];
        }
        Vec::new()
    }

    fn reconcile(&self, namespace: &Namespace, snapshot: &Snapshot, _ctx: &Context) -> Outcome {
        if !is_terminating(namespace) {
            return Outcome::default();
        }
        let name = &namespace.metadata.name;
        let contents: Vec<Write> = RESOURCE_TYPES
            .iter()
            .filter(|rt| rt.namespaced)
            .flat_map(|rt| {
                snapshot
                    .list_any(rt, Some(name))
                    .map(move |object| Write::Delete {
                        rt,
                        namespace: name.clone(),
                        name: object.name().to_owned(),
                        force: false,
                    })
            })
            .collect();
        if contents.is_empty() {
            // The registry checks emptiness again in the store before deleting.
            return Outcome::writes(vec![Write::delete(namespace)]);
        }
        Outcome {
            writes: contents,
            // Controllers may still be adding to it (events) until they see it go.
            requeue_after: Some(Duration::from_secs(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use berth_api::{
        core::{Pod, Service},
        kinds::NAMESPACES,
    };

    use super::*;
    use crate::{
        controllers::{Settings, fixtures::typed},
        objects::{Kind as _, Object},
    };

    fn ctx() -> Context {
        Context {
            now: 0,
            settings: Settings::default(),
        }
    }

    fn namespace(phase: &str) -> Namespace {
        typed(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}, "status": {"phase": phase}}),
        )
    }

    fn pod(namespace: &str, name: &str) -> Object {
        typed::<Pod>(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}}))
            .into_object()
    }

    #[test]
    fn a_terminating_namespace_loses_its_objects_then_itself() {
        let ns = namespace("Terminating");
        let svc: Service = typed(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "shop"}}),
        );
        let full = Snapshot::from_objects(
            vec![
                ns.clone().into_object(),
                pod("shop", "p"),
                svc.into_object(),
                pod("default", "q"),
            ],
            1,
        );
        let outcome = NamespaceController.reconcile(&ns, &full, &ctx());
        let mut deleted: Vec<String> = outcome
            .writes
            .iter()
            .map(|w| match w {
                Write::Delete {
                    rt,
                    namespace,
                    name,
                    ..
                } => format!("{}/{namespace}/{name}", rt.plural),
                other => panic!("only deletes: {other:?}"),
            })
            .collect();
        deleted.sort();
        assert_eq!(deleted, ["pods/shop/p", "services/shop/s"]);

        let empty = Snapshot::from_objects(vec![ns.clone().into_object(), pod("default", "q")], 1);
        let outcome = NamespaceController.reconcile(&ns, &empty, &ctx());
        assert_eq!(
            outcome.writes,
            vec![Write::Delete {
                rt: &NAMESPACES,
                namespace: String::new(),
                name: "shop".into(),
                force: false,
            }]
        );
    }

    #[test]
    fn an_active_namespace_is_left_alone() {
        let ns = namespace("Active");
        let snapshot = Snapshot::from_objects(vec![ns.clone().into_object()], 1);
        assert_eq!(
            NamespaceController.reconcile(&ns, &snapshot, &ctx()),
            Outcome::default()
        );
    }
}
