//! StatefulSet → pods with stable ordinal names (`web-0`, `web-1`, ...), each with its
//! claims from `volumeClaimTemplates` (made before the pod, kept when it goes) and its
//! DNS identity (`hostname`, `subdomain`). OrderedReady makes and removes one pod at a
//! time, in ordinal order (removal from the highest); Parallel all at once. A new
//! template rolls out from the highest ordinal down to `partition`, one pod at a time,
//! each Ready before the next (RollingUpdate), or as pods are deleted (OnDelete).
//!
//! The API server records each template as a ControllerRevision `<set>-<hash>`; pods
//! carry the name of theirs in `controller-revision-hash`, which is what the status
//! counts.

use std::{collections::BTreeMap, time::Duration};

use berth_api::{
    apps::{
        CONTROLLER_REVISION_HASH_LABEL, ControllerRevision, POD_INDEX_LABEL, POD_NAME_LABEL,
        PodTemplateSpec, StatefulSet, StatefulSetStatus,
    },
    core::Pod,
    meta::ObjectMeta,
    storage::PersistentVolumeClaim,
    time::parse_rfc3339,
};

use super::{
    Change, Context, Outcome, Reconciler, Snapshot, Write, controller_uid, owner_reference,
    pod_is_ready, pod_is_terminal, pod_is_terminating, reference, self_or_owner,
};

pub struct StatefulSetController;

impl Reconciler for StatefulSetController {
    type Object = StatefulSet;

    fn name(&self) -> &'static str {
        "statefulset"
    }

    fn affected(&self, change: &Change, _snapshot: &Snapshot) -> Vec<(String, String)> {
        self_or_owner::<StatefulSet, Pod>(change)
    }

    fn reconcile(&self, set: &StatefulSet, snapshot: &Snapshot, ctx: &Context) -> Outcome {
        plan(set, snapshot, ctx.now)
    }
}

/// `<set>-<ordinal>`.
pub fn pod_name(set: &StatefulSet, ordinal: i32) -> String {
    format!("{}-{ordinal}", set.metadata.name)
}

/// `<template>-<set>-<ordinal>`.
pub fn claim_name(template: &PersistentVolumeClaim, set: &StatefulSet, ordinal: i32) -> String {
    format!("{}-{}", template.metadata.name, pod_name(set, ordinal))
}

/// The ControllerRevision the API server records the set's current template as.
pub fn update_revision(set: &StatefulSet) -> String {
    format!("{}-{}", set.metadata.name, set.spec.template.hash())
}

/// The ordinal of a pod of `set` named `<set>-<n>`.
fn ordinal_of(set: &StatefulSet, pod: &Pod) -> Option<i32> {
    let suffix = pod
        .metadata
        .name
        .strip_prefix(&set.metadata.name)?
        .strip_prefix('-')?;
    // `web-01` is not ordinal 1: only names this controller makes count.
    let ordinal: i32 = suffix.parse().ok()?;
    (ordinal.to_string() == suffix).then_some(ordinal)
}

fn revision_of(pod: &Pod) -> &str {
    pod.metadata
        .labels
        .get(CONTROLLER_REVISION_HASH_LABEL)
        .map_or("", String::as_str)
}

/// Ready for `min_ready` seconds (Kubernetes' "available").
fn is_available(pod: &Pod, min_ready: u64, now: u64) -> bool {
    if !pod_is_ready(pod) {
        return false;
    }
    if min_ready == 0 {
        return true;
    }
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| parse_rfc3339(&c.last_transition_time))
        .is_some_and(|since| now.saturating_sub(since) >= min_ready)
}

