//! ResourceQuota status: what each quota's namespace uses of the resources it bounds,
//! recounted whenever an object it counts changes (Kubernetes' resource quota
//! controller). Admission itself counts from the store (`registry::quota`).

use berth_api::{
    configuration::{ConfigMap, Secret},
    core::{Pod, Service},
    policy::{ResourceQuota, ResourceQuotaStatus, canonical_quota_resource, format_quota_amount},
    storage::PersistentVolumeClaim,
};

use super::{Change, Context, Outcome, Reconciler, Snapshot, Write};
use crate::registry::quota::{Usage, pod_counts, pod_usage};

pub struct QuotaController;

impl Reconciler for QuotaController {
    type Object = ResourceQuota;

    fn name(&self) -> &'static str {
        "resourcequota"
    }

    fn affected(&self, change: &Change, snapshot: &Snapshot) -> Vec<(String, String)> {
        if change.as_kind::<ResourceQuota>().is_some() {
            return if change.deleted {
                Vec::new()
            } else {
                vec![change.key()]
            };
        }
        let counted = change.as_kind::<Pod>().is_some()
            || change.as_kind::<Service>().is_some()
            || change.as_kind::<ConfigMap>().is_some()
            || change.as_kind::<Secret>().is_some()
            || change.as_kind::<PersistentVolumeClaim>().is_some();
        if !counted {
            return Vec::new();
        }
        let namespace = change.object.namespace();
        snapshot
            .list::<ResourceQuota>(Some(namespace))
            .map(|q| (namespace.to_owned(), q.metadata.name.clone()))
            .collect()
    }

    fn reconcile(&self, quota: &ResourceQuota, snapshot: &Snapshot, _ctx: &Context) -> Outcome {
        let namespace = Some(quota.metadata.namespace.as_str());
        let mut used = Usage::from([
            (
                "services".to_owned(),
                snapshot.list::<Service>(namespace).count() as u64,
            ),
            (
                "configmaps".to_owned(),
                snapshot.list::<ConfigMap>(namespace).count() as u64,
            ),
            (
                "secrets".to_owned(),
                snapshot.list::<Secret>(namespace).count() as u64,
            ),
            (
                "persistentvolumeclaims".to_owned(),
                snapshot.list::<PersistentVolumeClaim>(namespace).count() as u64,
            ),
            ("pods".to_owned(), 0),
        ]);
        for pod in snapshot.list::<Pod>(namespace).filter(|p| pod_counts(p)) {
            for (resource, amount) in pod_usage(pod) {
                *used.entry(resource).or_default() += amount;
            }
        }
        let status = ResourceQuotaStatus {
            hard: quota.spec.hard.clone(),
            used: quota
                .spec
                .hard
                .keys()
                .map(|resource| {
                    let amount = used
                        .get(canonical_quota_resource(resource))
                        .copied()
                        .unwrap_or(0);
                    (resource.clone(), format_quota_amount(resource, amount))
                })
                .collect(),
        };
        if quota.status.as_ref() == Some(&status) {
            return Outcome::default();
        }
        let mut updated = quota.clone();
        updated.status = Some(status);
        Outcome::writes(vec![Write::update_status(updated)])
    }
}
