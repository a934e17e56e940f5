//! Deployment → ReplicaSets: one ReplicaSet per pod template (named by its hash), a
//! rolling update bounded by maxSurge/maxUnavailable (or Recreate), old ReplicaSets
//! pruned to revisionHistoryLimit, and the Deployment's status.

use berth_api::ResourceType;
use serde_json::{Value, json};

use super::{
    Change, Context, DEPLOYMENTS, Outcome, PODS, REPLICASETS, Reconciler, Snapshot, Write,
    controller_of, is_kind, owner_reference, uid_of,
};
use crate::{
    registry::{name_of, namespace_of},
    util,
};

pub struct DeploymentController;

/// Label that ties pods to the template (and ReplicaSet) they were made from.
pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

impl Reconciler for DeploymentController {
    fn name(&self) -> &'static str {
        "deployment"
    }

    fn kind(&self) -> &'static ResourceType {
        &DEPLOYMENTS
    }

    fn affected(&self, change: &Change, _snapshot: &Snapshot) -> Vec<(String, String)> {
        if is_kind(change, &DEPLOYMENTS) {
            return vec![(
                namespace_of(&change.object).to_owned(),
                name_of(&change.object).to_owned(),
            )];
        }
        if is_kind(change, &REPLICASETS)
            && let Some(("Deployment", owner, _)) = controller_of(&change.object)
        {
            return vec![(namespace_of(&change.object).to_owned(), owner.to_owned())];
        }
        Vec::new()
    }

    fn reconcile(&self, deployment: &Value, snapshot: &Snapshot, _ctx: &Context) -> Outcome {
        Outcome::writes(plan(deployment, snapshot))
    }
}

