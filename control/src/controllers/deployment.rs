//! Deployment → ReplicaSets: one ReplicaSet per pod template (named by its hash), a
//! rolling update bounded by maxSurge/maxUnavailable (or Recreate), old ReplicaSets
//! pruned to revisionHistoryLimit, and the Deployment's status.

use std::collections::BTreeMap;

use berth_api::{
    apps::{
        Deployment, DeploymentStatus, PodTemplateSpec, REVISION_ANNOTATION, ReplicaSet,
        ReplicaSetSpec,
    },
    core::{Condition, IntOrString, Pod},
    meta::ObjectMeta,
};

use super::{
    Change, Context, Outcome, Reconciler, Snapshot, Write, controller_uid, owner_reference,
    self_or_owner,
};

pub struct DeploymentController;

/// Label that ties pods to the template (and ReplicaSet) they were made from.
pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

impl Reconciler for DeploymentController {
    type Object = Deployment;

    fn name(&self) -> &'static str {
        "deployment"
    }

    fn affected(&self, change: &Change, _snapshot: &Snapshot) -> Vec<(String, String)> {
        self_or_owner::<Deployment, ReplicaSet>(change)
    }

    fn reconcile(&self, deployment: &Deployment, snapshot: &Snapshot, _ctx: &Context) -> Outcome {
        Outcome::writes(plan(deployment, snapshot))
    }
}

fn replicas(rs: &ReplicaSet) -> i64 {
    rs.spec.replicas.into()
}

fn status_replicas(rs: &ReplicaSet) -> i64 {
    rs.status.as_ref().map_or(0, |s| s.replicas.into())
}

fn ready_replicas(rs: &ReplicaSet) -> i64 {
    rs.status.as_ref().map_or(0, |s| s.ready_replicas.into())
}

/// An absolute number or a percentage of `total`, rounded up or down.
pub(super) fn scaled(
    value: Option<&IntOrString>,
    total: i64,
    round_up: bool,
    default_percent: i64,
) -> i64 {
    let percent = |p: i64| {
        let exact = total * p;
        if round_up {
            (exact + 99) / 100
        } else {
            exact / 100
        }
    };
    match value {
        Some(IntOrString::Int(n)) => (*n).into(),
        Some(IntOrString::String(s)) => s
            .strip_suffix('%')
            .and_then(|p| p.parse().ok())
            .map_or(0, percent),
        None => percent(default_percent),
    }
}

