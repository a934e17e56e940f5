//! Node-local persistent volumes (see `berth_api::storage`): the binder gives a claim its
//! volume once the first pod using it is bound to a node (Kubernetes'
//! `WaitForFirstConsumer`), the volume a directory on that node pinned there by its node
//! affinity; the reclaimer deletes a volume whose claim is gone when its reclaim policy
//! says `Delete`, and marks it `Released` otherwise. The agent of the node makes and
//! removes the directory.

use berth_api::{
    Resource as _,
    core::{ObjectReference, Pod},
    meta::ObjectMeta,
    storage::{
        LOCAL_STORAGE_CLASS, LocalVolumeSource, NodeSelector, PersistentVolume,
        PersistentVolumeClaim, PersistentVolumeClaimStatus, PersistentVolumeSpec,
        PersistentVolumeStatus, VolumeNodeAffinity,
    },
};

use super::{Change, Context, Outcome, Reconciler, Snapshot, Write, pod_is_terminal};

pub struct VolumeBinder;

/// The name Kubernetes' provisioners give a claim's volume.
fn volume_name(claim: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", claim.metadata.uid)
}

/// The claim `volume` is bound to, when it still exists as that claim (same uid).
fn claim_of<'a>(
    volume: &PersistentVolume,
    snapshot: &'a Snapshot,
) -> Option<&'a PersistentVolumeClaim> {
    let reference = volume.spec.claim_ref.as_ref()?;
    snapshot
        .get::<PersistentVolumeClaim>(&reference.namespace, &reference.name)
        .filter(|claim| reference.uid.is_empty() || claim.metadata.uid == reference.uid)
}

impl Reconciler for VolumeBinder {
    type Object = PersistentVolumeClaim;

    fn name(&self) -> &'static str {
        "persistentvolume-binder"
    }

    fn affected(&self, change: &Change, snapshot: &Snapshot) -> Vec<(String, String)> {
        if change.as_kind::<PersistentVolumeClaim>().is_some() {
            return if change.deleted {
                Vec::new()
            } else {
                vec![change.key()]
            };
        }
        if let Some(volume) = change.as_kind::<PersistentVolume>() {
            return volume
                .spec
                .claim_ref
                .iter()
                .map(|c| (c.namespace.clone(), c.name.clone()))
                .collect();
        }
        // A pod bound to a node is the first consumer its unbound claims wait for.
        if let Some(pod) = change.as_kind::<Pod>()
            && !change.deleted
            && !pod.spec.node_name.is_empty()
        {
            let namespace = &pod.metadata.namespace;
            return pod
                .spec
                .claim_names()
                .filter(|claim| {
                    snapshot
                        .get::<PersistentVolumeClaim>(namespace, claim)
                        .is_some_and(|c| c.spec.volume_name.is_empty())
                })
                .map(|claim| (namespace.clone(), claim.to_owned()))
                .collect();
        }
        Vec::new()
    }

    fn reconcile(
        &self,
        claim: &PersistentVolumeClaim,
        snapshot: &Snapshot,
        ctx: &Context,
    ) -> Outcome {
        if !claim.metadata.deletion_timestamp.is_empty() {
            return Outcome::default();
        }
        if claim.spec.volume_name.is_empty() && !claim.is_provisionable() {
            return claim_phase(claim, "Pending", None);
        }
        if claim.spec.volume_name.is_empty() {
            return match first_consumer_node(claim, snapshot) {
                Some(node) => provision(claim, node, snapshot, ctx),
                None => claim_phase(claim, "Pending", None),
            };
        }
        match snapshot.get::<PersistentVolume>("", &claim.spec.volume_name) {
            Some(volume) => claim_phase(claim, "Bound", Some(volume)),
            // Made in the same pass as the binding, not in the cache yet; or deleted
            // under the claim: Kubernetes calls that claim lost.
            None if claim.is_bound() => claim_phase(claim, "Lost", None),
            None => Outcome::default(),
        }
    }
}

/// The node of the first pod (by name) that uses `claim` and is bound.
fn first_consumer_node<'a>(
    claim: &PersistentVolumeClaim,
    snapshot: &'a Snapshot,
) -> Option<&'a str> {
    snapshot
        .list::<Pod>(Some(&claim.metadata.namespace))
        .filter(|pod| !pod.spec.node_name.is_empty() && !pod_is_terminal(pod))
        .filter(|pod| pod.spec.claim_names().any(|c| c == claim.metadata.name))
        .min_by(|a, b| a.metadata.name.cmp(&b.metadata.name))
        .map(|pod| pod.spec.node_name.as_str())
}

