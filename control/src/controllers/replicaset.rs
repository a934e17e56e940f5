//! Keeps the number of live pods of a ReplicaSet at `spec.replicas` and reports counts.

use std::collections::BTreeSet;

use berth_api::{
    apps::{ReplicaSet, ReplicaSetStatus},
    core::Pod,
    meta::ObjectMeta,
};

use super::{
    Change, Context, Outcome, Reconciler, Snapshot, Write, controller_uid, owner_reference,
    pod_is_ready, pod_is_terminal, pod_is_terminating, self_or_owner,
};
use crate::util;

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
    type Object = ReplicaSet;

    fn name(&self) -> &'static str {
        "replicaset"
    }

    fn affected(&self, change: &Change, _snapshot: &Snapshot) -> Vec<(String, String)> {
        self_or_owner::<ReplicaSet, Pod>(change)
    }

    fn reconcile(&self, rs: &ReplicaSet, snapshot: &Snapshot, _ctx: &Context) -> Outcome {
        let namespace = &rs.metadata.namespace;
        let uid = &rs.metadata.uid;
        let desired = usize::try_from(rs.spec.replicas).unwrap_or(0);
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
                let name = free_name(namespace, &rs.metadata.name, snapshot, &names);
                names.insert(name.clone());
                writes.push(Write::create(new_pod(rs, name)));
            }
            if missing > batch {
                requeue_after = Some(std::time::Duration::ZERO);
            }
        } else if replicas.active > desired {
            let mut pods: Vec<&Pod> = snapshot
                .list::<Pod>(Some(namespace))
                .filter(|p| {
                    // Terminating pods are not counted: their replacements start at once,
                    // as Kubernetes' FilterActivePods does.
                    controller_uid(&p.metadata) == Some(uid.as_str())
                        && !pod_is_terminal(p)
                        && !pod_is_terminating(p)
                })
                .collect();
            // Least useful first: unscheduled, then not ready, then the newest.
            pods.sort_by_key(|p| {
                (
                    !p.spec.node_name.is_empty(),
                    pod_is_ready(p),
                    std::cmp::Reverse(p.metadata.creation_timestamp.clone()),
                )
            });
            for pod in &pods[..pods.len().saturating_sub(desired)] {
                writes.push(Write::delete(*pod));
            }
        }
        let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        let status = ReplicaSetStatus {
            observed_generation: rs.metadata.generation,
            replicas: count(replicas.active),
            ready_replicas: count(replicas.ready),
        };
        if writes.is_empty() && rs.status.as_ref() != Some(&status) {
            let mut updated = rs.clone();
            updated.status = Some(status);
            writes.push(Write::update_status(updated));
        }
        Outcome {
            writes,
            requeue_after,
        }
    }
}

/// `<owner>-<5 hex digits>`, not taken by a pod the cache knows nor by one this
/// reconcile is creating. A million suffixes run out of room fast: at 50,000 replicas a
/// random one is taken one time in twenty, and a create that fails that way makes the
/// whole round wait for a retry.
pub(super) fn free_name(
    namespace: &str,
    owner: &str,
    snapshot: &Snapshot,
    creating: &BTreeSet<String>,
) -> String {
    let candidate = || {
        let suffix = &util::hex(&util::random_bytes::<3>())[..5];
        format!("{owner}-{suffix}")
    };
    let mut name = candidate();
    // Bounded: should every try be taken, the store refuses the create and the
    // ReplicaSet is reconciled again.
    for _ in 0..8 {
        if snapshot.get::<Pod>(namespace, &name).is_none() && !creating.contains(&name) {
            break;
        }
        name = candidate();
    }
    name
}

fn new_pod(rs: &ReplicaSet, name: String) -> Pod {
    let template = &rs.spec.template;
    Pod {
        api_version: "v1".to_owned(),
        kind: "Pod".to_owned(),
        metadata: ObjectMeta {
            name,
            namespace: rs.metadata.namespace.clone(),
            labels: template.metadata.labels.clone(),
            annotations: template.metadata.annotations.clone(),
            owner_references: vec![owner_reference(rs)],
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        controllers::{Settings, fixtures::typed},
        objects::{Kind as _, Object},
    };

    fn rs(replicas: u64) -> ReplicaSet {
        typed(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-abc", "namespace": "default", "uid": "rs-uid", "generation": 1},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}))
    }

    fn pod(name: &str, node: &str, ready: bool) -> Pod {
        typed(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": format!("2026-01-01T00:00:0{}Z", name.len() % 10),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "rs-uid", "controller": true}]},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
    }

    fn run(rs: ReplicaSet, pods: Vec<Pod>) -> Outcome {
        let mut objects = vec![rs.into_object()];
        objects.extend(pods.into_iter().map(Pod::into_object));
        let snapshot = Snapshot::from_objects(objects, 1);
        let rs = snapshot
            .get::<ReplicaSet>("default", "web-abc")
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
        let Write::Create(Object::Pod(object)) = &outcome.writes[0] else {
            panic!("{outcome:?}")
        };
        assert_eq!(object.metadata.labels["app"], "web");
        assert_eq!(object.metadata.owner_references[0].uid, "rs-uid");
        assert!(object.metadata.name.starts_with("web-abc-"));
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
        let [Write::UpdateStatus(Object::ReplicaSet(object))] = outcome.writes.as_slice() else {
            panic!("{outcome:?}")
        };
        assert_eq!(
            object.status,
            Some(ReplicaSetStatus {
                observed_generation: 1,
                replicas: 2,
                ready_replicas: 1
            })
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
        leaving.metadata.deletion_timestamp = "2026-01-01T00:00:30Z".to_owned();
        leaving.metadata.deletion_grace_period_seconds = Some(30);
        // Its replacement starts at once, as Kubernetes' FilterActivePods has it.
        let outcome = run(rs(2), vec![pod("a", "n1", true), leaving.clone()]);
        assert!(
            matches!(outcome.writes.as_slice(), [Write::Create(_)]),
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
            let mut names: BTreeSet<String> =
                pods.iter().map(|p| p.metadata.name.clone()).collect();
            let outcome = run(rs(50_000), pods);
            let mut created = 0;
            for write in &outcome.writes {
                if let Write::Create(object) = write {
                    created += 1;
                    assert!(names.insert(object.name().to_owned()), "{object:?}");
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