fn plan(deployment: &Deployment, snapshot: &Snapshot) -> Vec<Write> {
    let namespace = &deployment.metadata.namespace;
    let uid = &deployment.metadata.uid;
    let spec = &deployment.spec;
    let desired = i64::from(spec.replicas);
    let hash = spec.template.hash();
    let new_name = format!("{}-{hash}", deployment.metadata.name);

    let mut owned: Vec<&ReplicaSet> = snapshot
        .list::<ReplicaSet>(Some(namespace))
        .filter(|rs| controller_uid(&rs.metadata) == Some(uid.as_str()))
        .collect();
    owned.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
    });
    let new_rs = owned
        .iter()
        .find(|rs| rs.metadata.name == new_name)
        .copied();
    let old: Vec<&ReplicaSet> = owned
        .iter()
        .filter(|rs| rs.metadata.name != new_name)
        .copied()
        .collect();
    let old_replicas: i64 = old.iter().map(|rs| replicas(rs)).sum();

    let Some(new_rs) = new_rs else {
        // Paused, a new template waits: Kubernetes makes no ReplicaSet for it until the
        // Deployment is resumed.
        if spec.paused {
            return Vec::new();
        }
        // First rollout (or nothing old left running) starts at full size.
        let replicas = if old_replicas == 0 { desired } else { 0 };
        return vec![Write::create(new_replica_set(
            deployment,
            &spec.template,
            &new_name,
            &hash,
            replicas,
        ))];
    };

    let set_replicas = |rs: &ReplicaSet, replicas: i64| {
        let mut updated = rs.clone();
        updated.spec.replicas = i32::try_from(replicas).unwrap_or(i32::MAX);
        Write::update(updated)
    };
    let new_replicas = replicas(new_rs);
    let mut writes = Vec::new();
    if spec.paused {
        // Paused: keep everything as it is, report only.
    } else if spec.strategy.type_ == "Recreate" {
        if old_replicas > 0 {
            writes.extend(
                old.iter()
                    .filter(|rs| replicas(rs) > 0)
                    .map(|rs| set_replicas(rs, 0)),
            );
        } else if old_pods_remaining(snapshot, namespace, &old) == 0 && new_replicas != desired {
            writes.push(set_replicas(new_rs, desired));
        }
    } else {
        let rolling = spec.strategy.rolling_update.as_ref();
        let mut surge = scaled(
            rolling.and_then(|r| r.max_surge.as_ref()),
            desired,
            true,
            25,
        );
        let unavailable = scaled(
            rolling.and_then(|r| r.max_unavailable.as_ref()),
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
        let ready_total: i64 = owned.iter().map(|rs| ready_replicas(rs)).sum();
        let mut removable = (ready_total - (desired - unavailable)).max(0);
        for rs in &old {
            let replicas = replicas(rs);
            if replicas == 0 {
                continue;
            }
            let unready = (replicas - ready_replicas(rs)).max(0);
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

fn old_pods_remaining(snapshot: &Snapshot, namespace: &str, old: &[&ReplicaSet]) -> usize {
    snapshot
        .list::<Pod>(Some(namespace))
        .filter(|p| {
            controller_uid(&p.metadata)
                .is_some_and(|owner| old.iter().any(|rs| rs.metadata.uid == owner))
        })
        .count()
}

fn new_replica_set(
    deployment: &Deployment,
    template: &PodTemplateSpec,
    name: &str,
    hash: &str,
    replicas: i64,
) -> ReplicaSet {
    let mut template = template.clone();
    template
        .metadata
        .labels
        .insert(TEMPLATE_HASH_LABEL.to_owned(), hash.to_owned());
    let mut selector = deployment.spec.selector.clone();
    selector
        .match_labels
        .insert(TEMPLATE_HASH_LABEL.to_owned(), hash.to_owned());
    let revision = deployment
        .metadata
        .annotations
        .get(REVISION_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| "1".to_owned());
    ReplicaSet {
        api_version: "apps/v1".to_owned(),
        kind: "ReplicaSet".to_owned(),
        metadata: ObjectMeta {
            name: name.to_owned(),
            namespace: deployment.metadata.namespace.clone(),
            labels: template.metadata.labels.clone(),
            annotations: BTreeMap::from([(REVISION_ANNOTATION.to_owned(), revision)]),
            owner_references: vec![owner_reference(deployment)],
            ..ObjectMeta::default()
        },
        spec: ReplicaSetSpec {
            replicas: i32::try_from(replicas).unwrap_or(i32::MAX),
            selector,
            template,
        },
        status: None,
    }
}

fn prune_history(deployment: &Deployment, old: &[&ReplicaSet]) -> Vec<Write> {
    let limit = usize::try_from(deployment.spec.revision_history_limit).unwrap_or(0);
    let idle: Vec<&&ReplicaSet> = old
        .iter()
        .filter(|rs| replicas(rs) == 0 && status_replicas(rs) == 0)
        .collect();
    let excess = idle.len().saturating_sub(limit);
    idle.into_iter()
        .take(excess)
        .map(|rs| Write::delete(*rs))
        .collect()
}

fn status_write(
    deployment: &Deployment,
    new_rs: &ReplicaSet,
    owned: &[&ReplicaSet],
) -> Option<Write> {
    let desired = deployment.spec.replicas;
    let sum = |count: fn(&ReplicaSet) -> i64| -> i32 {
        i32::try_from(owned.iter().map(|rs| count(rs)).sum::<i64>()).unwrap_or(i32::MAX)
    };
    let replicas = sum(status_replicas);
    let ready = sum(ready_replicas);
    let updated = i32::try_from(status_replicas(new_rs)).unwrap_or(i32::MAX);
    let available = ready >= desired;
    let complete = available && updated == desired && replicas == desired;
    let condition = |type_: &str, status: &str, reason: &str| Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        ..Condition::default()
    };
    let status = DeploymentStatus {
        observed_generation: deployment.metadata.generation,
        replicas,
        updated_replicas: updated,
        ready_replicas: ready,
        available_replicas: ready,
        conditions: vec![
            if available {
                condition("Available", "True", "MinimumReplicasAvailable")
            } else {
                condition("Available", "False", "MinimumReplicasUnavailable")
            },
            condition(
                "Progressing",
                "True",
                if complete {
                    "NewReplicaSetAvailable"
                } else {
                    "ReplicaSetUpdated"
                },
            ),
        ],
    };
    (deployment.status.as_ref() != Some(&status)).then(|| {
        let mut object = deployment.clone();
        object.status = Some(status);
        Write::update_status(object)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        controllers::{Settings, fixtures::typed},
        objects::{Kind as _, Object},
    };

    fn deployment(image: &str, replicas: i64) -> Deployment {
        typed(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 1},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}}}}))
    }

    fn replica_set(d: &Deployment, replicas: i64, ready: i32, created: &str) -> ReplicaSet {
        let template = &d.spec.template;
        let hash = template.hash();
        let mut rs = new_replica_set(d, template, &format!("web-{hash}"), &hash, replicas);
        rs.metadata.uid = format!("rs-{hash}");
        rs.metadata.creation_timestamp = created.to_owned();
        rs.status = Some(berth_api::apps::ReplicaSetStatus {
            replicas: i32::try_from(replicas).expect("small"),
            ready_replicas: ready,
            ..Default::default()
        });
        rs
    }

    fn run(d: &Deployment, sets: Vec<ReplicaSet>) -> Vec<Write> {
        let mut objects = vec![d.clone().into_object()];
        objects.extend(sets.into_iter().map(ReplicaSet::into_object));
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
            Write::Create(Object::ReplicaSet(rs)) | Write::Update(Object::ReplicaSet(rs)) => {
                (rs.metadata.name.clone(), replicas(rs))
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
        let Write::Create(Object::ReplicaSet(rs)) = &writes[0] else {
            panic!()
        };
        assert_eq!(
            rs.spec.selector.match_labels.get(TEMPLATE_HASH_LABEL),
            rs.metadata.labels.get(TEMPLATE_HASH_LABEL)
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
    fn a_paused_deployment_holds_a_new_template_back() {
        let v1 = deployment("v1", 3);
        let mut v2 = deployment("v2", 3);
        v2.spec.paused = true;
        let old = replica_set(&v1, 3, 3, "2026-01-01T00:00:00Z");
        assert!(run(&v2, vec![old.clone()]).is_empty());
        v2.spec.paused = false;
        assert_eq!(
            replicas_of(&run(&v2, vec![old])[0]).1,
            0,
            "resumed: the new one at 0"
        );
    }

    #[test]
    fn a_finished_rollout_only_reports_status() {
        let v2 = deployment("v2", 2);
        let new = replica_set(&v2, 2, 2, "2026-01-01T00:01:00Z");
        let writes = run(&v2, vec![new.clone()]);
        let [Write::UpdateStatus(Object::Deployment(object))] = writes.as_slice() else {
            panic!("{writes:?}")
        };
        let status = object.status.as_ref().expect("a status");
        assert_eq!(status.ready_replicas, 2);
        assert_eq!(status.conditions[1].reason, "NewReplicaSetAvailable");
        assert!(run(object, vec![new]).is_empty(), "idempotent");
    }

    #[test]
    fn percentages_round_like_kubernetes() {
        let percent = |p: &str| IntOrString::String(p.to_owned());
        assert_eq!(scaled(Some(&percent("25%")), 10, true, 0), 3);
        assert_eq!(scaled(Some(&percent("25%")), 10, false, 0), 2);
        assert_eq!(scaled(None, 4, true, 25), 1);
        assert_eq!(scaled(Some(&IntOrString::Int(2)), 10, true, 25), 2);
    }
}
