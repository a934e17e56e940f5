//! Namespace deletion: a deleted namespace is first marked `Terminating` (the registry
//! then refuses new objects in it); this controller deletes every object in it and, once
//! none is left, deletes the namespace itself.

use std::time::Duration;

use berth_api::{RESOURCE_TYPES, ResourceType};
use serde_json::Value;

use super::{Change, Context, NAMESPACES, Outcome, Reconciler, Snapshot, Write, is_kind};
use crate::registry::{name_of, namespace_of};

pub struct NamespaceController;

fn is_terminating(namespace: &Value) -> bool {
    namespace.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating")
}

impl Reconciler for NamespaceController {
    fn name(&self) -> &'static str {
        "namespace"
    }

    fn kind(&self) -> &'static ResourceType {
        &NAMESPACES
    }

    fn affected(&self, change: &Change, snapshot: &Snapshot) -> Vec<(String, String)> {
        if is_kind(change, &NAMESPACES) {
            return vec![(String::new(), name_of(&change.object).to_owned())];
        }
        // The last object of a terminating namespace went: the namespace can go.
        let namespace = namespace_of(&change.object);
        if change.deleted
            && !namespace.is_empty()
            && snapshot
                .get(&NAMESPACES, "", namespace)
                .is_some_and(is_terminating)
        {
            return vec![(String::new(), namespace.to_owned())];
        }
        Vec::new()
    }

    fn reconcile(&self, namespace: &Value, snapshot: &Snapshot, _ctx: &Context) -> Outcome {
        if !is_terminating(namespace) {
            return Outcome::default();
        }
        let name = name_of(namespace);
        let contents: Vec<Write> = RESOURCE_TYPES
            .iter()
            .filter(|rt| rt.namespaced)
            .flat_map(|rt| {
                snapshot
                    .list(rt, Some(name))
                    .map(move |object| Write::Delete {
                        rt,
                        namespace: name.to_owned(),
                        name: name_of(object).to_owned(),
                        force: false,
                    })
            })
            .collect();
        if contents.is_empty() {
            // The registry checks emptiness again in the store before deleting.
            return Outcome::writes(vec![Write::Delete {
                rt: &NAMESPACES,
                namespace: String::new(),
                name: name.to_owned(),
                force: false,
            }]);
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

    use super::*;
    use crate::controllers::{PODS, SERVICES, Settings};

    fn ctx() -> Context {
        Context {
            now: 0,
            settings: Settings::default(),
        }
    }

    fn namespace(phase: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}, "status": {"phase": phase}})
    }

    #[test]
    fn a_terminating_namespace_loses_its_objects_then_itself() {
        let ns = namespace("Terminating");
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop"}});
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "shop"}});
        let elsewhere = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "q", "namespace": "default"}});
        let full = Snapshot::from_objects(
            vec![
                (&NAMESPACES, ns.clone()),
                (&PODS, pod),
                (&SERVICES, svc),
                (&PODS, elsewhere.clone()),
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

        let empty = Snapshot::from_objects(vec![(&NAMESPACES, ns.clone()), (&PODS, elsewhere)], 1);
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
        let snapshot = Snapshot::from_objects(vec![(&NAMESPACES, ns.clone())], 1);
        assert_eq!(
            NamespaceController.reconcile(&ns, &snapshot, &ctx()),
            Outcome::default()
        );
    }
}