/// A new volume for `claim` on `node`, and the claim bound to it. A volume made by an
/// earlier pass whose claim update failed is reused.
fn provision(
    claim: &PersistentVolumeClaim,
    node: &str,
    snapshot: &Snapshot,
    ctx: &Context,
) -> Outcome {
    let name = volume_name(claim);
    let mut writes = Vec::new();
    if snapshot.get::<PersistentVolume>("", &name).is_none() {
        let capacity = claim
            .spec
            .resources
            .requests
            .get("storage")
            .map(|size| [("storage".to_owned(), size.clone())].into())
            .unwrap_or_default();
        writes.push(Write::create(PersistentVolume {
            metadata: ObjectMeta {
                name: name.clone(),
                annotations: [(
                    "pv.kubernetes.io/provisioned-by".to_owned(),
                    "berth.io/local".to_owned(),
                )]
                .into(),
                ..ObjectMeta::default()
            },
            spec: PersistentVolumeSpec {
                capacity,
                access_modes: claim.spec.access_modes.clone(),
                persistent_volume_reclaim_policy: "Delete".to_owned(),
                storage_class_name: LOCAL_STORAGE_CLASS.to_owned(),
                volume_mode: Some("Filesystem".to_owned()),
                local: Some(LocalVolumeSource {
                    path: ctx
                        .settings
                        .local_volume_dir
                        .join(&name)
                        .to_string_lossy()
                        .into_owned(),
                }),
                node_affinity: Some(VolumeNodeAffinity {
                    required: NodeSelector::hostname(node),
                }),
                claim_ref: Some(ObjectReference {
                    api_version: "v1".to_owned(),
                    kind: PersistentVolumeClaim::KIND.to_owned(),
                    name: claim.metadata.name.clone(),
                    namespace: claim.metadata.namespace.clone(),
                    uid: claim.metadata.uid.clone(),
                }),
            },
            ..PersistentVolume::default()
        }));
    }
    let mut bound = claim.clone();
    bound.spec.volume_name = name;
    writes.push(Write::update(bound));
    Outcome::writes(writes)
}

/// The claim's status as `phase`, with the volume's size and modes once bound; no write
/// when it already says so.
fn claim_phase(
    claim: &PersistentVolumeClaim,
    phase: &str,
    volume: Option<&PersistentVolume>,
) -> Outcome {
    let status = PersistentVolumeClaimStatus {
        phase: phase.to_owned(),
        access_modes: volume
            .map(|v| v.spec.access_modes.clone())
            .unwrap_or_default(),
        capacity: volume.map(|v| v.spec.capacity.clone()).unwrap_or_default(),
    };
    if claim.status.as_ref() == Some(&status) {
        return Outcome::default();
    }
    let mut updated = claim.clone();
    updated.status = Some(status);
    Outcome::writes(vec![Write::update_status(updated)])
}

pub struct VolumeReclaimer;

impl Reconciler for VolumeReclaimer {
    type Object = PersistentVolume;

    fn name(&self) -> &'static str {
        "persistentvolume-reclaimer"
    }

    fn affected(&self, change: &Change, snapshot: &Snapshot) -> Vec<(String, String)> {
        if change.as_kind::<PersistentVolume>().is_some() {
            return if change.deleted {
                Vec::new()
            } else {
                vec![change.key()]
            };
        }
        if let Some(claim) = change.as_kind::<PersistentVolumeClaim>()
            && !claim.spec.volume_name.is_empty()
        {
            return vec![(String::new(), claim.spec.volume_name.clone())];
        }
        // The last pod using a deleted claim went: its volume can go now.
        if let Some(pod) = change.as_kind::<Pod>()
            && (change.deleted || pod_is_terminal(pod))
        {
            let namespace = &pod.metadata.namespace;
            return pod
                .spec
                .claim_names()
                .filter(|claim| {
                    snapshot
                        .get::<PersistentVolumeClaim>(namespace, claim)
                        .is_none()
                })
                .flat_map(|claim| {
                    snapshot
                        .list::<PersistentVolume>(None)
                        .filter(move |v| {
                            v.spec
                                .claim_ref
                                .as_ref()
                                .is_some_and(|c| &c.namespace == namespace && c.name == claim)
                        })
                        .map(|v| (String::new(), v.metadata.name.clone()))
                })
                .collect();
        }
        Vec::new()
    }

    fn reconcile(&self, volume: &PersistentVolume, snapshot: &Snapshot, _ctx: &Context) -> Outcome {
        if !volume.metadata.deletion_timestamp.is_empty() {
            return Outcome::default();
        }
        let phase = match (&volume.spec.claim_ref, claim_of(volume, snapshot)) {
            (None, _) => "Available",
            (Some(_), Some(claim)) if claim.spec.volume_name == volume.metadata.name => "Bound",
            // Provisioned in the same pass as the claim's binding, which is on its way.
            (Some(_), Some(_)) => return Outcome::default(),
            // As Kubernetes' claim protection: the data stays while a pod still uses it.
            (Some(claim), None) if in_use(&claim.namespace, &claim.name, snapshot) => "Bound",
            (Some(_), None) if volume.reclaim_policy() == "Delete" => {
                return Outcome::writes(vec![Write::delete(volume)]);
            }
            (Some(_), None) => "Released",
        };
        if volume.status.as_ref().is_some_and(|s| s.phase == phase) {
            return Outcome::default();
        }
        let mut updated = volume.clone();
        updated.status = Some(PersistentVolumeStatus {
            phase: phase.to_owned(),
            message: String::new(),
        });
        Outcome::writes(vec![Write::update_status(updated)])
    }
}

