//! Keeps the number of live pods of a ReplicaSet at `spec.replicas` and reports counts.

use berth_api::ResourceType;
use serde_json::{Value, json};

use super::{
    Change, Context, Outcome, PODS, REPLICASETS, Reconciler, Snapshot, Write, controller_of,
    is_kind, owner_reference, pod_is_ready, pod_is_terminal, pod_is_terminating, uid_of,
};
use crate::{
    registry::{name_of, namespace_of},
    util,
};

pub struct ReplicaSetController;

/// Pods created per reconcile; the rest follow after the cache catches up (bounds a
/// burst the way kube-controller-manager's slow-start batches do).
const MAX_CREATES: usize = 100;

impl Reconciler for ReplicaSetController {
    fn name(&self) -> &'static str {
        "replicaset"
    }

    fn kind(&self) -> &'static ResourceType {
        &REPLICASETS
    }

    fn affected(&self, change: &Change, _snapshot: &Snapshot) -> Vec<(String, String)> {
        if is_kind(change, &REPLICASETS) {
            return vec![(
                namespace_of(&change.object).to_owned(),
                name_of(&change.object).to_owned(),
            )];
        }
        if is_kind(change, &PODS)
            && let Some(("ReplicaSet", owner, _)) = controller_of(&change.object)
        {
            return vec![(namespace_of(&change.object).to_owned(), owner.to_owned())];
        }
        Vec::new()
    }

    fn reconcile(&self, rs: &Value, snapshot: &Snapshot, _ctx: &Context) -> Outcome {
        let namespace = namespace_of(rs);
        let uid = uid_of(rs);
        let desired = rs
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(0) as usize;
        let mut pods: Vec<&Value> = snapshot
            .list(&PODS, Some(namespace))
            .filter(|p| {
                // Terminating pods are not counted: their replacements start at once, as
                // Kubernetes' FilterActivePods does.
                controller_of(p).is_some_and(|(_, _, owner)| owner == uid)
                    && !pod_is_terminal(p)
                    && !pod_is_terminating(p)
            })
            .collect();
        let mut writes = Vec::new();
        let mut requeue_after = None;
        if pods.len() < desired {
            let missing = desired - pods.len();
            for _ in 0..missing.min(MAX_CREATES) {
                writes.push(Write::Create {
                    rt: &PODS,
                    object: new_pod(rs),
                });
            }
            if missing > MAX_CREATES {
                requeue_after = Some(std::time::Duration::ZERO);
            }
        } else if pods.len() > desired {
            // Least useful first: unscheduled, then not ready, then the newest.
            pods.sort_by_key(|p| {
                let scheduled = !p
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .is_empty();
                let created = p
                    .pointer("/metadata/creationTimestamp")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                (
                    scheduled,
                    pod_is_ready(p),
                    std::cmp::Reverse(created.to_owned()),
                )
            });
            for pod in &pods[..pods.len() - desired] {
                writes.push(Write::Delete {
                    rt: &PODS,
                    namespace: namespace.to_owned(),
                    name: name_of(pod).to_owned(),
                    force: false,
                });
            }
        }
        let status = json!({
            "observedGeneration": rs.pointer("/metadata/generation").cloned().unwrap_or(json!(0)),
            "replicas": pods.len(),
            "readyReplicas": pods.iter().filter(|p| pod_is_ready(p)).count(),
        });
        if writes.is_empty() && rs.get("status") != Some(&status) {
            let mut updated = rs.clone();
            updated["status"] = status;
            writes.push(Write::UpdateStatus {
                rt: &REPLICASETS,
                object: updated,
            });
        }
        Outcome {
            writes,
            requeue_after,
        }
    }
}

fn new_pod(rs: &Value) -> Value {
    let template = rs.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let suffix: String = util::hex(&util::random_bytes::<3>())[..5].to_owned();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("{}-{suffix}", name_of(rs)),
            "namespace": namespace_of(rs),
            "labels": template.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
            "annotations": template.pointer("/metadata/annotations").cloned().unwrap_or(json!({})),
            "ownerReferences": [owner_reference(rs)],
        },
        "spec": template.get("spec").cloned().unwrap_or(json!({})),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::Settings;

    fn rs(replicas: u64) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-abc", "namespace": "default", "uid": "rs-uid", "generation": 1},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    }

    fn pod(name: &str, node: &str, ready: bool) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": format!("2026-01-01T00:00:0{}Z", name.len() % 10),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "rs-uid", "controller": true}]},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    fn run(rs: Value, pods: Vec<Value>) -> Outcome {
        let mut objects = vec![(&REPLICASETS, rs)];
        objects.extend(pods.into_iter().map(|p| (&PODS, p)));
        let snapshot = Snapshot::from_objects(objects, 1);
        let rs = snapshot
            .get(&REPLICASETS, "default", "web-abc")
            .expect("rs")
            .clone();
        ReplicaSetController.reconcile(
            &rs,
            &snapshot,
            &Context {
                now: 0,
                settings: Settings::default(),
            },
        )
    }

    #[test]
    fn creates_missing_pods_from_the_template() {
        let outcome = run(rs(3), vec![pod("web-abc-1", "n1", true)]);
        assert_eq!(outcome.writes.len(), 2);
        let Write::Create { object, .. } = &outcome.writes[0] else {
            panic!("{outcome:?}")
        };
        assert_eq!(object["metadata"]["labels"]["app"], "web");
        assert_eq!(object["metadata"]["ownerReferences"][0]["uid"], "rs-uid");
        assert!(
            object["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("web-abc-"))
        );
    }

    #[test]
    fn deletes_the_least_useful_pods_first() {
        let outcome = run(
            rs(1),
            vec![
                pod("ready", "n1", true),
                pod("notready", "n1", false),
                pod("pending", "", false),
            ],
        );
        let deleted: Vec<&str> = outcome
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::Delete { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, ["pending", "notready"]);
    }

    #[test]
    fn at_the_desired_count_only_status_is_written_once() {
        let outcome = run(rs(2), vec![pod("a", "n1", true), pod("b", "n1", false)]);
        let [Write::UpdateStatus { object, .. }] = outcome.writes.as_slice() else {
            panic!("{outcome:?}")
        };
        assert_eq!(
            object["status"],
            json!({"observedGeneration": 1, "replicas": 2, "readyReplicas": 1})
        );
        let outcome = run(
            object.clone(),
            vec![pod("a", "n1", true), pod("b", "n1", false)],
        );
        assert_eq!(outcome, Outcome::default(), "idempotent");
    }

    #[test]
    fn terminating_pods_are_not_counted_nor_deleted_again() {
        let mut leaving = pod("leaving", "n1", true);
        leaving["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:30Z");
        leaving["metadata"]["deletionGracePeriodSeconds"] = json!(30);
        // Its replacement starts at once, as Kubernetes' FilterActivePods has it.
        let outcome = run(rs(2), vec![pod("a", "n1", true), leaving.clone()]);
        assert!(
            matches!(outcome.writes.as_slice(), [Write::Create { .. }]),
            "{outcome:?}"
        );
        // Scaling down past it picks among the active pods only.
        let outcome = run(
            rs(1),
            vec![pod("a", "n1", true), pod("b", "n1", false), leaving],
        );
        let [Write::Delete { name, force, .. }] = outcome.writes.as_slice() else {
            panic!("{outcome:?}")
        };
        assert_eq!((name.as_str(), *force), ("b", false));
    }
}