fn plan(set: &StatefulSet, snapshot: &Snapshot, now: u64) -> Outcome {
    let namespace = &set.metadata.namespace;
    let uid = set.metadata.uid.as_str();
    let spec = &set.spec;
    let start = set.start_ordinal();
    let end = start.saturating_add(spec.replicas.max(0));
    let min_ready = u64::try_from(spec.min_ready_seconds).unwrap_or(0);
    let ordered = spec.pod_management_policy != "Parallel";
    let update = update_revision(set);
    let current = set
        .status
        .as_ref()
        .map(|s| s.current_revision.clone())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| update.clone());

    let mut pods: BTreeMap<i32, &Pod> = BTreeMap::new();
    for pod in snapshot.list::<Pod>(Some(namespace)) {
        if controller_uid(&pod.metadata) == Some(uid)
            && let Some(ordinal) = ordinal_of(set, pod)
        {
            pods.insert(ordinal, pod);
        }
    }

    let mut writes = Vec::new();
    let mut requeue_after = None;
    // Ready pods become available with time alone: nothing else wakes the set then.
    let waiting_for_time = min_ready > 0
        && pods
            .values()
            .any(|p| pod_is_ready(p) && !is_available(p, min_ready, now));
    let event = |reason: &str, message: String| Write::Event {
        involved: reference(set),
        reason: reason.to_owned(),
        message,
        type_: "Normal",
    };

    // Pods in range: made (claims first), remade after they failed, one at a time
    // when ordered.
    let mut blocked = false;
    for ordinal in start..end {
        if blocked {
            break;
        }
        let Some(pod) = pods.get(&ordinal) else {
            let missing: Vec<PersistentVolumeClaim> = spec
                .volume_claim_templates
                .iter()
                .filter(|t| {
                    snapshot
                        .get::<PersistentVolumeClaim>(namespace, &claim_name(t, set, ordinal))
                        .is_none()
                })
                .map(|t| new_claim(set, t, ordinal))
                .collect();
            if missing.is_empty() {
                let name = pod_name(set, ordinal);
                let template = template_for(set, snapshot, ordinal, &current, &update);
                writes.push(Write::create(new_pod(set, ordinal, template)));
                writes.push(event(
                    "SuccessfulCreate",
                    format!(
                        "create Pod {name} in StatefulSet {} successful",
                        set.metadata.name
                    ),
                ));
            } else {
                for claim in missing {
                    writes.push(event(
                        "SuccessfulCreate",
                        format!(
                            "create Claim {} Pod {} in StatefulSet {} success",
                            claim.metadata.name,
                            pod_name(set, ordinal),
                            set.metadata.name
                        ),
                    ));
                    writes.push(Write::create(claim));
                }
                // The pod follows once the cache has its claims.
                requeue_after = Some(Duration::ZERO);
            }
            blocked = ordered;
            continue;
        };
        if pod_is_terminating(pod) {
            // Its successor takes the same name: wait until it is gone.
            blocked = ordered;
            continue;
        }
        if pod_is_terminal(pod) {
            // Kubernetes remakes a failed pod under its name.
            writes.push(Write::delete(*pod));
            blocked = ordered;
            continue;
        }
        if ordered && !is_available(pod, min_ready, now) {
            blocked = true;
        }
    }

    // Pods past the end go, the highest first; ordered, only when every other pod is
    // healthy and one at a time.
    let condemned: Vec<&Pod> = pods
        .range(end..)
        .chain(pods.range(..start))
        .map(|(_, pod)| *pod)
        .rev()
        .collect();
    if !condemned.is_empty() && writes.is_empty() {
        if ordered {
            let settled = !blocked && !condemned.iter().any(|p| pod_is_terminating(p));
            if settled && let Some(pod) = condemned.first() {
                writes.extend(delete_pod(set, pod));
            }
        } else {
            for pod in condemned.iter().filter(|p| !pod_is_terminating(p)) {
                writes.push(Write::delete(*pod));
            }
        }
    }

    // Claims of ordinals scaled away go when the policy says so, after their pods.
    if set.deletes_claims(true) {
        for template in &spec.volume_claim_templates {
            let prefix = format!("{}-{}-", template.metadata.name, set.metadata.name);
            for claim in snapshot.list::<PersistentVolumeClaim>(Some(namespace)) {
                let Some(ordinal) = claim
                    .metadata
                    .name
                    .strip_prefix(&prefix)
                    .and_then(|n| n.parse::<i32>().ok())
                else {
                    continue;
                };
                if (ordinal < start || ordinal >= end)
                    && !pods.contains_key(&ordinal)
                    && claim.metadata.deletion_timestamp.is_empty()
                {
                    writes.push(Write::delete(claim));
                }
            }
        }
    }

    // A rolling update replaces one outdated pod at a time, the highest first, down to
    // the partition, once every pod is there and available.
    let in_range = |ordinal: &i32| (start..end).contains(ordinal);
    let all_available = (start..end).all(|o| {
        pods.get(&o)
            .is_some_and(|p| !pod_is_terminating(p) && is_available(p, min_ready, now))
    });
    if writes.is_empty()
        && !blocked
        && all_available
        && spec.update_strategy.type_ == "RollingUpdate"
    {
        let partition = spec
            .update_strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.partition)
            .unwrap_or(0);
        let outdated = pods
            .iter()
            .rev()
            .filter(|(o, _)| in_range(o) && **o >= partition)
            .find(|(_, p)| revision_of(p) != update);
        if let Some((_, pod)) = outdated {
            writes.extend(delete_pod(set, pod));
        }
    }

    if writes.iter().all(|w| matches!(w, Write::Event { .. })) {
        writes.extend(status_write(
            set,
            &pods,
            (start, end),
            (&current, &update),
            now,
        ));
    }
    if waiting_for_time && requeue_after.is_none() {
        requeue_after = Some(Duration::from_secs(1));
    }
    Outcome {
        writes,
        requeue_after,
    }
}