fn int(value: &Value, pointer: &str) -> i64 {
    value.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// An absolute number or a percentage of `total`, rounded up or down.
fn scaled(value: Option<&Value>, total: i64, round_up: bool, default_percent: i64) -> i64 {
    let percent = |p: i64| {
        let exact = total * p;
        if round_up {
            (exact + 99) / 100
        } else {
            exact / 100
        }
    };
    match value {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => s
            .strip_suffix('%')
            .and_then(|p| p.parse().ok())
            .map_or(0, percent),
        _ => percent(default_percent),
    }
}

fn plan(deployment: &Value, snapshot: &Snapshot) -> Vec<Write> {
    let namespace = namespace_of(deployment);
    let uid = uid_of(deployment);
    let desired = int(deployment, "/spec/replicas");
    let template = deployment
        .pointer("/spec/template")
        .cloned()
        .unwrap_or(json!({}));
    let hash = util::template_hash(&template);
    let new_name = format!("{}-{hash}", name_of(deployment));

    let mut owned: Vec<&Value> = snapshot
        .list(&REPLICASETS, Some(namespace))
        .filter(|rs| controller_of(rs).is_some_and(|(_, _, owner)| owner == uid))
        .collect();
    owned.sort_by_key(|rs| {
        rs.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    });
    let new_rs = owned.iter().find(|rs| name_of(rs) == new_name).copied();
    let old: Vec<&Value> = owned
        .iter()
        .filter(|rs| name_of(rs) != new_name)
        .copied()
        .collect();
    let old_replicas: i64 = old.iter().map(|rs| int(rs, "/spec/replicas")).sum();

    let Some(new_rs) = new_rs else {
        // First rollout (or nothing old left running) starts at full size.
        let replicas = if old_replicas == 0 { desired } else { 0 };
        return vec![Write::Create {
            rt: &REPLICASETS,
            object: new_replica_set(deployment, &template, &new_name, &hash, replicas),
        }];
    };

    let set_replicas = |rs: &Value, replicas: i64| {
        let mut updated = rs.clone();
        updated["spec"]["replicas"] = json!(replicas);
        Write::Update {
            rt: &REPLICASETS,
            object: updated,
        }
    };
    let new_replicas = int(new_rs, "/spec/replicas");
    let mut writes = Vec::new();
    let recreate = deployment
        .pointer("/spec/strategy/type")
        .and_then(Value::as_str)
        == Some("Recreate");
    if deployment.pointer("/spec/paused").and_then(Value::as_bool) == Some(true) {
        // Paused: keep everything as it is, report only.
    } else if recreate {
        if old_replicas > 0 {
            writes.extend(
                old.iter()
                    .filter(|rs| int(rs, "/spec/replicas") > 0)
                    .map(|rs| set_replicas(rs, 0)),
            );
        } else if old_pods_remaining(snapshot, namespace, &old) == 0 && new_replicas != desired {
            writes.push(set_replicas(new_rs, desired));
        }
    } else {
        let rolling = deployment.pointer("/spec/strategy/rollingUpdate");
        let mut surge = scaled(rolling.and_then(|r| r.get("maxSurge")), desired, true, 25);
        let unavailable = scaled(
            rolling.and_then(|r| r.get("maxUnavailable")),
            desired,
            false,
            25,
        );
        if surge == 0 && unavailable == 0 {
            surge = 1;
        }
        if new_replicas > desired {
            writes.push(set_replicas(new_rs, desired));
        } else if new_replicas < desired {
            let room = desired + surge - (new_replicas + old_replicas);
            if room > 0 {
                writes.push(set_replicas(new_rs, desired.min(new_replicas + room)));
            }
        }
        // Scale old ReplicaSets down only as far as availability allows; their pods
        // that are not ready count as already unavailable and can go at once.
        let ready_total: i64 = owned
            .iter()
            .map(|rs| int(rs, "/status/readyReplicas"))
            .sum();
        let mut removable = (ready_total - (desired - unavailable)).max(0);
        for rs in &old {
            let replicas = int(rs, "/spec/replicas");
            if replicas == 0 {
                continue;
            }
            let unready = (replicas - int(rs, "/status/readyReplicas")).max(0);
            let from_ready = (replicas - unready).min(removable);
            removable -= from_ready;
            let remove = (unready + from_ready).min(replicas);
            if remove > 0 {
                writes.push(set_replicas(rs, replicas - remove));
            }
        }
    }
    if writes.is_empty() {
        writes.extend(prune_history(deployment, &old));
        writes.extend(status_write(deployment, new_rs, &owned));
    }
    writes
}

fn old_pods_remaining(snapshot: &Snapshot, namespace: &str, old: &[&Value]) -> usize {
    snapshot
        .list(&PODS, Some(namespace))
        .filter(|p| {
            controller_of(p).is_some_and(|(_, _, owner)| old.iter().any(|rs| uid_of(rs) == owner))
        })
        .count()
}

fn new_replica_set(
    deployment: &Value,
    template: &Value,
    name: &str,
    hash: &str,
    replicas: i64,
) -> Value {
    let mut template = template.clone();
    template["metadata"]["labels"][TEMPLATE_HASH_LABEL] = json!(hash);
    let mut selector = deployment
        .pointer("/spec/selector")
        .cloned()
        .unwrap_or(json!({}));
    selector["matchLabels"][TEMPLATE_HASH_LABEL] = json!(hash);
    let mut labels = template
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or(json!({}));
    labels[TEMPLATE_HASH_LABEL] = json!(hash);
    json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": name,
            "namespace": namespace_of(deployment),
            "labels": labels,
            "annotations": {
                berth_api::apps::REVISION_ANNOTATION: deployment
                    .pointer(&format!("/metadata/annotations/{}", berth_api::apps::REVISION_ANNOTATION.replace('/', "~1")))
                    .cloned()
                    .unwrap_or(json!("1")),
            },
            "ownerReferences": [owner_reference(deployment)],
        },
        "spec": {"replicas": replicas, "selector": selector, "template": template},
    })
}

fn prune_history(deployment: &Value, old: &[&Value]) -> Vec<Write> {
    let limit = deployment
        .pointer("/spec/revisionHistoryLimit")
        .and_then(Value::as_u64)
        .unwrap_or(10) as usize;
    let idle: Vec<&&Value> = old
        .iter()
        .filter(|rs| int(rs, "/spec/replicas") == 0 && int(rs, "/status/replicas") == 0)
        .collect();
    let excess = idle.len().saturating_sub(limit);
    idle.into_iter()
        .take(excess)
        .map(|rs| Write::Delete {
            rt: &REPLICASETS,
            namespace: namespace_of(rs).to_owned(),
            name: name_of(rs).to_owned(),
            force: false,
        })
        .collect()
}

