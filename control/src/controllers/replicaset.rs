//! Keeps the number of live pods of a ReplicaSet at `spec.replicas` and reports counts.

use std::collections::BTreeSet;

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

/// Pods created per reconcile, slow-start style: as many as the ReplicaSet already has
/// (so the batch doubles every round while creates succeed), at least
/// `SLOW_START_INITIAL`, at most `MAX_BURST`; the rest follow once the cache has these.
/// Like kube-controller-manager's slow-start batches, a create that keeps failing (quota,
/// admission) costs one small batch, not thousands of failed writes; unlike a fixed small
/// batch, 50,000 replicas take a few dozen rounds, not hundreds, each of which reads
/// every pod of the namespace (and has the scheduler sum every pod of the cluster).
const SLOW_START_INITIAL: usize = 100;
const MAX_BURST: usize = 2_000;

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
        // Counted by the snapshot's index: a ReplicaSet looked at after each change of one
        // of its 50,000 pods must not read all of them each time. Only a scale-down,
        // which has to choose, lists them.
        let replicas = snapshot.index().replicas(namespace, uid);
        let mut writes = Vec::new();
        let mut requeue_after = None;
        if replicas.active < desired {
            let missing = desired - replicas.active;
            let batch = replicas.active.clamp(SLOW_START_INITIAL, MAX_BURST);
            let mut names = BTreeSet::new();
            for _ in 0..missing.min(batch) {
                let name = free_name(rs, snapshot, &names);
                names.insert(name.clone());
                writes.push(Write::Create {
                    rt: &PODS,
                    object: new_pod(rs, name),
                });
            }
            if missing > batch {
                requeue_after = Some(std::time::Duration::ZERO);
            }
        } else if replicas.active > desired {
            let mut pods: Vec<&Value> = snapshot
                .list(&PODS, Some(namespace))
                .filter(|p| {
                    // Terminating pods are not counted: their replacements start at once,
                    // as Kubernetes' FilterActivePods does.
                    controller_of(p).is_some_and(|(_, _, owner)| owner == uid)
                        && !pod_is_terminal(p)
                        && !pod_is_terminating(p)
                })
                .collect();
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
            for pod in &pods[..pods.len().saturating_sub(desired)] {
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
            "replicas": replicas.active,
            "readyReplicas": replicas.ready,
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

/// `<replicaset>-<5 hex digits>`, not taken by a pod the cache knows nor by one this
/// reconcile is creating. A million suffixes run out of room fast: at 50,000 replicas a
/// random one is taken one time in twenty, and a create that fails that way makes the
/// whole round wait for a retry.
fn free_name(rs: &Value, snapshot: &Snapshot, creating: &BTreeSet<String>) -> String {
    let namespace = namespace_of(rs);
    let candidate = || {
        let suffix = &util::hex(&util::random_bytes::<3>())[..5];
        format!("{}-{suffix}", name_of(rs))
    };
    let mut name = candidate();
    // Bounded: should every try be taken, the store refuses the create and the
    // ReplicaSet is reconciled again.
    for _ in 0..8 {
        if snapshot.get(&PODS, namespace, &name).is_none() && !creating.contains(&name) {
            break;
        }
        name = candidate();
    }
    name
}

fn new_pod(rs: &Value, name: String) -> Value {
    let template = rs.pointer("/spec/template").cloned().unwrap_or(json!({}));
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
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

    #[test]
    fn large_scale_ups_create_in_doubling_batches() {
        let creates = |existing: usize| {
            // Named as the controller names them, so new names could collide.
            let pods = (0..existing)
                .map(|i| pod(&format!("web-abc-{i:05x}"), "n1", true))
                .collect::<Vec<_>>();
            let mut names: BTreeSet<String> = pods.iter().map(|p| name_of(p).to_owned()).collect();
            let outcome = run(rs(50_000), pods);
            let mut created = 0;
            for write in &outcome.writes {
                if let Write::Create { object, .. } = write {
                    created += 1;
                    assert!(names.insert(name_of(object).to_owned()), "{object}");
                }
            }
            (created, outcome.requeue_after)
        };
        let again = Some(std::time::Duration::ZERO);
        assert_eq!(creates(0), (SLOW_START_INITIAL, again));
        assert_eq!(creates(300), (300, again), "as many as there are");
        assert_eq!(creates(4_000), (MAX_BURST, again), "capped");
        assert_eq!(creates(49_000), (1_000, None), "the last ones");
    }
}