/// Deletes `pod` and says so on the set, as Kubernetes' controller does.
fn delete_pod(set: &StatefulSet, pod: &Pod) -> [Write; 2] {
    [
        Write::delete(pod),
        Write::Event {
            involved: reference(set),
            reason: "SuccessfulDelete".to_owned(),
            message: format!(
                "delete Pod {} in StatefulSet {} successful",
                pod.metadata.name, set.metadata.name
            ),
            type_: "Normal",
        },
    ]
}

/// The template of a pod made now: the current revision's below the partition of a
/// rolling update still under way, the set's own otherwise.
fn template_for<'a>(
    set: &'a StatefulSet,
    snapshot: &'a Snapshot,
    ordinal: i32,
    current: &str,
    update: &str,
) -> (&'a PodTemplateSpec, String) {
    let partition = set
        .spec
        .update_strategy
        .rolling_update
        .as_ref()
        .and_then(|r| r.partition)
        .unwrap_or(0);
    if set.spec.update_strategy.type_ == "RollingUpdate"
        && ordinal < partition
        && current != update
        && let Some(revision) = snapshot.get::<ControllerRevision>(&set.metadata.namespace, current)
    {
        return (&revision.data, current.to_owned());
    }
    (&set.spec.template, update.to_owned())
}

fn new_claim(
    set: &StatefulSet,
    template: &PersistentVolumeClaim,
    ordinal: i32,
) -> PersistentVolumeClaim {
    let mut labels = template.metadata.labels.clone();
    labels.extend(set.spec.selector.match_labels.clone());
    PersistentVolumeClaim {
        api_version: "v1".to_owned(),
        kind: "PersistentVolumeClaim".to_owned(),
        metadata: ObjectMeta {
            name: claim_name(template, set, ordinal),
            namespace: set.metadata.namespace.clone(),
            labels,
            annotations: template.metadata.annotations.clone(),
            // Owned (and so collected with the set) only when the policy deletes them.
            owner_references: if set.deletes_claims(false) {
                vec![owner_reference(set)]
            } else {
                Vec::new()
            },
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

fn new_pod(
    set: &StatefulSet,
    ordinal: i32,
    (template, revision): (&PodTemplateSpec, String),
) -> Pod {
    let name = pod_name(set, ordinal);
    let mut labels = template.metadata.labels.clone();
    labels.insert(POD_NAME_LABEL.to_owned(), name.clone());
    labels.insert(POD_INDEX_LABEL.to_owned(), ordinal.to_string());
    labels.insert(CONTROLLER_REVISION_HASH_LABEL.to_owned(), revision);
    let mut spec = set.spec.pod_spec(template, &name);
    spec.hostname = name.clone();
    spec.subdomain = set.spec.service_name.clone();
    Pod {
        api_version: "v1".to_owned(),
        kind: "Pod".to_owned(),
        metadata: ObjectMeta {
            name,
            namespace: set.metadata.namespace.clone(),
            labels,
            annotations: template.metadata.annotations.clone(),
            owner_references: vec![owner_reference(set)],
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

fn status_write(
    set: &StatefulSet,
    pods: &BTreeMap<i32, &Pod>,
    (start, end): (i32, i32),
    (current, update): (&str, &str),
    now: u64,
) -> Option<Write> {
    let min_ready = u64::try_from(set.spec.min_ready_seconds).unwrap_or(0);
    let live: Vec<&Pod> = pods
        .values()
        .filter(|p| !pod_is_terminal(p))
        .copied()
        .collect();
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(live.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let replicas = count(&|_| true);
    let updated = count(&|p| revision_of(p) == update);
    // The update is complete once every wanted pod runs it: it becomes the current one.
    let complete = updated == set.spec.replicas
        && replicas == set.spec.replicas
        && (start..end).all(|o| pods.get(&o).is_some_and(|p| revision_of(p) == update));
    let current = if complete { update } else { current };
    let status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        replicas,
        ready_replicas: count(&pod_is_ready),
        current_replicas: count(&|p| revision_of(p) == current),
        updated_replicas: updated,
        available_replicas: count(&|p| is_available(p, min_ready, now)),
        current_revision: current.to_owned(),
        update_revision: update.to_owned(),
        collision_count: 0,
    };
    (set.status.as_ref() != Some(&status)).then(|| {
        let mut object = set.clone();
        object.status = Some(status);
        Write::update_status(object)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        controllers::fixtures::typed,
        objects::{Kind as _, Object},
    };

    fn set(replicas: i32, extra: serde_json::Value) -> StatefulSet {
        let mut manifest = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "web", "namespace": "default", "uid": "s-uid", "generation": 1},
            "spec": {"replicas": replicas, "serviceName": "nginx",
                "selector": {"matchLabels": {"app": "nginx"}},
                "template": {"metadata": {"labels": {"app": "nginx"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx:1"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "www"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}});
        if let (Some(spec), Some(extra)) = (manifest["spec"].as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        typed(manifest)
    }

    fn pod_of(set: &StatefulSet, ordinal: i32, ready: bool) -> Pod {
        let mut pod = new_pod(set, ordinal, (&set.spec.template, update_revision(set)));
        pod.metadata.uid = format!("p{ordinal}");
        pod.status = Some(typed(json!({"phase": "Running",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]})));
        pod
    }

    fn claims(set: &StatefulSet, ordinals: std::ops::Range<i32>) -> Vec<Object> {
        ordinals
            .map(|o| new_claim(set, &set.spec.volume_claim_templates[0], o).into_object())
            .collect()
    }

    fn run(set: &StatefulSet, pods: Vec<Pod>, mut others: Vec<Object>) -> Outcome {
        others.push(set.clone().into_object());
        others.extend(pods.into_iter().map(Pod::into_object));
        let snapshot = Snapshot::from_objects(others, 1);
        plan(set, &snapshot, 1_000)
    }

    fn created(outcome: &Outcome) -> Vec<String> {
        outcome
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::Create(o) => Some(format!("{}/{}", o.resource_type().kind, o.name())),
                _ => None,
            })
            .collect()
    }

    fn deleted(outcome: &Outcome) -> Vec<String> {
        outcome
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::Delete { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn ordered_ready_makes_claims_then_pods_one_at_a_time() {
        let s = set(3, json!({}));
        let outcome = run(&s, vec![], vec![]);
        assert_eq!(created(&outcome), ["PersistentVolumeClaim/www-web-0"]);
        assert_eq!(outcome.requeue_after, Some(Duration::ZERO));
        let outcome = run(&s, vec![], claims(&s, 0..1));
        assert_eq!(created(&outcome), ["Pod/web-0"]);
        let Some(Write::Create(Object::Pod(pod))) = outcome.writes.first() else {
            panic!("{outcome:?}")
        };
        assert_eq!(
            (pod.spec.hostname.as_str(), pod.spec.subdomain.as_str()),
            ("web-0", "nginx")
        );
        assert_eq!(pod.metadata.labels[POD_NAME_LABEL], "web-0");
        assert_eq!(pod.metadata.labels[POD_INDEX_LABEL], "0");
        assert_eq!(
            pod.spec.volumes[0]
                .persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("www-web-0")
        );
        // web-0 not ready: nothing more.
        let outcome = run(&s, vec![pod_of(&s, 0, false)], claims(&s, 0..3));
        assert!(created(&outcome).is_empty(), "{outcome:?}");
        let outcome = run(&s, vec![pod_of(&s, 0, true)], claims(&s, 0..3));
        assert_eq!(created(&outcome), ["Pod/web-1"]);
    }

    #[test]
    fn parallel_makes_every_pod_at_once() {
        let s = set(3, json!({"podManagementPolicy": "Parallel"}));
        let outcome = run(&s, vec![], claims(&s, 0..3));
        assert_eq!(created(&outcome), ["Pod/web-0", "Pod/web-1", "Pod/web-2"]);
    }

    #[test]
    fn scale_down_removes_the_highest_first_and_keeps_claims() {
        let s = set(1, json!({}));
        let pods = (0..3).map(|o| pod_of(&s, o, true)).collect::<Vec<_>>();
        let outcome = run(&s, pods.clone(), claims(&s, 0..3));
        assert_eq!(deleted(&outcome), ["web-2"]);
        // With whenScaled: Delete, claims of ordinals without pods go.
        let s = set(
            1,
            json!({"persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete"}}),
        );
        let outcome = run(&s, pods[..2].to_vec(), claims(&s, 0..3));
        assert_eq!(deleted(&outcome), ["web-1", "www-web-2"]);
    }

    #[test]
    fn rolling_update_goes_from_the_highest_down_to_the_partition() {
        let old = set(
            3,
            json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}}),
        );
        let pods = (0..3).map(|o| pod_of(&old, o, true)).collect::<Vec<_>>();
        let mut new = old.clone();
        new.spec.template.spec.containers[0].image = "nginx:2".to_owned();
        new.status = Some(StatefulSetStatus {
            current_revision: update_revision(&old),
            ..StatefulSetStatus::default()
        });
        let outcome = run(&new, pods.clone(), claims(&new, 0..3));
        assert_eq!(deleted(&outcome), ["web-2"]);
        let mut pods = pods;
        pods[2] = pod_of(&new, 2, true);
        let outcome = run(&new, pods.clone(), claims(&new, 0..3));
        assert_eq!(deleted(&outcome), ["web-1"]);
        pods[1] = pod_of(&new, 1, true);
        let outcome = run(&new, pods, claims(&new, 0..3));
        assert!(deleted(&outcome).is_empty(), "web-0 is below the partition");
        let [Write::UpdateStatus(Object::StatefulSet(status))] = outcome.writes.as_slice() else {
            panic!("{outcome:?}")
        };
        let status = status.status.as_ref().expect("status");
        assert_eq!((status.updated_replicas, status.ready_replicas), (2, 3));
        assert_ne!(status.current_revision, status.update_revision);
    }

    #[test]
    fn on_delete_leaves_outdated_pods_alone() {
        let old = set(2, json!({"updateStrategy": {"type": "OnDelete"}}));
        let pods = (0..2).map(|o| pod_of(&old, o, true)).collect::<Vec<_>>();
        let mut new = old.clone();
        new.spec.template.spec.containers[0].image = "nginx:2".to_owned();
        let outcome = run(&new, pods, claims(&new, 0..2));
        assert!(deleted(&outcome).is_empty(), "{outcome:?}");
    }

    #[test]
    fn a_failed_pod_is_remade_under_its_name() {
        let s = set(1, json!({}));
        let mut pod = pod_of(&s, 0, false);
        if let Some(status) = pod.status.as_mut() {
            status.phase = "Failed".to_owned();
        }
        let outcome = run(&s, vec![pod], claims(&s, 0..1));
        assert_eq!(deleted(&outcome), ["web-0"]);
        let outcome = run(&s, vec![], claims(&s, 0..1));
        assert_eq!(created(&outcome), ["Pod/web-0"]);
    }

    #[test]
    fn only_names_the_controller_makes_are_ordinals() {
        let s = set(1, json!({}));
        let mut pod = pod_of(&s, 0, true);
        for (name, ordinal) in [
            ("web-3", Some(3)),
            ("web-03", None),
            ("web-x", None),
            ("webby-1", None),
        ] {
            pod.metadata.name = name.to_owned();
            assert_eq!(ordinal_of(&s, &pod), ordinal, "{name}");
        }
    }
}