fn status_write(deployment: &Value, new_rs: &Value, owned: &[&Value]) -> Option<Write> {
    let desired = int(deployment, "/spec/replicas");
    let replicas: i64 = owned.iter().map(|rs| int(rs, "/status/replicas")).sum();
    let ready: i64 = owned
        .iter()
        .map(|rs| int(rs, "/status/readyReplicas"))
        .sum();
    let updated = int(new_rs, "/status/replicas");
    let available = ready >= desired;
    let complete = available && updated == desired && replicas == desired;
    let status = json!({
        "observedGeneration": int(deployment, "/metadata/generation"),
        "replicas": replicas,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "conditions": [
            {"type": "Available", "status": if available { "True" } else { "False" },
             "reason": if available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" }},
            {"type": "Progressing", "status": "True",
             "reason": if complete { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" }},
        ],
    });
    (deployment.get("status") != Some(&status)).then(|| {
        let mut object = deployment.clone();
        object["status"] = status;
        Write::UpdateStatus {
            rt: &DEPLOYMENTS,
            object,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::Settings;

    fn deployment(image: &str, replicas: i64) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 1},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}}}})
    }

    fn replica_set(d: &Value, replicas: i64, ready: i64, created: &str) -> Value {
        let template = d["spec"]["template"].clone();
        let hash = util::template_hash(&template);
        let mut rs = new_replica_set(d, &template, &format!("web-{hash}"), &hash, replicas);
        rs["metadata"]["uid"] = json!(format!("rs-{hash}"));
        rs["metadata"]["creationTimestamp"] = json!(created);
        rs["status"] = json!({"replicas": replicas, "readyReplicas": ready});
        rs
    }

    fn run(d: &Value, sets: Vec<Value>) -> Vec<Write> {
        let mut objects = vec![(&DEPLOYMENTS, d.clone())];
        objects.extend(sets.into_iter().map(|rs| (&REPLICASETS, rs)));
        let snapshot = Snapshot::from_objects(objects, 1);
        DeploymentController
            .reconcile(
                d,
                &snapshot,
                &Context {
                    now: 0,
                    settings: Settings::default(),
                },
            )
            .writes
    }

    fn replicas_of(write: &Write) -> (String, i64) {
        match write {
            Write::Create { object, .. } | Write::Update { object, .. } => {
                (name_of(object).to_owned(), int(object, "/spec/replicas"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn first_rollout_creates_a_full_replica_set() {
        let d = deployment("v1", 3);
        let writes = run(&d, vec![]);
        assert_eq!(writes.len(), 1);
        let (name, replicas) = replicas_of(&writes[0]);
        assert_eq!((name.starts_with("web-"), replicas), (true, 3));
        let Write::Create { object, .. } = &writes[0] else {
            panic!()
        };
        assert_eq!(
            object["spec"]["selector"]["matchLabels"][TEMPLATE_HASH_LABEL],
            object["metadata"]["labels"][TEMPLATE_HASH_LABEL]
        );
    }

    #[test]
    fn rolling_update_respects_surge_and_availability() {
        let v1 = deployment("v1", 3);
        let v2 = deployment("v2", 3);
        let old = replica_set(&v1, 3, 3, "2026-01-01T00:00:00Z");
        // New template: a new ReplicaSet at 0.
        let writes = run(&v2, vec![old.clone()]);
        assert_eq!(replicas_of(&writes[0]).1, 0);
        // maxSurge 1: new goes to 1; maxUnavailable 0: old stays at 3 while new is not ready.
        let new = replica_set(&v2, 0, 0, "2026-01-01T00:01:00Z");
        let writes = run(&v2, vec![old.clone(), new]);
        assert_eq!(
            writes
                .iter()
                .map(replicas_of)
                .map(|(_, r)| r)
                .collect::<Vec<_>>(),
            [1]
        );
        // Once the new pod is ready, one old one can go.
        let new = replica_set(&v2, 1, 1, "2026-01-01T00:01:00Z");
        let writes = run(&v2, vec![old, new]);
        assert_eq!(
            writes
                .iter()
                .map(replicas_of)
                .map(|(_, r)| r)
                .collect::<Vec<_>>(),
            [2]
        );
    }

    #[test]
    fn a_finished_rollout_only_reports_status() {
        let v2 = deployment("v2", 2);
        let new = replica_set(&v2, 2, 2, "2026-01-01T00:01:00Z");
        let writes = run(&v2, vec![new.clone()]);
        let [Write::UpdateStatus { object, .. }] = writes.as_slice() else {
            panic!("{writes:?}")
        };
        assert_eq!(object["status"]["readyReplicas"], 2);
        assert_eq!(
            object["status"]["conditions"][1]["reason"],
            "NewReplicaSetAvailable"
        );
        assert!(run(object, vec![new]).is_empty(), "idempotent");
    }

    #[test]
    fn percentages_round_like_kubernetes() {
        assert_eq!(scaled(Some(&json!("25%")), 10, true, 0), 3);
        assert_eq!(scaled(Some(&json!("25%")), 10, false, 0), 2);
        assert_eq!(scaled(None, 4, true, 25), 1);
        assert_eq!(scaled(Some(&json!(2)), 10, true, 25), 2);
    }
}