/// Whether a pod that has not finished uses claim `name` of `namespace`.
fn in_use(namespace: &str, name: &str, snapshot: &Snapshot) -> bool {
    snapshot
        .list::<Pod>(Some(namespace))
        .filter(|pod| !pod_is_terminal(pod))
        .any(|pod| pod.spec.claim_names().any(|c| c == name))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        controllers::{Settings, fixtures::typed},
        objects::Kind as _,
    };

    fn ctx() -> Context {
        Context {
            now: 0,
            settings: Settings::default(),
        }
    }

    fn claim() -> PersistentVolumeClaim {
        typed(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "db", "uid": "u1", "resourceVersion": "5"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        }))
    }

    fn pod(node: &str) -> Pod {
        typed(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "pg-0", "namespace": "db"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}],
                     "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}]},
        }))
    }

    #[test]
    fn a_claim_waits_for_its_first_pod_then_gets_a_volume_on_that_node() {
        let claim = claim();
        let snapshot =
            Snapshot::from_objects(vec![claim.clone().into_object(), pod("").into_object()], 1);
        let waiting = VolumeBinder.reconcile(&claim, &snapshot, &ctx());
        assert!(
            matches!(&waiting.writes[..], [Write::UpdateStatus(_)]),
            "{waiting:?}"
        );

        let snapshot = Snapshot::from_objects(
            vec![claim.clone().into_object(), pod("n2").into_object()],
            1,
        );
        let outcome = VolumeBinder.reconcile(&claim, &snapshot, &ctx());
        let [Write::Create(volume), Write::Update(bound)] = &outcome.writes[..] else {
            panic!("{outcome:?}");
        };
        let volume = PersistentVolume::of(volume).expect("a volume");
        assert_eq!(volume.metadata.name, "pvc-u1");
        assert_eq!(volume.node(), Some("n2"));
        assert_eq!(
            volume.spec.local.as_ref().map(|l| l.path.as_str()),
            Some("/var/lib/berth/volumes/pvc-u1")
        );
        let bound = PersistentVolumeClaim::of(bound).expect("a claim");
        assert_eq!(bound.spec.volume_name, "pvc-u1");

        // Bound: the status follows, then nothing more.
        let bound = bound.clone();
        let snapshot = Snapshot::from_objects(
            vec![bound.clone().into_object(), volume.clone().into_object()],
            1,
        );
        let outcome = VolumeBinder.reconcile(&bound, &snapshot, &ctx());
        let [Write::UpdateStatus(status)] = &outcome.writes[..] else {
            panic!("{outcome:?}");
        };
        let with_status = PersistentVolumeClaim::of(status).expect("a claim").clone();
        assert!(with_status.is_bound());
        assert_eq!(
            VolumeBinder.reconcile(&with_status, &snapshot, &ctx()),
            Outcome::default()
        );
    }

    #[test]
    fn a_volume_goes_with_its_claim_when_its_policy_says_delete() {
        let claim = claim();
        let snapshot = Snapshot::from_objects(
            vec![claim.clone().into_object(), pod("n1").into_object()],
            1,
        );
        let outcome = VolumeBinder.reconcile(&claim, &snapshot, &ctx());
        let Some(Write::Create(volume)) = outcome.writes.first() else {
            panic!("{outcome:?}");
        };
        let mut volume = PersistentVolume::of(volume).expect("a volume").clone();
        let alone = Snapshot::from_objects(vec![volume.clone().into_object()], 1);
        assert!(matches!(
            &VolumeReclaimer.reconcile(&volume, &alone, &ctx()).writes[..],
            [Write::Delete { .. }]
        ));
        volume.spec.persistent_volume_reclaim_policy = "Retain".into();
        let outcome = VolumeReclaimer.reconcile(&volume, &alone, &ctx());
        let [Write::UpdateStatus(released)] = &outcome.writes[..] else {
            panic!("{outcome:?}");
        };
        assert_eq!(
            PersistentVolume::of(released)
                .and_then(|v| v.status.as_ref())
                .map(|s| s.phase.as_str()),
            Some("Released")
        );
    }
}
