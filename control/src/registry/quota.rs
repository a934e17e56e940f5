//! ResourceQuota admission: a create that would take a namespace past one of its quotas
//! is refused, naming the quota and the amounts, as Kubernetes' quota admission words it.
//! Usage is counted from the store and from the objects planned earlier in the same
//! transaction; creates of counted kinds are planned and committed one transaction at a
//! time (`Registry::quota_lock`), so concurrent creates cannot both take the last unit.

use std::collections::BTreeMap;

use berth_api::{
    core::{Pod, parse_cpu_millis, parse_memory_bytes},
    kinds::RESOURCE_QUOTAS,
    policy::{ResourceQuota, canonical_quota_resource, format_quota_amount, quota_amount},
    selector::{FieldSelector, Selector},
};

use super::{Batch, Error, Registry, Result};
use crate::objects::decode_stored;

/// What one object takes of a quota: its count, and a pod's requests and limits.
pub type Usage = BTreeMap<String, u64>;

/// The usage of `pod`: one pod, and the sum of its containers' requests and limits.
pub fn pod_usage(pod: &Pod) -> Usage {
    let mut usage = Usage::from([("pods".to_owned(), 1)]);
    for container in &pod.spec.containers {
        for (kind, values) in [
            ("requests", &container.resources.requests),
            ("limits", &container.resources.limits),
        ] {
            if let Some(cpu) = values.get("cpu").and_then(|q| parse_cpu_millis(q).ok()) {
                *usage.entry(format!("{kind}.cpu")).or_default() += cpu;
            }
            if let Some(memory) = values
                .get("memory")
                .and_then(|q| parse_memory_bytes(q).ok())
            {
                *usage.entry(format!("{kind}.memory")).or_default() += memory;
            }
        }
    }
    usage
}

/// Whether a pod still holds its quota: one that finished does not.
pub fn pod_counts(pod: &Pod) -> bool {
    !pod.status
        .as_ref()
        .is_some_and(|s| matches!(s.phase.as_str(), "Succeeded" | "Failed"))
}

impl Registry {
    /// The quotas of `namespace`.
    async fn quotas(&self, namespace: &str) -> Result<Vec<ResourceQuota>> {
        let (quotas, _) = self
            .list(
                &RESOURCE_QUOTAS,
                Some(namespace),
                &Selector::default(),
                &FieldSelector::default(),
            )
            .await?;
        quotas
            .into_iter()
            .map(|q| {
                serde_json::from_value(q)
                    .map_err(|e| Error::internal(format!("a stored ResourceQuota: {e}")))
            })
            .collect()
    }

    /// What `namespace` uses now of every resource a quota can bound.
    pub(super) async fn namespace_usage(&self, namespace: &str) -> Result<Usage> {
        use berth_api::kinds::{CONFIG_MAPS, PERSISTENT_VOLUME_CLAIMS, PODS, SECRETS, SERVICES};
        let mut usage = Usage::new();
        for rt in [&SERVICES, &CONFIG_MAPS, &SECRETS, &PERSISTENT_VOLUME_CLAIMS] {
            let count = self
                .read_prefix(crate::objects::prefix(rt, Some(namespace)))
                .await?;
            usage.insert(rt.plural.to_owned(), count.len() as u64);
        }
        let pods = self
            .read_prefix(crate::objects::prefix(&PODS, Some(namespace)))
            .await?;
        usage.insert("pods".to_owned(), 0);
        for kv in pods {
            let pod: Pod = serde_json::from_value(decode_stored(&kv)?)
                .map_err(|e| Error::internal(format!("a stored Pod: {e}")))?;
            if pod_counts(&pod) {
                for (resource, amount) in pod_usage(&pod) {
                    *usage.entry(resource).or_default() += amount;
                }
            }
        }
        Ok(usage)
    }

    /// Refuses the creation of an object taking `requested` in `namespace` when a quota
    /// there would be exceeded; otherwise counts it for the rest of the transaction.
    pub(super) async fn admit_quota(
        &self,
        kind_plural: &str,
        name: &str,
        namespace: &str,
        requested: Usage,
        batch: &mut Batch,
    ) -> Result<()> {
        if !batch.reads.quotas.contains_key(namespace) {
            let quotas = self.quotas(namespace).await?;
            batch.reads.quotas.insert(namespace.to_owned(), quotas);
        }
        let Some(quotas) = batch.reads.quotas.get(namespace).filter(|q| !q.is_empty()) else {
            return Ok(());
        };
        if !batch.reads.usage.contains_key(namespace) {
            let usage = self.namespace_usage(namespace).await?;
            batch.reads.usage.insert(namespace.to_owned(), usage);
        }
        let mut used = batch
            .reads
            .usage
            .get(namespace)
            .cloned()
            .unwrap_or_default();
        for (resource, amount) in batch.quota_planned.get(namespace).into_iter().flatten() {
            *used.entry(resource.clone()).or_default() += amount;
        }
        for quota in quotas {
            let mut over = Vec::new();
            for (resource, hard) in &quota.spec.hard {
                let canonical = canonical_quota_resource(resource);
                let Some(wanted) = requested.get(canonical).filter(|w| **w > 0) else {
                    continue;
                };
                let limit = quota_amount(resource, hard).unwrap_or(0);
                let now = used.get(canonical).copied().unwrap_or(0);
                if now + wanted > limit {
                    over.push((resource.as_str(), *wanted, now, limit));
                }
            }
            if !over.is_empty() {
                let list = |pick: fn(&(&str, u64, u64, u64)) -> u64| {
                    over.iter()
                        .map(|o| format!("{}={}", o.0, format_quota_amount(o.0, pick(o))))
                        .collect::<Vec<_>>()
                        .join(",")
                };
                return Err(Error::Forbidden(format!(
                    "{kind_plural} {name:?} is forbidden: exceeded quota: {}, requested: {}, used: {}, limited: {}",
                    quota.metadata.name,
                    list(|o| o.1),
                    list(|o| o.2),
                    list(|o| o.3),
                )));
            }
        }
        let planned = batch.quota_planned.entry(namespace.to_owned()).or_default();
        for (resource, amount) in requested {
            *planned.entry(resource).or_default() += amount;
        }
        Ok(())
    }
}
